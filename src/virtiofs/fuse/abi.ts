/**
 * FUSE kernel ABI (Linux `include/uapi/linux/fuse.h`, protocol 7.x): opcodes,
 * FUSE_INIT flags, misc constants, and little-endian codecs for the wire
 * structs the server uses. Every codec is named after the C struct and has
 * `SIZE`, `decode(buf, off)` (bounds-checked: a short buffer throws EINVAL)
 * and `encode(value, buf?, off?)` (writes in place when a target is given,
 * otherwise returns a new Buffer).
 *
 * Width convention (architecture-anchors §D): node ids, file handles,
 * generations, `unique` and lock owners are bigint; every other u64 (offsets,
 * sizes, counts, times) is a number and decoding one above 2^53 throws EINVAL.
 *
 * This module imports nothing above `common/`.
 */
import { einval } from '../../common/errno';
import type { Attr, Entry } from '../../common/filesystem';

export const FUSE_KERNEL_VERSION = 7;
/** Highest minor we speak; the reply carries min(kernel minor, this). */
export const FUSE_KERNEL_MINOR_VERSION = 36;
/** Oldest kernel minor accepted (7.13, Linux 2.6.32): struct sizes below assume it. */
export const FUSE_MIN_KERNEL_MINOR_VERSION = 13;
export const FUSE_ROOT_ID = 1n;
/** Longest name the kernel accepts in a dirent (FUSE_NAME_MAX). */
export const FUSE_NAME_MAX = 1024;

/** `enum fuse_opcode`. */
export enum FuseOpcode {
  LOOKUP = 1,
  FORGET = 2,
  GETATTR = 3,
  SETATTR = 4,
  READLINK = 5,
  SYMLINK = 6,
  MKNOD = 8,
  MKDIR = 9,
  UNLINK = 10,
  RMDIR = 11,
  RENAME = 12,
  LINK = 13,
  OPEN = 14,
  READ = 15,
  WRITE = 16,
  STATFS = 17,
  RELEASE = 18,
  FSYNC = 20,
  SETXATTR = 21,
  GETXATTR = 22,
  LISTXATTR = 23,
  REMOVEXATTR = 24,
  FLUSH = 25,
  INIT = 26,
  OPENDIR = 27,
  READDIR = 28,
  RELEASEDIR = 29,
  FSYNCDIR = 30,
  GETLK = 31,
  SETLK = 32,
  SETLKW = 33,
  ACCESS = 34,
  CREATE = 35,
  INTERRUPT = 36,
  BMAP = 37,
  DESTROY = 38,
  IOCTL = 39,
  POLL = 40,
  NOTIFY_REPLY = 41,
  BATCH_FORGET = 42,
  FALLOCATE = 43,
  READDIRPLUS = 44,
  RENAME2 = 45,
  LSEEK = 46,
  COPY_FILE_RANGE = 47,
  SETUPMAPPING = 48,
  REMOVEMAPPING = 49,
  SYNCFS = 50,
  TMPFILE = 51,
  STATX = 52,
  COPY_FILE_RANGE_64 = 53,
}

