/**
 * s3, oss and http-proxy backends (storage-backends §3) and the test S3
 * endpoint's SigV4 verifier:
 *  - the SigV4 signer (AWS SDK v3's, configured as s3.ts does) reproduces
 *    AWS's published signatures: the S3 API reference examples and vectors of
 *    the aws-sig-v4-test-suite (expected values copied from that material);
 *  - the test endpoint's verifier (aws4) accepts the S3 documentation's signed
 *    request and requests signed by the SDK signer, and refuses wrong ones;
 *  - the S3 backend against that endpoint: URLs, Host without port, signed
 *    header set, NYDUS_HEADER_* unsigned, a fresh signature per attempt, EIO
 *    on refusals and hostile replies, closing aborts in-flight reads, reads
 *    through a forward proxy (`proxy.url`);
 *  - OSS V1 signing checked by a fake with its own computation, reached via
 *    `connectTo` (its virtual host `bucket.endpoint` has no DNS entry);
 *  - http-proxy remote URLs (no slash with an empty path) and local unix
 *    socket mode (`GET /`, only Range, status unchecked, bounded bodies).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { type HttpProxyConfig, type OssConfig, type S3Config, defaultProxyConfig, parseNydusdConfig } from '../../src/common/config';
import { ErrnoError } from '../../src/common/errno';
import { HttpProxyBackend, httpProxyUrl } from '../../src/storage/backend/http-proxy';
import { BackendMetrics, metricsBackendType } from '../../src/storage/backend/metrics';
import { OssBackend } from '../../src/storage/backend/oss';
import { S3Backend, createSigV4Signer, signS3Request, signV4 } from '../../src/storage/backend/s3';
import { createBackend } from '../../src/storage/factory';
import { EMPTY_SHA256, type S3Fault, type S3LogEntry, type S3Server, startS3Server, verifySigV4 } from '../support/s3-server';
import { type FakeServer, rangeReply, serveHttp } from '../support/http-fakes';

// ------------------------------------------------------------------ helpers

const BLOB = crypto.randomBytes(200 * 1024);
const BLOB_ID = crypto.createHash('sha256').update(BLOB).digest('hex');
const CREDS = { accessKeyId: 'AKIDNYDUSTEST', secretAccessKey: 'nydus-test-secret/with+chars' };
const REGION = 'eu-test-1';
const BUCKET = 'nydus-bucket';
const PREFIX = 'blobs/';
const fast = { retryDelayMs: () => 0 };
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-objstore-'));

async function rejectsEio(p: Promise<unknown>, re?: RegExp): Promise<ErrnoError> {
  try {
    await p;
  } catch (err) {
    assert.instance(err, ErrnoError);
    assert.is((err as ErrnoError).code, 'EIO', (err as Error).message);
    if (re) assert.match((err as Error).message, re);
    return err as ErrnoError;
  }
  throw new Error('expected EIO');
}

function s3Config(s: { endpoint: string }, extra: Partial<S3Config> = {}): S3Config {
  return {
    scheme: 'http', endpoint: s.endpoint, bucket_name: BUCKET, object_prefix: PREFIX, region: REGION,
    access_key_id: CREDS.accessKeyId, access_key_secret: CREDS.secretAccessKey,
    skip_verify: false, ca_cert_files: [], timeout: 5, connect_timeout: 5, retry_limit: 0, proxy: defaultProxyConfig(),
    ...extra,
  };
}

interface S3Fixture { server: S3Server; fault: { f?: (e: S3LogEntry) => S3Fault | undefined }; seen: http.IncomingHttpHeaders[]; root: string }

async function s3Fixture(): Promise<S3Fixture> {
  const root = fs.mkdtempSync(path.join(work, 's3-'));
  const fault: S3Fixture['fault'] = {};
  const seen: http.IncomingHttpHeaders[] = [];
  const server = await startS3Server({ root, credentials: CREDS, region: REGION, fault: (e) => fault.f?.(e), onRequest: (r) => seen.push(r.headers) });
  server.put(BUCKET, PREFIX + BLOB_ID, BLOB);
  return { server, fault, seen, root };
}

const gets = (log: S3LogEntry[]) => log.filter((e) => e.method === 'GET');

const one = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setImmediate(r));
}

// ------------------------------------------------------- SigV4 signer vectors

// Amazon S3 API Reference, "Signature Calculations for the Authorization Header:
// Transferring Payload in a Single Chunk", examples (their credentials and date).
const S3_DOC = {
  creds: { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' },
  date: new Date('2013-05-24T00:00:00Z'),
  host: 'examplebucket.s3.amazonaws.com',
};

test('SigV4: the S3 API reference "GET Object" example, signed by the code path the S3 backend uses', async () => {
  const signer = createSigV4Signer(S3_DOC.creds, 'us-east-1');
  const h = await signS3Request(signer, 'GET', new URL(`https://${S3_DOC.host}/test.txt`), { range: 'bytes=0-9' }, S3_DOC.date);
  assert.is(h.host, S3_DOC.host);
  assert.is(h.range, 'bytes=0-9');
  assert.is(h['x-amz-date'], '20130524T000000Z');
  assert.is(h['x-amz-content-sha256'], 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.is(
    h.authorization,
    'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, ' +
      'SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, ' +
      'Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41',
  );
});

test('SigV4: the S3 API reference "GET Bucket Lifecycle" and "Get Bucket (List Objects)" examples', async () => {
  const signer = createSigV4Signer(S3_DOC.creds, 'us-east-1');
  const sig = async (query: Record<string, string>) => {
    const h = await signV4(signer, { method: 'GET', host: S3_DOC.host, path: '/', query, headers: { 'x-amz-content-sha256': EMPTY_SHA256 } }, S3_DOC.date);
    return /Signature=([0-9a-f]{64})$/.exec(h.authorization)![1];
  };
  assert.is(await sig({ lifecycle: '' }), 'fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543');
  assert.is(await sig({ prefix: 'J', 'max-keys': '2' }), '34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7');
});

test('SigV4: aws-sig-v4-test-suite vectors (get-vanilla, query order, unreserved path, header trim, post-vanilla, form body)', async () => {
  const signer = createSigV4Signer({ accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY' }, 'us-east-1', 'service');
  const at = new Date('2015-08-30T12:36:00Z');
  const host = 'example.amazonaws.com';
  const vectors: [string, Parameters<typeof signV4>[1], string, string][] = [
    ['get-vanilla', { method: 'GET', host, path: '/', headers: {} }, 'host;x-amz-date', '5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31'],
    ['get-vanilla-query-order-key-case', { method: 'GET', host, path: '/', query: { Param2: 'value2', Param1: 'value1' }, headers: {} }, 'host;x-amz-date',
      'b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500'],
    ['get-unreserved', { method: 'GET', host, path: '/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz', headers: {} }, 'host;x-amz-date',
      '07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f'],
    ['get-header-value-trim', { method: 'GET', host, path: '/', headers: { 'my-header1': 'value1', 'my-header2': '"a   b   c"' } }, 'host;my-header1;my-header2;x-amz-date',
      'acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736'],
    ['post-vanilla', { method: 'POST', host, path: '/', headers: {} }, 'host;x-amz-date', '5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b'],
    ['post-x-www-form-urlencoded', { method: 'POST', host, path: '/', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'Param1=value1' },
      'content-type;host;x-amz-date', 'ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a'],
  ];
  for (const [name, req, signed, signature] of vectors) {
    const h = await signV4(signer, req, at);
    assert.is(h['x-amz-date'], '20150830T123600Z', name);
    assert.is(
      h.authorization,
      `AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=${signed}, Signature=${signature}`,
      name,
    );
  }
});

// ------------------------------------------------------ the test endpoint's verifier

test('S3 endpoint verifier: accepts the S3 documentation\'s signed GET Object, refuses it altered', () => {
  const headers = {
    host: S3_DOC.host,
    range: 'bytes=0-9',
    'x-amz-content-sha256': EMPTY_SHA256,
    'x-amz-date': '20130524T000000Z',
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,' +
      'SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41',
  };
  const when = S3_DOC.date.getTime();
  const ok = verifySigV4({ method: 'GET', url: '/test.txt', headers }, S3_DOC.creds, 'us-east-1', when);
  assert.ok(ok.ok, JSON.stringify(ok));
  const bad = (h: Record<string, string>, url = '/test.txt', nowMs = when) => verifySigV4({ method: 'GET', url, headers: h }, S3_DOC.creds, 'us-east-1', nowMs);
  assert.is(bad({ ...headers, range: 'bytes=0-10' }).code, 'SignatureDoesNotMatch', 'signed Range changed');
  assert.is(bad(headers, '/test2.txt').code, 'SignatureDoesNotMatch', 'path changed');
  assert.is(bad({ ...headers, host: 'other.s3.amazonaws.com' }).code, 'SignatureDoesNotMatch', 'host changed');
  assert.is(bad({ ...headers, authorization: headers.authorization.replace('f0e8', 'f0e9') }).code, 'SignatureDoesNotMatch');
  assert.is(verifySigV4({ method: 'GET', url: '/test.txt', headers }, { ...S3_DOC.creds, secretAccessKey: 'x' }, 'us-east-1', when).code, 'SignatureDoesNotMatch', 'other secret');
  assert.is(verifySigV4({ method: 'GET', url: '/test.txt', headers }, S3_DOC.creds, 'eu-west-1', when).code, 'SignatureDoesNotMatch', 'other region');
  assert.is(bad(headers, '/test.txt', when + 16 * 60_000).code, 'RequestTimeTooSkewed');
  const { authorization: _a, ...unsigned } = headers;
  assert.is(bad(unsigned).code, 'AccessDenied', 'no Authorization');
  assert.is(bad({ ...headers, authorization: 'AWS4-HMAC-SHA256 garbage' }).code, 'AccessDenied');
  assert.is(bad({ ...headers, authorization: headers.authorization.replace('AKIAIOSFODNN7EXAMPLE', 'AKIAOTHER') }).code, 'InvalidAccessKeyId');
  assert.is(bad({ ...headers, authorization: headers.authorization.replace('host;range;', 'range;') }).code, 'AccessDenied', 'host must be signed');
  // an unsigned extra header does not matter (S3 allows them)
  assert.ok(bad({ ...headers, 'user-agent': 'x' }).ok);
});

test('S3 endpoint: serves a request signed by the AWS SDK signer, answers 403 SignatureDoesNotMatch XML to a wrongly signed one', async () => {
  const fx = await s3Fixture();
  try {
    const send = async (secret: string): Promise<{ status: number; body: Buffer; headers: http.IncomingHttpHeaders }> => {
      const signer = createSigV4Signer({ accessKeyId: CREDS.accessKeyId, secretAccessKey: secret }, REGION);
      const url = new URL(`http://${fx.server.endpoint}/${BUCKET}/${PREFIX}${BLOB_ID}`);
      const headers = await signS3Request(signer, 'GET', url, { range: 'bytes=100-199' }, new Date());
      return new Promise((resolve, reject) => {
        http.get(url, { headers }, (res) => {
          const parts: Buffer[] = [];
          res.on('data', (d) => parts.push(d));
          res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(parts), headers: res.headers }));
        }).on('error', reject);
      });
    };
    const good = await send(CREDS.secretAccessKey);
    assert.is(good.status, 206);
    assert.is(good.headers['content-range'], `bytes 100-199/${BLOB.length}`);
    assert.ok(good.body.equals(BLOB.subarray(100, 200)));
    const badReply = await send('not-the-secret');
    assert.is(badReply.status, 403);
    assert.match(badReply.body.toString(), /<Code>SignatureDoesNotMatch<\/Code>/);
    assert.equal(fx.server.log.map((e) => [e.status, e.code]), [[206, undefined], [403, 'SignatureDoesNotMatch']]);
    assert.is(fx.server.log[0].signedHeaders, 'host;range;x-amz-content-sha256;x-amz-date');
  } finally {
    await fx.server.close();
  }
});

// ------------------------------------------------------------------ S3 backend

test('s3 backend: path-style URL, ranged reads and HEAD, Host without port, upstream\'s signed header set, NYDUS_HEADER_* unsigned', async () => {
  process.env.NYDUS_HEADER_X_Nydus_Test = 'yes';
  const fx = await s3Fixture();
  const be = new S3Backend(s3Config(fx.server), fast);
  delete process.env.NYDUS_HEADER_X_Nydus_Test;
  try {
    assert.is(be.blobUrl(BLOB_ID).href, `http://${fx.server.endpoint}/${BUCKET}/${PREFIX}${BLOB_ID}`);
    const ranges: [number, number][] = [[0, 1], [0, 4096], [12345, 70000], [BLOB.length - 100, 100]];
    const got = await Promise.all(ranges.map(([o, l]) => be.read(BLOB_ID, o, l)));
    ranges.forEach(([o, l], i) => assert.ok(got[i].equals(BLOB.subarray(o, o + l)), `range ${o}+${l}`));
    assert.is(await be.size(BLOB_ID), BLOB.length);
    assert.is((await be.read(BLOB_ID, 5, 0)).length, 0);
    // a read into a given buffer (the chunk arena's): that buffer, filled
    assert.ok(be.readsInto);
    const into = Buffer.alloc(4096, 0x55);
    assert.is(await be.read(BLOB_ID, 100, 4096, { into }), into);
    assert.ok(into.equals(BLOB.subarray(100, 4196)));
    const log = fx.server.log.filter((e) => e.range !== 'bytes=100-4195');
    assert.is(log.length, ranges.length + 1);
    for (const e of gets(log)) {
      assert.is(e.status, 206);
      assert.is(e.path, `/${BUCKET}/${PREFIX}${BLOB_ID}`);
      assert.is(e.host, '127.0.0.1', 'Host carries no port');
      assert.is(e.signedHeaders, 'host;range;x-amz-content-sha256;x-amz-date');
    }
    assert.equal(gets(log).map((e) => e.range).sort(), ranges.map(([o, l]) => `bytes=${o}-${o + l - 1}`).sort());
    const head = log.find((e) => e.method === 'HEAD')!;
    assert.is(head.status, 200);
    assert.is(head.signedHeaders, 'host;x-amz-content-sha256;x-amz-date');
    for (const h of fx.seen) {
      assert.is(h['user-agent'], 'nydusd/1.0.0');
      assert.is(h['x_nydus_test'], 'yes', 'NYDUS_HEADER_* sent');
      assert.not.match(String(h.authorization), /x_nydus_test|user-agent/);
      assert.is(h['x-amz-content-sha256'], EMPTY_SHA256);
    }
  } finally {
    await be.close();
    await fx.server.close();
  }
});

test('s3 backend: every attempt is signed anew (fresh x-amz-date after a 500)', async () => {
  const fx = await s3Fixture();
  let n = 0;
  fx.fault.f = () => (n++ === 0 ? 'error500' : undefined);
  let tick = 0;
  const base = Date.now();
  const be = new S3Backend(s3Config(fx.server), { ...fast, now: () => new Date(base + 1000 * tick++) });
  try {
    assert.ok((await be.read(BLOB_ID, 1000, 3000)).equals(BLOB.subarray(1000, 4000)));
    assert.equal(fx.server.log.map((e) => e.status), [500, 206]);
    const dates = fx.seen.map((h) => h['x-amz-date']);
    assert.is(new Set(dates).size, 2, `dates ${dates}`);
    assert.is(new Set(fx.seen.map((h) => h.authorization)).size, 2, 'two different signatures');
  } finally {
    await be.close();
    await fx.server.close();
  }
});

test('s3 backend: a wrong secret, an unknown key and a skewed clock give EIO naming backend, blob, range and the S3 error', async () => {
  const fx = await s3Fixture();
  const wrong = new S3Backend(s3Config(fx.server, { access_key_secret: 'wrong' }), fast);
  const unknown = new S3Backend(s3Config(fx.server, { access_key_id: 'AKIDUNKNOWN' }), fast);
  const skewed = new S3Backend(s3Config(fx.server), { ...fast, now: () => new Date(Date.now() - 3600_000) });
  const empty = new S3Backend(s3Config(fx.server, { access_key_id: '', access_key_secret: '' }), fast);
  try {
    const err = await rejectsEio(wrong.read(BLOB_ID, 10, 20), /SignatureDoesNotMatch/);
    assert.match(err.message, new RegExp(`s3 ${fx.server.endpoint.replace(/\./g, '\\.')}/${BUCKET}/${PREFIX}`));
    assert.match(err.message, new RegExp(`blob ${BLOB_ID} range bytes=10-29`));
    assert.match(err.message, /status 403/);
    assert.match(err.message, /\(4 attempts\)/);
    assert.equal(fx.server.log.map((e) => e.status), [403, 403, 403, 403]);
    await rejectsEio(unknown.read(BLOB_ID, 0, 10), /InvalidAccessKeyId/);
    await rejectsEio(skewed.read(BLOB_ID, 0, 10), /RequestTimeTooSkewed/);
    // upstream signs even with empty keys: the endpoint sees a malformed credential
    await rejectsEio(empty.read(BLOB_ID, 0, 10), /status 403/);
    assert.ok(fx.server.log.every((e) => e.status === 403));
    await rejectsEio(wrong.size(BLOB_ID), /HEAD status 403/);
  } finally {
    for (const b of [wrong, unknown, skewed, empty]) await b.close();
    await fx.server.close();
  }
});

test('s3 backend: hostile or failing replies never yield bytes of the wrong place', async () => {
  const fx = await s3Fixture();
  const metrics = new BackendMetrics(metricsBackendType('s3'), '/');
  const be = new S3Backend(s3Config(fx.server), { ...fast, metrics });
  try {
    const cases: [S3Fault | undefined, number, number, RegExp, number][] = [
      ['ignore-range', 4096, 100, /Range ignored/, 4], // a 200 at another offset: retried (a cache miss may answer whole), never served
      ['ignore-range', 0, 100, /Content-Length/, 4],
      ['shift-range', 4096, 100, /Content-Range/, 4],
      ['short', 4096, 100, /expected 100 bytes/, 4],
      ['long', 4096, 100, /sent more/, 4],
      ['redirect', 4096, 100, /unexpected status 307/, 4],
      [undefined, BLOB.length - 10, 20, /Content-Range|expected 20 bytes/, 4], // past the end
    ];
    for (const [fault, off, len, re, attempts] of cases) {
      fx.fault.f = () => fault;
      fx.server.log.length = 0;
      await rejectsEio(be.read(BLOB_ID, off, len), re);
      assert.is(gets(fx.server.log).length, attempts, `${fault}: attempts`);
    }
    fx.fault.f = undefined;
    await rejectsEio(be.read('ab'.repeat(32), 0, 10), /404.*NoSuchKey/);
    // prefetch reads get 2 attempts
    fx.fault.f = () => 'error500';
    fx.server.log.length = 0;
    await rejectsEio(be.read(BLOB_ID, 0, 10, { prefetch: true }), /status 500/);
    assert.is(gets(fx.server.log).length, 2);
    assert.is(metrics.backend_type, 'oss', 'S3 reports oss');
    assert.ok(metrics.read_errors > 0 && metrics.read_count === metrics.read_errors, JSON.stringify(metrics));
  } finally {
    await be.close();
    await fx.server.close();
  }
});

test('s3 backend: close() aborts a read stuck on a stalled reply, and later reads fail', async () => {
  const fx = await s3Fixture();
  fx.fault.f = () => 'stall';
  const be = new S3Backend(s3Config(fx.server, { timeout: 0 }), fast);
  try {
    const settled = rejectsEio(be.read(BLOB_ID, 0, 100), /closed|abort/i);
    await until(() => fx.server.log.length > 0);
    await be.close();
    await settled;
    assert.is(fx.server.log.length, 1, 'no retry after close');
    await rejectsEio(be.read(BLOB_ID, 0, 100), /closed/);
  } finally {
    await fx.server.close();
  }
});

test('s3 backend: with proxy.url, signed reads go through the forward proxy in absolute form and still verify', async () => {
  const fx = await s3Fixture();
  const proxied: { url: string; priority?: string; host?: string }[] = [];
  const proxy = await serve((req, res) => {
    proxied.push({ url: req.url!, priority: one(req.headers['x-dragonfly-priority']), host: req.headers.host });
    const up = http.request(req.url!, { method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode!, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  const cfg = s3Config(fx.server, { proxy: { ...defaultProxyConfig(), url: `http://127.0.0.1:${proxy.port}`, fallback: false } });
  const be = new S3Backend(cfg, fast);
  try {
    assert.ok((await be.read(BLOB_ID, 300, 700)).equals(BLOB.subarray(300, 1000)));
    assert.ok((await be.read(BLOB_ID, 0, 10, { prefetch: true })).equals(BLOB.subarray(0, 10)));
    const target = `http://${fx.server.endpoint}/${BUCKET}/${PREFIX}${BLOB_ID}`;
    assert.equal(proxied.map((p) => [p.url, p.priority, p.host]), [[target, '6', '127.0.0.1'], [target, '3', '127.0.0.1']]);
    assert.equal(fx.server.log.map((e) => [e.status, e.signedHeaders]), [
      [206, 'host;range;x-amz-content-sha256;x-amz-date'],
      [206, 'host;range;x-amz-content-sha256;x-amz-date'],
    ]);
  } finally {
    await be.close();
    await proxy.close();
    await fx.server.close();
  }
});

test('s3 backend: config checks, default endpoint, keys percent-encoded per segment; factory builds s3/oss/http-proxy', async () => {
  const base = s3Config({ endpoint: '' });
  const def = new S3Backend({ ...base, scheme: 'https' });
  assert.is(def.blobUrl('abc').href, `https://s3.amazonaws.com/${BUCKET}/${PREFIX}abc`);
  await def.close();
  const odd = new S3Backend({ ...base, object_prefix: 'a b/c+d/' });
  assert.is(odd.blobUrl('x?y').pathname, `/${BUCKET}/a%20b/c%2Bd/x%3Fy`);
  await odd.close();
  for (const bad of [{ endpoint: 'https://s3.example.com' }, { endpoint: 'host/path' }, { bucket_name: 'a/b' }, { bucket_name: '' }, { object_prefix: '../x/' }, { region: '' }, { scheme: 'ftp' }]) {
    assert.throws(() => new S3Backend({ ...base, ...bad }), (e: Error) => e instanceof ErrnoError && e.code === 'EINVAL', JSON.stringify(bad));
  }
  const sock = path.join(work, 'factory.sock');
  const srv = http.createServer();
  await new Promise<void>((r) => srv.listen(sock, r));
  try {
    const built = [
      { type: 's3', s3: { endpoint: '127.0.0.1:9', bucket_name: 'b', region: 'r' } },
      { type: 'oss', oss: { endpoint: 'oss.example.com', bucket_name: 'b' } },
      { type: 'http-proxy', 'http-proxy': { addr: 'http://127.0.0.1:9/', path: '' } },
      { type: 'http-proxy', 'http-proxy': { addr: sock } },
    ].map((backend) => createBackend(parseNydusdConfig(JSON.stringify({ version: 2, backend, cache: { type: '' } }))));
    assert.equal(built.map((b) => b.type), ['s3', 'oss', 'http-proxy', 'http-proxy']);
    assert.instance(built[0], S3Backend);
    assert.instance(built[1], OssBackend);
    assert.equal(built.slice(2).map((b) => (b as HttpProxyBackend).mode), ['remote', 'local']);
    for (const b of built) await b.close();
  } finally {
    await new Promise<void>((r) => srv.close(() => r()));
  }
});

// ------------------------------------------------------------------ OSS backend

type Fake = FakeServer;

const serve = (handler: http.RequestListener, listen: number | string = 0): Promise<Fake> => serveHttp(handler, { listen });

const sendRange = (req: http.IncomingMessage, res: http.ServerResponse, status?: number): void => rangeReply(req, res, BLOB, status);

function ossConfig(extra: Partial<OssConfig> = {}): OssConfig {
  return {
    scheme: 'http', endpoint: 'oss-test.example', bucket_name: 'imgs', object_prefix: 'nydus/',
    access_key_id: 'LTAIOSSTEST', access_key_secret: 'oss-secret',
    skip_verify: false, ca_cert_files: [], timeout: 5, connect_timeout: 5, retry_limit: 0, proxy: defaultProxyConfig(),
    ...extra,
  };
}

test('oss backend: virtual-host URL and V1 signature (checked by the fake\'s own HMAC-SHA1), Range unsigned, EIO on 403', async () => {
  const seen: { host?: string; path: string; range?: string; status: number }[] = [];
  const fake = await serve((req, res) => {
    const date = req.headers.date ?? '';
    const m = /^OSS ([^:]+):(.+)$/.exec(req.headers.authorization ?? '');
    // independent check: the fake builds the string to sign itself
    const resource = `/imgs${decodeURIComponent(req.url!)}`;
    const expect = crypto.createHmac('sha1', 'oss-secret').update([req.method, '', '', date, resource].join('\n')).digest('base64');
    const fresh = Math.abs(Date.parse(date) - Date.now()) < 15 * 60_000;
    const ok = m && m[1] === 'LTAIOSSTEST' && m[2] === expect && fresh && req.url === `/nydus/${BLOB_ID}`;
    const status = ok ? (req.headers.range ? 206 : 200) : 403;
    seen.push({ host: req.headers.host, path: req.url!, range: req.headers.range, status });
    if (!ok) { res.writeHead(403, { 'content-type': 'application/xml' }); res.end('<Error><Code>SignatureDoesNotMatch</Code></Error>'); return; }
    sendRange(req, res);
  });
  const connectTo = `127.0.0.1:${fake.port}`;
  const be = new OssBackend(ossConfig(), { ...fast, connectTo });
  const bad = new OssBackend(ossConfig({ access_key_secret: 'wrong' }), { ...fast, connectTo });
  try {
    assert.is(be.blobUrl(BLOB_ID).href, `http://imgs.oss-test.example/nydus/${BLOB_ID}`);
    assert.ok((await be.read(BLOB_ID, 777, 5000)).equals(BLOB.subarray(777, 5777)));
    assert.is(await be.size(BLOB_ID), BLOB.length);
    assert.equal(seen.map((s) => [s.host, s.path, s.range, s.status]), [
      ['imgs.oss-test.example', `/nydus/${BLOB_ID}`, 'bytes=777-5776', 206],
      ['imgs.oss-test.example', `/nydus/${BLOB_ID}`, undefined, 200],
    ]);
    await rejectsEio(bad.read(BLOB_ID, 0, 10), /oss imgs\.oss-test\.example\/nydus\/ blob [0-9a-f]+ range bytes=0-9: status 403.*SignatureDoesNotMatch/);
    assert.is(seen.filter((s) => s.status === 403).length, 4);
  } finally {
    await be.close();
    await bad.close();
    await fake.close();
  }
});

// ------------------------------------------------------------- http-proxy backend

function proxyConfig(addr: string, p = '', extra: Partial<HttpProxyConfig> = {}): HttpProxyConfig {
  return { addr, path: p, skip_verify: false, ca_cert_files: [], timeout: 5, connect_timeout: 5, retry_limit: 0, proxy: defaultProxyConfig(), ...extra };
}

test('http-proxy remote: URL is addr + path joined with the id (no slash when path is empty), reads checked, HEAD size', async () => {
  assert.is(httpProxyUrl('http://h:1', '/ns/repo/blobs', 'abc').href, 'http://h:1/ns/repo/blobs/abc');
  assert.is(httpProxyUrl('http://h:1', '/ns/blobs/', 'abc').href, 'http://h:1/ns/blobs/abc');
  assert.is(httpProxyUrl('http://h:1/x', '', 'abc').href, 'http://h:1/xabc', 'no slash added');
  assert.throws(() => new HttpProxyBackend(proxyConfig('http://127.0.0.1:8080')), /end addr with \//);
  assert.throws(() => new HttpProxyBackend(proxyConfig('relative/sock')), /neither/);
  assert.throws(() => new HttpProxyBackend(proxyConfig(path.join(work, 'no-such.sock'))), /not an existing unix socket/);
  const urls: string[] = [];
  let mode: 'ok' | 'ignore' = 'ok';
  const fake = await serve((req, res) => {
    urls.push(`${req.method} ${req.url} ${req.headers.range ?? ''}`);
    if (!req.url!.endsWith(BLOB_ID)) { res.writeHead(404); res.end('not found'); return; }
    if (mode === 'ignore') { res.writeHead(200, { 'content-length': BLOB.length }); res.end(BLOB); return; }
    sendRange(req, res);
  });
  const origin = `http://127.0.0.1:${fake.port}`;
  const withPath = new HttpProxyBackend(proxyConfig(origin, '/ns/repo/blobs'), fast);
  const noPath = new HttpProxyBackend(proxyConfig(`${origin}/`), fast);
  try {
    assert.is(withPath.mode, 'remote');
    assert.ok((await withPath.read(BLOB_ID, 10, 90)).equals(BLOB.subarray(10, 100)));
    assert.ok((await noPath.read(BLOB_ID, 0, 50)).equals(BLOB.subarray(0, 50)));
    assert.is(await noPath.size(BLOB_ID), BLOB.length);
    assert.equal(urls, [`GET /ns/repo/blobs/${BLOB_ID} bytes=10-99`, `GET /${BLOB_ID} bytes=0-49`, `HEAD /${BLOB_ID} `]);
    mode = 'ignore';
    await rejectsEio(withPath.read(BLOB_ID, 100, 10), /http-proxy .* blob [0-9a-f]+ range bytes=100-109: .*Range ignored/);
    await rejectsEio(noPath.read('ab'.repeat(32), 0, 10), /status 404/);
  } finally {
    await withPath.close();
    await noPath.close();
    await fake.close();
  }
});

test('http-proxy local: GET / over the unix socket with only Range, status unchecked, longer bodies cut off, HEAD with bytes=0-, close aborts', async () => {
  const sock = path.join(work, 'proxy.sock');
  const seen: { method: string; url: string; headers: http.IncomingHttpHeaders }[] = [];
  let mode: 'ok' | 'status404' | 'endless' | 'wrong-range' | 'stall' = 'ok';
  let endlessBytes = 0;
  const fake = await serve((req, res) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers });
    if (mode === 'status404') { sendRange(req, res, 404); return; }
    if (mode === 'wrong-range') { res.writeHead(206, { 'content-range': `bytes 0-9/${BLOB.length}`, 'content-length': 10 }); res.end(BLOB.subarray(0, 10)); return; }
    if (mode === 'stall') { res.writeHead(206); res.flushHeaders(); return; }
    if (mode === 'endless') {
      res.writeHead(206);
      const chunk = Buffer.alloc(64 * 1024, 0x41);
      const pump = () => { while (!res.destroyed && res.write(chunk)) endlessBytes += chunk.length; };
      res.on('drain', pump);
      pump();
      return;
    }
    sendRange(req, res);
  }, sock);
  const be = new HttpProxyBackend(proxyConfig(sock, '/ignored/path', { timeout: 0 }), fast);
  try {
    assert.is(be.mode, 'local');
    assert.ok((await be.read(BLOB_ID, 4096, 1000)).equals(BLOB.subarray(4096, 5096)));
    assert.is(await be.size(BLOB_ID), BLOB.length);
    const [get, head] = seen;
    assert.is(get.method, 'GET');
    assert.is(get.url, '/', 'the blob id and path are never sent');
    assert.is(get.headers.range, 'bytes=4096-5095');
    assert.is(get.headers['user-agent'], undefined, 'only Range');
    assert.is(get.headers.authorization, undefined);
    assert.is(head.method, 'HEAD');
    assert.is(head.headers.range, 'bytes=0-');
    mode = 'status404';
    assert.ok((await be.read(BLOB_ID, 10, 20)).equals(BLOB.subarray(10, 30)), 'status is not checked');
    mode = 'wrong-range';
    await rejectsEio(be.read(BLOB_ID, 100, 10), /Content-Range/);
    mode = 'endless';
    seen.length = 0;
    await rejectsEio(be.read(BLOB_ID, 0, 1000), /expected 1000 bytes, server sent more/);
    assert.is(seen.length, 4, 'retried as upstream');
    mode = 'stall';
    seen.length = 0;
    const settled = rejectsEio(be.read(BLOB_ID, 0, 100), /closed|abort/i);
    await until(() => seen.length > 0);
    await be.close();
    await settled;
    await rejectsEio(be.read(BLOB_ID, 0, 100), /closed/);
  } finally {
    await be.close();
    await fake.close();
  }
});

test.after(() => fs.rmSync(work, { recursive: true, force: true }));

test.run();
