/**
 * `npm run bench:coldstart`: container cold start, OCI (`ctr image pull` +
 * overlayfs + `ctr run`) vs Nydus (`ctr-remote image rpull` + our
 * containerd-nydus-grpc + `ctr run --snapshotter nydus`), under a real
 * containerd 1.6 + runc against Debian's docker-registry.
 *
 * Images of about 0.25 / 0.5 / 1 / 2 GiB in 3+ gzip layers are generated from
 * files on this machine (/usr/bin, /usr/lib, /usr/share) topped up with
 * deterministic pseudo-random data (half random, half text: compresses about
 * 2:1), plus a static busybox; pushed as a plain OCI image and converted with
 * bin/nydusify convert (`conversion_elapsed`). Every sample runs on a fresh
 * containerd + snapshotter (new dirs) after dropping the page cache (the
 * registry's too). Optional shaped link: the same registry storage served from
 * a network namespace behind a veth pair with tbf 200mbit/50ms.
 *
 * Env: COLDSTART_SIZES=0.25,0.5 (GiB, default 0.25,0.5,1,2), COLDSTART_SAMPLES
 * (default 1), COLDSTART_SHAPED_SIZES (default 0.25,0.5; "" = no shaped run).
 * Writes docs/coldstart.json and docs/coldstart.svg. Needs root.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { ROOT } from '../support/cli';
import { containerdMissing, killUnder, shortTmp, startContainerd, startSnapshotter, teardown, unmountUnder, type Containerd, type SnapshotterProc } from '../support/containerd';
import { freePort, registryMissing, REGISTRY_BIN } from '../support/registry';
import { linkUp, type ShapedLink } from '../support/shaped-link';
import { dropCaches, sleep } from '../support/timing';

const GiB = 1 << 30;
const LINK = { ns: 'nydus-coldstart', hostDev: 'ncs-h', nsDev: 'ncs-n', net: '10.231.77' };
const SHAPE = 'tbf rate 200mbit burst 256kb latency 50ms';
const RUN_CMD = '/bin/busybox cat /etc/passwd /etc/group /etc/hostname.img >/dev/null && /bin/busybox head -c 1048576 /data/big0.bin | /bin/busybox wc -c';

interface Sample {
  size_gib: number;
  way: 'oci' | 'nydus';
  link: 'unshaped' | 'shaped';
  pull: number;
  run: number;
  e2e_time: number;
  registry_bytes: number;
  registry_requests: number;
  read_count?: number;
  read_amount_total?: number;
}

interface ImageInfo { size_gib: number; image_size: number; layers: number; nydus_blob_bytes: number; conversion_elapsed: number; repo: string }

const sh = (cmd: string): { status: number | null; out: string } => {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8', maxBuffer: 64 << 20 });
  return { status: r.status, out: (r.stdout ?? '') + (r.stderr ?? '') };
};
const must = (cmd: string): string => {
  const r = sh(cmd);
  if (r.status !== 0) throw new Error(`${cmd}: ${r.out}`);
  return r.out;
};
const now = (): number => Number(process.hrtime.bigint()) / 1e9;

// ---------------------------------------------------------------- registry (own launcher: can run inside a netns)

interface Reg { host: string; proc: ChildProcess; logFile: string; log(): string; stop(): Promise<void> }

async function launchRegistry(storage: string, logFile: string, addr: string, netns?: string): Promise<Reg> {
  const cfg = `${logFile}.yml`;
  fs.writeFileSync(cfg, ['version: 0.1', 'log:', '  level: info', '  accesslog:', '    disabled: false', 'storage:', '  filesystem:',
    `    rootdirectory: ${storage}`, 'http:', `  addr: ${addr}`, ''].join('\n'));
  const fd = fs.openSync(logFile, 'a');
  const proc = netns
    ? spawn('ip', ['netns', 'exec', netns, REGISTRY_BIN, 'serve', cfg], { stdio: ['ignore', fd, fd] })
    : spawn(REGISTRY_BIN, ['serve', cfg], { stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  let exited = false;
  const exit = new Promise<void>((r) => proc.on('exit', () => { exited = true; r(); }));
  const t0 = Date.now();
  for (;;) {
    if (exited) throw new Error(`docker-registry exited: ${fs.readFileSync(logFile, 'utf8')}`);
    if (sh(`curl -sf -o /dev/null http://${addr}/v2/`).status === 0) break;
    if (Date.now() - t0 > 15_000) { proc.kill('SIGKILL'); throw new Error('docker-registry did not start'); }
    await sleep(100);
  }
  return {
    host: addr, proc, logFile,
    log: () => { try { return fs.readFileSync(logFile, 'utf8'); } catch { return ''; } },
    async stop() {
      if (!exited) proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exit;
      clearTimeout(t);
    },
  };
}

function request(method: string, url: string, headers: Record<string, string>, body?: Buffer | string): Promise<{ status: number; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const h: Record<string, string> = { ...headers };
    let stream: fs.ReadStream | undefined;
    if (typeof body === 'string') { h['content-length'] = String(fs.statSync(body).size); stream = fs.createReadStream(body); }
    else if (body) h['content-length'] = String(body.length);
    const r = http.request(url, { method, headers: h }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers }));
    });
    r.on('error', reject);
    if (stream) stream.pipe(r);
    else r.end(body);
  });
}

/** Push a blob (Buffer, or a file path streamed). */
async function pushBlob(host: string, repo: string, digest: string, body: Buffer | string): Promise<void> {
  const head = await request('HEAD', `http://${host}/v2/${repo}/blobs/${digest}`, {});
  if (head.status === 200) return;
  const start = await request('POST', `http://${host}/v2/${repo}/blobs/uploads/`, {});
  if (start.status !== 202 || !start.headers.location) throw new Error(`upload start ${start.status}`);
  const loc = new URL(start.headers.location as string, `http://${host}`);
  loc.searchParams.set('digest', digest);
  const put = await request('PUT', loc.href, { 'content-type': 'application/octet-stream' }, body);
  if (put.status !== 201) throw new Error(`upload put ${put.status}`);
}