// ---- FUSE_INIT flags: 64-bit value = flags | flags2 << 32 -------------------
export const FUSE_ASYNC_READ = 1n << 0n;
export const FUSE_POSIX_LOCKS = 1n << 1n;
export const FUSE_FILE_OPS = 1n << 2n;
export const FUSE_ATOMIC_O_TRUNC = 1n << 3n;
export const FUSE_EXPORT_SUPPORT = 1n << 4n;
export const FUSE_BIG_WRITES = 1n << 5n;
export const FUSE_DONT_MASK = 1n << 6n;
export const FUSE_SPLICE_WRITE = 1n << 7n;
export const FUSE_SPLICE_MOVE = 1n << 8n;
export const FUSE_SPLICE_READ = 1n << 9n;
export const FUSE_FLOCK_LOCKS = 1n << 10n;
export const FUSE_HAS_IOCTL_DIR = 1n << 11n;
export const FUSE_AUTO_INVAL_DATA = 1n << 12n;
export const FUSE_DO_READDIRPLUS = 1n << 13n;
export const FUSE_READDIRPLUS_AUTO = 1n << 14n;
export const FUSE_ASYNC_DIO = 1n << 15n;
export const FUSE_WRITEBACK_CACHE = 1n << 16n;
export const FUSE_NO_OPEN_SUPPORT = 1n << 17n;
export const FUSE_PARALLEL_DIROPS = 1n << 18n;
export const FUSE_HANDLE_KILLPRIV = 1n << 19n;
export const FUSE_POSIX_ACL = 1n << 20n;
export const FUSE_ABORT_ERROR = 1n << 21n;
export const FUSE_MAX_PAGES = 1n << 22n;
export const FUSE_CACHE_SYMLINKS = 1n << 23n;
export const FUSE_NO_OPENDIR_SUPPORT = 1n << 24n;
export const FUSE_EXPLICIT_INVAL_DATA = 1n << 25n;
export const FUSE_MAP_ALIGNMENT = 1n << 26n;
export const FUSE_SUBMOUNTS = 1n << 27n;
export const FUSE_HANDLE_KILLPRIV_V2 = 1n << 28n;
export const FUSE_SETXATTR_EXT = 1n << 29n;
export const FUSE_INIT_EXT = 1n << 30n;
export const FUSE_INIT_RESERVED = 1n << 31n;
export const FUSE_SECURITY_CTX = 1n << 32n;
export const FUSE_HAS_INODE_DAX = 1n << 33n;
export const FUSE_CREATE_SUPP_GROUP = 1n << 34n;
export const FUSE_HAS_EXPIRE_ONLY = 1n << 35n;
export const FUSE_DIRECT_IO_ALLOW_MMAP = 1n << 36n;
export const FUSE_PASSTHROUGH = 1n << 37n;
export const FUSE_NO_EXPORT_SUPPORT = 1n << 38n;
export const FUSE_HAS_RESEND = 1n << 39n;
export const FUSE_ALLOW_IDMAP = 1n << 40n;
export const FUSE_OVER_IO_URING = 1n << 41n;
export const FUSE_REQUEST_TIMEOUT = 1n << 42n;

// ---- misc request/reply bits ----------------------------------------------
export const FATTR_MODE = 1 << 0;
export const FATTR_UID = 1 << 1;
export const FATTR_GID = 1 << 2;
export const FATTR_SIZE = 1 << 3;
export const FATTR_ATIME = 1 << 4;
export const FATTR_MTIME = 1 << 5;
export const FATTR_FH = 1 << 6;
export const FATTR_ATIME_NOW = 1 << 7;
export const FATTR_MTIME_NOW = 1 << 8;
export const FATTR_LOCKOWNER = 1 << 9;
export const FATTR_CTIME = 1 << 10;
export const FATTR_KILL_SUIDGID = 1 << 11;

export const FUSE_GETATTR_FH = 1 << 0;
export const FUSE_RELEASE_FLUSH = 1 << 0;
export const FUSE_WRITE_CACHE = 1 << 0;
export const FUSE_WRITE_LOCKOWNER = 1 << 1;
export const FUSE_WRITE_KILL_SUIDGID = 1 << 2;
export const FUSE_READ_LOCKOWNER = 1 << 1;
export const FUSE_FSYNC_FDATASYNC = 1 << 0;
export const FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0;

export const RENAME_NOREPLACE = 1 << 0;
export const RENAME_EXCHANGE = 1 << 1;
export const RENAME_WHITEOUT = 1 << 2;

/** d_type values (mode >> 12). */
export const DT_UNKNOWN = 0;
export const DT_FIFO = 1;
export const DT_CHR = 2;
export const DT_DIR = 4;
export const DT_BLK = 6;
export const DT_REG = 8;
export const DT_LNK = 10;
export const DT_SOCK = 12;

// ---- little-endian helpers (shared with the other codecs) -----------------
export { readU64, readI64, writeU64 } from '../../common/wire';
import { readU64, readI64, writeU64 } from '../../common/wire';

function need(buf: Buffer, off: number, size: number, what: string): void {
  if (off < 0 || buf.length - off < size) throw einval(`short ${what}: ${buf.length - off} < ${size} bytes`);
}

/** Split a timeout in (fractional, non-negative) seconds into sec + nsec. */
function writeTimeout(buf: Buffer, secOff: number, nsecOff: number, t: number): void {
  if (!(t > 0)) {
    writeU64(buf, secOff, 0);
    buf.writeUInt32LE(0, nsecOff);
    return;
  }
  if (t >= Number.MAX_SAFE_INTEGER) t = Number.MAX_SAFE_INTEGER;
  const sec = Math.floor(t);
  writeU64(buf, secOff, sec);
  buf.writeUInt32LE(Math.min(999_999_999, Math.floor((t - sec) * 1e9)), nsecOff);
}

// ---- generic codec for the plain structs ------------------------------------
type FieldType = 'u16' | 'u32' | 'i32' | 'u64' | 'i64' | 'big' | 'pad16' | 'pad32' | 'pad64';
const FIELD_SIZE: Record<FieldType, number> = { u16: 2, u32: 4, i32: 4, u64: 8, i64: 8, big: 8, pad16: 2, pad32: 4, pad64: 8 };

