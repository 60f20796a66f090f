/**
 * Lazy pulling through a hostile network: nydusd (FUSE, registry backend,
 * blobcache, default config with a 2 s `timeout`) reads an image whose blob
 * lives in Debian's docker-registry (htpasswd auth), through the fault proxy
 * (test/support/fault-proxy.ts) that resets connections, answers 5xx,
 * truncates, stalls, flips bytes, lies in Content-Range, adds bytes or ignores
 * Range on a share of the blob GETs.
 *
 * Under every fault mode each file is read piece by piece: every piece is
 * either exactly the source's bytes or EIO — never other bytes, never a short
 * read, never a hang (each read has a liveness watchdog of attempts × timeout
 * × downloads + margin) — and the daemon stays up (its API answers). Then the
 * proxy turns clean and the whole tree, read again cold, equals its source
 * (the blob cache was not poisoned); failed reads left events in
 * /api/v1/daemon/events and failed attempts in /api/v1/metrics/backend.
 *
 * Two images: zstd chunks, and uncompressed chunks (`--compressor none`),
 * where a flipped byte is caught by the chunk digest alone. The blob cache
 * files are compared with the source after every pass, and prefetch_all runs
 * under faults once. Last, a single fault of each kind must never reach the
 * reader (O_DIRECT reads, so only nydusd's retries can absorb it).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { READ_ATTEMPTS } from '../../src/storage/backend/retry';
import { REFETCH_LIMIT } from '../../src/storage/cache/filecache';
import { api } from '../support/api';
import { nydusImage, tmpdir } from '../support/cli';
import {
  ALL_FAULTS, type FaultKind, type FaultOptions, type FaultProxyHandle, type FaultRule, type ImageChunks, imageChunks, poisonedChunks, readEveryPiece, readyChunks,
  spawnFaultProxy,
} from '../support/fault-proxy';
import { fuseMissing, isMounted, startNydusd, type Daemon } from '../support/nydusd';
import { registryMissing, startRegistry, type Registry } from '../support/registry';
import { dropCaches, sleep } from '../support/timing';
import { diffTrees, treeRecords } from '../support/tree-digest';

const missing = registryMissing() ?? fuseMissing();
if (missing) {
  if (process.env.CI === 'true') throw new Error(`registry-faults e2e: ${missing}`);
  console.log(`SKIP registry-faults e2e: ${missing}`);
}

const REPO = 'test/faults';
const CHUNK = 0x10000;
/** registry `timeout` and `connect_timeout`, seconds: stalls end after this */
const TIMEOUT_S = 2;
/**
 * Liveness bound of one read(2) of at most one chunk: every download of the
 * chunk (1 + REFETCH_LIMIT) may spend all its attempts, each up to the timeout
 * plus a backoff of at most 1 s, and readahead may have queued a few more
 * fetches ahead of it. Not a speed assertion: only a hang exceeds it.
 */
const READ_BOUND_MS = (REFETCH_LIMIT + 1) * READ_ATTEMPTS * (TIMEOUT_S + 1) * 1000 + 15_000;
/** files read at once in a pass */
const CONCURRENCY = 3;

const work = tmpdir('registry-faults');
const src = path.join(work, 'src');
let reg: Registry | undefined;
let proxy: FaultProxyHandle | undefined;

interface Image { name: string; boot: string; blobId: string; chunks: ImageChunks }
const images: Record<string, Image> = {};
/** regular files of `src`: relative path → content */
const files = new Map<string, Buffer>();
let srcRecords: ReturnType<typeof treeRecords> = [];

/** Random bytes or compressible text, `n` bytes. */
function content(n: number, compressible: boolean): Buffer {
  if (!compressible) return crypto.randomBytes(n);
  const words = ['nydus', 'registry', 'chunk', 'blob', 'lazy', 'pull', 'digest', 'fault', 'proxy', '\n'];
  const parts: string[] = [];
  let len = 0;
  while (len < n) {
    const w = words[crypto.randomInt(words.length)] + (crypto.randomInt(4) === 0 ? String(crypto.randomInt(1e6)) : ' ');
    parts.push(w);
    len += w.length;
  }
  return Buffer.from(parts.join('').slice(0, n));
}

