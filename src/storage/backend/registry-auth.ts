/**
 * The OCI distribution auth flow (storage-backends §2 "Request and auth
 * flow"), shared by the registry blob backend (registry.ts) and the
 * distribution client of nydusify / ctr-remote (src/remote):
 *  - a request goes out with the header that last worked (or anonymously, or
 *    with `Bearer <registry_token>`); a request that carried a header and got
 *    a 401 is resent without it first (Harbor answers an expired token with a
 *    Basic challenge);
 *  - a 401 is answered from its `WWW-Authenticate` challenge: Basic →
 *    `Basic <auth>`; Bearer → a token from the realm (POST form with
 *    `client_id`, then GET, the GET remembered per realm host; the token
 *    request carries `Basic <auth>` when credentials are known); token
 *    requests always go directly (never through a proxy, never rewritten);
 *  - one token fetch in flight per challenge, however many requests got it.
 * Deliberate differences from upstream (the same as the backend's): the
 * challenge value keeps everything after the first `=`; no refresh thread: a
 * Bearer token is refetched on use within 20 s of `expires_in`; every reply
 * the token endpoint sends is bounded (64 KiB, 16 KiB token).
 *
 * The state is one cached Authorization header per RegistryAuth. The backend
 * uses one for its repository; the distribution client keeps one per
 * repository (push scopes differ from pull scopes, and a 401 on a cached pull
 * token simply goes through the challenge again with the push scope).
 *
 * A request body (uploads) is given as a factory, so that it can be sent
 * again after a 401; a factory that cannot produce a body twice throws.
 */
import type { Readable } from 'node:stream';
import { eio } from '../../common/errno';
import { warnLimited } from '../../common/log';
import type { RequestOptions } from './proxy';
import { type Headers, type HttpResponse, describe, discard, errorText, headerValue, readLimited } from './http';

/** token endpoint response limit */
export const MAX_TOKEN_RESPONSE = 64 * 1024;
/** the client id the backend sends (upstream nydusd's) */
export const NYDUS_TOKEN_CLIENT_ID = 'nydus-registry-client';
const DEFAULT_TOKEN_TTL = 600;
/** a token is refetched when used this close to its expiry */
const TOKEN_REFRESH_MARGIN_MS = 20_000;

export interface Challenge {
  scheme: 'Basic' | 'Bearer';
  realm: string;
  service: string;
  scope: string;
}

/** Parse a `WWW-Authenticate` value; undefined when unusable (upstream: Bearer needs realm and service). */
export function parseChallenge(value: string | undefined): Challenge | undefined {
  if (!value || value.length > 4096) return undefined;
  const sp = value.indexOf(' ');
  const scheme = (sp < 0 ? value : value.slice(0, sp)).trim();
  const rest = sp < 0 ? '' : value.slice(sp + 1);
  const params: Record<string, string> = {};
  for (const piece of rest.split('",')) {
    const eq = piece.indexOf('=');
    if (eq < 0) continue;
    const k = piece.slice(0, eq).trim().toLowerCase();
    const v = piece.slice(eq + 1).trim().replace(/^"+|"+$/g, '').trim();
    params[k] = v;
  }
  if (/^basic$/i.test(scheme)) return { scheme: 'Basic', realm: params.realm ?? '', service: '', scope: '' };
  if (/^bearer$/i.test(scheme)) {
    if (!params.realm || !params.service) return undefined;
    return { scheme: 'Bearer', realm: params.realm, service: params.service, scope: params.scope ?? '' };
  }
  return undefined;
}

/** `auth` must be base64 of UTF-8 `user:pass` (upstream validation); '' = absent. */
export function validateAuth(auth: string | undefined): string | undefined {
  const a = auth?.trim();
  if (!a) return undefined;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(a) || a.length % 4 !== 0) throw eio('backend.registry.auth is not valid base64');
  const dec = Buffer.from(a, 'base64');
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(dec);
  } catch {
    throw eio('backend.registry.auth does not decode to UTF-8');
  }
  if (!text.includes(':')) throw eio('backend.registry.auth must encode user:password');
  return a;
}

