/**
 * Daemon metrics (rafs-spec §8.2, upstream utils/src/metrics.rs), measured
 * from outside the filesystems:
 *  - FsIoStats per mount, filled by `withMetrics(fs, stats)`, a counting
 *    decorator (a Proxy: the wrapped object keeps exactly the methods and
 *    properties of the filesystem, so the VFS sees the same capabilities);
 *  - per-inode stats / access patterns / latest read files when the RAFS
 *    config enables iostats_files / access_pattern / latest_read_files;
 *  - in-flight requests across every mount.
 * (BackendMetrics live with the backends: storage/backend/metrics.ts; the
 * error event ring in common/events.ts.)
 *
 * Semantics (as upstream): fop_hits/fop_errors/fop_cumulative_latency_total
 * are indexed by StatsFop (0 getattr, 1 readlink, 2 open, 3 release, 4 read,
 * 5 statfs, 6 getxattr, 7 listxattr, 8 opendir, 9 lookup, 10 readdir,
 * 11 readdirplus, 12 access, 13 forget, 14 batch_forget); latency in µs.
 * nr_opens counts files currently open (open +1, release -1). data_read sums
 * the bytes returned by READ; block_count_read buckets each READ's returned
 * size (<1K, 1K, 4K, 16K, 64K, 128K, 512K, >=1M); read_latency_dist buckets
 * READ latency (<=200µs, <=1ms, <=20ms, <=50ms, <=500ms, <=1s, <=2s, >2s).
 */
import { blockSizeIndex, latencyMicrosIndex, zeros } from '../common/buckets';
import type { FileSystem, ReadPiece } from '../common/filesystem';

export const FOP_NAMES = [
  'getattr', 'readlink', 'open', 'release', 'read', 'statfs', 'getxattr', 'listxattr',
  'opendir', 'lookup', 'readdir', 'readdirplus', 'access', 'forget', 'batch_forget',
] as const;
const FOP_INDEX: Record<string, number> = Object.fromEntries(FOP_NAMES.map((n, i) => [n, i]));

/** FUSE opcodes reported by /metrics/inflight */
const OPCODES: Record<string, number> = {
  lookup: 1, forget: 2, getattr: 3, setattr: 4, readlink: 5, symlink: 6, mknod: 8, mkdir: 9, unlink: 10, rmdir: 11,
  rename: 12, link: 13, open: 14, read: 15, write: 16, statfs: 17, release: 18, fsync: 20, setxattr: 21, getxattr: 22,
  listxattr: 23, removexattr: 24, flush: 25, opendir: 27, readdir: 28, releasedir: 29, fsyncdir: 30, access: 34,
  create: 35, fallocate: 43, readdirplus: 44, lseek: 46, syncfs: 50,
};

export { blockSizeIndex, latencyMicrosIndex, latencyMillisIndex } from '../common/buckets';

export interface InodeIoStats {
  total_fops: number;
  data_read: number;
  block_count_read: number[];
  fop_hits: number[];
  fop_errors: number[];
}

export interface AccessPattern {
  ino: number;
  nr_read: number;
  first_access_time_secs: number;
  first_access_time_nanos: number;
}

export interface FsIoStatsOptions {
  iostats_files?: boolean;
  access_pattern?: boolean;
  latest_read_files?: boolean;
}

const MAX_TRACKED_INODES = 1 << 20;

export class FsIoStats {
  files_account_enabled: boolean;
  access_pattern_enabled: boolean;
  record_latest_read_files_enabled: boolean;
  measure_latency = true;
  nr_opens = 0;
  data_read = 0;
  block_count_read = zeros(8);
  fop_hits = zeros(15);
  fop_errors = zeros(15);
  fop_cumulative_latency_total = zeros(15);
  read_latency_dist = zeros(8);
  /** VFS slot of the mount, to report VFS-encoded inode numbers (set after Vfs.mount) */
  vfsIndex = 0;
  readonly files = new Map<number, InodeIoStats>();
  readonly patterns = new Map<number, AccessPattern>();
  readonly latestRead = new Set<number>();

  constructor(readonly id: string, opts: FsIoStatsOptions = {}) {
    this.files_account_enabled = !!opts.iostats_files;
    this.access_pattern_enabled = !!opts.access_pattern;
    this.record_latest_read_files_enabled = !!opts.latest_read_files;
  }

