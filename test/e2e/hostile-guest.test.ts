/**
 * A hostile guest cannot escape, corrupt, block or exhaust nydusd.
 *
 * Each test drives the real `bin/nydusd` process through its vhost-user
 * socket as a guest would (test/support/hostile-guest.ts: guest RAM in a
 * memfd shared with the daemon, split rings, many requests in flight) and
 * asserts the SAFE outcome; every test prints its measurements as
 * `hostile: …` lines. HOSTILE_ONLY=1a,4b runs a subset.
 *
 *  1. double fetch: a second thread (another "vCPU") flips names of requests
 *     in flight between a harmless name and `..` / `../x`; LOOKUP, MKDIR
 *     (+ chown to the caller), CREATE and RENAME never reach outside the share;
 *  2. aliasing: descriptors that all alias one region, in_header.len of 256 MiB
 *     / 4 MiB → a bare ENOMEM at once, no memory growth (an indirect table
 *     longer than the queue may also be refused outright); READ / READDIR with
 *     huge sizes and writable areas stay bounded;
 *  2b. OPEN / OPENDIR / CREATE whose reply does not fit the guest's buffer
 *     leave no fd behind (else a guest exhausts the daemon's fds);
 *  3. a CREATE of an existing FIFO does not block the daemon (GETATTR answered);
 *  4. umount of a passthrough while WRITEs are queued: the data lands in no
 *     other file, writes after the umount fail (4a: O_DSYNC writes, a
 *     realistic but narrow window; 4b: the target filesystem is frozen with
 *     fsfreeze around the umount, which holds the window open);
 *  5. a READ whose blobcache file went short answers EIO (or the right bytes,
 *     refetched), never a success full of zeros/stale bytes — over virtio-fs
 *     and over /dev/fuse.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { constants } from 'node:os';
import {
  FuseCreateIn, FuseGetattrIn, FuseMkdirIn, FuseOpcode, FuseOpenIn, FuseOpenOut, FuseReadIn, FuseRenameIn, FuseWriteIn,
} from '../../src/virtiofs/fuse/abi';
import { api, waitForState } from '../support/api';
import { ROOT, hasCommand, nydusImage, tmpdir } from '../support/cli';
import {
  Flipper, GuestSession, MIB, diffSnapshots, entryOf, fmtMem, hs, parseReply, procMem, resetPeak, replyProblem, sleep, snapshotTree, until,
  type Buf, type FuseReply,
} from '../support/hostile-guest';
import { cstr } from '../support/memory-fs';
import { fuseMissing, startNydusd, type Daemon } from '../support/nydusd';
import { startDaemonProcess, type RunningDaemon } from '../support/qemu';

const E = constants.errno;
const INO_MASK = (1n << 56n) - 1n;
const bin = path.join(ROOT, 'bin/nydusd');
const skip = process.getuid?.() !== 0 ? 'not running as root' : undefined;
if (skip) console.log(`SKIP hostile-guest: ${skip}`);
const work = tmpdir('hostile');
const daemons = new Set<{ stop(): Promise<unknown> }>();
const sessions = new Set<GuestSession>();
const cleanups: (() => void)[] = [];
const log = (s: string) => console.log(`hostile: ${s}`);
/** HOSTILE_ONLY=1a,4 runs only the tests whose number is listed (debugging). */
const only = process.env.HOSTILE_ONLY?.split(',');
const picked = (id: string) => !only || only.includes(id);

test.after(async () => {
  for (const s of sessions) s.close();
  for (const d of daemons) await d.stop().catch(() => undefined);
  for (const c of cleanups) c();
  fs.rmSync(work, { recursive: true, force: true });
});

interface Virtiofs { d: RunningDaemon; pid: number; sock: string; apisock: string; s: GuestSession }

async function startVirtiofs(name: string, args: string[], o: { queueSize?: number; ramSize?: number } = {}): Promise<Virtiofs> {
  const sock = path.join(work, `${name}.sock`);
  const apisock = path.join(work, `${name}.api`);
  const d = await startDaemonProcess(bin, ['virtiofs', '--sock', sock, '--apisock', apisock, '--log-level', 'error', ...args], sock, 20_000);
  daemons.add(d);
  await waitForState(apisock, 'RUNNING', 20_000);
  const s = await GuestSession.connect(sock, { queueSize: o.queueSize ?? 1024, ramSize: o.ramSize });
  sessions.add(s);
  await s.init();
  return { d, pid: d.proc.pid!, sock, apisock, s };
}

async function shutdown(v: Virtiofs): Promise<void> {
  v.s.close();
  sessions.delete(v.s);
  await v.d.stop();
  daemons.delete(v.d);
}

/** Wait for `p` at most `ms` (the timer does not outlive the wait). */
async function within(p: Promise<unknown>, ms: number): Promise<void> {
  let t: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise((r) => { t = setTimeout(r, ms); })]);
  clearTimeout(t);
}

const dead = (v: Virtiofs) => v.d.proc.exitCode !== null || v.d.proc.signalCode !== null;

/** work/<name>/outside (the share's parent, with sentinels) and work/<name>/outside/share. */
function layout(name: string): { parent: string; share: string } {
  const parent = path.join(work, name, 'outside');
  const share = path.join(parent, 'share');
  fs.mkdirSync(share, { recursive: true });
  fs.writeFileSync(path.join(parent, 'sentinel'), Buffer.alloc(12345, 's'));
  fs.writeFileSync(path.join(parent, 'victim'), 'victim outside the share\n');
  fs.writeFileSync(path.join(parent, 'vi'), 'vi outside the share\n');
  fs.chmodSync(parent, 0o755);
  return { parent, share };
}

async function lookup(s: GuestSession, parent: bigint, name: string): Promise<FuseReply> {
  return s.call(s.msg(FuseOpcode.LOOKUP, parent, cstr(name)), 4096);
}

async function lookupOk(s: GuestSession, parent: bigint, name: string): Promise<bigint> {
  const r = await lookup(s, parent, name);
  assert.is(r.hdr?.error, 0, `LOOKUP ${name}: ${hs(r.hdr)}`);
  return entryOf(r).ino;
}

async function openFh(s: GuestSession, ino: bigint, flags = 0, op = FuseOpcode.OPEN): Promise<bigint> {
  const r = await s.call(s.msg(op, ino, FuseOpenIn.encode({ flags, openFlags: 0 })), 4096);
  assert.is(r.hdr?.error, 0, `${FuseOpcode[op]}: ${hs(r.hdr)}`);
  return FuseOpenOut.decode(r.payload).fh;
}

