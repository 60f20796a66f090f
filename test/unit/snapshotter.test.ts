/**
 * containerd-nydus-grpc's Snapshots service through real @grpc/grpc-js
 * clients on a unix socket: containerd semantics and error codes, hostile
 * inputs, List filters, Update field paths, the Nydus remote-layer protocol
 * (data layers committed with AlreadyExists, meta layer native, container
 * snapshots on a meta layer: Kata extraoption with daemon_mode none, and a
 * fake nydusd for dedicated mode), persistence across a restart with the same
 * SQLite file, Cleanup.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { writeFakeNydusd } from '../support/fake-nydusd';
import { buildConfig, type SnapshotterConfig } from '../../src/snapshotter/config';
import { serve, type RunningServer } from '../../src/snapshotter/grpc-service';
import { snapshotsService } from '../../src/snapshotter/proto';
import { Snapshotter } from '../../src/snapshotter/snapshotter';
import { pidAlive } from '../../src/snapshotter/daemon';
import { MetaStore } from '../../src/snapshotter/store';
import { spawn } from 'node:child_process';
import { Compressor } from '../../src/common/compress';
import { DigestAlgorithm, initDigest } from '../../src/common/digest';
import { createImage } from '../../src/rafs/builder/create';
import { mergeLayers } from '../../src/rafs/builder/merge';
import { writeBootstrapV6 } from '../../src/rafs/builder/bootstrap-v6';
import { loadRafs } from '../../src/rafs/metadata/super';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sn-unit-'));
let seq = 0;

type Obj = Record<string, any>;

interface Rig {
  cfg: SnapshotterConfig;
  sn: Snapshotter;
  srv: RunningServer;
  c: grpc.Client & Record<string, any>;
  call(m: string, req: Obj): Promise<Obj>;
  list(filters?: string[]): Promise<Obj[]>;
  close(keepDaemons?: boolean): Promise<void>;
}

async function rig(toml = '', root?: string): Promise<Rig> {
  const dir = root ?? path.join(tmp, `r${++seq}`);
  fs.mkdirSync(dir, { recursive: true });
  const cfg = buildConfig(`version = 1\nroot = "${dir}"\naddress = "${dir}/grpc.sock"\n${toml}`);
  const sn = new Snapshotter(cfg);
  const srv = await serve(sn, cfg.address);
  const Ctor = snapshotsService();
  const c = new Ctor(`unix://${cfg.address}`, grpc.credentials.createInsecure()) as grpc.Client & Record<string, any>;
  const call = (m: string, req: Obj): Promise<Obj> =>
    new Promise((resolve, reject) => c[m]({ snapshotter: 'nydus', ...req }, (e: grpc.ServiceError | null, r: Obj) => (e ? reject(e) : resolve(r))));
  const list = (filters: string[] = []): Promise<Obj[]> =>
    new Promise((resolve, reject) => {
      const out: Obj[] = [];
      const s = c.List({ snapshotter: 'nydus', filters });
      s.on('data', (m: Obj) => out.push(...m.info));
      s.on('error', reject);
      s.on('end', () => resolve(out));
    });
  return {
    cfg, sn, srv, c, call, list,
    async close(keepDaemons = false) {
      for (const d of keepDaemons ? [] : sn.daemons.daemons()) {
        try { process.kill(d.pid, 'SIGKILL'); } catch { /* gone */ }
      }
      c.close();
      await srv.close();
      await sn.close();
    },
  };
}

async function code(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (e) {
    return (e as grpc.ServiceError).code;
  }
  return 0;
}

const S = grpc.status;

test('prepare / commit / view / mounts: bind and overlay exactly as the overlayfs snapshotter', async () => {
  const r = await rig();
  const root = r.cfg.root;
  try {
    const m0 = (await r.call('Prepare', { key: 'a', parent: '' })).mounts;
    assert.equal(m0, [{ type: 'bind', source: `${root}/snapshots/1/fs`, target: '', options: ['rw', 'rbind'] }]);
    fs.writeFileSync(`${root}/snapshots/1/fs/hello`, 'x'.repeat(10000));
    await r.call('Commit', { name: 'base', key: 'a', labels: { l: 'v' } });
    assert.not.ok(fs.existsSync(`${root}/snapshots/1/work`), 'workdir removed at commit');
    const m1 = (await r.call('Prepare', { key: 'b', parent: 'base' })).mounts;
    assert.equal(m1, [{ type: 'overlay', source: 'overlay', target: '', options: [`workdir=${root}/snapshots/2/work`, `upperdir=${root}/snapshots/2/fs`, `lowerdir=${root}/snapshots/1/fs`] }]);
    assert.equal((await r.call('Mounts', { key: 'b' })).mounts, m1);
    const v = (await r.call('View', { key: 'v', parent: 'base' })).mounts;
    assert.equal(v, [{ type: 'bind', source: `${root}/snapshots/1/fs`, target: '', options: ['ro', 'rbind'] }]);
    await r.call('Commit', { name: 'top', key: 'b' });
    const v2 = (await r.call('View', { key: 'v2', parent: 'top' })).mounts;
    assert.equal(v2, [{ type: 'overlay', source: 'overlay', target: '', options: [`lowerdir=${root}/snapshots/2/fs:${root}/snapshots/1/fs`] }]);
    const rootView = (await r.call('View', { key: 'v3', parent: '' })).mounts;
    assert.equal(rootView[0].options, ['ro', 'rbind']);
    const volatile = (await r.call('Prepare', { key: 'vol', parent: 'top', labels: { 'containerd.io/snapshot/overlay.volatile': 'true' } })).mounts;
    assert.equal(volatile[0].options.slice(0, 3), [`workdir=${root}/snapshots/6/work`, `upperdir=${root}/snapshots/6/fs`, 'volatile']);

    const st = (await r.call('Stat', { key: 'base' })).info;
    assert.is(st.name, 'base');
    assert.is(st.parent, '');
    assert.is(st.kind, 3);
    assert.equal(st.labels, { l: 'v' });
    assert.ok(Number(st.created_at.seconds) > 1.6e9);
    const stb = (await r.call('Stat', { key: 'top' })).info;
    assert.is(stb.parent, 'base');
    assert.equal(stb.labels, {}, 'commit labels replace, not inherit');
    assert.is((await r.call('Stat', { key: 'v' })).info.kind, 1);
    assert.is((await r.call('Stat', { key: 'vol' })).info.kind, 2);

    const u = await r.call('Usage', { key: 'base' });
    assert.ok(Number(u.size) >= 10000 && Number(u.inodes) === 2, JSON.stringify(u));
    fs.writeFileSync(`${root}/snapshots/6/fs/f`, 'y'.repeat(8192));
    const ua = await r.call('Usage', { key: 'vol' });
    assert.ok(Number(ua.size) >= 8192, 'active usage is measured now');
  } finally {
    await r.close();
  }
});

