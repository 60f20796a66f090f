/**
 * The whole life of Nydus images under a REAL containerd 1.6 + runc, for
 * `daemon_mode = "dedicated"` and `daemon_mode = "shared"`:
 *
 * - two multi-layer OCI images (busybox-static base, a middle layer, a top
 *   layer that deletes a file of the middle one through a whiteout; the two
 *   share base and middle layers) are pushed to a local docker-registry and
 *   converted once by bin/nydusify;
 * - per mode: containerd + our containerd-nydus-grpc on private sockets,
 *   `bin/ctr-remote image rpull`, `ctr run --snapshotter nydus` prints a file
 *   of every layer and finds the deleted one absent (busybox `test -e`);
 * - the snapshotter restarted (its nydusd re-adopted; a container started
 *   before keeps reading through it), nydusd killed with
 *   SIGKILL while the snapshotter runs, and again while it is down: each time
 *   a new container starts and reads every layer;
 * - image A removed (`ctr image rm --sync`, containerd GC → Cleanup): A's
 *   daemon (dedicated) or API mount (shared) is gone, the cache files of A's
 *   own blob are deleted while the shared blobs stay and image B still runs;
 * - image B removed: no FUSE mount under the snapshotter root, no nydusd of
 *   ours, no snapshot directory and no blob cache file remain.
 *
 * Skips with a printed reason without root / containerd / runc / registry /
 * FUSE / built bins; fails instead under CI=true.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { ROOT } from '../support/cli';
import {
  busyboxLayer, isCI, makeTar, ociImage, shortTmp, skipUnlessContainerd, startContainerd, startSnapshotter, teardown,
  type Containerd, type SnapshotterProc,
} from '../support/containerd';
import { fuseMissing } from '../support/nydusd';
import { freePort, registryMissing, startRegistry, type Registry, putManifest } from '../support/registry';
import { sleep } from '../support/timing';
import { loadBootstrapFile } from '../../src/rafs/image';
import { cacheFileBlob } from '../../src/snapshotter/cache-gc';

function why(): string | undefined {
  const bins = ['bin/nydusify', 'bin/ctr-remote', 'bin/nydusd', 'dist/bin/nydusify.js', 'dist/bin/ctr-remote.js', 'dist/bin/nydusd.js'];
  const missing = bins.filter((b) => !fs.existsSync(path.join(ROOT, b)));
  if (missing.length) return `missing ${missing.join(', ')} (npx tsc -p .)`;
  return registryMissing() ?? fuseMissing() ?? undefined;
}

let skip = skipUnlessContainerd('snapshotter-lifecycle');
if (!skip) {
  const w = why();
  if (w) {
    if (isCI()) throw new Error(`snapshotter-lifecycle cannot run under CI: ${w}`);
    console.log(`SKIP snapshotter-lifecycle: ${w}`);
    skip = true;
  }
}

const top = skip ? '' : shortTmp('sl-');
let reg: Registry | undefined;
const IMG_A = () => `${reg!.host}/life/a:nydus`;
const IMG_B = () => `${reg!.host}/life/b:nydus`;
const SN = ['snapshots', '--snapshotter', 'nydus'];


async function pushAndConvert(repo: string, layers: Buffer[]): Promise<void> {
  const img = ociImage(layers);
  for (const b of img.blobs.values()) await reg!.pushBlob(repo, b);
  await putManifest(`http://${reg!.host}/v2/${repo}/manifests/latest`, img.manifest);
  const conv = spawnSync(path.join(ROOT, 'bin/nydusify'), [
    'convert', '--source', `${reg!.host}/${repo}:latest`, '--target', `${reg!.host}/${repo}:nydus`, '--plain-http',
    '--work-dir', path.join(top, `work-${repo.replace(/\W/g, '-')}`),
  ], { encoding: 'utf8', timeout: 120_000 });
  if (conv.status !== 0) throw new Error(`nydusify convert ${repo}: ${conv.stderr}${conv.stdout}`);
}

test.before(async () => {
  if (skip) return;
  reg = await startRegistry();
  const base = await busyboxLayer();
  const middle = await makeTar([
    { name: 'l2.txt', data: 'from the middle layer\n' },
    { name: 'gone.txt', data: 'deleted by the top layer of A\n' },
    { name: 'dir', type: 'directory' },
    { name: 'dir/keep.txt', data: 'kept in dir\n' },
    { name: 'big', data: Buffer.alloc(2 << 20, 0x5a) },
  ]);
  const topA = await makeTar([
    { name: 'l3.txt', data: 'from the top layer of A\n' },
    { name: '.wh.gone.txt', data: '' },
    { name: 'dir', type: 'directory' },
    { name: 'dir/l3.txt', data: 'A in dir\n' },
  ]);
  const topB = await makeTar([{ name: 'b.txt', data: 'from the top layer of B\n' }]);
  await pushAndConvert('life/a', [base, middle, topA]);
  await pushAndConvert('life/b', [base, middle, topB]);
});

test.after(async () => {
  if (skip) return;
  await reg?.stop();
  fs.rmSync(top, { recursive: true, force: true });
});

// ---------------------------------------------------------------- helpers

const READ_A = 'cat /l2.txt /l3.txt /dir/keep.txt /dir/l3.txt; test -e /gone.txt && echo gone.txt present || echo gone.txt absent; stat -c %s /big; ls /bin/busybox';
const WANT_A = `from the middle layer\nfrom the top layer of A\nkept in dir\nA in dir\ngone.txt absent\n${2 << 20}\n/bin/busybox\n`;
const READ_B = 'cat /l2.txt /b.txt; test -e /gone.txt && echo gone.txt present || echo gone.txt absent';
const WANT_B = 'from the middle layer\nfrom the top layer of B\ngone.txt present\n';

let runSeq = 0;
function run(c: Containerd, sn: SnapshotterProc, image: string, script: string): string {
  const r = c.ctr(['run', '--rm', '--snapshotter', 'nydus', image, `life-${++runSeq}`, '/bin/sh', '-c', script], { allowFail: true, timeoutMs: 90_000 });
  assert.is(r.status, 0, `ctr run ${image}: ${r.stderr}\n---- snapshotter\n${sn.log().slice(-5000)}`);
  return r.stdout;
}

function rpull(c: Containerd, sn: SnapshotterProc, image: string): void {
  const r = spawnSync(path.join(ROOT, 'bin/ctr-remote'), ['-a', c.address, '-n', c.namespace, 'image', 'rpull', '--plain-http', '--snapshotter', 'nydus', image], { encoding: 'utf8', timeout: 120_000 });
  assert.is(r.status, 0, `ctr-remote rpull ${image}: ${r.stderr}${r.stdout}\n${sn.log().slice(-3000)}`);
}

/** Live (non-zombie) processes whose command line mentions `<root>/socket/` (our nydusd). */
function ourNydusd(root: string): number[] {
  const out: number[] = [];
  for (const pid of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes(`${root}/socket/`)) continue;
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z') continue;
      out.push(Number(pid));
    } catch { /* gone */ }
  }
  return out;
}

