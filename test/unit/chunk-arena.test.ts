/**
 * Recycled chunk memory (src/storage/blob/chunk-arena.ts) and read epochs
 * (src/common/read-epoch.ts): a slot is never handed out again while it is
 * referenced or while a request that was in flight when it was retired is
 * still out; the decode pool decompresses into slots (on the worker and
 * inline) and the holders (memory LRU, blob cache flights) keep them.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Compressor, compress } from '../../src/common/compress';
import { DigestAlgorithm, digest, initDigest } from '../../src/common/digest';
import { addressOf } from '../../src/common/libc';
import { enterRead, exitRead, quiescent, currentEpoch, readsInFlight } from '../../src/common/read-epoch';
import { ChunkArena, chunkArena, enableChunkArena } from '../../src/storage/blob/chunk-arena';
import { closeDecodePool, decodeRunAsync, startDecodePool } from '../../src/storage/blob/decode-pool';
import { ChunkMemoryCache } from '../../src/storage/cache/memory';
import { FileCache } from '../../src/storage/cache/filecache';
import { fetchRegion } from '../../src/storage/cache/region';
import type { BlobBackend } from '../../src/storage/backend/backend';
import type { BlobInfo, ChunkInfo } from '../../src/storage/format/types';

const tick = () => new Promise((r) => setImmediate(r));

test.before(async () => { await initDigest(); });
test.after(async () => { enableChunkArena(0); await closeDecodePool(); });

test('read epochs: quiescent once every token taken before the epoch is back, in any order', () => {
  const a = enterRead();
  const b = enterRead();
  const e = currentEpoch();
  const c = enterRead(); // taken after e: does not matter for e
  assert.not.ok(quiescent(e));
  exitRead(b);
  assert.not.ok(quiescent(e), 'a is still out');
  exitRead(a);
  assert.ok(quiescent(e));
  assert.not.ok(quiescent(currentEpoch()), 'c is still out');
  exitRead(c);
  exitRead(c); // twice: ignored
  assert.ok(quiescent(currentEpoch()));
  assert.is(readsInFlight(), 0);
});

test('arena: sizes rounded to classes, bounded by the cap, views of one slot map to it', () => {
  const arena = new ChunkArena(8 << 20, 4 << 20);
  const a = arena.alloc(5000)!;
  assert.is(a.length, 5000);
  assert.ok(a.buffer instanceof SharedArrayBuffer);
  assert.ok(arena.owns(a.subarray(100, 200)));
  assert.not.ok(arena.owns(Buffer.alloc(10)));
  assert.is(arena.alloc(0), undefined);
  assert.is(arena.alloc((4 << 20) + 1), undefined, 'larger than a slab');
  const big1 = arena.alloc(4 << 20);
  assert.ok(big1, 'second slab');
  assert.is(arena.alloc(4 << 20), undefined, 'cap reached');
  assert.equal(arena.stats().slabs, 2);
});

test('arena: a released slot is reused only after the requests in flight at its release are done', () => {
  const arena = new ChunkArena(4 << 20, 4 << 20);
  const slots: Buffer[] = [];
  for (;;) { const b = arena.alloc(1 << 20); if (!b) break; slots.push(b); }
  assert.is(slots.length, 4);
  const reader = enterRead(); // a request that was handed slots[0]
  arena.release(slots[0]);
  assert.is(arena.alloc(1 << 20), undefined, 'retired but a reader may still copy it');
  const later = enterRead(); // came after: irrelevant
  exitRead(reader);
  const again = arena.alloc(1 << 20);
  assert.ok(again && again.byteOffset === slots[0].byteOffset, 'reused once the reader is done');
  exitRead(later);
  // a held slot (retain) is not retired by the producer's release
  arena.retain(slots[1]);
  arena.release(slots[1]);
  assert.is(arena.alloc(1 << 20), undefined, 'still referenced');
  arena.release(slots[1].subarray(10, 20)); // any view of it
  assert.ok(arena.alloc(1 << 20), 'last reference dropped, nobody reading');
});

test('arena: retaining a retired slot takes it back; stale retirements are skipped', () => {
  const arena = new ChunkArena(4 << 20, 4 << 20);
  const all: Buffer[] = [];
  for (;;) { const b = arena.alloc(2 << 20); if (!b) break; all.push(b); }
  const r = enterRead();
  arena.release(all[0]);
  arena.retain(all[0]); // the LRU kept it in the same turn
  exitRead(r);
  assert.is(arena.alloc(2 << 20), undefined, 'held again: not free');
  arena.release(all[0]);
  const b = arena.alloc(2 << 20)!;
  assert.is(b.byteOffset, all[0].byteOffset);
  assert.is(arena.alloc(2 << 20), undefined, 'handed out once, not twice');
});

test('arena: trim gives back the pages of slabs nothing uses (they read as zeros), never of one in use', () => {
  const arena = new ChunkArena(16 << 20, 8 << 20);
  const a = arena.alloc(1 << 20)!; // slab 1 (1 MiB class)
  const b = arena.alloc(8 << 20)!; // slab 2
  assert.is(addressOf(a) % 4096, 0, 'slots start on page boundaries');
  assert.is(addressOf(b) % 4096, 0);
  a.fill(0xee);
  b.fill(0xdd);
  const reader = enterRead();
  arena.release(b);
  assert.is(arena.trim(), 0, 'slab 1 in use, slab 2 retired while a reader may still copy it');
  assert.is(b[0], 0xdd);
  exitRead(reader);
  assert.is(arena.trim(), 8 << 20, 'slab 2 given back');
  assert.is(b[0], 0, 'its pages read as zeros');
  assert.is(b[(8 << 20) - 1], 0);
  assert.is(a[0], 0xee, 'slab 1 untouched');
  assert.is(arena.trim(), 0, 'already trimmed');
  const again = arena.alloc(8 << 20)!;
  again.fill(1);
  assert.is(again[100], 1, 'usable again');
  arena.release(a);
  arena.release(again);
  assert.is(arena.trim(), 16 << 20);
  assert.equal(arena.stats().used + arena.stats().retired, 0);
  assert.ok(arena.alloc(1 << 20), 'free slots handed out after a trim');
});

test('arena: releaseSoon waits for the promise callbacks of the delivery', async () => {
  const arena = new ChunkArena(4 << 20, 4 << 20);
  const all: Buffer[] = [];
  for (;;) { const b = arena.alloc(4 << 20); if (!b) break; all.push(b); }
  const p = Promise.resolve(all[0]);
  arena.releaseSoon(all[0]);
  let kept: Buffer | undefined;
  await p.then((d) => { arena.retain(d); kept = d; });
  await tick();
  assert.is(arena.alloc(4 << 20), undefined, 'the holder retained it first');
  arena.release(kept!);
  assert.ok(arena.alloc(4 << 20));
});

test('arena: a slab holds 8 slots of its class, at least 256 KiB of them (a class used now and then costs little)', () => {
  const arena = new ChunkArena(64 << 20, 8 << 20);
  assert.ok(arena.alloc(4096));
  assert.equal(arena.stats().bytes, 256 << 10, '64 slots of 4 KiB');
  assert.ok(arena.alloc(100 << 10));
  assert.equal(arena.stats().bytes, (256 << 10) + (1 << 20), '8 slots of 128 KiB');
  assert.ok(arena.alloc(3 << 20));
  assert.equal(arena.stats().bytes, (256 << 10) + (1 << 20) + (8 << 20), 'the slab size at most: 2 slots of 4 MiB');
  assert.equal(arena.stats().slabs, 3);
  // the cap counts the slabs' own sizes
  const small = new ChunkArena(512 << 10, 8 << 20);
  for (let i = 0; i < 128; i++) assert.ok(small.alloc(4096), `slot ${i}`);
  assert.is(small.alloc(4096), undefined, 'two 256 KiB slabs: cap reached');
});

test('arena: a retired slot nobody can read any more is handed out before a never-used one; one a reader may copy is not', () => {
  const arena = new ChunkArena(1 << 20, 8 << 20);
  const a = arena.alloc(4096)!;
  const b = arena.alloc(4096)!;
  arena.release(a);
  const c = arena.alloc(4096)!;
  assert.is(c.byteOffset, a.byteOffset, 'memory used before comes first (its pages are resident already)');
  const reader = enterRead();
  arena.release(c);
  const d = arena.alloc(4096)!;
  assert.is.not(d.byteOffset, c.byteOffset, 'a reader may still copy it: a never-used slot instead');
  assert.is.not(d.byteOffset, b.byteOffset);
  exitRead(reader);
  assert.is(arena.alloc(4096)!.byteOffset, c.byteOffset, 'reused once the reader is done');
});

test('arena: shed gives back the pages of retired slots beyond the spare, oldest first, never of one a reader may copy or one held', () => {
  const arena = new ChunkArena(1 << 20, 8 << 20);
  const s: Buffer[] = [];
  for (let i = 0; i < 64; i++) { const b = arena.alloc(4096)!; b.fill(0xab); s.push(b); }
  for (let i = 0; i < 32; i++) arena.release(s[i]);
  const reader = enterRead();
  for (let i = 32; i < 48; i++) arena.release(s[i]);
  assert.is(arena.shed(4 * 4096), 32 * 4096, 'the 32 retired before the reader came; 16 more retired since');
  for (let i = 0; i < 32; i++) assert.is(s[i][0] | s[i][4095], 0, `slot ${i} reads as zeros`);
  for (let i = 32; i < 64; i++) assert.is(s[i][0] & s[i][4095], 0xab, `slot ${i} kept (a reader may copy it, or it is in use)`);
  assert.equal([arena.stats().free, arena.stats().retired, arena.stats().used], [32, 16, 16]);
  exitRead(reader);
  arena.retain(s[33]); // held again (a cache kept it): not retired any more, never shed
  assert.is(arena.shed(4 * 4096), 11 * 4096, '15 retired, 4 kept');
  assert.is(s[33][0], 0xab, 'held');
  for (let i = 44; i < 48; i++) assert.is(s[i][0], 0xab, `slot ${i}: the spare, newest retired`);
  assert.is(arena.shed(4 * 4096), 0, 'nothing beyond the spare');
  assert.is(arena.alloc(4096)!.byteOffset, s[44].byteOffset, 'a spare slot is handed out first');
  const z = arena.alloc(4096)!;
  assert.is(z.byteOffset, s[45].byteOffset);
  for (let i = 0; i < 4; i++) arena.alloc(4096);
  const shedOne = arena.alloc(4096)!; // a slot given back: usable, zeros until written
  assert.ok(s.slice(0, 44).some((x) => x.byteOffset === shedOne.byteOffset));
  assert.is(shedOne[0], 0);
  shedOne.fill(7);
  assert.is(shedOne[4095], 7);
});

const info = { blobIndex: 0, blobId: 'b'.repeat(64), compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3, chunkCount: 8 } as BlobInfo;

function blob(n: number, size: number): { raw: Buffer; chunks: ChunkInfo[]; datas: Buffer[] } {
  const parts: Buffer[] = [];
  const chunks: ChunkInfo[] = [];
  const datas: Buffer[] = [];
  let off = 0;
  for (let i = 0; i < n; i++) {
    const data = i % 3 === 2 ? crypto.randomBytes(size) : Buffer.from(`arena chunk ${i} `.repeat(size).slice(0, size));
    const c = compress(Compressor.Zstd, data);
    chunks.push({
      digest: digest(DigestAlgorithm.Blake3, data), blobIndex: 0, index: i, flags: c.compressed ? 1 : 0, compressed: c.compressed,
      compressedOffset: off, compressedSize: c.data.length, uncompressedOffset: i * size, uncompressedSize: size, fileOffset: i * size, crc32: 0,
    });
    parts.push(c.data);
    datas.push(data);
    off += c.data.length;
  }
  return { raw: Buffer.concat(parts), chunks, datas };
}

test('decode pool: compressed chunks are decompressed into arena slots (worker and inline), stored ones are not', async () => {
  enableChunkArena(16 << 20);
  const arena = chunkArena()!;
  const { raw, chunks, datas } = blob(8, 256 << 10);
  const reader = enterRead();
  await startDecodePool();
  const got = await Promise.all(decodeRunAsync(info, Buffer.from(raw), 0, chunks, true)); // worker
  got.forEach((d, i) => {
    assert.ok(Buffer.isBuffer(d) && d.equals(datas[i]), `chunk ${i}`);
    assert.is(arena.owns(d as Buffer), chunks[i].compressed, `chunk ${i} in the arena iff compressed`);
  });
  const one = await decodeRunAsync(info, raw.subarray(0, chunks[0].compressedSize), 0, [chunks[0]], true)[0]; // inline
  assert.ok(one instanceof Buffer && one.equals(datas[0]) && arena.owns(one));
  await tick();
  // produced, released after delivery; nobody holds them but this reader, so they are retired, not free
  assert.is(arena.stats().used, 0);
  assert.ok(arena.stats().retired >= 6);
  // asked to (the blob cache writes them with O_DIRECT): stored ones are copied into slots of their own
  const copied = await Promise.all(decodeRunAsync(info, Buffer.from(raw), 0, chunks, true, true));
  copied.forEach((d, i) => {
    assert.ok(Buffer.isBuffer(d) && d.equals(datas[i]), `chunk ${i}`);
    assert.ok(arena.owns(d as Buffer), `chunk ${i} (${chunks[i].compressed ? 'compressed' : 'stored'}) in the arena`);
  });
  exitRead(reader);
  enableChunkArena(0);
});

test('decode pool: a chunk that fails in its slot is an error and the slot goes back', async () => {
  enableChunkArena(4 << 20, 4 << 20);
  const arena = chunkArena()!;
  const { raw, chunks } = blob(4, 256 << 10);
  const bad = chunks.map((c) => ({ ...c }));
  bad[0].digest = Buffer.alloc(32, 1);
  const got = await Promise.all(decodeRunAsync(info, Buffer.from(raw), 0, bad, true));
  assert.ok(got[0] instanceof Error);
  await tick();
  assert.is(arena.stats().used, 0, 'no slot kept for the failed chunk');
  // with nobody reading, every slot can be handed out again
  const n = arena.stats().retired + arena.stats().free;
  assert.ok(n > 0);
  for (let i = 0; i < n; i++) assert.ok(arena.alloc(256 << 10), `slot ${i}`);
  enableChunkArena(0);
});

test('decode pool stopped mid-run: chunks fail or are intact, and every slot comes back once the workers have stopped', async () => {
  enableChunkArena(32 << 20, 8 << 20);
  const arena = chunkArena()!;
  const { raw, chunks, datas } = blob(24, 512 << 10);
  await startDecodePool();
  const ps = decodeRunAsync(info, Buffer.from(raw), 0, chunks, true);
  const closing = closeDecodePool();
  const got = await Promise.all(ps);
  got.forEach((d, i) => assert.ok(d instanceof Error || d.equals(datas[i]), `chunk ${i}`));
  await closing;
  await tick();
  assert.is(arena.stats().used, 0, 'no slot left referenced');
  enableChunkArena(0);
});

test('memory LRU keeps its chunks referenced and lets go of evicted ones', async () => {
  enableChunkArena(4 << 20, 4 << 20);
  const arena = chunkArena()!;
  const lru = new ChunkMemoryCache(2 << 20);
  const bufs = [0, 1, 2, 3].map(() => arena.alloc(1 << 20)!); // the whole arena: the 4th stays with the test
  bufs.forEach((b, i) => b.fill(i + 1));
  for (let i = 0; i < 3; i++) {
    await lru.get(`k${i}`, async () => bufs[i]);
    arena.release(bufs[i]); // the producer's reference
  }
  await tick();
  // k0 was evicted (2 MiB hold 2 chunks): its slot is free to reuse, k1/k2 are held
  const s = arena.stats();
  assert.is(s.used, 3);
  const again = arena.alloc(1 << 20)!;
  assert.is(again.byteOffset, bufs[0].byteOffset);
  assert.is((await lru.get('k1', async () => Buffer.alloc(0)))[0], 2, 'held chunk intact');
  lru.clear();
  assert.is(arena.stats().used, 2, 'only the test\'s own slots');
  enableChunkArena(0);
});

/** A backend serving `raw` that reads into the buffer it is given; `intos`: those buffers. */
function readingInto(raw: Buffer): { backend: BlobBackend; intos: Buffer[] } {
  const intos: Buffer[] = [];
  const backend = {
    type: 'test', readsInto: true,
    async read(_id: string, off: number, len: number, opts?: { into?: Buffer }) {
      const out = opts?.into ?? Buffer.alloc(len);
      if (opts?.into) intos.push(opts.into);
      raw.copy(out, 0, off, off + len);
      return out;
    },
    async close() {},
  } as unknown as BlobBackend;
  return { backend, intos };
}

