/**
 * RAFS v6 batch chunks (`nydus-image create --batch-size`, rafs-spec §4.1
 * "Batch mode", §4.2): the on-disk layout as upstream writes it, and reading
 * batched images through the daemon's path (RafsFs behind the FuseServer over
 * a StorageDevice) and the tools' path (RafsImage).
 *
 * Expected bytes are derived from upstream dragonflyoss/nydus 34e6071e:
 *  - src/bin/nydus-image/main.rs `get_batch_size`: 0 = off, v5 refused, a
 *    power of two in [0x1000, 0x1000000], not above the chunk size; a
 *    non-zero size adds BlobFeatures BATCH (0x80) and CHUNK_INFO_V2 (0x4).
 *  - builder/src/core/node.rs `dump_file_chunk`: a chunk is batched iff its
 *    file has exactly one chunk and `size < batch_size / 2`; it joins the
 *    current batch iff `buffered + size < batch_size`, else the buffered batch
 *    is compressed and written first; a chunk written on its own writes the
 *    buffered batch first; uncompressed offsets still advance by
 *    round_up_4k(size) per chunk. The bootstrap record of a batched chunk is
 *    never given a compressed offset/size nor the COMPRESSED/BATCH flags.
 *  - storage/src/meta/batch.rs `generate_chunk_info`: v2 record with flags
 *    BATCH|COMPRESSED (0x04|0x01, bits 56..63 of uncomp_info), comp_info =
 *    current compressed offset (the batch's start) with size 0, data =
 *    batch index << 32 | offset in the batch buffer; `add_context`: a 40-byte
 *    BatchInflateContext {u32 compressed size, u32 uncompressed batch size,
 *    32 zero bytes} per batch.
 *  - builder/src/core/blob.rs `finalize_blob_data` writes the last batch before
 *    the image.blob header; `dump_meta_data` appends the context table to the
 *    chunk infos and sets s_ci_zran_offset = size of the chunk-info array,
 *    s_ci_zran_size = 40 * count, s_ci_zran_count = count, and the header's
 *    BATCH feature; the ToC's blob.meta digest covers the whole ci data.
 *  - storage/src/cache/mod.rs `decompress_batch`: a batch is compressed iff
 *    its compressed size != its uncompressed size and must decompress to
 *    exactly the uncompressed batch size.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { Compressor, decompress } from '../../src/common/compress';
import { DigestAlgorithm, initDigest } from '../../src/common/digest';
import { ErrnoError } from '../../src/common/errno';
import { type ConfigV2, localfsDirConfig } from '../../src/common/config';
import { checkBatchSize, createImage, type CreateOptions } from '../../src/rafs/builder/create';
import { loadBootstrapFile, RafsImage } from '../../src/rafs/image';
import { BlobMetaTables } from '../../src/rafs/blob-meta-tables';
import { RafsFs } from '../../src/rafs/fs';
import { checkImage } from '../../src/rafs/inspect';
import type { RafsInode, RafsSuper } from '../../src/rafs/metadata/types';
import type { BlobInfo } from '../../src/storage/format/types';
import { BlobFeatures } from '../../src/storage/format/constants';
import { BLOB_META_HEADER_SIZE, decodeChunkInfoV2, encodeBlobMetaHeader } from '../../src/storage/format/blob-meta';
import { BlobFile, BlobMeta, readBlobMeta } from '../../src/storage/blob/blob-file';
import { BATCH_CONTEXT_SIZE } from '../../src/storage/blob/batch';
import { ChunkDirectory, blobOrder, mergeRuns } from '../../src/storage/blob/chunk-directory';
import type { BlobBackend } from '../../src/storage/backend/backend';
import { createBackend, createBlobDevice } from '../../src/storage/factory';
import { Vfs } from '../../src/virtiofs/vfs/vfs';
import { FuseServer } from '../../src/virtiofs/fuse/server';
import { FuseOpcode, FuseEntryOut, FuseReadIn } from '../../src/virtiofs/fuse/abi';
import { call, cstr, initBody, req } from '../support/memory-fs';

const ROOT = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-batch-'));
let seq = 0;
const tmp = (name: string) => fs.mkdtempSync(path.join(ROOT, `${name}-${seq++}-`));

/** Deterministic, compressible file content. */
function content(seed: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  let x = (seed * 2654435761) >>> 0;
  for (let i = 0; i < len; i++) {
    if (i % 32 === 0) x = (x * 1103515245 + 12345) >>> 0;
    b[i] = 97 + ((x >>> (i % 24)) % 26);
  }
  return b;
}

