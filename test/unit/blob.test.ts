/**
 * Data blob format (rafs-spec §4): upstream fixture blobs (§10) and
 * BlobWriter round trips.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { Compressor } from '../../src/common/compress';
import { DigestAlgorithm, initDigest, sha256 } from '../../src/common/digest';
import { ErrnoError } from '../../src/common/errno';
import {
  BLOB_META_HEADER_SIZE,
  decodeBlobMetaHeader,
  decodeChunkInfoV1,
  decodeChunkInfoV2,
  encodeBlobMetaHeader,
  encodeChunkInfoV1,
  encodeChunkInfoV2,
} from '../../src/storage/format/blob-meta';
import { BlobFeatures } from '../../src/rafs/format/constants';
import { decodeTarHeader, decodeTocEntry, encodeTarHeader, encodeTocEntry, TocFlags } from '../../src/storage/format/toc';
import type { BlobInfo, ChunkInfo } from '../../src/rafs/metadata/types';
import { BlobWriter, INLINE_PLACEHOLDER_BLOB_ID } from '../../src/rafs/builder/blob-writer';
import { BuildInode, S_IFREG } from '../../src/rafs/builder/tree';
import {
  BlobFile,
  extractInlinedBootstrap,
  extractTocEntry,
  parseBlobMetaFile,
  readBlobDigests,
  readBlobMeta,
  readToc,
  readTocList,
} from '../../src/storage/blob/blob-file';
import { crc32c, readChunk, readFileRange } from '../../src/storage/blob/chunk-reader';
import { needFixtures, TEXTURE as TEX } from '../support/fixtures';

const BE7D = path.join(TEX, 'blobs/be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef');
const TOC = path.join(TEX, 'toc/2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca');
const ZRAN = path.join(TEX, 'zran/233c72f2b6b698c07021c4da367cfe2dff4f049efbaa885ca0ff760ea297865a.blob.meta');
const LZ4 = path.join(TEX, 'repeatable/blobs/d7b86b1e74e316fe945741d1a9fa1b271459fe41481e304977659e0c6ecf56ac');

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'blob-test-'));

function baseInfo(over: Partial<BlobInfo>): BlobInfo {
  return {
    blobIndex: 0, blobId: '', chunkSize: 0x100000, chunkCount: 0, compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3,
    features: 0, compressedSize: 0, uncompressedSize: 0, readaheadOffset: 0, readaheadSize: 0,
    metaCompressor: Compressor.None, metaOffset: 0, metaCompressedSize: 0, metaUncompressedSize: 0, tocSize: 0, tocDigest: Buffer.alloc(32),
    ...over,
  };
}

/** be7d77's entry in fixture rafs-v6-2.2.boot's blob table (§3.12). */
const BE7D_INFO = baseInfo({
  blobId: 'be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef', chunkCount: 2, features: 0x70000021,
  compressedSize: 14554, uncompressedSize: 36864, tocSize: 1024, metaOffset: 8314, metaCompressedSize: 32, metaUncompressedSize: 32,
  tocDigest: Buffer.from('cfc89ed0739aef4eb1bf0904f0dfdb1c857134eca7319465baae95a99b84acde', 'hex'),
});

function expectErrno(fn: () => unknown, code?: string): ErrnoError {
  try {
    fn();
  } catch (e) {
    assert.instance(e, ErrnoError, `expected ErrnoError, got ${(e as Error).stack}`);
    if (code) assert.is((e as ErrnoError).code, code, (e as Error).message);
    return e as ErrnoError;
  }
  assert.unreachable('expected an error');
  throw new Error('unreachable');
}

test.before(async () => { await initDigest(); });
test.after(() => { fs.rmSync(tmpRoot, { recursive: true, force: true }); });

