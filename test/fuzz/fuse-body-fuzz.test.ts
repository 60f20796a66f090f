/**
 * Fuzzing of FUSE request bodies against the real filesystems: a FuseServer
 * over a Vfs holding a PassthroughFs (tmp dir) at /pt and a RafsFs (image
 * built with the builder) at /rafs, fed through BufferReader/BufferWriter,
 * then a smaller run through a real vhost-user socket (FakeGuest, random
 * descriptor splits, indirect tables) to an in-process VirtioFsDaemon.
 *
 * Every opcode, random body lengths (0..~70 KiB and around the struct
 * sizes), structure-aware bodies with hostile names (NUL, '/', '..', 255+
 * bytes, non-UTF-8), random in_header.len / total_extlen, nodeids and fhs.
 * Checked: no exception escapes handleMessage; every reply written is
 * well-formed (out_header.len == bytes written, error 0 or -errno, errors
 * are bare headers, unique echoed); after a FORGET/RELEASE sweep the
 * passthrough holds only its root and no handle, the heap is bounded;
 * nothing outside the share changed; valid LOOKUP/GETATTR/READ still return
 * the right bytes. Seeded (FUZZ_SEED overrides; the seed is in the test name).
 *
 * Host safety: MKNOD never creates FIFOs or device nodes (they are mapped to
 * regular files: a FIFO open blocks the whole process, a device node could
 * reach host devices), FALLOCATE/WRITE/SETATTR sizes are clamped.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { constants } from 'node:os';
import { initDigest, DigestAlgorithm } from '../../src/common/digest';
import { Compressor } from '../../src/common/compress';
import { localfsDirConfig } from '../../src/common/config';
import { setupLog } from '../../src/common/log';
import { createImage } from '../../src/rafs/builder/create';
import { loadRafs } from '../../src/rafs/metadata/super';
import { RafsFs } from '../../src/rafs/fs';
import { createBlobDevice } from '../../src/storage/factory';
import {
  FUSE_ATOMIC_O_TRUNC, FuseAccessIn, FuseBatchForgetIn, FuseCreateIn, FuseEntryOut, FuseFallocateIn, FuseFlushIn,
  FuseForgetIn, FuseForgetOne, FuseFsyncIn, FuseGetattrIn, FuseGetxattrIn, FuseInHeader, FuseInitIn, FuseInterruptIn,
  FuseLinkIn, FuseLseekIn, FuseMkdirIn, FuseMknodIn, FuseOpcode, FuseOpenIn, FuseOpenOut, FuseOutHeader, FuseReadIn,
  FuseReleaseIn, FuseRename2In, FuseRenameIn, FuseSetattrIn, FuseSetxattrIn, FuseWriteIn, decodeDirentplus,
} from '../../src/virtiofs/fuse/abi';
import { FuseServer } from '../../src/virtiofs/fuse/server';
import { BufferReader, BufferWriter } from '../../src/virtiofs/fuse/transport';
import { PassthroughFs } from '../../src/virtiofs/passthrough/passthrough-fs';
import { VirtioFsDaemon } from '../../src/virtiofs/transport/virtio-fs-device';
import { Vfs } from '../../src/virtiofs/vfs/vfs';
import { diffSnapshots, GuestSession, MIB, replyProblem, snapshotTree } from '../support/hostile-guest';

if (!process.env.NYDUS_LOG_LEVEL) setupLog('error', '/dev/null'); // hostile input logs a lot

const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed1);
const ITER = Number(process.env.FUZZ_ITER ?? 100000);
const VHOST_ITER = Number(process.env.FUZZ_VHOST_ITER ?? 5000);
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'fuse-body-fuzz-'));
test.after(() => fs.rmSync(work, { recursive: true, force: true }));

const E = constants.errno;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFSOCK = 0o140000;
const S_IFLNK = 0o120000;
const HELLO = Buffer.from('hello from the rafs image\n'.repeat(300));
const PT_ROOT = (1n << 56n) | 1n;
const RAFS_ROOT = (2n << 56n) | 1n;

function rng(seed: number) {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s;
  };
  const r = {
    u32: next,
    int: (n: number) => (n <= 0 ? 0 : next() % n),
    chance: (p: number) => next() / 2 ** 32 < p,
    pick: <T>(a: readonly T[]): T => a[next() % a.length],
    u64: () => (BigInt(next()) << 32n) | BigInt(next()),
    bytes: (n: number) => {
      const b = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i += 4) {
        const v = next();
        for (let j = 0; j < 4 && i + j < n; j++) b[i + j] = (v >>> (8 * j)) & 0xff;
      }
      return b;
    },
  };
  return r;
}
type Rng = ReturnType<typeof rng>;

const OPCODES = Object.values(FuseOpcode).filter((v): v is number => typeof v === 'number');
/** The opcodes the filesystems implement (picked more often so the state grows). */
const BUSY = [
  FuseOpcode.LOOKUP, FuseOpcode.LOOKUP, FuseOpcode.LOOKUP, FuseOpcode.GETATTR, FuseOpcode.SETATTR, FuseOpcode.MKDIR, FuseOpcode.MKNOD,
  FuseOpcode.CREATE, FuseOpcode.CREATE, FuseOpcode.SYMLINK, FuseOpcode.LINK, FuseOpcode.RENAME, FuseOpcode.RENAME2, FuseOpcode.UNLINK,
  FuseOpcode.RMDIR, FuseOpcode.OPEN, FuseOpcode.OPEN, FuseOpcode.OPENDIR, FuseOpcode.READ, FuseOpcode.READ, FuseOpcode.WRITE,
  FuseOpcode.WRITE, FuseOpcode.READDIR, FuseOpcode.READDIRPLUS, FuseOpcode.READDIRPLUS, FuseOpcode.RELEASE, FuseOpcode.RELEASEDIR,
  FuseOpcode.READLINK, FuseOpcode.SETXATTR, FuseOpcode.GETXATTR, FuseOpcode.LISTXATTR,
  FuseOpcode.REMOVEXATTR, FuseOpcode.FALLOCATE, FuseOpcode.LSEEK, FuseOpcode.FLUSH, FuseOpcode.ACCESS, FuseOpcode.STATFS,
];

