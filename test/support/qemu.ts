/**
 * End-to-end rig: boot a real QEMU 7.2 guest (Debian Linux 6.1 + busybox initramfs) whose
 * vhost-user-fs-pci device talks to a daemon on a unix socket, run a shell script in it and
 * return the script's output. See test/e2e/qemu-rig.test.ts for a worked example.
 *
 *   const g = await prepareGuest(); if ('skip' in g) ...
 *   const d = await startReferenceVirtiofsd(dir, sock);          // or your own daemon
 *   const r = await bootGuest({ socket: sock, script: `${H.prelude}\n${H.mountVirtiofs()}\n...` });
 *   await d.stop();
 *
 * The guest: 1 vCPU under TCG (KVM guests stall on these machines), memfd-backed shared
 * memory (vhost-user needs it), `console=ttyS0`, busybox applets in /bin, /sbin, /usr/bin;
 * the modules virtio*, fuse, virtiofs, overlay are loaded before the script runs. The script
 * runs as `sh` in `/` as root, its stdout+stderr captured and printed between markers after
 * it ends (so kernel console messages cannot interleave with it), then `poweroff -f`.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import {
  BASE_MODULES, BUSYBOX, QEMU_BIN, REFERENCE_VIRTIOFSD, ensureReferenceVirtiofsd, prepareGuest, resolveModules,
  type GuestKernel,
} from './guest-kernel';
import { sleep } from './timing';
import { mmapShared, munmap, viewOf } from '../../src/vhost-user/sys/host';

export { prepareGuest, ensureReferenceVirtiofsd, BASE_MODULES, REFERENCE_VIRTIOFSD, GUEST_CACHE } from './guest-kernel';
export type { GuestKernel, PrepareResult } from './guest-kernel';


// ---------------------------------------------------------------------------------------
// cpio (newc) writer: lets the initramfs carry /dev/console without mknod on the host

interface CpioEntry { name: string; mode: number; data?: Buffer; rdevMajor?: number; rdevMinor?: number }

function cpioNewc(entries: CpioEntry[], trailer = true): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const pad4 = (n: number) => (4 - (n % 4)) % 4;
  const push = (e: CpioEntry) => {
    const name = Buffer.from(`${e.name}\0`);
    const data = e.data ?? Buffer.alloc(0);
    const f = [ino++, e.mode, 0, 0, 1, 0, data.length, 0, 0, e.rdevMajor ?? 0, e.rdevMinor ?? 0, name.length, 0];
    const hdr = Buffer.from(`070701${f.map((v) => v.toString(16).padStart(8, '0')).join('')}`, 'latin1');
    parts.push(hdr, name, Buffer.alloc(pad4(hdr.length + name.length)), data, Buffer.alloc(pad4(data.length)));
  };
  for (const e of entries) push(e);
  if (trailer) push({ name: 'TRAILER!!!', mode: 0 });
  return Buffer.concat(parts);
}

const DIR = 0o040755;
const REG = 0o100644;
const EXE = 0o100755;
const LNK = 0o120777;
const CHR = 0o020600;

function initScript(nonce: string, stream: boolean): string {
  const B = `===RIG-BEGIN-${nonce}===`;
  const E = `===RIG-END-${nonce}`;
  const runScript = stream
    ? `{ (cd / && sh /rig/test.sh) 2>&1; echo $? > /rig/rc; } | tee /rig/out; rc=$(cat /rig/rc)`
    : `(cd / && sh /rig/test.sh) > /rig/out 2>&1 < /dev/null; rc=$?`;
  return `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /mnt /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec 0</dev/console 1>/dev/console 2>&1
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/ TERM=dumb
rc=0
for m in $(cat /rig/modules); do
  if ! insmod /rig/mod/$m.ko; then echo "RIG: insmod $m failed" > /rig/out; rc=200; break; fi
done
echo "RIG: ready uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ $rc = 0 ]; then
  ${runScript}
fi
echo 1 > /proc/sys/kernel/printk
echo '${B}'
cat /rig/out
echo "${E} rc=$rc==="
if [ $rc != 0 ]; then echo "RIG: dmesg tail"; dmesg | tail -n 40 | sed 's/^/RIG-DMESG: /'; fi
sync
poweroff -f
sleep 5
`;
}

const baseArchives = new Map<string, Buffer>();

/** gzip'd cpio with busybox, the modules and the dirs; cached per module list. */
function baseInitramfs(g: GuestKernel, modules: string[]): { archive: Buffer; order: string[] } {
  const mods = resolveModules(g.modulesDir, modules);
  const order = mods.map((m) => m.name);
  const key = `${g.modulesDir}|${order.join(',')}`;
  let archive = baseArchives.get(key);
  if (!archive) {
    const entries: CpioEntry[] = [];
    for (const d of ['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'tmp', 'run', 'mnt', 'etc', 'rig', 'rig/mod']) {
      entries.push({ name: d, mode: DIR });
    }
    entries.push({ name: 'dev/console', mode: CHR, rdevMajor: 5, rdevMinor: 1 });
    entries.push({ name: 'dev/null', mode: 0o020666, rdevMajor: 1, rdevMinor: 3 });
    entries.push({ name: 'bin/busybox', mode: EXE, data: fs.readFileSync(BUSYBOX) });
    entries.push({ name: 'bin/sh', mode: LNK, data: Buffer.from('busybox') });
    entries.push({ name: 'etc/passwd', mode: REG, data: Buffer.from('root:x:0:0:root:/:/bin/sh\n') });
    entries.push({ name: 'etc/group', mode: REG, data: Buffer.from('root:x:0:\n') });
    for (const m of mods) entries.push({ name: `rig/mod/${m.name}.ko`, mode: REG, data: m.data });
    entries.push({ name: 'rig/modules', mode: REG, data: Buffer.from(`${order.join('\n')}\n`) });
    archive = gzipSync(cpioNewc(entries), { level: 6 });
    baseArchives.set(key, archive);
  }
  return { archive, order };
}

const binArchives = new Map<string, Buffer>();

/**
 * Host executables with every shared library `ldd` lists, at the same paths, as an
 * uncompressed cpio part (cached per list): the guest has no package manager, so a tool
 * such as fio comes from the host. Uncompressed because the libraries are tens of MiB
 * and the kernel copies a plain cpio far faster than it inflates one under TCG.
 * Throws when a binary is missing or `ldd` reports a library it cannot find.
 */
export function hostBinariesArchive(bins: string[]): Buffer {
  const key = bins.join('\0');
  let a = binArchives.get(key);
  if (a) return a;
  const files = new Map<string, string>(); // guest path → host file (symlinks resolved)
  for (const b of bins) {
    if (!fs.existsSync(b)) throw new Error(`hostBinariesArchive: ${b} not found on the host`);
    files.set(b, fs.realpathSync(b));
    const out = execFileSync('ldd', [b], { encoding: 'utf8' });
    for (const line of out.split('\n')) {
      if (/not found/.test(line)) throw new Error(`hostBinariesArchive: ${b}: ${line.trim()}`);
      const m = /=>\s*(\/\S+)\s+\(/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
      if (m) files.set(m[1], fs.realpathSync(m[1]));
    }
  }
  const dirs = new Set<string>();
  const entries: CpioEntry[] = [];
  for (const [g, h] of files) {
    const rel = g.replace(/^\/+/, '');
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (!dirs.has(d)) { dirs.add(d); entries.push({ name: d, mode: DIR }); }
    }
    entries.push({ name: rel, mode: EXE, data: fs.readFileSync(h) });
  }
  a = cpioNewc(entries);
  binArchives.set(key, a);
  return a;
}

export interface BootOptions {
  /** vhost-user socket the daemon listens on (QEMU connects as client) */
  socket: string;
  /** virtio-fs tag (default `myfs`) */
  tag?: string;
  /** shell script run by busybox sh inside the guest */
  script: string;
  /** guest RAM, MiB (default 512) */
  memMiB?: number;
  /** kill QEMU after this long (default 60 s) */
  timeoutMs?: number;
  /** more kernel modules to load (dependencies resolved from their .modinfo) */
  extraModules?: string[];
  /** vhost-user-fs-pci queue-size (default 1024, what Kata uses) */
  queueSize?: number;
  /** also echo the script's output live on the console (to see progress on timeouts) */
  stream?: boolean;
  /** more files for the initramfs: guest path (relative to /) → content */
  files?: Record<string, string | Buffer>;
  /** host executables to copy into the guest with their shared libraries (see hostBinariesArchive) */
  hostBinaries?: string[];
  /** extra QEMU arguments (e.g. a second -device) */
  qemuArgs?: string[];
  /** extra kernel command-line words */
  append?: string;
  /** receives console output as it arrives */
  onConsole?: (chunk: string) => void;
}

export interface BootResult {
  /** script stdout+stderr, `\r\n` normalized to `\n` */
  output: string;
  /** the markers were seen and the script's exit status was 0 */
  exitOk: boolean;
  /** the script's exit status; null when the END marker never came (crash/timeout) */
  rc: number | null;
  /** QEMU start → QEMU exit, ms */
  durationMs: number;
  /** guest /proc/uptime (ms) when the modules were loaded, i.e. boot cost before the script */
  bootMs: number | null;
  timedOut: boolean;
  /** the whole serial console plus QEMU's stderr, for diagnostics */
  console: string;
}

/**
 * Boot a guest with one vhost-user-fs device on `socket`, run `script`, power off.
 * The daemon must already listen on `socket`. Throws if the guest cannot be prepared.
 */
export async function bootGuest(opts: BootOptions): Promise<BootResult> {
  const g = await prepareGuest();
  if ('skip' in g) throw new Error(`bootGuest: ${g.skip}`);
  const nonce = randomBytes(6).toString('hex');
  const { archive } = baseInitramfs(g, [...BASE_MODULES, ...(opts.extraModules ?? [])]);
  const extra: CpioEntry[] = [
    { name: 'init', mode: EXE, data: Buffer.from(initScript(nonce, !!opts.stream)) },
    { name: 'rig/test.sh', mode: EXE, data: Buffer.from(opts.script) },
  ];
  for (const [p, c] of Object.entries(opts.files ?? {})) {
    const rel = p.replace(/^\/+/, '');
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) extra.push({ name: parts.slice(0, i).join('/'), mode: DIR });
    extra.push({ name: rel, mode: EXE, data: Buffer.isBuffer(c) ? c : Buffer.from(c) });
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-qemu-'));
  const initrd = path.join(dir, 'initrd.gz');
  // the kernel unpacks concatenated archives in order: base (cached) + this boot's /init and script
  // an uncompressed part must start 4-byte aligned (the kernel skips the zero padding)
  const bins = opts.hostBinaries?.length ? [Buffer.alloc((4 - (archive.length % 4)) % 4), hostBinariesArchive(opts.hostBinaries)] : [];
  fs.writeFileSync(initrd, Buffer.concat([archive, ...bins, gzipSync(cpioNewc(extra), { level: 1 })]));

  const mem = opts.memMiB ?? 512;
  const tag = opts.tag ?? 'myfs';
  const args = [
    '-accel', 'tcg', '-cpu', 'max', '-smp', '1', '-m', `${mem}M`,
    '-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`, '-numa', 'node,memdev=mem',
    '-chardev', `socket,id=char0,path=${opts.socket}`,
    '-device', `vhost-user-fs-pci,chardev=char0,tag=${tag},queue-size=${opts.queueSize ?? 1024}`,
    '-kernel', g.kernel, '-initrd', initrd,
    '-append', `console=ttyS0 quiet panic=-1${opts.append ? ` ${opts.append}` : ''}`,
    '-nographic', '-no-reboot', '-nodefaults', '-serial', 'stdio',
    ...(opts.qemuArgs ?? []),
  ];
  const t0 = Date.now();
  const proc = spawn(QEMU_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let con = '';
  let err = '';
  proc.stdout!.setEncoding('utf8');
  proc.stderr!.setEncoding('utf8');
  proc.stdout!.on('data', (d: string) => { con += d; opts.onConsole?.(d); });
  proc.stderr!.on('data', (d: string) => { err += d; });
  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; proc.kill('SIGKILL'); }, opts.timeoutMs ?? 60_000);
  await new Promise<void>((resolve) => { proc.on('close', () => resolve()); proc.on('error', (e) => { err += String(e); resolve(); }); });
  clearTimeout(timer);
  const durationMs = Date.now() - t0;
  fs.rmSync(dir, { recursive: true, force: true });

  const text = con.replace(/\r\n/g, '\n').replace(/\r/g, '');
  const consoleText = err ? `${text}\n--- qemu stderr ---\n${err}` : text;
  const begin = `===RIG-BEGIN-${nonce}===\n`;
  const endRe = new RegExp(`(?:^|\\n)===RIG-END-${nonce} rc=(\\d+)===`);
  const b = text.indexOf(begin);
  const boot = /RIG: ready uptime=([\d.]+)/.exec(text);
  const bootMs = boot ? Math.round(parseFloat(boot[1]) * 1000) : null;
  if (b < 0) return { output: '', exitOk: false, rc: null, durationMs, bootMs, timedOut, console: consoleText };
  const rest = text.slice(b + begin.length);
  const m = endRe.exec(rest);
  if (!m) return { output: rest, exitOk: false, rc: null, durationMs, bootMs, timedOut, console: consoleText };
  const output = rest.slice(0, m.index) + (m[0].startsWith('\n') ? '\n' : '');
  const rc = Number(m[1]);
  return { output, exitOk: rc === 0, rc, durationMs, bootMs, timedOut, console: consoleText };
}

