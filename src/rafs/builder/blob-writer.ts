/**
 * Writer for one RAFS data blob (rafs-spec §4): chunk data (§4.1), the
 * blob.meta chunk-info table + 4096-byte header (§4.2), and with tar headers
 * (`--blob-inline-meta`, `--features blob-toc`) the blob.digest array, the
 * inlined bootstrap and the ToC (§4.3). The blob id follows §4.4: sha256 over
 * every byte written except the raw blob.digest array (for plain blobs that is
 * simply sha256 of the file).
 *
 * Output is streamed through an internal buffer to a temporary file in the
 * destination directory and renamed to `<blobDir>/<blobId>` (or `blobPath`).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Compressor, compress } from '../../common/compress';
import { DigestAlgorithm, type Sha256Stream, digest, sha256, sha256Stream } from '../../common/digest';
import { ErrnoError, einval, eio } from '../../common/errno';
import {
  BLOB_META_HEADER_SIZE,
  CHUNK_INFO_V1_SIZE,
  CHUNK_INFO_V2_SIZE,
  ChunkInfoV2Flags,
  encodeBlobMetaHeader,
  encodeChunkInfoV1,
  encodeChunkInfoV2,
} from '../../storage/format/blob-meta';
// (from where they are defined: a compiled re-export is a getter called at each use)
import { BlobChunkFlags, BlobFeatures, RAFS_MAX_CHUNKS_PER_BLOB, alignUp } from '../../storage/format/constants';
import { validateChunkSize } from '../format/constants';
import { TOC_ENTRY_SIZE, type TocEntry, TocEntryName, encodeTarHeader, encodeTocEntry, tocFlagsFromCompressor } from '../../storage/format/toc';
import type { BlobInfo, ChunkInfo } from '../metadata/types';
import { noBlobMeta } from '../metadata/types';
import { BATCH_CONTEXT_SIZE, type BatchContext, encodeBatchContexts } from '../../storage/blob/batch';
import type { BuildInode } from './tree';
import { BlobSink } from './blob-sink';

export const INLINE_PLACEHOLDER_BLOB_ID = 'x'.repeat(64);
const WRITE_BUFFER_SIZE = 4 << 20;
/** padding source: a chunk is padded to its 4 KiB-aligned end, so by less than 4 KiB */
const ZEROS = Buffer.alloc(4096);

export interface BlobWriterOptions {
  compressor: Compressor;
  digester: DigestAlgorithm;
  chunkSize: number;
  /** v6: uncompressed offsets advance by round_up_4k(size); v5 default: by size */
  aligned: boolean;
  /** `--features blob-toc`: tar headers + blob.digest + ToC */
  blobToc: boolean;
  /** `--blob-inline-meta`: bootstrap inlined into the blob */
  inlineMeta: boolean;
  /** 24-byte chunk infos (forced when crc32 is on) */
  chunkInfoV2?: boolean;
  /** compute CRC-32C per chunk (HAS_CRC32; needs v2 chunk infos) */
  crc32?: boolean;
  /** write blob.meta (default: `aligned`, i.e. v6 only, as upstream) */
  blobMeta?: boolean;
  /** dedup map shared across files/blobs: key = dedupKey(digest, size) */
  dedup: Map<string, ChunkInfo>;
  /** index of this blob in the blob table (default 0) */
  blobIndex?: number;
  /** directory for `<blobId>` output (default: dirname of blobPath, else cwd) */
  blobDir?: string;
  /** exact output path (`--blob`) */
  blobPath?: string;
  /** user supplied blob id (`--blob-id`) */
  blobId?: string;
  /** `--batch-size`: merge small single-chunk files into batches of this size (0 = off; v6 only) */
  batchSize?: number;
}

export interface BlobWriterResult {
  info: BlobInfo;
  blobId: string;
  /** final path of the blob file; '' when no blob was written (no chunks) */
  path: string;
}

