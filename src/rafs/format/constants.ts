/** Constants and flag sets shared by RAFS v5 and v6 (rafs-spec §1). */
import { Compressor } from '../../common/compress';
import { DigestAlgorithm } from '../../common/digest';
import { einval } from '../../common/errno';
import * as wire from '../../common/wire';

export const RAFS_SUPER_VERSION_V5 = 0x500;
export const RAFS_SUPER_VERSION_V6 = 0x600;
export const RAFS_DEFAULT_CHUNK_SIZE = 0x100000;
export const RAFS_MIN_CHUNK_SIZE = 0x1000;
export const RAFS_MAX_NAME = 255;
export const EROFS_BLOCK_SIZE = 4096;

/** RafsSuperFlags (§1.3). Values fit in 32 bits, kept as numbers. */
export const RafsSuperFlags = {
  COMPRESSION_NONE: 0x1,
  COMPRESSION_LZ4: 0x2,
  HASH_BLAKE3: 0x4,
  HASH_SHA256: 0x8,
  EXPLICIT_UID_GID: 0x10,
  HAS_XATTR: 0x20,
  COMPRESSION_GZIP: 0x40,
  COMPRESSION_ZSTD: 0x80,
  INLINED_CHUNK_DIGEST: 0x100,
  TARTFS_MODE: 0x200,
  ENCRYPTION_NONE: 0x0100_0000,
  ENCRYPTION_ASE_128_XTS: 0x0200_0000,
} as const;
/** Every known bit including PRESERVED_COMPAT_5..0 (0x0400_0000..0x8000_0000). */
export const RAFS_SUPER_FLAGS_KNOWN = 0x3ff | 0x0100_0000 | 0x0200_0000 | 0xfc00_0000;

import { RAFS_MAX_CHUNK_SIZE } from '../../storage/format/constants';

export { BlobFeatures, BlobChunkFlags, RAFS_MAX_BOOTSTRAP_SIZE, RAFS_MAX_CHUNKS_PER_BLOB, RAFS_MAX_CHUNK_SIZE, alignUp } from '../../storage/format/constants';

/** v5 RafsInodeFlags (§2.7). */
export const RafsInodeFlags = { SYMLINK: 0x1, HARDLINK: 0x2, XATTR: 0x4, HAS_HOLE: 0x8 } as const;

export function compressorFromFlags(flags: number): Compressor {
  if (flags & RafsSuperFlags.COMPRESSION_NONE) return Compressor.None;
  if (flags & RafsSuperFlags.COMPRESSION_LZ4) return Compressor.Lz4Block;
  if (flags & RafsSuperFlags.COMPRESSION_GZIP) return Compressor.GZip;
  if (flags & RafsSuperFlags.COMPRESSION_ZSTD) return Compressor.Zstd;
  return Compressor.Lz4Block;
}

export function digesterFromFlags(flags: number): DigestAlgorithm {
  if (flags & RafsSuperFlags.HASH_BLAKE3) return DigestAlgorithm.Blake3;
  if (flags & RafsSuperFlags.HASH_SHA256) return DigestAlgorithm.Sha256;
  return DigestAlgorithm.Blake3;
}

export function compressorFlag(c: Compressor): number {
  switch (c) {
    case Compressor.None: return RafsSuperFlags.COMPRESSION_NONE;
    case Compressor.Lz4Block: return RafsSuperFlags.COMPRESSION_LZ4;
    case Compressor.GZip: return RafsSuperFlags.COMPRESSION_GZIP;
    case Compressor.Zstd: return RafsSuperFlags.COMPRESSION_ZSTD;
  }
}

export function digesterFlag(d: DigestAlgorithm): number {
  return d === DigestAlgorithm.Sha256 ? RafsSuperFlags.HASH_SHA256 : RafsSuperFlags.HASH_BLAKE3;
}

export function validateChunkSize(size: number, what = 'chunk size'): void {
  if (!Number.isInteger(size) || size < RAFS_MIN_CHUNK_SIZE || size > RAFS_MAX_CHUNK_SIZE || (size & (size - 1)) !== 0) {
    throw einval(`invalid ${what} 0x${size.toString(16)}: must be a power of two in [0x1000, 0x1000000]`);
  }
}

/** Read a little-endian u64 as a safe JS number, or throw EINVAL naming the field. */
export function readU64(buf: Buffer, off: number, field: string): number {
  return wire.readU64(buf, off, field);
}

/** (RAFS argument order: value before offset) */
export function writeU64(buf: Buffer, v: number, off: number): void {
  wire.writeU64(buf, off, v);
}