test('chunk info v1/v2 bit layout (§4.2 fixture check values)', () => {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(0x0345_7000_0000_5000n, 0);
  b.writeBigUInt64LE(0x00b9_d000_0000_12dcn, 8);
  const c = decodeChunkInfoV1(b, 0);
  assert.equal([c.uncompressedOffset, c.uncompressedSize, c.compressedOffset, c.compressedSize, c.compressed], [0x5000, 13400, 0x12dc, 2974, true]);
  const r = Buffer.alloc(16);
  encodeChunkInfoV1(r, 0, c);
  assert.equal(r, b);
  // large values: 16 MiB sizes, 40-bit offsets, 44-bit uncompressed offsets
  const big = { compressedOffset: 2 ** 40 - 1, compressedSize: 1 << 24, uncompressedOffset: 2 ** 44 - 4096, uncompressedSize: 1 << 24 };
  encodeChunkInfoV1(r, 0, big);
  const d = decodeChunkInfoV1(r, 0);
  assert.equal([d.compressedOffset, d.compressedSize, d.uncompressedOffset, d.uncompressedSize], [big.compressedOffset, big.compressedSize, big.uncompressedOffset, big.uncompressedSize]);
  const v2 = Buffer.alloc(24);
  encodeChunkInfoV2(v2, 0, { ...big, compressedSize: 0xffffff, v2Flags: 0x11, dataLo: 0xdeadbeef, dataHi: 7 });
  const e = decodeChunkInfoV2(v2, 0);
  assert.equal([e.compressedOffset, e.compressedSize, e.uncompressedOffset, e.uncompressedSize, e.compressed, e.dataLo, e.dataHi], [big.compressedOffset, 0xffffff, big.uncompressedOffset, 1 << 24, true, 0xdeadbeef, 7]);
  expectErrno(() => encodeChunkInfoV1(r, 0, { ...big, uncompressedOffset: 100 }), 'EINVAL');
});

test('tar header and ToC entry encoding', () => {
  const h = encodeTarHeader('rafs.blob.toc', 512);
  assert.is(h.toString('latin1', 124, 136), '00000001000\0');
  assert.is(h.toString('latin1', 148, 156), '0006255\0');
  if (needFixtures('blob tar header: byte-identical to the fixture ToC header')) {
    const fx = fs.readFileSync(BE7D);
    assert.equal(h, fx.subarray(fx.length - 512), 'byte-identical to the fixture ToC header');
  }
  const d = decodeTarHeader(h);
  assert.equal(d, { name: 'rafs.blob.toc', size: 512, typeflag: '0', gnu: true });
  const huge = decodeTarHeader(encodeTarHeader('image.blob', 2 ** 34 + 5));
  assert.is(huge.size, 2 ** 34 + 5);
  const bad = Buffer.from(h);
  bad[0] ^= 1;
  expectErrno(() => decodeTarHeader(bad), 'EINVAL');
  const e = { flags: TocFlags.COMPRESSION_ZSTD, name: 'image.boot', digest: Buffer.alloc(32, 7), compressedOffset: 1, compressedSize: 2, uncompressedSize: 3 };
  assert.equal(decodeTocEntry(encodeTocEntry(e)), e);
});

