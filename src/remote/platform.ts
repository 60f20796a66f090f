/**
 * Platforms (`os/arch[/variant]`) and their matching, as containerd's
 * `platforms.Ordered` does for nydusify's `--platform` (§2 step 3): the
 * default is `linux/<host arch>`; arm64's variant defaults to v8 and arm's
 * to v7; a descriptor without a platform never matches a filter (but a
 * single manifest is converted whatever its platform, which is the caller's
 * rule).
 */
import { einval } from '../common/errno';
import type { Platform } from './media-types';

export interface PlatformSpec { os: string; architecture: string; variant?: string }

const ARCH_ALIASES: Record<string, string> = { x86_64: 'amd64', x86: '386', aarch64: 'arm64', armhf: 'arm', armel: 'arm' };

/** Node's process.arch as an OCI architecture. */
export function hostArch(): string {
  const a = process.arch;
  return a === 'x64' ? 'amd64' : a === 'ia32' ? '386' : a;
}

function normalise(p: PlatformSpec): PlatformSpec {
  const architecture = ARCH_ALIASES[p.architecture] ?? p.architecture;
  let variant = p.variant || undefined;
  if (architecture === 'arm64' && variant === 'v8') variant = undefined;
  if (architecture === 'arm' && !variant) variant = 'v7';
  return { os: p.os.toLowerCase(), architecture, variant };
}

/** Parse `os/arch[/variant]` (or `arch` alone, os linux). */
export function parsePlatform(s: string): PlatformSpec {
  const parts = s.trim().split('/');
  if (parts.length === 1 && parts[0]) return normalise({ os: 'linux', architecture: parts[0] });
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[A-Za-z0-9_.-]+$/.test(p))) throw einval(`invalid platform '${s}'`);
  return normalise({ os: parts[0], architecture: parts[1], variant: parts[2] });
}

export const defaultPlatform = (): PlatformSpec => normalise({ os: 'linux', architecture: hostArch() });

export const formatPlatform = (p: PlatformSpec): string => `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;

/** Whether descriptor platform `p` matches one of `want` (undefined `want` = all platforms). */
export function platformMatches(p: Platform | undefined, want: PlatformSpec[] | undefined): boolean {
  if (!want) return true;
  if (!p) return false;
  const n = normalise({ os: p.os, architecture: p.architecture, variant: p.variant });
  return want.some((w0) => {
    const w = normalise(w0);
    return w.os === n.os && w.architecture === n.architecture && (!w.variant || w.variant === n.variant);
  });
}

/** The platform an image config declares (`os`, `architecture`, `variant`), if it declares one. */
export function platformOfConfig(cfg: { os?: unknown; architecture?: unknown; variant?: unknown }): Platform | undefined {
  if (typeof cfg.os !== 'string' || typeof cfg.architecture !== 'string' || !cfg.os || !cfg.architecture) return undefined;
  return { architecture: cfg.architecture, os: cfg.os, ...(typeof cfg.variant === 'string' && cfg.variant ? { variant: cfg.variant } : {}) };
}
