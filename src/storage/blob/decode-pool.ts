/**
 * Chunk decoding off the event loop: the chunks of one backend request
 * (decompression + digest / CRC-32C checks, decodeChunk) are decoded on a
 * worker thread, so the loop keeps answering FUSE requests while the next
 * chunks are decoded on the other core(s). Same decoder, same checks, same
 * errors as inline decoding (decodeRun); a chunk is handed out only after
 * it verified. The request's bytes are moved to the worker (no copy when
 * the buffer owns its memory) and each chunk is posted back as soon as it
 * is decoded, so a reader waiting for the first chunk of an 8 MiB request
 * does not wait for the last.
 *
 * Bounded: a request is decoded inline when QUEUE_LIMIT requests are queued
 * or running on the workers, and when it is too small to be worth a hop or
 * holds a single chunk (a reader waiting for exactly that chunk, as random
 * reads do: the hop would only add latency; merged and readahead requests,
 * whose later chunks are needed later, go to the workers). A
 * worker failure (crash, exit) fails the chunks it had not posted like bad
 * data: the caller downloads them again and decodes them inline, never
 * serves them; the worker is replaced on next use.
 *
 * Runs of small chunks (INLINE_BELOW on average) are decoded on the event
 * loop in slices instead, the next slice on the next macrotask.
 *
 * Threads: availableParallelism() - 1 (at least 1, at most 4);
 * NYDUS_DECODE_THREADS=N overrides it, 0 decodes inline (benchmarks).
 * Workers are unref'd (they never keep the process alive). Loaded from
 * dist/ as compiled JS, or from the sources through tsx (tests: the worker
 * gets `--require tsx/cjs`, as blocking.ts does).
 */
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { log } from '../../common/log';
import { BlobChunkFlags } from '../format/constants';
import type { BlobInfo, ChunkInfo } from '../format/types';
import { type ChunkArena, chunkArena } from './chunk-arena';
import { type DecodeBlob, type DecodeReply, type DecodeRequest, type DecodeTarget, decodeRun } from './decode-run';

export { decodeRun } from './decode-run';

/** How long stopping the pool waits for a worker that is still loading. */
const STOP_WAIT_MS = 5000;
/** Requests queued or running on the workers; more are decoded inline. */
const QUEUE_LIMIT = 64;
/** Requests with less data than this are decoded inline (a hop costs ~0.1 ms). */
const MIN_POOL_BYTES = 64 << 10;
/**
 * Runs whose chunks are this small on average are decoded on the event
 * loop, a slice of SLICE_BYTES at a time (NYDUS_DECODE_INLINE_BELOW=bytes
 * changes it, 0: never). A worker costs its own heap and malloc arena:
 * ~25 MB more after reading a 100,000-file image of 1-8 KiB files, whose
 * merged neighbours are decoded in a few milliseconds here.
 */
const INLINE_BELOW = 64 << 10;
/** Decoded bytes per slice of an inline run: other requests are answered between slices. */
const SLICE_BYTES = 256 << 10;

function inlineBelow(): number {
  const env = process.env.NYDUS_DECODE_INLINE_BELOW;
  const n = env !== undefined && env !== '' ? Number(env) : INLINE_BELOW;
  return Number.isFinite(n) ? n : INLINE_BELOW;
}

/** Where an arena view lives, for the workers (shared, never moved). */
const targetOf = (b: Buffer): DecodeTarget => ({ sab: b.buffer as SharedArrayBuffer, off: b.byteOffset, len: b.length });

interface Pending {
  run: readonly ChunkInfo[];
  start: number;
  /** per chunk, until it is answered */
  resolve: Array<((d: Buffer | Error) => void) | undefined>;
  /** chunks answered `null`, resolved with the request's bytes at `done` */
  own: number[];
  /** the request's bytes when they are shared with the worker (arena memory): `done` brings none */
  shared: Buffer | undefined;
  /** arena slots chunks are decoded into, until each is answered */
  into: Array<Buffer | undefined> | undefined;
}

