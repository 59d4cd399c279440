// Decoding limits (docs/PROTOCOL.md §14.1): what one IPC message's flatbuffer may make a decoder
// produce, counted per reference, since a flatbuffer may point many offsets at one object.
import { fail } from '../errors.js';

export interface IpcLimits {
  /** Bytes of every string and vector reachable from a Message, each reference counted. Default 64 MiB. */
  maxMetadataBytes: number;
  /** KeyValue entries of a Message: its own, the Schema's and every Field's. Default 65,536. */
  maxMetadataEntries: number;
  /** Field tables of a Schema, children included. Default 65,536. */
  maxFields: number;
  /** Tables nested inside each other. Default 64. */
  maxNestingDepth: number;
}

export const DEFAULT_IPC_LIMITS: Readonly<IpcLimits> = Object.freeze({
  maxMetadataBytes: 64 * 1024 * 1024,
  maxMetadataEntries: 65_536,
  maxFields: 65_536,
  maxNestingDepth: 64,
});

/**
 * Fills in defaults and checks that every given limit is a positive integer. What it returns is
 * frozen and passes back through unchanged, so limits resolved once at set-up cost nothing per message.
 */
export function resolveIpcLimits(limits: Partial<IpcLimits> | undefined): Readonly<IpcLimits> {
  if (!limits) return DEFAULT_IPC_LIMITS;
  if (Object.isFrozen(limits) && Object.keys(DEFAULT_IPC_LIMITS).every((k) => k in limits)) return limits as Readonly<IpcLimits>;
  const resolved = { ...DEFAULT_IPC_LIMITS };
  for (const key of Object.keys(DEFAULT_IPC_LIMITS) as (keyof IpcLimits)[]) {
    const value = limits[key];
    if (value === undefined) continue;
    if (!Number.isSafeInteger(value) || value <= 0) throw fail('ERR_INVALID_ARGUMENT', `${key} must be a positive integer, got ${value}`);
    resolved[key] = value;
  }
  return Object.freeze(resolved);
}
