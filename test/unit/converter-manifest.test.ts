/**
 * Nydus manifest / config / index rewriting (nydusify-snapshotter §2.1,
 * rafs-spec §5) against fixtures built here: media types for Docker v2 and
 * OCI sources with and without --oci, layer and manifest annotations,
 * diff_ids and history, subject (--with-referrer), Go-style compact JSON, the
 * bootstrap layer tar and the overlay model check compares against.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import * as tarStream from 'tar-stream';
import { Annotation, MediaType, type Descriptor, type Manifest } from '../../src/remote/media-types';
import {
  EMPTY_LAYER_DIFF_ID, EMPTY_LAYER_GZIP, bootstrapDescriptor, bootstrapMediaType, goJson, isNydusManifest, mergedIndex, nydusBlobDescriptor,
  prependEmptyLayer, rewriteConfig, rewriteIndex, rewriteManifest,
} from '../../src/converter/manifest';
import { writeBootstrapLayer } from '../../src/converter/bootstrap-layer';
import { applyLayerTar, diffTrees, type TreeEntry } from '../../src/converter/check';
import { sha256Digest } from '../../src/remote/client';
import { tmpdir } from '../support/cli';

const dg = (c: string) => `sha256:${c.repeat(64)}`;

function source(docker: boolean): { m: Manifest; desc: Descriptor } {
  const m: Manifest = {
    schemaVersion: 2,
    mediaType: docker ? MediaType.DockerManifest : MediaType.OciManifest,
    config: { mediaType: docker ? MediaType.DockerConfig : MediaType.OciConfig, digest: dg('c'), size: 100 },
    layers: [{ mediaType: docker ? MediaType.DockerLayerGzip : MediaType.OciLayerGzip, digest: dg('1'), size: 10 }],
    annotations: { 'org.example': 'kept' },
  };
  return { m, desc: { mediaType: m.mediaType!, digest: dg('e'), size: 500, platform: { os: 'linux', architecture: 'amd64' } } };
}

function build(docker: boolean, oci: boolean, withReferrer = false) {
  const { m, desc } = source(docker);
  const blob = nydusBlobDescriptor(dg('a'), 1234);
  const boot = bootstrapDescriptor(bootstrapMediaType(desc.mediaType, oci), dg('b'), 77, dg('d'), 6);
  return rewriteManifest({
    source: m, sourceType: desc.mediaType, sourceDescriptor: desc, sourceReference: 'docker.io/library/x:latest',
    layers: [blob, boot], config: { digest: dg('f'), size: 321 }, oci, fsVersion: 6, builderVersion: 'v9', withReferrer,
  });
}

test('Docker v2 source without --oci: Docker manifest/config/bootstrap types, Nydus blob type kept, annotations written', () => {
  const { mediaType, manifest } = build(true, false);
  assert.is(mediaType, MediaType.DockerManifest);
  assert.is(manifest.mediaType, MediaType.DockerManifest);
  assert.is(manifest.config.mediaType, MediaType.DockerConfig);
  assert.equal(manifest.config, { mediaType: MediaType.DockerConfig, digest: dg('f'), size: 321 });
  const [blob, boot] = manifest.layers;
  assert.equal(blob, { mediaType: MediaType.NydusBlob, digest: dg('a'), size: 1234, annotations: { [Annotation.NydusBlob]: 'true' } }, 'uncompressed annotation removed');
  assert.equal(boot, {
    mediaType: MediaType.DockerLayerGzip, digest: dg('b'), size: 77,
    annotations: { [Annotation.NydusFsVersion]: '6', [Annotation.NydusBootstrap]: 'true' },
  });
  assert.equal(manifest.annotations, {
    'org.example': 'kept',
    [Annotation.NydusSourceDigest]: dg('e'),
    [Annotation.NydusSourceReference]: 'docker.io/library/x:latest',
    [Annotation.NydusFsVersion]: '6',
    [Annotation.NydusBuilderVersion]: 'v9',
  });
  assert.ok(isNydusManifest(manifest));
  assert.is(manifest.subject, undefined);
});

test('Docker v2 source with --oci, and OCI source: OCI types throughout', () => {
  for (const [docker, oci] of [[true, true], [false, false], [false, true]] as const) {
    const { mediaType, manifest } = build(docker, oci);
    assert.is(mediaType, MediaType.OciManifest);
    assert.is(manifest.config.mediaType, MediaType.OciConfig);
    assert.is(manifest.layers[1].mediaType, MediaType.OciLayerGzip);
    assert.is(manifest.layers[0].mediaType, MediaType.NydusBlob);
  }
});

test('--with-referrer: subject is the source descriptor without its platform', () => {
  const { manifest } = build(false, false, true);
  assert.equal(manifest.subject, { mediaType: MediaType.OciManifest, digest: dg('e'), size: 500 });
});

test('config: diff_ids from the layers, Nydus history entry, legacy Image id dropped, rest kept', () => {
  const src = {
    architecture: 'amd64', os: 'linux',
    config: { Env: ['A=1'], Image: dg('9'), ArgsEscaped: true },
    container_config: { Image: dg('8'), Cmd: ['x'] },
    rootfs: { type: 'layers', diff_ids: [dg('1')] },
    history: [{ created_by: 'RUN x' }],
    extra: { keep: true },
  };
  const blob = nydusBlobDescriptor(dg('a'), 1);
  const boot = bootstrapDescriptor(MediaType.OciLayerGzip, dg('b'), 2, dg('d'), 5);
  const out = rewriteConfig(src, [blob, boot]);
  assert.equal(out.rootfs, { type: 'layers', diff_ids: [dg('a'), dg('d')] });
  assert.equal(out.history, [{ created_by: 'RUN x' }, { created_by: 'Nydus Converter', comment: 'Nydus Bootstrap Layer' }]);
  assert.equal(out.config, { Env: ['A=1'], ArgsEscaped: true });
  assert.equal(out.container_config, { Cmd: ['x'] });
  assert.equal(out.extra, { keep: true });
  assert.equal(src.rootfs.diff_ids, [dg('1')], 'source untouched');
  assert.is(boot.annotations![Annotation.NydusFsVersion], '5');
});

test('index: Docker list kept without --oci, OCI with it; descriptors keep platforms', () => {
  const ms: Descriptor[] = [
    { mediaType: MediaType.DockerManifest, digest: dg('1'), size: 1, platform: { os: 'linux', architecture: 'amd64' } },
    { mediaType: MediaType.DockerManifest, digest: dg('2'), size: 2, platform: { os: 'linux', architecture: 'arm64' } },
  ];
  const a = rewriteIndex({ schemaVersion: 2, manifests: [] }, MediaType.DockerManifestList, ms, false);
  assert.is(a.mediaType, MediaType.DockerManifestList);
  assert.equal(a.index.manifests[1].platform, { os: 'linux', architecture: 'arm64' });
  assert.is(rewriteIndex({ schemaVersion: 2, manifests: [] }, MediaType.DockerManifestList, ms, true).mediaType, MediaType.OciIndex);
});

test('goJson: compact with Go escaping; descriptor key order', () => {
  assert.is(goJson({ a: '<&>', b: [1] }).toString(), '{"a":"\\u003c\\u0026\\u003e","b":[1]}');
  const { manifest } = build(false, false);
  assert.match(goJson(manifest).toString(), /^\{"schemaVersion":2,"mediaType":"application\/vnd\.oci\.image\.manifest\.v1\+json","config":\{"mediaType":/);
});

test('bootstrap layer tar: image/, image/image.boot 0444, blob.meta per layer with chunks, digests', async () => {
  const dir = tmpdir('boot-layer');
  const file = path.join(dir, 'b.tar.gz');
  const boot = Buffer.from('bootstrap bytes');
  const meta = Buffer.alloc(8192, 1);
  const r = await writeBootstrapLayer(file, boot, [{ blobHex: 'a'.repeat(64), meta }, { blobHex: 'b'.repeat(64) }]);
  const gz = fs.readFileSync(file);
  assert.is(r.digest, sha256Digest(gz));
  assert.is(r.size, gz.length);
  const tar = gunzipSync(gz);
  assert.is(r.tarDigest, sha256Digest(tar));
  const ex = tarStream.extract();
  const seen: Array<[string, string, number, number]> = [];
  const done = (async () => { for await (const e of ex) { let n = 0; for await (const c of e) n += (c as Buffer).length; seen.push([e.header.name, e.header.type ?? '', e.header.mode ?? 0, n]); } })();
  Readable.from([tar]).pipe(ex);
  await done;
  assert.equal(seen, [
    ['image', 'directory', 0o755, 0],
    ['image/image.boot', 'file', 0o444, boot.length],
    [`image/${'a'.repeat(64)}.blob.meta`, 'file', 0o444, meta.length],
  ]);
});

async function tarBuf(entries: Array<{ name: string; type?: string; data?: string; mode?: number; linkname?: string }>): Promise<Buffer> {
  const p = tarStream.pack();
  const parts: Buffer[] = [];
  p.on('data', (c: unknown) => { parts.push(c as Buffer); });
  const end = new Promise<void>((r) => p.on('end', () => r()));
  for (const e of entries) {
    if (e.data !== undefined) p.entry({ name: e.name, mode: e.mode ?? 0o644 }, e.data);
    else p.entry({ name: e.name, type: (e.type ?? 'directory') as 'directory', mode: e.mode ?? 0o755, linkname: e.linkname });
  }
  p.finalize();
  await end;
  return Buffer.concat(parts);
}

test('check model: whiteouts, opaque dirs, hardlinks and implicit parents, layer by layer', async () => {
  const tree = new Map<string, TreeEntry>();
  await applyLayerTar(tree, Readable.from([await tarBuf([
    { name: 'a/', mode: 0o750 }, { name: 'a/x', data: 'x' }, { name: 'a/y', data: 'y' },
    { name: 'o/' }, { name: 'o/old', data: 'old' }, { name: 'o/sub/' }, { name: 'o/sub/f', data: 'f' },
    { name: 'h', type: 'link', linkname: 'a/x' },
  ])]));
  await applyLayerTar(tree, Readable.from([await tarBuf([
    { name: 'a/.wh.y', data: '' }, { name: 'o/new', data: 'new' }, { name: 'o/.wh..wh..opq', data: '' },
    { name: 'n/e/w', data: 'w' },
  ])]));
  assert.equal([...tree.keys()].sort(), ['a', 'a/x', 'h', 'n', 'n/e', 'n/e/w', 'o', 'o/new']);
  assert.is(tree.get('a')!.mode, 0o750, 'an implicit parent keeps the lower dir (overlay)');
  assert.is(tree.get('h')!.sha256, tree.get('a/x')!.sha256);
  const other = new Map(tree);
  other.set('o/new', { ...tree.get('o/new')!, sha256: '0'.repeat(64) });
  other.delete('h');
  other.set('extra', { type: 'f', mode: 0o644, uid: 0, gid: 0, size: 0 });
  assert.equal(diffTrees(tree, other).sort(), ['/extra: only in the Nydus image', '/h: missing in the Nydus image', `/o/new: sha256 differs: source ${tree.get('o/new')!.sha256}, nydus ${'0'.repeat(64)}`].sort());
  assert.equal(diffTrees(tree, new Map(tree)), []);
});

test('--merge-platform: the empty layer is Go\'s gzip of an empty tar; the OCI rewrite and the merged index', () => {
  assert.is(sha256Digest(EMPTY_LAYER_GZIP), 'sha256:4f4fb700ef54461cfa02571ae0db9a0dc1e0cdb5577484a6d75e68dc38e8acc1');
  const tar = gunzipSync(EMPTY_LAYER_GZIP);
  assert.equal(tar, Buffer.alloc(1024));
  assert.is(sha256Digest(tar), EMPTY_LAYER_DIFF_ID);
  for (const docker of [false, true]) {
    const { m, desc } = source(docker);
    const cfg = { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [dg('f')] }, history: [{ created_by: 'x' }] };
    const r = prependEmptyLayer(m, desc, cfg);
    const out = JSON.parse(r.manifest.bytes.toString()) as Manifest;
    assert.is(r.manifest.descriptor.digest, sha256Digest(r.manifest.bytes));
    assert.is(out.layers[0].mediaType, docker ? MediaType.DockerLayerGzip : MediaType.OciLayerGzip);
    assert.equal(out.layers.slice(1), m.layers);
    assert.is(out.config.mediaType, docker ? MediaType.DockerConfig : MediaType.OciConfig);
    assert.is(out.config.digest, sha256Digest(r.config.bytes));
    assert.equal(out.annotations, { 'org.example': 'kept', [Annotation.NydusSourceDigest]: desc.digest });
    const c = JSON.parse(r.config.bytes.toString());
    assert.equal(c.rootfs.diff_ids, [EMPTY_LAYER_DIFF_ID, dg('f')]);
    assert.equal(c.history, [{ created_by: 'Nydus Converter', comment: 'Nydus Empty Layer' }, { created_by: 'x' }]);
    assert.equal(cfg.rootfs.diff_ids, [dg('f')], 'the source config is not modified');
    assert.equal(r.manifest.descriptor.platform, desc.platform);
    assert.is(r.manifest.descriptor.annotations?.[Annotation.NydusSourceDigest], desc.digest);
  }
  const idx = mergedIndex([{ mediaType: MediaType.OciManifest, digest: dg('1'), size: 1, platform: { architecture: 'amd64', os: 'linux' } }], [{ mediaType: MediaType.OciManifest, digest: dg('2'), size: 2 }]);
  assert.is(idx.toString(), `{"schemaVersion":2,"manifests":[{"mediaType":"${MediaType.OciManifest}","digest":"${dg('1')}","size":1,"platform":{"architecture":"amd64","os":"linux"}},` +
    `{"mediaType":"${MediaType.OciManifest}","digest":"${dg('2')}","size":2,"platform":{"architecture":"","os":""},"artifactType":"${MediaType.NydusManifestArtifact}"}]}`);
});

test.run();
