/**
 * S3 backend end to end: images built by nydus-image are put into the test S3
 * endpoint (test/support/s3-server.ts, in its own process, verifying every
 * request's SigV4 signature) under `object_prefix + blob id`, and nydusd
 * mounts them over FUSE with `backend.type = "s3"` and the blob cache:
 *  - the mounted tree equals its source; every request the endpoint saw was a
 *    signed ranged GET (path style, Host without port, upstream's signed
 *    header set) that it accepted;
 *  - a wrong secret gives EIO on read (the endpoint logged only 403s), not a
 *    hang;
 *  - two images sharing a layer, mounted in one nydusd with one cache
 *    work_dir, share one cache entry for that blob (one `<id>.blob.data`) and
 *    fetch each byte of it once: reading the same files through the second
 *    mount sends no request for the shared blob.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { api, waitForState } from '../support/api';
import { nydusImage, tmpdir } from '../support/cli';
import { fuseMissing, isMounted, startNydusd } from '../support/nydusd';
import { type S3LogEntry, type S3Process, spawnS3Server } from '../support/s3-server';
import { diffTrees, treeRecords } from '../support/tree-digest';

const missing = fuseMissing();
if (missing) {
  if (process.env.CI === 'true') throw new Error(`s3 e2e: ${missing}`);
  console.log(`SKIP s3 e2e: ${missing}`);
}

const CHUNK = 0x10000;
const BUCKET = 'nydus-images';
const PREFIX = 'blobs/sha256-';
const REGION = 'us-test-1';
const CREDS = { accessKeyId: 'AKIDNYDUSE2E', secretAccessKey: 'e2e/secret+key' };
const work = tmpdir('s3-e2e');
let s3: S3Process | undefined;

interface Layer { dir: string; boot: string; blobId: string }
const layers: Record<'base' | 'top1' | 'top2', Layer> = {} as never;
const images: Record<'a' | 'b', string> = { a: '', b: '' };

function s3Config(cacheDir: string, secret = CREDS.secretAccessKey): string {
  return JSON.stringify({
    version: 2,
    backend: {
      type: 's3',
      s3: { scheme: 'http', endpoint: s3!.endpoint, bucket_name: BUCKET, object_prefix: PREFIX, region: REGION,
        access_key_id: CREDS.accessKeyId, access_key_secret: secret, timeout: 10, connect_timeout: 5 },
    },
    cache: { type: 'blobcache', filecache: { work_dir: cacheDir } },
    rafs: { mode: 'direct', validate: true },
  });
}

function configFile(name: string, text: string): string {
  const f = path.join(work, `${name}.json`);
  fs.writeFileSync(f, text);
  return f;
}

/** GETs of one blob's object, as [start, end] byte ranges (inclusive). */
function blobRanges(log: S3LogEntry[], blobId: string): [number, number][] {
  return log
    .filter((e) => e.method === 'GET' && e.path === `/${BUCKET}/${PREFIX}${blobId}`)
    .map((e) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(e.range ?? '');
      assert.ok(m, `GET without a bounded Range: ${JSON.stringify(e)}`);
      return [Number(m![1]), Number(m![2])] as [number, number];
    });
}

/** Regular files of a tree (relative paths, sorted). */
function files(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
    const r = path.join(rel, e.name);
    if (e.isDirectory()) out.push(...files(root, r));
    else if (e.isFile()) out.push(r);
  }
  return out.sort();
}

function buildLayer(name: string, fill: (dir: string) => void): Layer {
  const dir = path.join(work, 'src', name);
  fs.mkdirSync(dir, { recursive: true });
  fill(dir);
  const blobs = path.join(work, 'blobs', name);
  fs.mkdirSync(blobs, { recursive: true });
  const boot = path.join(work, `${name}.boot`);
  nydusImage(['create', '--fs-version', '6', '--compressor', 'zstd', '--chunk-size', `0x${CHUNK.toString(16)}`, '--bootstrap', boot, '--blob-dir', blobs, dir]);
  const names = fs.readdirSync(blobs);
  assert.is(names.length, 1, `${name}: one blob`);
  s3!.put(BUCKET, PREFIX + names[0], fs.readFileSync(path.join(blobs, names[0])));
  return { dir, boot, blobId: names[0] };
}

