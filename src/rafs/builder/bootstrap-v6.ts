/**
 * RAFS v6 (EROFS-compatible) bootstrap writer (rafs-spec §3.1 layout, §3.2–§3.5
 * superblocks/device slots/blob table, §3.6 extended inodes, §3.7 inline
 * xattrs, §3.8 chunk indexes, §3.9 tail-packed directories and symlinks,
 * §3.10 prefetch table, §3.11 chunk table).
 *
 * The output is mountable by the Linux kernel (`mount -t erofs -o device=<blob>`)
 * when the blob is uncompressed. Differences from upstream nydus-image that do
 * not affect readers: a simple allocator (no first-fit reuse of partly used
 * blocks), the chunk header always advertises the fs chunk size (no
 * next_power_of_two trick), absent chunks (holes) become EROFS_NULL_ADDR
 * indexes, and xattr pairs are written in name order. Output is deterministic.
 */
import { einval, ensure } from '../../common/errno';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK } from '../../common/mode';
// (from where they are defined, not through a module that re-exports them: a compiled
// re-export is a getter, called at each use, and this code runs cold, once per build)
import { RAFS_MAX_CHUNKS_PER_BLOB, alignUp } from '../../storage/format/constants';
import { compressorFlag, digesterFlag, RafsSuperFlags, RAFS_MAX_NAME, RAFS_SUPER_FLAGS_KNOWN, validateChunkSize } from '../format/constants';
import {
  chunkHeaderFormat, EROFS_BLKSZ, EROFS_BLKSZ_BITS, EROFS_CHUNK_INDEX_SIZE, EROFS_DEVSLOT_SIZE, EROFS_DIRENT_SIZE,
  EROFS_FEATURE_COMPAT_RAFS_V6, EROFS_FT, EROFS_INODE_CHUNK_BASED, EROFS_INODE_EXTENDED_SIZE, EROFS_INODE_FLAT_INLINE,
  EROFS_INODE_FLAT_PLAIN, EROFS_NULL_ADDR, EROFS_SLOT_SIZE, EROFS_SUPER_MAGIC_V1, encodeChunkIndex,
  encodeDeviceSlot, encodeDirent, encodeErofsSuperBlock, encodeExtSuperBlock, encodeInode, encodeV6Blob,
  encodeXattrIbody, rafsChunkIndex, RAFSV6_BLOB_SIZE, RAFSV6_CHUNK_INFO_SIZE, RAFSV6_DEVSLOT_ALIGN,
  RAFSV6_DEVTABLE_OFFSET, RAFSV6_DEVT_SLOTOFF, RAFSV6_FEATURE_INCOMPAT,
} from '../format/v6';
// v6's chunk info record is v5's (format/v6.ts re-exports it as encodeChunkInfoRecord)
import { encodeChunkInfo as encodeChunkInfoRecord } from '../format/v5';
import { isAllowedXattr } from './xattr';
import type { ChunkInfo } from '../metadata/types';
import type { BootstrapOptions } from './options';
import type { BuildInode } from './tree';

const FT_OF: Record<number, number> = {
  [S_IFREG]: EROFS_FT.REG, [S_IFDIR]: EROFS_FT.DIR, [S_IFCHR]: EROFS_FT.CHR, [S_IFBLK]: EROFS_FT.BLK,
  [S_IFIFO]: EROFS_FT.FIFO, [S_IFSOCK]: EROFS_FT.SOCK, [S_IFLNK]: EROFS_FT.SYMLINK,
};
const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');
const MAX_SYMLINK = 4096;
/** the xattr body of every inode without xattrs (one buffer, not one each) */
const NO_XATTRS = Buffer.alloc(0);

interface DirEnt { name: Buffer; node: Node }

interface Node {
  inode: BuildInode;
  /** the directory it was first found in (undefined: the root) and its name there; see pathOf */
  dir?: Node;
  name: Buffer;
  ino: number;
  links: number;
  parent?: Node;
  /** directories: entries sorted by name, without `.`/`..` */
  entries: DirEnt[];
  xattrBody: Buffer;
  xattrIcount: number;
  layout: number;
  size: number;
  /** dir/symlink: bytes of data; regular: chunk count */
  dataLen: number;
  inline: boolean;
  /** dir/symlink whole blocks stored at `blkaddr` */
  fullBlocks: number;
  blkaddr: number;
  objSize: number;
  offset: number;
  nid: number;
  chunks: Array<ChunkInfo | undefined>;
}

