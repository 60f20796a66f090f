/**
 * `nydus-image create`: source tree → data blob (chunks) → bootstrap.
 * Chunk data order follows upstream (§4.1): files under prefetch patterns
 * first, in pattern order, then every other file in tree order.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Compressor } from '../../common/compress';
import { DigestAlgorithm } from '../../common/digest';
import { einval } from '../../common/errno';
import { log } from '../../common/log';
import { RafsSuperFlags, validateChunkSize } from '../format/constants';
import type { BlobInfo, ChunkInfo } from '../metadata/types';
import { BlobWriter } from './blob-writer';
import { ChunkPool, addFilesParallel, defaultBuilderThreads } from './chunk-pipeline';
import type { BootstrapOptions } from './options';
import { treeFromDir, walkDir } from './source-dir';
import { BuildInode, walkTree } from './tree';
import { Progress } from '../../common/progress';

/** sources from which a build uses worker threads unless told (CreateOptions.threads) */
export const PARALLEL_MIN_BYTES = 16 << 20;
export const PARALLEL_MIN_FILES = 2000;

export type SourceType = 'dir-rafs' | 'tar-rafs' | 'targz-rafs';

export interface CreateOptions {
  source: string;
  type: SourceType;
  fsVersion: 5 | 6;
  compressor: Compressor;
  digester: DigestAlgorithm;
  chunkSize: number;
  bootstrap?: string;
  blob?: string;
  blobDir?: string;
  blobId?: string;
  blobInlineMeta: boolean;
  blobToc: boolean;
  alignedChunk: boolean;
  repeatable: boolean;
  prefetchPatterns: string[];
  /** `--batch-size`: merge small files' chunks into batches (0/absent = off; v6 only), see checkBatchSize */
  batchSize?: number;
  /**
   * worker threads reading, digesting and compressing chunks (chunk-pipeline.ts):
   * 0 = all on this thread; a number = that many, started before the source is
   * read; absent = defaultBuilderThreads(), for sources of PARALLEL_MIN_BYTES or
   * PARALLEL_MIN_FILES (a worker takes tens of ms to start)
   */
  threads?: number;
  /**
   * called with the number of regular files found so far, every
   * FILES_REPORT_STEP files of a directory walk and once with the total
   * (the CLI tunes V8 by it: prestart.ts)
   */
  onFiles?: (files: number) => void;
}

export const FILES_REPORT_STEP = 1024;

/**
 * `--batch-size` rules as upstream (src/bin/nydus-image/main.rs
 * `get_batch_size`): 0 = off; otherwise RAFS v6 only, a power of two in
 * [0x1000, 0x1000000], not above the chunk size.
 */
export function checkBatchSize(batchSize: number, fsVersion: 5 | 6, chunkSize: number): void {
  if (batchSize === 0) return;
  if (fsVersion === 5) throw einval('`--batch-size` with non-zero value conflicts with `--fs-version 5`');
  validateChunkSize(batchSize, 'batch size');
  if (batchSize > chunkSize) throw einval(`batch size 0x${batchSize.toString(16)} is bigger than chunk size 0x${chunkSize.toString(16)}`);
}

export interface CreateResult {
  bootstrapPath?: string;
  blobPath?: string;
  blobs: string[];
  blobInfo?: BlobInfo;
  bootstrap: Buffer;
  stats: { files: number; chunks: number; uniqueChunks: number; dataBytes: number; storedBytes: number };
  /** tar sources: directories only implied by other entries (see TarTree.implicitDirs) */
  implicitDirs?: Set<string>;
}

/** Find the inode at an absolute image path, or undefined. */
export function lookupPath(root: BuildInode, p: string): BuildInode | undefined {
  let cur: BuildInode | undefined = root;
  for (const c of p.split('/').filter((s) => s && s !== '.')) {
    cur = cur?.children.find((e) => e.name.toString() === c)?.inode;
    if (!cur) return undefined;
  }
  return cur;
}