test.before(async () => {
  if (missing) return;
  s3 = await spawnS3Server({ root: path.join(work, 's3'), credentials: CREDS, region: REGION, logFile: path.join(work, 's3.log') });
  layers.base = buildLayer('base', (d) => {
    fs.mkdirSync(path.join(d, 'usr/lib'), { recursive: true });
    for (let i = 0; i < 12; i++) fs.writeFileSync(path.join(d, 'usr/lib', `lib${i}.so`), crypto.randomBytes(CHUNK * (1 + (i % 3)) + 17 * i));
    fs.writeFileSync(path.join(d, 'os-release'), 'ID=nydus-s3\n');
    fs.symlinkSync('os-release', path.join(d, 'link'));
  });
  layers.top1 = buildLayer('top1', (d) => fs.writeFileSync(path.join(d, 'one.bin'), crypto.randomBytes(3 * CHUNK)));
  layers.top2 = buildLayer('top2', (d) => fs.writeFileSync(path.join(d, 'two.bin'), crypto.randomBytes(2 * CHUNK + 5)));
  for (const [img, top] of [['a', layers.top1], ['b', layers.top2]] as const) {
    images[img] = path.join(work, `${img}.boot`);
    nydusImage(['merge', '--bootstrap', images[img], layers.base.boot, top.boot]);
  }
});

