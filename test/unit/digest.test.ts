/** blake3 (native SIMD binding, WASM fallback) and sha256 digests agree with each other and with known values. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as crypto from 'node:crypto';
import { createBLAKE3 } from 'hash-wasm';
import { DigestAlgorithm, blake3Implementation, digest, hasher, initDigest } from '../../src/common/digest';

test('blake3: one-shot and incremental digests equal the WASM reference, and the empty-input value', async () => {
  await initDigest();
  const ref = await createBLAKE3();
  // BLAKE3 of the empty input (published test vector)
  assert.is(digest(DigestAlgorithm.Blake3, Buffer.alloc(0)).toString('hex'), 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262');
  for (const n of [1, 1023, 1024, 1025, 65536, (1 << 20) + 7]) {
    const b = crypto.randomBytes(n);
    const want = Buffer.from(ref.init().update(b).digest('binary'));
    assert.equal(digest(DigestAlgorithm.Blake3, b), want, `one-shot ${n}`);
    const h = hasher(DigestAlgorithm.Blake3);
    h.update(b.subarray(0, n >> 1)).update(new Uint8Array(b.buffer, b.byteOffset + (n >> 1), n - (n >> 1)));
    assert.equal(h.digest(), want, `incremental ${n}`);
  }
  console.log(`  blake3 implementation: ${blake3Implementation}`);
});

test('sha256 matches node:crypto', () => {
  const b = crypto.randomBytes(5000);
  assert.equal(digest(DigestAlgorithm.Sha256, b), crypto.createHash('sha256').update(b).digest());
});

test.run();
