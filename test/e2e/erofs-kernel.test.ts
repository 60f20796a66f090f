/**
 * RAFS v6 ⇄ Linux EROFS (rafs-spec §3): the kernel mounts what bootstrap-v6.ts
 * writes (with an uncompressed blob as the extra device), fsck.erofs accepts
 * it, and direct-v6.ts reads images made by mkfs.erofs (plain, compact inodes,
 * and `--chunksize --blobdev`) exactly as the kernel sees them.
 * Needs root, `mount -t erofs`, loop devices; otherwise prints SKIP and passes.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Compressor } from '../../src/common/compress';
import { digest, DigestAlgorithm, initDigest } from '../../src/common/digest';
import { BlobFeatures, RafsSuperFlags } from '../../src/rafs/format/constants';
import { writeBootstrapV6 } from '../../src/rafs/builder/bootstrap-v6';
import { BuildInode, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK } from '../../src/rafs/builder/tree';
import { loadV6 } from '../../src/rafs/metadata/direct-v6';
import type { BlobInfo, ChunkInfo, RafsSuper } from '../../src/rafs/metadata/types';

const CS = 0x10000;

function skipReason(): string | undefined {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'not running as root';
  if (!fs.readFileSync('/proc/filesystems', 'utf8').includes('erofs')) return 'kernel has no erofs';
  for (const tool of ['losetup', 'mount', 'umount', 'mkfs.erofs', 'fsck.erofs', 'getfattr']) {
    try { execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }); } catch { return `${tool} not installed`; }
  }
  return undefined;
}
const SKIP = skipReason();
const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();

/** Mount `image` (with an optional extra device file) read-only; returns a cleanup function. */
function mountErofs(image: string, dir: string, devices: string[] = []): () => void {
  const loops: string[] = [];
  const cleanup = () => {
    try { run('umount', [dir]); } catch { /* not mounted */ }
    for (const l of loops.reverse()) { try { run('losetup', ['-d', l]); } catch { /* gone */ } }
    // the kernel may release the devices lazily: wait until they are really detached, so that the
    // next test does not get a loop device that still serves the previous file's cached blocks
    for (let i = 0; i < 200; i++) {
      const busy = loops.filter((l) => { try { return fs.readFileSync(`/sys/block/${path.basename(l)}/loop/backing_file`, 'utf8').length > 0; } catch { return false; } });
      if (busy.length === 0) break;
      execFileSync('sleep', ['0.05']);
    }
  };
  try {
    // a reused loop device may still hold the previous file's pages in its buffer cache: flush them
    const attach = (file: string) => {
      const dev = run('losetup', ['-f', '--show', '-r', file]).trim();
      loops.push(dev);
      try { run('blockdev', ['--flushbufs', dev]); } catch { /* best effort */ }
      return dev;
    };
    const main = attach(image);
    const o = ['ro'];
    for (const device of devices) {
      o.push(`device=${attach(device)}`);
    }
    run('mount', ['-t', 'erofs', '-o', o.join(','), main, dir]);
  } catch (e) {
    cleanup();
    throw e;
  }
  return cleanup;
}

// ------------------------------------------------------------------ snapshots

interface Entry {
  mode: number; uid: number; gid: number; size: number; nlink: number; mtime: number; mtimeNsec: number;
  rdev: number; ino: number; link?: string; dataHash?: string; xattrs: string;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const xattrKey = (pairs: Array<[string, Buffer]>) => pairs.map(([k, v]) => `${k}=${v.toString('hex')}`).sort().join(';');

function readerSnapshot(sup: RafsSuper, image: Buffer, blobs: Buffer[]): Map<string, Entry> {
  const out = new Map<string, Entry>();
  const visit = (ino: number, p: string) => {
    const i = sup.getInode(ino);
    const e: Entry = {
      mode: i.mode, uid: i.uid, gid: i.gid, size: i.size, nlink: i.nlink, mtime: i.mtime, mtimeNsec: i.mtimeNsec,
      rdev: i.rdev, ino: i.ino, xattrs: xattrKey(i.xattrs()),
    };
    if (i.isSymlink()) e.link = i.readlink().toString('utf8');
    if (i.isReg()) {
      const data = Buffer.alloc(i.size);
      for (const c of i.chunks()) {
        const src = c.blobIndex < 0 ? image : blobs[c.blobIndex];
        assert.ok(!c.compressed, 'test images are uncompressed');
        src.copy(data, c.fileOffset, c.compressedOffset, c.compressedOffset + c.uncompressedSize);
      }
      e.dataHash = sha(data);
    }
    out.set(p, e);
    if (i.isDir()) for (const c of i.children()) visit(c.ino, `${p === '/' ? '' : p}/${c.name.toString('utf8')}`);
  };
  visit(sup.meta.rootIno, '/');
  return out;
}

function parseGetfattr(text: string, root: string): Map<string, Array<[string, Buffer]>> {
  const out = new Map<string, Array<[string, Buffer]>>();
  let cur: Array<[string, Buffer]> | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('# file: ')) {
      const f = line.slice(8).replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
      const rel = Buffer.from(f, 'latin1').toString('utf8');
      const p = rel === root ? '/' : rel.slice(root.length);
      cur = [];
      out.set(p, cur);
    } else if (cur && line.includes('=')) {
      const eq = line.indexOf('=');
      const v = line.slice(eq + 1);
      cur.push([line.slice(0, eq), v.startsWith('0x') ? Buffer.from(v.slice(2), 'hex') : Buffer.alloc(0)]);
    }
  }
  return out;
}

