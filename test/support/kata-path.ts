/**
 * Helpers for test/e2e/kata-snapshotter.test.ts: the Kata path from a
 * snapshotter `fuse.nydus-overlayfs` mount to the guest overlay.
 *
 * - `KATA_LAYERS` / `expectedTree()`: a three-layer image (modify, whiteout,
 *   opaque dir, symlink, an executable, a big incompressible file alone in the
 *   last layer) and the merged view it must give.
 * - `parseCtrMounts()` (`ctr snapshots prepare --mounts` JSON),
 *   `decodeExtraOption()` checking what both Kata runtimes check
 *   (kata-contract.md §3.2: exactly one `extraoption=`, standard base64 with
 *   padding, JSON `{source, config, snapshotdir, fs_version}`, the first three
 *   non-empty, fs_version v5/v6), `isKataNydusType()` (Go and Rust rules).
 * - `mountLikeContainerd()`: `mount.fuse overlay <target> -o … -t <type>` with
 *   bin/ first on PATH (containerd's mountWithHelper).
 * - `KataShare`: the Go runtime's host layout (§3.3): `<sb>/mounts` bound
 *   read-only with slave propagation onto `<sb>/shared` (the passthrough
 *   source); per container `mounts/<cid>/rootfs` and the snapshot dir bound
 *   on `mounts/<cid>/snapshotdir`, marked slave, remounted read-only.
 * - `listTree()`: hostTree's listing, optionally without reading some files.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT } from './cli';
import type { TarEntry } from './containerd';

// ---------------------------------------------------------------- the image

/** Deterministic incompressible bytes (sha256 counter stream). */
export function pseudoRandom(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  for (let off = 0, i = 0; off < size; i++) {
    const h = createHash('sha256').update(`${seed}:${i}`).digest();
    off += h.copy(out, off);
  }
  return out;
}

export const BIG_SIZE = 3 * 1024 * 1024 + 12345;
export const BIG = pseudoRandom('kata-big', BIG_SIZE);

/** Layer 1 base, layer 2 changes (modify, whiteout, opaque dir, add), layer 3 a big file only the guest reads. */
export const KATA_LAYERS: TarEntry[][] = [
  [
    { name: 'etc', type: 'directory' },
    { name: 'etc/os-release', data: 'ID=kata-e2e\nVERSION_ID=1\n' },
    { name: 'app', type: 'directory' },
    { name: 'app/keep.txt', data: 'kept from layer 1\n' },
    { name: 'app/gone.txt', data: 'deleted by layer 2\n' },
    { name: 'opq', type: 'directory' },
    { name: 'opq/old.txt', data: 'hidden by the opaque marker\n' },
    { name: 'bin', type: 'directory' },
    { name: 'bin/tool', data: '#!/bin/sh\necho tool from layer 1\n', mode: 0o755 },
    { name: 'keep-link', type: 'symlink', linkname: 'app/keep.txt', mode: 0o777 },
  ],
  [
    { name: 'etc', type: 'directory' },
    { name: 'etc/os-release', data: 'ID=kata-e2e\nVERSION_ID=2\n' },
    { name: 'app', type: 'directory' },
    { name: 'app/.wh.gone.txt', data: '' },
    { name: 'app/added.txt', data: 'added by layer 2\n' },
    { name: 'opq', type: 'directory' },
    { name: 'opq/.wh..wh..opq', data: '' },
    { name: 'opq/new.txt', data: 'written after the opaque marker\n' },
  ],
  [
    { name: 'data', type: 'directory' },
    { name: 'data/big.bin', data: BIG },
    { name: 'data/small.txt', data: 'layer 3\n' },
  ],
];

/** Paths that must not exist in the merged view. */
export const DELETED = ['app/gone.txt', 'opq/old.txt'];