test('error codes: AlreadyExists, NotFound, InvalidArgument, FailedPrecondition', async () => {
  const r = await rig();
  try {
    await r.call('Prepare', { key: 'a', parent: '' });
    assert.is(await code(r.call('Prepare', { key: 'a', parent: '' })), S.ALREADY_EXISTS);
    assert.is(await code(r.call('Prepare', { key: 'x', parent: 'nope' })), S.NOT_FOUND);
    assert.is(await code(r.call('Prepare', { key: 'x', parent: 'a' })), S.INVALID_ARGUMENT, 'parent not committed');
    assert.is(await code(r.call('Stat', { key: 'nope' })), S.NOT_FOUND);
    assert.is(await code(r.call('Mounts', { key: 'nope' })), S.NOT_FOUND);
    assert.is(await code(r.call('Remove', { key: 'nope' })), S.NOT_FOUND);
    assert.is(await code(r.call('Usage', { key: 'nope' })), S.NOT_FOUND);
    assert.is(await code(r.call('Commit', { name: 'c', key: 'nope' })), S.NOT_FOUND);
    await r.call('Commit', { name: 'c', key: 'a' });
    assert.is(await code(r.call('Commit', { name: 'c', key: 'c' })), S.ALREADY_EXISTS, 'name taken');
    assert.is(await code(r.call('Commit', { name: 'c2', key: 'c' })), S.FAILED_PRECONDITION, 'not active');
    assert.is(await code(r.call('Mounts', { key: 'c' })), S.FAILED_PRECONDITION, 'committed has no mounts');
    await r.call('View', { key: 'v', parent: 'c' });
    assert.is(await code(r.call('Commit', { name: 'c3', key: 'v' })), S.FAILED_PRECONDITION, 'a view cannot be committed');
    assert.is(await code(r.call('Remove', { key: 'c' })), S.FAILED_PRECONDITION, 'has a child');
    await r.call('Remove', { key: 'v' });
    await r.call('Remove', { key: 'c' });
    assert.is(await code(r.call('Stat', { key: 'c' })), S.NOT_FOUND);
    assert.is(await code(r.call('Update', { info: { name: 'nope', labels: {} } })), S.NOT_FOUND);
  } finally {
    await r.close();
  }
});

test('hostile inputs are refused with InvalidArgument and change nothing', async () => {
  const r = await rig();
  try {
    const bad: [string, Obj][] = [
      ['Prepare', { key: '' }],
      ['Prepare', { key: 'k'.repeat(5000) }],
      ['Prepare', { key: 'a\0b' }],
      ['Prepare', { key: 'ok', parent: 'p'.repeat(5000) }],
      ['Prepare', { key: 'ok', labels: { big: 'v'.repeat(5000) } }],
      ['Prepare', { key: 'ok', labels: Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`k${i}`, 'v'])) }],
      ['View', { key: '' }],
      ['Commit', { name: '', key: 'x' }],
      ['Commit', { name: 'x', key: '' }],
      ['Stat', { key: '' }],
      ['Update', { info: { name: '' } }],
      ['Update', {}],
      ['Remove', { key: '' }],
      ['Usage', { key: '' }],
    ];
    for (const [m, req] of bad) assert.is(await code(r.call(m, req)), S.INVALID_ARGUMENT, `${m} ${JSON.stringify(req).slice(0, 80)}`);
    assert.equal(await r.list(), [], 'nothing was created');
    await r.call('Prepare', { key: 'a' });
    await r.call('Commit', { name: 'c', key: 'a' });
    assert.is(await code(r.call('Update', { info: { name: 'c', labels: {} }, update_mask: { paths: ['parent'] } })), S.INVALID_ARGUMENT);
    assert.is(await code(r.list(['labels.a==b,,'])), S.INVALID_ARGUMENT);
    assert.is(await code(r.list(['name~=/(/'])), S.INVALID_ARGUMENT);
    assert.is(await code(r.list(Array.from({ length: 100 }, () => 'name==a'))), S.INVALID_ARGUMENT);
    // 4096 bytes per pair is the limit, inclusive
    await r.call('Prepare', { key: 'edge', labels: { k: 'v'.repeat(4095) } });
  } finally {
    await r.close();
  }
});

test('update field paths and List filters (containerd syntax)', async () => {
  const r = await rig();
  try {
    await r.call('Prepare', { key: 'a', labels: { keep: '1' } });
    await r.call('Commit', { name: 'sha256:aaa', key: 'a', labels: { 'containerd.io/snapshot.ref': 'sha256:aaa', x: '1', y: '2' } });
    await r.call('Prepare', { key: 'b', parent: 'sha256:aaa' });
    let i = (await r.call('Update', { info: { name: 'sha256:aaa', labels: { x: '9', z: '3' } }, update_mask: { paths: ['labels.x', 'labels.y'] } })).info;
    assert.equal(i.labels, { 'containerd.io/snapshot.ref': 'sha256:aaa', x: '9' }, 'labels.y absent from info: deleted; z not in the mask');
    i = (await r.call('Update', { info: { name: 'sha256:aaa', labels: { only: 'this' } } })).info;
    assert.equal(i.labels, { only: 'this' }, 'no mask: all labels replaced');
    i = (await r.call('Update', { info: { name: 'sha256:aaa', labels: { a: 'b', only: '' } }, update_mask: { paths: ['labels'] } })).info;
    assert.equal(i.labels, { a: 'b' }, 'empty values are not stored');
    assert.ok(BigInt(i.updated_at.seconds) * 1000000000n + BigInt(i.updated_at.nanos) >= BigInt(i.created_at.seconds) * 1000000000n + BigInt(i.created_at.nanos));
    await r.call('Update', { info: { name: 'sha256:aaa', labels: { 'containerd.io/snapshot.ref': 'sha256:aaa' } }, update_mask: { paths: ['labels.containerd.io/snapshot.ref'] } });

    const names = async (f: string[]): Promise<string[]> => (await r.list(f)).map((x) => x.name).sort();
    assert.equal(await names([]), ['b', 'sha256:aaa']);
    assert.equal(await names(['labels."containerd.io/snapshot.ref"==sha256:aaa,parent==""']), ['sha256:aaa']);
    assert.equal(await names(['labels."containerd.io/snapshot.ref"==sha256:aaa,parent=="x"']), []);
    assert.equal(await names(['kind==active']), ['b']);
    assert.equal(await names(['kind==committed', 'name==b']), ['b', 'sha256:aaa'], 'filters are ORed');
    assert.equal(await names(['parent==sha256:aaa']), ['b']);
    assert.equal(await names(['labels.a']), ['sha256:aaa'], 'presence');
    assert.equal(await names(['name~=^sha']), ['sha256:aaa']);
    assert.equal(await names(['name!=b']), ['sha256:aaa']);
  } finally {
    await r.close();
  }
});

