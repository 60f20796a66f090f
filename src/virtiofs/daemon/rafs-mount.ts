/**
 * Create a RAFS instance (bootstrap + config → blob device → RafsFs), start
 * its prefetch, and hand back what the daemon must close at umount. Shared by
 * the FUSE and virtio-fs modes (and later the API's POST /mount).
 */
import * as fs from 'node:fs';
import type { ConfigV2 } from '../../common/config';
import { log } from '../../common/log';
import { RafsFs } from '../../rafs/fs';
import { createBlobDevice } from '../../storage/factory';
import { loadBootstrapFile } from '../../storage/image';
import { prefetchChunks } from './prefetch';

export interface RafsInstance {
  fs: RafsFs;
  close(): Promise<void>;
}

export function readPrefetchList(file: string | undefined): string[] | undefined {
  if (!file) return undefined;
  return fs.readFileSync(file, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
}

export function createRafs(bootstrap: string, cfg: ConfigV2, prefetchFiles?: string[], opts: { directIo?: boolean } = {}): RafsInstance {
  const { boot, sb, inlineBlob } = loadBootstrapFile(bootstrap);
  const device = createBlobDevice(cfg, sb.blobs, { blobFile: inlineBlob });
  const rafs = new RafsFs(sb, device, { bootstrap: boot, enableXattr: cfg.rafs.enable_xattr, directIo: opts.directIo });
  const pf = cfg.rafs.prefetch;
  if (prefetchFiles || pf.enable) {
    const chunks = prefetchChunks(sb, { files: prefetchFiles, all: pf.enable && pf.prefetch_all });
    if (chunks.length && device.prefetch) {
      log.info({ bootstrap, chunks: chunks.length }, 'prefetch started');
      device.prefetch(chunks);
    }
  }
  log.info({ bootstrap, version: sb.meta.version, blobs: sb.blobs.length }, 'rafs instance created');
  return { fs: rafs, close: () => device.close() };
}
