import { test } from 'uvu';
import { WouldBlock } from '../../src/common/errno';
import { isCached, writeNotCached } from '../support/page-cache';
import * as assert from 'uvu/assert';
import { GuestMemory, MemoryRegion, SegmentList } from '../../src/vhost-user/virtio/guest-memory';
import { DescriptorChain, SplitQueue } from '../../src/vhost-user/virtio/queue';
import { ChainReader, ChainWriter } from '../../src/vhost-user/virtio/chain-io';
import { closeFd, memfdCreate, mmapShared, munmap, viewOf } from '../../src/vhost-user/sys/host';

const GPA = 0x4000_0000;
const SIZE = 1 << 20;

function setup(windowStep = 2 ** 31) {
  const fd = memfdCreate('vq', SIZE);
  const addr = mmapShared(fd, SIZE, 0);
  const ram = Buffer.from(viewOf(addr, SIZE));
  // two GPA-adjacent regions over the same memfd
  const r1 = MemoryRegion.map({ gpa: GPA, size: SIZE / 2, uaddr: 0x10000, mmapOffset: 0 }, fdDup(fd), windowStep);
  const r2 = MemoryRegion.map({ gpa: GPA + SIZE / 2, size: SIZE / 2, uaddr: 0x900000, mmapOffset: SIZE / 2 }, fdDup(fd), windowStep);
  const mem = new GuestMemory([r1, r2]);
  r1.release();
  r2.release();
  const off = (gpa: number) => gpa - GPA;
  const dispose = () => { mem.release(); munmap(addr, SIZE); closeFd(fd); };
  return { ram, mem, off, dispose, r1, r2 };
}

function fdDup(fd: number): number {
  // MemoryRegion.map closes the fd it is given: hand it a fresh open of the memfd
  return require('node:fs').openSync(`/proc/self/fd/${fd}`, 'r+') as number;
}

function desc(ram: Buffer, at: number, addr: number, len: number, flags: number, next: number) {
  ram.writeBigUInt64LE(BigInt(addr), at);
  ram.writeUInt32LE(len >>> 0, at + 8);
  ram.writeUInt16LE(flags, at + 12);
  ram.writeUInt16LE(next, at + 14);
}

function queue(mem: GuestMemory, n = 8) {
  const q = new SplitQueue(256);
  assert.ok(q.setSize(n));
  assert.ok(q.setAddresses(GPA, GPA + 0x1000, GPA + 0x2000));
  q.setMemory(mem);
  assert.ok(q.ready());
  return q;
}

test('guest memory: bounds, translation, windows, refcounted unmap', () => {
  const { mem, dispose, r1 } = setup(64 * 1024);
  assert.is(mem.uaddrToGpa(0x10000 + 5), GPA + 5);
  assert.is(mem.uaddrToGpa(0x900000 + 7), GPA + SIZE / 2 + 7);
  assert.is(mem.uaddrToGpa(0x5), undefined);
  assert.ok(mem.slice(GPA, 16));
  assert.is(mem.slice(GPA - 1, 16), undefined);
  assert.is(mem.slice(GPA + SIZE - 8, 16), undefined);
  assert.is(mem.slice(GPA + SIZE / 2 - 8, 16), undefined); // crosses regions: not contiguous
  assert.is(mem.slice(2 ** 60, 1), undefined);
  let segs: Buffer[] = [];
  assert.ok(mem.segments(GPA + SIZE / 2 - 100000, 200000, segs));
  assert.is(segs.reduce((a, b) => a + b.length, 0), 200000);
  assert.is(segs.length, 2); // region split
  segs = [];
  assert.ok(mem.segments(GPA + 1000, 400000, segs));
  assert.is(segs.length, 4); // window splits (64 KiB steps, 128 KiB windows)
  assert.is(segs.reduce((a, b) => a + b.length, 0), 400000);
  segs = [];
  assert.not.ok(mem.segments(GPA + SIZE - 10, 20, segs));
  assert.is(segs.length, 0);
  // window = 2 × step: any ≤ step access is one slice
  assert.ok(mem.slice(GPA + 64 * 1024 - 1, 64 * 1024));
  mem.acquire();
  dispose();
  assert.ok(r1.mapped); // still referenced
  mem.release();
  assert.not.ok(r1.mapped);
});

