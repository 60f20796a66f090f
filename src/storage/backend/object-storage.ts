/**
 * What the object-storage backends (s3.ts, oss.ts) and the remote mode of
 * http-proxy.ts share (storage-backends §1, §3): URL pieces, one signed ranged
 * GET per attempt inside the common retry loop, HEAD for the size, and the
 * checks every remote read gets.
 *
 * As upstream:
 *  - a read is one `GET` with `Range: bytes=a-b`, signed again on every attempt
 *    (a fresh date), inside retryRead (4 attempts on demand, 2 for prefetch);
 *  - the body must be exactly the requested length (longer bodies are cut off
 *    and fail, never buffered past the length);
 *  - `size()` is one `HEAD` (signed, not retried, not counted in metrics) whose
 *    status must be 200..399 and which must carry Content-Length;
 *  - `proxy` routing comes with HttpClient (handed the whole config); reads use
 *    the registry's source-fallback attempt rules (proxyAttempts: the last
 *    attempt, and any after a proxy 429, goes to the source; a proxy 403 ends
 *    the read).
 * Deliberate differences (all stricter, as the registry backend):
 *  - a reply must be 206 (with a matching Content-Range when it has one), or 200
 *    only for a read at offset 0 with exactly the asked length: a server that
 *    ignores Range never yields bytes of the wrong place (a 200 at another offset
 *    stops the retries at once); a 3xx is an error (upstream reads it as data
 *    and fails on its length);
 *  - object keys are percent-encoded per path segment (RFC 3986 unreserved
 *    characters kept, `/` kept), so a key with `?`, `#`, `%` or spaces is sent
 *    and signed as one path; upstream formats the raw key into the URL string
 *    (identical for the usual hex blob ids and plain prefixes). Keys with `.`
 *    or `..` segments, bucket names that are not host-name safe and endpoints
 *    that carry a scheme, path, user or whitespace are refused (EINVAL) when
 *    the backend is built, instead of producing a URL such as
 *    `https://https://x/...`.
 *  - `connectTo` (tests, like curl's --connect-to): the TCP connection goes to
 *    that host:port while the URL, the Host header and the signature keep the
 *    configured names. It lets a loopback test reach OSS's virtual host
 *    `bucket.endpoint`, which no resolver maps to 127.0.0.1 without DNS setup.
 */
import { eio, einval } from '../../common/errno';
import { type BackendOptions, type BlobBackend, type ReadOptions, checkBlobId, checkRange } from './backend';
import { type Headers, HttpClient, type HttpClientOptions, type HttpResponse, describe, discard, errorText, headerValue, rangedBody } from './http';
import type { BackendMetrics } from './metrics';
import { type RequestOptions, proxyAttempts } from './proxy';
import { READ_ATTEMPTS, defaultRetryDelay, budget, retryRead } from './retry';

/** SHA-256 of the empty payload (GET and HEAD carry no body). */
export const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

export interface RemoteBackendOptions extends BackendOptions {
  /** attempts per on-demand read (default 4; prefetch reads get at most 2) */
  attempts?: number;
  /** delay before retry `n` (1-based), ms; default 100·2^(n-1) ± jitter, ≤ 1 s */
  retryDelayMs?: (n: number) => number;
  /** connect to this `host:port` instead of the URL's (see the module doc; http only) */
  connectTo?: string;
}

/**
 * Adds what a request needs to be accepted (Host, date, Authorization …) to
 * `headers` (which holds Range for reads) and returns the headers to send.
 * Called once per attempt.
 */
export type RequestSigner = (method: 'GET' | 'HEAD', url: URL, headers: Headers) => Promise<Headers> | Headers;

/** `scheme` of an object-storage config: http or https. */
export function httpScheme(scheme: string, what: string): 'http' | 'https' {
  const s = (scheme || 'https').toLowerCase();
  if (s !== 'http' && s !== 'https') throw einval(`${what}.scheme must be http or https, not '${scheme}'`);
  return s;
}

/** An endpoint is `host[:port]`: no scheme, path, query, user or whitespace. */
export function checkEndpoint(endpoint: string, what: string): void {
  if (endpoint.includes('://')) throw einval(`${what}.endpoint '${endpoint}' must not contain a scheme (use ${what}.scheme)`);
  if (!/^[A-Za-z0-9.\-_[\]:]+$/.test(endpoint)) throw einval(`${what}.endpoint '${endpoint}' is not a host[:port]`);
}

/** A bucket name goes into a host name (OSS) or the first path segment (S3). */
export function checkBucket(bucket: string, what: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/.test(bucket) || bucket.includes('..')) {
    throw einval(`${what}.bucket_name '${bucket}' is not a valid bucket name`);
  }
}

/** The object prefix may contain `/` but no `.` / `..` segment (URL parsers collapse those). */
export function checkObjectPrefix(prefix: string, what: string): void {
  if (prefix.includes('\0') || prefix.split('/').slice(0, -1).some((s) => s === '.' || s === '..')) {
    throw einval(`${what}.object_prefix '${prefix}' has a '.' or '..' segment or a NUL`);
  }
}

