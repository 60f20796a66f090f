/**
 * Little-endian 64-bit fields as JS numbers, shared by every on-wire and
 * on-disk codec (RAFS, FUSE, vhost-user). Values above 2^53 - 1 are an
 * EINVAL naming the field rather than a silent rounding.
 */
import { einval } from './errno';

export const TWO32 = 0x1_0000_0000;

/** u64 as a number; EINVAL above 2^53 - 1. */
export function readU64(buf: Buffer, off: number, field = `u64 at ${off}`): number {
  const hi = buf.readUInt32LE(off + 4);
  if (hi > 0x1f_ffff) throw einval(`${field} 0x${(BigInt(hi) * 0x1_0000_0000n + BigInt(buf.readUInt32LE(off))).toString(16)} is too large (exceeds 2^53)`);
  return hi * TWO32 + buf.readUInt32LE(off);
}

/** s64 as a number (times). */
export function readI64(buf: Buffer, off: number): number {
  const hi = buf.readInt32LE(off + 4);
  if (hi > 0x1f_ffff || hi < -0x20_0000) throw einval(`s64 at ${off} out of range`);
  return hi * TWO32 + buf.readUInt32LE(off);
}

/** Write an integral number (negative = two's complement) as 64-bit LE. */
export function writeU64(buf: Buffer, off: number, n: number): void {
  buf.writeUInt32LE(n >>> 0, off);
  buf.writeUInt32LE(Math.floor(n / TWO32) >>> 0, off + 4);
}
