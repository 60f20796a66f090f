/**
 * Worker side of BlobSink (blob-sink.ts): appends the blob's bytes to its
 * file and keeps its sha256 (the blob id), off the main thread. Buffers come
 * transferred and go back once written, for reuse. Messages are handled in
 * order; after an error every later request answers that error.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import type { SinkReply, SinkRequest } from './blob-sink';

const fd = (workerData as { fd: number }).fd;
const hash = createHash('sha256');
let failed: { message: string; code?: string } | undefined;

const port = parentPort!;
port.on('message', (m: SinkRequest) => {
  const reply = (r: SinkReply, transfer: ArrayBuffer[] = []) => port.postMessage(r, transfer);
  if (m.type === 'data') {
    if (!failed) {
      try {
        const b = Buffer.from(m.buf, 0, m.len);
        if (m.hashed) hash.update(b);
        let done = 0;
        while (done < b.length) done += fs.writeSync(fd, b, done, b.length - done);
      } catch (e) {
        failed = { message: (e as Error).message, code: (e as NodeJS.ErrnoException).code };
      }
    }
    reply({ type: 'written', buf: m.buf, len: m.len }, [m.buf]);
    return;
  }
  if (failed) { reply({ type: 'error', ...failed }); return; }
  if (m.type === 'digest') reply({ type: 'digest', digest: hash.copy().digest() });
  else reply({ type: 'digest', digest: hash.digest() });
});
