/**
 * Proxy routing of the remote backends (storage-backends §1 "Proxy routing",
 * §2 token endpoint, §10.5 / §10.13 / §10.19) through the registry backend,
 * against node:http fakes on loopback: a tiny forward proxy written here
 * (absolute-form requests forwarded or answered itself, CONNECT tunnels), a
 * registry, a token endpoint and a ping endpoint. Covers absolute form and
 * CONNECT, Dragonfly headers and the proxy 429/403 replies, fallback on and
 * off, health checks (up, down, paused), `use_http` decided by the first URL,
 * the last attempt going to the source, and token requests never proxied.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { AddressInfo } from 'node:net';
import { ErrnoError } from '../../src/common/errno';
import { defaultProxyConfig, type ProxyConfig, type RegistryConfig } from '../../src/common/config';
import { RegistryBackend } from '../../src/storage/backend/registry';
import { HttpClient } from '../../src/storage/backend/http';
import { rangeReply } from '../support/http-fakes';

const BLOB = crypto.randomBytes(64 * 1024);
const BLOB_ID = crypto.createHash('sha256').update(BLOB).digest('hex');
const REPO = 'test/img';
const BLOB_PATH = `/v2/${REPO}/blobs/sha256:${BLOB_ID}`;
const AUTH = Buffer.from('user:pass').toString('base64');
const fast = { retryDelayMs: () => 0 };

interface Server { port: number; origin: string; host: string; close(): Promise<void> }

function track(srv: net.Server): () => Promise<void> {
  const sockets = new Set<net.Socket>();
  srv.on('connection', (s: net.Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  return () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); srv.close(() => r()); });
}

async function listen(srv: net.Server, scheme: string): Promise<Server> {
  const close = track(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  return { port, host: `127.0.0.1:${port}`, origin: `${scheme}://127.0.0.1:${port}`, close };
}

const serve = (h: http.RequestListener) => listen(http.createServer(h), 'http');

/** Serve BLOB's Range as 206. */
const sendRange = (req: http.IncomingMessage, res: http.ServerResponse): void => rangeReply(req, res, BLOB);

interface Seen { method: string; url: string; headers: http.IncomingHttpHeaders }

/** A registry that records who asked (requests forwarded by the fake proxy carry `via`). */
async function registry(handler: (req: http.IncomingMessage, res: http.ServerResponse) => void = sendRange) {
  const seen: Seen[] = [];
  const s = await serve((req, res) => { seen.push({ method: req.method!, url: req.url!, headers: req.headers }); handler(req, res); });
  return { ...s, seen, direct: () => seen.filter((x) => !x.headers.via), proxied: () => seen.filter((x) => x.headers.via) };
}

type ProxyAnswer = 'forward' | { status: number; headers?: Record<string, string>; body?: string | Buffer };

/**
 * A forward proxy: absolute-form requests are logged, then forwarded to the
 * target (adding `via: fake-proxy`) or answered by `answer`; CONNECT opens a
 * tunnel to the target.
 */
async function forwardProxy(answer: (req: http.IncomingMessage, n: number) => ProxyAnswer = () => 'forward') {
  const seen: Seen[] = [];
  const connects: string[] = [];
  const srv = http.createServer((req, res) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers });
    const a = answer(req, seen.length);
    if (a !== 'forward') {
      res.writeHead(a.status, a.headers ?? {});
      res.end(a.body ?? '');
      return;
    }
    let target: URL;
    try {
      target = new URL(req.url!);
    } catch {
      res.writeHead(400);
      res.end('not absolute form');
      return;
    }
    const up = http.request({ host: target.hostname, port: target.port, path: target.pathname + target.search, method: req.method, headers: { ...req.headers, via: 'fake-proxy' } }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => { res.writeHead(502); res.end('upstream failed'); });
    req.pipe(up);
  });
  srv.on('connect', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    connects.push(req.url!);
    const [h, p] = req.url!.split(':');
    const up = net.connect(Number(p), h, () => {
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
  });
  const s = await listen(srv, 'http');
  return { ...s, seen, connects };
}

function proxyCfg(p: Partial<ProxyConfig>): ProxyConfig {
  return { ...defaultProxyConfig(), ...p };
}

