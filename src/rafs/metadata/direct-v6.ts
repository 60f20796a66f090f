/**
 * RAFS v6 bootstrap reader (rafs-spec §3: EROFS superblock §3.2, ext-SB §3.3,
 * device slots §3.4, blob table §3.5, inodes §3.6, xattrs §3.7, chunk indexes
 * §3.8, directories/symlinks §3.9, prefetch §3.10, chunk table §3.11).
 *
 * Also reads plain EROFS images written by `mkfs.erofs` (no RAFS ext-SB):
 *  - FLAT_PLAIN / FLAT_INLINE regular file data lives in the image itself and is
 *    exposed as chunks with `blobIndex = -1` ("the bootstrap itself"): uncompressed,
 *    `compressedOffset = uncompressedOffset = byte offset in the image`, digest
 *    all zero. For plain EROFS images `meta.chunkSize` is 4096 and every chunk
 *    (including the chunks of chunk-based files, which are split) covers
 *    `[k*4096, min((k+1)*4096, size))`, so `fileOffset = k * meta.chunkSize` holds.
 *  - chunk-based files (`--chunksize`, `--blobdev`) resolve device 0 to
 *    `blobIndex = -1` and device `d ≥ 1` to blob `d-1` (one BlobInfo per device
 *    slot, compressor none), offset = blkaddr * 4096, digest all zero.
 * EROFS_NULL_ADDR chunk indexes are holes: no chunk is returned for them.
 * FUSE inode number = nid.
 */
import { Compressor } from '../../common/compress';
import { DigestAlgorithm } from '../../common/digest';
import { eio, einval, enotdir, ensure, ErrnoError } from '../../common/errno';
import {
  BlobChunkFlags, BlobFeatures, compressorFromFlags, digesterFromFlags, EROFS_BLOCK_SIZE, RafsSuperFlags,
  RAFS_MAX_CHUNKS_PER_BLOB, RAFS_SUPER_FLAGS_KNOWN, RAFS_SUPER_VERSION_V6, validateChunkSize,
} from '../format/constants';
import {
  decodeChunkIndex, decodeDeviceSlot, decodeDirBlock, decodeErofsSuperBlock,
  decodeExtSuperBlock, decodeInode, decodeV6Blob, decodeXattrEntry, decodeXattrIbody, EROFS_BLKSZ,
  EROFS_BLKSZ_BITS, EROFS_CHUNK_FORMAT_BLKBITS_MASK, EROFS_CHUNK_FORMAT_INDEXES, EROFS_CHUNK_INDEX_SIZE,
  EROFS_DEVSLOT_SIZE, EROFS_FEATURE_COMPAT_RAFS_V6, EROFS_FEATURE_INCOMPAT_TOLERATED, EROFS_INODE_CHUNK_BASED,
  EROFS_INODE_FLAT_INLINE, EROFS_INODE_FLAT_PLAIN, EROFS_NULL_ADDR, EROFS_SUPER_MAGIC_V1, EROFS_SUPER_OFFSET,
  EROFS_SUPER_SIZE, ErofsInode, ErofsSuperBlock, inodeSize, parseRafsChunkIndex, RafsV6ExtSuperBlock,
  RAFSV6_BLOB_SIZE, RAFSV6_DEVTABLE_OFFSET, RAFSV6_FEATURE_INCOMPAT, xattrIbodySize,
} from '../format/v6';
import type { BlobInfo, ChunkInfo, InodeType, RafsDirent, RafsInode, RafsSuper, RafsSuperMeta } from './types';
import { noBlobMeta } from './types';
import { BoundedMap } from '../../common/bounded-map';
import { ChunkTable } from './chunk-table';
import { dropMappedPages } from '../../common/libc';

/**
 * A mapped bootstrap (image.ts) gives back the pages it touched after every
 * this many inode, chunk or directory-block reads (and after whole-table
 * walks): they stay in the page cache, out of the daemon's RSS. Dropping
 * costs well under a millisecond; pages touched again fault back in from
 * the page cache. Each fault maps up to 64 KiB around the page touched
 * (the kernel's fault-around): at 4096 reads a drop, 8 of the 19 MB of a
 * 100,000-file bootstrap were resident at the end of a read of every file.
 */
const DROP_PAGES_EVERY = 1024;

/**
 * Decoded inodes kept (FIFO): enough for the requests of the files being
 * read (lookup, open, read, release); decoding one is a few field reads, and
 * a small cache lets them die young instead of filling V8's old space.
 */
const INODE_CACHE_LIMIT = 2048;
/**
 * Directory tables kept (FIFO), by count and by bytes over all of them (a
 * table is about as large as the directory's blocks in the bootstrap).
 */
const DIR_CACHE_LIMIT = 1024;
const DIR_CACHE_MAX_BYTES = 64 << 20;

/** Chunk-info lookup for one blob, built from its blob.meta by the storage layer. */
export interface BlobChunkTable {
  get(ciIndex: number): ChunkInfo | undefined;
}

