/**
 * The transport-agnostic filesystem interface the FUSE server dispatches to
 * (fuse-backend-rs style): async methods that return values or throw
 * ErrnoError. Inode numbers and file handles are bigint (u64 on the wire).
 * Optional methods that are absent make the server answer ENOSYS, except
 * mutating ones on a `readOnly` filesystem, which answer EROFS.
 */

export interface RequestContext {
  uid: number;
  gid: number;
  pid: number;
  unique: bigint;
  /**
   * Keep a resource (a mount, an fd) alive until this request's reply is
   * complete: `release` runs after the reply was written in full (READ data
   * included), or the error reply. Absent outside the FUSE server (direct
   * calls): the caller then releases when its call returns.
   */
  hold?: (release: () => void) => void;
}

/** fuse_attr, in host units. Times are seconds + nanoseconds. */
export interface Attr {
  ino: bigint;
  size: number;
  blocks: number;
  atime: number;
  mtime: number;
  ctime: number;
  atimeNsec: number;
  mtimeNsec: number;
  ctimeNsec: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  blksize: number;
}

export interface Entry {
  /** 0 = negative entry (cached ENOENT for entryTimeout) */
  ino: bigint;
  generation: bigint;
  attr: Attr;
  /** seconds (fractions allowed) */
  attrTimeout: number;
  entryTimeout: number;
}

export interface AttrReply {
  attr: Attr;
  timeout: number;
}

/** FOPEN_* bits for open/opendir replies. */
export const FOPEN_DIRECT_IO = 1 << 0;
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_NONSEEKABLE = 1 << 2;
export const FOPEN_CACHE_DIR = 1 << 3;

export interface OpenReply {
  fh: bigint;
  openFlags: number;
}

/**
 * A piece of READ data still in a file: the transport copies it straight
 * into the reply (pread into guest memory for virtio-fs), no staging buffer.
 * The file must hold `length` bytes at `position` (fewer is EIO), and `fd`
 * must stay open until the reply is written: a filesystem that hands out
 * slices keeps their fd alive through RequestContext.hold.
 */
export interface FileSlice {
  fd: number;
  position: number;
  length: number;
}

/** One piece of READ data: bytes in memory, or a slice of a file. */
export type ReadPiece = Buffer | FileSlice;

export interface DirEntry {
  ino: bigint;
  /** cookie that resumes the listing right after this entry */
  offset: number;
  /** DT_* (file type bits of the mode >> 12) */
  type: number;
  name: Buffer;
  /** set for READDIRPLUS; counts as a lookup when ino != 0 */
  entry?: Entry;
}

export interface StatFs {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
  frsize: number;
}

export interface SetattrIn {
  valid: number;
  fh?: bigint;
  size?: number;
  atime?: number;
  atimeNsec?: number;
  mtime?: number;
  mtimeNsec?: number;
  mode?: number;
  uid?: number;
  gid?: number;
}

export interface FileSystem {
  /** true: every mutating opcode answers EROFS */
  readonly readOnly?: boolean;

  /** kernel's offered FUSE_INIT flags in, flags this fs wants enabled out (subset) */
  init?(capable: bigint): Promise<bigint> | bigint;
  destroy?(): Promise<void> | void;

  lookup(ctx: RequestContext, parent: bigint, name: Buffer): Promise<Entry>;
  forget?(ino: bigint, nlookup: number): void;
  getattr(ctx: RequestContext, ino: bigint, fh?: bigint): Promise<AttrReply>;
  readlink?(ctx: RequestContext, ino: bigint): Promise<Buffer>;
  open?(ctx: RequestContext, ino: bigint, flags: number): Promise<OpenReply>;
  /** up to `size` bytes at `offset`; fewer at EOF. May return several pieces (gather). */
  read?(ctx: RequestContext, ino: bigint, fh: bigint, offset: number, size: number): Promise<ReadPiece[]>;
  /**
   * Optional fast path of `read` for transports that can answer without a
   * promise: the same pieces when every byte is ready now (cached and
   * verified: file slices, holes), otherwise undefined and the caller uses
   * `read`. Errors (bad inode, not a file) throw as `read` rejects. Must not
   * start any I/O it then abandons.
   */
  readSync?(ctx: RequestContext, ino: bigint, fh: bigint, offset: number, size: number): ReadPiece[] | undefined;
  release?(ctx: RequestContext, ino: bigint, fh: bigint, flags: number): Promise<void>;
  flush?(ctx: RequestContext, ino: bigint, fh: bigint): Promise<void>;
  opendir?(ctx: RequestContext, ino: bigint, flags: number): Promise<OpenReply>;
  /**
   * Emit entries after cookie `offset` through `add` until it returns false
   * (reply full). With `plus`, each entry carries `entry` and, when added with
   * ino != 0, counts as one lookup.
   */
  readdir?(ctx: RequestContext, ino: bigint, fh: bigint, offset: number, plus: boolean, add: (e: DirEntry) => boolean): Promise<void>;
  releasedir?(ctx: RequestContext, ino: bigint, fh: bigint): Promise<void>;
  statfs?(ctx: RequestContext, ino: bigint): Promise<StatFs>;
  /** full value; the server applies the size/ERANGE protocol. ENODATA if absent */
  getxattr?(ctx: RequestContext, ino: bigint, name: Buffer): Promise<Buffer>;
  /** names without NULs; the server joins them and applies the size protocol */
  listxattr?(ctx: RequestContext, ino: bigint): Promise<Buffer[]>;
  access?(ctx: RequestContext, ino: bigint, mask: number): Promise<void>;
  lseek?(ctx: RequestContext, ino: bigint, fh: bigint, offset: number, whence: number): Promise<number>;
  fsync?(ctx: RequestContext, ino: bigint, fh: bigint, datasync: boolean): Promise<void>;
  fsyncdir?(ctx: RequestContext, ino: bigint, fh: bigint, datasync: boolean): Promise<void>;
  syncfs?(ctx: RequestContext, ino: bigint): Promise<void>;

  // mutating operations (passthrough); absent on read-only filesystems
  setattr?(ctx: RequestContext, ino: bigint, attr: SetattrIn): Promise<AttrReply>;
  mknod?(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, rdev: number, umask: number): Promise<Entry>;
  mkdir?(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, umask: number): Promise<Entry>;
  unlink?(ctx: RequestContext, parent: bigint, name: Buffer): Promise<void>;
  rmdir?(ctx: RequestContext, parent: bigint, name: Buffer): Promise<void>;
  symlink?(ctx: RequestContext, parent: bigint, name: Buffer, target: Buffer): Promise<Entry>;
  rename?(ctx: RequestContext, parent: bigint, name: Buffer, newParent: bigint, newName: Buffer, flags: number): Promise<void>;
  link?(ctx: RequestContext, ino: bigint, newParent: bigint, newName: Buffer): Promise<Entry>;
  create?(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, flags: number, umask: number): Promise<{ entry: Entry; open: OpenReply }>;
  write?(ctx: RequestContext, ino: bigint, fh: bigint, offset: number, data: Buffer, flags: number): Promise<number>;
  setxattr?(ctx: RequestContext, ino: bigint, name: Buffer, value: Buffer, flags: number): Promise<void>;
  removexattr?(ctx: RequestContext, ino: bigint, name: Buffer): Promise<void>;
  fallocate?(ctx: RequestContext, ino: bigint, fh: bigint, mode: number, offset: number, length: number): Promise<void>;
}
