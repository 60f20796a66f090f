/**
 * A blob's chunks in the order they sit in the blob (by compressed offset),
 * for merging backend requests: a miss on one chunk fetches its not-yet-cached
 * neighbours in the same request (upstream's region extension with blob.meta,
 * storage-backends §5 "Backend region"), and prefetch merges its chunk lists
 * into ranges (§6). Built once per blob from the image's chunk records
 * (duplicates by index dropped; records whose index is out of range ignored).
 * Members of one batch (batch.ts) share one compressed range: a request for
 * one brings the others.
 *
 * Compact: the records are kept in typed-array columns (~90 bytes a chunk,
 * off the JS heap) and a ChunkInfo is built only for the chunks a caller
 * gets back; a 100,000-chunk image kept ~30 MB of ChunkInfo objects and
 * digest Buffers alive before. A record that does not fit the columns (a
 * digest other than 32 bytes, fields the columns lack) is kept as it is.
 */
import type { BlobInfo, ChunkInfo } from '../format/types';
import { batchOf, sameBatch, unplaced, type BatchRef } from './batch';

/** Fields of a ChunkInfo the directory stores in its columns (anything else keeps the record as it is). */
const PLAIN_KEYS = new Set(['digest', 'blobIndex', 'index', 'flags', 'compressed', 'compressedOffset', 'compressedSize',
  'uncompressedOffset', 'uncompressedSize', 'fileOffset', 'crc32', 'batch']);
const DIGEST = 32;

/** Whether every field of `c` fits the columns (the common case: a plain chunk-table record). */
function columnar(c: ChunkInfo): boolean {
  if (!(c.digest instanceof Uint8Array) || c.digest.length !== DIGEST) return false;
  if (!isU32(c.flags) || !isU32(c.crc32) || !isU32(c.compressedSize) || !isU32(c.uncompressedSize)) return false;
  if (typeof c.compressed !== 'boolean' || !Number.isInteger(c.blobIndex)) return false;
  const b = batchOf(c);
  if (b !== undefined && !(isU32(b.index) && b.index < 0x7fffffff && isU32(b.offset) && isU32(b.size) && Object.keys(b).length === 3)) return false;
  for (const k in c) if (!PLAIN_KEYS.has(k)) return false;
  return true;
}

