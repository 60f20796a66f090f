/**
 * `nydusify check` (nydusify-snapshotter §2.3): validates a Nydus image in a
 * registry, and with `--source` compares it with the image it came from.
 *  1. parse: the target's manifest (from an index: linux + the platform's
 *     arch, the entry with the Nydus artifactType / `nydus.remoteimage.v1`
 *     os.feature, else the one whose manifest is Nydus); the documents are
 *     saved in `<work>/{target,source}/` as upstream names them;
 *  2. manifest rule: last layer a gzip tar with `nydus-bootstrap: "true"`,
 *     every other layer the Nydus blob type with `nydus-blob: "true"`,
 *     `len(diff_ids) == len(layers)` on both sides; with a source, the
 *     container configs (`config.config`) equal, `ArgsEscaped` and the legacy
 *     `Image` id ignored;
 *  3. bootstrap rule: the bootstrap layer's tar sha256 equals the last
 *     diff_id; `image/image.boot` passes our builder's check (checkImage);
 *     every blob id it references is the digest of a data layer;
 *  4. filesystem rule (with `--source`): the source layers are read as an
 *     overlay would show them (OCI whiteouts and opaque dirs applied, layer
 *     by layer) and compared, path by path in both directions, with the
 *     Nydus image mounted by our nydusd over FUSE from the registry
 *     (registry backend, blobcache in `<work>/target/nydusd/cache`,
 *     `rafs.validate` on): type, permission bits, uid, gid, size, symlink
 *     target, device numbers, and the sha256 of the real content.
 * Deliberate differences: file contents are hashed whole (upstream's BLAKE3
 * hashes a stale 64 KiB buffer, trap 7.1.10); the source tree is computed
 * from the layer tars instead of an overlay mount (no root needed for that
 * side); xattrs are not compared; the daemon is our bin/nydusd (`--nydusd`
 * overrides); `--work-dir` is cleared at start as upstream.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Transform, Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import * as tarStream from 'tar-stream';
import { DecompressStream } from 'zstd-napi';
import { einval, eio } from '../common/errno';
import { log } from '../common/log';
import { RafsImage } from '../rafs/image';
import { checkImage } from '../rafs/inspect';
import { Annotation, type Descriptor, type ImageConfig, type Index, type Manifest, MediaType, isIndexType, layerCompression } from '../remote/media-types';
import { type Credentials, basicAuth } from '../remote/docker-config';
import { type PlatformSpec, defaultPlatform } from '../remote/platform';
import { type Reference, parseReference, registryHost } from '../remote/reference';
import { RegistryClient } from '../remote/client';
import { readBootstrapLayer } from './bootstrap-layer';
import { isNydusManifest } from './manifest';

export interface CheckOptions {
  target: string;
  source?: string;
  targetInsecure?: boolean;
  sourceInsecure?: boolean;
  plainHttp?: boolean;
  platform?: PlatformSpec;
  workDir: string;
  /** nydusd binary (default: this package's bin/nydusd) */
  nydusd?: string;
  credentials?: (domain: string) => Promise<Credentials | undefined>;
  /** mount timeout, ms (default 30 s as upstream) */
  mountTimeoutMs?: number;
}

export class CheckError extends Error {
  constructor(readonly rule: string, msg: string) {
    super(`${rule}: ${msg}`);
    this.name = 'CheckError';
  }
}

interface Side {
  ref: Reference;
  client: RegistryClient;
  manifest: Manifest;
  manifestDesc: Descriptor;
  config: ImageConfig;
}

export const DEFAULT_NYDUSD = path.resolve(__dirname, '../../bin/nydusd');

/** A file in the compared trees. */
export interface TreeEntry {
  type: 'f' | 'd' | 'l' | 'c' | 'b' | 'p';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  sha256?: string;
  link?: string;
  rdev?: string;
}

function normPath(p: string): string {
  const parts = p.split('/').filter((c) => c && c !== '.');
  if (parts.includes('..')) throw einval(`tar entry '${p}' escapes the root`);
  return parts.join('/');
}

/** A sink that hashes and counts what it is given. */
class HashSink extends Writable {
  private readonly h = createHash('sha256');
  bytes = 0;
  override _write(c: Buffer, _e: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.h.update(c);
    this.bytes += c.length;
    cb();
  }
  digest(): string {
    return this.h.digest('hex');
  }
}
const hashStream = (): HashSink => new HashSink();

