/**
 * A small multi-layer OCI image for nydusify e2e tests, built from gzip tar
 * layers written here (tar-stream) and pushed with our distribution client:
 *  - layer 0: a static busybox at /bin/busybox (Debian busybox-static) with
 *    /bin/sh → busybox, /etc/hostname, files to keep / change / delete, an
 *    opaque-to-be dir, a 1.5 MiB random file (two chunks), a hardlink, a
 *    0600 file owned by 1000:1000, a fifo;
 *  - layer 1: /etc/hostname changed, `.wh.remove.txt`, `.wh..wh..opq` in
 *    /dir/opq with a new file, a copy of the big file (cross-layer dedup), a
 *    new file under a new implicit parent;
 *  - layer 2 (metadata only): whiteout of /newfile, an empty file and an
 *    empty dir.
 * `docker` makes it a Docker v2 image; `useDockerConfig` pushes with the
 * credentials of $DOCKER_CONFIG. `expected` is the merged tree an overlay mount shows (path → content or
 * type), independent of the converter's own code.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { gzipSync } from 'node:zlib';
import * as tarStream from 'tar-stream';
import { RegistryClient, MediaType, parseReference, sha256Digest, type Descriptor } from '../../src/remote';

export const BUSYBOX = '/bin/busybox';

type Entry =
  | { name: string; type: 'file'; data: Buffer; mode?: number; uid?: number; gid?: number }
  | { name: string; type: 'directory'; mode?: number }
  | { name: string; type: 'symlink'; linkname: string }
  | { name: string; type: 'link'; linkname: string }
  | { name: string; type: 'fifo' };

async function tarOf(entries: Entry[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const parts: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    pack.on('data', (c: unknown) => { parts.push(c as Buffer); });
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  const mtime = new Date(1_700_000_000_000);
  for (const e of entries) {
    if (e.type === 'file') pack.entry({ name: e.name, mode: e.mode ?? 0o644, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime, size: e.data.length }, e.data);
    else if (e.type === 'directory') pack.entry({ name: e.name, type: 'directory', mode: e.mode ?? 0o755, mtime });
    else if (e.type === 'symlink') pack.entry({ name: e.name, type: 'symlink', linkname: e.linkname, mode: 0o777, mtime });
    else if (e.type === 'link') pack.entry({ name: e.name, type: 'link', linkname: e.linkname, mtime });
    else pack.entry({ name: e.name, type: 'fifo', mode: 0o644, mtime });
  }
  pack.finalize();
  await done;
  return Buffer.concat(parts);
}

export interface TestImage {
  /** path (no leading /) → file content, or a symbolic kind for others */
  expected: Map<string, Buffer | 'dir' | 'fifo' | { symlink: string }>;
  /** paths that were deleted by whiteouts (must be absent) */
  deleted: string[];
  manifestDigest: string;
  layers: Descriptor[];
}

