/**
 * The FUSE server over /dev/fuse (the standalone fallback for runc hosts):
 * opens /dev/fuse non-blocking, mounts it with mount(2) (root only) and
 * watches it on the main loop. Every queued request is read at once and
 * handled asynchronously (so a slow chunk fetch never stalls the others, up
 * to 4 × `--thread-num` in flight); each reply is one writev(2) of the
 * reply's pieces (chunk data is never copied into a reply buffer), written
 * on the thread pool when it carries READ data (64 KiB and up) and at once
 * otherwise. The session ends when the kernel says the
 * mount is gone (ENODEV), e.g. after `umount` or our own `umount()`.
 */
import * as fs from 'node:fs';
import { constants } from 'node:os';
import { ErrnoError } from '../../common/errno';
import { log } from '../../common/log';
import { enterRead, exitRead } from '../../common/read-epoch';
import { MNT_DETACH, MS_NODEV, MS_NOSUID, MS_RDONLY, errnoError, mount, readFd, umount2 } from '../../common/libc';
import type { FuseServer } from '../fuse/server';
import { BufferReader, GatherWriter } from '../fuse/transport';
import { FdWatcher } from '../../common/poll';

/** Largest request the kernel sends: max_write (1 MiB) + headers; FUSE_MIN_READ_BUFFER is 8 KiB. */
const REQUEST_BUFFER = (1 << 20) + 4096;
const REPLY_BUFFER = (1 << 20) + 4096;
/** Replies this large are written on the thread pool (READ data); smaller ones at once. */
const ASYNC_REPLY = 64 << 10;
/** Pieces one writev(2) takes (IOV_MAX is 1024). */
const MAX_IOV = 1024;

export interface FuseDevOptions {
  mountpoint: string;
  /** mount source shown in /proc/mounts (upstream nydusd: "rafs") */
  fsname?: string;
  readOnly?: boolean;
  /** concurrent reader loops (`--thread-num`) */
  threads?: number;
  /**
   * readahead of the mount's bdi in KiB, set through sysfs once INIT is done
   * (default READAHEAD_KB; 0 leaves the kernel's 128 KiB): the kernel caps
   * max_readahead at its own default in INIT, which splits every sequential
   * read into 128 KiB READs, one round trip each
   */
  readaheadKb?: number;
}

/** Readahead of the mount (KiB): whole 1 MiB READs (max_pages), a few in flight. */
const READAHEAD_KB = 4096;
const FUSE_INIT = 26;
const E = constants.errno;

export class FuseDevSession {
  private fd = -1;
  private mounted = false;
  private stopping = false;
  private connection = -1;
  private ended = false;
  private inflight = 0;
  private maxInflight = 16;
  private watcher: FdWatcher | undefined;
  private finished: (() => void) | undefined;
  private readonly requestBuffers: Buffer[] = [];
  /** reply writers (each with its staging memory), reused once their reply is written */
  private readonly writers: GatherWriter[] = [];

  constructor(private readonly server: FuseServer, private readonly opts: FuseDevOptions) {}

