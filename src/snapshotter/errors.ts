/**
 * Snapshotter errors with containerd errdefs classes, mapped to the gRPC
 * status codes containerd's proxy converts back (kata-contract.md §5.2):
 * NotFound=5, AlreadyExists=6, FailedPrecondition=9, InvalidArgument=3,
 * ResourceExhausted=8 (our table bounds), Unavailable=14, Unknown=2.
 */
import { status } from '@grpc/grpc-js';

export type SnapshotErrorCode =
  | 'NotFound'
  | 'AlreadyExists'
  | 'FailedPrecondition'
  | 'InvalidArgument'
  | 'ResourceExhausted'
  | 'Unavailable'
  | 'Unknown';

export const GRPC_CODE: Record<SnapshotErrorCode, status> = {
  NotFound: status.NOT_FOUND,
  AlreadyExists: status.ALREADY_EXISTS,
  FailedPrecondition: status.FAILED_PRECONDITION,
  InvalidArgument: status.INVALID_ARGUMENT,
  ResourceExhausted: status.RESOURCE_EXHAUSTED,
  Unavailable: status.UNAVAILABLE,
  Unknown: status.UNKNOWN,
};

export class SnapshotError extends Error {
  constructor(readonly code: SnapshotErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SnapshotError';
  }
}

export const notFound = (m: string): SnapshotError => new SnapshotError('NotFound', `${m}: not found`);
export const alreadyExists = (m: string): SnapshotError => new SnapshotError('AlreadyExists', `${m}: already exists`);
export const failedPrecondition = (m: string): SnapshotError => new SnapshotError('FailedPrecondition', `${m}: failed precondition`);
export const invalidArgument = (m: string): SnapshotError => new SnapshotError('InvalidArgument', `${m}: invalid argument`);
export const exhausted = (m: string): SnapshotError => new SnapshotError('ResourceExhausted', m);

export function isCode(e: unknown, code: SnapshotErrorCode): boolean {
  return e instanceof SnapshotError && e.code === code;
}

/** gRPC status code of any error (plain errors are Unknown, as containerd's errdefs do). */
export function grpcCodeOf(e: unknown): status {
  return e instanceof SnapshotError ? GRPC_CODE[e.code] : status.UNKNOWN;
}
