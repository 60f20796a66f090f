/**
 * PassthroughFs: a read-write FileSystem over a host directory (the Kata
 * shared dir; kata-contract §0 points 6-8, §3.4), modelled on virtiofsd's
 * and fuse-backend-rs's passthrough: every inode the kernel knows is an
 * O_PATH fd, and every operation is an *at syscall relative to such an fd.
 *
 * Inode table. nodeid → { O_PATH fd, (st_dev, st_ino) key, lookup count }.
 * The same host inode always maps to the same live nodeid (dedupe on the
 * key), LOOKUP/CREATE/MKNOD/MKDIR/SYMLINK/LINK and every READDIRPLUS entry
 * (not `.`/`..`) add one lookup, FORGET/BATCH_FORGET subtract and the fd is
 * closed at 0. The root is nodeid 1 and is never forgotten. Nodeids are
 * allocated monotonically and never reused by an instance (56-bit space, the
 * Vfs limit), so `generation` is a constant per instance: a reused nodeid,
 * the case generations exist for, cannot happen.
 *
 * attr.ino is the host st_ino (low 56 bits, as the Vfs requires), like
 * virtiofsd: stable across FORGET and consistent with READDIR's d_ino.
 *
 * Escape safety (never leave the shared dir):
 *  - names are single components: '/' → EINVAL, '.' / '..' → EINVAL for
 *    everything but LOOKUP; LOOKUP '..' at the root is the root, and
 *    elsewhere is answered only when the parent is already an inode the
 *    kernel holds (i.e. known to be inside), ENOENT otherwise;
 *  - lookups use openat(parent_fd, name, O_PATH|O_NOFOLLOW): a symlink
 *    becomes a symlink inode and is never followed by the daemon; a parent
 *    that is not a directory answers ENOTDIR, so a symlink cannot be used as
 *    a directory (LOOKUP through a link to '/' fails);
 *  - files are opened by re-opening the inode's own fd through
 *    /proc/self/fd/N (no path walk: the magic link jumps to the inode; a
 *    symlink inode gives ELOOP), creation uses O_CREAT|O_EXCL|O_NOFOLLOW
 *    relative to the parent fd;
 *  - an inode is its fd, not its path: a directory renamed and replaced by a
 *    symlink after LOOKUP keeps referring to the original directory;
 *  - attribute and xattr calls go through the fd (fchownat AT_EMPTY_PATH,
 *    /proc/self/fd/N for chmod/truncate/utimens/xattrs), so they act on the
 *    inode itself, including symlinks and special files.
 *
 * Ownership of new inodes (§3.4): created as root, then fchown'ed to the
 * caller's uid and gid (ctx.uid/ctx.gid) — or to the parent's gid when the
 * parent directory is set-group-ID, as the kernel would have done. The mode
 * is `mode & ~umask`, re-applied with chmod when the daemon's own umask or
 * the chown (which clears S_ISUID/S_ISGID) changed it. setfsuid is not used
 * (it would drop CAP_MKNOD/CAP_CHOWN and make whiteouts fail for non-root
 * callers).
 *
 * Blocking: metadata syscalls run synchronously on the event-loop thread
 * (they do not block for long on a local fs); open, read, write and fsync go
 * through Node's thread pool (a FIFO open or a slow device must not stall
 * the session). Inodes and handles used across an await are pinned so a
 * racing FORGET/RELEASE cannot close (and the kernel reuse) their fd.
 */
import * as fs from 'node:fs';
import { constants } from 'node:os';
import { ErrnoError } from '../../common/errno';
import { log } from '../../common/log';
import {
  FATTR_ATIME, FATTR_ATIME_NOW, FATTR_FH, FATTR_GID, FATTR_MODE, FATTR_MTIME, FATTR_MTIME_NOW, FATTR_SIZE, FATTR_UID,
  FUSE_ASYNC_DIO, FUSE_ASYNC_READ, FUSE_ATOMIC_O_TRUNC, FUSE_AUTO_INVAL_DATA, FUSE_BIG_WRITES, FUSE_CACHE_SYMLINKS,
  FUSE_DO_READDIRPLUS, FUSE_DONT_MASK, FUSE_INIT_EXT, FUSE_MAX_PAGES, FUSE_PARALLEL_DIROPS, FUSE_READDIRPLUS_AUTO,
} from '../fuse/abi';
import {
  FOPEN_CACHE_DIR, FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE,
  type Attr, type AttrReply, type DirEntry, type Entry, type FileSystem, type OpenReply, type RequestContext,
  type SetattrIn, type StatFs,
} from '../fuse/filesystem';
import * as sys from './sys';

