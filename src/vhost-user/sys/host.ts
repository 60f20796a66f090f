/**
 * The only native seam of the vhost-user layer: the libc calls Node lacks
 * (AF_UNIX sockets with SCM_RIGHTS fd passing, mmap/munmap, eventfd,
 * memfd), bound once through koffi with hand-written TS types.
 *
 * Crash rules (docs/koffi-notes.md Q6) followed here:
 *  - pointers are BigInt; mmap is declared `intptr_t` so failure is -1;
 *  - errno is read immediately after the failing call (koffi.errno());
 *  - msghdr/iovec/cmsg chains live in koffi.alloc memory (stable addresses),
 *    never in Buffers (valid only for one call);
 *  - every fd argument is an integer checked by the caller;
 *  - views are created only by guest-memory.ts, ≤ 4 GiB each.
 */
import koffi from 'koffi';

const lib = koffi.load('libc.so.6');
const c = {
  socket: lib.func('int socket(int domain, int type, int protocol)'),
  socketpair: lib.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)'),
  bind: lib.func('int bind(int fd, const uint8_t *addr, uint32_t len)'),
  connect: lib.func('int connect(int fd, const uint8_t *addr, uint32_t len)'),
  listen: lib.func('int listen(int fd, int backlog)'),
  accept4: lib.func('int accept4(int fd, void *addr, void *len, int flags)'),
  recvmsg: lib.func('intptr_t recvmsg(int fd, void *msg, int flags)'),
  sendmsg: lib.func('intptr_t sendmsg(int fd, void *msg, int flags)'),
  close: lib.func('int close(int fd)'),
  mmap: lib.func('intptr_t mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)'),
  munmap: lib.func('int munmap(void *addr, size_t len)'),
  eventfd: lib.func('int eventfd(unsigned int initval, int flags)'),
  read: lib.func('intptr_t read(int fd, _Out_ uint8_t *buf, size_t n)'),
  write: lib.func('intptr_t write(int fd, const uint8_t *buf, size_t n)'),
  memfd_create: lib.func('int memfd_create(const char *name, unsigned int flags)'),
  ftruncate: lib.func('int ftruncate(int fd, int64_t len)'),
  shutdown: lib.func('int shutdown(int fd, int how)'),
  preadv: lib.func('intptr_t preadv(int fd, void *iov, int iovcnt, int64_t off)'),
  preadv2: lib.func('intptr_t preadv2(int fd, void *iov, int iovcnt, int64_t off, int flags)'),
};

export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const MSG_DONTWAIT = 0x40;
export const MSG_CTRUNC = 0x8;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CMSG_CLOEXEC = 0x40000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
const MFD_CLOEXEC = 1;
const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
export const PAGE_SIZE = 4096;

export const EAGAIN = 11;
export const EINTR = 4;
export const EOPNOTSUPP = 95;

/** A failed system call: `errno` is the positive C errno. */
export class HostError extends Error {
  constructor(readonly call: string, readonly errno: number) {
    super(`${call} failed: errno ${errno}`);
    this.name = 'HostError';
  }
}

const isFd = (fd: number): boolean => Number.isInteger(fd) && fd >= 0 && fd < 0x7fffffff;

function check(call: string, r: number): number {
  if (r < 0) throw new HostError(call, koffi.errno());
  return r;
}

function sockaddrUn(path: string): Buffer {
  const p = Buffer.from(path);
  if (p.length === 0 || p.length > 107 || p.includes(0)) throw new HostError(`sockaddr_un(${path})`, 36 /* ENAMETOOLONG */);
  const a = Buffer.alloc(2 + 108);
  a.writeUInt16LE(AF_UNIX, 0);
  p.copy(a, 2);
  return a;
}

