/**
 * Byte streams over a descriptor chain: ChainReader over its device-readable
 * buffers, ChainWriter over its device-writable buffers (vm-virtio
 * `descriptor_utils.rs` Reader/Writer). They match, structurally, the
 * Reader/Writer a request/response server needs (readBytes/available;
 * write/available/bytesWritten) without this layer knowing the protocol.
 *
 * Every buffer was bounds-checked when the chain was parsed, so these only
 * index into views of guest memory. The guest may change readable bytes at
 * any moment (another vCPU), so `readBytes` always returns a private copy:
 * whatever is validated is what gets used. `readShared` returns a live view
 * when the bytes are contiguous, for payloads used once (file data).
 */
import { WouldBlock, eio, einval } from '../../common/errno';
import { RWF_NOWAIT } from '../../common/libc';
import { preadvFully } from '../../common/pread';
import { EAGAIN, EOPNOTSUPP, HostError, preadvInto } from '../sys/host';
import type { SegmentList } from './guest-memory';
import type { DescriptorChain } from './queue';

export class ChainReader {
  private seg = 0;
  private pos = 0;
  private left: number;
  private readonly segs: SegmentList;

  constructor(chain: DescriptorChain) {
    this.left = chain.readableLen;
    this.segs = chain.readSegs;
  }

  available(): number {
    return this.left;
  }

  /** `n` bytes copied out of guest memory (private: the guest cannot change them any more). */
  readBytes(n: number): Buffer {
    return this.take(n, false);
  }

  /** `n` bytes as a live view of guest memory when contiguous (a copy otherwise). */
  readShared(n: number): Buffer {
    return this.take(n, true);
  }

  private take(n: number, shared: boolean): Buffer {
    if (!(Number.isInteger(n) && n >= 0) || n > this.left) throw einval(`request too short: need ${n}, have ${this.left}`);
    const { bufs, offs, lens } = this.segs;
    while (this.seg < this.segs.length && this.pos === lens[this.seg]) {
      this.seg++;
      this.pos = 0;
    }
    this.left -= n;
    if (n === 0) return Buffer.alloc(0);
    if (shared && lens[this.seg] - this.pos >= n) {
      const o = offs[this.seg] + this.pos;
      this.pos += n;
      return bufs[this.seg].subarray(o, o + n);
    }
    const out = Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const i = this.seg;
      const k = Math.min(n - done, lens[i] - this.pos);
      const o = offs[i] + this.pos;
      bufs[i].copy(out, done, o, o + k);
      done += k;
      this.pos += k;
      if (this.pos === lens[i]) {
        this.seg++;
        this.pos = 0;
      }
    }
    return out;
  }
}

export class ChainWriter {
  private seg = 0;
  private pos = 0;
  private written = 0;
  private readonly segs: SegmentList;

  constructor(private readonly chain: DescriptorChain) {
    this.segs = chain.writeSegs;
  }

  available(): number {
    return this.chain.writableLen - this.written;
  }

  write(b: Buffer): void {
    if (b.length > this.available()) throw new RangeError(`reply overflow: ${b.length} > ${this.available()}`);
    const { bufs, offs, lens } = this.segs;
    let done = 0;
    while (done < b.length) {
      const i = this.seg;
      const k = Math.min(b.length - done, lens[i] - this.pos);
      b.copy(bufs[i], offs[i] + this.pos, done, done + k);
      done += k;
      this.pos += k;
      if (this.pos === lens[i]) {
        this.seg++;
        this.pos = 0;
      }
    }
    this.written += b.length;
  }

  bytesWritten(): number {
    return this.written;
  }

  /** Discard what was written (the bytes stay in guest memory; the used length will not cover them). */
  reset(): void {
    this.seg = 0;
    this.pos = 0;
    this.written = 0;
  }

  /**
   * preadv straight into the guest's writable descriptors: zero copy, one
   * system call for up to IOV_MAX descriptors, and no Buffer per descriptor
   * (the iovecs are built from the ranges' host addresses). With `nowait`
   * only from the page cache: WouldBlock (nothing counted as written) when
   * the bytes are not all there.
   */
  writeFromFile(fd: number, position: number, length: number, nowait = false): void {
    if (length > this.available()) throw new RangeError(`reply overflow: ${length} > ${this.available()}`);
    if (length === 0) return;
    const segs = this.segs;
    const { lens } = segs;
    const first = this.seg;
    const skip = this.pos;
    // where the writer ends up, and how many ranges the read spans
    let i = this.seg;
    let pos = this.pos;
    let left = length;
    while (left > 0) {
      const k = Math.min(left, lens[i] - pos);
      left -= k;
      pos += k;
      if (pos === lens[i]) {
        i++;
        pos = 0;
      }
    }
    const count = (pos > 0 ? i + 1 : i) - first;
    let got: number;
    if (segs.native) {
      try {
        got = preadvInto(fd, segs.addrs, lens, first, count, skip, length, position, nowait ? RWF_NOWAIT : 0);
      } catch (e) {
        if (nowait && e instanceof HostError && (e.errno === EAGAIN || e.errno === EOPNOTSUPP)) throw new WouldBlock(`file slice at ${position}`);
        throw e instanceof HostError ? eio(`file slice: preadv at ${position}: errno ${e.errno}`, e) : e;
      }
    } else if (nowait) {
      throw new WouldBlock(`file slice at ${position}`); // no page-cache-only read without the native iovecs
    } else {
      const iov: Buffer[] = [];
      let left2 = length;
      for (let j = first; j < first + count; j++) {
        const o = segs.offs[j] + (j === first ? skip : 0);
        const k = Math.min(left2, lens[j] - (j === first ? skip : 0));
        iov.push(segs.bufs[j].subarray(o, o + k));
        left2 -= k;
      }
      got = preadvFully(fd, iov, position);
    }
    if (got < length) throw eio(`file slice: ${got} of ${length} bytes at ${position} (file shorter than its index says)`);
    this.seg = i;
    this.pos = pos;
    this.written += length;
  }
}
