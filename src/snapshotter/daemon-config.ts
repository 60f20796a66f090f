/**
 * The per-image nydusd configuration (nydusify-snapshotter.md §3.2): the
 * template (`[daemon] nydusd_config`, a v1 "FUSE" JSON) is read through a
 * fixed schema (unknown keys dropped, as upstream's struct round-trip does)
 * and then only these fields are overwritten per RAFS instance:
 * `device.backend.config.host` / `repo` (registry backends: from the image
 * reference; `docker.io` becomes `index.docker.io`), `auth` (base64
 * `user:pass` from the labels `pullusername`/`pullsecret`, else the docker
 * config of this process; else the template's), `device.id` = `/<snapshot
 * id>`, `device.cache.config.work_dir` = the cache dir. A v2 template is
 * rewritten in its own shape (`backend.registry`, `id`,
 * `cache.filecache.work_dir`) instead (extra).
 *
 * Differences: no registry mirrors, no credential helpers / kubelet / CRI
 * keychains (labels and `auths` of the docker config only); bools without a
 * value in the template are written false as upstream's.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SnapshotError } from './errors';
import { PULL_SECRET, PULL_USERNAME } from './labels';

export interface ImageRef {
  host: string;
  repo: string;
}

/** Split an image reference like containerd's docker reference parser (normalised docker.io names). */
export function parseImageRef(ref: string): ImageRef {
  let r = ref.trim();
  if (!r || r.length > 4096 || /\s/.test(r)) throw new SnapshotError('InvalidArgument', `invalid image reference ${JSON.stringify(ref.slice(0, 200))}`);
  const at = r.indexOf('@');
  if (at >= 0) r = r.slice(0, at);
  const slash = r.indexOf('/');
  let host = 'docker.io';
  let rest = r;
  if (slash >= 0) {
    const first = r.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost' || /[A-Z]/.test(first)) {
      host = first;
      rest = r.slice(slash + 1);
    }
  }
  const colon = rest.lastIndexOf(':');
  if (colon >= 0 && !rest.slice(colon).includes('/')) rest = rest.slice(0, colon);
  if (!rest) throw new SnapshotError('InvalidArgument', `invalid image reference ${JSON.stringify(ref)}`);
  if (host === 'docker.io' && !rest.includes('/')) rest = `library/${rest}`;
  if (host === 'docker.io') host = 'index.docker.io';
  return { host, repo: rest };
}