/**
 * Apply one layer tar stream onto `tree` with OCI whiteout semantics: the
 * layer's whiteouts and opaque markers remove entries of the layers below,
 * then its own entries are added (hardlinks copy their target's record).
 */
export async function applyLayerTar(tree: Map<string, TreeEntry>, tar: Readable): Promise<void> {
  const adds: Array<[string, TreeEntry | string]> = [];
  const deletes: string[] = [];
  const opaques: string[] = [];
  const extract = tarStream.extract();
  const done = (async () => {
    for await (const entry of extract) {
      const h = entry.header;
      const p = normPath(h.name);
      const base = p.split('/').pop() ?? '';
      const dir = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '';
      if (base === '.wh..wh..opq') { opaques.push(dir); entry.resume(); continue; }
      if (base.startsWith('.wh.')) { deletes.push(dir ? `${dir}/${base.slice(4)}` : base.slice(4)); entry.resume(); continue; }
      const common = { mode: (h.mode ?? 0) & 0o7777, uid: h.uid ?? 0, gid: h.gid ?? 0, size: 0 };
      if (h.type === 'file' || h.type === 'contiguous-file') {
        const hs = hashStream();
        await pipeline(entry, hs);
        adds.push([p, { type: 'f', ...common, size: hs.bytes, sha256: hs.digest() }]);
        continue;
      }
      entry.resume();
      if (!p) continue; // the root itself
      if (h.type === 'directory') adds.push([p, { type: 'd', ...common }]);
      else if (h.type === 'symlink') adds.push([p, { type: 'l', ...common, size: Buffer.byteLength(h.linkname ?? ''), link: h.linkname ?? '' }]);
      else if (h.type === 'link') adds.push([p, normPath(h.linkname ?? '')]);
      else if (h.type === 'character-device' || h.type === 'block-device') adds.push([p, { type: h.type === 'block-device' ? 'b' : 'c', ...common, rdev: `${h.devmajor ?? 0}:${h.devminor ?? 0}` }]);
      else if (h.type === 'fifo') adds.push([p, { type: 'p', ...common }]);
    }
  })();
  await Promise.all([pipeline(tar, extract).catch((e) => { throw e; }), done]);
  const removeTree = (p: string, keepSelf: boolean) => {
    const prefix = p ? `${p}/` : '';
    for (const k of [...tree.keys()]) if (k.startsWith(prefix) || (!keepSelf && k === p)) tree.delete(k);
  };
  for (const d of opaques) removeTree(d, true);
  for (const d of deletes) removeTree(d, false);
  for (const [p, e] of adds) {
    // implicit parents, as the builder creates them
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join('/');
      const cur = tree.get(parent);
      if (!cur || cur.type !== 'd') {
        if (cur) removeTree(parent, false);
        tree.set(parent, { type: 'd', mode: 0o755, uid: 0, gid: 0, size: 0 });
      }
    }
    const rec = typeof e === 'string' ? tree.get(e) : e;
    if (!rec) throw einval(`hardlink ${p} points at missing ${String(e)}`);
    const old = tree.get(p);
    if (old?.type === 'd' && rec.type !== 'd') removeTree(p, false);
    if (old?.type === 'd' && rec.type === 'd') { tree.set(p, rec); continue; }
    tree.set(p, { ...rec });
  }
}

/** The tree under a mounted directory, in the same form. */
export async function treeOfDir(root: string): Promise<Map<string, TreeEntry>> {
  const out = new Map<string, TreeEntry>();
  const walk = async (rel: string): Promise<void> => {
    const names = await fs.promises.readdir(path.join(root, rel));
    for (const n of names.sort()) {
      const r = rel ? `${rel}/${n}` : n;
      const abs = path.join(root, r);
      const st = await fs.promises.lstat(abs);
      const common = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, size: 0 };
      if (st.isFile()) {
        const hs = hashStream();
        await pipeline(fs.createReadStream(abs), hs);
        if (hs.bytes !== st.size) throw eio(`${r}: read ${hs.bytes} bytes, stat says ${st.size}`);
        out.set(r, { type: 'f', ...common, size: st.size, sha256: hs.digest() });
      } else if (st.isDirectory()) {
        out.set(r, { type: 'd', ...common });
        await walk(r);
      } else if (st.isSymbolicLink()) {
        const link = await fs.promises.readlink(abs);
        out.set(r, { type: 'l', ...common, size: Buffer.byteLength(link), link });
      } else if (st.isCharacterDevice() || st.isBlockDevice()) {
        const major = Number((BigInt(st.rdev) >> 8n) & 0xfffn);
        const minor = Number((BigInt(st.rdev) & 0xffn) | ((BigInt(st.rdev) >> 12n) & 0xfff00n));
        out.set(r, { type: st.isBlockDevice() ? 'b' : 'c', ...common, rdev: `${major}:${minor}` });
      } else if (st.isFIFO()) out.set(r, { type: 'p', ...common });
    }
  };
  await walk('');
  return out;
}