export interface LoadV6Options {
  blobMeta?: (blob: BlobInfo) => BlobChunkTable | undefined;
  /** see LoadOptions.metaOptional */
  metaOptional?: boolean;
}

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;
const S_IFSOCK = 0o140000;
const MODE_TO_TYPE: Record<number, InodeType> = {
  [S_IFREG]: 1, [S_IFDIR]: 2, [S_IFCHR]: 3, [S_IFBLK]: 4, [S_IFIFO]: 5, [S_IFSOCK]: 6, [S_IFLNK]: 7,
};
const ZERO_DIGEST = Buffer.alloc(32);
/** Upper bound on symlink targets (nydusd rejects longer ones). */
const MAX_SYMLINK = 4096;
/** Cap on 4 KiB pieces listed for one plain-EROFS file (64 GiB). */
/**
 * Pieces (4 KiB each) one plain-EROFS file may have: 1 GiB. The list is built
 * whole, so this bounds what one inode of a crafted image costs (chunk indexes
 * may all name the same block: the data size bounds nothing).
 */
const MAX_PLAIN_PIECES = 1 << 18;

/** True when `buf` carries an EROFS superblock (nydus v6 or plain EROFS). */
export function isV6(buf: Buffer): boolean {
  return buf.length >= EROFS_SUPER_OFFSET + EROFS_SUPER_SIZE && buf.readUInt32LE(EROFS_SUPER_OFFSET) === EROFS_SUPER_MAGIC_V1;
}

/** Load a v6 / EROFS bootstrap held in memory. Throws ErrnoError only. */
export function loadV6(buf: Buffer, opts: LoadV6Options = {}): RafsSuper {
  try {
    return new V6Super(buf, opts);
  } catch (e) {
    throw asErrno(e);
  }
}

/** Run `fn`, turning any non-ErrnoError (e.g. a RangeError from a Buffer read) into EINVAL. */
function guard<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw asErrno(e);
  }
}

function asErrno(e: unknown): ErrnoError {
  if (e instanceof ErrnoError) return e;
  return einval(`malformed v6 bootstrap: ${(e as Error)?.message ?? String(e)}`, e);
}

interface Device {
  blobIndex: number;
  mappedBlkaddr: number;
  blocks: number;
}

class V6Super implements RafsSuper {
  readonly meta: RafsSuperMeta;
  readonly blobs: BlobInfo[] = [];
  readonly prefetchInodes: number[] = [];
  readonly sb: ErofsSuperBlock;
  readonly ext?: RafsV6ExtSuperBlock;
  readonly rafs: boolean;
  readonly metaBase: number;
  readonly chunkSize: number;
  readonly deviceIdMask: number;
  private readonly devices: Device[] = [];
  private table: ChunkTable | undefined;
  /** decoded inodes (bounded, so huge images don't pin every inode in memory) */
  private readonly inodes = new BoundedMap<number, V6Inode>(INODE_CACHE_LIMIT);
  private readonly blobTables = new Map<number, BlobChunkTable | undefined>();
  /** decoded directories, apart from the inodes: a directory stays while its many children come and go */
  readonly dirs = new BoundedMap<number, DirTable>(DIR_CACHE_LIMIT, { weight: (t) => t.bytes, maxWeight: DIR_CACHE_MAX_BYTES });
  /** the last directory too large for `dirs` (its table is about the size of its blocks, already in memory) */
  bigDir: { nid: number; table: DirTable } | undefined;
  /** reads of the bootstrap since its pages were last dropped */
  private touches = 0;

