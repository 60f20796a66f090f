/**
 * Storage layers (architecture-anchors §6): localfs backend, persisted chunk
 * map (rafs-spec §4.5), blobcache/filecache, and the BlobDevice factory.
 * Images are built with the project's builder (v6 zstd, and v5 unaligned).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Compressor } from '../../src/common/compress';
import { DigestAlgorithm, initDigest } from '../../src/common/digest';
import { ErrnoError } from '../../src/common/errno';
import { localfsDirConfig, parseNydusdConfig, type ConfigV2 } from '../../src/common/config';
import { createImage } from '../../src/rafs/builder/create';
import { loadRafs } from '../../src/rafs/metadata/super';
import type { BlobInfo, ChunkInfo } from '../../src/rafs/metadata/types';
import { BlobFile } from '../../src/storage/blob/blob-file';
import { readChunk as readChunkSync } from '../../src/storage/blob/chunk-reader';
import type { BlobBackend } from '../../src/storage/backend/backend';
import { ChunkDirectory, DirectoryBuild, mergeRuns } from '../../src/storage/blob/chunk-directory';
import { TokenBucket } from '../../src/storage/cache/prefetcher';
import { LOCALFS_DIRECT_ALIGN, LocalFsBackend } from '../../src/storage/backend/localfs';
import { ChunkMap, CHUNK_MAP_HEADER_SIZE } from '../../src/storage/cache/chunk-map';
import { FileCache, REFETCH_LIMIT, cacheFileNames } from '../../src/storage/cache/filecache';
import { createBlobDevice, StorageDevice } from '../../src/storage/factory';
import { closeDecodePool, decodeWorkersOnline } from '../../src/storage/blob/decode-pool';
import { RafsFs } from '../../src/rafs/fs';
import type { BlobDevice } from '../../src/storage/blob/device';
import { fileCacheUsers } from '../../src/storage/cache/manager';
import { fetchRegion } from '../../src/storage/cache/region';
import { DIRECT_ALIGN, planWrites } from '../../src/storage/cache/direct-write';
import { chunkArena, enableChunkArena } from '../../src/storage/blob/chunk-arena';
import { isAligned } from '../../src/common/libc';

const ROOT = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-storage-'));
let n = 0;
const tmp = (name: string) => fs.mkdtempSync(path.join(ROOT, `${name}-${n++}-`));
/** Every localfs backend a test makes, closed after the last test (caches and devices do not own the ones they are given). */
const backends: LocalFsBackend[] = [];
const localfs = (...a: ConstructorParameters<typeof LocalFsBackend>) => { const b = new LocalFsBackend(...a); backends.push(b); return b; };

interface Img {
  blobDir: string;
  blobPath: string;
  info: BlobInfo;
  chunks: ChunkInfo[];
  /** expected uncompressed bytes by chunk index */
  expect: Map<number, Buffer>;
}

/** Deterministic, compressible but not trivial file content. */
function content(seed: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  let x = seed * 2654435761 >>> 0;
  for (let i = 0; i < len; i++) {
    if (i % 64 === 0) x = (x * 1103515245 + 12345) >>> 0;
    b[i] = 97 + ((x >>> (i % 24)) % 26);
  }
  return b;
}

/** An image of the three test files, or of `files` (name -> content) when given. */
async function build(fsVersion: 5 | 6, compressor: Compressor, files?: Record<string, Buffer>): Promise<Img> {
  const src = tmp('src');
  if (files) {
    for (const [name, data] of Object.entries(files)) fs.writeFileSync(path.join(src, name), data);
  } else {
    fs.writeFileSync(path.join(src, 'a'), content(1, 150_000));
    fs.writeFileSync(path.join(src, 'b'), content(2, 70_001));
    fs.mkdirSync(path.join(src, 'd'));
    fs.writeFileSync(path.join(src, 'd', 'c'), content(3, 5_000));
  }
  const blobDir = tmp('blobs');
  const r = await createImage({
    source: src, type: 'dir-rafs', fsVersion, compressor, digester: DigestAlgorithm.Blake3, chunkSize: 0x10000,
    blobDir, blobInlineMeta: false, blobToc: false, alignedChunk: false, repeatable: true, prefetchPatterns: [],
  });
  const sb = loadRafs(r.bootstrap);
  const info = sb.blobs[0];
  const seen = new Map<number, ChunkInfo>();
  for (const c of sb.chunkTable()) if (!seen.has(c.index)) seen.set(c.index, c);
  const chunks = [...seen.values()].sort((a, b) => a.index - b.index);
  const bf = BlobFile.open(r.blobPath!);
  const expect = new Map<number, Buffer>();
  try {
    for (const c of chunks) expect.set(c.index, readChunkSync(bf, c, info, { validate: true }));
  } finally { bf.close(); }
  return { blobDir, blobPath: r.blobPath!, info, chunks, expect };
}

/** A backend wrapper counting reads. */
class Counting implements BlobBackend {
  readonly type = 'counting';
  reads = 0;
  constructor(readonly inner: BlobBackend) {}
  read(id: string, off: number, len: number) { this.reads++; return this.inner.read(id, off, len); }
  close() { return this.inner.close(); }
}

const isErr = (code: string, re?: RegExp) => (e: unknown) => e instanceof ErrnoError && e.code === code && (!re || re.test(e.message));

async function rejectsWith(p: Promise<unknown>, code: string, re?: RegExp): Promise<ErrnoError> {
  try {
    await p;
  } catch (e) {
    assert.ok(isErr(code, re)(e), `expected ${code}${re ? ` matching ${re}` : ''}, got ${(e as Error).message}`);
    return e as ErrnoError;
  }
  assert.unreachable(`expected ${code}`);
  throw new Error('unreachable');
}

let V6: Img;
let V5: Img;
let RAW: Img;

test.before(async () => {
  await initDigest();
  V6 = await build(6, Compressor.Zstd);
  V5 = await build(5, Compressor.Lz4Block);
  RAW = await build(6, Compressor.None);
});

test.after(async () => {
  await Promise.all(backends.map((b) => b.close()));
  fs.rmSync(ROOT, { recursive: true, force: true });
});

test('image sanity: compressed chunks, several per blob', () => {
  assert.ok(V6.chunks.length >= 5, `${V6.chunks.length} chunks`);
  assert.ok(V6.chunks.some((c) => c.compressed));
  assert.is(V6.info.chunkCount, V6.chunks.length);
  // v5 unaligned: some chunk starts off a 4K boundary
  assert.ok(V5.chunks.some((c) => c.uncompressedOffset % 4096 !== 0));
});

test('localfs: reads, short read, alt_dirs, blob_file, hostile ids', async () => {
  const whole = fs.readFileSync(V6.blobPath);
  const id = V6.info.blobId;
  const b = localfs({ blob_file: '', dir: V6.blobDir, alt_dirs: [] });
  assert.equal(await b.read(id, 0, 100), whole.subarray(0, 100));
  assert.equal(await b.read(id, 1234, 4000), whole.subarray(1234, 5234));
  assert.is(await b.size(id), whole.length);
  await rejectsWith(b.read(id, whole.length - 10, 20), 'EIO', new RegExp(`short read from blob ${id}.*range ${whole.length - 10}\\+20`));
  await rejectsWith(b.read('0'.repeat(64), 0, 1), 'ENOENT', /not found/);
  for (const bad of ['../x', 'a/b', '.', '..', '', 'x\0y']) await rejectsWith(b.read(bad, 0, 1), 'EINVAL', /invalid blob id/);
  await rejectsWith(b.read(id, -1, 1), 'EINVAL');
  await b.close();
  await rejectsWith(b.read(id, 0, 1), 'EIO', /closed/);

  // alt_dirs: the primary dir lacks the blob (an empty file does not count)
  const empty = tmp('empty');
  fs.writeFileSync(path.join(empty, id), '');
  const alt = localfs({ blob_file: '', dir: empty, alt_dirs: [tmp('nothing'), V6.blobDir] });
  assert.is(await alt.blobPath(id), path.join(V6.blobDir, id));
  assert.equal(await alt.read(id, 10, 10), whole.subarray(10, 20));
  await alt.close();

  // blob_file: every id maps to the file
  const bf = localfs({ blob_file: V6.blobPath, dir: '' });
  assert.equal(await bf.read('anything', 0, 8), whole.subarray(0, 8));
  await rejectsWith(bf.read('../etc/passwd', 0, 8), 'EINVAL');
  await bf.close();
});

