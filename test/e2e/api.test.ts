/**
 * `nydusd virtiofs --sock S --apisock A` (Kata Go argv): RUNNING only once the
 * vhost-user socket listens; passthrough_fs at /containers, RAFS at
 * /rafs/c1/lowerdir (percent-encoded) and /rafs/c2/lowerdir (raw); DELETE;
 * PUT /api/v1/daemon/exit → exit code 0.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { ROOT, nydusImage, tmpdir } from '../support/cli';
import { unixSocketListening } from '../support/qemu';

const work = tmpdir('api-e2e');
test.after(() => fs.rmSync(work, { recursive: true, force: true }));

function request(sock: string, method: string, p: string, body?: string): Promise<{ status: number; text: string; json?: any; server?: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: sock, path: p, method, headers: body !== undefined ? { 'Content-Type': 'application/json' } : {} }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c.toString(); });
      res.on('end', () => {
        let json: unknown;
        try { json = text ? JSON.parse(text) : undefined; } catch { /* */ }
        resolve({ status: res.statusCode ?? 0, text, json, server: res.headers.server as string | undefined });
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

test('kata flow over the API', async () => {
  const src = path.join(work, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'file'), 'hello');
  const blobs = path.join(work, 'blobs');
  fs.mkdirSync(blobs);
  const boot = path.join(work, 'image.boot');
  nydusImage(['create', '--fs-version', '6', '--bootstrap', boot, '--blob-dir', blobs, src]);
  const shared = path.join(work, 'shared');
  fs.mkdirSync(shared);
  const sock = path.join(work, 'vhost.sock');
  const api = path.join(work, 'api.sock');
  const proc = spawn(path.join(ROOT, 'bin/nydusd'), ['virtiofs', '--log-level', 'info', '--apisock', api, '--sock', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (c: Buffer) => { out += c.toString(); });
  proc.stderr.on('data', (c: Buffer) => { out += c.toString(); });
  const exited = new Promise<number | null>((res) => proc.on('exit', (code) => res(code)));
  try {
    const t0 = Date.now();
    for (;;) {
      if (Date.now() - t0 > 20_000) throw new Error(`not RUNNING: ${out}`);
      if (fs.existsSync(api)) {
        const r = await request(api, 'GET', '/api/v1/daemon').catch(() => undefined);
        if (r?.json?.state === 'RUNNING') {
          assert.is(r.status, 200);
          assert.ok(unixSocketListening(sock), 'vhost-user socket listening by RUNNING');
          assert.is(r.server, 'Nydus API');
          for (const k of ['package_ver', 'git_commit', 'build_time', 'profile', 'rustc']) assert.type(r.json.version[k], 'string');
          break;
        }
      }
      await new Promise((res) => setTimeout(res, 50));
    }
    let r = await request(api, 'POST', '/api/v1/mount?mountpoint=/containers', JSON.stringify({ fs_type: 'passthrough_fs', source: shared, config: '' }));
    assert.is(r.status, 204, r.text);
    assert.is(r.text, '');
    const config = JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: blobs } } });
    const cmd = JSON.stringify({ fs_type: 'rafs', source: boot, config });
    r = await request(api, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent('/rafs/c1/lowerdir')}`, cmd);
    assert.is(r.status, 204, r.text);
    r = await request(api, 'POST', '/api/v1/mount?mountpoint=/rafs/c2/lowerdir', cmd);
    assert.is(r.status, 204, r.text);
    r = await request(api, 'POST', '/api/v1/mount?mountpoint=/rafs/c2/lowerdir', cmd);
    assert.is(r.status, 500);
    assert.type(r.json.code, 'string');
    assert.type(r.json.message, 'string');
    r = await request(api, 'GET', '/api/v1/daemon');
    assert.equal(Object.keys(r.json.backend_collection).sort(), ['/containers', '/rafs/c1/lowerdir', '/rafs/c2/lowerdir']);
    assert.is(r.json.backend_collection['/rafs/c2/lowerdir'].backend_type, 'Rafs');
    r = await request(api, 'DELETE', '/api/v1/mount?mountpoint=/rafs/c1/lowerdir');
    assert.is(r.status, 204);
    r = await request(api, 'GET', '/api/v1/daemon');
    assert.equal(Object.keys(r.json.backend_collection).sort(), ['/containers', '/rafs/c2/lowerdir']);
    r = await request(api, 'PUT', '/api/v1/daemon/exit');
    assert.is(r.status, 204);
    const code = await Promise.race([exited, new Promise<string>((res) => setTimeout(() => res('timeout'), 10_000))]);
    assert.is(code, 0, out);
    assert.not.ok(fs.existsSync(api), 'api socket removed');
  } finally {
    if (proc.exitCode === null) proc.kill('SIGKILL');
  }
});

test.run();
