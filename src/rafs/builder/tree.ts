/**
 * The builder's in-memory filesystem tree, shared by every source (directory,
 * tar, merged bootstraps) and every bootstrap writer (v5, v6).
 *
 * An inode (metadata + data) may be reached through several entries
 * (hardlinks). Directory children are kept sorted by raw name bytes.
 */
import type { ChunkInfo } from '../metadata/types';

import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../../common/mode';

export { S_IFMT, S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK } from '../../common/mode';

export class BuildInode {
  mode = S_IFDIR | 0o755;
  uid = 0;
  gid = 0;
  mtime = 0;
  mtimeNsec = 0;
  /** st_rdev as Linux new_encode_dev for device nodes, else 0 */
  rdev = 0;
  /** file size (regular), target length (symlink); dirs are sized by the writers */
  size = 0;
  symlink?: Buffer;
  /** xattrs sorted by name for deterministic output */
  xattrs: Array<[string, Buffer]> = [];
  /** regular files: chunks in file order (filled by the blob writer or a bootstrap loader) */
  chunks: ChunkInfo[] = [];
  /** directories: entries sorted by name bytes */
  children: BuildEntry[] = [];
  /** number of entries referencing this inode (hardlinks), set by `finalizeTree` */
  linkCount = 0;
  /** source of file bytes for the blob writer (absent for merged trees) */
  source?: DataSource;

  constructor(init?: Partial<BuildInode>) { Object.assign(this, init); }
  isDir(): boolean { return (this.mode & S_IFMT) === S_IFDIR; }
  isReg(): boolean { return (this.mode & S_IFMT) === S_IFREG; }
  isSymlink(): boolean { return (this.mode & S_IFMT) === S_IFLNK; }
}

export interface BuildEntry {
  name: Buffer;
  inode: BuildInode;
}

/** Where the bytes of a regular file come from, read in chunk-size pieces. */
export interface DataSource {
  /** read `len` bytes at `off` of this file */
  read(off: number, len: number): Buffer;
  /** release any file descriptor held; read() may reopen */
  close?(): void;
  /**
   * where the bytes are, for the chunk workers (chunk-pipeline.ts), which
   * read them themselves: a file they open, or an fd they pread (at `base`)
   */
  readonly location?: { path?: string; fd?: number; base: number };
}

export function compareNames(a: Buffer, b: Buffer): number {
  return Buffer.compare(a, b);
}

/** Sort a directory's entries by name (a no-op, without sorting, when they already are: walks add them in order). */
export function sortChildren(dir: BuildInode): void {
  const c = dir.children;
  for (let i = 1; i < c.length; i++) {
    if (compareNames(c[i - 1].name, c[i].name) > 0) {
      c.sort((a, b) => compareNames(a.name, b.name));
      return;
    }
  }
}

/**
 * Walk entries depth first, parents before children, children in name order.
 * `visit` gets the entry and its parent inode.
 */
export function walkTree(root: BuildInode, visit: (e: BuildEntry, parent: BuildInode) => void): void {
  const rec = (dir: BuildInode) => {
    for (const e of dir.children) {
      visit(e, dir);
      if (e.inode.isDir()) rec(e.inode);
    }
  };
  rec(root);
}

/** Sort every directory and recount hardlinks; call once a tree is complete. */
export function finalizeTree(root: BuildInode): void {
  const seen = new Set<BuildInode>();
  root.linkCount = 1;
  sortChildren(root);
  walkTree(root, (e) => {
    if (!seen.has(e.inode)) { seen.add(e.inode); e.inode.linkCount = 0; }
    e.inode.linkCount++;
    if (e.inode.isDir()) sortChildren(e.inode);
  });
}

/** nlink as RAFS stores it: dirs 2 + #subdirs, others the hardlink count. */
export function nlinkOf(inode: BuildInode): number {
  if (inode.isDir()) return 2 + inode.children.filter((c) => c.inode.isDir()).length;
  return Math.max(1, inode.linkCount);
}
