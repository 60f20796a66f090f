/**
 * Worker side of the builder's chunk pipeline (chunk-pipeline.ts): reads a
 * group of chunks straight from their files, digests them and compresses
 * those that will be stored on their own, off the main thread.
 *
 * Started by ChunkPool (worker-file.ts). Groups are done in the order they
 * come; the answer is one transferred ArrayBuffer (layout in
 * chunk-protocol.ts), which the main thread gives back once consumed, to be
 * filled again. The stored bytes are exactly what
 * `compress()` of common/compress.ts produces (zstd: the same ZSTD_compress2
 * call at level 3 with every other parameter at its default, written straight
 * into the answer instead of a fresh buffer; test/unit/builder-pipeline.test.ts
 * checks the two agree).
 */
import * as fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import * as zstdBinding from 'zstd-napi/binding';
import type { Compressor } from '../../common/compress';
import { DIGEST_SIZE, type DigestAlgorithm, digest, initDigest } from '../../common/digest';
import { type GroupReply, type GroupRequest, type GroupTask, JobMode, RESULT_HEADER, ResultKind } from './chunk-protocol';

// Compressor values used here (common/compress, with lz4 and gzip, is loaded only when they are asked for)
const NONE = 0 as Compressor;
const ZSTD = 3 as Compressor;

let cctx: zstdBinding.CCtx | undefined;
let scratch = Buffer.alloc(0);
/** keys (digest:size) this worker has answered before: a later job with the same key is a duplicate */
const seen = new Set<string>();
const SEEN_MAX = 1 << 20;

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
  if (c === ZSTD) {
    if (!cctx) {
      cctx = new zstdBinding.CCtx();
      cctx.setParameter(zstdBinding.CParameter.compressionLevel, 3);
    }
    const n = cctx.compress2(dst, src);
    if (n < src.length) return { len: n, compressed: true };
  } else if (c !== NONE) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const p = (require('../../common/compress') as typeof import('../../common/compress')).compress(c, src);
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
    if (t.jobs[j * 4 + 3] === JobMode.Pack && t.compressor === ZSTD) slack = Math.max(slack, zstdBinding.compressBound(len) - len);
  }
  return RESULT_HEADER + n * (8 + DIGEST_SIZE) + data + slack;
}

/** answers given back by the main thread, to be filled again (kept: fresh memory costs page faults) */
const free: ArrayBuffer[] = [];
/** about what is out at a time: the groups in flight and the answers whose bytes are being written (blob-sink.ts) */
const MAX_FREE = 32;

function answerBuffer(size: number): Buffer {
  const i = free.findIndex((b) => b.byteLength >= size);
  // its own ArrayBuffer (never the shared pool): it is transferred
  return i >= 0 ? Buffer.from(free.splice(i, 1)[0]) : Buffer.allocUnsafeSlow(Math.max(size, 64 << 10));
}

function handle(m: GroupRequest): void {
  if (m.recycle) { if (free.length < MAX_FREE) free.push(m.recycle); return; }
  let r: GroupReply;
  try {
    r = { ab: work(m.task!) };
  } catch (e) {
    r = { error: { message: (e as Error).message, code: (e as NodeJS.ErrnoException).code } };
  }
  parentPort!.postMessage(r, r.ab ? [r.ab] : []);
}

// groups must be done in the order they come (see `seen`): the first ones wait, in order, for the digest module
// (should it fail, hashing throws and each group answers that error)
let ready: Promise<void> | undefined = initDigest().catch(() => {}).then(() => { ready = undefined; });
parentPort!.on('message', (m: GroupRequest) => {
  if (ready) ready = ready.then(() => handle(m));
  else handle(m);
});

function work(t: GroupTask): ArrayBuffer {
  const n = t.jobs.length / 4;
  const out = answerBuffer(resultCapacity(t, n));
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
      const stored = mode === JobMode.Pack && t.compressor !== NONE;
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
  return out.buffer as ArrayBuffer;
}
