// A table received through Flight: one copy, re-framed as an IPC stream and validated.
import type { RecordBatch, Table } from 'apache-arrow';
import { fail, type ErrorCode } from '../errors.js';
import { decodeCheckedBatches, decodeCheckedTable } from '../ipc/reader.js';
import { checkIpcStream, type CheckedStream, type IpcMessage, type IpcSummary } from '../ipc/messages.js';
import type { KeyValues } from './frame.js';
import { type FlightLimits } from './flight-limits.js';
import { type Sendable } from '../ipc/prepared.js';
import { ipcFromFlightData, type FlightData } from './flight-codec.js';

/** How the server side of a DoExchange answers it. */
export interface FlightResponder {
  respond(data: Sendable): Promise<void>;
  respondError(code: ErrorCode, message: string): Promise<void>;
}

/** A table received through Flight: the same surface as a shared-memory `Message`. */
export class FlightMessage {
  #table: Table | undefined;
  #closed = false;
  #responder: FlightResponder | null;
  #messages: readonly IpcMessage[];
  /** What the checks found in the stream. */
  readonly summary: IpcSummary;

  constructor(
    /** The IPC stream, checked (§7): schema, dictionaries, batches, end-of-stream marker. */
    readonly bytes: Uint8Array,
    readonly metadata: KeyValues,
    checked: CheckedStream,
    /** The descriptor's path (DoPut), the command (DoExchange) or the ticket (DoGet). */
    readonly name: string,
    responder: FlightResponder | null = null,
  ) {
    this.summary = checked.summary;
    this.#messages = checked.messages;
    this.#responder = responder;
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
    this.#table ??= decodeCheckedTable(this.bytes, this.#messages);
    return this.#table;
  }

  get batches(): RecordBatch[] {
    if (this.#closed) throw fail('ERR_CLOSED', 'the message was closed');
    return this.#table?.batches ?? decodeCheckedBatches(this.bytes, this.#messages).batches;
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
 * message; the whole stream is validated here (counts against the schema, §14.1) before anyone decodes it.
 */
export function received(messages: FlightData[], name: string, limits: FlightLimits, responder: FlightResponder | null = null): FlightMessage {
  const bytes = ipcFromFlightData(messages); // the collector bounded it (maxCallBytes)
  const checked = checkIpcStream(bytes, limits.ipc);
  const batch = messages.find((m) => m.app_metadata.length > 0);
  return new FlightMessage(bytes, batch ? decodeMetadata(batch.app_metadata) : {}, checked, name, responder);
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
