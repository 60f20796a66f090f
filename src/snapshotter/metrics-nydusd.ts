/**
 * Per-image nydusd metrics of containerd-nydus-grpc (nydusify-snapshotter.md
 * §3.8; upstream pkg/metrics/serve.go, collector/{fs,cache,daemon}.go,
 * data/{fs,cache,daemon}.go, types/ttl/gauge.go). Every serving nydusd is
 * polled through src/api/client.ts:
 *
 *  - every `collect_interval` (default 1m): for each RAFS instance
 *    `GET /api/v1/metrics` and `GET /api/v1/metrics/blobcache`, with
 *    `?id=/<meta snapshot id>` for the shared daemon and no id for a
 *    dedicated one (its only instance), plus the daemon's RSS from /proc;
 *  - every `hung_io_interval` (default 10s): `GET /api/v1/metrics/inflight`
 *    of each daemon; requests older than the interval are hung IOs.
 *
 * Exported as upstream: gauges `nydusd_total_read_bytes` (data_read),
 * `nydusd_read_hits` / `nydusd_read_errors` (fop_hits / fop_errors of READ),
 * the eleven `nydusd_cache_*` gauges (image_ref) and `nydusd_rss_kilobytes`
 * (daemon_id), all with a 3 minute TTL; `nydusd_hung_io_counts`; histograms
 * `nydusd_cumulative_read_block_bytes` (block_count_read, `le` 1, 4, 16, 64,
 * 128, 512, 1024, 2048) and `nydusd_read_latency_microseconds`
 * (read_latency_dist, `le` 1, 20, 50, 100, 500, 1000, 2000, 4000) built as
 * upstream's const histograms: bucket i is labelled with upstream's i-th
 * bound, counts are cumulative, `_sum` is Σ bound[i] × count[i].
 *
 * Robustness: requests time out (default 5 s, never longer than the
 * interval), the first timeout or connection failure of a daemon skips its
 * remaining requests of the round, daemons are polled in parallel, and a
 * round never overlaps the previous one of its kind (the tick is skipped).
 *
 * Differences: a series is dropped as soon as its image (RAFS instance) or
 * daemon is no longer recorded, and otherwise exactly at TTL expiry, checked
 * at scrape time (upstream sweeps every 10 minutes, so series linger up to
 * 13 minutes); the histograms are rebuilt every round even when no daemon
 * answered (upstream keeps the previous round's then); a prefetch not
 * finished yet reports `nydusd_cache_prefetch_duration_millis` 0 (upstream's
 * unsigned subtraction wraps around); two instances of one image reference
 * give one series (the last polled).
 */
import * as fs from 'node:fs';
import * as client from 'prom-client';
import { ApiClientError, Json, NydusdClient } from '../api/client';
import { log } from '../common/log';
import { DaemonManager, sharedMountpoint } from './daemon';
import type { DaemonRecord, InstanceRecord } from './store';

/** Upstream ttl.DefaultTTL. */
export const METRICS_TTL_MS = 3 * 60_000;
/** Longest wait for one API request of the collector. */
export const COLLECT_REQUEST_TIMEOUT_MS = 5_000;
/** READ's index in fop_hits / fop_errors (StatsFop). */
const FOP_READ = 4;
/** Upstream data.MetricHists bucket bounds. */
export const READ_BLOCK_BUCKETS = [1, 4, 16, 64, 128, 512, 1024, 2048];
export const READ_LATENCY_BUCKETS = [1, 20, 50, 100, 500, 1000, 2000, 4000];

type Labels = Record<string, string>;
const keyOf = (l: Labels): string => JSON.stringify(Object.keys(l).sort().map((k) => [k, l[k]]));

/**
 * Which label values still belong to a recorded instance / daemon: read from
 * the store once per scrape (the sets are dropped at the next turn of the
 * event loop; a scrape runs every metric's collect in one turn).
 */
class LiveSet {
  private fresh = false;
  private imageRefs = new Set<string>();
  private daemonIds = new Set<string>();

  constructor(private readonly daemons?: DaemonManager) {}

