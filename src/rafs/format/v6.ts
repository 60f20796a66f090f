/**
 * RAFS v6 / EROFS on-disk records (rafs-spec §3.2–§3.9, §3.11; EROFS erofs_fs.h).
 *
 * Pure codecs: every `decode*` bounds-checks its input and throws EINVAL naming
 * the offending field; every `encode*` writes into a caller-provided buffer.
 * Higher-level validation that needs context (blob counts, image size) lives
 * in metadata/direct-v6.ts and builder/bootstrap-v6.ts.
 */
import { einval, ensure } from '../../common/errno';
import { readU64, writeU64 } from './constants';

export const EROFS_SUPER_OFFSET = 1024;
export const EROFS_SUPER_SIZE = 128;
export const EROFS_SUPER_MAGIC_V1 = 0xe0f5e1e2;
export const EROFS_BLKSZ_BITS = 12;
export const EROFS_BLKSZ = 1 << EROFS_BLKSZ_BITS;
export const EROFS_ISLOTBITS = 5;
export const EROFS_SLOT_SIZE = 32;
export const EROFS_NULL_ADDR = 0xffffffff;

/** feature_compat bits. */
export const EROFS_FEATURE_COMPAT_SB_CHKSUM = 0x1;
export const EROFS_FEATURE_COMPAT_MTIME = 0x2;
export const EROFS_FEATURE_COMPAT_RAFS_V6 = 0x4000_0000;
/** feature_incompat bits. */
export const EROFS_FEATURE_INCOMPAT_ZERO_PADDING = 0x1;
export const EROFS_FEATURE_INCOMPAT_CHUNKED_FILE = 0x4;
export const EROFS_FEATURE_INCOMPAT_DEVICE_TABLE = 0x8;
/** What RAFS v6 requires exactly (§3.2). */
export const RAFSV6_FEATURE_INCOMPAT = EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | EROFS_FEATURE_INCOMPAT_DEVICE_TABLE;
/** Every incompat bit a reader of uncompressed images tolerates in the superblock
 *  (compression-related bits only matter if a compressed inode is met). */
export const EROFS_FEATURE_INCOMPAT_TOLERATED = 0x7f;

export const RAFSV6_EXT_SB_OFFSET = 0x480;
export const RAFSV6_EXT_SB_SIZE = 256;
export const RAFSV6_DEVTABLE_OFFSET = 0x580;
export const RAFSV6_DEVT_SLOTOFF = RAFSV6_DEVTABLE_OFFSET / 128;
export const EROFS_DEVSLOT_SIZE = 128;
export const RAFSV6_BLOB_SIZE = 256;
export const RAFSV6_CHUNK_INFO_SIZE = 80;
/** mapped_blkaddr alignment for device slots (§3.4, since 2023). */
export const RAFSV6_DEVSLOT_ALIGN = 0x80000;

export const EROFS_INODE_COMPACT_SIZE = 32;
export const EROFS_INODE_EXTENDED_SIZE = 64;

/** i_format data layouts (§3.6). */
export const EROFS_INODE_FLAT_PLAIN = 0;
export const EROFS_INODE_COMPRESSED_FULL = 1;
export const EROFS_INODE_FLAT_INLINE = 2;
export const EROFS_INODE_COMPRESSED_COMPACT = 3;
export const EROFS_INODE_CHUNK_BASED = 4;

/** Chunk header format (§3.6 `i_u` of chunk-based files). */
export const EROFS_CHUNK_FORMAT_BLKBITS_MASK = 0x1f;
export const EROFS_CHUNK_FORMAT_INDEXES = 0x20;
export const EROFS_CHUNK_INDEX_SIZE = 8;

/** Directory entry file types (§3.9). */
export const EROFS_FT = { UNKNOWN: 0, REG: 1, DIR: 2, CHR: 3, BLK: 4, FIFO: 5, SOCK: 6, SYMLINK: 7 } as const;
export const EROFS_DIRENT_SIZE = 12;

