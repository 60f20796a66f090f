/**
 * nydusd configuration (rafs-spec §7; `--localfs-dir` shortcut §6).
 *
 * `parseNydusdConfig` follows upstream `ConfigV2::from_str`: the text is tried
 * as a JSON v2 document, then as a TOML v2 document, then as a legacy JSON v1
 * document which is converted to v2 (§7.2). Decoding is serde-like: missing
 * keys take their defaults, unknown keys (e.g. the legacy `mirrors`) are
 * ignored, keys without a default are required, and value types are checked.
 * The decoded config must then pass the same checks as upstream `validate()`.
 * Every failure is an EINVAL naming the offending key.
 *
 * The returned object keeps upstream key names so it can be serialised back
 * (HTTP API `GET /api/v1/daemon` etc.); use `redactSecrets` before exposing it.
 *
 * Deliberate differences from upstream (which keeps backend/cache/rafs as
 * `Option`): `backend` is required, and an absent `cache` / `rafs` section is
 * filled in as if it had been given as `{}`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { einval, ErrnoError } from './errno';

// ---------------------------------------------------------------- types (upstream key names)

export interface ProxyConfig {
  url: string;
  ping_url: string;
  fallback: boolean;
  check_interval: number;
  use_http: boolean;
  check_pause_elapsed: number;
  dragonfly_scheduler_endpoint: string;
}

export interface LocalFsConfig {
  blob_file: string;
  dir: string;
  alt_dirs: string[];
}

export interface LocalDiskConfig {
  device_path: string;
  disable_gpt: boolean;
}

interface HttpCommon {
  skip_verify: boolean;
  ca_cert_files: string[];
  timeout: number;
  connect_timeout: number;
  retry_limit: number;
  proxy: ProxyConfig;
}

export interface OssConfig extends HttpCommon {
  scheme: string;
  endpoint: string;
  bucket_name: string;
  object_prefix: string;
  access_key_id: string;
  access_key_secret: string;
}

export interface S3Config extends OssConfig {
  region: string;
}

export interface RegistryConfig extends HttpCommon {
  scheme: string;
  host: string;
  repo: string;
  /** base64("user:pass"); absent = anonymous */
  auth?: string;
  registry_token?: string;
  blob_url_scheme: string;
  blob_redirected_host: string;
}

export interface HttpProxyConfig extends HttpCommon {
  addr: string;
  path: string;
}

export interface BackendConfigV2 {
  type: string;
  localdisk?: LocalDiskConfig;
  localfs?: LocalFsConfig;
  oss?: OssConfig;
  s3?: S3Config;
  registry?: RegistryConfig;
  'http-proxy'?: HttpProxyConfig;
}

export interface ExternalBackendConfig {
  type: string;
  patch: Record<string, string>;
  config: Record<string, string>;
}

export interface PrefetchConfigV2 {
  enable: boolean;
  threads: number;
  batch_size: number;
  bandwidth_limit: number;
  prefetch_all: boolean;
  stream_prefetch: boolean;
}

export interface FileCacheConfig {
  work_dir: string;
  /** not upstream: cache size quota in bytes, least recently used unused blobs evicted (0 = none) */
  quota?: number;
  disable_indexed_map: boolean;
  enable_encryption: boolean;
  enable_convergent_encryption: boolean;
  encryption_key: string;
}

export interface FsCacheConfig {
  work_dir: string;
}

export interface CacheConfigV2 {
  /** '' | 'dummycache' | 'blobcache' | 'filecache' | 'fscache' */
  type: string;
  compressed: boolean;
  validate: boolean;
  prefetch: PrefetchConfigV2;
  filecache?: FileCacheConfig;
  fscache?: FsCacheConfig;
}

export interface RafsConfigV2 {
  /** 'direct' | 'cached' */
  mode: string;
  batch_size: number;
  validate: boolean;
  enable_xattr: boolean;
  iostats_files: boolean;
  access_pattern: boolean;
  latest_read_files: boolean;
  prefetch: PrefetchConfigV2;
}

export interface OverlayConfig {
  upper_dir: string;
  work_dir: string;
}

export interface ConfigV2 {
  version: 2;
  id: string;
  backend: BackendConfigV2;
  external_backends: ExternalBackendConfig[];
  cache: CacheConfigV2;
  rafs: RafsConfigV2;
  overlay?: OverlayConfig;
}