test('chunk map: header bytes, MSB-first bits, persistence, reset of bad files', async () => {
  const dir = tmp('map');
  const file = path.join(dir, 'x.chunk_map');
  const m = await ChunkMap.open(file, 11);
  assert.is(fs.statSync(file).size, CHUNK_MAP_HEADER_SIZE + 2);
  await m.setReady(0);
  await m.setReady(3);
  await m.setReady(10);
  await m.close();
  let raw = fs.readFileSync(file);
  assert.equal([...raw.subarray(0, 16)], [0x50, 0x41, 0x4d, 0x42, 1, 0, 0, 0, 0x50, 0x41, 0x4d, 0x43, 0, 0, 0, 0]);
  assert.ok(raw.subarray(16, CHUNK_MAP_HEADER_SIZE).every((b) => b === 0));
  assert.equal([...raw.subarray(CHUNK_MAP_HEADER_SIZE)], [0b1001_0000, 0b0010_0000]);

  const m2 = await ChunkMap.open(file, 11);
  assert.ok(m2.isReady(0) && m2.isReady(3) && m2.isReady(10));
  assert.not.ok(m2.isReady(1));
  assert.is(m2.ready, 3);
  assert.throws(() => m2.isReady(11), isErr('EINVAL'));
  for (let i = 0; i < 11; i++) await m2.setReady(i);
  assert.ok(m2.allReady);
  await m2.close();
  raw = fs.readFileSync(file);
  assert.is(raw.readUInt32LE(12), 0x4d4d4150);
  assert.equal([...raw.subarray(CHUNK_MAP_HEADER_SIZE)], [0xff, 0b1110_0000]);

  // clearing a bit drops all_ready
  const m3 = await ChunkMap.open(file, 11);
  assert.ok(m3.allReady);
  await m3.clearReady(4);
  await m3.close();
  raw = fs.readFileSync(file);
  assert.is(raw.readUInt32LE(12), 0);
  assert.equal([...raw.subarray(CHUNK_MAP_HEADER_SIZE)], [0b1111_0111, 0b1110_0000]);

  // wrong size (chunk count changed) or garbage header → start empty
  const m4 = await ChunkMap.open(file, 20);
  assert.is(m4.ready, 0);
  await m4.close();
  assert.is(fs.statSync(file).size, CHUNK_MAP_HEADER_SIZE + 3);
  fs.writeFileSync(file, Buffer.alloc(CHUNK_MAP_HEADER_SIZE + 3, 0xaa));
  const m5 = await ChunkMap.open(file, 20);
  assert.is(m5.ready, 0);
  await m5.close();
  assert.is(fs.readFileSync(file).readUInt32LE(0), 0x424d4150);
});

test('filecache: fill writes decompressed chunks at uncompressed offsets and an exact chunk_map', async () => {
  for (const img of [V6, V5]) {
    const work = tmp('work');
    const be = new Counting(localfs({ blob_file: '', dir: img.blobDir }));
    const fc = new FileCache({ workDir: work, backend: be, validate: true });
    for (const c of img.chunks) assert.equal(await fc.readChunk(img.info, c), img.expect.get(c.index));
    assert.is(be.reads, img.chunks.length);
    // reading again is served from the cache
    for (const c of img.chunks) assert.equal(await fc.readChunk(img.info, c), img.expect.get(c.index));
    assert.is(be.reads, img.chunks.length);
    await fc.close();

    const names = cacheFileNames(work, img.info.blobId);
    assert.is(names.data, path.join(work, `${img.info.blobId}.blob.data`));
    assert.is(names.chunkMap, path.join(work, `${img.info.blobId}.blob.data.chunk_map`));
    const data = fs.readFileSync(names.data);
    for (const c of img.chunks) assert.equal(data.subarray(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize), img.expect.get(c.index));
    const map = fs.readFileSync(names.chunkMap);
    const cnt = img.chunks.length;
    assert.is(map.length, 4096 + Math.ceil(cnt / 8));
    assert.is(map.readUInt32LE(0), 0x424d4150);
    assert.is(map.readUInt32LE(4), 1);
    assert.is(map.readUInt32LE(8), 0x434d4150);
    assert.is(map.readUInt32LE(12), 0x4d4d4150);
    for (let i = 0; i < cnt; i++) assert.ok(map[4096 + (i >> 3)] & (0x80 >> (i & 7)), `bit ${i}`);
  }
});

test('filecache: partial fill bitmap, restart keeps the cache without touching the backend', async () => {
  const work = tmp('work');
  const be = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const fc = new FileCache({ workDir: work, backend: be, validate: false });
  await fc.readChunk(V6.info, V6.chunks[1]);
  await fc.readChunk(V6.info, V6.chunks[3]);
  await fc.close();
  const map = fs.readFileSync(cacheFileNames(work, V6.info.blobId).chunkMap);
  assert.is(map.readUInt32LE(12), 0);
  assert.is(map[4096], 0b0101_0000);

  const be2 = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const fc2 = new FileCache({ workDir: work, backend: be2, validate: true });
  assert.equal(await fc2.readChunk(V6.info, V6.chunks[1]), V6.expect.get(V6.chunks[1].index));
  assert.equal(await fc2.readChunk(V6.info, V6.chunks[3]), V6.expect.get(V6.chunks[3].index));
  assert.is(be2.reads, 0);
  assert.equal(await fc2.readChunk(V6.info, V6.chunks[0]), V6.expect.get(V6.chunks[0].index));
  assert.is(be2.reads, 1);
  await fc2.close();
});

test('filecache: single flight — concurrent reads of one chunk fetch once', async () => {
  const be = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const fc = new FileCache({ workDir: tmp('work'), backend: be, validate: true });
  const c = V6.chunks[2];
  const all = await Promise.all(Array.from({ length: 8 }, () => fc.readChunk(V6.info, c)));
  assert.is(be.reads, 1);
  for (const d of all) assert.equal(d, V6.expect.get(c.index));
  await fc.close();
});

test('filecache: corrupted blob data → EIO with validation, never cached', async () => {
  const dir = tmp('badblob');
  const blob = Buffer.from(fs.readFileSync(V6.blobPath));
  // an uncompressed-or-compressed chunk whose stored bytes we can flip
  const c = V6.chunks[1];
  blob[c.compressedOffset + Math.floor(c.compressedSize / 2)] ^= 0x20;
  fs.writeFileSync(path.join(dir, V6.info.blobId), blob);
  const work = tmp('work');
  const fc = new FileCache({ workDir: work, backend: localfs({ blob_file: '', dir }), validate: true });
  await rejectsWith(fc.readChunk(V6.info, c), 'EIO', new RegExp(`blob ${V6.info.blobId} chunk ${c.index}`));
  assert.not.ok(await fc.isReady(V6.info, c));
  // other chunks are fine
  assert.equal(await fc.readChunk(V6.info, V6.chunks[0]), V6.expect.get(V6.chunks[0].index));
  // a retry fails again (nothing was cached)
  await rejectsWith(fc.readChunk(V6.info, c), 'EIO');
  await fc.close();
  const names = cacheFileNames(work, V6.info.blobId);
  const data = fs.readFileSync(names.data);
  assert.ok(data.subarray(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize).every((b) => b === 0), 'bad chunk not written');
  const map = fs.readFileSync(names.chunkMap);
  assert.not.ok(map[4096 + (c.index >> 3)] & (0x80 >> (c.index & 7)));
});

test('filecache: a stored-raw chunk with a flipped byte is caught by the digest check only', async () => {
  const dir = tmp('badraw');
  const blob = Buffer.from(fs.readFileSync(RAW.blobPath));
  const c = RAW.chunks[0];
  assert.not.ok(c.compressed);
  blob[c.compressedOffset + 100] ^= 0x01;
  fs.writeFileSync(path.join(dir, RAW.info.blobId), blob);
  const backend = localfs({ blob_file: '', dir });
  const fc = new FileCache({ workDir: tmp('work'), backend, validate: true });
  await rejectsWith(fc.readChunk(RAW.info, c), 'EIO', /digest mismatch/);
  assert.not.ok(await fc.isReady(RAW.info, c));
  await fc.close();
  // the same read without validation returns the damaged bytes: validation is what protects
  const lax = new FileCache({ workDir: tmp('work'), backend: localfs({ blob_file: '', dir }), validate: false });
  assert.not.equal(await lax.readChunk(RAW.info, c), RAW.expect.get(c.index));
  await lax.close();
});

