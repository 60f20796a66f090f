/**
 * Guest memory as the frontend shares it: regions of fds mmapped MAP_SHARED,
 * each with its guest-physical base (descriptor addresses) and its frontend
 * virtual base (SET_VRING_ADDR addresses). Every access goes through
 * `slice` / `segments`, which bounds-check against the region table; an
 * address outside every region is refused, never touched.
 *
 * Views (docs/koffi-notes.md Q2/Q6): one koffi view per window, created
 * once and lazily. Windows start every `windowStep` bytes (default 2 GiB)
 * and are up to 2 × windowStep long (≤ 4 GiB, koffi's limit), so any access
 * of ≤ windowStep bytes fits in the window of its start.
 *
 * Lifetime: a region is munmapped only when nothing uses it any more.
 * A GuestMemory table holds its regions; requests in flight hold the table
 * (acquire/release), so a SET_MEM_TABLE or a disconnect never unmaps memory
 * under a request that is still writing its reply.
 */
import * as fs from 'node:fs';
import { PAGE_SIZE, closeFd, mmapShared, munmap, viewOf } from '../sys/host';

export const DEFAULT_WINDOW_STEP = 2 ** 31;
/** Largest region accepted (64 TiB): beyond any VM we serve, and far below 2^53. */
export const MAX_REGION_SIZE = 2 ** 46;
const MAX_ADDR = Number.MAX_SAFE_INTEGER;

export class GuestMemoryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestMemoryError';
  }
}

export interface RegionSpec {
  gpa: number;
  size: number;
  uaddr: number;
  mmapOffset: number;
}

/** Convert a u64 from the wire to a safe Number, or throw. */
export function safeNumber(what: string, v: bigint): number {
  if (v < 0n || v > BigInt(MAX_ADDR)) throw new GuestMemoryError(`${what} 0x${v.toString(16)} out of range`);
  return Number(v);
}

/** One mapped region. Created by `MemoryRegion.map`, unmapped when its last user releases it. */
export class MemoryRegion {
  private refs = 1;
  private readonly windows: (Buffer | undefined)[] = [];
  private unmapped = false;
  /** host virtual address of the mapping's first byte of the region (offset 0), as a Number (< 2^47 on x86-64) */
  readonly hostBase: number;

  private constructor(
    readonly gpa: number,
    readonly size: number,
    readonly uaddr: number,
    readonly mmapOffset: number,
    private readonly mapAddr: bigint,
    private readonly mapLen: number,
    private readonly delta: number,
    readonly windowStep: number,
  ) {
    this.hostBase = Number(mapAddr) + delta;
  }

  /**
   * Validate `spec` against the fd and map it. The fd is consumed (closed) in
   * every case. Refuses ranges beyond the end of the file: touching them
   * would be a SIGBUS.
   */
  static map(spec: RegionSpec, fd: number, windowStep = DEFAULT_WINDOW_STEP): MemoryRegion {
    try {
      const { gpa, size, uaddr, mmapOffset } = spec;
      if (!(size > 0 && size <= MAX_REGION_SIZE)) throw new GuestMemoryError(`region size ${size} invalid`);
      if (gpa + size > MAX_ADDR || uaddr + size > MAX_ADDR || mmapOffset + size > MAX_ADDR) {
        throw new GuestMemoryError('region end out of range');
      }
      if (!(windowStep >= PAGE_SIZE && windowStep <= 2 ** 31 && windowStep % PAGE_SIZE === 0)) {
        throw new GuestMemoryError(`window step ${windowStep} invalid`);
      }
      let st: fs.Stats;
      try {
        st = fs.fstatSync(fd);
      } catch (e) {
        throw new GuestMemoryError(`fstat(region fd): ${(e as Error).message}`);
      }
      if (!st.isFile()) throw new GuestMemoryError('region fd is not a regular file / memfd');
      if (mmapOffset + size > st.size) {
        throw new GuestMemoryError(`region [${mmapOffset}, +${size}) beyond the end of its file (${st.size} bytes)`);
      }
      const aligned = Math.floor(mmapOffset / PAGE_SIZE) * PAGE_SIZE;
      const delta = mmapOffset - aligned;
      let addr: bigint;
      try {
        addr = mmapShared(fd, size + delta, aligned);
      } catch (e) {
        throw new GuestMemoryError(`mmap of region failed: ${(e as Error).message}`);
      }
      return new MemoryRegion(gpa, size, uaddr, mmapOffset, addr, size + delta, delta, windowStep);
    } finally {
      closeFd(fd);
    }
  }

  acquire(): void {
    this.refs++;
  }

  release(): void {
    if (--this.refs === 0 && !this.unmapped) {
      this.unmapped = true;
      this.windows.length = 0;
      munmap(this.mapAddr, this.mapLen);
    }
  }

