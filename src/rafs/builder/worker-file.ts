/**
 * Starting the builder's worker threads from their sibling files, compiled
 * or not. Loads nothing else, so that the CLI can start its chunk workers
 * before it loads the rest of the builder (cli/prestart.ts).
 */
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { WORKER_STATE_SLOTS } from './chunk-protocol';

/**
 * A worker running `<name>.js` next to this file (dist/), or `<name>.ts`
 * through tsx's CommonJS hook when running the sources (tsx's hooks of this
 * thread do not reach worker threads).
 */
export function startWorker(name: string, workerData?: unknown): Worker {
  const ts = path.extname(__filename) === '.ts';
  return new Worker(path.join(__dirname, `${name}${ts ? '.ts' : '.js'}`), {
    workerData,
    execArgv: ts ? ['--require', require.resolve('tsx/cjs')] : [],
  });
}

/**
 * Chunk worker threads for a build: `NYDUS_BUILDER_THREADS` (0 = build on
 * this thread), else one less than the cores, at least 1, at most 8: this
 * thread (the walk, dedup, bootstrap) and the blob writer's take about one.
 * Measured on 2 cores under load (test/bench/build.bench.ts tree, 10
 * interleaved runs): 1 worker 0.85 s median at the CPU time of a one-thread
 * build, 2 workers 0.83–1.08 s with 0.2 s more CPU, one thread 0.96 s.
 */
export function defaultBuilderThreads(): number {
  const env = process.env.NYDUS_BUILDER_THREADS;
  if (env !== undefined && /^\d+$/.test(env)) return Math.min(64, parseInt(env, 10));
  return Math.max(1, Math.min(8, availableParallelism() - 1));
}

/** A chunk worker (chunk-worker.ts) and what it shares with the main thread (chunk-protocol.ts). */
export interface SpawnedWorker { worker: Worker; state: Int32Array }

/** Start `n` chunk workers (for a ChunkPool). */
export function spawnChunkWorkers(n: number): SpawnedWorker[] {
  return Array.from({ length: n }, () => {
    const state = new Int32Array(new SharedArrayBuffer(4 * WORKER_STATE_SLOTS));
    return { worker: startWorker('chunk-worker', state), state };
  });
}
