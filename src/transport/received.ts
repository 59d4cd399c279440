// A table received through a mapped segment, and its lifetime: mapped read-only until close()
// (or until the garbage collector finds nothing that uses it), a leased one handed back after.
import type { RecordBatch, Table } from 'apache-arrow';
import { type ArrowShmError, fail } from '../errors.js';
import type { Sendable } from '../ipc/prepared.js';
import { decodeBatches, decodeTable } from '../ipc/reader.js';
import type { IpcSummary } from '../ipc/messages.js';
import type { Mapping } from '../shm/segment.js';
import { FrameFlags, type KeyValues } from './frame.js';
import type { SendOptions } from './options.js';

/** What a received table needs of the channel it came on: answering it, handing a lease back. */
export interface TableOrigin {
  sendFrameWithTable(data: Sendable, options: SendOptions, flags: number, correlationId: bigint): Promise<void>;
  sendError(code: string, message: string, correlationId: bigint, flags?: number): Promise<void>;
  releaseLease(id: bigint): void;
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
  #mapping: Mapping;
  #table: Table | undefined;
  #channel: TableOrigin | null;
  #leased: boolean;
  readonly bytes: Uint8Array;

  constructor(
    channel: TableOrigin | null,
    readonly id: bigint,
    readonly flags: number,
    readonly metadata: KeyValues,
    mapping: Mapping,
    ipcOffset: number,
    ipcLength: number,
    readonly summary: IpcSummary,
  ) {
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

  /** The ArrayBuffer over the shared mapping: every column buffer of `table` is a view of it. */
  get sharedBuffer(): ArrayBuffer {
    return this.#mapping.buffer;
  }

  /** The decoded table (decoded on first access, zero-copy). Throws ERR_IPC_UNSUPPORTED for types arrow-js lacks. */
  get table(): Table {
    if (this.closed) throw fail('ERR_CLOSED', 'the message was closed');
    this.#table ??= decodeTable(this.bytes);
    return this.#table;
  }

  get batches(): RecordBatch[] {
    if (this.closed) throw fail('ERR_CLOSED', 'the message was closed');
    return this.#table?.batches ?? decodeBatches(this.bytes);
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
