/**
 * Persisted chunk readiness bitmap `<work_dir>/<blob_id>.chunk_map`
 * (rafs-spec §4.5; upstream `storage/src/cache/state/persist_map.rs`).
 *
 * Layout: a 4096-byte header — u32 LE magic 0x424D4150, u32 version = 1,
 * u32 magic2 0x434D4150, u32 all_ready (0x4D4D4150 once every chunk is
 * ready, else 0), zero padding — followed by ceil(chunk_count / 8) bytes of
 * bitmap. Chunk i is bit `0x80 >> (i % 8)` of byte `i / 8` (most significant
 * bit first, as upstream's `index_to_mask`). The file is exactly
 * 4096 + ceil(chunk_count / 8) bytes.
 *
 * The bitmap is mirrored in memory; setting or clearing a bit writes that one
 * byte back (no fsync per bit). Writes go through one queue per map so a
 * later state of a byte can never be overtaken by an earlier one.
 *
 * A file of the wrong size or with a bad header is not trusted: upstream
 * refuses it (EINVAL); we log a warning and start over with an empty map,
 * which only costs refetching.
 */
import { constants as fsConstants } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { einval } from '../../common/errno';
import { log } from '../../common/log';

export const CHUNK_MAP_MAGIC = 0x424d4150;
export const CHUNK_MAP_MAGIC2 = 0x434d4150;
export const CHUNK_MAP_ALL_READY = 0x4d4d4150;
export const CHUNK_MAP_VERSION = 1;
export const CHUNK_MAP_HEADER_SIZE = 4096;
export const CHUNK_MAP_SUFFIX = '.chunk_map';

/** Bitmask of chunk `index` within its bitmap byte. */
export const chunkMapMask = (index: number): number => 0x80 >>> (index & 7);

/** The 4096-byte header. */
export function encodeChunkMapHeader(allReady: boolean): Buffer {
  const h = Buffer.alloc(CHUNK_MAP_HEADER_SIZE);
  h.writeUInt32LE(CHUNK_MAP_MAGIC, 0);
  h.writeUInt32LE(CHUNK_MAP_VERSION, 4);
  h.writeUInt32LE(CHUNK_MAP_MAGIC2, 8);
  h.writeUInt32LE(allReady ? CHUNK_MAP_ALL_READY : 0, 12);
  return h;
}

function popcount8(b: number): number {
  b = b - ((b >>> 1) & 0x55);
  b = (b & 0x33) + ((b >>> 2) & 0x33);
  return (b + (b >>> 4)) & 0x0f;
}

export class ChunkMap {
  private readyCount: number;
  private allReadyPersisted: boolean;
  private queue: Promise<void> = Promise.resolve();
  private writeError: unknown;

  private constructor(
    readonly file: string,
    readonly chunkCount: number,
    private readonly fh: fsp.FileHandle,
    private readonly bits: Buffer,
    allReadyHeader: boolean,
  ) {
    this.allReadyPersisted = allReadyHeader;
    if (allReadyHeader) {
      // upstream trusts all_ready over the bits: materialise it
      bits.fill(0xff);
      this.clearTailBits();
      this.readyCount = chunkCount;
    } else {
      let n = 0;
      for (let i = 0; i < bits.length; i++) n += popcount8(bits[i]);
      this.readyCount = n;
    }
  }

  /** Open or create the map for a blob of `chunkCount` chunks. */
  static async open(file: string, chunkCount: number): Promise<ChunkMap> {
    if (!Number.isSafeInteger(chunkCount) || chunkCount <= 0) throw einval(`chunk_map ${file}: chunk count ${chunkCount} should be greater than 0`);
    const bitmapSize = Math.ceil(chunkCount / 8);
    const expected = CHUNK_MAP_HEADER_SIZE + bitmapSize;
    const fh = await fsp.open(file, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o644);
    try {
      const size = (await fh.stat()).size;
      let bits = Buffer.alloc(bitmapSize);
      let allReady = false;
      let reset = size === 0;
      if (!reset) {
        const reason = await ChunkMap.check(fh, size, expected, bits);
        if (reason === undefined) {
          const head = Buffer.alloc(16);
          await fh.read(head, 0, 16, 0);
          allReady = head.readUInt32LE(12) === CHUNK_MAP_ALL_READY;
        } else if (reason === 'zero') {
          reset = true; // crashed between set_len and the header write (upstream's race window)
        } else {
          log.warn({ file, reason }, 'blob chunk_map file may be corrupted, starting with an empty map');
          reset = true;
        }
      }
      if (reset) {
        bits = Buffer.alloc(bitmapSize);
        await fh.truncate(0);
        await fh.truncate(expected);
        await fh.write(encodeChunkMapHeader(false), 0, CHUNK_MAP_HEADER_SIZE, 0);
      }
      const map = new ChunkMap(file, chunkCount, fh, bits, allReady);
      if (!reset) map.clearTailBits();
      if (!allReady && map.readyCount >= chunkCount) {
        // as upstream does on open: a full bitmap is recorded in the header
        map.enqueue(() => map.writeAllReady(true));
        await map.flush();
      }
      return map;
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
  }

  /** Why an existing file is not acceptable ('zero' = all zero bytes), or undefined; fills `bits`. */
  private static async check(fh: fsp.FileHandle, size: number, expected: number, bits: Buffer): Promise<string | undefined> {
    if (size !== expected) return `file size ${size} != expected ${expected}`;
    const head = Buffer.alloc(16);
    await fh.read(head, 0, 16, 0);
    await fh.read(bits, 0, bits.length, CHUNK_MAP_HEADER_SIZE);
    if (head.readUInt32LE(0) !== CHUNK_MAP_MAGIC) {
      const all = Buffer.alloc(expected);
      await fh.read(all, 0, expected, 0);
      return all.every((b) => b === 0) ? 'zero' : `bad magic 0x${head.readUInt32LE(0).toString(16)}`;
    }
    if (head.readUInt32LE(4) >= 1 && head.readUInt32LE(8) !== CHUNK_MAP_MAGIC2) return `bad magic2 0x${head.readUInt32LE(8).toString(16)}`;
    return undefined;
  }

  /** Bits past chunkCount in the last byte never count as ready. */
  private clearTailBits(): void {
    const rem = this.chunkCount & 7;
    if (rem === 0) return;
    const last = this.bits.length - 1;
    const keep = (0xff << (8 - rem)) & 0xff;
    const dropped = this.bits[last] & ~keep & 0xff;
    if (dropped) {
      this.bits[last] &= keep;
      this.readyCount -= popcount8(dropped);
    }
  }

  private checkIndex(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.chunkCount) {
      throw einval(`chunk index ${index} exceeds chunk count ${this.chunkCount} (${this.file})`);
    }
  }