/** RFC 3986 encoding of one path segment (unreserved characters kept). */
function encodeSegment(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** An object key as a URL path (without the leading `/`), segment by segment. */
export function encodeObjectKey(key: string): string {
  const segs = key.split('/');
  if (segs.some((s) => s === '.' || s === '..')) throw einval(`object key ${JSON.stringify(key)} has a '.' or '..' segment`);
  return segs.map(encodeSegment).join('/');
}

/** Parse `href` and make sure the URL keeps `path` exactly (no normalisation happened). */
export function exactUrl(href: string, path: string): URL {
  let u: URL;
  try {
    u = new URL(href);
  } catch {
    throw einval(`invalid URL ${JSON.stringify(href.slice(0, 300))}`);
  }
  if (u.pathname !== path || u.search !== '' || u.hash !== '') throw einval(`URL ${JSON.stringify(href.slice(0, 300))} does not keep its path`);
  return u;
}


/** Blob size from a HEAD reply: status 200..399 and a Content-Length. */
export async function headSize(r: HttpResponse, what: string): Promise<number> {
  await discard(r);
  const cl = headerValue(r.headers, 'content-length');
  if (r.status < 200 || r.status > 399 || !cl || !/^\d{1,16}$/.test(cl)) {
    throw eio(`${what}: HEAD status ${r.status}, no usable Content-Length`);
  }
  return Number(cl);
}

/**
 * A blob backend over one HTTP client: `urlOf` names a blob's URL, `sign`
 * turns the request headers into what goes on the wire. s3, oss and the
 * remote http-proxy are this class with their own URL and signer.
 */
export class RemoteBlobBackend implements BlobBackend {
  /** attempts run one after another, each read to its end or aborted (readExact) before the next */
  readonly readsInto = true;
  protected readonly http: HttpClient;
  private readonly attempts: number;
  private readonly retryDelay: (n: number) => number;
  private readonly metrics: BackendMetrics | undefined;
  private readonly connectTo: string | undefined;
  private closed = false;

  /**
   * `label` names the backend in messages (e.g. `s3 bucket/prefix`); `cfg`
   * is the whole backend config, handed to HttpClient (timeouts, TLS, proxy).
   */
  constructor(
    readonly type: string,
    private readonly label: string,
    cfg: HttpClientOptions,
    private readonly urlOf: (blobId: string) => URL,
    private readonly sign: RequestSigner,
    opts: RemoteBackendOptions = {},
  ) {
    this.attempts = Math.max(1, opts.attempts ?? READ_ATTEMPTS);
    this.retryDelay = opts.retryDelayMs ?? defaultRetryDelay;
    this.metrics = opts.metrics;
    if (opts.connectTo !== undefined && !/^[A-Za-z0-9.\-[\]:]+$/.test(opts.connectTo)) throw einval(`connectTo '${opts.connectTo}' is not a host:port`);
    this.connectTo = opts.connectTo;
    this.http = new HttpClient(cfg);
  }

  /** The URL blob `blobId` is read from. */
  blobUrl(blobId: string): URL {
    checkBlobId(blobId);
    return this.urlOf(blobId);
  }

  async read(blobId: string, offset: number, length: number, opts: ReadOptions = {}): Promise<Buffer> {
    checkBlobId(blobId);
    checkRange(blobId, offset, length);
    if (length === 0) return Buffer.alloc(0);
    const range = `bytes=${offset}-${offset + length - 1}`;
    const url = this.urlOf(blobId);
    return retryRead({
      what: `${this.label} blob ${blobId} range ${range}`,
      requested: length,
      attempts: budget(opts, this.attempts),
      delayMs: this.retryDelay,
      metrics: this.metrics,
      closed: () => this.closed,
      describe,
    }, proxyAttempts(!!opts.prefetch, async (ro) => {
      const r = await this.send('GET', url, { range }, ro);
      return rangedBody(r, offset, length, url.host, opts.into);
    }));
  }

  async size(blobId: string): Promise<number> {
    checkBlobId(blobId);
    const what = `${this.label} blob ${blobId}`;
    let r: HttpResponse;
    try {
      r = await this.send('HEAD', this.urlOf(blobId), {});
    } catch (err) {
      throw eio(`${what}: HEAD failed: ${describe(err)}`, err);
    }
    if (r.status >= 400) {
      const text = await errorText(r);
      throw eio(`${what}: HEAD status ${r.status}${text ? `: ${text}` : ''}`);
    }
    return headSize(r, what);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.http.close();
  }

  /** One signed request (signing happens here, so every attempt is signed anew). */
  protected async send(method: 'GET' | 'HEAD', url: URL, headers: Headers, ro: RequestOptions = {}): Promise<HttpResponse> {
    if (this.closed) throw eio('backend closed');
    const wire = await this.sign(method, url, { ...headers });
    if (!this.connectTo) return this.http.request(method, url, wire, undefined, ro);
    const target = new URL(url);
    target.host = this.connectTo;
    const hasHost = Object.keys(wire).some((k) => k.toLowerCase() === 'host');
    return this.http.request(method, target, hasHost ? wire : { host: url.host, ...wire }, undefined, ro);
  }
}