test('List streams every snapshot in batches', async () => {
  const r = await rig();
  try {
    for (let i = 0; i < 250; i++) await r.call('Prepare', { key: `k${i}` });
    const all = await r.list();
    assert.is(all.length, 250);
  } finally {
    await r.close();
  }
});

test('state survives a restart with the same SQLite file; ids are not reused; Cleanup removes orphan dirs', async () => {
  const root = path.join(tmp, `persist${++seq}`);
  let r = await rig('', root);
  await r.call('Prepare', { key: 'a', labels: { k: 'v' } });
  await r.call('Commit', { name: 'c', key: 'a' });
  await r.call('Prepare', { key: 'b', parent: 'c' });
  await r.call('Prepare', { key: 'gone' });
  await r.call('Remove', { key: 'gone' });
  await r.close();

  r = await rig('', root);
  try {
    assert.is((await r.call('Stat', { key: 'c' })).info.kind, 3);
    assert.is((await r.call('Stat', { key: 'b' })).info.parent, 'c');
    assert.is(await code(r.call('Stat', { key: 'gone' })), S.NOT_FOUND);
    const m = (await r.call('Prepare', { key: 'new' })).mounts;
    assert.is(m[0].source, `${root}/snapshots/4/fs`, 'id 3 (removed) is not reused');
    assert.ok(fs.existsSync(`${root}/snapshots/3`), 'removed dir stays until Cleanup (sync_remove off)');
    fs.mkdirSync(`${root}/snapshots/new-stale`);
    await r.call('Cleanup', {});
    assert.not.ok(fs.existsSync(`${root}/snapshots/3`));
    assert.not.ok(fs.existsSync(`${root}/snapshots/new-stale`));
    assert.ok(fs.existsSync(`${root}/snapshots/1/fs`) && fs.existsSync(`${root}/snapshots/2/fs`));
  } finally {
    await r.close();
  }
});

test('sync_remove removes the directory at once', async () => {
  const r = await rig('[snapshot]\nsync_remove = true\n');
  try {
    await r.call('Prepare', { key: 'a' });
    assert.ok(fs.existsSync(`${r.cfg.root}/snapshots/1`));
    await r.call('Remove', { key: 'a' });
    assert.not.ok(fs.existsSync(`${r.cfg.root}/snapshots/1`));
  } finally {
    await r.close();
  }
});

// ---------------------------------------------------------------- Nydus remote-layer protocol

const DATA_LABELS = (chain: string, digest: string): Obj => ({
  'containerd.io/snapshot.ref': chain,
  'containerd.io/snapshot/nydus-blob': 'true',
  'containerd.io/snapshot/cri.layer-digest': digest,
  'containerd.io/snapshot/cri.image-ref': 'localhost:5000/library/busybox:nydus',
});

/** A file the snapshotter recognises as a RAFS v6 bootstrap (EROFS magic at 1024). */
function fakeBootstrap(file: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const b = Buffer.alloc(8192);
  b.writeUInt32LE(0xe0f5e1e2, 1024);
  fs.writeFileSync(file, b);
  fs.writeFileSync(path.join(path.dirname(file), 'aaaa.blob.meta'), 'meta');
}

interface PullOpts {
  /** last hex digit of the chain ids and the data layer digest (distinct images); default: all 1/2/a */
  variant?: string;
  /** a real bootstrap to apply instead of the stub */
  bootstrap?: Buffer;
  /** data layer digest (hex) */
  layerDigest?: string;
}

const hex64 = (c: string, variant?: string): string => (variant ? c.repeat(63) + variant : c.repeat(64));

/** Pull a Nydus image the way containerd's unpacker does: data layer, then meta layer (applied + committed). */
async function pullNydus(r: Rig, imageRef = 'localhost:5000/library/busybox:nydus', extra: Obj = {}, o: PullOpts = {}): Promise<string> {
  const chain1 = 'sha256:' + hex64('1', o.variant);
  const v = o.variant ?? '';
  const layer = 'sha256:' + (o.layerDigest ?? hex64('a', o.variant));
  assert.is(await code(r.call('Prepare', { key: `default/1${v}/extract-1 ${chain1}`, parent: '', labels: DATA_LABELS(chain1, layer) })), S.ALREADY_EXISTS);
  const chain2 = 'sha256:' + hex64('2', o.variant);
  const metaLabels = { 'containerd.io/snapshot.ref': chain2, 'containerd.io/snapshot/nydus-bootstrap': 'true', 'containerd.io/snapshot/nydus-fs-version': '6', 'containerd.io/snapshot/cri.image-ref': imageRef, ...extra };
  const m = (await r.call('Prepare', { key: `default/2${v}/extract-2 ${chain2}`, parent: chain1, labels: metaLabels })).mounts;
  assert.is(m[0].type, 'overlay', 'the meta layer is prepared natively so containerd applies it');
  const up = m[0].options.find((o: string) => o.startsWith('upperdir=')).slice('upperdir='.length);
  if (o.bootstrap) {
    fs.mkdirSync(path.join(up, 'image'), { recursive: true });
    fs.writeFileSync(path.join(up, 'image', 'image.boot'), o.bootstrap);
  } else fakeBootstrap(path.join(up, 'image', 'image.boot'));
  await r.call('Commit', { name: chain2, key: `default/2${v}/extract-2 ${chain2}`, labels: metaLabels });
  return chain2;
}