/** Build the image of the module doc and push it as `ref` (e.g. `127.0.0.1:5000/src/app:v1`). */
export async function pushTestImage(ref: string, opts: { docker?: boolean; variant?: string; useDockerConfig?: boolean } = {}): Promise<TestImage> {
  const busybox = fs.readFileSync(BUSYBOX);
  const big = randomBytes(1536 * 1024);
  const variant = Buffer.from(`variant ${opts.variant ?? 'a'}\n`);
  const l0: Entry[] = [
    { name: 'bin/', type: 'directory' },
    { name: 'bin/busybox', type: 'file', data: busybox, mode: 0o755 },
    { name: 'bin/sh', type: 'symlink', linkname: 'busybox' },
    { name: 'etc/', type: 'directory' },
    { name: 'etc/hostname', type: 'file', data: Buffer.from('layer0\n') },
    { name: 'data/', type: 'directory', mode: 0o750 },
    { name: 'data/keep.txt', type: 'file', data: Buffer.from('keep me\n') },
    { name: 'data/remove.txt', type: 'file', data: Buffer.from('remove me\n') },
    { name: 'data/hard', type: 'link', linkname: 'data/keep.txt' },
    { name: 'data/secret', type: 'file', data: Buffer.from('s3cr3t\n'), mode: 0o600, uid: 1000, gid: 1000 },
    { name: 'data/fifo', type: 'fifo' },
    { name: 'dir/', type: 'directory' },
    { name: 'dir/opq/', type: 'directory' },
    { name: 'dir/opq/old1', type: 'file', data: Buffer.from('old1\n') },
    { name: 'dir/opq/sub/', type: 'directory' },
    { name: 'dir/opq/sub/old2', type: 'file', data: Buffer.from('old2\n') },
    { name: 'big.bin', type: 'file', data: big },
    { name: 'variant.txt', type: 'file', data: variant },
  ];
  const l1: Entry[] = [
    { name: 'etc/hostname', type: 'file', data: Buffer.from('layer1\n') },
    // explicit, as image builders write it: an implicit parent would get 0755 from our builder's
    // tar-rafs and win in the merge, where an overlay keeps the lower dir's 0750 (see README)
    { name: 'data/', type: 'directory', mode: 0o750 },
    { name: 'data/.wh.remove.txt', type: 'file', data: Buffer.alloc(0) },
    { name: 'dir/opq/', type: 'directory', mode: 0o700 },
    { name: 'dir/opq/.wh..wh..opq', type: 'file', data: Buffer.alloc(0) },
    { name: 'dir/opq/new1', type: 'file', data: Buffer.from('new1\n') },
    { name: 'big-copy.bin', type: 'file', data: big },
    { name: 'newfile', type: 'file', data: Buffer.from('to be deleted in layer 2\n') },
    { name: 'deep/implicit/parent/file.txt', type: 'file', data: Buffer.from('deep\n') },
  ];
  const l2: Entry[] = [
    { name: '.wh.newfile', type: 'file', data: Buffer.alloc(0) },
    { name: 'empty', type: 'file', data: Buffer.alloc(0) },
    { name: 'emptydir/', type: 'directory' },
  ];
  const expected: TestImage['expected'] = new Map<string, Buffer | 'dir' | 'fifo' | { symlink: string }>([
    ['bin', 'dir'], ['bin/busybox', busybox], ['bin/sh', { symlink: 'busybox' }],
    ['etc', 'dir'], ['etc/hostname', Buffer.from('layer1\n')],
    ['data', 'dir'], ['data/keep.txt', Buffer.from('keep me\n')], ['data/hard', Buffer.from('keep me\n')],
    ['data/secret', Buffer.from('s3cr3t\n')], ['data/fifo', 'fifo'],
    ['dir', 'dir'], ['dir/opq', 'dir'], ['dir/opq/new1', Buffer.from('new1\n')],
    ['big.bin', big], ['big-copy.bin', big], ['variant.txt', variant],
    ['deep', 'dir'], ['deep/implicit', 'dir'], ['deep/implicit/parent', 'dir'], ['deep/implicit/parent/file.txt', Buffer.from('deep\n')],
    ['empty', Buffer.alloc(0)], ['emptydir', 'dir'],
  ]);
  const deleted = ['data/remove.txt', 'dir/opq/old1', 'dir/opq/sub', 'newfile', 'data/.wh.remove.txt', 'dir/opq/.wh..wh..opq', '.wh.newfile'];

  const r = parseReference(ref);
  const c = new RegistryClient({ credentials: opts.useDockerConfig ? undefined : async () => undefined, pushRetries: 0 });
  try {
    const layers: Descriptor[] = [];
    const diffIds: string[] = [];
    for (const entries of [l0, l1, l2]) {
      const tar = await tarOf(entries);
      const gz = gzipSync(tar);
      const d: Descriptor = { mediaType: opts.docker ? MediaType.DockerLayerGzip : MediaType.OciLayerGzip, digest: sha256Digest(gz), size: gz.length };
      await c.pushBlob(r, d, () => gz);
      layers.push(d);
      diffIds.push(`sha256:${createHash('sha256').update(tar).digest('hex')}`);
    }
    const config = Buffer.from(JSON.stringify({
      architecture: process.arch === 'x64' ? 'amd64' : process.arch, os: 'linux',
      config: { Env: ['PATH=/bin'], Cmd: ['/bin/sh'], WorkingDir: '/', ArgsEscaped: true },
      rootfs: { type: 'layers', diff_ids: diffIds },
      history: [{ created_by: 'layer 0' }, { created_by: 'layer 1' }, { created_by: 'layer 2' }],
    }));
    const cd: Descriptor = { mediaType: opts.docker ? MediaType.DockerConfig : MediaType.OciConfig, digest: sha256Digest(config), size: config.length };
    await c.pushBlob(r, cd, () => config);
    const mt = opts.docker ? MediaType.DockerManifest : MediaType.OciManifest;
    const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: mt, config: cd, layers }));
    const digest = await c.pushManifest(r, r.tag!, mt, manifest);
    return { expected, deleted, manifestDigest: digest, layers };
  } finally {
    await c.close();
  }
}
