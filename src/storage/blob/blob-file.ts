/**
 * Local data blob access (rafs-spec §4): positional reads of a blob file,
 * the ToC and inlined bootstrap at the blob tail (§4.3), the blob.meta
 * chunk-info table (§4.2), the blob.digest array, and the `<blob_id>.blob.meta`
 * cache-file form (§4.5).
 *
 * Everything read from a blob is untrusted: offsets are bounds-checked and
 * counts are capped before allocating; failures are ErrnoError (EINVAL for
 * malformed structures, EIO for short reads / digest mismatches).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Compressor, compressorName, decompress } from '../../common/compress';
import { sha256 } from '../../common/digest';
import { ErrnoError, einval, eio } from '../../common/errno';
import {
  BLOB_META_HEADER_SIZE,
  type BlobMetaHeader,
  ChunkInfoV2Flags,
  type MetaChunkInfo,
  type ZranInflateContext,
  chunkFlagsOf,
  chunkInfoSize,
  decodeBlobMetaHeader,
  decodeChunkInfo,
  decodeZranContexts,
  isChunkInfoV2,
} from '../format/blob-meta';
import { BlobFeatures, RAFS_MAX_BOOTSTRAP_SIZE, RAFS_MAX_CHUNKS_PER_BLOB, alignUp } from '../format/constants';
import {
  TAR_HEADER_SIZE,
  TOC_ENTRY_SIZE,
  type TocEntry,
  TocEntryName,
  TocFlags,
  compressorFromTocFlags,
  decodeTarHeader,
  decodeTocEntry,
  tryDecodeTarHeader,
} from '../format/toc';
import type { BlobInfo, ChunkInfo } from '../format/types';
import { BATCH_CONTEXT_SIZE, decodeBatchContext, resolveBatchMember } from './batch';

/** Upper bound for an uncompressed chunk-info table (+ zran/batch tables). */
export const MAX_CI_UNCOMPRESSED_SIZE = 1 << 30;
const ZERO_DIGEST = Buffer.alloc(32);

/** Positional reads of a blob (a local file, or ranges fetched from a backend). */
export interface RangeSource {
  readonly size: number;
  /** name used in error messages (blob id or file name) */
  readonly name: string;
  /** Exactly `len` bytes at `off`. */
  readAt(off: number, len: number): Buffer;
}

/** A local blob file read with explicit positions. */
export class BlobFile implements RangeSource {
  private fd: number;
  readonly size: number;
  /** name used in error messages (blob id or file name) */
  readonly name: string;

  private constructor(fd: number, size: number, name: string) {
    this.fd = fd;
    this.size = size;
    this.name = name;
  }

  static open(p: string, name?: string): BlobFile {
    let fd: number;
    try {
      // O_NONBLOCK: a FIFO (or device) put where a blob should be must not block the open
      fd = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
      throw new ErrnoError(code, `failed to open blob ${p}: ${(e as Error).message}`, { cause: e });
    }
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw einval(`blob ${p} is not a regular file`);
      return new BlobFile(fd, st.size, name ?? path.basename(p));
    } catch (e) {
      fs.closeSync(fd);
      if (e instanceof ErrnoError) throw e;
      throw eio(`failed to stat blob ${p}: ${(e as Error).message}`, e);
    }
  }

  /** Read exactly `len` bytes at `off`; EIO when the range leaves the file. */
  readAt(off: number, len: number): Buffer {
    if (this.fd < 0) throw eio(`blob ${this.name} is closed`);
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(len) || off < 0 || len < 0 || off + len > this.size) {
      throw eio(`read of blob ${this.name} range [${off}, +${len}) is outside the blob (size ${this.size})`);
    }
    const buf = Buffer.allocUnsafe(len);
    let done = 0;
    while (done < len) {
      let n: number;
      try {
        n = fs.readSync(this.fd, buf, done, len - done, off + done);
      } catch (e) {
        throw eio(`failed to read blob ${this.name} range [${off}, +${len}): ${(e as Error).message}`, e);
      }
      if (n === 0) throw eio(`short read of blob ${this.name} range [${off}, +${len}): EOF after ${done} bytes`);
      done += n;
    }
    return buf;
  }

  close(): void {
    if (this.fd >= 0) {
      fs.closeSync(this.fd);
      this.fd = -1;
    }
  }
}

