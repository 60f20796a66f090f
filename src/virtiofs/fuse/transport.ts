/**
 * What the FUSE server needs from a transport: a Reader over the request
 * bytes and a Writer over the reply room. /dev/fuse hands the server one
 * request buffer and takes one reply buffer (BufferReader / BufferWriter
 * below); virtio-fs hands it a descriptor chain whose readable and writable
 * descriptors are scattered over guest memory (implemented in
 * virtiofs/transport on top of these interfaces).
 *
 * Design rules that keep a scatter/gather implementation cheap:
 *  - The server reads the in-header, then the whole request body once with
 *    `readBytes`; an implementation returns a view when the bytes are
 *    contiguous and copies only when they cross descriptors.
 *  - The server always knows the full reply length before it writes the
 *    out-header, so a Writer is append-only: the header is the first
 *    `write`, followed by the payload pieces (READ gathers the filesystem's
 *    buffers straight into the writer, no concatenation).
 *  - Buffers returned by `readBytes` may alias transport memory that is
 *    reused after the request completes; the server and filesystems must
 *    copy anything they keep beyond the request.
 */
import { einval } from '../../common/errno';
import { log } from '../../common/log';
import { preadFully } from '../../common/pread';

export interface Reader {
  /** bytes not yet consumed */
  available(): number;
  /**
   * Consume exactly `n` bytes. Returns a view when contiguous, a copy when
   * the bytes span several segments. Throws EINVAL if fewer than `n` remain.
   */
  readBytes(n: number): Buffer;
}

export interface Writer {
  /** room left, in bytes (0 for a chain without writable descriptors) */
  available(): number;
  /**
   * Append all of `b`. Throws (any error) if it does not fit; the server
   * checks `available()` first, so a throw is a bug, not a protocol event.
   */
  write(b: Buffer): void;
  /** bytes appended so far (the used length for the ring / the write(2) size) */
  bytesWritten(): number;
  /**
   * Optional: append `length` bytes read from `fd` at `position` straight into
   * the reply memory (no staging copy). Short files are zero-filled (logged).
   */
  writeFromFile?(fd: number, position: number, length: number): void;
}

export class BufferReader implements Reader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  available(): number {
    return this.buf.length - this.pos;
  }

  readBytes(n: number): Buffer {
    if (!(n >= 0) || n > this.buf.length - this.pos) throw einval(`request too short: need ${n}, have ${this.buf.length - this.pos}`);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
}

/** Writer into a preallocated reply buffer (flushed with one write(2)). */
export class BufferWriter implements Writer {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  available(): number {
    return this.buf.length - this.pos;
  }

  write(b: Buffer): void {
    if (b.length > this.buf.length - this.pos) throw new RangeError(`reply overflow: ${b.length} > ${this.buf.length - this.pos}`);
    b.copy(this.buf, this.pos);
    this.pos += b.length;
  }

  bytesWritten(): number {
    return this.pos;
  }

  writeFromFile(fd: number, position: number, length: number): void {
    if (length > this.buf.length - this.pos) throw new RangeError(`reply overflow: ${length} > ${this.buf.length - this.pos}`);
    const got = preadFully(fd, this.buf.subarray(this.pos, this.pos + length), position);
    if (got < length) log.error({ fd, position, length, got }, 'short read from a file slice; zero-filled');
    this.pos += length;
  }

  /** The reply written so far (a view). */
  bytes(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}
