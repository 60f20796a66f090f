import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { localfsDirConfig } from '../../src/common/config';
import { createBlobDevice } from '../../src/storage/factory';
import { ChunkMemoryCache, MEMORY_CACHE_BYTES, MEMORY_CACHE_BYTES_WITH_BLOBCACHE, memoryCacheBytes } from '../../src/storage/cache/memory';
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

test.after(() => fs.rmSync(work, { recursive: true, force: true }));
test.run();
