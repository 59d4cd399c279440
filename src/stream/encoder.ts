// A stream's per-schema RecordBatch writer (docs/PROTOCOL.md §12.2): the schema is fixed for the
// life of a stream, so the flatbuffer Message is a template laid out once, and each batch only
// patches its length, field nodes and buffer regions, writing message and body straight into the
// ring slot. Bytes on the wire are the same encapsulated message as the generic writer's
// (ipc/writer.ts: continuation, size, flatbuffer, zero padding, body buffers at 64-byte
// boundaries); only the flatbuffer's internal layout differs, and any flatbuffer reader accepts it.
// Schemas or batches outside the flat types below (nested, dictionary, view, sliced, with batch
// metadata) return -1 from `measure`: the producer then uses the generic writer.
import { DataType, Type, type Data, type RecordBatch, type Schema } from 'apache-arrow';

/** Types whose body is validity + values: `values` already starts at the Data's first element. */
const FLAT = new Set<Type>([Type.Int, Type.Float, Type.Date, Type.Time, Type.Timestamp, Type.Duration, Type.Decimal, Type.FixedSizeBinary]);
/** Types whose body is validity + offsets + values. */
const VARIABLE = new Set<Type>([Type.Binary, Type.Utf8, Type.LargeBinary, Type.LargeUtf8]);

const METADATA_V5 = 4;
const HEADER_RECORD_BATCH = 3;
const ALIGN = 64;
const align = (n: number): number => Math.ceil(n / ALIGN) * ALIGN;
const EMPTY = new Uint8Array(0);

// The template's fixed offsets (inside the flatbuffer; every i64 8-byte aligned, structs too):
// 0 root → Message table at 24 (vtable at 8), RecordBatch table at 64 (vtable at 48),
// nodes vector length at 92 (elements at 96), buffers vector length at NODES + 16·n + 4.
const MESSAGE_TABLE = 24;
const BATCH_TABLE = 64;
const NODES = 96;
const BODY_LENGTH_AT = MESSAGE_TABLE + 8;
const LENGTH_AT = BATCH_TABLE + 8;

function setI64(view: DataView, at: number, value: number): void {
  view.setUint32(at, value >>> 0, true);
  view.setUint32(at + 4, Math.floor(value / 0x1_0000_0000), true);
}

/** The Message flatbuffer of a batch with `nodes` field nodes and `buffers` buffers, values zero. */
function messageTemplate(nodes: number, buffers: number): Uint8Array {
  const buffersAt = NODES + 16 * nodes; // 8-aligned: the vector's length sits just before it, at +4
  const bytes = new Uint8Array(buffersAt + 8 + 16 * buffers);
  const v = new DataView(bytes.buffer);
  v.setUint32(0, MESSAGE_TABLE, true);
  // Message vtable: size, table size, then field offsets: version, header_type, header, bodyLength.
  [12, 24, 16, 18, 4, 8].forEach((x, i) => v.setUint16(8 + 2 * i, x, true));
  v.setInt32(MESSAGE_TABLE, MESSAGE_TABLE - 8, true);
  v.setUint32(MESSAGE_TABLE + 4, BATCH_TABLE - (MESSAGE_TABLE + 4), true);
  v.setInt16(MESSAGE_TABLE + 16, METADATA_V5, true);
  v.setUint8(MESSAGE_TABLE + 18, HEADER_RECORD_BATCH);
  // RecordBatch vtable: length, nodes, buffers.
  [10, 24, 8, 4, 16].forEach((x, i) => v.setUint16(48 + 2 * i, x, true));
  v.setInt32(BATCH_TABLE, BATCH_TABLE - 48, true);
  v.setUint32(BATCH_TABLE + 4, NODES - 4 - (BATCH_TABLE + 4), true);
  v.setUint32(BATCH_TABLE + 16, buffersAt + 4 - (BATCH_TABLE + 16), true);
  v.setUint32(NODES - 4, nodes, true);
  v.setUint32(buffersAt + 4, buffers, true);
  return bytes;
}

/** How a top-level column of `type` is laid out, for the types the stream codecs handle themselves (null: others). */
export function columnKind(type: DataType): 'bool' | 'flat' | 'variable' | null {
  if (DataType.isDictionary(type)) return null;
  if (type.typeId === Type.Bool) return 'bool';
  if (FLAT.has(type.typeId)) return 'flat';
  return VARIABLE.has(type.typeId) ? 'variable' : null;
}

