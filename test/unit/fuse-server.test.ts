import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  FUSE_ABORT_ERROR, FUSE_ASYNC_DIO, FUSE_ASYNC_READ, FUSE_ATOMIC_O_TRUNC, FUSE_AUTO_INVAL_DATA, FUSE_BIG_WRITES,
  FUSE_CACHE_SYMLINKS, FUSE_CREATE_SUPP_GROUP, FUSE_DO_READDIRPLUS, FUSE_DONT_MASK, FUSE_EXPLICIT_INVAL_DATA,
  FUSE_EXPORT_SUPPORT, FUSE_FLOCK_LOCKS, FUSE_GETATTR_FH, FUSE_HANDLE_KILLPRIV, FUSE_HANDLE_KILLPRIV_V2,
  FUSE_HAS_IOCTL_DIR, FUSE_INIT_EXT, FUSE_MAX_PAGES, FUSE_NO_OPENDIR_SUPPORT, FUSE_NO_OPEN_SUPPORT,
  FUSE_PARALLEL_DIROPS, FUSE_POSIX_ACL, FUSE_POSIX_LOCKS, FUSE_READDIRPLUS_AUTO, FUSE_SECURITY_CTX,
  FUSE_SETXATTR_EXT, FUSE_SPLICE_MOVE, FUSE_SPLICE_READ, FUSE_SPLICE_WRITE, FUSE_SUBMOUNTS, FUSE_WRITEBACK_CACHE,
  FuseAttrOut, FuseBatchForgetIn, FuseCreateIn, FuseEntryOut, FuseForgetIn, FuseForgetOne, FuseGetattrIn,
  FuseGetxattrIn, FuseInitOut, FuseKstatfs, FuseMkdirIn, FuseOpcode, FuseOpenIn, FuseOpenOut, FuseReadIn,
  FuseRename2In, FuseRenameIn, FuseSetattrIn, FuseSetxattrIn, FuseWriteIn, FATTR_MODE, FATTR_SIZE,
  decodeDirent, decodeDirentplus, direntSize,
} from '../../src/virtiofs/fuse/abi';
import { FuseServer } from '../../src/virtiofs/fuse/server';
import type { FileSystem } from '../../src/common/filesystem';
import { ErrnoError } from '../../src/common/errno';
import { BufferReader, BufferWriter, GatherWriter } from '../../src/virtiofs/fuse/transport';
import { MemoryFs, call, cstr, initBody, req, uniqueOf } from '../support/memory-fs';
import { isCached, writeNotCached } from '../support/page-cache';
import * as fsys from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ENOENT = -2, EIO = -5, EINVAL = -22, ERANGE = -34, ENOSYS = -38, ENODATA = -61, EPROTO = -71, EROFS = -30;

/** What a Linux 6.x guest offers (kata-contract §8.2). */
const KERNEL_FLAGS =
  FUSE_ASYNC_READ | FUSE_POSIX_LOCKS | FUSE_ATOMIC_O_TRUNC | FUSE_EXPORT_SUPPORT | FUSE_BIG_WRITES | FUSE_DONT_MASK |
  FUSE_SPLICE_WRITE | FUSE_SPLICE_MOVE | FUSE_SPLICE_READ | FUSE_FLOCK_LOCKS | FUSE_HAS_IOCTL_DIR | FUSE_AUTO_INVAL_DATA |
  FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO | FUSE_ASYNC_DIO | FUSE_WRITEBACK_CACHE | FUSE_NO_OPEN_SUPPORT |
  FUSE_PARALLEL_DIROPS | FUSE_HANDLE_KILLPRIV | FUSE_POSIX_ACL | FUSE_ABORT_ERROR | FUSE_MAX_PAGES | FUSE_CACHE_SYMLINKS |
  FUSE_NO_OPENDIR_SUPPORT | FUSE_EXPLICIT_INVAL_DATA | FUSE_SUBMOUNTS | FUSE_HANDLE_KILLPRIV_V2 | FUSE_SETXATTR_EXT |
  FUSE_INIT_EXT | FUSE_SECURITY_CTX | FUSE_CREATE_SUPP_GROUP;

const BASE_WANTED = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES |
  FUSE_CACHE_SYMLINKS | FUSE_AUTO_INVAL_DATA | FUSE_INIT_EXT;

function tree(opts: ConstructorParameters<typeof MemoryFs>[0] = {}): MemoryFs {
  const fs = new MemoryFs(opts);
  fs.addDir('dir');
  fs.addFile('dir/a', 'A');
  fs.addFile('dir/bb', 'BB');
  fs.addFile('dir/ccc', 'CCC');
  fs.addFile('big', Buffer.from(Array.from({ length: 10000 }, (_, i) => i % 251)));
  fs.addSymlink('link', 'dir/a');
  fs.setXattr('big', 'user.k', 'value123');
  fs.setXattr('big', 'trusted.overlay.opaque', 'y');
  return fs;
}

const ready0 = (fs: MemoryFs) => ready(fs);

async function ready(fs = tree(), opts: ConstructorParameters<typeof FuseServer>[1] = {}): Promise<{ fs: MemoryFs; s: FuseServer }> {
  const s = new FuseServer(fs, opts);
  const r = await call(s, req(FuseOpcode.INIT, 0n, initBody(38, KERNEL_FLAGS)));
  assert.is(r.hdr!.error, 0);
  return { fs, s };
}

