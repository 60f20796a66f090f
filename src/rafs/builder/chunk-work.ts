/**
 * What a chunk worker thread (chunk-worker.ts) does with a group of chunks
 * (chunk-pipeline.ts): read them straight from their files, digest them and
 * compress those that will be stored on their own, groups in the order they
 * come. The answer is one ArrayBuffer (layout in chunk-protocol.ts), given
 * back once its bytes are written, to be filled again.
 *
 * The stored bytes are exactly what `compress()` of common/compress.ts
 * produces (zstd: the same ZSTD_compress2 call at level 3 with every other
 * parameter at its default, with a destination of the same bound size;
 * test/unit/builder-pipeline.test.ts checks the two agree). A chunk is read
 * straight into the answer and compressed from there into a scratch buffer
 * that every chunk reuses (it stays in the CPU's caches), and only the
 * frame, when it is smaller, is copied back over the raw bytes: a chunk that
 * does not shrink (the random half of a typical tree) is not copied again,
 * and the answers, which the main thread hashes and the kernel copies into
 * the blob file, are touched once per byte. Answers given back are reused
 * most recent first, for the same reason.
 */
import * as fs from 'node:fs';
import * as zstdBinding from 'zstd-napi/binding';
import type { Compressor } from '../../common/compress';
import { DIGEST_SIZE, type DigestAlgorithm, digest } from '../../common/digest';
import { type GroupTask, JobMode, RESULT_HEADER, ResultKind } from './chunk-protocol';

// Compressor values used here (common/compress, with lz4 and gzip, is loaded only when they are asked for)
const NONE = 0 as Compressor;
const ZSTD = 3 as Compressor;

const SEEN_MAX = 1 << 20;
/** about what is out at a time: the groups in flight and the answers whose bytes are being written (blob-sink.ts) */
const MAX_FREE = 32;
/** answers are allocated in multiples of this (a group holds up to 1 MiB of data plus its header) */
const ANSWER_STEP = 256 << 10;

function readFull(fd: number, buf: Buffer, pos: number, what: string): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) throw new Error(`${what}: short read at ${pos + done} (file shrank while building?)`);
    done += n;
  }
}

/** One runner's state: its compression context, scratch buffer, the answers given back, the digests it answered. */
export class ChunkWork {
  /** `maxFree`: answers kept for reuse (the main thread, which does a group now and then, keeps fewer) */
  constructor(private readonly maxFree = MAX_FREE) {}

  private cctx: zstdBinding.CCtx | undefined;
  private scratch = Buffer.alloc(0);
  /** keys (digest:size) answered before: a later job with the same key is a duplicate */
  private readonly seen = new Set<string>();
  /** answers given back, to be filled again (kept: fresh memory costs page faults) */
  private readonly free: ArrayBuffer[] = [];

  /** Take back a consumed answer. */
  recycle(ab: ArrayBuffer): void {
    if (this.free.length < this.maxFree) this.free.push(ab);
  }

  private scratchOf(len: number): Buffer {
    if (this.scratch.length < len) this.scratch = Buffer.allocUnsafe(len);
    return this.scratch.subarray(0, len);
  }

  private answerBuffer(size: number): Buffer {
    // the most recently given back that fits: the likeliest to be in the caches still
    let i = this.free.length - 1;
    while (i >= 0 && this.free[i].byteLength < size) i--;
    // its own ArrayBuffer (never the shared pool): it is transferred
    // sizes rounded up so that answers of any group of up to a chunk size can be reused for any other
    return i >= 0 ? Buffer.from(this.free.splice(i, 1)[0]) : Buffer.allocUnsafeSlow(Math.ceil(size / ANSWER_STEP) * ANSWER_STEP);
  }

  /**
   * Compress `src` (a chunk read into `out` at `pos`) in place: the frame is
   * made in the scratch buffer (room for zstd's bound) and copied over the
   * raw bytes only when it is smaller; else the raw bytes stay where they are.
   * Returns the length stored and whether it is compressed.
   */
  private pack(c: Compressor, src: Buffer, out: Buffer, pos: number): { len: number; compressed: boolean } {
    if (c === ZSTD) {
      if (!this.cctx) {
        this.cctx = new zstdBinding.CCtx();
        this.cctx.setParameter(zstdBinding.CParameter.compressionLevel, 3);
      }
      // the same call with a destination of the same (bound) size as compress(): the same frame
      const frame = this.scratchOf(zstdBinding.compressBound(src.length));
      const n = this.cctx.compress2(frame, src);
      if (n < src.length) { frame.copy(out, pos, 0, n); return { len: n, compressed: true }; }
    } else if (c !== NONE) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const p = (require('../../common/compress') as typeof import('../../common/compress')).compress(c, src);
      if (p.compressed) { p.data.copy(out, pos); return { len: p.data.length, compressed: true }; }
    }
    return { len: src.length, compressed: false };
  }

  /** The answer to a group. */
  work(t: GroupTask): ArrayBuffer {
    const n = t.jobs.length / 4;
    const out = this.answerBuffer(resultCapacity(t, n));
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
        // straight into the answer (compressed there in place: pack)
        const data = out.subarray(dataPos, dataPos + len);
        readFull(fd, data, src.base + off, src.path ?? 'tar entry');
        const id = digest(t.digester as DigestAlgorithm, data);
        id.copy(out, RESULT_HEADER + n * 8 + j * DIGEST_SIZE);
        const key = `${id.toString('latin1')}:${len}`;
        let kind: number;
        let outLen = 0;
        if (this.seen.has(key)) {
          kind = ResultKind.Duplicate; // duplicate of an earlier job (the main thread keeps the first one)
        } else {
          if (this.seen.size < SEEN_MAX) this.seen.add(key);
          if (stored) {
            const p = this.pack(t.compressor, data, out, dataPos);
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
}

/**
 * Room for the header, digests and every job's bytes (stored bytes are at
 * most the raw length: compressed only when smaller; zstd makes its frame
 * in the scratch buffer, see pack).
 */
function resultCapacity(t: GroupTask, n: number): number {
  let data = 0;
  for (let j = 0; j < n; j++) data += t.jobs[j * 4 + 2];
  return RESULT_HEADER + n * (8 + DIGEST_SIZE) + data;
}
