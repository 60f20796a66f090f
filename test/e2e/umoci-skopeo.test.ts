/**
 * Interop with the standard image tools: an OCI image built by umoci (files
 * added, changed and deleted across layers, a directory replaced, an opaque
 * directory through `umoci raw add-layer`, busybox-static to run) and pushed
 * by skopeo to Debian's docker-registry is converted by `nydusify convert`,
 * passes `nydusify check`, and
 *  - mounted with nydusd, equals the tree umoci itself unpacks from the
 *    source image (types, modes, owners, sizes, content, symlinks; mtimes
 *    aside), so deleted files are absent and every layer is applied;
 *  - pulled with `ctr-remote image rpull` into containerd 1.6 with our
 *    snapshotter, runs with `ctr run --snapshotter nydus` and prints files
 *    from every layer, while the registry log shows no data layer fetched.
 * Skipped with the reason when umoci/skopeo/registry/root/FUSE/containerd are
 * missing, except under CI=true where that fails.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, tmpdir } from '../support/cli';
import { fuseMissing, startNydusd } from '../support/nydusd';
import { registryMissing, startRegistry, type Registry } from '../support/registry';
import { diffTrees, treeRecords } from '../support/tree-digest';
import { containerdMissing, isCI, shortTmp, startContainerd, startSnapshotter, teardown } from '../support/containerd';

const BUSYBOX = '/bin/busybox';
const has = (bin: string) => spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;
const missing = (!has('umoci') ? 'umoci missing (apt-get install umoci)' : undefined)
  ?? (!has('skopeo') ? 'skopeo missing (apt-get install skopeo)' : undefined)
  ?? (fs.existsSync(BUSYBOX) ? undefined : `${BUSYBOX} missing (apt-get install busybox-static)`)
  ?? registryMissing() ?? fuseMissing();

const run = (cmd: string, args: string[], cwd?: string) => execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 180_000 });

let reg: Registry | undefined;
let work = '';
let source = '';
let target = '';
let refRoot = '';

/** Three layers with umoci; returns the rootfs umoci unpacks from the final image. */
function buildWithUmoci(dir: string): string {
  const layout = path.join(dir, 'oci');
  run('umoci', ['init', '--layout', layout]);
  run('umoci', ['new', '--image', `${layout}:img`]);
  // layer 1: busybox, files that later change or go, a directory later replaced, one later made opaque
  const b1 = path.join(dir, 'b1');
  run('umoci', ['unpack', '--image', `${layout}:img`, b1]);
  const r1 = path.join(b1, 'rootfs');
  for (const d of ['bin', 'etc', 'data', 'repl', 'opq']) fs.mkdirSync(path.join(r1, d), { recursive: true });
  fs.copyFileSync(BUSYBOX, path.join(r1, 'bin/busybox'));
  fs.chmodSync(path.join(r1, 'bin/busybox'), 0o755);
  fs.symlinkSync('busybox', path.join(r1, 'bin/sh'));
  fs.writeFileSync(path.join(r1, 'etc/motd'), 'layer one\n');
  fs.writeFileSync(path.join(r1, 'data/keep'), 'kept from layer one\n');
  fs.writeFileSync(path.join(r1, 'data/gone'), 'deleted in layer two\n');
  fs.writeFileSync(path.join(r1, 'repl/old'), 'old dir content\n');
  fs.writeFileSync(path.join(r1, 'opq/a'), 'hidden by an opaque dir\n');
  fs.writeFileSync(path.join(r1, 'opq/b'), 'hidden too\n');
  fs.writeFileSync(path.join(r1, 'data/owned'), 'owned\n');
  fs.chownSync(path.join(r1, 'data/owned'), 1000, 1000);
  fs.chmodSync(path.join(r1, 'data/owned'), 0o640);
  run('umoci', ['repack', '--image', `${layout}:img`, b1]);
  // layer 2: change, delete, replace a directory, add a big file
  const b2 = path.join(dir, 'b2');
  run('umoci', ['unpack', '--image', `${layout}:img`, b2]);
  const r2 = path.join(b2, 'rootfs');
  fs.writeFileSync(path.join(r2, 'etc/motd'), 'layer two wins\n');
  fs.rmSync(path.join(r2, 'data/gone'));
  fs.rmSync(path.join(r2, 'repl'), { recursive: true });
  fs.mkdirSync(path.join(r2, 'repl'));
  fs.writeFileSync(path.join(r2, 'repl/new'), 'new dir content\n');
  const big = Buffer.alloc(3 << 20);
  for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
  fs.writeFileSync(path.join(r2, 'data/big'), big);
  run('umoci', ['repack', '--image', `${layout}:img`, b2]);
  // layer 3: an opaque directory (umoci writes per-file whiteouts, so this layer is added raw)
  const l3 = path.join(dir, 'l3');
  fs.mkdirSync(path.join(l3, 'opq'), { recursive: true });
  fs.writeFileSync(path.join(l3, 'opq/.wh..wh..opq'), '');
  fs.writeFileSync(path.join(l3, 'opq/c'), 'only this survives in opq\n');
  const l3tar = path.join(dir, 'l3.tar');
  run('tar', ['-C', l3, '--owner=0', '--group=0', '-cf', l3tar, 'opq']);
  run('umoci', ['raw', 'add-layer', '--image', `${layout}:img`, l3tar]);
  run('umoci', ['config', '--image', `${layout}:img`, '--config.cmd', '/bin/sh']);
  // the reference: umoci's own application of the layers
  const ref = path.join(dir, 'ref');
  run('umoci', ['unpack', '--image', `${layout}:img`, ref]);
  return path.join(ref, 'rootfs');
}