/** Inline xattr name indexes and prefixes (§3.7), in prefix match order. */
export const EROFS_XATTR_PREFIXES: ReadonlyArray<readonly [number, string]> = [
  [1, 'user.'],
  [2, 'system.posix_acl_access'],
  [3, 'system.posix_acl_default'],
  [4, 'trusted.'],
  [6, 'security.'],
];
export const EROFS_XATTR_IBODY_HEADER_SIZE = 12;
export const EROFS_XATTR_ENTRY_SIZE = 4;

function need(buf: Buffer, off: number, len: number, what: string): void {
  if (!Number.isSafeInteger(off) || off < 0 || off + len > buf.length) {
    throw einval(`${what}: ${len} bytes at offset ${off} are outside the ${buf.length}-byte buffer`);
  }
}

function zeroTerminated(b: Buffer): Buffer {
  const z = b.indexOf(0);
  return z < 0 ? b : b.subarray(0, z);
}

function putFixedString(buf: Buffer, off: number, len: number, s: string, what: string): void {
  const b = Buffer.from(s, 'latin1');
  ensure(b.length <= len && Buffer.from(s, 'utf8').length === b.length, `${what} '${s}' is not ASCII of at most ${len} bytes`);
  buf.fill(0, off, off + len);
  b.copy(buf, off);
}

// ---------------------------------------------------------------- superblock

export interface ErofsSuperBlock {
  magic: number;
  checksum: number;
  featureCompat: number;
  blkszbits: number;
  sbExtslots: number;
  rootNid: number;
  inos: number;
  buildTime: number;
  buildTimeNsec: number;
  blocks: number;
  metaBlkaddr: number;
  xattrBlkaddr: number;
  uuid: Buffer;
  volumeName: Buffer;
  featureIncompat: number;
  /** available_compr_algs / lz4_max_distance */
  u1: number;
  extraDevices: number;
  devtSlotoff: number;
}

/** Decode the 128-byte EROFS superblock at byte 1024; checks only the magic. */
export function decodeErofsSuperBlock(buf: Buffer): ErofsSuperBlock {
  need(buf, EROFS_SUPER_OFFSET, EROFS_SUPER_SIZE, 'EROFS superblock');
  const o = EROFS_SUPER_OFFSET;
  const magic = buf.readUInt32LE(o);
  if (magic !== EROFS_SUPER_MAGIC_V1) throw einval(`invalid EROFS superblock magic 0x${magic.toString(16)}`);
  return {
    magic,
    checksum: buf.readUInt32LE(o + 4),
    featureCompat: buf.readUInt32LE(o + 8),
    blkszbits: buf.readUInt8(o + 12),
    sbExtslots: buf.readUInt8(o + 13),
    rootNid: buf.readUInt16LE(o + 14),
    inos: readU64(buf, o + 16, 'inos'),
    buildTime: readU64(buf, o + 24, 'build_time'),
    buildTimeNsec: buf.readUInt32LE(o + 32),
    blocks: buf.readUInt32LE(o + 36),
    metaBlkaddr: buf.readUInt32LE(o + 40),
    xattrBlkaddr: buf.readUInt32LE(o + 44),
    uuid: Buffer.from(buf.subarray(o + 48, o + 64)),
    volumeName: Buffer.from(buf.subarray(o + 64, o + 80)),
    featureIncompat: buf.readUInt32LE(o + 80),
    u1: buf.readUInt16LE(o + 84),
    extraDevices: buf.readUInt16LE(o + 86),
    devtSlotoff: buf.readUInt16LE(o + 88),
  };
}