/** Parsed ToC: entries plus the values stored in the v6 blob table. */
export interface TocList {
  entries: TocEntry[];
  /** sha256(entries ‖ ToC tar header) = blob_toc_digest */
  tocDigest: Buffer;
  /** 128*k + 512 = blob_toc_size */
  tocSize: number;
  /** true when synthesized from a pre-ToC blob whose last header is image.boot */
  legacy: boolean;
}

/**
 * Locate and parse the ToC from the blob tail. Returns undefined when the blob
 * has neither a `rafs.blob.toc` nor (legacy) a trailing `image.boot` header.
 * A present but malformed ToC throws EINVAL.
 */
export function readTocList(blob: RangeSource, expectDigest?: Buffer): TocList | undefined {
  if (blob.size < TAR_HEADER_SIZE) return undefined;
  const hdrOff = blob.size - TAR_HEADER_SIZE;
  const hdrBuf = blob.readAt(hdrOff, TAR_HEADER_SIZE);
  const hdr = tryDecodeTarHeader(hdrBuf);
  if (!hdr || hdr.typeflag !== '0') return undefined;
  if (hdr.name === TocEntryName.BLOB_TOC) {
    if (!hdr.gnu) throw einval(`blob ${blob.name}: ToC tar header is not a GNU header`);
    // upstream reads at most the last 4096 bytes, so the entries fit in 3584 bytes
    const maxEntries = Math.min(hdrOff, 4096 - TAR_HEADER_SIZE);
    if (hdr.size > maxEntries || hdr.size % TOC_ENTRY_SIZE !== 0 || hdr.size === 0) {
      throw einval(`blob ${blob.name}: invalid ToC size ${hdr.size} (max ${maxEntries}, multiple of 128)`);
    }
    const data = blob.readAt(hdrOff - hdr.size, hdr.size);
    const tocDigest = sha256(data, hdrBuf);
    if (expectDigest && !expectDigest.equals(ZERO_DIGEST) && !expectDigest.equals(tocDigest)) {
      throw eio(`blob ${blob.name}: ToC digest ${tocDigest.toString('hex')} != expected ${expectDigest.toString('hex')}`);
    }
    const entries: TocEntry[] = [];
    for (let p = 0; p < hdr.size; p += TOC_ENTRY_SIZE) entries.push(decodeTocEntry(data, p));
    return { entries, tocDigest, tocSize: hdr.size + TAR_HEADER_SIZE, legacy: false };
  }
  if (hdr.name === TocEntryName.BOOTSTRAP) {
    if (hdr.size > hdrOff) throw einval(`blob ${blob.name}: image.boot size ${hdr.size} exceeds the blob`);
    const entry: TocEntry = {
      flags: TocFlags.COMPRESSION_NONE,
      name: TocEntryName.BOOTSTRAP,
      digest: Buffer.alloc(32),
      compressedOffset: hdrOff - hdr.size,
      compressedSize: hdr.size,
      uncompressedSize: hdr.size,
    };
    return { entries: [entry], tocDigest: Buffer.alloc(32), tocSize: 0, legacy: true };
  }
  return undefined;
}

/** ToC entries (see readTocList), or undefined for blobs without a ToC. */
export function readToc(blob: RangeSource): TocEntry[] | undefined {
  return readTocList(blob)?.entries;
}

export function findTocEntry(entries: TocEntry[], name: string): TocEntry | undefined {
  return entries.find((e) => e.name === name);
}

/**
 * Read one ToC member, decompressed and checked against its size and sha256
 * (a zero digest is not checked). `maxSize` caps the uncompressed size.
 */
