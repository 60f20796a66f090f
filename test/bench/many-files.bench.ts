/**
 * `npm run bench:many` (FUSE, root): a 100,000-file image (100 dirs x 1,000
 * files of 1–8 KiB) served by this nydusd and by squashfuse in one run:
 * mount time, stat of every file and cold read of every file (page caches
 * dropped, daemon cache empty), and the daemon's RSS right after the mount
 * and after reading everything, and the daemon's CPU time (user + system)
 * during the read of everything. Issue 11's goals: cold read of every file
 * ≤ 1.0x squashfuse's time; nydusd RSS ≤ 64 MB after mount, ≤ 120 MB after
 * the reads. MANY_FILES=N changes the file count (dirs of 1,000);
 * MANY_WORK=DIR the work directory (default $TMPDIR/nydus-many-bench: two
 * runs at once need two). The daemon runs under NYDUSD_NODE_ARGS when set.
 * Before/after: MANY_BASE=<another build's bin/nydusd> runs that build too,
 * MANY_ROUNDS=N (default 1) rounds of base, this build and squashfuse in
 * turn, medians and per-round ratios reported (a shared machine is noisy).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from '../support/cli';
import { startNydusd } from '../support/nydusd';
import { dropCaches, sleep, timeCmd } from '../support/timing';

const N = Math.max(1000, Number(process.env.MANY_FILES ?? 100_000) || 100_000);
const PER_DIR = 1000;

function makeTree(dir: string): void {
  const stamp = path.join(dir, `.complete-${N}`);
  if (fs.existsSync(stamp)) return;
  fs.rmSync(dir, { recursive: true, force: true });
  const text = Buffer.from(Array.from({ length: 400 }, (_, i) => `line ${i}: some moderately repetitive text\n`).join(''));
  for (let i = 0; i < N; i++) {
    const d = path.join(dir, `d${Math.floor(i / PER_DIR)}`);
    if (i % PER_DIR === 0) fs.mkdirSync(d, { recursive: true });
    const size = 1024 + ((i * 2654435761) >>> 0) % 7168;
    const off = i % (text.length - 8192);
    const b = Buffer.from(text.subarray(off, off + size));
    b.writeUInt32LE(i, 0); // every file differs
    fs.writeFileSync(path.join(d, `f${i}`), b);
  }
  fs.writeFileSync(stamp, '');
}

const rssMb = (pid: number): number => {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
};

function squashfusePid(mnt: string): number {
  const out = execFileSync('pgrep', ['-f', `squashfuse .* ${mnt}$`], { encoding: 'utf8' }).trim().split('\n')[0];
  return Number(out);
}

interface Row { mount: number; stat: number; read: number; rssMount: number; rssStat: number; rssRead: number; cpuRead: number }

/** CPU seconds (user + system, all threads) process `pid` has used so far. */
const cpuSecs = (pid: number): number => {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' '); // fields from 3 on (state): utime is 14, stime 15
  return (Number(rest[11]) + Number(rest[12])) / 100; // USER_HZ
};

function measure(mnt: string, pid: number, mountSecs: number): Row {
  const rssMount = rssMb(pid);
  dropCaches();
  const stat = timeCmd(`find '${mnt}' -type f -print0 | xargs -0 stat --format=%s > /dev/null`);
  const rssStat = rssMb(pid);
  dropCaches();
  const cpu0 = cpuSecs(pid);
  const read = timeCmd(`find '${mnt}' -type f -print0 | xargs -0 cat > /dev/null`);
  return { mount: mountSecs, stat, read, rssMount, rssStat, rssRead: rssMb(pid), cpuRead: cpuSecs(pid) - cpu0 };
}

const median = (v: number[]): number => { const s = [...v].sort((a, b) => a - b); return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };

/** One mount of a nydusd build (`bin`: undefined for this one) with an empty cache, measured and unmounted. */
async function runNydusd(work: string, boot: string, cfg: string, cache: string, bin: string | undefined): Promise<Row> {
  const mnt = path.join(work, 'mnt-nydusd');
  fs.rmSync(cache, { recursive: true, force: true });
  fs.mkdirSync(cache, { recursive: true });
  const saved = process.env.NYDUSD_BIN;
  if (bin) process.env.NYDUSD_BIN = bin;
  dropCaches();
  const t0 = process.hrtime.bigint();
  let d;
  try {
    d = await startNydusd(mnt, ['--bootstrap', boot, '--config', cfg, '--log-level', 'warn']);
  } finally {
    if (bin) { if (saved === undefined) delete process.env.NYDUSD_BIN; else process.env.NYDUSD_BIN = saved; }
  }
  const mountSecs = Number(process.hrtime.bigint() - t0) / 1e9;
  try {
    await sleep(500);
    return measure(mnt, d.proc.pid!, mountSecs);
  } finally { await d.stop(); }
}

