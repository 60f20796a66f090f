/**
 * `npm run bench` (virtio-fs): the same guest workload against this nydusd
 * (RAFS v6 uncompressed, blobcache, `--cache-policy none` = FOPEN_DIRECT_IO)
 * and the reference C daemon /usr/lib/qemu/virtiofsd (cache=none) serving the
 * same files as a directory, default settings on both sides:
 *  - sequential read of a 256 MiB file with dd bs=1M (best of 3 per boot; the
 *    first run also fills our blobcache);
 *  - 4 KiB random reads with fio (4 jobs, iodepth 16, direct=1, libaio, fixed
 *    seed, the same 256 MiB file), IOPS; fio and its libraries are copied from
 *    the host into the guest (test/support/qemu.ts hostBinaries);
 *  - find+stat of 3000 files (best of 3 per boot).
 * Rounds alternate ours / reference (NYDUS_BENCH_ROUNDS, default 3) and the
 * medians are compared. NYDUS_BENCH_NYDUSD=<path> benches another nydusd build;
 * NYDUS_BENCH_BASE_NYDUSD=<path> adds a third daemon per round (e.g. a copy of
 * the base commit's build) to show before/after in the same run; NYDUS_BENCH_FIO_ENGINE=io_uring the other
 * engine, NYDUS_BENCH_POPULATE=1 adds a run with --populate-guest-memory.
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
} from '../support/qemu';

const BIG = BENCH_BIG;
const SMALL = BENCH_SMALL;
const FIO = '/usr/bin/fio';
const FIO_ENGINE = process.env.NYDUS_BENCH_FIO_ENGINE ?? 'libaio';
const FIO_SECONDS = 8;
const ROUNDS = Math.max(1, Number(process.env.NYDUS_BENCH_ROUNDS ?? 3) || 3);
const NYDUSD = process.env.NYDUS_BENCH_NYDUSD ?? path.join(ROOT, 'bin/nydusd');

const fioCmd = (file: string) => [
  'fio', '--name=randread', `--filename=${file}`, '--rw=randread', '--bs=4k', '--direct=1', `--ioengine=${FIO_ENGINE}`,
  '--iodepth=16', '--numjobs=4', `--runtime=${FIO_SECONDS}`, '--time_based', '--ramp_time=1', '--randrepeat=1',
  '--randseed=20261126', '--group_reporting', '--output-format=terse',
].join(' ');

const workload = (dir: string, withFio: boolean) => `${H.prelude}
set -e
${H.mountVirtiofs('benchfs', '/mnt')}
for i in 1 2 3; do ${H.time('dd$i', `dd if=/mnt/${dir}big.bin of=/dev/null bs=1M`)} 2>/dev/null; done
${withFio ? `echo "@@FIO $(${fioCmd(`/mnt/${dir}big.bin`)} 2>&1 | grep '^3;' | head -n 1)"` : ''}
for i in 1 2 3; do ${H.time('meta$i', `sh -c 'find /mnt/${dir}small -type f | xargs stat > /dev/null'`)}; done
`;

interface Result { mbps: number; meta: number; iops: number }

function summarize(out: string): Result {
  const t = parseGuestTimings(out);
  const dd = Math.min(...[1, 2, 3].map((i) => t[`dd${i}`]?.us ?? Infinity));
  const meta = Math.min(...[1, 2, 3].map((i) => t[`meta${i}`]?.us ?? Infinity));
  // terse v3: 1 version; 2 fio version; 3 job name; 4 group; 5 error; 6 read KiB; 7 read KiB/s; 8 read IOPS
  const f = /^@@FIO (3;.*)$/m.exec(out)?.[1].split(';');
  const iops = f && f[4] === '0' ? Number(f[7]) : NaN;
  return { mbps: (BIG / 1e6) / (dd / 1e6), meta: meta / 1e6, iops };
}

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
const med = (rs: Result[]): Result => ({ mbps: median(rs.map((r) => r.mbps)), meta: median(rs.map((r) => r.meta)), iops: median(rs.map((r) => r.iops)) });

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
  fs.rmSync(blobs, { recursive: true, force: true });
  fs.mkdirSync(blobs, { recursive: true });
  const boot = path.join(work, 'image.boot');
  execFileSync(path.join(ROOT, 'bin/nydus-image'), ['create', '--compressor', 'none', '--bootstrap', boot, '--blob-dir', blobs, src], { stdio: 'ignore' });

  const guest = async (sock: string, who: string): Promise<Result> => {
    // Both daemons read from the host page cache, kept there during the boot: another bench
    // dropping the caches would otherwise turn the random reads into a disk benchmark.
    const unpin = pinFilesInPageCache([src, blobs]);
    let res;
    try {
      res = await bootGuest({
        socket: sock, tag: 'benchfs', script: workload('', withFio), timeoutMs: 300_000, memMiB: 1024,
        hostBinaries: withFio ? [FIO] : undefined,
      });
    } finally { unpin(); }
    if (!res.exitOk) throw new Error(`guest failed with ${who}: ${res.console.slice(-2000)}`);
    const r = summarize(res.output);
    if (withFio && !Number.isFinite(r.iops)) throw new Error(`fio failed in the guest with ${who}: ${res.output.slice(-2000)}`);
    return r;
  };
  const runOurs = async (extra: string[], bin = NYDUSD): Promise<Result> => {
    const sock = path.join(work, 'ours.sock');
    const d = await startDaemonProcess(bin, ['virtiofs', '--sock', sock, '--bootstrap', boot, '--localfs-dir', blobs, '--cache-policy', 'none', '--log-level', 'warn', ...extra], sock, 20_000);
    try { return await guest(sock, 'nydusd'); } finally { await d.stop(); }
  };
  const runRef = async (): Promise<Result> => {
    const sock = path.join(work, 'ref.sock');
    const d = await startReferenceVirtiofsd(src, sock, { cache: 'none' });
    try { return await guest(sock, 'virtiofsd'); } finally { await d.stop(); }
  };

  const ours: Result[] = [], refs: Result[] = [], pop: Result[] = [], base: Result[] = [];
  const BASE = process.env.NYDUS_BENCH_BASE_NYDUSD;
  for (let i = 0; i < ROUNDS; i++) {
    if (BASE) base.push(await runOurs([], BASE));
    ours.push(await runOurs([]));
    refs.push(await runRef());
    if (process.env.NYDUS_BENCH_POPULATE === '1') pop.push(await runOurs(['--populate-guest-memory']));
  }
  const o = med(ours), r = med(refs);
  const fmt = (x: Result) => `read ${x.mbps.toFixed(0).padStart(5)} MB/s  randread ${Number.isFinite(x.iops) ? x.iops.toFixed(0).padStart(6) : '     -'} IOPS  find+stat ${x.meta.toFixed(2)} s`;
  console.log(`virtio-fs benchmark (QEMU 7.2 TCG guest, 1 vCPU; medians of ${ROUNDS} alternating boots; dd bs=1M of ${BIG >> 20} MiB best of 3 per boot; fio 4k randread 4 jobs x iodepth 16 direct ${FIO_ENGINE} ${FIO_SECONDS} s; find+stat of ${SMALL} files best of 3 per boot; load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')})`);
  console.log(`nydusd (RAFS v6 none, blobcache, cache-policy none)  ${fmt(o)}`);
  if (base.length) console.log(`nydusd base build (${BASE})`.padEnd(53) + fmt(med(base)));
  if (pop.length) console.log(`nydusd + --populate-guest-memory                     ${fmt(med(pop))}`);
  console.log(`virtiofsd (cache=none, directory)                    ${fmt(r)}`);
  for (const [i, x] of ours.entries()) console.log(`  round ${i + 1}: nydusd ${fmt(x)} | virtiofsd ${fmt(refs[i])}${base.length ? ` | base ${fmt(base[i])}` : ''}`);
  if (base.length) {
    const b = med(base);
    console.log(`this build / base build: throughput ${(o.mbps / b.mbps).toFixed(2)}x, IOPS ${(o.iops / b.iops).toFixed(2)}x, find+stat time ${(o.meta / b.meta).toFixed(2)}x; base / virtiofsd: throughput ${(b.mbps / r.mbps).toFixed(2)}x, IOPS ${(b.iops / r.iops).toFixed(2)}x`);
  }
  const goal = (what: string, ratio: number, op: '>=' | '<=', want: number) => {
    const met = op === '>=' ? ratio >= want : ratio <= want;
    console.log(`  ${what.padEnd(40)} ${Number.isFinite(ratio) ? ratio.toFixed(2) : '  -'}x (goal ${op} ${want.toFixed(1)}x) ${Number.isFinite(ratio) ? (met ? 'MET' : 'NOT MET') : 'NOT MEASURED'}`);
  };
  console.log('ratios (nydusd / virtiofsd):');
  goal('sequential read throughput', o.mbps / r.mbps, '>=', 1.0);
  goal('4k random read IOPS', o.iops / r.iops, '>=', 1.0);
  goal('find+stat time', o.meta / r.meta, '<=', 1.0);
}

main().catch((e) => { console.error(e); process.exitCode = 1; });
