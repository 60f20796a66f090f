/**
 * Registry credentials from docker's config file (nydusify-snapshotter §1.3):
 * `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; for a host,
 * `credHelpers[host]`, then `credsStore` (both run
 * `docker-credential-<name> get` with the server URL on stdin), then `auths`
 * (base64 `auth`, or `username`/`password`; keys matched after stripping the
 * scheme and path, so `https://host/v1/` matches `host`). Docker Hub is looked
 * up under `https://index.docker.io/v1/`. Only username and password are used:
 * identity tokens are ignored as upstream.
 *
 * Deliberate differences: a helper that fails for any reason other than
 * "credentials not found" is an error (EIO naming the helper) rather than a
 * silent anonymous pull; its output is bounded (64 KiB) and it is killed after
 * 30 s; a config file larger than 4 MiB is refused.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { einval, eio } from '../common/errno';
import { credentialKey } from './reference';

export interface Credentials {
  username: string;
  password: string;
}

interface DockerConfigFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

const MAX_CONFIG = 4 << 20;
const MAX_HELPER_OUTPUT = 64 * 1024;
const HELPER_TIMEOUT_MS = 30_000;

/** Path of the docker config file for `env`. */
export function dockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const dir = env.DOCKER_CONFIG || path.join(env.HOME || os.homedir(), '.docker');
  return path.join(dir, 'config.json');
}

function loadConfig(file: string): DockerConfigFile {
  let text: string;
  try {
    const st = fs.statSync(file);
    if (st.size > MAX_CONFIG) throw einval(`${file} is larger than ${MAX_CONFIG} bytes`);
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw err;
  }
  try {
    const j = JSON.parse(text) as unknown;
    return j && typeof j === 'object' ? (j as DockerConfigFile) : {};
  } catch (err) {
    throw einval(`${file} is not valid JSON: ${(err as Error).message}`);
  }
}

/** `https://host:5000/v1/` → `host:5000` (docker's hostname normalisation of auths keys). */
export function normaliseAuthKey(key: string): string {
  let k = key.trim();
  k = k.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '');
  const slash = k.indexOf('/');
  return (slash >= 0 ? k.slice(0, slash) : k).toLowerCase();
}

/** Run `docker-credential-<helper> get` for `server`; undefined when it has nothing. */
export function runCredentialHelper(helper: string, server: string, env: NodeJS.ProcessEnv = process.env): Promise<Credentials | undefined> {
  if (!/^[A-Za-z0-9_.-]+$/.test(helper)) return Promise.reject(einval(`invalid credential helper name '${helper}'`));
  const bin = `docker-credential-${helper}`;
  return new Promise((resolve, reject) => {
    const p = spawn(bin, ['get'], { stdio: ['pipe', 'pipe', 'pipe'], env });
    let out = '';
    let err = '';
    let over = false;
    const timer = setTimeout(() => { p.kill('SIGKILL'); }, HELPER_TIMEOUT_MS);
    p.stdout.setEncoding('utf8');
    p.stderr.setEncoding('utf8');
    p.stdout.on('data', (d: string) => { if (out.length + d.length > MAX_HELPER_OUTPUT) { over = true; p.kill('SIGKILL'); } else out += d; });
    p.stderr.on('data', (d: string) => { if (err.length < 4096) err += d; });
    p.stdin.on('error', () => undefined);
    p.on('error', (e) => { clearTimeout(timer); reject(eio(`credential helper ${bin}: ${e.message}`, e)); });
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      if (over) return reject(eio(`credential helper ${bin}: output larger than ${MAX_HELPER_OUTPUT} bytes`));
      if (code !== 0) {
        const text = `${out}${err}`.trim();
        if (/credentials not found/i.test(text)) return resolve(undefined);
        return reject(eio(`credential helper ${bin} get failed (${signal ?? `exit ${code}`}): ${text.slice(0, 300)}`));
      }
      let j: { Username?: unknown; Secret?: unknown };
      try {
        j = JSON.parse(out);
      } catch {
        return reject(eio(`credential helper ${bin}: output is not JSON`));
      }
      const username = typeof j.Username === 'string' ? j.Username : '';
      const password = typeof j.Secret === 'string' ? j.Secret : '';
      // "<token>" marks an identity token, which is not used (as upstream)
      if (!password || username === '<token>') return resolve(undefined);
      resolve({ username, password });
    });
    p.stdin.end(server);
  });
}

function fromAuthEntry(e: { auth?: string; username?: string; password?: string }): Credentials | undefined {
  if (e.auth) {
    const dec = Buffer.from(e.auth, 'base64').toString('utf8');
    const c = dec.indexOf(':');
    if (c < 0) throw einval('docker config: an auths entry is not base64 of user:password');
    return { username: dec.slice(0, c), password: dec.slice(c + 1) };
  }
  if (e.username && e.password) return { username: e.username, password: e.password };
  return undefined;
}

/**
 * Credentials for registry `domain` (as named in references: `docker.io`,
 * `host:5000`), or undefined for anonymous access.
 */
export async function getCredentials(domain: string, env: NodeJS.ProcessEnv = process.env): Promise<Credentials | undefined> {
  const cfg = loadConfig(dockerConfigPath(env));
  const key = credentialKey(domain);
  const helper = cfg.credHelpers?.[key] ?? cfg.credHelpers?.[domain];
  if (helper) return runCredentialHelper(helper, key, env);
  if (cfg.credsStore) {
    const c = await runCredentialHelper(cfg.credsStore, key, env);
    if (c) return c;
  }
  const auths = cfg.auths ?? {};
  if (auths[key]) return fromAuthEntry(auths[key]);
  const want = normaliseAuthKey(key);
  for (const [k, v] of Object.entries(auths)) if (normaliseAuthKey(k) === want && v && typeof v === 'object') return fromAuthEntry(v);
  return undefined;
}

/** base64 `user:pass` of credentials (the registry backend's `auth`). */
export const basicAuth = (c: Credentials): string => Buffer.from(`${c.username}:${c.password}`).toString('base64');
