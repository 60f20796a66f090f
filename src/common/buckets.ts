/** Histogram buckets shared by the daemon's and the backends' metrics (upstream utils/src/metrics.rs). */
const KB = 1024;

/** bucket of a size in bytes: <1K, <4K, <16K, <64K, <128K, <512K, <1M, >=1M */
export function blockSizeIndex(size: number): number {
  const limits = [KB, 4 * KB, 16 * KB, 64 * KB, 128 * KB, 512 * KB, 1024 * KB];
  const i = limits.findIndex((l) => size < l);
  return i < 0 ? 7 : i;
}

/** bucket of a READ latency in µs: <=200, <=1ms, <=20ms, <=50ms, <=500ms, <=1s, <=2s, >2s */
export function latencyMicrosIndex(us: number): number {
  const limits = [200, 1000, 20_000, 50_000, 500_000, 1_000_000, 2_000_000];
  const i = limits.findIndex((l) => us <= l);
  return i < 0 ? 7 : i;
}

/** backend latency bucket in ms: <=1, <=20, <=50, <=100, <=500, <=1000, <=2000, >2000 */
export function latencyMillisIndex(ms: number): number {
  const limits = [1, 20, 50, 100, 500, 1000, 2000];
  const i = limits.findIndex((l) => ms <= l);
  return i < 0 ? 7 : i;
}

export const zeros = (n: number): number[] => new Array<number>(n).fill(0);
