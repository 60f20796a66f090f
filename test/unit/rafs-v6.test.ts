/**
 * RAFS v6 codec, reader and writer (rafs-spec §3; worked example §3.12).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Compressor, decompress } from '../../src/common/compress';
import { digest, DigestAlgorithm, initDigest } from '../../src/common/digest';
import { ErrnoError } from '../../src/common/errno';
import { BlobFeatures, RafsSuperFlags } from '../../src/rafs/format/constants';
import {
  decodeChunkIndex, decodeDirBlock, decodeErofsSuperBlock, decodeExtSuperBlock, decodeInode, decodeXattrIbody,
  encodeChunkIndex, encodeXattrIbody, parseRafsChunkIndex, rafsChunkIndex, chunkHeaderFormat, EROFS_NULL_ADDR,
} from '../../src/rafs/format/v6';
import { writeBootstrapV6 } from '../../src/rafs/builder/bootstrap-v6';
import type { BootstrapOptions } from '../../src/rafs/builder/options';
import { BuildInode, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK } from '../../src/rafs/builder/tree';
import { isV6, loadV6, type BlobChunkTable } from '../../src/rafs/metadata/direct-v6';
import type { BlobInfo, ChunkInfo, RafsInode, RafsSuper } from '../../src/rafs/metadata/types';
import { needFixtures, TEXTURE as TEX } from '../support/fixtures';

const FIXTURE = path.join(TEX, 'bootstrap/rafs-v6-2.2.boot');
const BLOB_ID = 'be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef';
const fixture = () => fs.readFileSync(FIXTURE);

function expectErrno(fn: () => unknown, code?: string, msg?: RegExp): void {
  try {
    fn();
  } catch (e) {
    assert.instance(e, ErrnoError, `expected ErrnoError, got ${(e as Error)?.stack}`);
    if (code) assert.is((e as ErrnoError).code, code, (e as Error).message);
    if (msg) assert.match((e as Error).message, msg);
    return;
  }
  assert.unreachable('expected an ErrnoError');
}

/** Visit every inode reachable from the root (cycle-safe) and touch every accessor. */
function walkAll(sup: RafsSuper): number {
  const seen = new Set<number>();
  const stack = [sup.root()];
  while (stack.length) {
    const i = stack.pop()!;
    if (seen.has(i.ino)) continue;
    seen.add(i.ino);
    i.xattrs();
    if (i.isSymlink()) i.readlink();
    if (i.isReg()) i.chunks();
    if (i.isDir()) {
      for (const c of i.children()) {
        i.lookup(c.name);
        stack.push(sup.getInode(c.ino));
      }
    }
  }
  sup.chunkTable();
  return seen.size;
}

test.before(async () => { await initDigest(); });

// --------------------------------------------------------------------- fixture

test('fixture rafs-v6-2.2.boot: superblocks and blob table (§3.12)', () => {
  if (!needFixtures('rafs-v6 fixture rafs-v6-2.2.boot: superblocks and blob table (§3.12)')) return;
  const buf = fixture();
  assert.ok(isV6(buf));
  const sb = decodeErofsSuperBlock(buf);
  assert.is(sb.rootNid, 128);
  assert.is(sb.inos, 3);
  assert.is(sb.blocks, 9);
  assert.is(sb.metaBlkaddr, 2);
  assert.is(sb.extraDevices, 1);
  assert.is(sb.devtSlotoff, 11);
  const ext = decodeExtSuperBlock(buf);
  assert.is(ext.flags, 0x194);
  assert.is(ext.chunkTableOffset, 0x4000);
  assert.is(ext.chunkTableSize, 0xa0);
  const sup = loadV6(buf);
  assert.is(sup.meta.version, 6);
  assert.is(sup.meta.chunkSize, 0x100000);
  assert.is(sup.meta.compressor, Compressor.Zstd);
  assert.is(sup.meta.digester, DigestAlgorithm.Blake3);
  assert.ok(sup.meta.explicitUidGid);
  assert.not.ok(sup.meta.hasXattr);
  assert.is(sup.meta.rootIno, 128);
  assert.is(sup.meta.inodesCount, 3);
  assert.is(sup.meta.raw.meta_blkaddr, 2);
  assert.is(sup.meta.raw.blob_table_offset, 0x1000);
  assert.is(sup.meta.raw.chunk_table_size, 0xa0);
  assert.equal(sup.prefetchInodes, []);
  assert.is(sup.blobs.length, 1);
  const b = sup.blobs[0];
  assert.is(b.blobId, BLOB_ID);
  assert.is(b.chunkCount, 2);
  assert.is(b.compressor, Compressor.Zstd);
  assert.is(b.uncompressedSize, 0x9000);
  assert.is(b.compressedSize, 14554);
  assert.ok(b.features & BlobFeatures.ALIGNED);
});

