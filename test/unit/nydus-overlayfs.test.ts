/**
 * nydus-overlayfs without the kernel: the flag table (every word both ways,
 * checked against mount(2)'s numeric MS_* values, not against the table
 * itself), dropping of the Nydus-only options (also a base64 extraoption
 * longer than a page), the long-option rewrite relative to the layers' common
 * parent, argv checks, and the whole helper run against recorded system calls
 * (chdir, mount, exit codes, messages without stack traces or payloads).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { constants } from 'node:os';
import { ErrnoError } from '../../src/common/errno';
import {
  FLAG_WORDS, commonParent, compactOptions, escapeLayerPath, flagNames, layerPaths, longOptionThreshold, parseOptions,
  splitLayerList, splitOptionList, unescapeLayerPath, validateOverlayOptions,
} from '../../src/snapshotter/overlay-options';
import {
  EXIT_MOUNT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, pageSize, parseArgv, planMount, runHelper, type MountSys,
} from '../../src/snapshotter/nydus-overlayfs';

/** mount(2) flag values from <linux/mount.h>: the negative (setting) word and its positive (clearing) opposite. */
const EXPECTED: [set: string, clear: string | undefined, value: number][] = [
  ['ro', 'rw', 1], ['nosuid', 'suid', 2], ['nodev', 'dev', 4], ['noexec', 'exec', 8], ['sync', 'async', 16],
  ['mand', 'nomand', 64], ['dirsync', undefined, 128], ['nosymfollow', 'symfollow', 256], ['noatime', 'atime', 1024],
  ['nodiratime', 'diratime', 2048], ['silent', 'loud', 32768], ['relatime', 'norelatime', 0x200000],
  ['iversion', 'noiversion', 0x800000], ['strictatime', 'nostrictatime', 0x1000000], ['lazytime', 'nolazytime', 0x2000000],
];
const L = 'lowerdir=/l';

test('flag table: every word sets or clears exactly its own MS_* bit', () => {
  const covered = new Set<string>();
  for (const [set, clear, value] of EXPECTED) {
    covered.add(set);
    assert.is(parseOptions(`${L},${set}`).flags, value, `${set} sets 0x${value.toString(16)}`);
    assert.equal(parseOptions(`${L},${set}`).data, [L], `${set} is not overlay data`);
    if (clear === undefined) continue;
    covered.add(clear);
    assert.is(parseOptions(`${L},${clear}`).flags, 0, `${clear} alone sets nothing`);
    assert.is(parseOptions(`${set},${L},${clear}`).flags, 0, `${clear} clears ${set}`);
    assert.is(parseOptions(`${clear},${set}`).flags, value, `the last word wins (${clear},${set})`);
    // the clearing word leaves other bits alone
    assert.is(parseOptions(`ro,nodev,${set},${clear},lowerdir=/l`).flags, (1 | 4) & ~(set === 'ro' || set === 'nodev' ? value : 0));
  }
  assert.equal([...FLAG_WORDS.keys()].filter((w) => !covered.has(w)), [], 'every known word is in the expected table');
});

test('no upstream inversion: mount.fuse\'s trailing dev,suid and an explicit rw leave a rw, dev, suid mount', () => {
  const p = parseOptions('lowerdir=/a:/b,upperdir=/u,workdir=/w,rw,exec,async,atime,diratime,nomand,norelatime,nostrictatime,dev,suid');
  assert.is(p.flags, 0);
  assert.equal(p.data, ['lowerdir=/a:/b', 'upperdir=/u', 'workdir=/w']);
  // nodev/nosuid given: mount.fuse does not append dev/suid, and they stay set
  assert.equal(flagNames(parseOptions('ro,nodev,nosuid,noexec,lowerdir=/a').flags), ['ro', 'nosuid', 'nodev', 'noexec']);
  assert.is(parseOptions('ro,defaults,lowerdir=/a').flags, 1, 'defaults is a no-op, as in libmount');
});

