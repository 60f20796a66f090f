/**
 * Host nydusd instances for Nydus images (nydusify-snapshotter.md §3.1–3.6).
 * A RAFS instance is keyed by the meta-layer snapshot id `M`.
 *
 * - dedicated (also `multiple`): one fusedev nydusd per image, mounted at
 *   `<R>/snapshots/<M>/mnt`, configured from the template (daemon-config.ts)
 *   at `<R>/config/<D>/config.json`, argv in upstream's field order:
 *   `fuse [--thread-num N] --config C --bootstrap B --mountpoint M --apisock A
 *   --log-level L [--log-rotation-size S] [--log-file F] --failover-policy P`.
 * - shared: one nydusd `fuse [--thread-num N] --mountpoint <R>/mnt --apisock
 *   <R>/socket/<D>/api.sock --log-level L ...` (no --config, no --bootstrap);
 *   each image is `POST /api/v1/mount?mountpoint=/<M>` with `{source:
 *   <bootstrap>, fs_type: "rafs", config: <instance config JSON>}` and is
 *   seen on the host at `<R>/mnt/<M>`; its config is also written to
 *   `<R>/config/<D>/<M>/config.json`; removal is `DELETE` of the same
 *   mountpoint. Shared-daemon operations run one at a time.
 * - none (Kata): no daemon; the instance record only carries what the
 *   extraoption needs.
 *
 * API socket `<R>/socket/<D>/api.sock`, log `<log dir>/<D>/nydusd.log` unless
 * logging to stdout. Readiness and control go through src/api/client.ts (GET
 * /api/v1/daemon until RUNNING, as upstream 20 × (100 ms + jitter) after the
 * socket wait).
 *
 * Records (daemon + instance) live in the MetaStore; on start-up
 * `recover()` re-adopts daemons that answer RUNNING and, with
 * `recover_policy = "restart"`, restarts dead ones with the same argv after
 * clearing their vestige (lazy umount of the mountpoint, stale socket); a
 * restarted shared daemon gets every recorded instance POSTed again in the
 * order they were first mounted. A death while running (child exit, or pid
 * polling for adopted daemons, where a zombie counts as dead) is handled the
 * same way, and a caller that finds the daemon dead before that waits for
 * the one restart. Teardown: SIGTERM, wait for the process and the mount to
 * go (then a lazy umount), remove config, socket and log dirs.
 *
 * Differences: the shared daemon is started at the first image (upstream: at
 * start-up) and stopped when its last image is unmounted (upstream keeps it
 * until Close), so an idle snapshotter leaves no nydusd and no FUSE mount;
 * the shared daemon's own `<R>/config/<D>/config.json` is not written (it is
 * passed nothing); no failover/supervisor (`failover` acts as `restart`);
 * nydusd is started in its own session (upstream: same process group) so a
 * terminal's Ctrl-C on the snapshotter leaves it running, as upstream
 * intends; a daemon still alive 10 s after SIGTERM gets SIGKILL (upstream
 * never sends one); liveness is pid polling (1 s), not an epoll on a held
 * API connection.
 */
import { ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApiClientError, NydusdClient } from '../api/client';
import { log } from '../common/log';
import { RAFSV5_SUPER_MAGIC } from '../rafs/format/v5';
import { EROFS_SUPER_MAGIC_V1 } from '../rafs/format/v6';
import { BlobCacheGc } from './cache-gc';
import { SnapshotterConfig } from './config';
import { instanceConfig, loadTemplate, writeFileAtomic } from './daemon-config';
import { SnapshotError } from './errors';
import { imageRefOf } from './labels';
import { DaemonRecord, InstanceRecord, MetaStore } from './store';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** An xid-like daemon id: 20 lowercase base32hex characters. */
export function newDaemonId(): string {
  const alphabet = '0123456789abcdefghijklmnopqrstuv';
  const b = randomBytes(20);
  let s = '';
  for (let i = 0; i < 20; i++) s += alphabet[b[i] & 31];
  return s;
}

/** Mount points of this mount namespace (decoded /proc/self/mountinfo field 5). */
export function mountPoints(): Set<string> {
  const out = new Set<string>();
  let text = '';
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length > 4) out.add(f[4].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}

