/**
 * A token issuer for docker-registry's `auth: token:` (distribution 2.8) in
 * e2e tests: node:http on loopback, run in a child process of its own (tests
 * read FUSE mounts with synchronous calls, which would stall an issuer living
 * on their event loop while nydusd waits for its token).
 *
 * It checks Basic credentials against a fixed user list, answers GET
 * (`?service&scope&client_id`) and POST (the same as a form) on `/token` with
 * `{token, access_token, expires_in, issued_at}`, and appends every request to
 * a JSON-lines log. Tokens are ES256 JWTs signed with `jose`; the key and its
 * self-signed certificate come from the `openssl` CLI, and the certificate
 * travels in the JWT header's `x5c`: distribution verifies that chain against
 * `rootcertbundle` and takes the signing key from the leaf. (A header with
 * only a `kid` works too with 2.8.2, checked by hand, but the kid must be the
 * libtrust fingerprint of a bundle key: base32 of the first 30 bytes of the
 * SPKI DER's sha256, in groups of 4 joined by ':'; x5c needs none of that.)
 * `rotate()` makes a new key: tokens are signed with it from then on, and the
 * bundle it returns holds only the new certificate. `rotate()` and `issue()`
 * are test-only `/_control/*` requests to the child.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { SignJWT, importPKCS8 } from 'jose';
import { ROOT, tmpdir } from './cli';

export const SERVICE = 'nydus-test-registry';
export const ISSUER = 'nydus-test-issuer';

/** Why the issuer cannot run here (no openssl), or undefined. */
export function tokenIssuerMissing(): string | undefined {
  return spawnSync('sh', ['-c', 'command -v openssl']).status === 0 ? undefined : 'openssl not installed (scripts/setup.sh installs it)';
}

export interface TokenRequest {
  method: string;
  /** Basic user, when credentials were sent */
  user?: string;
  status: number;
  service: string;
  scope: string;
  clientId: string;
  /** key generation that signed the token (0 = first key), when one was issued */
  key?: number;
}

export interface TokenIssuer {
  /** the realm URL */
  realm: string;
  service: string;
  issuer: string;
  /** PEM bundle holding the current certificate only */
  bundle: string;
  /** every `/token` request so far, in order */
  requests(): TokenRequest[];
  /** new signing key; resolves to the new bundle path (only the new certificate) */
  rotate(): Promise<string>;
  /** a pull token for `repo` signed now (what a client would be given as `registry_token`) */
  issue(user: string, repo: string): Promise<string>;
  stop(): Promise<void>;
}

// ---------------------------------------------------------------- parent side

function control(port: number, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const r = http.request({ host: '127.0.0.1', port, path: `/_control/${what}`, method: 'POST' }, (res) => {
      let b = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { b += d; });
      res.on('end', () => (res.statusCode === 200 ? resolve(b) : reject(new Error(`token issuer ${what}: ${res.statusCode} ${b}`))));
    });
    r.on('error', reject);
    r.end();
  });
}

/** Start the issuer (child process) for `users` (name → password); tokens live `ttl` s. */
export async function startTokenIssuer(users: Record<string, string>, opts: { ttl?: number } = {}): Promise<TokenIssuer> {
  const dir = tmpdir('token-issuer');
  fs.writeFileSync(path.join(dir, 'users.json'), JSON.stringify({ users, ttl: opts.ttl ?? 300 }));
  const errFd = fs.openSync(path.join(dir, 'stderr.log'), 'a');
  const proc: ChildProcess = spawn(process.execPath, ['--import', 'tsx', __filename, dir], { cwd: ROOT, stdio: ['ignore', 'pipe', errFd] });
  fs.closeSync(errFd);
  const exit = new Promise<void>((r) => proc.on('exit', () => r()));
  const ready = await new Promise<{ port: number; bundle: string }>((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`token issuer did not start: ${fs.readFileSync(path.join(dir, 'stderr.log'), 'utf8')}`)); }, 30_000);
    proc.stdout!.setEncoding('utf8');
    proc.stdout!.on('data', (d: string) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) { clearTimeout(t); resolve(JSON.parse(out.slice(0, nl)) as { port: number; bundle: string }); }
    });
    void exit.then(() => { clearTimeout(t); reject(new Error(`token issuer exited: ${fs.readFileSync(path.join(dir, 'stderr.log'), 'utf8')}`)); });
  });
  proc.stdout!.resume(); // nothing else is written; keep the pipe drained all the same
  const log = path.join(dir, 'requests.jsonl');
  let saved: TokenRequest[] | undefined;
  const issuer: TokenIssuer = {
    realm: `http://127.0.0.1:${ready.port}/token`,
    service: SERVICE,
    issuer: ISSUER,
    bundle: ready.bundle,
    requests() {
      if (saved) return saved;
      let text = '';
      try { text = fs.readFileSync(log, 'utf8'); } catch { /* no request yet */ }
      return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as TokenRequest);
    },
    async rotate() {
      issuer.bundle = await control(ready.port, 'rotate');
      return issuer.bundle;
    },
    issue(user, repo) {
      return control(ready.port, `issue?user=${encodeURIComponent(user)}&repo=${encodeURIComponent(repo)}`);
    },
    async stop() {
      saved = issuer.requests();
      if (proc.exitCode === null) proc.kill('SIGTERM');
      await exit;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return issuer;
}

