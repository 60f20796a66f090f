/**
 * Transport-agnostic FUSE server (fuse-backend-rs `Server::handle_message`
 * model, kata-contract §8): decode the in-header and arguments once, dispatch
 * to the FileSystem, encode the reply. It sees only a Reader over the request
 * and a Writer over the reply room, so /dev/fuse (one buffer per request) and
 * virtio-fs (descriptor chains) share it.
 *
 * Conventions enforced here (kata-contract §8.3, point 15):
 *  - errors are a bare 16-byte fuse_out_header with error = -errno;
 *  - FORGET, BATCH_FORGET and INTERRUPT never get a reply (return 0);
 *  - nothing but INIT is served before INIT (EIO; no-reply ops are dropped);
 *  - mutating opcodes answer EROFS on a read-only filesystem, ENOSYS only
 *    when the filesystem lacks the method; unknown opcodes answer ENOSYS;
 *  - no exception escapes handleMessage: a malformed request is answered
 *    EINVAL, an unreadable header is logged and dropped (return 0).
 *
 * Hostile peers (a guest owns the virtio-fs request memory and may rewrite it
 * while we work):
 *  - the in-header and the body are read once, as private copies
 *    (Reader.readBytes); names are validated and used as those very bytes.
 *    Only WRITE's payload stays a view of peer memory (Reader.readShared);
 *  - `in_header.len` above max_write + 4096 is refused with ENOMEM before
 *    the body is touched (fuse-backend-rs's rule); READ and READDIR sizes are
 *    clamped to the negotiated maximum, whatever room the reply offers;
 *  - a failure after part of a reply was written resets the writer and
 *    answers a bare error header: never half a success;
 *  - resources a filesystem pins for a request (RequestContext.hold) are
 *    released only after the reply is complete, so an fd or a mount the
 *    reply still reads from cannot be closed under it;
 *  - warnings a peer can trigger are rate limited (common/log).
 *
 * Per-request failures are logged at debug (they are the client's business);
 * errors that carry no errno (bugs) at warn.
 */
import { constants } from 'node:os';
import { ErrnoError, WouldBlock, einval, enosys, erofs, errnoOf } from '../../common/errno';
import { log, logLimited, warnLimited } from '../../common/log';
import {
  FATTR_ATIME, FATTR_FH, FATTR_GID, FATTR_MODE, FATTR_MTIME, FATTR_SIZE, FATTR_UID,
  FUSE_ASYNC_DIO, FUSE_ASYNC_READ, FUSE_AUTO_INVAL_DATA, FUSE_BIG_WRITES, FUSE_CACHE_SYMLINKS,
  FUSE_DO_READDIRPLUS, FUSE_FSYNC_FDATASYNC, FUSE_GETATTR_FH, FUSE_INIT_EXT,
  FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, FUSE_MAX_PAGES, FUSE_MIN_KERNEL_MINOR_VERSION,
  FUSE_NAME_MAX, FUSE_PARALLEL_DIROPS, FUSE_READDIRPLUS_AUTO, FUSE_SETXATTR_EXT,
  FuseAccessIn, FuseAttrOut, FuseBatchForgetIn, FuseCreateIn, FuseEntryOut, FuseFallocateIn, FuseFlushIn,
  FuseForgetIn, FuseForgetOne, FuseFsyncIn, FuseGetattrIn, FuseGetxattrIn, FuseInHeader,
  FuseInitIn, FuseInitOut, FuseKstatfs, FuseLinkIn, FuseLseekIn, FuseMkdirIn, FuseMknodIn,
  FuseOpcode, FuseOpenIn, FuseOpenOut, FuseReadIn, FuseReleaseIn, FuseRename2In,
  FuseRenameIn, FuseSetattrIn, FuseSetxattrIn, FuseSetxattrInExt, FuseWriteIn, type FuseInHeaderT,
  direntplusSize, direntSize, encodeDirent, encodeZeroEntryOut, writeU64,
} from './abi';
import type { AttrReply, DirEntry, Entry, FileSystem, OpenReply, ReadPiece, RequestContext, SetattrIn, StatFs } from '../../common/filesystem';
import { type Reader, type Writer, readSlice, readSliceOffLoop } from './transport';

const E = constants.errno;
const OUT_HDR = 16;
const IN_HDR = 40;
const PAGE = 4096;
/** Room for the in-header and the arguments beyond max_write (fuse-backend-rs BUFFER_HEADER_SIZE). */
export const BUFFER_HEADER_SIZE = 0x1000;

