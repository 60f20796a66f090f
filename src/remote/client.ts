/**
 * OCI distribution client (pull and push) for nydusify and ctr-remote.
 *
 * API (stable; ctr-remote builds on the pull side):
 *   const c = new RegistryClient({ plainHttp, insecure });      // one per process is fine
 *   const ref = parseReference('localhost:5000/app:v1');
 *   const { descriptor, json, bytes } = await c.fetchManifest(ref);   // manifest or index
 *   const desc = await c.resolve(ref);                          // HEAD (GET fallback)
 *   const cfg = await c.fetchJson<ImageConfig>(ref, manifest.config);
 *   const stream = await c.fetchBlob(ref, layerDescriptor);     // Readable; size and digest verified
 *   await c.pushBlob(ref, desc, () => fs.createReadStream(f), { mountFrom });
 *   await c.pushManifest(ref, 'v1' | 'sha256:…', mediaType, bytes);
 *   await c.close();
 * Every method takes the repository from a Reference (domain + repository);
 * tag/digest only matter for manifests.
 *
 * Behaviour:
 *  - `docker.io` goes to `registry-1.docker.io`; credentials come from the
 *    docker config (docker-config.ts) unless `credentials` is given;
 *  - auth is storage/backend/registry-auth.ts, the registry backend's own
 *    flow (anonymous → challenge → Basic or Bearer token), one state per
 *    repository; token requests use `client_id=nydusify`;
 *  - https first; `plainHttp` forces http; an https attempt that fails with a
 *    TLS-to-plain-HTTP error ("http response to https client", wrong version
 *    number, EPROTO) switches that host to http and is retried once, as
 *    nydusify does;
 *  - manifests: Accept lists OCI and Docker v2 manifests and indexes; bodies
 *    are bounded (4 MiB), a manifest fetched by digest is checked against it;
 *  - blobs stream (never buffered whole); the stream errors if the blob is
 *    longer or shorter than its descriptor or its sha256 differs; redirects
 *    (blob stores) are followed by hand (≤ 5) without Authorization;
 *  - pushes: HEAD skips blobs that exist; cross-repo mount (`mountFrom`) when
 *    asked, falling back to an upload when the registry starts one instead;
 *    monolithic upload (POST + PUT ?digest=) or, with `chunkSize`, PATCH
 *    chunks with Content-Range then PUT; manifests by tag or digest, the
 *    registry's Docker-Content-Digest checked against ours; 502/503/504 and
 *    connection refusals are retried (`pushRetries`, default 3, with delay).
 * Deliberate differences from containerd's resolver: no HTTP/2, keep-alive on,
 * no proxy from the environment, a HEAD without Docker-Content-Digest is
 * followed by a GET (never trusting a tag without a digest).
 * Errors are ErrnoError: ENOENT for a missing manifest or blob, EINVAL for a
 * malformed document, EIO for the rest.
 */
import { createHash } from 'node:crypto';
import { Readable, Transform } from 'node:stream';
import { ErrnoError, einval, eio, enoent } from '../common/errno';
import { log } from '../common/log';
import { type HttpResponse, HttpClient, abortBody, describe, discard, errorText, headerValue, readLimited } from '../storage/backend/http';
import { RegistryAuth, type RequestBody } from '../storage/backend/registry-auth';
import { sleep } from '../storage/backend/retry';
import { basicAuth, getCredentials, type Credentials } from './docker-config';
import { type Descriptor, MANIFEST_ACCEPT, documentType } from './media-types';
import { type Reference, referenceObject, registryHost } from './reference';

/** manifest / index / config document limit */
export const MAX_MANIFEST_SIZE = 4 << 20;
const MAX_REDIRECTS = 5;
const TOKEN_CLIENT_ID = 'nydusify';

export interface RegistryClientOptions {
  /** http for every registry (`--plain-http`) */
  plainHttp?: boolean;
  /** skip TLS verification (`--source-insecure` / `--target-insecure`) */
  insecure?: boolean;
  /** credentials per domain; default: the docker config file */
  credentials?: (domain: string) => Promise<Credentials | undefined>;
  /** connect timeout, seconds (default 30) */
  connectTimeout?: number;
  /** retries of a failed push (default 3) and the delay between them (ms, default 5000) */
  pushRetries?: number;
  pushRetryDelayMs?: number;
}

export interface FetchedManifest {
  /** descriptor of the document (digest = sha256 of `bytes`) */
  descriptor: Descriptor;
  bytes: Buffer;
  json: Record<string, unknown>;
}