/** A request body: sent as is, or produced anew for every send (streams). */
export type RequestBody = string | Buffer | (() => string | Buffer | Readable);

/** One HTTP exchange (HttpClient.request, possibly wrapped: the backend counts replies). */
export type AuthSend = (method: string, url: URL, headers: Headers, body?: string | Buffer | Readable, ro?: RequestOptions) => Promise<HttpResponse>;

export interface RegistryAuthOptions {
  /** base64 `user:pass` (validated with validateAuth) */
  auth?: string;
  /** a static Bearer token sent from the first request */
  registryToken?: string;
  /** `client_id` of token requests */
  clientId?: string;
  /** log key / component for warnings */
  logKey?: string;
}

const bodyOf = (b: RequestBody | undefined): string | Buffer | Readable | undefined => (typeof b === 'function' ? b() : b);

/** Challenge/token/Basic state of one registry repository (module doc). */
export class RegistryAuth {
  private auth: string | undefined;
  private readonly registryToken: string | undefined;
  private readonly clientId: string;
  private readonly logKey: string;
  /** the Authorization header that last worked (or `Bearer <registry_token>`) */
  private authHeader: string | undefined;
  /** expiry (ms since epoch) of a Bearer header we fetched */
  private authExpires = Infinity;
  /** the last Bearer challenge, for refreshing its token */
  private bearer: Challenge | undefined;
  /** realm hosts whose token endpoint wants GET (shared between the RegistryAuths of a client) */
  private readonly tokenGetHosts: Set<string>;
  /** token fetches in flight, by challenge */
  private readonly tokenFetches = new Map<string, Promise<{ header: string; expires: number }>>();

  constructor(private readonly send: AuthSend, opts: RegistryAuthOptions = {}, tokenGetHosts = new Set<string>()) {
    this.auth = validateAuth(opts.auth);
    this.registryToken = opts.registryToken?.trim() || undefined;
    if (this.registryToken) this.authHeader = `Bearer ${this.registryToken}`;
    this.clientId = opts.clientId ?? NYDUS_TOKEN_CLIENT_ID;
    this.logKey = opts.logKey ?? 'storage.registry';
    this.tokenGetHosts = tokenGetHosts;
  }

  /** base64 `user:pass` in use, if any */
  get credentials(): string | undefined {
    return this.auth;
  }

  /** The Authorization header that last worked (undefined: anonymous so far). */
  get header(): string | undefined {
    return this.authHeader;
  }

  /** New credentials; '' clears them. The cached header is dropped (EIO when `auth` is malformed). */
  updateAuth(auth: string): void {
    this.auth = validateAuth(auth);
    this.authHeader = this.registryToken ? `Bearer ${this.registryToken}` : undefined;
    this.authExpires = Infinity;
  }

  /**
   * Send `method url` through the auth flow (module doc). The reply is
   * returned whatever its status (a 401 that could not be answered
   * included); the caller checks it.
   */
  async request(method: string, url: URL, extra: Headers, ro: RequestOptions = {}, body?: RequestBody): Promise<HttpResponse> {
    await this.refreshIfExpiring();
    const sent = this.authHeader;
    let r = await this.send(method, url, sent ? { ...extra, authorization: sent } : extra, bodyOf(body), ro);
    if (r.status !== 401) return r;
    if (sent) {
      await discard(r);
      r = await this.send(method, url, extra, bodyOf(body), ro);
      if (r.status !== 401) return r;
    }
    const ch = parseChallenge(headerValue(r.headers, 'www-authenticate'));
    if (!ch) return r;
    let header: string;
    let expires = Infinity;
    if (ch.scheme === 'Basic') {
      if (!this.auth) return r;
      header = `Basic ${this.auth}`;
      await discard(r);
    } else {
      await discard(r);
      const t = await this.sharedToken(ch);
      header = t.header;
      this.bearer = ch;
      expires = t.expires;
    }
    const r2 = await this.send(method, url, { ...extra, authorization: header }, bodyOf(body), ro);
    if (r2.status >= 200 && r2.status <= 399) {
      this.authHeader = header;
      this.authExpires = expires;
    }
    return r2;
  }

