/**
 * MemoryFs: a small in-memory FileSystem for FUSE server and VFS tests.
 * Root is ino 1. It counts kernel lookups per inode (lookup, entry-creating
 * ops and READDIRPLUS entries actually added, never `.`/`..`) so tests can
 * check the lookup-count rules, records the operations it serves, and can be
 * paused (`hold()`) to simulate requests in flight.
 *
 * Also: helpers that build FUSE request bytes and run them through a
 * FuseServer (`req`, `call`, `initBody`).
 */
import { ErrnoError, enoent, enodata } from '../../src/common/errno';
import type {
  Attr, AttrReply, DirEntry, Entry, FileSystem, OpenReply, RequestContext, SetattrIn, StatFs,
} from '../../src/common/filesystem';
import {
  FuseInHeader, FuseInitIn, FuseOutHeader, type FuseOutHeaderT,
} from '../../src/virtiofs/fuse/abi';
import type { FuseServer } from '../../src/virtiofs/fuse/server';
import { BufferReader, BufferWriter } from '../../src/virtiofs/fuse/transport';

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFMT = 0o170000;

interface Node {
  ino: bigint;
  mode: number;
  parent: Node;
  children: Map<string, Node>;
  data: Buffer;
  target: Buffer;
  xattrs: Map<string, Buffer>;
  uid: number;
  gid: number;
  rdev: number;
}

export interface MemoryFsOptions {
  readOnly?: boolean;
  /** read() returns the data in pieces of this size (gather test); default 4096 */
  readChunk?: number;
  /** entry/attr timeout in seconds; default 1.5 */
  timeout?: number;
}

export class MemoryFs implements FileSystem {
  readonly readOnly: boolean;
  readonly root: Node;
  private readonly byIno = new Map<bigint, Node>();
  private nextIno = 2n;
  private readonly chunk: number;
  private readonly timeout: number;
  /** kernel lookup counts by ino */
  readonly lookups = new Map<bigint, number>();
  /** op log: "<op> <ino>" */
  readonly calls: string[] = [];
  initCapable: bigint | undefined;
  initResult: bigint | undefined;
  destroyed = 0;
  private gate: Promise<void> | null = null;
  private release_: (() => void) | null = null;

  constructor(opts: MemoryFsOptions = {}) {
    this.readOnly = opts.readOnly ?? false;
    this.chunk = opts.readChunk ?? 4096;
    this.timeout = opts.timeout ?? 1.5;
    const root = { ino: 1n, mode: S_IFDIR | 0o755, children: new Map(), data: Buffer.alloc(0), target: Buffer.alloc(0), xattrs: new Map(), uid: 0, gid: 0, rdev: 0 } as unknown as Node;
    root.parent = root;
    this.root = root;
    this.byIno.set(1n, root);
  }

  // ---- test helpers ------------------------------------------------------------

  private newNode(parent: Node, name: string, mode: number): Node {
    if (parent.children.has(name)) throw new ErrnoError('EEXIST', name);
    const n: Node = { ino: this.nextIno++, mode, parent, children: new Map(), data: Buffer.alloc(0), target: Buffer.alloc(0), xattrs: new Map(), uid: 0, gid: 0, rdev: 0 };
    parent.children.set(name, n);
    this.byIno.set(n.ino, n);
    return n;
  }

  private walk(path: string, create: boolean): Node {
    let n = this.root;
    for (const p of path.split('/').filter(Boolean)) {
      let c = n.children.get(p);
      if (!c) {
        if (!create) throw enoent(path);
        c = this.newNode(n, p, S_IFDIR | 0o755);
      }
      n = c;
    }
    return n;
  }

  private parentOf(path: string): [Node, string] {
    const parts = path.split('/').filter(Boolean);
    const name = parts.pop()!;
    return [this.walk(parts.join('/'), true), name];
  }

  addDir(path: string): bigint {
    return this.walk(path, true).ino;
  }

  addFile(path: string, content: Buffer | string, mode = 0o644): bigint {
    const [p, name] = this.parentOf(path);
    const n = this.newNode(p, name, S_IFREG | mode);
    n.data = Buffer.from(content);
    return n.ino;
  }

