/**
 * A fault-injecting HTTP reverse proxy for registry e2e tests: it listens on
 * 127.0.0.1, forwards every request to a real registry (`target`, host:port)
 * and, per request, may break the exchange in one of the ways a network, a
 * load balancer or a broken server does (see FaultKind). Which requests are
 * hit is decided by rules: every Nth matching request, a seeded pseudo-random
 * draw (deterministic for a given seed and request order), at most `limit`
 * times, only blob GETs / only Range requests / anything. `clean()` turns all
 * faults off; `stats()` counts what was forwarded and what was injected.
 *
 * Bodies are streamed (pipe with back-pressure), never buffered whole: a
 * 'flip' XORs bytes as they pass, 'truncate' stops forwarding at a byte
 * count, 'ignore-range' streams the whole blob.
 *
 * Run it in its own process (`spawnFaultProxy`, controlled over IPC) when the
 * test reads the FUSE mount with synchronous calls: a test process blocked in
 * `readFileSync` on the mount cannot run an in-process proxy, and nydusd would
 * wait for it forever. `startFaultProxy` runs it in the calling process.
 *
 * Also here, for the tests that use it: `readEveryPiece` (chunk-sized reads of
 * a mounted tree on threads of their own, each under a liveness watchdog:
 * right bytes or EIO, nothing else) and `imageChunks` / `readyChunks` /
 * `poisonedChunks` (which chunks a blob cache work_dir holds, and whether
 * their bytes equal the source).
 */
import { fork, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import type * as net from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';
import { Worker } from 'node:worker_threads';

export type FaultKind =
  /** the request is read, then the connection is reset (RST), no reply at all */
  | 'reset-before-headers'
  /** the upstream status line and headers are sent, then the connection is reset */
  | 'reset-after-headers'
  | 'status-500'
  | 'status-502'
  | 'status-503'
  /** headers promise the full body (Content-Length N), about half is sent, then the connection closes (FIN) */
  | 'truncate'
  /** status and headers are sent, then silence until the client gives up */
  | 'stall-headers'
  /** status, headers and about half of the body, then silence */
  | 'stall-body'
  /** the request is read and never answered (no status line ever) */
  | 'stall-accept'
  /** status, headers, then the body at 160 bytes/s (never idle long enough for an idle timeout) */
  | 'trickle'
  /** same length, valid headers, `flipBytes` bytes of the body XORed with 0xff */
  | 'flip'
  /** upstream is asked for a range shifted by `shift` bytes; its (honest) Content-Range is passed on */
  | 'shifted-range'
  /** the right body, but a Content-Range naming a different range */
  | 'bad-content-range'
  /** Content-Length and body longer than asked (`extra` bytes appended), Content-Range unchanged */
  | 'extra-bytes'
  /** chunked encoding without Content-Length, `extra` bytes appended to the body */
  | 'extra-bytes-chunked'
  /** Content-Length N and N bytes, then `extra` stray bytes on the kept-alive connection */
  | 'trailing-garbage'
  /** the Range header is dropped: 200 with the whole blob */
  | 'ignore-range';

export const ALL_FAULTS: readonly FaultKind[] = [
  'reset-before-headers', 'reset-after-headers', 'status-500', 'status-502', 'status-503', 'truncate',
  'stall-headers', 'stall-body', 'stall-accept', 'trickle', 'flip', 'shifted-range', 'bad-content-range', 'extra-bytes',
  'extra-bytes-chunked', 'trailing-garbage', 'ignore-range',
];

/** Which requests a rule looks at. */
export type FaultScope = 'any' | 'blob-get' | 'range';

export interface FaultRule {
  fault: FaultKind;
  /** default 'blob-get': GET of /v2/<repo>/blobs/sha256:<id> */
  only?: FaultScope;
  /** fire on every Nth request the rule matches (1 = every one); default 1 unless `probability` is set */
  every?: number;
  /** with `every`: the first match that fires (1-based; default `every`) */
  first?: number;
  /** fire with this probability per matching request (seeded, deterministic) */
  probability?: number;
  /** inject at most this many times (faults that need a 2xx reply count only once applied) */
  limit?: number;
}

export interface FaultOptions {
  /** seed of the pseudo-random draws (probability rules, flip positions); default 1 */
  seed?: number;
  /** bytes XORed by 'flip' (default 1) */
  flipBytes?: number;
  /** shift of 'shifted-range' / 'bad-content-range' (default 4096) */
  shift?: number;
  /** bytes added by the extra-bytes faults (default 100) */
  extra?: number;
}

export interface FaultStats {
  /** requests received */
  requests: number;
  /** requests matched by scope 'blob-get' */
  blobGets: number;
  /** requests forwarded without a fault */
  clean: number;
  /** faults injected, per kind */
  injected: Partial<Record<FaultKind, number>>;
  /** total faults injected */
  faults: number;
  /** upstream connection errors (answered 502, not counted as faults) */
  upstreamErrors: number;
  /** picked faults not applied because upstream did not answer 2xx (e.g. a 401 challenge) */
  notApplied: number;
  /** the last requests (at most 1000): ms since the stats were reset, method, path, Range, fault picked */
  log: Array<{ ms: number; method: string; path: string; range?: string; fault?: FaultKind }>;
}

export interface FaultProxyHandle {
  /** "127.0.0.1:<port>": the `host` to give the registry backend */
  host: string;
  port: number;
  /** replace the rules (counters of rule matches restart; stats are kept) */
  setFaults(rules: FaultRule | FaultRule[], opts?: FaultOptions): Promise<void>;
  /** no faults from now on */
  clean(): Promise<void>;
  stats(): Promise<FaultStats>;
  /** zero the stats */
  resetStats(): Promise<void>;
  close(): Promise<void>;
}

/** mulberry32: small, fast, deterministic. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** faults applied before anything is forwarded */
const PRE_FORWARD = new Set<FaultKind>(['reset-before-headers', 'stall-accept', 'status-500', 'status-502', 'status-503']);

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'upgrade', 'te', 'trailer']);

