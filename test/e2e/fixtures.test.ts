/**
 * Every upstream fixture image through the real CLI: `check --verify-chunks`
 * (all chunk digests) and `unpack`, and the v6 inlined-bootstrap blob also
 * when it arrives zstd-compressed as a whole (fixture zstd/…zst).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { decompress as zstdDecompress } from 'zstd-napi';
import { nydusImage, nydusImageResult, sh, tmpdir } from '../support/cli';
import { FIXTURES_DIR, HISTORY_TEXTURE as H, needFixtures, TEXTURE as F } from '../support/fixtures';

const TOC_BLOB = '2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca';

const cases: Array<[string, string[], RegExp]> = [
  [`${F}/repeatable/sha256-nocompress-repeatable`, ['--blob-dir', `${F}/repeatable/blobs`], /RAFS v5 image is valid: 52 inodes, 21 files, 27 chunks/],
  [`${F}/repeatable/blake3-lz4_block-non_repeatable`, ['--blob-dir', `${F}/repeatable/blobs`], /RAFS v5 image is valid/],
  [`${H}/repeatable/blake3-lz4_block-non_repeatable`, ['--blob-dir', `${F}/repeatable/blobs`], /RAFS v5 image is valid/],
  [`${H}/repeatable/sha256-nocompress-repeatable`, ['--blob-dir', `${F}/repeatable/blobs`], /RAFS v5 image is valid/],
  [`${F}/bootstrap/rafs-v6-2.2.boot`, ['--blob-dir', `${F}/blobs`], /RAFS v6 image is valid: 3 inodes, 2 files, 2 chunks \(2 verified\)/],
  [`${F}/toc/${TOC_BLOB}`, [], /RAFS v6 image is valid: 4 inodes, 3 files, 3 chunks \(3 verified\)/],
];

for (const [boot, args, expect] of cases) {
  test(`fixture ${path.basename(boot)} checks and unpacks`, () => {
    if (!needFixtures(`fixture ${path.basename(boot)} checks and unpacks (${path.relative(FIXTURES_DIR, boot)})`)) return;
    assert.match(nydusImage(['check', boot, ...args, '--verify-chunks']), expect);
    const dir = tmpdir('fixture');
    try {
      nydusImage(['unpack', boot, ...args, '--output', path.join(dir, 'out.tar')]);
      const list = sh('tar', ['-tvf', path.join(dir, 'out.tar')]);
      assert.ok(list.length > 0);
    } finally { fs.rmSync(dir, { recursive: true, force: true }); }
  });
}

test('v6 fixture file bytes: lib.rs and sync_io.rs have the documented sizes', () => {
  if (!needFixtures('v6 fixture file bytes: lib.rs and sync_io.rs have the documented sizes')) return;
  const dir = tmpdir('fixture-v6');
  try {
    nydusImage(['unpack', `${F}/bootstrap/rafs-v6-2.2.boot`, '--blob-dir', `${F}/blobs`, '--output-dir', `${dir}/out`]);
    assert.is(fs.statSync(`${dir}/out/lib.rs`).size, 16931);
    assert.is(fs.statSync(`${dir}/out/sync_io.rs`).size, 13400);
    assert.match(fs.readFileSync(`${dir}/out/lib.rs`, 'utf8'), /Copyright/);
  } finally { fs.rmSync(dir, { recursive: true, force: true }); }
});

test('zstd-compressed toc blob: decompressed, it is the same image', () => {
  if (!needFixtures('zstd-compressed toc blob: decompressed, it is the same image')) return;
  const dir = tmpdir('fixture-zst');
  try {
    const blob = path.join(dir, TOC_BLOB);
    fs.writeFileSync(blob, zstdDecompress(fs.readFileSync(`${F}/zstd/${TOC_BLOB}.zst`)));
    assert.ok(fs.readFileSync(blob).equals(fs.readFileSync(`${F}/toc/${TOC_BLOB}`)));
    assert.match(nydusImage(['check', blob, '--verify-chunks']), /3 chunks \(3 verified\)/);
  } finally { fs.rmSync(dir, { recursive: true, force: true }); }
});

test('nydusd_daemon_test_bootstrap: superblock parses, non-conforming inodes are reported', () => {
  if (!needFixtures('nydusd_daemon_test_bootstrap: superblock parses, non-conforming inodes are reported')) return;
  const boot = `${F}/bootstrap/nydusd_daemon_test_bootstrap`;
  assert.match(nydusImage(['inspect', boot]), /RAFS v5, chunk size 0x100000.*\n.*inodes 16816/);
  const r = nydusImageResult(['check', boot]);
  assert.is(r.status, 1);
  assert.match(r.stderr, /error: v5 inode index 1: invalid i_mode/);
});

test('tar fixtures (all entry types, macOS flavour, empty) build into valid images', () => {
  if (!needFixtures('tar fixtures (all entry types, macOS flavour, empty) build into valid images')) return;
  const dir = tmpdir('fixture-tar');
  try {
    for (const t of ['all-entry-type', 'all-entry-type-macos', 'empty']) {
      const boot = path.join(dir, `${t}.boot`);
      nydusImage(['create', '-t', 'tar-rafs', '--bootstrap', boot, '--blob-dir', dir, `${F}/tar/${t}.tar`]);
      const listing = nydusImage(['check', boot, '--blob-dir', dir, '--verify-chunks', '-v']);
      assert.match(listing, /image is valid/);
      if (t === 'all-entry-type') {
        // four names, one inode; the symlink keeps its (dangling) target
        const ino = /hardlink1\.txt$/m.test(listing) && listing.match(/ino=(\d+) \/tar\/dir1\/dir3\/hardlink1\.txt/)![1];
        for (const n of ['dir1/dir3/xfile.txt', 'dir1/hardlink2.txt', 'dir2/hardlink3.txt']) assert.match(listing, new RegExp(`ino=${ino} /tar/${n.replace(/\./g, '\\.')} =>`));
        assert.match(listing, /\/tar\/dir2\/symlink1\.txt -> \.\.\/dir1\/dir3\/file1\.txt/);
      }
      if (t === 'all-entry-type-macos') assert.match(listing, /this_is_really_a_very_long_name_to_test_tar_entry_type_a+\.txt/);
    }
  } finally { fs.rmSync(dir, { recursive: true, force: true }); }
});

test.run();
