/**
 * Loads proto/containerd/services/snapshots/v1/snapshots.proto (and
 * containerd/types/mount.proto, google well-known types from protobufjs) with
 * @grpc/proto-loader: field names kept as in the .proto, enums as numbers,
 * int64 as strings, defaults filled in. Shared by the server and test clients.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** The repository's proto/ directory (from src/ under tsx and from dist/ once built). */
export function protoDir(): string {
  for (const up of ['../..', '../../..']) {
    const p = path.resolve(__dirname, up, 'proto');
    if (fs.existsSync(path.join(p, 'containerd'))) return p;
  }
  throw new Error(`proto/ not found above ${__dirname}`);
}

export const SNAPSHOTS_PROTO = 'containerd/services/snapshots/v1/snapshots.proto';
export const SERVICE_NAME = 'containerd.services.snapshots.v1.Snapshots';

let cached: grpc.ServiceClientConstructor | undefined;

export function snapshotsService(): grpc.ServiceClientConstructor {
  if (cached) return cached;
  const def = protoLoader.loadSync(SNAPSHOTS_PROTO, {
    includeDirs: [protoDir()],
    keepCase: true,
    longs: String,
    enums: Number,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    containerd: { services: { snapshots: { v1: { Snapshots: grpc.ServiceClientConstructor } } } };
  };
  cached = pkg.containerd.services.snapshots.v1.Snapshots;
  return cached;
}