test('filecache: corrupted cache file → EIO with validation, ready bit dropped, next read refetches', async () => {
  const work = tmp('work');
  const be = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const fc = new FileCache({ workDir: work, backend: be, validate: true });
  for (const c of V6.chunks) await fc.readChunk(V6.info, c);
  await fc.close();
  const names = cacheFileNames(work, V6.info.blobId);
  const c = V6.chunks[2];
  const fd = fs.openSync(names.data, 'r+');
  const one = Buffer.alloc(1);
  fs.readSync(fd, one, 0, 1, c.uncompressedOffset + 7);
  one[0] ^= 0xff;
  fs.writeSync(fd, one, 0, 1, c.uncompressedOffset + 7);
  fs.closeSync(fd);

  // without validation the cache is trusted as is
  const trusting = new FileCache({ workDir: work, backend: be, validate: false });
  const raw = await trusting.readChunk(V6.info, c);
  assert.not.equal(raw, V6.expect.get(c.index));
  await trusting.close();

  const before = be.reads;
  const fc2 = new FileCache({ workDir: work, backend: be, validate: true });
  await rejectsWith(fc2.readChunk(V6.info, c), 'EIO', /failed verification/);
  assert.is(be.reads, before);
  await fc2.close();
  const map = fs.readFileSync(names.chunkMap);
  assert.is(map.readUInt32LE(12), 0, 'all_ready cleared');
  assert.not.ok(map[4096 + (c.index >> 3)] & (0x80 >> (c.index & 7)), 'ready bit dropped');

  const fc3 = new FileCache({ workDir: work, backend: be, validate: true });
  assert.equal(await fc3.readChunk(V6.info, c), V6.expect.get(c.index));
  assert.is(be.reads, before + 1);
  await fc3.close();
  assert.is(fs.readFileSync(names.chunkMap).readUInt32LE(12), 0x4d4d4150);
});

test('filecache: hostile blob id and out-of-range chunks', async () => {
  const fc = new FileCache({ workDir: tmp('work'), backend: localfs({ blob_file: '', dir: V6.blobDir }), validate: true });
  await rejectsWith(fc.readChunk({ ...V6.info, blobId: '../escape' }, V6.chunks[0]), 'EINVAL', /invalid blob id/);
  await rejectsWith(fc.readChunk(V6.info, { ...V6.chunks[0], index: V6.info.chunkCount }), 'EIO', /out of range/);
  await rejectsWith(fc.readChunk(V6.info, { ...V6.chunks[0], uncompressedOffset: 2 ** 50 }), 'EIO', /out of range/);
  await fc.close();
});

function cfgFor(img: Img, extra: Partial<ConfigV2['cache']> = {}, work?: string): ConfigV2 {
  const c = localfsDirConfig(img.blobDir);
  if (work) c.cache.filecache!.work_dir = work;
  Object.assign(c.cache, extra);
  return c;
}

test('factory: blobcache device, prefetch, bounds, close', async () => {
  const work = tmp('work');
  const be = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const cfg = cfgFor(V6, { validate: true, prefetch: { enable: true, threads: 2, batch_size: 1 << 20, bandwidth_limit: 0, prefetch_all: false, stream_prefetch: false } }, work);
  const dev = createBlobDevice(cfg, [V6.info], { backend: be }) as StorageDevice;
  dev.prefetch(V6.chunks);
  dev.prefetch(V6.chunks); // duplicates are skipped once ready / shared in flight
  await dev.prefetchIdle();
  // sorted by blob offset and merged into batch_size (1 MiB) runs: one request per run
  const sorted = [...V6.chunks].sort((a, b) => a.compressedOffset - b.compressedOffset);
  assert.is(be.reads, mergeRuns(sorted, 1 << 20).length);
  assert.ok(be.reads < V6.chunks.length, 'neighbouring chunks share a request');
  const m = dev.cacheMetrics.toJSON();
  assert.is(m.prefetch_chunks_done, m.prefetch_chunks_total);
  assert.is(m.prefetch_unmerged_chunks, 2 * V6.chunks.length);
  for (const c of V6.chunks) assert.equal(await dev.readChunk(c), V6.expect.get(c.index));
  assert.is(be.reads, mergeRuns(sorted, 1 << 20).length, 'then every read is a cache hit');
  assert.is(fs.readFileSync(cacheFileNames(work, V6.info.blobId).chunkMap).readUInt32LE(12), 0x4d4d4150);
  await rejectsWith(dev.readChunk({ ...V6.chunks[0], blobIndex: 1 }), 'EIO', /blob index 1/);
  await rejectsWith(dev.readChunk({ ...V6.chunks[0], blobIndex: -1 }), 'EIO');
  await dev.close();
  await rejectsWith(dev.readChunk(V6.chunks[0]), 'EIO', /closed/);
});

test('factory: no cache reads + verifies every time; blobFile option; unsupported types', async () => {
  const cfg = parseNydusdConfig(JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: V6.blobDir } }, cache: { type: 'dummycache' }, rafs: { validate: true } }));
  const be = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const dev = createBlobDevice(cfg, [V6.info], { backend: be });
  const c = V6.chunks[0];
  assert.equal(await dev.readChunk(c), V6.expect.get(c.index));
  assert.equal(await dev.readChunk(c), V6.expect.get(c.index));
  assert.is(be.reads, 1, 'the second read is served from the in-memory chunk LRU (verified data only)');
  dev.prefetch!(V6.chunks); // no-op without a cache
  await dev.close();

  // corrupt blob through the no-cache path
  const dir = tmp('bad');
  const blob = Buffer.from(fs.readFileSync(V6.blobPath));
  blob[c.compressedOffset + 3] ^= 1;
  fs.writeFileSync(path.join(dir, 'renamed.blob'), blob);
  const dev2 = createBlobDevice(cfg, [V6.info], { blobFile: path.join(dir, 'renamed.blob') });
  await rejectsWith(dev2.readChunk(c), 'EIO', new RegExp(`chunk ${c.index}`));
  assert.equal(await dev2.readChunk(V6.chunks[1]), V6.expect.get(V6.chunks[1].index));
  await dev2.close();

  const ld = parseNydusdConfig(JSON.stringify({ version: 2, backend: { type: 'localdisk', localdisk: { device_path: '/dev/null' } } }));
  assert.throws(() => createBlobDevice(ld, [V6.info]), isErr('ENOSYS', /backend type localdisk not supported/));
  const fsc = parseNydusdConfig(JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: '/x' } }, cache: { type: 'fscache', fscache: { work_dir: '/x' } } }));
  assert.throws(() => createBlobDevice(fsc, [V6.info]), isErr('ENOSYS', /cache type fscache/));
});

test('shared blob cache: two mounts of images sharing a blob share one entry, one download, one chunk map', async () => {
  const work = tmp('shared-work');
  const beA = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const beB = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const devA = createBlobDevice(cfgFor(V6, {}, work), [V6.info], { backend: beA }) as StorageDevice;
  const devB = createBlobDevice(cfgFor(V6, { validate: true }, path.join(work, '.', '')), [V6.info], { backend: beB }) as StorageDevice;
  assert.is(fileCacheUsers().get(path.resolve(work)), 2, 'one cache object for the work_dir, two users');
  // the same chunks asked by both mounts at once: fetched once in all
  const got = await Promise.all(V6.chunks.flatMap((c) => [devA.readChunk(c), devB.readChunk(c)]));
  V6.chunks.forEach((c, i) => { assert.equal(got[2 * i], V6.expect.get(c.index)); assert.equal(got[2 * i + 1], V6.expect.get(c.index)); });
  assert.is(beA.reads + beB.reads, V6.chunks.length, 'each chunk downloaded once for both mounts');
  await devA.close();
  // B still reads (its entry stayed open) and nothing is refetched
  assert.equal(await devB.readChunk(V6.chunks[0]), V6.expect.get(V6.chunks[0].index));
  assert.is(beA.reads + beB.reads, V6.chunks.length);
  await devB.close();
  assert.is(fileCacheUsers().has(path.resolve(work)), false, 'closed with its last user');
  // readiness persisted once, for both: a new mount finds every chunk ready
  const beC = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const devC = createBlobDevice(cfgFor(V6, {}, work), [V6.info], { backend: beC }) as StorageDevice;
  for (const c of V6.chunks) assert.equal(await devC.readChunk(c), V6.expect.get(c.index));
  assert.is(beC.reads, 0);
  // exact blobcache metrics: every read a slow-path hit, then the fast path hands out file ranges
  const m = devC.cacheMetrics!.toJSON();
  assert.is(m.total, V6.chunks.length);
  assert.is(m.whole_hits, V6.chunks.length);
  assert.is(m.entries_count, V6.chunks.length);
  assert.equal(m.underlying_files, [`${V6.info.blobId}.blob.data`]);
  assert.is(m.store_path, path.resolve(work));
  // a chunk still held in memory is served from there, not read back from the cache file
  assert.is(devC.locate(V6.chunks[0]), undefined);
  await devC.close();
  // a new mount: its cache files are open once the device is prepared, and ready chunks are file ranges
  const devD = createBlobDevice(cfgFor(V6, {}, work), [V6.info], { backend: beC }) as StorageDevice;
  await devD.prepared;
  const loc = devD.locate(V6.chunks[0]);
  assert.ok(loc);
  assert.is(loc!.length, V6.chunks[0].uncompressedSize);
  assert.is(devD.cacheMetrics!.partialHits, 1);
  assert.is(beC.reads, 0);
  await devD.close();
});

