/**
 * Files whose bytes are on disk but not in the page cache (a blob cache file
 * written with O_DIRECT, evicted, or left by an earlier run), for tests of
 * the reads that must not wait for the disk on the event loop.
 */
import * as fs from 'node:fs';
import { WOULD_BLOCK, isAligned, preadNowait } from '../../src/common/libc';

const PAGE = 4096;

/**
 * Write `data` (a multiple of 4 KiB) to `file` with O_DIRECT, so the page
 * cache does not hold it. Returns why not when that cannot be had here (no
 * O_DIRECT, or a file system that keeps everything in memory, such as tmpfs):
 * the caller skips, printing it. Its last page is probed (and may be read
 * ahead from then on): test reads well before it.
 */
export function writeNotCached(file: string, data: Buffer): string | undefined {
  if (data.length % PAGE !== 0) throw new RangeError('O_DIRECT writes need whole pages');
  const sab = new SharedArrayBuffer(data.length + PAGE);
  let mem: Buffer | undefined;
  for (let o = 0; o < PAGE && !mem; o += 16) if (isAligned(Buffer.from(sab, o, 1), PAGE)) mem = Buffer.from(sab, o, data.length);
  if (!mem) return 'no page-aligned memory (address unknown)';
  data.copy(mem);
  fs.writeFileSync(file, '');
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
  } catch (e) {
    return `O_DIRECT refused on ${file}: ${(e as Error).message}`;
  }
  try {
    let done = 0;
    while (done < mem.length) done += fs.writeSync(fd, mem, done, mem.length - done, done);
  } finally {
    fs.closeSync(fd);
  }
  // probed at the last page only: a read that may not wait still starts the kernel's readahead from there
  return isCached(file, data.length - PAGE, PAGE) ? `the file system of ${file} keeps written pages in memory (tmpfs?)` : undefined;
}

/** Whether the page cache holds `file`'s bytes at `position`+`length` (a read would not wait). */
export function isCached(file: string, position: number, length: number): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    return preadNowait(fd, Buffer.alloc(length), position) === length;
  } finally {
    fs.closeSync(fd);
  }
}
