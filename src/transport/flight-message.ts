// A table received through Flight: decoded straight from the FlightData gRPC delivered (their
// bodies 8-byte aligned in place, see flight-wire), each message checked as an IPC stream's would be.
import type { RecordBatch, Table } from 'apache-arrow';
import { fail, type ErrorCode } from '../errors.js';
import { decodeCheckedParts, tableOfBatches } from '../ipc/reader.js';
import { checkMessageParts, IpcMessageChecker, type IpcMessage, type IpcSummary } from '../ipc/messages.js';
import type { KeyValues } from './frame.js';
import { type FlightLimits } from './flight-limits.js';
import { type Sendable } from '../ipc/prepared.js';
import { DEFAULT_MAX_MESSAGE_BYTES, ipcFromFlightData, ipcStreamLength, pad8, type FlightData, type IpcParts } from './flight-codec.js';

/** How the server side of a DoExchange answers it. */
export interface FlightResponder {
  respond(data: Sendable): Promise<void>;
  respondError(code: ErrorCode, message: string): Promise<void>;
}

/** One checked message of a received table: its IPC message, header bytes and body (a view, 8-byte aligned). */
interface ReceivedPart {
  ipc: IpcMessage;
  header: Uint8Array;
  headerType: number;
  body: Uint8Array;
}

/** A table received through Flight: the same surface as a shared-memory `Message`. */
export class FlightMessage implements IpcParts {
  #table: Table | undefined;
  #closed = false;
  #responder: FlightResponder | null;
  #data: readonly FlightData[];
  #parts: readonly ReceivedPart[];
  #bytes: Uint8Array | undefined;
  /** What the checks found in the stream. */
  readonly summary: IpcSummary;
  /** The length of `bytes` (what the table counts as held), known without making them. */
  readonly byteLength: number;

  /** @internal `received()` makes them. */
  constructor(
    data: readonly FlightData[],
    parts: readonly ReceivedPart[],
    summary: IpcSummary,
    readonly metadata: KeyValues,
    /** The descriptor's path (DoPut), the command (DoExchange) or the ticket (DoGet). */
    readonly name: string,
    responder: FlightResponder | null = null,
  ) {
    this.#data = data;
    this.#parts = parts;
    this.summary = summary;
    this.byteLength = summary.streamLength;
    this.#responder = responder;
  }

  /**
   * The table as one IPC stream (schema, dictionaries, batches, end-of-stream marker), checked:
   * made (a copy) on first use; the table itself is decoded without it.
   */
  get bytes(): Uint8Array {
    this.#bytes ??= ipcFromFlightData(this.#data);
    return this.#bytes;
  }

  /** @internal The checked messages as they came (views): a server's DoGet sends them again. */
  get ipcParts(): readonly ReceivedPart[] {
    return this.#parts;
  }

  /** A DoExchange request a `FlightChannel` delivered: answer it with `respond` or `respondError`. */
  get isRequest(): boolean {
    return this.#responder !== null;
  }

  /** Answers the request with a table (the DoExchange's response stream). */
  respond(data: Sendable): Promise<void> {
    if (!this.#responder) throw fail('ERR_INVALID_ARGUMENT', 'this message is not a request');
    const responder = this.#responder;
    this.#responder = null; // one answer per request
    return responder.respond(data);
  }

  /** Answers the request with an error, which the requester receives as an ArrowShmError. */
  respondError(code: ErrorCode, message: string): Promise<void> {
    if (!this.#responder) throw fail('ERR_INVALID_ARGUMENT', 'this message is not a request');
    const responder = this.#responder;
    this.#responder = null;
    return responder.respondError(code, message);
  }

  get closed(): boolean {
    return this.#closed;
  }

  get table(): Table {
    if (this.#closed) throw fail('ERR_CLOSED', 'the message was closed');
    this.#table ??= tableOfBatches(this.#decode());
    return this.#table;
  }

  get batches(): RecordBatch[] {
    if (this.#closed) throw fail('ERR_CLOSED', 'the message was closed');
    return this.#table?.batches ?? this.#decode().batches;
  }

  #decode() {
    return decodeCheckedParts(
      this.#parts.map((p) => p.ipc),
      this.#parts.map((p) => p.body),
      () => this.bytes,
    );
  }

  close(): void {
    this.#closed = true;
    this.#table = undefined;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The table of a call's FlightData, which a FlightDataCollector bounded and verified message by
 * message: each message is checked here as one of an IPC stream (order, counts against the
 * schema, buffers within the body, §14.1) before anyone decodes it. Nothing is copied.
 */
export function received(messages: FlightData[], name: string, limits: FlightLimits, responder: FlightResponder | null = null): FlightMessage {
  const streamLength = ipcStreamLength(messages); // the collector bounded it (maxCallBytes)
  if (streamLength > DEFAULT_MAX_MESSAGE_BYTES) throw fail('ERR_TOO_LARGE', `Flight stream of ${streamLength} bytes exceeds the ${DEFAULT_MAX_MESSAGE_BYTES}-byte limit`);
  const checker = new IpcMessageChecker(limits.ipc);
  const summary: IpcSummary = { messages: 0, recordBatches: 0, dictionaryBatches: 0, streamLength };
  const parts: ReceivedPart[] = [];
  for (const m of messages) {
    if (m.data_header.length === 0) continue; // metadata only
    const given = m.data_body.length;
    // As in the IPC stream `bytes` makes: the declared body is the one given, or it zero-padded to 8 bytes.
    const ipc = checkMessageParts(m.data_header, given + pad8(given), checker, parts.length);
    if (ipc.bodyLength < given) throw fail('ERR_IPC_INVALID', `message ${parts.length} declares a body of ${ipc.bodyLength} bytes but carries ${given}`);
    const type = ipc.message.headerType;
    parts.push({ ipc, header: m.data_header, headerType: type, body: ipc.bodyLength === given ? m.data_body : zeroPadded(m.data_body, ipc.bodyLength) });
    summary.messages++;
    if (type === 3) summary.recordBatches++;
    else if (type === 2) summary.dictionaryBatches++;
  }
  if (parts.length === 0) throw fail('ERR_IPC_TRUNCATED', 'IPC stream has no Schema message');
  const batch = messages.find((m) => m.app_metadata.length > 0);
  return new FlightMessage(messages, parts, summary, batch ? decodeMetadata(batch.app_metadata) : {}, name, responder);
}

/** A body its sender did not pad: a copy with the zero padding its message declares (rare). */
function zeroPadded(body: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  out.set(body);
  return out;
}

/** @internal User metadata travels as a JSON object of strings in the first batch's app_metadata. */
export function encodeMetadata(metadata: KeyValues | undefined): Uint8Array | undefined {
  return metadata && Object.keys(metadata).length > 0 ? Buffer.from(JSON.stringify(metadata)) : undefined;
}

/** @internal The user metadata of an app_metadata: our JSON object of strings, else the bytes in base64. */
export function decodeMetadata(bytes: Uint8Array): KeyValues {
  try {
    const value: unknown = JSON.parse(Buffer.from(bytes).toString('utf8'));
    if (value && typeof value === 'object' && Object.values(value).every((v) => typeof v === 'string')) return value as KeyValues;
  } catch {
    // not ours: an application's own app_metadata
  }
  return { app_metadata: Buffer.from(bytes).toString('base64') };
}
