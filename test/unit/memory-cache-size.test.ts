import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { localfsDirConfig } from '../../src/common/config';
import { createBlobDevice } from '../../src/storage/factory';
import { ChunkMemoryCache, MEMORY_CACHE_BYTES, MEMORY_CACHE_BYTES_WITH_BLOBCACHE, READ_AHEAD_HOLD_BYTES, memoryCacheBytes } from '../../src/storage/cache/memory';
import type { BlobInfo } from '../../src/storage/format/types';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'memcache-size-'));
const capacity = (dev: unknown): number => (dev as { memory: { capacityBytes: number } }).memory.capacityBytes;

test('the memory LRU is small when a blob cache keeps every chunk, larger without one', async () => {
  assert.is(memoryCacheBytes(true), MEMORY_CACHE_BYTES_WITH_BLOBCACHE);
  assert.is(memoryCacheBytes(false), MEMORY_CACHE_BYTES);
  assert.ok(MEMORY_CACHE_BYTES_WITH_BLOBCACHE < MEMORY_CACHE_BYTES);
  assert.ok(MEMORY_CACHE_BYTES_WITH_BLOBCACHE >= 4 << 20, 'a few 1 MiB chunks for the kernel\'s sub-chunk READs');

  const blobs: BlobInfo[] = [];
  const withCache = localfsDirConfig(work);
  const dev = createBlobDevice(withCache, blobs);
  assert.is(capacity(dev), MEMORY_CACHE_BYTES_WITH_BLOBCACHE);
  await dev.close?.();
  const noCache = { ...withCache, cache: { ...withCache.cache, type: '' } };
  const dev2 = createBlobDevice(noCache, blobs);
  assert.is(capacity(dev2), MEMORY_CACHE_BYTES);
  await dev2.close?.();
});

test('the LRU stays within its bytes: the oldest chunks go first', async () => {
  const m = new ChunkMemoryCache(3 * 1024);
  for (const k of ['a', 'b', 'c', 'd']) await m.get(k, async () => Buffer.alloc(1024, k));
  assert.ok(!m.has('a'), 'evicted');
  for (const k of ['b', 'c', 'd']) assert.ok(m.has(k));
  m.clear();
});

test('read-ahead chunks wait apart until their first read, then join the LRU; unread ones go oldest first past their own bytes', async () => {
  const m = new ChunkMemoryCache(2 * 1024, 4 * 1024);
  let loads = 0;
  const load = (k: string) => async () => { loads++; return Buffer.alloc(1024, k); };
  // read-ahead brings 4 chunks: more than the LRU holds, all of them kept for their reads
  for (const k of ['a', 'b', 'c', 'd']) m.offer(k, Promise.resolve(Buffer.alloc(1024, k)));
  await new Promise((r) => setImmediate(r));
  for (const k of ['a', 'b', 'c', 'd']) assert.ok(m.has(k), `${k} held`);
  // the reads are served from memory, not loaded
  for (const k of ['a', 'b', 'c']) assert.equal(await m.get(k, load(k)), Buffer.alloc(1024, k));
  assert.is(loads, 0);
  // once read they live in the 2 KiB LRU: 'a' is gone, 'd' (unread) still waits
  assert.ok(!m.has('a') && m.has('b') && m.has('c') && m.has('d'));
  // more read-ahead than its bytes: the oldest unread ('d') goes first
  for (const k of ['e', 'f', 'g', 'h']) m.offer(k, Promise.resolve(Buffer.alloc(1024, k)));
  await new Promise((r) => setImmediate(r));
  assert.ok(!m.has('d'));
  for (const k of ['e', 'f', 'g', 'h']) assert.ok(m.has(k));
  assert.equal(await m.get('d', load('d')), Buffer.alloc(1024, 'd'));
  assert.is(loads, 1);
  m.clear();
  for (const k of ['b', 'c', 'e', 'h']) assert.ok(!m.has(k));
});

test('with a blob cache the device holds read-ahead apart; without one read-ahead shares the LRU', async () => {
  const aheadOf = (dev: unknown): number => (dev as { memory: { aheadBytes: number } }).memory.aheadBytes;
  const withCache = localfsDirConfig(work);
  const dev = createBlobDevice(withCache, []);
  assert.is(aheadOf(dev), READ_AHEAD_HOLD_BYTES);
  assert.ok(READ_AHEAD_HOLD_BYTES >= 16 << 20, 'at least the read-ahead window');
  await dev.close?.();
  const dev2 = createBlobDevice({ ...withCache, cache: { ...withCache.cache, type: '' } }, []);
  assert.is(aheadOf(dev2), 0);
  await dev2.close?.();
});

test.after(() => fs.rmSync(work, { recursive: true, force: true }));
test.run();