/** Many small files (some duplicated, one empty), a few single-chunk files too big to batch, multi-chunk files. */
function tree(): { dir: string; files: Map<string, Buffer> } {
  const dir = tmp('src');
  const files = new Map<string, Buffer>();
  const put = (p: string, b: Buffer) => {
    fs.mkdirSync(path.dirname(path.join(dir, p)), { recursive: true });
    fs.writeFileSync(path.join(dir, p), b);
    files.set(p, b);
  };
  for (let i = 0; i < 400; i++) put(`small/s${String(i).padStart(3, '0')}`, content(i, 1 + ((i * 7919) % 12_000)));
  put('small/dup-of-s007', content(7, 1 + ((7 * 7919) % 12_000)));
  put('small/empty', Buffer.alloc(0));
  put('mid/m0', content(1000, 40_000));
  put('mid/m1', content(1001, 700_000));
  put('big/b0', content(2000, 3 * 0x100000 + 123));
  put('big/b1', content(2001, 0x100000 + 1));
  for (let i = 0; i < 50; i++) put(`tail/t${i}`, content(3000 + i, 100 + i * 31));
  return { dir, files };
}

const base = (o: Partial<CreateOptions> & Pick<CreateOptions, 'source'>): CreateOptions => ({
  type: 'dir-rafs', fsVersion: 6, compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3, chunkSize: 0x100000,
  blobInlineMeta: false, blobToc: true, alignedChunk: false, repeatable: true, prefetchPatterns: [], ...o,
});

interface Built {
  bootstrap: string;
  blobPath: string;
  blobDir: string;
}

async function buildDir(src: string, o: Partial<CreateOptions> = {}): Promise<Built> {
  const blobDir = tmp('blobs');
  const r = await createImage(base({ source: src, blobDir, bootstrap: path.join(blobDir, 'boot'), ...o }));
  return { bootstrap: r.bootstrapPath!, blobPath: r.blobPath!, blobDir };
}

const isErrno = (e: unknown, codes: string[]) => e instanceof ErrnoError && codes.includes(e.code);

function walkFiles(sb: RafsSuper, dir: RafsInode = sb.root(), prefix = ''): Array<[string, RafsInode]> {
  const out: Array<[string, RafsInode]> = [];
  for (const d of dir.children()) {
    const name = d.name.toString();
    const child = dir.lookup(d.name)!;
    const p = prefix ? `${prefix}/${name}` : name;
    if (child.isDir()) out.push(...walkFiles(sb, child, p));
    else if (child.isReg()) out.push([p, child]);
  }
  return out;
}

/** The blob.meta of an image's only blob, as the reader decodes it. */
function metaOf(b: Built): { info: BlobInfo; meta: BlobMeta; blob: Buffer } {
  const { sb } = loadBootstrapFile(b.bootstrap);
  const info = sb.blobs[0];
  const f = BlobFile.open(b.blobPath);
  try {
    return { info, meta: readBlobMeta(f, info), blob: fs.readFileSync(b.blobPath) };
  } finally { f.close(); }
}

test.before(async () => { await initDigest(); });
test.after(() => fs.rmSync(ROOT, { recursive: true, force: true }));

