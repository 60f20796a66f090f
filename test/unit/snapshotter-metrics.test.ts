/**
 * containerd-nydus-grpc's per-image nydusd metrics (metrics-nydusd.ts):
 * real nydusd processes (this package's src/bin/nydusd.ts) started by the
 * snapshotter in dedicated and shared mode over real RAFS images with a
 * localfs backend and a blob cache: bytes read through the FUSE mounts,
 * a collection, `/v1/metrics` scraped over HTTP and compared with what was
 * read and with what each daemon's API says; series dropped when the image
 * goes. A stand-in nydusd with known replies: exact gauge/histogram text,
 * hung IOs, a daemon that stops answering (collector times out, no
 * overlapping rounds, /v1/metrics and gRPC keep answering) and TTL expiry.
 * Config: `[metrics] hung_io_interval` / `collect_interval`.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { writeFakeNydusd } from '../support/fake-nydusd';
import { spawnSync } from 'node:child_process';
import { NydusdClient } from '../../src/api/client';
import { Compressor } from '../../src/common/compress';
import { DigestAlgorithm, initDigest } from '../../src/common/digest';
import { log } from '../../src/common/log';
import { createImage } from '../../src/rafs/builder/create';
import { buildConfig, parseGoDuration, type SnapshotterConfig } from '../../src/snapshotter/config';
import { serve, type RunningServer } from '../../src/snapshotter/grpc-service';
import { SnapshotterMetrics } from '../../src/snapshotter/metrics';
import { snapshotsService } from '../../src/snapshotter/proto';
import { Snapshotter } from '../../src/snapshotter/snapshotter';
import { fuseMissing } from '../support/nydusd';

const ROOT = path.resolve(__dirname, '..', '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sn-metrics-'));
let seq = 0;
type Obj = Record<string, any>;

interface Rig {
  cfg: SnapshotterConfig;
  sn: Snapshotter;
  srv: RunningServer;
  metrics: SnapshotterMetrics;
  port: number;
  call(m: string, req: Obj): Promise<Obj>;
  close(): Promise<void>;
}

async function rig(toml: string): Promise<Rig> {
  const dir = path.join(tmp, `r${++seq}`);
  fs.mkdirSync(dir, { recursive: true });
  const cfg = buildConfig(`version = 1\nroot = "${dir}"\naddress = "${dir}/grpc.sock"\n${toml}`);
  const sn = new Snapshotter(cfg);
  const srv = await serve(sn, cfg.address);
  const metrics = new SnapshotterMetrics(sn.daemons);
  const port = await metrics.listen('127.0.0.1:0');
  const Ctor = snapshotsService();
  const c = new Ctor(`unix://${cfg.address}`, grpc.credentials.createInsecure()) as grpc.Client & Record<string, any>;
  const call = (m: string, req: Obj): Promise<Obj> =>
    new Promise((resolve, reject) => c[m]({ snapshotter: 'nydus', ...req }, (e: grpc.ServiceError | null, r: Obj) => (e ? reject(e) : resolve(r))));
  return {
    cfg, sn, srv, metrics, port, call,
    async close() {
      metrics.close();
      c.close();
      await srv.close();
      const left = sn.daemons.daemons();
      await sn.close(); // no restarts from here on
      for (const d of left) {
        try { process.kill(d.pid, 'SIGKILL'); } catch { /* gone */ }
        spawnSync('umount', ['-l', d.mountpoint]);
      }
    },
  };
}

/** GET /v1/metrics. */
function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get(`http://127.0.0.1:${port}/v1/metrics`, (res) => {
      let b = '';
      res.on('data', (d) => { b += d; });
      res.on('end', () => (res.statusCode === 200 ? resolve(b) : reject(new Error(`HTTP ${res.statusCode}: ${b}`))));
    }).on('error', reject);
  });
}

