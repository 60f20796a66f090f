/**
 * Forward-proxy routing of the remote backends (storage-backends §1 "Proxy
 * routing", the path a Dragonfly dfdaemon peer takes): the routing state one
 * HttpClient keeps when `proxy.url` is non-empty, and the per-read retry rules
 * that go with it.
 *
 * As upstream:
 *  - `proxy.url` is a forward proxy for every scheme: `http://` targets are
 *    sent in absolute form (undici ProxyAgent with `proxyTunnel: false`, so a
 *    caching peer sees the URL and can cache it), `https://` targets through a
 *    CONNECT tunnel;
 *  - health starts good; only with `ping_url` a timer GETs it every
 *    `check_interval` s (timeout `connect_timeout`), healthy = 200..399, and
 *    pings are skipped while the backend made no request for
 *    `check_pause_elapsed` s;
 *  - `use_http` rewrites an https target to http, decided once by the first
 *    URL routed (§10.13);
 *  - Dragonfly headers (`X-Dragonfly-Prefetch: true`, `X-Dragonfly-Priority`
 *    3 for prefetch / 6 on demand, `X-Dragonfly-Use-P2P: true`) on proxied
 *    attempts that are not source-fallback ones; a reply carrying
 *    `X-Dragonfly-Error-Type: proxy` becomes a typed error: 429 rate limited
 *    (the next attempt goes to the source; a prefetch read stops), 403
 *    forbidden (retrying stops), anything else a plain error;
 *  - the last attempt of a read is a source-fallback attempt.
 * Deliberate differences:
 *  - a source-fallback attempt (the last one, or any after a proxy 429) goes
 *    straight to the source when `fallback` is true; with `fallback: false` it
 *    still goes through the proxy, only without the Dragonfly headers (what
 *    upstream's request layer does in every case, trap §10.5), so "no
 *    fallback" really means the source is never contacted directly;
 *  - no process-wide 1 request/s limiter before the last attempt (the shared
 *    retry loop backs off instead);
 *  - `use_http` rewrites the URL's scheme only (upstream replaces the first
 *    "https" anywhere in the URL string);
 *  - pings use the backend's TLS settings (`skip_verify`, `ca_cert_files`;
 *    upstream pings with a default client), a `connect_timeout` of 0 bounds a
 *    ping at 5 s instead of failing it, `check_interval` is at least 1 s, and
 *    the first request after a paused spell triggers a ping at once (so a
 *    stale verdict does not outlive the pause by a whole interval);
 *  - `dragonfly_scheduler_endpoint` (the Dragonfly SDK transport) is not
 *    implemented: it is logged once and `url` is used as usual.
 */
import { Agent, Pool, ProxyAgent, type Dispatcher } from 'undici';
import type { ProxyConfig } from '../../common/config';
import { ErrnoError, eio } from '../../common/errno';
import { log, warnLimited } from '../../common/log';
import { RetryStop } from './retry';

/** How one request is to be routed (HttpClient.request's last argument). */
export interface RequestOptions {
  /** never through the proxy and never rewritten (registry token requests) */
  direct?: boolean;
  /** a prefetch read: Dragonfly priority 3 instead of 6 */
  prefetch?: boolean;
  /** a source-fallback attempt: no Dragonfly headers; direct when `fallback` is on */
  source?: boolean;
}

export const DRAGONFLY_PRIORITY_PREFETCH = '3';
export const DRAGONFLY_PRIORITY_ON_DEMAND = '6';
/** unhealthy-proxy fallback notes, at most one per this many ms */
export const FALLBACK_LOG_INTERVAL_MS = 2000;
/** ping timeout when `connect_timeout` is 0 */
const DEFAULT_PING_TIMEOUT_MS = 5000;
/** ping replies are never read past this */
const PING_BODY_LIMIT = 4096;

/** A proxy answered 429 with `X-Dragonfly-Error-Type: proxy`. */
export class ProxyRateLimitedError extends ErrnoError {
  constructor(msg: string) {
    super('EIO', msg);
  }
}

/** A proxy answered 403 with `X-Dragonfly-Error-Type: proxy`: retrying will not help. */
export class ProxyForbiddenError extends RetryStop {}

