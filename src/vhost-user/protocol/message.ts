/**
 * vhost-user wire format (frontend → backend channel): request ids, header
 * flags, feature bits and the payload codecs with their size validation.
 * Spec: QEMU docs/interop/vhost-user.rst; kata-contract §7.1-7.4.
 * All fields are little endian (x86_64 / arm64 hosts).
 */

/** Request ids, named as in the spec (FrontendReq, formerly "master"). */
export enum FrontendReq {
  GET_FEATURES = 1,
  SET_FEATURES = 2,
  SET_OWNER = 3,
  RESET_OWNER = 4,
  SET_MEM_TABLE = 5,
  SET_LOG_BASE = 6,
  SET_LOG_FD = 7,
  SET_VRING_NUM = 8,
  SET_VRING_ADDR = 9,
  SET_VRING_BASE = 10,
  GET_VRING_BASE = 11,
  SET_VRING_KICK = 12,
  SET_VRING_CALL = 13,
  SET_VRING_ERR = 14,
  GET_PROTOCOL_FEATURES = 15,
  SET_PROTOCOL_FEATURES = 16,
  GET_QUEUE_NUM = 17,
  SET_VRING_ENABLE = 18,
  SEND_RARP = 19,
  NET_SET_MTU = 20,
  SET_BACKEND_REQ_FD = 21,
  IOTLB_MSG = 22,
  SET_VRING_ENDIAN = 23,
  GET_CONFIG = 24,
  SET_CONFIG = 25,
  CREATE_CRYPTO_SESSION = 26,
  CLOSE_CRYPTO_SESSION = 27,
  POSTCOPY_ADVISE = 28,
  POSTCOPY_LISTEN = 29,
  POSTCOPY_END = 30,
  GET_INFLIGHT_FD = 31,
  SET_INFLIGHT_FD = 32,
  GPU_SET_SOCKET = 33,
  RESET_DEVICE = 34,
  VRING_KICK = 35,
  GET_MAX_MEM_SLOTS = 36,
  ADD_MEM_REG = 37,
  REM_MEM_REG = 38,
  SET_STATUS = 39,
  GET_STATUS = 40,
}

export const HEADER_SIZE = 12;
/** Largest payload accepted (rust-vmm MAX_MSG_SIZE). */
export const MAX_MSG_SIZE = 0x1000;
export const VHOST_USER_VERSION = 0x1;
export const VHOST_USER_VERSION_MASK = 0x3;
export const VHOST_USER_REPLY_MASK = 0x4;
export const VHOST_USER_NEED_REPLY_MASK = 0x8;
/** Every reply carries exactly these flags (version 1 | REPLY). QEMU rejects anything else. */
export const REPLY_FLAGS = VHOST_USER_VERSION | VHOST_USER_REPLY_MASK;

/** Virtio / vhost feature bits (kata-contract §7.2). */
export const VIRTIO_F_NOTIFY_ON_EMPTY = 1n << 24n;
export const VHOST_F_LOG_ALL = 1n << 26n;
export const VIRTIO_RING_F_INDIRECT_DESC = 1n << 28n;
export const VIRTIO_RING_F_EVENT_IDX = 1n << 29n;
export const VHOST_USER_F_PROTOCOL_FEATURES = 1n << 30n;
export const VIRTIO_F_VERSION_1 = 1n << 32n;
export const VIRTIO_F_ACCESS_PLATFORM = 1n << 33n;
export const VIRTIO_F_RING_PACKED = 1n << 34n;
export const VIRTIO_F_IN_ORDER = 1n << 35n;

/** Protocol feature bits (kata-contract §7.3). */
export const PROTOCOL_F_MQ = 1n << 0n;
export const PROTOCOL_F_LOG_SHMFD = 1n << 1n;
export const PROTOCOL_F_REPLY_ACK = 1n << 3n;
export const PROTOCOL_F_BACKEND_REQ = 1n << 5n;
export const PROTOCOL_F_CONFIG = 1n << 9n;
export const PROTOCOL_F_BACKEND_SEND_FD = 1n << 10n;
export const PROTOCOL_F_RESET_DEVICE = 1n << 13n;
export const PROTOCOL_F_CONFIGURE_MEM_SLOTS = 1n << 15n;

/** vring-file payload: bits 0-7 index, bit 8 = no fd attached. */
export const VRING_IDX_MASK = 0xffn;
export const VRING_NOFD_MASK = 0x100n;

/** Baseline region count of SET_MEM_TABLE. */
export const MAX_MEM_TABLE_REGIONS = 8;

export interface Header {
  request: number;
  flags: number;
  size: number;
}

export const Header = {
  decode(b: Buffer): Header {
    return { request: b.readUInt32LE(0), flags: b.readUInt32LE(4), size: b.readUInt32LE(8) };
  },
  encode(h: Header): Buffer {
    const b = Buffer.alloc(HEADER_SIZE);
    b.writeUInt32LE(h.request >>> 0, 0);
    b.writeUInt32LE(h.flags >>> 0, 4);
    b.writeUInt32LE(h.size >>> 0, 8);
    return b;
  },
};

/** A payload that does not match its request; `fatal` ends the connection. */
export class VhostUserError extends Error {
  constructor(message: string, readonly fatal = false) {
    super(message);
    this.name = 'VhostUserError';
  }
}

function expectSize(req: string, body: Buffer, size: number): void {
  if (body.length !== size) throw new VhostUserError(`${req}: payload is ${body.length} bytes, expected ${size}`);
}