test.after(async () => {
  await s3?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

test('nydusd mounts an image from S3; the tree equals its source; every request was a signed ranged GET the endpoint accepted', async () => {
  if (missing) return;
  const cache = path.join(work, 'cache-one');
  fs.mkdirSync(cache);
  const mnt = path.join(work, 'mnt-one');
  const before = s3!.log().length;
  const d = await startNydusd(mnt, ['--bootstrap', layers.base.boot, '--config', configFile('one', s3Config(cache)), '--log-level', 'warn']);
  try {
    assert.is(fs.readFileSync(path.join(mnt, 'os-release'), 'utf8'), 'ID=nydus-s3\n');
    assert.equal(diffTrees(treeRecords(layers.base.dir), treeRecords(mnt)), [], 'tree differs');
  } finally {
    assert.is(await d.stop(), 0, `nydusd exit code; log: ${d.log()}`);
  }
  assert.not.ok(isMounted(mnt));
  const log = s3!.log().slice(before);
  assert.ok(log.length > 0, 'no request reached the endpoint');
  for (const e of log) {
    assert.is(e.method, 'GET', JSON.stringify(e));
    assert.is(e.status, 206, JSON.stringify(e));
    assert.is(e.path, `/${BUCKET}/${PREFIX}${layers.base.blobId}`);
    assert.is(e.host, '127.0.0.1', 'Host without port');
    assert.is(e.signedHeaders, 'host;range;x-amz-content-sha256;x-amz-date');
  }
  const blobSize = fs.statSync(path.join(work, 's3', BUCKET, ...(PREFIX + layers.base.blobId).split('/'))).size;
  for (const [a, b] of blobRanges(log, layers.base.blobId)) assert.ok(a <= b && b < blobSize, `range ${a}-${b} of ${blobSize}`);
  assert.ok(fs.existsSync(path.join(cache, `${layers.base.blobId}.blob.data`)), 'blob cache file');
});

test('a wrong secret gives EIO on read, not a hang; the endpoint answered only 403 SignatureDoesNotMatch', async () => {
  if (missing) return;
  const cache = path.join(work, 'cache-bad');
  fs.mkdirSync(cache);
  const mnt = path.join(work, 'mnt-bad');
  const before = s3!.log().length;
  const d = await startNydusd(mnt, ['--bootstrap', layers.base.boot, '--config', configFile('bad', s3Config(cache, 'not-the-secret')), '--log-level', 'error']);
  try {
    // a child process: should the read ever hang, the timeout ends it and the test fails
    const r = spawnSync('cat', [path.join(mnt, 'usr/lib/lib1.so')], { encoding: 'buffer', timeout: 120_000 });
    assert.is(r.signal, null, 'cat was killed: the read hung');
    assert.is.not(r.status, 0, 'read succeeded with a wrong secret');
    assert.match(r.stderr.toString(), /Input\/output error/);
    assert.ok(d.proc.exitCode === null, 'daemon died');
  } finally {
    assert.is(await d.stop(), 0, `nydusd exit code; log: ${d.log()}`);
  }
  const log = s3!.log().slice(before);
  assert.ok(log.length > 0, 'no request reached the endpoint');
  assert.ok(log.every((e) => e.status === 403 && e.code === 'SignatureDoesNotMatch'), JSON.stringify(log));
});

test('two images sharing a layer in one nydusd with one cache work_dir: one cache entry, each byte of the shared blob fetched once', async () => {
  if (missing) return;
  const cache = path.join(work, 'cache-shared');
  fs.mkdirSync(cache);
  const mnt = path.join(work, 'mnt-shared');
  const apisock = path.join(work, 'api.sock');
  const before = s3!.log().length;
  const d = await startNydusd(mnt, ['--apisock', apisock, '--log-level', 'warn']);
  try {
    await waitForState(apisock);
    const config = s3Config(cache);
    for (const img of ['a', 'b'] as const) {
      const r = await api(apisock, 'POST', `/api/v1/mount?mountpoint=/${img}`, { source: images[img], fs_type: 'rafs', config });
      assert.is(r.status, 204, r.body);
    }
    const baseFiles = files(layers.base.dir);
    assert.ok(baseFiles.length >= 13);
    const readAll = (img: 'a' | 'b') => {
      for (const f of baseFiles) {
        assert.ok(fs.readFileSync(path.join(mnt, img, f)).equals(fs.readFileSync(path.join(layers.base.dir, f))), `${img}/${f}`);
      }
    };
    readAll('a');
    const afterA = blobRanges(s3!.log().slice(before), layers.base.blobId).length;
    assert.ok(afterA > 0, 'the shared blob was never fetched');
    readAll('b');
    assert.ok(fs.readFileSync(path.join(mnt, 'a/one.bin')).equals(fs.readFileSync(path.join(layers.top1.dir, 'one.bin'))));
    assert.ok(fs.readFileSync(path.join(mnt, 'b/two.bin')).equals(fs.readFileSync(path.join(layers.top2.dir, 'two.bin'))));
    const log = s3!.log().slice(before);
    const ranges = blobRanges(log, layers.base.blobId);
    console.log(`s3 e2e: the shared blob was fetched in ${ranges.length} range(s); the second image sent ${ranges.length - afterA}`);
    assert.is(ranges.length, afterA, 'the second image fetched the shared blob again');
    const sorted = [...ranges].sort((x, y) => x[0] - y[0]);
    for (let i = 1; i < sorted.length; i++) {
      assert.ok(sorted[i][0] > sorted[i - 1][1], `bytes fetched twice: ${JSON.stringify(sorted[i - 1])} and ${JSON.stringify(sorted[i])}`);
    }
    assert.ok(log.every((e) => e.status === 206), 'every request was accepted');
    const entries = fs.readdirSync(cache).filter((f) => f.endsWith('.blob.data')).sort();
    assert.equal(entries, [layers.base.blobId, layers.top1.blobId, layers.top2.blobId].map((id) => `${id}.blob.data`).sort(), 'one cache entry per blob');
  } finally {
    assert.is(await d.stop(), 0, `nydusd exit code; log: ${d.log()}`);
  }
  assert.not.ok(isMounted(mnt));
});

test.run();
