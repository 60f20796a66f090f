/** Starting the builder's worker threads from their sibling files, compiled or not. */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

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
