/**
 * The registry backend's `proxy` (the path a Dragonfly dfdaemon takes) with
 * real components: Debian's docker-registry (anonymous) holds the blob of an
 * image built by our nydus-image, and Debian's nginx on loopback plays the
 * caching peer (absolute-form forward proxy, 1 MiB cache slices,
 * test/support/nginx.ts). nydusd mounts the image over FUSE each time with a
 * fresh blob cache:
 *  1. through nginx (`proxy.url` + `ping_url`): the tree equals its source;
 *     nginx logged the absolute-form blob GETs with the Dragonfly headers;
 *  2. a second nydusd: every blob request is a cache HIT in nginx and the
 *     registry's access log shows no new blob GET;
 *  3. nginx stopped, `fallback: true`: everything is read directly from the
 *     registry (new blob GETs there);
 *  4. nginx stopped, `fallback: false`: reading a file fails with EIO, within
 *     a bounded time (no hang).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { nydusImage, tmpdir } from '../support/cli';
import { startCachingProxy, nginxMissing, type CachingProxy, type NginxLine } from '../support/nginx';
import { fuseMissing, isMounted, startNydusd } from '../support/nydusd';
import { blobGets, registryMissing, startRegistry, type Registry } from '../support/registry';
import { sleep } from '../support/timing';
import { diffTrees, treeRecords } from '../support/tree-digest';

const missing = registryMissing() ?? nginxMissing() ?? fuseMissing();
if (missing) {
  if (process.env.CI === 'true') throw new Error(`registry proxy e2e: ${missing}`);
  console.log(`SKIP registry proxy e2e: ${missing}`);
}

const REPO = 'test/proxied';
const CHUNK = 0x10000;
const work = tmpdir('registry-proxy-e2e');
const src = path.join(work, 'src');
let reg: Registry | undefined;
let px: CachingProxy | undefined;
let blobId = '';
let boot = '';

test.before(async () => {
  if (missing) return;
  // 40 files of random chunks (some several chunks long) plus small ones: a blob of a few MiB, several cache slices
  fs.mkdirSync(path.join(src, 'd/e'), { recursive: true });
  for (let i = 0; i < 40; i++) fs.writeFileSync(path.join(src, i % 2 ? 'd' : 'd/e', `f${i}`), crypto.randomBytes(CHUNK * (1 + (i % 3)) - i * 7));
  fs.writeFileSync(path.join(src, 'small.txt'), 'hello through the proxy\n');
  fs.symlinkSync('small.txt', path.join(src, 'link'));
  const blobs = path.join(work, 'blobs');
  boot = path.join(work, 'image.boot');
  nydusImage(['create', '--fs-version', '6', '--compressor', 'zstd', '--chunk-size', `0x${CHUNK.toString(16)}`, '--bootstrap', boot, '--blob-dir', blobs, src]);
  const names = fs.readdirSync(blobs);
  assert.is(names.length, 1);
  blobId = names[0];
  reg = await startRegistry();
  assert.is(await reg.pushBlob(REPO, fs.readFileSync(path.join(blobs, blobId))), blobId);
  px = await startCachingProxy();
});

test.after(async () => {
  await px?.destroy();
  await reg?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

/** Write a v2 config: registry backend (anonymous) with `proxy`, blobcache in a fresh dir. */
function config(name: string, proxy: Record<string, unknown>): string {
  const cache = path.join(work, `cache-${name}`);
  fs.mkdirSync(cache, { recursive: true });
  const file = path.join(work, `config-${name}.json`);
  fs.writeFileSync(file, JSON.stringify({
    version: 2,
    backend: { type: 'registry', registry: { scheme: 'http', host: reg!.host, repo: REPO, timeout: 5, connect_timeout: 2, proxy } },
    cache: { type: 'blobcache', filecache: { work_dir: cache } },
    rafs: { mode: 'direct', validate: true },
  }));
  return file;
}

/** Wait until a log stops growing (nginx and the registry write a line after the reply went out). */
async function settle(count: () => number): Promise<number> {
  let last = count();
  for (let i = 0; i < 50; i++) {
    await sleep(100);
    const n = count();
    if (n === last && i >= 2) return n;
    last = n;
  }
  return last;
}

const blobLines = (ls: NginxLine[]): NginxLine[] => ls.filter((l) => l.request.includes(`/blobs/sha256:${blobId}`));

