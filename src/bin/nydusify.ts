/**
 * `nydusify`: convert OCI/Docker images to Nydus images, check them, copy
 * images (nydusify-snapshotter §1). Flags are upstream's (urfave/cli names,
 * env vars where upstream reads them); global `--log-level`/`-l`,
 * `--log-file`, `--debug`/`-D` go before the subcommand.
 *
 * Deliberate differences: the builder runs in-process (`--nydus-image` is
 * accepted and ignored); `check` mounts with this package's nydusd unless
 * `--nydusd` names another; flags of paths that are not implemented
 * (backends, build cache, chunk dict, --oci-ref, --reverse)
 * are rejected with EINVAL rather than ignored; `--source-archive` /
 * `--target-archive` are OCI-layout tars (skopeo's `oci-archive:`); `--work-dir` is
 * removed after convert only if nydusify created it (as upstream); progress
 * bars (cli-progress) only on a TTY.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { MultiBar, Presets } from 'cli-progress';
import { parseCompressor } from '../common/compress';
import { initDigest } from '../common/digest';
import { ErrnoError, einval } from '../common/errno';
import { LOG_LEVELS, log, setupLog, type LogLevel } from '../common/log';
import { checkBatchSize } from '../rafs/builder/create';
import { validateChunkSize } from '../rafs/format/constants';
import { defaultPlatform, parsePlatform, type PlatformSpec } from '../remote/platform';
import { parseReference, formatReference, withTag } from '../remote/reference';
import { BUILDER_VERSION, convert, type ConvertMetrics, type ProgressEvent } from '../converter/convert';
import { CheckError, check } from '../converter/check';
import { copy } from '../converter/copy';

function parseSize(s: string): number {
  const v = /^0x[0-9a-f]+$/i.test(s) ? parseInt(s, 16) : /^\d+$/.test(s) ? parseInt(s, 10) : NaN;
  if (!Number.isSafeInteger(v)) throw einval(`invalid number '${s}'`);
  return v;
}

function platformsOf(o: { platform?: string; allPlatforms?: boolean }): PlatformSpec[] | undefined {
  if (o.allPlatforms) return undefined;
  if (!o.platform) return [defaultPlatform()];
  return o.platform.split(',').map((p) => p.trim()).filter(Boolean).map(parsePlatform);
}

function readStdinPatterns(): string[] {
  try {
    return fs.readFileSync(0, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean);
  } catch {
    return [];
  }
}

/** Progress bars on a TTY (one per layer and phase), nothing otherwise. */
function progressSink(): { on: (e: ProgressEvent) => void; stop: () => void } {
  if (!process.stderr.isTTY) return { on: () => undefined, stop: () => undefined };
  const multi = new MultiBar({ clearOnComplete: false, hideCursor: true, format: '{phase} {id} [{bar}] {state}', stream: process.stderr }, Presets.shades_classic);
  const bars = new Map<string, ReturnType<MultiBar['create']>>();
  return {
    on(e) {
      const key = `${e.phase}:${e.id}`;
      let b = bars.get(key);
      const id = e.id.replace(/^sha256:/, '').slice(0, 12);
      if (!b) { b = multi.create(1, 0, { phase: e.phase.padEnd(5), id, state: 'running' }); bars.set(key, b); }
      if (e.state === 'done') b.update(1, { state: 'done' });
    },
    stop: () => multi.stop(),
  };
}

const unsupported = (o: Record<string, unknown>, names: string[]): void => {
  for (const n of names) {
    const v = o[n];
    if (v !== undefined && v !== false && v !== '') throw einval(`--${n.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} is not supported by this nydusify`);
  }
};

const program = new Command('nydusify')
  .description('Nydusify converts a remote container image into a Nydus image (and checks / copies images)')
  .version(BUILDER_VERSION)
  .option('-D, --debug', 'Enable debug log level, overwrites the \'log-level\' option', !!process.env.DEBUG_LOG_LEVEL)
  .addOption(new Option('-l, --log-level <level>', 'Set log level').choices([...LOG_LEVELS, 'panic', 'fatal']).default(process.env.LOG_LEVEL ?? 'info'))
  .option('--log-file <file>', 'Write logs to a file', process.env.LOG_FILE)
  .hook('preAction', async (cmd) => {
    const o = cmd.opts();
    const lvl = o.debug ? 'debug' : o.logLevel === 'panic' || o.logLevel === 'fatal' ? 'error' : o.logLevel;
    setupLog(lvl as LogLevel, o.logFile);
    await initDigest();
  });