/** A world: tmp share (in `outside/`, next to sentinels) + RAFS image, a Vfs with both, a FuseServer. */
async function world(tag: string) {
  await initDigest();
  const dir = path.join(work, tag);
  const outside = path.join(dir, 'outside');
  const share = path.join(outside, 'share');
  fs.mkdirSync(path.join(share, 'dir', 'sub'), { recursive: true });
  fs.writeFileSync(path.join(share, 'hello'), 'passthrough hello\n');
  fs.writeFileSync(path.join(share, 'dir', 'file'), Buffer.alloc(100000, 'f'));
  fs.symlinkSync('../../..', path.join(share, 'up'));
  fs.writeFileSync(path.join(outside, 'sentinel'), Buffer.alloc(4321, 's'));
  fs.mkdirSync(path.join(outside, 'victim-dir'));
  const src = path.join(dir, 'src');
  fs.mkdirSync(path.join(src, 'd'), { recursive: true });
  fs.writeFileSync(path.join(src, 'hello'), HELLO);
  fs.writeFileSync(path.join(src, 'd', 'x'), 'x');
  fs.symlinkSync('hello', path.join(src, 'link'));
  const blobs = path.join(dir, 'blobs');
  fs.mkdirSync(blobs);
  const img = await createImage({
    source: src, type: 'dir-rafs', fsVersion: 6, compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3,
    chunkSize: 0x1000, bootstrap: path.join(blobs, 'boot'), blobDir: blobs, blobInlineMeta: false, blobToc: false,
    alignedChunk: false, repeatable: false, prefetchPatterns: [],
  });
  const sb = loadRafs(img.bootstrap);
  const device = createBlobDevice(localfsDirConfig(blobs), sb.blobs);
  const rafs = new RafsFs(sb, device, { bootstrap: img.bootstrap });
  const pfs = new PassthroughFs(share, { cachePolicy: 'auto' });
  const vfs = new Vfs();
  vfs.mount('/pt', pfs);
  vfs.mount('/rafs', rafs);
  const server = new FuseServer(vfs, { readdirplus: true, extraFlags: FUSE_ATOMIC_O_TRUNC });
  const before = snapshotTree(outside, ['share']);
  return { dir, outside, share, pfs, vfs, server, device, before };
}

const NAMES: Buffer[] = [
  'hello', 'dir', 'file', 'sub', 'up', 'new', 'new2', 'd', 'x', 'link', '.', '..', '', 'a/b', '../x', '../victim-dir', '/etc',
  '..\u0000x', 'with\u0000nul', 'x'.repeat(255), 'y'.repeat(256), 'z'.repeat(1100), 'user.x', 'trusted.overlay.opaque',
  'security.capability', 'system.posix_acl_access', '.wh.hello', '.wh..wh..opq',
].map((s) => Buffer.from(s, 'latin1'));

const GOOD = NAMES.slice(0, 10);

function name(r: Rng, nul = true): Buffer {
  let n: Buffer;
  if (r.chance(0.5)) n = r.chance(0.8) ? r.pick(GOOD) : Buffer.from(`n${r.int(50)}`);
  else if (r.chance(0.3)) {
    n = r.bytes(1 + r.int(300));
    for (let i = 0; i < n.length; i++) if (n[i] === 0 && r.chance(0.5)) n[i] = 0x41; // some NULs stay
  } else n = r.pick(NAMES);
  if (!nul) return n;
  return r.chance(0.03) ? n : Buffer.concat([n, Buffer.from([0])]); // sometimes no terminator
}

