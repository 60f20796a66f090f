/**
 * The project's one error type: an error carrying a POSIX errno.
 * Filesystems, storage and the format code throw ErrnoError; the outer
 * boundaries (FUSE server, HTTP API, CLI) turn it into their own shape.
 */
import { constants } from 'node:os';

const ERRNO = constants.errno as Record<string, number>;

export class ErrnoError extends Error {
  readonly errno: number;
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ErrnoError';
    this.code = code;
    this.errno = ERRNO[code] ?? ERRNO.EIO;
  }
}

export const einval = (msg: string, cause?: unknown) => new ErrnoError('EINVAL', msg, { cause });
export const enoent = (msg: string, cause?: unknown) => new ErrnoError('ENOENT', msg, { cause });
export const eio = (msg: string, cause?: unknown) => new ErrnoError('EIO', msg, { cause });

/**
 * A read that may not wait for the disk found its bytes not all in the page
 * cache (writeFromFile with `nowait`): the caller reads them off the event
 * loop instead. Never reaches a peer.
 */
export class WouldBlock extends ErrnoError {
  constructor(what: string) {
    super('EAGAIN', `${what}: not in the page cache`);
  }
}
export const enosys = (msg: string, cause?: unknown) => new ErrnoError('ENOSYS', msg, { cause });
export const erofs = (msg: string, cause?: unknown) => new ErrnoError('EROFS', msg, { cause });
export const enotdir = (msg: string, cause?: unknown) => new ErrnoError('ENOTDIR', msg, { cause });
export const eisdir = (msg: string, cause?: unknown) => new ErrnoError('EISDIR', msg, { cause });
export const enodata = (msg: string, cause?: unknown) => new ErrnoError('ENODATA', msg, { cause });

/** Positive errno of any thrown value; unknown errors map to EIO. */
export function errnoOf(err: unknown): number {
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
    if (e instanceof ErrnoError) return e.errno;
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && ERRNO[code] !== undefined) return ERRNO[code];
  }
  return ERRNO.EIO;
}

/** Throw EINVAL (a format or argument error) unless `cond` holds. */
export function ensure(cond: unknown, msg: string | (() => string)): asserts cond {
  if (!cond) throw einval(typeof msg === 'string' ? msg : msg());
}
