/**
 * `nydusd`: the Nydus daemon. This module wires the FUSE mode
 * (`nydusd [fuse] --mountpoint M --bootstrap B --config C …`, rafs-spec §6):
 * config → bootstrap → blob device → RafsFs mounted in the Vfs at the
 * virtual mountpoint → FuseServer → /dev/fuse session. SIGTERM/SIGINT
 * unmount and exit; an external `umount` ends the session and the process.
 */
import * as fs from 'node:fs';
import { Command, Option } from 'commander';
import { initDigest } from '../../common/digest';
import { einval, ErrnoError } from '../../common/errno';
import { LOG_LEVELS, log, setupLog, type LogLevel } from '../../common/log';
import { localfsDirConfig, readNydusdConfigFile, type ConfigV2 } from '../../common/config';
import { createBlobDevice } from '../../storage/factory';
import { loadBootstrapFile } from '../../storage/image';
import { RafsFs } from '../../rafs/fs';
import { Vfs } from '../vfs/vfs';
import { FuseServer } from '../fuse/server';
import { FuseDevSession } from '../transport/fusedev';
import { prefetchChunks } from './prefetch';

export const VERSION = {
  package_ver: 'v2.4.4-ts',
  git_commit: 'unknown',
  build_time: 'unknown',
  profile: 'release',
  rustc: 'node ' + process.version,
};

interface FuseOpts {
  apisock?: string;
  config?: string;
  logLevel: LogLevel;
  logFile?: string;
  mountpoint: string;
  bootstrap?: string;
  localfsDir?: string;
  sharedDir?: string;
  prefetchFiles?: string;
  virtualMountpoint: string;
  threadNum: string;
  writable: boolean;
  failoverPolicy: string;
  id?: string;
  supervisor?: string;
  upgrade?: boolean;
}

function addCommonOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('-A, --apisock <path>', 'Path to the Nydus daemon administration API socket'))
    .addOption(new Option('-C, --config <path>', 'Configuration file (v1/v2 JSON or v2 TOML)'))
    .addOption(new Option('--id <id>', 'Service instance identifier (requires --supervisor)'))
    .addOption(new Option('--supervisor <path>', 'Supervisor API socket (requires --id)'))
    .addOption(new Option('--upgrade', 'Start in upgrade mode').default(false))
    .addOption(new Option('-l, --log-level <level>', 'Log level').choices(LOG_LEVELS).default('info'))
    .addOption(new Option('-L, --log-file <path>', 'Log file path (stderr by default)'))
    .addOption(new Option('--log-rotation-size <mb>', 'Log rotation size in MB (0 = off; accepted, unused)'))
    .addOption(new Option('--rlimit-nofile <n>', 'Open file limit (accepted, unused)'));
}

function addFuseOptions(cmd: Command): Command {
  return addCommonOptions(cmd)
    .addOption(new Option('-M, --mountpoint <path>', 'Mountpoint within the host filesystem to mount the FUSE filesystem'))
    .addOption(new Option('--failover-policy <policy>', 'Failover policy').choices(['none', 'resend', 'flush']).default('resend'))
    .addOption(new Option('--thread-num <n>', 'Number of worker threads to serve FUSE requests').default('4'))
    .addOption(new Option('--fuse-threads <n>', 'Alias of --thread-num'))
    .addOption(new Option('--writable', 'Mount the FUSE filesystem in read-write mode').default(false))
    .addOption(new Option('-B, --bootstrap <path>', 'RAFS filesystem metadata (bootstrap) to mount'))
    .addOption(new Option('-D, --localfs-dir <dir>', 'Directory holding blobs; synthesises a localfs + blobcache config'))
    .addOption(new Option('-s, --shared-dir <dir>', 'Directory to share with a passthrough filesystem'))
    .addOption(new Option('--prefetch-files <path>', 'File listing paths to prefetch, one per line'))
    .addOption(new Option('-m, --virtual-mountpoint <path>', 'Mountpoint within the FUSE/virtiofs device').default('/'));
}

