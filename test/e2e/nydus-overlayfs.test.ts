/**
 * nydus-overlayfs end to end, as root: the real libfuse `mount.fuse` runs our
 * bin/nydus-overlayfs, found on PATH, for a `fuse.nydus-overlayfs` mount, the
 * way containerd does it (`mount.fuse overlay <target> -o opt … -t
 * fuse.nydus-overlayfs`, one `-o` per option). It proves: the merged view is
 * right (both lowers, the upper layer wins, writes and copy-ups land in
 * upperdir) with a base64 extraoption longer than a page in the options; the
 * mount flags land as asked in /proc/self/mountinfo (rw by default, no
 * nodev/nosuid unless asked, although mount.fuse appends dev,suid); a lowerdir
 * list whose data string exceeds a page still mounts; bad options fail with a
 * clear message and a non-zero exit; and `mount -t fuse.nydus-overlayfs` via
 * util-linux mount(8) works once the helper is on the standard PATH (checked in
 * a private mount namespace, since mount(8) drops PATH for its helpers).
 * Skips with a reason without root, overlayfs or mount.fuse; fails under CI=true.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, hasCommand, isRoot, sh, tmpdir } from '../support/cli';

function missing(): string | undefined {
  if (!isRoot()) return 'not running as root (mount(2) needs CAP_SYS_ADMIN)';
  const hasOverlay = () => /\toverlay\n/.test(fs.readFileSync('/proc/filesystems', 'utf8'));
  if (!hasOverlay()) {
    try { sh('modprobe', ['overlay']); } catch { /* checked below */ }
    if (!hasOverlay()) return 'kernel has no overlayfs';
  }
  if (!hasCommand('mount.fuse')) return 'no mount.fuse (Debian package fuse3)';
  if (!fs.existsSync(path.join(ROOT, 'dist/bin/nydus-overlayfs.js'))) return 'not built (npm run build)';
  return undefined;
}

const skip = missing();
if (skip) {
  if (process.env.CI === 'true') throw new Error(`nydus-overlayfs e2e: ${skip}`);
  console.log(`SKIP nydus-overlayfs e2e: ${skip}`);
}

const HELPER = path.join(ROOT, 'bin/nydus-overlayfs');
/** our bin dir first on PATH, as containerd finds mount helpers on its PATH */
const ENV = { ...process.env, PATH: `${path.join(ROOT, 'bin')}:${process.env.PATH ?? '/usr/bin:/bin'}` };
const work = skip ? '' : tmpdir('ovl');
const targets = new Set<string>();

interface Result { status: number | null; stderr: string; stdout: string }

/** containerd's way: `mount.fuse overlay <target> -o o1 -o o2 … -t fuse.nydus-overlayfs`. */
function mountFuse(target: string, options: string[]): Result {
  targets.add(target);
  const args = ['overlay', target, ...options.flatMap((o) => ['-o', o]), '-t', 'fuse.nydus-overlayfs'];
  const r = spawnSync('mount.fuse', args, { env: ENV, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stderr: r.stderr, stdout: r.stdout };
}

interface MountEntry { mountOpts: string[]; fstype: string; source: string; superOpts: string[] }

const unescapeMi = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** The topmost mount at `target` in /proc/self/mountinfo, if any. */
function mountAt(target: string): MountEntry | undefined {
  const real = fs.realpathSync(target);
  let found: MountEntry | undefined;
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 10 || unescapeMi(f[4]) !== real) continue;
    const dash = f.indexOf('-', 6);
    found = { mountOpts: f[5].split(','), fstype: f[dash + 1], source: f[dash + 2], superOpts: f.slice(dash + 3).join(' ').split(',') };
  }
  return found;
}

/** Unmount everything this file mounted (lazily, so a failing assertion never leaves a busy mount behind). */
function cleanup(): void {
  for (const t of targets) {
    for (let i = 0; i < 8 && fs.existsSync(t) && mountAt(t); i++) spawnSync('umount', ['-l', t]);
  }
  targets.clear();
}

