/** What the bootstrap writers (v5, v6) need besides the tree. */
import type { Compressor } from '../../common/compress';
import type { DigestAlgorithm } from '../../common/digest';
import type { BlobInfo } from '../metadata/types';
import type { BuildInode } from './tree';

export interface BootstrapOptions {
  chunkSize: number;
  compressor: Compressor;
  digester: DigestAlgorithm;
  /** EXPLICIT_UID_GID: store real uid/gid (default true; false = `--repeatable`) */
  explicitUidGid: boolean;
  /** blobs in blob-table order; chunk.blobIndex indexes this array */
  blobs: BlobInfo[];
  /** inodes named by the prefetch list, in list order (root allowed) */
  prefetch: BuildInode[];
  /** extra RafsSuperFlags to set (e.g. INLINED_CHUNK_DIGEST) */
  extraFlags: number;
}