test('fixture: tree, chunk indexes, chunk table and blob data digests', () => {
  if (!needFixtures('rafs-v6 fixture: tree, chunk indexes, chunk table and blob data digests')) return;
  const buf = fixture();
  const sup = loadV6(buf);
  const root = sup.root();
  assert.ok(root.isDir());
  assert.is(root.ino, 128);
  assert.is(root.size, 67);
  const kids = root.children();
  assert.equal(kids.map((k) => [k.name.toString(), k.ino, k.type]), [['lib.rs', 133, 1], ['sync_io.rs', 136, 1]]);
  const lib = root.lookup(Buffer.from('lib.rs'))!;
  const sio = root.lookup(Buffer.from('sync_io.rs'))!;
  assert.is(root.lookup(Buffer.from('nope')), undefined);
  assert.is(lib.size, 16931);
  assert.is(sio.size, 13400);
  assert.is(lib.mode, S_IFREG | 0o644);
  const blob = fs.readFileSync(path.join(TEX, 'blobs', BLOB_ID));
  const [c0] = lib.chunks();
  const [c1] = sio.chunks();
  assert.is(c0.blobIndex, 0);
  assert.is(c0.index, 0);
  assert.is(c0.uncompressedOffset, 0);
  assert.is(c0.compressedSize, 4828);
  assert.is(c0.fileOffset, 0);
  assert.is(c1.index, 1);
  assert.is(c1.uncompressedOffset, 0x5000);
  assert.is(c0.digest.toString('hex').slice(0, 8), 'f7e2735f');
  for (const [c, size] of [[c0, 16931], [c1, 13400]] as const) {
    assert.is(c.uncompressedSize, size);
    assert.ok(c.compressed);
    const data = decompress(Compressor.Zstd, blob.subarray(c.compressedOffset, c.compressedOffset + c.compressedSize), c.uncompressedSize);
    assert.equal(digest(DigestAlgorithm.Blake3, data), c.digest);
  }
  const table = sup.chunkTable();
  assert.is(table.length, 2);
  assert.ok(Buffer.compare(table[0].digest, table[1].digest) < 0, 'chunk table sorted by digest');
  assert.is(walkAll(sup), 3);
});

test('fixture: chunk resolution falls back to blobMeta, else EIO naming blob and ci', () => {
  if (!needFixtures('rafs-v6 fixture: chunk resolution falls back to blobMeta, else EIO naming blob and ci')) return;
  const buf = fixture();
  buf.fill(0, 0x4a0, 0x4a8); // s_chunk_table_size = 0
  const sup = loadV6(buf);
  const lib = sup.root().lookup(Buffer.from('lib.rs'))!;
  expectErrno(() => lib.chunks(), 'EIO', /ci_index 0 of blob 0/);
  const recs = loadV6(fixture()).chunkTable();
  const asked: string[] = [];
  const table: BlobChunkTable = { get: (ci) => recs.find((r) => r.index === ci) };
  const sup2 = loadV6(buf, { blobMeta: (b) => { asked.push(b.blobId); return table; } });
  const [c] = sup2.root().lookup(Buffer.from('sync_io.rs'))!.chunks();
  assert.is(c.index, 1);
  assert.is(c.uncompressedOffset, 0x5000);
  sup2.root().lookup(Buffer.from('lib.rs'))!.chunks();
  assert.equal(asked, [BLOB_ID], 'blob meta asked once per blob');
});

// ---------------------------------------------------------------------- codecs

