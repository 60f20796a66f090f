/**
 * A blob's chunks in the order they sit in the blob (by compressed offset),
 * for merging backend requests: a miss on one chunk fetches its not-yet-cached
 * neighbours in the same request (upstream's region extension with blob.meta,
 * storage-backends §5 "Backend region"), and prefetch merges its chunk lists
 * into ranges (§6). Built once per blob from the image's chunk records
 * (duplicates by index dropped; records whose index is out of range ignored).
 * Members of one batch (batch.ts) share one compressed range: a request for
 * one brings the others.
 */
import type { BlobInfo, ChunkInfo } from '../format/types';
import { sameBatch, unplaced } from './batch';

export class ChunkDirectory {
  /** chunks sorted by compressed offset */
  private readonly sorted: ChunkInfo[];
  /** chunk index → position in `sorted` (-1 when unknown) */
  private readonly pos: Int32Array;

  /** some records could not be placed (batch members listed before their blob.meta loaded) */
  readonly partial: boolean = false;

  constructor(readonly info: BlobInfo, chunks: Iterable<ChunkInfo>) {
    const byIndex = new Map<number, ChunkInfo>();
    for (const c of chunks) {
      if (!Number.isInteger(c.index) || c.index < 0 || c.index >= info.chunkCount) continue;
      if (unplaced(c)) { this.partial = true; continue; }
      if (!byIndex.has(c.index)) byIndex.set(c.index, c);
    }
    this.sorted = [...byIndex.values()].sort((a, b) => a.compressedOffset - b.compressedOffset || a.index - b.index);
    this.pos = new Int32Array(info.chunkCount).fill(-1);
    this.sorted.forEach((c, i) => { this.pos[c.index] = i; });
  }

  get size(): number {
    return this.sorted.length;
  }

  /** Chunk with blob index `index`, if the image refers to it. */
  get(index: number): ChunkInfo | undefined {
    const p = Number.isInteger(index) && index >= 0 && index < this.pos.length ? this.pos[index] : -1;
    return p >= 0 ? this.sorted[p] : undefined;
  }

  /** Every chunk, in blob order. */
  all(): readonly ChunkInfo[] {
    return this.sorted;
  }

  /**
   * The run of chunks starting at `first` that one backend request should
   * fetch: following chunks in blob order while each ends within `limit`
   * bytes of `first`'s compressed offset, leaves a gap of at most `limit/128`
   * bytes to its predecessor, and `want(c)` (not cached, not being fetched).
   */
  region(first: ChunkInfo, limit: number, want: (c: ChunkInfo) => boolean): ChunkInfo[] {
    const out = [first];
    const p = Number.isInteger(first.index) && first.index >= 0 && first.index < this.pos.length ? this.pos[first.index] : -1;
    if (p < 0) return out;
    const d = this.sorted[p];
    // a caller's record that disagrees with the directory is fetched alone
    if (d.compressedOffset !== first.compressedOffset || d.compressedSize !== first.compressedSize) return out;
    // the other members of first's batch (on either side of it) come with the same request
    for (let k = p - 1; k >= 0 && sameBatch(this.sorted[k], first); k--) if (want(this.sorted[k])) out.push(this.sorted[k]);
    const stop = first.compressedOffset + limit;
    const maxGap = Math.floor(limit / 128);
    let end = first.compressedOffset + first.compressedSize;
    let prev = first;
    for (let k = p + 1; k < this.sorted.length; k++) {
      const c = this.sorted[k];
      if (sameBatch(c, prev)) {
        if (want(c)) out.push(c);
        continue;
      }
      if (c.compressedOffset < end) break; // overlapping records: never merge across them
      if (c.compressedOffset + c.compressedSize > stop || c.compressedOffset - end > maxGap) break;
      if (!want(c)) break;
      out.push(c);
      end = c.compressedOffset + c.compressedSize;
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
