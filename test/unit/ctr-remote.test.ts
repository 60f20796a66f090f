/**
 * ctr-remote rpull without root: label construction, chain IDs (values
 * computed independently with sha256sum from the OCI spec's definition),
 * and the whole pull against an in-memory fake of containerd's gRPC API on
 * a unix socket (content store, images, leases, a snapshotter that takes
 * Nydus data layers remotely like nydus-snapshotter, a diff service that
 * "applies" by hashing the uncompressed layer) with an in-memory registry.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { Readable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ContainerdClient, LOADER_OPTIONS, PROTO_ROOT, isAlreadyExists } from '../../src/snapshotter/containerd-client';
import {
  Label, MAX_LABEL_SIZE, boundedLayerList, chainIds, layerLabels, manifestGcLabels, mergeSource, pickManifest, rpull,
  type ImageSource,
} from '../../src/snapshotter/rpull';
import { run } from '../../src/bin/ctr-remote';
import { parseReference, type Descriptor, type Manifest, type Reference } from '../../src/remote';

async function rejects(fn: () => Promise<unknown>, re: RegExp): Promise<void> {
  let e: unknown;
  try {
    await fn();
  } catch (x) {
    e = x;
  }
  assert.ok(e instanceof Error, `expected a rejection matching ${re}`);
  assert.match((e as Error).message, re);
}

const sha = (b: Buffer | string): string => `sha256:${crypto.createHash('sha256').update(b).digest('hex')}`;

// ---------------------------------------------------------------- pure functions

const D0 = 'sha256:c6f988f4874bb0add23a778f753c65efe992244e148a1d2ec2a8b664fb66bbd1';
const D1 = 'sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef';

test('chainIds: C0 = D0, Cn = sha256(Cn-1 + " " + Dn) (values from sha256sum)', () => {
  assert.equal(chainIds([]), []);
  assert.equal(chainIds([D0]), [D0]);
  assert.equal(chainIds([D0, D1]), [D0, 'sha256:c3191d32a37d7159b2e30830937d2e30268ad6c375a773a8994911a3aba9b93f']);
  assert.equal(chainIds([D0, D1, D1])[2], 'sha256:b3f2677e2ce27278b9d7cab94db2e384b4bc04278000f97c62830f0707f3a865');
  assert.throws(() => chainIds(['sha256:xyz']), /invalid diff id/);
  assert.throws(() => chainIds(['md5:0123']), /invalid diff id/);
});

test('boundedLayerList: as many digests as fit under 4096 bytes with the key', () => {
  const digests = Array.from({ length: 100 }, (_, i) => sha(String(i)));
  const key = Label.CriImageLayers;
  const s = boundedLayerList(key, digests);
  assert.ok(key.length + s.length <= MAX_LABEL_SIZE);
  const n = s.split(',').length;
  assert.equal(s.split(','), digests.slice(0, n));
  // one more would not fit
  assert.ok(key.length + s.length + 1 + digests[n].length > MAX_LABEL_SIZE);
  assert.is(boundedLayerList(key, digests.slice(0, 2)), `${digests[0]},${digests[1]}`);
  assert.is(boundedLayerList(key, []), '');
});

test('layerLabels: inherited annotations + snapshot.ref + cri.* + stargz.*', () => {
  const layers: Descriptor[] = [
    { mediaType: 'application/vnd.oci.image.layer.nydus.blob.v1', digest: sha('a'), size: 1, annotations: { 'containerd.io/snapshot/nydus-blob': 'true', 'containerd.io/uncompressed': sha('a'), 'org.example': 'x' } },
    { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha('b'), size: 2, annotations: { 'containerd.io/snapshot/nydus-bootstrap': 'true', 'containerd.io/snapshot/nydus-fs-version': '6' } },
  ];
  const ref = '127.0.0.1:5000/app:nydus';
  const m = sha('manifest');
  const l0 = layerLabels({ ref, manifestDigest: m, layers, index: 0, chainId: sha('c0') });
  assert.equal(l0, {
    'containerd.io/snapshot/nydus-blob': 'true',
    'containerd.io/snapshot.ref': sha('c0'),
    'containerd.io/snapshot/cri.image-ref': ref,
    'containerd.io/snapshot/cri.manifest-digest': m,
    'containerd.io/snapshot/cri.layer-digest': sha('a'),
    'containerd.io/snapshot/cri.image-layers': `${sha('a')},${sha('b')}`,
    'containerd.io/snapshot/remote/stargz.reference': ref,
    'containerd.io/snapshot/remote/stargz.digest': sha('a'),
    'containerd.io/snapshot/remote/stargz.layers': `${sha('a')},${sha('b')}`,
  });
  const l1 = layerLabels({ ref, manifestDigest: m, layers, index: 1, chainId: sha('c1') });
  assert.is(l1['containerd.io/snapshot/nydus-bootstrap'], 'true');
  assert.is(l1['containerd.io/snapshot/nydus-fs-version'], '6');
  assert.is(l1['containerd.io/snapshot/cri.image-layers'], sha('b'));
  assert.is(l1['containerd.io/snapshot/cri.layer-digest'], sha('b'));
  // an oversized annotation is dropped, not sent
  layers[1].annotations!['containerd.io/snapshot/huge'] = 'x'.repeat(5000);
  assert.not.ok('containerd.io/snapshot/huge' in layerLabels({ ref, manifestDigest: m, layers, index: 1, chainId: sha('c1') }));
});

test('manifestGcLabels, mergeSource, pickManifest', () => {
  const m = { schemaVersion: 2, config: { mediaType: 'c', digest: sha('cfg'), size: 1 }, layers: [{ mediaType: 'l', digest: sha('l0'), size: 1 }, { mediaType: 'l', digest: sha('l1'), size: 1 }] } as Manifest;
  assert.equal(manifestGcLabels(m), {
    'containerd.io/gc.ref.content.config': sha('cfg'),
    'containerd.io/gc.ref.content.l.0': sha('l0'),
    'containerd.io/gc.ref.content.l.1': sha('l1'),
  });
  assert.is(mergeSource(undefined, 'a/b'), 'a/b');
  assert.is(mergeSource('x/y', 'a/b'), 'a/b,x/y');
  assert.is(mergeSource('a/b,x/y', 'a/b'), 'a/b,x/y');
  const oci = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha('oci'), size: 1, platform: { os: 'linux', architecture: 'amd64' } };
  const nyd = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha('nydus'), size: 1, platform: { os: 'linux', architecture: 'amd64', 'os.features': ['nydus.remoteimage.v1'] } };
  const arm = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha('arm'), size: 1, platform: { os: 'linux', architecture: 'arm64' } };
  const idx = { schemaVersion: 2, manifests: [arm, oci, nyd] };
  const amd64 = { os: 'linux', architecture: 'amd64' };
  assert.is(pickManifest(idx, amd64, true).digest, sha('nydus'));
  assert.is(pickManifest(idx, amd64, false).digest, sha('oci'));
  assert.is(pickManifest(idx, { os: 'linux', architecture: 'arm64' }, true).digest, sha('arm'));
  assert.throws(() => pickManifest(idx, { os: 'linux', architecture: 's390x' }, true), /no manifest for platform linux\/s390x/);
  // a --merge-platform index: the artifactType entry has the Nydus config type containerd will not run
  const merged = { schemaVersion: 2, manifests: [oci, { ...oci, digest: sha('merged-nydus'), artifactType: 'application/vnd.nydus.image.manifest.v1+json' }] };
  assert.is(pickManifest(merged, amd64, true).digest, sha('oci'));
  assert.is(pickManifest(merged, amd64, false).digest, sha('oci'));
});

// ---------------------------------------------------------------- fake containerd

interface Call { rpc: string; ns?: string; lease?: string; req: Record<string, unknown> }
interface Snap { name: string; parent: string; kind: string; labels: Record<string, string> }

function loadService(file: string, name: string): grpc.ServiceDefinition {
  const def = protoLoader.loadSync(file, { ...LOADER_OPTIONS, includeDirs: [PROTO_ROOT] });
  return def[name] as grpc.ServiceDefinition;
}

const err = (code: grpc.status, details: string) => Object.assign(new Error(details), { code, details });

class FakeContainerd {
  calls: Call[] = [];
  blobs = new Map<string, { data: Buffer; labels: Record<string, string> }>();
  writes: Array<Record<string, unknown>> = [];
  images = new Map<string, Record<string, unknown>>();
  leases = new Set<string>();
  snaps = new Map<string, Snap>();
  /** keys whose Write should first answer "locked" this many times */
  locked = new Map<string, number>();
  /** refs whose Write requests are never answered */
  stall = new Set<string>();
  server = new grpc.Server();
  sock = '';

  /** nydus-snapshotter's rule: data layers with snapshot.ref are committed at once (AlreadyExists) */
  constructor(readonly remoteNydusBlobs: boolean) {}

  private note(rpc: string, call: { metadata: grpc.Metadata; request?: unknown }, req: unknown): void {
    this.calls.push({ rpc, ns: call.metadata.get('containerd-namespace')[0] as string, lease: call.metadata.get('containerd-lease')[0] as string | undefined, req: req as Record<string, unknown> });
  }

  async start(dir: string): Promise<string> {
    type U = grpc.ServerUnaryCall<Record<string, any>, unknown>;
    type CB = grpc.sendUnaryData<unknown>;
    const unary = (rpc: string, fn: (req: Record<string, any>) => unknown) => (call: U, cb: CB) => {
      this.note(rpc, call, call.request);
      try {
        cb(null, fn(call.request));
      } catch (e) {
        cb(e as grpc.ServiceError);
      }
    };
    const info = (d: string) => {
      const b = this.blobs.get(d);
      if (!b) throw err(grpc.status.NOT_FOUND, `content digest ${d}: not found`);
      return { digest: d, size: b.data.length, labels: b.labels };
    };
    this.server.addService(loadService('containerd/services/content/v1/content.proto', 'containerd.services.content.v1.Content'), {
      Info: unary('Content.Info', (r) => ({ info: info(r.digest) })),
      Update: unary('Content.Update', (r) => {
        const b = this.blobs.get(r.info.digest);
        if (!b) throw err(grpc.status.NOT_FOUND, 'not found');
        for (const p of r.update_mask.paths as string[]) {
          const k = p.replace(/^labels\./, '');
          if (r.info.labels[k]) b.labels[k] = r.info.labels[k];
          else delete b.labels[k];
        }
        return { info: info(r.info.digest) };
      }),
      Status: unary('Content.Status', () => { throw err(grpc.status.NOT_FOUND, 'no ingest'); }),
      Abort: unary('Content.Abort', () => ({})),
      Write: (call: grpc.ServerDuplexStream<Record<string, any>, unknown>) => {
        let ref = '';
        let buf = Buffer.alloc(0);
        let expected = '';
        let total = 0;
        let dead = false;
        const fail = (e: Error) => { dead = true; call.emit('error', e); };
        call.on('data', (r: Record<string, any>) => {
          if (dead) return;
          this.note('Content.Write', call, r);
          this.writes.push({ ...r, dataLength: (r.data as Buffer).length, data: undefined });
          if (!ref) {
            ref = r.ref;
            if (this.stall.has(ref)) { dead = true; return; }
            const n = this.locked.get(ref) ?? 0;
            if (n > 0) {
              this.locked.set(ref, n - 1);
              fail(err(grpc.status.UNAVAILABLE, `ref ${ref} locked for 1s`));
              return;
            }
          }
          if (r.expected) expected = r.expected;
          if (r.total) total = r.total;
          if (r.expected && this.blobs.has(r.expected)) {
            fail(err(grpc.status.ALREADY_EXISTS, `blob with expected digest ${r.expected} exists`));
            return;
          }
          if (r.offset !== buf.length) { fail(err(grpc.status.OUT_OF_RANGE, 'bad offset')); return; }
          buf = Buffer.concat([buf, r.data as Buffer]);
          if (r.action === 'COMMIT') {
            if (total && buf.length !== total) { fail(err(grpc.status.FAILED_PRECONDITION, 'unexpected commit size')); return; }
            if (sha(buf) !== expected) { fail(err(grpc.status.FAILED_PRECONDITION, `unexpected commit digest ${sha(buf)}, expected ${expected}`)); return; }
            this.blobs.set(expected, { data: buf, labels: { ...r.labels } });
            call.write({ action: 'COMMIT', offset: buf.length, total, digest: expected });
            call.end();
            return;
          }
          call.write({ action: r.action, offset: buf.length, total, digest: sha(buf) });
        });
      },
    });
    this.server.addService(loadService('containerd/services/images/v1/images.proto', 'containerd.services.images.v1.Images'), {
      Get: unary('Images.Get', (r) => {
        const i = this.images.get(r.name);
        if (!i) throw err(grpc.status.NOT_FOUND, `image "${r.name}": not found`);
        return { image: i };
      }),
      Create: unary('Images.Create', (r) => {
        if (this.images.has(r.image.name)) throw err(grpc.status.ALREADY_EXISTS, 'image exists');
        this.images.set(r.image.name, r.image);
        return { image: r.image };
      }),
      Update: unary('Images.Update', (r) => {
        const i = this.images.get(r.image.name);
        if (!i) throw err(grpc.status.NOT_FOUND, 'no image');
        for (const p of r.update_mask.paths as string[]) (i as Record<string, unknown>)[p] = r.image[p];
        return { image: i };
      }),
    });
    this.server.addService(loadService('containerd/services/leases/v1/leases.proto', 'containerd.services.leases.v1.Leases'), {
      Create: unary('Leases.Create', (r) => { this.leases.add(r.id); return { lease: { id: r.id, labels: r.labels } }; }),
      Delete: unary('Leases.Delete', (r) => { if (!this.leases.delete(r.id)) throw err(grpc.status.NOT_FOUND, 'no lease'); return {}; }),
    });
    this.server.addService(loadService('containerd/services/snapshots/v1/snapshots.proto', 'containerd.services.snapshots.v1.Snapshots'), {
      Prepare: unary('Snapshots.Prepare', (r) => {
        if (this.snaps.has(r.key)) throw err(grpc.status.ALREADY_EXISTS, 'key exists');
        const ref = r.labels['containerd.io/snapshot.ref'];
        if (this.remoteNydusBlobs && ref && r.labels['containerd.io/snapshot/nydus-blob'] === 'true') {
          this.snaps.set(ref, { name: ref, parent: r.parent, kind: 'COMMITTED', labels: r.labels });
          throw err(grpc.status.ALREADY_EXISTS, `target snapshot "${ref}": already exists`);
        }
        this.snaps.set(r.key, { name: r.key, parent: r.parent, kind: 'ACTIVE', labels: r.labels });
        return { mounts: [{ type: 'bind', source: `/fake/${r.key}`, target: '', options: ['rw', 'rbind'] }] };
      }),
      Commit: unary('Snapshots.Commit', (r) => {
        const s = this.snaps.get(r.key);
        if (!s || s.kind !== 'ACTIVE') throw err(grpc.status.NOT_FOUND, 'no active snapshot');
        if (this.snaps.has(r.name)) throw err(grpc.status.ALREADY_EXISTS, 'exists');
        this.snaps.delete(r.key);
        this.snaps.set(r.name, { ...s, name: r.name, kind: 'COMMITTED', labels: r.labels });
        return {};
      }),
      Stat: unary('Snapshots.Stat', (r) => {
        const s = this.snaps.get(r.key);
        if (!s) throw err(grpc.status.NOT_FOUND, `snapshot ${r.key} does not exist`);
        return { info: s };
      }),
      Remove: unary('Snapshots.Remove', (r) => { if (!this.snaps.delete(r.key)) throw err(grpc.status.NOT_FOUND, 'no snapshot'); return {}; }),
    });
    this.server.addService(loadService('containerd/services/diff/v1/diff.proto', 'containerd.services.diff.v1.Diff'), {
      Apply: unary('Diff.Apply', (r) => {
        const b = this.blobs.get(r.diff.digest);
        if (!b) throw err(grpc.status.NOT_FOUND, 'layer not in content store');
        if (!String(r.diff.media_type).endsWith('gzip')) throw err(grpc.status.INVALID_ARGUMENT, `unsupported media type ${r.diff.media_type}`);
        const raw = zlib.gunzipSync(b.data);
        return { applied: { media_type: 'application/vnd.oci.image.layer.v1.tar', digest: sha(raw), size: raw.length } };
      }),
    });
    this.sock = path.join(dir, 'containerd.sock');
    await new Promise<void>((resolve, reject) => this.server.bindAsync(`unix:${this.sock}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
    return this.sock;
  }

  stop(): Promise<void> {
    return new Promise((r) => this.server.tryShutdown(() => r()));
  }
}

// ---------------------------------------------------------------- fake registry (ImageSource)

interface FakeImage { ref: Reference; manifest: Buffer; config: Buffer; blobs: Map<string, Buffer>; layers: Descriptor[]; diffIds: string[] }

class FakeRegistry implements ImageSource {
  fetched: string[] = [];
  constructor(readonly images: FakeImage[]) {}
  private find(ref: Reference): FakeImage {
    const i = this.images.find((x) => x.ref.repository === ref.repository && x.ref.tag === ref.tag);
    if (!i) throw Object.assign(new Error('not found'), { code: 'ENOENT' });
    return i;
  }
  async fetchManifest(ref: Reference, digest?: string) {
    const i = this.find(ref);
    this.fetched.push(`manifest:${digest ?? ref.tag}`);
    return { descriptor: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha(i.manifest), size: i.manifest.length }, bytes: i.manifest, json: JSON.parse(i.manifest.toString()) as Record<string, unknown> };
  }
  async fetchBlobBytes(ref: Reference, desc: Descriptor) {
    this.fetched.push(desc.digest);
    const b = this.find(ref).blobs.get(desc.digest);
    if (!b) throw new Error('no blob');
    return b;
  }
  async fetchBlob(ref: Reference, desc: Descriptor) {
    return Readable.from([await this.fetchBlobBytes(ref, desc)]);
  }
}

function makeImage(refs: string, layers: Array<{ raw: Buffer; nydusBlob?: boolean; bootstrap?: boolean }>): FakeImage {
  const blobs = new Map<string, Buffer>();
  const descs: Descriptor[] = [];
  const diffIds: string[] = [];
  for (const l of layers) {
    if (l.nydusBlob) {
      blobs.set(sha(l.raw), l.raw);
      descs.push({ mediaType: 'application/vnd.oci.image.layer.nydus.blob.v1', digest: sha(l.raw), size: l.raw.length, annotations: { 'containerd.io/snapshot/nydus-blob': 'true' } });
      diffIds.push(sha(l.raw));
    } else {
      const gz = zlib.gzipSync(l.raw);
      blobs.set(sha(gz), gz);
      descs.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha(gz), size: gz.length, ...(l.bootstrap ? { annotations: { 'containerd.io/snapshot/nydus-bootstrap': 'true', 'containerd.io/snapshot/nydus-fs-version': '6' } } : {}) });
      diffIds.push(sha(l.raw));
    }
  }
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } }));
  blobs.set(sha(config), config);
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length }, layers: descs }));
  return { ref: parseReference(refs), manifest, config, blobs, layers: descs, diffIds };
}

let dir = '';
test.before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctr-remote-unit-')); });
test.after(() => { fs.rmSync(dir, { recursive: true, force: true }); });

test('Content.Write: bounded chunks, offsets, ref/total/expected first, labels on COMMIT; exists; locked ref retried; headers', async () => {
  const fake = new FakeContainerd(false);
  const sock = await fake.start(fs.mkdtempSync(path.join(dir, 'w-')));
  const cd = new ContainerdClient({ address: sock, namespace: 'testns' }).withLease('L1');
  try {
    const data = crypto.randomBytes((5 << 19) + 7); // 2.5 MiB + 7
    const r = await cd.contentWrite('layer-x', Readable.from([data.subarray(0, 100), data.subarray(100)]), { expected: sha(data), total: data.length, labels: { a: 'b' }, chunkSize: 1 << 20 });
    assert.is(r, 'written');
    const ws = fake.writes;
    assert.equal(ws.map((w) => w.action), ['WRITE', 'WRITE', 'WRITE', 'WRITE', 'COMMIT']);
    assert.equal(ws.map((w) => w.dataLength), [100, 1 << 20, 1 << 20, data.length - 100 - (2 << 20), 0]);
    assert.equal(ws.map((w) => w.offset), [0, 100, 100 + (1 << 20), 100 + (2 << 20), data.length]);
    assert.is(ws[0].ref, 'layer-x');
    assert.is(ws[0].expected, sha(data));
    assert.is(ws[0].total, data.length);
    assert.equal(ws[4].labels, { a: 'b' });
    assert.ok(fake.blobs.get(sha(data))!.data.equals(data));
    assert.ok(fake.calls.every((c) => c.ns === 'testns' && c.lease === 'L1'));
    // again: AlreadyExists → 'exists'
    assert.is(await cd.contentWrite('layer-x', data, { expected: sha(data), total: data.length }), 'exists');
    // a locked ref is retried while nothing was consumed
    fake.locked.set('layer-y', 2);
    const small = Buffer.from('hello');
    assert.is(await cd.contentWrite('layer-y', small, { expected: sha(small), total: 5 }), 'written');
    // the wrong size is caught before commit; a wrong digest by containerd's commit
    await rejects(() => cd.contentWrite('layer-z', Buffer.from('abc'), { expected: sha('abc'), total: 4 }), /got 3 bytes, descriptor says 4/);
    await rejects(() => cd.contentWrite('layer-z', Buffer.from('abd'), { expected: sha('abc'), total: 3 }), /unexpected commit digest/);
    const e = await cd.contentWrite('layer-q', Buffer.from('abcdef'), { expected: sha('abcdef'), total: 3 }).catch((x: unknown) => x);
    assert.match(String(e), /larger than its descriptor/);
    // a containerd that stops answering: the stream is cancelled after the call timeout
    fake.stall.add('stuck');
    const quick = new ContainerdClient({ address: sock, timeoutMs: 300 });
    await rejects(() => quick.contentWrite('stuck', Buffer.from('abc'), { expected: sha('abc'), total: 3 }), /no reply from containerd for 0 s/);
    quick.close();
    // empty blob: one COMMIT
    fake.writes = [];
    assert.is(await cd.contentWrite('empty', Buffer.alloc(0), { expected: sha(''), total: 0 }), 'written');
    assert.equal(fake.writes.map((w) => w.action), ['COMMIT']);
  } finally {
    cd.close();
    await fake.stop();
  }
});

test('client errors: NotFound / AlreadyExists mapped; unreachable socket named', async () => {
  const cd = new ContainerdClient({ address: path.join(dir, 'none.sock'), timeoutMs: 2000 });
  const e = await cd.imageGet('x').catch((x: unknown) => x as Error);
  assert.instance(e, Error);
  assert.match((e as Error).message, /containerd Images\.Get: .*none\.sock/);
  cd.close();
});

async function pull(fake: FakeContainerd, reg: FakeRegistry, ref: string, snapshotter: string) {
  const cd = new ContainerdClient({ address: fake.sock, namespace: 'default' });
  try {
    return await rpull(cd, reg, { ref: parseReference(ref), snapshotter, platform: { os: 'linux', architecture: 'amd64' } });
  } finally {
    cd.close();
  }
}

test('rpull of a Nydus image: data layers taken remotely and never fetched, bootstrap applied, labels, lease, image record', async () => {
  const fake = new FakeContainerd(true);
  await fake.start(fs.mkdtempSync(path.join(dir, 'n-')));
  const img = makeImage('127.0.0.1:5000/app:nydus', [
    { raw: crypto.randomBytes(3000), nydusBlob: true },
    { raw: crypto.randomBytes(2000), nydusBlob: true },
    { raw: Buffer.from('bootstrap tar'), bootstrap: true },
  ]);
  const reg = new FakeRegistry([img]);
  try {
    const r = await pull(fake, reg, '127.0.0.1:5000/app:nydus', 'nydus');
    assert.is(r.name, '127.0.0.1:5000/app:nydus');
    assert.ok(r.nydus);
    assert.equal(r.layers, ['remote', 'remote', 'applied']);
    const chain = chainIds(img.diffIds);
    assert.equal(r.chainIds, chain);
    // registry: manifest, config, bootstrap only
    assert.equal(reg.fetched, ['manifest:nydus', sha(img.config), img.layers[2].digest]);
    assert.not.ok(fake.blobs.has(img.layers[0].digest));
    assert.not.ok(fake.blobs.has(img.layers[1].digest));
    // content labels
    const man = fake.blobs.get(sha(img.manifest))!;
    assert.is(man.labels['containerd.io/gc.ref.content.config'], sha(img.config));
    assert.is(man.labels['containerd.io/gc.ref.content.l.2'], img.layers[2].digest);
    assert.is(man.labels['containerd.io/distribution.source.127.0.0.1:5000'], 'app');
    const cfg = fake.blobs.get(sha(img.config))!;
    assert.is(cfg.labels['containerd.io/gc.ref.snapshot.nydus'], chain[2]);
    assert.is(fake.blobs.get(img.layers[2].digest)!.labels['containerd.io/uncompressed'], img.diffIds[2]);
    // snapshots: every layer committed under its chain id with the CRI labels
    for (let i = 0; i < 3; i++) {
      const s = fake.snaps.get(chain[i])!;
      assert.ok(s, `snapshot ${i}`);
      assert.is(s.kind, 'COMMITTED');
      assert.is(s.parent, i ? chain[i - 1] : '');
      assert.is(s.labels['containerd.io/snapshot.ref'], chain[i]);
      assert.is(s.labels['containerd.io/snapshot/cri.image-ref'], '127.0.0.1:5000/app:nydus');
      assert.is(s.labels['containerd.io/snapshot/remote/stargz.reference'], '127.0.0.1:5000/app:nydus');
      assert.is(s.labels['containerd.io/snapshot/cri.manifest-digest'], sha(img.manifest));
      assert.is(s.labels['containerd.io/snapshot/cri.layer-digest'], img.layers[i].digest);
    }
    assert.is(fake.snaps.get(chain[2])!.labels['containerd.io/snapshot/nydus-bootstrap'], 'true');
    assert.is(fake.snaps.size, 3, 'no extraction snapshot left');
    const prepares = fake.calls.filter((c) => c.rpc === 'Snapshots.Prepare');
    assert.ok(prepares.every((c) => /^extract-\S+ sha256:[a-f0-9]{64}$/.test(String(c.req.key)) && c.req.snapshotter === 'nydus'));
    // image record
    const rec = fake.images.get('127.0.0.1:5000/app:nydus') as { target: { digest: string; media_type: string; size: number } };
    assert.equal(rec.target, { media_type: 'application/vnd.oci.image.manifest.v1+json', digest: sha(img.manifest), size: img.manifest.length, annotations: {} });
    // lease: every write/snapshot call under it, and deleted at the end
    const leased = fake.calls.filter((c) => c.rpc.startsWith('Content.Write') || c.rpc.startsWith('Snapshots.'));
    assert.ok(leased.length > 0 && leased.every((c) => c.lease && c.lease.startsWith('ctr-remote-')));
    assert.is(fake.leases.size, 0);
    const lc = fake.calls.find((c) => c.rpc === 'Leases.Create')!;
    assert.match(String((lc.req.labels as Record<string, string>)['containerd.io/gc.expire']), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);

    // a second pull finds everything: no blob fetched but manifest and config, nothing prepared
    reg.fetched = [];
    fake.calls = [];
    const r2 = await pull(fake, reg, '127.0.0.1:5000/app:nydus', 'nydus');
    assert.equal(r2.layers, ['exists', 'exists', 'exists']);
    assert.equal(reg.fetched, ['manifest:nydus', sha(img.config)]);
    assert.not.ok(fake.calls.some((c) => c.rpc === 'Snapshots.Prepare' || c.rpc === 'Content.Write'));
  } finally {
    await fake.stop();
  }
});

test('rpull of a plain OCI image with a local snapshotter: every layer fetched, applied, committed', async () => {
  const fake = new FakeContainerd(false);
  await fake.start(fs.mkdtempSync(path.join(dir, 'o-')));
  const img = makeImage('127.0.0.1:5000/plain:v1', [{ raw: Buffer.from('layer one') }, { raw: Buffer.from('layer two') }]);
  const reg = new FakeRegistry([img]);
  try {
    const r = await pull(fake, reg, '127.0.0.1:5000/plain:v1', 'overlayfs');
    assert.equal(r.layers, ['applied', 'applied']);
    assert.not.ok(r.nydus);
    assert.equal(reg.fetched, ['manifest:v1', sha(img.config), img.layers[0].digest, img.layers[1].digest]);
    const chain = chainIds(img.diffIds);
    assert.is(fake.blobs.get(sha(img.config))!.labels['containerd.io/gc.ref.snapshot.overlayfs'], chain[1]);
    assert.is(fake.snaps.get(chain[1])!.parent, chain[0]);
    // an existing record with another target is updated
    const other = makeImage('127.0.0.1:5000/plain:v1', [{ raw: Buffer.from('layer three') }]);
    const r2 = await pull(fake, new FakeRegistry([other]), '127.0.0.1:5000/plain:v1', 'overlayfs');
    assert.equal(r2.layers, ['applied']);
    assert.is((fake.images.get('127.0.0.1:5000/plain:v1') as { target: { digest: string } }).target.digest, sha(other.manifest));
  } finally {
    await fake.stop();
  }
});

test('rpull of a Nydus image with a snapshotter that does not take data layers: clear error, nothing left behind', async () => {
  const fake = new FakeContainerd(false);
  await fake.start(fs.mkdtempSync(path.join(dir, 'x-')));
  const img = makeImage('127.0.0.1:5000/app:nydus', [{ raw: crypto.randomBytes(100), nydusBlob: true }, { raw: Buffer.from('bs'), bootstrap: true }]);
  const reg = new FakeRegistry([img]);
  try {
    const e = await pull(fake, reg, '127.0.0.1:5000/app:nydus', 'overlayfs').then(() => undefined, (x: unknown) => x as Error);
    assert.instance(e, Error);
    assert.match(e!.message, /Nydus data blob.*use --snapshotter nydus/);
    assert.is(fake.snaps.size, 0);
    assert.not.ok(reg.fetched.includes(img.layers[0].digest));
    assert.is(fake.images.size, 0);
    assert.is(fake.leases.size, 0);
  } finally {
    await fake.stop();
  }
});

test('rpull rejects malformed documents: diff_ids count, bad digests', async () => {
  const fake = new FakeContainerd(true);
  await fake.start(fs.mkdtempSync(path.join(dir, 'm-')));
  const img = makeImage('127.0.0.1:5000/bad:v1', [{ raw: Buffer.from('a') }]);
  img.blobs.set(sha(img.config), Buffer.from(JSON.stringify({ rootfs: { diff_ids: [] } })));
  // keep the manifest's config digest (the fake registry does not verify): rpull must reject the count
  try {
    await rejects(() => pull(fake, new FakeRegistry([img]), '127.0.0.1:5000/bad:v1', 'nydus'), /1 layers but 0 diff ids/);
    const m = JSON.parse(img.manifest.toString()) as Manifest;
    m.layers[0].digest = 'sha256:../../etc';
    img.manifest = Buffer.from(JSON.stringify(m));
    await rejects(() => pull(fake, new FakeRegistry([img]), '127.0.0.1:5000/bad:v1', 'nydus'), /malformed digest/);
  } finally {
    await fake.stop();
  }
});

test('ctr-remote CLI: help, usage errors, and a pull through run() with an injected registry', async () => {
  const out: string[] = [];
  const errs: string[] = [];
  const io = { out: (s: string) => out.push(s), err: (s: string) => errs.push(s) };
  assert.is(await run(['--help'], io), 0);
  assert.match(out.join(''), /image\|images/);
  out.length = 0;
  assert.is(await run(['images', 'rpull', '--help'], io), 0);
  assert.match(out.join(''), /--plain-http/);
  assert.match(out.join(''), /--snapshotter <name>/);
  assert.is(await run(['image', 'rpull'], io), 1);
  assert.match(errs.join(''), /missing required argument 'ref'/);
  errs.length = 0;
  assert.is(await run(['image', 'rpull', '--user', 'nopass', 'x'], io), 1);
  assert.match(errs.join(''), /--user must be user:password/);
  errs.length = 0;
  assert.is(await run(['image', 'rpull', 'UPPER/Case'], io), 1);
  assert.match(errs.join(''), /invalid/);

  const fake = new FakeContainerd(true);
  const sock = await fake.start(fs.mkdtempSync(path.join(dir, 'c-')));
  const img = makeImage('127.0.0.1:5000/app:nydus', [{ raw: crypto.randomBytes(10), nydusBlob: true }, { raw: Buffer.from('bs'), bootstrap: true }]);
  let seen: unknown;
  try {
    out.length = 0;
    errs.length = 0;
    const code = await run(['-a', sock, '-n', 'k8s.io', 'images', 'rpull', '--plain-http', '-u', 'me:p:w', '127.0.0.1:5000/app:nydus'], io, {
      source: (o) => { seen = o; return new FakeRegistry([img]); },
    });
    assert.is(code, 0, errs.join(''));
    assert.equal(seen, { plainHttp: true, insecure: false, user: { username: 'me', password: 'p:w' }, domain: '127.0.0.1:5000' });
    const text = out.join('');
    assert.match(text, /layer 1 sha256:[a-f0-9]{64}: remote/);
    assert.match(text, /layer 2 sha256:[a-f0-9]{64}: unpacked/);
    assert.match(text, /done: 127\.0\.0\.1:5000\/app:nydus unpacked for snapshotter nydus/);
    assert.ok(fake.calls.every((c) => c.ns === 'k8s.io'));
  } finally {
    await fake.stop();
  }
});

test.run();
