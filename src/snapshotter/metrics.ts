/**
 * Prometheus metrics of containerd-nydus-grpc (nydusify-snapshotter.md §3.8)
 * on `[metrics] address` (TCP `host:port` or `:port`), path `/v1/metrics`,
 * from a private prom-client registry. Names as upstream:
 * `snapshotter_snapshot_operation_elapsed_milliseconds{snapshot_operation}`
 * (upstream's buckets), `nydusd_lifetime_event_counts{nydusd_event}`,
 * `nydusd_counts`, `nydusd_image_info{daemon_id,image_ref}` (one series per
 * RAFS instance), the process gauges
 * `snapshotter_{memory_usage_kilobytes,fd_counts,run_time_seconds,thread_counts,cpu_user_time_seconds,cpu_system_time_seconds,cpu_usage_percentage}`,
 * and the blob cache GC's `snapshotter_cache_blobs_deleted_total`,
 * `snapshotter_cache_blob_deletion_errors_total`,
 * `snapshotter_cache_blobs_in_use`, `snapshotter_cache_usage_kilobytes`.
 * `startCollector` adds the per-image nydusd series polled from each
 * daemon's API (metrics-nydusd.ts).
 *
 * Differences: `nydusd_counts` has no `version` label; the CPU times are
 * cumulative and the other process gauges are read at scrape time
 * (upstream: sampled every collect_interval, CPU times as the last
 * interval's); `snapshotter_cpu_usage_percentage` is, as upstream, the CPU
 * used over the last collect interval.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as client from 'prom-client';
import { log } from '../common/log';
import { DaemonManager } from './daemon';
import { NydusdCollector, NydusdCollectorOptions } from './metrics-nydusd';

/** Upstream data.defaultDurationBuckets (ms). */
const OPERATION_BUCKETS = [0.5, 1, 5, 10, 50, 100, 150, 200, 250, 300, 350, 400, 600, 1000];

export class SnapshotterMetrics {
  readonly registry = new client.Registry();
  readonly opElapsed: client.Histogram<'snapshot_operation'>;
  readonly daemonEvents: client.Counter<'nydusd_event'>;
  collector?: NydusdCollector;
  private server?: http.Server;
  private readonly started = Date.now();
  private cpuSample?: { at: number; usage: NodeJS.CpuUsage };
  private cpuPercent = 0;

