/**
 * Chunk compression (rafs-spec §1.2): 0 none, 1 lz4_block (raw LZ4 block),
 * 2 gzip (one member), 3 zstd (one frame). `compress` stores data raw when
 * compression does not shrink it, as upstream does.
 */
import type * as zstdBinding from 'zstd-napi/binding';
import { einval, eio } from './errno';

// the native modules are loaded when first used (start-up of the CLIs)
/* eslint-disable @typescript-eslint/no-require-imports */
let zstdBin: typeof import('zstd-napi/binding') | undefined;
let lz4Mod: typeof import('lz4-napi') | undefined;
let zlibMod: typeof import('node:zlib') | undefined;
const binding = () => (zstdBin ??= require('zstd-napi/binding') as typeof import('zstd-napi/binding'));
const lz4 = () => (lz4Mod ??= require('lz4-napi') as typeof import('lz4-napi'));
// node:zlib too (gzip only): a few ms of every zstd build's start-up
const zlib = () => (zlibMod ??= require('node:zlib') as typeof import('node:zlib'));
/* eslint-enable @typescript-eslint/no-require-imports */

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

let cctx: zstdBinding.CCtx | undefined;

/** One zstd frame at level 3, every other parameter at its default (what zstd-napi's `compress` does, without loading its streams). */
function zstdCompress(data: Buffer): Buffer {
  const b = binding();
  if (!cctx) {
    cctx = new b.CCtx();
    cctx.setParameter(b.CParameter.compressionLevel, 3);
  }
  const dest = Buffer.allocUnsafe(b.compressBound(data.length));
  const n = cctx.compress2(dest, data);
  // a copy when the bound wastes much
  return n < 0.75 * dest.length ? Buffer.from(dest.subarray(0, n)) : dest.subarray(0, n);
}

/** Compress one chunk; `compressed` is false when the data is stored raw. */
export function compress(c: Compressor, data: Buffer): { data: Buffer; compressed: boolean } {
  if (c === Compressor.None || data.length === 0) return { data, compressed: false };
  let out: Buffer;
  switch (c) {
    case Compressor.Zstd: out = zstdCompress(data); break;
    case Compressor.Lz4Block: out = lz4().compressSync(data).subarray(4); break; // strip lz4_flex size prefix
    case Compressor.GZip: out = zlib().gzipSync(data, { level: 6 }); break;
    default: throw einval(`unsupported compressor ${c}`);
  }
  if (out.length >= data.length) return { data, compressed: false };
  return { data: out, compressed: true };
}

let dctx: zstdBinding.DCtx | undefined;

/**
 * Decompress one chunk to exactly `size` bytes, or throw EIO. `into` (of
 * `size` bytes) receives them when given (zstd decompresses straight into
 * it; the others are copied); the result is then `into`.
 */
export function decompress(c: Compressor, data: Buffer, size: number, into?: Buffer): Buffer {
  let out: Buffer;
  if (into && into.length !== size) throw einval(`decompress: target of ${into.length} bytes for ${size}`);
  try {
    switch (c) {
      case Compressor.None: out = data; break;
      case Compressor.Zstd: {
        // decompress into a buffer of exactly the expected size: a hostile frame
        // cannot make us allocate what its header claims
        out = into ?? Buffer.allocUnsafe(size);
        const n = (dctx ??= new (binding().DCtx)()).decompress(out, data);
        if (n !== size) throw eio(`zstd frame holds ${n} bytes, expected ${size}`);
        break;
      }
      case Compressor.Lz4Block: {
        const withSize = Buffer.allocUnsafe(data.length + 4);
        withSize.writeUInt32LE(size, 0);
        data.copy(withSize, 4);
        out = lz4().uncompressSync(withSize);
        break;
      }
      case Compressor.GZip: out = zlib().gunzipSync(data, { maxOutputLength: Math.max(size, 1) }); break;
      default: throw einval(`unsupported compressor ${c}`);
    }
  } catch (e) {
    throw eio(`failed to decompress ${compressorName(c)} data: ${(e as Error).message}`, e);
  }
  if (out.length !== size) throw eio(`decompressed size ${out.length} != expected ${size}`);
  if (into && out !== into) { out.copy(into); return into; }
  return out;
}

/** Load the native codec `c` decodes with now (the first chunk otherwise pays for loading it). */
export function loadCodec(c: Compressor): void {
  if (c === Compressor.Zstd) binding();
  else if (c === Compressor.Lz4Block) lz4();
}
