import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Serves `GET /blob` ranges of 4 MiB of pseudo-random bytes. */
async function blobServer(): Promise<http.Server> {
  const data = Buffer.alloc(4 << 20);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  const s = http.createServer((req, res) => {
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    const a = m ? Number(m[1]) : 0;
    const b = m ? Number(m[2]) + 1 : data.length;
    res.writeHead(206, { 'content-length': b - a, 'content-range': `bytes ${a}-${b - 1}/${data.length}` });
    res.end(data.subarray(a, b));
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return s;
}

/**
 * Full collections in a nydusd-like process (bin/young-generation loaded)
 * that downloads 128 MiB through the HTTP backend's client and readExact, in
 * 4 MiB ranged GETs.
 */
async function majorGcs(port: number, env: Record<string, string> = {}): Promise<number> {
  const gen = path.join(__dirname, '../../src/bin/young-generation.ts');
  const httpMod = path.join(__dirname, '../../src/storage/backend/http.ts');
  const script = `
    require(${JSON.stringify(gen)});
    const { HttpClient, readExact } = require(${JSON.stringify(httpMod)});
    const { PerformanceObserver, constants } = require('node:perf_hooks');
    let majors = 0;
    new PerformanceObserver((l) => { for (const e of l.getEntries()) if (e.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR) majors++; }).observe({ entryTypes: ['gc'] });
    (async () => {
      const c = new HttpClient({ timeout: 30, connect_timeout: 5 });
      const out = Buffer.alloc(4 << 20);
      for (let i = 0; i < 32; i++) {
        const r = await c.request('GET', new URL('http://127.0.0.1:${port}/blob'), { range: 'bytes=0-' + ((4 << 20) - 1) });
        await readExact(r, 4 << 20, out);
      }
      await c.close();
      setTimeout(() => process.stdout.write(String(majors)), 50);
    })();`;
  const r = await run(process.execPath, ['-r', 'tsx/cjs', '-e', script], { env: { ...process.env, ...env }, encoding: 'utf8' });
  return Number(r.stdout);
}

test('while a download streams, the old generation has room for the socket buffers: fewer full collections; NYDUS_V8_STREAM_GROWING=0 turns it off', async () => {
  const s = await blobServer();
  try {
    const port = (s.address() as AddressInfo).port;
    const roomy = await majorGcs(port);
    const tight = await majorGcs(port, { NYDUS_V8_STREAM_GROWING: '0' });
    // 1-2 against 7-9 here
    assert.ok(tight >= 4, `without the room: ${tight} full collections`);
    assert.ok(roomy * 2 <= tight, `with the room: ${roomy} full collections, ${tight} without`);
  } finally {
    s.close();
  }
});

test.run();