  has(l: Labels): boolean {
    if (!this.daemons) return true;
    if (!this.fresh) {
      this.fresh = true;
      setImmediate(() => { this.fresh = false; });
      this.imageRefs = new Set(this.daemons.store.instances().filter((i) => i.daemonId !== '').map((i) => i.imageRef));
      this.daemonIds = new Set(this.daemons.daemons().map((d) => d.id));
    }
    if (l.image_ref !== undefined && !this.imageRefs.has(l.image_ref)) return false;
    if (l.daemon_id !== undefined && !this.daemonIds.has(l.daemon_id)) return false;
    return true;
  }
}

/** A gauge vector whose series expire `ttlMs` after their last set (upstream ttl.GaugeVec). */
export class TtlGauge {
  private readonly until = new Map<string, { labels: Labels; at: number }>();
  readonly gauge: client.Gauge<string>;

  constructor(registry: client.Registry, name: string, help: string, labelNames: string[], private readonly ttlMs: number, live: LiveSet) {
    const expire = (): void => this.sweep(live);
    this.gauge = new client.Gauge({ name, help, labelNames, registers: [registry], collect: expire });
  }

  set(labels: Labels, v: number): void {
    this.gauge.set(labels, v);
    this.until.set(keyOf(labels), { labels, at: Date.now() + this.ttlMs });
  }

  private sweep(live: LiveSet): void {
    const now = Date.now();
    for (const [k, e] of this.until) {
      if (now < e.at && live.has(e.labels)) continue;
      this.gauge.remove(e.labels);
      this.until.delete(k);
    }
  }
}

interface HistSample {
  labels: Labels;
  counts: number[];
}

/** Upstream MetricHistogram: const histograms rebuilt from nydusd's bucket arrays at every round. */
export class ConstHistogram {
  private samples = new Map<string, HistSample>();

  constructor(registry: client.Registry, readonly name: string, readonly help: string, readonly bounds: number[], private readonly live: LiveSet) {
    registry.registerMetric(this as unknown as client.Metric);
  }

  /** Start a new round (upstream Clear). */
  clear(): void {
    this.samples = new Map();
  }

  /** Record one image's counters; false (and nothing recorded) when the array does not match the buckets. */
  save(labels: Labels, counts: number[]): boolean {
    if (counts.length !== this.bounds.length) return false;
    this.samples.set(keyOf(labels), { labels, counts });
    return true;
  }

  /** What prom-client's Registry.metrics() renders (the `type` is the exposition string, as prom-client's own metrics give). */
  async get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: client.MetricValueWithName<string>[] }> {
    const values: client.MetricValueWithName<string>[] = [];
    for (const s of this.samples.values()) {
      if (!this.live.has(s.labels)) continue;
      let count = 0;
      let sum = 0;
      s.counts.forEach((c, i) => {
        count += c;
        sum += this.bounds[i] * c;
        values.push({ metricName: `${this.name}_bucket`, labels: { ...s.labels, le: this.bounds[i] }, value: count });
      });
      values.push({ metricName: `${this.name}_bucket`, labels: { ...s.labels, le: '+Inf' }, value: count });
      values.push({ metricName: `${this.name}_sum`, labels: s.labels, value: sum });
      values.push({ metricName: `${this.name}_count`, labels: s.labels, value: count });
    }
    return { name: this.name, help: this.help, type: 'histogram', aggregator: 'sum', values };
  }
}

/** A JSON number (or exact-integer string) as a number; anything else 0. */
function num(v: Json | undefined): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'string' && /^-?\d+(\.\d+)?$/.test(v)) return Number(v);
  return 0;
}
const obj = (v: Json): Record<string, Json> => (v && typeof v === 'object' && !Array.isArray(v) ? v : {});
const arr = (v: Json | undefined): number[] => (Array.isArray(v) ? v.map((x) => num(x)) : []);