/** A fresh layer set: lowers A (upper of the two) and B, an upper with one file, a workdir, a target. */
function layers(name: string): { a: string; b: string; u: string; w: string; t: string } {
  const d = path.join(work, name);
  const p = { a: path.join(d, 'A'), b: path.join(d, 'B'), u: path.join(d, 'U'), w: path.join(d, 'W'), t: path.join(d, 'mnt') };
  for (const x of Object.values(p)) fs.mkdirSync(x, { recursive: true });
  fs.writeFileSync(path.join(p.a, 'both'), 'from A');
  fs.writeFileSync(path.join(p.b, 'both'), 'from B');
  fs.writeFileSync(path.join(p.a, 'only-a'), 'a');
  fs.writeFileSync(path.join(p.b, 'only-b'), 'b');
  fs.writeFileSync(path.join(p.a, 'shadowed'), 'lower');
  fs.writeFileSync(path.join(p.u, 'shadowed'), 'upper');
  fs.mkdirSync(path.join(p.b, 'dir'));
  fs.writeFileSync(path.join(p.b, 'dir', 'deep'), 'deep b');
  return p;
}

/** What the snapshotter puts in `extraoption=`: base64 JSON, here padded past a page. */
function extraOption(): string {
  const config = JSON.stringify({ device: { id: '/42', backend: { type: 'registry', config: { host: 'r.example', repo: 'x'.repeat(6000), auth: 'dXNlcjpwYXNz' } } } });
  const json = JSON.stringify({ source: '/var/lib/nydus/snapshots/41/fs/image/image.boot', config, snapshotdir: '/var/lib/nydus/snapshots/42', fs_version: 'v6' });
  return `extraoption=${Buffer.from(json).toString('base64')}`;
}

const noStack = (s: string) => assert.not.match(s, /\n\s+at /, `no stack trace in: ${s}`);

test.after(() => {
  if (skip) return;
  cleanup();
  fs.rmSync(work, { recursive: true, force: true });
});

test('mount.fuse → nydus-overlayfs: merged view, upper wins, writes land in upperdir, extraoption never reaches the kernel', () => {
  if (skip) return;
  const p = layers('merged');
  try {
    const extra = extraOption();
    assert.ok(extra.length > 8192, 'extraoption longer than two pages');
    const r = mountFuse(p.t, [`lowerdir=${p.a}:${p.b}`, `upperdir=${p.u}`, `workdir=${p.w}`, extra]);
    assert.is(r.status, 0, r.stderr);
    const m = mountAt(p.t);
    assert.ok(m, 'mounted');
    assert.is(m!.fstype, 'overlay');
    assert.is(m!.source, 'overlay');
    assert.ok(m!.superOpts.includes(`lowerdir=${p.a}:${p.b}`), m!.superOpts.join(','));
    assert.not.ok(m!.superOpts.some((o) => o.startsWith('extraoption')), 'payload not in the kernel options');
    // default rw; mount.fuse appended dev,suid, which must not turn into nodev,nosuid (upstream's bug)
    assert.ok(m!.mountOpts.includes('rw'), m!.mountOpts.join(','));
    for (const f of ['ro', 'nodev', 'nosuid', 'noexec']) assert.not.ok(m!.mountOpts.includes(f), `${f} in ${m!.mountOpts.join(',')}`);

    assert.equal(fs.readdirSync(p.t).sort(), ['both', 'dir', 'only-a', 'only-b', 'shadowed']);
    assert.is(fs.readFileSync(path.join(p.t, 'both'), 'utf8'), 'from A', 'the first lowerdir is on top');
    assert.is(fs.readFileSync(path.join(p.t, 'shadowed'), 'utf8'), 'upper', 'upperdir wins');
    assert.is(fs.readFileSync(path.join(p.t, 'dir/deep'), 'utf8'), 'deep b');

    fs.writeFileSync(path.join(p.t, 'new'), 'written');
    fs.appendFileSync(path.join(p.t, 'only-b'), '+more');
    fs.unlinkSync(path.join(p.t, 'only-a'));
    assert.is(fs.readFileSync(path.join(p.u, 'new'), 'utf8'), 'written', 'new file in upperdir');
    assert.is(fs.readFileSync(path.join(p.u, 'only-b'), 'utf8'), 'b+more', 'copied up');
    assert.is(fs.readFileSync(path.join(p.b, 'only-b'), 'utf8'), 'b', 'lower untouched');
    const wh = fs.lstatSync(path.join(p.u, 'only-a'));
    assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'whiteout in upperdir');
    assert.ok(fs.existsSync(path.join(p.a, 'only-a')), 'lower untouched');
  } finally { cleanup(); }
});

