/**
 * Vfs: many filesystems behind one FUSE session (fuse-backend-rs `api/vfs`,
 * the nydusd model; kata-contract §0 point 6, rafs-spec §8.2). A read-only
 * pseudo directory tree holds the mountpoints (`/containers`,
 * `/rafs/<id>/lowerdir`, or `/` alone); sub-filesystems are mounted and
 * unmounted at run time while the guest uses the session.
 *
 * Inode numbers: `(fs_index << 56) | ino`, fs_index 1..255 for mounted
 * filesystems, 0 for the pseudo tree (pseudo root = FUSE root id 1). Nodeid 1
 * is the root of the filesystem mounted at `/` when there is one (its ino 1
 * also encodes as 1). Every sub-filesystem sees its own root as ino 1 and its
 * own inode numbers (< 2^56); replies are re-encoded on the way out.
 *
 * Slot reuse: the VFS counts the lookups the kernel holds per slot (every
 * entry it hands out, FORGET gives them back). An unmounted slot is reused
 * only once drained, least recently freed first; entries carry a per-slot
 * generation in the top bits of `generation` so that a reused nodeid is
 * a new inode for the kernel (fuse_stale_inode). Requests on the nodeid of a
 * removed mount answer ENOENT; requests in flight when their mount went away
 * answer EIO.
 *
 * Session-wide rules (kata-contract §0 point 15): the VFS implements every
 * FileSystem method so the server never answers ENOSYS (which would turn an
 * opcode off for all mounts). A sub-filesystem lacking a mutating method gets
 * EOPNOTSUPP, a read-only one EROFS; missing open/release-style methods are
 * stateless successes.
 *
 * `destroy` is forwarded to every mounted filesystem and means "the kernel
 * dropped every reference" (session over, a new INIT may follow), not "free
 * everything"; `umount` hands the filesystem back without destroying it.
 */
import { ErrnoError, einval, enoent, eio, erofs } from '../../common/errno';
import { log, warnLimited } from '../../common/log';
import { DT_DIR, FUSE_NO_OPEN_SUPPORT } from '../fuse/abi';
import type {
  Attr, AttrReply, DirEntry, Entry, FileSystem, OpenReply, ReadPiece, RequestContext, SetattrIn, StatFs,
} from '../../common/filesystem';

export const VFS_INDEX_SHIFT = 56n;
export const VFS_INO_MASK = (1n << 56n) - 1n;
export const VFS_MAX_INDEX = 255;
const ROOT = 1n;

const err = (code: string, msg: string) => new ErrnoError(code, msg);

export interface VfsOptions {
  /** entry/attr timeout (s) of pseudo-tree entries and of mountpoint entries (default 1) */
  pseudoTimeout?: number;
  /**
   * Zero-message open (upstream's VfsOptions.no_open, which nydusd turns on
   * for RAFS daemons): when the kernel offers FUSE_NO_OPEN_SUPPORT in INIT,
   * OPEN of a file is answered ENOSYS; the kernel then opens every file of
   * the connection by itself (fh 0, FOPEN_KEEP_CACHE) and sends neither OPEN
   * nor RELEASE for files again: two requests less per file opened. It is
   * connection-wide, so mount() refuses a filesystem that does not declare
   * `statelessOpen` (one that keeps per-open state or needs open flags, such
   * as the passthrough or direct-I/O RAFS). Open counters (nr_opens) stay 0.
   */
  noOpen?: boolean;
}

/** A filesystem whose open keeps no state and whose open flags the kernel's defaults match (fh 0, FOPEN_KEEP_CACHE). */
export interface StatelessOpen {
  readonly statelessOpen?: boolean;
}

export interface VfsMountInfo {
  path: string;
  index: number;
  fs: FileSystem;
}

interface PseudoNode {
  ino: bigint;
  /** name bytes as a latin1 string (exact byte match) */
  key: string;
  name: Buffer;
  parent: PseudoNode | null;
  children: Map<string, PseudoNode>;
  mount: Mount | null;
  ctime: number;
}

interface Mount {
  index: number;
  prefix: bigint;
  /** generation bits folded into every Entry.generation from this mount */
  genBits: bigint;
  fs: FileSystem;
  path: string;
  node: PseudoNode;
  alive: boolean;
  /** mounted at '/': its ino 1 is nodeid 1 */
  isRoot: boolean;
  /** requests in flight that reached this mount (pinned until their reply is complete) */
  inflight: number;
  /** resolved when the mount is gone and `inflight` dropped to 0 */
  drainWaiters: (() => void)[];
}

