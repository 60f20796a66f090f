/**
 * Moving a blob, bytes unchanged, from an image source to an image sink
 * (registry or OCI-layout archive on either side): a cross-repo mount when
 * both ends are repositories of one registry, else a stream from the source
 * into the sink, which verifies digest and size (HEAD skips blobs the target
 * already has). Used by `nydusify copy` and by `convert --merge-platform`,
 * whose index references the source layers.
 */
import { RegistryClient } from './client';
import type { Descriptor } from './media-types';
import type { ImageSink, ImageSource } from './oci-archive';
import { type Reference, registryHost } from './reference';

export interface TransferOptions {
  /** > 0: chunked upload of this many bytes per PATCH (registry targets) */
  chunkSize?: number;
}

export function transferBlob(from: ImageSource, fromRef: Reference, to: ImageSink, toRef: Reference, desc: Descriptor, o: TransferOptions = {}): Promise<unknown> {
  const sameRegistry = from instanceof RegistryClient && to instanceof RegistryClient && registryHost(fromRef.domain) === registryHost(toRef.domain);
  return to.pushBlob(toRef, desc, () => from.fetchBlob(fromRef, desc), { mountFrom: sameRegistry ? fromRef.repository : undefined, chunkSize: o.chunkSize });
}
