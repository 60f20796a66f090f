/**
 * Tools for hostile-guest tests against a real `nydusd virtiofs` process:
 *
 *  - GuestSession: a FakeGuest (vhost-user negotiation, split rings in a
 *    memfd shared with the daemon) with a descriptor free list, many chains
 *    in flight per queue, completions matched by head id (out of order), and
 *    hand-built chains (aliasing descriptors, indirect tables) for attacks;
 *  - Flipper: a worker thread that maps the same memfd and rewrites bytes of
 *    requests in flight in a tight loop, as another vCPU would;
 *  - procMem: VmRSS / VmHWM / VmSize of a process;
 *  - snapshotTree / diffSnapshots: stat + content digest of a host tree.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { FuseEntryOut, FuseOpcode, FuseOutHeader, type FuseOutHeaderT } from '../../src/virtiofs/fuse/abi';
import type { Entry } from '../../src/common/filesystem';
import { initBody, req } from './memory-fs';
import { FakeGuest, GPA_BASE, GuestRam, MIB } from './virtio-driver';
import { sleep } from './timing';

export { MIB };


// ---- process memory -------------------------------------------------------------------

export interface ProcMem { rssKiB: number; hwmKiB: number; sizeKiB: number }

export function procMem(pid: number): ProcMem {
  const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN);
  return { rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM'), sizeKiB: kib('VmSize') };
}

/** Reset VmHWM to the current RSS (clear_refs 5; root), so a peak can be measured per phase. */
export function resetPeak(pid: number): boolean {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

export const fmtMem = (m: ProcMem) => `rss ${(m.rssKiB / 1024).toFixed(1)} MiB, hwm ${(m.hwmKiB / 1024).toFixed(1)} MiB, vsz ${(m.sizeKiB / 1024).toFixed(0)} MiB`;

// ---- FUSE helpers ----------------------------------------------------------------------

export interface FuseReply { used: number; hdr?: FuseOutHeaderT; payload: Buffer; raw: Buffer; ms: number }

/** Decode a reply read from guest memory; `hdr` undefined when shorter than a header. */
export function parseReply(raw: Buffer, usedLen: number, ms: number): FuseReply {
  const b = raw.subarray(0, Math.min(usedLen, raw.length));
  if (b.length < 16) return { used: usedLen, payload: Buffer.alloc(0), raw: b, ms };
  const hdr = FuseOutHeader.decode(b);
  return { used: usedLen, hdr, payload: b.subarray(16), raw: b, ms };
}

/** Well-formed: out_header.len == bytes written, error 0 or -errno (errno in 1..4095), errors are bare headers. */
export function replyProblem(r: FuseReply): string | undefined {
  if (r.used === 0) return undefined;
  if (!r.hdr) return `used.len ${r.used} shorter than a header`;
  if (r.hdr.len !== r.used) return `out_header.len ${r.hdr.len} != used.len ${r.used}`;
  if (r.hdr.error > 0 || r.hdr.error < -4095) return `error ${r.hdr.error} is not 0 or -errno`;
  if (r.hdr.error !== 0 && r.hdr.len !== 16) return `error reply of ${r.hdr.len} bytes`;
  return undefined;
}

/** A reply header for messages (no bigint in JSON). */
export const hs = (h?: FuseOutHeaderT): string => (h ? `{len ${h.len}, error ${h.error}}` : 'no header');

export const entryOf = (r: FuseReply): Entry => FuseEntryOut.decode(r.payload);

// ---- a guest with many requests in flight ---------------------------------------------

export type Buf = [gpa: number, len: number, writable: boolean];

interface Waiter { resolve: (len: number) => void; reject: (e: Error) => void; deadline: number; descs: number[]; t0: number }

export interface SessionOptions {
  ramSize?: number;
  queueSize?: number;
  /** size of each request slab (message + reply room) */
  slabSize?: number;
  slabs?: number;
}

/**
 * Driver side of a virtio-fs device with many chains in flight. Every chain's
 * descriptors come from a per-queue free list and go back to it on
 * completion; completions are matched by head (they may come out of order).
 */
export class GuestSession {
  readonly ram: GuestRam;
  readonly g: FakeGuest;
  readonly queueSize: number;
  private readonly freeDescs: number[][] = [];
  private readonly waiters: Map<number, Waiter>[] = [];
  private readonly consumed: number[] = [];
  private readonly slabFree: number[] = [];
  readonly slabSize: number;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** chains that timed out (their descriptors are never reused) */
  timeouts = 0;
  nextUnique = 1000n;

  private constructor(ram: GuestRam, g: FakeGuest, o: Required<SessionOptions>) {
    this.ram = ram;
    this.g = g;
    this.queueSize = o.queueSize;
    this.slabSize = o.slabSize;
    for (let q = 0; q < g.numQueues; q++) {
      this.freeDescs.push(Array.from({ length: o.queueSize }, (_, i) => o.queueSize - 1 - i));
      this.waiters.push(new Map());
      this.consumed.push(0);
    }
    for (let i = 0; i < o.slabs; i++) this.slabFree.push(g.alloc(o.slabSize, 4096));
  }

  static async connect(sock: string, o: SessionOptions = {}): Promise<GuestSession> {
    const opts: Required<SessionOptions> = {
      ramSize: o.ramSize ?? 64 * MIB, queueSize: o.queueSize ?? 1024, slabSize: o.slabSize ?? 8192, slabs: o.slabs ?? 1100,
    };
    const ram = new GuestRam(opts.ramSize);
    const g = new FakeGuest(ram, sock);
    try {
      await g.setup({ queueSize: opts.queueSize });
    } catch (e) {
      g.close();
      ram.dispose();
      throw e;
    }
    return new GuestSession(ram, g, opts);
  }

  /** Guest memory that is never reused. */
  alloc(len: number, align = 64): number {
    return this.g.alloc(len, align);
  }

  /** memfd offset of a GPA (for the Flipper). */
  off(gpa: number): number {
    return this.ram.off(gpa);
  }

  write(gpa: number, b: Buffer): void {
    b.copy(this.ram.buf, this.ram.off(gpa));
  }

  read(gpa: number, len: number): Buffer {
    const o = this.ram.off(gpa);
    return Buffer.from(this.ram.buf.subarray(o, o + len));
  }

  takeSlab(): number {
    const s = this.slabFree.pop();
    if (s === undefined) throw new Error('out of request slabs');
    return s;
  }

  putSlab(s: number): void {
    this.slabFree.push(s);
  }

  /** Give back descriptors of a chain published with `keepDescs` (once it is no longer in flight). */
  releaseDescs(q: number, descs: number[]): void {
    this.freeDescs[q].push(...descs);
  }

  freeDescCount(q: number): number {
    return this.freeDescs[q].length;
  }

  inflight(q: number): number {
    return this.waiters[q].size;
  }

  private writeDesc(tableGpa: number, i: number, addr: number, len: number, flags: number, next: number): void {
    const o = this.ram.off(tableGpa + 16 * i);
    const b = this.ram.buf;
    b.writeBigUInt64LE(BigInt(addr), o);
    b.writeUInt32LE(len >>> 0, o + 8);
    b.writeUInt16LE(flags, o + 12);
    b.writeUInt16LE(next, o + 14);
  }

  /** Write `bufs` as a chain (in the ring's table, or in an indirect table at `indirect`). Returns the head. */
  writeChain(q: number, bufs: Buf[], indirect?: number): { head: number; descs: number[] } {
    const queue = this.g.queues[q];
    const free = this.freeDescs[q];
    if (indirect !== undefined) {
      bufs.forEach(([a, l, w], i) => this.writeDesc(indirect, i, a, l, (w ? 2 : 0) | (i + 1 < bufs.length ? 1 : 0), (i + 1) & 0xffff));
      const head = free.pop();
      if (head === undefined) throw new Error(`queue ${q}: no free descriptor`);
      this.writeDesc(queue.descGpa, head, indirect, 16 * bufs.length, 4, 0);
      return { head, descs: [head] };
    }
    if (free.length < bufs.length) throw new Error(`queue ${q}: ${bufs.length} descriptors wanted, ${free.length} free`);
    const ids = bufs.map(() => free.pop()!);
    bufs.forEach(([a, l, w], i) => this.writeDesc(queue.descGpa, ids[i], a, l, (w ? 2 : 0) | (i + 1 < bufs.length ? 1 : 0), ids[i + 1] ?? 0));
    return { head: ids[0], descs: ids };
  }

  /** Make a written chain available and return its completion (used.len); kick unless told not to. */
  publish(q: number, head: number, descs: number[], o: { kick?: boolean; timeoutMs?: number; keepDescs?: boolean } = {}): Promise<number> {
    if (this.closed) return Promise.reject(new Error('session closed'));
    const w = this.waiters[q];
    if (w.has(head)) throw new Error(`queue ${q}: head ${head} already in flight`);
    const p = new Promise<number>((resolve, reject) => {
      w.set(head, { resolve, reject, deadline: Date.now() + (o.timeoutMs ?? 10_000), descs: o.keepDescs ? [] : descs, t0: performance.now() });
    });
    this.g.queues[q].publish(head);
    if (o.kick !== false) this.g.queues[q].doKick();
    this.arm();
    return p;
  }

  kick(q: number): void {
    this.g.queues[q].doKick();
  }

  /** Submit `bufs` as one chain. */
  post(q: number, bufs: Buf[], o: { indirect?: number; kick?: boolean; timeoutMs?: number } = {}): Promise<number> {
    const { head, descs } = this.writeChain(q, bufs, o.indirect);
    return this.publish(q, head, descs, o);
  }

  /**
   * One FUSE request in a slab: the message (readable, optionally split in
   * pieces of `readSplit`) followed by `room` writable bytes.
   */
  async call(msg: Buffer, room = 4096, o: { q?: number; kick?: boolean; timeoutMs?: number; readSplit?: number; writeSplit?: number; indirect?: boolean } = {}): Promise<FuseReply> {
    const q = o.q ?? 1;
    const rs = Math.max(1, o.readSplit ?? msg.length);
    const ws = Math.max(1, o.writeSplit ?? room);
    const nDesc = Math.ceil(msg.length / rs) + Math.ceil(room / ws);
    const tableLen = o.indirect ? 16 * nDesc : 0;
    const big = msg.length + room + tableLen + 64 > this.slabSize;
    const base = big ? this.alloc(msg.length + room + tableLen + 64, 4096) : this.takeSlab();
    try {
      this.write(base, msg);
      const bufs: Buf[] = [];
      for (let off = 0; off < msg.length; off += rs) bufs.push([base + off, Math.min(rs, msg.length - off), false]);
      for (let off = 0; off < room; off += ws) bufs.push([base + msg.length + off, Math.min(ws, room - off), true]);
      this.ram.buf.fill(0xee, this.ram.off(base + msg.length), this.ram.off(base + msg.length) + room);
      const indirect = o.indirect ? Math.ceil((base + msg.length + room) / 16) * 16 : undefined;
      const t0 = performance.now();
      const len = await this.post(q, bufs, { ...o, indirect });
      return parseReply(this.read(base + msg.length, Math.min(len, room)), len, performance.now() - t0);
    } finally {
      if (!big) this.putSlab(base);
    }
  }

  /** A FUSE message with a fresh unique. */
  msg(opcode: number, nodeid: bigint, body: Buffer | Buffer[] = [], o: { uid?: number; gid?: number; len?: number } = {}): Buffer {
    return req(opcode, nodeid, body, { unique: this.nextUnique++, ...o });
  }

  async init(): Promise<FuseReply> {
    const flags = (1n << 0n) | (1n << 5n) | (1n << 13n) | (1n << 22n) | (1n << 30n);
    const r = await this.call(this.msg(FuseOpcode.INIT, 0n, initBody(36, flags)), 4096);
    if (r.hdr?.error !== 0) throw new Error(`FUSE INIT failed: ${hs(r.hdr)}`);
    return r;
  }

  private arm(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.pump();
      if (this.waiters.some((w) => w.size > 0)) this.arm();
    }, 0);
  }

  /** Collect completions from every used ring; fail chains past their deadline. */
  pump(): void {
    const now = Date.now();
    for (let q = 0; q < this.g.numQueues; q++) {
      const queue = this.g.queues[q];
      const buf = this.ram.buf;
      const usedIdx = buf.readUInt16LE(this.ram.off(queue.usedGpa + 2));
      while (this.consumed[q] !== usedIdx) {
        const slot = this.consumed[q] % this.queueSize;
        const o = this.ram.off(queue.usedGpa + 4 + 8 * slot);
        const id = buf.readUInt32LE(o);
        const len = buf.readUInt32LE(o + 4);
        this.consumed[q] = (this.consumed[q] + 1) & 0xffff;
        const w = this.waiters[q].get(id);
        if (!w) continue; // a chain that timed out already (or a bogus id)
        this.waiters[q].delete(id);
        this.freeDescs[q].push(...w.descs);
        w.resolve(len);
      }
      for (const [head, w] of this.waiters[q]) {
        if (now > w.deadline) {
          this.waiters[q].delete(head);
          this.timeouts++;
          w.reject(new Error(`queue ${q}: chain ${head} not used after ${Math.round(performance.now() - w.t0)} ms`));
        }
      }
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    for (const w of this.waiters) {
      for (const x of w.values()) x.reject(new Error('session closed'));
      w.clear();
    }
    this.g.close();
    this.ram.dispose();
  }
}