export interface FuseServerOptions {
  /** max_write in bytes (default 1 MiB, at least 4096) */
  maxWrite?: number;
  /** max_pages sent with FUSE_MAX_PAGES (default ceil(maxWrite / 4096)); the kernel caps it */
  maxPages?: number;
  /** cap on the kernel's max_readahead (default: whatever the kernel offers) */
  maxReadahead?: number;
  /** max_background / congestion_threshold (defaults 64 / 48; 0 keeps the kernel's default) */
  maxBackground?: number;
  congestionThreshold?: number;
  /**
   * READDIRPLUS (default false). `true`: DO_READDIRPLUS + READDIRPLUS_AUTO,
   * the kernel asks for entries with their attributes only for the first
   * READDIR of a listing (or after lookups in the directory). `'always'`:
   * DO_READDIRPLUS alone, every READDIR of a listing is a READDIRPLUS, for
   * filesystems whose entries cost nothing more to produce (RAFS: the
   * attributes are in the bootstrap and never change): a walk that then
   * opens or stats the files sends no LOOKUP for them.
   */
  readdirplus?: boolean | 'always';
  /** WRITEBACK_CACHE is never negotiated (kata-contract §8.2) */
  writeback?: false;
  /**
   * Opt-in INIT flags beyond the default set, for filesystems that implement
   * their semantics (e.g. FUSE_ATOMIC_O_TRUNC, FUSE_HANDLE_KILLPRIV_V2,
   * FUSE_SETXATTR_EXT, FUSE_DONT_MASK). Still intersected with what the
   * kernel offers and what `fs.init` returns.
   */
  extraFlags?: bigint;
}

/** The flags this server asks for by default (kata-contract §8.2 table). */
export const DEFAULT_WANTED_FLAGS =
  FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES |
  FUSE_CACHE_SYMLINKS | FUSE_AUTO_INVAL_DATA | FUSE_INIT_EXT;

/** Flags handled by the server itself; `fs.init` cannot veto them. */
const PROTOCOL_FLAGS = FUSE_MAX_PAGES | FUSE_INIT_EXT;

/** Opcodes that never get a reply. */
function isNoReply(op: number): boolean {
  return op === FuseOpcode.FORGET || op === FuseOpcode.BATCH_FORGET || op === FuseOpcode.INTERRUPT;
}

const isDot = (n: Buffer): boolean => n[0] === 0x2e && (n.length === 1 || (n.length === 2 && n[1] === 0x2e));

/** NUL-terminated string at `off` → [name view, offset after the NUL]. */
function cstr(body: Buffer, off: number, what: string): [Buffer, number] {
  const end = body.indexOf(0, off);
  if (end < 0) throw einval(`${what}: missing NUL terminator`);
  return [body.subarray(off, end), end + 1];
}

const EMPTY: Buffer = Buffer.alloc(0);

/** fuse_out_header at offset 0, without building an object (hot path). */
function outHeader(b: Buffer, len: number, error: number, unique: bigint): void {
  b.writeUInt32LE(len, 0);
  b.writeInt32LE(error, 4);
  b.writeBigUInt64LE(unique, 8);
}

export class FuseServer {
  private readonly wanted: bigint;
  private readonly maxWrite: number;
  private readonly maxPages: number;
  /** largest READ / READDIR reply payload served (max_write, or max_pages pages when larger) */
  private readonly maxRead: number;
  private _initialized = false;
  private _destroyed = false;
  private _minor = 0;
  private _flags = 0n;
  private setxattrExt = false;

  constructor(private readonly fs: FileSystem, private readonly opts: FuseServerOptions = {}) {
    let wanted = DEFAULT_WANTED_FLAGS | (opts.extraFlags ?? 0n);
    if (opts.readdirplus) wanted |= FUSE_DO_READDIRPLUS | (opts.readdirplus === 'always' ? 0n : FUSE_READDIRPLUS_AUTO);
    this.wanted = wanted & ~(1n << 16n); // never WRITEBACK_CACHE
    this.maxWrite = Math.max(PAGE, Math.floor(opts.maxWrite ?? 1 << 20));
    this.maxPages = Math.min(0xffff, Math.max(1, Math.floor(opts.maxPages ?? Math.ceil(this.maxWrite / PAGE))));
    this.maxRead = Math.max(this.maxWrite, this.maxPages * PAGE);
  }

  /** Largest in_header.len accepted (larger requests answer ENOMEM). */
  get maxRequestLen(): number {
    return this.maxWrite + BUFFER_HEADER_SIZE;
  }

  /** INIT done and no DESTROY since. */
  get initialized(): boolean {
    return this._initialized;
  }

  /** DESTROY received (a later INIT starts a new session). */
  get destroyed(): boolean {
    return this._destroyed;
  }

  /** Negotiated protocol minor (0 before INIT). */
  get minor(): number {
    return this._minor;
  }

  /** Negotiated INIT flags (flags | flags2 << 32), 0n before INIT. */
  get flags(): bigint {
    return this._flags;
  }

  /**
   * Serve one request. Returns the number of bytes written to `w` (the reply
   * length), 0 when no reply must be sent. Never throws.
   */
  async handleMessage(r: Reader, w: Writer): Promise<number> {
    return this.handle(r, w);
  }

