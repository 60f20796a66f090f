/**
 * ctr-remote image rpull against Debian's containerd 1.6 (started here on
 * private sockets, with its own root/state and a `nydus` proxy plugin) and
 * Debian's docker-registry:
 *  - a plain OCI image (two gzip tar layers built here, busybox-static as
 *    /bin/busybox) pulled with `--snapshotter overlayfs` (containerd's own)
 *    runs with `ctr run` and prints the top layer's file; labels on the
 *    content and on the snapshots are containerd's view, read with ctr and
 *    with our client; a second pull downloads no layer;
 *  - an htpasswd registry: `--user` works, a wrong password fails clearly;
 *  - a Nydus image (converted here with bin/nydusify) pulled with
 *    `--snapshotter nydus`: the registry's access log shows that only the
 *    manifest, the config and the bootstrap layer were fetched, never a
 *    data blob; then `ctr run --snapshotter nydus` reads the file through
 *    nydusd. This part needs the Nydus snapshotter (`startNydusSnapshotter`
 *    is the hook) and is skipped with a printed reason until it runs.
 * Skipped with a printed reason without root, containerd, runc or the
 * registry; under CI=true a missing prerequisite fails instead.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import { ROOT } from '../support/cli';
import { makeTar } from '../support/containerd';
import { registryMissing, startRegistry, type Registry } from '../support/registry';
import { sleep } from '../support/timing';
import { RegistryClient } from '../../src/remote/client';
import { MediaType, type Descriptor } from '../../src/remote/media-types';
import { parseReference } from '../../src/remote/reference';
import { ContainerdClient } from '../../src/snapshotter/containerd-client';
import { chainIds } from '../../src/snapshotter/rpull';

const CTR_REMOTE = path.join(ROOT, 'bin/ctr-remote');
const BUSYBOX = '/bin/busybox';
const FILE_TEXT = 'hello from the top layer of a ctr-remote image\n';

function missing(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (containerd, mounts)';
  for (const b of ['containerd', 'ctr', 'runc', 'containerd-shim-runc-v2']) {
    if (spawnSync('sh', ['-c', `command -v ${b}`]).status !== 0) return `${b} not installed (apt-get install containerd runc)`;
  }
  if (!fs.existsSync(BUSYBOX) || spawnSync('sh', ['-c', `file -L ${BUSYBOX} | grep -q static || ldd ${BUSYBOX} 2>&1 | grep -q 'not a dynamic'`]).status !== 0) return 'busybox-static not installed';
  if (!fs.existsSync(path.join(ROOT, 'dist/bin/ctr-remote.js'))) return 'not built (npm run build)';
  return registryMissing();
}

// ---------------------------------------------------------------- processes

interface Run { code: number | null; out: string; err: string }

function runCmd(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { if (out.length < 1 << 20) out += d; });
    p.stderr.on('data', (d) => { if (err.length < 1 << 20) err += d; });
    const t = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    p.on('close', (code) => { clearTimeout(t); resolve({ code, out, err }); });
  });
}

async function waitSocket(sock: string, proc: ChildProcess, what: string, logOf: () => string): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${what} exited (${proc.exitCode}): ${logOf().slice(-3000)}`);
    const ok = await new Promise<boolean>((r) => {
      const s = net.connect(sock, () => { s.destroy(); r(true); });
      s.on('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() - t0 > 20_000) throw new Error(`${what} did not start: ${logOf().slice(-3000)}`);
    await sleep(100);
  }
}

async function stopProc(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const done = new Promise<void>((r) => p.once('exit', () => r()));
  p.kill('SIGTERM');
  const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
  await done;
  clearTimeout(t);
}

interface Containerd { dir: string; sock: string; nydusSock: string; log(): string; ctr(args: string[]): Promise<Run>; stop(): Promise<void> }

/**
 * containerd 1.6 on private sockets (short paths: unix sockets are limited
 * to 108 bytes), CRI and unused snapshotters disabled, `nydus` as a proxy
 * snapshotter on `<dir>/nydus.sock` (containerd connects lazily, so it may
 * start later).
 */