test('codecs: chunk index, chunk header, xattr ibody, dirent block', () => {
  const idx = rafsChunkIndex(2, 0x12345, 77);
  assert.equal(idx, { advise: 0x2345, deviceId: 3 | (0x1 << 8), blkaddr: 77 });
  const b = Buffer.alloc(8);
  encodeChunkIndex(idx, b, 0);
  assert.equal(parseRafsChunkIndex(decodeChunkIndex(b, 0)), { blobIndex: 2, ciIndex: 0x12345 });
  assert.is(chunkHeaderFormat(0x100000), 0x28);
  expectErrno(() => chunkHeaderFormat(3000), 'EINVAL');
  expectErrno(() => rafsChunkIndex(0, 1 << 24, 0), 'EINVAL');
  const xs: Array<[string, Buffer]> = [['user.a', Buffer.from('1')], ['system.posix_acl_access', Buffer.from([2, 0, 0, 0])], ['security.selinux', Buffer.from('ctx')], ['trusted.t', Buffer.alloc(0)]];
  const { body, icount } = encodeXattrIbody(xs);
  assert.is(body.length, 12 + (icount - 1) * 4);
  assert.equal(decodeXattrIbody(body, 0, icount).entries, xs);
  expectErrno(() => encodeXattrIbody([['os2.x', Buffer.alloc(1)]]), 'EINVAL');
  expectErrno(() => decodeXattrIbody(body, 0, icount + 100), 'EINVAL');
  const bad = Buffer.from(body);
  bad[13] = 9; // unknown name index
  expectErrno(() => decodeXattrIbody(bad, 0, icount), 'EINVAL', /e_name_index/);
  const blk = Buffer.alloc(64);
  blk.writeUInt16LE(24, 8); // 2 dirents, first nameoff 24
  blk.writeUInt16LE(30, 20);
  blk.write('abcdefgh', 24);
  assert.equal(decodeDirBlock(blk, 32, 't').map((d) => d.name.toString()), ['abcdef', 'gh']);
  blk.writeUInt16LE(60, 20);
  expectErrno(() => decodeDirBlock(blk, 32, 't'), 'EINVAL', /nameoff/);
  expectErrno(() => decodeInode(Buffer.from([0x11, 0]), 0), 'EINVAL', /i_format/);
});

// ----------------------------------------------------------- writer round trip

const CS = 0x10000;

function mkBlob(index: number, id: string, uncompressedSize: number): BlobInfo {
  return {
    blobIndex: index, blobId: id, chunkSize: CS, chunkCount: 1 << 20, compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3,
    features: BlobFeatures.ALIGNED | BlobFeatures.CAP_TAR_TOC, compressedSize: 12345 + index, uncompressedSize,
    readaheadOffset: 0, readaheadSize: 0, metaCompressor: Compressor.None, metaOffset: 999, metaCompressedSize: 16, metaUncompressedSize: 16,
    tocSize: 0, tocDigest: Buffer.alloc(32, index + 1),
  };
}

let chunkSeq = 0;
function chunk(blobIndex: number, index: number, fileOffset: number, size: number): ChunkInfo {
  const d = Buffer.alloc(32);
  d.writeUInt32BE(++chunkSeq, 0);
  d.writeUInt32BE(index, 4);
  return {
    digest: d, blobIndex, index, flags: 0x1, compressed: true, compressedOffset: index * 100, compressedSize: 100,
    uncompressedOffset: index * 0x10000, uncompressedSize: size, fileOffset, crc32: 0,
  };
}

