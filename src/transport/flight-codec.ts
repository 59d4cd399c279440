// Arrow Flight's wire format (docs/PROTOCOL.md §13): the service definition, addresses,
// IPC messages as FlightData and back, app_metadata, and the same-host upgrade's identity.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fail } from '../errors.js';
import { walkIpcMessages } from '../ipc/messages.js';
import { FlatView } from '../ipc/flatbuffer.js';
import { layoutIpcStream, writeIpcLayout, type IpcLayout } from '../ipc/writer.js';
import { type FlightLimits } from './flight-limits.js';
import { PreparedTable, type Sendable } from '../ipc/prepared.js';
import { decodeFlightData, encodeFlightData, serializeForServer, type FlightData, type FlightDescriptor, type OutgoingFlightData } from './flight-wire.js';

export type { FlightData, FlightDescriptor, OutgoingFlightData } from './flight-wire.js';

export const PROTO = fileURLToPath(new URL('../../../proto/flight.proto', import.meta.url));
export const CONTINUATION = 0xffffffff;
export const END_OF_STREAM = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
/** gRPC's default 4 MiB message limit would refuse most tables: ours instead (gRPC checks it from the length prefix). */
export const channelOptions = (limits: FlightLimits) => ({ 'grpc.max_receive_message_length': limits.maxFlightDataBytes, 'grpc.max_send_message_length': -1 });
export const DEFAULT_MAX_MESSAGE_BYTES = 2 ** 32;

export type ServiceClient = grpc.Client & Record<string, (...args: unknown[]) => grpc.ClientDuplexStream<unknown, unknown> & grpc.ClientReadableStream<unknown>>;
let service: { client: new (address: string, credentials: grpc.ChannelCredentials, options: object) => ServiceClient; definition: grpc.ServiceDefinition } | null = null;

export function flightService() {
  if (!service) {
    const loaded = protoLoader.loadSync(PROTO, { keepCase: true, longs: String, enums: String, bytes: Buffer, defaults: true });
    const pkg = grpc.loadPackageDefinition(loaded) as unknown as { arrow: { flight: { protocol: { FlightService: grpc.ServiceClientConstructor } } } };
    const definition = withFlightDataCodec(pkg.arrow.flight.protocol.FlightService.service);
    service = { client: grpc.makeGenericClientConstructor(definition, 'FlightService') as unknown as NonNullable<typeof service>['client'], definition };
  }
  return service;
}

/**
 * The service with FlightData (de)serialised by flight-wire instead of protobufjs: sent FlightData
 * are laid out once from the table's buffers, received ones are views of gRPC's message buffer.
 */
function withFlightDataCodec(definition: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, method] of Object.entries(definition)) {
    const m = { ...method } as grpc.MethodDefinition<unknown, unknown>;
    if (name === 'DoPut' || name === 'DoExchange') Object.assign(m, { requestSerialize: encodeFlightData, requestDeserialize: decodeFlightData });
    if (name === 'DoGet' || name === 'DoExchange') Object.assign(m, { responseSerialize: serializeForServer, responseDeserialize: decodeFlightData });
    out[name] = m;
  }
  return out;
}

/** `grpc://host:port` (plain) or `grpc+tls://host:port`; anything else is a local socket address. */
export function isFlightAddress(address: string): boolean {
  return /^grpc(\+tls)?:\/\//.test(address);
}

export function parseAddress(address: string): { target: string; tls: boolean } {
  const m = /^grpc(\+tls)?:\/\/([^/]+)\/?$/.exec(address);
  if (!m) throw fail('ERR_INVALID_ARGUMENT', `not a Flight address (grpc://host:port): ${address}`);
  return { target: m[2]!, tls: m[1] !== undefined };
}

/** This boot of this machine: two processes that share it can share memory (if they reach the socket). */
export function hostIdentity(): string {
  const read = (f: string) => {
    try {
      return readFileSync(f, 'utf8').trim();
    } catch {
      return '';
    }
  };
  return `${read('/etc/machine-id')}/${read('/proc/sys/kernel/random/boot_id')}`;
}

/** The metadata key that carries the Flight descriptor path of a table sent over the upgraded channel. */
/** The call metadata key naming the channel a call belongs to (§13.2). */
export const CHANNEL_ID_KEY = 'arrow-shm-channel';

/** The ticket a FlightChannel client long-polls for what the server side sends it (§13.2). */
export const INBOX_TICKET = 'arrow-shm.inbox';
/** The action a FlightChannel client sends when it closes (§13.2). */
export const CLOSE_ACTION = 'arrow-shm.close';

/** What a server may answer a DoPut with, all PutResults together. */
export const MAX_PUT_RESULT_BYTES = 16 * 2 ** 20;
/** A Handshake payload larger than this is not an upgrade offer (nothing to parse). */
export const MAX_HANDSHAKE_BYTES = 4096;

export const PATH_KEY = 'flight.path';
/** The metadata key of a DoGet request over the upgraded channel: the ticket (UTF-8). */
export const TICKET_KEY = 'flight.ticket';
export const UPGRADE_VERSION = 1;

/** IPC messages a receiver holds apart (a received table): sent again as they are. */
export interface IpcParts {
  readonly ipcParts: readonly { header: Uint8Array; headerType: number; body: Uint8Array }[];
}

const isIpcParts = (data: Sendable | IpcParts): data is IpcParts => (data as Partial<IpcParts>).ipcParts !== undefined;

/**
 * The IPC messages of `data` (a table, IPC stream bytes, a PreparedTable read through a read-only
 * mapping, or a received table's messages) as FlightData, `appMetadata` on the first batch.
 * Nothing is copied: the FlightData are views (a table's: of its own buffers), laid out once
 * when gRPC serialises them.
 */