/** Differences between two trees (empty when equal). */
export function diffTrees(want: Map<string, TreeEntry>, got: Map<string, TreeEntry>, limit = 50): string[] {
  const out: string[] = [];
  for (const [p, a] of want) {
    const b = got.get(p);
    if (!b) { out.push(`/${p}: missing in the Nydus image`); continue; }
    for (const k of ['type', 'mode', 'uid', 'gid', 'link', 'rdev', 'sha256'] as const) {
      if (a[k] !== b[k]) out.push(`/${p}: ${k} differs: source ${k === 'mode' ? (a[k] as number).toString(8) : String(a[k])}, nydus ${k === 'mode' ? (b[k] as number).toString(8) : String(b[k])}`);
    }
    if (a.type !== 'd' && a.size !== b.size) out.push(`/${p}: size differs: source ${a.size}, nydus ${b.size}`);
    if (out.length >= limit) return out;
  }
  for (const p of got.keys()) if (!want.has(p)) { out.push(`/${p}: only in the Nydus image`); if (out.length >= limit) break; }
  return out;
}

function decompressor(mt: string): Transform | undefined {
  const c = layerCompression(mt);
  if (c === 'gzip') return createGunzip();
  if (c === 'zstd') return new DecompressStream() as unknown as Transform;
  if (c === 'none') return undefined;
  throw einval(`layer media type ${mt} is not a tar layer`);
}

function isMounted(mnt: string): boolean {
  const real = fs.realpathSync(mnt);
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === real);
}

export class Checker {
  private readonly o: CheckOptions;
  private readonly platform: PlatformSpec;

  constructor(o: CheckOptions) {
    this.o = o;
    this.platform = o.platform ?? defaultPlatform();
  }

  private save(side: string, name: string, data: unknown): void {
    fs.writeFileSync(path.join(this.o.workDir, side, name), Buffer.isBuffer(data) ? data : JSON.stringify(data, null, 2));
  }

  /** Fetch a side's manifest and config (module doc, step 1). */
  private async parse(kind: 'source' | 'target', refStr: string, insecure: boolean): Promise<Side> {
    const ref = parseReference(refStr);
    const client = new RegistryClient({ plainHttp: this.o.plainHttp, insecure, credentials: this.o.credentials });
    const prefix = kind === 'target' ? 'nydus' : 'oci';
    let top = await client.fetchManifest(ref);
    if (isIndexType(top.descriptor.mediaType)) {
      this.save(kind, `${prefix}_index.json`, top.bytes);
      const idx = top.json as unknown as Index;
      const cands = (idx.manifests ?? []).filter((d) => !d.platform || (d.platform.os === 'linux' && d.platform.architecture === this.platform.architecture));
      let pick: Descriptor | undefined;
      const isNydusEntry = (d: Descriptor) => d.artifactType === MediaType.NydusManifestArtifact || !!d.platform?.['os.features']?.includes('nydus.remoteimage.v1');
      if (kind === 'target') pick = cands.find(isNydusEntry);
      else pick = cands.find((d) => d.platform && !isNydusEntry(d)) ?? cands.find((d) => !isNydusEntry(d));
      if (!pick && kind === 'target') {
        for (const d of cands) {
          const m = await client.fetchManifest(ref, d.digest);
          if (isNydusManifest(m.json as unknown as Manifest)) { pick = d; break; }
        }
      }
      if (!pick) throw new CheckError('parse', `${kind} index has no ${kind === 'target' ? 'Nydus ' : ''}manifest for linux/${this.platform.architecture}`);
      top = await client.fetchManifest(ref, pick.digest);
    }
    const manifest = top.json as unknown as Manifest;
    if (!manifest.config || !Array.isArray(manifest.layers)) throw new CheckError('parse', `${kind} manifest has no config or layers`);
    const config = await client.fetchJson<ImageConfig>(ref, manifest.config);
    this.save(kind, `${prefix}_manifest.json`, top.bytes);
    this.save(kind, `${prefix}_config.json`, config);
    return { ref, client, manifest, manifestDesc: top.descriptor, config };
  }

