import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

/** new_space bytes after allocating medium-lived garbage, with a worker thread started first (its heap set-up resets the factor). */
function youngAfterLoad(env: Record<string, string>): number {
  const mod = path.join(__dirname, '../../src/bin/young-generation.ts');
  const script = `
    require(${JSON.stringify(mod)});
    const v8 = require('node:v8');
    const { Worker } = require('node:worker_threads');
    const w = new Worker('setTimeout(() => {}, 200)', { eval: true });
    w.once('online', () => setImmediate(() => {
      const ring = new Array(20000);
      for (let i = 0; i < 2e6; i++) ring[i % 20000] = { i, a: [i, i + 1] };
      process.stdout.write(String(v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size));
      process.exit(0);
    }));`;
  return Number(execFileSync(process.execPath, ['-r', 'tsx/cjs', '-e', script], { env: { ...process.env, ...env }, encoding: 'utf8' }));
}

test('nydusd young generation stays at its initial size, also after a worker thread started; NYDUS_V8_YOUNG_GROWTH=2 lets it grow', () => {
  const capped = youngAfterLoad({});
  assert.ok(capped <= 2 << 20, `young generation ${capped} bytes`);
  const grown = youngAfterLoad({ NYDUS_V8_YOUNG_GROWTH: '2' });
  assert.ok(grown > capped, `default growth: ${grown} bytes`);
});

/** Largest heap while objects that outlive the young generation are replaced all the time (a cache's churn). */
function heapPeakUnderChurn(env: Record<string, string>): number {
  const mod = path.join(__dirname, '../../src/bin/young-generation.ts');
  const script = `
    require(${JSON.stringify(mod)});
    const v8 = require('node:v8');
    const ring = new Array(100000);
    let peak = 0;
    for (let i = 0; i < 6e6; i++) {
      ring[i % 100000] = { i, a: [i, i + 1], s: 'x' + (i & 1023) };
      if ((i & 0xffff) === 0) peak = Math.max(peak, v8.getHeapStatistics().total_heap_size);
    }
    process.stdout.write(String(peak));`;
  return Number(execFileSync(process.execPath, ['-r', 'tsx/cjs', '-e', script], { env: { ...process.env, ...env }, encoding: 'utf8' }));
}

test('nydusd old generation grows by a fifth of what lives between full collections; NYDUS_V8_HEAP_GROWING=0 keeps V8\'s growth', () => {
  const capped = heapPeakUnderChurn({ NYDUS_V8_HEAP_GROWING: '' });
  const grown = heapPeakUnderChurn({ NYDUS_V8_HEAP_GROWING: '0' });
  // ~35 MB against ~80 MB here (the ring holds ~10 MB)
  assert.ok(capped * 1.5 < grown, `heap peak ${capped} bytes, ${grown} with V8's growth`);
});

test.run();