function buildSource(): void {
  // many small files, some medium ones (several chunks), one larger file
  const add = (rel: string, data: Buffer) => {
    const p = path.join(src, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, data);
    files.set(rel, data);
  };
  for (let i = 0; i < 48; i++) add(`small/${String(i).padStart(2, '0')}.dat`, content(crypto.randomInt(1, 40_000), i % 2 === 0));
  add('small/empty', Buffer.alloc(0));
  for (let i = 0; i < 6; i++) add(`mid/m${i}.bin`, content(crypto.randomInt(100_000, 300_000), i % 3 === 0));
  // not a multiple of the chunk size: the last chunk is short
  add('big/large.bin', Buffer.concat([content(1 << 20, false), content((1 << 20) - 777, true)]));
  fs.symlinkSync('../big/large.bin', path.join(src, 'small/link'));
  srcRecords = treeRecords(src);
}

async function buildImage(name: string, compressor: string): Promise<Image> {
  const blobs = path.join(work, `blobs-${name}`);
  const boot = path.join(work, `${name}.boot`);
  nydusImage(['create', '--fs-version', '6', '--compressor', compressor, '--chunk-size', `0x${CHUNK.toString(16)}`, '--bootstrap', boot, '--blob-dir', blobs, src]);
  const names = fs.readdirSync(blobs);
  assert.is(names.length, 1);
  const blobId = names[0];
  assert.is(await reg!.pushBlob(REPO, fs.readFileSync(path.join(blobs, blobId))), blobId);
  const chunks = await imageChunks(boot, files.keys());
  assert.is(chunks.blobId, blobId);
  return { name, boot, blobId, chunks };
}

test.before(async () => {
  if (missing) return;
  buildSource();
  reg = await startRegistry({ user: 'nydus', pass: 'fault-pass' });
  images.zstd = await buildImage('zstd', 'zstd');
  images.none = await buildImage('none', 'none');
  proxy = await spawnFaultProxy(reg.host);
});

