/**
 * Registry backend (storage-backends §1–2) against small node:http fakes on
 * loopback: range reads, Basic and Bearer auth (token caching and refresh),
 * redirects (Authorization dropped, final URL cached), retries, length
 * checks, hostile servers (oversized bodies, headers, token replies), timeouts,
 * `auth` validation and the `IMAGE_PULL_AUTH` override.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { ErrnoError } from '../../src/common/errno';
import { type FakeServer, rangeReply, serveHttp } from '../support/http-fakes';
import { applyImagePullAuth, parseNydusdConfig, type RegistryConfig } from '../../src/common/config';
import { createBackend } from '../../src/storage/factory';
import { RegistryBackend, parseChallenge, validateAuth } from '../../src/storage/backend/registry';
import { BackendMetrics } from '../../src/storage/backend/metrics';
import { exportEvents } from '../../src/common/events';

const BLOB = crypto.randomBytes(256 * 1024);
const BLOB_ID = crypto.createHash('sha256').update(BLOB).digest('hex');
const REPO = 'test/img';
const BLOB_PATH = `/v2/${REPO}/blobs/sha256:${BLOB_ID}`;
const AUTH = Buffer.from('user:pass').toString('base64');

type Server = FakeServer;

const serve = (handler: http.RequestListener, host = '127.0.0.1'): Promise<Server> => serveHttp(handler, { host });

/** Serve BLOB's Range as 206. */
const sendRange = (req: http.IncomingMessage, res: http.ServerResponse, blob = BLOB): void => rangeReply(req, res, blob);

function cfg(s: Server, extra: Partial<RegistryConfig> = {}): RegistryConfig {
  return {
    scheme: 'http', host: `${s.host}:${s.port}`, repo: REPO,
    skip_verify: false, ca_cert_files: [], timeout: 5, connect_timeout: 5, retry_limit: 0,
    proxy: { url: '', ping_url: '', fallback: true, check_interval: 5, use_http: false, check_pause_elapsed: 300, dragonfly_scheduler_endpoint: '' },
    blob_url_scheme: '', blob_redirected_host: '',
    ...extra,
  };
}

const fast = { retryDelayMs: () => 0 };

async function rejectsEio(p: Promise<unknown>, re?: RegExp): Promise<ErrnoError> {
  try {
    await p;
  } catch (err) {
    assert.instance(err, ErrnoError);
    assert.is((err as ErrnoError).code, 'EIO');
    if (re) assert.match((err as Error).message, re);
    return err as ErrnoError;
  }
  throw new Error('expected EIO');
}

test('parseChallenge: Basic, Bearer, unusable', () => {
  assert.equal(parseChallenge('Basic realm="Registry Realm"'), { scheme: 'Basic', realm: 'Registry Realm', service: '', scope: '' });
  assert.equal(
    parseChallenge('Bearer realm="https://auth.example/token?x=1",service="registry.example",scope="repository:a/b:pull"'),
    { scheme: 'Bearer', realm: 'https://auth.example/token?x=1', service: 'registry.example', scope: 'repository:a/b:pull' },
  );
  assert.equal(parseChallenge('Bearer realm="https://a/token",service="s"')?.scope, '');
  assert.is(parseChallenge('Bearer realm="https://a/token"'), undefined, 'service required');
  assert.is(parseChallenge('Digest realm="x"'), undefined);
  assert.is(parseChallenge(undefined), undefined);
});

test('validateAuth: base64 of user:pass', () => {
  assert.is(validateAuth(` ${AUTH} `), AUTH);
  assert.is(validateAuth(''), undefined);
  assert.throws(() => validateAuth('not base64!'));
  assert.throws(() => validateAuth(Buffer.from('nocolon').toString('base64')));
});