/** Materialize the expected merged view in `dir` (for hostTree/listTree). */
export function expectedTree(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  for (const layer of KATA_LAYERS) {
    for (const e of layer) {
      const p = path.join(dir, e.name);
      const base = path.basename(e.name);
      if (base === '.wh..wh..opq') {
        for (const n of fs.readdirSync(path.dirname(p))) fs.rmSync(path.join(path.dirname(p), n), { recursive: true, force: true });
        continue;
      }
      if (base.startsWith('.wh.')) {
        fs.rmSync(path.join(path.dirname(p), base.slice(4)), { recursive: true, force: true });
        continue;
      }
      const type = e.type ?? 'file';
      if (type === 'directory') {
        fs.mkdirSync(p, { recursive: true });
        fs.chmodSync(p, e.mode ?? 0o755);
      } else if (type === 'symlink') {
        fs.rmSync(p, { force: true });
        fs.symlinkSync(e.linkname!, p);
      } else {
        fs.writeFileSync(p, e.data ?? '');
        fs.chmodSync(p, e.mode ?? 0o644);
      }
    }
  }
}

// ---------------------------------------------------------------- tree listings

const TYPE_CHARS: Record<number, string> = { 0o040000: 'd', 0o100000: 'f', 0o120000: 'l', 0o020000: 'c', 0o060000: 'b', 0o010000: 'p', 0o140000: 's' };

/**
 * The listing of test/support/qemu.ts hostTree (`./rel|type|perm|uid|gid|size|extra`),
 * with `extra` = `unread` for the regular files `skipRead` names (`./rel`), so a
 * lazily pulled file can be listed without fetching its data.
 */
export function listTree(dir: string, skipRead: Set<string> = new Set()): string[] {
  const out: string[] = [];
  const walk = (abs: string, rel: string): void => {
    for (const name of fs.readdirSync(abs)) {
      const a = path.join(abs, name);
      const r = `${rel}/${name}`;
      const st = fs.lstatSync(a);
      const type = TYPE_CHARS[st.mode & 0o170000] ?? '?';
      let extra = '-';
      if (st.isFile()) extra = skipRead.has(r) ? 'unread' : createHash('sha256').update(fs.readFileSync(a)).digest('hex');
      else if (st.isSymbolicLink()) extra = fs.readlinkSync(a);
      out.push([r, type, (st.mode & 0o7777).toString(8).padStart(4, '0'), st.uid, st.gid, type === 'f' ? st.size : '-', extra].join('|'));
      if (st.isDirectory()) walk(a, r);
    }
  };
  walk(dir, '.');
  return out.sort((x, y) => { const a = x.slice(0, x.indexOf('|')); const b = y.slice(0, y.indexOf('|')); return a < b ? -1 : a > b ? 1 : 0; });
}

// ---------------------------------------------------------------- mounts and extraoption

export interface CtrMount { Type: string; Source: string; Options: string[] }

/** `ctr snapshots prepare --mounts` prints containerd's []mount.Mount as JSON (Go field names). */
export function parseCtrMounts(stdout: string): CtrMount[] {
  const v = JSON.parse(stdout.trim()) as unknown;
  if (!Array.isArray(v)) throw new Error(`ctr --mounts did not print an array: ${stdout.slice(0, 500)}`);
  return v.map((m: Record<string, unknown>) => ({ Type: String(m.Type), Source: String(m.Source), Options: (m.Options as string[] | null) ?? [] }));
}

/** Kata Go runtime (prefix + basename) and runtime-rs (exact) detection of a nydus rootfs. */
export function isKataNydusType(type: string): { go: boolean; rust: boolean } {
  const go = type.startsWith('fuse.') && path.basename(type.slice(5)).startsWith('nydus-overlayfs');
  return { go, rust: type === 'fuse.nydus-overlayfs' };
}

export interface ExtraOption { source: string; config: string; snapshotdir: string; fs_version: string }

/** Decode and validate the `extraoption=` option as both Kata runtimes do (throws with the reason). */
export function decodeExtraOption(options: string[]): ExtraOption {
  const extra = options.filter((o) => o.startsWith('extraoption='));
  if (extra.length !== 1) throw new Error(`runtime-rs needs exactly one extraoption=, got ${extra.length}`);
  const b64 = extra[0].slice('extraoption='.length);
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) throw new Error('extraoption is not standard padded base64');
  const json = Buffer.from(b64, 'base64').toString('utf8');
  const v = JSON.parse(json) as Record<string, unknown>;
  const keys = Object.keys(v);
  for (const k of ['source', 'config', 'snapshotdir', 'fs_version']) {
    if (typeof v[k] !== 'string') throw new Error(`extraoption.${k} is not a string (keys: ${keys.join(',')})`);
  }
  const e = v as unknown as ExtraOption;
  if (!e.source || !e.config || !e.snapshotdir) throw new Error('extraoption: source, config and snapshotdir must be non-empty (Go runtime)');
  if (e.fs_version !== 'v5' && e.fs_version !== 'v6') throw new Error(`extraoption.fs_version ${JSON.stringify(e.fs_version)} is not v5/v6 (runtime-rs)`);
  return e;
}