interface Slot {
  mount: Mount | null;
  gen: number;
  /** lookups the kernel holds on nodeids of this slot */
  refs: number;
  freedAt: number;
}

const isDot = (n: Buffer): boolean => n[0] === 0x2e && (n.length === 1 || (n.length === 2 && n[1] === 0x2e));
const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');

function splitPath(path: string): string[] {
  if (typeof path !== 'string' || !path.startsWith('/')) throw einval(`mountpoint must be an absolute path: ${path}`);
  const parts = path.split('/').filter((p) => p.length > 0);
  for (const p of parts) if (p === '.' || p === '..') throw einval(`mountpoint must be normalized: ${path}`);
  return parts;
}

export class Vfs implements FileSystem {
  private readonly pseudoTimeout: number;
  private readonly root: PseudoNode;
  private readonly nodes = new Map<bigint, PseudoNode>();
  private nextPseudoIno = 2n;
  private readonly slots: Slot[] = [];
  private freeClock = 0;
  private rootMount: Mount | null = null;
  private capable: bigint | undefined;
  private readonly noOpen: boolean;
  /** OPEN answered ENOSYS: noOpen, and the kernel of this session supports it */
  private openless = false;

  constructor(opts: VfsOptions = {}) {
    this.pseudoTimeout = opts.pseudoTimeout ?? 1;
    this.noOpen = !!opts.noOpen;
    this.root = this.newNode(ROOT, Buffer.alloc(0), null);
    for (let i = 0; i <= VFS_MAX_INDEX; i++) this.slots.push({ mount: null, gen: 0, refs: 0, freedAt: 0 });
  }

  // ---- mount table ---------------------------------------------------------

  /**
   * Mount `fs` at `path`, creating pseudo directories as needed. Returns the
   * fs_index. EEXIST if `path` is a mountpoint already, EBUSY if it is nested
   * inside another mount or has mounts below it, ENOSPC when all 255 slots
   * are taken.
   */
  mount(path: string, fs: FileSystem): number {
    const parts = splitPath(path);
    if (this.noOpen && (fs as StatelessOpen).statelessOpen !== true) {
      throw err('EINVAL', `${path}: this daemon answers OPEN itself (zero-message open, RAFS only); a filesystem that needs OPEN (passthrough, direct I/O) cannot be mounted in it`);
    }
    // validate before creating anything
    let node: PseudoNode | undefined = this.root;
    for (const p of parts) {
      if (node.mount) throw err('EBUSY', `${path}: inside the mount at ${node.mount.path}`);
      node = node.children.get(Buffer.from(p).toString('latin1'));
      if (!node) break;
    }
    if (node) {
      if (node.mount) throw err('EEXIST', `${path} is already a mountpoint`);
      if (node.children.size > 0) throw err('EBUSY', `${path} has mounts below it`);
    }
    const index = this.allocSlot();
    if (index < 0) throw err('ENOSPC', `no free filesystem slot for ${path}`);

    let n = this.root;
    for (const p of parts) {
      const name = Buffer.from(p);
      const key = name.toString('latin1');
      let c = n.children.get(key);
      if (!c) {
        c = this.newNode(this.nextPseudoIno++, name, n);
        n.children.set(key, c);
      }
      n = c;
    }
    const slot = this.slots[index];
    slot.gen = (slot.gen + 1) >>> 0;
    const m: Mount = {
      index,
      prefix: BigInt(index) << VFS_INDEX_SHIFT,
      genBits: BigInt(slot.gen & 0xfffff) << 44n,
      fs,
      path: '/' + parts.join('/'),
      node: n,
      alive: true,
      isRoot: parts.length === 0,
      inflight: 0,
      drainWaiters: [],
    };
    slot.mount = m;
    n.mount = m;
    if (m.isRoot) this.rootMount = m;
    log.info({ path: m.path, index, gen: slot.gen }, 'vfs: mounted');
    if (this.capable !== undefined && fs.init) {
      const capable = this.capable;
      Promise.resolve()
        .then(() => fs.init!(capable))
        .catch((e: unknown) => log.warn({ path: m.path, err: (e as Error).message }, 'vfs: init of a new mount failed'));
    }
    return index;
  }

