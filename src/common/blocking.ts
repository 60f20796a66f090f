/**
 * A small pool of worker threads for host calls that can block for long
 * (syncfs, fsync, fallocate, SEEK_DATA/SEEK_HOLE, truncate/ftruncate,
 * unlinkat, renameat2, opens with O_TRUNC, and closes: of a written file,
 * and any close that can be the last reference of an unlinked inode, whose
 * blocks the kernel frees inside that close), so a guest can never stall the
 * event loop with them.
 *
 * Why not koffi's `.async()` or Node's fs: koffi's async calls run on the
 * libuv thread pool and cannot report errno reliably (errno is per thread and
 * is read back on another one); Node's fs has no syncfs/fallocate/renameat2;
 * and the libuv pool is shared with the /dev/fuse readers and file I/O, so
 * long calls there starve the session. Here each call runs synchronously on a
 * piscina worker (blocking-worker.ts) that reads its own thread's errno right
 * after the call and answers {ret, errno}; this side turns errno into
 * ErrnoError. Names travel as NUL-terminated byte arrays that own their memory
 * (`cbytes`): postMessage copies them, so the worker uses exactly the bytes
 * the caller validated.
 *
 * Bounds: at most `maxThreads` calls run at once and `maxQueue` more wait;
 * beyond that a call fails at once with EAGAIN (nothing is queued without
 * bound). Closes are exempt (an fd must never be leaked because the queue was
 * full): they wait in a queue of their own, two array slots each (the fd and
 * the caller's callback), bounded by the callers' fd budgets (an fd counts
 * until its close has really happened, so a caller cannot have more closes
 * pending than fds; the passthrough's budget is process-wide), and go to the
 * workers in batches, at most maxThreads − 1 batches at once (a thread stays
 * free for the other calls when there are two or more).
 *
 * Close ordering (an fd number must never be closed twice: the second close
 * could hit an unrelated file that reused the number). A worker never closes
 * a caller's fd: it replaces it with dup3(placeholder, fd) — the old file gets
 * everything a close(2) does (last-reference release and inode eviction, FUSE
 * FLUSH, NFS write-back, POSIX lock release) on the worker's thread — and the
 * number stays allocated (now an inert /dev/null) until the main thread
 * closes it, once, after the worker has answered. Each fd of a batch carries a
 * state word in shared memory that the worker claims (0→1) before dup3 and
 * settles (→2 done, →4 failed) after; should the batch fail (worker died, pool
 * torn down), the main thread cancels the unclaimed ones (0→3) and closes those
 * itself, closes the settled ones, and for one claimed but never settled
 * (thread terminated in the middle) keeps the number open and counted rather
 * than risk closing a reused number.
 *
 * Lifetime: the pool is process-wide and created on first use; workers start
 * on demand (minThreads 0), an idle worker is unref'd (piscina does that) and
 * exits after `idleTimeoutMs`, so neither `node -e` scripts nor the daemon
 * are kept alive by it. `closeBlockingPool()` destroys it (it is re-created if
 * used again) once the pending closes are done (it waits 30 s at most). A
 * worker blocked in the kernel cannot be interrupted; the process waits for it
 * only while a call is actually in flight. The first call after an idle period
 * pays a worker start-up (tens of ms).
 *
 * The worker file: `blocking-worker.js` next to this file when running
 * compiled from dist/, `blocking-worker.ts` loaded through tsx's CommonJS hook
 * when running the sources (tests: `uvu -r tsx`, which registers tsx in this
 * thread only, so the worker gets `--require tsx/cjs` explicitly).
 */
import * as fs from 'node:fs';
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import Piscina from 'piscina';
import { ErrnoError } from './errno';
import { errnoError } from './libc';
import { log } from './log';

export type BlockingOp =
  | { op: 'syncfs'; fd: number }
  | { op: 'fsync'; fd: number; datasync: boolean }
  | { op: 'fallocate'; fd: number; mode: number; offset: number; length: number }
  | { op: 'lseek'; fd: number; offset: number; whence: number }
  /** close(dup(fd)) */
  | { op: 'flush'; fd: number }
  /** path: NUL-terminated (cbytes) */
  | { op: 'truncate'; path: Uint8Array; length: number }
  | { op: 'ftruncate'; fd: number; length: number }
  | { op: 'unlinkat'; dirfd: number; name: Uint8Array; flags: number }
  | { op: 'renameat2'; olddirfd: number; oldName: Uint8Array; newdirfd: number; newName: Uint8Array; flags: number }
  /** openat(AT_FDCWD, path, flags, mode): the new fd */
  | { op: 'open'; path: Uint8Array; flags: number; mode: number }
  /**
   * dup3(placeholder, fds[i], O_CLOEXEC) for each i whose state word the
   * worker claims (0→1), then state 2 (done) or 4 (dup3 failed: fd untouched).
   * See "Close ordering" above.
   */
  | { op: 'detach'; fds: number[]; placeholder: number; state: Int32Array };