test('validateAuth: trimmed, strict base64 (padding), UTF-8 with a colon', () => {
  assert.is(validateAuth('\t \n'), undefined, 'blank = absent');
  assert.is(validateAuth(Buffer.from(':').toString('base64')), 'Og==', 'empty user and password still have the colon');
  assert.throws(() => validateAuth('dXNlcjpwYXNz='), /base64/, 'wrong padding');
  assert.throws(() => validateAuth('dXNlcjpwYXN'), /base64/, 'missing padding');
  assert.throws(() => validateAuth(Buffer.from([0x75, 0x3a, 0xff, 0xfe]).toString('base64')), /UTF-8/);
});

test('IMAGE_PULL_AUTH replaces backend.registry.auth of a --config file; a bad value fails backend creation', async () => {
  const seen: (string | undefined)[] = [];
  const s = await serve((req, res) => {
    seen.push(req.headers.authorization);
    if (req.headers.authorization !== `Basic ${AUTH}`) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' });
      res.end();
      return;
    }
    sendRange(req, res);
  });
  const file = (auth?: string) => parseNydusdConfig(JSON.stringify({
    version: 2,
    backend: { type: 'registry', registry: { scheme: 'http', host: `127.0.0.1:${s.port}`, repo: REPO, ...(auth ? { auth } : {}) } },
    cache: { type: '' },
  }));
  const be = createBackend(applyImagePullAuth(file(Buffer.from('old:creds').toString('base64')), AUTH));
  try {
    assert.ok((await be.read(BLOB_ID, 0, 8)).equals(BLOB.subarray(0, 8)));
    assert.equal(seen, [undefined, `Basic ${AUTH}`], 'anonymous first, then the IMAGE_PULL_AUTH credentials');
    assert.throws(() => createBackend(applyImagePullAuth(file(), 'not base64!')), /base64/);
    assert.throws(() => createBackend(applyImagePullAuth(file(), Buffer.from('nocolon').toString('base64'))), /user:password/);
    const localfs = parseNydusdConfig(JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: '/nonexistent' } }, cache: { type: '' } }));
    assert.is(applyImagePullAuth(localfs, AUTH).backend.registry, undefined, 'no registry section: nothing to override');
  } finally {
    await be.close();
    await s.close();
  }
});

test('anonymous range read; blob URL and Range header as upstream', async () => {
  const seen: http.IncomingHttpHeaders[] = [];
  const urls: string[] = [];
  const s = await serve((req, res) => { seen.push(req.headers); urls.push(req.url!); sendRange(req, res); });
  const be = new RegistryBackend(cfg(s), fast);
  try {
    const got = await be.read(BLOB_ID, 1000, 5000);
    assert.ok(got.equals(BLOB.subarray(1000, 6000)));
    assert.equal(urls, [BLOB_PATH]);
    assert.is(seen[0].range, 'bytes=1000-5999');
    assert.is(seen[0]['user-agent'], 'nydusd/1.0.0');
    assert.is(seen[0].authorization, undefined);
    // concurrent reads reuse the keep-alive pool
    const parts = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map((i) => be.read(BLOB_ID, i * 4096, 4096)));
    assert.ok(Buffer.concat(parts).equals(BLOB.subarray(0, 8 * 4096)));
    assert.is((await be.read(BLOB_ID, 0, 0)).length, 0);
  } finally {
    await be.close();
    await s.close();
  }
});

test('Basic challenge: auth sent after the 401, then cached', async () => {
  let unauth = 0;
  const s = await serve((req, res) => {
    if (req.headers.authorization !== `Basic ${AUTH}`) {
      unauth++;
      res.writeHead(401, { 'www-authenticate': 'Basic realm="Registry Realm"' });
      res.end('unauthorized');
      return;
    }
    sendRange(req, res);
  });
  const be = new RegistryBackend(cfg(s, { auth: AUTH }), fast);
  const anon = new RegistryBackend(cfg(s), fast);
  try {
    assert.ok((await be.read(BLOB_ID, 0, 100)).equals(BLOB.subarray(0, 100)));
    assert.ok((await be.read(BLOB_ID, 100, 100)).equals(BLOB.subarray(100, 200)));
    assert.is(unauth, 1, 'one anonymous request, then the cached header');
    await rejectsEio(anon.read(BLOB_ID, 0, 100), /status 401.*sha256|blob [0-9a-f]{64} range bytes=0-99.*401/);
  } finally {
    await be.close();
    await anon.close();
    await s.close();
  }
});