test('region map refuses ranges beyond the file, bad sizes and out-of-range numbers', () => {
  const fd = memfdCreate('small', 8192);
  assert.throws(() => MemoryRegion.map({ gpa: 0, size: 16384, uaddr: 0, mmapOffset: 0 }, fdDup(fd)));
  assert.throws(() => MemoryRegion.map({ gpa: 0, size: 4096, uaddr: 0, mmapOffset: 8192 }, fdDup(fd)));
  assert.throws(() => MemoryRegion.map({ gpa: 0, size: 0, uaddr: 0, mmapOffset: 0 }, fdDup(fd)));
  assert.throws(() => MemoryRegion.map({ gpa: 2 ** 53, size: 4096, uaddr: 0, mmapOffset: 0 }, fdDup(fd)));
  const r = MemoryRegion.map({ gpa: 0, size: 4000, uaddr: 0, mmapOffset: 100 }, fdDup(fd)); // unaligned offset
  r.release();
  closeFd(fd);
});

test('split queue: direct chain, indirect chain, chain io across descriptors', () => {
  const { ram, mem, off, dispose } = setup();
  const q = queue(mem);
  const data = GPA + 0x10000;
  ram.write('hello world, this is a request', off(data));
  desc(ram, 0, data, 11, 1, 3);
  desc(ram, 48, data + 11, 19, 1, 5);
  desc(ram, 80, data + 0x100, 8, 2 | 1, 6);
  desc(ram, 96, data + 0x200, 8, 2, 0);
  ram.writeUInt16LE(0, off(GPA + 0x1000 + 4));
  ram.writeUInt16LE(1, off(GPA + 0x1000 + 2));
  assert.is(q.pending(), 1);
  const c = q.parseChain(q.popHead());
  assert.ok(c instanceof DescriptorChain);
  const ch = c as DescriptorChain;
  assert.is(ch.readableLen, 30);
  assert.is(ch.writableLen, 16);
  const r = new ChainReader(ch);
  assert.is(r.readBytes(5).toString(), 'hello');
  assert.is(r.readBytes(10).toString(), ' world, th'); // spans descriptors
  assert.is(r.available(), 15);
  assert.throws(() => r.readBytes(16));
  const w = new ChainWriter(ch);
  w.write(Buffer.from('0123456789AB'));
  assert.is(w.bytesWritten(), 12);
  assert.is(w.available(), 4);
  assert.throws(() => w.write(Buffer.alloc(5)));
  assert.is(ram.subarray(off(data + 0x100), off(data + 0x100) + 8).toString(), '01234567');
  assert.is(ram.subarray(off(data + 0x200), off(data + 0x200) + 4).toString(), '89AB');
  q.addUsed(ch.head, 12);
  assert.is(ram.readUInt16LE(off(GPA + 0x2000 + 2)), 1);
  assert.is(ram.readUInt32LE(off(GPA + 0x2000 + 4)), 0);
  assert.is(ram.readUInt32LE(off(GPA + 0x2000 + 8)), 12);

  // indirect
  const tbl = GPA + 0x3000;
  desc(ram, off(tbl), data, 4, 1, 1);
  desc(ram, off(tbl) + 16, data + 0x100, 64, 2, 0);
  desc(ram, 16, tbl, 32, 4, 0);
  ram.writeUInt16LE(1, off(GPA + 0x1000 + 4 + 2));
  ram.writeUInt16LE(2, off(GPA + 0x1000 + 2));
  const c2 = q.parseChain(q.popHead()) as DescriptorChain;
  assert.ok(c2 instanceof DescriptorChain);
  assert.is(c2.readableLen, 4);
  assert.is(c2.writableLen, 64);
  dispose();
});

