/**
 * The *at syscalls the passthrough filesystem needs, bound through koffi
 * (libc.ts style). Every wrapper throws ErrnoError carrying the C errno of
 * the failing call; nothing is rebuilt from messages.
 *
 * Names and paths are passed as NUL-terminated byte buffers (`cpath`), so
 * file names that are not valid UTF-8 reach the kernel byte for byte.
 * All calls here are synchronous (they run on the event-loop thread); calls
 * that can block for long are not here: open of a file for I/O, read and
 * write go through Node's thread pool, and syncfs, fsync, fallocate,
 * SEEK_DATA/SEEK_HOLE, truncate/ftruncate, opens with O_TRUNC, closes that
 * may free an inode and unlinkat/renameat2 calls that may (see
 * passthrough-fs.ts "Blocking") through the blocking-call pool
 * (common/blocking.ts). unlinkat and renameat2 stay here for the calls that
 * provably free nothing.
 */
import koffi from 'koffi';
import { constants } from 'node:os';
import { errnoError, lastErrno } from '../../common/libc';

const lib = koffi.load('libc.so.6');

const c = {
  openat: lib.func('int openat(int dirfd, const uint8_t *path, int flags, uint32_t mode)'),
  close: lib.func('int close(int fd)'),
  dup: lib.func('int dup(int fd)'),
  statx: lib.func('int statx(int dirfd, const uint8_t *path, int flags, uint32_t mask, _Out_ uint8_t *buf)'),
  mkdirat: lib.func('int mkdirat(int dirfd, const uint8_t *path, uint32_t mode)'),
  mknodat: lib.func('int mknodat(int dirfd, const uint8_t *path, uint32_t mode, uint64_t dev)'),
  symlinkat: lib.func('int symlinkat(const uint8_t *target, int dirfd, const uint8_t *path)'),
  linkat: lib.func('int linkat(int olddirfd, const uint8_t *oldpath, int newdirfd, const uint8_t *newpath, int flags)'),
  unlinkat: lib.func('int unlinkat(int dirfd, const uint8_t *path, int flags)'),
  renameat2: lib.func('int renameat2(int olddirfd, const uint8_t *oldpath, int newdirfd, const uint8_t *newpath, uint32_t flags)'),
  readlinkat: lib.func('intptr_t readlinkat(int dirfd, const uint8_t *path, _Out_ uint8_t *buf, size_t size)'),
  fchownat: lib.func('int fchownat(int dirfd, const uint8_t *path, uint32_t uid, uint32_t gid, int flags)'),
  fchown: lib.func('int fchown(int fd, uint32_t uid, uint32_t gid)'),
  fchmod: lib.func('int fchmod(int fd, uint32_t mode)'),
  chmod: lib.func('int chmod(const uint8_t *path, uint32_t mode)'),
  utimensat: lib.func('int utimensat(int dirfd, const uint8_t *path, const int64_t *times, int flags)'),
  futimens: lib.func('int futimens(int fd, const int64_t *times)'),
  getxattr: lib.func('intptr_t getxattr(const uint8_t *path, const uint8_t *name, _Out_ uint8_t *value, size_t size)'),
  setxattr: lib.func('int setxattr(const uint8_t *path, const uint8_t *name, const uint8_t *value, size_t size, int flags)'),
  listxattr: lib.func('intptr_t listxattr(const uint8_t *path, _Out_ uint8_t *list, size_t size)'),
  removexattr: lib.func('int removexattr(const uint8_t *path, const uint8_t *name)'),
  lseek: lib.func('int64_t lseek(int fd, int64_t offset, int whence)'),
  fstatfs: lib.func('int fstatfs(int fd, _Out_ uint8_t *buf)'),
  getdents64: lib.func('intptr_t getdents64(int fd, _Out_ uint8_t *buf, size_t size)'),
  fcntl: lib.func('int fcntl(int fd, int cmd, ...)'),
};

export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_REMOVEDIR = 0x200;
export const AT_SYMLINK_FOLLOW = 0x400;
export const AT_EMPTY_PATH = 0x1000;
export const AT_STATX_SYNC_AS_STAT = 0;