// ---------------------------------------------------------------------------------------
// guest shell helpers and their host-side counterparts

/**
 * Shell snippets for guest scripts. Put `prelude` first; it defines:
 *   rig_ms            → ms since boot (from /proc/uptime, 10 ms resolution)
 *   rig_us            → µs since boot (from /proc/timer_list, ns clock; falls back to rig_ms*1000)
 *   rig_time LABEL cmd...   → runs cmd, prints `@@TIME LABEL <µs> rc=<rc>` (parse: parseGuestTimings)
 *   rig_tree DIR [LABEL]    → prints the tree listing of DIR (parse: parseGuestTree)
 */
export const guestScriptHelpers = {
  prelude: `
rig_ms() { local u s c; read u _ < /proc/uptime; s=\${u%.*}; c=\${u#*.}; c=\${c#0}; echo $((s * 1000 + c * 10)); }
rig_us() { local n; n=$(awk '/^now at/ { print $3; exit }' /proc/timer_list 2>/dev/null); if [ -n "$n" ]; then echo $((n / 1000)); else echo $(( $(rig_ms) * 1000 )); fi; }
rig_time() { local l t0 t1 rc; l=$1; shift; t0=$(rig_us); "$@"; rc=$?; t1=$(rig_us); echo "@@TIME $l $((t1 - t0)) rc=$rc"; return $rc; }
rig_tree() {
  echo "@@TREE-BEGIN \${2:-tree}"
  ( cd "$1" || exit 1
    find . -mindepth 1 -exec stat -c 'S|%n|%f|%u|%g|%s|%t|%T' {} +
    find . -mindepth 1 -type f -exec sha256sum {} + | sed 's/^/H|/'
    find . -mindepth 1 -type l | while IFS= read -r p; do echo "L|$p|$(readlink "$p")"; done )
  echo "@@TREE-END \${2:-tree} rc=$?"
}
`,
  /** `mkdir -p MNT && mount -t virtiofs TAG MNT` (fails the script on error) */
  mountVirtiofs(tag = 'myfs', mnt = '/mnt', options?: string): string {
    return `mkdir -p ${mnt} && mount -t virtiofs${options ? ` -o ${options}` : ''} ${tag} ${mnt} || { echo "RIG: mount virtiofs ${tag} failed"; exit 101; }`;
  },
  /** print the listing of DIR under LABEL (needs prelude) */
  tree(dir: string, label = 'tree'): string {
    return `rig_tree ${dir} ${label}`;
  },
  /** print `@@TIME LABEL µs rc=N` for a command (needs prelude) */
  time(label: string, cmd: string): string {
    return `rig_time ${label} ${cmd}`;
  },
};

