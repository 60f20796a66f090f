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
import { ChunkMemoryCache, READ_AHEAD_HOLD_BYTES, memoryCacheBytes } from './cache/memory';
import { type ConfigV2, isChunkValidationEnabled } from '../common/config';
import { eio, enosys } from '../common/errno';
import { Compressor, loadCodec } from '../common/compress';
import { warnLimited } from '../common/log';
import type { BlobInfo, ChunkInfo } from './format/types';
import type { BlobBackend } from './backend/backend';
import type { BackendMetrics } from './backend/metrics';
import { LocalFsBackend } from './backend/localfs';
import { type ChunkSource, DEFAULT_BATCH, type FileCache } from './cache/filecache';
import { type ChunkDirectory, DirectoryBuild, blobOrder, mergeRuns } from './blob/chunk-directory';
import { RecentFailures, fetchRegion } from './cache/region';
import { type PrefetchOptions, Prefetcher } from './cache/prefetcher';
import { acquireFileCache, releaseFileCache } from './cache/manager';
import { BlobcacheMetrics } from './cache/metrics';
import type { BlobDevice, ChunkLocation } from './blob/device';
import { acquireDecodePool, decodesOnWorkers, releaseDecodePool, startDecodePool } from './blob/decode-pool';

export interface BlobDeviceOptions {
  /** read every blob from this one file (localfs `blob_file`), whatever `backend.type` says */
  blobFile?: string;
  /** use this backend instead of building one from the config (tests, embedders) */
  backend?: BlobBackend;
  /** per-attempt read metrics for the backend built here */
  metrics?: BackendMetrics;
  /** every chunk record of the image (request merging, whole-blob prefetch), walked once */
  chunks?: () => Iterable<ChunkInfo>;
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
    // the remote backends (and their HTTP client and signing code, the bulk of nydusd's modules)
    // are loaded when a mount needs one: a localfs daemon starts faster and carries a smaller heap
    case 'registry': {
      const r = cfg.backend.registry;
      if (!r) throw enosys('backend type registry needs a backend.registry section');
      const { RegistryBackend } = require('./backend/registry') as typeof import('./backend/registry');
      return new RegistryBackend(r, bo);
    }
    case 'oss': {
      const o = cfg.backend.oss;
      if (!o) throw enosys('backend type oss needs a backend.oss section');
      const { OssBackend } = require('./backend/oss') as typeof import('./backend/oss');
      return new OssBackend(o, bo);
    }
    case 's3': {
      const s = cfg.backend.s3;
      if (!s) throw enosys('backend type s3 needs a backend.s3 section');
      const { S3Backend } = require('./backend/s3') as typeof import('./backend/s3');
      return new S3Backend(s, bo);
    }
    case 'http-proxy': {
      const h = cfg.backend['http-proxy'];
      if (!h) throw enosys('backend type http-proxy needs a backend.http-proxy section');
      const { HttpProxyBackend } = require('./backend/http-proxy') as typeof import('./backend/http-proxy');
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
export function createBlobDevice(cfg: ConfigV2, blobs: BlobInfo[], opts: BlobDeviceOptions = {}): StorageDevice {
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
    cache = acquireFileCache(cfg.cache.filecache!.work_dir, { quota: cfg.cache.filecache!.quota });
  }
  // v2: workers exist only with cache.prefetch.enable (a v1 fs_prefetch was copied there)
  const pf = cfg.cache.prefetch.enable ? cfg.cache.prefetch : cfg.rafs.prefetch;
  return new StorageDevice(blobs, backend, cache, {
    validate,
    verifyFetched: isRemote(backend),
    batchSize: Math.max(cfg.rafs.batch_size, DEFAULT_BATCH),
    prefetch: {
      threads: Math.min(Math.max(pf.threads > 0 ? pf.threads : 8, 1), 1024),
      batchSize: pf.batch_size,
      bandwidthLimit: pf.bandwidth_limit,
    },
    chunks: opts.chunks,
  });
}

export interface StorageDeviceOptions {
  /** verify cache hits (`validate`) */
  validate: boolean;
  /** verify what the backend returns */
  verifyFetched?: boolean;
  /** merged request size for misses */
  batchSize?: number;
  prefetch?: PrefetchOptions;
  /** every chunk record of the image (for request merging and whole-blob prefetch); walked once, lazily */
  chunks?: () => Iterable<ChunkInfo>;
}

/** How long a chunk whose fetch failed gets a single attempt (the kernel's immediate re-read of a failed page). */
const FAILURE_MEMO_MS = 2000;
/** How often a directory missing batch members (blob.meta not loaded yet) is built again. */
const DIRECTORY_RETRY_MS = 2000;
/** Images of up to this many chunks get their chunk directory built right after the mount (~3 MB of columns). */
const EAGER_DIRECTORY_CHUNKS = 32768;
/** Records a warm-up slice takes before letting other work run. */
const DIRECTORY_SLICE = 2048;
/** Largest request sequential readahead merges chunks into. */
const READAHEAD_REQUEST = 8 << 20;

/**
 * BlobDevice over a backend and an optional (shared) FileCache: misses are
 * fetched merged with their neighbours (ChunkDirectory.region), decoded and
 * verified once, kept in a small in-memory LRU, persisted by the cache;
 * prefetch runs on a Prefetcher.
 */
export class StorageDevice implements BlobDevice {
  private closed = false;
  private readonly memory: ChunkMemoryCache;
  private readonly failures = new RecentFailures(FAILURE_MEMO_MS);
  /** what this device's chunks come from, for the shared cache */
  private readonly source: ChunkSource;
  private readonly prefetcher: Prefetcher;
  private directories: Array<ChunkDirectory | undefined> | undefined;
  /** the directory walk warmUp runs in slices, until it is done or a miss finishes it */
  private building: DirectoryBuild | undefined;
  private directoriesAt = 0;
  private readonly validate: boolean;
  private readonly verifyFetched: boolean;
  private readonly batchSize: number;
  /** Resolves when the cache files and backend handles opened at construction are open (or failed to). */
  readonly prepared: Promise<void>;
  /** `/api/v1/metrics/blobcache` of this device (without a cache: reads counted, the rest 0) */
  readonly cacheMetrics: BlobcacheMetrics;

