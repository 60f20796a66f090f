/**
 * Worker side of the chunk decode pool (decode-pool.ts): decodes the chunks
 * of each request with decodeRun (the inline decoder) and posts every chunk
 * back as soon as it is decoded (its memory moved when it owns it, copied
 * otherwise), then the request's own bytes.
 *
 * Compiled to dist/storage/blob/decode-worker.js, or run from the TypeScript
 * source through tsx (decode-pool.ts passes the loader).
 */
import { parentPort } from 'node:worker_threads';
import { initDigest } from '../../common/digest';
import type { ChunkInfo } from '../format/types';
import { type DecodeReply, type DecodeRequest, decodeRun } from './decode-pool';

const port = parentPort!;
const ready = initDigest();

port.on('message', (req: DecodeRequest) => {
  void ready.then(() => {
    const raw = Buffer.from(req.raw.buffer, req.raw.byteOffset, req.raw.byteLength);
    // structured clone turned the digests into plain Uint8Arrays
    const chunks: ChunkInfo[] = req.chunks.map((c) => ({ ...c, digest: Buffer.from(c.digest.buffer, c.digest.byteOffset, c.digest.byteLength) }));
    decodeRun(req.blob, raw, req.start, chunks, req.validate, (k, d) => {
      let m: DecodeReply;
      if (d instanceof Error) m = { id: req.id, k, data: d.message };
      else if (d.buffer === raw.buffer) m = { id: req.id, k, data: null }; // stored uncompressed: comes back with the request
      else if (d.byteOffset === 0 && d.byteLength === d.buffer.byteLength) {
        port.postMessage({ id: req.id, k, data: d } satisfies DecodeReply, [d.buffer as ArrayBuffer]);
        return;
      } else {
        const own = new Uint8Array(d.byteLength);
        own.set(d);
        port.postMessage({ id: req.id, k, data: own } satisfies DecodeReply, [own.buffer]);
        return;
      }
      port.postMessage(m);
    });
    port.postMessage({ id: req.id, done: true, raw: req.raw } satisfies DecodeReply, [req.raw.buffer as ArrayBuffer]);
  });
});
