// Lays out an Arrow IPC stream for a Table (or batches) directly in a caller's memory, with every
// message body and every body buffer 64-byte aligned. The layout is computed first (no copy),
// then each column buffer is copied exactly once, from wherever the Table holds it into the target.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { DataType, RecordBatch, Schema, Table, Vector, type Data, type Field } from 'apache-arrow';
import {
  BufferRegion,
  DictionaryBatch as DictionaryBatchHeader,
  Message,
  RecordBatch as RecordBatchHeader,
} from 'apache-arrow/ipc/metadata/message';
import { VectorAssembler } from 'apache-arrow/visitor/vectorassembler';
import { fail } from '../errors.js';
import { encodeMessage } from './message-writer.js';

export const ALIGNMENT = 64;
const align = (n: number, a = ALIGNMENT): number => Math.ceil(n / a) * a;

/** A piece of the stream: `bytes` belongs at `offset`. Column bytes are views, never copies. */
export interface IpcChunk {
  offset: number;
  bytes: Uint8Array;
  /** A body buffer (column data), as opposed to framing or flatbuffer metadata. */
  body: boolean;
}

export interface IpcLayout {
  /** Total stream length, end-of-stream marker included. */
  byteLength: number;
  chunks: IpcChunk[];
  schema: Schema;
  recordBatches: number;
}

export type TableLike = Table | RecordBatch | RecordBatch[];

export function toBatches(input: TableLike): { schema: Schema; batches: RecordBatch[] } {
  const found = tableParts(input);
  // Table, RecordBatch and Schema may pass instanceof across copies of apache-arrow (Symbol.hasInstance),
  // DataType never does: the schema encoder would then write garbage types (bitWidth 0), so refuse.
  if (found && ownTypes(found.schema.fields) && found.batches.every((b) => ownTypes(b.schema.fields))) return found;
  const first: unknown = Array.isArray(input) ? input[0] : input;
  if (found || (first as { schema?: { fields?: unknown } } | undefined)?.schema?.fields) throw foreignTable(first as object);
  throw fail('ERR_INVALID_ARGUMENT', 'expected an apache-arrow Table, RecordBatch or non-empty RecordBatch[]');
}

function tableParts(input: TableLike): { schema: Schema; batches: RecordBatch[] } | undefined {
  if (input instanceof Table) return { schema: input.schema, batches: input.batches };
  if (input instanceof RecordBatch) return { schema: input.schema, batches: [input] };
  if (Array.isArray(input) && input.length > 0 && input.every((b) => b instanceof RecordBatch)) return { schema: input[0]!.schema, batches: input };
  return undefined;
}

/** Whether every type under `fields` (children, dictionary values) is made by our apache-arrow. */
function ownTypes(fields: readonly Field[]): boolean {
  const own = (type: DataType): boolean =>
    type instanceof DataType && ownTypes(type.children ?? []) && (!DataType.isDictionary(type) || own(type.dictionary));
  return fields.every((f) => own(f.type));
}

/** The version and directory of the apache-arrow that `require` resolves, if it resolves. */
function arrowAt(require: NodeRequire): { version: string; dir: string } | undefined {
  try {
    const dir = path.dirname(require.resolve('apache-arrow')); // its exports map hides package.json
    return { version: (JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version: string }).version, dir };
  } catch {
    return undefined;
  }
}

