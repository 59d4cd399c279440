// FlightData's protobuf encoding done by hand (docs/PROTOCOL.md §13), so a table crosses gRPC with
// as few copies as the transport allows: a FlightData to send is laid out once, straight from the
// table's own buffers (no IPC stream first, no protobufjs writer); a received one is parsed into
// views of the buffer gRPC delivered (no copy). Only FlightDescriptor, FlightData and their fields.
import { fail } from '../errors.js';

/** FlightDescriptor as protoLoader presents it (enums as strings, defaults filled in). */
export interface FlightDescriptor {
  type: 'UNKNOWN' | 'PATH' | 'CMD';
  cmd: Buffer;
  path: string[];
}

/** A received FlightData: every bytes field a view of gRPC's message buffer. */
export interface FlightData {
  flight_descriptor?: FlightDescriptor | null;
  data_header: Buffer;
  app_metadata: Buffer;
  data_body: Buffer;
}

/** A body given as pieces at offsets (a table's buffers, unpadded); the gaps are zero bytes. */
export interface BodyPieces {
  length: number;
  pieces: { offset: number; bytes: Uint8Array }[];
}

/** A FlightData to send: its body either bytes or pieces. */
export interface OutgoingFlightData {
  flight_descriptor?: FlightDescriptor | null;
  data_header: Uint8Array;
  app_metadata?: Uint8Array;
  data_body: Uint8Array | BodyPieces;
}

const DESCRIPTOR_TYPES = ['UNKNOWN', 'PATH', 'CMD'] as const;
// Field keys: (field number << 3) | wire type 2 (length-delimited); data_body is field 1000.
const KEY_DESCRIPTOR = 0x0a;
const KEY_HEADER = 0x12;
const KEY_APP_METADATA = 0x1a;
const KEY_BODY = (1000 << 3) | 2;
const EMPTY = Buffer.alloc(0);

const varintLength = (n: number): number => (n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5);
const fieldLength = (key: number, n: number): number => varintLength(key) + varintLength(n) + n;