/** Registry GETs of blobs since `mark` (200/206 lines with byte counts). */
function gets(log: string, mark: number): { n: number; bytes: number } {
  let n = 0;
  let bytes = 0;
  for (const line of log.slice(mark).split('\n')) {
    if (!/"GET \/v2\/[^ ]*\/blobs\/sha256:/.test(line)) continue;
    const m = line.match(/" (200|206) (\d+) /);
    if (!m) continue;
    n++;
    bytes += Number(m[2]);
  }
  return { n, bytes };
}

// ---------------------------------------------------------------- image generation

/** Deterministic filler: per 1 MiB, 512 KiB pseudo-random + 512 KiB text. */
function writeFiller(file: string, bytes: number, seed: string): void {
  const fd = fs.openSync(file, 'w');
  const text = Buffer.from(fs.readFileSync('/usr/share/common-licenses/GPL-3', 'utf8').repeat(20)).subarray(0, 512 << 10);
  let ctr = 0;
  let left = bytes;
  while (left > 0) {
    const rnd = Buffer.alloc(512 << 10);
    let off = 0;
    while (off < rnd.length) {
      const h = crypto.createHash('sha512').update(`${seed}:${ctr++}`).digest();
      // stretch the hash cheaply: aes-ctr keystream seeded by it
      const c = crypto.createCipheriv('aes-128-ctr', h.subarray(0, 16), h.subarray(16, 32));
      const ks = c.update(Buffer.alloc(64 << 10));
      ks.copy(rnd, off);
      off += ks.length;
    }
    const chunk = Buffer.concat([rnd, text]).subarray(0, Math.min(left, 1 << 20));
    fs.writeSync(fd, chunk);
    left -= chunk.length;
  }
  fs.closeSync(fd);
}

/** Copy regular files from `src` into `dst/<prefix>` until `budget` bytes; returns bytes copied. */
function copyTree(src: string, dst: string, budget: number): number {
  let used = 0;
  const walk = (rel: string): void => {
    if (used >= budget) return;
    let ents: fs.Dirent[];
    try { ents = fs.readdirSync(path.join(src, rel), { withFileTypes: true }); } catch { return; }
    ents.sort((a, b) => a.name.localeCompare(b.name));
    for (const e of ents) {
      if (used >= budget) return;
      const r = path.join(rel, e.name);
      if (e.isDirectory()) walk(r);
      else if (e.isFile()) {
        let st: fs.Stats;
        try { st = fs.statSync(path.join(src, r)); } catch { continue; }
        if (st.size > budget - used || st.size > 64 << 20) continue;
        try {
          fs.mkdirSync(path.join(dst, rel), { recursive: true });
          fs.copyFileSync(path.join(src, r), path.join(dst, r));
          used += st.size;
        } catch { /* unreadable */ }
      }
    }
  };
  walk('');
  return used;
}

interface Layer { gz: string; digest: string; diffId: string; size: number }

function packLayer(dir: string, out: string): Layer {
  const tar = `${out}.tar`;
  must(`tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C '${dir}' -cf '${tar}' .`);
  const diffId = 'sha256:' + must(`sha256sum '${tar}'`).split(' ')[0];
  must(`gzip -1 -n -c '${tar}' > '${out}.tar.gz' && rm -f '${tar}'`);
  const gz = `${out}.tar.gz`;
  const digest = 'sha256:' + must(`sha256sum '${gz}'`).split(' ')[0];
  fs.rmSync(dir, { recursive: true, force: true });
  return { gz, digest, diffId, size: fs.statSync(gz).size };
}

/** Build ~`gib` GiB (uncompressed) in 4 layers; push as `<repo>:latest`. */
async function buildImage(work: string, host: string, gib: number): Promise<{ repo: string; image_size: number; layers: number }> {
  const repo = `coldstart/s${String(gib).replace('.', '_')}`;
  const total = Math.round(gib * GiB);
  const layers: Layer[] = [];
  // layer 0: busybox + /etc
  const l0 = path.join(work, 'l0');
  fs.mkdirSync(path.join(l0, 'bin'), { recursive: true });
  fs.mkdirSync(path.join(l0, 'etc'), { recursive: true });
  for (const d of ['tmp', 'proc', 'dev', 'sys', 'data']) fs.mkdirSync(path.join(l0, d), { recursive: true });
  fs.chmodSync(path.join(l0, 'tmp'), 0o1777);
  fs.copyFileSync('/bin/busybox', path.join(l0, 'bin/busybox'));
  fs.chmodSync(path.join(l0, 'bin/busybox'), 0o755);
  for (const a of ['sh', 'cat', 'head', 'wc', 'ls']) fs.symlinkSync('busybox', path.join(l0, 'bin', a));
  fs.writeFileSync(path.join(l0, 'etc/passwd'), 'root:x:0:0:root:/:/bin/sh\n');
  fs.writeFileSync(path.join(l0, 'etc/group'), 'root:x:0:\n');
  fs.writeFileSync(path.join(l0, 'etc/hostname.img'), `coldstart-${gib}\n`);
  const per = Math.floor(total / 3);
  const sources = ['/usr/bin', '/usr/lib', '/usr/share'];
  for (let i = 0; i < 3; i++) {
    const d = path.join(work, `l${i + 1}`);
    fs.mkdirSync(path.join(d, 'data'), { recursive: true });
    const copied = copyTree(sources[i], path.join(d, sources[i].slice(1)), Math.floor(per * 0.4));
    writeFiller(path.join(d, 'data', `big${i}.bin`), per - copied, `${gib}:${i}`);
    layers.push(packLayer(d, path.join(work, `layer${i + 1}`)));
  }
  layers.unshift(packLayer(l0, path.join(work, 'layer0')));
  for (const l of layers) await pushBlob(host, repo, l.digest, l.gz);
  const config = Buffer.from(JSON.stringify({
    architecture: process.arch === 'arm64' ? 'arm64' : 'amd64', os: 'linux',
    config: { Cmd: ['/bin/sh'], Env: ['PATH=/bin'] },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
  }));
  const cdig = 'sha256:' + crypto.createHash('sha256').update(config).digest('hex');
  await pushBlob(host, repo, cdig, config);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cdig, size: config.length },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest, size: l.size })),
  }));
  const put = await request('PUT', `http://${host}/v2/${repo}/manifests/latest`, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, manifest);
  if (put.status !== 201) throw new Error(`manifest put ${put.status}`);
  for (const l of layers) fs.rmSync(l.gz, { force: true });
  return { repo, image_size: layers.reduce((a, l) => a + l.size, 0) + config.length, layers: layers.length };
}

