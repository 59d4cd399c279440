// Born in shared memory: a table's columns are written straight into a segment, then sealed and
// sent with no copy at all. Layout of the segment (the Python peer's builder is the same):
//
//   [ zero ... | Schema message | RecordBatch message ][ body: the buffers handed out ][ EOS ]
//   0          ipcOffset                               headerBytes
//
// The messages are written last, in front of the body, so that the RecordBatch message's buffer
// regions point at the buffers where the application filled them.
import { DataType, RecordBatch, Table } from 'apache-arrow';
import { BufferRegion, Message, RecordBatch as RecordBatchHeader } from 'apache-arrow/ipc/metadata/message';
import { VectorAssembler } from 'apache-arrow/visitor/vectorassembler';
import { fail } from '../errors.js';
import { Segment } from '../shm/segment.js';
import { PreparedTable } from './prepared.js';
import { ALIGNMENT, toBatches } from './writer.js';

const align = (n: number, a: number): number => Math.ceil(n / a) * a;
const END_OF_STREAM = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0);

type TypedArrayConstructor<T> = { new (buffer: ArrayBuffer, byteOffset: number, length: number): T; BYTES_PER_ELEMENT: number };

export interface TableBuilderOptions {
  /** Room in front of the body for the Schema and RecordBatch messages, a multiple of 64. Default 65536. */
  headerBytes?: number;
}

/**
 * Memory in a new segment for one record batch's buffers. Hand out buffers with `buffer()` or
 * `array()`, fill them, build apache-arrow Data over them (`makeData`), then `finish()` the table:
 * it is sealed where it was written, and the returned PreparedTable is sent like any other, with no
 * copy. Every view of the builder's memory is detached by `finish()` (the segment is sealed against
 * writes from then on). Dictionary-encoded columns are not supported.
 */
export class TableBuilder {
  readonly headerBytes: number;
  readonly capacity: number;
  #segment: Segment | null;
  #memory: ArrayBuffer;
  #used = 0;

  private constructor(segment: Segment, headerBytes: number, capacity: number) {
    this.#segment = segment;
    this.headerBytes = headerBytes;
    this.capacity = capacity;
    this.#memory = segment.writableBuffer();
  }

  /** A builder whose body holds `bodyBytes` (buffers are 64-byte aligned: leave room for padding). */
  static create(bodyBytes: number, options: TableBuilderOptions = {}): TableBuilder {
    const headerBytes = options.headerBytes ?? 65536;
    if (!Number.isSafeInteger(bodyBytes) || bodyBytes <= 0) throw fail('ERR_INVALID_ARGUMENT', `bodyBytes must be a positive integer, got ${bodyBytes}`);
    if (!Number.isSafeInteger(headerBytes) || headerBytes <= 0 || headerBytes % ALIGNMENT !== 0) throw fail('ERR_INVALID_ARGUMENT', `headerBytes must be a positive multiple of ${ALIGNMENT}, got ${headerBytes}`);
    const segment = Segment.create(headerBytes + align(bodyBytes, ALIGNMENT) + END_OF_STREAM.length, 'arrow-shm-built');
    try {
      return new TableBuilder(segment, headerBytes, align(bodyBytes, ALIGNMENT));
    } catch (e) {
      segment.close();
      throw e;
    }
  }

