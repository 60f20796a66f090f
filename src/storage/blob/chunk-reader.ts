/**
 * Reading chunk data from a local blob (rafs-spec §2.9 "read path", §4.1):
 * fetch [compressed_offset, +compressed_size), decompress with the blob's
 * compressor when the chunk is COMPRESSED, optionally verify H(data) against
 * the chunk digest (and CRC-32C when HAS_CRC32), and assemble file ranges
 * from a file's chunk list (holes read as zeros).
 */
import { compressorName, decompress } from '../../common/compress';
import type * as DigestModule from '../../common/digest';
import { ErrnoError, eio } from '../../common/errno';
import { BlobChunkFlags, RAFS_MAX_CHUNK_SIZE } from '../format/constants';
import type { BlobInfo, ChunkInfo } from '../format/types';
import type { BlobFile } from './blob-file';
import { fileSpans } from './chunk-range';
import { checkBatchShape } from './batch';

let digests: typeof DigestModule | undefined;
/**
 * The digest module, loaded by the first chunk verified: a decode worker
 * that never verifies never loads it (its native BLAKE3 costs ~4 MB a thread).
 */
export function digestModule(): typeof DigestModule {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (digests ??= require('../../common/digest') as typeof DigestModule);
}

const ZERO_DIGEST = Buffer.alloc(32);

let CRC32C_TABLE: Int32Array | undefined;

function crcTable(): Int32Array {
  if (CRC32C_TABLE) return CRC32C_TABLE;
  // slice-by-8 tables for CRC-32C (Castagnoli, reflected poly 0x82F63B78)
  const t = new Int32Array(256 * 8);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c;
  }
  for (let i = 0; i < 256; i++) {
    let c = t[i];
    for (let s = 1; s < 8; s++) {
      c = t[c & 0xff] ^ (c >>> 8);
      t[s * 256 + i] = c;
    }
  }
  CRC32C_TABLE = t;
  return t;
}