test('updateAuth (PUT /api/v1/config registry_auth): new credentials take effect at once, bad ones are refused', async () => {
  let valid = AUTH;
  const s = await serve((req, res) => {
    if (req.headers.authorization !== `Basic ${valid}`) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="Registry Realm"' });
      res.end('unauthorized');
      return;
    }
    sendRange(req, res);
  });
  const be = new RegistryBackend(cfg(s, { auth: AUTH }), fast);
  try {
    assert.ok((await be.read(BLOB_ID, 0, 100)).equals(BLOB.subarray(0, 100)));
    // the registry rotates the password: the cached header fails until the new one is given
    const next = Buffer.from('user:rotated').toString('base64');
    valid = next;
    await rejectsEio(be.read(BLOB_ID, 0, 100));
    be.updateAuth(next);
    assert.ok((await be.read(BLOB_ID, 100, 100)).equals(BLOB.subarray(100, 200)));
    assert.throws(() => be.updateAuth('not base64!'), /base64/);
    assert.ok((await be.read(BLOB_ID, 0, 10)).equals(BLOB.subarray(0, 10)), 'a refused update leaves the working credentials');
  } finally {
    await be.close();
    await s.close();
  }
});

test('Bearer: POST then GET token, cached, refetched after a 401', async () => {
  let valid = 'tok-1';
  const calls = { post: 0, get: 0, registry401: 0 };
  const tokenAuth: (string | undefined)[] = [];
  let q: URLSearchParams | undefined;
  const auth = await serve((req, res) => {
    tokenAuth.push(req.headers.authorization);
    if (req.method === 'POST') { calls.post++; res.writeHead(405); res.end('use GET'); return; }
    calls.get++;
    q = new URL(req.url!, 'http://x').searchParams;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token: valid, expires_in: 300 }));
  });
  const s = await serve((req, res) => {
    if (req.headers.authorization !== `Bearer ${valid}`) {
      calls.registry401++;
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${auth.origin}/token",service="test-registry",scope="repository:${REPO}:pull"` });
      res.end();
      return;
    }
    sendRange(req, res);
  });
  const be = new RegistryBackend(cfg(s, { auth: AUTH }), fast);
  try {
    for (let i = 0; i < 5; i++) assert.ok((await be.read(BLOB_ID, i * 10, 10)).equals(BLOB.subarray(i * 10, i * 10 + 10)));
    assert.equal(calls, { post: 1, get: 1, registry401: 1 });
    assert.is(q?.get('service'), 'test-registry');
    assert.is(q?.get('scope'), `repository:${REPO}:pull`);
    assert.is(q?.get('client_id'), 'nydus-registry-client');
    assert.ok(tokenAuth.every((a) => a === `Basic ${AUTH}`), 'token requests carry Basic auth');
    // the registry rotates its tokens: the old one gets a 401, a new one is fetched (GET remembered)
    valid = 'tok-2';
    assert.ok((await be.read(BLOB_ID, 500, 10)).equals(BLOB.subarray(500, 510)));
    assert.is(calls.get, 2);
    assert.is(calls.post, 1, 'GET is remembered for the realm host');
  } finally {
    await be.close();
    await s.close();
    await auth.close();
  }
});

