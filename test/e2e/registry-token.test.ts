/**
 * Registry token auth against a real registry: Debian's docker-registry
 * (distribution 2.8) with `auth: token:` trusting the certificate of a small
 * token issuer (test/support/token-issuer.ts, a child process: ES256 JWTs
 * with an x5c header, Basic credentials checked, every request logged). nydusd mounts an image
 * whose blob lives there (registry backend `auth` = base64 user:pass,
 * blobcache) and reads part of it; then the signing key ROTATES (the registry
 * restarts trusting only the new certificate, the issuer signs with the new
 * key): reads of files not cached yet go on, because nydusd's old token gets a
 * 401 and it fetches a new one (the issuer's log shows it, signed with the new
 * key). Wrong credentials give EIO on read, never a hang; a `registry_token`
 * alone is used as is, without asking the issuer.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { nydusImage, tmpdir } from '../support/cli';
import { fuseMissing, isMounted, startNydusd, type Daemon } from '../support/nydusd';
import { blobGets, registryMissing, startRegistry, type Registry, type TokenAuth } from '../support/registry';
import { startTokenIssuer, tokenIssuerMissing, type TokenIssuer } from '../support/token-issuer';
import { diffTrees, treeRecords } from '../support/tree-digest';

const missing = registryMissing() ?? tokenIssuerMissing() ?? fuseMissing();
if (missing) {
  if (process.env.CI === 'true') throw new Error(`registry token e2e: ${missing}`);
  console.log(`SKIP registry token e2e: ${missing}`);
}

const REPO = 'test/token-img';
const USER = 'nydus';
const PASS = 'token-secret';
const CHUNK = 0x10000;
const FILES = 48;
const work = tmpdir('registry-token-e2e');
const src = path.join(work, 'src');
let iss: TokenIssuer | undefined;
let reg: Registry | undefined;
let blobId = '';
let boot = '';
let daemon: Daemon | undefined;
const mnt = path.join(work, 'mnt');

const name = (i: number) => `d/f${String(i).padStart(2, '0')}`;
const tokenAuth = (bundle: string): TokenAuth => ({ realm: iss!.realm, service: iss!.service, issuer: iss!.issuer, rootcertbundle: bundle });
const b64 = (s: string) => Buffer.from(s).toString('base64');

test.before(async () => {
  if (missing) return;
  // one random chunk per file, named in blob order: f00 … f47 (3 MiB), so the first and the last files are
  // further apart than a read is ever amplified (1 MiB)
  fs.mkdirSync(path.join(src, 'd'), { recursive: true });
  for (let i = 0; i < FILES; i++) fs.writeFileSync(path.join(src, name(i)), crypto.randomBytes(CHUNK));
  fs.writeFileSync(path.join(src, 'small.txt'), 'hello token\n');
  const blobs = path.join(work, 'blobs');
  boot = path.join(work, 'image.boot');
  nydusImage(['create', '--fs-version', '6', '--compressor', 'zstd', '--chunk-size', `0x${CHUNK.toString(16)}`, '--bootstrap', boot, '--blob-dir', blobs, src]);
  blobId = fs.readdirSync(blobs)[0];
  iss = await startTokenIssuer({ [USER]: PASS });
  reg = await startRegistry({ user: USER, pass: PASS, token: tokenAuth(iss.bundle) });
  assert.is(await reg.pushBlob(REPO, fs.readFileSync(path.join(blobs, blobId))), blobId);
});

test.after(async () => {
  if (daemon) await daemon.stop();
  await reg?.stop();
  await iss?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

function config(tag: string, registry: Record<string, unknown>): string {
  const cache = path.join(work, `cache-${tag}`);
  fs.mkdirSync(cache, { recursive: true });
  const file = path.join(work, `config-${tag}.json`);
  fs.writeFileSync(file, JSON.stringify({
    version: 2,
    backend: { type: 'registry', registry: { scheme: 'http', host: reg!.host, repo: REPO, timeout: 5, connect_timeout: 2, ...registry } },
    cache: { type: 'blobcache', filecache: { work_dir: cache } },
    rafs: { mode: 'direct', validate: true },
  }));
  return file;
}

/** nydusd's token requests (the issuer also served pushBlob's). */
const nydusTokenRequests = () => iss!.requests().filter((r) => r.clientId === 'nydus-registry-client');

