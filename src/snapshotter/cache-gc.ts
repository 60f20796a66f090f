/**
 * Blob cache garbage collection for containerd-nydus-grpc
 * (nydusify-snapshotter.md §3.5): at Cleanup (and at a sync_remove of a Nydus
 * layer) the cache files of every blob that no remaining Nydus snapshot
 * references are deleted from `[cache_manager] cache_dir`:
 * `<blob_id>.blob.data`, `<blob_id>.blob.data.chunk_map`, the older
 * `<blob_id>.chunk_map`, `<blob_id>.blob.meta` and `<blob_id>.blob.digest`.
 *
 * A blob is referenced when
 * - a committed meta-layer snapshot's bootstrap (`fs/image/image.boot`, read
 *   with src/rafs) lists it in its blob table (also an index-alternative
 *   layer's, once index detection has fetched its bootstrap), or
 * - a Nydus data-layer snapshot carries its digest in
 *   `containerd.io/snapshot/cri.layer-digest` (`sha256:<hex>` → `<hex>`;
 *   this protects an image whose meta layer is not committed yet).
 * If a committed meta snapshot's bootstrap cannot be read, the round is
 * skipped: a blob is never deleted on a guess.
 *
 * The whole round is synchronous (store walk, bootstrap reads, readdir,
 * unlink): no gRPC request of this process can interleave, so a blob cannot
 * become referenced between the decision and the unlink. Daemons and mounts
 * of removed images are torn down before a round runs.
 *
 * Differences from upstream: the reference set comes from the bootstraps and
 * labels, not from each daemon's `GET /api/v1/metrics/blobcache` (no
 * round is skipped because a daemon does not answer); files of other shapes
 * (temporary files, names that are not blob ids) are left alone; at most
 * MAX_CACHE_ENTRIES directory entries are looked at per round.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { log } from '../common/log';
import { loadBootstrapFile } from '../rafs/image';
import { CRI_LAYER_DIGEST, isIndexAlternative, isNydusDataLayer, isNydusMetaLayer } from './labels';
import { Kind, MetaStore } from './store';

/** Suffixes of a blob's cache files, longest first (a name matches the first that ends it). */
export const CACHE_FILE_SUFFIXES = ['.blob.data.chunk_map', '.blob.digest', '.blob.data', '.blob.meta', '.chunk_map'];
export const MAX_CACHE_ENTRIES = 1 << 20;
/** Blob ids as nydus-image and nydusify write them (hex digests, or other file-name-safe ids). */
const BLOB_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;

/** `[blobId, suffix]` of a cache file name, or undefined. */
export function cacheFileBlob(name: string): [string, string] | undefined {
  for (const s of CACHE_FILE_SUFFIXES) {
    if (name.length > s.length && name.endsWith(s)) {
      const id = name.slice(0, -s.length);
      return BLOB_ID.test(id) ? [id, s] : undefined;
    }
  }
  return undefined;
}

export interface GcResult {
  /** blob ids whose files were deleted */
  deleted: string[];
  /** why the round was skipped, if it was */
  skipped?: string;
}

export class BlobCacheGc {
  /** blobs whose files were deleted, since start */
  deletedTotal = 0;
  /** unlink failures, since start */
  errorsTotal = 0;
  /** referenced blobs with a data file, at the last round */
  inUse = 0;
  /** blob ids per meta snapshot, keyed by `<id>:<size>:<mtime>` of its bootstrap */
  private readonly memo = new Map<string, string[]>();

  constructor(readonly cacheDir: string, private readonly bootstrapOf: (metaId: string) => string) {}

  /** Blob ids of one bootstrap (memoised), or throws. */
  private blobsOfMeta(id: string): string[] {
    const file = this.bootstrapOf(id);
    const st = fs.statSync(file);
    const key = `${id}:${st.size}:${st.mtimeMs}`;
    const have = this.memo.get(key);
    if (have) return have;
    const ids = loadBootstrapFile(file).sb.blobs.map((b) => b.blobId);
    for (const k of this.memo.keys()) if (k.startsWith(`${id}:`)) this.memo.delete(k);
    this.memo.set(key, ids);
    return ids;
  }

  /** Every blob id a remaining Nydus snapshot references, or a reason it cannot be known. */
  referenced(store: MetaStore): Set<string> | string {
    const out = new Set<string>();
    const live = new Set<string>();
    for (const s of store.walk()) {
      if (isNydusDataLayer(s.labels)) {
        const d = s.labels[CRI_LAYER_DIGEST];
        if (d && d.startsWith('sha256:')) out.add(d.slice(7));
      }
      const metaLike = isNydusMetaLayer(s.labels) || (isIndexAlternative(s.labels) && fs.existsSync(this.bootstrapOf(s.id)));
      if (s.kind === Kind.Committed && metaLike) {
        live.add(s.id);
        try {
          for (const b of this.blobsOfMeta(s.id)) out.add(b);
        } catch (e) {
          return `bootstrap of meta snapshot ${s.id} (${s.name}) is unreadable: ${(e as Error).message}`;
        }
      }
    }
    for (const k of this.memo.keys()) if (!live.has(k.split(':')[0])) this.memo.delete(k);
    return out;
  }

  /** One synchronous round: delete the cache files of unreferenced blobs. */
  run(store: MetaStore): GcResult {
    let names: string[];
    try {
      names = fs.readdirSync(this.cacheDir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { deleted: [] };
      return { deleted: [], skipped: `cannot list ${this.cacheDir}: ${(e as Error).message}` };
    }
    if (names.length > MAX_CACHE_ENTRIES) names = names.slice(0, MAX_CACHE_ENTRIES);
    const refs = this.referenced(store);
    if (typeof refs === 'string') {
      log.warn({ reason: refs }, 'blob cache GC skipped');
      return { deleted: [], skipped: refs };
    }
    const victims = new Map<string, string[]>();
    const present = new Set<string>();
    for (const n of names) {
      const m = cacheFileBlob(n);
      if (!m) continue;
      if (refs.has(m[0])) {
        if (m[1] === '.blob.data') present.add(m[0]);
        continue;
      }
      const files = victims.get(m[0]) ?? [];
      files.push(n);
      victims.set(m[0], files);
    }
    this.inUse = present.size;
    const deleted: string[] = [];
    for (const [id, files] of victims) {
      let ok = true;
      for (const f of files) {
        const p = path.join(this.cacheDir, f);
        try {
          if (!fs.lstatSync(p).isFile()) continue;
          fs.unlinkSync(p);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
          ok = false;
          this.errorsTotal++;
          log.warn({ file: p, err: String(e) }, 'deleting a cache file failed');
        }
      }
      if (ok) deleted.push(id);
    }
    this.deletedTotal += deleted.length;
    if (deleted.length) log.info({ blobs: deleted, cache_dir: this.cacheDir }, 'unused cache blobs deleted');
    return { deleted };
  }

  /** Allocated bytes of the cache dir's regular files (one level, bounded). */
  usageBytes(): number {
    let total = 0;
    let names: string[] = [];
    try {
      names = fs.readdirSync(this.cacheDir).slice(0, MAX_CACHE_ENTRIES);
    } catch {
      return 0;
    }
    for (const n of names) {
      try {
        const st = fs.lstatSync(path.join(this.cacheDir, n));
        if (st.isFile()) total += st.blocks * 512;
      } catch {
        /* gone */
      }
    }
    return total;
  }
}