  /**
   * `handleMessage` without the promise when none is needed: a READ the
   * filesystem serves at once (`FileSystem.readSync`: data already cached and
   * verified) is answered before this returns, and the number comes back
   * directly; anything else returns a promise. Never throws, never rejects.
   * Same validation, reply and hold rules either way.
   */
  handle(r: Reader, w: Writer): number | Promise<number> {
    let hdr: FuseInHeaderT;
    try {
      hdr = FuseInHeader.decode(r.readBytes(IN_HDR));
    } catch (e) {
      warnLimited('fuse.header', { err: (e as Error).message }, 'fuse: dropping request with an unreadable header');
      return 0;
    }
    let holds: (() => void)[] | undefined; // (most requests take none)
    let ended = false;
    // a hold taken after the reply (a filesystem's late continuation) is released at once: never leaked
    const hold = (release: () => void): void => {
      if (ended) release();
      else (holds ??= []).push(release);
    };
    const end = (): void => {
      ended = true;
      if (holds === undefined) return;
      for (const release of holds) {
        try {
          release();
        } catch (e) {
          warnLimited('fuse.release', { err: (e as Error).message }, 'fuse: releasing a request hold failed');
        }
      }
    };
    let res: number | Promise<number>;
    try {
      res = this.dispatch(hdr, r, w, hold);
    } catch (e) {
      res = this.failed(hdr, w, e);
    }
    if (typeof res === 'number') {
      end();
      return res;
    }
    return res.then((n) => n, (e: unknown) => this.failed(hdr, w, e)).finally(end);
  }

  /** The answer to a request whose handling threw: an error reply (none for no-reply ops). */
  private failed(hdr: FuseInHeaderT, w: Writer, e: unknown): number {
    const errno = errnoOf(e);
    if (e instanceof ErrnoError || (e as { code?: unknown })?.code !== undefined) {
      if (log.isLevelEnabled('debug')) log.debug({ op: FuseOpcode[hdr.opcode] ?? hdr.opcode, unique: String(hdr.unique), nodeid: String(hdr.nodeid), errno }, 'fuse: request failed');
    } else {
      warnLimited('fuse.unexpected', { op: FuseOpcode[hdr.opcode] ?? hdr.opcode, unique: String(hdr.unique), err: e instanceof Error ? e.stack : String(e) }, 'fuse: unexpected error');
    }
    if (isNoReply(hdr.opcode)) return 0;
    try {
      // whatever part of a reply went out is void: the answer is the error alone
      w.reset();
      return this.replyError(w, hdr.unique, errno);
    } catch (e2) {
      warnLimited('fuse.reply', { err: (e2 as Error).message }, 'fuse: writing an error reply failed');
      return 0;
    }
  }

  // ---- reply helpers -----------------------------------------------------------

  private replyError(w: Writer, unique: bigint, errno: number): number {
    if (w.available() < OUT_HDR) {
      warnLimited('fuse.noroom', { unique: String(unique), errno }, 'fuse: no room for an error reply');
      return 0;
    }
    const b = Buffer.allocUnsafe(OUT_HDR);
    outHeader(b, OUT_HDR, -errno, unique);
    w.write(b);
    return OUT_HDR;
  }

  /** A reply buffer with room for the out-header followed by `n` payload bytes. */
  private static alloc(n: number): Buffer {
    return Buffer.allocUnsafe(OUT_HDR + n);
  }

  /**
   * Fill in the header of a buffer from alloc() and write it; ERANGE if it
   * doesn't fit, after `giveBack` returns what the reply would have handed
   * the kernel (a lookup, a handle): what it never sees must not pile up.
   */
  private send(w: Writer, unique: bigint, b: Buffer, giveBack?: () => void): number {
    if (b.length > w.available()) {
      giveBack?.();
      return this.replyError(w, unique, E.ERANGE);
    }
    outHeader(b, b.length, 0, unique);
    w.write(b);
    return b.length;
  }

  private replyEmpty(w: Writer, unique: bigint): number {
    return this.send(w, unique, FuseServer.alloc(0));
  }

  /**
   * Entry replies (LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE). When the
   * reply does not fit, the kernel never learns of the entry (or CREATE's
   * handle): the lookup is given back and the handle released, so a peer
   * cannot pile up inodes and fds by offering too little reply room.
   */
  private replyEntry(ctx: RequestContext, w: Writer, e: Entry, open?: OpenReply): number {
    const b = FuseServer.alloc(FuseEntryOut.SIZE + (open ? FuseOpenOut.SIZE : 0));
    FuseEntryOut.encode(e, b, OUT_HDR);
    if (open) FuseOpenOut.encode({ fh: open.fh, openFlags: open.openFlags, backingId: 0 }, b, OUT_HDR + FuseEntryOut.SIZE);
    return this.send(w, ctx.unique, b, () => {
      if (open) this.releaseQuietly(ctx, e.ino, open.fh, false);
      if (e.ino !== 0n) this.forgetQuietly(e.ino, 1);
    });
  }

  private replyAttr(w: Writer, unique: bigint, a: AttrReply): number {
    const b = FuseServer.alloc(FuseAttrOut.SIZE);
    FuseAttrOut.encode({ attr: a.attr, timeout: a.timeout }, b, OUT_HDR);
    return this.send(w, unique, b);
  }

