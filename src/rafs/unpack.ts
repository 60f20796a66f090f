/**
 * `nydus-image unpack`: write an image's tree as a tar (as upstream) or into
 * a directory (extra). Names are validated by the readers; the directory
 * writer additionally refuses duplicate names so a hostile image can never
 * make it follow a symlink it created, and never writes outside `outDir`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { einval } from '../common/errno';
import { devMajor, devMinor, lutimes, mknod, setXattr } from '../common/libc';
import type { RafsInode } from './metadata/types';
import type { RafsImage } from './image';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG } from './builder/tree';

export interface WalkItem { path: string; inode: RafsInode; firstPath?: string }

const MAX_DEPTH = 4096;

/** Depth-first walk, children in name order; `firstPath` is set on repeated (hardlinked) non-directories. */
export function* walkImage(image: RafsImage): Generator<WalkItem> {
  const seen = new Map<number, string>();
  const visitedDirs = new Set<number>();
  function* rec(dir: RafsInode, prefix: string, depth: number): Generator<WalkItem> {
    if (depth > MAX_DEPTH) throw einval(`directory tree deeper than ${MAX_DEPTH} levels at ${prefix}`);
    if (visitedDirs.has(dir.ino)) throw einval(`directory loop: inode ${dir.ino} reached twice (at ${prefix || '/'})`);
    visitedDirs.add(dir.ino);
    for (const d of dir.children()) {
      const name = d.name.toString('utf8');
      const p = prefix ? `${prefix}/${name}` : name;
      const inode = image.sb.getInode(d.ino);
      if (!inode.isDir() && inode.nlink > 1) {
        const first = seen.get(inode.ino);
        if (first !== undefined) { yield { path: p, inode, firstPath: first }; continue; }
        seen.set(inode.ino, p);
      }
      yield { path: p, inode };
      if (inode.isDir()) yield* rec(inode, p, depth + 1);
    }
  }
  yield* rec(image.sb.root(), '', 0);
}

// ---- tar output ----