test('bind, rbind and remount are refused, naming the option', () => {
  for (const w of ['bind', 'rbind', 'remount']) {
    try {
      parseOptions(`lowerdir=/a,${w}`);
      assert.unreachable(`${w} accepted`);
    } catch (e) {
      assert.instance(e, ErrnoError);
      assert.is((e as ErrnoError).code, 'EINVAL');
      assert.match((e as Error).message, `'${w}'`);
    }
  }
});

test('Nydus-only options and x-* are dropped, also a base64 extraoption longer than a page', () => {
  const config = JSON.stringify({ device: { backend: { type: 'registry', config: { auth: 'c2VjcmV0OnNlY3JldA==', host: 'r.example', repo: 'x'.repeat(6000) } } } });
  const extra = Buffer.from(JSON.stringify({ source: '/s/image.boot', config, snapshotdir: '/snap/9', fs_version: 'v6' })).toString('base64');
  assert.ok(extra.length > 8192, 'payload is longer than two pages');
  const list = `workdir=/w,upperdir=/u,lowerdir=/m,extraoption=${extra},io.katacontainers.volume=eyJ2b2x1bWUiOjF9,x-systemd.automount,index=off,dev,suid`;
  const p = parseOptions(list);
  assert.equal(p.data, ['workdir=/w', 'upperdir=/u', 'lowerdir=/m', 'index=off']);
  assert.is(p.dropped.length, 3);
  const plan = planMount({ fstype: 'overlay', target: '/t', options: list }, { cwd: '/', pageSize: 4096 });
  assert.is(plan.data, 'workdir=/w,upperdir=/u,lowerdir=/m,index=off');
  assert.is(plan.chdir, undefined, 'the dropped payload does not count towards the page limit');
  assert.equal(plan.dropped, ['extraoption', 'io.katacontainers.volume', 'x-systemd.automount'], 'only keys are kept, never the payload');
  // a prefix match only: an overlay option that merely contains the word is kept
  assert.equal(parseOptions('lowerdir=/extraoption=x').data, ['lowerdir=/extraoption=x']);
});

test('option lists split at unescaped commas, layer lists at unescaped colons (overlayfs escaping)', () => {
  assert.equal(splitOptionList('lowerdir=/a\\,b:/c,upperdir=/u,,workdir=/w,'), ['lowerdir=/a\\,b:/c', 'upperdir=/u', 'workdir=/w']);
  assert.equal(splitLayerList('/a\\:x:/b::/d'), ['/a\\:x', '/b', '', '/d']);
  assert.is(unescapeLayerPath('/a\\:x\\,y\\\\z'), '/a:x,y\\z');
  for (const p of ['/plain', '/a:b', '/c,d', '/e\\f', '/:,\\']) assert.is(unescapeLayerPath(escapeLayerPath(p)), p);
  const refs = layerPaths(['lowerdir=/a\\,b:rel::/d', 'upperdir=/u\\:1', 'workdir=w', 'lowerdir+=/raw\\x', 'index=off'], '/cwd');
  assert.equal(refs, [
    { key: 'lowerdir', path: '/a,b' }, { key: 'lowerdir', path: '/cwd/rel' }, { key: 'lowerdir', path: '/d' },
    { key: 'upperdir', path: '/u:1' }, { key: 'workdir', path: '/cwd/w' }, { key: 'lowerdir+', path: '/raw\\x' },
  ]);
});

test('checks the kernel would make, with the option named', () => {
  const bad: [string[], RegExp][] = [
    [[], /lowerdir= is required/], [['index=off'], /no lowerdir=/], [['lowerdir='], /'lowerdir' needs a value/],
    [['lowerdir=/a', 'upperdir=/u'], /upperdir= needs workdir=/], [['lowerdir=/a', 'workdir=/w'], /workdir= is only valid with upperdir=/],
  ];
  for (const [data, re] of bad) assert.throws(() => validateOverlayOptions(data), re);
  validateOverlayOptions(['lowerdir=/a']);
  validateOverlayOptions(['lowerdir+=/a']);
  validateOverlayOptions(['upperdir=/u', 'workdir=/w', 'lowerdir=/a']);
});