interface Known { nodeids: bigint[]; fhs: bigint[] }

/** A structure-aware body for `op` (may still be hostile). */
function body(r: Rng, op: number, k: Known): Buffer {
  const fh = () => (r.chance(0.7) && k.fhs.length ? r.pick(k.fhs) : r.pick([0n, 1n, 2n, r.u64(), 2n ** 64n - 1n]));
  const node = () => (r.chance(0.8) ? r.pick(k.nodeids) : r.u64());
  const off = () => r.pick([0, 1, 4095, 4096, r.int(1 << 20), r.int(1 << 30)]);
  const size = () => r.pick([0, 1, 16, 4096, 65536, 131072, 1 << 20, r.int(1 << 21), 0xffffffff, r.u32()]);
  const u32 = () => r.pick([0, 1, r.u32(), 0xffffffff]);
  switch (op) {
    case FuseOpcode.LOOKUP: case FuseOpcode.UNLINK: case FuseOpcode.RMDIR: case FuseOpcode.REMOVEXATTR:
      return name(r);
    case FuseOpcode.FORGET:
      return FuseForgetIn.encode({ nlookup: r.pick([0, 1, 2, r.int(1 << 30)]) });
    case FuseOpcode.BATCH_FORGET: {
      const n = r.int(8);
      const parts = [FuseBatchForgetIn.encode({ count: r.chance(0.8) ? n : r.u32() })];
      for (let i = 0; i < n; i++) parts.push(FuseForgetOne.encode({ nodeid: node(), nlookup: r.pick([1, 2, r.int(1000)]) }));
      return Buffer.concat(parts);
    }
    case FuseOpcode.GETATTR:
      return FuseGetattrIn.encode({ getattrFlags: r.int(4), fh: fh() });
    case FuseOpcode.SETATTR:
      return FuseSetattrIn.encode({
        valid: r.u32() & 0x7ff, fh: fh(), size: r.int(64 * MIB), lockOwner: r.u64(), atime: r.int(2 ** 31), mtime: r.int(2 ** 31), ctime: 0,
        atimeNsec: r.int(1e9), mtimeNsec: r.pick([r.int(1e9), 0xffffffff]), ctimeNsec: 0, mode: r.u32() & 0o7777, uid: r.pick([0, 1000, 12345, 0xffffffff]), gid: r.pick([0, 100, 12345]),
      });
    case FuseOpcode.SYMLINK:
      return Buffer.concat([name(r), name(r)]);
    case FuseOpcode.MKNOD: {
      let mode = r.pick([S_IFREG, S_IFSOCK, r.u32() & S_IFMT]) | (r.u32() & 0o7777);
      const t = mode & S_IFMT;
      if (t !== S_IFREG && t !== S_IFSOCK && t !== S_IFDIR && t !== S_IFLNK && t !== 0) mode = S_IFREG | (mode & 0o7777); // no FIFOs / devices on the host
      return Buffer.concat([FuseMknodIn.encode({ mode, rdev: 0, umask: r.pick([0, 0o22, r.u32()]) }), name(r)]);
    }
    case FuseOpcode.MKDIR:
      return Buffer.concat([FuseMkdirIn.encode({ mode: r.u32() & 0o7777, umask: r.pick([0, 0o22]) }), name(r)]);
    case FuseOpcode.RENAME:
      return Buffer.concat([FuseRenameIn.encode({ newdir: node() }), name(r), name(r)]);
    case FuseOpcode.RENAME2:
      return Buffer.concat([FuseRename2In.encode({ newdir: node(), flags: r.pick([0, 1, 2, 4, 5, r.u32()]) }), name(r), name(r)]);
    case FuseOpcode.LINK:
      return Buffer.concat([FuseLinkIn.encode({ oldnodeid: node() }), name(r)]);
    case FuseOpcode.OPEN: case FuseOpcode.OPENDIR:
      return FuseOpenIn.encode({ flags: r.pick([0, 1, 2, 0o1002, 0o2001, 0o200000, 0o400000, 0o4000, r.u32() & ~0o10000000]), openFlags: u32() });
    case FuseOpcode.READ: case FuseOpcode.READDIR: case FuseOpcode.READDIRPLUS:
      return FuseReadIn.encode({ fh: fh(), offset: r.chance(0.7) ? r.int(8) : off(), size: size(), readFlags: u32(), lockOwner: r.u64(), flags: u32() });
    case FuseOpcode.WRITE: {
      const data = r.bytes(r.pick([0, 1, 100, 4096, r.int(65536)]));
      const claimed = r.chance(0.8) ? data.length : r.pick([data.length + 1, 0, r.u32()]);
      return Buffer.concat([FuseWriteIn.encode({ fh: fh(), offset: off(), size: claimed, writeFlags: r.int(8), lockOwner: r.u64(), flags: u32() }), data]);
    }
    case FuseOpcode.RELEASE: case FuseOpcode.RELEASEDIR:
      return FuseReleaseIn.encode({ fh: fh(), flags: u32(), releaseFlags: r.int(4), lockOwner: r.u64() });
    case FuseOpcode.FSYNC: case FuseOpcode.FSYNCDIR:
      return FuseFsyncIn.encode({ fh: fh(), fsyncFlags: r.int(2) });
    case FuseOpcode.SETXATTR: {
      const v = r.bytes(r.pick([0, 1, 10, 300, r.int(70000)]));
      return Buffer.concat([FuseSetxattrIn.encode({ size: r.chance(0.8) ? v.length : r.u32(), flags: r.pick([0, 1, 2, r.u32()]) }), name(r), v]);
    }
    case FuseOpcode.GETXATTR:
      return Buffer.concat([FuseGetxattrIn.encode({ size: size() }), name(r)]);
    case FuseOpcode.LISTXATTR:
      return FuseGetxattrIn.encode({ size: size() });
    case FuseOpcode.FLUSH:
      return FuseFlushIn.encode({ fh: fh(), lockOwner: r.u64() });
    case FuseOpcode.INIT:
      return FuseInitIn.encode({ major: r.pick([7, 7, 6, 8, r.u32()]), minor: r.pick([13, 31, 36, 40, 0, r.u32()]), maxReadahead: u32(), flags: r.u64() });
    case FuseOpcode.ACCESS:
      return FuseAccessIn.encode({ mask: r.pick([0, 1, 2, 4, 7, r.u32()]) });
    case FuseOpcode.CREATE:
      return Buffer.concat([FuseCreateIn.encode({ flags: r.pick([0o101, 0o102, 0o302, 0o1102, 0o2101, r.u32() & ~0o10000000]), mode: r.pick([S_IFREG | 0o644, r.u32()]), umask: r.pick([0, 0o22]), openFlags: u32() }), name(r)]);
    case FuseOpcode.INTERRUPT:
      return FuseInterruptIn.encode({ unique: r.u64() });
    case FuseOpcode.FALLOCATE:
      return FuseFallocateIn.encode({ fh: fh(), offset: r.int(64 * MIB), length: r.int(MIB), mode: r.pick([0, 1, 3, 0x10, 0x20, r.u32() & 0x7f]) });
    case FuseOpcode.LSEEK:
      return FuseLseekIn.encode({ fh: fh(), offset: off(), whence: r.int(6) });
    default:
      return r.bytes(r.pick([0, 8, 16, 40, 64, r.int(200)]));
  }
}

