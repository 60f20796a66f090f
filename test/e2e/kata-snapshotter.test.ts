/**
 * The Kata path end to end (`shared_fs = "virtio-fs-nydus"`, kata-contract.md §3):
 *
 *  1. A three-layer OCI image (modify, whiteout, opaque dir, symlink, and a big
 *     incompressible file alone in layer 3) is pushed to a local docker-registry,
 *     converted by bin/nydusify and pulled by bin/ctr-remote rpull into a real
 *     containerd 1.6 whose `nydus` proxy snapshotter is bin/containerd-nydus-grpc
 *     in Kata mode (`[snapshot] enable_nydus_overlayfs = true`, dedicated fusedev
 *     daemon). `ctr snapshots prepare --mounts` on the meta layer returns ONE
 *     mount: type `fuse.nydus-overlayfs` (both runtimes' detection rules), source
 *     `overlay`, work/upper of the new snapshot, lowerdir the host RAFS mount, and
 *     an `extraoption` that decodes as Kata does (standard base64, one option,
 *     JSON {source, config, snapshotdir, fs_version}): the bootstrap exists and
 *     is the fs_version it claims, the nydusd config names the test registry
 *     (htpasswd), the image's repository and the credentials the snapshotter
 *     found in the docker config, `device.id` the meta snapshot.
 *  2. containerd's own host mount of that rootfs: `mount.fuse overlay <target>
 *     -o … -t fuse.nydus-overlayfs` (bin/ on PATH) gives the overlay with the
 *     snapshot's upper/work and the returned lowerdir, and the merged view is
 *     the image's (layer-3 data left unread); so is CRI's read-only temp mount
 *     (the same options plus `ro`).
 *  3. The Kata runtime's part: the Go runtime's host share (mounts/ bound read-only
 *     with slave propagation onto shared/, the snapshot dir bound into it, marked
 *     slave, remounted read-only); `nydusd virtiofs` with the Go runtime's argv;
 *     passthrough of shared/ at /containers; QEMU boots; while it runs,
 *     `POST /api/v1/mount?mountpoint=/rafs/<cid>/lowerdir` with the source and
 *     config taken from the extraoption; the guest mounts virtio-fs and builds
 *     the agent's overlay (lowerdir the RAFS mount, upper/work the snapshot dir
 *     through the share, index=off). The guest's listing (sha256 of every file)
 *     equals the image's merged view, deleted files are absent, the layer-3 blob
 *     is fetched from the (htpasswd) registry by the Kata nydusd with the
 *     credentials the snapshotter put into the config (all of big.bin), the
 *     layers 1-2 the host nydusd already read come from the shared blob cache
 *     (no new GET), the container's writes (new file, copy-up, whiteout) land in the snapshot's
 *     upper dir on the host. A second container of the same image (same pod,
 *     its own snapshot, the same source and config in its extraoption) is
 *     mounted once the first runs in the guest (which has already looked the
 *     path up: no negative dentry may stick), the runtime-rs way
 *     (percent-encoded query), and sees the image,
 *     not the first container's writes. Then Kata's teardown (DELETE → 204,
 *     Go and runtime-rs forms; the share's binds undone).
 * Skips with a printed reason without root, containerd, the registry, FUSE,
 * mount.fuse, QEMU or a guest kernel; under CI=true a missing prerequisite fails.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { ROOT, hasCommand } from '../support/cli';
import { api, waitForState } from '../support/api';
import {
  containerdMissing, isCI, makeTar, ociImage, shortTmp, startContainerd, startSnapshotter, teardown, type Containerd, type SnapshotterProc,
} from '../support/containerd';
import {
  BIG, DELETED, KATA_LAYERS, KataShare, decodeExtraOption, expectedTree, isKataNydusType, listTree, mountInfo, mountLikeContainerd,
  optionMap, parseCtrMounts, type CtrMount,
} from '../support/kata-path';
import { fuseMissing } from '../support/nydusd';
import { bootGuest, guestScriptHelpers as H, hostTree, parseGuestTree, prepareGuest, startDaemonProcess, unixSocketListening, type RunningDaemon } from '../support/qemu';
import { blobGets, registryMissing, startRegistry, type Registry } from '../support/registry';
import { sleep } from '../support/timing';
import { detectFsVersion } from '../../src/snapshotter/daemon';
import { RegistryClient } from '../../src/remote/client';
import type { Descriptor } from '../../src/remote/media-types';
import { parseReference } from '../../src/remote/reference';

const NAME = 'kata-snapshotter';

async function missing(): Promise<string | undefined> {
  const c = containerdMissing();
  if (c) return c;
  const built = ['dist/bin/nydusify.js', 'dist/bin/ctr-remote.js', 'dist/bin/nydus-overlayfs.js', 'dist/bin/nydusd.js'].filter((f) => !fs.existsSync(path.join(ROOT, f)));
  if (built.length) return `not built: ${built.join(', ')} (npx tsc -p .)`;
  const r = registryMissing() ?? fuseMissing();
  if (r) return r;
  if (!hasCommand('mount.fuse')) return 'no mount.fuse (Debian package fuse3)';
  const g = await prepareGuest();
  return 'skip' in g ? g.skip : undefined;
}

function putManifest(url: string, body: Buffer, auth: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const headers = { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'content-length': String(body.length), authorization: `Basic ${auth}` };
    const r = http.request(url, { method: 'PUT', headers }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 201 ? resolve() : reject(new Error(`PUT ${url}: HTTP ${res.statusCode}`))));
    });
    r.on('error', reject);
    r.end(body);
  });
}

/** The committed snapshot no other snapshot has as parent (the top of the only image). */
function topCommitted(lsOut: string): string {
  const rows = lsOut.split('\n').slice(1).map((l) => l.trim().split(/\s+/)).filter((f) => f.length >= 2);
  const committed = rows.filter((f) => f[f.length - 1] === 'Committed').map((f) => f[0]);
  const parents = new Set(rows.filter((f) => f.length === 3).map((f) => f[1]));
  const tops = committed.filter((k) => !parents.has(k));
  if (tops.length !== 1) throw new Error(`expected one top committed snapshot:\n${lsOut}`);
  return tops[0];
}

