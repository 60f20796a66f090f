/** Positional reads that fill their buffers completely, zero-filling past EOF. */
import * as fs from 'node:fs';
import { WOULD_BLOCK, preadNowait } from './libc';

export { WOULD_BLOCK } from './libc';

/** pread exactly into `dst`; returns the bytes really read. */
export function preadFully(fd: number, dst: Buffer, position: number): number {
  let done = 0;
  while (done < dst.length) {
    const n = fs.readSync(fd, dst, done, dst.length - done, position + done);
    if (n === 0) { dst.fill(0, done); break; }
    done += n;
  }
  return done;
}

/**
 * Fill `dst` from the page cache only: the bytes read (fewer only at the
 * end of the file), or WOULD_BLOCK, with `dst` partly written, when some of
 * them are not cached (reading them would wait for the disk).
 */
export function preadFullyNowait(fd: number, dst: Buffer, position: number): number {
  let done = 0;
  while (done < dst.length) {
    const n = preadNowait(fd, dst.subarray(done), position + done);
    if (n === WOULD_BLOCK) return WOULD_BLOCK;
    if (n === 0) break; // the end of the file
    done += n;
  }
  return done;
}

/** preadFully on the thread pool (the event loop never waits for the disk): the bytes read, fewer only at the end of the file. */
export async function preadFullyAsync(fd: number, dst: Buffer, position: number): Promise<number> {
  let done = 0;
  while (done < dst.length) {
    const n = await new Promise<number>((resolve, reject) => {
      fs.read(fd, dst, done, dst.length - done, position + done, (err, bytes) => (err ? reject(err) : resolve(bytes)));
    });
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** preadv into `iov` (several buffers, one system call when the file has the data). */
export function preadvFully(fd: number, iov: Buffer[], position: number): number {
  const total = iov.reduce((n, b) => n + b.length, 0);
  let done = 0;
  let bufs = iov;
  while (done < total) {
    const n = fs.readvSync(fd, bufs, position + done);
    if (n === 0) {
      for (const b of bufs) b.fill(0);
      break;
    }
    done += n;
    bufs = iovAfter(bufs, n);
  }
  return done;
}

/** What is left of the vector `iov` once its first `n` bytes were transferred (a short readv/writev). */
export function iovAfter(iov: Buffer[], n: number): Buffer[] {
  let skip = n;
  const rest: Buffer[] = [];
  for (const b of iov) {
    if (skip >= b.length) { skip -= b.length; continue; }
    rest.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return rest;
}