/** Upstream size limit of a configuration file. */
export const MAX_CONFIG_FILE_SIZE = 0x100000;
/** Upper bound for batch sizes (`rafs.batch_size`, `*.prefetch.batch_size`). */
export const MAX_BATCH_SIZE = 0x10000000;
export const BACKEND_TYPES = ['localfs', 'localdisk', 'oss', 's3', 'registry', 'http-proxy'] as const;
export const CACHE_TYPES = ['', 'dummycache', 'blobcache', 'filecache', 'fscache'] as const;

// ---------------------------------------------------------------- serde-like field readers

type Obj = Record<string, unknown>;
const REQUIRED = Symbol('required');
type Def<T> = T | typeof REQUIRED;

const U8 = 0xff;
const U32 = 0xffffffff;
const USIZE = Number.MAX_SAFE_INTEGER;

const bad = (key: string, what: string) => einval(`invalid nydusd configuration: ${key}: ${what}`);
const join = (p: string, k: string) => (p ? `${p}.${k}` : k);
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const typeName = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

function asObj(v: unknown, key: string): Obj {
  if (!isObj(v)) throw bad(key, `expected a table/object, got ${typeName(v)}`);
  return v;
}

/** `o[k]`, or the default when the key is absent; REQUIRED absent keys throw. */
function field<T>(o: Obj, k: string, p: string, def: Def<T>): unknown {
  const v = Object.prototype.hasOwnProperty.call(o, k) ? o[k] : undefined;
  if (v === undefined) {
    if (def === REQUIRED) throw bad(join(p, k), 'missing required key');
    return def;
  }
  return v;
}

function str(o: Obj, k: string, p: string, def: Def<string>): string {
  const v = field(o, k, p, def);
  if (typeof v !== 'string') throw bad(join(p, k), `expected a string, got ${typeName(v)}`);
  return v;
}

/** `Option<String>`: absent or null → undefined. */
function optStr(o: Obj, k: string, p: string): string | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw bad(join(p, k), `expected a string, got ${typeName(v)}`);
  return v;
}

function bool(o: Obj, k: string, p: string, def: Def<boolean>): boolean {
  const v = field(o, k, p, def);
  if (typeof v !== 'boolean') throw bad(join(p, k), `expected a boolean, got ${typeName(v)}`);
  return v;
}

function int(o: Obj, k: string, p: string, def: Def<number>, max: number): number {
  let v = field(o, k, p, def);
  if (typeof v === 'bigint' && v >= 0n && v <= BigInt(max)) v = Number(v);
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) {
    throw bad(join(p, k), `expected an integer in 0..${max}, got ${typeof v === 'number' ? v : typeName(v)}`);
  }
  return v;
}

function strArr(o: Obj, k: string, p: string): string[] {
  const v = field(o, k, p, []);
  if (!Array.isArray(v)) throw bad(join(p, k), `expected an array of strings, got ${typeName(v)}`);
  return v.map((s, i) => {
    if (typeof s !== 'string') throw bad(`${join(p, k)}[${i}]`, `expected a string, got ${typeName(s)}`);
    return s;
  });
}

function strMap(o: Obj, k: string, p: string, def: Def<Record<string, string>>): Record<string, string> {
  const key = join(p, k);
  const v = asObj(field(o, k, p, def), key);
  const out: Record<string, string> = {};
  for (const [mk, mv] of Object.entries(v)) {
    if (typeof mv !== 'string') throw bad(`${key}.${mk}`, `expected a string, got ${typeName(mv)}`);
    out[mk] = mv;
  }
  return out;
}

/** A sub-struct that is `Option<T>` upstream: absent/null → undefined. */
function optSub<T>(o: Obj, k: string, p: string, dec: (v: Obj, p: string) => T): T | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  const key = join(p, k);
  return dec(asObj(v, key), key);
}

/** A sub-struct with `#[serde(default)]`: absent → `def()`. */
function defSub<T>(o: Obj, k: string, p: string, dec: (v: Obj, p: string) => T, def: () => T): T {
  const v = o[k];
  if (v === undefined) return def();
  const key = join(p, k);
  return dec(asObj(v, key), key);
}

// ---------------------------------------------------------------- v2 decoders

