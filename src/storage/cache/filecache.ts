/**
 * `blobcache` / `filecache` local chunk cache (rafs-spec §4.5, §7.1 `cache`).
 *
 * Per blob, in `work_dir`:
 *   - `<blob_id>`            decompressed chunk data, each chunk at its
 *                            `uncompressedOffset` (sparse file; sized to the
 *                            blob's uncompressed size when known). v5 blobs
 *                            without ALIGNED use unaligned offsets as-is.
 *   - `<blob_id>.chunk_map`  readiness bitmap (chunk-map.ts).
 * (This is the nydusd ≤ v2.1 naming the spec gives; nydusd ≥ v2.2 names the
 * data file `<blob_id>.blob.data` and the map `<blob_id>.blob.data.chunk_map`.
 * Both names are produced by `cacheFileNames` only.)
 *
 * readChunk: a ready chunk is read back from the data file (and its digest
 * checked when validation is on); otherwise the compressed bytes are fetched
 * from the backend, decompressed, verified when validation is on, written to
 * the data file and only then marked ready. A chunk that fails decoding or
 * verification is never returned nor cached: EIO, logged at error level with
 * blob id and chunk index. Bad cached data (digest mismatch with validation
 * on) is EIO too, and its ready bit is dropped so a later read refetches it.
 * Concurrent reads of one chunk share one fetch (single flight).
 *
 * Sharing (cache/manager.ts): one FileCache per work_dir in the process, one
 * entry (data file, chunk map, single-flight table) per blob id, whatever
 * mount asks: two images sharing a layer share its cache files, its
 * readiness and its downloads. Each call names its source (the mount's
 * backend, whether it validates); a blob id binds its content, so any
 * backend that has the blob serves the same bytes. A validating reader that
 * joins a fetch started without validation verifies the result itself. Mounts
 * retain the blob ids they use; an entry is closed when its last user
 * releases it (after the daemon drained that mount's requests, so no
 * located fd is closed under a READ).
 */
import { constants as fsConstants } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { ErrnoError, eio } from '../../common/errno';
import { logLimited, warnLimited } from '../../common/log';
import { iovAfter } from '../../common/pread';
import { isAligned } from '../../common/libc';
import { openDirect } from '../../common/direct-io';
import { DIRECT_ALIGN, planWrites, type WriteGroup } from './direct-write';
import type { ChunkLocation } from '../blob/device';
import type { BlobInfo, ChunkInfo } from '../format/types';
import { decodeChunk } from '../blob/chunk-reader';
import { chunkArena } from '../blob/chunk-arena';
import type { ChunkDirectory } from '../blob/chunk-directory';
import { fetchRegionEach } from './region';
import { CacheQuota } from './quota';
import { type BlobBackend, checkBlobId } from '../backend/backend';
import { CHUNK_MAP_SUFFIX, ChunkMap } from './chunk-map';
import type { BlobcacheMetrics } from './metrics';

export { REFETCH_LIMIT } from './region';
/** Backend request size when the source names none (upstream's 128 KiB floor). */
export const DEFAULT_BATCH = 128 << 10;
/** Chunks written by one pwritev (with their padding: IOV_MAX is 1024). */
const MAX_WRITE_IOV = 500;
/**
 * Decoded bytes of a run written (and their memory let go) together. A
 * 128 KiB request of well-compressed small files decodes to ~3 MB: held
 * until the whole run was written, its arena slots were shed (madvise) and
 * faulted in again for every request of a 100,000-file read.
 */
const PERSIST_GROUP_BYTES = 512 << 10;
/**
 * ...and at least this many chunks: a sequential reader's 8 MiB read-ahead
 * of 1 MiB chunks in groups of one cost a cold 256 MiB read ~80 ms (0.36 s
 * against 0.28 s in alternating runs), the writes, chunk-map updates and
 * continuations of 8 groups instead of one.
 */
const PERSIST_GROUP_CHUNKS = 8;
/** v6 chunks start 4 KiB aligned in the cache file: the padding between two is written with them. */
const CACHE_ALIGN = 4096;
const ZERO_PAD = Buffer.alloc(CACHE_ALIGN);