test('create --batch-size: argument rules as upstream get_batch_size', async () => {
  const bad: Array<[number, 5 | 6, number, RegExp]> = [
    [0x1000, 5, 0x100000, /conflicts with `--fs-version 5`/],
    [0x1800, 6, 0x100000, /invalid batch size 0x1800/],
    [0x800, 6, 0x100000, /invalid batch size 0x800/],
    [0x2000000, 6, 0x1000000, /invalid batch size/],
    [0x100000, 6, 0x10000, /bigger than chunk size/],
  ];
  for (const [size, v, chunk, re] of bad) {
    assert.throws(() => checkBatchSize(size, v, chunk), (e: unknown) => isErrno(e, ['EINVAL']) && re.test((e as Error).message), re.source);
  }
  for (const [size, v, chunk] of [[0, 5, 0x100000], [0x1000, 6, 0x1000], [0x100000, 6, 0x100000]] as const) checkBatchSize(size, v, chunk);
  // the CLI refuses before building anything
  const src = tmp('tiny');
  fs.writeFileSync(path.join(src, 'a'), 'a');
  const out = tmp('out');
  const cli = path.resolve(__dirname, '../../src/rafs/cli/nydus-image.ts');
  const tsx = path.resolve(__dirname, '../../node_modules/.bin/tsx');
  const r = spawnSync(tsx, [cli, 'create', '--fs-version', '5', '--batch-size', '0x10000', '--blob-dir', out, src], { encoding: 'utf8', timeout: 60_000 });
  assert.is.not(r.status, 0);
  assert.match(r.stderr, /`--batch-size` with non-zero value conflicts with `--fs-version 5`/);
  assert.equal(fs.readdirSync(out), []);
});

test('layout: exact ci records, contexts and blob bytes of a small uncompressed batch image', async () => {
  // batch 0x1000 (half: 0x800): a(100) b(200) c(3000, written alone) d(1500) e(1500) f(1500) g(2048, not < half)
  const src = tmp('exact');
  const sizes: Record<string, number> = { a: 100, b: 200, c: 3000, d: 1500, e: 1500, f: 1500, g: 2048 };
  for (const [n, len] of Object.entries(sizes)) fs.writeFileSync(path.join(src, n), content(n.charCodeAt(0), len));
  const b = await buildDir(src, { compressor: Compressor.None, chunkSize: 0x1000, batchSize: 0x1000, blobToc: false });
  const { info, meta, blob } = metaOf(b);
  assert.is(info.features & (BlobFeatures.BATCH | BlobFeatures.CHUNK_INFO_V2), BlobFeatures.BATCH | BlobFeatures.CHUNK_INFO_V2);
  assert.ok(meta.header.features & BlobFeatures.BATCH, 'header has BATCH');
  assert.is(info.chunkCount, 7);
  // expected blob data: [a b] written when c comes, c, [d e] flushed when f does not fit (3000+1500 >= 4096), [f] flushed by g, g
  const data = (n: string) => content(n.charCodeAt(0), sizes[n]);
  const expectData = Buffer.concat(['a', 'b', 'c', 'd', 'e', 'f', 'g'].map(data));
  assert.ok(blob.subarray(0, expectData.length).equals(expectData), 'chunk data in dump order, batches stored raw (none)');
  // ci records: uoff>>12 | (usize-1) | flags << 56 ; coff | csize << 40 ; data
  const rec = (uoff: number, usize: number, flags: number, coff: number, csize: number, lo: number, hi: number) => {
    const r = Buffer.alloc(24);
    r.writeUInt32LE(uoff / 4096, 0);
    r.writeUInt32LE(((usize - 1) | (flags << 24)) >>> 0, 4);
    r.writeUInt32LE(coff, 8);
    r.writeUInt32LE((csize << 8) >>> 0, 12);
    r.writeUInt32LE(lo, 16);
    r.writeUInt32LE(hi, 20);
    return r;
  };
  const BATCHED = 0x04 | 0x01;
  const expectCi = Buffer.concat([
    rec(0x0000, 100, BATCHED, 0, 0, 0, 0), // a: batch 0 at 0, offset 0
    rec(0x1000, 200, BATCHED, 0, 0, 100, 0), // b: batch 0, offset 100
    rec(0x2000, 3000, 0, 300, 3000, 0, 0), // c: alone after batch 0 (300 bytes), not compressed
    rec(0x3000, 1500, BATCHED, 3300, 0, 0, 1), // d: batch 1 at 3300
    rec(0x4000, 1500, BATCHED, 3300, 0, 1500, 1), // e
    rec(0x5000, 1500, BATCHED, 6300, 0, 0, 2), // f: batch 2 at 6300
    rec(0x6000, 2048, 0, 7800, 2048, 0, 0), // g: alone
  ]);
  const ctx = (c: number, u: number) => { const x = Buffer.alloc(40); x.writeUInt32LE(c, 0); x.writeUInt32LE(u, 4); return x; };
  const expectCtx = Buffer.concat([ctx(300, 300), ctx(3000, 3000), ctx(1500, 1500)]);
  assert.ok(meta.ciData.equals(Buffer.concat([expectCi, expectCtx])), `ci data\n${meta.ciData.toString('hex')}\n${Buffer.concat([expectCi, expectCtx]).toString('hex')}`);
  assert.equal([meta.header.ciZranOffset, meta.header.ciZranSize, meta.header.ciZranCount], [7 * 24, 3 * BATCH_CONTEXT_SIZE, 3]);
  assert.is(meta.header.ciUncompressedSize, 7 * 24 + 3 * 40);
  // the bootstrap's records of batched chunks: no compressed offset/size, no flags (upstream never sets them)
  const { sb } = loadBootstrapFile(b.bootstrap);
  const table = new Map(sb.chunkTable().map((c) => [c.index, c]));
  for (const i of [0, 1, 3, 4, 5]) {
    const c = table.get(i)!;
    assert.equal([c.compressedOffset, c.compressedSize, c.flags, c.compressed], [0, 0, 0, false], `bootstrap record ${i}`);
  }
  assert.equal([table.get(2)!.compressedOffset, table.get(2)!.compressedSize], [300, 3000]);
  // resolved through blob.meta: the member's compressed range is its batch's
  const e = meta.get(4)!;
  assert.equal([e.compressedOffset, e.compressedSize, e.compressed, e.uncompressedOffset, e.uncompressedSize], [3300, 3000, false, 0x4000, 1500]);
  // and the tools read every file back
  const img = RafsImage.open({ bootstrap: b.bootstrap, blobDir: b.blobDir, validate: true });
  try {
    for (const [p, inode] of walkFiles(img.sb)) assert.ok(img.readFile(inode).equals(data(p)), p);
    assert.is(checkImage(img, { verifyChunks: true }).verifiedChunks, 7);
  } finally { img.close(); }
  // without the blob: the metadata still checks; reading a batched file is a clear EIO
  const noBlob = RafsImage.open({ bootstrap: b.bootstrap, blobDir: tmp('empty') });
  try {
    assert.is(checkImage(noBlob, { verifyChunks: false }).files, 7);
    const a = noBlob.sb.root().lookup(Buffer.from('a'))!;
    assert.throws(() => noBlob.readFile(a), (e: unknown) => isErrno(e, ['EIO', 'ENOENT']));
  } finally { noBlob.close(); }
});

