// The Arrow IPC *file* format (magic ARROW1, a footer that points at the messages), checked and
// re-framed as an IPC stream before any Arrow library reads it. arrow-js's file reader trusts the
// footer (a 698-byte fuzz file makes it spin forever), so the footer and every block it points to
// go through the checks used for streams (docs/PROTOCOL.md §7, §14.1) first.
//
//   "ARROW1" 00 00 | stream: Schema, dictionaries, batches | Footer | i32 footer length | "ARROW1"
import { Footer } from 'apache-arrow/ipc/metadata/file';
import { ArrowShmError, fail } from '../errors.js';
import { FlatView } from './flatbuffer.js';
import type { IpcLimits } from './limits.js';
import { classify } from './reader.js';
import { IpcMessageChecker, walkIpcMessages, type IpcMessage } from './messages.js';
import { verifyFooterFlatbuffer } from './flatbuffer.js';
import { LayoutBuilder } from './writer.js';

const MAGIC = [0x41, 0x52, 0x52, 0x4f, 0x57, 0x31]; // "ARROW1"
const HEADER = 8; // the magic, padded to 8
const TRAILER = 10; // the footer length and the magic again
const END_OF_STREAM = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0);
// Footer (File.fbs): version 0, schema 1, dictionaries 2, recordBatches 3. Block: offset i64 at 0,
// metaDataLength i32 at 8, bodyLength i64 at 16; 24 bytes.
const FOOTER_DICTIONARIES = 2;
const FOOTER_RECORD_BATCHES = 3;
const BLOCK_SIZE = 24;

type Kind = 'dictionary' | 'record batch';
interface Block {
  kind: Kind;
  index: number;
  start: number;
  metadataLength: number;
  end: number;
}

export function isArrowFile(bytes: Uint8Array): boolean {
  return bytes.length >= MAGIC.length && MAGIC.every((b, i) => bytes[i] === b);
}

const invalid = (what: string): ArrowShmError => fail('ERR_IPC_INVALID', `Arrow IPC file: ${what}`);

/**
 * The IPC stream an Arrow IPC file holds: the Schema message that opens it (arrow-js writes none:
 * then one encoded from the footer's Schema), then the blocks its footer lists (dictionaries, then
 * record batches), then an end-of-stream marker. Every block must lie between that Schema and the
 * footer and hold exactly one message of its kind; blocks may not overlap, so the stream is never
 * larger than the file and its Schema. Throws ERR_IPC_* otherwise.
 */
export function arrowFileToStream(bytes: Uint8Array, limits?: Partial<IpcLimits>): Uint8Array {
  const size = bytes.length;
  if (!isArrowFile(bytes) || size < HEADER + TRAILER) throw invalid(`${size} bytes are too few for the magic and a footer`);
  if (!MAGIC.every((b, i) => bytes[size - MAGIC.length + i] === b)) throw invalid('it does not end with the ARROW1 magic');
  const view = new DataView(bytes.buffer, bytes.byteOffset, size);
  const footerEnd = size - TRAILER;
  const footerLength = view.getInt32(footerEnd, true);
  if (footerLength <= 0 || footerLength > footerEnd - HEADER) throw invalid(`a footer of ${footerLength} bytes does not fit in the ${size}-byte file`);
  const footerStart = footerEnd - footerLength;
  const footer = bytes.subarray(footerStart, footerEnd);
  within('its footer', () => verifyFooterFlatbuffer(footer, limits));
  const fb = new FlatView(footer);
  const blocks = [...readBlocks(fb, FOOTER_DICTIONARIES, 'dictionary', footerStart), ...readBlocks(fb, FOOTER_RECORD_BATCHES, 'record batch', footerStart)];

  const byStart = [...blocks].sort((a, b) => a.start - b.start);
  for (let i = 1; i < byStart.length; i++) {
    if (byStart[i]!.start < byStart[i - 1]!.end) throw invalid(`${describe(byStart[i]!)} overlaps ${describe(byStart[i - 1]!)}`);
  }
  const checker = new IpcMessageChecker(limits);
  const prologue = schemaPrologue(bytes.subarray(HEADER, byStart[0]?.start ?? footerStart), footer);
  let schemaLength = 0;
  within('its Schema message', () => walkIpcMessages(prologue, 'stream', (m) => (schemaLength ||= m.bodyStart + m.bodyLength), checker));

  let length = schemaLength + END_OF_STREAM.length;
  for (const block of blocks) length += block.end - block.start;
  const stream = new Uint8Array(length);
  stream.set(prologue.subarray(0, schemaLength));
  let at = schemaLength;
  for (const block of blocks) {
    const message = bytes.subarray(block.start, block.end);
    within(describe(block), () => checkBlock(message, block, checker));
    stream.set(message, at);
    at += message.length;
  }
  stream.set(END_OF_STREAM, at);
  return stream;
}

