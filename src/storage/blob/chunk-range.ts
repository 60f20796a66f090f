/**
 * The one walk over a file's chunk list (sorted by fileOffset, possibly with
 * holes between chunks): which chunk bytes, or which hole, make up the file
 * range [off, end). The daemon's READ, the tools' readFile, SEEK_DATA /
 * SEEK_HOLE and readahead all use it, so they agree on every edge.
 */
import type { ChunkInfo } from '../format/types';

/** Bytes [from, to) of chunk `index` (offsets inside the chunk's uncompressed data). */
export interface ChunkSpan {
  kind: 'chunk';
  index: number;
  chunk: ChunkInfo;
  from: number;
  to: number;
  /** file offset of the span's first byte */
  fileOffset: number;
}

/** A range covered by no chunk: reads as zeros. */
export interface HoleSpan {
  kind: 'hole';
  fileOffset: number;
  length: number;
}

export type FileSpan = ChunkSpan | HoleSpan;

/** Index of the first chunk ending after `off` (chunks.length when none). */
export function firstChunkAfter(chunks: readonly ChunkInfo[], off: number): number {
  let lo = 0;
  let hi = chunks.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (chunks[mid].fileOffset + chunks[mid].uncompressedSize <= off) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The spans of [off, end), in file order, covering it exactly. */
export function* fileSpans(chunks: readonly ChunkInfo[], off: number, end: number): Generator<FileSpan> {
  let pos = off;
  for (let k = firstChunkAfter(chunks, off); k < chunks.length && pos < end; k++) {
    const c = chunks[k];
    if (c.fileOffset >= end) break;
    if (c.fileOffset > pos) {
      yield { kind: 'hole', fileOffset: pos, length: c.fileOffset - pos };
      pos = c.fileOffset;
    }
    const from = pos - c.fileOffset;
    const to = Math.min(end, c.fileOffset + c.uncompressedSize) - c.fileOffset;
    if (to > from) yield { kind: 'chunk', index: k, chunk: c, from, to, fileOffset: pos };
    pos = c.fileOffset + to;
  }
  if (pos < end) yield { kind: 'hole', fileOffset: pos, length: end - pos };
}