test('remote-layer protocol: data layers committed at once (AlreadyExists), listed by containerd\'s filter', async () => {
  const r = await rig('daemon_mode = "none"\n');
  try {
    const chain = 'sha256:' + '1'.repeat(64);
    const labels = DATA_LABELS(chain, 'sha256:' + 'a'.repeat(64));
    const e = await r.call('Prepare', { key: 'default/5/extract-1 x', parent: '', labels }).catch((x) => x);
    assert.is(e.code, S.ALREADY_EXISTS);
    assert.match(e.details, /target snapshot/);
    const found = await r.list([`labels."containerd.io/snapshot.ref"==${chain},parent==""`]);
    assert.is(found.length, 1);
    assert.is(found[0].name, chain);
    assert.is(found[0].kind, 3);
    assert.equal(found[0].labels, labels, 'the labels are kept');
    assert.is(await code(r.call('Stat', { key: 'default/5/extract-1 x' })), S.NOT_FOUND, 'the extract key is gone');
    // a second pull of the same layer: AlreadyExists at once
    assert.is(await code(r.call('Prepare', { key: 'default/6/extract-1 x', parent: '', labels })), S.ALREADY_EXISTS);
    assert.is((await r.list()).length, 1);
    // a plain OCI layer with snapshot.ref is prepared natively
    const m = (await r.call('Prepare', { key: 'default/7/extract oci', parent: '', labels: { 'containerd.io/snapshot.ref': 'sha256:' + '9'.repeat(64) } })).mounts;
    assert.is(m[0].type, 'bind');
    // a view on a data layer is refused
    assert.is(await code(r.call('View', { key: 'vv', parent: chain })), S.FAILED_PRECONDITION);
  } finally {
    await r.close();
  }
});

test('Kata mode (daemon_mode none): fuse.nydus-overlayfs with the extraoption Kata parses', async () => {
  const tpl = path.join(tmp, 'nydusd-config.json');
  fs.writeFileSync(tpl, JSON.stringify({
    device: { backend: { type: 'registry', config: { scheme: 'http', timeout: 5, unknown_key: 1 } }, cache: { type: 'blobcache', config: { work_dir: '/x' } } },
    mode: 'direct', digest_validate: false, enable_xattr: true, fs_prefetch: { enable: true, threads_count: 4 }, what: 'dropped',
  }));
  const r = await rig(`daemon_mode = "none"\n[daemon]\nnydusd_config = "${tpl}"\n`);
  const root = r.cfg.root;
  try {
    const meta = await pullNydus(r, 'localhost:5000/library/busybox:nydus', { 'containerd.io/snapshot/pullusername': 'u', 'containerd.io/snapshot/pullsecret': 'p&w' });
    const m = (await r.call('Prepare', { key: 'default/9/ctr', parent: meta })).mounts;
    assert.is(m.length, 1);
    assert.is(m[0].type, 'fuse.nydus-overlayfs');
    assert.is(m[0].source, 'overlay');
    const opts: string[] = m[0].options;
    assert.equal(opts.slice(0, 3), [`workdir=${root}/snapshots/3/work`, `upperdir=${root}/snapshots/3/fs`, `lowerdir=${root}/snapshots/2/mnt`]);
    const extras = opts.filter((o) => o.startsWith('extraoption='));
    assert.is(extras.length, 1);
    const b64 = extras[0].slice('extraoption='.length);
    assert.match(b64, /^[A-Za-z0-9+/]+=*$/, 'standard base64 with padding');
    const raw = Buffer.from(b64, 'base64').toString();
    assert.equal(Object.keys(JSON.parse(raw)), ['source', 'config', 'snapshotdir', 'fs_version']);
    const x = JSON.parse(raw);
    assert.is(x.source, `${root}/snapshots/2/fs/image/image.boot`);
    assert.is(x.snapshotdir, `${root}/snapshots/3`);
    assert.is(x.fs_version, 'v6');
    const cfg = JSON.parse(x.config);
    assert.is(cfg.device.id, '/2');
    assert.equal(cfg.device.backend.config.host, 'localhost:5000');
    assert.equal(cfg.device.backend.config.repo, 'library/busybox');
    assert.is(Buffer.from(cfg.device.backend.config.auth, 'base64').toString(), 'u:p&w');
    assert.is(cfg.device.backend.config.unknown_key, undefined, 'unknown keys dropped (fixed schema)');
    assert.is(cfg.what, undefined);
    assert.is(cfg.device.cache.config.work_dir, `${root}/cache`);
    assert.is(cfg.fs_prefetch.prefetch_all, false, 'bools always written');
    assert.is(cfg.mode, 'direct');
    assert.ok(!raw.includes('&'), 'Go json.Marshal escapes & in strings');
    assert.equal((await r.call('Mounts', { key: 'default/9/ctr' })).mounts, m);
    // a view of the meta layer: read-only overlay over the RAFS mountpoint
    const v = (await r.call('View', { key: 'view1', parent: meta })).mounts;
    assert.is(v[0].options[0], `lowerdir=${root}/snapshots/2/mnt:${root}/snapshots/4/fs`);
  } finally {
    await r.close();
  }
});

test('container snapshot on a meta layer without an image ref fails and leaves nothing behind', async () => {
  const tpl = path.join(tmp, 'nydusd-config2.json');
  fs.writeFileSync(tpl, JSON.stringify({ device: { backend: { type: 'registry', config: {} } } }));
  const r = await rig(`daemon_mode = "none"\n[daemon]\nnydusd_config = "${tpl}"\n`);
  try {
    const meta = await pullNydus(r, '');
    const e = await r.call('Prepare', { key: 'ctr', parent: meta }).catch((x) => x);
    assert.is(e.code, S.FAILED_PRECONDITION);
    assert.match(e.details, /failed to find image ref/);
    assert.is(await code(r.call('Stat', { key: 'ctr' })), S.NOT_FOUND);
  } finally {
    await r.close();
  }
});

/**
 * A stand-in nydusd: records its argv (argv.log), serves GET /api/v1/daemon =
 * RUNNING on --apisock, and the shared-mode API: POST / DELETE
 * /api/v1/mount?mountpoint= (recorded in api.log with pid and body; kept in
 * memory) and GET /api/v1/metrics?id= (404 unless mounted).
 */
