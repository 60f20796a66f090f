/**
 * Storage factory (architecture-anchors §6 "factory.rs"): builds the
 * BlobDevice for one mounted image from a ConfigV2 (rafs-spec §7) — a backend
 * chosen by `backend.type` and a cache chosen by `cache.type`:
 *   - '' / 'dummycache': no local cache; every read fetches, decompresses and
 *     (when validation is on) verifies the chunk;
 *   - 'blobcache' / 'filecache': FileCache in `cache.filecache.work_dir`.
 * Validation is on when `rafs.validate` or `cache.validate` is set.
 * Deliberate difference: chunks fetched from a remote backend (anything but
 * localfs) are always verified against their digest before they are served
 * or cached, whatever `validate` says (upstream serves them unverified when
 * validation is off): bytes that crossed a network or a proxy are never
 * trusted. `validate` still decides whether cache hits are re-verified.
 */
import { ChunkMemoryCache } from './cache/memory';
import { type ConfigV2, isChunkValidationEnabled } from '../common/config';
import { ErrnoError, eio, enosys } from '../common/errno';
import { logLimited, warnLimited } from '../common/log';
import type { BlobInfo, ChunkInfo } from './format/types';
import type { BlobBackend } from './backend/backend';
import type { BackendMetrics } from './backend/metrics';
import { LocalFsBackend } from './backend/localfs';
import { RegistryBackend } from './backend/registry';
import { S3Backend } from './backend/s3';
import { OssBackend } from './backend/oss';
import { HttpProxyBackend } from './backend/http-proxy';
import type { ChunkSource, FileCache } from './cache/filecache';
import { acquireFileCache, releaseFileCache } from './cache/manager';
import { BlobcacheMetrics } from './cache/metrics';
import { decodeChunk } from './blob/chunk-reader';
import type { BlobDevice, ChunkLocation } from './blob/device';

export interface BlobDeviceOptions {
  /** read every blob from this one file (localfs `blob_file`), whatever `backend.type` says */
  blobFile?: string;
  /** use this backend instead of building one from the config (tests, embedders) */
  backend?: BlobBackend;
  /** per-attempt read metrics for the backend built here */
  metrics?: BackendMetrics;
}

/** The backend for `cfg.backend`; ENOSYS for types not implemented yet. */
export function createBackend(cfg: ConfigV2, opts: BlobDeviceOptions = {}): BlobBackend {
  if (opts.backend) return opts.backend;
  const bo = { metrics: opts.metrics };
  if (opts.blobFile) return new LocalFsBackend({ blob_file: opts.blobFile, dir: '', alt_dirs: [] }, bo);
  switch (cfg.backend.type) {
    case 'localfs': {
      const l = cfg.backend.localfs;
      if (!l) throw enosys('backend type localfs needs a backend.localfs section');
      return new LocalFsBackend(l, bo);
    }
    case 'registry': {
      const r = cfg.backend.registry;
      if (!r) throw enosys('backend type registry needs a backend.registry section');
      return new RegistryBackend(r, bo);
    }
    case 'oss': {
      const o = cfg.backend.oss;
      if (!o) throw enosys('backend type oss needs a backend.oss section');
      return new OssBackend(o, bo);
    }
    case 's3': {
      const s = cfg.backend.s3;
      if (!s) throw enosys('backend type s3 needs a backend.s3 section');
      return new S3Backend(s, bo);
    }
    case 'http-proxy': {
      const h = cfg.backend['http-proxy'];
      if (!h) throw enosys('backend type http-proxy needs a backend.http-proxy section');
      return new HttpProxyBackend(h, bo);
    }
    default:
      throw enosys(`backend type ${cfg.backend.type} not supported yet`);
  }
}

/** Whether a backend's data crosses a network (and so is always verified). */
export function isRemote(b: BlobBackend): boolean {
  return b.type !== 'localfs' && b.type !== 'localdisk';
}

/** Build the device serving `blobs` (indexed by ChunkInfo.blobIndex). */
export function createBlobDevice(cfg: ConfigV2, blobs: BlobInfo[], opts: BlobDeviceOptions = {}): BlobDevice {
  const validate = isChunkValidationEnabled(cfg);
  let cache: FileCache | undefined;
  switch (cfg.cache.type) {
    case '':
    case 'dummycache':
      break;
    case 'blobcache':
    case 'filecache': {
      if (!cfg.cache.filecache?.work_dir) throw enosys(`cache type ${cfg.cache.type} needs cache.filecache.work_dir`);
      break;
    }
    default:
      throw enosys(`cache type ${cfg.cache.type} not supported yet`);
  }
  const backend = createBackend(cfg, opts);
  if (cfg.cache.type === 'blobcache' || cfg.cache.type === 'filecache') {
    // one cache per work_dir in the process, shared with every other mount naming it
    cache = acquireFileCache(cfg.cache.filecache!.work_dir);
  }
  const pf = cfg.cache.prefetch.enable ? cfg.cache.prefetch : cfg.rafs.prefetch;
  const threads = Math.min(Math.max(pf.enable && pf.threads > 0 ? pf.threads : 4, 1), 1024);
  return new StorageDevice(blobs, backend, cache, validate, threads, isRemote(backend));
}

