/**
 * Host nydusd instances for Nydus images (nydusify-snapshotter.md §3.1–3.6):
 * one dedicated fusedev nydusd per image, keyed by the meta-layer snapshot id
 * `M`, mounted at `<R>/snapshots/<M>/mnt`, configured from the template
 * (daemon-config.ts) at `<R>/config/<D>/config.json`, API socket
 * `<R>/socket/<D>/api.sock`, log `<log dir>/<D>/nydusd.log` unless logging
 * to stdout. argv in upstream's field order:
 * `fuse [--thread-num N] --config C --bootstrap B --mountpoint M --apisock A
 * --log-level L [--log-rotation-size S] [--log-file F] --failover-policy P`.
 * Readiness and control go through src/api/client.ts (GET /api/v1/daemon
 * until RUNNING, as upstream 20 × (100 ms + jitter) after the socket wait).
 *
 * Records (daemon + instance) live in the MetaStore; on start-up
 * `recover()` re-adopts daemons that answer RUNNING and, with
 * `recover_policy = "restart"`, restarts dead ones with the same argv after
 * clearing their vestige (lazy umount of the mountpoint, stale socket);
 * a death while running is handled the same way. Teardown: SIGTERM, wait for
 * the process and the mount to go (then a lazy umount), remove config,
 * socket and log dirs.
 *
 * Differences: daemon_mode `shared` is served by dedicated daemons (logged
 * once); no failover/supervisor (`failover` acts as `restart`); nydusd is
 * started in its own session (upstream: same process group) so a terminal's
 * Ctrl-C on the snapshotter leaves it running, as upstream intends; a daemon
 * still alive 10 s after SIGTERM gets SIGKILL (upstream never sends one).
 */
import { ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NydusdClient } from '../api/client';
import { log } from '../common/log';
import { RAFSV5_SUPER_MAGIC } from '../rafs/format/v5';
import { EROFS_SUPER_MAGIC_V1 } from '../rafs/format/v6';
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

export class DaemonManager {
  private live = new Map<string, Live>();
  private starting = new Map<string, Promise<InstanceRecord>>();
  private closed = false;
  private warnedShared = false;

  constructor(readonly cfg: SnapshotterConfig, readonly store: MetaStore, readonly events: DaemonEvents = {}) {}

  get root(): string {
    return this.cfg.root;
  }

  instance(snapshotId: string): InstanceRecord | undefined {
    return this.store.instances().find((i) => i.snapshotId === snapshotId);
  }

