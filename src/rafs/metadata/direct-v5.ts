/**
 * RAFS v5 bootstrap reader (rafs-spec §2): validates the superblock and
 * tables at load time and decodes inode records lazily, straight from the
 * bootstrap buffer. Also the §2.10 inode digest check used by `check`.
 *
 * Safety against hostile images: every offset is bounds-checked before use,
 * counts are checked against the buffer before anything is allocated, and a
 * directory's children must have larger indexes than the directory itself,
 * so no walk of the tree can loop.
 */
import { BoundedMap } from '../../common/bounded-map';
import { Compressor } from '../../common/compress';
import { digest as hashBytes, DigestAlgorithm } from '../../common/digest';
import { einval, enoent, enotdir, ensure } from '../../common/errno';
import {
  BlobFeatures, compressorFromFlags, digesterFromFlags, RafsInodeFlags, RafsSuperFlags,
} from '../format/constants';
import {
  alignV5, decodeBlobTableV5, decodeChunkInfo, decodeExtBlobTableV5, decodeInodeTableV5, decodeInodeV5,
  decodePrefetchTableV5, decodeSuperBlockV5, decodeXattrsV5, hasV5Magic, inodeOffsetFromTable,
  RAFSV5_CHUNK_INFO_SIZE, RAFSV5_INODE_SIZE, RAFSV5_ROOT_INODE, validateEntryName, validateSuperBlockV5,
  type RafsV5Inode, type RafsV5SuperBlock,
} from '../format/v5';
import { InodeType, noBlobMeta, type BlobInfo, type ChunkInfo, type RafsDirent, type RafsInode, type RafsSuper, type RafsSuperMeta } from './types';

const S_IFMT = 0o170000;
const MODE_TYPES: Record<number, InodeType> = {
  0o100000: InodeType.File, 0o040000: InodeType.Dir, 0o020000: InodeType.Chr, 0o060000: InodeType.Blk,
  0o010000: InodeType.Fifo, 0o140000: InodeType.Sock, 0o120000: InodeType.Symlink,
};
/** Every BlobFeatures bit that may appear on disk (§1.4); others are dropped as upstream does. */
const BLOB_FEATURES_ON_DISK = Object.values(BlobFeatures).reduce((a, b) => a | b, 0) & ~BlobFeatures._V5_NO_EXT_BLOB_TABLE;

/** Magic + version probe (§2.2). */
export function isV5(buf: Buffer): boolean {
  return hasV5Magic(buf);
}

/** Validate and open a v5 bootstrap held in memory. */
export function loadV5(buf: Buffer): DirectSuperV5 {
  return new DirectSuperV5(buf);
}

/** One inode record, decoded and validated at its table index. */
export class DirectInodeV5 implements RafsInode {
  readonly ino: number;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly size: number;
  readonly nlink: number;
  readonly rdev: number;
  readonly mtime: number;
  readonly mtimeNsec: number;
  readonly blocks: number;
  readonly type: InodeType;
  readonly name: Buffer;
  private readonly symlinkTarget?: Buffer;
  private readonly xattrOffset: number;
  private readonly chunkOffset: number;

