/**
 * `nydusd`: the Nydus daemon CLI (rafs-spec §6, kata-contract §1).
 * FUSE mode (`nydusd [fuse] --mountpoint M --bootstrap B --config C …`):
 * config → bootstrap → blob device → RafsFs in the Vfs at the virtual
 * mountpoint → FuseServer → /dev/fuse session; SIGTERM/SIGINT unmount and
 * exit, an external `umount` ends the session and the process.
 * virtio-fs mode (`nydusd virtiofs --sock S [--bootstrap B] [--shared-dir D]`):
 * the same Vfs and FuseServer behind a vhost-user-fs backend for QEMU.
 */
// first: before the other modules load (see young-generation.ts)
import './young-generation';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { Command, Option } from 'commander';
import { initDigest } from '../common/digest';
import { einval, ErrnoError } from '../common/errno';
import { LOG_LEVELS, log, setupLog, type LogLevel } from '../common/log';
import { raiseNofileLimit } from '../common/rlimit';
import { trimMalloc, tuneMalloc } from '../common/libc';
import { currentEpoch } from '../common/read-epoch';
import { chunkArena, enableChunkArena } from '../storage/blob/chunk-arena';
import { localfsDirConfig, readNydusdConfigFile, type ConfigV2, applyImagePullAuth } from '../common/config';
import { Vfs } from '../virtiofs/vfs/vfs';
import { FuseServer } from '../virtiofs/fuse/server';
import { FUSE_ATOMIC_O_TRUNC } from '../virtiofs/fuse/abi';
import { FuseDevSession } from '../virtiofs/transport/fusedev';
import { readPrefetchList } from '../service/prefetch-list';
import type { CachePolicy } from '../virtiofs/passthrough/passthrough-fs';
import { VERSION } from '../service/version';
import { DaemonService, createPassthroughInstance, createRafsInstance } from '../service/service';
import type { ApiServer } from '../api/server';

export { VERSION };

/*
 * Modules a daemon may not need are loaded when it does (a FUSE daemon with
 * neither --apisock nor a passthrough starts with less code, a smaller heap
 * and RSS): the API server (node:http), the virtio-fs / vhost-user stack,
 * the blocking-call pool (piscina; passthrough only, so its close at exit
 * only matters once something loaded it).
 */

/** API server up at once (state INIT until the daemon is serving). */
async function startApi(apisock: string | undefined, svc: DaemonService): Promise<ApiServer | undefined> {
  if (!apisock) return undefined;
  const { startApiServer } = require('../api/server') as typeof import('../api/server');
  return startApiServer(svc, apisock);
}

/** Wait for the blocking-call pool's pending closes, when anything used it. */
async function closeBlockingPoolIfLoaded(): Promise<void> {
  const id = require.resolve('../common/blocking');
  if (!require.cache[id]) return;
  await (require(id) as typeof import('../common/blocking')).closeBlockingPool();
}

