/** pread exactly into `dst`, zero-filling past EOF; returns the bytes really read. */
import * as fs from 'node:fs';

export function preadFully(fd: number, dst: Buffer, position: number): number {
  let done = 0;
  while (done < dst.length) {
    const n = fs.readSync(fd, dst, done, dst.length - done, position + done);
    if (n === 0) { dst.fill(0, done); break; }
    done += n;
  }
  return done;
}
