/**
 * RAFS v5 on-disk structures (rafs-spec §2): superblock (§2.2), inode table
 * (§2.3), prefetch table (§2.4), blob table (§2.5), extended blob table
 * (§2.6), inode record header `RafsV5Inode` (§2.7), xattr block (§2.8) and
 * the 80-byte chunk record `RafsV5ChunkInfo` (§2.9, reused by v6 §3.11).
 *
 * Decoders bounds-check against the buffer they are given and throw EINVAL
 * naming the offending field; encoders write exactly the upstream layout.
 */
import { einval, ensure } from '../../common/errno';
import type { ChunkInfo } from '../../storage/format/types';
import {
  alignUp, BlobChunkFlags, RAFS_MAX_CHUNK_SIZE, RAFS_MAX_NAME, RAFS_SUPER_FLAGS_KNOWN,
  RAFS_SUPER_VERSION_V5, readU64, writeU64,
} from './constants';

export const RAFSV5_SUPER_MAGIC = 0x52414653;
export const RAFSV5_SUPERBLOCK_SIZE = 8192;
export const RAFSV5_ALIGNMENT = 8;
export const RAFSV5_INODE_SIZE = 128;
export const RAFSV5_CHUNK_INFO_SIZE = 80;
export const RAFSV5_EXT_BLOB_ENTRY_SIZE = 64;
export const RAFSV5_XATTR_HEADER_SIZE = 8;
export const RAFSV5_ROOT_INODE = 1;
/** Inode table values (offset >> 3) must lie in (1024, 2^29) (§2.3). */
const INODE_TABLE_MIN_VALUE = 1024;
const INODE_TABLE_MAX_VALUE = 1 << 29;
/** Blob ids are at most 64 ASCII bytes (§1.1). */
const MAX_BLOB_ID_LEN = 64;
const XATTR_MAX_VALUE = 64 * 1024;

export const alignV5 = (n: number): number => alignUp(n, RAFSV5_ALIGNMENT);

/** Check that `[off, off+len)` lies inside `buf`, naming `what` otherwise. */
export function checkRange(buf: Buffer, off: number, len: number, what: string): void {
  ensure(Number.isSafeInteger(off) && Number.isSafeInteger(len) && off >= 0 && len >= 0 && off + len <= buf.length,
    () => `${what}: range [0x${off.toString(16)}, +0x${len.toString(16)}) is outside the ${buf.length}-byte buffer`);
}

// ---------------------------------------------------------------------------
// Superblock (§2.2)

export interface RafsV5SuperBlock {
  magic: number;
  version: number;
  sbSize: number;
  /** chunk size */
  blockSize: number;
  flags: number;
  inodesCount: number;
  inodeTableOffset: number;
  prefetchTableOffset: number;
  blobTableOffset: number;
  inodeTableEntries: number;
  prefetchTableEntries: number;
  blobTableSize: number;
  extendedBlobTableEntries: number;
  extendedBlobTableOffset: number;
}

/** True when `buf` starts with the v5 magic and version (no further validation). */
export function hasV5Magic(buf: Buffer): boolean {
  return buf.length >= 8 && buf.readUInt32LE(0) === RAFSV5_SUPER_MAGIC && buf.readUInt32LE(4) === RAFS_SUPER_VERSION_V5;
}