const E = constants.errno;
const ROOT = 1n;
const INO_MASK = (1n << 56n) - 1n;

/** virtiofsd-style cache policy. */
export type CachePolicy = 'none' | 'auto' | 'always';

export interface PassthroughOptions {
  /**
   * 'none': timeouts 0 and FOPEN_DIRECT_IO on every open; 'auto' (default):
   * 1 s timeouts; 'always': 86400 s timeouts, FOPEN_KEEP_CACHE (and
   * FOPEN_CACHE_DIR on directories).
   */
  cachePolicy?: CachePolicy;
  /** alias of `cachePolicy` */
  cache?: CachePolicy;
  /** override the policy's attr/entry timeouts (seconds) */
  attrTimeout?: number;
  entryTimeout?: number;
  /** serve xattrs (default true); false → getxattr/listxattr/setxattr/removexattr answer EOPNOTSUPP */
  xattr?: boolean;
  /** generation reported in entries (default 0) */
  generation?: bigint;
}

const POLICY_TIMEOUT: Record<CachePolicy, number> = { none: 0, auto: 1, always: 86400 };

interface Inode {
  id: bigint;
  fd: number;
  key: string;
  /** S_IFMT bits at lookup time (a host inode never changes type) */
  type: number;
  refs: number;
  /** async operations in flight on `fd` */
  pins: number;
  /** forgotten while pinned: close when the last pin goes */
  dead: boolean;
}

interface Handle {
  fh: bigint;
  ino: bigint;
  fd: number;
  dir: boolean;
  pins: number;
  dead: boolean;
  /** directories: cookie → kernel d_off to resume from (cookie 0 = start) */
  cookies?: Map<number, bigint>;
  nextCookie?: number;
}

const errno = (code: keyof typeof E & string, msg: string) => new ErrnoError(code, msg);

/** Node fs errors (code + negative errno) → ErrnoError with the same errno. */
function fromNode(e: unknown, what: string): unknown {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (typeof code === 'string' && E[code as keyof typeof E] !== undefined) return new ErrnoError(code, `${what}: ${code}`, { cause: e });
  return e;
}

function isDotName(n: Buffer): boolean {
  return n[0] === 0x2e && (n.length === 1 || (n.length === 2 && n[1] === 0x2e));
}

/** A single path component; '/', '.', '..' and '' never reach the host. */
function checkName(name: Buffer): void {
  if (name.length === 0) throw errno('ENOENT', 'empty name');
  if (name.indexOf(0x2f) >= 0) throw errno('EINVAL', 'name contains /');
  if (isDotName(name)) throw errno('EINVAL', 'name is . or ..');
  if (name.length > 255) throw errno('ENAMETOOLONG', 'name too long');
}

export class PassthroughFs implements FileSystem {
  readonly readOnly = false;
  readonly root: string;
  private readonly inodes = new Map<bigint, Inode>();
  private readonly byKey = new Map<string, Inode>();
  private readonly handles = new Map<bigint, Handle>();
  private nextId = 2n;
  private nextFh = 1n;
  private readonly attrTimeout: number;
  private readonly entryTimeout: number;
  private readonly cache: CachePolicy;
  private readonly xattr: boolean;
  private readonly generation: bigint;
  /** the daemon's umask (new inodes get their mode fixed when it masks bits) */

