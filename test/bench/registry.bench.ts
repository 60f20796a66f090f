/**
 * `npm run bench` (registry): lazy pulling from a real registry on loopback
 * (Debian's docker-registry), side by side with the wire's ceiling in the same
 * run: `curl` of the whole blob vs nydusd (FUSE, registry backend) reading the
 * 256 MiB file cold, with the blob cache on (the default a user gets) and off;
 * then a cold read of 3,000 small files (time, registry requests, bytes).
 * For scale, squashfuse reading a local squashfs of the same tree cold: on
 * loopback the wire can be faster than any FUSE read of the data. Then the
 * same over shaped links (a registry in a network namespace behind tbf at
 * REGISTRY_BENCH_LINKS, default 1gbit,2500mbit,10gbit): there the wire is a
 * wire, and the ratio says whether nydusd keeps a link of that speed busy.
 * Needs root and docker-registry (scripts/setup.sh installs it).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from '../support/cli';
import { BENCH_BIG, BENCH_SMALL, makeReadBenchTree } from '../support/bench-tree';
import { startNydusd } from '../support/nydusd';
import { registryMissing, startRegistry, type Registry } from '../support/registry';
import { linkUp } from '../support/shaped-link';
import { dropCaches, timeCmd } from '../support/timing';

const REPO = 'bench/img';

/** GET requests for `digest` in the registry log since `mark` characters. */
function gets(log: string, mark: number, digest: string): { n: number; bytes: number } {
  let n = 0;
  let bytes = 0;
  for (const line of log.slice(mark).split('\n')) {
    if (!line.includes(`"GET /v2/${REPO}/blobs/sha256:${digest}`)) continue;
    n++;
    const m = line.match(/" (200|206) (\d+) /);
    if (m) bytes += Number(m[2]);
  }
  return { n, bytes };
}

/**
 * Seconds squashfuse takes to read the big file of a zstd squashfs of `tree`
 * with caches dropped (median of 3), or undefined without squashfuse.
 */
function squashfuseCold(tree: string, work: string): number | undefined {
  if (spawnSync('sh', ['-c', 'command -v squashfuse && command -v mksquashfs']).status !== 0) return undefined;
  const img = path.join(work, 'tree.sqfs');
  const mnt = path.join(work, 'mnt-sq');
  execFileSync('mksquashfs', [tree, img, '-comp', 'zstd', '-noappend', '-quiet'], { stdio: 'ignore' });
  fs.mkdirSync(mnt, { recursive: true });
  const times: number[] = [];
  for (let i = 0; i < 3; i++) {
    execFileSync('squashfuse', [img, mnt]);
    try {
      dropCaches();
      times.push(timeCmd(`dd if='${mnt}/big.bin' of=/dev/null bs=1M`));
    } finally { execFileSync('umount', [mnt]); }
  }
  return times.sort((a, b) => a - b)[1];
}

/** Median of three. */
const mid3 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[1];

/**
 * The same blob from docker-registry in a network namespace behind a veth
 * pair shaped with tbf at each of REGISTRY_BENCH_LINKS (tc rates, default
 * 1gbit,2500mbit,10gbit; "" = none): curl of the blob vs nydusd's cold dd of
 * the big file, with and without the blob cache, 3 alternating rounds,
 * medians. On loopback the "wire" is a memory copy; a real link is where the
 * ratio means what the goal says.
 */
async function linkSweep(blob: Buffer, digest: string, withCache: (r: Registry) => Promise<{ big: number }>, noCache: (r: Registry) => Promise<{ big: number }>): Promise<void> {
  const rates = (process.env.REGISTRY_BENCH_LINKS ?? '1gbit,2500mbit,10gbit').split(',').map((x) => x.trim()).filter(Boolean);
  if (!rates.length) return;
  const link = linkUp({ ns: 'nydus-regbench', hostDev: 'nrb-h', nsDev: 'nrb-n', net: '10.231.78' }, '');
  if (typeof link === 'string') { console.log(`SKIP shaped links: ${link}`); return; }
  let reg: Registry | undefined;
  try {
    reg = await startRegistry({ netns: { name: link.ns, listenIp: link.nsIp } });
    if (await reg.pushBlob(REPO, blob) !== digest) throw new Error('pushed digest differs');
    const url = `http://${reg.host}/v2/${REPO}/blobs/sha256:${digest}`;
    console.log(`shaped links: docker-registry in netns ${link.ns} behind a veth pair, tc tbf at each rate on both ends; 3 alternating rounds, medians`);
    for (const rate of rates) {
      const bytesPerSec = parseRate(rate);
      const burst = Math.max(256 << 10, Math.round(bytesPerSec / 100));
      link.shape(`tbf rate ${rate} burst ${burst} latency 50ms`);
      const curl: number[] = [];
      const cached: number[] = [];
      const plain: number[] = [];
      for (let i = 0; i < 3; i++) {
        dropCaches();
        curl.push(timeCmd(`curl -sf -o /dev/null '${url}'`));
        cached.push((await withCache(reg)).big);
        plain.push((await noCache(reg)).big);
      }
      const c = mid3(curl);
      const a = mid3(cached);
      const b = mid3(plain);
      const v = (x: number) => (c / x >= 0.8 ? 'MET' : 'NOT MET');
      console.log(`link ${rate.padEnd(8)} curl ${c.toFixed(2)} s (${(blob.length / c / 2 ** 20).toFixed(0)} MiB/s)  nydusd + blobcache ${a.toFixed(2)} s = ${(c / a).toFixed(2)}x the wire ${v(a)}  no cache ${b.toFixed(2)} s = ${(c / b).toFixed(2)}x ${v(b)}`);
    }
  } finally {
    await reg?.stop();
    link.down();
  }
}

/** Bytes per second of a tc rate (1gbit, 2500mbit, 100mbps …). */
function parseRate(rate: string): number {
  const m = /^(\d+(?:\.\d+)?)(k|m|g)?(bit|bps)$/i.exec(rate);
  if (!m) throw new Error(`REGISTRY_BENCH_LINKS: bad rate ${rate} (e.g. 1gbit, 2500mbit)`);
  const mult = { '': 1, k: 1e3, m: 1e6, g: 1e9 }[(m[2] ?? '').toLowerCase() as '' | 'k' | 'm' | 'g'];
  return (Number(m[1]) * mult) / (m[3].toLowerCase() === 'bit' ? 8 : 1);
}

async function main(): Promise<void> {
  const missing = registryMissing() ?? (process.getuid?.() !== 0 ? 'not root (FUSE mounts)' : undefined);
  if (missing) { console.log(`SKIP registry bench: ${missing}`); return; }
  const base = path.join(os.tmpdir(), 'nydus-bench-tree');
  makeReadBenchTree(base);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-reg-bench-'));
  const blobs = path.join(work, 'blobs');
  execFileSync(path.join(ROOT, 'bin/nydus-image'), ['create', '--compressor', 'zstd', '--bootstrap', path.join(work, 'image.boot'), '--blob-dir', blobs, base], { stdio: 'ignore' });
  const blobFile = fs.readdirSync(blobs).find((f) => /^[0-9a-f]{64}$/.test(f))!;
  const blob = fs.readFileSync(path.join(blobs, blobFile));
  const reg = await startRegistry();
  const mnt = path.join(work, 'mnt');
  try {
    const digest = await reg.pushBlob(REPO, blob);
    const url = `http://${reg.host}/v2/${REPO}/blobs/sha256:${digest}`;
    let curl = Infinity;
    for (let i = 0; i < 3; i++) { dropCaches(); curl = Math.min(curl, timeCmd(`curl -sf -o /dev/null '${url}'`)); }

    const run = async (cache: boolean, local = false, on = reg, bigOnly = false): Promise<{ big: number; small: number; req: number; bytes: number; bigReq: number }> => {
      const cfg = path.join(work, 'config.json');
      // each measurement gets a fresh daemon and cache: the big file's requests must not warm the small files
      const daemon = async () => {
        const cacheDir = path.join(work, `cache-${Date.now()}-${Math.random()}`);
        fs.writeFileSync(cfg, JSON.stringify({
          version: 2,
          backend: local
            ? { type: 'localfs', localfs: { dir: blobs } }
            : { type: 'registry', registry: { scheme: 'http', host: on.host, repo: REPO, timeout: 30, connect_timeout: 5 } },
          cache: cache ? { type: 'blobcache', filecache: { work_dir: cacheDir } } : { type: '' },
          rafs: { mode: 'direct' },
        }));
        return startNydusd(mnt, ['--bootstrap', path.join(work, 'image.boot'), '--config', cfg, '--thread-num', '4', '--log-level', 'warn']);
      };
      let d = await daemon();
      let big: number;
      let bigReq: number;
      try {
        dropCaches();
        const mark = on.log().length;
        big = timeCmd(`dd if='${mnt}/big.bin' of=/dev/null bs=1M`);
        bigReq = gets(on.log(), mark, digest).n;
      } finally {
        await d.stop();
      }
      if (bigOnly) return { big, small: NaN, req: 0, bytes: 0, bigReq };
      d = await daemon();
      try {
        dropCaches();
        const mark = reg.log().length;
        const small = timeCmd(`find '${mnt}/small' -type f -print0 | xargs -0 cat > /dev/null`);
        const g = gets(reg.log(), mark, digest);
        return { big, small, req: g.n, bytes: g.bytes, bigReq };
      } finally {
        await d.stop();
      }
    };
    const withCache = await run(true);
    const noCache = await run(false);
    const local = await run(true, true);
    // what any FUSE daemon reaches here: squashfuse (C) reading a local squashfs of the same tree, cold
    const fuseCeiling = squashfuseCold(base, work);
    const mb = (n: number) => (n / 2 ** 20).toFixed(0);
    console.log(`registry benchmark (docker-registry 2.8 on 127.0.0.1, v6 zstd image: ${mb(BENCH_BIG)} MiB file + ${BENCH_SMALL} small files, blob ${mb(blob.length)} MiB; cold = caches dropped, new cache dir)`);
    console.log(`curl of the whole blob (the wire)                 ${curl.toFixed(2)} s  ${mb(blob.length / curl)} MiB/s`);
    console.log(`nydusd + blobcache: dd of the 256 MiB file, cold  ${withCache.big.toFixed(2)} s  ${withCache.bigReq} requests`);
    console.log(`nydusd, no cache:   dd of the 256 MiB file, cold  ${noCache.big.toFixed(2)} s  ${noCache.bigReq} requests`);
    console.log(`nydusd + blobcache: cat of ${BENCH_SMALL} small files, cold  ${withCache.small.toFixed(2)} s  ${withCache.req} requests, ${(withCache.bytes / 1024).toFixed(0)} KiB fetched`);
    console.log(`nydusd, no cache:   cat of ${BENCH_SMALL} small files, cold  ${noCache.small.toFixed(2)} s  ${noCache.req} requests, ${(noCache.bytes / 1024).toFixed(0)} KiB fetched`);
    console.log(`reference: same image from a local blob (localfs + blobcache): dd ${local.big.toFixed(2)} s, small files ${local.small.toFixed(2)} s`);
    if (fuseCeiling !== undefined) console.log(`FUSE reference: squashfuse (C) reading a local zstd squashfs of the same tree, dd cold ${fuseCeiling.toFixed(2)} s = ${(curl / fuseCeiling).toFixed(2)}x the wire's speed (no network at all)`);
    console.log(`ratios: registry cold read ${(curl / withCache.big).toFixed(2)}x the wire's speed with the blob cache, ${(curl / noCache.big).toFixed(2)}x without (goal >= 0.8x)`);
    console.log(`goal: registry-backed cold read >= 0.8x the wire (${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(1)}): with blob cache ${(curl / withCache.big).toFixed(2)}x ${curl / withCache.big >= 0.8 ? 'MET' : 'NOT MET'}, without ${(curl / noCache.big).toFixed(2)}x ${curl / noCache.big >= 0.8 ? 'MET' : 'NOT MET'}`);
    await linkSweep(blob, digest, (host) => run(true, false, host, true), (host) => run(false, false, host, true));
  } finally {
    await reg.stop();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(e); process.exitCode = 1; });
