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

/**
 * sha256 over a stream of buffers (a blob's id, rafs-spec §4.4) whose
 * updates can run on libuv's thread pool: `updateAsync` (koffi's async
 * calls into the SHA256_* functions of the OpenSSL that Node links, found in
 * the process itself, with its SHA instructions), so the thread that makes
 * the stream does not spend ~0.6 ms per MiB hashing it. Updates, sync or not,
 * apply in the order given; at most one async update is in flight at a time
 * (the caller waits for its callback). Where those functions are not found
 * (a Node linked against a shared OpenSSL without them, NYDUS_SHA256=crypto),
 * node:crypto's hash is used and `async` is false.
 */
export interface Sha256Stream {
  /** whether `updateAsync` runs off this thread */
  readonly async: boolean;
  update(b: Uint8Array): void;
  /** `b` hashed on the thread pool (it must stay unchanged until `done`), after every update before */
  updateAsync(b: Uint8Array, done: (err?: Error) => void): void;
  /** sha256 of the bytes so far (no async update may be in flight); the stream goes on */
  peek(): Buffer;
  /** the final sha256; nothing may follow */
  digest(): Buffer;
}

/** SHA256_CTX is 112 bytes on 64-bit OpenSSL 1.1 and 3 (some room kept) */
const SHA256_CTX_ROOM = 256;
interface OpenSslSha {
  init(ctx: Buffer): number;
  update: ((ctx: Buffer, data: Uint8Array, n: number) => number) & { async(ctx: Buffer, data: Uint8Array, n: number, cb: (err: unknown, r: number) => void): void };
  final(md: Buffer, ctx: Buffer): number;
}
let openSsl: OpenSslSha | null | undefined;

/** The SHA256_* functions of the process's OpenSSL through koffi (loaded when first asked for), checked on a known answer; null where missing. */
function openSslSha(): OpenSslSha | null {
  if (openSsl !== undefined) return openSsl;
  openSsl = null;
  if (process.env.NYDUS_SHA256 === 'crypto') return null;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const koffi = require('koffi') as typeof import('koffi');
    const self = koffi.load(null);
    const s: OpenSslSha = {
      init: self.func('int SHA256_Init(_Inout_ uint8_t *c)'),
      update: self.func('int SHA256_Update(_Inout_ uint8_t *c, const uint8_t *d, size_t n)'),
      final: self.func('int SHA256_Final(_Out_ uint8_t *md, _Inout_ uint8_t *c)'),
    } as OpenSslSha;
    const ctx = Buffer.alloc(SHA256_CTX_ROOM);
    const md = Buffer.alloc(DIGEST_SIZE);
    if (s.init(ctx) !== 1 || s.update(ctx, Buffer.from('abc'), 3) !== 1 || s.final(md, ctx) !== 1) return null;
    if (md.toString('hex') !== 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad') return null;
    openSsl = s;
  } catch {
    // not this process: node:crypto
  }
  return openSsl;
}

export function sha256Stream(): Sha256Stream {
  const s = openSslSha();
  if (!s) {
    const h = createHash('sha256');
    return {
      async: false,
      update: (b) => { h.update(b); },
      updateAsync: (b, done) => { h.update(b); done(); },
      peek: () => h.copy().digest(),
      digest: () => h.digest(),
    };
  }
  const ctx = Buffer.alloc(SHA256_CTX_ROOM);
  s.init(ctx);
  const fin = (c: Buffer): Buffer => {
    const md = Buffer.alloc(DIGEST_SIZE);
    if (s.final(md, c) !== 1) throw new Error('SHA256_Final failed');
    return md;
  };
  return {
    async: true,
    update: (b) => { if (b.length > 0 && s.update(ctx, b, b.length) !== 1) throw new Error('SHA256_Update failed'); },
    updateAsync: (b, done) => {
      if (b.length === 0) { done(); return; }
      s.update.async(ctx, b, b.length, (err, r) => done(err ? (err as Error) : r !== 1 ? new Error('SHA256_Update failed') : undefined));
    },
    peek: () => fin(Buffer.from(ctx)),
    digest: () => fin(ctx),
  };
}