export interface ProxyRouterOptions {
  /** TLS connect options for the proxy and for targets tunnelled through it */
  tls: { rejectUnauthorized: boolean; ca?: string[] };
  /** connect timeout, ms; 0 = none */
  connectTimeoutMs: number;
  /** pool options of the direct client (timeouts, header limit, keep-alive) */
  pool: Pool.Options;
  /** clock (tests) */
  now?: () => number;
}

export class ProxyRouter {
  /** the forward-proxy dispatcher */
  readonly dispatcher: ProxyAgent;
  readonly fallback: boolean;
  readonly url: string;
  private healthy = true;
  private readonly now: () => number;
  private lastUse: number;
  /** use_http decision, taken on the first routed URL */
  private rewrite: boolean | undefined;
  private readonly useHttp: boolean;
  private lastFallbackLog = -Infinity;
  private readonly pingUrl: URL | undefined;
  private readonly pingAgent: Agent | undefined;
  private readonly pingTimeoutMs: number;
  private readonly intervalMs: number;
  private readonly pauseMs: number;
  private timer: NodeJS.Timeout | undefined;
  private pings: Promise<boolean> = Promise.resolve(true);
  private closed = false;
  private lastPing = -Infinity;
  /** pings sent (tests, logs) */
  pingCount = 0;

  constructor(cfg: ProxyConfig, o: ProxyRouterOptions) {
    let proxyUrl: URL;
    try {
      proxyUrl = new URL(cfg.url);
    } catch {
      throw eio(`proxy.url ${JSON.stringify(cfg.url.slice(0, 200))} is not a URL`);
    }
    if (proxyUrl.protocol !== 'http:' && proxyUrl.protocol !== 'https:') throw eio(`proxy.url has unsupported scheme ${proxyUrl.protocol}`);
    this.url = proxyUrl.href;
    this.fallback = cfg.fallback;
    this.useHttp = cfg.use_http;
    this.now = o.now ?? Date.now;
    this.lastUse = this.now();
    if (cfg.dragonfly_scheduler_endpoint) {
      log.warn({ endpoint: cfg.dragonfly_scheduler_endpoint }, 'proxy.dragonfly_scheduler_endpoint is not supported; using proxy.url');
    }
    const tls = { ...o.tls, timeout: o.connectTimeoutMs };
    this.dispatcher = new ProxyAgent({
      ...o.pool,
      uri: proxyUrl.href,
      // absolute-form requests for http:// targets (a caching peer sees the URL); CONNECT for https://
      proxyTunnel: false,
      proxyTls: tls,
      requestTls: tls,
      // the wrapper that sends absolute-form requests builds its pool to the proxy with this factory:
      // give it the same limits and timeouts as every other pool
      factory: (origin: string | URL, opts: object) => new Pool(origin, { ...o.pool, ...opts }),
    });
    this.intervalMs = Math.max(1, cfg.check_interval) * 1000;
    this.pauseMs = cfg.check_pause_elapsed * 1000;
    this.pingTimeoutMs = o.connectTimeoutMs > 0 ? o.connectTimeoutMs : DEFAULT_PING_TIMEOUT_MS;
    if (cfg.ping_url) {
      try {
        this.pingUrl = new URL(cfg.ping_url);
      } catch {
        throw eio(`proxy.ping_url ${JSON.stringify(cfg.ping_url.slice(0, 200))} is not a URL`);
      }
      if (this.pingUrl.protocol !== 'http:' && this.pingUrl.protocol !== 'https:') throw eio(`proxy.ping_url has unsupported scheme ${this.pingUrl.protocol}`);
      this.pingAgent = new Agent({ connect: tls, maxHeaderSize: o.pool.maxHeaderSize, connections: 1, pipelining: 0 });
      // the first ping at once, then one per interval
      void this.checkNow();
      this.schedule(this.intervalMs);
    }
  }

  /** Whether requests may go to the proxy now. */
  isHealthy(): boolean {
    return this.healthy;
  }

  /** Whether a health timer runs (only with `ping_url`). */
  get checking(): boolean {
    return this.pingUrl !== undefined;
  }

  /** The backend is making a request (keeps the health timer awake). */
  touch(): void {
    const now = this.now();
    const wasPaused = this.pingUrl !== undefined && now - this.lastUse > this.pauseMs;
    this.lastUse = now;
    // at most one such ping per pause (per second with check_pause_elapsed 0)
    if (wasPaused && !this.closed && now - this.lastPing >= Math.max(this.pauseMs, 1000)) void this.checkNow();
  }