test('fixture be7d77: ToC, blob.meta v1, blob.digest, blob id, chunk 0', () => {
  if (!needFixtures('blob fixture be7d77: ToC, blob.meta v1, blob.digest, blob id, chunk 0')) return;
  const blob = BlobFile.open(BE7D);
  try {
    const toc = readTocList(blob, BE7D_INFO.tocDigest)!;
    assert.equal(toc.entries.map((e) => e.name), ['image.blob', 'blob.meta', 'blob.meta.header', 'blob.digest']);
    assert.is(toc.tocSize, 1024);
    assert.equal(toc.tocDigest, BE7D_INFO.tocDigest);
    assert.is(toc.entries[0].uncompressedSize, 0x9000);
    // image.blob digest covers the data and its tar header; other members verify by content
    const raw = fs.readFileSync(BE7D);
    assert.equal(sha256(raw.subarray(0, toc.entries[0].compressedSize + 512)), toc.entries[0].digest);
    for (const e of toc.entries.slice(1)) assert.is(extractTocEntry(blob, e, 1 << 20).length, e.uncompressedSize);
    expectErrno(() => readTocList(blob, Buffer.alloc(32, 1)), 'EIO');

    const meta = readBlobMeta(blob, BE7D_INFO);
    assert.is(meta.count, 2);
    assert.is(meta.v2, false);
    const c1 = meta.get(1)!;
    assert.equal([c1.uncompressedOffset, c1.uncompressedSize, c1.compressedOffset, c1.compressedSize], [0x5000, 13400, 0x12dc, 2974]);
    const c0 = meta.get(0)!;
    assert.equal([c0.compressedOffset, c0.compressedSize, c0.uncompressedSize, c0.compressed], [0, 4828, 16931, true]);
    assert.is(c0.digest.toString('hex').slice(0, 8), 'f7e2735f');
    assert.is(meta.get(2), undefined);
    assert.is(meta.get(-1), undefined);

    const digests = readBlobDigests(blob, BE7D_INFO)!;
    assert.is(digests.length, 64);
    // same array found without the ToC (tar-header walk)
    assert.equal(readBlobDigests(blob, { ...BE7D_INFO, features: BE7D_INFO.features & ~BlobFeatures.HAS_TOC }), digests);

    const data0 = readChunk(blob, c0, BE7D_INFO, { validate: true });
    assert.is(data0.length, 16931);
    const data1 = readChunk(blob, c1, BE7D_INFO, { validate: true });
    assert.is(data1.length, 13400);

    // blob id = sha256 of every byte except the raw blob.digest array (§4.4)
    const all = fs.readFileSync(BE7D);
    const de = toc.entries[3];
    const id = createHash('sha256').update(all.subarray(0, de.compressedOffset)).update(all.subarray(de.compressedOffset + de.compressedSize)).digest('hex');
    assert.is(id, path.basename(BE7D));
    assert.is.not(sha256(all).toString('hex'), id);

    assert.is(extractInlinedBootstrap(blob), undefined);
    expectErrno(() => readBlobMeta(blob, { ...BE7D_INFO, chunkCount: 3 }), 'EINVAL');
    expectErrno(() => readBlobMeta(blob, { ...BE7D_INFO, metaOffset: 8000 }), 'EINVAL');
    expectErrno(() => readBlobMeta(blob, { ...BE7D_INFO, metaCompressedSize: 1e9, metaUncompressedSize: 1e9 }), 'EINVAL');
    expectErrno(() => blob.readAt(14000, 1000), 'EIO');
  } finally {
    blob.close();
  }
});

test('fixture toc/2fa78c: inlined zstd bootstrap and blob.meta', () => {
  if (!needFixtures('blob fixture toc/2fa78c: inlined zstd bootstrap and blob.meta')) return;
  const blob = BlobFile.open(TOC);
  try {
    const toc = readTocList(blob, Buffer.from('4fdfbb36ef74a3c63a28e2abafa54044c7594155beb6ddad9f36825cfe58286c', 'hex'))!;
    assert.equal(toc.entries.map((e) => e.name), ['image.blob', 'blob.meta', 'blob.meta.header', 'image.boot']);
    assert.is(toc.tocSize, 1024);
    assert.is(blob.size - toc.tocSize, 9010);
    const boot = extractInlinedBootstrap(blob)!;
    assert.is(boot.length, 20480);
    assert.is(boot.readUInt32LE(1024), 0xe0f5e1e2);
    // blob.meta described by its header (the bootstrap holds the same values)
    const he = toc.entries[2];
    const h = decodeBlobMetaHeader(blob.readAt(he.compressedOffset, BLOB_META_HEADER_SIZE));
    assert.is(h.ciEntries, 3);
    const info = baseInfo({ chunkCount: h.ciEntries, features: h.features, metaCompressor: h.ciCompressor, metaOffset: h.ciOffset, metaCompressedSize: h.ciCompressedSize, metaUncompressedSize: h.ciUncompressedSize });
    const meta = readBlobMeta(blob, info);
    for (let i = 0; i < 3; i++) {
      const c = meta.get(i)!;
      assert.is(readChunk(blob, c, info, { validate: false }).length, c.uncompressedSize);
    }
    assert.is(readBlobDigests(blob, info), undefined);
  } finally {
    blob.close();
  }
});

