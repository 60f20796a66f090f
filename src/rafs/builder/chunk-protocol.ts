/**
 * What the builder's main thread (chunk-pipeline.ts) and its chunk workers
 * (chunk-worker.ts) exchange. Kept apart so the worker loads nothing else.
 *
 * A task is a group of jobs (one chunk of one file each, in blob order):
 * `jobs` holds 4 numbers per job: index into `files`, offset in the file,
 * length, JobMode. The answer is one ArrayBuffer:
 *   u32 job count, u32 reserved,
 *   per job: u32 kind (ResultKind), u32 stored length,
 *   per job: 32-byte digest,
 *   the stored bytes of every job one after the other.
 */
export enum JobMode {
  /** to be stored on its own: compressed when that makes it smaller */
  Pack = 0,
  /** a batch member: the raw bytes */
  Raw = 1,
}

export enum ResultKind {
  /** the worker answered the same digest and size earlier: the main thread already has it */
  Duplicate = 0,
  /** raw bytes (JobMode.Raw, or compressor none) */
  Raw = 1,
  /** compressed bytes */
  Compressed = 2,
  /** stored raw because compression did not make it smaller */
  Uncompressible = 3,
}

/** Where a worker reads a file: a path it opens, or an open fd (a tar) at a base offset. */
export interface JobFile { path?: string; fd?: number; base: number }

export interface GroupTask {
  compressor: number;
  digester: number;
  files: JobFile[];
  jobs: number[];
}

export const RESULT_HEADER = 8;

/** main thread → worker: a group to do, or an answer's buffer to reuse */
export interface GroupRequest { task?: GroupTask; recycle?: ArrayBuffer }
/** worker → main thread, one per task, in order */
export interface GroupReply { ab?: ArrayBuffer; error?: { message: string; code?: string } }

/**
 * Shared with each worker (its workerData: an Int32Array over a
 * SharedArrayBuffer) so that the main thread knows, without waiting for its
 * event loop, whether the worker has loaded and how many groups it has
 * answered (chunk-pipeline.ts: which groups it does itself).
 */
export enum WorkerState { Ready = 0, Answered = 1 }
export const WORKER_STATE_SLOTS = 2;
