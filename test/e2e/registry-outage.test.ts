/**
 * Registry outages with real components: Debian's docker-registry (stopped,
 * killed, frozen with SIGSTOP and started again on the same port with the
 * same storage), nydusd over FUSE with the registry backend and blobcache.
 *
 *  - prefetch_all fills the cache; with the registry stopped every file still
 *    reads right, and a new nydusd (after a SIGKILL of the first) serves the
 *    whole image offline from the same work_dir without one backend attempt;
 *  - partial cache: after a restart with the registry down, cached files read
 *    right, uncached ones fail with EIO within attempts × timeout (never hang)
 *    and the daemon stays up; once the registry is back, they read right
 *    without restarting nydusd;
 *  - a registry that is unreachable from the start: the mount works (the
 *    bootstrap is local), reads fail with EIO, then succeed once it is up;
 *  - a frozen registry (accepts connections, never answers), also from the
 *    start with six concurrent readers, and a blackholed host (SYNs dropped):
 *    reads fail with EIO once the timeouts are spent, and succeed after SIGCONT.
 * While the registry is unreachable every read(2) must return within what
 * README promises ("EIO within `timeout` x 4 attempts", plus backoff and a
 * margin); any read still pending after a minute is a hang. Nothing else is
 * timed.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { READ_ATTEMPTS } from '../../src/storage/backend/retry';
import { api } from '../support/api';
import { nydusImage, tmpdir } from '../support/cli';
import {
  type ImageChunks, type PieceOptions, type PieceReport, imageChunks, poisonedChunks, readEveryPiece, readyChunks, watchdog,
} from '../support/fault-proxy';
import { fuseMissing, isMounted, startNydusd, type Daemon } from '../support/nydusd';
import { REGISTRY_BIN, registryMissing, freePort } from '../support/registry';
import { dropCaches, sleep } from '../support/timing';
import { diffTrees, treeRecords } from '../support/tree-digest';

const missing = registryMissing() ?? fuseMissing();
if (missing) {
  if (process.env.CI === 'true') throw new Error(`registry-outage e2e: ${missing}`);
  console.log(`SKIP registry-outage e2e: ${missing}`);
}

const REPO = 'test/outage';
const CHUNK = 0x10000;
/** registry `timeout` / `connect_timeout`, seconds */
const TIMEOUT_S = 2;
/**
 * What README promises for an outage: EIO "within `timeout` x 4 attempts" —
 * 4 attempts of at most `timeout` each, plus the backoffs between them
 * (100·2^n ms jittered, under 1 s in all).
 */
const READ_BUDGET_MS = READ_ATTEMPTS * TIMEOUT_S * 1000 + 1000;
/**
 * a read(2) during an outage must return (bytes or EIO) within the budget plus
 * a margin (scheduling; undici's coarse connect timer), well under two budgets
 */
const OUTAGE_BUDGET_MS = READ_BUDGET_MS + 5000;
/** a read still pending after this long is a hang (liveness, whatever the budget) */
const HANG_MS = 60_000;

const work = tmpdir('registry-outage');
const src = path.join(work, 'src');
const files = new Map<string, Buffer>();
let srcRecords: ReturnType<typeof treeRecords> = [];
let boot = '';
let img: ImageChunks | undefined;
let reg: OwnRegistry | undefined;
const daemons = new Set<Daemon>();

// ------------------------------------------------------------------ a registry that can go away and come back

/**
 * Debian's docker-registry on a fixed loopback port with a fixed storage
 * directory, so it can be stopped, killed, frozen and started again with the
 * same blobs at the same address (test/support/registry.ts removes its
 * storage on stop and picks a new port per start).
 */
interface OwnRegistry {
  host: string;
  start(): Promise<void>;
  /** SIGTERM (or `signal`), then wait for the exit */
  stop(signal?: NodeJS.Signals): Promise<void>;
  freeze(): void;
  thaw(): void;
  push(repo: string, data: Buffer): Promise<string>;
  running(): boolean;
}

