/**
 * A split virtqueue, device side (virtio 1.x §2.7; kata-contract §7.7):
 * avail-ring consumption, descriptor-chain walking (direct and indirect),
 * used-ring publication and EVENT_IDX notification suppression.
 *
 * Everything read from the rings is untrusted guest input: indices are
 * checked against the queue size, chains are bounded by a TTL (the table
 * size: a longer chain must contain a loop), indirect tables hold at most
 * max(queue size, 1024) entries, nested indirect tables are refused, lengths
 * are capped at 2^32, and every buffer is translated
 * through GuestMemory (which refuses anything outside the regions).
 *
 * Memory ordering (koffi-notes Q5): avail.idx is read with Atomics.load
 * (acquire); used.idx and avail_event are published with Atomics.store,
 * which is a full fence on x86, before used_event / avail.flags are re-read.
 * Host byte order is assumed little endian (checked at load).
 */
import * as os from 'node:os';
import { type GuestMemory, SegmentList } from './guest-memory';

if (os.endianness() !== 'LE') throw new Error('virtio queue: big-endian hosts are not supported');

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;
/** Largest queue size the split format allows. */
export const MAX_QUEUE_SIZE = 32768;
const DESC_SIZE = 16;
/** Entries an indirect table may have beyond the queue size (QEMU VIRTQUEUE_MAX_SIZE). */
export const MAX_INDIRECT = 1024;
/** Addresses ≥ 2^53 cannot be in any region: the high word must be below 2^21. */
const HI_LIMIT = 0x200000;
/** Private copy of the indirect table being walked (parseChain only; grown on demand). */
let indirectScratch = new Uint32Array(4 * 260);

/** A descriptor chain with every buffer already translated and bounds-checked. */
export class DescriptorChain {
  /** device-readable ranges, in order (emptied when the chain is recycled) */
  readSegs: SegmentList;
  /** device-writable ranges, in order (emptied when the chain is recycled) */
  writeSegs: SegmentList;
  private rviews: Buffer[] | undefined;
  private wviews: Buffer[] | undefined;

  constructor(
    readonly head: number,
    readable: Buffer[] | SegmentList,
    writable: Buffer[] | SegmentList,
    /** bytes in readSegs (0 once recycled) */
    public readableLen: number,
    /** bytes in writeSegs (0 once recycled) */
    public writableLen: number,
    /** descriptors visited (for tests / stats) */
    readonly descCount: number,
  ) {
    this.readSegs = readable instanceof SegmentList ? readable : SegmentList.fromBuffers(readable);
    this.writeSegs = writable instanceof SegmentList ? writable : SegmentList.fromBuffers(writable);
  }

  /** device-readable buffers as views, in order (created on first use) */
  get readable(): Buffer[] {
    return (this.rviews ??= this.readSegs.views());
  }

  /** device-writable buffers as views, in order (created on first use) */
  get writable(): Buffer[] {
    return (this.wviews ??= this.writeSegs.views());
  }
}

/** What a recycled chain points at: no ranges, so a late reader or writer finds nothing to touch. */
const NO_SEGMENTS = new SegmentList();
/** Spare segment lists a queue keeps for the next chains (2 per chain in flight, bounded). */
const MAX_SPARE_LISTS = 512;

export type ChainResult = DescriptorChain | { error: string; head: number };

export class SplitQueue {
  /** SET_VRING_NUM value (0 = not set) */
  size = 0;
  descGpa = -1;
  availGpa = -1;
  usedGpa = -1;
  nextAvail = 0;
  nextUsed = 0;
  eventIdx = false;
  /** used idx at the last notification decision (EVENT_IDX) */
  private signalledUsed: number | undefined;
  private mem: GuestMemory | undefined;
  /** the descriptor table as u32 words (4 per descriptor) */
  private desc: Uint32Array | undefined;
  private avail: Uint16Array | undefined;
  private usedHdr: Uint16Array | undefined;
  private usedRing: Uint32Array | undefined;
  /** emptied segment lists of completed chains, reused by parseChain (see SegmentList.clear) */
  private spare: SegmentList[] = [];

  constructor(readonly maxSize = 1024) {}

  private takeList(): SegmentList {
    return this.spare.pop() ?? new SegmentList();
  }

  private giveList(l: SegmentList): void {
    if (l === NO_SEGMENTS || this.spare.length >= MAX_SPARE_LISTS) return;
    l.clear();
    this.spare.push(l);
  }

  /**
   * The chain is finished (its used element is published or dropped): its
   * segment lists go back to the spare lists. The chain is left without
   * ranges, so nothing can reach another chain's buffers through it.
   */
  recycle(chain: DescriptorChain): void {
    const r = chain.readSegs;
    const w = chain.writeSegs;
    chain.readSegs = chain.writeSegs = NO_SEGMENTS;
    chain.readableLen = chain.writableLen = 0;
    this.giveList(r);
    this.giveList(w);
  }