  get mapped(): boolean {
    return !this.unmapped;
  }

  /** Window `k` (lazily created, once). */
  window(k: number): Buffer {
    let w = this.windows[k];
    if (w === undefined) {
      if (this.unmapped) throw new GuestMemoryError('access to an unmapped region');
      const start = k * this.windowStep;
      const len = Math.min(2 * this.windowStep, this.size - start);
      if (!(start >= 0 && len > 0)) throw new GuestMemoryError('window out of range');
      w = Buffer.from(viewOf(this.mapAddr + BigInt(this.delta + start), len));
      this.windows[k] = w;
    }
    return w;
  }

  /** Contiguous bytes at region offset `off` (< size): the window buffer and where to start. */
  locate(off: number): { buf: Buffer; pos: number } {
    const k = Math.floor(off / this.windowStep);
    return { buf: this.window(k), pos: off - k * this.windowStep };
  }

  overlaps(o: { gpa: number; size: number; uaddr: number }): boolean {
    return (o.gpa < this.gpa + this.size && this.gpa < o.gpa + o.size) ||
      (o.uaddr < this.uaddr + this.size && this.uaddr < o.uaddr + o.size);
  }
}

/**
 * Byte ranges of guest memory (a descriptor chain's readable or writable
 * part) as parallel arrays: the region window holding each range, the
 * range's offset in it, its length and its host virtual address. A range is
 * a live view of guest memory; no per-range Buffer is created unless asked
 * for (`views`). Ranges built from plain Buffers (tests, `fromBuffers`) have
 * no host address (NaN), and readers fall back to Buffer APIs for them.
 */
export class SegmentList {
  readonly bufs: Buffer[] = [];
  /**
   * Offset of each range in its window buffer. The columns are plain arrays
   * (V8 heap, bump-allocated): a typed array's backing store per chain cost
   * more than the walk itself and drove the GC.
   */
  readonly offs: number[] = [];
  readonly lens: number[] = [];
  /** host virtual address of each range (NaN: none) */
  readonly addrs: number[] = [];
  length = 0;
  /** every range has a host address (native I/O can target it directly) */
  native = true;

  /**
   * Append a range; one that continues the previous range (same window, next
   * host address) extends it instead, so the page-per-descriptor buffers of a
   * READ that the guest allocated contiguously become one iovec.
   */
  push(buf: Buffer, off: number, len: number, addr: number): void {
    const i = this.length;
    if (i > 0 && this.bufs[i - 1] === buf && this.addrs[i - 1] + this.lens[i - 1] === addr) {
      this.lens[i - 1] += len;
      return;
    }
    // stored by index: a recycled list (clear) keeps its columns' capacity
    this.bufs[i] = buf;
    this.offs[i] = off;
    this.lens[i] = len;
    this.addrs[i] = addr;
    this.length = i + 1;
    if (!(addr >= 0)) this.native = false;
  }

  /** Keep the first `n` ranges (the columns keep their capacity; entries past `length` are stale). */
  truncate(n: number): void {
    if (n >= this.length) return;
    this.length = n;
    this.native = true;
    for (let i = 0; i < n; i++) if (!(this.addrs[i] >= 0)) this.native = false;
  }

  /**
   * Empty the list for reuse by another chain (SplitQueue's spare lists): a
   * 1 MiB READ has ~256 ranges, and growing four fresh columns to that size
   * per request was a tenth of the chain walk plus young-generation garbage.
   * Entries past `length` are never read, only overwritten; the window
   * Buffers they still reference stay reachable until then (SplitQueue drops
   * its spare lists when the memory table changes).
   */
  clear(): void {
    this.length = 0;
    this.native = true;
  }

  /** One view per range (allocates; for callers that need Buffers). */
  views(): Buffer[] {
    const out: Buffer[] = new Array(this.length);
    for (let i = 0; i < this.length; i++) out[i] = this.bufs[i].subarray(this.offs[i], this.offs[i] + this.lens[i]);
    return out;
  }

  static fromBuffers(bufs: readonly Buffer[]): SegmentList {
    const l = new SegmentList();
    for (const b of bufs) if (b.length > 0) l.push(b, 0, b.length, NaN);
    return l;
  }
}

/** An immutable region table. */
export class GuestMemory {
  readonly regions: readonly MemoryRegion[];
  private refs = 1;
  private last: MemoryRegion | undefined;

  /** Takes a reference on every region (the caller keeps its own). */
  constructor(regions: readonly MemoryRegion[]) {
    this.regions = [...regions].sort((a, b) => a.gpa - b.gpa);
    for (const r of this.regions) r.acquire();
  }