test('filecache: bad data from the backend is downloaded again (bounded), never returned', async () => {
  const c = V6.chunks[0];
  const good = localfs({ blob_file: '', dir: V6.blobDir });
  let reads = 0;
  let flips = 1;
  const flaky = {
    type: 'test',
    read: async (id: string, off: number, len: number) => {
      reads++;
      const b = Buffer.from(await good.read(id, off, len));
      if (flips-- > 0) b[b.length >> 1] ^= 0x40;
      return b;
    },
    close: async () => {},
  } as unknown as BlobBackend;
  const fc = new FileCache({ workDir: tmp('refetch'), backend: flaky, validate: true });
  assert.equal(await fc.readChunk(V6.info, c), V6.expect.get(c.index));
  assert.is(reads, 2, 'one bad download, one good');
  await fc.close();
  // always bad: EIO after 1 + REFETCH_LIMIT downloads, nothing cached
  reads = 0;
  flips = 1000;
  const fc2 = new FileCache({ workDir: tmp('refetch2'), backend: flaky, validate: true });
  await rejectsWith(fc2.readChunk(V6.info, c), 'EIO');
  assert.is(reads, 1 + REFETCH_LIMIT);
  assert.not.ok(await fc2.isReady(V6.info, c));
  await fc2.close();
});

test('shared blob cache: a validating mount joining an unverified fetch still never gets wrong bytes', async () => {
  const work = tmp('shared-verify');
  const c = V6.chunks[0];
  // a backend that serves a corrupted chunk to the lax mount
  const lax: BlobBackend = {
    read: async (id: string, off: number, len: number) => {
      const b = Buffer.from(await localfs({ blob_file: '', dir: V6.blobDir }).read(id, off, len));
      if (!c.compressed) b[0] ^= 0xff;
      else b[b.length - 1] ^= 0xff;
      await new Promise((r) => setTimeout(r, 20));
      return b;
    },
    close: async () => {},
  } as unknown as BlobBackend;
  const devLax = createBlobDevice(cfgFor(V6, {}, work), [V6.info], { backend: lax }) as StorageDevice;
  const devStrict = createBlobDevice(cfgFor(V6, { validate: true }, work), [V6.info], { backend: localfs({ blob_file: '', dir: V6.blobDir }) }) as StorageDevice;
  const pLax = devLax.readChunk(c).then(() => 'ok', () => 'err');
  const strict = await devStrict.readChunk(c).then((d) => d.equals(V6.expect.get(c.index)!) ? 'right' : 'WRONG', () => 'eio');
  await pLax;
  assert.ok(strict === 'eio' || strict === 'right', `strict reader got ${strict}`);
  await devLax.close();
  await devStrict.close();
});

/** A synthetic chunk for directory arithmetic. */
const ck = (index: number, off: number, size: number): ChunkInfo => ({
  digest: Buffer.alloc(32), blobIndex: 0, index, flags: 0, compressed: false,
  compressedOffset: off, compressedSize: size, uncompressedOffset: off, uncompressedSize: size, fileOffset: 0, crc32: 0,
});

test('ChunkDirectory.region: blob order, batch limit, gap limit, stops at cached or in-flight chunks; mergeRuns', () => {
  const info = { ...V6.info, chunkCount: 8 };
  // index order differs from blob order on purpose; 5 is a duplicate record, 7 is out of range
  const recs = [ck(2, 2000, 1000), ck(0, 0, 1000), ck(1, 1000, 1000), ck(3, 3000, 1000), ck(4, 4000 + 200, 1000), ck(5, 6000, 1000), ck(5, 6000, 1000), ck(6, 7000, 1000), ck(9, 8000, 1)];
  const dir = new ChunkDirectory(info, recs);
  assert.is(dir.size, 7);
  assert.equal(dir.all().map((c) => c.index), [0, 1, 2, 3, 4, 5, 6]);
  const all = () => true;
  // limit 128 KiB: gap 200 <= 1024 allowed, 6000-5200=800 allowed
  assert.equal(dir.region(dir.get(0)!, 128 << 10, all).map((c) => c.index), [0, 1, 2, 3, 4, 5, 6]);
  // limit 3000 bytes from the first chunk's offset
  assert.equal(dir.region(dir.get(0)!, 3000, all).map((c) => c.index), [0, 1, 2]);
  // gap limit = limit/128: with limit 12800 the max gap is 100 bytes, so 4 (gap 200) is not merged
  assert.equal(dir.region(dir.get(0)!, 12800, all).map((c) => c.index), [0, 1, 2, 3]);
  // a cached chunk ends the run
  assert.equal(dir.region(dir.get(1)!, 128 << 10, (c) => c.index !== 3).map((c) => c.index), [1, 2]);
  // a caller record that disagrees with the directory is fetched alone
  assert.equal(dir.region(ck(1, 1001, 999), 128 << 10, all).map((c) => c.index), [1]);
  assert.equal(dir.region(ck(42, 0, 1), 128 << 10, all).map((c) => c.index), [42]);
  // mergeRuns: same rules over a sorted list
  assert.equal(mergeRuns(dir.all(), 3000).map((r) => r.map((c) => c.index)), [[0, 1, 2], [3], [4], [5, 6]]);
  assert.equal(mergeRuns([], 3000), []);
});

test('ChunkDirectory keeps every field of its records; records the columns cannot hold are kept as they are', () => {
  const info = { ...V6.info, chunkCount: 6 };
  const digest = (k: number) => Buffer.alloc(32, k + 1);
  const plain = { ...ck(0, 0, 100), digest: digest(0), flags: 0x1234, compressed: true, uncompressedOffset: 2 ** 40, uncompressedSize: 300, fileOffset: 2 ** 33, crc32: 0xdeadbeef };
  const batchA = { ...ck(1, 100, 50), digest: digest(1), batch: { index: 7, offset: 0, size: 900 } };
  const batchB = { ...ck(2, 100, 50), digest: digest(2), batch: { index: 7, offset: 400, size: 900 } };
  const shortDigest = { ...ck(3, 150, 10), digest: Buffer.alloc(20, 9) };
  const extra = { ...ck(4, 160, 10), digest: digest(4), note: 'x' } as ChunkInfo;
  const dir = new ChunkDirectory(info, [extra, batchB, plain, shortDigest, batchA]);
  assert.is(dir.size, 5);
  for (const c of [plain, batchA, batchB, shortDigest, extra]) assert.equal(dir.get(c.index), c, `chunk ${c.index}`);
  assert.is.not(dir.get(3), shortDigest, 'odd records are kept as copies (a walk may reuse its record object)');
  assert.equal(dir.get(3), shortDigest);
  // one record object filled again for each record (RafsSuper.chunkRecords of v6) gives the same directory
  function* reused(): Generator<ChunkInfo> {
    const r = {} as Record<string, unknown>;
    for (const c of [extra, batchB, plain, shortDigest, batchA]) {
      for (const k of Object.keys(r)) delete r[k];
      Object.assign(r, c, { digest: Buffer.from(c.digest) });
      const batch = (c as unknown as { batch?: object }).batch;
      if (batch) r.batch = { ...batch };
      yield r as unknown as ChunkInfo;
    }
  }
  const again = new ChunkDirectory(info, reused());
  for (const c of [plain, batchA, batchB, shortDigest, extra]) assert.equal(again.get(c.index), c, `reused: chunk ${c.index}`);
  assert.equal(again.region(batchB, 1 << 20, () => true).map((c) => c.index), [2, 1, 3, 4]);
  assert.is(dir.get(5), undefined);
  assert.equal(dir.all().map((c) => c.index), [0, 1, 2, 3, 4]);
  // a fresh object each time: callers may change what they get
  dir.get(0)!.fileOffset = 1;
  assert.is(dir.get(0)!.fileOffset, 2 ** 33);
  // the other member of a batch comes with either one, then the run goes on in blob order
  assert.equal(dir.region(batchB, 1 << 20, () => true).map((c) => c.index), [2, 1, 3, 4]);
  assert.equal(dir.region(batchA, 1 << 20, () => true).map((c) => c.index), [1, 2, 3, 4]);
  assert.equal(dir.region(plain, 1 << 20, (c) => c.index !== 2).map((c) => c.index), [0, 1, 3, 4], 'an unwanted batch member is skipped, not an end');
});