  constructor(readonly buf: Buffer, private readonly opts: LoadV6Options) {
    ensure(isV6(buf), 'not an EROFS/RAFS v6 image: bad magic at offset 1024');
    ensure(buf.length % EROFS_BLOCK_SIZE === 0, `v6 bootstrap size ${buf.length} is not a multiple of 4096`);
    const sb = (this.sb = decodeErofsSuperBlock(buf));
    ensure(sb.blkszbits === EROFS_BLKSZ_BITS, `unsupported EROFS blkszbits ${sb.blkszbits} (only 4096-byte blocks)`);
    ensure(sb.sbExtslots === 0, `unsupported EROFS sb_extslots ${sb.sbExtslots}`);
    this.rafs = (sb.featureCompat & EROFS_FEATURE_COMPAT_RAFS_V6) !== 0;
    this.metaBase = sb.metaBlkaddr * EROFS_BLKSZ;
    ensure(this.metaBase < buf.length, `meta_blkaddr ${sb.metaBlkaddr} is beyond the image`);
    ensure(sb.extraDevices < 255, `extra_devices ${sb.extraDevices} is too large`);
    this.deviceIdMask = roundupPow2(sb.extraDevices + 1) - 1;

    let flags = 0;
    if (this.rafs) {
      ensure(sb.checksum === 0, `RAFS v6 checksum must be 0, got 0x${sb.checksum.toString(16)}`);
      ensure(sb.featureIncompat === RAFSV6_FEATURE_INCOMPAT, `RAFS v6 feature_incompat must be 0x${RAFSV6_FEATURE_INCOMPAT.toString(16)}, got 0x${sb.featureIncompat.toString(16)}`);
      ensure(sb.u1 === 0, `RAFS v6 u1 (compression algorithms) must be 0, got ${sb.u1}`);
      ensure(sb.devtSlotoff * EROFS_DEVSLOT_SIZE === RAFSV6_DEVTABLE_OFFSET, `RAFS v6 devt_slotoff must be 11, got ${sb.devtSlotoff}`);
      const ext = (this.ext = decodeExtSuperBlock(buf));
      flags = ext.flags;
      ensure((flags & ~RAFS_SUPER_FLAGS_KNOWN) === 0 && flags <= 0xffff_ffff, `unknown bits in s_flags 0x${flags.toString(16)}`);
      const comp = flags & (RafsSuperFlags.COMPRESSION_NONE | RafsSuperFlags.COMPRESSION_LZ4 | RafsSuperFlags.COMPRESSION_GZIP | RafsSuperFlags.COMPRESSION_ZSTD);
      ensure(popcount(comp) === 1, `s_flags 0x${flags.toString(16)} must set exactly one compression bit`);
      const hash = flags & (RafsSuperFlags.HASH_BLAKE3 | RafsSuperFlags.HASH_SHA256);
      ensure(popcount(hash) === 1, `s_flags 0x${flags.toString(16)} must set exactly one hash bit`);
      ensure(!(flags & RafsSuperFlags.TARTFS_MODE), 's_flags: tarfs mode images (512-byte blocks) are not supported');
      validateChunkSize(ext.chunkSize, 's_chunk_size');
      this.chunkSize = ext.chunkSize;
      this.loadRafsTables(ext);
    } else {
      ensure((sb.featureIncompat & ~EROFS_FEATURE_INCOMPAT_TOLERATED) === 0, `unsupported EROFS feature_incompat 0x${sb.featureIncompat.toString(16)}`);
      this.chunkSize = EROFS_BLKSZ;
      this.loadErofsDevices();
    }

    const root = this.getInode(sb.rootNid);
    ensure(root.isDir(), `root nid ${sb.rootNid} is not a directory`);
    const compressor = this.rafs ? compressorFromFlags(flags) : Compressor.None;
    const digester = this.rafs ? digesterFromFlags(flags) : DigestAlgorithm.Blake3;
    this.meta = {
      version: 6,
      flags,
      chunkSize: this.chunkSize,
      compressor,
      digester,
      explicitUidGid: this.rafs ? (flags & RafsSuperFlags.EXPLICIT_UID_GID) !== 0 : true,
      hasXattr: this.rafs ? (flags & RafsSuperFlags.HAS_XATTR) !== 0 : true,
      inodesCount: sb.inos,
      rootIno: sb.rootNid,
      raw: {
        magic: sb.magic,
        version: RAFS_SUPER_VERSION_V6,
        sb_size: EROFS_SUPER_SIZE + (this.rafs ? 256 : 0),
        root_nid: sb.rootNid,
        root_inode: sb.rootNid,
        chunk_size: this.chunkSize,
        inodes_count: sb.inos,
        flags,
        blob_table_size: this.ext?.blobTableSize ?? 0,
        blob_table_offset: this.ext?.blobTableOffset ?? 0,
        meta_blkaddr: sb.metaBlkaddr,
        chunk_table_offset: this.ext?.chunkTableOffset ?? 0,
        chunk_table_size: this.ext?.chunkTableSize ?? 0,
        prefetch_table_offset: this.ext?.prefetchTableOffset ?? 0,
        prefetch_table_entries: this.prefetchInodes.length,
        blob_device_table_count: sb.extraDevices,
        blob_device_table_offset: sb.devtSlotoff * EROFS_DEVSLOT_SIZE,
        blocks: sb.blocks,
        build_time: sb.buildTime,
        feature_compat: sb.featureCompat,
        feature_incompat: sb.featureIncompat,
        is_rafs: this.rafs ? 1 : 0,
      },
    };
    // the load walked the chunk table: none of it is needed in memory now
    dropMappedPages(buf);
  }

  /** Count `n` reads of the bootstrap (see DROP_PAGES_EVERY). */
  touched(n = 1): void {
    this.touches += n;
    if (this.touches >= DROP_PAGES_EVERY) {
      this.touches = 0;
      dropMappedPages(this.buf);
    }
  }

  private region(off: number, size: number, what: string): void {
    ensure(Number.isSafeInteger(off) && Number.isSafeInteger(size) && off >= 0 && size >= 0 && off + size <= this.buf.length,
      `${what} [${off}, +${size}) is outside the ${this.buf.length}-byte bootstrap`);
  }