/** One random request. */
function message(r: Rng, k: Known, unique: bigint): { msg: Buffer; op: number } {
  let op = r.chance(0.7) ? r.pick(BUSY) : r.chance(0.95) ? r.pick(OPCODES) : r.pick([0, 99, 4096, r.u32()]);
  // a session reset (INIT/DESTROY) drops every inode: keep them rare so state can build up
  if ((op === FuseOpcode.INIT || op === FuseOpcode.DESTROY) && r.chance(0.8)) op = FuseOpcode.LOOKUP;
  let b: Buffer;
  const mode = r.int(10);
  if (mode < 7) b = body(r, op, k);
  else if (mode < 9) {
    const sizes = [0, 1, 7, 8, 9, 15, 16, 17, 24, 39, 40, 41, 63, 64, 65, 88, 104, 128];
    b = r.bytes(r.pick(sizes) + (r.chance(0.3) ? r.int(8) : 0));
  } else b = r.bytes(r.int(70 * 1024));
  if (r.chance(0.05)) b = b.subarray(0, r.int(b.length + 1)); // truncated
  const nodeid = r.chance(0.85) ? r.pick(k.nodeids) : r.pick([0n, 1n, r.u64(), 2n ** 64n - 1n, (3n << 56n) | 1n]);
  const msg = Buffer.alloc(40 + b.length);
  b.copy(msg, 40);
  let len = msg.length;
  if (r.chance(0.1)) len = r.pick([0, 1, 39, 40, msg.length - 1, msg.length + 1, msg.length + 4096, 0xffffffff, r.u32()]) >>> 0;
  FuseInHeader.encode({
    len, opcode: op, unique, nodeid, uid: r.pick([0, 0, 1000, 12345]), gid: r.pick([0, 100, 12345]), pid: r.u32(),
    totalExtlen: r.chance(0.05) ? r.int(0x10000) : 0,
  }, msg);
  return { msg, op };
}