/** The value of the sample `name{labels}` (labels in exposition order), or undefined. */
function sample(text: string, name: string, labels: Record<string, string | number> = {}): number | undefined {
  const l = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',');
  const head = l ? `${name}{${l}} ` : `${name} `;
  const line = text.split('\n').find((x) => x.startsWith(head));
  return line === undefined ? undefined : Number(line.slice(head.length));
}

const hex64 = (c: string, v = ''): string => (v ? c.repeat(63) + v : c.repeat(64));

/** Pull a Nydus image as containerd's unpacker does (data layer, then the meta layer with `bootstrap`); returns the meta chain id. */
async function pullNydus(r: Rig, imageRef: string, bootstrap: Buffer, v = ''): Promise<string> {
  const chain1 = 'sha256:' + hex64('1', v);
  const chain2 = 'sha256:' + hex64('2', v);
  const dataLabels = {
    'containerd.io/snapshot.ref': chain1, 'containerd.io/snapshot/nydus-blob': 'true',
    'containerd.io/snapshot/cri.layer-digest': 'sha256:' + hex64('a', v), 'containerd.io/snapshot/cri.image-ref': imageRef,
  };
  await r.call('Prepare', { key: `default/1${v}/extract ${chain1}`, parent: '', labels: dataLabels }).catch((e) => {
    if (e.code !== grpc.status.ALREADY_EXISTS) throw e;
  });
  const metaLabels = {
    'containerd.io/snapshot.ref': chain2, 'containerd.io/snapshot/nydus-bootstrap': 'true',
    'containerd.io/snapshot/nydus-fs-version': '6', 'containerd.io/snapshot/cri.image-ref': imageRef,
  };
  const m = (await r.call('Prepare', { key: `default/2${v}/extract ${chain2}`, parent: chain1, labels: metaLabels })).mounts;
  const up = m[0].options.find((o: string) => o.startsWith('upperdir=')).slice('upperdir='.length);
  fs.mkdirSync(path.join(up, 'image'), { recursive: true });
  fs.writeFileSync(path.join(up, 'image', 'image.boot'), bootstrap);
  await r.call('Commit', { name: chain2, key: `default/2${v}/extract ${chain2}`, labels: metaLabels });
  return chain2;
}

/** A nydusd launcher running this checkout's src/bin/nydusd.ts through tsx. */
function nydusdFromSource(): string {
  const p = path.join(tmp, 'nydusd');
  if (!fs.existsSync(p)) {
    fs.writeFileSync(p, `#!/usr/bin/env node
process.env.UV_THREADPOOL_SIZE = '12';
require(${JSON.stringify(path.join(ROOT, 'node_modules/tsx/dist/cjs/index.cjs'))});
require(${JSON.stringify(path.join(ROOT, 'src/bin/nydusd.ts'))}).main(process.argv);
`);
    fs.chmodSync(p, 0o755);
  }
  return p;
}

/** A RAFS v6 image of `files` (name → size), its blob in `blobDir`; the bootstrap bytes. */
async function image(files: Record<string, number>, blobDir: string): Promise<Buffer> {
  await initDigest();
  const src = fs.mkdtempSync(path.join(tmp, 'src-'));
  for (const [n, size] of Object.entries(files)) fs.writeFileSync(path.join(src, n), Buffer.alloc(size, n));
  const res = await createImage({
    source: src, type: 'dir-rafs', fsVersion: 6, compressor: Compressor.Zstd, digester: DigestAlgorithm.Sha256,
    chunkSize: 0x10000, blobDir, blobInlineMeta: false, blobToc: false, alignedChunk: false, repeatable: false, prefetchPatterns: [],
  });
  return Buffer.from(res.bootstrap);
}

const wait = async (what: string, cond: () => boolean, ms = 8000): Promise<void> => {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((res) => setTimeout(res, 50));
  }
};

test.before(() => {
  log.level = 'silent';
});

