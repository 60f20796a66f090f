/**
 * pino JSON logger shared by every binary; level names as upstream (trace..error).
 *
 * `log` loads pino with the first line it writes, not before: pino and what
 * it loads (sonic-boom, thread-stream, worker_threads) add ~7 MB to a
 * process, and a daemon at `--log-level warn` may never write a line. The
 * level is checked first, so a disabled call costs a comparison. Lines are
 * pino's, written to stderr or the `--log-file` (opened at once).
 */
import * as fs from 'node:fs';
import type pino from 'pino';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';
export const LOG_LEVELS: LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error'];

/** pino's level values ('silent' included, which only tests and the API set). */
const LEVEL_VALUES: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity };

/** What of pino's Logger the code uses. */
export interface Logger {
  level: string;
  isLevelEnabled(level: string): boolean;
  trace: pino.LogFn;
  debug: pino.LogFn;
  info: pino.LogFn;
  warn: pino.LogFn;
  error: pino.LogFn;
  fatal: pino.LogFn;
}

class LazyLogger implements Logger {
  private real: pino.Logger | undefined;
  private current: string;

  /** `fd`: where lines go (2, or a log file opened by setupLog). */
  constructor(level: string, private readonly fd: number) {
    if (!(level in LEVEL_VALUES)) throw new Error(`invalid log level ${level}`);
    this.current = level;
  }

  get level(): string {
    return this.current;
  }

  set level(level: string) {
    if (!(level in LEVEL_VALUES)) throw new Error(`invalid log level ${String(level)}`);
    this.current = level;
    if (this.real) this.real.level = level;
  }

  isLevelEnabled(level: string): boolean {
    return (LEVEL_VALUES[level] ?? Infinity) >= LEVEL_VALUES[this.current];
  }

  private emit(level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal', args: unknown[]): void {
    if (!this.isLevelEnabled(level)) return;
    if (!this.real) {
      const p = require('pino') as typeof import('pino');
      this.real = p.pino({ level: this.current, base: undefined }, p.destination(this.fd === 2 ? 2 : { fd: this.fd, sync: true }));
    }
    (this.real[level] as (...a: unknown[]) => void)(...args);
  }

  trace = ((...a: unknown[]) => this.emit('trace', a)) as pino.LogFn;
  debug = ((...a: unknown[]) => this.emit('debug', a)) as pino.LogFn;
  info = ((...a: unknown[]) => this.emit('info', a)) as pino.LogFn;
  warn = ((...a: unknown[]) => this.emit('warn', a)) as pino.LogFn;
  error = ((...a: unknown[]) => this.emit('error', a)) as pino.LogFn;
  fatal = ((...a: unknown[]) => this.emit('fatal', a)) as pino.LogFn;
}

export let log: Logger = new LazyLogger(process.env.NYDUS_LOG_LEVEL || 'info', 2);

/** Re-create the logger (CLI `--log-level` / `--log-file`); the file is opened (appended to) at once. */
export function setupLog(level: LogLevel, file?: string): Logger {
  const fd = file ? fs.openSync(file.includes('.') ? file : `${file}.log`, 'a') : 2;
  log = new LazyLogger(level, fd);
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
