/**
 * A real OCI registry for e2e tests: Debian's `docker-registry` (distribution
 * 2.8) on a free loopback port with filesystem storage, anonymous, behind
 * htpasswd (bcrypt, made by apache2-utils' `htpasswd -Bbn`), or behind token
 * auth (`auth: token:` with realm, service, issuer and rootcertbundle; see
 * test/support/token-issuer.ts). `restart()` starts it again on the same port
 * and storage, optionally with another token config (key rotation). Blobs are
 * pushed with the registry HTTP API (monolithic upload: POST then PUT
 * ?digest=), answering a Bearer challenge with a push token from the realm.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { tmpdir } from './cli';
import { sleep } from './timing';

export const REGISTRY_BIN = '/usr/bin/docker-registry';

/** Why the registry e2e cannot run here, or undefined. */
export function registryMissing(): string | undefined {
  if (!fs.existsSync(REGISTRY_BIN)) return 'docker-registry not installed (scripts/setup.sh installs it)';
  if (spawnSync('sh', ['-c', 'command -v htpasswd']).status !== 0) return 'htpasswd not installed (apache2-utils; scripts/setup.sh installs it)';
  return undefined;
}

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

interface Reply { status: number; headers: http.IncomingHttpHeaders; body: string }

function req(method: string, url: string, headers: Record<string, string>, body?: Buffer): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const r = http.request(url, { method, headers: body ? { ...headers, 'content-length': String(body.length) } : headers }, (res) => {
      let b = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { if (b.length < 65536) b += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: b }));
      res.on('error', reject);
    });
    r.on('error', reject);
    r.setTimeout(10_000, () => r.destroy(new Error(`${method} ${url} timed out`)));
    r.end(body);
  });
}


/** docker-registry's `auth: token:` settings. */
export interface TokenAuth {
  realm: string;
  service: string;
  issuer: string;
  /** PEM file of the certificates whose keys may sign tokens */
  rootcertbundle: string;
}

export interface RegistryOptions {
  /** htpasswd user (or, with `token`, the user pushBlob asks the token realm for) */
  user?: string;
  pass?: string;
  /** token auth instead of htpasswd */
  token?: TokenAuth;
  /** run inside this network namespace (`ip netns exec`), listening on `listenIp` (see shaped-link.ts) */
  netns?: { name: string; listenIp: string };
}

export interface Registry {
  host: string;
  port: number;
  /** base64 user:pass when started with a user */
  auth?: string;
  /** everything the registry wrote (stdout + stderr), across restarts */
  log(): string;
  /** push `data` as a blob of `repo`; returns its sha256 hex */
  pushBlob(repo: string, data: Buffer): Promise<string>;
  /** stop and start again on the same port and storage (with `token`: new token settings) */
  restart(token?: TokenAuth): Promise<void>;
  stop(): Promise<void>;
}

