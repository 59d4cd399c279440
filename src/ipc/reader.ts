// Decoding checked IPC messages into apache-arrow objects, in place: every column buffer is a
// view of the bytes the messages came in. The messages were verified and checked first
// (messages.ts); here errors of the Arrow library are mapped to typed errors.
import { Field, MessageHeader, RecordBatch, RecordBatchReader, Schema, Struct, Table, Vector, makeData, type Data, type DataType } from 'apache-arrow';
import type { RecordBatch as RecordBatchHeader } from 'apache-arrow/ipc/metadata/message';
import { VectorLoader } from 'apache-arrow/visitor/vectorloader';
import { ArrowShmError, fail } from '../errors.js';
import { checkIpcStream, type IpcMessage } from './messages.js';
import './codecs.js';

// arrow-js's wording for types and features it does not implement.
const UNSUPPORTED = /unrecognized type|not (yet )?(supported|implemented)|unsupported|no codec|codec not found|codec for compression/i;

export function classify(e: unknown): ArrowShmError {
  if (e instanceof ArrowShmError) return e;
  const message = e instanceof Error ? e.message : String(e);
  if (UNSUPPORTED.test(message)) return fail('ERR_IPC_UNSUPPORTED', `arrow-js cannot decode this stream: ${message}`, e);
  return fail('ERR_IPC_INVALID', `arrow-js rejected the IPC stream: ${message}`, e);
}

interface DictionaryHeader {
  id: number;
  isDelta: boolean;
  data: RecordBatchHeader;
}

const isCompressed = (header: RecordBatchHeader): boolean => (header as unknown as { compression?: unknown }).compression != null;

/**
 * Loads checked messages one after another, as the Arrow stream format has it: a Schema, then
 * dictionaries (whole, replacements or deltas) and record batches. Column buffers are views of
 * the bodies it is given; compressed bodies are refused (ERR_IPC_UNSUPPORTED): they cannot be
 * read in place, and `decodeChecked` hands such streams to arrow-js's reader instead.
 */
export class IpcDecoder {
  #schema: Schema | null;
  /** The schema its record batches get: a copy of #schema (which a receiver's cache shares) made once. */
  #batchSchema: Schema | null = null;
  /** Whether batches can be made without apache-arrow's constructor (see recordBatch). */
  #direct = false;
  #dictionaries = new Map<number, Vector>();

  constructor(schema: Schema | null = null) {
    this.#schema = schema;
  }

