/**
 * The builder's chunk pipeline (src/rafs/builder/chunk-pipeline.ts): worker
 * threads read, digest and compress chunks, and the image must be the very
 * same bytes as a build on one thread, for every compressor, digester,
 * batch mode, blob layout and source type, with duplicate chunks spread
 * over groups and workers.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { Compressor } from '../../src/common/compress';
import { DigestAlgorithm, initDigest, sha256hex } from '../../src/common/digest';
import { FILES_REPORT_STEP, createImage, type CreateOptions } from '../../src/rafs/builder/create';
import { hasSpareCore } from '../../src/rafs/builder/chunk-pipeline';
import { prepareBootstrapV6, prepareBootstrapV6Steps, writeBootstrapV6 } from '../../src/rafs/builder/bootstrap-v6';
import { treeFromDir } from '../../src/rafs/builder/source-dir';

const tmps: string[] = [];
const tmp = (p: string) => { const d = fs.mkdtempSync(path.join(os.tmpdir(), `nydus-pipe-${p}-`)); tmps.push(d); return d; };
test.after(() => { for (const d of tmps) fs.rmSync(d, { recursive: true, force: true }); });

let src = '';
let tarFile = '';

test.before(async () => {
  await initDigest();
  src = tmp('src');
  let seed = 3;
  const rnd = (n: number) => { const b = Buffer.alloc(n); for (let i = 0; i < n; i++) { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; b[i] = seed >>> 24; } return b; };
  const text = Buffer.from('some compressible text, repeated. '.repeat(40000));
  fs.mkdirSync(path.join(src, 'big'));
  // multi-chunk files (chunk size 64 KiB below): random, text, and one made of repeats of another's chunks
  const r = rnd(600_000);
  fs.writeFileSync(path.join(src, 'big/random'), r);
  fs.writeFileSync(path.join(src, 'big/text'), text.subarray(0, 1_000_000));
  fs.writeFileSync(path.join(src, 'big/repeats'), Buffer.concat([r.subarray(0, 0x10000), text.subarray(0, 0x10000), r.subarray(0, 0x10000), r.subarray(0x10000, 0x20000)]));
  // many small files, a third of them duplicates, some empty, one hardlinked, a symlink
  for (let i = 0; i < 900; i++) {
    const d = path.join(src, `small/d${i % 7}`);
    fs.mkdirSync(d, { recursive: true });
    const body = i % 3 === 0 ? Buffer.from(`dup ${i % 9}\n`.repeat(i % 50)) : i % 3 === 1 ? rnd(100 + (i * 37) % 5000) : text.subarray(i, i + 3000 + i);
    fs.writeFileSync(path.join(d, `f${i}`), body);
  }
  fs.linkSync(path.join(src, 'small/d0/f7'), path.join(src, 'small/hard'));
  fs.symlinkSync('d0/f7', path.join(src, 'small/sym'));
  tarFile = path.join(tmp('tar'), 'layer.tar');
  execFileSync('tar', ['-C', src, '-cf', tarFile, '.']);
});

const base = (o: Partial<CreateOptions>): CreateOptions => ({
  source: src, type: 'dir-rafs', fsVersion: 6, compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3, chunkSize: 0x10000,
  blobInlineMeta: false, blobToc: false, alignedChunk: false, repeatable: true, prefetchPatterns: [], ...o,
});

/** sha256 of every output file (bootstrap and blob) of one build. */
async function build(o: Partial<CreateOptions>): Promise<string[]> {
  const dir = tmp('out');
  const inline = o.blobInlineMeta;
  const r = await createImage(base({ blobDir: inline ? undefined : dir, bootstrap: inline ? undefined : path.join(dir, 'boot'), blob: inline ? path.join(dir, 'blob') : undefined, ...o }));
  const out = fs.readdirSync(dir).sort().map((f) => `${f === r.blobInfo?.blobId ? 'blob' : f} ${sha256hex(fs.readFileSync(path.join(dir, f)))}`);
  fs.rmSync(dir, { recursive: true, force: true });
  return out;
}

