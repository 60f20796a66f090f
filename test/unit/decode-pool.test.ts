/**
 * The chunk decode pool (src/storage/blob/decode-pool.ts): chunks decoded on a
 * worker are exactly what the inline decoder gives, a chunk that does not
 * decode or verify comes back as an error (its neighbours unharmed), and a
 * dead worker fails its chunks without hanging; fetchRegion then downloads
 * bad chunks again and never serves them.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as crypto from 'node:crypto';
import { Compressor, compress } from '../../src/common/compress';
import { DigestAlgorithm, digest, initDigest } from '../../src/common/digest';
import type { BlobInfo, ChunkInfo } from '../../src/storage/format/types';
import { closeDecodePool, decodeRun, decodeRunAsync, startDecodePool } from '../../src/storage/blob/decode-pool';
import { chunkArena, enableChunkArena } from '../../src/storage/blob/chunk-arena';
import { enterRead, exitRead } from '../../src/common/read-epoch';
import { fetchRegion } from '../../src/storage/cache/region';
import type { BlobBackend } from '../../src/storage/backend/backend';

const info = { blobIndex: 0, blobId: 'a'.repeat(64), compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3, chunkCount: 8 } as BlobInfo;

/** 8 chunks of 64 KiB (even ones text: compressed; odd ones random: stored raw) laid out back to back. */
function blob(): { raw: Buffer; chunks: ChunkInfo[]; datas: Buffer[] } {
  const parts: Buffer[] = [];
  const chunks: ChunkInfo[] = [];
  const datas: Buffer[] = [];
  let off = 0;
  for (let i = 0; i < 8; i++) {
    const data = i % 2 ? crypto.randomBytes(64 << 10) : Buffer.from(`chunk ${i} `.repeat(8192).slice(0, 64 << 10));
    const c = compress(Compressor.Zstd, data);
    chunks.push({
      digest: digest(DigestAlgorithm.Blake3, data), blobIndex: 0, index: i, flags: c.compressed ? 1 : 0, compressed: c.compressed,
      compressedOffset: off, compressedSize: c.data.length, uncompressedOffset: i * (64 << 10), uncompressedSize: data.length, fileOffset: i * (64 << 10), crc32: 0,
    });
    parts.push(c.data);
    datas.push(data);
    off += c.data.length;
  }
  return { raw: Buffer.concat(parts), chunks, datas };
}

test.before(async () => { await initDigest(); await startDecodePool(); });
test.after(async () => { await closeDecodePool(); });

test('chunks decoded on the worker equal the inline decoder, verified', async () => {
  const { raw, chunks, datas } = blob();
  const inline = decodeRun(info, raw, 0, chunks, true);
  const got = await Promise.all(decodeRunAsync(info, Buffer.from(raw), 0, chunks, true));
  for (let i = 0; i < 8; i++) {
    assert.ok(Buffer.isBuffer(got[i]), `chunk ${i}: ${(got[i] as Error).message}`);
    assert.ok((got[i] as Buffer).equals(datas[i]), `chunk ${i}`);
    assert.ok((inline[i] as Buffer).equals(datas[i]));
  }
});

test('without validation, stored chunks are answered from the request bytes (kept here), only compressed ones go to the worker', async () => {
  const { raw, chunks, datas } = blob();
  // at an offset inside a bigger request, as a merged readahead run is
  const pad = 4096;
  const req = Buffer.concat([Buffer.alloc(pad, 0xee), raw]);
  const run = chunks.map((c) => ({ ...c, compressedOffset: c.compressedOffset + 1000 }));
  const got = await Promise.all(decodeRunAsync(info, req, 1000 - pad, run, false));
  assert.is(req.length, raw.length + pad, 'the request buffer was not moved to the worker');
  for (let i = 0; i < 8; i++) {
    assert.ok(Buffer.isBuffer(got[i]), `chunk ${i}: ${(got[i] as Error).message}`);
    assert.ok((got[i] as Buffer).equals(datas[i]), `chunk ${i}`);
    // odd chunks are stored raw: views of the request, no copy
    if (i % 2) assert.is((got[i] as Buffer).buffer, req.buffer, `chunk ${i} is a view of the request`);
    else assert.is.not((got[i] as Buffer).buffer, req.buffer);
  }
  // a compressed chunk whose bytes are corrupt fails alone
  const bad = Buffer.from(req);
  bad.fill(0xff, pad + chunks[2].compressedOffset, pad + chunks[2].compressedOffset + 16);
  const got2 = await Promise.all(decodeRunAsync(info, bad, 1000 - pad, run, false));
  assert.instance(got2[2], Error);
  for (const i of [0, 1, 3, 4, 5, 6, 7]) assert.ok((got2[i] as Buffer).equals(datas[i]), `chunk ${i}`);
});

