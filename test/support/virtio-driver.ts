/**
 * A driver-side fake of QEMU + a Linux virtio-fs guest, for vhost-user tests:
 * guest RAM in a memfd (shared with the daemon through SCM_RIGHTS), eventfds
 * for kicks and calls, a vhost-user frontend over a real unix socket, and
 * split virtqueues laid out in guest memory the way a driver does.
 *
 * Layout: one 4 MiB memfd exposed as two GPA-adjacent regions (A at 4 GiB,
 * B right after it, B with mmap_offset 2 MiB and an unrelated uaddr), so
 * buffers can cross regions and ring addresses go through uaddr translation.
 */
import {
  FrontendReq, HEADER_SIZE, Header, type MemoryRegionDesc, VhostUserMemory, VhostUserSingleMemRegion, VhostUserU64,
  VhostUserVringAddr, VhostUserVringState, encodeMessage,
} from '../../src/vhost-user/protocol/message';
import {
  SocketIo, closeFd, connectUnix, eventfdCreate, eventfdRead, eventfdWrite, memfdCreate, mmapShared, munmap, viewOf,
} from '../../src/vhost-user/sys/host';

export const MIB = 1 << 20;
export const GPA_BASE = 0x1_0000_0000;
export const UADDR_A = 0x7f00_0000_0000;
export const UADDR_B = 0x7f10_0000_0000;

export interface RegionInfo { gpa: number; size: number; uaddr: number; offset: number }

/** Guest RAM: a memfd mapped in this process too. */
export class GuestRam {
  readonly fd: number;
  readonly addr: bigint;
  readonly buf: Buffer;
  readonly regions: RegionInfo[];

  constructor(readonly size = 4 * MIB) {
    this.fd = memfdCreate('guest-ram', size);
    this.addr = mmapShared(this.fd, size, 0);
    this.buf = Buffer.from(viewOf(this.addr, size));
    const half = size / 2;
    this.regions = [
      { gpa: GPA_BASE, size: half, uaddr: UADDR_A, offset: 0 },
      { gpa: GPA_BASE + half, size: half, uaddr: UADDR_B, offset: half },
    ];
  }

  /** memfd offset of a GPA (throws outside RAM) */
  off(gpa: number): number {
    for (const r of this.regions) if (gpa >= r.gpa && gpa < r.gpa + r.size) return r.offset + (gpa - r.gpa);
    throw new RangeError(`gpa 0x${gpa.toString(16)} outside guest RAM`);
  }

  uaddr(gpa: number): number {
    for (const r of this.regions) if (gpa >= r.gpa && gpa < r.gpa + r.size) return r.uaddr + (gpa - r.gpa);
    throw new RangeError(`gpa 0x${gpa.toString(16)} outside guest RAM`);
  }

  read(gpa: number, len: number): Buffer {
    return Buffer.from(this.buf.subarray(this.off(gpa), this.off(gpa) + len));
  }

  write(gpa: number, b: Buffer): void {
    b.copy(this.buf, this.off(gpa));
  }

  regionDesc(i: number): MemoryRegionDesc {
    const r = this.regions[i];
    return { guestPhysAddr: BigInt(r.gpa), memorySize: BigInt(r.size), userspaceAddr: BigInt(r.uaddr), mmapOffset: BigInt(r.offset) };
  }

  dispose(): void {
    munmap(this.addr, this.size);
    closeFd(this.fd);
  }
}

export interface Reply { request: number; flags: number; body: Buffer }

/** vhost-user frontend over a unix socket (non-blocking; replies awaited by polling). */
export class VhostUserClient {
  private readonly io = new SocketIo();
  private closed = false;

  private constructor(readonly fd: number) {}

  static connect(path: string): VhostUserClient {
    return new VhostUserClient(connectUnix(path));
  }

  /** Send one raw message (header already included). */
  sendRaw(b: Buffer, fds: number[] = []): void {
    const n = this.io.send(this.fd, b, fds);
    if (n !== b.length) throw new Error(`short send ${n}/${b.length}`);
  }

  send(req: number, body: Buffer = Buffer.alloc(0), fds: number[] = [], flags = 1): void {
    this.sendRaw(encodeMessage(req, flags, body), fds);
  }

