/**
 * RafsFs: a read-only FUSE FileSystem over a RAFS image (v5 or v6 through the
 * version-neutral RafsSuper) and a BlobDevice for chunk data. Mutations are
 * answered EROFS by the server (readOnly). As upstream: attr/entry timeouts
 * of 2^32 s (the image is immutable), statfs bsize 512 / namemax 255 /
 * files = inode count, and without EXPLICIT_UID_GID every inode is owned by
 * the daemon's euid/egid.
 */
import { BoundedMap } from '../common/bounded-map';
import { fileSpans, firstChunkAfter } from '../storage/blob/chunk-range';
import { inImageChunk } from './image';
import { einval, enodata, enoent, enosys, enotdir, ErrnoError } from '../common/errno';
import type { BlobDevice, ChunkLocation } from '../storage/blob/device';
import type { ChunkInfo, RafsInode, RafsSuper } from './metadata/types';
import type {
  Attr, AttrReply, DirEntry, Entry, FileSystem, OpenReply, ReadPiece, RequestContext, StatFs,
} from '../common/filesystem';
import { FOPEN_CACHE_DIR, FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE } from '../common/filesystem';

const RAFS_TIMEOUT = 4294967296; // 2^32 s, as upstream
const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');
const ATTR_BLKSIZE = 4096;
/** inodes whose chunk list / read position is kept (a reader works on a few files at a time) */
const CACHE_LIMIT = 256;
/** chunk infos kept over all cached inodes (~200 bytes each) */
const CACHE_MAX_ITEMS = 1 << 16;
/** chunks fetched ahead of a sequential reader */
/** bytes of chunks fetched ahead of a sequential reader (at least 4 chunks), refilled half a window at a time */
const READAHEAD_BYTES = 16 << 20;
const READAHEAD_MIN_CHUNKS = 4;

export interface RafsFsOptions {
  /** bootstrap bytes: plain EROFS images keep data in the image itself (chunks with blobIndex -1) */
  bootstrap: Buffer;
  /** rafs.enable_xattr; xattr ops are also on when the image has HAS_XATTR */
  enableXattr?: boolean;
  /** serve file data with FOPEN_DIRECT_IO (cache policy `none`, as virtiofsd cache=none) */
  directIo?: boolean;
}

export class RafsFs implements FileSystem {
  readonly readOnly = true;
  /**
   * open keeps nothing and answers fh 0 + FOPEN_KEEP_CACHE, what the kernel
   * assumes under zero-message open (virtiofs/vfs/vfs.ts noOpen); not with
   * direct I/O, whose FOPEN_DIRECT_IO only OPEN can carry
   */
  readonly statelessOpen: boolean;
  private readonly xattrEnabled: boolean;
  private readonly uid: number;
  private readonly gid: number;
  /** bounded by entries too: one crafted inode can have a million chunks */
  private readonly chunkCache = new BoundedMap<number, ChunkInfo[]>(CACHE_LIMIT, { weight: (c) => c.length + 1, maxWeight: CACHE_MAX_ITEMS });
  /** per inode: where the last read ended, and the chunk index readahead has been issued up to */
  private readonly lastEnd = new BoundedMap<number, { end: number; next: number }>(CACHE_LIMIT);

  constructor(readonly sb: RafsSuper, readonly device: BlobDevice, private readonly opts: RafsFsOptions) {
    this.xattrEnabled = !!opts.enableXattr || sb.meta.hasXattr;
    this.statelessOpen = !opts.directIo;
    this.uid = sb.meta.explicitUidGid ? -1 : process.geteuid?.() ?? 0;
    this.gid = sb.meta.explicitUidGid ? -1 : process.getegid?.() ?? 0;
  }

  /**
   * FUSE nodeid 1 is the root (ROOT_ID). The RAFS root ino (v6: a nid such as
   * 128) and ino 1 swap places, a bijection that keeps every inode reachable.
   */
  private ino(nodeid: bigint): number {
    const root = this.sb.meta.rootIno;
    const n = Number(nodeid);
    return n === 1 ? root : n === root ? 1 : n;
  }