/** The error for a table from another apache-arrow; names that copy as well as it can be known. */
function foreignTable(table: object) {
  const require = createRequire(import.meta.url);
  const ours = arrowAt(require);
  const at = (a: { version: string; dir: string }) => `${a.version} at ${a.dir}`;
  let theirs = 'another copy of apache-arrow';
  let cjs: { Table: unknown; RecordBatch: unknown } | undefined;
  try {
    cjs = require('apache-arrow') as typeof cjs; // the CommonJS build of our own copy: a second copy too
  } catch {
    // no CommonJS build to compare with
  }
  if (ours && cjs && (table.constructor === cjs.Table || table.constructor === cjs.RecordBatch)) {
    theirs = `the CommonJS build (require()) of apache-arrow ${ours.version}`;
  } else {
    const app = arrowAt(createRequire(path.join(process.cwd(), 'index.js')));
    theirs += app && app.dir !== ours?.dir ? ` (the app's is ${at(app)})` : ' (version unknown)';
  }
  return fail('ERR_INVALID_ARGUMENT', `this table was made by ${theirs}, not by the ES module apache-arrow that arrow-shm imports (${ours ? at(ours) : 'version unknown'}): install one copy (apache-arrow is a peer dependency of arrow-shm) and import it, or send IPC bytes (tableToIPC)`);
}

const encodedSchemas = new WeakMap<Schema, { metadata: string; flatbuffer: Uint8Array }>();

/** The schema's and its fields' metadata, as one string to compare ('' when there is none, the usual case, found without serializing). */
function metadataOf(schema: Schema): string {
  const none = (fs: readonly Field[]): boolean => fs.every((f) => f.metadata.size === 0 && none(f.type.children ?? []));
  if (schema.metadata.size === 0 && none(schema.fields)) return '';
  const fields = (fs: readonly Field[]): unknown[] => fs.map((f) => [f.metadata.size ? [...f.metadata] : 0, f.type.children?.length ? fields(f.type.children) : 0]);
  return JSON.stringify([[...schema.metadata], fields(schema.fields)]);
}

/** Plans encapsulated messages one after the other, starting at `position`. */
export class LayoutBuilder {
  readonly chunks: IpcChunk[] = [];

  constructor(public position = 0) {}

  private prefix(metadataSize: number): Uint8Array {
    return new Uint8Array(Int32Array.of(-1, metadataSize).buffer);
  }

  /** One encapsulated message: continuation, size, flatbuffer, padding, body at a 64-byte boundary. */
  message(message: Message, body: Uint8Array[], regions: BufferRegion[]): void {
    this.encoded(encodeMessage(message), body, regions, Number(message.bodyLength));
  }

  /** The same, for a flatbuffer Message already encoded. */
  private encoded(flatbuffer: Uint8Array, body: Uint8Array[], regions: BufferRegion[], bodyLength: number): void {
    const start = this.position;
    const bodyStart = align(start + 8 + flatbuffer.length);
    this.chunks.push({ offset: start, bytes: this.prefix(bodyStart - start - 8), body: false }, { offset: start + 8, bytes: flatbuffer, body: false });
    body.forEach((bytes, i) => {
      if (bytes.byteLength > 0) this.chunks.push({ offset: bodyStart + Number(regions[i]!.offset), bytes, body: true });
    });
    this.position = bodyStart + bodyLength;
  }

  schema(schema: Schema): void {
    // A sender repeats the same Schema with every table: encode it once. A Schema is immutable
    // but for its metadata Maps, which are compared to what was encoded.
    const metadata = metadataOf(schema);
    let known = encodedSchemas.get(schema);
    if (!known || known.metadata !== metadata) encodedSchemas.set(schema, (known = { metadata, flatbuffer: Message.encode(Message.from(schema)) }));
    this.encoded(known.flatbuffer, [], [], 0);
  }

  endOfStream(): void {
    this.chunks.push({ offset: this.position, bytes: this.prefix(0), body: false });
    this.position += 8;
  }
}

/** Body regions at 64-byte boundaries for the assembled buffers. */
function alignedBody(buffers: ArrayBufferView[]): { regions: BufferRegion[]; body: Uint8Array[]; bodyLength: number } {
  let offset = 0;
  const regions: BufferRegion[] = [];
  const body: Uint8Array[] = [];
  for (const b of buffers) {
    const bytes = b instanceof Uint8Array ? b : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    regions.push(new BufferRegion(offset, bytes.byteLength));
    body.push(bytes);
    offset = align(offset + bytes.byteLength);
  }
  return { regions, body, bodyLength: offset };
}