/** Decode the superblock fields (header checks only; see `validateSuperBlockV5` for table ranges). */
export function decodeSuperBlockV5(buf: Buffer): RafsV5SuperBlock {
  ensure(buf.length >= 8, `v5 superblock: buffer of ${buf.length} bytes is too short`);
  const sb: RafsV5SuperBlock = {
    magic: buf.readUInt32LE(0),
    version: buf.readUInt32LE(4),
    sbSize: 0, blockSize: 0, flags: 0, inodesCount: 0, inodeTableOffset: 0, prefetchTableOffset: 0,
    blobTableOffset: 0, inodeTableEntries: 0, prefetchTableEntries: 0, blobTableSize: 0,
    extendedBlobTableEntries: 0, extendedBlobTableOffset: 0,
  };
  ensure(sb.magic === RAFSV5_SUPER_MAGIC, () => `v5 superblock: bad s_magic 0x${sb.magic.toString(16)}`);
  ensure(sb.version === RAFS_SUPER_VERSION_V5, () => `v5 superblock: unsupported s_fs_version 0x${sb.version.toString(16)}`);
  ensure(buf.length > RAFSV5_SUPERBLOCK_SIZE, `v5 superblock: bootstrap of ${buf.length} bytes is too short`);
  sb.sbSize = buf.readUInt32LE(8);
  sb.blockSize = buf.readUInt32LE(12);
  sb.flags = readU64(buf, 16, 's_flags');
  sb.inodesCount = readU64(buf, 24, 's_inodes_count');
  sb.inodeTableOffset = readU64(buf, 32, 's_inode_table_offset');
  sb.prefetchTableOffset = readU64(buf, 40, 's_prefetch_table_offset');
  sb.blobTableOffset = readU64(buf, 48, 's_blob_table_offset');
  sb.inodeTableEntries = buf.readUInt32LE(56);
  sb.prefetchTableEntries = buf.readUInt32LE(60);
  sb.blobTableSize = buf.readUInt32LE(64);
  sb.extendedBlobTableEntries = buf.readUInt32LE(68);
  sb.extendedBlobTableOffset = readU64(buf, 72, 's_extended_blob_table_offset');

  ensure(sb.sbSize === RAFSV5_SUPERBLOCK_SIZE, () => `v5 superblock: bad s_sb_size ${sb.sbSize}`);
  const bs = sb.blockSize;
  ensure(bs >= 0x1000 && (bs & (bs - 1)) === 0 && bs <= RAFS_MAX_CHUNK_SIZE,
    () => `v5 superblock: bad s_block_size 0x${bs.toString(16)}`);
  ensure(sb.flags <= 0xffff_ffff && (sb.flags & ~RAFS_SUPER_FLAGS_KNOWN) === 0,
    () => `v5 superblock: unknown bits in s_flags 0x${sb.flags.toString(16)}`);
  return sb;
}

interface Range { name: string; off: number; len: number }

/** Check every table of `sb` lies 8-aligned inside `[8192, fileSize)` and no two overlap (§2.2). */
export function validateSuperBlockV5(sb: RafsV5SuperBlock, fileSize: number): void {
  const ranges: Range[] = [
    { name: 'inode table', off: sb.inodeTableOffset, len: sb.inodeTableEntries * 4 },
    { name: 'prefetch table', off: sb.prefetchTableOffset, len: sb.prefetchTableEntries * 4 },
    { name: 'blob table', off: sb.blobTableOffset, len: sb.blobTableSize },
    { name: 'extended blob table', off: sb.extendedBlobTableOffset, len: sb.extendedBlobTableEntries * RAFSV5_EXT_BLOB_ENTRY_SIZE },
  ];
  ensure(sb.inodesCount <= sb.inodeTableEntries,
    () => `v5 superblock: s_inodes_count ${sb.inodesCount} exceeds s_inode_table_entries ${sb.inodeTableEntries}`);
  for (const r of ranges) {
    if (r.len === 0 && r.name !== 'inode table') continue;
    ensure(r.off % RAFSV5_ALIGNMENT === 0, () => `v5 superblock: ${r.name} offset 0x${r.off.toString(16)} is not 8-byte aligned`);
    ensure(r.off >= RAFSV5_SUPERBLOCK_SIZE && r.off + r.len <= fileSize,
      () => `v5 superblock: ${r.name} [0x${r.off.toString(16)}, +0x${r.len.toString(16)}) is outside the ${fileSize}-byte bootstrap`);
  }
  const nonEmpty = ranges.filter((r) => r.len > 0);
  for (let i = 0; i < nonEmpty.length; i++) {
    for (let j = i + 1; j < nonEmpty.length; j++) {
      const a = nonEmpty[i], b = nonEmpty[j];
      ensure(a.off + a.len <= b.off || b.off + b.len <= a.off, `v5 superblock: ${a.name} overlaps ${b.name}`);
    }
  }
}