/**
 * Canonical tree line: `path|type|perm|uid|gid|size|extra`, path `./rel`, type d/f/l/c/b/p/s,
 * perm 4 octal digits, size only for regular files (else `-`), extra = sha256 for files,
 * link target for symlinks, `major,minor` for devices, else `-`. Sorted by path.
 * Limitation: names must not contain `|` or newlines.
 */
export type TreeListing = string[];

const TYPE_CHARS: Record<number, string> = { 0o040000: 'd', 0o100000: 'f', 0o120000: 'l', 0o020000: 'c', 0o060000: 'b', 0o010000: 'p', 0o140000: 's' };

function treeLine(p: string, mode: number, uid: number, gid: number, size: number, extra: string): string {
  const type = TYPE_CHARS[mode & 0o170000] ?? '?';
  return [p, type, (mode & 0o7777).toString(8).padStart(4, '0'), uid, gid, type === 'f' ? size : '-', extra].join('|');
}
const byPath = (a: string, b: string) => { const pa = a.slice(0, a.indexOf('|')); const pb = b.slice(0, b.indexOf('|')); return pa < pb ? -1 : pa > pb ? 1 : 0; };

/** Parse the `rig_tree DIR LABEL` output from a guest script's output. */
export function parseGuestTree(output: string, label = 'tree'): TreeListing {
  const lines = output.split('\n');
  const start = lines.indexOf(`@@TREE-BEGIN ${label}`);
  if (start < 0) throw new Error(`no tree listing '${label}' in guest output`);
  const stats = new Map<string, string[]>();
  const hashes = new Map<string, string>();
  const links = new Map<string, string>();
  let ended = false;
  for (const l of lines.slice(start + 1)) {
    if (l.startsWith(`@@TREE-END ${label}`)) {
      if (!l.endsWith(' rc=0')) throw new Error(`guest tree listing '${label}' failed: ${l}`);
      ended = true;
      break;
    }
    if (l.startsWith('S|')) { const f = l.split('|'); stats.set(f[1], f.slice(2)); }
    else if (l.startsWith('H|')) { const m = /^H\|([0-9a-f]{64}) {2}(.*)$/.exec(l); if (m) hashes.set(m[2], m[1]); }
    else if (l.startsWith('L|')) { const i = l.indexOf('|', 2); links.set(l.slice(2, i), l.slice(i + 1)); }
  }
  if (!ended) throw new Error(`tree listing '${label}' not terminated`);
  const out: string[] = [];
  for (const [p, [modeHex, uid, gid, size, maj, min]] of stats) {
    const mode = parseInt(modeHex, 16);
    const t = TYPE_CHARS[mode & 0o170000];
    const extra = t === 'f' ? (hashes.get(p) ?? 'NOHASH') : t === 'l' ? (links.get(p) ?? 'NOLINK')
      : t === 'c' || t === 'b' ? `${parseInt(maj, 16)},${parseInt(min, 16)}` : '-';
    out.push(treeLine(p, mode, Number(uid), Number(gid), Number(size), extra));
  }
  return out.sort(byPath);
}

