/**
 * nydusd configuration (rafs-spec §7, §6 `--localfs-dir`): JSON v2, TOML v2,
 * legacy v1 conversion, serde-like defaults, validation and redaction.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrnoError } from '../../src/common/errno';
import {
  applyImagePullAuth,
  localfsDirConfig,
  parseNydusdConfig,
  readNydusdConfigFile,
  redactSecrets,
} from '../../src/common/config';

/** Throws EINVAL whose message mentions `key`. */
function rejects(text: string, key: string | RegExp): void {
  try {
    parseNydusdConfig(text);
  } catch (e) {
    assert.instance(e, ErrnoError);
    assert.is((e as ErrnoError).code, 'EINVAL');
    const m = (e as Error).message;
    assert.ok(typeof key === 'string' ? m.includes(key) : key.test(m), `message ${JSON.stringify(m)} should name ${key}`);
    return;
  }
  assert.unreachable(`config should be rejected (${key})`);
}

const j = (o: unknown) => JSON.stringify(o);

// shape of upstream misc/configs/nydusd-config-v2.toml (abridged comments)
const TOML_V2 = `
version = 2
id = "my_id"

[backend]
type = "localfs"

[backend.localfs]
blob_file = "/tmp/nydus.blob.data"
dir = "/tmp"
alt_dirs = ["/var/nydus/cache"]

[backend.oss]
scheme = "http"
endpoint = "my_endpoint"
bucket_name = "my_bucket_name"
object_prefix = "my_object_prefix"
access_key_id = "my_access_key_id"
access_key_secret = "my_access_key_secret"
skip_verify = true
timeout = 10
connect_timeout = 10
retry_limit = 5

[backend.oss.proxy]
url = "localhost:6789"
ping_url = "localhost:6789/ping"
fallback = true
check_interval = 5
use_http = false

[backend.registy]
scheme = "https"
host = "my.registry.com"
repo = "nydus"

[backend.registry]
host = "my.registry.com"
repo = "nydus"
auth = "base64_encoded"
registry_token = "bear_token"
blob_url_scheme = "https"
blob_redirected_host = "redirect.registry.com"

[backend.registry.proxy]
url = "localhost:6789"
fallback = true

[cache]
type = "filecache"
compressed = true
validate = true
enable_encryption = true
encryption_key = "fc4a7db5614afc2f400e9478bebed1aefdbc9d7cd03210b84f144683a7a6fd1a"

[cache.filecache]
work_dir = "."

[cache.fscache]
work_dir = "."

[cache.prefetch]
enable = true
threads = 8
batch_size = 1000000
bandwidth_limit = 10000000

[rafs]
mode = "direct"
batch_size = 1000000
validate = true
enable_xattr = true
iostats_files = false
access_pattern = false
latest_read_files = false

[rafs.prefetch]
enable = true
threads = 8
batch_size = 1000000
bandwidth_limit = 10000000
prefetch_all = true
`;

