import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fsp from 'node:fs';
import { Worker } from 'node:worker_threads';
import {
  FuseAttrOut, FuseEntryOut, FuseForgetIn, FuseGetattrIn, FuseInitOut, FuseOpcode, FuseOutHeader, FuseReadIn,
} from '../../src/virtiofs/fuse/abi';
import { FuseServer } from '../../src/virtiofs/fuse/server';
import type { FileSystem } from '../../src/common/filesystem';
import { VIRTIO_FS_FEATURES, VirtioFsDaemon } from '../../src/virtiofs/transport/virtio-fs-device';
import { FrontendReq, VhostUserSingleMemRegion, VhostUserVringAddr } from '../../src/vhost-user/protocol/message';
import { eventfdCreate, closeFd, memfdCreate } from '../../src/vhost-user/sys/host';
import { MemoryFs, cstr, initBody, req } from '../support/memory-fs';
import { FakeGuest, GPA_BASE, GuestRam, MIB, VhostUserClient, state, u64 } from '../support/virtio-driver';

const BIG = Buffer.from(Array.from({ length: 300000 }, (_, i) => (i * 7) % 251));

function world(opts: { windowStep?: number; maxInflight?: number; pollUs?: number } = {}) {
  const fs = new MemoryFs();
  fs.addDir('dir');
  fs.addFile('dir/hello', 'hello, virtio-fs\n');
  fs.addFile('big', BIG);
  const server = new FuseServer(fs);
  const sock = path.join(fsp.mkdtempSync(path.join(os.tmpdir(), 'vhu-')), 'vhost.sock');
  const daemon = new VirtioFsDaemon(server, { socketPath: sock, windowStep: opts.windowStep, maxInflight: opts.maxInflight, pollUs: opts.pollUs ?? 0 });
  return { fs, server, sock, daemon };
}

type World = ReturnType<typeof world>;

/** A started daemon and a fake guest on it; everything is torn down after `fn`. */
async function withGuest(fn: (g: FakeGuest, w: World) => Promise<void>, opts: Parameters<typeof world>[0] = {}): Promise<void> {
  const w = world(opts);
  const { sock, daemon } = w;
  await daemon.start();
  const ram = new GuestRam();
  const g = new FakeGuest(ram, sock);
  try {
    await fn(g, w);
  } finally {
    g.close();
    daemon.stop();
    ram.dispose();
  }
}

async function initFuse(g: FakeGuest): Promise<void> {
  const { wait } = g.submit(1, req(FuseOpcode.INIT, 0n, initBody(38, (1n << 0n) | (1n << 25n) | (1n << 30n) | (1n << 31n))), 4096);
  const { used, reply } = await wait();
  const h = FuseOutHeader.decode(reply);
  assert.is(h.error, 0);
  assert.is(used.len, h.len);
  assert.ok(FuseInitOut.decode(reply.subarray(16)).minor >= 31);
}

const readReq = (ino: bigint, offset: number, size: number) =>
  req(FuseOpcode.READ, ino, FuseReadIn.encode({ fh: 0n, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 }));

