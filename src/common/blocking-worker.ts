/**
 * Worker side of the blocking-call pool (blocking.ts): runs one host call
 * synchronously on this worker thread and reads this thread's errno right
 * after it. fds are process-wide, so the numbers the main thread sends are
 * valid here; the main thread keeps them open (pinned) until the reply.
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
  close: lib.func('int close(int fd)'),
};

const EINTR = 4;

function result(ret: number | bigint): BlockingResult {
  const r = Number(ret);
  // errno is read at once, on the thread that made the call
  return r < 0 ? { ret: r, errno: koffi.errno() } : { ret: r, errno: 0 };
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
    case 'close': {
      const r = result(c.close(t.fd) as number);
      // the fd is gone whatever close reports (Linux never keeps it on EINTR)
      return r.ret < 0 && r.errno === EINTR ? { ret: 0, errno: 0 } : r;
    }
    default:
      return { ret: -1, errno: 22 /* EINVAL */ };
  }
}
