/**
 * nydusd HTTP API on a unix socket (rafs-spec §8, kata-contract §2): exact
 * path routes, URL-decoded query strings, JSON bodies (≤ 1 MiB), upstream
 * status codes and `{"code":"UNDEFINED","message":"<Debug text>"}` errors.
 * Every response carries `Server: Nydus API` and `Content-Type: application/json`.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import { LOG_LEVELS, log, setLogLevel, type LogLevel } from '../common/log';
import { inflightOps } from '../service/metrics';
import { exportEvents, recordErrorEvent } from '../common/events';
import { UnexpectedEvent } from '../service/state';
import { ApiError, badRequest, dbg, noRoute, other, parseBody, queryString } from './errors';
import { BlobcacheMetrics } from '../storage/cache/metrics';
import { AlreadyExists, DaemonService, NotFound, fsBackendType, type MountCmd, type MountedInstance } from '../service/service';

export const MAX_BODY = 1 << 20;

type Reply = { status: 200; body: unknown } | { status: 204 };
interface Req {
  method: string;
  query: URLSearchParams;
  body: Buffer | undefined;
}
type Handler = (svc: DaemonService, r: Req) => Promise<Reply> | Reply;

const ok = (body: unknown): Reply => ({ status: 200, body });
const noContent: Reply = { status: 204 };

function jsonBody(r: Req): unknown {
  if (!r.body || r.body.length === 0) throw badRequest();
  try {
    return JSON.parse(r.body.toString('utf8'));
  } catch (e) {
    throw parseBody((e as Error).message);
  }
}

function requireMountpoint(r: Req): string {
  const mp = r.query.get('mountpoint');
  if (mp === null) throw queryString("'mountpoint' should be specified in query string");
  return mp;
}

function parseMountCmd(v: unknown): MountCmd {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw parseBody('invalid type: expected struct ApiMountCmd');
  const o = v as Record<string, unknown>;
  if (typeof o.source !== 'string') throw parseBody(o.source === undefined ? 'missing field `source`' : 'invalid type for `source`, expected a string');
  if (typeof o.config !== 'string') throw parseBody(o.config === undefined ? 'missing field `config`' : 'invalid type for `config`, expected a string');
  if (o.fs_type !== undefined && typeof o.fs_type !== 'string') throw parseBody('invalid type for `fs_type`, expected a string');
  let prefetch: string[] | undefined;
  if (o.prefetch_files !== undefined && o.prefetch_files !== null) {
    if (!Array.isArray(o.prefetch_files) || o.prefetch_files.some((x) => typeof x !== 'string')) throw parseBody('invalid type for `prefetch_files`, expected a sequence of strings');
    prefetch = o.prefetch_files as string[];
  }
  return { source: o.source, config: o.config, fs_type: (o.fs_type as string | undefined) ?? '', prefetch_files: prefetch };
}

const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

function mountError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof AlreadyExists) return other('Mount(MountFilesystem({}))', e.message);
  if (e instanceof NotFound) return other('Mount(MountFilesystem({}))', e.message);
  return other('Mount(MountFilesystem({}))', errText(e));
}

function setLevel(r: Req): Reply {
  const v = jsonBody(r);
  if (typeof v !== 'object' || v === null || typeof (v as { log_level?: unknown }).log_level !== 'string') throw parseBody('missing field `log_level`');
  const level = (v as { log_level: string }).log_level.toLowerCase();
  if (!LOG_LEVELS.includes(level as LogLevel)) throw new ApiError(500, 'Configure(ResponsePayloadType)');
  setLogLevel(level as LogLevel);
  log.info({ log_level: level }, 'log level changed');
  return noContent;
}

/** Pick the instance named by ?id= (metrics), or the only one. */
function pick(svc: DaemonService, r: Req, wrap: string): MountedInstance {
  const id = r.query.get('id');
  if (id !== null) {
    const i = svc.instances.get(id);
    if (!i) throw new ApiError(404, `${wrap}(Metrics(Stats(NoCounter)))`);
    return i;
  }
  if (svc.instances.size === 1) return [...svc.instances.values()][0];
  throw new ApiError(404, `${wrap}(Metrics(Stats(NoCounter)))`);
}

