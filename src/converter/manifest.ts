/**
 * The Nydus image documents (nydusify-snapshotter §2 steps 4–7, §2.1,
 * rafs-spec §5): data layer and bootstrap layer descriptors, the rewritten
 * image config (diff_ids, history) and manifest (media types per Docker v2 /
 * OCI source and `--oci`, manifest annotations, optional `subject`), the
 * index of several converted platforms, and the compact JSON every document
 * is written as. Pure functions: the pipeline (convert.ts) and the unit tests
 * feed them.
 *
 * As upstream: data layers are `application/vnd.oci.image.layer.nydus.blob.v1`
 * with `containerd.io/snapshot/nydus-blob: "true"` even inside a Docker
 * manifest; the bootstrap layer is the last layer, gzip tar, Docker typed only
 * for a Docker source without `--oci`, annotated `nydus-bootstrap` and
 * `nydus-fs-version`; `containerd.io/uncompressed` is removed from the final
 * manifest; diff_ids are one per layer (a data layer's own digest, the
 * bootstrap tar's sha256); history gains the "Nydus Bootstrap Layer" entry;
 * the legacy `config.Image` / `container_config.Image` ids are dropped; JSON
 * is compact with Go's `<>&` escaping.
 * Deliberate differences: key order is ours (Go's struct order for manifests
 * and descriptors, source order for configs, where upstream sorts config keys
 * through a map), so digests are not byte-identical to upstream's.
 */
import { sha256Digest } from '../remote/client';
import { Annotation, type Descriptor, type ImageConfig, type Index, type Manifest, MediaType, isDockerType } from '../remote/media-types';

export const NYDUS_HISTORY = { created_by: 'Nydus Converter', comment: 'Nydus Bootstrap Layer' };

/** Compact JSON as Go's encoding/json writes it (`<`, `>`, `&`, U+2028/9 escaped). */
export function goJson(v: unknown): Buffer {
  const s = JSON.stringify(v).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return Buffer.from(s, 'utf8');
}

/** Descriptor with Go's field order, empty optional fields dropped. */
export function orderedDescriptor(d: Descriptor): Descriptor {
  const out: Descriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size };
  if (d.urls?.length) out.urls = d.urls;
  if (d.annotations && Object.keys(d.annotations).length) out.annotations = d.annotations;
  if (d.data !== undefined) out.data = d.data;
  if (d.platform) out.platform = d.platform;
  if (d.artifactType) out.artifactType = d.artifactType;
  return out;
}

/** Descriptor of a Nydus data blob (in the content store form: with `containerd.io/uncompressed`). */
export function nydusBlobDescriptor(digest: string, size: number, extra: Record<string, string> = {}): Descriptor {
  return {
    mediaType: MediaType.NydusBlob, digest, size,
    annotations: { [Annotation.Uncompressed]: digest, [Annotation.NydusBlob]: 'true', ...extra },
  };
}

/** Media type of the bootstrap layer: Docker gzip for a Docker source without `--oci`. */
export function bootstrapMediaType(sourceManifestType: string, oci: boolean): string {
  return isDockerType(sourceManifestType) && !oci ? MediaType.DockerLayerGzip : MediaType.OciLayerGzip;
}

/** Descriptor of the bootstrap layer (gzip tar; `tarDigest` = sha256 of the uncompressed tar). */
export function bootstrapDescriptor(mediaType: string, gzDigest: string, gzSize: number, tarDigest: string, fsVersion: 5 | 6, referenceBlobIds: string[] = []): Descriptor {
  const annotations: Record<string, string> = {
    [Annotation.Uncompressed]: tarDigest,
    [Annotation.NydusFsVersion]: String(fsVersion),
    [Annotation.NydusBootstrap]: 'true',
  };
  if (referenceBlobIds.length) annotations[Annotation.NydusReferenceBlobIds] = JSON.stringify(referenceBlobIds);
  return { mediaType, digest: gzDigest, size: gzSize, annotations };
}

const LEGACY_IMAGE_ID = /^sha256:[a-f0-9]{64}$|^$/;

