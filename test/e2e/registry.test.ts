/**
 * Registry backend against a real registry: Debian's docker-registry
 * (distribution 2.8) with htpasswd (bcrypt) Basic auth. A blob built by
 * nydus-image is pushed under its digest, read back in ranges through the
 * backend, and mounted with nydusd (registry backend + blobcache) to compare
 * the tree with its source; the registry's access log shows that a small read
 * fetched only a few ranges.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ErrnoError } from '../../src/common/errno';
import type { RegistryConfig } from '../../src/common/config';
import { RegistryBackend } from '../../src/storage/backend/registry';
import { nydusImage, tmpdir } from '../support/cli';
import { fuseMissing, isMounted, startNydusd } from '../support/nydusd';
import { blobGets, registryMissing, startRegistry, type Registry } from '../support/registry';
import { diffTrees, treeRecords } from '../support/tree-digest';

const missing = registryMissing();
if (missing) {
  if (process.env.CI === 'true') throw new Error(`registry e2e: ${missing}`);
  console.log(`SKIP registry e2e: ${missing}`);
}

const REPO = 'test/img';
const CHUNK = 0x10000;
const work = tmpdir('registry-e2e');
const src = path.join(work, 'src');
let reg: Registry | undefined;
let blobId = '';
let blob = Buffer.alloc(0);
let boot = '';

function regConfig(r: Registry, extra: Partial<RegistryConfig> = {}): RegistryConfig {
  return {
    scheme: 'http', host: r.host, repo: REPO, auth: r.auth,
    skip_verify: false, ca_cert_files: [], timeout: 10, connect_timeout: 5, retry_limit: 0,
    proxy: { url: '', ping_url: '', fallback: true, check_interval: 5, use_http: false, check_pause_elapsed: 300, dragonfly_scheduler_endpoint: '' },
    blob_url_scheme: '', blob_redirected_host: '',
    ...extra,
  };
}

test.before(async () => {
  if (missing) return;
  // 48 files of one random chunk each plus a small one: a small read must not fetch them all
  fs.mkdirSync(path.join(src, 'd'), { recursive: true });
  for (let i = 0; i < 48; i++) fs.writeFileSync(path.join(src, 'd', `f${i}`), crypto.randomBytes(CHUNK));
  fs.writeFileSync(path.join(src, 'small.txt'), 'hello registry\n');
  fs.symlinkSync('small.txt', path.join(src, 'link'));
  const blobs = path.join(work, 'blobs');
  boot = path.join(work, 'image.boot');
  nydusImage(['create', '--fs-version', '6', '--compressor', 'zstd', '--chunk-size', `0x${CHUNK.toString(16)}`, '--bootstrap', boot, '--blob-dir', blobs, src]);
  const names = fs.readdirSync(blobs);
  assert.is(names.length, 1);
  blobId = names[0];
  blob = fs.readFileSync(path.join(blobs, blobId));
  reg = await startRegistry({ user: 'nydus', pass: 'secret-pass' });
  assert.is(await reg.pushBlob(REPO, blob), blobId, 'blob id is the sha256 of the blob file');
});

test.after(async () => {
  await reg?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

test('ranged reads through the registry backend equal the local blob', async () => {
  if (missing) return;
  const be = new RegistryBackend(regConfig(reg!));
  try {
    const ranges: [number, number][] = [[0, 1], [0, 4096], [12345, 70000], [blob.length - 100, 100], [blob.length - 1, 1]];
    for (let i = 0; i < 20; i++) {
      const off = crypto.randomInt(0, blob.length - 1);
      ranges.push([off, crypto.randomInt(1, Math.min(200_000, blob.length - off) + 1)]);
    }
    const got = await Promise.all(ranges.map(([o, l]) => be.read(blobId, o, l)));
    ranges.forEach(([o, l], i) => assert.ok(got[i].equals(blob.subarray(o, o + l)), `range ${o}+${l}`));
    assert.ok((await be.read(blobId, 0, blob.length)).equals(blob), 'whole blob');
    assert.is(await be.size(blobId), blob.length);
  } finally {
    await be.close();
  }
});

test('a small read is one ranged GET in the access log', async () => {
  if (missing) return;
  const be = new RegistryBackend(regConfig(reg!));
  try {
    await be.read(blobId, 0, 10); // auth handshake (401 then 206)
    await new Promise((r) => setTimeout(r, 200));
    const before = blobGets(reg!.log(), blobId).length;
    assert.ok((await be.read(blobId, 5000, 1000)).equals(blob.subarray(5000, 6000)));
    await new Promise((r) => setTimeout(r, 200));
    const after = blobGets(reg!.log(), blobId);
    assert.is(after.length - before, 1, after.slice(before).join('\n'));
    assert.match(after[after.length - 1], /" 206 1000 /);
  } finally {
    await be.close();
  }
});

test('wrong credentials, unknown blob and reads past the end give EIO', async () => {
  if (missing) return;
  const bad = new RegistryBackend(regConfig(reg!, { auth: Buffer.from('nydus:wrong').toString('base64') }), { retryDelayMs: () => 0 });
  const anon = new RegistryBackend(regConfig(reg!, { auth: undefined }), { retryDelayMs: () => 0 });
  const be = new RegistryBackend(regConfig(reg!), { retryDelayMs: () => 0 });
  try {
    for (const [b, id, off, len, re] of [
      [bad, blobId, 0, 10, /401/],
      [anon, blobId, 0, 10, /401/],
      [be, 'ab'.repeat(32), 0, 10, /404/],
      [be, blobId, blob.length - 5, 10, /Content-Range|expected 10 bytes/],
    ] as [RegistryBackend, string, number, number, RegExp][]) {
      try {
        await b.read(id, off, len);
        assert.unreachable('read succeeded');
      } catch (err) {
        assert.instance(err, ErrnoError);
        assert.is((err as ErrnoError).code, 'EIO');
        assert.match((err as Error).message, re);
      }
    }
  } finally {
    await bad.close();
    await anon.close();
    await be.close();
  }
});

test('nydusd mounts the image from the registry; the tree equals its source', async () => {
  if (missing) return;
  const skip = fuseMissing();
  if (skip) { console.log(`SKIP registry nydusd mount: ${skip}`); return; }
  const cache = path.join(work, 'cache');
  fs.mkdirSync(cache, { recursive: true });
  const cfgFile = path.join(work, 'config.json');
  fs.writeFileSync(cfgFile, JSON.stringify({
    version: 2,
    backend: { type: 'registry', registry: { scheme: 'http', host: reg!.host, repo: REPO, auth: reg!.auth } },
    cache: { type: 'blobcache', filecache: { work_dir: cache } },
    rafs: { mode: 'direct', validate: true },
  }));
  const mnt = path.join(work, 'mnt');
  const before = blobGets(reg!.log(), blobId).length;
  const d = await startNydusd(mnt, ['--bootstrap', boot, '--config', cfgFile, '--log-level', 'warn']);
  try {
    assert.is(fs.readFileSync(path.join(mnt, 'small.txt'), 'utf8'), 'hello registry\n');
    await new Promise((r) => setTimeout(r, 300));
    const small = blobGets(reg!.log(), blobId).length - before;
    // blob.meta (v6) + the auth handshake + the small file's chunk: far fewer than the 49 chunks
    console.log(`registry e2e: a small file read through nydusd fetched ${small} range(s)`);
    assert.ok(small >= 1 && small <= 6, `a small read fetched ${small} ranges:\n${blobGets(reg!.log(), blobId).slice(before).join('\n')}`);
    assert.equal(diffTrees(treeRecords(src), treeRecords(mnt)), [], 'tree differs');
  } finally {
    assert.is(await d.stop(), 0, `nydusd exit code; log: ${d.log()}`);
  }
  assert.not.ok(isMounted(mnt));
});

test('IMAGE_PULL_AUTH replaces the --config auth at startup (upstream), so wrong credentials in the file still read', async () => {
  if (missing) return;
  const skip = fuseMissing();
  if (skip) { console.log(`SKIP registry IMAGE_PULL_AUTH: ${skip}`); return; }
  const cfgFile = path.join(work, 'config-wrong.json');
  const wrong = Buffer.from('nydus:wrong').toString('base64');
  const mk = (name: string) => {
    fs.writeFileSync(cfgFile, JSON.stringify({
      version: 2,
      backend: { type: 'registry', registry: { scheme: 'http', host: reg!.host, repo: REPO, auth: wrong, timeout: 5 } },
      cache: { type: 'blobcache', filecache: { work_dir: path.join(work, name) } },
    }));
  };
  const mnt = path.join(work, 'mnt-ipa');
  // without the variable: the file's wrong credentials fail
  mk('cache-ipa-1');
  let d = await startNydusd(mnt, ['--bootstrap', boot, '--config', cfgFile, '--log-level', 'error']);
  try {
    assert.throws(() => fs.readFileSync(path.join(mnt, 'small.txt')), (e: NodeJS.ErrnoException) => e.code === 'EIO');
  } finally {
    await d.stop();
  }
  mk('cache-ipa-2');
  process.env.IMAGE_PULL_AUTH = reg!.auth;
  try {
    d = await startNydusd(mnt, ['--bootstrap', boot, '--config', cfgFile, '--log-level', 'warn']);
  } finally {
    delete process.env.IMAGE_PULL_AUTH;
  }
  try {
    assert.is(fs.readFileSync(path.join(mnt, 'small.txt'), 'utf8'), 'hello registry\n');
  } finally {
    assert.is(await d.stop(), 0, `nydusd exit code; log: ${d.log()}`);
  }
});

test.run();