function buildTree(): { root: BuildInode; opts: BootstrapOptions } {
  chunkSeq = 0;
  const dir = (i: Partial<BuildInode> = {}) => new BuildInode({ mode: S_IFDIR | 0o755, mtime: 100, ...i });
  const reg = (size: number, chunks: ChunkInfo[], i: Partial<BuildInode> = {}) => new BuildInode({ mode: S_IFREG | 0o644, size, chunks, uid: 1, gid: 2, mtime: 200, mtimeNsec: 5, ...i });
  const add = (d: BuildInode, name: string, n: BuildInode) => d.children.push({ name: Buffer.from(name), inode: n });
  const root = dir();
  add(root, 'empty', reg(0, []));
  add(root, 'one', reg(10, [chunk(0, 0, 0, 10)], { xattrs: [['user.x', Buffer.from('y')], ['security.capability', Buffer.alloc(20, 1)], ['trusted.t', Buffer.alloc(300, 2)]] }));
  add(root, 'multi', reg(3 * CS + 7, [chunk(0, 1, 0, CS), chunk(1, 70000, CS, CS), chunk(0, 2, 2 * CS, CS), chunk(1, 5, 3 * CS, 7)], { uid: 100000, gid: 200000 }));
  const sparseChunks = [chunk(0, 3, 0, CS), chunk(0, 4, 4 * CS, 100)];
  add(root, 'sparse', reg(4 * CS + 100, sparseChunks));
  const dupe = { ...sparseChunks[0], fileOffset: CS };
  add(root, 'dupe', reg(2 * CS, [chunk(0, 6, 0, CS), dupe]));
  const hard = reg(3, [chunk(0, 7, 0, 3)], { mode: S_IFREG | 0o600 });
  add(root, 'hard-a', hard);
  add(root, 'z'.repeat(255), reg(0, []));
  add(root, 'ñame-名前', reg(0, []));
  add(root, '-before-dot', reg(0, []));
  add(root, 'link', new BuildInode({ mode: S_IFLNK | 0o777, symlink: Buffer.from('one'), mtime: 1 }));
  add(root, 'link4096', new BuildInode({ mode: S_IFLNK | 0o777, symlink: Buffer.alloc(4096, 'p'), mtime: 1 }));
  add(root, 'link-xattr', new BuildInode({ mode: S_IFLNK | 0o777, symlink: Buffer.alloc(3000, 'q'), xattrs: [['user.big', Buffer.alloc(2000, 3)]] }));
  add(root, 'fifo', new BuildInode({ mode: S_IFIFO | 0o640 }));
  add(root, 'chr', new BuildInode({ mode: S_IFCHR | 0o600, rdev: 0x0103 }));
  add(root, 'sock', new BuildInode({ mode: S_IFSOCK | 0o777 }));
  add(root, 'emptydir', dir({ mode: S_IFDIR | 0o700 }));
  const big = dir({ xattrs: [['user.dir', Buffer.from('1')]], uid: 7 });
  add(root, 'bigdir', big);
  add(big, 'hard-b', hard);
  for (let i = 0; i < 300; i++) add(big, `some-longish-file-name-${String(i).padStart(5, '0')}`, reg(0, [], { mtime: i }));
  const nested = dir();
  add(big, 'nested', nested);
  add(nested, 'leaf', reg(1, [chunk(1, 8, 0, 1)]));
  return {
    root,
    opts: {
      chunkSize: CS, compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3, explicitUidGid: true,
      blobs: [mkBlob(0, 'a'.repeat(64), 64 * CS), mkBlob(1, 'b'.repeat(64), 70001 * CS)],
      prefetch: [hard, nested, root], extraFlags: RafsSuperFlags.ENCRYPTION_NONE | RafsSuperFlags.INLINED_CHUNK_DIGEST,
    },
  };
}

/** Rebuild a BuildInode tree from a loaded image (hardlinks preserved). */
function toTree(sup: RafsSuper): { root: BuildInode; byIno: Map<number, BuildInode> } {
  const byIno = new Map<number, BuildInode>();
  const conv = (i: RafsInode): BuildInode => {
    let n = byIno.get(i.ino);
    if (n) return n;
    n = new BuildInode({
      mode: i.mode, uid: i.uid, gid: i.gid, mtime: i.mtime, mtimeNsec: i.mtimeNsec, rdev: i.rdev, size: i.isSymlink() ? 0 : i.size,
      symlink: i.isSymlink() ? i.readlink() : undefined, xattrs: i.xattrs(), chunks: i.chunks(),
    });
    byIno.set(i.ino, n);
    if (i.isDir()) n.children = i.children().map((c) => ({ name: c.name, inode: conv(sup.getInode(c.ino)) }));
    return n;
  };
  return { root: conv(sup.root()), byIno };
}