test('Kata path: snapshotter fuse.nydus-overlayfs mount → host mount.fuse overlay → nydusd virtiofs RAFS via API → guest overlay', async () => {
  const why = await missing();
  if (why) {
    if (isCI()) assert.unreachable(`${NAME} cannot run under CI: ${why}`);
    console.log(`SKIP ${NAME}: ${why}`);
    return;
  }
  const dir = shortTmp('kata-');
  let sn: SnapshotterProc | undefined;
  let cd: Containerd | undefined;
  let reg: Registry | undefined;
  let kd: RunningDaemon | undefined;
  // a private registry: nydusify, ctr-remote and the snapshotter find the credentials in the docker config
  const savedDockerConfig = process.env.DOCKER_CONFIG;
  try {
    // ------------------------------------------------------------ image: push, convert
    reg = await startRegistry({ user: 'kata', pass: 'pod-secret' });
    const auth = reg.auth!;
    const dockerConfig = path.join(dir, 'docker');
    fs.mkdirSync(dockerConfig);
    fs.writeFileSync(path.join(dockerConfig, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth } } }));
    process.env.DOCKER_CONFIG = dockerConfig;
    const repo = 'e2e/kata';
    const img = ociImage(await Promise.all(KATA_LAYERS.map((l) => makeTar(l))));
    for (const b of img.blobs.values()) await reg.pushBlob(repo, b);
    await putManifest(`http://${reg.host}/v2/${repo}/manifests/latest`, img.manifest, auth);
    const target = `${reg.host}/${repo}:nydus`;
    const conv = spawnSync(path.join(ROOT, 'bin/nydusify'), ['convert', '--source', `${reg.host}/${repo}:latest`, '--target', target, '--plain-http', '--work-dir', path.join(dir, 'nydusify-work')], { encoding: 'utf8', timeout: 180_000 });
    assert.is(conv.status, 0, `nydusify convert: ${conv.stderr}${conv.stdout}`);
    const rc = new RegistryClient({ plainHttp: true });
    const nydusLayers = ((await rc.fetchManifest(parseReference(target))).json as { layers: Descriptor[] }).layers;
    await rc.close();
    const dataBlobs = nydusLayers.filter((l) => l.annotations?.['containerd.io/snapshot/nydus-blob'] === 'true');
    assert.is(dataBlobs.length, 3, 'one data blob per source layer');
    const layer3Blob = dataBlobs[2].digest.slice('sha256:'.length);

    // ------------------------------------------------------------ snapshotter (Kata mode) + containerd, rpull
    const tpl = path.join(dir, 'nydusd-config.json');
    fs.writeFileSync(tpl, JSON.stringify({
      device: { backend: { type: 'registry', config: { scheme: 'http', timeout: 10, connect_timeout: 5 } }, cache: { type: 'blobcache', config: {} } },
      mode: 'direct', digest_validate: false, enable_xattr: true, fs_prefetch: { enable: false },
    }));
    sn = await startSnapshotter(dir, `[daemon]\nnydusd_config = "${tpl}"\n[snapshot]\nenable_nydus_overlayfs = true\n`);
    cd = await startContainerd(path.join(dir, 'c'), sn.address);
    const c = cd;
    const pull = spawnSync(path.join(ROOT, 'bin/ctr-remote'), ['-a', c.address, '-n', c.namespace, 'image', 'rpull', '--plain-http', '--snapshotter', 'nydus', target], { encoding: 'utf8', timeout: 180_000 });
    assert.is(pull.status, 0, `ctr-remote rpull: ${pull.stderr}${pull.stdout}\n${sn.log().slice(-3000)}`);
    const SN = ['snapshots', '--snapshotter', 'nydus'];
    const meta = topCommitted(c.ctr([...SN, 'ls']).stdout);

    // ------------------------------------------------------------ 1. the Mounts reply
    const key = `kata-ctr-${randomBytes(4).toString('hex')}`;
    const prep = c.ctr([...SN, 'prepare', '--mounts', key, meta], { allowFail: true, timeoutMs: 120_000 });
    assert.is(prep.status, 0, `ctr snapshots prepare: ${prep.stderr}\n${sn.log().slice(-4000)}`);
    const mounts = parseCtrMounts(prep.stdout);
    assert.is(mounts.length, 1, `one rootfs mount: ${prep.stdout}`);
    const m: CtrMount = mounts[0];
    assert.is(m.Type, 'fuse.nydus-overlayfs');
    assert.equal(isKataNydusType(m.Type), { go: true, rust: true });
    assert.is(m.Source, 'overlay');
    const viaMounts = c.ctr([...SN, 'mounts', '/kata-target', key]).stdout.trim();
    assert.is(viaMounts, `mount -t fuse.nydus-overlayfs overlay /kata-target -o ${m.Options.join(',')}`, 'Mounts answers as Prepare did');
    const extra = decodeExtraOption(m.Options);
    const opts = optionMap(m.Options.filter((o) => !o.startsWith('extraoption=')));
    const snapRoot = path.join(sn.root, 'snapshots');
    // snapshot dirs: S = the container's, M = the meta layer's
    assert.is(path.dirname(extra.snapshotdir), snapRoot, extra.snapshotdir);
    assert.is(opts.get('upperdir'), path.join(extra.snapshotdir, 'fs'));
    assert.is(opts.get('workdir'), path.join(extra.snapshotdir, 'work'));
    assert.ok(fs.statSync(path.join(extra.snapshotdir, 'fs')).isDirectory() && fs.statSync(path.join(extra.snapshotdir, 'work')).isDirectory());
    const lowerdir = opts.get('lowerdir')!;
    const metaDir = path.dirname(lowerdir);
    assert.is(path.dirname(metaDir), snapRoot);
    assert.is(lowerdir, path.join(metaDir, 'mnt'));
    const M = path.basename(metaDir);
    assert.equal([...opts.keys()].sort(), ['lowerdir', 'upperdir', 'workdir'], m.Options.join(','));
    assert.is(extra.source, path.join(metaDir, 'fs/image/image.boot'));
    assert.ok(fs.statSync(extra.source).isFile(), 'the bootstrap exists');
    assert.is(detectFsVersion(extra.source), extra.fs_version, 'fs_version is what the bootstrap is');
    const cfg = JSON.parse(extra.config) as {
      device: { id: string; backend: { type: string; config: Record<string, unknown> }; cache: { type: string; config: { work_dir: string } } };
    };
    assert.is(cfg.device.backend.type, 'registry');
    assert.is(cfg.device.backend.config.host, reg.host);
    assert.is(cfg.device.backend.config.repo, repo);
    assert.is(cfg.device.backend.config.scheme, 'http');
    assert.is(cfg.device.backend.config.auth, auth, 'the registry credentials travel in the config');
    assert.is(cfg.device.id, `/${M}`);
    assert.is(cfg.device.cache.config.work_dir, path.join(sn.root, 'cache'));
    // a second container of the same image (same pod): its own snapshot dir, the same RAFS source and config
    const key2 = `${key}-2`;
    const prep2 = c.ctr([...SN, 'prepare', '--mounts', key2, meta], { allowFail: true, timeoutMs: 120_000 });
    assert.is(prep2.status, 0, `ctr snapshots prepare (2): ${prep2.stderr}`);
    const extra2 = decodeExtraOption(parseCtrMounts(prep2.stdout)[0].Options);
    assert.is.not(extra2.snapshotdir, extra.snapshotdir);
    assert.is(extra2.source, extra.source);
    assert.is(extra2.config, extra.config, 'one RAFS config per image');
    // the host view (fs_driver fusedev): the dedicated nydusd serves the lowerdir
    assert.match(mountInfo(lowerdir)?.fstype ?? '', /^fuse/, 'lowerdir is the host RAFS mount');

    // ------------------------------------------------------------ 2. containerd's host mount through mount.fuse
    const expected = path.join(dir, 'expected');
    expectedTree(expected);
    const lazy = new Set(['./data/big.bin', './data/small.txt']);
    const hostTarget = path.join(dir, 'host-rootfs');
    fs.mkdirSync(hostTarget);
    const hm = mountLikeContainerd(m, hostTarget);
    assert.is(hm.status, 0, `mount.fuse: ${hm.stderr}`);
    try {
      const mi = mountInfo(hostTarget);
      assert.ok(mi, 'mounted');
      assert.is(mi!.fstype, 'overlay');
      for (const o of [`lowerdir=${lowerdir}`, `upperdir=${extra.snapshotdir}/fs`, `workdir=${extra.snapshotdir}/work`]) assert.ok(mi!.superOpts.includes(o), `${o} in ${mi!.superOpts.join(',')}`);
      assert.not.ok(mi!.superOpts.some((o) => o.startsWith('extraoption')), 'extraoption never reaches the kernel');
      assert.equal(listTree(hostTarget, lazy), listTree(expected, lazy), 'host overlay = the image (layer-3 data unread)');
      for (const p of DELETED) assert.not.ok(fs.existsSync(path.join(hostTarget, p)), `${p} deleted`);
    } finally {
      spawnSync('umount', [hostTarget]);
    }
    assert.is(mountInfo(hostTarget), undefined);
    // CRI's read-only temp mount (WithAdditionalGIDs / WithUser: containerd's readonlyMounts appends `ro` to non-overlay types)
    const ro = mountLikeContainerd({ ...m, Options: [...m.Options.filter((o) => o !== 'rw' && o !== 'ro'), 'ro'] }, hostTarget);
    assert.is(ro.status, 0, `mount.fuse (ro): ${ro.stderr}`);
    try {
      assert.ok(mountInfo(hostTarget)!.mountOpts.includes('ro'), 'read-only overlay');
      assert.is(fs.readFileSync(path.join(hostTarget, 'etc/os-release'), 'utf8'), 'ID=kata-e2e\nVERSION_ID=2\n');
      assert.throws(() => fs.writeFileSync(path.join(hostTarget, 'app/x'), 'x'), /EROFS/);
    } finally {
      spawnSync('umount', [hostTarget]);
    }
    assert.is(mountInfo(hostTarget), undefined);
    assert.equal(fs.readdirSync(path.join(extra.snapshotdir, 'fs')), [], 'nothing written to the upper dir on the host');
    const l3Before = blobGets(reg.log(), layer3Blob).length;
    const gets12 = (): number[] => dataBlobs.slice(0, 2).map((d) => blobGets(reg!.log(), d.digest.slice(7)).length);
    const l12Before = gets12();

    // ------------------------------------------------------------ 3. the Kata runtime: share, nydusd virtiofs, QEMU
    const cid = randomBytes(32).toString('hex');
    const cid2 = randomBytes(32).toString('hex');
    const share = new KataShare(path.join(dir, 'sb'));
    share.setup();
    share.addContainer(cid, extra.snapshotdir);
    share.addContainer(cid2, extra2.snapshotdir);
    const propagated = mountInfo(path.join(share.shared, cid, 'snapshotdir'));
    assert.ok(propagated, 'the snapshotdir bind propagated into shared/');
    assert.ok(propagated!.mountOpts.includes('rw'), `propagated copy stays rw: ${propagated!.mountOpts.join(',')}`);
    assert.ok(mountInfo(path.join(share.mounts, cid, 'snapshotdir'))!.mountOpts.includes('ro'));
    assert.ok(mountInfo(share.shared)!.mountOpts.includes('ro'), 'shared/ is read-only');

    const vhost = path.join(dir, 'vhost-fs.sock');
    const apisock = path.join(dir, 'nydusd-api.sock');
    kd = await startDaemonProcess(path.join(ROOT, 'bin/nydusd'), ['virtiofs', '--log-level', 'info', '--apisock', apisock, '--sock', vhost], vhost, 30_000);
    await waitForState(apisock);
    assert.ok(unixSocketListening(vhost));
    let r = await api(apisock, 'POST', '/api/v1/mount?mountpoint=/containers', { fs_type: 'passthrough_fs', source: share.shared, config: '' });
    assert.is(r.status, 204, r.body);

    const S = '/run/kata-containers/shared';
    const C = `${S}/containers`;
    const R = `${S}/rafs/${cid}/lowerdir`;
    const ROOTFS = `${C}/${cid}/rootfs`;
    const SD = `${C}/${cid}/snapshotdir`;
    const R2 = `${S}/rafs/${cid2}/lowerdir`;
    const ROOTFS2 = `${C}/${cid2}/rootfs`;
    const SD2 = `${C}/${cid2}/snapshotdir`;
    const guest = bootGuest({
      socket: vhost, tag: 'kataShared', timeoutMs: 180_000, extraModules: ['overlay'],
      script: `${H.prelude}
set -e
${H.mountVirtiofs('kataShared', S)}
n=0; until [ -e ${R}/etc/os-release ]; do n=$((n+1)); [ $n -lt 900 ] || { echo "rafs never appeared"; exit 3; }; sleep 0.1; done
mount -t overlay overlay -o upperdir=${SD}/fs,workdir=${SD}/work,lowerdir=${R},index=off ${ROOTFS}
${H.tree(ROOTFS, 'merged')}
for p in ${DELETED.join(' ')}; do if [ -e ${ROOTFS}/$p ]; then echo "PRESENT $p"; else echo "ABSENT $p"; fi; done
echo "tool: $(sh ${ROOTFS}/bin/tool)"
echo "link: $(cat ${ROOTFS}/keep-link)"
echo "written in the guest" > ${ROOTFS}/app/guest.txt
echo "VERSION_ID=guest" >> ${ROOTFS}/etc/os-release
rm ${ROOTFS}/app/keep.txt
mkdir ${ROOTFS}/newdir
echo new > ${ROOTFS}/newdir/f
sync
# the second container is created while this one runs: look it up before it exists (no negative dentry may stick)
if [ -e ${R2} ]; then echo "R2 EARLY"; else echo "R2 not yet"; fi
touch ${SD}/c1-started
n=0; until [ -e ${R2}/etc/os-release ]; do n=$((n+1)); [ $n -lt 600 ] || { echo "second rafs never appeared"; exit 4; }; sleep 0.1; done
mount -t overlay overlay -o upperdir=${SD2}/fs,workdir=${SD2}/work,lowerdir=${R2},index=off ${ROOTFS2}
${H.tree(ROOTFS2, 'merged2')}
echo "c2 os-release: $(grep -c guest ${ROOTFS2}/etc/os-release || true)"
echo "c2 writes" > ${ROOTFS2}/app/c2.txt
echo "c1 sees c2: $(ls ${ROOTFS}/app | tr '\n' ' ')"
sync
umount ${ROOTFS2}
umount ${ROOTFS}
echo GUEST-DONE
`,
    });
    // container create while the sandbox runs: the RAFS instance from the extraoption (Go sends the query raw)
    r = await api(apisock, 'POST', `/api/v1/mount?mountpoint=/rafs/${cid}/lowerdir`, { fs_type: 'rafs', source: extra.source, config: extra.config });
    assert.is(r.status, 204, `RAFS mount from the extraoption: ${r.body}\n${kd.log().slice(-3000)}`);
    // the second container, once the first one runs in the guest, as runtime-rs sends it (percent-encoded query)
    let guestEnded = false;
    void guest.then(() => { guestEnded = true; });
    const started = path.join(extra.snapshotdir, 'c1-started');
    for (let t0 = Date.now(); !fs.existsSync(started) && !guestEnded; await sleep(100)) {
      if (Date.now() - t0 > 150_000) throw new Error('the guest never started the first container');
    }
    r = await api(apisock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(`/rafs/${cid2}/lowerdir`)}`, { fs_type: 'rafs', source: extra2.source, config: extra2.config });
    assert.is(r.status, 204, `RAFS mount (2): ${r.body}`);
    const res = await guest;
    assert.ok(res.exitOk, `guest failed rc=${res.rc} timedOut=${res.timedOut}\n${res.output.slice(-3000)}\n${res.console.slice(-3000)}\n--- nydusd virtiofs ---\n${kd.log().slice(-3000)}`);
    assert.ok(res.output.includes('GUEST-DONE'));
    assert.ok(res.output.includes('R2 not yet'), 'the second RAFS mount came after the guest looked for it');
    assert.equal(parseGuestTree(res.output, 'merged'), hostTree(expected), 'guest overlay = the image, byte for byte');
    for (const p of DELETED) assert.ok(res.output.includes(`ABSENT ${p}`), `${p} must be absent in the guest`);
    assert.ok(res.output.includes('tool: tool from layer 1'));
    assert.ok(res.output.includes('link: kept from layer 1'));
    assert.equal(parseGuestTree(res.output, 'merged2'), hostTree(expected), 'the second container sees the image, not the first one\'s writes');
    assert.ok(res.output.includes('c2 os-release: 0'));
    assert.ok(res.output.includes('c1 sees c2: added.txt guest.txt '), res.output);
    assert.is(fs.readFileSync(path.join(extra2.snapshotdir, 'fs/app/c2.txt'), 'utf8'), 'c2 writes\n');
    const l3After = blobGets(reg.log(), layer3Blob).length;
    assert.equal(gets12(), l12Before, 'layers 1-2 come from the blob cache the host nydusd filled (config work_dir shared)');
    // served with the credentials from the extraoption config (the registry needs them), every byte of big.bin
    const served = blobGets(reg.log(), layer3Blob).slice(l3Before).map((l) => /" (\d{3}) (\d+) /.exec(l)).filter((x) => x && (x[1] === '200' || x[1] === '206'));
    assert.ok(served.reduce((n, x) => n + Number(x![2]), 0) >= BIG.length, `layer-3 bytes served: ${served.map((x) => x![0]).join(' ')}`);
    assert.ok(l3After > l3Before, `the Kata nydusd fetched layer 3 from the registry (${l3Before} → ${l3After} GETs)`);
    // the container's writes are in the snapshot's upper dir on the host
    const upper = path.join(extra.snapshotdir, 'fs');
    assert.is(fs.readFileSync(path.join(upper, 'app/guest.txt'), 'utf8'), 'written in the guest\n');
    assert.is(fs.readFileSync(path.join(upper, 'etc/os-release'), 'utf8'), 'ID=kata-e2e\nVERSION_ID=2\nVERSION_ID=guest\n');
    assert.is(fs.readFileSync(path.join(upper, 'newdir/f'), 'utf8'), 'new\n');
    const wh = fs.lstatSync(path.join(upper, 'app/keep.txt'));
    assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'a 0:0 whiteout for the deleted lower file');
    assert.not.ok(fs.existsSync(path.join(upper, 'data')), 'nothing copied up that was only read');

    // ------------------------------------------------------------ Kata teardown
    r = await api(apisock, 'DELETE', `/api/v1/mount?mountpoint=/rafs/${cid}/lowerdir`);
    assert.is(r.status, 204, r.body);
    // runtime-rs: encoded query, empty body with Content-Type application/json
    r = await api(apisock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(`/rafs/${cid2}/lowerdir`)}`, '');
    assert.is(r.status, 204, r.body);
    share.removeContainer(cid);
    share.removeContainer(cid2);
    r = await api(apisock, 'GET', '/api/v1/daemon');
    assert.equal(Object.keys((r.json as { backend_collection?: Record<string, unknown> }).backend_collection ?? {}), ['/containers']);
    c.ctr([...SN, 'rm', key]);
    c.ctr([...SN, 'rm', key2]);
    await sleep(100);
  } finally {
    if (savedDockerConfig === undefined) delete process.env.DOCKER_CONFIG;
    else process.env.DOCKER_CONFIG = savedDockerConfig;
    await kd?.stop();
    await teardown(dir, cd, sn);
    await reg?.stop();
  }
});

test.run();