  /**
   * Unmount `path` and resolve with its filesystem once no request that
   * reached it is still in flight: only then may the caller close it (its
   * fds, its cache files). New requests get ENOENT at once; requests already
   * in flight finish (with EIO where they touch the mount again).
   */
  umountAndDrain(path: string): Promise<FileSystem> {
    const m = this.detach(path);
    if (m.inflight === 0) return Promise.resolve(m.fs);
    log.info({ path: m.path, inflight: m.inflight }, 'vfs: waiting for requests in flight before closing');
    return new Promise((resolve) => m.drainWaiters.push(() => resolve(m.fs)));
  }

  /** Requests in flight on the mount at `path` (0 when not mounted). */
  inflight(path: string): number {
    for (const s of this.slots) if (s.mount?.path === path) return s.mount.inflight;
    return 0;
  }

  /**
   * Unmount the filesystem at `path` and hand it back at once. ENOENT if
   * `path` is not a mountpoint. Requests may still be using it: close it only
   * through `umountAndDrain`.
   */
  umount(path: string): FileSystem {
    return this.detach(path).fs;
  }

  private detach(path: string): Mount {
    const parts = splitPath(path);
    let node: PseudoNode | undefined = this.root;
    for (const p of parts) {
      node = node.children.get(Buffer.from(p).toString('latin1'));
      if (!node) break;
    }
    if (!node || !node.mount) throw enoent(`${path} is not a mountpoint`);
    const m = node.mount;
    m.alive = false;
    node.mount = null;
    if (m === this.rootMount) this.rootMount = null;
    const slot = this.slots[m.index];
    slot.mount = null;
    slot.freedAt = ++this.freeClock;
    // prune pseudo directories left empty
    for (let n: PseudoNode | null = node; n && n !== this.root && n.children.size === 0 && !n.mount; ) {
      const parent: PseudoNode | null = n.parent;
      parent?.children.delete(n.key);
      this.nodes.delete(n.ino);
      n = parent;
    }
    log.info({ path: m.path, index: m.index, refs: slot.refs }, 'vfs: unmounted');
    return m;
  }

  /** Current mounts (for the daemon API and metrics). */
  mounts(): VfsMountInfo[] {
    const out: VfsMountInfo[] = [];
    for (const s of this.slots) if (s.mount) out.push({ path: s.mount.path, index: s.mount.index, fs: s.mount.fs });
    return out;
  }

  /** Lookups the kernel still holds on a slot (tests, diagnostics). */
  slotRefs(index: number): number {
    return this.slots[index]?.refs ?? 0;
  }

  private allocSlot(): number {
    let best = -1;
    let bestBusy = -1;
    for (let i = 1; i <= VFS_MAX_INDEX; i++) {
      const s = this.slots[i];
      if (s.mount) continue;
      if (s.refs === 0) {
        if (best < 0 || s.freedAt < this.slots[best].freedAt) best = i;
      } else if (bestBusy < 0 || s.refs < this.slots[bestBusy].refs) {
        bestBusy = i;
      }
    }
    if (best < 0 && bestBusy >= 0) {
      log.warn({ index: bestBusy, refs: this.slots[bestBusy].refs }, 'vfs: reusing a slot the kernel still references');
      return bestBusy;
    }
    return best;
  }

  private newNode(ino: bigint, name: Buffer, parent: PseudoNode | null): PseudoNode {
    const n: PseudoNode = {
      ino, key: name.toString('latin1'), name, parent, children: new Map(), mount: null, ctime: Math.floor(Date.now() / 1000),
    };
    this.nodes.set(ino, n);
    return n;
  }

  // ---- inode translation ---------------------------------------------------

  /** The pseudo node for `nodeid`, or null when it belongs to a mount. ENOENT for a stale pseudo ino. */
  private pseudo(nodeid: bigint): PseudoNode | null {
    if (nodeid >> VFS_INDEX_SHIFT !== 0n) return null;
    if (nodeid === ROOT && this.rootMount) return null;
    const n = this.nodes.get(nodeid);
    if (!n) throw enoent(`stale pseudo inode ${nodeid}`);
    return n;
  }

  private mountOf(nodeid: bigint): Mount {
    const idx = Number(nodeid >> VFS_INDEX_SHIFT);
    const m = idx === 0 ? this.rootMount : this.slots[idx].mount;
    if (!m) throw enoent(`inode ${nodeid} of an unmounted filesystem`);
    return m;
  }

  /**
   * The mount owning `nodeid`, pinned for the current request: it is not
   * closed (see `umountAndDrain`) until the request's reply is complete.
   */
  private use(ctx: RequestContext, nodeid: bigint): Mount {
    const m = this.mountOf(nodeid);
    this.pin(ctx, m);
    return m;
  }

