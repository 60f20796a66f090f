/**
 * blob.meta (the v6 chunk-info table) of a blob whose chunks the bootstrap
 * does not list (storage-backends §5 "Files in work_dir"): taken from
 * `<dir>/<blob_id>.blob.meta` (+ `.blob.digest`) when a cache work_dir or the
 * bootstrap's directory (nydusify ships `image/<blob>.blob.meta`) has it,
 * else read through the blob's backend — the ci table plus its 4096-byte
 * header at `meta_ci_offset`, and the blob.digest array located through the
 * ToC or the tar headers — and then written to the work_dir in upstream's
 * cache-file form, so a restart (or a registry outage) needs no download.
 * Every fetched byte is checked against the blob table (readBlobMeta).
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { eio } from '../../common/errno';
import { warnLimited } from '../../common/log';
import { BlobFeatures } from '../format/constants';
import { BLOB_META_HEADER_SIZE, encodeBlobMetaHeader } from '../format/blob-meta';
import type { BlobInfo } from '../format/types';
import type { BlobBackend } from '../backend/backend';
import { type BlobMeta, type RangeSource, parseBlobMetaFile, readBlobMeta } from './blob-file';

export interface MetaLoadOptions {
  backend: BlobBackend;
  /** the cache work_dir: read from and written to */
  workDir?: string;
  /** more directories to look in (read only) */
  dirs?: string[];
}

/**
 * Whether `info`'s chunks need its blob.meta: a v6 blob with chunks that are
 * not in the bootstrap's chunk table, or with batch chunks (whose batch the
 * bootstrap's records do not name, batch.ts).
 */
export function needsBlobMeta(info: BlobInfo, chunksInBootstrap: number): boolean {
  return info.chunkCount > 0 && info.metaCompressedSize > 0 && (chunksInBootstrap === 0 || (info.features & BlobFeatures.BATCH) !== 0);
}

const metaFile = (dir: string, id: string) => path.join(dir, `${id}.blob.meta`);
const digestFile = (dir: string, id: string) => path.join(dir, `${id}.blob.digest`);

async function readIfFile(p: string): Promise<Buffer | undefined> {
  try {
    const st = await fsp.lstat(p);
    if (!st.isFile() || st.size > 1 << 30) return undefined;
    return await fsp.readFile(p);
  } catch {
    return undefined;
  }
}

/** From a `<id>.blob.meta` file, checked against the blob table. */
async function fromFiles(info: BlobInfo, dir: string): Promise<BlobMeta | undefined> {
  const buf = await readIfFile(metaFile(dir, info.blobId));
  if (!buf) return undefined;
  const meta = parseBlobMetaFile(buf, info.blobIndex);
  const h = meta.header;
  if (h.ciEntries !== info.chunkCount || h.ciOffset !== info.metaOffset || h.ciUncompressedSize !== info.metaUncompressedSize) {
    throw eio(`${metaFile(dir, info.blobId)} does not describe blob ${info.blobId} (entries ${h.ciEntries}, ci offset ${h.ciOffset})`);
  }
  if (info.features & BlobFeatures.INLINED_CHUNK_DIGEST) {
    const d = await readIfFile(digestFile(dir, info.blobId));
    if (!d || d.length !== info.chunkCount * 32) return undefined; // digests missing: fetch everything again
    meta.digests = d;
  }
  return meta;
}

/** A blob read through its backend: sync reads of ranges fetched beforehand (NeedRange asks for more). */
class FetchedRanges implements RangeSource {
  readonly ranges: Array<{ off: number; buf: Buffer }> = [];
  constructor(readonly name: string, readonly size: number) {}
  readAt(off: number, len: number): Buffer {
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(len) || off < 0 || len < 0 || off + len > this.size) {
      throw eio(`read of blob ${this.name} range [${off}, +${len}) is outside the blob (size ${this.size})`);
    }
    for (const r of this.ranges) {
      if (off >= r.off && off + len <= r.off + r.buf.length) return r.buf.subarray(off - r.off, off - r.off + len);
    }
    throw new NeedRange(off, len);
  }
}

