/**
 * containerd-nydus-grpc configuration (TOML version 1 + flags), image
 * reference parsing and credentials for the nydusd config, the CLI's --help,
 * and the Prometheus endpoint's metric names.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildProgram } from '../../src/bin/containerd-nydus-grpc';
import { buildConfig, DEFAULT_ADDRESS, DEFAULT_ROOT } from '../../src/snapshotter/config';
import { findAuth, parseImageRef } from '../../src/snapshotter/daemon-config';
import { SnapshotterMetrics } from '../../src/snapshotter/metrics';
import { DaemonManager } from '../../src/snapshotter/daemon';
import { MetaStore } from '../../src/snapshotter/store';

test('defaults, upstream keys, flags override the file', () => {
  const d = buildConfig(undefined);
  assert.is(d.root, DEFAULT_ROOT);
  assert.is(d.address, DEFAULT_ADDRESS);
  assert.is(d.daemonMode, 'dedicated');
  assert.is(d.daemon.recoverPolicy, 'restart');
  assert.is(d.daemon.logRotationSize, 100);
  assert.is(d.cacheManager.cacheDir, `${DEFAULT_ROOT}/cache`);
  assert.ok(d.daemon.nydusdPath.endsWith('/bin/nydusd'), 'our bin/nydusd by default');
  const c = buildConfig(`version = 1
root = "/var/lib/nydus-x"
address = "/run/x.sock"
daemon_mode = "multiple"
[daemon]
nydusd_config = "/etc/t.json"
threads_number = 8
recover_policy = "none"
[experimental]
enable_nydus_overlayfs = true
[snapshot]
sync_remove = true
[metrics]
address = ":9110"
[log]
level = "warning"
`, { address: '/run/flag.sock', logLevel: 'debug', nydusdConfig: '/flag.json', daemonMode: 'none' });
  assert.is(c.root, '/var/lib/nydus-x');
  assert.is(c.address, '/run/flag.sock');
  assert.is(c.daemonMode, 'none');
  assert.is(c.daemon.nydusdConfig, '/flag.json');
  assert.is(c.daemon.threadsNumber, 8);
  assert.is(c.daemon.recoverPolicy, 'none');
  assert.ok(c.snapshot.enableNydusOverlayfs, '[experimental] enable_nydus_overlayfs');
  assert.ok(c.snapshot.syncRemove);
  assert.is(c.metrics.address, ':9110');
  assert.is(c.log.level, 'debug');
  assert.is(buildConfig('version = 1\n[log]\nlevel = "warning"\n').log.level, 'warn');
  assert.is(buildConfig('version = 1\ndaemon_mode = "multiple"\n').daemonMode, 'dedicated');
});

test('kata-config/nydus-snapshotter-config.toml loads; its address is containerd\'s [proxy_plugins.nydus] address', () => {
  const dir = path.join(__dirname, '../../kata-config');
  const c = buildConfig(fs.readFileSync(path.join(dir, 'nydus-snapshotter-config.toml'), 'utf8'));
  assert.is(c.daemonMode, 'dedicated');
  assert.ok(c.snapshot.enableNydusOverlayfs);
  assert.is(c.cacheManager.cacheDir, `${c.root}/cache`);
  const ctrd = fs.readFileSync(path.join(dir, 'containerd-config.toml'), 'utf8');
  assert.ok(ctrd.includes(`address = "${c.address}"`));
});

test('bad configurations are refused with a reason', () => {
  const bad: [string, RegExp][] = [
    ['root = "/x"\n', /version = 1 is required/],
    ['version = 2\n', /version = 1/],
    ['version = 1\nroot = "relative"\n', /absolute/],
    [`version = 1\nroot = "/${'r'.repeat(80)}"\n`, /longer than 70/],
    ['version = 1\n[daemon]\nfs_driver = "fscache"\n', /not implemented/],
    ['version = 1\ndaemon_mode = "weird"\n', /daemon_mode/],
    ['version = 1\n[daemon]\nthreads_number = 5000\n', /threads_number/],
    ['version = 1\n[daemon]\nrecover_policy = "x"\n', /recover_policy/],
    ['version = 1\n[snapshot]\nsync_remove = "yes"\n', /boolean/],
    ['version = 1\n[log]\nlevel = "loud"\n', /log level/],
    ['version = [\n', /cannot parse TOML/],
  ];
  for (const [toml, re] of bad) assert.throws(() => buildConfig(toml), re, toml);
});

test('image references: registry host and repository as upstream', () => {
  assert.equal(parseImageRef('busybox'), { host: 'index.docker.io', repo: 'library/busybox' });
  assert.equal(parseImageRef('docker.io/library/nginx:1.25'), { host: 'index.docker.io', repo: 'library/nginx' });
  assert.equal(parseImageRef('ghcr.io/dragonflyoss/image-service/java:nydus-nightly-v6'), { host: 'ghcr.io', repo: 'dragonflyoss/image-service/java' });
  assert.equal(parseImageRef('localhost:5000/app@sha256:' + 'a'.repeat(64)), { host: 'localhost:5000', repo: 'app' });
  assert.equal(parseImageRef('127.0.0.1:5000/a/b:v1'), { host: '127.0.0.1:5000', repo: 'a/b' });
  assert.equal(parseImageRef('user/app'), { host: 'index.docker.io', repo: 'user/app' });
  assert.throws(() => parseImageRef(''), /invalid image reference/);
  assert.throws(() => parseImageRef('a b'), /invalid image reference/);
});

test('credentials: labels first, then the docker config auths', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sn-auth-'));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ auths: {
    'https://index.docker.io/v1/': { auth: Buffer.from('hub:pw').toString('base64') },
    'reg.example.com:5000': { username: 'u', password: 'p' },
  } }));
  const env = { DOCKER_CONFIG: dir };
  assert.is(findAuth('index.docker.io', {}, env), Buffer.from('hub:pw').toString('base64'));
  assert.is(findAuth('reg.example.com:5000', {}, env), Buffer.from('u:p').toString('base64'));
  assert.is(findAuth('other.io', {}, env), undefined);
  const labels = { 'containerd.io/snapshot/pullusername': 'lu', 'containerd.io/snapshot/pullsecret': 'ls' };
  assert.is(findAuth('reg.example.com:5000', labels, env), Buffer.from('lu:ls').toString('base64'));
  fs.rmSync(dir, { recursive: true });
});

test('--help lists upstream flags', () => {
  const h = buildProgram().helpInformation();
  for (const f of ['--config', '--root', '--address', '--nydusd-config', '--config-path', '--nydusd', '--nydus-image', '--nydus-overlayfs-path', '--daemon-mode', '--fs-driver', '--log-level', '--log-to-stdout', '--version']) {
    assert.ok(h.includes(f), f);
  }
});

test('metrics: /v1/metrics with upstream names', async () => {
  const m = new SnapshotterMetrics();
  const port = await m.listen('127.0.0.1:0');
  m.observe('prepare', 3);
  m.event('start');
  const get = (p: string): Promise<{ status: number; body: string }> => new Promise((resolve, reject) => {
    http.get(`http://127.0.0.1:${port}${p}`, (res) => {
      let b = '';
      res.on('data', (d) => { b += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
    }).on('error', reject);
  });
  const r = await get('/v1/metrics');
  assert.is(r.status, 200);
  for (const n of ['snapshotter_snapshot_operation_elapsed_milliseconds_bucket{le="5",snapshot_operation="prepare"} 1', 'nydusd_lifetime_event_counts{nydusd_event="start"} 1', 'nydusd_counts 0', 'snapshotter_memory_usage_kilobytes', 'snapshotter_fd_counts', 'snapshotter_run_time_seconds', 'snapshotter_thread_counts']) {
    assert.ok(r.body.includes(n), n);
  }
  assert.is((await get('/metrics')).status, 404);
  m.close();
});

test('metrics: blob cache GC counters and cache usage', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sn-metrics-'));
  const store = new MetaStore(path.join(dir, 'metadata.db'));
  try {
    const cfg = buildConfig(`version = 1\nroot = "${dir}"\n`);
    const d = new DaemonManager(cfg, store);
    fs.mkdirSync(cfg.cacheManager.cacheDir, { recursive: true });
    fs.writeFileSync(path.join(cfg.cacheManager.cacheDir, `${'c'.repeat(64)}.blob.data`), Buffer.alloc(64 << 10, 1));
    d.cacheGc.deletedTotal = 3;
    d.cacheGc.errorsTotal = 1;
    d.cacheGc.inUse = 2;
    const m = new SnapshotterMetrics(d);
    const body = await m.registry.metrics();
    for (const n of ['snapshotter_cache_blobs_deleted_total 3', 'snapshotter_cache_blob_deletion_errors_total 1', 'snapshotter_cache_blobs_in_use 2']) assert.ok(body.includes(n), n);
    const kib = Number(/snapshotter_cache_usage_kilobytes (\d+)/.exec(body)?.[1]);
    assert.ok(kib >= 64, `cache usage ${kib} KiB`);
  } finally {
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
