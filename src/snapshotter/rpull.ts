/**
 * `ctr-remote image rpull`: pull an image into containerd 1.6 through its
 * gRPC API so that a remote snapshotter (nydus) can serve it lazily.
 *
 * containerd 1.6's own `ctr image pull` fetches every blob into the content
 * store and unpacks with only the layer annotations and
 * `containerd.io/snapshot.ref` as snapshot labels, so Nydus data layers are
 * downloaded for nothing and the meta layer's snapshot never learns the
 * image reference (nydusify-snapshotter §4.1). rpull instead does what
 * nerdctl/CRI do (AppendInfoHandlerWrapper) plus stargz's reference label:
 *
 *  1. resolve REF with the distribution client (src/remote); an index is
 *     narrowed to one platform (default linux/<host arch>), preferring the
 *     Nydus manifest for snapshotter `nydus` and the OCI one otherwise
 *     (pickManifest: a `--merge-platform` index gives its OCI entry);
 *  2. take a lease (`containerd.io/gc.expire` 24 h; deleted at the end);
 *  3. write config and manifest into the content store (Content.Write with
 *     the expected digest) labelled `containerd.io/distribution.source.<host>`
 *     and, on the manifest, `containerd.io/gc.ref.content.config` /
 *     `.l.<i>` for every layer;
 *  4. unpack: chain IDs from the config's diff_ids; per layer, skip when the
 *     snapshot `<chainID>` exists, else Snapshots.Prepare(key
 *     `extract-<unique> <chainID>`, parent = previous chain ID, labels =
 *     the layer annotations under `containerd.io/snapshot/` + snapshot.ref +
 *     cri.image-ref / cri.manifest-digest / cri.layer-digest /
 *     cri.image-layers + stargz.reference / .digest / .layers). AlreadyExists
 *     means the snapshotter committed the layer itself (remote): nothing is
 *     downloaded. Otherwise the layer blob is fetched into the content store,
 *     Diff.Apply'd onto the returned mounts, checked against its diff ID and
 *     committed as `<chainID>` with the same labels; the blob then gets
 *     `containerd.io/uncompressed`;
 *  5. label the config `containerd.io/gc.ref.snapshot.<snapshotter>` =
 *     top chain ID (keeps the snapshots from GC; `ctr run` finds the image
 *     unpacked), then create or update the image record (target = the
 *     manifest descriptor; name = the normalised reference).
 *
 * Deliberate differences from containerd's unpacker and stargz's ctr-remote:
 * layers are fetched one at a time just before they are applied (no
 * parallel fetch ahead), so a layer the snapshotter takes remotely is never
 * downloaded; the index itself is not stored (the image's target is the
 * platform manifest, as the brief asks); the image record is written only
 * after a successful unpack, so a failed pull leaves nothing but leased,
 * collectable content; a Nydus data layer (`nydus-blob`) the snapshotter
 * does not take remotely is an error instead of a failing Diff.Apply of a
 * non-tar blob; labels longer than containerd's 4096-byte key+value limit
 * are dropped (logged) instead of failing the Prepare; the unpack key keeps
 * containerd's `extract-<unique> <chainID>` form (space-separated).
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { ErrnoError, einval } from '../common/errno';
import { log } from '../common/log';
import type { FetchedManifest } from '../remote/client';
import { Annotation, MediaType, type Descriptor as OciDescriptor, type ImageConfig, type Index, type Manifest, isIndexType, isManifestType } from '../remote/media-types';
import { type PlatformSpec, defaultPlatform, formatPlatform, platformMatches } from '../remote/platform';
import { type Reference, formatReference } from '../remote/reference';
import { type ContainerdClient, type Descriptor, type Mount, isAlreadyExists, isNotFound } from './containerd-client';

// ---------------------------------------------------------------- labels

export const Label = {
  SnapshotRef: 'containerd.io/snapshot.ref',
  CriImageRef: 'containerd.io/snapshot/cri.image-ref',
  CriManifestDigest: 'containerd.io/snapshot/cri.manifest-digest',
  CriLayerDigest: 'containerd.io/snapshot/cri.layer-digest',
  CriImageLayers: 'containerd.io/snapshot/cri.image-layers',
  StargzReference: 'containerd.io/snapshot/remote/stargz.reference',
  StargzDigest: 'containerd.io/snapshot/remote/stargz.digest',
  StargzLayers: 'containerd.io/snapshot/remote/stargz.layers',
  Uncompressed: 'containerd.io/uncompressed',
  GcExpire: 'containerd.io/gc.expire',
  GcRefContentConfig: 'containerd.io/gc.ref.content.config',
  gcRefContentLayer: (i: number): string => `containerd.io/gc.ref.content.l.${i}`,
  gcRefSnapshot: (snapshotter: string): string => `containerd.io/gc.ref.snapshot.${snapshotter}`,
  distributionSource: (host: string): string => `containerd.io/distribution.source.${host}`,
} as const;

/** Prefix of descriptor annotations containerd passes on as snapshot labels. */
export const INHERITED_LABEL_PREFIX = 'containerd.io/snapshot/';
/** containerd's limit on len(key) + len(value) of one label. */
export const MAX_LABEL_SIZE = 4096;
/** Bounds on what a registry can make us do. */
export const MAX_LAYERS = 1000;
const MAX_ANNOTATIONS_PER_LAYER = 256;
const LEASE_TTL_MS = 24 * 3600 * 1000;