/** The same listing computed on the host (lstat + sha256). */
export function hostTree(dir: string): TreeListing {
  const out: string[] = [];
  const walk = (abs: string, rel: string) => {
    for (const name of fs.readdirSync(abs)) {
      const a = path.join(abs, name);
      const r = `${rel}/${name}`;
      const st = fs.lstatSync(a);
      let extra = '-';
      if (st.isFile()) extra = createHash('sha256').update(fs.readFileSync(a)).digest('hex');
      else if (st.isSymbolicLink()) extra = fs.readlinkSync(a);
      else if (st.isCharacterDevice() || st.isBlockDevice()) {
        const rdev = st.rdev;
        const major = Math.floor(rdev / 256) & 0xfff;
        const minor = (rdev & 0xff) | (Math.floor(rdev / 0x100000) & ~0xff);
        extra = `${major},${minor}`;
      }
      out.push(treeLine(r, st.mode, st.uid, st.gid, st.size, extra));
      if (st.isDirectory()) walk(a, r);
    }
  };
  walk(dir, '.');
  return out.sort(byPath);
}

/** `@@TIME label µs rc=N` lines → { label: µs } (last one wins). */
export function parseGuestTimings(output: string): Record<string, { us: number; rc: number }> {
  const out: Record<string, { us: number; rc: number }> = {};
  for (const m of output.matchAll(/^@@TIME (\S+) (\d+) rc=(\d+)$/gm)) out[m[1]] = { us: Number(m[2]), rc: Number(m[3]) };
  return out;
}