test('negotiation: replies carry flags 0x5; features, protocol features, queue count, slots', async () => {
  const { sock, daemon } = world();
  await daemon.start();
  const ram = new GuestRam();
  const c = VhostUserClient.connect(sock);
  try {
    const f = await c.request(FrontendReq.GET_FEATURES);
    assert.is(f.flags, 0x5);
    assert.is(f.request, FrontendReq.GET_FEATURES);
    const feats = f.body.readBigUInt64LE(0);
    assert.is(feats, VIRTIO_FS_FEATURES);
    assert.is(feats & ((1n << 34n) | (1n << 35n) | (1n << 33n)), 0n); // never PACKED / IN_ORDER / ACCESS_PLATFORM
    const proto = await c.getU64(FrontendReq.GET_PROTOCOL_FEATURES);
    assert.is(proto, (1n << 0n) | (1n << 3n) | (1n << 5n) | (1n << 15n));
    c.send(FrontendReq.SET_PROTOCOL_FEATURES, u64(proto));
    assert.is(await c.getU64(FrontendReq.GET_QUEUE_NUM), 2n);
    assert.is(await c.getU64(FrontendReq.GET_MAX_MEM_SLOTS), 32n);
    // SET_BACKEND_REQ_FD with NEED_REPLY → ack 0
    const efd = eventfdCreate();
    assert.is(await c.acked(FrontendReq.SET_BACKEND_REQ_FD, Buffer.alloc(0), [efd]), 0n);
    closeFd(efd);
    c.send(FrontendReq.SET_OWNER);
    // REPLY_ACK nack: SET_VRING_NUM with a bad size
    assert.is(await c.acked(FrontendReq.SET_VRING_NUM, state(0, 1000)), 1n);
    assert.is(await c.acked(FrontendReq.SET_VRING_NUM, state(0, 1024)), 0n);
    assert.is(await c.acked(FrontendReq.SET_VRING_NUM, state(7, 256)), 1n); // bad index
    // ADD_MEM_REG beyond the end of the memfd is refused (would SIGBUS)
    const small = memfdCreate('small', 4096);
    assert.is(await c.acked(FrontendReq.ADD_MEM_REG, VhostUserSingleMemRegion.encode({ guestPhysAddr: 0n, memorySize: BigInt(MIB), userspaceAddr: 0x1000n, mmapOffset: 0n }), [small]), 1n);
    assert.is(await c.acked(FrontendReq.ADD_MEM_REG, VhostUserSingleMemRegion.encode(ram.regionDesc(0)), [ram.fd]), 0n);
    // overlapping region refused
    assert.is(await c.acked(FrontendReq.ADD_MEM_REG, VhostUserSingleMemRegion.encode(ram.regionDesc(0)), [ram.fd]), 1n);
    assert.is(await c.acked(FrontendReq.REM_MEM_REG, VhostUserSingleMemRegion.encode(ram.regionDesc(0))), 0n);
    assert.is(await c.acked(FrontendReq.REM_MEM_REG, VhostUserSingleMemRegion.encode(ram.regionDesc(0))), 1n);
    // SET_VRING_ADDR without memory: nack
    assert.is(await c.acked(FrontendReq.SET_VRING_ADDR, VhostUserVringAddr.encode({ index: 0, flags: 0, desc: 0n, used: 0n, avail: 0n, log: 0n })), 1n);
    // still alive
    assert.is(await c.getU64(FrontendReq.GET_QUEUE_NUM), 2n);
  } finally {
    c.close();
    daemon.stop();
    ram.dispose();
  }
});