  isReady(index: number): boolean {
    this.checkIndex(index);
    return (this.bits[index >>> 3] & chunkMapMask(index)) !== 0;
  }

  get allReady(): boolean {
    return this.readyCount >= this.chunkCount;
  }

  get ready(): number {
    return this.readyCount;
  }

  /** Mark chunk `index` ready and persist the bit (and all_ready when complete). */
  setReady(index: number): Promise<void> {
    this.mark(index);
    return this.flush();
  }

  /** setReady of every chunk of `chunks` (by their `index`): one flush (one promise) for all. */
  setReadyAll(chunks: ReadonlyArray<{ index: number }>): Promise<void> {
    for (const c of chunks) this.mark(c.index);
    return this.flush();
  }

  /** Set chunk `index`'s bit in memory, its write (and all_ready's, when complete) queued. */
  private mark(index: number): void {
    this.checkIndex(index);
    const byte = index >>> 3;
    const mask = chunkMapMask(index);
    if (this.bits[byte] & mask) return;
    this.bits[byte] |= mask;
    this.readyCount++;
    this.markDirty(byte);
    if (this.readyCount >= this.chunkCount) this.enqueue(() => this.writeAllReady(true));
  }

  /** Forget chunk `index` (its cached data is bad); clears all_ready first. */
  clearReady(index: number): Promise<void> {
    this.checkIndex(index);
    const byte = index >>> 3;
    const mask = chunkMapMask(index);
    if (!(this.bits[byte] & mask)) return this.flush();
    this.bits[byte] &= ~mask & 0xff;
    this.readyCount--;
    if (this.allReadyPersisted) {
      // the header must stop claiming completeness before any bit is trusted again;
      // a header promoted from a materialised all_ready needs its bits written out
      this.enqueue(async () => {
        await this.writeAllReady(false);
        await this.fh.write(this.bits, 0, this.bits.length, CHUNK_MAP_HEADER_SIZE);
      });
    } else {
      this.markDirty(byte);
    }
    return this.flush();
  }

  /**
   * Bytes changed since the last bitmap write: written together by one
   * queued write (chunks persisted in a burst cost one pwrite, not one each).
   */
  private dirtyLo = Infinity;
  private dirtyHi = -1;
  private dirtyQueued = false;

  private markDirty(byte: number): void {
    this.dirtyLo = Math.min(this.dirtyLo, byte);
    this.dirtyHi = Math.max(this.dirtyHi, byte + 1);
    if (this.dirtyQueued) return;
    this.dirtyQueued = true;
    this.enqueue(async () => {
      this.dirtyQueued = false;
      const lo = this.dirtyLo;
      const hi = this.dirtyHi;
      this.dirtyLo = Infinity;
      this.dirtyHi = -1;
      if (hi <= lo) return;
      // the bytes' values at write time: the latest state always lands last
      const b = Buffer.from(this.bits.subarray(lo, hi));
      await this.fh.write(b, 0, b.length, CHUNK_MAP_HEADER_SIZE + lo);
    });
  }

  private enqueue(op: () => Promise<void>): void {
    this.queue = this.queue.then(op).catch((e) => {
      this.writeError = e;
      log.error({ file: this.file, err: (e as Error).message }, 'failed to persist chunk_map');
    });
  }

  /** Resolves when every queued write is done; rejects if one failed. */
  async flush(): Promise<void> {
    await this.queue;
    if (this.writeError) {
      const e = this.writeError;
      this.writeError = undefined;
      throw e;
    }
  }

  private async writeAllReady(on: boolean): Promise<void> {
    if (on && this.readyCount < this.chunkCount) return; // a clear raced in
    const b = Buffer.alloc(4);
    b.writeUInt32LE(on ? CHUNK_MAP_ALL_READY : 0, 0);
    await this.fh.write(b, 0, 4, 12);
    this.allReadyPersisted = on;
  }

  async close(): Promise<void> {
    await this.queue;
    await this.fh.close();
  }
}
