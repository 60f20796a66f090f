/**
 * `npm run bench` (virtio-fs): the same guest workload against this nydusd
 * (RAFS v6 uncompressed, blobcache, `--cache-policy none` = FOPEN_DIRECT_IO)
 * and the reference C daemon /usr/lib/qemu/virtiofsd (cache=none) serving the
 * same files as a directory: sequential read of a 256 MiB file with dd bs=1M
 * (best of 3; the first run also fills our blobcache) and find+stat of 3000
 * files. Prints MB/s, times and ratios. Needs root, QEMU and a guest kernel.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from '../support/cli';
import { BENCH_BIG, BENCH_SMALL, makeReadBenchTree } from '../support/bench-tree';
import {
  bootGuest, guestScriptHelpers as H, parseGuestTimings, prepareGuest, startDaemonProcess, startReferenceVirtiofsd,
} from '../support/qemu';

const BIG = BENCH_BIG;
const SMALL = BENCH_SMALL;

const workload = (dir: string) => `${H.prelude}
set -e
${H.mountVirtiofs('benchfs', '/mnt')}
for i in 1 2 3; do ${H.time('dd$i', `dd if=/mnt/${dir}big.bin of=/dev/null bs=1M`)} 2>/dev/null; done
for i in 1 2 3; do ${H.time('meta$i', `sh -c 'find /mnt/${dir}small -type f | xargs stat > /dev/null'`)}; done
`;

function summarize(out: string): { mbps: number; meta: number } {
  const t = parseGuestTimings(out);
  const dd = Math.min(...[1, 2, 3].map((i) => t[`dd${i}`]?.us ?? Infinity));
  const meta = Math.min(...[1, 2, 3].map((i) => t[`meta${i}`]?.us ?? Infinity));
  return { mbps: (BIG / 1e6) / (dd / 1e6), meta: meta / 1e6 };
}

async function main() {
  if (process.getuid?.() !== 0) { console.log('SKIP virtiofs bench: needs root'); return; }
  const g = await prepareGuest();
  if ('skip' in g) { console.log(`SKIP virtiofs bench: ${g.skip}`); return; }
  const work = path.join(os.tmpdir(), 'nydus-virtiofs-bench');
  const src = path.join(work, 'src');
  makeReadBenchTree(src);
  const blobs = path.join(work, 'blobs');
  fs.rmSync(blobs, { recursive: true, force: true });
  fs.mkdirSync(blobs, { recursive: true });
  const boot = path.join(work, 'image.boot');
  execFileSync(path.join(ROOT, 'bin/nydus-image'), ['create', '--compressor', 'none', '--bootstrap', boot, '--blob-dir', blobs, src], { stdio: 'ignore' });

  const runOurs = async (extra: string[]) => {
    const sock = path.join(work, 'ours.sock');
    const ours = await startDaemonProcess(path.join(ROOT, 'bin/nydusd'), ['virtiofs', '--sock', sock, '--bootstrap', boot, '--localfs-dir', blobs, '--cache-policy', 'none', '--log-level', 'warn', ...extra], sock, 20_000);
    let res;
    try { res = await bootGuest({ socket: sock, tag: 'benchfs', script: workload(''), timeoutMs: 300_000, memMiB: 1024 }); } finally { await ours.stop(); }
    if (!res.exitOk) throw new Error(`guest failed with nydusd: ${res.console.slice(-2000)}`);
    return res;
  };
  const a = await runOurs([]);
  const ap = await runOurs(['--populate-guest-memory']);

  const rsock = path.join(work, 'ref.sock');
  const ref = await startReferenceVirtiofsd(src, rsock, { cache: 'none' });
  let b;
  try { b = await bootGuest({ socket: rsock, tag: 'benchfs', script: workload(''), timeoutMs: 300_000, memMiB: 1024 }); } finally { await ref.stop(); }
  if (!b.exitOk) throw new Error(`guest failed with virtiofsd: ${b.console.slice(-2000)}`);

  const o = summarize(a.output), op = summarize(ap.output), r = summarize(b.output);
  console.log(`virtio-fs benchmark (QEMU 7.2 TCG guest, dd bs=1M of ${BIG >> 20} MiB best of 3, find+stat of ${SMALL} files best of 3)`);
  console.log(`nydusd (RAFS v6 none, blobcache, cache-policy none)  read ${o.mbps.toFixed(0)} MB/s  find+stat ${o.meta.toFixed(2)} s`);
  console.log(`nydusd + --populate-guest-memory                     read ${op.mbps.toFixed(0)} MB/s  find+stat ${op.meta.toFixed(2)} s`);
  console.log(`virtiofsd (cache=none, directory)                    read ${r.mbps.toFixed(0)} MB/s  find+stat ${r.meta.toFixed(2)} s`);
  console.log(`ratios: throughput ${(o.mbps / r.mbps).toFixed(2)}x (populated ${(op.mbps / r.mbps).toFixed(2)}x) of the reference (goal >= 0.9), metadata time ${(o.meta / r.meta).toFixed(2)}x (goal <= 1.2)`);
}

main().catch((e) => { console.error(e); process.exitCode = 1; });
