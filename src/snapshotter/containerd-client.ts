/**
 * A gRPC client for containerd 1.6's own API on its unix socket
 * (`/run/containerd/containerd.sock`), enough to pull and unpack an image
 * the way containerd's client library does: Content (Info, Update, Status,
 * streaming Write, Abort), Images (Get, Create, Update), Leases (Create,
 * Delete), Snapshots (Prepare, Commit, Stat, Remove) and Diff (Apply).
 *
 * Protocol facts it relies on (containerd 1.6):
 * - the namespace travels in the `containerd-namespace` gRPC metadata
 *   header on every call; containerd creates a namespace on first use;
 * - a lease id in the `containerd-lease` header puts everything a call
 *   creates (ingests, blobs, snapshots) under that lease, so the garbage
 *   collector keeps it until the lease is deleted;
 * - Content.Write is a bidirectional stream with one response per request:
 *   the first request must carry the ref; a request carrying `expected` for
 *   a blob already in the namespace ends the stream with AlreadyExists; a
 *   WRITE at offset 0 truncates a stale partial ingest; COMMIT checks
 *   total and expected digest; a ref written by another client is
 *   "locked" (Unavailable) until that stream ends;
 * - errors are gRPC status codes mapped from containerd's errdefs
 *   (NotFound=5, AlreadyExists=6, ...).
 *
 * The .proto files are loaded at run time from `proto/` at the package root
 * (`containerd/...` import paths); Snapshots and Diff need the snapshotter's
 * `proto/containerd/types/mount.proto` and `.../snapshots/v1/snapshots.proto`.
 * Each service's definition is loaded on first use, so the content, image and
 * lease calls work without them.
 *
 * Deliberate differences from containerd's Go client: no ttrpc, no
 * introspection or Version handshake (the first failing call reports the
 * socket); every unary call has a deadline; Write sends data in bounded
 * messages (1 MiB by default, never above 8 MiB) with stream flow control
 * and verifies the digest containerd reports on commit; a locked ref is
 * retried a bounded number of times instead of waiting on Status.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ErrnoError, einval } from '../common/errno';
import { log } from '../common/log';

// ---------------------------------------------------------------- types (proto field names, keepCase)

export interface Descriptor {
  media_type: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

export interface Mount {
  type: string;
  source: string;
  target?: string;
  options: string[];
}

export interface ContentInfo {
  digest: string;
  size: number;
  labels: Record<string, string>;
}

export interface WriteStatus {
  ref: string;
  offset: number;
  total: number;
  expected: string;
}

export interface ImageRecord {
  name: string;
  labels?: Record<string, string>;
  target: Descriptor;
}

export type SnapshotKind = 'UNKNOWN' | 'VIEW' | 'ACTIVE' | 'COMMITTED';

export interface SnapshotInfo {
  name: string;
  parent: string;
  kind: SnapshotKind;
  labels: Record<string, string>;
}

export interface Lease {
  id: string;
  labels: Record<string, string>;
}

// ---------------------------------------------------------------- errors

/** gRPC status code → errno code of the project's ErrnoError. */
const ERRNO_OF_GRPC: Partial<Record<grpc.status, string>> = {
  [grpc.status.NOT_FOUND]: 'ENOENT',
  [grpc.status.ALREADY_EXISTS]: 'EEXIST',
  [grpc.status.INVALID_ARGUMENT]: 'EINVAL',
  [grpc.status.FAILED_PRECONDITION]: 'EINVAL',
  [grpc.status.OUT_OF_RANGE]: 'ERANGE',
  [grpc.status.PERMISSION_DENIED]: 'EACCES',
  [grpc.status.UNAUTHENTICATED]: 'EACCES',
  [grpc.status.UNIMPLEMENTED]: 'ENOSYS',
  [grpc.status.DEADLINE_EXCEEDED]: 'ETIMEDOUT',
  [grpc.status.UNAVAILABLE]: 'ECONNREFUSED',
  [grpc.status.CANCELLED]: 'ECANCELED',
  [grpc.status.DATA_LOSS]: 'EIO',
};

/** A failed containerd call: the errno of its gRPC code, the code, and containerd's message. */
export class ContainerdError extends ErrnoError {
  constructor(readonly rpc: string, readonly grpcCode: grpc.status, readonly details: string) {
    super(ERRNO_OF_GRPC[grpcCode] ?? 'EIO', `containerd ${rpc}: ${details || grpc.status[grpcCode]}`);
    this.name = 'ContainerdError';
  }
}

