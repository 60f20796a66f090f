/**
 * The process-wide blob cache manager: one FileCache per work_dir (resolved
 * path), shared by every mount that names it, reference-counted by the
 * devices using it and closed when the last one goes. Within it, one entry
 * per blob id (filecache.ts): two images sharing a layer share its cache
 * files, readiness bitmap and downloads.
 */
import * as path from 'node:path';
import { warnLimited } from '../../common/log';
import { FileCache } from './filecache';

const caches = new Map<string, { cache: FileCache; refs: number }>();

/** The FileCache of `workDir`, created on first use; pair with `releaseFileCache`. */
export function acquireFileCache(workDir: string, opts: { quota?: number } = {}): FileCache {
  const key = path.resolve(workDir);
  let c = caches.get(key);
  if (!c) {
    c = { cache: new FileCache({ workDir: key, quota: opts.quota }), refs: 0 };
    caches.set(key, c);
  } else if ((opts.quota ?? 0) !== (c.cache.quota?.quota ?? 0)) {
    warnLimited('cache.quota', { workDir: key, asked: opts.quota ?? 0, kept: c.cache.quota?.quota ?? 0 }, 'work_dir already open with another quota: the first one is kept');
  }
  c.refs++;
  return c.cache;
}

/** Give back a cache from `acquireFileCache`; the last release closes it. */
export async function releaseFileCache(cache: FileCache): Promise<void> {
  const key = path.resolve(cache.workDir);
  const c = caches.get(key);
  if (!c || c.cache !== cache) return;
  if (--c.refs > 0) return;
  caches.delete(key);
  await cache.close();
}

/** Work dirs with a live cache and their user counts (tests, metrics). */
export function fileCacheUsers(): Map<string, number> {
  return new Map([...caches].map(([k, v]) => [k, v.refs]));
}
