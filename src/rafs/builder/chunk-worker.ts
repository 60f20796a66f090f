/**
 * A worker thread of the builder's chunk pipeline (chunk-pipeline.ts),
 * started by ChunkPool (worker-file.ts): does the groups it is sent
 * (chunk-work.ts) in the order they come and answers each with one
 * transferred ArrayBuffer, which the main thread gives back once consumed.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { initDigest } from '../../common/digest';
import { type GroupReply, type GroupRequest, WorkerState } from './chunk-protocol';
import { ChunkWork } from './chunk-work';

const runner = new ChunkWork();
/** what the main thread reads of this worker (chunk-protocol.ts) */
const state = workerData instanceof Int32Array ? workerData : undefined;

function handle(m: GroupRequest): void {
  if (m.recycle) { runner.recycle(m.recycle); return; }
  let r: GroupReply;
  try {
    r = { ab: runner.work(m.task!) };
  } catch (e) {
    r = { error: { message: (e as Error).message, code: (e as NodeJS.ErrnoException).code } };
  }
  if (state) Atomics.add(state, WorkerState.Answered, 1);
  parentPort!.postMessage(r, r.ab ? [r.ab] : []);
}

// groups must be done in the order they come (see ChunkWork's `seen`): the first ones wait, in order, for the digest module
// (should it fail, hashing throws and each group answers that error)
// (the main thread does groups itself until a worker says it is ready: chunk-pipeline.ts)
let ready: Promise<void> | undefined = initDigest().catch(() => {}).then(() => {
  ready = undefined;
  if (state) Atomics.store(state, WorkerState.Ready, 1);
});
parentPort!.on('message', (m: GroupRequest) => {
  if (ready) ready = ready.then(() => handle(m));
  else handle(m);
});