test('writer → reader round trip covers every edge case', () => {
  const { root, opts } = buildTree();
  const boot = writeBootstrapV6(root, opts);
  assert.is(boot.length % 4096, 0);
  const sup = loadV6(boot);
  assert.is(sup.meta.rootIno, 128);
  assert.is(sup.meta.flags, 0x1000000 | 0x100 | 0x80 | 0x4 | 0x10 | 0x20);
  assert.ok(sup.meta.hasXattr);
  assert.is(sup.blobs.length, 2);
  assert.is(sup.blobs[1].blobId, 'b'.repeat(64));
  assert.equal(sup.blobs[1].tocDigest, Buffer.alloc(32, 2));
  const r = sup.root();
  assert.is(r.mtime, 0, 'root mtime forced to 0');
  const get = (p: string) => p.split('/').filter(Boolean).reduce<RafsInode>((d, n) => d.lookup(Buffer.from(n))!, r);
  assert.equal(r.children().map((c) => c.name.toString()), ['-before-dot', 'bigdir', 'chr', 'dupe', 'empty', 'emptydir', 'fifo', 'hard-a', 'link', 'link-xattr', 'link4096', 'multi', 'one', 'sock', 'sparse', 'z'.repeat(255), 'ñame-名前']);
  const one = get('one');
  assert.equal(one.xattrs().map(([k]) => k), ['security.capability', 'trusted.t', 'user.x']);
  assert.is(one.uid, 1);
  assert.is(one.mtimeNsec, 5);
  const multi = get('multi');
  assert.is(multi.uid, 100000);
  const mc = multi.chunks();
  assert.equal(mc.map((c) => [c.blobIndex, c.index, c.fileOffset, c.uncompressedSize]), [[0, 1, 0, CS], [1, 70000, CS, CS], [0, 2, 2 * CS, CS], [1, 5, 3 * CS, 7]]);
  const sp = get('sparse').chunks();
  assert.equal(sp.map((c) => c.fileOffset), [0, 4 * CS], 'holes have no chunks');
  assert.equal(get('dupe').chunks()[1].index, 3);
  assert.is(get('empty').chunks().length, 0);
  assert.is(get('hard-a').ino, get('bigdir/hard-b').ino);
  assert.is(get('hard-a').nlink, 2);
  assert.is(get('bigdir').nlink, 3);
  assert.is(r.nlink, 4);
  assert.is(get('bigdir').children().length, 302);
  // childAt/childCount agree with children(); every name looks up to the same inode
  const big = get('bigdir');
  const kids = big.children();
  assert.is(big.childCount(), kids.length);
  kids.forEach((c, k) => {
    assert.equal(big.childAt(k), c);
    assert.is(big.lookup(c.name)!.ino, c.ino);
  });
  assert.is(big.lookup(Buffer.from('some-longish-file-name-0029')), undefined);
  expectErrno(() => big.childAt(kids.length));
  expectErrno(() => get('one').childCount(), 'ENOTDIR');
  assert.ok(get('bigdir').size > 4096, 'multi-block directory');
  assert.equal(get('bigdir').xattrs(), [['user.dir', Buffer.from('1')]]);
  assert.is(get('bigdir/some-longish-file-name-00299').mtime, 299);
  assert.is(get('bigdir/nested/leaf').chunks()[0].blobIndex, 1);
  assert.equal(get('link').readlink(), Buffer.from('one'));
  assert.equal(get('link4096').readlink(), Buffer.alloc(4096, 'p'));
  assert.equal(get('link-xattr').readlink(), Buffer.alloc(3000, 'q'));
  assert.is(get('chr').rdev, 0x0103);
  assert.is(get('fifo').mode, S_IFIFO | 0o640);
  assert.is(get('sock').mode & S_IFMT, S_IFSOCK);
  assert.is(get('emptydir').children().length, 0);
  expectErrno(() => get('one').readlink(), 'EINVAL');
  expectErrno(() => get('one').children(), 'ENOTDIR');
  assert.equal(sup.prefetchInodes, [get('hard-a').ino, get('bigdir/nested').ino, 128]);
  // chunk table: distinct (digest, blob), sorted
  const table = sup.chunkTable();
  assert.is(table.length, 10);
  for (let i = 1; i < table.length; i++) assert.ok(Buffer.compare(table[i - 1].digest, table[i].digest) < 0);
  assert.is(walkAll(sup), 320);
});