export interface PushBlobOptions {
  /** try a cross-repo mount from this repository (same registry) first */
  mountFrom?: string;
  /** > 0: chunked upload with PATCH requests of this many bytes */
  chunkSize?: number;
}

export const sha256Digest = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

const isSchemeMismatch = (err: unknown): boolean =>
  /http response to https client|wrong version number|EPROTO|ERR_SSL|packet length too long|unknown protocol/i.test(describe(err));
const retryablePushError = (err: unknown): boolean =>
  /status (502|503|504|401)\b|ECONNREFUSED|ECONNRESET|socket hang up|other side closed/i.test(describe(err));

function checkDigestString(d: string): void {
  if (!/^sha256:[a-f0-9]{64}$/.test(d)) throw einval(`unsupported or malformed digest '${String(d).slice(0, 100)}'`);
}

/** A Transform that passes `size` bytes of sha256 `digest` and fails on anything else. */
export function verifyingStream(digest: string, size: number, what: string): Transform {
  const h = createHash('sha256');
  let n = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      if (n > size) return cb(eio(`${what}: more than ${size} bytes`));
      h.update(chunk);
      cb(null, chunk);
    },
    flush(cb) {
      if (n !== size) return cb(eio(`${what}: got ${n} bytes, expected ${size}`));
      const got = `sha256:${h.digest('hex')}`;
      if (got !== digest) return cb(eio(`${what}: digest ${got} does not match ${digest}`));
      cb();
    },
  });
}

interface HostState {
  scheme: 'https' | 'http';
  fellBack: boolean;
  credentials?: Promise<Credentials | undefined>;
  tokenGetHosts: Set<string>;
}

export class RegistryClient {
  private readonly http: HttpClient;
  private readonly hosts = new Map<string, HostState>();
  private readonly auths = new Map<string, RegistryAuth>();
  private readonly opts: RegistryClientOptions;

  constructor(opts: RegistryClientOptions = {}) {
    this.opts = opts;
    this.http = new HttpClient({ timeout: 0, connect_timeout: opts.connectTimeout ?? 30, skip_verify: !!opts.insecure, ca_cert_files: [] });
  }

  async close(): Promise<void> {
    await this.http.close();
  }

  /** `http` or `https`: what requests to `ref`'s registry use now (after any fallback). */
  scheme(ref: Reference): 'http' | 'https' {
    return this.host(ref).scheme;
  }

  /** The credentials used for `ref`'s registry (undefined: anonymous). */
  credentialsFor(ref: Reference): Promise<Credentials | undefined> {
    const h = this.host(ref);
    h.credentials ??= (this.opts.credentials ?? getCredentials)(ref.domain);
    return h.credentials;
  }

  private host(ref: Reference): HostState {
    const key = registryHost(ref.domain);
    let h = this.hosts.get(key);
    if (!h) {
      h = { scheme: this.opts.plainHttp ? 'http' : 'https', fellBack: false, tokenGetHosts: new Set() };
      this.hosts.set(key, h);
    }
    return h;
  }

  private async auth(ref: Reference): Promise<RegistryAuth> {
    const key = `${registryHost(ref.domain)}/${ref.repository}`;
    let a = this.auths.get(key);
    if (!a) {
      const c = await this.credentialsFor(ref);
      a = this.auths.get(key);
      if (!a) {
        a = new RegistryAuth((m, u, h, b, ro) => this.http.request(m, u, h, b, ro), {
          auth: c ? basicAuth(c) : undefined, clientId: TOKEN_CLIENT_ID, logKey: 'remote.registry',
        }, this.host(ref).tokenGetHosts);
        this.auths.set(key, a);
      }
    }
    return a;
  }

  /** URL of `/v2/<repo>/<suffix>` on `ref`'s registry with the current scheme. */
  url(ref: Reference, suffix: string): URL {
    return new URL(`${this.host(ref).scheme}://${registryHost(ref.domain)}/v2/${ref.repository}/${suffix}`);
  }