  addSymlink(path: string, target: string): bigint {
    const [p, name] = this.parentOf(path);
    const n = this.newNode(p, name, S_IFLNK | 0o777);
    n.target = Buffer.from(target);
    return n.ino;
  }

  setXattr(path: string, name: string, value: Buffer | string): void {
    this.walk(path, false).xattrs.set(name, Buffer.from(value));
  }

  inoOf(path: string): bigint {
    return this.walk(path, false).ino;
  }

  lookupCount(ino: bigint): number {
    return this.lookups.get(ino) ?? 0;
  }

  /** Pause every operation until the returned function is called. */
  hold(): () => void {
    this.gate = new Promise<void>((r) => (this.release_ = r));
    return () => {
      const r = this.release_;
      this.gate = null;
      this.release_ = null;
      r?.();
    };
  }

  // ---- internals -----------------------------------------------------------------

  private async enter(op: string, ino: bigint): Promise<void> {
    this.calls.push(`${op} ${ino}`);
    if (this.gate) await this.gate;
  }

  private node(ino: bigint): Node {
    const n = this.byIno.get(ino);
    if (!n) throw enoent(`ino ${ino}`);
    return n;
  }

  private dir(ino: bigint): Node {
    const n = this.node(ino);
    if ((n.mode & S_IFMT) !== S_IFDIR) throw new ErrnoError('ENOTDIR', `ino ${ino}`);
    return n;
  }

  attrOf(n: Node): Attr {
    const size = (n.mode & S_IFMT) === S_IFLNK ? n.target.length : (n.mode & S_IFMT) === S_IFDIR ? 4096 : n.data.length;
    return {
      ino: n.ino, size, blocks: Math.ceil(size / 512), atime: 1700000000, mtime: 1700000001, ctime: 1700000002,
      atimeNsec: 1, mtimeNsec: 2, ctimeNsec: 3, mode: n.mode, nlink: 1, uid: n.uid, gid: n.gid, rdev: n.rdev, blksize: 4096,
    };
  }

  private entryOf(n: Node, count: boolean): Entry {
    if (count) this.lookups.set(n.ino, this.lookupCount(n.ino) + 1);
    return { ino: n.ino, generation: 7n, attr: this.attrOf(n), attrTimeout: this.timeout, entryTimeout: this.timeout };
  }

  // ---- FileSystem ----------------------------------------------------------------

  init(capable: bigint): bigint {
    this.initCapable = capable;
    return this.initResult ?? capable;
  }

  destroy(): void {
    this.destroyed++;
    this.lookups.clear();
  }

  async lookup(_ctx: RequestContext, parent: bigint, name: Buffer): Promise<Entry> {
    await this.enter('lookup', parent);
    const c = this.dir(parent).children.get(name.toString());
    if (!c) throw enoent(name.toString());
    return this.entryOf(c, true);
  }

  forget(ino: bigint, nlookup: number): void {
    this.calls.push(`forget ${ino} ${nlookup}`);
    const left = this.lookupCount(ino) - nlookup;
    if (left <= 0) this.lookups.delete(ino);
    else this.lookups.set(ino, left);
  }

  async getattr(_ctx: RequestContext, ino: bigint): Promise<AttrReply> {
    await this.enter('getattr', ino);
    return { attr: this.attrOf(this.node(ino)), timeout: this.timeout };
  }

  async readlink(_ctx: RequestContext, ino: bigint): Promise<Buffer> {
    await this.enter('readlink', ino);
    const n = this.node(ino);
    if ((n.mode & S_IFMT) !== S_IFLNK) throw new ErrnoError('EINVAL', 'not a symlink');
    return n.target;
  }

  async open(_ctx: RequestContext, ino: bigint): Promise<OpenReply> {
    await this.enter('open', ino);
    this.node(ino);
    return { fh: 100n + ino, openFlags: 2 };
  }

  async read(_ctx: RequestContext, ino: bigint, _fh: bigint, offset: number, size: number): Promise<Buffer[]> {
    await this.enter('read', ino);
    const n = this.node(ino);
    const out: Buffer[] = [];
    const end = Math.min(n.data.length, offset + size);
    for (let p = offset; p < end; p += this.chunk) out.push(n.data.subarray(p, Math.min(end, p + this.chunk)));
    return out;
  }