/**
 * Chunks decoded into an arena slot: compressed ones that are not batch
 * members (cut from their batch); with `copyStored` also those stored as
 * they are, copied (otherwise views of their request's memory: no copy,
 * which a cold read of incompressible data pays for 70-80 ms of CPU per
 * 128 MiB; the blob cache asks for it where it writes them with O_DIRECT,
 * which needs page-aligned memory).
 */
const intoArena = (c: ChunkInfo, copyStored: boolean): boolean => !(c.flags & BlobChunkFlags.BATCH) && c.uncompressedSize > 0 && (c.compressed || copyStored);

/** Arena slots for the chunks of `run` that decompress on their own (undefined: fresh buffers). */
function slotsFor(arena: ChunkArena | undefined, run: readonly ChunkInfo[], copyStored = false): Array<Buffer | undefined> | undefined {
  if (!arena) return undefined;
  let any = false;
  const out = run.map((c) => {
    const b = intoArena(c, copyStored) ? arena.alloc(c.uncompressedSize) : undefined;
    if (b) any = true;
    return b;
  });
  return any ? out : undefined;
}

/**
 * Chunk k's result leaves the pool: its slot, when it was decoded into it,
 * is released once the receivers' callbacks ran (they retain what they
 * keep); a slot not used (an error, bytes from elsewhere) at once.
 */
function settleSlot(arena: ChunkArena | undefined, slot: Buffer | undefined, d: Buffer | Error): void {
  if (!slot || !arena) return;
  if (d === slot) arena.releaseSoon(slot);
  else arena.release(slot);
}

interface DecodeWorker {
  w: Worker;
  pending: Map<number, Pending>;
  /** loaded (its `ready` message came): requests go to it from then on (until then they are decoded inline) */
  online: boolean;
  /** resolves when it is online or gone */
  ready: Promise<void>;
}

const workers: Array<DecodeWorker | undefined> = [];
let nextId = 1;
let queued = 0;
let threads = -1;

function poolThreads(): number {
  if (threads >= 0) return threads;
  const env = process.env.NYDUS_DECODE_THREADS;
  const n = env !== undefined && env !== '' ? Number(env) : Math.max(1, Math.min(4, availableParallelism() - 1));
  threads = Number.isFinite(n) ? Math.max(0, Math.min(16, Math.floor(n))) : 1;
  return threads;
}

const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

/**
 * Fail every chunk `dw` has not answered. Their slots go back at once when
 * the thread is gone ('exit'); when it is still running (being terminated:
 * `kept` given) they are collected there instead, to go back only once it
 * has stopped, since it may be decompressing into one right now.
 */
function failAll(dw: DecodeWorker, why: string, kept?: Buffer[]): void {
  const e = new Error(`decode worker failed: ${why}`);
  for (const p of dw.pending.values()) {
    queued--;
    if (kept && p.into) {
      for (const b of p.into) if (b) kept.push(b);
      p.into = undefined;
    }
    p.resolve.forEach((r, k) => answer(p, k, e));
  }
  dw.pending.clear();
}

/** Resolve chunk k of `p` with `d` (once: later answers are ignored), settling its slot. */
function answer(p: Pending, k: number, d: Buffer | Error): void {
  const r = p.resolve[k];
  if (!r) return;
  p.resolve[k] = undefined;
  const slot = p.into?.[k];
  if (slot) {
    p.into![k] = undefined;
    settleSlot(chunkArena(), slot, d);
  }
  r(d);
}

