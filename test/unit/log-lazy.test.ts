/**
 * The shared logger (src/common/log.ts) loads pino with its first line, not
 * before (a daemon at --log-level warn may never write one); levels, the
 * run-time level change and --log-file behave as with pino itself.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const mod = path.join(__dirname, '../../src/common/log.ts');

/** Run `body` in a fresh node with `L` = the log module; its stdout and stderr. */
function run(body: string): { out: string; err: string } {
  const script = `const L = require(${JSON.stringify(mod)}); const pinoLoaded = () => Object.keys(require.cache).some((k) => k.includes('/node_modules/pino/'));\n${body}`;
  const file = path.join(os.tmpdir(), `log-lazy-${process.pid}.err`);
  try {
    const out = execFileSync(process.execPath, ['-r', 'tsx/cjs', '-e', script], { encoding: 'utf8', stdio: ['ignore', 'pipe', fs.openSync(file, 'w')], env: { ...process.env, NYDUS_LOG_LEVEL: '' } });
    return { out, err: fs.readFileSync(file, 'utf8') };
  } finally {
    fs.rmSync(file, { force: true });
  }
}

test('pino is loaded by the first line written, not by disabled calls', () => {
  const { out, err } = run(`
    L.setupLog('warn');
    L.log.info({ a: 1 }, 'not written'); L.log.debug('nor this');
    process.stdout.write(String(pinoLoaded()) + ' ' + L.log.isLevelEnabled('info') + ' ' + L.log.isLevelEnabled('error') + '\\n');
    L.log.warn({ b: 2 }, 'written %s', 'x');
    process.stdout.write(String(pinoLoaded()));
  `);
  assert.is(out, 'false false true\ntrue');
  const lines = err.trim().split('\n').map((l) => JSON.parse(l));
  assert.is(lines.length, 1);
  assert.is(lines[0].level, 40);
  assert.is(lines[0].b, 2);
  assert.is(lines[0].msg, 'written x');
});

test('the level changes at run time before and after pino is loaded; silent writes nothing', () => {
  const { out, err } = run(`
    L.setupLog('error');
    L.setLogLevel('debug');
    L.log.debug('one');
    L.log.level = 'warn';
    L.log.info('not written');
    L.log.level = 'silent';
    L.log.error('not written either');
    process.stdout.write(L.log.level);
    try { L.setLogLevel('loud'); } catch (e) { process.stdout.write(' refused'); }
  `);
  assert.is(out, 'silent refused');
  assert.equal(err.trim().split('\n').map((l) => JSON.parse(l).msg), ['one']);
});

test('--log-file is opened (appended to) at once, its lines written there', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'log-lazy-'));
  try {
    const f = path.join(dir, 'nydusd.log');
    fs.writeFileSync(f, 'before\n');
    const { err } = run(`
      L.setupLog('info', ${JSON.stringify(f)});
      process.stdout.write(require('node:fs').existsSync(${JSON.stringify(f)}) ? '' : 'missing');
      L.log.info({ k: 'v' }, 'to the file');
    `);
    assert.is(err, '');
    const lines = fs.readFileSync(f, 'utf8').trim().split('\n');
    assert.is(lines[0], 'before');
    assert.is(JSON.parse(lines[1]).msg, 'to the file');
    // a name without a dot gets .log, as before
    run(`L.setupLog('info', ${JSON.stringify(path.join(dir, 'plain'))});`);
    assert.ok(fs.existsSync(path.join(dir, 'plain.log')), 'created at setup, before any line');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