test('TOML v2: upstream example shape', () => {
  const c = parseNydusdConfig(TOML_V2);
  assert.is(c.version, 2);
  assert.is(c.id, 'my_id');
  assert.is(c.backend.type, 'localfs');
  assert.equal(c.backend.localfs, { blob_file: '/tmp/nydus.blob.data', dir: '/tmp', alt_dirs: ['/var/nydus/cache'] });
  assert.is(c.backend.oss!.scheme, 'http');
  assert.is(c.backend.oss!.timeout, 10);
  assert.is(c.backend.oss!.retry_limit, 5);
  assert.equal(c.backend.oss!.ca_cert_files, []);
  assert.equal(c.backend.oss!.proxy, { url: 'localhost:6789', ping_url: 'localhost:6789/ping', fallback: true, check_interval: 5, use_http: false, check_pause_elapsed: 300, dragonfly_scheduler_endpoint: '' });
  assert.is(c.backend.registry!.scheme, 'https'); // default
  assert.is(c.backend.registry!.auth, 'base64_encoded');
  assert.is(c.backend.registry!.proxy.check_interval, 5);
  assert.not.ok('registy' in c.backend, 'the misspelled upstream table is an unknown key');
  assert.is(c.cache.type, 'filecache');
  assert.ok(c.cache.compressed && c.cache.validate);
  assert.equal(c.cache.filecache, { work_dir: '.', disable_indexed_map: false, enable_encryption: false, enable_convergent_encryption: false, encryption_key: '' });
  assert.equal(c.cache.fscache, { work_dir: '.' });
  assert.equal(c.cache.prefetch, { enable: true, threads: 8, batch_size: 1000000, bandwidth_limit: 10000000, prefetch_all: false, stream_prefetch: false });
  assert.equal(c.rafs, {
    mode: 'direct', batch_size: 1000000, validate: true, enable_xattr: true, iostats_files: false, access_pattern: false, latest_read_files: false,
    prefetch: { enable: true, threads: 8, batch_size: 1000000, bandwidth_limit: 10000000, prefetch_all: true, stream_prefetch: false },
  });
  assert.is(c.overlay, undefined);
});

test('JSON v2: minimal document gets serde defaults', () => {
  const c = parseNydusdConfig(j({ version: 2, backend: { type: 'registry', registry: { host: 'r.io', repo: 'lib/x' } } }));
  assert.equal(c, {
    version: 2,
    id: '',
    backend: {
      type: 'registry',
      registry: {
        scheme: 'https', host: 'r.io', repo: 'lib/x', skip_verify: false, ca_cert_files: [], timeout: 5, connect_timeout: 5, retry_limit: 0,
        proxy: { url: '', ping_url: '', fallback: true, check_interval: 5, use_http: false, check_pause_elapsed: 300, dragonfly_scheduler_endpoint: '' },
        blob_url_scheme: '', blob_redirected_host: '',
      },
    },
    external_backends: [],
    cache: { type: '', compressed: false, validate: false, prefetch: { enable: false, threads: 0, batch_size: 0, bandwidth_limit: 0, prefetch_all: false, stream_prefetch: false } },
    rafs: {
      mode: 'direct', batch_size: 1048576, validate: false, enable_xattr: false, iostats_files: false, access_pattern: false, latest_read_files: false,
      prefetch: { enable: false, threads: 0, batch_size: 0, bandwidth_limit: 0, prefetch_all: false, stream_prefetch: false },
    },
  });
  // a present prefetch object takes the per-field defaults
  const p = parseNydusdConfig(j({ version: 2, backend: { type: 'localfs', localfs: { dir: '/d' } }, rafs: { prefetch: { enable: true } } }));
  assert.equal(p.rafs.prefetch, { enable: true, threads: 8, batch_size: 1048576, bandwidth_limit: 0, prefetch_all: false, stream_prefetch: false });
  // filecache work_dir defaults to "."
  const f = parseNydusdConfig(j({ version: 2, backend: { type: 'localfs', localfs: { dir: '/d' } }, cache: { type: 'blobcache', filecache: {} } }));
  assert.is(f.cache.filecache!.work_dir, '.');
  // it round-trips through JSON
  assert.equal(parseNydusdConfig(JSON.stringify(f)), f);
});

test('JSON v2: unknown keys (legacy mirrors) are ignored; external backends and overlay decode', () => {
  const c = parseNydusdConfig(j({
    version: 2,
    whatever: { deep: [1, 2] },
    backend: { type: 'registry', registry: { host: 'h', repo: 'r', mirrors: [{ host: 'http://m' }], future_knob: 1 } },
    external_backends: [{ type: 'local', patch: { a: 'b' }, config: { dir: '/x' } }],
    overlay: { upper_dir: '/u', work_dir: '/w' },
  }));
  assert.not.ok('mirrors' in c.backend.registry!);
  assert.not.ok('future_knob' in c.backend.registry!);
  assert.not.ok('whatever' in c);
  assert.equal(c.external_backends, [{ type: 'local', patch: { a: 'b' }, config: { dir: '/x' } }]);
  assert.equal(c.overlay, { upper_dir: '/u', work_dir: '/w' });
});