export function extractTocEntry(blob: RangeSource, e: TocEntry, maxSize: number): Buffer {
  const c = compressorFromTocFlags(e.flags);
  if (e.uncompressedSize > maxSize) throw einval(`blob ${blob.name}: ToC entry ${e.name} size ${e.uncompressedSize} exceeds limit ${maxSize}`);
  if (c === Compressor.None && e.compressedSize !== e.uncompressedSize) {
    throw einval(`blob ${blob.name}: invalid ToC entry ${e.name}: uncompressed but sizes differ`);
  }
  if (e.compressedOffset + e.compressedSize > blob.size) {
    throw einval(`blob ${blob.name}: ToC entry ${e.name} [${e.compressedOffset}, +${e.compressedSize}) exceeds blob size ${blob.size}`);
  }
  const raw = blob.readAt(e.compressedOffset, e.compressedSize);
  const data = c === Compressor.None ? raw : decompress(c, raw, e.uncompressedSize);
  if (!e.digest.equals(ZERO_DIGEST)) {
    const d = sha256(data);
    if (!d.equals(e.digest)) throw eio(`blob ${blob.name}: digest of ToC entry ${e.name} is ${d.toString('hex')}, expected ${e.digest.toString('hex')}`);
  }
  return data;
}

/** The bootstrap inlined in a blob (`image.boot`), or undefined when absent. */
export function extractInlinedBootstrap(blob: BlobFile): Buffer | undefined {
  const toc = readTocList(blob);
  if (!toc) return undefined;
  const e = findTocEntry(toc.entries, TocEntryName.BOOTSTRAP);
  if (!e) return undefined;
  return extractTocEntry(blob, e, RAFS_MAX_BOOTSTRAP_SIZE);
}

const ciCompressor = (v: number): Compressor => {
  if (v > Compressor.Zstd) throw einval(`unknown blob.meta ci compressor ${v}`);
  return v as Compressor;
};

/** Decoded chunk-info table of one blob; structurally a BlobChunkTable. */
export class BlobMeta {
  readonly header: BlobMetaHeader;
  readonly v2: boolean;
  /** uncompressed ci data (chunk infos [+ zran/batch tables]) */
  readonly ciData: Buffer;
  /** blob.digest array (32 bytes per chunk) when known */
  digests?: Buffer;
  readonly blobIndex: number;

  constructor(header: BlobMetaHeader, ciData: Buffer, blobIndex = 0, digests?: Buffer) {
    const v2 = isChunkInfoV2(header.features);
    if (header.ciEntries > RAFS_MAX_CHUNKS_PER_BLOB) throw einval(`blob.meta has too many entries ${header.ciEntries}`);
    const need = header.ciEntries * chunkInfoSize(v2);
    if (ciData.length < need) throw einval(`blob.meta ci data of ${ciData.length} bytes is smaller than ${header.ciEntries} entries need (${need})`);
    if (digests && digests.length !== header.ciEntries * 32) throw einval(`blob.digest array size ${digests.length} != 32 * ${header.ciEntries}`);
    this.header = header;
    this.v2 = v2;
    this.ciData = ciData;
    this.blobIndex = blobIndex;
    this.digests = digests;
  }

  get count(): number {
    return this.header.ciEntries;
  }

  /** Raw decoded record, or undefined when out of range. */
  record(ciIndex: number): MetaChunkInfo | undefined {
    if (!Number.isInteger(ciIndex) || ciIndex < 0 || ciIndex >= this.header.ciEntries) return undefined;
    return decodeChunkInfo(this.ciData, ciIndex * chunkInfoSize(this.v2), this.v2);
  }