function readMsg(s: GuestSession, ino: bigint, fh: bigint, offset: number, size: number, op = FuseOpcode.READ): Buffer {
  return s.msg(op, ino, FuseReadIn.encode({ fh, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 }));
}

async function getattrMs(s: GuestSession, ino: bigint, timeoutMs: number): Promise<FuseReply> {
  return s.call(s.msg(FuseOpcode.GETATTR, ino, FuseGetattrIn.encode({ getattrFlags: 0, fh: 0n })), 4096, { timeoutMs });
}

// ---------------------------------------------------------------------------------------
// 1. double fetch

/**
 * Run `total` requests in batches of `batch` fixed slots (all in flight per
 * kick) while a Flipper rewrites the `a.length` bytes at `flipAt` of every
 * slot's message between `a` and `b`. `build(i)` gives the i-th message
 * (written into its slot around the flipped bytes before each batch);
 * `check` sees every reply.
 */
async function race(
  s: GuestSession, o: {
    total: number; batch: number; room: number; flipAt: number; a: Buffer; b: Buffer;
    build: (i: number) => Buffer; check: (i: number, r: FuseReply) => void;
  },
): Promise<{ flips: number; ms: number }> {
  const slots: { base: number; head: number; descs: number[]; len: number }[] = [];
  const first = o.build(0);
  for (let k = 0; k < o.batch; k++) {
    const base = s.takeSlab();
    const len = first.length;
    const { head, descs } = s.writeChain(1, [[base, len, false], [base + 4096, o.room, true]]);
    slots.push({ base, head, descs, len });
    s.write(base, first);
  }
  const flipper = new Flipper(s.ram, slots.map((x) => s.off(x.base + o.flipAt)), o.a, o.b);
  await flipper.ready;
  const t0 = performance.now();
  let flips = 0;
  try {
    for (let done = 0; done < o.total; done += o.batch) {
      const n = Math.min(o.batch, o.total - done);
      const waits: Promise<number>[] = [];
      for (let k = 0; k < n; k++) {
        const m = o.build(done + k);
        if (m.length !== slots[k].len) throw new Error('race: messages must keep their length');
        // header and the bytes outside the flipped window (the flipper owns those)
        m.copy(s.ram.buf, s.off(slots[k].base), 0, o.flipAt);
        m.copy(s.ram.buf, s.off(slots[k].base) + o.flipAt + o.a.length, o.flipAt + o.a.length);
        waits.push(s.publish(1, slots[k].head, slots[k].descs, { kick: false, keepDescs: true, timeoutMs: 20_000 }));
      }
      s.kick(1);
      const lens = await Promise.all(waits);
      for (let k = 0; k < n; k++) o.check(done + k, parseReply(s.read(slots[k].base + 4096, Math.min(lens[k], o.room)), lens[k], 0));
    }
  } finally {
    flips = await flipper.stop();
    for (const x of slots) {
      s.putSlab(x.base);
      if (s.inflight(1) === 0) s.releaseDescs(1, x.descs);
    }
  }
  return { flips, ms: performance.now() - t0 };
}

test('1a. LOOKUP name flipped between "ab" and ".." while in flight: 0 escapes in 100000', async () => {
  if (skip || !picked('1a')) return;
  const { parent, share } = layout('lookup');
  fs.mkdirSync(path.join(share, 'ab'));
  const inside = new Set([fs.statSync(share).ino, fs.statSync(path.join(share, 'ab')).ino].map(BigInt));
  const parentIno = BigInt(fs.statSync(parent).ino);
  const v = await startVirtiofs('lookup', ['--shared-dir', share]);
  try {
    let ok = 0, root = 0, errors = 0, escapes = 0, escapedToParent = 0;
    const errnos = new Map<number, number>();
    const samples: string[] = [];
    const msg = v.s.msg(FuseOpcode.LOOKUP, 1n, cstr('ab'));
    const { flips, ms } = await race(v.s, {
      total: 100_000, batch: 256, room: 16 + 128, flipAt: 40, a: Buffer.from('ab'), b: Buffer.from('..'),
      build: () => msg,
      check: (_i, r) => {
        const p = replyProblem(r);
        if (p) throw new Error(`malformed LOOKUP reply: ${p}`);
        if (r.hdr!.error !== 0) { errors++; errnos.set(-r.hdr!.error, (errnos.get(-r.hdr!.error) ?? 0) + 1); return; }
        const e = entryOf(r);
        const hostIno = e.attr.ino & INO_MASK;
        if (e.ino === 1n) root++;
        else if (inside.has(hostIno)) ok++;
        else {
          escapes++;
          if (hostIno === parentIno) escapedToParent++;
          if (samples.length < 3) samples.push(`nodeid ${e.ino} ino ${hostIno} mode ${e.attr.mode.toString(8)} size ${e.attr.size}`);
        }
      },
    });
    log(`lookup race: 100000 lookups, ${escapes} escapes (${escapedToParent} = the share's parent), ${ok} "ab", ${root} root, ${errors} errors ${JSON.stringify(Object.fromEntries(errnos))}, ${flips} flips, ${(ms / 1000).toFixed(1)} s${samples.length ? `; e.g. ${samples.join('; ')}` : ''}`);
    assert.ok(!dead(v), 'daemon died');
    // still serving, and right
    assert.ok(inside.has(entryOf(await lookup(v.s, 1n, 'ab')).attr.ino & INO_MASK));
    assert.is(escapes, 0, `${escapes} LOOKUPs returned an inode outside the share`);
  } finally {
    await shutdown(v);
  }
});

