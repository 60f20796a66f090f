/**
 * Build the edge-case source tree every round-trip test uses: chunk-boundary
 * sizes, sparse and empty files, hardlinks, every symlink kind, fifo, devices,
 * special mode bits, owners, nanosecond mtimes, xattrs, 255-byte and
 * non-ASCII names, deep paths and a large directory.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mknod, encodeDev, setXattr } from '../../src/common/libc';

export interface EdgeTreeOptions { chunkSize: number; manyFiles?: number; devices?: boolean }

function pattern(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  let x = seed * 2654435761 >>> 0;
  for (let i = 0; i < size; i += 4) { x = (Math.imul(x, 1103515245) + 12345) >>> 0; b.writeUInt32LE(x, i < size - 3 ? i : size - 4 >= 0 ? size - 4 : 0); }
  return b;
}

export function makeEdgeTree(root: string, o: EdgeTreeOptions): void {
  const cs = o.chunkSize;
  const w = (rel: string, data: Buffer | string) => { const p = path.join(root, rel); fs.mkdirSync(path.dirname(p), { recursive: true }); fs.writeFileSync(p, data); return p; };
  fs.mkdirSync(root, { recursive: true });
  w('empty', '');
  w('one-byte', 'x');
  w('sizes/chunk-minus-1', pattern(cs - 1, 1));
  w('sizes/chunk', pattern(cs, 2));
  w('sizes/chunk-plus-1', pattern(cs + 1, 3));
  w('sizes/three-chunks-and-a-bit', pattern(3 * cs + 5, 4));
  w('sizes/dup-of-chunk', pattern(cs, 2)); // whole-file dedup
  w('text/hello.txt', 'hello nydus\n'.repeat(1000));
  // sparse: hole, data, hole
  const sp = w('sparse', '');
  const fd = fs.openSync(sp, 'r+');
  fs.writeSync(fd, pattern(5000, 9), 0, 5000, 2 * cs + 100);
  fs.ftruncateSync(fd, 5 * cs + 7);
  fs.closeSync(fd);
  // hardlinks, across directories
  const h = w('links/hard-a', 'shared content\n');
  fs.mkdirSync(path.join(root, 'links/sub'), { recursive: true });
  fs.linkSync(h, path.join(root, 'links/hard-b'));
  fs.linkSync(h, path.join(root, 'links/sub/hard-c'));
  // symlinks of every kind
  fs.symlinkSync('hard-a', path.join(root, 'links/sym-rel'));
  fs.symlinkSync('/etc/passwd', path.join(root, 'links/sym-abs'));
  fs.symlinkSync('does/not/exist', path.join(root, 'links/sym-dangling'));
  fs.symlinkSync('sub', path.join(root, 'links/sym-dir'));
  fs.symlinkSync('../text/hello.txt', path.join(root, 'links/sym-up'));
  fs.symlinkSync('t'.repeat(1000), path.join(root, 'links/sym-long'));
  fs.symlinkSync('sym-loop-b', path.join(root, 'links/sym-loop-a'));
  fs.symlinkSync('sym-loop-a', path.join(root, 'links/sym-loop-b'));
  // special files
  fs.mkdirSync(path.join(root, 'special'));
  mknod(path.join(root, 'special/fifo'), 0o010644, 0);
  if (o.devices !== false) {
    mknod(path.join(root, 'special/null'), 0o020666, encodeDev(1, 3));
    mknod(path.join(root, 'special/loop0'), 0o060660, encodeDev(7, 0));
    mknod(path.join(root, 'special/whiteout'), 0o020000, 0);
  }
  // modes and owners
  const m = w('modes/setuid', '#!/bin/sh\n'); fs.chmodSync(m, 0o4755);
  const g = w('modes/setgid', 'g'); fs.chmodSync(g, 0o2750);
  fs.mkdirSync(path.join(root, 'modes/sticky')); fs.chmodSync(path.join(root, 'modes/sticky'), 0o1777);
  const ro = w('modes/readonly', 'r'); fs.chmodSync(ro, 0o444);
  const own = w('modes/owned', 'o'); fs.chownSync(own, 1234, 5678);
  fs.lchownSync(path.join(root, 'links/sym-rel'), 4321, 8765);
  // xattrs
  const x = w('xattrs/file', 'x');
  setXattr(x, 'user.mime', Buffer.from('text/plain'));
  setXattr(x, 'user.empty', Buffer.alloc(0));
  setXattr(x, 'trusted.overlay.opaque', Buffer.from('y'));
  setXattr(x, 'security.capability', Buffer.from('0100000200000000000000000000000000000000', 'hex'));
  setXattr(path.join(root, 'xattrs'), 'user.dir', Buffer.from('on a directory'));
  // names
  w(`names/${'n'.repeat(255)}`, 'long name');
  w('names/héllo-日本語-ünïcödé', 'utf8 name');
  w('names/with space and \'quotes\'', 'q');
  fs.mkdirSync(path.join(root, 'empty-dir'));
  // deep path
  let deep = 'deep';
  for (let i = 0; i < 40; i++) deep += `/d${i}`;
  w(`${deep}/leaf`, 'bottom');
  // many small files in one directory (several EROFS directory blocks)
  for (let i = 0; i < (o.manyFiles ?? 400); i++) w(`many/file-${String(i).padStart(5, '0')}`, `content ${i}\n`);
  // nanosecond mtimes, set last (children change dir mtimes)
  const t = (p: string, s: number, ns: number) => fs.lutimesSync(path.join(root, p), s + ns / 1e9, s + ns / 1e9);
  t('text/hello.txt', 1600000000, 123456789);
  t('links/sym-rel', 1500000000, 0);
  t('sizes/chunk', 1234567890, 500000000);
}
