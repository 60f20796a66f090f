/**
 * Registry backend (storage-backends §2): blobs of an OCI distribution
 * registry, read with `GET {scheme}://{host}/v2/{repo}/blobs/sha256:{id}` and
 * `Range: bytes=a-b`.
 *
 * As upstream:
 *  - the first request is anonymous (or `Bearer <registry_token>`); a 401 is
 *    answered from its `WWW-Authenticate` challenge: Basic → `auth`, Bearer →
 *    a token from the realm (POST form with `client_id=nydus-registry-client`,
 *    then GET, remembered per realm host; `Authorization: Basic <auth>` when
 *    `auth` is set; that flow lives in registry-auth.ts, shared with the
 *    distribution client of src/remote). The header that worked is cached for the backend; a
 *    request that carried one and got a 401 is resent without it first;
 *  - redirects are followed by hand: `blob_url_scheme` / `blob_redirected_host`
 *    rewrite the Location, Authorization is never forwarded, the final URL is
 *    cached per blob id;
 *  - reads must return exactly the requested length; 4 attempts per read
 *    (`retry_limit` is unused upstream since v2.4.3);
 *  - `skip_verify` with an https scheme falls back to http once on a TLS /
 *    refused transport error;
 *  - the first blob request runs alone (the others wait), so one token is
 *    fetched instead of a storm of anonymous 401s; after a failure the next
 *    waiter goes first;
 *  - `proxy` (Dragonfly dfdaemon as a forward proxy) routes every blob
 *    request, redirected ones included, through HttpClient's proxy routing
 *    (http.ts, proxy.ts); token requests always go directly and are never
 *    rewritten by `use_http`; the last attempt of a read, and every attempt
 *    after a proxy 429, is a source-fallback attempt; a proxy 403 ends the
 *    read;
 *  - `auth` is trimmed ('' = absent) and must be base64 of UTF-8 `user:pass`,
 *    or backend creation fails (an `IMAGE_PULL_AUTH` value put in by
 *    `applyImagePullAuth`, common/config.ts, is checked the same way).
 * Deliberate differences:
 *  - a reply must be 206 (with a matching Content-Range when present), or 200
 *    only for a read at offset 0 of exactly the body length: a server that
 *    ignores Range never yields bytes of the wrong place;
 *  - a cached redirect URL is dropped on any status ≥ 400 (upstream: only
 *    401/403), so expired pre-signed URLs recover (trap §10.3);
 *  - challenge values are split at the first `=` only (upstream truncates a
 *    realm containing `=`);
 *  - no refresh thread: a Bearer token is refetched on use once it is within
 *    20 s of `expires_in`, and on any later 401;
 *  - when the request holding that gate got no reply at all (timeout,
 *    refused), the gate opens instead of passing to the next waiter (N
 *    readers of a frozen registry would otherwise wait N retry budgets);
 *    concurrent requests that get the same Bearer challenge share one token
 *    fetch, so opening early costs no token storm;
 *  - retries back off (exponential, jittered, ≤ 1 s) instead of the global
 *    1 request/s limiter; proxy routing differences are listed in proxy.ts.
 * Every failure surfaces as EIO naming the blob, range and cause.
 */
import type { Readable } from 'node:stream';
import { ErrnoError, eio } from '../../common/errno';
import type { RegistryConfig } from '../../common/config';
import { warnLimited } from '../../common/log';
import { type BackendOptions, type BlobBackend, type ReadOptions, checkBlobId, checkRange } from './backend';
import type { BackendMetrics } from './metrics';
import { READ_ATTEMPTS, defaultRetryDelay, budget, retryRead } from './retry';
import { type RequestOptions, proxyAttempts } from './proxy';
import {
  type Headers,
  HttpClient,
  type HttpClientExtras,
  type HttpResponse,
  describe,
  discard,
  headerValue,
  rangedBody,
} from './http';
import { type Challenge, RegistryAuth } from './registry-auth';

/** redirect hops followed from the registry to the blob store */
export const MAX_REDIRECTS = 5;
export { MAX_TOKEN_RESPONSE, parseChallenge, validateAuth, type Challenge } from './registry-auth';

export interface RegistryBackendOptions extends BackendOptions {
  /** attempts per read (default 4) */
  attempts?: number;
  /** delay before retry `n` (1-based), ms; default 100·2^(n-1) ± jitter, ≤ 1 s */
  retryDelayMs?: (n: number) => number;
  /** HttpClient extras (the proxy health timer's clock, for tests) */
  http?: HttpClientExtras;
}

