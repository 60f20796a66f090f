/**
 * The builder's directory walk states entries with statx(2) relative to
 * their directory (src/rafs/builder/statx.ts): every field must be what
 * fs.lstatSync gives, for every kind of entry the edge tree has (devices,
 * hardlinks, symlinks, fifos), and mtimes before 1970 and past 2038.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { encodeDevFromStat, lutimes } from '../../src/common/libc';
import { ErrnoError } from '../../src/common/errno';
import { statEntries, statPath } from '../../src/rafs/builder/statx';
import { makeEdgeTree } from '../support/edge-tree';

const isErrno = (e: unknown, codes: string[]) => e instanceof ErrnoError && codes.includes(e.code);
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-statx-'));
test.after(() => fs.rmSync(work, { recursive: true, force: true }));

/** What the walk made of fs.lstatSync before (the fields statx.ts must reproduce). */
function expected(p: string) {
  const st = fs.lstatSync(p, { bigint: true });
  return {
    mode: Number(st.mode), uid: Number(st.uid), gid: Number(st.gid), nlink: Number(st.nlink), size: Number(st.size),
    mtime: Number(st.mtimeNs / 1_000_000_000n), mtimeNsec: Number(st.mtimeNs % 1_000_000_000n), rdev: encodeDevFromStat(Number(st.rdev)),
    ino: st.ino, dev: st.dev,
  };
}

test('statEntries: the fields of fs.lstatSync for every entry of the edge tree', () => {
  const src = path.join(work, 'src');
  makeEdgeTree(src, { chunkSize: 0x10000, devices: process.getuid?.() === 0 });
  const times: Array<[string, number, number]> = [['old', -1000, 123456789], ['old-whole', -5, 0], ['late', 2 ** 33 + 7, 999999999]];
  for (const [name, sec, nsec] of times) {
    fs.writeFileSync(path.join(src, name), name);
    lutimes(path.join(src, name), sec, nsec);
  }
  let n = 0;
  const ids = new Map<string, string>();
  const rec = (dir: string) => {
    const names = fs.readdirSync(dir);
    const stats = statEntries(`${dir}/`, names);
    names.forEach((name, i) => {
      const p = `${dir}/${name}`;
      const { ino, dev, ...want } = expected(p);
      const { id, ...got } = stats[i];
      assert.equal(got, want, p);
      // one id per (dev, ino): hardlinks share it, nothing else does
      const key = `${dev}:${ino}`;
      assert.is(ids.get(id) ?? key, key, `${p}: id ${id}`);
      ids.set(id, key);
      n++;
      if (fs.lstatSync(p).isDirectory()) rec(p);
    });
  };
  rec(src);
  assert.ok(n > 50, `${n} entries`);
  const { ino: _i, dev: _d, ...root } = expected(src);
  const { id: _id, ...gotRoot } = statPath(src);
  assert.equal(gotRoot, root);
  // mtimes split as BigInt nanoseconds were: truncated towards zero
  const old = statEntries(`${src}/`, ['old', 'old-whole', 'late']);
  assert.equal(old.map((s) => [s.mtime, s.mtimeNsec]), [[-999, 123456789 - 1e9], [-5, 0], [2 ** 33 + 7, 999999999]]);
});

test('statEntries: an entry that is gone is ENOENT naming its path', () => {
  const d = path.join(work, 'gone');
  fs.mkdirSync(d);
  fs.writeFileSync(path.join(d, 'here'), '');
  assert.throws(() => statEntries(`${d}/`, ['here', 'not-here']), (e: unknown) => isErrno(e, ['ENOENT']) && /not-here/.test((e as Error).message));
  assert.throws(() => statPath(path.join(d, 'nothing')), (e: unknown) => isErrno(e, ['ENOENT']));
});

test.run();