test('FUSE over the virtqueue: INIT, LOOKUP, GETATTR, READ (gather, indirect, across regions), FORGET on hiprio', async () => {
  await withGuest(async (g, { fs, daemon }) => {
    await g.setup({ queueSize: 256 });
    assert.is(g.features & (1n << 29n), 1n << 29n);
    await initFuse(g);
    assert.ok(g.queues[1].calls() >= 1, 'call eventfd signalled');

    // LOOKUP, request split over 3 readable descriptors, reply over 4 writable ones
    let s = g.submit(1, req(FuseOpcode.LOOKUP, fs.inoOf('dir'), cstr('hello')), 200, { readSplit: 17, writeSplit: 50 });
    let r = await s.wait();
    assert.is(r.used.id, s.head);
    let h = FuseOutHeader.decode(r.reply);
    assert.is(h.error, 0);
    assert.is(r.used.len, 16 + FuseEntryOut.SIZE);
    const ino = r.reply.readBigUInt64LE(16);
    assert.is(ino, fs.inoOf('dir/hello'));

    // GETATTR through an indirect table
    s = g.submit(1, req(FuseOpcode.GETATTR, ino, FuseGetattrIn.encode({ getattrFlags: 0, fh: 0n })), 4096, { indirect: true, readSplit: 8 });
    r = await s.wait();
    assert.is(FuseOutHeader.decode(r.reply).error, 0);
    assert.is(FuseAttrOut.decode(r.reply.subarray(16)).attr.size, 17);

    // READ 128 KiB with the reply gathered over 33 × 4 KiB descriptors, in an indirect table
    const bigIno = fs.inoOf('big');
    s = g.submit(1, readReq(bigIno, 1000, 131072), 16 + 131072, { indirect: true, writeSplit: 4096 });
    r = await s.wait();
    h = FuseOutHeader.decode(r.reply);
    assert.is(h.error, 0);
    assert.is(r.used.len, 16 + 131072);
    assert.ok(r.reply.subarray(16).equals(BIG.subarray(1000, 1000 + 131072)));

    // READ whose reply buffer crosses the boundary between the two regions (direct chain)
    g.allocAt(GPA_BASE + 2 * MIB - 5000);
    s = g.submit(1, readReq(bigIno, 7, 20000), 16 + 20000, { at: GPA_BASE + 2 * MIB - 9000 });
    r = await s.wait();
    assert.is(r.used.len, 16 + 20000);
    assert.ok(r.reply.subarray(16).equals(BIG.subarray(7, 20007)));

    // FORGET on hiprio: no writable part, used len 0
    s = g.submit(0, req(FuseOpcode.FORGET, ino, FuseForgetIn.encode({ nlookup: 1 })), 0);
    r = await s.wait();
    assert.is(r.used.len, 0);
    assert.is(r.used.id, s.head);
    assert.is(fs.lookupCount(ino), 0);

    // several requests in flight; completions out of order are fine
    const release = fs.hold();
    const many = [0, 1, 2, 3, 4].map((i) => g.submit(1, readReq(bigIno, i * 100, 100), 116));
    await new Promise((res) => setTimeout(res, 20));
    assert.is(g.queues[1].usedIdx(), 5); // nothing completed while the fs is held
    release();
    const used = await g.queues[1].waitUsed(5);
    assert.equal(used.map((u) => u.id).sort((a, b) => a - b), many.map((m) => m.head).sort((a, b) => a - b));
    assert.ok(used.every((u) => u.len === 116));

    const bases = await g.stop();
    assert.equal(bases, [1, 10]);
  });
});

test('maxInflight: popping stops at the limit and completions resume it; every request is served once', async () => {
  await withGuest(async (g, { fs, daemon }) => {
    await g.setup({ queueSize: 256 });
    await initFuse(g);
    const bigIno = fs.inoOf('big');
    const release = fs.hold();
    const many = Array.from({ length: 12 }, (_, i) => g.submit(1, readReq(bigIno, i * 1000, 1000), 16 + 1000));
    await new Promise((res) => setTimeout(res, 30));
    const before = g.queues[1].usedIdx();
    assert.is(daemon.device.served[1], 1); // INIT only: the 12 READs wait on the held fs (2 popped)
    release();
    const used = await g.queues[1].waitUsed(12);
    assert.is(g.queues[1].usedIdx(), before + 12);
    assert.equal(used.map((u) => u.id).sort((a, b) => a - b), many.map((m) => m.head).sort((a, b) => a - b));
    assert.ok(used.every((u) => u.len === 16 + 1000));
    assert.is(daemon.device.served[1], 13);
  }, { maxInflight: 2 });
});