function cfg(host: string, extra: Partial<RegistryConfig> = {}): RegistryConfig {
  return {
    scheme: 'http', host, repo: REPO,
    skip_verify: false, ca_cert_files: [], timeout: 5, connect_timeout: 5, retry_limit: 0,
    proxy: defaultProxyConfig(),
    blob_url_scheme: '', blob_redirected_host: '',
    ...extra,
  };
}

async function rejectsEio(p: Promise<unknown>, re?: RegExp): Promise<ErrnoError> {
  try {
    await p;
  } catch (err) {
    assert.instance(err, ErrnoError);
    assert.is((err as ErrnoError).code, 'EIO');
    if (re) assert.match((err as Error).message, re, (err as Error).message);
    return err as ErrnoError;
  }
  throw new Error('expected EIO');
}

/** A port nothing listens on. */
async function deadPort(): Promise<number> {
  const s = await serve(() => undefined);
  await s.close();
  return s.port;
}

// ---------------------------------------------------------------- TLS material (openssl CLI)

const tlsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-proxy-unit-'));
const CERT = path.join(tlsDir, 'cert.pem');
const KEY = path.join(tlsDir, 'key.pem');
const gen = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', KEY, '-out', CERT,
  '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { encoding: 'utf8' });
const noTls = gen.status === 0 ? undefined : `openssl failed or missing: ${gen.error?.message ?? gen.stderr}`;
if (noTls) {
  if (process.env.CI === 'true') throw new Error(noTls);
  console.log(`SKIP registry proxy TLS cases: ${noTls}`);
}

function serveTls(h: http.RequestListener): Promise<Server> {
  return listen(https.createServer({ cert: fs.readFileSync(CERT), key: fs.readFileSync(KEY) }, h), 'https');
}

test.after(() => fs.rmSync(tlsDir, { recursive: true, force: true }));

// ---------------------------------------------------------------- tests

test('http target: absolute-form request through the proxy with the Dragonfly headers (priority 6 on demand, 3 prefetch)', async () => {
  const reg = await registry();
  const px = await forwardProxy();
  const be = new RegistryBackend(cfg(reg.host, { proxy: proxyCfg({ url: px.origin }) }), fast);
  try {
    assert.ok((await be.read(BLOB_ID, 100, 1000)).equals(BLOB.subarray(100, 1100)));
    assert.ok((await be.read(BLOB_ID, 0, 10, { prefetch: true })).equals(BLOB.subarray(0, 10)));
    assert.is(px.seen.length, 2);
    assert.is(px.seen[0].url, `${reg.origin}${BLOB_PATH}`, 'absolute form, not CONNECT');
    assert.is(px.seen[0].headers.host, reg.host);
    assert.is(px.seen[0].headers['x-dragonfly-priority'], '6');
    assert.is(px.seen[0].headers['x-dragonfly-prefetch'], 'true');
    assert.is(px.seen[0].headers['x-dragonfly-use-p2p'], 'true');
    assert.is(px.seen[0].headers.range, 'bytes=100-1099');
    assert.is(px.seen[1].headers['x-dragonfly-priority'], '3');
    assert.equal(px.connects, []);
    assert.is(reg.direct().length, 0, 'nothing went to the registry directly');
  } finally {
    await be.close();
    await px.close();
    await reg.close();
  }
});

test('token requests never go through the proxy; the registry requests do', async () => {
  const tokens: Seen[] = [];
  const auth = await serve((req, res) => {
    tokens.push({ method: req.method!, url: req.url!, headers: req.headers });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token: 'tok', expires_in: 300 }));
  });
  const reg = await registry((req, res) => {
    if (req.headers.authorization !== 'Bearer tok') {
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${auth.origin}/token",service="svc",scope="repository:${REPO}:pull"` });
      res.end();
      return;
    }
    sendRange(req, res);
  });
  const px = await forwardProxy();
  const be = new RegistryBackend(cfg(reg.host, { auth: AUTH, proxy: proxyCfg({ url: px.origin }) }), fast);
  try {
    assert.ok((await be.read(BLOB_ID, 0, 100)).equals(BLOB.subarray(0, 100)));
    assert.is(tokens.length, 1);
    assert.is(tokens[0].method, 'POST');
    assert.is(tokens[0].headers.authorization, `Basic ${AUTH}`);
    assert.is(tokens[0].headers.via, undefined, 'token request went directly');
    assert.is(tokens[0].headers['x-dragonfly-priority'], undefined);
    assert.ok(px.seen.every((s) => s.url.startsWith(reg.origin)), px.seen.map((s) => s.url).join('\n'));
    assert.is(px.seen.length, 2, '401 then 206 through the proxy');
    assert.is(reg.direct().length, 0);
  } finally {
    await be.close();
    await px.close();
    await reg.close();
    await auth.close();
  }
});