  constructor(private readonly sb: DirectSuperV5, readonly index: number, readonly offset: number, readonly raw: RafsV5Inode) {
    const buf = sb.buf;
    const what = `v5 inode index ${index}`;
    const type = MODE_TYPES[raw.mode & S_IFMT];
    ensure(type !== undefined, () => `${what}: invalid i_mode 0o${raw.mode.toString(8)}`);
    ensure(raw.ino >= 1 && raw.ino <= sb.inodeTableEntries, () => `${what}: i_ino ${raw.ino} is outside the inode table`);
    ensure(raw.nlink > 0, () => `${what}: i_nlink is 0`);
    ensure(index === RAFSV5_ROOT_INODE || raw.parent !== 0, () => `${what}: i_parent is 0`);
    ensure(raw.nameSize > 0, () => `${what}: i_name_size is 0`);
    this.type = type;
    this.ino = raw.ino;
    this.mode = raw.mode;
    this.uid = raw.uid;
    this.gid = raw.gid;
    this.size = raw.size;
    this.nlink = raw.nlink;
    this.rdev = raw.rdev;
    this.mtime = raw.mtime;
    this.mtimeNsec = raw.mtimeNsec;
    this.blocks = raw.blocks;

    let p = offset + RAFSV5_INODE_SIZE;
    ensure(p + alignV5(raw.nameSize) + alignV5(raw.symlinkSize) <= buf.length, () => `${what}: name/symlink run past the bootstrap end`);
    this.name = buf.subarray(p, p + raw.nameSize);
    if (index !== RAFSV5_ROOT_INODE) validateEntryName(this.name, what);
    p += alignV5(raw.nameSize);
    if (type === InodeType.Symlink) {
      ensure(raw.symlinkSize > 0, () => `${what}: symlink with empty target`);
      this.symlinkTarget = buf.subarray(p, p + raw.symlinkSize);
    }
    p += alignV5(raw.symlinkSize);
    this.xattrOffset = p;
    if (raw.flags & RafsInodeFlags.XATTR) p += decodeXattrsV5(buf, p).blockSize;
    this.chunkOffset = p;

    if (type === InodeType.Dir) {
      // Dirs are never hardlinked, and children always come after their parent:
      // this makes every walk over children terminate.
      ensure(raw.ino === index, () => `${what}: directory i_ino ${raw.ino} differs from its index`);
      if (raw.childCount > 0) {
        ensure(raw.childIndex > index && raw.childIndex + raw.childCount - 1 <= sb.inodeTableEntries,
          () => `${what}: child range [${raw.childIndex}, +${raw.childCount}) is invalid`);
      }
    } else if (type === InodeType.File) {
      ensure(p + raw.childCount * RAFSV5_CHUNK_INFO_SIZE <= buf.length,
        () => `${what}: ${raw.childCount} chunk records run past the bootstrap end`);
    }
  }

  get digest(): Buffer { return this.raw.digest; }
  get flags(): number { return this.raw.flags; }
  isDir(): boolean { return this.type === InodeType.Dir; }
  isReg(): boolean { return this.type === InodeType.File; }
  isSymlink(): boolean { return this.type === InodeType.Symlink; }
  hasHole(): boolean { return (this.raw.flags & RafsInodeFlags.HAS_HOLE) !== 0; }

  readlink(): Buffer {
    if (!this.symlinkTarget) throw einval(`inode ${this.ino} is not a symlink`);
    return Buffer.from(this.symlinkTarget);
  }

  xattrs(): Array<[string, Buffer]> {
    if (!(this.raw.flags & RafsInodeFlags.XATTR)) return [];
    return decodeXattrsV5(this.sb.buf, this.xattrOffset).pairs;
  }

  /** Child records in index (= name) order. */
  childInodes(): DirectInodeV5[] {
    const out: DirectInodeV5[] = [];
    for (let i = 0; i < this.childCount(); i++) out.push(this.childInode(i));
    return out;
  }

  childCount(): number {
    if (!this.isDir()) throw enotdir(`inode ${this.ino} is not a directory`);
    return this.raw.childCount;
  }

  /** Child record `i` (checked against its directory, its hardlink target and its predecessor). */
  private childInode(i: number): DirectInodeV5 {
    ensure(Number.isInteger(i) && i >= 0 && i < this.childCount(), () => `v5 directory ino ${this.ino}: no child ${i}`);
    const child = this.sb.inodeAt(this.raw.childIndex + i);
    ensure(child.raw.parent === this.ino, () => `v5 inode index ${child.index}: i_parent ${child.raw.parent} != directory ino ${this.ino}`);
    if (child.ino !== child.index) {
      // a hardlink entry: the record of its first occurrence must be the same kind of inode
      const first = this.sb.inodeAt(child.ino);
      ensure(first.ino === child.ino && first.type === child.type,
        () => `v5 inode index ${child.index}: hardlink to ino ${child.ino} whose record does not match`);
    }
    if (i > 0) {
      ensure(Buffer.compare(this.sb.inodeAt(this.raw.childIndex + i - 1).name, child.name) < 0,
        () => `v5 directory ino ${this.ino}: children are not sorted or have duplicate names at index ${child.index}`);
    }
    return child;
  }