export interface StructCodec<T> {
  readonly NAME: string;
  readonly SIZE: number;
  decode(buf: Buffer, off?: number): T;
  encode(v: T, buf?: Buffer, off?: number): Buffer;
}

function struct<T>(name: string, fields: ReadonlyArray<readonly [string, FieldType]>, size?: number): StructCodec<T> {
  const offs: number[] = [];
  let total = 0;
  for (const [, t] of fields) {
    offs.push(total);
    total += FIELD_SIZE[t];
  }
  const SIZE = size ?? total;
  return {
    NAME: name,
    SIZE,
    decode(buf: Buffer, off = 0): T {
      need(buf, off, SIZE, name);
      const o: Record<string, number | bigint> = {};
      for (let i = 0; i < fields.length; i++) {
        const [k, t] = fields[i];
        const p = off + offs[i];
        switch (t) {
          case 'u16': o[k] = buf.readUInt16LE(p); break;
          case 'u32': o[k] = buf.readUInt32LE(p); break;
          case 'i32': o[k] = buf.readInt32LE(p); break;
          case 'u64': o[k] = readU64(buf, p); break;
          case 'i64': o[k] = readI64(buf, p); break;
          case 'big': o[k] = buf.readBigUInt64LE(p); break;
          default: break; // padding
        }
      }
      return o as T;
    },
    encode(v: T, buf?: Buffer, off = 0): Buffer {
      const b = buf ?? Buffer.alloc(SIZE);
      need(b, off, SIZE, name);
      const o = v as Record<string, number | bigint | undefined>;
      for (let i = 0; i < fields.length; i++) {
        const [k, t] = fields[i];
        const p = off + offs[i];
        const x = o[k];
        switch (t) {
          case 'u16': b.writeUInt16LE(Number(x ?? 0) & 0xffff, p); break;
          case 'u32': b.writeUInt32LE(Number(x ?? 0) >>> 0, p); break;
          case 'i32': b.writeInt32LE(Number(x ?? 0) | 0, p); break;
          case 'u64': case 'i64': writeU64(b, p, Number(x ?? 0)); break;
          case 'big': b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(x ?? 0)), p); break;
          case 'pad16': b.writeUInt16LE(0, p); break;
          case 'pad32': b.writeUInt32LE(0, p); break;
          case 'pad64': writeU64(b, p, 0); break;
        }
      }
      if (SIZE > total) b.fill(0, off + total, off + SIZE);
      return b;
    },
  };
}

// ---- headers (hand-written: every request pays for them) --------------------
export interface FuseInHeaderT {
  len: number;
  opcode: number;
  unique: bigint;
  nodeid: bigint;
  uid: number;
  gid: number;
  pid: number;
  /** length of the extensions after the args, in 8-byte units */
  totalExtlen: number;
}

export const FuseInHeader: StructCodec<FuseInHeaderT> = {
  NAME: 'fuse_in_header',
  SIZE: 40,
  decode(buf: Buffer, off = 0): FuseInHeaderT {
    need(buf, off, 40, 'fuse_in_header');
    return {
      len: buf.readUInt32LE(off),
      opcode: buf.readUInt32LE(off + 4),
      unique: buf.readBigUInt64LE(off + 8),
      nodeid: buf.readBigUInt64LE(off + 16),
      uid: buf.readUInt32LE(off + 24),
      gid: buf.readUInt32LE(off + 28),
      pid: buf.readUInt32LE(off + 32),
      totalExtlen: buf.readUInt16LE(off + 36),
    };
  },
  encode(v: FuseInHeaderT, buf?: Buffer, off = 0): Buffer {
    const b = buf ?? Buffer.allocUnsafe(40);
    need(b, off, 40, 'fuse_in_header');
    b.writeUInt32LE(v.len >>> 0, off);
    b.writeUInt32LE(v.opcode >>> 0, off + 4);
    b.writeBigUInt64LE(v.unique, off + 8);
    b.writeBigUInt64LE(v.nodeid, off + 16);
    b.writeUInt32LE(v.uid >>> 0, off + 24);
    b.writeUInt32LE(v.gid >>> 0, off + 28);
    b.writeUInt32LE(v.pid >>> 0, off + 32);
    b.writeUInt16LE(v.totalExtlen & 0xffff, off + 36);
    b.writeUInt16LE(0, off + 38);
    return b;
  },
};

export interface FuseOutHeaderT {
  len: number;
  /** 0 or -errno */
  error: number;
  unique: bigint;
}