function superMeta(inst: MountedInstance): Record<string, unknown> {
  const raw = (inst.fs as unknown as { sb: { meta: { raw: Record<string, number | string> } } }).sb.meta.raw;
  const num = (k: string): number => (typeof raw[k] === 'number' ? (raw[k] as number) : 0);
  return {
    magic: num('magic'), version: num('version'), sb_size: num('sb_size'), root_inode: num('root_inode'),
    chunk_size: num('chunk_size'), batch_size: num('batch_size'), inodes_count: num('inodes_count'),
    flags: { bits: num('flags') },
    inode_table_entries: num('inode_table_entries'), inode_table_offset: num('inode_table_offset'),
    blob_table_size: num('blob_table_size'), blob_table_offset: num('blob_table_offset'),
    extended_blob_table_offset: num('extended_blob_table_offset'), extended_blob_table_entries: num('extended_blob_table_entries'),
    blob_device_table_count: num('blob_device_table_count'), blob_device_table_offset: num('blob_device_table_offset'),
    prefetch_table_offset: num('prefetch_table_offset'), prefetch_table_entries: num('prefetch_table_entries'),
    attr_timeout: { secs: 4294967296, nanos: 0 }, entry_timeout: { secs: 4294967296, nanos: 0 },
    is_chunk_dict: false, meta_blkaddr: num('meta_blkaddr'), root_nid: num('root_nid'),
    chunk_table_offset: num('chunk_table_offset'), chunk_table_size: num('chunk_table_size'),
  };
}

/** Exact counters of the instance's blob cache (no directory scan: never blocks the loop). */
function blobcacheMetrics(inst: MountedInstance): Record<string, unknown> {
  if (inst.blobcache) return inst.blobcache.toJSON();
  return new BlobcacheMetrics(inst.workDir ?? '').toJSON();
}

function stateEvent(svc: DaemonService, ev: 'Start', wrap: string): void {
  try {
    svc.state.fire(ev);
  } catch (e) {
    if (e instanceof UnexpectedEvent) throw new ApiError(400, `${wrap}(DaemonAbnormal(UnexpectedEvent(${dbg(e.message)})))`);
    throw e;
  }
}

/** Keys PUT /api/v1/config accepts (upstream); only `registry_auth` acts today. */
const CONFIG_KEYS = new Set(['registry_auth', 'proxy_url', 'dragonfly_scheduler_endpoint']);

const unsupported = (wrap: string): Handler => () => { throw new ApiError(501, `${wrap}(DaemonAbnormal(Unsupported))`); };

