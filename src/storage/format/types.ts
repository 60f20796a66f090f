/**
 * Descriptors of blobs and chunks, as storage needs them (rafs-spec §1): a
 * filesystem's metadata (RAFS) refers to these; storage knows nothing of inodes.
 */
import type { Compressor } from '../../common/compress';
import type { DigestAlgorithm } from '../../common/digest';

/** One blob referenced by the image (v5 blob + ext blob table, v6 blob table). */
export interface BlobInfo {
  blobIndex: number;
  blobId: string;
  chunkSize: number;
  chunkCount: number;
  compressor: Compressor;
  digester: DigestAlgorithm;
  features: number;
  compressedSize: number;
  uncompressedSize: number;
  /** v5 readahead hints; 0 for v6. */
  readaheadOffset: number;
  readaheadSize: number;
  /** blob.meta (chunk-info array) location, v6 only (0 when absent). */
  metaCompressor: Compressor;
  metaOffset: number;
  metaCompressedSize: number;
  metaUncompressedSize: number;
  tocSize: number;
  tocDigest: Buffer;
}

/** One chunk of a regular file, fully resolved (§2.9 fields). */
export interface ChunkInfo {
  digest: Buffer;
  blobIndex: number;
  /** chunk number within its blob (= v6 ci_index) */
  index: number;
  flags: number;
  compressed: boolean;
  compressedOffset: number;
  compressedSize: number;
  uncompressedOffset: number;
  uncompressedSize: number;
  /** offset inside the file */
  fileOffset: number;
  crc32: number;
}