test('fetchRegion: a backend reading into the arena; stored chunks are views of that read, intact while held', async () => {
  enableChunkArena(24 << 20, 8 << 20);
  const arena = chunkArena()!;
  const { raw, chunks, datas } = blob(9, 256 << 10);
  const { backend, intos } = readingInto(raw);
  const reader = enterRead();
  const got = await Promise.all(fetchRegion({ backend, verify: true }, info, chunks));
  got.forEach((d, i) => assert.ok(d.equals(datas[i]), `chunk ${i}`));
  assert.is(intos.length, 1, 'the request was read into a slot');
  const stored = chunks.findIndex((c) => !c.compressed);
  assert.ok(stored >= 0 && got[stored].buffer === intos[0].buffer, 'a stored chunk is a view of the read');
  const lru = new ChunkMemoryCache(8 << 20);
  await lru.get('stored', async () => got[stored]);
  exitRead(reader);
  await tick();
  await tick();
  // everything not held can be handed out again: overwrite it all
  let n = 0;
  for (const size of [256 << 10, intos[0].length]) for (;;) { const b = arena.alloc(size); if (!b) break; b.fill(0xee); n++; }
  assert.ok(n > 0);
  const kept = await lru.get('stored', async () => Buffer.alloc(0));
  assert.ok(kept.equals(datas[stored]), 'the held view is intact');
  lru.clear();
  enableChunkArena(0);
});