export function encodeSuperBlockV5(sb: RafsV5SuperBlock): Buffer {
  const buf = Buffer.alloc(RAFSV5_SUPERBLOCK_SIZE);
  buf.writeUInt32LE(sb.magic, 0);
  buf.writeUInt32LE(sb.version, 4);
  buf.writeUInt32LE(sb.sbSize, 8);
  buf.writeUInt32LE(sb.blockSize, 12);
  writeU64(buf, sb.flags, 16);
  writeU64(buf, sb.inodesCount, 24);
  writeU64(buf, sb.inodeTableOffset, 32);
  writeU64(buf, sb.prefetchTableOffset, 40);
  writeU64(buf, sb.blobTableOffset, 48);
  buf.writeUInt32LE(sb.inodeTableEntries, 56);
  buf.writeUInt32LE(sb.prefetchTableEntries, 60);
  buf.writeUInt32LE(sb.blobTableSize, 64);
  buf.writeUInt32LE(sb.extendedBlobTableEntries, 68);
  writeU64(buf, sb.extendedBlobTableOffset, 72);
  return buf;
}

// ---------------------------------------------------------------------------
// Inode table (§2.3) and prefetch table (§2.4): u32 arrays padded to 8 bytes

function decodeU32Array(buf: Buffer, off: number, count: number, what: string): Uint32Array {
  checkRange(buf, off, count * 4, what);
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = buf.readUInt32LE(off + i * 4);
  return out;
}

function encodeU32Array(values: ArrayLike<number>): Buffer {
  const buf = Buffer.alloc(alignV5(values.length * 4));
  for (let i = 0; i < values.length; i++) buf.writeUInt32LE(values[i], i * 4);
  return buf;
}

/** Raw inode table: entry `i-1` = record offset >> 3 of index `i`. */
export function decodeInodeTableV5(buf: Buffer, off: number, entries: number): Uint32Array {
  return decodeU32Array(buf, off, entries, 'v5 inode table');
}

/** Byte offset of the record for `index` from its raw table value, validated (§2.3). */
export function inodeOffsetFromTable(value: number, index: number, bufLen: number): number {
  ensure(value > INODE_TABLE_MIN_VALUE && value < INODE_TABLE_MAX_VALUE,
    () => `v5 inode table: entry for index ${index} has invalid value 0x${value.toString(16)}`);
  const off = value * 8;
  ensure(off + RAFSV5_INODE_SIZE <= bufLen,
    () => `v5 inode table: record of index ${index} at 0x${off.toString(16)} is outside the ${bufLen}-byte bootstrap`);
  return off;
}

/** Inode table with `offsets[i-1]` = byte offset of index i (8-aligned). */
export function encodeInodeTableV5(offsets: ArrayLike<number>): Buffer {
  const values = Array.from(offsets, (o, i) => {
    if (o % RAFSV5_ALIGNMENT !== 0) throw einval(`v5 inode table: record offset 0x${o.toString(16)} of index ${i + 1} is not aligned`);
    return o / 8;
  });
  return encodeU32Array(values);
}

/** Prefetch table: inode numbers, stopping at the first 0. */
export function decodePrefetchTableV5(buf: Buffer, off: number, entries: number): number[] {
  const raw = decodeU32Array(buf, off, entries, 'v5 prefetch table');
  const out: number[] = [];
  for (const v of raw) {
    if (v === 0) break;
    out.push(v);
  }
  return out;
}

export function encodePrefetchTableV5(inos: number[]): Buffer {
  return encodeU32Array(inos);
}

// ---------------------------------------------------------------------------
// Blob table (§2.5) and extended blob table (§2.6)

export interface RafsV5BlobEntry {
  readaheadOffset: number;
  readaheadSize: number;
  blobId: string;
}

function validateBlobId(id: string, index: number): void {
  ensure(id.length > 0 && id.length <= MAX_BLOB_ID_LEN && /^[\x21-\x7e]+$/.test(id) && !id.includes('/') && id !== '.' && id !== '..',
    () => `v5 blob table: invalid blob id ${JSON.stringify(id.slice(0, 80))} for blob ${index}`);
}