/**
 * Whether a chunk at `next` can be written in one go after data ending at
 * `end`: right after it, or at the next 4 KiB boundary (only padding between,
 * which no chunk can start in, since chunks that are not back to back are aligned).
 */
function adjoins(end: number, next: number): boolean {
  return next === end || (next > end && next - end < CACHE_ALIGN && next % CACHE_ALIGN === 0);
}
/** Largest uncompressed offset + size accepted for a cached chunk (16 TiB, as the v6 blob bound). */
const MAX_CACHE_OFFSET = 2 ** 44;

export interface CacheFileNames {
  data: string;
  chunkMap: string;
}

/** File names of blob `blobId`'s cache in `workDir`. */
export function cacheFileNames(workDir: string, blobId: string): CacheFileNames {
  checkBlobId(blobId);
  // current upstream names (nydusd >= v2.2): <id>.blob.data and <id>.blob.data.chunk_map
  const data = path.join(workDir, `${blobId}.blob.data`);
  return { data, chunkMap: data + CHUNK_MAP_SUFFIX };
}

interface Entry {
  blobId: string;
  data: fsp.FileHandle;
  map: ChunkMap | undefined;
  /** single flight: the fetch of a chunk in progress, and whether it verifies */
  inflight: Map<number, Flight>;
  /** cache-file writes still running (write-behind) */
  writes: Map<number, Promise<void>>;
  /**
   * the data file opened again with O_DIRECT, for whole-page chunks
   * (direct-write.ts); undefined where the file system refuses it. Closed
   * with `data`, never before: a write may still be using it.
   */
  direct: fsp.FileHandle | undefined;
  /** a direct write failed: the rest go through the page cache */
  directFailed: boolean;
}

export interface FileCacheOptions {
  /** `cache.filecache.work_dir` */
  workDir: string;
  /** default source of calls that name none */
  backend?: BlobBackend;
  /** verify chunk digests (`cache.validate || rafs.validate`) by default */
  validate?: boolean;
  /** size quota in bytes (`cache.filecache.quota`, not upstream; 0 = none): quota.ts */
  quota?: number;
  /**
   * write whole-page chunks with O_DIRECT (direct-write.ts); default on,
   * `NYDUS_CACHE_DIRECT_WRITES=0` turns it off
   */
  directWrites?: boolean;
}

/** Where a call's missing chunks come from, and whether its reader verifies them. */
export interface ChunkSource {
  backend: BlobBackend;
  /** verify chunks read back from the cache (`cache.validate || rafs.validate`) */
  validate: boolean;
  /**
   * verify chunks fetched from the backend even when `validate` is off
   * (remote backends: what crosses a network is always checked, see factory.ts)
   */
  verifyFetched?: boolean;
  /** the blob's chunks in blob order, to merge a miss with its neighbours */
  directory?: (info: BlobInfo) => ChunkDirectory | undefined;
  /** merged request size for misses (max(rafs.batch_size, 128 KiB)) */
  batchSize?: number;
  /** cap on backend attempts for this call's requests */
  attempts?: number;
  /** the reader's blob cache metrics (hits, persisted chunks, write-behind bytes) */
  metrics?: BlobcacheMetrics;
}

/**
 * One chunk's fetch in progress. Its promise is made only when someone asks
 * for it (the reader that started the fetch, a reader joining it): the
 * hundreds of neighbours a request decodes along cost no promise each.
 */
class Flight {
  private p: Promise<Buffer> | undefined;
  private resolve: ((d: Buffer) => void) | undefined;
  private reject: ((e: unknown) => void) | undefined;
  private got: Buffer | undefined;
  private err: unknown;
  private done = false;

  constructor(readonly validated: boolean) {}

  /** The chunk's bytes (verified when `validated`), or its fetch's EIO. */
  get data(): Promise<Buffer> {
    if (!this.p) {
      if (!this.done) this.p = new Promise<Buffer>((res, rej) => { this.resolve = res; this.reject = rej; });
      else if (this.got) this.p = Promise.resolve(this.got);
      // (a flight over is out of `inflight`: nobody asks it any more; its error made only if one did)
      else this.p = Promise.reject(this.err ?? eio('chunk fetch already over'));
    }
    return this.p;
  }