test('writer output is deterministic and survives read → rewrite byte-identically', () => {
  const a = buildTree();
  const b = buildTree();
  b.root.children.reverse();
  const bootA = writeBootstrapV6(a.root, a.opts);
  assert.equal(bootA, writeBootstrapV6(b.root, b.opts));
  const sup = loadV6(bootA);
  const { root, byIno } = toTree(sup);
  const again = writeBootstrapV6(root, {
    ...a.opts, blobs: sup.blobs, prefetch: sup.prefetchInodes.map((n) => byIno.get(n)!),
  });
  assert.ok(again.equals(bootA), 'rewrite is byte-identical');
});

test('writer rejects trees it cannot represent', () => {
  const bad = (mut: (t: ReturnType<typeof buildTree>) => void, re: RegExp) => {
    const t = buildTree();
    mut(t);
    expectErrno(() => writeBootstrapV6(t.root, t.opts), 'EINVAL', re);
  };
  bad((t) => t.root.children.push({ name: Buffer.from('one'), inode: new BuildInode({ mode: S_IFIFO }) }), /duplicate/);
  bad((t) => t.root.children.push({ name: Buffer.from('a/b'), inode: new BuildInode({ mode: S_IFIFO }) }), /'\/'/);
  bad((t) => t.root.children.push({ name: Buffer.from('..'), inode: new BuildInode({ mode: S_IFIFO }) }), /reserved/);
  bad((t) => t.root.children.push({ name: Buffer.alloc(256, 'a'), inode: new BuildInode({ mode: S_IFIFO }) }), /255/);
  bad((t) => t.root.children[1].inode.chunks[0].uncompressedOffset = 100, /aligned/);
  bad((t) => t.root.children[1].inode.chunks[0].blobIndex = 5, /blob index/);
  bad((t) => t.root.children[1].inode.xattrs.push(['bogus.x', Buffer.alloc(1)]), /xattr/);
  bad((t) => t.root.children.push({ name: Buffer.from('l'), inode: new BuildInode({ mode: S_IFLNK | 0o777, symlink: Buffer.alloc(4097) }) }), /symlink/);
});

test('image without blobs: meta at 0, root nid 128, no prefetch', () => {
  const root = new BuildInode({ mode: S_IFDIR | 0o755 });
  root.children.push({ name: Buffer.from('f'), inode: new BuildInode({ mode: S_IFREG | 0o644, size: 0 }) });
  const boot = writeBootstrapV6(root, {
    chunkSize: 0x100000, compressor: Compressor.Lz4Block, digester: DigestAlgorithm.Sha256, explicitUidGid: false, blobs: [], prefetch: [root], extraFlags: 0,
  });
  const sup = loadV6(boot);
  assert.is(sup.meta.raw.meta_blkaddr, 0);
  assert.is(sup.meta.rootIno, 128);
  assert.is(sup.meta.compressor, Compressor.Lz4Block);
  assert.is(sup.meta.digester, DigestAlgorithm.Sha256);
  assert.not.ok(sup.meta.explicitUidGid);
  assert.equal(sup.prefetchInodes, []);
  assert.is(sup.root().children()[0].name.toString(), 'f');
});

// -------------------------------------------------------------- hostile input

test('hostile: bad nids, truncation', () => {
  if (needFixtures('rafs-v6 hostile: bad nids, truncation (fixture part)')) {
    const sup = loadV6(fixture());
    expectErrno(() => sup.getInode(1e9), 'EINVAL', /outside/);
    expectErrno(() => sup.getInode(-1), 'EINVAL');
    expectErrno(() => sup.getInode(1.5), 'EINVAL');
    const buf = fixture();
    for (const n of [0, 100, 1024, 1100, 1500, 4096, 8192, 12288, 16384, 20000]) {
      expectErrno(() => { const s = loadV6(buf.subarray(0, n)); walkAll(s); });
    }
  }
  const { root, opts } = buildTree();
  const boot = writeBootstrapV6(root, opts);
  for (let n = 4096; n < boot.length; n += 4096) {
    try { walkAll(loadV6(boot.subarray(0, n))); } catch (e) { assert.instance(e, ErrnoError, String(e)); }
  }
});