  /** Chunk `ciIndex` as a ChunkInfo (fileOffset 0; digest from blob.digest or zero). */
  get(ciIndex: number): ChunkInfo | undefined {
    const m = this.record(ciIndex);
    if (!m) return undefined;
    const digest = this.digests ? Buffer.from(this.digests.subarray(ciIndex * 32, ciIndex * 32 + 32)) : Buffer.alloc(32);
    const c: ChunkInfo = {
      digest,
      blobIndex: this.blobIndex,
      index: ciIndex,
      flags: chunkFlagsOf(m),
      compressed: m.compressed,
      compressedOffset: m.compressedOffset,
      compressedSize: m.compressedSize,
      uncompressedOffset: m.uncompressedOffset,
      uncompressedSize: m.uncompressedSize,
      fileOffset: 0,
      crc32: this.v2 && m.v2Flags & 0x10 ? m.dataLo : 0,
    };
    if (!this.v2 || !(m.v2Flags & ChunkInfoV2Flags.BATCH)) return c;
    // a batch member (batch.ts): data = batch index << 32 | offset in the batch buffer
    if (!(this.header.features & BlobFeatures.BATCH)) throw einval(`blob.meta chunk ${ciIndex} is a batch chunk but the blob has no BATCH feature`);
    return resolveBatchMember(c, m.dataHi, m.dataLo, decodeBatchContext(this.ciData, this.header.ciZranOffset, this.batchCount, m.dataHi));
  }

  /** Number of batch contexts (0 unless BATCH); the table must lie inside the ci data. */
  private get batchCount(): number {
    const h = this.header;
    if (!(h.features & BlobFeatures.BATCH)) return 0;
    if (h.ciZranOffset + h.ciZranCount * BATCH_CONTEXT_SIZE > this.ciData.length || h.ciZranCount * BATCH_CONTEXT_SIZE > h.ciZranSize) {
      throw einval(`batch context table [${h.ciZranOffset}, +${h.ciZranCount}x${BATCH_CONTEXT_SIZE}) exceeds ci data of ${this.ciData.length} bytes`);
    }
    return h.ciZranCount;
  }

  zranContexts(): ZranInflateContext[] {
    return decodeZranContexts(this.ciData, this.header);
  }
}

/**
 * Read and validate the blob.meta of a blob against its BlobInfo (v6 blob
 * table entry). Fills digests from blob.digest when INLINED_CHUNK_DIGEST.
 */
export function readBlobMeta(blob: RangeSource, info: BlobInfo): BlobMeta {
  const where = `blob ${info.blobId || blob.name}`;
  if (info.features & BlobFeatures.ENCRYPTED) throw einval(`${where}: encrypted blob.meta is not supported`);
  if (info.metaCompressedSize > info.metaUncompressedSize) {
    throw einval(`${where}: ci compressed size ${info.metaCompressedSize} > uncompressed size ${info.metaUncompressedSize}`);
  }
  if (info.metaUncompressedSize > MAX_CI_UNCOMPRESSED_SIZE || info.metaCompressedSize > MAX_CI_UNCOMPRESSED_SIZE) {
    throw einval(`${where}: blob.meta size ${info.metaUncompressedSize} too large`);
  }
  const end = info.metaOffset + info.metaCompressedSize + BLOB_META_HEADER_SIZE;
  if (end > blob.size) throw einval(`${where}: blob.meta [${info.metaOffset}, ${end}) exceeds blob size ${blob.size}`);
  const raw = blob.readAt(info.metaOffset, info.metaCompressedSize + BLOB_META_HEADER_SIZE);
  const header = decodeBlobMetaHeader(raw, info.metaCompressedSize);
  const mismatch = (f: string, a: number, b: number) => einval(`${where}: blob.meta header ${f} ${a} != blob table value ${b}`);
  if (header.ciEntries !== info.chunkCount) throw mismatch('ci_entries', header.ciEntries, info.chunkCount);
  if (header.ciCompressor !== info.metaCompressor) throw mismatch('ci_compressor', header.ciCompressor, info.metaCompressor);
  if (header.ciOffset !== info.metaOffset) throw mismatch('ci_offset', header.ciOffset, info.metaOffset);
  if (header.ciCompressedSize !== info.metaCompressedSize) throw mismatch('ci_compressed_size', header.ciCompressedSize, info.metaCompressedSize);
  if (header.ciUncompressedSize !== info.metaUncompressedSize) throw mismatch('ci_uncompressed_size', header.ciUncompressedSize, info.metaUncompressedSize);
  if (isChunkInfoV2(header.features) !== isChunkInfoV2(info.features)) throw einval(`${where}: CHUNK_INFO_V2 differs between blob.meta header and blob table`);
  const need = header.ciEntries * chunkInfoSize(isChunkInfoV2(header.features));
  if (header.ciUncompressedSize < need) throw einval(`${where}: ci_uncompressed_size ${header.ciUncompressedSize} < ${need} needed for ${header.ciEntries} entries`);
  const comp = ciCompressor(header.ciCompressor);
  const packed = raw.subarray(0, info.metaCompressedSize);
  let ciData: Buffer;
  if (comp === Compressor.None) {
    ciData = packed;
  } else {
    try {
      ciData = decompress(comp, packed, header.ciUncompressedSize);
    } catch (e) {
      throw eio(`${where}: failed to decompress ${compressorName(comp)} blob.meta: ${(e as Error).message}`, e);
    }
  }
  const meta = new BlobMeta(header, ciData, info.blobIndex);
  if ((info.features & BlobFeatures.INLINED_CHUNK_DIGEST) && info.chunkCount > 0) meta.digests = readBlobDigests(blob, info);
  return meta;
}