export const isMounted = (p: string): boolean => mountPoints().has(p);

/** Lazy umount (umount -l); errors are logged, not thrown. */
export function lazyUmount(p: string): Promise<void> {
  return new Promise((resolve) => {
    execFile('umount', ['-l', p], { timeout: 10_000 }, (err, _o, stderr) => {
      if (err) log.warn({ mountpoint: p, err: String(stderr || err.message).trim() }, 'umount failed');
      resolve();
    });
  });
}

/** `v5` / `v6` from the bootstrap header, or undefined. */
export function detectFsVersion(file: string): 'v5' | 'v6' | undefined {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const b = Buffer.alloc(1028);
    const n = fs.readSync(fd, b, 0, b.length, 0);
    if (n >= 8 && b.readUInt32LE(0) === RAFSV5_SUPER_MAGIC) return 'v5';
    if (n >= 1028 && b.readUInt32LE(1024) === EROFS_SUPER_MAGIC_V1) return 'v6';
    return undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** Bootstrap of a meta snapshot: `fs/image/image.boot`, or legacy `fs/image.boot`. */
export function bootstrapOf(root: string, metaId: string): string {
  const p = path.join(root, 'snapshots', metaId, 'fs', 'image', 'image.boot');
  const legacy = path.join(root, 'snapshots', metaId, 'fs', 'image.boot');
  return !fs.existsSync(p) && fs.existsSync(legacy) ? legacy : p;
}

/** Wait until the bootstrap is a stable, recognisable file (upstream: 20 × 50 ms). */
export async function waitBootstrap(file: string): Promise<'v5' | 'v6'> {
  let last = '';
  for (let i = 0; i < 20; i++) {
    try {
      const st = fs.statSync(file);
      const v = st.isFile() ? detectFsVersion(file) : undefined;
      if (v && (v === 'v5' || st.size % 4096 === 0)) {
        const sig = `${st.size}:${st.mtimeMs}`;
        if (sig === last) return v;
        last = sig;
      }
    } catch {
      /* not there yet */
    }
    await sleep(50);
  }
  throw new SnapshotError('FailedPrecondition', `bootstrap ${file} is missing or not a RAFS v5/v6 bootstrap`);
}

export interface DaemonEvents {
  /** lifetime events: start, death, restart, stop (metrics) */
  onEvent?(event: string, daemonId: string): void;
}

interface Live {
  rec: DaemonRecord;
  child?: ChildProcess;
  timer?: NodeJS.Timeout;
  stopping: boolean;
}

/**
 * Whether `pid` is a live (not zombie) process whose command line mentions
 * `marker` (the daemon's API socket): a reaped-and-reused pid or a zombie
 * nobody reaps (an adopted daemon's parent is gone) counts as dead.
 */
export function pidAlive(pid: number, marker?: string): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X' || state === 'x') return false;
    if (marker !== undefined && !fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker)) return false;
    return true;
  } catch {
    return false;
  }
}

/** API mountpoint of a shared-mode instance: `/<meta snapshot id>`. */
export const sharedMountpoint = (metaId: string): string => `/${metaId}`;

export class DaemonManager {
  private live = new Map<string, Live>();
  private starting = new Map<string, Promise<InstanceRecord>>();
  /** restarts in progress (daemon id → done, including the re-mounts of a shared daemon) */
  private recovering = new Map<string, Promise<void>>();
  /** shared-daemon operations (start, mount, umount, stop) run one at a time */
  private sharedQueue: Promise<unknown> = Promise.resolve();
  private closed = false;
  readonly cacheGc: BlobCacheGc;

  constructor(readonly cfg: SnapshotterConfig, readonly store: MetaStore, readonly events: DaemonEvents = {}) {
    this.cacheGc = new BlobCacheGc(cfg.cacheManager.cacheDir, (id) => bootstrapOf(cfg.root, id));
  }

  get root(): string {
    return this.cfg.root;
  }

  instance(snapshotId: string): InstanceRecord | undefined {
    return this.store.instances().find((i) => i.snapshotId === snapshotId);
  }