test('split queue: hostile chains are refused, never followed', () => {
  const { ram, mem, dispose } = setup();
  const q = queue(mem);
  const data = GPA + 0x10000;
  const err = (head: number) => {
    const r = q.parseChain(head);
    assert.not.ok(r instanceof DescriptorChain);
    return (r as { error: string }).error;
  };
  desc(ram, 0, data, 8, 1, 0); // self loop
  assert.match(err(0), /too long/);
  desc(ram, 0, data, 8, 1, 9); // next out of range
  assert.match(err(0), /out of range/);
  assert.match(err(8), /head index/);
  desc(ram, 0, GPA + SIZE - 4, 8, 0, 0);
  assert.match(err(0), /outside/);
  desc(ram, 0, 0xffff_ffff_fff0, 8, 0, 0);
  assert.match(err(0), /outside|range/);
  desc(ram, 0, data, 8, 2 | 1, 1);
  desc(ram, 16, data, 8, 0, 0);
  assert.match(err(0), /readable descriptor after/);
  desc(ram, 0, data, 17, 4, 0);
  assert.match(err(0), /indirect table length/);
  desc(ram, 0, data, 32, 4 | 1, 0);
  assert.match(err(0), /NEXT/);
  desc(ram, 0, GPA + 0x3000, 16, 4, 0);
  desc(ram, 0x3000, GPA + 0x3000, 16, 4, 0);
  assert.match(err(0), /nested/);
  desc(ram, 0x3000, data, 8, 1, 0); // loop inside an indirect table
  assert.match(err(0), /too long/);
  desc(ram, 0, data, 0xffff_ffff, 2 | 1, 1);
  desc(ram, 16, data, 0xffff_ffff, 2, 0);
  assert.match(err(0), /4 GiB|outside/);
  // zero-length descriptors are fine
  desc(ram, 0, data, 0, 1, 1);
  desc(ram, 16, data, 0, 2, 0);
  assert.ok(q.parseChain(0) instanceof DescriptorChain);
  // avail idx running ahead of the ring
  ram.writeUInt16LE(100, 0x1000 + 2);
  assert.is(q.pending(), -1);
  dispose();
});

test('EVENT_IDX arithmetic and NO_INTERRUPT', () => {
  const { ram, mem, dispose } = setup();
  const q = queue(mem);
  ram.writeUInt16LE(0, 0x1000); // avail.flags
  q.addUsed(0, 0);
  assert.ok(q.needsNotification()); // without EVENT_IDX: flags say interrupt
  ram.writeUInt16LE(1, 0x1000);
  assert.not.ok(q.needsNotification());
  q.eventIdx = true;
  q.setBase(0);
  ram.writeUInt16LE(0, 0x1000 + 4 + 2 * 8); // used_event = 0
  q.addUsed(0, 0); // used idx 1
  assert.ok(q.needsNotification()); // first decision always notifies
  q.addUsed(0, 0); // 2; used_event 0 was already passed
  assert.not.ok(q.needsNotification());
  ram.writeUInt16LE(2, 0x1000 + 4 + 2 * 8); // used_event = 2 → notify when idx goes past 2
  q.addUsed(0, 0); // 3
  assert.ok(q.needsNotification());
  // wrap-around
  q.setBase(0xfffe);
  q.needsNotification();
  ram.writeUInt16LE(0xffff, 0x1000 + 4 + 2 * 8);
  q.addUsed(0, 0);
  q.addUsed(0, 0); // 0xfffe → 0
  assert.ok(q.needsNotification());
  // avail_event publication
  ram.writeUInt16LE(0, 0x1000 + 2);
  q.setBase(0);
  assert.not.ok(q.enableNotification());
  assert.is(ram.readUInt16LE(0x2000 + 4 + 8 * 8), 0);
  dispose();
});


/** A ready queue of `size` entries with its descriptor table at GPA + 0x10000, for the writeFromFile tests. */
function fileQueue(size: number) {
  const world = setup(64 * 1024);
  const q = new SplitQueue(size);
  assert.ok(q.setSize(size));
  assert.ok(q.setAddresses(GPA + 0x10000, GPA + 0x1000, GPA + 0x2000));
  q.setMemory(world.mem);
  assert.ok(q.ready());
  return { ...world, q };
}

