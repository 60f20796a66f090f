/**
 * S3 backend (storage-backends §3 "S3"): blobs are objects read path style,
 * `{scheme}://{endpoint}/{bucket_name}/{object_prefix}{blob_id}` (an empty
 * endpoint means `s3.amazonaws.com`), with a ranged `GET`; `size()` is a
 * `HEAD`. Reads, retries and checks are object-storage.ts's.
 *
 * Every attempt is signed anew with AWS Signature V4, by AWS SDK v3's own
 * signer (`@smithy/signature-v4`, SHA-256 from `@smithy/hash-node`), on the
 * header set upstream signs:
 *  - `host`: the endpoint's host *without* the port (also what is sent);
 *  - `range` (reads only);
 *  - `x-amz-content-sha256`: the SHA-256 of the empty payload, which is also
 *    the payload hash of the canonical request;
 *  - `x-amz-date`: the signing time, `YYYYMMDDTHHMMSSZ`;
 * so SignedHeaders is `host;range;x-amz-content-sha256;x-amz-date` for GET and
 * `host;x-amz-content-sha256;x-amz-date` for HEAD; the canonical URI is the
 * path as sent (not encoded again), the query is empty, the scope
 * `<date>/<region>/s3/aws4_request`. User-Agent and `NYDUS_HEADER_*` headers
 * are added by HttpClient after signing, so they are never signed. As
 * upstream, requests are signed even with empty keys (no anonymous mode).
 * Backend metrics report S3 as `oss` (metricsBackendType).
 *
 * Deliberate differences: those of object-storage.ts (stricter replies,
 * percent-encoded keys, endpoint/bucket validation); header values are signed
 * with runs of blanks folded, as SigV4 defines (upstream signs values as they
 * are; the values signed here never contain blanks, so the results agree).
 */
import { Hash } from '@smithy/hash-node';
import { SignatureV4 } from '@smithy/signature-v4';
import type { S3Config } from '../../common/config';
import { einval } from '../../common/errno';
import type { Headers } from './http';
import {
  EMPTY_SHA256,
  type RemoteBackendOptions,
  RemoteBlobBackend,
  checkBucket,
  checkEndpoint,
  checkObjectPrefix,
  encodeObjectKey,
  exactUrl,
  httpScheme,
} from './object-storage';

export const DEFAULT_S3_ENDPOINT = 's3.amazonaws.com';

export interface SigV4Credentials {
  accessKeyId: string;
  secretAccessKey: string;
}

/**
 * The SigV4 signer as this backend configures it: the path is signed as
 * given (S3 does not encode it twice) and no payload checksum header is added
 * behind our back (signS3Request sets `x-amz-content-sha256` itself).
 */
export function createSigV4Signer(creds: SigV4Credentials, region: string, service = 's3'): SignatureV4 {
  return new SignatureV4({
    credentials: { accessKeyId: creds.accessKeyId, secretAccessKey: creds.secretAccessKey },
    region,
    service,
    sha256: Hash.bind(null, 'sha256'),
    uriEscapePath: false,
    applyChecksum: false,
  });
}

export interface V4Request {
  method: string;
  /** `https:` unless given; not part of the signature */
  protocol?: string;
  /** the Host header value */
  host: string;
  /** the path as sent */
  path: string;
  query?: Record<string, string>;
  headers: Headers;
  body?: string;
}

/** Sign `req` at `date`; returns every header to send (host, x-amz-date, authorization included). */
export async function signV4(signer: SignatureV4, req: V4Request, date: Date): Promise<Headers> {
  // the request shape the signer takes (HttpRequest of @smithy/types)
  const request: Parameters<SignatureV4['presign']>[0] = {
    method: req.method,
    protocol: req.protocol ?? 'https:',
    hostname: req.host,
    path: req.path,
    query: req.query ?? {},
    headers: { host: req.host, ...req.headers },
    body: req.body,
  };
  const signed = await signer.sign(request, { signingDate: date });
  return { ...signed.headers };
}

/** Sign one S3 request to `url` exactly as upstream does (see the module doc). */
export function signS3Request(signer: SignatureV4, method: string, url: URL, headers: Headers, date: Date): Promise<Headers> {
  return signV4(signer, {
    method,
    protocol: url.protocol,
    host: url.hostname,
    path: url.pathname,
    headers: { ...headers, host: url.hostname, 'x-amz-content-sha256': EMPTY_SHA256 },
  }, date);
}

export interface S3BackendOptions extends RemoteBackendOptions {
  /** the signing clock (tests) */
  now?: () => Date;
}

export class S3Backend extends RemoteBlobBackend {
  constructor(cfg: S3Config, opts: S3BackendOptions = {}) {
    const what = 'backend.s3';
    const scheme = httpScheme(cfg.scheme, what);
    const endpoint = cfg.endpoint || DEFAULT_S3_ENDPOINT;
    checkEndpoint(endpoint, what);
    if (!cfg.region) throw einval(`${what}.region must not be empty`);
    checkBucket(cfg.bucket_name, what);
    const prefix = cfg.object_prefix ?? '';
    checkObjectPrefix(prefix, what);
    const signer = createSigV4Signer({ accessKeyId: cfg.access_key_id ?? '', secretAccessKey: cfg.access_key_secret ?? '' }, cfg.region);
    const now = opts.now ?? (() => new Date());
    const urlOf = (blobId: string): URL => {
      const path = `/${cfg.bucket_name}/${encodeObjectKey(prefix + blobId)}`;
      return exactUrl(`${scheme}://${endpoint}${path}`, path);
    };
    super('s3', `s3 ${endpoint}/${cfg.bucket_name}/${prefix}`, cfg, urlOf, (method, url, headers) => signS3Request(signer, method, url, headers, now()), opts);
  }
}
