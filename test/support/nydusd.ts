/** Start and stop `nydusd` FUSE mounts from tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT } from './cli';
import { sleep } from './timing';

export function isMounted(mnt: string): boolean {
  const real = fs.realpathSync(mnt);
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === real);
}

export interface Daemon {
  proc: ChildProcess;
  mountpoint: string;
  log: () => string;
  exited: Promise<number | null>;
  stop(): Promise<number | null>;
}


/** Spawn nydusd with `args` and wait until `mountpoint` is mounted. */
export async function startNydusd(mountpoint: string, args: string[], timeoutMs = 15000): Promise<Daemon> {
  fs.mkdirSync(mountpoint, { recursive: true });
  let out = '';
  // NYDUSD_BIN runs another build (before/after benchmarks); NYDUSD_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") runs the daemon under node with those flags (profiling)
  const nodeArgs = process.env.NYDUSD_NODE_ARGS?.split(' ').filter((a) => a) ?? [];
  const bin = process.env.NYDUSD_BIN ?? path.join(ROOT, 'bin/nydusd');
  const proc = nodeArgs.length
    ? spawn(process.execPath, [...nodeArgs, bin, '--mountpoint', mountpoint, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(bin, ['--mountpoint', mountpoint, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout!.on('data', (d) => { out += d; });
  proc.stderr!.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const t0 = Date.now();
  let done = false;
  void exited.then(() => { done = true; });
  while (!isMounted(mountpoint)) {
    if (done) throw new Error(`nydusd exited before mounting: ${out}`);
    if (Date.now() - t0 > timeoutMs) { proc.kill('SIGKILL'); throw new Error(`nydusd did not mount in time: ${out}`); }
    await sleep(50);
  }
  return {
    proc, mountpoint, exited,
    log: () => out,
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

export function fuseMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root (mount(2) of /dev/fuse needs CAP_SYS_ADMIN)';
  if (!fs.existsSync('/dev/fuse')) return '/dev/fuse does not exist';
  return undefined;
}
