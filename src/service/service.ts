/**
 * The daemon behind the HTTP API: the Vfs, the state machine, the mount
 * table with metrics and descriptors (backend_collection). Mount/umount/
 * remount are serialized (one at a time) like upstream's FSM thread.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseNydusdConfig, redactSecrets, type ConfigV2 } from '../common/config';
import { ErrnoError } from '../common/errno';
import { log } from '../common/log';
import { RafsFs } from '../rafs/fs';
import { createBackend, createBlobDevice } from '../storage/factory';
import type { BlobcacheMetrics } from '../storage/cache/metrics';
import type { BlobBackend } from '../storage/backend/backend';
import { loadBootstrapFileAsync } from '../rafs/image';
import type { FileSystem } from '../common/filesystem';
import type { CachePolicy } from '../virtiofs/passthrough/passthrough-fs';
import type { Vfs } from '../virtiofs/vfs/vfs';
import { FsIoStats, withMetrics } from './metrics';
import { BackendMetrics, metricsBackendType } from '../storage/backend/metrics';
import { planPrefetch } from './prefetch';
import { BlobMetaTables } from '../rafs/blob-meta-tables';
import { DaemonStateMachine } from './state';
import { VERSION } from './version';

export type BackendType = 'Rafs' | 'PassthroughFs';

/** How long umount/remount wait for requests in flight before answering (the close still waits for them). */
export const DRAIN_WAIT_MS = 5000;

export interface MountCmd {
  source: string;
  fs_type: string;
  config: string;
  prefetch_files?: string[];
}

export interface MountedInstance {
  mountpoint: string;
  backendType: BackendType;
  mountedTime: Date;
  /** redacted config (RAFS), null for the passthrough */
  config: ConfigV2 | null;
  fs: FileSystem;
  stats: FsIoStats;
  backend?: BackendMetrics;
  workDir?: string;
  /** the storage backend (RAFS), for run-time credential updates */
  storage?: BlobBackend;
  /** exact blob cache counters of the instance's device (RAFS with a blobcache) */
  blobcache?: BlobcacheMetrics;
  close(): Promise<void>;
}

export interface DaemonServiceOptions {
  id?: string;
  supervisor?: string;
  /** passthrough cache policy; `none` also means direct I/O on RAFS */
  cachePolicy?: CachePolicy;
  /** called by PUT /api/v1/daemon/exit after the 204 went out (default: SIGTERM to self) */
  onExit?: () => void;
}

export function fsBackendType(t: string): BackendType {
  switch (t) {
    case 'rafs': return 'Rafs';
    case 'passthrough': case 'passthroughfs': case 'passthrough_fs': return 'PassthroughFs';
    default: throw new Error(`invalid fs type ${JSON.stringify(t)}`);
  }
}

/** Build a RAFS instance whose backend reads are counted. */
export async function createRafsInstance(mountpoint: string, bootstrap: string, cfg: ConfigV2, prefetchFiles?: string[], opts: { directIo?: boolean } = {}): Promise<MountedInstance> {
  // read without blocking the loop: API callers and running guests share it
  const metas = new BlobMetaTables();
  const { boot, sb, inlineBlob } = await loadBootstrapFileAsync(bootstrap, { blobMeta: (info) => metas.get(info) });
  const bm = new BackendMetrics(metricsBackendType(inlineBlob ? 'localfs' : cfg.backend.type), mountpoint);
  const backend = createBackend(cfg, { blobFile: inlineBlob, metrics: bm });
  const workDir = cfg.cache.type === 'blobcache' || cfg.cache.type === 'filecache' ? cfg.cache.filecache?.work_dir : undefined;
  // v6 blobs whose chunks the bootstrap does not list: their blob.meta comes from the cache, the image dir or the backend
  await metas.start(sb, { backend, workDir, dirs: [path.dirname(bootstrap)] });
  const device = createBlobDevice(cfg, sb.blobs, { backend, chunks: () => sb.chunkRecords() });
  const rafs = new RafsFs(sb, device, { bootstrap: boot, enableXattr: cfg.rafs.enable_xattr, directIo: opts.directIo });
  const pf = cfg.rafs.prefetch;
  if (prefetchFiles?.length || pf.enable) {
    const plan = planPrefetch(sb, { files: prefetchFiles, all: pf.enable && pf.prefetch_all });
    log.info({ bootstrap, chunks: plan.chunks.length, wholeBlobs: plan.wholeBlobs }, 'prefetch started');
    device.prefetch(plan.chunks);
    if (plan.wholeBlobs) device.prefetchAll();
  }
  const stats = new FsIoStats(mountpoint, cfg.rafs);
  log.info({ bootstrap, mountpoint, version: sb.meta.version, blobs: sb.blobs.length }, 'rafs instance created');
  return {
    mountpoint, backendType: 'Rafs', mountedTime: new Date(), config: redactSecrets(cfg),
    fs: withMetrics(rafs, stats), stats, backend: bm, workDir, storage: backend,
    blobcache: device.cacheMetrics, close: () => { metas.stop(); return device.close(); },
  };
}

