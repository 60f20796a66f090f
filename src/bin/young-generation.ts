/**
 * nydusd keeps V8's young generation at its initial size (two 1 MiB
 * semi-spaces), set as this module loads, the first thing nydusd does.
 *
 * Why: by default it doubles under allocation up to 32 MiB, all of it
 * resident: 8 MiB by the end of module loading, 32 MiB after a
 * 100,000-file read (a tenth of the daemon's RSS), while little of what a
 * request allocates outlives it.
 *
 * How: the semi-space size flags are read only when a heap is set up
 * (node's command line, which a `#!` launcher cannot pass on every system);
 * the growth factor is read at each growth, so it is set at run time, and
 * again once each worker thread is up, since setting up a worker's heap
 * puts the process-wide factor back to V8's minimum of 2. While a worker
 * thread runs (the chunk decoder), V8 still grows it now and then: 8 MiB
 * after the 100,000-file read instead of 32 (2 MiB without the worker).
 * NYDUS_V8_YOUNG_GROWTH=2 keeps V8's default (benchmarks).
 *
 * The old generation likewise: with a young generation this small, objects
 * that outlive a few requests (cache entries, chunk flights until written
 * back) end up there, and V8 lets it grow to 2-4x what survived its last
 * full collection before the next one: 50-90 MB of heap, mostly garbage,
 * after a 100,000-file read. Growing it by HEAP_GROWING_PERCENT instead
 * (V8's flag, read at each collection) keeps it within ~1.2x what lives
 * (plus V8's minimum step); NYDUS_V8_HEAP_GROWING=0 keeps V8's default.
 * While a download streams, common/heap-growing.ts gives it more room.
 */
import * as v8 from 'node:v8';
import type { Worker } from 'node:worker_threads';
import { reapplyHeapGrowing, setHeapGrowing } from '../common/heap-growing';

const HEAP_GROWING_PERCENT = 20;

const young = process.env.NYDUS_V8_YOUNG_GROWTH !== '2';
const oldEnv = process.env.NYDUS_V8_HEAP_GROWING;
const growing = oldEnv !== undefined && oldEnv !== '' && Number.isInteger(Number(oldEnv)) ? Math.max(0, Math.min(400, Number(oldEnv))) : HEAP_GROWING_PERCENT;

const capYoung = (): void => { if (young) v8.setFlagsFromString('--semi-space-growth-factor=1'); };

capYoung();
setHeapGrowing(growing);
process.on('worker', (w: Worker) => w.once('online', () => { capYoung(); reapplyHeapGrowing(); }));
