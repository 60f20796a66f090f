/**
 * `npm run bench` (FUSE): the same image served by this nydusd over
 * /dev/fuse, by squashfuse, and by the kernel's EROFS (the ceiling), in one
 * run: cold and warm sequential read of a 256 MiB file, cold random 4 KiB
 * reads of it (fio, one job, psync, a fixed seed: the same offsets for every
 * server) and find+stat over 3000 files. Prints times and ratios (ours /
 * squashfuse). The goals' cold sequential ratios are medians over
 * FUSE_BENCH_ROUNDS (default 3) more rounds of the servers in turn, each
 * with a fresh daemon / mount and an empty cache. Needs root (and fio for
 * the random reads).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from '../support/cli';
import { BENCH_BIG, BENCH_SMALL, makeReadBenchTree } from '../support/bench-tree';
import { isMounted, startNydusd } from '../support/nydusd';
import { dropCaches, timeCmd } from '../support/timing';

const BIG = BENCH_BIG;
/** Extra rounds of cold sequential reads, the servers in turn (FUSE_BENCH_ROUNDS, default 3). */
const ROUNDS = Math.max(1, Number(process.env.FUSE_BENCH_ROUNDS ?? 3) || 3);
const SMALL = BENCH_SMALL;


interface Result { cold: number; warm: number; meta: number; rand?: number }

/** Random 4 KiB reads per cold run: 16 MiB in all, at offsets spread over the whole file. */
const RAND_BYTES = 16 << 20;
const fioMissing = spawnSync('sh', ['-c', 'command -v fio']).status !== 0;

/**
 * Seconds fio spends on RAND_BYTES of random 4 KiB reads of `file` (its own
 * runtime, without its start-up), page cache dropped first; undefined without fio.
 */
function randCold(file: string): number | undefined {
  if (fioMissing) return undefined;
  dropCaches();
  const out = execFileSync('fio', ['--name=rand', `--filename=${file}`, '--rw=randread', '--bs=4k', `--size=${BIG}`, `--io_size=${RAND_BYTES}`,
    '--ioengine=psync', '--randrepeat=1', '--randseed=42', '--readonly', '--invalidate=1', '--output-format=json'], { encoding: 'utf8' });
  const r = JSON.parse(out.slice(out.indexOf('{'))).jobs[0].read;
  if (r.io_bytes !== RAND_BYTES) throw new Error(`fio read ${r.io_bytes} bytes, expected ${RAND_BYTES}`);
  return r.runtime / 1000;
}

function measure(mnt: string, beforeCold: () => void): Result {
  beforeCold();
  dropCaches();
  const cold = timeCmd(`dd if='${mnt}/big.bin' of=/dev/null bs=1M`);
  const warm = Math.min(timeCmd(`dd if='${mnt}/big.bin' of=/dev/null bs=1M`), timeCmd(`dd if='${mnt}/big.bin' of=/dev/null bs=1M`));
  let meta = Infinity;
  for (let i = 0; i < 3; i++) {
    dropCaches();
    meta = Math.min(meta, timeCmd(`find '${mnt}/small' -type f -print0 | xargs -0 stat --format=%s > /dev/null`));
  }
  return { cold, warm, meta };
}

