/**
 * `containerd-nydus-grpc`: the Nydus containerd snapshotter (proxy plugin)
 * — flags and config as upstream nydus-snapshotter (kata-contract.md §5.1,
 * nydusify-snapshotter.md §3): `--config` (TOML `version = 1`), `--root`,
 * `--address`, `--nydusd-config` (alias `--config-path`), `--nydusd`,
 * `--nydus-image`, `--nydus-overlayfs-path`, `--daemon-mode`, `--fs-driver`,
 * `--log-level`, `--log-to-stdout`, `--version`; flags override the file.
 *
 * Start-up: open `<root>/metadata.db`, recover recorded nydusd daemons
 * (`recover_policy`), serve the Snapshots gRPC service on `--address`, and
 * metrics on `[metrics] address`, with the nydusd collector polling every
 * daemon each `collect_interval` / `hung_io_interval`. SIGTERM/SIGINT stop serving and exit 0,
 * leaving nydusd running unless `cleanup_on_close`.
 *
 * Difference: logs are pino JSON on stderr with `--log-to-stdout` (stdout
 * stays free) and `<log dir>/nydus-snapshotter.log` otherwise.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { log, setupLog } from '../common/log';
import { VERSION } from '../service/version';
import { loadConfig, type ConfigFlags } from '../snapshotter/config';
import { DaemonManager } from '../snapshotter/daemon';
import { serve } from '../snapshotter/grpc-service';
import { SnapshotterMetrics } from '../snapshotter/metrics';
import { Snapshotter } from '../snapshotter/snapshotter';
import { MetaStore } from '../snapshotter/store';

export function buildProgram(): Command {
  return new Command('containerd-nydus-grpc')
    .description('containerd snapshotter (proxy plugin) for Nydus/RAFS images, with overlayfs fallback for OCI images')
    .addOption(new Option('--config <path>', 'snapshotter configuration file (TOML, version = 1)'))
    .addOption(new Option('--root <dir>', 'state directory (default /var/lib/containerd/io.containerd.snapshotter.v1.nydus)'))
    .addOption(new Option('--address <path>', 'gRPC unix socket (default /run/containerd-nydus/containerd-nydus-grpc.sock)'))
    .addOption(new Option('--nydusd-config <path>', 'nydusd configuration template (default /etc/nydus/nydusd-config.json)'))
    .addOption(new Option('--config-path <path>', 'alias of --nydusd-config'))
    .addOption(new Option('--nydusd <path>', 'nydusd binary (default: this package\'s bin/nydusd)'))
    .addOption(new Option('--nydus-image <path>', 'nydus-image binary'))
    .addOption(new Option('--nydus-overlayfs-path <path>', 'nydus-overlayfs helper; the Kata mount type becomes fuse.<path>'))
    .addOption(new Option('--daemon-mode <mode>', 'nydusd per image (dedicated/multiple), shared, or none').choices(['dedicated', 'multiple', 'shared', 'none']))
    .addOption(new Option('--fs-driver <driver>', 'how RAFS is served on the host (only fusedev)').choices(['fusedev', 'fscache', 'blockdev', 'nodev', 'proxy']))
    .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'warning', 'error']))
    .addOption(new Option('--log-to-stdout', 'log to the console instead of <log dir>/nydus-snapshotter.log'))
    .version(`containerd-nydus-grpc (nydus-ts) ${VERSION.package_ver}`, '--version')
    .showHelpAfterError();
}

/** Entry point for bin/containerd-nydus-grpc. */
export function main(argv: string[] = process.argv): void {
  const program = buildProgram().exitOverride();
  try {
    program.parse(argv);
  } catch (e) {
    if (e instanceof CommanderError) process.exit(e.exitCode);
    throw e;
  }
  const o = program.opts<Record<string, string | boolean | undefined>>();
  const flags: ConfigFlags = {
    config: o.config as string | undefined,
    root: o.root as string | undefined,
    address: o.address as string | undefined,
    nydusdConfig: (o.nydusdConfig ?? o.configPath) as string | undefined,
    nydusd: o.nydusd as string | undefined,
    nydusImage: o.nydusImage as string | undefined,
    nydusOverlayfsPath: o.nydusOverlayfsPath as string | undefined,
    daemonMode: o.daemonMode as string | undefined,
    fsDriver: o.fsDriver as string | undefined,
    logLevel: o.logLevel as string | undefined,
    logToStdout: o.logToStdout === true ? true : undefined,
  };
  run(flags).catch((e) => {
    process.stderr.write(`containerd-nydus-grpc: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}

async function run(flags: ConfigFlags): Promise<void> {
  const cfg = loadConfig(flags);
  if (cfg.log.logToStdout) setupLog(cfg.log.level);
  else {
    fs.mkdirSync(cfg.log.dir, { recursive: true });
    setupLog(cfg.log.level, path.join(cfg.log.dir, 'nydus-snapshotter.log'));
  }
  fs.mkdirSync(cfg.root, { recursive: true, mode: 0o700 });
  const store = new MetaStore(path.join(cfg.root, 'metadata.db'));
  let metrics: SnapshotterMetrics | undefined;
  const daemons = new DaemonManager(cfg, store, { onEvent: (ev) => metrics?.event(ev) });
  metrics = new SnapshotterMetrics(daemons);
  const sn = new Snapshotter(cfg, store, daemons);
  sn.onOperation = (op, ms) => metrics?.observe(op, ms);
  await daemons.recover();
  const srv = await serve(sn, cfg.address);
  if (cfg.metrics.address) {
    await metrics.listen(cfg.metrics.address);
    metrics.startCollector(daemons, { collectIntervalMs: cfg.metrics.collectIntervalMs, hungIoIntervalMs: cfg.metrics.hungIoIntervalMs });
  }
  log.info({ address: cfg.address, root: cfg.root, daemon_mode: cfg.daemonMode, nydusd: cfg.daemon.nydusdPath }, 'containerd-nydus-grpc serving');
  let stopping = false;
  const stop = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal: sig }, 'shutting down');
    void (async () => {
      await srv.close();
      metrics?.close();
      await sn.close();
      process.exit(0);
    })();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