/** A listening AF_UNIX stream socket (non-blocking, close-on-exec). */
export function listenUnix(path: string, backlog = 4): number {
  const fd = check('socket', c.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  try {
    const a = sockaddrUn(path);
    check('bind', c.bind(fd, a, 2 + Buffer.byteLength(path) + 1));
    check('listen', c.listen(fd, backlog));
  } catch (e) {
    c.close(fd);
    throw e;
  }
  return fd;
}

/** Accept one connection (non-blocking, close-on-exec); -1 when none is pending. */
export function acceptUnix(fd: number): number {
  const r = c.accept4(fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (r >= 0) return r;
  const e = koffi.errno();
  if (e === EAGAIN || e === EINTR || e === 103 /* ECONNABORTED */) return -1;
  throw new HostError('accept4', e);
}

/** Connect to a unix socket (blocking connect, then the fd is made non-blocking by flag if asked). */
export function connectUnix(path: string, nonblock = true): number {
  const fd = check('socket', c.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0));
  try {
    check('connect', c.connect(fd, sockaddrUn(path), 2 + Buffer.byteLength(path) + 1));
  } catch (e) {
    c.close(fd);
    throw e;
  }
  return fd;
}

/** socketpair(AF_UNIX, SOCK_STREAM) → [a, b], both non-blocking. */
export function socketPair(): [number, number] {
  const sv = new Int32Array(2);
  check('socketpair', c.socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv as unknown as number[]));
  return [sv[0], sv[1]];
}

export function closeFd(fd: number): void {
  if (isFd(fd)) c.close(fd);
}

export function shutdownFd(fd: number): void {
  if (isFd(fd)) c.shutdown(fd, 2);
}

// ---- fd passing ------------------------------------------------------------------

/** Largest number of fds accepted with one message (vhost-user sends ≤ 8). */
export const MAX_FDS = 32;
const MSGHDR = 0;
const IOV = 64;
const CTRL = 128;
const CTRL_LEN = 16 + 4 * MAX_FDS; // one cmsghdr with MAX_FDS ints (already 8-aligned)
const DATA = 320;

export interface RecvResult {
  /** bytes received; 0 = peer closed; -1 = nothing to read (EAGAIN) */
  n: number;
  /** fds that arrived with these bytes (owned by the caller) */
  fds: number[];
  /** some fds were dropped by the kernel (MSG_CTRUNC) */
  truncated: boolean;
}

/**
 * recvmsg/sendmsg with SCM_RIGHTS over one socket, through a reusable
 * block of koffi-allocated memory (msghdr + iovec + control + data).
 */
export class SocketIo {
  private mem: bigint;
  private view: Buffer;
  readonly capacity: number;

  constructor(capacity = 4096 + 64) {
    this.capacity = capacity;
    this.mem = koffi.alloc('uint8_t', DATA + capacity) as bigint;
    this.view = Buffer.from(koffi.view(this.mem, DATA + capacity));
    this.view.fill(0);
  }

  private setup(dataLen: number, ctrlLen: number): void {
    const v = this.view;
    v.fill(0, 0, DATA);
    v.writeBigUInt64LE(0n, MSGHDR); // name
    v.writeUInt32LE(0, MSGHDR + 8); // namelen
    v.writeBigUInt64LE(this.mem + BigInt(IOV), MSGHDR + 16);
    v.writeBigUInt64LE(1n, MSGHDR + 24);
    v.writeBigUInt64LE(ctrlLen > 0 ? this.mem + BigInt(CTRL) : 0n, MSGHDR + 32);
    v.writeBigUInt64LE(BigInt(ctrlLen), MSGHDR + 40);
    v.writeBigUInt64LE(this.mem + BigInt(DATA), IOV);
    v.writeBigUInt64LE(BigInt(dataLen), IOV + 8);
  }