  /** OPEN / OPENDIR replies; a handle the kernel will never see (no room) is released at once. */
  private replyOpen(ctx: RequestContext, w: Writer, ino: bigint, o: OpenReply, dir: boolean): number {
    const b = FuseServer.alloc(FuseOpenOut.SIZE);
    FuseOpenOut.encode({ fh: o.fh, openFlags: o.openFlags, backingId: 0 }, b, OUT_HDR);
    return this.send(w, ctx.unique, b, () => this.releaseQuietly(ctx, ino, o.fh, dir));
  }

  /** Give back a handle the kernel never received (errors are only logged). */
  private releaseQuietly(ctx: RequestContext, ino: bigint, fh: bigint, dir: boolean): void {
    // called within the request (not deferred), so what the release pins is held by this request
    const fs = this.fs;
    const fail = (e: unknown) => log.debug({ err: (e as Error)?.message }, 'fuse: releasing an undelivered handle failed');
    try {
      const r = dir ? fs.releasedir?.(ctx, ino, fh) : fs.release?.(ctx, ino, fh, 0);
      if (r) Promise.resolve(r).catch(fail);
    } catch (e) {
      fail(e);
    }
  }

  private replyU32Size(w: Writer, unique: bigint, size: number): number {
    const b = FuseServer.alloc(8);
    b.writeUInt32LE(size >>> 0, OUT_HDR);
    b.writeUInt32LE(0, OUT_HDR + 4);
    return this.send(w, unique, b);
  }

  /** The getxattr/listxattr size protocol over a finished value. */
  private replyXattr(w: Writer, unique: bigint, size: number, value: Buffer | Buffer[], total: number): number {
    if (size === 0) return this.replyU32Size(w, unique, total);
    if (total > size || OUT_HDR + total > w.available()) return this.replyError(w, unique, E.ERANGE);
    const b = FuseServer.alloc(total);
    if (Array.isArray(value)) {
      let p = OUT_HDR;
      for (const n of value) {
        n.copy(b, p);
        p += n.length;
        b[p++] = 0;
      }
    } else {
      value.copy(b, OUT_HDR);
    }
    return this.send(w, unique, b);
  }

  private forgetQuietly(ino: bigint, n: number): void {
    try {
      this.fs.forget?.(ino, n);
    } catch (e) {
      log.debug({ err: (e as Error).message }, 'fuse: forget failed');
    }
  }

  private mutating(name: keyof FileSystem): void {
    if (this.fs.readOnly) throw erofs('read-only filesystem');
    if (typeof this.fs[name] !== 'function') throw enosys(`${String(name)} not implemented`);
  }

  private has(name: keyof FileSystem): void {
    if (typeof this.fs[name] !== 'function') throw enosys(`${String(name)} not implemented`);
  }

  // ---- dispatch --------------------------------------------------------------

  /** Validate the header and read the arguments (synchronously), then serve: READ at once when it can be. */
  private dispatch(hdr: FuseInHeaderT, r: Reader, w: Writer, hold: (release: () => void) => void): number | Promise<number> {
    const op = hdr.opcode;
    if (hdr.len < IN_HDR) throw einval(`in_header.len ${hdr.len} < 40`);
    // Before touching the body: a length no valid request has costs nothing (upstream: ENOMEM).
    if (hdr.len > this.maxRequestLen) throw new ErrnoError('ENOMEM', `in_header.len ${hdr.len} > ${this.maxRequestLen}`);
    const bodyLen = hdr.len - IN_HDR;
    if (bodyLen > r.available()) throw einval(`in_header.len ${hdr.len} exceeds the request (${IN_HDR + r.available()})`);
    const extLen = hdr.totalExtlen * 8;
    if (extLen > bodyLen) throw einval('total_extlen exceeds the request');
    // Extensions (SECURITY_CTX, CREATE_SUPP_GROUP) trail the args; we never negotiate them.
    const argLen = bodyLen - extLen;
    // One private copy of the arguments; only WRITE's data stays in peer memory.
    let body: Buffer;
    let payload = EMPTY;
    if (op === FuseOpcode.WRITE && argLen >= FuseWriteIn.SIZE) {
      body = r.readBytes(FuseWriteIn.SIZE);
      payload = r.readShared(argLen - FuseWriteIn.SIZE);
    } else {
      body = argLen === 0 ? EMPTY : r.readBytes(argLen);
    }
    const unique = hdr.unique;

    if (op === FuseOpcode.INIT) return this.doInit(hdr, body, w);
    if (!this._initialized) {
      if (isNoReply(op)) return 0;
      log.debug({ op: FuseOpcode[op] ?? op }, 'fuse: request before INIT');
      return this.replyError(w, unique, E.EIO);
    }

    const ctx: RequestContext = { uid: hdr.uid, gid: hdr.gid, pid: hdr.pid, unique, hold };
    if (op === FuseOpcode.READ) return this.doRead(ctx, hdr.nodeid, body, w);
    return this.serveOp(op, ctx, hdr.nodeid, body, payload, w);
  }