test('common parent is computed by whole path components', () => {
  assert.is(commonParent(['/x/lay1', '/x/lay10', '/x/lay2']), '/x');
  assert.is(commonParent(['/a/b', '/a/b/c']), '/a', 'a path equal to the common dir moves it one up');
  assert.is(commonParent(['/a/b/c']), '/a/b');
  assert.is(commonParent(['/a/x', '/b/y']), '/');
  assert.is(commonParent(['/a//b/./c', '/a/b/d']), '/a/b');
});

/** containerd-like snapshot paths: many lowers and one upper/work under one root. */
function snapshotOptions(n: number, root = '/var/lib/containerd/io.containerd.snapshotter.v1.nydus/snapshots'): string[] {
  const lowers = Array.from({ length: n }, (_, i) => `${root}/${1000 + i}/fs`);
  return [`workdir=${root}/9999/work`, `upperdir=${root}/9999/fs`, `lowerdir=${lowers.join(':')}`, 'index=off', 'volatile'];
}

test('long options: below the threshold untouched, from pagesize-512 bytes relative to the common parent', () => {
  const page = 4096;
  const short = snapshotOptions(3);
  assert.equal(compactOptions(short, { pageSize: page, cwd: '/' }), { data: short.join(',') });

  const long = snapshotOptions(60);
  assert.ok(Buffer.byteLength(long.join(',')) > page, 'the original is longer than a page');
  const r = compactOptions(long, { pageSize: page, cwd: '/somewhere' });
  const root = '/var/lib/containerd/io.containerd.snapshotter.v1.nydus/snapshots';
  assert.is(r.chdir, root);
  assert.ok(Buffer.byteLength(r.data) < longOptionThreshold(page));
  const parts = r.data.split(',');
  assert.is(parts[0], 'workdir=9999/work');
  assert.is(parts[1], 'upperdir=9999/fs');
  assert.ok(parts[2].startsWith('lowerdir=1000/fs:1001/fs:'), 'lower order kept');
  assert.equal(parts.slice(3), ['index=off', 'volatile']);
  // every rewritten path names the same directory from the new cwd, in the same order
  assert.equal(layerPaths(parts, r.chdir!), layerPaths(long, '/'));

  // the boundary: exactly pagesize-512 bytes is rewritten, one byte less is not
  const base = ['lowerdir=/d/a:/d/b', 'index=off'];
  const pad = (len: number) => [...base, `xino=${'x'.repeat(len - Buffer.byteLength([...base, 'xino='].join(',')))}`];
  assert.is(Buffer.byteLength(pad(page - 512).join(',')), page - 512);
  assert.is(compactOptions(pad(page - 513), { pageSize: page, cwd: '/' }).chdir, undefined);
  assert.is(compactOptions(pad(page - 512), { pageSize: page, cwd: '/' }).chdir, '/d');
});

test('long options: escapes, data-only layers, relative inputs and lowerdir+ survive the rewrite', () => {
  const page = 4096;
  const root = `/srv/${'p'.repeat(200)}/layers`;
  const lowers = Array.from({ length: 20 }, (_, i) => escapeLayerPath(`${root}/${i}:with,odd`));
  const data = [`lowerdir=${lowers.slice(0, 10).join(':')}::${lowers.slice(10).join('::')}`, 'upperdir=up', 'workdir=work', `lowerdir+=${root}/plus`];
  assert.ok(Buffer.byteLength(data.join(',')) >= longOptionThreshold(page));
  const r = compactOptions(data, { pageSize: page, cwd: root });
  assert.is(r.chdir, root);
  assert.equal(layerPaths(splitOptionList(r.data), r.chdir!), layerPaths(data, root));
  assert.ok(r.data.startsWith('lowerdir=0\\:with\\,odd:1\\:with\\,odd:'), r.data.slice(0, 60));
  assert.ok(r.data.includes('9\\:with\\,odd::10\\:with\\,odd::11'), 'data-only separator and escapes kept');
  assert.ok(r.data.includes(',upperdir=up,workdir=work,'), 'relative inputs resolved against the cwd, then made relative again');
  assert.ok(r.data.endsWith('lowerdir+=plus'));
});

