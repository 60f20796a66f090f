/**
 * OCI image-layout archives (nydusify `--source-archive` / `--target-archive`):
 * a tar (plain, gzip or zstd) holding `oci-layout`, `index.json` and
 * `blobs/sha256/<hex>`, as `skopeo copy ... oci-archive:` and
 * `docker save`-style OCI exports write them.
 *  - OciArchiveSource reads one like a registry: the image is the index.json
 *    entry whose `org.opencontainers.image.ref.name` is the reference's tag,
 *    else the only entry, else index.json itself as an index; every blob and
 *    manifest is checked against its digest and size.
 *  - OciArchiveSink receives what a push would send (blobs, manifests by
 *    digest, the top one by tag) and writes the archive at `finish()`.
 * Hostile archives: only those three names are extracted (anything else,
 * links and paths outside `blobs/sha256/<64 hex>` are ignored), sizes are
 * bounded, nothing is written outside the work directory.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable, Transform } from 'node:stream';
import { createGunzip } from 'node:zlib';
import * as tarStream from 'tar-stream';
import { einval, eio } from '../common/errno';
import { type FetchedManifest, MAX_MANIFEST_SIZE, type PushBlobOptions, sha256Digest, verifyingStream } from './client';
import { type Descriptor, documentType } from './media-types';
import type { Reference } from './reference';

const REF_NAME = 'org.opencontainers.image.ref.name';
const BLOB_RE = /^(?:\.\/)?blobs\/sha256\/([0-9a-f]{64})$/;
const META_RE = /^(?:\.\/)?(index\.json|oci-layout)$/;

/** Where images come from: a registry (RegistryClient) or an archive. */
export interface ImageSource {
  fetchManifest(ref: Reference, digest?: string): Promise<FetchedManifest>;
  fetchBlobBytes(ref: Reference, desc: Descriptor): Promise<Buffer>;
  fetchBlob(ref: Reference, desc: Descriptor): Promise<Readable>;
  close(): Promise<void>;
}

/** Where converted images go. */
export interface ImageSink {
  pushBlob(ref: Reference, desc: Descriptor, source: () => Readable | Buffer | Promise<Readable | Buffer>, o?: PushBlobOptions): Promise<unknown>;
  pushManifest(ref: Reference, tagOrDigest: string, mediaType: string, bytes: Buffer): Promise<string>;
  close(): Promise<void>;
}


/** Decompress by magic: gzip, zstd or plain. */
async function openTar(file: string): Promise<Readable> {
  const fd = await fs.promises.open(file, 'r');
  const head = Buffer.alloc(4);
  await fd.read(head, 0, 4, 0);
  await fd.close();
  const raw = fs.createReadStream(file);
  if (head[0] === 0x1f && head[1] === 0x8b) return raw.pipe(createGunzip());
  if (head.readUInt32LE(0) === 0xfd2fb528) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { DecompressStream } = require('zstd-napi') as { DecompressStream: new () => Transform };
    return raw.pipe(new DecompressStream());
  }
  return raw;
}

export class OciArchiveSource implements ImageSource {
  private constructor(private readonly dir: string, private readonly index: { manifests?: Descriptor[] } & Record<string, unknown>, private readonly indexBytes: Buffer) {}

  /** Extract `file` into `workDir` (a fresh directory) and open it. */
  static async open(file: string, workDir: string): Promise<OciArchiveSource> {
    const st = await fs.promises.stat(file).catch(() => undefined);
    if (!st?.isFile()) throw einval(`source archive ${file} is not a file`);
    fs.mkdirSync(path.join(workDir, 'blobs', 'sha256'), { recursive: true });
    const extract = tarStream.extract();
    extract.on('entry', (h, stream, next) => {
      const name = h.name;
      const blob = BLOB_RE.exec(name);
      const meta = META_RE.exec(name);
      if (h.type !== 'file' || (!blob && !meta) || (meta && (h.size ?? 0) > MAX_MANIFEST_SIZE)) {
        stream.resume();
        stream.on('end', next);
        return;
      }
      const out = blob ? path.join(workDir, 'blobs', 'sha256', blob[1]) : path.join(workDir, meta![1]);
      pipeline(stream, fs.createWriteStream(out, { mode: 0o600 })).then(() => next(), next);
    });
    await pipeline(await openTar(file), extract).catch((err: Error) => { throw einval(`source archive ${file}: ${err.message}`); });
    const layout = path.join(workDir, 'oci-layout');
    if (!fs.existsSync(layout)) throw einval(`source archive ${file} has no oci-layout (not an OCI image layout archive)`);
    const idxPath = path.join(workDir, 'index.json');
    if (!fs.existsSync(idxPath)) throw einval(`source archive ${file} has no index.json`);
    const bytes = fs.readFileSync(idxPath);
    let index: { manifests?: Descriptor[] } & Record<string, unknown>;
    try { index = JSON.parse(bytes.toString('utf8')); } catch { throw einval(`source archive ${file}: index.json is not JSON`); }
    if (!index || !Array.isArray(index.manifests) || index.manifests.length === 0) throw einval(`source archive ${file}: index.json lists no manifest`);
    return new OciArchiveSource(workDir, index, bytes);
  }