test('layout: zstd batches of a big tree (batch 0x100000 and 0x10000) follow upstream rules', async () => {
  const { dir, files } = tree();
  for (const batchSize of [0x100000, 0x10000]) {
    const b = await buildDir(dir, { batchSize });
    const { info, meta, blob } = metaOf(b);
    const { sb } = loadBootstrapFile(b.bootstrap);
    assert.ok(info.features & BlobFeatures.BATCH && info.features & BlobFeatures.CHUNK_INFO_V2 && info.features & BlobFeatures.INLINED_CHUNK_DIGEST);
    const n = meta.count;
    const ctxs: Array<{ c: number; u: number }> = [];
    for (let k = 0; k < meta.header.ciZranCount; k++) {
      const off = meta.header.ciZranOffset + k * 40;
      ctxs.push({ c: meta.ciData.readUInt32LE(off), u: meta.ciData.readUInt32LE(off + 4) });
      assert.ok(meta.ciData.subarray(off + 8, off + 40).equals(Buffer.alloc(32)), 'reserved context bytes are zero');
    }
    assert.is(meta.header.ciZranOffset, n * 24);
    assert.is(meta.header.ciUncompressedSize, n * 24 + ctxs.length * 40);
    assert.ok(ctxs.length > 1, `${ctxs.length} batches`);
    // which chunks are batched: exactly the single-chunk files smaller than batch/2
    const byIndex = new Map<number, { size: number; multi: boolean }>();
    for (const [, inode] of walkFiles(sb)) for (const c of inode.chunks()) byIndex.set(c.index, { size: c.uncompressedSize, multi: inode.size > 0x100000 });
    let prevBatch = -1;
    let filled = 0;
    let batchStart = 0;
    let lastEnd = 0;
    /** a chunk written alone since the current batch started (which writes the batch first) */
    let interrupted = false;
    for (let i = 0; i < n; i++) {
      const r = decodeChunkInfoV2(meta.ciData, i * 24);
      const f = byIndex.get(i)!;
      const batched = !f.multi && f.size < batchSize / 2;
      assert.is(!!(r.v2Flags & 0x04), batched, `chunk ${i} batched`);
      assert.is(r.uncompressedOffset % 4096, 0);
      if (!batched) {
        assert.is(r.compressedOffset, lastEnd, `chunk ${i} follows what was written before`);
        lastEnd = r.compressedOffset + r.compressedSize;
        interrupted = true;
        continue;
      }
      assert.is(r.v2Flags, 0x05);
      assert.is(r.compressedSize, 0);
      const k = r.dataHi;
      if (k !== prevBatch) {
        assert.is(k, prevBatch + 1, 'batches numbered in order');
        assert.is(r.dataLo, 0, 'a new batch starts at offset 0');
        assert.is(r.compressedOffset, lastEnd, 'batch starts where the previous write ended');
        if (prevBatch >= 0) assert.ok(interrupted || filled + r.uncompressedSize >= batchSize, `batch ${prevBatch} closed early`);
        batchStart = r.compressedOffset;
        lastEnd = batchStart + ctxs[k].c;
        prevBatch = k;
        filled = 0;
        interrupted = false;
      } else {
        assert.not.ok(interrupted, 'no member after a chunk written alone');
        assert.is(r.compressedOffset, batchStart);
        assert.is(r.dataLo, filled, 'members back to back in the batch buffer');
        assert.ok(filled + r.uncompressedSize < batchSize, 'a member joins only while buffered + size < batch size');
      }
      filled += r.uncompressedSize;
      assert.ok(filled <= ctxs[k].u);
    }
    assert.is(prevBatch, ctxs.length - 1, 'every context used');
    // every batch decompresses to its uncompressed size
    let off = -1;
    for (let i = 0; i < n; i++) {
      const r = decodeChunkInfoV2(meta.ciData, i * 24);
      if (!(r.v2Flags & 0x04) || r.compressedOffset === off) continue;
      off = r.compressedOffset;
      const ctx = ctxs[r.dataHi];
      const raw = blob.subarray(off, off + ctx.c);
      const whole = ctx.c === ctx.u ? raw : decompress(Compressor.Zstd, raw, ctx.u);
      assert.is(whole.length, ctx.u);
    }
    // every file reads back through the tools
    const img = RafsImage.open({ bootstrap: b.bootstrap, blobDir: b.blobDir, validate: true });
    try {
      const seen = walkFiles(img.sb);
      assert.is(seen.length, files.size);
      for (const [p, inode] of seen) assert.ok(img.readFile(inode).equals(files.get(p)!), p);
    } finally { img.close(); }
  }
});