function writeVarint(out: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    out[at++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  out[at++] = n;
  return at;
}

function descriptorBytes(d: FlightDescriptor): Buffer {
  const type = DESCRIPTOR_TYPES.indexOf(d.type);
  const path = d.path.map((p) => Buffer.from(p, 'utf8'));
  const size = (type > 0 ? 2 : 0) + (d.cmd.length > 0 ? fieldLength(0x12, d.cmd.length) : 0) + path.reduce((n, p) => n + fieldLength(0x1a, p.length), 0);
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  if (type > 0) at = writeVarint(out, writeVarint(out, at, 0x08), type);
  if (d.cmd.length > 0) at = writeBytes(out, at, 0x12, d.cmd);
  for (const p of path) at = writeBytes(out, at, 0x1a, p);
  return out;
}

function writeBytes(out: Buffer, at: number, key: number, bytes: Uint8Array): number {
  at = writeVarint(out, writeVarint(out, at, key), bytes.length);
  out.set(bytes, at);
  return at + bytes.length;
}

/**
 * The protobuf bytes of a FlightData as parts: small buffers for the tags and lengths, views of
 * the header, metadata and body pieces, zero bytes for the gaps. Written as they are (gRPC frames
 * over node:http2) nothing is copied; `encodeFlightData` joins them.
 */
export function flightDataParts(m: OutgoingFlightData): { parts: Uint8Array[]; length: number } {
  const parts: Uint8Array[] = [];
  let length = 0;
  const push = (b: Uint8Array) => {
    if (b.length === 0) return;
    parts.push(b);
    length += b.length;
  };
  const tag = (key: number, n: number) => {
    const out = Buffer.allocUnsafe(varintLength(key) + varintLength(n));
    writeVarint(out, writeVarint(out, 0, key), n);
    push(out);
  };
  const field = (key: number, bytes: Uint8Array) => {
    if (bytes.length === 0) return;
    tag(key, bytes.length);
    push(bytes);
  };
  if (m.flight_descriptor) field(KEY_DESCRIPTOR, descriptorBytes(m.flight_descriptor));
  field(KEY_HEADER, m.data_header);
  field(KEY_APP_METADATA, m.app_metadata ?? EMPTY);
  const body = m.data_body;
  if (body instanceof Uint8Array) {
    field(KEY_BODY, body);
    return { parts, length };
  }
  if (body.length === 0) return { parts, length };
  tag(KEY_BODY, body.length);
  let cursor = 0;
  for (const { offset, bytes } of body.pieces) {
    push(zeros(offset - cursor));
    push(bytes);
    cursor = offset + bytes.length;
  }
  push(zeros(body.length - cursor));
  return { parts, length };
}

const ZEROS = new Uint8Array(256);
/** `n` zero bytes: a view of one shared zeroed buffer (the gaps between aligned buffers are short). */
const zeros = (n: number): Uint8Array => (n <= ZEROS.length ? ZEROS.subarray(0, n) : new Uint8Array(n));

/** The protobuf bytes of a FlightData in one buffer (grpc-js' serialiser): the body copied once, from its pieces. */
export function encodeFlightData(m: OutgoingFlightData): Buffer {
  const { parts, length } = flightDataParts(m);
  return Buffer.concat(parts, length);
}

/** The varint at `at` (before `end`) of `buf`, and where the next field starts; ERR_IPC_INVALID when truncated or overlong. */
function readVarint(buf: Uint8Array, at: number, end: number): [value: number, next: number] {
  let n = 0;
  for (let shift = 0, scale = 1; ; shift += 7, scale *= 128) {
    if (at >= end || shift > 63) throw fail('ERR_IPC_INVALID', 'FlightData: truncated or overlong varint');
    const b = buf[at++]!;
    n += (b & 0x7f) * scale;
    if (b < 0x80) return [n, at];
  }
}

/**
 * FlightData serialised for grpc-js's server, which copies what a serialiser returns behind its
 * 5-byte prefix (server-interceptors' serializeMessage reads `byteLength`, then `copy(output, 5)`;
 * grpc-js is pinned): the parts are copied there, the one copy, instead of being joined first.
 * Only for responses: grpc-js's client may compress what it is given.
 */
export function serializeForServer(m: OutgoingFlightData): Buffer {
  const { parts, length } = flightDataParts(m);
  const copy = (target: Uint8Array, at = 0): number => {
    for (const p of parts) {
      target.set(p, at);
      at += p.length;
    }
    return length;
  };
  return { length, byteLength: length, copy } as unknown as Buffer;
}

/** Reads protobuf fields of `buf` from `start` to `end`, calling `field` for each length-delimited one; others are skipped. */
function readFields(buf: Buffer, start: number, end: number, field: (key: number, value: Buffer) => void, varint?: (key: number, value: number) => void): void {
  let at = start;
  while (at < end) {
    let key: number;
    [key, at] = readVarint(buf, at, end);
    switch (key & 7) {
      case 0: {
        let value: number;
        [value, at] = readVarint(buf, at, end);
        varint?.(key, value);
        break;
      }
      case 1:
        at += 8;
        break;
      case 2: {
        let length: number;
        [length, at] = readVarint(buf, at, end);
        if (length > end - at) throw fail('ERR_IPC_INVALID', `FlightData: a field of ${length} bytes overruns its message`);
        field(key, buf.subarray(at, at + length));
        at += length;
        break;
      }
      case 5:
        at += 4;
        break;
      default:
        throw fail('ERR_IPC_INVALID', `FlightData: unsupported wire type ${key & 7}`);
    }
    if (at > end) throw fail('ERR_IPC_INVALID', 'FlightData: a fixed-size field overruns its message');
  }
}

function decodeDescriptor(buf: Buffer): FlightDescriptor {
  const d: FlightDescriptor = { type: 'UNKNOWN', cmd: EMPTY, path: [] };
  readFields(
    buf,
    0,
    buf.length,
    (key, value) => {
      if (key === 0x12) d.cmd = value;
      else if (key === 0x1a) d.path.push(value.toString('utf8'));
    },
    (key, value) => {
      if (key === 0x08) d.type = DESCRIPTOR_TYPES[value] ?? 'UNKNOWN';
    },
  );
  return d;
}

/**
 * A FlightData from gRPC's message buffer: views, no copy; a malformed one throws ERR_IPC_INVALID.
 * `buf` must be the caller's to change (gRPC's fresh message buffer): an unaligned body is moved
 * within it to an 8-byte boundary, since arrow-js views columns as typed arrays, which need one.
 */
export function decodeFlightData(buf: Buffer): FlightData {
  const m: FlightData = { flight_descriptor: null, data_header: EMPTY, app_metadata: EMPTY, data_body: EMPTY };
  readFields(buf, 0, buf.length, (key, value) => {
    if (key === KEY_HEADER) m.data_header = value;
    else if (key === KEY_BODY) m.data_body = value;
    else if (key === KEY_APP_METADATA) m.app_metadata = value;
    else if (key === KEY_DESCRIPTOR) m.flight_descriptor = decodeDescriptor(value);
  });
  alignBody(m, buf);
  return m;
}

/** Whether `view` (of the same memory) has bytes in [start, end). */
const overlaps = (view: Uint8Array, start: number, end: number): boolean => view.length > 0 && view.byteOffset < end && view.byteOffset + view.length > start;

/**
 * Moves the body of `m` back to the 8-byte boundary below it, inside `buf` (a memmove of the body,
 * no allocation): over its own tag, and over the end of a field before it, which is copied out
 * first (a header is small). A body so close to the start of `buf` that it cannot move gets a copy.
 */
function alignBody(m: FlightData, buf: Buffer): void {
  const body = m.data_body;
  const shift = body.byteOffset % 8;
  if (shift === 0 || body.length === 0) return;
  const from = body.byteOffset;
  const to = from - shift;
  if (to < buf.byteOffset) {
    const copy = Buffer.allocUnsafeSlow(body.length); // its own ArrayBuffer: offset 0
    copy.set(body);
    m.data_body = copy;
    return;
  }
  if (overlaps(m.data_header, to, from)) m.data_header = Buffer.from(m.data_header);
  if (overlaps(m.app_metadata, to, from)) m.app_metadata = Buffer.from(m.app_metadata);
  const d = m.flight_descriptor;
  if (d && overlaps(d.cmd, to, from)) d.cmd = Buffer.from(d.cmd);
  buf.copyWithin(to - buf.byteOffset, from - buf.byteOffset, from - buf.byteOffset + body.length);
  m.data_body = Buffer.from(buf.buffer, to, body.length);
}

/**
 * Where the body of a FlightData starts, read from the first bytes of its message (a receiver
 * places the message so that the body lands on an 8-byte boundary); -1 when they do not say.
 */
export function flightDataBodyOffset(head: Uint8Array): number {
  let at = 0;
  try {
    while (at < head.length) {
      let key: number;
      let length: number;
      [key, at] = readVarint(head, at, head.length);
      if ((key & 7) !== 2) return -1; // FlightData's fields are all length-delimited: not ours to judge here
      [length, at] = readVarint(head, at, head.length);
      if (key === KEY_BODY) return at;
      at += length;
    }
  } catch {
    // the head ends inside a tag
  }
  return -1;
}
