/**
 * nydus-image create → check → unpack round trips through the real CLI, for
 * v5 and v6, every compressor and digester, dir/tar/targz sources.
 * Source and unpacked trees are compared with real stat/getfattr/sha256.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeEdgeTree } from '../support/edge-tree';
import { diffTrees, treeRecords } from '../support/tree-digest';
import { spawnSync } from 'node:child_process';
import { LOG_LEVELS } from '../../src/common/log';
import { ROOT, isRoot, nydusImage, sh, tmpdir } from '../support/cli';

const CHUNK = 0x10000;
const work = tmpdir('roundtrip');
const src = path.join(work, 'src');
makeEdgeTree(src, { chunkSize: CHUNK, devices: isRoot() });
const srcRecords = treeRecords(src);

function roundTrip(name: string, args: string[], source = src, type = 'dir-rafs') {
  const dir = path.join(work, name);
  fs.mkdirSync(dir);
  const boot = path.join(dir, 'image.boot');
  const blobs = path.join(dir, 'blobs');
  fs.mkdirSync(blobs);
  nydusImage(['create', '-t', type, '--bootstrap', boot, '--blob-dir', blobs, '--chunk-size', `0x${CHUNK.toString(16)}`, ...args, source]);
  const check = nydusImage(['check', boot, '--blob-dir', blobs, '--verify-chunks']);
  assert.match(check, /is valid/);
  const out = path.join(dir, 'out');
  nydusImage(['unpack', boot, '--blob-dir', blobs, '--output-dir', out]);
  const diffs = diffTrees(srcRecords, treeRecords(out));
  assert.equal(diffs, [], `${name}: unpacked tree differs`);
  // the tar output extracts to the same tree
  const tarFile = path.join(dir, 'out.tar');
  nydusImage(['unpack', boot, '--blob-dir', blobs, '--output', tarFile]);
  const x = path.join(dir, 'x');
  fs.mkdirSync(x);
  sh('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', tarFile, '-C', x]);
  const tarDiffs = diffTrees(srcRecords, treeRecords(x)).filter((d) => !d.startsWith('/:'));
  assert.equal(tarDiffs, [], `${name}: tar output differs`);
  return { boot, blobs };
}

for (const v of ['5', '6']) {
  for (const c of ['none', 'lz4_block', 'zstd', 'gzip']) {
    test(`dir-rafs v${v} ${c}`, () => { roundTrip(`dir-v${v}-${c}`, ['--fs-version', v, '--compressor', c]); });
  }
  test(`dir-rafs v${v} sha256 digester`, () => { roundTrip(`dir-v${v}-sha256`, ['--fs-version', v, '--digester', 'sha256']); });
}

test('tar-rafs and targz-rafs give the same tree as the directory', () => {
  const tarFile = path.join(work, 'layer.tar');
  sh('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', src, '-cf', tarFile, '.']);
  roundTrip('tar-v6', ['--fs-version', '6'], tarFile, 'tar-rafs');
  roundTrip('tar-v5', ['--fs-version', '5'], tarFile, 'tar-rafs');
  sh('gzip', ['-k', tarFile]);
  roundTrip('targz-v6', ['--fs-version', '6'], `${tarFile}.gz`, 'targz-rafs');
});

test('blob-toc blobs and inlined bootstraps read back', () => {
  roundTrip('toc-v6', ['--fs-version', '6', '--features', 'blob-toc']);
  const dir = path.join(work, 'inline');
  fs.mkdirSync(dir);
  const blob = path.join(dir, 'data.blob');
  nydusImage(['create', '--blob-inline-meta', '--features', 'blob-toc', '--blob', blob, '--chunk-size', `0x${CHUNK.toString(16)}`, src]);
  nydusImage(['check', blob, '--verify-chunks']);
  const out = path.join(dir, 'out');
  nydusImage(['unpack', blob, '--output-dir', out]);
  assert.equal(diffTrees(srcRecords, treeRecords(out)), []);
});

test('builds are deterministic', () => {
  const a = path.join(work, 'det-a'), b = path.join(work, 'det-b');
  for (const d of [a, b]) {
    fs.mkdirSync(d);
    nydusImage(['create', '--bootstrap', path.join(d, 'boot'), '--blob-dir', d, '--compressor', 'zstd', src]);
  }
  assert.ok(fs.readFileSync(path.join(a, 'boot')).equals(fs.readFileSync(path.join(b, 'boot'))), 'bootstraps differ');
  const blobsA = fs.readdirSync(a).filter((f) => f !== 'boot').sort();
  assert.equal(blobsA, fs.readdirSync(b).filter((f) => f !== 'boot').sort());
});

test('output-json and dedup of identical chunks', () => {
  const d = path.join(work, 'json');
  fs.mkdirSync(d);
  nydusImage(['create', '--bootstrap', path.join(d, 'boot'), '--blob-dir', d, '--chunk-size', `0x${CHUNK.toString(16)}`, '--output-json', path.join(d, 'out.json'), src]);
  const j = JSON.parse(fs.readFileSync(path.join(d, 'out.json'), 'utf8'));
  assert.is(j.fs_version, '6');
  assert.is(j.compressor, 'zstd');
  assert.is(j.blobs.length, 1);
  assert.ok(fs.existsSync(path.join(d, j.blobs[0])));
  const st = JSON.parse(nydusImage(['stat', '--bootstrap', path.join(d, 'boot')]));
  assert.ok(st.unique_chunks < st.chunks, 'duplicate chunk was not deduplicated');
});

test('prefetch list from stdin: prefetch table filled, prefetched files first in the blob', () => {
  for (const v of ['5', '6']) {
    const d = path.join(work, `prefetch-v${v}`);
    fs.mkdirSync(d);
    const boot = path.join(d, 'boot');
    nydusImage(['create', '--fs-version', v, '--compressor', 'none', '--prefetch-policy', 'fs', '--bootstrap', boot, '--blob-dir', d, src], '/text/hello.txt\n/sizes\n/no/such/file\n');
    const table = JSON.parse(nydusImage(['inspect', boot, '-R', 'prefetch']));
    assert.is(table.length, 2, `v${v}: prefetch table ${JSON.stringify(table)}`);
    const blob = fs.readdirSync(d).find((f) => /^[0-9a-f]{64}$/.test(f))!;
    const head = fs.readFileSync(path.join(d, blob)).subarray(0, 64);
    assert.ok(head.equals(fs.readFileSync(path.join(src, 'text/hello.txt')).subarray(0, 64)), `v${v}: prefetched file is not first in the blob`);
    nydusImage(['check', boot, '--blob-dir', d, '--verify-chunks']);
  }
});

test('logging: --help lists the logger\'s levels; a build logs its warnings at the default level, not at a higher one, and to --log-file', () => {
  const help = nydusImage(['--help']).replace(/\s+/g, ' ');
  assert.match(help, `(choices: ${LOG_LEVELS.map((l) => `"${l}"`).join(', ')}, default: "info")`);
  const d = path.join(work, 'logging');
  fs.mkdirSync(d);
  const create = (...flags: string[]) => {
    const r = spawnSync(path.join(ROOT, 'bin/nydus-image'), [...flags, 'create', '--prefetch-policy', 'fs', '--bootstrap', path.join(d, 'boot'), '--blob-dir', d, src], { encoding: 'utf8', input: '/no/such/file\n' });
    assert.is(r.status, 0, r.stderr);
    return r.stderr;
  };
  assert.match(create(), /"level":40.*"pattern":"\/no\/such\/file".*prefetch pattern matches nothing/);
  assert.not.match(create('--log-level', 'error'), /prefetch pattern/);
  const logFile = path.join(d, 'build.log');
  assert.not.match(create('--log-file', logFile), /prefetch pattern/);
  assert.match(fs.readFileSync(logFile, 'utf8'), /prefetch pattern matches nothing/);
});

test.after(() => { if (!process.env.KEEP_TMP) fs.rmSync(work, { recursive: true, force: true }); });
test.run();