/** digest (as 32 one-byte characters, half the memory of hex) and size */
export const dedupKey = (d: Buffer, size: number): string => `${d.toString('latin1')}:${size.toString(16)}`;

export class BlobWriter {
  readonly opts: BlobWriterOptions;
  readonly blobIndex: number;
  readonly v2: boolean;
  readonly metaEnabled: boolean;

  private fd = -1;
  private tmpPath = '';
  private buf: Buffer = Buffer.allocUnsafe(WRITE_BUFFER_SIZE);
  private bufLen = 0;
  /** bytes written (position in the blob) */
  private pos = 0;
  /** the blob id's sha256 (on the thread pool once written through a sink) */
  private hash: Sha256Stream = sha256Stream();
  /** writes the file behind this thread, when `useSink` was called */
  private sink?: BlobSink;

  private chunkCount = 0;
  private uncompressedEnd = 0;
  private ciParts: Buffer[] = [];
  private ciCur: Buffer;
  private ciCurLen = 0;
  private digestParts: Buffer[] = [];
  private finished = false;
  /** batch mode (storage/blob/batch.ts): the batch being filled and the contexts of those written */
  private readonly batchSize: number;
  private batchParts: Buffer[] = [];
  private batchLen = 0;
  private batchContexts: BatchContext[] = [];

  constructor(opts: BlobWriterOptions) {
    validateChunkSize(opts.chunkSize);
    this.opts = opts;
    this.blobIndex = opts.blobIndex ?? 0;
    this.batchSize = opts.batchSize ?? 0;
    // upstream (src/bin/nydus-image/main.rs) turns on CHUNK_INFO_V2 with BATCH
    this.v2 = !!(opts.chunkInfoV2 || opts.crc32 || this.batchSize > 0);
    this.metaEnabled = opts.blobMeta ?? opts.aligned;
    if (this.metaEnabled && !opts.aligned) throw einval('blob.meta requires 4K-aligned uncompressed chunk offsets');
    if (this.batchSize > 0) {
      validateChunkSize(this.batchSize, 'batch size');
      if (!this.metaEnabled) throw einval('batch chunks need blob.meta (RAFS v6)');
      if (this.batchSize > opts.chunkSize) throw einval(`batch size 0x${this.batchSize.toString(16)} is bigger than chunk size 0x${opts.chunkSize.toString(16)}`);
    }
    this.ciCur = Buffer.alloc(this.recSize * 4096);
  }

  private get recSize(): number {
    return this.v2 ? CHUNK_INFO_V2_SIZE : CHUNK_INFO_V1_SIZE;
  }

  get chunks(): number {
    return this.chunkCount;
  }

  private open(): void {
    if (this.fd >= 0) return;
    const dir = this.opts.blobPath ? path.dirname(path.resolve(this.opts.blobPath)) : path.resolve(this.opts.blobDir ?? '.');
    this.tmpPath = path.join(dir, `.nydus-blob-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}.tmp`);
    try {
      fs.mkdirSync(dir, { recursive: true });
      this.fd = fs.openSync(this.tmpPath, 'w', 0o644);
    } catch (e) {
      throw new ErrnoError((e as NodeJS.ErrnoException).code ?? 'EIO', `failed to create blob file in ${dir}: ${(e as Error).message}`, { cause: e });
    }
  }

  private flush(): void {
    if (this.sink) {
      this.sink.flush();
      return;
    }
    if (this.bufLen === 0) return;
    this.writeFd(this.buf, 0, this.bufLen);
    this.bufLen = 0;
  }

  /**
   * From now on the file is written behind this thread (blob-sink.ts): bytes
   * given to the writer (chunk data passed to `addPrepared`) are not copied
   * and must stay unchanged until `afterWritten` says they are written; call
   * `room()` between chunks to bound what is on its way, and finish with
   * `finishAsync`.
   */
  useSink(): void {
    if (this.sink || this.finished) return;
    this.open();
    this.flush();
    this.sink = new BlobSink(this.fd, this.tmpPath, this.pos, this.hash);
    this.buf = Buffer.alloc(0);
  }

