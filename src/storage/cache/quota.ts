/**
 * Blob cache size quota (not upstream: `cache.filecache.quota`, bytes; 0 =
 * unlimited). Users of every lazy-pull system ask for a bounded cache; none
 * has one. Policy: when the cache files of a work_dir take more than the
 * quota, the least recently used blobs that no mount uses are evicted whole
 * (`<id>.blob.data`, its chunk map and `<id>.blob.meta`), oldest first, until
 * usage is back under the quota. A blob in use is never evicted, so a quota
 * smaller than the working set is exceeded (and logged) rather than breaking
 * mounts; an evicted blob is simply downloaded again when next used.
 *
 * Usage is the allocated size (st_blocks) of the cache files, scanned once
 * when the cache opens (a work_dir left by an earlier run counts), then kept
 * up to date as chunks are written (rounded up to 4 KiB) and files evicted.
 * Recency is the last retain/release/read of a blob in this process, else the
 * data file's mtime.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { log, warnLimited } from '../../common/log';

const DATA_SUFFIX = '.blob.data';
const FILE_SUFFIXES = ['.blob.data', '.blob.data.chunk_map', '.blob.meta'];

interface BlobUsage {
  bytes: number;
  lastUse: number;
}

export class CacheQuota {
  private readonly blobs = new Map<string, BlobUsage>();
  private usage = 0;
  private readonly scanned: Promise<void>;
  private running: Promise<void> | undefined;
  /** blob ids whose files are being deleted (opening them waits) */
  private readonly evicting = new Map<string, Promise<void>>();
  evictedBlobs = 0;

  constructor(
    private readonly workDir: string,
    readonly quota: number,
    /** whether a mount uses (or has open) blob `id` */
    private readonly inUse: (id: string) => boolean,
  ) {
    this.scanned = this.scan().catch((err) => { warnLimited('cache.quota', { workDir, err: (err as Error).message }, 'cannot scan the cache work_dir'); });
  }

  get bytes(): number {
    return this.usage;
  }

  private async scan(): Promise<void> {
    let names: string[];
    try {
      names = await fsp.readdir(this.workDir);
    } catch {
      return;
    }
    for (const n of names) {
      const suffix = FILE_SUFFIXES.find((s) => n.endsWith(s));
      if (!suffix) continue;
      const id = n.slice(0, -suffix.length);
      try {
        const st = await fsp.lstat(path.join(this.workDir, n));
        if (!st.isFile()) continue;
        const u = this.entry(id, st.mtimeMs);
        const b = st.blocks * 512;
        u.bytes += b;
        this.usage += b;
        if (suffix === DATA_SUFFIX) u.lastUse = Math.min(u.lastUse, st.mtimeMs);
      } catch {
        // vanished meanwhile
      }
    }
  }

  private entry(id: string, lastUse = Date.now()): BlobUsage {
    let u = this.blobs.get(id);
    if (!u) this.blobs.set(id, (u = { bytes: 0, lastUse }));
    return u;
  }

  /** Blob `id` was used now. */
  touch(id: string): void {
    this.entry(id).lastUse = Date.now();
  }

  /** `bytes` more of blob `id` were written; evicts when over the quota. */
  charge(id: string, bytes: number): void {
    const b = Math.ceil(bytes / 4096) * 4096;
    this.entry(id).bytes += b;
    this.usage += b;
    if (this.quota > 0 && this.usage > this.quota) this.evictSoon();
  }

  /** Resolves once blob `id` is not being evicted (call before opening its files). */
  async ready(id: string): Promise<void> {
    await this.scanned;
    await this.evicting.get(id);
  }

  /** Run an eviction pass now (tests, release of a blob) unless one is running. */
  evictSoon(): Promise<void> {
    if (!this.running) {
      this.running = this.evict().finally(() => { this.running = undefined; });
    }
    return this.running;
  }

  private async evict(): Promise<void> {
    await this.scanned;
    if (this.quota <= 0 || this.usage <= this.quota) return;
    const victims = [...this.blobs].filter(([id]) => !this.inUse(id)).sort((a, b) => a[1].lastUse - b[1].lastUse);
    for (const [id, u] of victims) {
      if (this.usage <= this.quota) break;
      if (this.inUse(id)) continue;
      const p = this.remove(id, u);
      this.evicting.set(id, p);
      try { await p; } finally { this.evicting.delete(id); }
    }
    if (this.usage > this.quota) {
      warnLimited('cache.quota', { workDir: this.workDir, usage: this.usage, quota: this.quota }, 'blob cache above its quota: the rest is in use');
    }
  }

  private async remove(id: string, u: BlobUsage): Promise<void> {
    for (const s of FILE_SUFFIXES) {
      await fsp.unlink(path.join(this.workDir, id + s)).catch(() => undefined);
    }
    this.usage -= u.bytes;
    this.blobs.delete(id);
    this.evictedBlobs++;
    log.info({ workDir: this.workDir, blobId: id, bytes: u.bytes }, 'evicted blob from the cache (quota)');
  }
}