export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_ACCMODE = 3;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NOCTTY = 0o400;
export const O_TRUNC = 0o1000;
export const O_APPEND = 0o2000;
export const O_NONBLOCK = 0o4000;
export const O_DIRECTORY = 0o200000;
export const O_NOFOLLOW = 0o400000;
export const O_CLOEXEC = 0o2000000;
export const O_PATH = 0o10000000;
export const O_TMPFILE = 0o20000000 | O_DIRECTORY;

export { S_IFMT, S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK, S_ISUID, S_ISGID } from '../../common/mode';

export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;

export { errnoError };

function fail(call: string): never {
  throw errnoError(lastErrno(), call);
}

/** NUL-terminated copy of a name or path (bytes kept exactly). */
export function cpath(p: Buffer | string): Buffer {
  const b = typeof p === 'string' ? Buffer.from(p) : p;
  const out = Buffer.allocUnsafe(b.length + 1);
  b.copy(out, 0);
  out[b.length] = 0;
  return out;
}

const EMPTY = cpath('');

/** "/proc/self/fd/N": the magic link that reaches fd N's inode without any path walk. */
export function procPath(fd: number): Buffer {
  return cpath(`/proc/self/fd/${fd}`);
}

// ---- fds ---------------------------------------------------------------------

export function openat(dirfd: number, name: Buffer, flags: number, mode = 0): number {
  const fd = c.openat(dirfd, cpath(name), flags | O_CLOEXEC, mode) as number;
  if (fd < 0) fail('openat');
  return fd;
}

export function close(fd: number): void {
  c.close(fd); // errors from close are not actionable (the fd is gone either way)
}

const F_GETFL = 3;
const F_SETFL = 4;

/** Clear O_NONBLOCK from an open file's status flags. */
export function clearNonblock(fd: number): void {
  const fl = c.fcntl(fd, F_GETFL) as number;
  if (fl < 0) fail('fcntl');
  if (fl & O_NONBLOCK && (c.fcntl(fd, F_SETFL, 'int', fl & ~O_NONBLOCK) as number) < 0) fail('fcntl');
}

export function dup(fd: number): number {
  const r = c.dup(fd) as number;
  if (r < 0) fail('dup');
  return r;
}

// ---- stat --------------------------------------------------------------------

export interface Statx {
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  ino: bigint;
  size: number;
  blocks: number;
  blksize: number;
  atime: number;
  atimeNsec: number;
  mtime: number;
  mtimeNsec: number;
  ctime: number;
  ctimeNsec: number;
  /** rdev in Linux new_encode_dev form (the FUSE wire form) */
  rdev: number;
  /** st_dev as "major:minor" (a map key) */
  dev: string;
}

const STATX_BASIC_STATS = 0x7ff;
const statxBuf = Buffer.alloc(256);

function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

/** statx(2) without following a final symlink; `name` empty = the fd itself. */
export function statxAt(dirfd: number, name: Buffer | null): Statx {
  const st = statxAtOrNull(dirfd, name);
  if (st === null) throw errnoError(constants.errno.ENOENT, 'statx');
  return st;
}

/** statxAt, but null (no exception built) when the name does not exist. */
export function statxAtOrNull(dirfd: number, name: Buffer | null): Statx | null {
  const flags = AT_SYMLINK_NOFOLLOW | (name === null ? AT_EMPTY_PATH : 0);
  const b = statxBuf;
  if ((c.statx(dirfd, name === null ? EMPTY : cpath(name), flags, STATX_BASIC_STATS, b) as number) < 0) {
    const e = lastErrno();
    if (e === constants.errno.ENOENT) return null;
    throw errnoError(e, 'statx');
  }
  return {
    blksize: b.readUInt32LE(4),
    nlink: b.readUInt32LE(16),
    uid: b.readUInt32LE(20),
    gid: b.readUInt32LE(24),
    mode: b.readUInt16LE(28),
    ino: b.readBigUInt64LE(32),
    size: Number(b.readBigUInt64LE(40)),
    blocks: Number(b.readBigUInt64LE(48)),
    atime: Number(b.readBigInt64LE(64)),
    atimeNsec: b.readUInt32LE(72),
    ctime: Number(b.readBigInt64LE(96)),
    ctimeNsec: b.readUInt32LE(104),
    mtime: Number(b.readBigInt64LE(112)),
    mtimeNsec: b.readUInt32LE(120),
    rdev: encodeDev(b.readUInt32LE(128), b.readUInt32LE(132)),
    dev: `${b.readUInt32LE(136)}:${b.readUInt32LE(140)}`,
  };
}

