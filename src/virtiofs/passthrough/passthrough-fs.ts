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
 * Special files (CVE-2020-35517): the daemon never opens a FIFO, socket or
 * device node for I/O — opening a FIFO blocks until a writer comes, and a
 * device node made by the guest (mknod) would reach the host's device. OPEN
 * (and SYNCFS) of an inode whose type (known since LOOKUP) is not a regular
 * file or a directory answers EBADF (a symlink: ELOOP, it is never
 * followed). CREATE creates with O_CREAT|O_EXCL|O_NOFOLLOW, which never
 * opens an existing name; when the name exists (and the guest did not
 * ask O_EXCL) the existing name is opened O_PATH|O_NOFOLLOW (never blocks,
 * never reaches a driver), fstat'ed, refused unless a regular file (a
 * directory: EISDIR, a symlink: ELOOP, anything else: EBADF), and only then
 * re-opened through /proc/self/fd/N off the loop. Every other open by name on
 * the loop is O_PATH, O_DIRECTORY or O_CREAT|O_EXCL, and carries O_NONBLOCK
 * as well (cleared again on CREATE's new file unless the guest asked for it).
 *
 * Blocking. Calls that can take long however the guest asks never run on the
 * event-loop thread. Opens for I/O, read and write go through Node's thread
 * pool; the bounded blocking-call pool (common/blocking.ts; a full queue
 * answers EAGAIN) runs syncfs, fsync/fdatasync, fallocate, SEEK_DATA/HOLE,
 * FLUSH of a handle opened for writing (close(dup(fd)) writes back on NFS /
 * sends FLUSH on a host FUSE fs) — and everything that can free a file's
 * blocks, which on a local fs takes seconds for a big fragmented file (5.7 s
 * for 100k extents on ext4):
 *  - SETATTR size (truncate of /proc/self/fd/N, or ftruncate of the handle)
 *    and opens with O_TRUNC (OPEN, CREATE of an existing file);
 *  - UNLINK, RMDIR and RENAME over a target, when they may drop the last
 *    link of an inode nothing else holds (evicted inside the call). They run
 *    on the loop only when they provably free nothing (mayFree): the name is
 *    gone, not a regular file or directory, a file with other links, or an
 *    inode this instance holds an fd of — checked and called back to back on
 *    the loop while no UNLINK/RMDIR/RENAME of any instance is on the pool (the
 *    only things in the process that change names off the loop), so the name
 *    cannot change in between. The guest kernel looks a name up before it
 *    removes or replaces it, so normal traffic takes the loop path;
 *    RENAME_EXCHANGE and RENAME_NOREPLACE never replace anything;
 *  - closes that may drop the last reference of an unlinked inode (the
 *    kernel evicts it inside close(2)): the fds of inodes and handles of
 *    regular files and directories close on the loop only when the inode
 *    still has a name (nlink > 0, under the same no-namespace-call-on-the-
 *    pool condition), on the pool otherwise; handles opened for writing
 *    always close on the pool. Symlinks and special files have nothing to
 *    free. A pool close keeps the fd counted until it really happened.
 * What stays on the loop is metadata work that is short on a local fs:
 * O_PATH lookups and statx, mkdir/mknod/symlink/link, CREATE's O_CREAT|O_EXCL
 * open of a new (empty) file, chmod/chown/utimens, xattrs (values ≤ 64 KiB),
 * readlink, statfs, readdir (one 32 KiB getdents64 batch per call, resumed by
 * lseek), OPENDIR, FLUSH of read-only handles (a dup's close, never the last
 * reference), and the unlink that undoes a CREATE/MKNOD/MKDIR whose owner
 * change failed (a node just made, empty). Known limits: when the shared dir
 * is (or contains) a host NFS or FUSE mount, any of these can wait on a
 * server, and the loop with it; and a host process (or another daemon) that
 * renames in the shared dir is not covered by the no-namespace-call rule (a
 * name it replaces between mayFree's check and the call is evicted on the
 * loop; the host side is trusted).
 *
 * The fd rule (one for inodes, handles and the whole instance): an fd is
 * closed exactly once, by closeOwned(), and only when its owner is dead
 * (forgotten, released, destroyed or the instance closed) and unpinned. Any
 * use of an owner's fd that spans an await (thread pool, blocking pool) runs
 * inside pinned(owner); retire() marks the owner dead and closes at once if
 * nothing pins it, otherwise the last unpin closes. Synchronous uses on the
 * loop need no pin (nothing can run in between). Transient fds (a re-open for
 * fsync/syncfs, CREATE's O_PATH probe) belong to the one call that opened
 * them and are closed by it. A close on the pool never closes a reused fd
 * number: the worker only swaps the file out (dup3 of a placeholder), the
 * main thread closes the number afterwards (blocking.ts, "Close ordering").
 *
 * Bounds (a guest must not grow state without limit):
 *  - fds: every fd an instance holds (inodes, handles, transient ones, closes
 *    still in flight) is drawn from one process-wide budget shared by all
 *    instances (fd-budget.ts: the soft RLIMIT_NOFILE minus a reserve of 512
 *    for the daemon's own files and sockets, read at first use, so several
 *    passthrough mounts cannot push the process to EMFILE), and from the
 *    instance's own `maxFds` cap when one is given; an operation that would
 *    need one more than either allows answers ENFILE and leaves nothing
 *    behind; close() gives everything back. An instance's root fd is counted
 *    whatever the budget holds (a mount never fails because a guest used the
 *    budget up; ≤ 255 mounts, within the reserve). LOOKUP of an inode already
 *    held still works at the limit (found by statx, no new fd);
 *  - closes waiting for the blocking pool: at most the fds held (a FORGET
 *    flood can only queue closes of inodes it looked up first, each within
 *    the budget), two array slots each;
 *  - readdir cookies: stable per kernel d_off (a rewind hands out the same
 *    cookies again and adds nothing) and kept in an LRU bounded per handle
 *    (`dirCookiesPerHandle`, 65,536) and per instance (`maxDirCookies`,
 *    262,144: about 120 bytes each, ~32 MiB at most); an evicted cookie
 *    answers EINVAL. Handles and inodes are bounded by the fd budget.
 */
import * as fs from 'node:fs';
import { constants } from 'node:os';
import {
  closeDeferred, fallocateBlocking, flushBlocking, fsyncBlocking, ftruncateBlocking, lseekBlocking, openBlocking,
  renameat2Blocking, syncfsBlocking, truncateBlocking, unlinkatBlocking,
} from '../../common/blocking';
import { ErrnoError, errnoOf } from '../../common/errno';
import { log } from '../../common/log';
import {
  FATTR_ATIME, FATTR_ATIME_NOW, FATTR_FH, FATTR_GID, FATTR_MODE, FATTR_MTIME, FATTR_MTIME_NOW, FATTR_SIZE, FATTR_UID,
  FUSE_ASYNC_DIO, FUSE_ASYNC_READ, FUSE_ATOMIC_O_TRUNC, FUSE_AUTO_INVAL_DATA, FUSE_BIG_WRITES, FUSE_CACHE_SYMLINKS,
  FUSE_DO_READDIRPLUS, FUSE_DONT_MASK, FUSE_INIT_EXT, FUSE_MAX_PAGES, FUSE_PARALLEL_DIROPS, FUSE_READDIRPLUS_AUTO,
  RENAME_EXCHANGE, RENAME_NOREPLACE,
} from '../fuse/abi';
import {
  FOPEN_CACHE_DIR, FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE,
  type Attr, type AttrReply, type DirEntry, type Entry, type FileSystem, type OpenReply, type RequestContext,
  type SetattrIn, type StatFs,
} from '../../common/filesystem';
import { FdBudget, processFdBudget } from './fd-budget';
import * as sys from './sys';

export { FD_RESERVE, FdBudget, MIN_MAX_FDS, defaultMaxFds, processFdBudget } from './fd-budget';

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
  /**
   * Most fds this instance holds at once (inodes, handles, transient, closes
   * in flight), on top of the shared budget (both must have room; beyond
   * either, operations answer ENFILE). Default: no cap of its own.
   */
  maxFds?: number;
  /** the budget the instance draws its fds from; default: processFdBudget (process-wide) */
  fdBudget?: FdBudget;
  /** readdir cookies kept per open directory (LRU; default 65,536) */
  dirCookiesPerHandle?: number;
  /** readdir cookies kept over all open directories of the instance (LRU; default 262,144) */
  maxDirCookies?: number;
}

const POLICY_TIMEOUT: Record<CachePolicy, number> = { none: 0, auto: 1, always: 86400 };

export const DIR_COOKIES_PER_HANDLE = 65_536;
export const MAX_DIR_COOKIES = 262_144;

/** Something that owns an fd (see "The fd rule" above). */
interface FdOwner {
  /** -1 once closed */
  fd: number;
  /** async operations in flight on `fd` */
  pins: number;
  /** forgotten / released: close when the last pin goes */
  dead: boolean;
}

interface Inode extends FdOwner {
  id: bigint;
  key: string;
  /** S_IFMT bits at lookup time (a host inode never changes type) */
  type: number;
  refs: number;
}

interface Handle extends FdOwner {
  fh: bigint;
  ino: bigint;
  dir: boolean;
  /** opened for writing: FLUSH goes off the loop */
  writable: boolean;
  /** directories: kernel d_off → cookie, least recently used first (cookie 0 = start, never stored) */
  cookies?: Map<bigint, number>;
}

interface CookieRef {
  h: Handle;
  off: bigint;
}

const isHandle = (o: Inode | Handle): o is Handle => (o as Handle).fh !== undefined;

/** __O_TMPFILE without O_DIRECTORY */
const O_TMPFILE_BIT = 0o20000000;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const DOTDOT = Buffer.from('..');

const errno = (code: keyof typeof E & string, msg: string) => new ErrnoError(code, msg);

/**
 * UNLINK/RMDIR/RENAME calls of any instance running on the blocking pool now.
 * They are the only things in the process that change names in a shared dir
 * off the event loop; while none runs, a name cannot change between a check
 * on the loop and a call on the loop (see "Blocking" above).
 */
let namespaceCallsOnPool = 0;

async function namespaceCallOnPool<T>(f: () => Promise<T>): Promise<T> {
  namespaceCallsOnPool++;
  try {
    return await f();
  } finally {
    namespaceCallsOnPool--;
  }
}

/** Node fs errors (code + negative errno) → ErrnoError with the same errno. */
function fromNode(e: unknown, what: string): unknown {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (typeof code === 'string' && E[code as keyof typeof E] !== undefined) return new ErrnoError(code, `${what}: ${code}`, { cause: e });
  return e;
}

/**
 * Open the inode behind `fd` through its /proc/self/fd magic link, on Node's
 * thread pool — or, with O_TRUNC (which frees the file's blocks inside the
 * open), on the blocking pool. No path walk; O_NOFOLLOW would refuse the link
 * itself and a symlink inode gives ELOOP (never followed); creation flags are
 * dropped.
 */
function openProc(fd: number, flags: number): Promise<number> {
  const f = (flags & ~(sys.O_NOFOLLOW | sys.O_CREAT | sys.O_EXCL | sys.O_PATH | O_TMPFILE_BIT)) | sys.O_NOCTTY | sys.O_CLOEXEC;
  if (f & sys.O_TRUNC) return openBlocking(`/proc/self/fd/${fd}`, f);
  return new Promise<number>((resolve, reject) => {
    fs.open(`/proc/self/fd/${fd}`, f, (err, nfd) => (err ? reject(fromNode(err, 'open')) : resolve(nfd)));
  });
}

const writableFlags = (flags: number): boolean => (flags & sys.O_ACCMODE) !== sys.O_RDONLY;

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
  /** the instance's own cap (PassthroughOptions.maxFds; Infinity: none) */
  private readonly cap: number;
  /** the shared budget the instance draws from (PassthroughOptions.fdBudget) */
  readonly fdBudget: FdBudget;
  /** fds held now (counted before each open, given back when the close really happened) */
  private fdsHeld = 0;
  /** closes handed to the blocking pool and not done yet */
  private closesInFlight = 0;
  private closeWaiters: Array<() => void> = [];
  /** a close done off the loop: the fd is gone, give it back (one shared function, no closure per close) */
  private readonly onClosed = (): void => {
    this.giveFd();
    if (--this.closesInFlight === 0 && this.closeWaiters.length > 0) {
      const w = this.closeWaiters;
      this.closeWaiters = [];
      for (const f of w) f();
    }
  };
  private readonly cookiesPerHandle: number;
  private readonly maxCookies: number;
  /** every live readdir cookie of the instance → its handle and d_off, least recently used first */
  private readonly cookieLru = new Map<number, CookieRef>();
  private nextCookie = 1;

  constructor(root: string, opts: PassthroughOptions = {}) {
    this.root = root;
    this.cache = opts.cachePolicy ?? opts.cache ?? 'auto';
    if (!(this.cache in POLICY_TIMEOUT)) throw errno('EINVAL', `unknown cache policy ${String(this.cache)}`);
    this.attrTimeout = opts.attrTimeout ?? POLICY_TIMEOUT[this.cache];
    this.entryTimeout = opts.entryTimeout ?? POLICY_TIMEOUT[this.cache];
    this.xattr = opts.xattr ?? true;
    this.generation = opts.generation ?? 0n;
    this.cap = opts.maxFds === undefined ? Infinity : Math.max(1, Math.floor(opts.maxFds));
    this.fdBudget = opts.fdBudget ?? processFdBudget;
    this.cookiesPerHandle = Math.max(16, Math.floor(opts.dirCookiesPerHandle ?? DIR_COOKIES_PER_HANDLE));
    this.maxCookies = Math.max(16, Math.floor(opts.maxDirCookies ?? MAX_DIR_COOKIES));
    const fd = sys.openat(sys.AT_FDCWD, Buffer.from(root), sys.O_PATH | sys.O_DIRECTORY | sys.O_NONBLOCK);
    let st: sys.Statx;
    try {
      st = sys.fstatx(fd);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
    // the root is counted whatever the budget holds (a mount never fails because a guest used the budget up)
    this.fdBudget.force();
    this.fdsHeld = 1;
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

  /** fds the instance holds now (inodes, handles, transient ones, closes in flight). */
  get fdCount(): number {
    return this.fdsHeld;
  }

  /** Most fds the instance could hold now: its own cap or the shared budget's size, the lower. */
  get maxFds(): number {
    return Math.min(this.cap, this.fdBudget.max);
  }

  /** Resolves when no close of this instance is in flight on the blocking pool. */
  closesSettled(): Promise<void> {
    if (this.closesInFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.closeWaiters.push(resolve));
  }

  /** Live readdir cookies over all open directories. */
  get dirCookieCount(): number {
    return this.cookieLru.size;
  }

  /** Live readdir cookies of one directory handle (0 if unknown). */
  dirCookies(fh: bigint): number {
    return this.handles.get(fh)?.cookies?.size ?? 0;
  }

  /**
   * Close every fd (the instance is unusable afterwards). The caller drains
   * requests first; an fd still pinned by an operation in flight is closed
   * when that operation ends. Resolves when the unpinned fds are closed (those
   * closed off the loop included, also the ones FORGET/RELEASE started before)
   * and given back to the budget.
   */
  close(): Promise<void> {
    for (const h of this.handles.values()) {
      this.dropCookies(h);
      this.retire(h);
    }
    this.handles.clear();
    for (const n of this.inodes.values()) this.retire(n);
    this.inodes.clear();
    this.byKey.clear();
    this.cookieLru.clear();
    return this.closesSettled();
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

  // ---- fds: the cap and the close rule -----------------------------------------------

  /**
   * Count one more fd before opening it: ENFILE when the instance's cap or
   * the shared budget is reached. `room` > 1 also checks that that many more
   * would fit (an operation that needs several).
   */
  private reserveFd(what: string, room = 1): void {
    if (this.fdsHeld + room > this.cap) throw errno('ENFILE', `${what}: passthrough fd limit of the instance (${this.cap}) reached`);
    if (!this.fdBudget.tryTake(room)) throw errno('ENFILE', `${what}: process-wide passthrough fd budget (${this.fdBudget.max}) used up`);
    this.fdsHeld++;
  }

  /** Give back one counted fd (its open failed or its close happened). */
  private giveFd(): void {
    this.fdsHeld--;
    this.fdBudget.give();
  }

  /** An fd opened synchronously and counted (the count is given back if the open fails). */
  private counted(what: string, open: () => number): number {
    this.reserveFd(what);
    try {
      return open();
    } catch (e) {
      this.giveFd();
      throw e;
    }
  }

  private async countedAsync(what: string, open: () => Promise<number>): Promise<number> {
    this.reserveFd(what);
    try {
      return await open();
    } catch (e) {
      this.giveFd();
      throw e;
    }
  }

  /**
   * Close a counted fd on the loop: only an fd whose close cannot be the last
   * reference of an unlinked inode with blocks to free (another fd of the
   * instance holds the inode, the file was just created and never written) or
   * of a symlink or special file (nothing to free).
   */
  private closeCounted(fd: number): void {
    sys.close(fd);
    this.giveFd();
  }

  /**
   * Close a counted fd on the blocking pool: the close may drop the last
   * reference of an unlinked inode and free its blocks (seconds for a big
   * fragmented file), write back (NFS) or wait on a host FUSE server. The fd
   * stays counted until it is really closed. `done` (optional) runs then.
   */
  private closeOffLoop(fd: number, done?: () => void): void {
    this.closesInFlight++;
    closeDeferred(fd, done ? () => { this.onClosed(); done(); } : this.onClosed);
  }

  /**
   * Close a counted fd of a regular file or a directory (not written through
   * it): on the loop when the close provably frees nothing — the inode still
   * has a name (nlink > 0) and no UNLINK/RMDIR/RENAME runs on the pool that
   * could take that name away before the close — otherwise on the pool (it
   * may be the last reference of an unlinked inode).
   */
  private closeFile(fd: number, done?: () => void): void {
    let linked = false;
    if (namespaceCallsOnPool === 0) {
      try {
        linked = sys.fstatx(fd).nlink > 0;
      } catch {
        /* unknown: off the loop */
      }
    }
    if (!linked) return this.closeOffLoop(fd, done);
    this.closeCounted(fd);
    done?.();
  }

  /**
   * The one place an owner's fd is closed (once; dead and unpinned). Handles
   * opened for writing always close off the loop (write-back on NFS, FLUSH on
   * a host FUSE fs); other handles and inodes of regular files and
   * directories by closeFile's rule; symlinks and special files have nothing
   * to free and close on the loop.
   */
  private closeOwned(o: Inode | Handle): Promise<void> | undefined {
    const fd = o.fd;
    if (fd < 0) return undefined;
    o.fd = -1;
    if (isHandle(o)) {
      if (o.writable) return new Promise((resolve) => this.closeOffLoop(fd, resolve));
      this.closeFile(fd);
      return undefined;
    }
    if (o.type === sys.S_IFREG || o.type === sys.S_IFDIR) this.closeFile(fd); // FORGET: nobody waits (closesSettled does)
    else this.closeCounted(fd);
    return undefined;
  }

  /**
   * Could removing or replacing `name` in `dir` free an inode's blocks inside
   * the call (unlinkat, renameat2 over a target)? false only when provably
   * not: nothing is there (the call fails the same way), it is not a regular
   * file or a directory, a regular file with other links, or an inode this
   * instance holds an fd of (its blocks go at that fd's close, off the loop) —
   * and no UNLINK/RMDIR/RENAME runs on the pool, so the name still means that
   * inode when the call runs right after this check, on the loop.
   */
  private mayFree(dir: Inode, name: Buffer): boolean {
    if (namespaceCallsOnPool > 0) return true;
    let st: sys.Statx | null;
    try {
      st = sys.statxAtOrNull(dir.fd, name);
    } catch {
      return true; // cannot tell
    }
    if (st === null) return false; // nothing there
    const type = st.mode & sys.S_IFMT;
    if (type !== sys.S_IFREG && type !== sys.S_IFDIR) return false;
    if (type === sys.S_IFREG && st.nlink > 1) return false;
    const held = this.byKey.get(st.dev + '/' + st.ino);
    return !(held && !held.dead && held.fd >= 0);
  }

  /** Mark an owner dead; its fd is closed now if unpinned, else by the last unpin. */
  private retire(o: Inode | Handle): Promise<void> | undefined {
    o.dead = true;
    return o.pins === 0 ? this.closeOwned(o) : undefined;
  }

  /** Run `f` (which uses the owner's fd across awaits) with the fd kept open. */
  private async pinned<T>(o: Inode | Handle, f: () => Promise<T>): Promise<T> {
    o.pins++;
    try {
      return await f();
    } finally {
      o.pins--;
      if (o.pins === 0 && o.dead) void this.closeOwned(o); // never rejects
    }
  }

  /** pinned() over several owners (the same one may appear twice). */
  private pinnedAll<T>(os: Array<Inode | Handle>, f: () => Promise<T>): Promise<T> {
    return os.reduceRight<() => Promise<T>>((g, o) => () => this.pinned(o, g), f)();
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
      this.closeFile(fd); // type unknown (a special file's fstat does not fail either)
      throw e;
    }
    const key = st.dev + '/' + st.ino;
    let n = this.byKey.get(key);
    if (n && !n.dead) {
      this.closeCounted(fd); // n's fd holds the same inode: not the last reference
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
    let fd: number;
    try {
      fd = this.counted('lookup', () => sys.openat(parent.fd, name, sys.O_PATH | sys.O_NOFOLLOW | sys.O_NONBLOCK));
    } catch (e) {
      const en = errnoOf(e);
      if (en !== E.ENFILE && en !== E.EMFILE) throw e;
      // Out of fds: an inode already held needs none (same host inode, same nodeid).
      const st = sys.statxAt(parent.fd, name);
      const known = this.byKey.get(st.dev + '/' + st.ino);
      if (!known || known.dead) throw e;
      return this.entryFor(known);
    }
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

  /**
   * MKNOD/MKDIR/SYMLINK: `make` the node, then give it its owner and mode; the
   * creation is undone if that fails. The inode's fd is counted before
   * anything is created (ENFILE leaves nothing behind).
   */
  private makeNode(ctx: RequestContext, parent: Inode, name: Buffer, wantMode: number | null, isDir: boolean, make: () => void): Entry {
    this.reserveFd('create');
    try {
      make();
    } catch (e) {
      this.giveFd();
      throw e;
    }
    let fd = -1;
    try {
      fd = sys.openat(parent.fd, name, sys.O_PATH | sys.O_NOFOLLOW | sys.O_NONBLOCK);
      this.setOwner(ctx, parent, fd, wantMode, isDir);
    } catch (e) {
      // just made, nothing written: this close and the unlink below free nothing worth a thread
      if (fd >= 0) sys.close(fd);
      this.giveFd();
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

  /** Takes ownership of the counted `fd`. */
  private newHandle(ino: bigint, fd: number, dir: boolean, writable: boolean): Handle {
    const h: Handle = { fh: this.nextFh++, ino, fd, dir, writable, pins: 0, dead: false };
    if (dir) h.cookies = new Map();
    this.handles.set(h.fh, h);
    return h;
  }

  /** RELEASE/RELEASEDIR/DESTROY: forget the handle; its fd goes by the fd rule. */
  private dropHandle(fh: bigint, ino: bigint): Promise<void> | undefined {
    const h = this.handle(fh, ino);
    if (!h) throw errno('EBADF', `unknown handle ${fh}`);
    this.handles.delete(fh);
    this.dropCookies(h);
    return this.retire(h);
  }

  /**
   * Only regular files and directories are ever opened for I/O
   * (CVE-2020-35517: a FIFO would block the open, a device node would reach
   * the host's device): a symlink answers ELOOP (never followed), anything
   * else EBADF.
   */
  private checkOpenable(n: Inode): void {
    if (n.type === sys.S_IFREG || n.type === sys.S_IFDIR) return;
    if (n.type === sys.S_IFLNK) throw errno('ELOOP', `inode ${n.id} is a symlink: not followed`);
    throw errno('EBADF', `inode ${n.id} is a special file: not opened`);
  }

  /** A fresh, counted fd for I/O on the inode (thread pool; the caller owns and closes it). */
  private reopen(n: Inode, flags: number): Promise<number> {
    return this.pinned(n, () => this.countedAsync('open', () => openProc(n.fd, flags)));
  }

  // ---- readdir cookies ------------------------------------------------------------------

  /** The cookie of a kernel d_off on this handle: the same one every time while it is live. */
  private cookieFor(h: Handle, off: bigint): number {
    const tab = h.cookies!;
    const have = tab.get(off);
    if (have !== undefined) {
      // most recently used, in both orders
      tab.delete(off);
      tab.set(off, have);
      const ref = this.cookieLru.get(have)!;
      this.cookieLru.delete(have);
      this.cookieLru.set(have, ref);
      return have;
    }
    const c = this.nextCookie++;
    tab.set(off, c);
    this.cookieLru.set(c, { h, off });
    while (tab.size > this.cookiesPerHandle) this.evictCookie(tab.values().next().value!);
    while (this.cookieLru.size > this.maxCookies) this.evictCookie(this.cookieLru.keys().next().value!);
    return c;
  }

  private evictCookie(c: number): void {
    const ref = this.cookieLru.get(c);
    if (!ref) return;
    this.cookieLru.delete(c);
    ref.h.cookies!.delete(ref.off);
  }

  /** The kernel d_off to resume from for a cookie this handle handed out (EINVAL otherwise). */
  private cookieOffset(h: Handle, cookie: number): bigint {
    if (cookie === 0) return 0n;
    const ref = this.cookieLru.get(cookie);
    if (!ref || ref.h !== h) throw errno('EINVAL', `unknown directory cookie ${cookie}`);
    this.cookieFor(h, ref.off); // touch
    return ref.off;
  }

  private dropCookies(h: Handle): void {
    if (!h.cookies) return;
    for (const c of h.cookies.values()) this.cookieLru.delete(c);
    h.cookies.clear();
  }

  // ---- FileSystem: session ------------------------------------------------------

  init(capable: bigint): bigint {
    return capable & (FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES |
      FUSE_CACHE_SYMLINKS | FUSE_AUTO_INVAL_DATA | FUSE_INIT_EXT | FUSE_ATOMIC_O_TRUNC | FUSE_DONT_MASK |
      FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO);
  }

  /** The kernel dropped every reference: forget all inodes but the root, close handles. */
  async destroy(): Promise<void> {
    for (const h of [...this.handles.values()]) void this.dropHandle(h.fh, h.ino);
    for (const n of [...this.inodes.values()]) {
      if (n.id === ROOT) continue;
      this.forget(n.id, n.refs);
    }
    await this.closesSettled();
  }

  // ---- FileSystem: lookups ------------------------------------------------------

  async lookup(_ctx: RequestContext, parent: bigint, name: Buffer): Promise<Entry> {
    const p = this.dirInode(parent);
    if (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e) {
      if (p.id === ROOT) return this.entryFor(p);
      // Only a parent the kernel already holds (hence inside the share) is answered.
      const st = sys.statxAt(p.fd, DOTDOT);
      const known = this.byKey.get(st.dev + '/' + st.ino);
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
    this.retire(n); // regular files and directories: closed off the loop (see closeOwned)
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
    this.checkOpenable(n);
    if (n.type === sys.S_IFDIR && writableFlags(flags)) throw errno('EISDIR', 'open dir for writing');
    const fd = await this.reopen(n, flags);
    if (n.dead) {
      // forgotten while opening: the kernel cannot hold a handle on it (this fd may be the last reference)
      if (writableFlags(flags)) this.closeOffLoop(fd);
      else this.closeFile(fd);
      throw errno('EBADF', `inode ${ino} forgotten during open`);
    }
    return { fh: this.newHandle(ino, fd, false, writableFlags(flags)).fh, openFlags: this.openFlags(false) };
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
    // close(dup(fd)): what a close(2) of this open file would do (lock release, NFS write-back)
    if (h.writable) {
      await this.pinned(h, () => flushBlocking(h.fd));
      return;
    }
    sys.close(sys.dup(h.fd)); // read-only: nothing to write back
  }

  async release(_ctx: RequestContext, ino: bigint, fh: bigint, _flags: number): Promise<void> {
    await this.dropHandle(fh, ino);
  }

  async fsync(_ctx: RequestContext, ino: bigint, fh: bigint, datasync: boolean): Promise<void> {
    const n = this.inode(ino);
    const h = this.handle(fh, ino);
    if (h) {
      await this.pinned(h, () => fsyncBlocking(h.fd, datasync));
      return;
    }
    // no handle: only regular files and directories are worth (and safe: no FIFO open) syncing
    if (n.type !== sys.S_IFREG && n.type !== sys.S_IFDIR) return;
    const fd = await this.reopen(n, n.type === sys.S_IFDIR ? sys.O_RDONLY | sys.O_DIRECTORY : sys.O_RDONLY);
    try {
      await fsyncBlocking(fd, datasync);
    } finally {
      this.closeFile(fd); // the inode may have been forgotten and unlinked meanwhile: maybe the last reference
    }
  }

  async fsyncdir(ctx: RequestContext, ino: bigint, fh: bigint, datasync: boolean): Promise<void> {
    return this.fsync(ctx, ino, fh, datasync);
  }

  async lseek(_ctx: RequestContext, ino: bigint, fh: bigint, offset: number, whence: number): Promise<number> {
    const h = this.needHandle(fh, ino);
    // SEEK_DATA/SEEK_HOLE walk the extent map (or ask the NFS server): off the loop
    if (whence === SEEK_DATA || whence === SEEK_HOLE) return this.pinned(h, () => lseekBlocking(h.fd, offset, whence));
    return Number(sys.lseek(h.fd, offset, whence));
  }

  async fallocate(_ctx: RequestContext, ino: bigint, fh: bigint, mode: number, offset: number, length: number): Promise<void> {
    const h = this.needHandle(fh, ino);
    await this.pinned(h, () => fallocateBlocking(h.fd, mode, offset, length));
  }

  async syncfs(_ctx: RequestContext, ino: bigint): Promise<void> {
    const n = this.inode(ino);
    this.checkOpenable(n); // (the kernel sends the root)
    const fd = await this.reopen(n, n.type === sys.S_IFDIR ? sys.O_RDONLY | sys.O_DIRECTORY : sys.O_RDONLY | sys.O_NONBLOCK);
    try {
      await syncfsBlocking(fd);
    } finally {
      this.closeFile(fd);
    }
  }

  // ---- FileSystem: directories --------------------------------------------------

  async opendir(_ctx: RequestContext, ino: bigint, _flags: number): Promise<OpenReply> {
    const n = this.dirInode(ino);
    // O_DIRECTORY: refused before any driver open if the inode is not a directory
    const fd = this.counted('opendir', () => sys.openat(sys.AT_FDCWD, Buffer.from(`/proc/self/fd/${n.fd}`), sys.O_RDONLY | sys.O_DIRECTORY | sys.O_NONBLOCK));
    return { fh: this.newHandle(ino, fd, true, false).fh, openFlags: this.openFlags(true) };
  }

  async releasedir(_ctx: RequestContext, ino: bigint, fh: bigint): Promise<void> {
    await this.dropHandle(fh, ino);
  }

  /**
   * Cookies: the kernel's d_off values can use all 64 bits (ext4 hashes),
   * more than a JS number holds, so the offsets handed out are small
   * integers (unique per instance) mapped to the kernel's d_off: the same
   * d_off always gets the same cookie while it is live (a rewind adds
   * nothing), and the table is an LRU bounded per handle and per instance
   * (an evicted cookie answers EINVAL; a sequential listing only ever
   * resumes from its newest cookies). Entries are read with lseek(d_off) +
   * getdents64, synchronously (no interleaving on a handle).
   */
  async readdir(_ctx: RequestContext, ino: bigint, fh: bigint, offset: number, plus: boolean, add: (e: DirEntry) => boolean): Promise<void> {
    const dir = this.dirInode(ino);
    const h = this.needHandle(fh, ino);
    if (!h.dir) throw errno('ENOTDIR', 'not a directory handle');
    const start = this.cookieOffset(h, offset);
    sys.lseek(h.fd, start, 0);
    for (;;) {
      const batch = sys.getdents64(h.fd);
      if (batch.length === 0) return;
      for (const d of batch) {
        const cookie = this.cookieFor(h, d.off);
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
    if (!(a.valid & FATTR_SIZE)) return this.doSetattr(n, h, a);
    // truncation frees blocks (seconds for a big fragmented file): on the blocking pool, fds pinned
    return this.pinnedAll(h ? [n, h] : [n], () => this.doSetattr(n, h, a));
  }

  private async doSetattr(n: Inode, h: Handle | undefined, a: SetattrIn): Promise<AttrReply> {
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
      if (h) await ftruncateBlocking(h.fd, a.size!);
      else if (n.type !== sys.S_IFREG) throw errno(n.type === sys.S_IFDIR ? 'EISDIR' : 'EINVAL', 'truncate of a non-regular file');
      else await truncateBlocking(`/proc/self/fd/${n.fd}`, a.size!);
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
    const base = (flags & ~(sys.O_CREAT | sys.O_EXCL | sys.O_NOCTTY | sys.O_DIRECTORY | sys.O_PATH | O_TMPFILE_BIT)) | sys.O_NOFOLLOW;
    const writable = writableFlags(flags);
    this.reserveFd('create', 2); // room for the handle's fd and the inode's (checked, one counted here)
    let fd: number;
    try {
      // O_CREAT|O_EXCL only ever opens the new regular file it creates (never a FIFO, a device, a symlink)
      fd = sys.openat(p.fd, name, base | sys.O_CREAT | sys.O_EXCL | sys.O_NONBLOCK, want);
    } catch (e) {
      this.giveFd();
      // Created on the host meanwhile: open it like open(O_CREAT) would, unless O_EXCL.
      if (errnoOf(e) !== E.EEXIST || flags & sys.O_EXCL) throw e;
      return this.openExisting(p, name, base, writable);
    }
    let entry: Entry;
    try {
      if (!(flags & sys.O_NONBLOCK)) sys.clearNonblock(fd);
      this.setOwner(ctx, p, fd, want, false);
      entry = this.adopt(this.counted('create', () => sys.openat(sys.AT_FDCWD, Buffer.from(`/proc/self/fd/${fd}`), sys.O_PATH)));
    } catch (e) {
      this.closeCounted(fd); // never written
      try { sys.unlinkat(p.fd, name, 0); } catch { /* best effort */ }
      throw e;
    }
    return { entry, open: { fh: this.newHandle(entry.ino, fd, false, writable).fh, openFlags: this.openFlags(false) } };
  }

  /**
   * CREATE of a name that exists: look at it without opening it (O_PATH, no
   * driver, no blocking), refuse anything but a regular file, then open that
   * very inode (its O_PATH fd's magic link) off the loop.
   */
  private async openExisting(p: Inode, name: Buffer, base: number, writable: boolean): Promise<{ entry: Entry; open: OpenReply }> {
    const opath = this.counted('create', () => sys.openat(p.fd, name, sys.O_PATH | sys.O_NOFOLLOW | sys.O_NONBLOCK));
    let fd: number;
    try {
      const type = sys.fstatx(opath).mode & sys.S_IFMT;
      if (type === sys.S_IFDIR) throw errno('EISDIR', 'create: an existing directory');
      if (type === sys.S_IFLNK) throw errno('ELOOP', 'create: an existing symlink is not followed');
      if (type !== sys.S_IFREG) throw errno('EBADF', 'create: an existing special file is never opened');
      fd = await this.countedAsync('create', () => openProc(opath, base));
    } catch (e) {
      this.closeFile(opath); // unlinked meanwhile, it may be the last reference
      throw e;
    }
    let entry: Entry;
    try {
      entry = this.adopt(opath); // takes opath (closed on failure)
    } catch (e) {
      if (writable) this.closeOffLoop(fd);
      else this.closeFile(fd);
      throw e;
    }
    return { entry, open: { fh: this.newHandle(entry.ino, fd, false, writable).fh, openFlags: this.openFlags(false) } };
  }

  async mknod(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, rdev: number, umask: number): Promise<Entry> {
    const p = this.dirInode(parent);
    checkName(name);
    const want = mode & ~umask & 0o7777;
    return this.makeNode(ctx, p, name, want, false, () => sys.mknodat(p.fd, name, (mode & sys.S_IFMT) | want, rdev));
  }

  async mkdir(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, umask: number): Promise<Entry> {
    const p = this.dirInode(parent);
    checkName(name);
    const want = mode & ~umask & 0o7777;
    return this.makeNode(ctx, p, name, want, true, () => sys.mkdirat(p.fd, name, want));
  }

  async symlink(ctx: RequestContext, parent: bigint, name: Buffer, target: Buffer): Promise<Entry> {
    const p = this.dirInode(parent);
    checkName(name);
    return this.makeNode(ctx, p, name, null, false, () => sys.symlinkat(target, p.fd, name));
  }

  async link(_ctx: RequestContext, ino: bigint, newParent: bigint, newName: Buffer): Promise<Entry> {
    const n = this.inode(ino);
    const p = this.dirInode(newParent);
    checkName(newName);
    if (n.type === sys.S_IFDIR) throw errno('EPERM', 'hard link to a directory');
    sys.linkFd(n.fd, p.fd, newName);
    return this.entryFor(n);
  }

  /**
   * UNLINK/RMDIR/RENAME: when the name is the last link of an inode nothing
   * else holds, the kernel frees its blocks inside the call (RENAME: of the
   * target it replaces) — seconds for a big fragmented file. Such calls run on
   * the blocking pool (parents pinned; the names are the request's private
   * copies, copied again for the worker); the ones that provably free nothing
   * (mayFree) run on the loop, which is the common case: the guest kernel
   * looks a name up before it removes it, so the inode is held.
   */
  async unlink(_ctx: RequestContext, parent: bigint, name: Buffer): Promise<void> {
    const p = this.dirInode(parent);
    checkName(name);
    if (!this.mayFree(p, name)) return sys.unlinkat(p.fd, name, 0);
    await namespaceCallOnPool(() => this.pinned(p, () => unlinkatBlocking(p.fd, name, 0)));
  }

  async rmdir(_ctx: RequestContext, parent: bigint, name: Buffer): Promise<void> {
    const p = this.dirInode(parent);
    checkName(name);
    if (!this.mayFree(p, name)) return sys.unlinkat(p.fd, name, sys.AT_REMOVEDIR);
    await namespaceCallOnPool(() => this.pinned(p, () => unlinkatBlocking(p.fd, name, sys.AT_REMOVEDIR)));
  }

  /** RENAME/RENAME2: flags (NOREPLACE, EXCHANGE, WHITEOUT) go to renameat2 unchanged. */
  async rename(_ctx: RequestContext, parent: bigint, name: Buffer, newParent: bigint, newName: Buffer, flags: number): Promise<void> {
    const p = this.dirInode(parent);
    const np = this.dirInode(newParent);
    checkName(name);
    checkName(newName);
    // EXCHANGE keeps both inodes linked; NOREPLACE never replaces a target
    if (flags & (RENAME_EXCHANGE | RENAME_NOREPLACE) || !this.mayFree(np, newName)) {
      return sys.renameat2(p.fd, name, np.fd, newName, flags);
    }
    await namespaceCallOnPool(() => this.pinnedAll([p, np], () => renameat2Blocking(p.fd, name, np.fd, newName, flags)));
  }
}
