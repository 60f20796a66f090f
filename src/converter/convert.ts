/**
 * `nydusify convert`: an OCI / Docker image in a registry → a Nydus image in
 * a registry (nydusify-snapshotter §2), in-process:
 *  1. resolve the source (plain-HTTP fallback in the client); an index is
 *     filtered by platform (`--platform` list, default linux/<host arch>, or
 *     all); a single manifest is converted whatever its platform; schema 1
 *     is refused;
 *  2. every layer (5 at a time) streams through decompression into a tar in
 *     `<work>/nydus-converter-XXXX` and is built into a Nydus blob (layer.ts);
 *     a layer shared by several platforms is converted once;
 *  3. per manifest: the layer bootstraps are merged in manifest order with the
 *     blob ids = Nydus layer digests, the bootstrap layer is written
 *     (bootstrap-layer.ts), config and manifest rewritten (manifest.ts);
 *  4. push, children before parents: blobs and configs (5 at a time, HEAD
 *     skips existing ones), then each manifest (by digest when an index
 *     follows, else by tag), then the index by tag. A single converted
 *     manifest drops the index.
 * `--source-archive` / `--target-archive` read / write OCI-layout archives
 * (remote/oci-archive.ts) instead of a registry.
 * Deliberate differences: no containerd content store (the work dir holds the
 * blobs); the layer pull and build overlap (a layer builds as soon as its tar
 * is down); no build cache, chunk dict, backends other than the registry,
 * or `--oci-ref` (rejected by the CLI). `--merge-platform` on a single-manifest
 * source gives both index entries the platform of the source config (upstream
 * leaves the Nydus entry's platform empty, so no platform matcher selects it).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Compressor } from '../common/compress';
import { einval } from '../common/errno';
import { log } from '../common/log';
import { type Credentials } from '../remote/docker-config';
import { type Descriptor, type ImageConfig, type Index, type Manifest, MediaType, isIndexType, isManifestType } from '../remote/media-types';
import { type PlatformSpec, platformMatches, platformOfConfig } from '../remote/platform';
import { type Reference, formatReference, parseReference } from '../remote/reference';
import { RegistryClient, sha256Digest } from '../remote/client';
import { type ImageSink, type ImageSource, OciArchiveSink, OciArchiveSource } from '../remote/oci-archive';
import { writeBootstrapLayer, mergeBootstraps } from './bootstrap-layer';
import { type ConvertedLayer, buildLayer, layerToTar } from './layer';
import { transferBlob } from '../remote/transfer';
import {
  EMPTY_LAYER_GZIP, type PrependedEmptyLayer, bootstrapDescriptor, bootstrapMediaType, goJson, isNydusManifest, mergedIndex,
  prependEmptyLayer, rewriteConfig, rewriteIndex, rewriteManifest,
} from './manifest';

export const BUILDER_VERSION = 'v2.4.4-ts';
const CONCURRENCY = 5;

export interface ProgressEvent {
  phase: 'pull' | 'build' | 'push';
  /** a layer / blob digest or a manifest tag */
  id: string;
  state: 'start' | 'done';
  bytes?: number;
}

export interface ConvertOptions {
  source: string;
  target: string;
  sourceInsecure?: boolean;
  targetInsecure?: boolean;
  plainHttp?: boolean;
  fsVersion: 5 | 6;
  compressor: Compressor;
  chunkSize: number;
  /** `--batch-size`: small files' chunks merged into batches (v6 only; 0 = off) */
  batchSize?: number;
  alignedChunk?: boolean;
  prefetchPatterns?: string[];
  /** undefined = all platforms */
  platforms?: PlatformSpec[];
  oci?: boolean;
  withReferrer?: boolean;
  /** `--merge-platform`: push an index holding the (rewritten) source manifests and the Nydus ones (§2.2) */
  mergePlatform?: boolean;
  /** read the source from this OCI-layout archive instead of a registry (`--source-archive`) */
  sourceArchive?: string;
  /** write the target to this OCI-layout archive instead of pushing (`--target-archive`) */
  targetArchive?: string;
  workDir: string;
  /** push retries (default 3) and delay (ms, default 5000) */
  pushRetries?: number;
  pushRetryDelayMs?: number;
  onProgress?: (e: ProgressEvent) => void;
  /** credentials lookup (default: docker config) */
  credentials?: (domain: string) => Promise<Credentials | undefined>;
  /** filled as the conversion goes, so a failed run still reports what it measured (`--output-json`) */
  metrics?: ConvertMetrics;
}