  /** Count a request in flight on `m` until the FUSE server releases it (no-op without a request scope). */
  private pin(ctx: RequestContext, m: Mount): void {
    if (!ctx.hold) return;
    m.inflight++;
    let done = false;
    ctx.hold(() => {
      if (done) return;
      done = true;
      if (--m.inflight === 0 && !m.alive) for (const w of m.drainWaiters.splice(0)) w();
    });
  }

  private static inner(nodeid: bigint): bigint {
    return nodeid >> VFS_INDEX_SHIFT === 0n ? ROOT : nodeid & VFS_INO_MASK;
  }

  private enc(m: Mount, ino: bigint): bigint {
    if (ino > VFS_INO_MASK || ino < 0n) throw eio(`inode ${ino} of ${m.path} does not fit in 56 bits`);
    if (m.isRoot && ino === ROOT) return ROOT;
    return m.prefix | ino;
  }

  /** Throw EIO if the mount went away while a request was in flight. */
  private static live(m: Mount): void {
    if (!m.alive) throw eio(`${m.path} was unmounted`);
  }

  private encAttr(m: Mount, a: Attr): Attr {
    return { ...a, ino: this.enc(m, a.ino) };
  }

  /** Re-encode an entry handed to the kernel and count its lookup. */
  private encEntry(m: Mount, e: Entry): Entry {
    Vfs.live(m);
    if (e.ino === 0n) return e;
    let out: Entry;
    try {
      out = {
        ino: this.enc(m, e.ino),
        generation: BigInt.asUintN(64, e.generation + m.genBits),
        attr: this.encAttr(m, e.attr),
        attrTimeout: e.attrTimeout,
        entryTimeout: e.entryTimeout,
      };
    } catch (x) {
      m.fs.forget?.(e.ino, 1); // the kernel will never see it
      throw x;
    }
    this.slots[m.index].refs++;
    return out;
  }

  private pseudoAttr(n: PseudoNode): Attr {
    const dirs = n.children.size; // every pseudo child is a directory (or a mountpoint)
    return {
      ino: n.ino, size: 4096, blocks: 8, atime: n.ctime, mtime: n.ctime, ctime: n.ctime,
      atimeNsec: 0, mtimeNsec: 0, ctimeNsec: 0, mode: 0o040755, nlink: 2 + dirs, uid: 0, gid: 0, rdev: 0, blksize: 4096,
    };
  }

  private pseudoEntry(n: PseudoNode): Entry {
    return { ino: n.ino, generation: 0n, attr: this.pseudoAttr(n), attrTimeout: this.pseudoTimeout, entryTimeout: this.pseudoTimeout };
  }

  /** Entry for the root of a mount, as seen from its pseudo parent. */
  private async mountRootEntry(ctx: RequestContext, m: Mount, count: boolean): Promise<Entry> {
    this.pin(ctx, m);
    const r = await m.fs.getattr(ctx, ROOT);
    Vfs.live(m);
    const e: Entry = {
      ino: this.enc(m, ROOT),
      generation: m.genBits,
      attr: this.encAttr(m, r.attr),
      attrTimeout: Math.min(r.timeout, this.pseudoTimeout),
      entryTimeout: this.pseudoTimeout,
    };
    if (count) this.slots[m.index].refs++;
    return e;
  }

  private writable(m: Mount, method: keyof FileSystem): void {
    if (m.fs.readOnly) throw erofs(`${m.path} is read-only`);
    if (typeof m.fs[method] !== 'function') throw err('EOPNOTSUPP', `${m.path} does not support ${String(method)}`);
  }

  private static unsupported(m: Mount, what: string): ErrnoError {
    return err('EOPNOTSUPP', `${m.path} does not support ${what}`);
  }

  // ---- session -------------------------------------------------------------

  async init(capable: bigint): Promise<bigint> {
    this.capable = capable;
    this.openless = this.noOpen && (capable & FUSE_NO_OPEN_SUPPORT) !== 0n;
    for (const s of this.slots) {
      const m = s.mount;
      if (!m?.fs.init) continue;
      try {
        await m.fs.init(capable);
      } catch (e) {
        log.warn({ path: m.path, err: (e as Error).message }, 'vfs: init failed');
      }
    }
    return capable;
  }

  async destroy(): Promise<void> {
    this.capable = undefined;
    for (const s of this.slots) {
      s.refs = 0; // the kernel dropped every inode without FORGET
      const m = s.mount;
      if (!m?.fs.destroy) continue;
      try {
        await m.fs.destroy();
      } catch (e) {
        log.warn({ path: m.path, err: (e as Error).message }, 'vfs: destroy failed');
      }
    }
  }