  private async serveOp(op: number, ctx: RequestContext, ino: bigint, body: Buffer, payload: Buffer, w: Writer): Promise<number> {
    const fs = this.fs;
    const unique = ctx.unique;
    switch (op) {
      case FuseOpcode.DESTROY: {
        this._initialized = false;
        this._destroyed = true;
        await fs.destroy?.();
        return this.replyEmpty(w, unique);
      }
      case FuseOpcode.FORGET: {
        const f = FuseForgetIn.decode(body);
        fs.forget?.(ino, f.nlookup);
        return 0;
      }
      case FuseOpcode.BATCH_FORGET: {
        const { count } = FuseBatchForgetIn.decode(body);
        const max = Math.floor((body.length - FuseBatchForgetIn.SIZE) / FuseForgetOne.SIZE);
        if (count > max) log.debug({ count, max }, 'fuse: BATCH_FORGET shorter than its count');
        const n = Math.min(count, max);
        for (let i = 0; i < n; i++) {
          const one = FuseForgetOne.decode(body, FuseBatchForgetIn.SIZE + i * FuseForgetOne.SIZE);
          this.forgetQuietly(one.nodeid, one.nlookup);
        }
        return 0;
      }
      case FuseOpcode.INTERRUPT:
        return 0;

      case FuseOpcode.LOOKUP: {
        const [name] = cstr(body, 0, 'LOOKUP name');
        return this.replyEntry(ctx, w, await fs.lookup(ctx, ino, name));
      }
      case FuseOpcode.GETATTR: {
        const g = FuseGetattrIn.decode(body);
        const fh = g.getattrFlags & FUSE_GETATTR_FH ? g.fh : undefined;
        return this.replyAttr(w, unique, await fs.getattr(ctx, ino, fh));
      }
      case FuseOpcode.READLINK: {
        this.has('readlink');
        const target = await fs.readlink!(ctx, ino);
        const b = FuseServer.alloc(target.length);
        target.copy(b, OUT_HDR);
        return this.send(w, unique, b);
      }
      case FuseOpcode.OPEN: {
        this.has('open');
        const o = FuseOpenIn.decode(body);
        return this.replyOpen(ctx, w, ino, await fs.open!(ctx, ino, o.flags), false);
      }
      case FuseOpcode.OPENDIR: {
        this.has('opendir');
        const o = FuseOpenIn.decode(body);
        return this.replyOpen(ctx, w, ino, await fs.opendir!(ctx, ino, o.flags), true);
      }
      case FuseOpcode.RELEASE: {
        this.has('release');
        const rel = FuseReleaseIn.decode(body);
        await fs.release!(ctx, ino, rel.fh, rel.flags);
        return this.replyEmpty(w, unique);
      }
      case FuseOpcode.RELEASEDIR: {
        this.has('releasedir');
        const rel = FuseReleaseIn.decode(body);
        await fs.releasedir!(ctx, ino, rel.fh);
        return this.replyEmpty(w, unique);
      }
      case FuseOpcode.FLUSH: {
        this.has('flush');
        const f = FuseFlushIn.decode(body);
        await fs.flush!(ctx, ino, f.fh);
        return this.replyEmpty(w, unique);
      }
      case FuseOpcode.READDIR:
        return this.doReaddir(ctx, ino, body, w, false);
      case FuseOpcode.READDIRPLUS:
        return this.doReaddir(ctx, ino, body, w, true);
      case FuseOpcode.STATFS: {
        const st: StatFs = fs.statfs
          ? await fs.statfs(ctx, ino)
          : { blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, bsize: 512, namelen: 255, frsize: 512 };
        const b = FuseServer.alloc(FuseKstatfs.SIZE);
        FuseKstatfs.encode(st, b, OUT_HDR);
        return this.send(w, unique, b);
      }
      case FuseOpcode.GETXATTR: {
        this.has('getxattr');
        const g = FuseGetxattrIn.decode(body);
        const [name] = cstr(body, FuseGetxattrIn.SIZE, 'GETXATTR name');
        const v = await fs.getxattr!(ctx, ino, name);
        return this.replyXattr(w, unique, g.size, v, v.length);
      }
      case FuseOpcode.LISTXATTR: {
        this.has('listxattr');
        const g = FuseGetxattrIn.decode(body);
        const names = await fs.listxattr!(ctx, ino);
        let total = 0;
        for (const n of names) total += n.length + 1;
        return this.replyXattr(w, unique, g.size, names, total);
      }
      case FuseOpcode.ACCESS: {
        this.has('access');
        await fs.access!(ctx, ino, FuseAccessIn.decode(body).mask);
        return this.replyEmpty(w, unique);
      }
      case FuseOpcode.LSEEK: {
        this.has('lseek');
        const l = FuseLseekIn.decode(body);
        const off = await fs.lseek!(ctx, ino, l.fh, l.offset, l.whence);
        const b = FuseServer.alloc(8);
        writeU64(b, OUT_HDR, off);
        return this.send(w, unique, b);
      }
      case FuseOpcode.SYNCFS: {
        this.has('syncfs');
        await fs.syncfs!(ctx, ino);
        return this.replyEmpty(w, unique);
      }
      case FuseOpcode.FSYNC:
      case FuseOpcode.FSYNCDIR: {
        const dir = op === FuseOpcode.FSYNCDIR;
        this.has(dir ? 'fsyncdir' : 'fsync');
        const f = FuseFsyncIn.decode(body);
        const datasync = (f.fsyncFlags & FUSE_FSYNC_FDATASYNC) !== 0;
        await (dir ? fs.fsyncdir!(ctx, ino, f.fh, datasync) : fs.fsync!(ctx, ino, f.fh, datasync));
        return this.replyEmpty(w, unique);
      }

      // ---- mutating ----
      case FuseOpcode.SETATTR: {
        this.mutating('setattr');
        const s = FuseSetattrIn.decode(body);
        const v = s.valid;
        const a: SetattrIn = { valid: v };
        if (v & FATTR_FH) a.fh = s.fh;
        if (v & FATTR_SIZE) a.size = s.size;
        if (v & FATTR_ATIME) { a.atime = s.atime; a.atimeNsec = s.atimeNsec; }
        if (v & FATTR_MTIME) { a.mtime = s.mtime; a.mtimeNsec = s.mtimeNsec; }
        if (v & FATTR_MODE) a.mode = s.mode;
        if (v & FATTR_UID) a.uid = s.uid;
        if (v & FATTR_GID) a.gid = s.gid;
        return this.replyAttr(w, unique, await fs.setattr!(ctx, ino, a));
      }
      case FuseOpcode.MKNOD: {
        this.mutating('mknod');
        const m = FuseMknodIn.decode(body);
        const [name] = cstr(body, FuseMknodIn.SIZE, 'MKNOD name');
        return this.replyEntry(ctx, w, await fs.mknod!(ctx, ino, name, m.mode, m.rdev, m.umask));
      }
      case FuseOpcode.MKDIR: {
        this.mutating('mkdir');
        const m = FuseMkdirIn.decode(body);
        const [name] = cstr(body, FuseMkdirIn.SIZE, 'MKDIR name');
        return this.replyEntry(ctx, w, await fs.mkdir!(ctx, ino, name, m.mode, m.umask));
      }
      case FuseOpcode.UNLINK:
      case FuseOpcode.RMDIR: {
        const rm = op === FuseOpcode.RMDIR;
        this.mutating(rm ? 'rmdir' : 'unlink');
        const [name] = cstr(body, 0, 'name');
        await (rm ? fs.rmdir!(ctx, ino, name) : fs.unlink!(ctx, ino, name));
        return this.replyEmpty(w, unique);
      }
      case FuseOpcode.SYMLINK: {
        this.mutating('symlink');
        const [name, next] = cstr(body, 0, 'SYMLINK name');
        const [target] = cstr(body, next, 'SYMLINK target');
        return this.replyEntry(ctx, w, await fs.symlink!(ctx, ino, name, target));
      }
      case FuseOpcode.RENAME:
      case FuseOpcode.RENAME2: {
        this.mutating('rename');
        let newdir: bigint;
        let flags = 0;
        let off: number;
        if (op === FuseOpcode.RENAME) {
          newdir = FuseRenameIn.decode(body).newdir;
          off = FuseRenameIn.SIZE;
        } else {
          const r2 = FuseRename2In.decode(body);
          newdir = r2.newdir;
          flags = r2.flags;
          off = FuseRename2In.SIZE;
        }
        const [oldName, next] = cstr(body, off, 'RENAME old name');
        const [newName] = cstr(body, next, 'RENAME new name');
        await fs.rename!(ctx, ino, oldName, newdir, newName, flags);
        return this.replyEmpty(w, unique);
      }
      case FuseOpcode.LINK: {
        this.mutating('link');
        const l = FuseLinkIn.decode(body);
        const [name] = cstr(body, FuseLinkIn.SIZE, 'LINK name');
        return this.replyEntry(ctx, w, await fs.link!(ctx, l.oldnodeid, ino, name));
      }
      case FuseOpcode.CREATE: {
        this.mutating('create');
        const c = FuseCreateIn.decode(body);
        const [name] = cstr(body, FuseCreateIn.SIZE, 'CREATE name');
        const res = await fs.create!(ctx, ino, name, c.mode, c.flags, c.umask);
        return this.replyEntry(ctx, w, res.entry, res.open);
      }
      case FuseOpcode.WRITE: {
        this.mutating('write');
        const wi = FuseWriteIn.decode(body);
        if (payload.length < wi.size) throw einval(`WRITE data shorter than ${wi.size}`);
        const data = payload.subarray(0, wi.size);
        const n = await fs.write!(ctx, ino, wi.fh, wi.offset, data, wi.writeFlags);
        return this.replyU32Size(w, unique, n);
      }
      case FuseOpcode.SETXATTR: {
        this.mutating('setxattr');
        const codec = this.setxattrExt ? FuseSetxattrInExt : FuseSetxattrIn;
        const s = codec.decode(body);
        const [name, next] = cstr(body, codec.SIZE, 'SETXATTR name');
        if (body.length - next < s.size) throw einval('SETXATTR value shorter than its size');
        await fs.setxattr!(ctx, ino, name, body.subarray(next, next + s.size), s.flags);
        return this.replyEmpty(w, unique);
      }
      case FuseOpcode.REMOVEXATTR: {
        this.mutating('removexattr');
        const [name] = cstr(body, 0, 'REMOVEXATTR name');
        await fs.removexattr!(ctx, ino, name);
        return this.replyEmpty(w, unique);
      }
      case FuseOpcode.FALLOCATE: {
        this.mutating('fallocate');
        const f = FuseFallocateIn.decode(body);
        await fs.fallocate!(ctx, ino, f.fh, f.mode, f.offset, f.length);
        return this.replyEmpty(w, unique);
      }
      default:
        if (log.isLevelEnabled('debug')) log.debug({ op: FuseOpcode[op] ?? op }, 'fuse: opcode not implemented');
        return this.replyError(w, unique, E.ENOSYS);
    }
  }

