/**
 * Recycled memory for decoded chunks (nydusd only: enableChunkArena).
 *
 * Why: every fresh Buffer that enters the main thread counts towards V8's
 * external memory, and each 64 MiB of growth starts a full garbage
 * collection; a cold read of 256 MiB cost ~10 of them, plus the page faults
 * of fresh memory. Slots of a few SharedArrayBuffer slabs are allocated
 * once, handed to the decode workers to decompress into, and used again:
 * no new memory, nothing for V8 to count (shared backing stores are not
 * counted per isolate), no faults.
 *
 * Who may use a slot, and until when:
 *  - holders that hand a chunk out to later requests (the in-memory LRU, a
 *    blob cache flight that late readers join) keep a reference: retain /
 *    release, by any view of the slot;
 *  - the producer's reference is dropped on the macrotask after delivery
 *    (releaseSoon), so every holder's retain, made in the promise callbacks
 *    of the delivery, comes first;
 *  - readers (requests) hold read-epoch tokens (common/read-epoch.ts): a slot
 *    whose references are gone is retired at the current epoch and reused
 *    only when every request that was in flight then has written its reply.
 * A slot is therefore never rewritten while a request may still copy it, nor
 * while anything can still hand it out.
 *
 * Bounded: `capBytes` of slabs at most, allocated on demand and kept; when
 * no slot is free (or a chunk is larger than a slab) callers use a fresh
 * buffer, as without the arena. Sizes are rounded up to a power of two from
 * 4 KiB to the slab size.
 *
 * Small resident set: a slab holds one size class, and is as small as
 * SLOTS_PER_SLAB slots of it allow (at least MIN_SLAB_BYTES, at most the
 * slab size): a class used only now and then (4 KiB chunks, a 256 KiB read)
 * costs 256 KiB, not a whole 8 MiB slab. A slot used before (retired, and
 * nobody can read it any more) is handed out before a never-used one, whose
 * pages are not resident yet: the memory touched stays what is in use plus
 * what the requests in flight may still read, however long the reads go on.
 * An idle arena gives the pages of slabs nothing uses back (trim).
 */
import { addressOf, discardPages } from '../../common/libc';
import { warnLimited } from '../../common/log';
import { currentEpoch, quiescent } from '../../common/read-epoch';

const MIN_CLASS_SHIFT = 12;
const PAGE = 4096;
/** A slab of a size class holds this many slots (fewer when that would pass the slab size)... */
const SLOTS_PER_SLAB = 8;
/** ...and is at least this large (64 slots of 4 KiB). */
const MIN_SLAB_BYTES = 256 << 10;
/** Periods without an allocation after which the slabs nothing uses give their pages back (trim). */
const IDLE_TICKS = 4;
const FREE = 0, USED = 1, RETIRED = 2;

interface Slot {
  slab: Slab;
  /** the whole slot */
  view: Buffer;
  refs: number;
  state: number;
  retiredAt: number;
}

interface Slab {
  sab: SharedArrayBuffer;
  shift: number;
  /** bytes of slots (the SharedArrayBuffer has a page more, for alignment) */
  bytes: number;
  /** where the slots start in `sab`: its first page boundary, when known */
  base: number;
  slots: Slot[];
  /** its pages were given back (trim) and nothing was allocated from it since */
  trimmed: boolean;
}

/** Retired slots of one size class, in retirement (epoch) order; entries whose slot moved on are skipped. */
interface RetiredQueue { items: Array<{ slot: Slot; at: number }>; head: number }

export interface ArenaStats { slabs: number; bytes: number; used: number; retired: number; free: number; allocs: number; refused: number }

export class ChunkArena {
  private readonly bySab = new Map<SharedArrayBuffer, Slab>();
  private readonly free: Slot[][] = [];
  private readonly retired: RetiredQueue[] = [];
  private readonly maxShift: number;
  private slabCount = 0;
  private slabTotal = 0;
  /** allocations served / refused (none free) */
  private hits = 0;
  private misses = 0;
  private pending: Buffer[] = [];
  private flushScheduled = false;

  private allocsSinceTrim = 0;

  /**
   * `shedEveryMs`: that often, the retired slots of each size class beyond
   * `spareBytes` give their pages back (shed), and once nothing was allocated
   * for IDLE_TICKS periods in a row, the slabs nothing uses too (trim); 0:
   * never (call them).
   */
  constructor(private readonly capBytes: number, private readonly slabBytes = 8 << 20, shedEveryMs = 0, private readonly spareBytes = 2 << 20) {
    if (!Number.isInteger(Math.log2(slabBytes)) || slabBytes < 1 << MIN_CLASS_SHIFT) throw new RangeError(`slab size ${slabBytes} is not a power of two >= 4 KiB`);
    this.maxShift = Math.log2(slabBytes);
    for (let s = 0; s <= this.maxShift; s++) { this.free.push([]); this.retired.push({ items: [], head: 0 }); }
    if (shedEveryMs > 0) {
      let idle = 0;
      this.timer = setInterval(() => {
        // the whole slabs only when nothing was allocated for a while: a busy arena keeps them
        idle = this.allocsSinceTrim === 0 ? idle + 1 : 0;
        if (idle === IDLE_TICKS) this.trim();
        this.shed(this.spareBytes);
        this.allocsSinceTrim = 0;
      }, shedEveryMs);
      this.timer.unref();
    }
  }