/** A backend wrapper recording reads. */
class Recording implements BlobBackend {
  readonly type = 'localfs';
  reads: Array<[number, number]> = [];
  constructor(readonly inner: BlobBackend) {}
  read(id: string, off: number, len: number) { this.reads.push([off, len]); return this.inner.read(id, off, len); }
  size(id: string) { return this.inner.size!(id); }
  close() { return this.inner.close(); }
}

/** Mount an image as nydusd does (blob.meta loaded at mount) and talk FUSE to it. */
async function mount(bootstrap: string, cfg: ConfigV2, blobFile?: string) {
  const metas = new BlobMetaTables();
  const { boot, sb } = loadBootstrapFile(bootstrap, { blobMeta: (i) => metas.get(i) });
  const backend = new Recording(createBackend(cfg, { blobFile }));
  const workDir = cfg.cache.type === 'blobcache' ? cfg.cache.filecache?.work_dir : undefined;
  await metas.start(sb, { backend, workDir });
  const metaReads = backend.reads.length;
  backend.reads = [];
  const device = createBlobDevice(cfg, sb.blobs, { backend, chunks: () => sb.chunkTable() });
  const vfs = new Vfs();
  vfs.mount('/', new RafsFs(sb, device, { bootstrap: boot }));
  const server = new FuseServer(vfs, { readdirplus: true });
  const init = await call(server, req(FuseOpcode.INIT, 0n, initBody(36, 0xffffffffn)));
  assert.is(init.hdr!.error, 0);
  const lookupPath = async (p: string): Promise<bigint> => {
    let ino = 1n;
    for (const part of p.split('/')) {
      const r = await call(server, req(FuseOpcode.LOOKUP, ino, cstr(part)));
      assert.is(r.hdr!.error, 0, `lookup ${p}`);
      ino = FuseEntryOut.decode(r.payload).ino;
    }
    return ino;
  };
  /** The whole file in READs of at most 1 MiB (the session's max_read); the first error ends it. */
  const read = async (p: string) => {
    const ino = await lookupPath(p);
    const parts: Buffer[] = [];
    for (let offset = 0; ; ) {
      const r = await call(server, req(FuseOpcode.READ, ino, FuseReadIn.encode({ fh: 0n, offset, size: 1 << 20, readFlags: 0, lockOwner: 0n, flags: 0 })));
      if (r.hdr!.error !== 0 || r.payload.length === 0) return { hdr: r.hdr, payload: Buffer.concat(parts) };
      parts.push(r.payload);
      offset += r.payload.length;
    }
  };
  return { sb, backend, device, read, metaReads, close: () => { metas.stop(); return device.close(); } };
}

