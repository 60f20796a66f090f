/**
 * `nydusify copy`: an image (manifest or index, with its configs and
 * layers) from one place to another, bytes unchanged so every digest stays.
 * Either side is a registry reference or `file://<path>`: an OCI-layout tar
 * (optionally gzip/zstd compressed) read as the source or written as the
 * target, as upstream imports / exports it. Blobs stream from source to
 * target (remote/transfer.ts: HEAD skips those already there; within one
 * registry a cross-repo mount is tried first); children are pushed before
 * parents. An index is filtered by `--platform` unless `--all-platforms`;
 * when the filter leaves a subset, the copied index is rewritten to list only
 * that subset (so it gets a new digest), and a single remaining manifest is
 * copied alone, as convert does.
 * Not implemented: `--source-backend-*`.
 * Deliberate difference: an exported archive is a plain OCI layout (no
 * Docker `manifest.json`), naming the image by the source tag.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { einval } from '../common/errno';
import { log } from '../common/log';
import { type Credentials } from '../remote/docker-config';
import { type Descriptor, type Index, type Manifest, isIndexType, isManifestType } from '../remote/media-types';
import { type PlatformSpec, platformMatches } from '../remote/platform';
import { RegistryClient, sha256Digest } from '../remote/client';
import { type ImageSink, type ImageSource, OciArchiveSink, OciArchiveSource } from '../remote/oci-archive';
import { type Reference, formatReference, parseReference } from '../remote/reference';
import { transferBlob } from '../remote/transfer';
import { mapLimit } from './convert';
import { goJson } from './manifest';

export interface CopyOptions {
  /** a reference or `file://<archive>` */
  source: string;
  /** a reference or `file://<archive>` */
  target: string;
  sourceInsecure?: boolean;
  targetInsecure?: boolean;
  plainHttp?: boolean;
  /** undefined = all platforms */
  platforms?: PlatformSpec[];
  pushChunkSize?: number;
  /** where archives are unpacked / assembled (a fresh directory is made inside and removed) */
  workDir?: string;
  credentials?: (domain: string) => Promise<Credentials | undefined>;
}

const FILE = 'file://';
/** The reference an archive side stands for (the archive names its image by this tag). */
const archiveRef = (tag: string | undefined): Reference => ({ domain: 'localhost', repository: 'archive', tag: tag ?? 'latest' });

export async function copy(o: CopyOptions): Promise<Descriptor> {
  const srcFile = o.source.startsWith(FILE) ? path.resolve(o.source.slice(FILE.length)) : undefined;
  const dstFile = o.target.startsWith(FILE) ? path.resolve(o.target.slice(FILE.length)) : undefined;
  if (dstFile && !fs.existsSync(path.dirname(dstFile))) throw einval(`the directory of ${o.target} does not exist`);
  const src = srcFile ? archiveRef(undefined) : parseReference(o.source);
  const dst = dstFile ? archiveRef(src.tag) : parseReference(o.target);
  if (dst.digest && !dst.tag) throw einval('the target must name a tag');
  fs.mkdirSync(o.workDir ?? '.', { recursive: true });
  const tmp = fs.mkdtempSync(path.join(o.workDir ?? '.', 'nydusify-'));
  let sc: ImageSource | undefined;
  let dc: ImageSink | undefined;
  try {
    sc = srcFile ? await OciArchiveSource.open(srcFile, fs.mkdtempSync(path.join(tmp, 'source-'))) : new RegistryClient({ plainHttp: o.plainHttp, insecure: o.sourceInsecure, credentials: o.credentials });
    const sink = dstFile ? new OciArchiveSink(fs.mkdtempSync(path.join(tmp, 'target-'))) : undefined;
    dc = sink ?? new RegistryClient({ plainHttp: o.plainHttp, insecure: o.targetInsecure, credentials: o.credentials });
    const from = sc;
    const to = dc;
    const top = await from.fetchManifest(src);
    const copyBlob = async (d: Descriptor) => {
      const how = await transferBlob(from, src, to, dst, d, { chunkSize: o.pushChunkSize });
      log.info({ digest: d.digest, how }, 'blob copied');
    };
    const copyManifest = async (bytes: Buffer, json: Record<string, unknown>, mediaType: string, tag?: string) => {
      const m = json as unknown as Manifest;
      await mapLimit([m.config, ...(m.layers ?? [])], 5, copyBlob);
      if (m.subject) log.warn({ subject: m.subject.digest }, 'the subject of a manifest is not copied');
      return to.pushManifest(dst, tag ?? sha256Digest(bytes), mediaType, bytes);
    };
    let result: Descriptor;
    if (isManifestType(top.descriptor.mediaType)) {
      const d = await copyManifest(top.bytes, top.json, top.descriptor.mediaType, dst.tag);
      result = { ...top.descriptor, digest: d };
    } else {
      if (!isIndexType(top.descriptor.mediaType)) throw einval(`unsupported media type ${top.descriptor.mediaType}`);
      const idx = top.json as unknown as Index;
      const picked = idx.manifests.filter((d) => platformMatches(d.platform, o.platforms));
      if (picked.length === 0) throw einval(`no manifest of ${srcFile ? o.source : formatReference(src)} matches the requested platforms`);
      const children = await mapLimit(picked, 2, async (d) => {
        const m = await from.fetchManifest(src, d.digest);
        if (picked.length === 1) return copyManifest(m.bytes, m.json, m.descriptor.mediaType === d.mediaType ? d.mediaType : m.descriptor.mediaType, dst.tag);
        return copyManifest(m.bytes, m.json, d.mediaType);
      });
      if (picked.length === 1) {
        result = { ...picked[0], digest: children[0] };
      } else {
        const bytes = picked.length === idx.manifests.length ? top.bytes : goJson({ ...idx, manifests: picked });
        const d = await to.pushManifest(dst, dst.tag!, top.descriptor.mediaType, bytes);
        result = { mediaType: top.descriptor.mediaType, digest: d, size: bytes.length };
      }
    }
    if (sink) await sink.finish(dstFile!);
    return result;
  } finally {
    await Promise.allSettled([sc?.close(), dc?.close()]);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