  async release(_ctx: RequestContext, ino: bigint): Promise<void> {
    await this.enter('release', ino);
  }

  async opendir(_ctx: RequestContext, ino: bigint): Promise<OpenReply> {
    await this.enter('opendir', ino);
    this.dir(ino);
    return { fh: 200n + ino, openFlags: 0 };
  }

  async readdir(_ctx: RequestContext, ino: bigint, _fh: bigint, offset: number, plus: boolean, add: (e: DirEntry) => boolean): Promise<void> {
    await this.enter(plus ? 'readdirplus' : 'readdir', ino);
    const d = this.dir(ino);
    const list: Array<[string, Node]> = [['.', d], ['..', d.parent], ...d.children];
    for (let i = offset; i < list.length; i++) {
      const [name, n] = list[i];
      const dot = i < 2;
      const entry = plus && !dot ? this.entryOf(n, false) : undefined;
      if (!add({ ino: n.ino, offset: i + 1, type: (n.mode & S_IFMT) >> 12, name: Buffer.from(name), entry })) return;
      if (entry) this.lookups.set(n.ino, this.lookupCount(n.ino) + 1);
    }
  }

  async releasedir(_ctx: RequestContext, ino: bigint): Promise<void> {
    await this.enter('releasedir', ino);
  }

  async statfs(_ctx: RequestContext, ino: bigint): Promise<StatFs> {
    await this.enter('statfs', ino);
    return { blocks: 1000, bfree: 10, bavail: 9, files: this.byIno.size, ffree: 0, bsize: 4096, namelen: 255, frsize: 4096 };
  }

  async getxattr(_ctx: RequestContext, ino: bigint, name: Buffer): Promise<Buffer> {
    await this.enter('getxattr', ino);
    const v = this.node(ino).xattrs.get(name.toString());
    if (!v) throw enodata(name.toString());
    return v;
  }

  async listxattr(_ctx: RequestContext, ino: bigint): Promise<Buffer[]> {
    await this.enter('listxattr', ino);
    return [...this.node(ino).xattrs.keys()].map((k) => Buffer.from(k));
  }

  // ---- mutating --------------------------------------------------------------------

  async mkdir(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, umask: number): Promise<Entry> {
    await this.enter('mkdir', parent);
    const n = this.newNode(this.dir(parent), name.toString(), S_IFDIR | (mode & ~umask & 0o7777));
    n.uid = ctx.uid;
    n.gid = ctx.gid;
    return this.entryOf(n, true);
  }

  async create(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, _flags: number, umask: number): Promise<{ entry: Entry; open: OpenReply }> {
    await this.enter('create', parent);
    const n = this.newNode(this.dir(parent), name.toString(), S_IFREG | (mode & ~umask & 0o7777));
    n.uid = ctx.uid;
    n.gid = ctx.gid;
    return { entry: this.entryOf(n, true), open: { fh: 100n + n.ino, openFlags: 0 } };
  }

  async mknod(ctx: RequestContext, parent: bigint, name: Buffer, mode: number, rdev: number, umask: number): Promise<Entry> {
    await this.enter('mknod', parent);
    const n = this.newNode(this.dir(parent), name.toString(), (mode & S_IFMT) | (mode & ~umask & 0o7777));
    n.rdev = rdev;
    n.uid = ctx.uid;
    n.gid = ctx.gid;
    return this.entryOf(n, true);
  }

  async symlink(_ctx: RequestContext, parent: bigint, name: Buffer, target: Buffer): Promise<Entry> {
    await this.enter('symlink', parent);
    const n = this.newNode(this.dir(parent), name.toString(), S_IFLNK | 0o777);
    n.target = Buffer.from(target);
    return this.entryOf(n, true);
  }

  async unlink(_ctx: RequestContext, parent: bigint, name: Buffer): Promise<void> {
    await this.enter('unlink', parent);
    const d = this.dir(parent);
    if (!d.children.delete(name.toString())) throw enoent(name.toString());
  }

