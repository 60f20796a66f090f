/**
 * Debian's nginx as a caching forward proxy on loopback, standing in for a
 * Dragonfly dfdaemon peer in e2e tests: it accepts absolute-form request
 * lines (`GET http://registry/v2/… HTTP/1.1`), forwards them to the host they
 * name (`proxy_pass http://$http_host$request_uri`) and caches the replies in
 * 1 MiB slices (slice module: the cache key holds `$slice_range`, so any
 * Range inside a cached slice is a HIT). `/_ping` answers 200 (the `ping_url`).
 * Runs as a child process with its own prefix, config, pid, temp and cache
 * dirs under a temp dir (`-g 'daemon off;'`); the access log names the cache
 * status, the request line, the Range and the Dragonfly headers of each
 * request.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { tmpdir } from './cli';
import { sleep } from './timing';
import { freePort } from './registry';

export const NGINX_BIN = '/usr/sbin/nginx';

/** Why nginx cannot run here, or undefined. */
export function nginxMissing(): string | undefined {
  if (!fs.existsSync(NGINX_BIN)) return 'nginx not installed (scripts/setup.sh installs it)';
  return undefined;
}

export interface NginxLine {
  /** $upstream_cache_status: HIT, MISS, … or '-' (not cached, e.g. /_ping) */
  cache: string;
  /** request line as sent (absolute form for proxied requests) */
  request: string;
  status: number;
  range: string;
  priority: string;
  p2p: string;
}

export interface CachingProxy {
  port: number;
  /** `http://127.0.0.1:<port>` (the `proxy.url`) */
  url: string;
  /** the `ping_url` */
  pingUrl: string;
  /** parsed access log */
  lines(): NginxLine[];
  /** error log text (diagnostics) */
  errors(): string;
  stop(): Promise<void>;
  /** stop and remove its files */
  destroy(): Promise<void>;
}

function ping(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const r = http.get(url, (res) => { res.resume(); resolve(res.statusCode ?? 0); });
    r.on('error', reject);
    r.setTimeout(2000, () => r.destroy(new Error('ping timed out')));
  });
}

const FIELD = '\t';

export async function startCachingProxy(): Promise<CachingProxy> {
  const dir = tmpdir('nginx');
  const port = await freePort();
  for (const d of ['logs', 'cache', 'client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) fs.mkdirSync(path.join(dir, d));
  const access = path.join(dir, 'logs/access.log');
  const errors = path.join(dir, 'logs/error.log');
  const conf = path.join(dir, 'nginx.conf');
  fs.writeFileSync(conf, [
    // as root, workers would drop to nobody and could not write the private temp dirs
    process.getuid?.() === 0 ? 'user root;' : '',
    'worker_processes 1;',
    `pid ${dir}/nginx.pid;`,
    `error_log ${errors} info;`,
    'events { worker_connections 512; }',
    'http {',
    `  log_format nydus '$upstream_cache_status${FIELD}$request${FIELD}$status${FIELD}$http_range${FIELD}$http_x_dragonfly_priority${FIELD}$http_x_dragonfly_use_p2p';`,
    `  access_log ${access} nydus;`,
    `  client_body_temp_path ${dir}/client_body;`,
    `  proxy_temp_path ${dir}/proxy;`,
    `  fastcgi_temp_path ${dir}/fastcgi;`,
    `  uwsgi_temp_path ${dir}/uwsgi;`,
    `  scgi_temp_path ${dir}/scgi;`,
    `  proxy_cache_path ${dir}/cache levels=1:2 keys_zone=blobs:8m max_size=1g inactive=1h use_temp_path=off;`,
    '  server {',
    `    listen 127.0.0.1:${port};`,
    '    location = /_ping { return 200 "ok\\n"; }',
    '    location / {',
    '      slice 1m;',
    '      proxy_cache blobs;',
    '      proxy_cache_key $scheme$http_host$uri$is_args$args$slice_range;',
    '      proxy_cache_valid 200 206 1h;',
    '      proxy_set_header Range $slice_range;',
    '      proxy_set_header Host $http_host;',
    '      proxy_http_version 1.1;',
    '      proxy_set_header Connection "";',
    '      proxy_pass http://$http_host$request_uri;',
    '    }',
    '  }',
    '}',
  ].join('\n'));
  const logFd = fs.openSync(path.join(dir, 'logs/stderr.log'), 'a');
  const proc: ChildProcess = spawn(NGINX_BIN, ['-p', dir, '-c', conf, '-e', errors, '-g', 'daemon off;'], { stdio: ['ignore', logFd, logFd] });
  fs.closeSync(logFd);
  let exited = false;
  const exit = new Promise<void>((r) => proc.on('exit', () => { exited = true; r(); }));
  const read = (f: string): string => { try { return fs.readFileSync(f, 'utf8'); } catch { return ''; } };
  const url = `http://127.0.0.1:${port}`;
  const t0 = Date.now();
  for (;;) {
    if (exited) throw new Error(`nginx exited: ${read(path.join(dir, 'logs/stderr.log'))}${read(errors)}`);
    try {
      if (await ping(`${url}/_ping`) === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() - t0 > 15_000) { proc.kill('SIGKILL'); throw new Error(`nginx did not start: ${read(errors)}`); }
    await sleep(50);
  }
  let saved: { access: string; errors: string } | undefined;
  const stop = async () => {
    if (!exited) proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await exit;
    clearTimeout(t);
  };
  return {
    port,
    url,
    pingUrl: `${url}/_ping`,
    lines() {
      return (saved?.access ?? read(access)).split('\n').filter(Boolean).map((l) => {
        const [cache, request, status, range, priority, p2p] = l.split(FIELD);
        return { cache, request, status: Number(status), range, priority, p2p };
      });
    },
    errors: () => saved?.errors ?? read(errors),
    stop,
    async destroy() {
      await stop();
      saved = { access: read(access), errors: read(errors) };
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
