/**
 * blob.meta on-disk structures (rafs-spec §4.2): the 4096-byte
 * BlobCompressionContextHeader (magic 0xB10BB10B at both ends), the chunk-info
 * records (v1: 16 bytes, v2: 24 bytes) and the 40-byte ZranInflateContext.
 *
 * Bit layouts (all little endian). Every field is handled as two 32-bit halves
 * so no BigInt is needed on the hot path:
 *  - v1 uncomp_info: [8..12) = bits 20..23 of (usize-1); [12..44) = uoffset
 *    (4K aligned, stored in place); [44..64) = bits 0..19 of (usize-1).
 *  - v1 comp_info: [0..40) = coffset; [40..44) = bits 20..23 of (csize-1);
 *    [44..64) = bits 0..19 of (csize-1).  (size-1 quirk, spec §11.3)
 *  - v2 uncomp_info: [0..32) = uoffset>>12; [32..56) = usize-1; [56..64) flags.
 *  - v2 comp_info: [0..40) = coffset; [40..64) = csize (NOT minus one).
 *  - v2 data: lo32 = crc32 / zran or batch offset, hi32 = zran or batch index.
 */
import { TWO32, readU64, writeU64 } from '../../common/wire';
import { einval } from '../../common/errno';
import { BlobChunkFlags, BlobFeatures } from './constants';

export const BLOB_META_MAGIC = 0xb10bb10b;
export const BLOB_META_HEADER_SIZE = 4096;
export const CHUNK_INFO_V1_SIZE = 16;
export const CHUNK_INFO_V2_SIZE = 24;
export const ZRAN_CONTEXT_SIZE = 40;

/** Largest uncompressed offset encodable by v1 (44 bits) and v2 (32+12 bits). */
export const MAX_META_UNCOMPRESSED_OFFSET = 2 ** 44 - 1;
/** Largest compressed offset encodable (40 bits). */
export const MAX_META_COMPRESSED_OFFSET = 2 ** 40 - 1;
/** Largest chunk size encodable (24 bits of size-1). */
export const MAX_META_CHUNK_SIZE = 1 << 24;

/** Flags byte of a v2 chunk-info record (bits 56..63 of uncomp_info). */
export const ChunkInfoV2Flags = { COMPRESSED: 0x01, ZRAN: 0x02, BATCH: 0x04, ENCRYPTED: 0x08, HAS_CRC32: 0x10 } as const;

export interface BlobMetaHeader {
  features: number;
  ciCompressor: number;
  ciEntries: number;
  ciOffset: number;
  ciCompressedSize: number;
  ciUncompressedSize: number;
  ciZranOffset: number;
  ciZranSize: number;
  ciZranCount: number;
}

/** One decoded chunk-info record (v1 or v2). */
export interface MetaChunkInfo {
  compressedOffset: number;
  compressedSize: number;
  uncompressedOffset: number;
  uncompressedSize: number;
  compressed: boolean;
  /** v2 flags byte (ChunkInfoV2Flags); v1: COMPRESSED only */
  v2Flags: number;
  /** v2 `data` low / high 32 bits (0 for v1) */
  dataLo: number;
  dataHi: number;
}

export interface ZranInflateContext {
  inOffset: number;
  outOffset: number;
  dictOffset: number;
  inLen: number;
  outLen: number;
  dictSize: number;
  ctxByte: number;
  ctxBits: number;
}

export function decodeBlobMetaHeader(buf: Buffer, off = 0): BlobMetaHeader {
  if (off < 0 || off + BLOB_META_HEADER_SIZE > buf.length) throw einval(`blob.meta header at ${off} exceeds buffer of ${buf.length} bytes`);
  const m1 = buf.readUInt32LE(off);
  const m2 = buf.readUInt32LE(off + 4092);
  if (m1 !== BLOB_META_MAGIC || m2 !== BLOB_META_MAGIC) {
    throw einval(`invalid blob.meta header magic 0x${m1.toString(16)}/0x${m2.toString(16)}, expected 0xb10bb10b`);
  }
  return {
    features: buf.readUInt32LE(off + 4),
    ciCompressor: buf.readUInt32LE(off + 8),
    ciEntries: buf.readUInt32LE(off + 12),
    ciOffset: readU64(buf, off + 16, 'blob.meta s_ci_offset'),
    ciCompressedSize: readU64(buf, off + 24, 'blob.meta s_ci_compressed_size'),
    ciUncompressedSize: readU64(buf, off + 32, 'blob.meta s_ci_uncompressed_size'),
    ciZranOffset: readU64(buf, off + 40, 'blob.meta s_ci_zran_offset'),
    ciZranSize: readU64(buf, off + 48, 'blob.meta s_ci_zran_size'),
    ciZranCount: buf.readUInt32LE(off + 56),
  };
}

