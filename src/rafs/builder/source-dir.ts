/**
 * `nydus-image create -t dir-rafs`: a host directory as a build tree.
 * Hardlinks are detected by (dev, ino); xattrs are read without following
 * symlinks; sockets are skipped as upstream does.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { einval } from '../../common/errno';
import { getXattr, listXattrs } from '../../common/libc';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK } from '../../common/mode';
import { BuildInode, DataSource, compareNames, finalizeTree } from './tree';
import { type EntryStat, statEntries, statPath } from './statx';
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

function inodeFromStat(p: string, st: EntryStat): BuildInode {
  // fields set one by one (not BuildInode's Object.assign: 100,000-file trees)
  const inode = new BuildInode();
  inode.mode = st.mode;
  inode.uid = st.uid;
  inode.gid = st.gid;
  inode.mtime = st.mtime;
  inode.mtimeNsec = st.mtimeNsec;
  inode.xattrs = readXattrs(p);
  const fmt = st.mode & S_IFMT;
  if (fmt === S_IFREG) { inode.size = st.size; inode.source = new FileSource(p); }
  else if (fmt === S_IFLNK) { inode.symlink = fs.readlinkSync(p, { encoding: 'buffer' }); inode.size = inode.symlink.length; }
  else if (fmt === S_IFCHR || fmt === S_IFBLK) inode.rdev = st.rdev;
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
  const st = statPath(dir);
  if ((st.mode & S_IFMT) !== S_IFDIR) throw einval(`source ${dir} is not a directory`);
  const root = inodeFromStat(dir, st);
  const links = new Map<string, BuildInode>();
  // entries' paths are their directory's plus the name (readdir names have no '/' and are never '.' or '..'): no path.join per entry
  const rec = function* (p: string, node: BuildInode): Generator<BuildInode, void> {
    const names = fs.readdirSync(p, { encoding: 'buffer' }).sort(compareNames);
    const prefix = p.endsWith('/') ? p : `${p}/`;
    for (const name of names) if (name.length > RAFS_MAX_NAME) throw einval(`${p}: name longer than ${RAFS_MAX_NAME} bytes`);
    const strs = names.map((n) => n.toString());
    // the directory's entries stated at once, relative to it (statx.ts), before any is yielded
    const stats = statEntries(prefix, strs);
    for (let i = 0; i < names.length; i++) {
      const cst = stats[i];
      const fmt = cst.mode & S_IFMT;
      if (fmt === S_IFSOCK) continue;
      const child = prefix + strs[i];
      let inode: BuildInode;
      const key = fmt !== S_IFDIR && cst.nlink > 1 ? cst.id : undefined;
      const existing = key !== undefined ? links.get(key) : undefined;
      if (existing) inode = existing;
      else {
        inode = inodeFromStat(child, cst);
        if (key !== undefined) links.set(key, inode);
        if (inode.isReg()) yield inode;
      }
      node.children.push({ name: names[i], inode });
      if (fmt === S_IFDIR) yield* rec(child, inode);
    }
  };
  yield* rec(path.normalize(dir), root);
  finalizeTree(root);
  return root;
}