  private loadRafsTables(ext: RafsV6ExtSuperBlock): void {
    const { buf, sb } = this;
    const ndev = sb.extraDevices;
    this.region(RAFSV6_DEVTABLE_OFFSET, ndev * EROFS_DEVSLOT_SIZE, 'device table');
    // blob table
    ensure(ext.blobTableSize % RAFSV6_BLOB_SIZE === 0, `s_blob_table_size ${ext.blobTableSize} is not a multiple of 256`);
    const nblobs = ext.blobTableSize / RAFSV6_BLOB_SIZE;
    ensure(nblobs === ndev, `blob table holds ${nblobs} blobs but extra_devices is ${ndev}`);
    if (nblobs > 0) {
      ensure(ext.blobTableOffset % EROFS_BLKSZ === 0, `s_blob_table_offset 0x${ext.blobTableOffset.toString(16)} is not 4K aligned`);
      ensure(ext.blobTableOffset >= RAFSV6_DEVTABLE_OFFSET + ndev * EROFS_DEVSLOT_SIZE, 's_blob_table_offset overlaps the device table');
      this.region(ext.blobTableOffset, ext.blobTableSize, 'blob table');
    }
    for (let i = 0; i < nblobs; i++) {
      const b = decodeV6Blob(buf, ext.blobTableOffset + i * RAFSV6_BLOB_SIZE);
      const what = `blob ${i} (${b.blobId})`;
      ensure(b.blobIndex === i, `${what}: blob_index ${b.blobIndex} != position ${i}`);
      ensure(b.chunkSize === ext.chunkSize, `${what}: chunk_size 0x${b.chunkSize.toString(16)} != s_chunk_size`);
      ensure(b.chunkCount <= RAFS_MAX_CHUNKS_PER_BLOB, `${what}: chunk_count ${b.chunkCount} is too large`);
      ensure(b.compressionAlgo <= 3, `${what}: invalid compression_algo ${b.compressionAlgo}`);
      ensure(b.ciCompressor <= 3, `${what}: invalid ci_compressor ${b.ciCompressor}`);
      ensure(b.digestAlgo <= 1, `${what}: invalid digest_algo ${b.digestAlgo}`);
      ensure((b.features & 0x0000_f000) === 0 && (b.features & BlobFeatures._V5_NO_EXT_BLOB_TABLE) === 0, `${what}: unknown features 0x${b.features.toString(16)}`);
      ensure(b.ciCompressedSize <= b.ciUncompressedSize, `${what}: ci_compressed_size > ci_uncompressed_size`);
      ensure(b.compressedSize <= 2 ** 40 && b.uncompressedSize <= 2 ** 44, `${what}: blob size out of range`);
      const slot = decodeDeviceSlot(buf, RAFSV6_DEVTABLE_OFFSET + i * EROFS_DEVSLOT_SIZE);
      this.devices.push({ blobIndex: i, mappedBlkaddr: slot.mappedBlkaddr, blocks: slot.blocks });
      this.blobs.push({
        blobIndex: i,
        blobId: b.blobId,
        chunkSize: b.chunkSize,
        chunkCount: b.chunkCount,
        compressor: b.compressionAlgo as Compressor,
        digester: b.digestAlgo as DigestAlgorithm,
        features: b.features,
        compressedSize: b.compressedSize,
        uncompressedSize: b.uncompressedSize,
        readaheadOffset: 0,
        readaheadSize: 0,
        metaCompressor: b.ciCompressor as Compressor,
        metaOffset: b.ciOffset,
        metaCompressedSize: b.ciCompressedSize,
        metaUncompressedSize: b.ciUncompressedSize,
        tocSize: b.blobTocSize,
        tocDigest: b.blobTocDigest,
      });
    }
    if (ndev === 0) ensure(sb.blocks === 0 || sb.blocks === 4096, `blocks ${sb.blocks} must be 0 or 4096 without devices`);

    // chunk table
    if (ext.chunkTableSize > 0) {
      ensure(ext.chunkTableOffset % EROFS_BLKSZ === 0, `s_chunk_table_offset 0x${ext.chunkTableOffset.toString(16)} is not 4K aligned`);
      this.region(ext.chunkTableOffset, ext.chunkTableSize, 'chunk table');
      this.table = new ChunkTable(buf, ext.chunkTableOffset, ext.chunkTableSize, nblobs);
    }

    // prefetch table (nids; a 0 terminates)
    if (ext.prefetchTableSize > 0) {
      ensure(ext.prefetchTableSize % 4 === 0, `s_prefetch_table_size ${ext.prefetchTableSize} is not a multiple of 4`);
      this.region(ext.prefetchTableOffset, ext.prefetchTableSize, 'prefetch table');
      for (let i = 0; i < ext.prefetchTableSize / 4; i++) {
        const nid = buf.readUInt32LE(ext.prefetchTableOffset + i * 4);
        if (nid === 0) break;
        this.prefetchInodes.push(nid);
      }
    }
  }

  private loadErofsDevices(): void {
    const { buf, sb } = this;
    const ndev = sb.extraDevices;
    if (ndev === 0) return;
    const base = sb.devtSlotoff * EROFS_DEVSLOT_SIZE;
    this.region(base, ndev * EROFS_DEVSLOT_SIZE, 'device table');
    for (let i = 0; i < ndev; i++) {
      const slot = decodeDeviceSlot(buf, base + i * EROFS_DEVSLOT_SIZE);
      this.devices.push({ blobIndex: i, mappedBlkaddr: slot.mappedBlkaddr, blocks: slot.blocks });
      this.blobs.push({
        blobIndex: i,
        blobId: slot.tag.toString('latin1'),
        chunkSize: EROFS_BLKSZ,
        chunkCount: slot.blocks,
        compressor: Compressor.None,
        digester: DigestAlgorithm.Blake3,
        features: BlobFeatures.ALIGNED,
        compressedSize: slot.blocks * EROFS_BLKSZ,
        uncompressedSize: slot.blocks * EROFS_BLKSZ,
        ...noBlobMeta(),
      });
    }
  }

  getInode(ino: number): RafsInode {
    return this.inode(ino);
  }

  inode(nid: number): V6Inode {
    let i = this.inodes.get(nid);
    if (i) return i;
    if (!(Number.isSafeInteger(nid) && nid >= 0)) ensure(false, `invalid nid ${nid}`);
    const off = this.metaBase + nid * 32;
    if (!(off + 32 <= this.buf.length)) ensure(false, `nid ${nid} is outside the image`);
    this.touched();
    try {
      i = new V6Inode(this, nid, off);
    } catch (e) {
      throw asErrno(e);
    }
    this.inodes.set(nid, i);
    return i;
  }

  root(): RafsInode {
    return this.inode(this.sb.rootNid);
  }

  /**
   * The bootstrap's chunk table; batch members (see isBatchRecord) resolved
   * through their blob.meta when it is loaded, so request merging sees where
   * their data really is.
   */
  chunkCountsByBlob(): number[] {
    const out = this.table?.countsByBlob(this.blobs.length) ?? new Array<number>(this.blobs.length).fill(0);
    dropMappedPages(this.buf);
    return out;
  }