  private nodeid(ino: number): bigint {
    const root = this.sb.meta.rootIno;
    return BigInt(ino === root ? 1 : ino === 1 ? root : ino);
  }

  private inode(nodeid: bigint): RafsInode {
    const ino = this.ino(nodeid);
    try {
      return this.sb.getInode(ino);
    } catch (e) {
      if (e instanceof ErrnoError && e.code === 'EINVAL') throw enoent(`no inode ${ino}: ${e.message}`, e);
      throw e;
    }
  }

  attrOf(i: RafsInode): Attr {
    return {
      ino: this.nodeid(i.ino),
      size: i.size,
      blocks: i.blocks,
      atime: i.mtime, mtime: i.mtime, ctime: i.mtime,
      atimeNsec: i.mtimeNsec, mtimeNsec: i.mtimeNsec, ctimeNsec: i.mtimeNsec,
      mode: i.mode,
      nlink: i.nlink,
      uid: this.uid >= 0 ? this.uid : i.uid,
      gid: this.gid >= 0 ? this.gid : i.gid,
      rdev: i.rdev,
      blksize: ATTR_BLKSIZE,
    };
  }

  private entryOf(i: RafsInode): Entry {
    return { ino: this.nodeid(i.ino), generation: 0n, attr: this.attrOf(i), attrTimeout: RAFS_TIMEOUT, entryTimeout: RAFS_TIMEOUT };
  }

  async lookup(_ctx: RequestContext, parent: bigint, name: Buffer): Promise<Entry> {
    const dir = this.inode(parent);
    if (!dir.isDir()) throw enotdir(`lookup in non-directory ${parent}`);
    if (name.length === 1 && name[0] === 0x2e) return this.entryOf(dir);
    const child = dir.lookup(name);
    if (!child) throw enoent(`no entry '${name.toString()}' in ${parent}`);
    return this.entryOf(child);
  }

  async getattr(_ctx: RequestContext, ino: bigint): Promise<AttrReply> {
    return { attr: this.attrOf(this.inode(ino)), timeout: RAFS_TIMEOUT };
  }

  async readlink(_ctx: RequestContext, ino: bigint): Promise<Buffer> {
    const i = this.inode(ino);
    if (!i.isSymlink()) throw einval(`inode ${ino} is not a symlink`);
    return i.readlink();
  }

  async open(_ctx: RequestContext, ino: bigint): Promise<OpenReply> {
    const i = this.inode(ino);
    if (i.isDir()) throw new ErrnoError('EISDIR', `inode ${ino} is a directory`);
    return { fh: 0n, openFlags: this.opts.directIo ? FOPEN_DIRECT_IO : FOPEN_KEEP_CACHE };
  }

  async release(): Promise<void> {}
  /**
   * ENOSYS, as upstream's Rafs (which has no flush): nothing is ever dirty on
   * a read-only image, and the kernel stops sending FLUSH on the connection
   * after the first ENOSYS: one round trip less per close(2).
   */
  async flush(): Promise<void> { throw enosys('flush: read-only RAFS image'); }
  async releasedir(): Promise<void> {}
  async fsync(): Promise<void> {}
  async fsyncdir(): Promise<void> {}
  async access(_ctx: RequestContext, ino: bigint): Promise<void> { this.inode(ino); }

  /** A read-only image's listings never change: the kernel may keep them (as upstream's Rafs: CACHE_DIR | KEEP_CACHE). */
  async opendir(_ctx: RequestContext, ino: bigint): Promise<OpenReply> {
    if (!this.inode(ino).isDir()) throw enotdir(`inode ${ino} is not a directory`);
    return { fh: 0n, openFlags: FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE };
  }