export function encodeErofsSuperBlock(sb: ErofsSuperBlock, buf: Buffer): void {
  need(buf, EROFS_SUPER_OFFSET, EROFS_SUPER_SIZE, 'EROFS superblock');
  const o = EROFS_SUPER_OFFSET;
  buf.fill(0, o, o + EROFS_SUPER_SIZE);
  buf.writeUInt32LE(sb.magic, o);
  buf.writeUInt32LE(sb.checksum, o + 4);
  buf.writeUInt32LE(sb.featureCompat >>> 0, o + 8);
  buf.writeUInt8(sb.blkszbits, o + 12);
  buf.writeUInt8(sb.sbExtslots, o + 13);
  buf.writeUInt16LE(sb.rootNid, o + 14);
  writeU64(buf, sb.inos, o + 16);
  writeU64(buf, sb.buildTime, o + 24);
  buf.writeUInt32LE(sb.buildTimeNsec, o + 32);
  buf.writeUInt32LE(sb.blocks, o + 36);
  buf.writeUInt32LE(sb.metaBlkaddr, o + 40);
  buf.writeUInt32LE(sb.xattrBlkaddr, o + 44);
  sb.uuid.copy(buf, o + 48, 0, 16);
  sb.volumeName.copy(buf, o + 64, 0, 16);
  buf.writeUInt32LE(sb.featureIncompat, o + 80);
  buf.writeUInt16LE(sb.u1, o + 84);
  buf.writeUInt16LE(sb.extraDevices, o + 86);
  buf.writeUInt16LE(sb.devtSlotoff, o + 88);
}

// ------------------------------------------------------- RAFS v6 ext superblock

export interface RafsV6ExtSuperBlock {
  flags: number;
  blobTableOffset: number;
  blobTableSize: number;
  chunkSize: number;
  chunkTableOffset: number;
  chunkTableSize: number;
  prefetchTableOffset: number;
  prefetchTableSize: number;
}

export function decodeExtSuperBlock(buf: Buffer): RafsV6ExtSuperBlock {
  need(buf, RAFSV6_EXT_SB_OFFSET, RAFSV6_EXT_SB_SIZE, 'RAFS v6 extended superblock');
  const o = RAFSV6_EXT_SB_OFFSET;
  return {
    flags: readU64(buf, o, 's_flags'),
    blobTableOffset: readU64(buf, o + 8, 's_blob_table_offset'),
    blobTableSize: buf.readUInt32LE(o + 16),
    chunkSize: buf.readUInt32LE(o + 20),
    chunkTableOffset: readU64(buf, o + 24, 's_chunk_table_offset'),
    chunkTableSize: readU64(buf, o + 32, 's_chunk_table_size'),
    prefetchTableOffset: readU64(buf, o + 40, 's_prefetch_table_offset'),
    prefetchTableSize: buf.readUInt32LE(o + 48),
  };
}

export function encodeExtSuperBlock(e: RafsV6ExtSuperBlock, buf: Buffer): void {
  need(buf, RAFSV6_EXT_SB_OFFSET, RAFSV6_EXT_SB_SIZE, 'RAFS v6 extended superblock');
  const o = RAFSV6_EXT_SB_OFFSET;
  buf.fill(0, o, o + RAFSV6_EXT_SB_SIZE);
  writeU64(buf, e.flags, o);
  writeU64(buf, e.blobTableOffset, o + 8);
  buf.writeUInt32LE(e.blobTableSize, o + 16);
  buf.writeUInt32LE(e.chunkSize, o + 20);
  writeU64(buf, e.chunkTableOffset, o + 24);
  writeU64(buf, e.chunkTableSize, o + 32);
  writeU64(buf, e.prefetchTableOffset, o + 40);
  buf.writeUInt32LE(e.prefetchTableSize, o + 48);
}

// ------------------------------------------------------------- device slots

export interface ErofsDeviceSlot {
  /** tag bytes up to the first NUL (nydus: the ASCII blob id) */
  tag: Buffer;
  blocks: number;
  mappedBlkaddr: number;
}

export function decodeDeviceSlot(buf: Buffer, off: number): ErofsDeviceSlot {
  need(buf, off, EROFS_DEVSLOT_SIZE, 'device slot');
  return {
    tag: Buffer.from(zeroTerminated(buf.subarray(off, off + 64))),
    blocks: buf.readUInt32LE(off + 64),
    mappedBlkaddr: buf.readUInt32LE(off + 68),
  };
}

