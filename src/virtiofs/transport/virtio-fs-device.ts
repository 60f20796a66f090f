/**
 * The virtio-fs device over vhost-user (kata-contract §7.6, §8.1): queue 0
 * is hiprio (FORGETs), queues 1..n carry requests. Each descriptor chain is
 * one FUSE request: its readable part is the request, its writable part the
 * room for the reply. Chains are handed to FuseServer.handle: a READ of
 * cached data is answered at once, anything else asynchronously, so several
 * requests are in flight per queue and complete out of order; each completion adds a used element with len = bytes
 * written (0 for FORGET) and interrupts the guest as EVENT_IDX allows.
 *
 * Threading: everything runs on the main loop (kick eventfds watched with
 * FdWatcher). The FUSE server, the VFS and the filesystems live on the main
 * thread and are async, so a worker per queue would only add a thread hop
 * per request (see vhost-user/backend/daemon.ts).
 */
import * as v8 from 'node:v8';
import type { FuseServer } from '../fuse/server';
import type { VhostUserBackend } from '../../vhost-user/backend/backend';
import { VhostUserDaemon } from '../../vhost-user/backend/daemon';
import type { InflightChain, Vring } from '../../vhost-user/backend/vring';
import { ChainReader, ChainWriter } from '../../vhost-user/virtio/chain-io';
import {
  VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
} from '../../vhost-user/protocol/message';
import { logLimited } from '../../common/log';
import { enterRead, exitRead } from '../../common/read-epoch';

/** Offered virtio features: never RING_PACKED, IN_ORDER or ACCESS_PLATFORM (kata-contract §0.14). */
export const VIRTIO_FS_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX | VHOST_USER_F_PROTOCOL_FEATURES;
export const HIPRIO_QUEUE = 0;
/** Largest queue size accepted (QEMU's vhost-user-fs allows up to 1024; virtiofsd 32768). */
export const VIRTIO_FS_MAX_QUEUE_SIZE = 32768;
/** Requests in flight per queue before the device stops taking more from the ring. */
export const DEFAULT_MAX_INFLIGHT = 256;

export interface VirtioFsDeviceOptions {
  /** total number of queues: hiprio + request queues (default 2) */
  queues?: number;
  maxInflight?: number;
  /** how long a drained queue is watched for the next request, us (Vring.pollAfterDrain); 0 never polls */
  pollUs?: number;
}

/**
 * Default poll window after a queue drains, us: QEMU's iothreads poll up to
 * 32 us (`poll-max-ns`). NYDUS_VIRTIO_POLL_US sets it; 0 turns polling off.
 */
function defaultPollUs(env: string | undefined = process.env.NYDUS_VIRTIO_POLL_US): number {
  return env !== undefined && env !== '' ? Number(env) : DEFAULT_POLL_US;
}
const DEFAULT_POLL_US = 32;
/** batches one queue event may take by polling before the kick is re-armed and the loop runs on */
const MAX_POLLED_PER_EVENT = 64;
/** a window the guest cannot stretch: the loop is held that long at most */
const MAX_POLL_US = 1_000_000;

export class VirtioFsDevice implements VhostUserBackend {
  readonly numQueues: number;
  readonly maxQueueSize = VIRTIO_FS_MAX_QUEUE_SIZE;
  private readonly maxInflight: number;
  /** requests served (completed) since start, per queue */
  readonly served: number[];
  /** per queue: popping stopped at maxInflight, so completions must resume it */
  private readonly throttled: boolean[];
  /** poll window after a drain, ns */
  private readonly pollNs: number;

  constructor(private readonly server: FuseServer, opts: VirtioFsDeviceOptions = {}) {
    const q = opts.queues ?? 2;
    if (!(Number.isInteger(q) && q >= 2 && q <= 256)) throw new RangeError(`virtio-fs: queues must be 2..256 (hiprio + request queues), got ${q}`);
    this.numQueues = q;
    this.maxInflight = Math.max(1, opts.maxInflight ?? DEFAULT_MAX_INFLIGHT);
    this.served = new Array<number>(q).fill(0);
    this.throttled = new Array<boolean>(q).fill(false);
    const pollUs = opts.pollUs ?? defaultPollUs();
    this.pollNs = Number.isFinite(pollUs) && pollUs > 0 ? Math.min(pollUs, MAX_POLL_US) * 1000 : 0;
  }

  features(): bigint {
    return VIRTIO_FS_FEATURES;
  }