  /** Record one finished operation. */
  record(fop: number, ino: number | undefined, ok: boolean, micros: number, readBytes = 0): void {
    if (ok) this.fop_hits[fop]++;
    else this.fop_errors[fop]++;
    this.fop_cumulative_latency_total[fop] += micros;
    const isRead = fop === FOP_INDEX.read && ok;
    if (isRead) {
      this.data_read += readBytes;
      this.block_count_read[blockSizeIndex(readBytes)]++;
      this.read_latency_dist[latencyMicrosIndex(micros)]++;
    }
    if (fop === FOP_INDEX.open && ok) this.nr_opens++;
    if (fop === FOP_INDEX.release && ok && this.nr_opens > 0) this.nr_opens--;
    if (ino === undefined) return;
    if (this.files_account_enabled) {
      let f = this.files.get(ino);
      if (!f && this.files.size < MAX_TRACKED_INODES) {
        f = { total_fops: 0, data_read: 0, block_count_read: zeros(8), fop_hits: zeros(15), fop_errors: zeros(15) };
        this.files.set(ino, f);
      }
      if (f) {
        f.total_fops++;
        if (ok) f.fop_hits[fop]++;
        else f.fop_errors[fop]++;
        if (isRead) {
          f.data_read += readBytes;
          f.block_count_read[blockSizeIndex(readBytes)]++;
        }
      }
    }
    if (isRead && this.access_pattern_enabled) {
      let p = this.patterns.get(ino);
      if (!p && this.patterns.size < MAX_TRACKED_INODES) {
        const now = Date.now();
        p = { ino, nr_read: 0, first_access_time_secs: Math.floor(now / 1000), first_access_time_nanos: (now % 1000) * 1e6 };
        this.patterns.set(ino, p);
      }
      if (p) p.nr_read++;
    }
    if (isRead && this.record_latest_read_files_enabled && this.latestRead.size < MAX_TRACKED_INODES) this.latestRead.add(ino);
  }

  toJSON(): Record<string, unknown> {
    return {
      files_account_enabled: this.files_account_enabled,
      access_pattern_enabled: this.access_pattern_enabled,
      record_latest_read_files_enabled: this.record_latest_read_files_enabled,
      measure_latency: this.measure_latency,
      id: this.id,
      nr_opens: this.nr_opens,
      data_read: this.data_read,
      block_count_read: this.block_count_read,
      fop_hits: this.fop_hits,
      fop_errors: this.fop_errors,
      fop_cumulative_latency_total: this.fop_cumulative_latency_total,
      read_latency_dist: this.read_latency_dist,
    };
  }

  /** GET /metrics/files: `{ "<ino>": InodeIoStats }` */
  exportFiles(): Record<string, InodeIoStats> {
    const out: Record<string, InodeIoStats> = {};
    for (const [ino, s] of this.files) out[String(ino)] = s;
    return out;
  }

  /** GET /metrics/files?latest=true: sorted inode ranges `[[a,b],[c],…]`, then cleared */
  exportLatestReadFiles(): number[][] {
    const inos = [...this.latestRead].sort((a, b) => a - b);
    this.latestRead.clear();
    const out: number[][] = [];
    for (let i = 0; i < inos.length; ) {
      let j = i;
      while (j + 1 < inos.length && inos[j + 1] === inos[j] + 1) j++;
      out.push(i === j ? [inos[i]] : [inos[i], inos[j]]);
      i = j + 1;
    }
    return out;
  }

  /** GET /metrics/pattern: inodes read at least once */
  exportPatterns(): AccessPattern[] {
    return [...this.patterns.values()].filter((p) => p.nr_read > 0);
  }
}

// ---- in-flight requests -------------------------------------------------------------

export interface InflightOp {
  inode: number;
  opcode: number;
  unique: number;
  timestamp_secs: number;
}
/** an op in flight, as recorded on the request path (the reported form is made when asked) */
interface InflightEntry { vfsIndex: number; ino: number | undefined; opcode: number; unique: bigint | undefined; at: number }
const inflight = new Map<number, InflightEntry>();
let inflightSeq = 0;

/** Requests currently being served by any decorated filesystem. */
export function inflightOps(): InflightOp[] {
  return [...inflight.values()].map((e) => ({
    inode: e.ino === undefined ? 0 : Number((BigInt(e.vfsIndex) << 56n) | BigInt(e.ino)),
    opcode: e.opcode,
    unique: Number(e.unique ?? 0n),
    timestamp_secs: Math.floor(e.at / 1000),
  }));
}

// ---- the decorator ------------------------------------------------------------------