  /** `cache` comes from acquireFileCache and is released by close(). */
  constructor(
    private readonly blobs: BlobInfo[],
    private readonly backend: BlobBackend,
    private readonly cache: FileCache | undefined,
    private readonly opts: StorageDeviceOptions,
  ) {
    // with a cache, read-ahead chunks wait apart for their first read (memory.ts)
    this.memory = new ChunkMemoryCache(memoryCacheBytes(cache !== undefined), cache ? READ_AHEAD_HOLD_BYTES : 0);
    this.validate = opts.validate;
    this.verifyFetched = !!opts.verifyFetched;
    this.batchSize = Math.max(opts.batchSize ?? DEFAULT_BATCH, DEFAULT_BATCH);
    this.cacheMetrics = new BlobcacheMetrics(cache ? cache.workDir : '');
    this.source = {
      backend,
      validate: this.validate,
      verifyFetched: this.verifyFetched,
      metrics: this.cacheMetrics,
      directory: (info) => this.directory(info.blobIndex),
      batchSize: this.batchSize,
    };
    this.prefetcher = new Prefetcher(opts.prefetch ?? { threads: 8, batchSize: 0, bandwidthLimit: 0 }, (info, run) => this.runPrefetch(info, run), this.cacheMetrics);
    for (const b of blobs) cache?.retain(b.blobId);
    // cache files and blob handles opened right after the mount, not at the first READ (which would
    // wait for half a dozen file operations)
    this.prepared = Promise.all(blobs.flatMap((b) => [
      cache?.prepare(b).catch(() => { /* the first read opens again and reports it */ }),
      backend.prepare?.(b.blobId).catch(() => { /* likewise */ }),
    ])).then(() => undefined);
    acquireDecodePool();
    void this.prepared.then(() => this.warmUp());
  }

