/**
 * The guest side of the QEMU test rig: host tools (QEMU, static busybox) and a Debian
 * Linux 6.1 kernel with its modules, fetched with `apt-get download` and unpacked with
 * `dpkg-deb -x` into a cache directory (never installed), reused across runs.
 *
 * Cache: $NYDUS_TEST_GUEST_CACHE or /var/cache/nydus-test-guest, one directory per
 * versioned image package (`linux-image-6.1.0-NN-amd64`) with a `.complete` marker.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const GUEST_CACHE = process.env.NYDUS_TEST_GUEST_CACHE ?? '/var/cache/nydus-test-guest';
export const QEMU_BIN = 'qemu-system-x86_64';
export const BUSYBOX = '/bin/busybox';
export const REFERENCE_VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

/** Modules the rig loads, in insmod order (dependencies first). */
export const BASE_MODULES = [
  'virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci',
  'fuse', 'virtiofs', 'overlay',
];

export interface GuestKernel {
  /** path of vmlinuz */
  kernel: string;
  /** the unpacked `lib/modules/<version>` directory */
  modulesDir: string;
  /** kernel release, e.g. 6.1.0-56-amd64 */
  version: string;
}
export type PrepareResult = GuestKernel | { skip: string };

const run = (cmd: string, args: string[], opts: { cwd?: string; timeout?: number } = {}) =>
  spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd, timeout: opts.timeout ?? 300_000, env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });

const isRoot = () => process.getuid?.() === 0;

function which(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':').concat(['/usr/sbin', '/sbin'])) {
    const p = path.join(dir, cmd);
    try { fs.accessSync(p, fs.constants.X_OK); return p; } catch { /* next */ }
  }
  return undefined;
}

/** true when the ELF file has no PT_INTERP (static or static-pie). */
export function isStaticElf(file: string): boolean {
  const b = fs.readFileSync(file);
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return false;
  const phoff = Number(b.readBigUInt64LE(0x20));
  const phentsize = b.readUInt16LE(0x36);
  const phnum = b.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) return false;
  return true;
}

let aptUpdated = false;
function aptUpdate(): boolean {
  if (aptUpdated) return true;
  const r = run('apt-get', ['update'], { timeout: 180_000 });
  aptUpdated = r.status === 0;
  return aptUpdated;
}

/** apt-get install the packages whose probe fails; returns a skip reason or undefined. */
function ensurePackages(wanted: Array<{ pkg: string; ok: () => boolean }>): string | undefined {
  const missing = wanted.filter((w) => !w.ok()).map((w) => w.pkg);
  if (missing.length === 0) return undefined;
  if (!isRoot()) return `${missing.join(', ')} not installed and not root to apt-get install it`;
  let r = run('apt-get', ['install', '-y', '--no-install-recommends', ...missing]);
  if (r.status !== 0 && aptUpdate()) r = run('apt-get', ['install', '-y', '--no-install-recommends', ...missing]);
  if (r.status !== 0) return `apt-get install ${missing.join(' ')} failed: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' / ')}`;
  const still = wanted.filter((w) => !w.ok()).map((w) => w.pkg);
  return still.length ? `${still.join(', ')} still missing after apt-get install` : undefined;
}

/** QEMU + static busybox (+ cpio/xz/zstd for compressed modules), installed if missing. */
export function ensureGuestTools(): string | undefined {
  if (process.platform !== 'linux' || process.arch !== 'x64') return `not x86_64 Linux (${process.platform}/${process.arch})`;
  return ensurePackages([
    { pkg: 'qemu-system-x86', ok: () => !!which(QEMU_BIN) },
    { pkg: 'busybox-static', ok: () => fs.existsSync(BUSYBOX) && isStaticElf(BUSYBOX) },
  ]);
}

/** The reference C virtiofsd from qemu-system-common, installed if missing. */
export function ensureReferenceVirtiofsd(): string | undefined {
  return ensurePackages([{ pkg: 'qemu-system-common', ok: () => fs.existsSync(REFERENCE_VIRTIOFSD) }]);
}

/** The versioned image package linux-image-amd64 depends on (from the local apt lists). */
function imagePackageName(): string | undefined {
  const r = run('apt-cache', ['depends', 'linux-image-amd64']);
  if (r.status !== 0) return undefined;
  const m = /Depends:\s*(linux-image-6\.1[^\s<>]*)/.exec(r.stdout);
  return m?.[1];
}

function completeDirs(): string[] {
  let names: string[] = [];
  try { names = fs.readdirSync(GUEST_CACHE); } catch { return []; }
  return names.filter((n) => /^linux-image-6\.1/.test(n) && fs.existsSync(path.join(GUEST_CACHE, n, '.complete')))
    .map((n) => path.join(GUEST_CACHE, n))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
}

function describe(dir: string): GuestKernel | undefined {
  const boot = path.join(dir, 'boot');
  const vmlinuz = fs.existsSync(boot) ? fs.readdirSync(boot).find((n) => n.startsWith('vmlinuz-')) : undefined;
  if (!vmlinuz) return undefined;
  const version = vmlinuz.slice('vmlinuz-'.length);
  for (const base of ['lib/modules', 'usr/lib/modules']) {
    const modulesDir = path.join(dir, base, version);
    if (fs.existsSync(modulesDir)) return { kernel: path.join(boot, vmlinuz), modulesDir, version };
  }
  return undefined;
}