// ---- INIT --------------------------------------------------------------------------

test('INIT 64-byte form: negotiated flags, sizes, exact reply layout', async () => {
  const fs = tree();
  const s = new FuseServer(fs, { readdirplus: true });
  assert.is(s.initialized, false);
  const msg = req(FuseOpcode.INIT, 0n, initBody(38, KERNEL_FLAGS));
  const r = await call(s, msg);
  assert.is(r.n, 16 + 64);
  assert.equal(r.hdr, { len: 80, error: 0, unique: uniqueOf(msg) });
  const o = FuseInitOut.decode(r.payload);
  assert.is(o.major, 7);
  assert.is(o.minor, 36);
  assert.is(o.maxReadahead, 131072);
  const want = BASE_WANTED | FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO;
  assert.is(o.flags, want, `flags 0x${o.flags.toString(16)}`);
  assert.is(o.flags & FUSE_WRITEBACK_CACHE, 0n);
  assert.is(o.maxWrite, 1 << 20);
  assert.is(o.maxPages, 256);
  assert.is(o.timeGran, 1);
  // raw: flags low word at 12, flags2 at 32 (no high bits wanted), unused tail zero
  assert.is(r.payload.readUInt32LE(12), Number(want));
  assert.is(r.payload.readUInt32LE(32), 0);
  assert.ok(r.payload.subarray(42).every((b) => b === 0));
  assert.is(fs.initCapable, KERNEL_FLAGS);
  assert.is(s.initialized, true);
  assert.is(s.minor, 36);
  assert.is(s.flags, want);
});

test("INIT with readdirplus 'always': DO_READDIRPLUS without READDIRPLUS_AUTO (every READDIR of a listing is a READDIRPLUS)", async () => {
  const s = new FuseServer(tree(), { readdirplus: 'always' });
  const o = FuseInitOut.decode((await call(s, req(FuseOpcode.INIT, 0n, initBody(38, KERNEL_FLAGS)))).payload);
  assert.is(o.flags, BASE_WANTED | FUSE_DO_READDIRPLUS);
  assert.is(o.flags & FUSE_READDIRPLUS_AUTO, 0n);
  // a kernel without READDIRPLUS gets neither
  const s2 = new FuseServer(tree(), { readdirplus: 'always' });
  const o2 = FuseInitOut.decode((await call(s2, req(FuseOpcode.INIT, 0n, initBody(38, KERNEL_FLAGS & ~FUSE_DO_READDIRPLUS)))).payload);
  assert.is(o2.flags & (FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO), 0n);
});

test('INIT 16-byte form (old kernel, no INIT_EXT) and minor < 23 reply size', async () => {
  const s = new FuseServer(tree());
  const flags = KERNEL_FLAGS & 0x3fff_ffffn & ~FUSE_INIT_EXT;
  let r = await call(s, req(FuseOpcode.INIT, 0n, initBody(31, flags, 16)));
  assert.is(r.n, 80);
  let o = FuseInitOut.decode(r.payload);
  assert.is(o.minor, 31);
  assert.is(o.flags, BASE_WANTED & ~FUSE_INIT_EXT);

  const s2 = new FuseServer(tree(), { maxWrite: 128 << 10 });
  r = await call(s2, req(FuseOpcode.INIT, 0n, initBody(22, FUSE_ASYNC_READ | FUSE_BIG_WRITES, 16)));
  assert.is(r.n, 16 + 24);
  o = FuseInitOut.decode(r.payload);
  assert.is(o.minor, 22);
  assert.is(o.maxWrite, 128 << 10);
  assert.is(o.flags, FUSE_ASYNC_READ | FUSE_BIG_WRITES);
});

test('INIT: fs.init restricts flags (protocol flags stay), maxReadahead capped, SETXATTR_EXT opt-in', async () => {
  const fs = tree();
  fs.initResult = FUSE_ASYNC_READ;
  const s = new FuseServer(fs, { maxReadahead: 4096, extraFlags: FUSE_SETXATTR_EXT });
  const r = await call(s, req(FuseOpcode.INIT, 0n, initBody(36, KERNEL_FLAGS)));
  const o = FuseInitOut.decode(r.payload);
  assert.is(o.flags, FUSE_ASYNC_READ | FUSE_MAX_PAGES | FUSE_INIT_EXT);
  assert.is(o.maxReadahead, 4096);

  const s2 = new FuseServer(tree(), { extraFlags: FUSE_SETXATTR_EXT });
  const o2 = FuseInitOut.decode((await call(s2, req(FuseOpcode.INIT, 0n, initBody(36, KERNEL_FLAGS)))).payload);
  assert.ok(o2.flags & FUSE_SETXATTR_EXT);
});

