/**
 * A shared FUSE-mode nydusd (no --bootstrap: the snapshotter's shared
 * daemon) gets RAFS and passthrough mounts through the API at run time; the
 * host reads them through the FUSE mountpoint. Also `--shared-dir` alone.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { nydusImage, tmpdir } from '../support/cli';
import { api, waitForState } from '../support/api';
import { fuseMissing, isMounted, startNydusd } from '../support/nydusd';

const skip = fuseMissing();
if (skip) console.log(`SKIP nydusd-fuse-api: ${skip}`);

test('mounts through the API appear under the FUSE mountpoint and go away on DELETE', async () => {
  if (skip) return;
  const work = tmpdir('fuse-api');
  try {
    const src = path.join(work, 'src');
    fs.mkdirSync(path.join(src, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(src, 'etc/os-release'), 'ID=from-api\n');
    const blobs = path.join(work, 'blobs');
    fs.mkdirSync(blobs);
    const boot = path.join(work, 'image.boot');
    nydusImage(['create', '--bootstrap', boot, '--blob-dir', blobs, src]);
    const share = path.join(work, 'share');
    fs.mkdirSync(share);
    fs.writeFileSync(path.join(share, 'hello'), 'shared\n');
    const apisock = path.join(work, 'api.sock');
    const mnt = path.join(work, 'mnt');
    const d = await startNydusd(mnt, ['--apisock', apisock, '--writable', '--log-level', 'warn']);
    try {
      await waitForState(apisock);
      const config = JSON.stringify({ version: 2, backend: { type: 'localfs', localfs: { dir: blobs } }, cache: { type: '' }, rafs: { mode: 'direct' } });
      let r = await api(apisock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent('/img1')}`, { source: boot, fs_type: 'rafs', config });
      assert.is(r.status, 204, r.body);
      r = await api(apisock, 'POST', '/api/v1/mount?mountpoint=/shared', { source: share, fs_type: 'passthrough_fs', config: '' });
      assert.is(r.status, 204, r.body);
      assert.is(fs.readFileSync(path.join(mnt, 'img1/etc/os-release'), 'utf8'), 'ID=from-api\n');
      assert.is(fs.readFileSync(path.join(mnt, 'shared/hello'), 'utf8'), 'shared\n');
      fs.writeFileSync(path.join(mnt, 'shared/written'), 'via fuse\n');
      assert.is(fs.readFileSync(path.join(share, 'written'), 'utf8'), 'via fuse\n');
      r = await api(apisock, 'DELETE', '/api/v1/mount?mountpoint=/img1');
      assert.is(r.status, 204, r.body);
      await new Promise((res) => setTimeout(res, 1200)); // pseudo-dir entries time out after 1 s
      assert.not.ok(fs.existsSync(path.join(mnt, 'img1/etc/os-release')), 'umounted image still visible');
    } finally {
      assert.is(await d.stop(), 0, d.log());
    }
    assert.not.ok(isMounted(mnt));
  } finally { fs.rmSync(work, { recursive: true, force: true }); }
});

test.run();
