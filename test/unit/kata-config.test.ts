/**
 * kata-config/: every file parses (TOML with smol-toml, JSON, systemd units
 * line by line) and sets the keys Kata + containerd + nydus-snapshotter need
 * (kata-contract §1, §5.1, §6; rafs-spec §7).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { parseNydusdConfig } from '../../src/common/config';

const DIR = path.join(__dirname, '..', '..', 'kata-config');
type Obj = Record<string, any>;

const read = (f: string): string => fs.readFileSync(path.join(DIR, f), 'utf8');
// smol-toml builds null-prototype tables; round-trip for deep equality checks
const toml = (f: string): Obj => JSON.parse(JSON.stringify(parseToml(read(f)))) as Obj;

/** Minimal systemd unit parser: { Section: { Key: [values...] } }. */
function unit(f: string): Record<string, Record<string, string[]>> {
  const out: Record<string, Record<string, string[]>> = {};
  let sec = '';
  for (const raw of read(f).split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const m = /^\[(.+)\]$/.exec(line);
    if (m) { sec = m[1]; out[sec] ??= {}; continue; }
    const eq = line.indexOf('=');
    assert.ok(sec && eq > 0, `${f}: bad line '${line}'`);
    (out[sec][line.slice(0, eq)] ??= []).push(line.slice(eq + 1));
  }
  return out;
}

/** argv of an ExecStart= value (no quoting used in our units). */
const argv = (v: string): string[] => v.replace(/^[-@+!:]+/, '').split(/\s+/);
const flag = (args: string[], name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};

test('every file in kata-config is covered and parses', () => {
  const files = fs.readdirSync(DIR).sort();
  const known = [
    'README.md',
    'configuration-qemu-nydus.toml',
    'configuration-qemu-runtime-rs-nydus.toml',
    'containerd-config.toml',
    'containerd-config.v3.toml',
    'nydus-snapshotter-config.toml',
    'nydus-snapshotter.service',
    'nydusd-config.v1.json',
    'nydusd-config.v2.json',
    'nydusd-config.v2.toml',
    'nydusd.service',
  ];
  assert.equal(files, known.sort(), 'new files need a test here');
  for (const f of files) {
    if (f.endsWith('.toml')) toml(f);
    else if (f.endsWith('.json')) JSON.parse(read(f));
    else if (f.endsWith('.service')) unit(f);
  }
});

function checkKataCommon(q: Obj): void {
  assert.is(q.shared_fs, 'virtio-fs-nydus');
  assert.is(path.basename(q.virtio_fs_daemon), 'nydusd');
  assert.ok(path.isAbsolute(q.virtio_fs_daemon));
  assert.equal(q.valid_virtio_fs_daemon_paths, [q.virtio_fs_daemon]);
  assert.equal(q.virtio_fs_extra_args, []);
  assert.is(q.virtio_fs_cache_size, 0);
  assert.ok(['never', 'auto', 'always'].includes(q.virtio_fs_cache));
  assert.ok(q.virtio_fs_queue_size <= 1024);
}

test('Kata Go runtime fragment: [hypervisor.qemu] for virtio-fs-nydus', () => {
  const c = toml('configuration-qemu-nydus.toml');
  assert.equal(Object.keys(c), ['hypervisor']);
  checkKataCommon(c.hypervisor.qemu);
  assert.is(c.hypervisor.qemu.enable_debug, false);
});

test('Kata runtime-rs fragment: same keys, DAX off, qemu hypervisor selected', () => {
  const c = toml('configuration-qemu-runtime-rs-nydus.toml');
  checkKataCommon(c.hypervisor.qemu);
  assert.is(c.hypervisor.qemu.virtio_fs_is_dax, false);
  assert.is(c.runtime.hypervisor_name, 'qemu');
  assert.is(c.runtime.name, 'virt_container');
});

const SNAP_SOCK = '/run/containerd-nydus/containerd-nydus-grpc.sock';

test('containerd v2: proxy plugin, annotations on, kata runtime uses nydus', () => {
  const c = toml('containerd-config.toml');
  assert.is(c.version, 2);
  assert.equal(c.proxy_plugins.nydus, { type: 'snapshot', address: SNAP_SOCK });
  const cri = c.plugins['io.containerd.grpc.v1.cri'].containerd;
  assert.is(cri.disable_snapshot_annotations, false);
  assert.is(cri.discard_unpacked_layers, false);
  assert.is(cri.runtimes.kata.runtime_type, 'io.containerd.kata.v2');
  assert.is(cri.runtimes.kata.snapshotter, 'nydus');
  // the snapshotter name is the proxy plugin's key
  assert.ok(Object.keys(c.proxy_plugins).includes(cri.runtimes.kata.snapshotter));
});

test('containerd v3: same settings in the 2.x plugin layout', () => {
  const c = toml('containerd-config.v3.toml');
  assert.is(c.version, 3);
  assert.equal(c.proxy_plugins.nydus, { type: 'snapshot', address: SNAP_SOCK });
  const img = c.plugins['io.containerd.cri.v1.images'];
  assert.is(img.disable_snapshot_annotations, false);
  assert.is(img.discard_unpacked_layers, false);
  assert.is(img.runtime_platforms.kata.snapshotter, 'nydus');
  const rt = c.plugins['io.containerd.cri.v1.runtime'].containerd.runtimes.kata;
  assert.is(rt.runtime_type, 'io.containerd.kata.v2');
  assert.is(rt.snapshotter, 'nydus');
  assert.is(rt.sandboxer, 'podsandbox');
});

