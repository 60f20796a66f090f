/**
 * Files opened a second time with O_DIRECT (I/O that bypasses the page
 * cache), for the blob cache's writes and localfs's reads of read-ahead.
 */
import { constants as fsConstants } from 'node:fs';
import * as fsp from 'node:fs/promises';

/** Alignment of direct I/O here (file offset, length, memory): the page size, more than any device's logical block needs. */
export const DIRECT_IO_ALIGN = 4096;

/**
 * `file` opened with O_DIRECT for reading or writing, or undefined where
 * that is refused (tmpfs on older kernels, some FUSE file systems): the
 * caller then uses the page cache.
 */
export async function openDirect(file: string, mode: 'read' | 'write'): Promise<fsp.FileHandle | undefined> {
  try {
    return await fsp.open(file, (mode === 'read' ? fsConstants.O_RDONLY : fsConstants.O_WRONLY) | fsConstants.O_DIRECT);
  } catch {
    return undefined;
  }
}