  /** Receive up to `want` bytes (non-blocking). Returned bytes are copied out. */
  recv(fd: number, want: number): RecvResult & { data: Buffer } {
    if (!isFd(fd) || !(want > 0 && want <= this.capacity)) throw new HostError('recvmsg(args)', 22);
    this.setup(want, CTRL_LEN);
    const n = Number(c.recvmsg(fd, this.mem, MSG_CMSG_CLOEXEC | MSG_DONTWAIT));
    if (n < 0) {
      const e = koffi.errno();
      if (e === EAGAIN || e === EINTR) return { n: -1, fds: [], truncated: false, data: Buffer.alloc(0) };
      throw new HostError('recvmsg', e);
    }
    const v = this.view;
    const flags = v.readInt32LE(MSGHDR + 48);
    const ctrlLen = Math.min(CTRL_LEN, Number(v.readBigUInt64LE(MSGHDR + 40)));
    const fds: number[] = [];
    for (let off = 0; off + 16 <= ctrlLen;) {
      const len = Number(v.readBigUInt64LE(CTRL + off));
      if (len < 16 || off + len > ctrlLen) break;
      if (v.readInt32LE(CTRL + off + 8) === SOL_SOCKET && v.readInt32LE(CTRL + off + 12) === SCM_RIGHTS) {
        for (let i = 16; i + 4 <= len; i += 4) fds.push(v.readInt32LE(CTRL + off + i));
      }
      off += (len + 7) & ~7;
    }
    return { n, fds, truncated: (flags & MSG_CTRUNC) !== 0, data: Buffer.from(v.subarray(DATA, DATA + n)) };
  }

  /** Send `data` (≤ capacity) with `fds` attached; returns bytes sent or -1 on EAGAIN. */
  send(fd: number, data: Buffer, fds: readonly number[] = []): number {
    if (!isFd(fd) || data.length > this.capacity || data.length === 0 || fds.length > MAX_FDS || !fds.every(isFd)) {
      throw new HostError('sendmsg(args)', 22);
    }
    const ctrl = fds.length > 0 ? 16 + ((4 * fds.length + 7) & ~7) : 0;
    this.setup(data.length, ctrl);
    const v = this.view;
    data.copy(v, DATA);
    if (ctrl > 0) {
      v.fill(0, CTRL, CTRL + ctrl);
      v.writeBigUInt64LE(BigInt(16 + 4 * fds.length), CTRL);
      v.writeInt32LE(SOL_SOCKET, CTRL + 8);
      v.writeInt32LE(SCM_RIGHTS, CTRL + 12);
      fds.forEach((f, i) => v.writeInt32LE(f, CTRL + 16 + 4 * i));
    }
    const n = Number(c.sendmsg(fd, this.mem, MSG_NOSIGNAL | MSG_DONTWAIT));
    if (n < 0) {
      const e = koffi.errno();
      if (e === EAGAIN || e === EINTR) return -1;
      throw new HostError('sendmsg', e);
    }
    return n;
  }

  dispose(): void {
    if (this.mem !== 0n) {
      koffi.free(this.mem);
      this.mem = 0n;
      this.view = Buffer.alloc(0);
    }
  }
}

// ---- memory ----------------------------------------------------------------------

const MAP_POPULATE = 0x8000;
let populate = false;

/**
 * Pre-fault guest memory mappings (MAP_POPULATE). Faster request handling,
 * but the whole guest RAM gets committed on the host at once, so it is opt-in.
 */
export function setPopulateMappings(on: boolean): void {
  populate = on;
}

/** mmap(fd, offset) MAP_SHARED read/write; returns the address or throws. `offset` must be page-aligned. */
export function mmapShared(fd: number, len: number, offset: number): bigint {
  if (!isFd(fd) || !Number.isSafeInteger(len) || len <= 0 || !Number.isSafeInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0) {
    throw new HostError('mmap(args)', 22);
  }
  const r = Number(c.mmap(null, len, PROT_READ | PROT_WRITE, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, offset));
  if (r === -1) throw new HostError('mmap', koffi.errno());
  return BigInt(r);
}

export function munmap(addr: bigint, len: number): void {
  if (addr !== 0n && len > 0) c.munmap(addr, len);
}

/** An external ArrayBuffer over mapped memory; `len` ≤ 4 GiB (koffi aborts beyond). */
export function viewOf(addr: bigint, len: number): ArrayBuffer {
  if (!(len > 0 && len <= 2 ** 32)) throw new HostError('view(len)', 22);
  return koffi.view(addr, len);
}

