/**
 * BlobDevice: the per-image storage seam RafsFs reads chunks through.
 * Implementations combine a backend (localfs, registry …) with a cache
 * (none, blobcache/filecache) and chunk verification.
 */
import type { ChunkInfo } from '../rafs/metadata/types';

export interface BlobDevice {
  /** Uncompressed bytes of one chunk; EIO (logged with blob id and chunk index) when it fails verification. */
  readChunk(chunk: ChunkInfo): Promise<Buffer>;
  /** Start fetching these chunks in the background (best effort). */
  prefetch?(chunks: ChunkInfo[]): void;
  close(): Promise<void>;
}