/** Learn nodeids / fhs / lookups from a good reply. */
class Ledger implements Known {
  nodeids: bigint[] = [1n, PT_ROOT, RAFS_ROOT];
  fhs: bigint[] = [];
  lookups = new Map<bigint, number>();
  handles: [bigint, bigint, boolean][] = [];

  private entry(e: { ino: bigint }): void {
    if (e.ino === 0n) return;
    this.lookups.set(e.ino, (this.lookups.get(e.ino) ?? 0) + 1);
    if (!this.nodeids.includes(e.ino)) {
      this.nodeids.push(e.ino);
      if (this.nodeids.length > 300) this.nodeids.splice(3 + (Number(e.ino & 0xffn) % 200), 1);
    }
  }

  learn(op: number, nodeid: bigint, reply: Buffer): void {
    const h = FuseOutHeader.decode(reply);
    if (h.error !== 0) return;
    if (op === FuseOpcode.INIT || op === FuseOpcode.DESTROY) {
      // a new session: the old nodeids and handles are gone (their counts stay for the sweep)
      this.nodeids = this.nodeids.slice(0, 3);
      this.fhs = [];
      return;
    }
    const p = reply.subarray(16);
    if ([FuseOpcode.LOOKUP, FuseOpcode.MKDIR, FuseOpcode.MKNOD, FuseOpcode.SYMLINK, FuseOpcode.LINK].includes(op) && p.length >= 128) this.entry(FuseEntryOut.decode(p));
    if (op === FuseOpcode.CREATE && p.length >= 144) {
      const e = FuseEntryOut.decode(p);
      this.entry(e);
      const fh = FuseOpenOut.decode(p, 128).fh;
      this.handles.push([e.ino, fh, false]);
      this.fhs.push(fh);
    }
    if ((op === FuseOpcode.OPEN || op === FuseOpcode.OPENDIR) && p.length >= 16) {
      const fh = FuseOpenOut.decode(p).fh;
      this.handles.push([nodeid, fh, op === FuseOpcode.OPENDIR]);
      this.fhs.push(fh);
    }
    if (op === FuseOpcode.READDIRPLUS) {
      for (let o = 0; o + 152 <= p.length;) {
        let d: ReturnType<typeof decodeDirentplus>;
        try { d = decodeDirentplus(p, o); } catch { break; }
        if (d.name.length === 0 || d.next <= o) break;
        const dot = d.name.length <= 2 && d.name.every((c) => c === 0x2e);
        if (!dot) this.entry(d.entry);
        o = d.next;
      }
    }
    if (this.fhs.length > 200) this.fhs.splice(0, 100);
  }
}

interface Checked { replies: number; bytes: number; errnos: Map<number, number>; problems: string[]; thrown: string[]; erangeOpens: number; silentOpens: number }

function check(c: Checked, op: number, unique: bigint, n: number, w: BufferWriter, nodeid: bigint): void {
  if (n !== w.bytesWritten()) { c.problems.push(`${FuseOpcode[op] ?? op}: returned ${n}, wrote ${w.bytesWritten()}`); return; }
  if (n === 0) {
    if ((op === FuseOpcode.OPEN || op === FuseOpcode.OPENDIR || op === FuseOpcode.CREATE) && nodeid >> 56n === 1n) c.silentOpens++;
    return;
  }
  if (op === FuseOpcode.FORGET || op === FuseOpcode.BATCH_FORGET || op === FuseOpcode.INTERRUPT) c.problems.push(`${FuseOpcode[op]} got a reply`);
  const raw = w.bytes();
  const p = replyProblem({ used: n, hdr: n >= 16 ? FuseOutHeader.decode(raw) : undefined, payload: raw.subarray(16), raw, ms: 0 });
  if (p) { c.problems.push(`${FuseOpcode[op] ?? op}: ${p}`); return; }
  const h = FuseOutHeader.decode(raw);
  if (h.unique !== unique) c.problems.push(`${FuseOpcode[op] ?? op}: unique ${h.unique} != ${unique}`);
  c.replies++;
  c.bytes += n;
  c.errnos.set(-h.error, (c.errnos.get(-h.error) ?? 0) + 1);
  // diagnostics for the handle count: a passthrough OPEN/OPENDIR/CREATE answered ERANGE had opened a handle
  if ((op === FuseOpcode.INIT || op === FuseOpcode.DESTROY) && h.error === 0) { c.erangeOpens = 0; c.silentOpens = 0; }
  if ((op === FuseOpcode.OPEN || op === FuseOpcode.OPENDIR || op === FuseOpcode.CREATE) && h.error === -E.ERANGE && nodeid >> 56n === 1n) c.erangeOpens++;
}