function parseRange(v: string | undefined): { start: number; end: number } | undefined {
  const m = v ? /^bytes=(\d+)-(\d+)$/.exec(v.trim()) : null;
  return m ? { start: Number(m[1]), end: Number(m[2]) } : undefined;
}

function isBlobGet(req: http.IncomingMessage): boolean {
  return req.method === 'GET' && /^\/v2\/.+\/blobs\/sha256:[0-9a-f]+$/.test((req.url ?? '').split('?')[0]);
}

/** Forward at most `limit` bytes, then stop (and call `onLimit` once). */
class Limit extends Transform {
  private n = 0;
  private hit = false;
  constructor(private readonly limit: number, private readonly onLimit: () => void) { super(); }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const room = this.limit - this.n;
    if (room > 0) this.push(chunk.length <= room ? chunk : chunk.subarray(0, room));
    this.n += chunk.length;
    if (this.n >= this.limit && !this.hit) {
      this.hit = true;
      // let what was pushed drain first
      setImmediate(this.onLimit);
    }
    cb();
  }
}

/** XOR 0xff into the bytes at `positions` (body offsets), same length. */
class Flip extends Transform {
  private n = 0;
  constructor(private readonly positions: number[]) { super(); }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    let out = chunk;
    for (const p of this.positions) {
      if (p >= this.n && p < this.n + chunk.length) {
        if (out === chunk) out = Buffer.from(chunk);
        out[p - this.n] ^= 0xff;
      }
    }
    this.n += chunk.length;
    cb(null, out);
  }
}

/** Pass the body on `bytes` at a time every `everyMs` (back-pressure holds the rest upstream). */
class Trickle extends Transform {
  private timer: NodeJS.Timeout | undefined;
  constructor(private readonly bytes: number, private readonly everyMs: number) { super(); }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    let off = 0;
    const step = () => {
      this.timer = undefined;
      if (this.destroyed || off >= chunk.length) { cb(); return; }
      this.push(chunk.subarray(off, off + this.bytes));
      off += this.bytes;
      this.timer = setTimeout(step, this.everyMs);
    };
    step();
  }
  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    if (this.timer) clearTimeout(this.timer);
    cb(err);
  }
}

/** Append `extra` bytes at the end of the body. */
class Append extends Transform {
  constructor(private readonly extra: number) { super(); }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    cb(null, chunk);
  }
  override _flush(cb: TransformCallback): void {
    cb(null, Buffer.alloc(this.extra, 0x5a));
  }
}