const fuseMountsUnder = (root: string): string[] =>
  fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4]?.startsWith(root) && / - fuse/.test(l));

/** Blob ids of every committed bootstrap under the snapshotter root. */
function bootstrapBlobs(root: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const snaps = path.join(root, 'snapshots');
  for (const id of fs.existsSync(snaps) ? fs.readdirSync(snaps) : []) {
    const boot = path.join(snaps, id, 'fs', 'image', 'image.boot');
    if (fs.existsSync(boot)) out.set(id, loadBootstrapFile(boot).sb.blobs.map((b) => b.blobId));
  }
  return out;
}

const cacheBlobs = (cache: string): Set<string> =>
  new Set((fs.existsSync(cache) ? fs.readdirSync(cache) : []).map((n) => cacheFileBlob(n)?.[0]).filter((x): x is string => !!x));

/** Start the snapshotter again and wait until containerd's proxy connection to it is back (grpc backoff). */
async function restartSnapshotter(dir: string, toml: string, c: Containerd): Promise<SnapshotterProc> {
  const sn = await startSnapshotter(dir, toml);
  let last = '';
  for (let i = 0; i < 100; i++) {
    const r = c.ctr(SN.concat('ls'), { allowFail: true });
    if (r.status === 0) return sn;
    last = r.stderr;
    await sleep(200);
  }
  throw new Error(`containerd does not reach the restarted snapshotter: ${last}\n${sn.log().slice(-3000)}`);
}