test('first-request gate: concurrent first reads make one anonymous request and fetch one token', async () => {
  let tokens = 0;
  let anonymous = 0;
  const auth = await serve((_req, res) => {
    tokens++;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token: 'tok', expires_in: 300 }));
  });
  const s = await serve((req, res) => {
    if (req.headers.authorization !== 'Bearer tok') {
      anonymous++;
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${auth.origin}/token",service="svc"` });
      res.end();
      return;
    }
    sendRange(req, res);
  });
  const be = new RegistryBackend(cfg(s, { auth: AUTH }), fast);
  try {
    const parts = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map((i) => be.read(BLOB_ID, i * 100, 100)));
    assert.ok(Buffer.concat(parts).equals(BLOB.subarray(0, 800)));
    assert.is(anonymous, 1);
    assert.is(tokens, 1);
  } finally {
    await be.close();
    await s.close();
    await auth.close();
  }
});

test('first-request gate: when the first request gets no reply at all, the gate opens (no queueing behind a frozen registry)', async () => {
  let live = new Set<http.IncomingMessage>();
  let most = 0;
  const s = await serve((req) => {
    const set = live;
    set.add(req);
    most = Math.max(most, set.size);
    req.socket.on('close', () => set.delete(req));
    // never answers (a frozen registry)
  });
  const be = new RegistryBackend(cfg(s, { timeout: 1 }), { ...fast, attempts: 1 });
  try {
    const reads = [0, 1, 2, 3].map((i) => rejectsEio(be.read(BLOB_ID, i * 10, 10), /timed out/));
    await Promise.all(reads);
    assert.ok(most >= 3, `the waiting reads were queued one by one (at most ${most} at once)`);
    live = new Set();
    most = 0;
    await Promise.all([0, 1, 2].map((i) => rejectsEio(be.read(BLOB_ID, i * 10, 10), /timed out/)));
    assert.is(most, 3, 'later reads are not gated either');
  } finally {
    await be.close();
    await s.close();
  }
});

test('concurrent 401s with the same Bearer challenge share one token fetch', async () => {
  let tokens = 0;
  let valid = 'tok-1';
  let hold: Promise<void> | undefined;
  let release: () => void = () => undefined;
  const auth = await serve(async (_req, res) => {
    tokens++;
    await hold;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token: valid, expires_in: 300 }));
  });
  let unauthorized = 0;
  const s = await serve((req, res) => {
    if (req.headers.authorization !== `Bearer ${valid}`) {
      unauthorized++;
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${auth.origin}/token",service="svc"` });
      res.end();
      if (unauthorized === 8) release();
      return;
    }
    sendRange(req, res);
  });
  const be = new RegistryBackend(cfg(s, { auth: AUTH }), { ...fast, attempts: 1 });
  try {
    assert.ok((await be.read(BLOB_ID, 0, 10)).equals(BLOB.subarray(0, 10)));
    assert.is(tokens, 1);
    // the registry rotates its tokens: four reads at once each get a 401 with the old token and one
    // anonymously (8 in all); the token endpoint answers only after all of them asked
    valid = 'tok-2';
    unauthorized = 0;
    hold = new Promise<void>((r) => { release = r; });
    const parts = await Promise.all([1, 2, 3, 4].map((i) => be.read(BLOB_ID, i * 10, 10)));
    assert.ok(Buffer.concat(parts).equals(BLOB.subarray(10, 50)));
    assert.is(unauthorized, 8);
    assert.is(tokens, 2, 'one token fetch for the four reads');
  } finally {
    release();
    await be.close();
    await s.close();
    await auth.close();
  }
});

test('registry_token is sent as Bearer from the first request', async () => {
  const seen: (string | undefined)[] = [];
  const s = await serve((req, res) => { seen.push(req.headers.authorization); sendRange(req, res); });
  const be = new RegistryBackend(cfg(s, { registry_token: 'abc' }), fast);
  try {
    await be.read(BLOB_ID, 0, 10);
    assert.equal(seen, ['Bearer abc']);
  } finally {
    await be.close();
    await s.close();
  }
});

