/**
 * The `containerd.services.snapshots.v1.Snapshots` gRPC service on a unix
 * socket (kata-contract.md §5.2): every request is validated before it
 * reaches the Snapshotter (keys: non-empty where required, at most 4096 bytes,
 * no NUL; labels via labels.ts; at most 64 filters; at most 256 update-mask
 * paths; a missing `info` is InvalidArgument), errors become their gRPC codes
 * (errors.ts), List streams 100 infos per message as containerd's service
 * does. The `snapshotter` field of requests is ignored (containerd's proxy
 * fills in the plugin name).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { log } from '../common/log';
import { SnapshotError, grpcCodeOf, invalidArgument } from './errors';
import { MAX_FILTER_LENGTH } from './filters';
import { validateLabels } from './labels';
import { Mount } from './mounts';
import { snapshotsService } from './proto';
import { Info } from './store';
import { Snapshotter } from './snapshotter';

export const MAX_KEY_BYTES = 4096;
export const MAX_FILTERS = 64;
export const MAX_MASK_PATHS = 256;
export const MAX_MESSAGE_BYTES = 2 << 20;
const LIST_BATCH = 100;

type Req = Record<string, unknown>;

function key(v: unknown, what: string, required: boolean): string {
  if (v === undefined || v === null) v = '';
  if (typeof v !== 'string') throw invalidArgument(`${what} must be a string`);
  if (required && v === '') throw invalidArgument(`${what} must not be empty`);
  if (Buffer.byteLength(v) > MAX_KEY_BYTES) throw invalidArgument(`${what} longer than ${MAX_KEY_BYTES} bytes`);
  if (v.includes('\0')) throw invalidArgument(`${what} contains a NUL byte`);
  return v;
}

function timestamp(ns: bigint): { seconds: string; nanos: number } {
  return { seconds: (ns / 1_000_000_000n).toString(), nanos: Number(ns % 1_000_000_000n) };
}

export function infoToProto(i: Info): Req {
  return { name: i.name, parent: i.parent, kind: i.kind, created_at: timestamp(i.created), updated_at: timestamp(i.updated), labels: i.labels };
}

function mountsToProto(ms: Mount[]): Req[] {
  return ms.map((m) => ({ type: m.type, source: m.source, target: m.target, options: m.options }));
}

function toStatus(e: unknown, op: string): grpc.ServiceError {
  const code = grpcCodeOf(e);
  const message = e instanceof Error ? e.message : String(e);
  if (!(e instanceof SnapshotError) || e.code === 'Unknown' || e.code === 'Unavailable') log.warn({ op, err: message }, 'snapshot operation failed');
  else log.debug({ op, code: e.code, err: message }, 'snapshot operation refused');
  const err = new Error(message) as grpc.ServiceError;
  err.code = code;
  err.details = message;
  err.metadata = new grpc.Metadata();
  return err;
}

function unary(op: string, fn: (req: Req) => Promise<unknown>): grpc.handleUnaryCall<Req, unknown> {
  return (call, cb) => {
    let p: Promise<unknown>;
    try {
      p = fn(call.request ?? {});
    } catch (e) {
      cb(toStatus(e, op));
      return;
    }
    p.then((r) => cb(null, r), (e) => cb(toStatus(e, op)));
  };
}

export function serviceImpl(sn: Snapshotter): grpc.UntypedServiceImplementation {
  return {
    Prepare: unary('prepare', async (r) => ({ mounts: mountsToProto(await sn.prepare(key(r.key, 'key', true), key(r.parent, 'parent', false), validateLabels(r.labels))) })),
    View: unary('view', async (r) => ({ mounts: mountsToProto(await sn.view(key(r.key, 'key', true), key(r.parent, 'parent', false), validateLabels(r.labels))) })),
    Mounts: unary('mounts', async (r) => ({ mounts: mountsToProto(await sn.mounts(key(r.key, 'key', true))) })),
    Commit: unary('commit', async (r) => {
      await sn.commit(key(r.name, 'name', true), key(r.key, 'key', true), validateLabels(r.labels));
      return {};
    }),
    Remove: unary('remove', async (r) => {
      await sn.remove(key(r.key, 'key', true));
      return {};
    }),
    Stat: unary('stat', async (r) => ({ info: infoToProto(await sn.stat(key(r.key, 'key', true))) })),
    Update: unary('update', async (r) => {
      const info = r.info as Req | undefined | null;
      if (!info || typeof info !== 'object') throw invalidArgument('info is required');
      const mask = (r.update_mask as { paths?: unknown } | null | undefined)?.paths ?? [];
      if (!Array.isArray(mask) || mask.length > MAX_MASK_PATHS) throw invalidArgument(`update_mask: at most ${MAX_MASK_PATHS} paths`);
      const paths = mask.map((p) => key(p, 'update_mask path', true));
      const out = await sn.update({ name: key(info.name, 'info.name', true), labels: validateLabels(info.labels, 'info.labels') }, paths);
      return { info: infoToProto(out) };
    }),
    List: (call: grpc.ServerWritableStream<Req, unknown>) => {
      void (async () => {
        const filters = call.request?.filters ?? [];
        if (!Array.isArray(filters) || filters.length > MAX_FILTERS) throw invalidArgument(`at most ${MAX_FILTERS} filters`);
        for (const f of filters) if (typeof f !== 'string' || f.length > MAX_FILTER_LENGTH) throw invalidArgument(`filter longer than ${MAX_FILTER_LENGTH} bytes`);
        const infos = await sn.list(filters as string[]);
        for (let i = 0; i < infos.length; i += LIST_BATCH) {
          if (call.cancelled) return;
          const ok = call.write({ info: infos.slice(i, i + LIST_BATCH).map(infoToProto) });
          if (!ok) await new Promise((r) => call.once('drain', r));
        }
        call.end();
      })().catch((e) => call.emit('error', toStatus(e, 'list')));
    },
    Usage: unary('usage', async (r) => {
      const u = await sn.usage(key(r.key, 'key', true));
      return { size: String(u.size), inodes: String(u.inodes) };
    }),
    Cleanup: unary('cleanup', async () => {
      await sn.cleanup();
      return {};
    }),
  };
}

export interface RunningServer {
  server: grpc.Server;
  address: string;
  close(): Promise<void>;
}

/** Serve `sn` on the unix socket `address` (a stale socket file is replaced). */
export async function serve(sn: Snapshotter, address: string): Promise<RunningServer> {
  fs.mkdirSync(path.dirname(address), { recursive: true });
  try {
    if (fs.lstatSync(address).isSocket()) fs.unlinkSync(address);
    else throw new SnapshotError('FailedPrecondition', `${address} exists and is not a socket`);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_concurrent_streams': 256,
  });
  server.addService(snapshotsService().service, serviceImpl(sn));
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix://${address}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
  });
  fs.chmodSync(address, 0o660);
  return {
    server,
    address,
    close: () =>
      new Promise<void>((resolve) => {
        const t = setTimeout(() => { server.forceShutdown(); resolve(); }, 3000);
        server.tryShutdown(() => { clearTimeout(t); resolve(); });
      }),
  };
}