const ROUTES: Record<string, Record<string, Handler>> = {
  '/api/v1/daemon': {
    GET: (svc) => ok(svc.daemonInfo(true)),
    PUT: (_svc, r) => setLevel(r),
  },
  '/api/v2/daemon': {
    GET: (svc) => ok(svc.daemonInfo(false)),
    PUT: (_svc, r) => setLevel(r),
  },
  '/api/v1/daemon/events': { GET: () => ok(exportEvents()) },
  '/api/v1/daemon/backend': {
    GET: (svc, r) => {
      const mp = requireMountpoint(r);
      const inst = svc.instances.get(mp);
      if (!inst) throw other('FsBackendInfo(Metrics(Daemon({})))', `NotFound: no filesystem mounted at ${mp}`);
      if (inst.backendType !== 'Rafs') throw other('FsBackendInfo(Metrics(Daemon({})))', `FsTypeMismatch("to rafs"): ${mp} is ${inst.backendType}`);
      return ok(superMeta(inst));
    },
  },
  '/api/v1/daemon/start': { PUT: (svc) => { stateEvent(svc, 'Start', 'Configure'); return noContent; } },
  '/api/v1/daemon/exit': {
    PUT: (svc) => {
      setImmediate(() => (svc.opts.onExit ?? (() => process.kill(process.pid, 'SIGTERM')))());
      return noContent;
    },
  },
  '/api/v1/daemon/fuse/sendfd': { PUT: unsupported('Upgrade') },
  '/api/v1/daemon/fuse/takeover': { PUT: unsupported('Upgrade') },
  '/api/v1/mount': {
    POST: async (svc, r) => {
      const mp = requireMountpoint(r);
      const cmd = parseMountCmd(jsonBody(r));
      try { fsBackendType(cmd.fs_type); } catch { throw other('Mount(MountFilesystem({}))', `InvalidArguments: fs type ${JSON.stringify(cmd.fs_type)} is not supported`); }
      await svc.mount(mp, cmd).catch((e: unknown) => { throw mountError(e); });
      return noContent;
    },
    PUT: async (svc, r) => {
      const mp = requireMountpoint(r);
      const cmd = parseMountCmd(jsonBody(r));
      try { fsBackendType(cmd.fs_type); } catch { throw other('Mount(MountFilesystem({}))', `InvalidArguments: fs type ${JSON.stringify(cmd.fs_type)} is not supported`); }
      await svc.remount(mp, cmd).catch((e: unknown) => { throw mountError(e); });
      return noContent;
    },
    DELETE: async (svc, r) => {
      const mp = requireMountpoint(r);
      const was = await svc.umount(mp).catch((e: unknown) => { throw mountError(e); });
      if (!was) log.info({ mountpoint: mp }, 'umount of a mountpoint that is not mounted: ignored');
      return noContent;
    },
  },
  '/api/v1/config': {
    // values set through PUT, keyed `<id>:<key>` without ?id= (upstream's shape)
    GET: (svc, r) => {
      const id = r.query.get('id');
      const out: Record<string, string> = {};
      for (const [k, v] of svc.runtimeConfig) {
        if (id === null) out[k] = v;
        else if (k.startsWith(`${id}:`)) out[k.slice(id.length + 1)] = v;
      }
      return ok(out);
    },
    PUT: (svc, r) => {
      const body = jsonBody(r);
      if (typeof body !== 'object' || body === null || Array.isArray(body)) throw parseBody('invalid type: expected a map of strings');
      const values: Record<string, string> = {};
      for (const [k, v] of Object.entries(body as Record<string, unknown>)) {
        if (!CONFIG_KEYS.has(k)) throw other('Configure({})', `unknown config key ${JSON.stringify(k)}`);
        if (typeof v !== 'string') throw parseBody(`invalid type for \`${k}\`, expected a string`);
        values[k] = v;
      }
      try {
        svc.updateConfig(r.query.get('id') ?? '', values);
      } catch (e) {
        throw other('Configure({})', (e as Error).message);
      }
      return noContent;
    },
  },
  '/api/v1/metrics': { GET: (svc, r) => ok(pick(svc, r, 'GlobalMetrics').stats.toJSON()) },
  '/api/v1/metrics/files': {
    GET: (svc, r) => {
      const inst = pick(svc, r, 'FsFilesMetrics');
      if (r.query.get('latest') === 'true') {
        if (!inst.stats.record_latest_read_files_enabled) throw other('FsFilesMetrics(Metrics(Daemon({})))', 'latest_read_files is not enabled');
        return ok(inst.stats.exportLatestReadFiles());
      }
      if (!inst.stats.files_account_enabled) throw other('FsFilesMetrics(Metrics(Daemon({})))', 'iostats_files is not enabled');
      return ok(inst.stats.exportFiles());
    },
  },
  '/api/v1/metrics/pattern': {
    GET: (svc, r) => {
      const inst = pick(svc, r, 'Pattern');
      if (!inst.stats.access_pattern_enabled) throw other('Pattern(Metrics(Daemon({})))', 'access_pattern is not enabled');
      return ok(inst.stats.exportPatterns());
    },
  },
  '/api/v1/metrics/backend': {
    GET: (svc, r) => {
      const inst = pick(svc, r, 'BackendMetrics');
      if (!inst.backend) throw new ApiError(404, 'BackendMetrics(Metrics(Stats(NoCounter)))');
      return ok(inst.backend.toJSON());
    },
  },
  '/api/v1/metrics/blobcache': { GET: (svc, r) => ok(blobcacheMetrics(pick(svc, r, 'BlobcacheMetrics'))) },
  '/api/v1/metrics/inflight': {
    GET: () => {
      const ops = inflightOps();
      return ops.length ? ok(ops) : noContent;
    },
  },
  '/api/v2/blobs': { GET: unsupported('GetBlobObjects'), PUT: unsupported('CreateBlobObject'), DELETE: unsupported('DeleteBlobObject') },
};