interface RuleState { rule: FaultRule; matched: number; fired: number }

/** The proxy itself (in the calling process). */
export class FaultProxy {
  private server: http.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly upstream = new http.Agent({ keepAlive: true, maxSockets: 64 });
  private rules: RuleState[] = [];
  private opts: Required<FaultOptions> = { seed: 1, flipBytes: 1, shift: 4096, extra: 100 };
  private rand = prng(1);
  private st: FaultStats = FaultProxy.zero();
  private t0 = Date.now();
  port = 0;

  private static zero(): FaultStats {
    return { requests: 0, blobGets: 0, clean: 0, injected: {}, faults: 0, upstreamErrors: 0, notApplied: 0, log: [] };
  }

  constructor(private readonly target: string) {
    this.server = http.createServer((req, res) => this.handle(req, res));
    // stalls must last as long as the client waits
    this.server.requestTimeout = 0;
    this.server.headersTimeout = 60_000;
    this.server.keepAliveTimeout = 20_000;
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      s.on('error', () => undefined);
    });
    this.server.on('clientError', (_err, s) => s.destroy());
  }

  listen(port = 0): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, '127.0.0.1', () => {
        this.server.off('error', reject);
        this.port = (this.server.address() as net.AddressInfo).port;
        resolve(this.port);
      });
    });
  }

  setFaults(rules: FaultRule | FaultRule[], opts: FaultOptions = {}): void {
    const list = Array.isArray(rules) ? rules : [rules];
    for (const r of list) {
      if (!ALL_FAULTS.includes(r.fault)) throw new Error(`unknown fault ${String(r.fault)}`);
      if (r.probability !== undefined && !(r.probability >= 0 && r.probability <= 1)) throw new Error(`bad probability ${r.probability}`);
      if (r.every !== undefined && !(Number.isInteger(r.every) && r.every >= 1)) throw new Error(`bad every ${r.every}`);
    }
    this.rules = list.map((rule) => ({ rule, matched: 0, fired: 0 }));
    this.opts = { seed: opts.seed ?? 1, flipBytes: opts.flipBytes ?? 1, shift: opts.shift ?? 4096, extra: opts.extra ?? 100 };
    this.rand = prng(this.opts.seed);
  }

  clean(): void {
    this.rules = [];
  }

  stats(): FaultStats {
    return JSON.parse(JSON.stringify(this.st)) as FaultStats;
  }

  resetStats(): void {
    this.st = FaultProxy.zero();
    this.t0 = Date.now();
  }

  async close(): Promise<void> {
    this.rules = [];
    for (const s of this.sockets) s.destroy();
    this.upstream.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  /** the rule that fired for the request being handled (its `limit` is given back when not applied) */
  private firedBy: RuleState | undefined;

  private pick(req: http.IncomingMessage, blobGet: boolean): FaultKind | undefined {
    this.firedBy = undefined;
    for (const s of this.rules) {
      const only = s.rule.only ?? 'blob-get';
      const ok = only === 'any' || (only === 'blob-get' ? blobGet : req.headers.range !== undefined);
      if (!ok) continue;
      if (s.rule.limit !== undefined && s.fired >= s.rule.limit) continue;
      s.matched++;
      let fire: boolean;
      if (s.rule.probability !== undefined && s.rule.every === undefined) {
        fire = this.rand() < s.rule.probability;
      } else {
        const every = s.rule.every ?? 1;
        const first = s.rule.first ?? every;
        fire = s.matched >= first && (s.matched - first) % every === 0;
      }
      if (fire) { s.fired++; this.firedBy = s; return s.rule.fault; }
    }
    return undefined;
  }

  private count(fault: FaultKind | undefined): void {
    if (!fault) { this.st.clean++; return; }
    this.st.faults++;
    this.st.injected[fault] = (this.st.injected[fault] ?? 0) + 1;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.st.requests++;
    const blobGet = isBlobGet(req);
    if (blobGet) this.st.blobGets++;
    const fault = this.pick(req, blobGet);
    const rule = this.firedBy;
    this.st.log.push({ ms: Date.now() - this.t0, method: req.method ?? '', path: (req.url ?? '').slice(0, 200), range: req.headers.range, fault });
    if (this.st.log.length > 1000) this.st.log.shift();
    // faults that need the upstream reply are counted once applied (a 401 passes unchanged)
    if (fault && PRE_FORWARD.has(fault)) this.count(fault); else if (!fault) this.st.clean++;
    const sock = req.socket;
    switch (fault) {
      case 'reset-before-headers':
        req.resume();
        sock.resetAndDestroy();
        return;
      case 'stall-accept':
        req.resume();
        return; // never answered; the socket is closed when the client gives up or on close()
      case 'status-500':
      case 'status-502':
      case 'status-503': {
        req.resume();
        const body = Buffer.from(`injected ${fault}\n`);
        res.writeHead(Number(fault.slice(7)), { 'content-type': 'text/plain', 'content-length': body.length });
        res.end(body);
        return;
      }
      default:
        break;
    }
    const headers: http.OutgoingHttpHeaders = { ...req.headers };
    delete headers.connection;
    const range = parseRange(req.headers.range);
    if (fault === 'ignore-range') delete headers.range;
    if (fault === 'shifted-range' && range) {
      const shift = range.start >= this.opts.shift ? -this.opts.shift : this.opts.shift;
      headers.range = `bytes=${range.start + shift}-${range.end + shift}`;
    }
    const [hostname, port] = this.target.split(':');
    const up = http.request({ host: hostname, port: Number(port), method: req.method, path: req.url, headers, agent: this.upstream }, (ur) => {
      this.respond(fault, req, res, ur, range, rule);
    });
    up.on('error', (err) => {
      this.st.upstreamErrors++;
      if (!res.headersSent) {
        const body = Buffer.from(`fault proxy: upstream ${this.target}: ${err.message}\n`);
        res.writeHead(502, { 'content-type': 'text/plain', 'content-length': body.length });
        res.end(body);
      } else {
        sock.destroy();
      }
    });
    // a client that goes away ends the upstream exchange too
    res.on('close', () => { if (!res.writableFinished) up.destroy(); });
    req.pipe(up);
  }

  private respond(fault: FaultKind | undefined, req: http.IncomingMessage, res: http.ServerResponse, ur: http.IncomingMessage, range?: { start: number; end: number }, rule?: RuleState): void {
    const sock = req.socket;
    const status = ur.statusCode ?? 502;
    const headers: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(ur.headers)) if (!HOP_BY_HOP.has(k) && v !== undefined) headers[k] = v;
    const cl = ur.headers['content-length'] !== undefined ? Number(ur.headers['content-length']) : undefined;
    const ok = status >= 200 && status <= 299;
    ur.on('error', () => sock.destroy());
    const pass = (t?: Transform) => {
      if (t) {
        ur.pipe(t).pipe(res);
      } else {
        ur.pipe(res);
      }
    };
    if (fault && !PRE_FORWARD.has(fault)) {
      // shifted-range and ignore-range changed the request: they count whatever the reply
      if (ok || fault === 'shifted-range' || fault === 'ignore-range') this.count(fault);
      else {
        // e.g. a 401 challenge: passed unchanged, and the rule's limit is not used up by it
        this.st.clean++;
        this.st.notApplied++;
        if (rule) rule.fired--;
      }
    }
    switch (ok ? fault : undefined) {
      case 'reset-after-headers':
        res.writeHead(status, headers);
        res.flushHeaders();
        ur.destroy();
        setTimeout(() => sock.resetAndDestroy(), 20);
        return;
      case 'truncate': {
        const n = cl ?? 2;
        res.writeHead(status, headers);
        pass(new Limit(Math.floor(n / 2), () => {
          ur.destroy();
          // FIN once what was written has gone out; never the rest of the body
          setTimeout(() => { sock.end(); setTimeout(() => sock.destroy(), 1000); }, 10);
        }));
        return;
      }
      case 'stall-headers':
        res.writeHead(status, headers);
        res.flushHeaders();
        ur.destroy();
        return; // silence
      case 'stall-body': {
        const n = cl ?? 2;
        res.writeHead(status, headers);
        pass(new Limit(Math.max(1, Math.floor(n / 2)), () => ur.destroy()));
        return; // the rest never comes
      }
      case 'trickle': {
        const t = new Trickle(16, 100);
        res.on('close', () => t.destroy());
        res.writeHead(status, headers);
        pass(t);
        return;
      }
      case 'flip': {
        const n = cl ?? 1;
        const pos: number[] = [];
        for (let i = 0; i < this.opts.flipBytes; i++) pos.push(Math.floor(this.rand() * n));
        res.writeHead(status, headers);
        pass(new Flip(pos));
        return;
      }
      case 'bad-content-range':
        if (range) {
          const s = range.start + this.opts.shift;
          headers['content-range'] = `bytes ${s}-${s + range.end - range.start}/*`;
        }
        res.writeHead(status, headers);
        pass();
        return;
      case 'extra-bytes':
        if (cl !== undefined) headers['content-length'] = cl + this.opts.extra;
        res.writeHead(status, headers);
        pass(new Append(this.opts.extra));
        return;
      case 'extra-bytes-chunked':
        delete headers['content-length'];
        res.writeHead(status, headers); // no length: node sends chunked
        pass(new Append(this.opts.extra));
        return;
      case 'trailing-garbage':
        res.writeHead(status, headers);
        ur.pipe(res, { end: false });
        ur.on('end', () => {
          res.end();
          // stray bytes after a complete response, on a connection the client may reuse
          res.on('finish', () => { if (!sock.destroyed) sock.write(Buffer.alloc(this.opts.extra, 0x41)); });
        });
        return;
      default:
        // clean, 'shifted-range' and 'ignore-range' (upstream's reply passes unchanged), or a non-2xx reply
        res.writeHead(status, headers);
        pass();
    }
  }
}

