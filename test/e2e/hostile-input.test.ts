/**
 * Hostile and broken inputs through the CLI: tars that try to escape the
 * root, malformed tars, bootstraps with forged names, corrupted blobs. Each
 * must fail with a clear error (exit 1, "error: ...") and never write
 * outside the output directory.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { nydusImage, nydusImageResult, tmpdir } from '../support/cli';

const work = tmpdir('hostile');

function tarHeader(name: string, type: string, size: number, link = ''): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100);
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(size.toString(8).padStart(11, '0') + '\0', 124);
  h.write('00000000000\0', 136);
  h.write(type, 156);
  h.write(link, 157, 100);
  h.write('ustar\0', 257);
  h.write('00', 263);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  return h;
}

function tarOf(entries: Array<[string, string, string, string?]>): string {
  const parts: Buffer[] = [];
  for (const [name, type, data, link] of entries) {
    parts.push(tarHeader(name, type, data.length, link));
    const d = Buffer.alloc(Math.ceil(data.length / 512) * 512);
    d.write(data);
    parts.push(d);
  }
  parts.push(Buffer.alloc(1024));
  const f = path.join(work, `t${Math.random().toString(16).slice(2)}.tar`);
  fs.writeFileSync(f, Buffer.concat(parts));
  return f;
}

function expectBuildError(tar: string, msg: RegExp) {
  const r = nydusImageResult(['create', '-t', 'tar-rafs', '--bootstrap', path.join(work, 'b'), '--blob-dir', work, tar]);
  assert.is(r.status, 1, r.stderr);
  assert.match(r.stderr, msg);
}

test('tar entries that escape the root are rejected', () => {
  expectBuildError(tarOf([['../evil', '0', 'x']]), /escapes the image root/);
  expectBuildError(tarOf([['a/../../evil', '0', 'x']]), /escapes the image root/);
});

test('a symlink used as a directory is rejected', () => {
  expectBuildError(tarOf([['a', '2', '', '/etc'], ['a/passwd', '0', 'x']]), /not a directory/);
});

test('hardlinks to missing targets and malformed tars are rejected', () => {
  expectBuildError(tarOf([['h', '1', '', 'nowhere']]), /target not found/);
  const t = tarOf([['f', '0', 'hello']]);
  const b = fs.readFileSync(t);
  b[0] ^= 0xff;
  fs.writeFileSync(t, b);
  expectBuildError(t, /bad header checksum/);
  const trunc = tarOf([['f', '0', 'x'.repeat(5000)]]);
  fs.truncateSync(trunc, 1024);
  expectBuildError(trunc, /past end of file|truncated/);
});

test('a bootstrap with a forged ".." name fails to unpack and writes nothing outside', () => {
  for (const v of ['5', '6']) {
    const src = path.join(work, `src${v}`);
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'zz'), 'payload');
    const boot = path.join(work, `forged${v}.boot`);
    nydusImage(['create', '--fs-version', v, '--bootstrap', boot, '--blob-dir', work, src]);
    const b = fs.readFileSync(boot);
    let n = 0;
    for (let i = b.indexOf('zz'); i >= 0; i = b.indexOf('zz', i + 2)) { b.write('..', i); n++; }
    assert.ok(n > 0);
    fs.writeFileSync(boot, b);
    const out = path.join(work, `out${v}`);
    const r = nydusImageResult(['unpack', boot, '--blob-dir', work, '--output-dir', out]);
    assert.is(r.status, 1, `v${v}: forged image unpacked`);
    assert.match(r.stderr, /^error: .*(EINVAL|EIO)/m);
    assert.not.ok(fs.existsSync(path.join(work, 'payload')));
  }
});

test('a corrupted blob byte fails chunk verification with the blob and chunk named', () => {
  const src = path.join(work, 'srcc');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'data'), Buffer.alloc(200000, 'abc'));
  const blobs = path.join(work, 'cblobs');
  fs.mkdirSync(blobs);
  const boot = path.join(work, 'c.boot');
  nydusImage(['create', '--compressor', 'none', '--bootstrap', boot, '--blob-dir', blobs, src]);
  const [blob] = fs.readdirSync(blobs);
  const p = path.join(blobs, blob);
  const b = fs.readFileSync(p);
  b[1000] ^= 0x55;
  fs.writeFileSync(p, b);
  const r = nydusImageResult(['check', boot, '--blob-dir', blobs, '--verify-chunks']);
  assert.is(r.status, 1);
  assert.match(r.stderr, new RegExp(`${blob.slice(0, 16)}.*chunk`));
  assert.match(r.stderr, /EIO/);
  const u = nydusImageResult(['unpack', boot, '--blob-dir', blobs, '--verify-chunks', '--output', path.join(work, 'c.tar')]);
  assert.is(u.status, 1);
});

test('missing blob and garbage bootstrap give clear errors', () => {
  const g = path.join(work, 'garbage');
  fs.writeFileSync(g, Buffer.alloc(10000, 7));
  const r = nydusImageResult(['check', g]);
  assert.is(r.status, 1);
  assert.match(r.stderr, /error: /);
  const r2 = nydusImageResult(['check', path.join(work, 'c.boot'), '--blob-dir', '/nonexistent', '--verify-chunks']);
  assert.is(r2.status, 1);
  assert.match(r2.stderr, /not found/);
});

test.after(() => fs.rmSync(work, { recursive: true, force: true }));
test.run();
