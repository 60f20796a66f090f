/**
 * What the FUSE server needs from a transport: a Reader over the request
 * bytes and a Writer over the reply room. /dev/fuse hands the server one
 * request buffer and takes one reply buffer (BufferReader / BufferWriter
 * below); virtio-fs hands it a descriptor chain whose readable and writable
 * descriptors are scattered over guest memory (implemented in
 * virtiofs/transport on top of these interfaces).
 *
 * The request-copy discipline (a peer may rewrite its request memory at any
 * moment, e.g. a guest vCPU while virtio-fs serves the chain):
 *  - `readBytes` returns bytes the peer can no longer change: a private copy
 *    when the transport's memory is shared with the peer (virtio-fs guest
 *    memory), a view when it is the daemon's own (the /dev/fuse request
 *    buffer, filled by the kernel's copy). The server reads the in-header and
 *    every request body this way, exactly once, and hands the filesystems
 *    only those bytes: a name is validated and used as the very same bytes.
 *  - `readShared` may return a live view of peer memory. Only the WRITE
 *    payload goes this way (file data, used once, never interpreted).
 *
 * Replies: a Writer is append-only, and `reset` discards everything written
 * so far. The server knows the full reply length before it writes the
 * out-header (READ gathers the filesystem's pieces straight into the writer);
 * when anything fails after the first byte went out, the server resets the
 * writer and answers a bare error header, so no reply is ever half a success.
 *  - Buffers returned by `readBytes` may alias transport memory that is
 *    reused after the request completes; the server and filesystems must
 *    copy anything they keep beyond the request.
 */
import { WouldBlock, eio, einval } from '../../common/errno';
import { WOULD_BLOCK, preadFully, preadFullyAsync, preadFullyNowait } from '../../common/pread';

export interface Reader {
  /** bytes not yet consumed */
  available(): number;
  /**
   * Consume exactly `n` bytes into memory the peer cannot change any more
   * (see the request-copy discipline above). Throws EINVAL if fewer than `n`
   * remain.
   */
  readBytes(n: number): Buffer;
  /**
   * Consume exactly `n` bytes that may stay shared with the peer (a view of
   * its memory). Only for payloads used once and never interpreted (WRITE
   * data). Throws EINVAL if fewer than `n` remain.
   */
  readShared(n: number): Buffer;
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
  /** Discard everything written: the next `write` starts the reply again. */
  reset(): void;
  /**
   * Optional: append `length` bytes read from `fd` at `position` straight into
   * the reply memory (no staging copy). A read error, or a file shorter than
   * `position + length`, throws EIO: the bytes would not be the file's.
   * `nowait`: only from the page cache, never waiting for the disk (the
   * caller is the event loop): WouldBlock when the bytes are not all there,
   * and the reply is then started again (reset) with them read elsewhere.
   */
  writeFromFile?(fd: number, position: number, length: number, nowait?: boolean): void;
}

export class BufferReader implements Reader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  available(): number {
    return this.buf.length - this.pos;
  }

  /** A view: the buffer is the daemon's own (the kernel copied the request into it). */
  readBytes(n: number): Buffer {
    if (!(Number.isInteger(n) && n >= 0) || n > this.buf.length - this.pos) throw einval(`request too short: need ${n}, have ${this.buf.length - this.pos}`);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  readShared(n: number): Buffer {
    return this.readBytes(n);
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

  reset(): void {
    this.pos = 0;
  }

  writeFromFile(fd: number, position: number, length: number, nowait = false): void {
    if (length > this.buf.length - this.pos) throw new RangeError(`reply overflow: ${length} > ${this.buf.length - this.pos}`);
    readSlice(fd, this.buf.subarray(this.pos, this.pos + length), position, nowait);
    this.pos += length;
  }

  /** The reply written so far (a view). */
  bytes(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

/**
 * Writer that gathers the reply instead of copying it: `write` keeps a view
 * of each buffer (chunk data, headers), so the transport hands the kernel the
 * pieces with one writev(2) and no copy in the daemon. File slices are read
 * into `scratch` (the one staging copy a file needs). Callers must not change
 * a buffer after writing it until the reply has been sent: the server writes
 * only fresh buffers, chunk data (never modified) and request views (kept
 * until the reply is out).
 */
export class GatherWriter implements Writer {
  private pos = 0;
  private used = 0;
  private readonly iov: Buffer[] = [];

  /** `limit`: the reply room; `scratch`: staging memory for file slices (at least `limit` bytes to never fall short). */
  constructor(private readonly limit: number, private readonly scratch: Buffer) {}

  available(): number {
    return this.limit - this.pos;
  }

  write(b: Buffer): void {
    if (b.length > this.limit - this.pos) throw new RangeError(`reply overflow: ${b.length} > ${this.limit - this.pos}`);
    if (b.length === 0) return;
    this.iov.push(b);
    this.pos += b.length;
  }

  bytesWritten(): number {
    return this.pos;
  }

  reset(): void {
    this.pos = 0;
    this.used = 0;
    this.iov.length = 0;
  }

  writeFromFile(fd: number, position: number, length: number, nowait = false): void {
    if (length > this.limit - this.pos) throw new RangeError(`reply overflow: ${length} > ${this.limit - this.pos}`);
    // scratch is as large as the room, so what fits the room fits the scratch
    const dst = length <= this.scratch.length - this.used ? this.scratch.subarray(this.used, this.used + length) : Buffer.allocUnsafe(length);
    readSlice(fd, dst, position, nowait);
    if (dst.buffer === this.scratch.buffer) this.used += length;
    this.iov.push(dst);
    this.pos += length;
  }

  /** The reply's pieces, in order (views; valid until the reply is sent). */
  pieces(): Buffer[] {
    return this.iov;
  }
}

/**
 * `dst.length` bytes of `fd` at `position` (a file slice of a reply):
 * EIO when the file is shorter; with `nowait` only from the page cache
 * (WouldBlock otherwise).
 */
export function readSlice(fd: number, dst: Buffer, position: number, nowait: boolean): void {
  const got = nowait ? preadFullyNowait(fd, dst, position) : preadFully(fd, dst, position);
  if (got === WOULD_BLOCK) throw new WouldBlock(`file slice at ${position}`);
  if (got < dst.length) throw eio(`file slice: ${got} of ${dst.length} bytes at ${position} (file shorter than its index says)`);
}

/** A file slice of a reply read on the thread pool: EIO when the file is shorter. */
export async function readSliceOffLoop(fd: number, position: number, length: number): Promise<Buffer> {
  const dst = Buffer.allocUnsafe(length);
  const got = await preadFullyAsync(fd, dst, position);
  if (got < length) throw eio(`file slice: ${got} of ${length} bytes at ${position} (file shorter than its index says)`);
  return dst;
}
