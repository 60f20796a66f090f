import { chunkArena } from '../blob/chunk-arena';

/**
 * A small in-memory LRU of decompressed chunks in front of the blob cache.
 * FUSE reads arrive in pieces (128 KiB–1 MiB) smaller than a chunk; without
 * it every piece would re-read (and re-verify) the whole chunk. Concurrent
 * misses for one chunk share one load. Returned buffers are shared: callers
 * must treat them as read-only. A chunk in arena memory is referenced while
 * it is held (blob/chunk-arena.ts).
 */
export class ChunkMemoryCache {
  private readonly map = new Map<string, Buffer>();
  private readonly loading = new Map<string, Promise<Buffer>>();
  private bytes = 0;

  constructor(private readonly capacityBytes: number) {}

  get(key: string, load: () => Promise<Buffer>): Promise<Buffer> {
    const hit = this.map.get(key);
    if (hit) {
      this.map.delete(key); // refresh LRU position
      this.map.set(key, hit);
      return Promise.resolve(hit);
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
    return this.map.has(key) || this.loading.has(key);
  }

  /** Hold what `p` brings for `key` (a neighbour fetched by the same request); no-op when known. */
  offer(key: string, p: Promise<Buffer>): void {
    if (this.has(key)) return;
    const q = p.then((buf) => { this.put(key, buf); return buf; }).finally(() => this.loading.delete(key));
    q.catch(() => undefined);
    this.loading.set(key, q);
  }

  private put(key: string, buf: Buffer): void {
    if (buf.length > this.capacityBytes) return;
    const arena = chunkArena();
    const old = this.map.get(key);
    if (old) { this.map.delete(key); this.bytes -= old.length; arena?.release(old); }
    arena?.retain(buf);
    this.map.set(key, buf);
    this.bytes += buf.length;
    for (const [k, v] of this.map) {
      if (this.bytes <= this.capacityBytes) break;
      this.map.delete(k);
      this.bytes -= v.length;
      arena?.release(v);
    }
  }

  clear(): void {
    const arena = chunkArena();
    if (arena) for (const v of this.map.values()) arena.release(v);
    this.map.clear();
    this.bytes = 0;
  }
}