  /** Next reply (or null if the daemon closed the connection / timeout). */
  async recv(timeoutMs = 3000): Promise<Reply | null> {
    const deadline = Date.now() + timeoutMs;
    let hdr = Buffer.alloc(0);
    let body = Buffer.alloc(0);
    let h: Header | undefined;
    for (;;) {
      const want = h === undefined ? HEADER_SIZE - hdr.length : h.size - body.length;
      if (h !== undefined && want === 0) return { request: h.request, flags: h.flags, body };
      const r = this.io.recv(this.fd, want);
      for (const f of r.fds) closeFd(f);
      if (r.n === 0) return null;
      if (r.n < 0) {
        if (Date.now() > deadline) return null;
        await new Promise((res) => setTimeout(res, 1));
        continue;
      }
      if (h === undefined) {
        hdr = Buffer.concat([hdr, r.data]);
        if (hdr.length === HEADER_SIZE) h = Header.decode(hdr);
      } else body = Buffer.concat([body, r.data]);
    }
  }

  async request(req: number, body: Buffer = Buffer.alloc(0), fds: number[] = [], flags = 1): Promise<Reply> {
    this.send(req, body, fds, flags);
    const r = await this.recv();
    if (r === null) throw new Error(`no reply to ${FrontendReq[req]}`);
    return r;
  }

  async getU64(req: number): Promise<bigint> {
    const r = await this.request(req);
    if (r.flags !== 0x5 || r.request !== req || r.body.length !== 8) throw new Error(`bad reply to ${FrontendReq[req]}: flags 0x${r.flags.toString(16)}`);
    return r.body.readBigUInt64LE(0);
  }

  /** Send with NEED_REPLY and return the ack value. */
  async acked(req: number, body: Buffer = Buffer.alloc(0), fds: number[] = []): Promise<bigint> {
    const r = await this.request(req, body, fds, 0x9);
    if (r.flags !== 0x5 || r.request !== req || r.body.length !== 8) throw new Error(`bad ack to ${FrontendReq[req]}`);
    return r.body.readBigUInt64LE(0);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.io.dispose();
    closeFd(this.fd);
  }
}

export const u64 = (v: number | bigint): Buffer => VhostUserU64.encode(BigInt(v));
export const state = (index: number, num: number): Buffer => VhostUserVringState.encode({ index, num });

export interface Used { id: number; len: number }

/** Driver side of one split virtqueue in guest RAM. */
export class DriverQueue {
  private nextAvail = 0;
  private lastUsed = 0;
  private freeHead = 0;
  readonly kick = eventfdCreate();
  readonly call = eventfdCreate();

  constructor(
    readonly ram: GuestRam,
    readonly index: number,
    readonly size: number,
    readonly descGpa: number,
    readonly availGpa: number,
    readonly usedGpa: number,
  ) {}

  get nextAvailIdx(): number {
    return this.nextAvail;
  }

  /** Write descriptor `i` of the table at `tableGpa`. */
  writeDesc(tableGpa: number, i: number, addr: number, len: number, flags: number, next: number): void {
    const b = Buffer.alloc(16);
    b.writeBigUInt64LE(BigInt(addr), 0);
    b.writeUInt32LE(len >>> 0, 8);
    b.writeUInt16LE(flags, 12);
    b.writeUInt16LE(next, 14);
    this.ram.write(tableGpa + 16 * i, b);
  }