interface FlagCase { opts: string[]; has?: string[]; lacks?: string[]; superHas?: string[] }
const FLAG_CASES: FlagCase[] = [
  { opts: ['ro'], has: ['ro'], lacks: ['rw'] },
  { opts: ['nodev', 'nosuid'], has: ['rw', 'nodev', 'nosuid'] },
  { opts: ['noexec', 'noatime', 'nodiratime'], has: ['noexec', 'noatime', 'nodiratime'], lacks: ['relatime'] },
  { opts: ['strictatime'], lacks: ['relatime', 'noatime'] },
  { opts: ['nodev', 'dev', 'nosuid', 'suid', 'ro', 'rw', 'noexec', 'exec', 'noatime', 'atime'], has: ['rw', 'relatime'], lacks: ['ro', 'nodev', 'nosuid', 'noexec', 'noatime'] },
  { opts: ['sync', 'dirsync'], superHas: ['sync', 'dirsync'] },
  { opts: ['nosymfollow'], has: ['nosymfollow'] },
];

for (const c of FLAG_CASES) {
  test(`flags: -o ${c.opts.join(' -o ')} → ${[...(c.has ?? []), ...(c.lacks ?? []).map((f) => `!${f}`), ...(c.superHas ?? []).map((f) => `super:${f}`)].join(' ')}`, () => {
    if (skip) return;
    const p = layers(`flags-${c.opts.join('-')}`);
    try {
      const r = mountFuse(p.t, [`lowerdir=${p.a}:${p.b}`, `upperdir=${p.u}`, `workdir=${p.w}`, ...c.opts]);
      assert.is(r.status, 0, r.stderr);
      const m = mountAt(p.t)!;
      for (const f of c.has ?? []) assert.ok(m.mountOpts.includes(f), `${f} missing from ${m.mountOpts.join(',')}`);
      for (const f of c.lacks ?? []) assert.not.ok(m.mountOpts.includes(f), `${f} present in ${m.mountOpts.join(',')}`);
      for (const f of c.superHas ?? []) assert.ok(m.superOpts.includes(f), `${f} missing from ${m.superOpts.join(',')}`);
      if (c.opts.includes('ro') && !c.opts.includes('rw')) {
        assert.throws(() => fs.writeFileSync(path.join(p.t, 'x'), 'x'), (e: unknown) => (e as NodeJS.ErrnoException).code === 'EROFS');
      } else {
        fs.writeFileSync(path.join(p.t, 'x'), 'x');
        assert.ok(fs.existsSync(path.join(p.u, 'x')));
      }
    } finally { cleanup(); }
  });
}

test('a lowerdir list longer than a page still mounts (paths relative to the common parent)', () => {
  if (skip) return;
  const base = path.join(work, `long-${'l'.repeat(40)}`);
  const n = 40;
  const lowers = Array.from({ length: n }, (_, i) => path.join(base, `${String(i).padStart(2, '0')}-${'y'.repeat(50)}`));
  for (const [i, d] of lowers.entries()) {
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, `file-${i}`), `layer ${i}`);
    fs.writeFileSync(path.join(d, 'top'), `layer ${i}`);
  }
  const u = path.join(base, 'upper');
  const w = path.join(base, 'work');
  const t = path.join(work, 'long-mnt');
  for (const d of [u, w, t]) fs.mkdirSync(d, { recursive: true });
  const opts = [`lowerdir=${lowers.join(':')}`, `upperdir=${u}`, `workdir=${w}`, 'index=off', extraOption()];
  const dataBytes = Buffer.byteLength(opts.slice(0, 4).join(','));
  const page = Number(sh('getconf', ['PAGESIZE']).trim());
  assert.ok(dataBytes > page, `overlay options are ${dataBytes} bytes, more than a ${page}-byte page`);
  try {
    const r = mountFuse(t, opts);
    assert.is(r.status, 0, r.stderr);
    assert.ok(mountAt(t), 'mounted');
    const names = fs.readdirSync(t);
    for (let i = 0; i < n; i++) assert.ok(names.includes(`file-${i}`), `file-${i} from layer ${i}`);
    assert.is(fs.readFileSync(path.join(t, 'top'), 'utf8'), 'layer 0', 'first lowerdir on top');
    fs.writeFileSync(path.join(t, 'w'), 'w');
    assert.is(fs.readFileSync(path.join(u, 'w'), 'utf8'), 'w');
  } finally { cleanup(); }
});

