// Typed errors to gRPC statuses and back (docs/PROTOCOL.md §13): `ERR_CODE: message` in the details.
import * as grpc from '@grpc/grpc-js';
import { ArrowShmError, fail, isErrorCode, type ErrorCode } from '../errors.js';

export const STATUS_CODES: Partial<Record<grpc.status, ErrorCode>> = {
  [grpc.status.UNAVAILABLE]: 'ERR_PEER_CLOSED',
  [grpc.status.DEADLINE_EXCEEDED]: 'ERR_TIMEOUT',
  [grpc.status.UNAUTHENTICATED]: 'ERR_PEER_CREDENTIALS',
  [grpc.status.PERMISSION_DENIED]: 'ERR_PEER_CREDENTIALS',
  [grpc.status.INVALID_ARGUMENT]: 'ERR_INVALID_ARGUMENT',
  [grpc.status.NOT_FOUND]: 'ERR_INVALID_ARGUMENT',
  [grpc.status.RESOURCE_EXHAUSTED]: 'ERR_TOO_LARGE',
  [grpc.status.CANCELLED]: 'ERR_CLOSED',
};

/** A gRPC failure as a typed error; an arrow-shm server's "ERR_X: message" details keep their code. */
export function fromGrpc(e: unknown, what: string): ArrowShmError {
  if (e instanceof ArrowShmError) return e;
  const err = e as grpc.ServiceError;
  const details = err?.details ?? String(e);
  const ours = /^(ERR_[A-Z_]+): ([\s\S]*)$/.exec(details);
  if (ours && isErrorCode(ours[1]!)) return new ArrowShmError(ours[1], ours[2]!, undefined, undefined, { remote: true, cause: e });
  const code = STATUS_CODES[err?.code as grpc.status] ?? 'ERR_REMOTE';
  return new ArrowShmError(code, `${what}: ${grpc.status[err?.code] ?? 'error'}: ${details}`, undefined, undefined, { remote: true, cause: e });
}

/** @internal A typed error as a gRPC status whose details keep the code ("ERR_X: message"). */
export function toStatus(e: unknown): Partial<grpc.StatusObject> {
  const error = e instanceof ArrowShmError ? e : fail('ERR_REMOTE', String(e));
  return { code: STATUS_OF[error.code] ?? grpc.status.INVALID_ARGUMENT, details: `${error.code}: ${error.message}` };
}

/** The status an arrow-shm server ends a call with, by code (§13.3); others are INVALID_ARGUMENT. */
export const STATUS_OF: Partial<Record<ErrorCode, grpc.status>> = {
  ERR_PEER_CREDENTIALS: grpc.status.UNAUTHENTICATED,
  ERR_TOO_LARGE: grpc.status.RESOURCE_EXHAUSTED,
  ERR_IPC_LIMIT: grpc.status.RESOURCE_EXHAUSTED,
  ERR_RESOURCE_LIMIT: grpc.status.RESOURCE_EXHAUSTED,
  ERR_TIMEOUT: grpc.status.DEADLINE_EXCEEDED,
  ERR_REMOTE: grpc.status.INTERNAL,
};
