/**
 * An opened RAFS image: bootstrap + its data blobs from local files
 * (`--blob FILE` or `--blob-dir DIR`, as nydus-image and the localfs backend
 * resolve them). Bootstraps inlined in a blob (`image.boot`) are found too.
 * Reads file ranges chunk by chunk, optionally verifying chunk digests.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { einval, eio, enoent } from '../common/errno';
import { mapFile } from '../common/libc';
import { loadRafs, type LoadOptions } from './metadata/super';
import type { BlobInfo, ChunkInfo, RafsInode, RafsSuper } from './metadata/types';
import { BlobChunkFlags, BlobFeatures, RAFS_MAX_BOOTSTRAP_SIZE } from './format/constants';
import { BlobFile, extractInlinedBootstrap, readBlobMeta } from '../storage/blob/blob-file';
import { readChunk, readFileRange } from '../storage/blob/chunk-reader';

export interface ImageSource {
  bootstrap: string;
  blobDir?: string;
  blobFile?: string;
  /** verify every chunk digest on read */
  validate?: boolean;
}

const blobIdFromFileName = (p: string): string => path.basename(p).split('.')[0];

export class RafsImage {
  private readonly files = new Map<number, BlobFile>();
  private readonly batches = new Map<number, Map<number, Buffer>>();

  private constructor(
    readonly sb: RafsSuper,
    /** the bootstrap bytes: plain EROFS images keep file data here (chunks with blobIndex -1) */
    private readonly boot: Buffer,
    private readonly src: ImageSource,
    /** the file holding an inlined bootstrap, which is also its data blob */
    private readonly inlineBlob?: string,
  ) {}

  static open(src: ImageSource): RafsImage {
    let image: RafsImage | undefined;
    const { boot, sb, inlineBlob } = loadBootstrapFile(src.bootstrap, { blobMeta: (info) => image?.blobMeta(info), metaOptional: true });
    image = new RafsImage(sb, boot, src, inlineBlob);
    return image;
  }

  /** Path of the file holding blob `info`. */
  blobPath(info: BlobInfo): string {
    if (this.src.blobFile) return this.src.blobFile;
    if (this.inlineBlob && (info.features & BlobFeatures.INLINED_FS_META || this.sb.blobs.length === 1)) return this.inlineBlob;
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(info.blobId) || info.blobId === '.' || info.blobId === '..') {
      throw einval(`blob id '${info.blobId}' is not a safe file name`);
    }
    const dir = this.src.blobDir ?? path.dirname(this.src.bootstrap);
    return path.join(dir, info.blobId);
  }

  blob(index: number): BlobFile {
    let f = this.files.get(index);
    if (!f) {
      const info = this.sb.blobs[index];
      if (!info) throw einval(`chunk refers to blob index ${index}, but the image has ${this.sb.blobs.length} blobs`);
      const p = this.blobPath(info);
      if (!fs.existsSync(p)) throw enoent(`blob ${info.blobId} not found at ${p}`);
      f = BlobFile.open(p);
      this.files.set(index, f);
    }
    return f;
  }

  private blobMeta(info: BlobInfo) {
    try { return readBlobMeta(this.blob(info.blobIndex), info); } catch { return undefined; }
  }

  readChunk(chunk: ChunkInfo, validate = this.src.validate ?? false): Buffer {
    if (chunk.blobIndex === -1) return inImageChunk(this.boot, chunk);
    const info = this.sb.blobs[chunk.blobIndex];
    if (!info) throw eio(`chunk refers to missing blob index ${chunk.blobIndex}`);
    // batch members: the last few decoded batches of each blob, so a walk over small files decodes each batch once
    let batches: Map<number, Buffer> | undefined;
    if (chunk.flags & BlobChunkFlags.BATCH) {
      batches = this.batches.get(chunk.blobIndex);
      if (!batches || batches.size >= 4) this.batches.set(chunk.blobIndex, (batches = new Map()));
    }
    return readChunk(this.blob(chunk.blobIndex), chunk, info, { validate, batches });
  }

  /** Bytes [off, off+len) of a regular file; holes read as zeros. */
  readFile(inode: RafsInode, off = 0, len = inode.size - off, validate?: boolean): Buffer {
    const end = Math.min(inode.size, off + len);
    return readFileRange(inode.chunks(), off, end - off, (c) => this.readChunk(c, validate));
  }

  close(): void {
    for (const f of this.files.values()) f.close();
    this.files.clear();
    this.batches.clear();
  }
}

/**
 * Data a plain EROFS image keeps in the image itself (chunks with blob index
 * -1): the one reader the tools and the daemon share. Such data is never
 * compressed here; anything else is EIO.
 */
export function inImageChunk(boot: Buffer, chunk: ChunkInfo): Buffer {
  const end = chunk.compressedOffset + chunk.uncompressedSize;
  if (chunk.compressed) throw eio(`in-image data at ${chunk.compressedOffset} is marked compressed`);
  if (end > boot.length) throw eio(`in-image data at ${chunk.compressedOffset} (+${chunk.uncompressedSize}) lies outside the image`);
  return boot.subarray(chunk.compressedOffset, end);
}