function loadConfig(o: FuseOpts): ConfigV2 {
  if (o.config && o.localfsDir) throw einval('--localfs-dir conflicts with --config');
  if (o.localfsDir) return localfsDirConfig(o.localfsDir);
  if (o.config) return readNydusdConfigFile(o.config);
  throw einval('either --config or --localfs-dir is required with --bootstrap');
}

function readPrefetchList(file: string | undefined): string[] | undefined {
  if (!file) return undefined;
  return fs.readFileSync(file, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
}

async function runFuse(o: FuseOpts & { fuseThreads?: string }): Promise<void> {
  setupLog(o.logLevel, o.logFile);
  await initDigest();
  if (!o.mountpoint) throw einval('--mountpoint is required');
  if (o.bootstrap && o.sharedDir) throw einval('--bootstrap conflicts with --shared-dir');
  if (o.sharedDir) throw new ErrnoError('ENOSYS', '--shared-dir (passthrough) is not available in FUSE mode yet');
  if (!o.bootstrap) throw einval('--bootstrap is required');
  if (o.prefetchFiles && !o.bootstrap) throw einval('--prefetch-files requires --bootstrap');
  if ((o.id && !o.supervisor) || (!o.id && o.supervisor)) throw einval('--id and --supervisor must be given together');
  if (o.apisock) log.warn({ apisock: o.apisock }, 'the HTTP API is not implemented in this version; --apisock ignored');
  const threads = Number(o.fuseThreads ?? o.threadNum);
  if (!Number.isInteger(threads) || threads < 1 || threads > 1024) throw einval(`invalid --thread-num '${o.fuseThreads ?? o.threadNum}' (1..1024)`);

  const cfg = loadConfig(o);
  const { boot, sb, inlineBlob } = loadBootstrapFile(o.bootstrap);
  const device = createBlobDevice(cfg, sb.blobs, { blobFile: inlineBlob });
  const rafs = new RafsFs(sb, device, { bootstrap: boot, enableXattr: cfg.rafs.enable_xattr });
  const vfs = new Vfs();
  vfs.mount(o.virtualMountpoint, rafs);
  const server = new FuseServer(vfs, { readdirplus: true });
  const session = new FuseDevSession(server, { mountpoint: o.mountpoint, readOnly: !o.writable, threads });
  session.mount();
  log.info({ bootstrap: o.bootstrap, mountpoint: o.mountpoint, version: sb.meta.version, threads }, 'nydusd started');

  const files = readPrefetchList(o.prefetchFiles);
  const pf = cfg.rafs.prefetch;
  if (files || pf.enable) {
    const chunks = prefetchChunks(sb, { files, all: pf.enable && pf.prefetch_all });
    if (chunks.length && device.prefetch) { log.info({ chunks: chunks.length }, 'prefetch started'); device.prefetch(chunks); }
  }

  const stop = (sig: string) => {
    log.info({ signal: sig }, 'stopping');
    session.umount();
    // should the kernel keep the session alive (no fusectl to abort it), don't hang
    setTimeout(() => { log.warn('fuse session did not end after umount; exiting'); process.exit(0); }, 5000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  await session.run();
  await device.close();
  log.info('nydusd exited');
}

export function main(argv: string[]): void {
  const program = addFuseOptions(new Command('nydusd'))
    .description('Nydus image service daemon (FUSE mode without a subcommand)')
    .version(VERSION.package_ver)
    .enablePositionalOptions()
    .action((o) => runFuse(o).catch(fatal));
  addFuseOptions(program.command('fuse').description('Run the Nydus daemon as a FUSE server'))
    .action((o) => runFuse(o).catch(fatal));
  program.parse(argv);
}

function fatal(err: unknown): void {
  const msg = err instanceof ErrnoError ? `${err.message} (${err.code})` : err instanceof Error ? err.message : String(err);
  log.error({ err: msg }, 'nydusd failed');
  process.stderr.write(`error: ${msg}\n`);
  process.exitCode = 1;
  setImmediate(() => process.exit(1));
}