const SHA256 = /^sha256:[a-f0-9]{64}$/;

/** Whether `mt` is a layer media type (containerd's images.IsLayerType). */
export function isLayerType(mt: string): boolean {
  return mt.startsWith('application/vnd.oci.image.layer.') || mt.startsWith('application/vnd.docker.image.rootfs.');
}

/** Chain IDs of diff IDs (OCI image spec): C0 = D0, Cn = sha256(Cn-1 + " " + Dn). */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    if (!SHA256.test(d)) throw einval(`invalid diff id '${String(d).slice(0, 100)}'`);
    const prev = out[out.length - 1];
    out.push(prev === undefined ? d : `sha256:${createHash('sha256').update(`${prev} ${d}`).digest('hex')}`);
  }
  return out;
}

/**
 * Comma-separated digests of `layers`, in order, as many as fit in one
 * label under `key` (CRI's cri.image-layers: a prefix of the list; the
 * snapshotter may only use it to prefetch).
 */
export function boundedLayerList(key: string, layers: readonly string[]): string {
  let out = '';
  for (const d of layers) {
    const next = out === '' ? d : `${out},${d}`;
    if (key.length + next.length > MAX_LABEL_SIZE) break;
    out = next;
  }
  return out;
}

export interface LayerLabelInput {
  /** normalised image reference (`host/repo:tag[@digest]`) */
  ref: string;
  manifestDigest: string;
  /** every layer of the manifest, in order */
  layers: readonly OciDescriptor[];
  /** index of this layer */
  index: number;
  chainId: string;
}

/** Snapshot labels of the Prepare/Commit of one layer (module doc, step 4). */
export function layerLabels(i: LayerLabelInput): Record<string, string> {
  const layer = i.layers[i.index];
  const labels: Record<string, string> = {};
  let n = 0;
  for (const [k, v] of Object.entries(layer.annotations ?? {})) {
    if (!k.startsWith(INHERITED_LABEL_PREFIX) || typeof v !== 'string') continue;
    if (++n > MAX_ANNOTATIONS_PER_LAYER) break;
    labels[k] = v;
  }
  const rest = i.layers.slice(i.index).map((l) => l.digest);
  Object.assign(labels, {
    [Label.SnapshotRef]: i.chainId,
    [Label.CriImageRef]: i.ref,
    [Label.CriManifestDigest]: i.manifestDigest,
    [Label.CriLayerDigest]: layer.digest,
    [Label.CriImageLayers]: boundedLayerList(Label.CriImageLayers, rest),
    [Label.StargzReference]: i.ref,
    [Label.StargzDigest]: layer.digest,
    [Label.StargzLayers]: boundedLayerList(Label.StargzLayers, rest),
  });
  for (const [k, v] of Object.entries(labels)) {
    if (k.length + v.length > MAX_LABEL_SIZE) {
      log.warn({ label: k, size: k.length + v.length }, 'dropping a snapshot label above containerd\'s size limit');
      delete labels[k];
    }
  }
  return labels;
}

/** Content labels of the manifest: GC references to its config and layers. */
export function manifestGcLabels(m: Manifest): Record<string, string> {
  const labels: Record<string, string> = { [Label.GcRefContentConfig]: m.config.digest };
  m.layers.forEach((l, i) => { labels[Label.gcRefContentLayer(i)] = l.digest; });
  return labels;
}

/** `existing` distribution-source value with `repo` added (sorted, unique, comma-separated). */
export function mergeSource(existing: string | undefined, repo: string): string {
  const set = new Set((existing ?? '').split(',').filter((s) => s !== ''));
  set.add(repo);
  return [...set].sort().join(',');
}