function fakeNydusd(dir: string): string {
  return writeFakeNydusd(dir, `fs.appendFileSync(${JSON.stringify(path.join(dir, 'argv.log'))}, JSON.stringify(a) + '\\n');
const mounted = new Set();
const rec = (o) => fs.appendFileSync(${JSON.stringify(path.join(dir, 'api.log'))}, JSON.stringify({ pid: process.pid, ...o }) + '\\n');
const srv = http.createServer((req, res) => {
  const u = new URL(req.url, 'http://unix');
  let body = '';
  req.on('data', (d) => { body += d; });
  req.on('end', () => {
    if (u.pathname === '/api/v1/daemon') { res.writeHead(200, {'content-type':'application/json'}); res.end(JSON.stringify({state: 'RUNNING', version: {}})); return; }
    if (u.pathname === '/api/v1/mount' && req.method === 'POST') {
      const mp = u.searchParams.get('mountpoint'); mounted.add(mp); rec({ op: 'mount', mp, body: JSON.parse(body) }); res.writeHead(204); res.end(); return;
    }
    if (u.pathname === '/api/v1/mount' && req.method === 'DELETE') {
      const mp = u.searchParams.get('mountpoint'); mounted.delete(mp); rec({ op: 'umount', mp }); res.writeHead(204); res.end(); return;
    }
    if (u.pathname === '/api/v1/metrics' && mounted.has(u.searchParams.get('id'))) { res.writeHead(200); res.end('{}'); return; }
    res.writeHead(404); res.end('{"code":"NotFound","message":"no"}');
  });
});`);
}

interface ApiLog { pid: number; op: string; mp: string; body?: Obj }
const apiLog = (dir: string): ApiLog[] => {
  try { return fs.readFileSync(path.join(dir, 'api.log'), 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as ApiLog); } catch { return []; }
};
const argvLog = (dir: string): string[][] => fs.readFileSync(path.join(dir, 'argv.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as string[]);
const pidAliveTest = (pid: number): boolean => { try { process.kill(pid, 0); return true; } catch { return false; } };
const wait = async (what: string, cond: () => boolean, ms = 8000): Promise<void> => {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((res) => setTimeout(res, 50));
  }
};

test('dedicated mode: nydusd started per image with upstream argv order, overlay lowerdir = RAFS mountpoint, torn down at Cleanup', async () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'fake-'));
  const nydusd = fakeNydusd(dir);
  const tpl = path.join(tmp, 'nydusd-config3.json');
  fs.writeFileSync(tpl, JSON.stringify({ device: { backend: { type: 'registry', config: {} }, cache: { type: 'blobcache' } }, mode: 'direct' }));
  const r = await rig(`[daemon]\nnydusd_path = "${nydusd}"\nnydusd_config = "${tpl}"\nthreads_number = 2\n[log]\nlevel = "warn"\n`);
  const root = r.cfg.root;
  try {
    const meta = await pullNydus(r, 'docker.io/library/busybox:latest');
    const [m1, m2] = await Promise.all([
      r.call('Prepare', { key: 'ctr1', parent: meta }),
      r.call('Prepare', { key: 'ctr2', parent: meta }),
    ]);
    assert.equal(m1.mounts[0], { type: 'overlay', source: 'overlay', target: '', options: [`workdir=${root}/snapshots/3/work`, `upperdir=${root}/snapshots/3/fs`, `lowerdir=${root}/snapshots/2/mnt`] });
    assert.is(m2.mounts[0].options[2], `lowerdir=${root}/snapshots/2/mnt`);
    const runs = fs.readFileSync(path.join(dir, 'argv.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as string[]);
    assert.is(runs.length, 1, 'one nydusd per image, shared by both containers');
    const d = r.sn.daemons.daemons()[0];
    assert.equal(runs[0], [
      'fuse', '--thread-num', '2',
      '--config', `${root}/config/${d.id}/config.json`,
      '--bootstrap', `${root}/snapshots/2/fs/image/image.boot`,
      '--mountpoint', `${root}/snapshots/2/mnt`,
      '--apisock', `${root}/socket/${d.id}/api.sock`,
      '--log-level', 'warn',
      '--log-rotation-size', '100',
      '--log-file', `${root}/logs/${d.id}/nydusd.log`,
      '--failover-policy', 'resend',
    ]);
    assert.match(d.id, /^[0-9a-v]{20}$/);
    const cfg = JSON.parse(fs.readFileSync(`${root}/config/${d.id}/config.json`, 'utf8'));
    assert.is(cfg.device.backend.config.host, 'index.docker.io');
    assert.is(cfg.device.backend.config.repo, 'library/busybox');
    assert.is(cfg.device.id, '/2');
    assert.ok(fs.existsSync(`${root}/cache/aaaa.blob.meta`), 'blob.meta copied into the cache dir');
    assert.is((fs.statSync(`${root}/config/${d.id}/config.json`).mode & 0o777), 0o600);
    // removing the containers keeps the daemon (it lives as long as the image)
    await r.call('Remove', { key: 'ctr1' });
    await r.call('Remove', { key: 'ctr2' });
    await r.call('Cleanup', {});
    assert.is(r.sn.daemons.daemons().length, 1);
    // removing the image (meta snapshot) and GC stops it
    await r.call('Remove', { key: meta });
    await r.call('Cleanup', {});
    assert.is(r.sn.daemons.daemons().length, 0);
    assert.not.ok(fs.existsSync(`${root}/socket/${d.id}`));
    assert.not.ok(fs.existsSync(`${root}/config/${d.id}`));
    let alive = true;
    try { process.kill(d.pid, 0); } catch { alive = false; }
    assert.not.ok(alive, 'nydusd got SIGTERM');
  } finally {
    await r.close();
  }
});

