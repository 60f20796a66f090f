/**
 * RAFS v5 bootstrap writer (rafs-spec §2): index assignment as upstream
 * `build_rafs` (§2.3), inode digests (§2.10), directory sizes and i_blocks
 * (§2.7), then superblock, inode table, prefetch table, blob tables and the
 * inode records in DFS pre-order (§2.1). Output depends only on the tree and
 * the options, so it is byte-for-byte deterministic.
 */
import { digest as hashBytes } from '../../common/digest';
import { einval, ensure } from '../../common/errno';
import {
  alignUp, BlobFeatures, compressorFlag, digesterFlag, RafsInodeFlags, RafsSuperFlags, RAFS_SUPER_VERSION_V5,
  validateChunkSize,
} from '../format/constants';
import {
  alignV5, encodeBlobTableV5, encodeChunkInfo, encodeExtBlobTableV5, encodeInodeTableV5, encodeInodeV5,
  encodePrefetchTableV5, encodeSuperBlockV5, encodeXattrsV5, RAFSV5_CHUNK_INFO_SIZE, RAFSV5_INODE_SIZE,
  RAFSV5_ROOT_INODE, RAFSV5_SUPERBLOCK_SIZE, RAFSV5_SUPER_MAGIC, validateEntryName, xattrPayloadSize,
  type RafsV5Inode,
} from '../format/v5';
import type { BootstrapOptions } from './options';
import { nlinkOf, type BuildInode } from './tree';

/** Pseudo dirent size added per child name for a directory's i_size (§2.7). */
const V5_VIRTUAL_ENTRY_SIZE = 8;
const ROOT_NAME = Buffer.from('/');

/** One directory entry of the tree with everything the v5 record needs. */
interface Entry {
  name: Buffer;
  inode: BuildInode;
  index: number;
  ino: number;
  parentIno: number;
  /** dirs: index of the first child (or the next free index when empty) */
  childIndex: number;
  children: Entry[];
  digest: Buffer;
}

/**
 * Assign indexes as upstream: root = 1; each directory's children get
 * consecutive indexes in name order, then the child directories are handled
 * in that order, depth first. Hardlinked regular files keep the ino of their
 * first occurrence. Returns the entries in DFS pre-order and the inode count.
 */
function assignIndexes(root: BuildInode): { preorder: Entry[]; inodesCount: number; firstIno: Map<BuildInode, number> } {
  ensure(root.isDir(), 'v5 bootstrap: root must be a directory');
  const mk = (name: Buffer, inode: BuildInode, index: number, ino: number, parentIno: number): Entry =>
    ({ name, inode, index, ino, parentIno, childIndex: 0, children: [], digest: Buffer.alloc(0) });
  const rootEntry = mk(ROOT_NAME, root, RAFSV5_ROOT_INODE, RAFSV5_ROOT_INODE, 0);
  const firstIno = new Map<BuildInode, number>([[root, RAFSV5_ROOT_INODE]]);
  const seenDirs = new Set<BuildInode>([root]);
  let next = RAFSV5_ROOT_INODE + 1;
  let inodesCount = 1;

  const stack: Entry[] = [rootEntry];
  while (stack.length > 0) {
    const dir = stack.pop()!;
    dir.childIndex = next;
    let prev: Buffer | undefined;
    for (const e of dir.inode.children) {
      validateEntryName(e.name, `v5 bootstrap: entry in directory ino ${dir.ino}`);
      ensure(!prev || Buffer.compare(prev, e.name) < 0,
        () => `v5 bootstrap: directory ino ${dir.ino} has unsorted or duplicate entry ${JSON.stringify(e.name.toString())}`);
      prev = e.name;
      const index = next++;
      let ino = index;
      const known = firstIno.get(e.inode);
      if (known !== undefined && e.inode.isReg()) {
        ino = known;
      } else {
        if (e.inode.isDir()) {
          ensure(!seenDirs.has(e.inode), () => `v5 bootstrap: directory ${JSON.stringify(e.name.toString())} is linked twice`);
          seenDirs.add(e.inode);
        }
        if (known === undefined) firstIno.set(e.inode, ino);
        inodesCount++;
      }
      dir.children.push(mk(e.name, e.inode, index, ino, dir.ino));
    }
    const subdirs = dir.children.filter((c) => c.inode.isDir());
    for (let i = subdirs.length - 1; i >= 0; i--) stack.push(subdirs[i]);
  }

  const preorder: Entry[] = [];
  const walk: Entry[] = [rootEntry];
  while (walk.length > 0) {
    const e = walk.pop()!;
    preorder.push(e);
    for (let i = e.children.length - 1; i >= 0; i--) walk.push(e.children[i]);
  }
  return { preorder, inodesCount, firstIno };
}

