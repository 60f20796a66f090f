/** A minimal client for the nydusd HTTP API over its unix socket (tests only). */
import * as http from 'node:http';

export interface ApiReply { status: number; body: string; json?: unknown }

export function api(sock: string, method: string, path: string, body?: unknown): Promise<ApiReply> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    const req = http.request({ socketPath: sock, method, path, headers: data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {} }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; });
      res.on('end', () => {
        let json: unknown;
        try { json = text ? JSON.parse(text) : undefined; } catch { json = undefined; }
        resolve({ status: res.statusCode ?? 0, body: text, json });
      });
    });
    req.on('error', reject);
    req.setTimeout(30_000, () => req.destroy(new Error(`API ${method} ${path} timed out`)));
    if (data) req.write(data);
    req.end();
  });
}

/** Poll GET /api/v1/daemon until `state` (as Kata does), or throw after `timeoutMs`. */
export async function waitForState(sock: string, state = 'RUNNING', timeoutMs = 20_000): Promise<Record<string, unknown>> {
  const t0 = Date.now();
  let last = '';
  for (;;) {
    try {
      const r = await api(sock, 'GET', '/api/v1/daemon');
      last = r.body;
      const info = r.json as Record<string, unknown> | undefined;
      if (r.status === 200 && info?.state === state) return info;
    } catch (e) { last = (e as Error).message; }
    if (Date.now() - t0 > timeoutMs) throw new Error(`daemon never reached ${state}: ${last}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
