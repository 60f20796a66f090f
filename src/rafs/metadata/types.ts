/**
 * The version-neutral view of a RAFS image, implemented once per on-disk
 * version (direct-v5.ts, direct-v6.ts) and chosen at load time (super.ts).
 * Storage, FUSE and the tools use only these interfaces.
 */
import type { Compressor } from '../../common/compress';
import type { DigestAlgorithm } from '../../common/digest';

import type { BlobInfo, ChunkInfo } from '../../storage/format/types';

export type { BlobInfo, ChunkInfo };

export const enum InodeType { File = 1, Dir = 2, Chr = 3, Blk = 4, Fifo = 5, Sock = 6, Symlink = 7 }

/** A directory entry as returned by readdir (no `.`/`..`). */
export interface RafsDirent {
  name: Buffer;
  ino: number;
  type: InodeType;
}

export interface RafsInode {
  /** FUSE inode number (v5: i_ino, v6: nid). */
  readonly ino: number;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly size: number;
  readonly nlink: number;
  readonly rdev: number;
  readonly mtime: number;
  readonly mtimeNsec: number;
  /** 512-byte blocks for stat. */
  readonly blocks: number;
  isDir(): boolean;
  isReg(): boolean;
  isSymlink(): boolean;
  /** Symlink target; throws EINVAL for non-symlinks. */
  readlink(): Buffer;
  /** xattrs in on-disk order (full names). */
  xattrs(): Array<[string, Buffer]>;
  /** Children sorted by name bytes, without `.`/`..`; throws ENOTDIR. */
  children(): RafsDirent[];
  /** Number of children (without `.`/`..`); throws ENOTDIR. */
  childCount(): number;
  /** Child `k` (0 ≤ k < childCount()) in name order, without building the whole list. */
  childAt(k: number): RafsDirent;
  /** Child by exact name, or undefined. */
  lookup(name: Buffer): RafsInode | undefined;
  /** Chunks in file-offset order; [] for non-regular files. */
  chunks(): ChunkInfo[];
}

export interface RafsSuperMeta {
  version: 5 | 6;
  flags: number;
  chunkSize: number;
  compressor: Compressor;
  digester: DigestAlgorithm;
  explicitUidGid: boolean;
  hasXattr: boolean;
  inodesCount: number;
  rootIno: number;
  /** raw superblock fields for inspect/API (names as upstream RafsSuperMeta) */
  raw: Record<string, number | string>;
}

export interface RafsSuper {
  readonly meta: RafsSuperMeta;
  readonly blobs: BlobInfo[];
  /** FUSE inode numbers listed in the prefetch table. */
  readonly prefetchInodes: number[];
  getInode(ino: number): RafsInode;
  root(): RafsInode;
  /** Every chunk record stored in the bootstrap (v5: collected from inodes, v6: chunk table). */
  chunkTable(): ChunkInfo[];
  /**
   * The same records as chunkTable(), one at a time (a whole-image walk that
   * keeps none of them): a record object may be reused for the next one
   * (v6), so a consumer copies what it keeps.
   */
  chunkRecords(): Iterable<ChunkInfo>;
  /** Records of the chunk table per blob index, without decoding them (v6). */
  chunkCountsByBlob?(): number[];
}

/** BlobInfo fields a blob without readahead hints, blob.meta or ToC carries. */
export function noBlobMeta(): Pick<BlobInfo, 'readaheadOffset' | 'readaheadSize' | 'metaCompressor' | 'metaOffset' | 'metaCompressedSize' | 'metaUncompressedSize' | 'tocSize' | 'tocDigest'> {
  return { readaheadOffset: 0, readaheadSize: 0, metaCompressor: 0, metaOffset: 0, metaCompressedSize: 0, metaUncompressedSize: 0, tocSize: 0, tocDigest: Buffer.alloc(32) };
}