export function decodeBlobTableV5(buf: Buffer, off: number, size: number): RafsV5BlobEntry[] {
  checkRange(buf, off, size, 'v5 blob table');
  const out: RafsV5BlobEntry[] = [];
  let pos = off;
  const end = off + size;
  while (end - pos > 8) {
    const readaheadOffset = buf.readUInt32LE(pos);
    const readaheadSize = buf.readUInt32LE(pos + 4);
    let idEnd = pos + 8;
    while (idEnd < end && buf[idEnd] !== 0) idEnd++;
    const blobId = buf.toString('latin1', pos + 8, idEnd);
    validateBlobId(blobId, out.length);
    out.push({ readaheadOffset, readaheadSize, blobId });
    pos = idEnd + 1;
  }
  return out;
}

/** Entries separated by one NUL, no NUL after the last, zero-padded to 8. */
export function encodeBlobTableV5(entries: RafsV5BlobEntry[]): Buffer {
  const parts: Buffer[] = [];
  entries.forEach((e, i) => {
    validateBlobId(e.blobId, i);
    const head = Buffer.alloc(8);
    head.writeUInt32LE(e.readaheadOffset, 0);
    head.writeUInt32LE(e.readaheadSize, 4);
    parts.push(head, Buffer.from(e.blobId, 'latin1'));
    if (i !== entries.length - 1) parts.push(Buffer.alloc(1));
  });
  const body = Buffer.concat(parts);
  return Buffer.concat([body, Buffer.alloc(alignV5(body.length) - body.length)]);
}

export interface RafsV5ExtBlobEntry {
  chunkCount: number;
  features: number;
  uncompressedSize: number;
  compressedSize: number;
}

export function decodeExtBlobTableV5(buf: Buffer, off: number, entries: number): RafsV5ExtBlobEntry[] {
  checkRange(buf, off, entries * RAFSV5_EXT_BLOB_ENTRY_SIZE, 'v5 extended blob table');
  const out: RafsV5ExtBlobEntry[] = [];
  for (let i = 0; i < entries; i++) {
    const p = off + i * RAFSV5_EXT_BLOB_ENTRY_SIZE;
    out.push({
      chunkCount: buf.readUInt32LE(p),
      features: buf.readUInt32LE(p + 4),
      uncompressedSize: readU64(buf, p + 8, `extended blob ${i} uncompressed_size`),
      compressedSize: readU64(buf, p + 16, `extended blob ${i} compressed_size`),
    });
  }
  return out;
}

export function encodeExtBlobTableV5(entries: RafsV5ExtBlobEntry[]): Buffer {
  const buf = Buffer.alloc(entries.length * RAFSV5_EXT_BLOB_ENTRY_SIZE);
  entries.forEach((e, i) => {
    const p = i * RAFSV5_EXT_BLOB_ENTRY_SIZE;
    buf.writeUInt32LE(e.chunkCount, p);
    buf.writeUInt32LE(e.features >>> 0, p + 4);
    writeU64(buf, e.uncompressedSize, p + 8);
    writeU64(buf, e.compressedSize, p + 16);
  });
  return buf;
}

// ---------------------------------------------------------------------------
// Inode record header (§2.7)

export interface RafsV5Inode {
  digest: Buffer;
  parent: number;
  ino: number;
  uid: number;
  gid: number;
  projid: number;
  mode: number;
  size: number;
  blocks: number;
  flags: number;
  nlink: number;
  childIndex: number;
  childCount: number;
  nameSize: number;
  symlinkSize: number;
  rdev: number;
  mtimeNsec: number;
  mtime: number;
}

export function decodeInodeV5(buf: Buffer, off: number): RafsV5Inode {
  checkRange(buf, off, RAFSV5_INODE_SIZE, 'v5 inode');
  const field = (name: string) => `v5 inode at 0x${off.toString(16)}: ${name}`;
  return {
    digest: Buffer.from(buf.subarray(off, off + 32)),
    parent: readU64(buf, off + 32, field('i_parent')),
    ino: readU64(buf, off + 40, field('i_ino')),
    uid: buf.readUInt32LE(off + 48),
    gid: buf.readUInt32LE(off + 52),
    projid: buf.readUInt32LE(off + 56),
    mode: buf.readUInt32LE(off + 60),
    size: readU64(buf, off + 64, field('i_size')),
    blocks: readU64(buf, off + 72, field('i_blocks')),
    flags: readU64(buf, off + 80, field('i_flags')),
    nlink: buf.readUInt32LE(off + 88),
    childIndex: buf.readUInt32LE(off + 92),
    childCount: buf.readUInt32LE(off + 96),
    nameSize: buf.readUInt16LE(off + 100),
    symlinkSize: buf.readUInt16LE(off + 102),
    rdev: buf.readUInt32LE(off + 104),
    mtimeNsec: buf.readUInt32LE(off + 108),
    mtime: readU64(buf, off + 112, field('i_mtime')),
  };
}

