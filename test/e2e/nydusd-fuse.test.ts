/**
 * `nydusd` FUSE mode against the host kernel's FUSE: images built by
 * nydus-image (v5 and v6, every compressor) mounted over /dev/fuse compare
 * equal to their source with real tools (find/stat, sha256sum, getfattr);
 * concurrent readers get correct data; a corrupted chunk gives EIO for its
 * range only; SIGTERM and an external umount end the daemon cleanly.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeEdgeTree } from '../support/edge-tree';
import { diffTrees, treeRecords } from '../support/tree-digest';
import { hasCommand, nydusImage, sh, tmpdir } from '../support/cli';
import { fuseMissing, isMounted, startNydusd } from '../support/nydusd';
import { api, waitForState } from '../support/api';
import { needFixtures, TEXTURE as F } from '../support/fixtures';

const skip = fuseMissing();
if (skip) console.log(`SKIP nydusd-fuse: ${skip}`);

const CHUNK = 0x10000;
const work = tmpdir('nydusd-fuse');
const src = path.join(work, 'src');
if (!skip) makeEdgeTree(src, { chunkSize: CHUNK, manyFiles: 3000 });
const srcRecords = skip ? [] : treeRecords(src);

function config(blobDir: string, cacheDir: string, validate = false): string {
  const f = path.join(cacheDir, 'config.json');
  fs.mkdirSync(cacheDir, { recursive: true });
  fs.writeFileSync(f, JSON.stringify({
    version: 2,
    backend: { type: 'localfs', localfs: { dir: blobDir } },
    cache: { type: 'blobcache', filecache: { work_dir: cacheDir } },
    rafs: { mode: 'direct', validate, enable_xattr: true },
  }));
  return f;
}

function build(name: string, args: string[]): { boot: string; blobs: string } {
  const dir = path.join(work, name);
  const blobs = path.join(dir, 'blobs');
  fs.mkdirSync(blobs, { recursive: true });
  const boot = path.join(dir, 'image.boot');
  nydusImage(['create', '--chunk-size', `0x${CHUNK.toString(16)}`, '--bootstrap', boot, '--blob-dir', blobs, ...args, src]);
  return { boot, blobs };
}

/** find/stat listing and sha256sum of every file, as a person would compare two trees. */
function toolListing(root: string): string {
  // directory sizes are filesystem-specific (RAFS sizes dirs by their entries), so they are left out
  const find = sh('sh', ['-c', `cd '${root}' && find . -mindepth 1 \\( -type d -printf '%p %y %m %U:%G - %T@\\n' \\) -o -printf '%p %y %m %U:%G %s %T@ %l\\n' | LC_ALL=C sort`]);
  const sums = sh('sh', ['-c', `cd '${root}' && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum`]);
  return find + sums;
}

for (const v of ['5', '6']) {
  for (const c of ['none', 'lz4_block', 'zstd']) {
    test(`nydusd serves a v${v} ${c} image equal to its source`, async () => {
      if (skip) return;
      const { boot, blobs } = build(`v${v}-${c}`, ['--fs-version', v, '--compressor', c]);
      const mnt = path.join(work, `mnt-v${v}-${c}`);
      const d = await startNydusd(mnt, ['--bootstrap', boot, '--config', config(blobs, path.join(work, `cache-v${v}-${c}`), true), '--log-level', 'warn']);
      try {
        assert.equal(diffTrees(srcRecords, treeRecords(mnt)), [], 'tree differs');
        assert.is(toolListing(mnt), toolListing(src));
      } finally {
        assert.is(await d.stop(), 0, `nydusd exit code; log: ${d.log()}`);
      }
      assert.not.ok(isMounted(mnt), 'mount left behind after SIGTERM');
    });
  }
}

test('concurrent readers get correct data', async () => {
  if (skip) return;
  const { boot, blobs } = build('concurrent', ['--compressor', 'zstd']);
  const mnt = path.join(work, 'mnt-concurrent');
  const d = await startNydusd(mnt, ['--bootstrap', boot, '--config', config(blobs, path.join(work, 'cache-concurrent')), '--thread-num', '8']);
  try {
    const sorted = (out: string) => out.trim().split('\n').sort().join('\n');
    const want = sorted(sh('sh', ['-c', `cd '${src}' && find many sizes -type f | xargs -r sha256sum`]));
    // 8 parallel sha256sum workers over 3000+ files, twice (cold then warm cache)
    for (let round = 0; round < 2; round++) {
      const got = sorted(sh('sh', ['-c', `cd '${mnt}' && find many sizes -type f | xargs -r -P 8 -n 50 sha256sum`]));
      assert.is(got, want, `round ${round}`);
    }
    if (hasCommand('fio')) {
      const r = spawnSync('fio', ['--name=rr', `--directory=${mnt}/sizes`, '--filename=three-chunks-and-a-bit', '--rw=randread', '--bs=4k', '--numjobs=4', '--size=150k', '--readonly', '--ioengine=psync', '--group_reporting', '--output-format=terse'], { encoding: 'utf8' });
      assert.is(r.status, 0, r.stderr);
    } else console.log('SKIP fio part: fio not installed');
  } finally {
    assert.is(await d.stop(), 0, d.log());
  }
});