test('https target: CONNECT tunnel through the proxy, TLS verified with ca_cert_files', async () => {
  if (noTls) return;
  const seen: http.IncomingHttpHeaders[] = [];
  const reg = await serveTls((req, res) => { seen.push(req.headers); sendRange(req, res); });
  const px = await forwardProxy();
  const be = new RegistryBackend(cfg(reg.host, { scheme: 'https', ca_cert_files: [CERT], proxy: proxyCfg({ url: px.origin }) }), fast);
  const untrusted = new RegistryBackend(cfg(reg.host, { scheme: 'https', proxy: proxyCfg({ url: px.origin, fallback: false }) }), { ...fast, attempts: 1 });
  try {
    assert.ok((await be.read(BLOB_ID, 5, 50)).equals(BLOB.subarray(5, 55)));
    assert.equal(px.connects, [reg.host]);
    assert.is(px.seen.length, 0, 'no absolute-form request for an https target');
    assert.is(seen[0]['x-dragonfly-priority'], '6', 'Dragonfly headers inside the tunnel');
    await rejectsEio(untrusted.read(BLOB_ID, 0, 10), /certificate|self.signed|verify/i);
  } finally {
    await be.close();
    await untrusted.close();
    await px.close();
    await reg.close();
  }
});

test('use_http: first URL https → proxied as http; the token realm (https) is fetched directly and not rewritten', async () => {
  if (noTls) return;
  const tokens: Seen[] = [];
  const auth = await serveTls((req, res) => {
    tokens.push({ method: req.method!, url: req.url!, headers: req.headers });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ access_token: 'tok2' }));
  });
  // the proxy is a caching peer: it answers from its own store, so the https registry never needs to exist
  const px = await forwardProxy((req): ProxyAnswer => {
    if (req.headers.authorization !== 'Bearer tok2') {
      return { status: 401, headers: { 'www-authenticate': `Bearer realm="${auth.origin}/token",service="svc"` } };
    }
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '')!;
    const a = Number(m[1]);
    const b = Number(m[2]);
    return { status: 206, headers: { 'content-range': `bytes ${a}-${b}/${BLOB.length}` }, body: BLOB.subarray(a, b + 1) };
  });
  const be = new RegistryBackend(cfg('registry.invalid:5000', {
    scheme: 'https', auth: AUTH, ca_cert_files: [CERT], proxy: proxyCfg({ url: px.origin, use_http: true }),
  }), fast);
  try {
    assert.ok((await be.read(BLOB_ID, 10, 20)).equals(BLOB.subarray(10, 30)));
    assert.is(px.seen.length, 2);
    assert.ok(px.seen.every((s) => s.url === `http://registry.invalid:5000${BLOB_PATH}`), px.seen.map((s) => s.url).join('\n'));
    assert.equal(px.connects, [], 'no tunnel: the https target was rewritten to http');
    assert.is(tokens.length, 1, 'token fetched over TLS, directly');
    assert.is(tokens[0].headers.via, undefined);
  } finally {
    await be.close();
    await px.close();
    await auth.close();
  }
});

test('use_http is decided by the first URL: after an http one, an https redirect target is tunnelled, not rewritten', async () => {
  if (noTls) return;
  const store = await serveTls((req, res) => sendRange(req, res));
  const reg = await registry((_req, res) => { res.writeHead(307, { location: `${store.origin}/data?sig=1` }); res.end(); });
  const px = await forwardProxy();
  const be = new RegistryBackend(cfg(reg.host, { ca_cert_files: [CERT], proxy: proxyCfg({ url: px.origin, use_http: true }) }), fast);
  try {
    assert.ok((await be.read(BLOB_ID, 0, 64)).equals(BLOB.subarray(0, 64)));
    assert.is(px.seen.length, 1, 'the registry request in absolute form');
    assert.equal(px.connects, [store.host], 'the https redirect target through CONNECT');
  } finally {
    await be.close();
    await px.close();
    await reg.close();
    await store.close();
  }
});

