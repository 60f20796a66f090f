/**
 * Client of the nydusd administration API (rafs-spec §8): HTTP/1.1 over the
 * daemon's `--apisock` unix socket. One client for every caller: `nydusctl`
 * (src/bin/nydusctl.ts) and containerd-nydus-grpc, which starts host nydusd
 * instances and drives them through it (nydusify-snapshotter.md §3.3).
 *
 * As upstream's snapshotter client: a reply counts as success on any 2xx
 * (upstream: 200/204); otherwise the body is decoded as `{code, message}` and
 * the message becomes the error. Differences: no keep-alive pool (one
 * connection per request; the API is low-rate), a 5 s connect timeout and a
 * 30 s request timeout as upstream; replies are bounded to 16 MiB.
 */
import * as http from 'node:http';

export const REQUEST_TIMEOUT_MS = 30_000;
export const CONNECT_TIMEOUT_MS = 5_000;
/** Largest reply body accepted (metrics of a busy daemon are a few KiB). */
export const MAX_REPLY_BYTES = 16 << 20;

export type ApiErrorCode = 'ECONNECT' | 'ETIMEDOUT' | 'EREPLY' | 'EHTTP' | 'ENOTREADY';

/** Any failure talking to nydusd; `code` says which kind, `status` the HTTP status of an EHTTP error. */
export class ApiClientError extends Error {
  constructor(message: string, readonly code: ApiErrorCode, readonly status?: number) {
    super(message);
    this.name = 'ApiClientError';
  }
}

export interface ApiReply {
  status: number;
  text: string;
}

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type JsonObj = { [k: string]: Json };

export interface RequestOptions {
  timeoutMs?: number;
  userAgent?: string;
}

/** One request on the API socket. Connection failures and timeouts become ApiClientError. */
export function apiRequest(sock: string, method: string, path: string, body?: string, opts: RequestOptions = {}): Promise<ApiReply> {
  const timeoutMs = opts.timeoutMs ?? REQUEST_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(body, 'utf8');
    const headers: http.OutgoingHttpHeaders = {
      Host: 'localhost',
      'User-Agent': opts.userAgent ?? 'nydusctl',
      Accept: 'application/json',
    };
    if (payload !== undefined) headers['Content-Type'] = 'application/json';
    if (method !== 'GET') headers['Content-Length'] = payload?.length ?? 0;
    let connected = false;
    let settled = false;
    const fail = (e: ApiClientError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(connectTimer);
      reject(e);
    };
    const req = http.request({ socketPath: sock, method, path, headers, timeout: timeoutMs, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_REPLY_BYTES) {
          req.destroy();
          fail(new ApiClientError(`reply of ${method} ${path} exceeds ${MAX_REPLY_BYTES} bytes`, 'EREPLY'));
          return;
        }
        chunks.push(c);
      });
      res.on('end', () => {
        if (settled) return;
        settled = true;
        clearTimeout(connectTimer);
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') });
      });
      res.on('error', (e) => fail(new ApiClientError(`reading the reply of ${method} ${path} failed: ${e.message}`, 'EREPLY')));
    });
    const connectTimer = setTimeout(() => {
      if (!connected) req.destroy(new ApiClientError(`cannot connect to nydusd API socket ${sock}: timed out`, 'ECONNECT'));
    }, Math.min(CONNECT_TIMEOUT_MS, timeoutMs));
    req.on('socket', (s) => s.once('connect', () => { connected = true; }));
    req.on('timeout', () => req.destroy(new ApiClientError(`${method} ${path} timed out after ${timeoutMs / 1000}s`, 'ETIMEDOUT')));
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e instanceof ApiClientError) return fail(e);
      if (!connected && e.code && e.code !== 'ECONNRESET') {
        return fail(new ApiClientError(`cannot connect to nydusd API socket ${sock}: ${e.code}`, 'ECONNECT'));
      }
      fail(new ApiClientError(`${method} ${path} failed: ${e.code ?? e.message}`, 'EREPLY'));
    });
    req.end(payload);
  });
}

/** Message of a non-2xx reply: the `{"code","message"}` body's message when present. */
export function replyError(r: ApiReply): string {
  let msg = r.text.trim();
  try {
    const b: unknown = JSON.parse(r.text);
    if (b && typeof b === 'object' && typeof (b as { message?: unknown }).message === 'string') {
      msg = (b as { message: string }).message;
    }
  } catch {
    /* not JSON: keep the raw text */
  }
  return `${msg || http.STATUS_CODES[r.status] || 'request failed'} (HTTP ${r.status})`;
}

/**
 * JSON.parse that keeps integers beyond 2^53 exact by turning them into
 * strings (VFS inode numbers are `fs_index << 56 | ino`).
 */
