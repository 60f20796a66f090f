/** blake3 (native SIMD binding, WASM fallback) and sha256 digests agree with each other and with known values. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as crypto from 'node:crypto';
import { createBLAKE3 } from 'hash-wasm';
import { DigestAlgorithm, blake3Implementation, digest, hasher, initDigest, sha256Stream } from '../../src/common/digest';

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

test('sha256Stream: updates on the thread pool, in order, with peeks between, equal node:crypto (and it runs off this thread here)', async () => {
  const s = sha256Stream();
  assert.ok(s.async, 'the SHA256_* functions of the process OpenSSL were found');
  const ref = crypto.createHash('sha256');
  const parts = [0, 1, 63, 64, 65, 4096, 65536, (1 << 20) + 3].map((n) => crypto.randomBytes(n));
  for (const [i, b] of parts.entries()) {
    if (i % 2) s.update(b);
    else await new Promise<void>((resolve, reject) => s.updateAsync(b, (e) => (e ? reject(e) : resolve())));
    ref.update(b);
    assert.equal(s.peek(), ref.copy().digest(), `after part ${i}`);
  }
  assert.equal(s.digest(), ref.digest());
});

test.run();
