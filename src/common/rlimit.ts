/**
 * RLIMIT_NOFILE through koffi (getrlimit/setrlimit; libc.ts style).
 *
 * `raiseNofileLimit(n)` is nydusd's `--rlimit-nofile` (upstream default
 * 1,000,000): the soft limit goes up to min(n, hard); when n is above the
 * hard limit, the hard limit is raised too (needs root / CAP_SYS_RESOURCE;
 * capped at /proc/sys/fs/nr_open, which the kernel enforces), and when that is
 * not permitted the soft limit still goes up to the old hard limit. A limit is
 * never lowered. Note that Node itself already raises the soft limit to the
 * hard one at start-up.
 */
import * as fs from 'node:fs';
import koffi from 'koffi';
import { errnoError, lastErrno } from './libc';

const lib = koffi.load('libc.so.6');
const c = {
  getrlimit: lib.func('int getrlimit(int resource, _Out_ uint8_t *rlim)'),
  setrlimit: lib.func('int setrlimit(int resource, const uint8_t *rlim)'),
};

const RLIMIT_NOFILE = 7;
const RLIM_INFINITY = 0xffffffffffffffffn;

export interface NofileLimit {
  /** current (soft) limit; Infinity for RLIM_INFINITY */
  soft: number;
  /** ceiling (hard) limit; Infinity for RLIM_INFINITY */
  hard: number;
}

const toNum = (v: bigint): number => (v === RLIM_INFINITY ? Infinity : Number(v));
const toRlim = (v: number): bigint => (v === Infinity ? RLIM_INFINITY : BigInt(Math.floor(v)));

function get(): [bigint, bigint] {
  const b = Buffer.alloc(16);
  if ((c.getrlimit(RLIMIT_NOFILE, b) as number) < 0) throw errnoError(lastErrno(), 'getrlimit(RLIMIT_NOFILE)');
  return [b.readBigUInt64LE(0), b.readBigUInt64LE(8)];
}

function set(soft: bigint, hard: bigint): number {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(soft, 0);
  b.writeBigUInt64LE(hard, 8);
  return (c.setrlimit(RLIMIT_NOFILE, b) as number) < 0 ? lastErrno() : 0;
}

/** The process's RLIMIT_NOFILE. */
export function getNofileLimit(): NofileLimit {
  const [soft, hard] = get();
  return { soft: toNum(soft), hard: toNum(hard) };
}

function nrOpen(): bigint | null {
  try {
    const v = BigInt(fs.readFileSync('/proc/sys/fs/nr_open', 'utf8').trim());
    return v > 0n ? v : null;
  } catch {
    return null;
  }
}

/**
 * Raise RLIMIT_NOFILE towards `n` (never lowering either limit) and return
 * the limits in force afterwards. Throws ErrnoError only when even raising the
 * soft limit within the hard one fails.
 */
export function raiseNofileLimit(n: number): NofileLimit {
  if (!(n >= 0)) throw errnoError(22 /* EINVAL */, `rlimit-nofile ${n}`);
  const want = toRlim(n);
  const [soft, hard] = get();
  if (want > hard) {
    let target = want;
    const cap = nrOpen();
    if (cap !== null && target > cap) target = cap;
    if (target > hard && set(target, target) === 0) return getNofileLimit();
    // not permitted (or capped at the current hard limit): go as far as the hard limit allows
  }
  const newSoft = want < hard ? want : hard;
  if (newSoft > soft) {
    const e = set(newSoft, hard);
    if (e !== 0) throw errnoError(e, 'setrlimit(RLIMIT_NOFILE)');
  }
  return getNofileLimit();
}