function mountSnapshot(dir: string, opts: { withXattrs: boolean }): Map<string, Entry> {
  const xa = opts.withXattrs ? parseGetfattr(run('getfattr', ['-R', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', dir]), dir) : new Map();
  const out = new Map<string, Entry>();
  const visit = (abs: string, p: string) => {
    const st = fs.lstatSync(abs, { bigint: true });
    const e: Entry = {
      mode: Number(st.mode), uid: Number(st.uid), gid: Number(st.gid), size: Number(st.size), nlink: Number(st.nlink),
      mtime: Number(st.mtimeNs / 1_000_000_000n), mtimeNsec: Number(st.mtimeNs % 1_000_000_000n), rdev: Number(st.rdev),
      ino: Number(st.ino), xattrs: xattrKey(xa.get(p) ?? []),
    };
    if (st.isSymbolicLink()) e.link = fs.readlinkSync(abs, { encoding: 'buffer' }).toString('utf8');
    if (st.isFile()) e.dataHash = sha(fs.readFileSync(abs));
    out.set(p, e);
    if (st.isDirectory()) {
      for (const n of fs.readdirSync(abs, { encoding: 'buffer' }).sort(Buffer.compare)) {
        visit(path.join(abs, n.toString('utf8')), `${p === '/' ? '' : p}/${n.toString('utf8')}`);
      }
    }
  };
  visit(dir, '/');
  return out;
}

/** Compare everything except inode numbers, then compare hardlink groups by inode number. */
function compareSnapshots(a: Map<string, Entry>, b: Map<string, Entry>, what: string, skip: Array<keyof Entry> = []): void {
  assert.equal([...a.keys()].sort(), [...b.keys()].sort(), `${what}: same paths`);
  for (const [p, ea] of a) {
    const eb = b.get(p)!;
    for (const k of Object.keys(ea) as Array<keyof Entry>) {
      if (k === 'ino' || skip.includes(k)) continue;
      assert.equal(ea[k], eb[k], `${what}: ${p} ${k}`);
    }
  }
  const groups = (m: Map<string, Entry>) => {
    const g = new Map<number, string[]>();
    for (const [p, e] of m) if ((e.mode & 0o170000) !== S_IFDIR) g.set(e.ino, [...(g.get(e.ino) ?? []), p]);
    return [...g.values()].map((v) => v.sort().join('|')).sort();
  };
  assert.equal(groups(a), groups(b), `${what}: hardlink groups`);
}

// ------------------------------------------------------------ test tree + blob

function prng(seed: number) {
  let x = seed >>> 0;
  return (n: number) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; b[i] = x & 0xff; }
    return b;
  };
}

interface Built { root: BuildInode; blobs: Buffer[]; infos: BlobInfo[] }

/** A tree exercising every v6 edge case, plus the uncompressed blob holding its chunks. */
function buildTree(nblobs = 1): Built {
  const rnd = prng(7);
  const contents = new Map<BuildInode, Buffer>();
  const dir = (init: Partial<BuildInode> = {}) => new BuildInode({ mode: S_IFDIR | 0o755, uid: 0, gid: 0, mtime: 1_600_000_000, ...init });
  const file = (data: Buffer, init: Partial<BuildInode> = {}) => {
    const n = new BuildInode({ mode: S_IFREG | 0o644, uid: 1000, gid: 1000, mtime: 1_650_000_000, mtimeNsec: 123456789, size: data.length, ...init });
    contents.set(n, data);
    return n;
  };
  const add = (d: BuildInode, name: string | Buffer, n: BuildInode) => d.children.push({ name: Buffer.isBuffer(name) ? name : Buffer.from(name), inode: n });

  const root = dir({ uid: 0, gid: 0 });
  const multi = rnd(3 * CS + 1234);
  add(root, 'empty', file(Buffer.alloc(0)));
  add(root, 'small.txt', file(Buffer.from('hello\n'), {
    xattrs: [['security.test', Buffer.from('sec')], ['trusted.t', Buffer.from('tv')], ['user.a', Buffer.from('1')], ['user.big', rnd(1000)]],
  }));
  add(root, 'multi.bin', file(multi, { mode: S_IFREG | 0o4755, uid: 70000, gid: 80000 }));
  add(root, 'dup.bin', file(Buffer.from(multi.subarray(CS, 2 * CS)), { mtime: 1 }));
  const sparse = Buffer.alloc(5 * CS - 100);
  rnd(CS).copy(sparse, 0);
  sparse.fill(7, 4 * CS + 10, 4 * CS + 500);
  add(root, 'sparse.bin', file(sparse));
  add(root, 'exact.bin', file(rnd(CS)));
  const hard = file(Buffer.from('linked data'), { mode: S_IFREG | 0o600 });
  add(root, 'hard1', hard);
  add(root, 'x'.repeat(255), file(Buffer.from('long name')));
  add(root, 'näme-日本語-✓', file(Buffer.from('unicode')));
  add(root, '-dash', file(Buffer.from('sorts before dot')));
  add(root, 'link', new BuildInode({ mode: S_IFLNK | 0o777, symlink: Buffer.from('small.txt'), mtime: 5 }));
  add(root, 'longlink', new BuildInode({ mode: S_IFLNK | 0o777, symlink: Buffer.from('a/'.repeat(1500)), mtime: 6 }));
  add(root, 'fifo', new BuildInode({ mode: S_IFIFO | 0o644, mtime: 7, uid: 5, gid: 6 }));
  add(root, 'chr', new BuildInode({ mode: S_IFCHR | 0o600, rdev: (1 << 8) | 3, mtime: 8 }));
  add(root, 'blkish', new BuildInode({ mode: S_IFCHR | 0o600, rdev: (300 << 8) | (0x12 & 0xff) | ((0x345 & ~0xff) << 12), mtime: 8 }));
  add(root, 'sock', new BuildInode({ mode: S_IFSOCK | 0o755, mtime: 9 }));
  add(root, 'emptydir', dir({ mode: S_IFDIR | 0o700, mtime: 10 }));
  const sub = dir({ xattrs: [['user.dir', Buffer.from('yes')]], mtime: 11, uid: 3, gid: 4 });
  add(root, 'sub', sub);
  add(sub, 'hard2', hard);
  for (let i = 0; i < 150; i++) add(sub, `entry-with-a-long-name-${String(i).padStart(4, '0')}`, file(Buffer.from(`f${i}`), { mtime: 1000 + i }));
  const deep = dir({ mtime: 12 });
  add(sub, 'deep', deep);
  add(deep, 'leaf', file(rnd(5000)));

  // blobs: chunks back to back at 4 KiB aligned offsets, deduplicated by digest, all-zero chunks are holes;
  // with several blobs, files go round-robin to blobs (fileNo % nblobs).
  // Kernel quirk seen on 6.18: when chunk k of a file ends on device A exactly at the block where
  // chunk k+1 starts on device B, iomap may merge both into one bio and read chunk k+1 from device A.
  // Nydus images with cross-blob (deduplicated) files can hit this; the test avoids it by keeping each
  // file's new chunks in one blob.
  const parts: Buffer[][] = Array.from({ length: nblobs }, () => []);
  const offs = new Array<number>(nblobs).fill(0);
  const counts = new Array<number>(nblobs).fill(0);
  const seen = new Map<string, ChunkInfo>();
  let count = 0;
  let fileNo = 0;
  const visitFiles = (d: BuildInode, done: Set<BuildInode>) => {
    for (const { inode } of [...d.children].sort((a, b) => Buffer.compare(a.name, b.name))) {
      if (inode.isDir()) { visitFiles(inode, done); continue; }
      if (!inode.isReg() || done.has(inode)) continue;
      done.add(inode);
      const data = contents.get(inode)!;
      const fileBlob = fileNo++ % nblobs;
      for (let fo = 0; fo < data.length; fo += CS) {
        const piece = data.subarray(fo, Math.min(data.length, fo + CS));
        if (piece.every((b) => b === 0)) continue;
        const dg = digest(DigestAlgorithm.Blake3, piece);
        let c = seen.get(dg.toString('hex'));
        if (!c) {
          const bi = fileBlob;
          count++;
          const off = offs[bi];
          c = { digest: dg, blobIndex: bi, index: counts[bi]++, flags: 0, compressed: false, compressedOffset: off, compressedSize: piece.length,
            uncompressedOffset: off, uncompressedSize: piece.length, fileOffset: fo, crc32: 0 };
          seen.set(dg.toString('hex'), c);
          const padded = Buffer.alloc(Math.ceil(piece.length / 4096) * 4096);
          piece.copy(padded);
          parts[bi].push(padded);
          offs[bi] += padded.length;
        }
        inode.chunks.push({ ...c, fileOffset: fo });
      }
    }
  };
  visitFiles(root, new Set());
  const blobs = parts.map((p) => Buffer.concat(p));
  const infos: BlobInfo[] = blobs.map((blob, i) => ({
    blobIndex: i, blobId: sha(blob), chunkSize: CS, chunkCount: counts[i], compressor: Compressor.None, digester: DigestAlgorithm.Blake3,
    features: BlobFeatures.ALIGNED | BlobFeatures.CAP_TAR_TOC, compressedSize: blob.length, uncompressedSize: blob.length,
    readaheadOffset: 0, readaheadSize: 0, metaCompressor: Compressor.None, metaOffset: 0, metaCompressedSize: 0, metaUncompressedSize: 0,
    tocSize: 0, tocDigest: Buffer.alloc(32),
  }));
  return { root, blobs, infos };
}

let tmp = '';
test.before(async () => {
  await initDigest();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'erofs-kernel-'));
});
test.after(() => { if (tmp && !process.env.KEEP) fs.rmSync(tmp, { recursive: true, force: true }); });