/** Start a proxy in this process in front of `target` (host:port). */
export async function startFaultProxy(target: string, port = 0): Promise<FaultProxyHandle> {
  const p = new FaultProxy(target);
  await p.listen(port);
  return {
    host: `127.0.0.1:${p.port}`,
    port: p.port,
    setFaults: async (r, o) => p.setFaults(r, o),
    clean: async () => p.clean(),
    stats: async () => p.stats(),
    resetStats: async () => p.resetStats(),
    close: () => p.close(),
  };
}

// ------------------------------------------------------------ readers for fault tests

/** A watchdog fired. */
export class LivenessError extends Error {}

/** `p`, or an error once `ms` passed (a liveness bound, not a speed assertion). */
export async function watchdog<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const dog = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new LivenessError(`liveness: ${what} still pending after ${ms} ms (a hang)`)), ms);
  });
  try {
    return await Promise.race([p, dog]);
  } finally {
    clearTimeout(t);
  }
}

export interface PieceReport {
  pieces: number;
  ok: number;
  eio: number;
  /** files with at least one EIO piece */
  eioFiles: Set<string>;
  /** "<file>@<offset>" of every EIO piece */
  eioPieces: string[];
  /** "<file>@<offset>: <ms> ms (<outcome>)" of every open/read that took longer than `budgetMs` */
  overBudget: string[];
  /** the longest open/read, ms */
  maxMs: number;
}