test('redirect to another host: Authorization dropped, final URL cached, evicted on failure', async () => {
  const storeSeen: { url: string; auth?: string }[] = [];
  let storeFails = false;
  const store = await serve((req, res) => {
    storeSeen.push({ url: req.url!, auth: req.headers.authorization });
    if (storeFails) { res.writeHead(403); res.end('expired'); return; }
    sendRange(req, res);
  }, '127.0.0.2');
  let registryHits = 0;
  const s = await serve((req, res) => {
    registryHits++;
    if (req.headers.authorization !== `Basic ${AUTH}`) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' });
      res.end();
      return;
    }
    res.writeHead(307, { location: `${store.origin}/data/${BLOB_ID}?sig=1` });
    res.end();
  });
  const be = new RegistryBackend(cfg(s, { auth: AUTH }), fast);
  try {
    assert.ok((await be.read(BLOB_ID, 10, 20)).equals(BLOB.subarray(10, 30)));
    assert.is(registryHits, 2, '401 then 307');
    assert.ok((await be.read(BLOB_ID, 40, 20)).equals(BLOB.subarray(40, 60)));
    assert.is(registryHits, 2, 'second read goes straight to the cached URL');
    assert.is(storeSeen.length, 2);
    assert.ok(storeSeen.every((x) => x.auth === undefined && x.url === `/data/${BLOB_ID}?sig=1`));
    // an expired cached URL is dropped and the read starts again at the registry
    storeFails = true;
    await rejectsEio(be.read(BLOB_ID, 0, 10), /403/);
    storeFails = false;
    const before = registryHits;
    assert.ok((await be.read(BLOB_ID, 0, 10)).equals(BLOB.subarray(0, 10)));
    assert.is(registryHits, before + 1);
  } finally {
    await be.close();
    await s.close();
    await store.close();
  }
});

test('blob_redirected_host rewrites the Location host; redirect loops are bounded', async () => {
  const store = await serve((req, res) => sendRange(req, res), '127.0.0.2');
  const s = await serve((req, res) => {
    if (req.url === BLOB_PATH) res.writeHead(302, { location: `http://blobs.invalid:${store.port}/b` });
    else res.writeHead(302, { location: req.url! });
    res.end();
  });
  const be = new RegistryBackend(cfg(s, { blob_redirected_host: '127.0.0.2' }), fast);
  let loops = 0;
  const loop = await serve((req, res) => { loops++; res.writeHead(302, { location: '/again' }); res.end(); });
  const be2 = new RegistryBackend(cfg(loop), { ...fast, attempts: 1 });
  try {
    assert.ok((await be.read(BLOB_ID, 7, 9)).equals(BLOB.subarray(7, 16)));
    await rejectsEio(be2.read(BLOB_ID, 0, 10), /redirects/);
    assert.ok(loops <= 7, `loop followed ${loops} times`);
  } finally {
    await be.close();
    await be2.close();
    await s.close();
    await store.close();
    await loop.close();
  }
});

test('500 then success: retried', async () => {
  let n = 0;
  const s = await serve((req, res) => {
    if (n++ === 0) { res.writeHead(500); res.end('boom'); return; }
    sendRange(req, res);
  });
  const be = new RegistryBackend(cfg(s), fast);
  try {
    assert.ok((await be.read(BLOB_ID, 0, 64)).equals(BLOB.subarray(0, 64)));
    assert.is(n, 2);
  } finally {
    await be.close();
    await s.close();
  }
});