// ---- the racing vCPU ---------------------------------------------------------------------

const FLIPPER_CODE = `
const { workerData, parentPort } = require('node:worker_threads');
const koffi = require(workerData.koffi);
const lib = koffi.load('libc.so.6');
const mmap = lib.func('intptr_t mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)');
const munmap = lib.func('int munmap(void *addr, size_t len)');
const addr = Number(mmap(null, workerData.size, 3, 1, workerData.fd, 0));
if (addr === -1) throw new Error('flipper: mmap failed ' + koffi.errno());
const u8 = new Uint8Array(koffi.view(BigInt(addr), workerData.size));
const ctl = new Int32Array(workerData.ctl);
const offs = workerData.offsets;
const a = workerData.a, b = workerData.b;
const n = offs.length, k = a.length;
let flips = 0;
parentPort.postMessage('ready');
while (Atomics.load(ctl, 0) === 0) {
  for (let i = 0; i < n; i++) { const o = offs[i]; for (let j = 0; j < k; j++) u8[o + j] = b[j]; }
  for (let i = 0; i < n; i++) { const o = offs[i]; for (let j = 0; j < k; j++) u8[o + j] = a[j]; }
  flips++;
}
Atomics.store(ctl, 1, flips | 0);
munmap(BigInt(addr), workerData.size);
`;