export interface PieceOptions {
  /** bytes per read(2) (the chunk size: a piece touches one chunk) */
  piece: number;
  /** liveness bound of one open/read, ms: a read still pending then is a hang (throws) */
  boundMs: number;
  /** a read that returns (bytes or EIO) after this many ms is listed in `overBudget` (default: boundMs) */
  budgetMs?: number;
  /** files read at once (default 1), each on a thread of its own */
  concurrency?: number;
  /**
   * O_DIRECT: each read(2) is exactly one FUSE READ (no page cache, no kernel
   * readahead, and no kernel retry of a failed readahead with a second READ)
   */
  direct?: boolean;
  /** go on with the next file after a file's first EIO */
  stopAtEio?: boolean;
}

/**
 * The reader thread: pread(2) of each piece with readSync, so N readers are N
 * real concurrent reads whatever the test process's libuv pool is doing (its 4
 * threads would queue a 5th reader behind 4 stuck reads), and the main event
 * loop stays free. One message per open and per piece.
 */
const READER_CODE = `
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
parentPort.on('message', (job) => {
  let fd;
  try { fd = fs.openSync(job.file, job.direct ? fs.constants.O_RDONLY | fs.constants.O_DIRECT : 'r'); } catch (e) { parentPort.postMessage({ t: 'open', code: e.code || 'ERR', message: e.message }); return; }
  parentPort.postMessage({ t: 'open' });
  try {
    for (let off = 0; ; off += job.piece) {
      const expect = Math.min(job.piece, Math.max(0, job.size - off));
      const buf = Buffer.alloc(job.piece);
      let n = -1, code, message;
      try { n = fs.readSync(fd, buf, 0, job.piece, off); } catch (e) { code = e.code || 'ERR'; message = e.message; }
      const data = n > 0 ? buf.buffer.slice(0, n) : undefined;
      parentPort.postMessage({ t: 'piece', off, n, code, message, data }, data ? [data] : []);
      if (expect === 0 || (code && job.stopAtEio)) break;
    }
  } finally {
    fs.closeSync(fd);
    parentPort.postMessage({ t: 'done' });
  }
});
`;