export function encodeDeviceSlot(d: ErofsDeviceSlot, buf: Buffer, off: number): void {
  need(buf, off, EROFS_DEVSLOT_SIZE, 'device slot');
  ensure(d.tag.length <= 64, 'device slot tag is longer than 64 bytes');
  buf.fill(0, off, off + EROFS_DEVSLOT_SIZE);
  d.tag.copy(buf, off);
  buf.writeUInt32LE(d.blocks, off + 64);
  buf.writeUInt32LE(d.mappedBlkaddr, off + 68);
}

// ----------------------------------------------------------------- blob table

export interface RafsV6Blob {
  blobId: string;
  blobIndex: number;
  chunkSize: number;
  chunkCount: number;
  compressionAlgo: number;
  digestAlgo: number;
  features: number;
  compressedSize: number;
  uncompressedSize: number;
  blobTocSize: number;
  ciCompressor: number;
  ciOffset: number;
  ciCompressedSize: number;
  ciUncompressedSize: number;
  blobTocDigest: Buffer;
  blobMetaDigest: Buffer;
  blobMetaSize: number;
  cipherIv: Buffer;
  cipherAlgo: number;
}

export function decodeV6Blob(buf: Buffer, off: number): RafsV6Blob {
  need(buf, off, RAFSV6_BLOB_SIZE, 'RafsV6Blob');
  const id = zeroTerminated(buf.subarray(off, off + 64));
  for (const c of id) if (c < 0x21 || c > 0x7e) throw einval(`RafsV6Blob blob_id contains a non-printable byte 0x${c.toString(16)}`);
  return {
    blobId: id.toString('latin1'),
    blobIndex: buf.readUInt32LE(off + 64),
    chunkSize: buf.readUInt32LE(off + 68),
    chunkCount: buf.readUInt32LE(off + 72),
    compressionAlgo: buf.readUInt32LE(off + 76),
    digestAlgo: buf.readUInt32LE(off + 80),
    features: buf.readUInt32LE(off + 84),
    compressedSize: readU64(buf, off + 88, 'blob compressed_size'),
    uncompressedSize: readU64(buf, off + 96, 'blob uncompressed_size'),
    blobTocSize: buf.readUInt32LE(off + 104),
    ciCompressor: buf.readUInt32LE(off + 108),
    ciOffset: readU64(buf, off + 112, 'blob ci_offset'),
    ciCompressedSize: readU64(buf, off + 120, 'blob ci_compressed_size'),
    ciUncompressedSize: readU64(buf, off + 128, 'blob ci_uncompressed_size'),
    blobTocDigest: Buffer.from(buf.subarray(off + 136, off + 168)),
    blobMetaDigest: Buffer.from(buf.subarray(off + 168, off + 200)),
    blobMetaSize: readU64(buf, off + 200, 'blob blob_meta_size'),
    cipherIv: Buffer.from(buf.subarray(off + 208, off + 216)),
    cipherAlgo: buf.readUInt32LE(off + 216),
  };
}

export function encodeV6Blob(b: RafsV6Blob, buf: Buffer, off: number): void {
  need(buf, off, RAFSV6_BLOB_SIZE, 'RafsV6Blob');
  buf.fill(0, off, off + RAFSV6_BLOB_SIZE);
  putFixedString(buf, off, 64, b.blobId, 'blob id');
  buf.writeUInt32LE(b.blobIndex, off + 64);
  buf.writeUInt32LE(b.chunkSize, off + 68);
  buf.writeUInt32LE(b.chunkCount, off + 72);
  buf.writeUInt32LE(b.compressionAlgo, off + 76);
  buf.writeUInt32LE(b.digestAlgo, off + 80);
  buf.writeUInt32LE(b.features >>> 0, off + 84);
  writeU64(buf, b.compressedSize, off + 88);
  writeU64(buf, b.uncompressedSize, off + 96);
  buf.writeUInt32LE(b.blobTocSize, off + 104);
  buf.writeUInt32LE(b.ciCompressor, off + 108);
  writeU64(buf, b.ciOffset, off + 112);
  writeU64(buf, b.ciCompressedSize, off + 120);
  writeU64(buf, b.ciUncompressedSize, off + 128);
  b.blobTocDigest.copy(buf, off + 136, 0, 32);
  b.blobMetaDigest.copy(buf, off + 168, 0, 32);
  writeU64(buf, b.blobMetaSize, off + 200);
  b.cipherIv.copy(buf, off + 208, 0, 8);
  buf.writeUInt32LE(b.cipherAlgo, off + 216);
}