/**
 * What a v6 bootstrap's layout depends on besides the tree: the layout
 * (inodes, directories, their places) is the same for any chunks and blobs
 * of that count, so a build can make it while its last chunks are still
 * being compressed (prepareBootstrapV6) and only fill in chunks and blobs
 * at the end.
 */
interface LayoutKey { root: BuildInode; chunkSize: number; blobCount: number; prefetch: BuildInode[]; explicitUidGid: boolean }

/** A bootstrap laid out without its chunks and blobs: inodes and directory data encoded in `image`. */
interface Layout {
  key: LayoutKey;
  nodes: Node[];
  rootNode: Node;
  entriesTotal: number;
  hasXattr: boolean;
  prefetchNodes: Node[];
  blobTableOffset: number;
  blobTableSize: number;
  prefetchOffset: number;
  prefetchSize: number;
  metaAddr: number;
  /** end of the inodes and directory blocks: where the chunk table goes */
  cursor: number;
  /** bytes [0, cursor): inodes and directory data (without chunk indexes), zeros elsewhere */
  image: Buffer;
}

/** A layout made ahead of `writeBootstrapV6` (opaque). */
export interface PreparedBootstrapV6 { readonly layout?: Layout }

/**
 * Lay out `root` for writeBootstrapV6 ahead of time, with what is known
 * before its chunks are: pass the result to writeBootstrapV6, which uses it
 * when called with the same root, chunk size, number of blobs, prefetch list
 * and uid/gid choice (else lays out again). The tree must not change in
 * between except for the chunks of its regular files and the root's mtime
 * (not stored). Never throws: a tree it cannot lay out is laid out again,
 * and refused, by writeBootstrapV6.
 */
export function prepareBootstrapV6(root: BuildInode, key: Omit<LayoutKey, 'root'>): PreparedBootstrapV6 {
  return runSteps(prepareBootstrapV6Steps(root, key));
}

/**
 * `prepareBootstrapV6` in steps of a few hundred inodes each (a generator:
 * each `next()` does one; the last returns the prepared layout), so that a
 * build can lay out its tree while it waits for its chunk workers' answers
 * without keeping them waiting for the whole layout (tens of ms for a few
 * thousand files: code that runs once per build, cold).
 */
export function* prepareBootstrapV6Steps(root: BuildInode, key: Omit<LayoutKey, 'root'>): Generator<void, PreparedBootstrapV6> {
  try {
    validateChunkSize(key.chunkSize);
    ensure(root.isDir(), 'root inode is not a directory');
    return { layout: yield* layoutV6Steps({ root, ...key }) };
  } catch {
    return {};
  }
}

/** inodes laid out per step of prepareBootstrapV6Steps */
const LAYOUT_STEP = 256;

function runSteps<T>(g: Generator<void, T>): T {
  for (;;) {
    const r = g.next();
    if (r.done) return r.value;
  }
}

function layoutV6(key: LayoutKey): Layout {
  return runSteps(layoutV6Steps(key));
}

function sameKey(a: LayoutKey, b: LayoutKey): boolean {
  return a.root === b.root && a.chunkSize === b.chunkSize && a.blobCount === b.blobCount && a.explicitUidGid === b.explicitUidGid &&
    a.prefetch.length === b.prefetch.length && a.prefetch.every((p, i) => p === b.prefetch[i]);
}