interface ReaderMsg { t: 'open' | 'piece' | 'done'; off?: number; n?: number; code?: string; message?: string; data?: ArrayBuffer }

/** A reader thread with a queue of its messages, each awaited under a watchdog. */
class Reader {
  private readonly w: Worker;
  private readonly inbox: ReaderMsg[] = [];
  private waiter: ((m: ReaderMsg) => void) | undefined;
  private dead: Error | undefined;

  constructor() {
    this.w = new Worker(READER_CODE, { eval: true });
    this.w.on('message', (m: ReaderMsg) => {
      if (this.waiter) { const f = this.waiter; this.waiter = undefined; f(m); } else this.inbox.push(m);
    });
    this.w.on('error', (e) => { this.dead = e; });
    this.w.unref();
  }

  send(job: { file: string; piece: number; size: number; stopAtEio: boolean; direct: boolean }): void {
    this.w.postMessage(job);
  }

  next(ms: number, what: string): Promise<ReaderMsg> {
    if (this.dead) return Promise.reject(this.dead);
    const m = this.inbox.shift();
    if (m) return Promise.resolve(m);
    return watchdog(new Promise<ReaderMsg>((resolve) => { this.waiter = resolve; }), ms, what);
  }

  /** Stop the thread (a read stuck in the kernel ends when the daemon goes). */
  close(): void {
    void this.w.terminate();
  }
}

/**
 * Read each file `rel` of `want` under `root` in pieces, each read(2) under a
 * watchdog: a piece must be exactly the expected bytes (full length: a short
 * read is wrong data too) or fail with EIO. Anything else (other bytes, other
 * errors, a read that does not return) throws. Reads run on `concurrency`
 * threads of their own.
 */
export async function readEveryPiece(root: string, want: Map<string, Buffer>, list: string[], o: PieceOptions): Promise<PieceReport> {
  const r: PieceReport = { pieces: 0, ok: 0, eio: 0, eioFiles: new Set(), eioPieces: [], overBudget: [], maxMs: 0 };
  const queue = [...list];
  let failed = false;
  const readers: Reader[] = [];
  const budget = o.budgetMs ?? o.boundMs;
  const timed = (t0: number, what: string, outcome: string) => {
    const ms = Date.now() - t0;
    r.maxMs = Math.max(r.maxMs, ms);
    if (ms > budget) r.overBudget.push(`${what}: ${ms} ms (${outcome})`);
  };
  const worker = async (reader: Reader) => {
    for (let rel = queue.shift(); rel !== undefined && !failed; rel = queue.shift()) {
      const data = want.get(rel);
      if (!data) throw new Error(`no expected content for ${rel}`);
      let t0 = Date.now();
      reader.send({ file: path.join(root, rel), piece: o.piece, size: data.length, stopAtEio: !!o.stopAtEio, direct: !!o.direct });
      const opened = await reader.next(o.boundMs, `open ${rel}`);
      timed(t0, `open ${rel}`, opened.code ?? 'ok');
      if (opened.code) throw new Error(`open ${rel}: ${opened.message}`);
      for (let at = 0; ; at += o.piece) {
        t0 = Date.now();
        const m = await reader.next(o.boundMs, `read ${rel} at ${at}`);
        if (m.t === 'done') break;
        const off = m.off!;
        timed(t0, `${rel}@${off}`, m.code ?? `${m.n} bytes`);
        const expect = Math.min(o.piece, Math.max(0, data.length - off));
        r.pieces++;
        if (m.code) {
          if (m.code !== 'EIO') throw new Error(`read ${rel} at ${off}: ${m.message} (only EIO is allowed)`);
          r.eio++;
          r.eioFiles.add(rel);
          r.eioPieces.push(`${rel}@${off}`);
          continue;
        }
        const got = Buffer.from(m.data ?? new ArrayBuffer(0));
        if (m.n !== expect) throw new Error(`WRONG DATA: read ${rel} at ${off} returned ${m.n} bytes instead of ${expect}`);
        if (!got.equals(data.subarray(off, off + expect))) {
          const at = got.findIndex((b, i) => b !== data[off + i]);
          throw new Error(`WRONG BYTES: ${rel} at ${off}: first difference at file offset ${off + at}`);
        }
        r.ok++;
      }
    }
  };
  try {
    // the first failure ends the pass (no new file is started)
    await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 1) }, () => {
      const reader = new Reader();
      readers.push(reader);
      return worker(reader).catch((e) => { failed = true; throw e; });
    }));
  } finally {
    for (const x of readers) x.close();
  }
  return r;
}