// ---------------------------------------------------------------- one sample

function nydusToml(dir: string): string {
  const tpl = path.join(dir, 'nydusd-config.json');
  fs.writeFileSync(tpl, JSON.stringify({
    device: { backend: { type: 'registry', config: { scheme: 'http', timeout: 60, connect_timeout: 10 } }, cache: { type: 'blobcache', config: {} } },
    mode: 'direct', digest_validate: false, enable_xattr: true, fs_prefetch: { enable: false },
  }));
  return `daemon_mode = "dedicated"\n[daemon]\nnydusd_config = "${tpl}"\n`;
}

function getUnix(sock: string, p: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const r = http.get({ socketPath: sock, path: p, timeout: 3000 }, (res) => {
      let b = '';
      res.on('data', (d) => { b += d; });
      res.on('end', () => resolve(b));
    });
    r.on('error', reject);
    r.on('timeout', () => r.destroy(new Error('timeout')));
  });
}

/** nydusd backend metrics summed over the snapshotter's daemons (best effort). */
async function backendMetrics(root: string): Promise<{ read_count: number; read_amount_total: number } | undefined> {
  const sockDir = path.join(root, 'socket');
  if (!fs.existsSync(sockDir)) return undefined;
  let rc = 0;
  let amt = 0;
  let found = false;
  for (const id of fs.readdirSync(sockDir)) {
    const sock = path.join(sockDir, id, 'api.sock');
    if (!fs.existsSync(sock)) continue;
    for (const q of [`/api/v1/metrics/backend?id=${id}`, '/api/v1/metrics/backend']) {
      try {
        const j = JSON.parse(await getUnix(sock, q)) as { read_count?: number; read_amount_total?: number };
        if (typeof j.read_count === 'number') { rc += j.read_count; amt += j.read_amount_total ?? 0; found = true; break; }
      } catch { /* try next */ }
    }
  }
  return found ? { read_count: rc, read_amount_total: amt } : undefined;
}