test('READs answered synchronously (readSync): one kick\'s batch is served at once and shares one interrupt', async () => {
  await withGuest(async (g, { fs, daemon }) => {
    const bigIno = fs.inoOf('big');
    let sync = 0;
    // checked by the server at each READ, so set once the daemon runs
    (fs as MemoryFs & { readSync?: FileSystem['readSync'] }).readSync = (_ctx, ino, _fh, offset, size) => {
      if (ino !== bigIno) return undefined;
      sync++;
      return [BIG.subarray(offset, offset + size)];
    };
    await g.setup({ queueSize: 256 });
    await initFuse(g);
    const q = g.queues[1];
    q.calls();
    q.setUsedEvent(q.usedIdx());
    const many = Array.from({ length: 8 }, (_, i) => g.submit(1, readReq(bigIno, i * 5000, 5000), 16 + 5000, { indirect: true, writeSplit: 4096 }));
    const replies = await Promise.all(many.map((m) => m.wait()));
    for (const [i, r] of replies.entries()) {
      assert.is(r.used.len, 16 + 5000);
      assert.ok(r.reply.subarray(16).equals(BIG.subarray(i * 5000, i * 5000 + 5000)));
    }
    assert.is(sync, 8);
    await new Promise((res) => setTimeout(res, 10));
    assert.is(q.calls(), 1, 'one interrupt for the batch');
    assert.is(daemon.device.served[1], 9);
  });
});

/**
 * From another thread (the daemon's loop may be busy polling): once used.idx
 * of `q` reaches `used`, wait `afterMs`, then publish the staged avail.idx.
 */
function publishAfterUsed(g: FakeGuest, q: number, used: number, afterMs: number): Promise<number> {
  const queue = g.queues[q];
  const st = queue.stagedIdx!;
  const w = new Worker(`
    const { workerData: d } = require('node:worker_threads');
    const fs = require('node:fs');
    const b = Buffer.alloc(2);
    const deadline = Date.now() + 5000;
    for (;;) {
      fs.readSync(d.fd, b, 0, 2, d.usedOffset);
      if (b.readUInt16LE(0) === d.used) break;
      if (Date.now() > deadline) process.exit(3);
    }
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, d.afterMs);
    b.writeUInt16LE(d.idx, 0);
    fs.writeSync(d.fd, b, 0, 2, d.offset);
  `, { eval: true, workerData: { ...st, usedOffset: g.ram.off(queue.usedGpa + 2), used, afterMs } });
  return new Promise((resolve, reject) => { w.on('exit', resolve); w.on('error', reject); });
}

/** READs of `ino` answered synchronously, as RAFS answers cached data (the batch completes before the queue drains). */
function syncReads(fs: MemoryFs, ino: bigint, data: Buffer): void {
  (fs as MemoryFs & { readSync?: FileSystem['readSync'] }).readSync = (_ctx, i, _fh, offset, size) => (i === ino ? [data.subarray(offset, offset + size)] : undefined);
}

const HELLO = 'hello, virtio-fs\n';

/**
 * After INIT: READ a of dir/hello made and kicked, READ b staged behind it
 * (neither published nor kicked), and another thread publishing b `afterMs`
 * after a is answered. `score` preset on the request queue.
 */
async function aThenUnkickedB(g: FakeGuest, w: World, score: number, afterMs: number) {
  const { fs, daemon } = w;
  syncReads(fs, fs.inoOf('dir/hello'), Buffer.from(HELLO));
  await g.setup({ queueSize: 256 });
  await initFuse(g);
  const q = g.queues[1];
  const vring = daemon.vhost.handler!.vrings[1];
  vring.pollScore = score;
  const ino = fs.inoOf('dir/hello');
  const a = g.submit(1, readReq(ino, 0, 5), 16 + 5);
  const b = g.submit(1, readReq(ino, 7, 10), 16 + 10, { staged: true });
  const published = publishAfterUsed(g, 1, q.usedIdx() + 1, afterMs);
  return { q, vring, a, b, published };
}