function readSize(pieces: ReadPiece[]): number {
  let n = 0;
  for (const p of pieces) n += Buffer.isBuffer(p) ? p.length : p.length;
  return n;
}

function asNumber(v: unknown): number | undefined {
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'number') return v;
  return undefined;
}

/**
 * Wrap `fs` so every call is counted into `stats`. The wrapper exposes the
 * same methods (absent ones stay absent) and forwards properties: it is a
 * plain object whose prototype is `fs`, with each of `fs`'s methods wrapped
 * once, its op and opcode looked up when it is wrapped, not per call (no
 * Proxy trap on every method access: ~5 % of a 1 MiB READ's daemon time).
 */
export function withMetrics<T extends FileSystem>(fs: T, stats: FsIoStats): T {
  const out = Object.create(fs) as T;
  for (const name of methodNames(fs)) {
    const fn = (fs as unknown as Record<string, (...args: unknown[]) => unknown>)[name];
    Object.defineProperty(out, name, { value: counted(fs, fn, name, stats), writable: true, configurable: true, enumerable: false });
  }
  return out;
}

/** Names of the functions `o` has, own or inherited (not Object's). */
function methodNames(o: object): string[] {
  const names = new Set<string>();
  for (let p: object | null = o; p && p !== Object.prototype; p = Object.getPrototypeOf(p) as object | null) {
    for (const k of Object.getOwnPropertyNames(p)) {
      if (k === 'constructor' || names.has(k)) continue;
      const d = Object.getOwnPropertyDescriptor(p, k);
      if (d && typeof d.value === 'function') names.add(k);
    }
  }
  return [...names];
}

const own = (m: Record<string, number>, k: string): number | undefined => (Object.hasOwn(m, k) ? m[k] : undefined);

/** `fn` of `target` as method `prop`, counted into `stats` (calls of anything that is not an op go straight through). */
function counted(target: object, fn: (...args: unknown[]) => unknown, prop: string, stats: FsIoStats): (...args: unknown[]) => unknown {
  // readSync is read's fast path: counted as a read when it answers (undefined: the read that follows counts)
  const name = prop === 'readSync' ? 'read' : prop;
  const fop = own(FOP_INDEX, name);
  const opcode = own(OPCODES, name);
  // readdir(ctx, ino, fh, offset, plus): READDIRPLUS when `plus`
  const plusFop = prop === 'readdir' ? own(FOP_INDEX, 'readdirplus') : undefined;
  const plusOpcode = prop === 'readdir' ? own(OPCODES, 'readdirplus') : undefined;
  if (fop === undefined && opcode === undefined && plusFop === undefined && plusOpcode === undefined) {
    return function (this: unknown) { return fn.apply(target, arguments as unknown as unknown[]); };
  }
  const forget = prop === 'forget';
  const readSync = prop === 'readSync';
  return function (this: unknown) {
    // eslint-disable-next-line prefer-rest-params
    const args = arguments;
    const plus = plusFop !== undefined && args[4] === true;
    const f = plus ? plusFop : fop;
    const oc = plus ? plusOpcode : opcode;
    if (f === undefined && oc === undefined) return fn.apply(target, args as unknown as unknown[]);
    // forget(ino, n) has no ctx; every other op is (ctx, ino|parent, …)
    const ino = asNumber(forget ? args[0] : args[1]);
    // per request: a double clock and a plain record (no BigInt, no encoding until someone asks)
    const t0 = performance.now();
    const seq = ++inflightSeq;
    const done = (ok: boolean, result: unknown): void => {
      inflight.delete(seq);
      if (f === undefined) return;
      const us = Math.round((performance.now() - t0) * 1000);
      const bytes = ok && f === FOP_INDEX.read && Array.isArray(result) ? readSize(result as ReadPiece[]) : 0;
      stats.record(f, ino, ok, us, bytes);
    };
    let r: unknown;
    try {
      r = fn.apply(target, args as unknown as unknown[]);
    } catch (e) {
      done(false, undefined);
      throw e;
    }
    if (r && typeof (r as Promise<unknown>).then === 'function') {
      const ctx = forget ? undefined : (args[0] as { unique?: bigint } | undefined);
      inflight.set(seq, { vfsIndex: stats.vfsIndex, ino, opcode: oc ?? 0, unique: ctx?.unique, at: Date.now() });
      return (r as Promise<unknown>).then(
        (x) => { done(true, x); return x; },
        (e: unknown) => { done(false, undefined); throw e; },
      );
    }
    if (r === undefined && readSync) inflight.delete(seq);
    else done(true, r);
    return r;
  };
}