const noCache = (dir: string): ConfigV2 => { const c = localfsDirConfig(dir); c.cache.type = ''; return c; };
const withCache = (dir: string, workDir: string): ConfigV2 => {
  const c = localfsDirConfig(dir);
  c.cache.filecache!.work_dir = workDir;
  c.rafs.validate = true;
  return c;
};

test('reader: every file through FUSE, one backend request per batch, with and without the blob cache', async () => {
  const { dir, files } = tree();
  const b = await buildDir(dir, { batchSize: 0x10000 });
  for (const cfg of [noCache(b.blobDir), withCache(b.blobDir, tmp('cache'))]) {
    const m = await mount(b.bootstrap, cfg);
    try {
      assert.ok(m.metaReads > 0, 'blob.meta was fetched at mount (the bootstrap cannot place batch chunks)');
      // one small file: exactly one request, covering exactly its batch
      const { meta } = metaOf(b);
      const s = m.sb.root().lookup(Buffer.from('small'))!.lookup(Buffer.from('s010'))!;
      const c = s.chunks()[0];
      const member = meta.get(c.index)!;
      assert.ok(member.flags & 0x8, 'resolved as a batch member');
      const r = await m.read('small/s010');
      assert.is(r.hdr!.error, 0);
      assert.ok(r.payload.equals(files.get('small/s010')!));
      // (merged with the chunks that follow it, as any miss is)
      assert.is(m.backend.reads.length, 1, 'one request');
      const [off, len] = m.backend.reads[0];
      assert.ok(off === member.compressedOffset && len >= member.compressedSize, `request [${off}, +${len}) starts at and covers batch [${member.compressedOffset}, +${member.compressedSize})`);
      // another member of the same batch: no new request
      const sibling = [...files.keys()].find((p) => {
        if (!p.startsWith('small/s') || p === 'small/s010') return false;
        const i = m.sb.root().lookup(Buffer.from('small'))!.lookup(Buffer.from(p.slice(6)))!;
        const cc = i.chunks()[0];
        return cc && meta.get(cc.index)!.compressedOffset === member.compressedOffset;
      });
      assert.ok(sibling, 'the batch has another member');
      const r2 = await m.read(sibling!);
      assert.ok(r2.payload.equals(files.get(sibling!)!));
      assert.is(m.backend.reads.length, 1, 'sibling served from the same request');
      // every file
      for (const [p, want] of files) {
        const rr = await m.read(p);
        assert.is(rr.hdr!.error, 0, p);
        assert.ok(rr.payload.equals(want), p);
      }
      const batches = meta.header.ciZranCount;
      assert.ok(m.backend.reads.length <= batches + 20, `${m.backend.reads.length} requests for ${batches} batches`);
    } finally { await m.close(); }
  }
});