test('ChunkDirectory.buildAll: one walk over many blobs\' records (columns grown as they come), first record per index, strangers skipped', () => {
  const blobs = [0, 1, 2].map((i) => ({ ...V6.info, blobIndex: i, blobId: String(i).repeat(64), chunkCount: 500 }));
  const recs: ChunkInfo[] = [];
  // 3 blobs x 500 chunks, interleaved, in reverse compressed order, each listed twice (the second copy differs)
  for (let k = 499; k >= 0; k--) for (const b of [0, 1, 2]) {
    const c = { ...ck(k, k * 1000 + b, 1000), blobIndex: b, digest: Buffer.alloc(32, (k + b) & 0xff), uncompressedOffset: k * 4096, uncompressedSize: 900 + b };
    recs.push(c, { ...c, uncompressedSize: 1 });
  }
  recs.push({ ...ck(1, 0, 10), blobIndex: 7, digest: Buffer.alloc(32) }, { ...ck(600, 0, 10), blobIndex: 1, digest: Buffer.alloc(32) });
  let walks = 0;
  const dirs = ChunkDirectory.buildAll(blobs, { *[Symbol.iterator]() { walks++; yield* recs; } });
  assert.is(walks, 1);
  assert.is(dirs.length, 3);
  dirs.forEach((d, b) => {
    assert.is(d.size, 500);
    const all = d.all();
    assert.equal(all.map((c) => c.index), [...Array(500).keys()], `blob ${b} in blob order`);
    for (const k of [0, 63, 64, 65, 255, 499]) {
      const c = d.get(k)!;
      assert.equal([c.blobIndex, c.compressedOffset, c.uncompressedSize, c.digest[0]], [b, k * 1000 + b, 900 + b, (k + b) & 0xff], `blob ${b} chunk ${k}`);
    }
  });
  assert.equal(new ChunkDirectory(blobs[1], recs.filter((c) => c.blobIndex === 1)).all(), dirs[1].all(), 'the same as one blob built alone');
});

test('DirectoryBuild: slices of any size build what one walk builds', () => {
  const blobs = [0, 1].map((i) => ({ ...V6.info, blobIndex: i, blobId: String(i).repeat(64), chunkCount: 300 }));
  const recs: ChunkInfo[] = [];
  for (let k = 299; k >= 0; k--) for (const b of [0, 1]) recs.push({ ...ck(k, k * 100 + b, 100), blobIndex: b, digest: Buffer.alloc(32, k & 0xff) });
  const whole = ChunkDirectory.buildAll(blobs, recs).map((d) => d.all());
  for (const n of [1, 7, 256, 599, 600, 10_000]) {
    const build = new DirectoryBuild(blobs, recs);
    let steps = 0;
    while (!build.step(n)) steps++;
    assert.is(steps, Math.floor(recs.length / n), `slices of ${n}`);
    assert.equal(build.finish().map((d) => d.all()), whole, `slices of ${n}`);
  }
});

test('factory: a small image\'s chunk directory is built after the mount, in slices, in the one walk a miss would make; a large one waits for its first miss', async () => {
  const ticks = async (n: number) => { for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r)); };
  const cfg = parseNydusdConfig(JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: V6.blobDir } }, cache: { type: 'dummycache' } }));
  // records counted as the walk takes them
  const walk = (recs: ChunkInfo[]) => {
    const w = { walks: 0, taken: 0, chunks: () => { w.walks++; return { *[Symbol.iterator]() { for (const r of recs) { w.taken++; yield r; } } }; } };
    return w;
  };
  // the bench image's shape: built before anything is read
  const small = walk(V6.chunks);
  const dev = createBlobDevice(cfg, [V6.info], { backend: localfs({ blob_file: '', dir: V6.blobDir }), chunks: small.chunks }) as StorageDevice;
  await dev.prepared;
  await ticks(3);
  assert.equal([small.walks, small.taken], [1, V6.chunks.length], 'built without a read');
  for (const c of V6.chunks) assert.equal(await dev.readChunk(c), V6.expect.get(c.index));
  assert.is(small.walks, 1, 'reads use it: no second walk');
  assert.ok(dev.directory(0)!.size > 0);
  await dev.close();
  // more records than one slice: a miss meanwhile takes the rest of the same walk
  const info = { ...V6.info, chunkCount: 5000 };
  const recs = Array.from({ length: 5000 }, (_, k) => ck(k, k * 10, 10));
  const mid = walk(recs);
  const dev2 = createBlobDevice(cfg, [info], { backend: localfs({ blob_file: '', dir: V6.blobDir }), chunks: mid.chunks }) as StorageDevice;
  await dev2.prepared;
  await ticks(1);
  assert.ok(mid.taken > 0 && mid.taken < 5000, `one slice taken (${mid.taken})`);
  assert.is(dev2.directory(0)!.size, 5000);
  assert.equal([mid.walks, mid.taken], [1, 5000], 'finished in the same walk');
  await ticks(3);
  assert.is(mid.taken, 5000, 'the background walk stopped');
  await dev2.close();
  // a large image (beyond ~32k chunks) keeps the footprint of a mount small: built at the first miss
  const big = walk(V6.chunks);
  const dev3 = createBlobDevice(cfg, [{ ...V6.info, chunkCount: 40_000 }], { backend: localfs({ blob_file: '', dir: V6.blobDir }), chunks: big.chunks }) as StorageDevice;
  await dev3.prepared;
  await ticks(3);
  assert.is(big.walks, 0, 'nothing walked at mount');
  assert.equal(await dev3.readChunk(V6.chunks[0]), V6.expect.get(V6.chunks[0].index));
  assert.is(big.walks, 1, 'walked at the first miss');
  await dev3.close();
});

test('factory: the decode workers start right after the mount for an image of large compressed chunks, not for one of small files', async () => {
  await closeDecodePool();
  const cfg = parseNydusdConfig(JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: V6.blobDir } }, cache: { type: 'dummycache' } }));
  const settle = async (ms: number, until: () => boolean) => { for (const t0 = Date.now(); Date.now() - t0 < ms && !until();) await new Promise((r) => setTimeout(r, 20)); };
  // V6's chunks average ~37 KiB: decoded on the event loop, no thread started for them
  const small = createBlobDevice(cfg, [V6.info], { backend: localfs({ blob_file: '', dir: V6.blobDir }) }) as StorageDevice;
  await small.prepared;
  await settle(500, () => decodeWorkersOnline() > 0);
  assert.is(decodeWorkersOnline(), 0, 'no worker for small chunks');
  await small.close();
  // the same blob described as 1 MiB chunks: workers come up before any read
  const big = createBlobDevice(cfg, [{ ...V6.info, uncompressedSize: V6.info.chunkCount << 20 }], { backend: localfs({ blob_file: '', dir: V6.blobDir }) }) as StorageDevice;
  await big.prepared;
  await settle(10_000, () => decodeWorkersOnline() > 0);
  assert.ok(decodeWorkersOnline() > 0, 'workers started at mount');
  await big.close();
  assert.is(decodeWorkersOnline(), 0, 'stopped with the last device');
});

test('merged misses: one request fetches a miss and its uncached neighbours; they are then hits; a cached chunk splits the run', async () => {
  const be = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const dir = new ChunkDirectory(V6.info, V6.chunks);
  const sorted = [...dir.all()];
  const src = { backend: be, validate: true, directory: () => dir, batchSize: 1 << 20 };
  const fc = new FileCache({ workDir: tmp('merge') });
  assert.equal(await fc.readChunk(V6.info, sorted[0], src), V6.expect.get(sorted[0].index));
  assert.is(be.reads, 1);
  for (const c of sorted) assert.equal(await fc.readChunk(V6.info, c, src), V6.expect.get(c.index));
  assert.is(be.reads, 1, 'every neighbour came with the first request');
  await fc.close();

  const be2 = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const fc2 = new FileCache({ workDir: tmp('merge2') });
  const src2 = { ...src, backend: be2 };
  await fc2.readChunk(V6.info, sorted[2], src2); // fetches 2..end
  await fc2.prefetchRun(V6.info, sorted.slice(2), src2); // all cached or in flight: no request
  assert.is(be2.reads, 1);
  await fc2.readChunk(V6.info, sorted[0], src2); // 0..1 only: 2 is cached
  assert.is(be2.reads, 2);
  for (const c of sorted) assert.equal(await fc2.readChunk(V6.info, c, src2), V6.expect.get(c.index));
  assert.is(be2.reads, 2);
  await fc2.close();
});