export function parseJsonExact(text: string): unknown {
  let out = '';
  let inStr = false;
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (inStr) {
      out += c;
      if (c === '\\') { out += text[i + 1] ?? ''; i += 2; continue; }
      if (c === '"') inStr = false;
      i++;
      continue;
    }
    if (c === '"') { inStr = true; out += c; i++; continue; }
    if ((c >= '0' && c <= '9') || c === '-') {
      let j = i + 1;
      while (j < text.length && /[0-9.eE+-]/.test(text[j])) j++;
      const num = text.slice(i, j);
      out += /^-?\d+$/.test(num) && !Number.isSafeInteger(Number(num)) ? `"${num}"` : num;
      i = j;
      continue;
    }
    out += c;
    i++;
  }
  return JSON.parse(out);
}

/** `?k=v&…` with values percent-encoded (Go's url.Values encoding for the characters that matter here). */
export function query(params: Record<string, string | undefined>): string {
  const q = Object.entries(params)
    .filter((e): e is [string, string] => e[1] !== undefined)
    .map(([k, v]) => `${k}=${encodeURIComponent(v)}`)
    .join('&');
  return q ? `?${q}` : '';
}

/** Body of POST /api/v1/mount. */
export interface MountRequest {
  source: string;
  fs_type: string;
  config: string;
  prefetch_files?: string[];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class NydusdClient {
  constructor(readonly sock: string, readonly opts: RequestOptions = {}) {}

  /** 2xx → reply (body may be empty for 204); otherwise ApiClientError EHTTP with the reply's message. */
  async call(method: string, path: string, body?: string): Promise<ApiReply> {
    const r = await apiRequest(this.sock, method, path, body, this.opts);
    if (r.status < 200 || r.status > 299) throw new ApiClientError(replyError(r), 'EHTTP', r.status);
    return r;
  }

  async getJson(path: string): Promise<{ text: string; value: Json }> {
    const r = await this.call('GET', path);
    if (r.status === 204 || r.text.trim() === '') return { text: r.text, value: null };
    try {
      return { text: r.text, value: parseJsonExact(r.text) as Json };
    } catch {
      throw new ApiClientError(`GET ${path}: reply is not JSON: ${r.text.slice(0, 200)}`, 'EREPLY');
    }
  }

  /** GET /api/v1/daemon as an object. */
  async daemonInfo(): Promise<JsonObj> {
    const { value } = await this.getJson('/api/v1/daemon');
    if (!value || typeof value !== 'object' || Array.isArray(value)) throw new ApiClientError('daemon info reply is not a JSON object', 'EREPLY');
    return value;
  }

  /** The daemon's `state` (INIT, READY, RUNNING, …). */
  async state(): Promise<string> {
    const { value } = await this.getJson('/api/v1/daemon');
    const s = value && typeof value === 'object' && !Array.isArray(value) ? value.state : undefined;
    return typeof s === 'string' ? s : 'UNKNOWN';
  }

  /** Throws ENOTREADY unless the daemon reports RUNNING. */
  async requireRunning(): Promise<void> {
    const state = await this.state();
    if (state !== 'RUNNING') throw new ApiClientError(`daemon is not ready (state ${state})`, 'ENOTREADY');
  }

  /**
   * Poll GET /api/v1/daemon until `state` (upstream: 20 × (100 ms + 0..100 ms
   * jitter)); connection errors count as "not yet". `abort` ends the wait early
   * (e.g. the process exited).
   */
  async waitUntilState(state: string, o: { attempts?: number; delayMs?: number; abort?: () => string | undefined } = {}): Promise<void> {
    const attempts = o.attempts ?? 20;
    let last = 'no reply';
    for (let i = 0; i < attempts; i++) {
      const why = o.abort?.();
      if (why) throw new ApiClientError(`waiting for nydusd state ${state}: ${why}`, 'ENOTREADY');
      try {
        const s = await this.state();
        if (s === state) return;
        last = `state ${s}`;
      } catch (e) {
        last = e instanceof Error ? e.message : String(e);
      }
      await sleep((o.delayMs ?? 100) + Math.floor(Math.random() * 100));
    }
    throw new ApiClientError(`nydusd did not reach state ${state} (${last})`, 'ENOTREADY');
  }

  async mount(mountpoint: string, req: MountRequest): Promise<void> {
    await this.call('POST', `/api/v1/mount${query({ mountpoint })}`, JSON.stringify(req));
  }

  async umount(mountpoint: string): Promise<void> {
    await this.call('DELETE', `/api/v1/mount${query({ mountpoint })}`);
  }

  /** GET /api/v1/metrics[?id=] (fs stats). */
  async fsMetrics(id?: string): Promise<Json> {
    return (await this.getJson(`/api/v1/metrics${query({ id })}`)).value;
  }

  /** GET /api/v1/metrics/blobcache[?id=]. */
  async blobcacheMetrics(id?: string): Promise<Json> {
    return (await this.getJson(`/api/v1/metrics/blobcache${query({ id })}`)).value;
  }

  async setLogLevel(level: string): Promise<void> {
    await this.call('PUT', '/api/v1/daemon', JSON.stringify({ log_level: level }));
  }

  async exit(): Promise<void> {
    await this.call('PUT', '/api/v1/daemon/exit');
  }
}