export function defaultProxyConfig(): ProxyConfig {
  return { url: '', ping_url: '', fallback: true, check_interval: 5, use_http: false, check_pause_elapsed: 300, dragonfly_scheduler_endpoint: '' };
}

function decProxy(o: Obj, p: string): ProxyConfig {
  return {
    url: str(o, 'url', p, ''),
    ping_url: str(o, 'ping_url', p, ''),
    fallback: bool(o, 'fallback', p, true),
    check_interval: int(o, 'check_interval', p, 5, USIZE),
    use_http: bool(o, 'use_http', p, false),
    check_pause_elapsed: int(o, 'check_pause_elapsed', p, 300, USIZE),
    dragonfly_scheduler_endpoint: str(o, 'dragonfly_scheduler_endpoint', p, ''),
  };
}

function decHttpCommon(o: Obj, p: string): HttpCommon {
  return {
    skip_verify: bool(o, 'skip_verify', p, false),
    ca_cert_files: strArr(o, 'ca_cert_files', p),
    timeout: int(o, 'timeout', p, 5, U32),
    connect_timeout: int(o, 'connect_timeout', p, 5, U32),
    retry_limit: int(o, 'retry_limit', p, 0, U8),
    proxy: defSub(o, 'proxy', p, decProxy, defaultProxyConfig),
  };
}

function decLocalFs(o: Obj, p: string): LocalFsConfig {
  return { blob_file: str(o, 'blob_file', p, ''), dir: str(o, 'dir', p, ''), alt_dirs: strArr(o, 'alt_dirs', p) };
}

function decLocalDisk(o: Obj, p: string): LocalDiskConfig {
  return { device_path: str(o, 'device_path', p, ''), disable_gpt: bool(o, 'disable_gpt', p, false) };
}

function decOss(o: Obj, p: string): OssConfig {
  return {
    scheme: str(o, 'scheme', p, 'https'),
    endpoint: str(o, 'endpoint', p, REQUIRED),
    bucket_name: str(o, 'bucket_name', p, REQUIRED),
    object_prefix: str(o, 'object_prefix', p, ''),
    access_key_id: str(o, 'access_key_id', p, ''),
    access_key_secret: str(o, 'access_key_secret', p, ''),
    ...decHttpCommon(o, p),
  };
}

function decS3(o: Obj, p: string): S3Config {
  return { ...decOss(o, p), region: str(o, 'region', p, REQUIRED) };
}

function decRegistry(o: Obj, p: string): RegistryConfig {
  const r: RegistryConfig = {
    scheme: str(o, 'scheme', p, 'https'),
    host: str(o, 'host', p, REQUIRED),
    repo: str(o, 'repo', p, REQUIRED),
    ...decHttpCommon(o, p),
    blob_url_scheme: str(o, 'blob_url_scheme', p, ''),
    blob_redirected_host: str(o, 'blob_redirected_host', p, ''),
  };
  const auth = optStr(o, 'auth', p);
  if (auth !== undefined) r.auth = auth;
  const token = optStr(o, 'registry_token', p);
  if (token !== undefined) r.registry_token = token;
  return r;
}

function decHttpProxy(o: Obj, p: string): HttpProxyConfig {
  return { addr: str(o, 'addr', p, REQUIRED), path: str(o, 'path', p, ''), ...decHttpCommon(o, p) };
}

function decBackend(o: Obj, p: string): BackendConfigV2 {
  const b: BackendConfigV2 = { type: str(o, 'type', p, REQUIRED) };
  const localdisk = optSub(o, 'localdisk', p, decLocalDisk);
  const localfs = optSub(o, 'localfs', p, decLocalFs);
  const oss = optSub(o, 'oss', p, decOss);
  const s3 = optSub(o, 's3', p, decS3);
  const registry = optSub(o, 'registry', p, decRegistry);
  const httpProxy = optSub(o, 'http-proxy', p, decHttpProxy);
  if (localdisk) b.localdisk = localdisk;
  if (localfs) b.localfs = localfs;
  if (oss) b.oss = oss;
  if (s3) b.s3 = s3;
  if (registry) b.registry = registry;
  if (httpProxy) b['http-proxy'] = httpProxy;
  return b;
}