function startWorker(slot: number): DecodeWorker {
  const ext = path.extname(__filename);
  const w = new Worker(path.join(__dirname, `decode-worker${ext === '.ts' ? '.ts' : '.js'}`), {
    execArgv: ext === '.ts' ? ['--require', require.resolve('tsx/cjs')] : [],
  });
  let up!: () => void;
  const dw: DecodeWorker = { w, pending: new Map(), online: false, ready: new Promise<void>((r) => { up = r; }) };
  w.unref();
  w.on('message', (m: DecodeReply) => {
    if ('ready' in m) { dw.online = true; up(); return; }
    const p = dw.pending.get(m.id);
    if (!p) return;
    if ('done' in m) {
      const raw = p.shared ?? (m.raw ? asBuffer(m.raw) : Buffer.alloc(0));
      for (const k of p.own) {
        const c = p.run[k];
        answer(p, k, raw.subarray(c.compressedOffset - p.start, c.compressedOffset - p.start + c.compressedSize));
      }
      dw.pending.delete(m.id);
      queued--;
      if (dw.pending.size === 0) w.unref();
      return;
    }
    m.ks.forEach((k, i) => {
      const d = m.data[i];
      if (d === null) p.own.push(k);
      else if (d === true) answer(p, k, p.into?.[k] ?? new Error('decode worker answered into a slot it was not given'));
      else answer(p, k, typeof d === 'string' ? new Error(d) : asBuffer(d));
    });
  });
  const gone = (why: string) => {
    up(); // nobody waits for a worker that will never be ready
    if (workers[slot] === dw) workers[slot] = undefined;
    if (dw.pending.size) log.warn({ err: why, requests: dw.pending.size }, 'decode worker failed; its chunks are downloaded again');
    failAll(dw, why);
  };
  w.on('error', (e) => gone(e.message));
  w.on('exit', (code) => gone(`exited with code ${code}`));
  return dw;
}

/** The worker with the fewest requests (started when its slot is empty). */
/**
 * The running worker with the fewest requests; empty slots get a worker
 * started. Undefined while none is running yet (the caller decodes inline).
 */
function pickWorker(): DecodeWorker | undefined {
  let best: DecodeWorker | undefined;
  for (let i = 0; i < poolThreads(); i++) {
    const dw = (workers[i] ??= startWorker(i));
    if (dw.online && (!best || dw.pending.size < best.pending.size)) best = dw;
  }
  return best;
}

let users = 0;

/**
 * A device starts using the pool (paired with releaseDecodePool). The
 * workers start at the first request worth a hop, or right after the mount
 * for images whose chunks they will decode (StorageDevice.warmUp,
 * decodesOnWorkers): an image of small files costs no thread (~8 MB). Until
 * one is running (~50 ms, up to 250 ms on a loaded machine), such requests
 * are decoded inline, so the first reads never wait for it; started at the
 * first request, that was 9 of the 31 runs of a cold 256 MiB read.
 */
export function acquireDecodePool(): void {
  users++;
}

/**
 * Whether runs of chunks averaging `avgChunkBytes` go to a worker (not
 * decoded on the event loop as small files' chunks are).
 */
export function decodesOnWorkers(avgChunkBytes: number): boolean {
  return poolThreads() > 0 && !smallChunks(avgChunkBytes);
}

/** Chunks this small on average are decoded on the event loop (INLINE_BELOW). */
const smallChunks = (avgChunkBytes: number): boolean => avgChunkBytes < inlineBelow();

/** Workers running now (tests). */
export function decodeWorkersOnline(): number {
  return workers.filter((w) => w?.online).length;
}

/** Start the workers now and resolve once they run (tests, benchmarks, and images whose chunks they decode). */
export function startDecodePool(): Promise<void> {
  const all: Promise<void>[] = [];
  for (let i = 0; i < poolThreads(); i++) all.push((workers[i] ??= startWorker(i)).ready);
  return Promise.all(all).then(() => undefined);
}

/**
 * A (drained) device stops using the pool: the workers are stopped when it
 * was the last, so none is alive while the process exits (a worker holding
 * native addons must not be torn down by the exit itself).
 */
export async function releaseDecodePool(): Promise<void> {
  if (users > 0) users--;
  if (users === 0) await closeDecodePool();
}

/**
 * decodeRun on a worker when it is worth it: one promise per chunk of `run`,
 * never rejected (an Error in its place). `raw` must not be used by the
 * caller afterwards (its memory may have moved to the worker). `copyStored`:
 * chunks stored as they are come back in arena slots of their own (page
 * aligned) when there is one, not as views of `raw`.
 */
