/**
 * `npm run bench` (builder): build the same 256 MiB + 3000-file tree with
 * this nydus-image and with the reference tools in one run and print the
 * ratios. Goals: uncompressed v6 build ≤ 2× mkfs.erofs (chunked, --blobdev);
 * zstd build no slower than mksquashfs -comp zstd.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from '../support/cli';

const TOTAL = 256 << 20;
const SMALL = 3000;
const base = path.join(os.tmpdir(), 'nydus-bench-src');

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

function time(cmd: string, args: string[], runs = 2): number {
  let best = Infinity;
  for (let r = 0; r < runs; r++) {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-bench-out-'));
    const a = args.map((x) => x.replace('$OUT', out));
    spawnSync('sync');
    const t0 = process.hrtime.bigint();
    const res = spawnSync(cmd, a, { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    fs.rmSync(out, { recursive: true, force: true });
    if (res.status !== 0) throw new Error(`${cmd} ${a.join(' ')} failed: ${res.stderr}`);
    best = Math.min(best, dt);
  }
  return best;
}

function main() {
  const src = makeTree();
  spawnSync('tar', ['-cf', '/dev/null', src]); // warm the page cache so every tool reads the same way
  const ni = path.join(ROOT, 'bin/nydus-image');
  const rows: Array<[string, number, string, number]> = [];
  const ours6 = time(ni, ['create', '--fs-version', '6', '--compressor', 'none', '--bootstrap', '$OUT/boot', '--blob-dir', '$OUT', src]);
  const mkfs = time('mkfs.erofs', ['--chunksize=1048576', '--blobdev=$OUT/blob', '$OUT/boot', src]);
  rows.push(['nydus-image v6 none', ours6, 'mkfs.erofs --chunksize 1M --blobdev', mkfs]);
  const ours5 = time(ni, ['create', '--fs-version', '5', '--compressor', 'none', '--bootstrap', '$OUT/boot', '--blob-dir', '$OUT', src]);
  rows.push(['nydus-image v5 none', ours5, 'mkfs.erofs --chunksize 1M --blobdev', mkfs]);
  const oursZ = time(ni, ['create', '--fs-version', '6', '--compressor', 'zstd', '--bootstrap', '$OUT/boot', '--blob-dir', '$OUT', src]);
  const sq = time('mksquashfs', [src, '$OUT/img.sqfs', '-comp', 'zstd', '-noappend', '-quiet']);
  rows.push(['nydus-image v6 zstd', oursZ, 'mksquashfs -comp zstd', sq]);
  // nydus compresses chunks at zstd level 3; mksquashfs defaults to 15, so also compare at 3
  const sq3 = time('mksquashfs', [src, '$OUT/img.sqfs', '-comp', 'zstd', '-Xcompression-level', '3', '-noappend', '-quiet']);
  rows.push(['nydus-image v6 zstd', oursZ, 'mksquashfs -comp zstd -Xcompression-level 3', sq3]);
  console.log(`builder benchmark: ${TOTAL >> 20} MiB + ${SMALL} files, best of 2, ${os.cpus().length} cores`);
  for (const [a, ta, b, tb] of rows) {
    console.log(`${a.padEnd(22)} ${ta.toFixed(2).padStart(6)} s | ${b.padEnd(44)} ${tb.toFixed(2).padStart(6)} s | ratio ${(ta / tb).toFixed(2)}x`);
  }
}

main();