export const FuseOutHeader: StructCodec<FuseOutHeaderT> = {
  NAME: 'fuse_out_header',
  SIZE: 16,
  decode(buf: Buffer, off = 0): FuseOutHeaderT {
    need(buf, off, 16, 'fuse_out_header');
    return { len: buf.readUInt32LE(off), error: buf.readInt32LE(off + 4), unique: buf.readBigUInt64LE(off + 8) };
  },
  encode(v: FuseOutHeaderT, buf?: Buffer, off = 0): Buffer {
    const b = buf ?? Buffer.allocUnsafe(16);
    need(b, off, 16, 'fuse_out_header');
    b.writeUInt32LE(v.len >>> 0, off);
    b.writeInt32LE(v.error | 0, off + 4);
    b.writeBigUInt64LE(v.unique, off + 8);
    return b;
  },
};

// ---- attributes and entries ---------------------------------------------------
/** fuse_attr (88 bytes), from/to the FileSystem `Attr` (flags is written as 0). */
export const FuseAttr: StructCodec<Attr> = {
  NAME: 'fuse_attr',
  SIZE: 88,
  decode(buf: Buffer, off = 0): Attr {
    need(buf, off, 88, 'fuse_attr');
    return {
      ino: buf.readBigUInt64LE(off),
      size: readU64(buf, off + 8),
      blocks: readU64(buf, off + 16),
      atime: readI64(buf, off + 24),
      mtime: readI64(buf, off + 32),
      ctime: readI64(buf, off + 40),
      atimeNsec: buf.readUInt32LE(off + 48),
      mtimeNsec: buf.readUInt32LE(off + 52),
      ctimeNsec: buf.readUInt32LE(off + 56),
      mode: buf.readUInt32LE(off + 60),
      nlink: buf.readUInt32LE(off + 64),
      uid: buf.readUInt32LE(off + 68),
      gid: buf.readUInt32LE(off + 72),
      rdev: buf.readUInt32LE(off + 76),
      blksize: buf.readUInt32LE(off + 80),
    };
  },
  encode(a: Attr, buf?: Buffer, off = 0): Buffer {
    const b = buf ?? Buffer.allocUnsafe(88);
    need(b, off, 88, 'fuse_attr');
    b.writeBigUInt64LE(a.ino, off);
    writeU64(b, off + 8, a.size);
    writeU64(b, off + 16, a.blocks);
    writeU64(b, off + 24, a.atime);
    writeU64(b, off + 32, a.mtime);
    writeU64(b, off + 40, a.ctime);
    b.writeUInt32LE(a.atimeNsec >>> 0, off + 48);
    b.writeUInt32LE(a.mtimeNsec >>> 0, off + 52);
    b.writeUInt32LE(a.ctimeNsec >>> 0, off + 56);
    b.writeUInt32LE(a.mode >>> 0, off + 60);
    b.writeUInt32LE(a.nlink >>> 0, off + 64);
    b.writeUInt32LE(a.uid >>> 0, off + 68);
    b.writeUInt32LE(a.gid >>> 0, off + 72);
    b.writeUInt32LE(a.rdev >>> 0, off + 76);
    b.writeUInt32LE(a.blksize >>> 0, off + 80);
    b.writeUInt32LE(0, off + 84);
    return b;
  },
};

/** fuse_entry_out (128 bytes) ⇄ `Entry` (timeouts as fractional seconds). */
export const FuseEntryOut: StructCodec<Entry> = {
  NAME: 'fuse_entry_out',
  SIZE: 128,
  decode(buf: Buffer, off = 0): Entry {
    need(buf, off, 128, 'fuse_entry_out');
    return {
      ino: buf.readBigUInt64LE(off),
      generation: buf.readBigUInt64LE(off + 8),
      entryTimeout: readU64(buf, off + 16) + buf.readUInt32LE(off + 32) / 1e9,
      attrTimeout: readU64(buf, off + 24) + buf.readUInt32LE(off + 36) / 1e9,
      attr: FuseAttr.decode(buf, off + 40),
    };
  },
  encode(e: Entry, buf?: Buffer, off = 0): Buffer {
    const b = buf ?? Buffer.allocUnsafe(128);
    need(b, off, 128, 'fuse_entry_out');
    b.writeBigUInt64LE(e.ino, off);
    b.writeBigUInt64LE(BigInt.asUintN(64, e.generation), off + 8);
    writeTimeout(b, off + 16, off + 32, e.entryTimeout);
    writeTimeout(b, off + 24, off + 36, e.attrTimeout);
    FuseAttr.encode(e.attr, b, off + 40);
    return b;
  },
};

