/**
 * `nydus-overlayfs`: entry point of the mount helper containerd reaches
 * through libfuse's `mount.fuse` for `fuse.nydus-overlayfs` mounts
 * (src/snapshotter/nydus-overlayfs.ts holds the logic). The argv is taken as
 * `mount.fuse` builds it, positionally; commander supplies `--help` and
 * `--version`, and the help text printed when the argument count is wrong.
 */
import * as fs from 'node:fs';
import { Command } from 'commander';
import { VERSION } from '../service/version';
import { runHelper } from '../snapshotter/nydus-overlayfs';

export function program(): Command {
  return new Command('nydus-overlayfs')
    .usage('overlay <target> -o <options>')
    .description('Mount helper for fuse.nydus-overlayfs mounts: mounts an overlay without the Nydus-only options')
    .version(VERSION.package_ver, '-V, --version')
    .helpOption('-h, --help', 'Show this help')
    .addHelpText('after', `
Arguments (exactly four, as mount.fuse passes them):
  overlay      the filesystem type; must be "overlay"
  <target>     the directory to mount on
  -o           literally "-o"
  <options>    comma-separated mount options: overlayfs options (lowerdir=, upperdir=, workdir=, index=,
               xino=, volatile, ...) go to the kernel; mount flag words (ro/rw, nodev/dev, nosuid/suid,
               noexec/exec, noatime/atime, nodiratime/diratime, relatime/norelatime,
               strictatime/nostrictatime, sync/async, dirsync, mand/nomand, lazytime/nolazytime,
               nosymfollow/symfollow) set or clear mount(2) flags as in mount(8); extraoption=...,
               io.katacontainers.volume=... and x-* options are dropped.

Normally run by mount.fuse for "mount -t fuse.nydus-overlayfs overlay <target> -o <options>" (containerd
calls mount.fuse the same way). Options longer than a page are shortened by naming the layer
directories relative to their common parent.

Exit status: 0 mounted, 1 bad arguments or options, 32 mount(2) failed.
Set NYDUS_LOG_LEVEL=debug for a JSON log line of what is mounted (never the extraoption payload).`);
}

export function main(argv: string[]): void {
  const args = argv.slice(2);
  const cmd = program();
  if (args.length === 1 && (args[0] === '-h' || args[0] === '--help' || args[0] === '-V' || args[0] === '--version')) {
    cmd.parse(argv); // prints and exits 0
    return;
  }
  process.exitCode = runHelper(args, {
    error: (line) => { fs.writeSync(2, `${line}\n`); },
    usage: () => cmd.helpInformation(),
  });
}
