/**
 * Read-only analysis behind `nydus-image check`, `inspect` and `stat`:
 * full validation walk, optional chunk digest verification, tree listing,
 * superblock/blob dumps and dedup statistics.
 */
import { compressorName } from '../common/compress';
import { digesterName } from '../common/digest';
import { einval } from '../common/errno';
import type { RafsImage } from './image';
import type { RafsSuper } from './metadata/types';
import { verifyInodeDigestsV5 } from './metadata/direct-v5';
import { walkImage } from './unpack';
import { S_IFMT } from './builder/tree';

export interface CheckResult { inodes: number; files: number; chunks: number; verifiedChunks: number }

/** Walk everything the image references; throws a clear ErrnoError on the first problem. */
export function checkImage(image: RafsImage, opts: { verifyChunks: boolean }): CheckResult {
  const sb = image.sb;
  const seen = new Set<number>();
  const verified = new Set<string>();
  let files = 0, chunks = 0;
  const root = sb.root();
  if (!root.isDir()) throw einval('root inode is not a directory');
  for (const { path, inode } of walkImage(image)) {
    if (seen.has(inode.ino)) continue;
    seen.add(inode.ino);
    inode.xattrs();
    if (inode.isSymlink()) inode.readlink();
    if (!inode.isReg()) continue;
    files++;
    let expect = 0;
    for (const c of inode.chunks()) {
      chunks++;
      const blob = c.blobIndex === -1 ? undefined : sb.blobs[c.blobIndex];
      if (!blob && c.blobIndex !== -1) throw einval(`${path}: chunk at ${c.fileOffset} refers to missing blob index ${c.blobIndex}`);
      if (c.fileOffset < expect) throw einval(`${path}: chunks overlap or are out of order at ${c.fileOffset}`);
      if (c.fileOffset + c.uncompressedSize > inode.size) throw einval(`${path}: chunk at ${c.fileOffset} (+${c.uncompressedSize}) ends past file size ${inode.size}`);
      if (c.uncompressedSize > sb.meta.chunkSize) throw einval(`${path}: chunk size ${c.uncompressedSize} exceeds the image chunk size`);
      if (blob && blob.compressedSize > 0 && c.compressedOffset + c.compressedSize > blob.compressedSize) {
        throw einval(`${path}: chunk ${c.index} of blob ${blob.blobId} lies outside the blob (${c.compressedOffset}+${c.compressedSize} > ${blob.compressedSize})`);
      }
      expect = c.fileOffset + c.uncompressedSize;
      const key = `${c.blobIndex}:${c.index}:${c.compressedOffset}`;
      if (opts.verifyChunks && !verified.has(key)) {
        image.readChunk(c, true);
        verified.add(key);
      }
    }
  }
  // v5 also carries a digest per inode over its chunks / target / children (§2.10)
  if (sb.meta.version === 5) verifyInodeDigestsV5(sb);
  return { inodes: seen.size + 1, files, chunks, verifiedChunks: verified.size };
}

const TYPE_CHAR: Record<number, string> = { 0o040000: 'd', 0o100000: '-', 0o120000: 'l', 0o020000: 'c', 0o060000: 'b', 0o010000: 'p', 0o140000: 's' };

/** `ls -l`-like listing of the whole tree. */
export function formatTree(image: RafsImage): string {
  const lines: string[] = [];
  for (const { path, inode, firstPath } of walkImage(image)) {
    const t = TYPE_CHAR[inode.mode & S_IFMT] ?? '?';
    const extra = inode.isSymlink() ? ` -> ${inode.readlink().toString()}` : firstPath ? ` => ${firstPath}` : '';
    lines.push(`${t}${(inode.mode & 0o7777).toString(8).padStart(4, '0')} ${inode.uid}:${inode.gid} ${String(inode.size).padStart(10)} ino=${inode.ino} /${path}${extra}`);
  }
  return lines.join('\n') + '\n';
}

export interface ImageStats {
  images: number;
  inodes: number;
  dirs: number;
  files: number;
  symlinks: number;
  hardlinks: number;
  others: number;
  file_data_size: number;
  chunks: number;
  unique_chunks: number;
  unique_chunk_data_size: number;
  dedup_ratio: number;
}