  settle(d: Buffer | undefined, err: unknown): void {
    this.done = true;
    if (d) { this.got = d; this.resolve?.(d); return; }
    this.err = err;
    if (this.reject) {
      this.p!.catch(() => undefined); // a neighbour nobody waits for any more is not an unhandled rejection
      this.reject(err);
    }
  }

  /** The flight is over (out of `inflight`): its bytes are forgotten, the arena may reuse them. */
  clear(): void {
    this.got = undefined;
  }
}

export class FileCache {
  private readonly entries = new Map<string, Promise<Entry>>();
  /** entries whose files are open, for the synchronous locate() */
  private readonly opened = new Map<string, Entry>();
  /** mounts using each blob id (retain/release) */
  private readonly users = new Map<string, number>();
  private closed = false;
  /** bytes written to cache files with O_DIRECT and through the page cache (tests, debugging) */
  readonly written = { direct: 0, buffered: 0 };
  /** size quota with LRU eviction of unused blobs (quota.ts), when configured */
  readonly quota: CacheQuota | undefined;

  constructor(private readonly opts: FileCacheOptions) {
    if (opts.quota && opts.quota > 0) {
      this.quota = new CacheQuota(opts.workDir, opts.quota, (id) => this.users.has(id) || this.entries.has(id));
    }
  }

  private get directWrites(): boolean {
    return this.opts.directWrites ?? process.env.NYDUS_CACHE_DIRECT_WRITES !== '0';
  }

  private source(src?: ChunkSource): ChunkSource {
    if (src) return src;
    if (!this.opts.backend) throw eio(`filecache ${this.opts.workDir}: no backend given`);
    return { backend: this.opts.backend, validate: this.opts.validate ?? false };
  }

  /** A mount starts using blob `blobId`. */
  retain(blobId: string): void {
    this.users.set(blobId, (this.users.get(blobId) ?? 0) + 1);
    this.quota?.touch(blobId);
  }

  /** A (drained) mount stops using blob `blobId`: its files are closed when nobody else uses it. */
  async release(blobId: string): Promise<void> {
    const n = (this.users.get(blobId) ?? 0) - 1;
    if (n > 0) { this.users.set(blobId, n); return; }
    this.users.delete(blobId);
    this.quota?.touch(blobId);
    const p = this.entries.get(blobId);
    if (p) {
      this.entries.delete(blobId);
      this.opened.delete(blobId);
      await FileCache.closeEntry(p);
    }
    // the blob may now be evicted if the cache is over its quota
    if (this.quota && !this.closed) await this.quota.evictSoon();
  }

  /** Blob ids with open cache files (tests, metrics). */
  openBlobs(): string[] {
    return [...this.opened.keys()];
  }

  get workDir(): string {
    return this.opts.workDir;
  }

  /**
   * Cached chunk data that may be read without verification, as a file range.
   * The fd stays open until `close()`, which the daemon calls only after every
   * request that reached the mount has written its reply (Vfs.umountAndDrain):
   * a READ copying from it can never read a reused fd number.
   */
  locate(info: BlobInfo, chunk: ChunkInfo, validate = this.opts.validate ?? false): ChunkLocation | undefined {
    if (validate || this.closed) return undefined;
    const e = this.opened.get(info.blobId);
    if (!e?.map || !Number.isInteger(chunk.index) || chunk.index < 0 || chunk.index >= info.chunkCount) return undefined;
    if (!e.map.isReady(chunk.index)) return undefined;
    return { fd: e.data.fd, position: chunk.uncompressedOffset, length: chunk.uncompressedSize };
  }

  private entry(info: BlobInfo): Promise<Entry> {
    if (this.closed) return Promise.reject(eio(`filecache ${this.opts.workDir} is closed (blob ${info.blobId})`));
    let e = this.entries.get(info.blobId);
    if (!e) {
      e = this.openEntry(info);
      this.entries.set(info.blobId, e);
      e.then((opened) => { if (!this.closed) this.opened.set(info.blobId, opened); }, () => {});
      e.catch(() => { if (this.entries.get(info.blobId) === e) this.entries.delete(info.blobId); });
    }
    return e;
  }

