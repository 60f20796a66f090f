/**
 * nydus-overlayfs option handling: the pure part of the mount helper
 * (nydusify-snapshotter.md §5, kata-contract.md §4). Given the comma list
 * libfuse's `mount.fuse` hands the helper, it
 *
 * - drops the Nydus/Kata payloads the kernel must never see (`extraoption=`,
 *   `io.katacontainers.volume=`) and util-linux's userspace-only `x-*` options;
 * - turns mount-flag words into mount(2) flags, the way mount(8) does: each
 *   word sets or clears its own MS_* bit, left to right (`ro` sets MS_RDONLY,
 *   `rw` clears it, `nodev` sets MS_NODEV, `dev` clears it, …);
 * - keeps everything else (lowerdir=, upperdir=, workdir=, index=, xino=,
 *   volatile, …) as overlayfs's data string;
 * - when that string is too long for one mount(2) page, rewrites the layer
 *   paths relative to their common parent directory, which the caller then
 *   chdir()s into.
 *
 * Deliberate difference from upstream's helper: upstream's table maps several
 * positive words to the negative flag (`dev`→MS_NODEV, `suid`→MS_NOSUID,
 * `rw`→MS_RDONLY, `exec`→MS_NOEXEC, `async`→MS_SYNCHRONOUS, `atime`→
 * MS_NOATIME, `diratime`→MS_NODIRATIME, `nomand`→MS_MANDLOCK, `norelatime`→
 * MS_RELATIME, `nostrictatime`→MS_STRICTATIME) and only ever ORs flags in.
 * Since `mount.fuse` appends `dev,suid` unless told otherwise, every upstream
 * overlay ends up nodev,nosuid, and an explicit `rw` makes it read-only. Here
 * the words mean what mount(8) says they mean. Also unlike upstream:
 * `bind`/`rbind`/`remount` are refused (they make no sense for a new overlay),
 * a few more mount(8) words are known (lazytime, nosymfollow, iversion,
 * silent and their opposites), and backslash-escaped commas and colons are
 * honoured as overlayfs itself does.
 */
import * as path from 'node:path';
import { ErrnoError, einval } from '../common/errno';
import {
  MS_DIRSYNC, MS_I_VERSION, MS_LAZYTIME, MS_MANDLOCK, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID,
  MS_NOSYMFOLLOW, MS_RDONLY, MS_RELATIME, MS_SILENT, MS_STRICTATIME, MS_SYNCHRONOUS,
} from '../common/libc';

/** What a mount-flag word does: set or clear one MS_* bit. */
export interface FlagWord { flag: number; set: boolean }

/** mount(8)'s flag words (libmount's Linux map) that apply to a new mount. */
export const FLAG_WORDS: ReadonlyMap<string, FlagWord> = new Map<string, FlagWord>([
  ['ro', { flag: MS_RDONLY, set: true }], ['rw', { flag: MS_RDONLY, set: false }],
  ['nosuid', { flag: MS_NOSUID, set: true }], ['suid', { flag: MS_NOSUID, set: false }],
  ['nodev', { flag: MS_NODEV, set: true }], ['dev', { flag: MS_NODEV, set: false }],
  ['noexec', { flag: MS_NOEXEC, set: true }], ['exec', { flag: MS_NOEXEC, set: false }],
  ['sync', { flag: MS_SYNCHRONOUS, set: true }], ['async', { flag: MS_SYNCHRONOUS, set: false }],
  ['dirsync', { flag: MS_DIRSYNC, set: true }],
  ['mand', { flag: MS_MANDLOCK, set: true }], ['nomand', { flag: MS_MANDLOCK, set: false }],
  ['noatime', { flag: MS_NOATIME, set: true }], ['atime', { flag: MS_NOATIME, set: false }],
  ['nodiratime', { flag: MS_NODIRATIME, set: true }], ['diratime', { flag: MS_NODIRATIME, set: false }],
  ['relatime', { flag: MS_RELATIME, set: true }], ['norelatime', { flag: MS_RELATIME, set: false }],
  ['strictatime', { flag: MS_STRICTATIME, set: true }], ['nostrictatime', { flag: MS_STRICTATIME, set: false }],
  ['lazytime', { flag: MS_LAZYTIME, set: true }], ['nolazytime', { flag: MS_LAZYTIME, set: false }],
  ['nosymfollow', { flag: MS_NOSYMFOLLOW, set: true }], ['symfollow', { flag: MS_NOSYMFOLLOW, set: false }],
  ['iversion', { flag: MS_I_VERSION, set: true }], ['noiversion', { flag: MS_I_VERSION, set: false }],
  ['silent', { flag: MS_SILENT, set: true }], ['loud', { flag: MS_SILENT, set: false }],
]);