/** u64 payload. */
export const VhostUserU64 = {
  SIZE: 8,
  decode(req: string, b: Buffer): bigint {
    expectSize(req, b, 8);
    return b.readBigUInt64LE(0);
  },
  encode(v: bigint): Buffer {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt.asUintN(64, v), 0);
    return b;
  },
};

/** struct vhost_vring_state { u32 index; u32 num; } */
export interface VringState { index: number; num: number }
export const VhostUserVringState = {
  SIZE: 8,
  decode(req: string, b: Buffer): VringState {
    expectSize(req, b, 8);
    return { index: b.readUInt32LE(0), num: b.readUInt32LE(4) };
  },
  encode(s: VringState): Buffer {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(s.index >>> 0, 0);
    b.writeUInt32LE(s.num >>> 0, 4);
    return b;
  },
};

/** struct vhost_vring_addr; addresses are frontend (QEMU) virtual addresses, kept as bigint. */
export interface VringAddr { index: number; flags: number; desc: bigint; used: bigint; avail: bigint; log: bigint }
export const VhostUserVringAddr = {
  SIZE: 40,
  decode(req: string, b: Buffer): VringAddr {
    expectSize(req, b, 40);
    return {
      index: b.readUInt32LE(0), flags: b.readUInt32LE(4), desc: b.readBigUInt64LE(8),
      used: b.readBigUInt64LE(16), avail: b.readBigUInt64LE(24), log: b.readBigUInt64LE(32),
    };
  },
  encode(a: VringAddr): Buffer {
    const b = Buffer.alloc(40);
    b.writeUInt32LE(a.index >>> 0, 0);
    b.writeUInt32LE(a.flags >>> 0, 4);
    b.writeBigUInt64LE(a.desc, 8);
    b.writeBigUInt64LE(a.used, 16);
    b.writeBigUInt64LE(a.avail, 24);
    b.writeBigUInt64LE(a.log, 32);
    return b;
  },
};

/** struct vhost_user_memory_region. */
export interface MemoryRegionDesc { guestPhysAddr: bigint; memorySize: bigint; userspaceAddr: bigint; mmapOffset: bigint }
const REGION_SIZE = 32;
function decodeRegion(b: Buffer, off: number): MemoryRegionDesc {
  return {
    guestPhysAddr: b.readBigUInt64LE(off), memorySize: b.readBigUInt64LE(off + 8),
    userspaceAddr: b.readBigUInt64LE(off + 16), mmapOffset: b.readBigUInt64LE(off + 24),
  };
}
function encodeRegion(r: MemoryRegionDesc, b: Buffer, off: number): void {
  b.writeBigUInt64LE(r.guestPhysAddr, off);
  b.writeBigUInt64LE(r.memorySize, off + 8);
  b.writeBigUInt64LE(r.userspaceAddr, off + 16);
  b.writeBigUInt64LE(r.mmapOffset, off + 24);
}

/** SET_MEM_TABLE: { u32 nregions; u32 padding; region[nregions] } */
export const VhostUserMemory = {
  decode(req: string, b: Buffer, maxRegions: number): MemoryRegionDesc[] {
    if (b.length < 8) throw new VhostUserError(`${req}: payload is ${b.length} bytes, expected ≥ 8`);
    const n = b.readUInt32LE(0);
    if (n === 0 || n > maxRegions) throw new VhostUserError(`${req}: ${n} regions (allowed 1..${maxRegions})`);
    expectSize(req, b, 8 + n * REGION_SIZE);
    return Array.from({ length: n }, (_, i) => decodeRegion(b, 8 + i * REGION_SIZE));
  },
  encode(regions: MemoryRegionDesc[]): Buffer {
    const b = Buffer.alloc(8 + regions.length * REGION_SIZE);
    b.writeUInt32LE(regions.length, 0);
    regions.forEach((r, i) => encodeRegion(r, b, 8 + i * REGION_SIZE));
    return b;
  },
};

/** ADD_MEM_REG / REM_MEM_REG: { u64 padding; region } */
export const VhostUserSingleMemRegion = {
  SIZE: 40,
  decode(req: string, b: Buffer): MemoryRegionDesc {
    expectSize(req, b, 40);
    return decodeRegion(b, 8);
  },
  encode(r: MemoryRegionDesc): Buffer {
    const b = Buffer.alloc(40);
    encodeRegion(r, b, 8);
    return b;
  },
};

/** vring-file u64 (SET_VRING_KICK/CALL/ERR). */
export function decodeVringFile(req: string, b: Buffer): { index: number; noFd: boolean } {
  const v = VhostUserU64.decode(req, b);
  if ((v & ~(VRING_IDX_MASK | VRING_NOFD_MASK)) !== 0n) throw new VhostUserError(`${req}: invalid bits in 0x${v.toString(16)}`);
  return { index: Number(v & VRING_IDX_MASK), noFd: (v & VRING_NOFD_MASK) !== 0n };
}

/** A complete received message: header, exactly `size` payload bytes, attached fds (owned). */
export interface Message {
  hdr: Header;
  body: Buffer;
  fds: number[];
}

/** One encoded message (header + payload). */
export function encodeMessage(request: number, flags: number, body: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([Header.encode({ request, flags, size: body.length }), body]);
}

export const reqName = (r: number): string => FrontendReq[r] ?? `UNKNOWN(${r})`;
