/**
 * `nydusd virtiofs` with a real QEMU 7.2 guest (Linux 6.1, busybox):
 *  1. a RAFS image (edge-case tree) mounted at /rafs/c1/lowerdir reads identical to its
 *     source inside the guest (the guest computes the listing and sha256);
 *  2. in the same session the passthrough share (/containers) takes guest writes, renames,
 *     deletes, symlinks, and the host sees exactly that (xattrs: set by overlayfs below);
 *  3. the Kata agent's overlay (lower = the RAFS mount, upper/work on the passthrough):
 *     create, modify (copy-up) and delete a lower file (host sees a c 0,0 whiteout);
 *  4. the daemon survives the guest's poweroff and serves a second QEMU.
 * Skips (printing why) only when root, QEMU or a guest kernel is unavailable.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT, nydusImage } from '../support/cli';
import { makeEdgeTree } from '../support/edge-tree';
import {
  bootGuest, guestScriptHelpers as H, hostTree, parseGuestTree, prepareGuest, startDaemonProcess, type BootResult,
} from '../support/qemu';
import { getXattr } from '../../src/common/libc';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-qemu-nydusd-'));
test.after(() => { if (!process.env.KEEP_TMP) fs.rmSync(work, { recursive: true, force: true }); });
const show = (r: BootResult, log: string) => `rc=${r.rc} timedOut=${r.timedOut}\n${r.console.slice(-3000)}\n--- nydusd log ---\n${log.slice(-3000)}`;

let skipReason: string | undefined | null = null;
async function skip(): Promise<string | undefined> {
  if (skipReason !== null) return skipReason;
  if (process.getuid?.() !== 0) skipReason = 'not running as root';
  else { const g = await prepareGuest(); skipReason = 'skip' in g ? g.skip : undefined; }
  if (skipReason) console.log(`SKIP qemu-nydusd: ${skipReason}`);
  return skipReason;
}

test('RAFS and passthrough side by side in a real guest; Kata overlay; survives poweroff', async () => {
  if (await skip()) return;
  const src = path.join(work, 'src');
  makeEdgeTree(src, { chunkSize: 0x10000, manyFiles: 300 });
  // the guest listing format cannot carry '|' or newlines; the rest of the edge tree stays
  const blobs = path.join(work, 'blobs');
  fs.mkdirSync(blobs);
  const boot = path.join(work, 'image.boot');
  nydusImage(['create', '--compressor', 'zstd', '--chunk-size', '0x10000', '--bootstrap', boot, '--blob-dir', blobs, src]);
  const share = path.join(work, 'share');
  const snap = path.join(share, 'c1/snapshotdir');
  fs.mkdirSync(path.join(snap, 'fs'), { recursive: true });
  fs.mkdirSync(path.join(snap, 'work'));
  fs.mkdirSync(path.join(share, 'c1/rootfs'));
  fs.writeFileSync(path.join(share, 'from-host.txt'), 'written on the host\n');
  const sock = path.join(work, 'vhost.sock');
  const d = await startDaemonProcess(path.join(ROOT, 'bin/nydusd'), [
    'virtiofs', '--sock', sock, '--log-level', 'info',
    '--bootstrap', boot, '--localfs-dir', blobs, '--virtual-mountpoint', '/rafs/c1/lowerdir',
    '--shared-dir', share, '--shared-mountpoint', '/containers',
  ], sock, 20_000);
  try {
    const S = '/run/kata-containers/shared';
    const C = `${S}/containers`;
    const r = await bootGuest({
      socket: sock, tag: 'kataShared', timeoutMs: 120_000, extraModules: ['overlay'],
      script: `${H.prelude}
set -e
${H.mountVirtiofs('kataShared', S)}
ls ${S} ${S}/rafs/c1
${H.tree(`${S}/rafs/c1/lowerdir`, 'rafs')}
cat ${C}/from-host.txt
# passthrough: write, rename, delete, xattr, mkdir, symlink
echo guest-data > ${C}/g1.txt
echo temp > ${C}/g2.txt && mv ${C}/g2.txt ${C}/g2-renamed.txt
echo gone > ${C}/g3.txt && rm ${C}/g3.txt
mkdir -p ${C}/gdir/sub && ln -s ../g1.txt ${C}/gdir/link
# the Kata agent's overlay: lower = RAFS, upper/work on the passthrough
mount -t overlay overlay -o lowerdir=${S}/rafs/c1/lowerdir,upperdir=${C}/c1/snapshotdir/fs,workdir=${C}/c1/snapshotdir/work,index=off ${C}/c1/rootfs
R=${C}/c1/rootfs
echo new > $R/created-in-guest
echo appended >> $R/text/hello.txt
rm $R/one-byte
rm -r $R/links/sub && mkdir $R/links/sub && echo fresh > $R/links/sub/only
[ ! -e $R/one-byte ] && echo "lower file deleted"
head -c 11 $R/text/hello.txt
sha256sum $R/sizes/chunk-plus-1 | cut -d' ' -f1 | sed 's/^/overlay-sha=/'
umount $R
`,
    });
    assert.ok(r.exitOk, show(r, d.log()));
    // 1. RAFS reads identical to the source inside the guest
    const want = hostTree(src).filter((l) => !l.startsWith('./special/'));
    const got = parseGuestTree(r.output, 'rafs').filter((l) => !l.startsWith('./special/'));
    assert.equal(got, want, 'guest view of the RAFS image differs from the source');
    // devices and fifos keep their type and numbers
    const dev = parseGuestTree(r.output, 'rafs').filter((l) => l.startsWith('./special/'));
    assert.equal(dev, hostTree(src).filter((l) => l.startsWith('./special/')));
    assert.ok(r.output.includes('written on the host'));
    // 2. passthrough writes are on the host
    assert.is(fs.readFileSync(path.join(share, 'g1.txt'), 'utf8'), 'guest-data\n');
    assert.ok(fs.existsSync(path.join(share, 'g2-renamed.txt')) && !fs.existsSync(path.join(share, 'g2.txt')));
    assert.not.ok(fs.existsSync(path.join(share, 'g3.txt')));
    assert.is(fs.readlinkSync(path.join(share, 'gdir/link')), '../g1.txt');
    // 3. overlay: new file and copy-up in the upper dir, whiteout for the deleted lower file
    const upper = path.join(snap, 'fs');
    assert.is(fs.readFileSync(path.join(upper, 'created-in-guest'), 'utf8'), 'new\n');
    assert.ok(fs.readFileSync(path.join(upper, 'text/hello.txt'), 'utf8').endsWith('appended\n'));
    const wh = fs.lstatSync(path.join(upper, 'one-byte'));
    assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'deleting a lower file leaves a c 0,0 whiteout');
    assert.ok(r.output.includes('lower file deleted'));
    // a directory removed and recreated in the guest is opaque: overlayfs set the xattr through us
    assert.is(getXattr(path.join(upper, 'links/sub'), 'trusted.overlay.opaque').toString(), 'y');
    assert.is(fs.readdirSync(path.join(upper, 'links/sub')).join(','), 'only');
    const sha = require('node:crypto').createHash('sha256').update(fs.readFileSync(path.join(src, 'sizes/chunk-plus-1'))).digest('hex');
    assert.ok(r.output.includes(`overlay-sha=${sha}`), 'lower file read through the overlay');
    // 4. the daemon survived the poweroff: a second guest reads again
    const r2 = await bootGuest({
      socket: sock, tag: 'kataShared', timeoutMs: 90_000,
      script: `${H.prelude}
set -e
${H.mountVirtiofs('kataShared', S)}
cat ${C}/g1.txt
sha256sum ${S}/rafs/c1/lowerdir/sizes/chunk-plus-1 | cut -d' ' -f1 | sed 's/^/second-sha=/'
`,
    });
    assert.ok(r2.exitOk, show(r2, d.log()));
    assert.ok(r2.output.includes('guest-data'));
    assert.ok(r2.output.includes(`second-sha=${sha}`));
    console.log(`qemu-nydusd: ${want.length} RAFS entries matched in the guest; boot 1 ${r.durationMs} ms, boot 2 ${r2.durationMs} ms`);
  } finally {
    await d.stop();
  }
});

test.run();