export function encodeBlobMetaHeader(h: BlobMetaHeader): Buffer {
  const b = Buffer.alloc(BLOB_META_HEADER_SIZE);
  b.writeUInt32LE(BLOB_META_MAGIC, 0);
  b.writeUInt32LE(h.features >>> 0, 4);
  b.writeUInt32LE(h.ciCompressor >>> 0, 8);
  b.writeUInt32LE(h.ciEntries >>> 0, 12);
  writeU64(b, 16, h.ciOffset);
  writeU64(b, 24, h.ciCompressedSize);
  writeU64(b, 32, h.ciUncompressedSize);
  writeU64(b, 40, h.ciZranOffset);
  writeU64(b, 48, h.ciZranSize);
  b.writeUInt32LE(h.ciZranCount >>> 0, 56);
  b.writeUInt32LE(BLOB_META_MAGIC, 4092);
  return b;
}

export const chunkInfoSize = (v2: boolean): number => (v2 ? CHUNK_INFO_V2_SIZE : CHUNK_INFO_V1_SIZE);
export const isChunkInfoV2 = (features: number): boolean => (features & BlobFeatures.CHUNK_INFO_V2) !== 0;

/** Decode the v1 record at `off`. */
export function decodeChunkInfoV1(buf: Buffer, off: number): MetaChunkInfo {
  const ul = buf.readUInt32LE(off);
  const uh = buf.readUInt32LE(off + 4);
  const cl = buf.readUInt32LE(off + 8);
  const ch = buf.readUInt32LE(off + 12);
  const uncompressedOffset = ((ul & 0xfffff000) >>> 0) + (uh & 0xfff) * TWO32;
  const uncompressedSize = ((((ul >>> 8) & 0xf) << 20) | (uh >>> 12)) + 1;
  const compressedOffset = cl + (ch & 0xff) * TWO32;
  const compressedSize = ((((ch >>> 8) & 0xf) << 20) | (ch >>> 12)) + 1;
  const compressed = compressedSize !== uncompressedSize;
  return { compressedOffset, compressedSize, uncompressedOffset, uncompressedSize, compressed, v2Flags: compressed ? ChunkInfoV2Flags.COMPRESSED : 0, dataLo: 0, dataHi: 0 };
}

/** Decode the v2 record at `off`. */
export function decodeChunkInfoV2(buf: Buffer, off: number): MetaChunkInfo {
  const ul = buf.readUInt32LE(off);
  const uh = buf.readUInt32LE(off + 4);
  const cl = buf.readUInt32LE(off + 8);
  const ch = buf.readUInt32LE(off + 12);
  const v2Flags = uh >>> 24;
  return {
    uncompressedOffset: ul * 4096,
    uncompressedSize: (uh & 0xffffff) + 1,
    compressedOffset: cl + (ch & 0xff) * TWO32,
    compressedSize: ch >>> 8,
    compressed: (v2Flags & ChunkInfoV2Flags.COMPRESSED) !== 0,
    v2Flags,
    dataLo: buf.readUInt32LE(off + 16),
    dataHi: buf.readUInt32LE(off + 20),
  };
}

export function decodeChunkInfo(buf: Buffer, off: number, v2: boolean): MetaChunkInfo {
  if (off < 0 || off + chunkInfoSize(v2) > buf.length) throw einval(`chunk info at ${off} exceeds buffer of ${buf.length} bytes`);
  return v2 ? decodeChunkInfoV2(buf, off) : decodeChunkInfoV1(buf, off);
}

function checkEncodable(c: { compressedOffset: number; compressedSize: number; uncompressedOffset: number; uncompressedSize: number }, v2: boolean): void {
  if (c.uncompressedOffset % 4096 !== 0 || c.uncompressedOffset < 0 || c.uncompressedOffset > MAX_META_UNCOMPRESSED_OFFSET) {
    throw einval(`chunk uncompressed offset 0x${c.uncompressedOffset.toString(16)} is not 4K aligned or too large for blob.meta`);
  }
  if (c.compressedOffset < 0 || c.compressedOffset > MAX_META_COMPRESSED_OFFSET) throw einval(`chunk compressed offset 0x${c.compressedOffset.toString(16)} too large for blob.meta`);
  if (c.uncompressedSize < 1 || c.uncompressedSize > MAX_META_CHUNK_SIZE) throw einval(`chunk uncompressed size ${c.uncompressedSize} not encodable in blob.meta`);
  const maxC = v2 ? 0xffffff : MAX_META_CHUNK_SIZE;
  if (c.compressedSize < (v2 ? 0 : 1) || c.compressedSize > maxC) throw einval(`chunk compressed size ${c.compressedSize} not encodable in blob.meta`);
}