  chunkTable(): ChunkInfo[] {
    return [...this.walkRecords(false)];
  }

  /** Records one at a time; plain ones in one reused object (see RafsSuper.chunkRecords). */
  chunkRecords(): Generator<ChunkInfo> {
    return this.walkRecords(true);
  }

  private *walkRecords(reuse: boolean): Generator<ChunkInfo> {
    if (!this.table) return;
    for (const c of this.table.records(reuse)) {
      if (this.isBatchRecord(c)) {
        try {
          const m = this.metaTable(c.blobIndex)?.get(c.index);
          if (m) { yield withRecord(m, c, c.fileOffset); continue; }
        } catch { /* a bad record fails when read */ }
      }
      yield c;
    }
    dropMappedPages(this.buf);
  }

  /**
   * Whether a chunk-table record of a BATCH blob stands for a batch member:
   * upstream's builder leaves compressed offset and size 0 (and no BATCH flag)
   * in the bootstrap for those (builder/src/core/node.rs `dump_file_chunk`);
   * only blob.meta knows their batch.
   */
  private isBatchRecord(rec: ChunkInfo): boolean {
    const b = this.blobs[rec.blobIndex];
    return !!b && (b.features & BlobFeatures.BATCH) !== 0 && (rec.compressedSize === 0 || (rec.flags & BlobChunkFlags.BATCH) !== 0);
  }

  private metaTable(blobIndex: number): BlobChunkTable | undefined {
    if (!this.opts.blobMeta) return undefined;
    let t = this.blobTables.get(blobIndex);
    if (!t) {
      // not cached while unavailable: a blob.meta still being downloaded is asked for again
      t = this.opts.blobMeta(this.blobs[blobIndex]);
      if (t) this.blobTables.set(blobIndex, t);
    }
    return t;
  }

  /** Resolve a RAFS chunk index to a full ChunkInfo (§3.8). */
  resolveRafsChunk(blobIndex: number, ciIndex: number, blkaddr: number, fileOffset: number, where: () => string): ChunkInfo {
    if (!(blobIndex >= 0 && blobIndex < this.blobs.length)) ensure(false, `${where()}: chunk index names blob ${blobIndex} but the image has ${this.blobs.length} blobs`);
    this.touched();
    const rec = this.table?.get(blobIndex, ciIndex);
    const blob = this.blobs[blobIndex];
    const inTable = rec && rec.uncompressedOffset === blkaddr * EROFS_BLKSZ;
    // without any blob.meta source (metadata only) a batch member stays as the bootstrap has it
    // (rec is a fresh decode of the table record: ours to fill in)
    if (inTable && (!this.opts.blobMeta || !this.isBatchRecord(rec))) return Object.assign(rec, { fileOffset });
    const c = this.metaTable(blobIndex)?.get(ciIndex);
    if (c) return inTable ? withRecord(c, rec, fileOffset) : { ...c, blobIndex, index: ciIndex, fileOffset };
    if (inTable && this.opts.metaOptional) return Object.assign(rec, { fileOffset });
    if (inTable) throw eio(`${where()}: chunk ci_index ${ciIndex} of blob ${blobIndex} (${blob.blobId}) is a batch chunk and the blob's blob.meta is not loaded`);
    throw eio(`${where()}: cannot resolve chunk ci_index ${ciIndex} of blob ${blobIndex} (${blob.blobId}): not in the chunk table and no blob meta`);
  }

  /** Map an EROFS (device id, blkaddr) pair to (blobIndex, byte offset) for plain EROFS images. */
  mapErofsBlock(deviceId: number, blkaddr: number, where: () => string): { blobIndex: number; offset: number } {
    const dev = deviceId & this.deviceIdMask;
    if (dev === 0) {
      for (const d of this.devices) {
        if (d.mappedBlkaddr > 0 && blkaddr >= d.mappedBlkaddr && blkaddr < d.mappedBlkaddr + d.blocks) {
          return { blobIndex: d.blobIndex, offset: (blkaddr - d.mappedBlkaddr) * EROFS_BLKSZ };
        }
      }
      return { blobIndex: -1, offset: blkaddr * EROFS_BLKSZ };
    }
    if (!(dev <= this.devices.length)) ensure(false, `${where()}: chunk index names device ${dev} but the image has ${this.devices.length} extra devices`);
    return { blobIndex: dev - 1, offset: blkaddr * EROFS_BLKSZ };
  }
}

function popcount(v: number): number {
  let n = 0;
  for (let x = v >>> 0; x; x &= x - 1) n++;
  return n;
}

function roundupPow2(v: number): number {
  let p = 1;
  while (p < v) p <<= 1;
  return p;
}

/**
 * A directory's entries (without `.`/`..`) sorted by name, in columns: the
 * names concatenated in one Buffer, their offsets, nids and file types (one
 * object per directory instead of three per entry).
 */
class DirTable {
  constructor(readonly names: Buffer, readonly nameOff: Uint32Array, readonly nids: Float64Array, readonly types: Uint8Array) {}

  get length(): number { return this.nids.length; }

  /** memory held, roughly */
  get bytes(): number { return this.names.length + 13 * this.nids.length + 200; }

  name(k: number): Buffer { return Buffer.from(this.names.subarray(this.nameOff[k], this.nameOff[k + 1])); }