export function toFlightData(data: Sendable | IpcParts, descriptor: FlightDescriptor | null, appMetadata?: Uint8Array): OutgoingFlightData[] {
  const out: OutgoingFlightData[] = [];
  let metadataPending = appMetadata !== undefined;
  const add = (header: Uint8Array, headerType: number, body: OutgoingFlightData['data_body']) => {
    const carriesMetadata = metadataPending && headerType === 3; // the first RecordBatch
    if (carriesMetadata) metadataPending = false;
    out.push({ flight_descriptor: out.length === 0 ? descriptor : null, data_header: header, app_metadata: carriesMetadata ? appMetadata : undefined, data_body: body });
  };
  if (isIpcParts(data)) {
    for (const p of data.ipcParts) add(p.header, p.headerType, p.body);
  } else if (data instanceof Uint8Array || data instanceof PreparedTable) {
    const bytes = ipcBytes(data);
    const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    walkIpcMessages(bytes, 'stream', (m) => add(buffer.subarray(m.metadataStart, m.metadataStart + m.metadataLength), m.message.headerType, buffer.subarray(m.bodyStart, m.bodyStart + m.bodyLength)));
  } else {
    forEachLaidOutMessage(layoutIpcStream(data), add);
  }
  return out;
}

/** The messages of a planned stream (LayoutBuilder: prefix, flatbuffer, body pieces; ours, so trusted): header, type, body pieces. */
function forEachLaidOutMessage(layout: IpcLayout, onMessage: (header: Uint8Array, headerType: number, body: { length: number; pieces: { offset: number; bytes: Uint8Array }[] }) => void): void {
  const { chunks } = layout;
  for (let i = 0; i < chunks.length; ) {
    const prefix = chunks[i++]!;
    const metadataSize = new DataView(prefix.bytes.buffer, prefix.bytes.byteOffset, 8).getInt32(4, true);
    if (metadataSize === 0) return; // end of stream
    const header = chunks[i++]!.bytes;
    const fb = new FlatView(header);
    const root = fb.root();
    const bodyStart = prefix.offset + 8 + metadataSize;
    const pieces: { offset: number; bytes: Uint8Array }[] = [];
    while (i < chunks.length && chunks[i]!.body) {
      const c = chunks[i++]!;
      pieces.push({ offset: c.offset - bodyStart, bytes: c.bytes });
    }
    onMessage(header, fb.u8(root, 1), { length: Number(fb.i64(root, 3)), pieces });
  }
}

/** The IPC stream of `data`: bytes as they are, a prepared segment's bytes (a copy), a table laid out once. */
export function ipcBytes(data: Sendable): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (!(data instanceof PreparedTable)) {
    const layout = layoutIpcStream(data);
    const bytes = new Uint8Array(layout.byteLength);
    writeIpcLayout(layout, bytes);
    return bytes;
  }
  // A copy: the mapping is released at once instead of living as long as gRPC holds the views.
  const mapping = data.segment.takeReadOnlyMapping();
  try {
    return mapping.bytes(data.ipcOffset, data.ipcLength).slice();
  } finally {
    mapping.release();
  }
}

/** @internal Writes every message, waiting for room when gRPC's flow control says so; stops once `stopped()`. */
export async function writeAll<T = OutgoingFlightData>(call: { write(m: T): boolean; once(event: 'drain', listener: () => void): unknown }, messages: T[], stopped = () => false): Promise<void> {
  for (const m of messages) {
    if (stopped()) return;
    if (!call.write(m)) await new Promise<void>((r) => call.once('drain', r));
  }
}

export const pad8 = (n: number) => (8 - (n % 8)) % 8;

/** The length of the IPC stream `ipcFromFlightData` makes of `messages` (what a received table counts as). */
export function ipcStreamLength(messages: readonly FlightData[]): number {
  let total = END_OF_STREAM.length;
  for (const m of messages) {
    if (m.data_header.length === 0) continue; // metadata-only message
    total += 8 + m.data_header.length + pad8(m.data_header.length) + m.data_body.length + pad8(m.data_body.length);
  }
  return total;
}

/**
 * Re-frames received FlightData as one IPC stream (continuation, length, header, body, each padded
 * to 8 bytes, then the end-of-stream marker): a copy, made only when someone asks for the bytes
 * (a received table is decoded from the FlightData themselves, see flight-message).
 */
export function ipcFromFlightData(messages: readonly FlightData[], maxBytes = DEFAULT_MAX_MESSAGE_BYTES): Uint8Array {
  const total = ipcStreamLength(messages);
  if (total > maxBytes) throw fail('ERR_TOO_LARGE', `Flight stream of ${total} bytes exceeds the ${maxBytes}-byte limit`);
  // Not zeroed first (most of it is overwritten at once): the padding is zeroed as it is written.
  const out = new Uint8Array(Buffer.allocUnsafeSlow(total).buffer, 0, total);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const m of messages) {
    if (m.data_header.length === 0) continue;
    const headerLength = m.data_header.length + pad8(m.data_header.length);
    view.setUint32(at, CONTINUATION, true);
    view.setInt32(at + 4, headerLength, true);
    out.set(m.data_header, at + 8);
    out.fill(0, at + 8 + m.data_header.length, at + 8 + headerLength);
    at += 8 + headerLength;
    out.set(m.data_body, at);
    out.fill(0, at + m.data_body.length, at + m.data_body.length + pad8(m.data_body.length));
    at += m.data_body.length + pad8(m.data_body.length);
  }
  out.set(END_OF_STREAM, at);
  return out;
}

/** The descriptor name of a CLI input file. */
export const flightName = (file: string): string => (file === '-' ? 'stdin' : basename(file));