  // ---- INIT ------------------------------------------------------------------

  private async doInit(hdr: FuseInHeaderT, body: Buffer, w: Writer): Promise<number> {
    const i = FuseInitIn.decode(body);
    if (i.major < FUSE_KERNEL_VERSION) {
      logLimited('error', 'fuse.init', { major: i.major, minor: i.minor }, 'fuse: unsupported protocol major version');
      return this.replyError(w, hdr.unique, E.EPROTO);
    }
    if (i.major > FUSE_KERNEL_VERSION) {
      // Announce 7.x; the kernel re-sends INIT with major 7 (libfuse behaviour).
      const b = FuseServer.alloc(FuseInitOut.COMPAT_SIZE);
      b.writeUInt32LE(FUSE_KERNEL_VERSION, OUT_HDR);
      b.writeUInt32LE(FUSE_KERNEL_MINOR_VERSION, OUT_HDR + 4);
      return this.send(w, hdr.unique, b);
    }
    if (i.minor < FUSE_MIN_KERNEL_MINOR_VERSION) {
      logLimited('error', 'fuse.init', { major: i.major, minor: i.minor }, 'fuse: kernel protocol minor too old');
      return this.replyError(w, hdr.unique, E.EPROTO);
    }
    if (this._initialized) {
      // A guest that rebooted or remounted without DESTROY: start over.
      logLimited('info', 'fuse.reinit', {}, 'fuse: INIT on a live session, starting a new one');
      this._initialized = false;
      try {
        await this.fs.destroy?.();
      } catch (e) {
        warnLimited('fuse.reinit', { err: (e as Error).message }, 'fuse: destroy before re-INIT failed');
      }
    }
    const offered = i.flags;
    let want = this.wanted;
    if (this.fs.init) want &= BigInt.asUintN(64, await this.fs.init(offered)) | PROTOCOL_FLAGS;
    const flags = offered & want;
    const minor = Math.min(i.minor, FUSE_KERNEL_MINOR_VERSION);
    const out = {
      major: FUSE_KERNEL_VERSION,
      minor,
      maxReadahead: this.opts.maxReadahead !== undefined ? Math.min(i.maxReadahead, this.opts.maxReadahead) : i.maxReadahead,
      flags,
      maxBackground: this.opts.maxBackground ?? 64,
      congestionThreshold: this.opts.congestionThreshold ?? 48,
      maxWrite: this.maxWrite,
      timeGran: 1,
      maxPages: flags & FUSE_MAX_PAGES ? this.maxPages : 0,
      mapAlignment: 0,
      maxStackDepth: 0,
      requestTimeout: 0,
    };
    const size = minor < 23 ? FuseInitOut.COMPAT_22_SIZE : FuseInitOut.SIZE;
    const full = FuseInitOut.encode(out);
    const b = FuseServer.alloc(size);
    full.copy(b, OUT_HDR, 0, size);
    const n = this.send(w, hdr.unique, b);
    if (n === b.length) {
      this._initialized = true;
      this._destroyed = false;
      this._minor = minor;
      this._flags = flags;
      this.setxattrExt = (flags & FUSE_SETXATTR_EXT) !== 0n;
      logLimited('info', 'fuse.session', { kernel: `${i.major}.${i.minor}`, minor, offered: `0x${offered.toString(16)}`, flags: `0x${flags.toString(16)}`, maxWrite: this.maxWrite, maxPages: out.maxPages }, 'fuse: session initialized');
    }
    return n;
  }