async function startContainerd(dir = fs.mkdtempSync('/tmp/ctrr-')): Promise<Containerd> {
  const sock = path.join(dir, 'c.sock');
  const nydusSock = path.join(dir, 'nydus.sock');
  fs.writeFileSync(path.join(dir, 'config.toml'), [
    'version = 2',
    `root = "${dir}/root"`,
    `state = "${dir}/state"`,
    'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]',
    '[grpc]', `  address = "${sock}"`,
    '[ttrpc]', `  address = "${sock}.ttrpc"`,
    '[debug]', '  level = "info"',
    '[plugins."io.containerd.internal.v1.opt"]', `  path = "${dir}/opt"`,
    '[proxy_plugins.nydus]', '  type = "snapshot"', `  address = "${nydusSock}"`,
    '',
  ].join('\n'));
  const logFile = path.join(dir, 'containerd.log');
  const fd = fs.openSync(logFile, 'a');
  const proc = spawn('containerd', ['--config', path.join(dir, 'config.toml')], { stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  const logOf = () => { try { return fs.readFileSync(logFile, 'utf8'); } catch { return ''; } };
  await waitSocket(sock, proc, 'containerd', logOf);
  return {
    dir, sock, nydusSock, log: logOf,
    ctr: (args) => runCmd('ctr', ['-a', sock, ...args]),
    async stop() {
      // containers are run with --rm; unmount whatever is left under our root before removing it
      await stopProc(proc);
      spawnSync('sh', ['-c', `grep -o " ${dir}[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l`]);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Hook: start the Nydus snapshotter in `dir` (socket `<dir>/nydus.sock`,
 * before containerd: containerd's proxy client backs off for a long time
 * after failed dials), then containerd; or say why not. Until
 * test/support/containerd.ts provides a tested starter, this runs our
 * bin/containerd-nydus-grpc with a registry backend template (plain HTTP).
 */
async function startNydusSnapshotter(): Promise<{ cd: Containerd; stop(): Promise<void> } | string> {
  const bin = path.join(ROOT, 'bin/containerd-nydus-grpc');
  if (!fs.existsSync(path.join(ROOT, 'dist/bin/containerd-nydus-grpc.js'))) return 'the Nydus snapshotter (bin/containerd-nydus-grpc) is not built yet';
  const dir = fs.mkdtempSync('/tmp/ctrn-');
  const cd = { dir, nydusSock: path.join(dir, 'nydus.sock') };
  const root = path.join(cd.dir, 'nydus');
  fs.mkdirSync(root, { recursive: true });
  const tmpl = path.join(cd.dir, 'nydusd-config.json');
  fs.writeFileSync(tmpl, JSON.stringify({
    device: {
      backend: { type: 'registry', config: { scheme: 'http', skip_verify: true, timeout: 10, connect_timeout: 10, retry_limit: 2 } },
      cache: { type: 'blobcache', config: { work_dir: path.join(root, 'cache') } },
    },
    mode: 'direct', digest_validate: false, iostats_files: false, enable_xattr: true,
  }));
  const logFile = path.join(cd.dir, 'nydus-snapshotter.log');
  const fd = fs.openSync(logFile, 'a');
  const proc = spawn(bin, ['--root', root, '--address', cd.nydusSock, '--nydusd-config', tmpl, '--log-level', 'info', '--log-to-stdout'], { stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  const logOf = () => { try { return fs.readFileSync(logFile, 'utf8'); } catch { return ''; } };
  try {
    await waitSocket(cd.nydusSock, proc, 'containerd-nydus-grpc', logOf);
  } catch (e) {
    await stopProc(proc);
    fs.rmSync(dir, { recursive: true, force: true });
    return `the Nydus snapshotter does not start: ${(e as Error).message.slice(0, 500)}`;
  }
  const ctd = await startContainerd(dir);
  const stop = async () => { await stopProc(proc); await ctd.stop(); };
  // containerd reaches it: a dummy Prepare as upstream's readiness probe
  const probe = await ctd.ctr(['snapshots', '--snapshotter', 'nydus', 'prepare', `probe-${Date.now()}`, '']);
  if (probe.code !== 0) {
    const l = logOf();
    await stop();
    return `the Nydus snapshotter does not answer containerd: ${probe.err.slice(0, 500)} ${l.slice(-1000)}`;
  }
  return { cd: ctd, stop };
}

// ---------------------------------------------------------------- the test image


const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface PushedImage { ref: string; manifest: string; config: string; layers: Descriptor[]; diffIds: string[] }

/** Two gzip layers: busybox + /file (old text), then /file (FILE_TEXT) + /etc/motd. */
async function pushImage(ref: string, user?: { username: string; password: string }): Promise<PushedImage> {
  const r = parseReference(ref);
  const c = new RegistryClient({ plainHttp: true, credentials: async () => user, pushRetries: 0 });
  try {
    const tars = [
      await makeTar([{ name: 'bin/', type: 'directory' }, { name: 'bin/busybox', data: fs.readFileSync(BUSYBOX), mode: 0o755 }, { name: 'bin/sh', type: 'symlink', linkname: 'busybox', mode: 0o777 }, { name: 'file', data: 'old text\n' }]),
      await makeTar([{ name: 'file', data: FILE_TEXT }, { name: 'etc/', type: 'directory' }, { name: 'etc/motd', data: 'ctr-remote e2e\n' }]),
    ];
    const layers: Descriptor[] = [];
    for (const t of tars) {
      const gz = gzipSync(t);
      const d: Descriptor = { mediaType: MediaType.OciLayerGzip, digest: sha(gz), size: gz.length };
      await c.pushBlob(r, d, () => gz);
      layers.push(d);
    }
    const diffIds = tars.map(sha);
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: ['PATH=/bin'], Cmd: ['/bin/sh'] }, rootfs: { type: 'layers', diff_ids: diffIds } }));
    const cd: Descriptor = { mediaType: MediaType.OciConfig, digest: sha(config), size: config.length };
    await c.pushBlob(r, cd, () => config);
    const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config: cd, layers }));
    const digest = await c.pushManifest(r, r.tag!, MediaType.OciManifest, manifest);
    return { ref, manifest: digest, config: cd.digest, layers, diffIds };
  } finally {
    await c.close();
  }
}