test('dedicated mode: restart re-adopts a RUNNING nydusd, and restarts a dead one with the same argv', async () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'fake-'));
  const nydusd = fakeNydusd(dir);
  const tpl = path.join(tmp, 'nydusd-config4.json');
  fs.writeFileSync(tpl, JSON.stringify({ device: { backend: { type: 'registry', config: {} } } }));
  const root = path.join(tmp, `recover${++seq}`);
  const toml = `[daemon]\nnydusd_path = "${nydusd}"\nnydusd_config = "${tpl}"\nrecover_policy = "restart"\n`;
  let r = await rig(toml, root);
  const meta = await pullNydus(r);
  await r.call('Prepare', { key: 'ctr', parent: meta });
  const d0 = r.sn.daemons.daemons()[0];
  await r.close(true);
  r = await rig(toml, root);
  try {
    await r.sn.daemons.recover();
    assert.is(fs.readFileSync(path.join(dir, 'argv.log'), 'utf8').trim().split('\n').length, 1, 'alive: adopted, not restarted');
    assert.ok((await r.call('Mounts', { key: 'ctr' })).mounts[0].options[2].endsWith('/snapshots/2/mnt'));
    process.kill(d0.pid, 'SIGKILL');
    for (let i = 0; i < 60 && r.sn.daemons.daemons()[0].pid === d0.pid; i++) await new Promise((res) => setTimeout(res, 100));
    const d1 = r.sn.daemons.daemons()[0];
    assert.is.not(d1.pid, d0.pid, 'restarted after death');
    const runs = fs.readFileSync(path.join(dir, 'argv.log'), 'utf8').trim().split('\n');
    assert.is(runs.length, 2);
    assert.is(runs[1], runs[0], 'same argv');
    await r.call('Remove', { key: 'ctr' });
    await r.call('Remove', { key: meta });
    await r.call('Cleanup', {});
    assert.is(r.sn.daemons.daemons().length, 0);
  } finally {
    await r.close();
  }
});

test('shared mode: one nydusd without --config/--bootstrap; images POSTed at /<id>, seen at <R>/mnt/<id>; DELETE at Cleanup; stopped with the last image', async () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'fake-'));
  const nydusd = fakeNydusd(dir);
  const tpl = path.join(tmp, 'nydusd-config-shared.json');
  fs.writeFileSync(tpl, JSON.stringify({ device: { backend: { type: 'registry', config: {} }, cache: { type: 'blobcache' } }, mode: 'direct' }));
  const r = await rig(`daemon_mode = "shared"\n[daemon]\nnydusd_path = "${nydusd}"\nnydusd_config = "${tpl}"\n[log]\nlevel = "warn"\n`);
  const root = r.cfg.root;
  try {
    const meta1 = await pullNydus(r, 'docker.io/library/busybox:latest');
    const id1 = r.sn.store.lookup(meta1)!.id;
    const [m1, m2] = await Promise.all([r.call('Prepare', { key: 'ctr1', parent: meta1 }), r.call('Prepare', { key: 'ctr2', parent: meta1 })]);
    assert.is(m1.mounts[0].options[2], `lowerdir=${root}/mnt/${id1}`);
    assert.is(m2.mounts[0].options[2], `lowerdir=${root}/mnt/${id1}`);
    const ds = r.sn.daemons.daemons();
    assert.is(ds.length, 1);
    const d = ds[0];
    assert.is(d.mode, 'shared');
    assert.equal(argvLog(dir), [[
      'fuse', '--mountpoint', `${root}/mnt`, '--apisock', `${root}/socket/${d.id}/api.sock`, '--log-level', 'warn',
      '--log-rotation-size', '100', '--log-file', `${root}/logs/${d.id}/nydusd.log`, '--failover-policy', 'resend',
    ]]);
    let log = apiLog(dir).filter((e) => e.op !== 'metrics');
    assert.is(log.length, 1, 'one API mount for two containers of one image');
    assert.is(log[0].mp, `/${id1}`);
    assert.equal(Object.keys(log[0].body!).sort(), ['config', 'fs_type', 'source']);
    assert.is(log[0].body!.source, `${root}/snapshots/${id1}/fs/image/image.boot`);
    assert.is(log[0].body!.fs_type, 'rafs');
    const cfg = JSON.parse(log[0].body!.config);
    assert.is(cfg.device.id, `/${id1}`);
    assert.is(cfg.device.backend.config.repo, 'library/busybox');
    assert.equal(JSON.parse(fs.readFileSync(`${root}/config/${d.id}/${id1}/config.json`, 'utf8')), cfg);
    // a second image: the same daemon, a second API mount
    const meta2 = await pullNydus(r, 'localhost:5000/other:v2', {}, { variant: 'b' });
    const id2 = r.sn.store.lookup(meta2)!.id;
    const m3 = await r.call('Prepare', { key: 'ctr3', parent: meta2 });
    assert.is(m3.mounts[0].options[2], `lowerdir=${root}/mnt/${id2}`);
    assert.is(argvLog(dir).length, 1, 'still one nydusd');
    assert.equal(apiLog(dir).map((e) => [e.op, e.mp]), [['mount', `/${id1}`], ['mount', `/${id2}`]]);
    // Mounts of an existing instance: no new POST
    await r.call('Mounts', { key: 'ctr3' });
    assert.is(apiLog(dir).length, 2);
    // image 1 gone + GC: its API mount is deleted, the daemon stays for image 2
    for (const k of ['ctr1', 'ctr2', meta1, 'sha256:' + '1'.repeat(64)]) await r.call('Remove', { key: k });
    await r.call('Cleanup', {});
    assert.equal(apiLog(dir).slice(2).map((e) => [e.op, e.mp]), [['umount', `/${id1}`]]);
    assert.not.ok(fs.existsSync(`${root}/config/${d.id}/${id1}`));
    assert.ok(pidAliveTest(d.pid));
    assert.is(r.sn.daemons.instance(id1), undefined);
    // the last image gone: DELETE, then the shared daemon is stopped and its dirs removed
    for (const k of ['ctr3', meta2, 'sha256:' + hex64('1', 'b')]) await r.call('Remove', { key: k });
    await r.call('Cleanup', {});
    assert.equal(apiLog(dir).slice(3).map((e) => [e.op, e.mp]), [['umount', `/${id2}`]]);
    assert.is(r.sn.daemons.daemons().length, 0);
    await wait('nydusd to exit', () => !pidAliveTest(d.pid));
    for (const p of [`${root}/socket/${d.id}`, `${root}/config/${d.id}`, `${root}/mnt`]) assert.not.ok(fs.existsSync(p), p);
  } finally {
    await r.close();
  }
});

