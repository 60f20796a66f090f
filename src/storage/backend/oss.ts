/**
 * Aliyun OSS backend (storage-backends §3 "OSS"): blobs are objects read
 * virtual-host style, `{scheme}://{bucket_name}.{endpoint}/{object_prefix}{blob_id}`,
 * with a ranged `GET`; `size()` is a `HEAD`. Reads, retries and checks are
 * object-storage.ts's. Metrics type `oss`.
 *
 * Every attempt is signed anew with OSS signature V1, as upstream:
 *  - `Date: <RFC 1123 GMT time>`;
 *  - `Authorization: OSS <access_key_id>:<base64(HMAC-SHA1(secret, S))>` where S
 *    is `VERB`, an empty Content-MD5, an empty Content-Type, the Date, then the
 *    resource `/<bucket>/<object_prefix><blob_id>` (the raw key), joined by
 *    newlines (no `x-oss-*` headers are sent, so none are signed);
 *  - `Range` is not signed; signing happens even with empty keys.
 *
 * Deliberate differences: those of object-storage.ts (stricter replies,
 * percent-encoded keys on the wire, endpoint/bucket validation).
 */
import * as crypto from 'node:crypto';
import type { OssConfig } from '../../common/config';
import type { Headers } from './http';
import {
  type RemoteBackendOptions,
  RemoteBlobBackend,
  checkBucket,
  checkEndpoint,
  checkObjectPrefix,
  encodeObjectKey,
  exactUrl,
  httpScheme,
} from './object-storage';

/** The string OSS V1 signs for a request without Content-MD5, Content-Type or x-oss-* headers. */
export function ossStringToSign(verb: string, date: string, resource: string): string {
  return `${verb}\n\n\n${date}\n${resource}`;
}

/** `Authorization` value of OSS signature V1. */
export function ossAuthorization(accessKeyId: string, secret: string, verb: string, date: string, resource: string): string {
  const sig = crypto.createHmac('sha1', secret).update(ossStringToSign(verb, date, resource), 'utf8').digest('base64');
  return `OSS ${accessKeyId}:${sig}`;
}

export interface OssBackendOptions extends RemoteBackendOptions {
  /** the signing clock (tests) */
  now?: () => Date;
}

export class OssBackend extends RemoteBlobBackend {
  constructor(cfg: OssConfig, opts: OssBackendOptions = {}) {
    const what = 'backend.oss';
    const scheme = httpScheme(cfg.scheme, what);
    checkEndpoint(cfg.endpoint, what);
    checkBucket(cfg.bucket_name, what);
    const prefix = cfg.object_prefix ?? '';
    checkObjectPrefix(prefix, what);
    const host = `${cfg.bucket_name}.${cfg.endpoint}`;
    const keyId = cfg.access_key_id ?? '';
    const secret = cfg.access_key_secret ?? '';
    const now = opts.now ?? (() => new Date());
    const urlOf = (blobId: string): URL => {
      const path = `/${encodeObjectKey(prefix + blobId)}`;
      return exactUrl(`${scheme}://${host}${path}`, path);
    };
    const sign = (method: string, url: URL, headers: Headers): Headers => {
      const date = now().toUTCString();
      // the resource names the raw key: undo our own per-segment encoding
      const resource = `/${cfg.bucket_name}/${decodeURIComponent(url.pathname.slice(1))}`;
      return { ...headers, date, authorization: ossAuthorization(keyId, secret, method, date, resource) };
    };
    super('oss', `oss ${host}/${prefix}`, cfg, urlOf, sign, opts);
  }
}