export interface BlockingResult {
  ret: number;
  errno: number;
}

export interface BlockingPoolOptions {
  /** calls running at once (worker threads); default clamp(cpus, 4, 8) */
  maxThreads?: number;
  /** calls waiting beyond those; default 1024 */
  maxQueue?: number;
  /** an idle worker exits after this long; default 30 s */
  idleTimeoutMs?: number;
}

const DEFAULTS: Required<BlockingPoolOptions> = {
  maxThreads: Math.min(8, Math.max(4, availableParallelism())),
  maxQueue: 1024,
  idleTimeoutMs: 30_000,
};

let options: Required<BlockingPoolOptions> = { ...DEFAULTS };
let pool: Piscina<BlockingOp, BlockingResult> | null = null;
let inFlight = 0;
let completed = 0;
let rejected = 0;

function workerSpec(): { filename: string; execArgv: string[] } {
  const ext = path.extname(__filename);
  const filename = path.join(__dirname, `blocking-worker${ext === '.ts' ? '.ts' : '.js'}`);
  // sources: the worker needs tsx too (uvu -r / tsx's hooks do not reach worker threads started this way)
  const execArgv = ext === '.ts' ? ['--require', require.resolve('tsx/cjs')] : [];
  return { filename, execArgv };
}

function getPool(): Piscina<BlockingOp, BlockingResult> {
  if (pool) return pool;
  const { filename, execArgv } = workerSpec();
  pool = new Piscina<BlockingOp, BlockingResult>({
    filename,
    execArgv,
    minThreads: 0,
    maxThreads: options.maxThreads,
    idleTimeout: options.idleTimeoutMs,
    maxQueue: Infinity, // bounded here (close calls are exempt)
    concurrentTasksPerWorker: 1,
    recordTiming: false,
  });
  pool.on('error', (e: unknown) => log.error({ err: e }, 'blocking pool: worker error'));
  return pool;
}

/** Change the pool's limits; a running pool is replaced (calls in flight finish). */
export function configureBlockingPool(o: BlockingPoolOptions): void {
  options = {
    maxThreads: Math.max(1, Math.floor(o.maxThreads ?? options.maxThreads)),
    maxQueue: Math.max(0, Math.floor(o.maxQueue ?? options.maxQueue)),
    idleTimeoutMs: Math.max(0, o.idleTimeoutMs ?? options.idleTimeoutMs),
  };
  if (pool) {
    const old = pool;
    pool = null;
    void old.close().catch(() => {});
  }
}

/**
 * Stop the workers, after the pending closes are done (waits for calls in
 * flight). The pool is re-created on next use.
 */
export async function closeBlockingPool(): Promise<void> {
  // a close stuck in the kernel (a dead NFS server) must not hold shutdown forever
  await Promise.race([closesSettled(), new Promise((r) => setTimeout(r, CLOSE_DRAIN_MS).unref())]);
  const p = pool;
  pool = null;
  if (p) await p.close().catch(() => p.destroy());
}

export interface BlockingPoolStats {
  /** live worker threads */
  threads: number;
  /** calls running or waiting (closes not included) */
  inFlight: number;
  /** calls finished (ok or not) since start (closes not included) */
  completed: number;
  /** calls refused because the queue was full */
  rejected: number;
  /** closes queued or in a batch on a worker */
  closesPending: number;
  /** closes done since start */
  closes: number;
  /** closes that had to run on the calling thread (no placeholder, or a batch failed) */
  closesOnLoop: number;
  maxThreads: number;
  maxQueue: number;
}

export function blockingPoolStats(): BlockingPoolStats {
  return {
    threads: pool?.threads.length ?? 0, inFlight, completed, rejected,
    closesPending: closeQueue.length - closeHead + closesInBatches, closes: closesDone, closesOnLoop,
    maxThreads: options.maxThreads, maxQueue: options.maxQueue,
  };
}

class WorkerFailure extends Error {}

async function dispatch(task: BlockingOp, what: string): Promise<BlockingResult> {
  if (inFlight >= options.maxThreads + options.maxQueue) {
    rejected++;
    throw new ErrnoError('EAGAIN', `${what}: blocking-call queue full`);
  }
  inFlight++;
  try {
    return await getPool().run(task);
  } catch (e) {
    throw new WorkerFailure(`${what}: blocking worker failed`, { cause: e });
  } finally {
    inFlight--;
    completed++;
  }
}

