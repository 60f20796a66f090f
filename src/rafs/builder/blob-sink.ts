/**
 * Writes a blob file behind the builder's main thread (BlobWriter with
 * `useSink`): bytes are hashed (sha256, the blob id) and written by libuv's
 * thread pool (`fs.writev` at their offset, one write at a time, in order;
 * the hash one update at a time, in order, beside the writes: digest.ts
 * `sha256Stream`), without being copied (small buffers are copied together
 * for the hash, one pool call for many): a buffer given to `write` must stay
 * unchanged until `whenWritten` says it is written and hashed (the chunk
 * pipeline's answers go back to their worker only then). At most
 * MAX_PENDING bytes are on their way: `room()` waits until there is room.
 *
 * The hash on the pool, not here: here it was ~0.08 s of a 256 MiB build's
 * ~0.45 s on the thread that also walks the tree, hands out the chunks and
 * writes the bootstrap.
 */
import * as fs from 'node:fs';
import type { Sha256Stream } from '../../common/digest';
import { ErrnoError } from '../../common/errno';

/**
 * (16 MiB kept a 256 MiB build's chunk worker making ~40 answers of ~1.25 MiB, each
 * faulted in fresh; 8 MiB ~26, 0.83 CPU-s against 0.86 in alternating runs)
 */
const MAX_PENDING = 8 << 20;
/** buffers per writev (IOV_MAX is 1024 on Linux) */
const MAX_IOV = 1024;
/** buffers smaller than this are copied into the hash's staging buffer (one pool call for many small chunks) */
const HASH_COPY_BELOW = 64 << 10;
/** the staging buffer's size */
const HASH_STAGE = 1 << 20;
/** buffers next to each other in memory hashed in one call: up to this much */
const HASH_MERGE_MAX = 8 << 20;

/** a buffer waiting for its hash: `end` is the file offset after it; not `hashed`: passed over (the raw blob.digest array) */
interface HashEntry { b: Buffer; end: number; hashed: boolean }

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
  /** buffers given to `write` whose hash is not started yet, in order (async hash only) */
  private hashQueue: HashEntry[] = [];
  private hashQueuePos = 0;
  /** file offset up to which the hash needs no buffer any more */
  private hashedEnd: number;
  private hashing = false;
  /** the buffer being hashed on the pool (held here until its update is over, whatever else lets it go) */
  private hashingNow?: Buffer;
  private stage?: Buffer;

  /**
   * `start`: the offset in the file of the first byte to come; `hash`: the
   * blob's sha256 so far (updated here from now on).
   */
  constructor(private readonly fd: number, private readonly what: string, start: number, private readonly hash: Sha256Stream) {
    this.queuedEnd = start;
    this.written = start;
    this.hashedEnd = start;
  }

  /** Append `b` (hashed unless `hashed` is false); it must stay unchanged until written. */
  write(b: Buffer, hashed: boolean): void {
    if (this.error) throw this.error;
    if (this.closed) throw new ErrnoError('EIO', `blob ${this.what} already closed`);
    if (b.length === 0) return;
    this.queue.push(b);
    this.queuedEnd += b.length;
    if (!this.hash.async) {
      if (hashed) this.hash.update(b);
      this.hashedEnd = this.queuedEnd;
    } else {
      this.hashQueue.push({ b, end: this.queuedEnd, hashed });
    }
  }

  /** Start the next hash update on the pool, if none is going on. */
  private pumpHash(): void {
    if (this.hashing || this.error) return;
    const q = this.hashQueue;
    let i = this.hashQueuePos;
    // passed over: what is not hashed
    while (i < q.length && !q[i].hashed) this.hashedEnd = q[i++].end;
    if (i === q.length) {
      this.hashQueue = [];
      this.hashQueuePos = 0;
      return;
    }
    let data: Buffer;
    let end: number;
    if (q[i].b.length >= HASH_COPY_BELOW) {
      // with the big ones right after it in the same memory (a chunk group's answer): one call
      const first = q[i].b;
      let len = first.length;
      end = q[i].end;
      i++;
      while (i < q.length && q[i].hashed && len < HASH_MERGE_MAX && q[i].b.buffer === first.buffer && q[i].b.byteOffset === first.byteOffset + len) {
        len += q[i].b.length;
        end = q[i].end;
        i++;
      }
      data = len === first.length ? first : Buffer.from(first.buffer, first.byteOffset, len);
    } else {
      // small ones copied together (they are then free at once)
      const stage = (this.stage ??= Buffer.allocUnsafeSlow(HASH_STAGE));
      let n = 0;
      while (i < q.length && (!q[i].hashed || (q[i].b.length < HASH_COPY_BELOW && n + q[i].b.length <= HASH_STAGE))) {
        if (q[i].hashed) n += q[i].b.copy(stage, n);
        this.hashedEnd = q[i].end;
        i++;
      }
      data = stage.subarray(0, n);
      end = this.hashedEnd;
    }
    this.hashQueuePos = i;
    if (i > 4096) {
      this.hashQueue = q.slice(i);
      this.hashQueuePos = 0;
    }
    this.hashing = true;
    this.hashingNow = data;
    this.hash.updateAsync(data, (err) => {
      this.hashing = false;
      this.hashingNow = undefined;
      if (err) { this.fail(err); return; }
      this.hashedEnd = end;
      this.progress();
      this.pumpHash();
      if (!this.busy()) for (const w of this.idleWaiters.splice(0)) w();
    });
    // the copied ones are free now
    this.progress();
  }

  /** a write or a hash update going on or waiting */
  private busy(): boolean {
    return this.writing || this.hashing || this.hashQueuePos < this.hashQueue.length;
  }

  /** offset up to which the buffers given are written and hashed */
  private get released(): number {
    return Math.min(this.written, this.hashedEnd);
  }

  /** Start writing what was given (called after each group of chunks and before waiting). */
  flush(): void {
    this.pumpHash();
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
      if (!this.busy()) for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  private progress(): void {
    const done = this.released;
    while (this.waiters.length > 0 && this.waiters[0].end <= done) this.waiters.shift()!.cb();
    if (this.queuedEnd - done <= MAX_PENDING) for (const w of this.roomWaiters.splice(0)) w();
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
    if (this.error || this.released >= this.queuedEnd) cb();
    else this.waiters.push({ end: this.queuedEnd, cb });
  }

  /** Resolves once the bytes on their way are at most the bound. */
  room(): Promise<void> {
    this.flush();
    if (this.error) return Promise.reject(this.error);
    if (this.queuedEnd - this.released <= MAX_PENDING) return Promise.resolve();
    return new Promise<void>((resolve) => this.roomWaiters.push(resolve)).then(() => { if (this.error) throw this.error; });
  }

  /** sha256 of the hashed bytes given so far. */
  async digest(): Promise<Buffer> {
    await this.idle();
    if (this.error) throw this.error;
    return this.hash.peek();
  }

  /** Resolves once no write or hash update is going on or waiting (all done, or failed). */
  private idle(): Promise<void> {
    this.flush();
    if (this.error ? !this.writing && !this.hashing : !this.busy()) return Promise.resolve();
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
    this.hashQueue = [];
    this.hashQueuePos = 0;
    while (this.writing || this.hashing) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    for (const w of this.waiters.splice(0)) w.cb();
  }
}