export function fstatx(fd: number): Statx {
  return statxAt(fd, null);
}

// ---- namespace operations ---------------------------------------------------

export function mkdirat(dirfd: number, name: Buffer, mode: number): void {
  if ((c.mkdirat(dirfd, cpath(name), mode) as number) < 0) fail('mkdirat');
}

/** mknodat(2); `rdev` in Linux new_encode_dev form (as FUSE sends it). */
export function mknodat(dirfd: number, name: Buffer, mode: number, rdev: number): void {
  const major = (rdev >>> 8) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  // glibc makedev
  const dev = (BigInt(major & 0xfff) << 8n) | BigInt(minor & 0xff) | (BigInt(minor >>> 8) << 20n) | (BigInt(major >>> 12) << 32n);
  if ((c.mknodat(dirfd, cpath(name), mode, dev) as number) < 0) fail('mknodat');
}

export function symlinkat(target: Buffer, dirfd: number, name: Buffer): void {
  if ((c.symlinkat(cpath(target), dirfd, cpath(name)) as number) < 0) fail('symlinkat');
}

/**
 * A new name `newName` in `newDirfd` for the inode behind the O_PATH fd `fd`.
 * linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; without it fall back to
 * following the /proc/self/fd magic link (what virtiofsd does).
 */
export function linkFd(fd: number, newDirfd: number, newName: Buffer): void {
  const nn = cpath(newName);
  if ((c.linkat(fd, EMPTY, newDirfd, nn, AT_EMPTY_PATH) as number) >= 0) return;
  const e = lastErrno();
  if (e !== constants.errno.ENOENT && e !== constants.errno.EPERM) throw errnoError(e, 'linkat');
  if ((c.linkat(AT_FDCWD, procPath(fd), newDirfd, nn, AT_SYMLINK_FOLLOW) as number) < 0) fail('linkat');
}

export function unlinkat(dirfd: number, name: Buffer, flags: number): void {
  if ((c.unlinkat(dirfd, cpath(name), flags) as number) < 0) fail('unlinkat');
}

export function renameat2(olddirfd: number, oldName: Buffer, newdirfd: number, newName: Buffer, flags: number): void {
  if ((c.renameat2(olddirfd, cpath(oldName), newdirfd, cpath(newName), flags >>> 0) as number) < 0) fail('renameat2');
}

/** Target of the symlink behind an O_PATH fd, verbatim. */
export function readlinkFd(fd: number): Buffer {
  for (let size = 4096; ; size *= 4) {
    const buf = Buffer.alloc(size);
    const n = Number(c.readlinkat(fd, EMPTY, buf, size));
    if (n < 0) fail('readlinkat');
    if (n < size) return buf.subarray(0, n);
  }
}

// ---- attributes --------------------------------------------------------------

/** chown of the inode behind an fd (O_PATH allowed; a symlink itself is changed). -1 = keep. */
export function fchownFd(fd: number, uid: number, gid: number): void {
  if ((c.fchownat(fd, EMPTY, uid >>> 0, gid >>> 0, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) as number) < 0) fail('fchownat');
}

export function fchmod(fd: number, mode: number): void {
  if ((c.fchmod(fd, mode) as number) < 0) fail('fchmod');
}

/** chmod of the inode behind an O_PATH fd via its magic link (no path walk). */
export function chmodFd(fd: number, mode: number): void {
  if ((c.chmod(procPath(fd), mode) as number) < 0) fail('chmod');
}

/** Times as [atimeSec, atimeNsec, mtimeSec, mtimeNsec] (nsec may be UTIME_NOW/UTIME_OMIT). */
export type Timespecs = [number, number, number, number];

export function futimens(fd: number, t: Timespecs): void {
  if ((c.futimens(fd, BigInt64Array.from(t.map(BigInt)) as unknown as number[]) as number) < 0) fail('futimens');
}

