/**
 * containerd-nydus-grpc configuration: upstream's TOML (`version = 1`
 * required) with its section and key names (kata-contract.md §5.1), merged
 * with the command-line flags (flags win), defaults filled in and validated.
 *
 * Supported here: `root`, `address`, `daemon_mode` (dedicated/multiple, none;
 * shared: one nydusd, images mounted through its API, see daemon.ts),
 * `cleanup_on_close`, `[daemon]` (`nydusd_path`, `nydusimage_path`,
 * `nydusd_config`, `fs_driver` fusedev, `recover_policy` none/restart,
 * `threads_number`, `log_rotation_size`, `failover_policy`), `[log]` (`level`,
 * `log_to_stdout`, `dir`), `[snapshot]` (`enable_nydus_overlayfs`,
 * `nydus_overlayfs_path`, `sync_remove`, `enable_overlayfs_volatile`;
 * `enable_nydus_overlayfs` is also read from `[experimental]`),
 * `[cache_manager]` (`disable`, `cache_dir`, `gc_period`), `[metrics]`
 * (`address`, `hung_io_interval` default 10s, `collect_interval` default 1m;
 * Go durations such as "10s" / "1m30s", or integer nanoseconds as Go's TOML
 * decoder reads a time.Duration; zero or negative is refused, where upstream's
 * ticker would panic), `[remote] skip_ssl_verify`. Unknown keys are ignored as upstream's decoder
 * does (logged at debug). Refused: fs_driver fscache/blockdev/proxy (not
 * implemented), a root longer than 70 bytes (as upstream).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { SnapshotError } from './errors';

export const DEFAULT_ROOT = '/var/lib/containerd/io.containerd.snapshotter.v1.nydus';
export const DEFAULT_ADDRESS = '/run/containerd-nydus/containerd-nydus-grpc.sock';
export const DEFAULT_NYDUSD_CONFIG = '/etc/nydus/nydusd-config.json';
export const MAX_ROOT_LENGTH = 70;
/** `[metrics] hung_io_interval` / `collect_interval` defaults (upstream internal/constant). */
export const DEFAULT_HUNG_IO_INTERVAL_MS = 10_000;
export const DEFAULT_COLLECT_INTERVAL_MS = 60_000;

export type DaemonMode = 'dedicated' | 'shared' | 'none';
export type RecoverPolicy = 'none' | 'restart' | 'failover';
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';

export interface SnapshotterConfig {
  version: 1;
  root: string;
  address: string;
  daemonMode: DaemonMode;
  cleanupOnClose: boolean;
  daemon: {
    nydusdPath: string;
    nydusImagePath: string;
    nydusdConfig: string;
    fsDriver: 'fusedev';
    recoverPolicy: RecoverPolicy;
    threadsNumber: number;
    logRotationSize: number;
    failoverPolicy: 'none' | 'resend' | 'flush';
  };
  log: { level: LogLevel; logToStdout: boolean; dir: string };
  snapshot: {
    enableNydusOverlayfs: boolean;
    nydusOverlayfsPath: string;
    syncRemove: boolean;
    enableOverlayfsVolatile: boolean;
  };
  cacheManager: { disable: boolean; cacheDir: string; gcPeriod: string };
  metrics: { address: string; hungIoIntervalMs: number; collectIntervalMs: number };
  remote: { skipSslVerify: boolean };
  /** `[experimental]` */
  experimental: { enableIndexDetect: boolean };
}

/** Command-line values (undefined = not given). */
export interface ConfigFlags {
  config?: string;
  root?: string;
  address?: string;
  nydusdConfig?: string;
  nydusd?: string;
  nydusImage?: string;
  nydusOverlayfsPath?: string;
  daemonMode?: string;
  fsDriver?: string;
  logLevel?: string;
  logToStdout?: boolean;
}

/** Our bin/nydusd next to this file's package, or `nydusd` from PATH. */
export function defaultBinary(name: string): string {
  const mine = path.resolve(__dirname, '..', '..', 'bin', name);
  return fs.existsSync(mine) ? mine : name;
}

type Table = Record<string, unknown>;

function bad(msg: string): SnapshotError {
  return new SnapshotError('InvalidArgument', `config: ${msg}`);
}

