/**
 * Blob tail structures (rafs-spec §4.3): the 512-byte GNU tar headers nydus
 * writes *after* each section ("reverse tar") and the 128-byte ToC entries.
 *
 * Tar header as written by nydus (Rust `tar::Header::new_gnu`): name at 0,
 * mode/uid/gid all NUL, size at 124 (11 octal digits + NUL; GNU base-256 when
 * it does not fit), mtime at 136 = "00000000000\0", chksum at 148 (7 octal
 * digits + NUL, computed with the field as 8 spaces), typeflag '0' at 156,
 * magic "ustar " at 257, version " \0" at 263, everything else zero.
 *
 * ToC entry: u32 flags (compression 0x1 none / 0x2 zstd / 0x4 lz4_block —
 * NOT the §1.2 numbering), u32 reserved, name[16], sha256[32] of uncompressed
 * content, u64 compressed_offset, u64 compressed_size, u64 uncompressed_size,
 * 48 reserved bytes.
 */
import { Compressor, compressorName } from '../../common/compress';
import { einval } from '../../common/errno';
import { readU64, writeU64 } from '../../common/wire';

export const TAR_HEADER_SIZE = 512;
export const TOC_ENTRY_SIZE = 128;

export const TocEntryName = {
  BLOB_RAW: 'image.blob',
  BOOTSTRAP: 'image.boot',
  BLOB_META: 'blob.meta',
  BLOB_META_HEADER: 'blob.meta.header',
  BLOB_DIGEST: 'blob.digest',
  BLOB_TOC: 'rafs.blob.toc',
} as const;

export const TocFlags = { COMPRESSION_NONE: 0x1, COMPRESSION_ZSTD: 0x2, COMPRESSION_LZ4_BLOCK: 0x4, COMPRESSION_MASK: 0xf } as const;

export interface TocEntry {
  flags: number;
  name: string;
  /** sha256 of the uncompressed content (all zero = unknown) */
  digest: Buffer;
  compressedOffset: number;
  compressedSize: number;
  uncompressedSize: number;
}

export interface TarHeader {
  name: string;
  size: number;
  typeflag: string;
  /** magic "ustar " + version " \0" */
  gnu: boolean;
}

/** ToC flags for a compressor; gzip has no ToC encoding (EINVAL), as upstream. */
export function tocFlagsFromCompressor(c: Compressor): number {
  switch (c) {
    case Compressor.None: return TocFlags.COMPRESSION_NONE;
    case Compressor.Zstd: return TocFlags.COMPRESSION_ZSTD;
    case Compressor.Lz4Block: return TocFlags.COMPRESSION_LZ4_BLOCK;
    default: throw einval(`compressor ${compressorName(c)} cannot be expressed in a blob ToC entry`);
  }
}

export function compressorFromTocFlags(flags: number): Compressor {
  if ((flags & ~TocFlags.COMPRESSION_MASK) !== 0) throw einval(`unknown ToC entry flags 0x${flags.toString(16)}`);
  switch (flags & TocFlags.COMPRESSION_MASK) {
    case TocFlags.COMPRESSION_NONE: return Compressor.None;
    case TocFlags.COMPRESSION_ZSTD: return Compressor.Zstd;
    case TocFlags.COMPRESSION_LZ4_BLOCK: return Compressor.Lz4Block;
    default: throw einval(`unknown compression in ToC entry flags 0x${flags.toString(16)}`);
  }
}

export function encodeTocEntry(e: TocEntry): Buffer {
  const b = Buffer.alloc(TOC_ENTRY_SIZE);
  const name = Buffer.from(e.name, 'utf8');
  if (name.length > 16) throw einval(`ToC entry name '${e.name}' longer than 16 bytes`);
  if (e.digest.length !== 32) throw einval(`ToC entry digest must be 32 bytes`);
  b.writeUInt32LE(e.flags >>> 0, 0);
  name.copy(b, 8);
  e.digest.copy(b, 24);
  writeU64(b, 56, e.compressedOffset);
  writeU64(b, 64, e.compressedSize);
  writeU64(b, 72, e.uncompressedSize);
  return b;
}

