/** pino JSON logger shared by every binary; level names as upstream (trace..error). */
import pino from 'pino';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';
export const LOG_LEVELS: LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error'];

export let log: pino.Logger = pino({ level: process.env.NYDUS_LOG_LEVEL ?? 'info', base: undefined }, pino.destination(2));

/** Re-create the logger (CLI `--log-level` / `--log-file`). */
export function setupLog(level: LogLevel, file?: string): pino.Logger {
  const dest = file ? pino.destination({ dest: file.includes('.') ? file : `${file}.log`, sync: true }) : pino.destination(2);
  log = pino({ level, base: undefined }, dest);
  return log;
}

/** Change the level of the current logger at run time (PUT /api/v1/daemon `log_level`). */
export function setLogLevel(level: LogLevel): void {
  if (!LOG_LEVELS.includes(level)) throw new Error(`invalid log level ${String(level)}`);
  log.level = level;
}

/**
 * Rate limit for warnings a peer can trigger (a hostile guest, an API
 * client): per key, at most `WARN_BURST` lines per `WARN_WINDOW_MS`; what is
 * suppressed is counted and reported with the next line that gets through,
 * so `--log-file` cannot be filled by a guest.
 */
export const WARN_BURST = 10;
export const WARN_WINDOW_MS = 10_000;
const MAX_WARN_KEYS = 256;
const warnWindows = new Map<string, { start: number; count: number; suppressed: number }>();

/** `log.warn(obj, msg)` unless `key` exceeded its budget; returns whether it was logged. */
export function warnLimited(key: string, obj: Record<string, unknown>, msg: string): boolean {
  return logLimited('warn', key, obj, msg);
}

/** `log[level](obj, msg)` under the per-key budget of `warnLimited` (any level a peer can trigger). */
export function logLimited(level: 'info' | 'warn' | 'error', key: string, obj: Record<string, unknown>, msg: string): boolean {
  if (!log.isLevelEnabled(level)) return false;
  const now = Date.now();
  let w = warnWindows.get(key);
  if (w === undefined) {
    if (warnWindows.size >= MAX_WARN_KEYS) warnWindows.clear(); // keys are code constants; a bound all the same
    w = { start: now, count: 0, suppressed: 0 };
    warnWindows.set(key, w);
  }
  if (now - w.start >= WARN_WINDOW_MS) {
    w.start = now;
    w.count = 0;
  }
  if (w.count >= WARN_BURST) {
    w.suppressed++;
    return false;
  }
  w.count++;
  if (w.suppressed > 0) {
    log[level]({ ...obj, suppressed: w.suppressed }, `${msg} (similar messages suppressed meanwhile)`);
    w.suppressed = 0;
  } else {
    log[level](obj, msg);
  }
  return true;
}
