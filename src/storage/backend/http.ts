/**
 * Common HTTP layer for remote backends (storage-backends §1): one undici
 * Agent per backend (keep-alive connection reuse), `connect_timeout` and
 * `timeout` in seconds (0 disables), `skip_verify` / `ca_cert_files` in the
 * TLS connect options, `User-Agent: nydusd/1.0.0` plus `NYDUS_HEADER_<Name>`
 * headers. Redirects are never followed here (the registry backend follows
 * them by hand). Everything a server controls is bounded: header size (undici
 * `maxHeaderSize`), body size (readExact / readLimited abort past the limit).
 *
 * With `proxy.url` set, every request is routed as storage-backends §1 "Proxy
 * routing" says (routing state and its deliberate differences in proxy.ts):
 * healthy proxy → through it (`use_http` rewrite, Dragonfly headers unless a
 * source-fallback attempt), a reply >= 500 or a transport error retried once
 * directly when `fallback` is on; unhealthy proxy → directly (`fallback`) or
 * EIO "proxy is not healthy and fallback is disabled"; a Dragonfly
 * `X-Dragonfly-Error-Type: proxy` reply → a typed error. Requests with
 * `{direct: true}` (registry token requests) never touch the proxy.
 */
import * as fs from 'node:fs';
import type { Readable } from 'node:stream';
import * as tls from 'node:tls';
import { Agent, type Dispatcher, type Pool } from 'undici';
import type { ProxyConfig } from '../../common/config';
import { eio } from '../../common/errno';
import { streamEnded, streamStarted } from '../../common/heap-growing';
import { warnLimited } from '../../common/log';
import { ProxyForbiddenError, ProxyRateLimitedError, ProxyRouter, type RequestOptions } from './proxy';

export type { RequestOptions } from './proxy';

export const USER_AGENT = 'nydusd/1.0.0';
/** response header block limit (bytes) */
export const MAX_HEADER_SIZE = 16 * 1024;

export interface HttpClientOptions {
  /** whole-request timeout, seconds; 0 = none */
  timeout: number;
  /** connect timeout, seconds; 0 = none */
  connect_timeout: number;
  skip_verify: boolean;
  ca_cert_files: string[];
  /** forward proxy (storage-backends §1 "Proxy routing"), used when `url` is non-empty */
  proxy?: ProxyConfig;
}

/** Extras for tests and embedders. */
export interface HttpClientExtras {
  /** clock of the proxy health timer (tests) */
  now?: () => number;
}

export type Headers = Record<string, string>;

/** A request body: text, bytes, or a stream (uploads; a stream cannot be resent). */
export type RequestBodyData = string | Buffer | Readable;

export interface HttpResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
  /** stop the attempt's timer; call once the body is consumed or discarded */
  done(): void;
  /** the reply came through the forward proxy */
  viaProxy?: boolean;
}

/** `NYDUS_HEADER_<Name>` environment variables as extra headers (invalid names skipped). */
export function envHeaders(env: NodeJS.ProcessEnv = process.env): Headers {
  const out: Headers = {};
  for (const [k, v] of Object.entries(env)) {
    if (!k.startsWith('NYDUS_HEADER_') || v === undefined) continue;
    const name = k.slice('NYDUS_HEADER_'.length);
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) || /[\r\n\0]/.test(v)) continue;
    out[name] = v;
  }
  return out;
}