for (const nblobs of [1, 2]) {
  test(`kernel mounts the bootstrap written by writeBootstrapV6 (${nblobs} blob(s)) and sees the same tree`, () => {
    if (SKIP) { console.log(`SKIP erofs kernel mount: ${SKIP}`); return; }
    const { root, blobs, infos } = buildTree(nblobs);
    const boot = writeBootstrapV6(root, {
      chunkSize: CS, compressor: Compressor.None, digester: DigestAlgorithm.Blake3, explicitUidGid: true, blobs: infos,
      prefetch: [], extraFlags: RafsSuperFlags.ENCRYPTION_NONE,
    });
    const dir = fs.mkdtempSync(path.join(tmp, 'w'));
    const bootPath = path.join(dir, 'image.boot');
    fs.writeFileSync(bootPath, boot);
    const blobPaths = infos.map((info, i) => {
      const p = path.join(dir, info.blobId);
      fs.writeFileSync(p, blobs[i]);
      return p;
    });

    // fsck.erofs with the blob(s) as extra device(s)
    const fsck = execFileSync('fsck.erofs', [...blobPaths.map((p) => `--device=${p}`), bootPath], { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
    assert.ok(!/error|corrupt/i.test(fsck), fsck);

    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
    let cleanup: () => void;
    try {
      cleanup = mountErofs(bootPath, mnt, blobPaths);
    } catch (e) {
      console.log(`SKIP erofs kernel mount: mount failed: ${(e as Error).message}`);
      return;
    }
    try {
      const kernel = mountSnapshot(mnt, { withXattrs: true });
      const reader = readerSnapshot(loadV6(boot), boot, blobs);
      compareSnapshots(reader, kernel, 'writer→kernel');
      console.log(`  kernel mount of writeBootstrapV6 output (${nblobs} blob(s)): ${kernel.size} entries match the reader; fsck.erofs ok`);
      // spot checks against the source tree
      assert.is(kernel.get('/hard1')!.ino, kernel.get('/sub/hard2')!.ino);
      assert.is(kernel.get('/hard1')!.nlink, 2);
      assert.is(kernel.get('/sparse.bin')!.size, 5 * CS - 100);
      assert.is(kernel.get('/multi.bin')!.uid, 70000);
      assert.is(kernel.get('/multi.bin')!.mode, S_IFREG | 0o4755);
      assert.is(kernel.get('/small.txt')!.mtimeNsec, 123456789);
      assert.is(kernel.get('/chr')!.rdev, (1 << 8) | 3);
      assert.is(kernel.get('/' + 'x'.repeat(255))!.size, 9);
      assert.ok(kernel.get('/small.txt')!.xattrs.includes('user.big='));
      assert.is(kernel.get('/')!.mtime, 0, 'root mtime is forced to 0 (upstream behaviour)');
      assert.is(kernel.get('/sub')!.nlink, 3);
    } finally {
      cleanup();
    }
  });
}

/** Make a source tree on disk for mkfs.erofs. */
function makeSourceDir(dir: string): void {
  const rnd = prng(11);
  fs.mkdirSync(path.join(dir, 'd/e'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'big'), rnd(10000));
  fs.writeFileSync(path.join(dir, 'blocks'), rnd(8192));
  fs.writeFileSync(path.join(dir, 'tiny'), 'hi\n');
  fs.writeFileSync(path.join(dir, 'empty'), '');
  fs.writeFileSync(path.join(dir, 'd/e/deep'), rnd(70000));
  fs.writeFileSync(path.join(dir, 'ünï'), 'x');
  fs.writeFileSync(path.join(dir, 's'.repeat(200)), 'y');
  const sp = path.join(dir, 'sparse');
  const fd = fs.openSync(sp, 'w');
  fs.writeSync(fd, Buffer.from('start'), 0, 5, 0);
  fs.writeSync(fd, Buffer.from('end'), 0, 3, 3 * 4096 + 17);
  fs.closeSync(fd);
  fs.linkSync(path.join(dir, 'tiny'), path.join(dir, 'd/tiny-link'));
  fs.symlinkSync('big', path.join(dir, 'sym'));
  execFileSync('mkfifo', [path.join(dir, 'fifo')]);
  execFileSync('setfattr', ['-n', 'user.k', '-v', 'val', path.join(dir, 'big')]);
  execFileSync('setfattr', ['-n', 'user.k', '-v', 'val', path.join(dir, 'tiny')]);
  execFileSync('setfattr', ['-n', 'trusted.z', '-v', 'zz', path.join(dir, 'd')]);
  for (let i = 0; i < 200; i++) fs.writeFileSync(path.join(dir, 'd', `file-${i}`), `n${i}`);
  fs.chownSync(path.join(dir, 'big'), 1234, 5678);
  fs.utimesSync(path.join(dir, 'tiny'), 1_500_000_000, 1_500_000_000);
}

test('reader matches the kernel on mkfs.erofs images (plain, compact, chunked+blobdev)', () => {
  if (SKIP) { console.log(`SKIP erofs mkfs images: ${SKIP}`); return; }
  const src = path.join(tmp, 'src');
  fs.mkdirSync(src);
  makeSourceDir(src);
  const variants: Array<{ name: string; args: string[]; blob?: string }> = [
    { name: 'plain', args: [] },
    { name: 'compact', args: ['-T', '1700000000'] },
    { name: 'shared-xattrs', args: ['-x1'] },
    { name: 'chunked', args: ['--chunksize=4096', `--blobdev=${path.join(tmp, 'blobdev')}`], blob: path.join(tmp, 'blobdev') },
    { name: 'chunked-nodev', args: ['--chunksize=8192'] },
  ];
  const mnt = path.join(tmp, 'mnt2');
  fs.mkdirSync(mnt);
  for (const v of variants) {
    const img = path.join(tmp, `${v.name}.erofs`);
    execFileSync('mkfs.erofs', ['--quiet', ...v.args, img, src], { stdio: 'ignore' });
    const buf = fs.readFileSync(img);
    const sup = loadV6(buf);
    assert.is(sup.meta.chunkSize, 4096);
    const blobs = v.blob ? [fs.readFileSync(v.blob)] : [];
    assert.is(sup.blobs.length, blobs.length, `${v.name}: one blob per extra device`);
    const reader = readerSnapshot(sup, buf, blobs);
    // compare with the source directory bytes
    assert.is(reader.get('/big')!.dataHash, sha(fs.readFileSync(path.join(src, 'big'))), `${v.name}: big`);
    assert.is(reader.get('/d/e/deep')!.dataHash, sha(fs.readFileSync(path.join(src, 'd/e/deep'))), `${v.name}: deep`);
    assert.is(reader.get('/sparse')!.dataHash, sha(fs.readFileSync(path.join(src, 'sparse'))), `${v.name}: sparse`);
    assert.is(reader.get('/sym')!.link, 'big');
    let cleanup: () => void;
    try {
      cleanup = mountErofs(img, mnt, v.blob ? [v.blob] : []);
    } catch (e) {
      console.log(`SKIP erofs mkfs image mount (${v.name}): ${(e as Error).message}`);
      continue;
    }
    try {
      compareSnapshots(reader, mountSnapshot(mnt, { withXattrs: true }), `mkfs.erofs ${v.name}`);
      console.log(`  mkfs.erofs ${v.name}: ${reader.size} entries match the kernel`);
    } finally {
      cleanup();
    }
  }
});

test.run();