// --------------------------------------------------------------------- inodes

export interface ErofsInode {
  extended: boolean;
  /** data layout (i_format bits 1-3) */
  layout: number;
  xattrIcount: number;
  mode: number;
  nlink: number;
  size: number;
  /** raw i_u: block address, rdev or chunk header */
  u: number;
  ino: number;
  uid: number;
  gid: number;
  /** extended: stored mtime; compact: the 32-bit i_mtime delta at +12 (0 in older images) */
  mtime: number;
  mtimeNsec: number;
}

export const inodeSize = (i: { extended: boolean }): number => (i.extended ? EROFS_INODE_EXTENDED_SIZE : EROFS_INODE_COMPACT_SIZE);

/** Decode a compact or extended inode at `off`; validates i_format. */
export function decodeInode(buf: Buffer, off: number): ErofsInode {
  need(buf, off, 2, 'inode i_format');
  const fmt = buf.readUInt16LE(off);
  if (fmt & ~0xf) throw einval(`inode at ${off}: invalid i_format 0x${fmt.toString(16)}`);
  const extended = (fmt & 1) === 1;
  const layout = (fmt >> 1) & 0x7;
  if (layout > EROFS_INODE_CHUNK_BASED) throw einval(`inode at ${off}: invalid i_format data layout ${layout}`);
  if (!extended) {
    need(buf, off, EROFS_INODE_COMPACT_SIZE, 'compact inode');
    return {
      extended, layout,
      xattrIcount: buf.readUInt16LE(off + 2),
      mode: buf.readUInt16LE(off + 4),
      nlink: buf.readUInt16LE(off + 6),
      size: buf.readUInt32LE(off + 8),
      mtime: buf.readUInt32LE(off + 12),
      u: buf.readUInt32LE(off + 16),
      ino: buf.readUInt32LE(off + 20),
      uid: buf.readUInt16LE(off + 24),
      gid: buf.readUInt16LE(off + 26),
      mtimeNsec: 0,
    };
  }
  need(buf, off, EROFS_INODE_EXTENDED_SIZE, 'extended inode');
  return {
    extended, layout,
    xattrIcount: buf.readUInt16LE(off + 2),
    mode: buf.readUInt16LE(off + 4),
    size: readU64(buf, off + 8, 'inode i_size'),
    u: buf.readUInt32LE(off + 16),
    ino: buf.readUInt32LE(off + 20),
    uid: buf.readUInt32LE(off + 24),
    gid: buf.readUInt32LE(off + 28),
    mtime: readU64(buf, off + 32, 'inode i_mtime'),
    mtimeNsec: buf.readUInt32LE(off + 40),
    nlink: buf.readUInt32LE(off + 44),
  };
}