export const isNotFound = (e: unknown): boolean => e instanceof ContainerdError && e.grpcCode === grpc.status.NOT_FOUND;
export const isAlreadyExists = (e: unknown): boolean => e instanceof ContainerdError && e.grpcCode === grpc.status.ALREADY_EXISTS;
export const isUnavailable = (e: unknown): boolean => e instanceof ContainerdError && e.grpcCode === grpc.status.UNAVAILABLE;

function toError(rpc: string, e: unknown, address: string): Error {
  const se = e as grpc.ServiceError;
  if (typeof se?.code !== 'number') return e instanceof Error ? e : new Error(String(e));
  let details = se.details || se.message || '';
  // grpc-js's own transport failures read badly; say which socket.
  if (se.code === grpc.status.UNAVAILABLE && /No connection established|connect|ENOENT|ECONNREFUSED/.test(details)) {
    details = `cannot connect to containerd at ${address} (${details})`;
  }
  return new ContainerdError(rpc, se.code, details);
}

// ---------------------------------------------------------------- proto loading

/** Package root (works from src/ under tsx and from dist/). */
const PKG_ROOT = path.resolve(__dirname, '..', '..');
export const PROTO_ROOT = path.join(PKG_ROOT, 'proto');

const SERVICE_FILES = {
  content: { file: 'containerd/services/content/v1/content.proto', pkg: 'containerd.services.content.v1', svc: 'Content' },
  images: { file: 'containerd/services/images/v1/images.proto', pkg: 'containerd.services.images.v1', svc: 'Images' },
  leases: { file: 'containerd/services/leases/v1/leases.proto', pkg: 'containerd.services.leases.v1', svc: 'Leases' },
  snapshots: { file: 'containerd/services/snapshots/v1/snapshots.proto', pkg: 'containerd.services.snapshots.v1', svc: 'Snapshots' },
  diff: { file: 'containerd/services/diff/v1/diff.proto', pkg: 'containerd.services.diff.v1', svc: 'Diff' },
} as const;
export type ServiceName = keyof typeof SERVICE_FILES;

/** Options every user of these protos must share so that field names match. */
export const LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

/**
 * Directories searched for `containerd/...` protos: the package's `proto/`,
 * then any in NYDUS_PROTO_PATH (colon-separated; for development against a
 * tree that lacks a file).
 */
export function protoDirs(): string[] {
  const extra = (process.env.NYDUS_PROTO_PATH ?? '').split(':').filter((d) => d !== '');
  return [PROTO_ROOT, ...extra];
}

const ctorCache = new Map<string, grpc.ServiceClientConstructor>();

/** The grpc-js client constructor of one containerd service (definitions loaded once per process). */
export function serviceConstructor(name: ServiceName, dirs = protoDirs()): grpc.ServiceClientConstructor {
  const key = `${name}\0${dirs.join(':')}`;
  const hit = ctorCache.get(key);
  if (hit) return hit;
  const s = SERVICE_FILES[name];
  if (!dirs.some((d) => fs.existsSync(path.join(d, s.file)))) {
    throw new ErrnoError('ENOENT', `proto file ${s.file} not found under ${dirs.join(', ')}`);
  }
  let def: protoLoader.PackageDefinition;
  try {
    def = protoLoader.loadSync(s.file, { ...LOADER_OPTIONS, includeDirs: dirs });
  } catch (e) {
    throw einval(`cannot load ${s.file}: ${(e as Error).message}`, e);
  }
  const svcDef = def[`${s.pkg}.${s.svc}`] as grpc.ServiceDefinition | undefined;
  if (!svcDef) throw einval(`${s.file} defines no service ${s.pkg}.${s.svc}`);
  const ctor = grpc.makeGenericClientConstructor(svcDef, s.svc);
  ctorCache.set(key, ctor);
  return ctor;
}

// ---------------------------------------------------------------- client

export interface ContainerdClientOptions {
  /** socket path or `unix://` URL (default /run/containerd/containerd.sock) */
  address?: string;
  namespace?: string;
  /** deadline of ordinary unary calls (default 60 s) */
  timeoutMs?: number;
  /** deadline of Diff.Apply (default 30 min: it unpacks a whole layer) */
  applyTimeoutMs?: number;
}

export interface WriteOptions {
  /** digest the committed blob must have (required: content is addressed by it) */
  expected: string;
  /** size the committed blob must have */
  total: number;
  labels?: Record<string, string>;
  /** bytes per WriteContentRequest (default 1 MiB, at most 8 MiB) */
  chunkSize?: number;
  /** called with the bytes sent so far */
  onProgress?(sent: number): void;
}