test('INIT: wrong major, too-old minor, short body', async () => {
  const s = new FuseServer(tree());
  const b6 = initBody(36, KERNEL_FLAGS);
  b6.writeUInt32LE(6, 0);
  let r = await call(s, req(FuseOpcode.INIT, 0n, b6));
  assert.is(r.n, 16);
  assert.is(r.hdr!.error, EPROTO);
  const b8 = initBody(36, KERNEL_FLAGS);
  b8.writeUInt32LE(8, 0);
  r = await call(s, req(FuseOpcode.INIT, 0n, b8));
  assert.is(r.n, 16 + 8);
  assert.is(r.payload.readUInt32LE(0), 7);
  assert.is(r.payload.readUInt32LE(4), 36);
  assert.is(s.initialized, false);
  r = await call(s, req(FuseOpcode.INIT, 0n, initBody(9, KERNEL_FLAGS)));
  assert.is(r.hdr!.error, EPROTO);
  r = await call(s, req(FuseOpcode.INIT, 0n, Buffer.alloc(12)));
  assert.is(r.hdr!.error, EINVAL);
  assert.is(s.initialized, false);
});

test('requests before INIT: EIO, no-reply ops dropped', async () => {
  const s = new FuseServer(tree());
  const msg = req(FuseOpcode.GETATTR, 1n, FuseGetattrIn.encode({ getattrFlags: 0, fh: 0n }));
  const r = await call(s, msg);
  assert.equal(r.hdr, { len: 16, error: EIO, unique: uniqueOf(msg) });
  assert.is((await call(s, req(FuseOpcode.FORGET, 5n, FuseForgetIn.encode({ nlookup: 1 })))).n, 0);
  assert.is((await call(s, req(FuseOpcode.DESTROY, 0n))).hdr!.error, EIO);
});

test('DESTROY then re-INIT; INIT on a live session starts over', async () => {
  const { fs, s } = await ready();
  let r = await call(s, req(FuseOpcode.DESTROY, 0n));
  assert.is(r.n, 16);
  assert.is(r.hdr!.error, 0);
  assert.is(fs.destroyed, 1);
  assert.is(s.destroyed, true);
  assert.is(s.initialized, false);
  r = await call(s, req(FuseOpcode.GETATTR, 1n, FuseGetattrIn.encode({ getattrFlags: 0, fh: 0n })));
  assert.is(r.hdr!.error, EIO);
  r = await call(s, req(FuseOpcode.INIT, 0n, initBody(36, KERNEL_FLAGS)));
  assert.is(r.hdr!.error, 0);
  assert.is(s.destroyed, false);
  r = await call(s, req(FuseOpcode.INIT, 0n, initBody(36, KERNEL_FLAGS)));
  assert.is(r.hdr!.error, 0);
  assert.is(fs.destroyed, 2);
});

// ---- lookups and attributes ------------------------------------------------------------

test('LOOKUP: exact entry_out bytes; ENOENT; missing NUL', async () => {
  const { fs, s } = await ready();
  const msg = req(FuseOpcode.LOOKUP, 1n, cstr('big'));
  const r = await call(s, msg);
  assert.is(r.n, 16 + 128);
  assert.equal(r.hdr, { len: 144, error: 0, unique: uniqueOf(msg) });
  const ino = fs.inoOf('big');
  const p = r.payload;
  assert.is(p.readBigUInt64LE(0), ino); // nodeid
  assert.is(p.readBigUInt64LE(8), 7n); // generation
  assert.is(p.readBigUInt64LE(16), 1n); // entry_valid
  assert.is(p.readBigUInt64LE(24), 1n); // attr_valid
  assert.is(p.readUInt32LE(32), 500_000_000); // entry_valid_nsec
  assert.is(p.readUInt32LE(36), 500_000_000);
  assert.is(p.readBigUInt64LE(40), ino); // attr.ino
  assert.is(p.readBigUInt64LE(48), 10000n); // size
  assert.is(p.readBigUInt64LE(56), 20n); // blocks
  assert.is(p.readBigUInt64LE(64), 1700000000n); // atime
  assert.is(p.readUInt32LE(88), 1); // atimensec
  assert.is(p.readUInt32LE(100), 0o100644); // mode
  assert.is(p.readUInt32LE(120), 4096); // blksize
  assert.is(p.readUInt32LE(124), 0); // flags
  assert.is(fs.lookupCount(ino), 1);
  const e = FuseEntryOut.decode(p);
  assert.is(e.entryTimeout, 1.5);

  let r2 = await call(s, req(FuseOpcode.LOOKUP, 1n, cstr('nope')));
  assert.is(r2.n, 16);
  assert.is(r2.hdr!.error, ENOENT);
  r2 = await call(s, req(FuseOpcode.LOOKUP, 1n, Buffer.from('big')));
  assert.is(r2.hdr!.error, EINVAL);
});

test('GETATTR with and without fh; READLINK; STATFS', async () => {
  const { fs, s } = await ready();
  const ino = fs.inoOf('dir/a');
  let r = await call(s, req(FuseOpcode.GETATTR, ino, FuseGetattrIn.encode({ getattrFlags: FUSE_GETATTR_FH, fh: 9n })));
  assert.is(r.n, 16 + 104);
  const a = FuseAttrOut.decode(r.payload);
  assert.is(a.attr.ino, ino);
  assert.is(a.attr.size, 1);
  assert.is(a.timeout, 1.5);
  assert.is(r.payload.readUInt32LE(12), 0); // dummy
  r = await call(s, req(FuseOpcode.READLINK, fs.inoOf('link')));
  assert.is(r.payload.toString(), 'dir/a');
  assert.is(r.n, 16 + 5);
  r = await call(s, req(FuseOpcode.READLINK, ino));
  assert.is(r.hdr!.error, EINVAL);
  r = await call(s, req(FuseOpcode.STATFS, 1n));
  assert.is(r.n, 16 + 80);
  const st = FuseKstatfs.decode(r.payload);
  assert.is(st.blocks, 1000);
  assert.is(st.bsize, 4096);
  assert.is(st.namelen, 255);
});

