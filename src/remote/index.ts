/**
 * src/remote: the OCI distribution client shared by nydusify (src/converter)
 * and ctr-remote (src/snapshotter). Layer 2: imports common and storage only
 * (its auth flow is storage/backend/registry-auth.ts, the registry backend's).
 *
 *   import { RegistryClient } from '../remote/client';   (name files, not the folder:
 *   the layering test resolves imports by file)
 *   import { parseReference } from '../remote/reference';
 *   const c = new RegistryClient({ plainHttp: false, insecure: false });
 *   const ref = parseReference('localhost:5000/app:v1');
 *   const m = await c.fetchManifest(ref);          // { descriptor, bytes, json }
 *   const layer = await c.fetchBlob(ref, desc);     // verified Readable
 *
 * See client.ts for the behaviour and deliberate differences.
 */
export * from './client';
export * from './docker-config';
export * from './media-types';
export * from './platform';
export * from './reference';