/** True unless chunk k covers file bytes from k * chunkSize for every k up to the size (§2.7 HAS_HOLE). */
function hasHole(inode: BuildInode, chunkSize: number): boolean {
  if (inode.chunks.length !== Math.ceil(inode.size / chunkSize)) return true;
  return inode.chunks.some((c, k) => c.fileOffset !== k * chunkSize);
}

function dirSize(e: Entry): number {
  if (e.children.length === 0) return 4096;
  return alignUp(e.children.reduce((n, c) => n + c.name.length + V5_VIRTUAL_ENTRY_SIZE, 0), 4096);
}

function inodeSize(e: Entry): number {
  const i = e.inode;
  if (i.isDir()) return dirSize(e);
  if (i.isSymlink()) return i.symlink?.length ?? 0;
  return i.size;
}

function buildRecord(e: Entry, opts: BootstrapOptions): Buffer {
  const i = e.inode;
  const symlink = i.isSymlink() ? i.symlink : undefined;
  if (i.isSymlink()) ensure(symlink && symlink.length > 0 && symlink.length <= 0xffff, () => `v5 bootstrap: symlink ino ${e.ino} has an invalid target`);
  const xattrs = encodeXattrsV5(i.xattrs);
  const chunkCount = i.isReg() ? i.chunks.length : 0;
  const size = inodeSize(e);
  let flags = 0;
  if (symlink) flags |= RafsInodeFlags.SYMLINK;
  if (xattrs.length > 0) flags |= RafsInodeFlags.XATTR;
  if (i.isReg() && hasHole(i, opts.chunkSize)) flags |= RafsInodeFlags.HAS_HOLE;
  const isRoot = e.index === RAFSV5_ROOT_INODE;

  const raw: RafsV5Inode = {
    digest: e.digest,
    parent: e.parentIno,
    ino: e.ino,
    uid: opts.explicitUidGid ? i.uid : 0,
    gid: opts.explicitUidGid ? i.gid : 0,
    projid: 0,
    mode: i.mode,
    size,
    blocks: Math.ceil((size + alignV5(i.xattrs.length ? xattrPayloadSize(i.xattrs) : 0)) / 512),
    flags,
    // upstream treats only regular files as hardlinks; other shared inodes get their own ino
    nlink: i.isReg() || i.isDir() ? nlinkOf(i) : 1,
    childIndex: i.isDir() ? e.childIndex : 0,
    childCount: i.isDir() ? e.children.length : chunkCount,
    nameSize: e.name.length,
    symlinkSize: symlink ? symlink.length : 0,
    rdev: i.rdev >>> 0,
    mtimeNsec: isRoot ? 0 : i.mtimeNsec,
    mtime: isRoot ? 0 : i.mtime,
  };
  const len = RAFSV5_INODE_SIZE + alignV5(raw.nameSize) + alignV5(raw.symlinkSize) + xattrs.length + chunkCount * RAFSV5_CHUNK_INFO_SIZE;
  const buf = Buffer.alloc(len);
  encodeInodeV5(raw, buf, 0);
  let p = RAFSV5_INODE_SIZE;
  e.name.copy(buf, p);
  p += alignV5(raw.nameSize);
  if (symlink) symlink.copy(buf, p);
  p += alignV5(raw.symlinkSize);
  xattrs.copy(buf, p);
  p += xattrs.length;
  for (const c of i.isReg() ? i.chunks : []) {
    ensure(c.blobIndex < opts.blobs.length, () => `v5 bootstrap: chunk of ino ${e.ino} refers to missing blob ${c.blobIndex}`);
    encodeChunkInfo(c, buf, p);
    p += RAFSV5_CHUNK_INFO_SIZE;
  }
  return buf;
}