  /**
   * One authenticated exchange, with the plain-HTTP fallback (module doc).
   * `target` is a path suffix under /v2/<repo>/ or an absolute URL (upload
   * locations); absolute URLs of the registry host follow the scheme switch.
   */
  private async exchange(ref: Reference, method: string, target: string | URL, headers: Record<string, string>, body?: RequestBody): Promise<HttpResponse> {
    const h = this.host(ref);
    const a = await this.auth(ref);
    const mk = (): URL => {
      if (typeof target === 'string') return this.url(ref, target);
      const u = new URL(target);
      if (u.host === registryHost(ref.domain)) u.protocol = `${h.scheme}:`;
      return u;
    };
    const used = h.scheme;
    try {
      return await a.request(method, mk(), headers, {}, body);
    } catch (err) {
      if (used !== 'https' || this.opts.plainHttp || !isSchemeMismatch(err)) throw this.wrap(err, method, mk());
      if (h.fellBack && h.scheme === 'https') throw this.wrap(err, method, mk());
      if (!h.fellBack) {
        // concurrent requests that raced the switch retry with http too
        h.fellBack = true;
        h.scheme = 'http';
        log.warn({ host: registryHost(ref.domain), err: describe(err) }, 'https failed with a plain-HTTP reply, retrying with http');
      }
      try {
        return await a.request(method, mk(), headers, {}, body);
      } catch (err2) {
        throw this.wrap(err2, method, mk());
      }
    }
  }

  private wrap(err: unknown, method: string, url: URL): Error {
    if (err instanceof ErrnoError) return err;
    return eio(`${method} ${url.host}${url.pathname}: ${describe(err)}`, err);
  }

  private async failure(r: HttpResponse, what: string): Promise<ErrnoError> {
    const text = await errorText(r);
    const msg = `${what}: status ${r.status}${text ? `: ${text}` : ''}`;
    return r.status === 404 ? enoent(msg) : eio(msg);
  }

  // ------------------------------------------------------------------ pull

  /** Descriptor of the manifest or index `ref` names (HEAD; GET when HEAD gives no digest). */
  async resolve(ref: Reference): Promise<Descriptor> {
    const obj = referenceObject(ref);
    const r = await this.exchange(ref, 'HEAD', `manifests/${obj}`, { accept: MANIFEST_ACCEPT });
    await discard(r);
    if (r.status === 200) {
      const digest = headerValue(r.headers, 'docker-content-digest');
      const mt = headerValue(r.headers, 'content-type')?.split(';')[0].trim();
      const size = Number(headerValue(r.headers, 'content-length'));
      if (digest && /^sha256:[a-f0-9]{64}$/.test(digest) && (!ref.digest || ref.digest === digest) && mt && Number.isSafeInteger(size)) {
        return { mediaType: mt, digest, size };
      }
    } else if (r.status === 404) {
      throw enoent(`manifest ${ref.repository}:${obj} not found on ${ref.domain}`);
    } else if (r.status !== 405 && r.status !== 400) {
      throw eio(`HEAD manifest ${ref.repository}:${obj} on ${ref.domain}: status ${r.status}`);
    }
    return (await this.fetchManifest(ref)).descriptor;
  }