test('merged misses: a bad chunk inside a merged request is downloaded again alone; its neighbours are served from the first request', async () => {
  const dir = new ChunkDirectory(V6.info, V6.chunks);
  const sorted = [...dir.all()];
  const bad = sorted[Math.floor(sorted.length / 2)];
  const at = bad.compressedOffset + Math.floor(bad.compressedSize / 2);
  const inner = localfs({ blob_file: '', dir: V6.blobDir });
  const ranges: Array<[number, number]> = [];
  let flipped = false;
  const flaky: BlobBackend = {
    type: 'registry',
    read: async (id: string, off: number, len: number) => {
      ranges.push([off, len]);
      const b = Buffer.from(await inner.read(id, off, len));
      if (!flipped && at >= off && at < off + len) { b[at - off] ^= 0x40; flipped = true; }
      return b;
    },
    close: () => inner.close(),
  };
  const fc = new FileCache({ workDir: tmp('merge-bad') });
  const src = { backend: flaky, validate: false, verifyFetched: true, directory: () => dir, batchSize: 1 << 20 };
  for (const c of sorted) assert.equal(await fc.readChunk(V6.info, c, src), V6.expect.get(c.index));
  assert.is(ranges.length, 2);
  assert.equal(ranges[1], [bad.compressedOffset, bad.compressedSize], 'the refetch asks for the bad chunk only');
  await fc.close();
  await inner.close();
});

test('merged misses are written behind as a run: its good chunks land at their offsets and are ready, a chunk that stays bad is not', async () => {
  const dir = new ChunkDirectory(V6.info, V6.chunks);
  const sorted = [...dir.all()];
  // the run's chunks are written together with the 4 KiB alignment padding between them
  assert.ok(sorted.some((c, k) => k > 0 && c.uncompressedOffset > sorted[k - 1].uncompressedOffset + sorted[k - 1].uncompressedSize), 'the image has padded chunks');
  const bad = sorted[1];
  const inner = localfs({ blob_file: '', dir: V6.blobDir });
  let reads = 0;
  const rotten: BlobBackend = {
    type: 'registry',
    read: async (id: string, off: number, len: number) => {
      reads++;
      const b = Buffer.from(await inner.read(id, off, len));
      // the bad chunk's bytes are wrong in every download
      if (bad.compressedOffset >= off && bad.compressedOffset < off + len) b[bad.compressedOffset - off] ^= 0x40;
      return b;
    },
    close: () => inner.close(),
  };
  const work = tmp('run-write');
  const fc = new FileCache({ workDir: work });
  const src = { backend: rotten, validate: false, verifyFetched: true, directory: () => dir, batchSize: 1 << 20 };
  await rejectsWith(fc.readChunk(V6.info, bad, src), 'EIO');
  const datas = await Promise.all(sorted.filter((c) => c !== bad).map((c) => fc.readChunk(V6.info, c, src)));
  datas.forEach((d, i) => assert.equal(d, V6.expect.get(sorted.filter((c) => c !== bad)[i].index)));
  await fc.close();
  const data = fs.readFileSync(cacheFileNames(work, V6.info.blobId).data);
  for (const c of sorted) {
    if (c === bad) continue;
    assert.ok(data.subarray(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize).equals(V6.expect.get(c.index)!), `chunk ${c.index} at its offset`);
  }
  // a new cache on the same files: every good chunk ready (no download), the bad one not
  const fc2 = new FileCache({ workDir: work });
  for (const c of sorted) assert.is(await fc2.isReady(V6.info, c), c !== bad, `chunk ${c.index} readiness`);
  const before = reads;
  for (const c of sorted) if (c !== bad) assert.equal(await fc2.readChunk(V6.info, c, src), V6.expect.get(c.index));
  assert.is(reads, before);
  await fc2.close();
  await inner.close();
});