  childAt(k: number): RafsDirent {
    const c = this.childInode(k);
    return { name: Buffer.from(c.name), ino: c.ino, type: c.type };
  }

  children(): RafsDirent[] {
    const out: RafsDirent[] = [];
    for (let i = 0; i < this.childCount(); i++) out.push(this.childAt(i));
    return out;
  }

  lookup(name: Buffer): RafsInode | undefined {
    if (!this.isDir()) throw enotdir(`inode ${this.ino} is not a directory`);
    let lo = 0, hi = this.raw.childCount - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const child = this.sb.inodeAt(this.raw.childIndex + mid);
      const c = Buffer.compare(child.name, name);
      if (c === 0) return child;
      if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return undefined;
  }

  /** Chunk records in on-disk order. */
  rawChunks(): ChunkInfo[] {
    if (!this.isReg()) return [];
    const out: ChunkInfo[] = [];
    for (let i = 0; i < this.raw.childCount; i++) {
      const c = decodeChunkInfo(this.sb.buf, this.chunkOffset + i * RAFSV5_CHUNK_INFO_SIZE);
      ensure(c.blobIndex < this.sb.blobs.length, () => `v5 inode ${this.ino}: chunk ${i} refers to missing blob ${c.blobIndex}`);
      out.push(c);
    }
    return out;
  }

  chunks(): ChunkInfo[] {
    const out = this.rawChunks();
    if (this.hasHole()) out.sort((a, b) => a.fileOffset - b.fileOffset);
    return out;
  }
}

export class DirectSuperV5 implements RafsSuper {
  readonly sb: RafsV5SuperBlock;
  readonly meta: RafsSuperMeta;
  readonly blobs: BlobInfo[];
  readonly prefetchInodes: number[];
  private readonly table: Uint32Array;
  /** decoded inode records by table index (bounded) */
  private readonly cache = new BoundedMap<number, DirectInodeV5>(1 << 16);

  constructor(readonly buf: Buffer) {
    const sb = decodeSuperBlockV5(buf);
    validateSuperBlockV5(sb, buf.length);
    ensure(sb.inodeTableEntries >= 1, 'v5 superblock: empty inode table');
    this.sb = sb;
    this.table = decodeInodeTableV5(buf, sb.inodeTableOffset, sb.inodeTableEntries);
    this.prefetchInodes = decodePrefetchTableV5(buf, sb.prefetchTableOffset, sb.prefetchTableEntries);
    for (const ino of this.prefetchInodes) {
      ensure(ino <= sb.inodeTableEntries, () => `v5 prefetch table: inode ${ino} is outside the inode table`);
    }
    this.blobs = this.loadBlobs();
    this.meta = {
      version: 5,
      flags: sb.flags,
      chunkSize: sb.blockSize,
      compressor: compressorFromFlags(sb.flags),
      digester: digesterFromFlags(sb.flags),
      explicitUidGid: (sb.flags & RafsSuperFlags.EXPLICIT_UID_GID) !== 0,
      hasXattr: (sb.flags & RafsSuperFlags.HAS_XATTR) !== 0,
      inodesCount: sb.inodesCount,
      rootIno: RAFSV5_ROOT_INODE,
      raw: {
        magic: sb.magic,
        version: sb.version,
        sb_size: sb.sbSize,
        root_inode: RAFSV5_ROOT_INODE,
        chunk_size: sb.blockSize,
        batch_size: 0,
        inodes_count: sb.inodesCount,
        flags: sb.flags,
        inode_table_entries: sb.inodeTableEntries,
        inode_table_offset: sb.inodeTableOffset,
        blob_table_size: sb.blobTableSize,
        blob_table_offset: sb.blobTableOffset,
        extended_blob_table_offset: sb.extendedBlobTableOffset,
        extended_blob_table_entries: sb.extendedBlobTableEntries,
        prefetch_table_offset: sb.prefetchTableOffset,
        prefetch_table_entries: sb.prefetchTableEntries,
      },
    };
  }

  get inodeTableEntries(): number { return this.sb.inodeTableEntries; }