  // ---- namespace -----------------------------------------------------------

  async lookup(ctx: RequestContext, parent: bigint, name: Buffer): Promise<Entry> {
    const p = this.pseudo(parent);
    if (p) {
      if (isDot(name)) return this.pseudoEntry(name.length === 1 ? p : p.parent ?? p);
      const c = p.children.get(name.toString('latin1'));
      if (!c) throw enoent('no such pseudo entry');
      return c.mount ? this.mountRootEntry(ctx, c.mount, true) : this.pseudoEntry(c);
    }
    const m = this.use(ctx, parent);
    return this.encEntry(m, await m.fs.lookup(ctx, Vfs.inner(parent), name));
  }

  forget(nodeid: bigint, nlookup: number): void {
    const idx = Number(nodeid >> VFS_INDEX_SHIFT);
    if (idx === 0 && !(nodeid === ROOT && this.rootMount)) return; // pseudo inodes are not counted
    const slot = this.slots[idx === 0 ? this.rootMount!.index : idx];
    slot.refs = Math.max(0, slot.refs - nlookup);
    const m = slot.mount;
    const ino = Vfs.inner(nodeid);
    // Mount roots are looked up by the VFS (getattr), not through the sub-fs: not its lookups.
    if (!m || ino === ROOT) return;
    m.fs.forget?.(ino, nlookup);
  }

  async getattr(ctx: RequestContext, nodeid: bigint, fh?: bigint): Promise<AttrReply> {
    const p = this.pseudo(nodeid);
    if (p) return { attr: this.pseudoAttr(p), timeout: this.pseudoTimeout };
    const m = this.use(ctx, nodeid);
    const r = await m.fs.getattr(ctx, Vfs.inner(nodeid), fh);
    Vfs.live(m);
    return { attr: this.encAttr(m, r.attr), timeout: r.timeout };
  }

  async readlink(ctx: RequestContext, nodeid: bigint): Promise<Buffer> {
    if (this.pseudo(nodeid)) throw einval('not a symlink');
    const m = this.use(ctx, nodeid);
    if (!m.fs.readlink) throw Vfs.unsupported(m, 'readlink');
    const t = await m.fs.readlink(ctx, Vfs.inner(nodeid));
    Vfs.live(m);
    return t;
  }

  // ---- files ---------------------------------------------------------------

  async open(ctx: RequestContext, nodeid: bigint, flags: number): Promise<OpenReply> {
    // the kernel opens files by itself from now on (KEEP_CACHE, fh 0): no OPEN or RELEASE again
    if (this.openless) throw err('ENOSYS', 'zero-message open');
    if (this.pseudo(nodeid)) throw err('EISDIR', 'pseudo directory');
    const m = this.use(ctx, nodeid);
    if (!m.fs.open) return { fh: 0n, openFlags: 0 };
    const o = await m.fs.open(ctx, Vfs.inner(nodeid), flags);
    Vfs.live(m);
    return o;
  }

  readSync(ctx: RequestContext, nodeid: bigint, fh: bigint, offset: number, size: number): ReadPiece[] | undefined {
    if (this.pseudo(nodeid)) throw err('EISDIR', 'pseudo directory');
    const m = this.mountOf(nodeid);
    if (!m.fs.readSync) return undefined;
    const r = m.fs.readSync(ctx, Vfs.inner(nodeid), fh, offset, size);
    if (r === undefined) return undefined; // `read` follows (and pins)
    // pinned only when answering: all synchronous, nothing can unmount in between
    Vfs.live(m);
    this.pin(ctx, m);
    return r;
  }

  async read(ctx: RequestContext, nodeid: bigint, fh: bigint, offset: number, size: number): Promise<ReadPiece[]> {
    if (this.pseudo(nodeid)) throw err('EISDIR', 'pseudo directory');
    const m = this.use(ctx, nodeid);
    if (!m.fs.read) throw Vfs.unsupported(m, 'read');
    const r = await m.fs.read(ctx, Vfs.inner(nodeid), fh, offset, size);
    Vfs.live(m);
    return r;
  }

  async release(ctx: RequestContext, nodeid: bigint, fh: bigint, flags: number): Promise<void> {
    if (this.pseudo(nodeid)) return;
    const m = this.use(ctx, nodeid);
    await m.fs.release?.(ctx, Vfs.inner(nodeid), fh, flags);
  }