  /** GET the manifest or index `ref` names (or `digest` in `ref`'s repository). */
  async fetchManifest(ref: Reference, digest?: string): Promise<FetchedManifest> {
    const obj = digest ?? referenceObject(ref);
    const r = await this.exchange(ref, 'GET', `manifests/${obj}`, { accept: MANIFEST_ACCEPT });
    if (r.status !== 200) throw await this.failure(r, `GET manifest ${ref.repository}:${obj} on ${ref.domain}`);
    const bytes = await readLimited(r, MAX_MANIFEST_SIZE, `manifest ${obj}`);
    const got = sha256Digest(bytes);
    const want = digest ?? ref.digest;
    if (want && want !== got) throw eio(`manifest ${ref.repository}@${want}: content digest is ${got}`);
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
    } catch {
      throw einval(`manifest ${ref.repository}:${obj} is not JSON`);
    }
    if (!json || typeof json !== 'object' || Array.isArray(json)) throw einval(`manifest ${ref.repository}:${obj} is not a JSON object`);
    if (json.schemaVersion === 1) throw einval(`manifest ${ref.repository}:${obj} is Docker schema 1, which is not supported`);
    const mt = documentType(json, headerValue(r.headers, 'content-type')?.split(';')[0].trim());
    return { descriptor: { mediaType: mt, digest: got, size: bytes.length }, bytes, json };
  }

  /** A small blob (config) as bytes, at most MAX_MANIFEST_SIZE, verified. */
  async fetchBlobBytes(ref: Reference, desc: Descriptor): Promise<Buffer> {
    if (desc.size > MAX_MANIFEST_SIZE) throw einval(`blob ${desc.digest} of ${desc.size} bytes is too large to read into memory`);
    const s = await this.fetchBlob(ref, desc);
    const parts: Buffer[] = [];
    for await (const c of s) parts.push(c as Buffer);
    return Buffer.concat(parts);
  }

  /** A JSON blob (image config). */
  async fetchJson<T>(ref: Reference, desc: Descriptor): Promise<T> {
    const b = await this.fetchBlobBytes(ref, desc);
    try {
      return JSON.parse(b.toString('utf8')) as T;
    } catch {
      throw einval(`blob ${desc.digest} is not JSON`);
    }
  }

  /** Stream blob `desc` of `ref`'s repository; the stream fails on a size or digest mismatch. */
  async fetchBlob(ref: Reference, desc: Descriptor): Promise<Readable> {
    checkDigestString(desc.digest);
    let r = await this.exchange(ref, 'GET', `blobs/${desc.digest}`, {});
    for (let hop = 0; r.status >= 300 && r.status <= 399; hop++) {
      const loc = headerValue(r.headers, 'location');
      await discard(r);
      if (!loc || hop >= MAX_REDIRECTS) throw eio(`blob ${desc.digest}: ${loc ? 'too many redirects' : `status ${r.status} without Location`}`);
      const u = new URL(loc, this.url(ref, `blobs/${desc.digest}`));
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw eio(`blob ${desc.digest}: redirect to ${u.protocol}`);
      // Authorization is never forwarded to the redirect target
      r = await this.http.request('GET', u, {}).catch((err: unknown) => { throw this.wrap(err, 'GET', u); });
    }
    if (r.status !== 200) throw await this.failure(r, `GET blob ${desc.digest} of ${ref.repository}`);
    const cl = headerValue(r.headers, 'content-length');
    if (cl !== undefined && /^\d+$/.test(cl) && Number(cl) !== desc.size) {
      abortBody(r);
      r.done();
      throw eio(`blob ${desc.digest}: Content-Length ${cl}, descriptor size ${desc.size}`);
    }
    const v = verifyingStream(desc.digest, desc.size, `blob ${desc.digest}`);
    r.body.on('error', (e) => { r.done(); v.destroy(e); });
    r.body.on('end', () => r.done());
    v.on('close', () => { if (!r.body.readableEnded) { abortBody(r); r.done(); } });
    return r.body.pipe(v);
  }

  /** Size of blob `digest` in `ref`'s repository, or undefined when absent. */
  async blobSize(ref: Reference, digest: string): Promise<number | undefined> {
    checkDigestString(digest);
    const r = await this.exchange(ref, 'HEAD', `blobs/${digest}`, {});
    await discard(r);
    if (r.status === 404) return undefined;
    if (r.status !== 200 && r.status !== 307) throw eio(`HEAD blob ${digest} of ${ref.repository}: status ${r.status}`);
    const n = Number(headerValue(r.headers, 'content-length'));
    return Number.isSafeInteger(n) ? n : -1;
  }

  /** Whether manifest `digest` exists in `ref`'s repository. */
  async manifestExists(ref: Reference, digest: string): Promise<boolean> {
    const r = await this.exchange(ref, 'HEAD', `manifests/${digest}`, { accept: MANIFEST_ACCEPT });
    await discard(r);
    if (r.status === 404) return false;
    if (r.status !== 200) throw eio(`HEAD manifest ${digest} of ${ref.repository}: status ${r.status}`);
    return true;
  }

  // ------------------------------------------------------------------ push

  private async withPushRetries<T>(what: string, fn: () => Promise<T>): Promise<T> {
    const n = Math.max(0, this.opts.pushRetries ?? 3);
    for (let i = 0; ; i++) {
      try {
        return await fn();
      } catch (err) {
        if (i >= n || !retryablePushError(err)) throw err;
        log.warn({ what, attempt: i + 1, err: describe(err) }, 'push failed, retrying');
        await sleep(this.opts.pushRetryDelayMs ?? 5000);
      }
    }
  }

  /**
   * Push blob `desc` to `ref`'s repository unless it is there already.
   * `source` produces the content (called again for a retry; may be async,
   * e.g. a fetchBlob of another registry). Returns
   * 'exists' | 'mounted' | 'uploaded'.
   */
  async pushBlob(ref: Reference, desc: Descriptor, source: () => Readable | Buffer | Promise<Readable | Buffer>, o: PushBlobOptions = {}): Promise<'exists' | 'mounted' | 'uploaded'> {
    checkDigestString(desc.digest);
    return this.withPushRetries(`blob ${desc.digest}`, async () => {
      if ((await this.blobSize(ref, desc.digest)) !== undefined) return 'exists';
      let start: HttpResponse;
      if (o.mountFrom && o.mountFrom !== ref.repository) {
        const q = new URLSearchParams({ mount: desc.digest, from: o.mountFrom });
        start = await this.exchange(ref, 'POST', `blobs/uploads/?${q}`, { 'content-length': '0' });
        if (start.status === 201) {
          await discard(start);
          return 'mounted';
        }
      } else {
        start = await this.exchange(ref, 'POST', 'blobs/uploads/', { 'content-length': '0' });
      }
      if (start.status !== 202) throw await this.failure(start, `start upload of ${desc.digest} to ${ref.repository}`);
      let loc = this.location(ref, start);
      await discard(start);
      if (o.chunkSize && o.chunkSize > 0) loc = await this.uploadChunks(ref, loc, desc, await source(), o.chunkSize);
      else {
        const u = new URL(loc);
        u.searchParams.set('digest', desc.digest);
        const src = await source();
        const body = Buffer.isBuffer(src) ? src : src.pipe(verifyingStream(desc.digest, desc.size, `upload of ${desc.digest}`));
        let sent = false;
        const once = () => {
          if (sent && !Buffer.isBuffer(body)) throw eio(`upload of ${desc.digest}: the registry asked for auth again mid-upload`);
          sent = true;
          return body;
        };
        const r = await this.exchange(ref, 'PUT', u, { 'content-type': 'application/octet-stream', 'content-length': String(desc.size) }, once);
        if (r.status !== 201) throw await this.failure(r, `upload of ${desc.digest} to ${ref.repository}`);
        await discard(r);
        return 'uploaded';
      }
      const u = new URL(loc);
      u.searchParams.set('digest', desc.digest);
      const r = await this.exchange(ref, 'PUT', u, { 'content-length': '0' });
      if (r.status !== 201) throw await this.failure(r, `finish upload of ${desc.digest} to ${ref.repository}`);
      await discard(r);
      return 'uploaded';
    });
  }

  private location(ref: Reference, r: HttpResponse): URL {
    const loc = headerValue(r.headers, 'location');
    if (!loc || loc.length > 8192) throw eio(`upload to ${ref.repository}: no usable Location`);
    const u = new URL(loc, this.url(ref, ''));
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw eio(`upload Location with scheme ${u.protocol}`);
    return u;
  }

  private async uploadChunks(ref: Reference, start: URL, desc: Descriptor, src: Readable | Buffer, chunkSize: number): Promise<URL> {
    let loc = start;
    let off = 0;
    const h = createHash('sha256');
    const sendChunk = async (buf: Buffer) => {
      h.update(buf);
      const r = await this.exchange(ref, 'PATCH', loc, {
        'content-type': 'application/octet-stream', 'content-length': String(buf.length), 'content-range': `${off}-${off + buf.length - 1}`,
      }, buf);
      if (r.status !== 202) throw await this.failure(r, `chunk at ${off} of ${desc.digest}`);
      loc = this.location(ref, r);
      await discard(r);
      off += buf.length;
    };
    const stream = Buffer.isBuffer(src) ? Readable.from([src]) : src;
    let pending: Buffer[] = [];
    let n = 0;
    for await (const c of stream) {
      pending.push(c as Buffer);
      n += (c as Buffer).length;
      while (n >= chunkSize) {
        const all = Buffer.concat(pending, n);
        await sendChunk(all.subarray(0, chunkSize));
        pending = [all.subarray(chunkSize)];
        n -= chunkSize;
      }
    }
    if (n > 0) await sendChunk(Buffer.concat(pending, n));
    if (off !== desc.size || `sha256:${h.digest('hex')}` !== desc.digest) throw eio(`chunked upload of ${desc.digest}: content does not match the descriptor`);
    return loc;
  }

  /** PUT a manifest or index under `tagOrDigest`; returns its digest (checked against the registry's). */
  async pushManifest(ref: Reference, tagOrDigest: string, mediaType: string, bytes: Buffer): Promise<string> {
    const digest = sha256Digest(bytes);
    if (tagOrDigest.startsWith('sha256:') && tagOrDigest !== digest) throw einval(`pushManifest: bytes have digest ${digest}, not ${tagOrDigest}`);
    return this.withPushRetries(`manifest ${tagOrDigest}`, async () => {
      const r = await this.exchange(ref, 'PUT', `manifests/${tagOrDigest}`, { 'content-type': mediaType, 'content-length': String(bytes.length) }, bytes);
      if (r.status !== 201 && r.status !== 200) throw await this.failure(r, `PUT manifest ${ref.repository}:${tagOrDigest}`);
      const theirs = headerValue(r.headers, 'docker-content-digest');
      await discard(r);
      if (theirs && theirs !== digest) throw eio(`PUT manifest ${ref.repository}:${tagOrDigest}: registry computed ${theirs}, we sent ${digest}`);
      return digest;
    });
  }
}