/** Counts and chunk dedup over one or more images (dedup across all of them). */
export function imageStats(sbs: RafsSuper[]): ImageStats {
  const s: ImageStats = { images: sbs.length, inodes: 0, dirs: 0, files: 0, symlinks: 0, hardlinks: 0, others: 0, file_data_size: 0, chunks: 0, unique_chunks: 0, unique_chunk_data_size: 0, dedup_ratio: 0 };
  const unique = new Set<string>();
  let chunkBytes = 0;
  for (const sb of sbs) {
    const seen = new Set<number>();
    const visit = (ino: number, depth: number) => {
      if (depth > 4096) throw einval('directory tree too deep');
      const inode = sb.getInode(ino);
      if (seen.has(ino)) { if (!inode.isDir()) s.hardlinks++; return; }
      seen.add(ino);
      s.inodes++;
      if (inode.isDir()) { s.dirs++; for (const d of inode.children()) visit(d.ino, depth + 1); return; }
      if (inode.isSymlink()) { s.symlinks++; return; }
      if (!inode.isReg()) { s.others++; return; }
      s.files++;
      s.file_data_size += inode.size;
      for (const c of inode.chunks()) {
        s.chunks++;
        chunkBytes += c.uncompressedSize;
        const k = `${c.digest.toString('hex')}:${c.uncompressedSize}`;
        if (!unique.has(k)) { unique.add(k); s.unique_chunk_data_size += c.uncompressedSize; }
      }
    };
    visit(sb.meta.rootIno, 0);
  }
  s.unique_chunks = unique.size;
  s.dedup_ratio = chunkBytes ? Number((1 - s.unique_chunk_data_size / chunkBytes).toFixed(4)) : 0;
  return s;
}

function blobSummary(sb: RafsSuper) {
  return sb.blobs.map((b) => ({
    blob_index: b.blobIndex, blob_id: b.blobId, chunk_count: b.chunkCount, chunk_size: b.chunkSize,
    compressor: compressorName(b.compressor), digester: digesterName(b.digester), features: `0x${b.features.toString(16)}`,
    compressed_size: b.compressedSize, uncompressed_size: b.uncompressedSize,
    meta_ci_offset: b.metaOffset, meta_ci_compressed_size: b.metaCompressedSize, meta_ci_uncompressed_size: b.metaUncompressedSize,
  }));
}

/** `nydus-image inspect -R <request>`; a summary without a request. */
export function inspectImage(image: RafsImage, request?: string): string {
  const sb = image.sb;
  switch (request) {
    case undefined: {
      const m = sb.meta;
      return [
        `RAFS v${m.version}, chunk size 0x${m.chunkSize.toString(16)}, compressor ${compressorName(m.compressor)}, digester ${digesterName(m.digester)}`,
        `flags 0x${m.flags.toString(16)}, inodes ${m.inodesCount}, root ino ${m.rootIno}, explicit uid/gid ${m.explicitUidGid}, xattrs ${m.hasXattr}`,
        `blobs ${sb.blobs.length}:`,
        ...sb.blobs.map((b) => `  [${b.blobIndex}] ${b.blobId} chunks ${b.chunkCount} compressed ${b.compressedSize} uncompressed ${b.uncompressedSize} features 0x${b.features.toString(16)}`),
        `prefetch table: ${sb.prefetchInodes.length} entries`,
      ].join('\n');
    }
    case 'superblock': return JSON.stringify(sb.meta.raw, null, 2);
    case 'blobs': return JSON.stringify(blobSummary(sb), null, 2);
    case 'prefetch': return JSON.stringify(sb.prefetchInodes);
    case 'stats': return JSON.stringify(imageStats([sb]), null, 2);
    case 'chunks': return JSON.stringify(sb.chunkTable().map((c) => ({ ...c, digest: c.digest.toString('hex') })), null, 2);
    default: throw einval(`unknown inspect request '${request}' (stats, blobs, prefetch, superblock, chunks)`);
  }
}