function sameAsSource(m: string, rel: string): void {
  assert.ok(fs.readFileSync(path.join(m, rel)).equals(fs.readFileSync(path.join(src, rel))), `${rel} differs`);
}

test('nydusd with Basic auth gets a token from the issuer and reads', async () => {
  if (missing) return;
  daemon = await startNydusd(mnt, ['--bootstrap', boot, '--config', config('main', { auth: reg!.auth }), '--log-level', 'warn']);
  for (let i = 0; i < 4; i++) sameAsSource(mnt, name(i));
  assert.is(fs.readFileSync(path.join(mnt, 'small.txt'), 'utf8'), 'hello token\n');
  const reqs = nydusTokenRequests();
  assert.ok(reqs.length >= 1, 'nydusd asked the issuer');
  assert.equal(reqs.map((r) => [r.user, r.status, r.scope, r.key]), reqs.map(() => [USER, 200, `repository:${REPO}:pull`, 0]));
  assert.is(reqs[0].method, 'POST', 'POST form first, as upstream');
  assert.is(reqs.length, 1, `one token for the whole backend: ${JSON.stringify(reqs)}`);
});

test('key rotation: the old token gets a 401, nydusd fetches a new one and reads the files not cached yet', async () => {
  if (missing || !daemon) return;
  const before = nydusTokenRequests().length;
  const bundle = await iss!.rotate();
  await reg!.restart(tokenAuth(bundle));
  const logBefore = reg!.log().length;
  for (let i = FILES - 8; i < FILES; i++) sameAsSource(mnt, name(i));
  const after = nydusTokenRequests().slice(before);
  assert.ok(after.length >= 1, 'the issuer saw the second token request');
  assert.ok(after.every((r) => r.status === 200 && r.user === USER && r.key === 1), JSON.stringify(after));
  const blobLog = blobGets(reg!.log().slice(logBefore), blobId);
  assert.ok(blobLog.some((l) => /" 401 /.test(l)), `the old token was refused:\n${blobLog.join('\n')}`);
  assert.ok(blobLog.some((l) => /" 206 /.test(l)), 'then the new one was accepted');
  // everything else (cached or not) is still right
  assert.equal(diffTrees(treeRecords(src), treeRecords(mnt)), [], 'tree differs');
  assert.is(await daemon.stop(), 0, `nydusd exit code; log: ${daemon.log()}`);
  daemon = undefined;
  assert.not.ok(isMounted(mnt));
});

test('wrong credentials: the issuer refuses them, reads fail with EIO (no hang)', async () => {
  if (missing) return;
  const m = path.join(work, 'mnt-bad');
  const before = iss!.requests().length;
  const d = await startNydusd(m, ['--bootstrap', boot, '--config', config('bad', { auth: b64(`${USER}:wrong`) }), '--log-level', 'warn']);
  try {
    const r = spawnSync('cat', [path.join(m, name(10))], { timeout: 120_000, maxBuffer: 1 << 20 });
    assert.is(r.signal, null, 'the read returned (no hang)');
    assert.is.not(r.status, 0);
    assert.match(r.stderr.toString(), /Input\/output error/);
  } finally {
    assert.is(await d.stop(), 0, `nydusd exit code; log: ${d.log()}`);
  }
  const refused = iss!.requests().slice(before);
  assert.ok(refused.length >= 1 && refused.every((x) => x.status === 401 && x.user === USER), JSON.stringify(refused));
});

test('registry_token: used from the first request, the issuer is not asked', async () => {
  if (missing) return;
  const token = await iss!.issue(USER, REPO);
  const m = path.join(work, 'mnt-token');
  const before = iss!.requests().length;
  const d = await startNydusd(m, ['--bootstrap', boot, '--config', config('token', { registry_token: token }), '--log-level', 'warn']);
  try {
    assert.equal(diffTrees(treeRecords(src), treeRecords(m)), [], 'tree differs');
  } finally {
    assert.is(await d.stop(), 0, `nydusd exit code; log: ${d.log()}`);
  }
  assert.is(iss!.requests().length, before, 'no token request');
});

test.run();
