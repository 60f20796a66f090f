/**
 * ctr-remote: the part of stargz-snapshotter's `ctr-remote` Nydus users need
 * with containerd 1.6 — `image rpull`, a pull that leaves layers the
 * snapshotter serves remotely undownloaded and gives every layer snapshot
 * the image reference (src/snapshotter/rpull.ts).
 *
 *   ctr-remote [-a SOCK] [-n NS] image rpull [--plain-http] [-u user:pass]
 *              [--snapshotter nydus] [--platform linux/amd64] REF
 *
 * `images` is an alias of `image`, as in ctr. Global flags as ctr's
 * (`--address`/CONTAINERD_ADDRESS, `--namespace`/CONTAINERD_NAMESPACE).
 * Exit status 0 on success, 1 on any error (one `ctr-remote: …` line).
 *
 * Deliberate differences from stargz's ctr-remote: only `rpull` (no
 * optimize/convert/ipfs); the CRI labels are always set
 * (`--use-containerd-labels` is accepted and changes nothing); `--user`
 * must carry the password (no prompt); the default snapshotter is `nydus`;
 * the reference is normalised (`busybox` → `docker.io/library/busybox:latest`)
 * and the image record gets the normalised name; without `--user`,
 * credentials come from the docker config (~/.docker/config.json).
 */
import { Command, CommanderError, Option } from 'commander';
import { LOG_LEVELS, type LogLevel, setupLog } from '../common/log';
import { Progress } from '../common/progress';
import { RegistryClient } from '../remote/client';
import { type PlatformSpec, parsePlatform } from '../remote/platform';
import { parseReference } from '../remote/reference';
import { ContainerdClient, DEFAULT_ADDRESS, DEFAULT_NAMESPACE } from '../snapshotter/containerd-client';
import { type ImageSource, type PullEvent, rpull } from '../snapshotter/rpull';

export interface CtrRemoteIo {
  out(s: string): void;
  err(s: string): void;
  /** whether stderr is a terminal (download progress) */
  tty?: boolean;
}

/** Injection points for tests. */
export interface CtrRemoteDeps {
  source?(opts: { plainHttp: boolean; insecure: boolean; user?: { username: string; password: string }; domain: string }): ImageSource & { close?(): Promise<void> };
}

/** `user:password` → credentials (the password may contain ':'). */
export function parseUser(s: string): { username: string; password: string } {
  const i = s.indexOf(':');
  if (i <= 0) throw new Error('--user must be user:password (no password prompt)');
  return { username: s.slice(0, i), password: s.slice(i + 1) };
}

const short = (d: string): string => d.replace(/^sha256:/, '').slice(0, 12);