  /** Validate and set the size (power of 2, 1..maxSize). */
  setSize(n: number): boolean {
    if (!(Number.isInteger(n) && n >= 1 && n <= this.maxSize && (n & (n - 1)) === 0)) return false;
    this.size = n;
    this.unmap();
    return true;
  }

  /** Set the ring addresses (guest physical). Alignment per spec: desc 16, avail 2, used 4. */
  setAddresses(desc: number, avail: number, used: number): boolean {
    if (desc % 16 !== 0 || avail % 2 !== 0 || used % 4 !== 0) return false;
    this.descGpa = desc;
    this.availGpa = avail;
    this.usedGpa = used;
    this.unmap();
    return true;
  }

  setBase(base: number): void {
    this.nextAvail = base & 0xffff;
    this.nextUsed = base & 0xffff;
    this.signalledUsed = undefined;
  }

  /** Use a new memory table; ring views are re-resolved on the next `ready()`. */
  setMemory(mem: GuestMemory | undefined): void {
    this.mem = mem;
    this.spare = [];
    this.unmap();
  }

  get memory(): GuestMemory | undefined {
    return this.mem;
  }

  private unmap(): void {
    this.desc = undefined;
    this.avail = undefined;
    this.usedHdr = undefined;
    this.usedRing = undefined;
  }

  /** Resolve the ring views (once per configuration); false when the rings are not inside guest memory. */
  ready(): boolean {
    if (this.desc !== undefined) return true;
    const mem = this.mem;
    const n = this.size;
    if (mem === undefined || n === 0 || this.descGpa < 0) return false;
    const d = mem.slice(this.descGpa, DESC_SIZE * n);
    const a = mem.slice(this.availGpa, 6 + 2 * n);
    const u = mem.slice(this.usedGpa, 6 + 8 * n);
    if (!d || !a || !u) return false;
    if (d.byteOffset % 4 !== 0 || a.byteOffset % 2 !== 0 || u.byteOffset % 4 !== 0) return false;
    this.desc = new Uint32Array(d.buffer, d.byteOffset, d.length / 4);
    this.avail = new Uint16Array(a.buffer, a.byteOffset, 3 + n);
    this.usedHdr = new Uint16Array(u.buffer, u.byteOffset, 3 + 4 * n);
    this.usedRing = new Uint32Array(u.buffer, u.byteOffset + 4, 2 * n);
    return true;
  }

  /** avail.idx (acquire). */
  availIdx(): number {
    return Atomics.load(this.avail!, 1);
  }

  /** Entries the driver has made available and we have not taken; -1 if the index is corrupt. */
  pending(): number {
    if (!this.ready()) return 0;
    const n = (this.availIdx() - this.nextAvail) & 0xffff;
    return n > this.size ? -1 : n;
  }

  /** Take the next head index from the avail ring (call only when pending() > 0). */
  popHead(): number {
    const head = this.avail![2 + (this.nextAvail % this.size)];
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    return head;
  }

  /** Walk the chain at `head`, translating every buffer. Never throws. */
  parseChain(head: number): ChainResult {
    const readable = this.takeList();
    const writable = this.takeList();
    const r = this.walk(head, readable, writable);
    if (!(r instanceof DescriptorChain)) {
      this.giveList(readable);
      this.giveList(writable);
    }
    return r;
  }