test('fixture zran blob.meta cache file: v2 infos and zran contexts', () => {
  if (!needFixtures('blob fixture zran blob.meta cache file: v2 infos and zran contexts')) return;
  const meta = parseBlobMetaFile(fs.readFileSync(ZRAN));
  assert.is(meta.header.features, 0xf);
  assert.is(meta.count, 163);
  assert.ok(meta.v2);
  const ctx = meta.zranContexts();
  assert.is(ctx.length, 21);
  let prevU = -1;
  for (let i = 0; i < meta.count; i++) {
    const r = meta.record(i)!;
    assert.ok(r.v2Flags & 0x02, 'ZRAN flag');
    assert.ok(r.dataHi < 21, 'zran context index in range');
    assert.ok(r.uncompressedOffset > prevU);
    prevU = r.uncompressedOffset;
  }
  assert.ok(ctx.every((c) => c.dictSize <= 32768 && c.inLen > 0));
  expectErrno(() => parseBlobMetaFile(Buffer.alloc(100)), 'EINVAL');
  expectErrno(() => parseBlobMetaFile(Buffer.alloc(8192)), 'EINVAL');
});

test('fixture d7b86b: lz4_block chunk decode (v5 blob, no ToC)', () => {
  if (!needFixtures('blob fixture d7b86b: lz4_block chunk decode (v5 blob, no ToC)')) return;
  const blob = BlobFile.open(LZ4);
  try {
    assert.is(readToc(blob), undefined);
    const chunk: ChunkInfo = {
      digest: Buffer.from('1d6c6721690cb5399df84c95901afda43192092f6ebecc8c6a10058b460dceeb', 'hex'), blobIndex: 0, index: 0, flags: 1,
      compressed: true, compressedOffset: 0, compressedSize: 778, uncompressedOffset: 0, uncompressedSize: 944, fileOffset: 0, crc32: 0,
    };
    const info = baseInfo({ compressor: Compressor.Lz4Block, blobId: path.basename(LZ4) });
    assert.is(readChunk(blob, chunk, info, { validate: true }).length, 944);
    const e = expectErrno(() => readChunk(blob, { ...chunk, digest: Buffer.alloc(32, 1) }, info, { validate: true }), 'EIO');
    assert.match(e.message, /d7b86b.*chunk 0/);
  } finally {
    blob.close();
  }
});

test('crc32c check value', () => {
  assert.is(crc32c(Buffer.from('123456789')), 0xe3069283);
  const big = Buffer.alloc(1000, 0xab);
  let c = 0;
  for (const b of big) c = crc32c(Buffer.from([b]), c);
  assert.is(crc32c(big), c);
});

// ---- writer ----

function pseudoRandom(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; b[i] = x & 0xff; }
  return b;
}

function fileInode(data: Buffer): BuildInode {
  return new BuildInode({ mode: S_IFREG | 0o644, size: data.length, source: { read: (off, len) => data.subarray(off, off + len) } });
}

const CS = 0x10000;
const contents = (): Buffer[] => [
  Buffer.alloc(CS * 2 + 1234, 'hello nydus '), // compressible, 3 chunks
  pseudoRandom(CS + 77, 42), // incompressible: stored raw
  Buffer.alloc(5000, 'tiny'),
  Buffer.alloc(CS * 2 + 1234, 'hello nydus '), // duplicate of file 0
];

