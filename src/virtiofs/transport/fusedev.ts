/**
 * The FUSE server over /dev/fuse (the standalone fallback for runc hosts):
 * opens /dev/fuse, mounts it with mount(2) (root only), and runs N reader
 * loops. Each loop reads one request on the libuv threadpool, lets the
 * FuseServer handle it (asynchronously, so a slow chunk fetch never stalls
 * the other loops) and writes the reply in one write(2). The session ends
 * when the kernel says the mount is gone (ENODEV), e.g. after `umount` or
 * our own `umount()` on SIGTERM.
 */
import * as fs from 'node:fs';
import { ErrnoError } from '../../common/errno';
import { log } from '../../common/log';
import { MNT_DETACH, MS_NODEV, MS_NOSUID, MS_RDONLY, mount, umount2 } from '../../common/libc';
import type { FuseServer } from '../fuse/server';
import { BufferReader, BufferWriter } from '../fuse/transport';

/** Largest request the kernel sends: max_write (1 MiB) + headers; FUSE_MIN_READ_BUFFER is 8 KiB. */
const REQUEST_BUFFER = (1 << 20) + 4096;
const REPLY_BUFFER = (1 << 20) + 4096;

export interface FuseDevOptions {
  mountpoint: string;
  /** mount source shown in /proc/mounts (upstream nydusd: "rafs") */
  fsname?: string;
  readOnly?: boolean;
  /** concurrent reader loops (`--thread-num`) */
  threads?: number;
}

export class FuseDevSession {
  private fd = -1;
  private mounted = false;
  private stopping = false;
  private connection = -1;

  constructor(private readonly server: FuseServer, private readonly opts: FuseDevOptions) {}

  /** Open /dev/fuse and mount it at the mountpoint. */
  mount(): void {
    const st = fs.statSync(this.opts.mountpoint);
    // resolved before mounting: once mounted, touching the path waits for this process
    const real = fs.realpathSync(this.opts.mountpoint);
    if (!st.isDirectory()) throw new ErrnoError('ENOTDIR', `mountpoint ${this.opts.mountpoint} is not a directory`);
    this.fd = fs.openSync('/dev/fuse', fs.constants.O_RDWR);
    const flags = MS_NOSUID | MS_NODEV | (this.opts.readOnly === false ? 0 : MS_RDONLY);
    const data = `fd=${this.fd},rootmode=40000,user_id=${process.getuid?.() ?? 0},group_id=${process.getgid?.() ?? 0},allow_other,default_permissions`;
    try {
      mount(this.opts.fsname ?? 'rafs', this.opts.mountpoint, 'fuse', flags, data);
    } catch (e) {
      fs.closeSync(this.fd);
      this.fd = -1;
      throw e;
    }
    this.mounted = true;
    // the fusectl connection id is the minor of the mount's device; read it from
    // mountinfo, since stat() on our own mount would wait for us to answer it
    this.connection = connectionOf(real);
    log.info({ mountpoint: this.opts.mountpoint, connection: this.connection }, 'fuse session mounted');
  }

  /** Serve until the mount goes away. */
  async run(): Promise<void> {
    const n = Math.max(1, this.opts.threads ?? 4);
    await Promise.all(Array.from({ length: n }, () => this.loop()));
    if (this.fd >= 0) { fs.closeSync(this.fd); this.fd = -1; }
    log.info({ mountpoint: this.opts.mountpoint }, 'fuse session ended');
  }

  /**
   * Detach the mount and abort the connection, so running loops end with
   * ENODEV even while clients still hold files open on the detached mount.
   */
  umount(): void {
    if (!this.mounted || this.stopping) return;
    this.stopping = true;
    try {
      umount2(this.opts.mountpoint, MNT_DETACH);
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'umount failed');
    }
    const ctl = '/sys/fs/fuse/connections';
    const abort = `${ctl}/${this.connection}/abort`;
    try {
      // fusectl may not be mounted yet (root only; harmless when it already is)
      if (!fs.existsSync(abort) && fs.existsSync(ctl)) {
        try { mount('fusectl', ctl, 'fusectl', 0, ''); } catch { /* already mounted or not permitted */ }
      }
      if (fs.existsSync(abort)) fs.writeFileSync(abort, '1');
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'aborting the fuse connection failed');
    }
  }

  private readRequest(buf: Buffer): Promise<number> {
    return new Promise((resolve, reject) => {
      fs.read(this.fd, buf, 0, buf.length, null, (err, n) => (err ? reject(err) : resolve(n)));
    });
  }

  private async loop(): Promise<void> {
    const req = Buffer.allocUnsafe(REQUEST_BUFFER);
    const reply = Buffer.allocUnsafe(REPLY_BUFFER);
    for (;;) {
      let n: number;
      try {
        n = await this.readRequest(req);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EINTR' || code === 'EAGAIN' || code === 'ENOENT') continue; // interrupted request
        if (code === 'ENODEV') return; // unmounted
        log.error({ err: (e as Error).message }, 'reading /dev/fuse failed');
        return;
      }
      if (n === 0) return;
      const w = new BufferWriter(reply);
      const len = await this.server.handleMessage(new BufferReader(req.subarray(0, n)), w);
      if (len === 0) continue; // FORGET and friends: no reply
      try {
        fs.writeSync(this.fd, reply, 0, len);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') continue; // the request was interrupted meanwhile
        if (code === 'ENODEV') return;
        log.error({ err: (e as Error).message }, 'writing /dev/fuse failed');
      }
    }
  }
}

/** Minor device number of the newest mount at the resolved path `real` (-1 if not found). */
function connectionOf(real: string): number {
  let minor = -1;
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f[4] === real) minor = Number(f[2].split(':')[1]);
  }
  return minor;
}