test('1b. MKDIR(+chown) / CREATE / RENAME names flipped to "../x" while in flight: nothing outside the share changes in 10000', async () => {
  if (skip || !picked('1b')) return;
  const { parent, share } = layout('mutate');
  const PER = 2500;
  const id = (i: number) => String(i).padStart(6, '0');
  for (let i = 0; i < PER; i++) {
    fs.writeFileSync(path.join(share, `ra_xx_${id(i)}`), 'a');
    fs.writeFileSync(path.join(share, `rb_xx_${id(i)}`), 'b');
  }
  const before = snapshotTree(parent, ['share']);
  const v = await startVirtiofs('mutate', ['--shared-dir', share]);
  const UID = 12345;
  const results: string[] = [];
  let totalOps = 0;
  const entries: bigint[] = [];
  try {
    const phases: { name: string; a: string; b: string; flipAt: number; room: number; build: (i: number) => Buffer }[] = [
      {
        name: 'MKDIR', a: 'mk_xx_', b: '../zz\0', flipAt: 48, room: 16 + 128,
        build: (i) => v.s.msg(FuseOpcode.MKDIR, 1n, [FuseMkdirIn.encode({ mode: 0o755, umask: 0 }), cstr(`mk_xx_${id(i)}`)], { uid: UID, gid: UID }),
      },
      {
        name: 'CREATE', a: 'cr_xx_', b: '../cz\0', flipAt: 56, room: 16 + 128 + 16,
        build: (i) => v.s.msg(FuseOpcode.CREATE, 1n, [FuseCreateIn.encode({ flags: 2 /* O_RDWR */, mode: 0o100644, umask: 0, openFlags: 0 }), cstr(`cr_xx_${id(i)}`)], { uid: UID, gid: UID }),
      },
      {
        name: 'RENAME (new name)', a: 'na_xx_', b: '../rz\0', flipAt: 48 + 13, room: 16,
        build: (i) => v.s.msg(FuseOpcode.RENAME, 1n, [FuseRenameIn.encode({ newdir: 1n }), cstr(`ra_xx_${id(i)}`), cstr(`na_xx_${id(i)}`)], { uid: UID, gid: UID }),
      },
      {
        name: 'RENAME (old name)', a: 'rb_xx_', b: '../vi\0', flipAt: 48, room: 16,
        build: (i) => v.s.msg(FuseOpcode.RENAME, 1n, [FuseRenameIn.encode({ newdir: 1n }), cstr(`rb_xx_${id(i)}`), cstr(`nb_xx_${id(i)}`)], { uid: UID, gid: UID }),
      },
    ];
    for (const ph of phases) {
      let ok = 0, errors = 0;
      const { ms } = await race(v.s, {
        total: PER, batch: 250, room: ph.room, flipAt: ph.flipAt, a: Buffer.from(ph.a), b: Buffer.from(ph.b), build: ph.build,
        check: (_i, r) => {
          const p = replyProblem(r);
          if (p) throw new Error(`malformed ${ph.name} reply: ${p}`);
          if (r.hdr!.error !== 0) { errors++; return; }
          ok++;
          if (r.payload.length >= 128) entries.push(entryOf(r).attr.ino & INO_MASK);
        },
      });
      totalOps += PER;
      results.push(`${ph.name} ${ok} ok / ${errors} errors ${(ms / 1000).toFixed(1)} s`);
    }
  } finally {
    await shutdown(v);
  }
  const after = snapshotTree(parent, ['share']);
  const diff = diffSnapshots(before, after);
  const shareInos = new Set<bigint>();
  for (const r of snapshotTree(share).values()) shareInos.add(r.ino);
  const outsideEntries = entries.filter((i) => !shareInos.has(i)).length;
  log(`mutation race: ${totalOps} ops (${results.join(', ')}), ${diff.length} changes outside the share, ${outsideEntries} entries for inodes outside the share${diff.length ? `: ${diff.slice(0, 6).join('; ')}` : ''}`);
  assert.equal(diff, [], 'the share\'s parent changed');
  assert.is(outsideEntries, 0, 'entries for inodes outside the share');
});

// ---------------------------------------------------------------------------------------
// 2. aliasing / size caps

