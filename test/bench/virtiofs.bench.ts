/**
 * `npm run bench` (virtio-fs): the same guest workload against this nydusd
 * (RAFS v6 uncompressed, blobcache, `--cache-policy none` = FOPEN_DIRECT_IO)
 * and the reference C daemon /usr/lib/qemu/virtiofsd (cache=none) serving the
 * same files as a directory, default settings on both sides.
 *
 * Both daemons serve ONE guest at the same time (two vhost-user-fs devices,
 * tags `ours` and `ref`, sharing the guest's memory), and the guest alternates
 * between them measurement by measurement, so both see the same guest, the
 * same TCG vCPU, the same host load at the same moment: boot-to-boot and
 * minute-to-minute noise (other processes on a 2-core machine, TCG speed)
 * cancels in the ratio of adjacent measurements. Per boot:
 *  - warm-up: two dd of the big file through each device (fills our blob
 *    cache and lets its write-behind finish, tiers up the JIT, faults the dd
 *    buffer's guest pages into both daemons' mappings);
 *  - NYDUS_BENCH_DD_PAIRS (default 7) pairs of sequential reads of the 256 MiB
 *    file with dd bs=1M iflag=direct, the order inside a pair alternating
 *    (ours first, then ref first);
 *  - NYDUS_BENCH_FIO_PAIRS (default 2) pairs of 4 KiB random reads with fio
 *    (4 jobs, iodepth 16, direct=1, libaio, fixed seed, the same file), IOPS;
 *    fio and its libraries are copied from the host into the guest
 *    (test/support/qemu.ts hostBinaries);
 *  - 3 pairs of find+stat over 3000 files.
 * Each daemon's CPU time (all threads, /proc schedstat) over the dd pairs is
 * printed per 1 MiB READ: unlike throughput it hardly depends on the load.
 * Each pair gives a ratio; the goals use the median of all pairs' ratios over
 * NYDUS_BENCH_ROUNDS boots (default 3, fresh daemons per boot), and every
 * round's medians and pair ratios are printed.
 * NYDUS_BENCH_NYDUSD=<path> benches another nydusd build;
 * NYDUS_BENCH_BASE_NYDUSD=<path> adds a third device served by another build
 * (e.g. a copy of the base commit's build: before/after in the same guest);
 * NYDUS_BENCH_POPULATE=1 adds a device served with --populate-guest-memory;
 * NYDUS_BENCH_FIO_ENGINE=io_uring the other fio engine.
 * CPU placement: unpinned by default; NYDUS_BENCH_CPUS="qemu:daemons"
 * (taskset CPU lists, e.g. "0:1") pins QEMU and the daemons. On 2 CPUs at
 * load 8-10 the dd ratio per boot was 0.61-0.89x unpinned and mostly
 * 1.03-1.18x with "0:1" (one pinned boot 0.63x), same builds: placement
 * relative to the TCG vCPU thread moves it more than the daemon changes do.
 * Prints MB/s, IOPS, times, ratios and MET / NOT MET per goal. Needs root,
 * QEMU, a guest kernel and fio on the host (`apt-get install fio`).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from '../support/cli';
import { BENCH_BIG, BENCH_SMALL, makeReadBenchTree } from '../support/bench-tree';
import {
  bootGuest, guestScriptHelpers as H, parseGuestTimings, pinFilesInPageCache, prepareGuest, startDaemonProcess, startReferenceVirtiofsd,
  type RunningDaemon,
} from '../support/qemu';

const BIG = BENCH_BIG;
const SMALL = BENCH_SMALL;
const FIO = '/usr/bin/fio';
const FIO_ENGINE = process.env.NYDUS_BENCH_FIO_ENGINE ?? 'libaio';
const FIO_SECONDS = 5;
const int = (v: string | undefined, d: number) => Math.max(1, Number(v ?? d) || d);
const ROUNDS = int(process.env.NYDUS_BENCH_ROUNDS, 3);
const DD_PAIRS = int(process.env.NYDUS_BENCH_DD_PAIRS, 7);
const FIO_PAIRS = int(process.env.NYDUS_BENCH_FIO_PAIRS, 2);
const META_PAIRS = 3;
const NYDUSD = process.env.NYDUS_BENCH_NYDUSD ?? path.join(ROOT, 'bin/nydusd');
const BASE = process.env.NYDUS_BENCH_BASE_NYDUSD;
const POPULATE = process.env.NYDUS_BENCH_POPULATE === '1';
// "qemu:daemons" CPU lists for taskset, e.g. "0:1"; default (or 'none'): unpinned
const CPU_SPEC = process.env.NYDUS_BENCH_CPUS ?? 'none';
const CPUS = CPU_SPEC === 'none' ? undefined : CPU_SPEC.split(':');

const fioCmd = (file: string) => [
  'fio', '--name=randread', `--filename=${file}`, '--rw=randread', '--bs=4k', '--direct=1', `--ioengine=${FIO_ENGINE}`,
  '--iodepth=16', '--numjobs=4', `--runtime=${FIO_SECONDS}`, '--time_based', '--ramp_time=1', '--randrepeat=1',
  '--randseed=20261126', '--group_reporting', '--output-format=terse',
].join(' ');

/** Rotate `tags` by `i` so each device leads a pair in turn. */
const order = (tags: string[], i: number) => tags.map((_, k) => tags[(k + i) % tags.length]);