/** An all-zero fuse_entry_out: "no entry" (READDIRPLUS `.`/`..`, negative lookups have ino 0 too). */
export function encodeZeroEntryOut(buf: Buffer, off: number): void {
  need(buf, off, 128, 'fuse_entry_out');
  buf.fill(0, off, off + 128);
}

export interface FuseAttrOutT {
  attr: Attr;
  timeout: number;
}

/** fuse_attr_out (104 bytes) ⇄ `AttrReply`. */
export const FuseAttrOut: StructCodec<FuseAttrOutT> = {
  NAME: 'fuse_attr_out',
  SIZE: 104,
  decode(buf: Buffer, off = 0): FuseAttrOutT {
    need(buf, off, 104, 'fuse_attr_out');
    return { timeout: readU64(buf, off) + buf.readUInt32LE(off + 8) / 1e9, attr: FuseAttr.decode(buf, off + 16) };
  },
  encode(v: FuseAttrOutT, buf?: Buffer, off = 0): Buffer {
    const b = buf ?? Buffer.allocUnsafe(104);
    need(b, off, 104, 'fuse_attr_out');
    writeTimeout(b, off, off + 8, v.timeout);
    b.writeUInt32LE(0, off + 12);
    FuseAttr.encode(v.attr, b, off + 16);
    return b;
  },
};

// ---- INIT ---------------------------------------------------------------------
export interface FuseInitInT {
  major: number;
  minor: number;
  maxReadahead: number;
  /** flags | flags2 << 32 (flags2 only when the 64-byte form carries FUSE_INIT_EXT) */
  flags: bigint;
}

/** fuse_init_in: 64 bytes on modern kernels, 16 on old ones; decode takes the available length. */
export const FuseInitIn: StructCodec<FuseInitInT> & { COMPAT_SIZE: number } = {
  NAME: 'fuse_init_in',
  SIZE: 64,
  COMPAT_SIZE: 16,
  decode(buf: Buffer, off = 0): FuseInitInT {
    need(buf, off, 16, 'fuse_init_in');
    let flags = BigInt(buf.readUInt32LE(off + 12));
    if (buf.length - off >= 64 && (flags & FUSE_INIT_EXT) !== 0n) flags |= BigInt(buf.readUInt32LE(off + 16)) << 32n;
    return { major: buf.readUInt32LE(off), minor: buf.readUInt32LE(off + 4), maxReadahead: buf.readUInt32LE(off + 8), flags };
  },
  /** Encodes the 64-byte form (tests and clients). */
  encode(v: FuseInitInT, buf?: Buffer, off = 0): Buffer {
    const b = buf ?? Buffer.alloc(64);
    need(b, off, 64, 'fuse_init_in');
    b.fill(0, off, off + 64);
    b.writeUInt32LE(v.major >>> 0, off);
    b.writeUInt32LE(v.minor >>> 0, off + 4);
    b.writeUInt32LE(v.maxReadahead >>> 0, off + 8);
    b.writeUInt32LE(Number(v.flags & 0xffff_ffffn), off + 12);
    b.writeUInt32LE(Number((v.flags >> 32n) & 0xffff_ffffn), off + 16);
    return b;
  },
};

export interface FuseInitOutT {
  major: number;
  minor: number;
  maxReadahead: number;
  /** flags | flags2 << 32 */
  flags: bigint;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  timeGran: number;
  maxPages: number;
  mapAlignment: number;
  maxStackDepth: number;
  requestTimeout: number;
}

