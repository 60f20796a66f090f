/**
 * nydusctl (rafs-spec §8 client): runs the CLI in-process against a fake
 * nydusd API server on a temporary unix socket that returns upstream-shaped
 * bodies and records every request.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseJsonExact, run } from '../../src/bin/nydusctl';

interface Seen { method: string; url: string; body: string; headers: http.IncomingHttpHeaders }
interface Reply { status: number; body?: string }

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nydusctl-'));
const SOCK = path.join(tmp, 'api.sock');
const seen: Seen[] = [];
let state = 'RUNNING';
let routes: Record<string, Reply> = {};

const DAEMON = () => JSON.stringify({
  version: { package_ver: 'v2.4.4', git_commit: 'c0ffee', build_time: '2026-07-01T00:00:00Z', profile: 'release', rustc: 'rustc 1.84.1' },
  id: null, supervisor: null, state,
  backend_collection: {
    '/containers': { backend_type: 'PassthroughFs', mountpoint: '/containers', mounted_time: '2026-07-01 10:00:00.1 +00:00:00', config: null },
    '/rafs/c1/lowerdir': {
      backend_type: 'Rafs', mountpoint: '/rafs/c1/lowerdir', mounted_time: '2026-07-01 10:00:05.2 +00:00:00',
      config: { version: 2, id: '', backend: { type: 'localfs', localfs: { blob_file: '', dir: '/blobs', alt_dirs: [] } } },
    },
  },
});
const FSSTATS = JSON.stringify({
  files_account_enabled: false, access_pattern_enabled: false, record_latest_read_files_enabled: false, measure_latency: true,
  id: '/rafs/c1/lowerdir', nr_opens: 7, data_read: 4194304,
  block_count_read: [11, 12, 13, 14, 15, 16, 17, 18],
  fop_hits: [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114],
  fop_errors: [0, 0, 0, 0, 9, 0, 0, 0, 0, 33, 0, 0, 0, 0, 0],
  fop_cumulative_latency_total: new Array(15).fill(0),
  read_latency_dist: [21, 22, 23, 24, 25, 26, 27, 28],
});
const BACKEND = JSON.stringify({
  backend_type: 'registry', read_count: 40, read_errors: 3, read_amount_total: 81920,
  read_cumulative_latency_millis_total: 400, read_cumulative_latency_millis_dist: [0, 0, 300, 100, 0, 0, 0, 0],
  read_count_block_size_dist: [0, 0, 30, 10, 0, 0, 0, 0], read_latency_sizes_dist: new Array(8).fill(new Array(8).fill(0)),
});
const BLOBCACHE = JSON.stringify({
  underlying_files: ['blob-a'], store_path: '/var/lib/nydus/cache', partial_hits: 5, whole_hits: 77, total: 90,
  entries_count: 2, prefetch_data_amount: 2097152, prefetch_requests_count: 4, prefetch_workers: 8,
  prefetch_unmerged_chunks: 1, prefetch_cumulative_time_millis: 100, prefetch_begin_time_secs: 1000,
  prefetch_begin_time_millis: 0, prefetch_end_time_secs: 1002, prefetch_end_time_millis: 0,
  buffered_backend_size: 0, data_all_ready: true,
});
// inode 2^56 + 5 is beyond 2^53: must survive exactly in tables and --json
const INFLIGHT = '[{"inode":72057594037927941,"opcode":15,"unique":4242,"timestamp_secs":1700000000}]';

function defaultRoutes(): Record<string, Reply> {
  return {
    'GET /api/v1/daemon': { status: 200, body: DAEMON() },
    'GET /api/v1/metrics': { status: 200, body: FSSTATS },
    'GET /api/v1/metrics/backend': { status: 200, body: BACKEND },
    'GET /api/v1/metrics/blobcache': { status: 200, body: BLOBCACHE },
    'GET /api/v1/metrics/files': { status: 200, body: '{"5":{"total_fops":9,"data_read":8192,"block_count_read":[0,0,2,0,0,0,0,0],"fop_hits":[1,0,1,1,2,0,0,0,0,4,0,0,0,0,0],"fop_errors":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}}' },
    'GET /api/v1/metrics/pattern': { status: 200, body: '[{"ino":5,"nr_read":3,"first_access_time_secs":1700000000,"first_access_time_nanos":500000000}]' },
    'GET /api/v1/metrics/inflight': { status: 200, body: INFLIGHT },
    'POST /api/v1/mount': { status: 204 },
    'DELETE /api/v1/mount': { status: 204 },
    'PUT /api/v1/daemon': { status: 204 },
    'PUT /api/v1/daemon/exit': { status: 204 },
  };
}

const server = http.createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const url = req.url ?? '';
    seen.push({ method: req.method ?? '', url, body: Buffer.concat(chunks).toString(), headers: req.headers });
    const key = `${req.method} ${url.split('?')[0]}`;
    const r = routes[key];
    res.setHeader('Server', 'Nydus API');
    res.setHeader('Content-Type', 'application/json');
    if (!r) { res.statusCode = 404; res.end('{"code":"UNDEFINED","message":"NoRoute"}'); return; }
    res.statusCode = r.status;
    res.end(key === 'GET /api/v1/daemon' ? DAEMON() : r.body ?? '');
  });
});

async function ctl(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await run(argv, { out: (t) => { out += t; }, err: (t) => { err += t; }, sleep: async () => {} });
  return { code, out, err };
}
const reset = () => { seen.length = 0; state = 'RUNNING'; routes = defaultRoutes(); };
const S = ['--sock', SOCK];

test.before(() => new Promise<void>((r) => server.listen(SOCK, r)));
test.after(() => new Promise<void>((r) => { server.close(() => { fs.rmSync(tmp, { recursive: true, force: true }); r(); }); }));
test.before.each(reset);

test('info: table with state, version, mounts (type and mounted time)', async () => {
  const { code, out, err } = await ctl(...S, 'info');
  assert.is(code, 0, err);
  assert.match(out, /State:\s+RUNNING/);
  assert.match(out, /Version:\s+v2\.4\.4/);
  assert.match(out, /Git commit:\s+c0ffee/);
  assert.match(out, /\/containers\s+PassthroughFs\s+-\s+2026-07-01 10:00:00\.1/);
  assert.match(out, /\/rafs\/c1\/lowerdir\s+Rafs\s+localfs\s+2026-07-01 10:00:05\.2/);
  assert.equal(seen.map((r) => `${r.method} ${r.url}`), ['GET /api/v1/daemon']);
});

test('--json / -r print the raw body', async () => {
  for (const flag of ['--json', '-r']) {
    const { code, out } = await ctl(...S, flag, 'info');
    assert.is(code, 0);
    assert.is(out, DAEMON() + '\n');
  }
  const after = await ctl(...S, 'metrics', '--json');
  assert.is(after.out, FSSTATS + '\n', 'global --json after the subcommand');
  const inflight = await ctl(...S, '--json', 'inflight');
  assert.is(inflight.out, INFLIGHT + '\n', 'big inode kept verbatim');
});

test('metrics: reads, bytes, fops by name in upstream order, buckets', async () => {
  const { code, out } = await ctl('-S', SOCK, 'metrics', '--id', '/rafs/c1/lowerdir');
  assert.is(code, 0);
  assert.is(seen[seen.length - 1].url, '/api/v1/metrics?id=%2Frafs%2Fc1%2Flowerdir');
  assert.match(out, /Opens:\s+7/);
  assert.match(out, /Reads:\s+104/);
  assert.match(out, /Read errors:\s+9/);
  assert.match(out, /Data read:\s+4194304 \(4\.0 MiB\)/);
  const names = ['getattr', 'readlink', 'open', 'release', 'read', 'statfs', 'getxattr', 'listxattr',
    'opendir', 'lookup', 'readdir', 'readdirplus', 'access', 'forget', 'batch_forget'];
  const lines = out.split('\n');
  const start = lines.findIndex((l) => /^FOP\s+HITS\s+ERRORS/.test(l));
  names.forEach((n, i) => {
    const cols = lines[start + 1 + i].trim().split(/\s+/);
    assert.equal(cols, [n, String(100 + i), i === 4 ? '9' : i === 9 ? '33' : '0']);
  });
  assert.match(out, /Block sizes:\s+<1K\s+1K~\s+4K~\s+16K~\s+64K~\s+128K~\s+512K~\s+1M~\nReads:\s+11\s+12\s+13\s+14\s+15\s+16\s+17\s+18/);
  assert.match(out, /Reads:\s+21\s+22\s+23\s+24\s+25\s+26\s+27\s+28/);
});

test('metrics --interval N --count C repeats and prints deltas', async () => {
  const { code, out } = await ctl(...S, 'metrics', '--interval', '1', '--count', '3');
  assert.is(code, 0);
  assert.is(seen.filter((r) => r.url === '/api/v1/metrics').length, 3);
  assert.is((out.match(/--- .* \(sample \d\) ---/g) ?? []).length, 3);
  assert.match(out, /Delta over 1s: reads \+0, data \+0 B/);
  const j = await ctl(...S, '--json', 'metrics', '-I', '2', '--count', '2');
  assert.is(j.out, `${FSSTATS}\n${FSSTATS}\n`);
  const ac = new AbortController();
  let n = 0;
  const code2 = await run([...S, 'metrics', '--interval', '1'], {
    out: () => {}, err: () => {}, signal: ac.signal,
    sleep: async () => { if (++n === 2) ac.abort(); },
  });
  assert.is(code2, 0, 'Ctrl-C (abort) ends the loop cleanly');
  const bad = await ctl(...S, 'metrics', '--interval', '0');
  assert.is(bad.code, 1);
  assert.match(bad.err, /--interval must be a positive integer/);
});

test('upstream form: metrics backend|cache|fsstats', async () => {
  assert.is((await ctl(...S, 'metrics', 'backend')).code, 0);
  assert.is((await ctl(...S, 'metrics', 'cache')).code, 0);
  assert.is((await ctl(...S, 'metrics', 'fsstats')).code, 0);
  assert.equal(seen.filter((r) => r.url.startsWith('/api/v1/metrics')).map((r) => r.url),
    ['/api/v1/metrics/backend', '/api/v1/metrics/blobcache', '/api/v1/metrics']);
});

test('backend and cache tables', async () => {
  const b = await ctl(...S, 'backend', '--mountpoint', '/rafs/c1/lowerdir');
  assert.is(b.code, 0);
  assert.is(seen[seen.length - 1].url, '/api/v1/metrics/backend?id=%2Frafs%2Fc1%2Flowerdir');
  assert.match(b.out, /Backend type:\s+registry/);
  assert.match(b.out, /Read count:\s+40/);
  assert.match(b.out, /Read errors:\s+3/);
  assert.match(b.out, /Read amount:\s+81920 \(80\.0 KiB\)/);
  assert.match(b.out, /Requests:\s+0\s+0\s+30\s+10\s+0/);
  assert.match(b.out, /Avg latency \(ms\):\s+0\s+0\s+10\s+10\s+0/);
  const c = await ctl(...S, 'cache');
  assert.is(c.code, 0);
  assert.match(c.out, /Whole hits:\s+77/);
  assert.match(c.out, /Partial hits:\s+5/);
  assert.match(c.out, /Store path:\s+\/var\/lib\/nydus\/cache/);
  assert.match(c.out, /Prefetch amount:\s+2097152 \(2\.0 MiB\)/);
  assert.match(c.out, /Prefetch duration:\s+2\.000 s/);
  assert.match(c.out, /Prefetch bandwidth:\s+1\.00 MiB\/s/);
});

test('files, pattern, inflight tables; inflight 204 means idle', async () => {
  const f = await ctl(...S, 'files', '--id', '/');
  assert.is(f.code, 0);
  assert.is(seen[seen.length - 1].url, '/api/v1/metrics/files?id=%2F');
  assert.match(f.out, /INODE\s+FOPS\s+READS\s+DATA READ\s+ERRORS\n5\s+9\s+2\s+8192\s+0/);
  await ctl(...S, 'files', '--latest');
  assert.is(seen[seen.length - 1].url, '/api/v1/metrics/files?latest=true');
  const p = await ctl(...S, 'pattern');
  assert.match(p.out, /5\s+3\s+2023-11-14T22:13:20\.500Z/);
  const i = await ctl(...S, 'inflight');
  assert.match(i.out, /72057594037927941 \(fs 1, ino 5\)\s+READ \(15\)\s+4242/);
  routes['GET /api/v1/metrics/inflight'] = { status: 204 };
  const idle = await ctl(...S, 'inflight');
  assert.is(idle.code, 0);
  assert.is(idle.out, 'no inflight requests\n');
  assert.is((await ctl(...S, '--json', 'inflight')).out, '[]\n');
});

test('mount: POST with percent-encoded mountpoint and MountCmd body', async () => {
  const cfg = path.join(tmp, 'cfg.json');
  fs.writeFileSync(cfg, '{"version":2,"backend":{"type":"localfs","localfs":{"dir":"/blobs"}}}');
  const { code, out, err } = await ctl(...S, 'mount', '--source', '/img/image.boot', '--type', 'rafs',
    '--config', cfg, '--prefetch-files', '/usr/bin,/etc', '/rafs/c 2/lowerdir');
  assert.is(code, 0, err);
  const m = seen[seen.length - 1];
  assert.is(m.method, 'POST');
  assert.is(m.url, '/api/v1/mount?mountpoint=%2Frafs%2Fc%202%2Flowerdir');
  assert.is(m.headers['content-type'], 'application/json');
  assert.equal(JSON.parse(m.body), {
    source: '/img/image.boot', fs_type: 'rafs', config: fs.readFileSync(cfg, 'utf8'), prefetch_files: ['/usr/bin', '/etc'],
  });
  assert.match(out, /mounted rafs \/img\/image\.boot at \/rafs\/c 2\/lowerdir/);
  // passthrough without config, upstream -m spelling
  assert.is((await ctl(...S, 'mount', '-s', '/shared', '-t', 'passthrough_fs', '-m', '/containers')).code, 0);
  const p = seen[seen.length - 1];
  assert.is(p.url, '/api/v1/mount?mountpoint=%2Fcontainers');
  assert.equal(JSON.parse(p.body), { source: '/shared', fs_type: 'passthrough_fs', config: '' });
});

test('mount: usage errors', async () => {
  const badType = await ctl(...S, 'mount', '--source', '/x', '--type', 'ext4', '/m');
  assert.is(badType.code, 1);
  assert.match(badType.err, /ext4/);
  const rel = await ctl(...S, 'mount', '--source', '/x', '--type', 'rafs', 'rel/path');
  assert.is(rel.code, 1);
  assert.match(rel.err, /absolute path/);
  const noCfg = await ctl(...S, 'mount', '--source', '/x', '--type', 'rafs', '--config', path.join(tmp, 'nope'), '/m');
  assert.is(noCfg.code, 1);
  assert.match(noCfg.err, /failed to read mount config .*nope: ENOENT/);
  assert.not.ok(seen.some((r) => r.method === 'POST'), 'nothing sent on usage errors');
});

test('umount, set log-level, exit: methods, paths and bodies', async () => {
  assert.is((await ctl(...S, 'umount', '/rafs/c1/lowerdir')).code, 0);
  assert.is(seen[seen.length - 1].method, 'DELETE');
  assert.is(seen[seen.length - 1].url, '/api/v1/mount?mountpoint=%2Frafs%2Fc1%2Flowerdir');
  const set = await ctl(...S, 'set', 'log-level', 'debug');
  assert.is(set.code, 0);
  assert.equal([seen[seen.length - 1].method, seen[seen.length - 1].url, JSON.parse(seen[seen.length - 1].body)],
    ['PUT', '/api/v1/daemon', { log_level: 'debug' }]);
  assert.match(set.out, /log level set to debug/);
  const badLevel = await ctl(...S, 'set', 'log-level', 'loud');
  assert.is(badLevel.code, 1);
  assert.match(badLevel.err, /invalid log level 'loud'/);
  const ex = await ctl(...S, 'exit');
  assert.is(ex.code, 0);
  assert.equal([seen[seen.length - 1].method, seen[seen.length - 1].url], ['PUT', '/api/v1/daemon/exit']);
});

test('errors: absent socket, missing --sock, non-2xx body message', async () => {
  const gone = await ctl('--sock', path.join(tmp, 'absent.sock'), 'info');
  assert.is(gone.code, 1);
  assert.is(gone.err, `error: cannot connect to nydusd API socket ${path.join(tmp, 'absent.sock')}: ENOENT\n`);
  const none = await ctl('info');
  assert.is(none.code, 1);
  assert.match(none.err, /--sock <path> is required/);
  routes['POST /api/v1/mount'] = { status: 500, body: '{"code":"UNDEFINED","message":"Mount(MountFilesystem(Other(\\"object or filesystem already exists\\")))"}' };
  const dup = await ctl(...S, 'mount', '--source', '/x', '--type', 'rafs', '/sub');
  assert.is(dup.code, 1);
  assert.is(dup.err, 'error: Mount(MountFilesystem(Other("object or filesystem already exists"))) (HTTP 500)\n');
  routes['GET /api/v1/metrics'] = { status: 404, body: '{"code":"UNDEFINED","message":"Metrics(Stats(NoCounter))"}' };
  const nc = await ctl(...S, 'metrics', '--id', '/nope');
  assert.is(nc.code, 1);
  assert.match(nc.err, /Metrics\(Stats\(NoCounter\)\) \(HTTP 404\)/);
});

test('daemon not RUNNING: metrics/mount refuse, info still works', async () => {
  state = 'READY';
  const m = await ctl(...S, 'metrics');
  assert.is(m.code, 1);
  assert.is(m.err, 'error: daemon is not ready (state READY)\n');
  const mt = await ctl(...S, 'mount', '--source', '/x', '--type', 'rafs', '/sub');
  assert.is(mt.code, 1);
  assert.match(mt.err, /daemon is not ready \(state READY\)/);
  assert.not.ok(seen.some((r) => r.method === 'POST' || r.url.startsWith('/api/v1/metrics')));
  const i = await ctl(...S, 'info');
  assert.is(i.code, 0);
  assert.match(i.out, /State:\s+READY/);
});

test('--help on every command; unknown command fails', async () => {
  const top = await ctl('--help');
  assert.is(top.code, 0);
  for (const c of ['info', 'metrics', 'backend', 'cache', 'files', 'pattern', 'inflight', 'mount', 'umount', 'set', 'exit']) {
    assert.ok(top.out.includes(c), `top-level help lists ${c}`);
    const h = await ctl(c, '--help');
    assert.is(h.code, 0, c);
    assert.match(h.out, new RegExp(`Usage: nydusctl ${c}`));
  }
  const bad = await ctl(...S, 'frobnicate');
  assert.is(bad.code, 1);
  assert.match(bad.err, /unknown command 'frobnicate'/);
  assert.is(seen.length, 0);
});

test('parseJsonExact keeps big integers exact, leaves strings alone', () => {
  assert.equal(parseJsonExact('{"a":72057594037927941,"b":"72057594037927941x","c":[1,-2.5e3]}'),
    { a: '72057594037927941', b: '72057594037927941x', c: [1, -2500] });
  assert.equal(parseJsonExact('{"s":"quote \\" 123456789012345678"}'), { s: 'quote " 123456789012345678' });
});

test.run();
