/**
 * One source layer → one Nydus data blob (nydusify-snapshotter §2 step 4),
 * built in-process by our builder (`createImage`, the `--type tar-rafs` path):
 * the layer streams from the registry through a verifying stream, gzip
 * (node:zlib) or zstd (zstd-napi) decompression and a sha256 (its diff_id)
 * into `<dir>/layer.tar`; the builder reads that tar and writes
 * `<dir>/blob.rafs` (v6: `--blob-inline-meta --features blob-toc`, so the
 * layer bootstrap and blob.meta live in the blob as upstream; v5: a separate
 * bootstrap, since v5 cannot inline). Whiteouts stay in the layer (upstream's
 * `--whiteout-spec none`); the merge applies them.
 *
 * Deliberate difference (noted): the builder wants a seekable tar (it reads
 * file data lazily by offset), so the decompressed layer goes to a temporary
 * file instead of a FIFO; the layer is never held in memory, and the tar is
 * deleted once the blob is written.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { DecompressStream } from 'zstd-napi';
import type { Compressor } from '../common/compress';
import { DigestAlgorithm } from '../common/digest';
import { einval } from '../common/errno';
import { createImage } from '../rafs/builder/create';
import { RafsImage } from '../rafs/image';
import { BlobFile, readBlobMeta } from '../storage/blob/blob-file';
import { BLOB_META_HEADER_SIZE, encodeBlobMetaHeader } from '../storage/format/blob-meta';
import { type Descriptor, layerCompression } from '../remote/media-types';
import { nydusBlobDescriptor } from './manifest';

export interface LayerBuildOptions {
  fsVersion: 5 | 6;
  compressor: Compressor;
  chunkSize: number;
  /** `--batch-size` (v6; 0 = off) */
  batchSize?: number;
  alignedChunk: boolean;
  prefetchPatterns: string[];
}

export interface ConvertedLayer {
  source: Descriptor;
  /** sha256 of the uncompressed source tar */
  diffId: string;
  /** the Nydus blob (content-store form descriptor, digest = sha256 of the file) */
  descriptor: Descriptor;
  blobPath: string;
  /** the per-layer image (sb for the merge); close() when done */
  image: RafsImage;
  /** v6 `<blob>.blob.meta` (ci data padded to 4K + header); undefined without chunks or for v5 */
  blobMeta?: Buffer;
  dir: string;
  /** directories the layer tar only implied (they keep the lower layer's attributes in the merge) */
  implicitDirs?: Set<string>;
}

/** Hash passing through, counting bytes. */
class HashStream extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: (err?: Error | null, d?: Buffer) => void): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }
}

/** Decompress `layer` (by media type) into `file`; returns sha256 and size of the tar. */
export async function layerToTar(layer: Readable, mediaType: string, file: string): Promise<{ diffId: string; size: number }> {
  const comp = layerCompression(mediaType);
  if (!comp) throw einval(`layer media type ${mediaType} is not a tar layer`);
  const h = new HashStream();
  const out = fs.createWriteStream(file);
  if (comp === 'gzip') await pipeline(layer, createGunzip(), h, out);
  else if (comp === 'zstd') await pipeline(layer, new DecompressStream() as unknown as Transform, h, out);
  else await pipeline(layer, h, out);
  return { diffId: `sha256:${h.hash.digest('hex')}`, size: h.bytes };
}

async function fileDigest(file: string): Promise<{ digest: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const c of fs.createReadStream(file)) { h.update(c as Buffer); size += (c as Buffer).length; }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

/** `<blob>.blob.meta` cache-file form of a built blob (rafs-spec §4.5). */
function blobMetaFile(image: RafsImage, blobPath: string): Buffer | undefined {
  const info = image.sb.blobs[0];
  if (!info || info.chunkCount === 0) return undefined;
  const f = BlobFile.open(blobPath);
  try {
    const m = readBlobMeta(f, info);
    const padded = Math.ceil(m.ciData.length / 4096) * 4096;
    const out = Buffer.alloc(padded + BLOB_META_HEADER_SIZE);
    m.ciData.copy(out, 0);
    encodeBlobMetaHeader(m.header).copy(out, padded);
    return out;
  } finally {
    f.close();
  }
}

/**
 * Build the Nydus blob of a decompressed layer tar in `dir` (module doc);
 * `tar` is deleted afterwards.
 */
export async function buildLayer(source: Descriptor, diffId: string, tar: string, dir: string, o: LayerBuildOptions): Promise<ConvertedLayer> {
  const blobPath = path.join(dir, 'blob.rafs');
  const bootPath = path.join(dir, 'layer.boot');
  const v6 = o.fsVersion === 6;
  const built = await createImage({
    source: tar,
    type: 'tar-rafs',
    fsVersion: o.fsVersion,
    compressor: o.compressor,
    digester: DigestAlgorithm.Blake3,
    chunkSize: o.chunkSize,
    batchSize: o.batchSize || undefined,
    bootstrap: v6 ? undefined : bootPath,
    blob: blobPath,
    blobInlineMeta: v6,
    blobToc: v6,
    alignedChunk: o.alignedChunk,
    repeatable: false,
    prefetchPatterns: o.prefetchPatterns,
  });
  fs.rmSync(tar, { force: true });
  // a v5 layer without file data has no blob: an empty one stands for it
  if (!fs.existsSync(blobPath)) fs.writeFileSync(blobPath, Buffer.alloc(0));
  const { digest, size } = await fileDigest(blobPath);
  const image = v6 ? RafsImage.open({ bootstrap: blobPath, blobFile: blobPath }) : RafsImage.open({ bootstrap: bootPath, blobFile: blobPath });
  return {
    source, diffId, blobPath, image, dir, implicitDirs: built.implicitDirs,
    descriptor: nydusBlobDescriptor(digest, size),
    blobMeta: v6 ? blobMetaFile(image, blobPath) : undefined,
  };
}
