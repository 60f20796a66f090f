/**
 * The builder's chunk pipeline: files are cut into chunks on this thread, in
 * blob order, and handed in groups to worker threads (chunk-worker.ts) that
 * read, digest and compress them; the answers are taken back in the order
 * the groups were made and fed to the BlobWriter, which alone decides
 * dedup, batching, offsets and writes. The blob is therefore the same bytes
 * as a build on one thread (`BlobWriter.addFile`).
 *
 * Each group goes to the worker with the fewest groups pending, which does
 * its groups in order and answers with one buffer, given back to it once
 * its stored bytes are written (the writer writes them from the answer
 * itself; no allocation per group once the build runs).
 *
 * While the oldest group is not answered, this thread reads on in `files`
 * (a walk of the source tree) rather than waiting: the tree is read while
 * the workers crunch the big files found first; and when every worker has
 * its fill of groups waiting, it does the next group itself (see
 * ChunkPool.hereMode): both cores compress.
 *
 * Bounds: at most `MAX_GROUPS_PER_THREAD` groups per worker are in flight, a
 * group holds at most `GROUP_BYTES` of file data (one chunk if
 * bigger) and `GROUP_JOBS` chunks, so the chunks pending (read, answered or
 * being written) are a few MiB per thread whatever the tree.
 *
 * A worker remembers the digests it answered and answers a repeat with the
 * digest alone (no compression): the first occurrence, earlier in blob order
 * (a worker takes its groups in order), is already in the writer's dedup map. Should it not be (it cannot), the chunk
 * is read again here.
 */
import { availableParallelism } from 'node:os';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Worker } from 'node:worker_threads';
import { DIGEST_SIZE } from '../../common/digest';
import { ErrnoError, eio } from '../../common/errno';
import type { BlobWriter } from './blob-writer';
import { type GroupReply, type GroupRequest, type GroupTask, type JobFile, JobMode, RESULT_HEADER, ResultKind, WorkerState } from './chunk-protocol';
import { type SpawnedWorker, defaultBuilderThreads, spawnChunkWorkers } from './worker-file';
import type { BuildInode } from './tree';
import type { ChunkWork } from './chunk-work';

const GROUP_BYTES = 1 << 20;
const GROUP_JOBS = 2048;
const MAX_GROUPS_PER_THREAD = 4;
/** `Group.worker` of a group done on this thread */
const HERE = -1;
/** groups between two looks at how busy the machine is (ChunkPool.spareCore) */
const LOOK_EVERY = 4;
const CORES = availableParallelism();
const loadavgBuf = Buffer.alloc(128);

export { defaultBuilderThreads } from './worker-file';

/** One chunk of one file, as the main thread sees it. */
interface Job { inode: BuildInode; off: number; len: number; batchable: boolean; last: boolean }

interface Group { jobs: Job[]; answer?: Promise<ArrayBuffer>; worker?: number; sync?: BuildInode; settled: boolean }