  /**
   * After the mount, what the first READ would otherwise wait for: the
   * blobs' codecs loaded (a native module: ~20 ms) and, for images of up to
   * EAGER_DIRECTORY_CHUNKS chunks, the chunk directory built in slices
   * between other work (~10 µs a record while the code is cold). Larger
   * images still build it at the first miss: built here, it would add the
   * walk's transient objects to every mount's footprint (+60 MB RSS for
   * 100,000 chunks) before anything is read.
   */
  private warmUp(): void {
    if (this.closed) return;
    for (const c of new Set(this.blobs.map((b) => b.compressor))) {
      try { loadCodec(c); } catch { /* the first decode reports it */ }
    }
    // the decode workers, when this image's chunks are large enough to go to them and need work
    // (decompressed or verified): started at the first such request, they came up a third of the
    // way into a cold sequential read, whose runs until then were decoded on the event loop
    const work = this.blobs.filter((b) => b.compressor !== Compressor.None || this.validate || this.verifyFetched);
    const workChunks = work.reduce((n, b) => n + b.chunkCount, 0);
    if (workChunks > 0 && decodesOnWorkers(work.reduce((n, b) => n + b.uncompressedSize, 0) / workChunks)) {
      startDecodePool().catch(() => { /* the first request starts them again */ });
    }
    const chunks = this.blobs.reduce((n, b) => n + b.chunkCount, 0);
    if (!this.opts.chunks || this.directories || chunks > EAGER_DIRECTORY_CHUNKS) return;
    let build: DirectoryBuild;
    try { build = this.building = new DirectoryBuild(this.blobs, this.opts.chunks()); } catch { return; }
    const slice = () => {
      if (this.closed || this.building !== build) return;
      try {
        if (!build.step(DIRECTORY_SLICE)) { setImmediate(slice); return; }
        this.directories = build.finish();
        this.directoriesAt = Date.now();
      } catch { /* the first miss builds it again and reports it */ }
      this.building = undefined;
    };
    setImmediate(slice);
  }

  /**
   * The blob's chunks in blob order (built on first use from the image's chunk
   * records; built again, at most every DIRECTORY_RETRY_MS, while some batch
   * members could not be placed because their blob.meta had not loaded).
   */
  directory(blobIndex: number): ChunkDirectory | undefined {
    if (!this.opts.chunks) return undefined;
    if (this.directories?.some((d) => d?.partial) && Date.now() - this.directoriesAt >= DIRECTORY_RETRY_MS) this.directories = undefined;
    if (!this.directories) {
      this.directoriesAt = Date.now();
      try {
        // one walk over the records, each copied into its blob's columns and dropped
        // (the rest of the walk warmUp started, if it is still under way)
        const build = this.building ?? new DirectoryBuild(this.blobs, this.opts.chunks());
        this.building = undefined;
        this.directories = build.finish();
      } catch (err) {
        warnLimited('storage.directory', { err: (err as Error).message }, 'cannot list the image chunks: requests are not merged');
        this.directories = [];
      }
    }
    return this.directories[blobIndex];
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
    // still in memory (just fetched or read ahead): served from there, no read of the cache file
    if (this.memory.has(memKey(chunk))) return undefined;
    const info = this.blobs[chunk.blobIndex];
    const loc = info ? this.cache.locate(info, chunk, this.validate) : undefined;
    if (loc && !probe) this.servedFromCache(loc);
    return loc;
  }

  servedFromCache(loc: ChunkLocation): void {
    this.cacheMetrics.total++;
    this.cacheMetrics.partialHits++;
    this.prefetcher.userRead(loc.length);
  }

  readChunk(chunk: ChunkInfo): Promise<Buffer> {
    if (this.closed) return Promise.reject(eio('blob device is closed'));
    let info: BlobInfo;
    try { info = this.blobOf(chunk); } catch (e) { return Promise.reject(e); }
    this.cacheMetrics.total++;
    this.prefetcher.userRead(chunk.uncompressedSize);
    const key = memKey(chunk);
    // a chunk that just failed gets one attempt, not a whole budget: the kernel re-reads a page
    // whose readahead READ failed at once, and that must not double the time to EIO
    const once = this.failures.get(key) !== undefined;
    return this.memory.get(key, () => this.loadChunk(info, chunk, once).then(
      (d) => { this.failures.delete(key); return d; },
      (err) => { this.failures.add(key, err as Error); throw err; },
    ));
  }