test.after(async () => {
  await proxy?.close();
  await reg?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

// ------------------------------------------------------------------ helpers

interface Counters { events: number; attempts: number; errors: number }

async function counters(sock: string): Promise<Counters> {
  const ev = await api(sock, 'GET', '/api/v1/daemon/events');
  assert.is(ev.status, 200, ev.body);
  const be = await api(sock, 'GET', '/api/v1/metrics/backend');
  assert.is(be.status, 200, be.body);
  const e = ev.json as { total_errors: number };
  const b = be.json as { read_count: number; read_errors: number };
  return { events: e.total_errors, attempts: b.read_count, errors: b.read_errors };
}

async function assertAlive(d: Daemon, sock: string, when: string): Promise<void> {
  assert.is(d.proc.exitCode, null, `nydusd exited ${when}: ${d.log().slice(-3000)}`);
  const r = await api(sock, 'GET', '/api/v1/daemon');
  assert.is(r.status, 200, `API ${when}: ${r.body}`);
  assert.is((r.json as { state: string }).state, 'RUNNING', `state ${when}`);
  assert.ok(isMounted(d.mountpoint), `mount gone ${when}`);
}

let runs = 0;

async function mount(img: Image, prefetch = false): Promise<{ d: Daemon; sock: string; cache: string }> {
  const dir = path.join(work, `run-${++runs}`);
  fs.mkdirSync(dir);
  const cfg = path.join(dir, 'config.json');
  const cache = path.join(dir, 'cache');
  // default config, plus small timeouts so stalls resolve
  fs.writeFileSync(cfg, JSON.stringify({
    version: 2,
    backend: { type: 'registry', registry: { scheme: 'http', host: proxy!.host, repo: REPO, auth: reg!.auth, timeout: TIMEOUT_S, connect_timeout: TIMEOUT_S } },
    cache: { type: 'blobcache', filecache: { work_dir: cache }, prefetch: { enable: prefetch } },
    rafs: { mode: 'direct', prefetch: { enable: prefetch, prefetch_all: prefetch } },
  }));
  const sock = path.join(dir, 'api.sock');
  const d = await startNydusd(path.join(dir, 'mnt'), ['--bootstrap', img.boot, '--config', cfg, '--apisock', sock, '--log-level', 'warn']);
  return { d, sock, cache };
}

interface Mode {
  name: string;
  rules: FaultRule[];
  opts?: FaultOptions;
  /** an injected fault always fails its attempt (metrics must count errors) */
  failsAttempt?: boolean;
  /** faults corrupt data with valid framing: a failure may be a digest mismatch, which is no backend error */
  corrupts?: boolean;
  /** read only these files (modes where everything fails slowly) */
  only?: string[];
  /** every piece must fail */
  allFail?: boolean;
  /** prefetch_all runs (under the faults) before the files are read */
  prefetch?: boolean;
  /** read with O_DIRECT (one FUSE READ per read(2), no kernel retry) */
  direct?: boolean;
}

const p = (fault: FaultKind, probability: number, extra: Partial<FaultRule> = {}): FaultRule => ({ fault, probability, ...extra });
/** the 2nd blob GET of a fresh daemon (its 1st authenticated one) always gets `fault`: every mode injects */
const second = (fault: FaultKind): FaultRule => ({ fault, first: 2, limit: 1 });
const sometimes = (fault: FaultKind, probability: number): FaultRule[] => [second(fault), p(fault, probability)];

const MODES: Mode[] = [
  { name: 'flipped bytes (half the blob GETs)', rules: sometimes('flip', 0.5), opts: { seed: 11 }, corrupts: true },
  { name: 'flipped bytes (every blob GET)', rules: [p('flip', 1)], opts: { seed: 12, flipBytes: 3 }, corrupts: true },
  { name: 'shifted range with its honest Content-Range', rules: sometimes('shifted-range', 0.5), opts: { seed: 13 }, failsAttempt: true },
  { name: 'right body, wrong Content-Range', rules: sometimes('bad-content-range', 0.5), opts: { seed: 14 }, failsAttempt: true },
  { name: 'extra bytes (Content-Length and chunked)', rules: [second('extra-bytes'), p('extra-bytes', 0.25), p('extra-bytes-chunked', 0.33)], opts: { seed: 15 }, failsAttempt: true },
  { name: 'truncated bodies', rules: sometimes('truncate', 0.4), opts: { seed: 16 }, failsAttempt: true },
  { name: 'Range ignored (200 with the whole blob)', rules: sometimes('ignore-range', 0.2), opts: { seed: 17 }, failsAttempt: true },
  { name: 'stray bytes after a complete reply on a kept-alive connection', rules: sometimes('trailing-garbage', 0.5), opts: { seed: 18 } },
  { name: 'connection resets before and after headers', rules: [second('reset-after-headers'), p('reset-before-headers', 0.25), p('reset-after-headers', 0.33)], opts: { seed: 19 }, failsAttempt: true },
  { name: '500/502/503 replies', rules: [second('status-502'), p('status-500', 0.15), p('status-502', 0.18), p('status-503', 0.22)], opts: { seed: 20 }, failsAttempt: true },
  {
    // the first read's 4 attempts all stall (EIO after ~4 timeouts), later ones now and then
    name: 'stalls (never answered, headers then silence, half a body then silence, a trickling body)',
    rules: [
      { fault: 'stall-accept', limit: 2 }, { fault: 'stall-headers', limit: 1 }, { fault: 'stall-body', limit: 1 }, { fault: 'trickle', limit: 1 },
      p('stall-headers', 0.1, { limit: 1 }), p('stall-body', 0.1, { limit: 1 }), p('stall-accept', 0.1, { limit: 1 }), p('trickle', 0.1, { limit: 1 }),
    ],
    opts: { seed: 21 },
    failsAttempt: true,
  },
  {
    name: 'every kind of fault now and then',
    rules: [second('flip'), ...ALL_FAULTS.map((f) => (/^(stall|trickle)/.test(f) ? p(f, 0.02, { limit: 2 }) : p(f, 0.04)))],
    opts: { seed: 22 },
    corrupts: true,
  },
  {
    name: 'every kind of fault now and then, O_DIRECT reads',
    rules: [second('truncate'), ...ALL_FAULTS.map((f) => (/^(stall|trickle)/.test(f) ? p(f, 0.02, { limit: 2 }) : p(f, 0.05)))],
    opts: { seed: 24 },
    corrupts: true,
    direct: true,
  },
  {
    name: 'prefetch_all under flipped bytes, resets and truncation',
    rules: [second('flip'), p('flip', 0.3), p('reset-after-headers', 0.15), p('truncate', 0.15)],
    opts: { seed: 23 },
    corrupts: true,
    prefetch: true,
  },
  {
    name: 'every blob GET answered 503',
    rules: [p('status-503', 1)],
    failsAttempt: true,
    only: ['small/00.dat', 'small/01.dat', 'mid/m0.bin', 'big/large.bin'],
    allFail: true,
  },
];

/** Uncompressed chunks: the data-corruption modes, where only the digest can tell. */
const NONE_MODES = new Set(['flipped bytes (half the blob GETs)', 'flipped bytes (every blob GET)', 'shifted range with its honest Content-Range',
  'right body, wrong Content-Range', 'extra bytes (Content-Length and chunked)', 'truncated bodies', 'Range ignored (200 with the whole blob)',
  'prefetch_all under flipped bytes, resets and truncation']);

/** Bounded wait until the prefetch workers are done (or everything is cached). */
async function prefetchDone(sock: string, cache: string, img: Image): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const r = await api(sock, 'GET', '/api/v1/metrics/blobcache');
    const m = r.json as { prefetch_workers?: number; prefetch_requests_count?: number };
    const ready = await readyChunks(cache, img.chunks);
    if (ready.size === img.chunks.chunkCount || (m.prefetch_requests_count! > 0 && m.prefetch_workers === 0)) return;
    if (Date.now() - t0 > 60_000) assert.unreachable(`prefetch still running after 60 s: ${r.body}`);
    await sleep(100);
  }
}