interface BadCase { name: string; opts: (p: ReturnType<typeof layers>) => string[]; status: number; stderr: RegExp }
const BAD_CASES: BadCase[] = [
  { name: 'missing lowerdir', opts: (p) => [`lowerdir=${p.a}:${p.a}-gone`], status: 32, stderr: /mount\(2\) of overlay on .* failed: ENOENT .*: lowerdir .*\/A-gone: ENOENT/ },
  { name: 'unknown overlay option', opts: (p) => [`lowerdir=${p.a}`, 'bogus=1'], status: 32, stderr: /failed: EINVAL .*overlayfs does not know option 'bogus'/ },
  { name: 'bind', opts: (p) => [`lowerdir=${p.a}`, 'bind'], status: 1, stderr: /option 'bind' is not valid for a new overlay mount \(EINVAL\)/ },
  { name: 'upperdir without workdir', opts: (p) => [`lowerdir=${p.a}`, `upperdir=${p.u}`], status: 1, stderr: /upperdir= needs workdir= as well/ },
  { name: 'only Nydus options', opts: () => [extraOption()], status: 1, stderr: /lowerdir= is required/ },
  { name: 'missing target', opts: (p) => [`lowerdir=${p.a}`], status: 32, stderr: /target .*: ENOENT/ },
];

for (const c of BAD_CASES) {
  test(`bad options (${c.name}): clear message, exit ${c.status}, nothing mounted`, () => {
    if (skip) return;
    const p = layers(`bad-${c.name.replace(/\W+/g, '-')}`);
    const target = c.name === 'missing target' ? path.join(work, 'no-such-target') : p.t;
    try {
      const r = mountFuse(target, c.opts(p));
      assert.is(r.status, c.status, r.stderr);
      assert.match(r.stderr, c.stderr);
      assert.match(r.stderr, /^nydus-overlayfs: /);
      noStack(r.stderr);
      assert.not.ok(r.stderr.includes('eyJ'), 'the extraoption payload is never printed');
      if (fs.existsSync(target)) assert.is(mountAt(target), undefined);
    } finally { cleanup(); }
  });
}

test('wrong argument count: help on stderr, exit 1', () => {
  if (skip) return;
  const r = spawnSync(HELPER, ['overlay', '/mnt'], { env: ENV, encoding: 'utf8' });
  assert.is(r.status, 1);
  assert.match(r.stderr, /expected 4 arguments/);
  assert.match(r.stderr, /Usage: nydus-overlayfs overlay <target> -o <options>/);
  noStack(r.stderr);
  const h = spawnSync(HELPER, ['--help'], { env: ENV, encoding: 'utf8' });
  assert.is(h.status, 0);
  assert.match(h.stdout, /extraoption=/);
});

test('mount -t fuse.nydus-overlayfs (util-linux mount(8)) with the helper on the standard PATH', () => {
  if (skip) return;
  // mount(8) runs mount.fuse without PATH, so /bin/sh falls back to its default
  // PATH; stand our helper in /usr/local/sbin inside a private mount namespace
  // (nothing on the host changes, and the overlay goes away with the namespace)
  const node = ['/usr/local/bin/node', '/usr/bin/node', '/bin/node'].find((f) => fs.existsSync(f));
  if (!hasCommand('unshare') || !fs.existsSync('/usr/local/sbin') || !node) {
    console.log('SKIP nydus-overlayfs mount(8) case: needs unshare, /usr/local/sbin and node on the default PATH');
    return;
  }
  const p = layers('mount8');
  const sbin = path.join(work, 'sbin');
  fs.mkdirSync(sbin, { recursive: true });
  fs.symlinkSync(HELPER, path.join(sbin, 'nydus-overlayfs'));
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const script = [
    `mount --bind ${q(sbin)} /usr/local/sbin`,
    `mount -t fuse.nydus-overlayfs overlay ${q(p.t)} -o ${q(`ro,nodev,lowerdir=${p.a}:${p.b},${extraOption()}`)}`,
    `grep " ${p.t} " /proc/self/mountinfo`,
    `cat ${q(path.join(p.t, 'both'))} ${q(path.join(p.t, 'only-b'))}`,
    `umount ${q(p.t)}`,
  ].join(' && ');
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { encoding: 'utf8', timeout: 60_000 });
  assert.is(r.status, 0, r.stderr);
  const [mi, content] = [r.stdout.split('\n')[0], r.stdout.split('\n').slice(1).join('\n')];
  const f = mi.split(' ');
  assert.ok(f[5].split(',').includes('ro') && f[5].split(',').includes('nodev'), mi);
  assert.not.ok(f[5].split(',').includes('nosuid'), mi);
  assert.is(content, 'from Ab');
  assert.is(mountAt(p.t), undefined, 'nothing left in our namespace');
});

test.run();