/** Words that are no-ops here (libmount treats `defaults` as "nothing beyond the defaults"). */
const NO_OP_WORDS = new Set(['defaults']);

/** mount(8) words for operations other than a new mount: refused, with a reason. */
const REFUSED_WORDS = new Set(['bind', 'rbind', 'remount', 'move', 'rmove']);

/** Options that carry Nydus/Kata data for the runtime and never reach the kernel. */
export const NYDUS_ONLY_PREFIXES = ['extraoption=', 'io.katacontainers.volume='] as const;

/** Options overlayfs understands (Linux 6.x); used to name the culprit when the kernel says EINVAL. */
export const OVERLAY_KEYS: ReadonlySet<string> = new Set([
  'lowerdir', 'lowerdir+', 'datadir+', 'upperdir', 'workdir', 'default_permissions', 'redirect_dir', 'index',
  'uuid', 'nfs_export', 'userxattr', 'xino', 'metacopy', 'verity', 'volatile',
]);

/** Options whose values are layer directories (candidates for the long-option rewrite). */
export const LAYER_KEYS = ['lowerdir', 'lowerdir+', 'datadir+', 'upperdir', 'workdir'] as const;
export type LayerKey = (typeof LAYER_KEYS)[number];

/** Upstream's threshold: options at least this long are shortened (pagesize − 512). */
export const longOptionThreshold = (pageSize: number): number => pageSize - 512;

export interface ParsedOptions {
  /** mount(2) flags */
  flags: number;
  /** overlayfs options, in order, as given (escapes kept) */
  data: string[];
  /** options removed before mount(2) (Nydus payloads, x-*), for logging */
  dropped: string[];
}

/** Split at commas not escaped by a backslash (overlayfs's own rule); empty items are skipped. */
export function splitOptionList(list: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < list.length; i++) {
    const ch = list[i];
    if (ch === '\\' && i + 1 < list.length) { cur += ch + list[++i]; continue; }
    if (ch === ',') { if (cur) out.push(cur); cur = ''; continue; }
    cur += ch;
  }
  if (cur) out.push(cur);
  return out;
}

/** The key of `k=v` (the whole option when it has no `=`). */
export function optionKey(opt: string): string {
  const i = opt.indexOf('=');
  return i < 0 ? opt : opt.slice(0, i);
}

/** Map the helper's comma list to flags + overlay data; throws EINVAL naming a refused option. */
export function parseOptions(list: string): ParsedOptions {
  let flags = 0;
  const data: string[] = [];
  const dropped: string[] = [];
  for (const opt of splitOptionList(list)) {
    if (NYDUS_ONLY_PREFIXES.some((p) => opt.startsWith(p)) || opt.startsWith('x-')) { dropped.push(opt); continue; }
    const word = FLAG_WORDS.get(opt);
    if (word) { flags = word.set ? flags | word.flag : flags & ~word.flag; continue; }
    if (NO_OP_WORDS.has(opt)) continue;
    if (REFUSED_WORDS.has(opt)) throw einval(`option '${opt}' is not valid for a new overlay mount`);
    data.push(opt);
  }
  return { flags: flags >>> 0, data, dropped };
}

/** Names of the set flags (for logs and messages), in FLAG_WORDS order. */
export function flagNames(flags: number): string[] {
  const out: string[] = [];
  for (const [name, w] of FLAG_WORDS) if (w.set && (flags & w.flag) !== 0) out.push(name);
  return out;
}

/**
 * Checks the kernel would make anyway, done first so the message names the
 * option: at least one lower layer, and upperdir and workdir together.
 */
export function validateOverlayOptions(data: readonly string[]): void {
  const keys = new Set(data.map(optionKey));
  for (const k of ['lowerdir', 'upperdir', 'workdir']) {
    if (data.includes(k) || data.includes(`${k}=`)) throw einval(`option '${k}' needs a value (${k}=<dir>)`);
  }
  if (!keys.has('lowerdir') && !keys.has('lowerdir+')) {
    throw einval(data.length === 0
      ? 'no overlay options left after removing Nydus-only and flag options: lowerdir= is required'
      : 'no lowerdir= option: an overlay needs at least one lower directory');
  }
  if (keys.has('upperdir') !== keys.has('workdir')) {
    throw einval(keys.has('upperdir') ? 'upperdir= needs workdir= as well' : 'workdir= is only valid with upperdir=');
  }
}