for (const mode of ['dedicated', 'shared'] as const) {
  test(`${mode} mode, real nydusd: read bytes, read hits and histograms per image_ref equal what was read and what nydusd reports; series go with the image`, async () => {
    const skip = fuseMissing();
    if (skip) {
      console.log(`  skipped: ${skip}`);
      return;
    }
    const blobs = fs.mkdtempSync(path.join(tmp, 'blobs-'));
    const tpl = path.join(tmp, `tpl-${mode}.json`);
    fs.writeFileSync(tpl, JSON.stringify({ device: { backend: { type: 'localfs', config: { dir: blobs } }, cache: { type: 'blobcache' } }, mode: 'direct', digest_validate: false }));
    const r = await rig(`daemon_mode = "${mode}"\n[daemon]\nnydusd_path = "${nydusdFromSource()}"\nnydusd_config = "${tpl}"\n[log]\nlevel = "warn"\n[metrics]\ncollect_interval = "1h"\n`);
    const col = r.metrics.startCollector(r.sn.daemons, { collectIntervalMs: r.cfg.metrics.collectIntervalMs, hungIoIntervalMs: r.cfg.metrics.hungIoIntervalMs }, false);
    try {
      // two images: A (a 5000 B file and a 70000 B file), B (one 300000 B file)
      const refA = 'localhost:5000/metrics/a:1';
      const refB = 'localhost:5000/metrics/b:1';
      const metaA = await pullNydus(r, refA, await image({ small: 5000, mid: 70000 }, blobs));
      const metaB = await pullNydus(r, refB, await image({ big: 300000 }, blobs), 'b');
      const lower = async (key: string, parent: string): Promise<string> =>
        (await r.call('Prepare', { key, parent })).mounts[0].options.find((o: string) => o.startsWith('lowerdir=')).slice('lowerdir='.length);
      const la = await lower('ctr-a', metaA);
      const lb = await lower('ctr-b', metaB);
      assert.equal(fs.readFileSync(path.join(la, 'small')), Buffer.alloc(5000, 'small'));
      assert.equal(fs.readFileSync(path.join(la, 'mid')), Buffer.alloc(70000, 'mid'));
      assert.equal(fs.readFileSync(path.join(lb, 'big')), Buffer.alloc(300000, 'big'));
      // chunks are counted as cache entries once written behind: wait until nothing is left to write
      for (const inst of r.sn.daemons.store.instances()) {
        const d = r.sn.daemons.daemons().find((x) => x.id === inst.daemonId)!;
        const api = new NydusdClient(d.apiSock);
        const id = mode === 'shared' ? `/${inst.snapshotId}` : undefined;
        for (let i = 0; i < 100 && ((await api.blobcacheMetrics(id)) as Obj).buffered_backend_size !== 0; i++) await new Promise((res) => setTimeout(res, 50));
      }

      await col.collectNow();
      const text = await scrape(r.port);
      const insts = r.sn.daemons.store.instances();
      for (const [ref, bytes] of [[refA, 75000], [refB, 300000]] as const) {
        const inst = insts.find((i) => i.imageRef === ref)!;
        const d = r.sn.daemons.daemons().find((x) => x.id === inst.daemonId)!;
        const q = { image_ref: ref };
        assert.is(sample(text, 'nydusd_total_read_bytes', q), bytes, `${ref}: bytes read through the mount`);
        assert.is(sample(text, 'nydusd_read_errors', q), 0);
        // the same numbers straight from the daemon's API (?id=/<snapshot> in shared mode)
        const api = new NydusdClient(d.apiSock);
        const id = mode === 'shared' ? `/${inst.snapshotId}` : undefined;
        const fsm = (await api.fsMetrics(id)) as Obj;
        assert.is(fsm.data_read, bytes);
        const hits = fsm.fop_hits[4] as number;
        assert.ok(hits >= 1);
        assert.is(sample(text, 'nydusd_read_hits', q), hits);
        let cum = 0;
        let sum = 0;
        for (const [i, le] of [1, 4, 16, 64, 128, 512, 1024, 2048].entries()) {
          cum += fsm.block_count_read[i];
          sum += le * fsm.block_count_read[i];
          assert.is(sample(text, 'nydusd_cumulative_read_block_bytes_bucket', { image_ref: ref, le }), cum, `le=${le}`);
        }
        assert.is(sample(text, 'nydusd_cumulative_read_block_bytes_bucket', { image_ref: ref, le: '+Inf' }), hits);
        assert.is(sample(text, 'nydusd_cumulative_read_block_bytes_sum', q), sum);
        assert.is(sample(text, 'nydusd_cumulative_read_block_bytes_count', q), hits);
        assert.is(sample(text, 'nydusd_read_latency_microseconds_count', q), hits);
        assert.is(sample(text, 'nydusd_read_latency_microseconds_bucket', { image_ref: ref, le: 4000 }), hits);
        const cm = (await api.blobcacheMetrics(id)) as Obj;
        assert.ok(cm.total > 0, 'reads went through the blob cache');
        assert.is(sample(text, 'nydusd_cache_total_requests', q), cm.total);
        assert.is(sample(text, 'nydusd_cache_partial_hits', q), cm.partial_hits);
        assert.is(sample(text, 'nydusd_cache_whole_hits', q), cm.whole_hits);
        assert.is(sample(text, 'nydusd_cache_entries_count', q), cm.entries_count);
        assert.is(sample(text, 'nydusd_image_info', { daemon_id: d.id, image_ref: ref }), 1);
        assert.ok((sample(text, 'nydusd_rss_kilobytes', { daemon_id: d.id }) ?? 0) > 1000, 'RSS of the daemon');
      }
      assert.is(sample(text, 'nydusd_counts'), mode === 'shared' ? 1 : 2);
      assert.ok(sample(text, 'snapshotter_cpu_usage_percentage') !== undefined);

      // image A goes (container, meta and data layers removed, GC): its series go at once
      await r.call('Remove', { key: 'ctr-a' });
      await r.call('Remove', { key: metaA });
      await r.call('Cleanup', {});
      await wait('image A torn down', () => !r.sn.daemons.store.instances().some((i) => i.imageRef === refA));
      const after = await scrape(r.port);
      assert.is(sample(after, 'nydusd_total_read_bytes', { image_ref: refA }), undefined);
      assert.not.ok(after.includes(`image_ref="${refA}"`), 'no series of the removed image');
      assert.is(sample(after, 'nydusd_total_read_bytes', { image_ref: refB }), 300000);
      if (mode === 'dedicated') {
        const gone = r.sn.daemons.daemons().map((d) => d.id);
        for (const m of after.matchAll(/nydusd_rss_kilobytes\{daemon_id="([^"]+)"\}/g)) assert.ok(gone.includes(m[1]), 'no RSS of a stopped daemon');
      }
      await r.call('Remove', { key: 'ctr-b' });
      await r.call('Remove', { key: metaB });
      await r.call('Cleanup', {});
      const none = await scrape(r.port);
      assert.not.ok(/^nydusd_(total_read_bytes|rss_kilobytes|cache_total_requests)\{/m.test(none), 'no daemon, no series');
    } finally {
      await r.close();
    }
  });
}

/**
 * A stand-in nydusd: GET /api/v1/daemon = RUNNING; /api/v1/metrics and
 * /api/v1/metrics/blobcache give known counters, or never answer while
 * `<dir>/hang` exists; /api/v1/metrics/inflight lists one request 60 s old
 * and one just started. Every request is appended to `<dir>/api.log`.
 */
function fakeNydusd(dir: string): string {
  return writeFakeNydusd(dir, `const fsm = { data_read: 12345, fop_hits: [0,0,0,0,7,0,0,0,0,0,0,0,0,0,0], fop_errors: [0,0,0,0,1,0,0,0,0,0,0,0,0,0,0],
  block_count_read: [1,2,0,0,0,0,0,4], read_latency_dist: [3,0,1,0,0,0,0,3], nr_opens: 0 };
const cm = { partial_hits: 2, whole_hits: 3, total: 6, entries_count: 4, prefetch_data_amount: 1024, prefetch_requests_count: 2,
  prefetch_workers: 1, prefetch_unmerged_chunks: 5, prefetch_cumulative_time_millis: 30, prefetch_begin_time_secs: 100,
  prefetch_begin_time_millis: 0, prefetch_end_time_secs: 103, prefetch_end_time_millis: 0, buffered_backend_size: 8 };
const srv = http.createServer((req, res) => {
  fs.appendFileSync(path.join(dir, 'api.log'), req.url + '\\n');
  const u = new URL(req.url, 'http://unix');
  const json = (v) => { res.writeHead(200, {'content-type': 'application/json'}); res.end(JSON.stringify(v)); };
  if (u.pathname === '/api/v1/daemon') return json({ state: 'RUNNING', version: {} });
  if (u.pathname === '/api/v1/metrics/inflight') {
    const now = Math.floor(Date.now() / 1000);
    return json([{ inode: 5, opcode: 15, unique: 9, timestamp_secs: now - 60 }, { inode: 6, opcode: 15, unique: 10, timestamp_secs: now }]);
  }
  if (fs.existsSync(path.join(dir, 'hang'))) return; // accept, never answer
  if (u.pathname === '/api/v1/metrics') return json(fsm);
  if (u.pathname === '/api/v1/metrics/blobcache') return json(cm);
  res.writeHead(404); res.end('{"code":"NotFound","message":"no"}');
});`);
}

const BOOT = (): Buffer => {
  const b = Buffer.alloc(8192);
  b.writeUInt32LE(0xe0f5e1e2, 1024); // EROFS magic: recognised as a v6 bootstrap
  return b;
};

test('stand-in nydusd: exact gauges and histograms; hung IOs; a daemon that stops answering times out without stalling /v1/metrics or gRPC, rounds never overlap, and its series expire by TTL', async () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'fake-'));
  const tpl = path.join(tmp, 'tpl-fake.json');
  fs.writeFileSync(tpl, JSON.stringify({ device: { backend: { type: 'registry', config: {} } } }));
  const r = await rig(`[daemon]\nnydusd_path = "${fakeNydusd(dir)}"\nnydusd_config = "${tpl}"\n[metrics]\nhung_io_interval = "10s"\ncollect_interval = "1m"\n`);
  const col = r.metrics.startCollector(r.sn.daemons, { collectIntervalMs: r.cfg.metrics.collectIntervalMs, hungIoIntervalMs: r.cfg.metrics.hungIoIntervalMs, requestTimeoutMs: 400, ttlMs: 2500 }, false);
  const ref = 'docker.io/library/busybox:latest';
  try {
    const meta = await pullNydus(r, ref, BOOT());
    await r.call('Prepare', { key: 'ctr', parent: meta });
    const d = r.sn.daemons.daemons()[0];
    const apiLog = (): string[] => fs.readFileSync(path.join(dir, 'api.log'), 'utf8').trim().split('\n');

    await col.collectNow();
    let text = await scrape(r.port);
    assert.ok(apiLog().includes('/api/v1/metrics') && apiLog().includes('/api/v1/metrics/blobcache'), 'dedicated: no ?id=');
    const q = `{image_ref="${ref}"}`;
    for (const line of [
      `nydusd_total_read_bytes${q} 12345`, `nydusd_read_hits${q} 7`, `nydusd_read_errors${q} 1`,
      `nydusd_cumulative_read_block_bytes_bucket{image_ref="${ref}",le="1"} 1`,
      `nydusd_cumulative_read_block_bytes_bucket{image_ref="${ref}",le="4"} 3`,
      `nydusd_cumulative_read_block_bytes_bucket{image_ref="${ref}",le="1024"} 3`,
      `nydusd_cumulative_read_block_bytes_bucket{image_ref="${ref}",le="2048"} 7`,
      `nydusd_cumulative_read_block_bytes_bucket{image_ref="${ref}",le="+Inf"} 7`,
      `nydusd_cumulative_read_block_bytes_sum${q} ${1 * 1 + 4 * 2 + 2048 * 4}`,
      `nydusd_cumulative_read_block_bytes_count${q} 7`,
      `nydusd_read_latency_microseconds_bucket{image_ref="${ref}",le="1"} 3`,
      `nydusd_read_latency_microseconds_bucket{image_ref="${ref}",le="50"} 4`,
      `nydusd_read_latency_microseconds_bucket{image_ref="${ref}",le="4000"} 7`,
      `nydusd_read_latency_microseconds_sum${q} ${3 * 1 + 50 + 3 * 4000}`,
      `nydusd_read_latency_microseconds_count${q} 7`,
      `nydusd_cache_partial_hits${q} 2`, `nydusd_cache_whole_hits${q} 3`, `nydusd_cache_total_requests${q} 6`,
      `nydusd_cache_entries_count${q} 4`, `nydusd_cache_prefetch_data_bytes${q} 1024`, `nydusd_cache_prefetch_requests_count${q} 2`,
      `nydusd_cache_prefetch_workers${q} 1`, `nydusd_cache_prefetch_unmerged_chunks${q} 5`,
      `nydusd_cache_prefetch_cumulative_time_millis${q} 30`, `nydusd_cache_prefetch_duration_millis${q} 3000`,
      `nydusd_cache_buffered_backend_size${q} 8`,
      '# TYPE nydusd_cumulative_read_block_bytes histogram', '# TYPE nydusd_read_latency_microseconds histogram',
      '# TYPE nydusd_total_read_bytes gauge', '# TYPE nydusd_hung_io_counts gauge',
    ]) assert.ok(text.split('\n').includes(line), line);
    assert.ok(text.includes(`nydusd_rss_kilobytes{daemon_id="${d.id}"} `));

    await col.collectInflightNow();
    assert.is(sample(await scrape(r.port), 'nydusd_hung_io_counts'), 1, 'one request older than hung_io_interval');

    // the daemon stops answering metrics requests
    fs.writeFileSync(path.join(dir, 'hang'), '');
    const before = apiLog().length;
    const t0 = Date.now();
    const round = col.collectNow();
    assert.is(col.collectNow(), round, 'a second call joins the running round');
    const t1 = Date.now();
    text = await scrape(r.port);
    assert.ok(Date.now() - t1 < 350, `/v1/metrics answered during a hung round in ${Date.now() - t1} ms`);
    assert.is((await r.call('Stat', { key: 'ctr' })).info.name, 'ctr', 'gRPC answers during a hung round');
    await round;
    const took = Date.now() - t0;
    assert.ok(took >= 380 && took < 1500, `round ended by the request timeout after ${took} ms`);
    assert.equal(apiLog().slice(before), ['/api/v1/metrics'], 'a timed-out daemon gets no further request in the round');
    text = await scrape(r.port);
    assert.is(sample(text, 'nydusd_total_read_bytes', { image_ref: ref }), 12345, 'kept until the TTL expires');
    assert.is(sample(text, 'nydusd_read_latency_microseconds_count', { image_ref: ref }), undefined, 'histograms hold the last round only');
    await new Promise((res) => setTimeout(res, 2600));
    text = await scrape(r.port);
    assert.is(sample(text, 'nydusd_total_read_bytes', { image_ref: ref }), undefined, 'expired by TTL');
    assert.is(sample(text, 'nydusd_cache_total_requests', { image_ref: ref }), undefined);
    assert.not.ok(text.includes('nydusd_rss_kilobytes{'), 'RSS expired too');
    await col.collectNow();
    text = await scrape(r.port);
    assert.ok(text.includes(`nydusd_rss_kilobytes{daemon_id="${d.id}"} `), 'RSS refreshed from /proc by the next round');
    assert.is(sample(text, 'nydusd_total_read_bytes', { image_ref: ref }), undefined, 'still no answer, still no series');
    assert.is(sample(text, 'nydusd_image_info', { daemon_id: d.id, image_ref: ref }), 1);
  } finally {
    await r.close();
  }
});

