/** Small node:http fakes shared by the backend unit tests. */
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface FakeServer { port: number; host: string; origin: string; close(): Promise<void> }

/** Serve `handler` on 127.0.0.1 (or `host`), a free port, or the unix socket path `listen`; close() drops open connections. */
export async function serveHttp(handler: http.RequestListener, opts: { host?: string; listen?: number | string } = {}): Promise<FakeServer> {
  const host = opts.host ?? '127.0.0.1';
  const srv = http.createServer(handler);
  const sockets = new Set<Socket>();
  srv.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  const listen = opts.listen ?? 0;
  await new Promise<void>((r) => (typeof listen === 'string' ? srv.listen(listen, r) : srv.listen(listen, host, r)));
  const a = srv.address();
  const port = typeof a === 'object' && a ? (a as AddressInfo).port : 0;
  return {
    port,
    host,
    origin: `http://${host}:${port}`,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); srv.close(() => r()); }),
  };
}

/** Answer a `Range: bytes=a-[b]` request of `blob` with 206 (or `status`), no Range with 200; HEAD without a body. */
export function rangeReply(req: http.IncomingMessage, res: http.ServerResponse, blob: Buffer, status?: number): void {
  const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  const body = (b: Buffer) => (req.method === 'HEAD' ? undefined : b);
  if (!m) { res.writeHead(status ?? 200, { 'content-length': blob.length }); res.end(body(blob)); return; }
  const a = Number(m[1]);
  const b = m[2] === '' ? blob.length - 1 : Math.min(Number(m[2]), blob.length - 1);
  res.writeHead(status ?? 206, { 'content-length': b - a + 1, 'content-range': `bytes ${a}-${b}/${blob.length}` });
  res.end(body(blob.subarray(a, b + 1)));
}