// ---- READ ------------------------------------------------------------------------------

test('OPEN + READ gathers the buffers, truncates to size, short at EOF, limited by writer room', async () => {
  const { fs, s } = await ready(tree({ readChunk: 3000 }));
  const ino = fs.inoOf('big');
  const data = Buffer.from(Array.from({ length: 10000 }, (_, i) => i % 251));
  let r = await call(s, req(FuseOpcode.OPEN, ino, FuseOpenIn.encode({ flags: 0, openFlags: 0 })));
  assert.equal(FuseOpenOut.decode(r.payload), { fh: 100n + ino, openFlags: 2, backingId: 0 });
  const read = (offset: number, size: number) => req(FuseOpcode.READ, ino, FuseReadIn.encode({ fh: 100n + ino, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 }));
  r = await call(s, read(100, 9000));
  assert.is(r.n, 16 + 9000);
  assert.ok(r.payload.equals(data.subarray(100, 9100)));
  r = await call(s, read(9000, 4096));
  assert.is(r.n, 16 + 1000);
  assert.ok(r.payload.equals(data.subarray(9000)));
  r = await call(s, read(20000, 4096));
  assert.is(r.n, 16);
  assert.is(r.hdr!.error, 0);
  r = await call(s, read(0, 4096), 16 + 500);
  assert.is(r.n, 16 + 500);
  assert.ok(r.payload.equals(data.subarray(0, 500)));
});

test('READ truncates an over-long filesystem answer to the requested size', async () => {
  const fs = tree();
  fs.read = async () => [Buffer.alloc(3000, 1), Buffer.alloc(3000, 2)];
  const { s } = await ready(fs);
  const r = await call(s, req(FuseOpcode.READ, 2n, FuseReadIn.encode({ fh: 0n, offset: 0, size: 4000, readFlags: 0, lockOwner: 0n, flags: 0 })));
  assert.is(r.n, 16 + 4000);
  assert.is(r.payload[2999], 1);
  assert.is(r.payload[3000], 2);
});

test('READ via readSync is answered before handle returns; undefined falls back to read; holds end after the reply', async () => {
  const fs: MemoryFs & { readSync?: FileSystem['readSync'] } = tree();
  const calls: string[] = [];
  let ready = true;
  fs.readSync = (ctx, _ino, _fh, _offset, size) => {
    calls.push('sync');
    if (!ready) return undefined;
    ctx.hold?.(() => calls.push('released'));
    return [Buffer.alloc(3000, 7), Buffer.alloc(size - 3000, 8)];
  };
  const asyncRead = fs.read.bind(fs);
  fs.read = async (...a) => { calls.push('async'); return asyncRead(...a); };
  const { s } = await ready0(fs);
  const msg = (size: number) => req(FuseOpcode.READ, fs.inoOf('big'), FuseReadIn.encode({ fh: 0n, offset: 0, size, readFlags: 0, lockOwner: 0n, flags: 0 }));
  const w = new BufferWriter(Buffer.alloc(8192));
  const n = s.handle(new BufferReader(msg(4000)), w);
  assert.type(n, 'number', 'answered synchronously');
  assert.is(n, 16 + 4000);
  assert.equal(calls, ['sync', 'released']);
  assert.is(w.bytes()[16], 7);
  assert.is(w.bytes()[16 + 3000], 8);
  // not ready: the async read answers, with the same reply rules
  ready = false;
  calls.length = 0;
  const w2 = new BufferWriter(Buffer.alloc(8192));
  const p = s.handle(new BufferReader(msg(4000)), w2);
  assert.instance(p, Promise);
  assert.is(await p, 16 + 4000);
  assert.equal(calls, ['sync', 'async']);
  const big = Buffer.from(Array.from({ length: 10000 }, (_, i) => i % 251));
  assert.ok(w2.bytes().subarray(16).equals(big.subarray(0, 4000)));
  // a readSync that throws is an error reply, still synchronous
  fs.readSync = () => { throw new ErrnoError('ENOENT', 'gone'); };
  const w3 = new BufferWriter(Buffer.alloc(8192));
  assert.is(s.handle(new BufferReader(msg(4000)), w3), 16);
  assert.is(w3.bytes().readInt32LE(4), ENOENT);
});

