/**
 * BlobcacheMetrics, as upstream serialises them (storage-backends.md §7),
 * counted where the events happen: the device (reads, fast-path hits,
 * prefetch jobs) and the shared FileCache (slow-path hits, chunks persisted,
 * bytes waiting for write-behind), per mounted instance. Two fields follow
 * upstream's (a deliberate addition, ignored by upstream's clients):
 * `prefetch_chunks_total` / `prefetch_chunks_done`, the progress of the
 * prefetch (file list or whole-blob download) asked for.
 */
export class BlobcacheMetrics {
  /** chunk ranges served straight from the cache file (CacheFast) */
  partialHits = 0;
  /** chunks served from the cache through the slow path (read back) */
  wholeHits = 0;
  /** read() calls */
  total = 0;
  /** +1 per chunk persisted and +1 per slow-path hit (upstream's definition) */
  entriesCount = 0;
  prefetchDataAmount = 0;
  prefetchRequestsCount = 0;
  prefetchWorkers = 0;
  prefetchUnmergedChunks = 0;
  prefetchCumulativeTimeMillis = 0;
  prefetchBegin = 0;
  prefetchEnd = 0;
  /** bytes of fetched chunks waiting to be written to the cache */
  bufferedBackendSize = 0;
  /** prefetch progress (not upstream): chunks queued for prefetch, and chunks whose job finished */
  prefetchChunksTotal = 0;
  prefetchChunksDone = 0;
  /** blob ids whose cache files this instance opened */
  readonly blobs = new Set<string>();

  constructor(readonly storePath: string) {}

  toJSON(): Record<string, unknown> {
    const secs = (t: number) => Math.floor(t / 1000);
    return {
      underlying_files: [...this.blobs].map((b) => `${b}.blob.data`),
      store_path: this.storePath,
      partial_hits: this.partialHits,
      whole_hits: this.wholeHits,
      total: this.total,
      entries_count: this.entriesCount,
      prefetch_data_amount: this.prefetchDataAmount,
      prefetch_requests_count: this.prefetchRequestsCount,
      prefetch_workers: this.prefetchWorkers,
      prefetch_unmerged_chunks: this.prefetchUnmergedChunks,
      prefetch_cumulative_time_millis: this.prefetchCumulativeTimeMillis,
      prefetch_begin_time_secs: secs(this.prefetchBegin),
      prefetch_begin_time_millis: this.prefetchBegin % 1000,
      prefetch_end_time_secs: secs(this.prefetchEnd),
      prefetch_end_time_millis: this.prefetchEnd % 1000,
      buffered_backend_size: this.bufferedBackendSize,
      data_all_ready: false,
      // additions (not upstream): progress of the prefetch asked for
      prefetch_chunks_total: this.prefetchChunksTotal,
      prefetch_chunks_done: this.prefetchChunksDone,
    };
  }
}
