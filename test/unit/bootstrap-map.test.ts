/**
 * v6 bootstraps of 1 MiB and more are mapped, not read (src/rafs/image.ts):
 * the mapped image reads exactly like the bytes read into memory, dropping
 * its pages loses nothing, and a chunk table record rewritten under the
 * reader after the load is refused rather than handed out as another chunk.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrnoError } from '../../src/common/errno';
import { dropMappedPages, isMapped } from '../../src/common/libc';
import { loadBootstrapFile, loadBootstrapFileAsync } from '../../src/rafs/image';
import { loadRafs } from '../../src/rafs/metadata/super';
import type { RafsSuper } from '../../src/rafs/metadata/types';
import { needFixtures, TEXTURE } from '../support/fixtures';

const FIXTURE = path.join(TEXTURE, 'bootstrap/rafs-v6-2.2.boot');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'boot-map-'));

/** The fixture padded with zero blocks to `size` (past the tables: nothing reads them). */
function padded(name: string, size: number): string {
  const b = fs.readFileSync(FIXTURE);
  const out = Buffer.alloc(Math.max(size, b.length));
  b.copy(out);
  const p = path.join(tmp, name);
  fs.writeFileSync(p, out);
  return p;
}

/** Path → [size, chunk list] of every file, and every directory listing. */
function describe(sb: RafsSuper): string[] {
  const out: string[] = [];
  const walk = (ino: number, p: string) => {
    const i = sb.getInode(ino);
    if (i.isReg()) out.push(`${p} ${i.size} ${JSON.stringify(i.chunks().map((c) => ({ ...c, digest: c.digest.toString('hex') })))}`);
    if (i.isDir()) {
      for (const c of i.children()) {
        assert.is(i.lookup(c.name)?.ino, c.ino);
        out.push(`${p}/${c.name.toString()} -> ${c.ino}`);
        walk(c.ino, `${p}/${c.name.toString()}`);
      }
    }
  };
  walk(sb.meta.rootIno, '');
  return out;
}

test('a mapped bootstrap reads like one read into memory, before and after its pages are dropped', async () => {
  if (!needFixtures('bootstrap-map')) return;
  const small = padded('small.boot', 0);
  assert.not.ok(isMapped(loadBootstrapFile(small).boot), 'a small bootstrap is read');
  const file = padded('big.boot', 2 << 20);
  const want = describe(loadRafs(fs.readFileSync(file)));
  for (const loaded of [loadBootstrapFile(file), await loadBootstrapFileAsync(file)]) {
    assert.ok(isMapped(loaded.boot), 'a bootstrap of 2 MiB is mapped');
    assert.equal(describe(loaded.sb), want);
    dropMappedPages(loaded.boot);
    assert.equal(describe(loaded.sb), want);
    assert.equal(Buffer.compare(loaded.boot, fs.readFileSync(file)), 0);
  }
});

test('a chunk table record rewritten after the load is refused, not served as another chunk', () => {
  if (!needFixtures('bootstrap-map')) return;
  const file = padded('changed.boot', 2 << 20);
  const { sb } = loadBootstrapFile(file);
  const lib = sb.root().lookup(Buffer.from('lib.rs'))!;
  assert.is(lib.chunks()[0].index, 0);
  // the record of chunk 0 now claims to be chunk 7 (its checks at load passed long ago)
  const start = sb.meta.raw.chunk_table_offset as number;
  const fd = fs.openSync(file, 'r+');
  try {
    for (let k = 0; k < 2; k++) {
      const idx = Buffer.alloc(4);
      fs.readSync(fd, idx, 0, 4, start + k * 80 + 72);
      if (idx.readUInt32LE(0) === 0) { idx.writeUInt32LE(7); fs.writeSync(fd, idx, 0, 4, start + k * 80 + 72); }
    }
  } finally { fs.closeSync(fd); }
  try {
    lib.chunks();
    assert.unreachable('the changed record was used');
  } catch (e) {
    assert.instance(e, ErrnoError);
    assert.match((e as Error).message, /changed under the reader|cannot resolve/);
  }
});

test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test.run();