/** files walked at a time while waiting for an answer (a few ms of lstat and xattrs), between looks at the event loop */
const WALK_AHEAD_STEP = 64;
const yieldToLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** The worker threads of one build; start them early (they load while the tree is read). */
export class ChunkPool {
  readonly threads: number;
  private readonly workers: Worker[] = [];
  /** per worker: its groups not answered yet, oldest first (a worker answers in order) */
  private readonly queues: Array<Array<{ resolve: (ab: ArrayBuffer) => void; reject: (e: Error) => void }>> = [];
  private failure?: Error;
  private destroyed = false;
  /** per worker: what it shares (loaded, groups answered), and the groups sent to it */
  private readonly states: Int32Array[] = [];
  private readonly sent: number[] = [];
  /** this thread's runner (chunk-work.ts), loaded when first used */
  private here?: ChunkWork;
  /**
   * Whether this thread does groups itself, NYDUS_BUILDER_HERE (read when the
   * pool starts): unset = until a worker has loaded (the first groups are
   * made tens of ms before that), and whenever every worker has
   * MAX_GROUPS_PER_THREAD groups waiting (instead of waiting for their
   * answers: a worker still has a few ms of work queued while this thread
   * does one group, ~1 ms per MiB) while the machine has a core to spare
   * (`spareCore`); a number n = until a worker has loaded and whenever every
   * worker has n groups waiting, busy machine or not; 'ready' = only until a
   * worker has loaded; '0' = never; 'alternate' = every other group (tests:
   * duplicates spread over this thread and the workers).
   *
   * Measured on 2 cores (test/bench/build.bench.ts tree, alternating runs):
   * with other work loading them (load ~5), helping at 4 waiting was slower
   * than never (0.78 s median against 0.58 s, 9 runs, and 0.12 s more CPU:
   * this thread competes for the cores, and while it is preempted with a
   * group no answer after it is written); with less load (~3.5) it was
   * faster (0.46 s against 0.54 s, 7 runs; 2 waiting 0.50 s: the worker runs
   * dry while this thread does a group). Hence the spare core test.
   */
  private readonly hereMode: 'off' | 'alternate' | number;
  /** the default mode: help only while the machine has a core to spare */
  private readonly adaptive: boolean;
  private runs = 0;
  /** `runs` at which `spareCore` looks at the machine again, and what it saw last */
  private nextLook = 0;
  private spare = true;
  /** /proc/loadavg, open while the pool is (null: not readable here) */
  private loadavgFd: number | null | undefined;

  /** Whether this thread may do groups itself (`hereMode`). */
  get helps(): boolean {
    return this.hereMode !== 'off';
  }

  /** `spawned`: chunk workers already started for this pool (spawnChunkWorkers), else they are started here */
  constructor(threads: number, spawned?: SpawnedWorker[]) {
    this.threads = threads;
    const env = process.env.NYDUS_BUILDER_HERE;
    this.hereMode = env === '0' ? 'off' : env === 'alternate' ? 'alternate' : env === 'ready' ? Infinity : env && /^[1-9]\d*$/.test(env) ? parseInt(env, 10) : MAX_GROUPS_PER_THREAD;
    this.adaptive = !env;
    const workers = spawned?.length === threads ? spawned : spawnChunkWorkers(threads);
    for (let i = 0; i < threads; i++) {
      const { worker: w, state } = workers[i];
      const q: ChunkPool['queues'][number] = [];
      w.on('message', (r: GroupReply) => {
        const p = q.shift();
        if (!p) return;
        if (r.ab) p.resolve(r.ab);
        else p.reject(Object.assign(new ErrnoError(r.error?.code ?? 'EIO', r.error?.message ?? 'chunk worker failed')));
      });
      const fail = (e: Error) => {
        this.failure ??= e;
        for (const p of q.splice(0)) p.reject(e);
      };
      w.on('error', fail);
      w.on('exit', () => fail(new Error('chunk worker exited')));
      this.workers.push(w);
      this.queues.push(q);
      this.states.push(state);
      this.sent.push(0);
    }
  }

