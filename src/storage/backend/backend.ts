/**
 * Storage backend seam (architecture-anchors §6 "Backend: raw blob access",
 * Synthesis C): positional reads of a blob by id. Implementations: localfs
 * (localfs.ts); registry/oss/s3/http-proxy can be added behind the same
 * interface. Backends return compressed bytes; decoding is the cache's job.
 */
import { einval } from '../../common/errno';
import type { BackendMetrics } from './metrics';

export interface ReadOptions {
  /** a prefetch read: smaller retry budget, Dragonfly priority 3 */
  prefetch?: boolean;
  /** at most this many attempts (a chunk that failed a moment ago is tried once, not a whole budget again) */
  attempts?: number;
  /** read into this (exactly `length` bytes) and return it: honoured by backends with `readsInto` */
  into?: Buffer;
  /**
   * With `into`: told how many bytes of it (from its start) are in, as they
   * arrive, so their chunks can be decoded before the rest is. A backend
   * that reports progress never writes to `into` after its first report
   * again: an attempt after a failed one reads into a buffer of its own,
   * which it returns. Backends that stream nothing never call it.
   */
  onProgress?: (filled: number) => void;
  /**
   * With `into`, for backends with `directAlign`: `into` lies inside `buf`,
   * whose first byte is blob offset `at`; `at` and `buf`'s length and
   * address are multiples of `directAlign`. The backend may fill the whole
   * window with direct I/O (bytes of `buf` outside `into` get blob bytes
   * too, or stay as they were past the blob's end) and return `into`.
   */
  window?: { buf: Buffer; at: number };
}

/** What every backend constructor may be given. */
export interface BackendOptions {
  /** per-attempt read metrics (`/api/v1/metrics/backend`) */
  metrics?: BackendMetrics;
}

export interface BlobBackend {
  /** config `backend.type` this backend implements */
  readonly type: string;
  /** Exactly `length` bytes at `offset` of blob `blobId`; EIO on a short read. */
  read(blobId: string, offset: number, length: number, opts?: ReadOptions): Promise<Buffer>;
  /**
   * read() fills `opts.into` when given, and nothing writes to it once the
   * returned promise has settled (its memory may then be reused at once).
   */
  readonly readsInto?: boolean;
  /**
   * Reads given a `window` (ReadOptions) may bypass the page cache
   * (O_DIRECT), which needs this alignment; undefined when they never do.
   */
  readonly directAlign?: number;
  /**
   * Optional: get ready to read `blobId` (open its file) before the first
   * read needs it. Best effort: a failure is reported by the reads.
   */
  prepare?(blobId: string): Promise<void>;
  /** Size of the blob in bytes, when the backend can tell. */
  size?(blobId: string): Promise<number>;
  /**
   * Replace the credentials at run time (`PUT /api/v1/config` `registry_auth`,
   * base64 `user:pass`; '' clears them). Backends without credentials lack it.
   */
  updateAuth?(auth: string): void;
  /** Release every handle; later reads fail. */
  close(): Promise<void>;
}

/**
 * A blob id becomes a file name (backend dir, cache work_dir): refuse
 * anything that could escape the directory or name a hidden control file.
 */
export function checkBlobId(blobId: string): void {
  if (
    typeof blobId !== 'string' ||
    blobId.length === 0 ||
    blobId.length > 255 ||
    blobId === '.' ||
    blobId === '..' ||
    blobId.includes('/') ||
    blobId.includes('\0')
  ) {
    throw einval(`invalid blob id ${JSON.stringify(blobId)}`);
  }
}

/** Validate a read range (non-negative safe integers). */
export function checkRange(blobId: string, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || offset + length > Number.MAX_SAFE_INTEGER) {
    throw einval(`invalid read range offset ${offset} length ${length} of blob ${blobId}`);
  }
}