  daemons(): DaemonRecord[] {
    return this.store.daemons();
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
   * The RAFS instance of meta snapshot `metaId`, starting its nydusd when
   * there is none (concurrent callers share one start).
   */
  async ensureInstance(metaId: string, labels: Record<string, string>): Promise<InstanceRecord> {
    if (this.closed) throw new SnapshotError('Unavailable', 'snapshotter is shutting down');
    const have = this.instance(metaId);
    if (have) {
      if (this.cfg.daemonMode === 'none') return have;
      const d = this.store.daemons().find((x) => x.id === have.daemonId);
      if (d) {
        await new NydusdClient(d.apiSock, { userAgent: 'containerd-nydus-grpc' }).waitUntilState('RUNNING', { attempts: 50 });
        return have;
      }
    }
    const pending = this.starting.get(metaId);
    if (pending) return pending;
    const p = this.createInstance(metaId, labels).finally(() => this.starting.delete(metaId));
    this.starting.set(metaId, p);
    return p;
  }

  private async createInstance(metaId: string, labels: Record<string, string>): Promise<InstanceRecord> {
    const bootstrap = bootstrapOf(this.root, metaId);
    const fsVersion = await waitBootstrap(bootstrap);
    const config = this.buildConfig(metaId, labels);
    const imageRef = imageRefOf(labels) ?? '';
    const mnt = path.join(this.root, 'snapshots', metaId, 'mnt');
    if (this.cfg.daemonMode === 'none') {
      const inst: InstanceRecord = { snapshotId: metaId, daemonId: '', imageRef, bootstrap, mountpoint: mnt, fsVersion, config: JSON.stringify(config) };
      this.store.putInstance(inst);
      return inst;
    }
    if (this.cfg.daemonMode === 'shared' && !this.warnedShared) {
      this.warnedShared = true;
      log.warn('daemon_mode shared is served by one dedicated nydusd per image');
    }
    this.copyBlobMeta(metaId);
    const id = newDaemonId();
    const configPath = path.join(this.root, 'config', id, 'config.json');
    const apiSock = path.join(this.root, 'socket', id, 'api.sock');
    writeFileAtomic(configPath, JSON.stringify(config, null, 2));
    fs.mkdirSync(path.dirname(apiSock), { recursive: true, mode: 0o700 });
    fs.mkdirSync(mnt, { recursive: true });
    const d = this.cfg.daemon;
    const argv = ['fuse'];
    if (d.threadsNumber > 0) argv.push('--thread-num', String(d.threadsNumber));
    argv.push('--config', configPath, '--bootstrap', bootstrap, '--mountpoint', mnt, '--apisock', apiSock, '--log-level', this.cfg.log.level);
    if (d.logRotationSize > 0) argv.push('--log-rotation-size', String(d.logRotationSize));
    if (!this.cfg.log.logToStdout) {
      const logDir = path.join(this.cfg.log.dir, id);
      fs.mkdirSync(logDir, { recursive: true });
      argv.push('--log-file', path.join(logDir, 'nydusd.log'));
    }
    argv.push('--failover-policy', d.failoverPolicy);
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

  /** Spawn rec.argv, wait for the socket and RUNNING; rec.pid is set. */
  private async spawnDaemon(rec: DaemonRecord): Promise<void> {
    try { fs.rmSync(rec.apiSock, { force: true }); } catch { /* ignore */ }
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
    const client = new NydusdClient(rec.apiSock, { userAgent: 'containerd-nydus-grpc' });
    try {
      await client.waitUntilState('RUNNING', { attempts: 50, abort: () => exited ?? spawnError });
    } catch (e) {
      throw new SnapshotError('Unavailable', `nydusd ${rec.id} for snapshot ${rec.snapshotId}: ${(e as Error).message}`);
    }
  }

  private onDeath(id: string, child: ChildProcess): void {
    const l = this.live.get(id);
    if (!l || l.child !== child || l.stopping) return;
    this.handleDeath(l);
  }

  private handleDeath(l: Live): void {
    this.live.delete(l.rec.id);
    if (l.timer) clearInterval(l.timer);
    if (this.closed) return;
    log.warn({ daemon: l.rec.id, pid: l.rec.pid }, 'nydusd died');
    this.events.onEvent?.('death', l.rec.id);
    if (this.cfg.daemon.recoverPolicy === 'none') return;
    void this.restart(l.rec).catch((e) => log.error({ daemon: l.rec.id, err: String(e) }, 'restarting nydusd failed'));
  }

  /** Clear the vestige of a dead daemon and start it again with the same argv. */
  async restart(rec: DaemonRecord): Promise<void> {
    if (isMounted(rec.mountpoint)) await lazyUmount(rec.mountpoint);
    await this.spawnDaemon(rec);
    rec.startedAt = Date.now();
    this.store.putDaemon(rec);
    log.info({ daemon: rec.id, pid: rec.pid }, 'nydusd restarted');
    this.events.onEvent?.('restart', rec.id);
  }

  /** Watch a daemon this process did not start (pid polling). */
  private adopt(rec: DaemonRecord): void {
    const l: Live = { rec, stopping: false };
    l.timer = setInterval(() => {
      try {
        process.kill(rec.pid, 0);
      } catch {
        if (!l.stopping && this.live.get(rec.id) === l) this.handleDeath(l);
      }
    }, 1000);
    l.timer.unref();
    this.live.set(rec.id, l);
  }

  /** Start-up: re-adopt daemons answering RUNNING, restart the others (recover_policy restart). */
  async recover(): Promise<void> {
    for (const rec of this.store.daemons()) {
      const client = new NydusdClient(rec.apiSock, { userAgent: 'containerd-nydus-grpc', timeoutMs: 5000 });
      let state = '';
      try {
        state = await client.state();
      } catch {
        state = '';
      }
      if (state === 'RUNNING') {
        log.info({ daemon: rec.id, pid: rec.pid }, 'nydusd re-adopted');
        this.adopt(rec);
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
        await this.restart(rec);
      } catch (e) {
        log.error({ daemon: rec.id, err: String(e) }, 'recovering nydusd failed');
      }
    }
  }

  /** SIGTERM (SIGKILL after 10 s), wait for the mount to go, remove dirs; `forget` drops the records too. */
  private async stopDaemon(rec: DaemonRecord, forget = true): Promise<void> {
    const l = this.live.get(rec.id);
    if (l) {
      l.stopping = true;
      if (l.timer) clearInterval(l.timer);
    }
    const alive = (): boolean => {
      if (!rec.pid) return false;
      if (l?.child) return l.child.exitCode === null && l.child.signalCode === null;
      try { process.kill(rec.pid, 0); return true; } catch { return false; }
    };
    if (alive()) {
      try { process.kill(rec.pid, 'SIGTERM'); } catch { /* gone */ }
      for (let i = 0; i < 200 && alive(); i++) await sleep(50);
      if (alive()) {
        log.warn({ daemon: rec.id, pid: rec.pid }, 'nydusd ignored SIGTERM for 10 s; SIGKILL');
        try { process.kill(rec.pid, 'SIGKILL'); } catch { /* gone */ }
        for (let i = 0; i < 40 && alive(); i++) await sleep(50);
      }
    }
    for (let i = 0; i < 20 && isMounted(rec.mountpoint); i++) await sleep(50);
    if (isMounted(rec.mountpoint)) await lazyUmount(rec.mountpoint);
    this.live.delete(rec.id);
    for (const p of [path.dirname(rec.configPath), path.dirname(rec.apiSock), path.join(this.cfg.log.dir, rec.id)]) {
      try { fs.rmSync(p, { recursive: true, force: true }); } catch (e) { log.warn({ path: p, err: String(e) }, 'cleanup failed'); }
    }
    if (forget) this.store.deleteDaemon(rec.id);
    this.events.onEvent?.('stop', rec.id);
  }

  /** Tear down the RAFS instance of meta snapshot `metaId` (daemon, mount, records). */
  async destroyInstance(metaId: string): Promise<void> {
    const inst = this.instance(metaId);
    if (!inst) {
      const mnt = path.join(this.root, 'snapshots', metaId, 'mnt');
      if (isMounted(mnt)) await lazyUmount(mnt);
      return;
    }
    const rec = this.store.daemons().find((d) => d.id === inst.daemonId);
    if (rec) await this.stopDaemon(rec);
    else if (isMounted(inst.mountpoint)) await lazyUmount(inst.mountpoint);
    this.store.deleteInstance(metaId);
    log.info({ snapshot: metaId, daemon: inst.daemonId || undefined }, 'RAFS instance removed');
  }

  /** Stop watching (and with cleanup_on_close, stop every daemon). */
  async close(): Promise<void> {
    if (this.cfg.cleanupOnClose) {
      for (const i of this.store.instances()) await this.destroyInstance(i.snapshotId).catch(() => undefined);
    }
    this.closed = true;
    for (const l of this.live.values()) {
      if (l.timer) clearInterval(l.timer);
      l.child?.unref();
    }
    this.live.clear();
  }
}
