/**
 * `localfs` storage backend (rafs-spec §7.1 `backend.localfs`): blobs are
 * plain files. The blob path is `blob_file` when set (every blob id maps to
 * it), else `dir/<blob_id>` when that file exists and is not empty, else the
 * first `alt_dirs[i]/<blob_id>` that does. Files are opened once per blob and
 * read with FileHandle positional reads, so I/O runs on the libuv threadpool
 * and never blocks the event loop.
 */
import { DIRECT_IO_ALIGN, openDirect } from '../../common/direct-io';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { ErrnoError, eio, enoent } from '../../common/errno';
import type { LocalFsConfig } from '../../common/config';
import { warnLimited } from '../../common/log';
import { type BackendOptions, type BlobBackend, type ReadOptions, checkBlobId, checkRange } from './backend';

interface Entry {
  fh: fsp.FileHandle;
  path: string;
  /**
   * the file opened again with O_DIRECT, for large reads given a window;
   * undefined where refused. Closed with `fh`, never before a read ends.
   */
  direct: fsp.FileHandle | undefined;
  /** a direct read failed: the rest go through the page cache */
  directFailed: boolean;
}

/** Alignment of direct reads. */
export const LOCALFS_DIRECT_ALIGN = DIRECT_IO_ALIGN;

export class LocalFsBackend implements BlobBackend {
  readonly type = 'localfs';
  private readonly entries = new Map<string, Promise<Entry>>();
  private closed = false;

  constructor(private readonly cfg: Pick<LocalFsConfig, 'blob_file' | 'dir'> & Partial<LocalFsConfig>, private readonly opts: BackendOptions & { directReads?: boolean } = {}) {}

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
          const fh = await fsp.open(p, 'r');
          return { fh, path: p, direct: this.directReads ? await openDirect(p, 'read') : undefined, directFailed: false };
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

  /**
   * Large reads given a window (ReadOptions.window) are read with O_DIRECT:
   * a cold sequential read of a blob then costs no page-cache pages and no
   * copy out of them (the disk's DMA lands in the window), and the
   * compressed blob is not cached by the kernel beside the data it
   * decodes to. Off with `NYDUS_LOCALFS_DIRECT_READS=0`.
   */
  get directAlign(): number | undefined {
    return this.directReads ? LOCALFS_DIRECT_ALIGN : undefined;
  }

  private get directReads(): boolean {
    return this.opts.directReads ?? process.env.NYDUS_LOCALFS_DIRECT_READS !== '0';
  }

  async read(blobId: string, offset: number, length: number, opts?: ReadOptions): Promise<Buffer> {
    checkBlobId(blobId);
    checkRange(blobId, offset, length);
    const into = opts?.into?.length === length ? opts.into : undefined;
    const window = into && opts?.window;
    const m = this.opts.metrics;
    if (!m) return this.readRange(blobId, offset, length, into, window);
    // one attempt per read (localfs does not retry)
    const t0 = performance.now();
    try {
      const b = await this.readRange(blobId, offset, length, into, window);
      m.attempt(length, true, Math.round(performance.now() - t0));
      return b;
    } catch (err) {
      m.attempt(length, false, Math.round(performance.now() - t0));
      throw err;
    }
  }

  private async readRange(blobId: string, offset: number, length: number, into?: Buffer, window?: ReadOptions['window']): Promise<Buffer> {
    const e = await this.entry(blobId);
    const { fh, path: p } = e;
    if (into && window && e.direct && !e.directFailed && directWindow(window, into, offset, length)) {
      if (await this.readDirect(e, blobId, window, offset + length)) return into;
    }
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

  /**
   * Fill `window` from the blob with O_DIRECT, at least up to blob offset
   * `end`. False when the file refused (EINVAL: another alignment, or no
   * O_DIRECT after all; then every later read goes through the page cache)
   * or ended early: the caller reads through the page cache, which reports
   * a real short read.
   */
  private async readDirect(e: Entry, blobId: string, window: { buf: Buffer; at: number }, end: number): Promise<boolean> {
    const { buf, at } = window;
    let done = 0;
    try {
      while (done < buf.length) {
        const { bytesRead } = await e.direct!.read(buf, done, buf.length - done, at + done);
        done += bytesRead;
        if (bytesRead === 0 || done % LOCALFS_DIRECT_ALIGN !== 0) break; // the file's end
      }
    } catch (err) {
      e.directFailed = true;
      warnLimited('localfs.direct', { blobId, err: (err as Error).message }, 'O_DIRECT read of a blob failed: reading through the page cache');
      return false;
    }
    return at + done >= end;
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
      try {
        const opened = await e;
        await opened.fh.close();
        await opened.direct?.close();
      } catch { /* open failed or already closed */ }
    }));
  }
}

/** Whether `window` is aligned as O_DIRECT needs and holds `into` at blob range `offset`+`length`. */
function directWindow(window: { buf: Buffer; at: number }, into: Buffer, offset: number, length: number): boolean {
  const { buf, at } = window;
  return at % LOCALFS_DIRECT_ALIGN === 0 && buf.length % LOCALFS_DIRECT_ALIGN === 0 && at <= offset && offset + length <= at + buf.length
    && into.buffer === buf.buffer && into.byteOffset === buf.byteOffset + (offset - at);
}