/** 300 small compressed chunks (1-2 KiB), chunk 150 with a wrong digest. */
function smallBlob(): { raw: Buffer; chunks: ChunkInfo[]; datas: Buffer[] } {
  const parts: Buffer[] = [];
  const chunks: ChunkInfo[] = [];
  const datas: Buffer[] = [];
  let off = 0;
  for (let i = 0; i < 300; i++) {
    const data = Buffer.from(crypto.randomBytes(1000).toString('hex').slice(0, 1000 + i * 3)); // compresses, but not to nothing
    const c = compress(Compressor.Zstd, data);
    chunks.push({
      digest: digest(DigestAlgorithm.Blake3, data), blobIndex: 0, index: i, flags: 1, compressed: true,
      compressedOffset: off, compressedSize: c.data.length, uncompressedOffset: i * 4096, uncompressedSize: data.length, fileOffset: 0, crc32: 0,
    });
    parts.push(c.data);
    datas.push(data);
    off += c.data.length;
  }
  chunks[150] = { ...chunks[150], digest: Buffer.alloc(32, 1) };
  const raw = Buffer.concat(parts);
  assert.ok(raw.length >= 64 << 10, 'big enough for the worker');
  return { raw, chunks, datas };
}

test('many small chunks come back from the worker in batched messages, each intact, errors in place', async () => {
  const { raw, chunks, datas } = smallBlob();
  process.env.NYDUS_DECODE_INLINE_BELOW = '0'; // small chunks to the worker too
  try {
    const got = await Promise.all(decodeRunAsync(info, raw, 0, chunks, true));
    got.forEach((d, i) => {
      if (i === 150) { assert.instance(d, Error); return; }
      assert.ok(Buffer.isBuffer(d) && d.equals(datas[i]), `chunk ${i}`);
    });
  } finally {
    delete process.env.NYDUS_DECODE_INLINE_BELOW;
  }
});

test('a run of small chunks is decoded on the loop in slices: the first at once, the loop turns between slices; intact, errors in place, arena slots given back', async () => {
  const { raw, chunks, datas } = smallBlob();
  enableChunkArena(16 << 20);
  try {
    // loop turns, counted by an immediate that schedules itself
    let turn = 0;
    let ticking = true;
    const tick = () => { turn++; if (ticking) setImmediate(tick); };
    setImmediate(tick);
    const reader = enterRead(); // a request reading what is decoded: its slots are not reused before it is done
    const ps = decodeRunAsync(info, raw, 0, chunks, true);
    const turns: number[] = [];
    ps.forEach((p, i) => void p.then(() => { turns[i] = turn; }));
    await Promise.resolve();
    assert.is(turns[0], 0, 'the first slice is decoded at once');
    assert.not.ok(await settlesAtOnce(ps), 'the rest on later turns');
    const got = await Promise.all(ps);
    ticking = false;
    assert.ok(turns[299] > 0 && new Set(turns).size >= 2, `decoded over several turns: ${[...new Set(turns)]}`);
    got.forEach((d, i) => {
      if (i === 150) { assert.instance(d, Error); return; }
      assert.ok(Buffer.isBuffer(d) && d.equals(datas[i]), `chunk ${i}`);
      assert.ok(chunkArena()!.owns(d as Buffer), `chunk ${i} in an arena slot`);
    });
    await new Promise((r) => setImmediate(r)); // the producer's references go on the next turn
    assert.is(chunkArena()!.stats().used, 0, 'nothing kept them: every slot retired');
    assert.is(chunkArena()!.stats().retired, 300, 'and none reused while the reader is out (the bad chunk too)');
    exitRead(reader);
  } finally {
    enableChunkArena(0);
  }
});