test('2. aliased descriptors, in_header.len 256 MiB / 4 MiB: bare ENOMEM at once, memory flat; huge READ/READDIR bounded', async () => {
  if (skip || !picked('2')) return;
  const { share } = layout('alias');
  const data = randomBytes(65536);
  fs.writeFileSync(path.join(share, 'data'), data);
  const v = await startVirtiofs('alias', ['--shared-dir', share], { ramSize: 64 * MIB });
  const s = v.s;
  try {
    const dataIno = await lookupOk(s, 1n, 'data');
    const fh = await openFh(s, dataIno);
    const dirFh = await openFh(s, 1n, 0, FuseOpcode.OPENDIR);
    const peaks: number[] = [];
    /** run a phase and return the daemon's peak RSS above its RSS at the start (MiB) */
    const phase = async <T>(f: () => Promise<T>): Promise<[T, number]> => {
      resetPeak(v.pid);
      const before = procMem(v.pid);
      const r = await f();
      const grew = Math.max(0, (procMem(v.pid).hwmKiB - before.rssKiB) / 1024);
      peaks.push(grew);
      return [r, grew];
    };
    const m0 = procMem(v.pid);
    // everything below aliases this one 256 KiB region (its first page for 4 KiB descriptors)
    const REGION = 256 * 1024;
    const region = s.alloc(REGION, 4096);
    s.ram.buf.fill(0x41, s.off(region), s.off(region) + REGION);
    const page = region;
    const reply = s.alloc(4096, 4096);
    const hdr = s.alloc(4096, 4096);
    const Q = s.queueSize; // the longest chain the virtio spec allows
    const failures: string[] = [];
    const writeMsg = (size: number) => s.msg(FuseOpcode.WRITE, dataIno, FuseWriteIn.encode({ fh, offset: 0, size, writeFlags: 0, lockOwner: 0n, flags: 0 }), { len: 80 + size });

    // (a1) WRITE claiming ~256 MiB: a queue-size indirect table whose 1022 data descriptors all alias one 256 KiB region; 4 at once
    const table = s.alloc(16 * 65536, MIB); // big enough for (a2) too; one table shared by the chains
    const aLen = (Q - 2) * REGION;
    s.write(hdr, writeMsg(aLen));
    const abufs: Buf[] = [[hdr, 80, false]];
    for (let i = 0; i < Q - 2; i++) abufs.push([region, REGION, false]);
    abufs.push([reply, 4096, true]);
    const t0 = performance.now();
    const [big, g1] = await phase(() => Promise.all([0, 1, 2, 3].map(() => s.post(1, abufs, { indirect: table, timeoutMs: 60_000 }).then((len) => ({ len, ms: performance.now() - t0 })))));
    const r1 = parseReply(s.read(reply, 4096), big[0].len, big[3].ms);
    log(`alias WRITE x4, in_header.len ${((80 + aLen) / MIB).toFixed(1)} MiB (${Q}-entry indirect table, data descriptors all on one 256 KiB region): error ${r1.hdr?.error} len ${r1.hdr?.len} used ${big.map((x) => x.len).join('/')}, ${big.map((x) => x.ms.toFixed(0)).join('/')} ms, daemon peak RSS +${g1.toFixed(1)} MiB, now ${fmtMem(procMem(v.pid))}`);
    if (r1.hdr?.error !== -E.ENOMEM || big.some((x) => x.len !== 16)) failures.push(`256 MiB WRITE answered ${r1.hdr?.error} (used ${big.map((x) => x.len).join('/')}), not a bare -ENOMEM`);
    if (big[3].ms > 1000) failures.push(`256 MiB WRITEs took ${big[3].ms.toFixed(0)} ms`);

    // (a2) the same with a 65536-entry indirect table (longer than the queue: invalid per virtio) of 4 KiB descriptors on one page
    const N = 65536;
    const nLen = (N - 3) * 4096;
    s.write(hdr, writeMsg(nLen));
    const nbufs: Buf[] = [[hdr, 80, false]];
    for (let i = 0; i < N - 3; i++) nbufs.push([page, 4096, false]);
    nbufs.push([reply, 4096, true]);
    s.ram.buf.fill(0xee, s.off(reply), s.off(reply) + 4096);
    const t3 = performance.now();
    const [huge, g3] = await phase(() => Promise.all([0, 1, 2, 3].map(() => s.post(1, nbufs, { indirect: table, timeoutMs: 60_000 }).then((len) => ({ len, ms: performance.now() - t3 })))));
    const r3 = parseReply(s.read(reply, 4096), huge[0].len, huge[3].ms);
    const o3 = huge.every((x) => x.len === 0) ? 'chain refused (used.len 0, no reply)' : `error ${r3.hdr?.error} len ${r3.hdr?.len}`;
    log(`alias WRITE x4, in_header.len ${((80 + nLen) / MIB).toFixed(1)} MiB (65536-entry indirect table, one page): ${o3}, ${huge.map((x) => x.ms.toFixed(0)).join('/')} ms, daemon peak RSS +${g3.toFixed(1)} MiB`);
    if (!(huge.every((x) => x.len === 0) || (r3.hdr?.error === -E.ENOMEM && huge.every((x) => x.len === 16)))) failures.push(`65536-descriptor WRITE: ${o3} (used ${huge.map((x) => x.len).join('/')}), neither refused nor -ENOMEM`);
    if (huge[3].ms > 1000) failures.push(`65536-descriptor WRITEs took ${huge[3].ms.toFixed(0)} ms`);

    // (b) a direct chain of queue-size descriptors aliasing one 4 KiB page: ~4 MiB claimed
    const dbufs: Buf[] = [[hdr, 80, false]];
    for (let i = 0; i < Q - 2; i++) dbufs.push([page, 4096, false]);
    dbufs.push([reply, 4096, true]);
    const dLen = (Q - 2) * 4096;
    s.write(hdr, writeMsg(dLen));
    const t1 = performance.now();
    const [dl, g2] = await phase(() => s.post(1, dbufs, { timeoutMs: 30_000 }));
    const r2 = parseReply(s.read(reply, 4096), dl, performance.now() - t1);
    log(`alias ${Q}-descriptor WRITE (direct chain, one page, ${((80 + dLen) / MIB).toFixed(1)} MiB): error ${r2.hdr?.error} len ${r2.hdr?.len}, ${r2.ms.toFixed(1)} ms, daemon peak RSS +${g2.toFixed(1)} MiB`);
    if (r2.hdr?.error !== -E.ENOMEM || dl !== 16) failures.push(`${Q}-descriptor WRITE answered ${r2.hdr?.error} (used ${dl}), not a bare -ENOMEM`);

    // (c)/(d) READ / READDIR of size 4 GiB-1 into ~256 MiB of writable descriptors all on one region, 8 each at once
    const wbufs = (m: Buffer): Buf[] => {
      const h = s.alloc(m.length, 64);
      s.write(h, m);
      const b: Buf[] = [[h, m.length, false]];
      for (let i = 0; i < Q - 1; i++) b.push([region, REGION, true]);
      return b;
    };
    for (const [name, m] of [['READ', readMsg(s, dataIno, fh, 0, 0xffffffff)], ['READDIR', readMsg(s, 1n, dirFh, 0, 0xffffffff, FuseOpcode.READDIR)]] as const) {
      const b = wbufs(m);
      const t2 = performance.now();
      const [lens, g] = await phase(() => Promise.all(Array.from({ length: 8 }, () => s.post(1, b, { indirect: table, timeoutMs: 60_000 }))));
      const ms = performance.now() - t2;
      log(`huge ${name} x8 (size 0xffffffff, ${((Q - 1) * REGION / MIB).toFixed(0)} MiB writable on one region): used.len ${[...new Set(lens)].join('/')}, ${ms.toFixed(0)} ms, daemon peak RSS +${g.toFixed(1)} MiB, now ${fmtMem(procMem(v.pid))}`);
      const bad = lens.filter((l) => name === 'READ' ? l !== 16 + data.length : l < 16 || l > 16 + 2 * MIB);
      if (bad.length) failures.push(`huge ${name}: used.len ${bad[0]}`);
      if (ms > 2000) failures.push(`huge ${name}s took ${ms.toFixed(0)} ms`);
    }
    const m2 = procMem(v.pid);
    const grew = Math.max(...peaks);
    log(`alias total: largest daemon peak RSS growth in a phase +${grew.toFixed(1)} MiB (${fmtMem(m0)} -> ${fmtMem(m2)})`);
    if (grew > 64) failures.push(`daemon peak RSS grew by ${grew.toFixed(0)} MiB in a phase`);

    // still serving, with the right bytes
    assert.ok(!dead(v), 'daemon died');
    const rr = await s.call(readMsg(s, dataIno, fh, 0, 65536), 16 + 65536);
    assert.is(rr.hdr?.error, 0);
    assert.ok(rr.payload.equals(data), 'READ after the attacks returns the file');
    assert.equal(failures, []);
  } finally {
    await shutdown(v);
  }
});