  get schema(): Schema {
    if (!this.#schema) throw fail('ERR_IPC_INVALID', 'IPC stream without a Schema message');
    return this.#schema;
  }

  /**
   * One checked message and its body; a RecordBatch when it is one. `copyDictionary`: keep a copy
   * of a dictionary's body, for bodies in memory that is reused (a stream's ring).
   */
  load(message: IpcMessage, body: Uint8Array, copyDictionary = false): RecordBatch | null {
    const { message: m } = message;
    switch (m.headerType) {
      case MessageHeader.Schema:
        this.#schema = message.schema?.schema ?? (m.header() as Schema);
        this.#batchSchema = null;
        return null;
      case MessageHeader.DictionaryBatch:
        this.#loadDictionary(message.header as unknown as DictionaryHeader, copyDictionary ? body.slice() : body);
        return null;
      case MessageHeader.RecordBatch: {
        const header = message.header!;
        if (!this.#batchSchema) {
          this.#batchSchema = copySchema(this.schema);
          this.#direct = PLAIN_BATCH && new Set(this.#batchSchema.fields.map((f) => f.name)).size === this.#batchSchema.fields.length;
        }
        const schema = this.#batchSchema;
        const children = this.#load(header, body, schema.fields.map((f) => f.type));
        const length = Number(header.length);
        // Arrow requires every column to have the batch's length; arrow-js would instead allocate
        // a validity bitmap for the declared length (a hostile 2^40 is a RangeError).
        const wrong = children.findIndex((child) => child.length !== length);
        if (wrong >= 0) throw fail('ERR_IPC_INVALID', `record batch of ${length} rows with a column ${wrong} of ${children[wrong]!.length} rows`);
        const data = makeData({ type: new Struct(schema.fields), length, children });
        return recordBatch(schema, data, (m as { metadata?: Map<string, string> }).metadata, this.#direct);
      }
      default:
        throw fail('ERR_IPC_INVALID', `unexpected ${MessageHeader[m.headerType] ?? m.headerType} message`);
    }
  }

  #loadDictionary(header: DictionaryHeader, body: Uint8Array): void {
    const type = this.schema.dictionaries.get(header.id);
    if (!type) throw fail('ERR_IPC_INVALID', `dictionary batch for id ${header.id}, which no field of the schema uses`);
    const existing = this.#dictionaries.get(header.id);
    if (header.isDelta && !existing) throw fail('ERR_IPC_INVALID', `delta for dictionary ${header.id}, which was never sent whole`);
    const [data] = this.#load(header.data, body, [type]);
    const vector = new Vector([data!]);
    this.#dictionaries.set(header.id, (header.isDelta && existing ? existing.concat(vector) : vector).memoize());
  }

  #load(header: RecordBatchHeader, body: Uint8Array, types: DataType[]) {
    if (isCompressed(header)) throw fail('ERR_IPC_UNSUPPORTED', 'compressed batches cannot be read in place: streams carry uncompressed bodies (PROTOCOL.md §12.2)');
    try {
      return new VectorLoader(body, header.nodes, header.buffers, this.#dictionaries, this.schema.metadataVersion, header.variadicBufferCounts).visitMany(types);
    } catch (e) {
      throw classify(e);
    }
  }
}

/**
 * `schema` with fields and metadata of its own, as apache-arrow's RecordBatch constructor makes
 * for each batch: what a user changes in a received table's schema stays in that table.
 */
function copySchema(schema: Schema): Schema {
  const fields = schema.fields.map((f) => new Field(f.name, f.type, f.nullable, new Map(f.metadata)));
  return new Schema(fields, new Map(schema.metadata), new Map(schema.dictionaries));
}

/**
 * Whether apache-arrow's RecordBatch holds just `schema`, `data` and `_metadata` (21.2), asked of
 * one it made: then `recordBatch` can make one without its constructor.
 */
const PLAIN_BATCH = Object.keys(new RecordBatch(new Schema([]), makeData({ type: new Struct([]), length: 0, nullCount: 0, children: [] }))).join() === 'schema,data,_metadata';

/**
 * A RecordBatch of `data`, whose columns were checked to have its length, with its message's
 * custom metadata. The constructor checks those lengths again and rebuilds the schema, cloning
 * every field, for every batch (a third of a small table's decode, measured cold): `direct` makes
 * the batch without it, when PLAIN_BATCH says how and no two fields share a name (the constructor
 * matches fields by name and gives both the second one's type; every later batch apache-arrow
 * makes of this one, in slice() or concat(), goes through it: the batch must look as it would
 * make it). Otherwise: apache-arrow 21.2 takes the metadata as a third argument; 21.1 (the
 * lowest of the peer range) has no place for it, and its own reader drops it too.
 */
function recordBatch(schema: Schema, data: Data<Struct>, metadata: Map<string, string> | undefined, direct: boolean): RecordBatch {
  if (direct) return Object.assign(Object.create(RecordBatch.prototype) as RecordBatch, { schema, data, _metadata: metadata ?? new Map() });
  if (!metadata || metadata.size === 0) return new RecordBatch(schema, data);
  try {
    return new RecordBatch(schema, data, metadata);
  } catch {
    return new RecordBatch(schema, data);
  }
}

/** Whether any batch of `messages` has a compressed body. */
function anyCompressed(messages: readonly IpcMessage[]): boolean {
  return messages.some((m) => m.header && (isCompressed(m.header) || (m.message.headerType === MessageHeader.DictionaryBatch && isCompressed((m.header as unknown as DictionaryHeader).data))));
}

/**
 * The record batches of a checked stream: `messages` are what checkIpcStream found in `bytes`.
 * Column buffers are views into `bytes`; a compressed stream is decompressed by arrow-js's reader.
 */
export function decodeCheckedBatches(bytes: Uint8Array, messages: readonly IpcMessage[]): { schema: Schema; batches: RecordBatch[] } {
  return decodeMessages(messages, (m) => bytes.subarray(m.bodyStart, m.bodyStart + m.bodyLength), () => bytes);
}

/**
 * The same for checked messages whose bodies lie apart (Flight's FlightData): `bodies[i]` is the
 * body of `messages[i]`, 8-byte aligned. `stream`: the whole IPC stream, asked for only when a
 * body is compressed (arrow-js's reader decompresses it).
 */
export function decodeCheckedParts(messages: readonly IpcMessage[], bodies: readonly Uint8Array[], stream: () => Uint8Array): { schema: Schema; batches: RecordBatch[] } {
  return decodeMessages(messages, (_, i) => bodies[i]!, stream);
}

function decodeMessages(messages: readonly IpcMessage[], body: (m: IpcMessage, i: number) => Uint8Array, stream: () => Uint8Array): { schema: Schema; batches: RecordBatch[] } {
  if (anyCompressed(messages)) {
    try {
      const reader = RecordBatchReader.from(stream());
      const batches = reader.readAll();
      return { schema: reader.schema, batches };
    } catch (e) {
      throw classify(e);
    }
  }
  const decoder = new IpcDecoder();
  const batches: RecordBatch[] = [];
  try {
    messages.forEach((m, i) => {
      const batch = decoder.load(m, body(m, i));
      if (batch) batches.push(batch);
    });
    return { schema: decoder.schema, batches };
  } catch (e) {
    throw classify(e);
  }
}

export function decodeCheckedTable(bytes: Uint8Array, messages: readonly IpcMessage[]): Table {
  return tableOfBatches(decodeCheckedBatches(bytes, messages));
}

/** A table of decoded batches (of one empty batch when there are none, as apache-arrow's reader makes it). */
export function tableOfBatches({ schema, batches }: { schema: Schema; batches: RecordBatch[] }): Table {
  if (batches.length > 0) return new Table(batches);
  try {
    return new Table([emptyBatch(schema)]); // arrow-js makes the empty columns: a type it rejects (an Int of 7 bits) throws here
  } catch (e) {
    throw classify(e);
  }
}

/** A stream without batches is a table of one empty batch, as apache-arrow's own reader makes it. */
function emptyBatch(schema: Schema): RecordBatch {
  const children = schema.fields.map((f) => makeData({ type: f.type, length: 0, nullCount: 0 }));
  return new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: 0, nullCount: 0, children }));
}

/** The record batches of an IPC stream, checked first; column buffers are views into `bytes`. */
export function decodeBatches(bytes: Uint8Array): RecordBatch[] {
  return decodeCheckedBatches(bytes, checkIpcStream(bytes).messages).batches;
}

/** Checks, then decodes an IPC stream in place: for bytes that did not come through a channel (files, tests). */
export function decodeTable(bytes: Uint8Array): Table {
  return decodeCheckedTable(bytes, checkIpcStream(bytes).messages);
}

/** The same as `decodeTable`. */
export const tableFromIpcBytes = decodeTable;
