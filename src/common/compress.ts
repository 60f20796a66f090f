/**
 * Chunk compression (rafs-spec §1.2): 0 none, 1 lz4_block (raw LZ4 block),
 * 2 gzip (one member), 3 zstd (one frame). `compress` stores data raw when
 * compression does not shrink it, as upstream does.
 */
import { gzipSync, gunzipSync } from 'node:zlib';
import * as zstd from 'zstd-napi';
import * as zstdBinding from 'zstd-napi/binding';
import * as lz4 from 'lz4-napi';
import { einval, eio } from './errno';

export enum Compressor { None = 0, Lz4Block = 1, GZip = 2, Zstd = 3 }

const NAMES: Record<string, Compressor> = { none: Compressor.None, lz4_block: Compressor.Lz4Block, gzip: Compressor.GZip, zstd: Compressor.Zstd };

export function parseCompressor(s: string): Compressor {
  const c = NAMES[s];
  if (c === undefined) throw einval(`unknown compressor '${s}' (expected none, lz4_block, gzip or zstd)`);
  return c;
}

export function compressorName(c: Compressor): string {
  return Object.keys(NAMES).find((k) => NAMES[k] === c) ?? `unknown(${c})`;
}

/** Compress one chunk; `compressed` is false when the data is stored raw. */
export function compress(c: Compressor, data: Buffer): { data: Buffer; compressed: boolean } {
  if (c === Compressor.None || data.length === 0) return { data, compressed: false };
  let out: Buffer;
  switch (c) {
    case Compressor.Zstd: out = zstd.compress(data, { compressionLevel: 3 }); break;
    case Compressor.Lz4Block: out = lz4.compressSync(data).subarray(4); break; // strip lz4_flex size prefix
    case Compressor.GZip: out = gzipSync(data, { level: 6 }); break;
    default: throw einval(`unsupported compressor ${c}`);
  }
  if (out.length >= data.length) return { data, compressed: false };
  return { data: out, compressed: true };
}

let dctx: zstdBinding.DCtx | undefined;

/** Decompress one chunk to exactly `size` bytes, or throw EIO. */
export function decompress(c: Compressor, data: Buffer, size: number): Buffer {
  let out: Buffer;
  try {
    switch (c) {
      case Compressor.None: out = data; break;
      case Compressor.Zstd: {
        // decompress into a buffer of exactly the expected size: a hostile frame
        // cannot make us allocate what its header claims
        out = Buffer.allocUnsafe(size);
        const n = (dctx ??= new zstdBinding.DCtx()).decompress(out, data);
        if (n !== size) throw eio(`zstd frame holds ${n} bytes, expected ${size}`);
        break;
      }
      case Compressor.Lz4Block: {
        const withSize = Buffer.allocUnsafe(data.length + 4);
        withSize.writeUInt32LE(size, 0);
        data.copy(withSize, 4);
        out = lz4.uncompressSync(withSize);
        break;
      }
      case Compressor.GZip: out = gunzipSync(data, { maxOutputLength: Math.max(size, 1) }); break;
      default: throw einval(`unsupported compressor ${c}`);
    }
  } catch (e) {
    throw eio(`failed to decompress ${compressorName(c)} data: ${(e as Error).message}`, e);
  }
  if (out.length !== size) throw eio(`decompressed size ${out.length} != expected ${size}`);
  return out;
}
