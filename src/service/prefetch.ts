/** Which chunks to prefetch at mount time (planPrefetch). */
import type { ChunkInfo, RafsInode, RafsSuper } from '../rafs/metadata/types';

const MAX_DEPTH = 4096;

function collect(sb: RafsSuper, inode: RafsInode, out: ChunkInfo[], seen: Set<number>, depth: number): void {
  if (seen.has(inode.ino) || depth > MAX_DEPTH) return;
  seen.add(inode.ino);
  if (inode.isReg()) { if (inode.size > 0) for (const c of inode.chunks()) if (c.blobIndex >= 0) out.push(c); return; }
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

export interface PrefetchPlan {
  /** chunks of the listed files (one per distinct chunk) */
  chunks: ChunkInfo[];
  /** download every blob whole afterwards */
  wholeBlobs: boolean;
}

/**
 * What to prefetch at mount (storage-backends §6 "Start"): the file list
 * (`--prefetch-files` / API prefetch_files, which replaces the bootstrap's
 * prefetch table; unknown paths dropped; directories expand; hard links once;
 * empty and non-regular files skipped), else the bootstrap table; then whole
 * blobs when `prefetch_all` is set, when the list is exactly ["/"], or when
 * the bootstrap table is exactly the root inode — except when the bootstrap
 * table was used and already contained the root.
 */
export function planPrefetch(sb: RafsSuper, opts: { files?: string[]; all?: boolean }): PrefetchPlan {
  const out: ChunkInfo[] = [];
  const seen = new Set<number>();
  const root = sb.root().ino;
  let usedTable = false;
  let tableHasRoot = false;
  const listIsRoot = !!opts.files && opts.files.length === 1 && resolvePath(sb, opts.files[0])?.ino === root;
  if (opts.files && opts.files.length) {
    if (!listIsRoot) for (const f of opts.files) { const i = resolvePath(sb, f); if (i) collect(sb, i, out, seen, 0); }
  } else if (sb.prefetchInodes.length) {
    usedTable = true;
    for (const ino of sb.prefetchInodes) {
      if (ino === root) { tableHasRoot = true; continue; }
      collect(sb, sb.getInode(ino), out, seen, 0);
    }
  }
  const tableIsRoot = !opts.files?.length && sb.prefetchInodes.length === 1 && sb.prefetchInodes[0] === root;
  let wholeBlobs = !!opts.all || listIsRoot || tableIsRoot;
  if (usedTable && tableHasRoot && !opts.all && !tableIsRoot) wholeBlobs = false;
  // a root in a longer bootstrap table still means "everything", through the file walk
  if (usedTable && tableHasRoot && !wholeBlobs) collect(sb, sb.root(), out, seen, 0);
  const uniq = new Map<string, ChunkInfo>();
  for (const c of out) uniq.set(`${c.blobIndex}:${c.index}:${c.compressedOffset}`, c);
  return { chunks: [...uniq.values()], wholeBlobs };
}