test('2b. OPEN / OPENDIR / CREATE whose reply does not fit the guest\'s buffer leak no fd', async () => {
  if (skip || !picked('2b')) return;
  const { share } = layout('noroom');
  fs.writeFileSync(path.join(share, 'f'), 'f');
  const v = await startVirtiofs('noroom', ['--shared-dir', share]);
  const s = v.s;
  const fds = () => fs.readdirSync(`/proc/${v.pid}/fd`).length;
  try {
    const F = await lookupOk(s, 1n, 'f');
    const before = fds();
    const N = 3000;
    const errs = new Map<string, number>();
    const run = async (what: string, mk: (i: number) => Buffer, room: number) => {
      for (let i = 0; i < N; i += 200) {
        const rs = await Promise.all(Array.from({ length: Math.min(200, N - i) }, (_, k) => s.call(mk(i + k), room)));
        for (const r of rs) errs.set(`${what} ${r.hdr?.error}`, (errs.get(`${what} ${r.hdr?.error}`) ?? 0) + 1);
      }
    };
    await run('OPEN', () => s.msg(FuseOpcode.OPEN, F, FuseOpenIn.encode({ flags: 0, openFlags: 0 })), 16);
    await run('OPENDIR', () => s.msg(FuseOpcode.OPENDIR, 1n, FuseOpenIn.encode({ flags: 0, openFlags: 0 })), 16);
    // room for the entry but not for the open handle after it
    await run('CREATE', (i) => s.msg(FuseOpcode.CREATE, 1n, [FuseCreateIn.encode({ flags: 2, mode: 0o100644, umask: 0, openFlags: 0 }), cstr(`c${i}`)]), 16 + 128);
    // closes of files opened for writing run on the blocking-call pool: let them finish
    let after = fds();
    for (let t = 0; t < 40 && after - before >= 50; t++) {
      await new Promise((r) => setTimeout(r, 50));
      after = fds();
    }
    log(`replies that do not fit: ${3 * N} OPEN/OPENDIR/CREATE → ${JSON.stringify(Object.fromEntries(errs))}; daemon fds ${before} → ${after} (+${after - before})`);
    assert.ok(!dead(v), 'daemon died');
    assert.ok(after - before < 50, `daemon fds grew by ${after - before}`);
  } finally {
    await shutdown(v);
  }
});

// ---------------------------------------------------------------------------------------
// 3. FIFO