/** Regular files in blob dump order, each inode once. */
function dumpOrder(root: BuildInode, prefetch: BuildInode[]): BuildInode[] {
  const out: BuildInode[] = [];
  const seen = new Set<BuildInode>();
  const add = (i: BuildInode) => { if (i.isReg() && !seen.has(i)) { seen.add(i); out.push(i); } };
  for (const p of prefetch) {
    add(p);
    if (p.isDir()) walkTree(p, (e) => add(e.inode));
  }
  walkTree(root, (e) => add(e.inode));
  return out;
}

export async function createImage(o: CreateOptions): Promise<CreateResult> {
  if (o.blobInlineMeta && o.bootstrap) throw einval('--blob-inline-meta conflicts with --bootstrap');
  if (!o.bootstrap && !o.blobDir && !o.blobInlineMeta) throw einval('one of --bootstrap, --blob-dir or --blob-inline-meta is required');
  if (o.fsVersion === 5 && o.blobInlineMeta) throw einval('--blob-inline-meta requires --fs-version 6');
  checkBatchSize(o.batchSize ?? 0, o.fsVersion, o.chunkSize);
  /* eslint-disable @typescript-eslint/no-require-imports */
  // the one bootstrap writer this build needs (loading the other too costs every build a few ms of start-up)
  const v5 = o.fsVersion === 5 ? require('./bootstrap-v5') as typeof import('./bootstrap-v5') : undefined;
  const v6 = o.fsVersion === 6 ? require('./bootstrap-v6') as typeof import('./bootstrap-v6') : undefined;
  /* eslint-enable @typescript-eslint/no-require-imports */
  /** v6: the bootstrap's layout, made while the chunks are compressed (addFilesParallel's `afterWalk`) */
  let prepared: import('./bootstrap-v6').PreparedBootstrapV6 | undefined;
  let tmpTar: string | undefined;
  let closeSource = () => {};
  let root!: BuildInode;
  let implicitDirs: Set<string> | undefined;
  // asked for: started first, the workers load while the source tree is read
  let pool = o.threads ? ChunkPool.take(o.threads) : undefined;
  let poolGone: Promise<void> | undefined;
  // a directory without prefetch list, with workers: its files go to them as the walk finds them
  const walk = o.type === 'dir-rafs' && pool && o.prefetchPatterns.length === 0 ? walkDir(o.source) : undefined;
  try {
    if (walk) { /* read below, while chunking */ } else if (o.type === 'dir-rafs') root = treeFromDir(o.source);
    else {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { gunzipToTemp, treeFromTar } = require('./source-tar') as typeof import('./source-tar'); // tar sources only
      const tarFile = o.type === 'targz-rafs' ? (tmpTar = await gunzipToTemp(o.source)) : o.source;
      const t = treeFromTar(tarFile);
      root = t.root;
      implicitDirs = t.implicitDirs;
      closeSource = t.close;
    }
  } catch (e) {
    await pool?.destroy();
    throw e;
  }
  try {
    const prefetch: BuildInode[] = [];
    for (const p of o.prefetchPatterns) {
      const i = lookupPath(root, p);
      if (i) prefetch.push(i); else log.warn({ pattern: p }, 'prefetch pattern matches nothing');
    }
    const files = walk ? [] : dumpOrder(root, prefetch);
    if (!walk) o.onFiles?.(files.length);
    if (o.threads === undefined) {
      const threads = defaultBuilderThreads();
      const bytes = files.reduce((s, f) => s + f.size, 0);
      if (threads > 0 && (bytes >= PARALLEL_MIN_BYTES || files.length >= PARALLEL_MIN_FILES)) pool = ChunkPool.take(threads);
    }
    const blobDir = o.blobDir ?? (o.blob ? path.dirname(o.blob) : undefined);
    const dedup = new Map<string, ChunkInfo>();
    const writer = new BlobWriter({
      compressor: o.compressor,
      digester: o.digester,
      chunkSize: o.chunkSize,
      aligned: o.fsVersion === 6 || o.alignedChunk,
      blobToc: o.blobToc,
      inlineMeta: o.blobInlineMeta,
      blobDir,
      blobPath: o.blob,
      blobId: o.blobId,
      batchSize: o.batchSize ?? 0,
      dedup,
    });
    // streaming: the total is not known before the walk ends
    const progress = new Progress('building', files.reduce((s, f) => s + f.size, 0));
    let dataBytes = 0;
    if (pool) {
      try {
        let source: Iterable<BuildInode> = files;
        if (walk) {
          source = {
            *[Symbol.iterator]() {
              let step = walk.next();
              for (; !step.done; step = walk.next()) {
                files.push(step.value);
                if (files.length % FILES_REPORT_STEP === 0) o.onFiles?.(files.length);
                yield step.value;
              }
              root = step.value;
              o.onFiles?.(files.length);
            },
          };
        }
        // the file is written behind this thread, from the answers (NYDUS_BUILDER_SINK=0: copied and written here, for comparison)
        // the tree is complete once the walk is: the v6 bootstrap is laid out, in steps, while the chunks are worked on
        // (one blob unless no file has data, as below; should the guess be wrong, the writer lays it out again)
        const layOut = v6 ? function* (): Generator<void, void> {
          prepared = yield* v6.prepareBootstrapV6Steps(root, {
            chunkSize: o.chunkSize, explicitUidGid: !o.repeatable, prefetch,
            blobCount: o.blobInlineMeta || files.some((f) => f.size > 0) ? 1 : 0,
          });
        } : undefined;
        await addFilesParallel(writer, source, pool, (n) => progress.update(n), process.env.NYDUS_BUILDER_SINK !== '0', layOut);
      } catch (e) {
        await writer.abandon();
        throw e;
      }
      // the workers are done with: they stop while the bootstrap is made
      poolGone = pool.destroy();
      pool = undefined;
      dataBytes = files.reduce((s, f) => s + f.size, 0);
    } else {
      for (const f of files) {
        writer.addFile(f);
        f.source?.close?.();
        dataBytes += f.size;
        progress.update(dataBytes);
      }
    }
    progress.done();
    dedup.clear(); // the chunks stay with their files; the index is not needed any more
    root.mtime = 0;
    root.mtimeNsec = 0;
    const bootOpts = (blobs: BlobInfo[]): BootstrapOptions => ({
      chunkSize: o.chunkSize,
      compressor: o.compressor,
      digester: o.digester,
      explicitUidGid: !o.repeatable,
      blobs,
      prefetch,
      extraFlags: (o.fsVersion === 6 ? RafsSuperFlags.ENCRYPTION_NONE : 0) |
        (blobs.length > 0 && blobs.every((b) => b.features & 0x20) ? RafsSuperFlags.INLINED_CHUNK_DIGEST : 0),
    });
    const writeBoot = (blobs: BlobInfo[]) => (v5 ? v5.writeBootstrapV5(root, bootOpts(blobs)) : v6!.writeBootstrapV6(root, bootOpts(blobs), prepared));
    const fin = await writer.finishAsync(o.blobInlineMeta ? (info: BlobInfo) => writeBoot([info]) : undefined);
    const blobs = fin.info.chunkCount > 0 || o.blobInlineMeta ? [fin.info] : [];
    const bootstrap = o.blobInlineMeta ? Buffer.alloc(0) : writeBoot(blobs);
    let bootstrapPath = o.bootstrap;
    if (!o.blobInlineMeta) {
      bootstrapPath ??= path.join(o.blobDir!, 'bootstrap');
      fs.writeFileSync(bootstrapPath, bootstrap);
    }
    const chunks = files.reduce((s, f) => s + f.chunks.length, 0);
    return {
      bootstrapPath,
      blobPath: blobs.length ? fin.path : undefined,
      blobs: blobs.map((b) => b.blobId),
      blobInfo: blobs[0],
      bootstrap,
      stats: { files: files.length, chunks, uniqueChunks: fin.info.chunkCount, dataBytes, storedBytes: fin.info.compressedSize },
      implicitDirs,
    };
  } finally {
    await (pool?.destroy() ?? poolGone);
    closeSource();
    if (tmpTar) fs.rmSync(path.dirname(tmpTar), { recursive: true, force: true });
  }
}