/** The config with diff_ids of `layers` (their `containerd.io/uncompressed`) and the Nydus history entry. */
export function rewriteConfig(src: ImageConfig, layers: Descriptor[]): ImageConfig {
  const cfg = JSON.parse(JSON.stringify(src)) as ImageConfig;
  for (const k of ['config', 'container_config'] as const) {
    const c = cfg[k];
    if (c && typeof c === 'object' && typeof c.Image === 'string' && LEGACY_IMAGE_ID.test(c.Image)) delete c.Image;
  }
  cfg.rootfs = { ...(cfg.rootfs ?? { type: 'layers' }), type: cfg.rootfs?.type ?? 'layers', diff_ids: layers.map((l) => l.annotations?.[Annotation.Uncompressed] ?? l.digest) };
  cfg.history = [...(Array.isArray(cfg.history) ? cfg.history : []), { ...NYDUS_HISTORY }];
  return cfg;
}

export interface ManifestRewrite {
  /** the source manifest and its media type */
  source: Manifest;
  sourceType: string;
  /** the source manifest's descriptor (subject for `--with-referrer`, source digest annotation) */
  sourceDescriptor: Descriptor;
  sourceReference: string;
  /** data layers then the bootstrap, in content-store form */
  layers: Descriptor[];
  config: { digest: string; size: number };
  oci: boolean;
  fsVersion: 5 | 6;
  builderVersion: string;
  withReferrer?: boolean;
  /** `--merge-platform`: the config gets the Nydus config type, which containerd does not pull */
  mergePlatform?: boolean;
}

/** The Nydus manifest (media types per §2.1, annotations per §2 step 6e). */
export function rewriteManifest(o: ManifestRewrite): { mediaType: string; manifest: Manifest } {
  const docker = isDockerType(o.sourceType) && !o.oci;
  const mediaType = docker ? MediaType.DockerManifest : MediaType.OciManifest;
  const configType = o.mergePlatform ? MediaType.NydusConfig : docker ? MediaType.DockerConfig : MediaType.OciConfig;
  const layers = o.layers.map((l) => {
    const a = { ...(l.annotations ?? {}) };
    delete a[Annotation.Uncompressed];
    return orderedDescriptor({ ...l, annotations: a });
  });
  const manifest: Manifest = { schemaVersion: 2, mediaType, config: orderedDescriptor({ mediaType: configType, digest: o.config.digest, size: o.config.size }), layers };
  if (o.withReferrer) {
    const { platform: _p, ...subject } = o.sourceDescriptor;
    manifest.subject = orderedDescriptor(subject as Descriptor);
  }
  manifest.annotations = {
    ...(o.source.annotations ?? {}),
    [Annotation.NydusSourceDigest]: o.sourceDescriptor.digest,
    [Annotation.NydusSourceReference]: o.sourceReference,
    [Annotation.NydusFsVersion]: String(o.fsVersion),
    [Annotation.NydusBuilderVersion]: o.builderVersion,
  };
  return { mediaType, manifest };
}

/** Index of several converted manifests (Docker list type kept unless `--oci`). */
export function rewriteIndex(source: Index, sourceType: string, manifests: Descriptor[], oci: boolean): { mediaType: string; index: Index } {
  const mediaType = sourceType === MediaType.DockerManifestList && !oci ? MediaType.DockerManifestList : MediaType.OciIndex;
  const index: Index = { schemaVersion: 2, mediaType, manifests: manifests.map(orderedDescriptor) };
  if (source.annotations && Object.keys(source.annotations).length) index.annotations = source.annotations;
  return { mediaType, index };
}

/** Whether a manifest is a Nydus image (its last layer is a gzip tar with `nydus-bootstrap: "true"`). */
export function isNydusManifest(m: Manifest): boolean {
  const last = m.layers?.[m.layers.length - 1];
  return !!last && (last.mediaType === MediaType.OciLayerGzip || last.mediaType === MediaType.DockerLayerGzip) && last.annotations?.[Annotation.NydusBootstrap] === 'true';
}

/**
 * The empty layer `--merge-platform` prepends to every OCI manifest: an empty
 * tar (1024 zero bytes) gzipped as Go's archive/tar + compress/gzip write it,
 * so its digest is the well-known sha256:4f4fb700…acc1 (32 bytes).
 */