/** Split a lowerdir value at colons not escaped by a backslash; escapes are kept, empty entries (`::`) too. */
export function splitLayerList(value: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < value.length; i++) {
    const ch = value[i];
    if (ch === '\\' && i + 1 < value.length) { cur += ch + value[++i]; continue; }
    if (ch === ':') { out.push(cur); cur = ''; continue; }
    cur += ch;
  }
  out.push(cur);
  return out;
}

/** overlayfs unescaping of lowerdir/upperdir/workdir: a backslash quotes the next character. */
export function unescapeLayerPath(s: string): string {
  return s.replace(/\\(.)/gs, '$1');
}

/** Inverse of unescapeLayerPath for the characters overlayfs splits on. */
export function escapeLayerPath(p: string): string {
  return p.replace(/[\\:,]/g, (c) => `\\${c}`);
}

/** `lowerdir+=`/`datadir+=` take one raw path (overlayfs applies no unescaping to them). */
const isRawKey = (k: string): boolean => k === 'lowerdir+' || k === 'datadir+';

export interface LayerRef { key: LayerKey; path: string }

/** Every layer directory named in `data`, as an absolute path (relative ones resolved against `cwd`). */
export function layerPaths(data: readonly string[], cwd: string): LayerRef[] {
  const out: LayerRef[] = [];
  for (const opt of data) {
    const key = optionKey(opt);
    if (!(LAYER_KEYS as readonly string[]).includes(key) || opt.length === key.length) continue;
    const value = opt.slice(key.length + 1);
    const entries = isRawKey(key) ? [value] : key === 'lowerdir' ? splitLayerList(value).map(unescapeLayerPath) : [unescapeLayerPath(value)];
    for (const e of entries) if (e !== '') out.push({ key: key as LayerKey, path: path.resolve(cwd, e) });
  }
  return out;
}

/**
 * Deepest directory containing every path (compared by whole components).
 * When it is itself one of the paths, its parent is used, so no path becomes `.`.
 */
export function commonParent(paths: readonly string[]): string {
  if (paths.length === 0) return '/';
  const split = paths.map((p) => path.resolve(p).split('/').filter(Boolean));
  let n = split[0].length;
  for (const s of split) {
    let i = 0;
    while (i < n && i < s.length && s[i] === split[0][i]) i++;
    n = i;
  }
  const common = '/' + split[0].slice(0, n).join('/');
  return split.some((s) => s.length === n) ? path.dirname(common) : common;
}

export interface CompactResult {
  /** the data string to pass to mount(2) */
  data: string;
  /** directory to chdir() into before mount(2), when paths were made relative */
  chdir?: string;
}

/**
 * The data string for mount(2). At or above pagesize − 512 bytes the layer
 * paths are rewritten relative to their common parent (returned as `chdir`);
 * if the result still does not fit in a page (with its NUL), E2BIG.
 */
export function compactOptions(data: readonly string[], opts: { pageSize: number; cwd: string }): CompactResult {
  const joined = data.join(',');
  const size = Buffer.byteLength(joined);
  if (size < longOptionThreshold(opts.pageSize)) return { data: joined };
  const layers = layerPaths(data, opts.cwd);
  if (layers.length === 0) return fits({ data: joined }, size, opts.pageSize);
  const dir = commonParent(layers.map((l) => l.path));
  const rel = (p: string): string => path.relative(dir, path.resolve(opts.cwd, p)) || '.';
  const rewritten = data.map((opt) => {
    const key = optionKey(opt);
    if (!(LAYER_KEYS as readonly string[]).includes(key) || opt.length === key.length) return opt;
    const value = opt.slice(key.length + 1);
    if (isRawKey(key)) return `${key}=${rel(value)}`;
    if (key === 'lowerdir') {
      return `${key}=${splitLayerList(value).map((e) => (e === '' ? '' : escapeLayerPath(rel(unescapeLayerPath(e))))).join(':')}`;
    }
    return `${key}=${escapeLayerPath(rel(unescapeLayerPath(value)))}`;
  });
  const out = rewritten.join(',');
  return fits({ data: out, chdir: dir }, size, opts.pageSize);
}

function fits(r: CompactResult, before: number, pageSize: number): CompactResult {
  const size = Buffer.byteLength(r.data);
  if (size > pageSize - 1) {
    const how = r.chdir ? ` after making layer paths relative to ${r.chdir} (${before} bytes before)` : '';
    throw new ErrnoError('E2BIG', `overlay options are ${size} bytes${how}; mount(2) takes at most ${pageSize - 1}`);
  }
  return r;
}

/** Options in `data` that overlayfs does not know (named when the kernel answers EINVAL). */
export function unknownOverlayOptions(data: readonly string[]): string[] {
  return data.filter((o) => !OVERLAY_KEYS.has(optionKey(o)));
}
