/**
 * A forward tar reader for OCI layers: ustar, GNU (long names 'L'/'K',
 * base-256 numbers) and PAX ('x' per entry; 'g' global ignored except
 * path-independent keys). Reads headers from a file descriptor and reports
 * each entry with the offset of its data, so file bytes are read lazily.
 */
import * as fs from 'node:fs';
import { einval } from '../../common/errno';

export interface TarEntry {
  path: string;
  type: string; // '0' file, '1' hardlink, '2' symlink, '3' chr, '4' blk, '5' dir, '6' fifo
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  mtimeNsec: number;
  size: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  xattrs: Array<[string, Buffer]>;
  /** offset of the entry's data in the tar stream */
  dataOffset: number;
}

function cstr(b: Buffer): string {
  const z = b.indexOf(0);
  return b.subarray(0, z < 0 ? b.length : z).toString('utf8');
}

function num(b: Buffer, field: string): number {
  if (b[0] & 0x80) { // GNU base-256
    let v = BigInt(b[0] & 0x7f);
    for (let i = 1; i < b.length; i++) v = (v << 8n) | BigInt(b[i]);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw einval(`tar header: ${field} too large`);
    return Number(v);
  }
  const s = cstr(b).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw einval(`tar header: bad octal ${field} '${s}'`);
  return parseInt(s, 8);
}

function parsePax(data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let off = 0;
  while (off < data.length) {
    const sp = data.indexOf(0x20, off);
    if (sp < 0) break;
    const len = parseInt(data.subarray(off, sp).toString(), 10);
    if (!Number.isFinite(len) || len <= 0 || off + len > data.length) throw einval('tar: malformed PAX record');
    const rec = data.subarray(sp + 1, off + len - 1); // drop trailing '\n'
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw einval('tar: PAX record without =');
    out.set(rec.subarray(0, eq).toString('utf8'), rec.subarray(eq + 1));
    off += len;
  }
  return out;
}

function checksumOk(h: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i];
  return num(h.subarray(148, 156), 'chksum') === sum;
}

const MAX_META = 16 << 20;

/** Iterate the entries of a tar file. Stops at the end-of-archive marker or EOF. */
export function* readTar(fd: number, fileSize: number): Generator<TarEntry> {
  let off = 0;
  let longName: string | undefined;
  let longLink: string | undefined;
  let pax: Map<string, Buffer> | undefined;
  const hdr = Buffer.alloc(512);
  const readAt = (buf: Buffer, pos: number) => {
    if (pos + buf.length > fileSize) throw einval(`tar: truncated at offset ${pos}`);
    let done = 0;
    while (done < buf.length) {
      const n = fs.readSync(fd, buf, done, buf.length - done, pos + done);
      if (n === 0) throw einval(`tar: truncated at offset ${pos + done}`);
      done += n;
    }
  };
  while (off + 512 <= fileSize) {
    readAt(hdr, off);
    if (hdr.every((b) => b === 0)) return;
    if (!checksumOk(hdr)) throw einval(`tar: bad header checksum at offset ${off}`);
    const type = String.fromCharCode(hdr[156] || 0x30);
    const size = num(hdr.subarray(124, 136), 'size');
    const dataOffset = off + 512;
    const next = dataOffset + Math.ceil(size / 512) * 512;
    if (dataOffset + size > fileSize) throw einval(`tar: entry at ${off} claims ${size} bytes past end of file`);
    if (type === 'L' || type === 'K' || type === 'x' || type === 'g') {
      if (size > MAX_META) throw einval(`tar: ${type} metadata entry too large (${size})`);
      const data = Buffer.alloc(size);
      readAt(data, dataOffset);
      if (type === 'L') longName = cstr(data);
      else if (type === 'K') longLink = cstr(data);
      else if (type === 'x') pax = parsePax(data);
      off = next;
      continue;
    }
    const magic = hdr.subarray(257, 263).toString('latin1');
    const prefix = magic.startsWith('ustar') && magic !== 'ustar ' ? cstr(hdr.subarray(345, 500)) : '';
    let p = longName ?? (prefix ? `${prefix}/${cstr(hdr.subarray(0, 100))}` : cstr(hdr.subarray(0, 100)));
    let linkname = longLink ?? cstr(hdr.subarray(157, 257));
    const e: TarEntry = {
      path: p, type, size, linkname, dataOffset,
      mode: num(hdr.subarray(100, 108), 'mode') & 0o7777,
      uid: num(hdr.subarray(108, 116), 'uid'),
      gid: num(hdr.subarray(116, 124), 'gid'),
      mtime: num(hdr.subarray(136, 148), 'mtime'),
      mtimeNsec: 0,
      devmajor: type === '3' || type === '4' ? num(hdr.subarray(329, 337), 'devmajor') : 0,
      devminor: type === '3' || type === '4' ? num(hdr.subarray(337, 345), 'devminor') : 0,
      xattrs: [],
    };
    if (pax) {
      for (const [k, v] of pax) {
        const s = v.toString('utf8');
        if (k === 'path') p = e.path = s;
        else if (k === 'linkpath') linkname = e.linkname = s;
        else if (k === 'size') e.size = Number(s);
        else if (k === 'uid') e.uid = Number(s);
        else if (k === 'gid') e.gid = Number(s);
        else if (k === 'mtime') {
          const [sec, frac = ''] = s.split('.');
          e.mtime = Number(sec);
          e.mtimeNsec = Number((frac + '000000000').slice(0, 9));
        } else if (k.startsWith('SCHILY.xattr.')) e.xattrs.push([k.slice(13), v]);
        else if (k.startsWith('LIBARCHIVE.xattr.')) e.xattrs.push([decodeURIComponent(k.slice(17)), Buffer.from(s, 'base64')]);
      }
      if (!Number.isSafeInteger(e.size) || e.size < 0 || dataOffset + e.size > fileSize) throw einval(`tar: bad PAX size for ${p}`);
    }
    longName = longLink = pax = undefined;
    off = type === '1' || type === '2' || type === '5' ? dataOffset + Math.ceil(Math.min(e.size, size) / 512) * 512 : dataOffset + Math.ceil(e.size / 512) * 512;
    yield e;
  }
}