  private timer: NodeJS.Timeout | undefined;

  /** Stop the periodic trim (the arena stays usable). */
  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /**
   * A `size`-byte view of a free slot, referenced once (by the caller:
   * release or releaseSoon), or undefined (too large, or none free).
   */
  alloc(size: number): Buffer | undefined {
    if (!(size > 0) || size > this.slabBytes) return undefined;
    const shift = Math.max(MIN_CLASS_SHIFT, 32 - Math.clz32(size - 1));
    // memory used before first (resident already), then never-used slots, then a new slab
    const slot = this.reuse(shift) ?? this.free[shift].pop() ?? this.grow(shift);
    if (!slot) { this.misses++; return undefined; }
    this.hits++;
    this.allocsSinceTrim++;
    slot.slab.trimmed = false;
    slot.state = USED;
    slot.refs = 1;
    return size === slot.view.length ? slot.view : slot.view.subarray(0, size);
  }

  private reuse(shift: number): Slot | undefined {
    const q = this.retired[shift];
    while (q.head < q.items.length) {
      const e = q.items[q.head];
      if (e.slot.state !== RETIRED || e.slot.retiredAt !== e.at) { q.head++; continue; } // taken back meanwhile
      if (!quiescent(e.at)) break; // later entries retired later still
      q.head++;
      this.compact(q);
      return e.slot;
    }
    this.compact(q);
    return undefined;
  }

  private compact(q: RetiredQueue): void {
    if (q.head > 256 && q.head * 2 > q.items.length) { q.items = q.items.slice(q.head); q.head = 0; }
  }

  /** Bytes of a slab of size class `shift`. */
  private slabSize(shift: number): number {
    return Math.min(this.slabBytes, Math.max(MIN_SLAB_BYTES, SLOTS_PER_SLAB << shift));
  }

  private grow(shift: number): Slot | undefined {
    const bytes = this.slabSize(shift);
    if (this.slabTotal + bytes > this.capBytes) return undefined;
    // a page more, so the slots can start on a page boundary (trim gives whole pages back)
    const sab = new SharedArrayBuffer(bytes + PAGE);
    let base = 0;
    try {
      base = (PAGE - (addressOf(Buffer.from(sab, 0, 1)) % PAGE)) % PAGE;
    } catch {
      base = -1; // address unknown: never trimmed
    }
    const size = 1 << shift;
    const slab: Slab = { sab, shift, bytes, base, slots: [], trimmed: false };
    const from = Math.max(0, base);
    for (let off = 0; off < bytes; off += size) {
      slab.slots.push({ slab, view: Buffer.from(sab, from + off, size), refs: 0, state: FREE, retiredAt: 0 });
    }
    this.bySab.set(sab, slab);
    this.slabCount++;
    this.slabTotal += bytes;
    // hand out the first, keep the rest (popped from the end: lowest offsets first)
    for (let i = slab.slots.length - 1; i > 0; i--) this.free[shift].push(slab.slots[i]);
    return slab.slots[0];
  }

  /**
   * Give back the pages of the oldest retired slots nobody can read any more,
   * in each size class, keeping `spareBytes` of retired slots per class: a
   * request that was slow to answer (a reader of one slot held up the reuse
   * of every slot retired after it came) leaves the arena this much
   * resident, not all it took meanwhile (reuse takes one retired slot per
   * allocation, so the backlog would stay). Their slots are free again and
   * read as zeros. Returns the bytes given back.
   */
  shed(spareBytes: number): number {
    let bytes = 0;
    for (let shift = MIN_CLASS_SHIFT; shift <= this.maxShift; shift++) {
      const q = this.retired[shift];
      let live = 0;
      for (let i = q.head; i < q.items.length; i++) if (this.stillRetired(q.items[i])) live++;
      let excess = live - Math.floor(spareBytes / (1 << shift));
      while (excess > 0 && q.head < q.items.length) {
        const e = q.items[q.head];
        if (!this.stillRetired(e)) { q.head++; continue; }
        if (!quiescent(e.at) || e.slot.slab.base < 0) break; // later entries retired later still
        q.head++;
        excess--;
        // free either way (nobody can read it); resident still when the kernel refused
        if (discardPages(e.slot.view)) bytes += e.slot.view.length;
        e.slot.state = FREE;
        this.free[shift].push(e.slot);
      }
      this.compact(q);
    }
    return bytes;
  }