test('READ of file slices the page cache does not hold: read on the thread pool (a promise), never on the loop; held slices stay synchronous', async () => {
  const file = path.join(os.tmpdir(), `fuse-slices-${process.pid}`);
  const data = Buffer.from(Array.from({ length: 1 << 20 }, (_, i) => (i * 13 + 5) & 0xff));
  const bytes = (x: BufferWriter | GatherWriter) => (x instanceof BufferWriter ? x.bytes() : Buffer.concat(x.pieces()));
  try {
    for (const writer of [() => new BufferWriter(Buffer.alloc(16 + 8192)), () => new GatherWriter(16 + 8192, Buffer.alloc(16 + 8192))]) {
      // written anew for each writer: a read also brings the kernel's readahead in
      const why = writeNotCached(file, data);
      if (why) { console.log(`SKIP page-cache-only READ test: ${why}`); return; }
      const fd = fsys.openSync(file, 'r');
      try {
        const fs: MemoryFs & { readSync?: FileSystem['readSync'] } = tree();
        fs.readSync = (_ctx, _ino, _fh, offset, size) => [Buffer.from('head'), { fd, position: offset, length: size - 4 }];
        const { s } = await ready0(fs);
        const msg = (offset: number, size: number) => req(FuseOpcode.READ, fs.inoOf('big'), FuseReadIn.encode({ fh: 0n, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 }));
        const w = writer();
        const p = s.handle(new BufferReader(msg(4096, 8192)), w);
        assert.instance(p, Promise, 'not answered on the loop');
        assert.is(await p, 16 + 8192);
        const want = Buffer.concat([Buffer.from('head'), data.subarray(4096, 4096 + 8192 - 4)]);
        assert.ok(bytes(w).subarray(16).equals(want), 'the file\'s bytes, once, after the header');
        assert.is(bytes(w).readUInt32LE(0), 16 + 8192);
        // the pool's read brought them into the page cache: the next READ of them is answered at once
        assert.ok(isCached(file, 4096, 8192 - 4));
        const w2 = writer();
        assert.is(s.handle(new BufferReader(msg(4096, 8192)), w2), 16 + 8192);
        assert.ok(bytes(w2).subarray(16).equals(want));
        // a slice past the end of the file is still EIO
        fs.readSync = () => [{ fd, position: data.length - 100, length: 200 }];
        assert.is((await call(s, msg(0, 200))).hdr!.error, EIO);
      } finally {
        fsys.closeSync(fd);
      }
    }
  } finally {
    fsys.rmSync(file, { force: true });
  }
});

// ---- READDIR -----------------------------------------------------------------------------

function readdirMsg(op: FuseOpcode, ino: bigint, offset: number, size: number): Buffer {
  return req(op, ino, FuseReadIn.encode({ fh: 0n, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 }));
}

test('READDIR packs whole entries up to size and resumes by cookie', async () => {
  const { fs, s } = await ready();
  const dir = fs.inoOf('dir');
  // ".", ".." (24+8 each = 32) fit in 64; "a" (32) does not
  let r = await call(s, readdirMsg(FuseOpcode.READDIR, dir, 0, 64 + 31));
  assert.is(r.n, 16 + 64);
  let d = decodeDirent(r.payload, 0);
  assert.equal([d.ino, d.off, d.type, d.name.toString()], [dir, 1, 4, '.']);
  // exact bytes of the first record: namelen 1, type 4, '.', 7 zero pad bytes
  assert.is(r.payload.readUInt32LE(16), 1);
  assert.is(r.payload.readUInt32LE(20), 4);
  assert.is(r.payload[24], 0x2e);
  assert.ok(r.payload.subarray(25, 32).every((b) => b === 0));
  d = decodeDirent(r.payload, d.next);
  assert.equal([d.off, d.name.toString()], [2, '..']);
  assert.is(d.next, 64);
  // resume after cookie 2
  r = await call(s, readdirMsg(FuseOpcode.READDIR, dir, 2, 4096));
  const names: string[] = [];
  for (let off = 0; off < r.payload.length; ) {
    const e = decodeDirent(r.payload, off);
    names.push(`${e.name}:${e.off}:${e.type}`);
    off = e.next;
  }
  assert.equal(names, ['a:3:8', 'bb:4:8', 'ccc:5:8']);
  assert.is(r.payload.length, direntSize(1) + direntSize(2) + direntSize(3));
  r = await call(s, readdirMsg(FuseOpcode.READDIR, dir, 5, 4096));
  assert.is(r.n, 16);
  // too small for even one entry: empty reply
  r = await call(s, readdirMsg(FuseOpcode.READDIR, dir, 0, 10));
  assert.is(r.n, 16);
});

test('READDIRPLUS counts lookups only for entries packed; dots carry nodeid 0', async () => {
  const { fs, s } = await ready(tree(), { readdirplus: true });
  const dir = fs.inoOf('dir');
  const rec = (n: number) => (152 + n + 7) & ~7;
  // ".", "..", "a" fit; "bb" does not
  const size = rec(1) + rec(2) + rec(1) + rec(2) - 1;
  let r = await call(s, readdirMsg(FuseOpcode.READDIRPLUS, dir, 0, size));
  assert.is(r.n, 16 + rec(1) + rec(2) + rec(1));
  let e = decodeDirentplus(r.payload, 0);
  assert.is(e.name.toString(), '.');
  assert.is(e.entry.ino, 0n);
  assert.ok(r.payload.subarray(0, 128).every((b) => b === 0));
  e = decodeDirentplus(r.payload, e.next);
  e = decodeDirentplus(r.payload, e.next);
  assert.is(e.name.toString(), 'a');
  assert.is(e.entry.ino, fs.inoOf('dir/a'));
  assert.is(e.entry.attr.size, 1);
  assert.is(e.off, 3);
  assert.is(fs.lookupCount(fs.inoOf('dir/a')), 1);
  assert.is(fs.lookupCount(fs.inoOf('dir/bb')), 0);
  r = await call(s, readdirMsg(FuseOpcode.READDIRPLUS, dir, 3, 4096));
  e = decodeDirentplus(r.payload, 0);
  assert.is(e.name.toString(), 'bb');
  assert.is(fs.lookupCount(fs.inoOf('dir/bb')), 1);
  assert.is(fs.lookupCount(fs.inoOf('dir/ccc')), 1);
  assert.is(fs.lookupCount(dir), 0);
});

