/**
 * The vhost-user frontend-request state machine (rust-vmm
 * `BackendReqHandler` + vhost-user-backend `VhostUserHandler`): feature
 * negotiation, memory table, ring setup and ring state. One handler per
 * connection; `handle()` consumes one message (header + payload + fds) and
 * returns the reply bytes to send, if any.
 *
 * Fd ownership: every fd attached to a message is either installed (kick,
 * call, err, backend channel), mapped and closed (memory regions) or closed
 * before `handle()` returns.
 *
 * Error policy (architecture-anchors E.3): a request with a bad payload is
 * refused — nack (u64 1) when REPLY_ACK asked for an answer, a log line
 * otherwise. A request whose reply cannot be produced (GET_* with a bad
 * payload), an unknown GET-style request, or a malformed header ends the
 * connection (`fatal`).
 */
import * as fs from 'node:fs';
import { log } from '../../common/log';
import { closeFd } from '../sys/host';
import {
  FrontendReq, MAX_MEM_TABLE_REGIONS, type MemoryRegionDesc, type Message, PROTOCOL_F_BACKEND_REQ,
  PROTOCOL_F_CONFIGURE_MEM_SLOTS, PROTOCOL_F_MQ, PROTOCOL_F_REPLY_ACK, REPLY_FLAGS, VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_NEED_REPLY_MASK, VIRTIO_RING_F_EVENT_IDX, VhostUserError, VhostUserMemory, VhostUserSingleMemRegion,
  VhostUserU64, VhostUserVringAddr, VhostUserVringState, decodeVringFile, encodeMessage, reqName,
} from '../protocol/message';
import { DEFAULT_WINDOW_STEP, GuestMemory, MemoryRegion, type RegionSpec, safeNumber } from '../virtio/guest-memory';
import type { VhostUserBackend } from './backend';
import { Vring } from './vring';

/** Protocol features this handler implements. */
export const HANDLER_PROTOCOL_FEATURES = PROTOCOL_F_MQ | PROTOCOL_F_REPLY_ACK | PROTOCOL_F_BACKEND_REQ | PROTOCOL_F_CONFIGURE_MEM_SLOTS;
/** GET_MAX_MEM_SLOTS answer (as virtiofsd; Kata uses 10 slots). */
export const MAX_MEM_SLOTS = 32;
/** How long GET_VRING_BASE waits for requests in flight before stopping the ring anyway. */
export const STOP_TIMEOUT_MS = 5000;

export interface HandlerOptions {
  /** guest-memory window step (tests use small steps to exercise window splits) */
  windowStep?: number;
  stopTimeoutMs?: number;
}

export interface HandleResult {
  /** bytes to send back (header + payload) */
  reply?: Buffer;
  /** end the connection after sending `reply` */
  close?: boolean;
}

/** Requests answered with a payload of their own (never with a REPLY_ACK ack). */
const REPLYING = new Set<number>([
  FrontendReq.GET_FEATURES, FrontendReq.GET_PROTOCOL_FEATURES, FrontendReq.GET_QUEUE_NUM,
  FrontendReq.GET_VRING_BASE, FrontendReq.GET_MAX_MEM_SLOTS, FrontendReq.GET_CONFIG,
  FrontendReq.GET_INFLIGHT_FD, FrontendReq.GET_STATUS, FrontendReq.POSTCOPY_ADVISE,
]);

/** Consumes a message's fds: take() hands them out, the rest are closed by closeRest(). */
class Fds {
  private taken = 0;
  constructor(private readonly fds: number[]) {}
  get count(): number { return this.fds.length; }
  expect(req: string, n: number): void {
    if (this.fds.length !== n) throw new VhostUserError(`${req}: ${this.fds.length} fds attached, expected ${n}`);
  }
  take(): number {
    if (this.taken >= this.fds.length) throw new VhostUserError('missing fd');
    return this.fds[this.taken++];
  }
  closeRest(): void {
    while (this.taken < this.fds.length) closeFd(this.fds[this.taken++]);
  }
}

function isEventFd(fd: number): boolean {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[eventfd]';
  } catch {
    return false;
  }
}

export class VhostUserHandler {
  readonly vrings: Vring[];
  ackedFeatures = 0n;
  ackedProtocolFeatures = 0n;
  owner = false;
  memory: GuestMemory | undefined;
  private backendReqFd = -1;
  private disposed = false;
  private readonly windowStep: number;
  private readonly stopTimeoutMs: number;