export interface ConvertMetrics {
  SourceImageSize: number;
  TargetImageSize: number;
  SourcePullElapsed: number;
  ConversionElapsed: number;
  TargetPushElapsed: number;
}

export interface ConvertResult {
  /** the pushed target (manifest or index) */
  descriptor: Descriptor;
  target: Reference;
  metrics: ConvertMetrics;
}

/** Run `fn` over `items` with at most `n` at once (results in order). */
export async function mapLimit<T, R>(items: T[], n: number, fn: (t: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed: unknown;
  const worker = async () => {
    while (next < items.length && failed === undefined) {
      const i = next++;
      try {
        out[i] = await fn(items[i], i);
      } catch (err) {
        failed ??= err;
        throw err;
      }
    }
  };
  const rs = await Promise.allSettled(Array.from({ length: Math.min(n, items.length) }, worker));
  if (failed !== undefined) throw failed;
  for (const r of rs) if (r.status === 'rejected') throw r.reason;
  return out;
}

interface PushItem { desc: Descriptor; file?: string; bytes?: Buffer; fromSource?: boolean }

interface ConvertedManifest {
  descriptor: Descriptor;
  mediaType: string;
  bytes: Buffer;
  blobs: PushItem[];
  /** `--merge-platform`: the source manifest with the empty layer prepended, and the source layers it references */
  oci?: { rewrite: PrependedEmptyLayer; sourceLayers: Descriptor[] };
}

const ns = (t0: bigint): number => Number(process.hrtime.bigint() - t0);

/** The pipeline of the module doc. */
export async function convert(o: ConvertOptions): Promise<ConvertResult> {
  const src = parseReference(o.source);
  const dst = parseReference(o.target);
  if (dst.digest) throw einval('the target must be a tag, not a digest');
  fs.mkdirSync(o.workDir, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(o.workDir, 'nydusify-'));
  let srcClient: ImageSource;
  let dstClient: ImageSink;
  let sink: OciArchiveSink | undefined;
  try {
    srcClient = o.sourceArchive
      ? await OciArchiveSource.open(o.sourceArchive, fs.mkdtempSync(path.join(tmp, 'source-archive-')))
      : new RegistryClient({ plainHttp: o.plainHttp, insecure: o.sourceInsecure, credentials: o.credentials });
    if (o.targetArchive) dstClient = sink = new OciArchiveSink(fs.mkdtempSync(path.join(tmp, 'target-archive-')));
    else dstClient = new RegistryClient({ plainHttp: o.plainHttp, insecure: o.targetInsecure, credentials: o.credentials, pushRetries: o.pushRetries, pushRetryDelayMs: o.pushRetryDelayMs });
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  const metrics: ConvertMetrics = Object.assign(o.metrics ?? {}, { SourceImageSize: 0, TargetImageSize: 0, SourcePullElapsed: 0, ConversionElapsed: 0, TargetPushElapsed: 0 });
  const layerCache = new Map<string, Promise<ConvertedLayer>>();
  const opened: ConvertedLayer[] = [];
  let pullNs = 0;
  let buildNs = 0;
  let lastPullEnd = 0n;
  try {
    const tConv = process.hrtime.bigint();
    const top = await srcClient.fetchManifest(src);
    const sourceRef = formatReference(src);

    const convertLayer = (l: Descriptor): Promise<ConvertedLayer> => {
      let p = layerCache.get(l.digest);
      if (!p) {
        p = (async () => {
          const dir = fs.mkdtempSync(path.join(tmp, 'nydus-converter-'));
          const tar = path.join(dir, 'layer.tar');
          o.onProgress?.({ phase: 'pull', id: l.digest, state: 'start', bytes: l.size });
          const t0 = process.hrtime.bigint();
          const { diffId } = await layerToTar(await srcClient.fetchBlob(src, l), l.mediaType, tar);
          pullNs += ns(t0);
          lastPullEnd = process.hrtime.bigint();
          metrics.SourceImageSize += l.size;
          o.onProgress?.({ phase: 'pull', id: l.digest, state: 'done', bytes: l.size });
          o.onProgress?.({ phase: 'build', id: l.digest, state: 'start' });
          const t1 = process.hrtime.bigint();
          const c = await buildLayer(l, diffId, tar, dir, {
            fsVersion: o.fsVersion, compressor: o.compressor, chunkSize: o.chunkSize, batchSize: o.batchSize,
            alignedChunk: !!o.alignedChunk, prefetchPatterns: o.prefetchPatterns ?? ['/'],
          });
          buildNs += ns(t1);
          opened.push(c);
          o.onProgress?.({ phase: 'build', id: l.digest, state: 'done', bytes: c.descriptor.size });
          log.info({ layer: l.digest, blob: c.descriptor.digest, size: c.descriptor.size }, 'layer converted');
          return c;
        })();
        layerCache.set(l.digest, p);
      }
      return p;
    };

    const convertManifest = async (desc: Descriptor, json: Record<string, unknown>, bytes: Buffer): Promise<ConvertedManifest> => {
      const m = json as unknown as Manifest;
      if (!Array.isArray(m.layers) || !m.config) throw einval(`manifest ${desc.digest} has no layers or config`);
      if (isNydusManifest(m)) throw einval(`manifest ${desc.digest} is already a Nydus image`);
      const cfgBytes = await srcClient.fetchBlobBytes(src, m.config);
      metrics.SourceImageSize += bytes.length + cfgBytes.length;
      const cfg = JSON.parse(cfgBytes.toString('utf8')) as ImageConfig;
      // a merged index needs a platform on both entries of a single-manifest source (upstream leaves them empty)
      const platform = desc.platform ?? (o.mergePlatform ? platformOfConfig(cfg) : undefined);
      const layers = await mapLimit(m.layers, CONCURRENCY, (l) => convertLayer(l));
      const t0 = process.hrtime.bigint();
      const merged = mergeBootstraps(layers, o.prefetchPatterns ?? ['/']);
      const bootFile = path.join(fs.mkdtempSync(path.join(tmp, 'nydus-merge-')), 'bootstrap.tar.gz');
      const bl = await writeBootstrapLayer(bootFile, merged.bootstrap,
        layers.map((l) => ({ blobHex: l.descriptor.digest.slice(7), meta: l.blobMeta })));
      buildNs += ns(t0);
      const bootDesc = bootstrapDescriptor(bootstrapMediaType(desc.mediaType, !!o.oci), bl.digest, bl.size, bl.tarDigest, o.fsVersion);
      const allLayers = [...layers.map((l) => l.descriptor), bootDesc];
      const newCfg = goJson(rewriteConfig(cfg, allLayers));
      const cfgDesc = { digest: sha256Digest(newCfg), size: newCfg.length };
      const r = rewriteManifest({
        source: m, sourceType: desc.mediaType, sourceDescriptor: desc, sourceReference: sourceRef,
        layers: allLayers, config: cfgDesc, oci: !!o.oci, fsVersion: o.fsVersion, builderVersion: BUILDER_VERSION,
        withReferrer: o.withReferrer, mergePlatform: o.mergePlatform,
      });
      const mbytes = goJson(r.manifest);
      const blobs: PushItem[] = [
        ...layers.map((l) => ({ desc: l.descriptor, file: l.blobPath })),
        { desc: bootDesc, file: bootFile },
        { desc: { ...r.manifest.config }, bytes: newCfg },
      ];
      const oci = o.mergePlatform ? { rewrite: prependEmptyLayer(m, { ...desc, platform }, cfg), sourceLayers: m.layers } : undefined;
      return { descriptor: { mediaType: r.mediaType, digest: sha256Digest(mbytes), size: mbytes.length, ...(platform ? { platform } : {}) }, mediaType: r.mediaType, bytes: mbytes, blobs, oci };
    };

    let results: ConvertedManifest[];
    let index: { mediaType: string; bytes: Buffer } | undefined;
    if (isIndexType(top.descriptor.mediaType)) {
      const idx = top.json as unknown as Index;
      const picked = (idx.manifests ?? []).filter((d) => isManifestType(d.mediaType) && platformMatches(d.platform, o.platforms));
      if (picked.length === 0) throw einval(`no manifest of ${sourceRef} matches the requested platforms`);
      results = await mapLimit(picked, 2, async (d) => {
        const child = await srcClient.fetchManifest(src, d.digest);
        const c = await convertManifest({ ...child.descriptor, mediaType: d.mediaType, platform: d.platform }, child.json, child.bytes);
        return c;
      });
      if (results.length > 1 && !o.mergePlatform) {
        const r = rewriteIndex(idx, top.descriptor.mediaType, results.map((c) => c.descriptor), !!o.oci);
        index = { mediaType: r.mediaType, bytes: goJson(r.index) };
      }
    } else if (isManifestType(top.descriptor.mediaType)) {
      results = [await convertManifest(top.descriptor, top.json, top.bytes)];
    } else {
      throw einval(`unsupported source media type ${top.descriptor.mediaType}`);
    }
    // pulls and builds overlap: pull = start → last layer downloaded, conversion = the rest
    const pullEnd = lastPullEnd || tConv;
    metrics.SourcePullElapsed = Number(pullEnd - tConv);
    metrics.ConversionElapsed = ns(pullEnd);
    log.debug({ pullNs, buildNs }, 'layer pull / build time summed over layers');

    // push: blobs, then manifests, then the index (children before parents)
    const tPush = process.hrtime.bigint();
    const blobs = new Map<string, PushItem>();
    for (const r of results) {
      for (const b of r.blobs) blobs.set(b.desc.digest, b);
      if (!r.oci) continue;
      // the merged index's OCI manifests: their (unchanged) source layers, the empty layer and the new config
      for (const l of r.oci.sourceLayers) blobs.set(l.digest, { desc: l, fromSource: true });
      blobs.set(r.oci.rewrite.emptyLayer.digest, { desc: r.oci.rewrite.emptyLayer, bytes: EMPTY_LAYER_GZIP });
      blobs.set(r.oci.rewrite.config.descriptor.digest, { desc: r.oci.rewrite.config.descriptor, bytes: r.oci.rewrite.config.bytes });
    }
    await mapLimit([...blobs.values()], CONCURRENCY, async (b) => {
      o.onProgress?.({ phase: 'push', id: b.desc.digest, state: 'start', bytes: b.desc.size });
      if (b.fromSource) await transferBlob(srcClient, src, dstClient, dst, b.desc);
      else await dstClient.pushBlob(dst, b.desc, () => (b.bytes ?? fs.createReadStream(b.file!)));
      metrics.TargetImageSize += b.desc.size;
      o.onProgress?.({ phase: 'push', id: b.desc.digest, state: 'done', bytes: b.desc.size });
    });
    if (o.mergePlatform) {
      const oci = results.map((r) => r.oci!.rewrite.manifest);
      for (const m of oci) await dstClient.pushManifest(dst, m.descriptor.digest, m.descriptor.mediaType, m.bytes);
      index = { mediaType: MediaType.OciIndex, bytes: mergedIndex(oci.map((m) => m.descriptor), results.map((r) => r.descriptor)) };
      metrics.TargetImageSize += oci.reduce((n, m) => n + m.bytes.length, 0);
    }
    let final: Descriptor;
    if (index) {
      for (const r of results) {
        await dstClient.pushManifest(dst, r.descriptor.digest, r.mediaType, r.bytes);
        metrics.TargetImageSize += r.bytes.length;
      }
      const d = await dstClient.pushManifest(dst, dst.tag!, index.mediaType, index.bytes);
      metrics.TargetImageSize += index.bytes.length;
      final = { mediaType: index.mediaType, digest: d, size: index.bytes.length };
    } else {
      const r = results[0];
      await dstClient.pushManifest(dst, dst.tag!, r.mediaType, r.bytes);
      metrics.TargetImageSize += r.bytes.length;
      final = { mediaType: r.mediaType, digest: r.descriptor.digest, size: r.bytes.length };
    }
    if (sink) await sink.finish(o.targetArchive!);
    metrics.TargetPushElapsed = ns(tPush);
    log.info({ source: sourceRef, target: formatReference(dst), digest: final.digest }, 'converted');
    return { descriptor: final, target: dst, metrics };
  } finally {
    for (const l of opened) l.image.close();
    await Promise.allSettled([srcClient.close(), dstClient.close()]);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
