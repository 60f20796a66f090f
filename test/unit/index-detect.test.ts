/**
 * Index detection (src/snapshotter/index-detect.ts): which index entry is the
 * Nydus alternative of a manifest (upstream's two markers, same platform),
 * the config key, and that layers without the CRI labels are never looked up.
 * The registry path (real containerd + docker-registry, no OCI layer
 * downloaded) is in test/e2e/snapshotter-containerd.test.ts.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { findNydusAlternative, IndexDetector } from '../../src/snapshotter/index-detect';
import { buildConfig } from '../../src/snapshotter/config';
import type { Descriptor, Index } from '../../src/remote/media-types';

const sha = (c: string) => `sha256:${c.repeat(64)}`;
const M = 'application/vnd.oci.image.manifest.v1+json';
const amd64 = { architecture: 'amd64', os: 'linux' };
const arm64 = { architecture: 'arm64', os: 'linux' };
const d = (c: string, platform?: Descriptor['platform'], extra: Partial<Descriptor> = {}): Descriptor => ({ mediaType: M, digest: sha(c), size: 1, ...(platform ? { platform } : {}), ...extra });

test('findNydusAlternative: artifactType or os.features, same platform only', () => {
  const merged: Index = { schemaVersion: 2, manifests: [d('a', amd64), d('b', arm64), d('c', arm64, { artifactType: 'application/vnd.nydus.image.manifest.v1+json' }), d('e', amd64, { artifactType: 'application/vnd.nydus.image.manifest.v1+json' })] };
  assert.is(findNydusAlternative(merged, sha('a'))?.digest, sha('e'));
  assert.is(findNydusAlternative(merged, sha('b'))?.digest, sha('c'));
  const legacy: Index = { schemaVersion: 2, manifests: [d('a', amd64), d('f', { ...amd64, 'os.features': ['nydus.remoteimage.v1'] })] };
  assert.is(findNydusAlternative(legacy, sha('a'))?.digest, sha('f'));
  assert.is(findNydusAlternative({ schemaVersion: 2, manifests: [d('a', amd64), d('b', arm64, { artifactType: 'application/vnd.nydus.image.manifest.v1+json' })] }, sha('a')), undefined, 'other platform');
  assert.is(findNydusAlternative(merged, sha('9')), undefined, 'original not in the index');
  assert.is(findNydusAlternative({ schemaVersion: 2, manifests: [d('a'), d('e', undefined, { artifactType: 'application/vnd.nydus.image.manifest.v1+json' })] }, sha('a')), undefined, 'original without platform');
  assert.is(findNydusAlternative({ schemaVersion: 2, manifests: [d('a', amd64)] }, sha('a')), undefined, 'a plain index');
});

test('enable_index_detect is read from [experimental] (default off)', () => {
  assert.is(buildConfig('version = 1\n', {}).experimental.enableIndexDetect, false);
  assert.is(buildConfig('version = 1\n[experimental]\nenable_index_detect = true\n', {}).experimental.enableIndexDetect, true);
  assert.throws(() => buildConfig('version = 1\n[experimental]\nenable_index_detect = "yes"\n', {}), /enable_index_detect/);
});

test('no lookup without the CRI labels or with a malformed manifest digest', async () => {
  const det = new IndexDetector();
  assert.is(await det.check({}), false);
  assert.is(await det.check({ 'containerd.io/snapshot/cri.image-ref': '127.0.0.1:1/x:y' }), false);
  assert.is(await det.check({ 'containerd.io/snapshot/cri.image-ref': '127.0.0.1:1/x:y', 'containerd.io/snapshot/cri.manifest-digest': 'sha256:zz' }), false);
  assert.is(await det.check({ 'containerd.io/snapshot/nydus-index-alternative': 'true' }), true, 'already marked');
  // an unreachable registry: no alternative, and the answer is not cached as "none"
  const labels = { 'containerd.io/snapshot/cri.image-ref': '127.0.0.1:1/x:y', 'containerd.io/snapshot/cri.manifest-digest': sha('a') };
  assert.is(await det.check(labels), false);
  assert.is((det as unknown as { cache: Map<string, unknown> }).cache.size, 0);
});

test.run();