test('fetchRegion with alignStored: stored chunks are copied out of the read, whose slot is reused while they are held', async () => {
  enableChunkArena(24 << 20, 8 << 20);
  const arena = chunkArena()!;
  const { raw, chunks, datas } = blob(9, 256 << 10);
  const { backend, intos } = readingInto(raw);
  const reader = enterRead();
  const got = await Promise.all(fetchRegion({ backend, verify: true, alignStored: true }, info, chunks));
  got.forEach((d, i) => assert.ok(d.equals(datas[i]), `chunk ${i}`));
  assert.is(intos.length, 1, 'the request was read into a slot');
  const stored = chunks.findIndex((c) => !c.compressed);
  assert.ok(stored >= 0 && arena.owns(got[stored]) && got[stored].buffer !== intos[0].buffer, 'a stored chunk is in a slot of its own');
  const lru = new ChunkMemoryCache(8 << 20);
  await lru.get('stored', async () => got[stored]);
  exitRead(reader);
  await tick();
  await tick();
  let readSlotAgain = false;
  for (const size of [256 << 10, intos[0].length]) {
    for (;;) {
      const b = arena.alloc(size);
      if (!b) break;
      if (b.buffer === intos[0].buffer && b.byteOffset === intos[0].byteOffset) readSlotAgain = true;
      b.fill(0xee);
    }
  }
  assert.ok(readSlotAgain, 'the read\'s slot is free while the stored chunk is held');
  assert.ok((await lru.get('stored', async () => Buffer.alloc(0))).equals(datas[stored]), 'the held copy is intact');
  lru.clear();
  enableChunkArena(0);
});
test('fetchRegion: a backend reporting progress has the chunks already in decoded (in groups) before the rest arrives; a retry after a failure fills the rest elsewhere', async () => {
  enableChunkArena(24 << 20, 8 << 20);
  const { raw, chunks, datas } = blob(9, 256 << 10);
  const endOf = (k: number) => chunks[k].compressedOffset + chunks[k].compressedSize;
  // the backend sends the first 5 chunks, then waits to be let go; `fail`: the rest comes from a retry into a buffer of its own
  const streaming = (fail: boolean) => {
    let go!: () => void;
    const held = new Promise<void>((r) => { go = r; });
    const backend = {
      type: 'test', readsInto: true,
      async read(_id: string, off: number, len: number, opts?: { into?: Buffer; onProgress?: (n: number) => void }) {
        const into = opts!.into!;
        const cut = endOf(4) - off;
        raw.copy(into, 0, off, off + cut);
        opts!.onProgress!(cut);
        await held;
        if (fail) { const own = Buffer.alloc(len); raw.copy(own, 0, off, off + len); return own; }
        raw.copy(into, cut, off + cut, off + len);
        opts!.onProgress!(len);
        return into;
      },
      async close() {},
    } as unknown as BlobBackend;
    return { backend, go: () => go() };
  };
  for (const fail of [false, true]) {
    const { backend, go } = streaming(fail);
    const reader = enterRead();
    const ps = fetchRegion({ backend, verify: true }, info, chunks);
    const early = await Promise.race([Promise.all(ps.slice(0, 5)).then(() => 'decoded'), new Promise((r) => setTimeout(() => r('waited'), 2000))]);
    assert.is(early, 'decoded', 'the first five chunks did not wait for the rest of the request');
    let late = false;
    void ps[5].then(() => { late = true; });
    await tick();
    assert.not.ok(late, 'a chunk whose bytes are not in waits');
    go();
    const got = await Promise.all(ps);
    got.forEach((d, i) => assert.ok(d.equals(datas[i]), `chunk ${i} (${fail ? 'retry' : 'one attempt'})`));
    exitRead(reader);
  }
  // a request that fails after some chunks were decoded fails only the others
  const failing = {
    type: 'test', readsInto: true,
    async read(_id: string, off: number, _len: number, opts?: { into?: Buffer; onProgress?: (n: number) => void }) {
      const cut = endOf(4) - off;
      raw.copy(opts!.into!, 0, off, off + cut);
      opts!.onProgress!(cut);
      await tick();
      throw new Error('connection reset');
    },
    async close() {},
  } as unknown as BlobBackend;
  const rs = await Promise.allSettled(fetchRegion({ backend: failing, verify: true }, info, chunks));
  rs.forEach((r, i) => assert.is(r.status, i < 5 ? 'fulfilled' : 'rejected', `chunk ${i}`));
  rs.slice(0, 5).forEach((r, i) => assert.ok((r as PromiseFulfilledResult<Buffer>).value.equals(datas[i])));
  enableChunkArena(0);
});

