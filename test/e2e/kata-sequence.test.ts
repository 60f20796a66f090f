/**
 * Kata's exact sequence against a real QEMU guest: start nydusd with Kata's
 * Go-runtime argv → poll GET /api/v1/daemon until RUNNING (the vhost-user
 * socket already listening) → POST the passthrough mount at /containers →
 * start QEMU → while the guest runs, POST two RAFS images at
 * /rafs/<cid>/lowerdir (percent-encoded query for one, raw for the other) →
 * the guest mounts the overlay exactly as the Kata agent does and checks
 * files → DELETE one RAFS mount while the other keeps working → metrics
 * show the reads.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT, nydusImage } from '../support/cli';
import { api, waitForState } from '../support/api';
import { bootGuest, guestScriptHelpers as H, prepareGuest, startDaemonProcess, unixSocketListening, type BootResult } from '../support/qemu';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-kata-seq-'));
test.after(() => { if (!process.env.KEEP_TMP) fs.rmSync(work, { recursive: true, force: true }); });

async function skip(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'not running as root';
  const g = await prepareGuest();
  return 'skip' in g ? g.skip : undefined;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function waitForFile(f: string, timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  while (!fs.existsSync(f)) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${f}`);
    await sleep(100);
  }
}

function image(name: string, files: Record<string, string>): { boot: string; config: string } {
  const src = path.join(work, `src-${name}`);
  for (const [p, c] of Object.entries(files)) { fs.mkdirSync(path.dirname(path.join(src, p)), { recursive: true }); fs.writeFileSync(path.join(src, p), c); }
  const blobs = path.join(work, `blobs-${name}`);
  fs.mkdirSync(blobs);
  const boot = path.join(work, `${name}.boot`);
  nydusImage(['create', '--bootstrap', boot, '--blob-dir', blobs, src]);
  const config = JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: blobs } }, cache: { type: 'blobcache', filecache: { work_dir: path.join(work, `cache-${name}`) } }, rafs: { mode: 'direct' } });
  return { boot, config };
}

test('Kata sequence: API mounts while the guest runs, overlay, umount, metrics', async () => {
  const why = await skip();
  if (why) { console.log(`SKIP kata-sequence: ${why}`); return; }
  const img1 = image('c1', { 'etc/os-release': 'ID=image-one\n', 'bin/tool': 'tool v1\n' });
  const img2 = image('c2', { 'etc/os-release': 'ID=image-two\n', 'data/big': 'x'.repeat(300000) });
  const shared = path.join(work, 'shared');
  for (const c of ['c1', 'c2']) {
    fs.mkdirSync(path.join(shared, c, 'snapshotdir/fs'), { recursive: true });
    fs.mkdirSync(path.join(shared, c, 'snapshotdir/work'));
    fs.mkdirSync(path.join(shared, c, 'rootfs'));
  }
  const sock = path.join(work, 'vhost-user-fs.sock');
  const apisock = path.join(work, 'nydusd-api.sock');
  // Kata Go runtime argv (kata-contract §1.1)
  const d = await startDaemonProcess(path.join(ROOT, 'bin/nydusd'), ['virtiofs', '--log-level', 'info', '--apisock', apisock, '--sock', sock], sock, 20_000);
  try {
    const info = await waitForState(apisock);
    assert.ok(unixSocketListening(sock), 'vhost-user socket must listen before RUNNING');
    const version = info.version as Record<string, unknown>;
    for (const k of ['package_ver', 'git_commit', 'build_time', 'profile', 'rustc']) assert.type(version[k], 'string');
    let r = await api(apisock, 'POST', '/api/v1/mount?mountpoint=/containers', { source: shared, fs_type: 'passthrough_fs', config: '' });
    assert.is(r.status, 204, r.body);

    const S = '/run/kata-containers/shared';
    const C = `${S}/containers`;
    const guest = bootGuest({
      socket: sock, tag: 'kataShared', timeoutMs: 120_000, extraModules: ['overlay'],
      script: `${H.prelude}
set -e
${H.mountVirtiofs('kataShared', S)}
n=0; until [ -e ${S}/rafs/c2/lowerdir/etc/os-release ]; do n=$((n+1)); [ $n -lt 600 ] || { echo "rafs never appeared"; exit 3; }; sleep 0.1; done
for c in c1 c2; do
  mount -t overlay overlay -o lowerdir=${S}/rafs/$c/lowerdir,upperdir=${C}/$c/snapshotdir/fs,workdir=${C}/$c/snapshotdir/work,index=off ${C}/$c/rootfs
  echo "$c: $(cat ${C}/$c/rootfs/etc/os-release)"
  echo "written by $c" > ${C}/$c/rootfs/etc/hostname
done
cat ${C}/c2/rootfs/data/big | wc -c | sed 's/^/c2-big=/'
umount ${C}/c2/rootfs
touch ${C}/ready-for-umount
n=0; until [ -e ${C}/umounted ]; do n=$((n+1)); [ $n -lt 600 ] || { echo "host never umounted"; exit 4; }; sleep 0.1; done
sleep 1.5
if [ -e ${S}/rafs/c2/lowerdir/etc/os-release ]; then echo "c2 still visible"; else echo "c2 gone"; fi
echo "c1 after: $(cat ${C}/c1/rootfs/bin/tool)"
umount ${C}/c1/rootfs
`,
    });
    // while the guest boots and runs: mount both images (Go sends the query raw, runtime-rs encoded)
    r = await api(apisock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent('/rafs/c1/lowerdir')}`, { source: img1.boot, fs_type: 'rafs', config: img1.config });
    assert.is(r.status, 204, r.body);
    r = await api(apisock, 'POST', '/api/v1/mount?mountpoint=/rafs/c2/lowerdir', { source: img2.boot, fs_type: 'rafs', config: img2.config });
    assert.is(r.status, 204, r.body);
    r = await api(apisock, 'POST', '/api/v1/mount?mountpoint=/rafs/c2/lowerdir', { source: img2.boot, fs_type: 'rafs', config: img2.config });
    assert.is(r.status, 500, 'mounting an existing mountpoint fails');
    assert.type((r.json as Record<string, unknown>).message, 'string');
    await waitForFile(path.join(shared, 'ready-for-umount'), 90_000);
    const m = await api(apisock, 'GET', `/api/v1/metrics?id=${encodeURIComponent('/rafs/c2/lowerdir')}`);
    assert.is(m.status, 200, m.body);
    const stats = m.json as Record<string, unknown>;
    assert.ok(Number(stats.data_read) >= 300000, `metrics count the reads: ${m.body}`);
    r = await api(apisock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent('/rafs/c2/lowerdir')}`);
    assert.is(r.status, 204, r.body);
    fs.writeFileSync(path.join(shared, 'umounted'), '');
    const res: BootResult = await guest;
    assert.ok(res.exitOk, `${res.console.slice(-3000)}\n--- nydusd ---\n${d.log().slice(-3000)}`);
    assert.ok(res.output.includes('c1: ID=image-one'));
    assert.ok(res.output.includes('c2: ID=image-two'));
    assert.ok(res.output.includes('c2-big=300000'));
    assert.ok(res.output.includes('c2 gone'), res.output);
    assert.ok(res.output.includes('c1 after: tool v1'));
    for (const c of ['c1', 'c2']) assert.is(fs.readFileSync(path.join(shared, c, 'snapshotdir/fs/etc/hostname'), 'utf8'), `written by ${c}\n`);
    const after = await api(apisock, 'GET', '/api/v1/daemon');
    const mounts = Object.keys((after.json as Record<string, Record<string, unknown>>).backend_collection ?? {});
    assert.ok(mounts.includes('/containers') && mounts.includes('/rafs/c1/lowerdir') && !mounts.includes('/rafs/c2/lowerdir'), mounts.join(','));
    r = await api(apisock, 'PUT', '/api/v1/daemon/exit');
    assert.is(r.status, 204);
  } finally {
    await d.stop();
  }
});

test.run();
