/**
 * The snapshotter: containerd's overlayfs snapshotter semantics over the
 * MetaStore and `<root>/snapshots/<id>/{fs,work}`, plus upstream
 * nydus-snapshotter's remote-layer protocol (kata-contract.md §5.3,
 * nydusify-snapshotter.md §3.5, §3.7):
 *
 * - Prepare with `containerd.io/snapshot.ref=<chainID>` and the layer
 *   annotation `containerd.io/snapshot/nydus-blob`: committed at once as
 *   `<chainID>` with the labels, answered AlreadyExists (containerd skips
 *   fetch and apply). A target that already exists: AlreadyExists at once.
 * - The meta layer (`nydus-bootstrap`) and every non-Nydus layer: native
 *   prepare, containerd applies the tar (`image/image.boot` lands in `fs/`).
 * - Index detection (`[experimental] enable_index_detect`, index-detect.ts):
 *   a layer Prepare of an image whose index has a Nydus alternative is
 *   committed at once (labelled `nydus-index-alternative`, AlreadyExists);
 *   the container Prepare fetches the alternative's bootstrap into the top
 *   such layer, which then serves as the meta snapshot.
 * - Prepare (active) or View whose ancestor is a committed meta layer: the
 *   RAFS instance of that meta snapshot is started (DaemonManager) and the
 *   remote mount returned; Mounts of such a snapshot waits for it.
 * - Remove deletes metadata; the directory goes at once with `sync_remove`
 *   (a meta snapshot's daemon or shared-daemon mount too, and the cache
 *   files of blobs nothing uses any more), otherwise at Cleanup, which tears
 *   down RAFS instances of removed meta snapshots, removes every directory no
 *   snapshot owns and runs the blob cache GC (cache-gc.ts).
 *
 * Differences from upstream: a View on a Nydus data layer is refused with
 * FailedPrecondition before anything is created; usage of committed layers is
 * what `du` saw at commit (no blob-cache accounting).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { log } from '../common/log';
import { SnapshotterConfig } from './config';
import { DaemonManager, isMounted, lazyUmount } from './daemon';
import { SnapshotError, alreadyExists, failedPrecondition } from './errors';
import { compileFilters } from './filters';
import { IndexDetector } from './index-detect';
import { NYDUS_INDEX_ALTERNATIVE, OVERLAY_VOLATILE, TARGET_SNAPSHOT_REF, isIndexAlternative, isNydusDataLayer, isNydusMetaLayer } from './labels';
import { Mount, nativeMounts, remoteMounts, snapshotDir, upperPath, workPath } from './mounts';
import { Info, KIND_NAMES, Kind, MetaStore, Snapshot, Usage } from './store';

/** du: apparent size in bytes and inode count, hard links counted once (as containerd's fs.DiskUsage). */
export function diskUsage(dir: string): Usage {
  const seen = new Set<string>();
  let size = 0;
  let inodes = 0;
  const walk = (p: string): void => {
    let st: fs.BigIntStats;
    try {
      st = fs.lstatSync(p, { bigint: true });
    } catch {
      return;
    }
    const k = `${st.dev}:${st.ino}`;
    if (!seen.has(k)) {
      seen.add(k);
      inodes++;
      size += Number(st.blocks) * 512;
    }
    if (st.isDirectory()) {
      let names: string[] = [];
      try {
        names = fs.readdirSync(p);
      } catch {
        return;
      }
      for (const n of names) walk(path.join(p, n));
    }
  };
  walk(dir);
  return { size, inodes };
}

export interface OperationHook {
  (op: string, ms: number): void;
}

export class Snapshotter {
  readonly store: MetaStore;
  readonly daemons: DaemonManager;
  /** metrics hook: operation name and elapsed milliseconds */
  onOperation?: OperationHook;
  /** `[experimental] enable_index_detect` */
  readonly indexDetector?: IndexDetector;

  constructor(readonly cfg: SnapshotterConfig, store?: MetaStore, daemons?: DaemonManager) {
    fs.mkdirSync(path.join(cfg.root, 'snapshots'), { recursive: true, mode: 0o700 });
    this.store = store ?? new MetaStore(path.join(cfg.root, 'metadata.db'));
    this.daemons = daemons ?? new DaemonManager(cfg, this.store);
    if (cfg.experimental?.enableIndexDetect) this.indexDetector = new IndexDetector({ insecure: cfg.remote.skipSslVerify });
  }

  get root(): string {
    return this.cfg.root;
  }

  private timed<T>(op: string, fn: () => Promise<T>): Promise<T> {
    const t0 = process.hrtime.bigint();
    return fn().finally(() => this.onOperation?.(op, Number(process.hrtime.bigint() - t0) / 1e6));
  }

  private volatile(labels: Record<string, string>): boolean {
    return this.cfg.snapshot.enableOverlayfsVolatile || labels[OVERLAY_VOLATILE] !== undefined;
  }