/** Serialize `root` as a RAFS v6 bootstrap (with a layout made by prepareBootstrapV6, when it fits). Throws EINVAL for trees it cannot represent. */
export function writeBootstrapV6(root: BuildInode, opts: BootstrapOptions, prepared?: PreparedBootstrapV6): Buffer {
  validateChunkSize(opts.chunkSize);
  const cs = opts.chunkSize;
  const blobs = opts.blobs;
  ensure(blobs.length < 255, `too many blobs (${blobs.length}); RAFS v6 allows at most 254`);
  blobs.forEach((b, i) => ensure(b.blobIndex === i, `blob ${b.blobId}: blobIndex ${b.blobIndex} != position ${i}`));
  ensure(root.isDir(), 'root inode is not a directory');
  const key: LayoutKey = { root, chunkSize: cs, blobCount: blobs.length, prefetch: opts.prefetch, explicitUidGid: opts.explicitUidGid };
  const L = prepared?.layout && sameKey(prepared.layout.key, key) ? prepared.layout : layoutV6(key);
  const { nodes, rootNode, entriesTotal, hasXattr, prefetchNodes, blobTableOffset, blobTableSize, prefetchOffset, prefetchSize, metaAddr, cursor } = L;
  const nblobs = blobs.length;
  for (const n of nodes) if (n.layout === EROFS_INODE_CHUNK_BASED) n.chunks = mapChunks(n, cs, opts);

  // ---- chunk table: distinct (digest, blob), last visit wins, sorted by digest then blob
  const table = new Map<string, ChunkInfo>();
  for (const n of nodes) {
    for (const c of n.chunks) if (c) table.set(c.digest.toString('latin1') + String.fromCharCode(c.blobIndex), c);
  }
  // keys are the digest's bytes as latin1 characters then the blob index as one (< 255 blobs): their string order is (digest, blob) order
  const records = [...table.keys()].sort().map((k) => table.get(k)!);
  const chunkTableSize = records.length * RAFSV6_CHUNK_INFO_SIZE;
  const chunkTableOffset = records.length > 0 ? cursor : 0;
  const end = alignUp(cursor + chunkTableSize, EROFS_BLKSZ);

  // ---- device slots: blocks and flat mapped addresses (512 KiB aligned)
  const slots: Array<{ blocks: number; mapped: number }> = [];
  let nextMapped = alignUp(end, RAFSV6_DEVSLOT_ALIGN) / EROFS_BLKSZ;
  let totalBlocks = 0;
  for (const b of blobs) {
    const blocks = Math.floor(b.uncompressedSize / EROFS_BLKSZ);
    slots.push({ blocks, mapped: nextMapped });
    totalBlocks += blocks;
    nextMapped = alignUp((nextMapped + blocks) * EROFS_BLKSZ, RAFSV6_DEVSLOT_ALIGN) / EROFS_BLKSZ;
  }
  ensure(totalBlocks <= 0xffffffff && nextMapped <= 0xffffffff, 'blobs are too large for a v6 device table');

  let flags = compressorFlag(opts.compressor) | digesterFlag(opts.digester) | opts.extraFlags;
  if (opts.explicitUidGid) flags |= RafsSuperFlags.EXPLICIT_UID_GID;
  if (hasXattr) flags |= RafsSuperFlags.HAS_XATTR;
  flags >>>= 0;
  ensure((flags & ~RAFS_SUPER_FLAGS_KNOWN) === 0, `unknown RAFS super flags 0x${flags.toString(16)}`);

  // ---- write
  const buf = Buffer.alloc(end);
  L.image.copy(buf);
  encodeErofsSuperBlock({
    magic: EROFS_SUPER_MAGIC_V1, checksum: 0, featureCompat: EROFS_FEATURE_COMPAT_RAFS_V6, blkszbits: EROFS_BLKSZ_BITS,
    sbExtslots: 0, rootNid: rootNode.nid, inos: entriesTotal, buildTime: 0, buildTimeNsec: 0, blocks: totalBlocks,
    metaBlkaddr: metaAddr / EROFS_BLKSZ, xattrBlkaddr: 0, uuid: Buffer.alloc(16), volumeName: Buffer.alloc(16),
    featureIncompat: RAFSV6_FEATURE_INCOMPAT, u1: 0, extraDevices: nblobs, devtSlotoff: RAFSV6_DEVT_SLOTOFF,
  }, buf);
  encodeExtSuperBlock({
    flags, blobTableOffset, blobTableSize, chunkSize: cs, chunkTableOffset, chunkTableSize,
    prefetchTableOffset: prefetchSize > 0 ? prefetchOffset : 0, prefetchTableSize: prefetchSize,
  }, buf);
  blobs.forEach((b, i) => {
    encodeDeviceSlot({ tag: Buffer.from(b.blobId, 'latin1'), blocks: slots[i].blocks, mappedBlkaddr: slots[i].mapped }, buf, RAFSV6_DEVTABLE_OFFSET + i * EROFS_DEVSLOT_SIZE);
    encodeV6Blob({
      blobId: b.blobId, blobIndex: i, chunkSize: cs, chunkCount: b.chunkCount, compressionAlgo: b.compressor,
      digestAlgo: b.digester, features: b.features, compressedSize: b.compressedSize, uncompressedSize: b.uncompressedSize,
      blobTocSize: b.tocSize, ciCompressor: b.metaCompressor, ciOffset: b.metaOffset, ciCompressedSize: b.metaCompressedSize,
      ciUncompressedSize: b.metaUncompressedSize, blobTocDigest: b.tocDigest, blobMetaDigest: Buffer.alloc(32),
      blobMetaSize: 0, cipherIv: Buffer.alloc(8), cipherAlgo: 0,
    }, buf, blobTableOffset + i * RAFSV6_BLOB_SIZE);
  });
  prefetchNodes.forEach((n, i) => {
    ensure(n.nid <= 0xffffffff, 'prefetch nid does not fit 32 bits');
    buf.writeUInt32LE(n.nid, prefetchOffset + i * 4);
  });

  for (const n of nodes) {
    if (n.layout !== EROFS_INODE_CHUNK_BASED) continue;
    const pos = alignUp(n.offset + EROFS_INODE_EXTENDED_SIZE + n.xattrBody.length, 8);
    n.chunks.forEach((c, k) => {
      const idx = c
        ? rafsChunkIndex(c.blobIndex, c.index, c.uncompressedOffset / EROFS_BLKSZ)
        : { advise: 0, deviceId: 0, blkaddr: EROFS_NULL_ADDR };
      encodeChunkIndex(idx, buf, pos + k * EROFS_CHUNK_INDEX_SIZE);
    });
  }
  records.forEach((c, i) => encodeChunkInfoRecord(c, buf, chunkTableOffset + i * RAFSV6_CHUNK_INFO_SIZE));
  return buf;
}

