/**
 * Stand-in nydusd executables for snapshotter tests: a node script that
 * serves an HTTP handler on `--apisock` and exits on SIGTERM. `body` is the
 * script text that defines `srv` (an http.Server); it sees `fs`, `http`,
 * `path`, the argv `a`, the socket path `sock` and the test's `dir`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export function writeFakeNydusd(dir: string, body: string): string {
  const p = path.join(dir, 'fake-nydusd');
  fs.writeFileSync(p, `#!/usr/bin/env node
const fs = require('fs'), http = require('http'), path = require('path');
const a = process.argv.slice(2);
const sock = a[a.indexOf('--apisock') + 1];
const dir = ${JSON.stringify(dir)};
${body}
srv.listen(sock);
process.on('SIGTERM', () => { srv.close(); process.exit(0); });
`);
  fs.chmodSync(p, 0o755);
  return p;
}