  private blobPath(digest: string): string {
    const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
    if (!m) throw einval(`unsupported digest ${JSON.stringify(digest)}`);
    const p = path.join(this.dir, 'blobs', 'sha256', m[1]);
    if (!fs.existsSync(p)) throw eio(`blob ${digest} is not in the archive`);
    return p;
  }

  async fetchManifest(ref: Reference, digest?: string): Promise<FetchedManifest> {
    let desc: Descriptor | undefined;
    if (!digest) {
      const ms = this.index.manifests!;
      desc = ms.find((d) => ref.tag && d.annotations?.[REF_NAME] === ref.tag) ?? (ms.length === 1 ? ms[0] : undefined);
      if (!desc) {
        // several images and none named by the tag: the index itself
        return { descriptor: { mediaType: documentType(this.index), digest: sha256Digest(this.indexBytes), size: this.indexBytes.length }, bytes: this.indexBytes, json: this.index };
      }
      digest = desc.digest;
    }
    const p = this.blobPath(digest);
    const size = fs.statSync(p).size;
    if (size > MAX_MANIFEST_SIZE) throw einval(`manifest ${digest} of ${size} bytes is too large`);
    const bytes = fs.readFileSync(p);
    if (sha256Digest(bytes) !== digest) throw eio(`manifest ${digest}: content digest is ${sha256Digest(bytes)}`);
    let json: Record<string, unknown>;
    try { json = JSON.parse(bytes.toString('utf8')); } catch { throw einval(`manifest ${digest} is not JSON`); }
    return { descriptor: { mediaType: desc?.mediaType ?? documentType(json), digest, size: bytes.length }, bytes, json };
  }

  async fetchBlobBytes(ref: Reference, desc: Descriptor): Promise<Buffer> {
    if (desc.size > MAX_MANIFEST_SIZE) throw einval(`blob ${desc.digest} of ${desc.size} bytes is too large to read into memory`);
    const parts: Buffer[] = [];
    for await (const c of await this.fetchBlob(ref, desc)) parts.push(c as Buffer);
    return Buffer.concat(parts);
  }

  async fetchBlob(_ref: Reference, desc: Descriptor): Promise<Readable> {
    return fs.createReadStream(this.blobPath(desc.digest)).pipe(verifyingStream(desc.digest, desc.size, `blob ${desc.digest}`));
  }

  async close(): Promise<void> {}
}

export class OciArchiveSink implements ImageSink {
  private top: Descriptor | undefined;

  constructor(private readonly dir: string) {
    fs.mkdirSync(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  }

  private blobPath(digest: string): string {
    const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
    if (!m) throw einval(`unsupported digest ${JSON.stringify(digest)}`);
    return path.join(this.dir, 'blobs', 'sha256', m[1]);
  }

  async pushBlob(_ref: Reference, desc: Descriptor, source: () => Readable | Buffer | Promise<Readable | Buffer>): Promise<'exists' | 'uploaded'> {
    const out = this.blobPath(desc.digest);
    if (fs.existsSync(out)) return 'exists';
    const src = await source();
    const tmp = `${out}.tmp`;
    await pipeline(Buffer.isBuffer(src) ? Readable.from([src]) : src, verifyingStream(desc.digest, desc.size, `blob ${desc.digest}`), fs.createWriteStream(tmp));
    fs.renameSync(tmp, out);
    return 'uploaded';
  }

  async pushManifest(_ref: Reference, tagOrDigest: string, mediaType: string, bytes: Buffer): Promise<string> {
    const digest = sha256Digest(bytes);
    if (tagOrDigest.startsWith('sha256:') && tagOrDigest !== digest) throw einval(`pushManifest: bytes have digest ${digest}, not ${tagOrDigest}`);
    fs.writeFileSync(this.blobPath(digest), bytes);
    if (!tagOrDigest.startsWith('sha256:')) this.top = { mediaType, digest, size: bytes.length, annotations: { [REF_NAME]: tagOrDigest } };
    return digest;
  }

  /** Write `file`: oci-layout, index.json naming the tagged manifest, the blobs. */
  async finish(file: string): Promise<void> {
    if (!this.top) throw einval('nothing was tagged: no image to write to the archive');
    const pack = tarStream.pack();
    const out = fs.createWriteStream(file);
    const done = pipeline(pack, out);
    const add = (name: string, data: Buffer) => new Promise<void>((resolve, reject) => pack.entry({ name, mode: 0o644 }, data, (e) => (e ? reject(e) : resolve())));
    await add('oci-layout', Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })));
    await add('index.json', Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [this.top] })));
    for (const hex of fs.readdirSync(path.join(this.dir, 'blobs', 'sha256')).filter((n) => /^[0-9a-f]{64}$/.test(n)).sort()) {
      const p = path.join(this.dir, 'blobs', 'sha256', hex);
      const size = fs.statSync(p).size;
      await new Promise<void>((resolve, reject) => {
        const entry = pack.entry({ name: `blobs/sha256/${hex}`, size, mode: 0o644 }, (e) => (e ? reject(e) : resolve()));
        fs.createReadStream(p).on('error', reject).pipe(entry);
      });
    }
    pack.finalize();
    await done;
  }

  async close(): Promise<void> {}
}