test('a listing brings every entry with its attributes: stat and read of the listed files send no LOOKUP', async () => {
  if (skip) return;
  const { boot, blobs } = build('rdplus', ['--compressor', 'zstd']);
  const mnt = path.join(work, 'mnt-rdplus');
  const apisock = path.join(work, 'rdplus-api.sock');
  const d = await startNydusd(mnt, ['--bootstrap', boot, '--config', config(blobs, path.join(work, 'cache-rdplus')), '--apisock', apisock, '--log-level', 'warn']);
  try {
    await waitForState(apisock);
    const lookups = async () => ((await api(apisock, 'GET', '/api/v1/metrics')).json as { fop_hits: number[] }).fop_hits[9];
    const dir = path.join(mnt, 'many');
    const names = fs.readdirSync(dir); // READDIRPLUS for every part of the listing, not only the first
    assert.is(names.length, 3000);
    const before = await lookups();
    for (const n of names) {
      assert.is(fs.statSync(path.join(dir, n)).size, fs.statSync(path.join(src, 'many', n)).size, n);
    }
    for (const n of names.slice(0, 100)) assert.equal(fs.readFileSync(path.join(dir, n)), fs.readFileSync(path.join(src, 'many', n)), n);
    // with READDIRPLUS_AUTO the kernel asked for attributes with the first READDIR only: ~2,900 LOOKUPs here
    assert.is(await lookups() - before, 0, 'LOOKUPs after the listing');
  } finally {
    assert.is(await d.stop(), 0, d.log());
  }
});

test('a corrupted chunk gives EIO for its range only; the daemon stays up', async () => {
  if (skip) return;
  const dir = path.join(work, 'corrupt');
  const s = path.join(dir, 'src');
  fs.mkdirSync(s, { recursive: true });
  const good = Buffer.alloc(3 * CHUNK, 'g');
  const bad = Buffer.alloc(3 * CHUNK);
  for (let i = 0; i < bad.length; i++) bad[i] = (i * 7 + (i >> 9)) & 0xff;
  fs.writeFileSync(path.join(s, 'good'), good);
  fs.writeFileSync(path.join(s, 'bad'), bad);
  const blobs = path.join(dir, 'blobs');
  fs.mkdirSync(blobs);
  const boot = path.join(dir, 'boot');
  nydusImage(['create', '--compressor', 'none', '--chunk-size', `0x${CHUNK.toString(16)}`, '--bootstrap', boot, '--blob-dir', blobs, s]);
  const blob = path.join(blobs, fs.readdirSync(blobs)[0]);
  const b = fs.readFileSync(blob);
  // uncompressed v6 blob: 'bad' is dumped first, its second chunk sits at blob offset CHUNK
  assert.ok(b.subarray(CHUNK, 2 * CHUNK).equals(bad.subarray(CHUNK, 2 * CHUNK)));
  b[CHUNK + 100] ^= 0xff;
  fs.writeFileSync(blob, b);
  const mnt = path.join(dir, 'mnt');
  const d = await startNydusd(mnt, ['--bootstrap', boot, '--config', config(blobs, path.join(dir, 'cache'), true)]);
  try {
    const fd = fs.openSync(path.join(mnt, 'bad'), 'r');
    try {
      const first = Buffer.alloc(CHUNK);
      assert.is(fs.readSync(fd, first, 0, CHUNK, 0), CHUNK);
      assert.ok(first.equals(bad.subarray(0, CHUNK)), 'first chunk of the damaged file must still read');
      assert.throws(() => fs.readSync(fd, Buffer.alloc(CHUNK), 0, CHUNK, CHUNK), /EIO|input\/output/i);
      const last = Buffer.alloc(CHUNK);
      assert.is(fs.readSync(fd, last, 0, CHUNK, 2 * CHUNK), CHUNK);
      assert.ok(last.equals(bad.subarray(2 * CHUNK)), 'third chunk of the damaged file must still read');
    } finally { fs.closeSync(fd); }
    assert.ok(fs.readFileSync(path.join(mnt, 'good')).equals(good), 'other files must stay readable');
    assert.ok(d.proc.exitCode === null, 'daemon died');
  } finally {
    assert.is(await d.stop(), 0, d.log());
  }
  assert.match(d.log(), /chunk/);
});

