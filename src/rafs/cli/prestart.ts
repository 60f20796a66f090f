/**
 * Loaded first by the `nydus-image` CLI (nydus-image.ts): for `create`, the
 * builder's chunk worker threads are started before the rest of the program
 * is loaded, so they boot (tens of ms each) while this thread loads the
 * builder and reads the command line; `createImage` adopts them
 * (ChunkPool.take). Unused (an invalid command line), they do not keep the
 * process alive. Loads nothing but the pool and what it needs.
 */
import { ChunkPool, defaultBuilderThreads } from '../builder/chunk-pipeline';

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

if (subcommandOf(process.argv.slice(2)) === 'create') ChunkPool.prestart(defaultBuilderThreads());