export function memfdCreate(name: string, size: number): number {
  const fd = check('memfd_create', c.memfd_create(name, MFD_CLOEXEC));
  if (c.ftruncate(fd, size) < 0) {
    const e = koffi.errno();
    c.close(fd);
    throw new HostError('ftruncate', e);
  }
  return fd;
}

// ---- preadv into mapped memory ---------------------------------------------------

/** Most iovecs one preadv takes (Linux IOV_MAX). */
export const IOV_MAX = 1024;
let iovMem: bigint | undefined;
let iovU32: Uint32Array | undefined;

/**
 * preadv(fd) straight into mapped memory ranges given by host address and
 * length (guest memory segments: no Buffer per range), up to IOV_MAX per
 * call, looping over short reads. Returns the bytes read (< the total only
 * at end of file). Every address must come from a live mapping the caller
 * holds (guest-memory.ts SegmentList); lengths are the caller's, bounded.
 * Throws HostError on an I/O error. `flags`: preadv2(2) flags (RWF_NOWAIT:
 * only what the page cache holds; EAGAIN, EOPNOTSUPP when it cannot tell).
 */
export function preadvInto(fd: number, addrs: ArrayLike<number>, lens: ArrayLike<number>, first: number, count: number, skip: number, total: number, position: number, flags = 0): number {
  if (!isFd(fd) || !Number.isSafeInteger(position) || position < 0) throw new HostError('preadv(args)', 22);
  if (iovMem === undefined) {
    iovMem = koffi.alloc('uint8_t', 16 * IOV_MAX) as bigint;
    iovU32 = new Uint32Array(koffi.view(iovMem, 16 * IOV_MAX));
  }
  const v = iovU32!;
  let done = 0;
  let i = first;
  const end = first + count;
  let off = skip; // bytes of range i already consumed
  while (done < total && i < end) {
    // fill up to IOV_MAX iovecs from range i (offset off)
    let n = 0;
    let want = 0;
    for (let j = i; j < end && n < IOV_MAX && want < total - done; j++) {
      const o = j === i ? off : 0;
      const l = Math.min(lens[j] - o, total - done - want);
      const a = addrs[j] + o;
      v[4 * n] = a % 0x100000000;
      v[4 * n + 1] = Math.floor(a / 0x100000000);
      v[4 * n + 2] = l;
      v[4 * n + 3] = 0;
      want += l;
      n++;
    }
    const r = Number(flags ? c.preadv2(fd, iovMem, n, position + done, flags) : c.preadv(fd, iovMem, n, position + done));
    if (r < 0) {
      const e = koffi.errno();
      if (e === EINTR) continue;
      throw new HostError('preadv', e);
    }
    if (r === 0) break;
    done += r;
    // advance (i, off) by r bytes
    let k = r;
    while (k > 0 && i < end) {
      const left = lens[i] - off;
      if (k >= left) { k -= left; i++; off = 0; } else { off += k; k = 0; }
    }
  }
  return done;
}

// ---- eventfd ---------------------------------------------------------------------

export function eventfdCreate(nonblock = true): number {
  return check('eventfd', c.eventfd(0, EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0)));
}

const evbuf = Buffer.alloc(8);

/** Read (and reset) an eventfd counter; 0n when it was not signalled (EAGAIN). */
export function eventfdRead(fd: number): bigint {
  if (!isFd(fd)) return 0n;
  const n = Number(c.read(fd, evbuf, 8));
  if (n !== 8) return 0n;
  return evbuf.readBigUInt64LE(0);
}

const one = Buffer.alloc(8);
one.writeBigUInt64LE(1n, 0);

/** Add 1 to an eventfd counter; false on failure. */
export function eventfdWrite(fd: number): boolean {
  if (!isFd(fd)) return false;
  return Number(c.write(fd, one, 8)) === 8;
}
