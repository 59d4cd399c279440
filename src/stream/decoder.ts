// Decodes the batches of a stream one record at a time, in place: the prologue gives the schema
// and the dictionaries so far; each record adds dictionaries (whole or deltas) and one batch.
import { MessageHeader, RecordBatch, Schema, Struct, Vector, makeData, type DataType } from 'apache-arrow';
import type { Message, RecordBatch as RecordBatchHeader } from 'apache-arrow/ipc/metadata/message';
import { VectorLoader } from 'apache-arrow/visitor/vectorloader';
import { fail } from '../errors.js';
import { classify } from '../ipc/reader.js';
import { IpcMessageChecker, walkIpcMessages } from '../ipc/messages.js';
import type { IpcLimits } from '../ipc/limits.js';

export class BatchDecoder {
  readonly schema: Schema;
  #dictionaries = new Map<number, Vector>();
  /** Knows the schema from the prologue: every record's batches are checked against it. */
  #checker: IpcMessageChecker;

  /** `prologue`: a Schema message then DictionaryBatch messages (PROTOCOL.md §12.1). */
  constructor(prologue: Uint8Array, limits?: Partial<IpcLimits>) {
    let schema: Schema | undefined;
    this.#checker = new IpcMessageChecker(limits);
    walkIpcMessages(prologue, 'stream', ({ message, bodyStart, bodyLength }) => {
      if (message.isSchema()) schema = message.header();
      else if (message.isDictionaryBatch()) this.#loadDictionary(schema!, message, prologue.subarray(bodyStart, bodyStart + bodyLength));
      else throw fail('ERR_IPC_INVALID', 'a stream prologue holds a record batch');
    }, this.#checker);
    this.schema = schema!;
  }

  /** The record batch of one record's messages (§12.2); its column buffers are views of `bytes`, dictionaries are copied. */
  decode(bytes: Uint8Array): RecordBatch {
    let batch: RecordBatch | undefined;
    walkIpcMessages(bytes, 'batches', ({ message, bodyStart, bodyLength }) => {
      if (batch) throw fail('ERR_IPC_INVALID', 'a stream record holds a message after its record batch');
      const body = bytes.subarray(bodyStart, bodyStart + bodyLength);
      // A dictionary outlives its record (later batches use it): copy it out of the ring.
      if (message.headerType === MessageHeader.DictionaryBatch) this.#loadDictionary(this.schema, message, body.slice());
      else batch = this.#loadBatch(message.header() as RecordBatchHeader, body, message);
    }, this.#checker);
    if (!batch) throw fail('ERR_IPC_INVALID', 'a stream record holds no record batch');
    return batch;
  }

  #loadDictionary(schema: Schema, message: Message, body: Uint8Array): void {
    const header = message.header() as unknown as { id: number; isDelta: boolean; data: RecordBatchHeader };
    const type = schema.dictionaries.get(header.id);
    if (!type) throw fail('ERR_IPC_INVALID', `dictionary batch for id ${header.id}, which no field of the schema uses`);
    const existing = this.#dictionaries.get(header.id);
    if (header.isDelta && !existing) throw fail('ERR_IPC_INVALID', `delta for dictionary ${header.id}, which was never sent whole`);
    const [data] = this.#load(schema, header.data, body, [type]);
    const vector = new Vector([data!]);
    this.#dictionaries.set(header.id, (header.isDelta && existing ? existing.concat(vector) : vector).memoize());
  }

  #loadBatch(header: RecordBatchHeader, body: Uint8Array, message: Message): RecordBatch {
    const children = this.#load(this.schema, header, body, this.schema.fields.map((f) => f.type));
    const data = makeData({ type: new Struct(this.schema.fields), length: Number(header.length), children });
    return new RecordBatch(this.schema, data, (message as unknown as { metadata?: Map<string, string> }).metadata);
  }

  #load(schema: Schema, header: RecordBatchHeader, body: Uint8Array, types: DataType[]) {
    if ((header as unknown as { compression?: unknown }).compression != null) {
      throw fail('ERR_IPC_UNSUPPORTED', 'compressed batches cannot be read in place: streams carry uncompressed bodies (PROTOCOL.md §12.2)');
    }
    try {
      const loader = new VectorLoader(body, header.nodes, header.buffers, this.#dictionaries, schema.metadataVersion, header.variadicBufferCounts);
      return loader.visitMany(types);
    } catch (e) {
      throw classify(e);
    }
  }
}