/** The layout of `key.root`: nodes, sizes, places, and the inodes and directory data encoded (in steps: prepareBootstrapV6Steps). */
function* layoutV6Steps(key: LayoutKey): Generator<void, Layout> {
  const { root, chunkSize: cs, blobCount: nblobs, prefetch, explicitUidGid } = key;
  // ---- collect nodes in allocation order: dir, its non-dir children, then subdirs (DFS)
  const nodes: Node[] = [];
  const byInode = new Map<BuildInode, Node>();
  let entriesTotal = 1;
  const mk = (inode: BuildInode, name: Buffer, dir?: Node, parent?: Node): Node => {
    const n: Node = {
      inode, dir, name, ino: 0, links: 0, parent, entries: [], xattrBody: NO_XATTRS, xattrIcount: 0, layout: 0,
      size: 0, dataLen: 0, inline: false, fullBlocks: 0, blkaddr: 0, objSize: 0, offset: 0, nid: 0, chunks: [],
    };
    byInode.set(inode, n);
    return n;
  };
  const place = (n: Node) => { n.ino = nodes.length + 1; nodes.push(n); };
  let sinceStep = 0;
  const visitDir = function* (dir: Node): Generator<void, void> {
    place(dir);
    const kids = sortedByName(dir.inode.children);
    const subdirs: Node[] = [];
    for (let i = 0; i < kids.length; i++) {
      if (++sinceStep === LAYOUT_STEP) { sinceStep = 0; yield; }
      const { name, inode } = kids[i];
      // paths for messages only: made when one is needed
      const path = () => childPath(dir, name);
      validateName(name, path);
      ensure(i === 0 || !kids[i - 1].name.equals(name), () => `duplicate directory entry ${path()}`);
      entriesTotal++;
      let n = byInode.get(inode);
      if (inode.isDir()) {
        ensure(!n, () => `directory ${path()} is linked more than once`);
        n = mk(inode, name, dir, dir);
        subdirs.push(n);
      } else if (!n) {
        n = mk(inode, name, dir);
        place(n);
      }
      n.links++;
      dir.entries.push({ name, node: n });
    }
    for (const s of subdirs) yield* visitDir(s);
  };
  const rootNode = mk(root, DOT);
  rootNode.links = 1;
  yield* visitDir(rootNode);

  // ---- per-node sizes and layouts
  let hasXattr = false;
  for (let k = 0; k < nodes.length; k++) {
    if (k % LAYOUT_STEP === LAYOUT_STEP - 1) yield;
    const n = nodes[k];
    const { inode } = n;
    const fmt = inode.mode & S_IFMT;
    ensure(FT_OF[fmt] !== undefined, () => `${pathOf(n)}: unsupported file mode 0${inode.mode.toString(8)}`);
    for (const [name, value] of inode.xattrs) {
      ensure(isAllowedXattr(name), () => `${pathOf(n)}: xattr name '${name}' is not allowed`);
      ensure(value.length <= 0xffff, () => `${pathOf(n)}: xattr '${name}' value is too large`);
    }
    const xa = inode.xattrs.length === 0 ? { body: NO_XATTRS, icount: 0 } : encodeXattrIbody([...inode.xattrs].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)));
    n.xattrBody = xa.body;
    n.xattrIcount = xa.icount;
    if (xa.icount) hasXattr = true;
    const head = EROFS_INODE_EXTENDED_SIZE + xa.body.length;
    if (fmt === S_IFDIR || fmt === S_IFLNK) {
      if (fmt === S_IFDIR) {
        n.size = dirSize([DOT, DOTDOT, ...n.entries.map((e) => e.name)]);
      } else {
        ensure(inode.symlink && inode.symlink.length > 0 && inode.symlink.length <= MAX_SYMLINK, () => `${pathOf(n)}: symlink target must be 1..${MAX_SYMLINK} bytes`);
        n.size = inode.symlink.length;
      }
      const tail = n.size % EROFS_BLKSZ;
      n.inline = tail !== 0 && head + tail <= EROFS_BLKSZ;
      n.layout = n.inline ? EROFS_INODE_FLAT_INLINE : EROFS_INODE_FLAT_PLAIN;
      n.fullBlocks = n.inline ? Math.floor(n.size / EROFS_BLKSZ) : Math.ceil(n.size / EROFS_BLKSZ);
      n.objSize = head + (n.inline ? tail : 0);
    } else if (fmt === S_IFREG) {
      ensure(Number.isSafeInteger(inode.size) && inode.size >= 0, () => `${pathOf(n)}: invalid size ${inode.size}`);
      n.size = inode.size;
      n.layout = EROFS_INODE_CHUNK_BASED;
      n.dataLen = Math.ceil(n.size / cs);
      n.objSize = alignUp(head, 8) + n.dataLen * EROFS_CHUNK_INDEX_SIZE;
    } else {
      n.size = 0;
      n.layout = EROFS_INODE_FLAT_PLAIN;
      n.objSize = head;
    }
  }

  // ---- fixed areas: superblocks, device slots, blob table, prefetch table
  const blobTableOffset = nblobs > 0 ? alignUp(RAFSV6_DEVTABLE_OFFSET + nblobs * EROFS_DEVSLOT_SIZE, EROFS_BLKSZ) : 0;
  const blobTableSize = nblobs * RAFSV6_BLOB_SIZE;
  const prefetchNodes: Node[] = [];
  if (nblobs > 0) {
    for (const p of prefetch) {
      const n = byInode.get(p);
      ensure(n, 'prefetch list names an inode that is not in the tree');
      prefetchNodes.push(n);
    }
  }
  const prefetchOffset = blobTableOffset + blobTableSize;
  const prefetchSize = prefetchNodes.length * 4;
  const metaAddr = nblobs > 0 ? alignUp(prefetchOffset + prefetchSize, EROFS_BLKSZ) : 0;

  // ---- allocate inodes (root first => nid 128), then whole data blocks
  let cursor = metaAddr + EROFS_BLKSZ;
  for (const n of nodes) {
    cursor = alignUp(cursor, EROFS_SLOT_SIZE);
    const mustFit = n.layout === EROFS_INODE_CHUNK_BASED ? EROFS_INODE_EXTENDED_SIZE + n.xattrBody.length : n.objSize;
    if (mustFit <= EROFS_BLKSZ && (cursor % EROFS_BLKSZ) + mustFit > EROFS_BLKSZ) cursor = alignUp(cursor, EROFS_BLKSZ);
    n.offset = cursor;
    n.nid = (cursor - metaAddr) / EROFS_SLOT_SIZE;
    cursor += n.objSize;
  }
  ensure(rootNode.nid === 128, 'internal error: root nid is not 128');
  cursor = alignUp(cursor, EROFS_BLKSZ);
  for (const n of nodes) {
    if (n.fullBlocks > 0) {
      n.blkaddr = cursor / EROFS_BLKSZ;
      cursor += n.fullBlocks * EROFS_BLKSZ;
    }
  }
  ensure(cursor / EROFS_BLKSZ < EROFS_NULL_ADDR, 'bootstrap is too large');

  const image = Buffer.alloc(cursor);
  const chunkFormat = chunkHeaderFormat(cs);
  for (let k = 0; k < nodes.length; k++) {
    if (k % LAYOUT_STEP === LAYOUT_STEP - 1) yield;
    const n = nodes[k];
    const { inode } = n;
    const fmt = inode.mode & S_IFMT;
    let u = 0;
    if (fmt === S_IFDIR || fmt === S_IFLNK) u = n.blkaddr;
    else if (fmt === S_IFREG) u = chunkFormat;
    else if (fmt === S_IFCHR || fmt === S_IFBLK) u = inode.rdev >>> 0;
    const isRoot = n === rootNode;
    const uid = explicitUidGid ? inode.uid : 0;
    const gid = explicitUidGid ? inode.gid : 0;
    ensure(uid >= 0 && uid <= 0xffffffff && gid >= 0 && gid <= 0xffffffff, () => `${pathOf(n)}: uid/gid out of range`);
    const nlink = fmt === S_IFDIR ? 2 + n.entries.filter((e) => e.node.inode.isDir()).length : Math.max(1, n.links);
    encodeInode({
      extended: true, layout: n.layout, xattrIcount: n.xattrIcount, mode: inode.mode & 0xffff, nlink, size: n.size, u,
      ino: n.ino, uid, gid, mtime: isRoot ? 0 : Math.max(0, Math.floor(inode.mtime)), mtimeNsec: isRoot ? 0 : inode.mtimeNsec >>> 0,
    }, image, n.offset);
    const bodyEnd = n.offset + EROFS_INODE_EXTENDED_SIZE + n.xattrBody.length;
    n.xattrBody.copy(image, n.offset + EROFS_INODE_EXTENDED_SIZE);
    if (fmt === S_IFDIR || fmt === S_IFLNK) {
      const data = fmt === S_IFDIR ? dirData(n) : inode.symlink!;
      const fullLen = n.fullBlocks * EROFS_BLKSZ;
      data.copy(image, n.blkaddr * EROFS_BLKSZ, 0, Math.min(fullLen, data.length));
      if (n.inline) data.copy(image, bodyEnd, fullLen);
    }
  }
  return {
    key, nodes, rootNode, entriesTotal, hasXattr, prefetchNodes, blobTableOffset, blobTableSize, prefetchOffset, prefetchSize, metaAddr, cursor, image,
  };
}

