// What a store and its clients agree on (docs/PROTOCOL.md §15): names, keys, limits and their
// defaults, checked in one place for both sides.
import { totalmem } from 'node:os';
import { fail } from '../errors.js';
import type { KeyValues } from '../transport/frame.js';

/** Reserved TABLE metadata keys of a put and a get's answer (§15.3). */
export const NAME_KEY = 'arrow-shm.name';
export const REPLACE_KEY = 'arrow-shm.replace';
export const VERSION_KEY = 'arrow-shm.version';
const RESERVED = 'arrow-shm.';

export type EvictPolicy = 'lru' | 'none';

/** The store's limits (§15.6), camelCase. */
export interface StoreLimits {
  maxNameBytes: number;
  maxEntryMetadataEntries: number;
  maxEntryMetadataBytes: number;
  maxEntries: number;
  maxHolds: number;
  maxWaits: number;
  maxStoreWaits: number;
  maxWatches: number;
  maxStoreWatches: number;
  maxQueuedFrames: number;
}

export const DEFAULT_STORE_LIMITS: Readonly<StoreLimits> = Object.freeze({
  maxNameBytes: 256,
  maxEntryMetadataEntries: 256,
  maxEntryMetadataBytes: 16_384,
  maxEntries: 16_384,
  maxHolds: 4096,
  maxWaits: 64,
  maxStoreWaits: 4096,
  maxWatches: 16,
  maxStoreWatches: 1024,
  maxQueuedFrames: 4096,
});

/** The default memory budget: half the machine's physical memory (§15.4). */
export function defaultMemory(): number {
  return Math.floor(totalmem() / 2);
}

export function resolveStoreLimits(limits: Partial<StoreLimits> | undefined): Readonly<StoreLimits> {
  const resolved = { ...DEFAULT_STORE_LIMITS };
  for (const key of Object.keys(DEFAULT_STORE_LIMITS) as (keyof StoreLimits)[]) {
    const value = limits?.[key];
    if (value === undefined) continue;
    if (!Number.isSafeInteger(value) || value <= 0) throw fail('ERR_INVALID_ARGUMENT', `${key} must be a positive integer, got ${value}`);
    resolved[key] = value;
  }
  return Object.freeze(resolved);
}

const NAME_CHARS = /^[A-Za-z0-9._\-/:=@+]*$/;

/** A name (§15.2): 1 to maxNameBytes bytes of the name alphabet. ERR_INVALID_ARGUMENT otherwise. */
export function checkName(name: unknown, maxNameBytes = DEFAULT_STORE_LIMITS.maxNameBytes, what = 'name'): string {
  if (typeof name !== 'string' || (what === 'name' && name.length === 0)) throw fail('ERR_INVALID_ARGUMENT', `a ${what} must be a non-empty string`);
  // The alphabet is ASCII, so characters are bytes; check the length before running the regex.
  if (name.length > maxNameBytes) throw fail('ERR_INVALID_ARGUMENT', `${what} of ${name.length} bytes exceeds max_name_bytes ${maxNameBytes}`);
  if (!NAME_CHARS.test(name)) throw fail('ERR_INVALID_ARGUMENT', `${what} ${JSON.stringify(name.slice(0, 64))} has characters outside A-Z a-z 0-9 . _ - / : = @ +`);
  return name;
}

/** A prefix (list, watch): empty, or like a name. */
export function checkPrefix(prefix: unknown, maxNameBytes = DEFAULT_STORE_LIMITS.maxNameBytes): string {
  return prefix === undefined ? '' : checkName(prefix, maxNameBytes, 'prefix');
}

const DECIMAL19 = /^(0|[1-9][0-9]{0,18})$/;

/** A decimal of §15.1: `0` or `[1-9][0-9]*`, at most `digits` digits (9, or 19 for versions and watch ids). */
export function parseStoreDecimal(text: string | undefined, key: string, digits: 9 | 19 = 9): bigint {
  if (text === undefined || !DECIMAL19.test(text) || text.length > digits || BigInt(text) >= 2n ** 63n) {
    throw fail('ERR_INVALID_ARGUMENT', `${key} must be a decimal of at most ${digits} digits, got ${JSON.stringify(text?.slice(0, 32))}`);
  }
  return BigInt(text);
}

/**
 * Splits a put's TABLE metadata into the name, replace and the user metadata, checking the user
 * metadata's limits (§15.2). The encoded size is counted from the UTF-8 lengths, not by encoding.
 */
export function splitPutMetadata(kv: KeyValues, limits: Readonly<StoreLimits>): { name: string; replace: boolean; metadata: KeyValues } {
  const name = checkName(kv[NAME_KEY], limits.maxNameBytes);
  const replace = kv[REPLACE_KEY] ?? '0';
  if (replace !== '0' && replace !== '1') throw fail('ERR_INVALID_ARGUMENT', `${REPLACE_KEY} must be "0" or "1", got ${JSON.stringify(replace.slice(0, 32))}`);
  const metadata: KeyValues = Object.create(null);
  let entries = 0;
  let bytes = 4;
  for (const [key, value] of Object.entries(kv)) {
    if (key === NAME_KEY || key === REPLACE_KEY) continue;
    if (key.startsWith(RESERVED)) throw fail('ERR_INVALID_ARGUMENT', `metadata key ${JSON.stringify(key.slice(0, 64))} is reserved (${RESERVED}*)`);
    entries++;
    bytes += 8 + Buffer.byteLength(key) + Buffer.byteLength(value);
    metadata[key] = value;
  }
  if (entries > limits.maxEntryMetadataEntries) throw fail('ERR_RESOURCE_LIMIT', `${entries} metadata keys exceed max_entry_metadata_entries ${limits.maxEntryMetadataEntries}`);
  if (bytes > limits.maxEntryMetadataBytes) throw fail('ERR_RESOURCE_LIMIT', `${bytes} bytes of metadata exceed max_entry_metadata_bytes ${limits.maxEntryMetadataBytes}`);
  return { name, replace: replace === '1', metadata };
}

/** The TABLE metadata of a put (client side): user keys first checked for reserved names. */
export function putMetadata(name: string, metadata: KeyValues = {}, replace = false): KeyValues {
  checkName(name);
  const kv: KeyValues = {};
  for (const [key, value] of Object.entries(metadata)) {
    if (key.startsWith(RESERVED)) throw fail('ERR_INVALID_ARGUMENT', `metadata key ${JSON.stringify(key)} is reserved (${RESERVED}*)`);
    kv[key] = value;
  }
  kv[NAME_KEY] = name;
  if (replace) kv[REPLACE_KEY] = '1';
  return kv;
}
