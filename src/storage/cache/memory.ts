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
export class ChunkMemoryCache {
  private readonly map = new Map<string, { buf: Buffer; size: number }>();
  /** offered chunks not read yet, oldest first (only with `aheadBytes`) */
  private readonly ahead = new Map<string, { buf: Buffer; size: number }>();
  private readonly loading = new Map<string, Promise<Buffer>>();
  private bytes = 0;
  private aheadUsed = 0;

  /**
   * `aheadBytes` > 0: what `offer` brings is held apart, up to that many
   * bytes, until its first read moves it into the LRU of `capacityBytes`;
   * 0: offered chunks go to the LRU like read ones.
   */
  constructor(private readonly capacityBytes: number, private readonly aheadBytes = 0) {}

  get(key: string, load: () => Promise<Buffer>): Promise<Buffer> {
    const hit = this.map.get(key);
    if (hit) {
      this.map.delete(key); // refresh LRU position
      this.map.set(key, hit);
      return Promise.resolve(hit.buf);
    }
    const early = this.ahead.get(key);
    if (early) {
      // first read of a read-ahead chunk: it joins the LRU (its arena reference moves with it)
      this.ahead.delete(key);
      this.aheadUsed -= early.size;
      this.put(key, early.buf, true);
      return Promise.resolve(early.buf);
    }
    let p = this.loading.get(key);
    if (!p) {
      p = load().then((buf) => { this.put(key, buf); return buf; }).finally(() => this.loading.delete(key));
      this.loading.set(key, p);
    }
    return p;
  }

  /** Whether `key` is held or being loaded. */
  has(key: string): boolean {
    return this.map.has(key) || this.ahead.has(key) || this.loading.has(key);
  }

  /** Hold what `p` brings for `key` (a neighbour fetched by the same request); no-op when known. */
  offer(key: string, p: Promise<Buffer>): void {
    if (this.has(key)) return;
    const q = p.then((buf) => { if (this.aheadBytes > 0) this.hold(key, buf); else this.put(key, buf); return buf; }).finally(() => this.loading.delete(key));
    q.catch(() => undefined);
    this.loading.set(key, q);
  }

  /** Keep an offered chunk until its first read, the oldest going first past `aheadBytes`. */
  private hold(key: string, buf: Buffer): void {
    const arena = chunkArena();
    const size = arena ? arena.footprint(buf) : buf.length;
    if (size > this.aheadBytes || this.map.has(key) || this.ahead.has(key)) return;
    arena?.retain(buf);
    this.ahead.set(key, { buf, size });
    this.aheadUsed += size;
    for (const [k, v] of this.ahead) {
      if (this.aheadUsed <= this.aheadBytes) break;
      this.ahead.delete(k);
      this.aheadUsed -= v.size;
      arena?.release(v.buf);
    }
  }

  /** `referenced`: the caller hands over an arena reference it holds (a chunk moving from `ahead`). */
  private put(key: string, buf: Buffer, referenced = false): void {
    const arena = chunkArena();
    // a chunk in its own arena slot holds the whole slot (rounded up to a power of two): counted so
    const size = arena ? arena.footprint(buf) : buf.length;
    if (size > this.capacityBytes) { if (referenced) arena?.release(buf); return; }
    const old = this.map.get(key);
    if (old) { this.map.delete(key); this.bytes -= old.size; arena?.release(old.buf); }
    if (!referenced) arena?.retain(buf);
    this.map.set(key, { buf, size });
    this.bytes += size;
    for (const [k, v] of this.map) {
      if (this.bytes <= this.capacityBytes) break;
      this.map.delete(k);
      this.bytes -= v.size;
      arena?.release(v.buf);
    }
  }

  clear(): void {
    const arena = chunkArena();
    if (arena) for (const v of [...this.map.values(), ...this.ahead.values()]) arena.release(v.buf);
    this.map.clear();
    this.ahead.clear();
    this.bytes = 0;
    this.aheadUsed = 0;
  }
}