async function runMode(img: Image, mode: Mode): Promise<void> {
  // faults on from the start when prefetch runs at mount
  await proxy!.resetStats();
  await proxy!.setFaults(mode.rules, mode.opts);
  const { d, sock, cache } = await mount(img, mode.prefetch);
  try {
    await assertAlive(d, sock, 'after mount');
    const c0 = await counters(sock);
    if (mode.prefetch) {
      await prefetchDone(sock, cache, img);
      assert.equal(await poisonedChunks(cache, img.chunks, files), [], 'prefetch under faults cached wrong bytes');
    }
    const list = mode.only ?? [...files.keys()].sort();
    const pass = await readEveryPiece(d.mountpoint, files, list, { piece: CHUNK, boundMs: READ_BOUND_MS, concurrency: CONCURRENCY, stopAtEio: !!mode.allFail, direct: !!mode.direct });
    const injected = await proxy!.stats();
    await assertAlive(d, sock, 'after the faulty pass');
    const c1 = await counters(sock);
    console.log(`registry-faults [${img.name}] ${mode.name}: ${pass.ok}/${pass.pieces} pieces right, ${pass.eio} EIO in ${pass.eioFiles.size} file(s); `
      + `proxy: ${injected.faults} fault(s) in ${injected.blobGets} blob GETs ${JSON.stringify(injected.injected)}; `
      + `backend: ${c1.attempts - c0.attempts} attempts, ${c1.errors - c0.errors} failed; events +${c1.events - c0.events}`);
    assert.ok(injected.faults > 0, 'the proxy injected no fault: the mode tested nothing');
    if (mode.allFail) {
      assert.is(pass.ok, list.filter((f) => files.get(f)!.length === 0).length, 'reads succeeded although every blob GET failed');
      assert.is(pass.eioFiles.size, list.filter((f) => files.get(f)!.length > 0).length);
    }
    if (mode.failsAttempt) assert.ok(c1.errors - c0.errors > 0, 'faults were injected but /api/v1/metrics/backend counts no failed attempt');
    assert.ok(c1.attempts - c0.attempts >= c1.errors - c0.errors);
    if (pass.eio > 0 && !mode.corrupts) {
      // transport faults only: an EIO means some backend read spent all its attempts, which is an event
      assert.ok(c1.events - c0.events >= 1, `${pass.eio} EIO reads but /api/v1/daemon/events did not grow`);
    }

    assert.equal(await poisonedChunks(cache, img.chunks, files), [], 'the cache holds wrong bytes after the faulty pass');

    // clean network: everything, read cold, equals the source
    await proxy!.clean();
    dropCaches();
    assert.equal(diffTrees(srcRecords, treeRecords(d.mountpoint)), [], 'tree differs from its source after clean()');
    await assertAlive(d, sock, 'after the clean pass');
    const c2 = await counters(sock);
    if (pass.eio > 0) assert.ok(c2.attempts > c1.attempts, 'chunks that failed were not fetched again');
    assert.equal(await poisonedChunks(cache, img.chunks, files), [], 'the cache holds wrong bytes after the clean pass');
  } finally {
    await proxy!.clean();
    const code = await d.stop();
    assert.is(code, 0, `nydusd exit code; log: ${d.log().slice(-3000)}`);
  }
  assert.not.ok(isMounted(d.mountpoint));
}