  acquire(): this {
    this.refs++;
    return this;
  }

  release(): void {
    if (--this.refs === 0) for (const r of this.regions) r.release();
  }

  private find(gpa: number): MemoryRegion | undefined {
    const l = this.last;
    if (l !== undefined && gpa >= l.gpa && gpa < l.gpa + l.size) return l;
    for (const r of this.regions) {
      if (gpa >= r.gpa && gpa < r.gpa + r.size) {
        this.last = r;
        return r;
      }
    }
    return undefined;
  }

  /** Guest-physical address of a frontend virtual address, or undefined. */
  uaddrToGpa(uaddr: number): number | undefined {
    for (const r of this.regions) if (uaddr >= r.uaddr && uaddr < r.uaddr + r.size) return r.gpa + (uaddr - r.uaddr);
    return undefined;
  }

  /**
   * `len` contiguous bytes at `gpa` as one Buffer (a view), or undefined when
   * the range is not entirely inside one region window.
   */
  slice(gpa: number, len: number): Buffer | undefined {
    if (!(Number.isSafeInteger(gpa) && gpa >= 0 && Number.isSafeInteger(len) && len >= 0)) return undefined;
    const r = this.find(gpa);
    if (r === undefined || !r.mapped) return undefined;
    const off = gpa - r.gpa;
    if (len > r.size - off) return undefined;
    const { buf, pos } = r.locate(off);
    if (len > buf.length - pos) return undefined;
    return buf.subarray(pos, pos + len);
  }

  /**
   * The window `segmentsInto` uses for a range starting at `gpa` (one whose
   * start lies in [gpa, gpa + step)), as the guest-physical range it covers,
   * its Buffer and the host address of its first byte; undefined outside the
   * table. Valid while the table holds its regions (a chain walk caches it:
   * descriptors of one request mostly land in the same window).
   */
  windowAt(gpa: number): { gpa: number; step: number; end: number; buf: Buffer; addr: number } | undefined {
    const r = this.find(gpa);
    if (r === undefined || !r.mapped) return undefined;
    const k = Math.floor((gpa - r.gpa) / r.windowStep);
    const start = k * r.windowStep;
    const buf = r.window(k);
    return { gpa: r.gpa + start, step: r.windowStep, end: r.gpa + start + buf.length, buf, addr: r.hostBase + start };
  }

  /**
   * Split [gpa, gpa+len) into segments appended to `out` (crossing windows
   * and GPA-adjacent regions) without creating a view per segment. Returns
   * false, appending nothing, when any byte lies outside the table.
   */
  segmentsInto(gpa: number, len: number, out: SegmentList): boolean {
    if (!(Number.isSafeInteger(gpa) && gpa >= 0 && Number.isSafeInteger(len) && len >= 0 && gpa + len <= MAX_ADDR)) return false;
    // fast path: inside the last region used, within one window
    const l = this.last;
    if (l !== undefined && gpa >= l.gpa && len <= l.gpa + l.size - gpa && l.mapped) {
      const off = gpa - l.gpa;
      const k = Math.floor(off / l.windowStep);
      const buf = l.window(k);
      const pos = off - k * l.windowStep;
      if (len <= buf.length - pos) {
        out.push(buf, pos, len, l.hostBase + off);
        return true;
      }
    }
    const mark = out.length;
    while (len > 0) {
      const r = this.find(gpa);
      if (r === undefined || !r.mapped) {
        out.truncate(mark);
        return false;
      }
      const off = gpa - r.gpa;
      const k = Math.floor(off / r.windowStep);
      const buf = r.window(k);
      const pos = off - k * r.windowStep;
      const n = Math.min(len, buf.length - pos, r.size - off);
      out.push(buf, pos, n, r.hostBase + off);
      gpa += n;
      len -= n;
    }
    return true;
  }

  /**
   * Split [gpa, gpa+len) into views appended to `out` (crossing windows and
   * GPA-adjacent regions). Returns false, appending nothing, when any byte
   * lies outside the table.
   */
  segments(gpa: number, len: number, out: Buffer[]): boolean {
    if (!(Number.isSafeInteger(gpa) && gpa >= 0 && Number.isSafeInteger(len) && len >= 0 && gpa + len <= MAX_ADDR)) return false;
    const mark = out.length;
    while (len > 0) {
      const r = this.find(gpa);
      if (r === undefined || !r.mapped) {
        out.length = mark;
        return false;
      }
      const off = gpa - r.gpa;
      const { buf, pos } = r.locate(off);
      const n = Math.min(len, buf.length - pos, r.size - off);
      out.push(buf.subarray(pos, pos + n));
      gpa += n;
      len -= n;
    }
    return true;
  }
}
