/**
 * A small S3 endpoint on loopback for tests (node:http), because no S3 server
 * packaged for Debian or npm really verifies SigV4 (s3rver skips it; radosgw
 * needs a Ceph cluster):
 *  - objects are files `<root>/<bucket>/<key>` (path-style URLs), served by GET
 *    (a `Range: bytes=a-b` / `bytes=a-` gives 206 with Content-Range, no Range
 *    200, past the end 416) and HEAD (Content-Length);
 *  - every request's SigV4 Authorization header is checked independently of
 *    the client: the `aws4` package recomputes the signature from the method,
 *    path and the headers the request names in SignedHeaders, with the known
 *    secret. A missing or garbled header → 403 AccessDenied, an unknown key →
 *    403 InvalidAccessKeyId, `host` / `x-amz-date` / `x-amz-content-sha256`
 *    not signed → 403 AccessDenied, a payload hash other than the empty
 *    body's → 400 XAmzContentSHA256Mismatch, `x-amz-date` more than 15 minutes
 *    from now → 403 RequestTimeTooSkewed, a wrong scope or signature → 403
 *    SignatureDoesNotMatch (S3's XML error bodies);
 *  - every request is logged (method, path, Host, Range, SignedHeaders,
 *    status, error code) to `log` and, when `logFile` is set, as JSON lines.
 * In process: `startS3Server()`. As a child process (so a test may block its
 * own event loop on a FUSE read the daemon can only answer by asking this
 * server): `spawnS3Server()`, which runs this file with tsx; the log is then
 * read from the file.
 * `fault` (in process only) makes a verified request misbehave, to test what
 * clients do with hostile replies.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import * as path from 'node:path';
import * as aws4 from 'aws4';

export const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
/** S3 refuses requests whose x-amz-date is further than this from its clock */
export const MAX_SKEW_MS = 15 * 60 * 1000;

export interface S3Credentials { accessKeyId: string; secretAccessKey: string }

export interface S3ServerOptions {
  /** objects live in `<root>/<bucket>/<key>` */
  root: string;
  credentials: S3Credentials;
  region: string;
  /** JSON-lines request log */
  logFile?: string;
  /** the server's clock (tests) */
  now?: () => number;
  /** misbehave on a request that passed verification (in process only) */
  fault?: (e: S3LogEntry) => S3Fault | undefined;
  /** sees every request as received (in process only) */
  onRequest?: (req: http.IncomingMessage) => void;
}

/** What a misbehaving server does instead of the right reply. */
export type S3Fault =
  | 'ignore-range' // 200 with the whole object
  | 'shift-range' // 206 with the bytes (and Content-Range) one further on
  | 'short' // 206 naming the asked range, with one byte less
  | 'long' // 206 whose body has one byte more than asked (no Content-Length)
  | 'stall' // headers, then nothing
  | 'error500'
  | 'redirect';

export interface S3LogEntry {
  method: string;
  /** request target as received */
  path: string;
  host?: string;
  range?: string;
  signedHeaders?: string;
  status: number;
  /** S3 error code of a refused request */
  code?: string;
  fault?: S3Fault;
}

export interface S3Server {
  port: number;
  /** `127.0.0.1:<port>` (an S3 `endpoint`) */
  endpoint: string;
  log: S3LogEntry[];
  /** store an object */
  put(bucket: string, key: string, data: Buffer): void;
  close(): Promise<void>;
}

export interface Verdict { ok: boolean; status: number; code?: string; message?: string; signedHeaders?: string }

const AUTH_RE = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request,\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})$/;
const REQUIRED_SIGNED = ['host', 'x-amz-content-sha256', 'x-amz-date'];

function amzDateMs(v: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(v);
  if (!m) return undefined;
  return Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]);
}

const one = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v.join(',') : v);

/**
 * Check one request's SigV4 Authorization header, as S3 does, recomputing
 * the signature with `aws4` from what was received (no body: GET/HEAD).
 */