test('reader: tar-rafs with --blob-inline-meta and blob-toc (the nydusify path)', async () => {
  const { dir, files } = tree();
  const tar = path.join(tmp('tar'), 'layer.tar');
  execFileSync('tar', ['--sort=name', '-C', dir, '-cf', tar, '.']);
  const out = tmp('inline');
  const blobPath = path.join(out, 'blob');
  await createImage(base({ source: tar, type: 'tar-rafs', blob: blobPath, blobInlineMeta: true, batchSize: 0x100000 }));
  // the blob file named by its id, as the nydusify/snapshotter path stores it
  const { sb } = loadBootstrapFile(blobPath);
  const info = sb.blobs[0];
  assert.ok(info.features & BlobFeatures.BATCH && info.features & BlobFeatures.INLINED_FS_META);
  const img = RafsImage.open({ bootstrap: blobPath, validate: true });
  try {
    for (const [p, inode] of walkFiles(img.sb)) assert.ok(img.readFile(inode).equals(files.get(p)!), p);
  } finally { img.close(); }
  const m = await mount(blobPath, withCache(out, tmp('cache')), blobPath);
  try {
    for (const [p, want] of files) {
      const r = await m.read(p);
      assert.is(r.hdr!.error, 0, p);
      assert.ok(r.payload.equals(want), p);
    }
  } finally { await m.close(); }
});

test('request merging: members of one batch go together; unplaced bootstrap records are left out', async () => {
  const src = tmp('merge-src');
  for (let i = 0; i < 30; i++) fs.writeFileSync(path.join(src, `f${String(i).padStart(2, '0')}`), content(i, 3000 + i));
  fs.writeFileSync(path.join(src, 'zbig'), content(99, 0x9000));
  const b = await buildDir(src, { chunkSize: 0x10000, batchSize: 0x4000 });
  const { info, meta } = metaOf(b);
  const resolved = Array.from({ length: meta.count }, (_, i) => ({ ...meta.get(i)!, index: i }));
  const dir = new ChunkDirectory(info, resolved);
  assert.not.ok(dir.partial);
  // batch 0 holds f00..f04 (5 x ~3000 < 0x4000): asking for f02 brings f00..f04, in one range
  const run = dir.region(resolved[2], 1 << 20, () => true);
  assert.equal(run.slice(0, 5).map((c) => c.index).sort(), [0, 1, 2, 3, 4]);
  assert.is(run[0].index, 2, 'the asked-for chunk first');
  const runs = mergeRuns(blobOrder(resolved), 1 << 20);
  assert.is(runs.length, 1, 'a whole small blob in one request');
  // members not wanted (cached) are skipped, the rest of the batch still comes
  assert.equal(dir.region(resolved[2], 1 << 20, (c) => c.index !== 3).slice(0, 4).map((c) => c.index).sort(), [0, 1, 2, 4]);
  // the bootstrap's own records of batch members have no stored range: not placed, and the directory says so
  const { sb } = loadBootstrapFile(b.bootstrap);
  const raw = new ChunkDirectory(info, sb.chunkTable());
  assert.ok(raw.partial);
  assert.is(raw.get(0), undefined);
  assert.is(raw.size, 1, 'only zbig is placed');
});

/** A blob.meta cache file (ci data padded to 4K + header) for `b`, with `edit` applied to the ci data. */
function hostileMetaFile(b: Built, workDir: string, edit: (ci: Buffer, h: BlobMeta['header']) => void): string {
  const { info, meta } = metaOf(b);
  const ci = Buffer.from(meta.ciData);
  edit(ci, meta.header);
  const padded = Math.ceil(ci.length / 4096) * 4096;
  const out = Buffer.alloc(padded + BLOB_META_HEADER_SIZE);
  ci.copy(out);
  encodeBlobMetaHeader(meta.header).copy(out, padded);
  fs.writeFileSync(path.join(workDir, `${info.blobId}.blob.meta`), out);
  if (meta.digests) fs.writeFileSync(path.join(workDir, `${info.blobId}.blob.digest`), meta.digests);
  return info.blobId;
}