/** fuse_init_out (64 bytes; kernels before 7.23 take the first 24, before 7.5 the first 8). */
export const FuseInitOut: StructCodec<FuseInitOutT> & { COMPAT_22_SIZE: number; COMPAT_SIZE: number } = {
  NAME: 'fuse_init_out',
  SIZE: 64,
  COMPAT_22_SIZE: 24,
  COMPAT_SIZE: 8,
  decode(buf: Buffer, off = 0): FuseInitOutT {
    need(buf, off, 24, 'fuse_init_out');
    const full = buf.length - off >= 64;
    const flags = BigInt(buf.readUInt32LE(off + 12)) | (full ? BigInt(buf.readUInt32LE(off + 32)) << 32n : 0n);
    return {
      major: buf.readUInt32LE(off),
      minor: buf.readUInt32LE(off + 4),
      maxReadahead: buf.readUInt32LE(off + 8),
      flags,
      maxBackground: buf.readUInt16LE(off + 16),
      congestionThreshold: buf.readUInt16LE(off + 18),
      maxWrite: buf.readUInt32LE(off + 20),
      timeGran: full ? buf.readUInt32LE(off + 24) : 0,
      maxPages: full ? buf.readUInt16LE(off + 28) : 0,
      mapAlignment: full ? buf.readUInt16LE(off + 30) : 0,
      maxStackDepth: full ? buf.readUInt32LE(off + 36) : 0,
      requestTimeout: full ? buf.readUInt16LE(off + 40) : 0,
    };
  },
  encode(v: FuseInitOutT, buf?: Buffer, off = 0): Buffer {
    const b = buf ?? Buffer.alloc(64);
    need(b, off, 64, 'fuse_init_out');
    b.fill(0, off, off + 64);
    b.writeUInt32LE(v.major >>> 0, off);
    b.writeUInt32LE(v.minor >>> 0, off + 4);
    b.writeUInt32LE(v.maxReadahead >>> 0, off + 8);
    b.writeUInt32LE(Number(v.flags & 0xffff_ffffn), off + 12);
    b.writeUInt16LE(v.maxBackground & 0xffff, off + 16);
    b.writeUInt16LE(v.congestionThreshold & 0xffff, off + 18);
    b.writeUInt32LE(v.maxWrite >>> 0, off + 20);
    b.writeUInt32LE(v.timeGran >>> 0, off + 24);
    b.writeUInt16LE(v.maxPages & 0xffff, off + 28);
    b.writeUInt16LE(v.mapAlignment & 0xffff, off + 30);
    b.writeUInt32LE(Number((v.flags >> 32n) & 0xffff_ffffn), off + 32);
    b.writeUInt32LE(v.maxStackDepth >>> 0, off + 36);
    b.writeUInt16LE(v.requestTimeout & 0xffff, off + 40);
    return b;
  },
};

// ---- read path (hand-written: hot) ------------------------------------------
export interface FuseReadInT {
  fh: bigint;
  offset: number;
  size: number;
  readFlags: number;
  lockOwner: bigint;
  flags: number;
}

/** fuse_read_in (40 bytes); also the READDIR/READDIRPLUS body. */
export const FuseReadIn: StructCodec<FuseReadInT> = {
  NAME: 'fuse_read_in',
  SIZE: 40,
  decode(buf: Buffer, off = 0): FuseReadInT {
    need(buf, off, 40, 'fuse_read_in');
    return {
      fh: buf.readBigUInt64LE(off),
      offset: readU64(buf, off + 8),
      size: buf.readUInt32LE(off + 16),
      readFlags: buf.readUInt32LE(off + 20),
      lockOwner: buf.readBigUInt64LE(off + 24),
      flags: buf.readUInt32LE(off + 32),
    };
  },
  encode(v: FuseReadInT, buf?: Buffer, off = 0): Buffer {
    const b = buf ?? Buffer.alloc(40);
    need(b, off, 40, 'fuse_read_in');
    b.writeBigUInt64LE(v.fh, off);
    writeU64(b, off + 8, v.offset);
    b.writeUInt32LE(v.size >>> 0, off + 16);
    b.writeUInt32LE(v.readFlags >>> 0, off + 20);
    b.writeBigUInt64LE(v.lockOwner, off + 24);
    b.writeUInt32LE(v.flags >>> 0, off + 32);
    b.writeUInt32LE(0, off + 36);
    return b;
  },
};

// ---- plain structs ----------------------------------------------------------
export interface FuseOpenInT { flags: number; openFlags: number }
export const FuseOpenIn = struct<FuseOpenInT>('fuse_open_in', [['flags', 'u32'], ['openFlags', 'u32']]);

export interface FuseOpenOutT { fh: bigint; openFlags: number; backingId: number }
export const FuseOpenOut = struct<FuseOpenOutT>('fuse_open_out', [['fh', 'big'], ['openFlags', 'u32'], ['backingId', 'i32']]);

export interface FuseReleaseInT { fh: bigint; flags: number; releaseFlags: number; lockOwner: bigint }
export const FuseReleaseIn = struct<FuseReleaseInT>('fuse_release_in', [['fh', 'big'], ['flags', 'u32'], ['releaseFlags', 'u32'], ['lockOwner', 'big']]);

export interface FuseFlushInT { fh: bigint; lockOwner: bigint }
export const FuseFlushIn = struct<FuseFlushInT>('fuse_flush_in', [['fh', 'big'], ['unused', 'pad32'], ['padding', 'pad32'], ['lockOwner', 'big']]);

export interface FuseGetattrInT { getattrFlags: number; fh: bigint }
export const FuseGetattrIn = struct<FuseGetattrInT>('fuse_getattr_in', [['getattrFlags', 'u32'], ['dummy', 'pad32'], ['fh', 'big']]);