  private manifestRule(t: Side, s?: Side): void {
    const layers = t.manifest.layers;
    if (!isNydusManifest(t.manifest)) throw new CheckError('manifest', 'the last layer of the target is not a Nydus bootstrap layer (gzip tar with nydus-bootstrap: "true")');
    for (const [i, l] of layers.slice(0, -1).entries()) {
      if (l.mediaType !== MediaType.NydusBlob || l.annotations?.[Annotation.NydusBlob] !== 'true') {
        throw new CheckError('manifest', `target layer ${i} (${l.digest}) is not a Nydus blob layer`);
      }
    }
    const n = t.config.rootfs?.diff_ids?.length ?? 0;
    if (n === 0) throw new CheckError('manifest', 'target config has no diff_ids');
    if (n !== layers.length) throw new CheckError('manifest', `target has ${layers.length} layers but ${n} diff_ids`);
    if (s) {
      const sn = s.config.rootfs?.diff_ids?.length ?? 0;
      if (sn !== s.manifest.layers.length) throw new CheckError('manifest', `source has ${s.manifest.layers.length} layers but ${sn} diff_ids`);
      const strip = (c: Record<string, unknown> | undefined) => {
        const x = { ...(c ?? {}) };
        delete x.ArgsEscaped;
        delete x.Image;
        return JSON.stringify(x);
      };
      if (strip(s.config.config) !== strip(t.config.config)) throw new CheckError('manifest', 'the container config of source and target differ');
    }
  }

  /** Download and unpack the bootstrap layer; returns the bootstrap path. */
  private async bootstrapRule(t: Side): Promise<string> {
    const last = t.manifest.layers[t.manifest.layers.length - 1];
    const outDir = path.join(this.o.workDir, 'target', 'nydus_bootstrap');
    let tarDigest: string;
    try {
      ({ tarDigest } = await readBootstrapLayer(await t.client.fetchBlob(t.ref, last), outDir));
    } catch (err) {
      throw new CheckError('bootstrap', `cannot read the bootstrap layer: ${(err as Error).message}`);
    }
    const diffIds = t.config.rootfs.diff_ids;
    if (diffIds[diffIds.length - 1] !== tarDigest) throw new CheckError('bootstrap', `the bootstrap layer's tar digest ${tarDigest} is not the last diff_id ${diffIds[diffIds.length - 1]}`);
    const boot = path.join(outDir, 'image', 'image.boot');
    if (!fs.existsSync(boot)) throw new CheckError('bootstrap', 'the bootstrap layer has no image/image.boot');
    let image: RafsImage;
    try {
      image = RafsImage.open({ bootstrap: boot, blobDir: path.join(outDir, 'image') });
    } catch (err) {
      throw new CheckError('bootstrap', `image.boot does not load: ${(err as Error).message}`);
    }
    try {
      const r = checkImage(image, { verifyChunks: false });
      const ids = new Set(t.manifest.layers.slice(0, -1).filter((l) => !l.annotations?.[Annotation.NydusRef]).map((l) => l.digest.slice(7)));
      if (ids.size > 0) {
        for (const b of image.sb.blobs) if (!ids.has(b.blobId)) throw new CheckError('bootstrap', `the bootstrap references blob ${b.blobId}, which is no layer of the manifest`);
      }
      const out = { version: image.sb.meta.version, blobs: image.sb.blobs.map((b) => b.blobId), inodes: r.inodes, files: r.files, chunks: r.chunks };
      this.save('target', 'nydus_output.json', out);
      log.info(out, 'bootstrap is valid');
    } catch (err) {
      if (err instanceof CheckError) throw err;
      throw new CheckError('bootstrap', `image.boot is invalid: ${(err as Error).message}`);
    } finally {
      image.close();
    }
    return boot;
  }

