/**
 * BackendMetrics (`GET /api/v1/metrics/backend`, storage-backends §7): one
 * record per backend read *attempt*, failed ones included, as upstream's
 * retry loop does. read_amount_total sums requested lengths;
 * read_cumulative_latency_millis_dist[s] sums latencies per size bucket;
 * read_latency_sizes_dist[s][l] counts attempts per size and latency bucket.
 * Token requests, HEADs and proxy pings are not counted.
 */
import { blockSizeIndex, latencyMillisIndex, zeros } from '../../common/buckets';

export class BackendMetrics {
  read_count = 0;
  read_errors = 0;
  read_amount_total = 0;
  read_cumulative_latency_millis_total = 0;
  read_cumulative_latency_millis_dist = zeros(8);
  read_count_block_size_dist = zeros(8);
  read_latency_sizes_dist: number[][] = Array.from({ length: 8 }, () => zeros(8));

  /** `id` (the mountpoint) is the lookup key and is not serialised */
  constructor(readonly backend_type: string, readonly id: string) {}

  /** One attempt of `requested` bytes that took `ms` and failed or not. */
  attempt(requested: number, ok: boolean, ms: number): void {
    this.read_count++;
    if (!ok) this.read_errors++;
    this.read_amount_total += requested;
    this.read_cumulative_latency_millis_total += ms;
    const si = blockSizeIndex(requested);
    const li = latencyMillisIndex(ms);
    this.read_cumulative_latency_millis_dist[si] += ms;
    this.read_count_block_size_dist[si]++;
    this.read_latency_sizes_dist[si][li]++;
  }

  toJSON(): Record<string, unknown> {
    const { id: _id, ...rest } = { ...this };
    return rest;
  }
}

/** `backend_type` as upstream reports it (S3 reports `oss`). */
export function metricsBackendType(type: string): string {
  return type === 's3' ? 'oss' : type;
}
