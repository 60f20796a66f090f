/**
 * Snapshot labels the snapshotter reads (kata-contract.md §5.4,
 * rafs-spec.md §5) and the bounds every gRPC request's labels must meet.
 * containerd limits one key + value pair to 4096 bytes; the count and the
 * total size are our bounds against hostile clients (containerd's unpacker
 * and CRI send about a dozen).
 */
import { invalidArgument } from './errors';

export const TARGET_SNAPSHOT_REF = 'containerd.io/snapshot.ref';
export const NYDUS_DATA_LAYER = 'containerd.io/snapshot/nydus-blob';
export const NYDUS_META_LAYER = 'containerd.io/snapshot/nydus-bootstrap';
export const NYDUS_FS_VERSION = 'containerd.io/snapshot/nydus-fs-version';
export const CRI_IMAGE_REF = 'containerd.io/snapshot/cri.image-ref';
export const CRI_LAYER_DIGEST = 'containerd.io/snapshot/cri.layer-digest';
export const CRI_MANIFEST_DIGEST = 'containerd.io/snapshot/cri.manifest-digest';
/** set by index detection on the OCI layers of an image whose index has a Nydus alternative */
export const NYDUS_INDEX_ALTERNATIVE = 'containerd.io/snapshot/nydus-index-alternative';
export const STARGZ_REFERENCE = 'containerd.io/snapshot/remote/stargz.reference';
export const PULL_USERNAME = 'containerd.io/snapshot/pullusername';
export const PULL_SECRET = 'containerd.io/snapshot/pullsecret';
export const OVERLAY_VOLATILE = 'containerd.io/snapshot/overlay.volatile';
export const TARGET_LAYER_DIGEST = 'containerd.io/snapshot/cri.layer-digest';

export const MAX_LABEL_PAIR_BYTES = 4096;
export const MAX_LABELS = 256;
export const MAX_LABELS_BYTES = 256 * 1024;

/** Throws InvalidArgument unless `labels` is a bounded string → string map. */
export function validateLabels(labels: unknown, what = 'labels'): Record<string, string> {
  if (labels === undefined || labels === null) return {};
  if (typeof labels !== 'object' || Array.isArray(labels)) throw invalidArgument(`${what} must be a map`);
  const out: Record<string, string> = {};
  let n = 0;
  let total = 0;
  for (const [k, v] of Object.entries(labels as Record<string, unknown>)) {
    if (typeof v !== 'string') throw invalidArgument(`${what}: value of ${JSON.stringify(k.slice(0, 100))} is not a string`);
    if (++n > MAX_LABELS) throw invalidArgument(`${what}: more than ${MAX_LABELS} labels`);
    if (k.length === 0) throw invalidArgument(`${what}: empty label key`);
    const size = Buffer.byteLength(k) + Buffer.byteLength(v);
    if (size > MAX_LABEL_PAIR_BYTES) {
      throw invalidArgument(`label key and value greater than maximum size (${MAX_LABEL_PAIR_BYTES} bytes), key: ${k.slice(0, 64)}`);
    }
    if (k.includes('\0') || v.includes('\0')) throw invalidArgument(`${what}: NUL byte in label ${JSON.stringify(k.slice(0, 100))}`);
    total += size;
    if (total > MAX_LABELS_BYTES) throw invalidArgument(`${what}: more than ${MAX_LABELS_BYTES} bytes of labels`);
    out[k] = v;
  }
  return out;
}

export const isNydusDataLayer = (l: Record<string, string>): boolean => l[NYDUS_DATA_LAYER] !== undefined;
export const isNydusMetaLayer = (l: Record<string, string>): boolean => l[NYDUS_META_LAYER] !== undefined;
export const isIndexAlternative = (l: Record<string, string>): boolean => l[NYDUS_INDEX_ALTERNATIVE] === 'true';

/** The image reference of a meta layer: cri.image-ref, else the stargz reference. */
export function imageRefOf(l: Record<string, string>): string | undefined {
  return l[CRI_IMAGE_REF] || l[STARGZ_REFERENCE] || undefined;
}
