// Reading the CLI's input files: an Arrow IPC stream passes through untouched; an IPC *file*
// (magic ARROW1) is re-framed as a stream (src/ipc/file.ts). Both are checked before anything
// connects, so a bad FILE fails with one clear line.
import { readFileSync } from 'node:fs';
import { ArrowShmError, fail } from '../errors.js';
import { arrowFileToStream, isArrowFile } from '../ipc/file.js';
import { validateIpcStream } from '../ipc/messages.js';

const CONTINUATION = 0xffffffff;

export function readInput(path: string): Uint8Array {
  try {
    return new Uint8Array(readFileSync(path === '-' ? 0 : path));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new UsageError(`cannot read ${inputName(path)}: ${err.code ?? err.message}`);
  }
}

/** The checked IPC stream to send for FILE (or - for standard input). */
export function readIpcInput(path: string): Uint8Array {
  const bytes = readInput(path);
  const name = inputName(path);
  if (!isArrowFile(bytes) && !startsLikeIpcStream(bytes)) throw fail('ERR_IPC_INVALID', `${name} is not an Arrow IPC stream or file`);
  try {
    if (isArrowFile(bytes)) return arrowFileToStream(bytes);
    validateIpcStream(bytes);
    return bytes;
  } catch (e) {
    if (e instanceof ArrowShmError) throw fail(e.code, `${name}: ${e.message}`, e);
    throw e;
  }
}

/** A stream opens with a continuation marker or (before Arrow 0.15) a metadata length that fits. */
function startsLikeIpcStream(bytes: Uint8Array): boolean {
  if (bytes.length < 8) return false;
  const first = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
  return first === CONTINUATION || (first > 0 && first <= bytes.length - 4);
}

function inputName(path: string): string {
  return path === '-' ? 'standard input' : path;
}

/** Bad invocation: exit status 2. */
export class UsageError extends Error {}
