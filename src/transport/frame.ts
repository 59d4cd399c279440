// Frame codec: the 64-byte header and the key/value block (docs/PROTOCOL.md §3).
import { fail } from '../errors.js';

export const MAGIC = 0x4d485341; // "ASHM" read as little-endian u32
export const PROTOCOL_VERSION = 1;
export const HEADER_LENGTH = 64;
export const MAX_FRAME = 65536;

export enum FrameKind {
  Hello = 1,
  Welcome = 2,
  Table = 3,
  Ack = 4,
  Release = 5,
  Error = 6,
  Goodbye = 7,
  StreamOpen = 8,
  StreamSegment = 9,
  Subscribe = 10,
  /** Table store requests, answers and events (§15); only between sides that listed `store`. */
  Store = 11,
}

/** How many fds each kind carries (docs/PROTOCOL.md §3, §12.1); every other kind carries none. */
export const FRAME_FDS: Partial<Record<FrameKind, number>> = { [FrameKind.Table]: 1, [FrameKind.StreamOpen]: 4, [FrameKind.StreamSegment]: 1 };

export const FrameFlags = {
  LEASED: 0x01,
  REQUEST: 0x02,
  RESPONSE: 0x04,
  /** A TABLE whose IPC stream travels inside the frame, with no segment (§5.3). */
  INLINE: 0x08,
} as const;
const KNOWN_FLAGS = FrameFlags.LEASED | FrameFlags.REQUEST | FrameFlags.RESPONSE | FrameFlags.INLINE;

export type KeyValues = Record<string, string>;

