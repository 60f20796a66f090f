/**
 * BlobDevice: the per-image storage seam RafsFs reads chunks through.
 * Implementations combine a backend (localfs, registry …) with a cache
 * (none, blobcache/filecache) and chunk verification.
 */
import type { ChunkInfo } from '../format/types';

/** Where a chunk's uncompressed bytes already sit in a local file (the blobcache). */
export interface ChunkLocation {
  fd: number;
  position: number;
  length: number;
}

export interface BlobDevice {
  /** Uncompressed bytes of one chunk; EIO (logged with blob id and chunk index) when it fails verification. */
  readChunk(chunk: ChunkInfo): Promise<Buffer>;
  /**
   * The cache file range holding this chunk when it is cached and needs no
   * verification on read, so transports can copy it straight to the reader.
   * `probe`: only asking whether it is cached (readahead), not serving a read.
   */
  locate?(chunk: ChunkInfo, probe?: boolean): ChunkLocation | undefined;
  /**
   * A read is served from `loc`, found with `locate(chunk, true)`: counted
   * as the cache hit `locate(chunk)` counts (a reader that first checks
   * every chunk of a read counts only the reads it answers).
   */
  servedFromCache?(loc: ChunkLocation): void;
  /** Start fetching these chunks in the background (best effort). */
  prefetch?(chunks: ChunkInfo[]): void;
  /**
   * A sequential reader will want these chunks soon: fetch the missing ones
   * now, in as few requests as possible, at on-demand priority (best effort).
   */
  readahead?(chunks: ChunkInfo[]): void;
  close(): Promise<void>;
}