/** `key=value` options of a mount as a map (flag words map to ''). */
export function optionMap(options: string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const o of options) {
    const i = o.indexOf('=');
    m.set(i < 0 ? o : o.slice(0, i), i < 0 ? '' : o.slice(i + 1));
  }
  return m;
}

export const BIN_PATH = `${path.join(ROOT, 'bin')}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`;

/** containerd's mountWithHelper for `fuse.*` types: `mount.fuse <source> <target> -o o1 -o o2 … -t <type>`. */
export function mountLikeContainerd(m: CtrMount, target: string): { status: number | null; stderr: string } {
  const args = [m.Source, target, ...m.Options.flatMap((o) => ['-o', o]), '-t', m.Type];
  const r = spawnSync('mount.fuse', args, { env: { ...process.env, PATH: BIN_PATH }, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stderr: `${r.stderr ?? ''}${r.error ? String(r.error) : ''}` };
}

export interface MountInfo { mountPoint: string; mountOpts: string[]; fstype: string; source: string; superOpts: string[] }

const unescapeMi = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** The /proc/self/mountinfo entry of `mp` (the last, topmost one), or undefined. */
export function mountInfo(mp: string): MountInfo | undefined {
  let found: MountInfo | undefined;
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 10 || unescapeMi(f[4]) !== mp) continue;
    const dash = f.indexOf('-');
    found = { mountPoint: mp, mountOpts: f[5].split(','), fstype: f[dash + 1], source: unescapeMi(f[dash + 2]), superOpts: (f[dash + 3] ?? '').split(',').map(unescapeMi) };
  }
  return found;
}

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.error ?? ''}`);
}

/**
 * The Kata Go runtime's per-sandbox share (kata-contract.md §3.3): `<sb>` is
 * first made a private mount of its own so that nothing here propagates out
 * of the test directory.
 */
export class KataShare {
  readonly mounts: string;
  readonly shared: string;

  constructor(readonly sb: string) {
    this.mounts = path.join(sb, 'mounts');
    this.shared = path.join(sb, 'shared');
  }

  setup(): void {
    fs.mkdirSync(this.mounts, { recursive: true });
    fs.mkdirSync(this.shared, { recursive: true });
    run('mount', ['--bind', this.sb, this.sb]);
    run('mount', ['--make-private', this.sb]);
    run('mount', ['--bind', this.mounts, this.mounts]);
    run('mount', ['--make-shared', this.mounts]);
    run('mount', ['--bind', this.mounts, this.shared]);
    run('mount', ['--make-slave', this.shared]);
    run('mount', ['-o', 'remount,bind,ro', this.shared]);
  }

  /** Step 3/4 of shareRootFilesystemWithNydus: rootfs dir, snapshotdir bind (slave, then read-only). */
  addContainer(cid: string, snapshotdir: string): void {
    fs.mkdirSync(path.join(this.mounts, cid, 'rootfs'), { recursive: true });
    const dst = path.join(this.mounts, cid, 'snapshotdir');
    fs.mkdirSync(dst, { recursive: true });
    run('mount', ['--bind', snapshotdir, dst]);
    run('mount', ['--make-slave', dst]);
    run('mount', ['-o', 'remount,bind,ro', dst]);
  }

  /** nydusContainerCleanup after the RAFS DELETE: lazy umount of the snapshotdir bind, rmdirs. */
  removeContainer(cid: string): void {
    const dst = path.join(this.mounts, cid, 'snapshotdir');
    run('umount', ['-l', dst]);
    fs.rmdirSync(dst);
    fs.rmdirSync(path.join(this.mounts, cid, 'rootfs'));
    fs.rmdirSync(path.join(this.mounts, cid));
  }
}