async function main() {
  if (process.getuid?.() !== 0) { console.log('SKIP fuse bench: needs root'); return; }
  const work = path.join(os.tmpdir(), 'nydus-fuse-bench');
  const src = path.join(work, 'src');
  makeReadBenchTree(src);
  const ni = path.join(ROOT, 'bin/nydus-image');
  const results: Record<string, Result> = {};

  // this nydusd: v6 zstd, blobcache
  const blobs = path.join(work, 'blobs'), cache = path.join(work, 'cache'), mnt = path.join(work, 'mnt-nydusd');
  fs.rmSync(blobs, { recursive: true, force: true });
  fs.mkdirSync(blobs, { recursive: true });
  execFileSync(ni, ['create', '--compressor', 'zstd', '--bootstrap', path.join(work, 'image.boot'), '--blob-dir', blobs, src], { stdio: 'ignore' });
  const cfg = path.join(work, 'config.json');
  fs.writeFileSync(cfg, JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: blobs } }, cache: { type: 'blobcache', filecache: { work_dir: cache } }, rafs: { mode: 'direct' } }));
  fs.rmSync(cache, { recursive: true, force: true });
  fs.mkdirSync(cache, { recursive: true });
  let d = await startNydusd(mnt, ['--bootstrap', path.join(work, 'image.boot'), '--config', cfg, '--thread-num', '4', '--log-level', 'warn']);
  try { results['nydusd (zstd, blobcache)'] = measure(mnt, () => {}); } finally { await d.stop(); }
  // cold again with an empty cache dir for a fair "first read"
  fs.rmSync(cache, { recursive: true, force: true });
  fs.mkdirSync(cache, { recursive: true });
  d = await startNydusd(mnt, ['--bootstrap', path.join(work, 'image.boot'), '--config', cfg, '--thread-num', '4', '--log-level', 'warn']);
  try {
    dropCaches();
    results['nydusd (zstd, blobcache)'].cold = timeCmd(`dd if='${mnt}/big.bin' of=/dev/null bs=1M`);
  } finally { await d.stop(); }
  // random reads, cold: a new daemon, an empty cache dir
  fs.rmSync(cache, { recursive: true, force: true });
  fs.mkdirSync(cache, { recursive: true });
  d = await startNydusd(mnt, ['--bootstrap', path.join(work, 'image.boot'), '--config', cfg, '--thread-num', '4', '--log-level', 'warn']);
  try { results['nydusd (zstd, blobcache)'].rand = randCold(`${mnt}/big.bin`); } finally { await d.stop(); }

  // the same image without a local cache (dummycache): what the blobcache's writes cost
  const cfgNone = path.join(work, 'config-nocache.json');
  fs.writeFileSync(cfgNone, JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: blobs } }, cache: { type: '' }, rafs: { mode: 'direct' } }));
  d = await startNydusd(mnt, ['--bootstrap', path.join(work, 'image.boot'), '--config', cfgNone, '--thread-num', '4', '--log-level', 'warn']);
  try { results['nydusd (zstd, no cache)'] = measure(mnt, () => {}); } finally { await d.stop(); }
  d = await startNydusd(mnt, ['--bootstrap', path.join(work, 'image.boot'), '--config', cfgNone, '--thread-num', '4', '--log-level', 'warn']);
  try { results['nydusd (zstd, no cache)'].rand = randCold(`${mnt}/big.bin`); } finally { await d.stop(); }

  // squashfuse over a zstd squashfs of the same tree
  const sq = path.join(work, 'image.sqfs'), smnt = path.join(work, 'mnt-squashfuse');
  execFileSync('mksquashfs', [src, sq, '-comp', 'zstd', '-noappend', '-quiet'], { stdio: 'ignore' });
  fs.mkdirSync(smnt, { recursive: true });
  execFileSync('squashfuse', [sq, smnt]);
  try { results['squashfuse (zstd)'] = measure(smnt, () => {}); } finally { execFileSync('umount', [smnt]); }
  execFileSync('squashfuse', [sq, smnt]); // a fresh mount: squashfuse's own block cache empty too
  try { results['squashfuse (zstd)'].rand = randCold(`${smnt}/big.bin`); } finally { execFileSync('umount', [smnt]); }

  // cold sequential reads again, ROUNDS rounds of the three servers in turn (a shared machine is
  // noisy: one cold run each says little); the goal's ratio is the median of the per-round ratios
  const rounds: Array<{ cache: number; none: number; sq: number }> = [];
  for (let r = 0; r < ROUNDS; r++) {
    const coldOnce = async (config: string): Promise<number> => {
      fs.rmSync(cache, { recursive: true, force: true });
      fs.mkdirSync(cache, { recursive: true });
      const daemon = await startNydusd(mnt, ['--bootstrap', path.join(work, 'image.boot'), '--config', config, '--thread-num', '4', '--log-level', 'warn']);
      try { dropCaches(); return timeCmd(`dd if='${mnt}/big.bin' of=/dev/null bs=1M`); } finally { await daemon.stop(); }
    };
    const c = await coldOnce(cfg);
    const n = await coldOnce(cfgNone);
    execFileSync('squashfuse', [sq, smnt]);
    let q: number;
    try { dropCaches(); q = timeCmd(`dd if='${smnt}/big.bin' of=/dev/null bs=1M`); } finally { execFileSync('umount', [smnt]); }
    rounds.push({ cache: c, none: n, sq: q });
  }
  const median = (xs: number[]) => { const v = [...xs].sort((a, b) => a - b); return v.length % 2 ? v[v.length >> 1] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2; };

  // kernel EROFS ceiling: uncompressed v6 image, blob as device
  const eb = path.join(work, 'eblobs'), emnt = path.join(work, 'mnt-erofs');
  fs.rmSync(eb, { recursive: true, force: true });
  fs.mkdirSync(eb, { recursive: true });
  execFileSync(ni, ['create', '--compressor', 'none', '--bootstrap', path.join(work, 'none.boot'), '--blob-dir', eb, '--output-json', path.join(work, 'none.json'), src], { stdio: 'ignore' });
  const blob = path.join(eb, JSON.parse(fs.readFileSync(path.join(work, 'none.json'), 'utf8')).blobs[0]);
  fs.mkdirSync(emnt, { recursive: true });
  const lb = execFileSync('losetup', ['-f', '--show', '-r', path.join(work, 'none.boot')], { encoding: 'utf8' }).trim();
  const ld = execFileSync('losetup', ['-f', '--show', '-r', blob], { encoding: 'utf8' }).trim();
  try {
    execFileSync('mount', ['-t', 'erofs', '-o', `ro,device=${ld}`, lb, emnt]);
    try {
      results['kernel EROFS (ceiling)'] = measure(emnt, () => {});
      results['kernel EROFS (ceiling)'].rand = randCold(`${emnt}/big.bin`);
    } finally { execFileSync('umount', [emnt]); }
  } finally { for (const l of [lb, ld]) spawnSync('losetup', ['-d', l]); }

  console.log(`FUSE benchmark (${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(1)}): ${BIG >> 20} MiB file (cold = caches dropped, daemon cache empty; warm = best of 2; random = ${RAND_BYTES >> 20} MiB of 4 KiB fio randread, cold) and find+stat of ${SMALL} files (best of 3, caches dropped)`);
  const ref = results['squashfuse (zstd)'];
  for (const [name, r] of Object.entries(results)) {
    const mbps = (t: number) => `${(BIG / 1048576 / t).toFixed(0)} MiB/s`;
    const rand = r.rand === undefined ? 'n/a (no fio)' : `${r.rand.toFixed(2)} s (${(RAND_BYTES / 4096 / r.rand).toFixed(0)} IOPS)`;
    console.log(`${name.padEnd(26)} cold ${r.cold.toFixed(2)} s (${mbps(r.cold)})  warm ${r.warm.toFixed(2)} s (${mbps(r.warm)})  random 4k cold ${rand}  find+stat ${r.meta.toFixed(2)} s`);
  }
  for (const name of ['nydusd (zstd, blobcache)', 'nydusd (zstd, no cache)']) {
    const o = results[name];
    const rand = o.rand !== undefined && ref.rand !== undefined ? `  random 4k cold ${(o.rand / ref.rand).toFixed(2)}x` : '';
    console.log(`ratios ${name} / squashfuse (time, lower is better): cold ${(o.cold / ref.cold).toFixed(2)}x  warm ${(o.warm / ref.warm).toFixed(2)}x${rand}  find+stat ${(o.meta / ref.meta).toFixed(2)}x`);
  }
  // issue 11's goals for this transport: medians over the rounds
  const verdict = (ok: boolean) => (ok ? 'MET' : 'NOT MET');
  console.log(`cold sequential rounds (s, nydusd+blobcache / nydusd no cache / squashfuse): ${rounds.map((r) => `${r.cache.toFixed(2)}/${r.none.toFixed(2)}/${r.sq.toFixed(2)}`).join('  ')}`);
  for (const [name, key] of [['nydusd (zstd, blobcache)', 'cache'], ['nydusd (zstd, no cache)', 'none']] as const) {
    const per = rounds.map((r) => r[key] / r.sq);
    const r = median(per);
    console.log(`goal: ${name} cold sequential read <= 1.0x squashfuse: ${r.toFixed(2)}x ${verdict(r <= 1.0)} (median of ${rounds.length} rounds: ${per.map((x) => x.toFixed(2)).join(' ')}; first run above ${(results[name].cold / ref.cold).toFixed(2)}x)`);
  }
  if (isMounted(mnt)) console.log('warning: nydusd mount left behind');
}

main().catch((e) => { console.error(e); process.exitCode = 1; });