test('ChainWriter.writeFromFile: native preadv into > IOV_MAX descriptors across regions, after a header, short file is EIO', () => {
  const { ram, off, dispose, q } = fileQueue(4096);
  // 1 readable + 1100 writable descriptors of 300 bytes with 4-byte gaps (odd sizes, odd
  // addresses, no two adjacent), the run crossing the region boundary at SIZE/2 and the 64 KiB windows
  const N = 1100;
  const STRIDE = 304;
  const base = GPA + SIZE / 2 - 150 * STRIDE - 7;
  desc(ram, off(GPA + 0x10000), GPA + 0x100, 8, 1, 1);
  for (let i = 0; i < N; i++) desc(ram, off(GPA + 0x10000 + 16 * (i + 1)), base + STRIDE * i, 300, 2 | (i + 1 < N ? 1 : 0), i + 2);
  const c = q.parseChain(0);
  assert.ok(c instanceof DescriptorChain);
  const ch = c as DescriptorChain;
  assert.is(ch.writableLen, 300 * N);
  assert.ok(ch.writeSegs.native);
  assert.ok(ch.writeSegs.length > 1024, 'more ranges than one preadv takes');
  const file = require('node:path').join(require('node:os').tmpdir(), `vq-file-${process.pid}`);
  const data = Buffer.alloc(300 * N + 4096);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
  require('node:fs').writeFileSync(file, data);
  const fd = require('node:fs').openSync(file, 'r');
  try {
    const w = new ChainWriter(ch);
    w.write(Buffer.from('HDR!HDR!HDR!HDR!')); // 16 bytes: the file data starts mid-descriptor
    const n = 300 * N - 16 - 100;
    w.writeFromFile(fd, 1000, n);
    assert.is(w.bytesWritten(), 16 + n);
    const got = Buffer.concat(ch.writable).subarray(0, 16 + n);
    assert.is(got.subarray(0, 16).toString(), 'HDR!HDR!HDR!HDR!');
    assert.ok(got.subarray(16).equals(data.subarray(1000, 1000 + n)), 'file bytes land in order across descriptors, windows and regions');
    // the writer continues where the file data ended
    w.write(Buffer.from('tail'));
    assert.is(Buffer.concat(ch.writable).subarray(16 + n, 16 + n + 4).toString(), 'tail');
    // past the end of the file: EIO, nothing counted as written
    const w2 = new ChainWriter(ch);
    assert.throws(() => w2.writeFromFile(fd, data.length - 10, 100), (e: Error) => (e as { code?: string }).code === 'EIO');
    assert.is(w2.bytesWritten(), 0);
    // more than the room: refused before any I/O
    assert.throws(() => new ChainWriter(ch).writeFromFile(fd, 0, 300 * N + 1), RangeError);
  } finally {
    require('node:fs').closeSync(fd);
    require('node:fs').rmSync(file, { force: true });
    dispose();
  }
});

test('ChainWriter.writeFromFile nowait: bytes the page cache does not hold are WouldBlock (nothing counted), held ones are read', () => {
  const { ram, off, dispose, q } = fileQueue(256);
  desc(ram, off(GPA + 0x10000), GPA + 0x100, 8, 1, 1);
  for (let i = 0; i < 4; i++) desc(ram, off(GPA + 0x10000 + 16 * (i + 1)), GPA + 0x20000 + 5000 * i, 4096, 2 | (i < 3 ? 1 : 0), i + 2);
  const ch = q.parseChain(0) as DescriptorChain;
  assert.ok(ch instanceof DescriptorChain && ch.writeSegs.native);
  const fsm = require('node:fs') as typeof import('node:fs');
  const file = require('node:path').join(require('node:os').tmpdir(), `vq-nowait-${process.pid}`);
  const data = Buffer.from(Array.from({ length: 1 << 20 }, (_, i) => (i * 5 + 1) & 0xff));
  try {
    const why = writeNotCached(file, data);
    if (why) { console.log(`SKIP ChainWriter nowait test: ${why}`); return; }
    const fd = fsm.openSync(file, 'r');
    try {
      const w = new ChainWriter(ch);
      w.write(Buffer.from('HDR!'));
      assert.throws(() => w.writeFromFile(fd, 8192, 12000, true), (e: Error) => e instanceof WouldBlock && (e as WouldBlock).code === 'EAGAIN');
      assert.is(w.bytesWritten(), 4, 'nothing of the slice counted');
      // read once (as the thread pool does): now held, and read straight into the descriptors
      fsm.readSync(fd, Buffer.alloc(12000), 0, 12000, 8192);
      assert.ok(isCached(file, 8192, 12000));
      w.writeFromFile(fd, 8192, 12000, true);
      assert.is(w.bytesWritten(), 4 + 12000);
      assert.ok(Buffer.concat(ch.writable).subarray(4, 4 + 12000).equals(data.subarray(8192, 8192 + 12000)));
    } finally {
      fsm.closeSync(fd);
    }
  } finally {
    fsm.rmSync(file, { force: true });
    dispose();
  }
});