const env = (name: string) => process.env[name];

program.command('convert')
  .description('Generate a Nydus image from an image')
  .addOption(new Option('--source <ref>', 'Source OCI image reference').env('SOURCE'))
  .addOption(new Option('--target <ref>', 'Target (Nydus) image reference').env('TARGET'))
  .addOption(new Option('--target-suffix <suffix>', 'Generate the target reference by appending a suffix to the source tag').env('TARGET_SUFFIX'))
  .addOption(new Option('--source-archive <file>', 'Read the source from this OCI-layout archive (tar, gzip or zstd) instead of pulling').env('SOURCE_ARCHIVE'))
  .addOption(new Option('--target-archive <file>', 'Write the target to this OCI-layout archive instead of pushing').env('TARGET_ARCHIVE'))
  .option('--source-insecure', 'Skip verifying the source registry\'s TLS certificate', false)
  .option('--target-insecure', 'Skip verifying the target registry\'s TLS certificate', false)
  .option('--plain-http', 'Use plain HTTP for every registry', false)
  .addOption(new Option('--fs-version <v>', 'RAFS version of the Nydus image').choices(['5', '6']).default(env('FS_VERSION') ?? '6'))
  .addOption(new Option('--compressor <alg>', 'Algorithm to compress image data').choices(['none', 'lz4_block', 'zstd']).default('zstd'))
  .addOption(new Option('--fs-chunk-size <size>', 'Size of Nydus image data chunks, power of two in [0x1000, 0x1000000]').env('FS_CHUNK_SIZE').default('0x100000'))
  .addOption(new Option('--chunk-size <size>', 'Alias of --fs-chunk-size').hideHelp())
  .option('--batch-size <size>', 'Batch size to merge small chunks, power of two in [0x1000, 0x1000000] and at most the chunk size (v6; 0 disables)', '0')
  .option('--fs-align-chunk', 'Align uncompressed data chunks to 4K (v5)', false)
  .addOption(new Option('--backend-aligned-chunk', 'Deprecated alias of --fs-align-chunk').hideHelp())
  .option('--prefetch-dir <dir>', 'Prefetch directory for the Nydus image')
  .option('--prefetch-patterns', 'Read prefetch patterns (one path a line) from stdin', false)
  .option('--platform <list>', 'Comma separated platforms to convert (os/arch[/variant])', `linux/${defaultPlatform().architecture}`)
  .option('--all-platforms', 'Convert every platform of the source (wins over --platform)', false)
  .option('--oci', 'Convert Docker media types to OCI media types', false)
  .option('--docker-v2-format', 'Deprecated: keep Docker media types (cancels --oci)', false)
  .option('--with-referrer', 'Set the target manifest\'s subject to the source manifest', false)
  .option('--work-dir <dir>', 'Working directory for the conversion (deleted afterwards if created)', './tmp')
  .option('--nydus-image <path>', 'Accepted for compatibility: the builder runs in-process', 'nydus-image')
  .option('--output-json <file>', 'Write conversion metrics as JSON, also after a failure')
  .option('--push-retry-count <n>', 'Retries of a failed push', '3')
  .option('--push-retry-delay <d>', 'Delay between push retries (e.g. 5s, 500ms)', '5s')
  .option('--merge-platform', 'Generate an OCI index holding both the (rewritten) OCI and the Nydus manifests', false)
  .addOption(new Option('--multi-platform', 'Alias of --merge-platform').hideHelp())
  .option('--oci-ref', '(not supported) zran conversion')
  .option('--reverse', '(not supported) Nydus to OCI')
  .option('--backend-type <type>', '(not supported) external blob backend')
  .option('--backend-config <json>', '(not supported)')
  .option('--backend-config-file <file>', '(not supported)')
  .option('--build-cache <ref>', '(not supported) build cache image')
  .option('--build-cache-tag <tag>', '(not supported)')
  .option('--chunk-dict <ref>', '(not supported) chunk dictionary')
  .action(async (o) => {
    unsupported(o, ['ociRef', 'reverse', 'backendType', 'backendConfig', 'backendConfigFile', 'buildCache', 'buildCacheTag', 'chunkDict']);
    if (!o.source) throw einval('--source is required');
    if (o.target && o.targetSuffix) throw einval('--target and --target-suffix conflict');
    if (!o.target && !o.targetSuffix) throw einval('one of --target or --target-suffix is required');
    if (o.prefetchDir && o.prefetchPatterns) throw einval('--prefetch-dir and --prefetch-patterns conflict');
    if (o.sourceArchive && !fs.existsSync(o.sourceArchive)) throw einval(`--source-archive ${o.sourceArchive} does not exist`);
    if (o.targetArchive && !fs.existsSync(path.dirname(path.resolve(o.targetArchive)))) throw einval(`the directory of --target-archive ${o.targetArchive} does not exist`);
    let target: string = o.target;
    if (o.targetSuffix) {
      const s = parseReference(o.source);
      if (s.digest) throw einval('--target-suffix needs a tagged source, not a digest');
      target = formatReference(withTag(s, `${s.tag}${o.targetSuffix}`));
    }
    const chunkSize = parseSize(o.chunkSize ?? o.fsChunkSize);
    validateChunkSize(chunkSize);
    const batchSize = parseSize(o.batchSize);
    checkBatchSize(batchSize, Number(o.fsVersion) as 5 | 6, chunkSize);
    const delay = /^(\d+)(ms|s|m)?$/.exec(o.pushRetryDelay);
    if (!delay) throw einval(`invalid --push-retry-delay '${o.pushRetryDelay}'`);
    const createdWorkDir = !fs.existsSync(o.workDir);
    const metrics = {} as ConvertMetrics;
    const progress = progressSink();
    try {
      const r = await convert({
        source: o.source, target,
        sourceInsecure: o.sourceInsecure, targetInsecure: o.targetInsecure, plainHttp: o.plainHttp,
        fsVersion: Number(o.fsVersion) as 5 | 6,
        compressor: parseCompressor(o.compressor),
        chunkSize,
        batchSize,
        alignedChunk: o.fsAlignChunk || !!o.backendAlignedChunk,
        prefetchPatterns: o.prefetchPatterns ? readStdinPatterns() : [o.prefetchDir ?? '/'],
        platforms: platformsOf(o),
        oci: o.oci && !o.dockerV2Format,
        withReferrer: o.withReferrer,
        mergePlatform: !!(o.mergePlatform || o.multiPlatform),
        sourceArchive: o.sourceArchive,
        targetArchive: o.targetArchive,
        workDir: o.workDir,
        pushRetries: Number(o.pushRetryCount),
        pushRetryDelayMs: Number(delay[1]) * (delay[2] === 'ms' ? 1 : delay[2] === 'm' ? 60000 : 1000),
        onProgress: progress.on,
        metrics,
      });
      progress.stop();
      process.stdout.write(`converted ${formatReference(parseReference(o.source))} to ${formatReference(r.target)} (${r.descriptor.digest})\n`);
    } finally {
      progress.stop();
      if (o.outputJson) fs.writeFileSync(o.outputJson, JSON.stringify(metrics, null, 2));
      if (createdWorkDir) fs.rmSync(o.workDir, { recursive: true, force: true });
    }
  });

