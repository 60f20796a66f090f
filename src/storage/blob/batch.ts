/**
 * Batch chunks (rafs-spec §4.1 "Batch mode", §4.2): small chunks whose data
 * was concatenated into one buffer and compressed as one unit. Facts from
 * upstream (dragonflyoss/nydus 34e6071e):
 *  - storage/src/meta/batch.rs: `BatchInflateContext`, 40 bytes, packed:
 *    u32 compressed_size | u32 uncompressed_batch_size | 4 × u64 reserved.
 *    The table of one context per batch follows the chunk-info array in the
 *    uncompressed ci data; the blob.meta header's s_ci_zran_offset /
 *    s_ci_zran_size / s_ci_zran_count locate it (builder/src/core/blob.rs
 *    `dump_meta_data`).
 *  - a batched member's v2 chunk info (`generate_chunk_info`): flags
 *    BATCH|COMPRESSED, compressed_offset = start of its batch in the blob,
 *    compressed_size 0, `data` = batch index << 32 | offset in the batch buffer.
 *  - storage/src/cache/mod.rs `decompress_batch`: the batch is compressed iff
 *    its compressed size differs from its uncompressed size; it must
 *    decompress to exactly `uncompressed_batch_size` (≤ the max chunk size);
 *    a member is bytes [offset, offset + uncompressed_size) of that buffer.
 *
 * A member resolved through blob.meta is a ChunkInfo whose compressed range
 * is its batch's ([batch start, + batch compressed size)), carrying `batch`.
 */
import { eio, einval } from '../../common/errno';
import { BlobChunkFlags, RAFS_MAX_CHUNK_SIZE } from '../format/constants';
import type { ChunkInfo } from '../format/types';

export const BATCH_CONTEXT_SIZE = 40;

export interface BatchContext {
  compressedSize: number;
  uncompressedSize: number;
}

/** Where a member sits in its batch. */
export interface BatchRef {
  /** batch (context) index */
  index: number;
  /** offset of the member in the uncompressed batch buffer */
  offset: number;
  /** uncompressed size of the whole batch */
  size: number;
}

export type BatchChunkInfo = ChunkInfo & { batch: BatchRef };

/** The batch a chunk belongs to, when it is a resolved batch member. */
export function batchOf(c: ChunkInfo): BatchRef | undefined {
  return (c as Partial<BatchChunkInfo>).batch;
}

/**
 * A record with data but no stored range: a batch member as the bootstrap
 * lists it, not yet resolved through blob.meta.
 */
export const unplaced = (c: ChunkInfo): boolean => c.compressedSize === 0 && c.uncompressedSize > 0;

/** Whether two chunks are members of the same batch (one compressed range). */
export function sameBatch(a: ChunkInfo, b: ChunkInfo): boolean {
  const x = batchOf(a);
  const y = batchOf(b);
  return !!x && !!y && a.blobIndex === b.blobIndex && a.compressedOffset === b.compressedOffset && a.compressedSize === b.compressedSize && x.index === y.index;
}

export function encodeBatchContexts(ctxs: readonly BatchContext[]): Buffer {
  const b = Buffer.alloc(ctxs.length * BATCH_CONTEXT_SIZE);
  ctxs.forEach((c, i) => {
    b.writeUInt32LE(c.compressedSize >>> 0, i * BATCH_CONTEXT_SIZE);
    b.writeUInt32LE(c.uncompressedSize >>> 0, i * BATCH_CONTEXT_SIZE + 4);
  });
  return b;
}

/** Batch context `index` of the table at [tableOffset, +count*40) in `ciData`; EINVAL when out of range. */
export function decodeBatchContext(ciData: Buffer, tableOffset: number, count: number, index: number): BatchContext {
  if (!Number.isInteger(index) || index < 0 || index >= count) throw einval(`batch context index ${index} out of range (blob has ${count} batches)`);
  const off = tableOffset + index * BATCH_CONTEXT_SIZE;
  if (off + BATCH_CONTEXT_SIZE > ciData.length) throw einval(`batch context ${index} at ${off} exceeds ci data of ${ciData.length} bytes`);
  const c = { compressedSize: ciData.readUInt32LE(off), uncompressedSize: ciData.readUInt32LE(off + 4) };
  if (c.uncompressedSize === 0 || c.uncompressedSize > RAFS_MAX_CHUNK_SIZE || c.compressedSize === 0 || c.compressedSize > 2 * RAFS_MAX_CHUNK_SIZE) {
    throw einval(`batch context ${index}: sizes ${c.compressedSize}/${c.uncompressedSize} out of range`);
  }
  if (c.compressedSize > c.uncompressedSize) throw einval(`batch context ${index}: compressed size ${c.compressedSize} > uncompressed size ${c.uncompressedSize}`);
  return c;
}

/**
 * Resolve member `m` (a v2 record with BATCH, already a ChunkInfo) against
 * its context: the chunk's compressed range becomes the batch's; EINVAL when
 * the member does not fit its batch.
 */
export function resolveBatchMember(m: ChunkInfo, batchIndex: number, offsetInBatch: number, ctx: BatchContext): BatchChunkInfo {
  if (offsetInBatch + m.uncompressedSize > ctx.uncompressedSize) {
    throw einval(`chunk ${m.index}: [${offsetInBatch}, +${m.uncompressedSize}) exceeds batch ${batchIndex} of ${ctx.uncompressedSize} bytes`);
  }
  const compressed = ctx.compressedSize !== ctx.uncompressedSize;
  const flags = (m.flags & ~BlobChunkFlags.COMPRESSED & ~BlobChunkFlags.HAS_CRC32) | BlobChunkFlags.BATCH | (compressed ? BlobChunkFlags.COMPRESSED : 0);
  return { ...m, flags, compressed, compressedSize: ctx.compressedSize, crc32: 0, batch: { index: batchIndex, offset: offsetInBatch, size: ctx.uncompressedSize } };
}

/** Shape checks of a batch member before any I/O; EIO. */
export function checkBatchShape(chunk: ChunkInfo, where: () => string): BatchRef {
  const b = batchOf(chunk);
  if (!b) throw eio(`${where()}: batch chunk without its batch context (blob.meta not loaded)`);
  if (!(b.size > 0 && b.size <= RAFS_MAX_CHUNK_SIZE) || !Number.isInteger(b.offset) || b.offset < 0 || b.offset + chunk.uncompressedSize > b.size) {
    throw eio(`${where()}: member [${b.offset}, +${chunk.uncompressedSize}) does not fit batch ${b.index} of ${b.size} bytes`);
  }
  if (!chunk.compressed && chunk.compressedSize !== b.size) throw eio(`${where()}: uncompressed batch ${b.index} stored in ${chunk.compressedSize} bytes, expected ${b.size}`);
  return b;
}