  /** Position of `name`, or -1. */
  find(name: Buffer): number {
    let lo = 0;
    let hi = this.nids.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const c = name.compare(this.names, this.nameOff[mid], this.nameOff[mid + 1]);
      if (c === 0) return mid;
      if (c > 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }
}

class V6Inode implements RafsInode {
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
  /** extended (64-byte) on-disk inode */
  readonly extended: boolean;
  /** i_format data layout, raw i_u, inline xattr count, on-disk inode size (32 or 64) */
  private readonly layout: number;
  private readonly u: number;
  private readonly xattrIcount: number;
  private readonly isize: number;
  /** byte offset of the inode in the image */
  readonly offset: number;
  /** byte offset just past inode + inline xattrs */
  readonly bodyEnd: number;

  constructor(private readonly sup: V6Super, nid: number, off: number) {
    const buf = sup.buf;
    const raw: ErofsInode = decodeInode(buf, off);
    this.extended = raw.extended;
    this.layout = raw.layout;
    this.u = raw.u;
    this.xattrIcount = raw.xattrIcount;
    this.isize = inodeSize(raw);
    const where = () => `inode nid ${nid}`;
    this.ino = nid;
    this.offset = off;
    this.bodyEnd = off + this.isize + xattrIbodySize(raw.xattrIcount);
    if (!(this.bodyEnd <= buf.length)) ensure(false, `${where()}: inode/xattrs run past the image`);
    const fmt = raw.mode & S_IFMT;
    if (!(MODE_TO_TYPE[fmt] !== undefined)) ensure(false, `${where()}: invalid i_mode 0${raw.mode.toString(8)}`);
    if (!(raw.size <= Number.MAX_SAFE_INTEGER)) ensure(false, `${where()}: i_size too large`);
    const isReg = fmt === S_IFREG;
    if (!(raw.layout === EROFS_INODE_FLAT_PLAIN || raw.layout === EROFS_INODE_FLAT_INLINE || (raw.layout === EROFS_INODE_CHUNK_BASED && isReg))) ensure(false,
      `${where()}: unsupported data layout ${raw.layout} for mode 0${raw.mode.toString(8)}${raw.layout === 1 || raw.layout === 3 ? ' (compressed EROFS inodes are not supported)' : ''}`);
    if ((fmt === S_IFDIR || fmt === S_IFLNK) && !(raw.size <= buf.length)) ensure(false, `${where()}: i_size ${raw.size} exceeds the image`);
    if ((fmt === S_IFLNK) && !(raw.size > 0 && raw.size <= MAX_SYMLINK)) ensure(false, `${where()}: symlink size ${raw.size} out of range`);
    if ((sup.rafs && isReg && raw.size > 0) && !(raw.layout === EROFS_INODE_CHUNK_BASED)) ensure(false, `${where()}: RAFS regular file is not chunk-based`);
    this.mode = raw.mode;
    this.uid = raw.uid;
    this.gid = raw.gid;
    this.size = raw.size;
    this.nlink = raw.nlink;
    this.rdev = fmt === S_IFCHR || fmt === S_IFBLK ? raw.u : 0;
    if (raw.extended) {
      this.mtime = raw.mtime;
      this.mtimeNsec = raw.mtimeNsec;
    } else {
      // compact: mtime relative to the build time (0 for nydus, which writes neither)
      this.mtime = sup.sb.buildTime + raw.mtime;
      this.mtimeNsec = sup.sb.buildTimeNsec;
    }
    this.blocks = Math.ceil(raw.size / 512);
  }

  isDir(): boolean { return (this.mode & S_IFMT) === S_IFDIR; }
  isReg(): boolean { return (this.mode & S_IFMT) === S_IFREG; }
  isSymlink(): boolean { return (this.mode & S_IFMT) === S_IFLNK; }

  private where(): string { return `inode nid ${this.ino}`; }

  /** Byte ranges in the image holding the data of a FLAT_PLAIN / FLAT_INLINE inode, in order. */
  flatExtents(): Array<{ off: number; len: number }> {
    const { size, u } = this;
    const buf = this.sup.buf;
    if (size === 0) return [];
    const nblocks = Math.ceil(size / EROFS_BLKSZ);
    const inline = this.layout === EROFS_INODE_FLAT_INLINE;
    const full = inline ? nblocks - 1 : nblocks;
    const out: Array<{ off: number; len: number }> = [];
    if (full > 0) {
      const start = u * EROFS_BLKSZ;
      const len = inline ? full * EROFS_BLKSZ : size;
      if (!(u !== EROFS_NULL_ADDR && start + len <= buf.length)) ensure(false, `${this.where()}: data blocks at block ${u} are outside the image`);
      out.push({ off: start, len });
    }
    if (inline) {
      const tail = size - full * EROFS_BLKSZ;
      const off = this.bodyEnd;
      if (!((off % EROFS_BLKSZ) + tail <= EROFS_BLKSZ && off + tail <= buf.length)) ensure(false, `${this.where()}: inline data crosses a block boundary`);
      out.push({ off, len: tail });
    }
    return out;
  }

  /** Whole data of a flat (non chunk-based) inode: directory blocks, symlink target, plain file bytes. */
  readFlatData(): Buffer {
    if (!(this.layout !== EROFS_INODE_CHUNK_BASED)) ensure(false, `${this.where()}: chunk-based data is not stored in the bootstrap`);
    const ext = this.flatExtents();
    return Buffer.concat(ext.map((e) => this.sup.buf.subarray(e.off, e.off + e.len)));
  }