  private loadBlobs(): BlobInfo[] {
    const { sb, buf } = this;
    const entries = decodeBlobTableV5(buf, sb.blobTableOffset, sb.blobTableSize);
    const ext = decodeExtBlobTableV5(buf, sb.extendedBlobTableOffset, sb.extendedBlobTableEntries);
    ensure(ext.length === 0 || ext.length >= entries.length,
      () => `v5 extended blob table has ${ext.length} entries for ${entries.length} blobs`);
    return entries.map((e, i) => {
      const x = ext[i];
      if (x) ensure(!(x.features & BlobFeatures._V5_NO_EXT_BLOB_TABLE), () => `v5 extended blob table: blob ${i} has internal feature bit 0x80000000`);
      return {
        blobIndex: i,
        blobId: e.blobId,
        chunkSize: sb.blockSize,
        chunkCount: x ? x.chunkCount : 0,
        compressor: compressorFromFlags(sb.flags),
        digester: digesterFromFlags(sb.flags),
        features: x ? (x.features & BLOB_FEATURES_ON_DISK) >>> 0 : BlobFeatures._V5_NO_EXT_BLOB_TABLE,
        compressedSize: x ? x.compressedSize : 0,
        uncompressedSize: x ? x.uncompressedSize : 0,
        ...noBlobMeta(),
        readaheadOffset: e.readaheadOffset,
        readaheadSize: e.readaheadSize,
      };
    });
  }

  /** The record stored at inode-table index `index` (1-based). */
  inodeAt(index: number): DirectInodeV5 {
    if (!Number.isInteger(index) || index < 1 || index > this.sb.inodeTableEntries) {
      throw enoent(`v5 inode index ${index} is outside the inode table (1..${this.sb.inodeTableEntries})`);
    }
    let inode = this.cache.get(index);
    if (!inode) {
      const off = inodeOffsetFromTable(this.table[index - 1], index, this.buf.length);
      inode = new DirectInodeV5(this, index, off, decodeInodeV5(this.buf, off));
      this.cache.set(index, inode);
    }
    return inode;
  }

  getInode(ino: number): DirectInodeV5 {
    const inode = this.inodeAt(ino);
    ensure(inode.ino === ino, () => `v5 inode table: record at index ${ino} has i_ino ${inode.ino}`);
    return inode;
  }

  root(): DirectInodeV5 {
    const root = this.getInode(RAFSV5_ROOT_INODE);
    ensure(root.isDir(), 'v5 root inode is not a directory');
    return root;
  }

  /** Chunk records of every regular-file inode (hardlink duplicates counted once), in index order. */
  chunkTable(): ChunkInfo[] {
    return [...this.chunkRecords()];
  }

  *chunkRecords(): Generator<ChunkInfo> {
    for (let i = 1; i <= this.sb.inodeTableEntries; i++) {
      const inode = this.inodeAt(i);
      if (inode.isReg() && inode.ino === i) yield* inode.rawChunks();
    }
  }
}

/** The §2.10 digest an inode record should carry, from its chunks / target / children. */
export function expectedInodeDigestV5(inode: DirectInodeV5, alg: DigestAlgorithm): Buffer {
  if (inode.isReg()) return hashBytes(alg, ...inode.rawChunks().map((c) => c.digest));
  if (inode.isSymlink()) return hashBytes(alg, inode.readlink());
  if (inode.isDir()) return hashBytes(alg, ...inode.childInodes().map((c) => c.digest));
  return hashBytes(alg);
}

/**
 * Check the i_digest of every inode record (§2.10); throws EINVAL naming the
 * first bad one, returns the number of records checked. blake3 images need
 * `await initDigest()` first.
 */
export function verifyInodeDigestsV5(sb: RafsSuper): number {
  if (!(sb instanceof DirectSuperV5)) throw einval('inode digest verification needs a RAFS v5 bootstrap');
  const alg = sb.meta.digester;
  const n = sb.inodeTableEntries;
  for (let i = 1; i <= n; i++) {
    const inode = sb.inodeAt(i);
    const want = expectedInodeDigestV5(inode, alg);
    ensure(want.equals(inode.digest),
      () => `v5 inode index ${i} (ino ${inode.ino}, name ${JSON.stringify(inode.name.toString('utf8'))}): i_digest ${inode.digest.toString('hex')} != expected ${want.toString('hex')}`);
  }
  return n;
}