const cases: Array<[string, Partial<CreateOptions>]> = [
  ['v6 zstd', {}],
  ['v6 none', { compressor: Compressor.None }],
  ['v5 lz4_block', { fsVersion: 5, compressor: Compressor.Lz4Block }],
  ['v5 gzip sha256', { fsVersion: 5, compressor: Compressor.GZip, digester: DigestAlgorithm.Sha256 }],
  ['v6 zstd batch 0x8000', { batchSize: 0x8000 }],
  ['v6 none batch 0x4000', { compressor: Compressor.None, batchSize: 0x4000 }],
  ['v6 tar-rafs', { type: 'tar-rafs', source: '' }],
  ['v6 inline meta + blob-toc', { blobInlineMeta: true, blobToc: true }],
  ['v6 prefetch', { prefetchPatterns: ['/small/d3', '/big/text'] }],
];

for (const [name, o] of cases) {
  test(`pipeline: ${name} is byte for byte the one-thread build`, async () => {
    const opts = { ...o, source: o.type === 'tar-rafs' ? tarFile : src };
    const one = await build({ ...opts, threads: 0 });
    assert.equal(await build({ ...opts, threads: 2 }), one);
    assert.equal(await build({ ...opts, threads: 1 }), one);
    // (unset above: this thread does groups when the workers have their fill)
    // groups only in the workers, on this thread until a worker is loaded, and every other one (duplicates answered by either)
    for (const mode of ['0', 'ready', 'alternate']) {
      process.env.NYDUS_BUILDER_HERE = mode;
      try {
        assert.equal(await build({ ...opts, threads: 2 }), one, `NYDUS_BUILDER_HERE=${mode}`);
      } finally {
        delete process.env.NYDUS_BUILDER_HERE;
      }
    }
  });
}

test('pipeline: the v6 layout made in steps (while the chunks are worked on) is the one made at once, and the bootstrap made from it the same', () => {
  const root = treeFromDir(src);
  const key = { chunkSize: 0x10000, explicitUidGid: false, prefetch: [], blobCount: 0 };
  const steps = prepareBootstrapV6Steps(root, key);
  let n = 0;
  let r = steps.next();
  for (; !r.done; r = steps.next()) n++;
  assert.ok(n >= 3, `${n} steps for ~900 files`);
  assert.ok(r.value.layout, 'laid out');
  const opts = { chunkSize: 0x10000, compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3, explicitUidGid: false, blobs: [], prefetch: [], extraFlags: 0 };
  const plain = writeBootstrapV6(root, opts);
  assert.equal(writeBootstrapV6(root, opts, r.value), plain);
  assert.equal(writeBootstrapV6(root, opts, prepareBootstrapV6(root, key)), plain);
});