/** utimensat on the inode behind an O_PATH fd (symlinks: the link itself). */
export function utimensFd(fd: number, t: Timespecs, isSymlink: boolean): void {
  const times = BigInt64Array.from(t.map(BigInt)) as unknown as number[];
  const r = isSymlink
    ? (c.utimensat(fd, EMPTY, times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) as number)
    : (c.utimensat(AT_FDCWD, procPath(fd), times, 0) as number);
  if (r < 0) fail('utimensat');
}

// ---- xattrs (through the magic link: works for symlinks and special files) ----

export function getxattrFd(fd: number, name: Buffer): Buffer {
  const p = procPath(fd);
  const n = cpath(name);
  for (;;) {
    const size = Number(c.getxattr(p, n, null, 0));
    if (size < 0) fail('getxattr');
    if (size === 0) return Buffer.alloc(0);
    const buf = Buffer.alloc(size);
    const m = Number(c.getxattr(p, n, buf, size));
    if (m < 0) {
      if (lastErrno() === constants.errno.ERANGE) continue; // grew meanwhile
      fail('getxattr');
    }
    return buf.subarray(0, m);
  }
}

export function setxattrFd(fd: number, name: Buffer, value: Buffer, flags: number): void {
  if ((c.setxattr(procPath(fd), cpath(name), value, value.length, flags) as number) < 0) fail('setxattr');
}

export function listxattrFd(fd: number): Buffer[] {
  const p = procPath(fd);
  for (;;) {
    const size = Number(c.listxattr(p, null, 0));
    if (size < 0) fail('listxattr');
    if (size === 0) return [];
    const buf = Buffer.alloc(size);
    const m = Number(c.listxattr(p, buf, size));
    if (m < 0) {
      if (lastErrno() === constants.errno.ERANGE) continue;
      fail('listxattr');
    }
    const out: Buffer[] = [];
    let s = 0;
    for (let i = 0; i < m; i++) {
      if (buf[i] === 0) {
        if (i > s) out.push(Buffer.from(buf.subarray(s, i)));
        s = i + 1;
      }
    }
    if (s < m) out.push(Buffer.from(buf.subarray(s, m)));
    return out;
  }
}

export function removexattrFd(fd: number, name: Buffer): void {
  if ((c.removexattr(procPath(fd), cpath(name)) as number) < 0) fail('removexattr');
}

// ---- file data ---------------------------------------------------------------

export function lseek(fd: number, offset: number | bigint, whence: number): bigint {
  const r = BigInt(c.lseek(fd, offset, whence) as number | bigint);
  if (r < 0n) fail('lseek');
  return r;
}

export interface HostStatfs {
  type: number;
  bsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namelen: number;
  frsize: number;
}

/** fstatfs(2) (64-bit struct statfs layout: x86_64, aarch64). O_PATH fds are accepted. */
export function fstatfs(fd: number): HostStatfs {
  const b = Buffer.alloc(120);
  if ((c.fstatfs(fd, b) as number) < 0) fail('fstatfs');
  const u = (o: number) => Number(b.readBigUInt64LE(o));
  return { type: u(0), bsize: u(8), blocks: u(16), bfree: u(24), bavail: u(32), files: u(40), ffree: u(48), namelen: u(64), frsize: u(72) };
}

export interface RawDirent {
  ino: bigint;
  /** kernel cookie of the position right after this entry */
  off: bigint;
  type: number;
  name: Buffer;
}

/** One getdents64(2) batch from the fd's current position; [] at the end. */
export function getdents64(fd: number, size = 32768): RawDirent[] {
  const buf = Buffer.alloc(size);
  const n = Number(c.getdents64(fd, buf, size));
  if (n < 0) fail('getdents64');
  const out: RawDirent[] = [];
  for (let p = 0; p < n; ) {
    const reclen = buf.readUInt16LE(p + 16);
    const nameStart = p + 19;
    let end = buf.indexOf(0, nameStart);
    if (end < 0 || end > p + reclen) end = p + reclen;
    out.push({ ino: buf.readBigUInt64LE(p), off: buf.readBigInt64LE(p + 8), type: buf[p + 18], name: Buffer.from(buf.subarray(nameStart, end)) });
    p += reclen;
  }
  return out;
}