test('shared mode recovery: a RUNNING daemon is re-adopted; after kill -9 (snapshotter up or down) it is restarted with the same argv and every image re-POSTed in order', async () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'fake-'));
  const nydusd = fakeNydusd(dir);
  const tpl = path.join(tmp, 'nydusd-config-shared2.json');
  fs.writeFileSync(tpl, JSON.stringify({ device: { backend: { type: 'registry', config: {} } } }));
  const root = path.join(tmp, `shrec${++seq}`);
  const toml = `daemon_mode = "shared"\n[daemon]\nnydusd_path = "${nydusd}"\nnydusd_config = "${tpl}"\nrecover_policy = "restart"\n`;
  let r = await rig(toml, root);
  const meta1 = await pullNydus(r);
  const meta2 = await pullNydus(r, 'localhost:5000/other:v2', {}, { variant: 'b' });
  const id1 = r.sn.store.lookup(meta1)!.id;
  const id2 = r.sn.store.lookup(meta2)!.id;
  await r.call('Prepare', { key: 'c1', parent: meta2 });
  await r.call('Prepare', { key: 'c2', parent: meta1 });
  const mountOrder = [`/${id2}`, `/${id1}`];
  assert.equal(apiLog(dir).map((e) => e.mp), mountOrder);
  const d0 = r.sn.daemons.daemons()[0];
  await r.close(true);
  r = await rig(toml, root);
  try {
    await r.sn.daemons.recover();
    assert.is(argvLog(dir).length, 1, 'alive: adopted, not restarted');
    assert.is(apiLog(dir).length, 2, 'its mounts are still there: nothing POSTed');
    // kill -9 while the snapshotter watches it (adopted: pid polling)
    process.kill(d0.pid, 'SIGKILL');
    await wait('restart', () => r.sn.daemons.daemons()[0]?.pid !== d0.pid && apiLog(dir).length === 4);
    const d1 = r.sn.daemons.daemons()[0];
    assert.is(d1.id, d0.id);
    assert.equal(argvLog(dir)[1], argvLog(dir)[0], 'same argv');
    assert.equal(apiLog(dir).slice(2).map((e) => [e.pid, e.op, e.mp]), mountOrder.map((mp) => [d1.pid, 'mount', mp]), 're-POSTed in first-mount order');
    assert.is((await r.call('Mounts', { key: 'c2' })).mounts[0].options[2], `lowerdir=${root}/mnt/${id1}`);
    // kill -9 while the snapshotter is down: recover() restarts and re-mounts
    await r.close(true);
    process.kill(d1.pid, 'SIGKILL');
    await wait('death', () => !pidAliveTest(d1.pid));
    r = await rig(toml, root);
    await r.sn.daemons.recover();
    const d2 = r.sn.daemons.daemons()[0];
    assert.is.not(d2.pid, d1.pid);
    assert.is(argvLog(dir).length, 3);
    assert.equal(apiLog(dir).slice(4).map((e) => [e.pid, e.mp]), mountOrder.map((mp) => [d2.pid, mp]));
    // a caller that finds the daemon dead before the poll notices waits for the one restart
    process.kill(d2.pid, 'SIGKILL');
    await wait('death', () => !pidAliveTest(d2.pid));
    await r.call('Prepare', { key: 'c3', parent: meta1 });
    assert.is(argvLog(dir).length, 4, 'exactly one restart');
    const d3 = r.sn.daemons.daemons()[0];
    assert.ok(apiLog(dir).filter((e) => e.pid === d3.pid && e.op === 'mount').length >= 2);
    for (const k of ['c1', 'c2', 'c3', meta1, meta2]) await r.call('Remove', { key: k });
    await r.call('Cleanup', {});
    assert.is(r.sn.daemons.daemons().length, 0);
  } finally {
    await r.close();
  }
});

test('shared mode with cleanup_on_close: closing the snapshotter unmounts every image and stops the shared nydusd', async () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'fake-'));
  const nydusd = fakeNydusd(dir);
  const tpl = path.join(tmp, 'nydusd-config-shared3.json');
  fs.writeFileSync(tpl, JSON.stringify({ device: { backend: { type: 'registry', config: {} } } }));
  const r = await rig(`daemon_mode = "shared"\ncleanup_on_close = true\n[daemon]\nnydusd_path = "${nydusd}"\nnydusd_config = "${tpl}"\n`);
  const meta = await pullNydus(r);
  const id = r.sn.store.lookup(meta)!.id;
  await r.call('Prepare', { key: 'c', parent: meta });
  const d = r.sn.daemons.daemons()[0];
  await r.close(true);
  assert.equal(apiLog(dir).map((e) => [e.op, e.mp]), [['mount', `/${id}`], ['umount', `/${id}`]]);
  await wait('nydusd to exit', () => !pidAliveTest(d.pid));
  const store = new MetaStore(path.join(r.cfg.root, 'metadata.db'));
  try {
    assert.is(store.daemons().length, 0);
    assert.is(store.instances().length, 0);
  } finally {
    store.close();
  }
});

test('liveness: a zombie nobody reaps and a pid whose command line lacks the API socket count as dead', async () => {
  // `sleep 0` exits at once and its parent (exec'd into `sleep 5`) never reaps it
  const p = spawn('sh', ['-c', 'sleep 0 & echo $!; exec sleep 5'], { stdio: ['ignore', 'pipe', 'ignore'] });
  try {
    const zombie = Number(await new Promise<string>((resolve) => p.stdout!.once('data', (d: Buffer) => resolve(d.toString().trim()))));
    await wait('zombie', () => { try { return /\) Z/.test(fs.readFileSync(`/proc/${zombie}/stat`, 'utf8')); } catch { return false; } }, 3000);
    assert.ok(pidAliveTest(zombie), 'kill(pid, 0) still succeeds on a zombie');
    assert.not.ok(pidAlive(zombie), 'but it is dead');
    assert.ok(pidAlive(p.pid!, 'sleep'));
    assert.not.ok(pidAlive(p.pid!, '/some/api.sock'), 'a reused pid is not our daemon');
    assert.not.ok(pidAlive(0));
  } finally {
    p.kill('SIGKILL');
  }
});