  /**
   * Run a group on the least busy worker, or on this thread (synchronously,
   * worker HERE) as `hereMode` says; resolves with the answer and who gave it.
   */
  run(t: GroupTask): { answer: Promise<ArrayBuffer>; worker: number } {
    // groups a worker has not answered yet, read from what it shares (its answers reach this
    // thread's queues only when its event loop turns, and it may be busy here)
    const pending = (k: number) => this.sent[k] - Atomics.load(this.states[k], WorkerState.Answered);
    let i = 0;
    let ready = Atomics.load(this.states[0], WorkerState.Ready) === 1;
    for (let k = 1; k < this.threads; k++) {
      if (pending(k) < pending(i)) i = k;
      ready ||= Atomics.load(this.states[k], WorkerState.Ready) === 1;
    }
    const m = this.hereMode;
    const here = m === 'off' ? false : m === 'alternate' ? this.runs % 2 === 1 : !ready || (pending(i) >= m && (!this.adaptive || this.spareCore()));
    this.runs++;
    if (here && !this.failure) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      // answers kept: about this thread's groups in flight (32 like a worker's cost a 100,000-file build ~30 MiB more RSS)
      this.here ??= new (require('./chunk-work') as typeof import('./chunk-work')).ChunkWork(MAX_GROUPS_PER_THREAD);
      let answer: Promise<ArrayBuffer>;
      try {
        answer = Promise.resolve(this.here.work(t));
      } catch (e) {
        answer = Promise.reject(new ErrnoError((e as NodeJS.ErrnoException).code ?? 'EIO', (e as Error).message, { cause: e }));
      }
      return { answer, worker: HERE };
    }
    const answer = this.failure ? Promise.reject(this.failure) : new Promise<ArrayBuffer>((resolve, reject) => {
      this.queues[i].push({ resolve, reject });
      this.sent[i]++;
      this.workers[i].postMessage({ task: t } satisfies GroupRequest);
    });
    return { answer, worker: i };
  }

  /**
   * Whether the machine has a core to spare for this thread's groups (see
   * hasSpareCore), from /proc/loadavg, looked at every LOOK_EVERY groups (a
   * read of a few us). Where it cannot be read: yes.
   */
  private spareCore(): boolean {
    if (this.runs < this.nextLook) return this.spare;
    this.nextLook = this.runs + LOOK_EVERY;
    if (this.loadavgFd === null) return (this.spare = true);
    try {
      this.loadavgFd ??= fs.openSync('/proc/loadavg', 'r');
      const n = fs.readSync(this.loadavgFd, loadavgBuf, 0, loadavgBuf.length, 0);
      this.spare = hasSpareCore(loadavgBuf.toString('latin1', 0, n), CORES);
    } catch {
      this.loadavgFd = null;
      this.spare = true;
    }
    return this.spare;
  }

  /** Give a consumed answer back to the worker that made it, for its next ones. */
  recycle(worker: number, ab: ArrayBuffer): void {
    if (worker === HERE) { this.here?.recycle(ab); return; }
    if (this.failure || this.destroyed) return;
    this.workers[worker].postMessage({ recycle: ab } satisfies GroupRequest, [ab]);
  }

  async destroy(): Promise<void> {
    this.destroyed = true;
    if (this.loadavgFd) fs.closeSync(this.loadavgFd);
    this.loadavgFd = null;
    for (const w of this.workers) w.removeAllListeners('exit');
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  /** Whether the workers keep the process alive (a prestarted pool does not until adopted). */
  private keepAlive(on: boolean): void {
    for (const w of this.workers) if (on) w.ref(); else w.unref();
  }

  /**
   * Start a pool before the rest of the program is loaded (the CLI, for
   * `create`): its threads boot while this one loads the builder and reads
   * the command line. Unused, it does not keep the process alive.
   */
  static prestart(threads = defaultBuilderThreads(), spawned?: SpawnedWorker[]): void {
    if (threads <= 0 || prestarted) return;
    prestarted = new ChunkPool(threads, spawned);
    prestarted.keepAlive(false);
  }

  /** A pool of `threads` workers: the prestarted one when it has that many, else a new one. */
  static take(threads: number): ChunkPool {
    const p = prestarted;
    prestarted = undefined;
    if (p && p.threads === threads) {
      p.keepAlive(true);
      return p;
    }
    void p?.destroy();
    return new ChunkPool(threads);
  }
}

let prestarted: ChunkPool | undefined;

/**
 * Whether a machine whose /proc/loadavg reads `loadavg` ("0.54 0.96 1.13
 * 2/345 12345": its 4th field counts the threads running or runnable now,
 * the reader and a busy worker among them) has at most one more of them
 * than `cores`: one more because this build's own blob writes and V8's
 * compiler and GC threads run now and then (on 2 free cores a look sees 3
 * about a quarter of the time), and because beside one other busy thread
 * helping at 4 waiting still paid (load ~2.4 with this build's, 9
 * alternating runs: 0.48 s median, against 0.53 s for a build that never
 * helps and 0.55 s for this test without the one more), beside three it did
 * not (load ~5, ChunkPool.hereMode). Yes when the count is not there.
 */