  constructor(private readonly backend: VhostUserBackend, opts: HandlerOptions = {}) {
    this.windowStep = opts.windowStep ?? DEFAULT_WINDOW_STEP;
    this.stopTimeoutMs = opts.stopTimeoutMs ?? STOP_TIMEOUT_MS;
    this.vrings = Array.from({ length: backend.numQueues }, (_, i) =>
      new Vring(i, backend.maxQueueSize, (v) => {
        try {
          backend.handleQueueEvent(v);
        } catch (e) {
          log.error({ queue: i, err: (e as Error).stack }, 'vhost-user: queue handler threw');
        }
      }));
  }

  /** Virtio features offered: the device's plus PROTOCOL_FEATURES. */
  offeredFeatures(): bigint {
    return this.backend.features() | VHOST_USER_F_PROTOCOL_FEATURES;
  }

  offeredProtocolFeatures(): bigint {
    return HANDLER_PROTOCOL_FEATURES & (this.backend.protocolFeatures?.() ?? HANDLER_PROTOCOL_FEATURES);
  }

  private get replyAck(): boolean {
    return (this.ackedProtocolFeatures & PROTOCOL_F_REPLY_ACK) !== 0n;
  }

  /** Handle one message. Never throws; the message's fds are always consumed. */
  async handle(msg: Message): Promise<HandleResult> {
    const fds = new Fds(msg.fds);
    const req = msg.hdr.request;
    const name = reqName(req);
    const needReply = (msg.hdr.flags & VHOST_USER_NEED_REPLY_MASK) !== 0;
    try {
      const payload = await this.dispatch(req, name, msg.body, fds);
      if (this.disposed) return { close: true };
      if (payload !== undefined) return { reply: encodeMessage(req, REPLY_FLAGS, payload) };
      if (needReply && this.replyAck) return { reply: encodeMessage(req, REPLY_FLAGS, VhostUserU64.encode(0n)) };
      return {};
    } catch (e) {
      const fatal = REPLYING.has(req) || (e instanceof VhostUserError && e.fatal) || !(e instanceof Error);
      log.warn({ req: name, err: (e as Error)?.message ?? String(e), fatal }, 'vhost-user: request refused');
      if (fatal || this.disposed) return { close: true };
      if (needReply && this.replyAck) return { reply: encodeMessage(req, REPLY_FLAGS, VhostUserU64.encode(1n)) };
      return {};
    } finally {
      fds.closeRest();
    }
  }

  private vring(req: string, index: number): Vring {
    const v = this.vrings[index];
    if (v === undefined) throw new VhostUserError(`${req}: vring index ${index} out of range (${this.vrings.length} queues)`);
    return v;
  }

