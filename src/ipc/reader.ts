// Decoding received IPC bytes into apache-arrow objects. Validation happened at receive time
// (messages.ts); here errors of the Arrow library are mapped to typed errors.
import { RecordBatchReader, Table, type RecordBatch } from 'apache-arrow';
import { ArrowShmError, fail } from '../errors.js';
import { validateIpcStream } from './messages.js';
import './codecs.js';

// arrow-js's wording for types and features it does not implement.
const UNSUPPORTED = /unrecognized type|not (yet )?(supported|implemented)|unsupported|no codec|codec not found|codec for compression/i;

export function classify(e: unknown): ArrowShmError {
  if (e instanceof ArrowShmError) return e;
  const message = e instanceof Error ? e.message : String(e);
  if (UNSUPPORTED.test(message)) return fail('ERR_IPC_UNSUPPORTED', `arrow-js cannot decode this stream: ${message}`, e);
  return fail('ERR_IPC_INVALID', `arrow-js rejected the IPC stream: ${message}`, e);
}

/** The record batches of a validated IPC stream; column buffers are views into `bytes`. */
export function decodeBatches(bytes: Uint8Array): RecordBatch[] {
  try {
    const reader = RecordBatchReader.from(bytes);
    const batches = reader.readAll();
    return batches;
  } catch (e) {
    throw classify(e);
  }
}

export function decodeTable(bytes: Uint8Array): Table {
  try {
    const reader = RecordBatchReader.from(bytes);
    const batches = reader.readAll();
    return batches.length > 0 ? new Table(batches) : new Table(reader.schema);
  } catch (e) {
    throw classify(e);
  }
}

/** Validates, then decodes: for bytes that did not come through a channel (files, tests). */
export function tableFromIpcBytes(bytes: Uint8Array): Table {
  validateIpcStream(bytes);
  return decodeTable(bytes);
}