function section(t: Table, name: string): Table {
  const v = t[name];
  if (v === undefined) return {};
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(`[${name}] must be a table`);
  return v as Table;
}

function str(t: Table, k: string, where: string, dflt: string): string {
  const v = t[k];
  if (v === undefined) return dflt;
  if (typeof v !== 'string') throw bad(`${where}${k} must be a string`);
  return v;
}
function bool(t: Table, k: string, where: string, dflt: boolean): boolean {
  const v = t[k];
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw bad(`${where}${k} must be a boolean`);
  return v;
}
function int(t: Table, k: string, where: string, dflt: number, max: number): number {
  const v = t[k];
  if (v === undefined) return dflt;
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > max) throw bad(`${where}${k} must be an integer in 0..${max}`);
  return n;
}

const DURATION_UNITS: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, 'μs': 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * A Go `time.ParseDuration` string ("1m", "1.5s", "1h2m3s", "0") in
 * milliseconds, or undefined when it is not one.
 */
export function parseGoDuration(v: string): number | undefined {
  let s = v.trim();
  let sign = 1;
  if (s.startsWith('-') || s.startsWith('+')) {
    if (s[0] === '-') sign = -1;
    s = s.slice(1);
  }
  if (s === '0') return 0;
  if (!s) return undefined;
  let ms = 0;
  const re = /^(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/;
  while (s) {
    const m = re.exec(s);
    if (!m) return undefined;
    ms += Number(m[1]) * DURATION_UNITS[m[2]];
    s = s.slice(m[0].length);
  }
  return sign * ms;
}

/** A positive duration key (Go duration string or integer nanoseconds) in milliseconds. */
function duration(t: Table, k: string, where: string, dflt: number): number {
  const v = t[k];
  if (v === undefined) return dflt;
  let ms: number | undefined;
  if (typeof v === 'string') ms = parseGoDuration(v);
  else if (typeof v === 'bigint' || (typeof v === 'number' && Number.isInteger(v))) ms = Number(v) / 1e6;
  if (ms === undefined) throw bad(`${where}${k} must be a duration such as "10s" or "1m"`);
  if (!(ms > 0) || ms > 2 ** 31 - 1) throw bad(`${where}${k} must be positive and at most 24 days`);
  return ms;
}

const LEVELS: LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error'];

function logLevel(v: string): LogLevel {
  const l = v.toLowerCase();
  if (l === 'warning') return 'warn';
  if (l === 'fatal' || l === 'panic') return 'error';
  if (!(LEVELS as string[]).includes(l)) throw bad(`unknown log level ${JSON.stringify(v)}`);
  return l as LogLevel;
}

function daemonMode(v: string): DaemonMode {
  switch (v) {
    case 'dedicated':
    case 'multiple':
    case '':
      return 'dedicated';
    case 'shared':
      return 'shared';
    case 'none':
      return 'none';
    default:
      throw bad(`daemon_mode must be dedicated, multiple, shared or none, got ${JSON.stringify(v)}`);
  }
}

/** Parse the TOML text (or {} when there is no file) and apply the flags. */
export function buildConfig(tomlText: string | undefined, flags: ConfigFlags = {}): SnapshotterConfig {
  let t: Table = {};
  if (tomlText !== undefined) {
    try {
      t = parseToml(tomlText) as Table;
    } catch (e) {
      throw bad(`cannot parse TOML: ${(e as Error).message.split('\n')[0]}`);
    }
    const v = t.version;
    if (v === undefined || Number(v) !== 1) throw bad(`version = 1 is required (got ${v === undefined ? 'none' : String(v)})`);
  }
  const d = section(t, 'daemon');
  const lg = section(t, 'log');
  const sn = section(t, 'snapshot');
  const ex = section(t, 'experimental');
  const cm = section(t, 'cache_manager');
  const me = section(t, 'metrics');
  const re = section(t, 'remote');

  const root = flags.root ?? str(t, 'root', '', DEFAULT_ROOT);
  if (!path.isAbsolute(root)) throw bad(`root must be an absolute path, got ${JSON.stringify(root)}`);
  if (Buffer.byteLength(root) > MAX_ROOT_LENGTH) throw bad(`root ${root} is longer than ${MAX_ROOT_LENGTH} bytes`);
  const address = flags.address ?? str(t, 'address', '', DEFAULT_ADDRESS);
  if (!address) throw bad('address must not be empty');

  const fsDriver = flags.fsDriver ?? str(d, 'fs_driver', '[daemon] ', 'fusedev');
  if (fsDriver !== 'fusedev') throw bad(`fs_driver ${JSON.stringify(fsDriver)} is not implemented (only fusedev)`);
  let recover = str(d, 'recover_policy', '[daemon] ', 'restart');
  if (!['none', 'restart', 'failover'].includes(recover)) throw bad(`[daemon] recover_policy must be none, restart or failover`);
  const failover = str(d, 'failover_policy', '[daemon] ', 'resend');
  if (!['none', 'resend', 'flush'].includes(failover)) throw bad(`[daemon] failover_policy must be none, resend or flush`);

  const cacheDir = str(cm, 'cache_dir', '[cache_manager] ', '') || path.join(root, 'cache');
  return {
    version: 1,
    root,
    address,
    daemonMode: daemonMode(flags.daemonMode ?? str(t, 'daemon_mode', '', 'dedicated')),
    cleanupOnClose: bool(t, 'cleanup_on_close', '', false),
    daemon: {
      nydusdPath: flags.nydusd ?? (str(d, 'nydusd_path', '[daemon] ', '') || defaultBinary('nydusd')),
      nydusImagePath: flags.nydusImage ?? (str(d, 'nydusimage_path', '[daemon] ', '') || defaultBinary('nydus-image')),
      nydusdConfig: flags.nydusdConfig ?? (str(d, 'nydusd_config', '[daemon] ', '') || DEFAULT_NYDUSD_CONFIG),
      fsDriver: 'fusedev',
      recoverPolicy: recover as RecoverPolicy,
      threadsNumber: int(d, 'threads_number', '[daemon] ', 0, 1024),
      logRotationSize: int(d, 'log_rotation_size', '[daemon] ', 100, 1 << 20),
      failoverPolicy: failover as 'none' | 'resend' | 'flush',
    },
    log: {
      level: logLevel(flags.logLevel ?? str(lg, 'level', '[log] ', 'info')),
      logToStdout: flags.logToStdout ?? bool(lg, 'log_to_stdout', '[log] ', false),
      dir: str(lg, 'dir', '[log] ', '') || path.join(root, 'logs'),
    },
    snapshot: {
      enableNydusOverlayfs: bool(sn, 'enable_nydus_overlayfs', '[snapshot] ', bool(ex, 'enable_nydus_overlayfs', '[experimental] ', false)),
      nydusOverlayfsPath: flags.nydusOverlayfsPath ?? str(sn, 'nydus_overlayfs_path', '[snapshot] ', ''),
      syncRemove: bool(sn, 'sync_remove', '[snapshot] ', false),
      enableOverlayfsVolatile: bool(sn, 'enable_overlayfs_volatile', '[snapshot] ', false),
    },
    cacheManager: {
      disable: bool(cm, 'disable', '[cache_manager] ', false),
      cacheDir,
      gcPeriod: str(cm, 'gc_period', '[cache_manager] ', '24h'),
    },
    metrics: {
      address: str(me, 'address', '[metrics] ', ''),
      hungIoIntervalMs: duration(me, 'hung_io_interval', '[metrics] ', DEFAULT_HUNG_IO_INTERVAL_MS),
      collectIntervalMs: duration(me, 'collect_interval', '[metrics] ', DEFAULT_COLLECT_INTERVAL_MS),
    },
    remote: { skipSslVerify: bool(re, 'skip_ssl_verify', '[remote] ', false) },
    experimental: { enableIndexDetect: bool(ex, 'enable_index_detect', '[experimental] ', false) },
  };
}

/** Read `flags.config` (if given) and build the configuration. */
export function loadConfig(flags: ConfigFlags): SnapshotterConfig {
  let text: string | undefined;
  if (flags.config !== undefined) {
    try {
      text = fs.readFileSync(flags.config, 'utf8');
    } catch (e) {
      throw bad(`cannot read ${flags.config}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
  }
  return buildConfig(text, flags);
}
