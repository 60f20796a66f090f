/**
 * nydusctl: command-line client for the nydusd administration API
 * (rafs-spec §8), HTTP/1.1 over the `--apisock` unix socket.
 *
 *   nydusctl --sock API [--json] info | metrics | backend | cache | files |
 *            pattern | inflight | mount | umount | set log-level L | exit
 *
 * Human-readable tables by default; `--json` (alias `-r/--raw`, as upstream)
 * prints the daemon's response body unchanged. Exit status 0 on success, 1 on
 * any error (connection, non-2xx reply, daemon not ready, usage).
 *
 * The HTTP client is src/api/client.ts (also used by containerd-nydus-grpc).
 * The CLI runs in-process through `run(argv, io)` so it can be tested without
 * spawning; `main()` is what bin/nydusctl calls.
 */
import * as fs from 'node:fs';
import { NydusdClient, query, type Json } from '../api/client';
import { Command, CommanderError, Option } from 'commander';
import { FuseOpcode } from '../virtiofs/fuse/abi';

// ---------------------------------------------------------------- I/O plumbing

export interface CtlIo {
  out(s: string): void;
  err(s: string): void;
  /** Aborts `--interval` loops (Ctrl-C in main()). */
  signal?: AbortSignal;
  /** Injected for tests; defaults to a timer that honours `signal`. */
  sleep?(ms: number, signal?: AbortSignal): Promise<void>;
}

/** An error reported as `error: <message>` with exit status 1. */
export class CtlError extends Error {}

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];
const FS_TYPES = ['rafs', 'passthrough_fs', 'passthroughfs', 'passthrough'];

/** FsIoStats fop index order (upstream `StatsFop`). */
export const FOP_NAMES = [
  'getattr', 'readlink', 'open', 'release', 'read', 'statfs', 'getxattr', 'listxattr',
  'opendir', 'lookup', 'readdir', 'readdirplus', 'access', 'forget', 'batch_forget',
] as const;
/** block_count_read / read_count_block_size_dist buckets. */
export const BLOCK_SIZE_BUCKETS = ['<1K', '1K~', '4K~', '16K~', '64K~', '128K~', '512K~', '1M~'];
/** FsIoStats read_latency_dist buckets. */
const READ_LATENCY_BUCKETS = ['<=200us', '<=1ms', '<=20ms', '<=50ms', '<=500ms', '<=1s', '<=2s', '>2s'];

function defaultSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

// ---------------------------------------------------------------- HTTP client

// The client lives in src/api/client.ts (shared with containerd-nydus-grpc).
export { apiRequest, parseJsonExact, replyError } from '../api/client';
export type { ApiReply } from '../api/client';
// ---------------------------------------------------------------- formatting helpers

type JsonObj = { [k: string]: Json };

function obj(v: Json, what: string): JsonObj {
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new CtlError(`unexpected ${what} reply (not a JSON object)`);
  return v;
}
function arr(v: Json | undefined): Json[] {
  return Array.isArray(v) ? v : [];
}
function num(v: Json | undefined): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'string' && /^-?\d+$/.test(v)) return Number(v);
  return 0;
}
function s(v: Json | undefined): string {
  if (v === undefined || v === null) return '-';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}
function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = -1;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return `${n} (${v.toFixed(1)} ${units[u]})`;
}
function pad(str: string, n: number): string {
  return str.length >= n ? str : str + ' '.repeat(n - str.length);
}
/** Left-aligned columns separated by two spaces. */
export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => { widths[i] = Math.max(widths[i] ?? 0, c.length); });
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : pad(c, widths[i]))).join('  ').trimEnd()).join('\n') + '\n';
}
function kv(pairs: [string, string][]): string {
  const w = Math.max(...pairs.map(([k]) => k.length)) + 1;
  return pairs.map(([k, v]) => `${pad(k + ':', w)}  ${v}`).join('\n') + '\n';
}
/** Decode a VFS inode (`fs_index << 56 | ino`). */
function inodeLabel(v: Json | undefined): string {
  if (typeof v !== 'number' && typeof v !== 'string') return s(v ?? null);
  let b: bigint;
  try { b = BigInt(v); } catch { return String(v); }
  const idx = b >> 56n;
  return idx === 0n ? b.toString() : `${b.toString()} (fs ${idx}, ino ${b & ((1n << 56n) - 1n)})`;
}
function opcodeLabel(v: Json | undefined): string {
  const n = num(v);
  const name = (FuseOpcode as unknown as Record<number, string | undefined>)[n];
  return name ? `${name} (${n})` : String(n);
}
function epoch(secs: number, nanos = 0): string {
  if (!secs) return '-';
  return new Date(secs * 1000 + Math.floor(nanos / 1e6)).toISOString();
}

