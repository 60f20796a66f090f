/**
 * The few libc calls Node lacks (xattrs, mknod), bound through koffi.
 * Each wrapper throws ErrnoError with the C errno on failure.
 */
import koffi from 'koffi';
import { ErrnoError } from './errno';
import { constants } from 'node:os';

const lib = koffi.load('libc.so.6');
const errnoLoc = lib.func('int *__errno_location(void)');
const c = {
  llistxattr: lib.func('intptr_t llistxattr(const char *path, _Out_ uint8_t *list, size_t size)'),
  lgetxattr: lib.func('intptr_t lgetxattr(const char *path, const char *name, _Out_ uint8_t *value, size_t size)'),
  lsetxattr: lib.func('int lsetxattr(const char *path, const char *name, const uint8_t *value, size_t size, int flags)'),
  mknod: lib.func('int mknod(const char *path, uint32_t mode, uint64_t dev)'),
  utimensat: lib.func('int utimensat(int dirfd, const char *path, const int64_t *times, int flags)'),
  mount: lib.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)'),
  umount2: lib.func('int umount2(const char *target, int flags)'),
  mallopt: lib.func('int mallopt(int param, int value)'),
  malloc_trim: lib.func('int malloc_trim(size_t pad)'),
  read: lib.func('intptr_t read(int fd, _Out_ uint8_t *buf, size_t count)'),
  // memset(p, 0, 0) returns p: the address of a buffer's memory
  addressOf: lib.func('uintptr_t memset(void *s, int c, size_t n)'),
  mmap: lib.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, intptr_t off)'),
  munmap: lib.func('int munmap(void *addr, size_t len)'),
  madvise: lib.func('int madvise(void *addr, size_t len, int advice)'),
  preadv2: lib.func('intptr_t preadv2(int fd, const uint8_t *iov, int iovcnt, int64_t off, int flags)'),
};
const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;

const ERRNO_NAMES = new Map<number, string>();
for (const [k, v] of Object.entries(constants.errno)) if (!ERRNO_NAMES.has(v)) ERRNO_NAMES.set(v, k);

/** The calling thread's errno, right after a failed koffi call. */
export const lastErrno = (): number => koffi.decode(errnoLoc(), 'int') as number;

/** ErrnoError carrying a C errno. */
export function errnoError(errno: number, what: string): ErrnoError {
  const code = ERRNO_NAMES.get(errno) ?? 'EIO';
  return new ErrnoError(code, `${what}: ${code}`);
}

function fail(call: string, path: string): never {
  throw errnoError(lastErrno(), `${call}(${path})`);
}

/** Names of a path's xattrs (not following symlinks). */
export function listXattrs(path: string): string[] {
  for (;;) {
    const n = Number(c.llistxattr(path, null, 0));
    if (n < 0) fail('llistxattr', path);
    if (n === 0) return [];
    const buf = Buffer.alloc(n);
    const m = Number(c.llistxattr(path, buf, n));
    if (m < 0) { if (lastErrno() === constants.errno.ERANGE) continue; fail('llistxattr', path); }
    return buf.subarray(0, m).toString('latin1').split('\0').filter((s) => s.length > 0).map((s) => Buffer.from(s, 'latin1').toString());
  }
}

export function getXattr(path: string, name: string): Buffer {
  for (;;) {
    const n = Number(c.lgetxattr(path, name, null, 0));
    if (n < 0) fail('lgetxattr', path);
    const buf = Buffer.alloc(n);
    const m = n === 0 ? 0 : Number(c.lgetxattr(path, name, buf, n));
    if (m < 0) { if (lastErrno() === constants.errno.ERANGE) continue; fail('lgetxattr', path); }
    return buf.subarray(0, m);
  }
}

export function setXattr(path: string, name: string, value: Buffer): void {
  if (c.lsetxattr(path, name, value, value.length, 0) < 0) fail('lsetxattr', path);
}

/** mknod(2); `dev` in Linux new_encode_dev form. */
export function mknod(path: string, mode: number, dev: number): void {
  const major = (dev >>> 8) & 0xfff;
  const minor = (dev & 0xff) | ((dev >>> 12) & 0xfff00);
  // glibc makedev: (major & 0xfff) << 8 | (minor & 0xff) | (minor & ~0xff) << 12 ...
  const gdev = (BigInt(major & 0xfff) << 8n) | BigInt(minor & 0xff) | (BigInt(minor >>> 8) << 20n) | (BigInt(major >>> 12) << 32n);
  if (c.mknod(path, mode, gdev) < 0) fail('mknod', path);
}

/** Linux new_encode_dev(major, minor), the 32-bit rdev RAFS stores. */
export function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

