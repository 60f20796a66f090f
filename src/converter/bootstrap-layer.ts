/**
 * The bootstrap layer (nydusify-snapshotter §2 step 6, rafs-spec §5): the
 * per-layer bootstraps merged by our builder's merge (blob ids = the Nydus
 * layer digests, taken from the layer order, not completion order), then a
 * gzip tar holding dir `image` (0755), `image/image.boot` (0444) and, for v6,
 * `image/<blob hex>.blob.meta` per layer that has chunks (an empty blob.meta
 * is skipped as upstream). The tar's sha256 is the layer's diff_id.
 * readBootstrapLayer is the other direction (check, the snapshotter's index
 * detection): only those files are taken out of a (hostile) layer.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { createGunzip, createGzip } from 'node:zlib';
import * as tarStream from 'tar-stream';
import { einval, eio } from '../common/errno';
import { writeBootstrapV5 } from '../rafs/builder/bootstrap-v5';
import { writeBootstrapV6 } from '../rafs/builder/bootstrap-v6';
import { lookupPath } from '../rafs/builder/create';
import { mergeLayers } from '../rafs/builder/merge';
import type { ConvertedLayer } from './layer';

/** Merge the layers' bootstraps bottom → top (OCI whiteouts applied); returns the merged bootstrap and its blob ids. */
export function mergeBootstraps(layers: ConvertedLayer[], prefetchPatterns: string[]): { bootstrap: Buffer; blobIds: string[] } {
  if (layers.length === 0) throw einval('an image without layers cannot be converted');
  const first = layers[0].image.sb.meta;
  for (const l of layers) {
    if (l.image.sb.meta.version !== first.version || l.image.sb.meta.chunkSize !== first.chunkSize) throw einval('layers were built with different RAFS versions or chunk sizes');
  }
  const m = mergeLayers(layers.map((l) => ({ sb: l.image.sb, blobIdOverride: l.descriptor.digest.slice('sha256:'.length), implicitDirs: l.implicitDirs })), 'oci');
  const prefetch = prefetchPatterns.map((p) => lookupPath(m.root, p)).filter((x): x is NonNullable<typeof x> => !!x);
  const bootstrap = (first.version === 5 ? writeBootstrapV5 : writeBootstrapV6)(m.root, {
    chunkSize: first.chunkSize, compressor: first.compressor, digester: first.digester,
    explicitUidGid: first.explicitUidGid, blobs: m.blobs, prefetch,
    extraFlags: first.flags & (0x100 | 0x0100_0000),
  });
  return { bootstrap, blobIds: m.blobs.map((b) => b.blobId) };
}

export interface BootstrapLayer {
  file: string;
  /** sha256 / size of the gzip file */
  digest: string;
  size: number;
  /** sha256 of the uncompressed tar (diff_id) */
  tarDigest: string;
}

/** Write the bootstrap layer (module doc) to `file`. */
export async function writeBootstrapLayer(file: string, bootstrap: Buffer, blobMetas: Array<{ blobHex: string; meta?: Buffer }>): Promise<BootstrapLayer> {
  const pack = tarStream.pack();
  const tarHash = createHash('sha256');
  const gzHash = createHash('sha256');
  let gzSize = 0;
  const tap = (h: ReturnType<typeof createHash>, count: boolean) => new Transform({
    transform(c: Buffer, _e, cb) { h.update(c); if (count) gzSize += c.length; cb(null, c); },
  });
  const done = pipeline(pack, tap(tarHash, false), createGzip(), tap(gzHash, true), fs.createWriteStream(file));
  const mtime = new Date(0);
  pack.entry({ name: 'image', type: 'directory', mode: 0o755, mtime });
  pack.entry({ name: 'image/image.boot', mode: 0o444, size: bootstrap.length, mtime }, bootstrap);
  const seen = new Set<string>();
  for (const b of blobMetas) {
    if (!b.meta || seen.has(b.blobHex)) continue;
    seen.add(b.blobHex);
    pack.entry({ name: `image/${b.blobHex}.blob.meta`, mode: 0o444, size: b.meta.length, mtime }, b.meta);
  }
  pack.finalize();
  await done;
  return { file, digest: `sha256:${gzHash.digest('hex')}`, size: gzSize, tarDigest: `sha256:${tarHash.digest('hex')}` };
}

/** Largest file taken out of a bootstrap layer (a bootstrap is at most a few hundred MiB). */
export const MAX_BOOTSTRAP_LAYER_ENTRY = 1 << 30;
const BOOTSTRAP_LAYER_FILE = /^image\/(image\.boot|[a-f0-9]{64}\.blob\.meta)$/;

/**
 * Unpack a gzip bootstrap layer into `outDir`: `image/image.boot` and
 * `image/<blob hex>.blob.meta` only (paths normalised; anything else, links
 * included, is skipped; entries over MAX_BOOTSTRAP_LAYER_ENTRY refused).
 * Returns the sha256 of the uncompressed tar (the layer's diff_id) and
 * whether image.boot was present.
 */
export async function readBootstrapLayer(gz: Readable, outDir: string): Promise<{ tarDigest: string; hasBootstrap: boolean }> {
  fs.mkdirSync(path.join(outDir, 'image'), { recursive: true });
  const h = createHash('sha256');
  const tap = new Transform({ transform(c: Buffer, _e, cb) { h.update(c); cb(null, c); } });
  const extract = tarStream.extract();
  let hasBootstrap = false;
  const files = (async () => {
    for await (const entry of extract) {
      const name = entry.header.name.split('/').filter((c) => c && c !== '.').join('/');
      if (entry.header.type === 'file' && BOOTSTRAP_LAYER_FILE.test(name)) {
        if ((entry.header.size ?? 0) > MAX_BOOTSTRAP_LAYER_ENTRY) throw eio(`bootstrap layer: ${name} is too large`);
        await pipeline(entry, fs.createWriteStream(path.join(outDir, name), { mode: 0o600 }));
        if (name === 'image/image.boot') hasBootstrap = true;
      } else entry.resume();
    }
  })();
  await Promise.all([pipeline(gz, createGunzip(), tap, extract), files]);
  return { tarDigest: `sha256:${h.digest('hex')}`, hasBootstrap };
}