// ---------------------------------------------------------------- renderers

export function renderDaemonInfo(v: Json): string {
  const i = obj(v, 'daemon info');
  const ver = i.version && typeof i.version === 'object' && !Array.isArray(i.version) ? i.version : {};
  let o = kv([
    ['State', s(i.state)],
    ['Version', s(ver.package_ver)],
    ['Git commit', s(ver.git_commit)],
    ['Build time', s(ver.build_time)],
    ['Profile', s(ver.profile)],
    ['Rustc', s(ver.rustc)],
    ['Id', s(i.id)],
    ['Supervisor', s(i.supervisor)],
  ]);
  const bc = i.backend_collection;
  const mounts = bc && typeof bc === 'object' && !Array.isArray(bc) ? Object.entries(bc) : [];
  if (mounts.length === 0) return o + '\nMounts: none\n';
  const rows = [['MOUNTPOINT', 'TYPE', 'BACKEND', 'MOUNTED']];
  for (const [mp, d] of mounts.sort(([a], [b]) => a.localeCompare(b))) {
    const desc = d && typeof d === 'object' && !Array.isArray(d) ? d : {};
    const cfg = desc.config && typeof desc.config === 'object' && !Array.isArray(desc.config) ? desc.config : {};
    const be = cfg.backend && typeof cfg.backend === 'object' && !Array.isArray(cfg.backend) ? cfg.backend : {};
    rows.push([typeof desc.mountpoint === 'string' ? desc.mountpoint : mp, s(desc.backend_type), be.type ? s(be.type) : '-', s(desc.mounted_time)]);
  }
  return o + `\nMounts (${mounts.length}):\n` + table(rows);
}

export function renderFsStats(v: Json): string {
  const m = obj(v, 'metrics');
  const hits = arr(m.fop_hits);
  const errs = arr(m.fop_errors);
  let o = kv([
    ['Filesystem', s(m.id)],
    ['Opens', String(num(m.nr_opens))],
    ['Reads', String(num(hits[4]))],
    ['Read errors', String(num(errs[4]))],
    ['Data read', bytes(num(m.data_read))],
  ]);
  const rows = [['FOP', 'HITS', 'ERRORS']];
  FOP_NAMES.forEach((name, i) => rows.push([name, String(num(hits[i])), String(num(errs[i]))]));
  o += '\n' + table(rows);
  o += '\n' + table([['Block sizes:', ...BLOCK_SIZE_BUCKETS], ['Reads:', ...BLOCK_SIZE_BUCKETS.map((_, i) => String(num(arr(m.block_count_read)[i])))]]);
  o += '\n' + table([['Read latency:', ...READ_LATENCY_BUCKETS], ['Reads:', ...READ_LATENCY_BUCKETS.map((_, i) => String(num(arr(m.read_latency_dist)[i])))]]);
  return o;
}

export function renderBackend(v: Json): string {
  const m = obj(v, 'backend metrics');
  const cnt = arr(m.read_count_block_size_dist);
  const lat = arr(m.read_cumulative_latency_millis_dist);
  const reads = num(m.read_count);
  let o = kv([
    ['Backend type', s(m.backend_type)],
    ['Read count', String(reads)],
    ['Read errors', String(num(m.read_errors))],
    ['Read amount', bytes(num(m.read_amount_total))],
    ['Avg latency', `${reads ? Math.round(num(m.read_cumulative_latency_millis_total) / reads) : 0} ms`],
  ]);
  o += '\n' + table([
    ['Block sizes:', ...BLOCK_SIZE_BUCKETS],
    ['Requests:', ...BLOCK_SIZE_BUCKETS.map((_, i) => String(num(cnt[i])))],
    ['Avg latency (ms):', ...BLOCK_SIZE_BUCKETS.map((_, i) => String(num(cnt[i]) ? Math.round(num(lat[i]) / num(cnt[i])) : 0))],
  ]);
  return o;
}