  /** Returns the reply payload for replying requests, undefined otherwise; throws to refuse. */
  private async dispatch(req: number, name: string, body: Buffer, fds: Fds): Promise<Buffer | undefined> {
    const noPayload = () => {
      if (body.length !== 0) throw new VhostUserError(`${name}: unexpected ${body.length}-byte payload`);
    };
    if (req !== FrontendReq.SET_MEM_TABLE && req !== FrontendReq.ADD_MEM_REG && req !== FrontendReq.REM_MEM_REG &&
      req !== FrontendReq.SET_VRING_KICK && req !== FrontendReq.SET_VRING_CALL && req !== FrontendReq.SET_VRING_ERR &&
      req !== FrontendReq.SET_BACKEND_REQ_FD) {
      fds.expect(name, 0);
    }
    switch (req) {
      case FrontendReq.GET_FEATURES:
        noPayload();
        return VhostUserU64.encode(this.offeredFeatures());
      case FrontendReq.SET_FEATURES: {
        const f = VhostUserU64.decode(name, body);
        const extra = f & ~this.offeredFeatures();
        if (extra !== 0n) throw new VhostUserError(`${name}: features 0x${extra.toString(16)} were not offered`);
        this.ackedFeatures = f;
        for (const v of this.vrings) v.queue.eventIdx = (f & VIRTIO_RING_F_EVENT_IDX) !== 0n;
        // vhost-user.rst "Ring states": without PROTOCOL_FEATURES rings are enabled from the start
        if ((f & VHOST_USER_F_PROTOCOL_FEATURES) === 0n) for (const v of this.vrings) v.setEnabled(true);
        this.backend.setFeatures?.(f);
        return undefined;
      }
      case FrontendReq.SET_OWNER:
        noPayload();
        if (this.owner) throw new VhostUserError(`${name}: already owned`);
        this.owner = true;
        return undefined;
      case FrontendReq.RESET_OWNER:
        noPayload();
        this.resetDevice();
        this.owner = false;
        this.ackedFeatures = 0n;
        return undefined;
      case FrontendReq.GET_PROTOCOL_FEATURES:
        noPayload();
        return VhostUserU64.encode(this.offeredProtocolFeatures());
      case FrontendReq.SET_PROTOCOL_FEATURES: {
        const f = VhostUserU64.decode(name, body);
        const extra = f & ~this.offeredProtocolFeatures();
        if (extra !== 0n) throw new VhostUserError(`${name}: protocol features 0x${extra.toString(16)} were not offered`);
        this.ackedProtocolFeatures = f;
        return undefined;
      }
      case FrontendReq.GET_QUEUE_NUM:
        noPayload();
        return VhostUserU64.encode(BigInt(this.vrings.length));
      case FrontendReq.GET_MAX_MEM_SLOTS:
        noPayload();
        return VhostUserU64.encode(BigInt(MAX_MEM_SLOTS));
      case FrontendReq.SET_BACKEND_REQ_FD: {
        noPayload();
        fds.expect(name, 1);
        // kept (unused: no DAX) until the connection ends, so QEMU never sees its channel hang up
        closeFd(this.backendReqFd);
        this.backendReqFd = fds.take();
        return undefined;
      }
      case FrontendReq.SET_MEM_TABLE: {
        const descs = VhostUserMemory.decode(name, body, Math.min(MAX_MEM_SLOTS, MAX_MEM_TABLE_REGIONS * 4));
        fds.expect(name, descs.length);
        const specs = descs.map((d) => this.regionSpec(name, d));
        checkNoOverlap(name, specs);
        const regions: MemoryRegion[] = [];
        try {
          for (const s of specs) regions.push(MemoryRegion.map(s, fds.take(), this.windowStep));
          this.replaceMemory(new GuestMemory(regions));
        } finally {
          for (const r of regions) r.release(); // the table holds its own references
        }
        return undefined;
      }
      case FrontendReq.ADD_MEM_REG: {
        const d = VhostUserSingleMemRegion.decode(name, body);
        fds.expect(name, 1);
        const s = this.regionSpec(name, d);
        const cur = this.memory?.regions ?? [];
        if (cur.length >= MAX_MEM_SLOTS) throw new VhostUserError(`${name}: all ${MAX_MEM_SLOTS} slots in use`);
        if (cur.some((r) => r.overlaps(s))) throw new VhostUserError(`${name}: region overlaps an existing one`);
        const r = MemoryRegion.map(s, fds.take(), this.windowStep);
        try {
          this.replaceMemory(new GuestMemory([...cur, r]));
        } finally {
          r.release();
        }
        return undefined;
      }
      case FrontendReq.REM_MEM_REG: {
        const d = VhostUserSingleMemRegion.decode(name, body);
        if (fds.count > 1) throw new VhostUserError(`${name}: ${fds.count} fds attached`);
        const cur = this.memory?.regions ?? [];
        const gpa = safeNumber('guest_phys_addr', d.guestPhysAddr);
        const size = safeNumber('memory_size', d.memorySize);
        const keep = cur.filter((r) => !(r.gpa === gpa && r.size === size));
        if (keep.length === cur.length) throw new VhostUserError(`${name}: no region at 0x${gpa.toString(16)} of ${size} bytes`);
        this.replaceMemory(keep.length > 0 ? new GuestMemory(keep) : undefined);
        return undefined;
      }
      case FrontendReq.SET_VRING_NUM: {
        const s = VhostUserVringState.decode(name, body);
        const v = this.vring(name, s.index);
        if (!v.queue.setSize(s.num)) throw new VhostUserError(`${name}: size ${s.num} invalid (power of 2 ≤ ${v.queue.maxSize})`);
        return undefined;
      }
      case FrontendReq.SET_VRING_ADDR: {
        const a = VhostUserVringAddr.decode(name, body);
        const v = this.vring(name, a.index);
        const mem = this.memory;
        if (mem === undefined) throw new VhostUserError(`${name}: no memory table yet`);
        const tr = (what: string, ua: bigint): number => {
          const g = ua <= BigInt(Number.MAX_SAFE_INTEGER) ? mem.uaddrToGpa(Number(ua)) : undefined;
          if (g === undefined) throw new VhostUserError(`${name}: ${what} address 0x${ua.toString(16)} is not in any region`);
          return g;
        };
        const desc = tr('desc', a.desc);
        const used = tr('used', a.used);
        const avail = tr('avail', a.avail);
        if (!v.queue.setAddresses(desc, avail, used)) throw new VhostUserError(`${name}: misaligned ring address`);
        v.queue.setMemory(mem);
        return undefined;
      }
      case FrontendReq.SET_VRING_BASE: {
        const s = VhostUserVringState.decode(name, body);
        const v = this.vring(name, s.index);
        if (s.num > 0xffff) throw new VhostUserError(`${name}: base ${s.num} > 0xffff`);
        v.queue.setBase(s.num);
        return undefined;
      }
      case FrontendReq.GET_VRING_BASE: {
        const s = VhostUserVringState.decode(name, body);
        const v = this.vring(name, s.index);
        v.enabled = false;
        if (!(await v.whenIdle(this.stopTimeoutMs))) {
          log.warn({ queue: s.index, inflight: v.inflight }, 'vhost-user: GET_VRING_BASE: requests still in flight, their replies are dropped');
        }
        v.stop();
        return VhostUserVringState.encode({ index: s.index, num: v.queue.nextAvail });
      }
      case FrontendReq.SET_VRING_KICK:
      case FrontendReq.SET_VRING_CALL:
      case FrontendReq.SET_VRING_ERR: {
        const f = decodeVringFile(name, body);
        const v = this.vring(name, f.index);
        fds.expect(name, f.noFd ? 0 : 1);
        let fd = -1;
        if (!f.noFd) {
          fd = fds.take();
          if (!isEventFd(fd)) {
            closeFd(fd);
            throw new VhostUserError(`${name}: the attached fd is not an eventfd`);
          }
        }
        if (req === FrontendReq.SET_VRING_KICK) v.setKick(fd);
        else if (req === FrontendReq.SET_VRING_CALL) v.setCall(fd);
        else v.setErr(fd);
        return undefined;
      }
      case FrontendReq.SET_VRING_ENABLE: {
        const s = VhostUserVringState.decode(name, body);
        if ((this.ackedFeatures & VHOST_USER_F_PROTOCOL_FEATURES) === 0n) {
          throw new VhostUserError(`${name}: PROTOCOL_FEATURES not negotiated`);
        }
        const v = this.vring(name, s.index);
        if (s.num > 1) throw new VhostUserError(`${name}: enable value ${s.num}`);
        v.setEnabled(s.num === 1);
        return undefined;
      }
      case FrontendReq.RESET_DEVICE:
        noPayload();
        this.resetDevice();
        return undefined;
      default:
        throw new VhostUserError(`${name}: not supported`);
    }
  }