  /** Allocate `n` descriptor slots in the ring's table (simple rotating allocator). */
  allocDescs(n: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      out.push(this.freeHead);
      this.freeHead = (this.freeHead + 1) % this.size;
    }
    return out;
  }

  /**
   * Build a chain from buffers [gpa, len, writable] and make it available.
   * `indirectTable` (a GPA): put the chain in an indirect table there instead.
   */
  submit(bufs: [number, number, boolean][], indirectTable?: number, staged = false): number {
    if (indirectTable !== undefined) {
      bufs.forEach(([a, l, w], i) => this.writeDesc(indirectTable, i, a, l, (w ? 2 : 0) | (i + 1 < bufs.length ? 1 : 0), i + 1));
      const [head] = this.allocDescs(1);
      this.writeDesc(this.descGpa, head, indirectTable, 16 * bufs.length, 4, 0);
      this.publish(head, staged);
      return head;
    }
    const ids = this.allocDescs(bufs.length);
    bufs.forEach(([a, l, w], i) => this.writeDesc(this.descGpa, ids[i], a, l, (w ? 2 : 0) | (i + 1 < bufs.length ? 1 : 0), ids[i + 1] ?? 0));
    this.publish(ids[0], staged);
    return ids[0];
  }

  /**
   * Put `head` in the avail ring and publish avail.idx (no kick). `staged`:
   * leave avail.idx as it is; `staged` then says where (memfd offset) and
   * what to write to publish it, e.g. from another thread (stagedIdx).
   */
  publish(head: number, staged = false): void {
    const slot = Buffer.alloc(2);
    slot.writeUInt16LE(head, 0);
    this.ram.write(this.availGpa + 4 + 2 * (this.nextAvail % this.size), slot);
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    const idx = Buffer.alloc(2);
    idx.writeUInt16LE(this.nextAvail, 0);
    if (staged) this.stagedIdx = { fd: this.ram.fd, offset: this.ram.off(this.availGpa + 2), idx: this.nextAvail };
    else this.ram.write(this.availGpa + 2, idx);
  }

  /** what the last staged publish left to write: avail.idx = `idx` at `offset` of the guest RAM memfd `fd` */
  stagedIdx: { fd: number; offset: number; idx: number } | undefined;

  doKick(): void {
    eventfdWrite(this.kick);
  }

  /** Calls received since the last check (eventfd counter). */
  calls(): number {
    return Number(eventfdRead(this.call));
  }

  usedIdx(): number {
    return this.ram.read(this.usedGpa + 2, 2).readUInt16LE(0);
  }

  availEvent(): number {
    return this.ram.read(this.usedGpa + 4 + 8 * this.size, 2).readUInt16LE(0);
  }

  setUsedEvent(v: number): void {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(v & 0xffff, 0);
    this.ram.write(this.availGpa + 4 + 2 * this.size, b);
  }

  /** Wait for the next `n` used elements. */
  async waitUsed(n = 1, timeoutMs = 3000): Promise<Used[]> {
    const deadline = Date.now() + timeoutMs;
    while (((this.usedIdx() - this.lastUsed) & 0xffff) < n) {
      if (Date.now() > deadline) throw new Error(`queue ${this.index}: timed out waiting for ${n} used (have ${(this.usedIdx() - this.lastUsed) & 0xffff})`);
      await new Promise((r) => setTimeout(r, 1));
    }
    const out: Used[] = [];
    for (let i = 0; i < n; i++) {
      const e = this.ram.read(this.usedGpa + 4 + 8 * (this.lastUsed % this.size), 8);
      out.push({ id: e.readUInt32LE(0), len: e.readUInt32LE(4) });
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }

  dispose(): void {
    closeFd(this.kick);
    closeFd(this.call);
  }
}

export interface SetupOptions {
  queueSize?: number;
  /** use ADD_MEM_REG (default) or SET_MEM_TABLE */
  memTable?: boolean;
  eventIdx?: boolean;
  /** skip SET_VRING_ENABLE (the rings stay disabled) */
  noEnable?: boolean;
}

/**
 * A QEMU 7.2-like frontend plus guest driver: does the negotiation and ring
 * setup of qemu-vhost-user-trace.md, then lets a test submit chains.
 */
export class FakeGuest {
  readonly client: VhostUserClient;
  readonly queues: DriverQueue[] = [];
  private bump: number;
  features = 0n;

  constructor(readonly ram: GuestRam, socketPath: string, readonly numQueues = 2) {
    this.client = VhostUserClient.connect(socketPath);
    // rings live at the start of region A, data after them
    this.bump = GPA_BASE + 256 * 1024;
  }

  /** Allocate `len` bytes of guest data memory (`align`-aligned); never reused. */
  alloc(len: number, align = 64): number {
    const a = Math.ceil(this.bump / align) * align;
    this.bump = a + len;
    if (this.bump > GPA_BASE + this.ram.size) throw new Error('guest RAM exhausted');
    return a;
  }

  /** Place the bump allocator at `gpa` (e.g. just before the region boundary). */
  allocAt(gpa: number): void {
    this.bump = gpa;
  }