test('proxy answers 5xx: fallback retries once directly; without fallback the 5xx is the answer (and every attempt stays on the proxy)', async () => {
  const reg = await registry();
  const px = await forwardProxy(() => ({ status: 502, body: 'peer down' }));
  const be = new RegistryBackend(cfg(reg.host, { proxy: proxyCfg({ url: px.origin }) }), fast);
  const strict = new RegistryBackend(cfg(reg.host, { proxy: proxyCfg({ url: px.origin, fallback: false }) }), fast);
  try {
    assert.ok((await be.read(BLOB_ID, 0, 100)).equals(BLOB.subarray(0, 100)));
    assert.is(px.seen.length, 1);
    assert.is(reg.direct().length, 1);
    assert.is(reg.direct()[0].headers['x-dragonfly-priority'], undefined, 'no Dragonfly headers on the direct request');
    px.seen.length = 0;
    await rejectsEio(strict.read(BLOB_ID, 0, 100), /status 502.*peer down.*4 attempts/);
    assert.is(px.seen.length, 4);
    assert.is(reg.direct().length, 1, 'no fallback: the registry was never asked');
    assert.is(px.seen[2].headers['x-dragonfly-priority'], '6');
    assert.is(px.seen[3].headers['x-dragonfly-priority'], undefined, 'the last (source) attempt drops the Dragonfly headers');
  } finally {
    await be.close();
    await strict.close();
    await px.close();
    await reg.close();
  }
});

test('proxy unreachable (transport error): fallback goes direct, no fallback fails with EIO', async () => {
  const reg = await registry();
  const url = `http://127.0.0.1:${await deadPort()}`;
  const be = new RegistryBackend(cfg(reg.host, { proxy: proxyCfg({ url }) }), fast);
  const strict = new RegistryBackend(cfg(reg.host, { proxy: proxyCfg({ url, fallback: false }) }), fast);
  try {
    assert.ok((await be.read(BLOB_ID, 7, 7)).equals(BLOB.subarray(7, 14)));
    assert.is(reg.direct().length, 1);
    await rejectsEio(strict.read(BLOB_ID, 0, 10), /ECONNREFUSED|connect/);
    assert.is(reg.seen.length, 1, 'the strict backend never reached the registry');
  } finally {
    await be.close();
    await strict.close();
    await reg.close();
  }
});

test('the last attempt of a read goes to the source (fallback on)', async () => {
  const reg = await registry();
  // a peer that keeps answering 404 (below 500: returned as is, so the read retries)
  const px = await forwardProxy(() => ({ status: 404, body: 'not here' }));
  const be = new RegistryBackend(cfg(reg.host, { proxy: proxyCfg({ url: px.origin }) }), fast);
  try {
    assert.ok((await be.read(BLOB_ID, 0, 32)).equals(BLOB.subarray(0, 32)));
    assert.is(px.seen.length, 3, 'attempts 1-3 through the proxy');
    assert.is(reg.direct().length, 1, 'attempt 4 direct');
    px.seen.length = 0;
    // prefetch: attempt 2 is the last, so it is direct and succeeds
    assert.ok((await be.read(BLOB_ID, 0, 32, { prefetch: true })).equals(BLOB.subarray(0, 32)));
    assert.is(px.seen.length, 1, 'prefetch: one proxied attempt, then the source');
    assert.is(px.seen[0].headers['x-dragonfly-priority'], '3');
    assert.is(reg.direct().length, 2);
  } finally {
    await be.close();
    await px.close();
    await reg.close();
  }
});

