/**
 * nydusd HTTP API in-process: a DaemonService over a Vfs on a temp unix
 * socket, real RAFS (builder) and passthrough mounts, node:http requests.
 * Covers every endpoint, status codes/bodies, percent-encoded vs raw
 * mountpoints, error mapping, and metrics moving through the decorator.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { initDigest, DigestAlgorithm } from '../../src/common/digest';
import { Compressor } from '../../src/common/compress';
import { log } from '../../src/common/log';
import { createImage } from '../../src/rafs/builder/create';
import { Vfs } from '../../src/virtiofs/vfs/vfs';
import { DaemonService } from '../../src/service/service';
import { startApiServer, type ApiServer } from '../../src/api/server';
import { DaemonStateMachine } from '../../src/service/state';
import { FsIoStats, blockSizeIndex, inflightOps, latencyMicrosIndex, withMetrics } from '../../src/service/metrics';
import type { RequestContext } from '../../src/common/filesystem';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-api-unit-'));
const sock = path.join(work, 'api.sock');
let api: ApiServer;
let svc: DaemonService;
let exits = 0;
let boot = '';
let blobs = '';
const shared = path.join(work, 'shared');

interface Resp { status: number; headers: http.IncomingHttpHeaders; text: string; json?: any }

function request(method: string, p: string, body?: string | Buffer, socketPath = sock): Promise<Resp> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path: p, method, headers: body !== undefined ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        try { json = text ? JSON.parse(text) : undefined; } catch { /* not json */ }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

const rafsCmd = (extra: Record<string, unknown> = {}) => JSON.stringify({
  fs_type: 'rafs', source: boot,
  config: JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: blobs } }, rafs: { iostats_files: true, access_pattern: true, latest_read_files: true } }),
  ...extra,
});
const ctx: RequestContext = { uid: 0, gid: 0, pid: 1, unique: 7n };

test.before(async () => {
  await initDigest();
  log.level = 'silent';
  const src = path.join(work, 'src');
  fs.mkdirSync(path.join(src, 'd'), { recursive: true });
  fs.writeFileSync(path.join(src, 'f'), Buffer.alloc(5000, 'f'));
  fs.writeFileSync(path.join(src, 'd', 'x'), 'x');
  fs.mkdirSync(shared);
  fs.writeFileSync(path.join(shared, 'hello'), 'hi');
  blobs = path.join(work, 'blobs');
  fs.mkdirSync(blobs);
  const r = await createImage({
    source: src, type: 'dir-rafs', fsVersion: 6, compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3,
    chunkSize: 0x1000, bootstrap: path.join(work, 'image.boot'), blobDir: blobs, blobInlineMeta: false, blobToc: false,
    alignedChunk: false, repeatable: false, prefetchPatterns: [],
  });
  void r;
  boot = path.join(work, 'image.boot');
  fs.writeFileSync(sock, 'stale'); // a stale file is removed
  svc = new DaemonService(new Vfs(), { onExit: () => { exits++; } });
  api = await startApiServer(svc, sock);
});

test.after(async () => {
  await api.close();
  await svc.closeAll();
  fs.rmSync(work, { recursive: true, force: true });
});

test('state machine transitions as upstream', () => {
  const m = new DaemonStateMachine();
  assert.is(m.state, 'INIT');
  assert.throws(() => m.fire('Start'));
  m.fire('Mount'); assert.is(m.state, 'READY');
  m.fire('Start'); assert.is(m.state, 'RUNNING');
  assert.throws(() => m.fire('Mount'));
  m.fire('Stop'); assert.is(m.state, 'READY');
  m.fire('Exit'); assert.is(m.state, 'STOPPED');
  const t = new DaemonStateMachine(); t.fire('Takeover'); assert.is(t.state, 'READY');
  const s = new DaemonStateMachine(); s.fire('Mount'); s.fire('Start'); s.shutdown(); assert.is(s.state, 'STOPPED');
});

