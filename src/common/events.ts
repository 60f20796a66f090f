/**
 * The daemon's error event ring (`GET /api/v1/daemon/events`, storage-backends
 * §7 "Events"): one line per backend read whose retries all failed (and per
 * API 5xx), "<HTTP-date> - <text>", oldest dropped first once 500 entries or
 * 51,200 bytes would be exceeded. Process-wide, as upstream's ERROR_HOLDER.
 */
const MAX_ERRORS = 500;
const MAX_SIZE = 51200;
const errorEvents: string[] = [];
let totalErrors = 0;
let totalSize = 0;
let ringSize = 0;

/** Record an error event (text cut to 1 KiB). */
export function recordErrorEvent(msg: string): void {
  const line = `${new Date().toUTCString()} - ${msg.slice(0, 1024)}`;
  totalErrors++;
  totalSize += line.length;
  errorEvents.push(line);
  ringSize += line.length;
  while (errorEvents.length > MAX_ERRORS || ringSize > MAX_SIZE) ringSize -= errorEvents.shift()!.length;
}

export function exportEvents(): Record<string, unknown> {
  return { max_errors: MAX_ERRORS, total_errors: totalErrors, max_size: MAX_SIZE, total_size: totalSize, errors: [...errorEvents] };
}