/** Encode an inode (compact when `extended` is false: mtime and >16-bit fields must fit). */
export function encodeInode(i: ErofsInode, buf: Buffer, off: number): void {
  const fmt = (i.extended ? 1 : 0) | (i.layout << 1);
  if (!i.extended) {
    need(buf, off, EROFS_INODE_COMPACT_SIZE, 'compact inode');
    ensure(i.uid <= 0xffff && i.gid <= 0xffff && i.nlink <= 0xffff && i.size <= 0xffffffff, 'compact inode field out of range');
    buf.fill(0, off, off + EROFS_INODE_COMPACT_SIZE);
    buf.writeUInt16LE(fmt, off);
    buf.writeUInt16LE(i.xattrIcount, off + 2);
    buf.writeUInt16LE(i.mode, off + 4);
    buf.writeUInt16LE(i.nlink, off + 6);
    buf.writeUInt32LE(i.size, off + 8);
    buf.writeUInt32LE(i.mtime, off + 12);
    buf.writeUInt32LE(i.u >>> 0, off + 16);
    buf.writeUInt32LE(i.ino, off + 20);
    buf.writeUInt16LE(i.uid, off + 24);
    buf.writeUInt16LE(i.gid, off + 26);
    return;
  }
  need(buf, off, EROFS_INODE_EXTENDED_SIZE, 'extended inode');
  buf.fill(0, off, off + EROFS_INODE_EXTENDED_SIZE);
  buf.writeUInt16LE(fmt, off);
  buf.writeUInt16LE(i.xattrIcount, off + 2);
  buf.writeUInt16LE(i.mode, off + 4);
  writeU64(buf, i.size, off + 8);
  buf.writeUInt32LE(i.u >>> 0, off + 16);
  buf.writeUInt32LE(i.ino, off + 20);
  buf.writeUInt32LE(i.uid, off + 24);
  buf.writeUInt32LE(i.gid, off + 28);
  writeU64(buf, i.mtime, off + 32);
  buf.writeUInt32LE(i.mtimeNsec, off + 40);
  buf.writeUInt32LE(i.nlink, off + 44);
}

// --------------------------------------------------------------- inline xattrs

/** Bytes occupied by the inline xattr area for a given i_xattr_icount (§3.7). */
export function xattrIbodySize(icount: number): number {
  return icount === 0 ? 0 : EROFS_XATTR_IBODY_HEADER_SIZE + (icount - 1) * 4;
}

function splitXattrName(name: string): [number, Buffer] {
  for (const [idx, prefix] of EROFS_XATTR_PREFIXES) {
    if (name.startsWith(prefix)) return [idx, Buffer.from(name.slice(prefix.length), 'utf8')];
  }
  throw einval(`xattr name '${name}' has no supported prefix (user., security., trusted., system.posix_acl_*)`);
}

/** Encode the inline xattr body; returns the bytes and i_xattr_icount (0 and empty when none). */
export function encodeXattrIbody(xattrs: ReadonlyArray<readonly [string, Buffer]>): { body: Buffer; icount: number } {
  if (xattrs.length === 0) return { body: Buffer.alloc(0), icount: 0 };
  const parts: Buffer[] = [Buffer.alloc(EROFS_XATTR_IBODY_HEADER_SIZE)];
  for (const [name, value] of xattrs) {
    const [idx, suffix] = splitXattrName(name);
    ensure(suffix.length <= 255, `xattr name '${name}' is too long`);
    ensure(value.length <= 0xffff, `xattr '${name}' value of ${value.length} bytes is too large`);
    const e = Buffer.alloc(Math.ceil((EROFS_XATTR_ENTRY_SIZE + suffix.length + value.length) / 4) * 4);
    e.writeUInt8(suffix.length, 0);
    e.writeUInt8(idx, 1);
    e.writeUInt16LE(value.length, 2);
    suffix.copy(e, 4);
    value.copy(e, 4 + suffix.length);
    parts.push(e);
  }
  const body = Buffer.concat(parts);
  const icount = (body.length - EROFS_XATTR_IBODY_HEADER_SIZE) / 4 + 1;
  ensure(icount <= 0xffff, 'xattrs of one inode are too large');
  return { body, icount };
}