/** REGISTRY_FAULTS_ONLY=<regex> runs only the matching modes (debugging) */
const only = process.env.REGISTRY_FAULTS_ONLY ? new RegExp(process.env.REGISTRY_FAULTS_ONLY) : undefined;
const selected = (m: Mode) => !only || only.test(m.name);

for (const mode of MODES.filter(selected)) {
  test(`zstd chunks: ${mode.name}: right bytes or EIO, no hang, then clean`, async () => {
    if (missing) return;
    await runMode(images.zstd, mode);
  });
}
for (const mode of MODES.filter((m) => NONE_MODES.has(m.name) && selected(m))) {
  test(`uncompressed chunks: ${mode.name}: right bytes or EIO, no hang, then clean`, async () => {
    if (missing) return;
    await runMode(images.none, mode);
  });
}

/**
 * One transient fault — of any kind — must be absorbed by the 4 attempts (and
 * the refetches of bad data): no read fails. The fault hits the first
 * authenticated blob GET, i.e. the first read's first attempt; the first file
 * read is not at blob offset 0 (a 200 for a read at 0 is a mere length error).
 * Reads are O_DIRECT, so what is tested is nydusd's own retrying.
 */
test('zstd chunks: a single fault of each kind is absorbed by the retries: no EIO at all', async () => {
  if (missing) return;
  const img = images.zstd;
  const first = ['small/00.dat', 'mid/m0.bin', 'big/large.bin'];
  assert.ok(img.chunks.byFile.get(first[0])![0].uncompressedOffset > 0, `${first[0]} starts the blob`);
  const leaked: string[] = [];
  for (const fault of ALL_FAULTS) {
    await proxy!.resetStats();
    await proxy!.setFaults([second(fault)]);
    const { d, sock, cache } = await mount(img);
    try {
      // O_DIRECT: one read(2) is one FUSE READ, so the kernel's retry of a failed readahead cannot hide an EIO
      const r = await readEveryPiece(d.mountpoint, files, first, { piece: CHUNK, boundMs: READ_BOUND_MS, direct: true });
      const st = await proxy!.stats();
      assert.is(st.faults, 1, `${fault}: ${JSON.stringify(st.injected)}`);
      if (r.eio > 0) {
        const ev = await api(sock, 'GET', '/api/v1/daemon/events');
        leaked.push(`${fault}: ${r.eio} EIO (${r.eioPieces.join(' ')}); events: ${JSON.stringify((ev.json as { errors: string[] }).errors.slice(-2))}`);
      }
      await assertAlive(d, sock, `after one ${fault}`);
      assert.equal(await poisonedChunks(cache, img.chunks, files), [], `${fault}: wrong bytes cached`);
    } finally {
      await proxy!.clean();
      const code = await d.stop();
      assert.is(code, 0, `nydusd exit code; log: ${d.log().slice(-3000)}`);
    }
  }
  assert.equal(leaked, [], 'a single transient fault reached the reader as EIO');
});

test.run();
