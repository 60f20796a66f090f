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
