/**
 * `npm run bench` (builder): build the same trees with this nydus-image and
 * with the reference tools in one run and print each goal's ratio.
 *
 * Goals (issue 11):
 * - zstd build ≤ 1.5x the time of `mksquashfs -comp zstd -Xcompression-level 3`
 *   (nydus compresses chunks at zstd level 3) on the 256 MiB + 3000-file tree;
 * - uncompressed RAFS v6 build ≤ 1.0x `mkfs.erofs --chunksize 1M --blobdev` on that tree;
 * - a 100,000-file tree (100 dirs x 1,000 small files): build time and peak RSS
 *   measured, next to mksquashfs and mkfs.erofs on the same tree.
 *
 * Every tool reads a tree that is in the page cache (each run reads it all
 * first: another benchmark on the machine may drop caches) and is timed as
 * the best of RUNS runs; ratios compare runs of the same invocation of this
 * script, so a busy machine slows both sides; each row also shows the CPU
 * time (all threads) of the timed run. `NYDUS_BENCH_RUNS` sets RUNS;
 * `NYDUS_BENCH_BASE` names another bin/nydus-image to time on the big tree too.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from '../support/cli';

const TOTAL = 256 << 20;
const SMALL = 3000;
const MANY_DIRS = 100;
const MANY_PER_DIR = 1000;
const RUNS = Math.max(1, parseInt(process.env.NYDUS_BENCH_RUNS ?? '3', 10) || 3);
const base = path.join(os.tmpdir(), 'nydus-bench-src');
const manyBase = path.join(os.tmpdir(), 'nydus-bench-100k');

function makeTree(): string {
  const stamp = path.join(base, '.complete-v2');
  if (fs.existsSync(stamp)) return base;
  fs.rmSync(base, { recursive: true, force: true });
  fs.mkdirSync(base, { recursive: true });
  // large files: half incompressible, half text-like, so compression has work to do
  const mb = Buffer.alloc(1 << 20);
  const text = Buffer.from(Array.from({ length: 20000 }, (_, i) => `line ${i} of some moderately repetitive log text\n`).join('')).subarray(0, 1 << 20);
  let seed = 1;
  const bigBytes = TOTAL - SMALL * 4096;
  for (let f = 0; f < 4; f++) {
    const fd = fs.openSync(path.join(base, `big-${f}.bin`), 'w');
    for (let off = 0; off < bigBytes / 4; off += 1 << 20) {
      if ((off >> 20) % 2 === 0) {
        for (let i = 0; i < mb.length; i += 4) { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; mb.writeUInt32LE(seed, i); }
        fs.writeSync(fd, mb);
      } else fs.writeSync(fd, text);
    }
    fs.closeSync(fd);
  }
  for (let i = 0; i < SMALL; i++) {
    const d = path.join(base, 'small', `d${i % 30}`);
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, `f${i}.txt`), text.subarray(i % 1000, (i % 1000) + 4096));
  }
  fs.writeFileSync(stamp, '');
  return base;
}

/** 100 directories of 1,000 files of 13 bytes to 1 KiB (the shape of the FUSE bench's many-file tree). */
function makeManyTree(): string {
  const stamp = path.join(manyBase, '.complete');
  if (fs.existsSync(stamp)) return manyBase;
  fs.rmSync(manyBase, { recursive: true, force: true });
  for (let d = 0; d < MANY_DIRS; d++) {
    const dir = path.join(manyBase, `d${d}`);
    fs.mkdirSync(dir, { recursive: true });
    for (let f = 0; f < MANY_PER_DIR; f++) {
      const i = d * MANY_PER_DIR + f;
      fs.writeFileSync(path.join(dir, `f${f}`), `small file ${i}\n`.repeat((i % 50) + 1));
    }
  }
  fs.writeFileSync(stamp, '');
  return manyBase;
}

/** Read every file of `dir` so the next tool finds it in the page cache (`tar -cf /dev/null` would not: GNU tar skips the reads). */
function warm(dir: string): void {
  spawnSync('sh', ['-c', 'find "$1" -type f -print0 | xargs -0 cat > /dev/null', 'sh', dir]);
}

interface Timing { secs: number; rssKiB: number; cpuSecs: number }