function decExternalBackends(o: Obj, k: string, p: string): ExternalBackendConfig[] {
  const key = join(p, k);
  const v = field(o, k, p, []);
  if (!Array.isArray(v)) throw bad(key, `expected an array, got ${typeName(v)}`);
  return v.map((e, i) => {
    const ep = `${key}[${i}]`;
    const eo = asObj(e, ep);
    return { type: str(eo, 'type', ep, REQUIRED), patch: strMap(eo, 'patch', ep, REQUIRED), config: strMap(eo, 'config', ep, REQUIRED) };
  });
}

/** `PrefetchConfigV2::default()` (derived): what an absent `prefetch` section becomes. */
export function defaultPrefetchConfig(): PrefetchConfigV2 {
  return { enable: false, threads: 0, batch_size: 0, bandwidth_limit: 0, prefetch_all: false, stream_prefetch: false };
}

function decPrefetch(o: Obj, p: string): PrefetchConfigV2 {
  return {
    enable: bool(o, 'enable', p, REQUIRED),
    threads: int(o, 'threads', p, 8, USIZE),
    batch_size: int(o, 'batch_size', p, 1024 * 1024, USIZE),
    bandwidth_limit: int(o, 'bandwidth_limit', p, 0, U32),
    prefetch_all: bool(o, 'prefetch_all', p, false),
    stream_prefetch: bool(o, 'stream_prefetch', p, false),
  };
}

function decFileCache(o: Obj, p: string): FileCacheConfig {
  return {
    work_dir: str(o, 'work_dir', p, '.'),
    disable_indexed_map: bool(o, 'disable_indexed_map', p, false),
    enable_encryption: bool(o, 'enable_encryption', p, false),
    enable_convergent_encryption: bool(o, 'enable_convergent_encryption', p, false),
    encryption_key: str(o, 'encryption_key', p, ''),
    ...(o.quota !== undefined ? { quota: int(o, 'quota', p, 0, Number.MAX_SAFE_INTEGER) } : {}),
  };
}

function decFsCache(o: Obj, p: string): FsCacheConfig {
  return { work_dir: str(o, 'work_dir', p, '.') };
}

function decCache(o: Obj, p: string): CacheConfigV2 {
  const c: CacheConfigV2 = {
    type: str(o, 'type', p, ''),
    compressed: bool(o, 'compressed', p, false),
    validate: bool(o, 'validate', p, false),
    prefetch: defSub(o, 'prefetch', p, decPrefetch, defaultPrefetchConfig),
  };
  const filecache = optSub(o, 'filecache', p, decFileCache);
  const fscache = optSub(o, 'fscache', p, decFsCache);
  if (filecache) c.filecache = filecache;
  if (fscache) c.fscache = fscache;
  return c;
}

function decRafs(o: Obj, p: string): RafsConfigV2 {
  return {
    mode: str(o, 'mode', p, 'direct'),
    batch_size: int(o, 'batch_size', p, 1024 * 1024, USIZE),
    validate: bool(o, 'validate', p, false),
    enable_xattr: bool(o, 'enable_xattr', p, false),
    iostats_files: bool(o, 'iostats_files', p, false),
    access_pattern: bool(o, 'access_pattern', p, false),
    latest_read_files: bool(o, 'latest_read_files', p, false),
    prefetch: defSub(o, 'prefetch', p, decPrefetch, defaultPrefetchConfig),
  };
}

function decOverlay(o: Obj, p: string): OverlayConfig {
  return { upper_dir: str(o, 'upper_dir', p, REQUIRED), work_dir: str(o, 'work_dir', p, REQUIRED) };
}

/** serde-like decode of a v2 document (no semantic validation). */
function decodeV2(o: Obj): ConfigV2 {
  const version = int(o, 'version', '', REQUIRED, U32);
  const backendRaw = o.backend;
  if (backendRaw === undefined || backendRaw === null) throw bad('backend', 'missing required section (backend.type is required)');
  const cfg: ConfigV2 = {
    version: version as 2, // checked by validateV2
    id: str(o, 'id', '', ''),
    backend: decBackend(asObj(backendRaw, 'backend'), 'backend'),
    external_backends: decExternalBackends(o, 'external_backends', ''),
    cache: o.cache === null ? decCache({}, 'cache') : defSub(o, 'cache', '', decCache, () => decCache({}, 'cache')),
    rafs: o.rafs === null ? decRafs({}, 'rafs') : defSub(o, 'rafs', '', decRafs, () => decRafs({}, 'rafs')),
  };
  const overlay = optSub(o, 'overlay', '', decOverlay);
  if (overlay) cfg.overlay = overlay;
  return cfg;
}