test('Dragonfly proxy 429: the next attempt goes to the source; a prefetch read stops', async () => {
  const reg = await registry();
  const px = await forwardProxy(() => ({ status: 429, headers: { 'x-dragonfly-error-type': 'proxy' }, body: 'too many' }));
  const be = new RegistryBackend(cfg(reg.host, { proxy: proxyCfg({ url: px.origin }) }), fast);
  try {
    assert.ok((await be.read(BLOB_ID, 0, 16)).equals(BLOB.subarray(0, 16)));
    assert.is(px.seen.length, 1);
    assert.is(reg.direct().length, 1, 'attempt 2 went to the source');
    assert.is(reg.direct()[0].headers['x-dragonfly-use-p2p'], undefined);
    await rejectsEio(be.read(BLOB_ID, 0, 16, { prefetch: true }), /rate limited.*1 attempt\)/);
    assert.is(px.seen.length, 2);
    assert.is(reg.direct().length, 1, 'prefetch did not retry');
  } finally {
    await be.close();
    await px.close();
    await reg.close();
  }
});

test('Dragonfly proxy 403 stops retrying at once; a 429 without the error-type header is an ordinary reply', async () => {
  const reg = await registry();
  let mode: 'df403' | 'plain429' = 'df403';
  const px = await forwardProxy(() => (mode === 'df403'
    ? { status: 403, headers: { 'x-dragonfly-error-type': 'proxy' }, body: 'denied' }
    : { status: 429, body: 'slow down' }));
  const be = new RegistryBackend(cfg(reg.host, { proxy: proxyCfg({ url: px.origin }) }), fast);
  try {
    await rejectsEio(be.read(BLOB_ID, 0, 16), /forbidden.*1 attempt\)/);
    assert.is(px.seen.length, 1);
    assert.is(reg.seen.length, 0);
    await rejectsEio(be.size(BLOB_ID), /HEAD: .*forbidden/);
    assert.is(px.seen[1].method, 'HEAD');
    mode = 'plain429';
    assert.ok((await be.read(BLOB_ID, 0, 16)).equals(BLOB.subarray(0, 16)), 'last attempt direct');
    assert.is(px.seen.length, 5, 'a plain 429 is retried through the proxy like any error status');
  } finally {
    await be.close();
    await px.close();
    await reg.close();
  }
});

test('health: ping down → direct (fallback) or "not healthy" EIO (no fallback); ping up again → back through the proxy', async () => {
  const reg = await registry();
  const px = await forwardProxy();
  let up = true;
  let pings = 0;
  const ping = await serve((_req, res) => { pings++; res.writeHead(up ? 200 : 503); res.end(); });
  const pc = { url: px.origin, ping_url: `${ping.origin}/ping`, check_interval: 3600 };
  const be = new RegistryBackend(cfg(reg.host, { proxy: proxyCfg(pc) }), fast);
  const strict = new RegistryBackend(cfg(reg.host, { proxy: proxyCfg({ ...pc, fallback: false }) }), fast);
  try {
    const router = be.client.proxy!;
    const srouter = strict.client.proxy!;
    assert.ok(router.checking);
    assert.is(await router.checkNow(), true);
    assert.ok(pings >= 2, 'the first ping runs at start, without waiting for the interval');
    await be.read(BLOB_ID, 0, 10);
    assert.is(px.seen.length, 1);

    up = false;
    assert.is(await router.checkNow(), false);
    assert.is(await srouter.checkNow(), false);
    assert.ok((await be.read(BLOB_ID, 10, 10)).equals(BLOB.subarray(10, 20)));
    assert.is(px.seen.length, 1, 'unhealthy proxy skipped');
    assert.is(reg.direct().length, 1);
    await rejectsEio(strict.read(BLOB_ID, 0, 10), /proxy http:\/\/\S+ is not healthy and fallback is disabled/);
    assert.is(reg.direct().length, 1);

    up = true;
    assert.is(await router.checkNow(), true);
    await be.read(BLOB_ID, 20, 10);
    assert.is(px.seen.length, 2, 'healthy again: through the proxy');
  } finally {
    await be.close();
    await strict.close();
    await px.close();
    await reg.close();
    await ping.close();
  }
});

