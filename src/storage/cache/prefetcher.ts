/**
 * Background prefetch as upstream (storage-backends §6 "Queue and workers",
 * "Priority versus user reads"):
 *  - one FIFO of jobs per device; a job is a run of chunks of one blob that
 *    one backend request can fetch (chunk lists are sorted by compressed
 *    offset, de-duplicated and merged with P = max(batch_size, 128 KiB) and a
 *    gap of P/128; a whole blob is cut into P-sized runs);
 *  - `threads` workers take jobs; user reads never queue behind them (they go
 *    straight to the cache/backend) and only wait for a chunk a job is
 *    already fetching;
 *  - `bandwidth_limit` (bytes/s; 0 = none): a token bucket of
 *    L = max(limit, 16 MiB) refilled continuously at L/s, holding at most L;
 *    before each job a worker takes the job's bytes plus the user-read bytes
 *    counted since the last job (capped at 2L);
 *  - metrics: prefetch_requests_count / prefetch_data_amount per job,
 *    prefetch_unmerged_chunks per submitted chunk, begin time when the first
 *    worker starts, end time and cumulative (completion - queueing) time per
 *    job, live workers; progress (chunks queued / chunks done, an addition) for
 *    the API and nydusctl.
 */
import { warnLimited } from '../../common/log';
import { blobOrder, mergeRuns } from '../blob/chunk-directory';
import type { BlobInfo, ChunkInfo } from '../format/types';
import type { BlobcacheMetrics } from './metrics';

const MIN_BATCH = 128 << 10;
const MIN_BANDWIDTH = 16 << 20;

export interface PrefetchOptions {
  threads: number;
  /** merge size P (0 = 128 KiB) */
  batchSize: number;
  /** bytes per second, 0 = unlimited */
  bandwidthLimit: number;
}

interface Job {
  info: BlobInfo;
  run: ChunkInfo[];
  bytes: number;
  queued: number;
}

/** Runs one job: fetches the run into the cache; resolves when persisted. */
export type RunJob = (info: BlobInfo, run: ChunkInfo[]) => Promise<void>;

export class Prefetcher {
  private readonly queue: Job[] = [];
  private head = 0;
  private workers = 0;
  private stopped = false;
  private readonly idleWaiters = new Set<() => void>();
  private readonly bucket: TokenBucket | undefined;
  private userBytes = 0;
  readonly batch: number;

  constructor(private readonly opts: PrefetchOptions, private readonly runJob: RunJob, private readonly metrics?: BlobcacheMetrics) {
    this.batch = Math.max(opts.batchSize, MIN_BATCH);
    if (opts.bandwidthLimit > 0) this.bucket = new TokenBucket(Math.max(opts.bandwidthLimit, MIN_BANDWIDTH));
  }

  /** Queue `chunks` of blob `info` (any order, duplicates allowed). */
  submitChunks(info: BlobInfo, chunks: readonly ChunkInfo[]): void {
    if (this.stopped || chunks.length === 0) return;
    if (this.metrics) this.metrics.prefetchUnmergedChunks += chunks.length;
    this.enqueue(info, mergeRuns(blobOrder(chunks), this.batch));
  }

  /** Queue the whole blob (its chunks in blob order). */
  submitBlob(info: BlobInfo, all: readonly ChunkInfo[]): void {
    if (this.stopped || all.length === 0) return;
    this.enqueue(info, mergeRuns(all, this.batch));
  }

  private enqueue(info: BlobInfo, runs: ChunkInfo[][]): void {
    const now = Date.now();
    for (const run of runs) {
      const last = run[run.length - 1];
      this.queue.push({ info, run, bytes: last.compressedOffset + last.compressedSize - run[0].compressedOffset, queued: now });
      if (this.metrics) this.metrics.prefetchChunksTotal += run.length;
    }
    while (this.workers < Math.max(1, this.opts.threads) && this.pending > 0) {
      this.workers++;
      void this.worker();
    }
  }

  private get pending(): number {
    return this.queue.length - this.head;
  }

  /** A user read of `bytes` while prefetch work is queued (charged to the bandwidth budget). */
  userRead(bytes: number): void {
    if (this.opts.bandwidthLimit > 0 && this.pending > 0) this.userBytes += bytes;
  }

  private async throttle(bytes: number): Promise<void> {
    if (!this.bucket) return;
    const wait = this.bucket.take(bytes + this.userBytes);
    this.userBytes = 0;
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }

  private async worker(): Promise<void> {
    const m = this.metrics;
    if (m) {
      m.prefetchWorkers++;
      if (m.prefetchBegin === 0) m.prefetchBegin = Date.now();
    }
    try {
      while (!this.stopped && this.pending > 0) {
        const job = this.queue[this.head];
        this.queue[this.head++] = undefined as unknown as Job;
        if (this.head > 1024 && this.head * 2 > this.queue.length) { this.queue.splice(0, this.head); this.head = 0; }
        await this.throttle(job.bytes);
        if (this.stopped) break;
        if (m) { m.prefetchRequestsCount++; m.prefetchDataAmount += job.bytes; }
        try {
          await this.runJob(job.info, job.run);
        } catch (err) {
          warnLimited('storage.prefetch', { blobId: job.info.blobId, chunks: job.run.length, err: (err as Error).message }, 'prefetch failed');
        }
        if (m) m.prefetchChunksDone += job.run.length;
        if (m) { m.prefetchEnd = Date.now(); m.prefetchCumulativeTimeMillis += m.prefetchEnd - job.queued; }
      }
    } finally {
      if (m) m.prefetchWorkers--;
      this.workers--;
      if (this.workers === 0) for (const f of [...this.idleWaiters]) f();
    }
  }

  /** Resolves when no job is queued or running. */
  idle(): Promise<void> {
    if (this.workers === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const f = () => { this.idleWaiters.delete(f); resolve(); };
      this.idleWaiters.add(f);
    });
  }

  /** Drop queued jobs; running ones finish. */
  stop(): Promise<void> {
    this.stopped = true;
    this.queue.length = 0;
    this.head = 0;
    return this.idle();
  }
}

/**
 * Bytes-per-second bucket: holds at most `rate` tokens (starts full), refills
 * continuously at `rate`/s; take(n) charges min(n, 2·rate) and says how many
 * ms to wait before the charged bytes may go (the balance may go negative).
 */
export class TokenBucket {
  private tokens: number;
  private at: number;

  constructor(readonly rate: number, private readonly now: () => number = Date.now) {
    this.tokens = rate;
    this.at = now();
  }

  take(n: number): number {
    const t = this.now();
    this.tokens = Math.min(this.rate, this.tokens + ((t - this.at) / 1000) * this.rate);
    this.at = t;
    this.tokens -= Math.min(n, 2 * this.rate);
    return this.tokens < 0 ? Math.ceil((-this.tokens / this.rate) * 1000) : 0;
  }
}