// ---------------------------------------------------------------- validation (upstream `validate()`)

function validatePrefetch(pf: PrefetchConfigV2, p: string): void {
  if (!pf.enable) return;
  if (pf.batch_size > MAX_BATCH_SIZE) throw bad(`${p}.batch_size`, `${pf.batch_size} exceeds the maximum 0x${MAX_BATCH_SIZE.toString(16)}`);
  if (pf.threads === 0 || pf.threads > 1024) throw bad(`${p}.threads`, `${pf.threads} is out of range 1..1024`);
}

function validateBackend(b: BackendConfigV2): void {
  const need = <T>(v: T | undefined, k: string): T => {
    if (!v) throw bad(`backend.${k}`, `missing section for backend type '${b.type}'`);
    return v;
  };
  switch (b.type) {
    case 'localdisk':
      if (!need(b.localdisk, 'localdisk').device_path) throw bad('backend.localdisk.device_path', 'must not be empty');
      break;
    case 'localfs': {
      const l = need(b.localfs, 'localfs');
      if (!l.blob_file && !l.dir) throw bad('backend.localfs', 'one of blob_file or dir is required');
      break;
    }
    case 'oss': {
      const o = need(b.oss, 'oss');
      if (!o.endpoint) throw bad('backend.oss.endpoint', 'must not be empty');
      if (!o.bucket_name) throw bad('backend.oss.bucket_name', 'must not be empty');
      break;
    }
    case 's3': {
      const s = need(b.s3, 's3');
      if (!s.region) throw bad('backend.s3.region', 'must not be empty');
      if (!s.bucket_name) throw bad('backend.s3.bucket_name', 'must not be empty');
      break;
    }
    case 'registry': {
      const r = need(b.registry, 'registry');
      if (!r.host) throw bad('backend.registry.host', 'must not be empty');
      if (!r.repo) throw bad('backend.registry.repo', 'must not be empty');
      break;
    }
    case 'http-proxy': {
      const h = need(b['http-proxy'], 'http-proxy');
      const sock = path.isAbsolute(h.addr) && fs.existsSync(h.addr);
      if (!h.addr || !(h.addr.startsWith('http://') || h.addr.startsWith('https://') || sock)) {
        throw bad('backend.http-proxy.addr', `'${h.addr}' is neither an http(s):// URL nor an existing absolute unix socket path`);
      }
      break;
    }
    default:
      throw bad('backend.type', `unknown backend type '${b.type}' (expected one of ${BACKEND_TYPES.join(', ')})`);
  }
}

function validateCache(c: CacheConfigV2): void {
  switch (c.type) {
    case 'blobcache':
    case 'filecache':
      if (!c.filecache) throw bad('cache.filecache', `missing section for cache type '${c.type}'`);
      if (!c.filecache.work_dir) throw bad('cache.filecache.work_dir', 'must not be empty');
      break;
    case 'fscache':
      if (!c.fscache) throw bad('cache.fscache', `missing section for cache type '${c.type}'`);
      if (!c.fscache.work_dir) throw bad('cache.fscache.work_dir', 'must not be empty');
      break;
    case '':
    case 'dummycache':
      break;
    default:
      throw bad('cache.type', `unknown cache type '${c.type}' (expected blobcache, filecache, fscache, dummycache or "")`);
  }
  validatePrefetch(c.prefetch, 'cache.prefetch');
}

function validateRafs(r: RafsConfigV2): void {
  if (r.mode !== 'direct' && r.mode !== 'cached') throw bad('rafs.mode', `'${r.mode}' is not 'direct' or 'cached'`);
  if (r.batch_size > MAX_BATCH_SIZE) throw bad('rafs.batch_size', `${r.batch_size} exceeds the maximum 0x${MAX_BATCH_SIZE.toString(16)}`);
  validatePrefetch(r.prefetch, 'rafs.prefetch');
}

/** Upstream `ConfigV2::validate()`, with the offending key in the error. */
export function validateConfigV2(cfg: ConfigV2): ConfigV2 {
  if (cfg.version !== 2) throw bad('version', `must be 2, got ${cfg.version}`);
  validateBackend(cfg.backend);
  validateCache(cfg.cache);
  validateRafs(cfg.rafs);
  return cfg;
}