  /** `i`'s chunk list, kept for the next read of it unless `keep` is false. */
  private chunksOf(i: RafsInode, keep = true): ChunkInfo[] {
    let c = this.chunkCache.get(i.ino);
    if (!c) { c = i.chunks(); if (keep) this.chunkCache.set(i.ino, c); }
    return c;
  }

  private readChunk(c: ChunkInfo): Promise<Buffer> | Buffer {
    if (c.blobIndex !== -1) return this.device.readChunk(c);
    return inImageChunk(this.opts.bootstrap, c);
  }


  async read(_ctx: RequestContext, ino: bigint, _fh: bigint, offset: number, size: number): Promise<ReadPiece[]> {
    return Promise.all(this.pieces(ino, offset, size, false)!);
  }

  /** `read` when every chunk is cached and verified (or a hole): file slices at once; otherwise undefined, nothing started. */
  readSync(_ctx: RequestContext, ino: bigint, _fh: bigint, offset: number, size: number): ReadPiece[] | undefined {
    return this.pieces(ino, offset, size, true) as ReadPiece[] | undefined;
  }

  /** The pieces of a read; `readyOnly`: undefined (before any fetch or readahead) as soon as a chunk is not cached. */
  private pieces(ino: bigint, offset: number, size: number, readyOnly: boolean): Array<Promise<ReadPiece> | ReadPiece> | undefined {
    const i = this.inode(ino);
    if (!i.isReg()) throw einval(`inode ${ino} is not a regular file`);
    const end = Math.min(i.size, offset + size);
    if (offset >= end) return [];
    // a read to the end of the file has no sequel to read ahead for; one of the whole file (small
    // files, read in one go) none to keep the chunk list for: nothing is kept per inode for them
    const toEof = end === i.size;
    const chunks = this.chunksOf(i, !(toEof && offset === 0));
    const pieces: Array<Promise<ReadPiece> | ReadPiece> = [];
    // cache hits are counted once the read is answered: a readyOnly read that gives up counts none
    let hits: ChunkLocation[] | undefined;
    let last = -1; // index of the last chunk this read touches
    for (const s of fileSpans(chunks, offset, end)) {
      if (s.kind === 'hole') { pieces.push(Buffer.alloc(s.length)); continue; }
      const c = s.chunk;
      last = s.index;
      // cached and verified on fill: let the transport copy it straight from the cache file
      const loc = c.blobIndex >= 0 ? this.device.locate?.(c, true) : undefined;
      if (loc) {
        pieces.push({ fd: loc.fd, position: loc.position + s.from, length: s.to - s.from });
        (hits ??= []).push(loc);
        continue;
      }
      if (readyOnly) return undefined;
      const data = this.readChunk(c);
      pieces.push(data instanceof Promise ? data.then((d) => d.subarray(s.from, s.to)) : data.subarray(s.from, s.to));
    }
    if (hits && this.device.servedFromCache) for (const loc of hits) this.device.servedFromCache(loc);
    if (!toEof) this.readahead(i, chunks, last >= 0 ? last : firstChunkAfter(chunks, end) - 1, offset, end);
    else if (this.lastEnd.size > 0) this.lastEnd.delete(i.ino); // a read at the end answers nothing to read ahead for
    return pieces;
  }

  /**
   * Sequential readers (a read starting where the previous one of this inode
   * ended) get the next chunks fetched in the background, so backend latency
   * overlaps with serving the current chunk.
   */
  private readahead(i: RafsInode, chunks: ChunkInfo[], last: number, offset: number, end: number): void {
    let cur = this.lastEnd.get(i.ino);
    const sequential = cur?.end === offset;
    if (cur) { cur.end = end; cur.next = Math.max(cur.next, last + 1); } else this.lastEnd.set(i.ino, (cur = { end, next: last + 1 }));
    if (!sequential) return;
    const window = Math.max(READAHEAD_MIN_CHUNKS, Math.ceil(READAHEAD_BYTES / Math.max(this.sb.meta.chunkSize, 4096)));
    // refill in batches of at least half a window, so the device can fetch them in few large requests
    if (cur.next - (last + 1) >= window / 2 || cur.next >= chunks.length) return;
    const upto = Math.min(chunks.length, last + 1 + window);
    const batch = chunks.slice(cur.next, upto).filter((c) => c.blobIndex >= 0 && !this.device.locate?.(c, true));
    cur.next = upto;
    if (!batch.length) return;
    if (this.device.readahead) this.device.readahead(batch);
    else for (const c of batch) this.device.readChunk(c).catch(() => { /* the real read reports it */ });
  }