export function decodeRunAsync(info: BlobInfo, raw: Buffer, start: number, run: readonly ChunkInfo[], validate: boolean, copyStored = false): Array<Promise<Buffer | Error>> {
  const blob: DecodeBlob = { blobId: info.blobId, compressor: info.compressor, digester: info.digester };
  const needsWork = (c: ChunkInfo) => validate || c.compressed || c.flags !== 0;
  const work = run.some(needsWork);
  // one chunk is what a reader waits for right now (random reads): the hop would only add latency
  const arena = chunkArena();
  if (work && run.length >= 2 && raw.length >= MIN_POOL_BYTES && smallChunks(run.reduce((n, c) => n + c.uncompressedSize, 0) / run.length)) {
    return decodeSliced(blob, raw, start, run, validate, arena);
  }
  const dw = !work || run.length < 2 || raw.length < MIN_POOL_BYTES || queued >= QUEUE_LIMIT || poolThreads() === 0 ? undefined : pickWorker();
  if (!dw) {
    const slots = slotsFor(arena, run, copyStored);
    return decodeRun(blob, raw, start, run, validate, slots && ((k, d) => settleSlot(arena, slots[k], d)), slots && ((k) => slots[k]))
      .map((d) => Promise.resolve(d));
  }
  // request bytes in arena memory are shared with the worker as they are: nothing moved or copied
  if (arena?.owns(raw)) return postRun(dw, blob, raw, start, run, validate, raw, copyStored);
  const inRaw = (c: ChunkInfo) => c.compressedOffset >= start && c.compressedOffset - start + c.compressedSize <= raw.length;
  if (!run.every(needsWork) && run.every(inRaw)) {
    // chunks stored as they are (incompressible data) next to compressed ones: the stored ones are
    // answered here, views of `raw`, and only the others' bytes go to the worker. `raw` stays in this
    // thread: a buffer moved to a worker and back counts twice towards the heap's external memory,
    // and each 64 MiB of that costs a full garbage collection
    const out = new Array<Promise<Buffer | Error>>(run.length);
    const stored: ChunkInfo[] = [];
    const storedAt: number[] = [];
    const sendRun: ChunkInfo[] = [];
    const sendAt: number[] = [];
    // each distinct stored range once (batch members share their batch's bytes), packed back to back
    const placed = new Map<string, { from: ChunkInfo; at: number }>();
    let size = 0;
    run.forEach((c, k) => {
      if (!needsWork(c)) { stored.push(c); storedAt.push(k); return; }
      const key = `${c.compressedOffset}:${c.compressedSize}`;
      let p = placed.get(key);
      if (!p) { placed.set(key, (p = { from: c, at: size })); size += c.compressedSize; }
      sendRun.push({ ...c, compressedOffset: p.at });
      sendAt.push(k);
    });
    // (copied into slots of their own when asked)
    const storedSlots = slotsFor(arena, stored, copyStored);
    decodeRun(blob, raw, start, stored, validate, storedSlots && ((k, d) => settleSlot(arena, storedSlots[k], d)), storedSlots && ((k) => storedSlots[k]))
      .forEach((d, i) => { out[storedAt[i]] = Promise.resolve(d); });
    const packed = Buffer.allocUnsafeSlow(size); // every byte copied below (all ranges inside raw)
    for (const { from, at } of placed.values()) raw.copy(packed, at, from.compressedOffset - start, from.compressedOffset - start + from.compressedSize);
    postRun(dw, blob, packed, 0, sendRun, validate).forEach((p, i) => { out[sendAt[i]] = p; });
    return out;
  }
  // a buffer owning its whole ArrayBuffer moves; anything else (a slice of a bigger one) is copied first
  let sent: Uint8Array = raw;
  if (raw.byteOffset !== 0 || raw.byteLength !== raw.buffer.byteLength || !(raw.buffer instanceof ArrayBuffer)) {
    sent = new Uint8Array(raw.byteLength);
    sent.set(raw);
  }
  return postRun(dw, blob, sent, start, run, validate, undefined, copyStored);
}

