/**
 * RafsFs behind the FuseServer and Vfs, with real images from the builder:
 * attributes, xattrs, readdir, holes, and concurrency — a READ waiting on a
 * slow chunk must not hold up READs of other files.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initDigest, DigestAlgorithm } from '../../src/common/digest';
import { Compressor } from '../../src/common/compress';
import { localfsDirConfig } from '../../src/common/config';
import { createImage } from '../../src/rafs/builder/create';
import { loadRafs } from '../../src/rafs/metadata/super';
import { RafsFs } from '../../src/rafs/fs';
import { FOPEN_CACHE_DIR, FOPEN_KEEP_CACHE } from '../../src/common/filesystem';
import { createBlobDevice } from '../../src/storage/factory';
import type { BlobDevice } from '../../src/storage/blob/device';
import type { ChunkInfo } from '../../src/rafs/metadata/types';
import { Vfs } from '../../src/virtiofs/vfs/vfs';
import { FuseServer } from '../../src/virtiofs/fuse/server';
import { FuseOpcode, FuseEntryOut, FuseOpenIn, FuseReadIn } from '../../src/virtiofs/fuse/abi';
import { call, cstr, initBody, req } from '../support/memory-fs';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'rafs-fs-'));
const CHUNK = 0x1000;

async function image(version: 5 | 6, tag = '') {
  await initDigest();
  const src = path.join(work, `src${version}${tag}`);
  fs.mkdirSync(path.join(src, 'd'), { recursive: true });
  fs.writeFileSync(path.join(src, 'slow'), Buffer.alloc(3 * CHUNK, 's'));
  fs.writeFileSync(path.join(src, 'fast'), Buffer.alloc(2 * CHUNK + 7, 'f'));
  fs.writeFileSync(path.join(src, 'd', 'x'), 'x');
  const blobs = path.join(work, `blobs${version}${tag}`);
  fs.mkdirSync(blobs);
  const r = await createImage({
    source: src, type: 'dir-rafs', fsVersion: version, compressor: Compressor.Zstd, digester: DigestAlgorithm.Blake3,
    chunkSize: CHUNK, bootstrap: path.join(blobs, 'boot'), blobDir: blobs, blobInlineMeta: false, blobToc: false,
    alignedChunk: false, repeatable: false, prefetchPatterns: [],
  });
  const sb = loadRafs(r.bootstrap);
  return { sb, boot: r.bootstrap, device: createBlobDevice(localfsDirConfig(blobs), sb.blobs) };
}

/** A device whose reads of chunks with digest byte `slowFirst` wait until released. */
class GatedDevice implements BlobDevice {
  private gates: Array<() => void> = [];
  constructor(private readonly inner: BlobDevice, private readonly slow: Set<string>) {}
  async readChunk(c: ChunkInfo): Promise<Buffer> {
    if (this.slow.has(c.digest.toString('hex'))) await new Promise<void>((r) => this.gates.push(r));
    return this.inner.readChunk(c);
  }
  release(): void { for (const g of this.gates.splice(0)) g(); }
  get waiting(): number { return this.gates.length; }
  close(): Promise<void> { return this.inner.close(); }
}

async function session(fsys: RafsFs) {
  const vfs = new Vfs();
  vfs.mount('/', fsys);
  const server = new FuseServer(vfs, { readdirplus: true });
  const init = await call(server, req(FuseOpcode.INIT, 0n, initBody(36, 0xffffffffn)));
  assert.is(init.hdr!.error, 0);
  const lookup = async (parent: bigint, name: string) => {
    const r = await call(server, req(FuseOpcode.LOOKUP, parent, cstr(name)));
    assert.is(r.hdr!.error, 0, `lookup ${name}`);
    return FuseEntryOut.decode(r.payload);
  };
  const read = (ino: bigint, offset: number, size: number) =>
    call(server, req(FuseOpcode.READ, ino, FuseReadIn.encode({ fh: 0n, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 })));
  return { server, lookup, read };
}