  private async openEntry(info: BlobInfo): Promise<Entry> {
    const names = cacheFileNames(this.opts.workDir, info.blobId);
    await this.quota?.ready(info.blobId);
    try {
      await fsp.mkdir(this.opts.workDir, { recursive: true });
    } catch (e) {
      throw new ErrnoError((e as NodeJS.ErrnoException).code ?? 'EIO', `cannot create filecache work_dir ${this.opts.workDir}: ${(e as Error).message}`, { cause: e });
    }
    const data = await fsp.open(names.data, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o644);
    try {
      const st = await data.stat();
      if (!st.isFile()) throw eio(`cache file ${names.data} is not a regular file`);
      const want = Math.min(info.uncompressedSize, MAX_CACHE_OFFSET);
      if (want > 0 && st.size < want) await data.truncate(want);
      const map = info.chunkCount > 0 ? await ChunkMap.open(names.chunkMap, info.chunkCount) : undefined;
      const direct = this.directWrites ? await openDirect(names.data, 'write') : undefined;
      if (this.directWrites && !direct) logLimited('info', 'cache.direct.open', { file: names.data }, 'cache file cannot be opened with O_DIRECT: writing through the page cache');
      return { blobId: info.blobId, data, map, inflight: new Map(), writes: new Map(), direct, directFailed: false };
    } catch (e) {
      await data.close().catch(() => {});
      throw e;
    }
  }

  private where(info: BlobInfo, chunk: ChunkInfo): string {
    return `blob ${info.blobId} chunk ${chunk.index}`;
  }

  private checkChunk(e: Entry, info: BlobInfo, chunk: ChunkInfo): ChunkMap {
    if (!e.map || !Number.isInteger(chunk.index) || chunk.index < 0 || chunk.index >= info.chunkCount) {
      throw eio(`${this.where(info, chunk)}: chunk index out of range (blob has ${info.chunkCount} chunks)`);
    }
    const end = chunk.uncompressedOffset + chunk.uncompressedSize;
    if (!Number.isSafeInteger(chunk.uncompressedOffset) || chunk.uncompressedOffset < 0 || !(end <= MAX_CACHE_OFFSET)) {
      throw eio(`${this.where(info, chunk)}: uncompressed range ${chunk.uncompressedOffset}+${chunk.uncompressedSize} out of range`);
    }
    return e.map;
  }

  /**
   * Open (create) the blob's cache files now, as upstream does when the
   * device is built, so the first READ does not wait for them. A failure is
   * not kept: the first read opens again and reports it.
   */
  prepare(info: BlobInfo): Promise<void> {
    return this.entry(info).then(() => undefined);
  }

  /** Whether chunk data is already in the cache. */
  async isReady(info: BlobInfo, chunk: ChunkInfo): Promise<boolean> {
    const e = await this.entry(info);
    return this.checkChunk(e, info, chunk).isReady(chunk.index);
  }

  /** Uncompressed bytes of `chunk` of blob `info` (see module doc). */
  async readChunk(info: BlobInfo, chunk: ChunkInfo, from?: ChunkSource): Promise<Buffer> {
    const src = this.source(from);
    const e = await this.entry(info);
    src.metrics?.blobs.add(info.blobId);
    const map = this.checkChunk(e, info, chunk);
    if (map.isReady(chunk.index)) {
      const cached = await this.readCached(e, map, info, chunk, src.validate);
      if (cached) {
        if (src.metrics) { src.metrics.wholeHits++; src.metrics.entriesCount++; }
        return cached;
      }
    }
    return this.fetch(e, map, info, chunk, src, false);
  }