  /** parseChain's walk, appending to the two (empty) lists it is given. */
  private walk(head: number, readable: SegmentList, writable: SegmentList): ChainResult {
    const mem = this.mem;
    let table: Uint32Array | undefined = this.desc;
    if (mem === undefined || table === undefined) return { error: 'queue not ready', head };
    let count = this.size;
    if (!(head < count)) return { error: `head index ${head} ≥ queue size ${count}`, head };
    let ttl = count;
    let idx = head;
    let indirect = false;
    let seenWritable = false;
    let total = 0;
    let rlen = 0;
    let wlen = 0;
    let visited = 0;
    // the guest-memory window the last buffer landed in (valid for this synchronous walk:
    // the table cannot change or unmap under it)
    let wGpa = 0;
    let wEnd = 0;
    let wStepEnd = 0;
    let wBuf: Buffer | undefined;
    let wAddr = 0;
    for (;;) {
      if (!(idx < count)) return { error: `next index ${idx} out of range (${count})`, head };
      if (ttl-- <= 0) return { error: 'descriptor chain too long (loop?)', head };
      visited++;
      const w = 4 * idx;
      const lo: number = table[w];
      const hi: number = table[w + 1];
      const len: number = table[w + 2];
      const fn: number = table[w + 3];
      const flags = fn & 0xffff;
      const next = fn >>> 16;
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        // virtio 1.x 2.7.5.3.1: no INDIRECT within an indirect table, not with NEXT, len a multiple of 16
        if (indirect) return { error: 'nested indirect descriptor', head };
        if (flags & VIRTQ_DESC_F_NEXT) return { error: 'indirect descriptor with NEXT', head };
        if (len === 0 || len % DESC_SIZE !== 0) return { error: `indirect table length ${len} invalid`, head };
        const entries = len / DESC_SIZE;
        // QEMU's bound (VIRTQUEUE_MAX_SIZE) or the queue size when larger: a guest
        // cannot make one request cost more descriptors than a ring holds
        if (entries > Math.max(this.size, MAX_INDIRECT)) return { error: `indirect table of ${entries} entries`, head };
        if (hi >= HI_LIMIT) return { error: 'indirect table address out of range', head };
        const t = mem.slice(hi * 0x100000000 + lo, len);
        if (t === undefined) return { error: 'indirect table outside guest memory', head };
        // one private copy of the table: aligned, and the guest cannot change it under the walk.
        // The walk is synchronous and keeps nothing of the table, so one scratch copy serves every
        // chain (no backing store per request); it grows to the largest table seen (bounded above).
        if (indirectScratch.length < len / 4) indirectScratch = new Uint32Array(Math.max(len / 4, 2 * indirectScratch.length));
        table = indirectScratch;
        new Uint8Array(table.buffer, 0, len).set(t);
        count = entries;
        ttl = entries;
        idx = 0;
        indirect = true;
        continue;
      }
      const write = (flags & VIRTQ_DESC_F_WRITE) !== 0;
      if (write) seenWritable = true;
      else if (seenWritable) return { error: 'readable descriptor after a writable one', head };
      if (len > 0) {
        total += len;
        if (total > 0xffffffff) return { error: 'chain longer than 4 GiB', head };
        if (hi >= HI_LIMIT) return { error: 'buffer address out of range', head };
        const gpa = hi * 0x100000000 + lo;
        if (gpa >= wGpa && gpa < wStepEnd && gpa + len <= wEnd) {
          // the window segmentsInto would pick, as for the previous descriptor: no region lookup
          (write ? writable : readable).push(wBuf!, gpa - wGpa, len, wAddr + (gpa - wGpa));
        } else {
          if (!mem.segmentsInto(gpa, len, write ? writable : readable)) {
            return { error: `buffer [0x${gpa.toString(16)}, +${len}) outside guest memory`, head };
          }
          const w = mem.windowAt(gpa);
          if (w !== undefined) {
            ({ gpa: wGpa, end: wEnd, buf: wBuf, addr: wAddr } = w);
            wStepEnd = wGpa + w.step;
          }
        }
        if (write) wlen += len;
        else rlen += len;
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      idx = next;
    }
    return new DescriptorChain(head, readable, writable, rlen, wlen, visited);
  }

  /** Publish one used element and used.idx (release; full fence). */
  addUsed(head: number, len: number): void {
    const slot = this.nextUsed % this.size;
    this.usedRing![2 * slot] = head;
    this.usedRing![2 * slot + 1] = len >>> 0;
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    Atomics.store(this.usedHdr!, 1, this.nextUsed);
  }

  /** Whether the driver wants an interrupt for what was used since the last decision. */
  needsNotification(): boolean {
    if (!this.ready()) return false;
    const n = this.size;
    if (!this.eventIdx) return (Atomics.load(this.avail!, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    const usedEvent = Atomics.load(this.avail!, 2 + n);
    const newUsed = this.nextUsed;
    const old = this.signalledUsed;
    this.signalledUsed = newUsed;
    if (old === undefined) return true;
    // vring_need_event(event, new, old)
    return ((newUsed - usedEvent - 1) & 0xffff) < ((newUsed - old) & 0xffff);
  }

  /** Forget the last notification decision: the next `needsNotification` answers true. */
  resetNotification(): void {
    this.signalledUsed = undefined;
  }

  /**
   * Ask for a kick at the next avail entry (EVENT_IDX: avail_event =
   * nextAvail), then re-check: true when more entries arrived meanwhile
   * (the caller drains again, so no kick is lost).
   */
  enableNotification(): boolean {
    if (!this.ready()) return false;
    if (this.eventIdx) Atomics.store(this.usedHdr!, 2 + 4 * this.size, this.nextAvail);
    else Atomics.store(this.usedHdr!, 0, 0);
    return this.pending() !== 0;
  }

  /** Reset to the state after construction (keeps maxSize). */
  reset(): void {
    this.size = 0;
    this.descGpa = this.availGpa = this.usedGpa = -1;
    this.nextAvail = this.nextUsed = 0;
    this.eventIdx = false;
    this.signalledUsed = undefined;
    this.mem = undefined;
    this.spare = [];
    this.unmap();
  }
}
