/**
 * How far V8 lets the old generation grow past what survived the last full
 * collection (`--heap-growing-percent`, read at each collection), with more
 * room while a download streams.
 *
 * Why: V8 (11.x, Node 20) counts external memory allocated since the last
 * full collection against the old generation's limit, and every socket read
 * is a new 64 KiB ArrayBuffer. With the daemon's tight limit (20 % over a
 * heap of ~12 MB, see bin/young-generation.ts), a registry read collected the
 * whole heap every ~8 MB received: 8-14 full collections for a 131 MiB blob,
 * ~170 ms of the read's ~900 ms of CPU. While a body streams
 * (`streamStarted`/`streamEnded`, counted), the limit is set ~64 MiB above
 * the heap (at most 5x); STREAM_LINGER_MS after the last stream ended (a
 * sequential reader's requests come with gaps), the base percent is back
 * for the next collection. What a download allocates dies young or with the
 * request, so the heap itself does not grow into that room.
 * NYDUS_V8_STREAM_GROWING=0 keeps the base percent throughout.
 */
import * as v8 from 'node:v8';

/** room the old generation gets while a download streams */
const STREAM_ROOM = 64 << 20;
/** V8's largest allowed value (factor 5) */
const MAX_PERCENT = 400;
/** the room stays this long after the last stream ended */
const STREAM_LINGER_MS = 500;

let base = 0;
let current = 0;
let streams = 0;
let linger: NodeJS.Timeout | undefined;
const streamRoom = process.env.NYDUS_V8_STREAM_GROWING !== '0';

function apply(percent: number): void {
  if (percent === current) return;
  current = percent;
  // 0 is V8's own (dynamic) factor
  v8.setFlagsFromString(`--heap-growing-percent=${percent}`);
}

/** The percent outside downloads (0 = V8's default); applied now. */
export function setHeapGrowing(percent: number): void {
  base = percent;
  current = -1;
  apply(streams > 0 ? streamPercent() : base);
}

/** Apply the percent in force again (after a worker thread's heap set-up reset the process-wide flags). */
export function reapplyHeapGrowing(): void {
  const p = current;
  current = -1;
  apply(p < 0 ? base : p);
}

function streamPercent(): number {
  const used = v8.getHeapStatistics().used_heap_size;
  const want = Math.ceil((STREAM_ROOM / Math.max(used, 1 << 20)) * 100);
  return Math.max(base, Math.min(MAX_PERCENT, want));
}

/** A response body starts streaming in. */
export function streamStarted(): void {
  if (!streamRoom || streams++ > 0) return;
  if (linger) { clearTimeout(linger); linger = undefined; return; }
  apply(streamPercent());
}

/** A response body ended (or failed); every streamStarted gets exactly one. */
export function streamEnded(): void {
  if (!streamRoom || streams === 0) return;
  if (--streams > 0) return;
  linger = setTimeout(() => { linger = undefined; apply(base); }, STREAM_LINGER_MS);
  linger.unref();
}
