/**
 * What a chunk decode worker does and says (decode-pool.ts runs the
 * workers, decode-worker.ts is one): the decoder of a request's chunks,
 * shared with the inline path, and the messages. Kept apart from the pool
 * so a worker loads only the decoder (not the pool, the chunk arena or the
 * native bindings they use).
 */
import type { BlobInfo, ChunkInfo } from '../format/types';
import { decodeChunk } from './chunk-reader';

/** What the worker needs of a BlobInfo. */
export interface DecodeBlob { blobId: string; compressor: number; digester: number }

/** Where chunk k is decompressed to: `len` bytes at `off` of `sab` (a chunk arena slot). */
export interface DecodeTarget { sab: SharedArrayBuffer; off: number; len: number }

/**
 * main → worker: decode `chunks` of `raw` (offsets relative to `start`);
 * chunk k into `into[k]` when given.
 */
export interface DecodeRequest { id: number; blob: DecodeBlob; raw: Uint8Array | DecodeTarget; start: number; chunks: ChunkInfo[]; validate: boolean; into?: Array<DecodeTarget | null> }

/**
 * worker → main: chunks `ks` of request `id`, each with its bytes, `true`
 * (decoded into its target), `null` (stored uncompressed: the request's own
 * bytes, which come back with `done`) or an error message; or `done` with the request's bytes. The first
 * chunk (the one a reader waits for) and big ones are posted alone, small
 * ones together (a message per 4 KiB chunk would cost more than decoding it).
 * The request's bytes come back only when a chunk was answered `null`:
 * otherwise they die in the worker (each buffer arriving in this thread
 * counts towards its heap's external memory, whose growth by 64 MiB starts
 * a full garbage collection here). `ready` comes once, when the worker has
 * loaded everything and takes requests.
 */
export type DecodeReply =
  | { id: number; ks: number[]; data: Array<Uint8Array | null | string | true> }
  | { id: number; done: true; raw?: Uint8Array }
  | { ready: true };

/** Decoded bytes gathered into one worker → main message (besides the first chunk, always alone). */
export const REPLY_BATCH_BYTES = 256 << 10;
/** Chunks gathered into one worker → main message at most. */
export const REPLY_BATCH_CHUNKS = 64;

/**
 * Decode each chunk of `run` from `raw` (the request's bytes from compressed
 * offset `start`): decoded bytes, or the error decodeChunk threw. Batch
 * members of one request share one decompression. `each` sees every result
 * as soon as it is ready.
 */
export function decodeRun(info: DecodeBlob, raw: Buffer, start: number, run: readonly ChunkInfo[], validate: boolean, each?: (k: number, d: Buffer | Error) => void, into?: (k: number) => Buffer | undefined): Array<Buffer | Error> {
  const batches = new Map<number, Buffer>();
  return run.map((chunk, k) => {
    const piece = raw.subarray(chunk.compressedOffset - start, chunk.compressedOffset - start + chunk.compressedSize);
    let d: Buffer | Error;
    try {
      d = decodeChunk(piece, chunk, info as BlobInfo, { validate, batches, into: into?.(k) });
    } catch (err) {
      d = err as Error;
    }
    each?.(k, d);
    return d;
  });
}