/** Access-log lines of GETs of any blob, as digests (docker-registry logs one line per request). */
function blobGetDigests(log: string, since = 0): string[] {
  return log.slice(since).split('\n').filter((l) => l.includes('"GET /v2/')).map((l) => /\/blobs\/(sha256:[a-f0-9]{64})/.exec(l)?.[1]).filter((d): d is string => !!d);
}

// ---------------------------------------------------------------- tests

const why = missing();
if (why && process.env.CI === 'true') {
  test('ctr-remote e2e prerequisites', () => { assert.unreachable(`ctr-remote e2e cannot run under CI: ${why}`); });
} else if (why) {
  console.log(`skip ctr-remote e2e: ${why}`);
} else {
  let cd: Containerd;
  let reg: Registry;

  test.before(async () => {
    if (process.arch !== 'x64') throw new Error('the test image is linux/amd64');
    cd = await startContainerd();
    reg = await startRegistry();
  });
  test.after(async () => {
    await reg?.stop();
    await cd?.stop();
  });

  test('rpull --snapshotter overlayfs of a plain OCI image, then ctr run prints the top layer file', async () => {
    const img = await pushImage(`${reg.host}/e2e/plain:v1`);
    const before = reg.log().length;
    const r = await runCmd(CTR_REMOTE, ['-a', cd.sock, 'image', 'rpull', '--plain-http', '--snapshotter', 'overlayfs', img.ref]);
    assert.is(r.code, 0, `ctr-remote failed: ${r.err}\n${r.out}`);
    assert.match(r.out, new RegExp(`resolved ${img.ref.replace(/\./g, '\\.')}: manifest ${img.manifest} \\(OCI image, 2 layers\\)`));
    assert.match(r.out, /layer 1 sha256:[a-f0-9]{64}: unpacked/);
    assert.match(r.out, /layer 2 sha256:[a-f0-9]{64}: unpacked/);
    // every blob fetched exactly once
    assert.equal(blobGetDigests(reg.log(), before).sort(), [img.config, ...img.layers.map((l) => l.digest)].sort());

    // containerd's view: image record, committed snapshots with the CRI labels, content labels
    const ls = await cd.ctr(['images', 'ls', '-q']);
    assert.ok(ls.out.split('\n').includes(img.ref), ls.out);
    const chain = chainIds(img.diffIds);
    const info = await cd.ctr(['snapshots', '--snapshotter', 'overlayfs', 'info', chain[1]]);
    assert.is(info.code, 0, info.err);
    const snap = JSON.parse(info.out) as { Kind: string; Parent: string; Labels: Record<string, string> };
    assert.is(snap.Parent, chain[0]);
    assert.is(snap.Labels['containerd.io/snapshot/cri.image-ref'], img.ref);
    assert.is(snap.Labels['containerd.io/snapshot/cri.layer-digest'], img.layers[1].digest);
    assert.is(snap.Labels['containerd.io/snapshot/cri.manifest-digest'], img.manifest);
    assert.is(snap.Labels['containerd.io/snapshot.ref'], chain[1]);
    const client = new ContainerdClient({ address: cd.sock });
    try {
      const man = await client.contentInfo(img.manifest);
      assert.is(man.labels['containerd.io/gc.ref.content.config'], img.config);
      assert.is(man.labels['containerd.io/gc.ref.content.l.1'], img.layers[1].digest);
      assert.is(man.labels[`containerd.io/distribution.source.${reg.host}`], 'e2e/plain');
      const cfg = await client.contentInfo(img.config);
      assert.is(cfg.labels['containerd.io/gc.ref.snapshot.overlayfs'], chain[1]);
      const l0 = await client.contentInfo(img.layers[0].digest);
      assert.is(l0.labels['containerd.io/uncompressed'], img.diffIds[0]);
    } finally {
      client.close();
    }

    // containerd agrees the image is unpacked: ctr run does not unpack again
    const run = await cd.ctr(['run', '--snapshotter', 'overlayfs', '--rm', img.ref, `ctrr-${Date.now()}`, '/bin/busybox', 'cat', '/file']);
    assert.is(run.code, 0, `ctr run failed: ${run.err}`);
    assert.is(run.out, FILE_TEXT);

    // a second rpull finds everything in place and downloads no blob but the config
    const mark = reg.log().length;
    const r2 = await runCmd(CTR_REMOTE, ['--address', cd.sock, 'images', 'rpull', '--plain-http', '--snapshotter', 'overlayfs', img.ref]);
    assert.is(r2.code, 0, r2.err);
    assert.match(r2.out, /layer 2 sha256:[a-f0-9]{64}: already unpacked/);
    assert.match(r2.out, /unchanged/);
    assert.equal(blobGetDigests(reg.log(), mark), [img.config], 'a second pull fetches the config only');
  });

  test('rpull errors are clear: unknown image, unreachable containerd, unknown snapshotter', async () => {
    const nf = await runCmd(CTR_REMOTE, ['-a', cd.sock, 'image', 'rpull', '--plain-http', '--snapshotter', 'overlayfs', `${reg.host}/e2e/none:v1`]);
    assert.is(nf.code, 1);
    assert.match(nf.err, /^ctr-remote: resolve .*e2e\/none:v1: .*(manifest unknown|not found)/m);
    const img = await pushImage(`${reg.host}/e2e/plain:v2`);
    const nc = await runCmd(CTR_REMOTE, ['-a', path.join(cd.dir, 'nope.sock'), 'image', 'rpull', '--plain-http', img.ref]);
    assert.is(nc.code, 1);
    assert.match(nc.err, /cannot connect to containerd at .*nope\.sock/);
    const ns = await runCmd(CTR_REMOTE, ['-a', cd.sock, 'image', 'rpull', '--plain-http', '--snapshotter', 'nosuch', img.ref]);
    assert.is(ns.code, 1);
    assert.match(ns.err, /^ctr-remote: layer 0: stat snapshot sha256:[a-f0-9]{64} of snapshotter nosuch: .*snapshotter not loaded: nosuch/m, ns.err);
  });

  test('rpull --user against an htpasswd registry; a wrong password fails', async () => {
    const sec = await startRegistry({ user: 'puller', pass: 's3cret' });
    try {
      const img = await pushImage(`${sec.host}/e2e/private:v1`, { username: 'puller', password: 's3cret' });
      const bad = await runCmd(CTR_REMOTE, ['-a', cd.sock, 'image', 'rpull', '--plain-http', '--snapshotter', 'overlayfs', '--user', 'puller:wrong', img.ref], { env: { ...process.env, DOCKER_CONFIG: path.join(cd.dir, 'no-docker-config') } });
      assert.is(bad.code, 1);
      assert.match(bad.err, /401|unauthori[sz]ed|denied/i);
      const ok = await runCmd(CTR_REMOTE, ['-a', cd.sock, '-n', 'private', 'image', 'rpull', '--plain-http', '--snapshotter', 'overlayfs', '-u', 'puller:s3cret', img.ref]);
      assert.is(ok.code, 0, ok.err);
      const run = await cd.ctr(['-n', 'private', 'run', '--snapshotter', 'overlayfs', '--rm', img.ref, `ctrr-${Date.now()}`, '/bin/busybox', 'cat', '/etc/motd']);
      assert.is(run.code, 0, run.err);
      assert.is(run.out, 'ctr-remote e2e\n');
    } finally {
      await sec.stop();
    }
  });

  test('rpull --snapshotter nydus of a Nydus image fetches manifest, config and bootstrap only; ctr run reads through nydusd', async () => {
    const src = await pushImage(`${reg.host}/e2e/app:v1`);
    const target = `${reg.host}/e2e/app:nydus`;
    const conv = await runCmd(path.join(ROOT, 'bin/nydusify'), ['convert', '--plain-http', '--source', src.ref, '--target', target], { timeoutMs: 300_000 });
    assert.is(conv.code, 0, `nydusify convert: ${conv.err}`);
    // what nydusify made: data layers + bootstrap (last)
    const rc = new RegistryClient({ plainHttp: true });
    const m = await rc.fetchManifest(parseReference(target));
    await rc.close();
    const layers = (m.json as { layers: Descriptor[] }).layers;
    const bootstrap = layers[layers.length - 1];
    assert.is(bootstrap.annotations?.['containerd.io/snapshot/nydus-bootstrap'], 'true');
    const data = layers.filter((l) => l.annotations?.['containerd.io/snapshot/nydus-blob'] === 'true');
    assert.ok(data.length > 0);

    const sn = await startNydusSnapshotter();
    if (typeof sn === 'string') {
      if (process.env.CI === 'true') assert.unreachable(sn);
      console.log(`skip the Nydus part of the ctr-remote e2e: ${sn}`);
      return;
    }
    const ncd = sn.cd;
    try {
      const before = reg.log().length;
      const r = await runCmd(CTR_REMOTE, ['-a', ncd.sock, 'image', 'rpull', '--plain-http', target], { timeoutMs: 180_000 });
      assert.is(r.code, 0, `ctr-remote failed: ${r.err}\n${r.out}`);
      assert.match(r.out, /Nydus image/);
      for (let i = 1; i < layers.length; i++) assert.match(r.out, new RegExp(`layer ${i} sha256:[a-f0-9]{64}: remote`));
      assert.match(r.out, new RegExp(`layer ${layers.length} ${bootstrap.digest}: unpacked`));
      const gets = blobGetDigests(reg.log(), before);
      assert.equal(gets.sort(), [(m.json as { config: Descriptor }).config.digest, bootstrap.digest].sort(), 'only the config and the bootstrap layer are fetched');
      for (const d of data) assert.not.ok(gets.includes(d.digest), `data blob ${d.digest} fetched`);

      const run = await ncd.ctr(['run', '--snapshotter', 'nydus', '--rm', target, `ctrr-${Date.now()}`, '/bin/busybox', 'cat', '/file']);
      assert.is(run.code, 0, `ctr run (nydus) failed: ${run.err}`);
      assert.is(run.out, FILE_TEXT);
    } finally {
      await sn.stop();
    }
  });
}

test.run();
