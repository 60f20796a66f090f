/**
 * Fuzz-style robustness of the blob side: random corruptions of real blobs
 * (ToC, tar headers, blob.meta, chunk data, inlined bootstrap) must be
 * rejected with an ErrnoError or read back verified — never crash.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrnoError } from '../../src/common/errno';
import { initDigest } from '../../src/common/digest';
import { loadRafs } from '../../src/rafs/metadata/super';
import { BlobFile, extractInlinedBootstrap, readBlobMeta, readTocList } from '../../src/storage/blob/blob-file';
import { readChunk } from '../../src/storage/blob/chunk-reader';
import { needFixtures, TEXTURE as F } from '../support/fixtures';

const ITERATIONS = Number(process.env.FUZZ_ITERATIONS ?? 300);

function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s / 0x1_0000_0000; };
}

function corrupt(orig: Buffer, r: () => number): Buffer {
  const b = Buffer.from(orig);
  if (r() < 0.2) return b.subarray(0, Math.floor(r() * b.length));
  const n = 1 + Math.floor(r() * 6);
  for (let k = 0; k < n; k++) {
    // favour the tail, where the ToC, headers and blob.meta live
    const off = r() < 0.7 ? b.length - 1 - Math.floor(r() * Math.min(b.length, 8192)) : Math.floor(r() * b.length);
    if (r() < 0.5) b[off] ^= 1 << Math.floor(r() * 8);
    else if (off + 4 <= b.length) b.writeUInt32LE(Math.floor(r() * 0x1_0000_0000), off);
  }
  return b;
}

test.before(async () => { await initDigest(); });

/**
 * Write `ITERATIONS` corruptions of `orig` to a temp file and run `exercise`
 * on each: it must succeed or throw an ErrnoError. Returns how many were rejected.
 */
function fuzzBlobFile(orig: Buffer, seed: number, exercise: (blob: BlobFile) => void): number {
  const tmp = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'fuzz-blob-')), 'blob');
  const r = rng(seed);
  let rejected = 0;
  try {
    for (let it = 0; it < ITERATIONS; it++) {
      fs.writeFileSync(tmp, corrupt(orig, r));
      const blob = BlobFile.open(tmp);
      try {
        exercise(blob);
      } catch (e) {
        if (!(e instanceof ErrnoError)) assert.unreachable(`iteration ${it}: ${(e as Error)?.stack}`);
        rejected++;
      } finally { blob.close(); }
    }
  } finally { fs.rmSync(path.dirname(tmp), { recursive: true, force: true }); }
  return rejected;
}

test('corrupted data blobs (be7d77…) are rejected or verified', () => {
  if (!needFixtures('fuzz-blob corrupted data blobs (be7d77…) are rejected or verified')) return;
  const sb = loadRafs(fs.readFileSync(`${F}/bootstrap/rafs-v6-2.2.boot`));
  const info = sb.blobs[0];
  const chunks = sb.chunkTable();
  const rejected = fuzzBlobFile(fs.readFileSync(`${F}/blobs/${info.blobId}`), 42, (blob) => {
    readTocList(blob);
    readBlobMeta(blob, info);
    for (const c of chunks) readChunk(blob, c, info, { validate: true });
  });
  assert.ok(rejected > 0);
});

test('corrupted blobs with an inlined bootstrap (toc/2fa78c…) are rejected or load', () => {
  if (!needFixtures('fuzz-blob corrupted blobs with an inlined bootstrap (toc/2fa78c…) are rejected or load')) return;
  const orig = fs.readFileSync(`${F}/toc/2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca`);
  const rejected = fuzzBlobFile(orig, 7, (blob) => {
    const boot = extractInlinedBootstrap(blob);
    if (!boot) return;
    const sb = loadRafs(boot);
    for (const d of sb.root().children()) sb.getInode(d.ino).chunks();
  });
  assert.ok(rejected > 0);
});

test.run();
