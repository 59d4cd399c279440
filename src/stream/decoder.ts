// Decodes the batches of a stream one record at a time, in place: the prologue gives the schema
// and the dictionaries so far; each record adds dictionaries (whole or deltas) and one batch.
import type { RecordBatch, Schema } from 'apache-arrow';
import { fail } from '../errors.js';
import { IpcDecoder } from '../ipc/reader.js';
import { IpcMessageChecker, walkIpcMessages } from '../ipc/messages.js';
import type { IpcLimits } from '../ipc/limits.js';

export class BatchDecoder {
  readonly schema: Schema;
  #decoder = new IpcDecoder();
  /** Knows the schema from the prologue: every record's batches are checked against it. */
  #checker: IpcMessageChecker;

  /** `prologue`: a Schema message then DictionaryBatch messages (PROTOCOL.md §12.1). */
  constructor(prologue: Uint8Array, limits?: Partial<IpcLimits>) {
    this.#checker = new IpcMessageChecker(limits);
    walkIpcMessages(prologue, 'stream', (m) => {
      if (this.#decoder.load(m, prologue.subarray(m.bodyStart, m.bodyStart + m.bodyLength))) throw fail('ERR_IPC_INVALID', 'a stream prologue holds a record batch');
    }, this.#checker);
    this.schema = this.#decoder.schema;
  }

  /** The record batch of one record's messages (§12.2); its column buffers are views of `bytes`, dictionaries are copied. */
  decode(bytes: Uint8Array): RecordBatch {
    let batch: RecordBatch | undefined;
    walkIpcMessages(bytes, 'batches', (m) => {
      if (batch) throw fail('ERR_IPC_INVALID', 'a stream record holds a message after its record batch');
      // A dictionary outlives its record (later batches use it): copy it out of the ring.
      batch = this.#decoder.load(m, bytes.subarray(m.bodyStart, m.bodyStart + m.bodyLength), true) ?? undefined;
    }, this.#checker);
    if (!batch) throw fail('ERR_IPC_INVALID', 'a stream record holds no record batch');
    return batch;
  }
}