export interface LoadedBootstrap {
  boot: Buffer;
  sb: RafsSuper;
  /** set when the bootstrap was inlined in this blob file (which is then also its data blob) */
  inlineBlob?: string;
}

/**
 * Read a bootstrap file, or a data blob with an inlined bootstrap (`image.boot`
 * in its ToC); inlined blobs get their real id from the file name (§4.4).
 */
export function loadBootstrapFile(file: string, opts: LoadOptions = {}): LoadedBootstrap {
  const fd = fs.openSync(file, OPEN_FLAGS);
  try {
    const size = regularFileSize(file, fs.fstatSync(fd));
    const head = Buffer.alloc(Math.min(size, BOOTSTRAP_HEAD));
    fs.readSync(fd, head, 0, head.length, 0);
    if (!looksLikeBootstrap(head)) return finishLoad(inlinedBootstrap(file), file, opts);
    checkBootstrapSize(file, size);
    return finishLoad(mappable(head, size) ? mapFile(fd, size) : fs.readFileSync(fd), undefined, opts);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * `loadBootstrapFile` for servers (API mounts): the bootstrap is read
 * without blocking the event loop, and a file that is not a bootstrap is never
 * read whole (it may be a multi-GiB blob: only its ToC is read).
 */
export async function loadBootstrapFileAsync(file: string, opts: LoadOptions = {}): Promise<LoadedBootstrap> {
  const fh = await fs.promises.open(file, OPEN_FLAGS);
  try {
    const size = regularFileSize(file, await fh.stat());
    const head = Buffer.alloc(Math.min(size, BOOTSTRAP_HEAD));
    await fh.read(head, 0, head.length, 0);
    if (!looksLikeBootstrap(head)) return finishLoad(inlinedBootstrap(file), file, opts);
    checkBootstrapSize(file, size);
    if (!mappable(head, size)) return finishLoad(await fh.readFile(), undefined, opts);
    // read once without blocking the loop, so the mapping's pages are in the page cache when the load touches them
    const scratch = Buffer.allocUnsafe(Math.min(size, WARM_PIECE));
    for (let pos = 0; pos < size;) {
      const { bytesRead } = await fh.read(scratch, 0, Math.min(scratch.length, size - pos), pos);
      if (bytesRead <= 0) break;
      pos += bytesRead;
    }
    return finishLoad(mapFile(fh.fd, size), undefined, opts);
  } finally {
    await fh.close();
  }
}

/**
 * v6 bootstraps of at least this size are mapped (as upstream nydusd does)
 * instead of read into memory: the reader touches the few pages a request
 * needs and gives them back now and then (V6Super), so a 100,000-file image
 * (~20 MB of bootstrap) does not keep ~20 MB in the daemon's RSS. v5 ones are
 * read whole (their reader keeps what it decodes anyway).
 */
const MAP_MIN = 1 << 20;
const WARM_PIECE = 1 << 20;

function mappable(head: Buffer, size: number): boolean {
  return size >= MAP_MIN && head.length >= 1028 && head.readUInt32LE(0) !== 0x52414653 && head.readUInt32LE(1024) === 0xe0f5e1e2;
}

/** O_NONBLOCK: a FIFO named as the bootstrap must not block the open (it is refused right after). */
const OPEN_FLAGS = fs.constants.O_RDONLY | fs.constants.O_NONBLOCK;

function regularFileSize(file: string, st: fs.Stats): number {
  if (!st.isFile()) throw einval(`${file}: not a regular file`);
  return st.size;
}

/** Bytes that tell a v5 or v6 bootstrap apart from anything else. */
const BOOTSTRAP_HEAD = 1032;
/** Refuse before reading: a file above the format's limit is not a bootstrap (loadRafs checks it too). */
function checkBootstrapSize(file: string, size: number): void {
  if (size > RAFS_MAX_BOOTSTRAP_SIZE) throw einval(`${file}: bootstrap of ${size} bytes exceeds ${RAFS_MAX_BOOTSTRAP_SIZE}`);
}

/** The bootstrap inlined in blob `file` (its ToC entry `image.boot`). */
function inlinedBootstrap(file: string): Buffer {
  const blob = BlobFile.open(file);
  try {
    const inner = extractInlinedBootstrap(blob);
    if (!inner) throw einval(`${file}: neither a RAFS bootstrap nor a blob with an inlined bootstrap`);
    return inner;
  } finally { blob.close(); }
}

function finishLoad(boot: Buffer, inlineBlob: string | undefined, opts: LoadOptions): LoadedBootstrap {
  const sb = loadRafs(boot, opts);
  if (inlineBlob) {
    for (const b of sb.blobs) if (b.features & BlobFeatures.INLINED_FS_META) b.blobId = blobIdFromFileName(inlineBlob);
  }
  return { boot, sb, inlineBlob };
}

function looksLikeBootstrap(buf: Buffer): boolean {
  if (buf.length >= 8 && buf.readUInt32LE(0) === 0x52414653) return true;
  return buf.length >= 1028 && buf.readUInt32LE(1024) === 0xe0f5e1e2;
}

