/**
 * `nydus-image`: build, merge, check, inspect, stat and unpack RAFS images.
 * Flags follow upstream's nydus-image where upstream has them
 * (src/bin/nydus-image/main.rs); extras are marked in --help.
 */
// first: for `create`, the builder's worker threads start booting now, while the rest loads
import { largeTree } from './prestart';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { compressorName, parseCompressor } from '../../common/compress';
import { initDigest, parseDigester } from '../../common/digest';
import { ErrnoError, einval } from '../../common/errno';
import { LOG_LEVELS, setupLog, type LogLevel } from '../../common/log';
import { RAFS_DEFAULT_CHUNK_SIZE, validateChunkSize } from '../format/constants';
import type { SourceType } from '../builder/create';
import type { WhiteoutSpec } from '../builder/merge';
import type { RafsImage } from '../image';

// each subcommand loads the modules it needs when it runs (start-up time of every run)
/* eslint-disable @typescript-eslint/no-require-imports */
const builder = () => require('../builder/create') as typeof import('../builder/create');
const pipeline = () => require('../builder/chunk-pipeline') as typeof import('../builder/chunk-pipeline');
const merger = () => require('../builder/merge') as typeof import('../builder/merge');
const bootV5 = () => require('../builder/bootstrap-v5') as typeof import('../builder/bootstrap-v5');
const bootV6 = () => require('../builder/bootstrap-v6') as typeof import('../builder/bootstrap-v6');
const image = () => require('../image') as typeof import('../image');
const unpack = () => require('../unpack') as typeof import('../unpack');
const inspect = () => require('../inspect') as typeof import('../inspect');
/* eslint-enable @typescript-eslint/no-require-imports */

const VERSION = 'v2.4.4-ts';


function parseSize(s: string): number {
  const v = /^0x[0-9a-f]+$/i.test(s) ? parseInt(s, 16) : /^\d+$/.test(s) ? parseInt(s, 10) : NaN;
  if (!Number.isSafeInteger(v)) throw einval(`invalid number '${s}'`);
  return v;
}