test('a corrupted chunk in the blobcache is never served: EIO without the blob, refetched with it', async () => {
  if (skip) return;
  const { boot, blobs } = build('cache-corrupt', ['--compressor', 'zstd']);
  const cache = path.join(work, 'cache-corrupt-cache');
  const cfg = config(blobs, cache, true);
  const mnt = path.join(work, 'mnt-cache-corrupt');
  const want = fs.readFileSync(path.join(src, 'sizes/three-chunks-and-a-bit'));
  const hello = fs.readFileSync(path.join(src, 'text/hello.txt'));
  let d = await startNydusd(mnt, ['--bootstrap', boot, '--config', cfg]);
  try {
    assert.ok(fs.readFileSync(path.join(mnt, 'sizes/three-chunks-and-a-bit')).equals(want));
    assert.ok(fs.readFileSync(path.join(mnt, 'text/hello.txt')).equals(hello));
  } finally { assert.is(await d.stop(), 0, d.log()); }
  const dataFile = fs.readdirSync(cache).find((f) => f.endsWith('.blob.data'))!;
  assert.ok(dataFile, 'blobcache data file');
  assert.ok(fs.existsSync(path.join(cache, `${dataFile}.chunk_map`)), 'chunk map persisted');
  // flip one byte of the file's first chunk inside the cache file
  const cached = fs.readFileSync(path.join(cache, dataFile));
  const at = cached.indexOf(want.subarray(0, 64));
  assert.ok(at >= 0, 'file data is in the cache file');
  cached[at + 10] ^= 0xff;
  fs.writeFileSync(path.join(cache, dataFile), cached);
  // with the blob gone, only the (restarted) cache can serve
  const blobFile = fs.readdirSync(blobs)[0];
  fs.renameSync(path.join(blobs, blobFile), path.join(work, 'cache-corrupt-blob'));
  d = await startNydusd(mnt, ['--bootstrap', boot, '--config', cfg]);
  try {
    assert.throws(() => fs.readFileSync(path.join(mnt, 'sizes/three-chunks-and-a-bit')), /EIO|input\/output/i);
    assert.ok(fs.readFileSync(path.join(mnt, 'text/hello.txt')).equals(hello), 'cached files stay readable');
  } finally { assert.is(await d.stop(), 0, d.log()); }
  assert.match(d.log(), /cached chunk data is corrupted/);
  // with the blob back, the bad chunk (dropped from the chunk map) is fetched again
  fs.renameSync(path.join(work, 'cache-corrupt-blob'), path.join(blobs, blobFile));
  d = await startNydusd(mnt, ['--bootstrap', boot, '--config', cfg]);
  try {
    assert.ok(fs.readFileSync(path.join(mnt, 'sizes/three-chunks-and-a-bit')).equals(want));
  } finally { assert.is(await d.stop(), 0, d.log()); }
});

test('an external umount ends the daemon with no leftover mount', async () => {
  if (skip) return;
  const { boot, blobs } = build('umount', ['--compressor', 'zstd']);
  const mnt = path.join(work, 'mnt-umount');
  const d = await startNydusd(mnt, ['--bootstrap', boot, '--localfs-dir', blobs]);
  assert.ok(fs.readFileSync(path.join(mnt, 'text/hello.txt')).equals(fs.readFileSync(path.join(src, 'text/hello.txt'))));
  execFileSync('umount', [mnt]);
  const timer = setTimeout(() => d.proc.kill('SIGKILL'), 10000);
  const code = await d.exited;
  clearTimeout(timer);
  assert.is(code, 0, d.log());
  assert.not.ok(isMounted(mnt));
});

test('upstream fixtures mount and read', async () => {
  if (skip || !needFixtures('nydusd-fuse upstream fixtures mount and read')) return;
  const cases: Array<[string, string, string, number]> = [
    [`${F}/bootstrap/rafs-v6-2.2.boot`, `${F}/blobs`, 'lib.rs', 16931],
    [`${F}/repeatable/sha256-nocompress-repeatable`, `${F}/repeatable/blobs`, 'hardlink-test/foo', -1],
  ];
  for (const [boot, blobs, file, size] of cases) {
    const mnt = path.join(work, `mnt-fixture-${path.basename(boot)}`);
    const cache = path.join(work, `cache-fixture-${path.basename(boot)}`);
    const d = await startNydusd(mnt, ['--bootstrap', boot, '--config', config(blobs, cache, true)]);
    try {
      const data = fs.readFileSync(path.join(mnt, file));
      if (size >= 0) assert.is(data.length, size);
      const out = sh('sh', ['-c', `cd '${mnt}' && find . -type f | LC_ALL=C sort | xargs -r sha256sum | wc -l`]);
      assert.ok(Number(out.trim()) > 0);
    } finally {
      assert.is(await d.stop(), 0, d.log());
    }
  }
});

test('bad arguments fail fast with a clear message', () => {
  const r = spawnSync(path.resolve(__dirname, '../../bin/nydusd'), ['--mountpoint', '/tmp', '--bootstrap', '/nonexistent', '--localfs-dir', '/tmp'], { encoding: 'utf8', timeout: 20000 });
  assert.is(r.status, 1);
  assert.match(r.stderr, /error: .*nonexistent/);
});

test.after(() => { if (!process.env.KEEP_TMP) fs.rmSync(work, { recursive: true, force: true }); });
test.run();