test('parseChain merges descriptors that continue each other into one range (not across windows or regions)', () => {
  const { ram, mem, off, dispose } = setup(64 * 1024);
  const q = queue(mem, 64);
  // 40 page descriptors back to back from 8 KiB before the 64 KiB window edge, then one after a gap
  const start = GPA + 0x20000 - 0x2000;
  desc(ram, off(GPA), GPA + 0x100, 40, 1, 1);
  for (let i = 0; i < 40; i++) desc(ram, off(GPA + 16 * (i + 1)), start + 4096 * i, 4096, 3, i + 2);
  desc(ram, off(GPA + 16 * 41), start + 4096 * 41, 4096, 2, 0);
  const c = q.parseChain(0) as DescriptorChain;
  assert.ok(c instanceof DescriptorChain);
  assert.is(c.writableLen, 41 * 4096);
  // a range stays within the window (view) of its first byte, so the run splits where a
  // descriptor starts in the next 64 KiB window: 2 pages, 16, 16, 6, then the one after the gap
  assert.equal(c.writeSegs.lens.slice(0, c.writeSegs.length), [8192, 65536, 65536, 24576, 4096]);
  assert.is(c.writable.reduce((n, b) => n + b.length, 0), 41 * 4096);
  dispose();
});

test('parseChain reads an indirect table once: a table changed after the walk does not change the chain', () => {
  const { ram, mem, off, dispose } = setup();
  const q = queue(mem);
  const table = GPA + 0x3000;
  desc(ram, off(table), GPA + 0x100, 40, 1, 1);
  desc(ram, off(table + 16), GPA + 0x4000, 4096, 2, 0);
  desc(ram, off(GPA), table, 32, 4, 0);
  const c = q.parseChain(0) as DescriptorChain;
  assert.ok(c instanceof DescriptorChain);
  desc(ram, off(table + 16), GPA + 0x8000, 1 << 30, 2, 0); // the guest rewrites the table afterwards
  assert.is(c.writableLen, 4096);
  assert.is(c.writeSegs.length, 1);
  assert.is(c.writeSegs.lens[0], 4096);
  dispose();
});

test('a recycled chain has no ranges left, and its lists serve the next chains without stale entries', () => {
  const { ram, mem, off, dispose } = setup();
  const q = queue(mem);
  // chain 0: header + 3 scattered data pages; chain 1: header + 1 page
  desc(ram, off(GPA), GPA + 0x100, 40, 1, 1);
  desc(ram, off(GPA + 16), GPA + 0x4000, 4096, 3, 2);
  desc(ram, off(GPA + 32), GPA + 0x6000, 4096, 3, 3);
  desc(ram, off(GPA + 48), GPA + 0x8000, 4096, 2, 0);
  desc(ram, off(GPA + 64), GPA + 0x200, 40, 1, 5);
  desc(ram, off(GPA + 80), GPA + 0xa000, 4096, 2, 0);
  const a = q.parseChain(0) as DescriptorChain;
  assert.ok(a instanceof DescriptorChain);
  const lists = [a.readSegs, a.writeSegs];
  assert.is(a.writeSegs.length, 3);
  q.recycle(a);
  // nothing reachable through the finished chain: a late writer has no room
  assert.is(a.readSegs.length, 0);
  assert.is(a.writeSegs.length, 0);
  assert.throws(() => new ChainWriter(a).write(Buffer.alloc(1)), /reply overflow/);
  assert.is(new ChainWriter(a).available(), 0);
  assert.is(new ChainReader(a).available(), 0);
  assert.throws(() => new ChainReader(a).readBytes(1), /too short/);
  // the next chain reuses both lists (capacity kept) and sees only its own ranges
  const b = q.parseChain(4) as DescriptorChain;
  assert.ok(b instanceof DescriptorChain);
  assert.ok(lists.includes(b.readSegs) && lists.includes(b.writeSegs));
  assert.is(b.writeSegs.length, 1);
  assert.equal(b.writable.map((x) => x.length), [4096]);
  new ChainWriter(b).write(Buffer.alloc(4096, 7));
  assert.is(ram[off(GPA + 0xa000)], 7);
  assert.is(ram[off(GPA + 0x4000)], 0); // chain 0's old first page untouched
  // an invalid chain gives its lists back (the queue does not leak them) and a new table drops the spares
  desc(ram, off(GPA + 96), GPA + (1 << 30), 4096, 2, 0); // outside guest memory
  assert.ok(!(q.parseChain(6) instanceof DescriptorChain));
  const c = q.parseChain(4) as DescriptorChain;
  assert.ok(c instanceof DescriptorChain);
  assert.is(c.writeSegs.length, 1);
  q.recycle(b);
  q.setMemory(mem);
  assert.ok(q.ready());
  const d = q.parseChain(0) as DescriptorChain;
  assert.ok(!lists.includes(d.readSegs) && !lists.includes(d.writeSegs), 'spare lists dropped with the memory table');
  assert.is(d.writeSegs.length, 3);
  dispose();
});