function readStdinLines(): string[] {
  try {
    return fs.readFileSync(0, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  } catch { return []; }
}

function writeOutputJson(file: string | undefined, o: { bootstrap?: string; blobs: string[]; fsVersion: number; compressor: string; extra?: object }): void {
  if (!file) return;
  const out = {
    version: VERSION,
    bootstrap: o.bootstrap ?? '',
    blobs: o.blobs,
    external_bootstrap: '',
    external_blobs: [],
    trace: {},
    fs_version: String(o.fsVersion),
    compressor: o.compressor,
    ...o.extra,
  };
  fs.writeFileSync(file, JSON.stringify(out, null, 2));
}

function openImage(boot: string | undefined, opts: { blob?: string; blobDir?: string }, validate = false): RafsImage {
  if (!boot) throw einval('a bootstrap is required (BOOTSTRAP argument or --bootstrap)');
  return image().RafsImage.open({ bootstrap: boot, blobFile: opts.blob, blobDir: opts.blobDir, validate });
}

const program = new Command('nydus-image')
  .description('Build, analyze, inspect or validate RAFS filesystems/Nydus accelerated container images')
  .version(VERSION)
  .addOption(new Option('-L, --log-file <file>', 'Log file path'))
  .addOption(new Option('-l, --log-level <level>', 'Log level').choices(LOG_LEVELS).default('info'))
  .hook('preAction', async (cmd) => {
    const o = cmd.opts();
    // (the logger loads pino only when it writes its first line: most builds log nothing)
    setupLog(o.logLevel as LogLevel, o.logFile);
    await initDigest();
  });

program.command('create')
  .description('Create RAFS filesystems from directories, tar files or OCI images')
  .argument('<SOURCE>', 'source from which to build the RAFS filesystem')
  .addOption(new Option('-t, --type <type>', 'Conversion type').choices(['directory', 'dir-rafs', 'tar-rafs', 'targz-rafs']).default('dir-rafs'))
  .option('-B, --bootstrap <file>', 'File path to save the generated RAFS metadata blob')
  .option('-D, --blob-dir <dir>', 'Directory path to save generated RAFS metadata and data blobs')
  .option('-b, --blob <file>', 'File path to save the generated RAFS data blob')
  .option('--blob-inline-meta', 'Inline RAFS metadata and blob metadata into the data blob', false)
  .option('--blob-id <id>', 'blob id for the generated RAFS data blob')
  .option('--chunk-size <size>', 'Set the size of data chunks, must be power of two and between 0x1000-0x1000000')
  .option('--batch-size <size>', 'Set the batch size to merge small chunks, must be power of two, between 0x1000-0x1000000 or be zero', '0')
  .addOption(new Option('--compressor <alg>', 'Algorithm to compress data chunks').choices(['none', 'lz4_block', 'zstd', 'gzip']).default('zstd'))
  .addOption(new Option('--digester <alg>', 'Algorithm to digest data chunks').choices(['blake3', 'sha256']).default('blake3'))
  .addOption(new Option('-v, --fs-version <v>', 'Set RAFS format version number').choices(['5', '6']).default('6'))
  .addOption(new Option('--features <features>', 'Enable/disable features').choices(['blob-toc']))
  .option('--aligned-chunk', 'Align uncompressed data chunks to 4K, only for RAFS V5', false)
  .option('--repeatable', 'Generate reproducible RAFS metadata', false)
  .addOption(new Option('--whiteout-spec <spec>', 'Set the type of whiteout specification').choices(['oci', 'overlayfs', 'none']).default('oci'))
  .addOption(new Option('--prefetch-policy <policy>', 'Set data prefetch policy (patterns from stdin)').choices(['fs', 'blob', 'none']).default('none'))
  .option('-J, --output-json <file>', 'File path to save operation result in JSON format')
  .option('-C, --config <file>', 'Configuration file (accepted for compatibility, unused by local builds)')
  .action(async (source: string, o) => {
    const chunkSize = o.chunkSize ? parseSize(o.chunkSize) : RAFS_DEFAULT_CHUNK_SIZE;
    validateChunkSize(chunkSize);
    const type: SourceType = o.type === 'directory' ? 'dir-rafs' : o.type;
    const batchSize = parseSize(o.batchSize);
    const { checkBatchSize, createImage } = builder();
    checkBatchSize(batchSize, Number(o.fsVersion) as 5 | 6, chunkSize);
    if (!o.bootstrap && !o.blobDir && !o.blobInlineMeta) throw einval('one of --bootstrap, --blob-dir or --blob-inline-meta is required');
    if (o.blobInlineMeta && !o.blob && !o.blobDir) throw einval('--blob-inline-meta needs --blob or --blob-dir');
    const r = await createImage({
      source,
      type,
      fsVersion: Number(o.fsVersion) as 5 | 6,
      compressor: parseCompressor(o.compressor),
      digester: parseDigester(o.digester),
      chunkSize,
      bootstrap: o.bootstrap,
      blob: o.blob,
      blobDir: o.blobDir,
      blobId: o.blobId,
      blobInlineMeta: o.blobInlineMeta,
      blobToc: o.features === 'blob-toc',
      alignedChunk: o.alignedChunk,
      repeatable: o.repeatable,
      prefetchPatterns: o.prefetchPolicy === 'fs' ? readStdinLines() : [],
      batchSize,
      // workers start at once and load while the source is read (NYDUS_BUILDER_THREADS=0: none)
      threads: pipeline().defaultBuilderThreads(),
      onFiles: largeTree,
    });
    const s = r.stats;
    process.stdout.write(`build finished: ${s.files} files, ${s.chunks} chunks (${s.uniqueChunks} unique), ${s.dataBytes} data bytes stored in ${s.storedBytes} bytes\n`);
    if (r.bootstrapPath) process.stdout.write(`bootstrap: ${r.bootstrapPath}\n`);
    for (const b of r.blobs) process.stdout.write(`blob: ${b}${r.blobPath ? ` (${r.blobPath})` : ''}\n`);
    writeOutputJson(o.outputJson, { bootstrap: r.bootstrapPath, blobs: r.blobs, fsVersion: Number(o.fsVersion), compressor: o.compressor });
    exitWhenDone = true;
  });

program.command('merge')
  .description('Merge multiple bootstraps into a overlaid bootstrap')
  .argument('<SOURCE...>', 'bootstrap paths, lowest layer first')
  .requiredOption('-B, --bootstrap <file>', 'Output path of nydus overlaid bootstrap')
  .option('-D, --blob-dir <dir>', 'Directory holding the layers\' data blobs (for inlined bootstraps)')
  .option('--blob-digests <list>', 'RAFS blob digest list separated by comma (replaces each layer\'s blob id)')
  .addOption(new Option('--whiteout-spec <spec>', '(extra) whiteout specification of the layers').choices(['oci', 'overlayfs', 'none']).default('oci'))
  .addOption(new Option('--prefetch-policy <policy>', 'Set data prefetch policy (patterns from stdin)').choices(['fs', 'blob', 'none']).default('none'))
  .option('-J, --output-json <file>', 'File path to save operation result in JSON format')
  .option('-C, --config <file>', 'Configuration file (accepted for compatibility)')
  .action((sources: string[], o) => {
    const digests: string[] | undefined = o.blobDigests?.split(',').map((s: string) => s.trim().replace(/^sha256:/, ''));
    if (digests && digests.length !== sources.length) throw einval(`--blob-digests has ${digests.length} entries for ${sources.length} bootstraps`);
    const images = sources.map((s) => openImage(s, { blobDir: o.blobDir }));
    const first = images[0].sb.meta;
    for (const [i, im] of images.entries()) {
      if (im.sb.meta.version !== first.version) throw einval(`${sources[i]} is RAFS v${im.sb.meta.version}, ${sources[0]} is v${first.version}`);
      if (im.sb.meta.chunkSize !== first.chunkSize) throw einval(`${sources[i]} uses chunk size 0x${im.sb.meta.chunkSize.toString(16)}, expected 0x${first.chunkSize.toString(16)}`);
    }
    const { lookupPath } = builder();
    const m = merger().mergeLayers(images.map((im, i) => ({ sb: im.sb, blobIdOverride: digests?.[i] })), o.whiteoutSpec as WhiteoutSpec);
    const patterns = o.prefetchPolicy === 'fs' ? readStdinLines() : [];
    const prefetch = patterns.map((p) => lookupPath(m.root, p)).filter((x): x is NonNullable<typeof x> => !!x);
    const boot = (first.version === 5 ? bootV5().writeBootstrapV5 : bootV6().writeBootstrapV6)(m.root, {
      chunkSize: first.chunkSize, compressor: first.compressor, digester: first.digester,
      explicitUidGid: first.explicitUidGid, blobs: m.blobs, prefetch,
      extraFlags: first.flags & (0x100 | 0x0100_0000),
    });
    fs.writeFileSync(o.bootstrap, boot);
    const ratio = m.totalBytes ? m.uniqueBytes / m.totalBytes : 1;
    process.stdout.write(`merged ${sources.length} layers into ${o.bootstrap}: ${m.blobs.length} blobs, ${m.chunkRefs} chunk refs, ${m.dedupedRefs} deduplicated across layers, dedup ratio ${(1 - ratio).toFixed(4)} (${m.uniqueBytes}/${m.totalBytes} bytes unique)\n`);
    writeOutputJson(o.outputJson, { bootstrap: o.bootstrap, blobs: m.blobs.map((b) => b.blobId), fsVersion: first.version, compressor: compressorName(first.compressor),
      extra: { dedup: { chunk_refs: m.chunkRefs, deduplicated_refs: m.dedupedRefs, total_bytes: m.totalBytes, unique_bytes: m.uniqueBytes } } });
    images.forEach((im) => im.close());
  });

program.command('check')
  .description('Validate RAFS filesystem metadata (and with --verify-chunks every chunk digest)')
  .argument('[BOOTSTRAP]', 'File path of RAFS metadata')
  .option('-B, --bootstrap <file>', '[Deprecated] File path of RAFS meta blob/bootstrap')
  .option('-D, --blob-dir <dir>', 'Directory hosting data blobs')
  .option('-b, --blob <file>', '(extra) Path to the RAFS data blob file')
  .option('--verify-chunks', '(extra) read every chunk and verify its digest', false)
  .option('-v, --verbose', 'Output message in verbose mode (print the tree)', false)
  .option('-J, --output-json <file>', 'File path to save operation result in JSON format')
  .option('-C, --config <file>', 'Configuration file (accepted for compatibility)')
  .action((boot: string | undefined, o) => {
    const bootstrap = boot ?? o.bootstrap;
    const img = openImage(bootstrap, o);
    const r = inspect().checkImage(img, { verifyChunks: o.verifyChunks });
    if (o.verbose) process.stdout.write(inspect().formatTree(img));
    process.stdout.write(`RAFS v${img.sb.meta.version} image is valid: ${r.inodes} inodes, ${r.files} files, ${r.chunks} chunks${o.verifyChunks ? ` (${r.verifiedChunks} verified)` : ''}\n`);
    writeOutputJson(o.outputJson, { bootstrap, blobs: img.sb.blobs.map((b) => b.blobId), fsVersion: img.sb.meta.version, compressor: compressorName(img.sb.meta.compressor) });
    img.close();
  });

program.command('inspect')
  .description('Inspect RAFS filesystem metadata (request mode)')
  .argument('[BOOTSTRAP]', 'File path of RAFS metadata')
  .option('-B, --bootstrap <file>', '[Deprecated] File path of RAFS meta blob/bootstrap')
  .option('-D, --blob-dir <dir>', 'Directory hosting data blobs')
  .option('-R, --request <req>', 'stats | blobs | prefetch | superblock | chunks (default: a summary)')
  .action((boot: string | undefined, o) => {
    const img = openImage(boot ?? o.bootstrap, o);
    process.stdout.write(inspect().inspectImage(img, o.request) + '\n');
    img.close();
  });

program.command('stat')
  .description('Generate statistics information for RAFS filesystems (counts, dedup)')
  .option('-B, --bootstrap <file>', 'Generate statistics for this RAFS filesystem')
  .option('-D, --blob-dir <dir>', 'Generate statistics for all bootstraps in this directory')
  .addOption(new Option('--digester <alg>', 'Algorithm to digest data chunks').choices(['blake3', 'sha256']).default('blake3'))
  .option('-J, --output-json <file>', 'File path to save the statistics in JSON format')
  .option('-C, --config <file>', 'Configuration file (accepted for compatibility)')
  .action((o) => {
    const boots: string[] = o.bootstrap ? [o.bootstrap] : o.blobDir ? fs.readdirSync(o.blobDir).map((f) => path.join(o.blobDir, f)).filter((f) => {
      try { const b = Buffer.alloc(1028); const fd = fs.openSync(f, 'r'); fs.readSync(fd, b, 0, 1028, 0); fs.closeSync(fd); return b.readUInt32LE(0) === 0x52414653 || b.readUInt32LE(1024) === 0xe0f5e1e2; } catch { return false; }
    }) : [];
    if (boots.length === 0) throw einval('stat needs --bootstrap or a --blob-dir containing bootstraps');
    const images = boots.map((b) => openImage(b, {}));
    const st = inspect().imageStats(images.map((i) => i.sb));
    process.stdout.write(JSON.stringify(st, null, 2) + '\n');
    if (o.outputJson) fs.writeFileSync(o.outputJson, JSON.stringify(st, null, 2));
    images.forEach((i) => i.close());
  });

program.command('unpack')
  .description('Unpack a RAFS filesystem to a tar file (or, extra, a directory)')
  .argument('[BOOTSTRAP]', 'File path of RAFS metadata')
  .option('-B, --bootstrap <file>', '[Deprecated] File path of RAFS meta blob/bootstrap')
  .option('-b, --blob <file>', 'Path to RAFS data blob file')
  .option('-D, --blob-dir <dir>', 'Directory for localfs storage backend, hosting data blobs')
  .option('--output <file>', 'Path for output tar file')
  .option('--output-dir <dir>', '(extra) unpack into this (empty) directory instead of a tar')
  .option('--verify-chunks', '(extra) verify every chunk digest while unpacking', false)
  .action((boot: string | undefined, o) => {
    if (!o.output && !o.outputDir) throw einval('invalid empty --output option');
    const img = openImage(boot ?? o.bootstrap, o, o.verifyChunks);
    const n = o.output ? unpack().unpackToTar(img, o.output) : unpack().unpackToDir(img, o.outputDir);
    process.stdout.write(`unpacked ${n} entries to ${o.output ?? o.outputDir}\n`);
    img.close();
  });

/**
 * Set by a subcommand that leaves nothing behind once it returns (its files
 * written and closed, its workers stopped; stdout, stderr and the log are
 * written synchronously on Linux): the process exits at once instead of
 * letting V8 finish its background work (optimizing compiles, GC) and tear
 * its heaps down, 10-30 ms of a build's end.
 */
let exitWhenDone = false;

program.parseAsync(process.argv).then(() => {
  if (exitWhenDone) process.exit();
}, (err: unknown) => {
  const msg = err instanceof ErrnoError ? `${err.message} (${err.code})` : err instanceof Error ? err.message : String(err);
  process.stderr.write(`error: ${msg}\n`);
  if (process.env.NYDUS_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  process.exitCode = 1;
});