  private async refreshIfExpiring(): Promise<void> {
    if (!this.bearer || !this.authHeader || Date.now() < this.authExpires - TOKEN_REFRESH_MARGIN_MS) return;
    try {
      const t = await this.sharedToken(this.bearer);
      this.authHeader = t.header;
      this.authExpires = t.expires;
    } catch (err) {
      // keep the old token; a 401 will tell
      warnLimited(this.logKey, { err: describe(err) }, 'registry token refresh failed');
      this.authExpires = Date.now() + TOKEN_REFRESH_MARGIN_MS + 5000;
    }
  }

  /** fetchToken, one fetch in flight per challenge however many requests got it. */
  private sharedToken(ch: Challenge): Promise<{ header: string; expires: number }> {
    const key = `${ch.realm}\n${ch.service}\n${ch.scope}`;
    let p = this.tokenFetches.get(key);
    if (!p) {
      p = this.fetchToken(ch).finally(() => this.tokenFetches.delete(key));
      this.tokenFetches.set(key, p);
    }
    return p;
  }

  /** Token from a Bearer challenge's realm: POST form first, then GET (remembered per host). */
  async fetchToken(ch: Challenge): Promise<{ header: string; expires: number }> {
    let realm: URL;
    try {
      realm = new URL(ch.realm);
    } catch {
      throw eio(`invalid token realm ${JSON.stringify(ch.realm.slice(0, 200))}`);
    }
    if (realm.protocol !== 'http:' && realm.protocol !== 'https:') throw eio(`token realm has unsupported scheme ${realm.protocol}`);
    const headers: Headers = this.auth ? { authorization: `Basic ${this.auth}` } : {};
    const params = new URLSearchParams({ service: ch.service, scope: ch.scope, client_id: this.clientId });
    let body: Buffer | undefined;
    let why = '';
    if (!this.tokenGetHosts.has(realm.host)) {
      try {
        // token requests never use the proxy and are never rewritten (use_http)
        const r = await this.send('POST', realm, { ...headers, 'content-type': 'application/x-www-form-urlencoded' }, params.toString(), { direct: true });
        if (r.status >= 400) {
          why = `POST status ${r.status}`;
          await discard(r);
        } else {
          body = await readLimited(r, MAX_TOKEN_RESPONSE, 'token endpoint');
        }
      } catch (err) {
        why = `POST: ${describe(err)}`;
      }
      if (!body) this.tokenGetHosts.add(realm.host);
    }
    if (!body) {
      const u = new URL(realm);
      for (const [k, v] of params) u.searchParams.set(k, v);
      const r = await this.send('GET', u, headers, undefined, { direct: true });
      if (r.status >= 400) {
        const text = await errorText(r);
        throw eio(`token endpoint ${realm.host}: ${why ? `${why}, ` : ''}GET status ${r.status}${text ? `: ${text}` : ''}`);
      }
      body = await readLimited(r, MAX_TOKEN_RESPONSE, 'token endpoint');
    }
    let j: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      j = JSON.parse(body.toString('utf8'));
    } catch {
      throw eio(`token endpoint ${realm.host}: response is not JSON`);
    }
    const tok = typeof j?.token === 'string' && j.token ? j.token : typeof j?.access_token === 'string' ? j.access_token : '';
    if (!tok || /[\r\n\0]/.test(tok) || tok.length > 16384) throw eio(`token endpoint ${realm.host}: no usable token in response`);
    const ttl = typeof j.expires_in === 'number' && Number.isFinite(j.expires_in) && j.expires_in > 0 ? j.expires_in : DEFAULT_TOKEN_TTL;
    return { header: `Bearer ${tok}`, expires: Date.now() + Math.min(ttl, 365 * 86400) * 1000 };
  }
}