for (const v of [5, 6] as const) {
  test(`v${v}: a slow chunk fetch does not stall reads of other files`, async () => {
    const { sb, boot, device } = await image(v);
    const slowFile = sb.root().lookup(Buffer.from('slow'))!;
    const gated = new GatedDevice(device, new Set(slowFile.chunks().map((c) => c.digest.toString('hex'))));
    const s = await session(new RafsFs(sb, gated, { bootstrap: boot }));
    const slow = await s.lookup(1n, 'slow');
    const fast = await s.lookup(1n, 'fast');
    await call(s.server, req(FuseOpcode.OPEN, slow.ino, FuseOpenIn.encode({ flags: 0, openFlags: 0 })));
    const pending = s.read(slow.ino, 0, 3 * CHUNK);
    let slowDone = false;
    void pending.then(() => { slowDone = true; });
    await new Promise((r) => setImmediate(r));
    assert.ok(gated.waiting > 0, 'slow read did not reach the device');
    const f = await s.read(fast.ino, 0, 1 << 20);
    assert.is(f.hdr!.error, 0);
    assert.ok(f.payload.equals(Buffer.alloc(2 * CHUNK + 7, 'f')), 'fast file data');
    assert.not.ok(slowDone, 'slow read finished before its chunks were released');
    gated.release();
    const r = await pending;
    assert.is(r.hdr!.error, 0);
    assert.ok(r.payload.equals(Buffer.alloc(3 * CHUNK, 's')));
    // a read crossing the end of the file is short; past the end is empty
    const tail = await s.read(fast.ino, 2 * CHUNK, 100);
    assert.is(tail.payload.length, 7);
    assert.is((await s.read(fast.ino, 10 * CHUNK, 100)).payload.length, 0);
    const sub = await s.lookup(1n, 'd');
    const x = await s.lookup(sub.ino, 'x');
    assert.is(x.attr.size, 1);
    const missing = await call(s.server, req(FuseOpcode.LOOKUP, 1n, cstr('nope')));
    assert.is(missing.hdr!.error, -2);
    const mk = await call(s.server, req(FuseOpcode.MKDIR, 1n, [Buffer.alloc(8), cstr('new')]));
    assert.is(mk.hdr!.error, -30, 'mutations on RAFS answer EROFS');
    await gated.close();
  });
}

for (const v of [5, 6] as const) {
  test(`v${v}: readdir resumes at every cookie; readdirplus entries; FORGET drops per-inode read state`, async () => {
    const { sb, boot, device } = await image(v, '-readdir');
    const fsys = new RafsFs(sb, device, { bootstrap: boot });
    // zero-message open (Vfs noOpen) only where the kernel's defaults are this open's answer
    assert.is(fsys.statelessOpen, true);
    assert.is(new RafsFs(sb, device, { bootstrap: boot, directIo: true }).statelessOpen, false);
    const ctx = {} as never;
    // listings of a read-only image are kept by the kernel, as upstream's
    assert.equal(await fsys.opendir(ctx, 1n), { fh: 0n, openFlags: FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE });
    const list = async (offset: number, plus: boolean) => {
      const out: Array<{ name: string; offset: number; ino: bigint; type: number; entry?: bigint }> = [];
      await fsys.readdir(ctx, 1n, 0n, offset, plus, (e) => { out.push({ name: e.name.toString(), offset: e.offset, ino: e.ino, type: e.type, entry: e.entry?.ino }); return true; });
      return out;
    };
    const all = await list(0, false);
    assert.equal(all.map((e) => e.name), ['.', '..', 'd', 'fast', 'slow']);
    assert.equal(all.map((e) => e.offset), [1, 2, 3, 4, 5]);
    assert.equal(all.map((e) => e.type), [4, 4, 4, 8, 8]);
    for (let k = 0; k <= all.length; k++) assert.equal(await list(k, false), all.slice(k), `resume at ${k}`);
    const plus = await list(0, true);
    assert.equal(plus.map((e) => e.entry), [undefined, undefined, ...all.slice(2).map((e) => e.ino)]);
    // `add` refusing an entry stops the listing there
    let n = 0;
    await fsys.readdir(ctx, 1n, 0n, 0, false, () => ++n < 3);
    assert.is(n, 3);
    const fast = await fsys.lookup(ctx, 1n, Buffer.from('fast'));
    await fsys.read(ctx, fast.ino, 0n, 0, 100);
    const state = fsys as unknown as { chunkCache: Map<number, unknown>; lastEnd: Map<number, unknown> };
    assert.is(state.chunkCache.size, 1);
    assert.is(state.lastEnd.size, 1);
    fsys.forget(fast.ino);
    assert.is(state.chunkCache.size, 0);
    assert.is(state.lastEnd.size, 0);
    await device.close();
  });
}

test.after(() => fs.rmSync(work, { recursive: true, force: true }));
test.run();
