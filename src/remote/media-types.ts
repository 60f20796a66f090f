/**
 * OCI / Docker media types and the Nydus annotations (rafs-spec §5,
 * nydusify-snapshotter §2), plus the JSON shapes of manifests, indexes and
 * configs as far as the client and the converter read them. Unknown fields
 * are kept (the shapes are open), so a rewritten document loses nothing.
 */

export const MediaType = {
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  OciConfig: 'application/vnd.oci.image.config.v1+json',
  OciLayer: 'application/vnd.oci.image.layer.v1.tar',
  OciLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OciLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  OciLayerNondistGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  DockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  DockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  DockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  DockerManifestV1: 'application/vnd.docker.distribution.manifest.v1+json',
  DockerManifestV1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  NydusBlob: 'application/vnd.oci.image.layer.nydus.blob.v1',
  NydusConfig: 'application/vnd.nydus.image.config.v1+json',
  NydusManifestArtifact: 'application/vnd.nydus.image.manifest.v1+json',
} as const;

export const Annotation = {
  Uncompressed: 'containerd.io/uncompressed',
  NydusBlob: 'containerd.io/snapshot/nydus-blob',
  NydusBootstrap: 'containerd.io/snapshot/nydus-bootstrap',
  NydusFsVersion: 'containerd.io/snapshot/nydus-fs-version',
  NydusRef: 'containerd.io/snapshot/nydus-ref',
  NydusSourceDigest: 'containerd.io/snapshot/nydus-source-digest',
  NydusSourceReference: 'containerd.io/snapshot/nydus-source-reference',
  NydusBuilderVersion: 'containerd.io/snapshot/nydus-builder-version',
  NydusReferenceBlobIds: 'containerd.io/snapshot/nydus-reference-blob-ids',
  NydusEncryptedBlob: 'containerd.io/snapshot/nydus-encrypted-blob',
  NydusEmptyLayer: 'containerd.io/snapshot/nydus-empty-layer',
} as const;

/** Accept header of manifest requests: every manifest and index type we read. */
export const MANIFEST_ACCEPT = [
  MediaType.OciManifest, MediaType.OciIndex, MediaType.DockerManifest, MediaType.DockerManifestList,
].join(', ');

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  urls?: string[];
  artifactType?: string;
  [k: string]: unknown;
}

export interface Manifest {
  schemaVersion: number;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
  [k: string]: unknown;
}

export interface Index {
  schemaVersion: number;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
  [k: string]: unknown;
}

export interface ImageConfig {
  architecture?: string;
  os?: string;
  variant?: string;
  config?: Record<string, unknown>;
  container_config?: Record<string, unknown>;
  rootfs: { type: string; diff_ids: string[] };
  history?: Array<Record<string, unknown>>;
  [k: string]: unknown;
}

export const isIndexType = (mt: string | undefined): boolean => mt === MediaType.OciIndex || mt === MediaType.DockerManifestList;
export const isManifestType = (mt: string | undefined): boolean => mt === MediaType.OciManifest || mt === MediaType.DockerManifest;
export const isDockerType = (mt: string | undefined): boolean => !!mt && mt.startsWith('application/vnd.docker.');

/** Media type of a fetched manifest document: its `mediaType`, else guessed from its shape (OCI allows omitting it). */
export function documentType(doc: { mediaType?: unknown; manifests?: unknown; layers?: unknown; config?: unknown }, headerType?: string): string {
  if (typeof doc.mediaType === 'string' && doc.mediaType) return doc.mediaType;
  if (Array.isArray(doc.manifests)) return MediaType.OciIndex;
  if (Array.isArray(doc.layers) || doc.config) return MediaType.OciManifest;
  return headerType ?? '';
}

/** Layer compression from a media type: 'gzip' | 'zstd' | 'none', or undefined when not a tar layer. */
export function layerCompression(mt: string): 'gzip' | 'zstd' | 'none' | undefined {
  if (/tar\+gzip$|tar\.gzip$|rootfs\.diff\.tar\.gzip$|foreign\.diff\.tar\.gzip$/.test(mt)) return 'gzip';
  if (/tar\+zstd$/.test(mt)) return 'zstd';
  if (/\.tar$|rootfs\.diff\.tar$/.test(mt)) return 'none';
  return undefined;
}
