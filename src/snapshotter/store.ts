/**
 * The snapshotter's embedded database (better-sqlite3, WAL, one file
 * `<root>/metadata.db`): containerd's `storage.MetaStore` semantics for
 * snapshots plus the daemon / RAFS instance records recovery needs (upstream
 * keeps those in a second bbolt file, `nydus.db`; here they are two more
 * tables of the same file, so one transaction covers both).
 *
 * Snapshots: `id` is an ever-growing integer (AUTOINCREMENT: ids are never
 * reused, like bbolt's bucket sequence) and names the directory
 * `snapshots/<id>`; `key` is unique across active, view and committed
 * snapshots; the parent is stored by id. Semantics and errors as containerd's
 * storage package: create refuses kinds other than active/view
 * (InvalidArgument), an existing key (AlreadyExists), a missing parent
 * (NotFound) and a parent that is not committed (InvalidArgument); commit
 * keeps the id, replaces the labels (not inherited) and refuses an existing
 * name (AlreadyExists), a missing key (NotFound) or a non-active one
 * (FailedPrecondition); remove refuses a snapshot with children
 * (FailedPrecondition). Labels with an empty value are not stored.
 * Bounded: at most `maxSnapshots` rows (ResourceExhausted beyond).
 */
import Database from 'better-sqlite3';
import { alreadyExists, exhausted, failedPrecondition, invalidArgument, notFound } from './errors';

export enum Kind {
  Unknown = 0,
  View = 1,
  Active = 2,
  Committed = 3,
}

export const KIND_NAMES: Record<Kind, string> = {
  [Kind.Unknown]: 'unknown',
  [Kind.View]: 'view',
  [Kind.Active]: 'active',
  [Kind.Committed]: 'committed',
};

export interface Info {
  name: string;
  parent: string;
  kind: Kind;
  labels: Record<string, string>;
  /** ns since the epoch */
  created: bigint;
  updated: bigint;
}

/** A snapshot with its directory id and the ids of its ancestors (nearest first). */
export interface Snapshot {
  id: string;
  kind: Kind;
  parentIds: string[];
}

export interface Usage {
  size: number;
  inodes: number;
}

interface Row {
  id: number;
  key: string;
  parent_id: number | null;
  kind: number;
  labels: string;
  created_ns: bigint;
  updated_ns: bigint;
  usage_size: number;
  usage_inodes: number;
}

export const DEFAULT_MAX_SNAPSHOTS = 1 << 20;

export function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n + (process.hrtime.bigint() % 1_000_000n);
}

function cleanLabels(l: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(l ?? {})) if (v !== '') out[k] = v;
  return out;
}

/** A daemon record (one per nydusd the snapshotter started). */
export interface DaemonRecord {
  id: string;
  /** argv after the binary */
  argv: string[];
  pid: number;
  apiSock: string;
  mountpoint: string;
  configPath: string;
  /** 'dedicated' | 'shared' */
  mode: string;
  /** meta snapshot id served (dedicated) */
  snapshotId?: string;
  imageRef?: string;
  startedAt: number;
}

/** A RAFS instance: the meta snapshot it serves and its daemon. */
export interface InstanceRecord {
  snapshotId: string;
  daemonId: string;
  imageRef: string;
  bootstrap: string;
  mountpoint: string;
  fsVersion: string;
  /** the nydusd config JSON (kata extraoption `config`) */
  config: string;
}

export class MetaStore {
  readonly db: Database.Database;

