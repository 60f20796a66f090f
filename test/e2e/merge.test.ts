/**
 * `nydus-image merge`: per-layer tar builds (OCI whiteouts inside) overlaid
 * into one bootstrap. The unpacked result must equal the tree an OCI
 * runtime would produce, with no whiteout file left, and chunks repeated in
 * two layers must be deduplicated.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { diffTrees, treeRecords } from '../support/tree-digest';
import { nydusImage, sh, tmpdir } from '../support/cli';

function write(root: string, files: Record<string, string | null>) {
  for (const [p, c] of Object.entries(files)) {
    const f = path.join(root, p);
    if (c === null) { fs.mkdirSync(f, { recursive: true }); continue; }
    fs.mkdirSync(path.dirname(f), { recursive: true });
    fs.writeFileSync(f, c);
  }
}

const big = 'B'.repeat(300000);

for (const v of ['5', '6']) {
  test(`merge v${v}: OCI whiteouts and opaque dirs applied, dedup reported`, () => {
    const work = tmpdir(`merge-v${v}`);
    try {
      const l1 = path.join(work, 'l1'), l2 = path.join(work, 'l2'), l3 = path.join(work, 'l3'), expect = path.join(work, 'expect');
      write(l1, { 'a/x': 'x1', 'a/y': 'y1', 'b/z': 'z1', 'b/sub/deep': 'd', 'c/keep': 'k', d: null, 'd/inner': 'i', 'shared.bin': big, gone: 'g' });
      write(l2, { 'a/.wh.x': '', 'b/.wh..wh..opq': '', 'b/new': 'n2', 'd.tmp': '', 'copy.bin': big, 'c/keep': 'k2' });
      fs.rmSync(path.join(l2, 'd.tmp'));
      write(l2, { d: 'now a file' });
      write(l3, { '.wh.gone': '', 'e/f': 'f3' });
      write(expect, { 'a/y': 'y1', 'b/new': 'n2', 'c/keep': 'k2', d: 'now a file', 'shared.bin': big, 'copy.bin': big, 'e/f': 'f3' });
      const boots: string[] = [];
      const blobs = path.join(work, 'blobs');
      fs.mkdirSync(blobs);
      for (const [i, l] of [l1, l2, l3].entries()) {
        // normalise metadata so the expected tree can be compared exactly
        sh('chmod', ['-R', 'u=rwX,go=rX', l]);
        const tarFile = path.join(work, `l${i}.tar`);
        sh('tar', ['--numeric-owner', '--owner=0', '--group=0', '--mtime=2021-01-01', '-C', l, '-cf', tarFile, '.']);
        const boot = path.join(work, `l${i}.boot`);
        nydusImage(['create', '-t', 'tar-rafs', '--fs-version', v, '--bootstrap', boot, '--blob-dir', blobs, '--whiteout-spec', 'oci', tarFile]);
        boots.push(boot);
      }
      const merged = path.join(work, 'merged.boot');
      const json = path.join(work, 'merge.json');
      const out = nydusImage(['merge', '--bootstrap', merged, '--output-json', json, ...boots]);
      assert.match(out, /dedup ratio/);
      const j = JSON.parse(fs.readFileSync(json, 'utf8'));
      assert.ok(j.dedup.deduplicated_refs > 0, 'chunks shared across layers were not deduplicated');
      nydusImage(['check', merged, '--blob-dir', blobs, '--verify-chunks']);
      const unpacked = path.join(work, 'out');
      nydusImage(['unpack', merged, '--blob-dir', blobs, '--output-dir', unpacked]);
      sh('chmod', ['-R', 'u=rwX,go=rX', expect]);
      const norm = (recs: ReturnType<typeof treeRecords>) => recs.map((r) => ({ ...r, mtime: '' }));
      assert.equal(diffTrees(norm(treeRecords(expect)), norm(treeRecords(unpacked))), []);
      const listing = nydusImage(['check', merged, '--blob-dir', blobs, '-v']);
      assert.not.match(listing, /\.wh\./);
    } finally { fs.rmSync(work, { recursive: true, force: true }); }
  });
}

test.run();