  readlink(): Buffer {
    if (!this.isSymlink()) throw einval(`${this.where()} is not a symlink`);
    return guard(() => Buffer.from(this.readFlatData()));
  }

  xattrs(): Array<[string, Buffer]> {
    return guard(() => this.readXattrs());
  }

  private readXattrs(): Array<[string, Buffer]> {
    if (this.xattrIcount === 0) return [];
    const buf = this.sup.buf;
    const { entries, shared } = decodeXattrIbody(buf, this.offset + this.isize, this.xattrIcount);
    if (shared.length === 0) return entries;
    const out: Array<[string, Buffer]> = [];
    const base = this.sup.sb.xattrBlkaddr * EROFS_BLKSZ;
    for (const id of shared) {
      const off = base + id * 4;
      if (!(off < buf.length)) ensure(false, `${this.where()}: shared xattr id ${id} is outside the image`);
      const e = decodeXattrEntry(buf, off, buf.length);
      out.push([e.name, e.value]);
    }
    return out.concat(entries);
  }

  private dirEntries(): DirTable {
    const cached = this.sup.dirs.get(this.ino) ?? (this.sup.bigDir?.nid === this.ino ? this.sup.bigDir.table : undefined);
    if (cached) return cached;
    if (!this.isDir()) throw enotdir(`${this.where()} is not a directory`);
    const data = this.readFlatData();
    this.sup.touched(Math.ceil(data.length / EROFS_BLKSZ));
    const out: Array<{ name: Buffer; nid: number; fileType: number }> = [];
    let dots = 0;
    let dotdots = 0;
    for (let b = 0; b * EROFS_BLKSZ < data.length; b++) {
      const blockLen = Math.min(EROFS_BLKSZ, data.length - b * EROFS_BLKSZ);
      const block = data.subarray(b * EROFS_BLKSZ, b * EROFS_BLKSZ + blockLen);
      for (const d of decodeDirBlock(block, blockLen, `${this.where()} dir block ${b}`)) {
        if (!(d.name.indexOf(0x2f) < 0 && d.name.indexOf(0) < 0)) ensure(false, `${this.where()}: dirent name '${d.name.toString('latin1')}' contains '/' or NUL`);
        if (!(d.fileType <= 7)) ensure(false, `${this.where()}: invalid dirent file type ${d.fileType}`);
        if (d.name.length === 1 && d.name[0] === 0x2e) { if (!(++dots === 1)) ensure(false, `${this.where()}: duplicate '.' entry`); continue; }
        if (d.name.length === 2 && d.name[0] === 0x2e && d.name[1] === 0x2e) { if (!(++dotdots === 1)) ensure(false, `${this.where()}: duplicate '..' entry`); continue; }
        out.push(d);
      }
    }
    // on-disk order is sorted; re-sort defensively so lookup's binary search is sound
    for (let i = 1; i < out.length; i++) {
      if (Buffer.compare(out[i - 1].name, out[i].name) >= 0) { out.sort((a, b) => Buffer.compare(a.name, b.name)); break; }
    }
    const nameOff = new Uint32Array(out.length + 1);
    const nids = new Float64Array(out.length);
    const types = new Uint8Array(out.length);
    out.forEach((e, k) => { nameOff[k + 1] = nameOff[k] + e.name.length; nids[k] = e.nid; types[k] = e.fileType; });
    const t = new DirTable(Buffer.concat(out.map((e) => e.name), nameOff[out.length]), nameOff, nids, types);
    if (t.bytes > DIR_CACHE_MAX_BYTES) this.sup.bigDir = { nid: this.ino, table: t };
    else this.sup.dirs.set(this.ino, t);
    return t;
  }

  children(): RafsDirent[] {
    return guard(() => {
      const n = this.dirEntries().length;
      const out = new Array<RafsDirent>(n);
      for (let k = 0; k < n; k++) out[k] = this.childAt(k);
      return out;
    });
  }

  childCount(): number {
    return guard(() => this.dirEntries().length);
  }

  childAt(k: number): RafsDirent {
    return guard(() => {
      const t = this.dirEntries();
      if (!(Number.isInteger(k) && k >= 0 && k < t.length)) ensure(false, `${this.where()}: no child ${k}`);
      const nid = t.nids[k];
      const ft = t.types[k];
      return { name: t.name(k), ino: nid, type: (ft !== 0 ? ft : MODE_TO_TYPE[this.sup.inode(nid).mode & S_IFMT]) as InodeType };
    });
  }

  lookup(name: Buffer): RafsInode | undefined {
    const t = guard(() => this.dirEntries());
    const k = t.find(name);
    return k >= 0 ? this.sup.inode(t.nids[k]) : undefined;
  }

  /** The file's chunks, decoded afresh each call (callers that read often, like RafsFs, keep a bounded cache). */
  chunks(): ChunkInfo[] {
    if (!this.isReg() || this.size === 0) return [];
    return guard(() => (this.sup.rafs ? this.rafsChunks() : this.erofsChunks()));
  }

  /** Position and count of the chunk index array for `chunkSize` chunks and `unit`-byte entries. */
  private indexArray(chunkSize: number, unit: number): { pos: number; count: number } {
    const count = Math.ceil(this.size / chunkSize);
    const pos = Math.ceil(this.bodyEnd / unit) * unit;
    if (!(pos + count * unit <= this.sup.buf.length)) ensure(false, `${this.where()}: ${count} chunk indexes run past the image`);
    return { pos, count };
  }