export function devMajor(dev: number): number { return (dev >>> 8) & 0xfff; }
export function devMinor(dev: number): number { return (dev & 0xff) | ((dev >>> 12) & 0xfff00); }

/** glibc dev_t (what fs.Stats.rdev holds) to Linux new_encode_dev. */
export function encodeDevFromStat(rdev: number): number {
  const d = BigInt(rdev);
  const major = Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn));
  const minor = Number((d & 0xffn) | ((d >> 12n) & ~0xffn));
  return encodeDev(major, minor);
}

/** Set atime and mtime to exactly (sec, nsec) without following symlinks. */
export function lutimes(path: string, sec: number, nsec: number): void {
  const t = new BigInt64Array([BigInt(sec), BigInt(nsec), BigInt(sec), BigInt(nsec)]);
  if (c.utimensat(AT_FDCWD, path, t as unknown as number[], AT_SYMLINK_NOFOLLOW) < 0) fail('utimensat', path);
}

export const MS_RDONLY = 1;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_NOEXEC = 8;
export const MS_SYNCHRONOUS = 16;
export const MS_MANDLOCK = 64;
export const MS_DIRSYNC = 128;
export const MS_NOSYMFOLLOW = 256;
export const MS_NOATIME = 1024;
export const MS_NODIRATIME = 2048;
export const MS_SILENT = 32768;
export const MS_RELATIME = 1 << 21;
export const MS_I_VERSION = 1 << 23;
export const MS_STRICTATIME = 1 << 24;
export const MS_LAZYTIME = 1 << 25;
export const MNT_DETACH = 2;

/** mount(2). */
export function mount(source: string, target: string, fstype: string, flags: number, data: string): void {
  if (c.mount(source, target, fstype, flags, data) < 0) fail('mount', target);
}

/** umount2(2). */
export function umount2(target: string, flags: number): void {
  if (c.umount2(target, flags) < 0) fail('umount2', target);
}

const M_TRIM_THRESHOLD = -1;
const M_MMAP_THRESHOLD = -3;
const M_ARENA_MAX = -8;

/**
 * malloc settings for a daemon that moves chunk buffers (128 KiB - 16 MiB)
 * through its heap all the time: buffers up to `mmapMax` come from the
 * arenas instead of mmap(2) (each mmap'd buffer is faulted in and zeroed
 * page by page, then unmapped again: about a tenth of a sequential read's
 * CPU), and up to `trim` bytes freed at a heap top are kept for the next
 * buffers rather than given back at once. Best effort (glibc only).
 */
export function tuneMalloc(mmapMax: number, trim: number, arenas?: number): boolean {
  try {
    const ok = c.mallopt(M_MMAP_THRESHOLD, mmapMax) === 1 && c.mallopt(M_TRIM_THRESHOLD, trim) === 1;
    // threads that have not allocated yet share the first `arenas` (each other one is a 64 MiB heap)
    return ok && (arenas === undefined || c.mallopt(M_ARENA_MAX, arenas) === 1);
  } catch {
    return false;
  }
}

/**
 * malloc_trim(0): give the free pages of every malloc arena back to the
 * kernel (the heap top and the holes inside). Takes each arena's lock while
 * it walks it (a few milliseconds for a 100 MB heap). Best effort (glibc).
 */
export function trimMalloc(): boolean {
  try {
    return c.malloc_trim(0) === 1;
  } catch {
    return false;
  }
}

/**
 * read(2) into `buf`: the byte count, or -errno. For non-blocking fds read
 * until EAGAIN on a hot path (/dev/fuse): fs.readSync reports EAGAIN by
 * throwing an Error, about ten times the cost of the system call itself.
 */
export function readFd(fd: number, buf: Buffer): number {
  const n = Number(c.read(fd, buf, buf.length));
  return n >= 0 ? n : -lastErrno();
}


const PROT_READ = 1;
const MAP_PRIVATE = 2;
const MADV_DONTNEED = 4;
const MAP_FAILED = 2n ** 64n - 1n;

/** Read-only file mappings handed out by mapFile: their address and length, by backing ArrayBuffer. */
const mappings = new WeakMap<ArrayBufferLike, { addr: unknown; len: number }>();
/** A mapping goes once nothing refers to its memory any more (no view of it can be read after). */
const unmapper = new FinalizationRegistry<{ addr: unknown; len: number }>((m) => { c.munmap(m.addr, m.len); });

/**
 * The first `len` bytes of file `fd` mapped read-only (MAP_PRIVATE), as a
 * Buffer over the mapping: pages are read in when first touched and count
 * in the process's RSS only while mapped in (dropMappedPages). The mapping
 * outlives the fd and is unmapped when the Buffer and every view of it are
 * garbage. As with any mapping, a file truncated under it makes the pages
 * past the new end fault (SIGBUS): callers map files that are not rewritten
 * in place (bootstraps). Throws ErrnoError when mmap(2) fails.
 */