interface Mode { name: string; blobToc: boolean; inlineMeta: boolean }
const MODES: Mode[] = [
  { name: 'plain', blobToc: false, inlineMeta: false },
  { name: 'blob-toc', blobToc: true, inlineMeta: false },
  { name: 'inline-meta', blobToc: false, inlineMeta: true },
  { name: 'inline+toc', blobToc: true, inlineMeta: true },
];

function build(dir: string, compressor: Compressor, mode: Mode, extra: { crc32?: boolean; aligned?: boolean } = {}) {
  fs.mkdirSync(dir, { recursive: true });
  const aligned = extra.aligned ?? true;
  const w = new BlobWriter({
    compressor, digester: DigestAlgorithm.Blake3, chunkSize: CS, aligned, blobToc: mode.blobToc, inlineMeta: mode.inlineMeta,
    crc32: extra.crc32, dedup: new Map(), blobDir: dir,
  });
  const srcs = contents();
  const inodes = srcs.map(fileInode);
  for (const i of inodes) w.addFile(i);
  let seen: BlobInfo | undefined;
  const fakeBoot = Buffer.alloc(8192, 'bootstrap!');
  const res = w.finish(mode.inlineMeta ? (info) => { seen = info; return fakeBoot; } : undefined);
  return { res, srcs, inodes, seen, fakeBoot };
}

for (const compressor of [Compressor.None, Compressor.Lz4Block, Compressor.GZip, Compressor.Zstd]) {
  for (const mode of MODES) {
    test(`writer round trip: ${Compressor[compressor]} × ${mode.name}`, () => {
      const dir = path.join(tmpRoot, `rt-${compressor}-${mode.name}`);
      const { res, srcs, inodes, seen, fakeBoot } = build(dir, compressor, mode);
      const { info } = res;
      assert.is(info.chunkCount, 6, 'file 3 fully deduplicated');
      assert.is(path.basename(res.path), res.blobId);
      assert.is(fs.statSync(res.path).size, info.compressedSize);
      assert.ok(info.features & BlobFeatures.ALIGNED);
      assert.is(!!(info.features & BlobFeatures.HAS_TOC), mode.blobToc);
      assert.is(!!(info.features & BlobFeatures.INLINED_FS_META), mode.inlineMeta);
      assert.is(!!(info.features & BlobFeatures.INLINED_CHUNK_DIGEST), mode.blobToc);
      assert.is(info.uncompressedSize % 4096, 0);
      assert.equal(fs.readdirSync(dir), [res.blobId], 'no temporary file left');
      // chunk records of the duplicate file reuse the first file's chunks
      assert.equal(inodes[3].chunks.map((c) => [c.index, c.fileOffset]), inodes[0].chunks.map((c) => [c.index, c.fileOffset]));
      if (compressor !== Compressor.None) assert.ok(inodes[0].chunks[0].compressed);
      assert.not.ok(inodes[1].chunks[0].compressed, 'incompressible chunk stored raw');

      const blob = BlobFile.open(res.path);
      try {
        const all = fs.readFileSync(res.path);
        if (mode.blobToc) {
          const toc = readTocList(blob, info.tocDigest)!;
          assert.is(toc.tocSize, info.tocSize);
          const names = toc.entries.map((e) => e.name);
          assert.equal(names, ['image.blob', 'blob.meta', 'blob.meta.header', 'blob.digest', ...(mode.inlineMeta ? ['image.boot'] : [])]);
          const de = toc.entries[3];
          const id = createHash('sha256').update(all.subarray(0, de.compressedOffset)).update(all.subarray(de.compressedOffset + de.compressedSize)).digest('hex');
          assert.is(id, res.blobId, 'blob id excludes blob.digest array');
        } else {
          assert.is(sha256(all).toString('hex'), res.blobId, 'plain blob id = sha256(file)');
          const toc = readToc(blob);
          if (mode.inlineMeta) assert.equal(toc?.map((e) => e.name), ['image.boot']);
          else assert.is(toc, undefined);
        }
        if (mode.inlineMeta) {
          assert.is(seen!.blobId, INLINE_PLACEHOLDER_BLOB_ID);
          assert.is(seen!.tocSize, 0);
          assert.ok(seen!.compressedSize < info.compressedSize);
          assert.equal(extractInlinedBootstrap(blob), fakeBoot);
        }
        const meta = readBlobMeta(blob, info);
        const stored = new Map<number, ChunkInfo>();
        for (const ino of inodes) for (const c of ino.chunks) stored.set(c.index, c);
        for (const [i, c] of stored) {
          const m = meta.get(i)!;
          assert.equal([m.compressedOffset, m.compressedSize, m.uncompressedOffset, m.uncompressedSize, m.compressed], [c.compressedOffset, c.compressedSize, c.uncompressedOffset, c.uncompressedSize, c.compressed]);
          if (mode.blobToc) assert.equal(m.digest, c.digest);
          readChunk(blob, m, info, { validate: true });
        }
        inodes.forEach((ino, k) => {
          const got = readFileRange(ino.chunks, 0, ino.size, (c) => readChunk(blob, c, info, { validate: true }));
          assert.ok(got.equals(srcs[k]), `file ${k} content`);
        });
        const part = readFileRange(inodes[0].chunks, CS - 10, 30, (c) => readChunk(blob, c, info, { validate: false }));
        assert.ok(part.equals(srcs[0].subarray(CS - 10, CS + 20)));
      } finally {
        blob.close();
      }
    });
  }
}