  async setup(o: SetupOptions = {}): Promise<void> {
    const c = this.client;
    const size = o.queueSize ?? 256;
    const feats = await c.getU64(FrontendReq.GET_FEATURES);
    const proto = await c.getU64(FrontendReq.GET_PROTOCOL_FEATURES);
    c.send(FrontendReq.SET_PROTOCOL_FEATURES, u64(proto));
    const qn = await c.getU64(FrontendReq.GET_QUEUE_NUM);
    if (Number(qn) !== this.numQueues) throw new Error(`GET_QUEUE_NUM ${qn}`);
    await c.getU64(FrontendReq.GET_MAX_MEM_SLOTS);
    c.send(FrontendReq.SET_OWNER);
    for (let i = 0; i < this.numQueues; i++) {
      const ringBase = GPA_BASE + i * 64 * 1024;
      this.ram.buf.fill(0, this.ram.off(ringBase), this.ram.off(ringBase) + 64 * 1024); // a fresh driver zeroes its rings
      const q = new DriverQueue(this.ram, i, size, ringBase, ringBase + 16 * size, ringBase + 32 * 1024);
      this.queues.push(q);
    }
    for (const q of this.queues) c.send(FrontendReq.SET_VRING_CALL, u64(q.index), [q.call]);
    let f = feats & ((1n << 28n) | (1n << 30n) | (1n << 32n));
    if (o.eventIdx !== false) f |= feats & (1n << 29n);
    this.features = f;
    c.send(FrontendReq.SET_FEATURES, u64(f));
    if (o.memTable) {
      const ack = await c.acked(FrontendReq.SET_MEM_TABLE, VhostUserMemory.encode([this.ram.regionDesc(0), this.ram.regionDesc(1)]), [this.ram.fd, this.ram.fd]);
      if (ack !== 0n) throw new Error('SET_MEM_TABLE refused');
    } else {
      for (let i = 0; i < 2; i++) {
        const ack = await c.acked(FrontendReq.ADD_MEM_REG, VhostUserSingleMemRegion.encode(this.ram.regionDesc(i)), [this.ram.fd]);
        if (ack !== 0n) throw new Error('ADD_MEM_REG refused');
      }
    }
    for (const q of this.queues) {
      c.send(FrontendReq.SET_VRING_NUM, state(q.index, size));
      c.send(FrontendReq.SET_VRING_BASE, state(q.index, 0));
      c.send(FrontendReq.SET_VRING_ADDR, VhostUserVringAddr.encode({
        index: q.index, flags: 0, desc: BigInt(this.ram.uaddr(q.descGpa)), used: BigInt(this.ram.uaddr(q.usedGpa)),
        avail: BigInt(this.ram.uaddr(q.availGpa)), log: 0n,
      }));
      c.send(FrontendReq.SET_VRING_KICK, u64(q.index), [q.kick]);
    }
    if (!o.noEnable) for (const q of this.queues) c.send(FrontendReq.SET_VRING_ENABLE, state(q.index, 1));
    // a GET_FEATURES round trip is the barrier QEMU uses
    await c.getU64(FrontendReq.GET_FEATURES);
  }

  /** Stop like QEMU: disable every ring, then GET_VRING_BASE each; returns the bases. */
  async stop(): Promise<number[]> {
    const c = this.client;
    for (const q of this.queues) c.send(FrontendReq.SET_VRING_ENABLE, state(q.index, 0));
    const bases: number[] = [];
    for (const q of this.queues) {
      const r = await c.request(FrontendReq.GET_VRING_BASE, state(q.index, 0));
      if (r.flags !== 0x5 || r.body.length !== 8 || r.body.readUInt32LE(0) !== q.index) throw new Error('bad GET_VRING_BASE reply');
      bases.push(r.body.readUInt32LE(4));
    }
    return bases;
  }

  /**
   * Submit one FUSE request: `msg` split into readable pieces of `readSplit`
   * bytes, `replyRoom` writable bytes split into pieces of `writeSplit`.
   * Returns a function that reads the reply once the chain is used.
   */
  submit(q: number, msg: Buffer, replyRoom: number, o: { readSplit?: number; writeSplit?: number; indirect?: boolean; at?: number; staged?: boolean } = {}): { head: number; wait: () => Promise<{ used: Used; reply: Buffer }> } {
    const queue = this.queues[q];
    const bufs: [number, number, boolean][] = [];
    const rs = o.readSplit ?? msg.length;
    const readGpa = o.at ?? this.alloc(msg.length);
    if (o.at !== undefined) this.allocAt(o.at + msg.length);
    for (let off = 0; off < msg.length; off += rs) bufs.push([readGpa + off, Math.min(rs, msg.length - off), false]);
    this.ram.write(readGpa, msg);
    const wgpa = replyRoom > 0 ? this.alloc(replyRoom, 1) : 0;
    const ws = o.writeSplit ?? replyRoom;
    for (let off = 0; off < replyRoom; off += ws) bufs.push([wgpa + off, Math.min(ws, replyRoom - off), true]);
    this.ram.buf.fill(0xee, replyRoom > 0 ? this.ram.off(wgpa) : 0, replyRoom > 0 ? this.ram.off(wgpa) + replyRoom : 0);
    const head = queue.submit(bufs, o.indirect ? this.alloc(16 * bufs.length, 16) : undefined, o.staged);
    // staged: neither published nor kicked (queue.stagedIdx says how to publish it)
    if (!o.staged) queue.doKick();
    return {
      head,
      wait: async () => {
        const [used] = await queue.waitUsed(1);
        return { used, reply: replyRoom > 0 ? this.ram.read(wgpa, Math.min(used.len, replyRoom)) : Buffer.alloc(0) };
      },
    };
  }

  close(): void {
    this.client.close();
    for (const q of this.queues) q.dispose();
  }
}
