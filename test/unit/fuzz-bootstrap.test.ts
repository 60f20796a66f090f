/**
 * Fuzz-style robustness: random corruptions (byte flips, random words,
 * truncation) of real v5 and v6 bootstraps must either load and walk
 * cleanly or fail with an ErrnoError — never another exception, a hang or
 * a crash. Seeded, so a failure is reproducible.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ErrnoError } from '../../src/common/errno';
import { initDigest } from '../../src/common/digest';
import { loadRafs } from '../../src/rafs/metadata/super';
import type { RafsInode, RafsSuper } from '../../src/rafs/metadata/types';
import { needFixtures, TEXTURE as FIX } from '../support/fixtures';

const IMAGES = [
  'repeatable/sha256-nocompress-repeatable',
  'repeatable/blake3-lz4_block-non_repeatable',
  'bootstrap/rafs-v6-2.2.boot',
].map((p) => path.join(FIX, p));

const ITERATIONS = Number(process.env.FUZZ_ITERATIONS ?? 400);

function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s / 0x1_0000_0000; };
}

/** Touch everything a reader exposes, with bounded work. */
function exercise(sb: RafsSuper): void {
  let budget = 20000;
  const seen = new Set<number>();
  const visit = (ino: number, depth: number) => {
    if (--budget < 0 || depth > 64 || seen.has(ino)) return;
    seen.add(ino);
    const i: RafsInode = sb.getInode(ino);
    void [i.mode, i.size, i.uid, i.gid, i.mtime, i.nlink, i.rdev];
    i.xattrs();
    if (i.isSymlink()) i.readlink();
    if (i.isReg()) i.chunks();
    if (i.isDir()) {
      const kids = i.children();
      if (kids.length) i.lookup(kids[0].name);
      for (const k of kids.slice(0, 200)) visit(k.ino, depth + 1);
    }
  };
  visit(sb.meta.rootIno, 0);
  sb.chunkTable();
  void sb.blobs.length;
}

function mutate(buf: Buffer, r: () => number): Buffer {
  const b = Buffer.from(buf);
  const kind = Math.floor(r() * 4);
  if (kind === 0) return b.subarray(0, Math.floor(r() * b.length));
  const n = 1 + Math.floor(r() * 8);
  for (let k = 0; k < n; k++) {
    // bias towards the metadata-heavy start of the file
    const off = Math.floor((r() < 0.6 ? r() * Math.min(b.length, 16384) : r() * b.length));
    if (kind === 1) b[off] ^= 1 << Math.floor(r() * 8);
    else if (kind === 2 && off + 4 <= b.length) b.writeUInt32LE(Math.floor(r() * 0x1_0000_0000), off);
    else if (off + 4 <= b.length) b.writeUInt32LE([0, 0xffffffff, 0x7fffffff, 1, 4096, 128][Math.floor(r() * 6)], off);
  }
  return b;
}

test.before(async () => { await initDigest(); });

for (const img of IMAGES) {
  test(`random corruptions of ${path.basename(img)} fail cleanly`, () => {
    if (!needFixtures(`fuzz-bootstrap random corruptions of ${path.basename(img)}`)) return;
    const orig = fs.readFileSync(img);
    exercise(loadRafs(orig)); // the pristine image works
    const r = rng(0xc0ffee ^ orig.length);
    let rejected = 0;
    for (let it = 0; it < ITERATIONS; it++) {
      const bad = mutate(orig, r);
      try {
        exercise(loadRafs(bad));
      } catch (e) {
        if (!(e instanceof ErrnoError)) {
          assert.unreachable(`iteration ${it}: non-ErrnoError ${(e as Error)?.constructor?.name}: ${(e as Error)?.stack}`);
        }
        rejected++;
      }
    }
    assert.ok(rejected > 0, 'no corruption was ever detected');
  });
}

test('empty and tiny inputs are rejected with a clear error', () => {
  for (const b of [Buffer.alloc(0), Buffer.alloc(8), Buffer.alloc(1100), Buffer.from('SFAR')]) {
    assert.throws(() => loadRafs(b), (e: unknown) => e instanceof ErrnoError);
  }
});

test.run();
