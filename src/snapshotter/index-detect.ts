/**
 * Index detection (`[experimental] enable_index_detect`, upstream
 * pkg/index + snapshot/process.go): an image pulled through the OCI entry of
 * a `nydusify convert --merge-platform` index is served lazily from the
 * index's Nydus alternative.
 *
 * - At the Prepare of a layer (labels `cri.image-ref` and
 *   `cri.manifest-digest`, which ctr-remote / CRI pass), `check` resolves the
 *   reference, finds the original manifest in the index, then an entry of the
 *   same platform marked Nydus (`artifactType` application/vnd.nydus.image.
 *   manifest.v1+json or `os.features` nydus.remoteimage.v1) whose last layer
 *   is a Nydus bootstrap layer. When there is one, the snapshotter commits the
 *   layer at once with `containerd.io/snapshot/nydus-index-alternative: "true"`
 *   and answers AlreadyExists: no OCI layer is downloaded.
 * - At the Prepare/View/Mounts of a container snapshot whose nearest such
 *   ancestor has no bootstrap yet, `fetchMetadata` downloads the bootstrap
 *   layer and unpacks `image/image.boot` (and the v6 blob.meta files) into
 *   that snapshot's `fs/` (via a temporary dir, renamed in place), which then
 *   serves as the image's meta snapshot.
 * Answers are cached per manifest digest (at most MAX_CACHED entries, oldest
 * dropped) and concurrent checks of one digest share one lookup.
 * Differences from upstream: a lookup that failed on the network is not
 * cached as "no alternative" (upstream caches it for the process lifetime);
 * credentials come from the pull labels or the docker config (no CRI
 * keychain); the bootstrap lands in `fs/image/image.boot` (upstream
 * `fs/image.boot`; both are read).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { log } from '../common/log';
import { type Credentials, getCredentials } from '../remote/docker-config';
import { RegistryClient } from '../remote/client';
import { Annotation, type Descriptor, type Index, type Manifest, MediaType, isIndexType } from '../remote/media-types';
import { platformMatches } from '../remote/platform';
import { parseReference } from '../remote/reference';
import { readBootstrapLayer } from '../converter/bootstrap-layer';
import { CRI_MANIFEST_DIGEST, PULL_SECRET, PULL_USERNAME, imageRefOf, isIndexAlternative } from './labels';

export const MAX_CACHED = 500;
const DIGEST = /^sha256:[a-f0-9]{64}$/;

/** Whether an index entry is a Nydus manifest (upstream's two markers). */
export const isNydusIndexEntry = (d: Descriptor): boolean =>
  d.artifactType === MediaType.NydusManifestArtifact || !!d.platform?.['os.features']?.includes('nydus.remoteimage.v1');

/** The Nydus alternative of manifest `original` in `index`: same platform, a Nydus marker. */
export function findNydusAlternative(index: Index, original: string): Descriptor | undefined {
  const orig = (index.manifests ?? []).find((d) => d.digest === original);
  if (!orig?.platform) return undefined;
  return index.manifests.find((d) => d.digest !== original && isNydusIndexEntry(d) && platformMatches(d.platform, [orig.platform!]));
}

export class IndexDetector {
  /** manifest digest → bootstrap layer descriptor of its alternative, or null (none) */
  private readonly cache = new Map<string, Descriptor | null>();
  private readonly inflight = new Map<string, Promise<Descriptor | undefined>>();

  constructor(private readonly o: { insecure?: boolean; env?: NodeJS.ProcessEnv } = {}) {}

  private client(labels: Record<string, string>): RegistryClient {
    const u = labels[PULL_USERNAME];
    const p = labels[PULL_SECRET];
    const creds: Credentials | undefined = u && p ? { username: u, password: p } : undefined;
    return new RegistryClient({ insecure: this.o.insecure, credentials: async (domain) => creds ?? getCredentials(domain, this.o.env) });
  }