const INIT_MSG = (unique: bigint) => {
  const b = FuseInitIn.encode({ major: 7, minor: 36, maxReadahead: 131072, flags: 0xffffffffn | (1n << 32n) });
  const m = Buffer.alloc(104);
  FuseInHeader.encode({ len: 104, opcode: FuseOpcode.INIT, unique, nodeid: 0n, uid: 0, gid: 0, pid: 1, totalExtlen: 0 }, m);
  b.copy(m, 40);
  return m;
};

async function call(server: FuseServer, msg: Buffer, room = MIB + 4096): Promise<{ n: number; w: BufferWriter }> {
  const w = new BufferWriter(Buffer.alloc(room));
  const n = await server.handleMessage(new BufferReader(msg), w);
  return { n, w };
}

function req(op: number, nodeid: bigint, b: Buffer, unique: bigint): Buffer {
  const m = Buffer.alloc(40 + b.length);
  FuseInHeader.encode({ len: m.length, opcode: op, unique, nodeid, uid: 0, gid: 0, pid: 1, totalExtlen: 0 }, m);
  b.copy(m, 40);
  return m;
}

/** FORGET every lookup handed out, RELEASE every handle. */
async function sweep(server: FuseServer, led: Ledger, unique: () => bigint): Promise<void> {
  for (const [ino, fh, dir] of led.handles) {
    await call(server, req(dir ? FuseOpcode.RELEASEDIR : FuseOpcode.RELEASE, ino, FuseReleaseIn.encode({ fh, flags: 0, releaseFlags: 0, lockOwner: 0n }), unique()), 4096);
  }
  for (const [ino, n] of led.lookups) await call(server, req(FuseOpcode.FORGET, ino, FuseForgetIn.encode({ nlookup: n }), unique()), 0);
}

/** Valid requests still give the right answers. */
async function sanity(server: FuseServer, share: string, unique: () => bigint): Promise<void> {
  const ok = async (m: Buffer, room = MIB + 4096) => {
    const { n, w } = await call(server, m, room);
    assert.ok(n >= 16, 'no reply');
    const h = FuseOutHeader.decode(w.bytes());
    assert.is(h.error, 0, `${FuseOpcode[m.readUInt32LE(4)]} failed: ${h.error}`);
    return w.bytes().subarray(16);
  };
  const lookup = async (p: bigint, n: string) => FuseEntryOut.decode(await ok(req(FuseOpcode.LOOKUP, p, Buffer.from(`${n}\0`), unique())));
  // RAFS cannot be changed by the fuzzer: its bytes must come back exact
  const rafs = await lookup(1n, 'rafs');
  const hello = await lookup(rafs.ino, 'hello');
  assert.is(hello.attr.size, HELLO.length);
  await ok(req(FuseOpcode.GETATTR, hello.ino, FuseGetattrIn.encode({ getattrFlags: 0, fh: 0n }), unique()));
  const data = await ok(req(FuseOpcode.READ, hello.ino, FuseReadIn.encode({ fh: 0n, offset: 0, size: 1 << 20, readFlags: 0, lockOwner: 0n, flags: 0 }), unique()));
  assert.ok(data.equals(HELLO), 'RAFS READ returns the file');
  // the passthrough: a file written on the host now
  fs.chmodSync(share, 0o755);
  const fresh = Buffer.from('written on the host after the fuzz\n');
  fs.writeFileSync(path.join(share, 'after-fuzz'), fresh);
  const pt = await lookup(1n, 'pt');
  const f = await lookup(pt.ino, 'after-fuzz');
  assert.is(f.attr.size, fresh.length);
  const fh = FuseOpenOut.decode(await ok(req(FuseOpcode.OPEN, f.ino, FuseOpenIn.encode({ flags: 0, openFlags: 0 }), unique()))).fh;
  const got = await ok(req(FuseOpcode.READ, f.ino, FuseReadIn.encode({ fh, offset: 0, size: 4096, readFlags: 0, lockOwner: 0n, flags: 0 }), unique()));
  assert.ok(got.equals(fresh), 'passthrough READ returns the file');
  await ok(req(FuseOpcode.RELEASE, f.ino, FuseReleaseIn.encode({ fh, flags: 0, releaseFlags: 0, lockOwner: 0n }), unique()), 4096);
}

