/**
 * nydus-overlayfs: the mount helper behind containerd's `fuse.nydus-overlayfs`
 * mounts (nydusify-snapshotter.md §5, kata-contract.md §4).
 *
 * containerd runs `mount.fuse overlay <target> -o … -t nydus-overlayfs` from
 * its PATH; libfuse's `mount.fuse` joins the options, appends `dev` and `suid`
 * unless `nodev`/`nosuid` were given, and runs
 * `nydus-overlayfs overlay <target> -o <comma list>` through /bin/sh. This
 * program takes exactly those four arguments, drops the Nydus/Kata payloads
 * (`extraoption=`, `io.katacontainers.volume=`), maps flag words to mount(2)
 * flags (./overlay-options.ts), shortens a data string too long for one page by
 * chdir()ing to the layers' common parent and naming them relative to it, and
 * calls mount("overlay", target, "overlay", flags, data).
 *
 * Deliberate differences from upstream: flag words mean what mount(8) says
 * (upstream inverts dev/suid/rw/exec/async/atime/diratime/nomand/norelatime/
 * nostrictatime, so its overlays are always nodev,nosuid and `rw` makes them
 * read-only; see overlay-options.ts); a third argument other than `-o` is
 * refused directly; failures name the option or directory at fault and the
 * errno, on one stderr line without a stack trace, and never print the
 * extraoption payload (it can hold registry credentials). Exit codes: 0 mounted,
 * 1 bad arguments or options (with help when the argument count is wrong, as
 * upstream), 32 mount(2) failed (mount(8)'s code for a mount failure).
 */
import * as fs from 'node:fs';
import { constants } from 'node:os';
import * as path from 'node:path';
import { getSystemErrorMap } from 'node:util';
import { ErrnoError, einval, errnoOf } from '../common/errno';
import { mount } from '../common/libc';
import { log } from '../common/log';
import {
  compactOptions, flagNames, optionKey, parseOptions, unknownOverlayOptions, validateOverlayOptions, type LayerRef, layerPaths,
} from './overlay-options';

export const USAGE = 'nydus-overlayfs overlay <target> -o <options>';
export const EXIT_OK = 0;
export const EXIT_USAGE = 1;
export const EXIT_MOUNT_FAILED = 32;

/** Wrong number of arguments: the caller prints help (upstream's behaviour). */
export class UsageError extends ErrnoError {
  constructor(message: string) {
    super('EINVAL', message);
    this.name = 'UsageError';
  }
}

/** mount(2) (or the chdir before it) failed; `errno` is the kernel's answer. */
export class MountFailedError extends ErrnoError {
  constructor(code: string, message: string, cause?: unknown) {
    super(code, message, { cause });
    this.name = 'MountFailedError';
  }
}

export interface HelperArgs { fstype: string; target: string; options: string }

/** The four arguments `mount.fuse` passes: `overlay <target> -o <options>`. */
export function parseArgv(args: readonly string[]): HelperArgs {
  if (args.length !== 4) throw new UsageError(`expected 4 arguments (${USAGE}), got ${args.length}`);
  const [fstype, target, dashO, options] = args;
  if (fstype !== 'overlay') throw einval(`filesystem type must be 'overlay', got '${fstype}'`);
  if (target === '') throw einval('empty mount target');
  if (dashO !== '-o') throw einval(`third argument must be '-o', got '${dashO}'`);
  if (options === '') throw einval('empty mount options');
  return { fstype, target, options };
}

export interface MountPlan {
  source: string;
  /** absolute (resolved before any chdir) */
  target: string;
  fstype: string;
  flags: number;
  /** the data string mount(2) gets (relative layer paths when `chdir` is set) */
  data: string;
  chdir?: string;
  /** overlay options as given, before any rewrite */
  options: string[];
  /** layer directories as absolute paths, for diagnostics */
  layers: LayerRef[];
  /** keys of the options removed before mount(2) (values are never kept: they can hold credentials) */
  dropped: string[];
}

/** Everything up to the syscall: option mapping, checks, the long-option rewrite. */
export function planMount(args: HelperArgs, env: { cwd: string; pageSize: number }): MountPlan {
  const parsed = parseOptions(args.options);
  validateOverlayOptions(parsed.data);
  const compact = compactOptions(parsed.data, env);
  return {
    source: args.fstype,
    target: path.resolve(env.cwd, args.target),
    fstype: args.fstype,
    flags: parsed.flags,
    data: compact.data,
    chdir: compact.chdir,
    options: parsed.data,
    layers: layerPaths(parsed.data, env.cwd),
    dropped: parsed.dropped.map(optionKey),
  };
}

/** The system calls the helper makes (replaced in unit tests). */
export interface MountSys {
  mount(source: string, target: string, fstype: string, flags: number, data: string): void;
  chdir(dir: string): void;
  cwd(): string;
  stat(p: string): fs.Stats;
}

export const realSys: MountSys = {
  mount,
  chdir: (d) => process.chdir(d),
  cwd: () => process.cwd(),
  stat: (p) => fs.statSync(p),
};