  /**
   * Fetch the chunks of `run` (one blob, sorted by compressed offset) that
   * are neither cached nor being fetched, each stretch of them with one
   * request. Per chunk: its data promise (joined when already in flight), or
   * undefined when it is cached. `how.prefetch`: at prefetch priority;
   * `how.readAhead`: for a sequential reader, which reads each byte once (the
   * chunks may be written with O_DIRECT, see persist).
   */
  async fetchRun(info: BlobInfo, run: readonly ChunkInfo[], from?: ChunkSource, how: { prefetch?: boolean; readAhead?: boolean } = {}): Promise<Array<Promise<Buffer> | undefined>> {
    const prefetch = !!how.prefetch;
    const src = this.source(from);
    const e = await this.entry(info);
    src.metrics?.blobs.add(info.blobId);
    const out: Array<Promise<Buffer> | undefined> = [];
    let stretch: ChunkInfo[] = [];
    const flush = () => {
      if (!stretch.length) return;
      for (const f of this.startRun(e, e.map!, info, stretch, src, prefetch, !!how.readAhead)) out.push(f.data);
      stretch = [];
    };
    for (const c of run) {
      const map = this.checkChunk(e, info, c);
      const joined = e.inflight.get(c.index);
      if (map.isReady(c.index) || joined) {
        flush();
        out.push(joined?.data);
        continue;
      }
      stretch.push(c);
    }
    flush();
    return out;
  }

  /**
   * Prefetch job: fetchRun at prefetch priority; resolves when every chunk of
   * `run` is persisted (or failed).
   */
  async prefetchRun(info: BlobInfo, run: readonly ChunkInfo[], from?: ChunkSource): Promise<void> {
    const datas = await this.fetchRun(info, run, from, { prefetch: true });
    await Promise.allSettled(datas);
    const e = await this.entry(info);
    await Promise.allSettled(run.map((c) => e.writes.get(c.index)));
  }