export function encodeInodeV5(i: RafsV5Inode, buf: Buffer, off: number): void {
  ensure(i.digest.length === 32, 'v5 inode: i_digest must be 32 bytes');
  buf.fill(0, off, off + RAFSV5_INODE_SIZE);
  i.digest.copy(buf, off);
  writeU64(buf, i.parent, off + 32);
  writeU64(buf, i.ino, off + 40);
  buf.writeUInt32LE(i.uid >>> 0, off + 48);
  buf.writeUInt32LE(i.gid >>> 0, off + 52);
  buf.writeUInt32LE(i.projid >>> 0, off + 56);
  buf.writeUInt32LE(i.mode >>> 0, off + 60);
  writeU64(buf, i.size, off + 64);
  writeU64(buf, i.blocks, off + 72);
  writeU64(buf, i.flags, off + 80);
  buf.writeUInt32LE(i.nlink, off + 88);
  buf.writeUInt32LE(i.childIndex, off + 92);
  buf.writeUInt32LE(i.childCount, off + 96);
  buf.writeUInt16LE(i.nameSize, off + 100);
  buf.writeUInt16LE(i.symlinkSize, off + 102);
  buf.writeUInt32LE(i.rdev >>> 0, off + 104);
  buf.writeUInt32LE(i.mtimeNsec >>> 0, off + 108);
  writeU64(buf, i.mtime, off + 112);
}

/** Validate a directory-entry name: 1..255 bytes, no '/', no NUL, not '.' or '..' (§2.7). */
export function validateEntryName(name: Buffer, what: string): void {
  ensure(name.length > 0 && name.length <= RAFS_MAX_NAME, () => `${what}: name length ${name.length} is out of range`);
  ensure(!name.includes(0x2f) && !name.includes(0), () => `${what}: name ${JSON.stringify(name.toString('latin1'))} contains '/' or NUL`);
  ensure(!(name.length === 1 && name[0] === 0x2e) && !(name.length === 2 && name[0] === 0x2e && name[1] === 0x2e),
    () => `${what}: name ${JSON.stringify(name.toString('latin1'))} is not allowed`);
}

// ---------------------------------------------------------------------------
// Xattr block (§2.8)

/** Payload size Σ(4 + name + 1 + value) of a pair list (the block's u64 `size`). */
export function xattrPayloadSize(pairs: Array<[string, Buffer]>): number {
  return pairs.reduce((n, [k, v]) => n + 4 + Buffer.byteLength(k) + 1 + v.length, 0);
}

/** Total on-disk bytes of the block (header + padded payload); 0 when there are no pairs. */
export function xattrBlockSize(pairs: Array<[string, Buffer]>): number {
  return pairs.length === 0 ? 0 : RAFSV5_XATTR_HEADER_SIZE + alignV5(xattrPayloadSize(pairs));
}

export function encodeXattrsV5(pairs: Array<[string, Buffer]>): Buffer {
  if (pairs.length === 0) return Buffer.alloc(0);
  const buf = Buffer.alloc(xattrBlockSize(pairs));
  writeU64(buf, xattrPayloadSize(pairs), 0);
  let p = RAFSV5_XATTR_HEADER_SIZE;
  for (const [k, v] of pairs) {
    const name = Buffer.from(k);
    ensure(name.length > 0 && name.length <= RAFS_MAX_NAME && !name.includes(0), () => `xattr name ${JSON.stringify(k)} is invalid`);
    ensure(v.length <= XATTR_MAX_VALUE, () => `xattr ${k}: value of ${v.length} bytes is too large`);
    buf.writeUInt32LE(name.length + 1 + v.length, p);
    name.copy(buf, p + 4);
    v.copy(buf, p + 5 + name.length);
    p += 5 + name.length + v.length;
  }
  return buf;
}

