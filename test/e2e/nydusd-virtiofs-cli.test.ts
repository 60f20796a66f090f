/**
 * `nydusd virtiofs` starts with both argv forms Kata uses (Go runtime without
 * --hybrid-mode, runtime-rs with it) and with virtiofsd-style extras (ignored
 * with a warning): the vhost-user socket is listening, SIGTERM exits 0.
 * Bad arguments fail fast with a clear message.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from '../support/cli';
import { startDaemonProcess, unixSocketListening } from '../support/qemu';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nydusd-virtiofs-cli-'));
const bin = path.join(ROOT, 'bin/nydusd');
test.after(() => fs.rmSync(work, { recursive: true, force: true }));

const forms: Array<[string, (sock: string, api: string) => string[]]> = [
  ['Go runtime', (sock, api) => ['virtiofs', '--log-level', 'info', '--apisock', api, '--sock', sock]],
  ['runtime-rs', (sock, api) => ['virtiofs', '--hybrid-mode', '--log-level', 'debug', '--apisock', api, '--sock', sock]],
  ['virtiofsd-style extras', (sock, api) => ['virtiofs', '--sock', sock, '--apisock', api, '-o', 'cache=none', '--thread-pool-size=1', '--seccomp=none']],
];

for (const [name, args] of forms) {
  test(`argv form: ${name}`, async () => {
    const sock = path.join(work, `${name.replace(/\W/g, '')}.sock`);
    const d = await startDaemonProcess(bin, args(sock, path.join(work, 'api.sock')), sock, 20_000);
    assert.ok(unixSocketListening(sock));
    await d.stop();
    if (name.includes('extras')) assert.match(d.log(), /ignoring unsupported virtiofsd-style arguments/);
  });
}

test('bad arguments fail fast', () => {
  const r = spawnSync(bin, ['virtiofs'], { encoding: 'utf8', timeout: 20_000 });
  assert.is(r.status, 1);
  assert.match(r.stderr, /error: --sock is required/);
  const r2 = spawnSync(bin, ['virtiofs', '--sock', path.join(work, 'x.sock'), '--bootstrap', '/nonexistent', '--localfs-dir', work], { encoding: 'utf8', timeout: 20_000 });
  assert.is(r2.status, 1);
  assert.match(r2.stderr, /error: .*nonexistent/);
});

test.run();
