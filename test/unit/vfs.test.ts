import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { errnoOf } from '../../src/common/errno';
import {
  DT_DIR, FUSE_ASYNC_READ, FUSE_NO_OPEN_SUPPORT, FuseEntryOut, FuseForgetIn, FuseGetattrIn, FuseInitOut, FuseMkdirIn, FuseOpcode, FuseOpenIn,
  FuseReadIn, decodeDirentplus,
} from '../../src/virtiofs/fuse/abi';
import type { DirEntry, RequestContext } from '../../src/common/filesystem';
import { FuseServer } from '../../src/virtiofs/fuse/server';
import { Vfs, VFS_INO_MASK } from '../../src/virtiofs/vfs/vfs';
import { MemoryFs, call, cstr, initBody, req } from '../support/memory-fs';

const ctx: RequestContext = { uid: 0, gid: 0, pid: 1, unique: 1n };
const n = (s: string) => Buffer.from(s);
const enc = (idx: number, ino: bigint) => (BigInt(idx) << 56n) | ino;

async function errno(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (e) {
    return errnoOf(e);
  }
  throw new Error('expected a rejection');
}
const ENOENT = 2, EIO = 5, EXDEV = 18, EEXIST = 17, EBUSY = 16, EROFS = 30, EOPNOTSUPP = 95, EINVAL = 22, ENXIO = 6;

function image(tag: string, readOnly = true): MemoryFs {
  const fs = new MemoryFs({ readOnly });
  fs.addFile('etc/os-release', `ID=${tag}\n`);
  fs.addFile('bin/sh', 'ELF');
  return fs;
}

async function list(v: Vfs, ino: bigint, plus = false, offset = 0): Promise<DirEntry[]> {
  const out: DirEntry[] = [];
  await v.readdir(ctx, ino, 0n, offset, plus, (e) => {
    out.push({ ...e, entry: e.entry && { ...e.entry, attr: { ...e.entry.attr } } });
    return true;
  });
  return out;
}

async function walk(v: Vfs, path: string): Promise<bigint> {
  let ino = 1n;
  for (const p of path.split('/').filter(Boolean)) ino = (await v.lookup(ctx, ino, n(p))).ino;
  return ino;
}

test('mount at nested paths; lookup through the pseudo tree; inode encoding', async () => {
  const v = new Vfs();
  const shared = new MemoryFs();
  shared.addFile('c1/rootfs/hello', 'hi');
  const rafs = image('a');
  assert.is(v.mount('/containers', shared), 1);
  assert.is(v.mount('/rafs/a/lowerdir', rafs), 2);

  const rafsDir = await v.lookup(ctx, 1n, n('rafs'));
  assert.ok(rafsDir.ino > 1n && rafsDir.ino < 1n << 56n, 'pseudo inode has index 0');
  assert.is(rafsDir.attr.mode, 0o040755);
  const a = await v.lookup(ctx, rafsDir.ino, n('a'));
  const lower = await v.lookup(ctx, a.ino, n('lowerdir'));
  assert.is(lower.ino, enc(2, 1n));
  assert.is(lower.attr.ino, enc(2, 1n));
  assert.is(lower.entryTimeout, 1);
  const etc = await v.lookup(ctx, lower.ino, n('etc'));
  assert.is(etc.ino, enc(2, rafs.inoOf('etc')));
  assert.is(etc.attr.ino, etc.ino);
  const osr = await v.lookup(ctx, etc.ino, n('os-release'));
  assert.is(osr.ino >> 56n, 2n);
  assert.is(osr.ino & VFS_INO_MASK, rafs.inoOf('etc/os-release'));
  assert.is((await v.getattr(ctx, osr.ino)).attr.ino, osr.ino);
  const data = await v.read(ctx, osr.ino, 0n, 0, 100);
  assert.is(Buffer.concat(data as Buffer[]).toString(), 'ID=a\n');
  assert.is(rafs.lookupCount(rafs.inoOf('etc/os-release')), 1);

  const hello = await walk(v, '/containers/c1/rootfs/hello');
  assert.is(hello >> 56n, 1n);
  assert.equal(v.mounts().map((m) => [m.path, m.index]), [['/containers', 1], ['/rafs/a/lowerdir', 2]]);
  // '.' and '..' in the pseudo tree
  assert.is((await v.lookup(ctx, a.ino, n('..'))).ino, rafsDir.ino);
  assert.is((await v.lookup(ctx, 1n, n('..'))).ino, 1n);
  assert.is(await errno(v.lookup(ctx, 1n, n('nope'))), ENOENT);
});