test(`fuzz FUSE bodies through BufferReader/BufferWriter (seed 0x${SEED.toString(16)}, ${ITER} requests)`, async () => {
  const wld = await world('direct');
  const { server, pfs, share } = wld;
  try {
    let u = 1n;
    const unique = () => u++;
    await call(server, INIT_MSG(unique()));
    const r = rng(SEED);
    const led = new Ledger();
    const c: Checked = { replies: 0, bytes: 0, errnos: new Map(), problems: [], thrown: [], erangeOpens: 0, silentOpens: 0 };
    const heap0 = process.memoryUsage().heapUsed;
    const t0 = performance.now();
    let maxInodes = 0, maxHandles = 0;
    for (let i = 0; i < ITER; i++) {
      const batch = r.chance(0.1) ? 1 + r.int(8) : 1; // sometimes several at once
      const runs: Promise<void>[] = [];
      for (let j = 0; j < batch; j++) {
        const un = unique();
        const { msg, op } = message(r, led, un);
        const room = r.pick([0, 8, 15, 16, 17, 24, 100, 144, 4096, 65552, 131088, MIB + 16, MIB + 4096]);
        const nodeid = msg.readBigUInt64LE(16);
        runs.push((async () => {
          const w = new BufferWriter(Buffer.alloc(room));
          let n: number;
          try {
            n = await server.handleMessage(new BufferReader(msg), w);
          } catch (e) {
            c.thrown.push(`${FuseOpcode[op] ?? op}: ${(e as Error).stack?.split('\n').slice(0, 3).join(' | ')}`);
            return;
          }
          check(c, op, un, n, w, nodeid);
          if (n >= 16) led.learn(op, nodeid, w.bytes());
        })());
      }
      await Promise.all(runs);
      if (!server.initialized) await call(server, INIT_MSG(unique())); // after a DESTROY or a fuzzed re-INIT
      maxInodes = Math.max(maxInodes, pfs.inodeCount);
      maxHandles = Math.max(maxHandles, pfs.handleCount);
    }
    const ms = performance.now() - t0;
    const inodesBefore = pfs.inodeCount, handlesBefore = pfs.handleCount;
    await sweep(server, led, unique);
    const heap1 = process.memoryUsage().heapUsed;
    const inodesAfter = pfs.inodeCount, handlesAfter = pfs.handleCount;
    const after = snapshotTree(wld.outside, ['share']);
    const diff = diffSnapshots(wld.before, after);
    const top = [...c.errnos].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([e, n]) => `${e}:${n}`).join(' ');
    console.log(`fuzz: ${ITER} rounds in ${(ms / 1000).toFixed(1)} s, ${c.replies} replies (${(c.bytes / MIB).toFixed(1)} MiB), errnos ${top}; ${c.thrown.length} exceptions escaped, ${c.problems.length} malformed replies; passthrough inodes max ${maxInodes}, ${inodesBefore} → ${inodesAfter} after the sweep, handles max ${maxHandles}, ${handlesBefore} → ${handlesAfter} (since the last session reset, passthrough OPEN/OPENDIR/CREATE answered ERANGE: ${c.erangeOpens}, left without any reply for lack of room: ${c.silentOpens}); heap ${(heap0 / MIB).toFixed(0)} → ${(heap1 / MIB).toFixed(0)} MiB; ${diff.length} changes outside the share`);
    for (const x of [...c.thrown.slice(0, 5), ...c.problems.slice(0, 5)]) console.log(`fuzz:   ${x}`);
    await sanity(server, share, unique);
    assert.equal(c.thrown, [], 'exceptions escaped handleMessage');
    assert.equal(c.problems, [], 'malformed replies');
    assert.equal(diff, [], 'something outside the share changed');
    assert.is(inodesAfter, 1, 'passthrough inodes left after FORGET of every lookup');
    assert.is(handlesAfter, 0, 'passthrough handles left after RELEASE of every handle (an OPEN/CREATE whose reply did not fit?)');
    assert.ok(heap1 - heap0 < 200 * MIB, `heap grew by ${((heap1 - heap0) / MIB).toFixed(0)} MiB`);
  } finally {
    await wld.device.close();
    pfs.close();
  }
});