  /**
   * Entries from cookie `offset` on: `.` (cookie 1), `..` (2), then child k
   * (k + 3), read from the directory as they are sent: nothing per entry is
   * kept between calls.
   */
  async readdir(_ctx: RequestContext, ino: bigint, _fh: bigint, offset: number, plus: boolean, add: (e: DirEntry) => boolean): Promise<void> {
    const dir = this.inode(ino);
    if (!dir.isDir()) throw enotdir(`inode ${ino} is not a directory`);
    const self = this.nodeid(dir.ino);
    const n = dir.childCount() + 2;
    for (let k = Math.max(0, offset); k < n; k++) {
      let e: DirEntry;
      if (k < 2) {
        // parent unknown here; kernels ignore d_ino of '..'
        e = { ino: self, offset: k + 1, type: 4, name: k === 0 ? DOT : DOTDOT };
      } else {
        const d = dir.childAt(k - 2);
        e = { ino: this.nodeid(d.ino), offset: k + 1, type: dtype(d.type), name: d.name };
        if (plus && e.ino !== 0n) e.entry = this.entryOf(this.inode(e.ino));
      }
      if (!add(e)) return;
    }
  }

  /** The kernel dropped `ino`: what is kept per inode for reads goes too. */
  forget(ino: bigint): void {
    const i = this.ino(ino);
    this.chunkCache.delete(i);
    this.lastEnd.delete(i);
  }

  async statfs(): Promise<StatFs> {
    return { blocks: 0, bfree: 0, bavail: 0, files: this.sb.meta.inodesCount, ffree: 0, bsize: 512, namelen: 255, frsize: 512 };
  }

  async getxattr(_ctx: RequestContext, ino: bigint, name: Buffer): Promise<Buffer> {
    const i = this.inode(ino);
    if (this.xattrEnabled) {
      const n = name.toString();
      for (const [k, v] of i.xattrs()) if (k === n) return v;
    }
    throw enodata(`no xattr ${name.toString()}`);
  }

  async listxattr(_ctx: RequestContext, ino: bigint): Promise<Buffer[]> {
    const i = this.inode(ino);
    return this.xattrEnabled ? i.xattrs().map(([k]) => Buffer.from(k)) : [];
  }

  async lseek(_ctx: RequestContext, ino: bigint, _fh: bigint, offset: number, whence: number): Promise<number> {
    const i = this.inode(ino);
    const SEEK_DATA = 3, SEEK_HOLE = 4;
    if (whence !== SEEK_DATA && whence !== SEEK_HOLE) throw einval(`unsupported lseek whence ${whence}`);
    if (offset >= i.size) throw new ErrnoError('ENXIO', 'offset past end of file');
    for (const sp of fileSpans(this.chunksOf(i), offset, i.size)) {
      if (whence === SEEK_HOLE && sp.kind === 'hole') return sp.fileOffset;
      if (whence === SEEK_DATA && sp.kind === 'chunk') return sp.fileOffset;
    }
    if (whence === SEEK_HOLE) return i.size; // the implicit hole at EOF
    throw new ErrnoError('ENXIO', 'no data after offset');
  }
}

/** RAFS InodeType (1 reg, 2 dir, 3 chr, 4 blk, 5 fifo, 6 sock, 7 lnk) → DT_*. */
function dtype(t: number): number {
  return [0, 8, 4, 2, 6, 1, 12, 10][t] ?? 0;
}