export function verifySigV4(
  req: { method: string; url: string; headers: http.IncomingHttpHeaders },
  creds: S3Credentials,
  region: string,
  nowMs = Date.now(),
): Verdict {
  const deny = (status: number, code: string, message: string, signedHeaders?: string): Verdict => ({ ok: false, status, code, message, signedHeaders });
  const auth = one(req.headers.authorization);
  if (!auth) return deny(403, 'AccessDenied', 'Anonymous access is forbidden for this operation');
  const m = AUTH_RE.exec(auth.trim());
  if (!m) return deny(403, 'AccessDenied', 'The authorization header is malformed');
  const [, keyId, scopeDate, scopeRegion, scopeService, signedList, signature] = m;
  if (keyId !== creds.accessKeyId) return deny(403, 'InvalidAccessKeyId', 'The AWS Access Key Id you provided does not exist in our records.', signedList);
  const signed = signedList.split(';');
  const sorted = [...signed].sort();
  if (signed.some((h, i) => h !== sorted[i]) || new Set(signed).size !== signed.length) {
    return deny(403, 'SignatureDoesNotMatch', 'SignedHeaders is not sorted or repeats a name', signedList);
  }
  for (const h of REQUIRED_SIGNED) {
    if (!signed.includes(h)) return deny(403, 'AccessDenied', `header ${h} must be signed`, signedList);
  }
  const date = one(req.headers['x-amz-date']) ?? '';
  const t = amzDateMs(date);
  if (t === undefined) return deny(403, 'AccessDenied', 'x-amz-date is missing or malformed', signedList);
  if (Math.abs(t - nowMs) > MAX_SKEW_MS) {
    return deny(403, 'RequestTimeTooSkewed', 'The difference between the request time and the current time is too large.', signedList);
  }
  const payload = one(req.headers['x-amz-content-sha256']);
  if (payload !== EMPTY_SHA256 && payload !== 'UNSIGNED-PAYLOAD') {
    return deny(400, 'XAmzContentSHA256Mismatch', 'The provided x-amz-content-sha256 header does not match what was computed.', signedList);
  }
  if (scopeDate !== date.slice(0, 8) || scopeRegion !== region || scopeService !== 's3') {
    return deny(403, 'SignatureDoesNotMatch', `credential scope ${scopeDate}/${scopeRegion}/${scopeService} does not match`, signedList);
  }
  const headers: Record<string, string> = {};
  for (const h of signed) {
    const v = one(req.headers[h]);
    if (v === undefined) return deny(403, 'SignatureDoesNotMatch', `signed header ${h} is missing`, signedList);
    headers[h] = v;
  }
  // aws4 leaves `range` (and a few others) out by default: sign exactly the names the client listed
  const opts = {
    method: req.method,
    path: req.url,
    host: headers.host,
    headers,
    service: 's3',
    region,
    extraHeadersToInclude: Object.fromEntries(signed.map((h) => [h, true])),
  } as aws4.Request;
  const signer = new aws4.RequestSigner(opts, { accessKeyId: creds.accessKeyId, secretAccessKey: creds.secretAccessKey });
  // first, so the signing date is taken from x-amz-date (signature() alone would use the clock)
  signer.prepareRequest();
  if (signer.signedHeaders() !== signedList) return deny(403, 'SignatureDoesNotMatch', 'signed header list differs', signedList);
  const want = Buffer.from(signer.signature(), 'hex');
  const got = Buffer.from(signature, 'hex');
  if (want.length !== got.length || !crypto.timingSafeEqual(want, got)) {
    return deny(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided.', signedList);
  }
  return { ok: true, status: 200, signedHeaders: signedList };
}

function xmlError(res: http.ServerResponse, status: number, code: string, message: string, resource: string, head: boolean): void {
  const esc = (s: string) => s.replace(/[<>&]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;' })[c]!);
  const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${esc(message)}</Message><Resource>${esc(resource)}</Resource></Error>`;
  res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
  res.end(head ? undefined : body);
}

/** `<root>/<bucket>/<key>` of a path-style request target, or undefined when it escapes. */
function objectFile(root: string, target: string): string | undefined {
  const p = target.split('?')[0];
  let segs: string[];
  try {
    segs = p.split('/').slice(1).map((s) => decodeURIComponent(s));
  } catch {
    return undefined;
  }
  if (segs.length < 2 || segs.some((s) => s === '' || s === '.' || s === '..' || s.includes('\0'))) return undefined;
  return path.join(root, ...segs);
}

async function readRange(file: string, start: number, len: number): Promise<Buffer> {
  const fh = await fs.promises.open(file, 'r');
  try {
    const buf = Buffer.alloc(len);
    const { bytesRead } = await fh.read(buf, 0, len, start);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

export async function startS3Server(opts: S3ServerOptions): Promise<S3Server> {
  const log: S3LogEntry[] = [];
  const now = opts.now ?? Date.now;
  const record = (e: S3LogEntry) => {
    log.push(e);
    if (opts.logFile) fs.appendFileSync(opts.logFile, JSON.stringify(e) + '\n');
  };
  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const method = req.method ?? '';
    const target = req.url ?? '';
    const head = method === 'HEAD';
    opts.onRequest?.(req);
    const e: S3LogEntry = { method, path: target, host: req.headers.host, range: one(req.headers.range), status: 0 };
    const finish = (status: number, code?: string) => { e.status = status; if (code) e.code = code; record(e); };
    const v = verifySigV4({ method, url: target, headers: req.headers }, opts.credentials, opts.region, now());
    e.signedHeaders = v.signedHeaders;
    if (!v.ok) {
      xmlError(res, v.status, v.code!, v.message ?? '', target, head);
      finish(v.status, v.code);
      return;
    }
    if (method !== 'GET' && method !== 'HEAD') {
      xmlError(res, 405, 'MethodNotAllowed', 'The specified method is not allowed against this resource.', target, head);
      finish(405, 'MethodNotAllowed');
      return;
    }
    const file = objectFile(opts.root, target);
    let size = -1;
    try {
      if (file) {
        const st = await fs.promises.stat(file);
        if (st.isFile()) size = st.size;
      }
    } catch {
      // no such object
    }
    if (size < 0) {
      xmlError(res, 404, 'NoSuchKey', 'The specified key does not exist.', target, head);
      finish(404, 'NoSuchKey');
      return;
    }
    if (head) {
      res.writeHead(200, { 'content-length': size, 'accept-ranges': 'bytes' });
      res.end();
      finish(200);
      return;
    }
    const fault = opts.fault?.(e);
    if (fault) e.fault = fault;
    const rm = e.range ? /^bytes=(\d+)-(\d*)$/.exec(e.range) : null;
    if (e.range && !rm) {
      xmlError(res, 400, 'InvalidArgument', 'Invalid Range header', target, false);
      finish(400, 'InvalidArgument');
      return;
    }
    if (fault === 'error500') { xmlError(res, 500, 'InternalError', 'We encountered an internal error. Please try again.', target, false); finish(500, 'InternalError'); return; }
    if (fault === 'redirect') { res.writeHead(307, { location: `http://${req.headers.host}${target}` }); res.end(); finish(307); return; }
    if (fault === 'stall') { res.writeHead(206, { 'content-type': 'application/octet-stream' }); res.flushHeaders(); finish(206); return; }
    if (!rm || fault === 'ignore-range') {
      const body = await readRange(file!, 0, size);
      res.writeHead(200, { 'content-length': body.length, 'accept-ranges': 'bytes' });
      res.end(body);
      finish(200);
      return;
    }
    let start = Number(rm[1]);
    let end = rm[2] === '' ? size - 1 : Math.min(Number(rm[2]), size - 1);
    if (start >= size || end < start) {
      res.writeHead(416, { 'content-range': `bytes */${size}`, 'content-length': 0 });
      res.end();
      finish(416, 'InvalidRange');
      return;
    }
    if (fault === 'shift-range' && end + 1 < size) { start++; end++; }
    let body = await readRange(file!, start, end - start + 1);
    if (fault === 'short') body = body.subarray(0, body.length - 1);
    if (fault === 'long') {
      body = Buffer.concat([body, Buffer.from([0x55])]);
      res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${size}` }); // chunked: no Content-Length
    } else {
      res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${size}`, 'content-length': body.length, 'accept-ranges': 'bytes' });
    }
    res.end(body);
    finish(206);
  };
  const srv = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      if (!res.headersSent) xmlError(res, 500, 'InternalError', String(err), req.url ?? '', req.method === 'HEAD');
      else res.destroy();
    });
  });
  const sockets = new Set<Socket>();
  srv.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  return {
    port,
    endpoint: `127.0.0.1:${port}`,
    log,
    put(bucket, key, data) {
      const f = path.join(opts.root, bucket, ...key.split('/'));
      fs.mkdirSync(path.dirname(f), { recursive: true });
      fs.writeFileSync(f, data);
    },
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); srv.close(() => r()); }),
  };
}