/**
 * What comes before the first block: the file's own Schema message, or (when the file's stream
 * starts with none, as arrow-js writes it) a Schema message encoded from the verified footer.
 */
function schemaPrologue(prologue: Uint8Array, footer: Uint8Array): Uint8Array {
  const view = new DataView(prologue.buffer, prologue.byteOffset, prologue.byteLength);
  const first = prologue.length >= 4 ? view.getUint32(0, true) : 0;
  const empty = first === 0 || (first === 0xffffffff && (prologue.length < 8 || view.getInt32(4, true) === 0));
  if (!empty) return prologue;
  const builder = new LayoutBuilder();
  try {
    builder.schema(Footer.decode(footer).schema);
  } catch (e) {
    throw classify(e);
  }
  const message = new Uint8Array(builder.position);
  for (const chunk of builder.chunks) message.set(chunk.bytes, chunk.offset);
  return message;
}

/** The blocks of footer vector `field`, each checked to lie after the header and before the footer. */
function readBlocks(fb: FlatView, field: number, kind: Kind, footerStart: number): Block[] {
  const { start, length } = fb.vector(fb.root(), field);
  const limit = BigInt(footerStart);
  const blocks: Block[] = [];
  for (let index = 0; index < length; index++) {
    const at = start + index * BLOCK_SIZE;
    const offset = fb.view.getBigInt64(at, true);
    const metadataLength = fb.view.getInt32(at + 8, true);
    const bodyLength = fb.view.getBigInt64(at + 16, true);
    const what = `${kind} block ${index} (offset ${offset}, metadata ${metadataLength} bytes, body ${bodyLength} bytes)`;
    if (offset < HEADER || metadataLength <= 0 || bodyLength < 0n || offset + BigInt(metadataLength) + bodyLength > limit) {
      throw invalid(`${what} is not inside the file between its header and its footer (at ${footerStart})`);
    }
    blocks.push({ kind, index, start: Number(offset), metadataLength, end: Number(offset + BigInt(metadataLength) + bodyLength) });
  }
  return blocks;
}

/** A block holds exactly one message of its kind: metadata (prefix included), then its body. */
function checkBlock(message: Uint8Array, block: Block, checker: IpcMessageChecker): void {
  let found: IpcMessage | undefined;
  const summary = walkIpcMessages(message, 'batches', (m) => (found ??= m), checker);
  const expected = block.kind === 'dictionary' ? 'dictionaryBatches' : 'recordBatches';
  if (summary.messages !== 1 || summary[expected] !== 1) throw fail('ERR_IPC_INVALID', `it does not hold exactly one ${block.kind} message`);
  if (found!.bodyStart !== block.metadataLength) throw fail('ERR_IPC_INVALID', `its message's metadata ends at ${found!.bodyStart}, not at ${block.metadataLength}`);
}

function describe(block: Block): string {
  return `${block.kind} block ${block.index} at offset ${block.start}`;
}

/** Runs `check`, naming `where` in the message of an error it throws. */
function within<T>(where: string, check: () => T): T {
  try {
    return check();
  } catch (e) {
    if (e instanceof ArrowShmError) throw fail(e.code, `Arrow IPC file, ${where}: ${e.message}`, e);
    throw e;
  }
}