  /** `byteLength` zeroed, writable, 64-byte-aligned bytes of the body. */
  buffer(byteLength: number): Uint8Array {
    if (!this.#segment) throw fail('ERR_CLOSED', 'the builder is finished or closed');
    const start = align(this.#used, ALIGNMENT);
    if (!Number.isSafeInteger(byteLength) || byteLength < 0 || start + byteLength > this.capacity) {
      throw fail('ERR_INVALID_ARGUMENT', `${byteLength} more bytes do not fit in the builder's ${this.capacity}-byte body (${this.#used} used)`);
    }
    this.#used = start + byteLength;
    return new Uint8Array(this.#memory, this.headerBytes + start, byteLength);
  }

  /** `length` elements of a typed array in the body, e.g. `builder.array(Float64Array, n)`. */
  array<T>(type: TypedArrayConstructor<T>, length: number): T {
    const bytes = this.buffer(length * type.BYTES_PER_ELEMENT);
    return new type(bytes.buffer as ArrayBuffer, bytes.byteOffset, length);
  }

  /**
   * Seals `data` (one record batch, or a Table of one batch) whose every buffer the builder handed
   * out, and returns it ready to send. ERR_INVALID_ARGUMENT for a buffer anywhere else (arrow-js
   * copies a sliced column's offsets, for instance) or a dictionary-encoded column.
   */
  finish(data: Table | RecordBatch): PreparedTable {
    const segment = this.#segment;
    if (!segment) throw fail('ERR_CLOSED', 'the builder is finished or closed');
    const { schema, batches } = toBatches(data);
    if (batches.length !== 1) throw fail('ERR_INVALID_ARGUMENT', `a builder holds one record batch, got ${batches.length}`);
    if (schema.fields.some((f) => hasDictionary(f.type))) throw fail('ERR_INVALID_ARGUMENT', 'dictionary-encoded columns cannot be built in shared memory');
    const batch = batches[0]!;
    const assembled = VectorAssembler.assemble(batch);
    const regions = assembled.buffers.map((b) => this.#region(b));
    const bodyLength = align(Math.max(0, ...regions.map((r) => Number(r.offset) + Number(r.length))), 8);
    const schemaMessage = encapsulate(Message.encode(Message.from(schema)));
    const header = new RecordBatchHeader(batch.numRows, assembled.nodes, regions, null, assembled.variadicBufferCounts, batch.metadata);
    const batchMessage = encapsulate(Message.encode(Message.from(header, bodyLength)));
    const ipcOffset = this.headerBytes - schemaMessage.length - batchMessage.length;
    if (ipcOffset < 0) throw fail('ERR_TOO_LARGE', `the IPC messages need ${schemaMessage.length + batchMessage.length} bytes in front of the body: create the builder with a larger headerBytes`);
    const memory = new Uint8Array(this.#memory);
    memory.set(schemaMessage, ipcOffset);
    memory.set(batchMessage, ipcOffset + schemaMessage.length);
    memory.set(END_OF_STREAM, this.headerBytes + bodyLength);
    this.#segment = null;
    try {
      segment.seal('sealed'); // unmaps first: every view of the builder's memory is detached
    } catch (e) {
      segment.close();
      throw e;
    }
    return PreparedTable.sealed(segment, ipcOffset, this.headerBytes + bodyLength + END_OF_STREAM.length - ipcOffset);
  }

  /** Gives the memory up without sending it. */
  close(): void {
    this.#segment?.close();
    this.#segment = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Where a buffer of the batch lies in the body: it must be one the builder handed out. */
  #region(buffer: ArrayBufferView): BufferRegion {
    if (buffer.byteLength === 0) return new BufferRegion(0, 0);
    const start = buffer.byteOffset - this.headerBytes;
    if (buffer.buffer !== this.#memory || start < 0 || start + buffer.byteLength > this.#used) {
      throw fail('ERR_INVALID_ARGUMENT', `a ${buffer.byteLength}-byte buffer of the batch is not in the builder's body: build every column over builder.buffer() or builder.array() (a sliced column's offsets, for one, are copied by apache-arrow)`);
    }
    return new BufferRegion(start, buffer.byteLength);
  }
}

function hasDictionary(type: DataType): boolean {
  return DataType.isDictionary(type) || (type.children ?? []).some((c) => hasDictionary(c.type));
}

/** An encapsulated message's metadata: continuation, length, the flatbuffer padded to 8 bytes. */
function encapsulate(flatbuffer: Uint8Array): Uint8Array {
  const padded = align(flatbuffer.length, 8);
  const out = new Uint8Array(8 + padded);
  const view = new DataView(out.buffer);
  view.setUint32(0, 0xffffffff, true);
  view.setInt32(4, padded, true);
  out.set(flatbuffer, 8);
  return out;
}