/** Encode a v1 record into `buf` at `off`. */
export function encodeChunkInfoV1(buf: Buffer, off: number, c: { compressedOffset: number; compressedSize: number; uncompressedOffset: number; uncompressedSize: number }): void {
  checkEncodable(c, false);
  const us = c.uncompressedSize - 1;
  const cs = c.compressedSize - 1;
  const uoLo = c.uncompressedOffset % TWO32;
  const uoHi = Math.floor(c.uncompressedOffset / TWO32);
  buf.writeUInt32LE((uoLo | (((us >>> 20) & 0xf) << 8)) >>> 0, off);
  buf.writeUInt32LE(((uoHi & 0xfff) | ((us & 0xfffff) << 12)) >>> 0, off + 4);
  buf.writeUInt32LE(c.compressedOffset % TWO32, off + 8);
  buf.writeUInt32LE(((Math.floor(c.compressedOffset / TWO32) & 0xff) | (((cs >>> 20) & 0xf) << 8) | ((cs & 0xfffff) << 12)) >>> 0, off + 12);
}

/** Encode a v2 record into `buf` at `off`. */
export function encodeChunkInfoV2(
  buf: Buffer,
  off: number,
  c: { compressedOffset: number; compressedSize: number; uncompressedOffset: number; uncompressedSize: number; v2Flags: number; dataLo?: number; dataHi?: number },
): void {
  checkEncodable(c, true);
  buf.writeUInt32LE(c.uncompressedOffset / 4096, off);
  buf.writeUInt32LE((((c.uncompressedSize - 1) & 0xffffff) | ((c.v2Flags & 0xff) << 24)) >>> 0, off + 4);
  buf.writeUInt32LE(c.compressedOffset % TWO32, off + 8);
  buf.writeUInt32LE(((Math.floor(c.compressedOffset / TWO32) & 0xff) | ((c.compressedSize & 0xffffff) << 8)) >>> 0, off + 12);
  buf.writeUInt32LE((c.dataLo ?? 0) >>> 0, off + 16);
  buf.writeUInt32LE((c.dataHi ?? 0) >>> 0, off + 20);
}

/** BlobChunkFlags (§1.5) equivalent of a decoded record. */
export function chunkFlagsOf(m: MetaChunkInfo): number {
  let f = 0;
  if (m.compressed) f |= BlobChunkFlags.COMPRESSED;
  if (m.v2Flags & ChunkInfoV2Flags.ENCRYPTED) f |= BlobChunkFlags.ENCRYPTED;
  if (m.v2Flags & ChunkInfoV2Flags.BATCH) f |= BlobChunkFlags.BATCH;
  if (m.v2Flags & ChunkInfoV2Flags.HAS_CRC32) f |= BlobChunkFlags.HAS_CRC32;
  return f;
}

export function decodeZranContext(buf: Buffer, off: number): ZranInflateContext {
  if (off < 0 || off + ZRAN_CONTEXT_SIZE > buf.length) throw einval(`zran context at ${off} exceeds buffer of ${buf.length} bytes`);
  return {
    inOffset: readU64(buf, off, 'zran in_offset'),
    outOffset: readU64(buf, off + 8, 'zran out_offset'),
    dictOffset: readU64(buf, off + 16, 'zran dict_offset'),
    inLen: buf.readUInt32LE(off + 24),
    outLen: buf.readUInt32LE(off + 28),
    dictSize: buf.readUInt32LE(off + 32),
    ctxByte: buf.readUInt8(off + 36),
    ctxBits: buf.readUInt8(off + 37),
  };
}

/**
 * Decode the zran (or batch) context table found in uncompressed ci data,
 * bounds-checked against the header.
 */
export function decodeZranContexts(ciData: Buffer, h: BlobMetaHeader): ZranInflateContext[] {
  if (h.ciZranCount === 0) return [];
  const end = h.ciZranOffset + h.ciZranCount * ZRAN_CONTEXT_SIZE;
  if (h.ciZranOffset > ciData.length || end > ciData.length || h.ciZranCount * ZRAN_CONTEXT_SIZE > h.ciZranSize) {
    throw einval(`zran context table [${h.ciZranOffset}, +${h.ciZranCount}x40) exceeds ci data of ${ciData.length} bytes`);
  }
  const out: ZranInflateContext[] = [];
  for (let i = 0; i < h.ciZranCount; i++) out.push(decodeZranContext(ciData, h.ciZranOffset + i * ZRAN_CONTEXT_SIZE));
  return out;
}