test('the chain walk window cache gives the ranges segmentsInto gives, across windows, regions and bad buffers', () => {
  const { ram, mem, off, dispose } = setup(64 * 1024);
  const q = queue(mem, 256);
  let seed = 12345;
  let accepted = 0;
  let refused = 0;
  const rnd = (n: number) => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed % n; };
  for (let round = 0; round < 300; round++) {
    const n = 1 + rnd(60);
    const bufs: [number, number, boolean][] = [];
    let gpa = GPA + 0x8000 + rnd(SIZE - 0x10000);
    for (let i = 0; i < n; i++) {
      // mostly page runs that continue or skip a page, sometimes a jump, a window/region edge or a bad address
      const kind = rnd(20);
      if (kind === 0) gpa = GPA + SIZE / 2 - rnd(3) * 4096; // at the region boundary
      else if (kind === 1) gpa = GPA + 0x8000 + rnd(SIZE - 0x10000);
      else if (kind === 2 && round % 7 === 0) gpa = GPA + SIZE - 100; // runs off the end: chain refused
      const len = kind === 3 ? 1 + rnd(200000) : 4096;
      bufs.push([gpa, len, i > 0]);
      gpa += len + (rnd(2) ? 4096 : 0);
    }
    const indirect = GPA + 0x3000 + 0x1000 * (round % 4);
    bufs.forEach(([a, l, w], i) => desc(ram, off(indirect + 16 * i), a, l, (w ? 2 : 0) | (i + 1 < n ? 1 : 0), i + 1));
    desc(ram, off(GPA), indirect, 16 * n, 4, 0);
    const r = new SegmentList();
    const w = new SegmentList();
    let ok = true;
    for (const [a, l, wr] of bufs) ok = mem.segmentsInto(a, l, wr ? w : r) && ok;
    const c = q.parseChain(0);
    if (!ok) {
      assert.not.ok(c instanceof DescriptorChain, `round ${round}: a chain with a bad buffer is refused`);
      refused++;
      continue;
    }
    assert.ok(c instanceof DescriptorChain, `round ${round}`);
    for (const [got, want] of [[c.readSegs, r], [c.writeSegs, w]] as const) {
      assert.is(got.length, want.length, `round ${round}: ranges`);
      for (let i = 0; i < want.length; i++) {
        assert.ok(got.bufs[i] === want.bufs[i], `round ${round}: range ${i} window`);
        assert.equal([got.offs[i], got.lens[i], got.addrs[i]], [want.offs[i], want.lens[i], want.addrs[i]], `round ${round}: range ${i}`);
      }
    }
    accepted++;
    q.recycle(c);
  }
  assert.ok(accepted > 200 && refused > 5, `${accepted} accepted, ${refused} refused`);
  dispose();
});

test.run();
