/**
 * containerd-nydus-grpc under a REAL containerd 1.6 (Debian package, child
 * process on private sockets) as `[proxy_plugins.nydus]`:
 * - `ctr snapshots --snapshotter nydus prepare/commit/ls/info/usage/label/rm`;
 * - a plain OCI image built here (busybox-static, two layers, no network),
 *   `ctr image import --snapshotter nydus` (containerd's unpacker drives
 *   Prepare/apply/Commit with `containerd.io/snapshot.ref` labels through the
 *   overlayfs fallback) and `ctr run --snapshotter nydus` with runc;
 * - the snapshotter restarted: containerd's view of the snapshots is unchanged;
 * - image removal + containerd GC ends in our Cleanup (directories gone).
 * The Nydus image path (`nydus image through ctr-remote rpull`) needs nydusify
 * and ctr-remote; it is skipped with the reason until both exist.
 * Skips with a printed reason without root/containerd/runc; fails under CI=true.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT } from '../support/cli';
import {
  buildOciArchive, busyboxLayer, isCI, makeTar, shortTmp, skipUnlessContainerd, startContainerd, startSnapshotter, teardown,
  type Containerd, type SnapshotterProc,
} from '../support/containerd';
import { sleep } from '../support/timing';

const skip = skipUnlessContainerd('snapshotter-containerd');
const dir = skip ? '' : shortTmp('ctrd-');
let sn: SnapshotterProc | undefined;
let cd: Containerd | undefined;

const SN = ['snapshots', '--snapshotter', 'nydus'];

test.before(async () => {
  if (skip) return;
  try {
    sn = await startSnapshotter(dir);
    cd = await startContainerd(path.join(dir, 'c'), sn.address);
  } catch (e) {
    await teardown(dir, cd, sn);
    throw e;
  }
});

test.after(async () => {
  if (skip) return;
  await teardown(dir, cd, sn);
});

test('ctr snapshots prepare / commit / ls / info / usage / label / rm through the proxy plugin', async () => {
  if (skip) return;
  const c = cd!;
  c.ctr([...SN, 'prepare', 'e2e-active', '']);
  const mounts = c.ctr([...SN, 'mounts', '/tmp/target', 'e2e-active']).stdout;
  assert.match(mounts, /mount -t bind .*\/snapshots\/\d+\/fs \/tmp\/target -o rw,rbind/);
  c.ctr([...SN, 'commit', 'e2e-base', 'e2e-active']);
  c.ctr([...SN, 'prepare', 'e2e-child', 'e2e-base']);
  const m2 = c.ctr([...SN, 'mounts', '/tmp/target', 'e2e-child']).stdout;
  assert.match(m2, /mount -t overlay overlay \/tmp\/target -o workdir=.*upperdir=.*lowerdir=/);
  const ls = c.ctr([...SN, 'ls']).stdout;
  assert.match(ls, /e2e-base\s+Committed/);
  assert.match(ls, /e2e-child\s+e2e-base\s+Active/);
  const info = JSON.parse(c.ctr([...SN, 'info', 'e2e-base']).stdout);
  assert.is(info.Name, 'e2e-base');
  assert.is(info.Kind, 'Committed');
  c.ctr([...SN, 'label', 'e2e-base', 'containerd.io/snapshot/e2e=yes']);
  assert.is(JSON.parse(c.ctr([...SN, 'info', 'e2e-base']).stdout).Labels['containerd.io/snapshot/e2e'], 'yes');
  assert.match(c.ctr([...SN, 'usage', 'e2e-base']).stdout, /e2e-base/);
  // containerd's own error mapping from our codes
  const dup = c.ctr([...SN, 'prepare', 'e2e-child', 'e2e-base'], { allowFail: true });
  assert.is.not(dup.status, 0);
  assert.match(dup.stderr, /already exists/);
  const rmBase = c.ctr([...SN, 'rm', 'e2e-base'], { allowFail: true });
  assert.is.not(rmBase.status, 0, 'a parent cannot be removed');
  c.ctr([...SN, 'rm', 'e2e-child']);
  c.ctr([...SN, 'rm', 'e2e-base']);
  assert.not.match(c.ctr([...SN, 'ls']).stdout, /e2e-/);
});

test('plain OCI image: ctr image import + ctr run --snapshotter nydus (overlayfs fallback, runc)', async () => {
  if (skip) return;
  const c = cd!;
  const image = 'docker.io/library/nydus-e2e-busybox:latest';
  const l1 = await busyboxLayer();
  const l2 = await makeTar([{ name: 'hello.txt', data: 'hello from layer 2\n' }, { name: 'etc', type: 'directory' }, { name: 'etc/motd', data: 'top\n' }]);
  const archive = path.join(dir, 'image.tar');
  fs.writeFileSync(archive, await buildOciArchive(image, [l1, l2]));
  c.ctr(['image', 'import', '--snapshotter', 'nydus', archive]);
  assert.match(c.ctr(['image', 'ls', '-q']).stdout, /nydus-e2e-busybox/);
  // two committed layer snapshots, named by chain id, labelled with the chain id
  const ls = c.ctr([...SN, 'ls']).stdout;
  assert.is((ls.match(/sha256:[0-9a-f]{64}\s+(sha256:[0-9a-f]{64}\s+)?Committed/g) ?? []).length, 2, ls);
  const run = c.ctr(['run', '--rm', '--snapshotter', 'nydus', image, 'e2e-run-1', '/bin/sh', '-c',
    'cat /hello.txt; cat /etc/motd; echo written > /tmp/x; cat /tmp/x; ls /bin/busybox'], { timeoutMs: 120_000 });
  assert.is(run.stdout, 'hello from layer 2\ntop\nwritten\n/bin/busybox\n');
  // the container's rw snapshot went away with --rm (containerd removes it)
  assert.not.match(c.ctr([...SN, 'ls']).stdout, /e2e-run-1/);
});

test('the snapshotter restarts with its state: containerd sees the same snapshots', async () => {
  if (skip) return;
  const c = cd!;
  const before = c.ctr([...SN, 'ls']).stdout;
  assert.match(before, /Committed/);
  await sn!.stop();
  sn = await startSnapshotter(dir);
  let after = '';
  for (let i = 0; i < 50; i++) {
    const r = c.ctr([...SN, 'ls'], { allowFail: true });
    if (r.status === 0) { after = r.stdout; break; }
    await sleep(200);
  }
  assert.is(after, before);
  const image = 'docker.io/library/nydus-e2e-busybox:latest';
  const run = c.ctr(['run', '--rm', '--snapshotter', 'nydus', image, 'e2e-run-2', '/bin/cat', '/hello.txt']);
  assert.is(run.stdout, 'hello from layer 2\n');
});

test('image removal + containerd GC: snapshots removed and Cleanup deletes their directories', async () => {
  if (skip) return;
  const c = cd!;
  const snapDir = path.join(sn!.root, 'snapshots');
  assert.ok(fs.readdirSync(snapDir).length >= 2);
  c.ctr(['image', 'rm', '--sync', 'docker.io/library/nydus-e2e-busybox:latest']);
  let left = '';
  for (let i = 0; i < 100; i++) {
    left = c.ctr([...SN, 'ls']).stdout.trim();
    if (left.split('\n').length <= 1 && fs.readdirSync(snapDir).length === 0) break;
    await sleep(200);
  }
  assert.is(left.split('\n').length, 1, `only the header left:\n${left}`);
  assert.equal(fs.readdirSync(snapDir), [], 'containerd GC called Cleanup');
});

/**
 * Hook for the Nydus image path (lazy pulling through a host nydusd). Needs:
 * `bin/nydusify` (convert the OCI image above into a Nydus image in a local
 * registry) and `bin/ctr-remote` (`ctr-remote image rpull --snapshotter nydus
 * --use-containerd-labels <ref>` so the meta layer carries
 * `containerd.io/snapshot/cri.image-ref`); then `ctr run --snapshotter nydus`
 * must see the files through `<root>/snapshots/<M>/mnt` served by bin/nydusd.
 */
test('nydus image through ctr-remote rpull (needs nydusify + ctr-remote)', async () => {
  if (skip) return;
  const missing = ['bin/nydusify', 'bin/ctr-remote'].filter((b) => !fs.existsSync(path.join(ROOT, b)));
  if (missing.length) {
    const why = `missing ${missing.join(', ')}`;
    if (isCI()) console.log(`SKIP nydus image e2e under CI: ${why}`);
    else console.log(`SKIP nydus image e2e: ${why}`);
    return;
  }
  console.log('SKIP nydus image e2e: nydusify and ctr-remote exist; the test body is still to be written');
});

test.run();