export interface Frame {
  version: number;
  kind: FrameKind;
  flags: number;
  messageId: bigint;
  correlationId: bigint;
  ipcOffset: bigint;
  ipcLength: bigint;
  fdCount: number;
  metadata: KeyValues;
  /** An INLINE TABLE's IPC stream (§5.3): a view of the frame's bytes, 8-aligned. */
  inline?: Uint8Array;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export function encodeKeyValues(kv: KeyValues): Uint8Array {
  const entries = Object.entries(kv).map(([k, v]) => [encoder.encode(k), encoder.encode(v)] as const);
  let size = 4;
  for (const [k, v] of entries) size += 8 + k.length + v.length;
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setUint32(0, entries.length, true);
  let pos = 4;
  for (const [k, v] of entries) {
    view.setUint32(pos, k.length, true);
    out.set(k, pos + 4);
    pos += 4 + k.length;
    view.setUint32(pos, v.length, true);
    out.set(v, pos + 4);
    pos += 4 + v.length;
  }
  return out;
}

export function decodeKeyValues(bytes: Uint8Array): KeyValues {
  if (bytes.length < 4) throw fail('ERR_PROTOCOL', `key/value block of ${bytes.length} bytes is shorter than its 4-byte count`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(0, true);
  // Every entry takes at least 8 bytes: a hostile count cannot make us loop for long.
  if (count > (bytes.length - 4) / 8) throw fail('ERR_PROTOCOL', `key/value count ${count} does not fit in ${bytes.length} bytes`);
  const out: KeyValues = Object.create(null);
  let pos = 4;
  const take = (what: string): string => {
    if (pos + 4 > bytes.length) throw fail('ERR_PROTOCOL', `key/value block ends inside a ${what} length`);
    const len = view.getUint32(pos, true);
    pos += 4;
    if (len > bytes.length - pos) throw fail('ERR_PROTOCOL', `${what} of ${len} bytes overruns the key/value block`);
    let text: string;
    try {
      text = decoder.decode(bytes.subarray(pos, pos + len));
    } catch {
      throw fail('ERR_PROTOCOL', `${what} is not valid UTF-8`);
    }
    pos += len;
    return text;
  };
  for (let i = 0; i < count; i++) {
    const key = take('key');
    const value = take('value');
    if (key in out) throw fail('ERR_PROTOCOL', `duplicate key "${key}" in key/value block`);
    out[key] = value;
  }
  if (pos !== bytes.length) throw fail('ERR_PROTOCOL', `key/value block has ${bytes.length - pos} trailing bytes`);
  return out;
}

export interface FrameInit {
  kind: FrameKind;
  flags?: number;
  version?: number;
  messageId: bigint;
  correlationId?: bigint;
  ipcOffset?: bigint;
  ipcLength?: bigint;
  fdCount?: number;
  metadata?: KeyValues;
  /** An INLINE TABLE's IPC stream (§5.3), written after the metadata at an 8-byte boundary. */
  inline?: InlineStream;
}

/** An IPC stream that writes itself into a frame. */
export interface InlineStream {
  byteLength: number;
  writeInto(target: Uint8Array): void;
}

const align8 = (n: number) => Math.ceil(n / 8) * 8;

/** Where an INLINE TABLE's IPC stream starts: after the header and metadata, 8-aligned (§5.3). */
export const inlineOffset = (metadataLength: number): number => align8(HEADER_LENGTH + metadataLength);

/** The largest IPC stream an INLINE TABLE frame with `metadata` can carry. */
export function inlineRoom(metadata: KeyValues | undefined): number {
  const metadataLength = metadata && Object.keys(metadata).length > 0 ? encodeKeyValues(metadata).length : 0;
  return MAX_FRAME - inlineOffset(metadataLength);
}

export function encodeFrame(init: FrameInit): Uint8Array {
  const metadata = init.metadata && Object.keys(init.metadata).length > 0 ? encodeKeyValues(init.metadata) : new Uint8Array(0);
  const ipcOffset = init.inline ? inlineOffset(metadata.length) : 0;
  const total = init.inline ? ipcOffset + init.inline.byteLength : HEADER_LENGTH + metadata.length;
  if (total > MAX_FRAME) {
    throw fail('ERR_TOO_LARGE', `frame of ${total} bytes (metadata ${metadata.length}) exceeds the ${MAX_FRAME}-byte limit`);
  }
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  view.setUint32(0, MAGIC, true);
  view.setUint16(4, init.version ?? PROTOCOL_VERSION, true);
  view.setUint8(6, init.kind);
  view.setUint8(7, init.flags ?? 0);
  view.setUint32(8, HEADER_LENGTH, true);
  view.setUint32(12, metadata.length, true);
  view.setBigUint64(16, init.messageId, true);
  view.setBigUint64(24, init.correlationId ?? 0n, true);
  view.setBigUint64(32, init.inline ? BigInt(ipcOffset) : (init.ipcOffset ?? 0n), true);
  view.setBigUint64(40, init.inline ? BigInt(init.inline.byteLength) : (init.ipcLength ?? 0n), true);
  view.setUint32(48, init.fdCount ?? 0, true);
  out.set(metadata, HEADER_LENGTH);
  init.inline?.writeInto(out.subarray(ipcOffset));
  return out;
}

/** Decodes one received datagram. Every malformation is a fatal ERR_PROTOCOL (§3). */
export function decodeFrame(bytes: Uint8Array): Frame {
  if (bytes.length < HEADER_LENGTH) throw fail('ERR_PROTOCOL', `frame of ${bytes.length} bytes is shorter than the ${HEADER_LENGTH}-byte header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0, true);
  if (magic !== MAGIC) throw fail('ERR_PROTOCOL', `bad frame magic 0x${magic.toString(16).padStart(8, '0')}, expected 0x${MAGIC.toString(16)} ("ASHM")`);
  const kind = view.getUint8(6);
  if (kind < FrameKind.Hello || kind > FrameKind.Store) throw fail('ERR_PROTOCOL', `unknown frame kind ${kind}`);
  const flags = view.getUint8(7);
  if (flags & ~KNOWN_FLAGS) throw fail('ERR_PROTOCOL', `unknown frame flags 0x${flags.toString(16)}`);
  const headerLength = view.getUint32(8, true);
  if (headerLength !== HEADER_LENGTH) throw fail('ERR_PROTOCOL', `header length ${headerLength}, expected ${HEADER_LENGTH}`);
  const metadataLength = view.getUint32(12, true);
  const ipcOffset = view.getBigUint64(32, true);
  const ipcLength = view.getBigUint64(40, true);
  let metadataEnd = bytes.length;
  let inline: Uint8Array | undefined;
  if (flags & FrameFlags.INLINE) {
    // §5.3: header, metadata, padding to 8, then exactly the IPC stream, to the end of the frame.
    if (kind !== FrameKind.Table) throw fail('ERR_PROTOCOL', `INLINE flag on a ${FrameKind[kind]} frame`);
    const start = inlineOffset(metadataLength);
    if (metadataLength > bytes.length - HEADER_LENGTH || ipcOffset !== BigInt(start) || ipcLength === 0n || ipcOffset + ipcLength !== BigInt(bytes.length)) {
      throw fail('ERR_PROTOCOL', `INLINE TABLE frame of ${bytes.length} bytes with metadata ${metadataLength}, IPC range [${ipcOffset}, +${ipcLength}): the stream must start at ${start} and end the frame`);
    }
    metadataEnd = HEADER_LENGTH + metadataLength;
    inline = bytes.subarray(start);
  } else if (metadataLength !== bytes.length - HEADER_LENGTH) {
    throw fail('ERR_PROTOCOL', `metadata length ${metadataLength} does not match the ${bytes.length - HEADER_LENGTH} bytes after the header`);
  }
  return {
    version: view.getUint16(4, true),
    kind,
    flags,
    messageId: view.getBigUint64(16, true),
    correlationId: view.getBigUint64(24, true),
    ipcOffset,
    ipcLength,
    fdCount: view.getUint32(48, true),
    metadata: metadataLength > 0 ? decodeKeyValues(bytes.subarray(HEADER_LENGTH, metadataEnd)) : Object.create(null),
    inline,
  };
}

const DECIMAL = /^(0|[1-9][0-9]{0,8})$/;

/** A handshake number (§4): `0` or `[1-9][0-9]*`, at most 9 digits; null for anything else ("0x1", "", "-0", "1e0"). */
export function parseDecimal(text: string | undefined): number | null {
  return text !== undefined && DECIMAL.test(text) ? Number(text) : null;
}
