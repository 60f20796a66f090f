/**
 * Which bytes of a blob cache write may bypass the page cache (O_DIRECT).
 *
 * Why: a cold read through the blob cache writes every chunk it decodes to
 * the cache file. Written through the page cache, that is a second copy of
 * the whole read into freshly allocated page-cache pages (the FUSE file's
 * own pages are the first), plus their writeback later: on the 2-core bench
 * machine it doubled the CPU a cold 256 MiB read costs (perf: 40 % in
 * copy_folio_from_iter_atomic). Chunks written with O_DIRECT go from the
 * decoded memory to the disk; the kernel keeps one copy of the data, the
 * FUSE file's. Not upstream's way (nydusd writes through the page cache);
 * the file's bytes are the same.
 *
 * O_DIRECT needs the file position, each vector element's address and its
 * length aligned. A chunk qualifies when it starts on a page of the cache
 * file and spans whole pages; its memory is used as it is when page aligned
 * (decoded arena slots are), else copied to aligned staging memory when
 * some is at hand. Everything else (ends of files, the zero padding after
 * them, v5 blobs laid out back to back) is written through the page cache as
 * before. A direct write never touches a byte outside its chunks.
 */
import { DIRECT_IO_ALIGN } from '../../common/direct-io';

export const DIRECT_ALIGN = DIRECT_IO_ALIGN;

/** One pwritev: `iov` from `pos`, through the O_DIRECT fd or the page cache. */
export interface WriteGroup {
  pos: number;
  iov: Buffer[];
  direct: boolean;
  /** staging copies in `iov`, to let go once the write is over */
  staged: Buffer[];
}

export interface DirectPlanOptions {
  /** whether O_DIRECT may be used at all */
  direct: boolean;
  /** whether `buf`'s memory starts on a DIRECT_ALIGN boundary */
  aligned: (buf: Buffer) => boolean;
  /** an aligned copy of `buf` (same length), or undefined when no memory is at hand */
  stage: (buf: Buffer) => Buffer | undefined;
}

/**
 * Split the write of chunks `datas` (at cache-file offsets `offsets`, each
 * at or after the previous one's end) into groups: runs of chunks that go
 * direct, and runs written through the page cache with the zero padding
 * (`zeros(n)`) between their chunks.
 */
export function planWrites(offsets: readonly number[], datas: readonly Buffer[], zeros: (n: number) => Buffer, opts: DirectPlanOptions): WriteGroup[] {
  const groups: WriteGroup[] = [];
  let cur: WriteGroup | undefined;
  let end = 0;
  for (let k = 0; k < datas.length; k++) {
    const d = datas[k];
    const at = offsets[k];
    const gap = k === 0 ? 0 : at - end;
    let buf: Buffer | undefined;
    let staged = false;
    if (opts.direct && at % DIRECT_ALIGN === 0 && d.length > 0 && d.length % DIRECT_ALIGN === 0) {
      if (opts.aligned(d)) buf = d;
      else if ((buf = opts.stage(d))) staged = true;
    }
    const direct = buf !== undefined;
    if (gap > 0) {
      // padding only ever follows a chunk that ends inside a page: a buffered one
      if (!cur || cur.direct) groups.push(cur = { pos: end, iov: [], direct: false, staged: [] });
      cur.iov.push(zeros(gap));
    }
    if (!cur || cur.direct !== direct) groups.push(cur = { pos: at, iov: [], direct, staged: [] });
    cur.iov.push(buf ?? d);
    if (staged) cur.staged.push(buf!);
    end = at + d.length;
  }
  return groups;
}
