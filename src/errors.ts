/** Stable error codes, shared by every arrow-shm peer (docs/PROTOCOL.md §9). */
export const ErrorCodes = [
  'ERR_PROTOCOL',
  'ERR_PROTOCOL_VERSION',
  'ERR_PEER_CREDENTIALS',
  'ERR_PEER_CLOSED',
  'ERR_SEGMENT_INVALID',
  'ERR_SEGMENT_UNSEALED',
  'ERR_SEGMENT_BOUNDS',
  'ERR_TOO_LARGE',
  'ERR_IPC_TRUNCATED',
  'ERR_IPC_INVALID',
  'ERR_IPC_UNSUPPORTED',
  'ERR_TIMEOUT',
  'ERR_CLOSED',
  'ERR_INVALID_ARGUMENT',
  'ERR_SYSCALL',
  'ERR_REMOTE',
  'ERR_RING_FULL',
  'ERR_NO_READER_SLOT',
  'ERR_RING_INVALID',
  'ERR_IPC_LIMIT',
  'ERR_RESOURCE_LIMIT',
  'ERR_ADDRESS_IN_USE',
  'ERR_NOT_FOUND',
  'ERR_EXISTS',
] as const;

export type ErrorCode = (typeof ErrorCodes)[number];

const knownCodes = new Set<string>(ErrorCodes);

export function isErrorCode(code: string): code is ErrorCode {
  return knownCodes.has(code);
}

/**
 * The one error class of arrow-shm. Switch on `code`, never on the message.
 * `errno`/`syscall` are set when a system call failed; `remote` when the peer reported the error.
 */
export class ArrowShmError extends Error {
  readonly code: ErrorCode;
  readonly errno?: number;
  readonly syscall?: string;
  readonly remote: boolean;

  constructor(code: ErrorCode, message: string, errno?: number, syscall?: string, options?: { remote?: boolean; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ArrowShmError';
    this.code = code;
    if (errno !== undefined) this.errno = errno;
    if (syscall !== undefined) this.syscall = syscall;
    this.remote = options?.remote ?? false;
  }
}

/** Shorthand used across the code base: `throw fail('ERR_X', 'expected a, got b')`. */
export function fail(code: ErrorCode, message: string, cause?: unknown): ArrowShmError {
  return new ArrowShmError(code, message, undefined, undefined, cause === undefined ? undefined : { cause });
}

export function isArrowShmError(e: unknown, code?: ErrorCode): e is ArrowShmError {
  return e instanceof ArrowShmError && (code === undefined || e.code === code);
}