test('mount errors: EEXIST, nesting EBUSY, bad paths EINVAL; umount of unknown path ENOENT', async () => {
  const v = new Vfs();
  v.mount('/rafs/a/lowerdir', image('a'));
  assert.is(errnoOf(tryCatch(() => v.mount('/rafs/a/lowerdir', image('b')))), EEXIST);
  assert.is(errnoOf(tryCatch(() => v.mount('/rafs/a/lowerdir/x', image('b')))), EBUSY);
  assert.is(errnoOf(tryCatch(() => v.mount('/rafs', image('b')))), EBUSY);
  assert.is(errnoOf(tryCatch(() => v.mount('/', image('b')))), EBUSY);
  assert.is(errnoOf(tryCatch(() => v.mount('relative', image('b')))), EINVAL);
  assert.is(errnoOf(tryCatch(() => v.mount('/a/../b', image('b')))), EINVAL);
  assert.is(errnoOf(tryCatch(() => v.umount('/rafs/a'))), ENOENT);
  assert.is(errnoOf(tryCatch(() => v.umount('/nowhere'))), ENOENT);
  assert.equal(v.mounts().length, 1);
});

function tryCatch(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

test('readdir of pseudo directories: d_type, cookies, readdirplus entries', async () => {
  const v = new Vfs();
  v.mount('/containers', new MemoryFs());
  v.mount('/rafs/a/lowerdir', image('a'));
  v.mount('/rafs/b/lowerdir', image('b'));
  const root = await list(v, 1n);
  assert.equal(root.map((e) => [e.name.toString(), e.offset, e.type]), [['.', 1, DT_DIR], ['..', 2, DT_DIR], ['containers', root[2].offset, DT_DIR], ['rafs', root[3].offset, DT_DIR]]);
  assert.is(root[2].ino, enc(1, 1n));
  assert.ok(root[3].offset > root[2].offset);
  // resume after 'containers'
  const rest = await list(v, 1n, false, root[2].offset);
  assert.equal(rest.map((e) => e.name.toString()), ['rafs']);

  const rafs = (await v.lookup(ctx, 1n, n('rafs'))).ino;
  const plus = await list(v, rafs, true);
  assert.equal(plus.map((e) => e.name.toString()), ['.', '..', 'a', 'b']);
  assert.is(plus[0].entry, undefined);
  assert.is(plus[2].entry!.ino, plus[2].ino);
  assert.is(plus[2].entry!.attr.mode, 0o040755);
  // a mountpoint child in readdirplus counts as a lookup on that slot
  v.mount('/m', image('m'));
  const before = v.slotRefs(4);
  const rootPlus = await list(v, 1n, true);
  const m = rootPlus.find((e) => e.name.toString() === 'm')!;
  assert.is(m.ino, enc(4, 1n));
  assert.is(m.entry!.ino, enc(4, 1n));
  assert.is(v.slotRefs(4), before + 1);
  // pseudo getattr / statfs
  const ga = await v.getattr(ctx, 1n);
  assert.is(ga.attr.ino, 1n);
  assert.is(ga.attr.nlink, 2 + 3);
  assert.is((await v.statfs(ctx, 1n)).namelen, 255);
});

test('readdir(plus) of a sub-filesystem re-encodes inodes and counts packed entries only', async () => {
  const v = new Vfs();
  const fs = image('a');
  v.mount('/rafs/a/lowerdir', fs);
  const lower = await walk(v, '/rafs/a/lowerdir');
  const seen: DirEntry[] = [];
  await v.readdir(ctx, lower, 0n, 0, true, (e) => {
    if (seen.length === 3) return false;
    // `e` is a scratch object: copy what we keep
    seen.push({ ...e, entry: e.entry && { ...e.entry, attr: { ...e.entry.attr } } });
    return true;
  });
  assert.equal(seen.map((e) => e.name.toString()), ['.', '..', 'etc']);
  assert.is(seen[2].ino, enc(1, fs.inoOf('etc')));
  assert.is(seen[2].entry!.ino, enc(1, fs.inoOf('etc')));
  assert.is(seen[2].entry!.attr.ino, enc(1, fs.inoOf('etc')));
  assert.is(fs.lookupCount(fs.inoOf('etc')), 1);
  assert.is(fs.lookupCount(fs.inoOf('bin')), 0);
  const refs = v.slotRefs(1);
  // forget goes to the sub-fs with its own ino and leaves the slot count balanced
  v.forget(seen[2].entry!.ino, 1);
  assert.is(fs.lookupCount(fs.inoOf('etc')), 0);
  assert.is(v.slotRefs(1), refs - 1);
  // forgets of a mount root are not forwarded (the VFS looked it up, not the sub-fs)
  v.forget(lower, 1);
  assert.not.ok(fs.calls.includes('forget 1 1'));
});

test('fs mounted at / serves nodeid 1', async () => {
  const v = new Vfs();
  const fs = image('root');
  const idx = v.mount('/', fs);
  const ga = await v.getattr(ctx, 1n);
  assert.is(ga.attr.ino, 1n);
  const etc = await v.lookup(ctx, 1n, n('etc'));
  assert.is(etc.ino, enc(idx, fs.inoOf('etc')));
  const l = await list(v, 1n);
  assert.equal(l.map((e) => e.name.toString()), ['.', '..', 'etc', 'bin']);
  assert.is(l[0].ino, 1n);
  assert.is(errnoOf(tryCatch(() => v.mount('/x', image('x')))), EBUSY);
  v.umount('/');
  assert.is((await v.getattr(ctx, 1n)).attr.mode, 0o040755); // pseudo root again
  assert.is(await errno(v.getattr(ctx, etc.ino)), ENOENT);
});

test('umount: stale inodes fail with ENOENT, in-flight requests with EIO, pseudo dirs pruned', async () => {
  const v = new Vfs();
  const fs = image('a');
  v.mount('/rafs/a/lowerdir', fs);
  v.mount('/rafs/b/lowerdir', image('b'));
  const etc = await walk(v, '/rafs/a/lowerdir/etc');
  const release = fs.hold();
  const inflight = errno(v.getattr(ctx, etc));
  const inflightLookup = errno(v.lookup(ctx, etc, n('os-release')));
  const inflightRead = errno(v.readdir(ctx, etc, 0n, 0, true, () => true));
  assert.is(v.umount('/rafs/a/lowerdir'), fs);
  release();
  assert.is(await inflight, EIO);
  assert.is(await inflightLookup, EIO);
  assert.is(await inflightRead, EIO);
  assert.is(await errno(v.getattr(ctx, etc)), ENOENT);
  assert.is(await errno(v.open(ctx, etc, 0)), ENOENT);
  const rafs = (await v.lookup(ctx, 1n, n('rafs'))).ino;
  assert.equal((await list(v, rafs)).map((e) => e.name.toString()), ['.', '..', 'b']);
  assert.is(await errno(v.lookup(ctx, rafs, n('a'))), ENOENT);
  v.umount('/rafs/b/lowerdir');
  assert.is(await errno(v.lookup(ctx, 1n, n('rafs'))), ENOENT);
  assert.is(await errno(v.getattr(ctx, rafs)), ENOENT);
  assert.equal((await list(v, 1n)).map((e) => e.name.toString()), ['.', '..']);
});

test('remount does not resurrect stale inodes: undrained slots are not reused, reused slots change generation', async () => {
  const v = new Vfs();
  v.mount('/rafs/a/lowerdir', image('a'));
  const etc = await walk(v, '/rafs/a/lowerdir/etc');
  const gen1 = (await v.lookup(ctx, (await walk(v, '/rafs/a/lowerdir')), n('etc'))).generation;
  assert.is(etc >> 56n, 1n);
  v.umount('/rafs/a/lowerdir');
  assert.ok(v.slotRefs(1) > 0);
  // the new mount at the same path gets another slot; the old nodeid stays dead
  const idx = v.mount('/rafs/a/lowerdir', image('a2'));
  assert.is.not(idx, 1);
  assert.is(await errno(v.getattr(ctx, etc)), ENOENT);
  v.umount('/rafs/a/lowerdir');
  // fill every other slot: the undrained slot 1 is the last resort only
  const fresh: number[] = [];
  for (let i = 0; i < 254; i++) fresh.push(v.mount(`/m/${i}`, image(String(i))));
  assert.not.ok(fresh.includes(1));
  const last = v.mount('/last', image('last'));
  assert.is(last, 1);
  assert.is(errnoOf(tryCatch(() => v.mount('/full', image('x')))), 28 /* ENOSPC */);
  const gen2 = (await v.lookup(ctx, (await v.lookup(ctx, 1n, n('last'))).ino, n('etc'))).generation;
  assert.is.not(gen2, gen1);
  // after the kernel forgets everything, a freed slot is reused normally
  v.umount('/last');
  v.forget(etc, 1000);
  assert.is(v.slotRefs(1), 0);
  assert.is(v.mount('/again', image('x')), 1);
});

test('mutations: EROFS on pseudo and read-only mounts, EOPNOTSUPP for missing methods, EXDEV across mounts', async () => {
  const v = new Vfs();
  const shared = new MemoryFs();
  shared.addDir('c1');
  const lacking = new MemoryFs();
  Object.assign(lacking, { mkdir: undefined, open: undefined, opendir: undefined, release: undefined, lseek: undefined });
  lacking.addFile('f', '0123456789');
  v.mount('/containers', shared);
  v.mount('/rafs/a/lowerdir', image('a'));
  v.mount('/plain', lacking);
  assert.is(await errno(v.mkdir(ctx, 1n, n('x'), 0o755, 0)), EROFS);
  const rafs = (await v.lookup(ctx, 1n, n('rafs'))).ino;
  assert.is(await errno(v.unlink(ctx, rafs, n('a'))), EROFS);
  const lower = await walk(v, '/rafs/a/lowerdir');
  assert.is(await errno(v.mkdir(ctx, lower, n('x'), 0o755, 0)), EROFS);
  const plain = await walk(v, '/plain');
  assert.is(await errno(v.mkdir(ctx, plain, n('x'), 0o755, 0)), EOPNOTSUPP);
  // stateless defaults for missing open-style methods; SEEK_DATA/HOLE emulated
  const f = (await v.lookup(ctx, plain, n('f'))).ino;
  assert.equal(await v.open(ctx, f, 0), { fh: 0n, openFlags: 0 });
  assert.equal(await v.opendir(ctx, plain, 0), { fh: 0n, openFlags: 0 });
  await v.release(ctx, f, 0n, 0);
  assert.is(await v.lseek(ctx, f, 0n, 3, 3), 3);
  assert.is(await v.lseek(ctx, f, 0n, 3, 4), 10);
  assert.is(await errno(v.lseek(ctx, f, 0n, 10, 3)), ENXIO);

  const c1 = await walk(v, '/containers/c1');
  const made = await v.mkdir(ctx, c1, n('upper'), 0o755, 0o022);
  assert.is(made.ino >> 56n, 1n);
  assert.is(v.slotRefs(1) > 0, true);
  const created = await v.create(ctx, made.ino, n('file'), 0o100644, 0, 0);
  assert.is(created.entry.ino >> 56n, 1n);
  assert.is(await v.write(ctx, created.entry.ino, created.open.fh, 0, n('data'), 0), 4);
  assert.is(await errno(v.rename(ctx, made.ino, n('file'), plain, n('file'), 0)), EXDEV);
  assert.is(await errno(v.rename(ctx, made.ino, n('file'), 1n, n('file'), 0)), EXDEV);
  await v.rename(ctx, made.ino, n('file'), c1, n('moved'), 0);
  assert.is((await v.lookup(ctx, c1, n('moved'))).ino, created.entry.ino);
});

test('through FuseServer: INIT forwards to mounts, lookups and READDIRPLUS of the pseudo root, no ENOSYS', async () => {
  const v = new Vfs();
  const shared = new MemoryFs();
  shared.addFile('hello', 'world');
  const bare = new MemoryFs({ readOnly: true });
  Object.assign(bare, { opendir: undefined, open: undefined });
  bare.addFile('x', 'y');
  v.mount('/containers', shared);
  const s = new FuseServer(v, { readdirplus: true });
  let r = await call(s, req(FuseOpcode.INIT, 0n, initBody(36, FUSE_ASYNC_READ)));
  assert.is(FuseInitOut.decode(r.payload).flags, FUSE_ASYNC_READ);
  assert.is(shared.initCapable, FUSE_ASYNC_READ);
  // a mount added after INIT is initialized too
  v.mount('/rafs/x/lowerdir', bare);
  await new Promise((res) => setImmediate(res));
  assert.is(bare.initCapable, FUSE_ASYNC_READ);

  r = await call(s, req(FuseOpcode.LOOKUP, 1n, cstr('containers')));
  const c = FuseEntryOut.decode(r.payload);
  assert.is(c.ino, enc(1, 1n));
  r = await call(s, req(FuseOpcode.LOOKUP, c.ino, cstr('hello')));
  const h = FuseEntryOut.decode(r.payload);
  assert.is(h.ino, enc(1, shared.inoOf('hello')));
  r = await call(s, req(FuseOpcode.READ, h.ino, FuseReadIn.encode({ fh: 0n, offset: 0, size: 100, readFlags: 0, lockOwner: 0n, flags: 0 })));
  assert.is(r.payload.toString(), 'world');
  r = await call(s, req(FuseOpcode.FORGET, h.ino, FuseForgetIn.encode({ nlookup: 1 })));
  assert.is(r.n, 0);
  assert.is(shared.lookupCount(shared.inoOf('hello')), 0);

  r = await call(s, req(FuseOpcode.READDIRPLUS, 1n, FuseReadIn.encode({ fh: 0n, offset: 0, size: 4096, readFlags: 0, lockOwner: 0n, flags: 0 })));
  const names: string[] = [];
  for (let off = 0; off < r.payload.length; ) {
    const e = decodeDirentplus(r.payload, off);
    names.push(`${e.name}:${e.entry.ino === 0n ? 0 : e.entry.ino >> 56n}`);
    off = e.next;
  }
  assert.equal(names, ['.:0', '..:0', 'containers:1', 'rafs:0']);

  // a sub-fs without opendir/open still works (no session-wide ENOSYS)
  const x = await (async () => {
    let ino = 1n;
    for (const p of ['rafs', 'x', 'lowerdir']) ino = FuseEntryOut.decode((await call(s, req(FuseOpcode.LOOKUP, ino, cstr(p)))).payload).ino;
    return ino;
  })();
  r = await call(s, req(FuseOpcode.OPENDIR, x, FuseOpenIn.encode({ flags: 0, openFlags: 0 })));
  assert.is(r.hdr!.error, 0);
  r = await call(s, req(FuseOpcode.MKDIR, x, [FuseMkdirIn.encode({ mode: 0o755, umask: 0 }), cstr('d')]));
  assert.is(r.hdr!.error, -EROFS);
  r = await call(s, req(FuseOpcode.MKDIR, 1n, [FuseMkdirIn.encode({ mode: 0o755, umask: 0 }), cstr('d')]));
  assert.is(r.hdr!.error, -EROFS);
  r = await call(s, req(FuseOpcode.GETATTR, enc(9, 5n), FuseGetattrIn.encode({ getattrFlags: 0, fh: 0n })));
  assert.is(r.hdr!.error, -ENOENT);

  // DESTROY reaches the mounts and resets the kernel reference counts
  r = await call(s, req(FuseOpcode.DESTROY, 0n));
  assert.is(shared.destroyed, 1);
  assert.is(bare.destroyed, 1);
  assert.is(v.slotRefs(1), 0);
  void EIO;
});


test('noOpen: OPEN answered ENOSYS once the kernel supports it; only stateless-open filesystems mount', async () => {
  const ENOSYS = 38;
  const rafsLike = () => Object.assign(image('r'), { statelessOpen: true });
  const open = (s: FuseServer, ino: bigint) => call(s, req(FuseOpcode.OPEN, ino, FuseOpenIn.encode({ flags: 0, openFlags: 0 })));
  const lookupPath = async (s: FuseServer, path: string) => {
    let ino = 1n;
    for (const p of path.split('/')) ino = FuseEntryOut.decode((await call(s, req(FuseOpcode.LOOKUP, ino, cstr(p)))).payload).ino;
    return ino;
  };

  // a kernel offering FUSE_NO_OPEN_SUPPORT: ENOSYS (it opens by itself from then on); reads still served
  const v = new Vfs({ noOpen: true });
  v.mount('/a', rafsLike());
  assert.is(await errno(Promise.resolve().then(() => v.mount('/containers', new MemoryFs()))), EINVAL, 'a filesystem needing OPEN is refused');
  assert.is(await errno(Promise.resolve().then(() => v.mount('/direct', Object.assign(image('d'), { statelessOpen: false })))), EINVAL);
  v.mount('/more', rafsLike());
  const s = new FuseServer(v);
  await call(s, req(FuseOpcode.INIT, 0n, initBody(36, FUSE_ASYNC_READ | FUSE_NO_OPEN_SUPPORT)));
  const f = await lookupPath(s, 'a/etc/os-release');
  assert.is((await open(s, f)).hdr!.error, -ENOSYS);
  const r = await call(s, req(FuseOpcode.READ, f, FuseReadIn.encode({ fh: 0n, offset: 0, size: 100, readFlags: 0, lockOwner: 0n, flags: 0 })));
  assert.is(r.payload.toString(), 'ID=r\n');
  assert.is((await call(s, req(FuseOpcode.OPENDIR, 1n, FuseOpenIn.encode({ flags: 0, openFlags: 0 })))).hdr!.error, 0, 'OPENDIR is still served');

  // a kernel without it: OPEN is served as usual
  const v2 = new Vfs({ noOpen: true });
  v2.mount('/', rafsLike());
  const s2 = new FuseServer(v2);
  await call(s2, req(FuseOpcode.INIT, 0n, initBody(36, FUSE_ASYNC_READ)));
  assert.is((await open(s2, await lookupPath(s2, 'etc/os-release'))).hdr!.error, 0);

  // default: OPEN served even when the kernel supports zero-message open, any filesystem mounts
  const v3 = new Vfs();
  v3.mount('/', image('plain'));
  const s3 = new FuseServer(v3);
  await call(s3, req(FuseOpcode.INIT, 0n, initBody(36, FUSE_ASYNC_READ | FUSE_NO_OPEN_SUPPORT)));
  assert.is((await open(s3, await lookupPath(s3, 'etc/os-release'))).hdr!.error, 0);
});

test.run();