/**
 * decodeRun on the event loop, SLICE_BYTES of decoded chunks at a time (the
 * first slice at once: a reader waits for its first chunk), the next slice on
 * the next macrotask; the members of a batch stay in one slice (one
 * decompression). `raw` is only read, and held until the last slice.
 */
function decodeSliced(blob: DecodeBlob, raw: Buffer, start: number, run: readonly ChunkInfo[], validate: boolean, arena: ChunkArena | undefined): Array<Promise<Buffer | Error>> {
  const resolve: Array<(d: Buffer | Error) => void> = [];
  const out = run.map(() => new Promise<Buffer | Error>((r) => resolve.push(r)));
  let k = 0;
  const step = (): void => {
    const from = k;
    let bytes = 0;
    while (k < run.length && (k === from || bytes < SLICE_BYTES || run[k].compressedOffset === run[k - 1].compressedOffset)) bytes += run[k++].uncompressedSize;
    const part = run.slice(from, k);
    const slots = slotsFor(arena, part);
    try {
      decodeRun(blob, raw, start, part, validate, (i, d) => {
        const slot = slots?.[i];
        if (slot) { slots![i] = undefined; settleSlot(arena, slot, d); }
        resolve[from + i](d);
      }, slots && ((i) => slots[i]));
    } catch (err) {
      // decodeRun reports a chunk's failure in its place; anything else fails what is left (answered
      // chunks keep their answer) and gives back the slots not used
      if (slots) for (const slot of slots) if (slot) settleSlot(arena, slot, err as Error);
      for (let i = from; i < run.length; i++) resolve[i](err as Error);
      k = run.length;
    }
    if (k < run.length) setImmediate(step);
  };
  step();
  return out;
}

/**
 * Hand `sent` (owning its memory, moved; or `shared`, arena memory the
 * worker reads in place) and `run` to worker `dw`: one promise per chunk.
 */
function postRun(dw: DecodeWorker, blob: DecodeBlob, sent: Uint8Array, start: number, run: readonly ChunkInfo[], validate: boolean, shared?: Buffer, copyStored = false): Array<Promise<Buffer | Error>> {
  const id = nextId++;
  const into = slotsFor(chunkArena(), run, copyStored);
  const p: Pending = { run, start, resolve: [], own: [], into, shared };
  const out = run.map(() => new Promise<Buffer | Error>((r) => p.resolve.push(r)));
  dw.pending.set(id, p);
  queued++;
  dw.w.ref();
  const targets = into?.map((b) => (b ? targetOf(b) : null));
  const req: DecodeRequest = { id, blob, raw: shared ? targetOf(shared) : sent, start, chunks: run as ChunkInfo[], validate, into: targets };
  dw.w.postMessage(req, shared ? [] : [sent.buffer as ArrayBuffer]);
  return out;
}

/** Stop the workers (tests); they are started again on next use. */
export async function closeDecodePool(): Promise<void> {
  const all = workers.splice(0);
  // their chunks fail now (downloaded again by the caller), whenever the threads' 'exit' comes;
  // the arena slots they decode into go back once they have stopped
  const kept: Buffer[] = [];
  for (const dw of all) if (dw) failAll(dw, 'stopped', kept);
  try {
    await Promise.all(all.map(async (dw) => {
      if (!dw) return;
      dw.w.ref(); // the loop waits for the stop
      // a worker still loading its native addons is not torn down mid-load (a fatal error in Node)
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([dw.ready, new Promise<void>((r) => { timer = setTimeout(r, STOP_WAIT_MS); })]);
      clearTimeout(timer);
      await dw.w.terminate();
    }));
  } finally {
    const arena = chunkArena();
    if (arena) for (const b of kept) arena.release(b);
  }
}