/**
 * The one manifest of `index` for `platform`: a Nydus one marked by
 * `os.features: nydus.remoteimage.v1` is preferred when `nydus`, the OCI one
 * otherwise. Entries of a `--merge-platform` index marked by `artifactType`
 * are never taken: their config has the Nydus config type, which containerd
 * clients refuse to run (`ctr run`: "unknown image config media type"); as
 * with containerd's own pull, the OCI entry is used.
 */
export function pickManifest(index: Index, platform: PlatformSpec, nydus: boolean): OciDescriptor {
  const cands = (index.manifests ?? []).filter((d) => isManifestType(d.mediaType) && platformMatches(d.platform, [platform]) && d.artifactType !== MediaType.NydusManifestArtifact);
  if (cands.length === 0) throw new ErrnoError('ENOENT', `no manifest for platform ${formatPlatform(platform)} in the image index`);
  const isNydus = (d: OciDescriptor) => !!d.platform?.['os.features']?.includes('nydus.remoteimage.v1');
  return cands.find((d) => isNydus(d) === nydus) ?? cands[0];
}

/** Whether manifest `m` is a Nydus image (its last layer is the bootstrap). */
export function isNydusManifest(m: Manifest): boolean {
  const last = m.layers[m.layers.length - 1];
  return !!last && last.annotations?.[Annotation.NydusBootstrap] === 'true';
}

// ---------------------------------------------------------------- the pull

/** The registry side: what rpull needs of src/remote's RegistryClient. */
export interface ImageSource {
  fetchManifest(ref: Reference, digest?: string): Promise<FetchedManifest>;
  fetchBlobBytes(ref: Reference, desc: OciDescriptor): Promise<Buffer>;
  fetchBlob(ref: Reference, desc: OciDescriptor): Promise<Readable>;
}

export type PullEvent =
  | { kind: 'resolved'; name: string; manifest: string; nydus: boolean; layers: number }
  | { kind: 'blob'; what: 'manifest' | 'config' | 'layer'; digest: string; action: 'written' | 'present' }
  | { kind: 'layer'; index: number; digest: string; chainId: string; action: 'exists' | 'remote' | 'applied' }
  | { kind: 'download'; digest: string; done: number; total: number }
  | { kind: 'image'; name: string; action: 'created' | 'updated' | 'unchanged' };

export interface PullOptions {
  ref: Reference;
  snapshotter: string;
  /** default: linux/<host arch> */
  platform?: PlatformSpec;
  onEvent?(e: PullEvent): void;
}

export interface PullResult {
  name: string;
  manifest: Descriptor;
  config: string;
  chainIds: string[];
  nydus: boolean;
  /** per layer: 'exists' (snapshot was there), 'remote' (the snapshotter took it), 'applied' (downloaded) */
  layers: Array<'exists' | 'remote' | 'applied'>;
}

const toCd = (d: OciDescriptor): Descriptor => ({ media_type: d.mediaType, digest: d.digest, size: d.size, annotations: { ...(d.annotations ?? {}) } });

function checkDescriptor(d: OciDescriptor | undefined, what: string): asserts d is OciDescriptor {
  if (!d || typeof d !== 'object') throw einval(`${what}: missing descriptor`);
  if (typeof d.digest !== 'string' || !SHA256.test(d.digest)) throw einval(`${what}: unsupported or malformed digest '${String(d.digest).slice(0, 100)}'`);
  if (!Number.isSafeInteger(d.size) || d.size < 0) throw einval(`${what}: bad size ${String(d.size)}`);
  if (typeof d.mediaType !== 'string') throw einval(`${what}: no media type`);
}

/** A unique part of unpack keys (containerd uses time + randomness too). */
const uniquePart = (): string => `${Date.now()}-${randomBytes(6).toString('hex')}`;

