/**
 * `http-proxy` backend (storage-backends §3 "http-proxy"), metrics type
 * `http-proxy`. `addr` chooses the mode:
 *
 * Remote (`addr` starts with `http://` or `https://`): the common HTTP layer
 * (HttpClient with the whole config: timeouts, TLS, `proxy`) and the shared
 * reads of object-storage.ts (ranged GET with status checks and exact length,
 * retries, HEAD with Content-Length for the size). The URL is exactly
 * upstream's: `addr` followed by `path` joined with the blob id as a file
 * path, so `path: "/ns/blobs"` gives `addr/ns/blobs/<id>` and an empty `path`
 * gives `addr<id>` with no slash (end `addr` with `/` then).
 *
 * Local (`addr` is an absolute path of a unix socket): every read is
 * `GET /` over the socket carrying only `Range` (the blob id and `path` are
 * never sent); the status is not checked; the body must be exactly the asked
 * length (a longer one fails as soon as it runs past it, nothing beyond the
 * length is buffered). `size()` is `HEAD /` with `Range: bytes=0-` and needs a
 * Content-Length. No proxy. Same retry loop and metrics as remote reads.
 *
 * Deliberate differences: remote mode has object-storage.ts's stricter reply
 * checks (206 with a matching Content-Range, or 200 only at offset 0); the
 * blob id is percent-encoded in the URL (no change for hex ids); a remote URL
 * that does not parse (e.g. `http://h:8080` + id with an empty path) is
 * refused when the backend is built rather than failing every read. In local
 * mode a Content-Range that names other bytes than asked fails the attempt,
 * and a HEAD answered with status >= 400 is an error.
 */
import * as fs from 'node:fs';
import { Agent, type Dispatcher } from 'undici';
import type { HttpProxyConfig } from '../../common/config';
import { eio, einval } from '../../common/errno';
import { type BlobBackend, type ReadOptions, checkBlobId, checkRange } from './backend';
import { type Headers, type HttpResponse, MAX_HEADER_SIZE, contentRangeMismatch, describe, discard, readExact } from './http';
import type { BackendMetrics } from './metrics';
import { type RemoteBackendOptions, RemoteBlobBackend, headSize } from './object-storage';
import { READ_ATTEMPTS, defaultRetryDelay, budget, retryRead } from './retry';

/** `path` joined with the blob id as upstream's PathBuf::join does (no normalisation). */
export function joinBlobPath(p: string, blobId: string): string {
  if (p === '') return blobId;
  return p.endsWith('/') ? p + blobId : `${p}/${blobId}`;
}

