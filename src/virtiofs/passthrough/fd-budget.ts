/**
 * The process-wide budget of passthrough fds.
 *
 * Every PassthroughFs draws the fds it holds (O_PATH inodes, handles,
 * transient re-opens, closes still in flight) from one budget, by default
 * `processFdBudget`: the soft RLIMIT_NOFILE minus FD_RESERVE (left to the
 * daemon's own files: sockets, logs, blob and cache files, the vhost-user fds
 * a front-end passes, the blocking pool's placeholder), so however many
 * passthrough mounts a guest drives, it cannot push the process to EMFILE
 * (where the fds passed over the vhost-user socket would be truncated and the
 * VM would lose its device). An instance's own `maxFds` caps it further
 * (both must have room).
 *
 * The limit is read lazily, at the first reservation (nydusd raises
 * RLIMIT_NOFILE at start-up, before it builds any filesystem), and read again
 * whenever a reservation would fail (a limit raised later is honoured; that
 * costs one getrlimit on the ENFILE path only). `setMax()` pins it instead.
 */
import { getNofileLimit } from '../../common/rlimit';

/** fds left to the daemon itself (sockets, logs, blobs, other mounts) by the default budget */
export const FD_RESERVE = 512;
/** the default budget never goes below this */
export const MIN_MAX_FDS = 64;

/** The default process-wide budget: the soft RLIMIT_NOFILE minus FD_RESERVE, at least MIN_MAX_FDS. */
export function defaultMaxFds(): number {
  let soft = 1024;
  try {
    soft = getNofileLimit().soft;
  } catch {
    /* keep the usual default */
  }
  return Math.max(MIN_MAX_FDS, Math.min(soft, 2 ** 31) - FD_RESERVE);
}

export class FdBudget {
  private fixed: number | undefined;
  private derived: number | undefined;
  private inUse = 0;

  /** `max`: a fixed size; default: derived from RLIMIT_NOFILE (defaultMaxFds) at first use. */
  constructor(max?: number) {
    this.setMax(max);
  }

  /** Most fds all drawers together may hold. */
  get max(): number {
    if (this.fixed !== undefined) return this.fixed;
    if (this.derived === undefined) this.derived = defaultMaxFds();
    return this.derived;
  }

  /** fds held now over all drawers. */
  get used(): number {
    return this.inUse;
  }

  /** Pin the size (undefined: derive it from RLIMIT_NOFILE again, at next use). Never takes anything back. */
  setMax(max?: number): void {
    this.fixed = max === undefined ? undefined : Math.max(0, Math.floor(max));
    this.derived = undefined;
  }

  /**
   * Take one fd if `room` (≥ 1) would fit; false (nothing taken) otherwise.
   * A derived size is re-read before refusing.
   */
  tryTake(room = 1): boolean {
    if (this.inUse + room > this.max) {
      if (this.fixed !== undefined) return false;
      this.derived = defaultMaxFds();
      if (this.inUse + room > this.derived) return false;
    }
    this.inUse++;
    return true;
  }

  /** Take one fd whatever the size (an instance's root: within FD_RESERVE, ≤ 255 mounts). */
  force(): void {
    this.inUse++;
  }

  give(n = 1): void {
    this.inUse = Math.max(0, this.inUse - n);
  }
}

/** The budget every PassthroughFs draws from unless given another one. */
export const processFdBudget = new FdBudget();