/**
 * Best wall time of RUNS runs (each after warming `src`), with the peak RSS
 * and the CPU time (user + system, all threads) of that run (GNU time); the
 * CPU time is what a busy machine shares out, the wall time what a free one gives.
 */
function time(src: string, cmd: string, args: string[], env?: NodeJS.ProcessEnv): Timing {
  let best: Timing = { secs: Infinity, rssKiB: 0, cpuSecs: 0 };
  for (let r = 0; r < RUNS; r++) {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-bench-out-'));
    const a = args.map((x) => x.replace('$OUT', out));
    warm(src);
    const rssFile = path.join(out, '.rss');
    const t0 = process.hrtime.bigint();
    const res = spawnSync('/usr/bin/time', ['-f', '%M %U %S', '-o', rssFile, cmd, ...a], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', env });
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const [rss, user, sys] = res.status === 0 ? (fs.readFileSync(rssFile, 'utf8').trim().split('\n').pop() ?? '').split(' ').map(Number) : [0, 0, 0];
    fs.rmSync(out, { recursive: true, force: true });
    if (res.status !== 0) throw new Error(`${cmd} ${a.join(' ')} failed: ${res.stderr}`);
    if (secs < best.secs) best = { secs, rssKiB: rss, cpuSecs: user + sys };
  }
  return best;
}

function main() {
  const src = makeTree();
  const many = makeManyTree();
  const ni = path.join(ROOT, 'bin/nydus-image');
  const nydus = (s: string, ...flags: string[]) => time(s, ni, ['create', ...flags, '--bootstrap', '$OUT/boot', '--blob-dir', '$OUT', s]);
  // NYDUS_BENCH_BASE=<another bin/nydus-image> (e.g. a checkout of an older commit): its builds of the big tree too, for before/after in one run
  const baseBin = process.env.NYDUS_BENCH_BASE;
  const base = (s: string, ...flags: string[]) => (baseBin ? time(s, baseBin, ['create', ...flags, '--bootstrap', '$OUT/boot', '--blob-dir', '$OUT', s]) : undefined);
  const mkfs = (s: string) => time(s, 'mkfs.erofs', ['--chunksize=1048576', '--blobdev=$OUT/blob', '$OUT/boot', s]);
  const sq3 = (s: string) => time(s, 'mksquashfs', [s, '$OUT/img.sqfs', '-comp', 'zstd', '-Xcompression-level', '3', '-noappend', '-quiet']);

  const rows: Array<[string, Timing, string, Timing]> = [];
  const goals: Array<[string, number, number]> = [];
  // interleaved so that load from elsewhere on the machine hits both sides alike
  const oursZ = nydus(src, '--fs-version', '6', '--compressor', 'zstd');
  const sqZ = sq3(src);
  rows.push(['nydus-image v6 zstd', oursZ, 'mksquashfs -comp zstd -Xcompression-level 3', sqZ]);
  goals.push(['zstd build vs mksquashfs level 3', oursZ.secs / sqZ.secs, 1.5]);
  // NODE_EXTRA_CA_CERTS (set where TLS is intercepted) makes every Node start parse that CA bundle
  // before any JS runs (~40 ms for the Debian bundle here); the builder makes no TLS connection
  if (process.env.NODE_EXTRA_CA_CERTS) {
    const env = { ...process.env };
    delete env.NODE_EXTRA_CA_CERTS;
    const clean = time(src, ni, ['create', '--fs-version', '6', '--compressor', 'zstd', '--bootstrap', '$OUT/boot', '--blob-dir', '$OUT', src], env);
    rows.push(['(no NODE_EXTRA_CA_CERTS) zstd', clean, 'mksquashfs -comp zstd -Xcompression-level 3', sqZ]);
  }
  // where the ratio comes from: the same build of the tree's 3,000 small files alone (start-up and
  // per-file work: Node's start, the module loads, the walk, the layout), and what the 256 MiB of big
  // files add on top of that (the per-MiB work: reads, digests, compression, the blob's sha256, writes)
  const smallDir = path.join(src, 'small');
  const fixedZ = nydus(smallDir, '--fs-version', '6', '--compressor', 'zstd');
  const fixedSq = sq3(smallDir);
  rows.push(['  of which 3000 small files', fixedZ, 'mksquashfs, the same files', fixedSq]);
  const baseZ = base(src, '--fs-version', '6', '--compressor', 'zstd');
  if (baseZ) rows.push(['(base) nydus-image v6 zstd', baseZ, 'mksquashfs -comp zstd -Xcompression-level 3', sqZ]);
  const ours6 = nydus(src, '--fs-version', '6', '--compressor', 'none');
  const erofs = mkfs(src);
  rows.push(['nydus-image v6 none', ours6, 'mkfs.erofs --chunksize 1M --blobdev', erofs]);
  goals.push(['uncompressed v6 build vs mkfs.erofs', ours6.secs / erofs.secs, 1.0]);
  const base6 = base(src, '--fs-version', '6', '--compressor', 'none');
  if (base6) rows.push(['(base) nydus-image v6 none', base6, 'mkfs.erofs --chunksize 1M --blobdev', erofs]);
  const ours5 = nydus(src, '--fs-version', '5', '--compressor', 'none');
  rows.push(['nydus-image v5 none', ours5, 'mkfs.erofs --chunksize 1M --blobdev', erofs]);
  const oursB = nydus(src, '--fs-version', '6', '--compressor', 'zstd', '--batch-size', '0x10000');
  rows.push(['nydus-image v6 zstd batch 64K', oursB, 'mksquashfs -comp zstd -Xcompression-level 3', sqZ]);
  const manyZ = nydus(many, '--fs-version', '6', '--compressor', 'zstd');
  const manySq = sq3(many);
  rows.push(['100k files v6 zstd', manyZ, 'mksquashfs -comp zstd -Xcompression-level 3', manySq]);
  const manyN = nydus(many, '--fs-version', '6', '--compressor', 'none');
  const manyErofs = mkfs(many);
  rows.push(['100k files v6 none', manyN, 'mkfs.erofs --chunksize 1M --blobdev', manyErofs]);

  console.log(`builder benchmark: ${TOTAL >> 20} MiB + ${SMALL} files, and ${MANY_DIRS * MANY_PER_DIR} small files; best of ${RUNS}, ${os.cpus().length} cores, load average ${os.loadavg()[0].toFixed(1)} at the end`);
  for (const [a, ta, b, tb] of rows) {
    const col = (t: Timing) => `${t.secs.toFixed(2).padStart(6)} s (cpu ${t.cpuSecs.toFixed(2).padStart(5)} s) ${(t.rssKiB >> 10).toString().padStart(5)} MiB`;
    console.log(`${a.padEnd(30)} ${col(ta)} | ${b.padEnd(44)} ${col(tb)} | ratio ${(ta.secs / tb.secs).toFixed(2)}x (cpu ${(ta.cpuSecs / tb.cpuSecs).toFixed(2)}x)`);
  }
  console.log('goals:');
  for (const [what, ratio, goal] of goals) {
    console.log(`  ${what.padEnd(40)} ${ratio.toFixed(2)}x (goal <= ${goal.toFixed(1)}x) ${ratio <= goal ? 'MET' : 'NOT MET'}`);
  }
  const per = (a: Timing, b: Timing) => Math.max(0, a.secs - b.secs);
  console.log(`  (the zstd build: the 3000 small files alone ${fixedZ.secs.toFixed(2)} s against ${fixedSq.secs.toFixed(2)} s = ${(fixedZ.secs / fixedSq.secs).toFixed(2)}x; ` +
    `the ${(TOTAL - SMALL * 4096) >> 20} MiB of big files add ${per(oursZ, fixedZ).toFixed(2)} s against ${per(sqZ, fixedSq).toFixed(2)} s = ${(per(oursZ, fixedZ) / Math.max(per(sqZ, fixedSq), 1e-3)).toFixed(2)}x)`);
  console.log(`  100,000-file tree (measured): v6 zstd ${manyZ.secs.toFixed(2)} s, peak RSS ${manyZ.rssKiB >> 10} MiB; v6 none ${manyN.secs.toFixed(2)} s, peak RSS ${manyN.rssKiB >> 10} MiB`);
}

main();