/** `children` in name order: the array itself when already sorted (trees are, see finalizeTree). */
function sortedByName<T extends { name: Buffer }>(children: T[]): T[] {
  for (let i = 1; i < children.length; i++) {
    if (Buffer.compare(children[i - 1].name, children[i].name) > 0) return [...children].sort((a, b) => Buffer.compare(a.name, b.name));
  }
  return children;
}

function validateName(name: Buffer, path: () => string): void {
  if (name.length === 0 || name.length > RAFS_MAX_NAME) throw einval(`${path()}: entry name must be 1..${RAFS_MAX_NAME} bytes`);
  if (name.includes(0x2f) || name.includes(0)) throw einval(`${path()}: entry name contains '/' or NUL`);
  if (name.length <= 2 && (name.equals(DOT) || name.equals(DOTDOT))) throw einval(`${path()}: entry name '.' or '..' is reserved`);
}

/** Image path of a node (for messages). */
function pathOf(n: Node): string {
  return n.dir ? childPath(n.dir, n.name) : '/';
}

function childPath(dir: Node, name: Buffer): string {
  const d = pathOf(dir);
  return `${d === '/' ? '' : d}/${name.toString('utf8')}`;
}

/** i_size of a directory holding `names` (§3.9 d_size rule). */
function dirSize(names: Buffer[]): number {
  let size = 0;
  for (const name of names) {
    const need = EROFS_DIRENT_SIZE + name.length;
    if ((size % EROFS_BLKSZ) + need > EROFS_BLKSZ) size = alignUp(size, EROFS_BLKSZ);
    size += need;
  }
  return size;
}

