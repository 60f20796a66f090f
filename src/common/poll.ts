/**
 * Readiness of a raw fd on the main libuv loop (koffi.node.poll, a uv_poll
 * handle). Wraps koffi's undocumented API once: the callback really receives
 * (status, events), the handle must be strongly referenced, and a second
 * poll on the same fd aborts the process — so one FdWatcher per fd.
 */
import koffi from 'koffi';

type Handle = { start(cb: (...a: unknown[]) => void): void; stop(): void; close(): void; unref(): void; ref(): void };

export class FdWatcher {
  private handle: Handle | undefined;
  private running = false;

  constructor(readonly fd: number, private readonly onReadable: () => void) {
    const cb = () => this.onReadable();
    this.handle = (koffi.node.poll as unknown as (fd: number, o: object, cb: (...a: unknown[]) => void) => Handle)(fd, { readable: true }, cb);
    this.running = true;
  }

  /** Stop delivering events until resume(). */
  pause(): void {
    if (this.handle && this.running) { this.handle.stop(); this.running = false; }
  }

  resume(): void {
    if (this.handle && !this.running) { this.handle.start(() => this.onReadable()); this.running = true; }
  }

  close(): void {
    if (this.handle) { this.handle.close(); this.handle = undefined; this.running = false; }
  }
}