/** One header value as a string (first of a repeated header). */
export function headerValue(h: HttpResponse['headers'], name: string): string | undefined {
  const v = h[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

export class HttpClient {
  readonly agent: Agent;
  /** proxy routing state; undefined without `proxy.url` */
  readonly proxy: ProxyRouter | undefined;
  private readonly timeoutMs: number;
  private readonly common: Headers;
  private readonly inflight = new Set<AbortController>();
  private closed = false;

  constructor(opts: HttpClientOptions, extras: HttpClientExtras = {}) {
    const ca: string[] = [];
    for (const f of opts.ca_cert_files ?? []) {
      try {
        ca.push(fs.readFileSync(f, 'utf8'));
      } catch (err) {
        throw eio(`cannot read ca_cert_files entry ${f}: ${(err as Error).message}`, err);
      }
    }
    this.timeoutMs = opts.timeout > 0 ? opts.timeout * 1000 : 0;
    const tlsOpts: { rejectUnauthorized: boolean; ca?: string[] } = { rejectUnauthorized: !opts.skip_verify };
    if (ca.length > 0) tlsOpts.ca = [...tls.rootCertificates, ...ca];
    // undici treats 0 as "no timeout" for connect, headers and body
    const connectTimeoutMs = opts.connect_timeout > 0 ? opts.connect_timeout * 1000 : 0;
    const pool: Pool.Options = {
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 600_000,
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
      maxHeaderSize: MAX_HEADER_SIZE,
      connections: 32,
    };
    this.agent = new Agent({ ...pool, connect: { ...tlsOpts, timeout: connectTimeoutMs } });
    this.proxy = opts.proxy?.url ? new ProxyRouter(opts.proxy, { tls: tlsOpts, connectTimeoutMs, pool, now: extras.now }) : undefined;
    this.common = { 'user-agent': USER_AGENT, ...envHeaders() };
  }

  /**
   * Send one request (no redirects followed, no status check), routed through
   * the proxy when one is configured (module doc). The attempt's timer
   * (`timeout`) keeps running until `done()` or the body is consumed.
   */
  async request(method: string, url: URL, headers: Headers = {}, body?: RequestBodyData, ro: RequestOptions = {}): Promise<HttpResponse> {
    if (this.closed) throw eio('http client is closed');
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw eio(`unsupported URL scheme ${url.protocol}`);
    const p = this.proxy;
    if (!p || ro.direct) return this.send(this.agent, method, url, headers, body, false);
    p.touch();
    if (ro.source && p.fallback) return this.send(this.agent, method, url, headers, body, false);
    if (!p.isHealthy()) {
      if (!p.fallback) throw eio(`proxy ${p.url} is not healthy and fallback is disabled`);
      p.noteFallback('proxy is not healthy');
      return this.send(this.agent, method, url, headers, body, false);
    }
    const h = ro.source ? headers : { ...p.dragonflyHeaders(!!ro.prefetch), ...headers };
    let r: HttpResponse;
    try {
      r = await this.send(p.dispatcher, method, p.target(url), h, body, true);
    } catch (err) {
      if (!p.fallback || this.closed) throw err;
      p.noteFallback('proxy request failed', { err: describe(err) });
      return this.send(this.agent, method, url, headers, body, false);
    }
    if (r.status >= 500 && p.fallback) {
      await discard(r);
      p.noteFallback('proxy answered an error', { status: r.status });
      return this.send(this.agent, method, url, headers, body, false);
    }
    if (headerValue(r.headers, 'x-dragonfly-error-type') === 'proxy') {
      const text = await errorText(r);
      const msg = `proxy ${p.url} refused ${url.host}: status ${r.status}${text ? `: ${text}` : ''}`;
      warnLimited('storage.proxy.error', { proxy: p.url, status: r.status }, 'proxy error reply');
      if (r.status === 429) throw new ProxyRateLimitedError(`${msg} (rate limited)`);
      if (r.status === 403) throw new ProxyForbiddenError(`${msg} (forbidden)`);
      throw eio(msg);
    }
    return r;
  }

  private async send(d: Dispatcher, method: string, url: URL, headers: Headers, body: RequestBodyData | undefined, viaProxy: boolean): Promise<HttpResponse> {
    if (this.closed) throw eio('http client is closed');
    const ac = new AbortController();
    this.inflight.add(ac);
    let timer: NodeJS.Timeout | undefined;
    if (this.timeoutMs > 0) {
      timer = setTimeout(() => ac.abort(eio(`request timed out after ${this.timeoutMs / 1000} s`)), this.timeoutMs);
    }
    const done = () => {
      if (timer) clearTimeout(timer);
      timer = undefined;
      this.inflight.delete(ac);
    };
    try {
      const r = await d.request({
        origin: url.origin,
        path: url.pathname + url.search,
        method: method as Dispatcher.HttpMethod,
        headers: { ...this.common, ...headers },
        body,
        signal: ac.signal,
      });
      return { status: r.statusCode, headers: r.headers, body: r.body, done, viaProxy };
    } catch (err) {
      done();
      throw err;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const ac of this.inflight) ac.abort(eio('backend closed'));
    this.inflight.clear();
    await Promise.all([
      this.agent.destroy().catch(() => undefined),
      this.proxy?.close(),
    ]);
  }
}

/** Drop a body and its connection (never an unhandled 'error'). */
export function abortBody(r: HttpResponse): void {
  r.body.on('error', () => undefined);
  r.body.destroy();
}

/** Discard a response body (at most `limit` bytes read; the socket is dropped past that). */
export async function discard(r: HttpResponse, limit = 64 * 1024): Promise<void> {
  try {
    await r.body.dump({ limit });
  } catch {
    // already failed or aborted: nothing to drain
  } finally {
    r.done();
  }
}

/** Read at most `max` bytes of a body; a longer body is an error (and is aborted). */
export async function readLimited(r: HttpResponse, max: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of r.body) {
      const b = chunk as Buffer;
      n += b.length;
      if (n > max) {
        abortBody(r);
        throw eio(`${what}: response body larger than ${max} bytes`);
      }
      parts.push(b);
    }
    return Buffer.concat(parts, n);
  } finally {
    r.done();
  }
}