function octal(buf: Buffer, off: number, len: number, v: number): void {
  buf.write(v.toString(8).padStart(len - 1, '0') + '\0', off, len, 'latin1');
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function header(name: Buffer, type: string, size: number, inode: RafsInode | undefined, linkname: Buffer): Buffer {
  const h = Buffer.alloc(512);
  name.copy(h, 0, 0, Math.min(100, name.length));
  octal(h, 100, 8, inode ? inode.mode & 0o7777 : 0o644);
  octal(h, 108, 8, inode && inode.uid < 0o7777777 ? inode.uid : 0);
  octal(h, 116, 8, inode && inode.gid < 0o7777777 ? inode.gid : 0);
  octal(h, 124, 12, size);
  octal(h, 136, 12, inode ? Math.max(0, Math.min(inode.mtime, 0o77777777777)) : 0);
  h.write(type, 156, 'latin1');
  linkname.copy(h, 157, 0, Math.min(100, linkname.length));
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  if (inode && ((inode.mode & S_IFMT) === S_IFCHR || (inode.mode & S_IFMT) === S_IFBLK)) {
    octal(h, 329, 8, devMajor(inode.rdev));
    octal(h, 337, 8, devMinor(inode.rdev));
  }
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return h;
}

class TarOut {
  private readonly fd: number;
  private pending: Buffer[] = [];
  private pendingLen = 0;
  constructor(file: string) { this.fd = fs.openSync(file, 'w'); }
  write(b: Buffer): void {
    this.pending.push(b);
    this.pendingLen += b.length;
    if (this.pendingLen >= 4 << 20) this.flush();
  }
  pad(len: number): void { if (len % 512) this.write(Buffer.alloc(512 - (len % 512))); }
  flush(): void {
    if (this.pendingLen) fs.writeSync(this.fd, Buffer.concat(this.pending, this.pendingLen));
    this.pending = [];
    this.pendingLen = 0;
  }
  close(): void { this.write(Buffer.alloc(1024)); this.flush(); fs.closeSync(this.fd); }

  entry(p: string, inode: RafsInode, type: string, size: number, linkname: Buffer): void {
    const name = Buffer.from(type === '5' ? `${p}/` : p);
    const pax: Buffer[] = [];
    if (name.length > 100 || /[^\x20-\x7e]/.test(p)) pax.push(paxRecord('path', name));
    if (linkname.length > 100 || /[^\x20-\x7e]/.test(linkname.toString('latin1'))) pax.push(paxRecord('linkpath', linkname));
    if (inode.mtimeNsec) pax.push(paxRecord('mtime', Buffer.from(`${inode.mtime}.${String(inode.mtimeNsec).padStart(9, '0')}`)));
    if (inode.uid >= 0o7777777) pax.push(paxRecord('uid', Buffer.from(String(inode.uid))));
    if (inode.gid >= 0o7777777) pax.push(paxRecord('gid', Buffer.from(String(inode.gid))));
    if (size > 0o77777777777) pax.push(paxRecord('size', Buffer.from(String(size))));
    for (const [k, v] of inode.xattrs()) pax.push(paxRecord(`SCHILY.xattr.${k}`, v));
    if (pax.length) {
      const body = Buffer.concat(pax);
      this.write(header(Buffer.from('PaxHeader'), 'x', body.length, undefined, Buffer.alloc(0)));
      this.write(body);
      this.pad(body.length);
    }
    this.write(header(name, type, size > 0o77777777777 ? 0 : size, inode, linkname));
  }
}

const TAR_TYPE: Record<number, string> = { [S_IFREG]: '0', [S_IFLNK]: '2', [S_IFCHR]: '3', [S_IFBLK]: '4', [S_IFDIR]: '5', [S_IFIFO]: '6' };

/** Write the image tree as a tar file. */
export function unpackToTar(image: RafsImage, outFile: string): number {
  const out = new TarOut(outFile);
  let count = 0;
  try {
    for (const { path: p, inode, firstPath } of walkImage(image)) {
      count++;
      if (firstPath !== undefined) { out.entry(p, inode, '1', 0, Buffer.from(firstPath)); continue; }
      const type = TAR_TYPE[inode.mode & S_IFMT];
      if (type === undefined) continue; // sockets are not representable
      if (type === '2') { out.entry(p, inode, '2', 0, inode.readlink()); continue; }
      const size = type === '0' ? inode.size : 0;
      out.entry(p, inode, type, size, Buffer.alloc(0));
      if (type === '0') {
        const step = 4 << 20;
        for (let off = 0; off < size; off += step) out.write(image.readFile(inode, off, Math.min(step, size - off)));
        out.pad(size);
      }
    }
  } finally {
    out.close();
  }
  return count;
}

/** Write the image tree into `outDir` (created if missing; must be empty). */
export function unpackToDir(image: RafsImage, outDir: string): number {
  fs.mkdirSync(outDir, { recursive: true });
  if (fs.readdirSync(outDir).length > 0) throw einval(`output directory ${outDir} is not empty`);
  const created = new Set<string>();
  const dirs: Array<[string, RafsInode]> = [];
  let count = 0;
  const meta = (dst: string, inode: RafsInode) => {
    // chown clears setuid bits and security.capability, so it goes first
    fs.lchownSync(dst, inode.uid, inode.gid);
    if ((inode.mode & S_IFMT) !== S_IFLNK) fs.chmodSync(dst, inode.mode & 0o7777);
    for (const [k, v] of inode.xattrs()) setXattr(dst, k, v);
    lutimes(dst, inode.mtime, inode.mtimeNsec);
  };
  for (const { path: p, inode, firstPath } of walkImage(image)) {
    if (created.has(p)) throw einval(`duplicate name '${p}' in image`);
    created.add(p);
    count++;
    const dst = path.join(outDir, p);
    if (firstPath !== undefined) { fs.linkSync(path.join(outDir, firstPath), dst); continue; }
    switch (inode.mode & S_IFMT) {
      case S_IFDIR: fs.mkdirSync(dst, { mode: 0o700 }); dirs.push([dst, inode]); continue;
      case S_IFREG: {
        const fd = fs.openSync(dst, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
        try {
          const step = 4 << 20;
          for (let off = 0; off < inode.size; off += step) {
            const data = image.readFile(inode, off, Math.min(step, inode.size - off));
            if (!data.every((b) => b === 0)) fs.writeSync(fd, data, 0, data.length, off);
          }
          fs.ftruncateSync(fd, inode.size);
        } finally { fs.closeSync(fd); }
        break;
      }
      case S_IFLNK: fs.symlinkSync(inode.readlink(), dst); break;
      case S_IFCHR: case S_IFBLK: case S_IFIFO: mknod(dst, inode.mode, inode.rdev); break;
      default: continue;
    }
    meta(dst, inode);
  }
  // directories last and deepest first, so their mtimes and modes stick
  for (const [dst, inode] of dirs.reverse()) meta(dst, inode);
  meta(outDir, image.sb.root());
  return count;
}