test('hostile: crafted dirents, names and sizes', () => {
  if (!needFixtures('rafs-v6 hostile: crafted dirents, names and sizes')) return;
  // fixture root inline dirents start at 0x3040: 4 dirents, nameoff 48/49/51/57, names at 0x3070
  const patch = (f: (b: Buffer) => void) => { const b = fixture(); f(b); return loadV6(b); };
  expectErrno(() => patch((b) => b.writeUInt16LE(4000, 0x3048)).root().children(), 'EINVAL', /nameoff/);
  expectErrno(() => patch((b) => b.writeUInt16LE(60, 0x3060)).root().children(), 'EINVAL', /nameoff/);
  expectErrno(() => patch((b) => b.write('/', 0x3073)).root().children(), 'EINVAL', /'\/'/);
  // rename 'lib.rs' to a second '.' / '..' by moving the next nameoff
  expectErrno(() => patch((b) => { b.write('.', 0x3073); b.writeUInt16LE(52, 0x306c); }).root().children(), 'EINVAL', /duplicate '\.'/);
  expectErrno(() => patch((b) => { b.write('..', 0x3073); b.writeUInt16LE(53, 0x306c); }).root().children(), 'EINVAL', /duplicate '\.\.'/);
  expectErrno(() => patch((b) => b.writeBigUInt64LE(1n << 50n, 0x30a8)).root().lookup(Buffer.from('lib.rs'))!.chunks(), 'EINVAL', /chunk indexes/);
  expectErrno(() => patch((b) => b.writeUInt16LE(0x0100, 0x30e2)).root().lookup(Buffer.from('lib.rs'))!.chunks(), 'EINVAL', /blob index 0/);
  expectErrno(() => patch((b) => b.writeUInt16LE(0x0003, 0x30e2)).root().lookup(Buffer.from('lib.rs'))!.chunks(), 'EINVAL', /blob 2/);
  expectErrno(() => patch((b) => b.writeBigUInt64LE(99999999n, 0x3058)).root().lookup(Buffer.from('lib.rs')), 'EINVAL', /nid/);
  expectErrno(() => patch((b) => b.writeUInt16LE(0x0003, 0x30a0)).root().lookup(Buffer.from('lib.rs')), 'EINVAL', /compressed/);
  expectErrno(() => patch((b) => b.writeUInt16LE(0o170644, 0x30a4)).root().lookup(Buffer.from('lib.rs')), 'EINVAL', /i_mode/);
  expectErrno(() => patch((b) => b.writeUInt32LE(0x1234, 0x494)), 'EINVAL', /s_chunk_size/);
  expectErrno(() => patch((b) => b.writeUInt32LE(0x195, 0x480)), 'EINVAL', /compression/);
  expectErrno(() => patch((b) => b.writeUInt32LE(0x10194, 0x480)), 'EINVAL', /s_flags/);
  expectErrno(() => patch((b) => b.writeUInt32LE(0x1c, 0x450)), 'EINVAL', /feature_incompat/);
  expectErrno(() => patch((b) => b.writeUInt32LE(7, 0x1040)), 'EINVAL', /blob_index/);
});

test('hostile: random mutations only ever raise ErrnoError', () => {
  let x = 0x9e3779b9;
  const rnd = (n: number) => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x % n; };
  const { root, opts } = buildTree();
  const written = writeBootstrapV6(root, opts);
  const images = needFixtures('rafs-v6 hostile: random mutations of the fixture image') ? [fixture(), written] : [written];
  let failures = 0;
  for (let iter = 0; iter < 400; iter++) {
    const src = images[iter % images.length];
    const b = Buffer.from(src);
    const hot = [0x400, 0x480, 0x580, 0x1000, 0x2000 + 4096, 0x3000];
    for (let k = 0, n = 1 + rnd(4); k < n; k++) {
      const base = rnd(3) === 0 ? rnd(b.length) : hot[rnd(hot.length)] + rnd(256);
      b[Math.min(base, b.length - 1)] = rnd(256);
    }
    try {
      walkAll(loadV6(b));
    } catch (e) {
      failures++;
      assert.instance(e, ErrnoError, `iteration ${iter}: ${(e as Error)?.stack}`);
    }
  }
  assert.ok(failures > 0);
});

test.run();
