/**
 * `nydus-image merge`: overlay per-layer bootstraps (bottom first) into one
 * image. OCI whiteouts (`.wh.<name>`, opaque `.wh..wh..opq`) and overlayfs
 * ones (char 0:0, `trusted.overlay.opaque=y`) are applied and never kept;
 * chunks repeated across layers are pointed at their first copy.
 */
import { einval } from '../../common/errno';
import type { BlobInfo, ChunkInfo, RafsInode, RafsSuper } from '../metadata/types';
import { BuildEntry, BuildInode, S_IFCHR, S_IFMT, finalizeTree, walkTree } from './tree';

export type WhiteoutSpec = 'oci' | 'overlayfs' | 'none';

const OCI_WH = '.wh.';
const OCI_OPAQUE = '.wh..wh..opq';
const OVL_OPAQUE = 'trusted.overlay.opaque';

/** Convert a loaded image into a build tree; chunk blob indexes go through `blobMap`. */
export function treeFromRafs(sb: RafsSuper, blobMap: number[]): BuildInode {
  const byIno = new Map<number, BuildInode>();
  const visiting = new Set<number>();
  const convert = (ri: RafsInode, depth: number): BuildInode => {
    const known = byIno.get(ri.ino);
    if (known) {
      if (ri.isDir()) throw einval(`directory inode ${ri.ino} is linked twice (loop or hardlinked directory)`);
      return known;
    }
    if (depth > 4096) throw einval('directory tree too deep');
    const b = new BuildInode({
      mode: ri.mode, uid: ri.uid, gid: ri.gid, mtime: ri.mtime, mtimeNsec: ri.mtimeNsec, rdev: ri.rdev,
      size: ri.isDir() ? 0 : ri.size,
      xattrs: ri.xattrs().slice().sort((a, c) => (a[0] < c[0] ? -1 : a[0] > c[0] ? 1 : 0)),
    });
    byIno.set(ri.ino, b);
    if (ri.isSymlink()) b.symlink = ri.readlink();
    if (ri.isReg()) b.chunks = ri.chunks().map((c) => ({ ...c, blobIndex: blobMap[c.blobIndex] ?? -1 }));
    if (ri.isDir()) {
      if (visiting.has(ri.ino)) throw einval(`directory loop at inode ${ri.ino}`);
      visiting.add(ri.ino);
      for (const d of ri.children()) b.children.push({ name: d.name, inode: convert(sb.getInode(d.ino), depth + 1) });
      visiting.delete(ri.ino);
    }
    return b;
  };
  return convert(sb.root(), 0);
}

function isWhiteout(e: BuildEntry, spec: WhiteoutSpec): string | undefined {
  if (spec === 'oci') {
    const n = e.name.toString();
    if (n.startsWith(OCI_WH) && n !== OCI_OPAQUE) return n.slice(OCI_WH.length);
  } else if (spec === 'overlayfs') {
    if ((e.inode.mode & S_IFMT) === S_IFCHR && e.inode.rdev === 0) return e.name.toString();
  }
  return undefined;
}

function isOpaque(dir: BuildInode, spec: WhiteoutSpec): boolean {
  if (spec === 'oci') return dir.children.some((c) => c.name.toString() === OCI_OPAQUE);
  if (spec === 'overlayfs') return dir.xattrs.some(([k, v]) => k === OVL_OPAQUE && v.toString() === 'y');
  return false;
}