/** Run one call on the pool: its non-negative result, or ErrnoError with the call's errno. */
export async function runBlocking(task: BlockingOp, what: string): Promise<number> {
  let r: BlockingResult;
  try {
    r = await dispatch(task, what);
  } catch (e) {
    if (e instanceof WorkerFailure) throw new ErrnoError('EIO', e.message, { cause: e.cause });
    throw e;
  }
  if (r.ret < 0) throw errnoError(r.errno, what);
  return r.ret;
}

/**
 * A NUL-terminated copy of a name or path that owns its memory (a pooled
 * Buffer would drag its whole 8 KiB slab through postMessage).
 */
export function cbytes(b: Uint8Array | string): Uint8Array {
  const src = typeof b === 'string' ? Buffer.from(b) : b;
  const out = new Uint8Array(src.length + 1);
  out.set(src, 0);
  return out;
}

export const syncfsBlocking = (fd: number): Promise<number> => runBlocking({ op: 'syncfs', fd }, 'syncfs');

export const fsyncBlocking = (fd: number, datasync: boolean): Promise<number> =>
  runBlocking({ op: 'fsync', fd, datasync }, datasync ? 'fdatasync' : 'fsync');

export const fallocateBlocking = (fd: number, mode: number, offset: number, length: number): Promise<number> =>
  runBlocking({ op: 'fallocate', fd, mode, offset, length }, 'fallocate');

export const lseekBlocking = (fd: number, offset: number, whence: number): Promise<number> =>
  runBlocking({ op: 'lseek', fd, offset, whence }, 'lseek');

/** close(dup(fd)): the effects of a close(2) of this open file while keeping it open. */
export const flushBlocking = (fd: number): Promise<number> => runBlocking({ op: 'flush', fd }, 'flush');

/** truncate(2) of a path (the passthrough passes /proc/self/fd/N of a pinned fd). */
export const truncateBlocking = (path: Uint8Array | string, length: number): Promise<number> =>
  runBlocking({ op: 'truncate', path: cbytes(path), length }, 'truncate');

export const ftruncateBlocking = (fd: number, length: number): Promise<number> =>
  runBlocking({ op: 'ftruncate', fd, length }, 'ftruncate');

/** unlinkat(2); `name` is copied (NUL-terminated) for the worker. */
export const unlinkatBlocking = (dirfd: number, name: Uint8Array, flags: number): Promise<number> =>
  runBlocking({ op: 'unlinkat', dirfd, name: cbytes(name), flags }, 'unlinkat');

export const renameat2Blocking = (olddirfd: number, oldName: Uint8Array, newdirfd: number, newName: Uint8Array, flags: number): Promise<number> =>
  runBlocking({ op: 'renameat2', olddirfd, oldName: cbytes(oldName), newdirfd, newName: cbytes(newName), flags: flags >>> 0 }, 'renameat2');

/**
 * openat(AT_FDCWD, path, flags, mode) on the pool (O_TRUNC frees blocks inside
 * the open): the new fd, which the caller owns. Should the worker die between
 * its open and its answer (only when the pool is torn down around it), the fd
 * is lost, never closed twice.
 */
export const openBlocking = (path: Uint8Array | string, flags: number, mode = 0): Promise<number> =>
  runBlocking({ op: 'open', path: cbytes(path), flags, mode }, 'open');

// ---- closes ---------------------------------------------------------------------------

/** fds per batch at most */
const CLOSE_BATCH = 64;
/** closeBlockingPool waits this long for pending closes */
const CLOSE_DRAIN_MS = 30_000;
const ST_FREE = 0, ST_CLAIMED = 1, ST_DONE = 2, ST_CANCELLED = 3, ST_FAILED = 4;

/** pending closes: fds and their callbacks, FIFO from closeHead */
let closeQueue: number[] = [];
let closeCallbacks: Array<(() => void) | undefined> = [];
let closeHead = 0;
let closeBatches = 0;
let closesInBatches = 0;
let closesDone = 0;
let closesOnLoop = 0;
let settledWaiters: Array<() => void> = [];
/** /dev/null, opened once, never closed; -2: unavailable */
let placeholder = -1;

function getPlaceholder(): number {
  if (placeholder === -1) {
    try {
      placeholder = fs.openSync('/dev/null', fs.constants.O_RDONLY); // Node adds O_CLOEXEC
    } catch (e) {
      placeholder = -2;
      log.warn({ err: e }, 'blocking pool: no /dev/null placeholder; closes run on the event loop');
    }
  }
  return placeholder;
}

