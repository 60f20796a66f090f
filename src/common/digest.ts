/**
 * Chunk/inode digests (rafs-spec §1.2): 0 = blake3 (default), 1 = sha256.
 * blake3 is the native SIMD implementation of @napi-rs/blake-hash (8x the
 * WASM one here); where its prebuilt binary is missing (an optional
 * dependency) hash-wasm's WASM module is used, which must be instantiated
 * once (`await initDigest()`) before any synchronous hashing.
 */
import type { IHasher } from 'hash-wasm';
import { einval } from './errno';

// node:crypto and hash-wasm are loaded when first used (start-up of the CLIs and of the builder's threads)
let crypto: typeof import('node:crypto') | undefined;
// eslint-disable-next-line @typescript-eslint/no-require-imports
const createHash = (alg: string) => (crypto ??= require('node:crypto') as typeof import('node:crypto')).createHash(alg);

/** The part of @napi-rs/blake-hash's native binding used here. */
interface NativeBlake {
  blake3(input: Uint8Array): Buffer;
  Blake3Hasher: new () => { update(input: Buffer): unknown; digestBuffer(): Buffer };
}
/**
 * The prebuilt binary is taken straight from its per-platform package (an
 * optional dependency: linux x64 glibc or musl), not through the wrapper
 * package, whose lock entries would name platforms the registry does not serve.
 */
const native: NativeBlake | undefined = (() => {
  if (process.env.NYDUS_BLAKE3 === 'wasm') return undefined;
  for (const pkg of ['@napi-rs/blake-hash-linux-x64-gnu', '@napi-rs/blake-hash-linux-x64-musl']) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const m = require(pkg) as NativeBlake;
      if (typeof m.blake3 === 'function' && typeof m.Blake3Hasher === 'function') return m;
    } catch {
      // not this platform
    }
  }
  return undefined;
})();

/** Which blake3 implementation is in use ('native' or 'wasm'). */
export const blake3Implementation = native ? 'native' : 'wasm';

const asBuffer = (b: Uint8Array): Buffer => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength));

export enum DigestAlgorithm { Blake3 = 0, Sha256 = 1 }
export const DIGEST_SIZE = 32;

let blake3: IHasher | undefined;

export async function initDigest(): Promise<void> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  if (!native && !blake3) blake3 = await (require('hash-wasm') as typeof import('hash-wasm')).createBLAKE3();
}

export function parseDigester(s: string): DigestAlgorithm {
  if (s === 'blake3') return DigestAlgorithm.Blake3;
  if (s === 'sha256') return DigestAlgorithm.Sha256;
  throw einval(`unknown digester '${s}' (expected blake3 or sha256)`);
}

export function digesterName(a: DigestAlgorithm): string {
  return a === DigestAlgorithm.Sha256 ? 'sha256' : 'blake3';
}

/** Incremental hasher for one algorithm. */
export interface Hasher { update(b: Uint8Array): Hasher; digest(): Buffer }

export function hasher(alg: DigestAlgorithm): Hasher {
  if (alg === DigestAlgorithm.Sha256) {
    const h = createHash('sha256');
    const self: Hasher = { update: (b) => { h.update(b); return self; }, digest: () => h.digest() };
    return self;
  }
  if (native) {
    const h = new native.Blake3Hasher();
    const self: Hasher = { update: (b) => { h.update(asBuffer(b)); return self; }, digest: () => h.digestBuffer() };
    return self;
  }
  if (!blake3) throw new Error('initDigest() was not awaited before hashing with blake3');
  // hash-wasm hashers are reusable; keep one instance per call for simplicity of nesting.
  const h = blake3;
  const parts: Uint8Array[] = [];
  const self: Hasher = {
    update: (b) => { parts.push(b); return self; },
    digest: () => { h.init(); for (const p of parts) h.update(p); return Buffer.from(h.digest('binary')); },
  };
  return self;
}

export function digest(alg: DigestAlgorithm, ...bufs: Uint8Array[]): Buffer {
  if (native && alg === DigestAlgorithm.Blake3 && bufs.length === 1) return native.blake3(bufs[0]);
  const h = hasher(alg);
  for (const b of bufs) h.update(b);
  return h.digest();
}

export const sha256 = (...bufs: Uint8Array[]): Buffer => digest(DigestAlgorithm.Sha256, ...bufs);
export const sha256hex = (...bufs: Uint8Array[]): string => sha256(...bufs).toString('hex');
