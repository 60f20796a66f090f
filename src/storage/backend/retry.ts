/**
 * The remote backends' read retry loop (storage-backends §1 "Retry loop"),
 * shared by registry, s3, oss and http-proxy:
 *  - on-demand reads get `attempts` tries (default 1 + 3), prefetch reads 1 + 1;
 *  - every attempt is recorded in BackendMetrics (requested length, error,
 *    latency) and a slow one (>= 250 ms, >= 1 s above 4 MiB) is logged;
 *  - a RetryStop error ends the loop at once (the server will not do better);
 *  - after the last failure the error goes to the daemon event ring and the
 *    caller gets EIO naming what was read, the cause and the attempt count.
 * Deliberate difference: retries back off (exponential, jittered, <= 1 s)
 * instead of upstream's immediate retries plus a process-wide 1 request/s
 * limiter before the last one.
 */
import { eio } from '../../common/errno';
import { recordErrorEvent } from '../../common/events';
import { warnLimited } from '../../common/log';
import type { BackendMetrics } from './metrics';
import type { ReadOptions } from './backend';

/** attempts of an on-demand read (upstream: 1 + 3 retries) */
export const READ_ATTEMPTS = 4;
/** attempts of a prefetch read (upstream: 1 + 1) */
export const PREFETCH_ATTEMPTS = 2;

/** An error that retrying cannot fix. */
export class RetryStop extends Error {}

export interface RetryOptions {
  /** e.g. "registry host/repo blob <id> range bytes=a-b" */
  what: string;
  /** requested bytes (metrics) */
  requested: number;
  attempts: number;
  /** delay before retry `n` (1-based), ms */
  delayMs?: (n: number) => number;
  metrics?: BackendMetrics;
  /** the backend was closed: stop */
  closed?: () => boolean;
  /** true when `err` was handled by switching something (e.g. https → http): retry at once, for free */
  again?: (err: unknown) => boolean;
  /** text of an error for messages */
  describe?: (err: unknown) => string;
}

/** Attempts of one read: the backend's budget, 2 for prefetch, or fewer when the caller asks (ReadOptions.attempts). */
export function budget(opts: ReadOptions, attempts: number): number {
  let n = opts.prefetch ? Math.min(PREFETCH_ATTEMPTS, attempts) : attempts;
  if (opts.attempts !== undefined && opts.attempts >= 1) n = Math.min(n, Math.floor(opts.attempts));
  return Math.max(1, n);
}

export const defaultRetryDelay = (n: number): number => Math.min(1000, 100 * 2 ** (n - 1)) * (0.5 + Math.random() / 2);

export function sleep(ms: number): Promise<void> {
  return ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();
}

/** Run `attempt(n, last)` until it succeeds or the budget is spent (see module doc). */
export async function retryRead<T>(o: RetryOptions, attempt: (n: number, last: boolean) => Promise<T>): Promise<T> {
  const text = o.describe ?? ((e: unknown) => (e instanceof Error ? e.message : String(e)));
  const delay = o.delayMs ?? defaultRetryDelay;
  let lastErr: unknown;
  let n = 0;
  const total = Math.max(1, o.attempts);
  for (let i = 1; i <= total; i++) {
    if (o.closed?.()) { lastErr = lastErr ?? new Error('backend closed'); break; }
    n = i;
    const t0 = performance.now();
    try {
      const v = await attempt(i, i === total);
      const ms = Math.round(performance.now() - t0);
      o.metrics?.attempt(o.requested, true, ms);
      if (ms >= (o.requested > 4 << 20 ? 1000 : 250)) warnLimited('storage.slow', { what: o.what, ms }, 'slow backend read');
      return v;
    } catch (err) {
      o.metrics?.attempt(o.requested, false, Math.round(performance.now() - t0));
      lastErr = err;
      if (err instanceof RetryStop || o.closed?.()) break;
      if (o.again?.(err)) { i--; continue; }
      if (i < total) await sleep(delay(i));
    }
  }
  const msg = `${o.what}: ${text(lastErr)} (${n} attempt${n === 1 ? '' : 's'})`;
  recordErrorEvent(msg);
  warnLimited('storage.backend', { what: o.what, err: text(lastErr) }, 'backend read failed');
  throw eio(msg, lastErr);
}