export function mapFile(fd: number, len: number): Buffer {
  if (!Number.isSafeInteger(len) || len <= 0) throw new ErrnoError('EINVAL', `mmap of ${len} bytes`);
  const addr = c.mmap(null, len, PROT_READ, MAP_PRIVATE, fd, 0);
  if (addr === null || addr === MAP_FAILED || addr === -1n) throw errnoError(lastErrno(), 'mmap');
  const ab = koffi.view(addr, len) as ArrayBuffer;
  const m = { addr, len };
  mappings.set(ab, m);
  unmapper.register(ab, m);
  return Buffer.from(ab, 0, len);
}

/** Whether `buf` views a mapping made by mapFile. */
export function isMapped(buf: Buffer): boolean {
  return mappings.has(buf.buffer);
}

/**
 * Drop the pages of `buf`'s mapping (made by mapFile) from the process
 * (madvise MADV_DONTNEED): they stay in the page cache and are mapped in
 * again when next touched, with the file's bytes. No-op for other buffers.
 */
export function dropMappedPages(buf: Buffer): void {
  const m = mappings.get(buf.buffer);
  if (m) c.madvise(m.addr, m.len, MADV_DONTNEED);
}

/** The address of `buf`'s first byte (for alignment decisions; never dereferenced from JS). */
export function addressOf(buf: Uint8Array): number {
  return Number(c.addressOf(buf, 0, 0));
}

/** preadv2(2) flag: read only what the page cache holds, never wait for the disk. */
export const RWF_NOWAIT = 0x8;
/** what preadNowait answers when the bytes are not all in the page cache */
export const WOULD_BLOCK = -1;
const nowaitIov = Buffer.alloc(16);
/**
 * Address of each ArrayBuffer's memory, learnt on its first preadNowait:
 * the reply buffers READs fill are few and reused, so a read then makes one
 * native call, not two. An ArrayBuffer's memory never moves while it is
 * attached (and a view of a detached one has no bytes to read into).
 */
const bufferBases = new WeakMap<ArrayBufferLike, number>();

function addressOfView(dst: Uint8Array): number {
  const ab = dst.buffer; // (makes an on-heap typed array's memory off-heap, where it stays)
  let base = bufferBases.get(ab);
  if (base === undefined) {
    base = addressOf(dst) - dst.byteOffset;
    bufferBases.set(ab, base);
  }
  return base + dst.byteOffset;
}

/**
 * pread into `dst` from the page cache only (preadv2 RWF_NOWAIT): the bytes
 * read (0 at the end of the file; fewer than asked when only the first
 * pages are cached), or WOULD_BLOCK when none can be had without I/O (or
 * the file system cannot tell: EOPNOTSUPP). Other errors throw ErrnoError.
 */
export function preadNowait(fd: number, dst: Uint8Array, position: number): number {
  if (dst.length === 0) return 0;
  // iovec { base, len } as two 64-bit little-endian words (addresses stay below 2^53)
  const addr = addressOfView(dst);
  nowaitIov.writeUInt32LE(addr >>> 0, 0);
  nowaitIov.writeUInt32LE(Math.floor(addr / 0x1_0000_0000), 4);
  nowaitIov.writeUInt32LE(dst.length >>> 0, 8);
  nowaitIov.writeUInt32LE(Math.floor(dst.length / 0x1_0000_0000), 12);
  for (;;) {
    const n = Number(c.preadv2(fd, nowaitIov, 1, position, RWF_NOWAIT));
    if (n >= 0) return n;
    const e = lastErrno();
    if (e === constants.errno.EINTR) continue;
    if (e === constants.errno.EAGAIN || e === constants.errno.EOPNOTSUPP) return WOULD_BLOCK;
    throw errnoError(e, `preadv2(fd ${fd}, ${dst.length} bytes at ${position})`);
  }
}

/** Whether `buf`'s memory starts on a multiple of `align` (false when the address cannot be known). */
export function isAligned(buf: Uint8Array, align: number): boolean {
  try {
    return addressOf(buf) % align === 0;
  } catch {
    return false;
  }
}

/**
 * Give the pages of `buf` back to the kernel (madvise MADV_DONTNEED): they
 * read as zeros when next touched. `buf` must start on a page boundary and
 * span whole pages of private anonymous memory the caller owns and no one
 * uses. Best effort: false when refused.
 */
export function discardPages(buf: Uint8Array): boolean {
  try {
    return c.madvise(buf, buf.length, MADV_DONTNEED) === 0;
  } catch {
    return false;
  }
}