test('a chunk with a wrong digest or a corrupt frame is an error, its neighbours are served', async () => {
  const { raw, chunks, datas } = blob();
  chunks[2] = { ...chunks[2], digest: Buffer.alloc(32, 7) };
  const bad = Buffer.from(raw);
  bad.fill(0xff, chunks[4].compressedOffset, chunks[4].compressedOffset + 16); // chunk 4 is compressed text
  const got = await Promise.all(decodeRunAsync(info, bad, 0, chunks, true));
  assert.instance(got[2], Error);
  assert.match((got[2] as Error).message, /digest mismatch/);
  assert.instance(got[4], Error);
  for (const i of [0, 1, 3, 5, 6, 7]) assert.ok((got[i] as Buffer).equals(datas[i]), `chunk ${i}`);
});

test('a dead worker fails its chunks (no hang), and the pool starts again', async () => {
  const { raw, chunks, datas } = blob();
  const pending = decodeRunAsync(info, Buffer.from(raw), 0, chunks, true);
  await closeDecodePool();
  for (const r of await Promise.all(pending)) assert.ok(r instanceof Error || Buffer.isBuffer(r));
  const again = await Promise.all(decodeRunAsync(info, Buffer.from(raw), 0, chunks, true));
  for (let i = 0; i < 8; i++) assert.ok((again[i] as Buffer).equals(datas[i]), `chunk ${i}`);
  await startDecodePool();
});

test('stopping the pool while its workers are still loading waits for them (no teardown mid-load), then starts again', async () => {
  const { raw, chunks, datas } = blob();
  await closeDecodePool();
  for (let i = 0; i < 3; i++) {
    void startDecodePool(); // loading now
    await closeDecodePool();
  }
  await startDecodePool();
  const got = await Promise.all(decodeRunAsync(info, Buffer.from(raw), 0, chunks, true));
  got.forEach((d, i) => assert.ok((d as Buffer).equals(datas[i]), `chunk ${i}`));
});

/** Whether all of `ps` settle within a few microtask turns (decoded inline, no worker hop). */
async function settlesAtOnce(ps: Array<Promise<unknown>>): Promise<boolean> {
  let done = false;
  void Promise.all(ps).then(() => { done = true; });
  for (let i = 0; i < 5; i++) await Promise.resolve();
  return done;
}

test('workers start at the first request worth a hop, which (like all until one runs) is decoded inline', async () => {
  const { raw, chunks, datas } = blob();
  await closeDecodePool();
  const first = decodeRunAsync(info, Buffer.from(raw), 0, chunks, true);
  assert.ok(await settlesAtOnce(first), 'no worker running: decoded inline, nothing waits for a thread to start');
  (await Promise.all(first)).forEach((d, i) => assert.ok((d as Buffer).equals(datas[i]), `chunk ${i}`));
  await startDecodePool(); // started by that request: now running
  const next = decodeRunAsync(info, Buffer.from(raw), 0, chunks, true);
  assert.not.ok(await settlesAtOnce(next), 'on the worker once it runs');
  (await Promise.all(next)).forEach((d, i) => assert.ok((d as Buffer).equals(datas[i]), `chunk ${i}`));
});

test('fetchRegion: a chunk that fails verification on the worker is downloaded again, never served', async () => {
  const { raw, chunks, datas } = blob();
  let reads = 0;
  const backend = {
    type: 'registry',
    async read(_id: string, offset: number, length: number) {
      reads++;
      const b = Buffer.from(raw.subarray(offset, offset + length));
      // the first (merged) request flips a byte of chunk 3; its refetch is clean
      if (reads === 1) b[chunks[3].compressedOffset - offset + 100] ^= 1;
      return b;
    },
  } as unknown as BlobBackend;
  const got = await Promise.all(fetchRegion({ backend, verify: true }, info, chunks));
  for (let i = 0; i < 8; i++) assert.ok(got[i].equals(datas[i]), `chunk ${i}`);
  assert.is(reads, 2);
});

test.run();