function send(res: http.ServerResponse, status: number, body?: unknown, close = false): void {
  const headers: Record<string, string | number> = { Server: 'Nydus API', 'Content-Type': 'application/json' };
  if (close) headers.Connection = 'close';
  if (status === 204 || body === undefined) {
    res.writeHead(status, headers);
    res.end();
    return;
  }
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  headers['Content-Length'] = Buffer.byteLength(text);
  res.writeHead(status, headers);
  res.end(text);
}

function sendError(res: http.ServerResponse, e: ApiError, close = false): void {
  if (e.status >= 500) recordErrorEvent(e.message);
  send(res, e.status, { code: 'UNDEFINED', message: e.message }, close);
}

export async function handle(svc: DaemonService, method: string, url: string, body: Buffer | undefined): Promise<{ status: number; body?: unknown }> {
  let u: URL;
  try {
    u = new URL(url, 'http://unix');
  } catch {
    throw badRequest();
  }
  const route = ROUTES[u.pathname];
  if (!route) throw noRoute();
  const h = route[method];
  if (!h) throw badRequest();
  const r = await h(svc, { method, query: u.searchParams, body });
  return r.status === 200 ? { status: 200, body: r.body } : { status: 204 };
}

export interface ApiServer {
  server: http.Server;
  path: string;
  close(): Promise<void>;
}

/** Start the API on `socketPath` (a stale socket file is removed first). */
export async function startApiServer(svc: DaemonService, socketPath: string): Promise<ApiServer> {
  try {
    const st = fs.lstatSync(socketPath);
    if (st.isSocket() || st.isFile()) fs.unlinkSync(socketPath);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooBig = false;
    req.on('data', (c: Buffer) => {
      if (tooBig) return;
      size += c.length;
      if (size > MAX_BODY) {
        tooBig = true;
        sendError(res, parseBody(`request body larger than ${MAX_BODY} bytes`), true);
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('error', () => undefined);
    req.on('end', () => {
      if (tooBig) return;
      const body = chunks.length ? Buffer.concat(chunks) : undefined;
      handle(svc, req.method ?? 'GET', req.url ?? '/', body).then(
        (r) => send(res, r.status, r.body),
        (e: unknown) => {
          const ae = e instanceof ApiError ? e : new ApiError(500, `DaemonInfo(DaemonAbnormal(Other(${dbg(errText(e))})))`);
          if (!(e instanceof ApiError)) log.error({ err: errText(e), url: req.url }, 'api handler failed');
          log.debug({ method: req.method, url: req.url, status: ae.status, message: ae.message }, 'api error');
          sendError(res, ae);
        },
      );
    });
  });
  server.headersTimeout = 30_000;
  server.requestTimeout = 60_000;
  server.on('clientError', (_e, sock) => {
    if (sock.writable) sock.end('HTTP/1.1 400 Bad Request\r\nServer: Nydus API\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 45\r\n\r\n{"code":"UNDEFINED","message":"BadRequest"}  ');
    else sock.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => { server.off('error', reject); resolve(); });
  });
  log.info({ apisock: socketPath }, 'api server listening');
  return {
    server,
    path: socketPath,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
      try { fs.unlinkSync(socketPath); } catch { /* gone */ }
    }),
  };
}