  /** Resolves when the sink has room for more (at once without a sink). */
  room(): Promise<void> {
    return this.sink ? this.sink.room() : Promise.resolve();
  }

  /** Call `cb` once the bytes given so far are written (at once without a sink: they were copied or written). */
  afterWritten(cb: () => void): void {
    if (this.sink) this.sink.whenWritten(cb);
    else cb();
  }

  private writeFd(b: Buffer, off: number, len: number): void {
    try {
      let done = 0;
      while (done < len) done += fs.writeSync(this.fd, b, off + done, len - done);
    } catch (e) {
      throw new ErrnoError((e as NodeJS.ErrnoException).code ?? 'EIO', `failed to write blob ${this.tmpPath}: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Append bytes to the blob; `hashed` = false only for the raw blob.digest array. */
  private write(b: Buffer, hashed = true): void {
    this.open();
    if (this.sink) {
      this.pos += b.length;
      this.sink.write(b, hashed);
      return;
    }
    if (hashed) this.hash.update(b);
    this.pos += b.length;
    if (b.length >= WRITE_BUFFER_SIZE / 2) {
      this.flush();
      this.writeFd(b, 0, b.length);
      return;
    }
    if (this.bufLen + b.length > WRITE_BUFFER_SIZE) this.flush();
    b.copy(this.buf, this.bufLen);
    this.bufLen += b.length;
  }

  /** `ci`: the v2 record's own location fields when they differ from the bootstrap's (batch members) */
  private addCi(c: ChunkInfo, ci?: { compressedOffset: number; compressedSize: number; v2Flags: number; dataLo: number; dataHi: number }): void {
    if (!this.metaEnabled) return;
    if (this.ciCurLen + this.recSize > this.ciCur.length) {
      this.ciParts.push(this.ciCur.subarray(0, this.ciCurLen));
      this.ciCur = Buffer.alloc(this.recSize * 16384);
      this.ciCurLen = 0;
    }
    if (ci) {
      encodeChunkInfoV2(this.ciCur, this.ciCurLen, { ...c, ...ci });
    } else if (this.v2) {
      let f = 0;
      if (c.compressed) f |= ChunkInfoV2Flags.COMPRESSED;
      if (c.flags & BlobChunkFlags.HAS_CRC32) f |= ChunkInfoV2Flags.HAS_CRC32;
      encodeChunkInfoV2(this.ciCur, this.ciCurLen, { ...c, v2Flags: f, dataLo: c.flags & BlobChunkFlags.HAS_CRC32 ? c.crc32 : 0, dataHi: 0 });
    } else {
      encodeChunkInfoV1(this.ciCur, this.ciCurLen, c);
    }
    this.ciCurLen += this.recSize;
    this.digestParts.push(c.digest);
  }

  /**
   * Store one chunk of file data (already read) and return its ChunkInfo;
   * duplicates (same digest and size in `dedup`) reuse the earlier chunk.
   */
  addChunk(data: Buffer, fileOffset: number, batchable = false): ChunkInfo {
    return this.addPrepared(digest(this.opts.digester, data), data.length, fileOffset, batchable, () => data);
  }

  /**
   * `addChunk` for a chunk digested (and maybe compressed) elsewhere
   * (chunk-pipeline.ts): `raw` gives its bytes when they are needed (a batch
   * member, no `stored` form, CRC-32), `stored` is what `compress()` made of them.
   */
  addPrepared(id: Buffer, size: number, fileOffset: number, batchable: boolean, raw: () => Buffer, stored?: { data: Buffer; compressed: boolean }): ChunkInfo {
    if (this.finished) throw einval('blob writer already finished');
    const key = dedupKey(id, size);
    const dup = this.opts.dedup.get(key);
    if (dup) return { ...dup, fileOffset };
    if (this.chunkCount >= RAFS_MAX_CHUNKS_PER_BLOB - 1) throw einval(`too many chunks in blob (max ${RAFS_MAX_CHUNKS_PER_BLOB - 1})`);
    if (batchable && this.batchSize > 0) {
      const chunk = this.addBatchMember(raw(), id, fileOffset);
      this.opts.dedup.set(key, chunk);
      return chunk;
    }
    // a chunk written on its own first writes the batch being filled (upstream `dump_file_chunk`)
    this.flushBatch();
    const packed = stored ?? compress(this.opts.compressor, raw());
    const chunk = this.newChunk(size, this.opts.crc32 ? raw() : undefined, id, fileOffset, { compressed: packed.compressed, compressedOffset: this.pos, compressedSize: packed.data.length });
    this.write(packed.data);
    // Deliberate difference from upstream (README): uncompressed aligned blobs are padded so
    // compressed offsets equal the 4 KiB-aligned uncompressed ones and the kernel's EROFS can
    // use the blob file itself as the bootstrap's `device=`.
    // Not in batch mode: a batch's members are contiguous in their batch, not at their 4K offsets.
    if (this.opts.aligned && this.opts.compressor === Compressor.None && this.batchSize === 0 && this.pos < this.uncompressedEnd) {
      const pad = this.uncompressedEnd - this.pos;
      this.write(pad <= ZEROS.length ? ZEROS.subarray(0, pad) : Buffer.alloc(pad));
    }
    this.addCi(chunk);
    this.opts.dedup.set(key, chunk);
    return chunk;
  }

  /**
   * One small chunk into the batch being filled (upstream builder/src/core/node.rs
   * `dump_file_chunk` + storage/src/meta/batch.rs `generate_chunk_info`): the
   * batch is written first when the chunk would make it reach the batch size.
   * The v2 record: BATCH|COMPRESSED, compressed offset = where the batch starts,
   * compressed size 0, data = batch index << 32 | offset in the batch. The
   * bootstrap's record keeps compressed offset/size 0, not compressed, no
   * BATCH flag (upstream never sets them on the chunk).
   */
  private addBatchMember(data: Buffer, id: Buffer, fileOffset: number): ChunkInfo {
    if (this.batchLen + data.length >= this.batchSize) this.flushBatch();
    const chunk = this.newChunk(data.length, data, id, fileOffset, { compressed: false, compressedOffset: 0, compressedSize: 0 });
    // upstream: "Batch chunk cannot store CRC32 due to data field conflict"
    this.addCi(chunk, {
      compressedOffset: this.pos,
      compressedSize: 0,
      v2Flags: ChunkInfoV2Flags.BATCH | ChunkInfoV2Flags.COMPRESSED,
      dataLo: this.batchLen,
      dataHi: this.batchContexts.length,
    });
    this.batchParts.push(data);
    this.batchLen += data.length;
    return chunk;
  }

  /** The record of a new chunk (next index, at the uncompressed end, which advances), stored as `stored` says. */
  private newChunk(size: number, data: Buffer | undefined, id: Buffer, fileOffset: number, stored: Pick<ChunkInfo, 'compressed' | 'compressedOffset' | 'compressedSize'>): ChunkInfo {
    let flags = stored.compressed ? BlobChunkFlags.COMPRESSED : 0;
    let crc = 0;
    if (this.opts.crc32) {
      // the chunk reader (and what it loads) only for builds that want CRC-32C
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      crc = (require('../../storage/blob/chunk-reader') as typeof import('../../storage/blob/chunk-reader')).crc32c(data!);
      flags |= BlobChunkFlags.HAS_CRC32;
    }
    const chunk: ChunkInfo = {
      digest: id,
      blobIndex: this.blobIndex,
      index: this.chunkCount++,
      flags,
      ...stored,
      uncompressedOffset: this.uncompressedEnd,
      uncompressedSize: size,
      fileOffset,
      crc32: crc,
    };
    this.uncompressedEnd += this.opts.aligned ? alignUp(size, 4096) : size;
    return chunk;
  }

  /** Write the batch being filled, if any, as one compressed unit, and record its context. */
  private flushBatch(): void {
    if (this.batchLen === 0) return;
    const whole = this.batchParts.length === 1 ? this.batchParts[0] : Buffer.concat(this.batchParts, this.batchLen);
    const packed = compress(this.opts.compressor, whole);
    this.write(packed.data);
    this.batchContexts.push({ compressedSize: packed.data.length, uncompressedSize: whole.length });
    this.batchParts = [];
    this.batchLen = 0;
  }

  /** Chunk a regular file's data source into the blob, filling inode.chunks. */
  addFile(inode: BuildInode): void {
    if (!inode.isReg() || inode.size === 0) return;
    if (!inode.source) throw einval('regular file has no data source');
    const cs = this.opts.chunkSize;
    // batched: files of one chunk smaller than half the batch size (upstream `dump_file_chunk`)
    const batchable = inode.size <= cs && inode.size < this.batchSize / 2;
    inode.chunks = [];
    for (let off = 0; off < inode.size; off += cs) {
      const len = Math.min(cs, inode.size - off);
      const data = inode.source.read(off, len);
      if (data.length !== len) throw eio(`short read from file source at ${off}: got ${data.length} of ${len} bytes`);
      inode.chunks.push(this.addChunk(data, off, batchable));
    }
  }

  private features(withDigest: boolean): number {
    let f = BlobFeatures.CAP_TAR_TOC;
    if (this.opts.aligned) f |= BlobFeatures.ALIGNED;
    if (this.opts.inlineMeta) f |= BlobFeatures.INLINED_FS_META | BlobFeatures.HAS_TAR_HEADER;
    if (this.opts.blobToc) f |= BlobFeatures.HAS_TOC | BlobFeatures.HAS_TAR_HEADER;
    if (this.v2 && this.metaEnabled) f |= BlobFeatures.CHUNK_INFO_V2;
    if (this.batchSize > 0) f |= BlobFeatures.BATCH;
    if (withDigest) f |= BlobFeatures.INLINED_CHUNK_DIGEST;
    return f >>> 0;
  }

  private discard(): void {
    if (this.sink) {
      // the thread may be writing to the fd: it is closed (and the number freed) only once the thread is gone
      const sink = this.sink;
      this.sink = undefined;
      void sink.close().finally(() => this.discard());
      return;
    }
    if (this.fd >= 0) {
      try { fs.closeSync(this.fd); } catch { /* ignore */ }
      this.fd = -1;
      try { fs.unlinkSync(this.tmpPath); } catch { /* ignore */ }
    }
  }

  /** Abandon the blob (removes the temporary file). */
  abort(): void {
    this.finished = true;
    this.discard();
  }

  /** `abort`, resolved once the temporary file is gone. */
  async abandon(): Promise<void> {
    this.finished = true;
    const sink = this.sink;
    this.sink = undefined;
    await sink?.close();
    this.discard();
  }

  /**
   * Write the blob tail and move the file into place. With `inlineMeta`,
   * `bootstrapForInline` is called with the BlobInfo as it must appear in the
   * inlined bootstrap (blob id "x"×64, size so far, no ToC) and returns the
   * bootstrap bytes.
   */
  finish(bootstrapForInline?: (info: BlobInfo) => Buffer): BlobWriterResult {
    if (this.finished) throw einval('blob writer already finished');
    if (this.sink) throw einval('blob writer with a sink: use finishAsync');
    this.finished = true;
    try {
      const steps = this.doFinish(bootstrapForInline);
      let step = steps.next();
      while (!step.done) step = steps.next(step.value === 'end' ? this.hash.digest() : this.hash.peek());
      return step.value;
    } catch (e) {
      this.discard();
      throw e;
    }
  }

  /** `finish` for every writer (with or without a sink). */
  async finishAsync(bootstrapForInline?: (info: BlobInfo) => Buffer): Promise<BlobWriterResult> {
    if (!this.sink) return this.finish(bootstrapForInline);
    if (this.finished) throw einval('blob writer already finished');
    this.finished = true;
    const sink = this.sink;
    try {
      const steps = this.doFinish(bootstrapForInline);
      let step = steps.next();
      while (!step.done) {
        this.flush();
        step = steps.next(step.value === 'end' ? await sink.end() : await sink.digest());
      }
      return step.value;
    } catch (e) {
      await this.abandon();
      throw e;
    }
  }

  /**
   * The tail of the blob. Yields 'digest' for the sha256 of the bytes so far
   * and 'end' for the final one (the blob id), which it is given back.
   */
  private *doFinish(bootstrapForInline?: (info: BlobInfo) => Buffer): Generator<'digest' | 'end', BlobWriterResult, Buffer> {
    const o = this.opts;
    // upstream `finalize_blob_data`: the last batch goes out before the image.blob header
    this.flushBatch();
    const hasChunks = this.chunkCount > 0;
    const tar = o.blobToc || o.inlineMeta;
    const withDigest = o.blobToc && this.metaEnabled && hasChunks;
    const info: BlobInfo = {
      blobIndex: this.blobIndex,
      blobId: '',
      chunkSize: o.chunkSize,
      chunkCount: this.chunkCount,
      compressor: o.compressor,
      digester: o.digester,
      features: this.features(withDigest),
      compressedSize: 0,
      uncompressedSize: this.uncompressedEnd,
      ...noBlobMeta(),
    };
    if (!hasChunks && !o.inlineMeta) {
      this.discard();
      return { info, blobId: '', path: '' };
    }
    this.open();
    const toc: TocEntry[] = [];
    const dataSize = this.pos;

    if (hasChunks && tar) {
      this.write(encodeTarHeader(TocEntryName.BLOB_RAW, dataSize));
      if (o.blobToc) {
        toc.push({
          flags: tocFlagsFromCompressor(Compressor.None),
          name: TocEntryName.BLOB_RAW,
          digest: yield 'digest',
          compressedOffset: 0,
          compressedSize: dataSize,
          uncompressedSize: this.uncompressedEnd,
        });
      }
    }

    if (hasChunks && this.metaEnabled) {
      this.ciParts.push(this.ciCur.subarray(0, this.ciCurLen));
      // batch mode: the BatchInflateContext table follows the chunk infos, located by the
      // header's ci_zran_* fields (upstream builder/src/core/blob.rs `dump_meta_data`)
      const ciArrayLen = this.chunkCount * this.recSize;
      if (this.batchSize > 0) this.ciParts.push(encodeBatchContexts(this.batchContexts));
      const ci = this.ciParts.length === 1 ? this.ciParts[0] : Buffer.concat(this.ciParts);
      this.ciParts = [];
      // gzip cannot be named in a ToC entry: keep the table raw then.
      let metaComp = o.blobToc && o.compressor === Compressor.GZip ? Compressor.None : o.compressor;
      const packed = compress(metaComp, ci);
      if (!packed.compressed) metaComp = Compressor.None;
      const ciOffset = this.pos;
      const header = encodeBlobMetaHeader({
        features: (info.features | BlobFeatures.ALIGNED) >>> 0,
        ciCompressor: metaComp,
        ciEntries: this.chunkCount,
        ciOffset,
        ciCompressedSize: packed.data.length,
        ciUncompressedSize: ci.length,
        ciZranOffset: this.batchSize > 0 ? ciArrayLen : 0,
        ciZranSize: this.batchSize > 0 ? this.batchContexts.length * BATCH_CONTEXT_SIZE : 0,
        ciZranCount: this.batchSize > 0 ? this.batchContexts.length : 0,
      });
      this.write(packed.data);
      this.write(header);
      if (tar) this.write(encodeTarHeader(TocEntryName.BLOB_META, packed.data.length + BLOB_META_HEADER_SIZE));
      info.metaCompressor = metaComp;
      info.metaOffset = ciOffset;
      info.metaCompressedSize = packed.data.length;
      info.metaUncompressedSize = ci.length;
      if (o.blobToc) {
        toc.push({ flags: tocFlagsFromCompressor(metaComp), name: TocEntryName.BLOB_META, digest: sha256(ci), compressedOffset: ciOffset, compressedSize: packed.data.length, uncompressedSize: ci.length });
        toc.push({ flags: tocFlagsFromCompressor(Compressor.None), name: TocEntryName.BLOB_META_HEADER, digest: sha256(header), compressedOffset: ciOffset + packed.data.length, compressedSize: BLOB_META_HEADER_SIZE, uncompressedSize: BLOB_META_HEADER_SIZE });
      }
      if (withDigest) {
        const arr = Buffer.concat(this.digestParts);
        const off = this.pos;
        this.write(arr, false); // excluded from the blob id hash (§4.4)
        this.write(encodeTarHeader(TocEntryName.BLOB_DIGEST, arr.length));
        toc.push({ flags: tocFlagsFromCompressor(Compressor.None), name: TocEntryName.BLOB_DIGEST, digest: sha256(arr), compressedOffset: off, compressedSize: arr.length, uncompressedSize: arr.length });
      }
      this.digestParts = [];
    }

    if (o.inlineMeta) {
      if (!bootstrapForInline) throw einval('inline meta requested but no bootstrap callback given to BlobWriter.finish');
      const boot = bootstrapForInline({ ...info, blobId: INLINE_PLACEHOLDER_BLOB_ID, compressedSize: this.pos, tocDigest: Buffer.alloc(32) });
      const off = this.pos;
      let data = boot;
      let comp = Compressor.None;
      if (o.blobToc) {
        const p = compress(Compressor.Zstd, boot);
        data = p.data;
        comp = p.compressed ? Compressor.Zstd : Compressor.None;
      }
      this.write(data);
      this.write(encodeTarHeader(TocEntryName.BOOTSTRAP, data.length));
      if (o.blobToc) {
        toc.push({ flags: tocFlagsFromCompressor(comp), name: TocEntryName.BOOTSTRAP, digest: sha256(boot), compressedOffset: off, compressedSize: data.length, uncompressedSize: boot.length });
      }
    }

    if (o.blobToc) {
      const entries = Buffer.concat(toc.map(encodeTocEntry));
      const hdr = encodeTarHeader(TocEntryName.BLOB_TOC, entries.length);
      this.write(entries);
      this.write(hdr);
      info.tocDigest = sha256(entries, hdr);
      info.tocSize = entries.length + hdr.length;
      if (toc.length * TOC_ENTRY_SIZE !== entries.length) throw eio('internal error: ToC size');
    }

    this.flush();
    const sum = yield 'end';
    this.sink = undefined;
    fs.closeSync(this.fd);
    this.fd = -1;
    info.compressedSize = this.pos;
    const blobId = o.blobId || sum.toString('hex');
    info.blobId = blobId;
    const dest = o.blobPath ? path.resolve(o.blobPath) : path.join(path.resolve(o.blobDir ?? '.'), blobId);
    try {
      fs.renameSync(this.tmpPath, dest);
    } catch (e) {
      try { fs.unlinkSync(this.tmpPath); } catch { /* ignore */ }
      throw new ErrnoError((e as NodeJS.ErrnoException).code ?? 'EIO', `failed to move blob to ${dest}: ${(e as Error).message}`, { cause: e });
    }
    return { info, blobId, path: dest };
  }
}
