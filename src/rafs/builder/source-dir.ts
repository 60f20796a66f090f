/**
 * `nydus-image create -t dir-rafs`: a host directory as a build tree.
 * Hardlinks are detected by (dev, ino); xattrs are read without following
 * symlinks; sockets are skipped as upstream does.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { einval } from '../../common/errno';
import { encodeDevFromStat, getXattr, listXattrs } from '../../common/libc';
import { BuildInode, DataSource, S_IFDIR, S_IFMT, S_IFSOCK, compareNames, finalizeTree } from './tree';
import { RAFS_MAX_NAME } from '../format/constants';
import { isAllowedXattr } from './xattr';

class FileSource implements DataSource {
  private fd = -1;
  constructor(private readonly file: string) {}
  get location(): { path: string; base: number } { return { path: this.file, base: 0 }; }
  read(off: number, len: number): Buffer {
    if (this.fd < 0) this.fd = fs.openSync(this.file, 'r');
    const buf = Buffer.allocUnsafe(len);
    let done = 0;
    while (done < len) {
      const n = fs.readSync(this.fd, buf, done, len - done, off + done);
      if (n === 0) throw einval(`${this.file}: file shrank while building (short read at ${off + done})`);
      done += n;
    }
    return buf;
  }
  close(): void { if (this.fd >= 0) { fs.closeSync(this.fd); this.fd = -1; } }
}

function readXattrs(p: string): Array<[string, Buffer]> {
  let names: string[];
  try { names = listXattrs(p); } catch { return []; }
  return names.filter(isAllowedXattr).sort().map((n) => [n, getXattr(p, n)] as [string, Buffer]);
}

function inodeFromStat(p: string, st: fs.BigIntStats): BuildInode {
  // fields set one by one (not BuildInode's Object.assign: 100,000-file trees)
  const inode = new BuildInode();
  inode.mode = Number(st.mode);
  inode.uid = Number(st.uid);
  inode.gid = Number(st.gid);
  inode.mtime = Number(st.mtimeNs / 1_000_000_000n);
  inode.mtimeNsec = Number(st.mtimeNs % 1_000_000_000n);
  inode.xattrs = readXattrs(p);
  if (st.isFile()) { inode.size = Number(st.size); inode.source = new FileSource(p); }
  else if (st.isSymbolicLink()) { inode.symlink = fs.readlinkSync(p, { encoding: 'buffer' }); inode.size = inode.symlink.length; }
  else if (st.isCharacterDevice() || st.isBlockDevice()) inode.rdev = encodeDevFromStat(Number(st.rdev));
  return inode;
}

/** Load `dir` recursively. The root's own metadata becomes the image root's. */
export function treeFromDir(dir: string): BuildInode {
  const walk = walkDir(dir);
  let step = walk.next();
  while (!step.done) step = walk.next();
  return step.value;
}

/**
 * Load `dir` recursively, yielding each regular file (each inode once) as it
 * is found, in the builder's dump order without prefetch (`walkTree` order:
 * depth first, entries by name), so its chunks can be on their way while the
 * rest of the tree is read; returns the finished root.
 */
export function* walkDir(dir: string): Generator<BuildInode, BuildInode> {
  const st = fs.lstatSync(dir, { bigint: true });
  if (!st.isDirectory()) throw einval(`source ${dir} is not a directory`);
  const root = inodeFromStat(dir, st);
  const links = new Map<string, BuildInode>();
  // entries' paths are their directory's plus '/name' (readdir names have no '/' and are never '.' or '..'): no path.join per entry
  const rec = function* (p: string, node: BuildInode): Generator<BuildInode, void> {
    const names = fs.readdirSync(p, { encoding: 'buffer' }).sort(compareNames);
    const prefix = p.endsWith('/') ? p : `${p}/`;
    for (const name of names) {
      if (name.length > RAFS_MAX_NAME) throw einval(`${p}: name longer than ${RAFS_MAX_NAME} bytes`);
      const child = prefix + name.toString();
      const cst = fs.lstatSync(child, { bigint: true });
      if ((Number(cst.mode) & S_IFMT) === S_IFSOCK) continue;
      let inode: BuildInode;
      const key = `${cst.dev}:${cst.ino}`;
      const existing = !cst.isDirectory() && cst.nlink > 1n ? links.get(key) : undefined;
      if (existing) inode = existing;
      else {
        inode = inodeFromStat(child, cst);
        if (!cst.isDirectory() && cst.nlink > 1n) links.set(key, inode);
        if (inode.isReg()) yield inode;
      }
      node.children.push({ name, inode });
      if ((inode.mode & S_IFMT) === S_IFDIR) yield* rec(child, inode);
    }
  };
  yield* rec(path.normalize(dir), root);
  finalizeTree(root);
  return root;
}