/** Decode one xattr entry at `off` (bounded by `end`); returns full name, value, and entry length. */
export function decodeXattrEntry(buf: Buffer, off: number, end: number): { name: string; value: Buffer; len: number } {
  ensure(off + EROFS_XATTR_ENTRY_SIZE <= end && end <= buf.length, `xattr entry at ${off} is truncated`);
  const nameLen = buf.readUInt8(off);
  const idx = buf.readUInt8(off + 1);
  const valueSize = buf.readUInt16LE(off + 2);
  const len = Math.ceil((EROFS_XATTR_ENTRY_SIZE + nameLen + valueSize) / 4) * 4;
  ensure(off + EROFS_XATTR_ENTRY_SIZE + nameLen + valueSize <= end, `xattr entry at ${off}: e_name_len/e_value_size run past the xattr area`);
  const prefix = EROFS_XATTR_PREFIXES.find(([i]) => i === idx);
  if (!prefix) throw einval(`xattr entry at ${off}: unsupported e_name_index ${idx}`);
  const nameStart = off + EROFS_XATTR_ENTRY_SIZE;
  const suffix = buf.subarray(nameStart, nameStart + nameLen).toString('utf8');
  const value = Buffer.from(buf.subarray(nameStart + nameLen, nameStart + nameLen + valueSize));
  return { name: prefix[1] + suffix, value, len };
}

/**
 * Decode the inline xattr body of `icount` at `off`. Shared xattr ids are
 * returned separately for the caller to resolve (nydus writes none).
 */
export function decodeXattrIbody(buf: Buffer, off: number, icount: number): { entries: Array<[string, Buffer]>; shared: number[] } {
  if (icount === 0) return { entries: [], shared: [] };
  const size = xattrIbodySize(icount);
  need(buf, off, size, 'inline xattrs');
  const end = off + size;
  const sharedCount = buf.readUInt8(off + 4);
  let p = off + EROFS_XATTR_IBODY_HEADER_SIZE;
  ensure(p + sharedCount * 4 <= end, `xattr h_shared_count ${sharedCount} runs past the xattr area`);
  const shared: number[] = [];
  for (let i = 0; i < sharedCount; i++, p += 4) shared.push(buf.readUInt32LE(p));
  const entries: Array<[string, Buffer]> = [];
  while (p < end) {
    const e = decodeXattrEntry(buf, p, end);
    entries.push([e.name, e.value]);
    p += e.len;
  }
  return { entries, shared };
}

// ---------------------------------------------------------------- chunk index

export interface ErofsChunkIndex {
  /** nydus: c_blob_addr_lo */
  advise: number;
  /** nydus: c_blob_addr_hi */
  deviceId: number;
  blkaddr: number;
}

export function decodeChunkIndex(buf: Buffer, off: number): ErofsChunkIndex {
  need(buf, off, EROFS_CHUNK_INDEX_SIZE, 'chunk index');
  return { advise: buf.readUInt16LE(off), deviceId: buf.readUInt16LE(off + 2), blkaddr: buf.readUInt32LE(off + 4) };
}

export function encodeChunkIndex(c: ErofsChunkIndex, buf: Buffer, off: number): void {
  need(buf, off, EROFS_CHUNK_INDEX_SIZE, 'chunk index');
  buf.writeUInt16LE(c.advise, off);
  buf.writeUInt16LE(c.deviceId, off + 2);
  buf.writeUInt32LE(c.blkaddr >>> 0, off + 4);
}

/** RAFS view of a chunk index (§3.8): blob index (0-based) and 24-bit ci index. */
export function rafsChunkIndex(blobIndex: number, ciIndex: number, blkaddr: number): ErofsChunkIndex {
  ensure(Number.isInteger(blobIndex) && blobIndex >= 0 && blobIndex < 255, `blob index ${blobIndex} does not fit a v6 chunk index`);
  ensure(Number.isInteger(ciIndex) && ciIndex >= 0 && ciIndex < 1 << 24, `chunk index ${ciIndex} does not fit 24 bits`);
  ensure(Number.isInteger(blkaddr) && blkaddr >= 0 && blkaddr < EROFS_NULL_ADDR, `chunk block address ${blkaddr} does not fit 32 bits`);
  return { advise: ciIndex & 0xffff, deviceId: (blobIndex + 1) | ((ciIndex >>> 16) << 8), blkaddr };
}