export const DEFAULT_ADDRESS = '/run/containerd/containerd.sock';
export const DEFAULT_NAMESPACE = 'default';
export const NAMESPACE_HEADER = 'containerd-namespace';
export const LEASE_HEADER = 'containerd-lease';
const MAX_CHUNK = 8 << 20;
const DEFAULT_CHUNK = 1 << 20;
/** containerd's server accepts 16 MiB messages; replies are small except lists. */
const MAX_MESSAGE = 16 << 20;
const LOCKED_RETRIES = 8;

type Callback<T> = (err: grpc.ServiceError | null, res?: T) => void;
type UnaryFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: Callback<unknown>) => grpc.ClientUnaryCall;

/** The target string grpc-js wants for a socket path or unix URL. */
export function grpcTarget(address: string): string {
  if (address.startsWith('unix:')) return address;
  if (address.startsWith('/')) return `unix://${address}`;
  // a relative path is still a socket path (ctr accepts it)
  return `unix:${address}`;
}

interface Shared {
  address: string;
  channel: grpc.Channel;
  clients: Map<ServiceName, grpc.Client>;
  closed: boolean;
}

export class ContainerdClient {
  readonly address: string;
  readonly namespace: string;
  readonly lease: string | undefined;
  private readonly timeoutMs: number;
  private readonly applyTimeoutMs: number;
  private readonly shared: Shared;

  constructor(opts: ContainerdClientOptions = {}, shared?: Shared, lease?: string) {
    this.address = opts.address ?? DEFAULT_ADDRESS;
    this.namespace = opts.namespace ?? DEFAULT_NAMESPACE;
    if (!/^[A-Za-z0-9]([A-Za-z0-9_.-]{0,74}[A-Za-z0-9])?$/.test(this.namespace)) {
      throw einval(`invalid namespace ${JSON.stringify(this.namespace)}`);
    }
    this.timeoutMs = opts.timeoutMs ?? 60_000;
    this.applyTimeoutMs = opts.applyTimeoutMs ?? 30 * 60_000;
    this.lease = lease;
    this.shared = shared ?? {
      address: this.address,
      channel: new grpc.Channel(grpcTarget(this.address), grpc.credentials.createInsecure(), {
        'grpc.max_receive_message_length': MAX_MESSAGE,
        'grpc.max_send_message_length': MAX_MESSAGE,
      }),
      clients: new Map(),
      closed: false,
    };
  }

  /** The same connection, with every call made under lease `id` (or none). */
  withLease(id: string | undefined): ContainerdClient {
    return new ContainerdClient({ address: this.address, namespace: this.namespace, timeoutMs: this.timeoutMs, applyTimeoutMs: this.applyTimeoutMs }, this.shared, id);
  }

  /** Close the connection (every client sharing it). */
  close(): void {
    if (this.shared.closed) return;
    this.shared.closed = true;
    for (const c of this.shared.clients.values()) c.close();
    this.shared.channel.close();
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set(NAMESPACE_HEADER, this.namespace);
    if (this.lease) md.set(LEASE_HEADER, this.lease);
    return md;
  }

  private client(name: ServiceName): grpc.Client {
    if (this.shared.closed) throw new ErrnoError('EBADF', 'containerd client is closed');
    let c = this.shared.clients.get(name);
    if (!c) {
      const Ctor = serviceConstructor(name);
      c = new Ctor(grpcTarget(this.address), grpc.credentials.createInsecure(), { channelOverride: this.shared.channel });
      this.shared.clients.set(name, c);
    }
    return c;
  }