/**
 * A second thread writing guest memory while the daemon serves requests:
 * at every offset, `a` then `b` then `a` … as fast as it can. Stop restores `a`.
 */
export class Flipper {
  private readonly ctl = new Int32Array(new SharedArrayBuffer(8));
  private readonly worker: Worker;
  private readonly exited: Promise<void>;
  readonly ready: Promise<void>;

  constructor(ram: GuestRam, offsets: number[], a: Buffer, b: Buffer) {
    if (a.length !== b.length) throw new Error('flipper: patterns of different lengths');
    this.worker = new Worker(FLIPPER_CODE, {
      eval: true,
      workerData: { koffi: require.resolve('koffi'), fd: ram.fd, size: ram.size, ctl: this.ctl.buffer, offsets, a: [...a], b: [...b] },
    });
    this.ready = new Promise((resolve, reject) => {
      this.worker.once('message', () => resolve());
      this.worker.once('error', reject);
    });
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
  }

  /** Stop and return the number of a→b→a rounds. */
  async stop(): Promise<number> {
    Atomics.store(this.ctl, 0, 1);
    const t = setTimeout(() => void this.worker.terminate(), 5000);
    await this.exited;
    clearTimeout(t);
    return Atomics.load(this.ctl, 1);
  }
}

// ---- host trees ------------------------------------------------------------------------

