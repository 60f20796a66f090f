/**
 * `npm run bench:many` (FUSE, root): a 100,000-file image (100 dirs x 1,000
 * files of 1–8 KiB) served by this nydusd and by squashfuse in one run:
 * mount time, stat of every file and cold read of every file (page caches
 * dropped, daemon cache empty), and the daemon's RSS right after the mount
 * and after reading everything. Issue 11's goals: cold read of every file
 * ≤ 1.0x squashfuse's time; nydusd RSS ≤ 64 MB after mount, ≤ 120 MB after
 * the reads. MANY_FILES=N changes the file count (dirs of 1,000);
 * MANY_WORK=DIR the work directory (default $TMPDIR/nydus-many-bench: two
 * runs at once need two). The daemon runs under NYDUSD_NODE_ARGS when set.
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

interface Row { mount: number; stat: number; read: number; rssMount: number; rssStat: number; rssRead: number }

function measure(mnt: string, pid: number, mountSecs: number): Row {
  const rssMount = rssMb(pid);
  dropCaches();
  const stat = timeCmd(`find '${mnt}' -type f -print0 | xargs -0 stat --format=%s > /dev/null`);
  const rssStat = rssMb(pid);
  dropCaches();
  const read = timeCmd(`find '${mnt}' -type f -print0 | xargs -0 cat > /dev/null`);
  return { mount: mountSecs, stat, read, rssMount, rssStat, rssRead: rssMb(pid) };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) { console.log('SKIP many-files bench: needs root'); return; }
  const work = process.env.MANY_WORK || path.join(os.tmpdir(), 'nydus-many-bench');
  const src = path.join(work, `src-${N}`);
  makeTree(src);
  const rows: Record<string, Row> = {};

  const blobs = path.join(work, 'blobs'), cache = path.join(work, 'cache'), mnt = path.join(work, 'mnt-nydusd');
  for (const d of [blobs, cache]) { fs.rmSync(d, { recursive: true, force: true }); fs.mkdirSync(d, { recursive: true }); }
  const boot = path.join(work, 'image.boot');
  execFileSync(path.join(ROOT, 'bin/nydus-image'), ['create', '--compressor', 'zstd', '--bootstrap', boot, '--blob-dir', blobs, src], { stdio: 'ignore' });
  const cfg = path.join(work, 'config.json');
  fs.writeFileSync(cfg, JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: blobs } }, cache: { type: 'blobcache', filecache: { work_dir: cache } }, rafs: { mode: 'direct' } }));
  dropCaches();
  let t0 = process.hrtime.bigint();
  const d = await startNydusd(mnt, ['--bootstrap', boot, '--config', cfg, '--log-level', 'warn']);
  const nydusMount = Number(process.hrtime.bigint() - t0) / 1e9;
  try {
    await sleep(500);
    rows['nydusd (zstd, blobcache)'] = measure(mnt, d.proc.pid!, nydusMount);
  } finally { await d.stop(); }

  const sq = path.join(work, 'image.sqfs'), smnt = path.join(work, 'mnt-squashfuse');
  execFileSync('mksquashfs', [src, sq, '-comp', 'zstd', '-noappend', '-quiet'], { stdio: 'ignore' });
  fs.mkdirSync(smnt, { recursive: true });
  dropCaches();
  t0 = process.hrtime.bigint();
  execFileSync('squashfuse', [sq, smnt]);
  const sqMount = Number(process.hrtime.bigint() - t0) / 1e9;
  try {
    await sleep(500);
    rows['squashfuse (zstd)'] = measure(smnt, squashfusePid(smnt), sqMount);
  } finally { execFileSync('umount', [smnt]); }

  console.log(`many-files benchmark: ${N} files in ${N / PER_DIR} dirs (caches dropped before each pass), ${os.cpus().length} CPUs`);
  for (const [name, r] of Object.entries(rows)) {
    console.log(`${name.padEnd(26)} mount ${r.mount.toFixed(2)} s  stat-all ${r.stat.toFixed(2)} s  read-all ${r.read.toFixed(2)} s  RSS after mount ${r.rssMount.toFixed(0)} MB, after stat ${r.rssStat.toFixed(0)} MB, after reads ${r.rssRead.toFixed(0)} MB`);
  }
  const o = rows['nydusd (zstd, blobcache)'], s = rows['squashfuse (zstd)'];
  const verdict = (ok: boolean) => (ok ? 'MET' : 'NOT MET');
  console.log(`ratios nydusd / squashfuse (time): stat-all ${(o.stat / s.stat).toFixed(2)}x  read-all ${(o.read / s.read).toFixed(2)}x (goal <= 1.0x: ${verdict(o.read <= s.read)})`);
  console.log(`nydusd RSS: after mount ${o.rssMount.toFixed(0)} MB (goal <= 64: ${verdict(o.rssMount <= 64)}), after reads ${o.rssRead.toFixed(0)} MB (goal <= 120: ${verdict(o.rssRead <= 120)}); squashfuse ${s.rssMount.toFixed(0)} / ${s.rssRead.toFixed(0)} MB`);
}

main().catch((e) => { console.error(e); process.exitCode = 1; });