/** Serialize `root` (finalized with `finalizeTree`) as a RAFS v5 bootstrap. */
export function writeBootstrapV5(root: BuildInode, opts: BootstrapOptions): Buffer {
  validateChunkSize(opts.chunkSize);
  const { preorder, inodesCount, firstIno } = assignIndexes(root);
  const H = (...b: Buffer[]) => hashBytes(opts.digester, ...b);

  // §2.10 digests; descendants follow their ancestors in pre-order, so walk it backwards.
  for (let k = preorder.length - 1; k >= 0; k--) {
    const e = preorder[k];
    const i = e.inode;
    if (i.isDir()) e.digest = H(...e.children.map((c) => c.digest));
    else if (i.isReg()) e.digest = H(...i.chunks.map((c) => c.digest));
    else if (i.isSymlink()) e.digest = H(i.symlink ?? Buffer.alloc(0));
    else e.digest = H();
  }

  const prefetch = opts.prefetch.map((p) => {
    const ino = firstIno.get(p);
    if (ino === undefined) throw einval('v5 bootstrap: prefetch inode is not part of the tree');
    return ino;
  });
  const inodeTableEntries = preorder.length;
  const itabSize = alignV5(inodeTableEntries * 4);
  const prefetchTable = encodePrefetchTableV5(prefetch);
  const blobTable = encodeBlobTableV5(opts.blobs.map((b) => ({ readaheadOffset: b.readaheadOffset, readaheadSize: b.readaheadSize, blobId: b.blobId })));
  const extTable = encodeExtBlobTableV5(opts.blobs.map((b) => ({
    chunkCount: b.chunkCount,
    features: (b.features & ~BlobFeatures._V5_NO_EXT_BLOB_TABLE) >>> 0,
    uncompressedSize: b.uncompressedSize,
    compressedSize: b.compressedSize,
  })));

  const prefetchTableOffset = RAFSV5_SUPERBLOCK_SIZE + itabSize;
  const blobTableOffset = prefetchTableOffset + prefetchTable.length;
  const extTableOffset = blobTableOffset + blobTable.length;
  const records = preorder.map((e) => buildRecord(e, opts));
  const offsets = new Array<number>(inodeTableEntries);
  let off = extTableOffset + extTable.length;
  preorder.forEach((e, k) => { offsets[e.index - 1] = off; off += records[k].length; });

  const hasXattr = preorder.some((e) => e.inode.xattrs.length > 0);
  const flags = compressorFlag(opts.compressor) | digesterFlag(opts.digester)
    | (opts.explicitUidGid ? RafsSuperFlags.EXPLICIT_UID_GID : 0)
    | (hasXattr ? RafsSuperFlags.HAS_XATTR : 0)
    | opts.extraFlags;
  const sb = encodeSuperBlockV5({
    magic: RAFSV5_SUPER_MAGIC,
    version: RAFS_SUPER_VERSION_V5,
    sbSize: RAFSV5_SUPERBLOCK_SIZE,
    blockSize: opts.chunkSize,
    flags: flags >>> 0,
    inodesCount,
    inodeTableOffset: RAFSV5_SUPERBLOCK_SIZE,
    prefetchTableOffset,
    blobTableOffset,
    inodeTableEntries,
    prefetchTableEntries: prefetch.length,
    blobTableSize: blobTable.length,
    extendedBlobTableEntries: opts.blobs.length,
    extendedBlobTableOffset: extTableOffset,
  });
  return Buffer.concat([sb, encodeInodeTableV5(offsets), prefetchTable, blobTable, extTable, ...records]);
}