  constructor(root: string, opts: PassthroughOptions = {}) {
    this.root = root;
    this.cache = opts.cachePolicy ?? opts.cache ?? 'auto';
    if (!(this.cache in POLICY_TIMEOUT)) throw errno('EINVAL', `unknown cache policy ${String(this.cache)}`);
    this.attrTimeout = opts.attrTimeout ?? POLICY_TIMEOUT[this.cache];
    this.entryTimeout = opts.entryTimeout ?? POLICY_TIMEOUT[this.cache];
    this.xattr = opts.xattr ?? true;
    this.generation = opts.generation ?? 0n;
    const fd = sys.openat(sys.AT_FDCWD, Buffer.from(root), sys.O_PATH | sys.O_DIRECTORY);
    const st = sys.fstatx(fd);
    const rootNode: Inode = { id: ROOT, fd, key: st.dev + '/' + st.ino, type: sys.S_IFDIR, refs: 1, pins: 0, dead: false };
    this.inodes.set(ROOT, rootNode);
    this.byKey.set(rootNode.key, rootNode);
  }

  // ---- introspection (tests, daemon metrics) ----------------------------------

  /** Live inodes (root included). */
  get inodeCount(): number {
    return this.inodes.size;
  }

  /** Open file and directory handles. */
  get handleCount(): number {
    return this.handles.size;
  }

  /** Kernel lookup count of a nodeid (0 if unknown). */
  lookupCount(ino: bigint): number {
    return this.inodes.get(ino)?.refs ?? 0;
  }

  /** Close every fd (the instance is unusable afterwards). */
  close(): void {
    for (const h of this.handles.values()) sys.close(h.fd);
    this.handles.clear();
    for (const n of this.inodes.values()) sys.close(n.fd);
    this.inodes.clear();
    this.byKey.clear();
  }

  // ---- internals ----------------------------------------------------------------

  private inode(ino: bigint): Inode {
    const n = this.inodes.get(ino);
    if (!n || n.dead) throw errno('EBADF', `unknown inode ${ino}`);
    return n;
  }

  private dirInode(ino: bigint): Inode {
    const n = this.inode(ino);
    if (n.type !== sys.S_IFDIR) throw errno('ENOTDIR', `inode ${ino} is not a directory`);
    return n;
  }

  private handle(fh: bigint | undefined, ino: bigint): Handle | undefined {
    if (fh === undefined) return undefined;
    const h = this.handles.get(fh);
    if (!h || h.dead || h.ino !== ino) return undefined;
    return h;
  }

  private needHandle(fh: bigint, ino: bigint): Handle {
    const h = this.handle(fh, ino);
    if (!h) throw errno('EBADF', `unknown handle ${fh} for inode ${ino}`);
    return h;
  }

  private async pinned<T>(n: Inode | Handle, f: () => Promise<T>): Promise<T> {
    n.pins++;
    try {
      return await f();
    } finally {
      n.pins--;
      if (n.pins === 0 && n.dead) sys.close(n.fd);
    }
  }

  private toAttr(st: sys.Statx): Attr {
    return {
      ino: st.ino & INO_MASK,
      size: st.size,
      blocks: st.blocks,
      atime: st.atime,
      mtime: st.mtime,
      ctime: st.ctime,
      atimeNsec: st.atimeNsec,
      mtimeNsec: st.mtimeNsec,
      ctimeNsec: st.ctimeNsec,
      mode: st.mode,
      nlink: st.nlink,
      uid: st.uid,
      gid: st.gid,
      rdev: st.rdev,
      blksize: st.blksize,
    };
  }