test('3. CREATE (no O_EXCL, O_RDONLY) of an existing FIFO does not block the daemon', async () => {
  if (skip || !picked('3')) return;
  if (!hasCommand('mkfifo')) { console.log('SKIP hostile-guest FIFO: no mkfifo'); return; }
  const { share } = layout('fifo');
  const fifo = path.join(share, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const v = await startVirtiofs('fifo', ['--shared-dir', share]);
  const s = v.s;
  let writer: number | undefined;
  const release = () => {
    if (writer !== undefined) return true;
    try {
      writer = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
      return true;
    } catch {
      return false; // ENXIO: nobody is reading (the daemon did not open it)
    }
  };
  try {
    const create = s.call(s.msg(FuseOpcode.CREATE, 1n, [FuseCreateIn.encode({ flags: 0, mode: 0o100644, umask: 0, openFlags: 0 }), cstr('fifo')]), 4096, { timeoutMs: 30_000 });
    void create.catch(() => undefined);
    await sleep(20);
    let getattr: FuseReply | undefined;
    let latency: number;
    const t0 = performance.now();
    try {
      getattr = await getattrMs(s, 1n, 3000);
      latency = performance.now() - t0;
    } catch {
      latency = Infinity;
    }
    const blocked = !Number.isFinite(latency);
    // unblock a stuck daemon (a reader waiting in open(2) lets a non-blocking writer in)
    const released = release();
    const c = await create.catch((e: Error) => e);
    const createDesc = c instanceof Error ? c.message : `error ${c.hdr?.error} after ${c.ms.toFixed(0)} ms`;
    if (blocked) getattr = await getattrMs(s, 1n, 5000).catch(() => undefined);
    log(`fifo: GETATTR during CREATE of a FIFO: ${blocked ? 'NOT answered within 3000 ms (daemon blocked)' : `${latency.toFixed(1)} ms`}; FIFO writer opened: ${released}; CREATE: ${createDesc}; later GETATTR: ${getattr?.hdr?.error}`);
    assert.ok(!dead(v), 'daemon died');
    assert.ok(latency < 1000, `GETATTR took ${blocked ? '>3000' : latency.toFixed(0)} ms while a CREATE waited on a FIFO`);
  } finally {
    release();
    await shutdown(v);
    if (writer !== undefined) fs.closeSync(writer);
  }
});

// ---------------------------------------------------------------------------------------
// images

function buildImage(name: string, files: Record<string, Buffer>, chunk = 0x10000): { boot: string; blobs: string; blobId: string } {
  const dir = path.join(work, `img-${name}`);
  const src = path.join(dir, 'src');
  const blobs = path.join(dir, 'blobs');
  fs.mkdirSync(src, { recursive: true });
  fs.mkdirSync(blobs, { recursive: true });
  for (const [f, d] of Object.entries(files)) fs.writeFileSync(path.join(src, f), d);
  const boot = path.join(dir, 'image.boot');
  nydusImage(['create', '--chunk-size', `0x${chunk.toString(16)}`, '--compressor', 'zstd', '--bootstrap', boot, '--blob-dir', blobs, src]);
  const blobId = fs.readdirSync(blobs).find((f) => /^[0-9a-f]{64}$/.test(f));
  if (!blobId) throw new Error(`no blob in ${blobs}: ${fs.readdirSync(blobs).join(' ')}`);
  return { boot, blobs, blobId };
}

/** Ready chunks recorded in a chunk_map file (all_ready header counts as `all`). */
function readyChunks(mapFile: string, all: number): number {
  if (!fs.existsSync(mapFile)) return 0;
  const b = fs.readFileSync(mapFile);
  if (b.length < 4096) return 0;
  if (b.readUInt32LE(12) === 0x4d4d4150) return all;
  let n = 0;
  for (let i = 4096; i < b.length; i++) for (let x = b[i]; x; x &= x - 1) n++;
  return n;
}

function copyDir(from: string, to: string): void {
  fs.mkdirSync(to, { recursive: true });
  for (const f of fs.readdirSync(from)) fs.copyFileSync(path.join(from, f), path.join(to, f));
}

// ---------------------------------------------------------------------------------------
// 4. umount during writes

const MARK = Buffer.from('<<NYDUS-HOSTILE-UMOUNT-PATTERN>>');

/** An HTTP request over the API socket whose bytes are known to be sent (`sent`) before the reply is awaited. */
function rawHttp(sock: string, method: string, url: string): { sent: Promise<void>; reply: Promise<{ status: number; body: string }> } {
  const c = net.createConnection(sock);
  let text = '';
  const reply = new Promise<{ status: number; body: string }>((resolve, reject) => {
    c.setEncoding('utf8');
    c.on('data', (d) => { text += d; });
    c.on('end', () => resolve({ status: Number(/^HTTP\/1\.[01] (\d+)/.exec(text)?.[1] ?? 0), body: text }));
    c.on('error', reject);
    c.setTimeout(30_000, () => c.destroy(new Error(`${method} ${url} timed out`)));
  });
  const sent = new Promise<void>((resolve, reject) => {
    c.once('connect', () => c.write(`${method} ${url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`, (e) => (e ? reject(e) : resolve())));
    c.once('error', reject);
  });
  return { sent, reply };
}

/** The daemon's open fds (HOSTILE_DEBUG=1 prints them around the umount). */
function fdList(pid: number): string {
  const out: string[] = [];
  for (const f of fs.readdirSync(`/proc/${pid}/fd`).map(Number).sort((a, b) => a - b)) {
    try { out.push(`${f}:${fs.readlinkSync(`/proc/${pid}/fd/${f}`).replace(work, '')}`); } catch { /* gone */ }
  }
  return out.join(' ');
}

function filesWithMark(root: string, skip: string[] = []): string[] {
  const hits: string[] = [];
  const walk = (p: string) => {
    if (skip.includes(p)) return;
    const st = fs.lstatSync(p);
    if (st.isDirectory()) for (const n of fs.readdirSync(p)) walk(path.join(p, n));
    else if (st.isFile() && fs.readFileSync(p).includes(MARK)) hits.push(p);
  };
  if (fs.existsSync(root)) walk(root);
  return hits;
}

/**
 * Umount the passthrough at /target (DELETE /api/v1/mount) while the guest streams WRITEs of a
 * pattern to target/victim and keeps creating files in /other (each CREATE is a synchronous
 * openat O_RDWR in the daemon: it takes the lowest free fd numbers, i.e. the ones an umount
 * just closed); then mount a second passthrough and a RAFS image (cache files) and read from it.
 *
 * `file`: victim is a regular file opened O_DSYNC, so WRITEs wait for the disk in the daemon's
 * I/O threads and others queue behind them (the window is what it is: probabilistic).
 * `frozen`: the target is an ext4 loop mount that the host freezes (fsfreeze, as a backup tool
 * would) just before the umount: WRITEs park in the daemon's I/O threads and the rest queue up,
 * so the window stays open until the thaw (deterministic).
 */
async function umountDuringWrites(variant: 'file' | 'frozen'): Promise<void> {
  const base = path.join(work, `umount-${variant}`);
  const other = path.join(base, 'other');
  const target = path.join(base, 'target');
  const p2 = path.join(base, 'p2');
  for (const d of [other, target, p2]) fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(p2, 'existing'), 'p2 file\n');
  for (let i = 0; i < 1000; i++) fs.writeFileSync(path.join(other, `l_${String(i).padStart(6, '0')}`), '');
  const victimPath = path.join(target, 'victim');
  let frozen = false;
  if (variant === 'frozen') {
    const image = path.join(base, 'target.ext4');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, 128 * MIB);
    execFileSync('mkfs.ext4', ['-q', '-F', image], { stdio: 'ignore' });
    execFileSync('mount', ['-o', 'loop', image, target]);
    cleanups.push(() => {
      spawnSync('fsfreeze', ['-u', target]);
      spawnSync('umount', [target]);
    });
  }
  const freeze = (on: boolean) => {
    execFileSync('fsfreeze', [on ? '-f' : '-u', target], { timeout: 10_000 });
    frozen = on;
  };
  const img = buildImage(`umount-${variant}`, { f: randomBytes(256 * 1024) });
  const cacheDir = path.join(base, 'cache');
  const rafsConfig = JSON.stringify({
    version: 2, backend: { type: 'localfs', localfs: { dir: img.blobs } },
    cache: { type: 'blobcache', filecache: { work_dir: cacheDir } }, rafs: { mode: 'direct', validate: false },
  });
  const v = await startVirtiofs(`umount-${variant}`, ['--shared-dir', other, '--virtual-mountpoint', '/other']);
  const s = v.s;
  try {
    let r = await api(v.apisock, 'POST', '/api/v1/mount?mountpoint=/target', { fs_type: 'passthrough_fs', source: target, config: '' });
    assert.is(r.status, 204, r.body);
    const T = await lookupOk(s, 1n, 'target');
    const O = await lookupOk(s, 1n, 'other');
    // O_DSYNC (file): every write waits for the disk, so writes queue up in the daemon's I/O threads
    const cr = await s.call(s.msg(FuseOpcode.CREATE, T, [FuseCreateIn.encode({ flags: variant === 'file' ? 2 | 0o10000 : 2, mode: 0o100644, umask: 0, openFlags: 0 }), cstr('victim')]), 4096);
    assert.is(cr.hdr?.error, 0, `CREATE victim: ${hs(cr.hdr)}`);
    const victimIno = entryOf(cr).ino;
    // more handles on the victim: more fds for the umount to close under queued writes
    const fhs = [FuseOpenOut.decode(cr.payload.subarray(128)).fh];
    for (let i = 0; i < 8; i++) fhs.push(await openFh(s, victimIno, variant === 'file' ? 2 | 0o10000 : 2));

    const WSIZE = 64 * 1024; // cheap for the daemon's main loop, slow in its I/O threads
    const pattern = s.alloc(WSIZE, 4096);
    for (let o = 0; o < WSIZE; o += MARK.length) MARK.copy(s.ram.buf, s.off(pattern) + o);
    let umounted = false;
    let stop = false;
    const stats = { writes: 0, okBefore: 0, errBefore: 0, okAfter: 0, errAfter: 0, creates: 0, createFail: 0 };
    const afterErrnos = new Map<number, number>();
    const beforeErrnos = new Map<number, number>();
    const count = (m: Map<number, number>, e: number) => m.set(e, (m.get(e) ?? 0) + 1);
    const pending = new Set<Promise<unknown>>();
    let seq = 0;
    const track = (p: Promise<unknown>) => { pending.add(p); void p.finally(() => pending.delete(p)).catch(() => undefined); };

    const oneWrite = async () => {
      const after = umounted;
      const slab = s.takeSlab();
      try {
        const fh = fhs[seq % fhs.length];
        const off = (seq++ % 32) * WSIZE;
        s.write(slab, s.msg(FuseOpcode.WRITE, victimIno, FuseWriteIn.encode({ fh, offset: off, size: WSIZE, writeFlags: 0, lockOwner: 0n, flags: 0 }), { len: 80 + WSIZE }));
        const len = await s.post(1, [[slab, 80, false], [pattern, WSIZE, false], [slab + 4096, 64, true]], { timeoutMs: 60_000 });
        const rep = parseReply(s.read(slab + 4096, Math.min(len, 64)), len, 0);
        stats.writes++;
        const ok = rep.hdr?.error === 0;
        if (after) {
          if (ok) stats.okAfter++; else { stats.errAfter++; count(afterErrnos, -(rep.hdr?.error ?? 0)); }
        } else if (ok) stats.okBefore++; else { stats.errBefore++; count(beforeErrnos, -(rep.hdr?.error ?? 0)); }
      } finally {
        s.putSlab(slab);
      }
    };
    // CREATE takes two fds (the open file, then its O_PATH inode), LOOKUP one (O_PATH): a seeded
    // mix of both lands writable files on every parity of the fd numbers an umount frees
    let ci = 0;
    let li = 0;
    let rnd = 0x2545f491;
    const oneCreate = async () => {
      rnd ^= rnd << 13; rnd ^= rnd >>> 17; rnd ^= rnd << 5;
      if ((rnd >>> 0) % 3 === 0 && li < 1000) {
        await s.call(s.msg(FuseOpcode.LOOKUP, O, cstr(`l_${String(li++).padStart(6, '0')}`)), 4096, { q: 0, timeoutMs: 60_000 });
        return;
      }
      const rep = await s.call(s.msg(FuseOpcode.CREATE, O, [FuseCreateIn.encode({ flags: 2, mode: 0o100644, umask: 0, openFlags: 0 }), cstr(`c_${String(ci++).padStart(6, '0')}`)]), 4096, { q: 0, timeoutMs: 60_000 });
      if (rep.hdr?.error === 0) stats.creates++; else stats.createFail++;
    };
    // writers: up to 200 in flight on the request queue
    const writers = (async () => {
      while (!stop) {
        while (!stop && s.inflight(1) < 200) track(oneWrite());
        await sleep(1);
      }
    })();
    await sleep(400);
    const parked = stats.writes;
    if (process.env.HOSTILE_DEBUG) console.log(fdList(v.pid));
    if (variant === 'frozen') {
      freeze(true);
      await sleep(100); // every I/O thread is now stuck in a write, the rest wait in the queue
    }
    // The guest keeps creating files: one CREATE every 100 µs while the DELETE is served
    // (the request bytes are on the socket first), as busy vCPUs would.
    const del = rawHttp(v.apisock, 'DELETE', '/api/v1/mount?mountpoint=/target');
    await del.sent;
    const tDel = performance.now();
    for (let n = 0; n < 400 && performance.now() - tDel < 60; n++) {
      track(oneCreate());
      const t = performance.now() + 0.1;
      while (performance.now() < t) { /* spin: a vCPU does not yield */ }
    }
    // frozen: thaw once the DELETE was answered (or after 1 s, for a daemon that waits for its writes)
    let delMs = 0;
    const delDone = del.reply.then((x) => { umounted = true; delMs = performance.now() - tDel; return x; });
    if (process.env.HOSTILE_DEBUG) console.log(fdList(v.pid));
    let thawAt = 0;
    if (variant === 'frozen') {
      await within(delDone, 1000);
      for (let n = 0; n < 64; n++) track(oneCreate());
      await sleep(100);
      thawAt = performance.now() - tDel;
      freeze(false);
    }
    r = await delDone;
    assert.is(r.status, 204, r.body);
    // and more CREATEs for a while
    const creators = (async () => {
      while (!stop) {
        while (!stop && s.inflight(0) < 16) track(oneCreate());
        await sleep(1);
      }
    })();
    // the daemon opens other files while writes may still be queued
    const [m1, m2] = await Promise.all([
      api(v.apisock, 'POST', '/api/v1/mount?mountpoint=/p2', { fs_type: 'passthrough_fs', source: p2, config: '' }),
      api(v.apisock, 'POST', '/api/v1/mount?mountpoint=/rafs', { fs_type: 'rafs', source: img.boot, config: rafsConfig }),
    ]);
    assert.is(m1.status, 204, m1.body);
    assert.is(m2.status, 204, m2.body);
    const R = await lookupOk(s, 1n, 'rafs');
    const F = await lookupOk(s, R, 'f');
    const rr = await s.call(readMsg(s, F, 0n, 0, 256 * 1024), 16 + 256 * 1024, { timeoutMs: 30_000 });
    const P = await lookupOk(s, 1n, 'p2');
    const pc = await s.call(s.msg(FuseOpcode.CREATE, P, [FuseCreateIn.encode({ flags: 2, mode: 0o100644, umask: 0, openFlags: 0 }), cstr('new')]), 4096);
    await sleep(500);
    stop = true;
    await Promise.all([writers, creators]);
    await within(Promise.allSettled([...pending]), 60_000);
    await sleep(200); // write-behind of the cache
    const hits = [
      ...filesWithMark(other), ...filesWithMark(p2), ...filesWithMark(cacheDir), ...filesWithMark(img.blobs),
      ...filesWithMark(target, [victimPath]),
    ];
    log(`umount during writes (${variant}): ${stats.writes} WRITEs of 64 KiB (${parked} answered before the DELETE was sent; ${stats.okBefore} ok / ${stats.errBefore} failed ${JSON.stringify(Object.fromEntries(beforeErrnos))} before it was answered; after: ${stats.okAfter} ok, ${stats.errAfter} failed ${JSON.stringify(Object.fromEntries(afterErrnos))}), DELETE answered in ${delMs.toFixed(0)} ms, ${stats.creates} CREATEs in /other (${stats.createFail} failed)${variant === 'frozen' ? `, thawed ${thawAt.toFixed(0)} ms after the DELETE was sent` : ''}, RAFS read ${rr.hdr?.error}, p2 CREATE ${pc.hdr?.error}; files holding the pattern besides the victim: ${hits.length}${hits.length ? ` (${hits.slice(0, 4).map((h) => path.relative(base, h)).join(', ')}${hits.length > 4 ? ', …' : ''})` : ''}`);
    assert.ok(!dead(v), 'daemon died');
    assert.equal(hits, [], 'guest WRITE data landed in files other than the target');
    assert.is(stats.okAfter, 0, 'WRITEs after the umount succeeded');
    assert.ok(stats.errAfter > 0, 'no WRITE was sent after the umount (test did not exercise it)');
  } finally {
    if (frozen) freeze(false);
    await shutdown(v);
  }
}

