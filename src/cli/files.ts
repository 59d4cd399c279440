// Reading the CLI's input files: Arrow IPC stream bytes pass through untouched; IPC *file*
// format (magic ARROW1) is re-framed as a stream.
import { readFileSync } from 'node:fs';
import { RecordBatchReader, Table } from 'apache-arrow';
import { fail } from '../errors.js';
import type { TableLike } from '../ipc/writer.js';
import { validateIpcStream } from '../ipc/validate.js';

const FILE_MAGIC = 'ARROW1';

export function isArrowFileFormat(bytes: Uint8Array): boolean {
  return bytes.length >= 6 && String.fromCharCode(...bytes.subarray(0, 6)) === FILE_MAGIC;
}

export function readInput(path: string): Uint8Array {
  try {
    return new Uint8Array(readFileSync(path === '-' ? 0 : path));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new UsageError(`cannot read ${path === '-' ? 'standard input' : path}: ${err.code ?? err.message}`);
  }
}

/** What to send for an input file: the stream bytes themselves, or the file's batches. */
export function sendableFromFile(bytes: Uint8Array): Uint8Array | TableLike {
  if (!isArrowFileFormat(bytes)) {
    validateIpcStream(bytes); // fail before connecting to anyone
    return bytes;
  }
  try {
    const reader = RecordBatchReader.from(bytes);
    const batches = reader.readAll();
    return batches.length > 0 ? batches : new Table(reader.schema);
  } catch (e) {
    throw fail('ERR_IPC_INVALID', `cannot read the Arrow file: ${(e as Error).message}`, e);
  }
}

/** Bad invocation: exit status 2. */
export class UsageError extends Error {}