  /** The bootstrap layer of the Nydus alternative of the layer's image, if it has one. */
  async alternative(labels: Record<string, string>): Promise<Descriptor | undefined> {
    const ref = imageRefOf(labels);
    const digest = labels[CRI_MANIFEST_DIGEST];
    if (!ref || !digest || !DIGEST.test(digest)) return undefined;
    if (this.cache.has(digest)) return this.cache.get(digest) ?? undefined;
    let p = this.inflight.get(digest);
    if (!p) {
      p = this.lookup(ref, digest, labels).finally(() => this.inflight.delete(digest));
      this.inflight.set(digest, p);
    }
    return p;
  }

  private remember(digest: string, v: Descriptor | null): void {
    this.cache.delete(digest);
    this.cache.set(digest, v);
    if (this.cache.size > MAX_CACHED) this.cache.delete(this.cache.keys().next().value as string);
  }

  private async lookup(refText: string, digest: string, labels: Record<string, string>): Promise<Descriptor | undefined> {
    const c = this.client(labels);
    try {
      const ref = parseReference(refText);
      const top = await c.fetchManifest(ref);
      if (!isIndexType(top.descriptor.mediaType)) { this.remember(digest, null); return undefined; }
      const alt = findNydusAlternative(top.json as unknown as Index, digest);
      if (!alt) { this.remember(digest, null); return undefined; }
      const m = (await c.fetchManifest(ref, alt.digest)).json as unknown as Manifest;
      const last = Array.isArray(m.layers) ? m.layers[m.layers.length - 1] : undefined;
      if (!last || last.annotations?.[Annotation.NydusBootstrap] !== 'true' || !DIGEST.test(String(last.digest))) {
        log.warn({ ref: refText, manifest: alt.digest }, 'index detection: the Nydus entry has no bootstrap layer');
        this.remember(digest, null);
        return undefined;
      }
      this.remember(digest, last);
      log.info({ ref: refText, manifest: digest, nydus: alt.digest }, 'index detection: Nydus alternative found');
      return last;
    } catch (e) {
      log.warn({ ref: refText, manifest: digest, err: String(e) }, 'index detection failed');
      return undefined;
    } finally {
      await c.close().catch(() => undefined);
    }
  }

  /** Whether the layer is (or was already marked as) part of an image with a Nydus alternative. */
  async check(labels: Record<string, string>): Promise<boolean> {
    return isIndexAlternative(labels) || (await this.alternative(labels)) !== undefined;
  }

  /** Make `<snapshotDir>/fs/image/image.boot` the alternative's bootstrap (no-op when present). */
  async fetchMetadata(labels: Record<string, string>, snapshotDir: string): Promise<void> {
    const fsDir = path.join(snapshotDir, 'fs');
    if (fs.existsSync(path.join(fsDir, 'image', 'image.boot'))) return;
    const layer = await this.alternative(labels);
    if (!layer) throw new Error(`no Nydus alternative for image ${imageRefOf(labels) ?? '?'} (manifest ${labels[CRI_MANIFEST_DIGEST] ?? '?'})`);
    const tmp = fs.mkdtempSync(path.join(fsDir, '.index-alt-'));
    const c = this.client(labels);
    try {
      const { hasBootstrap } = await readBootstrapLayer(await c.fetchBlob(parseReference(imageRefOf(labels)!), layer), tmp);
      if (!hasBootstrap) throw new Error(`bootstrap layer ${layer.digest} has no image/image.boot`);
      if (!fs.existsSync(path.join(fsDir, 'image', 'image.boot'))) {
        fs.rmSync(path.join(fsDir, 'image'), { recursive: true, force: true });
        fs.renameSync(path.join(tmp, 'image'), path.join(fsDir, 'image'));
      }
      log.info({ snapshot: path.basename(snapshotDir), layer: layer.digest }, 'index detection: bootstrap fetched');
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
      await c.close().catch(() => undefined);
    }
  }
}
