import { chunkArena } from '../blob/chunk-arena';

/**
 * Bytes of decoded chunks one image keeps in memory without a local cache:
 * the merged neighbours of a miss and the sequential read-ahead wait here
 * until they are read, nowhere else.
 */
export const MEMORY_CACHE_BYTES = 32 << 20;
/**
 * With a blob cache: every chunk also lands in the cache file, whose page
 * cache serves re-reads (upstream nydusd keeps no decoded chunks at all), so
 * memory only has to bridge the kernel's sub-chunk READs of a chunk just
 * decoded (a few 1 MiB chunks) and the read-ahead not yet persisted. Larger
 * only grows the daemon: 32 MiB of small chunks held ~70 MB of arena slabs
 * after a 100,000-file read.
 */
export const MEMORY_CACHE_BYTES_WITH_BLOBCACHE = 4 << 20;

/**
 * With a blob cache: chunks brought by the sequential read-ahead, held until
 * their first read (then they join the LRU) or until this many bytes of
 * newer ones push them out. Without it, read-ahead chunks fetched before the
 * kernel asks for them fell out of the 4 MiB LRU and were read back from the
 * cache file, which the cache writes with O_DIRECT (direct-write.ts): from
 * the disk. Twice the read-ahead window (rafs/fs.ts).
 */
export const READ_AHEAD_HOLD_BYTES = 32 << 20;

/** The memory LRU size of an image: smaller when a blob cache keeps every chunk anyway. */
export function memoryCacheBytes(withBlobCache: boolean): number {
  return withBlobCache ? MEMORY_CACHE_BYTES_WITH_BLOBCACHE : MEMORY_CACHE_BYTES;
}

/**
 * A small in-memory LRU of decompressed chunks in front of the blob cache.
 * FUSE reads arrive in pieces (128 KiB–1 MiB) smaller than a chunk; without
 * it every piece would re-read (and re-verify) the whole chunk. Concurrent
 * misses for one chunk share one load. Returned buffers are shared: callers
 * must treat them as read-only. A chunk in arena memory is referenced while
 * it is held (blob/chunk-arena.ts).
 */
/**
 * Chunks held in insertion order up to `capacity` bytes of footprint, each
 * with one arena reference (dropped when it leaves); the oldest go first.
 */
class HeldChunks {
  private readonly map = new Map<string, { buf: Buffer; size: number }>();
  private used = 0;

  constructor(readonly capacity: number) {}

  has(key: string): boolean {
    return this.map.has(key);
  }

  get(key: string): Buffer | undefined {
    return this.map.get(key)?.buf;
  }

  /** Move `key` to the newest place. */
  touch(key: string): void {
    const e = this.map.get(key);
    if (e) { this.map.delete(key); this.map.set(key, e); }
  }

  /** Hold `buf` (whose arena reference the caller hands over) as `key`; false, holding nothing, when it alone is over the capacity. */
  add(key: string, buf: Buffer, size: number): boolean {
    if (size > this.capacity) return false;
    this.drop(key);
    this.map.set(key, { buf, size });
    this.used += size;
    for (const k of this.map.keys()) {
      if (this.used <= this.capacity) break;
      this.drop(k);
    }
    return true;
  }

  /** Let go of `key` without dropping its arena reference (it moves elsewhere). */
  take(key: string): Buffer | undefined {
    const e = this.map.get(key);
    if (!e) return undefined;
    this.map.delete(key);
    this.used -= e.size;
    return e.buf;
  }

  private drop(key: string): void {
    const buf = this.take(key);
    if (buf) chunkArena()?.release(buf);
  }

  clear(): void {
    for (const k of [...this.map.keys()]) this.drop(k);
  }
}

export class ChunkMemoryCache {
  private readonly lru: HeldChunks;
  /** offered chunks not read yet, oldest first (only with `aheadBytes`) */
  private readonly ahead: HeldChunks | undefined;
  private readonly loading = new Map<string, Promise<Buffer>>();

  /**
   * `aheadBytes` > 0: what `offer` brings is held apart, up to that many
   * bytes, until its first read moves it into the LRU of `capacityBytes`;
   * 0: offered chunks go to the LRU like read ones.
   */
  constructor(readonly capacityBytes: number, readonly aheadBytes = 0) {
    this.lru = new HeldChunks(capacityBytes);
    this.ahead = aheadBytes > 0 ? new HeldChunks(aheadBytes) : undefined;
  }

  get(key: string, load: () => Promise<Buffer>): Promise<Buffer> {
    const hit = this.lru.get(key);
    if (hit) {
      this.lru.touch(key);
      return Promise.resolve(hit);
    }
    // first read of a read-ahead chunk: it joins the LRU (its arena reference moves with it)
    const early = this.ahead?.take(key);
    if (early) {
      this.hold(this.lru, key, early, true);
      return Promise.resolve(early);
    }
    let p = this.loading.get(key);
    if (!p) {
      p = load().then((buf) => { this.hold(this.lru, key, buf); return buf; }).finally(() => this.loading.delete(key));
      this.loading.set(key, p);
    }
    return p;
  }

  /** Whether `key` is held or being loaded. */
  has(key: string): boolean {
    return this.lru.has(key) || !!this.ahead?.has(key) || this.loading.has(key);
  }

  /** Hold what `p` brings for `key` (a neighbour fetched by the same request); no-op when known. */
  offer(key: string, p: Promise<Buffer>): void {
    if (this.has(key)) return;
    const q = p.then((buf) => {
      if (!this.lru.has(key) && !this.ahead?.has(key)) this.hold(this.ahead ?? this.lru, key, buf);
      return buf;
    }).finally(() => this.loading.delete(key));
    q.catch(() => undefined);
    this.loading.set(key, q);
  }

  /**
   * Keep `buf` in `where`, counted at its footprint (a chunk in its own arena
   * slot holds the whole slot, rounded up to a power of two); `referenced`:
   * the caller hands over an arena reference it holds.
   */
  private hold(where: HeldChunks, key: string, buf: Buffer, referenced = false): void {
    const arena = chunkArena();
    if (!referenced) arena?.retain(buf);
    if (!where.add(key, buf, arena ? arena.footprint(buf) : buf.length)) arena?.release(buf);
  }

  clear(): void {
    this.lru.clear();
    this.ahead?.clear();
  }
}
