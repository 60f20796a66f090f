/**
 * Hostile frontends and hostile guests against the vhost-user-fs daemon.
 * Surviving is the proof: an access outside the mapped regions would be a
 * SIGSEGV/SIGBUS that kills this process. Seeded, < 20 s.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fsp from 'node:fs';
import { FuseServer } from '../../src/virtiofs/fuse/server';
import { VirtioFsDaemon } from '../../src/virtiofs/transport/virtio-fs-device';
import { FrontendReq, VhostUserMemory, VhostUserSingleMemRegion, VhostUserVringAddr, encodeMessage } from '../../src/vhost-user/protocol/message';
import { closeFd, eventfdCreate, memfdCreate, socketPair } from '../../src/vhost-user/sys/host';
import { MemoryFs } from '../support/memory-fs';
import { setupLog } from '../../src/common/log';
import { FakeGuest, GPA_BASE, GuestRam, MIB, UADDR_A, VhostUserClient } from '../support/virtio-driver';

if (!process.env.NYDUS_LOG_LEVEL) setupLog('error');
const openFds = () => fsp.readdirSync('/proc/self/fd').length;

function rng(seed: number) {
  let s = seed >>> 0;
  const next = () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s;
  };
  return { u32: next, int: (n: number) => next() % n, pick: <T>(a: T[]) => a[next() % a.length], chance: (p: number) => next() / 2 ** 32 < p };
}

function world() {
  const fs = new MemoryFs();
  fs.addFile('f', Buffer.alloc(50000, 7));
  const sock = path.join(fsp.mkdtempSync(path.join(os.tmpdir(), 'vhf-')), 'vhost.sock');
  const daemon = new VirtioFsDaemon(new FuseServer(fs), { socketPath: sock });
  return { sock, daemon };
}

const u64 = (v: bigint) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt.asUintN(64, v)); return b; };

test('random and hostile vhost-user messages', async () => {
  const fdsBefore = openFds();
  const { sock, daemon } = world();
  await daemon.start();
  const ram = new GuestRam();
  const r = rng(0xC0FFEE);
  const small = memfdCreate('small', 8192);
  let c = VhostUserClient.connect(sock);
  let reconnects = 0;
  const addrs = [0n, 1n, BigInt(GPA_BASE), BigInt(UADDR_A), BigInt(UADDR_A + MIB), BigInt(UADDR_A) + 2n ** 40n, 2n ** 63n, 2n ** 64n - 1n, 2n ** 53n];
  const sizes = [0n, 1n, 4096n, BigInt(MIB), 2n * BigInt(MIB), 4n * BigInt(MIB), 2n ** 40n, 2n ** 64n - 1n];
  const region = () => ({ guestPhysAddr: r.pick(addrs), memorySize: r.pick(sizes), userspaceAddr: r.pick(addrs), mmapOffset: r.pick([0n, 100n, 4096n, BigInt(MIB), 2n ** 62n]) });
  for (let i = 0; i < 1500; i++) {
    const req = r.chance(0.9) ? 1 + r.int(41) : r.u32();
    let body: Buffer;
    switch (r.int(6)) {
      case 0: body = Buffer.alloc(0); break;
      case 1: body = u64(BigInt(r.u32()) | (r.chance(0.3) ? 0x100n : 0n)); break;
      case 2: body = Buffer.alloc(8); body.writeUInt32LE(r.int(4), 0); body.writeUInt32LE(r.pick([0, 1, 2, 256, 1024, 0xffff, 0xffffffff]), 4); break;
      case 3: body = VhostUserVringAddr.encode({ index: r.int(3), flags: r.int(2), desc: r.pick(addrs), used: r.pick(addrs), avail: r.pick(addrs), log: 0n }); break;
      case 4: body = r.chance(0.5) ? VhostUserSingleMemRegion.encode(region()) : VhostUserMemory.encode([region(), region()].slice(0, 1 + r.int(2))); break;
      default: body = Buffer.alloc(r.int(64)); for (let k = 0; k < body.length; k++) body[k] = r.int(256);
    }
    if (r.chance(0.05)) body = Buffer.concat([body, Buffer.alloc(r.int(100))]); // bad size
    const fds: number[] = [];
    const nf = r.chance(0.6) ? 0 : 1 + r.int(3);
    for (let k = 0; k < nf; k++) fds.push(r.pick([ram.fd, small, -1]));
    const own: number[] = [];
    const sendFds = fds.map((f) => {
      if (f >= 0) return f;
      if (r.chance(0.5)) { const e = eventfdCreate(); own.push(e); return e; }
      const [a, b] = socketPair();
      own.push(a, b);
      return a;
    });
    const flags = r.chance(0.05) ? r.u32() & 0xf : r.pick([1, 9]);
    try {
      c.sendRaw(encodeMessage(req, flags, body), sendFds);
      // barrier: GET_QUEUE_NUM; skip whatever replies come before it
      c.send(FrontendReq.GET_QUEUE_NUM);
      let ok = false;
      for (let k = 0; k < 3; k++) {
        const rep = await c.recv(2000);
        if (rep === null) break;
        assert.is(rep.flags, 0x5);
        if (rep.request === FrontendReq.GET_QUEUE_NUM) { ok = true; break; }
      }
      if (!ok) throw new Error('reconnect');
    } catch {
      c.close();
      c = VhostUserClient.connect(sock);
      reconnects++;
    } finally {
      for (const e of own) closeFd(e);
    }
  }
  // the daemon still serves a proper guest
  c.close();
  const g = new FakeGuest(ram, sock);
  await g.setup();
  g.close();
  daemon.stop();
  closeFd(small);
  ram.dispose();
  assert.ok(reconnects > 0);
  await new Promise((res) => setTimeout(res, 20));
  assert.ok(openFds() <= fdsBefore + 2, `fd leak: ${fdsBefore} → ${openFds()}`);
});

test('random descriptor tables and hostile rings', async () => {
  const { sock, daemon } = world();
  await daemon.start();
  const ram = new GuestRam();
  const r = rng(12345);
  const g = new FakeGuest(ram, sock);
  await g.setup({ queueSize: 64 });
  const addr = () => r.pick([
    GPA_BASE + r.int(4 * MIB), GPA_BASE + 4 * MIB - r.int(64), GPA_BASE + 2 * MIB - r.int(64), r.int(2 ** 31),
    GPA_BASE - 16, 2 ** 53 + r.int(100), 0,
  ]);
  const len = () => r.pick([0, 1, 16, 40, 64, 4096, r.int(65536), 0xffffffff, 2 * MIB, r.u32()]);
  for (let round = 0; round < 300; round++) {
    const q = g.queues[r.int(2)];
    const tables = [q.descGpa, GPA_BASE + 0x30000, GPA_BASE + 0x31000];
    // scribble random descriptors in the ring table and two indirect tables
    for (let k = 0; k < 8; k++) {
      const t = r.pick(tables);
      const flags = r.int(8);
      const lenV = flags & 4 && r.chance(0.7) ? 16 * (1 + r.int(8)) : len();
      const a = flags & 4 && r.chance(0.7) ? r.pick(tables.slice(1)) : addr();
      q.writeDesc(t, r.int(t === q.descGpa ? q.size : 64), a, lenV, flags, r.int(r.chance(0.8) ? q.size : 65536));
    }
    // sometimes a valid-looking FUSE header at a readable address
    const n = 1 + r.int(4);
    for (let k = 0; k < n; k++) q.publish(r.int(r.chance(0.95) ? q.size : 65536));
    q.doKick();
    await q.waitUsed(n, 5000);
  }
  // corrupt avail idx (runs ahead): queue ignored, daemon alive
  ram.write(g.queues[1].availGpa + 2, Buffer.from([0x00, 0x80]));
  g.queues[1].doKick();
  await new Promise((res) => setTimeout(res, 20));
  // ring addresses at the very end of memory (ring would cross it): refused / never processed
  const end = BigInt(UADDR_A + 2 * MIB - 64);
  const ack = await g.client.acked(FrontendReq.SET_VRING_ADDR, VhostUserVringAddr.encode({ index: 0, flags: 0, desc: end, used: end, avail: end, log: 0n }));
  assert.is(ack, 0n); // translatable start; the ring itself is checked before use
  g.queues[0].publish(0);
  g.queues[0].doKick();
  await new Promise((res) => setTimeout(res, 20));
  const bases = await g.stop();
  assert.is(bases.length, 2);
  g.close();
  daemon.stop();
  ram.dispose();
});

test.run();