/** Pull `opts.ref` from `source` into containerd through `cd` (module doc). */
export async function rpull(cd: ContainerdClient, source: ImageSource, opts: PullOptions): Promise<PullResult> {
  const ref = opts.ref;
  const name = formatReference(ref);
  const platform = opts.platform ?? defaultPlatform();
  const emit = opts.onEvent ?? (() => undefined);
  const snapshotter = opts.snapshotter;
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(snapshotter)) throw einval(`invalid snapshotter name '${snapshotter}'`);

  // 1. resolve
  let top: FetchedManifest;
  try {
    top = await source.fetchManifest(ref);
    if (isIndexType(top.descriptor.mediaType)) {
      const pick = pickManifest(top.json as unknown as Index, platform, snapshotter === 'nydus');
      checkDescriptor(pick, 'index entry');
      top = await source.fetchManifest(ref, pick.digest);
    }
  } catch (e) {
    throw annotate(e, `resolve ${name}`);
  }
  if (!isManifestType(top.descriptor.mediaType)) throw einval(`${name}: unsupported manifest media type '${top.descriptor.mediaType}'`);
  const manifest = top.json as unknown as Manifest;
  checkDescriptor(manifest.config, 'manifest config');
  if (!Array.isArray(manifest.layers) || manifest.layers.length === 0) throw einval(`${name}: manifest has no layers`);
  if (manifest.layers.length > MAX_LAYERS) throw einval(`${name}: ${manifest.layers.length} layers (at most ${MAX_LAYERS})`);
  manifest.layers.forEach((l, i) => {
    checkDescriptor(l, `layer ${i}`);
    if (!isLayerType(l.mediaType)) throw einval(`${name}: layer ${i} has media type '${l.mediaType}', not a layer`);
  });
  const nydus = isNydusManifest(manifest);
  const manifestDesc: Descriptor = { media_type: top.descriptor.mediaType, digest: top.descriptor.digest, size: top.descriptor.size };
  emit({ kind: 'resolved', name, manifest: manifestDesc.digest, nydus, layers: manifest.layers.length });

  const configBytes = await source.fetchBlobBytes(ref, manifest.config);
  let config: ImageConfig;
  try {
    config = JSON.parse(configBytes.toString('utf8')) as ImageConfig;
  } catch {
    throw einval(`${name}: image config ${manifest.config.digest} is not JSON`);
  }
  const diffIds = config?.rootfs?.diff_ids;
  if (!Array.isArray(diffIds)) throw einval(`${name}: image config has no rootfs.diff_ids`);
  if (diffIds.length !== manifest.layers.length) throw einval(`${name}: ${manifest.layers.length} layers but ${diffIds.length} diff ids`);
  const chain = chainIds(diffIds);

  // 2. lease
  const leaseId = `ctr-remote-${randomBytes(8).toString('hex')}`;
  const expire = new Date(Date.now() + LEASE_TTL_MS).toISOString().replace(/\.\d+Z$/, 'Z');
  await cd.leaseCreate(leaseId, { [Label.GcExpire]: expire });
  const lcd = cd.withLease(leaseId);
  const sourceKey = Label.distributionSource(ref.domain);
  try {
    /** Put a blob into the content store (or only label it when present). */
    const ensureBlob = async (what: 'manifest' | 'config' | 'layer', desc: OciDescriptor, labels: Record<string, string>, body: () => Promise<Uint8Array | AsyncIterable<Uint8Array>>): Promise<void> => {
      const info = await lcd.contentInfoIfExists(desc.digest);
      const want = { ...labels, [sourceKey]: mergeSource(info?.labels[sourceKey], ref.repository) };
      if (info) {
        if (info.size !== desc.size) throw einval(`content ${desc.digest} has ${info.size} bytes in containerd, the descriptor says ${desc.size}`);
        const changed = Object.fromEntries(Object.entries(want).filter(([k, v]) => info.labels[k] !== v));
        if (Object.keys(changed).length > 0) await lcd.contentSetLabels(desc.digest, changed);
        emit({ kind: 'blob', what, digest: desc.digest, action: 'present' });
        return;
      }
      const src = await body();
      const r = await lcd.contentWrite(`${what}-${desc.digest}`, src, {
        expected: desc.digest,
        total: desc.size,
        labels: want,
        onProgress: (done) => emit({ kind: 'download', digest: desc.digest, done, total: desc.size }),
      });
      if (r === 'exists') {
        (src as Partial<Readable>).destroy?.();
        await lcd.contentSetLabels(desc.digest, want);
      }
      emit({ kind: 'blob', what, digest: desc.digest, action: r === 'written' ? 'written' : 'present' });
    };

    // 3. config then manifest (children first: the manifest's GC refs point at them)
    await ensureBlob('config', manifest.config, {}, async () => configBytes);
    await ensureBlob('manifest', { mediaType: manifestDesc.media_type, digest: manifestDesc.digest, size: manifestDesc.size }, manifestGcLabels(manifest), async () => top.bytes);

    // 4. unpack
    const results: PullResult['layers'] = [];
    for (let i = 0; i < manifest.layers.length; i++) {
      const layer = manifest.layers[i];
      const chainId = chain[i];
      const parent = i > 0 ? chain[i - 1] : '';
      const present = await lcd.snapshotStatIfExists(snapshotter, chainId).catch((e: unknown) => {
        throw annotate(e, `layer ${i}: stat snapshot ${chainId} of snapshotter ${snapshotter}`);
      });
      if (present) {
        results.push('exists');
        emit({ kind: 'layer', index: i, digest: layer.digest, chainId, action: 'exists' });
        continue;
      }
      const labels = layerLabels({ ref: name, manifestDigest: manifestDesc.digest, layers: manifest.layers, index: i, chainId });
      let key = '';
      let mounts: Mount[] | undefined;
      let remote = false;
      for (let attempt = 0; attempt < 3 && !mounts && !remote; attempt++) {
        key = `extract-${uniquePart()} ${chainId}`;
        try {
          mounts = await lcd.snapshotPrepare(snapshotter, key, parent, labels);
        } catch (e) {
          if (!isAlreadyExists(e)) throw annotate(e, `prepare layer ${i} (${layer.digest}) with snapshotter ${snapshotter}`);
          // the snapshotter committed `chainId` itself, or our key collided
          if (await lcd.snapshotStatIfExists(snapshotter, chainId)) remote = true;
        }
      }
      if (remote) {
        results.push('remote');
        emit({ kind: 'layer', index: i, digest: layer.digest, chainId, action: 'remote' });
        continue;
      }
      if (!mounts) throw new ErrnoError('EEXIST', `prepare layer ${i} (${layer.digest}): extraction key exists but snapshot ${chainId} does not`);
      try {
        if (layer.annotations?.[Annotation.NydusBlob] === 'true') {
          throw einval(`layer ${i} (${layer.digest}) is a Nydus data blob, which snapshotter '${snapshotter}' does not serve remotely; use --snapshotter nydus`);
        }
        await ensureBlob('layer', layer, {}, async () => source.fetchBlob(ref, layer));
        const applied = await lcd.diffApply(toCd(layer), mounts);
        if (applied.digest !== diffIds[i]) throw einval(`layer ${i} (${layer.digest}) unpacks to ${applied.digest}, the config says ${diffIds[i]}`);
        try {
          await lcd.snapshotCommit(snapshotter, chainId, key, labels);
        } catch (e) {
          if (!isAlreadyExists(e)) throw e;
          await lcd.snapshotRemove(snapshotter, key).catch(() => undefined);
        }
        await lcd.contentSetLabels(layer.digest, { [Label.Uncompressed]: applied.digest });
      } catch (e) {
        await lcd.snapshotRemove(snapshotter, key).catch((re: unknown) => log.warn({ key, err: String(re) }, 'could not remove the extraction snapshot'));
        throw annotate(e, `unpack layer ${i} (${layer.digest})`);
      }
      results.push('applied');
      emit({ kind: 'layer', index: i, digest: layer.digest, chainId, action: 'applied' });
    }

    // 5. GC root for the snapshots, then the image record
    await lcd.contentSetLabels(manifest.config.digest, { [Label.gcRefSnapshot(snapshotter)]: chain[chain.length - 1] });
    const record = { name, labels: {}, target: manifestDesc };
    const existing = await lcd.imageGet(name);
    if (!existing) {
      try {
        await lcd.imageCreate(record);
        emit({ kind: 'image', name, action: 'created' });
      } catch (e) {
        if (!isAlreadyExists(e)) throw e;
        await lcd.imageUpdate(record, ['target']);
        emit({ kind: 'image', name, action: 'updated' });
      }
    } else if (existing.target?.digest !== manifestDesc.digest || existing.target?.media_type !== manifestDesc.media_type) {
      await lcd.imageUpdate(record, ['target']);
      emit({ kind: 'image', name, action: 'updated' });
    } else {
      emit({ kind: 'image', name, action: 'unchanged' });
    }
    return { name, manifest: manifestDesc, config: manifest.config.digest, chainIds: chain, nydus, layers: results };
  } finally {
    await cd.leaseDelete(leaseId).catch((e: unknown) => {
      if (!isNotFound(e)) log.warn({ lease: leaseId, err: String(e) }, 'could not delete the pull lease (it expires by itself)');
    });
  }
}

/** `e` with `what` prefixed to its message (type and errno kept). */
function annotate(e: unknown, what: string): unknown {
  if (e instanceof Error && !e.message.startsWith(what)) e.message = `${what}: ${e.message}`;
  return e;
}