export function renderBlobcache(v: Json): string {
  const m = obj(v, 'blobcache metrics');
  const begin = num(m.prefetch_begin_time_secs) + num(m.prefetch_begin_time_millis) / 1000;
  const end = num(m.prefetch_end_time_secs) + num(m.prefetch_end_time_millis) / 1000;
  const dur = end > begin ? end - begin : 0;
  const amount = num(m.prefetch_data_amount);
  const reqs = num(m.prefetch_requests_count);
  const files = arr(m.underlying_files).map((f) => s(f));
  return kv([
    ['Store path', s(m.store_path)],
    ['Entries', String(num(m.entries_count))],
    ['Total reads', String(num(m.total))],
    ['Partial hits', String(num(m.partial_hits))],
    ['Whole hits', String(num(m.whole_hits))],
    ['Data all ready', s(m.data_all_ready)],
    ['Buffered backend size', String(num(m.buffered_backend_size))],
    ['Prefetch workers', String(num(m.prefetch_workers))],
    ['Prefetch amount', bytes(amount)],
    ['Prefetch requests', String(reqs)],
    ['Prefetch avg size', `${reqs ? Math.floor(amount / reqs) : 0} B`],
    ['Prefetch unmerged', String(num(m.prefetch_unmerged_chunks))],
    ['Prefetch duration', `${dur.toFixed(3)} s`],
    ['Prefetch bandwidth', `${dur ? (amount / 1048576 / dur).toFixed(2) : '0.00'} MiB/s`],
    ...(m.prefetch_chunks_total !== undefined
      ? [['Prefetch progress', `${num(m.prefetch_chunks_done)}/${num(m.prefetch_chunks_total)} chunks (${num(m.prefetch_chunks_total) ? ((100 * num(m.prefetch_chunks_done)) / num(m.prefetch_chunks_total)).toFixed(1) : '0.0'}%)`] as [string, string]]
      : []),
    ['Underlying files', files.length ? files.join(', ') : '-'],
  ]);
}

export function renderFiles(v: Json): string {
  if (Array.isArray(v)) {
    // latest=true: inode ranges [[a,b],[c],...]
    if (v.length === 0) return 'no files read since the last query\n';
    return 'Recently read inodes:\n' + v.map((r) => '  ' + arr(r).map(inodeLabel).join(' - ')).join('\n') + '\n';
  }
  const m = obj(v, 'files metrics');
  const entries = Object.entries(m);
  if (entries.length === 0) return 'no per-file statistics (is rafs.iostats_files enabled?)\n';
  const rows = [['INODE', 'FOPS', 'READS', 'DATA READ', 'ERRORS']];
  for (const [ino, st] of entries) {
    const o = st && typeof st === 'object' && !Array.isArray(st) ? st : {};
    const e = arr(o.fop_errors).reduce<number>((a, x) => a + num(x), 0);
    rows.push([inodeLabel(ino), String(num(o.total_fops)), String(num(arr(o.fop_hits)[4])), String(num(o.data_read)), String(e)]);
  }
  return table(rows);
}

export function renderPattern(v: Json): string {
  const list = arr(v);
  if (list.length === 0) return 'no access pattern recorded (is rafs.access_pattern enabled?)\n';
  const rows = [['INODE', 'READS', 'FIRST ACCESS']];
  for (const p of list) {
    const o = p && typeof p === 'object' && !Array.isArray(p) ? p : {};
    rows.push([inodeLabel(o.ino), String(num(o.nr_read)), epoch(num(o.first_access_time_secs), num(o.first_access_time_nanos))]);
  }
  return table(rows);
}

export function renderInflight(v: Json, nowSecs = Date.now() / 1000): string {
  const list = arr(v);
  if (list.length === 0) return 'no inflight requests\n';
  const rows = [['INODE', 'OPCODE', 'UNIQUE', 'STARTED', 'ELAPSED']];
  for (const p of list) {
    const o = p && typeof p === 'object' && !Array.isArray(p) ? p : {};
    const ts = num(o.timestamp_secs);
    rows.push([inodeLabel(o.inode), opcodeLabel(o.opcode), s(o.unique), epoch(ts), ts ? `${Math.max(0, Math.round(nowSecs - ts))}s` : '-']);
  }
  return table(rows);
}

// ---------------------------------------------------------------- CLI

interface GlobalOpts {
  sock?: string;
  json?: boolean;
}