  async flush(ctx: RequestContext, nodeid: bigint, fh: bigint): Promise<void> {
    if (this.pseudo(nodeid)) return;
    const m = this.use(ctx, nodeid);
    await m.fs.flush?.(ctx, Vfs.inner(nodeid), fh);
  }

  async fsync(ctx: RequestContext, nodeid: bigint, fh: bigint, datasync: boolean): Promise<void> {
    if (this.pseudo(nodeid)) return;
    const m = this.use(ctx, nodeid);
    await m.fs.fsync?.(ctx, Vfs.inner(nodeid), fh, datasync);
  }

  async lseek(ctx: RequestContext, nodeid: bigint, fh: bigint, offset: number, whence: number): Promise<number> {
    if (this.pseudo(nodeid)) throw einval('lseek on a pseudo directory');
    const m = this.use(ctx, nodeid);
    const ino = Vfs.inner(nodeid);
    if (m.fs.lseek) {
      const r = await m.fs.lseek(ctx, ino, fh, offset, whence);
      Vfs.live(m);
      return r;
    }
    // Only SEEK_DATA (3) / SEEK_HOLE (4) reach the daemon: emulate a file without holes.
    if (whence !== 3 && whence !== 4) throw einval(`lseek whence ${whence}`);
    const { attr } = await m.fs.getattr(ctx, ino, fh);
    Vfs.live(m);
    if (offset >= attr.size) throw err('ENXIO', 'offset beyond end of file');
    return whence === 3 ? offset : attr.size;
  }

  // ---- directories ---------------------------------------------------------

  async opendir(ctx: RequestContext, nodeid: bigint, flags: number): Promise<OpenReply> {
    if (this.pseudo(nodeid)) return { fh: 0n, openFlags: 0 };
    const m = this.use(ctx, nodeid);
    if (!m.fs.opendir) return { fh: 0n, openFlags: 0 };
    const o = await m.fs.opendir(ctx, Vfs.inner(nodeid), flags);
    Vfs.live(m);
    return o;
  }

  async readdir(
    ctx: RequestContext, nodeid: bigint, fh: bigint, offset: number, plus: boolean, add: (e: DirEntry) => boolean,
  ): Promise<void> {
    const p = this.pseudo(nodeid);
    if (p) return this.pseudoReaddir(ctx, p, offset, plus, add);
    const m = this.use(ctx, nodeid);
    const fs = m.fs;
    if (!fs.readdir) throw Vfs.unsupported(m, 'readdir');
    const slot = this.slots[m.index];
    // One scratch entry per call: `add` consumes it synchronously.
    const attr = {} as Attr;
    const entry: Entry = { ino: 0n, generation: 0n, attr, attrTimeout: 0, entryTimeout: 0 };
    const de: DirEntry = { ino: 0n, offset: 0, type: 0, name: DOT };
    await fs.readdir(ctx, Vfs.inner(nodeid), fh, offset, plus, (e: DirEntry): boolean => {
      if (!m.alive) return false;
      if (e.ino > VFS_INO_MASK || (e.entry && e.entry.ino > VFS_INO_MASK)) {
        warnLimited('vfs.ino', { path: m.path, ino: String(e.ino) }, 'vfs: directory entry inode does not fit in 56 bits, skipped');
        if (plus && e.entry && e.entry.ino !== 0n && !isDot(e.name)) fs.forget?.(e.entry.ino, 1);
        return true;
      }
      de.ino = e.ino === 0n ? 0n : this.enc(m, e.ino);
      de.offset = e.offset;
      de.type = e.type;
      de.name = e.name;
      const src = plus ? e.entry : undefined;
      if (src && src.ino !== 0n) {
        Object.assign(attr, src.attr);
        attr.ino = this.enc(m, src.attr.ino);
        entry.ino = this.enc(m, src.ino);
        entry.generation = BigInt.asUintN(64, src.generation + m.genBits);
        entry.attrTimeout = src.attrTimeout;
        entry.entryTimeout = src.entryTimeout;
        de.entry = entry;
      } else {
        de.entry = undefined;
      }
      // count before `add`: the server may give an unusable entry back (forget) from inside it
      const counted = src !== undefined && src.ino !== 0n && !isDot(e.name);
      if (counted) slot.refs++;
      const ok = add(de);
      if (!ok && counted) slot.refs--;
      return ok;
    });
    Vfs.live(m);
  }