// ---------------------------------------------------------------------------------------
// page cache

/**
 * Map every regular file of at least `minSize` bytes under `dirs` and touch each page, so
 * their page cache is both filled and kept: `echo 3 > /proc/sys/vm/drop_caches` (other
 * benches on a shared machine) drops only unmapped pages. Benches comparing two daemons
 * reading the same data call this so that neither one measures the disk. Returns the
 * function that unmaps everything.
 */
export function pinFilesInPageCache(dirs: string[], minSize = 1 << 20): () => void {
  const maps: { addr: bigint; len: number }[] = [];
  const walk = (p: string): void => {
    const st = fs.statSync(p);
    if (st.isDirectory()) { for (const n of fs.readdirSync(p)) walk(path.join(p, n)); return; }
    if (!st.isFile() || st.size < minSize) return;
    const fd = fs.openSync(p, 'r+');
    try {
      const addr = mmapShared(fd, st.size, 0);
      maps.push({ addr, len: st.size });
      for (let off = 0; off < st.size; off += 1 << 30) {
        const len = Math.min(1 << 30, st.size - off);
        const v = new Uint8Array(viewOf(addr + BigInt(off), len));
        let x = 0;
        for (let i = 0; i < len; i += 4096) x ^= v[i];
        if (x === 0x100) throw new Error('unreachable');
      }
    } finally { fs.closeSync(fd); }
  };
  try {
    for (const d of dirs) walk(d);
  } catch (e) {
    for (const m of maps) munmap(m.addr, m.len);
    throw e;
  }
  return () => { for (const m of maps.splice(0)) munmap(m.addr, m.len); };
}