test('long options that still do not fit in a page fail with E2BIG and the sizes', () => {
  const lowers = Array.from({ length: 40 }, (_, i) => `/l${i}/${'z'.repeat(150)}`); // no common parent but /
  try {
    compactOptions([`lowerdir=${lowers.join(':')}`], { pageSize: 4096, cwd: '/' });
    assert.unreachable('accepted');
  } catch (e) {
    assert.is((e as ErrnoError).code, 'E2BIG');
    assert.match((e as Error).message, /bytes after making layer paths relative to \/ \(\d+ bytes before\); mount\(2\) takes at most 4095/);
  }
  assert.throws(() => compactOptions([`lowerdir=/a,xino=${'y'.repeat(5000)}`], { pageSize: 4096, cwd: '/' }), /at most 4095/);
});

test('argv: exactly overlay <target> -o <options>', () => {
  assert.equal(parseArgv(['overlay', '/t', '-o', 'lowerdir=/a']), { fstype: 'overlay', target: '/t', options: 'lowerdir=/a' });
  for (const args of [[], ['overlay'], ['overlay', '/t', '-o'], ['overlay', '/t', '-o', 'lowerdir=/a', 'extra'], ['/t', '-o', 'lowerdir=/a']]) {
    assert.throws(() => parseArgv(args), (e: unknown) => e instanceof UsageError && /expected 4 arguments/.test((e as Error).message));
  }
  const bad: [string[], RegExp][] = [
    [['ext4', '/t', '-o', 'lowerdir=/a'], /must be 'overlay', got 'ext4'/],
    [['overlay', '', '-o', 'lowerdir=/a'], /empty mount target/],
    [['overlay', '/t', '-x', 'lowerdir=/a'], /third argument must be '-o', got '-x'/],
    [['overlay', '/t', '-o', ''], /empty mount options/],
  ];
  for (const [args, re] of bad) {
    assert.throws(() => parseArgv(args), (e: unknown) => !(e instanceof UsageError) && e instanceof ErrnoError && re.test((e as Error).message));
  }
});

const SNAPS = `/snaps/${'s'.repeat(80)}`;

/** Recorded system calls; `fail` makes mount(2) fail with that errno name. */
function fakeSys(opts: { fail?: string; missing?: string[]; cwd?: string } = {}): MountSys & { calls: string[] } {
  const calls: string[] = [];
  let cwd = opts.cwd ?? '/start';
  return {
    calls,
    cwd: () => cwd,
    chdir: (d) => { calls.push(`chdir ${d}`); cwd = d; },
    mount: (src, target, fstype, flags, data) => {
      calls.push(`mount ${src} ${target} ${fstype} 0x${flags.toString(16)} ${data} (cwd ${cwd})`);
      if (opts.fail) throw new ErrnoError(opts.fail, `mount(${target}): ${opts.fail}`);
    },
    stat: (p) => {
      if (opts.missing?.includes(p)) throw Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT' });
      return fs.statSync('/');
    },
  };
}

function run(args: string[], sys: MountSys, page = 4096): { code: number; err: string } {
  const lines: string[] = [];
  const code = runHelper(args, { error: (l) => lines.push(l), usage: () => 'Usage: nydus-overlayfs overlay <target> -o <options>\n' }, sys, page);
  return { code, err: lines.join('\n') };
}

test('run: the mount(2) call upstream makes, with correct flags and the payload gone', () => {
  const sys = fakeSys();
  const r = run(['overlay', 'rel/target', '-o', 'lowerdir=/a:/b,upperdir=/u,workdir=/w,extraoption=eyJ9,ro,nodev,dev,suid'], sys);
  assert.equal(r, { code: EXIT_OK, err: '' });
  assert.equal(sys.calls, ['mount overlay /start/rel/target overlay 0x1 lowerdir=/a:/b,upperdir=/u,workdir=/w (cwd /start)']);
});

