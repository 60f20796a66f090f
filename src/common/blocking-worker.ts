/**
 * Worker side of the blocking-call pool (blocking.ts): runs one host call
 * synchronously on this worker thread and reads this thread's errno right
 * after it. fds are process-wide, so the numbers the main thread sends are
 * valid here; the main thread keeps them open (pinned) until the reply, and
 * never closes one a `detach` may still act on (see "Close ordering" in
 * blocking.ts). Names and paths arrive NUL-terminated (cbytes).
 *
 * Loaded by piscina with require(): compiled to dist/common/blocking-worker.js,
 * or run from the TypeScript source through tsx (blocking.ts passes the loader).
 */
import koffi from 'koffi';
import type { BlockingOp, BlockingResult } from './blocking';

const lib = koffi.load('libc.so.6');
const c = {
  syncfs: lib.func('int syncfs(int fd)'),
  fsync: lib.func('int fsync(int fd)'),
  fdatasync: lib.func('int fdatasync(int fd)'),
  fallocate: lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)'),
  lseek: lib.func('int64_t lseek(int fd, int64_t offset, int whence)'),
  dup: lib.func('int dup(int fd)'),
  dup3: lib.func('int dup3(int oldfd, int newfd, int flags)'),
  close: lib.func('int close(int fd)'),
  truncate: lib.func('int truncate(const uint8_t *path, int64_t length)'),
  ftruncate: lib.func('int ftruncate(int fd, int64_t length)'),
  unlinkat: lib.func('int unlinkat(int dirfd, const uint8_t *path, int flags)'),
  renameat2: lib.func('int renameat2(int olddirfd, const uint8_t *oldpath, int newdirfd, const uint8_t *newpath, uint32_t flags)'),
  openat: lib.func('int openat(int dirfd, const uint8_t *path, int flags, uint32_t mode)'),
};

const EINTR = 4;
const EINVAL = 22;
const AT_FDCWD = -100;
const O_CLOEXEC = 0o2000000;
// detach state words (blocking.ts CLOSE_STATE)
const ST_FREE = 0, ST_CLAIMED = 1, ST_DONE = 2, ST_FAILED = 4;

function result(ret: number | bigint): BlockingResult {
  const r = Number(ret);
  // errno is read at once, on the thread that made the call
  return r < 0 ? { ret: r, errno: koffi.errno() } : { ret: r, errno: 0 };
}

/** A NUL-terminated byte string (refused otherwise: the C call would read past it). */
function cstr(b: Uint8Array): Uint8Array | null {
  return b instanceof Uint8Array && b.length > 0 && b[b.length - 1] === 0 ? b : null;
}

export default function run(t: BlockingOp): BlockingResult {
  switch (t.op) {
    case 'syncfs':
      return result(c.syncfs(t.fd) as number);
    case 'fsync':
      return result((t.datasync ? c.fdatasync(t.fd) : c.fsync(t.fd)) as number);
    case 'fallocate':
      return result(c.fallocate(t.fd, t.mode, t.offset, t.length) as number);
    case 'lseek':
      return result(c.lseek(t.fd, t.offset, t.whence) as number | bigint);
    case 'flush': {
      // what close(2) of this open file would do (NFS write-back, host FUSE FLUSH, lock release)
      const d = result(c.dup(t.fd) as number);
      if (d.ret < 0) return d;
      const r = result(c.close(d.ret) as number);
      return r.ret < 0 && r.errno === EINTR ? { ret: 0, errno: 0 } : r;
    }
    case 'truncate': {
      const p = cstr(t.path);
      return p ? result(c.truncate(p, t.length) as number) : { ret: -1, errno: EINVAL };
    }
    case 'ftruncate':
      return result(c.ftruncate(t.fd, t.length) as number);
    case 'unlinkat': {
      const n = cstr(t.name);
      return n ? result(c.unlinkat(t.dirfd, n, t.flags) as number) : { ret: -1, errno: EINVAL };
    }
    case 'renameat2': {
      const o = cstr(t.oldName);
      const n = cstr(t.newName);
      return o && n ? result(c.renameat2(t.olddirfd, o, t.newdirfd, n, t.flags >>> 0) as number) : { ret: -1, errno: EINVAL };
    }
    case 'open': {
      const p = cstr(t.path);
      return p ? result(c.openat(AT_FDCWD, p, t.flags | O_CLOEXEC, t.mode >>> 0) as number) : { ret: -1, errno: EINVAL };
    }
    case 'detach': {
      // Replace each fd by the placeholder: the old file's last close (eviction of an
      // unlinked inode, FLUSH, write-back) happens here; the number stays allocated.
      let n = 0;
      for (let i = 0; i < t.fds.length; i++) {
        if (Atomics.compareExchange(t.state, i, ST_FREE, ST_CLAIMED) !== ST_FREE) continue; // cancelled
        let ok = false;
        try {
          ok = (c.dup3(t.placeholder, t.fds[i], O_CLOEXEC) as number) >= 0;
        } finally {
          Atomics.store(t.state, i, ok ? ST_DONE : ST_FAILED);
        }
        if (ok) n++;
      }
      return { ret: n, errno: 0 };
    }
    default:
      return { ret: -1, errno: EINVAL };
  }
}