/** VmRSS of `pid` in KiB, or undefined when the process is gone. */
export function rssKilobytes(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** A collection round that never overlaps itself: a run while one is in progress joins it. */
class Round {
  private running?: Promise<void>;

  constructor(readonly what: string, private readonly fn: () => Promise<void>) {}

  get busy(): boolean {
    return this.running !== undefined;
  }

  run(): Promise<void> {
    this.running ??= this.fn()
      .catch((e) => log.error({ round: this.what, err: String(e) }, 'metrics collection failed'))
      .finally(() => { this.running = undefined; });
    return this.running;
  }
}

export interface NydusdCollectorOptions {
  collectIntervalMs: number;
  hungIoIntervalMs: number;
  /** per-request timeout (default 5 s; capped by each interval) */
  requestTimeoutMs?: number;
  ttlMs?: number;
  /** called at each collect round (the snapshotter's own CPU sample) */
  onRound?: () => void;
}

/** [name, help, blobcache field] of upstream's nydusd_cache_* gauges (prefetch duration is derived). */
const CACHE_GAUGES: [string, string, string][] = [
  ['nydusd_cache_partial_hits', 'Number of partial cache hits (the read needs part of a chunk).', 'partial_hits'],
  ['nydusd_cache_whole_hits', 'Number of whole cache hits (the read needs the whole chunk).', 'whole_hits'],
  ['nydusd_cache_total_requests', 'Cache read requests; hit ratio = (partial_hits + whole_hits) / total.', 'total'],
  ['nydusd_cache_entries_count', 'Chunks in ready state.', 'entries_count'],
  ['nydusd_cache_prefetch_data_bytes', 'Bytes prefetched.', 'prefetch_data_amount'],
  ['nydusd_cache_prefetch_requests_count', 'Prefetch requests issued.', 'prefetch_requests_count'],
  ['nydusd_cache_prefetch_workers', 'Prefetch workers.', 'prefetch_workers'],
  ['nydusd_cache_prefetch_unmerged_chunks', 'Unmerged prefetch chunks.', 'prefetch_unmerged_chunks'],
  ['nydusd_cache_prefetch_cumulative_time_millis', 'Summed latency of prefetch requests (ms).', 'prefetch_cumulative_time_millis'],
  ['nydusd_cache_prefetch_duration_millis', 'Wall-clock duration of the prefetch (ms).', ''],
  ['nydusd_cache_buffered_backend_size', 'Size of the buffered backend (bytes).', 'buffered_backend_size'],
];

/** Polls every serving nydusd and keeps the nydusd_* series of the registry up to date. */
export class NydusdCollector {
  readonly totalRead: TtlGauge;
  readonly readHits: TtlGauge;
  readonly readErrors: TtlGauge;
  readonly rss: TtlGauge;
  readonly cache = new Map<string, TtlGauge>();
  readonly hungIo: client.Gauge;
  readonly blockHist: ConstHistogram;
  readonly latencyHist: ConstHistogram;
  private timers: NodeJS.Timeout[] = [];
  private readonly round = new Round('collect', () => this.collect());
  private readonly inflightRound = new Round('inflight', () => this.collectInflight());

  constructor(registry: client.Registry, readonly daemons: DaemonManager, readonly opts: NydusdCollectorOptions) {
    const ttl = opts.ttlMs ?? METRICS_TTL_MS;
    const live = new LiveSet(daemons);
    const img = ['image_ref'];
    this.totalRead = new TtlGauge(registry, 'nydusd_total_read_bytes', 'Total bytes read against the nydus filesystem.', img, ttl, live);
    this.readHits = new TtlGauge(registry, 'nydusd_read_hits', 'Total number of successful read operations.', img, ttl, live);
    this.readErrors = new TtlGauge(registry, 'nydusd_read_errors', 'Total number of failed read operations.', img, ttl, live);
    this.rss = new TtlGauge(registry, 'nydusd_rss_kilobytes', 'Memory usage (RSS) of nydus daemon.', ['daemon_id'], ttl, live);
    for (const [name, help] of CACHE_GAUGES) this.cache.set(name, new TtlGauge(registry, name, help, img, ttl, live));
    this.hungIo = new client.Gauge({ name: 'nydusd_hung_io_counts', help: 'Total number of hung IOs.', registers: [registry] });
    this.blockHist = new ConstHistogram(registry, 'nydusd_cumulative_read_block_bytes', 'Cumulative read size histogram for different block size, in bytes.', READ_BLOCK_BUCKETS, live);
    this.latencyHist = new ConstHistogram(registry, 'nydusd_read_latency_microseconds', 'Read latency histogram, in microseconds', READ_LATENCY_BUCKETS, live);
  }

  /** Start both tickers (as upstream, the first round is one interval after start). */
  start(): void {
    if (this.timers.length) return;
    const tick = (r: Round) => (): void => {
      if (r.busy) log.debug({ round: r.what }, 'metrics round still running: tick skipped');
      else void r.run();
    };
    this.timers.push(setInterval(tick(this.round), this.opts.collectIntervalMs));
    this.timers.push(setInterval(tick(this.inflightRound), this.opts.hungIoIntervalMs));
    for (const t of this.timers) t.unref();
  }

  stop(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }

  private client(d: DaemonRecord, intervalMs: number): NydusdClient {
    const timeoutMs = Math.max(1, Math.min(this.opts.requestTimeoutMs ?? COLLECT_REQUEST_TIMEOUT_MS, intervalMs));
    return new NydusdClient(d.apiSock, { userAgent: 'containerd-nydus-grpc', timeoutMs });
  }

  /** One fs/blobcache/RSS round; a call while one runs returns that round. */
  collectNow(): Promise<void> {
    return this.round.run();
  }

  /** One inflight (hung IO) round; a call while one runs returns that round. */
  collectInflightNow(): Promise<void> {
    return this.inflightRound.run();
  }

  private async collect(): Promise<void> {
    this.opts.onRound?.();
    const instances = this.daemons.store.instances();
    const fsReplies: { labels: Labels; m: Record<string, Json> }[] = [];
    await Promise.all(this.daemons.servingDaemons().map(async (d) => {
      const kib = rssKilobytes(d.pid);
      if (kib !== undefined) this.rss.set({ daemon_id: d.id }, kib);
      const c = this.client(d, this.opts.collectIntervalMs);
      for (const inst of instances.filter((i) => i.daemonId === d.id)) {
        const id = d.mode === 'shared' ? sharedMountpoint(inst.snapshotId) : undefined;
        const labels = { image_ref: inst.imageRef };
        const fsm = await this.ask(d, inst, 'fs', () => c.fsMetrics(id));
        if (fsm === 'down') return;
        if (fsm !== undefined) fsReplies.push({ labels, m: obj(fsm) });
        const cm = await this.ask(d, inst, 'blobcache', () => c.blobcacheMetrics(id));
        if (cm === 'down') return;
        if (cm !== undefined) this.saveCache(labels, obj(cm));
      }
    }));
    this.blockHist.clear();
    this.latencyHist.clear();
    for (const { labels, m } of fsReplies) {
      this.totalRead.set(labels, num(m.data_read));
      this.readHits.set(labels, arr(m.fop_hits)[FOP_READ] ?? 0);
      this.readErrors.set(labels, arr(m.fop_errors)[FOP_READ] ?? 0);
      const blocks = this.blockHist.save(labels, arr(m.block_count_read));
      const latency = this.latencyHist.save(labels, arr(m.read_latency_dist));
      if (!blocks || !latency) {
        log.warn({ image: labels.image_ref }, 'nydusd fs metrics: bucket arrays of an unexpected length');
      }
    }
  }

  /** One API call of the round: its value, undefined on an error, 'down' when the daemon does not answer. */
  private async ask(d: DaemonRecord, inst: InstanceRecord, what: string, call: () => Promise<Json>): Promise<Json | undefined | 'down'> {
    try {
      return await call();
    } catch (e) {
      const down = e instanceof ApiClientError && (e.code === 'ETIMEDOUT' || e.code === 'ECONNECT');
      log.warn({ daemon: d.id, snapshot: inst.snapshotId, metrics: what, err: (e as Error).message }, down ? 'nydusd does not answer: skipped this round' : 'getting nydusd metrics failed');
      return down ? 'down' : undefined;
    }
  }

  private saveCache(labels: Labels, m: Record<string, Json>): void {
    for (const [name, , field] of CACHE_GAUGES) {
      let v: number;
      if (field) v = num(m[field]);
      else v = Math.max(0, (num(m.prefetch_end_time_secs) - num(m.prefetch_begin_time_secs)) * 1000);
      this.cache.get(name)!.set(labels, v);
    }
  }

  private async collectInflight(): Promise<void> {
    const interval = this.opts.hungIoIntervalMs;
    let hung = 0;
    await Promise.all(this.daemons.servingDaemons().map(async (d) => {
      try {
        const { value } = await this.client(d, interval).getJson('/api/v1/metrics/inflight');
        const now = Date.now();
        for (const op of Array.isArray(value) ? value : []) {
          if (now - num(obj(op).timestamp_secs) * 1000 >= interval) hung++;
        }
      } catch (e) {
        log.warn({ daemon: d.id, err: (e as Error).message }, 'getting nydusd inflight metrics failed');
      }
    }));
    this.hungIo.set(hung);
  }
}