/** Download and unpack `pkg` into the cache; returns its directory or throws. */
function fetchKernel(pkg: string): string {
  fs.mkdirSync(GUEST_CACHE, { recursive: true });
  const final = path.join(GUEST_CACHE, pkg);
  const tmp = fs.mkdtempSync(path.join(GUEST_CACHE, `.tmp-${pkg}-`));
  try {
    fs.chmodSync(tmp, 0o755);
    // the _apt sandbox user cannot write into a root-only dir: download as the caller
    const r = run('apt-get', ['download', '-o', 'APT::Sandbox::User=root', pkg], { cwd: tmp });
    const deb = fs.readdirSync(tmp).find((n) => n.endsWith('.deb'));
    if (r.status !== 0 || !deb) throw new Error(`apt-get download ${pkg} failed: ${(r.stderr || r.stdout).trim()}`);
    const x = path.join(tmp, 'x');
    execFileSync('dpkg-deb', ['-x', path.join(tmp, deb), x], { stdio: 'ignore' });
    fs.writeFileSync(path.join(x, '.complete'), `${deb}\n`);
    // another process may have finished the same package meanwhile: keep its copy
    if (fs.existsSync(path.join(final, '.complete'))) return final;
    fs.rmSync(final, { recursive: true, force: true });
    try { fs.renameSync(x, final); } catch (e) {
      // another process won the race
      if (!fs.existsSync(path.join(final, '.complete'))) throw e;
    }
    // keep only the kernel in use
    for (const other of completeDirs()) if (other !== final) fs.rmSync(other, { recursive: true, force: true });
    return final;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

let prepared: Promise<PrepareResult> | undefined;

/**
 * Make sure QEMU, static busybox and the guest kernel are available (installing/fetching
 * them when needed). Returns `{ skip }` only when a capability is really missing.
 */
export function prepareGuest(): Promise<PrepareResult> {
  prepared ??= Promise.resolve().then(prepareGuestSync);
  return prepared;
}

function prepareGuestSync(): PrepareResult {
  const tools = ensureGuestTools();
  if (tools) return { skip: tools };
  let pkg = imagePackageName();
  if (!pkg && isRoot() && aptUpdate()) pkg = imagePackageName();
  if (pkg) {
    const dir = path.join(GUEST_CACHE, pkg);
    if (fs.existsSync(path.join(dir, '.complete'))) {
      const k = describe(dir);
      if (k) return k;
    }
  }
  let fetchError = pkg ? '' : 'apt-cache knows no linux-image-amd64 dependency';
  if (pkg) {
    try {
      const k = describe(fetchKernel(pkg));
      if (k) return k;
      fetchError = `unpacked ${pkg} has no vmlinuz/modules`;
    } catch (e) {
      fetchError = (e as Error).message;
    }
  }
  for (const dir of completeDirs()) {
    const k = describe(dir);
    if (k) return k;
  }
  return { skip: `no guest kernel: ${fetchError} and nothing cached in ${GUEST_CACHE}` };
}

// ---------------------------------------------------------------------------------------
// modules

const moduleIndexes = new Map<string, { files: Map<string, string>; builtin: Set<string> }>();
const norm = (n: string) => n.replace(/-/g, '_');
const MOD_RE = /^(.*)\.ko(\.xz|\.zst|\.gz)?$/;

function moduleIndex(modulesDir: string) {
  let idx = moduleIndexes.get(modulesDir);
  if (idx) return idx;
  const files = new Map<string, string>();
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else { const m = MOD_RE.exec(e.name); if (m) files.set(norm(m[1]), p); }
    }
  };
  walk(modulesDir);
  const builtin = new Set<string>();
  try {
    for (const l of fs.readFileSync(path.join(modulesDir, 'modules.builtin'), 'utf8').split('\n')) {
      const m = MOD_RE.exec(path.basename(l.trim()));
      if (m) builtin.add(norm(m[1]));
    }
  } catch { /* no list */ }
  idx = { files, builtin };
  moduleIndexes.set(modulesDir, idx);
  return idx;
}

/** The uncompressed bytes of a module file (.ko, .ko.xz, .ko.zst, .ko.gz). */
export function readModule(file: string): Buffer {
  if (file.endsWith('.ko')) return fs.readFileSync(file);
  const tool = file.endsWith('.xz') ? 'xz' : file.endsWith('.zst') ? 'zstd' : 'gzip';
  return execFileSync(tool, ['-dc', file], { maxBuffer: 256 << 20 });
}

function moduleDepends(ko: Buffer): string[] {
  const key = Buffer.from('\0depends=');
  const at = ko.indexOf(key);
  if (at < 0) return [];
  const end = ko.indexOf(0, at + key.length);
  return ko.subarray(at + key.length, end).toString('latin1').split(',').filter(Boolean).map(norm);
}

export interface ResolvedModule { name: string; data: Buffer }

/**
 * Resolve `names` (plus their `depends=` from .modinfo) to module bytes in load order.
 * Built-in modules are skipped; an unknown module throws.
 */
export function resolveModules(modulesDir: string, names: string[]): ResolvedModule[] {
  const { files, builtin } = moduleIndex(modulesDir);
  const out: ResolvedModule[] = [];
  const seen = new Set<string>();
  const visit = (raw: string, chain: string[]) => {
    const name = norm(raw);
    if (seen.has(name)) return;
    if (chain.includes(name)) throw new Error(`module dependency cycle: ${[...chain, name].join(' -> ')}`);
    const file = files.get(name);
    if (!file) {
      if (builtin.has(name)) { seen.add(name); return; }
      throw new Error(`kernel module ${name} not found under ${modulesDir}`);
    }
    const data = readModule(file);
    for (const d of moduleDepends(data)) visit(d, [...chain, name]);
    seen.add(name);
    out.push({ name, data });
  };
  for (const n of names) visit(n, []);
  return out;
}