test('READDIR: partial results survive a later error; an error before any entry is returned', async () => {
  const fs = tree();
  let fail = true;
  fs.readdir = async (_c, _i, _f, _o, _p, add) => {
    add({ ino: 5n, offset: 1, type: 8, name: Buffer.from('x') });
    if (fail) throw new Error('boom');
  };
  const { s } = await ready(fs);
  let r = await call(s, readdirMsg(FuseOpcode.READDIR, 1n, 0, 4096));
  assert.is(r.hdr!.error, 0);
  assert.is(r.n, 16 + 32);
  fs.readdir = async () => { throw new Error('boom'); };
  fail = false;
  r = await call(s, readdirMsg(FuseOpcode.READDIR, 1n, 0, 4096));
  assert.is(r.hdr!.error, EIO);
});

// ---- xattrs ------------------------------------------------------------------------------

test('GETXATTR / LISTXATTR size protocol', async () => {
  const { fs, s } = await ready();
  const ino = fs.inoOf('big');
  const gx = (size: number, name: string) => req(FuseOpcode.GETXATTR, ino, [FuseGetxattrIn.encode({ size }), cstr(name)]);
  let r = await call(s, gx(0, 'user.k'));
  assert.is(r.n, 16 + 8);
  assert.is(r.payload.readUInt32LE(0), 8);
  assert.is(r.payload.readUInt32LE(4), 0);
  r = await call(s, gx(7, 'user.k'));
  assert.equal([r.n, r.hdr!.error], [16, ERANGE]);
  r = await call(s, gx(64, 'user.k'));
  assert.is(r.payload.toString(), 'value123');
  r = await call(s, gx(64, 'user.none'));
  assert.is(r.hdr!.error, ENODATA);

  const lx = (size: number) => req(FuseOpcode.LISTXATTR, ino, FuseGetxattrIn.encode({ size }));
  const names = 'user.k\0trusted.overlay.opaque\0';
  r = await call(s, lx(0));
  assert.is(r.payload.readUInt32LE(0), names.length);
  r = await call(s, lx(names.length - 1));
  assert.is(r.hdr!.error, ERANGE);
  r = await call(s, lx(names.length));
  assert.is(r.payload.toString(), names);
  r = await call(s, req(FuseOpcode.LISTXATTR, 1n, FuseGetxattrIn.encode({ size: 100 })));
  assert.is(r.n, 16);
  assert.is(r.hdr!.error, 0);
});

// ---- forget ------------------------------------------------------------------------------

test('FORGET and BATCH_FORGET: no reply, counts returned', async () => {
  const { fs, s } = await ready();
  const a = fs.inoOf('dir/a');
  const b = fs.inoOf('dir/bb');
  const dir = fs.inoOf('dir');
  for (let i = 0; i < 3; i++) await call(s, req(FuseOpcode.LOOKUP, dir, cstr('a')));
  await call(s, req(FuseOpcode.LOOKUP, dir, cstr('bb')));
  assert.is(fs.lookupCount(a), 3);
  let r = await call(s, req(FuseOpcode.FORGET, a, FuseForgetIn.encode({ nlookup: 2 })));
  assert.is(r.n, 0);
  assert.is(r.raw.length, 0);
  assert.is(fs.lookupCount(a), 1);
  r = await call(s, req(FuseOpcode.BATCH_FORGET, 0n, [
    FuseBatchForgetIn.encode({ count: 2 }), FuseForgetOne.encode({ nodeid: a, nlookup: 1 }), FuseForgetOne.encode({ nodeid: b, nlookup: 1 }),
  ]));
  assert.is(r.n, 0);
  assert.is(fs.lookupCount(a), 0);
  assert.is(fs.lookupCount(b), 0);
  // count larger than the body: the present ones are applied, still no reply
  r = await call(s, req(FuseOpcode.BATCH_FORGET, 0n, [FuseBatchForgetIn.encode({ count: 5 }), FuseForgetOne.encode({ nodeid: a, nlookup: 1 })]));
  assert.is(r.n, 0);
  // malformed FORGET: still no reply
  assert.is((await call(s, req(FuseOpcode.FORGET, a, Buffer.alloc(3)))).n, 0);
  assert.is((await call(s, req(FuseOpcode.INTERRUPT, 0n, Buffer.alloc(8)))).n, 0);
});

// ---- ENOSYS / EROFS ---------------------------------------------------------------------------