/** Directory data: blocks of dirents + names, entries sorted by raw bytes including `.`/`..`. */
function dirData(n: Node): Buffer {
  const all = sortedByName<{ name: Buffer; nid: number; ft: number }>([
    { name: DOT, nid: n.nid, ft: EROFS_FT.DIR },
    { name: DOTDOT, nid: (n.parent ?? n).nid, ft: EROFS_FT.DIR },
    ...n.entries.map((e) => ({ name: e.name, nid: e.node.nid, ft: FT_OF[e.node.inode.mode & S_IFMT] })),
  ]);
  const out = Buffer.alloc(alignUp(n.size, EROFS_BLKSZ));
  let i = 0;
  for (let block = 0; i < all.length; block++) {
    let used = 0;
    let j = i;
    while (j < all.length && used + EROFS_DIRENT_SIZE + all[j].name.length <= EROFS_BLKSZ) used += EROFS_DIRENT_SIZE + all[j++].name.length;
    const base = block * EROFS_BLKSZ;
    let nameoff = (j - i) * EROFS_DIRENT_SIZE;
    for (let k = i; k < j; k++) {
      encodeDirent({ nid: all[k].nid, nameoff, fileType: all[k].ft }, out, base + (k - i) * EROFS_DIRENT_SIZE);
      all[k].name.copy(out, base + nameoff);
      nameoff += all[k].name.length;
    }
    i = j;
  }
  return out.subarray(0, n.size);
}

