// A table received through a mapped segment, and its lifetime: mapped read-only until close()
// (or until the garbage collector finds nothing that uses it), a leased one handed back after.
import type { RecordBatch, Table } from 'apache-arrow';
import { type ArrowShmError, fail } from '../errors.js';
import type { Sendable } from '../ipc/prepared.js';
import { decodeCheckedBatches, decodeCheckedTable } from '../ipc/reader.js';
import type { CheckedStream, IpcMessage, IpcSummary } from '../ipc/messages.js';
import { FrameFlags, type KeyValues } from './frame.js';
import type { SendOptions } from './options.js';
import { traceStage } from '../trace.js';

/** What a received table needs of the channel it came on: answering it, handing a lease back. */
export interface TableOrigin {
  sendFrameWithTable(data: Sendable, options: SendOptions, flags: number, correlationId: bigint): Promise<void>;
  sendError(code: string, message: string, correlationId: bigint, flags?: number): Promise<void>;
  releaseLease(id: bigint): void;
}

/** Where a received table's bytes live: a mapped segment (a Mapping), or an inline table's frame. */
export interface TableMemory {
  readonly buffer: ArrayBuffer;
  readonly released: boolean;
  bytes(offset: number, length: number): Uint8Array;
  /** Detaches every view of `buffer` (they read as empty) and lets the memory go. */
  release(): void;
}

/** An inline table's bytes (docs/PROTOCOL.md §5.3): the received frame's own ArrayBuffer. */
export class FrameMemory implements TableMemory {
  #buffer: ArrayBuffer | null;

  constructor(buffer: ArrayBuffer) {
    this.#buffer = buffer;
  }

  get buffer(): ArrayBuffer {
    if (!this.#buffer) throw fail('ERR_CLOSED', 'the message was closed');
    return this.#buffer;
  }

  get released(): boolean {
    return this.#buffer === null;
  }

  bytes(offset: number, length: number): Uint8Array {
    return new Uint8Array(this.buffer, offset, length);
  }

  release(): void {
    const buffer = this.#buffer;
    this.#buffer = null;
    // Transferring detaches the buffer: views of it read as empty, as after a mapping's release.
    if (buffer) structuredClone(buffer, { transfer: [buffer] });
  }
}

const leaseRegistry = new FinalizationRegistry<{ channel: WeakRef<TableOrigin>; id: bigint }>((held) => {
  held.channel.deref()?.releaseLease(held.id);
});

/**
 * A received table. Its bytes stay mapped, read-only, until `close()` (or until the garbage
 * collector finds neither this message nor any view of its columns alive). After close every
 * view into the segment is detached: it reads as empty, never as freed memory.
 */
export class ReceivedTable {
  #mapping: TableMemory;
  #table: Table | undefined;
  #channel: TableOrigin | null;
  #leased: boolean;
  #messages: readonly IpcMessage[];
  readonly bytes: Uint8Array;
  /** What the receive-time checks found in the stream. */
  readonly summary: IpcSummary;

  constructor(
    channel: TableOrigin | null,
    readonly id: bigint,
    readonly flags: number,
    readonly metadata: KeyValues,
    mapping: TableMemory,
    ipcOffset: number,
    ipcLength: number,
    checked: CheckedStream,
  ) {
    this.summary = checked.summary;
    this.#messages = checked.messages;
    this.#channel = channel;
    this.#mapping = mapping;
    this.#leased = (flags & FrameFlags.LEASED) !== 0;
    this.bytes = mapping.bytes(ipcOffset, ipcLength);
    if (this.#leased && channel) leaseRegistry.register(mapping.buffer, { channel: new WeakRef(channel), id }, this);
  }

  get isRequest(): boolean {
    return (this.flags & FrameFlags.REQUEST) !== 0;
  }

  get closed(): boolean {
    return this.#mapping.released;
  }

  /** The ArrayBuffer the table's bytes are in (the shared mapping; for an inline table, the frame): every column buffer of `table` is a view of it. */
  get sharedBuffer(): ArrayBuffer {
    return this.#mapping.buffer;
  }

  /** The decoded table (decoded on first access, zero-copy). Throws ERR_IPC_UNSUPPORTED for types arrow-js lacks. */
  get table(): Table {
    if (this.closed) throw fail('ERR_CLOSED', 'the message was closed');
    if (!this.#table) {
      this.#table = decodeCheckedTable(this.bytes, this.#messages);
      traceStage('decode', this.id);
    }
    return this.#table;
  }

  get batches(): RecordBatch[] {
    if (this.closed) throw fail('ERR_CLOSED', 'the message was closed');
    return this.#table?.batches ?? decodeCheckedBatches(this.bytes, this.#messages).batches;
  }

  /** Answers a request with a table. */
  respond(data: Sendable, options: SendOptions = {}): Promise<void> {
    if (!this.isRequest || !this.#channel) throw fail('ERR_INVALID_ARGUMENT', 'this message is not a request');
    return this.#channel.sendFrameWithTable(data, options, FrameFlags.RESPONSE, this.id);
  }

  /** Answers a request with an error, which the requester receives as an ArrowShmError. */
  respondError(code: ArrowShmError['code'], message: string): Promise<void> {
    if (!this.isRequest || !this.#channel) throw fail('ERR_INVALID_ARGUMENT', 'this message is not a request');
    return this.#channel.sendError(code, message, this.id, FrameFlags.RESPONSE);
  }

  /** Unmaps the segment (detaching every view) and, for a leased segment, hands it back. */
  close(): void {
    if (this.closed) return;
    this.#table = undefined;
    this.#mapping.release();
    if (this.#leased) {
      leaseRegistry.unregister(this);
      this.#channel?.releaseLease(this.id);
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