async function runSquashfuse(work: string, sq: string): Promise<Row> {
  const smnt = path.join(work, 'mnt-squashfuse');
  fs.mkdirSync(smnt, { recursive: true });
  dropCaches();
  const t0 = process.hrtime.bigint();
  execFileSync('squashfuse', [sq, smnt]);
  const mountSecs = Number(process.hrtime.bigint() - t0) / 1e9;
  try {
    await sleep(500);
    return measure(smnt, squashfusePid(smnt), mountSecs);
  } finally { execFileSync('umount', [smnt]); }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) { console.log('SKIP many-files bench: needs root'); return; }
  const work = process.env.MANY_WORK || path.join(os.tmpdir(), 'nydus-many-bench');
  const base = process.env.MANY_BASE;
  const rounds = Math.max(1, Math.min(20, Number(process.env.MANY_ROUNDS ?? 1) || 1));
  const src = path.join(work, `src-${N}`);
  makeTree(src);

  const blobs = path.join(work, 'blobs'), cache = path.join(work, 'cache');
  fs.rmSync(blobs, { recursive: true, force: true });
  fs.mkdirSync(blobs, { recursive: true });
  const boot = path.join(work, 'image.boot');
  execFileSync(path.join(ROOT, 'bin/nydus-image'), ['create', '--compressor', 'zstd', '--bootstrap', boot, '--blob-dir', blobs, src], { stdio: 'ignore' });
  const cfg = path.join(work, 'config.json');
  fs.writeFileSync(cfg, JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: blobs } }, cache: { type: 'blobcache', filecache: { work_dir: cache } }, rafs: { mode: 'direct' } }));
  const sq = path.join(work, 'image.sqfs');
  execFileSync('mksquashfs', [src, sq, '-comp', 'zstd', '-noappend', '-quiet'], { stdio: 'ignore' });

  const NY = 'nydusd (zstd, blobcache)', BASE = 'base nydusd', SQ = 'squashfuse (zstd)';
  const rows: Record<string, Row[]> = { [NY]: [], [SQ]: [] };
  if (base) rows[BASE] = [];
  const load = () => os.loadavg().map((l) => l.toFixed(2)).join(' ');
  const loadBefore = load();
  for (let r = 0; r < rounds; r++) {
    if (base) rows[BASE].push(await runNydusd(work, boot, cfg, cache, base));
    rows[NY].push(await runNydusd(work, boot, cfg, cache, undefined));
    rows[SQ].push(await runSquashfuse(work, sq));
  }

  console.log(`many-files benchmark: ${N} files in ${N / PER_DIR} dirs (caches dropped before each pass), ${os.cpus().length} CPUs, ${rounds} round(s), load average ${loadBefore} -> ${load()}`);
  const fmt = (r: Row) => `mount ${r.mount.toFixed(2)} s  stat-all ${r.stat.toFixed(2)} s  read-all ${r.read.toFixed(2)} s (daemon CPU ${r.cpuRead.toFixed(2)} s)  RSS after mount ${r.rssMount.toFixed(0)} MB, after stat ${r.rssStat.toFixed(0)} MB, after reads ${r.rssRead.toFixed(0)} MB`;
  const med = (l: Row[]): Row => ({
    mount: median(l.map((x) => x.mount)), stat: median(l.map((x) => x.stat)), read: median(l.map((x) => x.read)),
    rssMount: median(l.map((x) => x.rssMount)), rssStat: median(l.map((x) => x.rssStat)), rssRead: median(l.map((x) => x.rssRead)),
    cpuRead: median(l.map((x) => x.cpuRead)),
  });
  for (const [name, l] of Object.entries(rows)) {
    if (rounds > 1) l.forEach((x, i) => console.log(`  round ${i + 1} ${name.padEnd(26)} ${fmt(x)}`));
    console.log(`${rounds > 1 ? 'median ' : ''}${name.padEnd(26)} ${fmt(med(l))}`);
  }
  const ratios = (name: string) => rows[name].map((x, i) => (x.read / rows[SQ][i].read).toFixed(2)).join(' ');
  const o = med(rows[NY]), s = med(rows[SQ]);
  const verdict = (ok: boolean) => (ok ? 'MET' : 'NOT MET');
  console.log(`ratios nydusd / squashfuse (time, medians): stat-all ${(o.stat / s.stat).toFixed(2)}x  read-all ${(o.read / s.read).toFixed(2)}x (goal <= 1.0x: ${verdict(o.read <= s.read)}); read-all per round: ${ratios(NY)}`);
  if (base) {
    const b = med(rows[BASE]);
    console.log(`base / squashfuse (medians): stat-all ${(b.stat / s.stat).toFixed(2)}x  read-all ${(b.read / s.read).toFixed(2)}x; read-all per round: ${ratios(BASE)}; base RSS ${b.rssMount.toFixed(0)} / ${b.rssRead.toFixed(0)} MB; daemon CPU during read-all this / base ${(o.cpuRead / b.cpuRead).toFixed(2)}x (${o.cpuRead.toFixed(2)} / ${b.cpuRead.toFixed(2)} s); read-all time this / base ${(o.read / b.read).toFixed(2)}x`);
  }
  console.log(`nydusd RSS: after mount ${o.rssMount.toFixed(0)} MB (goal <= 64: ${verdict(o.rssMount <= 64)}), after reads ${o.rssRead.toFixed(0)} MB (goal <= 120: ${verdict(o.rssRead <= 120)}); squashfuse ${s.rssMount.toFixed(0)} / ${s.rssRead.toFixed(0)} MB`);
}

main().catch((e) => { console.error(e); process.exitCode = 1; });