program.command('check')
  .description('Check a Nydus image (manifest, bootstrap, and with --source its filesystem)')
  .addOption(new Option('--target <ref>', 'Target (Nydus) image reference').env('TARGET'))
  .addOption(new Option('--source <ref>', 'Source image reference (enables the filesystem comparison)').env('SOURCE'))
  .option('--source-insecure', 'Skip verifying the source registry\'s TLS certificate', false)
  .option('--target-insecure', 'Skip verifying the target registry\'s TLS certificate', false)
  .option('--plain-http', 'Use plain HTTP for every registry', false)
  .option('--platform <platform>', 'Platform to check (only the arch is used)', `linux/${defaultPlatform().architecture}`)
  .option('--multi-platform', 'Accepted for compatibility (unused, as upstream)', false)
  .option('--work-dir <dir>', 'Working directory (removed at start)', './output')
  .option('--nydus-image <path>', 'Accepted for compatibility: the builder check runs in-process', 'nydus-image')
  .option('--nydusd <path>', 'nydusd binary used to mount the image (default: this package\'s)')
  .option('--source-backend-type <t>', '(not supported)')
  .option('--target-backend-type <t>', '(not supported)')
  .action(async (o) => {
    unsupported(o, ['sourceBackendType', 'targetBackendType']);
    if (!o.target) throw einval('--target is required');
    const p = parsePlatform(o.platform);
    if (p.architecture !== 'amd64' && p.architecture !== 'arm64') throw einval(`unsupported platform arch ${p.architecture} (amd64 or arm64)`);
    const r = await check({
      target: o.target, source: o.source, targetInsecure: o.targetInsecure, sourceInsecure: o.sourceInsecure,
      plainHttp: o.plainHttp, platform: p, workDir: o.workDir, nydusd: o.nydusd,
    });
    process.stdout.write(`check passed: ${r.rules.join(', ')}\n`);
  });

