/**
 * Worker side of the chunk decode pool (decode-pool.ts): decodes the chunks
 * of each request with decodeRun (the inline decoder) and posts the chunks
 * back as they are decoded (their memory moved when they own it, copied
 * otherwise): the first one alone at once, small ones together up to 256 KiB
 * or 64 chunks a message; then `done`, with the request's own bytes when
 * some chunk was stored uncompressed (a view of them).
 *
 * Compiled to dist/storage/blob/decode-worker.js, or run from the TypeScript
 * source through tsx (decode-pool.ts passes the loader).
 */
import { parentPort } from 'node:worker_threads';
import { Compressor, loadCodec } from '../../common/compress';
import type { ChunkInfo } from '../format/types';
import { type DecodeReply, type DecodeRequest, REPLY_BATCH_BYTES, REPLY_BATCH_CHUNKS, decodeRun } from './decode-run';
import { digestModule } from './chunk-reader';

const port = parentPort!;
// the codec nydus images use is loaded before the worker says it is ready (its first chunk would wait
// for it); the digests only with the first request that verifies (a worker that never verifies never
// loads them)
try { loadCodec(Compressor.Zstd); } catch { /* its first chunk reports it */ }
// everything loaded: requests may come (the pool stops a worker only after this, never mid-load)
port.postMessage({ ready: true } satisfies DecodeReply);
let digests: Promise<void> | undefined;

port.on('message', (req: DecodeRequest) => {
  if (!req.validate) { decodeRequest(req); return; }
  // a failed load makes each chunk's check fail (its error is reported per chunk)
  (digests ??= digestModule().initDigest()).then(() => decodeRequest(req), () => decodeRequest(req));
});

/** Decode `req`'s chunks, posting them back as they are decoded, then `done`. */
function decodeRequest(req: DecodeRequest): void {
  // the request's bytes: moved here, or arena memory shared with the main thread (read in place)
  const shared = 'sab' in req.raw;
  const raw = 'sab' in req.raw ? Buffer.from(req.raw.sab, req.raw.off, req.raw.len) : Buffer.from(req.raw.buffer, req.raw.byteOffset, req.raw.byteLength);
  // structured clone turned the digests into plain Uint8Arrays
  const chunks: ChunkInfo[] = req.chunks.map((c) => ({ ...c, digest: Buffer.from(c.digest.buffer, c.digest.byteOffset, c.digest.byteLength) }));
  let ks: number[] = [];
  let data: Array<Uint8Array | null | string | true> = [];
  const targets = req.into?.map((t) => (t ? Buffer.from(t.sab, t.off, t.len) : undefined));
  let moved: ArrayBuffer[] = [];
  let bytes = 0;
  let stored = false;
  const flush = () => {
    if (!ks.length) return;
    port.postMessage({ id: req.id, ks, data } satisfies DecodeReply, moved);
    ks = [];
    data = [];
    moved = [];
    bytes = 0;
  };
  decodeRun(req.blob, raw, req.start, chunks, req.validate, (k, d) => {
    ks.push(k);
    if (d instanceof Error) data.push(d.message);
    else if (targets?.[k] && d === targets[k]) { data.push(true); bytes += d.byteLength; } // in its slot: nothing to move
    else if (d.buffer === raw.buffer) { data.push(null); stored = true; } // stored uncompressed: comes back with the request
    else if (d.byteOffset === 0 && d.byteLength === d.buffer.byteLength) {
      data.push(d);
      moved.push(d.buffer as ArrayBuffer);
      bytes += d.byteLength;
    } else {
      const own = new Uint8Array(d.byteLength);
      own.set(d);
      data.push(own);
      moved.push(own.buffer);
      bytes += d.byteLength;
    }
    // the first chunk is what a reader is waiting for; the rest go in batches
    if (k === 0 || bytes >= REPLY_BATCH_BYTES || ks.length >= REPLY_BATCH_CHUNKS) flush();
  }, targets && ((k) => targets[k]));
  flush();
  // the request's bytes go back only for the chunks that are views of them
  if (stored && !shared) port.postMessage({ id: req.id, done: true, raw: req.raw as Uint8Array } satisfies DecodeReply, [(req.raw as Uint8Array).buffer as ArrayBuffer]);
  else port.postMessage({ id: req.id, done: true } satisfies DecodeReply);
}