async function until(what: string, cond: () => boolean, sn: SnapshotterProc, ms = 30_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}\n---- snapshotter\n${sn.log().slice(-5000)}`);
    await sleep(200);
  }
}

function snToml(dir: string, mode: string): string {
  const tpl = path.join(dir, 'nydusd-config.json');
  fs.writeFileSync(tpl, JSON.stringify({
    device: { backend: { type: 'registry', config: { scheme: 'http', timeout: 10, connect_timeout: 5 } }, cache: { type: 'blobcache', config: {} } },
    mode: 'direct', digest_validate: false, enable_xattr: true, fs_prefetch: { enable: false },
  }));
  return `daemon_mode = "${mode}"\n[daemon]\nnydusd_config = "${tpl}"\nrecover_policy = "restart"\n[metrics]\naddress = "127.0.0.1:${metricsPort}"\n`;
}

let metricsPort = 0;

function getText(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let b = '';
      res.on('data', (d) => { b += d; });
      res.on('end', () => resolve(b));
    }).on('error', reject);
  });
}

// ---------------------------------------------------------------- the lifecycle, per mode

async function lifecycle(mode: 'dedicated' | 'shared'): Promise<void> {
  const dir = path.join(top, mode.slice(0, 3));
  fs.mkdirSync(dir, { recursive: true });
  metricsPort = await freePort();
  const toml = snToml(dir, mode);
  let sn: SnapshotterProc | undefined;
  let c: Containerd | undefined;
  try {
    sn = await startSnapshotter(dir, toml);
    c = await startContainerd(path.join(dir, 'c'), sn.address);
    const root = sn.root;
    const cache = path.join(root, 'cache');
    const snap = (): SnapshotterProc => sn!;

    // pull + run A: every layer readable, the whiteout honoured
    rpull(c, sn, IMG_A());
    assert.is(run(c, sn, IMG_A(), READ_A), WANT_A);
    const afterA = bootstrapBlobs(root);
    assert.is(afterA.size, 1, 'one meta snapshot');
    const blobsA = [...afterA.values()][0];
    assert.is(blobsA.length, 3, `three data blobs in A's bootstrap: ${blobsA}`);
    assert.is(ourNydusd(root).length, 1, 'one nydusd');
    assert.is(fuseMountsUnder(root).length, 1, 'one FUSE mount');
    if (mode === 'shared') {
      assert.is(fuseMountsUnder(root)[0].split(' ')[4], `${root}/mnt`, 'the shared daemon is mounted at <root>/mnt');
      assert.ok(fs.readdirSync(`${root}/mnt`).length === 1, 'one image mounted through the API');
      const cmd = fs.readFileSync(`/proc/${ourNydusd(root)[0]}/cmdline`, 'utf8').split('\0');
      assert.not.ok(cmd.includes('--bootstrap') || cmd.includes('--config'), `shared argv: ${cmd.join(' ')}`);
    }
    for (const b of blobsA) assert.ok(cacheBlobs(cache).has(b), `cache files of blob ${b} after reading every layer`);

    // restart the snapshotter: the nydusd is re-adopted, a running container keeps reading, new ones start
    const pid0 = ourNydusd(root)[0];
    c.ctr(['run', '-d', '--snapshotter', 'nydus', IMG_A(), 'life-bg', '/bin/sh', '-c', 'sleep 600']);
    await sn.stop();
    sn = await restartSnapshotter(dir, toml, c);
    assert.equal(ourNydusd(root), [pid0], 'nydusd outlived the snapshotter and was re-adopted');
    assert.is(c.ctr(['task', 'exec', '--exec-id', 'e1', 'life-bg', '/bin/sh', '-c', READ_A]).stdout, WANT_A, 'the running container reads through the same nydusd');
    c.ctr(['task', 'kill', '-s', 'SIGKILL', 'life-bg']);
    for (let i = 0; i < 50 && c.ctr(['task', 'rm', 'life-bg'], { allowFail: true }).status !== 0; i++) await sleep(100);
    c.ctr(['container', 'rm', 'life-bg']);
    assert.is(run(c, snap(), IMG_A(), READ_A), WANT_A);

    // kill -9 nydusd while the snapshotter runs: restarted (same argv), container reads again
    process.kill(pid0, 'SIGKILL');
    assert.is(run(c, snap(), IMG_A(), READ_A), WANT_A);
    const pid1 = ourNydusd(root);
    assert.is(pid1.length, 1);
    assert.is.not(pid1[0], pid0);

    // kill -9 nydusd while the snapshotter is down: recovery at start-up
    await sn.stop();
    process.kill(pid1[0], 'SIGKILL');
    sn = await restartSnapshotter(dir, toml, c);
    assert.is(run(c, snap(), IMG_A(), READ_A), WANT_A);
    assert.is(ourNydusd(root).length, 1);
    assert.is(fuseMountsUnder(root).length, 1, 'dead FUSE mounts were cleared');

    // image B shares the base and middle blobs with A
    rpull(c, snap(), IMG_B());
    assert.is(run(c, snap(), IMG_B(), READ_B), WANT_B);
    const both = bootstrapBlobs(root);
    assert.is(both.size, 2);
    const blobsB = [...both.entries()].find(([id]) => !afterA.has(id))![1];
    const shared = blobsA.filter((b) => blobsB.includes(b));
    const onlyA = blobsA.filter((b) => !blobsB.includes(b));
    assert.is(shared.length, 2, `A and B share base and middle blobs (A ${blobsA}, B ${blobsB})`);
    assert.is(ourNydusd(root).length, mode === 'shared' ? 1 : 2);

    // remove A: its daemon / API mount and its own blob go, the shared blobs and B stay
    c.ctr(['image', 'rm', '--sync', IMG_A()]);
    await until('A torn down', () => bootstrapBlobs(root).size === 1 && !onlyA.some((b) => cacheBlobs(cache).has(b)), snap());
    for (const b of shared) assert.ok(cacheBlobs(cache).has(b), `shared blob ${b} kept`);
    assert.is(ourNydusd(root).length, 1);
    assert.is(fuseMountsUnder(root).length, 1);
    if (mode === 'shared') assert.is(fs.readdirSync(`${root}/mnt`).length, 1, 'only B is mounted in the shared daemon');
    assert.is(run(c, snap(), IMG_B(), READ_B), WANT_B);

    // remove B: nothing of ours is left
    c.ctr(['image', 'rm', '--sync', IMG_B()]);
    await until('everything torn down', () =>
      ourNydusd(root).length === 0 && fuseMountsUnder(root).length === 0 && cacheBlobs(cache).size === 0 &&
      fs.readdirSync(path.join(root, 'snapshots')).length === 0, snap());
    assert.is(c.ctr([...SN, 'ls']).stdout.trim().split('\n').length, 1, 'no snapshot left');
    assert.equal(fs.existsSync(path.join(root, 'socket')) ? fs.readdirSync(path.join(root, 'socket')) : [], []);
    assert.equal(fs.existsSync(cache) ? fs.readdirSync(cache) : [], [], 'the cache dir is empty');
    // this snapshotter process deleted A's own blob, then the two shared ones and B's own
    const metrics = await getText(`http://127.0.0.1:${metricsPort}/v1/metrics`);
    assert.match(metrics, /\nsnapshotter_cache_blobs_deleted_total 4\n/);
    assert.match(metrics, /\nsnapshotter_cache_blob_deletion_errors_total 0\n/);
    assert.match(metrics, /\nnydusd_counts 0\n/);
    assert.not.ok(fs.existsSync(path.join(root, 'mnt')) && fs.readdirSync(path.join(root, 'mnt')).length > 0);
    await sleep(300);
    assert.match(snap().log(), /unused cache blobs deleted/);
  } finally {
    if (process.env.SN_E2E_LOG) fs.writeFileSync(`${process.env.SN_E2E_LOG}.${mode}`, `${sn?.log() ?? ''}\n---- containerd\n${c?.log() ?? ''}`);
    await teardown(dir, c, sn);
  }
}

test('dedicated mode: pull, run, snapshotter restart, kill -9 nydusd (up and down), shared-blob-safe GC, nothing left', async () => {
  if (skip) return;
  await lifecycle('dedicated');
});

test('shared mode: one nydusd with API mounts; pull, run, restart, kill -9 (up and down), shared-blob-safe GC, nothing left', async () => {
  if (skip) return;
  await lifecycle('shared');
});

test.run();