export class BatchEncoder {
  readonly #fields: number;
  readonly #template: Uint8Array;
  readonly #buffersAt: number;
  /** The batch `measure` planned: its field nodes and body buffers, reused from batch to batch. */
  #length = 0;
  #nodes: number[] = [];
  #buffers: Uint8Array[] = [];
  #bodyLength = 0;
  #bodyStart = 0;

  /** null when the schema has a type this encoder does not write. */
  static for(schema: Schema): BatchEncoder | null {
    return schema.fields.every((f) => columnKind(f.type) !== null) ? new BatchEncoder(schema) : null;
  }

  private constructor(schema: Schema) {
    this.#fields = schema.fields.length;
    const buffers = schema.fields.reduce((n, f) => n + (VARIABLE.has(f.type.typeId) ? 3 : 2), 0);
    this.#template = messageTemplate(this.#fields, buffers);
    this.#buffersAt = NODES + 16 * this.#fields + 8;
    // The message prefix (continuation, size) and the flatbuffer end at a 64-byte boundary.
    this.#bodyStart = align(8 + this.#template.byteLength);
  }

  /**
   * Plans `batch`; returns the bytes of its encapsulated RecordBatch message, or -1 when the
   * generic writer must write it (a sliced column, batch metadata, a length over 2^31 − 1).
   */
  measure(batch: RecordBatch): number {
    const children = batch.data.children;
    const metadata = (batch as { metadata?: Map<string, string> }).metadata;
    if (children.length !== this.#fields || (metadata && metadata.size > 0) || batch.numRows > 0x7fff_ffff) return -1;
    const nodes = this.#nodes;
    const buffers = this.#buffers;
    nodes.length = 0;
    buffers.length = 0;
    for (const d of children) if (!this.#plan(d as Data, nodes, buffers)) return -1;
    let body = 0;
    for (const b of buffers) body = align(body + b.byteLength);
    this.#length = batch.numRows;
    this.#bodyLength = body;
    return this.#bodyStart + body;
  }

  /** What VectorAssembler would emit for one unsliced flat column (ipc/writer.ts lays it out the same). */
  #plan(d: Data, nodes: number[], buffers: Uint8Array[]): boolean {
    const { length, typeId } = d;
    if (d.offset !== 0) return false;
    const nullCount = d.nullCount;
    nodes.push(length, nullCount);
    if (nullCount > 0 && !d.nullBitmap) return false;
    buffers.push(nullCount <= 0 ? EMPTY : d.nullBitmap!);
    const values = d.values as ArrayBufferView | undefined;
    if (typeId === Type.Bool) {
      if (nullCount >= length) buffers.push(new Uint8Array((length + 7) >> 3));
      else if (values instanceof Uint8Array) buffers.push(values);
      else return false;
    } else if (FLAT.has(typeId)) {
      if (!values) return false;
      buffers.push(bytesOf(values, length * d.stride));
    } else {
      const offsets = d.valueOffsets as Int32Array | BigInt64Array | undefined;
      if (!offsets || !values || Number(offsets[0]) !== 0) return false;
      const end = Math.min(Number(offsets[length]), values.byteLength);
      buffers.push(bytesOf(offsets, length + 1), bytesOf(values, end));
    }
    return true;
  }

  /** Writes the message `measure` planned at `at` in `target` (its bytes `view`), padding zeroed. */
  write(target: Uint8Array, view: DataView, at: number): void {
    const template = this.#template;
    view.setUint32(at, 0xffff_ffff, true);
    view.setInt32(at + 4, this.#bodyStart - 8, true);
    target.set(template, at + 8);
    const fb = at + 8;
    target.fill(0, fb + template.byteLength, at + this.#bodyStart);
    setI64(view, fb + BODY_LENGTH_AT, this.#bodyLength);
    setI64(view, fb + LENGTH_AT, this.#length);
    const nodes = this.#nodes;
    for (let i = 0; i < nodes.length; i++) setI64(view, fb + NODES + 8 * i, nodes[i]!);
    const body = at + this.#bodyStart;
    let offset = 0;
    let region = fb + this.#buffersAt;
    for (const b of this.#buffers) {
      setI64(view, region, offset);
      setI64(view, region + 8, b.byteLength);
      region += 16;
      target.set(b, body + offset);
      const end = offset + b.byteLength;
      offset = align(end);
      target.fill(0, body + end, body + offset);
    }
  }
}

/** The first `elements` elements of a typed array, as bytes. */
function bytesOf(values: ArrayBufferView & { BYTES_PER_ELEMENT?: number }, elements: number): Uint8Array {
  const size = values.BYTES_PER_ELEMENT ?? 1;
  return new Uint8Array(values.buffer, values.byteOffset, Math.min(elements * size, values.byteLength));
}
