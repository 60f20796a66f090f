/**
 * Writes a blob file behind the builder's main thread (BlobWriter with
 * `useSink`): bytes are hashed here as they come (sha256, the blob id) and
 * written by libuv's thread pool (`fs.writev` at their offset, one write at
 * a time, in order), without being copied: a buffer given to `write` must
 * stay unchanged until `whenWritten` says it is written (the chunk
 * pipeline's answers go back to their worker only then). At most
 * MAX_PENDING bytes are on their way: `room()` waits until there is room.
 */
import type { Hash } from 'node:crypto';
import * as fs from 'node:fs';
import { ErrnoError } from '../../common/errno';

const MAX_PENDING = 16 << 20;
/** buffers per writev (IOV_MAX is 1024 on Linux) */
const MAX_IOV = 1024;

export class BlobSink {
  /** buffers given to `write` and not handed to a write yet */
  private queue: Buffer[] = [];
  /** file offset after the last byte given to `write` */
  private queuedEnd: number;
  /** file offset up to which every byte is written */
  private written: number;
  private writing = false;
  /** callbacks waiting for the bytes before `end` to be written, in order of `end` */
  private readonly waiters: Array<{ end: number; cb: () => void }> = [];
  private roomWaiters: Array<() => void> = [];
  private idleWaiters: Array<() => void> = [];
  private error?: Error;
  private closed = false;

  /**
   * `start`: the offset in the file of the first byte to come; `hash`: the
   * blob's sha256 so far (updated here from now on).
   */
  constructor(private readonly fd: number, private readonly what: string, start: number, private readonly hash: Hash) {
    this.queuedEnd = start;
    this.written = start;
  }

  /** Append `b` (hashed unless `hashed` is false); it must stay unchanged until written. */
  write(b: Buffer, hashed: boolean): void {
    if (this.error) throw this.error;
    if (this.closed) throw new ErrnoError('EIO', `blob ${this.what} already closed`);
    if (b.length === 0) return;
    if (hashed) this.hash.update(b);
    this.queue.push(b);
    this.queuedEnd += b.length;
  }

  /** Start writing what was given (called after each group of chunks and before waiting). */
  flush(): void {
    if (this.writing || this.queue.length === 0 || this.error) return;
    const bufs = this.queue.length <= MAX_IOV ? this.queue : this.queue.slice(0, MAX_IOV);
    this.queue = this.queue.length <= MAX_IOV ? [] : this.queue.slice(MAX_IOV);
    this.writing = true;
    this.writeAll(bufs, this.written);
  }

  private writeAll(bufs: Buffer[], pos: number): void {
    fs.writev(this.fd, bufs, pos, (err, n) => {
      if (err) {
        this.writing = false;
        this.fail(err);
        return;
      }
      this.written = pos + n;
      // a short write: the rest of the same buffers
      let skip = n;
      let i = 0;
      while (i < bufs.length && skip >= bufs[i].length) skip -= bufs[i++].length;
      if (i < bufs.length) {
        const rest = bufs.slice(i);
        rest[0] = rest[0].subarray(skip);
        this.writeAll(rest, this.written);
        return;
      }
      this.writing = false;
      this.progress();
      this.flush();
      if (!this.writing) for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  private progress(): void {
    while (this.waiters.length > 0 && this.waiters[0].end <= this.written) this.waiters.shift()!.cb();
    if (this.queuedEnd - this.written <= MAX_PENDING) for (const w of this.roomWaiters.splice(0)) w();
  }

  private fail(e: Error): void {
    this.error ??= new ErrnoError((e as NodeJS.ErrnoException).code ?? 'EIO', `failed to write blob ${this.what}: ${e.message}`, { cause: e });
    // buffers waiting for their write are released: nothing more is written
    for (const w of this.waiters.splice(0)) w.cb();
    for (const w of this.roomWaiters.splice(0)) w();
    for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Call `cb` once every byte given so far is written (or writing failed). */
  whenWritten(cb: () => void): void {
    if (this.error || this.written >= this.queuedEnd) cb();
    else this.waiters.push({ end: this.queuedEnd, cb });
  }

  /** Resolves once the bytes on their way are at most the bound. */
  room(): Promise<void> {
    this.flush();
    if (this.error) return Promise.reject(this.error);
    if (this.queuedEnd - this.written <= MAX_PENDING) return Promise.resolve();
    return new Promise<void>((resolve) => this.roomWaiters.push(resolve)).then(() => { if (this.error) throw this.error; });
  }

  /** sha256 of the hashed bytes given so far. */
  digest(): Buffer {
    return this.hash.copy().digest();
  }

  /** Resolves once no write is going on (all written, or failed). */
  private idle(): Promise<void> {
    this.flush();
    if (!this.writing) return Promise.resolve();
    return new Promise<void>((resolve) => this.idleWaiters.push(resolve)).then(() => this.idle());
  }

  /** Final sha256, once everything is written; nothing may follow. */
  async end(): Promise<Buffer> {
    await this.idle();
    this.closed = true;
    if (this.error) throw this.error;
    return this.hash.digest();
  }

  /** Stop (to abandon the blob): resolves once no write uses the fd any more. */
  async close(): Promise<void> {
    this.closed = true;
    this.queue = [];
    while (this.writing) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    for (const w of this.waiters.splice(0)) w.cb();
  }
}
