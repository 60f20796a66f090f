/**
 * One backend request for a run of chunks (storage-backends §5 "Backend
 * region"): the bytes [first.compressedOffset, last compressed end) are read
 * once, then each chunk is cut out, decoded and — when the source asks —
 * verified. Each chunk gets its own promise, so a reader waiting for one chunk
 * is answered as soon as the request is in, and one bad chunk does not fail
 * its neighbours: a chunk whose data does not decode or verify is downloaded
 * again alone, at most REFETCH_LIMIT times (beyond upstream, which fails the
 * read and leaves the retry to the next access), then EIO.
 */
import { ErrnoError, eio } from '../../common/errno';
import { logLimited, warnLimited } from '../../common/log';
import { recordErrorEvent } from '../../common/events';
import { decodeChunk } from '../blob/chunk-reader';
import { decodeRunAsync } from '../blob/decode-pool';
import { type ChunkArena, chunkArena } from '../blob/chunk-arena';
import { isAligned } from '../../common/libc';
import type { BlobInfo, ChunkInfo } from '../format/types';
import type { BlobBackend } from '../backend/backend';

/** Extra downloads of a chunk whose data did not decode or verify. */
export const REFETCH_LIMIT = 2;

export interface RegionSource {
  backend: BlobBackend;
  /** verify digests of what the backend returns */
  verify: boolean;
  /** a prefetch request (smaller retry budget, lower Dragonfly priority) */
  prefetch?: boolean;
  /** cap on backend attempts per request */
  attempts?: number;
  /**
   * a sequential reader's read-ahead, whose bytes are read once: a backend
   * with `directAlign` may read it bypassing the page cache (requests of
   * DIRECT_READ_MIN and more). Other requests keep the page cache: random
   * readers come back to the same compressed bytes when their decoded
   * chunks have left memory.
   */
  readAhead?: boolean;
  /** chunks stored as they are come back in page-aligned slots of their own (the blob cache writes them with O_DIRECT) */
  alignStored?: boolean;
}

function asEio(info: BlobInfo, chunk: ChunkInfo, err: unknown): ErrnoError {
  if (err instanceof ErrnoError && err.code === 'EIO') return err;
  return eio(`blob ${info.blobId} chunk ${chunk.index}: ${(err as Error).message}`, err);
}

/** A streamed request's chunks are decoded in groups of at least this much decoded data (or at its end)... */
const STREAM_GROUP_BYTES = 1 << 20;
/** ...and of at least this many chunks (a group of one would be decoded on the event loop). */
const STREAM_GROUP_CHUNKS = 2;

/**
 * Decoded bytes of each chunk of `run` (sorted by compressed offset,
 * non-overlapping), one promise each. A backend that reports its progress
 * (the registry) has the chunks whose bytes are in decoded while the rest
 * of the request is still arriving, in groups; otherwise the request is
 * decoded once it is in.
 */
export function fetchRegion(src: RegionSource, info: BlobInfo, run: readonly ChunkInfo[]): Promise<Buffer>[] {
  const resolvers = new Array<(v: Buffer) => void>(run.length);
  const rejecters = new Array<(e: unknown) => void>(run.length);
  const out = new Array<Promise<Buffer>>(run.length);
  for (let k = 0; k < run.length; k++) out[k] = new Promise<Buffer>((res, rej) => { resolvers[k] = res; rejecters[k] = rej; });
  fetchRegionEach(src, info, run, (k, d, err) => {
    if (d) { resolvers[k](d); return; }
    out[k].catch(() => undefined); // whoever asked for it sees it; the neighbours nobody waits for are not unhandled
    rejecters[k](err);
  });
  return out;
}

/**
 * fetchRegion without a promise per chunk: `settled(k, data, err)` is
 * called once per chunk of `run` with its final bytes (after any refetch),
 * or with the EIO it failed with, for callers that keep their own
 * per-chunk state (the blob cache's flights).
 */
