/**
 * Debian's containerd 1.6 (+ runc) as a child process for end-to-end tests,
 * on private sockets and directories under one temp dir, with a generated
 * config that registers a snapshotter proxy plugin (`[proxy_plugins.nydus]`
 * by default) and disables the CRI plugin. Also: our containerd-nydus-grpc as
 * a child process, a `ctr` wrapper bound to the private socket, and teardown
 * that kills tasks, stops both daemons and lazily unmounts whatever is left
 * mounted under the temp dir (so a failed test leaves no mounts behind).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tarStream from 'tar-stream';
import { ROOT, hasCommand } from './cli';
import { sleep } from './timing';

export const isCI = (): boolean => /^(true|1)$/i.test(process.env.CI ?? '');

/** Why the containerd e2e cannot run here (undefined = it can). */
export function containerdMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root';
  for (const c of ['containerd', 'ctr', 'runc', 'containerd-shim-runc-v2']) if (!hasCommand(c)) return `${c} is not installed (apt-get install containerd runc)`;
  if (!fs.existsSync(path.join(ROOT, 'dist/bin/containerd-nydus-grpc.js'))) return 'dist/ is not built (npx tsc -p .)';
  return undefined;
}

/** Skip with a printed reason, or fail under CI=true. */
export function skipUnlessContainerd(name: string): boolean {
  const why = containerdMissing();
  if (!why) return false;
  if (isCI()) throw new Error(`${name}: cannot run under CI: ${why}`);
  console.log(`SKIP ${name}: ${why}`);
  return true;
}

export interface Proc {
  proc: ChildProcess;
  log(): string;
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

function start(bin: string, args: string[], env?: NodeJS.ProcessEnv): Proc {
  let out = '';
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const keep = (d: Buffer): void => {
    out += d.toString();
    if (out.length > 4 << 20) out = out.slice(-(2 << 20));
  };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  return {
    proc,
    log: () => out,
    exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      const c = await exited;
      clearTimeout(t);
      return c;
    },
  };
}

async function waitFor(what: string, cond: () => boolean, p: Proc, timeoutMs = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (p.proc.exitCode !== null || p.proc.signalCode !== null) throw new Error(`${what} exited early:\n${p.log().slice(-4000)}`);
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what} not ready after ${timeoutMs} ms:\n${p.log().slice(-4000)}`);
    await sleep(50);
  }
}

export interface SnapshotterProc extends Proc {
  root: string;
  address: string;
  configPath: string;
}

/** Start our containerd-nydus-grpc with `toml` (root/address added) and wait for its socket. */
export async function startSnapshotter(dir: string, toml = '', extraArgs: string[] = []): Promise<SnapshotterProc> {
  const root = path.join(dir, 'sn');
  const address = path.join(dir, 'sn.sock');
  const configPath = path.join(dir, 'snapshotter.toml');
  fs.writeFileSync(configPath, `version = 1\nroot = "${root}"\naddress = "${address}"\n${toml}`);
  try { fs.unlinkSync(address); } catch { /* none */ }
  const p = start(process.execPath, [path.join(ROOT, 'bin/containerd-nydus-grpc'), '--config', configPath, '--log-to-stdout', '--log-level', 'debug', ...extraArgs]);
  await waitFor('containerd-nydus-grpc', () => fs.existsSync(address), p);
  return { ...p, root, address, configPath };
}

export interface Containerd extends Proc {
  dir: string;
  address: string;
  namespace: string;
  /** run ctr against this containerd; throws with its output on failure */
  ctr(args: string[], opts?: { allowFail?: boolean; timeoutMs?: number }): { status: number | null; stdout: string; stderr: string };
}

/** containerd config v2 with the proxy snapshotter and private paths. */
export function containerdConfig(dir: string, snapshotterAddress: string, name = 'nydus'): string {
  return `version = 2
root = "${dir}/root"
state = "${dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "${dir}/c.sock"

[ttrpc]
  address = "${dir}/c.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "${dir}/opt"

[proxy_plugins]
  [proxy_plugins.${name}]
    type = "snapshot"
    address = "${snapshotterAddress}"