test('backend metrics count every attempt (failed ones too) as upstream; prefetch reads get 2 attempts; the final failure is an event', async () => {
  let n = 0;
  const s = await serve((req, res) => {
    if (n++ === 0) { res.writeHead(500); res.end('boom'); return; }
    if (req.headers.range === 'bytes=0-9') { res.writeHead(503); res.end('down'); return; }
    sendRange(req, res);
  });
  const m = new BackendMetrics('registry', '/m');
  const be = new RegistryBackend(cfg(s), { ...fast, metrics: m });
  try {
    await be.read(BLOB_ID, 0, 2048);
    assert.is(m.read_count, 2);
    assert.is(m.read_errors, 1);
    assert.is(m.read_amount_total, 4096, 'requested lengths of both attempts');
    assert.is(m.read_count_block_size_dist[1], 2, '2 KiB is in the <4 KiB bucket');
    assert.is(m.read_latency_sizes_dist[1].reduce((a, b) => a + b, 0), 2);
    const before = (exportEvents() as { total_errors: number }).total_errors;
    await rejectsEio(be.read(BLOB_ID, 0, 10, { prefetch: true }), /2 attempts/);
    assert.is(m.read_count, 4);
    assert.is(m.read_errors, 3);
    const ev = exportEvents() as { total_errors: number; errors: string[] };
    assert.is(ev.total_errors, before + 1, 'one event per failed read, not per attempt');
    assert.match(ev.errors[ev.errors.length - 1], /range bytes=0-9: status 503/);
    assert.not.ok('id' in m.toJSON(), 'id is not serialised');
  } finally {
    await be.close();
    await s.close();
  }
});

test('ReadOptions.attempts caps the budget (a chunk that failed a moment ago is tried once)', async () => {
  let n = 0;
  const s = await serve((_req, res) => { n++; res.writeHead(503); res.end('down'); });
  const be = new RegistryBackend(cfg(s), fast);
  try {
    await rejectsEio(be.read(BLOB_ID, 0, 10, { attempts: 1 }), /1 attempt\)/);
    assert.is(n, 1);
  } finally {
    await be.close();
    await s.close();
  }
});

test('404 every time: EIO after 4 attempts, message names blob, range and status', async () => {
  let n = 0;
  const s = await serve((_req, res) => { n++; res.writeHead(404); res.end('{"errors":[{"code":"BLOB_UNKNOWN"}]}'); });
  const be = new RegistryBackend(cfg(s), fast);
  try {
    const e = await rejectsEio(be.read(BLOB_ID, 4096, 4096), /blob [0-9a-f]{64} range bytes=4096-8191: status 404.*BLOB_UNKNOWN/);
    assert.match(e.message, /4 attempts/);
    assert.is(n, 4);
  } finally {
    await be.close();
    await s.close();
  }
});

test('truncated body: retried, then EIO after the limit', async () => {
  let n = 0;
  const s = await serve((req, res) => {
    n++;
    res.writeHead(206, { 'content-length': 1000 });
    res.write(BLOB.subarray(0, 600));
    setTimeout(() => req.socket.destroy(), 10);
  });
  const be = new RegistryBackend(cfg(s), fast);
  try {
    await rejectsEio(be.read(BLOB_ID, 0, 1000), /range bytes=0-999/);
    assert.is(n, 4);
  } finally {
    await be.close();
    await s.close();
  }
});

test('more bytes than asked: EIO, never buffered past the request', async () => {
  let n = 0;
  const s = await serve((_req, res) => {
    n++;
    // chunked, no Content-Length: 64 MiB promised, far more than the 4 KiB asked
    res.writeHead(206);
    let sent = 0;
    const pump = () => {
      while (sent < 64 << 20) {
        sent += 1 << 20;
        if (!res.write(Buffer.alloc(1 << 20, 7))) { res.once('drain', pump); return; }
      }
      res.end();
    };
    pump();
  });
  const s2 = await serve((_req, res) => { res.writeHead(206, { 'content-length': 8192 }); res.end(Buffer.alloc(8192)); });
  const be = new RegistryBackend(cfg(s), fast);
  const be2 = new RegistryBackend(cfg(s2), fast);
  try {
    const rss = process.memoryUsage().rss;
    await rejectsEio(be.read(BLOB_ID, 0, 4096), /expected 4096 bytes, server sent more/);
    assert.ok(process.memoryUsage().rss - rss < 48 << 20, 'body not buffered');
    assert.is(n, 4);
    await rejectsEio(be2.read(BLOB_ID, 0, 4096), /Content-Length 8192/);
  } finally {
    await be.close();
    await be2.close();
    await s.close();
    await s2.close();
  }
});