test('memory LRU counts a chunk in its own slot at the slot size (small chunks cannot hold more memory than its capacity)', async () => {
  enableChunkArena(8 << 20, 8 << 20);
  const arena = chunkArena()!;
  const lru = new ChunkMemoryCache(64 << 10);
  const bufs = Array.from({ length: 12 }, () => arena.alloc(5000)!); // 8 KiB slots
  assert.is(arena.footprint(bufs[0]), 8192);
  assert.is(arena.footprint(bufs[0].subarray(10, 20)), 10, 'a view inside a slot counts its length');
  for (let i = 0; i < bufs.length; i++) { await lru.get(`k${i}`, async () => bufs[i]); arena.release(bufs[i]); }
  assert.is(arena.stats().used, 8, '64 KiB of 8 KiB slots held');
  lru.clear();
  enableChunkArena(0);
});

test('blob cache: a flight keeps its chunks until written; a late reader joining it gets intact bytes', async () => {
  enableChunkArena(8 << 20);
  const arena = chunkArena()!;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arena-fc-'));
  const { raw, chunks, datas } = blob(6, 512 << 10);
  const i2 = { ...info, chunkCount: chunks.length, uncompressedSize: chunks.length * (512 << 10) } as BlobInfo;
  const backend: BlobBackend = {
    async read(_id, off, len) { return Buffer.from(raw.subarray(off, off + len)); },
    async close() {},
  } as BlobBackend;
  const cache = new FileCache({ workDir: dir, backend });
  try {
    const reader = enterRead();
    const datasP = await cache.fetchRun(i2, chunks, { backend, validate: true });
    const got = await Promise.all(datasP.map((p) => p!));
    got.forEach((d, i) => assert.ok(d.equals(datas[i]), `chunk ${i}`));
    assert.ok(got.some((d) => arena.owns(d)), 'decoded into the arena');
    // while its flight is on (not yet written) a chunk stays referenced
    await cache.prefetchRun(i2, chunks, { backend, validate: true });
    exitRead(reader);
    await tick();
    // the first reader is gone; the chunks stay referenced by the flight until written (or already written)
    const read = await Promise.all(chunks.map((c) => cache.readChunk(i2, c, { backend, validate: true })));
    read.forEach((d, i) => assert.ok(d.equals(datas[i]), `chunk ${i} read back`));
    // fill every free slot with garbage: nothing served above may change
    for (;;) { const b = arena.alloc(512 << 10); if (!b) break; b.fill(0xee); }
    const again = await Promise.all(chunks.map((c) => cache.readChunk(i2, c, { backend, validate: true })));
    again.forEach((d, i) => assert.ok(d.equals(datas[i]), `chunk ${i} from the cache file`));
  } finally {
    await cache.close();
    fs.rmSync(dir, { recursive: true, force: true });
    enableChunkArena(0);
  }
});

test.run();