  private async sourceTree(s: Side): Promise<Map<string, TreeEntry>> {
    const tree = new Map<string, TreeEntry>();
    for (const l of s.manifest.layers) {
      const stream = await s.client.fetchBlob(s.ref, l);
      const d = decompressor(l.mediaType);
      const pass = new Transform({ transform(c, _e, cb) { cb(null, c); } });
      const p = d ? pipeline(stream, d, pass) : pipeline(stream, pass);
      await Promise.all([p, applyLayerTar(tree, pass)]);
    }
    return tree;
  }

  /** Mount the target with nydusd and read its tree. */
  private async nydusTree(t: Side, bootstrap: string): Promise<Map<string, TreeEntry>> {
    const base = path.join(this.o.workDir, 'target', 'nydusd');
    const mnt = path.join(this.o.workDir, 'target', 'mnt');
    fs.mkdirSync(path.join(base, 'cache'), { recursive: true });
    fs.mkdirSync(mnt, { recursive: true });
    const creds = await t.client.credentialsFor(t.ref);
    const cfg = {
      version: 2,
      backend: { type: 'registry', registry: {
        scheme: t.client.scheme(t.ref), host: registryHost(t.ref.domain), repo: t.ref.repository,
        auth: creds ? basicAuth(creds) : '', skip_verify: !!this.o.targetInsecure, timeout: 30, connect_timeout: 10,
      } },
      cache: { type: 'blobcache', filecache: { work_dir: path.join(base, 'cache') } },
      rafs: { mode: 'direct', validate: true, enable_xattr: true, prefetch: { enable: true, threads: 4 } },
    };
    const cfgFile = path.join(base, 'config.json');
    fs.writeFileSync(cfgFile, JSON.stringify(cfg, null, 2), { mode: 0o600 });
    const bin = this.o.nydusd ?? DEFAULT_NYDUSD;
    const args = ['--config', cfgFile, '--mountpoint', mnt, '--bootstrap', bootstrap, '--apisock', path.join(base, 'api.sock'), '--log-level', 'warn'];
    let out = '';
    const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (d: Buffer) => { if (out.length < 16384) out += d.toString(); };
    proc.stdout.on('data', keep);
    proc.stderr.on('data', keep);
    let exited = false;
    const exit = new Promise<void>((r) => proc.on('close', () => { exited = true; r(); }));
    proc.on('error', (e) => { out += `spawn ${bin}: ${e.message}`; });
    try {
      const t0 = Date.now();
      while (!isMounted(mnt)) {
        if (exited) throw new CheckError('filesystem', `nydusd exited before mounting: ${out.trim().slice(0, 2000)}`);
        if (Date.now() - t0 > (this.o.mountTimeoutMs ?? 30_000)) throw new CheckError('filesystem', `nydusd did not mount within the timeout: ${out.trim().slice(0, 2000)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      try {
        return await treeOfDir(mnt);
      } catch (err) {
        throw new CheckError('filesystem', `reading the mounted Nydus image failed: ${(err as Error).message}; nydusd: ${out.trim().slice(0, 2000)}`);
      }
    } finally {
      if (!exited) proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      await exit;
      clearTimeout(timer);
    }
  }

  /** Run every rule; throws CheckError naming the first that fails. */
  async run(): Promise<{ rules: string[] }> {
    fs.rmSync(this.o.workDir, { recursive: true, force: true });
    fs.mkdirSync(path.join(this.o.workDir, 'target'), { recursive: true });
    fs.mkdirSync(path.join(this.o.workDir, 'source'), { recursive: true });
    const rules: string[] = [];
    const t = await this.parse('target', this.o.target, !!this.o.targetInsecure);
    const s = this.o.source ? await this.parse('source', this.o.source, !!this.o.sourceInsecure) : undefined;
    try {
      this.manifestRule(t, s);
      rules.push('manifest');
      const boot = await this.bootstrapRule(t);
      rules.push('bootstrap');
      if (s) {
        const want = await this.sourceTree(s);
        const got = await this.nydusTree(t, boot);
        const diff = diffTrees(want, got);
        if (diff.length) throw new CheckError('filesystem', `the Nydus image differs from its source:\n  ${diff.join('\n  ')}`);
        log.info({ entries: want.size }, 'filesystems are equal');
        rules.push('filesystem');
      }
      return { rules };
    } finally {
      await Promise.allSettled([t.client.close(), s?.client.close()]);
    }
  }
}

/** `nydusify check` (module doc). */
export function check(o: CheckOptions): Promise<{ rules: string[] }> {
  return new Checker(o).run();
}
