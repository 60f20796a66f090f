/**
 * src/remote: reference parsing and normalisation, platform matching, and
 * docker config credential lookup (auths, credHelpers and credsStore with a
 * fake docker-credential-<name> script on PATH).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ErrnoError } from '../../src/common/errno';
import { credentialKey, formatReference, parseReference, registryHost, withTag } from '../../src/remote/reference';
import { dockerConfigPath, getCredentials, normaliseAuthKey } from '../../src/remote/docker-config';
import { parsePlatform, platformMatches } from '../../src/remote/platform';
import { documentType, layerCompression, MediaType } from '../../src/remote/media-types';
import { tmpdir } from '../support/cli';

const D = `sha256:${'a'.repeat(64)}`;

test('parseReference normalises as ParseDockerRef', () => {
  assert.equal(parseReference('nginx'), { domain: 'docker.io', repository: 'library/nginx', tag: 'latest', digest: undefined });
  assert.is(formatReference(parseReference('nginx')), 'docker.io/library/nginx:latest');
  assert.is(formatReference(parseReference('user/app:1.0')), 'docker.io/user/app:1.0');
  assert.is(formatReference(parseReference('index.docker.io/busybox')), 'docker.io/library/busybox:latest');
  assert.equal(parseReference('localhost:5000/a/b:v1'), { domain: 'localhost:5000', repository: 'a/b', tag: 'v1', digest: undefined });
  assert.equal(parseReference('localhost/x'), { domain: 'localhost', repository: 'x', tag: 'latest', digest: undefined });
  assert.equal(parseReference(`127.0.0.1:5000/x@${D}`), { domain: '127.0.0.1:5000', repository: 'x', tag: undefined, digest: D });
  assert.equal(parseReference(`ghcr.io/o/r:t@${D}`), { domain: 'ghcr.io', repository: 'o/r', tag: 't', digest: D });
  assert.is(withTag(parseReference(`a.io/x@${D}`), 'n').tag, 'n');
  for (const bad of ['', 'a.io/UPPER', 'Upper', 'a.io/x:bad tag', `a.io/x@sha256:${'z'.repeat(64)}`, 'a.io/x@sha256:abc', 'a.io/../x', 'a.io/x:' + 'y'.repeat(200)]) {
    assert.throws(() => parseReference(bad), (e: unknown) => e instanceof ErrnoError && e.code === 'EINVAL', bad);
  }
});

test('registry host and credential key of Docker Hub', () => {
  assert.is(registryHost('docker.io'), 'registry-1.docker.io');
  assert.is(registryHost('localhost:5000'), 'localhost:5000');
  assert.is(credentialKey('docker.io'), 'https://index.docker.io/v1/');
  assert.is(credentialKey('registry-1.docker.io'), 'https://index.docker.io/v1/');
  assert.is(credentialKey('ghcr.io'), 'ghcr.io');
  assert.is(normaliseAuthKey('https://Host:5000/v1/'), 'host:5000');
});

test('platforms: parse, defaults, matching', () => {
  assert.equal(parsePlatform('linux/amd64'), { os: 'linux', architecture: 'amd64', variant: undefined });
  assert.equal(parsePlatform('linux/arm64/v8'), { os: 'linux', architecture: 'arm64', variant: undefined });
  assert.equal(parsePlatform('linux/arm'), { os: 'linux', architecture: 'arm', variant: 'v7' });
  assert.ok(platformMatches({ os: 'linux', architecture: 'amd64' }, [parsePlatform('linux/amd64')]));
  assert.not.ok(platformMatches({ os: 'linux', architecture: 'arm64' }, [parsePlatform('linux/amd64')]));
  assert.ok(platformMatches({ os: 'linux', architecture: 'arm64', variant: 'v8' }, [parsePlatform('linux/arm64')]));
  assert.not.ok(platformMatches(undefined, [parsePlatform('linux/amd64')]));
  assert.ok(platformMatches(undefined, undefined), 'all platforms');
  assert.throws(() => parsePlatform('a/b/c/d'));
});

test('media types: document type and layer compression', () => {
  assert.is(documentType({ manifests: [] }), MediaType.OciIndex);
  assert.is(documentType({ layers: [] }), MediaType.OciManifest);
  assert.is(documentType({ mediaType: MediaType.DockerManifest, layers: [] }), MediaType.DockerManifest);
  assert.is(layerCompression(MediaType.OciLayerGzip), 'gzip');
  assert.is(layerCompression(MediaType.DockerLayerGzip), 'gzip');
  assert.is(layerCompression(MediaType.OciLayerZstd), 'zstd');
  assert.is(layerCompression(MediaType.OciLayer), 'none');
  assert.is(layerCompression(MediaType.NydusBlob), undefined);
});

function dockerEnv(config: object, helpers: Record<string, string> = {}): NodeJS.ProcessEnv {
  const dir = tmpdir('docker-config');
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  for (const [name, script] of Object.entries(helpers)) {
    fs.writeFileSync(path.join(bin, `docker-credential-${name}`), `#!/bin/sh\n${script}\n`, { mode: 0o755 });
  }
  return { ...process.env, DOCKER_CONFIG: dir, PATH: `${bin}:${process.env.PATH}`, HELPER_LOG: path.join(dir, 'helper.log') };
}

test('docker config: auths (base64 auth, username/password, normalised keys, Docker Hub key)', async () => {
  const env = dockerEnv({
    auths: {
      'https://index.docker.io/v1/': { auth: Buffer.from('hub:secret').toString('base64') },
      'https://reg.example:5000/v2/': { auth: Buffer.from('u:p:with:colons').toString('base64') },
      'plain.example': { username: 'a', password: 'b' },
      'token.example': { identitytoken: 'xyz' },
    },
  });
  assert.is(dockerConfigPath(env), path.join(env.DOCKER_CONFIG!, 'config.json'));
  assert.equal(await getCredentials('docker.io', env), { username: 'hub', password: 'secret' });
  assert.equal(await getCredentials('reg.example:5000', env), { username: 'u', password: 'p:with:colons' });
  assert.equal(await getCredentials('plain.example', env), { username: 'a', password: 'b' });
  assert.is(await getCredentials('token.example', env), undefined, 'identity tokens are ignored');
  assert.is(await getCredentials('other.example', env), undefined);
  assert.is(await getCredentials('x.example', { ...env, DOCKER_CONFIG: '/nonexistent' }), undefined, 'no config file: anonymous');
});

test('docker config: credHelpers before credsStore before auths; helper protocol', async () => {
  const env = dockerEnv({
    credHelpers: { 'helped.example': 'fake' },
    credsStore: 'store',
    auths: { 'helped.example': { username: 'no', password: 'no' }, 'stored.example': { username: 'fallback', password: 'pw' } },
  }, {
    // reads the server URL on stdin, logs it, answers with JSON
    fake: 'read s; echo "$1 $s" >> "$HELPER_LOG"; echo "{\\"ServerURL\\":\\"$s\\",\\"Username\\":\\"helper-user\\",\\"Secret\\":\\"helper-pass\\"}"',
    store: 'read s; echo "store $s" >> "$HELPER_LOG"; if [ "$s" = "stored.example" ]; then echo "credentials not found in native keychain"; exit 1; fi; if [ "$s" = "broken.example" ]; then echo boom >&2; exit 3; fi; echo "{\\"Username\\":\\"store-user\\",\\"Secret\\":\\"store-pass\\"}"',
  });
  assert.equal(await getCredentials('helped.example', env), { username: 'helper-user', password: 'helper-pass' });
  assert.equal(await getCredentials('docker.io', env), { username: 'store-user', password: 'store-pass' });
  assert.equal(await getCredentials('stored.example', env), { username: 'fallback', password: 'pw' }, 'not found in the store: auths');
  try {
    await getCredentials('broken.example', env);
    assert.unreachable('a failing helper is an error');
  } catch (e) {
    assert.instance(e, ErrnoError);
    assert.match((e as Error).message, /docker-credential-store get failed.*boom/);
  }
  const logged = fs.readFileSync(env.HELPER_LOG!, 'utf8');
  assert.match(logged, /^get helped\.example$/m);
  assert.match(logged, /^store https:\/\/index\.docker\.io\/v1\/$/m, 'Docker Hub is asked under its v1 key');
});

test('docker config: a missing helper binary is an error', async () => {
  const env = dockerEnv({ credHelpers: { 'h.example': 'absent' } });
  try {
    await getCredentials('h.example', env);
    assert.unreachable();
  } catch (e) {
    assert.match((e as Error).message, /docker-credential-absent/);
  }
});

test.run();