let sampleSeq = 0;
/** the running sample's dir (for the SIGINT/SIGTERM cleanup) */
let sampleDir: string | undefined;
async function sample(way: 'oci' | 'nydus', reg: Reg, repo: string, gib: number, link: Sample['link']): Promise<Sample> {
  const dir = shortTmp('cs-');
  sampleDir = dir;
  let sn: SnapshotterProc | undefined;
  let c: Containerd | undefined;
  try {
    sn = await startSnapshotter(dir, nydusToml(dir));
    c = await startContainerd(path.join(dir, 'c'), sn.address);
    const ref = `${reg.host}/${repo}:${way === 'oci' ? 'latest' : 'nydus'}`;
    dropCaches();
    const mark = reg.log().length;
    const t0 = now();
    if (way === 'oci') c.ctr(['image', 'pull', '--plain-http', ref], { timeoutMs: 1_800_000 });
    else {
      const r = spawnSync(path.join(ROOT, 'bin/ctr-remote'), ['-a', c.address, '-n', c.namespace, 'image', 'rpull', '--plain-http', '--snapshotter', 'nydus', ref], { encoding: 'utf8', timeout: 1_800_000 });
      if (r.status !== 0) throw new Error(`ctr-remote rpull: ${r.stderr}${r.stdout}\n${sn.log().slice(-3000)}`);
    }
    const t1 = now();
    const args = ['run', '--rm', ...(way === 'nydus' ? ['--snapshotter', 'nydus'] : []), ref, `cs-${process.pid}-${++sampleSeq}`, '/bin/sh', '-c', RUN_CMD];
    const r = c.ctr(args, { timeoutMs: 1_800_000, allowFail: true });
    const t2 = now();
    if (r.status !== 0 || r.stdout.trim() !== '1048576') throw new Error(`ctr run ${way}: ${r.status} ${r.stdout} ${r.stderr}\n${sn.log().slice(-3000)}`);
    await sleep(300); // let the access log flush
    const g = gets(reg.log(), mark);
    const m = way === 'nydus' ? await backendMetrics(sn.root).catch(() => undefined) : undefined;
    return { size_gib: gib, way, link, pull: t1 - t0, run: t2 - t1, e2e_time: t2 - t0, registry_bytes: g.bytes, registry_requests: g.n, ...(m ?? {}) };
  } finally {
    await teardown(dir, c, sn);
    sampleDir = undefined;
  }
}

