/**
 * The v6 chunk table (rafs-spec §3.8) kept as the bootstrap's bytes: at load
 * every 80-byte record is checked in place (blob index, 24-bit chunk index,
 * u64 fields within JS's safe integers) and only two typed arrays are built,
 * the (blob index, chunk index) keys sorted and the offset of the first
 * record of each key. Lookups binary-search and decode one record; nothing
 * per chunk stays on the JS heap (a 100,000-file image kept ~30 MB of chunk
 * objects and their digests alive before).
 */
import { ensure } from '../../common/errno';
import { RAFS_MAX_CHUNKS_PER_BLOB } from '../format/constants';
import { RAFSV6_CHUNK_INFO_SIZE, decodeChunkInfoRecord, decodeChunkInfoRecordInto } from '../format/v6';
import type { ChunkInfo } from './types';

/** Offsets of the u64 fields of a record (compressed / uncompressed / file offset). */
const U64_FIELDS = [48, 56, 64];
/** High word limit of a safe integer (2^53 - 1). */
const MAX_SAFE_HIGH = 0x1fffff;

export class ChunkTable {
  private readonly keys: Float64Array;
  private readonly offsets: Uint32Array;
  readonly count: number;

  constructor(private readonly buf: Buffer, private readonly start: number, size: number, private readonly nblobs: number) {
    ensure(size % RAFSV6_CHUNK_INFO_SIZE === 0, `s_chunk_table_size ${size} is not a multiple of 80`);
    this.count = size / RAFSV6_CHUNK_INFO_SIZE;
    const allKeys = new Float64Array(this.count);
    for (let i = 0; i < this.count; i++) allKeys[i] = this.check(start + i * RAFSV6_CHUNK_INFO_SIZE);
    // record numbers sorted by key, the first record of a key kept (table order breaks ties)
    const order = new Uint32Array(this.count);
    for (let i = 0; i < this.count; i++) order[i] = i;
    order.sort((a, b) => allKeys[a] - allKeys[b] || a - b);
    let n = 0;
    const keys = new Float64Array(this.count);
    const offsets = new Uint32Array(this.count);
    for (let j = 0; j < this.count; j++) {
      const k = allKeys[order[j]];
      if (n > 0 && keys[n - 1] === k) continue;
      keys[n] = k;
      offsets[n] = start + order[j] * RAFSV6_CHUNK_INFO_SIZE;
      n++;
    }
    this.keys = keys.slice(0, n);
    this.offsets = offsets.slice(0, n);
  }

  /**
   * The key of the record at `off`, checked. Records are checked again
   * whenever decoded: a mapped bootstrap (image.ts) may change under the
   * reader, so what was checked at load proves nothing later.
   */
  private check(off: number): number {
    const buf = this.buf;
    const blobIndex = buf.readUInt32LE(off + 32);
    const index = buf.readUInt32LE(off + 72);
    // messages built only on failure: this runs for every record of every walk
    if (blobIndex >= this.nblobs) ensure(false, `chunk table record at ${off}: blob_index ${blobIndex} >= ${this.nblobs} blobs`);
    if (index >= RAFS_MAX_CHUNKS_PER_BLOB) ensure(false, `chunk table record at ${off}: index ${index} exceeds 24 bits`);
    for (const f of U64_FIELDS) if (buf.readUInt32LE(off + f + 4) > MAX_SAFE_HIGH) ensure(false, `chunk table record at ${off}: u64 at +${f} is beyond 2^53`);
    return blobIndex * RAFS_MAX_CHUNKS_PER_BLOB + index;
  }

  private decode(off: number): ChunkInfo {
    this.check(off);
    return decodeChunkInfoRecord(this.buf, off);
  }

  /** The first record of chunk `index` of blob `blobIndex`, decoded, or undefined. */
  get(blobIndex: number, index: number): ChunkInfo | undefined {
    const key = blobIndex * RAFS_MAX_CHUNKS_PER_BLOB + index;
    let lo = 0;
    let hi = this.keys.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const k = this.keys[mid];
      if (k === key) {
        const c = this.decode(this.offsets[mid]);
        // the bytes there may have changed since the load (mapped bootstrap): never hand out another chunk
        if (c.blobIndex !== blobIndex || c.index !== index) ensure(false, `chunk table record at ${this.offsets[mid]} changed under the reader`);
        return c;
      }
      if (k < key) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  }

  /** Records per blob index (`nblobs` entries). */
  countsByBlob(nblobs: number): number[] {
    const out = new Array<number>(nblobs).fill(0);
    for (let i = 0; i < this.count; i++) {
      const b = this.buf.readUInt32LE(this.start + i * RAFSV6_CHUNK_INFO_SIZE + 32);
      if (b < nblobs) out[b]++;
    }
    return out;
  }

  /** Every record in table order, decoded (callers that list the whole table). */
  all(): ChunkInfo[] {
    return [...this.records()];
  }

  /**
   * Every record in table order, decoded one at a time (nothing kept). With
   * `reuse`, one object is filled again for each record (valid until the next
   * is pulled): a walk over a 100,000-chunk table allocates no object per chunk.
   */
  *records(reuse = false): Generator<ChunkInfo> {
    if (!reuse) {
      for (let i = 0; i < this.count; i++) yield this.decode(this.start + i * RAFSV6_CHUNK_INFO_SIZE);
      return;
    }
    const c = decodeChunkInfoRecord(this.buf, this.start);
    for (let i = 0; i < this.count; i++) {
      const off = this.start + i * RAFSV6_CHUNK_INFO_SIZE;
      this.check(off);
      yield decodeChunkInfoRecordInto(this.buf, off, c);
    }
  }
}