test('pipeline: the main thread helps with groups only while /proc/loadavg counts at most one more running thread than cores', () => {
  assert.ok(hasSpareCore('0.54 0.96 1.13 2/345 12345\n', 2));
  assert.ok(hasSpareCore('4.10 3.00 2.00 1/80 99\n', 2));
  assert.ok(hasSpareCore('0.54 0.96 1.13 3/345 12345\n', 2));
  assert.not.ok(hasSpareCore('0.54 0.96 1.13 4/345 12345\n', 2));
  assert.not.ok(hasSpareCore('7.01 6.50 5.00 10/190 8697\n', 8));
  // not that format: as on a free machine
  assert.ok(hasSpareCore('', 2));
  assert.ok(fs.existsSync('/proc/loadavg') ? /^\S+ \S+ \S+ \d+\//.test(fs.readFileSync('/proc/loadavg', 'latin1')) : true, 'this machine\'s /proc/loadavg has the count');
});

test('pipeline: onFiles is told the files found, every FILES_REPORT_STEP of a walk and the total at the end', async () => {
  const s = tmp('count');
  const n = FILES_REPORT_STEP * 2 + 5;
  for (let i = 0; i < n; i++) fs.writeFileSync(path.join(s, `f${i}`), `${i}`);
  fs.writeFileSync(path.join(s, 'empty'), '');
  fs.mkdirSync(path.join(s, 'dir'));
  for (const threads of [1, 0]) {
    const calls: number[] = [];
    const out = tmp('count-out');
    const r = await createImage(base({ source: s, blobDir: out, bootstrap: path.join(out, 'boot'), threads, onFiles: (k) => calls.push(k) }));
    assert.equal(r.stats.files, n + 1);
    // a walk (workers, no prefetch list) reports as it goes; otherwise the list is known at once
    assert.equal(calls, threads ? [FILES_REPORT_STEP, FILES_REPORT_STEP * 2, n + 1] : [n + 1]);
  }
});

test('pipeline: a file that vanishes after the walk fails the build and leaves no temporary blob', async () => {
  const s = tmp('vanish');
  fs.writeFileSync(path.join(s, 'a'), 'a'.repeat(100_000));
  fs.writeFileSync(path.join(s, 'b'), 'b'.repeat(100));
  const out = tmp('vanish-out');
  // remove `a` once the tree is read (the walk's last report, before its chunks are read): files are opened by path
  const onFiles = (n: number) => { if (n === 2) fs.rmSync(path.join(s, 'a')); };
  const p = createImage(base({ source: s, blobDir: out, bootstrap: path.join(out, 'boot'), threads: 2, onFiles }));
  await p.then(() => assert.unreachable('build succeeded'), (e: Error) => assert.match(e.message, /ENOENT|no such file/i));
  assert.equal(fs.readdirSync(out).filter((f) => f.endsWith('.tmp')), []);
});

test('pipeline: a chunk worker stores what compress() makes of each chunk (zstd in place, raw when it does not shrink), with its digest', async () => {
  const { ChunkWork } = await import('../../src/rafs/builder/chunk-work');
  const { compress } = await import('../../src/common/compress');
  const { digest } = await import('../../src/common/digest');
  const { JobMode, RESULT_HEADER, ResultKind } = await import('../../src/rafs/builder/chunk-protocol');
  let seed = 11;
  const rnd = (n: number) => { const b = Buffer.alloc(n); for (let i = 0; i < n; i++) { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; b[i] = seed >>> 24; } return b; };
  const text = (n: number) => Buffer.from('chunk worker text '.repeat(Math.ceil(n / 18) + 1)).subarray(0, n);
  const parts = [rnd(1), text(1), text(100), rnd(4095), text(4096), rnd(0x10001), Buffer.concat([rnd(0x8000), text(0x8000)]), text(1 << 20), rnd(1 << 20)];
  const file = path.join(tmp('work'), 'data');
  fs.writeFileSync(file, Buffer.concat(parts));
  const jobs: number[] = [];
  let off = 0;
  for (const p of parts) { jobs.push(0, off, p.length, JobMode.Pack); off += p.length; }
  const w = new ChunkWork();
  for (let round = 0; round < 2; round++) {
    // the second round reuses the first answer's buffer and sees every chunk again: duplicates
    const ab = w.work({ compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3, files: [{ path: file, base: 0 }], jobs });
    const n = parts.length;
    const meta = new Uint32Array(ab, 0, RESULT_HEADER / 4 + n * 2);
    let pos = RESULT_HEADER + n * 8 + n * 32;
    parts.forEach((p, j) => {
      assert.equal(Buffer.from(ab, RESULT_HEADER + n * 8 + j * 32, 32), digest(DigestAlgorithm.Blake3, p), `digest of part ${j}`);
      const kind = meta[RESULT_HEADER / 4 + j * 2];
      const len = meta[RESULT_HEADER / 4 + j * 2 + 1];
      if (round === 1) { assert.equal([kind, len], [ResultKind.Duplicate, 0], `part ${j} again`); return; }
      const want = compress(Compressor.Zstd, p);
      assert.equal(kind, want.compressed ? ResultKind.Compressed : ResultKind.Uncompressible, `kind of part ${j}`);
      assert.ok(Buffer.from(ab, pos, len).equals(want.data), `stored bytes of part ${j}`);
      pos += len;
    });
    w.recycle(ab);
  }
});

test.run();