// ---------------------------------------------------------------- chart

async function chart(samples: Sample[], file: string): Promise<void> {
  // native import() (both are ESM with top-level await; the CommonJS emit would turn import() into require())
  const esm = new Function('m', 'return import(m)') as (m: string) => Promise<unknown>;
  const vega = await esm('vega');
  const vl = await esm('vega-lite');
  const agg = new Map<string, { size: number; series: string; v: number[] }>();
  for (const s of samples) {
    const series = `${s.way === 'oci' ? 'OCI (ctr pull + overlayfs)' : 'Nydus (rpull + nydus snapshotter)'}${s.link === 'shaped' ? ', 200 Mbit/50 ms' : ''}`;
    const k = `${series}|${s.size_gib}`;
    if (!agg.has(k)) agg.set(k, { size: s.size_gib, series, v: [] });
    agg.get(k)!.v.push(s.e2e_time);
  }
  const values = [...agg.values()].map((a) => ({ size_gib: a.size, series: a.series, e2e_seconds: a.v.reduce((x, y) => x + y, 0) / a.v.length }));
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: 'Container cold start: time to ready vs image size (2-core VM, local docker-registry)',
    width: 520, height: 320,
    data: { values },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'size_gib', type: 'quantitative', title: 'image size (GiB, uncompressed)' },
      y: { field: 'e2e_seconds', type: 'quantitative', title: 'pull + run (s)' },
      color: { field: 'series', type: 'nominal', title: null, legend: { orient: 'top-left', labelLimit: 400 } },
    },
  };
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const compiled = (vl as any).compile(spec).spec;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const V = vega as any;
  const view = new V.View(V.parse(compiled), { renderer: 'none' });
  fs.writeFileSync(file, await view.toSVG());
  view.finalize();
}

// ---------------------------------------------------------------- main

const f = (x: number, d = 2): string => x.toFixed(d);
const mib = (b: number): string => (b / (1 << 20)).toFixed(1);