  private rafsChunks(): ChunkInfo[] {
    const sup = this.sup;
    const fmt = this.u & 0xffff;
    if (!(fmt & EROFS_CHUNK_FORMAT_INDEXES)) ensure(false, `${this.where()}: chunk header 0x${fmt.toString(16)} lacks EROFS_CHUNK_FORMAT_INDEXES`);
    const cs = sup.chunkSize;
    const { pos, count } = this.indexArray(cs, EROFS_CHUNK_INDEX_SIZE);
    const out: ChunkInfo[] = [];
    for (let k = 0; k < count; k++) {
      const idx = decodeChunkIndex(sup.buf, pos + k * EROFS_CHUNK_INDEX_SIZE);
      if (idx.blkaddr === EROFS_NULL_ADDR) continue;
      const { blobIndex, ciIndex } = parseRafsChunkIndex(idx);
      const where = () => `${this.where()} chunk ${k}`;
      if (!(blobIndex >= 0)) ensure(false, `${where()}: blob index 0 in c_blob_addr_hi is invalid`);
      const c = sup.resolveRafsChunk(blobIndex, ciIndex, idx.blkaddr, k * cs, where);
      const expect = Math.min(cs, this.size - k * cs);
      if (!(c.uncompressedSize === expect)) ensure(false, `${where()}: chunk uncompressed size ${c.uncompressedSize} != expected ${expect}`);
      out.push(c);
    }
    return out;
  }

  private erofsChunks(): ChunkInfo[] {
    const sup = this.sup;
    const size = this.size;
    if (!(size <= MAX_PLAIN_PIECES * EROFS_BLKSZ)) ensure(false, `${this.where()}: file of ${size} bytes is too large for a plain EROFS chunk list`);
    const pieces: ChunkInfo[] = [];
    // every plain-EROFS chunk is a 4 KiB piece: k*4096 .. min(size, (k+1)*4096)
    const piece = (fileOffset: number, blobIndex: number, off: number): void => {
      const len = Math.min(EROFS_BLKSZ, size - fileOffset);
      if (blobIndex < 0) {
        if (!(off + len <= sup.buf.length)) ensure(false, `${this.where()}: data at ${off} is outside the image`);
      } else {
        const blob = sup.blobs[blobIndex];
        if ((blob.uncompressedSize > 0) && !(off + len <= blob.uncompressedSize)) ensure(false, `${this.where()}: data at ${off} is outside device ${blobIndex + 1}`);
      }
      pieces.push({
        digest: ZERO_DIGEST, blobIndex, index: Math.floor(off / EROFS_BLKSZ), flags: 0, compressed: false,
        compressedOffset: off, compressedSize: len, uncompressedOffset: off, uncompressedSize: len, fileOffset, crc32: 0,
      });
    };
    if (this.layout !== EROFS_INODE_CHUNK_BASED) {
      let fileOffset = 0;
      for (const e of this.flatExtents()) {
        for (let o = 0; o < e.len; o += EROFS_BLKSZ) piece(fileOffset + o, -1, e.off + o);
        fileOffset += e.len;
      }
      return pieces;
    }
    const fmt = this.u & 0xffff;
    const bits = EROFS_BLKSZ_BITS + (fmt & EROFS_CHUNK_FORMAT_BLKBITS_MASK);
    if (!(bits <= 40)) ensure(false, `${this.where()}: chunk size 2^${bits} is too large`);
    const cs = 2 ** bits;
    const indexes = (fmt & EROFS_CHUNK_FORMAT_INDEXES) !== 0;
    const unit = indexes ? EROFS_CHUNK_INDEX_SIZE : 4;
    const { pos, count } = this.indexArray(cs, unit);
    for (let k = 0; k < count; k++) {
      let deviceId = 0;
      let blkaddr: number;
      if (indexes) {
        const idx = decodeChunkIndex(sup.buf, pos + k * unit);
        deviceId = idx.deviceId;
        blkaddr = idx.blkaddr;
      } else {
        blkaddr = sup.buf.readUInt32LE(pos + k * unit);
      }
      if (blkaddr === EROFS_NULL_ADDR) continue;
      const { blobIndex, offset } = sup.mapErofsBlock(deviceId, blkaddr, () => `${this.where()} chunk ${k}`);
      const end = Math.min(size, (k + 1) * cs);
      for (let fo = k * cs; fo < end; fo += EROFS_BLKSZ) piece(fo, blobIndex, offset + (fo - k * cs));
    }
    return pieces;
  }
}

/**
 * A chunk from blob.meta completed by its bootstrap record: the record's
 * digest (blob.meta has none without blob.digest) and CRC-32C still verify
 * the member's data.
 */
function withRecord(m: ChunkInfo, rec: ChunkInfo, fileOffset: number): ChunkInfo {
  const zero = m.digest.every((b) => b === 0);
  const crc = rec.flags & BlobChunkFlags.HAS_CRC32 && !(m.flags & BlobChunkFlags.HAS_CRC32);
  return {
    ...m,
    blobIndex: rec.blobIndex,
    index: rec.index,
    fileOffset,
    digest: Buffer.from(zero ? rec.digest : m.digest),
    flags: crc ? m.flags | BlobChunkFlags.HAS_CRC32 : m.flags,
    crc32: crc ? rec.crc32 : m.crc32,
  };
}
