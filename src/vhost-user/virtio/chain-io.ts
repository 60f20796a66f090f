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
import { eio, einval } from '../../common/errno';
import { preadvFully } from '../../common/pread';
import type { DescriptorChain } from './queue';

export class ChainReader {
  private seg = 0;
  private pos = 0;
  private left: number;

  constructor(private readonly chain: DescriptorChain) {
    this.left = chain.readableLen;
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
    const segs = this.chain.readable;
    while (this.seg < segs.length && this.pos === segs[this.seg].length) {
      this.seg++;
      this.pos = 0;
    }
    this.left -= n;
    if (n === 0) return Buffer.alloc(0);
    const cur = segs[this.seg];
    if (shared && cur.length - this.pos >= n) {
      const b = cur.subarray(this.pos, this.pos + n);
      this.pos += n;
      return b;
    }
    const out = Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const s = segs[this.seg];
      const k = Math.min(n - done, s.length - this.pos);
      s.copy(out, done, this.pos, this.pos + k);
      done += k;
      this.pos += k;
      if (this.pos === s.length) {
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

  constructor(private readonly chain: DescriptorChain) {}

  available(): number {
    return this.chain.writableLen - this.written;
  }

  write(b: Buffer): void {
    if (b.length > this.available()) throw new RangeError(`reply overflow: ${b.length} > ${this.available()}`);
    const segs = this.chain.writable;
    let done = 0;
    while (done < b.length) {
      const s = segs[this.seg];
      const k = Math.min(b.length - done, s.length - this.pos);
      b.copy(s, this.pos, done, done + k);
      done += k;
      this.pos += k;
      if (this.pos === s.length) {
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
   * preadv straight into the guest's writable descriptors (zero copy, one
   * system call for the usual page-per-descriptor READ buffers).
   */
  writeFromFile(fd: number, position: number, length: number): void {
    if (length > this.available()) throw new RangeError(`reply overflow: ${length} > ${this.available()}`);
    const segs = this.chain.writable;
    const iov: Buffer[] = [];
    let done = 0;
    while (done < length) {
      const s = segs[this.seg];
      const k = Math.min(length - done, s.length - this.pos);
      iov.push(s.subarray(this.pos, this.pos + k));
      done += k;
      this.pos += k;
      if (this.pos === s.length) {
        this.seg++;
        this.pos = 0;
      }
    }
    const got = preadvFully(fd, iov, position);
    if (got < length) throw eio(`file slice: ${got} of ${length} bytes at ${position} (file shorter than its index says)`);
    this.written += length;
  }
}