  private async pseudoReaddir(ctx: RequestContext, p: PseudoNode, offset: number, plus: boolean, add: (e: DirEntry) => boolean): Promise<void> {
    // cookies: 1 = ".", 2 = "..", 2 + ino = a child (pseudo inos grow monotonically and
    // Map order is insertion order, so a listing resumes correctly across mounts/umounts)
    if (offset < 1 && !add({ ino: p.ino, offset: 1, type: DT_DIR, name: DOT })) return;
    if (offset < 2 && !add({ ino: (p.parent ?? p).ino, offset: 2, type: DT_DIR, name: DOTDOT })) return;
    const children = [...p.children.values()];
    for (const c of children) {
      const cookie = 2 + Number(c.ino);
      if (cookie <= offset) continue;
      const m = c.mount;
      if (!m) {
        if (!add({ ino: c.ino, offset: cookie, type: DT_DIR, name: c.name, entry: plus ? this.pseudoEntry(c) : undefined })) return;
        continue;
      }
      if (!m.alive) continue;
      let entry: Entry | undefined;
      if (plus) {
        try {
          entry = await this.mountRootEntry(ctx, m, false);
        } catch (e) {
          log.debug({ path: m.path, err: (e as Error).message }, 'vfs: mount root getattr failed in readdirplus');
        }
      }
      if (entry) this.slots[m.index].refs++;
      if (!add({ ino: this.enc(m, ROOT), offset: cookie, type: DT_DIR, name: c.name, entry })) {
        if (entry) this.slots[m.index].refs--;
        return;
      }
    }
  }

  async releasedir(ctx: RequestContext, nodeid: bigint, fh: bigint): Promise<void> {
    if (this.pseudo(nodeid)) return;
    const m = this.use(ctx, nodeid);
    await m.fs.releasedir?.(ctx, Vfs.inner(nodeid), fh);
  }

  async fsyncdir(ctx: RequestContext, nodeid: bigint, fh: bigint, datasync: boolean): Promise<void> {
    if (this.pseudo(nodeid)) return;
    const m = this.use(ctx, nodeid);
    await m.fs.fsyncdir?.(ctx, Vfs.inner(nodeid), fh, datasync);
  }

  // ---- misc ----------------------------------------------------------------

  async statfs(ctx: RequestContext, nodeid: bigint): Promise<StatFs> {
    if (this.pseudo(nodeid)) return { blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, bsize: 4096, namelen: 255, frsize: 4096 };
    const m = this.use(ctx, nodeid);
    if (!m.fs.statfs) return { blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, bsize: 4096, namelen: 255, frsize: 4096 };
    const s = await m.fs.statfs(ctx, Vfs.inner(nodeid));
    Vfs.live(m);
    return s;
  }

  async getxattr(ctx: RequestContext, nodeid: bigint, name: Buffer): Promise<Buffer> {
    if (this.pseudo(nodeid)) throw err('ENODATA', 'no xattrs on pseudo directories');
    const m = this.use(ctx, nodeid);
    if (!m.fs.getxattr) throw Vfs.unsupported(m, 'xattrs');
    const v = await m.fs.getxattr(ctx, Vfs.inner(nodeid), name);
    Vfs.live(m);
    return v;
  }

  async listxattr(ctx: RequestContext, nodeid: bigint): Promise<Buffer[]> {
    if (this.pseudo(nodeid)) return [];
    const m = this.use(ctx, nodeid);
    if (!m.fs.listxattr) throw Vfs.unsupported(m, 'xattrs');
    const v = await m.fs.listxattr(ctx, Vfs.inner(nodeid));
    Vfs.live(m);
    return v;
  }

  async access(ctx: RequestContext, nodeid: bigint, mask: number): Promise<void> {
    if (this.pseudo(nodeid)) return;
    const m = this.use(ctx, nodeid);
    await m.fs.access?.(ctx, Vfs.inner(nodeid), mask);
  }

  async syncfs(ctx: RequestContext, nodeid: bigint): Promise<void> {
    if (this.pseudo(nodeid)) {
      for (const s of this.slots) {
        const m = s.mount;
        if (!m?.fs.syncfs) continue;
        this.pin(ctx, m);
        await m.fs.syncfs(ctx, ROOT);
      }
      return;
    }
    const m = this.use(ctx, nodeid);
    await m.fs.syncfs?.(ctx, Vfs.inner(nodeid));
  }

  // ---- mutating ------------------------------------------------------------

  /** The mount owning `nodeid` for a mutation (pinned); EROFS for the pseudo tree. */
  private target(ctx: RequestContext, nodeid: bigint, method: keyof FileSystem): Mount {
    if (this.pseudo(nodeid)) throw erofs('pseudo directory');
    const m = this.use(ctx, nodeid);
    this.writable(m, method);
    return m;
  }

