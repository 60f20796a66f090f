import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { compress, decompress, Compressor } from '../../src/common/compress';
import { initDigest, digest, DigestAlgorithm } from '../../src/common/digest';

test('codecs round trip', () => {
  const data = Buffer.alloc(100000, 'abcdefgh');
  for (const c of [Compressor.Zstd, Compressor.Lz4Block, Compressor.GZip]) {
    const r = compress(c, data);
    assert.ok(r.compressed);
    assert.equal(decompress(c, r.data, data.length), data);
  }
});

test('blake3 of empty input', async () => {
  await initDigest();
  assert.is(digest(DigestAlgorithm.Blake3, Buffer.alloc(0)).toString('hex'), 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262');
});

test.run();
