/**
 * `nydusify copy`: an image (manifest or index, with its configs and
 * layers) from one registry repository to another, bytes unchanged so every
 * digest stays; blobs stream from source to target (HEAD skips those already
 * there; within one registry a cross-repo mount is tried first); children are
 * pushed before parents. An index is filtered by `--platform` unless
 * `--all-platforms`; when the filter leaves a subset, the copied index is
 * rewritten to list only that subset (so it gets a new digest), and a single
 * remaining manifest is copied alone, as convert does.
 * Not implemented: `file://` tar archives on either side, `--source-backend-*`,
 * `--push-chunk-size` (the client's chunked upload is used when it is given).
 */
import { einval } from '../common/errno';
import { log } from '../common/log';
import { type Credentials } from '../remote/docker-config';
import { type Descriptor, type Index, type Manifest, isIndexType, isManifestType } from '../remote/media-types';
import { type PlatformSpec, platformMatches } from '../remote/platform';
import { RegistryClient, sha256Digest } from '../remote/client';
import { formatReference, parseReference, registryHost } from '../remote/reference';
import { mapLimit } from './convert';
import { goJson } from './manifest';

export interface CopyOptions {
  source: string;
  target: string;
  sourceInsecure?: boolean;
  targetInsecure?: boolean;
  plainHttp?: boolean;
  /** undefined = all platforms */
  platforms?: PlatformSpec[];
  pushChunkSize?: number;
  credentials?: (domain: string) => Promise<Credentials | undefined>;
}

export async function copy(o: CopyOptions): Promise<Descriptor> {
  if (o.source.startsWith('file://') || o.target.startsWith('file://')) throw einval('file:// archives are not supported yet');
  const src = parseReference(o.source);
  const dst = parseReference(o.target);
  if (dst.digest && !dst.tag) throw einval('the target must name a tag');
  const sc = new RegistryClient({ plainHttp: o.plainHttp, insecure: o.sourceInsecure, credentials: o.credentials });
  const dc = new RegistryClient({ plainHttp: o.plainHttp, insecure: o.targetInsecure, credentials: o.credentials });
  const sameRegistry = registryHost(src.domain) === registryHost(dst.domain);
  try {
    const top = await sc.fetchManifest(src);
    const copyBlob = async (d: Descriptor) => {
      const how = await dc.pushBlob(dst, d, () => sc.fetchBlob(src, d), { mountFrom: sameRegistry ? src.repository : undefined, chunkSize: o.pushChunkSize });
      log.info({ digest: d.digest, how }, 'blob copied');
    };
    const copyManifest = async (bytes: Buffer, json: Record<string, unknown>, mediaType: string, tag?: string) => {
      const m = json as unknown as Manifest;
      await mapLimit([m.config, ...(m.layers ?? [])], 5, copyBlob);
      if (m.subject) log.warn({ subject: m.subject.digest }, 'the subject of a manifest is not copied');
      return dc.pushManifest(dst, tag ?? sha256Digest(bytes), mediaType, bytes);
    };
    if (isManifestType(top.descriptor.mediaType)) {
      const d = await copyManifest(top.bytes, top.json, top.descriptor.mediaType, dst.tag);
      return { ...top.descriptor, digest: d };
    }
    if (!isIndexType(top.descriptor.mediaType)) throw einval(`unsupported media type ${top.descriptor.mediaType}`);
    const idx = top.json as unknown as Index;
    const picked = idx.manifests.filter((d) => platformMatches(d.platform, o.platforms));
    if (picked.length === 0) throw einval(`no manifest of ${formatReference(src)} matches the requested platforms`);
    const children = await mapLimit(picked, 2, async (d) => {
      const m = await sc.fetchManifest(src, d.digest);
      if (picked.length === 1) return copyManifest(m.bytes, m.json, m.descriptor.mediaType === d.mediaType ? d.mediaType : m.descriptor.mediaType, dst.tag);
      return copyManifest(m.bytes, m.json, d.mediaType);
    });
    if (picked.length === 1) return { ...picked[0], digest: children[0] };
    const bytes = picked.length === idx.manifests.length ? top.bytes : goJson({ ...idx, manifests: picked });
    const d = await dc.pushManifest(dst, dst.tag!, top.descriptor.mediaType, bytes);
    return { mediaType: top.descriptor.mediaType, digest: d, size: bytes.length };
  } finally {
    await Promise.allSettled([sc.close(), dc.close()]);
  }
}