async function mountAndCompare(name: string, proxy: Record<string, unknown>): Promise<void> {
  const mnt = path.join(work, `mnt-${name}`);
  const d = await startNydusd(mnt, ['--bootstrap', boot, '--config', config(name, proxy), '--log-level', 'warn']);
  try {
    assert.equal(diffTrees(treeRecords(src), treeRecords(mnt)), [], `tree differs (nydusd ${name}); log: ${d.log()}`);
  } finally {
    assert.is(await d.stop(), 0, `nydusd ${name} exit code; log: ${d.log()}`);
  }
  assert.not.ok(isMounted(mnt));
}

test('nydusd #1 reads through nginx: the tree equals its source; nginx saw absolute-form blob GETs with Dragonfly headers', async () => {
  if (missing) return;
  const regBefore = blobGets(reg!.log(), blobId).length;
  await mountAndCompare('1', { url: px!.url, ping_url: px!.pingUrl, check_interval: 1 });
  await settle(() => px!.lines().length);
  const lines = blobLines(px!.lines());
  assert.ok(lines.length > 0, 'nginx saw the blob requests');
  for (const l of lines) {
    assert.match(l.request, new RegExp(`^(GET|HEAD) http://${reg!.host.replace(/\./g, '\\.')}/v2/${REPO}/blobs/sha256:${blobId} HTTP/1\\.1$`), 'absolute form');
    assert.match(l.priority, /^[36]$/);
    assert.is(l.p2p, 'true');
  }
  assert.ok(lines.some((l) => l.cache === 'MISS'), 'first reads filled the cache');
  assert.ok(px!.lines().some((l) => l.request.startsWith('GET /_ping ')), 'health pings reached ping_url');
  const regAfter = await settle(() => blobGets(reg!.log(), blobId).length);
  assert.ok(regAfter > regBefore, 'nginx fetched from the registry');
  const viaNginx = blobGets(reg!.log(), blobId).slice(regBefore);
  console.log(`registry proxy e2e: nydusd #1 made ${lines.length} blob request(s) through nginx, nginx made ${viaNginx.length} to the registry`);
});

test('nydusd #2 (fresh cache) is served from the nginx cache: all HITs, no new blob GET at the registry', async () => {
  if (missing) return;
  const regBefore = await settle(() => blobGets(reg!.log(), blobId).length);
  const nginxBefore = blobLines(px!.lines()).length;
  await mountAndCompare('2', { url: px!.url, ping_url: px!.pingUrl });
  await settle(() => px!.lines().length);
  const lines = blobLines(px!.lines()).slice(nginxBefore);
  assert.ok(lines.length > 0, 'nydusd #2 went through nginx');
  assert.equal(lines.filter((l) => l.cache !== 'HIT'), [], 'every blob request of nydusd #2 was a cache hit');
  const regAfter = await settle(() => blobGets(reg!.log(), blobId).length);
  assert.is(regAfter, regBefore, blobGets(reg!.log(), blobId).slice(regBefore).join('\n'));
});

test('nginx stopped, fallback=true: nydusd #3 reads everything directly from the registry', async () => {
  if (missing) return;
  await px!.stop();
  const nginxBefore = px!.lines().length;
  const regBefore = await settle(() => blobGets(reg!.log(), blobId).length);
  await mountAndCompare('3', { url: px!.url, ping_url: px!.pingUrl, fallback: true, check_interval: 1 });
  const regAfter = await settle(() => blobGets(reg!.log(), blobId).length);
  assert.ok(regAfter > regBefore, 'the registry served nydusd #3 directly');
  assert.is(px!.lines().length, nginxBefore);
});

test('nginx stopped, fallback=false: reads fail with EIO, no hang', async () => {
  if (missing) return;
  const mnt = path.join(work, 'mnt-4');
  const regBefore = await settle(() => blobGets(reg!.log(), blobId).length);
  const d = await startNydusd(mnt, ['--bootstrap', boot, '--config', config('4', { url: px!.url, ping_url: px!.pingUrl, fallback: false }), '--log-level', 'warn']);
  try {
    assert.is(fs.readlinkSync(path.join(mnt, 'link')), 'small.txt', 'metadata needs no blob');
    // a child reads, so a hang would be bounded by its timeout instead of stalling the suite
    const r = spawnSync('cat', [path.join(mnt, 'd/f1')], { timeout: 120_000, maxBuffer: 1 << 20 });
    assert.is(r.signal, null, 'the read returned (no hang)');
    assert.is.not(r.status, 0);
    assert.match(r.stderr.toString(), /Input\/output error/);
  } finally {
    assert.is(await d.stop(), 0, `nydusd exit code; log: ${d.log()}`);
  }
  const regAfter = await settle(() => blobGets(reg!.log(), blobId).length);
  assert.is(regAfter, regBefore, 'without fallback the registry is never contacted directly');
});

test.run();