export async function createPassthroughInstance(mountpoint: string, dir: string, cachePolicy: CachePolicy = 'auto'): Promise<MountedInstance> {
  const st = await fs.promises.stat(dir);
  if (!st.isDirectory()) throw new ErrnoError('ENOTDIR', `${dir} is not a directory`);
  // loaded with the first passthrough mount (and with it the blocking-call pool): RAFS daemons never need it
  const { PassthroughFs } = require('../virtiofs/passthrough/passthrough-fs') as typeof import('../virtiofs/passthrough/passthrough-fs');
  const pfs = new PassthroughFs(dir, { cachePolicy });
  const stats = new FsIoStats(mountpoint);
  return {
    mountpoint, backendType: 'PassthroughFs', mountedTime: new Date(), config: null,
    fs: withMetrics(pfs, stats), stats, close: async () => pfs.close(),
  };
}

/** time-crate style: `2026-07-01 10:00:00.123456789 +00:00:00` */
export function formatMountedTime(d: Date): string {
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${d.getUTCFullYear()}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}.${p(d.getUTCMilliseconds(), 3)}000000 +00:00:00`;
}

const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

export class DaemonService {
  readonly state = new DaemonStateMachine();
  readonly instances = new Map<string, MountedInstance>();
  /**
   * `/api/v1/config` values, keyed `<mountpoint id>:<key>` as upstream
   * (`registry_auth`, `proxy_url`, `dragonfly_scheduler_endpoint`).
   */
  readonly runtimeConfig = new Map<string, string>();
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly vfs: Vfs, readonly opts: DaemonServiceOptions = {}) {}

  private serial<T>(fn: () => Promise<T> | T): Promise<T> {
    const r = this.queue.then(fn, fn);
    this.queue = r.catch(() => undefined);
    return r;
  }

  /**
   * PUT /api/v1/config: store `values` under `<id>:`; `registry_auth` reaches
   * the backend of the filesystem mounted at `id` at once (EIO when it is not
   * base64 of user:pass; nothing is stored then). Without `id` the keys are
   * stored as `:key` and reach no backend (upstream's behaviour).
   */
  updateConfig(id: string, values: Record<string, string>): void {
    const auth = values.registry_auth;
    if (auth !== undefined && id) this.instances.get(id)?.storage?.updateAuth?.(auth);
    for (const [k, v] of Object.entries(values)) this.runtimeConfig.set(`${id}:${k}`, v);
  }

  /** Add an already built instance (startup mounts from the command line). */
  attach(inst: MountedInstance): void {
    inst.stats.vfsIndex = this.vfs.mount(inst.mountpoint, inst.fs);
    this.instances.set(inst.mountpoint, inst);
  }

  private build(mountpoint: string, cmd: MountCmd): Promise<MountedInstance> {
    const type = fsBackendType(cmd.fs_type);
    if (type === 'Rafs') {
      const cfg = parseNydusdConfig(cmd.config);
      for (const f of cmd.prefetch_files ?? []) if (!path.isAbsolute(f)) throw new Error(`prefetch file ${f} is not an absolute path`);
      return createRafsInstance(mountpoint, cmd.source, cfg, cmd.prefetch_files, { directIo: this.opts.cachePolicy === 'none' });
    }
    return createPassthroughInstance(mountpoint, cmd.source, this.opts.cachePolicy);
  }

  /** POST /mount. Errors are Error with upstream-like text (the caller wraps them). */
  mount(mountpoint: string, cmd: MountCmd): Promise<void> {
    return this.serial(async () => {
      if (this.instances.has(mountpoint)) throw new AlreadyExists();
      const inst = await this.build(mountpoint, cmd);
      try {
        this.attach(inst);
      } catch (e) {
        await inst.close().catch(() => undefined);
        throw e;
      }
      log.info({ mountpoint, fs_type: cmd.fs_type, source: cmd.source }, 'filesystem mounted');
    });
  }

  /** PUT /mount: swap the filesystem under an existing mountpoint (old one back on failure). */
  remount(mountpoint: string, cmd: MountCmd): Promise<void> {
    return this.serial(async () => {
      const old = this.instances.get(mountpoint);
      if (!old) throw new NotFound();
      const inst = await this.build(mountpoint, cmd);
      const drained = this.vfs.umountAndDrain(mountpoint);
      this.instances.delete(mountpoint);
      try {
        this.attach(inst);
      } catch (e) {
        await inst.close().catch(() => undefined);
        // the old filesystem was never closed: put it back (requests in flight on it finish as EIO)
        this.attach(old);
        throw e;
      }
      await this.retire(old, drained);
      log.info({ mountpoint, source: cmd.source }, 'filesystem remounted');
    });
  }

  /** DELETE /mount; false when nothing was mounted there (answered 204 anyway). */
  umount(mountpoint: string): Promise<boolean> {
    return this.serial(async () => {
      const inst = this.instances.get(mountpoint);
      if (!inst) return false;
      const drained = this.vfs.umountAndDrain(mountpoint);
      this.instances.delete(mountpoint);
      await this.retire(inst, drained);
      log.info({ mountpoint }, 'filesystem unmounted');
      return true;
    });
  }

  /**
   * Close an unmounted instance once no request uses it any more (its fds and
   * cache files may still be read or written by requests in flight). Waits
   * up to `DRAIN_WAIT_MS` for that; a request stuck longer (a slow disk) does
   * not hold up the API: the close then happens when it finishes.
   */
  private async retire(inst: MountedInstance, drained: Promise<unknown>): Promise<void> {
    const { mountpoint } = inst;
    const closed = drained.then(() => inst.close()).catch((e: unknown) => log.warn({ mountpoint, err: errText(e) }, 'closing the filesystem failed'));
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => { timer = setTimeout(() => resolve('late'), DRAIN_WAIT_MS); });
    const r = await Promise.race([closed, late]);
    clearTimeout(timer);
    if (r === 'late') log.warn({ mountpoint, waitMs: DRAIN_WAIT_MS }, 'requests still in flight on an unmounted filesystem; it is closed when they finish');
  }

  async closeAll(): Promise<void> {
    for (const mp of [...this.instances.keys()]) await this.umount(mp).catch(() => undefined);
  }

  daemonInfo(withBackends: boolean): Record<string, unknown> {
    const bc: Record<string, unknown> = {};
    for (const [mp, i] of this.instances) {
      bc[mp] = { backend_type: i.backendType, mountpoint: mp, mounted_time: formatMountedTime(i.mountedTime), config: i.config };
    }
    return {
      version: { ...VERSION },
      id: this.opts.id ?? null,
      supervisor: this.opts.supervisor ?? null,
      state: this.state.state,
      backend_collection: withBackends ? bc : null,
    };
  }
}

export class AlreadyExists extends Error {
  constructor() { super('object or filesystem already exists'); }
}
export class NotFound extends Error {
  constructor() { super('object or filesystem not found'); }
}