test('tickers: collect_interval / hung_io_interval drive the rounds; a hung daemon costs each round at most one interval', async () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'fake-'));
  const tpl = path.join(tmp, 'tpl-fake2.json');
  fs.writeFileSync(tpl, JSON.stringify({ device: { backend: { type: 'registry', config: {} } } }));
  const r = await rig(`[daemon]\nnydusd_path = "${fakeNydusd(dir)}"\nnydusd_config = "${tpl}"\n[metrics]\nhung_io_interval = "150ms"\ncollect_interval = "200ms"\n`);
  const col = r.metrics.startCollector(r.sn.daemons, { collectIntervalMs: r.cfg.metrics.collectIntervalMs, hungIoIntervalMs: r.cfg.metrics.hungIoIntervalMs });
  const ref = 'docker.io/library/alpine:3';
  try {
    const meta = await pullNydus(r, ref, BOOT());
    await r.call('Prepare', { key: 'ctr', parent: meta });
    const t0 = Date.now();
    let text = '';
    while (Date.now() - t0 < 5000) {
      text = await scrape(r.port);
      if (sample(text, 'nydusd_total_read_bytes', { image_ref: ref }) === 12345 && sample(text, 'nydusd_hung_io_counts') === 1) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    assert.is(sample(text, 'nydusd_total_read_bytes', { image_ref: ref }), 12345, 'collected by the ticker');
    assert.is(sample(text, 'nydusd_hung_io_counts'), 1, 'inflight polled by the ticker');
    fs.writeFileSync(path.join(dir, 'hang'), '');
    const log0 = fs.readFileSync(path.join(dir, 'api.log'), 'utf8').split('\n').filter((l) => l === '/api/v1/metrics').length;
    await new Promise((res) => setTimeout(res, 1100));
    const calls = fs.readFileSync(path.join(dir, 'api.log'), 'utf8').split('\n').filter((l) => l === '/api/v1/metrics').length - log0;
    assert.ok(calls >= 2 && calls <= 6, `${calls} hung fs requests in 1.1 s at a 200 ms interval (each times out within it)`);
    const t1 = Date.now();
    await scrape(r.port);
    assert.ok(Date.now() - t1 < 300, '/v1/metrics answers while rounds hang');
  } finally {
    col.stop();
    await r.close();
  }
});