/** Up to `max` bytes of an error body as text (the rest is dropped). */
export async function errorText(r: HttpResponse, max = 512): Promise<string> {
  const parts: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of r.body) {
      const b = chunk as Buffer;
      parts.push(b.subarray(0, Math.max(0, max - n)));
      n += b.length;
      if (n >= max) {
        abortBody(r);
        break;
      }
    }
  } catch {
    // the text is only for the message
  } finally {
    r.done();
  }
  return Buffer.concat(parts).toString('utf8').replace(/[^\x20-\x7e]+/g, ' ').trim().slice(0, max);
}

/**
 * Exactly `length` bytes of body, copied into a buffer of that size (`into`
 * when given): a Content-Length that differs, a body that runs past `length`
 * (aborted at once, never buffered) or ends short are errors. Nothing is
 * written to the buffer once the returned promise has settled (the body's
 * listener is gone or the body has ended). While it streams, V8's heap
 * limit has room for the socket's buffers (common/heap-growing.ts).
 */
export async function readExact(r: HttpResponse, length: number, into?: Buffer, onProgress?: (filled: number) => void): Promise<Buffer> {
  const out = into?.length === length ? into : Buffer.allocUnsafe(length);
  const progress = out === into ? onProgress : undefined;
  let n = 0;
  streamStarted();
  try {
    const cl = headerValue(r.headers, 'content-length');
    if (cl !== undefined && /^\d+$/.test(cl) && Number(cl) !== length) {
      abortBody(r);
      throw eio(`expected ${length} bytes, server announced Content-Length ${cl}`);
    }
    // 'data' events straight into `out` (an async iterator costs a promise per 64 KiB piece)
    await new Promise<void>((resolve, reject) => {
      const body = r.body;
      const fail = (err: unknown) => { body.off('data', onData); reject(err); };
      const onData = (b: Buffer) => {
        if (n + b.length > length) {
          body.off('data', onData);
          abortBody(r);
          reject(eio(`expected ${length} bytes, server sent more`));
          return;
        }
        b.copy(out, n);
        n += b.length;
        progress?.(n);
      };
      body.on('data', onData);
      body.once('error', fail);
      body.once('end', () => resolve());
      body.once('close', () => resolve()); // destroyed without 'end': the length check below decides
    });
  } catch (err) {
    if ((err as Error).name === 'ErrnoError') throw err;
    throw eio(`expected ${length} bytes, got ${n} before error: ${describe(err)}`, err);
  } finally {
    streamEnded();
    r.done();
  }
  if (n !== length) throw eio(`expected ${length} bytes, got ${n}`);
  return out;
}

/** A transport error's message with its nested causes. */
export function describe(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err, i = 0; e && i < 4; e = (e as { cause?: unknown }).cause, i++) {
    const code = e instanceof Error && e.name !== 'ErrnoError' ? (e as { code?: string }).code : undefined;
    const m = e instanceof Error ? `${code ? `${code}: ` : ''}${e.message}` : String(e);
    if (!parts.includes(m)) parts.push(m);
  }
  return parts.join(': ');
}

/**
 * Check a ranged GET reply and read exactly `length` bytes of it, for every
 * remote backend: >= 400 is an error with the body's text; 206 must carry a
 * Content-Range naming exactly the asked bytes (when it has one); a 200 is
 * accepted only at offset 0 (then the exact length decides) and otherwise is
 * a retryable error, so a server ignoring Range never yields bytes of the
 * wrong place. `from` names the server in messages; `into` as readExact.
 */
export async function rangedBody(r: HttpResponse, offset: number, length: number, from: string, into?: Buffer, onProgress?: (filled: number) => void): Promise<Buffer> {
  if (r.status >= 400 || r.status < 200) {
    const text = await errorText(r);
    throw eio(`status ${r.status} from ${from}${text ? `: ${text}` : ''}`);
  }
  if (r.status === 200) {
    if (offset !== 0) {
      await discard(r, 0);
      // retried (a caching proxy or CDN may answer a cache miss whole): as upstream, a length failure
      throw eio(`status 200 (Range ignored by ${from}) for a read at offset ${offset}`);
    }
  } else if (r.status !== 206) {
    await discard(r);
    throw eio(`unexpected status ${r.status} from ${from}`);
  } else {
    const bad = contentRangeMismatch(r, offset, length);
    if (bad) {
      await discard(r, 0);
      throw eio(bad);
    }
  }
  return readExact(r, length, into, onProgress);
}

/** Why a reply's Content-Range (when it has one) does not name exactly the asked bytes, or undefined. */
export function contentRangeMismatch(r: HttpResponse, offset: number, length: number): string | undefined {
  const cr = headerValue(r.headers, 'content-range');
  if (cr === undefined) return undefined;
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(cr.trim());
  if (m && Number(m[1]) === offset && Number(m[2]) === offset + length - 1) return undefined;
  return `Content-Range ${JSON.stringify(cr.slice(0, 100))} does not match the requested bytes ${offset}-${offset + length - 1}`;
}