test('4a. umount of a passthrough while O_DSYNC WRITEs are queued: the data lands in no other file; later WRITEs fail', async () => {
  if (skip || !picked('4a')) return;
  await umountDuringWrites('file');
});

test('4b. umount while WRITEs are parked on a frozen filesystem: the data lands in no other file; later WRITEs fail', async () => {
  if (skip || !picked('4b')) return;
  const missing = ['fsfreeze', 'mkfs.ext4', 'mount'].find((c) => !hasCommand(c)) ?? (fs.existsSync('/dev/loop-control') ? undefined : '/dev/loop-control');
  if (missing) { console.log(`SKIP hostile-guest 4b: no ${missing}`); return; }
  await umountDuringWrites('frozen');
});

// ---------------------------------------------------------------------------------------
// 5. READ from a cache file gone short

/** What a READ reply holds: the right bytes, EIO, or something unsafe. */
function classifyRead(r: FuseReply, want: Buffer): 'eio' | 'correct' | string {
  if (r.hdr?.error === -E.EIO && r.hdr.len === 16 && r.used === 16) return 'eio';
  if (r.hdr?.error === 0 && r.payload.equals(want)) return 'correct';
  if (r.hdr?.error === 0) {
    const zeros = r.payload.every((b) => b === 0);
    const filler = r.payload.every((b) => b === 0xee);
    return `UNSAFE: success with ${r.payload.length} bytes${zeros ? ' (all zero)' : filler ? ' (stale guest memory, never written)' : ''}, wrong data`;
  }
  return `error ${r.hdr?.error} len ${r.hdr?.len} used ${r.used}`;
}

