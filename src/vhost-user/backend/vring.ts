/**
 * A virtqueue plus its notification fds and run state (rust-vmm
 * `VringState`): kick eventfd (watched on the main loop), call eventfd
 * (written to interrupt the guest), err eventfd (kept, unused), and the
 * enabled/started flags of the vhost-user ring-state rules.
 *
 * Devices take work with `pop()` and finish it with `complete()`. A chain
 * pins the memory table it was parsed against until it completes; a chain
 * completed after the ring was stopped (GET_VRING_BASE, disconnect) is
 * dropped rather than written into a ring the frontend has taken back.
 */
import { log, warnLimited } from '../../common/log';
import { FdWatcher } from '../../common/poll';
import { closeFd, eventfdRead, eventfdWrite } from '../sys/host';
import type { GuestMemory } from '../virtio/guest-memory';
import { DescriptorChain, SplitQueue } from '../virtio/queue';

const RESOLVED = Promise.resolve();

/** A popped chain, tied to the ring generation and memory it came from. */
export interface InflightChain {
  readonly chain: DescriptorChain;
  readonly memory: GuestMemory;
  readonly generation: number;
}

export class Vring {
  readonly queue: SplitQueue;
  kickFd = -1;
  callFd = -1;
  errFd = -1;
  /** SET_VRING_ENABLE state (or "enabled" when PROTOCOL_FEATURES was not acked) */
  enabled = false;
  /** a kick fd was installed since the last stop */
  started = false;
  /** chains popped and not yet completed */
  inflight = 0;
  private generation = 0;
  private watcher: FdWatcher | undefined;
  private signalQueued = false;
  /**
   * Set by a device while it serves a batch popped in one go: completions then
   * queue their signal (flushPendingSignal sends it once at the end) instead
   * of interrupting for each.
   */
  deferSignals = false;
  private brokenLogged = false;
  private idleWaiters: (() => void)[] = [];
  /** how often (moving average, 0..1) the next request came within the poll window of a drain */
  pollScore = 0;
  /** the window of the last pollAfterDrain, ns */
  private pollWindowNs = 0;
  /** when the ring drained with the kick re-armed (performance.now(), ms); 0: not waiting for one */
  private idleSince = 0;

  constructor(readonly index: number, maxSize: number, private readonly onKick: (v: Vring) => void) {
    this.queue = new SplitQueue(maxSize);
  }

  /** Ready to process: started, enabled and the rings are inside guest memory. */
  canProcess(): boolean {
    return this.started && this.enabled && this.queue.ready();
  }

  /** Install a kick eventfd (-1: none); the ring is started. Never changes `enabled`. */
  setKick(fd: number): void {
    this.unwatch();
    closeFd(this.kickFd);
    this.kickFd = fd;
    this.started = true;
    this.brokenLogged = false;
    if (fd >= 0) {
      this.watcher = new FdWatcher(fd, () => {
        eventfdRead(fd);
        if (this.idleSince !== 0) this.scoreKick();
        if (this.canProcess()) this.onKick(this);
      });
    }
    // a kick may already be due (entries made available before the fd arrived)
    this.poke();
  }

  setCall(fd: number): void {
    closeFd(this.callFd);
    this.callFd = fd;
    if (fd >= 0 && this.queue.ready()) {
      // completions published while there was no call fd were never signalled: decide afresh
      this.queue.resetNotification();
      this.signal();
    }
  }

  setErr(fd: number): void {
    closeFd(this.errFd);
    this.errFd = fd;
  }

  setEnabled(on: boolean): void {
    this.enabled = on;
    if (on) this.poke();
  }

  /** Process soon if there is anything to do (after enable / kick install). */
  poke(): void {
    setImmediate(() => {
      if (this.canProcess() && this.queue.pending() !== 0) this.onKick(this);
    });
  }

  /**
   * Next valid chain, or undefined when the ring is empty (notifications
   * re-enabled) or not processable. Invalid chains are completed with length 0
   * and logged, never returned.
   */
  pop(arm = true): InflightChain | undefined {
    for (;;) {
      if (!this.canProcess()) return undefined;
      const q = this.queue;
      const n = q.pending();
      if (n < 0) {
        if (!this.brokenLogged) log.warn({ queue: this.index, availIdx: q.availIdx(), nextAvail: q.nextAvail }, 'vhost-user: avail index runs ahead of the ring; queue ignored until reset');
        this.brokenLogged = true;
        return undefined;
      }
      if (n === 0) {
        if (arm && q.enableNotification()) continue;
        return undefined;
      }
      // a request the guest made after the ring went idle that no kick has scored (it came as the kick was re-armed)
      if (this.idleSince !== 0) this.scoreKick();
      const head = q.popHead();
      const r = q.parseChain(head);
      if (!(r instanceof DescriptorChain)) {
        warnLimited('vring.chain', { queue: this.index, head, err: r.error }, 'vhost-user: dropping invalid descriptor chain');
        q.addUsed(head, 0);
        this.signal();
        continue;
      }
      this.inflight++;
      return { chain: r, memory: q.memory!.acquire(), generation: this.generation };
    }
  }