export function hasSpareCore(loadavg: string, cores: number): boolean {
  const m = /^\S+ \S+ \S+ (\d+)\//.exec(loadavg);
  return !m || parseInt(m[1], 10) <= cores + 1;
}

/**
 * Chunk `files` (regular files, blob order; may be produced as the tree is read) into `writer` through `pool`,
 * filling each inode's `chunks`; `progress` gets the file bytes done so far.
 * With `sink`, the writer writes behind this thread (`useSink`), from the answers themselves.
 * `afterWalk` is called once `files` is exhausted (the tree is read) and gives work that can be done
 * before the chunks are (the bootstrap's layout, create.ts) in steps: they are taken while this
 * thread waits for an answer, and those left once every file is cut into groups then, while the
 * last groups are still being worked on.
 */
export async function addFilesParallel(
  writer: BlobWriter, files: Iterable<BuildInode>, pool: ChunkPool, progress: (bytes: number) => void, sink = true, afterWalk?: () => Iterator<unknown>,
): Promise<void> {
  const o = writer.opts;
  const cs = o.chunkSize;
  const batchSize = o.batchSize ?? 0;
  const inflight: Group[] = [];
  // this thread, when it does groups, counts as one more thread
  const maxInflight = Math.max(2, (pool.threads + (pool.helps ? 1 : 0)) * MAX_GROUPS_PER_THREAD);
  let done = 0;

  let cur: Job[] = [];
  let curBytes = 0;
  let curFiles: JobFile[] = [];
  let curFileIdx = new Map<BuildInode, number>();

  const consume = async (g: Group): Promise<void> => {
    if (g.sync) {
      writer.addFile(g.sync);
      g.sync.source?.close?.();
      g.sync.source = undefined;
      done += g.sync.size;
      progress(done);
      return;
    }
    const ab = await g.answer!;
    const n = g.jobs.length;
    const meta = new Uint32Array(ab, 0, RESULT_HEADER / 4 + n * 2);
    if (meta[0] !== n) throw eio(`chunk worker answered ${meta[0]} chunks for ${n}`);
    const digests = RESULT_HEADER + n * 8;
    let pos = digests + n * DIGEST_SIZE;
    for (let j = 0; j < n; j++) {
      const job = g.jobs[j];
      const kind = meta[RESULT_HEADER / 4 + j * 2] as ResultKind;
      const len = meta[RESULT_HEADER / 4 + j * 2 + 1];
      // a copy: chunk infos keep their digest, and must not keep the whole answer alive
      const id = Buffer.from(Buffer.from(ab, digests + j * DIGEST_SIZE, DIGEST_SIZE));
      const data = Buffer.from(ab, pos, len);
      pos += len;
      const reread = (): Buffer => {
        const b = job.inode.source!.read(job.off, job.len);
        if (b.length !== job.len) throw eio(`short read from file source at ${job.off}: got ${b.length} of ${job.len} bytes`);
        return b;
      };
      let raw = reread;
      let stored: { data: Buffer; compressed: boolean } | undefined;
      // a batch member's bytes wait in the batch (maybe past this group): a copy, the answer goes back to its worker
      if (kind === ResultKind.Raw || kind === ResultKind.Uncompressible) raw = job.batchable ? () => Buffer.from(data) : () => data;
      if (kind === ResultKind.Compressed || kind === ResultKind.Uncompressible) stored = { data, compressed: kind === ResultKind.Compressed };
      job.inode.chunks.push(writer.addPrepared(id, job.len, job.off, job.batchable, raw, stored));
      if (job.last) {
        job.inode.source?.close?.();
        job.inode.source = undefined; // done with (its memory goes with it: 100,000-file trees)
        done += job.inode.size;
        progress(done);
      }
    }
    // the stored bytes are written from the answer itself: it goes back to its worker once they are
    const worker = g.worker!;
    writer.afterWritten(() => pool.recycle(worker, ab));
    await writer.room();
  };

  // files walked but not cut into groups yet: the tree is read on (`files` may be a walk
  // of it) while the oldest group is being worked on, instead of waiting idle for it
  const it = files[Symbol.iterator]();
  const backlog: BuildInode[] = [];
  let backlogPos = 0;
  let walkDone = false;
  const walkOn = (n: number): void => {
    for (let k = 0; k < n && !walkDone; k++) {
      const step = it.next();
      if (step.done) walkDone = true;
      else backlog.push(step.value);
    }
  };
  const nextFile = (): BuildInode | undefined => {
    if (backlogPos === backlog.length) {
      backlog.length = 0;
      backlogPos = 0;
      walkOn(1);
      if (backlog.length === 0) return undefined;
    }
    return backlog[backlogPos++];
  };

  // the work after the walk (afterWalk), once started; done when it has no step left
  let later: Iterator<unknown> | undefined;
  let laterDone = !afterWalk;
  /** one step of the work after the walk; false when there is none left */
  const stepLater = (): boolean => {
    if (laterDone) return false;
    later ??= afterWalk!();
    if (later.next().done) laterDone = true;
    return !laterDone;
  };

  const submit = async (g: Group): Promise<void> => {
    inflight.push(g);
    if (g.worker === HERE) {
      // done here: let the answers and the finished writes in, and write what is done (in order)
      await yieldToLoop();
      while (inflight.length > 0 && inflight[0].settled) await consume(inflight.shift()!);
    }
    while (inflight.length >= maxInflight) {
      while (!inflight[0].settled && (!walkDone || !laterDone)) {
        if (!walkDone) walkOn(WALK_AHEAD_STEP);
        else stepLater();
        await yieldToLoop(); // answers come in through the event loop
      }
      await consume(inflight.shift()!);
    }
  };

  const flushGroup = async (): Promise<void> => {
    if (cur.length === 0) return;
    if (sink) writer.useSink();
    const jobs: number[] = new Array(cur.length * 4);
    cur.forEach((j, k) => {
      jobs[k * 4] = curFileIdx.get(j.inode)!;
      jobs[k * 4 + 1] = j.off;
      jobs[k * 4 + 2] = j.len;
      jobs[k * 4 + 3] = j.batchable && batchSize > 0 ? JobMode.Raw : JobMode.Pack;
    });
    const { answer, worker } = pool.run({ compressor: o.compressor, digester: o.digester, files: curFiles, jobs });
    const g: Group = { jobs: cur, answer, worker, settled: false };
    // a failed group is reported when it is consumed, in order
    answer.then(() => { g.settled = true; }, () => { g.settled = true; });
    cur = [];
    curBytes = 0;
    curFiles = [];
    curFileIdx = new Map();
    await submit(g);
  };

  try {
    for (let inode = nextFile(); inode; inode = nextFile()) {
      if (!inode.isReg() || inode.size === 0) continue;
      const loc = inode.source?.location;
      if (!loc) {
        // not readable by a worker: chunked here, in its turn
        await flushGroup();
        await submit({ jobs: [], sync: inode, settled: true });
        continue;
      }
      inode.chunks = [];
      const batchable = inode.size <= cs && inode.size < batchSize / 2;
      for (let off = 0; off < inode.size; off += cs) {
        const len = Math.min(cs, inode.size - off);
        if (cur.length > 0 && (curBytes + len > GROUP_BYTES || cur.length >= GROUP_JOBS)) await flushGroup();
        if (!curFileIdx.has(inode)) {
          curFileIdx.set(inode, curFiles.length);
          curFiles.push({ path: loc.path, fd: loc.fd, base: loc.base });
        }
        cur.push({ inode, off, len, batchable, last: off + len >= inode.size });
        curBytes += len;
      }
    }
    await flushGroup();
    while (stepLater());
    while (inflight.length > 0) await consume(inflight.shift()!);
  } finally {
    // let no answer outlive the build unobserved (the pool is destroyed by the caller)
    await Promise.allSettled(inflight.map((g) => g.answer));
  }
}
