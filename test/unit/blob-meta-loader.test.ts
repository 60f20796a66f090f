/**
 * v6 images whose bootstrap carries no chunk table: the chunk infos come from
 * each blob's blob.meta, read through the backend at mount (ci table +
 * header, blob.digest through the ToC), written to the cache work_dir in
 * upstream's `<id>.blob.meta` / `.blob.digest` form and used from there on
 * the next mount, with no backend request.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Compressor } from '../../src/common/compress';
import { DigestAlgorithm, initDigest } from '../../src/common/digest';
import { parseNydusdConfig } from '../../src/common/config';
import type { RequestContext, ReadPiece } from '../../src/common/filesystem';
import { createImage } from '../../src/rafs/builder/create';
import { createRafsInstance } from '../../src/service/service';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'blob-meta-'));
const ctx: RequestContext = { uid: 0, gid: 0, pid: 0, unique: 1n };

function piecesToBuffer(pieces: ReadPiece[]): Buffer {
  return Buffer.concat(pieces.map((p) => {
    if (Buffer.isBuffer(p)) return p;
    const b = Buffer.alloc(p.length);
    fs.readSync(p.fd, b, 0, p.length, p.position);
    return b;
  }));
}

test.after(() => fs.rmSync(work, { recursive: true, force: true }));

test('v6 without a bootstrap chunk table: blob.meta fetched through the backend, cached in work_dir, reused offline', async () => {
  await initDigest();
  const src = path.join(work, 'src');
  fs.mkdirSync(src);
  const files: Record<string, Buffer> = {};
  for (let i = 0; i < 5; i++) {
    files[`f${i}`] = Buffer.from(`file ${i} `.repeat(3000 + i * 777));
    fs.writeFileSync(path.join(src, `f${i}`), files[`f${i}`]);
  }
  const blobs = path.join(work, 'blobs');
  fs.mkdirSync(blobs);
  const boot = path.join(work, 'image.boot');
  const r = await createImage({
    source: src, type: 'dir-rafs', fsVersion: 6, compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3,
    chunkSize: 0x4000, bootstrap: boot, blobDir: blobs, blobInlineMeta: false, blobToc: true,
    alignedChunk: false, repeatable: true, prefetchPatterns: [],
  });
  // drop the chunk table: s_chunk_table_size (u64 at 0x4a0) = 0
  const b = Buffer.from(r.bootstrap);
  assert.ok(b.readBigUInt64LE(0x4a0) > 0n, 'the builder wrote a chunk table');
  b.writeBigUInt64LE(0n, 0x4a0);
  const noTable = path.join(work, 'notable.boot');
  fs.writeFileSync(noTable, b);

  const cacheDir = path.join(work, 'cache');
  const cfgFor = (dir: string) => parseNydusdConfig(JSON.stringify({
    version: 2, backend: { type: 'localfs', localfs: { dir } },
    cache: { type: 'blobcache', filecache: { work_dir: cacheDir } }, rafs: { validate: true },
  }));
  const readAll = async (inst: Awaited<ReturnType<typeof createRafsInstance>>) => {
    for (const [name, want] of Object.entries(files)) {
      const e = await inst.fs.lookup(ctx, 1n, Buffer.from(name));
      const got = piecesToBuffer(await inst.fs.read!(ctx, e.ino, 0n, 0, want.length + 10));
      assert.ok(got.equals(want), `${name} content`);
    }
  };
  const inst = await createRafsInstance('/m1', noTable, cfgFor(blobs));
  try {
    await readAll(inst);
    assert.ok((inst.backend?.read_count ?? 0) >= 2, 'blob.meta and data came through the backend');
  } finally { await inst.close(); }
  const blobId = fs.readdirSync(blobs).find((f) => /^[0-9a-f]{64}$/.test(f))!;
  assert.ok(fs.existsSync(path.join(cacheDir, `${blobId}.blob.meta`)), 'blob.meta cached');
  assert.ok(fs.existsSync(path.join(cacheDir, `${blobId}.blob.digest`)), 'blob.digest cached');

  // second mount: the backend directory is gone; blob.meta and data come from the cache
  const inst2 = await createRafsInstance('/m2', noTable, cfgFor(path.join(work, 'nowhere')));
  try {
    await readAll(inst2);
    assert.is(inst2.backend?.read_count, 0, 'no backend request at all');
  } finally { await inst2.close(); }

  // a fresh cache and no backend: the mount still comes up; reads fail with EIO rather than hang
  const cfgDown = parseNydusdConfig(JSON.stringify({
    version: 2, backend: { type: 'localfs', localfs: { dir: path.join(work, 'nowhere') } },
    cache: { type: 'blobcache', filecache: { work_dir: path.join(work, 'cache2') } },
  }));
  const inst3 = await createRafsInstance('/m3', noTable, cfgDown);
  try {
    const e = await inst3.fs.lookup(ctx, 1n, Buffer.from('f0'));
    try {
      await inst3.fs.read!(ctx, e.ino, 0n, 0, 100);
      assert.unreachable('read without blob.meta');
    } catch (err) {
      assert.is((err as { code?: string }).code, 'EIO');
      assert.match((err as Error).message, /blob meta|blob\.meta|chunk/);
    }
  } finally { await inst3.close(); }
});

test.run();