export interface NodeRecord { type: string; mode: number; uid: number; gid: number; size: number; mtimeNs: bigint; ino: bigint; nlink: number; sha?: string; link?: string }

/** Every path under `root` (itself included as '.') with its stat and a digest of files; `skip` relative paths are left out with their subtrees. */
export function snapshotTree(root: string, skip: string[] = []): Map<string, NodeRecord> {
  const out = new Map<string, NodeRecord>();
  const walk = (rel: string) => {
    if (skip.includes(rel)) return;
    const p = rel === '.' ? root : path.join(root, rel);
    const st = fs.lstatSync(p, { bigint: true });
    const type = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'link' : st.isFIFO() ? 'fifo' : 'other';
    const r: NodeRecord = { type, mode: Number(st.mode), uid: Number(st.uid), gid: Number(st.gid), size: Number(st.size), mtimeNs: st.mtimeNs, ino: st.ino, nlink: Number(st.nlink) };
    if (type === 'file') r.sha = createHash('sha256').update(fs.readFileSync(p)).digest('hex');
    if (type === 'link') r.link = fs.readlinkSync(p);
    out.set(rel, r);
    if (type === 'dir') for (const n of fs.readdirSync(p).sort()) walk(rel === '.' ? n : path.join(rel, n));
  };
  walk('.');
  return out;
}

/** Human-readable differences between two snapshots (empty when equal). */
export function diffSnapshots(before: Map<string, NodeRecord>, after: Map<string, NodeRecord>): string[] {
  const d: string[] = [];
  for (const [k, v] of before) {
    const w = after.get(k);
    if (!w) { d.push(`removed ${k}`); continue; }
    for (const f of ['type', 'mode', 'uid', 'gid', 'size', 'mtimeNs', 'ino', 'nlink', 'sha', 'link'] as const) {
      if (v[f] !== w[f]) d.push(`changed ${k}: ${f} ${String(v[f])} -> ${String(w[f])}`);
    }
  }
  for (const [k, w] of after) if (!before.has(k)) d.push(`created ${k} (${w.type}, uid ${w.uid}, gid ${w.gid}, mode ${w.mode.toString(8)})`);
  return d;
}

/** Poll `f` until it returns true or `ms` pass. */
export async function until(f: () => boolean, ms: number, step = 10): Promise<boolean> {
  const t = Date.now() + ms;
  while (!f()) {
    if (Date.now() > t) return false;
    await sleep(step);
  }
  return true;
}

export { sleep, GPA_BASE };
