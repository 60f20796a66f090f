/**
 * Load a bootstrap: probe v5, then v6 (EROFS), and return the one
 * version-neutral RafsSuper the rest of the code uses.
 */
import { einval } from '../../common/errno';
import { RAFS_MAX_BOOTSTRAP_SIZE } from '../format/constants';
import { isV5, loadV5 } from './direct-v5';
import { isV6, loadV6, type BlobChunkTable } from './direct-v6';
import type { BlobInfo, RafsSuper } from './types';

export interface LoadOptions {
  /** chunk-info from a blob's blob.meta, used by v6 when the bootstrap chunk table lacks a chunk */
  blobMeta?: (blob: BlobInfo) => BlobChunkTable | undefined;
  /**
   * Batch chunks of a blob whose blob.meta is unavailable keep their bootstrap
   * records (no stored range: reading them fails) instead of failing to
   * resolve: metadata-only tools. The daemon leaves it off, so a file's chunk
   * list is not kept until its blob.meta has loaded.
   */
  metaOptional?: boolean;
}

export function loadRafs(buf: Buffer, opts: LoadOptions = {}): RafsSuper {
  if (buf.length > RAFS_MAX_BOOTSTRAP_SIZE) throw einval(`bootstrap too large (${buf.length} bytes)`);
  if (isV5(buf)) return loadV5(buf);
  if (isV6(buf)) return loadV6(buf, opts);
  throw einval('not a RAFS bootstrap: neither v5 magic 0x52414653 nor EROFS magic 0xE0F5E1E2 found');
}