test('5a. virtio-fs: READ of a cached chunk whose cache file was truncated answers EIO (or the right bytes), never zeros', async () => {
  if (skip || !picked('5a')) return;
  const data = randomBytes(256 * 1024);
  const img = buildImage('eio-vfs', { f: data });
  const dir = path.join(work, 'eio-vfs-localfs');
  copyDir(img.blobs, dir);
  const v = await startVirtiofs('eio', ['--bootstrap', img.boot, '--localfs-dir', dir, '--cache-policy', 'none']);
  const s = v.s;
  try {
    const F = await lookupOk(s, 1n, 'f');
    const fh = await openFh(s, F);
    const r1 = await s.call(readMsg(s, F, fh, 0, data.length), 16 + data.length);
    assert.is(r1.hdr?.error, 0);
    assert.ok(r1.payload.equals(data), 'first READ');
    const cache = path.join(dir, `${img.blobId}.blob.data`);
    const ready = await until(() => readyChunks(`${cache}.chunk_map`, 4) >= 4, 10_000);
    assert.ok(ready, `chunks never marked ready in ${cache}.chunk_map`);
    fs.truncateSync(cache, 0);
    const r2 = await s.call(readMsg(s, F, fh, 0, data.length), 16 + data.length, { timeoutMs: 10_000 });
    const r3 = await s.call(readMsg(s, F, fh, 65536 + 100, 4096), 16 + 4096, { timeoutMs: 10_000 });
    const c2 = classifyRead(r2, data);
    const c3 = classifyRead(r3, data.subarray(65536 + 100, 65536 + 100 + 4096));
    log(`virtio-fs READ after the cache file was truncated: whole file → ${c2} (${r2.ms.toFixed(1)} ms); 4 KiB in chunk 1 → ${c3} (${r3.ms.toFixed(1)} ms)`);
    assert.ok(!dead(v), 'daemon died');
    assert.ok(c2 === 'eio' || c2 === 'correct', c2);
    assert.ok(c3 === 'eio' || c3 === 'correct', c3);
  } finally {
    await shutdown(v);
  }
});

test('5b. /dev/fuse: reading a file whose cache file was truncated fails with EIO promptly (or reads the right bytes)', async () => {
  if (skip || !picked('5b')) return;
  const fskip = fuseMissing();
  if (fskip) { console.log(`SKIP hostile-guest 5b: ${fskip}`); return; }
  const data = randomBytes(256 * 1024);
  const img = buildImage('eio-fuse', { f: data });
  const dir = path.join(work, 'eio-fuse-localfs');
  copyDir(img.blobs, dir);
  const mnt = path.join(work, 'eio-fuse-mnt');
  const d: Daemon = await startNydusd(mnt, ['--bootstrap', img.boot, '--localfs-dir', dir, '--log-level', 'error']);
  daemons.add(d);
  const out = path.join(work, 'eio-fuse-out');
  // O_DIRECT: every read reaches the daemon (the kernel page cache would hide the second one)
  const dd = () => {
    fs.rmSync(out, { force: true });
    const t = performance.now();
    const r = spawnSync('dd', [`if=${path.join(mnt, 'f')}`, `of=${out}`, 'bs=256k', 'iflag=direct'], { encoding: 'utf8', timeout: 15_000 });
    return { status: r.status, signal: r.signal, stderr: r.stderr.trim().split('\n')[0], ms: performance.now() - t, got: fs.existsSync(out) ? fs.readFileSync(out) : Buffer.alloc(0) };
  };
  try {
    const first = dd();
    assert.is(first.status, 0, `first read: ${first.stderr}`);
    assert.ok(first.got.equals(data), 'first read returns the file');
    const cache = path.join(dir, `${img.blobId}.blob.data`);
    assert.ok(await until(() => readyChunks(`${cache}.chunk_map`, 4) >= 4, 10_000), 'chunks never marked ready');
    fs.truncateSync(cache, 0);
    const second = dd();
    const outcome = second.status === 0
      ? (second.got.equals(data) ? 'correct' : `UNSAFE: dd succeeded with wrong data${second.got.every((b) => b === 0) ? ' (all zero)' : ''}`)
      : second.signal ? `dd killed (${second.signal}) after ${second.ms.toFixed(0)} ms: hung` : /Input\/output error/.test(second.stderr) ? 'eio' : `dd failed: ${second.stderr}`;
    log(`/dev/fuse read after the cache file was truncated: ${outcome} (dd exit ${second.status}, ${second.ms.toFixed(0)} ms: ${second.stderr})`);
    assert.ok(outcome === 'eio' || outcome === 'correct', outcome);
    assert.ok(second.ms < 5000, `read took ${second.ms.toFixed(0)} ms`);
  } finally {
    await d.stop();
    daemons.delete(d);
  }
});

test.run();