export interface FuseGetxattrInT { size: number }
export const FuseGetxattrIn = struct<FuseGetxattrInT>('fuse_getxattr_in', [['size', 'u32'], ['padding', 'pad32']]);

export interface FuseGetxattrOutT { size: number }
export const FuseGetxattrOut = struct<FuseGetxattrOutT>('fuse_getxattr_out', [['size', 'u32'], ['padding', 'pad32']]);

export interface FuseAccessInT { mask: number }
export const FuseAccessIn = struct<FuseAccessInT>('fuse_access_in', [['mask', 'u32'], ['padding', 'pad32']]);

export interface FuseLseekInT { fh: bigint; offset: number; whence: number }
export const FuseLseekIn = struct<FuseLseekInT>('fuse_lseek_in', [['fh', 'big'], ['offset', 'u64'], ['whence', 'u32'], ['padding', 'pad32']]);

export interface FuseLseekOutT { offset: number }
export const FuseLseekOut = struct<FuseLseekOutT>('fuse_lseek_out', [['offset', 'u64']]);

export interface FuseKstatfsT {
  blocks: number; bfree: number; bavail: number; files: number; ffree: number;
  bsize: number; namelen: number; frsize: number;
}
/** fuse_kstatfs (80 bytes) = fuse_statfs_out. */
export const FuseKstatfs = struct<FuseKstatfsT>('fuse_kstatfs', [
  ['blocks', 'u64'], ['bfree', 'u64'], ['bavail', 'u64'], ['files', 'u64'], ['ffree', 'u64'],
  ['bsize', 'u32'], ['namelen', 'u32'], ['frsize', 'u32'], ['padding', 'pad32'],
], 80);

export interface FuseSetattrInT {
  valid: number; fh: bigint; size: number; lockOwner: bigint;
  atime: number; mtime: number; ctime: number; atimeNsec: number; mtimeNsec: number; ctimeNsec: number;
  mode: number; uid: number; gid: number;
}
export const FuseSetattrIn = struct<FuseSetattrInT>('fuse_setattr_in', [
  ['valid', 'u32'], ['padding', 'pad32'], ['fh', 'big'], ['size', 'u64'], ['lockOwner', 'big'],
  ['atime', 'i64'], ['mtime', 'i64'], ['ctime', 'i64'], ['atimeNsec', 'u32'], ['mtimeNsec', 'u32'], ['ctimeNsec', 'u32'],
  ['mode', 'u32'], ['unused4', 'pad32'], ['uid', 'u32'], ['gid', 'u32'], ['unused5', 'pad32'],
]);

export interface FuseMknodInT { mode: number; rdev: number; umask: number }
export const FuseMknodIn = struct<FuseMknodInT>('fuse_mknod_in', [['mode', 'u32'], ['rdev', 'u32'], ['umask', 'u32'], ['padding', 'pad32']]);

export interface FuseMkdirInT { mode: number; umask: number }
export const FuseMkdirIn = struct<FuseMkdirInT>('fuse_mkdir_in', [['mode', 'u32'], ['umask', 'u32']]);

export interface FuseRenameInT { newdir: bigint }
export const FuseRenameIn = struct<FuseRenameInT>('fuse_rename_in', [['newdir', 'big']]);

export interface FuseRename2InT { newdir: bigint; flags: number }
export const FuseRename2In = struct<FuseRename2InT>('fuse_rename2_in', [['newdir', 'big'], ['flags', 'u32'], ['padding', 'pad32']]);

export interface FuseLinkInT { oldnodeid: bigint }
export const FuseLinkIn = struct<FuseLinkInT>('fuse_link_in', [['oldnodeid', 'big']]);

export interface FuseCreateInT { flags: number; mode: number; umask: number; openFlags: number }
export const FuseCreateIn = struct<FuseCreateInT>('fuse_create_in', [['flags', 'u32'], ['mode', 'u32'], ['umask', 'u32'], ['openFlags', 'u32']]);

export interface FuseWriteInT { fh: bigint; offset: number; size: number; writeFlags: number; lockOwner: bigint; flags: number }
export const FuseWriteIn = struct<FuseWriteInT>('fuse_write_in', [
  ['fh', 'big'], ['offset', 'u64'], ['size', 'u32'], ['writeFlags', 'u32'], ['lockOwner', 'big'], ['flags', 'u32'], ['padding', 'pad32'],
]);

export interface FuseWriteOutT { size: number }
export const FuseWriteOut = struct<FuseWriteOutT>('fuse_write_out', [['size', 'u32'], ['padding', 'pad32']]);