`;
}

export async function startContainerd(dir: string, snapshotterAddress: string): Promise<Containerd> {
  fs.mkdirSync(dir, { recursive: true });
  const cfg = path.join(dir, 'containerd.toml');
  fs.writeFileSync(cfg, containerdConfig(dir, snapshotterAddress));
  const address = path.join(dir, 'c.sock');
  const p = start('containerd', ['--config', cfg, '--log-level', 'info']);
  await waitFor('containerd', () => fs.existsSync(address), p);
  const namespace = 'nydus-e2e';
  const ctr: Containerd['ctr'] = (args, opts = {}) => {
    const r = spawnSync('ctr', ['--address', address, '--namespace', namespace, ...args], { encoding: 'utf8', timeout: opts.timeoutMs ?? 120_000 });
    const res = { status: r.status, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
    if (r.status !== 0 && !opts.allowFail) throw new Error(`ctr ${args.join(' ')} failed (${r.status}): ${res.stderr}${res.stdout}`);
    return res;
  };
  // wait until the proxy plugin answers
  const t0 = Date.now();
  for (;;) {
    const r = ctr(['snapshots', '--snapshotter', 'nydus', 'ls'], { allowFail: true });
    if (r.status === 0) break;
    if (Date.now() - t0 > 20_000) throw new Error(`containerd/snapshotter not ready: ${r.stderr}\n${p.log().slice(-3000)}`);
    await sleep(200);
  }
  return { ...p, dir, address, namespace, ctr };
}

/** Lazily unmount everything mounted under `dir`, deepest first. */
export function unmountUnder(dir: string): string[] {
  const real = fs.existsSync(dir) ? fs.realpathSync(dir) : dir;
  const mps = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m)
    .map((m) => m.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((m) => m === real || m.startsWith(real + '/'))
    .sort((a, b) => b.length - a.length);
  for (const m of mps) spawnSync('umount', ['-l', m]);
  return mps;
}

/** Kill the pids whose command line mentions `dir` (nydusd / shims started for this test). */
export function killUnder(dir: string): number[] {
  const out: number[] = [];
  for (const pid of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    if (Number(pid) === process.pid) continue;
    let cmd = '';
    try { cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8'); } catch { continue; }
    if (cmd.includes(dir)) {
      try { process.kill(Number(pid), 'SIGKILL'); out.push(Number(pid)); } catch { /* gone */ }
    }
  }
  return out;
}

/** Full teardown: tasks killed, containerd and snapshotter stopped, strays killed, mounts removed, dir deleted. */
export async function teardown(dir: string, c?: Containerd, sn?: Proc): Promise<void> {
  if (c) {
    const tasks = c.ctr(['tasks', 'ls', '-q'], { allowFail: true }).stdout.split('\n').filter((x) => x.trim());
    for (const t of tasks) {
      c.ctr(['tasks', 'kill', '-s', 'SIGKILL', t], { allowFail: true });
      c.ctr(['tasks', 'rm', '-f', t], { allowFail: true });
    }
    await c.stop();
  }
  if (sn) await sn.stop();
  killUnder(dir);
  await sleep(100);
  unmountUnder(dir);
  fs.rmSync(dir, { recursive: true, force: true });
}

/** A short temp dir (unix socket paths must stay under 108 bytes). */
export function shortTmp(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

// ---------------------------------------------------------------- a local OCI image (no network)


export interface TarEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink';
  mode?: number;
  data?: Buffer | string;
  linkname?: string;
}

export function makeTar(entries: TarEntry[]): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const pack = tarStream.pack();
    const chunks: Buffer[] = [];
    pack.on('data', (c: unknown) => { chunks.push(c as Buffer); });
    pack.on('end', () => resolve(Buffer.concat(chunks)));
    pack.on('error', reject);
    for (const e of entries) {
      const type = e.type ?? 'file';
      const mode = e.mode ?? (type === 'directory' ? 0o755 : 0o644);
      const hdr = { name: e.name, type, mode, uid: 0, gid: 0, mtime: new Date(0), linkname: e.linkname };
      if (type === 'file') pack.entry(hdr, typeof e.data === 'string' ? Buffer.from(e.data) : (e.data ?? Buffer.alloc(0)));
      else pack.entry(hdr);
    }
    pack.finalize();
  });
}

const sha = (b: Buffer): string => 'sha256:' + createHash('sha256').update(b).digest('hex');

export interface OciImage {
  blobs: Map<string, Buffer>;
  manifest: Buffer;
  manifestDigest: string;
}

/** Config + manifest (OCI media types, uncompressed layers) for `layers` in order. */
export function ociImage(layers: Buffer[], cmd: string[] = ['/bin/sh']): OciImage {
  const blobs = new Map<string, Buffer>();
  const put = (b: Buffer): { digest: string; size: number } => {
    const d = sha(b);
    blobs.set(d, b);
    return { digest: d, size: b.length };
  };
  const layerDescs = layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...put(l) }));
  const config = Buffer.from(JSON.stringify({
    architecture: process.arch === 'arm64' ? 'arm64' : 'amd64', os: 'linux',
    config: { Cmd: cmd, Env: ['PATH=/bin'] },
    rootfs: { type: 'layers', diff_ids: layerDescs.map((d) => d.digest) },
  }));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...put(config) },
    layers: layerDescs,
  }));
  return { blobs, manifest, manifestDigest: sha(manifest) };
}

/**
 * An OCI image-layout archive for `ctr image import`: uncompressed layers in
 * order, a config whose diff_ids match, the image name as annotation.
 */
export async function buildOciArchive(name: string, layers: Buffer[], cmd: string[] = ['/bin/sh']): Promise<Buffer> {
  const img = ociImage(layers, cmd);
  const index = {
    schemaVersion: 2,
    manifests: [{
      mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: img.manifestDigest, size: img.manifest.length,
      annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': name.split(':').pop() },
    }],
  };
  const entries: TarEntry[] = [
    { name: 'oci-layout', data: JSON.stringify({ imageLayoutVersion: '1.0.0' }) },
    { name: 'index.json', data: JSON.stringify(index) },
    { name: 'blobs', type: 'directory' },
    { name: 'blobs/sha256', type: 'directory' },
    ...[...img.blobs, [img.manifestDigest, img.manifest] as [string, Buffer]].map(([d, b]) => ({ name: `blobs/sha256/${d.slice(7)}`, data: b })),
  ];
  return makeTar(entries);
}

/** Layer with busybox-static as /bin/busybox and applet links (sh, cat, echo, ls, mkdir), /tmp, /etc. */
export async function busyboxLayer(): Promise<Buffer> {
  const bb = fs.readFileSync('/bin/busybox');
  return makeTar([
    { name: 'bin', type: 'directory' },
    { name: 'bin/busybox', data: bb, mode: 0o755 },
    ...['sh', 'cat', 'echo', 'ls', 'mkdir', 'rm', 'stat'].map((a) => ({ name: `bin/${a}`, type: 'symlink' as const, linkname: 'busybox' })),
    { name: 'etc', type: 'directory' },
    { name: 'etc/passwd', data: 'root:x:0:0:root:/:/bin/sh\n' },
    { name: 'etc/group', data: 'root:x:0:\n' },
    { name: 'tmp', type: 'directory', mode: 0o1777 },
    { name: 'proc', type: 'directory' },
    { name: 'dev', type: 'directory' },
    { name: 'sys', type: 'directory' },
  ]);
}