export function parseRafsChunkIndex(c: ErofsChunkIndex): { blobIndex: number; ciIndex: number } {
  return { blobIndex: (c.deviceId & 0xff) - 1, ciIndex: c.advise | ((c.deviceId >>> 8) << 16) };
}

/** Chunk header `i_u` for chunk-indexed files of `chunkSize` bytes (§3.6). */
export function chunkHeaderFormat(chunkSize: number, blkbits = EROFS_BLKSZ_BITS): number {
  const bits = Math.log2(chunkSize);
  ensure(Number.isInteger(bits) && bits >= blkbits && bits - blkbits <= EROFS_CHUNK_FORMAT_BLKBITS_MASK, `chunk size ${chunkSize} cannot be expressed in an EROFS chunk header`);
  return EROFS_CHUNK_FORMAT_INDEXES | (bits - blkbits);
}

// --------------------------------------------------------------------- dirents

export interface ErofsDirent {
  nid: number;
  nameoff: number;
  fileType: number;
}

export function decodeDirent(buf: Buffer, off: number): ErofsDirent {
  need(buf, off, EROFS_DIRENT_SIZE, 'dirent');
  return { nid: readU64(buf, off, 'dirent e_nid'), nameoff: buf.readUInt16LE(off + 8), fileType: buf.readUInt8(off + 10) };
}

export function encodeDirent(d: ErofsDirent, buf: Buffer, off: number): void {
  need(buf, off, EROFS_DIRENT_SIZE, 'dirent');
  writeU64(buf, d.nid, off);
  buf.writeUInt16LE(d.nameoff, off + 8);
  buf.writeUInt8(d.fileType, off + 10);
  buf.writeUInt8(0, off + 11);
}

/**
 * Decode one directory block of `blockLen` (≤ 4096) bytes. Validates nameoff
 * ordering and bounds and name lengths (1..255); returns names as copies.
 */
export function decodeDirBlock(block: Buffer, blockLen: number, where: string): Array<{ nid: number; fileType: number; name: Buffer }> {
  ensure(blockLen >= EROFS_DIRENT_SIZE && blockLen <= block.length, `${where}: directory block of ${blockLen} bytes is too short`);
  const first = decodeDirent(block, 0);
  const n = first.nameoff / EROFS_DIRENT_SIZE;
  ensure(Number.isInteger(n) && n >= 1 && first.nameoff < blockLen, `${where}: invalid first dirent nameoff ${first.nameoff}`);
  const out: Array<{ nid: number; fileType: number; name: Buffer }> = [];
  for (let i = 0; i < n; i++) {
    const d = i === 0 ? first : decodeDirent(block, i * EROFS_DIRENT_SIZE);
    let end: number;
    if (i + 1 < n) {
      end = block.readUInt16LE((i + 1) * EROFS_DIRENT_SIZE + 8);
    } else {
      const z = block.subarray(d.nameoff, blockLen).indexOf(0);
      end = z < 0 ? blockLen : d.nameoff + z;
    }
    ensure(d.nameoff >= first.nameoff && d.nameoff < end && end <= blockLen, `${where}: dirent ${i} nameoff ${d.nameoff} is out of order or outside the block`);
    ensure(end - d.nameoff <= 255, `${where}: dirent ${i} name is longer than 255 bytes`);
    out.push({ nid: d.nid, fileType: d.fileType, name: Buffer.from(block.subarray(d.nameoff, end)) });
  }
  return out;
}

// -------------------------------------------------- 80-byte chunk info record

/** RafsV5ChunkInfo (§2.9) is also the record of the v6 chunk table (§3.11); codec owned by v5.ts. */
export { decodeChunkInfo as decodeChunkInfoRecord, decodeChunkInfoInto as decodeChunkInfoRecordInto, encodeChunkInfo as encodeChunkInfoRecord } from './v5';
