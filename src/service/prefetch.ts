/**
 * Which chunks to prefetch at mount time: the files and directories named by
 * `--prefetch-files` / the API's prefetch_files, else the bootstrap's prefetch
 * table, or every chunk with `prefetch_all`.
 */
import type { ChunkInfo, RafsInode, RafsSuper } from '../rafs/metadata/types';

const MAX_DEPTH = 4096;

function collect(sb: RafsSuper, inode: RafsInode, out: ChunkInfo[], seen: Set<number>, depth: number): void {
  if (seen.has(inode.ino) || depth > MAX_DEPTH) return;
  seen.add(inode.ino);
  if (inode.isReg()) { for (const c of inode.chunks()) if (c.blobIndex >= 0) out.push(c); return; }
  if (inode.isDir()) for (const d of inode.children()) collect(sb, sb.getInode(d.ino), out, seen, depth + 1);
}

export function resolvePath(sb: RafsSuper, p: string): RafsInode | undefined {
  let cur: RafsInode | undefined = sb.root();
  for (const part of p.split('/').filter((s) => s && s !== '.')) {
    if (!cur?.isDir()) return undefined;
    cur = cur.lookup(Buffer.from(part));
  }
  return cur;
}

export function prefetchChunks(sb: RafsSuper, opts: { files?: string[]; all?: boolean }): ChunkInfo[] {
  const out: ChunkInfo[] = [];
  const seen = new Set<number>();
  if (opts.files && opts.files.length) {
    for (const f of opts.files) { const i = resolvePath(sb, f); if (i) collect(sb, i, out, seen, 0); }
  } else if (sb.prefetchInodes.length) {
    for (const ino of sb.prefetchInodes) collect(sb, sb.getInode(ino), out, seen, 0);
  }
  if (opts.all) collect(sb, sb.root(), out, seen, 0);
  // one fetch per distinct chunk
  const uniq = new Map<string, ChunkInfo>();
  for (const c of out) uniq.set(`${c.blobIndex}:${c.index}:${c.compressedOffset}`, c);
  return [...uniq.values()];
}