test('ENOSYS for unknown opcodes and absent methods; EROFS on read-only filesystems', async () => {
  const { s } = await ready();
  let r = await call(s, req(99, 1n));
  assert.equal([r.n, r.hdr!.error], [16, ENOSYS]);
  r = await call(s, req(FuseOpcode.GETLK, 1n, Buffer.alloc(48)));
  assert.is(r.hdr!.error, ENOSYS);

  const noLink = tree();
  Object.assign(noLink, { readlink: undefined, mkdir: undefined });
  const t = await ready(noLink);
  r = await call(t.s, req(FuseOpcode.READLINK, 2n));
  assert.is(r.hdr!.error, ENOSYS);
  r = await call(t.s, req(FuseOpcode.MKDIR, 1n, [FuseMkdirIn.encode({ mode: 0o755, umask: 0o22 }), cstr('x')]));
  assert.is(r.hdr!.error, ENOSYS);

  const ro = await ready(tree({ readOnly: true }));
  for (const msg of [
    req(FuseOpcode.MKDIR, 1n, [FuseMkdirIn.encode({ mode: 0o755, umask: 0 }), cstr('x')]),
    req(FuseOpcode.UNLINK, 1n, cstr('big')),
    req(FuseOpcode.WRITE, 2n, [FuseWriteIn.encode({ fh: 0n, offset: 0, size: 1, writeFlags: 0, lockOwner: 0n, flags: 0 }), Buffer.from('x')]),
    req(FuseOpcode.SETXATTR, 2n, [FuseSetxattrIn.encode({ size: 1, flags: 0 }), cstr('user.x'), Buffer.from('v')]),
    req(FuseOpcode.SETATTR, 2n, FuseSetattrIn.encode({ valid: FATTR_SIZE, size: 0 } as never)),
    req(FuseOpcode.FALLOCATE, 2n, Buffer.alloc(32)),
  ]) {
    r = await call(ro.s, msg);
    assert.equal([r.n, r.hdr!.error], [16, EROFS]);
  }
});

// ---- mutating ops ------------------------------------------------------------------------------

test('MKDIR / CREATE / WRITE / SETATTR / SYMLINK / RENAME / RENAME2 / SETXATTR / REMOVEXATTR / UNLINK', async () => {
  const { fs, s } = await ready();
  let r = await call(s, req(FuseOpcode.MKDIR, 1n, [FuseMkdirIn.encode({ mode: 0o777, umask: 0o022 }), cstr('new')], { uid: 1234, gid: 55 }));
  assert.is(r.n, 144);
  let e = FuseEntryOut.decode(r.payload);
  assert.is(e.attr.mode, 0o040755);
  assert.is(e.attr.uid, 1234);
  assert.is(e.attr.gid, 55);
  const newDir = e.ino;
  r = await call(s, req(FuseOpcode.CREATE, newDir, [FuseCreateIn.encode({ flags: 0o101, mode: 0o100666, umask: 0o022, openFlags: 0 }), cstr('f')]));
  assert.is(r.n, 16 + 128 + 16);
  e = FuseEntryOut.decode(r.payload);
  const open = FuseOpenOut.decode(r.payload, 128);
  assert.is(open.fh, 100n + e.ino);
  const f = e.ino;
  r = await call(s, req(FuseOpcode.WRITE, f, [FuseWriteIn.encode({ fh: open.fh, offset: 2, size: 5, writeFlags: 0, lockOwner: 0n, flags: 0 }), Buffer.from('hello')]));
  assert.is(r.n, 24);
  assert.is(r.payload.readUInt32LE(0), 5);
  r = await call(s, req(FuseOpcode.WRITE, f, [FuseWriteIn.encode({ fh: open.fh, offset: 0, size: 50, writeFlags: 0, lockOwner: 0n, flags: 0 }), Buffer.from('short')]));
  assert.is(r.hdr!.error, EINVAL);
  r = await call(s, req(FuseOpcode.SETATTR, f, FuseSetattrIn.encode({ valid: FATTR_MODE | FATTR_SIZE, mode: 0o600, size: 4 } as never)));
  const a = FuseAttrOut.decode(r.payload);
  assert.is(a.attr.mode, 0o100600);
  assert.is(a.attr.size, 4);
  r = await call(s, req(FuseOpcode.SYMLINK, newDir, [cstr('sl'), cstr('/target/path')]));
  e = FuseEntryOut.decode(r.payload);
  assert.is(e.attr.mode, 0o120777);
  r = await call(s, req(FuseOpcode.READLINK, e.ino));
  assert.is(r.payload.toString(), '/target/path');
  r = await call(s, req(FuseOpcode.RENAME, newDir, [FuseRenameIn.encode({ newdir: 1n }), cstr('f'), cstr('g')]));
  assert.is(r.n, 16);
  assert.is(r.hdr!.error, 0);
  r = await call(s, req(FuseOpcode.RENAME2, 1n, [FuseRename2In.encode({ newdir: newDir, flags: 4 }), cstr('g'), cstr('h')]));
  assert.is(r.hdr!.error, 0);
  assert.ok(fs.calls.includes(`rename0 ${newDir}`));
  assert.ok(fs.calls.includes('rename4 1'));
  r = await call(s, req(FuseOpcode.SETXATTR, f, [FuseSetxattrIn.encode({ size: 3, flags: 0 }), cstr('trusted.overlay.x'), Buffer.from('abc')]));
  assert.is(r.hdr!.error, 0);
  r = await call(s, req(FuseOpcode.GETXATTR, f, [FuseGetxattrIn.encode({ size: 10 }), cstr('trusted.overlay.x')]));
  assert.is(r.payload.toString(), 'abc');
  r = await call(s, req(FuseOpcode.REMOVEXATTR, f, cstr('trusted.overlay.x')));
  assert.is(r.hdr!.error, 0);
  r = await call(s, req(FuseOpcode.UNLINK, newDir, cstr('h')));
  assert.is(r.hdr!.error, 0);
  r = await call(s, req(FuseOpcode.UNLINK, newDir, cstr('h')));
  assert.is(r.hdr!.error, ENOENT);
});