class NeedRange extends Error {
  constructor(readonly off: number, readonly len: number) { super(`need range ${off}+${len}`); }
}

/** Largest single fetch while reading blob.meta (the ci table itself may be large; the rest is small). */
const MAX_META_FETCH = 256 << 20;

async function fromBackend(info: BlobInfo, backend: BlobBackend): Promise<BlobMeta> {
  const hasToc = (info.features & BlobFeatures.HAS_TOC) !== 0 && (info.features & BlobFeatures.INLINED_CHUNK_DIGEST) !== 0;
  // the blob's size matters only for finding the ToC at its end
  let size = Number.MAX_SAFE_INTEGER;
  if (hasToc) {
    if (!backend.size) throw eio(`blob ${info.blobId}: the ${backend.type} backend cannot tell the blob size needed to find its ToC`);
    size = await backend.size(info.blobId);
  }
  const src = new FetchedRanges(info.blobId, size);
  // the ci table and its header first: one request
  const first = info.metaCompressedSize + BLOB_META_HEADER_SIZE;
  if (first > MAX_META_FETCH) throw eio(`blob ${info.blobId}: blob.meta of ${first} bytes is too large`);
  src.ranges.push({ off: info.metaOffset, buf: await backend.read(info.blobId, info.metaOffset, first) });
  for (let i = 0; i < 8; i++) {
    try {
      return readBlobMeta(src, info);
    } catch (err) {
      if (!(err instanceof NeedRange)) throw err;
      let { off, len } = err;
      if (len > MAX_META_FETCH) throw eio(`blob ${info.blobId}: blob.meta part of ${len} bytes is too large`);
      // the ToC tail: fetch the last 4 KiB at once (its header, then its entries)
      if (hasToc && off + len === size && len <= 4096) { off = Math.max(0, size - 4096); len = size - off; }
      src.ranges.push({ off, buf: await backend.read(info.blobId, off, len) });
    }
  }
  throw eio(`blob ${info.blobId}: blob.meta needs too many separate reads`);
}

/** Write the cache-file forms (atomically); failures only cost a later download. */
async function save(info: BlobInfo, meta: BlobMeta, dir: string): Promise<void> {
  try {
    await fsp.mkdir(dir, { recursive: true });
    const padded = Math.ceil(meta.ciData.length / 4096) * 4096;
    const out = Buffer.alloc(padded + BLOB_META_HEADER_SIZE);
    meta.ciData.copy(out, 0);
    encodeBlobMetaHeader(meta.header).copy(out, padded);
    const writes: Array<[string, Buffer]> = [[metaFile(dir, info.blobId), out]];
    if (meta.digests) writes.unshift([digestFile(dir, info.blobId), meta.digests]);
    for (const [p, b] of writes) {
      const tmp = `${p}.tmp-${process.pid}`;
      await fsp.writeFile(tmp, b);
      await fsp.rename(tmp, p);
    }
  } catch (err) {
    warnLimited('storage.blobmeta', { blobId: info.blobId, err: (err as Error).message }, 'cannot write blob.meta to the cache');
  }
}

/** The blob.meta of `info` (see module doc). */
export async function loadBlobMeta(info: BlobInfo, o: MetaLoadOptions): Promise<BlobMeta> {
  for (const d of [o.workDir, ...(o.dirs ?? [])]) {
    if (!d) continue;
    try {
      const m = await fromFiles(info, d);
      if (m) return m;
    } catch (err) {
      warnLimited('storage.blobmeta', { blobId: info.blobId, dir: d, err: (err as Error).message }, 'ignoring a bad blob.meta file');
    }
  }
  const meta = await fromBackend(info, o.backend);
  if (o.workDir) await save(info, meta, o.workDir);
  return meta;
}