test('v2: required keys, types and validation errors name the key', () => {
  const lfs = { type: 'localfs', localfs: { dir: '/d' } };
  rejects(j({ version: 1, backend: lfs }), 'version');
  rejects('version = 3\n[backend]\ntype = "localfs"\n[backend.localfs]\ndir = "/d"\n', 'version');
  rejects('id = "x"\n[backend]\ntype = "localfs"\n', 'version: missing required key');
  rejects(j({ version: 2 }), 'backend');
  rejects(j({ version: 2, backend: {} }), 'backend.type: missing required key');
  rejects(j({ version: 2, backend: { type: 'ftp' } }), 'backend.type');
  rejects(j({ version: 2, backend: { type: 'localfs' } }), 'backend.localfs');
  rejects(j({ version: 2, backend: { type: 'localfs', localfs: {} } }), 'backend.localfs');
  rejects(j({ version: 2, backend: { type: 'registry', registry: { host: 'h' } } }), 'backend.registry.repo');
  rejects(j({ version: 2, backend: { type: 'registry', registry: { host: '', repo: 'r' } } }), 'backend.registry.host');
  rejects(j({ version: 2, backend: { type: 'oss', oss: { endpoint: 'e' } } }), 'backend.oss.bucket_name');
  rejects(j({ version: 2, backend: { type: 's3', s3: { endpoint: 'e', bucket_name: 'b' } } }), 'backend.s3.region');
  rejects(j({ version: 2, backend: { type: 'http-proxy', 'http-proxy': { addr: 'ftp://x' } } }), 'backend.http-proxy.addr');
  rejects(j({ version: 2, backend: { type: 'localdisk', localdisk: {} } }), 'backend.localdisk.device_path');
  rejects(j({ version: 2, backend: { type: 'registry', registry: { host: 'h', repo: 'r', retry_limit: 256 } } }), 'backend.registry.retry_limit');
  rejects(j({ version: 2, backend: { type: 'registry', registry: { host: 'h', repo: 'r', timeout: '5' } } }), 'backend.registry.timeout');
  rejects(j({ version: 2, backend: lfs, cache: { type: 'dummy' } }), 'cache.type');
  rejects(j({ version: 2, backend: lfs, cache: { type: 'blobcache' } }), 'cache.filecache');
  rejects(j({ version: 2, backend: lfs, cache: { type: 'filecache', filecache: { work_dir: '' } } }), 'cache.filecache.work_dir');
  rejects(j({ version: 2, backend: lfs, cache: { type: 'fscache' } }), 'cache.fscache');
  rejects(j({ version: 2, backend: lfs, cache: { prefetch: { threads: 4 } } }), 'cache.prefetch.enable: missing required key');
  rejects(j({ version: 2, backend: lfs, cache: { prefetch: { enable: true, threads: 0 } } }), 'cache.prefetch.threads');
  rejects(j({ version: 2, backend: lfs, rafs: { prefetch: { enable: true, threads: 1025 } } }), 'rafs.prefetch.threads');
  rejects(j({ version: 2, backend: lfs, rafs: { prefetch: { enable: true, batch_size: 0x10000001 } } }), 'rafs.prefetch.batch_size');
  rejects(j({ version: 2, backend: lfs, rafs: { mode: 'lazy' } }), 'rafs.mode');
  rejects(j({ version: 2, backend: lfs, rafs: { batch_size: 0x10000001 } }), 'rafs.batch_size');
  rejects(j({ version: 2, backend: lfs, rafs: { validate: 'yes' } }), 'rafs.validate');
  rejects(j({ version: 2, backend: lfs, external_backends: [{ type: 't', patch: {} }] }), 'external_backends[0].config');
  rejects(j({ version: 2, backend: lfs, overlay: { upper_dir: '/u' } }), 'overlay.work_dir');
  // disabled prefetch is not range-checked (upstream validates only when enabled)
  assert.is(parseNydusdConfig(j({ version: 2, backend: lfs, cache: { prefetch: { enable: false, threads: 0 } } })).cache.prefetch.threads, 0);
  // dummycache and "" are the no-cache types
  assert.is(parseNydusdConfig(j({ version: 2, backend: lfs, cache: { type: 'dummycache' } })).cache.type, 'dummycache');
  // neither JSON nor TOML
  rejects('{ "version": 2, ', /neither JSON .* nor TOML/);
  rejects('[1, 2]', 'JSON object');
});