/** Chunk for each chunk slot of a regular file (undefined = hole), validated (§3.8). */
function mapChunks(n: Node, cs: number, opts: BootstrapOptions): Array<ChunkInfo | undefined> {
  const out: Array<ChunkInfo | undefined> = new Array(n.dataLen).fill(undefined);
  for (const c of n.inode.chunks) {
    const k = c.fileOffset / cs;
    const blob = opts.blobs[c.blobIndex];
    // the usual case tested at once; the checks one by one (and their messages) only when it fails
    // (a build's bootstrap is made once, by code that has not warmed up: a closure per check and chunk shows)
    if (!(Number.isSafeInteger(c.fileOffset) && c.fileOffset % cs === 0 && c.fileOffset < n.size && out[k] === undefined &&
      c.uncompressedSize === Math.min(cs, n.size - c.fileOffset) && blob !== undefined && c.index >= 0 && c.index < RAFS_MAX_CHUNKS_PER_BLOB &&
      c.uncompressedOffset % EROFS_BLKSZ === 0 && c.digest.length === 32 &&
      c.uncompressedOffset + c.uncompressedSize <= alignUp(blob.uncompressedSize, EROFS_BLKSZ))) checkChunk(n, c, cs, opts, out);
    out[k] = c;
  }
  return out;
}

/** mapChunks' checks of chunk `c` of `n`, each with its message. */
function checkChunk(n: Node, c: ChunkInfo, cs: number, opts: BootstrapOptions, out: Array<ChunkInfo | undefined>): void {
  const where = () => `${pathOf(n)}: chunk at file offset ${c.fileOffset}`;
  ensure(Number.isSafeInteger(c.fileOffset) && c.fileOffset % cs === 0 && c.fileOffset < n.size, () => `${where()} is not a chunk boundary inside the file`);
  ensure(out[c.fileOffset / cs] === undefined, () => `${where()} appears twice`);
  const expect = Math.min(cs, n.size - c.fileOffset);
  ensure(c.uncompressedSize === expect, () => `${where()}: uncompressed size ${c.uncompressedSize} != ${expect}`);
  ensure(c.blobIndex >= 0 && c.blobIndex < opts.blobs.length, () => `${where()}: blob index ${c.blobIndex} is not in the blob table`);
  ensure(c.index >= 0 && c.index < RAFS_MAX_CHUNKS_PER_BLOB, () => `${where()}: chunk index ${c.index} exceeds 24 bits`);
  ensure(c.uncompressedOffset % EROFS_BLKSZ === 0, () => `${where()}: uncompressed offset ${c.uncompressedOffset} is not 4 KiB aligned`);
  ensure(c.digest.length === 32, () => `${where()}: digest must be 32 bytes`);
  const blob = opts.blobs[c.blobIndex];
  ensure(c.uncompressedOffset + c.uncompressedSize <= alignUp(blob.uncompressedSize, EROFS_BLKSZ), () => `${where()}: lies outside blob ${blob.blobId}'s uncompressed size`);
}