export class RegistryBackend implements BlobBackend {
  readonly type = 'registry';
  /** attempts run one after another, each read to its end or aborted (readExact) before the next;
   *  progress reported as the body arrives (ReadOptions.onProgress) */
  readonly readsInto = true;
  private readonly http: HttpClient;
  private scheme: 'http' | 'https';
  private readonly host: string;
  private readonly repo: string;
  /** challenge / token / Basic flow (registry-auth.ts, shared with src/remote) */
  private readonly authFlow: RegistryAuth;
  private readonly attempts: number;
  private readonly retryDelay: (n: number) => number;
  private readonly metrics: BackendMetrics | undefined;
  /** blob id → final redirected URL */
  private readonly redirects = new Map<string, URL>();
  private readonly fallbackDone = { v: false };
  private gateOpen = false;
  private gate: Promise<void> | undefined;
  /** HTTP replies received (any status) */
  private replies = 0;
  private closed = false;

  constructor(private readonly cfg: RegistryConfig, opts: RegistryBackendOptions = {}) {
    this.metrics = opts.metrics;
    if (!cfg.host) throw eio('backend.registry.host must not be empty');
    if (!cfg.repo) throw eio('backend.registry.repo must not be empty');
    if (/[\s/?#@]/.test(cfg.host)) throw eio(`backend.registry.host '${cfg.host}' is not a host[:port]`);
    this.scheme = cfg.scheme === 'http' ? 'http' : 'https';
    this.host = cfg.host;
    this.repo = cfg.repo.replace(/^\/+|\/+$/g, '');
    this.authFlow = new RegistryAuth((m, u, h, b, ro) => this.send(m, u, h, b, ro), { auth: cfg.auth, registryToken: cfg.registry_token });
    this.attempts = Math.max(1, opts.attempts ?? READ_ATTEMPTS);
    this.retryDelay = opts.retryDelayMs ?? defaultRetryDelay;
    this.http = new HttpClient(cfg, opts.http);
  }

  /** The HTTP client (its proxy routing state, for the API and tests). */
  get client(): HttpClient {
    return this.http;
  }

  /**
   * New credentials (`registry_auth`); '' clears them. Cached Basic/Bearer
   * headers are dropped, so the next request goes through the challenge again
   * with the new ones (upstream's refresh thread does the same on its tick).
   * EIO when `auth` is not base64 of `user:pass`.
   */
  updateAuth(auth: string): void {
    this.authFlow.updateAuth(auth);
  }

  blobUrl(blobId: string): URL {
    return new URL(`${this.scheme}://${this.host}/v2/${this.repo}/blobs/sha256:${encodeURIComponent(blobId)}`);
  }

  async read(blobId: string, offset: number, length: number, opts: ReadOptions = {}): Promise<Buffer> {
    checkBlobId(blobId);
    checkRange(blobId, offset, length);
    if (length === 0) return Buffer.alloc(0);
    const range = `bytes=${offset}-${offset + length - 1}`;
    // bytes of `into` reported as in may be in use (decoded, served): an attempt after a failed one
    // then reads into a buffer of its own instead of rewriting them
    let reported = false;
    const progress = opts.into && opts.onProgress ? (n: number) => { reported = true; opts.onProgress!(n); } : undefined;
    return retryRead({
      what: `registry ${this.host}/${this.repo} blob ${blobId} range ${range}`,
      requested: length,
      attempts: budget(opts, this.attempts),
      delayMs: this.retryDelay,
      metrics: this.metrics,
      closed: () => this.closed,
      again: (err) => this.maybeFallbackToHttp(err),
      describe,
    }, proxyAttempts(!!opts.prefetch, (ro) => this.gated(() => (reported ? this.tryRead(blobId, offset, length, range, ro) : this.tryRead(blobId, offset, length, range, ro, opts.into, progress)))));
  }

  async size(blobId: string): Promise<number> {
    checkBlobId(blobId);
    let r: HttpResponse;
    try {
      r = await this.gated(() => this.authed('HEAD', this.blobUrl(blobId), {}));
    } catch (err) {
      if (err instanceof ErrnoError) throw err;
      throw eio(`registry ${this.host}/${this.repo} blob ${blobId}: HEAD: ${describe(err)}`, err);
    }
    await discard(r);
    const cl = headerValue(r.headers, 'content-length');
    if (r.status < 200 || r.status > 399 || !cl || !/^\d+$/.test(cl)) {
      throw eio(`registry ${this.host}/${this.repo} blob ${blobId}: HEAD status ${r.status}, no usable Content-Length`);
    }
    return Number(cl);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.http.close();
  }

  // ------------------------------------------------------------ internals

  /**
   * First-request gate: until one request succeeded, requests run one at a
   * time, the next waiter going first after a failure. When the request
   * holding the gate got no reply at all (timeout, refused), the gate opens
   * for good: there is nothing to learn by waiting, and queueing would make N
   * readers of a frozen registry wait N retry budgets (token fetches are
   * shared anyway, see sharedToken).
   */
  private async gated<T>(fn: () => Promise<T>): Promise<T> {
    while (!this.gateOpen) {
      if (this.gate) {
        await this.gate;
        continue;
      }
      let release!: () => void;
      this.gate = new Promise<void>((r) => { release = r; });
      const replies = this.replies;
      try {
        const v = await fn();
        this.gateOpen = true;
        return v;
      } catch (err) {
        if (this.replies === replies) this.gateOpen = true;
        throw err;
      } finally {
        this.gate = undefined;
        release();
      }
    }
    return fn();
  }

  /** One HTTP exchange (replies are counted for the gate). */
  private async send(method: string, url: URL, headers: Headers, body?: string | Buffer | Readable, ro?: RequestOptions): Promise<HttpResponse> {
    const r = await this.http.request(method, url, headers, body, ro);
    this.replies++;
    return r;
  }

  private maybeFallbackToHttp(err: unknown): boolean {
    if (this.fallbackDone.v || !this.cfg.skip_verify || this.scheme !== 'https') return false;
    // without proxy fallback a transport error is the proxy's, not the registry's
    if (this.http.proxy && !this.http.proxy.fallback) return false;
    if (!/wrong version number|ECONNREFUSED|connection refused|ssl|tls/i.test(describe(err))) return false;
    this.fallbackDone.v = true;
    this.scheme = 'http';
    warnLimited('storage.registry', { host: this.host }, 'registry https failed, falling back to http');
    return true;
  }

  private async tryRead(blobId: string, offset: number, length: number, range: string, ro: RequestOptions, into?: Buffer, progress?: (filled: number) => void): Promise<Buffer> {
    const cached = this.redirects.get(blobId);
    if (cached) {
      const r = await this.send('GET', cached, { range }, undefined, ro);
      if (r.status < 400) return rangedBody(r, offset, length, cached.host, into, progress);
      // deliberate: any failure status drops the cached URL (upstream: 401/403 only)
      await discard(r);
      this.redirects.delete(blobId);
    }
    let url = this.blobUrl(blobId);
    let r = await this.authed('GET', url, { range }, ro);
    for (let hop = 0; r.status >= 300 && r.status <= 399; hop++) {
      const loc = headerValue(r.headers, 'location');
      await discard(r);
      if (!loc) throw eio(`status ${r.status} without Location`);
      if (hop >= MAX_REDIRECTS) throw eio(`more than ${MAX_REDIRECTS} redirects`);
      url = this.redirectTarget(loc, url);
      // Authorization is never forwarded to the redirect target
      r = await this.send('GET', url, { range }, undefined, ro);
      if (r.status >= 200 && r.status <= 299) this.redirects.set(blobId, url);
    }
    return rangedBody(r, offset, length, url.host, into, progress);
  }

  private redirectTarget(loc: string, base: URL): URL {
    let u: URL;
    try {
      u = new URL(loc, base);
    } catch {
      throw eio(`invalid redirect Location ${JSON.stringify(loc.slice(0, 200))}`);
    }
    if (this.cfg.blob_url_scheme) u = new URL(`${this.cfg.blob_url_scheme}:${u.href.slice(u.protocol.length)}`);
    if (this.cfg.blob_redirected_host) u.hostname = this.cfg.blob_redirected_host;
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw eio(`redirect to unsupported scheme ${u.protocol}`);
    return u;
  }

  /** Request with the auth flow of storage-backends §2 (registry-auth.ts). */
  private authed(method: string, url: URL, extra: Headers, ro: RequestOptions = {}): Promise<HttpResponse> {
    return this.authFlow.request(method, url, extra, ro);
  }

  /** Token from a Bearer challenge's realm (RegistryAuth.fetchToken). */
  fetchToken(ch: Challenge): Promise<{ header: string; expires: number }> {
    return this.authFlow.fetchToken(ch);
  }
}
