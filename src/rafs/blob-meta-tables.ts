/**
 * The blob.meta tables a mounted v6 image needs (blobs whose chunks its
 * bootstrap does not list), loaded in the background at mount as upstream
 * (storage-backends §10.18): the mount waits for the first attempt only; a
 * read that needs a table still missing gets EIO and starts another load
 * (at most one every 2 s per blob), so an image mounted while its registry
 * is down starts working once the registry is back.
 */
import { warnLimited } from '../common/log';
import type { BlobInfo } from '../storage/format/types';
import type { BlobMeta } from '../storage/blob/blob-file';
import { type MetaLoadOptions, loadBlobMeta, needsBlobMeta } from '../storage/blob/meta-loader';
import type { RafsSuper } from './metadata/types';

const RETRY_GAP_MS = 2000;

export class BlobMetaTables {
  private readonly tables = new Map<number, BlobMeta>();
  private readonly loading = new Map<number, Promise<void>>();
  private readonly lastTry = new Map<number, number>();
  private opts: MetaLoadOptions | undefined;
  private stopped = false;

  /** Table of blob `info`, or undefined (a load is started) while it is missing. */
  get(info: BlobInfo): BlobMeta | undefined {
    const t = this.tables.get(info.blobIndex);
    if (!t && this.opts && !this.stopped && Date.now() - (this.lastTry.get(info.blobIndex) ?? 0) >= RETRY_GAP_MS) void this.load(info);
    return t;
  }

  /** Start loading what `sb` needs; resolves after the first attempt of each. */
  async start(sb: RafsSuper, opts: MetaLoadOptions): Promise<void> {
    if (sb.meta.version !== 6) return;
    const inBoot = sb.chunkCountsByBlob?.() ?? [];
    const need = sb.blobs.filter((b) => needsBlobMeta(b, inBoot[b.blobIndex] ?? 0));
    if (!need.length) return;
    this.opts = opts;
    await Promise.all(need.map((b) => this.load(b)));
  }

  private load(info: BlobInfo): Promise<void> {
    let p = this.loading.get(info.blobIndex);
    if (p) return p;
    this.lastTry.set(info.blobIndex, Date.now());
    p = loadBlobMeta(info, this.opts!)
      .then((m) => { if (!this.stopped) this.tables.set(info.blobIndex, m); })
      .catch((err) => { warnLimited('rafs.blobmeta', { blobId: info.blobId, err: (err as Error).message }, 'cannot load blob.meta yet: reads of its chunks fail until it loads'); })
      .finally(() => { this.loading.delete(info.blobIndex); this.lastTry.set(info.blobIndex, Date.now()); });
    this.loading.set(info.blobIndex, p);
    return p;
  }

  stop(): void {
    this.stopped = true;
  }
}