const workload = (tags: string[], withFio: boolean) => {
  const lines = [H.prelude, 'set -e'];
  for (const t of tags) lines.push(H.mountVirtiofs(t, `/m/${t}`));
  // busybox dd may lack iflag=direct; the files are FOPEN_DIRECT_IO on every device anyway
  lines.push('DDF=iflag=direct; dd if=/m/ref/big.bin of=/dev/null bs=1M count=1 iflag=direct 2>/dev/null || DDF=');
  const dd = (t: string) => `dd if=/m/${t}/big.bin of=/dev/null bs=1M $DDF`;
  // warm-up, twice each: our blob cache is filled (and written behind) during the first pass,
  // and the JIT's background compiles of the hot path land during the first few hundred requests
  for (let i = 0; i < 2; i++) for (const t of tags) lines.push(`${dd(t)} 2>/dev/null`);
  lines.push('echo "@@CPU dd-start"');
  for (let i = 0; i < DD_PAIRS; i++) for (const t of order(tags, i)) lines.push(`${H.time(`dd_${t}_${i}`, dd(t))} 2>/dev/null`);
  lines.push('echo "@@CPU dd-end"');
  if (withFio) {
    for (let i = 0; i < FIO_PAIRS; i++) {
      for (const t of order(tags, i)) lines.push(`echo "@@FIO ${t} ${i} $(${fioCmd(`/m/${t}/big.bin`)} 2>&1 | grep '^3;' | head -n 1)"`);
    }
  }
  for (let i = 0; i < META_PAIRS; i++) {
    for (const t of order(tags, i)) lines.push(H.time(`meta_${t}_${i}`, `sh -c 'find /m/${t}/small -type f | xargs stat > /dev/null'`));
  }
  return lines.join('\n') + '\n';
};

/** One device's measurements in one boot; cpu: its daemon's CPU time per 1 MiB READ of the dd runs, µs. */
interface Series { mbps: number[]; iops: number[]; meta: number[]; cpu?: number }

/** CPU time (ns, every thread) of a process and its descendants (virtiofsd forks its sandboxed worker). */
function cpuNs(pid: number): number {
  let ns = 0;
  try {
    for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
      for (const c of fs.readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').split(' ')) if (c.trim()) ns += cpuNs(Number(c));
    }
  } catch { /* exited */ }
  return ns;
}