program.command('copy')
  .description('Copy an image between registries; file://<path> on either side loads from / saves to an OCI-layout tar')
  .addOption(new Option('--source <ref>', 'Source image reference').env('SOURCE'))
  .addOption(new Option('--target <ref>', 'Target image reference').env('TARGET'))
  .option('--source-insecure', 'Skip verifying the source registry\'s TLS certificate', false)
  .option('--target-insecure', 'Skip verifying the target registry\'s TLS certificate', false)
  .option('--plain-http', 'Use plain HTTP for every registry', false)
  .option('--platform <list>', 'Comma separated platforms to copy', `linux/${defaultPlatform().architecture}`)
  .option('--all-platforms', 'Copy every platform', false)
  .option('--push-chunk-size <size>', 'Chunked upload of this many bytes per request (0: monolithic)', '0')
  .option('--work-dir <dir>', 'Working directory for archives (deleted afterwards if created)', './tmp')
  .option('--source-backend-type <t>', '(not supported)')
  .action(async (o) => {
    unsupported(o, ['sourceBackendType']);
    if (!o.source || !o.target) throw einval('--source and --target are required');
    const chunk = /^(\d+)\s*(MB|KB|B)?$/i.exec(o.pushChunkSize);
    if (!chunk) throw einval(`invalid --push-chunk-size '${o.pushChunkSize}'`);
    const mult = !chunk[2] || /^b$/i.test(chunk[2]) ? 1 : /^kb$/i.test(chunk[2]) ? 1000 : 1000_000;
    const createdWorkDir = !fs.existsSync(o.workDir);
    try {
      const d = await copy({
        source: o.source, target: o.target, sourceInsecure: o.sourceInsecure, targetInsecure: o.targetInsecure,
        plainHttp: o.plainHttp, platforms: platformsOf(o), pushChunkSize: Number(chunk[1]) * mult, workDir: o.workDir,
      });
      process.stdout.write(`copied ${o.source} to ${o.target} (${d.digest})\n`);
    } finally {
      if (createdWorkDir) fs.rmSync(o.workDir, { recursive: true, force: true });
    }
  });

export async function main(argv: string[]): Promise<void> {
  try {
    await program.parseAsync(argv);
  } catch (err) {
    const msg = err instanceof CheckError ? `check failed: ${err.message}` : err instanceof ErrnoError ? `${err.message} (${err.code})` : err instanceof Error ? err.message : String(err);
    log.debug({ err }, 'nydusify failed');
    process.stderr.write(`error: ${msg}\n`);
    if (process.env.NYDUS_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    process.exitCode = 1;
  }
}

if (require.main === module) void main(process.argv);