  private regionSpec(req: string, d: MemoryRegionDesc): RegionSpec {
    try {
      return {
        gpa: safeNumber('guest_phys_addr', d.guestPhysAddr),
        size: safeNumber('memory_size', d.memorySize),
        uaddr: safeNumber('userspace_addr', d.userspaceAddr),
        mmapOffset: safeNumber('mmap_offset', d.mmapOffset),
      };
    } catch (e) {
      throw new VhostUserError(`${req}: ${(e as Error).message}`);
    }
  }

  private replaceMemory(mem: GuestMemory | undefined): void {
    const old = this.memory;
    this.memory = mem;
    for (const v of this.vrings) v.queue.setMemory(mem);
    old?.release();
    for (const v of this.vrings) v.poke();
  }

  private resetDevice(): void {
    for (const v of this.vrings) v.dispose();
    this.backend.reset?.();
  }

  /** The connection ended: stop every ring, drop memory (unmapped once idle), close every fd. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const v of this.vrings) v.dispose();
    this.replaceMemory(undefined);
    closeFd(this.backendReqFd);
    this.backendReqFd = -1;
    this.backend.reset?.();
  }
}

function checkNoOverlap(req: string, specs: RegionSpec[]): void {
  for (let i = 0; i < specs.length; i++) {
    for (let j = i + 1; j < specs.length; j++) {
      const a = specs[i], b = specs[j];
      if ((a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size) || (a.uaddr < b.uaddr + b.size && b.uaddr < a.uaddr + a.size)) {
        throw new VhostUserError(`${req}: regions ${i} and ${j} overlap`);
      }
    }
  }
}