test('run: long options chdir to the common parent, mount with relative paths, chdir back', () => {
  const sys = fakeSys();
  const opts = snapshotOptions(60, SNAPS).join(',');
  const r = run(['overlay', '/target', '-o', `${opts},extraoption=${'A'.repeat(9000)}`], sys);
  assert.is(r.code, EXIT_OK, r.err);
  assert.is(sys.calls.length, 3);
  assert.is(sys.calls[0], `chdir ${SNAPS}`);
  assert.ok(sys.calls[1].startsWith('mount overlay /target overlay 0x0 workdir=9999/work,upperdir=9999/fs,lowerdir=1000/fs:1001/fs:'), sys.calls[1]);
  assert.ok(sys.calls[1].endsWith(`,index=off,volatile (cwd ${SNAPS})`), sys.calls[1]);
  assert.is(sys.calls[2], 'chdir /start');
});

test('run: failures name the errno and the directory or option at fault, exit 32, no stack, no payload', () => {
  const secret = Buffer.from('{"config":"{\\"auth\\":\\"hunter2\\"}"}').toString('base64');
  const r1 = run(['overlay', '/t', '-o', `lowerdir=/a:/gone,upperdir=/u,workdir=/w,extraoption=${secret}`], fakeSys({ fail: 'ENOENT', missing: ['/gone'] }));
  assert.is(r1.code, EXIT_MOUNT_FAILED);
  assert.is(r1.err, 'nydus-overlayfs: mount(2) of overlay on /t failed: ENOENT (no such file or directory): lowerdir /gone: ENOENT (no such file or directory)');
  const r2 = run(['overlay', '/t', '-o', `lowerdir=/a,bogus=1,index=off,extraoption=${secret}`], fakeSys({ fail: 'EINVAL' }));
  assert.is(r2.code, EXIT_MOUNT_FAILED);
  assert.match(r2.err, /failed: EINVAL \(invalid argument\): overlayfs does not know option 'bogus'$/);
  const r3 = run(['overlay', '/t', '-o', 'lowerdir=/a'], fakeSys({ fail: 'EPERM' }));
  assert.match(r3.err, /EPERM .*CAP_SYS_ADMIN/);
  const r4 = run(['overlay', '/t', '-o', 'lowerdir=/a,rbind'], fakeSys());
  assert.equal(r4, { code: EXIT_USAGE, err: "nydus-overlayfs: option 'rbind' is not valid for a new overlay mount (EINVAL)" });
  const r5 = run(['overlay', '/t'], fakeSys());
  assert.is(r5.code, EXIT_USAGE);
  assert.match(r5.err, /^nydus-overlayfs: expected 4 arguments .*got 2\nUsage: nydus-overlayfs overlay <target> -o <options>$/);
  for (const r of [r1, r2, r3, r4, r5]) {
    assert.not.match(r.err, /\n\s+at /, 'no stack trace');
    assert.not.ok(r.err.includes(secret) || r.err.includes('hunter2'), 'payload never printed');
  }
});

test('run: a failed chdir before a long mount is reported, mount(2) is not attempted', () => {
  const sys = fakeSys();
  sys.chdir = (d) => { throw Object.assign(new Error(`EACCES ${d}`), { code: 'EACCES' }); };
  const r = run(['overlay', '/t', '-o', snapshotOptions(60, SNAPS).join(',')], sys);
  assert.is(r.code, EXIT_MOUNT_FAILED);
  assert.ok(r.err.startsWith(`nydus-overlayfs: cannot chdir to ${SNAPS} (common parent`) && r.err.includes('EACCES'), r.err);
  assert.equal(sys.calls, []);
});

test('page size comes from the aux vector', () => {
  const p = pageSize();
  assert.ok(p >= 4096 && (p & (p - 1)) === 0, `page size ${p}`);
  assert.ok(constants.errno.E2BIG > 0 && path.sep === '/');
});

test.run();
