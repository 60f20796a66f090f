/**
 * A thread that writes a blob file and hashes it (blob-sink-worker.ts), so
 * that the builder's main thread only fills buffers (BlobWriter with
 * `useSink`). Buffers are handed over (transferred) in blob order and come
 * back for reuse; at most MAX_PENDING bytes are on their way at any time:
 * `room()` waits until there is room again.
 */
import type { Worker } from 'node:worker_threads';
import { ErrnoError } from '../../common/errno';
import { startWorker } from './worker-file';

export type SinkRequest =
  | { type: 'data'; buf: ArrayBuffer; len: number; hashed: boolean }
  /** sha256 of everything hashed so far */
  | { type: 'digest' }
  /** the final sha256 (nothing may follow) */
  | { type: 'end' };

export type SinkReply =
  | { type: 'written'; buf: ArrayBuffer; len: number }
  | { type: 'digest'; digest: Uint8Array }
  | { type: 'error'; message: string; code?: string };

const MAX_PENDING = 16 << 20;

export class BlobSink {
  private readonly worker: Worker;
  private pending = 0;
  private readonly free: ArrayBuffer[] = [];
  private readonly waiters: Array<{ resolve: (d: Buffer) => void; reject: (e: Error) => void }> = [];
  private roomWaiter?: () => void;
  private error?: Error;

  constructor(fd: number, private readonly what: string) {
    this.worker = startWorker('blob-sink-worker', { fd });
    this.worker.on('message', (r: SinkReply) => this.onReply(r));
    this.worker.on('error', (e) => this.fail(e));
    this.worker.on('exit', () => this.fail(new Error('blob writer thread exited')));
  }

  private fail(e: Error): void {
    this.error ??= e instanceof ErrnoError ? e : new ErrnoError('EIO', `failed to write blob ${this.what}: ${e.message}`, { cause: e });
    for (const w of this.waiters.splice(0)) w.reject(this.error);
    this.roomWaiter?.();
  }

  private onReply(r: SinkReply): void {
    if (r.type === 'written') {
      this.pending -= r.len;
      if (r.buf.byteLength > 0 && this.free.length < 4) this.free.push(r.buf);
      if (this.pending <= MAX_PENDING && this.roomWaiter) { const w = this.roomWaiter; this.roomWaiter = undefined; w(); }
      return;
    }
    if (r.type === 'error') {
      this.fail(new ErrnoError(r.code ?? 'EIO', `failed to write blob ${this.what}: ${r.message}`));
      return;
    }
    this.waiters.shift()?.resolve(Buffer.from(r.digest.buffer, r.digest.byteOffset, r.digest.byteLength));
  }

  /** A buffer of at least `size` bytes to fill and `send` (reused when one came back). */
  buffer(size: number): Buffer {
    const i = this.free.findIndex((b) => b.byteLength >= size);
    if (i >= 0) return Buffer.from(this.free.splice(i, 1)[0]);
    return Buffer.allocUnsafeSlow(size);
  }

  /** Append the first `len` bytes of `b` (a `buffer()`; it is handed over). */
  send(b: Buffer, len: number, hashed: boolean): void {
    if (this.error) throw this.error;
    this.pending += len;
    const req: SinkRequest = { type: 'data', buf: b.buffer as ArrayBuffer, len, hashed };
    this.worker.postMessage(req, [req.buf]);
  }

  /** Resolves once the bytes on their way are at most the bound. */
  room(): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    if (this.pending <= MAX_PENDING) return Promise.resolve();
    return new Promise<void>((resolve) => { this.roomWaiter = resolve; }).then(() => { if (this.error) throw this.error; });
  }

  private ask(type: 'digest' | 'end'): Promise<Buffer> {
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.worker.postMessage({ type } satisfies SinkRequest);
    });
  }

  /** sha256 of the hashed bytes sent so far (once they are written). */
  digest(): Promise<Buffer> { return this.ask('digest'); }

  /** Final sha256, once everything is written; the thread is stopped. */
  async end(): Promise<Buffer> {
    try {
      return await this.ask('end');
    } finally {
      await this.close();
    }
  }

  /** Stop the thread (after `end`, or to abandon the blob). */
  async close(): Promise<void> {
    this.worker.removeAllListeners('exit');
    await this.worker.terminate();
  }
}