test('polling: a drained queue that polls serves a request the guest makes meanwhile without a kick', async () => {
  await withGuest(async (g, w) => {
    // as after a run of requests that came soon after each drain
    const { vring, a, b, published } = await aThenUnkickedB(g, w, 1, 20);
    const ra = await a.wait();
    assert.is(ra.reply.subarray(16).toString(), 'hello');
    // b is published after a was answered, and never kicked: only the poll can find it
    const rb = await b.wait();
    assert.is(rb.reply.subarray(16).toString(), HELLO.slice(7, 17));
    assert.is(await published, 0);
    assert.is(w.daemon.device.served[1], 3);
    assert.ok(vring.pollScore > 0.9, `score ${vring.pollScore}`);
  }, { pollUs: 300_000 });
});

test('polling: a queue whose requests come late does not poll; a kick still serves them', async () => {
  await withGuest(async (g, w) => {
    const { q, a, b, published } = await aThenUnkickedB(g, w, 0, 5);
    await a.wait();
    assert.is(await published, 0);
    await new Promise((res) => setTimeout(res, 100));
    assert.is(w.daemon.device.served[1], 2, 'not polled: the unkicked request waits');
    q.doKick();
    const rb = await b.wait();
    assert.is(rb.reply.subarray(16).toString(), HELLO.slice(7, 17));
    assert.is(w.daemon.device.served[1], 3);
  }, { pollUs: 300_000 });
});

test('polling: the score rises while kicks come within the window of a drain and falls when they come later', async () => {
  await withGuest(async (g, { fs, daemon }) => {
    syncReads(fs, fs.inoOf('dir/hello'), Buffer.from(HELLO));
    await g.setup({ queueSize: 256 });
    await initFuse(g);
    const vring = daemon.vhost.handler!.vrings[1];
    const ino = fs.inoOf('dir/hello');
    // the window is 50 ms: a request made right after the last reply is within it
    for (let i = 0; i < 6; i++) await g.submit(1, readReq(ino, 0, 5), 16 + 5).wait();
    assert.ok(vring.pollScore >= 0.5, `score ${vring.pollScore} after prompt requests`);
    // now every request comes later than the window: the score decays below the threshold
    for (let i = 0; i < 8; i++) {
      await new Promise((res) => setTimeout(res, 80));
      await g.submit(1, readReq(ino, 0, 5), 16 + 5).wait();
    }
    assert.ok(vring.pollScore < 0.5, `score ${vring.pollScore} after late requests`);
  }, { pollUs: 50_000 });
});

test('bad chains are completed with len 0 and the queue keeps working', async () => {
  await withGuest(async (g) => {
    await g.setup();
    const q = g.queues[1];
    // address outside guest memory
    const h1 = q.submit([[0x1000, 64, false], [GPA_BASE + 0x80000, 64, true]]);
    // loop: descriptor pointing to itself
    const [d] = q.allocDescs(1);
    q.writeDesc(q.descGpa, d, GPA_BASE + 0x80000, 16, 1, d);
    q.publish(d);
    // writable then readable
    const h3 = q.submit([[GPA_BASE + 0x80000, 16, true], [GPA_BASE + 0x81000, 16, false]]);
    // indirect inside indirect
    const tbl = g.alloc(32, 16);
    q.writeDesc(tbl, 0, g.alloc(32, 16), 32, 4, 0);
    const [d4] = q.allocDescs(1);
    q.writeDesc(q.descGpa, d4, tbl, 16, 4, 0);
    q.publish(d4);
    // huge length crossing the end of RAM
    const h5 = q.submit([[GPA_BASE + 0x80000, 0xffffffff, true]]);
    q.doKick();
    const used = await q.waitUsed(5);
    assert.equal(used.map((u) => u.id), [h1, d, h3, d4, h5]);
    assert.ok(used.every((u) => u.len === 0));
    await initFuse(g);
  });
});