test.before(async () => {
  if (missing) return;
  reg = await startRegistry();
  work = tmpdir('umoci-skopeo');
  refRoot = buildWithUmoci(work);
  source = `${reg.host}/interop/app:v1`;
  target = `${reg.host}/interop/app:v1-nydus`;
  run('skopeo', ['copy', '--dest-tls-verify=false', `oci:${path.join(work, 'oci')}:img`, `docker://${source}`]);
});

test.after(async () => {
  await reg?.stop();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

function nydusify(args: string[]): string {
  const r = spawnSync(path.join(ROOT, 'bin/nydusify'), ['--log-level', 'warn', ...args], { encoding: 'utf8', timeout: 300_000, env: { ...process.env, DOCKER_CONFIG: '/nonexistent-docker-config' } });
  assert.is(r.status, 0, `nydusify ${args.join(' ')}:\n${r.stdout}${r.stderr}`);
  return r.stdout + r.stderr;
}

test('umoci image pushed by skopeo: nydusify convert + check; nydusd mount equals umoci unpack', async () => {
  if (missing) {
    if (isCI()) assert.unreachable(`umoci/skopeo e2e cannot run under CI: ${missing}`);
    console.log(`SKIP umoci/skopeo e2e: ${missing}`);
    return;
  }
  nydusify(['convert', '--source', source, '--target', target, '--work-dir', path.join(work, 'conv')]);
  const cw = path.join(work, 'check');
  assert.match(nydusify(['check', '--source', source, '--target', target, '--work-dir', cw]), /check passed/);
  const boot = path.join(work, 'image.boot');
  fs.copyFileSync(path.join(cw, 'target/nydus_bootstrap/image/image.boot'), boot);
  const cfg = path.join(work, 'nydusd.json');
  fs.writeFileSync(cfg, JSON.stringify({
    version: 2,
    backend: { type: 'registry', registry: { scheme: 'http', host: reg!.host, repo: 'interop/app', timeout: 10, connect_timeout: 5 } },
    cache: { type: 'blobcache', filecache: { work_dir: path.join(work, 'cache') } },
  }));
  const mnt = path.join(work, 'mnt');
  const d = await startNydusd(mnt, ['--config', cfg, '--bootstrap', boot, '--log-level', 'warn']);
  try {
    assert.equal(diffTrees(treeRecords(refRoot), treeRecords(mnt)), [], 'the Nydus image differs from what umoci unpacks');
    assert.not.ok(fs.existsSync(path.join(mnt, 'data/gone')));
    assert.equal(fs.readdirSync(path.join(mnt, 'opq')), ['c']);
    assert.equal(fs.readdirSync(path.join(mnt, 'repl')), ['new']);
    assert.is(fs.readFileSync(path.join(mnt, 'etc/motd'), 'utf8'), 'layer two wins\n');
  } finally {
    await d.stop();
  }
});

test('the converted image runs under containerd 1.6 with ctr-remote + our snapshotter; no data layer is downloaded', async () => {
  if (missing) return;
  const why = containerdMissing();
  if (why) {
    if (isCI()) assert.unreachable(`umoci/skopeo containerd e2e cannot run under CI: ${why}`);
    console.log(`SKIP umoci/skopeo containerd e2e: ${why}`);
    return;
  }
  const dir = shortTmp('umo-');
  const tpl = path.join(dir, 'nydusd-config.json');
  fs.writeFileSync(tpl, JSON.stringify({
    device: { backend: { type: 'registry', config: { scheme: 'http', timeout: 10, connect_timeout: 5 } }, cache: { type: 'blobcache', config: {} } },
    mode: 'direct', digest_validate: false, enable_xattr: true, fs_prefetch: { enable: false },
  }));
  const sn = await startSnapshotter(dir, `[daemon]\nnydusd_config = "${tpl}"\nrecover_policy = "restart"\n`);
  const c = await startContainerd(dir, sn.address).catch(async (e) => { await teardown(dir, undefined, sn); throw e; });
  try {
    const mark = reg!.log().length;
    const pull = spawnSync(path.join(ROOT, 'bin/ctr-remote'), ['-a', c.address, '-n', c.namespace, 'image', 'rpull', '--plain-http', '--snapshotter', 'nydus', target], { encoding: 'utf8', timeout: 180_000 });
    assert.is(pull.status, 0, `ctr-remote rpull: ${pull.stderr}${pull.stdout}`);
    const r = c.ctr(['run', '--rm', '--snapshotter', 'nydus', target, `umo-${Date.now()}`, '/bin/sh', '-c',
      'cat /etc/motd /data/keep /repl/new /opq/c; ls /opq; test -e /data/gone || echo gone-absent; test -e /repl/old || echo old-absent; wc -c < /data/big'], { timeoutMs: 180_000 });
    assert.is(r.stdout, `layer two wins\nkept from layer one\nnew dir content\nonly this survives in opq\nc\ngone-absent\nold-absent\n${3 << 20}\n`);
    // the pull itself fetched no data layer: only manifests, the config and the bootstrap layer
    const blobGets = reg!.log().slice(mark).split('\n').filter((l) => /"GET \/v2\/interop\/app\/blobs\/sha256:/.test(l));
    const manifest = JSON.parse(execFileSync('curl', ['-sf', '-H', 'Accept: application/vnd.oci.image.manifest.v1+json', `http://${reg!.host}/v2/interop/app/manifests/v1-nydus`], { encoding: 'utf8' }));
    const dataLayers: string[] = manifest.layers.slice(0, -1).map((l: { digest: string }) => l.digest);
    const wholeDataGets = blobGets.filter((l) => dataLayers.some((dg) => l.includes(dg)) && !/ 206 /.test(l));
    assert.equal(wholeDataGets, [], 'no data layer was downloaded whole');
  } finally {
    c.ctr(['image', 'rm', '--sync', target], { allowFail: true });
    await teardown(dir, c, sn);
  }
});

test('--source-archive / --target-archive: skopeo oci-archive in, oci-archive out; skopeo reads the result and it mounts', async () => {
  if (missing) return;
  const srcTar = path.join(work, 'src.oci.tar');
  run('skopeo', ['copy', `oci:${path.join(work, 'oci')}:img`, `oci-archive:${srcTar}:v1`]);
  const dstTar = path.join(work, 'nydus.oci.tar');
  nydusify(['convert', '--source', 'localhost/interop/app:v1', '--source-archive', srcTar, '--target', 'localhost/interop/app:v1-nydus', '--target-archive', dstTar, '--work-dir', path.join(work, 'conv-archive')]);
  // skopeo understands the archive; push it on to the registry and mount what it pushed
  const inspect = JSON.parse(run('skopeo', ['inspect', '--raw', `oci-archive:${dstTar}`]));
  assert.is(inspect.layers[inspect.layers.length - 1].annotations['containerd.io/snapshot/nydus-bootstrap'], 'true');
  const pushed = `${reg!.host}/interop/archived:v1`;
  run('skopeo', ['copy', '--dest-tls-verify=false', `oci-archive:${dstTar}`, `docker://${pushed}`]);
  const cw = path.join(work, 'check-archive');
  assert.match(nydusify(['check', '--source', source, '--target', pushed, '--work-dir', cw]), /check passed/);
  // a hostile archive: no oci-layout, a path outside blobs/: a clear error, nothing written outside the work dir
  const bad = path.join(work, 'bad.tar');
  fs.mkdirSync(path.join(work, 'badsrc'), { recursive: true });
  fs.writeFileSync(path.join(work, 'badsrc', 'index.json'), '{"manifests":[]}');
  run('tar', ['-C', path.join(work, 'badsrc'), '-cf', bad, 'index.json']);
  const r = spawnSync(path.join(ROOT, 'bin/nydusify'), ['convert', '--source', 'localhost/x:1', '--source-archive', bad, '--target', 'localhost/x:2', '--target-archive', path.join(work, 'never.tar'), '--work-dir', path.join(work, 'conv-bad')], { encoding: 'utf8' });
  assert.is.not(r.status, 0);
  assert.match(r.stderr + r.stdout, /no oci-layout/);
  assert.not.ok(fs.existsSync(path.join(work, 'never.tar')));
});

test.run();