  /**
   * The ring just drained (popped with `arm` false): watch the avail index
   * for up to `windowNs` with the kick still unarmed, so that requests the
   * guest makes meanwhile cost it no kick (an exit to the VMM) and cost this
   * thread no wake-up. True when entries came; false when the window passed
   * empty (the caller then re-arms the kick with pop()).
   *
   * Only while polling pays: `pollScore` follows how often the guest's next
   * request came within the window of a drain (found by the poll, or timed
   * by the kick when not polling), and the ring polls while that is at
   * least half the time. A ring used now and then (a 1 MiB dd waits ~300 us
   * for the next request; FORGETs) stops polling within a few drains.
   */
  pollAfterDrain(windowNs: number): boolean {
    if (!(windowNs > 0) || !this.canProcess()) return false;
    this.pollWindowNs = windowNs;
    this.idleSince = 0;
    const start = performance.now();
    if (this.pollScore >= 0.5) {
      const q = this.queue;
      const end = start + windowNs / 1e6;
      do {
        if (q.pending() > 0) {
          this.pollScore += (1 - this.pollScore) / 8;
          return true;
        }
      } while (performance.now() < end);
    }
    this.idleSince = start;
    return false;
  }

  /** The first request after the ring went idle (its kick, or found when the kick was re-armed): score whether a poll would have caught it. */
  private scoreKick(): void {
    const waitedNs = (performance.now() - this.idleSince) * 1e6;
    this.idleSince = 0;
    this.pollScore += ((waitedNs <= this.pollWindowNs ? 1 : 0) - this.pollScore) / 8;
  }

  /** Finish a chain: publish `len` bytes written (if the ring still runs) and signal. */
  complete(c: InflightChain, len: number): void {
    this.inflight--;
    try {
      if (c.generation === this.generation && this.queue.ready()) {
        const l = Number.isInteger(len) && len > 0 ? Math.min(len, c.chain.writableLen) : 0;
        this.queue.addUsed(c.chain.head, l);
        // the last chain in flight interrupts at once (one request at a time: no wait for
        // a batch that is not coming); otherwise completions of this turn share one signal
        if (this.inflight === 0 && !this.signalQueued && !this.deferSignals) this.flushSignal();
        else this.signal();
      }
    } finally {
      // nothing uses the chain's ranges once its reply is written: the lists serve later chains
      this.queue.recycle(c.chain);
      c.memory.release();
      if (this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** Interrupt the guest once per batch of completions, if it wants one. */
  signal(): void {
    if (this.signalQueued) return;
    this.signalQueued = true;
    // a resolved promise rather than queueMicrotask: no AsyncResource per batch
    RESOLVED.then(this.queuedSignal);
  }

  /** Send a queued signal now (a batch ended) rather than at the next microtask. */
  flushPendingSignal(): void {
    if (this.signalQueued) this.flushSignal();
  }

  /** the microtask of `signal`: nothing to do when flushPendingSignal already sent it */
  private readonly queuedSignal = (): void => {
    if (this.signalQueued) this.flushSignal();
  };

  private readonly flushSignal = (): void => {
    this.signalQueued = false;
    // No call fd yet: keep the EVENT_IDX decision for when one arrives (needsNotification consumes it).
    if (this.callFd < 0 || !this.queue.ready()) return;
    if (this.queue.needsNotification() && !eventfdWrite(this.callFd)) {
      warnLimited('vring.call', { queue: this.index }, 'vhost-user: writing the call eventfd failed');
    }
  };

  /** Resolve when no chain is in flight, or after `timeoutMs`. */
  whenIdle(timeoutMs: number): Promise<boolean> {
    if (this.inflight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== done);
        resolve(false);
      }, timeoutMs);
      const done = () => {
        clearTimeout(t);
        resolve(true);
      };
      this.idleWaiters.push(done);
    });
  }

  private unwatch(): void {
    this.watcher?.close();
    this.watcher = undefined;
  }

  /** Stop the ring (GET_VRING_BASE): no more kicks, later completions are dropped. */
  stop(): void {
    this.generation++;
    this.started = false;
    this.unwatch();
    closeFd(this.kickFd);
    this.kickFd = -1;
  }

  /** Stop and forget everything (disconnect / RESET_DEVICE). */
  dispose(): void {
    this.stop();
    this.enabled = false;
    closeFd(this.callFd);
    closeFd(this.errFd);
    this.callFd = this.errFd = -1;
    this.queue.reset();
  }
}