// ------------------------------------------------------------ blob cache inspection for fault tests

/** One data chunk of a file: file offset, chunk index and place in the blob cache file. */
export interface FileChunk { index: number; fileOffset: number; uncompressedOffset: number; size: number }

export interface ImageChunks {
  blobId: string;
  chunkCount: number;
  /** regular file (path relative to the root) → its chunks in file order */
  byFile: Map<string, FileChunk[]>;
}

/** The chunks of each of `files` in a single-blob image (read with the project's RAFS reader). */
export async function imageChunks(boot: string, files: Iterable<string>): Promise<ImageChunks> {
  // loaded here, not at the top: the proxy's own process never needs the RAFS reader
  const { loadBootstrapFile } = await import('../../src/rafs/image');
  const { sb } = loadBootstrapFile(boot);
  if (sb.blobs.length !== 1) throw new Error(`${boot}: ${sb.blobs.length} blobs, expected 1`);
  const byFile = new Map<string, FileChunk[]>();
  for (const rel of files) {
    let ino = sb.root() as ReturnType<typeof sb.root> | undefined;
    for (const part of rel.split('/')) ino = ino?.lookup(Buffer.from(part));
    if (!ino?.isReg()) throw new Error(`${rel} is not a regular file of ${boot}`);
    byFile.set(rel, ino.chunks().map((c) => ({ index: c.index, fileOffset: c.fileOffset, uncompressedOffset: c.uncompressedOffset, size: c.uncompressedSize })));
  }
  return { blobId: sb.blobs[0].blobId, chunkCount: sb.blobs[0].chunkCount, byFile };
}

/** Chunk indexes marked ready in the blob's chunk map in `workDir` (empty when there is none yet). */
export async function readyChunks(workDir: string, img: ImageChunks): Promise<Set<number>> {
  const { cacheFileNames } = await import('../../src/storage/cache/filecache');
  const ready = new Set<number>();
  let map: Buffer;
  try {
    map = fs.readFileSync(cacheFileNames(workDir, img.blobId).chunkMap);
  } catch {
    return ready;
  }
  // header: magic, version, magic2, all_ready (0x4d4d4150) as u32 LE; bitmap after 4096 bytes, MSB first
  const allReady = map.length >= 16 && map.readUInt32LE(12) === 0x4d4d4150;
  for (let i = 0; i < img.chunkCount; i++) {
    const byte = 4096 + (i >> 3);
    if (allReady || (byte < map.length && map[byte] & (0x80 >>> (i & 7)))) ready.add(i);
  }
  return ready;
}

/**
 * Chunks marked ready in the cache of `workDir` whose bytes in the cache data
 * file differ from the source (`want`: file → content): a poisoned cache.
 * A bit is set only after its bytes are written, so reading the map first and
 * the data second is safe while the daemon runs.
 */
