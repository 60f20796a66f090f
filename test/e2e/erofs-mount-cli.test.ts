/**
 * The main proof for RAFS v6: an image built by `nydus-image create
 * --compressor none` mounts in the host kernel's EROFS (bootstrap on one loop
 * device, blob on another as `device=`), and the mounted tree equals the
 * source: bytes, modes, owners, mtimes, symlinks, hardlinks, xattrs, fifos,
 * devices, sparse/empty files, long and non-ASCII names, deep paths.
 * fsck.erofs checks the same image offline.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeEdgeTree } from '../support/edge-tree';
import { diffTrees, treeRecords } from '../support/tree-digest';
import { hasCommand, isRoot, nydusImage, sh, tmpdir } from '../support/cli';

function kernelErofsMissing(): string | undefined {
  if (!isRoot()) return 'not running as root (mount needs CAP_SYS_ADMIN)';
  if (!fs.readFileSync('/proc/filesystems', 'utf8').includes('erofs')) {
    try { sh('modprobe', ['erofs']); } catch { /* checked below */ }
    if (!fs.readFileSync('/proc/filesystems', 'utf8').includes('erofs')) return 'kernel has no EROFS support';
  }
  if (!fs.existsSync('/dev/loop-control')) return 'no loop devices (/dev/loop-control missing)';
  return undefined;
}

const skip = kernelErofsMissing();
if (skip) console.log(`SKIP erofs-mount-cli: ${skip}`);

function mountImage(boot: string, blob: string | undefined, mnt: string): () => void {
  const loops: string[] = [];
  const attach = (f: string) => { const l = sh('losetup', ['-f', '--show', '-r', f]).trim(); loops.push(l); return l; };
  try {
    const bootLoop = attach(boot);
    const opts = blob ? `ro,device=${attach(blob)}` : 'ro';
    sh('mount', ['-t', 'erofs', '-o', opts, bootLoop, mnt]);
  } catch (e) {
    for (const l of loops) try { sh('losetup', ['-d', l]); } catch { /* ignore */ }
    throw e;
  }
  return () => {
    try { sh('umount', [mnt]); } finally { for (const l of loops) try { sh('losetup', ['-d', l]); } catch { /* ignore */ } }
  };
}

for (const chunk of [0x1000, 0x10000, 0x100000]) {
  test(`kernel EROFS mounts a v6 image (chunk 0x${chunk.toString(16)}) and it equals the source`, () => {
    if (skip) return;
    const work = tmpdir('erofs-cli');
    try {
      const src = path.join(work, 'src');
      makeEdgeTree(src, { chunkSize: chunk, manyFiles: chunk === 0x1000 ? 3000 : 300 });
      const boot = path.join(work, 'image.boot');
      const blobs = path.join(work, 'blobs');
      fs.mkdirSync(blobs);
      const out = JSON.parse((() => {
        nydusImage(['create', '--fs-version', '6', '--compressor', 'none', '--chunk-size', `0x${chunk.toString(16)}`, '--bootstrap', boot, '--blob-dir', blobs, '--output-json', path.join(work, 'o.json'), src]);
        return fs.readFileSync(path.join(work, 'o.json'), 'utf8');
      })());
      const blob = out.blobs.length ? path.join(blobs, out.blobs[0]) : undefined;
      if (hasCommand('fsck.erofs')) sh('fsck.erofs', blob ? [`--device=${blob}`, boot] : [boot]);
      const mnt = path.join(work, 'mnt');
      fs.mkdirSync(mnt);
      const umount = mountImage(boot, blob, mnt);
      try {
        const diffs = diffTrees(treeRecords(src), treeRecords(mnt));
        assert.equal(diffs, [], 'kernel view differs from source');
      } finally { umount(); }
    } finally { fs.rmSync(work, { recursive: true, force: true }); }
  });
}

test('images made by mkfs.erofs (plain and --chunksize --blobdev) unpack equal to their source', () => {
  if (!hasCommand('mkfs.erofs')) { console.log('SKIP mkfs.erofs images: mkfs.erofs not installed'); return; }
  const work = tmpdir('mkfs-erofs');
  try {
    const src = path.join(work, 'src');
    makeEdgeTree(src, { chunkSize: 0x1000, manyFiles: 200, devices: isRoot() });
    // mkfs.erofs 1.5 rejects 255-byte names
    fs.rmSync(path.join(src, 'names', 'n'.repeat(255)));
    const want = treeRecords(src);
    for (const [name, extra, blobArgs] of [
      ['plain', [] as string[], [] as string[]],
      ['chunked', ['--chunksize=4096', `--blobdev=${path.join(work, 'blob')}`], ['--blob', path.join(work, 'blob')]],
    ] as const) {
      const img = path.join(work, `${name}.img`);
      sh('mkfs.erofs', ['--quiet', ...extra, img, src]);
      nydusImage(['check', img, ...blobArgs, '--verify-chunks']);
      const out = path.join(work, `out-${name}`);
      nydusImage(['unpack', img, ...blobArgs, '--output-dir', out]);
      assert.equal(diffTrees(want, treeRecords(out)), [], `${name}: unpacked tree differs`);
    }
  } finally { fs.rmSync(work, { recursive: true, force: true }); }
});

test.run();