test(`fuzz FUSE bodies through a vhost-user socket with random descriptor layouts (seed 0x${(SEED + 1).toString(16)}, ${VHOST_ITER} requests)`, async () => {
  const wld = await world('vhost');
  const sock = path.join(wld.dir, 'vhost.sock');
  const daemon = new VirtioFsDaemon(wld.server, { socketPath: sock });
  await daemon.start();
  const s = await GuestSession.connect(sock, { ramSize: 64 * MIB, queueSize: 1024, slabSize: 256 * 1024, slabs: 64 });
  const r = rng(SEED + 1);
  const led = new Ledger();
  let replies = 0, none = 0, lostOpens = 0;
  const problems: string[] = [];
  const t0 = performance.now();
  try {
    await s.init();
    for (let i = 0; i < VHOST_ITER; i++) {
      const batch = r.chance(0.2) ? 1 + r.int(16) : 1;
      const runs: Promise<void>[] = [];
      for (let j = 0; j < batch; j++) {
        const un = s.nextUnique++;
        const { msg, op } = message(r, led, un);
        const room = r.pick([0, 8, 16, 17, 144, 4096, 65552, 131088]);
        const nodeid = msg.readBigUInt64LE(16);
        const indirect = r.chance(0.3);
        const readSplit = r.chance(0.5) ? msg.length : Math.max(Math.ceil(msg.length / 30), 1 + r.int(Math.max(1, msg.length)));
        const writeSplit = r.chance(0.5) ? room : Math.max(Math.ceil(room / 30), 1 + r.int(Math.max(1, room)));
        runs.push((async () => {
          const rep = await s.call(msg, room, { q: r.int(2), readSplit, writeSplit, indirect, timeoutMs: 20_000 });
          const opener = (op === FuseOpcode.OPEN || op === FuseOpcode.OPENDIR || op === FuseOpcode.CREATE) && nodeid >> 56n === 1n;
          if ((op === FuseOpcode.INIT || op === FuseOpcode.DESTROY) && rep.hdr?.error === 0) lostOpens = 0;
          if (opener && (rep.used === 0 || rep.hdr?.error === -E.ERANGE)) lostOpens++;
          if (rep.used === 0) { none++; return; }
          const p = replyProblem(rep);
          if (p) { problems.push(`${FuseOpcode[op] ?? op}: ${p}`); return; }
          if (rep.hdr!.unique !== un) problems.push(`${FuseOpcode[op] ?? op}: unique ${rep.hdr!.unique} != ${un}`);
          if (op === FuseOpcode.FORGET || op === FuseOpcode.BATCH_FORGET || op === FuseOpcode.INTERRUPT) problems.push(`${FuseOpcode[op]} got a reply`);
          replies++;
          led.learn(op, nodeid, rep.raw);
        })());
      }
      await Promise.all(runs);
      if (!wld.server.initialized) await s.init();
    }
    const ms = performance.now() - t0;
    const inodesBefore = wld.pfs.inodeCount;
    // the sweep and the sanity checks through the socket too
    for (const [ino, fh, dir] of led.handles) await s.call(req(dir ? FuseOpcode.RELEASEDIR : FuseOpcode.RELEASE, ino, FuseReleaseIn.encode({ fh, flags: 0, releaseFlags: 0, lockOwner: 0n }), s.nextUnique++), 4096);
    for (const [ino, n] of led.lookups) await s.call(req(FuseOpcode.FORGET, ino, FuseForgetIn.encode({ nlookup: n }), s.nextUnique++), 0);
    const inodesSwept = wld.pfs.inodeCount, handlesSwept = wld.pfs.handleCount;
    const rafs = await s.call(req(FuseOpcode.LOOKUP, 1n, Buffer.from('rafs\0'), s.nextUnique++));
    const hello = await s.call(req(FuseOpcode.LOOKUP, FuseEntryOut.decode(rafs.payload).ino, Buffer.from('hello\0'), s.nextUnique++));
    const data = await s.call(req(FuseOpcode.READ, FuseEntryOut.decode(hello.payload).ino, FuseReadIn.encode({ fh: 0n, offset: 0, size: 1 << 20, readFlags: 0, lockOwner: 0n, flags: 0 }), s.nextUnique++), (1 << 20) + 16, { readSplit: 7, writeSplit: 4096, indirect: true });
    const diff = diffSnapshots(wld.before, snapshotTree(wld.outside, ['share']));
    console.log(`fuzz (vhost-user): ${VHOST_ITER} rounds in ${(ms / 1000).toFixed(1)} s, ${replies} replies, ${none} chains used without a reply, ${problems.length} malformed; passthrough inodes ${inodesBefore} → ${inodesSwept} after the sweep, handles ${handlesSwept} (since the last session reset, passthrough OPEN/OPENDIR/CREATE answered ERANGE or not at all: ${lostOpens}); ${diff.length} changes outside the share`);
    for (const x of problems.slice(0, 5)) console.log(`fuzz:   ${x}`);
    assert.is(data.hdr?.error, 0);
    assert.ok(data.payload.equals(HELLO), 'READ through the socket returns the RAFS file');
    assert.equal(problems, [], 'malformed replies');
    assert.equal(diff, [], 'something outside the share changed');
    assert.is(inodesSwept, 1, 'passthrough inodes left after the sweep');
    assert.is(handlesSwept, 0, 'passthrough handles left after the sweep (an OPEN/CREATE whose reply did not fit?)');
  } finally {
    s.close();
    daemon.stop();
    await wld.device.close();
    wld.pfs.close();
  }
});

test.run();