/** An S3 endpoint in a child process (see the module doc). */
export interface S3Process {
  port: number;
  endpoint: string;
  /** the request log so far (from the log file) */
  log(): S3LogEntry[];
  put(bucket: string, key: string, data: Buffer): void;
  stop(): Promise<void>;
}

export async function spawnS3Server(opts: Omit<S3ServerOptions, 'fault' | 'now' | 'logFile' | 'onRequest'> & { logFile: string }): Promise<S3Process> {
  fs.writeFileSync(opts.logFile, '');
  const proc: ChildProcess = spawn(process.execPath, ['-r', require.resolve('tsx/cjs'), __filename, JSON.stringify(opts)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((r) => proc.on('exit', () => r()));
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`S3 server did not start: ${out}`)); }, 20_000);
    proc.stdout!.on('data', (d) => {
      out += d;
      const m = /^listening (\d+)$/m.exec(out);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`S3 server exited (${code}): ${out}`)); });
  });
  proc.stdout!.resume();
  return {
    port,
    endpoint: `127.0.0.1:${port}`,
    log: () => fs.readFileSync(opts.logFile, 'utf8').split('\n').filter((l) => l).map((l) => JSON.parse(l) as S3LogEntry),
    put(bucket, key, data) {
      const f = path.join(opts.root, bucket, ...key.split('/'));
      fs.mkdirSync(path.dirname(f), { recursive: true });
      fs.writeFileSync(f, data);
    },
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

if (require.main === module) {
  const o = JSON.parse(process.argv[2] ?? '{}') as S3ServerOptions;
  void startS3Server(o).then((s) => {
    process.stdout.write(`listening ${s.port}\n`);
    process.on('SIGTERM', () => { void s.close().then(() => process.exit(0)); });
  });
}