test('merged misses are written behind in groups: a run\'s first chunks are ready while a later one is still being downloaded again', async () => {
  // 12 chunks of 64 KiB: the first group (512 KiB) and the rest are written apart
  const img = await build(6, Compressor.Zstd, { big: content(7, 12 << 16) });
  const dir = new ChunkDirectory(img.info, img.chunks);
  const sorted = [...dir.all()];
  assert.is(sorted.length, 12);
  const last = sorted[sorted.length - 1];
  const inner = localfs({ blob_file: '', dir: img.blobDir });
  let open!: () => void;
  const gate = new Promise<void>((r) => { open = r; });
  let reads = 0;
  const slow: BlobBackend = {
    type: 'registry',
    read: async (id: string, off: number, len: number) => {
      reads++;
      const b = Buffer.from(await inner.read(id, off, len));
      // the last chunk is bad in the merged request, and downloading it again waits for the gate
      if (reads === 1) b[last.compressedOffset - off] ^= 0x40;
      else await gate;
      return b;
    },
    close: () => inner.close(),
  };
  const fc = new FileCache({ workDir: tmp('run-groups') });
  const src = { backend: slow, validate: false, verifyFetched: true, directory: () => dir, batchSize: 4 << 20 };
  assert.equal(await fc.readChunk(img.info, sorted[0], src), img.expect.get(sorted[0].index));
  const until = async (what: string, ok: () => Promise<boolean>) => {
    for (const t0 = Date.now(); !(await ok());) {
      if (Date.now() - t0 > 5000) assert.unreachable(what);
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  await until('the first group never became ready', () => fc.isReady(img.info, sorted[0]));
  assert.is(reads, 2, 'the bad chunk is being downloaded again');
  for (const c of sorted.slice(0, 8)) assert.ok(await fc.isReady(img.info, c), `chunk ${c.index} of the first group ready`);
  assert.not.ok(await fc.isReady(img.info, last), 'the chunk downloaded again is not ready yet');
  open();
  assert.equal(await fc.readChunk(img.info, last, src), img.expect.get(last.index));
  await until('the last group never became ready', () => fc.isReady(img.info, last));
  await fc.close();
  await inner.close();
});

test('planWrites: whole-page chunks at page offsets go direct (aligned memory as is, other memory staged); short chunks and padding through the page cache', () => {
  const P = DIRECT_ALIGN;
  const a = Buffer.alloc(2 * P, 1); // aligned, whole pages
  const b = Buffer.alloc(P + 100, 2); // ends inside a page: padding follows
  const c = Buffer.alloc(P, 3); // whole page, memory not aligned: staged
  const d = Buffer.alloc(3 * P, 4); // aligned
  const e = Buffer.alloc(10, 5); // last chunk, short
  const offs = [0, 2 * P, 4 * P, 5 * P, 8 * P];
  const aligned = new Set<Buffer>([a, d]);
  const staged: Buffer[] = [];
  const zeros = (n: number) => Buffer.alloc(n);
  const groups = planWrites(offs, [a, b, c, d, e], zeros, {
    direct: true,
    aligned: (x) => aligned.has(x),
    stage: (x) => { const s = Buffer.from(x); staged.push(s); return s; },
  });
  assert.equal(groups.map((g) => [g.pos, g.direct, g.iov.map((x) => x.length)]), [
    [0, true, [2 * P]],
    [2 * P, false, [P + 100, P - 100]],
    [4 * P, true, [P, 3 * P]],
    [8 * P, false, [10]],
  ]);
  assert.is(groups[2].iov[0], staged[0]);
  assert.equal(groups[2].staged, staged);
  assert.ok(staged[0].equals(c));
  // the bytes each group writes are exactly the chunks and zero padding, at their offsets
  const file = Buffer.alloc(8 * P + 10, 0xee);
  for (const g of groups) Buffer.concat(g.iov).copy(file, g.pos);
  const want = Buffer.alloc(8 * P + 10, 0xee);
  [a, b, c, d, e].forEach((x, k) => x.copy(want, offs[k]));
  want.fill(0, 2 * P + P + 100, 4 * P);
  assert.ok(file.equals(want));
  // no staging memory: that chunk goes through the page cache, as a chunk at an unaligned offset does
  const g2 = planWrites([0, P, 2 * P + 1], [c, a, Buffer.alloc(P)], zeros, { direct: true, aligned: (x) => x === a, stage: () => undefined });
  assert.equal(g2.map((g) => [g.pos, g.direct, g.iov.length]), [[0, false, 1], [P, true, 1], [2 * P + 1, false, 1]]);
  // direct off: one buffered group, as before
  const g3 = planWrites(offs, [a, b, c, d, e], zeros, { direct: false, aligned: () => true, stage: () => undefined });
  assert.equal(g3.map((g) => [g.pos, g.direct, g.iov.length]), [[0, false, 6]]);
});

/**
 * Watch file I/O through O_DIRECT fds while `fn` runs: counts reads and
 * writes made through them, and with `refuse` rejects them with EINVAL (a
 * file system that takes O_DIRECT opens but not the I/O).
 */
async function directIo<T>(refuse: boolean, fn: (seen: { reads: number; writes: number }) => Promise<T>): Promise<T> {
  const probe = await fs.promises.open(path.join(ROOT, 'probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as Record<'read' | 'writev', (...a: unknown[]) => Promise<unknown>>;
  await probe.close();
  const orig = { read: proto.read, writev: proto.writev };
  const seen = { reads: 0, writes: 0 };
  const isDirect = (fd: number) => (parseInt(/flags:\s*(\d+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1], 8) & fs.constants.O_DIRECT) !== 0;
  for (const op of ['read', 'writev'] as const) {
    proto[op] = function (this: fs.promises.FileHandle, ...a: unknown[]) {
      if (isDirect(this.fd)) {
        if (op === 'read') seen.reads++; else seen.writes++;
        if (refuse) return Promise.reject(Object.assign(new Error(`EINVAL: invalid argument, ${op}`), { code: 'EINVAL' }));
      }
      return orig[op].apply(this, a);
    };
  }
  try { return await fn(seen); } finally { Object.assign(proto, orig); }
}

test('localfs: a read given an aligned window is read with O_DIRECT into it; a misfit window, a refusal or the blob\'s end fall back to the page cache', async () => {
  enableChunkArena(16 << 20, 1 << 20);
  const arena = chunkArena()!;
  const blob = fs.readFileSync(RAW.blobPath);
  const id = RAW.info.blobId;
  const windowFor = (start: number, length: number) => {
    const at = start - (start % LOCALFS_DIRECT_ALIGN);
    const buf = arena.alloc(Math.ceil((start + length) / LOCALFS_DIRECT_ALIGN) * LOCALFS_DIRECT_ALIGN - at)!;
    assert.ok(isAligned(buf, LOCALFS_DIRECT_ALIGN), 'arena slots are page aligned');
    return { buf, at, into: buf.subarray(start - at, start - at + length) };
  };
  try {
    // a range that starts and ends inside pages, and one running to the blob's end (no whole last page)
    for (const [start, length] of [[100, 70_000], [blob.length - 9_000, 9_000]]) {
      const be = localfs({ blob_file: '', dir: RAW.blobDir });
      const w = windowFor(start, length);
      const got = await directIo(false, async (seen) => {
        const b = await be.read(id, start, length, { into: w.into, window: { buf: w.buf, at: w.at } });
        assert.ok(seen.reads > 0, 'read with O_DIRECT');
        return b;
      });
      assert.is(got, w.into);
      assert.ok(got.equals(blob.subarray(start, start + length)));
      const inBlob = Math.min(w.buf.length, blob.length - w.at);
      assert.ok(w.buf.subarray(0, inBlob).equals(blob.subarray(w.at, w.at + inBlob)), 'the window holds blob bytes around the range');
      arena.release(w.buf);
      await be.close();
    }
    // a window that does not hold `into` where the range is: read through the page cache into `into`
    {
      const be = localfs({ blob_file: '', dir: RAW.blobDir });
      const w = windowFor(4096, 8192);
      const into = Buffer.alloc(8192);
      await directIo(false, async (seen) => {
        const b = await be.read(id, 4096, 8192, { into, window: { buf: w.buf, at: w.at } });
        assert.is(b, into);
        assert.is(seen.reads, 0);
      });
      assert.ok(into.equals(blob.subarray(4096, 4096 + 8192)));
      arena.release(w.buf);
      await be.close();
    }
    // refused at read time: the same bytes through the page cache, and no second try with O_DIRECT
    {
      const be = localfs({ blob_file: '', dir: RAW.blobDir });
      await directIo(true, async (seen) => {
        for (let k = 0; k < 2; k++) {
          const w = windowFor(5000, 20_000);
          const b = await be.read(id, 5000, 20_000, { into: w.into, window: { buf: w.buf, at: w.at } });
          assert.ok(b.equals(blob.subarray(5000, 25_000)));
          arena.release(w.buf);
        }
        assert.is(seen.reads, 1);
      });
      await be.close();
    }
    // turned off: never
    {
      const be = localfs({ blob_file: '', dir: RAW.blobDir }, { directReads: false });
      assert.is(be.directAlign, undefined);
      const w = windowFor(0, 8192);
      await directIo(false, async (seen) => {
        assert.ok((await be.read(id, 0, 8192, { into: w.into, window: { buf: w.buf, at: w.at } })).equals(blob.subarray(0, 8192)));
        assert.is(seen.reads, 0);
      });
      arena.release(w.buf);
      await be.close();
    }
  } finally {
    enableChunkArena(0);
  }
});

test('fetchRegion: only read-ahead requests of 1 MiB and more get an aligned window for direct reads (random readers keep the page cache)', async () => {
  enableChunkArena(32 << 20);
  try {
    const seen: Array<{ len: number; window?: { buf: Buffer; at: number }; into?: Buffer }> = [];
    // one chunk of 1 MiB, stored as it is, at an odd blob offset
    const big = Buffer.alloc(1 << 20);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
    const fake: ChunkInfo = { ...RAW.chunks[0], compressed: false, flags: 0, compressedOffset: 1000, compressedSize: big.length, uncompressedSize: big.length };
    const bigBlob = Buffer.concat([Buffer.alloc(1000), big]);
    // a backend that asks for windows and records what it is given
    const spy: BlobBackend = {
      type: 'spy', readsInto: true, directAlign: 4096,
      read: async (_id, off, len, opts) => {
        seen.push({ len, window: opts?.window, into: opts?.into });
        const out = opts?.into ?? Buffer.alloc(len);
        bigBlob.copy(out, 0, off, off + len);
        return out;
      },
      close: async () => {},
    };
    const info = { ...RAW.info, chunkCount: 1 };
    for (const readAhead of [false, true]) {
      const [p] = fetchRegion({ backend: spy, verify: false, readAhead }, info, [fake]);
      assert.ok((await p).equals(big));
      const r = seen.pop()!;
      if (!readAhead) assert.is(r.window, undefined, 'on demand: no window');
      else {
        assert.ok(r.window, 'read-ahead: a window');
        assert.is(r.window!.at, 0);
        assert.is(r.window!.buf.length, Math.ceil((1000 + big.length) / 4096) * 4096);
        assert.ok(isAligned(r.window!.buf, 4096));
        assert.is(r.into!.buffer, r.window!.buf.buffer);
        assert.is(r.into!.byteOffset, r.window!.buf.byteOffset + 1000);
      }
    }
  } finally {
    enableChunkArena(0);
  }
});

test('filecache with the chunk arena: read-ahead\'s whole-page chunks are written with O_DIRECT, the rest through the page cache; the file\'s bytes are the same; a refused direct write falls back', async () => {
  enableChunkArena(64 << 20, 1 << 20);
  try {
    for (const [img, refuse] of [[V6, false], [RAW, false], [V6, true]] as const) {
      const dir = new ChunkDirectory(img.info, img.chunks);
      const src = { backend: localfs({ blob_file: '', dir: img.blobDir }), validate: true, directory: () => dir, batchSize: 1 << 20 };
      // as a sequential reader's read-ahead fetches them (written direct), then read (served from the flights or the file)
      const fill = async (work: string, directWrites: boolean) => {
        const fc = new FileCache({ workDir: work, directWrites });
        const all = [...dir.all()];
        await Promise.all((await fc.fetchRun(img.info, all, src, { readAhead: true })).map((p) => p));
        for (const c of all) assert.equal(await fc.readChunk(img.info, c, src), img.expect.get(c.index));
        await fc.close();
        return fc.written;
      };
      const wd = tmp('direct');
      const wb = tmp('buffered');
      const direct = await directIo(refuse, () => fill(wd, true));
      const buffered = await fill(wb, false);
      assert.is(buffered.direct, 0);
      if (refuse) assert.is(direct.direct, 0, 'every direct write was refused and done again through the page cache');
      else {
        assert.ok(direct.direct > 0 && direct.buffered > 0, `both kinds (${JSON.stringify(direct)})`);
        assert.is(direct.direct % DIRECT_ALIGN, 0);
      }
      assert.is(direct.direct + direct.buffered, buffered.buffered, 'the same bytes written');
      const names = (w: string) => cacheFileNames(w, img.info.blobId);
      assert.ok(fs.readFileSync(names(wd).data).equals(fs.readFileSync(names(wb).data)), 'same cache file');
      assert.ok(fs.readFileSync(names(wd).chunkMap).equals(fs.readFileSync(names(wb).chunkMap)), 'same chunk map');
      // and it serves: a new cache over the direct-written files reads every chunk back, verified, with no download
      const counting = new Counting(src.backend);
      const fc = new FileCache({ workDir: wd });
      for (const c of dir.all()) assert.equal(await fc.readChunk(img.info, c, { ...src, backend: counting }), img.expect.get(c.index));
      assert.is(counting.reads, 0);
      await fc.close();
      await src.backend.close();
    }
    // chunks read on their own (random reads come back for the rest of a chunk through the file) and prefetched ones: through the page cache
    const dir = new ChunkDirectory(V6.info, V6.chunks);
    const src = { backend: localfs({ blob_file: '', dir: V6.blobDir }), validate: true, directory: () => dir, batchSize: 1 << 20 };
    for (const how of ['on demand', 'prefetch'] as const) {
      const fc = new FileCache({ workDir: tmp('not-direct'), directWrites: true });
      if (how === 'prefetch') await fc.prefetchRun(V6.info, [...dir.all()], src);
      else for (const c of dir.all()) await fc.readChunk(V6.info, c, src);
      await fc.close();
      assert.is(fc.written.direct, 0, how);
      assert.ok(fc.written.buffered > 0, how);
    }
  } finally {
    enableChunkArena(0);
  }
});

test('no-cache device: a miss brings its neighbours into memory (one request for the blob), bytes verified', async () => {
  const cfg = parseNydusdConfig(JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: V6.blobDir } }, cache: { type: '' }, rafs: { validate: true } }));
  const be = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const dev = createBlobDevice(cfg, [V6.info], { backend: be, chunks: () => V6.chunks });
  for (const c of V6.chunks) assert.equal(await dev.readChunk(c), V6.expect.get(c.index));
  assert.is(be.reads, 1);
  await dev.close();
});