function closeHere(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    /* the fd is gone either way */
  }
}

function closeSettled(cb: (() => void) | undefined): void {
  closesDone++;
  if (cb) {
    try {
      cb();
    } catch (e) {
      log.error({ err: e }, 'blocking pool: close callback failed');
    }
  }
}

function checkSettled(): void {
  if (closeBatches === 0 && closeHead === closeQueue.length && settledWaiters.length > 0) {
    const w = settledWaiters;
    settledWaiters = [];
    for (const f of w) f();
  }
}

/** Resolves when no close is queued or running. */
export function closesSettled(): Promise<void> {
  if (closeBatches === 0 && closeHead === closeQueue.length) return Promise.resolve();
  return new Promise((resolve) => settledWaiters.push(resolve));
}

/**
 * close(2) of `fd` off the event loop (see "Close ordering"): `done` runs once
 * the fd number is really closed (or, in the one case described there, never).
 * Never refused and never leaked.
 */
export function closeDeferred(fd: number, done?: () => void): void {
  if (getPlaceholder() < 0) {
    closesOnLoop++;
    closeHere(fd);
    closeSettled(done);
    return;
  }
  closeQueue.push(fd);
  closeCallbacks.push(done);
  pumpCloses();
}

/** closeDeferred as a promise (resolves once the fd is closed). */
export function closeBlocking(fd: number): Promise<void> {
  return new Promise((resolve) => closeDeferred(fd, resolve));
}

function pumpCloses(): void {
  const slots = Math.max(1, options.maxThreads - 1);
  while (closeBatches < slots && closeHead < closeQueue.length) {
    const pending = closeQueue.length - closeHead;
    const n = Math.min(CLOSE_BATCH, Math.ceil(pending / (slots - closeBatches)));
    const fds = closeQueue.slice(closeHead, closeHead + n);
    const cbs = closeCallbacks.slice(closeHead, closeHead + n);
    closeHead += n;
    if (closeHead === closeQueue.length) {
      closeQueue = [];
      closeCallbacks = [];
      closeHead = 0;
    } else if (closeHead >= 4096 && closeHead * 2 >= closeQueue.length) {
      closeQueue = closeQueue.slice(closeHead);
      closeCallbacks = closeCallbacks.slice(closeHead);
      closeHead = 0;
    }
    runBatch(fds, cbs);
  }
}

function runBatch(fds: number[], cbs: Array<(() => void) | undefined>): void {
  const state = new Int32Array(new SharedArrayBuffer(4 * fds.length));
  closeBatches++;
  closesInBatches += fds.length;
  const finish = (): void => {
    closeBatches--;
    closesInBatches -= fds.length;
    pumpCloses();
    checkSettled();
  };
  getPool()
    .run({ op: 'detach', fds, placeholder, state })
    .catch((e: unknown) => {
      log.warn({ err: e }, 'blocking pool: close batch failed; finishing it on the event loop');
    })
    .then(() => {
      const claimed: number[] = [];
      for (let i = 0; i < fds.length; i++) {
        const s = Atomics.compareExchange(state, i, ST_FREE, ST_CANCELLED);
        if (s === ST_CLAIMED) {
          claimed.push(i);
          continue;
        }
        if (s !== ST_DONE) closesOnLoop++; // free (now cancelled) or failed: the original file
        closeHere(fds[i]);
        closeSettled(cbs[i]);
      }
      if (claimed.length === 0) return finish();
      // Claimed and never settled: the worker may still be in dup3 on these numbers.
      // They are closed once it settles them; if it never does they stay open (and counted).
      log.error({ fds: claimed.map((i) => fds[i]) }, 'blocking pool: a close was cut short in a worker; keeping its fd open until it settles');
      const later = (delay: number): void => {
        setTimeout(() => {
          const still: number[] = [];
          for (const i of claimed) {
            const s = Atomics.load(state, i);
            if (s === ST_CLAIMED) still.push(i);
            else {
              closeHere(fds[i]);
              closeSettled(cbs[i]);
            }
          }
          claimed.length = 0;
          claimed.push(...still);
          if (still.length > 0) later(Math.min(1000, delay * 2));
        }, delay).unref();
      };
      finish();
      later(10);
    });
}

// exported for tests
export const CLOSE_STATE = { ST_FREE, ST_CLAIMED, ST_DONE, ST_CANCELLED, ST_FAILED } as const;