test('writer: determinism, v5 unaligned, crc32 + v2, empty blob', () => {
  const a = build(path.join(tmpRoot, 'det-a'), Compressor.Zstd, MODES[1]);
  const b = build(path.join(tmpRoot, 'det-b'), Compressor.Zstd, MODES[1]);
  assert.is(a.res.blobId, b.res.blobId);
  assert.ok(fs.readFileSync(a.res.path).equals(fs.readFileSync(b.res.path)));

  const v5 = build(path.join(tmpRoot, 'v5'), Compressor.Lz4Block, MODES[0], { aligned: false });
  assert.is(v5.res.info.metaOffset, 0, 'no blob.meta for v5');
  assert.is(v5.res.info.features & BlobFeatures.ALIGNED, 0);
  assert.is(v5.inodes[0].chunks[1].uncompressedOffset, CS);
  assert.is(v5.res.info.uncompressedSize, CS * 2 + 1234 + CS + 77 + 5000);
  const blob5 = BlobFile.open(v5.res.path);
  try {
    const got = readFileRange(v5.inodes[1].chunks, 0, v5.inodes[1].size, (c) => readChunk(blob5, c, v5.res.info, { validate: true }));
    assert.ok(got.equals(v5.srcs[1]));
  } finally { blob5.close(); }

  const crc = build(path.join(tmpRoot, 'crc'), Compressor.Zstd, MODES[1], { crc32: true });
  assert.ok(crc.res.info.features & BlobFeatures.CHUNK_INFO_V2);
  const blobc = BlobFile.open(crc.res.path);
  try {
    const meta = readBlobMeta(blobc, crc.res.info);
    assert.ok(meta.v2);
    const m = meta.get(0)!;
    assert.ok(m.flags & 0x10);
    assert.is(m.crc32, crc.inodes[0].chunks[0].crc32);
    readChunk(blobc, m, crc.res.info, { validate: true });
    expectErrno(() => readChunk(blobc, { ...m, crc32: m.crc32 ^ 1, digest: Buffer.alloc(32) }, crc.res.info, { validate: true }), 'EIO');
  } finally { blobc.close(); }

  const dir = path.join(tmpRoot, 'empty');
  fs.mkdirSync(dir);
  const w = new BlobWriter({ compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3, chunkSize: CS, aligned: true, blobToc: true, inlineMeta: false, dedup: new Map(), blobDir: dir });
  w.addFile(new BuildInode({ mode: S_IFREG | 0o644, size: 0 }));
  const r = w.finish();
  assert.is(r.info.chunkCount, 0);
  assert.is(r.path, '');
  assert.equal(fs.readdirSync(dir), []);
});

