/** The one walk over a file's chunks: spans cover a range exactly, holes where no chunk is. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { fileSpans, firstChunkAfter } from '../../src/storage/blob/chunk-range';
import { decodeChunk } from '../../src/storage/blob/chunk-reader';
import type { BlobInfo, ChunkInfo } from '../../src/storage/format/types';
import { Compressor, compress } from '../../src/common/compress';

const chunk = (fileOffset: number, size: number, index: number): ChunkInfo => ({
  digest: Buffer.alloc(32), blobIndex: 0, index, flags: 0, compressed: false, compressedOffset: 0, compressedSize: size,
  uncompressedOffset: 0, uncompressedSize: size, fileOffset, crc32: 0,
});

// [0,100) chunk 0 · [100,200) hole · [200,300) chunk 1 · [300,350) chunk 2 · then EOF at 400 (trailing hole)
const chunks = [chunk(0, 100, 0), chunk(200, 100, 1), chunk(300, 50, 2)];
const show = (off: number, end: number) => [...fileSpans(chunks, off, end)].map((s) => (s.kind === 'hole' ? `h${s.fileOffset}+${s.length}` : `c${s.index}[${s.from},${s.to})@${s.fileOffset}`));

test('spans cover the range exactly, in order, with holes', () => {
  assert.equal(show(0, 400), ['c0[0,100)@0', 'h100+100', 'c1[0,100)@200', 'c2[0,50)@300', 'h350+50']);
  assert.equal(show(50, 250), ['c0[50,100)@50', 'h100+100', 'c1[0,50)@200']);
  assert.equal(show(120, 180), ['h120+60']);
  assert.equal(show(299, 301), ['c1[99,100)@299', 'c2[0,1)@300']);
  assert.equal(show(360, 400), ['h360+40']);
  assert.equal(show(100, 100), []);
  for (let off = 0; off < 400; off += 7) {
    for (const end of [off + 1, off + 33, 400]) {
      let pos = off;
      for (const s of fileSpans(chunks, off, end)) {
        assert.is(s.fileOffset, pos);
        pos += s.kind === 'hole' ? s.length : s.to - s.from;
      }
      assert.is(pos, end);
    }
  }
});

test('firstChunkAfter: binary search on chunk ends', () => {
  assert.is(firstChunkAfter(chunks, 0), 0);
  assert.is(firstChunkAfter(chunks, 99), 0);
  assert.is(firstChunkAfter(chunks, 100), 1);
  assert.is(firstChunkAfter(chunks, 349), 2);
  assert.is(firstChunkAfter(chunks, 350), 3);
});

test('decodeChunk is the one decoder: compressed, already decoded, wrong sizes', () => {
  const data = Buffer.from('hello hello hello hello');
  const info = { blobId: 'b', compressor: Compressor.Zstd, digester: 'sha256' } as unknown as BlobInfo;
  const z = compress(Compressor.Zstd, data).data;
  const c: ChunkInfo = { ...chunk(0, data.length, 0), compressed: true, compressedSize: z.length };
  assert.equal(decodeChunk(z, c, info, { validate: false }), data);
  assert.equal(decodeChunk(data, c, info, { validate: false, decoded: true }), data);
  assert.throws(() => decodeChunk(data.subarray(1), c, info, { validate: false, decoded: true }), /expected/);
  assert.throws(() => decodeChunk(Buffer.from('junk'), c, info, { validate: false }), /decompression failed/);
});

test.run();
