/**
 * A small pool of worker threads for host calls that can block for long
 * (syncfs, fsync, fallocate, close of a written file, SEEK_DATA/SEEK_HOLE),
 * so a guest can never stall the event loop with them.
 *
 * Why not koffi's `.async()` or Node's fs: koffi's async calls run on the
 * libuv thread pool and cannot report errno reliably (errno is per thread and
 * is read back on another one); Node's fs has no syncfs/fallocate; and the
 * libuv pool is shared with the /dev/fuse readers and file I/O, so long calls
 * there starve the session. Here each call runs synchronously on a piscina
 * worker (blocking-worker.ts) that reads its own thread's errno right after
 * the call and answers {ret, errno}; this side turns errno into ErrnoError.
 *
 * Bounds: at most `maxThreads` calls run at once and `maxQueue` more wait;
 * beyond that a call fails at once with EAGAIN (nothing is queued without
 * bound). `close` is exempt: the caller's own fd table bounds those, and an
 * fd must never be leaked because the queue was full.
 *
 * Lifetime: the pool is process-wide and created on first use; workers start
 * on demand (minThreads 0), an idle worker is unref'd (piscina does that) and
 * exits after `idleTimeoutMs`, so neither `node -e` scripts nor the daemon
 * are kept alive by it. `closeBlockingPool()` destroys it (it is re-created if
 * used again). A worker blocked in the kernel cannot be interrupted; the
 * process waits for it only while a call is actually in flight.
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
  | { op: 'close'; fd: number };

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

/** Stop the workers (waits for calls in flight). The pool is re-created on next use. */
export async function closeBlockingPool(): Promise<void> {
  const p = pool;
  pool = null;
  if (p) await p.close().catch(() => p.destroy());
}

export interface BlockingPoolStats {
  /** live worker threads */
  threads: number;
  /** calls running or waiting */
  inFlight: number;
  /** calls finished (ok or not) since start */
  completed: number;
  /** calls refused because the queue was full */
  rejected: number;
  maxThreads: number;
  maxQueue: number;
}

export function blockingPoolStats(): BlockingPoolStats {
  return { threads: pool?.threads.length ?? 0, inFlight, completed, rejected, maxThreads: options.maxThreads, maxQueue: options.maxQueue };
}

class WorkerFailure extends Error {}

async function dispatch(task: BlockingOp, what: string, force: boolean): Promise<BlockingResult> {
  if (!force && inFlight >= options.maxThreads + options.maxQueue) {
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
    r = await dispatch(task, what, false);
  } catch (e) {
    if (e instanceof WorkerFailure) throw new ErrnoError('EIO', e.message, { cause: e.cause });
    throw e;
  }
  if (r.ret < 0) throw errnoError(r.errno, what);
  return r.ret;
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

/**
 * close(2) off the event loop. Never refused (no queue limit) and never
 * leaks: if the pool cannot run it, the fd is closed here synchronously.
 * Errors of close itself are not reported (the fd is gone either way).
 */
export async function closeBlocking(fd: number): Promise<void> {
  try {
    await dispatch({ op: 'close', fd }, 'close', true);
  } catch {
    try {
      fs.closeSync(fd);
    } catch {
      /* already gone */
    }
  }
}