function positiveInt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n <= 0) {
      throw new CtlError(`${name} must be a positive integer, got '${v}'`);
    }
    return n;
  };
}

function checkMountpoint(mp: string): string {
  if (!mp.startsWith('/')) throw new CtlError(`mountpoint must be an absolute path inside the daemon's namespace, got '${mp}'`);
  return mp;
}

/**
 * Run nydusctl with `argv` = the user arguments (no node/script prefix).
 * Resolves to the exit status; never calls process.exit.
 */
export async function run(argv: string[], io: CtlIo): Promise<number> {
  const sleep = io.sleep ?? defaultSleep;
  const program = new Command('nydusctl');
  program
    .description('Query and configure a running nydusd through its API socket')
    .exitOverride()
    .configureOutput({ writeOut: (t) => io.out(t), writeErr: (t) => io.err(t) })
    .addOption(new Option('-S, --sock <path>', 'nydusd API socket (the daemon\'s --apisock)').env('NYDUSD_API_SOCK'))
    .option('-r, --raw', 'alias of --json (upstream spelling)')
    .option('--json', 'print the raw JSON reply instead of a table')
    .showHelpAfterError()
    .addHelpText('after', '\nExamples:\n  nydusctl --sock /run/vc/vm/<sid>/nydusd-api.sock info\n  nydusctl --sock /run/nydus/api.sock metrics --interval 2\n');

  const globals = (cmd: Command): GlobalOpts & { raw?: boolean } => cmd.optsWithGlobals();
  const client = (cmd: Command): NydusdClient => {
    const g = globals(cmd);
    if (!g.sock) throw new CtlError('--sock <path> is required (the nydusd API socket, e.g. /run/vc/vm/<sandbox>/nydusd-api.sock)');
    return new NydusdClient(g.sock);
  };
  const wantJson = (cmd: Command): boolean => Boolean(globals(cmd).json || globals(cmd).raw);
  const print = (cmd: Command, text: string, rendered: () => string): void => {
    if (wantJson(cmd)) io.out(text.endsWith('\n') ? text : text + '\n');
    else io.out(rendered());
  };

  /** GET path once, or every `interval` seconds up to `count` samples / abort. */
  async function sample(cmd: Command, path: string, render: (v: Json) => string, interval?: number, count?: number): Promise<void> {
    const c = client(cmd);
    await c.requireRunning();
    let n = 0;
    let prev: Json | undefined;
    for (;;) {
      const { text, value } = await c.getJson(path);
      n++;
      if (interval === undefined) {
        print(cmd, text, () => render(value));
        return;
      }
      if (wantJson(cmd)) io.out(text.replace(/\n+$/, '') + '\n');
      else {
        io.out(`--- ${new Date().toISOString()} (sample ${n}) ---\n` + render(value));
        if (prev !== undefined) io.out(deltaLine(prev, value, interval));
        io.out('\n');
      }
      prev = value;
      if ((count !== undefined && n >= count) || io.signal?.aborted) return;
      await sleep(interval * 1000, io.signal);
      if (io.signal?.aborted) return;
    }
  }

  program
    .command('info')
    .description('Show daemon state, version and mounted filesystem instances (GET /api/v1/daemon)')
    .action(async (_o, cmd: Command) => {
      const { text, value } = await client(cmd).getJson('/api/v1/daemon');
      print(cmd, text, () => renderDaemonInfo(value));
    });

  program
    .command('metrics')
    .description('Filesystem I/O statistics: reads, bytes, per-operation hits/errors, block sizes (GET /api/v1/metrics)')
    .argument('[category]', 'upstream form: backend | cache | fsstats (default fsstats)')
    .option('--id <mountpoint>', 'filesystem instance (needed when the daemon has more than one)')
    .option('-I, --interval <secs>', 'repeat every N seconds until Ctrl-C', positiveInt('--interval'))
    .option('--count <n>', 'with --interval: stop after N samples', positiveInt('--count'))
    .action(async (category: string | undefined, o: { id?: string; interval?: number; count?: number }, cmd: Command) => {
      const cat = category ?? 'fsstats';
      const q = query({ id: o.id });
      if (cat === 'fsstats') return sample(cmd, `/api/v1/metrics${q}`, renderFsStats, o.interval, o.count);
      if (cat === 'backend') return sample(cmd, `/api/v1/metrics/backend${q}`, renderBackend, o.interval, o.count);
      if (cat === 'cache') return sample(cmd, `/api/v1/metrics/blobcache${q}`, renderBlobcache, o.interval, o.count);
      throw new CtlError(`unknown metrics category '${cat}' (expected backend, cache or fsstats)`);
    });

  program
    .command('backend')
    .description('Storage backend metrics: reads, errors, bytes, latency per block size (GET /api/v1/metrics/backend)')
    .option('--id <mountpoint>', 'filesystem instance')
    .option('--mountpoint <mountpoint>', 'alias of --id')
    .option('-I, --interval <secs>', 'repeat every N seconds until Ctrl-C', positiveInt('--interval'))
    .option('--count <n>', 'with --interval: stop after N samples', positiveInt('--count'))
    .action(async (o: { id?: string; mountpoint?: string; interval?: number; count?: number }, cmd: Command) => {
      const q = query({ id: o.id ?? o.mountpoint });
      await sample(cmd, `/api/v1/metrics/backend${q}`, renderBackend, o.interval, o.count);
    });

  program
    .command('cache')
    .description('Blob cache metrics: hits, entries, prefetch progress (GET /api/v1/metrics/blobcache)')
    .option('--id <mountpoint>', 'filesystem instance')
    .action(async (o: { id?: string }, cmd: Command) => {
      await sample(cmd, `/api/v1/metrics/blobcache${query({ id: o.id })}`, renderBlobcache);
    });

  program
    .command('files')
    .description('Per-file I/O statistics; needs rafs.iostats_files (GET /api/v1/metrics/files)')
    .option('--id <mountpoint>', 'filesystem instance')
    .option('--latest', 'list inodes read since the previous --latest query (needs rafs.latest_read_files)')
    .action(async (o: { id?: string; latest?: boolean }, cmd: Command) => {
      await sample(cmd, `/api/v1/metrics/files${query({ id: o.id, latest: o.latest ? 'true' : undefined })}`, renderFiles);
    });

  program
    .command('pattern')
    .description('File access pattern; needs rafs.access_pattern (GET /api/v1/metrics/pattern)')
    .option('--id <mountpoint>', 'filesystem instance')
    .action(async (o: { id?: string }, cmd: Command) => {
      await sample(cmd, `/api/v1/metrics/pattern${query({ id: o.id })}`, renderPattern);
    });

  program
    .command('inflight')
    .description('FUSE requests currently being served (GET /api/v1/metrics/inflight)')
    .action(async (_o, cmd: Command) => {
      const c = client(cmd);
      await c.requireRunning();
      const { text, value } = await c.getJson('/api/v1/metrics/inflight');
      if (wantJson(cmd)) io.out(text.trim() === '' ? '[]\n' : text.replace(/\n+$/, '') + '\n');
      else io.out(renderInflight(value));
    });

  program
    .command('mount')
    .description('Mount a filesystem instance at a path of the daemon\'s namespace (POST /api/v1/mount)')
    .argument('[mountpoint]', 'path inside the daemon (e.g. /rafs/<id>/lowerdir)')
    .requiredOption('-s, --source <path>', 'bootstrap (rafs) or host directory (passthrough_fs)')
    .addOption(new Option('-t, --type <type>', 'filesystem type').choices(FS_TYPES).makeOptionMandatory())
    .option('-c, --config <file>', 'nydusd configuration file sent as the mount config (v1/v2 JSON or v2 TOML)')
    .option('--prefetch-files <list>', 'comma-separated paths to prefetch')
    .option('-m, --mountpoint <path>', 'upstream form of the MOUNTPOINT argument')
    .action(async (pos: string | undefined, o: { source: string; type: string; config?: string; prefetchFiles?: string; mountpoint?: string }, cmd: Command) => {
      const mp = pos ?? o.mountpoint;
      if (!mp) throw new CtlError('missing MOUNTPOINT (e.g. nydusctl --sock S mount --source image.boot --type rafs /sub)');
      checkMountpoint(mp);
      let config = '';
      if (o.config !== undefined) {
        try {
          config = fs.readFileSync(o.config, 'utf8');
        } catch (e) {
          throw new CtlError(`failed to read mount config ${o.config}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
        }
      }
      const body: Record<string, unknown> = { source: o.source, fs_type: o.type, config };
      if (o.prefetchFiles !== undefined) body.prefetch_files = o.prefetchFiles.split(',').map((p) => p.trim()).filter((p) => p);
      const c = client(cmd);
      await c.requireRunning();
      await c.call('POST', `/api/v1/mount${query({ mountpoint: mp })}`, JSON.stringify(body));
      if (!wantJson(cmd)) io.out(`mounted ${o.type} ${o.source} at ${mp}\n`);
    });

  program
    .command('umount')
    .description('Unmount the filesystem instance at MOUNTPOINT (DELETE /api/v1/mount)')
    .argument('[mountpoint]', 'path inside the daemon')
    .option('-m, --mountpoint <path>', 'upstream form of the MOUNTPOINT argument')
    .action(async (pos: string | undefined, o: { mountpoint?: string }, cmd: Command) => {
      const mp = pos ?? o.mountpoint;
      if (!mp) throw new CtlError('missing MOUNTPOINT');
      checkMountpoint(mp);
      const c = client(cmd);
      await c.requireRunning();
      await c.call('DELETE', `/api/v1/mount${query({ mountpoint: mp })}`);
      if (!wantJson(cmd)) io.out(`unmounted ${mp}\n`);
    });

  program
    .command('set')
    .description('Configure the daemon; supported: log-level trace|debug|info|warn|error (PUT /api/v1/daemon)')
    .argument('<kind>', 'parameter to configure (log-level)')
    .argument('<value>', 'new value')
    .action(async (kind: string, value: string, _o, cmd: Command) => {
      if (kind !== 'log-level') throw new CtlError(`unknown parameter '${kind}' (supported: log-level)`);
      if (!LOG_LEVELS.includes(value)) throw new CtlError(`invalid log level '${value}' (expected ${LOG_LEVELS.join(', ')})`);
      await client(cmd).call('PUT', '/api/v1/daemon', JSON.stringify({ log_level: value }));
      if (!wantJson(cmd)) io.out(`log level set to ${value}\n`);
    });

  program
    .command('exit')
    .description('Ask the daemon to stop (PUT /api/v1/daemon/exit)')
    .action(async (_o, cmd: Command) => {
      await client(cmd).call('PUT', '/api/v1/daemon/exit');
      if (!wantJson(cmd)) io.out('nydusd is exiting\n');
    });

  if (argv.length === 0) {
    program.outputHelp({ error: true });
    return 1;
  }
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // help/version already printed; usage errors already reported by commander
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.help' || e.code === 'commander.version') return 0;
      if (e.code === 'commander.executeSubCommandAsync') return 1;
      return e.exitCode || 1;
    }
    const msg = e instanceof Error ? e.message : String(e);
    io.err(`error: ${msg}\n`);
    return 1;
  }
}

function deltaLine(prev: Json, cur: Json, interval: number): string {
  const p = prev && typeof prev === 'object' && !Array.isArray(prev) ? prev : {};
  const c = cur && typeof cur === 'object' && !Array.isArray(cur) ? cur : {};
  if ('data_read' in c) {
    const reads = num(arr(c.fop_hits)[4]) - num(arr(p.fop_hits)[4]);
    const data = num(c.data_read) - num(p.data_read);
    return `Delta over ${interval}s: reads +${Math.max(0, reads)}, data +${Math.max(0, data)} B (${(Math.max(0, data) / 1024 / interval).toFixed(1)} KiB/s)\n`;
  }
  if ('read_amount_total' in c) {
    const reads = num(c.read_count) - num(p.read_count);
    const data = num(c.read_amount_total) - num(p.read_amount_total);
    const lat = num(c.read_cumulative_latency_millis_total) - num(p.read_cumulative_latency_millis_total);
    return `Delta over ${interval}s: backend reads +${Math.max(0, reads)}, data +${Math.max(0, data)} B (${(Math.max(0, data) / 1024 / interval).toFixed(1)} KiB/s), avg latency ${reads > 0 ? Math.round(lat / reads) : 0} ms\n`;
  }
  return '';
}

/** Entry point for bin/nydusctl. */
export function main(argv: string[] = process.argv): void {
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  run(argv.slice(2), {
    out: (t) => process.stdout.write(t),
    err: (t) => process.stderr.write(t),
    signal: ac.signal,
  }).then(
    (code) => { process.exitCode = code; },
    (e) => { process.stderr.write(`error: ${e instanceof Error ? e.message : String(e)}\n`); process.exitCode = 1; },
  );
}