  /** Create the row and the directories (fs, and work for active), like containerd's createSnapshot. */
  private createSnapshot(kind: Kind, key: string, parent: string, labels: Record<string, string>): Snapshot {
    const base = path.join(this.root, 'snapshots');
    const tmp = fs.mkdtempSync(path.join(base, 'new-'));
    try {
      fs.mkdirSync(path.join(tmp, 'fs'), { mode: 0o755 });
      if (kind === Kind.Active) fs.mkdirSync(path.join(tmp, 'work'), { mode: 0o711 });
      return this.store.tx(() => {
        const s = this.store.create(kind, key, parent, labels);
        if (s.parentIds.length > 0) {
          try {
            const st = fs.statSync(upperPath(this.root, s.parentIds[0]));
            fs.chownSync(path.join(tmp, 'fs'), st.uid, st.gid);
          } catch {
            /* parent dir gone: keep root ownership */
          }
        }
        const dst = snapshotDir(this.root, s.id);
        fs.rmSync(dst, { recursive: true, force: true }); // a stale dir of a crashed run
        fs.renameSync(tmp, dst);
        return s;
      });
    } catch (e) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
  }

  /**
   * The snapshot whose bootstrap serves `s`: the nearest committed meta-layer
   * ancestor, else (index detection) the nearest ancestor marked as having a
   * Nydus alternative, whose bootstrap is fetched now if it is not there yet.
   */
  private async findMeta(s: Snapshot): Promise<(Info & { id: string }) | undefined> {
    const infos = s.parentIds.map((id) => this.store.infoById(id));
    const meta = infos.find((i) => i && i.kind === Kind.Committed && isNydusMetaLayer(i.labels));
    if (meta || !this.indexDetector) return meta;
    const alt = infos.find((i) => i && i.kind === Kind.Committed && isIndexAlternative(i.labels));
    if (!alt) return undefined;
    await this.indexDetector.fetchMetadata(alt.labels, snapshotDir(this.root, alt.id));
    return alt;
  }

  /** Index detection: whether the layer of this Prepare belongs to an image with a Nydus alternative. */
  private async hasIndexAlternative(labels: Record<string, string>): Promise<boolean> {
    if (!this.indexDetector || isNydusMetaLayer(labels)) return false;
    return this.indexDetector.check(labels);
  }

  private async remote(s: Snapshot, meta: Info & { id: string }, labels: Record<string, string>): Promise<Mount[]> {
    const inst = await this.daemons.ensureInstance(meta.id, meta.labels);
    const kataMode = this.cfg.snapshot.enableNydusOverlayfs || this.cfg.daemonMode === 'none';
    return remoteMounts({
      root: this.root,
      snapshot: s,
      rafsMountpoint: inst.mountpoint,
      volatile: this.volatile(labels),
      kata: kataMode
        ? {
            overlayfsPath: this.cfg.snapshot.nydusOverlayfsPath,
            extra: { source: inst.bootstrap, config: inst.config, snapshotdir: snapshotDir(this.root, s.id), fs_version: inst.fsVersion },
          }
        : undefined,
    });
  }

  prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.timed('prepare', async () => {
      const target = labels[TARGET_SNAPSHOT_REF];
      if (target !== undefined && target !== '' && this.store.lookup(target)) throw alreadyExists(`target snapshot ${JSON.stringify(target)}`);
      const s = this.createSnapshot(Kind.Active, key, parent, labels);
      const alternative = target && !isNydusDataLayer(labels) ? await this.hasIndexAlternative(labels).catch(() => false) : false;
      if (target && (isNydusDataLayer(labels) || alternative)) {
        const committed = alternative ? { ...labels, [NYDUS_INDEX_ALTERNATIVE]: 'true' } : labels;
        try {
          this.commitNow(target, key, committed);
        } catch (e) {
          this.rollback(key, s.id);
          throw e;
        }
        log.debug({ key, target, alternative }, 'layer committed as a remote snapshot');
        throw alreadyExists(`target snapshot ${JSON.stringify(target)}`);
      }
      if (!target) return this.mountsOfNew(key, s, labels, this.volatile(labels));
      return nativeMounts(this.root, s, this.volatile(labels));
    });
  }

  /** Remote mounts of a new snapshot that a meta (or index-alternative) ancestor serves, else native ones; a failure removes it. */
  private async mountsOfNew(key: string, s: Snapshot, labels: Record<string, string>, volatile: boolean): Promise<Mount[]> {
    try {
      const meta = await this.findMeta(s);
      if (meta) return await this.remote(s, meta, labels);
    } catch (e) {
      this.rollback(key, s.id);
      throw e;
    }
    return nativeMounts(this.root, s, volatile);
  }

  view(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.timed('view', async () => {
      if (parent) {
        const p = this.store.lookup(parent);
        if (p && p.kind === Kind.Committed && isNydusDataLayer(p.info.labels)) {
          throw failedPrecondition(`parent ${JSON.stringify(parent)} is a Nydus data layer and cannot be viewed`);
        }
      }
      const s = this.createSnapshot(Kind.View, key, parent, labels);
      return this.mountsOfNew(key, s, labels, false);
    });
  }

  private rollback(key: string, id: string): void {
    try {
      this.store.remove(key);
    } catch {
      /* already gone */
    }
    fs.rmSync(snapshotDir(this.root, id), { recursive: true, force: true });
  }

  mounts(key: string): Promise<Mount[]> {
    return this.timed('mounts', async () => {
      const s = this.store.getSnapshot(key);
      const info = this.store.getInfo(key).info;
      const meta = await this.findMeta(s);
      if (meta) return this.remote(s, meta, info.labels);
      return nativeMounts(this.root, s, this.volatile(info.labels));
    });
  }

  private commitNow(name: string, key: string, labels: Record<string, string>): void {
    const s = this.store.lookup(key);
    const usage = s && s.kind === Kind.Active ? diskUsage(upperPath(this.root, s.id)) : { size: 0, inodes: 0 };
    this.store.commitActive(key, name, usage, labels);
  }

  commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    return this.timed('commit', async () => {
      this.commitNow(name, key, labels);
      // the workdir is of no use once committed
      const s = this.store.lookup(name);
      if (s) fs.rmSync(workPath(this.root, s.id), { recursive: true, force: true });
    });
  }

  stat(key: string): Promise<Info> {
    return this.timed('stat', async () => this.store.getInfo(key).info);
  }

  update(info: { name: string; labels: Record<string, string> }, fieldpaths: string[]): Promise<Info> {
    return this.timed('update', async () => this.store.updateInfo(info, fieldpaths));
  }

  usage(key: string): Promise<Usage> {
    return this.timed('usage', async () => {
      const { id, info, usage } = this.store.getInfo(key);
      if (info.kind === Kind.Active) return diskUsage(upperPath(this.root, id));
      return usage;
    });
  }

  list(filters: string[]): Promise<Info[]> {
    return this.timed('list', async () => {
      const match = compileFilters(filters);
      const out: Info[] = [];
      for (const i of this.store.walk()) {
        if (match({ name: i.name, parent: i.parent, kind: KIND_NAMES[i.kind], labels: i.labels })) out.push(i);
      }
      return out;
    });
  }

  remove(key: string): Promise<void> {
    return this.timed('remove', async () => {
      const before = this.store.lookup(key);
      const { id } = this.store.remove(key);
      if (this.cfg.snapshot.syncRemove) {
        await this.removeDir(id);
        const l = before?.info.labels ?? {};
        if (isNydusMetaLayer(l) || isNydusDataLayer(l) || isIndexAlternative(l)) this.gcBlobs();
      }
    });
  }

  /** One blob cache GC round (cache-gc.ts), unless `[cache_manager] disable`. */
  gcBlobs(): void {
    if (this.cfg.cacheManager.disable) return;
    try {
      this.daemons.cacheGc.run(this.store);
    } catch (e) {
      log.warn({ err: String(e) }, 'blob cache GC failed');
    }
  }

  private async removeDir(id: string): Promise<void> {
    await this.daemons.destroyInstance(id);
    const dir = snapshotDir(this.root, id);
    for (const m of ['mnt', 'fs']) {
      const p = path.join(dir, m);
      if (isMounted(p)) await lazyUmount(p);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }

  /**
   * Containerd GC's Cleanup: tear down the RAFS instances of removed meta
   * snapshots (dedicated nydusd stopped, or the shared daemon's API mount
   * deleted, the shared daemon itself once it serves nothing), remove every
   * snapshot directory no snapshot owns (unmounting what is mounted there),
   * then delete the cache files of blobs no remaining Nydus snapshot uses.
   */
  cleanup(): Promise<void> {
    return this.timed('cleanup', async () => {
      const ids = this.store.ids();
      const base = path.join(this.root, 'snapshots');
      for (const inst of this.store.instances()) {
        if (ids.has(inst.snapshotId)) continue;
        try {
          await this.daemons.destroyInstance(inst.snapshotId);
        } catch (e) {
          log.warn({ snapshot: inst.snapshotId, err: String(e) }, 'tearing down a RAFS instance failed');
        }
      }
      await this.daemons.stopIdleShared().catch((e) => log.warn({ err: String(e) }, 'stopping the idle shared nydusd failed'));
      for (const name of fs.readdirSync(base)) {
        if (ids.has(name)) continue;
        // (a `new-*` temp dir exists only inside one synchronous create call: any seen here is stale)
        try {
          await this.removeDir(name);
        } catch (e) {
          log.warn({ dir: name, err: String(e) }, 'cleanup of a snapshot directory failed');
        }
      }
      this.gcBlobs();
    });
  }

  async close(): Promise<void> {
    await this.daemons.close();
    this.store.close();
  }
}

export { SnapshotError };