test('v1 JSON: conversion to v2 with fs_prefetch mapping', () => {
  const c = parseNydusdConfig(j({
    device: {
      id: 'dev1',
      backend: { type: 'registry', config: { host: 'r.io', repo: 'a/b', timeout: 5, connect_timeout: 5, retry_limit: 2, skip_verify: false, ca_cert_files: ['/etc/ssl/certs/my-ca.pem'], mirrors: [] } },
      cache: { type: 'blobcache', validate: true, config: { work_dir: '/var/lib/nydus/cache' } },
    },
    mode: 'direct',
    digest_validate: true,
    iostats_files: true,
    enable_xattr: true,
    amplify_io: 524288,
    fs_prefetch: { enable: true, threads_count: 4, merging_size: 131072, bandwidth_rate: 1000 },
  }));
  assert.is(c.version, 2);
  assert.is(c.id, 'dev1');
  assert.is(c.backend.type, 'registry');
  assert.is(c.backend.registry!.retry_limit, 2);
  assert.equal(c.backend.registry!.ca_cert_files, ['/etc/ssl/certs/my-ca.pem']);
  assert.is(c.cache.type, 'blobcache');
  assert.ok(c.cache.validate);
  assert.is(c.cache.filecache!.work_dir, '/var/lib/nydus/cache');
  const pf = { enable: true, threads: 4, batch_size: 131072, bandwidth_limit: 1000, prefetch_all: true, stream_prefetch: false };
  assert.equal(c.rafs, { mode: 'direct', batch_size: 524288, validate: true, enable_xattr: true, iostats_files: true, access_pattern: false, latest_read_files: false, prefetch: pf });
  // cache prefetch disabled in v1 → copied from fs_prefetch
  assert.equal(c.cache.prefetch, pf);

  // without fs_prefetch: v1 defaults (prefetch_all true), cache.prefetch is the converted BlobPrefetchConfig default
  const d = parseNydusdConfig(j({ device: { backend: { type: 'localfs', config: { dir: '/d' } } }, mode: 'cached' }));
  assert.equal(d.rafs.prefetch, { enable: false, threads: 8, batch_size: 1048576, bandwidth_limit: 0, prefetch_all: true, stream_prefetch: false });
  assert.equal(d.cache.prefetch, { enable: false, threads: 0, batch_size: 0, bandwidth_limit: 0, prefetch_all: true, stream_prefetch: false });
  assert.is(d.cache.type, '');
  assert.is(d.rafs.mode, 'cached');
  assert.is(d.rafs.batch_size, 1048576);

  // required keys and v1 restrictions
  rejects(j({ device: { backend: { type: 'localfs', config: { dir: '/d' } } } }), 'mode: missing required key');
  rejects(j({ mode: 'direct' }), 'device: missing required key');
  rejects(j({ device: { backend: { type: 'localfs' } }, mode: 'direct' }), 'device.backend.config');
  rejects(j({ device: { backend: { type: 'http-proxy', config: { addr: 'http://x' } } }, mode: 'direct' }), 'device.backend.type');
  rejects(j({ device: { backend: { type: 'localfs', config: { dir: '/d' } }, cache: { type: 'dummy' } }, mode: 'direct' }), 'device.cache.type');
  rejects(j({ device: { backend: { type: 'localfs', config: { dir: '/d' } }, cache: { type: 'blobcache' } }, mode: 'direct' }), 'device.cache.config');
  rejects(j({ device: { backend: { type: 'localfs', config: {} } }, mode: 'direct' }), 'backend.localfs');
  rejects(j({ device: { backend: { type: 'localfs', config: { dir: '/d' } } }, mode: 'direct', fs_prefetch: { enable: true, threads_count: 0 } }), /prefetch.threads/);
});

