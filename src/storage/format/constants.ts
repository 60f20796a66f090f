/**
 * Blob-level flags of the Nydus blob format (rafs-spec §1.4-1.5): what a blob
 * and its chunks are, independent of any filesystem metadata.
 */

/** BlobFeatures (§1.4). */
export const BlobFeatures = {
  ALIGNED: 0x1,
  INLINED_FS_META: 0x2,
  CHUNK_INFO_V2: 0x4,
  ZRAN: 0x8,
  SEPARATE: 0x10,
  INLINED_CHUNK_DIGEST: 0x20,
  TARFS: 0x40,
  BATCH: 0x80,
  ENCRYPTED: 0x100,
  IS_CHUNKDICT_GENERATED: 0x200,
  IS_SEPARATED_WITH_PREFETCH_FILES: 0x400,
  EXTERNAL: 0x800,
  HAS_TAR_HEADER: 0x1000_0000,
  HAS_TOC: 0x2000_0000,
  CAP_TAR_TOC: 0x4000_0000,
  _V5_NO_EXT_BLOB_TABLE: 0x8000_0000,
} as const;

/** BlobChunkFlags (§1.5). */
export const BlobChunkFlags = { COMPRESSED: 0x1, HOLECHUNK: 0x2, ENCRYPTED: 0x4, BATCH: 0x8, HAS_CRC32: 0x10 } as const;

/** Largest chunk (uncompressed) a blob may hold. */
export const RAFS_MAX_CHUNK_SIZE = 0x1000000;
/** Most chunks one blob may hold. */
export const RAFS_MAX_CHUNKS_PER_BLOB = 1 << 24;
/** Largest bootstrap, also when inlined in a blob. */
export const RAFS_MAX_BOOTSTRAP_SIZE = 0x8000_0000;

export const alignUp = (v: number, a: number): number => Math.ceil(v / a) * a;