test('GET /api/v1/daemon: headers, version, state; start moves READY→RUNNING', async () => {
  let r = await request('GET', '/api/v1/daemon');
  assert.is(r.status, 200);
  assert.is(r.headers.server, 'Nydus API');
  assert.is(r.headers['content-type'], 'application/json');
  assert.is(r.json.state, 'INIT');
  for (const k of ['package_ver', 'git_commit', 'build_time', 'profile', 'rustc']) assert.type(r.json.version[k], 'string');
  assert.is(r.json.id, null);
  assert.equal(r.json.backend_collection, {});
  r = await request('PUT', '/api/v1/daemon/start');
  assert.is(r.status, 400, 'start from INIT is an unexpected event');
  assert.match(r.json.message, /UnexpectedEvent/);
  svc.state.fire('Mount');
  r = await request('PUT', '/api/v1/daemon/start');
  assert.is(r.status, 204);
  assert.is(r.text, '');
  assert.is(r.headers.server, 'Nydus API');
  assert.is((await request('GET', '/api/v1/daemon')).json.state, 'RUNNING');
  r = await request('GET', '/api/v2/daemon');
  assert.is(r.status, 200);
  assert.is(r.json.backend_collection, null);
});

test('mount: passthrough_fs at /containers, rafs percent-encoded and raw', async () => {
  let r = await request('POST', '/api/v1/mount?mountpoint=/containers', JSON.stringify({ fs_type: 'passthrough_fs', source: shared, config: '' }));
  assert.is(r.status, 204, r.text);
  assert.is(r.text, '');
  r = await request('POST', `/api/v1/mount?mountpoint=${encodeURIComponent('/rafs/c1/lowerdir')}`, rafsCmd());
  assert.is(r.status, 204, r.text);
  r = await request('POST', '/api/v1/mount?mountpoint=/rafs/c2/lowerdir', rafsCmd());
  assert.is(r.status, 204, r.text);
  r = await request('GET', '/api/v1/daemon');
  const bc = r.json.backend_collection;
  assert.equal(Object.keys(bc).sort(), ['/containers', '/rafs/c1/lowerdir', '/rafs/c2/lowerdir']);
  assert.is(bc['/containers'].backend_type, 'PassthroughFs');
  assert.is(bc['/containers'].config, null);
  assert.is(bc['/rafs/c1/lowerdir'].backend_type, 'Rafs');
  assert.is(bc['/rafs/c1/lowerdir'].mountpoint, '/rafs/c1/lowerdir');
  assert.match(bc['/rafs/c1/lowerdir'].mounted_time, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9} \+00:00:00$/);
  assert.is(bc['/rafs/c1/lowerdir'].config.backend.type, 'localfs');
  assert.equal(svc.vfs.mounts().map((m) => m.path).sort(), ['/containers', '/rafs/c1/lowerdir', '/rafs/c2/lowerdir']);
});