function isU32(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

export class ChunkDirectory {
  /**
   * The builder's columns, in arrival order (one slot per chunk), read in
   * blob order (by compressed offset, then index) through `order`: no second
   * copy of the columns is made. A ChunkInfo is built on demand.
   */
  private readonly n: number;
  /** position in blob order → slot */
  private readonly order: Uint32Array;
  private readonly idx: Uint32Array;
  private readonly cOff: Float64Array;
  private readonly cSize: Uint32Array;
  private readonly uOff: Float64Array;
  private readonly uSize: Uint32Array;
  private readonly fOff: Float64Array;
  private readonly flags: Uint32Array;
  private readonly crc: Uint32Array;
  /** bit 0: compressed, bit 1: batch member */
  private readonly bits: Uint8Array;
  private readonly digests: Uint8Array;
  /** batch members: batch index / offset in the batch / batch size (-1 / 0 / 0 otherwise) */
  private readonly bIndex: Int32Array;
  private readonly bOffset: Uint32Array;
  private readonly bSize: Uint32Array;
  /** records that do not fit the columns (odd digests, extra fields), by slot */
  private readonly odd: Map<number, ChunkInfo>;
  /** chunk index → position in blob order (-1 when unknown) */
  private readonly pos: Int32Array;
  private readonly blobIndex: number;

  /** some records could not be placed (batch members listed before their blob.meta loaded) */
  readonly partial: boolean = false;

  constructor(readonly info: BlobInfo, chunks: Iterable<ChunkInfo> | DirectoryBuilder) {
    const b = chunks instanceof DirectoryBuilder ? chunks : new DirectoryBuilder(info);
    if (!(chunks instanceof DirectoryBuilder)) for (const c of chunks) b.add(c);
    b.trim();
    const n = (this.n = b.count);
    this.partial = b.partial;
    const order = (this.order = new Uint32Array(n));
    for (let i = 0; i < n; i++) order[i] = i;
    const sc = b.cOff;
    const si = b.idx;
    order.sort((x, y) => sc[x] - sc[y] || si[x] - si[y]);
    this.blobIndex = info.blobIndex;
    this.idx = b.idx;
    this.cOff = b.cOff;
    this.cSize = b.cSize;
    this.uOff = b.uOff;
    this.uSize = b.uSize;
    this.fOff = b.fOff;
    this.flags = b.flags;
    this.crc = b.crc;
    this.bits = b.bits;
    this.digests = b.digests;
    this.bIndex = b.bIndex;
    this.bOffset = b.bOffset;
    this.bSize = b.bSize;
    this.odd = b.odd;
    this.pos = b.first; // reused: rewritten below with positions
    this.pos.fill(-1);
    for (let p = 0; p < n; p++) this.pos[si[order[p]]] = p;
  }

  /**
   * One directory per blob from one walk over the image's chunk records
   * (records naming no blob of `blobs` skipped). The records are read one at
   * a time into columns: none is kept (but odd ones), so a walk over a whole
   * image's table does not grow the heap by an object per chunk.
   */
  static buildAll(blobs: readonly BlobInfo[], records: Iterable<ChunkInfo>): ChunkDirectory[] {
    return new DirectoryBuild(blobs, records).finish();
  }

  get size(): number {
    return this.n;
  }

  /** The record at position `p` (a fresh object: callers may keep or change it). */
  private at(p: number): ChunkInfo {
    const s = this.order[p];
    const o = this.odd.get(s);
    if (o) return o;
    const c: ChunkInfo = {
      digest: Buffer.from(this.digests.subarray(s * DIGEST, (s + 1) * DIGEST)),
      blobIndex: this.blobIndex,
      index: this.idx[s],
      flags: this.flags[s],
      compressed: (this.bits[s] & 1) !== 0,
      compressedOffset: this.cOff[s],
      compressedSize: this.cSize[s],
      uncompressedOffset: this.uOff[s],
      uncompressedSize: this.uSize[s],
      fileOffset: this.fOff[s],
      crc32: this.crc[s],
    };
    if (this.bits[s] & 2) (c as ChunkInfo & { batch: BatchRef }).batch = { index: this.bIndex[s], offset: this.bOffset[s], size: this.bSize[s] };
    return c;
  }

  /** Compressed offset of position `p`. */
  private cOffAt(p: number): number {
    return this.cOff[this.order[p]];
  }

  /** Compressed end of position `p`. */
  private cEnd(p: number): number {
    const s = this.order[p];
    const o = this.odd.get(s);
    return o ? o.compressedOffset + o.compressedSize : this.cOff[s] + this.cSize[s];
  }

  /** sameBatch(record at `p`, ref) without building the record. */
  private sameBatchAt(p: number, ref: ChunkInfo): boolean {
    const rb = batchOf(ref);
    if (!rb) return false;
    const s = this.order[p];
    const o = this.odd.get(s);
    if (o) return sameBatch(o, ref);
    return (this.bits[s] & 2) !== 0 && this.blobIndex === ref.blobIndex && this.cOff[s] === ref.compressedOffset &&
      this.cSize[s] === ref.compressedSize && this.bIndex[s] === rb.index;
  }

  private posOf(index: number): number {
    return Number.isInteger(index) && index >= 0 && index < this.pos.length ? this.pos[index] : -1;
  }

  /** Chunk with blob index `index`, if the image refers to it. */
  get(index: number): ChunkInfo | undefined {
    const p = this.posOf(index);
    return p >= 0 ? this.at(p) : undefined;
  }

  /** Every chunk, in blob order. */
  all(): ChunkInfo[] {
    const out = new Array<ChunkInfo>(this.n);
    for (let p = 0; p < this.n; p++) out[p] = this.at(p);
    return out;
  }

  /**
   * The run of chunks starting at `first` that one backend request should
   * fetch: following chunks in blob order while each ends within `limit`
   * bytes of `first`'s compressed offset, leaves a gap of at most `limit/128`
   * bytes to its predecessor, and `want(c)` (not cached, not being fetched).
   */
  region(first: ChunkInfo, limit: number, want: (c: ChunkInfo) => boolean): ChunkInfo[] {
    const out = [first];
    const p = this.posOf(first.index);
    if (p < 0) return out;
    // a caller's record that disagrees with the directory is fetched alone
    if (this.cOffAt(p) !== first.compressedOffset || this.cEnd(p) - this.cOffAt(p) !== first.compressedSize) return out;
    // the other members of first's batch (on either side of it) come with the same request
    for (let k = p - 1; k >= 0 && this.sameBatchAt(k, first); k--) { const c = this.at(k); if (want(c)) out.push(c); }
    const stop = first.compressedOffset + limit;
    const maxGap = Math.floor(limit / 128);
    let end = first.compressedOffset + first.compressedSize;
    let prev = first;
    for (let k = p + 1; k < this.n; k++) {
      if (this.sameBatchAt(k, prev)) {
        const c = this.at(k);
        if (want(c)) out.push(c);
        continue;
      }
      const off = this.cOffAt(k);
      const cend = this.cEnd(k);
      if (off < end) break; // overlapping records: never merge across them
      if (cend > stop || off - end > maxGap) break;
      const c = this.at(k);
      if (!want(c)) break;
      out.push(c);
      end = cend;
      prev = c;
    }
    return out;
  }
}

/** `chunks` of one blob, one per index, in blob order (by compressed offset). */
export function blobOrder(chunks: readonly ChunkInfo[]): ChunkInfo[] {
  const seen = new Set<number>();
  return chunks.filter((c) => !seen.has(c.index) && (seen.add(c.index), true)).sort((a, b) => a.compressedOffset - b.compressedOffset);
}

/**
 * Split sorted, distinct chunks into runs that one request each can fetch:
 * contiguous in the blob (gaps of at most `limit/128`) and at most `limit`
 * bytes from the run's first byte, a run keeping at least one chunk.
 */
export function mergeRuns(chunks: readonly ChunkInfo[], limit: number): ChunkInfo[][] {
  const runs: ChunkInfo[][] = [];
  const maxGap = Math.floor(limit / 128);
  let cur: ChunkInfo[] = [];
  let start = 0;
  let end = 0;
  for (const c of chunks) {
    const fits = cur.length > 0 && (sameBatch(c, cur[cur.length - 1]) ||
      (c.compressedOffset >= end && c.compressedOffset - end <= maxGap && c.compressedOffset + c.compressedSize - start <= limit));
    if (!fits) {
      if (cur.length) runs.push(cur);
      cur = [];
      start = c.compressedOffset;
    }
    cur.push(c);
    end = c.compressedOffset + c.compressedSize;
  }
  if (cur.length) runs.push(cur);
  return runs;
}

/**
 * ChunkDirectory.buildAll in steps: `step(n)` takes up to n more records
 * (so a walk can run in slices between other work), `finish()` takes the
 * rest and gives the directories. Either may throw what the walk throws.
 */
export class DirectoryBuild {
  private readonly builders: DirectoryBuilder[];
  private readonly it: Iterator<ChunkInfo>;
  private done = false;

  constructor(private readonly blobs: readonly BlobInfo[], records: Iterable<ChunkInfo>) {
    this.builders = blobs.map((b) => new DirectoryBuilder(b));
    this.it = records[Symbol.iterator]();
  }

  /** Take up to `n` records; true once every record is taken. */
  step(n: number): boolean {
    const builders = this.builders;
    for (let k = 0; k < n && !this.done; k++) {
      const r = this.it.next();
      if (r.done) { this.done = true; break; }
      const c = r.value;
      if (Number.isInteger(c.blobIndex) && c.blobIndex >= 0 && c.blobIndex < builders.length) builders[c.blobIndex].add(c);
    }
    return this.done;
  }

  finish(): ChunkDirectory[] {
    while (!this.step(Infinity)) { /* the rest of the walk */ }
    return this.blobs.map((b, i) => new ChunkDirectory(b, this.builders[i]));
  }
}

/**
 * The first record of each chunk index of one blob, in arrival order, as
 * columns that grow by doubling (a hostile chunk count allocates nothing
 * up front beyond the index map, as before).
 */
export class DirectoryBuilder {
  count = 0;
  partial = false;
  /** chunk index → slot (-1: not seen) */
  readonly first: Int32Array;
  readonly odd = new Map<number, ChunkInfo>();
  idx = new Uint32Array(0);
  cOff = new Float64Array(0);
  cSize = new Uint32Array(0);
  uOff = new Float64Array(0);
  uSize = new Uint32Array(0);
  fOff = new Float64Array(0);
  flags = new Uint32Array(0);
  crc = new Uint32Array(0);
  bits = new Uint8Array(0);
  digests = new Uint8Array(0);
  bIndex = new Int32Array(0);
  bOffset = new Uint32Array(0);
  bSize = new Uint32Array(0);

  constructor(readonly info: BlobInfo) {
    this.first = new Int32Array(info.chunkCount).fill(-1);
  }

  /**
   * Take `c` (its fields are copied: the caller may reuse the object for
   * its next record; a copy of it is kept when the columns cannot hold it).
   */
  add(c: ChunkInfo): void {
    if (!Number.isInteger(c.index) || c.index < 0 || c.index >= this.info.chunkCount) return;
    if (unplaced(c)) { this.partial = true; return; }
    if (this.first[c.index] >= 0) return;
    const k = this.count++;
    if (k >= this.idx.length) this.grow(Math.min(Math.max(64, k * 2), this.info.chunkCount));
    this.first[c.index] = k;
    this.idx[k] = c.index;
    this.cOff[k] = c.compressedOffset;
    if (c.blobIndex !== this.info.blobIndex || !columnar(c)) { this.odd.set(k, copyRecord(c)); return; }
    this.cSize[k] = c.compressedSize;
    this.uOff[k] = c.uncompressedOffset;
    this.uSize[k] = c.uncompressedSize;
    this.fOff[k] = c.fileOffset;
    this.flags[k] = c.flags;
    this.crc[k] = c.crc32;
    this.digests.set(c.digest, k * DIGEST);
    const b = batchOf(c);
    this.bits[k] = (c.compressed ? 1 : 0) | (b ? 2 : 0);
    if (b) { this.bIndex[k] = b.index; this.bOffset[k] = b.offset; this.bSize[k] = b.size; } else this.bIndex[k] = -1;
  }

  /** Shrink the columns to the chunks taken (doubling leaves up to half of them unused). */
  trim(): void {
    if (this.idx.length - this.count > (this.count >> 3)) this.grow(this.count);
  }

  private grow(cap: number): void {
    for (const name of BUILDER_COLUMNS) {
      const old = this[name];
      const unit = old === this.digests ? DIGEST : 1;
      const next = new (old.constructor as new (n: number) => typeof old)(cap * unit);
      next.set((old.length > cap * unit ? old.subarray(0, cap * unit) : old) as never);
      (this as Record<typeof name, typeof old>)[name] = next;
    }
  }
}

/** A record the builder keeps as it is: its own copy (with its own digest and batch reference). */
function copyRecord(c: ChunkInfo): ChunkInfo {
  const out = { ...c, digest: Buffer.from(c.digest) };
  const b = batchOf(c);
  if (b) (out as ChunkInfo & { batch: BatchRef }).batch = { ...b };
  return out;
}

/** The builder's growable columns (all reallocated together). */
const BUILDER_COLUMNS = ['idx', 'cOff', 'cSize', 'uOff', 'uSize', 'fOff', 'flags', 'crc', 'bits', 'digests', 'bIndex', 'bOffset', 'bSize'] as const;