test('config: [metrics] hung_io_interval / collect_interval (Go durations or integer nanoseconds; defaults 10s / 1m)', () => {
  const c = buildConfig('version = 1\n');
  assert.is(c.metrics.hungIoIntervalMs, 10_000);
  assert.is(c.metrics.collectIntervalMs, 60_000);
  const d = buildConfig('version = 1\n[metrics]\naddress = ":9110"\nhung_io_interval = "1m30s"\ncollect_interval = 5000000000\n');
  assert.is(d.metrics.hungIoIntervalMs, 90_000);
  assert.is(d.metrics.collectIntervalMs, 5000);
  for (const [s, ms] of [['1h', 3_600_000], ['1.5s', 1500], ['250ms', 250], ['2h45m', 9_900_000], ['0', 0], ['-1s', -1000], ['10us', 0.01]] as const) {
    assert.is(parseGoDuration(s), ms, s);
  }
  for (const s of ['', '10', 's', '1d', '1m x']) assert.is(parseGoDuration(s), undefined, s);
  for (const bad of ['"0s"', '"-1s"', '"10"', 'true', '0']) {
    assert.throws(() => buildConfig(`version = 1\n[metrics]\ncollect_interval = ${bad}\n`), /collect_interval/);
  }
});

test.after(() => {
  for (const l of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = l.split(' ')[4];
    if (mp?.startsWith(tmp)) spawnSync('umount', ['-l', mp]);
  }
  fs.rmSync(tmp, { recursive: true, force: true });
});

test.run();