/** base64 `user:pass` for `host` from the labels or the docker config (`$DOCKER_CONFIG/config.json`, `~/.docker/config.json`). */
export function findAuth(host: string, labels: Record<string, string>, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const u = labels[PULL_USERNAME];
  const p = labels[PULL_SECRET];
  if (u && p) return Buffer.from(`${u}:${p}`).toString('base64');
  const dir = env.DOCKER_CONFIG || path.join(env.HOME || os.homedir(), '.docker');
  let cfg: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  try {
    const text = fs.readFileSync(path.join(dir, 'config.json'), 'utf8');
    if (text.length > 1 << 20) return undefined;
    cfg = JSON.parse(text) as typeof cfg;
  } catch {
    return undefined;
  }
  const auths = cfg.auths ?? {};
  const want = host === 'index.docker.io' || host === 'registry-1.docker.io' ? 'docker.io' : host;
  for (const [k, v] of Object.entries(auths)) {
    let h = k.replace(/^https?:\/\//, '').split('/')[0];
    if (h === 'index.docker.io' || h === 'registry-1.docker.io') h = 'docker.io';
    if (h !== want || !v || typeof v !== 'object') continue;
    if (typeof v.auth === 'string' && v.auth) return v.auth;
    if (v.username && v.password) return Buffer.from(`${v.username}:${v.password}`).toString('base64');
  }
  return undefined;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Fixed schema of the v1 FUSE config: key → nested schema, or 'bool' (always written), or 'any' (kept when present). */
type Schema = { [k: string]: Schema | 'bool' | 'any' };
const BACKEND_CONFIG: Schema = {
  host: 'any', repo: 'any', auth: 'any', registry_token: 'any', scheme: 'any', skip_verify: 'bool', timeout: 'any', connect_timeout: 'any',
  retry_limit: 'any', blob_url_scheme: 'any', blob_redirected_host: 'any', mirrors: 'any', ca_cert_files: 'any',
  proxy: { url: 'any', ping_url: 'any', fallback: 'bool', check_interval: 'any', use_http: 'any' },
  // localfs / oss / s3
  dir: 'any', blob_file: 'any', alt_dirs: 'any', endpoint: 'any', bucket_name: 'any', object_prefix: 'any', access_key_id: 'any',
  access_key_secret: 'any', region: 'any',
};
const FUSE_SCHEMA: Schema = {
  device: {
    id: 'any',
    backend: { type: 'any', config: BACKEND_CONFIG },
    cache: { type: 'any', compressed: 'any', config: { work_dir: 'any', disable_indexed_map: 'bool' } },
  },
  mode: 'any', digest_validate: 'bool', iostats_files: 'any', enable_xattr: 'any', access_pattern: 'any', latest_read_files: 'any',
  amplify_io: 'any',
  fs_prefetch: { enable: 'bool', prefetch_all: 'bool', threads_count: 'any', merging_size: 'any', bandwidth_rate: 'any' },
  id_mapping: 'any',
};

function project(v: unknown, s: Schema): Obj {
  const src = isObj(v) ? v : {};
  const out: Obj = {};
  for (const [k, t] of Object.entries(s)) {
    if (t === 'bool') out[k] = src[k] === true;
    else if (t === 'any') { if (src[k] !== undefined) out[k] = src[k]; }
    else if (src[k] !== undefined || Object.values(t).includes('bool')) out[k] = project(src[k], t);
  }
  return out;
}

/** Read and check the template. */
export function loadTemplate(file: string): Obj {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new SnapshotError('FailedPrecondition', `cannot read nydusd config template ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new SnapshotError('FailedPrecondition', `nydusd config template ${file} is not JSON: ${(e as Error).message}`);
  }
  if (!isObj(v)) throw new SnapshotError('FailedPrecondition', `nydusd config template ${file} is not a JSON object`);
  return v;
}

export interface InstanceParams {
  snapshotId: string;
  imageRef?: string;
  labels: Record<string, string>;
  cacheDir: string;
  skipVerify?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** `o[key]` as an object, created (from `def`) when absent or not an object. */
function sub(o: Obj, key: string, def: Obj = {}): Obj {
  if (!isObj(o[key])) o[key] = def;
  return o[key] as Obj;
}

/** Registry host/repo/auth of the image into a registry backend section (v1 `config` or v2 `registry`). */
function fillRegistry(backend: Obj, section: Obj, p: InstanceParams): void {
  if ((backend.type ?? 'registry') !== 'registry') return;
  backend.type = 'registry';
  if (!p.imageRef) throw new SnapshotError('FailedPrecondition', `failed to find image ref of snapshot ${p.snapshotId}`);
  const r = parseImageRef(p.imageRef);
  section.host = r.host;
  section.repo = r.repo;
  const auth = findAuth(r.host, p.labels, p.env);
  if (auth) section.auth = auth;
  if (p.skipVerify) section.skip_verify = true;
}

/** The config of one RAFS instance from the template (see the file comment). */
export function instanceConfig(template: Obj, p: InstanceParams): Obj {
  if (template.version === 2) {
    const c = structuredClone(template);
    c.id = `/${p.snapshotId}`;
    const backend = sub(c, 'backend');
    if ((backend.type ?? 'registry') === 'registry') fillRegistry(backend, sub(backend, 'registry'), p);
    sub(sub(c, 'cache', { type: 'blobcache' }), 'filecache').work_dir = p.cacheDir;
    return c;
  }
  const c = project(template, FUSE_SCHEMA);
  const device = sub(c, 'device');
  device.id = `/${p.snapshotId}`;
  const backend = sub(device, 'backend');
  fillRegistry(backend, sub(backend, 'config'), p);
  sub(sub(device, 'cache', { type: 'blobcache' }), 'config').work_dir = p.cacheDir;
  return c;
}

/** Write `data` atomically (temp file + rename), mode 0600 (the config can hold credentials). */
export function writeFileAtomic(file: string, data: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, data, { mode: 0o600 });
  fs.renameSync(tmp, file);
}