  // ---- READ / READDIR ----------------------------------------------------------

  /**
   * READ: the filesystem's `readSync` answers at once when the data is ready
   * (no promise, no microtask: the reply is written before this returns);
   * otherwise (or without readSync) the async `read`. File slices are read
   * into the reply on the event loop only from the page cache; when one is
   * not all there (a blob cache file written with O_DIRECT, evicted, or left
   * by an earlier run), the slices are read on the thread pool and the reply
   * built from those bytes: a guest never makes the loop wait for a disk.
   */
  private doRead(ctx: RequestContext, ino: bigint, body: Buffer, w: Writer): number | Promise<number> {
    this.has('read');
    const ri = FuseReadIn.decode(body);
    const room = w.available() - OUT_HDR;
    if (room < 0) {
      warnLimited('fuse.noroom', { unique: String(ctx.unique) }, 'fuse: no room for a READ reply');
      return 0;
    }
    const size = Math.min(ri.size, room, this.maxRead);
    const now = this.fs.readSync?.(ctx, ino, ri.fh, ri.offset, size);
    if (now !== undefined) return this.replyRead(ctx, w, size, now) ?? this.replyOffLoop(ctx, w, size, now);
    return this.fs.read!(ctx, ino, ri.fh, ri.offset, size).then((pieces) => this.replyRead(ctx, w, size, pieces) ?? this.replyOffLoop(ctx, w, size, pieces));
  }