  daemons(): DaemonRecord[] {
    return this.store.daemons();
  }

  /** Daemons serving now: alive, not being restarted or stopped (what the metrics collector polls). */
  servingDaemons(): DaemonRecord[] {
    return this.store.daemons().filter((d) => !this.recovering.has(d.id) && !this.live.get(d.id)?.stopping && this.alive(d));
  }

  private daemonRecord(id: string): DaemonRecord | undefined {
    return this.store.daemons().find((d) => d.id === id);
  }

  /** The shared daemon's record, if one is recorded. */
  sharedDaemon(): DaemonRecord | undefined {
    return this.store.daemons().find((d) => d.mode === 'shared');
  }

  private client(rec: DaemonRecord, timeoutMs?: number): NydusdClient {
    return new NydusdClient(rec.apiSock, { userAgent: 'containerd-nydus-grpc', ...(timeoutMs ? { timeoutMs } : {}) });
  }

  private alive(rec: DaemonRecord): boolean {
    return pidAlive(rec.pid, rec.apiSock);
  }

  private serialShared<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.sharedQueue.then(fn, fn);
    this.sharedQueue = p.catch(() => undefined);
    return p;
  }

  /** Per-instance nydusd config (also what Kata mode puts into extraoption). */
  buildConfig(metaId: string, labels: Record<string, string>): Record<string, unknown> {
    const tpl = loadTemplate(this.cfg.daemon.nydusdConfig);
    return instanceConfig(tpl, {
      snapshotId: metaId,
      imageRef: imageRefOf(labels),
      labels,
      cacheDir: this.cfg.cacheManager.cacheDir,
      skipVerify: this.cfg.remote.skipSslVerify,
    });
  }

  /** Copy `<M>/fs/image/*.blob.meta` into the cache dir (as upstream before first use). */
  private copyBlobMeta(metaId: string): void {
    const dir = path.join(this.root, 'snapshots', metaId, 'fs', 'image');
    let names: string[] = [];
    try {
      names = fs.readdirSync(dir).filter((n) => n.endsWith('.blob.meta')).slice(0, 4096);
    } catch {
      return;
    }
    fs.mkdirSync(this.cfg.cacheManager.cacheDir, { recursive: true });
    for (const n of names) {
      const dst = path.join(this.cfg.cacheManager.cacheDir, n);
      if (!fs.existsSync(dst)) {
        try {
          fs.copyFileSync(path.join(dir, n), dst);
        } catch (e) {
          log.warn({ file: n, err: String(e) }, 'copying blob.meta into the cache failed');
        }
      }
    }
  }

  /**
   * The RAFS instance of meta snapshot `metaId`, starting its nydusd (or
   * mounting it in the shared one) when there is none; concurrent callers
   * share one start. An instance whose daemon died is served once the
   * daemon is back (restart policy).
   */
  async ensureInstance(metaId: string, labels: Record<string, string>): Promise<InstanceRecord> {
    if (this.closed) throw new SnapshotError('Unavailable', 'snapshotter is shutting down');
    const have = this.instance(metaId);
    if (have) {
      if (this.cfg.daemonMode === 'none' || have.daemonId === '') return have;
      const d = this.daemonRecord(have.daemonId);
      if (d) {
        await this.ready(d);
        if (d.mode === 'shared') await this.serialShared(() => this.ensureSharedMount(d.id, have));
        return have;
      }
      log.warn({ snapshot: metaId, daemon: have.daemonId }, 'RAFS instance without a daemon record: starting afresh');
      this.store.deleteInstance(metaId);
    }
    const pending = this.starting.get(metaId);
    if (pending) return pending;
    const p = this.createInstance(metaId, labels).finally(() => this.starting.delete(metaId));
    this.starting.set(metaId, p);
    return p;
  }

  /**
   * Wait until daemon `rec` serves: a restart in progress is awaited, a death
   * not noticed yet (pid polling) is handled now, then RUNNING is awaited.
   */
  private async ready(rec: DaemonRecord): Promise<void> {
    let r = this.recovering.get(rec.id);
    const cur = this.daemonRecord(rec.id) ?? rec;
    if (!r && !this.alive(cur)) {
      if (this.cfg.daemon.recoverPolicy === 'none') throw new SnapshotError('Unavailable', `nydusd ${rec.id} is dead and recover_policy is none`);
      r = this.noticeDeath(cur);
    }
    if (r) {
      try {
        await r;
      } catch (e) {
        throw new SnapshotError('Unavailable', `nydusd ${rec.id} could not be restarted: ${(e as Error).message}`);
      }
    }
    const now = this.daemonRecord(rec.id) ?? cur;
    try {
      await this.client(now).waitUntilState('RUNNING', { attempts: 50 });
    } catch (e) {
      throw new SnapshotError('Unavailable', `nydusd ${rec.id}: ${(e as Error).message}`);
    }
  }

  private async createInstance(metaId: string, labels: Record<string, string>): Promise<InstanceRecord> {
    const bootstrap = bootstrapOf(this.root, metaId);
    const fsVersion = await waitBootstrap(bootstrap);
    const config = this.buildConfig(metaId, labels);
    const imageRef = imageRefOf(labels) ?? '';
    if (this.cfg.daemonMode === 'none') {
      const mnt = path.join(this.root, 'snapshots', metaId, 'mnt');
      const inst: InstanceRecord = { snapshotId: metaId, daemonId: '', imageRef, bootstrap, mountpoint: mnt, fsVersion, config: JSON.stringify(config) };
      this.store.putInstance(inst);
      return inst;
    }
    this.copyBlobMeta(metaId);
    if (this.cfg.daemonMode === 'shared') {
      return this.serialShared(() => this.mountShared(metaId, imageRef, bootstrap, fsVersion, config));
    }
    return this.startDedicated(metaId, imageRef, bootstrap, fsVersion, config);
  }

  /** Common argv tail: `--apisock A --log-level L [--log-rotation-size S] [--log-file F] --failover-policy P`. */
  private argvTail(id: string, apiSock: string): string[] {
    const d = this.cfg.daemon;
    const argv = ['--apisock', apiSock, '--log-level', this.cfg.log.level];
    if (d.logRotationSize > 0) argv.push('--log-rotation-size', String(d.logRotationSize));
    if (!this.cfg.log.logToStdout) {
      const logDir = path.join(this.cfg.log.dir, id);
      fs.mkdirSync(logDir, { recursive: true });
      argv.push('--log-file', path.join(logDir, 'nydusd.log'));
    }
    argv.push('--failover-policy', d.failoverPolicy);
    return argv;
  }

  private threadArgs(): string[] {
    return this.cfg.daemon.threadsNumber > 0 ? ['--thread-num', String(this.cfg.daemon.threadsNumber)] : [];
  }

  private async startDedicated(metaId: string, imageRef: string, bootstrap: string, fsVersion: 'v5' | 'v6', config: Record<string, unknown>): Promise<InstanceRecord> {
    const mnt = path.join(this.root, 'snapshots', metaId, 'mnt');
    const id = newDaemonId();
    const configPath = path.join(this.root, 'config', id, 'config.json');
    const apiSock = path.join(this.root, 'socket', id, 'api.sock');
    writeFileAtomic(configPath, JSON.stringify(config, null, 2));
    fs.mkdirSync(path.dirname(apiSock), { recursive: true, mode: 0o700 });
    fs.mkdirSync(mnt, { recursive: true });
    const argv = ['fuse', ...this.threadArgs(), '--config', configPath, '--bootstrap', bootstrap, '--mountpoint', mnt, ...this.argvTail(id, apiSock)];
    const rec: DaemonRecord = { id, argv, pid: 0, apiSock, mountpoint: mnt, configPath, mode: 'dedicated', snapshotId: metaId, imageRef, startedAt: Date.now() };
    const inst: InstanceRecord = { snapshotId: metaId, daemonId: id, imageRef, bootstrap, mountpoint: mnt, fsVersion, config: JSON.stringify(config) };
    try {
      await this.spawnDaemon(rec);
      this.store.tx(() => {
        this.store.putDaemon(rec);
        this.store.putInstance(inst);
      });
    } catch (e) {
      await this.stopDaemon(rec, false);
      throw e;
    }
    log.info({ daemon: id, snapshot: metaId, image: imageRef, pid: rec.pid }, 'nydusd started');
    this.events.onEvent?.('start', id);
    return inst;
  }

  /**
   * The shared daemon, started when none is recorded:
   * `fuse [--thread-num N] --mountpoint <R>/mnt --apisock <R>/socket/<D>/api.sock
   * --log-level L [--log-rotation-size S] [--log-file F] --failover-policy P`.
   * Call inside serialShared.
   */
  private async ensureSharedDaemon(): Promise<DaemonRecord> {
    const have = this.sharedDaemon();
    if (have) {
      await this.ready(have);
      return this.daemonRecord(have.id) ?? have;
    }
    const id = newDaemonId();
    const mnt = path.join(this.root, 'mnt');
    const apiSock = path.join(this.root, 'socket', id, 'api.sock');
    const configPath = path.join(this.root, 'config', id, 'config.json');
    fs.mkdirSync(path.dirname(apiSock), { recursive: true, mode: 0o700 });
    fs.mkdirSync(path.dirname(configPath), { recursive: true, mode: 0o700 });
    fs.mkdirSync(mnt, { recursive: true });
    const argv = ['fuse', ...this.threadArgs(), '--mountpoint', mnt, ...this.argvTail(id, apiSock)];
    const rec: DaemonRecord = { id, argv, pid: 0, apiSock, mountpoint: mnt, configPath, mode: 'shared', startedAt: Date.now() };
    try {
      await this.spawnDaemon(rec);
      this.store.putDaemon(rec);
    } catch (e) {
      await this.stopDaemon(rec, false);
      throw e;
    }
    log.info({ daemon: id, pid: rec.pid, mountpoint: mnt }, 'shared nydusd started');
    this.events.onEvent?.('start', id);
    return rec;
  }

  private instanceConfigPath(rec: DaemonRecord, metaId: string): string {
    return path.join(path.dirname(rec.configPath), metaId, 'config.json');
  }

  /** POST /api/v1/mount?mountpoint=/<M> with {source, fs_type: rafs, config}. */
  private async postMount(rec: DaemonRecord, inst: InstanceRecord): Promise<void> {
    try {
      await this.client(rec).mount(sharedMountpoint(inst.snapshotId), { source: inst.bootstrap, fs_type: 'rafs', config: inst.config });
    } catch (e) {
      throw new SnapshotError('Unavailable', `mounting snapshot ${inst.snapshotId} in shared nydusd ${rec.id}: ${(e as Error).message}`);
    }
  }

  /** Mount meta snapshot `metaId` in the shared daemon (inside serialShared). */
  private async mountShared(metaId: string, imageRef: string, bootstrap: string, fsVersion: 'v5' | 'v6', config: Record<string, unknown>): Promise<InstanceRecord> {
    const rec = await this.ensureSharedDaemon();
    const inst: InstanceRecord = {
      snapshotId: metaId, daemonId: rec.id, imageRef, bootstrap, mountpoint: path.join(rec.mountpoint, metaId), fsVersion, config: JSON.stringify(config),
    };
    const cfgFile = this.instanceConfigPath(rec, metaId);
    writeFileAtomic(cfgFile, JSON.stringify(config, null, 2));
    try {
      await this.postMount(rec, inst);
    } catch (e) {
      fs.rmSync(path.dirname(cfgFile), { recursive: true, force: true });
      throw e;
    }
    this.store.putInstance(inst);
    log.info({ daemon: rec.id, snapshot: metaId, image: imageRef, mountpoint: inst.mountpoint }, 'RAFS instance mounted in the shared nydusd');
    return inst;
  }

  /** Re-POST `inst` when the shared daemon does not have it (GET /api/v1/metrics?id= answers 404). */
  private async ensureSharedMount(daemonId: string, inst: InstanceRecord): Promise<void> {
    const rec = this.daemonRecord(daemonId);
    if (!rec) return;
    try {
      await this.client(rec).fsMetrics(sharedMountpoint(inst.snapshotId));
      return;
    } catch (e) {
      if (!(e instanceof ApiClientError && e.code === 'EHTTP')) throw new SnapshotError('Unavailable', `shared nydusd ${rec.id}: ${(e as Error).message}`);
    }
    log.warn({ daemon: rec.id, snapshot: inst.snapshotId }, 'RAFS instance missing from the shared nydusd: mounting it again');
    await this.postMount(rec, inst);
  }

  /** Re-POST every instance of shared daemon `rec`, in the order they were first mounted. */
  private async remountAll(rec: DaemonRecord): Promise<void> {
    for (const inst of this.store.instances()) {
      if (inst.daemonId !== rec.id) continue;
      try {
        await this.postMount(rec, inst);
        log.info({ daemon: rec.id, snapshot: inst.snapshotId }, 'RAFS instance mounted again');
      } catch (e) {
        log.error({ daemon: rec.id, snapshot: inst.snapshotId, err: String(e) }, 're-mounting a RAFS instance failed');
      }
    }
  }

  /** Spawn rec.argv, wait for the socket and RUNNING; rec.pid is set. */
  private async spawnDaemon(rec: DaemonRecord): Promise<void> {
    try { fs.rmSync(rec.apiSock, { force: true }); } catch { /* ignore */ }
    fs.mkdirSync(rec.mountpoint, { recursive: true });
    const child = spawn(this.cfg.daemon.nydusdPath, rec.argv, { stdio: ['ignore', 'inherit', 'inherit'], detached: true });
    let exited: string | undefined;
    let spawnError: string | undefined;
    child.once('error', (e) => { spawnError = e.message; });
    child.once('exit', (code, sig) => { exited = `nydusd exited (${sig ?? code})`; });
    await new Promise<void>((r) => { child.once('spawn', r); child.once('error', () => r()); });
    if (spawnError) throw new SnapshotError('FailedPrecondition', `cannot start ${this.cfg.daemon.nydusdPath}: ${spawnError}`);
    rec.pid = child.pid ?? 0;
    const l: Live = { rec, child, stopping: false };
    this.live.set(rec.id, l);
    child.once('exit', () => this.onDeath(rec.id, child));
    // socket wait (upstream 100 × 100 ms), then RUNNING
    for (let i = 0; i < 100 && !fs.existsSync(rec.apiSock); i++) {
      if (exited) break;
      await sleep(100);
    }
    try {
      await this.client(rec).waitUntilState('RUNNING', { attempts: 50, abort: () => exited ?? spawnError });
    } catch (e) {
      throw new SnapshotError('Unavailable', `nydusd ${rec.id}${rec.snapshotId ? ` for snapshot ${rec.snapshotId}` : ' (shared)'}: ${(e as Error).message}`);
    }
  }

  private onDeath(id: string, child: ChildProcess): void {
    const l = this.live.get(id);
    if (!l || l.child !== child || l.stopping) return;
    this.handleDeath(l);
  }

  private handleDeath(l: Live): void {
    if (this.closed) {
      this.live.delete(l.rec.id);
      if (l.timer) clearInterval(l.timer);
      return;
    }
    if (this.cfg.daemon.recoverPolicy === 'none') {
      this.live.delete(l.rec.id);
      if (l.timer) clearInterval(l.timer);
      log.warn({ daemon: l.rec.id, pid: l.rec.pid }, 'nydusd died (recover_policy none)');
      this.events.onEvent?.('death', l.rec.id);
      return;
    }
    void this.noticeDeath(l.rec).catch((e) => log.error({ daemon: l.rec.id, err: String(e) }, 'restarting nydusd failed'));
  }

  /** A death (seen by exit, pid polling or a caller): one restart per daemon at a time. */
  private noticeDeath(rec: DaemonRecord): Promise<void> {
    const have = this.recovering.get(rec.id);
    if (have) return have;
    const l = this.live.get(rec.id);
    if (l) {
      l.stopping = true;
      if (l.timer) clearInterval(l.timer);
      this.live.delete(rec.id);
    }
    log.warn({ daemon: rec.id, pid: rec.pid, mode: rec.mode }, 'nydusd died');
    this.events.onEvent?.('death', rec.id);
    const cur = this.daemonRecord(rec.id) ?? rec;
    const p = this.restart(cur).finally(() => this.recovering.delete(rec.id));
    this.recovering.set(rec.id, p);
    return p;
  }

  /**
   * Clear the vestige of a dead daemon (lazy umount of its mountpoint, stale
   * socket) and start it again with the same argv; a shared daemon then gets
   * every recorded instance mounted again.
   */
  async restart(rec: DaemonRecord): Promise<void> {
    if (isMounted(rec.mountpoint)) await lazyUmount(rec.mountpoint);
    await this.spawnDaemon(rec);
    rec.startedAt = Date.now();
    this.store.putDaemon(rec);
    log.info({ daemon: rec.id, pid: rec.pid }, 'nydusd restarted');
    if (rec.mode === 'shared') await this.remountAll(rec);
    this.events.onEvent?.('restart', rec.id);
  }

  /** Watch a daemon this process did not start (pid polling, zombies count as dead). */
  private adopt(rec: DaemonRecord): void {
    const l: Live = { rec, stopping: false };
    l.timer = setInterval(() => {
      if (!this.alive(rec) && !l.stopping && this.live.get(rec.id) === l) this.handleDeath(l);
    }, 1000);
    l.timer.unref();
    this.live.set(rec.id, l);
  }

  /**
   * Start-up: re-adopt daemons answering RUNNING (a shared one gets any
   * instance it lacks mounted again), restart the others (recover_policy
   * restart), forget instance records whose daemon is not recorded, and
   * stop a shared daemon that serves nothing.
   */
  async recover(): Promise<void> {
    for (const rec of this.store.daemons()) {
      let state = '';
      try {
        state = await this.client(rec, 5000).state();
      } catch {
        state = '';
      }
      if (state === 'RUNNING') {
        log.info({ daemon: rec.id, pid: rec.pid, mode: rec.mode }, 'nydusd re-adopted');
        this.adopt(rec);
        if (rec.mode === 'shared') {
          for (const inst of this.store.instances().filter((i) => i.daemonId === rec.id)) {
            await this.ensureSharedMount(rec.id, inst).catch((e) => log.error({ daemon: rec.id, snapshot: inst.snapshotId, err: String(e) }, 're-mounting a RAFS instance failed'));
          }
        }
        continue;
      }
      if (state) {
        log.warn({ daemon: rec.id, state }, 'nydusd is alive but not RUNNING; left alone');
        this.adopt(rec);
        continue;
      }
      if (this.cfg.daemon.recoverPolicy === 'none') {
        log.warn({ daemon: rec.id }, 'nydusd is dead and recover_policy is none');
        continue;
      }
      try {
        await this.noticeDeath(rec);
      } catch (e) {
        log.error({ daemon: rec.id, err: String(e) }, 'recovering nydusd failed');
      }
    }
    const ids = new Set(this.store.daemons().map((d) => d.id));
    for (const inst of this.store.instances()) {
      if (inst.daemonId !== '' && !ids.has(inst.daemonId)) {
        log.warn({ snapshot: inst.snapshotId, daemon: inst.daemonId }, 'RAFS instance of an unrecorded nydusd forgotten');
        this.store.deleteInstance(inst.snapshotId);
      }
    }
    await this.stopIdleShared();
  }

  /** SIGTERM (SIGKILL after 10 s), wait for the mount to go, remove dirs; `forget` drops the records too. */
  private async stopDaemon(rec: DaemonRecord, forget = true): Promise<void> {
    await this.recovering.get(rec.id)?.catch(() => undefined);
    const l = this.live.get(rec.id);
    if (l) {
      l.stopping = true;
      if (l.timer) clearInterval(l.timer);
    }
    const cur = this.daemonRecord(rec.id) ?? rec;
    const alive = (): boolean => {
      if (!cur.pid) return false;
      if (l?.child && l.child.pid === cur.pid) return l.child.exitCode === null && l.child.signalCode === null;
      return this.alive(cur);
    };
    if (alive()) {
      try { process.kill(cur.pid, 'SIGTERM'); } catch { /* gone */ }
      for (let i = 0; i < 200 && alive(); i++) await sleep(50);
      if (alive()) {
        log.warn({ daemon: cur.id, pid: cur.pid }, 'nydusd ignored SIGTERM for 10 s; SIGKILL');
        try { process.kill(cur.pid, 'SIGKILL'); } catch { /* gone */ }
        for (let i = 0; i < 40 && alive(); i++) await sleep(50);
      }
    }
    for (let i = 0; i < 20 && isMounted(cur.mountpoint); i++) await sleep(50);
    if (isMounted(cur.mountpoint)) await lazyUmount(cur.mountpoint);
    this.live.delete(cur.id);
    for (const p of [path.dirname(cur.configPath), path.dirname(cur.apiSock), path.join(this.cfg.log.dir, cur.id)]) {
      try { fs.rmSync(p, { recursive: true, force: true }); } catch (e) { log.warn({ path: p, err: String(e) }, 'cleanup failed'); }
    }
    if (cur.mode === 'shared' && !isMounted(cur.mountpoint)) {
      try { fs.rmdirSync(cur.mountpoint); } catch { /* busy or not empty: left */ }
    }
    if (forget) this.store.deleteDaemon(cur.id);
    this.events.onEvent?.('stop', cur.id);
  }

  /** Tear down the RAFS instance of meta snapshot `metaId` (daemon or API mount, FUSE mount, records). */
  async destroyInstance(metaId: string): Promise<void> {
    const inst = this.instance(metaId);
    if (!inst) {
      const mnt = path.join(this.root, 'snapshots', metaId, 'mnt');
      if (isMounted(mnt)) await lazyUmount(mnt);
      return;
    }
    const rec = inst.daemonId ? this.daemonRecord(inst.daemonId) : undefined;
    if (rec?.mode === 'shared') {
      await this.serialShared(() => this.umountShared(rec, inst));
    } else {
      if (rec) await this.stopDaemon(rec);
      else if (isMounted(inst.mountpoint)) await lazyUmount(inst.mountpoint);
      this.store.deleteInstance(metaId);
    }
    log.info({ snapshot: metaId, daemon: inst.daemonId || undefined }, 'RAFS instance removed');
  }

  /** DELETE /api/v1/mount?mountpoint=/<M>, drop its config and record; the last one stops the shared daemon. */
  private async umountShared(rec: DaemonRecord, inst: InstanceRecord): Promise<void> {
    await this.recovering.get(rec.id)?.catch(() => undefined);
    const cur = this.daemonRecord(rec.id) ?? rec;
    if (this.alive(cur)) {
      try {
        await this.client(cur).umount(sharedMountpoint(inst.snapshotId));
      } catch (e) {
        log.warn({ daemon: cur.id, snapshot: inst.snapshotId, err: String(e) }, 'API umount failed');
      }
    }
    fs.rmSync(path.dirname(this.instanceConfigPath(cur, inst.snapshotId)), { recursive: true, force: true });
    this.store.deleteInstance(inst.snapshotId);
    if (!this.store.instances().some((i) => i.daemonId === cur.id)) {
      log.info({ daemon: cur.id }, 'shared nydusd serves no image any more: stopping it');
      await this.stopDaemon(cur);
    }
  }

  /** Stop a shared daemon that serves no instance (a failed first mount, a crash between records). */
  async stopIdleShared(): Promise<void> {
    await this.serialShared(async () => {
      for (const d of this.store.daemons()) {
        if (d.mode === 'shared' && !this.store.instances().some((i) => i.daemonId === d.id)) {
          log.info({ daemon: d.id }, 'idle shared nydusd stopped');
          await this.stopDaemon(d);
        }
      }
    });
  }

  /** Stop watching (and with cleanup_on_close, stop every daemon). */
  async close(): Promise<void> {
    if (this.cfg.cleanupOnClose) {
      for (const i of this.store.instances()) await this.destroyInstance(i.snapshotId).catch(() => undefined);
      await this.stopIdleShared().catch(() => undefined);
    }
    this.closed = true;
    await Promise.all([...this.recovering.values()].map((p) => p.catch(() => undefined)));
    for (const l of this.live.values()) {
      if (l.timer) clearInterval(l.timer);
      l.child?.unref();
    }
    this.live.clear();
  }
}