/** Decode the xattr block at `off`; returns the pairs and the block's total on-disk size. */
export function decodeXattrsV5(buf: Buffer, off: number): { pairs: Array<[string, Buffer]>; blockSize: number } {
  checkRange(buf, off, RAFSV5_XATTR_HEADER_SIZE, 'v5 xattr block header');
  const size = readU64(buf, off, 'v5 xattr block size');
  const blockSize = RAFSV5_XATTR_HEADER_SIZE + alignV5(size);
  checkRange(buf, off, blockSize, 'v5 xattr block');
  const pairs: Array<[string, Buffer]> = [];
  let p = off + RAFSV5_XATTR_HEADER_SIZE;
  const end = p + size;
  while (p < end) {
    ensure(end - p >= 4, 'v5 xattr block: truncated pair size');
    const pairSize = buf.readUInt32LE(p);
    p += 4;
    ensure(pairSize <= end - p, () => `v5 xattr block: pair size ${pairSize} exceeds the block`);
    const pair = buf.subarray(p, p + pairSize);
    const nul = pair.indexOf(0);
    ensure(nul > 0, 'v5 xattr block: pair without a NUL-terminated name');
    pairs.push([pair.toString('utf8', 0, nul), Buffer.from(pair.subarray(nul + 1))]);
    p += pairSize;
  }
  return { pairs, blockSize };
}

// ---------------------------------------------------------------------------
// Chunk record (§2.9)

/** (the digest from the shared Buffer pool: decodeChunkInfoInto overwrites all of its 32 bytes) */
export function decodeChunkInfo(buf: Buffer, off: number): ChunkInfo {
  return decodeChunkInfoInto(buf, off, {
    digest: Buffer.allocUnsafe(32), blobIndex: 0, flags: 0, compressed: false, compressedSize: 0, uncompressedSize: 0,
    compressedOffset: 0, uncompressedOffset: 0, fileOffset: 0, index: 0, crc32: 0,
  });
}

/** decodeChunkInfo into `out` (its 32-byte digest overwritten in place): walks that reuse one record. */
export function decodeChunkInfoInto(buf: Buffer, off: number, out: ChunkInfo): ChunkInfo {
  checkRange(buf, off, RAFSV5_CHUNK_INFO_SIZE, 'chunk info');
  const flags = buf.readUInt32LE(off + 36);
  buf.copy(out.digest, 0, off, off + 32);
  out.blobIndex = buf.readUInt32LE(off + 32);
  out.flags = flags;
  out.compressed = (flags & BlobChunkFlags.COMPRESSED) !== 0;
  out.compressedSize = buf.readUInt32LE(off + 40);
  out.uncompressedSize = buf.readUInt32LE(off + 44);
  out.compressedOffset = readU64(buf, off + 48, 'chunk compressed_offset');
  out.uncompressedOffset = readU64(buf, off + 56, 'chunk uncompressed_offset');
  out.fileOffset = readU64(buf, off + 64, 'chunk file_offset');
  out.index = buf.readUInt32LE(off + 72);
  out.crc32 = buf.readUInt32LE(off + 76);
  return out;
}

/** Encode `c`; the COMPRESSED bit follows `c.compressed` whatever `c.flags` says. */
export function encodeChunkInfo(c: ChunkInfo, buf: Buffer, off: number): void {
  ensure(c.digest.length === 32, 'chunk info: digest must be 32 bytes');
  checkRange(buf, off, RAFSV5_CHUNK_INFO_SIZE, 'chunk info');
  const flags = c.compressed ? c.flags | BlobChunkFlags.COMPRESSED : c.flags & ~BlobChunkFlags.COMPRESSED;
  c.digest.copy(buf, off);
  buf.writeUInt32LE(c.blobIndex, off + 32);
  buf.writeUInt32LE(flags >>> 0, off + 36);
  buf.writeUInt32LE(c.compressedSize, off + 40);
  buf.writeUInt32LE(c.uncompressedSize, off + 44);
  writeU64(buf, c.compressedOffset, off + 48);
  writeU64(buf, c.uncompressedOffset, off + 56);
  writeU64(buf, c.fileOffset, off + 64);
  buf.writeUInt32LE(c.index, off + 72);
  buf.writeUInt32LE(c.crc32 >>> 0, off + 76);
}