  private loadChunk(info: BlobInfo, chunk: ChunkInfo, once = false): Promise<Buffer> {
    if (this.cache) return this.cache.readChunk(info, chunk, once ? { ...this.source, attempts: 1 } : this.source);
    // no local cache: the request's neighbours are kept in memory for the reads that follow
    const dir = this.directory(info.blobIndex);
    const run = dir ? dir.region(chunk, this.batchSize, (c) => !this.memory.has(memKey(c))) : [chunk];
    const datas = fetchRegion({ backend: this.backend, verify: this.validate || this.verifyFetched, attempts: once ? 1 : undefined }, info, run);
    for (let k = 1; k < run.length; k++) this.memory.offer(memKey(run[k]), datas[k]);
    return datas[0];
  }

  /**
   * Sequential readahead: the missing chunks among `chunks`, per blob in blob
   * order, merged into requests of up to READAHEAD_REQUEST bytes (far above
   * the batch size: a registry spends milliseconds per request), fetched at
   * on-demand priority, decoded into the in-memory LRU and persisted by the
   * cache.
   */
  readahead(chunks: ChunkInfo[]): void {
    if (this.closed) return;
    for (const [i, l] of this.byBlob(chunks.filter((c) => !this.memory.has(memKey(c))))) {
      const info = this.blobs[i];
      for (const run of mergeRuns(blobOrder(l), READAHEAD_REQUEST)) {
        if (this.cache) {
          this.cache.fetchRun(info, run, this.source, { readAhead: true }).then(
            (datas) => datas.forEach((p, k) => { if (p) this.memory.offer(memKey(run[k]), p); }),
            () => { /* the real read reports it */ },
          );
        } else {
          const datas = fetchRegion({ backend: this.backend, verify: this.validate || this.verifyFetched, readAhead: true }, info, run);
          datas.forEach((p, k) => this.memory.offer(memKey(run[k]), p));
        }
      }
    }
  }

  private async runPrefetch(info: BlobInfo, run: ChunkInfo[]): Promise<void> {
    if (this.closed || !this.cache) return;
    await this.cache.prefetchRun(info, run, this.source);
  }

  /**
   * Fetch chunks into the cache in the background (merged into runs, on the
   * prefetch workers). Without a local cache there is nothing to warm: a no-op.
   */
  prefetch(chunks: ChunkInfo[]): void {
    if (!this.cache || this.closed) return;
    for (const [i, l] of this.byBlob(chunks)) this.prefetcher.submitChunks(this.blobs[i], l);
  }

  /** `chunks` grouped by blob index (chunks naming no blob of this image dropped). */
  private byBlob(chunks: readonly ChunkInfo[]): Map<number, ChunkInfo[]> {
    const per = new Map<number, ChunkInfo[]>();
    for (const c of chunks) {
      if (!Number.isInteger(c.blobIndex) || c.blobIndex < 0 || c.blobIndex >= this.blobs.length) continue;
      let l = per.get(c.blobIndex);
      if (!l) per.set(c.blobIndex, (l = []));
      l.push(c);
    }
    return per;
  }

  /** Download every chunk of every blob in the background (`prefetch_all`). */
  prefetchAll(): void {
    if (!this.cache || this.closed) return;
    this.blobs.forEach((b, i) => {
      const dir = this.directory(i);
      if (dir) this.prefetcher.submitBlob(b, dir.all());
    });
  }

  /** Resolves when no prefetch work is queued or running. */
  prefetchIdle(): Promise<void> {
    return this.prefetcher.idle();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.prefetcher.stop();
      this.memory.clear();
      if (this.cache) {
        for (const b of this.blobs) await this.cache.release(b.blobId);
        await releaseFileCache(this.cache);
      }
      await this.backend.close();
    } finally {
      await releaseDecodePool();
    }
  }
}

const memKey = (c: ChunkInfo): string => `${c.blobIndex}:${c.index}:${c.compressedOffset}`;