export function decodeTocEntry(buf: Buffer, off = 0): TocEntry {
  if (off < 0 || off + TOC_ENTRY_SIZE > buf.length) throw einval(`ToC entry at ${off} exceeds buffer of ${buf.length} bytes`);
  const raw = buf.subarray(off + 8, off + 24);
  const nul = raw.indexOf(0);
  return {
    flags: buf.readUInt32LE(off),
    name: raw.subarray(0, nul < 0 ? 16 : nul).toString('utf8'),
    digest: Buffer.from(buf.subarray(off + 24, off + 56)),
    compressedOffset: readU64(buf, off + 56, 'ToC compressed_offset'),
    compressedSize: readU64(buf, off + 64, 'ToC compressed_size'),
    uncompressedSize: readU64(buf, off + 72, 'ToC uncompressed_size'),
  };
}

const OCTAL11_MAX = 8 ** 11 - 1;

function writeOctal(b: Buffer, off: number, width: number, v: number): void {
  b.write(v.toString(8).padStart(width - 1, '0'), off, width - 1, 'ascii');
  b[off + width - 1] = 0;
}

function tarChecksum(b: Buffer, off: number): number {
  let sum = 0;
  for (let i = 0; i < TAR_HEADER_SIZE; i++) sum += i >= 148 && i < 156 ? 0x20 : b[off + i];
  return sum;
}

/** One GNU header exactly as nydus writes it. */
export function encodeTarHeader(name: string, size: number): Buffer {
  const b = Buffer.alloc(TAR_HEADER_SIZE);
  const n = Buffer.from(name, 'utf8');
  if (n.length > 100) throw einval(`tar entry name '${name}' too long`);
  if (!Number.isSafeInteger(size) || size < 0) throw einval(`invalid tar entry size ${size}`);
  n.copy(b, 0);
  if (size <= OCTAL11_MAX) {
    writeOctal(b, 124, 12, size);
  } else {
    // GNU base-256: high bit of the first byte set, big-endian value.
    b[124] = 0x80;
    let v = BigInt(size);
    for (let i = 135; i > 124; i--) { b[i] = Number(v & 0xffn); v >>= 8n; }
  }
  writeOctal(b, 136, 12, 0);
  b[156] = 0x30; // '0'
  b.write('ustar ', 257, 'ascii');
  b.write(' \0', 263, 'ascii');
  writeOctal(b, 148, 8, tarChecksum(b, 0));
  return b;
}

function parseOctal(b: Buffer, off: number, len: number, field: string): number {
  const f = b.subarray(off, off + len);
  if (f[0] & 0x80) {
    let v = 0n;
    for (let i = 1; i < len; i++) v = (v << 8n) | BigInt(f[i]);
    if (f[0] !== 0x80 || v > BigInt(Number.MAX_SAFE_INTEGER)) throw einval(`tar header ${field} out of range`);
    return Number(v);
  }
  const s = f.toString('ascii').replace(/[\0 ]+$/, '').replace(/^ +/, '');
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw einval(`tar header ${field} '${s.replace(/[^\x20-\x7e]/g, '?')}' is not octal`);
  return parseInt(s, 8);
}

/** Decode and checksum-verify a tar header at `off`. */
export function decodeTarHeader(buf: Buffer, off = 0): TarHeader {
  if (off < 0 || off + TAR_HEADER_SIZE > buf.length) throw einval(`tar header at ${off} exceeds buffer of ${buf.length} bytes`);
  const sum = parseOctal(buf, off + 148, 8, 'chksum');
  if (sum !== tarChecksum(buf, off)) throw einval(`tar header checksum mismatch`);
  const rawName = buf.subarray(off, off + 100);
  const nul = rawName.indexOf(0);
  const typeByte = buf[off + 156];
  return {
    name: rawName.subarray(0, nul < 0 ? 100 : nul).toString('utf8'),
    size: parseOctal(buf, off + 124, 12, 'size'),
    typeflag: typeByte === 0 ? '0' : String.fromCharCode(typeByte),
    gnu: buf.toString('latin1', off + 257, off + 265) === 'ustar  \0',
  };
}

/** Like decodeTarHeader but returns undefined instead of throwing on a non-header. */
export function tryDecodeTarHeader(buf: Buffer, off = 0): TarHeader | undefined {
  try { return decodeTarHeader(buf, off); } catch { return undefined; }
}