test('200 with the whole blob (Range ignored): EIO at offset > 0, accepted only when it is exactly the range at 0', async () => {
  let n = 0;
  const small = BLOB.subarray(0, 1000);
  const s = await serve((_req, res) => { n++; res.writeHead(200, { 'content-length': small.length }); res.end(small); });
  const be = new RegistryBackend(cfg(s), fast);
  try {
    await rejectsEio(be.read(BLOB_ID, 100, 100), /Range ignored/);
    assert.is(n, 4, 'retried like a length failure, never served');
    await rejectsEio(be.read(BLOB_ID, 0, 100), /expected 100 bytes/);
    assert.ok((await be.read(BLOB_ID, 0, 1000)).equals(small));
  } finally {
    await be.close();
    await s.close();
  }
});

test('206 with a Content-Range for another range: EIO', async () => {
  const s = await serve((_req, res) => {
    res.writeHead(206, { 'content-length': 10, 'content-range': `bytes 0-9/${BLOB.length}` });
    res.end(BLOB.subarray(0, 10));
  });
  const be = new RegistryBackend(cfg(s), fast);
  try {
    await rejectsEio(be.read(BLOB_ID, 50, 10), /Content-Range/);
  } finally {
    await be.close();
    await s.close();
  }
});

test('stalled server: EIO within the configured timeout, no hang', async () => {
  let n = 0;
  const s = await serve(() => { n++; /* never answer */ });
  const stallBody = await serve((_req, res) => { res.writeHead(206, { 'content-length': 100 }); res.write(Buffer.alloc(10)); });
  const be = new RegistryBackend(cfg(s, { timeout: 1 }), { ...fast, attempts: 2 });
  const be2 = new RegistryBackend(cfg(stallBody, { timeout: 1 }), { ...fast, attempts: 1 });
  try {
    const t0 = Date.now();
    await rejectsEio(be.read(BLOB_ID, 0, 10), /timed out|timeout/i);
    const dt = Date.now() - t0;
    assert.ok(dt >= 1500 && dt < 4000, `took ${dt} ms`);
    assert.is(n, 2);
    const t1 = Date.now();
    await rejectsEio(be2.read(BLOB_ID, 0, 100));
    assert.ok(Date.now() - t1 < 3000);
  } finally {
    await be.close();
    await be2.close();
    await s.close();
    await stallBody.close();
  }
});

test('hostile token endpoint and headers are bounded', async () => {
  const auth = await serve((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token: 'x'.repeat(200 * 1024) }));
  });
  const s = await serve((req, res) => {
    res.writeHead(401, { 'www-authenticate': `Bearer realm="${auth.origin}/token",service="svc"` });
    res.end();
  });
  const bigHeaders = await serve((_req, res) => {
    res.writeHead(206, { 'x-junk': 'a'.repeat(64 * 1024), 'content-length': 10 });
    res.end(Buffer.alloc(10));
  });
  const be = new RegistryBackend(cfg(s), { ...fast, attempts: 1 });
  const be2 = new RegistryBackend(cfg(bigHeaders), { ...fast, attempts: 1 });
  try {
    await rejectsEio(be.read(BLOB_ID, 0, 10), /larger than/);
    await rejectsEio(be2.read(BLOB_ID, 0, 10));
  } finally {
    await be.close();
    await be2.close();
    await s.close();
    await auth.close();
    await bigHeaders.close();
  }
});

test('closed backend: reads fail with EIO; in-flight reads are aborted', async () => {
  const s = await serve(() => { /* stall */ });
  const be = new RegistryBackend(cfg(s), fast);
  const p = rejectsEio(be.read(BLOB_ID, 0, 10), /closed/);
  await new Promise((r) => setTimeout(r, 100));
  await be.close();
  await p;
  await rejectsEio(be.read(BLOB_ID, 0, 10), /closed/);
  await s.close();
});

