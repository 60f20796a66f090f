/** The read benchmarks' source tree: one 256 MiB file (half random, half text) and 3000 small files. */
import * as fs from 'node:fs';
import * as path from 'node:path';

export const BENCH_BIG = 256 << 20;
export const BENCH_SMALL = 3000;

/** Create the tree under `base` once (a `.complete` marker makes later runs reuse it). */
export function makeReadBenchTree(base: string): void {
  if (fs.existsSync(path.join(base, '.complete'))) return;
  fs.rmSync(base, { recursive: true, force: true });
  fs.mkdirSync(path.join(base, 'small'), { recursive: true });
  const fd = fs.openSync(path.join(base, 'big.bin'), 'w');
  const mb = Buffer.alloc(1 << 20);
  let seed = 7;
  for (let off = 0; off < BENCH_BIG; off += mb.length) {
    if ((off >> 20) % 2 === 0) for (let i = 0; i < mb.length; i += 4) { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; mb.writeUInt32LE(seed, i); }
    else mb.write(`block ${off} `.repeat(1 << 16).slice(0, mb.length));
    fs.writeSync(fd, mb);
  }
  fs.closeSync(fd);
  for (let i = 0; i < BENCH_SMALL; i++) {
    const d = path.join(base, 'small', `d${i % 50}`);
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, `f${i}`), `small file ${i}\n`.repeat(i % 20 + 1));
  }
  fs.writeFileSync(path.join(base, '.complete'), '');
}
