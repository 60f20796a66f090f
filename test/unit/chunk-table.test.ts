/**
 * The v6 chunk table kept as bytes (src/rafs/metadata/chunk-table.ts):
 * lookups by (blob, chunk index) decode the first record of a key, table
 * order is kept by all(), per-blob counts, and hostile records are refused
 * at load (blob index, 24-bit index, u64 beyond 2^53).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ChunkTable } from '../../src/rafs/metadata/chunk-table';
import { encodeChunkInfoRecord } from '../../src/rafs/format/v6';
import type { ChunkInfo } from '../../src/rafs/metadata/types';

const rec = (blobIndex: number, index: number, tag: number): ChunkInfo => ({
  digest: Buffer.alloc(32, tag), blobIndex, flags: 0, compressed: false, compressedSize: 4096, uncompressedSize: 4096,
  compressedOffset: tag * 4096, uncompressedOffset: tag * 4096, fileOffset: 0, index, crc32: 0,
});

function table(recs: ChunkInfo[], pad = 64): { buf: Buffer; start: number; size: number } {
  const buf = Buffer.alloc(pad + recs.length * 80 + 16);
  recs.forEach((r, i) => encodeChunkInfoRecord(r, buf, pad + i * 80));
  return { buf, start: pad, size: recs.length * 80 };
}

test('lookup, duplicates (first record wins), table order, counts', () => {
  const recs = [rec(1, 5, 1), rec(0, 7, 2), rec(0, 2, 3), rec(1, 5, 4), rec(0, 0, 5)];
  const t = table(recs);
  const ct = new ChunkTable(t.buf, t.start, t.size, 2);
  assert.is(ct.count, 5);
  assert.is(ct.get(1, 5)?.compressedOffset, 4096, 'the first of two records with one key');
  assert.is(ct.get(0, 2)?.digest.toString('hex'), '03'.repeat(32));
  assert.is(ct.get(0, 0)?.compressedOffset, 5 * 4096);
  assert.is(ct.get(0, 5), undefined);
  assert.is(ct.get(2, 0), undefined);
  assert.equal(ct.all().map((c) => c.compressedOffset / 4096), [1, 2, 3, 4, 5]);
  assert.equal(ct.countsByBlob(2), [3, 2]);
  const a = ct.get(0, 7)!;
  a.digest.fill(0);
  assert.is(ct.get(0, 7)?.digest[0], 2, 'a decoded record is a copy');
});

test('hostile records are refused at load', () => {
  assert.throws(() => new ChunkTable(table([rec(2, 0, 1)]).buf, 64, 80, 2), /blob_index 2 >= 2 blobs/);
  assert.throws(() => new ChunkTable(table([rec(0, 1 << 24, 1)]).buf, 64, 80, 1), /exceeds 24 bits/);
  const t = table([rec(0, 0, 1)]);
  t.buf.writeUInt32LE(0x200000, 64 + 48 + 4); // compressed_offset high word: 2^53
  assert.throws(() => new ChunkTable(t.buf, 64, 80, 1), /beyond 2\^53/);
  assert.throws(() => new ChunkTable(t.buf, 64, 79, 1), /not a multiple of 80/);
});

test.run();