export async function poisonedChunks(workDir: string, img: ImageChunks, want: Map<string, Buffer>): Promise<string[]> {
  const { cacheFileNames } = await import('../../src/storage/cache/filecache');
  const ready = await readyChunks(workDir, img);
  if (ready.size === 0) return [];
  const bad: string[] = [];
  const fd = fs.openSync(cacheFileNames(workDir, img.blobId).data, 'r');
  try {
    for (const [rel, chunks] of img.byFile) {
      const data = want.get(rel);
      if (!data) continue;
      for (const c of chunks) {
        if (!ready.has(c.index)) continue;
        const buf = Buffer.alloc(c.size);
        const n = fs.readSync(fd, buf, 0, c.size, c.uncompressedOffset);
        if (n !== c.size || !buf.equals(data.subarray(c.fileOffset, c.fileOffset + c.size))) bad.push(`${rel}@${c.fileOffset} (chunk ${c.index})`);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return bad;
}

// ------------------------------------------------------------ child process

interface Msg { id: number; op: 'setFaults' | 'clean' | 'stats' | 'resetStats' | 'close'; args?: unknown[] }
interface Reply { id: number; result?: unknown; error?: string }

/** Start a proxy in a child process (IPC-controlled) in front of `target` (host:port). */
export async function spawnFaultProxy(target: string, port = 0): Promise<FaultProxyHandle> {
  const child: ChildProcess = fork(__filename, [], {
    execArgv: ['--require', require.resolve('tsx/cjs')],
    env: { ...process.env, NYDUS_FAULT_PROXY_CHILD: '1', NYDUS_FAULT_PROXY_TARGET: target, NYDUS_FAULT_PROXY_PORT: String(port) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  let next = 1;
  let exited = false;
  const exit = new Promise<void>((r) => child.on('exit', () => {
    exited = true;
    for (const p of pending.values()) p.reject(new Error('fault proxy process exited'));
    pending.clear();
    r();
  }));
  const ready = new Promise<number>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('fault proxy did not start in 20 s')), 20_000);
    child.on('message', (m: Reply | { ready: number }) => {
      if ('ready' in m) { clearTimeout(t); resolve(m.ready); return; }
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      if (m.error !== undefined) p.reject(new Error(m.error)); else p.resolve(m.result);
    });
    void exit.then(() => { clearTimeout(t); reject(new Error('fault proxy process exited before it was ready')); });
  });
  let listening: number;
  try {
    listening = await ready;
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  const call = (op: Msg['op'], ...args: unknown[]): Promise<unknown> => {
    if (exited) return Promise.reject(new Error('fault proxy process exited'));
    const id = next++;
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject });
      child.send({ id, op, args } satisfies Msg);
    });
  };
  return {
    host: `127.0.0.1:${listening}`,
    port: listening,
    setFaults: async (r, o) => { await call('setFaults', r, o); },
    clean: async () => { await call('clean'); },
    stats: async () => (await call('stats')) as FaultStats,
    resetStats: async () => { await call('resetStats'); },
    async close() {
      if (!exited) {
        await call('close').catch(() => undefined);
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        child.disconnect?.();
        await exit;
        clearTimeout(t);
      }
    },
  };
}

async function childMain(): Promise<void> {
  const proxy = new FaultProxy(process.env.NYDUS_FAULT_PROXY_TARGET!);
  const port = await proxy.listen(Number(process.env.NYDUS_FAULT_PROXY_PORT ?? 0));
  // the parent went away: do not outlive it
  process.on('disconnect', () => { void proxy.close().finally(() => process.exit(0)); });
  process.on('message', (m: Msg) => {
    const reply = (r: Omit<Reply, 'id'>) => process.send?.({ id: m.id, ...r });
    try {
      switch (m.op) {
        case 'setFaults': proxy.setFaults(m.args![0] as FaultRule[], (m.args![1] ?? {}) as FaultOptions); reply({}); break;
        case 'clean': proxy.clean(); reply({}); break;
        case 'stats': reply({ result: proxy.stats() }); break;
        case 'resetStats': proxy.resetStats(); reply({}); break;
        case 'close': void proxy.close().then(() => reply({})); break;
        default: reply({ error: `unknown op ${String((m as Msg).op)}` });
      }
    } catch (e) {
      reply({ error: (e as Error).message });
    }
  });
  process.send!({ ready: port });
}

if (process.env.NYDUS_FAULT_PROXY_CHILD === '1' && process.send) {
  void childMain().catch((e) => { console.error(`fault proxy: ${(e as Error).message}`); process.exit(1); });
}