  constructor(file: string, readonly maxSnapshots = DEFAULT_MAX_SNAPSHOTS) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('foreign_keys = ON');
    this.db.defaultSafeIntegers(false);
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        parent_id INTEGER REFERENCES snapshots(id),
        kind INTEGER NOT NULL CHECK (kind IN (1, 2, 3)),
        labels TEXT NOT NULL DEFAULT '{}',
        created_ns INTEGER NOT NULL,
        updated_ns INTEGER NOT NULL,
        usage_size INTEGER NOT NULL DEFAULT 0,
        usage_inodes INTEGER NOT NULL DEFAULT 0
      );
      CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
      CREATE TABLE IF NOT EXISTS daemons (id TEXT PRIMARY KEY, record TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS instances (
        snapshot_id TEXT PRIMARY KEY, daemon_id TEXT NOT NULL, seq INTEGER NOT NULL, record TEXT NOT NULL
      );
      CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
      INSERT OR IGNORE INTO meta (k, v) VALUES ('schema', '1');
    `);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  tx<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  private row(key: string): Row | undefined {
    const r = this.db.prepare('SELECT * FROM snapshots WHERE key = ?').safeIntegers(true).get(key) as Row | undefined;
    return r ? this.fix(r) : undefined;
  }

  private fix(r: Row): Row {
    return {
      ...r,
      id: Number(r.id),
      parent_id: r.parent_id === null ? null : Number(r.parent_id),
      kind: Number(r.kind),
      usage_size: Number(r.usage_size),
      usage_inodes: Number(r.usage_inodes),
      created_ns: BigInt(r.created_ns),
      updated_ns: BigInt(r.updated_ns),
    };
  }

  private rowById(id: number): Row | undefined {
    const r = this.db.prepare('SELECT * FROM snapshots WHERE id = ?').safeIntegers(true).get(id) as Row | undefined;
    return r ? this.fix(r) : undefined;
  }

  private info(r: Row): Info {
    const parent = r.parent_id === null ? '' : (this.rowById(r.parent_id)?.key ?? '');
    return { name: r.key, parent, kind: r.kind as Kind, labels: JSON.parse(r.labels) as Record<string, string>, created: r.created_ns, updated: r.updated_ns };
  }

  private ancestors(r: Row): string[] {
    const out: string[] = [];
    let p = r.parent_id;
    while (p !== null) {
      out.push(String(p));
      const pr = this.rowById(p);
      if (!pr) break;
      p = pr.parent_id;
      if (out.length > 100_000) throw new Error('snapshot parent chain loops');
    }
    return out;
  }

  count(): number {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM snapshots').get() as { n: number }).n;
  }

  /** containerd storage.CreateSnapshot (inside the caller's transaction, or its own). */
  create(kind: Kind, key: string, parent: string, labels: Record<string, string>): Snapshot {
    return this.tx(() => {
      if (kind !== Kind.Active && kind !== Kind.View) {
        throw invalidArgument(`snapshot type ${KIND_NAMES[kind] ?? kind} invalid; only snapshots of type Active or View can be created`);
      }
      if (this.row(key)) throw alreadyExists(`snapshot ${key}`);
      let parentId: number | null = null;
      if (parent !== '') {
        const p = this.row(parent);
        if (!p) throw notFound(`missing parent ${JSON.stringify(parent)} bucket`);
        if (p.kind !== Kind.Committed) throw invalidArgument(`parent ${JSON.stringify(parent)} is not committed snapshot`);
        parentId = p.id;
      }
      if (this.count() >= this.maxSnapshots) throw exhausted(`too many snapshots (at most ${this.maxSnapshots})`);
      const t = nowNs();
      const res = this.db
        .prepare('INSERT INTO snapshots (key, parent_id, kind, labels, created_ns, updated_ns) VALUES (?, ?, ?, ?, ?, ?)')
        .run(key, parentId, kind, JSON.stringify(cleanLabels(labels)), t, t);
      const r = this.rowById(Number(res.lastInsertRowid))!;
      return { id: String(r.id), kind: r.kind, parentIds: this.ancestors(r) };
    });
  }

  /** containerd storage.GetSnapshot: ids of an active or view snapshot (NotFound; FailedPrecondition if committed). */
  getSnapshot(key: string): Snapshot {
    const r = this.row(key);
    if (!r) throw notFound(`snapshot ${key}`);
    if (r.kind !== Kind.Active && r.kind !== Kind.View) throw failedPrecondition(`requested snapshot ${key} not active or view`);
    return { id: String(r.id), kind: r.kind, parentIds: this.ancestors(r) };
  }

  /** Any snapshot's ids, whatever its kind. */
  lookup(key: string): (Snapshot & { info: Info; usage: Usage }) | undefined {
    const r = this.row(key);
    if (!r) return undefined;
    return { id: String(r.id), kind: r.kind, parentIds: this.ancestors(r), info: this.info(r), usage: { size: r.usage_size, inodes: r.usage_inodes } };
  }

  /** Info of the snapshot with directory id `id`. */
  infoById(id: string): (Info & { id: string }) | undefined {
    const r = this.rowById(Number(id));
    return r ? { ...this.info(r), id: String(r.id) } : undefined;
  }

  getInfo(key: string): { id: string; info: Info; usage: Usage } {
    const r = this.row(key);
    if (!r) throw notFound(`snapshot ${key}`);
    return { id: String(r.id), info: this.info(r), usage: { size: r.usage_size, inodes: r.usage_inodes } };
  }

  /** containerd storage.UpdateInfo with field paths (`labels`, `labels.<k>`; none = all mutable fields). */
  updateInfo(info: { name: string; labels: Record<string, string> }, fieldpaths: string[]): Info {
    return this.tx(() => {
      const r = this.row(info.name);
      if (!r) throw notFound(`snapshot ${info.name}`);
      let labels = JSON.parse(r.labels) as Record<string, string>;
      if (fieldpaths.length > 0) {
        for (const p of fieldpaths) {
          if (p.startsWith('labels.')) {
            const k = p.slice('labels.'.length);
            const v = Object.prototype.hasOwnProperty.call(info.labels, k) ? info.labels[k] : '';
            labels[k] = v;
            continue;
          }
          if (p === 'labels') labels = { ...info.labels };
          else throw invalidArgument(`cannot update ${JSON.stringify(p)} field on snapshot ${JSON.stringify(info.name)}`);
        }
      } else labels = { ...info.labels };
      const t = nowNs();
      this.db.prepare('UPDATE snapshots SET labels = ?, updated_ns = ? WHERE id = ?').run(JSON.stringify(cleanLabels(labels)), t, r.id);
      return this.info(this.rowById(r.id)!);
    });
  }

  /** containerd storage.CommitActive; returns the directory id (unchanged). */
  commitActive(key: string, name: string, usage: Usage, labels: Record<string, string>): string {
    return this.tx(() => {
      if (this.row(name)) throw alreadyExists(`committed snapshot ${name}`);
      const r = this.row(key);
      if (!r) throw notFound(`failed to get active snapshot ${JSON.stringify(key)}`);
      if (r.kind !== Kind.Active) throw failedPrecondition(`snapshot ${JSON.stringify(key)} is not active`);
      const t = nowNs();
      this.db
        .prepare('UPDATE snapshots SET key = ?, kind = ?, labels = ?, created_ns = ?, updated_ns = ?, usage_size = ?, usage_inodes = ? WHERE id = ?')
        .run(name, Kind.Committed, JSON.stringify(cleanLabels(labels)), t, t, usage.size, usage.inodes, r.id);
      return String(r.id);
    });
  }

  /** containerd storage.Remove; returns the removed id and kind. */
  remove(key: string): { id: string; kind: Kind } {
    return this.tx(() => {
      const r = this.row(key);
      if (!r) throw notFound(`snapshot ${key}`);
      const child = this.db.prepare('SELECT 1 FROM snapshots WHERE parent_id = ? LIMIT 1').get(r.id);
      if (child) throw failedPrecondition(`cannot remove snapshot with child`);
      this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(r.id);
      return { id: String(r.id), kind: r.kind };
    });
  }

  /** Every snapshot (for List; the caller filters). */
  *walk(): Generator<Info & { id: string }> {
    const rows = this.db.prepare('SELECT * FROM snapshots ORDER BY id').safeIntegers(true).all() as Row[];
    const keys = new Map<number, string>();
    const fixed = rows.map((r) => this.fix(r));
    for (const r of fixed) keys.set(r.id, r.key);
    for (const r of fixed) {
      yield {
        id: String(r.id), name: r.key, parent: r.parent_id === null ? '' : (keys.get(r.parent_id) ?? ''),
        kind: r.kind as Kind, labels: JSON.parse(r.labels) as Record<string, string>, created: r.created_ns, updated: r.updated_ns,
      };
    }
  }

  /** Directory ids of every snapshot (Cleanup keeps these). */
  ids(): Set<string> {
    return new Set((this.db.prepare('SELECT id FROM snapshots').all() as { id: number }[]).map((r) => String(r.id)));
  }

  // ---------------------------------------------------------------- daemons / instances

  putDaemon(d: DaemonRecord): void {
    this.db.prepare('INSERT OR REPLACE INTO daemons (id, record) VALUES (?, ?)').run(d.id, JSON.stringify(d));
  }
  deleteDaemon(id: string): void {
    this.db.prepare('DELETE FROM daemons WHERE id = ?').run(id);
  }
  daemons(): DaemonRecord[] {
    return (this.db.prepare('SELECT record FROM daemons ORDER BY id').all() as { record: string }[]).map((r) => JSON.parse(r.record) as DaemonRecord);
  }
  putInstance(i: InstanceRecord): void {
    const seq = (this.db.prepare('SELECT COALESCE(MAX(seq), 0) + 1 AS s FROM instances').get() as { s: number }).s;
    this.db.prepare('INSERT OR REPLACE INTO instances (snapshot_id, daemon_id, seq, record) VALUES (?, ?, ?, ?)').run(i.snapshotId, i.daemonId, seq, JSON.stringify(i));
  }
  deleteInstance(snapshotId: string): void {
    this.db.prepare('DELETE FROM instances WHERE snapshot_id = ?').run(snapshotId);
  }
  instances(): InstanceRecord[] {
    return (this.db.prepare('SELECT record FROM instances ORDER BY seq').all() as { record: string }[]).map((r) => JSON.parse(r.record) as InstanceRecord);
  }
}