/**
 * The blob.digest array (32 bytes per chunk, in ci order), located through the
 * ToC or, lacking one, right after the blob.meta tar header. Undefined when the
 * blob does not carry INLINED_CHUNK_DIGEST.
 */
export function readBlobDigests(blob: RangeSource, info: BlobInfo): Buffer | undefined {
  if (!(info.features & BlobFeatures.INLINED_CHUNK_DIGEST) || info.chunkCount === 0) return undefined;
  const where = `blob ${info.blobId || blob.name}`;
  if (info.chunkCount > RAFS_MAX_CHUNKS_PER_BLOB) throw einval(`${where}: chunk count ${info.chunkCount} too large`);
  const size = info.chunkCount * 32;
  const toc = info.features & BlobFeatures.HAS_TOC ? readTocList(blob) : undefined;
  const e = toc && findTocEntry(toc.entries, TocEntryName.BLOB_DIGEST);
  if (e) {
    if (e.uncompressedSize !== size) throw einval(`${where}: blob.digest size ${e.uncompressedSize} != 32 * ${info.chunkCount}`);
    return extractTocEntry(blob, e, size);
  }
  if (!(info.features & BlobFeatures.HAS_TAR_HEADER)) throw einval(`${where}: cannot locate blob.digest without ToC or tar headers`);
  const off = info.metaOffset + info.metaCompressedSize + BLOB_META_HEADER_SIZE + TAR_HEADER_SIZE;
  if (off + size + TAR_HEADER_SIZE > blob.size) throw einval(`${where}: blob.digest [${off}, +${size}) exceeds blob size ${blob.size}`);
  const hdr = decodeTarHeader(blob.readAt(off + size, TAR_HEADER_SIZE));
  if (hdr.name !== TocEntryName.BLOB_DIGEST || hdr.size !== size) throw einval(`${where}: no blob.digest tar header after blob.meta`);
  return blob.readAt(off, size);
}

/**
 * Parse the `<blob_id>.blob.meta` cache-file form (§4.5): uncompressed ci data
 * zero-padded to 4K, then the 4096-byte header at the last 4096 bytes.
 */
export function parseBlobMetaFile(buf: Buffer, blobIndex = 0): BlobMeta {
  if (buf.length < BLOB_META_HEADER_SIZE || buf.length % 4096 !== 0) {
    throw einval(`blob.meta file size ${buf.length} is not a positive multiple of 4096`);
  }
  const header = decodeBlobMetaHeader(buf, buf.length - BLOB_META_HEADER_SIZE);
  if (header.ciUncompressedSize > MAX_CI_UNCOMPRESSED_SIZE || alignUp(header.ciUncompressedSize, 4096) + BLOB_META_HEADER_SIZE > buf.length) {
    throw einval(`blob.meta file: ci_uncompressed_size ${header.ciUncompressedSize} exceeds file of ${buf.length} bytes`);
  }
  if (header.features & BlobFeatures.ENCRYPTED) throw einval(`encrypted blob.meta is not supported`);
  return new BlobMeta(header, buf.subarray(0, header.ciUncompressedSize), blobIndex);
}
