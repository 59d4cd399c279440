// Discovery over Flight (docs/PROTOCOL.md §13.4): what a server offers for DoGet, described as
// Flight's FlightInfo, so generic Flight tools find it with ListFlights and GetFlightInfo.
import { MessageHeader, type Schema } from 'apache-arrow';
import { fail } from '../errors.js';
import { checkIpcStream, IpcMessageChecker, walkIpcMessages } from '../ipc/messages.js';
import { decodeCheckedBatches } from '../ipc/reader.js';
import { type IpcLimits } from '../ipc/limits.js';
import type { KeyValues } from './frame.js';
import { decodeMetadata, type FlightMessage } from './flight-message.js';
import { END_OF_STREAM, ipcFromFlightData, type FlightDescriptor } from './flight-codec.js';

/** FlightInfo as protoLoader presents it (int64 read as strings). */
export interface FlightInfoMessage {
  schema: Buffer;
  flight_descriptor: FlightDescriptor | null;
  endpoint: { ticket: { ticket: Buffer } | null; location: { uri: string }[] }[];
  total_records: number | string;
  total_bytes: number | string;
  ordered: boolean;
  app_metadata: Buffer;
}

/** What a Flight server offers under one name (ListFlights, GetFlightInfo). */
export interface FlightInfo {
  /** The descriptor's path joined by "/" (or its command). */
  name: string;
  schema: Schema;
  /** Where to DoGet it: a ticket, and locations (none: the server that answered). */
  endpoints: { ticket: Uint8Array; locations: string[] }[];
  /** Rows and IPC stream bytes, -1 when the server does not say. */
  totalRecords: number;
  totalBytes: number;
  /** The user metadata (FlightInfo.app_metadata), as FlightData's app_metadata reads. */
  metadata: KeyValues;
}

/** The name a descriptor asks for: its path joined by "/", or its command. */
export function descriptorName(descriptor: FlightDescriptor | null | undefined): string {
  return descriptor?.type === 'CMD' ? descriptor.cmd.toString('utf8') : (descriptor?.path ?? []).join('/');
}

/** Whether `name` starts with the bytes of a ListFlights expression (empty: every name). */
export function matchesPrefix(name: string, prefix: Uint8Array): boolean {
  return prefix.length === 0 || Buffer.from(name, 'utf8').subarray(0, prefix.length).equals(prefix);
}

/**
 * The FlightInfo of a table a server holds as IPC stream bytes, checked under `ipc` when it was
 * kept: the encapsulated Schema message, rows and bytes, the ticket DoGet takes (its name).
 */
export function describeTable(name: string, bytes: Uint8Array, appMetadata: Uint8Array | undefined, ipc?: Partial<IpcLimits>): FlightInfoMessage {
  let schema: Uint8Array | null = null;
  let records = 0;
  walkIpcMessages(
    bytes,
    'stream',
    (m) => {
      if (m.message.headerType === MessageHeader.Schema) schema = bytes.subarray(0, m.bodyStart + m.bodyLength); // the first message
      else if (m.message.headerType === MessageHeader.RecordBatch) records += Number(m.header!.length);
    },
    new IpcMessageChecker(ipc),
  );
  return flightInfo(name, schema!, records, bytes.length, appMetadata);
}

/**
 * The FlightInfo of a table a server received through Flight (checked when it came), read from
 * its messages: its IPC stream is not made (it would be a copy no held-bytes count sees).
 */
export function describeReceived(name: string, message: FlightMessage, appMetadata: Uint8Array | undefined): FlightInfoMessage {
  const [schema, ...batches] = message.ipcParts; // received() checked: a Schema first
  const empty = Buffer.alloc(0);
  const framed = ipcFromFlightData([{ flight_descriptor: null, data_header: Buffer.from(schema!.header), app_metadata: empty, data_body: empty }]);
  const records = batches.reduce((n, p) => n + (p.headerType === MessageHeader.RecordBatch ? Number(p.ipc.header!.length) : 0), 0);
  return flightInfo(name, framed.subarray(0, framed.length - END_OF_STREAM.length), records, message.byteLength, appMetadata);
}

/**
 * The FlightInfo of a live stream (a publication, §13.5): `schema` is its encapsulated Schema
 * message (ours, so trusted); rows and bytes are unknown (-1) while it runs.
 */
export function describeStream(name: string, schema: Uint8Array, appMetadata: Uint8Array | undefined): FlightInfoMessage {
  return flightInfo(name, schema, -1, -1, appMetadata);
}

function flightInfo(name: string, schema: Uint8Array, records: number, bytes: number, appMetadata: Uint8Array | undefined): FlightInfoMessage {
  const buffer = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  return {
    schema: buffer(schema),
    flight_descriptor: { type: 'PATH', cmd: Buffer.alloc(0), path: [name] },
    endpoint: [{ ticket: { ticket: Buffer.from(name, 'utf8') }, location: [] }],
    total_records: records,
    total_bytes: bytes,
    ordered: true,
    app_metadata: appMetadata ? buffer(appMetadata) : Buffer.alloc(0),
  };
}

/** A FlightInfo from any server, its schema checked (§14.1 limits) before apache-arrow decodes it. */
export function readFlightInfo(m: FlightInfoMessage, ipc: Partial<IpcLimits>): FlightInfo {
  const stream = Buffer.concat([m.schema, END_OF_STREAM]);
  const checked = checkIpcStream(stream, ipc);
  if (checked.summary.messages !== 1) throw fail('ERR_IPC_INVALID', `a FlightInfo schema of ${checked.summary.messages} IPC messages (one Schema expected)`);
  const count = (n: number | string) => (Number.isSafeInteger(Number(n)) && Number(n) >= 0 ? Number(n) : -1);
  return {
    name: descriptorName(m.flight_descriptor),
    schema: decodeCheckedBatches(stream, checked.messages).schema,
    endpoints: m.endpoint.map((e) => ({ ticket: new Uint8Array(e.ticket?.ticket ?? []), locations: e.location.map((l) => l.uri) })),
    totalRecords: count(m.total_records),
    totalBytes: count(m.total_bytes),
    metadata: m.app_metadata.length > 0 ? decodeMetadata(m.app_metadata) : {},
  };
}