/** BlobDevice over a backend and an optional FileCache. */
/** Decompressed chunks kept in memory per image (a few chunks of read-ahead). */
const MEMORY_CACHE_BYTES = 32 << 20;

export class StorageDevice implements BlobDevice {
  private closed = false;
  private readonly memory = new ChunkMemoryCache(MEMORY_CACHE_BYTES);
  private readonly pending: ChunkInfo[] = [];
  private workers = 0;
  private readonly idle = new Set<() => void>();
  /** what this device's chunks come from, for the shared cache */
  private readonly source: ChunkSource;
  /** `/api/v1/metrics/blobcache` of this device (without a cache: reads counted, the rest 0) */
  readonly cacheMetrics: BlobcacheMetrics;

  /** `cache` comes from acquireFileCache and is released by close(). */
  constructor(
    private readonly blobs: BlobInfo[],
    private readonly backend: BlobBackend,
    private readonly cache: FileCache | undefined,
    private readonly validate: boolean,
    private readonly prefetchThreads: number,
    private readonly verifyFetched = false,
  ) {
    this.cacheMetrics = new BlobcacheMetrics(cache ? cache.workDir : '');
    this.source = { backend, validate, verifyFetched, metrics: this.cacheMetrics };
    for (const b of blobs) cache?.retain(b.blobId);
  }

  private blobOf(chunk: ChunkInfo): BlobInfo {
    const i = chunk.blobIndex;
    if (!Number.isInteger(i) || i < 0 || i >= this.blobs.length) {
      throw eio(`chunk ${chunk.index} refers to blob index ${i}, but the image has ${this.blobs.length} blob(s)`);
    }
    return this.blobs[i];
  }

  locate(chunk: ChunkInfo, probe = false): ChunkLocation | undefined {
    if (this.closed || !this.cache) return undefined;
    const info = this.blobs[chunk.blobIndex];
    const loc = info ? this.cache.locate(info, chunk, this.validate) : undefined;
    if (loc && !probe) { this.cacheMetrics.total++; this.cacheMetrics.partialHits++; }
    return loc;
  }

  readChunk(chunk: ChunkInfo): Promise<Buffer> {
    if (this.closed) return Promise.reject(eio('blob device is closed'));
    let info: BlobInfo;
    try { info = this.blobOf(chunk); } catch (e) { return Promise.reject(e); }
    this.cacheMetrics.total++;
    return this.memory.get(`${chunk.blobIndex}:${chunk.index}:${chunk.compressedOffset}`, () => this.loadChunk(info, chunk));
  }

  private async loadChunk(info: BlobInfo, chunk: ChunkInfo): Promise<Buffer> {
    if (this.cache) return this.cache.readChunk(info, chunk, this.source);
    try {
      const raw = await this.backend.read(info.blobId, chunk.compressedOffset, chunk.compressedSize);
      return decodeChunk(raw, chunk, info, { validate: this.validate || this.verifyFetched });
    } catch (err) {
      logLimited('error', 'storage.read', { blobId: info.blobId, chunkIndex: chunk.index, err: (err as Error).message }, 'failed to read chunk');
      if (err instanceof ErrnoError && err.code === 'EIO') throw err;
      throw eio(`blob ${info.blobId} chunk ${chunk.index}: ${(err as Error).message}`, err);
    }
  }

  /**
   * Fetch chunks into the cache in the background, `prefetch.threads` at a
   * time. Without a local cache there is nothing to warm: a no-op.
   */
  prefetch(chunks: ChunkInfo[]): void {
    if (!this.cache || this.closed) return;
    this.pending.push(...chunks);
    while (this.workers < this.prefetchThreads && this.pending.length > 0) {
      this.workers++;
      void this.prefetchWorker();
    }
  }

  private async prefetchWorker(): Promise<void> {
    const m = this.cacheMetrics;
    {
      m.prefetchWorkers++;
      if (m.prefetchBegin === 0) m.prefetchBegin = Date.now();
    }
    try {
      for (let c = this.pending.shift(); c && !this.closed; c = this.pending.shift()) {
        const t0 = Date.now();
        if (m) { m.prefetchRequestsCount++; m.prefetchUnmergedChunks++; m.prefetchDataAmount += c.compressedSize; }
        try {
          await this.cache!.prefetchChunk(this.blobOf(c), c, this.source);
        } catch (err) {
          warnLimited('storage.prefetch', { blobIndex: c.blobIndex, chunkIndex: c.index, err: (err as Error).message }, 'prefetch failed');
        }
        if (m) { m.prefetchEnd = Date.now(); m.prefetchCumulativeTimeMillis += m.prefetchEnd - t0; }
      }
    } finally {
      if (m) m.prefetchWorkers--;
      this.workers--;
      if (this.workers === 0) for (const f of this.idle) f();
    }
  }

  /** Resolves when no prefetch work is queued or running. */
  prefetchIdle(): Promise<void> {
    if (this.workers === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const f = () => { this.idle.delete(f); resolve(); };
      this.idle.add(f);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.pending.length = 0;
    this.memory.clear();
    await this.prefetchIdle();
    if (this.cache) {
      for (const b of this.blobs) await this.cache.release(b.blobId);
      await releaseFileCache(this.cache);
    }
    await this.backend.close();
  }
}