// ---------------------------------------------------------------- v1 (legacy JSON) → v2

const V1_BACKEND_TYPES = ['localdisk', 'localfs', 'oss', 's3', 'registry'];

/** serde `from_value` of a v1 `config` member into a v2 struct: null/absent is a type error. */
function fromValue<T>(v: unknown, key: string, dec: (o: Obj, p: string) => T): T {
  if (v === undefined) throw bad(key, 'missing required key');
  return dec(asObj(v, key), key);
}

function decodeV1(o: Obj): ConfigV2 {
  const device = asObj(field(o, 'device', '', REQUIRED), 'device');
  const mode = str(o, 'mode', '', REQUIRED);

  const backendRaw = asObj(field(device, 'backend', 'device', REQUIRED), 'device.backend');
  const btype = str(backendRaw, 'type', 'device.backend', REQUIRED);
  const bconf = field(backendRaw, 'config', 'device.backend', REQUIRED);
  if (!V1_BACKEND_TYPES.includes(btype)) throw bad('device.backend.type', `unsupported backend type '${btype}' in a v1 configuration`);
  const backend: BackendConfigV2 = { type: btype };
  const bkey = 'device.backend.config';
  switch (btype) {
    case 'localdisk': backend.localdisk = fromValue(bconf, bkey, decLocalDisk); break;
    case 'localfs': backend.localfs = fromValue(bconf, bkey, decLocalFs); break;
    case 'oss': backend.oss = fromValue(bconf, bkey, decOss); break;
    case 's3': backend.s3 = fromValue(bconf, bkey, decS3); break;
    case 'registry': backend.registry = fromValue(bconf, bkey, decRegistry); break;
  }

  const cacheRaw = device.cache === undefined ? {} : asObj(device.cache, 'device.cache');
  const cache: CacheConfigV2 = {
    type: str(cacheRaw, 'type', 'device.cache', ''),
    compressed: bool(cacheRaw, 'compressed', 'device.cache', false),
    validate: bool(cacheRaw, 'validate', 'device.cache', false),
    // v1 `prefetch_config` is never deserialised: BlobPrefetchConfig::default() converted
    prefetch: { enable: false, threads: 0, batch_size: 0, bandwidth_limit: 0, prefetch_all: true, stream_prefetch: false },
  };
  const cconf = cacheRaw.config === undefined ? null : cacheRaw.config;
  const ckey = 'device.cache.config';
  switch (cache.type) {
    case 'blobcache':
    case 'filecache':
      cache.filecache = fromValue(cconf, ckey, decFileCache);
      break;
    case 'fscache':
      cache.fscache = fromValue(cconf, ckey, decFsCache);
      break;
    case '':
    case 'dummycache':
      break;
    default:
      throw bad('device.cache.type', `unsupported cache type '${cache.type}'`);
  }

  const fp = o.fs_prefetch === undefined ? {} : asObj(o.fs_prefetch, 'fs_prefetch');
  const prefetch: PrefetchConfigV2 = {
    enable: bool(fp, 'enable', 'fs_prefetch', false),
    threads: int(fp, 'threads_count', 'fs_prefetch', 8, USIZE),
    batch_size: int(fp, 'merging_size', 'fs_prefetch', 1024 * 1024, USIZE),
    bandwidth_limit: int(fp, 'bandwidth_rate', 'fs_prefetch', 0, U32),
    prefetch_all: bool(fp, 'prefetch_all', 'fs_prefetch', true),
    stream_prefetch: bool(fp, 'stream_prefetch', 'fs_prefetch', false),
  };
  const rafs: RafsConfigV2 = {
    mode,
    batch_size: int(o, 'amplify_io', '', 1024 * 1024, USIZE),
    validate: bool(o, 'digest_validate', '', false),
    enable_xattr: bool(o, 'enable_xattr', '', false),
    iostats_files: bool(o, 'iostats_files', '', false),
    access_pattern: bool(o, 'access_pattern', '', false),
    latest_read_files: bool(o, 'latest_read_files', '', false),
    prefetch,
  };
  if (!cache.prefetch.enable && rafs.prefetch.enable) cache.prefetch = { ...rafs.prefetch };

  return {
    version: 2,
    id: str(device, 'id', 'device', ''),
    backend,
    external_backends: decExternalBackends(device, 'external_backends', 'device'),
    cache,
    rafs,
  };
}