// ---------------------------------------------------------------------------------------
// daemons

/** true once a unix socket bound at `sock` is listening (per /proc/net/unix, no connect). */
export function unixSocketListening(sock: string): boolean {
  const abs = path.resolve(sock);
  try {
    for (const l of fs.readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
      const f = l.trim().split(/\s+/);
      if (f[7] === abs && (parseInt(f[3], 16) & 0x10000) !== 0) return true;
    }
  } catch { /* no procfs */ }
  return false;
}

/**
 * Wait until `sock` is a listening unix socket (not connecting: vhost-user daemons
 * serve the first connection only). Throws on timeout or when `exited` resolves first.
 */
export async function waitForSocket(sock: string, timeoutMs = 10_000, isDead?: () => string | undefined): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    if (fs.existsSync(sock) && unixSocketListening(sock)) return;
    const dead = isDead?.();
    if (dead) throw new Error(dead);
    if (Date.now() - t0 > timeoutMs) throw new Error(`socket ${sock} not listening after ${timeoutMs} ms`);
    await sleep(20);
  }
}

export interface RunningDaemon {
  proc: ChildProcess;
  /** stdout+stderr so far */
  log(): string;
  /** SIGTERM (SIGKILL after 5 s), wait, remove the socket */
  stop(): Promise<void>;
}

export interface ReferenceOptions {
  cache?: 'none' | 'auto' | 'always';
  /** -o xattr (needed for guest overlays with upper on virtio-fs) */
  xattr?: boolean;
  /** -o modcaps=+sys_admin (trusted.* xattrs) */
  modcapsSysAdmin?: boolean;
  /** more virtiofsd arguments */
  extraArgs?: string[];
}

/** Start /usr/lib/qemu/virtiofsd (QEMU 7.2's C daemon) sharing `dir` on `socket`. */
export async function startReferenceVirtiofsd(dir: string, socket: string, opts: ReferenceOptions = {}): Promise<RunningDaemon> {
  const missing = ensureReferenceVirtiofsd();
  if (missing) throw new Error(`reference virtiofsd: ${missing}`);
  fs.rmSync(socket, { force: true });
  const args = [
    `--socket-path=${path.resolve(socket)}`, '-o', `source=${path.resolve(dir)}`, '-o', `cache=${opts.cache ?? 'auto'}`,
    '-o', opts.xattr ? 'xattr' : 'no_xattr',
    ...(opts.modcapsSysAdmin ? ['-o', 'modcaps=+sys_admin'] : []),
    ...(opts.extraArgs ?? []),
  ];
  return startDaemonProcess(REFERENCE_VIRTIOFSD, args, socket);
}

/** Spawn any vhost-user daemon and wait until it listens on `socket`. */
export async function startDaemonProcess(bin: string, args: string[], socket: string, timeoutMs = 10_000): Promise<RunningDaemon> {
  let out = '';
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout!.on('data', (d) => { out += d; });
  proc.stderr!.on('data', (d) => { out += d; });
  let exit: string | undefined;
  const exited = new Promise<void>((resolve) => {
    proc.on('exit', (code, sig) => { exit = `${path.basename(bin)} exited (${code ?? sig}) before listening: ${out}`; resolve(); });
    proc.on('error', (e) => { exit = `${bin}: ${e.message}`; resolve(); });
  });
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    fs.rmSync(socket, { force: true });
  };
  try {
    await waitForSocket(socket, timeoutMs, () => exit);
  } catch (e) {
    await stop();
    throw e;
  }
  return { proc, log: () => out, stop };
}