test('EVENT_IDX: used_event suppresses calls; avail_event is published', async () => {
  await withGuest(async (g) => {
    await g.setup({ memTable: true });
    await initFuse(g);
    const q = g.queues[1];
    q.calls();
    assert.is(q.availEvent(), 1);
    // used_event far ahead: no interrupt for the next completion
    q.setUsedEvent(100);
    await g.submit(1, readReq(2n, 0, 10), 100).wait();
    await new Promise((res) => setTimeout(res, 10));
    assert.is(q.calls(), 0);
    // used_event = current used idx: interrupt on the next one
    q.setUsedEvent(q.usedIdx());
    await g.submit(1, readReq(2n, 0, 10), 100).wait();
    await new Promise((res) => setTimeout(res, 10));
    assert.is(q.calls(), 1);
    assert.is(q.availEvent(), 3);
  });
});

test('EVENT_IDX: a completion while there is no call fd is signalled once SET_VRING_CALL arrives', async () => {
  await withGuest(async (g) => {
    await g.setup({ memTable: true });
    await initFuse(g);
    const q = g.queues[1];
    q.calls();
    // the frontend withdraws the call fd (VRING_NOFD), the guest asks for an interrupt on the next used entry
    g.client.send(FrontendReq.SET_VRING_CALL, u64(1 | 0x100));
    await g.client.getU64(FrontendReq.GET_FEATURES);
    q.setUsedEvent(q.usedIdx());
    await g.submit(1, readReq(2n, 0, 10), 100).wait();
    await new Promise((res) => setTimeout(res, 10));
    assert.is(q.calls(), 0, 'no call fd: nothing to signal');
    // a late call fd gets the interrupt the guest is still waiting for
    g.client.send(FrontendReq.SET_VRING_CALL, u64(1), [q.call]);
    await g.client.getU64(FrontendReq.GET_FEATURES);
    await new Promise((res) => setTimeout(res, 10));
    assert.is(q.calls(), 1);
  });
});

test('rings start disabled with PROTOCOL_FEATURES; kicks are served once enabled', async () => {
  await withGuest(async (g) => {
    await g.setup({ noEnable: true });
    const s = g.submit(1, req(FuseOpcode.INIT, 0n, initBody(38, 0n)), 4096);
    await new Promise((res) => setTimeout(res, 20));
    assert.is(g.queues[1].usedIdx(), 0);
    g.client.send(FrontendReq.SET_VRING_ENABLE, state(1, 1));
    const r = await s.wait();
    assert.is(FuseOutHeader.decode(r.reply).error, 0);
  });
});

test('disconnect tears down; the next frontend is accepted (reconnect) and served; small view windows', async () => {
  const { fs, sock, daemon } = world({ windowStep: 64 * 1024 });
  await daemon.start();
  const ram = new GuestRam();
  try {
    for (let round = 0; round < 3; round++) {
      const g = new FakeGuest(ram, sock);
      await g.setup();
      await initFuse(g);
      // 100 KiB read across several 64 KiB windows
      const r = await g.submit(1, readReq(fs.inoOf('big'), 5, 100000), 16 + 100000, { writeSplit: 30000 }).wait();
      assert.ok(r.reply.subarray(16).equals(BIG.subarray(5, 100005)));
      const gone = new Promise((res) => daemon.vhost.once('disconnect', res));
      g.close();
      await gone;
      assert.is(daemon.vhost.connected, false);
    }
    assert.is(daemon.vhost.connections, 3);
  } finally {
    daemon.stop();
    ram.dispose();
  }
});

test('a malformed header ends the connection; the daemon accepts the next one', async () => {
  const { sock, daemon } = world();
  await daemon.start();
  const c = VhostUserClient.connect(sock);
  const bad = Buffer.alloc(12);
  bad.writeUInt32LE(1, 0);
  bad.writeUInt32LE(0x2, 4); // version 2
  c.sendRaw(bad);
  assert.is(await c.recv(1000), null);
  c.close();
  const c2 = VhostUserClient.connect(sock);
  assert.is(await c2.getU64(FrontendReq.GET_QUEUE_NUM), 2n);
  c2.close();
  daemon.stop();
});

test.run();