test('hostile: bad batch contexts and members give EINVAL/EIO, never a crash or hang', async () => {
  const src = tmp('hostile-src');
  for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(src, `f${i}`), content(i, 500 + i * 100));
  const b = await buildDir(src, { chunkSize: 0x10000, batchSize: 0x10000 });
  const { meta } = metaOf(b);
  const n = meta.count;
  const ctxOff = meta.header.ciZranOffset;
  const cases: Array<[string, (ci: Buffer) => void, RegExp]> = [
    ['batch index out of range', (ci) => ci.writeUInt32LE(999, 20), /batch context index 999 out of range/],
    ['member beyond its batch', (ci) => ci.writeUInt32LE(0x7fff_0000, 16), /exceeds batch 0/],
    ['batch size beyond the chunk size limit', (ci) => ci.writeUInt32LE(0x2000000, ctxOff + 4), /sizes .* out of range/],
    ['batch decompresses to the wrong size', (ci) => ci.writeUInt32LE(ci.readUInt32LE(ctxOff + 4) + 1, ctxOff + 4), /decompress/],
    ['compressed size zero', (ci) => ci.writeUInt32LE(0, ctxOff), /out of range/],
    ['compressed size beyond the blob', (ci) => { ci.writeUInt32LE(0xff_ffff, ctxOff); ci.writeUInt32LE(0xff_ffff, ctxOff + 4); }, /out of range|outside|short read|beyond/],
  ];
  // direct decoding of the table
  for (const [what, edit] of cases.slice(0, 3)) {
    const ci = Buffer.from(meta.ciData);
    edit(ci);
    const bad = new BlobMeta(meta.header, ci);
    assert.throws(() => bad.get(0), (e: unknown) => isErrno(e, ['EINVAL']), what);
  }
  // a table whose contexts lie outside the ci data
  const h2 = { ...meta.header, ciZranCount: 1000 };
  assert.throws(() => new BlobMeta(h2, meta.ciData).get(0), (e: unknown) => isErrno(e, ['EINVAL']), 'context table outside ci data');
  assert.ok(n > 0);
  // through the daemon: the first file (chunk 0, batch 0) fails cleanly; files outside batch 0 still read
  for (const [what, edit, re] of cases) {
    const work = tmp('hcache');
    hostileMetaFile(b, work, edit);
    const m = await mount(b.bootstrap, withCache(b.blobDir, work));
    try {
      const r = await Promise.race([m.read('f0'), new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`${what}: hang`)), 10_000))]);
      assert.ok(r.hdr!.error === -5 || r.hdr!.error === -22, `${what}: error ${r.hdr!.error}`);
      // the reason, as the daemon logs it
      let msg = '';
      try {
        const f0 = m.sb.root().lookup(Buffer.from('f0'))!;
        await m.device.readChunk(f0.chunks()[0]);
      } catch (e) {
        assert.ok(isErrno(e, ['EIO', 'EINVAL']), `${what}: ${(e as Error).message}`);
        msg = (e as Error).message;
      }
      assert.match(msg, re, what);
    } finally { await m.close(); }
  }
  // a batch whose bytes are corrupted in the blob: the digest check catches it (EIO)
  const copy = tmp('corrupt');
  for (const f of fs.readdirSync(b.blobDir)) fs.copyFileSync(path.join(b.blobDir, f), path.join(copy, f));
  const blobFile = path.join(copy, path.basename(b.blobPath));
  const bytes = fs.readFileSync(blobFile);
  const first = meta.get(0)!;
  bytes[first.compressedOffset + Math.floor(first.compressedSize / 2)] ^= 0xff;
  fs.writeFileSync(blobFile, bytes);
  const m = await mount(path.join(copy, 'boot'), withCache(copy, tmp('ccache')));
  try {
    const r = await m.read('f0');
    assert.is(r.hdr!.error, -5);
  } finally { await m.close(); }
});

test.run();
