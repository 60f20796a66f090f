/**
 * Worker side of the builder's chunk pipeline (chunk-pipeline.ts): reads a
 * group of chunks straight from their files, digests them and compresses
 * those that will be stored on their own, off the main thread.
 *
 * Loaded by piscina with require(): compiled to dist/rafs/builder/chunk-worker.js,
 * or the .ts through tsx's CommonJS hook when running the sources.
 *
 * The answer is one transferred ArrayBuffer (layout in chunk-protocol.ts). The stored bytes are exactly what
 * `compress()` of common/compress.ts produces (zstd: the same ZSTD_compress2
 * call at level 3 with every other parameter at its default, written straight
 * into the answer instead of a fresh buffer; test/unit/builder-pipeline.test.ts
 * checks the two agree).
 */
import * as fs from 'node:fs';
import Piscina from 'piscina';
import * as zstdBinding from 'zstd-napi/binding';
import { Compressor, compress } from '../../common/compress';
import { DIGEST_SIZE, type DigestAlgorithm, digest, initDigest } from '../../common/digest';
import { JobMode, type GroupTask, RESULT_HEADER, ResultKind } from './chunk-protocol';

let cctx: zstdBinding.CCtx | undefined;
let scratch = Buffer.alloc(0);
/** keys (digest:size) this worker has answered before: a later job with the same key is a duplicate */
const seen = new Set<string>();
const SEEN_MAX = 1 << 20;
let digestReady = false;

function scratchOf(len: number): Buffer {
  if (scratch.length < len) scratch = Buffer.allocUnsafe(len);
  return scratch.subarray(0, len);
}

function readFull(fd: number, buf: Buffer, pos: number, what: string): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) throw new Error(`${what}: short read at ${pos + done} (file shrank while building?)`);
    done += n;
  }
}

/** Stored form of `src` into `dst` (capacity ≥ compressBound): length and whether it is compressed. */
function pack(c: Compressor, src: Buffer, dst: Buffer): { len: number; compressed: boolean } {
  if (c === Compressor.Zstd) {
    if (!cctx) {
      cctx = new zstdBinding.CCtx();
      cctx.setParameter(zstdBinding.CParameter.compressionLevel, 3);
    }
    const n = cctx.compress2(dst, src);
    if (n < src.length) return { len: n, compressed: true };
  } else if (c !== Compressor.None) {
    const p = compress(c, src);
    if (p.compressed) { p.data.copy(dst); return { len: p.data.length, compressed: true }; }
  }
  src.copy(dst);
  return { len: src.length, compressed: false };
}

/** Room for the header, digests and every job's stored bytes (each at most its length), plus what compression may need beyond that. */
function resultCapacity(t: GroupTask, n: number): number {
  let data = 0;
  let slack = 0;
  for (let j = 0; j < n; j++) {
    const len = t.jobs[j * 4 + 2];
    data += len;
    if (t.jobs[j * 4 + 3] === JobMode.Pack && t.compressor === Compressor.Zstd) slack = Math.max(slack, zstdBinding.compressBound(len) - len);
  }
  return RESULT_HEADER + n * (8 + DIGEST_SIZE) + data + slack;
}

let ready: Promise<void> | undefined;

/**
 * One group. Groups must be done in the order they arrive (see `seen`): once
 * the digest module is ready (the first groups wait for it in order), each
 * is done synchronously.
 */
export default function run(t: GroupTask): unknown {
  if (!digestReady) {
    ready ??= initDigest().then(() => { digestReady = true; });
    return ready.then(() => work(t));
  }
  return work(t);
}

function work(t: GroupTask): unknown {
  const n = t.jobs.length / 4;
  const out = Buffer.allocUnsafeSlow(resultCapacity(t, n)); // its own ArrayBuffer (never the shared pool): it is transferred
  const meta = new Uint32Array(out.buffer, out.byteOffset, RESULT_HEADER / 4 + n * 2);
  meta[0] = n;
  let dataPos = RESULT_HEADER + n * 8 + n * DIGEST_SIZE;
  const fds = new Map<number, number>();
  try {
    for (let j = 0; j < n; j++) {
      const fi = t.jobs[j * 4];
      const off = t.jobs[j * 4 + 1];
      const len = t.jobs[j * 4 + 2];
      const mode = t.jobs[j * 4 + 3] as JobMode;
      const src = t.files[fi];
      let fd = src.fd ?? fds.get(fi);
      if (fd === undefined) { fd = fs.openSync(src.path!, 'r'); fds.set(fi, fd); }
      const stored = mode === JobMode.Pack && t.compressor !== Compressor.None;
      // raw answers are read straight into the answer; packed ones through the scratch buffer
      const data = stored ? scratchOf(len) : out.subarray(dataPos, dataPos + len);
      readFull(fd, data, src.base + off, src.path ?? 'tar entry');
      const id = digest(t.digester as DigestAlgorithm, data);
      id.copy(out, RESULT_HEADER + n * 8 + j * DIGEST_SIZE);
      const key = `${id.toString('latin1')}:${len}`;
      let kind: number;
      let outLen = 0;
      if (seen.has(key)) {
        kind = ResultKind.Duplicate; // duplicate of an earlier job (the main thread keeps the first one)
      } else {
        if (seen.size < SEEN_MAX) seen.add(key);
        if (stored) {
          const p = pack(t.compressor, data, out.subarray(dataPos));
          kind = p.compressed ? ResultKind.Compressed : ResultKind.Uncompressible;
          outLen = p.len;
        } else {
          kind = ResultKind.Raw;
          outLen = len;
        }
      }
      meta[RESULT_HEADER / 4 + j * 2] = kind;
      meta[RESULT_HEADER / 4 + j * 2 + 1] = outLen;
      dataPos += outLen;
    }
  } finally {
    for (const fd of fds.values()) fs.closeSync(fd);
  }
  return Piscina.move(out.buffer as ArrayBuffer);
}