test('prefetch bandwidth bucket: full at start, refills at the rate, charges at most 2x the rate', () => {
  let now = 0;
  const b = new TokenBucket(1000, () => now);
  assert.is(b.take(600), 0);
  assert.is(b.take(600), 200, '200 bytes short at 1000 B/s = 200 ms');
  now += 200;
  assert.is(b.take(0), 0);
  now += 10_000; // refill caps at the rate
  assert.is(b.take(1000), 0);
  assert.is(b.take(1_000_000), 2000, 'a huge job is charged 2x the rate: 2 s');
});

test('cache quota: least recently used blobs no mount uses are evicted whole; a blob in use never is; an evicted blob is fetched again', async () => {
  const work = tmp('quota');
  const be = new Counting(localfs({ blob_file: '', dir: V6.blobDir }));
  const be5 = new Counting(localfs({ blob_file: '', dir: V5.blobDir }));
  const size = (img: Img) => img.chunks.reduce((a, c) => a + Math.ceil(c.uncompressedSize / 4096) * 4096, 0) + 8192;
  // room for one of the two blobs, not both
  const quota = Math.max(size(V6), size(V5)) + 4096;
  const fc = new FileCache({ workDir: work, quota });
  const readAll = async (img: Img, backend: BlobBackend) => {
    for (const c of img.chunks) assert.equal(await fc.readChunk(img.info, c, { backend, validate: true }), img.expect.get(c.index));
  };
  const files = () => fs.readdirSync(work).sort();
  fc.retain(V6.info.blobId);
  await readAll(V6, be);
  await fc.release(V6.info.blobId);
  assert.ok(files().includes(`${V6.info.blobId}.blob.data`), 'under the quota: kept after release');
  fc.retain(V5.info.blobId);
  await readAll(V5, be5);
  await fc.quota!.evictSoon();
  assert.not.ok(files().some((f) => f.startsWith(V6.info.blobId)), 'the unused blob is evicted');
  assert.ok(files().includes(`${V5.info.blobId}.blob.data`), 'the blob in use stays');
  assert.ok(fc.quota!.bytes <= quota);
  // V6 comes back: fetched again, byte for byte; now V5 (released, least recently used) goes
  const before = be.reads;
  await fc.release(V5.info.blobId);
  fc.retain(V6.info.blobId);
  await readAll(V6, be);
  assert.ok(be.reads > before, 'evicted chunks are downloaded again');
  await fc.quota!.evictSoon();
  assert.not.ok(files().some((f) => f.startsWith(V5.info.blobId)));
  await fc.release(V6.info.blobId);
  await fc.close();
  // a restart with a smaller quota counts what the work_dir holds and evicts on the next release
  const fc2 = new FileCache({ workDir: work, quota: 4096 });
  fc2.retain(V6.info.blobId);
  await fc2.release(V6.info.blobId);
  assert.equal(files(), []);
  await fc2.close();
  await be.close();
  await be5.close();
});

test('sequential readahead: a reader going through a file is served by a few large requests, not one per chunk', async () => {
  const src = tmp('ra-src');
  const big = content(9, (2 << 20) + 12345);
  fs.writeFileSync(path.join(src, 'big'), big);
  const blobDir = tmp('ra-blobs');
  const r = await createImage({
    source: src, type: 'dir-rafs', fsVersion: 6, compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3, chunkSize: 0x10000,
    blobDir, blobInlineMeta: false, blobToc: false, alignedChunk: false, repeatable: true, prefetchPatterns: [],
  });
  const sb = loadRafs(r.bootstrap);
  for (const cache of [false, true]) {
    const be = new Counting(localfs({ blob_file: '', dir: blobDir }));
    const cfg = parseNydusdConfig(JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: blobDir } },
      cache: cache ? { type: 'blobcache', filecache: { work_dir: tmp('ra-cache') } } : { type: '' } }));
    const dev = createBlobDevice(cfg, sb.blobs, { backend: be, chunks: () => sb.chunkTable() });
    const rafs = new RafsFs(sb, dev, { bootstrap: r.bootstrap });
    const ctx = { uid: 0, gid: 0, pid: 0, unique: 1n };
    const e = await rafs.lookup(ctx, 1n, Buffer.from('big'));
    const parts: Buffer[] = [];
    for (let off = 0; off < big.length; off += 128 << 10) {
      for (const p of await rafs.read(ctx, e.ino, 0n, off, 128 << 10)) {
        if (Buffer.isBuffer(p)) parts.push(p);
        else { const b = Buffer.alloc(p.length); fs.readSync(p.fd, b, 0, p.length, p.position); parts.push(b); }
      }
    }
    assert.ok(Buffer.concat(parts).equals(big), `content (cache ${cache})`);
    const chunks = sb.root().lookup(Buffer.from('big'))!.chunks().length;
    assert.ok(be.reads <= 4, `${be.reads} backend requests for ${chunks} chunks (cache ${cache})`);
    await dev.close();
  }
});

test('readSync: answers from cache-file slices only when every chunk is there; a fallback to read counts no cache hit twice', async () => {
  const src = tmp('rs-src');
  const big = content(5, 3 << 16);
  fs.writeFileSync(path.join(src, 'f'), big);
  const r = await createImage({
    source: src, type: 'dir-rafs', fsVersion: 6, compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3, chunkSize: 0x10000,
    blobDir: tmp('rs-blobs'), blobInlineMeta: false, blobToc: false, alignedChunk: false, repeatable: true, prefetchPatterns: [],
  });
  const sb = loadRafs(r.bootstrap);
  let counted = 0;
  const cached = new Set([0]); // only the file's first chunk is in the cache file
  const dev = {
    locate(c: ChunkInfo, probe = false) {
      if (!cached.has(c.index)) return undefined;
      if (!probe) counted++;
      return { fd: 99, position: c.uncompressedOffset, length: c.uncompressedSize };
    },
    servedFromCache() { counted++; },
    readChunk: async () => { throw new Error('not used'); },
    prefetch() {}, close: async () => {},
  } as unknown as BlobDevice;
  const rafs = new RafsFs(sb, dev, { bootstrap: r.bootstrap });
  const ctx = { uid: 0, gid: 0, pid: 0, unique: 1n };
  const e = await rafs.lookup(ctx, 1n, Buffer.from('f'));
  assert.is(rafs.readSync(ctx, e.ino, 0n, 0, 2 << 16), undefined, 'second chunk not cached');
  assert.is(counted, 0, 'nothing counted for a read that falls back');
  const got = rafs.readSync(ctx, e.ino, 0n, 100, 1000)!;
  assert.equal(got, [{ fd: 99, position: 100, length: 1000 }]);
  assert.is(counted, 1);
});

test('a chunk whose fetch just failed gets one attempt, not a second retry budget (the kernel re-reads a failed page)', async () => {
  let reads = 0;
  const asked: Array<number | undefined> = [];
  const down: BlobBackend = { type: 'registry', read: async (_id, _o, _l, opts) => { reads++; asked.push(opts?.attempts); throw new ErrnoError('EIO', 'registry down'); }, close: async () => {} };
  const cfg = parseNydusdConfig(JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: V6.blobDir } }, cache: { type: 'blobcache', filecache: { work_dir: tmp('memo') } } }));
  const dev = createBlobDevice(cfg, [V6.info], { backend: down, chunks: () => V6.chunks });
  const c = V6.chunks[0];
  const e1 = await rejectsWith(dev.readChunk(c), 'EIO', /registry down/);
  const n = reads;
  assert.ok(n >= 1);
  await rejectsWith(dev.readChunk(c), 'EIO', /registry down/);
  assert.is(reads, n + 1, 'one more request');
  assert.equal(asked.slice(0, n), new Array(n).fill(undefined), 'the first read has the full budget');
  assert.is(asked[n], 1, 'the re-read right after the failure asks for a single attempt');
  assert.match(e1.message, /registry down/);
  await dev.close();
});

test.run();