  /** Cached bytes, or undefined when the data file turned out short (then refetched). */
  private async readCached(e: Entry, map: ChunkMap, info: BlobInfo, chunk: ChunkInfo, validate: boolean): Promise<Buffer | undefined> {
    const len = chunk.uncompressedSize;
    // recycled memory when there is a slot (chunk-arena.ts): let go once the receivers kept what they keep
    const arena = chunkArena();
    const slot = arena?.alloc(len);
    const buf = slot ?? Buffer.allocUnsafe(len);
    let done = 0;
    try {
      while (done < len) {
        const { bytesRead } = await e.data.read(buf, done, len - done, chunk.uncompressedOffset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } finally {
      // handed out (after the receivers' callbacks) only when whole
      if (slot) { if (done === len) arena!.releaseSoon(slot); else arena!.release(slot); }
    }
    if (done < len) {
      warnLimited('cache.short', { blobId: info.blobId, chunkIndex: chunk.index }, 'cache file shorter than a ready chunk, refetching');
      await map.clearReady(chunk.index);
      return undefined;
    }
    if (!validate) return buf;
    try {
      return decodeChunk(buf, chunk, info, { validate: true, decoded: true });
    } catch (err) {
      logLimited('error', 'cache.corrupt', { blobId: info.blobId, chunkIndex: chunk.index, err: (err as Error).message }, 'cached chunk data is corrupted');
      await map.clearReady(chunk.index).catch(() => {});
      throw eio(`${this.where(info, chunk)}: cached data in ${cacheFileNames(this.opts.workDir, info.blobId).data} failed verification: ${(err as Error).message}`, err);
    }
  }

  /**
   * Single-flight backend fetch of `chunk`, merged with the following chunks
   * of its blob that are neither cached nor in flight (up to the source's
   * batch size), decoded, verified when asked, served at once and written
   * behind; each chunk is marked ready only once its bytes are in the file.
   */
  private fetch(e: Entry, map: ChunkMap, info: BlobInfo, chunk: ChunkInfo, src: ChunkSource, prefetch: boolean): Promise<Buffer> {
    const joined = e.inflight.get(chunk.index);
    if (joined) {
      if (!src.validate || joined.validated) return joined.data;
      // joined a fetch that does not verify: verify what it brings for this reader
      return joined.data.then((d) => {
        try {
          return decodeChunk(d, chunk, info, { validate: true, decoded: true });
        } catch (err) {
          throw eio(`${this.where(info, chunk)}: ${(err as Error).message}`, err);
        }
      });
    }
    const dir = src.directory?.(info);
    const run = dir ? dir.region(chunk, src.batchSize ?? DEFAULT_BATCH, (c) => !map.isReady(c.index) && !e.inflight.has(c.index)) : [chunk];
    return this.startRun(e, map, info, run, src, prefetch, false)[0].data;
  }

  /**
   * One backend request for `run`; every chunk of it in flight until written
   * behind. The run is written in groups of PERSIST_GROUP_BYTES of decoded
   * chunks (and PERSIST_GROUP_CHUNKS), each once all of its chunks are in: chunks adjacent in the cache
   * file with one pwritev each (one thread-pool trip per stretch, not per
   * chunk); a chunk whose fetch failed is left out. A group's chunks are
   * ready, and their memory let go, without waiting for the rest of the run.
   */
  private startRun(e: Entry, map: ChunkMap, info: BlobInfo, run: ChunkInfo[], src: ChunkSource, prefetch: boolean, readAhead: boolean): Flight[] {
    const verify = src.validate || !!src.verifyFetched;
    const m = src.metrics;
    const arena = chunkArena();
    const flights = new Array<Flight>(run.length);
    for (let k = 0; k < run.length; k++) e.inflight.set(run[k].index, (flights[k] = new Flight(verify)));
    // what a flight brings is held (arena memory referenced) until the flight is over: a late
    // reader joining it (e.inflight) gets bytes nothing else may reuse meanwhile
    const got = new Array<Buffer | undefined>(run.length);
    // the groups' bounds, how many chunks of each are still coming, and what starts each one's write
    const groupOf = new Array<number>(run.length);
    const left: number[] = [];
    const open: Array<() => void> = [];
    for (let from = 0, g = 0; from < run.length; g++) {
      let to = from;
      let bytes = 0;
      while (to < run.length && (to - from < PERSIST_GROUP_CHUNKS || bytes < PERSIST_GROUP_BYTES)) { groupOf[to] = g; bytes += run[to++].uncompressedSize; }
      left.push(to - from);
      const part = run.slice(from, to);
      const first = from;
      const w = new Promise<void>((res) => { open.push(res); })
        .then(() => this.persistRun(e, map, info, part, got.slice(first, first + part.length), m, readAhead));
      for (const chunk of part) e.writes.set(chunk.index, w);
      void w.finally(() => {
        for (let i = 0; i < part.length; i++) {
          const chunk = part[i];
          const k = first + i;
          if (e.writes.get(chunk.index) === w) e.writes.delete(chunk.index);
          if (e.inflight.get(chunk.index) === flights[k]) e.inflight.delete(chunk.index);
          flights[k].clear();
          const d = got[k];
          if (d) { got[k] = undefined; arena?.release(d); }
        }
      });
      from = to;
    }
    // read-ahead chunks are written with O_DIRECT (persist): stored ones are wanted in aligned slots
    fetchRegionEach({ backend: src.backend, verify, prefetch, attempts: src.attempts, readAhead, alignStored: readAhead && !!e.direct && !e.directFailed }, info, run, (k, d, err) => {
      // before the chunk is served: counted as buffered until written, held while in flight
      if (d) {
        if (m) m.bufferedBackendSize += d.length;
        arena?.retain(d);
        got[k] = d;
      }
      flights[k].settle(d, err);
      const g = groupOf[k];
      if (--left[g] === 0) open[g]();
    });
    return flights;
  }

  /** Write the chunks of `run` that came (`datas[k]`), stretch by stretch, then mark them ready. */
  private async persistRun(e: Entry, map: ChunkMap, info: BlobInfo, run: readonly ChunkInfo[], datas: Array<Buffer | undefined>, m: BlobcacheMetrics | undefined, direct: boolean): Promise<void> {
    for (let i = 0; i < run.length;) {
      if (!datas[i]) { i++; continue; }
      let j = i + 1;
      let end = run[i].uncompressedOffset + datas[i]!.length;
      while (j < run.length && datas[j] && j - i < MAX_WRITE_IOV && adjoins(end, run[j].uncompressedOffset)) {
        end = run[j].uncompressedOffset + datas[j++]!.length;
      }
      await this.persist(e, map, info, run.slice(i, j), datas.slice(i, j) as Buffer[], direct);
      if (m) for (let k = i; k < j; k++) { m.bufferedBackendSize -= datas[k]!.length; m.entriesCount++; }
      i = j;
    }
  }

  /**
   * Write `datas` (chunks `chunks`, each adjoining the previous one), their
   * alignment padding as zeros, one pwritev per group; then mark each ready.
   * `direct` (chunks a sequential reader asked for ahead, read once: the
   * kernel keeps them in the mount's page cache): whole-page chunks with
   * O_DIRECT, the rest through the page cache (direct-write.ts). Chunks
   * fetched on their own (random reads, which come back for the rest of a
   * chunk through the cache file) and prefetched ones are written through
   * the page cache, as upstream writes everything.
   */
  private async persist(e: Entry, map: ChunkMap, info: BlobInfo, chunks: readonly ChunkInfo[], datas: Buffer[], direct: boolean): Promise<void> {
    const arena = chunkArena();
    const groups = planWrites(chunks.map((c) => c.uncompressedOffset), datas, (n) => ZERO_PAD.subarray(0, n), {
      direct: direct && !!e.direct && !e.directFailed,
      aligned: (b) => isAligned(b, DIRECT_ALIGN),
      stage: (b) => {
        const slot = arena?.alloc(b.length);
        if (slot && !isAligned(slot, DIRECT_ALIGN)) { arena!.release(slot); return undefined; }
        slot?.set(b);
        return slot;
      },
    });
    try {
      for (const g of groups) await this.writeGroup(e, g);
      // all marked at once: one bitmap write for the stretch
      await map.setReadyAll(chunks);
      for (const c of chunks) this.quota?.charge(info.blobId, c.uncompressedSize);
    } catch (err) {
      // the data was good and has been served; only the cache misses out
      warnLimited('cache.write', { blobId: info.blobId, chunkIndex: chunks[0].index, chunks: chunks.length, err: (err as Error).message }, 'failed to write chunks to the cache');
    } finally {
      for (const g of groups) for (const b of g.staged) arena!.release(b);
    }
  }

  /** One group's pwritev, continued after short writes; a failed direct write is done again through the page cache. */
  private async writeGroup(e: Entry, g: WriteGroup): Promise<void> {
    let bufs = g.iov;
    let pos = g.pos;
    let left = bufs.reduce((n, b) => n + b.length, 0);
    let fh = g.direct && !e.directFailed ? e.direct! : e.data;
    while (left > 0) {
      let bytesWritten: number;
      try {
        ({ bytesWritten } = await fh.writev(bufs, pos));
      } catch (err) {
        if (fh === e.data) throw err;
        // the file system or device wants other alignment, or refuses O_DIRECT after all
        e.directFailed = true;
        warnLimited('cache.direct', { blobId: e.blobId, err: (err as Error).message }, 'O_DIRECT write to the cache file failed: writing through the page cache');
        fh = e.data;
        continue;
      }
      if (bytesWritten <= 0) throw eio('write made no progress');
      if (fh === e.data) this.written.buffered += bytesWritten; else this.written.direct += bytesWritten;
      left -= bytesWritten;
      pos += bytesWritten;
      bufs = iovAfter(bufs, bytesWritten); // a short write: continue after what went out
      // a short direct write may leave the rest unaligned
      if (fh !== e.data && left > 0 && pos % DIRECT_ALIGN !== 0) fh = e.data;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.opened.clear();
    const all = [...this.entries.values()];
    this.entries.clear();
    await Promise.all(all.map((p) => FileCache.closeEntry(p)));
  }

  /** Close an entry's files once its fetches and write-behinds are done. */
  private static async closeEntry(p: Promise<Entry>): Promise<void> {
    let e: Entry;
    try { e = await p; } catch { return; }
    await Promise.allSettled([...e.inflight.values()].map((f) => f.data));
    await Promise.allSettled([...e.writes.values()]);
    await e.map?.close().catch(() => {});
    await e.data.close().catch(() => {});
    await e.direct?.close().catch(() => {});
  }
}