export interface FuseSetxattrInT { size: number; flags: number; setxattrFlags?: number }
/** fuse_setxattr_in: 8 bytes; FuseSetxattrInExt is the 16-byte form used once FUSE_SETXATTR_EXT is negotiated. */
export const FuseSetxattrIn = struct<FuseSetxattrInT>('fuse_setxattr_in', [['size', 'u32'], ['flags', 'u32']]);
export const FuseSetxattrInExt = struct<FuseSetxattrInT>('fuse_setxattr_in', [['size', 'u32'], ['flags', 'u32'], ['setxattrFlags', 'u32'], ['padding', 'pad32']]);

export interface FuseFsyncInT { fh: bigint; fsyncFlags: number }
export const FuseFsyncIn = struct<FuseFsyncInT>('fuse_fsync_in', [['fh', 'big'], ['fsyncFlags', 'u32'], ['padding', 'pad32']]);

export interface FuseFallocateInT { fh: bigint; offset: number; length: number; mode: number }
export const FuseFallocateIn = struct<FuseFallocateInT>('fuse_fallocate_in', [['fh', 'big'], ['offset', 'u64'], ['length', 'u64'], ['mode', 'u32'], ['padding', 'pad32']]);

export interface FuseForgetInT { nlookup: number }
export const FuseForgetIn = struct<FuseForgetInT>('fuse_forget_in', [['nlookup', 'u64']]);

export interface FuseBatchForgetInT { count: number }
export const FuseBatchForgetIn = struct<FuseBatchForgetInT>('fuse_batch_forget_in', [['count', 'u32'], ['dummy', 'pad32']]);

export interface FuseForgetOneT { nodeid: bigint; nlookup: number }
export const FuseForgetOne = struct<FuseForgetOneT>('fuse_forget_one', [['nodeid', 'big'], ['nlookup', 'u64']]);

export interface FuseInterruptInT { unique: bigint }
export const FuseInterruptIn = struct<FuseInterruptInT>('fuse_interrupt_in', [['unique', 'big']]);

export interface FuseSyncfsInT { padding?: number }
export const FuseSyncfsIn = struct<FuseSyncfsInT>('fuse_syncfs_in', [['padding', 'pad64']]);

// ---- directory entries --------------------------------------------------------
/** fuse_dirent header size; the name follows, the record is padded to 8. */
export const FUSE_DIRENT_SIZE = 24;
/** fuse_direntplus header size (entry_out 128 + dirent 24). */
export const FUSE_DIRENTPLUS_SIZE = 152;

export const direntAlign = (n: number): number => (n + 7) & ~7;
export const direntSize = (nameLen: number): number => direntAlign(FUSE_DIRENT_SIZE + nameLen);
export const direntplusSize = (nameLen: number): number => direntAlign(FUSE_DIRENTPLUS_SIZE + nameLen);

/** Write one fuse_dirent (with zeroed padding) at `off`; returns the record length. */
export function encodeDirent(buf: Buffer, off: number, ino: bigint, cookie: number, type: number, name: Buffer): number {
  const len = direntSize(name.length);
  need(buf, off, len, 'fuse_dirent');
  buf.writeBigUInt64LE(ino, off);
  writeU64(buf, off + 8, cookie);
  buf.writeUInt32LE(name.length, off + 16);
  buf.writeUInt32LE(type >>> 0, off + 20);
  name.copy(buf, off + 24);
  buf.fill(0, off + 24 + name.length, off + len);
  return len;
}

export interface FuseDirentT { ino: bigint; off: number; type: number; name: Buffer }

/** Decode one fuse_dirent at `off` (tests, clients); `next` is the offset of the following record. */
export function decodeDirent(buf: Buffer, off: number): FuseDirentT & { next: number } {
  need(buf, off, FUSE_DIRENT_SIZE, 'fuse_dirent');
  const namelen = buf.readUInt32LE(off + 16);
  const len = direntSize(namelen);
  need(buf, off, FUSE_DIRENT_SIZE + namelen, 'fuse_dirent name');
  return {
    ino: buf.readBigUInt64LE(off),
    off: readU64(buf, off + 8),
    type: buf.readUInt32LE(off + 20),
    name: buf.subarray(off + 24, off + 24 + namelen),
    next: off + len,
  };
}

/** Decode one fuse_direntplus at `off`. */
export function decodeDirentplus(buf: Buffer, off: number): FuseDirentT & { entry: Entry; next: number } {
  need(buf, off, FUSE_DIRENTPLUS_SIZE, 'fuse_direntplus');
  const entry = FuseEntryOut.decode(buf, off);
  const d = decodeDirent(buf, off + 128);
  return { ...d, entry };
}

/** `struct` codec builder, exported for transports with their own small structs. */
export { struct as defineStruct };
