/**
 * Proves the QEMU rig (test/support/qemu.ts) against the REFERENCE virtio-fs daemon
 * (/usr/lib/qemu/virtiofsd): a real QEMU 7.2 guest with Linux 6.1 mounts virtio-fs and
 *  1. lists a host tree (nested dirs, symlink, 3 MiB file, odd modes/owners) with sha256,
 *     which equals the host's own listing of the same tree;
 *  2. builds the overlay the Kata agent builds (lower = guest tmpfs, upper/work on
 *     virtio-fs, index=off), creates/modifies/deletes files, and the host then sees the new
 *     file, the copied-up file and a `c 0,0` whiteout in the upper dir.
 * Needs root (virtiofsd), QEMU, busybox-static and a Debian kernel (installed/fetched when
 * missing); otherwise prints `SKIP qemu-rig: <reason>` and passes.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  bootGuest, ensureReferenceVirtiofsd, guestScriptHelpers as H, hostTree, parseGuestTree, prepareGuest,
  startReferenceVirtiofsd, type BootResult,
} from '../support/qemu';

let skipReason: string | undefined | null = null;
async function skip(): Promise<string | undefined> {
  if (skipReason !== null) return skipReason;
  if (process.platform !== 'linux') skipReason = 'not Linux';
  else if (process.getuid?.() !== 0) skipReason = 'not running as root (virtiofsd needs it)';
  else {
    const g = await prepareGuest();
    skipReason = 'skip' in g ? g.skip : ensureReferenceVirtiofsd();
  }
  if (skipReason) console.log(`SKIP qemu-rig: ${skipReason}`);
  return skipReason;
}

const dirs: string[] = [];
const tmp = () => { const d = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-qemu-rig-')); dirs.push(d); return d; };
test.after(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }); });
const show = (r: BootResult) => `rc=${r.rc} timedOut=${r.timedOut} ${r.durationMs} ms\n${r.console.slice(-4000)}`;

test('reference virtiofsd: guest tree listing + sha256 equals the host listing', async () => {
  if (await skip()) return;
  const base = tmp();
  const share = path.join(base, 'share');
  const sock = path.join(base, 'vfs.sock');
  fs.mkdirSync(path.join(share, 'a/b/c'), { recursive: true });
  fs.mkdirSync(path.join(share, 'empty-dir'));
  fs.writeFileSync(path.join(share, 'hello.txt'), 'hello, guest\n');
  fs.writeFileSync(path.join(share, 'empty'), '');
  fs.writeFileSync(path.join(share, 'a/b/c/deep.bin'), randomBytes(4097));
  fs.writeFileSync(path.join(share, 'big.bin'), randomBytes(3 << 20));
  fs.writeFileSync(path.join(share, 'a/exec.sh'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  fs.writeFileSync(path.join(share, 'a/secret'), 'shh', { mode: 0o600 });
  fs.chmodSync(path.join(share, 'a/secret'), 0o600);
  fs.writeFileSync(path.join(share, 'a/owned'), 'owned by 1234:5678');
  fs.chownSync(path.join(share, 'a/owned'), 1234, 5678);
  fs.symlinkSync('a/b/c/deep.bin', path.join(share, 'link-rel'));
  fs.symlinkSync('/does/not/exist', path.join(share, 'a/dangling'));
  fs.linkSync(path.join(share, 'hello.txt'), path.join(share, 'a/hardlink'));

  const d = await startReferenceVirtiofsd(share, sock, { cache: 'none' });
  let r: BootResult;
  try {
    r = await bootGuest({
      socket: sock, tag: 'rigfs', timeoutMs: 60_000,
      script: `${H.prelude}
${H.mountVirtiofs('rigfs', '/mnt')}
t0=$(rig_ms)
${H.tree('/mnt', 'share')}
echo "listing took $(( $(rig_ms) - t0 )) ms"
cat /mnt/hello.txt
`,
    });
  } finally {
    await d.stop();
  }
  assert.ok(r.exitOk, show(r));
  assert.ok(r.output.includes('hello, guest'), r.output);
  const guest = parseGuestTree(r.output, 'share');
  const host = hostTree(share);
  assert.equal(guest, host);
  assert.ok(host.some((l) => l.startsWith('./big.bin|f|0644|0|0|3145728|')), host.join('\n'));
  assert.ok(host.includes('./link-rel|l|0777|0|0|-|a/b/c/deep.bin'), host.join('\n'));
  assert.ok(host.some((l) => l.startsWith('./a/owned|f|0644|1234|5678|')), host.join('\n'));
  console.log(`qemu-rig: tree of ${host.length} entries matched; boot ${r.bootMs} ms, QEMU ${r.durationMs} ms; ${/listing took \d+ ms/.exec(r.output)?.[0]}`);
});

test('reference virtiofsd (xattr, modcaps=+sys_admin): Kata-style guest overlay with upper on virtio-fs', async () => {
  if (await skip()) return;
  const base = tmp();
  const share = path.join(base, 'share');
  const sock = path.join(base, 'vfs.sock');
  // the layout the guest sees under the Kata share: containers/<cid>/snapshotdir/{fs,work}
  const snap = path.join(share, 'containers/c1/snapshotdir');
  fs.mkdirSync(path.join(snap, 'fs'), { recursive: true });
  fs.mkdirSync(path.join(snap, 'work'));
  fs.mkdirSync(path.join(share, 'containers/c1/rootfs'));

  const d = await startReferenceVirtiofsd(share, sock, { cache: 'auto', xattr: true, modcapsSysAdmin: true });
  let r: BootResult;
  const S = '/run/kata-containers/shared/containers';
  try {
    r = await bootGuest({
      socket: sock, tag: 'kataShared', timeoutMs: 60_000,
      script: `${H.prelude}
set -e
${H.mountVirtiofs('kataShared', '/run/kata-containers/shared')}
mkdir -p /lower && mount -t tmpfs tmpfs /lower
echo lower-a > /lower/a
echo lower-b > /lower/b
mkdir -p /lower/d /lower/keep && echo x > /lower/d/x && echo k > /lower/keep/k
mount -t overlay overlay -o upperdir=${S}/c1/snapshotdir/fs,workdir=${S}/c1/snapshotdir/work,lowerdir=/lower,index=off ${S}/c1/rootfs
R=${S}/c1/rootfs
echo new-file > $R/new
rm $R/a
echo modified >> $R/b
rm -r $R/d
mkdir $R/d && echo y > $R/d/y
echo "merged: $(cd $R && find . | sort | tr '\\n' ' ')"
echo "b=$(cat $R/b | tr '\\n' ' ')"
[ ! -e $R/a ] && echo "a is gone"
[ ! -e $R/d/x ] && echo "d is opaque"
umount $R
${H.tree(`${S}/c1/snapshotdir/fs`, 'upper')}
dmesg | grep -i overlay | sed 's/^/dmesg: /' || true
`,
    });
  } finally {
    await d.stop();
  }
  assert.ok(r.exitOk, show(r));
  assert.ok(r.output.includes('a is gone'), r.output);
  assert.ok(r.output.includes('d is opaque'), r.output);
  assert.ok(r.output.includes('b=lower-b modified'), r.output);
  assert.not.match(r.output, /failed to set xattr on upper/);

  const upper = path.join(snap, 'fs');
  assert.equal(fs.readFileSync(path.join(upper, 'new'), 'utf8'), 'new-file\n');
  assert.equal(fs.readFileSync(path.join(upper, 'b'), 'utf8'), 'lower-b\nmodified\n');
  const wh = fs.lstatSync(path.join(upper, 'a'));
  assert.ok(wh.isCharacterDevice() && wh.rdev === 0, `a is not a c 0,0 whiteout: mode ${wh.mode.toString(8)} rdev ${wh.rdev}`);
  assert.ok(!fs.existsSync(path.join(upper, 'keep')), 'untouched lower dir must not be copied up');
  const opaque = execFileSync('getfattr', ['--absolute-names', '--only-values', '-n', 'trusted.overlay.opaque', path.join(upper, 'd')], { encoding: 'utf8' });
  assert.equal(opaque, 'y');
  // what the guest saw of the upper dir (via virtio-fs) is what the host has
  const host = hostTree(upper);
  assert.equal(parseGuestTree(r.output, 'upper'), host);
  assert.ok(host.includes('./a|c|0000|0|0|-|0,0'), host.join('\n'));
  console.log(`qemu-rig: overlay upper on virtio-fs ok (whiteout c 0,0, copy-up, opaque dir); QEMU ${r.durationMs} ms`);
});

test.run();