interface FuseOpts {
  apisock?: string;
  rlimitNofile?: string;
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
    .addOption(new Option('--rlimit-nofile <n>', 'Set the open file limit (RLIMIT_NOFILE); 0 leaves it unchanged').default('1000000'));
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

function loadConfig(o: { config?: string; localfsDir?: string }): ConfigV2 {
  if (o.config && o.localfsDir) throw einval('--localfs-dir conflicts with --config');
  if (o.localfsDir) return localfsDirConfig(o.localfsDir);
  // IMAGE_PULL_AUTH overrides backend.registry.auth of a --config file (not of API mounts), as upstream
  if (o.config) return applyImagePullAuth(readNydusdConfigFile(o.config));
  throw einval('either --config or --localfs-dir is required with --bootstrap');
}

/**
 * `--rlimit-nofile` as upstream: raise RLIMIT_NOFILE (the passthrough holds an
 * fd per inode the guest keeps, and sizes its fd budget from this limit).
 */
function applyRlimitNofile(v: string | undefined): void {
  const n = Number(v ?? '1000000');
  if (!Number.isInteger(n) || n < 0) throw einval(`invalid --rlimit-nofile '${v}'`);
  if (n === 0) return;
  const got = raiseNofileLimit(n);
  if (got.soft < n) log.warn({ wanted: n, soft: got.soft, hard: got.hard }, 'open file limit raised only partly');
  else log.info({ soft: got.soft, hard: got.hard }, 'open file limit set');
}

async function runFuse(o: FuseOpts & { fuseThreads?: string }): Promise<void> {
  setupLog(o.logLevel, o.logFile);
  applyRlimitNofile(o.rlimitNofile);
  await initDigest();
  if (!o.mountpoint) throw einval('--mountpoint is required');
  if (o.bootstrap && o.sharedDir) throw einval('--bootstrap conflicts with --shared-dir');
  if (!o.bootstrap && !o.sharedDir && !o.apisock) throw einval('nothing to serve: give --bootstrap, --shared-dir or --apisock (mounts through the API)');
  if (o.prefetchFiles && !o.bootstrap) throw einval('--prefetch-files requires --bootstrap');
  if ((o.id && !o.supervisor) || (!o.id && o.supervisor)) throw einval('--id and --supervisor must be given together');
  const threads = Number(o.fuseThreads ?? o.threadNum);
  if (!Number.isInteger(threads) || threads < 1 || threads > 1024) throw einval(`invalid --thread-num '${o.fuseThreads ?? o.threadNum}' (1..1024)`);

  // a RAFS daemon skips OPEN and RELEASE as upstream's does (zero-message open, Vfs noOpen): its
  // API may mount more RAFS images, not a passthrough; --shared-dir and API-only daemons keep OPEN
  const vfs = new Vfs({ noOpen: !!o.bootstrap });
  const svc = new DaemonService(vfs, { id: o.id, supervisor: o.supervisor });
  const api = await startApi(o.apisock, svc);
  // one filesystem from the command line, or none (a shared daemon that gets mounts through the API)
  if (o.bootstrap) svc.attach(await createRafsInstance(o.virtualMountpoint, o.bootstrap, loadConfig(o), readPrefetchList(o.prefetchFiles)));
  else if (o.sharedDir) svc.attach(await createPassthroughInstance(o.virtualMountpoint, o.sharedDir));
  svc.state.fire('Mount');
  // a RAFS daemon's entries come with their attributes in every READDIR (not only a listing's first):
  // a walk that then opens or stats the files sends no LOOKUP for them (~0.87 a file before)
  const server = new FuseServer(vfs, { readdirplus: o.bootstrap ? 'always' : true });
  const session = new FuseDevSession(server, { mountpoint: o.mountpoint, readOnly: !o.writable, threads });
  session.mount();
  shrinkWhenIdle();
  svc.state.fire('Start');
  log.info({ bootstrap: o.bootstrap, mountpoint: o.mountpoint, threads }, 'nydusd started');

  const stop = (sig: string) => {
    log.info({ signal: sig }, 'stopping');
    session.umount();
    // should the kernel keep the session alive (no fusectl to abort it), don't hang
    setTimeout(() => { log.warn('fuse session did not end after umount; exiting'); process.exit(0); }, 5000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  await session.run();
  svc.state.shutdown();
  await api?.close();
  await svc.closeAll();
  await closeBlockingPoolIfLoaded();
  log.info({ chunkArena: chunkArena()?.stats() }, 'nydusd exited');
}

interface VirtiofsOpts extends Omit<FuseOpts, 'mountpoint' | 'threadNum' | 'writable' | 'failoverPolicy'> {
  sock: string;
  hybridMode?: boolean;
  sharedMountpoint?: string;
  cachePolicy: CachePolicy;
  populateGuestMemory: boolean;
}

function addVirtiofsOptions(cmd: Command): Command {
  return addCommonOptions(cmd)
    .addOption(new Option('--sock <path>', 'vhost-user socket path QEMU connects to'))
    .addOption(new Option('--hybrid-mode', 'Accepted for runtime-rs compatibility (upstream declares it inverted; no effect)'))
    .addOption(new Option('-B, --bootstrap <path>', 'RAFS filesystem metadata (bootstrap) to mount'))
    .addOption(new Option('-D, --localfs-dir <dir>', 'Directory holding blobs; synthesises a localfs + blobcache config'))
    .addOption(new Option('-s, --shared-dir <dir>', 'Directory to share with a passthrough filesystem'))
    .addOption(new Option('--prefetch-files <path>', 'File listing paths to prefetch, one per line'))
    .addOption(new Option('-m, --virtual-mountpoint <path>', 'Mountpoint of the RAFS (or shared dir) within the virtiofs device').default('/'))
    .addOption(new Option('--shared-mountpoint <path>', '(extra) where --shared-dir is mounted when --bootstrap is also given'))
    .addOption(new Option('--populate-guest-memory', '(extra) pre-fault guest memory mappings (faster I/O; commits all guest RAM on the host)').default(false))
    .addOption(new Option('--cache-policy <policy>', '(extra) cache policy as virtiofsd cache=: none = FOPEN_DIRECT_IO and no attr caching on the passthrough, direct I/O on RAFS').choices(['none', 'auto', 'always']).default('auto'))
    .allowUnknownOption()
    .allowExcessArguments();
}

async function runVirtiofs(o: VirtiofsOpts, extra: string[]): Promise<void> {
  setupLog(o.logLevel, o.logFile);
  applyRlimitNofile(o.rlimitNofile);
  await initDigest();
  if (!o.sock) throw einval('--sock is required');
  // virtiofsd-style extras (e.g. `-o cache=none`, `--thread-pool-size=1`) are accepted with a warning
  if (extra.length) log.warn({ args: extra }, 'ignoring unsupported virtiofsd-style arguments');
  const cacheOpt = extra.join(' ').match(/cache=(none|auto|always)/);
  const cachePolicy = (cacheOpt?.[1] as CachePolicy | undefined) ?? o.cachePolicy;
  if (o.prefetchFiles && !o.bootstrap) throw einval('--prefetch-files requires --bootstrap');
  if ((o.id && !o.supervisor) || (!o.id && o.supervisor)) throw einval('--id and --supervisor must be given together');
  const vfs = new Vfs();
  const svc = new DaemonService(vfs, { id: o.id, supervisor: o.supervisor, cachePolicy });
  const sharedAt = o.sharedDir ? (o.bootstrap ? o.sharedMountpoint : o.sharedMountpoint ?? o.virtualMountpoint) : undefined;
  if (o.sharedDir && !sharedAt) throw einval('--shared-dir with --bootstrap needs --shared-mountpoint (they cannot share one mountpoint)');
  const cfg = o.bootstrap ? loadConfig(o) : undefined;
  const api = await startApi(o.apisock, svc);
  if (o.bootstrap && cfg) svc.attach(await createRafsInstance(o.virtualMountpoint, o.bootstrap, cfg, readPrefetchList(o.prefetchFiles), { directIo: cachePolicy === 'none' }));
  if (o.sharedDir && sharedAt) svc.attach(await createPassthroughInstance(sharedAt, o.sharedDir, cachePolicy));
  svc.state.fire('Mount');
  // ATOMIC_O_TRUNC: the passthrough handles O_TRUNC in OPEN
  const server = new FuseServer(vfs, { readdirplus: true, extraFlags: FUSE_ATOMIC_O_TRUNC });
  (require('../vhost-user/sys/host') as typeof import('../vhost-user/sys/host')).setPopulateMappings(o.populateGuestMemory);
  const { VirtioFsDaemon } = require('../virtiofs/transport/virtio-fs-device') as typeof import('../virtiofs/transport/virtio-fs-device');
  const daemon = new VirtioFsDaemon(server, { socketPath: o.sock });
  await daemon.start();
  shrinkWhenIdle();
  // the vhost-user socket listens now: only then RUNNING (kata-contract §0 point 2)
  svc.state.fire('Start');
  log.info({ sock: o.sock, apisock: o.apisock, bootstrap: o.bootstrap, sharedDir: o.sharedDir }, 'nydusd virtiofs started');
  await new Promise<void>((resolve) => {
    const stop = (sig: string) => { log.info({ signal: sig }, 'stopping'); resolve(); };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  svc.state.shutdown();
  await api?.close();
  await daemon.stop();
  await svc.closeAll();
  await closeBlockingPoolIfLoaded();
  log.info({ chunkArena: chunkArena()?.stats() }, 'nydusd exited');
  process.exit(0);
}

/** Buffers up to this size from the malloc arenas (glibc's largest mmap threshold, 32 MiB). */
const MALLOC_MMAP_MAX = 32 << 20;
/** Freed heap-top memory kept for the next buffers (about a readahead window). */
const MALLOC_TRIM = 16 << 20;
/**
 * malloc arenas: one, shared by every thread. The JavaScript (and nearly
 * all allocation) runs on the main thread; the other threads (libuv's pool,
 * V8's GC helpers, the decode workers) each took an arena of their own,
 * ~13 MB resident between them after a 100,000-file read, for no speed.
 */
const MALLOC_ARENAS = 1;
/** A daemon that got no request for this long gives its free malloc pages back (once per quiet spell). */
const IDLE_SHRINK_MS = 1000;
/** ... with a full collection first when the V8 heap grew this much since the last one. */
const IDLE_GC_GROWTH = 16 << 20;

/** V8's full collection (the flag puts `gc` into contexts created meanwhile: one, for this). */
const fullGc: () => void = (() => {
  try {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    v8.setFlagsFromString('--no-expose-gc');
    return typeof gc === 'function' ? gc : () => undefined;
  } catch {
    return () => undefined;
  }
})();

/** V8 heap in use after the last full collection of `shrink` (bytes). */
let heapAfterGc = 0;

/**
 * Collect (when the V8 heap grew by IDLE_GC_GROWTH since the last time, or
 * `force`) and give the free malloc pages back. A forced full collection
 * after every quiet spell cost a guest streaming cached data in bursts a
 * few seconds apart ~30 ms of CPU per burst, more than the collection
 * itself (the first burst after it ran slower); the trim alone costs little.
 */
function shrink(force = false): void {
  if (force || v8.getHeapStatistics().used_heap_size - heapAfterGc >= IDLE_GC_GROWTH) {
    fullGc();
    heapAfterGc = v8.getHeapStatistics().used_heap_size;
  }
  trimMalloc();
}

/**
 * Collect the garbage of start-up and give the free pages of the malloc
 * heap back (~4 MB: what loading the modules and the bootstrap freed, in
 * holes the trim threshold never returns), once the daemon serves; then
 * again whenever no request came for IDLE_SHRINK_MS (once per quiet spell:
 * a burst of reads leaves the same holes, and V8 would only collect its
 * garbage after 8 s idle), the collection only when the heap grew (shrink).
 */
function shrinkWhenIdle(): void {
  if (process.env.NYDUS_IDLE_SHRINK === '0') return;
  setTimeout(() => shrink(true), 100).unref();
  let seen = currentEpoch();
  let shrunk = false;
  setInterval(() => {
    const now = currentEpoch();
    if (now !== seen) { seen = now; shrunk = false; return; }
    if (!shrunk) { shrunk = true; shrink(); }
  }, IDLE_SHRINK_MS).unref();
}

/**
 * Recycled memory for decoded chunks (storage/blob/chunk-arena.ts), in MiB:
 * NYDUS_CHUNK_ARENA, 0 = fresh buffers (benchmarks). Not scaled down with
 * the 4 MiB memory LRU of blob-cached images: capped at 32 MiB, a cold
 * sequential read of a 256 MiB file took its 1 MiB chunks in fresh buffers
 * and ended 60-90 MB larger (and slower) than with 128.
 */
function arenaBytes(): number {
  const env = process.env.NYDUS_CHUNK_ARENA;
  const mib = env !== undefined && env !== '' ? Number(env) : DEFAULT_ARENA_MIB;
  return Number.isFinite(mib) && mib > 0 ? Math.min(mib, 4096) * (1 << 20) : 0;
}
const DEFAULT_ARENA_MIB = 128;

export function main(argv: string[]): void {
  // chunk buffers from the malloc arenas, not one mmap each (see tuneMalloc)
  tuneMalloc(MALLOC_MMAP_MAX, MALLOC_TRIM, MALLOC_ARENAS);
  // both transports hold a read-epoch token per request: decoded chunks may live in recycled memory
  enableChunkArena(arenaBytes());
  const program = addFuseOptions(new Command('nydusd'))
    .description('Nydus image service daemon (FUSE mode without a subcommand)')
    .version(VERSION.package_ver)
    .enablePositionalOptions()
    .action((o) => runFuse(o).catch(fatal));
  addFuseOptions(program.command('fuse').description('Run the Nydus daemon as a FUSE server'))
    .action((o) => runFuse(o).catch(fatal));
  addVirtiofsOptions(program.command('virtiofs').description('Run the Nydus daemon as a vhost-user-fs backend (virtio-fs)'))
    .action((o, cmd: Command) => runVirtiofs(o, cmd.args).catch(fatal));
  program.parse(argv);
}

function fatal(err: unknown): void {
  const msg = err instanceof ErrnoError ? `${err.message} (${err.code})` : err instanceof Error ? err.message : String(err);
  log.error({ err: msg }, 'nydusd failed');
  process.stderr.write(`error: ${msg}\n`);
  process.exitCode = 1;
  setImmediate(() => process.exit(1));
}
