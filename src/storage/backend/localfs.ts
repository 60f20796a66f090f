/**
 * `localfs` storage backend (rafs-spec §7.1 `backend.localfs`): blobs are
 * plain files. The blob path is `blob_file` when set (every blob id maps to
 * it), else `dir/<blob_id>` when that file exists and is not empty, else the
 * first `alt_dirs[i]/<blob_id>` that does. Files are opened once per blob and
 * read with FileHandle positional reads, so I/O runs on the libuv threadpool
 * and never blocks the event loop.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { ErrnoError, eio, enoent } from '../../common/errno';
import type { LocalFsConfig } from '../../common/config';
import { type BackendOptions, type BlobBackend, type ReadOptions, checkBlobId, checkRange } from './backend';

interface Entry {
  fh: fsp.FileHandle;
  path: string;
}

export class LocalFsBackend implements BlobBackend {
  readonly type = 'localfs';
  private readonly entries = new Map<string, Promise<Entry>>();
  private closed = false;

  constructor(private readonly cfg: Pick<LocalFsConfig, 'blob_file' | 'dir'> & Partial<LocalFsConfig>, private readonly opts: BackendOptions = {}) {}

  /** Resolve the file holding `blobId` (see module doc); ENOENT when nowhere. */
  async blobPath(blobId: string): Promise<string> {
    checkBlobId(blobId);
    if (this.cfg.blob_file) return this.cfg.blob_file;
    const usable = async (p: string) => {
      try {
        const st = await fsp.stat(p);
        return st.isFile() && st.size > 0;
      } catch {
        return false;
      }
    };
    const dirs = [this.cfg.dir, ...(this.cfg.alt_dirs ?? [])].filter((d) => d);
    for (const d of dirs) {
      const p = path.join(d, blobId);
      if (await usable(p)) return p;
    }
    throw enoent(`blob ${blobId} not found in localfs dir ${JSON.stringify(this.cfg.dir)}${this.cfg.alt_dirs?.length ? ` or alt_dirs ${JSON.stringify(this.cfg.alt_dirs)}` : ''}`);
  }

  private entry(blobId: string): Promise<Entry> {
    if (this.closed) return Promise.reject(eio(`localfs backend is closed (blob ${blobId})`));
    let e = this.entries.get(blobId);
    if (!e) {
      e = (async () => {
        const p = await this.blobPath(blobId);
        try {
          return { fh: await fsp.open(p, 'r'), path: p };
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
          throw new ErrnoError(code, `failed to open blob ${blobId} at ${p}: ${(err as Error).message}`, { cause: err });
        }
      })();
      this.entries.set(blobId, e);
      // a failed open is not cached: the file may appear later
      e.catch(() => { if (this.entries.get(blobId) === e) this.entries.delete(blobId); });
    }
    return e;
  }

  async prepare(blobId: string): Promise<void> {
    await this.entry(blobId);
  }

  /** each read is one pread loop awaited to its end: nothing writes to `into` afterwards */
  readonly readsInto = true;

  async read(blobId: string, offset: number, length: number, opts?: ReadOptions): Promise<Buffer> {
    checkBlobId(blobId);
    checkRange(blobId, offset, length);
    const into = opts?.into?.length === length ? opts.into : undefined;
    const m = this.opts.metrics;
    if (!m) return this.readRange(blobId, offset, length, into);
    // one attempt per read (localfs does not retry)
    const t0 = performance.now();
    try {
      const b = await this.readRange(blobId, offset, length, into);
      m.attempt(length, true, Math.round(performance.now() - t0));
      return b;
    } catch (err) {
      m.attempt(length, false, Math.round(performance.now() - t0));
      throw err;
    }
  }

  private async readRange(blobId: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const { fh, path: p } = await this.entry(blobId);
    const buf = into ?? Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      let n: number;
      try {
        ({ bytesRead: n } = await fh.read(buf, done, length - done, offset + done));
      } catch (err) {
        throw eio(`failed to read blob ${blobId} (${p}) range ${offset}+${length}: ${(err as Error).message}`, err);
      }
      if (n === 0) throw eio(`short read from blob ${blobId} (${p}): range ${offset}+${length} got ${done} bytes`);
      done += n;
    }
    return buf;
  }

  async size(blobId: string): Promise<number> {
    const { fh } = await this.entry(blobId);
    return (await fh.stat()).size;
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.entries.values()];
    this.entries.clear();
    await Promise.all(all.map(async (e) => {
      try { await (await e).fh.close(); } catch { /* open failed or already closed */ }
    }));
  }
}