  constructor(daemons?: DaemonManager) {
    const r = this.registry;
    this.opElapsed = new client.Histogram({
      name: 'snapshotter_snapshot_operation_elapsed_milliseconds',
      help: 'The elapsed time of snapshot operations (ms).',
      labelNames: ['snapshot_operation'],
      buckets: OPERATION_BUCKETS,
      registers: [r],
    });
    this.daemonEvents = new client.Counter({
      name: 'nydusd_lifetime_event_counts',
      help: 'The lifetime events of nydusd daemons.',
      labelNames: ['nydusd_event'],
      registers: [r],
    });
    new client.Gauge({
      name: 'nydusd_counts',
      help: 'The number of running nydusd daemons.',
      registers: [r],
      collect() { this.set(daemons ? daemons.daemons().length : 0); },
    });
    new client.Gauge({
      name: 'nydusd_image_info',
      help: 'The image each nydusd serves.',
      labelNames: ['daemon_id', 'image_ref'],
      registers: [r],
      collect() {
        this.reset();
        for (const i of daemons?.store.instances() ?? []) if (i.daemonId) this.set({ daemon_id: i.daemonId, image_ref: i.imageRef }, 1);
      },
    });
    const gc = daemons?.cacheGc;
    new client.Counter({
      name: 'snapshotter_cache_blobs_deleted_total',
      help: 'Blobs whose cache files the cache GC deleted.',
      registers: [r],
      collect() { this.reset(); this.inc(gc?.deletedTotal ?? 0); },
    });
    new client.Counter({
      name: 'snapshotter_cache_blob_deletion_errors_total',
      help: 'Cache files the cache GC failed to delete.',
      registers: [r],
      collect() { this.reset(); this.inc(gc?.errorsTotal ?? 0); },
    });
    new client.Gauge({
      name: 'snapshotter_cache_blobs_in_use',
      help: 'Referenced blobs with a cache data file at the last cache GC round.',
      registers: [r],
      collect() { this.set(gc?.inUse ?? 0); },
    });
    new client.Gauge({
      name: 'snapshotter_cache_usage_kilobytes',
      help: 'Allocated size of the blob cache directory (KiB).',
      registers: [r],
      collect() { this.set(Math.round((gc?.usageBytes() ?? 0) / 1024)); },
    });
    const started = this.started;
    const gauge = (name: string, help: string, f: () => number): void => {
      new client.Gauge({ name, help, registers: [r], collect() { this.set(f()); } });
    };
    gauge('snapshotter_memory_usage_kilobytes', 'Resident memory of the snapshotter (KiB).', () => Math.round(process.memoryUsage().rss / 1024));
    gauge('snapshotter_run_time_seconds', 'Seconds since the snapshotter started.', () => (Date.now() - started) / 1000);
    gauge('snapshotter_cpu_user_time_seconds', 'User CPU time of the snapshotter.', () => process.cpuUsage().user / 1e6);
    gauge('snapshotter_cpu_system_time_seconds', 'System CPU time of the snapshotter.', () => process.cpuUsage().system / 1e6);
    gauge('snapshotter_cpu_usage_percentage', 'CPU usage of the snapshotter over the last collect interval (%).', () => this.cpuPercent);
    gauge('snapshotter_fd_counts', 'Open file descriptors of the snapshotter.', () => {
      try { return fs.readdirSync('/proc/self/fd').length; } catch { return 0; }
    });
    gauge('snapshotter_thread_counts', 'Threads of the snapshotter.', () => {
      try { return fs.readdirSync('/proc/self/task').length; } catch { return 0; }
    });
  }

  /** CPU usage since the previous sample, in percent with two decimals (upstream CalculateCPUUtilization). */
  sampleCpu(): void {
    const now = { at: Date.now(), usage: process.cpuUsage() };
    const last = this.cpuSample;
    this.cpuSample = now;
    if (!last || now.at <= last.at) return;
    const used = (now.usage.user - last.usage.user + now.usage.system - last.usage.system) / 1000;
    this.cpuPercent = Math.round((used / (now.at - last.at)) * 10000) / 100;
  }

  /** Poll every nydusd of `daemons` (per-image read/cache series, RSS, hung IOs); started tickers unless `start` is false. */
  startCollector(daemons: DaemonManager, opts: Omit<NydusdCollectorOptions, 'onRound'>, start = true): NydusdCollector {
    if (!this.collector) {
      this.sampleCpu();
      this.collector = new NydusdCollector(this.registry, daemons, { ...opts, onRound: () => this.sampleCpu() });
    }
    if (start) this.collector.start();
    return this.collector;
  }

  observe(op: string, ms: number): void {
    this.opElapsed.observe({ snapshot_operation: op }, ms);
  }

  event(ev: string): void {
    this.daemonEvents.inc({ nydusd_event: ev });
  }

  /** Serve /v1/metrics on `address` (`[host]:port`). */
  async listen(address: string): Promise<number> {
    const i = address.lastIndexOf(':');
    const host = i > 0 ? address.slice(0, i).replace(/^\[|\]$/g, '') : undefined;
    const port = Number(address.slice(i + 1));
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`[metrics] address ${address}: bad port`);
    this.server = http.createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/v1/metrics') {
        res.writeHead(404).end('not found\n');
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'Content-Type': this.registry.contentType }).end(text),
        (e) => res.writeHead(500).end(String(e)),
      );
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, host, () => resolve());
    });
    const a = this.server.address();
    const bound = typeof a === 'object' && a ? a.port : port;
    log.info({ address, port: bound }, 'metrics server listening');
    return bound;
  }

  close(): void {
    this.collector?.stop();
    this.server?.close();
  }
}