  /**
   * Register (or find) the inode behind a fresh O_PATH fd and count one
   * lookup. Takes ownership of `fd`.
   */
  private adopt(fd: number): Entry {
    let st: sys.Statx;
    try {
      st = sys.fstatx(fd);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
    const key = st.dev + '/' + st.ino;
    let n = this.byKey.get(key);
    if (n && !n.dead) {
      sys.close(fd);
      if (n.id !== ROOT) n.refs++;
    } else {
      n = { id: this.nextId++, fd, key, type: st.mode & sys.S_IFMT, refs: 1, pins: 0, dead: false };
      this.inodes.set(n.id, n);
      this.byKey.set(key, n);
    }
    return { ino: n.id, generation: this.generation, attr: this.toAttr(st), attrTimeout: this.attrTimeout, entryTimeout: this.entryTimeout };
  }

  /** LOOKUP proper: one component under a directory inode, never following a symlink. */
  private doLookup(parent: Inode, name: Buffer): Entry {
    const fd = sys.openat(parent.fd, name, sys.O_PATH | sys.O_NOFOLLOW);
    return this.adopt(fd);
  }

  private entryFor(n: Inode): Entry {
    if (n.id !== ROOT) n.refs++;
    return { ino: n.id, generation: this.generation, attr: this.toAttr(sys.fstatx(n.fd)), attrTimeout: this.attrTimeout, entryTimeout: this.entryTimeout };
  }

  /** Give a new inode the caller's ownership and the requested mode. */
  private setOwner(ctx: RequestContext, parent: Inode, fd: number, wantMode: number | null, isDir: boolean): void {
    let gid = ctx.gid;
    const pst = sys.fstatx(parent.fd);
    if (pst.mode & sys.S_ISGID) gid = pst.gid;
    const st = sys.fstatx(fd);
    if (st.uid !== ctx.uid || st.gid !== gid) sys.fchownFd(fd, ctx.uid, gid);
    if (wantMode === null) return;
    let want = wantMode & 0o7777;
    if (isDir && pst.mode & sys.S_ISGID) want |= sys.S_ISGID; // inherited, as the kernel does
    if ((st.mode & 0o7777) !== want || (want & (sys.S_ISUID | sys.S_ISGID)) !== 0) sys.chmodFd(fd, want);
  }

  /** Create-then-own for MKNOD/MKDIR/SYMLINK; undoes the creation if ownership fails. */
  private finishCreate(ctx: RequestContext, parent: Inode, name: Buffer, wantMode: number | null, isDir: boolean): Entry {
    let fd: number;
    try {
      fd = sys.openat(parent.fd, name, sys.O_PATH | sys.O_NOFOLLOW);
      this.setOwner(ctx, parent, fd, wantMode, isDir);
    } catch (e) {
      try {
        sys.unlinkat(parent.fd, name, isDir ? sys.AT_REMOVEDIR : 0);
      } catch {
        /* best effort */
      }
      throw e;
    }
    return this.adopt(fd);
  }

  private openFlags(dir: boolean): number {
    if (this.cache === 'none') return dir ? 0 : FOPEN_DIRECT_IO;
    if (this.cache === 'always') return dir ? FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR : FOPEN_KEEP_CACHE;
    return 0;
  }

  private newHandle(ino: bigint, fd: number, dir: boolean): Handle {
    const h: Handle = { fh: this.nextFh++, ino, fd, dir, pins: 0, dead: false };
    if (dir) {
      h.cookies = new Map([[0, 0n]]);
      h.nextCookie = 1;
    }
    this.handles.set(h.fh, h);
    return h;
  }

  private dropHandle(fh: bigint, ino: bigint): void {
    const h = this.handle(fh, ino);
    if (!h) throw errno('EBADF', `unknown handle ${fh}`);
    this.handles.delete(fh);
    h.dead = true;
    if (h.pins === 0) sys.close(h.fd);
  }

  /** An fd usable for I/O on the inode: the handle's, or a fresh re-open (async, caller closes). */
  private async reopen(n: Inode, flags: number): Promise<number> {
    // The magic link jumps straight to the inode; O_NOFOLLOW would refuse the link
    // itself, and a symlink inode gives ELOOP (never followed).
    const f = (flags & ~(sys.O_NOFOLLOW | sys.O_CREAT | sys.O_EXCL | sys.O_NOCTTY)) | sys.O_CLOEXEC;
    return this.pinned(n, () => new Promise<number>((resolve, reject) => {
      fs.open(`/proc/self/fd/${n.fd}`, f, (err, fd) => (err ? reject(fromNode(err, 'open')) : resolve(fd)));
    }));
  }

  // ---- FileSystem: session ------------------------------------------------------

  init(capable: bigint): bigint {
    return capable & (FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES |
      FUSE_CACHE_SYMLINKS | FUSE_AUTO_INVAL_DATA | FUSE_INIT_EXT | FUSE_ATOMIC_O_TRUNC | FUSE_DONT_MASK |
      FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO);
  }

  /** The kernel dropped every reference: forget all inodes but the root, close handles. */
  destroy(): void {
    for (const h of [...this.handles.values()]) this.dropHandle(h.fh, h.ino);
    for (const n of [...this.inodes.values()]) {
      if (n.id === ROOT) continue;
      this.forget(n.id, n.refs);
    }
  }

  // ---- FileSystem: lookups ------------------------------------------------------

  async lookup(_ctx: RequestContext, parent: bigint, name: Buffer): Promise<Entry> {
    const p = this.dirInode(parent);
    if (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e) {
      if (p.id === ROOT) return this.entryFor(p);
      // Only a parent the kernel already holds (hence inside the share) is answered.
      const fd = sys.openat(p.fd, name, sys.O_PATH | sys.O_NOFOLLOW | sys.O_DIRECTORY);
      let key: string;
      try {
        const st = sys.fstatx(fd);
        key = st.dev + '/' + st.ino;
      } finally {
        sys.close(fd);
      }
      const known = this.byKey.get(key);
      if (!known || known.dead) throw errno('ENOENT', '.. is not a known inode');
      return this.entryFor(known);
    }
    checkName(name);
    return this.doLookup(p, name);
  }

  forget(ino: bigint, nlookup: number): void {
    if (ino === ROOT) return;
    const n = this.inodes.get(ino);
    if (!n) return;
    n.refs -= nlookup;
    if (n.refs > 0) return;
    this.inodes.delete(ino);
    if (this.byKey.get(n.key) === n) this.byKey.delete(n.key);
    n.dead = true;
    if (n.pins === 0) sys.close(n.fd);
  }

  async getattr(_ctx: RequestContext, ino: bigint, fh?: bigint): Promise<AttrReply> {
    const n = this.inode(ino);
    const h = this.handle(fh, ino);
    return { attr: this.toAttr(sys.fstatx(h ? h.fd : n.fd)), timeout: this.attrTimeout };
  }

  async readlink(_ctx: RequestContext, ino: bigint): Promise<Buffer> {
    const n = this.inode(ino);
    if (n.type !== sys.S_IFLNK) throw errno('EINVAL', 'not a symlink');
    return sys.readlinkFd(n.fd);
  }

  async access(ctx: RequestContext, ino: bigint, mask: number): Promise<void> {
    const st = sys.fstatx(this.inode(ino).fd);
    if (mask === 0) return; // F_OK
    if (ctx.uid === 0) {
      // root: r/w always; x if any x bit is set, or a directory
      if (mask & 1 && !(st.mode & 0o111) && (st.mode & sys.S_IFMT) !== sys.S_IFDIR) throw errno('EACCES', 'access');
      return;
    }
    const bits = ctx.uid === st.uid ? (st.mode >> 6) & 7 : ctx.gid === st.gid ? (st.mode >> 3) & 7 : st.mode & 7;
    if ((mask & bits & 7) !== (mask & 7)) throw errno('EACCES', 'access');
  }

  async statfs(_ctx: RequestContext, ino: bigint): Promise<StatFs> {
    const s = sys.fstatfs(this.inode(ino).fd);
    return { blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, bsize: s.bsize, namelen: s.namelen, frsize: s.frsize || s.bsize };
  }

  // ---- FileSystem: files --------------------------------------------------------

  async open(_ctx: RequestContext, ino: bigint, flags: number): Promise<OpenReply> {
    const n = this.inode(ino);
    if (n.type === sys.S_IFDIR && (flags & sys.O_ACCMODE) !== sys.O_RDONLY) throw errno('EISDIR', 'open dir for writing');
    const fd = await this.reopen(n, flags);
    if (n.dead) {
      // forgotten while opening: the kernel cannot hold a handle on it
      sys.close(fd);
      throw errno('EBADF', `inode ${ino} forgotten during open`);
    }
    return { fh: this.newHandle(ino, fd, false).fh, openFlags: this.openFlags(false) };
  }

  async read(_ctx: RequestContext, ino: bigint, fh: bigint, offset: number, size: number): Promise<Buffer[]> {
    const h = this.needHandle(fh, ino);
    if (size === 0) return [];
    const buf = Buffer.allocUnsafe(size);
    const n = await this.pinned(h, () => new Promise<number>((resolve, reject) => {
      fs.read(h.fd, buf, 0, size, offset, (err, got) => (err ? reject(fromNode(err, 'read')) : resolve(got)));
    }));
    return n === 0 ? [] : [buf.subarray(0, n)];
  }

  async write(_ctx: RequestContext, ino: bigint, fh: bigint, offset: number, data: Buffer, _flags: number): Promise<number> {
    const h = this.needHandle(fh, ino);
    if (data.length === 0) return 0;
    return this.pinned(h, () => new Promise<number>((resolve, reject) => {
      fs.write(h.fd, data, 0, data.length, offset, (err, n) => (err ? reject(fromNode(err, 'write')) : resolve(n)));
    }));
  }

  async flush(_ctx: RequestContext, ino: bigint, fh: bigint): Promise<void> {
    const h = this.needHandle(fh, ino);
    // close(dup(fd)): what a close(2) of this open file would do (lock release, NFS flush)
    sys.close(sys.dup(h.fd));
  }

  async release(_ctx: RequestContext, ino: bigint, fh: bigint, _flags: number): Promise<void> {
    this.dropHandle(fh, ino);
  }

  async fsync(_ctx: RequestContext, ino: bigint, fh: bigint, datasync: boolean): Promise<void> {
    const n = this.inode(ino);
    const h = this.handle(fh, ino);
    const run = (fd: number) => new Promise<void>((resolve, reject) => {
      const cb = (err: NodeJS.ErrnoException | null) => (err ? reject(fromNode(err, 'fsync')) : resolve());
      if (datasync) fs.fdatasync(fd, cb);
      else fs.fsync(fd, cb);
    });
    if (h) return this.pinned(h, () => run(h.fd));
    // no handle: only regular files and directories are worth (and safe: no FIFO open) syncing
    if (n.type !== sys.S_IFREG && n.type !== sys.S_IFDIR) return;
    const fd = await this.reopen(n, n.type === sys.S_IFDIR ? sys.O_RDONLY | sys.O_DIRECTORY : sys.O_RDONLY);
    try {
      await run(fd);
    } finally {
      sys.close(fd);
    }
  }

  async fsyncdir(ctx: RequestContext, ino: bigint, fh: bigint, datasync: boolean): Promise<void> {
    return this.fsync(ctx, ino, fh, datasync);
  }

  async lseek(_ctx: RequestContext, ino: bigint, fh: bigint, offset: number, whence: number): Promise<number> {
    const h = this.needHandle(fh, ino);
    return Number(sys.lseek(h.fd, offset, whence));
  }

  async fallocate(_ctx: RequestContext, ino: bigint, fh: bigint, mode: number, offset: number, length: number): Promise<void> {
    const h = this.needHandle(fh, ino);
    sys.fallocate(h.fd, mode, offset, length);
  }

  async syncfs(_ctx: RequestContext, ino: bigint): Promise<void> {
    const n = this.inode(ino);
    const fd = await this.reopen(n, n.type === sys.S_IFDIR ? sys.O_RDONLY | sys.O_DIRECTORY : sys.O_RDONLY | sys.O_NONBLOCK);
    try {
      sys.syncfs(fd);
    } finally {
      sys.close(fd);
    }
  }

  // ---- FileSystem: directories --------------------------------------------------

  async opendir(_ctx: RequestContext, ino: bigint, _flags: number): Promise<OpenReply> {
    const n = this.dirInode(ino);
    const fd = sys.openat(sys.AT_FDCWD, Buffer.from(`/proc/self/fd/${n.fd}`), sys.O_RDONLY | sys.O_DIRECTORY);
    return { fh: this.newHandle(ino, fd, true).fh, openFlags: this.openFlags(true) };
  }

  async releasedir(_ctx: RequestContext, ino: bigint, fh: bigint): Promise<void> {
    this.dropHandle(fh, ino);
  }

  /**
   * Cookies: the kernel's d_off values can use all 64 bits (ext4 hashes),
   * more than a JS number holds, so the offsets handed out are per-handle
   * small integers mapped to the kernel's d_off. Entries are read with
   * lseek(d_off) + getdents64, synchronously (no interleaving on a handle).
   */
  async readdir(_ctx: RequestContext, ino: bigint, fh: bigint, offset: number, plus: boolean, add: (e: DirEntry) => boolean): Promise<void> {
    const dir = this.dirInode(ino);
    const h = this.needHandle(fh, ino);
    if (!h.dir) throw errno('ENOTDIR', 'not a directory handle');
    const start = h.cookies!.get(offset);
    if (start === undefined) throw errno('EINVAL', `unknown directory cookie ${offset}`);
    sys.lseek(h.fd, start, 0);
    for (;;) {
      const batch = sys.getdents64(h.fd);
      if (batch.length === 0) return;
      for (const d of batch) {
        const cookie = h.nextCookie!++;
        h.cookies!.set(cookie, d.off);
        const dot = isDotName(d.name);
        let entry: Entry | undefined;
        if (plus && !dot) {
          try {
            entry = this.doLookup(dir, d.name);
          } catch (e) {
            // removed meanwhile: hand out the name without attributes
            log.debug({ errno: (e as ErrnoError).errno }, 'passthrough: readdirplus lookup failed');
          }
        }
        const ok = add({ ino: d.ino & INO_MASK, offset: cookie, type: d.type, name: d.name, entry });
        if (!ok) {
          if (entry) this.forget(entry.ino, 1); // never reached the kernel
          return;
        }
      }
    }
  }

  // ---- FileSystem: attributes ----------------------------------------------------

  async setattr(_ctx: RequestContext, ino: bigint, a: SetattrIn): Promise<AttrReply> {
    const n = this.inode(ino);
    const h = a.valid & FATTR_FH ? this.handle(a.fh, ino) : undefined;
    const v = a.valid;
    if (v & FATTR_MODE) {
      if (h) sys.fchmod(h.fd, a.mode! & 0o7777);
      else sys.chmodFd(n.fd, a.mode! & 0o7777);
    }
    if (v & (FATTR_UID | FATTR_GID)) {
      const uid = v & FATTR_UID ? a.uid! : -1;
      const gid = v & FATTR_GID ? a.gid! : -1;
      sys.fchownFd(h ? h.fd : n.fd, uid, gid);
    }
    if (v & FATTR_SIZE) {
      if (h) sys.ftruncate(h.fd, a.size!);
      else if (n.type !== sys.S_IFREG) throw errno(n.type === sys.S_IFDIR ? 'EISDIR' : 'EINVAL', 'truncate of a non-regular file');
      else sys.truncateFd(n.fd, a.size!);
    }
    if (v & (FATTR_ATIME | FATTR_MTIME)) {
      const t: sys.Timespecs = [0, sys.UTIME_OMIT, 0, sys.UTIME_OMIT];
      if (v & FATTR_ATIME) {
        if (v & FATTR_ATIME_NOW) t[1] = sys.UTIME_NOW;
        else { t[0] = a.atime!; t[1] = a.atimeNsec ?? 0; }
      }
      if (v & FATTR_MTIME) {
        if (v & FATTR_MTIME_NOW) t[3] = sys.UTIME_NOW;
        else { t[2] = a.mtime!; t[3] = a.mtimeNsec ?? 0; }
      }
      if (h) sys.futimens(h.fd, t);
      else sys.utimensFd(n.fd, t, n.type === sys.S_IFLNK);
    }
    return { attr: this.toAttr(sys.fstatx(h ? h.fd : n.fd)), timeout: this.attrTimeout };
  }

  async getxattr(_ctx: RequestContext, ino: bigint, name: Buffer): Promise<Buffer> {
    if (!this.xattr) throw errno('EOPNOTSUPP', 'xattrs disabled');
    return sys.getxattrFd(this.inode(ino).fd, name);
  }

  async listxattr(_ctx: RequestContext, ino: bigint): Promise<Buffer[]> {
    if (!this.xattr) throw errno('EOPNOTSUPP', 'xattrs disabled');
    return sys.listxattrFd(this.inode(ino).fd);
  }

  async setxattr(_ctx: RequestContext, ino: bigint, name: Buffer, value: Buffer, flags: number): Promise<void> {
    if (!this.xattr) throw errno('EOPNOTSUPP', 'xattrs disabled');
    sys.setxattrFd(this.inode(ino).fd, name, value, flags);
  }

  async removexattr(_ctx: RequestContext, ino: bigint, name: Buffer): Promise<void> {
    if (!this.xattr) throw errno('EOPNOTSUPP', 'xattrs disabled');
    sys.removexattrFd(this.inode(ino).fd, name);
  }

  // ---- FileSystem: namespace -------------------------------------------------------

  async create(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, flags: number, umask: number): Promise<{ entry: Entry; open: OpenReply }> {
    const p = this.dirInode(parent);
    checkName(name);
    const want = mode & ~umask & 0o7777;
    const base = (flags & ~(sys.O_CREAT | sys.O_EXCL | sys.O_NOCTTY | sys.O_DIRECTORY | sys.O_PATH)) | sys.O_NOFOLLOW;
    let fd: number;
    let created = true;
    try {
      fd = sys.openat(p.fd, name, base | sys.O_CREAT | sys.O_EXCL, want);
    } catch (e) {
      // Created on the host meanwhile: open it like open(O_CREAT) would, unless O_EXCL.
      if ((e as ErrnoError).errno !== E.EEXIST || flags & sys.O_EXCL) throw e;
      fd = sys.openat(p.fd, name, base);
      created = false;
    }
    let entry: Entry;
    try {
      if (created) this.setOwner(ctx, p, fd, want, false);
      entry = this.adopt(sys.openat(sys.AT_FDCWD, Buffer.from(`/proc/self/fd/${fd}`), sys.O_PATH));
    } catch (e) {
      sys.close(fd);
      if (created) {
        try { sys.unlinkat(p.fd, name, 0); } catch { /* best effort */ }
      }
      throw e;
    }
    return { entry, open: { fh: this.newHandle(entry.ino, fd, false).fh, openFlags: this.openFlags(false) } };
  }

  async mknod(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, rdev: number, umask: number): Promise<Entry> {
    const p = this.dirInode(parent);
    checkName(name);
    const want = mode & ~umask & 0o7777;
    sys.mknodat(p.fd, name, (mode & sys.S_IFMT) | want, rdev);
    return this.finishCreate(ctx, p, name, want, false);
  }

  async mkdir(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, umask: number): Promise<Entry> {
    const p = this.dirInode(parent);
    checkName(name);
    const want = mode & ~umask & 0o7777;
    sys.mkdirat(p.fd, name, want);
    return this.finishCreate(ctx, p, name, want, true);
  }

  async symlink(ctx: RequestContext, parent: bigint, name: Buffer, target: Buffer): Promise<Entry> {
    const p = this.dirInode(parent);
    checkName(name);
    sys.symlinkat(target, p.fd, name);
    return this.finishCreate(ctx, p, name, null, false);
  }

  async link(_ctx: RequestContext, ino: bigint, newParent: bigint, newName: Buffer): Promise<Entry> {
    const n = this.inode(ino);
    const p = this.dirInode(newParent);
    checkName(newName);
    if (n.type === sys.S_IFDIR) throw errno('EPERM', 'hard link to a directory');
    sys.linkFd(n.fd, p.fd, newName);
    return this.entryFor(n);
  }

  async unlink(_ctx: RequestContext, parent: bigint, name: Buffer): Promise<void> {
    const p = this.dirInode(parent);
    checkName(name);
    sys.unlinkat(p.fd, name, 0);
  }

  async rmdir(_ctx: RequestContext, parent: bigint, name: Buffer): Promise<void> {
    const p = this.dirInode(parent);
    checkName(name);
    sys.unlinkat(p.fd, name, sys.AT_REMOVEDIR);
  }

  /** RENAME/RENAME2: flags (NOREPLACE, EXCHANGE, WHITEOUT) go to renameat2 unchanged. */
  async rename(_ctx: RequestContext, parent: bigint, name: Buffer, newParent: bigint, newName: Buffer, flags: number): Promise<void> {
    const p = this.dirInode(parent);
    const np = this.dirInode(newParent);
    checkName(name);
    checkName(newName);
    sys.renameat2(p.fd, name, np.fd, newName, flags);
  }
}