function parse(out: string, tags: string[]): Record<string, Series> {
  const t = parseGuestTimings(out);
  const res: Record<string, Series> = {};
  for (const tag of tags) {
    const s: Series = { mbps: [], iops: [], meta: [] };
    for (let i = 0; i < DD_PAIRS; i++) s.mbps.push(BIG / 1e6 / ((t[`dd_${tag}_${i}`]?.us ?? Infinity) / 1e6));
    for (let i = 0; i < META_PAIRS; i++) s.meta.push((t[`meta_${tag}_${i}`]?.us ?? Infinity) / 1e6);
    for (let i = 0; i < FIO_PAIRS; i++) {
      // terse v3: 1 version; 2 fio version; 3 job name; 4 group; 5 error; 6 read KiB; 7 read KiB/s; 8 read IOPS
      const f = new RegExp(`^@@FIO ${tag} ${i} (3;.*)$`, 'm').exec(out)?.[1].split(';');
      s.iops.push(f && f[4] === '0' ? Number(f[7]) : NaN);
    }
    res[tag] = s;
  }
  return res;
}

const median = (xs: number[]) => {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const ratios = (a: number[], b: number[]) => a.map((x, i) => x / b[i]);
const f2 = (xs: number[]) => xs.map((x) => (Number.isFinite(x) ? x.toFixed(2) : '-')).join(' ');

async function main() {
  if (process.getuid?.() !== 0) { console.log('SKIP virtiofs bench: needs root'); return; }
  const g = await prepareGuest();
  if ('skip' in g) { console.log(`SKIP virtiofs bench: ${g.skip}`); return; }
  const withFio = fs.existsSync(FIO);
  if (!withFio) console.log(`virtiofs bench: ${FIO} missing (apt-get install fio): random-read goal not measured`);
  const work = path.join(os.tmpdir(), 'nydus-virtiofs-bench');
  const src = path.join(work, 'src');
  makeReadBenchTree(src);
  const blobs = path.join(work, 'blobs');
  fs.rmSync(work + '/blobs', { recursive: true, force: true });
  fs.mkdirSync(blobs, { recursive: true });
  const boot = path.join(work, 'image.boot');
  execFileSync(path.join(ROOT, 'bin/nydus-image'), ['create', '--compressor', 'none', '--bootstrap', boot, '--blob-dir', blobs, src], { stdio: 'ignore' });

  // each nydusd gets its own copy of the blob directory, which is also its blob cache's work dir
  const ours: { tag: string; bin: string; extra: string[] }[] = [{ tag: 'ours', bin: NYDUSD, extra: [] }];
  if (BASE) ours.push({ tag: 'base', bin: BASE, extra: [] });
  if (POPULATE) ours.push({ tag: 'pop', bin: NYDUSD, extra: ['--populate-guest-memory'] });
  const dirs: string[] = [src];
  for (const o of ours) {
    const d = path.join(work, `blobs-${o.tag}`);
    fs.rmSync(d, { recursive: true, force: true });
    fs.cpSync(blobs, d, { recursive: true });
    dirs.push(d);
  }
  const tags = ['ours', 'ref', ...ours.slice(1).map((o) => o.tag)];
  const sock = (t: string) => path.join(work, `${t}.sock`);
  const pin = (pid: number | undefined, cpus: string | undefined) => {
    if (pid !== undefined && cpus) execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' });
  };

  // QEMU inherits the bench's affinity; the daemons are moved to theirs once started
  if (CPUS) pin(process.pid, CPUS[0]);
  const rounds: Record<string, Series>[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const daemons: RunningDaemon[] = [];
    const pidOf: Record<string, number> = {};
    // each daemon's CPU time at the guest's @@CPU markers (the console streams them as they happen)
    const marks: Record<string, Record<string, number>> = {};
    let con = '';
    const onConsole = (d: string) => {
      con += d;
      for (let m = /@@CPU (\S+)\r?\n/.exec(con); m; m = /@@CPU (\S+)\r?\n/.exec(con)) {
        // the first sighting only: a streaming guest prints its whole output again at the end
        marks[m[1]] ??= Object.fromEntries(tags.map((t) => [t, cpuNs(pidOf[t])]));
        con = con.slice(m.index + m[0].length);
      }
      if (con.length > 4096) con = con.slice(-256);
    };
    let res;
    // Both daemons read from the host page cache, kept there during the boot: another bench
    // dropping the caches would otherwise turn the random reads into a disk benchmark.
    const unpin = pinFilesInPageCache(dirs);
    try {
      for (const [i, o] of ours.entries()) {
        daemons.push(await startDaemonProcess(o.bin, ['virtiofs', '--sock', sock(o.tag), '--bootstrap', boot, '--localfs-dir', dirs[i + 1],
          '--cache-policy', 'none', '--log-level', 'warn', ...o.extra], sock(o.tag), 20_000));
        pidOf[o.tag] = daemons[daemons.length - 1].proc.pid!;
      }
      daemons.push(await startReferenceVirtiofsd(src, sock('ref'), { cache: 'none' }));
      pidOf.ref = daemons[daemons.length - 1].proc.pid!;
      for (const d of daemons) pin(d.proc.pid, CPUS?.[1]);
      const devs = tags.slice(1).flatMap((t, i) => [
        '-chardev', `socket,id=char${i + 1},path=${sock(t)}`, '-device', `vhost-user-fs-pci,chardev=char${i + 1},tag=${t},queue-size=1024`,
      ]);
      res = await bootGuest({
        socket: sock('ours'), tag: 'ours', script: workload(tags, withFio), timeoutMs: 600_000, memMiB: 1024,
        hostBinaries: withFio ? [FIO] : undefined, qemuArgs: devs, stream: true, onConsole,
      });
    } finally {
      unpin();
      for (const d of daemons) await d.stop();
    }
    if (!res.exitOk) throw new Error(`guest failed: ${res.console.slice(-3000)}`);
    const p = parse(res.output, tags);
    if (marks['dd-start'] && marks['dd-end']) for (const t of tags) p[t].cpu = (marks['dd-end'][t] - marks['dd-start'][t]) / 1e3 / (DD_PAIRS * (BIG >> 20));
    for (const t of tags) {
      if (p[t].mbps.some((x) => !Number.isFinite(x)) || p[t].meta.some((x) => !Number.isFinite(x))) throw new Error(`missing timings for ${t}: ${res.output.slice(-2000)}`);
      if (withFio && p[t].iops.some((x) => !Number.isFinite(x))) throw new Error(`fio failed in the guest on ${t}: ${res.output.slice(-2000)}`);
    }
    rounds.push(p);
  }

  type Col = 'mbps' | 'iops' | 'meta';
  const all = (t: string, k: Col) => rounds.flatMap((p) => p[t][k]);
  const pairRatios = (t: string, k: Col) => rounds.flatMap((p) => ratios(p[t][k], p.ref[k]));
  const fmt = (t: string, p?: Record<string, Series>) => {
    const s = p ? p[t] : { mbps: all(t, 'mbps'), iops: all(t, 'iops'), meta: all(t, 'meta') };
    const iops = median(s.iops);
    const cpu = p ? p[t].cpu : median(rounds.map((x) => x[t].cpu ?? NaN));
    return `read ${median(s.mbps).toFixed(0).padStart(5)} MB/s (${cpu !== undefined && Number.isFinite(cpu) ? cpu.toFixed(0).padStart(3) : '  -'} us CPU/MiB)  randread ${Number.isFinite(iops) ? iops.toFixed(0).padStart(6) : '     -'} IOPS  find+stat ${median(s.meta).toFixed(2)} s`;
  };
  const names: Record<string, string> = {
    ours: 'nydusd (RAFS v6 none, blobcache, cache-policy none)', ref: 'virtiofsd (cache=none, directory)',
    base: `nydusd base build (${BASE})`, pop: 'nydusd + --populate-guest-memory',
  };
  console.log(`virtio-fs benchmark (QEMU TCG guest, 1 vCPU; ${ROUNDS} boots, each serving every daemon side by side and alternating between them: `
    + `${DD_PAIRS} x dd bs=1M of ${BIG >> 20} MiB, ${withFio ? `${FIO_PAIRS} x fio 4k randread 4 jobs x iodepth 16 direct ${FIO_ENGINE} ${FIO_SECONDS} s, ` : ''}`
    + `${META_PAIRS} x find+stat of ${SMALL} files per daemon per boot; medians of all measurements; CPUs ${CPUS ? CPUS.join(' / ') : 'unpinned'}; load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')})`);
  for (const t of tags) console.log(`${names[t].padEnd(53)}${fmt(t)}`);
  for (const [i, p] of rounds.entries()) {
    console.log(`  boot ${i + 1}: ${tags.map((t) => `${t} ${fmt(t, p)}`).join(' | ')}`);
    for (const t of tags.filter((x) => x !== 'ref')) {
      console.log(`    ${t}/ref per pair: dd ${f2(ratios(p[t].mbps, p.ref.mbps))}; IOPS ${f2(ratios(p[t].iops, p.ref.iops))}; find+stat time ${f2(ratios(p[t].meta, p.ref.meta))}`);
    }
  }
  if (BASE) {
    const br = (k: Col) => median(rounds.flatMap((p) => ratios(p.ours[k], p.base[k])));
    console.log(`this build / base build (median of pair ratios): throughput ${br('mbps').toFixed(2)}x, IOPS ${br('iops').toFixed(2)}x, find+stat time ${br('meta').toFixed(2)}x; `
      + `base / virtiofsd: throughput ${median(pairRatios('base', 'mbps')).toFixed(2)}x, IOPS ${median(pairRatios('base', 'iops')).toFixed(2)}x`);
  }
  const goal = (what: string, rs: number[], op: '>=' | '<=', want: number) => {
    const ratio = median(rs);
    const perRound = rounds.map((_, i) => median(rs.slice((i * rs.length) / rounds.length, ((i + 1) * rs.length) / rounds.length)));
    const met = op === '>=' ? ratio >= want : ratio <= want;
    console.log(`  ${what.padEnd(40)} ${Number.isFinite(ratio) ? ratio.toFixed(2) : '  -'}x (per boot ${f2(perRound)}; goal ${op} ${want.toFixed(1)}x) ${Number.isFinite(ratio) ? (met ? 'MET' : 'NOT MET') : 'NOT MEASURED'}`);
  };
  // the fastest run of each daemon is the one least disturbed by other load: a second view of the same data
  const best = (t: string, k: 'mbps' | 'iops') => Math.max(...all(t, k).filter((x) => !Number.isNaN(x)));
  console.log(`best runs: nydusd ${best('ours', 'mbps').toFixed(0)} MB/s ${best('ours', 'iops').toFixed(0)} IOPS, virtiofsd ${best('ref', 'mbps').toFixed(0)} MB/s ${best('ref', 'iops').toFixed(0)} IOPS: `
    + `${(best('ours', 'mbps') / best('ref', 'mbps')).toFixed(2)}x, ${(best('ours', 'iops') / best('ref', 'iops')).toFixed(2)}x${BASE ? `; base ${best('base', 'mbps').toFixed(0)} MB/s ${best('base', 'iops').toFixed(0)} IOPS` : ''}`);
  console.log('ratios (nydusd / virtiofsd, median of the ratios of adjacent measurements):');
  goal('sequential read throughput', pairRatios('ours', 'mbps'), '>=', 1.0);
  goal('4k random read IOPS', pairRatios('ours', 'iops'), '>=', 1.0);
  goal('find+stat time', pairRatios('ours', 'meta'), '<=', 1.0);
}

main().catch((e) => { console.error(e); process.exitCode = 1; });