function batchMessage(data: RecordBatch | Vector, length: number, metadata?: Map<string, string>) {
  const assembled = VectorAssembler.assemble(data);
  const { regions, body, bodyLength } = alignedBody(assembled.buffers);
  const header = new RecordBatchHeader(length, assembled.nodes, regions, null, assembled.variadicBufferCounts, metadata);
  return { header, body, regions, bodyLength };
}

/**
 * Dictionary state across the batches of one stream, as the Arrow spec has it: the first batch
 * that uses a dictionary writes it whole; later batches write only new chunks as deltas, or a
 * replacement when the dictionary changed entirely.
 */
export class DictionaryTracker {
  #seen = new Map<number, { first: Data | undefined; chunks: number }>();

  /**
   * Plans the dictionary messages `batch` needs before it, as (id, isDelta, start, end). The
   * tracker only learns they were sent on `commit()`, so a write that fails can be retried.
   */
  plan(batch: RecordBatch, out: LayoutBuilder): { written: { id: number; isDelta: boolean; start: number; end: number }[]; commit: () => void } {
    const written: { id: number; isDelta: boolean; start: number; end: number }[] = [];
    const updates: [number, { first: Data | undefined; chunks: number }][] = [];
    for (const [id, dictionary] of batch.dictionaries) {
      const chunks = dictionary?.data ?? [];
      const previous = this.#seen.get(id);
      const replacing = !previous || previous.first !== chunks[0];
      const from = replacing ? 0 : previous.chunks;
      chunks.slice(from).forEach((chunk, i) => {
        const { header, body, regions, bodyLength } = batchMessage(new Vector([chunk]), chunk.length);
        const isDelta = !replacing || from + i > 0;
        const start = out.position;
        out.message(Message.from(new DictionaryBatchHeader(header, id, isDelta), bodyLength), body, regions);
        written.push({ id, isDelta, start, end: out.position });
      });
      updates.push([id, { first: chunks[0], chunks: chunks.length }]);
    }
    return { written, commit: () => updates.forEach(([id, state]) => this.#seen.set(id, state)) };
  }
}

/** Plans one RecordBatch message (without its dictionaries). */
export function writeRecordBatchMessage(batch: RecordBatch, out: LayoutBuilder): void {
  const { header, body, regions, bodyLength } = batchMessage(batch, batch.numRows, batch.metadata);
  out.message(Message.from(header, bodyLength), body, regions);
}

/** Plans the IPC stream of `input` (dictionaries as DictionaryTracker writes them). */
export function layoutIpcStream(input: TableLike): IpcLayout {
  const { schema, batches } = toBatches(input);
  const out = new LayoutBuilder();
  out.schema(schema);
  const dictionaries = new DictionaryTracker();
  for (const batch of batches) {
    dictionaries.plan(batch, out).commit();
    writeRecordBatchMessage(batch, out);
  }
  out.endOfStream();
  return { byteLength: out.position, chunks: out.chunks, schema, recordBatches: batches.length };
}

/**
 * Copies a planned stream into `target` (which must hold `layout.byteLength` bytes).
 * `zeroPadding` clears the gaps between chunks, for targets that are not freshly zeroed.
 */
export function writeIpcLayout(layout: IpcLayout, target: Uint8Array, zeroPadding = false): void {
  if (target.byteLength < layout.byteLength) {
    throw fail('ERR_TOO_LARGE', `IPC stream of ${layout.byteLength} bytes does not fit in ${target.byteLength} bytes`);
  }
  let cursor = 0;
  for (const { offset, bytes } of layout.chunks) {
    if (zeroPadding && offset > cursor) target.fill(0, cursor, offset);
    target.set(bytes, offset);
    cursor = offset + bytes.byteLength;
  }
  if (zeroPadding && layout.byteLength > cursor) target.fill(0, cursor, layout.byteLength);
}