test('corruption: flipped chunk byte, truncated/hostile ToC and meta → ErrnoError', () => {
  const { res, inodes } = build(path.join(tmpRoot, 'corrupt'), Compressor.Zstd, MODES[3]);
  const orig = fs.readFileSync(res.path);
  const c = inodes[1].chunks[0]; // raw chunk: a flipped byte decodes but fails the digest
  const bad = Buffer.from(orig);
  bad[c.compressedOffset + 100] ^= 0xff;
  const p = path.join(tmpRoot, 'corrupt', 'bad');
  fs.writeFileSync(p, bad);
  let blob = BlobFile.open(p);
  try {
    const e = expectErrno(() => readChunk(blob, c, res.info, { validate: true }), 'EIO');
    assert.match(e.message, new RegExp(`${res.blobId}.*chunk ${c.index}`));
    readChunk(blob, c, res.info, { validate: false });
    // compressed chunk with a flipped byte: EIO (decompression or digest)
    const z = inodes[0].chunks[0];
    bad[z.compressedOffset + 5] ^= 0x55;
    fs.writeFileSync(p, bad);
    blob.close();
    blob = BlobFile.open(p);
    expectErrno(() => readChunk(blob, z, res.info, { validate: true }), 'EIO');
  } finally { blob.close(); }

  const tryAll = (buf: Buffer) => {
    fs.writeFileSync(p, buf);
    const b = BlobFile.open(p);
    try {
      for (const f of [() => readTocList(b), () => extractInlinedBootstrap(b), () => readBlobMeta(b, res.info), () => readBlobDigests(b, res.info)]) {
        try { f(); } catch (e) { assert.instance(e, ErrnoError, (e as Error).stack); }
      }
    } finally { b.close(); }
  };
  // truncations at various points
  for (const cut of [0, 10, 511, 512, 600, orig.length - 1, orig.length - 513, Math.floor(orig.length / 2)]) tryAll(orig.subarray(0, cut));
  // hostile ToC header sizes and entries (checksums recomputed so headers parse)
  const tail = orig.length - 512;
  for (const size of [0, 128, 5 * 128 + 64, 2 ** 33, 1 << 20]) {
    const h = Buffer.from(orig);
    encodeTarHeader('rafs.blob.toc', size).copy(h, tail);
    tryAll(h);
  }
  const tocStart = tail - res.info.tocSize + 512;
  for (let k = 0; k < 5; k++) {
    const h = Buffer.from(orig);
    h.writeBigUInt64LE(0xffff_ffff_ffffn, tocStart + k * 128 + 56); // offset
    h.writeBigUInt64LE(0x7fff_ffff_ffffn, tocStart + k * 128 + 72); // usize
    tryAll(h);
    const g = Buffer.from(orig);
    g.writeUInt32LE(0x80, tocStart + k * 128); // unknown flags
    tryAll(g);
  }
  // blob.meta header garbage
  const hm = Buffer.from(orig);
  const hdrOff = res.info.metaOffset + res.info.metaCompressedSize;
  encodeBlobMetaHeader({ features: 0xffffffff, ciCompressor: 9, ciEntries: 0xffffffff, ciOffset: 2 ** 50, ciCompressedSize: 1, ciUncompressedSize: 2 ** 52, ciZranOffset: 0, ciZranSize: 0, ciZranCount: 0 }).copy(hm, hdrOff);
  tryAll(hm);
  const hm2 = Buffer.from(orig);
  hm2.fill(0x41, res.info.metaOffset, hdrOff); // compressed ci garbage
  tryAll(hm2);
  fs.writeFileSync(p, hm2);
  const b2 = BlobFile.open(p);
  try { expectErrno(() => readBlobMeta(b2, res.info)); } finally { b2.close(); }
});

test.run();