export const EMPTY_LAYER_GZIP = Buffer.from('1f8b08000000000000ff621805a360148c5800080000ffff2eafb5ef00040000', 'hex');
/** diff_id of the empty layer: sha256 of 1024 zero bytes */
export const EMPTY_LAYER_DIFF_ID = 'sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef';
export const EMPTY_LAYER_HISTORY = { created_by: 'Nydus Converter', comment: 'Nydus Empty Layer' };

export interface PrependedEmptyLayer {
  /** the empty layer's descriptor (annotated `nydus-empty-layer`) */
  emptyLayer: Descriptor;
  config: { descriptor: Descriptor; bytes: Buffer };
  /** the rewritten manifest; `descriptor` is its index entry (source platform and annotations + `nydus-source-digest`) */
  manifest: { descriptor: Descriptor; bytes: Buffer };
}

/**
 * `--merge-platform`'s rewrite of a source OCI / Docker manifest (§2.2): the
 * empty layer first, its diff_id first in the config, a "Nydus Empty Layer"
 * history entry first, `nydus-source-digest` on the manifest and on its index
 * entry. The OCI manifests get new digests, so runtimes cannot share layers
 * between them and stock images.
 */
export function prependEmptyLayer(source: Manifest, sourceDescriptor: Descriptor, config: ImageConfig): PrependedEmptyLayer {
  const docker = isDockerType(sourceDescriptor.mediaType);
  const emptyLayer: Descriptor = {
    mediaType: docker ? MediaType.DockerLayerGzip : MediaType.OciLayerGzip,
    digest: sha256Digest(EMPTY_LAYER_GZIP), size: EMPTY_LAYER_GZIP.length,
    annotations: { [Annotation.NydusEmptyLayer]: 'true' },
  };
  const cfg = JSON.parse(JSON.stringify(config)) as ImageConfig;
  cfg.rootfs = { ...(cfg.rootfs ?? { type: 'layers' }), type: cfg.rootfs?.type ?? 'layers', diff_ids: [EMPTY_LAYER_DIFF_ID, ...(cfg.rootfs?.diff_ids ?? [])] };
  cfg.history = [{ ...EMPTY_LAYER_HISTORY }, ...(Array.isArray(cfg.history) ? cfg.history : [])];
  const cfgBytes = goJson(cfg);
  const cfgDesc: Descriptor = { mediaType: docker ? MediaType.DockerConfig : MediaType.OciConfig, digest: sha256Digest(cfgBytes), size: cfgBytes.length };
  const m: Manifest = {
    ...source,
    config: orderedDescriptor(cfgDesc),
    layers: [orderedDescriptor(emptyLayer), ...source.layers.map(orderedDescriptor)],
    annotations: { ...(source.annotations ?? {}), [Annotation.NydusSourceDigest]: sourceDescriptor.digest },
  };
  const bytes = goJson(m);
  const descriptor = orderedDescriptor({
    mediaType: sourceDescriptor.mediaType, digest: sha256Digest(bytes), size: bytes.length,
    ...(sourceDescriptor.urls ? { urls: sourceDescriptor.urls } : {}),
    annotations: { ...(sourceDescriptor.annotations ?? {}), [Annotation.NydusSourceDigest]: sourceDescriptor.digest },
    ...(sourceDescriptor.platform ? { platform: sourceDescriptor.platform } : {}),
    ...(sourceDescriptor.artifactType ? { artifactType: sourceDescriptor.artifactType } : {}),
  });
  return { emptyLayer, config: { descriptor: cfgDesc, bytes: cfgBytes }, manifest: { descriptor, bytes } };
}

/**
 * The `--merge-platform` index (§2.2): the rewritten OCI manifests, then the
 * Nydus manifests with `artifactType` set; OCI index JSON without a
 * `mediaType` field, as upstream writes it.
 */
export function mergedIndex(oci: Descriptor[], nydus: Descriptor[]): Buffer {
  return goJson({
    schemaVersion: 2,
    manifests: [
      ...oci.map(orderedDescriptor),
      ...nydus.map((d) => orderedDescriptor({ ...d, platform: d.platform ?? { architecture: '', os: '' }, artifactType: MediaType.NydusManifestArtifact })),
    ],
  });
}