test('upstream misc/configs/nydusd-config.json shape (registry without host) is rejected by validation', () => {
  rejects(j({
    device: {
      backend: { type: 'registry', config: { timeout: 5, connect_timeout: 5, retry_limit: 2, skip_verify: false } },
      cache: { type: 'blobcache', config: { work_dir: '/var/lib/nydus/cache' } },
    },
    mode: 'direct',
    fs_prefetch: { enable: true, threads_count: 8, merging_size: 1048576, prefetch_all: true },
  }), 'host');
});

test('localfsDirConfig: the --localfs-dir synthesised config', () => {
  const c = localfsDirConfig('/srv/blobs');
  assert.equal(c.backend, { type: 'localfs', localfs: { blob_file: '', dir: '/srv/blobs', alt_dirs: [] } });
  assert.is(c.cache.type, 'blobcache');
  assert.is(c.cache.compressed, false);
  assert.is(c.cache.filecache!.work_dir, '/srv/blobs');
  assert.is(c.rafs.mode, 'direct');
  assert.is(c.rafs.validate, false);
  // odd characters survive the JSON round trip
  assert.is(localfsDirConfig('/a "b"\\c').backend.localfs!.dir, '/a "b"\\c');
});

test('redactSecrets blanks credentials without touching the original', () => {
  const c = parseNydusdConfig(TOML_V2);
  c.backend.s3 = { ...c.backend.oss!, region: 'r', access_key_id: 'AK', access_key_secret: 'SK' };
  const r = redactSecrets(c);
  assert.is(r.backend.registry!.auth, undefined);
  assert.is(r.backend.registry!.registry_token, undefined);
  assert.not.ok(JSON.stringify(r).includes('base64_encoded'));
  assert.not.ok(JSON.stringify(r).includes('bear_token'));
  assert.is(r.backend.oss!.access_key_id, '');
  assert.is(r.backend.oss!.access_key_secret, '');
  assert.is(r.backend.s3!.access_key_id, '');
  assert.is(r.backend.s3!.access_key_secret, '');
  assert.is(r.backend.registry!.host, 'my.registry.com');
  // original untouched
  assert.is(c.backend.registry!.auth, 'base64_encoded');
  assert.is(c.backend.oss!.access_key_secret, 'my_access_key_secret');
  // IMAGE_PULL_AUTH override
  assert.is(applyImagePullAuth(c, 'dXNlcjpwYXNz').backend.registry!.auth, 'dXNlcjpwYXNz');
});

test('readNydusdConfigFile: size limit and file errors', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-cfg-'));
  try {
    const ok = path.join(dir, 'c.toml');
    fs.writeFileSync(ok, TOML_V2);
    assert.is(readNydusdConfigFile(ok).id, 'my_id');
    const big = path.join(dir, 'big.json');
    fs.writeFileSync(big, j({ version: 2, backend: { type: 'localfs', localfs: { dir: '/d' } }, pad: 'x'.repeat(0x100000) }));
    assert.throws(() => readNydusdConfigFile(big), (e: unknown) => e instanceof ErrnoError && e.code === 'EINVAL' && /too big/.test(e.message));
    assert.throws(() => readNydusdConfigFile(path.join(dir, 'missing')), (e: unknown) => e instanceof ErrnoError && e.code === 'ENOENT');
    const badf = path.join(dir, 'bad.json');
    fs.writeFileSync(badf, j({ version: 2, backend: { type: 'nope' } }));
    assert.throws(() => readNydusdConfigFile(badf), (e: unknown) => e instanceof ErrnoError && e.message.includes(badf) && e.message.includes('backend.type'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