test('nydus-snapshotter config: version 1, socket matches containerd, fusedev + nydus-overlayfs', () => {
  const c = toml('nydus-snapshotter-config.toml');
  assert.is(c.version, 1);
  assert.is(c.address, SNAP_SOCK);
  assert.ok(Buffer.byteLength(c.root) <= 70);
  assert.is(c.daemon.fs_driver, 'fusedev');
  assert.is(path.basename(c.daemon.nydusd_path), 'nydusd');
  assert.is(path.basename(c.daemon.nydusimage_path), 'nydus-image');
  assert.is(c.snapshot.enable_nydus_overlayfs, true);
  assert.is(c.snapshot.enable_kata_volume, false);
  assert.is(c.snapshot.nydus_overlayfs_path, undefined, 'must stay unset for runtime-rs');
});

test('nydusd v2 JSON: localfs + blobcache, accepted by parseNydusdConfig', () => {
  const text = read('nydusd-config.v2.json');
  assert.is(JSON.parse(text).version, 2);
  const c = parseNydusdConfig(text);
  assert.is(c.backend.type, 'localfs');
  assert.is(c.backend.localfs?.dir, '/var/lib/nydus/blobs');
  assert.is(c.cache.type, 'blobcache');
  assert.is(c.cache.filecache?.work_dir, '/var/lib/nydus/cache');
  assert.is(c.rafs?.mode, 'direct');
  assert.is(c.rafs?.enable_xattr, true);
  assert.is(c.rafs?.prefetch.enable, true);
});

test('nydusd v2 TOML: registry + blobcache, accepted by parseNydusdConfig', () => {
  const text = read('nydusd-config.v2.toml');
  assert.is((parseToml(text) as Obj).version, 2);
  const c = parseNydusdConfig(text);
  assert.is(c.backend.type, 'registry');
  assert.is(c.backend.registry?.scheme, 'https');
  assert.is(c.backend.registry?.host, 'registry.example.com');
  assert.is(c.backend.registry?.repo, 'library/busybox');
  assert.is(c.cache.type, 'blobcache');
  assert.is(c.cache.filecache?.work_dir, '/var/lib/nydus/cache');
  assert.is(c.rafs?.mode, 'direct');
});

test('nydusd v1 JSON (snapshotter template): converts to v2', () => {
  const text = read('nydusd-config.v1.json');
  const raw = JSON.parse(text);
  assert.is(raw.version, undefined);
  assert.is(raw.mode, 'direct');
  const c = parseNydusdConfig(text);
  assert.is(c.version, 2);
  assert.is(c.backend.type, 'registry');
  assert.is(c.backend.registry?.host, 'registry.example.com');
  assert.is(c.cache.type, 'blobcache');
  assert.is(c.cache.filecache?.work_dir, '/var/lib/nydus/cache');
  assert.is(c.rafs?.enable_xattr, true);
  assert.is(c.rafs?.prefetch.threads, 4);
});

test('nydus-snapshotter.service: containerd-nydus-grpc with config paths, before containerd', () => {
  const u = unit('nydus-snapshotter.service');
  assert.equal(u.Service.ExecStart.length, 1);
  const a = argv(u.Service.ExecStart[0]);
  assert.is(path.basename(a[0]), 'containerd-nydus-grpc');
  assert.is(flag(a, '--config'), '/etc/nydus/config.toml');
  assert.is(flag(a, '--nydusd-config'), '/etc/nydus/nydusd-config.json');
  assert.ok(u.Unit.Before.includes('containerd.service'));
  assert.is(u.Service.KillMode[0], 'process');
  assert.ok(u.Install.WantedBy.length > 0);
});

test('nydusd.service: FUSE mode with config, mountpoint, bootstrap, apisock', () => {
  const u = unit('nydusd.service');
  const a = argv(u.Service.ExecStart[0]);
  assert.is(path.basename(a[0]), 'nydusd');
  assert.not.ok(a.includes('virtiofs'), 'FUSE mode has no subcommand');
  const cfg = flag(a, '--config');
  assert.ok(cfg && path.isAbsolute(cfg));
  assert.ok(flag(a, '--mountpoint'));
  assert.ok(flag(a, '--bootstrap'));
  const sock = flag(a, '--apisock');
  assert.ok(sock);
  // the documented config exists in this directory and parses
  parseNydusdConfig(read(path.basename(cfg!)));
  const stop = argv(u.Service.ExecStop[0]);
  assert.is(path.basename(stop[0]), 'nydusctl');
  assert.is(flag(stop, '--sock'), sock);
  assert.is(stop[stop.length - 1], 'exit');
});

test('README documents every file and the nydusctl check', () => {
  const md = read('README.md');
  for (const f of fs.readdirSync(DIR)) if (f !== 'README.md') assert.ok(md.includes(f), `README misses ${f}`);
  assert.ok(/nydusctl --sock \S+ info/.test(md));
});

test.run();