// ---------------------------------------------------------------- child side

interface SigningKey { key: Awaited<ReturnType<typeof importPKCS8>>; x5c: string; generation: number; bundle: string }

async function makeKey(dir: string, generation: number): Promise<SigningKey> {
  const key = path.join(dir, `key-${generation}.pem`);
  const cert = path.join(dir, `cert-${generation}.pem`);
  const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=nydus test token signer ${generation}`], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl failed: ${r.error?.message ?? r.stderr}`);
  const certPem = fs.readFileSync(cert, 'utf8');
  return {
    key: await importPKCS8(fs.readFileSync(key, 'utf8'), 'ES256'),
    x5c: certPem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s+/g, ''),
    generation,
    bundle: cert,
  };
}

/** `type:name:actions` scopes (space separated) → JWT `access` claims. */
function accessOf(scope: string): { type: string; name: string; actions: string[] }[] {
  const out: { type: string; name: string; actions: string[] }[] = [];
  for (const s of scope.split(' ').filter(Boolean)) {
    const m = /^([a-z]+):(.+):([a-z,*]+)$/.exec(s);
    if (m) out.push({ type: m[1], name: m[2], actions: m[3].split(',') });
  }
  return out;
}

async function serve(dir: string): Promise<void> {
  const { users, ttl } = JSON.parse(fs.readFileSync(path.join(dir, 'users.json'), 'utf8')) as { users: Record<string, string>; ttl: number };
  const log = path.join(dir, 'requests.jsonl');
  let current = await makeKey(dir, 0);
  const sign = (user: string, scope: string): Promise<string> => {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ access: accessOf(scope) })
      .setProtectedHeader({ alg: 'ES256', typ: 'JWT', x5c: [current.x5c] })
      .setIssuer(ISSUER)
      .setSubject(user)
      .setAudience(SERVICE)
      .setIssuedAt(now)
      .setNotBefore(now - 5)
      .setExpirationTime(now + ttl)
      .setJti(crypto.randomUUID())
      .sign(current.key);
  };
  const srv = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => { if (body.length < 65536) body += d; });
    req.on('end', () => {
      const u = new URL(req.url ?? '/', 'http://x');
      const reply = (status: number, text: string, type = 'application/json') => {
        res.writeHead(status, { 'content-type': type });
        res.end(text);
      };
      if (u.pathname === '/_control/rotate') {
        makeKey(dir, current.generation + 1).then((k) => { current = k; reply(200, k.bundle, 'text/plain'); }, (e: Error) => reply(500, e.message, 'text/plain'));
        return;
      }
      if (u.pathname === '/_control/issue') {
        sign(u.searchParams.get('user') ?? '', `repository:${u.searchParams.get('repo') ?? ''}:pull`).then((t) => reply(200, t, 'text/plain'), (e: Error) => reply(500, e.message, 'text/plain'));
        return;
      }
      const q = req.method === 'POST' ? new URLSearchParams(body) : u.searchParams;
      const entry: TokenRequest = { method: req.method ?? '', status: 0, service: q.get('service') ?? '', scope: q.get('scope') ?? '', clientId: q.get('client_id') ?? '' };
      const answer = (status: number, obj: unknown) => {
        entry.status = status;
        fs.appendFileSync(log, JSON.stringify(entry) + '\n');
        reply(status, JSON.stringify(obj));
      };
      if (u.pathname !== '/token') return answer(404, { error: 'not found' });
      const m = /^Basic (\S+)$/.exec(req.headers.authorization ?? '');
      const cred = m ? Buffer.from(m[1], 'base64').toString('utf8') : '';
      const colon = cred.indexOf(':');
      if (colon >= 0) entry.user = cred.slice(0, colon);
      if (entry.user === undefined || !Object.hasOwn(users, entry.user) || users[entry.user] !== cred.slice(colon + 1)) {
        return answer(401, { errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] });
      }
      if (entry.service !== SERVICE) return answer(400, { errors: [{ code: 'DENIED', message: 'unknown service' }] });
      const gen = current.generation;
      sign(entry.user, entry.scope).then((token) => {
        entry.key = gen;
        answer(200, { token, access_token: token, expires_in: ttl, issued_at: new Date().toISOString() });
      }, (err: Error) => answer(500, { error: err.message }));
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  process.on('SIGTERM', () => srv.close(() => process.exit(0)));
  process.stdout.write(JSON.stringify({ port: (srv.address() as AddressInfo).port, bundle: current.bundle }) + '\n');
}

if (require.main === module) {
  serve(process.argv[2]).catch((err: Error) => {
    process.stderr.write(`${err.stack ?? err.message}\n`);
    process.exit(1);
  });
}