/** CRC-32C (iSCSI) of `data`, as upstream `crc32::Crc32::new(Algorithm::Crc32Iscsi)`. */
export function crc32c(data: Uint8Array, seed = 0): number {
  const t = crcTable();
  let c = ~seed;
  let i = 0;
  const n = data.length;
  const end8 = n - (n % 8);
  for (; i < end8; i += 8) {
    const a = c ^ (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24));
    c =
      t[7 * 256 + (a & 0xff)] ^
      t[6 * 256 + ((a >>> 8) & 0xff)] ^
      t[5 * 256 + ((a >>> 16) & 0xff)] ^
      t[4 * 256 + (a >>> 24)] ^
      t[3 * 256 + data[i + 4]] ^
      t[2 * 256 + data[i + 5]] ^
      t[256 + data[i + 6]] ^
      t[data[i + 7]];
  }
  for (; i < n; i++) c = t[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

export interface ReadChunkOptions {
  /** verify the chunk digest (and crc32 when present) */
  validate: boolean;
}

/**
 * Decode one chunk from its stored bytes (the one decoder every path uses:
 * local blobs, the blob cache, backends): size limits, unsupported flags,
 * decompression to the exact size, then the digest (+ CRC-32C) when
 * `validate`. `raw` holds the stored (compressed) bytes, or the uncompressed
 * bytes when `decoded` is set (only the checks on data apply then). Pure:
 * no I/O. EIO naming blob and chunk on any failure.
 */
export function decodeChunk(raw: Buffer, chunk: ChunkInfo, info: BlobInfo, opts: DecodeChunkOptions): Buffer {
  const where = () => `blob ${info.blobId || opts.name || '?'} chunk ${chunk.index}`;
  checkChunkShape(chunk, where);
  let data: Buffer;
  if (chunk.flags & BlobChunkFlags.BATCH && !opts.decoded) {
    // a batch member: the whole batch is decoded (once per request, `opts.batches`), then the member cut out
    const b = checkBatchShape(chunk, where);
    let whole = opts.batches?.get(chunk.compressedOffset);
    // (a record naming another batch size at the same offset is decoded on its own)
    if (!whole || whole.length !== b.size) {
      whole = inflate(raw, chunk.compressed, b.size, info, where);
      opts.batches?.set(chunk.compressedOffset, whole);
    }
    data = Buffer.from(whole.subarray(b.offset, b.offset + chunk.uncompressedSize));
  } else if (chunk.compressed && !opts.decoded) {
    data = inflate(raw, true, chunk.uncompressedSize, info, where, opts.into);
  } else {
    if (raw.length !== chunk.uncompressedSize) throw eio(`${where()}: ${raw.length} bytes, expected ${chunk.uncompressedSize}`);
    // stored as it is: copied into `into` when given, so the chunk does not keep its request's buffer alive
    data = !opts.decoded && opts.into?.length === raw.length ? (opts.into.set(raw), opts.into) : raw;
  }
  if (opts.validate) verifyChunk(data, chunk, info, where);
  return data;
}

/** Stored bytes → exactly `size` uncompressed bytes; EIO. */
function inflate(raw: Buffer, compressed: boolean, size: number, info: BlobInfo, where: () => string, into?: Buffer): Buffer {
  if (!compressed) {
    if (raw.length !== size) throw eio(`${where()}: ${raw.length} bytes, expected ${size}`);
    return raw;
  }
  try {
    return decompress(info.compressor, raw, size, into);
  } catch (e) {
    throw eio(`${where()}: ${compressorName(info.compressor)} decompression failed: ${(e as Error).message}`, e);
  }
}

export interface DecodeChunkOptions extends ReadChunkOptions {
  /** decoded batches by compressed offset, shared by the members of one request */
  batches?: Map<number, Buffer>;
  /** `raw` is already uncompressed (read back from the blob cache) */
  decoded?: boolean;
  /** blob name for messages when the blob id is empty */
  name?: string;
  /** where a non-batch chunk is decompressed (or, stored as it is, copied) to: exactly its uncompressed size */
  into?: Buffer;
}

function checkChunkShape(chunk: ChunkInfo, where: () => string): void {
  if (chunk.uncompressedSize > RAFS_MAX_CHUNK_SIZE || chunk.compressedSize > RAFS_MAX_CHUNK_SIZE * 2) {
    throw eio(`${where()}: chunk sizes ${chunk.compressedSize}/${chunk.uncompressedSize} exceed the maximum chunk size`);
  }
  if (chunk.flags & BlobChunkFlags.ENCRYPTED) throw eio(`${where()}: encrypted chunks are not supported`);
  if (chunk.compressedSize === 0 && chunk.uncompressedSize > 0) {
    throw eio(`${where()}: no stored data (a batch chunk read without its blob.meta?)`);
  }
  if (!chunk.compressed && !(chunk.flags & BlobChunkFlags.BATCH) && chunk.compressedSize !== chunk.uncompressedSize) {
    throw eio(`${where()}: uncompressed chunk has compressed size ${chunk.compressedSize} != ${chunk.uncompressedSize}`);
  }
}

function verifyChunk(data: Buffer, chunk: ChunkInfo, info: BlobInfo, where: () => string): void {
  if (chunk.digest.length === 32 && !chunk.digest.equals(ZERO_DIGEST)) {
    let d: Buffer;
    try {
      d = digestModule().digest(info.digester, data);
    } catch (e) {
      throw e instanceof ErrnoError ? e : eio(`${where()}: cannot compute digest: ${(e as Error).message}`, e);
    }
    if (!d.equals(chunk.digest)) {
      throw eio(`${where()}: digest mismatch, data ${d.toString('hex')} != chunk id ${chunk.digest.toString('hex')}`);
    }
  }
  if (chunk.flags & BlobChunkFlags.HAS_CRC32) {
    const c = crc32c(data);
    if (c !== chunk.crc32 >>> 0) throw eio(`${where()}: crc32 mismatch 0x${c.toString(16)} != 0x${(chunk.crc32 >>> 0).toString(16)}`);
  }
}

/** Read one chunk from a local blob file and decode it; EIO (naming blob and chunk) on any failure. */
export function readChunk(blob: BlobFile, chunk: ChunkInfo, info: BlobInfo, opts: ReadChunkOptions & Pick<DecodeChunkOptions, 'batches'>): Buffer {
  const where = () => `blob ${info.blobId || blob.name} chunk ${chunk.index}`;
  checkChunkShape(chunk, where);
  let raw: Buffer;
  try {
    raw = blob.readAt(chunk.compressedOffset, chunk.compressedSize);
  } catch (e) {
    throw eio(`${where()}: ${(e as Error).message}`, e);
  }
  return decodeChunk(raw, chunk, info, { ...opts, name: blob.name });
}

/**
 * Assemble bytes [off, off+len) of a file from its chunks (sorted by
 * fileOffset). Ranges covered by no chunk read as zeros. `getChunk` returns a
 * chunk's uncompressed bytes. The caller clamps `len` to the file size.
 */
export function readFileRange(inodeChunks: ChunkInfo[], off: number, len: number, getChunk: (c: ChunkInfo) => Buffer): Buffer {
  const out = Buffer.alloc(Math.max(0, len));
  if (len <= 0) return out;
  for (const s of fileSpans(inodeChunks, off, off + len)) {
    if (s.kind === 'hole') continue; // zeros already
    const c = s.chunk;
    const data = getChunk(c);
    if (data.length < c.uncompressedSize) throw eio(`chunk ${c.index} of blob index ${c.blobIndex} returned ${data.length} bytes, expected ${c.uncompressedSize}`);
    data.copy(out, s.fileOffset - off, s.from, s.to);
  }
  return out;
}