test('createBackend builds the registry backend from a v2 config', async () => {
  const s = await serve((req, res) => sendRange(req, res));
  const c = parseNydusdConfig(JSON.stringify({
    version: 2,
    backend: { type: 'registry', registry: { scheme: 'http', host: `127.0.0.1:${s.port}`, repo: REPO } },
    cache: { type: '' },
  }));
  const be = createBackend(c);
  try {
    assert.is(be.type, 'registry');
    assert.ok((await be.read(BLOB_ID, 3, 3)).equals(BLOB.subarray(3, 6)));
  } finally {
    await be.close();
    await s.close();
  }
});

/**
 * A registry whose first GET answers 206 for 4000 bytes, sends `first` and
 * drops the connection; every later GET is served whole. `gets()` counts them.
 */
async function cutFirstAttempt(first: Buffer): Promise<{ s: Awaited<ReturnType<typeof serve>>; gets: () => number }> {
  let n = 0;
  const s = await serve((req, res) => {
    if (n++ === 0) {
      res.writeHead(206, { 'content-length': 4000 });
      res.write(first);
      setTimeout(() => req.socket.destroy(), 10);
      return;
    }
    sendRange(req, res);
  });
  return { s, gets: () => n };
}

test('read into a given buffer: a truncated attempt then a full one leave exactly the blob bytes in it', async () => {
  // first attempt: garbage, cut short
  const { s, gets } = await cutFirstAttempt(Buffer.alloc(1500, 0xaa));
  const be = new RegistryBackend(cfg(s, { retry_limit: 2 }), fast);
  try {
    assert.ok(be.readsInto);
    const into = Buffer.alloc(4000, 0x55);
    const got = await be.read(BLOB_ID, 2000, 4000, { into });
    assert.is(got, into, 'the given buffer is the result');
    assert.ok(into.equals(BLOB.subarray(2000, 6000)));
    assert.is(gets(), 2);
    // a buffer of the wrong size is not used
    const other = Buffer.alloc(10);
    const got2 = await be.read(BLOB_ID, 0, 100, { into: other });
    assert.is.not(got2, other);
    assert.ok(got2.equals(BLOB.subarray(0, 100)));
  } finally {
    await be.close();
    await s.close();
  }
});

test('read with progress: bytes reported as they arrive; after a failed attempt that reported some, the retry never rewrites the given buffer', async () => {
  // first attempt: the right bytes, cut short
  const { s, gets } = await cutFirstAttempt(BLOB.subarray(2000, 3500));
  const be = new RegistryBackend(cfg(s, { retry_limit: 2 }), fast);
  try {
    const into = Buffer.alloc(4000, 0x55);
    const reports: number[] = [];
    // a consumer of what was reported (a decoder, a reply): marks it, as if it were in use
    const got = await be.read(BLOB_ID, 2000, 4000, { into, onProgress: (f) => { reports.push(f); into.fill(0xee, 0, f); } });
    assert.ok(reports.length > 0 && reports.every((f, i) => f > 0 && f <= 1500 && (i === 0 || f > reports[i - 1])), `first attempt's progress only: ${reports}`);
    assert.is.not(got, into, 'the retry read into a buffer of its own');
    assert.ok(got.equals(BLOB.subarray(2000, 6000)));
    assert.ok(into.subarray(0, reports[reports.length - 1]).every((b) => b === 0xee), 'reported bytes never rewritten');
    assert.is(gets(), 2);
    // a read that works at once reports up to the whole length, into the given buffer
    const into2 = Buffer.alloc(4000);
    let last = 0;
    const got2 = await be.read(BLOB_ID, 2000, 4000, { into: into2, onProgress: (f) => { last = f; } });
    assert.is(got2, into2);
    assert.is(last, 4000);
    assert.ok(into2.equals(BLOB.subarray(2000, 6000)));
  } finally {
    await be.close();
    await s.close();
  }
});

test.run();