  private stillRetired(e: { slot: Slot; at: number }): boolean {
    return e.slot.state === RETIRED && e.slot.retiredAt === e.at;
  }

  /** The slot `buf` is a view of (any view: subarrays too), if it is arena memory. */
  private slotOf(buf: Uint8Array): Slot | undefined {
    const slab = this.bySab.get(buf.buffer as SharedArrayBuffer);
    if (!slab) return undefined;
    return slab.slots[(buf.byteOffset - Math.max(0, slab.base)) >>> slab.shift];
  }

  /**
   * Give back the pages of every slab nothing uses (no slot referenced, and
   * every request in flight when its slots were let go is done): they read
   * as zeros when used again. The slabs stay (views of them are still
   * around); only their memory goes. Returns the bytes given back.
   */
  trim(): number {
    let bytes = 0;
    for (const slab of this.bySab.values()) {
      if (slab.trimmed || slab.base < 0) continue;
      if (!slab.slots.every((x) => x.state === FREE || (x.state === RETIRED && quiescent(x.retiredAt)))) continue;
      const free = this.free[slab.shift];
      for (const x of slab.slots) {
        if (x.state !== RETIRED) continue;
        x.state = FREE; // its retirement entry is skipped from now on
        free.push(x);
      }
      if (discardPages(Buffer.from(slab.sab, slab.base, slab.bytes))) {
        slab.trimmed = true;
        bytes += slab.bytes;
      }
    }
    return bytes;
  }

  /**
   * Memory `buf` stands for: the whole slot when it starts one (a chunk
   * decoded into its own slot keeps the slot's rounded-up size), its length
   * otherwise (a view inside a slot, or other memory).
   */
  footprint(buf: Uint8Array): number {
    const slot = this.slotOf(buf);
    return slot && slot.view.byteOffset === buf.byteOffset ? Math.max(buf.length, slot.view.length) : buf.length;
  }

  /** Whether `buf` is arena memory. */
  owns(buf: Uint8Array): boolean {
    return this.slotOf(buf) !== undefined;
  }

  /** One more reference to the slot under `buf` (no-op for other memory). */
  retain(buf: Uint8Array): void {
    const slot = this.slotOf(buf);
    if (!slot) return;
    if (slot.state === FREE) {
      // a view kept past its slot's life: a bug, and using it again would serve another chunk's bytes
      warnLimited('arena.retain', {}, 'chunk arena: retain of a free slot ignored');
      return;
    }
    slot.state = USED;
    slot.refs++;
  }

  /** Drop a reference; the last one retires the slot at the current read epoch. */
  release(buf: Uint8Array): void {
    const slot = this.slotOf(buf);
    if (!slot) return;
    if (slot.state !== USED || slot.refs <= 0) {
      warnLimited('arena.release', {}, 'chunk arena: release of an unreferenced slot ignored');
      return;
    }
    if (--slot.refs > 0) return;
    slot.state = RETIRED;
    slot.retiredAt = currentEpoch();
    this.retired[slot.slab.shift].items.push({ slot, at: slot.retiredAt });
  }

  /**
   * release() on the next macrotask: for a producer handing `buf` out through
   * a promise, whose holders retain it in the promise's callbacks.
   */
  releaseSoon(buf: Uint8Array): void {
    if (!this.slotOf(buf)) return;
    this.pending.push(buf as Buffer);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      const all = this.pending;
      this.pending = [];
      for (const b of all) this.release(b);
    });
  }

  stats(): ArenaStats {
    const s: ArenaStats = { slabs: this.slabCount, bytes: this.slabTotal, used: 0, retired: 0, free: 0, allocs: this.hits, refused: this.misses };
    for (const slab of this.bySab.values()) {
      for (const slot of slab.slots) {
        if (slot.state === USED) s.used++;
        else if (slot.state === RETIRED) s.retired++;
        else s.free++;
      }
    }
    return s;
  }
}

let arena: ChunkArena | undefined;

/**
 * Decode chunks into recycled memory from now on (nydusd, whose transports
 * hold read-epoch tokens for every request). Without it every decoded chunk
 * is a fresh buffer.
 */
export function enableChunkArena(capBytes: number, slabBytes?: number): void {
  arena?.close();
  arena = capBytes > 0 ? new ChunkArena(capBytes, slabBytes, SHED_EVERY_MS) : undefined;
}

/** An arena sheds its retired slots beyond 2 MiB a size class this often (and trims after IDLE_TICKS idle periods). */
const SHED_EVERY_MS = 250;

/** The process's arena, when enabled. */
export function chunkArena(): ChunkArena | undefined {
  return arena;
}
