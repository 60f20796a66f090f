/**
 * `nydus-image create -t tar-rafs | targz-rafs`: an OCI layer tar (or gzip
 * tar) as a build tree. Later entries replace earlier ones at the same path,
 * missing parent directories are created (0755), hardlinks share one inode,
 * and paths that would leave the root are rejected.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { einval } from '../../common/errno';
import { encodeDev } from '../../common/libc';
import { RAFS_MAX_NAME } from '../format/constants';
import { readTar, TarEntry } from './tar-reader';
import { BuildEntry, BuildInode, DataSource, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, finalizeTree } from './tree';
import { isAllowedXattr } from './xattr';

const TYPE_MODE: Record<string, number> = { '0': S_IFREG, '\0': S_IFREG, '7': S_IFREG, '2': S_IFLNK, '3': S_IFCHR, '4': S_IFBLK, '5': S_IFDIR, '6': S_IFIFO };

/** Split a tar path into safe components; '' = the root itself. */
export function tarPathComponents(p: string): Buffer[] {
  const parts: Buffer[] = [];
  for (const c of p.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') throw einval(`tar entry '${p}' escapes the image root`);
    const b = Buffer.from(c);
    if (b.length > RAFS_MAX_NAME) throw einval(`tar entry '${p}': name longer than ${RAFS_MAX_NAME} bytes`);
    parts.push(b);
  }
  return parts;
}

class TarFileSource implements DataSource {
  constructor(private readonly fd: number, private readonly base: number, private readonly size: number) {}
  get location(): { fd: number; base: number } { return { fd: this.fd, base: this.base }; }
  read(off: number, len: number): Buffer {
    if (off + len > this.size) throw einval('tar entry read past its size');
    const buf = Buffer.allocUnsafe(len);
    let done = 0;
    while (done < len) {
      const n = fs.readSync(this.fd, buf, done, len - done, this.base + off + done);
      if (n === 0) throw einval('tar: truncated entry data');
      done += n;
    }
    return buf;
  }
}

export interface TarTree {
  root: BuildInode;
  /**
   * Directories the tar never names ('' = the root), created only as parents
   * of other entries: a layer merge must not let them replace a lower
   * layer's directory attributes (umoci and others omit unchanged parents).
   */
  implicitDirs: Set<string>;
  /** close the tar file descriptor once the blob is written */
  close(): void;
}

/** Build a tree from an uncompressed tar file. */
export function treeFromTar(file: string): TarTree {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const root = new BuildInode({ mode: S_IFDIR | 0o755 });
    // per-directory name index, so large directories stay linear to build
    const index = new Map<BuildInode, Map<string, BuildEntry>>();
    const entries = (dir: BuildInode) => {
      let m = index.get(dir);
      if (!m) { m = new Map(); index.set(dir, m); }
      return m;
    };
    const implicitDirs = new Set<string>(['']);
    const dirOf = (parts: Buffer[], what: string): BuildInode => {
      let cur = root;
      for (let k = 0; k < parts.length; k++) {
        const name = parts[k];
        const m = entries(cur);
        let e = m.get(name.toString('latin1'));
        if (!e) {
          e = { name, inode: new BuildInode({ mode: S_IFDIR | 0o755 }) };
          m.set(name.toString('latin1'), e);
          implicitDirs.add(Buffer.concat(parts.slice(0, k + 1).flatMap((x, i) => (i ? [Buffer.from('/'), x] : [x]))).toString('latin1'));
        }
        if (!e.inode.isDir()) throw einval(`tar entry '${what}': '${name}' is not a directory`);
        cur = e.inode;
      }
      return cur;
    };
    const lookup = (parts: Buffer[]): BuildInode | undefined => {
      let cur: BuildInode | undefined = root;
      for (const name of parts) cur = cur && index.get(cur)?.get(name.toString('latin1'))?.inode;
      return cur;
    };
    for (const e of readTar(fd, size)) {
      const parts = tarPathComponents(e.path);
      if (parts.length === 0) { if (e.type === '5') { applyMeta(root, e); implicitDirs.delete(''); } continue; }
      const parent = dirOf(parts.slice(0, -1), e.path);
      const name = parts[parts.length - 1];
      let inode: BuildInode;
      if (e.type === '1') {
        const target = lookup(tarPathComponents(e.linkname));
        if (!target) throw einval(`tar hardlink '${e.path}' -> '${e.linkname}': target not found`);
        if (target.isDir()) throw einval(`tar hardlink '${e.path}' points to a directory`);
        inode = target;
      } else {
        const fmt = TYPE_MODE[e.type];
        if (fmt === undefined) throw einval(`tar entry '${e.path}': unsupported type '${e.type}'`);
        const old = entries(parent).get(name.toString('latin1'));
        inode = fmt === S_IFDIR && old?.inode.isDir() ? old.inode : new BuildInode();
        // named by the tar: its own attributes count
        implicitDirs.delete(Buffer.concat(parts.flatMap((x, i) => (i ? [Buffer.from('/'), x] : [x]))).toString('latin1'));
        inode.mode = fmt;
        applyMeta(inode, e);
        if (fmt === S_IFREG) { inode.size = e.size; if (e.size > 0) inode.source = new TarFileSource(fd, e.dataOffset, e.size); }
        if (fmt === S_IFLNK) { inode.symlink = Buffer.from(e.linkname); inode.size = inode.symlink.length; }
        if (fmt === S_IFCHR || fmt === S_IFBLK) inode.rdev = encodeDev(e.devmajor, e.devminor);
      }
      entries(parent).set(name.toString('latin1'), { name, inode });
    }
    for (const [dir, m] of index) dir.children = [...m.values()];
    finalizeTree(root);
    return { root, implicitDirs, close: () => fs.closeSync(fd) };
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

function applyMeta(inode: BuildInode, e: TarEntry): void {
  inode.mode = (inode.mode & 0o170000) | (e.mode & 0o7777);
  inode.uid = e.uid;
  inode.gid = e.gid;
  inode.mtime = e.mtime;
  inode.mtimeNsec = e.mtimeNsec;
  inode.xattrs = e.xattrs.filter(([n]) => isAllowedXattr(n)).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/** Decompress a gzip tar into a temp file; returns its path (caller removes it). */
export async function gunzipToTemp(file: string): Promise<string> {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-targz-')), 'layer.tar');
  await pipeline(fs.createReadStream(file), createGunzip(), fs.createWriteStream(out));
  return out;
}