async function ownRegistry(dir: string): Promise<OwnRegistry> {
  const port = await freePort();
  const storage = path.join(dir, 'storage');
  fs.mkdirSync(storage, { recursive: true });
  const config = path.join(dir, 'config.yml');
  fs.writeFileSync(config, [
    'version: 0.1',
    'log:',
    '  level: warn',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${storage}`,
    'http:',
    `  addr: 127.0.0.1:${port}`,
    '',
  ].join('\n'));
  const logFile = path.join(dir, 'registry.log');
  const base = `http://127.0.0.1:${port}`;
  let proc: ChildProcess | undefined;
  let exit: Promise<void> = Promise.resolve();
  const self: OwnRegistry = {
    host: `127.0.0.1:${port}`,
    running: () => proc !== undefined && proc.exitCode === null && proc.signalCode === null,
    async start() {
      if (self.running()) throw new Error('registry already running');
      const fd = fs.openSync(logFile, 'a');
      const p = spawn(REGISTRY_BIN, ['serve', config], { stdio: ['ignore', fd, fd] });
      fs.closeSync(fd);
      proc = p;
      exit = new Promise<void>((r) => p.on('exit', () => r()));
      const t0 = Date.now();
      for (;;) {
        if (!self.running()) throw new Error(`docker-registry exited: ${fs.readFileSync(logFile, 'utf8').slice(-2000)}`);
        try {
          const r = await fetch(`${base}/v2/`, { signal: AbortSignal.timeout(2000) });
          if (r.status === 200) return;
        } catch {
          // not listening yet
        }
        if (Date.now() - t0 > 20_000) { p.kill('SIGKILL'); throw new Error(`docker-registry did not start: ${fs.readFileSync(logFile, 'utf8').slice(-2000)}`); }
        await sleep(50);
      }
    },
    async stop(signal = 'SIGTERM') {
      if (!proc) return;
      const p = proc;
      if (self.running()) {
        p.kill('SIGCONT');
        p.kill(signal);
      }
      const t = setTimeout(() => p.kill('SIGKILL'), 5000);
      await exit;
      clearTimeout(t);
      proc = undefined;
    },
    freeze() { proc?.kill('SIGSTOP'); },
    thaw() { proc?.kill('SIGCONT'); },
    async push(repo, data) {
      const digest = crypto.createHash('sha256').update(data).digest('hex');
      const start = await fetch(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
      const loc = start.headers.get('location');
      if (start.status !== 202 || !loc) throw new Error(`upload start: ${start.status}`);
      const u = new URL(loc, base);
      u.searchParams.set('digest', `sha256:${digest}`);
      const put = await fetch(u, { method: 'PUT', body: data, headers: { 'content-type': 'application/octet-stream' } });
      if (put.status !== 201) throw new Error(`upload put: ${put.status} ${await put.text()}`);
      return digest;
    },
  };
  return self;
}

// ------------------------------------------------------------------ image

function buildSource(): void {
  const add = (rel: string, data: Buffer) => {
    const p = path.join(src, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, data);
    files.set(rel, data);
  };
  for (let i = 0; i < 40; i++) add(`a/f${String(i).padStart(2, '0')}`, crypto.randomBytes(crypto.randomInt(1, 30_000)));
  for (let i = 0; i < 4; i++) add(`b/m${i}`, crypto.randomBytes(crypto.randomInt(150_000, 400_000)));
  add('c/large', crypto.randomBytes(3 << 20));
  add('c/text', Buffer.from('lazy pulling survives outages\n'.repeat(5000)));
  add('a/empty', Buffer.alloc(0));
  fs.symlinkSync('../c/text', path.join(src, 'a/link'));
  srcRecords = treeRecords(src);
}

const chunksOf = (rel: string): number[] => img!.byFile.get(rel)!.map((c) => c.index);
const cachedFully = (ready: Set<number>, rel: string): boolean => chunksOf(rel).every((i) => ready.has(i));
const cachedNone = (ready: Set<number>, rel: string): boolean => chunksOf(rel).every((i) => !ready.has(i));
const readyIn = (workDir: string): Promise<Set<number>> => readyChunks(workDir, img!);

test.before(async () => {
  if (missing) return;
  buildSource();
  boot = path.join(work, 'image.boot');
  const blobs = path.join(work, 'blobs');
  nydusImage(['create', '--fs-version', '6', '--compressor', 'zstd', '--chunk-size', `0x${CHUNK.toString(16)}`, '--bootstrap', boot, '--blob-dir', blobs, src]);
  const blobId = fs.readdirSync(blobs)[0];
  img = await imageChunks(boot, files.keys());
  assert.is(img.blobId, blobId);
  const regDir = path.join(work, 'registry');
  fs.mkdirSync(regDir);
  reg = await ownRegistry(regDir);
  await reg.start();
  assert.is(await reg.push(REPO, fs.readFileSync(path.join(blobs, blobId))), blobId);
});

test.after(async () => {
  for (const d of daemons) await stopDaemon(d).catch(() => undefined);
  await reg?.stop('SIGKILL');
  fs.rmSync(work, { recursive: true, force: true });
});

// ------------------------------------------------------------------ daemons

let runs = 0;

interface Run { d: Daemon; sock: string }

async function startDaemon(workDir: string, opts: { prefetch?: boolean; host?: string } = {}): Promise<Run> {
  const dir = path.join(work, `run-${++runs}`);
  fs.mkdirSync(dir);
  const cfg = path.join(dir, 'config.json');
  fs.writeFileSync(cfg, JSON.stringify({
    version: 2,
    backend: { type: 'registry', registry: { scheme: 'http', host: opts.host ?? reg!.host, repo: REPO, timeout: TIMEOUT_S, connect_timeout: TIMEOUT_S } },
    cache: { type: 'blobcache', filecache: { work_dir: workDir }, prefetch: { enable: !!opts.prefetch, threads: 4 } },
    rafs: { mode: 'direct', prefetch: { enable: !!opts.prefetch, prefetch_all: !!opts.prefetch } },
  }));
  const sock = path.join(dir, 'api.sock');
  const d = await startNydusd(path.join(dir, 'mnt'), ['--bootstrap', boot, '--config', cfg, '--apisock', sock, '--log-level', 'warn']);
  daemons.add(d);
  return { d, sock };
}

/** SIGTERM; the exit code must be 0. */
async function stopDaemon(d: Daemon): Promise<void> {
  daemons.delete(d);
  const code = await d.stop();
  if (isMounted(d.mountpoint)) spawnSync('umount', ['-l', d.mountpoint]);
  assert.is(code, 0, `nydusd exit code; log: ${d.log().slice(-3000)}`);
}

/** SIGKILL (a crash), then detach the dead mount. */
async function killDaemon(d: Daemon): Promise<void> {
  daemons.delete(d);
  d.proc.kill('SIGKILL');
  await d.exited;
  if (isMounted(d.mountpoint)) spawnSync('umount', ['-l', d.mountpoint]);
  assert.not.ok(isMounted(d.mountpoint));
}

async function metrics(sock: string, what: 'backend' | 'blobcache'): Promise<Record<string, number>> {
  const r = await api(sock, 'GET', `/api/v1/metrics/${what}`);
  assert.is(r.status, 200, r.body);
  return r.json as Record<string, number>;
}

async function events(sock: string): Promise<number> {
  const r = await api(sock, 'GET', '/api/v1/daemon/events');
  assert.is(r.status, 200, r.body);
  return (r.json as { total_errors: number }).total_errors;
}

async function assertAlive(run: Run, when: string): Promise<void> {
  assert.is(run.d.proc.exitCode, null, `nydusd exited ${when}: ${run.d.log().slice(-3000)}`);
  const r = await api(run.sock, 'GET', '/api/v1/daemon');
  assert.is(r.status, 200, `API ${when}: ${r.body}`);
  assert.is((r.json as { state: string }).state, 'RUNNING', `state ${when}`);
  assert.ok(isMounted(run.d.mountpoint), `mount gone ${when}`);
}

/** The whole tree, read cold through `mnt`, equals its source. */
function assertTree(mnt: string, what: string): void {
  dropCaches();
  assert.equal(diffTrees(srcRecords, treeRecords(mnt)), [], `${what}: tree differs from its source`);
}

const allFiles = (): string[] => [...files.keys()].sort();

/**
 * Reads while the registry is unreachable: pieces are the source's bytes or
 * EIO, and every read(2) returns within OUTAGE_BUDGET_MS (a slower one fails
 * the test naming it; one pending for HANG_MS is a hang).
 */
async function readOffline(mnt: string, list: string[], o: Partial<PieceOptions> = {}): Promise<PieceReport> {
  const r = await readEveryPiece(mnt, files, list, { piece: CHUNK, boundMs: HANG_MS, budgetMs: OUTAGE_BUDGET_MS, ...o });
  assert.equal(r.overBudget, [], `reads during the outage took longer than ${READ_ATTEMPTS} attempts x ${TIMEOUT_S} s timeout + backoff + margin (${OUTAGE_BUDGET_MS} ms)`);
  return r;
}

// ------------------------------------------------------------------ tests

test('prefetch_all fills the cache; registry stopped: everything reads, also in a new nydusd after a crash', async () => {
  if (missing) return;
  if (!reg!.running()) await reg!.start();
  const cache = path.join(work, 'cache-prefetch');
  const a = await startDaemon(cache, { prefetch: true });
  // bounded wait for the whole blob (nothing is read meanwhile: prefetch alone must fetch it)
  const t0 = Date.now();
  let ready = await readyIn(cache);
  while (ready.size < img!.chunkCount) {
    if (Date.now() - t0 > 60_000) {
      assert.unreachable(`prefetch_all fetched ${ready.size}/${img!.chunkCount} chunks in 60 s; blobcache: ${JSON.stringify(await metrics(a.sock, 'blobcache'))}`);
    }
    await sleep(100);
    ready = await readyIn(cache);
  }
  assert.equal(await poisonedChunks(cache, img!, files), [], 'cached chunks differ from the source');
  const bc = await metrics(a.sock, 'blobcache');
  assert.ok(bc.prefetch_requests_count > 0 && bc.prefetch_data_amount > 0, `prefetch metrics: ${JSON.stringify(bc)}`);
  const before = await metrics(a.sock, 'backend');
  const ev0 = await events(a.sock);

  await reg!.stop();
  assertTree(a.d.mountpoint, 'registry stopped, cache full');
  const after = await metrics(a.sock, 'backend');
  assert.is(after.read_count, before.read_count, 'a full cache still went to the backend');
  assert.is(await events(a.sock), ev0, 'errors with a full cache');
  await assertAlive(a, 'after offline reads');

  // crash, then a new daemon on the same work_dir while the registry is still down
  await killDaemon(a.d);
  const b = await startDaemon(cache, { prefetch: true });
  try {
    assertTree(b.d.mountpoint, 'new nydusd, registry still down');
    const r = await readOffline(b.d.mountpoint, allFiles());
    assert.is(r.eio, 0, `EIO offline with a full cache: ${r.eioPieces.slice(0, 10).join(' ')}`);
    const m = await metrics(b.sock, 'backend');
    assert.is(m.read_count, 0, `backend attempts with a full cache: ${JSON.stringify(m)}`);
    await assertAlive(b, 'after offline reads');
  } finally {
    await stopDaemon(b.d);
  }
});

test('partial cache, registry down: cached chunks read, others EIO without a hang; registry back: they read, same daemon', async () => {
  if (missing) return;
  if (!reg!.running()) await reg!.start();
  const cache = path.join(work, 'cache-partial');
  const some = ['a/f00', 'c/text'];
  const first = await startDaemon(cache);
  try {
    const r = await readEveryPiece(first.d.mountpoint, files, some, { piece: CHUNK, boundMs: HANG_MS });
    assert.is(r.eio, 0);
  } finally {
    await stopDaemon(first.d);
  }
  // what is cached now (merged range reads may have brought neighbours of what was read)
  const ready = await readyIn(cache);
  for (const f of some) assert.ok(cachedFully(ready, f), `${f} was read but is not in the cache after a clean stop`);
  const cached = allFiles().filter((f) => cachedFully(ready, f));
  const notCached = allFiles().filter((f) => !cachedFully(ready, f));
  // c/large (3 MiB, before c/text in the blob) lies beyond what the two reads' merged requests bring
  assert.ok(notCached.includes('c/large'), `c/large is cached (${ready.size}/${img!.chunkCount} chunks ready)`);
  // pieces are chunk-sized and chunk-aligned: piece k of a file is its chunk k
  const missingPieces = (f: string) => img!.byFile.get(f)!.flatMap((c) => (ready.has(c.index) ? [] : [`${f}@${c.fileOffset}`]));
  // read every piece of files with few missing chunks (each costs a failed backend read), the first failing piece of the others
  const exact = notCached.filter((f) => missingPieces(f).length <= 3).slice(0, 6);
  const rest = notCached.filter((f) => !exact.includes(f));
  console.log(`registry-outage partial cache: ${ready.size}/${img!.chunkCount} chunks cached, ${cached.length} files fully, ${notCached.length} not`);

  await reg!.stop();
  const run = await startDaemon(cache);
  try {
    const ev0 = await events(run.sock);
    const c = await readOffline(run.d.mountpoint, cached);
    assert.is(c.eio, 0, `cached files failed offline: ${c.eioPieces.slice(0, 10).join(' ')}`);
    // not cached: exactly the pieces of missing chunks fail (EIO, never other bytes, never a hang)
    const e = await readOffline(run.d.mountpoint, exact);
    assert.equal(e.eioPieces.sort(), exact.flatMap(missingPieces).sort(), 'EIO pieces != pieces of uncached chunks');
    const u = await readOffline(run.d.mountpoint, rest, { stopAtEio: true });
    assert.is(u.eioFiles.size, rest.length, `files with uncached chunks that did not fail: ${rest.filter((f) => !u.eioFiles.has(f)).join(' ')}`);
    for (const piece of u.eioPieces) assert.ok(missingPieces(piece.split('@')[0]).includes(piece), `${piece} is cached but failed`);
    await assertAlive(run, 'after failed reads');
    assert.ok((await events(run.sock)) > ev0, 'failed reads left no event in /api/v1/daemon/events');
    const m = await metrics(run.sock, 'backend');
    assert.ok(m.read_errors > 0, `no failed backend attempt counted: ${JSON.stringify(m)}`);

    // the registry comes back (same storage, same port): the same daemon recovers
    await reg!.start();
    const back = await readEveryPiece(run.d.mountpoint, files, notCached, { piece: CHUNK, boundMs: HANG_MS });
    assert.is(back.eio, 0, `still failing after the registry came back: ${back.eioPieces.slice(0, 10).join(' ')}`);
    assertTree(run.d.mountpoint, 'registry back');
    await assertAlive(run, 'after recovery');
  } finally {
    await stopDaemon(run.d);
  }
});

test('registry unreachable from the start: mount works, reads EIO, then succeed once it is up', async () => {
  if (missing) return;
  await reg!.stop('SIGKILL');
  const cache = path.join(work, 'cache-cold');
  const run = await startDaemon(cache);
  try {
    await assertAlive(run, 'after mount');
    // metadata is local: the tree is there
    assert.equal(fs.readdirSync(path.join(run.d.mountpoint, 'a')).sort(), fs.readdirSync(path.join(src, 'a')).sort());
    assert.is(fs.statSync(path.join(run.d.mountpoint, 'c/large')).size, files.get('c/large')!.length);
    const probe = ['a/f01', 'b/m0', 'c/large', 'c/text'];
    const r = await readOffline(run.d.mountpoint, probe, { stopAtEio: true });
    assert.is(r.eioFiles.size, probe.length, `reads that did not fail with the registry down: ${probe.filter((f) => !r.eioFiles.has(f)).join(' ')}`);
    await assertAlive(run, 'after failed reads');
    assert.ok((await events(run.sock)) > 0, 'no event for failed reads');

    await reg!.start();
    const ok = await readEveryPiece(run.d.mountpoint, files, allFiles(), { piece: CHUNK, boundMs: HANG_MS, concurrency: 2 });
    assert.is(ok.eio, 0, `EIO with the registry up: ${ok.eioPieces.slice(0, 10).join(' ')}`);
    assertTree(run.d.mountpoint, 'registry up');
    await assertAlive(run, 'after recovery');
  } finally {
    await stopDaemon(run.d);
  }
});

test('frozen registry (accepts, never answers): buffered reads fail with EIO within the budget, then succeed after SIGCONT', async () => {
  if (missing) return;
  if (!reg!.running()) await reg!.start();
  const cache = path.join(work, 'cache-frozen');
  const run = await startDaemon(cache);
  try {
    // one good read first: connections are open and the first-request gate is passed
    const warm = await readEveryPiece(run.d.mountpoint, files, ['a/f05'], { piece: CHUNK, boundMs: HANG_MS });
    assert.is(warm.eio, 0);
    const ev0 = await events(run.sock);
    await sleep(300); // write-behind of what the warm read brought (merged ranges may bring neighbours)
    const ready = await readyIn(cache);
    const far = allFiles().filter((f) => files.get(f)!.length > 0 && cachedNone(ready, f)).slice(-2);
    assert.is(far.length, 2);
    reg!.freeze();
    let frozen: PieceReport;
    try {
      frozen = await readOffline(run.d.mountpoint, far, { stopAtEio: true });
      // the daemon answers while its backend requests hang
      await watchdog(assertAlive(run, 'while the registry is frozen'), 10_000, 'API while the registry is frozen');
    } finally {
      reg!.thaw();
    }
    assert.is(frozen.eioFiles.size, 2, `reads that did not fail against a frozen registry: ${JSON.stringify(frozen)}`);
    assert.ok((await events(run.sock)) > ev0, 'no event for reads that timed out');
    const back = await readEveryPiece(run.d.mountpoint, files, far, { piece: CHUNK, boundMs: HANG_MS });
    assert.is(back.eio, 0, `still failing after SIGCONT: ${back.eioPieces.join(' ')}`);
    assertTree(run.d.mountpoint, 'registry thawed');
  } finally {
    await stopDaemon(run.d);
  }
});

test('registry frozen from the start: concurrent reads of uncached files each fail within attempts × timeout, then succeed after SIGCONT', async () => {
  if (missing) return;
  if (!reg!.running()) await reg!.start();
  reg!.freeze();
  let run: Run;
  try {
    // a fresh daemon: no request has succeeded yet (the first-request gate is closed)
    run = await startDaemon(path.join(work, 'cache-frozen-start'));
  } catch (e) {
    reg!.thaw();
    throw e;
  }
  try {
    try {
      await assertAlive(run, 'after mount');
      // six readers at once, as a starting container's processes would be; O_DIRECT, so that
      // each read(2) is one FUSE READ and only queueing inside nydusd can make it slow
      const six = ['a/f02', 'a/f12', 'a/f22', 'a/f32', 'b/m3', 'c/text'];
      const t0 = Date.now();
      const r = await readOffline(run.d.mountpoint, six, { concurrency: six.length, stopAtEio: true, direct: true });
      console.log(`registry-outage frozen from the start: ${r.eioFiles.size}/${six.length} reads failed in ${Date.now() - t0} ms (budget per read ${OUTAGE_BUDGET_MS} ms)`);
      assert.is(r.eioFiles.size, six.length);
      await assertAlive(run, 'while the registry is frozen');
    } finally {
      reg!.thaw();
    }
    const back = await readEveryPiece(run.d.mountpoint, files, allFiles(), { piece: CHUNK, boundMs: HANG_MS, concurrency: 2 });
    assert.is(back.eio, 0, `still failing after SIGCONT: ${back.eioPieces.slice(0, 10).join(' ')}`);
  } finally {
    await stopDaemon(run.d);
  }
});

/**
 * A host whose SYNs are dropped (a firewall's DROP): a stopped process listening
 * with a backlog of 1 whose accept queue is full, so connections never
 * complete and only `connect_timeout` ends them.
 */
async function blackhole(): Promise<{ host: string; close(): void }> {
  const code = "const s = require('net').createServer(); s.listen({ host: '127.0.0.1', port: 0, backlog: 1 }, () => process.stdout.write(s.address().port + '\\n')); setInterval(() => {}, 1e9);";
  const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await watchdog(new Promise<number>((resolve, reject) => {
    child.stdout!.once('data', (d) => resolve(Number(String(d).trim())));
    child.once('exit', () => reject(new Error('blackhole listener exited')));
  }), 10_000, 'blackhole listener');
  child.kill('SIGSTOP'); // never accepts again
  const fillers: net.Socket[] = [];
  for (let i = 0; i < 8; i++) fillers.push(net.connect(port, '127.0.0.1').on('error', () => undefined));
  await sleep(300);
  // a probe must not connect
  const probe = await new Promise<string>((resolve) => {
    const c = net.connect(port, '127.0.0.1');
    const t = setTimeout(() => { c.destroy(); resolve('timeout'); }, 1000);
    c.on('connect', () => { clearTimeout(t); c.destroy(); resolve('connected'); });
    c.on('error', (e) => { clearTimeout(t); resolve(e.message); });
  });
  if (probe !== 'timeout') { child.kill('SIGKILL'); throw new Error(`blackhole on port ${port} does not drop connections: ${probe}`); }
  return {
    host: `127.0.0.1:${port}`,
    close() {
      for (const f of fillers) f.destroy();
      child.kill('SIGKILL');
    },
  };
}

test('blackholed registry host (SYNs dropped): mount works, an O_DIRECT read fails with EIO once connect_timeout is spent, daemon stays up', async () => {
  if (missing) return;
  const bh = await blackhole();
  try {
    const run = await startDaemon(path.join(work, 'cache-blackhole'), { host: bh.host });
    try {
      await assertAlive(run, 'after mount');
      const t0 = Date.now();
      // O_DIRECT: one FUSE READ, so this times connect_timeout alone (buffered reads pay the
      // budget twice today, which the frozen-registry test shows)
      const r = await readOffline(run.d.mountpoint, ['c/large'], { stopAtEio: true, direct: true });
      console.log(`registry-outage blackhole: the read failed after ${Date.now() - t0} ms (budget ${OUTAGE_BUDGET_MS} ms)`);
      assert.is(r.eioFiles.size, 1);
      await assertAlive(run, 'after the failed read');
      assert.ok((await events(run.sock)) > 0, 'no event for a read that could not connect');
      const m = await metrics(run.sock, 'backend');
      assert.ok(m.read_errors >= READ_ATTEMPTS, `failed attempts: ${JSON.stringify(m)}`);
    } finally {
      await stopDaemon(run.d);
    }
  } finally {
    bh.close();
  }
});

test.run();