/** A RAFS v6 bootstrap whose blob table lists `blobIds` (one small layer each, merged). */
async function bootstrapWithBlobs(blobIds: string[]): Promise<Buffer> {
  await initDigest();
  const sbs = [];
  for (const [i, id] of blobIds.entries()) {
    const src = fs.mkdtempSync(path.join(tmp, 'src-'));
    fs.writeFileSync(path.join(src, `f${i}`), `layer ${i} ${id}\n`);
    const res = await createImage({
      source: src, type: 'dir-rafs', fsVersion: 6, compressor: Compressor.None, digester: DigestAlgorithm.Sha256,
      chunkSize: 0x10000, blobDir: fs.mkdtempSync(path.join(tmp, 'blobs-')), blobInlineMeta: false, blobToc: false,
      alignedChunk: false, repeatable: true, prefetchPatterns: [],
    });
    sbs.push(loadRafs(res.bootstrap));
  }
  const m = mergeLayers(sbs.map((sb, i) => ({ sb, blobIdOverride: blobIds[i] })), 'oci');
  const first = sbs[0].meta;
  return writeBootstrapV6(m.root, { chunkSize: first.chunkSize, compressor: first.compressor, digester: first.digester, explicitUidGid: first.explicitUidGid, blobs: m.blobs, prefetch: [], extraFlags: 0 });
}

test('blob cache GC: Cleanup deletes the cache files of blobs no remaining Nydus snapshot references, never a used one', async () => {
  const BASE = 'ba5e'.repeat(16);
  const ONLY1 = '0001'.repeat(16);
  const ONLY2 = '0002'.repeat(16);
  const ORPHAN = '0bad'.repeat(16);
  const r = await rig('daemon_mode = "none"\n');
  const cache = r.cfg.cacheManager.cacheDir;
  try {
    // image 1 = BASE + ONLY1 (bootstrap), image 2 = BASE + ONLY2; each data layer labelled with its digest
    const meta1 = await pullNydus(r, 'localhost:5000/a:1', {}, { bootstrap: await bootstrapWithBlobs([BASE, ONLY1]), layerDigest: ONLY1 });
    const meta2 = await pullNydus(r, 'localhost:5000/b:1', {}, { variant: 'b', bootstrap: await bootstrapWithBlobs([BASE, ONLY2]), layerDigest: ONLY2 });
    fs.mkdirSync(cache, { recursive: true });
    const files = (id: string): string[] => ['.blob.data', '.blob.data.chunk_map', '.chunk_map', '.blob.meta', '.blob.digest'].map((x) => id + x);
    for (const id of [BASE, ONLY1, ONLY2, ORPHAN]) for (const f of files(id)) fs.writeFileSync(path.join(cache, f), 'x');
    fs.writeFileSync(path.join(cache, 'unrelated.txt'), 'keep');
    fs.writeFileSync(path.join(cache, `${ORPHAN}.blob.data.tmp123`), 'keep: not a cache file name');
    const ls = (): string[] => fs.readdirSync(cache).sort();
    // nothing removed yet: only the orphan goes
    await r.call('Cleanup', {});
    assert.equal(ls(), [...files(BASE), ...files(ONLY1), ...files(ONLY2), `${ORPHAN}.blob.data.tmp123`, 'unrelated.txt'].sort());
    assert.is(r.sn.daemons.cacheGc.deletedTotal, 1);
    assert.is(r.sn.daemons.cacheGc.inUse, 3);
    // image 1 removed: ONLY1 goes, BASE (still used by image 2) stays
    await r.call('Remove', { key: meta1 });
    await r.call('Remove', { key: 'sha256:' + '1'.repeat(64) });
    await r.call('Cleanup', {});
    assert.equal(ls(), [...files(BASE), ...files(ONLY2), `${ORPHAN}.blob.data.tmp123`, 'unrelated.txt'].sort());
    // the meta layer of image 2 removed but its data layer not yet: ONLY2 is still protected by the layer label
    await r.call('Remove', { key: meta2 });
    await r.call('Cleanup', {});
    assert.equal(ls(), [...files(ONLY2), `${ORPHAN}.blob.data.tmp123`, 'unrelated.txt'].sort());
    await r.call('Remove', { key: 'sha256:' + hex64('1', 'b') });
    await r.call('Cleanup', {});
    assert.equal(ls(), [`${ORPHAN}.blob.data.tmp123`, 'unrelated.txt']);
    assert.is(r.sn.daemons.cacheGc.deletedTotal, 4);
    assert.is(r.sn.daemons.cacheGc.errorsTotal, 0);
  } finally {
    await r.close();
  }
});

test('blob cache GC: a committed meta snapshot whose bootstrap cannot be read skips the round (nothing deleted)', async () => {
  const r = await rig('daemon_mode = "none"\n');
  const cache = r.cfg.cacheManager.cacheDir;
  try {
    await pullNydus(r); // the stub bootstrap is not a loadable RAFS image
    fs.mkdirSync(cache, { recursive: true });
    fs.writeFileSync(path.join(cache, `${'0bad'.repeat(16)}.blob.data`), 'x');
    await r.call('Cleanup', {});
    assert.ok(fs.existsSync(path.join(cache, `${'0bad'.repeat(16)}.blob.data`)));
    assert.is(r.sn.daemons.cacheGc.deletedTotal, 0);
  } finally {
    await r.close();
  }
});

test('blob cache GC with sync_remove: removing the last Nydus layer deletes its cache files at once; [cache_manager] disable keeps them', async () => {
  const ID = 'a'.repeat(64);
  for (const disable of [false, true]) {
    const r = await rig(`daemon_mode = "none"\n[snapshot]\nsync_remove = true\n[cache_manager]\ndisable = ${disable}\n`);
    const cache = r.cfg.cacheManager.cacheDir;
    try {
      const meta = await pullNydus(r, 'localhost:5000/a:1', {}, { bootstrap: await bootstrapWithBlobs([ID]) });
      fs.mkdirSync(cache, { recursive: true });
      fs.writeFileSync(path.join(cache, `${ID}.blob.data`), 'x');
      await r.call('Remove', { key: meta });
      assert.ok(fs.existsSync(path.join(cache, `${ID}.blob.data`)), 'the data layer still references it');
      await r.call('Remove', { key: 'sha256:' + '1'.repeat(64) });
      assert.is(fs.existsSync(path.join(cache, `${ID}.blob.data`)), disable, disable ? 'GC disabled' : 'deleted at Remove');
    } finally {
      await r.close();
    }
  }
});

test.after(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

test.run();
