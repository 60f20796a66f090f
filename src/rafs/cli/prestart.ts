/**
 * Loaded first by the `nydus-image` CLI (nydus-image.ts): for `create`, the
 * builder's chunk worker threads are started before the rest of the program
 * is loaded, so they boot (tens of ms each) while this thread loads the
 * builder and reads the command line; `createImage` adopts them
 * (ChunkPool.take). Unused (an invalid command line), they do not keep the
 * process alive. Loads nothing but the pool and what it needs, and starts
 * the threads before it loads the pool.
 */
import { setFlagsFromString } from 'node:v8';
import { defaultBuilderThreads, spawnChunkWorkers } from '../builder/worker-file';

/**
 * V8's profiler budget (bytecode run before a function is sent to TurboFan),
 * raised to 4x the default for `create` until the tree turns out large: a
 * build of a few thousand files runs for well under a second, and with the
 * default budget V8 compiles ~90 functions (the walk, Node's stat objects,
 * the chunk loop, the bootstrap writer) on background threads that compete
 * with the chunk workers for the cores; with 4x, ~20. Past
 * LARGE_TREE_FILES files (`largeTree`) the default is back: the JS of a
 * 100,000-file build runs long enough for TurboFan to pay (measured: 4x
 * all along costs such a build 2-5% more CPU). The flag is process-wide
 * (the workers' isolates too) and set before any worker starts.
 */
/** V8 11.3's default (Node 20) */
const DEFAULT_INTERRUPT_BUDGET = 67584;
const CREATE_INTERRUPT_BUDGET = 4 * DEFAULT_INTERRUPT_BUDGET;
export const LARGE_TREE_FILES = 10_000;
let budgetRaised = false;

/** `CreateOptions.onFiles` for the CLI: V8 tiers up as usual once a tree has LARGE_TREE_FILES files. */
export function largeTree(files: number): void {
  if (!budgetRaised || files < LARGE_TREE_FILES) return;
  budgetRaised = false;
  setFlagsFromString(`--interrupt-budget=${DEFAULT_INTERRUPT_BUDGET}`);
}

/** global options that take a value (nydus-image.ts) */
const VALUE_OPTIONS = new Set(['-L', '--log-file', '-l', '--log-level']);

/** The subcommand of a command line (arguments after the script): the first argument that is not a global option or its value. */
export function subcommandOf(args: string[]): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (VALUE_OPTIONS.has(a)) i++;
    else if (!a.startsWith('-')) return a;
  }
  return undefined;
}

if (subcommandOf(process.argv.slice(2)) === 'create') {
  setFlagsFromString(`--interrupt-budget=${CREATE_INTERRUPT_BUDGET}`);
  budgetRaised = true;
  const threads = defaultBuilderThreads();
  // the threads start booting now; the pool around them (and the digest module it loads) after
  const spawned = spawnChunkWorkers(threads);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  (require('../builder/chunk-pipeline') as typeof import('../builder/chunk-pipeline')).ChunkPool.prestart(threads, spawned);
}
