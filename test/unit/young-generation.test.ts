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

test.run();