// ---- malformed requests --------------------------------------------------------------------------

test('malformed requests: unreadable header dropped, bad lengths and short bodies EINVAL', async () => {
  const { s } = await ready();
  const w = new BufferWriter(Buffer.alloc(4096));
  assert.is(await s.handleMessage(new BufferReader(Buffer.alloc(20)), w), 0);
  assert.is(w.bytesWritten(), 0);
  // in_header.len larger than the request
  let msg = req(FuseOpcode.GETATTR, 1n, Buffer.alloc(16), { len: 200 });
  let r = await call(s, msg);
  assert.equal(r.hdr, { len: 16, error: EINVAL, unique: uniqueOf(msg) });
  // in_header.len smaller than the header
  r = await call(s, req(FuseOpcode.GETATTR, 1n, Buffer.alloc(16), { len: 8 }));
  assert.is(r.hdr!.error, EINVAL);
  // short bodies
  r = await call(s, req(FuseOpcode.GETATTR, 1n, Buffer.alloc(8)));
  assert.is(r.hdr!.error, EINVAL);
  r = await call(s, req(FuseOpcode.READ, 2n, Buffer.alloc(39)));
  assert.is(r.hdr!.error, EINVAL);
  r = await call(s, req(FuseOpcode.RENAME, 1n, [FuseRenameIn.encode({ newdir: 1n }), cstr('only-one')]));
  assert.is(r.hdr!.error, EINVAL);
  r = await call(s, req(FuseOpcode.GETXATTR, 1n, Buffer.alloc(4)));
  assert.is(r.hdr!.error, EINVAL);
  // total_extlen beyond the body
  r = await call(s, req(FuseOpcode.LOOKUP, 1n, cstr('big'), { totalExtlen: 4 }));
  assert.is(r.hdr!.error, EINVAL);
  // offsets beyond 2^53 are refused rather than rounded
  const ri = FuseReadIn.encode({ fh: 0n, offset: 0, size: 10, readFlags: 0, lockOwner: 0n, flags: 0 });
  ri.writeBigUInt64LE(1n << 60n, 8);
  r = await call(s, req(FuseOpcode.READ, 2n, ri));
  assert.is(r.hdr!.error, EINVAL);
});

test('filesystem bugs become EIO; replies that do not fit become ERANGE and give the lookup back', async () => {
  const fs = tree();
  fs.statfs = async () => { throw new TypeError('oops'); };
  const { s } = await ready(fs);
  let r = await call(s, req(FuseOpcode.STATFS, 1n));
  assert.is(r.hdr!.error, EIO);
  r = await call(s, req(FuseOpcode.LOOKUP, 1n, cstr('big')), 64);
  assert.equal([r.n, r.hdr!.error], [16, ERANGE]);
  assert.is(fs.lookupCount(fs.inoOf('big')), 0);
  r = await call(s, req(FuseOpcode.LOOKUP, 1n, cstr('big')), 8);
  assert.is(r.n, 0);
});

test.run();

// ---- the /dev/fuse gathering writer --------------------------------------------------------------

test('GatherWriter: buffers kept as views (no copy), file slices staged in scratch, overflow refused, reset', () => {
  const os = require('node:os') as typeof import('node:os');
  const nfs = require('node:fs') as typeof import('node:fs');
  const path = require('node:path') as typeof import('node:path');
  const file = path.join(nfs.mkdtempSync(path.join(os.tmpdir(), 'gather-')), 'f');
  nfs.writeFileSync(file, Buffer.from('0123456789abcdef'));
  const fd = nfs.openSync(file, 'r');
  try {
    const scratch = Buffer.alloc(8);
    const w = new GatherWriter(32, scratch);
    const a = Buffer.from('hdr:');
    w.write(a);
    w.writeFromFile(fd, 10, 6);
    w.writeFromFile(fd, 0, 4); // beyond the scratch left (2 bytes): a buffer of its own
    w.write(Buffer.alloc(0));
    assert.is(w.bytesWritten(), 14);
    assert.is(w.available(), 18);
    const p = w.pieces();
    assert.is(p.length, 3);
    assert.ok(p[0] === a, 'a written buffer is the piece itself');
    assert.is(p[1].buffer, scratch.buffer);
    assert.is(Buffer.concat(p).toString(), 'hdr:abcdef0123');
    assert.throws(() => w.write(Buffer.alloc(19)), /overflow/);
    assert.throws(() => w.writeFromFile(fd, 0, 19), /overflow/);
    // a slice past the end of the file is not the file's bytes
    assert.throws(() => w.writeFromFile(fd, 12, 8), /shorter/);
    w.reset();
    assert.is(w.bytesWritten(), 0);
    assert.is(w.pieces().length, 0);
    w.writeFromFile(fd, 0, 8); // the scratch is whole again
    assert.is(w.pieces()[0].buffer, scratch.buffer);
  } finally {
    nfs.closeSync(fd);
  }
});
