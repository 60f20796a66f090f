/**
 * nydusify end to end against Debian's docker-registry: a small three-layer
 * OCI image (busybox-static, changed / deleted files, an opaque dir, a
 * metadata-only layer; test/support/oci-image.ts) is pushed with our client,
 * `nydusify convert` makes a Nydus image in the same registry, and
 *  - the target manifest has the Nydus layout (blob layers + bootstrap layer,
 *    media types, annotations, diff_ids);
 *  - `nydusify check --source --target` passes (manifest, bootstrap, and the
 *    FUSE-mounted image against the source layers);
 *  - the image mounted with nydusd (registry backend) reads every file of the
 *    merged source tree byte for byte, and deleted files are absent;
 *  - altered targets fail check: a target converted from a different source,
 *    a manifest without the bootstrap annotation, a config whose last diff_id
 *    is wrong;
 *  - `nydusify copy` keeps the manifest digest, also through `file://` OCI
 *    archives (save, then load into another repository);
 *  - `--batch-size` images (small files in batch chunks) pass check;
 *  - `--merge-platform` writes upstream's merged index (rewritten OCI manifest
 *    with the empty layer, Nydus manifest with artifactType) that check
 *    accepts on both sides;
 *  - behind htpasswd with credentials from $DOCKER_CONFIG, a Docker v2 source
 *    converts (`--target-suffix`) to a Docker-typed Nydus manifest that checks.
 * Skipped with the reason when docker-registry, root/FUSE or busybox-static
 * are missing, except under CI=true where that fails.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, tmpdir } from '../support/cli';
import { fuseMissing, startNydusd } from '../support/nydusd';
import { BUSYBOX, pushTestImage, type TestImage } from '../support/oci-image';
import { registryMissing, startRegistry, type Registry } from '../support/registry';
import { RegistryClient, sha256Digest } from '../../src/remote/client';
import { gunzipSync } from 'node:zlib';
import { Annotation, MediaType, type Descriptor, type ImageConfig, type Manifest } from '../../src/remote/media-types';
import { parseReference } from '../../src/remote/reference';

const missing = registryMissing() ?? fuseMissing() ?? (fs.existsSync(BUSYBOX) ? undefined : `${BUSYBOX} missing (apt-get install busybox-static)`);
if (missing && process.env.CI === 'true') throw new Error(`nydusify e2e cannot run under CI: ${missing}`);

const BIN = path.join(ROOT, 'bin/nydusify');
const NOCREDS = '/nonexistent-docker-config';

function nydusify(args: string[], env: NodeJS.ProcessEnv = {}): { status: number | null; out: string } {
  const r = spawnSync(BIN, ['--log-level', 'warn', ...args], { encoding: 'utf8', env: { ...process.env, DOCKER_CONFIG: NOCREDS, ...env }, timeout: 180_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

function ok(args: string[], env: NodeJS.ProcessEnv = {}): string {
  const r = nydusify(args, env);
  assert.is(r.status, 0, `nydusify ${args.join(' ')} failed:\n${r.out}`);
  return r.out;
}

let reg: Registry | undefined;
let img: TestImage;
let work: string;
let src: string;
let dst: string;

test.before(async () => {
  if (missing) return;
  reg = await startRegistry();
  work = tmpdir('nydusify-e2e');
  src = `${reg.host}/src/app:v1`;
  dst = `${reg.host}/dst/app:v1-nydus`;
  img = await pushTestImage(src);
});

test.after(async () => {
  await reg?.stop();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

const client = () => new RegistryClient({ credentials: async () => undefined, plainHttp: true });

test('convert: Nydus manifest layout, annotations, diff_ids, --output-json', async () => {
  if (missing) { console.log(`skipped: ${missing}`); return; }
  const outJson = path.join(work, 'convert.json');
  ok(['convert', '--source', src, '--target', dst, '--work-dir', path.join(work, 'tmp'), '--output-json', outJson]);
  assert.not.ok(fs.existsSync(path.join(work, 'tmp')), 'a work dir nydusify created is removed');
  const metrics = JSON.parse(fs.readFileSync(outJson, 'utf8'));
  for (const k of ['SourceImageSize', 'TargetImageSize', 'SourcePullElapsed', 'ConversionElapsed', 'TargetPushElapsed']) assert.ok(metrics[k] > 0, k);
  const c = client();
  try {
    const ref = parseReference(dst);
    const m = await c.fetchManifest(ref);
    const man = m.json as unknown as Manifest;
    assert.is(man.mediaType, MediaType.OciManifest);
    assert.is(man.layers.length, 4, 'three blob layers + bootstrap');
    for (const l of man.layers.slice(0, 3)) {
      assert.is(l.mediaType, MediaType.NydusBlob);
      assert.equal(l.annotations, { [Annotation.NydusBlob]: 'true' });
    }
    const boot = man.layers[3];
    assert.is(boot.mediaType, MediaType.OciLayerGzip);
    assert.equal(boot.annotations, { [Annotation.NydusFsVersion]: '6', [Annotation.NydusBootstrap]: 'true' });
    assert.is(man.annotations?.[Annotation.NydusSourceDigest], img.manifestDigest);
    assert.is(man.annotations?.[Annotation.NydusSourceReference], src);
    const cfg = await c.fetchJson<ImageConfig>(ref, man.config);
    assert.equal(cfg.rootfs.diff_ids.slice(0, 3), man.layers.slice(0, 3).map((l) => l.digest));
    assert.is(cfg.history?.at(-1)?.comment, 'Nydus Bootstrap Layer');
    assert.equal(cfg.config, { Env: ['PATH=/bin'], Cmd: ['/bin/sh'], WorkingDir: '/', ArgsEscaped: true });
  } finally {
    await c.close();
  }
});

test('check --source --target passes; the mounted image reads every file byte for byte, deleted files absent', async () => {
  if (missing) { console.log(`skipped: ${missing}`); return; }
  const cw = path.join(work, 'check');
  const out = ok(['check', '--source', src, '--target', dst, '--work-dir', cw]);
  assert.match(out, /check passed: manifest, bootstrap, filesystem/);
  for (const f of ['target/nydus_manifest.json', 'target/nydus_config.json', 'source/oci_manifest.json', 'source/oci_config.json', 'target/nydus_bootstrap/image/image.boot']) {
    assert.ok(fs.existsSync(path.join(cw, f)), f);
  }
  assert.is(fs.readdirSync(path.join(cw, 'target/nydus_bootstrap/image')).filter((f) => f.endsWith('.blob.meta')).length, 2, 'blob.meta of the two layers with data');

  // mount on our own with nydusd and read everything
  const boot = path.join(work, 'image.boot');
  fs.copyFileSync(path.join(cw, 'target/nydus_bootstrap/image/image.boot'), boot);
  const cfg = path.join(work, 'nydusd.json');
  fs.writeFileSync(cfg, JSON.stringify({
    version: 2,
    backend: { type: 'registry', registry: { scheme: 'http', host: reg!.host, repo: 'dst/app', timeout: 10, connect_timeout: 5 } },
    cache: { type: 'blobcache', filecache: { work_dir: path.join(work, 'cache') } },
    rafs: { mode: 'direct', validate: true },
  }));
  fs.mkdirSync(path.join(work, 'cache'));
  const mnt = path.join(work, 'mnt');
  const d = await startNydusd(mnt, ['--config', cfg, '--bootstrap', boot, '--log-level', 'warn']);
  try {
    const seen = new Set<string>();
    const walk = (rel: string) => {
      for (const n of fs.readdirSync(path.join(mnt, rel))) {
        const r = rel ? `${rel}/${n}` : n;
        seen.add(r);
        if (fs.lstatSync(path.join(mnt, r)).isDirectory()) walk(r);
      }
    };
    walk('');
    assert.equal([...seen].sort(), [...img.expected.keys()].sort(), 'exactly the merged source tree');
    for (const [p, want] of img.expected) {
      const abs = path.join(mnt, p);
      const st = fs.lstatSync(abs);
      if (Buffer.isBuffer(want)) {
        assert.ok(st.isFile(), p);
        assert.ok(fs.readFileSync(abs).equals(want), `${p}: content differs`);
      } else if (want === 'dir') assert.ok(st.isDirectory(), p);
      else if (want === 'fifo') assert.ok(st.isFIFO(), p);
      else assert.is(fs.readlinkSync(abs), want.symlink, p);
    }
    for (const p of img.deleted) assert.not.ok(fs.existsSync(path.join(mnt, p)), `${p} must be absent`);
    const secret = fs.statSync(path.join(mnt, 'data/secret'));
    assert.equal([secret.mode & 0o7777, secret.uid, secret.gid], [0o600, 1000, 1000]);
    assert.is(fs.statSync(path.join(mnt, 'data/hard')).ino, fs.statSync(path.join(mnt, 'data/keep.txt')).ino, 'hardlink kept');
    const bb = spawnSync(path.join(mnt, 'bin/busybox'), ['echo', 'busybox runs'], { encoding: 'utf8' });
    assert.is(bb.stdout.trim(), 'busybox runs');
  } finally {
    await d.stop();
  }
});

test('check fails on altered targets: another source, no bootstrap annotation, wrong diff_id', async () => {
  if (missing) { console.log(`skipped: ${missing}`); return; }
  // a target converted from a source where one file differs
  const other = `${reg!.host}/src/app:other`;
  await pushTestImage(other, { variant: 'b' });
  const altered = `${reg!.host}/dst/app:altered`;
  ok(['convert', '--source', other, '--target', altered, '--work-dir', path.join(work, 'tmp2')]);
  let r = nydusify(['check', '--source', src, '--target', altered, '--work-dir', path.join(work, 'check2')]);
  assert.is(r.status, 1, r.out);
  assert.match(r.out, /check failed: filesystem: .*differs from its source/s);
  assert.match(r.out, /\/variant\.txt: sha256 differs/);
  assert.match(r.out, /\/big\.bin: sha256 differs/, 'random content differs too');

  const c = client();
  try {
    const ref = parseReference(dst);
    const m = await c.fetchManifest(ref);
    const man = m.json as unknown as Manifest;
    // manifest without the bootstrap annotation
    const noBoot = JSON.parse(JSON.stringify(man)) as Manifest;
    delete noBoot.layers[3].annotations![Annotation.NydusBootstrap];
    await c.pushManifest(ref, 'nobootstrap', MediaType.OciManifest, Buffer.from(JSON.stringify(noBoot)));
    r = nydusify(['check', '--target', `${reg!.host}/dst/app:nobootstrap`, '--work-dir', path.join(work, 'check3')]);
    assert.is(r.status, 1, r.out);
    assert.match(r.out, /check failed: manifest: the last layer of the target is not a Nydus bootstrap layer/);
    // config whose last diff_id is not the bootstrap tar's digest
    const cfg = await c.fetchJson<ImageConfig>(ref, man.config);
    cfg.rootfs.diff_ids[3] = `sha256:${'0'.repeat(64)}`;
    const cb = Buffer.from(JSON.stringify(cfg));
    const cd = { mediaType: MediaType.OciConfig, digest: sha256Digest(cb), size: cb.length };
    await c.pushBlob(ref, cd, () => cb);
    await c.pushManifest(ref, 'baddiff', MediaType.OciManifest, Buffer.from(JSON.stringify({ ...man, config: cd })));
    r = nydusify(['check', '--target', `${reg!.host}/dst/app:baddiff`, '--work-dir', path.join(work, 'check4')]);
    assert.is(r.status, 1, r.out);
    assert.match(r.out, /check failed: bootstrap: the bootstrap layer's tar digest .* is not the last diff_id/);
  } finally {
    await c.close();
  }
});

test('copy keeps the manifest digest', async () => {
  if (missing) { console.log(`skipped: ${missing}`); return; }
  ok(['copy', '--source', dst, '--target', `${reg!.host}/copied/app:v1`]);
  const c = client();
  try {
    const a = await c.resolve(parseReference(dst));
    const b = await c.resolve(parseReference(`${reg!.host}/copied/app:v1`));
    assert.is(b.digest, a.digest);
  } finally {
    await c.close();
  }
});

test('copy through file:// OCI archives (save, load) keeps the digest', async () => {
  if (missing) { console.log(`skipped: ${missing}`); return; }
  const tar = path.join(work, 'saved.tar');
  const cw = path.join(work, 'copy-work');
  ok(['copy', '--source', dst, '--target', `file://${tar}`, '--work-dir', cw]);
  assert.not.ok(fs.existsSync(cw), 'a work dir nydusify created is removed');
  const list = spawnSync('tar', ['-tf', tar], { encoding: 'utf8' }).stdout.split('\n');
  assert.ok(list.includes('oci-layout') && list.includes('index.json'), list.join(','));
  const index = JSON.parse(spawnSync('tar', ['-xOf', tar, 'index.json'], { encoding: 'utf8' }).stdout);
  assert.is(index.manifests[0].annotations['org.opencontainers.image.ref.name'], 'v1-nydus');
  ok(['copy', '--source', `file://${tar}`, '--target', `${reg!.host}/fromfile/app:v2`]);
  const c = client();
  try {
    const a = await c.resolve(parseReference(dst));
    assert.is(index.manifests[0].digest, a.digest);
    const b = await c.resolve(parseReference(`${reg!.host}/fromfile/app:v2`));
    assert.is(b.digest, a.digest);
  } finally {
    await c.close();
  }
  const bad = nydusify(['copy', '--source', `file://${path.join(work, 'nonexistent.tar')}`, '--target', `${reg!.host}/x/y:z`]);
  assert.is(bad.status, 1);
  assert.match(bad.out, /is not a file/);
});

test('--batch-size: small files batched (v6), check reads them through the registry backend; v5 refused', async () => {
  if (missing) { console.log(`skipped: ${missing}`); return; }
  const batched = `${reg!.host}/batched/app:v1`;
  ok(['convert', '--source', src, '--target', batched, '--batch-size', '0x10000', '--work-dir', path.join(work, 'tmp-batch')]);
  const out = ok(['check', '--source', src, '--target', batched, '--work-dir', path.join(work, 'check-batch')]);
  assert.match(out, /check passed: manifest, bootstrap, filesystem/);
  const bad = nydusify(['convert', '--source', src, '--target', `${batched}-v5`, '--batch-size', '0x10000', '--fs-version', '5']);
  assert.is(bad.status, 1);
  assert.match(bad.out, /conflicts with `--fs-version 5`/);
  const big = nydusify(['convert', '--source', src, '--target', `${batched}-big`, '--batch-size', '0x200000']);
  assert.is(big.status, 1);
  assert.match(big.out, /bigger than chunk size/);
});

test('--merge-platform: one index with the rewritten OCI manifest (empty layer first) and the Nydus manifest; check passes on both sides', async () => {
  if (missing) { console.log(`skipped: ${missing}`); return; }
  const merged = `${reg!.host}/merged/app:v1`;
  ok(['convert', '--source', src, '--target', merged, '--merge-platform', '--work-dir', path.join(work, 'tmp-merge')]);
  const c = client();
  try {
    const ref = parseReference(merged);
    const top = await c.fetchManifest(ref);
    const idx = JSON.parse(top.bytes.toString('utf8'));
    assert.is(idx.schemaVersion, 2);
    assert.not.ok('mediaType' in idx, 'upstream writes the merged index without a mediaType field');
    assert.is(idx.manifests.length, 2);
    const [ociDesc, nydusDesc] = idx.manifests as Descriptor[];
    const arch = process.arch === 'x64' ? 'amd64' : process.arch;
    assert.equal(ociDesc.platform, { architecture: arch, os: 'linux' }, 'platform taken from the source config');
    assert.is(ociDesc.annotations?.[Annotation.NydusSourceDigest], img.manifestDigest);
    assert.is(ociDesc.artifactType, undefined);
    assert.is(nydusDesc.artifactType, MediaType.NydusManifestArtifact);
    assert.equal(nydusDesc.platform, ociDesc.platform);
    // the OCI side: the source manifest with the empty layer prepended
    const oci = (await c.fetchManifest(ref, ociDesc.digest)).json as unknown as Manifest;
    const srcMan = (await c.fetchManifest(parseReference(src))).json as unknown as Manifest;
    assert.is(oci.layers.length, srcMan.layers.length + 1);
    assert.equal(oci.layers.slice(1), srcMan.layers);
    assert.equal(oci.layers[0], {
      mediaType: MediaType.OciLayerGzip, digest: 'sha256:4f4fb700ef54461cfa02571ae0db9a0dc1e0cdb5577484a6d75e68dc38e8acc1', size: 32,
      annotations: { 'containerd.io/snapshot/nydus-empty-layer': 'true' },
    });
    assert.is(oci.annotations?.[Annotation.NydusSourceDigest], img.manifestDigest);
    const empty = await c.fetchBlobBytes(ref, oci.layers[0]);
    const tar = gunzipSync(empty);
    assert.equal(tar, Buffer.alloc(1024), 'the empty layer is an empty tar');
    const ocfg = await c.fetchJson<ImageConfig>(ref, oci.config);
    const scfg = await c.fetchJson<ImageConfig>(parseReference(src), srcMan.config);
    assert.equal(ocfg.rootfs.diff_ids, [sha256Digest(tar), ...scfg.rootfs.diff_ids]);
    assert.equal(ocfg.history?.[0], { created_by: 'Nydus Converter', comment: 'Nydus Empty Layer' });
    // the source layers were copied into the target repository
    for (const l of srcMan.layers) assert.is(await c.blobSize(ref, l.digest), l.size);
    // the Nydus side: config typed so plain containerd skips it
    const nm = (await c.fetchManifest(ref, nydusDesc.digest)).json as unknown as Manifest;
    assert.is(nm.config.mediaType, MediaType.NydusConfig);
    assert.is(nm.layers.at(-1)?.annotations?.[Annotation.NydusBootstrap], 'true');
  } finally {
    await c.close();
  }
  // check takes the Nydus entry as the target and the OCI entry (with its empty layer) as the source
  const out = ok(['check', '--source', merged, '--target', merged, '--work-dir', path.join(work, 'check-merged')]);
  assert.match(out, /check passed: manifest, bootstrap, filesystem/);
  ok(['check', '--source', src, '--target', merged, '--work-dir', path.join(work, 'check-merged2')]);
});

test('htpasswd registry, credentials from $DOCKER_CONFIG, Docker v2 source, --target-suffix', async () => {
  if (missing) { console.log(`skipped: ${missing}`); return; }
  const authReg = await startRegistry({ user: 'alice', pass: 'wonderland' });
  try {
    const dcfg = tmpdir('docker-config');
    fs.writeFileSync(path.join(dcfg, 'config.json'), JSON.stringify({ auths: { [authReg.host]: { auth: authReg.auth } } }));
    const env = { DOCKER_CONFIG: dcfg };
    // the helper pushes anonymously: push through a client with the same credentials
    const s = `${authReg.host}/docker/app:v2`;
    const prev = process.env.DOCKER_CONFIG;
    process.env.DOCKER_CONFIG = dcfg;
    try {
      await pushTestImageWithCreds(s);
    } finally {
      if (prev === undefined) delete process.env.DOCKER_CONFIG; else process.env.DOCKER_CONFIG = prev;
    }
    const denied = nydusify(['convert', '--source', s, '--target-suffix', '-nydus', '--work-dir', path.join(work, 'tmp3')]);
    assert.is(denied.status, 1, 'no credentials: refused');
    ok(['convert', '--source', s, '--target-suffix', '-nydus', '--work-dir', path.join(work, 'tmp3')], env);
    const t = `${authReg.host}/docker/app:v2-nydus`;
    const c = new RegistryClient({ plainHttp: true, credentials: async () => ({ username: 'alice', password: 'wonderland' }) });
    try {
      const m = (await c.fetchManifest(parseReference(t))).json as unknown as Manifest;
      assert.is(m.mediaType, MediaType.DockerManifest);
      assert.is(m.config.mediaType, MediaType.DockerConfig);
      assert.is(m.layers[0].mediaType, MediaType.NydusBlob, 'an OCI-typed blob inside a Docker manifest');
      assert.is(m.layers.at(-1)!.mediaType, MediaType.DockerLayerGzip);
    } finally {
      await c.close();
    }
    assert.match(ok(['check', '--source', s, '--target', t, '--work-dir', path.join(work, 'check5')], env), /check passed: manifest, bootstrap, filesystem/);
  } finally {
    await authReg.stop();
  }
});

/** pushTestImage through a registry that wants credentials (taken from $DOCKER_CONFIG). */
async function pushTestImageWithCreds(ref: string): Promise<void> {
  await pushTestImage(ref, { docker: true, useDockerConfig: true });
}

test.run();