  async setattr(ctx: RequestContext, nodeid: bigint, a: SetattrIn): Promise<AttrReply> {
    const m = this.target(ctx, nodeid, 'setattr');
    const r = await m.fs.setattr!(ctx, Vfs.inner(nodeid), a);
    Vfs.live(m);
    return { attr: this.encAttr(m, r.attr), timeout: r.timeout };
  }

  async mknod(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, rdev: number, umask: number): Promise<Entry> {
    const m = this.target(ctx, parent, 'mknod');
    return this.encEntry(m, await m.fs.mknod!(ctx, Vfs.inner(parent), name, mode, rdev, umask));
  }

  async mkdir(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, umask: number): Promise<Entry> {
    const m = this.target(ctx, parent, 'mkdir');
    return this.encEntry(m, await m.fs.mkdir!(ctx, Vfs.inner(parent), name, mode, umask));
  }

  async unlink(ctx: RequestContext, parent: bigint, name: Buffer): Promise<void> {
    const m = this.target(ctx, parent, 'unlink');
    await m.fs.unlink!(ctx, Vfs.inner(parent), name);
    Vfs.live(m);
  }

  async rmdir(ctx: RequestContext, parent: bigint, name: Buffer): Promise<void> {
    const m = this.target(ctx, parent, 'rmdir');
    await m.fs.rmdir!(ctx, Vfs.inner(parent), name);
    Vfs.live(m);
  }

  async symlink(ctx: RequestContext, parent: bigint, name: Buffer, target: Buffer): Promise<Entry> {
    const m = this.target(ctx, parent, 'symlink');
    return this.encEntry(m, await m.fs.symlink!(ctx, Vfs.inner(parent), name, target));
  }

  async rename(ctx: RequestContext, parent: bigint, name: Buffer, newParent: bigint, newName: Buffer, flags: number): Promise<void> {
    const m = this.target(ctx, parent, 'rename');
    if (this.pseudo(newParent)) throw err('EXDEV', 'rename into the pseudo tree');
    if (this.mountOf(newParent) !== m) throw err('EXDEV', 'rename across filesystems');
    await m.fs.rename!(ctx, Vfs.inner(parent), name, Vfs.inner(newParent), newName, flags);
    Vfs.live(m);
  }

  async link(ctx: RequestContext, nodeid: bigint, newParent: bigint, newName: Buffer): Promise<Entry> {
    const m = this.target(ctx, newParent, 'link');
    if (this.pseudo(nodeid)) throw err('EXDEV', 'link of a pseudo directory');
    if (this.mountOf(nodeid) !== m) throw err('EXDEV', 'link across filesystems');
    return this.encEntry(m, await m.fs.link!(ctx, Vfs.inner(nodeid), Vfs.inner(newParent), newName));
  }

  async create(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, flags: number, umask: number): Promise<{ entry: Entry; open: OpenReply }> {
    const m = this.target(ctx, parent, 'create');
    const r = await m.fs.create!(ctx, Vfs.inner(parent), name, mode, flags, umask);
    return { entry: this.encEntry(m, r.entry), open: r.open };
  }

  async write(ctx: RequestContext, nodeid: bigint, fh: bigint, offset: number, data: Buffer, flags: number): Promise<number> {
    const m = this.target(ctx, nodeid, 'write');
    const n = await m.fs.write!(ctx, Vfs.inner(nodeid), fh, offset, data, flags);
    Vfs.live(m);
    return n;
  }

  async setxattr(ctx: RequestContext, nodeid: bigint, name: Buffer, value: Buffer, flags: number): Promise<void> {
    const m = this.target(ctx, nodeid, 'setxattr');
    await m.fs.setxattr!(ctx, Vfs.inner(nodeid), name, value, flags);
    Vfs.live(m);
  }

  async removexattr(ctx: RequestContext, nodeid: bigint, name: Buffer): Promise<void> {
    const m = this.target(ctx, nodeid, 'removexattr');
    await m.fs.removexattr!(ctx, Vfs.inner(nodeid), name);
    Vfs.live(m);
  }

  async fallocate(ctx: RequestContext, nodeid: bigint, fh: bigint, mode: number, offset: number, length: number): Promise<void> {
    const m = this.target(ctx, nodeid, 'fallocate');
    await m.fs.fallocate!(ctx, Vfs.inner(nodeid), fh, mode, offset, length);
    Vfs.live(m);
  }
}