/** Apply `upper` (one layer) onto `lower` (the merged result so far), in place. */
export function applyLayer(lower: BuildInode, upper: BuildInode, spec: WhiteoutSpec, implicitDirs?: Set<string>, prefix = ''): void {
  if (isOpaque(upper, spec)) lower.children = [];
  const byName = new Map(lower.children.map((c) => [c.name.toString('hex'), c] as const));
  for (const e of upper.children) {
    if (spec === 'oci' && e.name.toString() === OCI_OPAQUE) continue;
    const wh = isWhiteout(e, spec);
    if (wh !== undefined) { byName.delete(Buffer.from(wh).toString('hex')); continue; }
    const key = e.name.toString('hex');
    const old = byName.get(key);
    const rel = prefix ? `${prefix}/${e.name.toString('latin1')}` : e.name.toString('latin1');
    if (old && old.inode.isDir() && e.inode.isDir()) {
      const merged = old.inode;
      applyLayer(merged, e.inode, spec, implicitDirs, rel);
      // a directory the layer only implies (a parent it never names) keeps the lower one's attributes
      if (!implicitDirs?.has(rel)) {
        Object.assign(merged, { mode: e.inode.mode, uid: e.inode.uid, gid: e.inode.gid, mtime: e.inode.mtime, mtimeNsec: e.inode.mtimeNsec, xattrs: stripOverlay(e.inode.xattrs, spec) });
      }
      continue;
    }
    if (e.inode.isDir()) {
      // a new directory may itself carry whiteouts of nothing; clean it
      const fresh = new BuildInode({ ...e.inode, children: [], xattrs: stripOverlay(e.inode.xattrs, spec) });
      applyLayer(fresh, e.inode, spec, implicitDirs, rel);
      byName.set(key, { name: e.name, inode: fresh });
    } else byName.set(key, e);
  }
  lower.children = [...byName.values()];
}

const stripOverlay = (x: Array<[string, Buffer]>, spec: WhiteoutSpec) => (spec === 'overlayfs' ? x.filter(([k]) => !k.startsWith('trusted.overlay.')) : x);

export interface MergeLayer {
  sb: RafsSuper;
  blobIdOverride?: string;
  /** paths ('' = root, latin1) of directories the layer's tar only implied: they keep lower attributes */
  implicitDirs?: Set<string>;
}

export interface MergeResult {
  root: BuildInode;
  blobs: BlobInfo[];
  chunkRefs: number;
  dedupedRefs: number;
  totalBytes: number;
  uniqueBytes: number;
}

/** Merge layers bottom → top into one tree with one blob table. */
export function mergeLayers(layers: MergeLayer[], spec: WhiteoutSpec): MergeResult {
  if (layers.length === 0) throw einval('merge needs at least one bootstrap');
  const blobs: BlobInfo[] = [];
  const blobIdx = new Map<string, number>();
  let root: BuildInode | undefined;
  for (const l of layers) {
    const map = l.sb.blobs.map((b) => {
      const id = l.blobIdOverride && l.sb.blobs.length === 1 ? l.blobIdOverride : b.blobId;
      let i = blobIdx.get(id);
      if (i === undefined) {
        i = blobs.length;
        blobIdx.set(id, i);
        blobs.push({ ...b, blobId: id, blobIndex: i, features: l.blobIdOverride ? b.features & ~0x2 : b.features });
      }
      return i;
    });
    const tree = treeFromRafs(l.sb, map);
    if (!root) { root = new BuildInode({ ...tree, children: [] }); }
    applyLayer(root, tree, spec, l.implicitDirs);
    if (!l.implicitDirs?.has('')) Object.assign(root, { mode: tree.mode, uid: tree.uid, gid: tree.gid, xattrs: tree.xattrs });
  }
  root!.mtime = 0;
  root!.mtimeNsec = 0;
  finalizeTree(root!);
  // cross-layer chunk dedup: the first record of each digest wins
  const first = new Map<string, ChunkInfo>();
  let chunkRefs = 0, dedupedRefs = 0, totalBytes = 0, uniqueBytes = 0;
  const done = new Set<BuildInode>();
  walkTree(root!, (e) => {
    if (!e.inode.isReg() || done.has(e.inode)) return;
    done.add(e.inode);
    e.inode.chunks = e.inode.chunks.map((c) => {
      chunkRefs++;
      totalBytes += c.uncompressedSize;
      if (c.digest.every((b) => b === 0)) { uniqueBytes += c.uncompressedSize; return c; } // digest unknown
      const key = `${c.digest.toString('hex')}:${c.uncompressedSize}`;
      const f = first.get(key);
      if (!f) { first.set(key, c); uniqueBytes += c.uncompressedSize; return c; }
      if (f.blobIndex !== c.blobIndex || f.index !== c.index) dedupedRefs++;
      return { ...f, fileOffset: c.fileOffset };
    });
  });
  return { root: root!, blobs, chunkRefs, dedupedRefs, totalBytes, uniqueBytes };
}