  /** The URL to send through the proxy (`use_http`, decided by the first URL). */
  target(url: URL): URL {
    if (this.rewrite === undefined) this.rewrite = this.useHttp && url.protocol === 'https:';
    if (!this.rewrite || url.protocol !== 'https:') return url;
    return new URL(`http:${url.href.slice('https:'.length)}`);
  }

  /** Headers a Dragonfly peer reads (added to proxied, non-source attempts). */
  dragonflyHeaders(prefetch: boolean): Record<string, string> {
    return {
      'x-dragonfly-prefetch': 'true',
      'x-dragonfly-priority': prefetch ? DRAGONFLY_PRIORITY_PREFETCH : DRAGONFLY_PRIORITY_ON_DEMAND,
      'x-dragonfly-use-p2p': 'true',
    };
  }

  /** Note (rate limited to one per 2 s) that a request bypasses the proxy. */
  noteFallback(why: string, extra: Record<string, unknown> = {}): void {
    const now = Date.now();
    if (now - this.lastFallbackLog < FALLBACK_LOG_INTERVAL_MS) return;
    this.lastFallbackLog = now;
    warnLimited('storage.proxy.fallback', { proxy: this.url, ...extra }, `${why}, falling back to the source`);
  }

  /** Ping `ping_url` now (after any ping in flight); resolves to the new health. */
  checkNow(): Promise<boolean> {
    if (!this.pingUrl || this.closed) return Promise.resolve(this.healthy);
    this.pings = this.pings.then(() => this.pingOnce(), () => this.pingOnce());
    return this.pings;
  }

  /** One round of the health timer: a ping unless paused. Resolves to whether it pinged. */
  async tick(): Promise<boolean> {
    if (!this.pingUrl || this.closed) return false;
    if (this.now() - this.lastUse > this.pauseMs) return false;
    await this.checkNow();
    return true;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await Promise.all([
      this.dispatcher.destroy().catch(() => undefined),
      this.pingAgent?.destroy().catch(() => undefined),
    ]);
  }

  // ------------------------------------------------------------ internals

  private schedule(ms: number): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.tick().finally(() => this.schedule(this.intervalMs));
    }, ms);
    this.timer.unref();
  }

  private async pingOnce(): Promise<boolean> {
    if (this.closed || !this.pingUrl || !this.pingAgent) return this.healthy;
    this.pingCount++;
    this.lastPing = this.now();
    let ok = false;
    let why = '';
    const ac = new AbortController();
    const t = setTimeout(() => ac.abort(new Error(`ping timed out after ${this.pingTimeoutMs} ms`)), this.pingTimeoutMs);
    t.unref();
    try {
      const r = await this.pingAgent.request({
        origin: this.pingUrl.origin,
        path: this.pingUrl.pathname + this.pingUrl.search,
        method: 'GET',
        headers: { 'user-agent': 'nydusd/1.0.0' },
        signal: ac.signal,
        reset: true,
      } as Dispatcher.RequestOptions);
      ok = r.statusCode >= 200 && r.statusCode <= 399;
      why = `status ${r.statusCode}`;
      await r.body.dump({ limit: PING_BODY_LIMIT }).catch(() => undefined);
    } catch (err) {
      why = (err as Error)?.message ?? String(err);
    } finally {
      clearTimeout(t);
    }
    if (this.closed) return this.healthy;
    if (ok !== this.healthy) {
      warnLimited('storage.proxy.health', { proxy: this.url, ping: this.pingUrl.href, why }, ok ? 'proxy is healthy again' : 'proxy is not healthy');
    }
    this.healthy = ok;
    return ok;
  }
}

/**
 * The attempt function for `retryRead` with upstream's source-fallback rules:
 * the last attempt, and every attempt after a proxy 429, is a source
 * attempt; a proxy 403 stops retrying (ProxyForbiddenError is a RetryStop), and
 * so does a proxy 429 on a prefetch read.
 */
export function proxyAttempts<T>(prefetch: boolean, fn: (o: RequestOptions) => Promise<T>): (n: number, last: boolean) => Promise<T> {
  let source = false;
  return async (_n, last) => {
    try {
      return await fn({ prefetch, source: source || last });
    } catch (err) {
      if (err instanceof ProxyRateLimitedError) {
        if (prefetch) throw new RetryStop(err.message, { cause: err });
        source = true;
      }
      throw err;
    }
  };
}