// ---------------------------------------------------------------- entry points

const msgOf = (e: unknown) => (e instanceof Error ? e.message : String(e));

/**
 * Parse a nydusd configuration (§7): JSON v2, else TOML v2, else JSON v1
 * converted to v2. Throws EINVAL naming the offending key.
 */
export function parseNydusdConfig(text: string): ConfigV2 {
  let json: unknown;
  let jsonError: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    jsonError = e;
  }
  if (jsonError === undefined) {
    if (!isObj(json)) throw einval(`invalid nydusd configuration: expected a JSON object, got ${typeName(json)}`);
    if (Object.prototype.hasOwnProperty.call(json, 'version')) {
      let v2: ConfigV2;
      try {
        v2 = decodeV2(json);
      } catch (e) {
        // upstream falls through to the v1 parser when v2 deserialisation fails
        try {
          return validateConfigV2(decodeV1(json));
        } catch {
          throw e;
        }
      }
      return validateConfigV2(v2);
    }
    return validateConfigV2(decodeV1(json));
  }
  let toml: unknown;
  try {
    toml = parseToml(text);
  } catch (e) {
    throw einval(`invalid nydusd configuration: neither JSON (${msgOf(jsonError)}) nor TOML (${msgOf(e).split('\n')[0]})`);
  }
  return validateConfigV2(decodeV2(asObj(toml, '<root>')));
}

/** Read and parse a configuration file (at most 1 MiB, as upstream). */
export function readNydusdConfigFile(file: string): ConfigV2 {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    throw new ErrnoError((e as NodeJS.ErrnoException).code ?? 'EIO', `cannot read nydusd configuration ${file}: ${msgOf(e)}`, { cause: e });
  }
  if (!st.isFile()) throw einval(`nydusd configuration ${file} is not a regular file`);
  if (st.size > MAX_CONFIG_FILE_SIZE) throw einval(`nydusd configuration ${file}: configuration file size is too big (${st.size} > ${MAX_CONFIG_FILE_SIZE})`);
  const text = fs.readFileSync(file, 'utf8');
  try {
    return parseNydusdConfig(text);
  } catch (e) {
    if (e instanceof ErrnoError) throw new ErrnoError(e.code, `${file}: ${e.message}`, { cause: e });
    throw e;
  }
}

/**
 * The configuration nydusd synthesises for `--localfs-dir DIR` (§6): a v1
 * document (localfs `{dir, readahead:true}`, blobcache `{compressed:false,
 * work_dir:DIR}`, mode direct) parsed like any other, so `readahead` and the
 * nested `compressed` are dropped as unknown keys exactly as upstream does.
 */
export function localfsDirConfig(dir: string): ConfigV2 {
  const v1 = {
    device: {
      backend: { type: 'localfs', config: { dir, readahead: true } },
      cache: { type: 'blobcache', config: { compressed: false, work_dir: dir } },
    },
    mode: 'direct',
    digest_validate: false,
    iostats_files: false,
  };
  return parseNydusdConfig(JSON.stringify(v1));
}

/** `IMAGE_PULL_AUTH` overrides `backend.registry.auth` (§6 `--config`). */
export function applyImagePullAuth(cfg: ConfigV2, auth: string | undefined = process.env.IMAGE_PULL_AUTH): ConfigV2 {
  if (auth && cfg.backend.registry) cfg.backend.registry.auth = auth;
  return cfg;
}

/**
 * A deep copy safe to return from the HTTP API: registry `auth` /
 * `registry_token` removed, oss/s3 access keys and the filecache encryption
 * key blanked.
 */
export function redactSecrets(cfg: ConfigV2): ConfigV2 {
  const out = structuredClone(cfg);
  const b = out.backend;
  for (const o of [b.oss, b.s3]) {
    if (o) {
      o.access_key_id = '';
      o.access_key_secret = '';
    }
  }
  if (b.registry) {
    delete b.registry.auth;
    delete b.registry.registry_token;
  }
  if (out.cache.filecache) out.cache.filecache.encryption_key = '';
  return out;
}

/** Chunk digest validation is on when either `rafs.validate` or `cache.validate` is set. */
export function isChunkValidationEnabled(cfg: ConfigV2): boolean {
  return cfg.rafs.validate || cfg.cache.validate;
}