export async function run(argv: string[], io: CtrRemoteIo, deps: CtrRemoteDeps = {}): Promise<number> {
  const program = new Command('ctr-remote');
  program
    .description('Pull images into containerd so that remote snapshotters (nydus) can serve them lazily')
    .exitOverride()
    .configureOutput({ writeOut: (t) => io.out(t), writeErr: (t) => io.err(t) })
    .addOption(new Option('-a, --address <path>', 'containerd socket').env('CONTAINERD_ADDRESS').default(DEFAULT_ADDRESS))
    .addOption(new Option('-n, --namespace <ns>', 'containerd namespace').env('CONTAINERD_NAMESPACE').default(DEFAULT_NAMESPACE))
    .addOption(new Option('--timeout <seconds>', 'deadline of each containerd call (not of blob writes)').default('60'))
    .addOption(new Option('-l, --log-level <level>', 'pino log level on stderr').choices(LOG_LEVELS).default('warn'))
    .showHelpAfterError();

  const image = program.command('image').alias('images').alias('i').description('Manage images');
  image
    .command('rpull')
    .description('Pull an image for a remote snapshotter: layers the snapshotter serves remotely are not downloaded')
    .argument('<ref>', 'image reference, e.g. localhost:5000/app:v1 (normalised like docker does)')
    .option('--plain-http', 'talk plain HTTP to the registry', false)
    .option('--skip-verify', 'skip TLS certificate verification of the registry', false)
    .option('-u, --user <user:password>', 'registry credentials (default: the docker config)')
    .option('--snapshotter <name>', 'containerd snapshotter to unpack with', 'nydus')
    .option('--platform <os/arch[/variant]>', 'platform to pull from an image index (default: linux/<host arch>)')
    .option('--use-containerd-labels', 'accepted for stargz compatibility; the CRI labels are always set')
    .addHelpText('after', '\nExamples:\n  ctr-remote image rpull --plain-http localhost:5000/app:nydus\n  ctr-remote -n k8s.io images rpull --snapshotter overlayfs --user me:secret registry.example.com/app:v1\n')
    .action(async (refArg: string, o: { plainHttp: boolean; skipVerify: boolean; user?: string; snapshotter: string; platform?: string }, cmd: Command) => {
      const g = cmd.optsWithGlobals<{ address: string; namespace: string; timeout: string; logLevel: LogLevel }>();
      setupLog(g.logLevel);
      const timeout = Number(g.timeout);
      if (!Number.isFinite(timeout) || timeout <= 0 || timeout > 86400) throw new Error(`invalid --timeout '${g.timeout}'`);
      const ref = parseReference(refArg);
      const user = o.user !== undefined ? parseUser(o.user) : undefined;
      const platform: PlatformSpec | undefined = o.platform ? parsePlatform(o.platform) : undefined;
      const source = deps.source
        ? deps.source({ plainHttp: o.plainHttp, insecure: o.skipVerify, user, domain: ref.domain })
        : new RegistryClient({
          plainHttp: o.plainHttp,
          insecure: o.skipVerify,
          ...(user ? { credentials: async (domain: string) => (domain === ref.domain ? user : undefined) } : {}),
        });
      const cd = new ContainerdClient({ address: g.address, namespace: g.namespace, timeoutMs: timeout * 1000 });
      const bars = new Map<string, Progress>();
      const onEvent = (e: PullEvent): void => {
        switch (e.kind) {
          case 'resolved':
            io.out(`resolved ${e.name}: manifest ${e.manifest} (${e.nydus ? 'Nydus' : 'OCI'} image, ${e.layers} layers)\n`);
            break;
          case 'download': {
            if (!io.tty) break;
            let p = bars.get(e.digest);
            if (!p) bars.set(e.digest, (p = new Progress(`fetching ${short(e.digest)}`, e.total)));
            p.update(e.done);
            if (e.done >= e.total) { p.done(); bars.delete(e.digest); }
            break;
          }
          case 'blob':
            io.out(`${e.what} ${e.digest}: ${e.action === 'written' ? 'fetched' : 'already present'}\n`);
            break;
          case 'layer': {
            const what = e.action === 'remote' ? 'remote (served by the snapshotter, not downloaded)' : e.action === 'exists' ? 'already unpacked' : 'unpacked';
            io.out(`layer ${e.index + 1} ${e.digest}: ${what}\n`);
            break;
          }
          case 'image':
            io.out(`image ${e.name}: ${e.action}\n`);
            break;
        }
      };
      try {
        const r = await rpull(cd, source, { ref, snapshotter: o.snapshotter, platform, onEvent });
        io.out(`done: ${r.name} unpacked for snapshotter ${o.snapshotter} (chain ${r.chainIds[r.chainIds.length - 1]})\n`);
      } finally {
        for (const p of bars.values()) p.done();
        cd.close();
        await (source as { close?(): Promise<void> }).close?.();
      }
    });

  if (argv.length === 0) {
    program.outputHelp({ error: true });
    return 1;
  }
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.help' || e.code === 'commander.version') return 0;
      return e.exitCode || 1;
    }
    io.err(`ctr-remote: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}

/** Entry point for bin/ctr-remote. */
export function main(argv: string[] = process.argv): void {
  run(argv.slice(2), {
    out: (t) => process.stdout.write(t),
    err: (t) => process.stderr.write(t),
    tty: !!process.stderr.isTTY,
  }).then(
    (code) => { process.exitCode = code; },
    (e) => { process.stderr.write(`ctr-remote: ${e instanceof Error ? e.message : String(e)}\n`); process.exitCode = 1; },
  );
}
