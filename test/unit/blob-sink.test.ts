/** BlobSink: the blob written and hashed (on the thread pool) in order, whatever the mix of buffers, and each buffer held until both are done. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { sha256Stream } from '../../src/common/digest';
import { BlobSink } from '../../src/rafs/builder/blob-sink';

test('blob sink: small, big, adjacent-in-memory and unhashed buffers are written in order and hashed in order (mid-stream digest too)', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blob-sink-'));
  const file = path.join(dir, 'blob');
  const fd = fs.openSync(file, 'w');
  try {
    const head = crypto.randomBytes(100);
    fs.writeSync(fd, head);
    const stream = sha256Stream();
    stream.update(head);
    const sink = new BlobSink(fd, file, head.length, stream);
    const ref = crypto.createHash('sha256').update(head);
    const all: Buffer[] = [head];
    const released: boolean[] = [];
    // one "answer" whose pieces are given one after the other (merged into one hash call), then small ones, then an unhashed one
    const answer = crypto.randomBytes(3 << 20);
    const pieces = [answer.subarray(0, 1 << 20), answer.subarray(1 << 20, (2 << 20) + 5), answer.subarray((2 << 20) + 5)];
    const smalls = Array.from({ length: 3000 }, (_, i) => crypto.randomBytes(1 + (i % 700)));
    const unhashed = crypto.randomBytes(5000);
    const give = (b: Buffer, hashed = true) => {
      sink.write(b, hashed);
      if (hashed) ref.update(b);
      all.push(b);
      const k = released.length;
      released.push(false);
      sink.whenWritten(() => { released[k] = true; });
    };
    for (const p of pieces) give(p);
    sink.flush();
    for (const b of smalls.slice(0, 1500)) give(b);
    await sink.room();
    const mid = await sink.digest();
    assert.equal(mid, ref.copy().digest(), 'mid-stream digest');
    give(unhashed, false);
    for (const b of smalls.slice(1500)) give(b);
    give(crypto.randomBytes(200 << 10));
    const sum = await sink.end();
    assert.equal(sum, ref.digest());
    assert.ok(released.every((r) => r), 'every buffer released');
    assert.equal(fs.readFileSync(file), Buffer.concat(all));
  } finally {
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