  /** The reply of a READ whose file slices are not all in the page cache: they are read on the thread pool first. */
  private async replyOffLoop(ctx: RequestContext, w: Writer, size: number, pieces: readonly ReadPiece[]): Promise<number> {
    w.reset();
    let left = size;
    const bufs = await Promise.all(pieces.map((p) => {
      const n = Math.min(p.length, Math.max(0, left));
      left -= n;
      return Buffer.isBuffer(p) ? p.subarray(0, n) : readSliceOffLoop(p.fd, p.position, n);
    }));
    return this.replyRead(ctx, w, size, bufs)!;
  }

  /**
   * Out-header plus the pieces (at most `size` bytes), gathered straight into
   * the reply; undefined (the reply is to be built again) when a file slice
   * is not in the page cache.
   */
  private replyRead(ctx: RequestContext, w: Writer, size: number, pieces: readonly ReadPiece[]): number | undefined {
    let total = 0;
    for (let i = 0; i < pieces.length; i++) total += pieces[i].length;
    if (total > size) total = size;
    const h = Buffer.allocUnsafe(OUT_HDR);
    outHeader(h, OUT_HDR + total, 0, ctx.unique);
    w.write(h);
    let left = total;
    for (let i = 0; i < pieces.length && left > 0; i++) {
      const p = pieces[i];
      const n = Math.min(p.length, left);
      if (Buffer.isBuffer(p)) w.write(n === p.length ? p : p.subarray(0, n));
      else {
        try {
          if (w.writeFromFile) w.writeFromFile(p.fd, p.position, n, true);
          else {
            // a writer without file support: stage the bytes
            const tmp = Buffer.allocUnsafe(n);
            readSlice(p.fd, tmp, p.position, true);
            w.write(tmp);
          }
        } catch (e) {
          if (e instanceof WouldBlock) return undefined;
          throw e;
        }
      }
      left -= n;
    }
    return OUT_HDR + total;
  }

  private async doReaddir(ctx: RequestContext, ino: bigint, body: Buffer, w: Writer, plus: boolean): Promise<number> {
    this.has('readdir');
    const ri = FuseReadIn.decode(body);
    const room = w.available() - OUT_HDR;
    if (room < 0) {
      warnLimited('fuse.noroom', { unique: String(ctx.unique) }, 'fuse: no room for a READDIR reply');
      return 0;
    }
    const end = OUT_HDR + Math.min(ri.size, room, this.maxRead);
    const buf = Buffer.allocUnsafe(end);
    let used = OUT_HDR;
    let open = true;
    const fs = this.fs;
    const add = (e: DirEntry): boolean => {
      if (!open) return false;
      const name = e.name;
      const len = plus ? direntplusSize(name.length) : direntSize(name.length);
      if (used + len > end) return false;
      if (name.length === 0 || name.length > FUSE_NAME_MAX || name.indexOf(0x2f) >= 0 || name.indexOf(0) >= 0) {
        // The kernel fails the whole listing with EIO on such a name: skip it.
        log.debug({ ino: String(ino), name: name.toString('latin1') }, 'fuse: skipping an invalid directory entry name');
        if (plus && e.entry && e.entry.ino !== 0n) this.forgetQuietly(e.entry.ino, 1);
        return true;
      }
      if (plus) {
        if (e.entry) FuseEntryOut.encode(e.entry, buf, used);
        else encodeZeroEntryOut(buf, used);
        encodeDirent(buf, used + FuseEntryOut.SIZE, e.ino, e.offset, e.type, name);
      } else {
        encodeDirent(buf, used, e.ino, e.offset, e.type, name);
      }
      used += len;
      return true;
    };
    try {
      await fs.readdir!(ctx, ino, ri.fh, ri.offset, plus, add);
    } catch (e) {
      // Entries already packed may carry lookups: deliver them rather than the error.
      if (used === OUT_HDR) throw e;
      log.debug({ ino: String(ino), errno: errnoOf(e) }, 'fuse: readdir failed after some entries, returning them');
    } finally {
      open = false;
    }
    outHeader(buf, used, 0, ctx.unique);
    w.write(used === buf.length ? buf : buf.subarray(0, used));
    return used;
  }
}