test('mount errors: double mount 500, missing mountpoint 400, bad JSON 400, bad fs_type 500, missing field 400', async () => {
  let r = await request('POST', '/api/v1/mount?mountpoint=/rafs/c1/lowerdir', rafsCmd());
  assert.is(r.status, 500);
  assert.equal(r.json, { code: 'UNDEFINED', message: 'Mount(MountFilesystem(Other("object or filesystem already exists")))' });
  r = await request('POST', '/api/v1/mount', rafsCmd());
  assert.is(r.status, 400);
  assert.equal(r.json, { code: 'UNDEFINED', message: 'QueryString("\'mountpoint\' should be specified in query string")' });
  r = await request('POST', '/api/v1/mount?mountpoint=/x', '{not json');
  assert.is(r.status, 400);
  assert.match(r.json.message, /^ParseBody\(/);
  r = await request('POST', '/api/v1/mount?mountpoint=/x', JSON.stringify({ source: boot, config: '', fs_type: '' }));
  assert.is(r.status, 500);
  assert.match(r.json.message, /^Mount\(MountFilesystem\(Other\(".*InvalidArguments/);
  r = await request('POST', '/api/v1/mount?mountpoint=/x', JSON.stringify({ fs_type: 'rafs', config: '' }));
  assert.is(r.status, 400);
  assert.match(r.json.message, /missing field `source`/);
  r = await request('POST', '/api/v1/mount?mountpoint=/x', JSON.stringify({ fs_type: 'rafs', source: '/nonexistent.boot', config: '{"version":2,"backend":{"type":"localfs","localfs":{"dir":"/tmp"}}}' }));
  assert.is(r.status, 500);
  r = await request('POST', '/api/v1/mount?mountpoint=/x', JSON.stringify({ fs_type: 'rafs', source: boot, config: '{bad' }));
  assert.is(r.status, 500);
  r = await request('POST', '/api/v1/mount?mountpoint=/x');
  assert.is(r.status, 400, 'POST without body');
  assert.not.ok(svc.instances.has('/x'));
  r = await request('POST', '/api/v1/mount?mountpoint=/x', Buffer.alloc((1 << 20) + 10, 0x20));
  assert.is(r.status, 400, 'oversized body');
  assert.ok((await request('GET', '/api/v1/daemon')).status === 200, 'still serving');
  const ev = await request('GET', '/api/v1/daemon/events');
  assert.is(ev.status, 200);
  assert.is(ev.json.max_errors, 500);
  assert.ok(ev.json.total_errors >= 1);
  assert.match(ev.json.errors[0], / - Mount\(/);
});

test('routing: unknown path 404 NoRoute, wrong method 400 BadRequest', async () => {
  let r = await request('GET', '/api/v1/nothing');
  assert.is(r.status, 404);
  assert.equal(r.json, { code: 'UNDEFINED', message: 'NoRoute' });
  assert.is(r.headers.server, 'Nydus API');
  r = await request('GET', '/api/v1/daemon/');
  assert.is(r.status, 404, 'exact path match');
  r = await request('DELETE', '/api/v1/daemon');
  assert.is(r.status, 400);
  assert.equal(r.json, { code: 'UNDEFINED', message: 'BadRequest' });
  r = await request('GET', '/api/v1/mount?mountpoint=/x');
  assert.is(r.status, 400);
});

test('PUT /api/v1/daemon log_level', async () => {
  let r = await request('PUT', '/api/v1/daemon', JSON.stringify({ log_level: 'debug' }));
  assert.is(r.status, 204);
  assert.is(log.level, 'debug');
  r = await request('PUT', '/api/v2/daemon', JSON.stringify({ log_level: 'error' }));
  assert.is(r.status, 204);
  assert.is(log.level, 'error');
  r = await request('PUT', '/api/v1/daemon', JSON.stringify({ log_level: 'loud' }));
  assert.is(r.status, 500);
  assert.is(r.json.message, 'Configure(ResponsePayloadType)');
  r = await request('PUT', '/api/v1/daemon', '{}');
  assert.is(r.status, 400);
  log.level = 'silent';
});

test('GET /api/v1/daemon/backend', async () => {
  let r = await request('GET', `/api/v1/daemon/backend?mountpoint=${encodeURIComponent('/rafs/c1/lowerdir')}`);
  assert.is(r.status, 200, r.text);
  assert.is(r.json.version, 0x600, 'RAFS_SUPER_VERSION_V6');
  assert.ok(r.json.inodes_count >= 4);
  assert.equal(r.json.attr_timeout, { secs: 4294967296, nanos: 0 });
  assert.type(r.json.flags.bits, 'number');
  r = await request('GET', '/api/v1/daemon/backend?mountpoint=/containers');
  assert.is(r.status, 500);
  assert.match(r.json.message, /FsTypeMismatch/);
  r = await request('GET', '/api/v1/daemon/backend');
  assert.is(r.status, 400);
});

test('metrics: id selection, counters move through the decorator', async () => {
  let r = await request('GET', '/api/v1/metrics');
  assert.is(r.status, 404, 'no id with 3 mounts');
  assert.is(r.json.message, 'GlobalMetrics(Metrics(Stats(NoCounter)))');
  r = await request('GET', '/api/v1/metrics?id=/nope');
  assert.is(r.status, 404);
  const id = encodeURIComponent('/rafs/c1/lowerdir');
  r = await request('GET', `/api/v1/metrics?id=${id}`);
  assert.is(r.status, 200);
  assert.is(r.json.id, '/rafs/c1/lowerdir');
  assert.is(r.json.fop_hits.length, 15);
  assert.is(r.json.block_count_read.length, 8);
  assert.is(r.json.read_latency_dist.length, 8);
  assert.is(r.json.data_read, 0);
  const rafs = svc.instances.get('/rafs/c1/lowerdir')!.fs;
  const e = await rafs.lookup(ctx, 1n, Buffer.from('f'));
  const o = await rafs.open!(ctx, e.ino, 0);
  const pieces = await rafs.read!(ctx, e.ino, o.fh, 0, 8192);
  assert.is(pieces.reduce((a, p) => a + p.length, 0), 5000);
  await rafs.lookup(ctx, 1n, Buffer.from('missing')).catch(() => undefined);
  r = await request('GET', `/api/v1/metrics?id=${id}`);
  const m = r.json;
  assert.is(m.fop_hits[9], 1, 'lookup hit');
  assert.is(m.fop_errors[9], 1, 'lookup error');
  assert.is(m.fop_hits[2], 1, 'open');
  assert.is(m.fop_hits[4], 1, 'read');
  assert.is(m.nr_opens, 1);
  assert.is(m.data_read, 5000);
  assert.is(m.block_count_read[blockSizeIndex(5000)], 1);
  assert.is(m.read_latency_dist.reduce((a: number, b: number) => a + b, 0), 1);
  assert.ok(m.files_account_enabled && m.access_pattern_enabled && m.record_latest_read_files_enabled);
  await rafs.release!(ctx, e.ino, o.fh, 0);
  assert.is((await request('GET', `/api/v1/metrics?id=${id}`)).json.nr_opens, 0);

  r = await request('GET', `/api/v1/metrics/files?id=${id}`);
  assert.is(r.status, 200);
  assert.is(r.json[String(e.ino)].data_read, 5000);
  r = await request('GET', `/api/v1/metrics/files?id=${id}&latest=true`);
  assert.equal(r.json, [[Number(e.ino)]]);
  assert.equal((await request('GET', `/api/v1/metrics/files?id=${id}&latest=true`)).json, [], 'cleared');
  r = await request('GET', `/api/v1/metrics/pattern?id=${id}`);
  assert.is(r.json.length, 1);
  assert.is(r.json[0].nr_read, 1);
  r = await request('GET', '/api/v1/metrics/files?id=/containers');
  assert.is(r.status, 500, 'iostats_files off');
  r = await request('GET', '/api/v1/metrics/pattern?id=/containers');
  assert.is(r.status, 500);

  r = await request('GET', `/api/v1/metrics/backend?id=${id}`);
  assert.is(r.status, 200);
  assert.is(r.json.backend_type, 'localfs');
  assert.ok(r.json.read_count >= 1, 'backend read counted');
  assert.ok(r.json.read_amount_total > 0);
  assert.is(r.json.read_latency_sizes_dist.length, 8);
  assert.is(r.json.id, undefined);
  r = await request('GET', '/api/v1/metrics/backend?id=/containers');
  assert.is(r.status, 404);
  r = await request('GET', `/api/v1/metrics/blobcache?id=${id}`);
  assert.is(r.status, 200);
  // counted by the device: every chunk read that reached storage (no cache here, so no hits)
  assert.ok(r.json.total >= 1, `total ${r.json.total}`);
  assert.is(r.json.whole_hits + r.json.partial_hits, 0);
  assert.is(r.json.store_path, '');
  assert.type(r.json.data_all_ready, 'boolean');
  r = await request('GET', '/api/v1/metrics/inflight');
  assert.is(r.status, 204);
  assert.is(r.text, '');

  // passthrough is counted too
  const pt = svc.instances.get('/containers')!.fs;
  await pt.getattr(ctx, 1n);
  assert.is((await request('GET', '/api/v1/metrics?id=/containers')).json.fop_hits[0], 1);
  assert.is(latencyMicrosIndex(150), 0);
  assert.is(latencyMicrosIndex(3_000_000), 7);
});

test('in-flight ops: a pending op is listed with upstream\'s encoded inode, opcode, unique and start time, and leaves when done', async () => {
  let release!: () => void;
  const slow = { readOnly: true, getattr: () => new Promise<never>((_r, reject) => { release = () => reject(new Error('done')); }) } as unknown as import('../../src/common/filesystem').FileSystem;
  const stats = new FsIoStats('/slow');
  stats.vfsIndex = 3;
  const wrapped = withMetrics(slow, stats);
  const before = inflightOps().length;
  const t = Math.floor(Date.now() / 1000);
  const p = wrapped.getattr!({ ...ctx, unique: 77n } as RequestContext, 5n).catch(() => undefined);
  const mine = inflightOps().filter((o) => o.unique === 77);
  assert.is(inflightOps().length, before + 1);
  assert.equal(mine.map((o) => [o.inode, o.opcode]), [[Number((3n << 56n) | 5n), 3]]);
  assert.ok(Math.abs(mine[0].timestamp_secs - t) <= 1);
  release();
  await p;
  assert.is(inflightOps().length, before);
});

test('remount (PUT) swaps the fs; DELETE umounts, unknown → 204; metrics without id with one fs', async () => {
  let r = await request('PUT', '/api/v1/mount?mountpoint=/rafs/c2/lowerdir', rafsCmd());
  assert.is(r.status, 204, r.text);
  r = await request('PUT', '/api/v1/mount?mountpoint=/rafs/none/lowerdir', rafsCmd());
  assert.is(r.status, 500, 'remount of nothing');
  r = await request('DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent('/rafs/c1/lowerdir')}`);
  assert.is(r.status, 204);
  assert.is(r.text, '');
  r = await request('DELETE', '/api/v1/mount?mountpoint=/rafs/c1/lowerdir');
  assert.is(r.status, 204, 'second umount is harmless');
  r = await request('DELETE', '/api/v1/mount');
  assert.is(r.status, 400);
  r = await request('DELETE', '/api/v1/mount?mountpoint=/containers', '');
  assert.is(r.status, 204);
  r = await request('GET', '/api/v1/metrics');
  assert.is(r.status, 200, 'one fs left: id may be omitted');
  assert.is(r.json.id, '/rafs/c2/lowerdir');
  assert.equal(Object.keys((await request('GET', '/api/v1/daemon')).json.backend_collection), ['/rafs/c2/lowerdir']);
  assert.equal(svc.vfs.mounts().map((m) => m.path), ['/rafs/c2/lowerdir']);
});

test('/api/v1/config: PUT registry_auth per mountpoint id, GET it back; unknown keys 500, bad bodies 400', async () => {
  const auth = Buffer.from('u:p').toString('base64');
  let r = await request('PUT', `/api/v1/config?id=${encodeURIComponent('/containers')}`, JSON.stringify({ registry_auth: auth }));
  assert.is(r.status, 204, r.text);
  r = await request('GET', `/api/v1/config?id=${encodeURIComponent('/containers')}`);
  assert.equal(r.json, { registry_auth: auth });
  r = await request('PUT', '/api/v1/config', JSON.stringify({ proxy_url: 'http://p' }));
  assert.is(r.status, 204);
  r = await request('GET', '/api/v1/config');
  assert.is(r.json[':proxy_url'], 'http://p', 'without id: keys prefixed ":" as upstream');
  assert.is(r.json['/containers:registry_auth'], auth);
  assert.is((await request('PUT', '/api/v1/config', JSON.stringify({ nope: 'x' }))).status, 500);
  assert.is((await request('PUT', '/api/v1/config', JSON.stringify({ registry_auth: 7 }))).status, 400);
  assert.is((await request('PUT', '/api/v1/config', '[1]')).status, 400);
});

test('unsupported endpoints 501; exit 204 then the exit hook', async () => {
  assert.is((await request('PUT', '/api/v1/daemon/fuse/takeover')).status, 501);
  assert.is((await request('PUT', '/api/v2/blobs', '{}')).status, 501);
  const r = await request('PUT', '/api/v1/daemon/exit');
  assert.is(r.status, 204);
  await new Promise((res) => setTimeout(res, 20));
  assert.is(exits, 1);
});

test.run();