/** The remote URL of a blob, exactly `addr + join(path, id)` (id percent-encoded). */
export function httpProxyUrl(addr: string, p: string, blobId: string): URL {
  const href = addr + joinBlobPath(p, encodeURIComponent(blobId));
  let u: URL;
  try {
    u = new URL(href);
  } catch {
    throw einval(`backend.http-proxy: '${href.slice(0, 300)}' is not a valid URL` +
      (p === '' ? ' (with an empty path the blob id follows addr directly: end addr with /)' : ''));
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw einval(`backend.http-proxy: unsupported URL scheme ${u.protocol}`);
  return u;
}

export class HttpProxyBackend implements BlobBackend {
  readonly type = 'http-proxy';
  readonly mode: 'remote' | 'local';
  private readonly impl: BlobBackend;

  constructor(cfg: HttpProxyConfig, opts: RemoteBackendOptions = {}) {
    const addr = cfg.addr ?? '';
    const p = cfg.path ?? '';
    if (addr.startsWith('http://') || addr.startsWith('https://')) {
      this.mode = 'remote';
      httpProxyUrl(addr, p, 'x'); // refuse a config whose URLs cannot parse
      this.impl = new RemoteBlobBackend('http-proxy', `http-proxy ${addr}${p}`, cfg, (id) => httpProxyUrl(addr, p, id), (_m, _u, h) => h, opts);
    } else if (addr.startsWith('/')) {
      let isSock = false;
      try {
        isSock = fs.statSync(addr).isSocket();
      } catch {
        // reported below
      }
      if (!isSock) throw einval(`backend.http-proxy.addr '${addr}' is not an existing unix socket`);
      this.mode = 'local';
      this.impl = new LocalSocketBackend(addr, cfg, opts);
    } else {
      throw einval(`backend.http-proxy.addr '${addr}' is neither an http(s):// URL nor an absolute unix socket path`);
    }
  }

  read(blobId: string, offset: number, length: number, opts?: ReadOptions): Promise<Buffer> {
    return this.impl.read(blobId, offset, length, opts);
  }

  get readsInto(): boolean {
    return !!this.impl.readsInto;
  }

  size(blobId: string): Promise<number> {
    return this.impl.size!(blobId);
  }

  close(): Promise<void> {
    return this.impl.close();
  }
}

/** Local mode: `GET /` over a unix socket with only Range (see the module doc). */
class LocalSocketBackend implements BlobBackend {
  readonly type = 'http-proxy';
  /** attempts run one after another, each read to its end or aborted (readExact) before the next */
  readonly readsInto = true;
  private readonly agent: Agent;
  private readonly timeoutMs: number;
  private readonly attempts: number;
  private readonly retryDelay: (n: number) => number;
  private readonly metrics: BackendMetrics | undefined;
  private readonly inflight = new Set<AbortController>();
  private closed = false;

  constructor(private readonly socketPath: string, cfg: HttpProxyConfig, opts: RemoteBackendOptions) {
    this.timeoutMs = cfg.timeout > 0 ? cfg.timeout * 1000 : 0;
    this.attempts = Math.max(1, opts.attempts ?? READ_ATTEMPTS);
    this.retryDelay = opts.retryDelayMs ?? defaultRetryDelay;
    this.metrics = opts.metrics;
    this.agent = new Agent({
      connect: { socketPath, timeout: cfg.connect_timeout > 0 ? cfg.connect_timeout * 1000 : 0 },
      keepAliveTimeout: 30_000,
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
      maxHeaderSize: MAX_HEADER_SIZE,
      connections: 32,
    });
  }

  async read(blobId: string, offset: number, length: number, opts: ReadOptions = {}): Promise<Buffer> {
    checkBlobId(blobId);
    checkRange(blobId, offset, length);
    if (length === 0) return Buffer.alloc(0);
    const range = `bytes=${offset}-${offset + length - 1}`;
    return retryRead({
      what: `http-proxy ${this.socketPath} blob ${blobId} range ${range}`,
      requested: length,
      attempts: budget(opts, this.attempts),
      delayMs: this.retryDelay,
      metrics: this.metrics,
      closed: () => this.closed,
      describe,
    }, async () => {
      const r = await this.request('GET', { range });
      const bad = contentRangeMismatch(r, offset, length);
      if (bad) {
        await discard(r, 0);
        throw eio(bad);
      }
      return readExact(r, length, opts.into);
    });
  }

  async size(blobId: string): Promise<number> {
    checkBlobId(blobId);
    const what = `http-proxy ${this.socketPath} blob ${blobId}`;
    let r: HttpResponse;
    try {
      r = await this.request('HEAD', { range: 'bytes=0-' });
    } catch (err) {
      throw eio(`${what}: HEAD failed: ${describe(err)}`, err);
    }
    return headSize(r, what);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const ac of this.inflight) ac.abort(eio('backend closed'));
    this.inflight.clear();
    await this.agent.destroy().catch(() => undefined);
  }

  /** One request on the socket; the attempt's `timeout` runs until the body is consumed. */
  private async request(method: 'GET' | 'HEAD', headers: Headers): Promise<HttpResponse> {
    if (this.closed) throw eio('backend closed');
    const ac = new AbortController();
    this.inflight.add(ac);
    let timer: NodeJS.Timeout | undefined;
    if (this.timeoutMs > 0) timer = setTimeout(() => ac.abort(eio(`request timed out after ${this.timeoutMs / 1000} s`)), this.timeoutMs);
    const done = () => {
      if (timer) clearTimeout(timer);
      timer = undefined;
      this.inflight.delete(ac);
    };
    try {
      const r = await this.agent.request({ origin: 'http://localhost', path: '/', method: method as Dispatcher.HttpMethod, headers, signal: ac.signal });
      return { status: r.statusCode, headers: r.headers, body: r.body, done };
    } catch (err) {
      done();
      throw err;
    }
  }
}