  handleQueueEvent(vring: Vring): void {
    // requests answered while this loop runs share one guest interrupt, sent when it ends
    const outer = !vring.deferSignals;
    vring.deferSignals = true;
    // requests found by polling in this call: bounded, so the loop's other work gets its turn
    let polled = 0;
    try {
      for (;;) {
        if (vring.inflight >= this.maxInflight) {
          // stopped with entries possibly left and no kick armed: resume on a completion
          this.throttled[vring.index] = true;
          return;
        }
        // a drained ring may be polled first (its kick re-armed only after): the replies go out,
        // then a short watch for the guest's next requests, which come without a kick meanwhile
        const mayPoll = outer && this.pollNs > 0 && polled < MAX_POLLED_PER_EVENT;
        let c = vring.pop(!mayPoll);
        if (c === undefined) {
          if (!mayPoll) return; // ring drained, kick re-armed (or not processable)
          vring.flushPendingSignal();
          if (vring.pollAfterDrain(this.pollNs)) {
            polled++;
            continue;
          }
          c = vring.pop();
          if (c === undefined) return;
        }
        this.serve(vring, c);
      }
    } finally {
      if (outer) {
        vring.deferSignals = false;
        vring.flushPendingSignal();
      }
    }
  }

  /** Hand a chain to the FUSE server; a READ served from cached data completes before this returns. */
  private serve(vring: Vring, c: InflightChain): void {
    let res: number | Promise<number>;
    // chunk memory this request is handed is not reused until its reply is in guest memory (common/read-epoch)
    const token = enterRead();
    try {
      res = this.server.handle(new ChainReader(c.chain), new ChainWriter(c.chain));
    } catch (e) {
      res = this.threw(vring, e);
    }
    if (typeof res === 'number') this.finish(vring, c, res, token);
    else res.then((n) => this.finish(vring, c, n, token), (e: unknown) => this.finish(vring, c, this.threw(vring, e), token));
  }

  private threw(vring: Vring, e: unknown): number {
    // handle never throws; a throw here is a bug, not guest input
    logLimited('error', 'virtiofs.threw', { queue: vring.index, err: (e as Error).stack }, 'virtio-fs: request handler threw');
    return 0;
  }

  private finish(vring: Vring, c: InflightChain, n: number, token: number): void {
    try {
      vring.complete(c, n);
    } finally {
      exitRead(token);
    }
    this.served[vring.index]++;
    // room again after a throttle: take what the guest queued meanwhile (otherwise the
    // ring was drained with the kick re-armed, and new entries come with a kick)
    if (this.throttled[vring.index] && vring.inflight < this.maxInflight && vring.canProcess()) {
      this.throttled[vring.index] = false;
      this.handleQueueEvent(vring);
    }
  }
}

export interface VirtioFsDaemonOptions extends VirtioFsDeviceOptions {
  /** vhost-user socket path (`--sock`) */
  socketPath: string;
  /** guest-memory view window step (tests) */
  windowStep?: number;
}

/**
 * V8 tiering for a request-serving daemon. Each request runs the READ path
 * (kick → pop → FUSE → VFS → RAFS → preadv → call) once; with V8's default
 * budgets those functions stay in baseline code for thousands of requests
 * (a 256 MiB read is 256), and that code costs about twice the optimized
 * path: ~55 vs ~25 us per 1 MiB READ besides the copy (measured in the
 * guest, test/bench/virtiofs.bench.ts). A smaller interrupt budget and a
 * shorter wait after IC changes let the hot path tier up within the first
 * few hundred requests, for some more compile work at start. Set once per
 * process, when a vhost-user daemon starts (tiering flags are read at run time).
 */
const TIERING_FLAGS = ['--interrupt-budget=16384', '--minimum-invocations-after-ic-update=50'];
let tieringSet = false;

function tuneTiering(): void {
  if (tieringSet) return;
  tieringSet = true;
  for (const f of TIERING_FLAGS) v8.setFlagsFromString(f);
}

/** The vhost-user-fs backend QEMU's `vhost-user-fs-pci` connects to. */
export class VirtioFsDaemon {
  readonly device: VirtioFsDevice;
  readonly vhost: VhostUserDaemon;

  constructor(server: FuseServer, opts: VirtioFsDaemonOptions) {
    this.device = new VirtioFsDevice(server, opts);
    this.vhost = new VhostUserDaemon(this.device, { socketPath: opts.socketPath, windowStep: opts.windowStep });
  }

  /** Resolves once the socket is bound and listening. */
  start(): Promise<void> {
    tuneTiering();
    return this.vhost.start();
  }

  stop(): void {
    this.vhost.stop();
  }
}