  async rename(_ctx: RequestContext, parent: bigint, name: Buffer, newParent: bigint, newName: Buffer, flags: number): Promise<void> {
    await this.enter(`rename${flags}`, parent);
    const d = this.dir(parent);
    const n = d.children.get(name.toString());
    if (!n) throw enoent(name.toString());
    d.children.delete(name.toString());
    const nd = this.dir(newParent);
    nd.children.set(newName.toString(), n);
    n.parent = nd;
  }

  async write(_ctx: RequestContext, ino: bigint, _fh: bigint, offset: number, data: Buffer): Promise<number> {
    await this.enter('write', ino);
    const n = this.node(ino);
    const end = offset + data.length;
    if (end > n.data.length) n.data = Buffer.concat([n.data, Buffer.alloc(end - n.data.length)]);
    data.copy(n.data, offset);
    return data.length;
  }

  async setattr(_ctx: RequestContext, ino: bigint, a: SetattrIn): Promise<AttrReply> {
    await this.enter('setattr', ino);
    const n = this.node(ino);
    if (a.mode !== undefined) n.mode = (n.mode & S_IFMT) | (a.mode & 0o7777);
    if (a.uid !== undefined) n.uid = a.uid;
    if (a.gid !== undefined) n.gid = a.gid;
    if (a.size !== undefined) n.data = Buffer.concat([n.data, Buffer.alloc(Math.max(0, a.size - n.data.length))]).subarray(0, a.size);
    return { attr: this.attrOf(n), timeout: this.timeout };
  }

  async setxattr(_ctx: RequestContext, ino: bigint, name: Buffer, value: Buffer): Promise<void> {
    await this.enter('setxattr', ino);
    this.node(ino).xattrs.set(name.toString(), Buffer.from(value));
  }

  async removexattr(_ctx: RequestContext, ino: bigint, name: Buffer): Promise<void> {
    await this.enter('removexattr', ino);
    if (!this.node(ino).xattrs.delete(name.toString())) throw enodata(name.toString());
  }
}

// ---- FUSE wire helpers -------------------------------------------------------------

let nextUnique = 1000n;

export interface ReqOpts {
  unique?: bigint;
  /** override in_header.len */
  len?: number;
  uid?: number;
  gid?: number;
  totalExtlen?: number;
}

export function req(opcode: number, nodeid: bigint, body: Buffer | Buffer[] = [], o: ReqOpts = {}): Buffer {
  const b = Array.isArray(body) ? Buffer.concat(body) : body;
  const out = Buffer.alloc(40 + b.length);
  FuseInHeader.encode({
    len: o.len ?? out.length, opcode, unique: o.unique ?? ++nextUnique, nodeid,
    uid: o.uid ?? 1000, gid: o.gid ?? 100, pid: 4242, totalExtlen: o.totalExtlen ?? 0,
  }, out);
  b.copy(out, 40);
  return out;
}

export const cstr = (s: string): Buffer => Buffer.from(s + '\0');

export function uniqueOf(msg: Buffer): bigint {
  return msg.readBigUInt64LE(8);
}

export interface Reply {
  /** handleMessage's return value */
  n: number;
  raw: Buffer;
  hdr?: FuseOutHeaderT;
  payload: Buffer;
}

export async function call(server: FuseServer, msg: Buffer, room = 1 << 20 | 4096): Promise<Reply> {
  const w = new BufferWriter(Buffer.alloc(room));
  const n = await server.handleMessage(new BufferReader(msg), w);
  const raw = Buffer.from(w.bytes());
  if (n !== raw.length) throw new Error(`handleMessage returned ${n} but wrote ${raw.length}`);
  const hdr = raw.length >= 16 ? FuseOutHeader.decode(raw) : undefined;
  if (hdr && hdr.len !== raw.length) throw new Error(`out_header.len ${hdr.len} != ${raw.length}`);
  return { n, raw, hdr, payload: raw.subarray(16) };
}

export function initBody(minor: number, flags: bigint, form: 64 | 16 = 64, maxReadahead = 131072): Buffer {
  const b = FuseInitIn.encode({ major: 7, minor, maxReadahead, flags });
  return form === 64 ? b : b.subarray(0, 16);
}