  private unary<T>(svc: ServiceName, method: string, req: unknown, timeoutMs = this.timeoutMs): Promise<T> {
    const rpc = `${SERVICE_FILES[svc].svc}.${method}`;
    return new Promise<T>((resolve, reject) => {
      let c: grpc.Client;
      try {
        c = this.client(svc);
      } catch (e) {
        reject(e);
        return;
      }
      const fn = (c as unknown as Record<string, UnaryFn>)[method];
      log.debug({ rpc, namespace: this.namespace, lease: this.lease }, 'containerd call');
      fn.call(c, req, this.metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err) reject(toError(rpc, err, this.address));
        else resolve(res as T);
      });
    });
  }

  // ------------------------------------------------------------ Content

  async contentInfo(digest: string): Promise<ContentInfo> {
    const r = await this.unary<{ info: ContentInfo }>('content', 'Info', { digest });
    return normInfo(r.info);
  }

  /** Content info, or undefined when the blob is not in this namespace. */
  async contentInfoIfExists(digest: string): Promise<ContentInfo | undefined> {
    try {
      return await this.contentInfo(digest);
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** Set labels of a blob; only the given keys change (field paths `labels.<key>`); an empty value removes a key. */
  async contentSetLabels(digest: string, labels: Record<string, string>): Promise<ContentInfo> {
    const paths = Object.keys(labels).map((k) => `labels.${k}`);
    const r = await this.unary<{ info: ContentInfo }>('content', 'Update', { info: { digest, labels }, update_mask: { paths } });
    return normInfo(r.info);
  }

  /** Status of an ongoing ingest, or undefined when there is none. */
  async contentStatus(ref: string): Promise<WriteStatus | undefined> {
    try {
      const r = await this.unary<{ status: WriteStatus | null }>('content', 'Status', { ref });
      return r.status ?? undefined;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  async contentAbort(ref: string): Promise<void> {
    await this.unary('content', 'Abort', { ref });
  }

  /**
   * Write a blob into the content store under `ref` and commit it as
   * `opts.expected` with `opts.labels`. Resolves 'written', or 'exists'
   * when containerd already has the blob (its labels are then not changed:
   * see contentSetLabels). The source is consumed once; a locked ref is
   * retried only while nothing has been read from the source.
   */
  async contentWrite(ref: string, source: Uint8Array | AsyncIterable<Uint8Array>, opts: WriteOptions): Promise<'written' | 'exists'> {
    if (ref === '') throw einval('content write needs a ref');
    if (!Number.isSafeInteger(opts.total) || opts.total < 0) throw einval(`bad blob size ${opts.total}`);
    const chunk = Math.min(Math.max(opts.chunkSize ?? DEFAULT_CHUNK, 1), MAX_CHUNK);
    for (let attempt = 0; ; attempt++) {
      const consumed = { value: false };
      try {
        return await this.writeOnce(ref, source, opts, chunk, consumed);
      } catch (e) {
        if (isAlreadyExists(e)) return 'exists';
        const locked = isUnavailable(e) && /locked/.test((e as ContainerdError).details);
        if (!locked || consumed.value || attempt >= LOCKED_RETRIES) throw e;
        const ms = Math.min(100 * 2 ** attempt, 2000);
        log.debug({ ref, ms }, 'content ref locked by another writer, retrying');
        await new Promise((r) => setTimeout(r, ms));
      }
    }
  }

  private writeOnce(ref: string, source: Uint8Array | AsyncIterable<Uint8Array>, opts: WriteOptions, chunk: number, consumed: { value: boolean }): Promise<'written'> {
    const rpc = 'Content.Write';
    const c = this.client('content') as unknown as { Write(md: grpc.Metadata, o: grpc.CallOptions): grpc.ClientDuplexStream<unknown, WriteResponse> };
    // No overall deadline (a blob may be large): the stream is cancelled when
    // containerd leaves a request unanswered for timeoutMs.
    const call = c.Write(this.metadata(), {});
    let failed: Error | undefined;
    let last: WriteResponse | undefined;
    let responses = 0;
    let sent = 0;
    let lastReply = Date.now();
    const idle = setInterval(() => {
      if (sent > responses && Date.now() - lastReply > this.timeoutMs) {
        failed ??= new ContainerdError(rpc, grpc.status.DEADLINE_EXCEEDED, `no reply from containerd for ${Math.round(this.timeoutMs / 1000)} s`);
        call.cancel();
      }
    }, Math.min(1000, this.timeoutMs));
    const ended = new Promise<void>((resolve, reject) => {
      call.on('data', (r: WriteResponse) => {
        responses++;
        lastReply = Date.now();
        last = r;
      });
      call.on('error', (e) => {
        failed ??= toError(rpc, e, this.address);
        reject(failed);
      });
      call.on('end', () => resolve());
    });
    ended.catch(() => undefined); // observed below
    const send = async (msg: Record<string, unknown>): Promise<void> => {
      if (failed) throw failed;
      if (sent === responses) lastReply = Date.now();
      sent++;
      if (!call.write(msg)) {
        await new Promise<void>((resolve) => {
          const done = () => {
            call.off('drain', done);
            call.off('error', done);
            call.off('close', done);
            resolve();
          };
          call.on('drain', done);
          call.on('error', done);
          call.on('close', done);
        });
      }
      if (failed) throw failed;
    };
    const run = async (): Promise<'written'> => {
      let offset = 0;
      let first = true;
      try {
        const chunks = source instanceof Uint8Array ? [source] : source;
        for await (const piece of chunks) {
          if (!(source instanceof Uint8Array)) consumed.value = true; // a buffer can be sent again
          for (let at = 0; at < piece.length; at += chunk) {
            const data = piece.subarray(at, Math.min(at + chunk, piece.length));
            if (offset + data.length > opts.total) throw einval(`blob ${opts.expected} is larger than its descriptor's ${opts.total} bytes`);
            const msg: Record<string, unknown> = { action: 'WRITE', ref, offset, data };
            if (first) Object.assign(msg, { total: opts.total, expected: opts.expected });
            first = false;
            await send(msg);
            offset += data.length;
            opts.onProgress?.(offset);
          }
        }
        if (offset !== opts.total) throw einval(`blob ${opts.expected}: got ${offset} bytes, descriptor says ${opts.total}`);
        await send({ action: 'COMMIT', ref, offset, total: opts.total, expected: opts.expected, labels: opts.labels ?? {} });
        call.end();
        await ended;
      } catch (e) {
        if (!failed) call.cancel();
        if (failed) throw failed;
        throw e;
      } finally {
        clearInterval(idle);
      }
      if (!last || last.action !== 'COMMIT') throw new ContainerdError(rpc, grpc.status.DATA_LOSS, `stream ended after ${responses} replies without a commit`);
      if (last.digest !== opts.expected) throw new ContainerdError(rpc, grpc.status.DATA_LOSS, `committed digest ${last.digest}, expected ${opts.expected}`);
      if (Number(last.offset) !== opts.total) throw new ContainerdError(rpc, grpc.status.DATA_LOSS, `committed ${last.offset} bytes, expected ${opts.total}`);
      return 'written';
    };
    return run();
  }

  // ------------------------------------------------------------ Images

  /** The image record, or undefined when there is none. */
  async imageGet(name: string): Promise<ImageRecord | undefined> {
    try {
      const r = await this.unary<{ image: ImageRecord | null }>('images', 'Get', { name });
      return r.image ?? undefined;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  async imageCreate(image: ImageRecord): Promise<ImageRecord> {
    const r = await this.unary<{ image: ImageRecord }>('images', 'Create', { image });
    return r.image;
  }

  /** Update fields `paths` ("target", "labels", "labels.<key>") of an image record. */
  async imageUpdate(image: ImageRecord, paths: string[]): Promise<ImageRecord> {
    const r = await this.unary<{ image: ImageRecord }>('images', 'Update', { image, update_mask: { paths } });
    return r.image;
  }

  // ------------------------------------------------------------ Leases

  async leaseCreate(id: string, labels: Record<string, string> = {}): Promise<Lease> {
    const r = await this.unary<{ lease: Lease }>('leases', 'Create', { id, labels });
    return r.lease;
  }

  async leaseDelete(id: string, sync = false): Promise<void> {
    await this.unary('leases', 'Delete', { id, sync });
  }

  // ------------------------------------------------------------ Snapshots

  async snapshotPrepare(snapshotter: string, key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    const r = await this.unary<{ mounts: Mount[] }>('snapshots', 'Prepare', { snapshotter, key, parent, labels });
    return r.mounts ?? [];
  }

  async snapshotCommit(snapshotter: string, name: string, key: string, labels: Record<string, string>): Promise<void> {
    await this.unary('snapshots', 'Commit', { snapshotter, name, key, labels });
  }

  async snapshotStat(snapshotter: string, key: string): Promise<SnapshotInfo> {
    const r = await this.unary<{ info: SnapshotInfo }>('snapshots', 'Stat', { snapshotter, key });
    return { name: r.info.name, parent: r.info.parent, kind: r.info.kind, labels: r.info.labels ?? {} };
  }

  /** Snapshot info, or undefined when there is no snapshot `key`. */
  async snapshotStatIfExists(snapshotter: string, key: string): Promise<SnapshotInfo | undefined> {
    try {
      return await this.snapshotStat(snapshotter, key);
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  async snapshotRemove(snapshotter: string, key: string): Promise<void> {
    await this.unary('snapshots', 'Remove', { snapshotter, key });
  }

  // ------------------------------------------------------------ Diff

  /** Apply layer blob `desc` (already in the content store) onto `mounts`; returns the uncompressed descriptor. */
  async diffApply(desc: Descriptor, mounts: Mount[]): Promise<Descriptor> {
    const r = await this.unary<{ applied: Descriptor }>('diff', 'Apply', { diff: desc, mounts, payloads: {} }, this.applyTimeoutMs);
    return r.applied;
  }
}

interface WriteResponse {
  action: 'STAT' | 'WRITE' | 'COMMIT';
  offset: number;
  total: number;
  digest: string;
}

function normInfo(i: ContentInfo): ContentInfo {
  return { digest: i.digest, size: Number(i.size), labels: i.labels ?? {} };
}