async function main(): Promise<void> {
  const why = (process.getuid?.() !== 0 ? 'not running as root' : undefined) ?? containerdMissing() ?? registryMissing()
    ?? (['bin/nydusify', 'bin/ctr-remote', 'dist/bin/nydusify.js', 'dist/bin/nydusd.js'].find((b) => !fs.existsSync(path.join(ROOT, b))) ? 'dist/ is not built (npx tsc -p .)' : undefined)
    ?? (fs.existsSync('/bin/busybox') ? undefined : 'no /bin/busybox (apt-get install busybox-static)');
  if (why) { console.log(`SKIP coldstart bench: ${why}`); return; }
  const sizes = (process.env.COLDSTART_SIZES ?? '0.25,0.5,1,2').split(',').map(Number).filter((x) => x > 0);
  const nSamples = Math.max(1, Number(process.env.COLDSTART_SAMPLES ?? 1) || 1);
  const shapedSizes = (process.env.COLDSTART_SHAPED_SIZES ?? '0.25,0.5').split(',').filter((x) => x.trim()).map(Number).filter((x) => sizes.includes(x));

  const work = shortTmp('csw-');
  const storage = path.join(work, 'storage');
  fs.mkdirSync(storage);
  let reg: Reg | undefined;
  let shaped: Reg | undefined;
  let link: ShapedLink | undefined;
  const samples: Sample[] = [];
  const images: ImageInfo[] = [];
  let shapedNote = '';
  // interrupted: kill what runs under our dirs, unmount, remove the netns and the dirs, exit
  const onSig = (): void => {
    for (const d of [sampleDir, work]) {
      if (!d) continue;
      killUnder(d);
      unmountUnder(d);
    }
    reg?.proc.kill('SIGKILL');
    shaped?.proc.kill('SIGKILL');
    link?.down();
    for (const d of [sampleDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
    process.exit(130);
  };
  process.once('SIGINT', onSig);
  process.once('SIGTERM', onSig);
  try {
    reg = await launchRegistry(storage, path.join(work, 'registry.log'), `127.0.0.1:${await freePort()}`);
    for (const gib of sizes) {
      const t = now();
      const img = await buildImage(path.join(work, 'gen'), reg.host, gib);
      console.log(`# image ${gib} GiB: ${img.layers} gzip layers, ${mib(img.image_size)} MiB compressed (built+pushed in ${f(now() - t, 1)} s)`);
      const t0 = now();
      const conv = spawnSync(path.join(ROOT, 'bin/nydusify'), ['convert', '--source', `${reg.host}/${img.repo}:latest`, '--target', `${reg.host}/${img.repo}:nydus`, '--plain-http',
        '--work-dir', path.join(work, 'conv')], { encoding: 'utf8', timeout: 3_600_000, maxBuffer: 64 << 20 });
      const conversion_elapsed = now() - t0;
      fs.rmSync(path.join(work, 'conv'), { recursive: true, force: true });
      if (conv.status !== 0) throw new Error(`nydusify convert: ${conv.stderr}${conv.stdout}`);
      sh(`curl -sf http://${reg.host}/v2/${img.repo}/manifests/nydus -H 'Accept: application/vnd.oci.image.manifest.v1+json' > '${work}/nm.json'`);
      let nydus_blob_bytes = 0;
      try { nydus_blob_bytes = (JSON.parse(fs.readFileSync(`${work}/nm.json`, 'utf8')) as { layers: { size: number }[] }).layers.reduce((a, l) => a + l.size, 0); } catch { /* unknown */ }
      console.log(`# converted in ${f(conversion_elapsed, 1)} s (nydus layers ${mib(nydus_blob_bytes)} MiB)`);
      images.push({ size_gib: gib, ...img, nydus_blob_bytes, conversion_elapsed });
      for (let i = 0; i < nSamples; i++) {
        for (const way of ['oci', 'nydus'] as const) {
          const s = await sample(way, reg, img.repo, gib, 'unshaped');
          samples.push(s);
          console.log(`  ${gib} GiB ${way} #${i + 1}: pull ${f(s.pull)} s, run ${f(s.run)} s, e2e ${f(s.e2e_time)} s, ${s.registry_requests} GETs ${mib(s.registry_bytes)} MiB${s.read_count !== undefined ? `, nydusd backend reads ${s.read_count} / ${mib(s.read_amount_total!)} MiB` : ''}`);
        }
      }
    }
    if (shapedSizes.length) {
      const up = linkUp(LINK, SHAPE);
      if (typeof up === 'string') { shapedNote = `shaped link skipped: ${up}`; console.log(`SKIP shaped link: ${up}`); }
      else {
        link = up;
        shaped = await launchRegistry(storage, path.join(work, 'registry-shaped.log'), `${up.nsIp}:5000`, up.ns);
        shapedNote = `registry in netns ${up.ns} behind veth, tc ${SHAPE} both directions`;
        for (const gib of shapedSizes) {
          const img = images.find((x) => x.size_gib === gib)!;
          for (let i = 0; i < nSamples; i++) {
            for (const way of ['oci', 'nydus'] as const) {
              const s = await sample(way, shaped, img.repo, gib, 'shaped');
              samples.push(s);
              console.log(`  shaped ${gib} GiB ${way} #${i + 1}: pull ${f(s.pull)} s, run ${f(s.run)} s, e2e ${f(s.e2e_time)} s, ${s.registry_requests} GETs ${mib(s.registry_bytes)} MiB`);
            }
          }
        }
      }
    }
  } finally {
    process.removeListener('SIGINT', onSig);
    process.removeListener('SIGTERM', onSig);
    await shaped?.stop().catch(() => undefined);
    link?.down();
    await reg?.stop().catch(() => undefined);
    fs.rmSync(work, { recursive: true, force: true });
  }

  // table
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const rows: string[] = [];
  rows.push('| size | link | way | pull s | run s | e2e s | registry GETs | registry MiB | image (gz) MiB | conversion s | OCI/Nydus e2e |');
  rows.push('|---|---|---|---|---|---|---|---|---|---|---|');
  const summary: Record<string, unknown>[] = [];
  for (const link of ['unshaped', 'shaped'] as const) {
    for (const img of images) {
      const sel = (way: string): Sample[] => samples.filter((s) => s.size_gib === img.size_gib && s.link === link && s.way === way);
      if (!sel('oci').length || !sel('nydus').length) continue;
      const ratio = mean(sel('oci').map((s) => s.e2e_time)) / mean(sel('nydus').map((s) => s.e2e_time));
      for (const way of ['oci', 'nydus']) {
        const ss = sel(way);
        const row = {
          size_gib: img.size_gib, link, way, pull: mean(ss.map((s) => s.pull)), run: mean(ss.map((s) => s.run)), e2e_time: mean(ss.map((s) => s.e2e_time)),
          registry_requests: mean(ss.map((s) => s.registry_requests)), registry_bytes: mean(ss.map((s) => s.registry_bytes)),
          image_size: img.image_size, conversion_elapsed: img.conversion_elapsed, ratio_oci_over_nydus: ratio,
        };
        summary.push(row);
        rows.push(`| ${img.size_gib} GiB | ${link} | ${way} | ${f(row.pull)} | ${f(row.run)} | ${f(row.e2e_time)} | ${f(row.registry_requests, 0)} | ${mib(row.registry_bytes)} | ${mib(img.image_size)} | ${f(img.conversion_elapsed, 1)} | ${way === 'nydus' ? f(ratio, 1) + 'x' : ''} |`);
      }
    }
  }
  console.log('\n' + rows.join('\n'));
  const big = summary.find((r) => r.size_gib === 2 && r.link === 'unshaped' && r.way === 'nydus');
  const goal = 'goal: OCI/Nydus e2e >= 10x at 2 GiB on the unshaped link';
  console.log(`\n${goal}: ${big ? `${f(big.ratio_oci_over_nydus as number, 1)}x -> ${(big.ratio_oci_over_nydus as number) >= 10 ? 'MET' : 'NOT MET'}` : '2 GiB not measured (COLDSTART_SIZES)'}`);
  if (shapedNote) console.log(shapedNote);

  fs.mkdirSync(path.join(ROOT, 'docs'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, 'docs/coldstart.json'), JSON.stringify({
    machine: `${spawnSync('nproc', { encoding: 'utf8' }).stdout.trim()}-core VM, ${spawnSync('uname', ['-r'], { encoding: 'utf8' }).stdout.trim()}`,
    date: new Date().toISOString(), samples_per_point: nSamples, run_cmd: RUN_CMD, shaped: shapedNote || 'not measured', goal,
    images, summary, samples,
  }, null, 2) + '\n');
  await chart(samples, path.join(ROOT, 'docs/coldstart.svg'));
  console.log('wrote docs/coldstart.json, docs/coldstart.svg');
}

main().catch((e: unknown) => { console.error(e); process.exitCode = 1; });