/** Run the plan: chdir when asked, mount(2), chdir back; failures carry a diagnosis. */
export function performMount(plan: MountPlan, sys: MountSys = realSys): void {
  const back = plan.chdir !== undefined ? sys.cwd() : undefined;
  if (plan.chdir !== undefined) {
    try {
      sys.chdir(plan.chdir);
    } catch (e) {
      throw new MountFailedError(errCode(e), `cannot chdir to ${plan.chdir} (common parent of the layer directories, used to shorten long options): ${describeErrno(errnoOf(e))}`, e);
    }
  }
  try {
    sys.mount(plan.source, plan.target, plan.fstype, plan.flags, plan.data);
  } catch (e) {
    const errno = errnoOf(e);
    const hint = diagnose(errno, plan, sys);
    throw new MountFailedError(errCode(e), `mount(2) of overlay on ${plan.target} failed: ${describeErrno(errno)}${hint ? `: ${hint}` : ''}`, e);
  } finally {
    if (back !== undefined) try { sys.chdir(back); } catch { /* the process ends right after */ }
  }
}

/** A likely reason for a failed mount(2), naming the directory or option at fault when one can be found. */
export function diagnose(errno: number, plan: MountPlan, sys: Pick<MountSys, 'stat'> = realSys): string | undefined {
  const E = constants.errno;
  const badDir = (): string | undefined => {
    for (const [what, p] of [['target', plan.target] as const, ...plan.layers.map((l) => [l.key, l.path] as const)]) {
      try {
        if (!sys.stat(p).isDirectory()) return `${what} ${p} is not a directory`;
      } catch (e) {
        return `${what} ${p}: ${describeErrno(errnoOf(e))}`;
      }
    }
    return undefined;
  };
  switch (errno) {
    case E.ENOENT: case E.ENOTDIR: case E.EACCES: case E.ELOOP: case E.ENAMETOOLONG:
      return badDir();
    case E.EINVAL: {
      const unknown = unknownOverlayOptions(plan.options).map(optionKey);
      if (unknown.length) return `overlayfs does not know option${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => `'${k}'`).join(', ')}`;
      return badDir() ?? 'the kernel rejected the overlay options (its reason is in the kernel log: dmesg | grep overlayfs)';
    }
    case E.EPERM:
      return 'mounting an overlay needs CAP_SYS_ADMIN (run as root)';
    case E.ENODEV:
      return 'the kernel has no overlay filesystem (modprobe overlay)';
    case E.EBUSY:
      return 'the upperdir or workdir is in use by another overlay mount';
    default:
      return undefined;
  }
}

/** `ENOENT (no such file or directory)` */
export function describeErrno(errno: number): string {
  const e = getSystemErrorMap().get(-errno);
  return e ? `${e[0]} (${e[1]})` : `errno ${errno}`;
}

function errCode(e: unknown): string {
  const entry = getSystemErrorMap().get(-errnoOf(e));
  return entry ? entry[0] : 'EIO';
}

/** The system page size (AT_PAGESZ from the aux vector; 4096 if unreadable). */
export function pageSize(): number {
  try {
    const auxv = fs.readFileSync('/proc/self/auxv');
    for (let off = 0; off + 16 <= auxv.length; off += 16) {
      const type = auxv.readBigUInt64LE(off);
      if (type === 0n) break;
      if (type === 6n) return Number(auxv.readBigUInt64LE(off + 8)); // AT_PAGESZ
    }
  } catch { /* fall through */ }
  return 4096;
}

export interface RunIo {
  /** one line for the user (stderr) */
  error(line: string): void;
  /** the help text, printed on a wrong argument count */
  usage(): string;
}

/**
 * The whole helper: argv → plan → mount. Never throws; returns the exit code
 * and reports failures as one line (plus help for a wrong argument count).
 */
export function runHelper(args: readonly string[], io: RunIo, sys: MountSys = realSys, page = pageSize()): number {
  try {
    const plan = planMount(parseArgv(args), { cwd: sys.cwd(), pageSize: page });
    log.debug({ target: plan.target, flags: flagNames(plan.flags), chdir: plan.chdir, dataBytes: Buffer.byteLength(plan.data), dropped: plan.dropped }, 'mounting overlay');
    performMount(plan, sys);
    log.debug({ target: plan.target }, 'overlay mounted');
    return EXIT_OK;
  } catch (e) {
    if (e instanceof UsageError) {
      io.error(`nydus-overlayfs: ${e.message}`);
      io.error(io.usage().trimEnd());
      return EXIT_USAGE;
    }
    const msg = e instanceof MountFailedError ? e.message : e instanceof ErrnoError ? `${e.message} (${e.code})` : e instanceof Error ? e.message : String(e);
    io.error(`nydus-overlayfs: ${msg}`);
    return e instanceof MountFailedError ? EXIT_MOUNT_FAILED : EXIT_USAGE;
  }
}