export function fetchRegionEach(src: RegionSource, info: BlobInfo, run: readonly ChunkInfo[], settled: (k: number, data: Buffer | undefined, err?: ErrnoError) => void): void {
  const first = run[0];
  const last = run[run.length - 1];
  const start = first.compressedOffset;
  const length = last.compressedOffset + last.compressedSize - start;
  // read into recycled memory when the backend can (chunk-arena.ts): the slot is let go once every
  // chunk is decoded (chunks stored as they are stay views of it, referenced by whoever keeps them)
  const arena = src.backend.readsInto ? chunkArena() : undefined;
  const window = arena && src.readAhead && length >= DIRECT_READ_MIN ? alignedWindow(arena, src.backend.directAlign, start, length) : undefined;
  const into = window ? window.buf.subarray(start - window.at, start - window.at + length) : arena?.alloc(length);
  // the request's slot goes once it is over and every chunk's decode is known (good, bad or failed)
  let pending = run.length + 1;
  const decodedOne = () => { if (--pending === 0 && into) arena!.releaseSoon(into); };
  const failed = (k: number, err: unknown) => {
    logLimited('error', 'cache.fetch', { blobId: info.blobId, chunkIndex: run[k].index, err: (err as Error).message }, 'failed to fetch chunk');
    settled(k, undefined, asEio(info, run[k], err));
  };
  const settle = (k: number, d: Buffer | Error) => {
    if (!(d instanceof Error)) { settled(k, d); return; }
    const chunk = run[k];
    warnLimited('cache.refetch', { blobId: info.blobId, chunkIndex: chunk.index, attempt: 1, err: d.message }, 'chunk data from the backend is bad, downloading it again');
    // (refetch logs its failures and gives EIOs)
    refetch(src, info, chunk, 1).then((v) => settled(k, v), (err) => settled(k, undefined, asEio(info, chunk, err)));
  };
  let next = 0; // chunks before it have been handed to the decoder
  const end = (k: number) => run[k].compressedOffset + run[k].compressedSize - start;
  // the chunks whose bytes are all in (`filled` bytes of `buf`), decoded off the event loop
  // (decode-pool.ts); members of one batch end together, so they are decoded together, once
  const dispatch = (buf: Buffer, filled: number, final: boolean) => {
    let j = next;
    let size = 0;
    while (j < run.length && end(j) <= filled) size += run[j++].uncompressedSize;
    if (j === next) return;
    if (!final && j < run.length && (j - next < STREAM_GROUP_CHUNKS || size < STREAM_GROUP_BYTES)) return;
    const from = next;
    next = j;
    let ds: Array<Promise<Buffer | Error>>;
    try {
      ds = decodeRunAsync(info, buf, start, run.slice(from, j), src.verify, !!src.alignStored);
    } catch (err) {
      for (let k = from; k < j; k++) { decodedOne(); failed(k, err); }
      return;
    }
    for (let i = 0; i < ds.length; i++) {
      const k = from + i;
      ds[i].then((d) => { decodedOne(); settle(k, d); }, (err) => { decodedOne(); failed(k, err); });
    }
  };
  const raw = src.backend.read(info.blobId, start, length, {
    prefetch: src.prefetch, attempts: src.attempts, into, window,
    // the backend never writes to `into` again once it reported bytes of it (a retry reads elsewhere)
    onProgress: into && ((filled) => dispatch(into, filled, false)),
  });
  raw.then(
    (buf) => { dispatch(buf, length, true); decodedOne(); },
    (err) => { for (let k = next; k < run.length; k++) { decodedOne(); failed(k, err); } decodedOne(); },
  );
}

/** Read-ahead requests from this size on may be read with direct I/O by backends that can. */
export const DIRECT_READ_MIN = 1 << 20;

/**
 * An arena slot covering blob range `start`+`length` widened to `align`
 * (ReadOptions.window), or undefined (no alignment asked, no slot that large
 * free, or memory not aligned). Released through any view of it, as `into`.
 */
function alignedWindow(arena: ChunkArena, align: number | undefined, start: number, length: number): { buf: Buffer; at: number } | undefined {
  if (!align) return undefined;
  const at = start - (start % align);
  const size = Math.ceil((start + length) / align) * align - at;
  const buf = arena.alloc(size);
  if (buf && !isAligned(buf, align)) { arena.release(buf); return undefined; }
  return buf && { buf, at };
}

async function refetch(src: RegionSource, info: BlobInfo, chunk: ChunkInfo, attempt: number): Promise<Buffer> {
  for (;; attempt++) {
    let raw: Buffer;
    try {
      raw = await src.backend.read(info.blobId, chunk.compressedOffset, chunk.compressedSize, { prefetch: src.prefetch, attempts: src.attempts });
    } catch (err) {
      logLimited('error', 'cache.fetch', { blobId: info.blobId, chunkIndex: chunk.index, err: (err as Error).message }, 'failed to fetch chunk');
      throw asEio(info, chunk, err);
    }
    try {
      return decodeChunk(raw, chunk, info, { validate: src.verify });
    } catch (err) {
      if (attempt >= REFETCH_LIMIT) {
        logLimited('error', 'cache.fetch', { blobId: info.blobId, chunkIndex: chunk.index, err: (err as Error).message }, 'chunk data from the backend is bad');
        const e = asEio(info, chunk, err);
        // like a read whose retries all failed: visible in /api/v1/daemon/events
        recordErrorEvent(`${e.message} (${attempt + 1} downloads)`);
        throw e;
      }
      warnLimited('cache.refetch', { blobId: info.blobId, chunkIndex: chunk.index, attempt: attempt + 1, err: (err as Error).message }, 'chunk data from the backend is bad, downloading it again');
    }
  }
}

/**
 * Chunks whose fetch failed a moment ago (bounded, oldest dropped first),
 * for `windowMs`: a read of one then makes a single backend attempt instead
 * of a whole retry budget.
 */
export class RecentFailures {
  private readonly m = new Map<string, { at: number; err: Error }>();

  constructor(private readonly windowMs: number, private readonly max = 4096) {}

  get(key: string): Error | undefined {
    const f = this.m.get(key);
    if (!f) return undefined;
    if (Date.now() - f.at > this.windowMs) {
      this.m.delete(key);
      return undefined;
    }
    return f.err;
  }

  add(key: string, err: Error): void {
    this.m.delete(key);
    if (this.m.size >= this.max) this.m.delete(this.m.keys().next().value as string);
    this.m.set(key, { at: Date.now(), err });
  }

  delete(key: string): void {
    this.m.delete(key);
  }
}