function configYaml(addr: string, storage: string, authYaml: string): string {
  return [
    'version: 0.1',
    'log:',
    '  level: info',
    '  accesslog:',
    '    disabled: false',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${storage}`,
    'http:',
    `  addr: ${addr}`,
    authYaml,
  ].join('\n');
}

function tokenYaml(t: TokenAuth): string {
  return `auth:\n  token:\n    realm: ${t.realm}\n    service: ${t.service}\n    issuer: ${t.issuer}\n    rootcertbundle: ${t.rootcertbundle}\n`;
}

/** Parameters of a Bearer challenge (test helper, values without quotes). */
function bearerParams(v: string | string[] | undefined): Record<string, string> | undefined {
  const h = Array.isArray(v) ? v[0] : v;
  if (!h || !/^Bearer /i.test(h)) return undefined;
  const out: Record<string, string> = {};
  for (const m of h.slice(7).matchAll(/(\w+)="([^"]*)"/g)) out[m[1]] = m[2];
  return out;
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  const dir = tmpdir('registry');
  // inside a netns any port is free (the namespace is ours)
  const port = opts.netns ? 5000 : await freePort();
  const ip = opts.netns?.listenIp ?? '127.0.0.1';
  const storage = path.join(dir, 'storage');
  fs.mkdirSync(storage);
  let authYaml = '';
  const auth = opts.user ? Buffer.from(`${opts.user}:${opts.pass ?? ''}`).toString('base64') : undefined;
  if (opts.token) {
    authYaml = tokenYaml(opts.token);
  } else if (opts.user) {
    const line = spawnSync('htpasswd', ['-Bbn', opts.user, opts.pass ?? ''], { encoding: 'utf8' });
    if (line.status !== 0) throw new Error(`htpasswd failed: ${line.stderr}`);
    const file = path.join(dir, 'htpasswd');
    fs.writeFileSync(file, line.stdout.trim() + '\n');
    authYaml = `auth:\n  htpasswd:\n    realm: nydus-test\n    path: ${file}\n`;
  }
  const config = path.join(dir, 'config.yml');
  fs.writeFileSync(config, configYaml(`${ip}:${port}`, storage, authYaml));
  let out = '';
  // The registry logs into a file, not a pipe: a test that blocks its event loop (spawnSync of
  // dd, cat …) would stop draining a pipe, and a registry blocked on a full pipe stops answering.
  const logFile = path.join(dir, 'registry.log');
  const readLog = (): string => { try { return fs.readFileSync(logFile, 'utf8'); } catch { return out; } };
  const base = `http://${ip}:${port}`;
  let proc: ChildProcess;
  let exited = false;
  let exit: Promise<void>;
  const launch = async () => {
    const logFd = fs.openSync(logFile, 'a');
    proc = opts.netns
      ? spawn('ip', ['netns', 'exec', opts.netns.name, REGISTRY_BIN, 'serve', config], { stdio: ['ignore', logFd, logFd] })
      : spawn(REGISTRY_BIN, ['serve', config], { stdio: ['ignore', logFd, logFd] });
    fs.closeSync(logFd);
    exited = false;
    const p = proc;
    exit = new Promise<void>((r) => p.on('exit', () => { exited = true; r(); }));
    const t0 = Date.now();
    for (;;) {
      if (exited) throw new Error(`docker-registry exited: ${readLog()}`);
      try {
        const r = await req('GET', `${base}/v2/`, {});
        if (r.status === 200 || r.status === 401) break;
      } catch {
        // not listening yet
      }
      if (Date.now() - t0 > 15_000) { p.kill('SIGKILL'); throw new Error(`docker-registry did not start: ${readLog()}`); }
      await sleep(50);
    }
  };
  const halt = async () => {
    if (!exited) proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await exit;
    clearTimeout(t);
  };
  await launch();
  const basic: Record<string, string> = auth ? { authorization: `Basic ${auth}` } : {};
  let tokenCfg = opts.token;
  /** A request that answers a Bearer challenge with a token from the realm (push scope). */
  const authed = async (method: string, url: string, headers: Record<string, string>, body?: Buffer): Promise<Reply> => {
    if (!tokenCfg) return req(method, url, { ...basic, ...headers }, body);
    const first = await req(method, url, headers, body);
    const ch = first.status === 401 ? bearerParams(first.headers['www-authenticate']) : undefined;
    if (!ch?.realm) return first;
    const t = new URL(ch.realm);
    t.searchParams.set('service', ch.service ?? '');
    if (ch.scope) t.searchParams.set('scope', ch.scope);
    const tr = await req('GET', t.href, basic);
    if (tr.status !== 200) throw new Error(`push token: ${tr.status} ${tr.body}`);
    const j = JSON.parse(tr.body) as { token?: string; access_token?: string };
    return req(method, url, { ...headers, authorization: `Bearer ${j.token || j.access_token}` }, body);
  };
  return {
    host: `${ip}:${port}`,
    port,
    auth,
    log: readLog,
    async pushBlob(repo, data) {
      const digest = crypto.createHash('sha256').update(data).digest('hex');
      const start = await authed('POST', `${base}/v2/${repo}/blobs/uploads/`, {});
      if (start.status !== 202 || !start.headers.location) throw new Error(`upload start: ${start.status} ${start.body}`);
      const loc = new URL(start.headers.location, base);
      loc.searchParams.set('digest', `sha256:${digest}`);
      const put = await authed('PUT', loc.href, { 'content-type': 'application/octet-stream' }, data);
      if (put.status !== 201) throw new Error(`upload put: ${put.status} ${put.body}`);
      return digest;
    },
    async restart(token) {
      await halt();
      if (token) {
        tokenCfg = token;
        fs.writeFileSync(config, configYaml(`${ip}:${port}`, storage, tokenYaml(token)));
      }
      await launch();
    },
    async stop() {
      await halt();
      out = readLog(); // kept for log() after the files are gone
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Access-log lines of GETs of blob `digest` (distribution logs one line per request). */
export function blobGets(log: string, digest: string): string[] {
  return log.split('\n').filter((l) => l.includes(`"GET /v2/`) && l.includes(`/blobs/sha256:${digest}`));
}

/** PUT an OCI image manifest by URL (201 expected), bypassing the client (tests that build images by hand). */
export function putManifest(url: string, body: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const r = http.request(url, { method: 'PUT', headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'content-length': String(body.length) } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 201 ? resolve() : reject(new Error(`PUT ${url}: HTTP ${res.statusCode}`))));
    });
    r.on('error', reject);
    r.end(body);
  });
}
