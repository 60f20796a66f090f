/**
 * Mounts returned by Prepare / View / Mounts (nydusify-snapshotter.md §3.7).
 *
 * Native (plain OCI layers), as containerd's overlayfs snapshotter and
 * upstream's `mountNative`: no parent → `bind` of `fs` with `[rw|ro, rbind]`;
 * a view with one parent → `bind` `[ro, rbind]` of the parent's `fs`;
 * otherwise `overlay` with `workdir=`, `upperdir=` (active only), `volatile`
 * (label `containerd.io/snapshot/overlay.volatile` or config) and
 * `lowerdir=` nearest parent first. No `index=off` (upstream nydus adds none).
 *
 * Remote (Nydus): `overlay` with `[volatile?, workdir, upperdir, lowerdir=<rafs>]`
 * for active snapshots, `lowerdir=<rafs>:<view fs>` for views; in Kata mode
 * (`enable_nydus_overlayfs` or daemon_mode none) the type is
 * `fuse.nydus-overlayfs` (or `fuse.<nydus_overlayfs_path>`) and an
 * `extraoption=` option carries base64(JSON {source, config, snapshotdir,
 * fs_version}) (kata-contract.md §3.2), the JSON escaped as Go's
 * json.Marshal does (`<`, `>`, `&`, U+2028, U+2029).
 */
import * as path from 'node:path';
import { Kind, Snapshot } from './store';

export interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export const upperPath = (root: string, id: string): string => path.join(root, 'snapshots', id, 'fs');
export const workPath = (root: string, id: string): string => path.join(root, 'snapshots', id, 'work');
export const snapshotDir = (root: string, id: string): string => path.join(root, 'snapshots', id);

export function nativeMounts(root: string, s: Snapshot, volatile: boolean): Mount[] {
  if (s.parentIds.length === 0) {
    return [{ type: 'bind', source: upperPath(root, s.id), target: '', options: [s.kind === Kind.View ? 'ro' : 'rw', 'rbind'] }];
  }
  const options: string[] = [];
  if (s.kind === Kind.Active) {
    options.push(`workdir=${workPath(root, s.id)}`, `upperdir=${upperPath(root, s.id)}`);
    if (volatile) options.push('volatile');
  } else if (s.parentIds.length === 1) {
    return [{ type: 'bind', source: upperPath(root, s.parentIds[0]), target: '', options: ['ro', 'rbind'] }];
  }
  options.push(`lowerdir=${s.parentIds.map((id) => upperPath(root, id)).join(':')}`);
  return [{ type: 'overlay', source: 'overlay', target: '', options }];
}

/** JSON.stringify with Go json.Marshal's HTML-safe escaping. */
export function goJson(v: unknown): string {
  return JSON.stringify(v).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

export interface ExtraOption {
  source: string;
  config: string;
  snapshotdir: string;
  fs_version: string;
}

export function encodeExtraOption(e: ExtraOption): string {
  return Buffer.from(goJson({ source: e.source, config: e.config, snapshotdir: e.snapshotdir, fs_version: e.fs_version })).toString('base64');
}

export interface RemoteParams {
  root: string;
  snapshot: Snapshot;
  /** where the RAFS instance is mounted on the host */
  rafsMountpoint: string;
  volatile: boolean;
  /** set for Kata mode */
  kata?: { overlayfsPath: string; extra: ExtraOption };
}

export function remoteMounts(p: RemoteParams): Mount[] {
  const s = p.snapshot;
  let options: string[];
  if (s.kind === Kind.View) {
    options = [`lowerdir=${p.rafsMountpoint}:${upperPath(p.root, s.id)}`];
  } else {
    options = [];
    if (p.volatile) options.push('volatile');
    options.push(`workdir=${workPath(p.root, s.id)}`, `upperdir=${upperPath(p.root, s.id)}`, `lowerdir=${p.rafsMountpoint}`);
  }
  if (!p.kata) return [{ type: 'overlay', source: 'overlay', target: '', options }];
  const helper = p.kata.overlayfsPath || 'nydus-overlayfs';
  options.push(`extraoption=${encodeExtraOption(p.kata.extra)}`);
  return [{ type: `fuse.${helper}`, source: 'overlay', target: '', options }];
}