  /** Open /dev/fuse and mount it at the mountpoint. */
  mount(): void {
    const st = fs.statSync(this.opts.mountpoint);
    // resolved before mounting: once mounted, touching the path waits for this process
    const real = fs.realpathSync(this.opts.mountpoint);
    if (!st.isDirectory()) throw new ErrnoError('ENOTDIR', `mountpoint ${this.opts.mountpoint} is not a directory`);
    this.fd = fs.openSync('/dev/fuse', fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
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
  run(): Promise<void> {
    this.maxInflight = Math.max(1, this.opts.threads ?? 4) * 4;
    return new Promise((resolve) => {
      this.finished = () => {
        if (this.fd >= 0) { fs.closeSync(this.fd); this.fd = -1; }
        log.info({ mountpoint: this.opts.mountpoint }, 'fuse session ended');
        resolve();
      };
      this.watcher = new FdWatcher(this.fd, () => this.drain());
      this.drain();
    });
  }

  /**
   * Detach the mount and abort the connection, so the session ends (ENODEV)
   * even while clients still hold files open on the detached mount.
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

  /**
   * Read every queued request (non-blocking) and start handling each; at most
   * `maxInflight` at once, the watcher pausing while the limit is reached.
   */
  private drain(): void {
    while (!this.ended) {
      if (this.inflight >= this.maxInflight) { this.watcher?.pause(); return; }
      const req = this.requestBuffers.pop() ?? Buffer.allocUnsafe(REQUEST_BUFFER);
      // read(2) through libc: the EAGAIN that ends every drain is a return value, not a thrown Error
      const n = readFd(this.fd, req);
      if (n < 0) {
        this.requestBuffers.push(req);
        const errno = -n;
        if (errno === E.EAGAIN) return; // nothing queued
        if (errno === E.EINTR || errno === E.ENOENT) continue; // interrupted request
        if (errno !== E.ENODEV) log.error({ err: errnoError(errno, 'read(/dev/fuse)').message }, 'reading /dev/fuse failed');
        this.end();
        return;
      }
      if (n === 0) { this.requestBuffers.push(req); this.end(); return; }
      this.inflight++;
      void this.handle(req, n);
    }
  }

  private async handle(req: Buffer, n: number): Promise<void> {
    const w = this.writers.pop() ?? new GatherWriter(REPLY_BUFFER, Buffer.allocUnsafe(REPLY_BUFFER));
    // chunk memory this request is handed is not reused until its reply is written (common/read-epoch)
    const token = enterRead();
    try {
      // a READ answered at once (cached data) comes back as a number: no promise hop before its reply
      const res = this.server.handle(new BufferReader(req.subarray(0, n)), w);
      const len = typeof res === 'number' ? res : await res;
      if (len > 0 && !this.ended) {
        try {
          // a small reply is written at once: no await (no suspension of this request) for it
          const sent = this.send(w.pieces(), len);
          if (sent) await sent;
          // the kernel applied the INIT reply in that write: the bdi's readahead may now be raised
          if (n >= 8 && req.readUInt32LE(4) === FUSE_INIT) this.raiseReadahead();
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          // ENOENT: the request was interrupted meanwhile; ENODEV: unmounted
          if (code !== 'ENOENT' && code !== 'ENODEV') log.error({ err: (e as Error).message }, 'writing /dev/fuse failed');
        }
      }
    } finally {
      exitRead(token);
      this.requestBuffers.push(req);
      w.reset();
      this.writers.push(w);
      this.inflight--;
      if (this.ended) { if (this.inflight === 0) this.finished?.(); }
      else if (this.inflight < this.maxInflight) this.watcher?.resume();
    }
  }

  /**
   * One reply, as one writev(2) of its pieces (the kernel takes a reply in a
   * single write). Large replies are written on the thread pool: the kernel's
   * copy of a 1 MiB READ into the page cache then runs beside the event loop
   * instead of on it. The pieces stay referenced until the write is done.
   */
  private send(pieces: Buffer[], len: number): Promise<void> | void {
    // more pieces than one writev takes (tiny chunks): staged into one buffer
    const iov = pieces.length > MAX_IOV ? [Buffer.concat(pieces, len)] : pieces;
    if (len < ASYNC_REPLY) {
      fs.writevSync(this.fd, iov);
      return;
    }
    return new Promise((resolve, reject) => {
      fs.writev(this.fd, iov, null, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** Best effort: `read_ahead_kb` of this mount's bdi (named after the connection, `0:<minor>`). */
  private raiseReadahead(): void {
    const kb = this.opts.readaheadKb ?? READAHEAD_KB;
    if (!(kb > 0) || this.connection < 0) return;
    const file = `/sys/class/bdi/0:${this.connection}/read_ahead_kb`;
    try {
      if (Number(fs.readFileSync(file, 'utf8')) < kb) fs.writeFileSync(file, String(Math.floor(kb)));
    } catch (e) {
      log.debug({ file, err: (e as Error).message }, 'cannot raise the mount readahead');
    }
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    this.watcher?.close();
    this.watcher = undefined;
    if (this.inflight === 0) this.finished?.();
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
