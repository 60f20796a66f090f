/**
 * Describe a directory tree as comparable records (type, mode, owner, mtime,
 * size, content sha256, link target, rdev, xattrs, hardlink groups), so two
 * trees can be compared exactly with real filesystem calls.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';

export interface TreeRecord {
  path: string;
  type: string;
  mode: string;
  uid: number;
  gid: number;
  mtime: string;
  size: number;
  sha256?: string;
  target?: string;
  rdev?: number;
  xattrs: string;
  link?: string; // first path of the hardlink group
}

function xattrsOf(p: string): string {
  try {
    const out = execFileSync('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', p], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return out.split('\n').filter((l) => l && !l.startsWith('#')).sort().join(';');
  } catch { return ''; }
}

export interface DigestOptions { mtime?: boolean; rootMeta?: boolean; xattrs?: boolean }

export function treeRecords(root: string, opts: DigestOptions = {}): TreeRecord[] {
  const out: TreeRecord[] = [];
  const links = new Map<string, string>();
  const rec = (rel: string) => {
    const p = path.join(root, rel);
    const st = fs.lstatSync(p, { bigint: true });
    const type = st.isDirectory() ? 'd' : st.isFile() ? 'f' : st.isSymbolicLink() ? 'l' : st.isCharacterDevice() ? 'c' : st.isBlockDevice() ? 'b' : st.isFIFO() ? 'p' : 's';
    const isRoot = rel === '';
    const r: TreeRecord = {
      path: rel || '/',
      type,
      mode: (Number(st.mode) & 0o7777).toString(8),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtime: opts.mtime === false || (isRoot && !opts.rootMeta) ? '' : `${st.mtimeNs}`,
      size: type === 'd' ? 0 : Number(st.size),
      xattrs: opts.xattrs === false ? '' : xattrsOf(p),
    };
    if (isRoot && !opts.rootMeta) { r.mode = ''; r.uid = 0; r.gid = 0; }
    if (type === 'f') r.sha256 = createHash('sha256').update(fs.readFileSync(p)).digest('hex');
    if (type === 'l') r.target = fs.readlinkSync(p);
    if (type === 'c' || type === 'b') r.rdev = Number(st.rdev);
    if (type !== 'd' && st.nlink > 1n) {
      const k = `${st.dev}:${st.ino}`;
      const first = links.get(k);
      if (first) r.link = first; else links.set(k, r.path);
    }
    out.push(r);
    if (type === 'd') for (const n of fs.readdirSync(p).sort()) rec(path.join(rel, n));
  };
  rec('');
  return out;
}

/** Human-readable list of differences (empty when equal). */
export function diffTrees(a: TreeRecord[], b: TreeRecord[]): string[] {
  const diffs: string[] = [];
  const mb = new Map(b.map((r) => [r.path, r]));
  for (const ra of a) {
    const rb = mb.get(ra.path);
    if (!rb) { diffs.push(`missing in second: ${ra.path}`); continue; }
    mb.delete(ra.path);
    for (const k of Object.keys(ra) as Array<keyof TreeRecord>) {
      if (JSON.stringify(ra[k]) !== JSON.stringify(rb[k])) diffs.push(`${ra.path}: ${k} ${JSON.stringify(ra[k])} != ${JSON.stringify(rb[k])}`);
    }
  }
  for (const p of mb.keys()) diffs.push(`extra in second: ${p}`);
  return diffs;
}