test('health: 3xx ping is healthy, an unreachable ping URL is not; no ping_url = always healthy, no timer', async () => {
  const ping = await serve((_req, res) => { res.writeHead(302, { location: '/elsewhere' }); res.end(); });
  const a = new HttpClient({ timeout: 5, connect_timeout: 1, skip_verify: false, ca_cert_files: [], proxy: proxyCfg({ url: 'http://127.0.0.1:9', ping_url: ping.origin, check_interval: 3600 }) });
  const b = new HttpClient({ timeout: 5, connect_timeout: 1, skip_verify: false, ca_cert_files: [], proxy: proxyCfg({ url: 'http://127.0.0.1:9', ping_url: `http://127.0.0.1:${await deadPort()}/`, check_interval: 3600 }) });
  const c = new HttpClient({ timeout: 5, connect_timeout: 1, skip_verify: false, ca_cert_files: [], proxy: proxyCfg({ url: 'http://127.0.0.1:9' }) });
  const d = new HttpClient({ timeout: 5, connect_timeout: 1, skip_verify: false, ca_cert_files: [] });
  try {
    assert.is(await a.proxy!.checkNow(), true);
    assert.is(await b.proxy!.checkNow(), false);
    assert.not.ok(c.proxy!.checking);
    assert.ok(c.proxy!.isHealthy());
    assert.is(await c.proxy!.checkNow(), true);
    assert.is(c.proxy!.pingCount, 0);
    assert.is(d.proxy, undefined, 'no proxy.url: no routing');
  } finally {
    await Promise.all([a.close(), b.close(), c.close(), d.close()]);
    await ping.close();
  }
  assert.is(await a.proxy!.tick(), false, 'closed: the timer is stopped');
});

test('health: pings pause while the backend is idle for check_pause_elapsed, a request wakes them', async () => {
  const reg = await registry();
  const px = await forwardProxy();
  const ping = await serve((_req, res) => { res.writeHead(200); res.end(); });
  let now = 1_000_000;
  const be = new RegistryBackend(cfg(reg.host, {
    proxy: proxyCfg({ url: px.origin, ping_url: ping.origin, check_interval: 3600, check_pause_elapsed: 300 }),
  }), { ...fast, http: { now: () => now } });
  try {
    const r = be.client.proxy!;
    await r.checkNow();
    const base = r.pingCount;
    assert.is(await r.tick(), true, 'recently used (creation): pings run');
    assert.is(r.pingCount, base + 1);
    now += 301_000;
    assert.is(await r.tick(), false, 'idle past check_pause_elapsed: paused');
    assert.is(r.pingCount, base + 1);
    await be.read(BLOB_ID, 0, 10);
    await r.checkNow(); // wait for the ping the request kicked off, plus this one
    assert.is(r.pingCount, base + 3, 'the first request after the pause pinged at once');
    assert.is(await r.tick(), true, 'used again: the timer pings');
  } finally {
    await be.close();
    await px.close();
    await reg.close();
    await ping.close();
  }
});

test('HttpClient with a proxy (any remote backend): routed, direct requests bypass it, close() is clean', async () => {
  const target = await registry((_req, res) => { res.writeHead(200); res.end('hi'); });
  const px = await forwardProxy();
  const c = new HttpClient({ timeout: 5, connect_timeout: 5, skip_verify: false, ca_cert_files: [], proxy: proxyCfg({ url: px.origin }) });
  try {
    const r1 = await c.request('GET', new URL(`${target.origin}/obj?x=1`));
    assert.is(r1.viaProxy, true);
    await r1.body.text();
    r1.done();
    const r2 = await c.request('GET', new URL(`${target.origin}/obj`), {}, undefined, { direct: true });
    assert.is(r2.viaProxy, false);
    await r2.body.text();
    r2.done();
    assert.equal(px.seen.map((s) => s.url), [`${target.origin}/obj?x=1`]);
    assert.is(target.direct().length, 1);
  } finally {
    await c.close();
    await px.close();
    await target.close();
  }
  await rejectsEio(c.request('GET', new URL(target.origin)), /closed/);
});

test('invalid proxy settings fail backend creation', () => {
  assert.throws(() => new RegistryBackend(cfg('h:1', { proxy: proxyCfg({ url: 'not a url' }) })), /proxy.url/);
  assert.throws(() => new RegistryBackend(cfg('h:1', { proxy: proxyCfg({ url: 'socks5://h:1' }) })), /scheme/);
  assert.throws(() => new RegistryBackend(cfg('h:1', { proxy: proxyCfg({ url: 'http://h:1', ping_url: '::' }) })), /ping_url/);
});

test.run();
