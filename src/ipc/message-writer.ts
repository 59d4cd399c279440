// The flatbuffer Message of a record batch or dictionary batch (Message.fbs), written straight into
// one buffer. A sender writes one per batch on every hand-off, mostly with cold caches (hand-offs
// are spaced); apache-arrow's generic flatbuffers Builder runs several times more code for it.
// Schema messages, encoded once per schema, still go through apache-arrow.
import { MessageHeader, MetadataVersion } from 'apache-arrow';
import { Message, type DictionaryBatch, type RecordBatch as RecordBatchHeader } from 'apache-arrow/ipc/metadata/message';

const encoder = new TextEncoder();

/**
 * Writes front to back: every table after its vtable, every child after the table that points to
 * it (flatbuffer offsets point forward), each scalar aligned to its size from the buffer's start.
 */
class FlatWriter {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  pos = 0;

  constructor(capacity: number) {
    this.bytes = new Uint8Array(capacity);
    this.view = new DataView(this.bytes.buffer);
  }

  align(n: number, remainder = 0): void {
    while (this.pos % n !== remainder) this.pos++;
  }

  /** A vtable for a table of `size` bytes with fields at `offsets` (0 = absent), then the table (8-aligned); returns the table's position. */
  table(size: number, offsets: number[]): number {
    this.align(2);
    const vt = this.pos;
    this.view.setUint16(vt, 4 + 2 * offsets.length, true);
    this.view.setUint16(vt + 2, size, true);
    for (let i = 0; i < offsets.length; i++) this.view.setUint16(vt + 4 + 2 * i, offsets[i]!, true);
    this.pos = vt + 4 + 2 * offsets.length;
    this.align(8);
    const t = this.pos;
    this.view.setInt32(t, t - vt, true);
    this.pos = t + size;
    return t;
  }

  /** Points the offset field at `from` to `to` (by default, what is written next). */
  link(from: number, to = this.pos): void {
    this.view.setUint32(from, to - from, true);
  }

  /** An i64 that is a safe integer (lengths, offsets, counts): no BigInt unless it is negative. */
  i64(pos: number, x: number): void {
    if (x < 0) this.view.setBigInt64(pos, BigInt(x), true);
    else {
      this.view.setUint32(pos, x % 2 ** 32, true);
      this.view.setUint32(pos + 4, Math.floor(x / 2 ** 32), true);
    }
  }

  /** A vector of i64 (`width` 1), or of structs of `width` i64 (FieldNode, Buffer: 2): elements 8-aligned. */
  longs(from: number, values: readonly number[], width = 1): void {
    this.align(8, 4);
    this.link(from);
    this.view.setUint32(this.pos, values.length / width, true);
    this.pos += 4;
    for (const x of values) {
      this.i64(this.pos, x);
      this.pos += 8;
    }
  }

  string(from: number, bytes: Uint8Array): void {
    this.align(4);
    this.link(from);
    this.view.setUint32(this.pos, bytes.length, true);
    this.bytes.set(bytes, this.pos + 4);
    this.pos += 4 + bytes.length + 1; // NUL terminated
  }
}

// Table layouts: field offsets inside each table, i64 fields at offset 8 (tables are 8-aligned).
// Message: version 0, header_type 1, header 2, bodyLength 3, custom_metadata 4.
const MESSAGE = { size: 24, header: 4, bodyLength: 8, version: 16, headerType: 18, metadata: 20 };
// RecordBatch: length 0, nodes 1, buffers 2, compression 3, variadicBufferCounts 4.
const RECORD_BATCH = { size: 32, nodes: 4, length: 8, buffers: 16, compression: 20, variadic: 24 };
// BodyCompression: codec 0, method 1 (both int8).
const BODY_COMPRESSION = { size: 8, codec: 4, method: 5 };
// DictionaryBatch: id 0, data 1, isDelta 2.
const DICTIONARY_BATCH = { size: 24, data: 4, id: 8, isDelta: 16 };
// KeyValue: key 0, value 1.
const KEY_VALUE = { size: 12, key: 4, value: 8 };

function recordBatch(w: FlatWriter, from: number, header: RecordBatchHeader): void {
  const variadic = header.variadicBufferCounts ?? [];
  const compression = header.compression;
  const t = w.table(RECORD_BATCH.size, [RECORD_BATCH.length, RECORD_BATCH.nodes, RECORD_BATCH.buffers, compression ? RECORD_BATCH.compression : 0, variadic.length > 0 ? RECORD_BATCH.variadic : 0]);
  w.link(from, t);
  w.i64(t + RECORD_BATCH.length, Number(header.length));
  if (compression) {
    const c = w.table(BODY_COMPRESSION.size, [BODY_COMPRESSION.codec, BODY_COMPRESSION.method]);
    w.link(t + RECORD_BATCH.compression, c);
    w.view.setInt8(c + BODY_COMPRESSION.codec, compression.type);
    w.view.setInt8(c + BODY_COMPRESSION.method, compression.method);
  }
  w.longs(t + RECORD_BATCH.nodes, header.nodes.flatMap((n) => [Number(n.length), Number(n.nullCount)]), 2);
  w.longs(t + RECORD_BATCH.buffers, header.buffers.flatMap((b) => [Number(b.offset), Number(b.length)]), 2);
  if (variadic.length > 0) w.longs(t + RECORD_BATCH.variadic, variadic.map(Number));
}

/** Bytes the message needs at most, padding included. */
function capacity(header: RecordBatchHeader, metadata: [Uint8Array, Uint8Array][]): number {
  const tables = 4 * 64; // vtables and tables of Message, (DictionaryBatch,) RecordBatch, (BodyCompression,) with alignment
  const vectors = 3 * 16 + 16 * (header.nodes.length + header.buffers.length) + 8 * (header.variadicBufferCounts?.length ?? 0);
  return tables + vectors + metadata.reduce((n, [k, v]) => n + 64 + k.length + v.length, 8);
}

/** The flatbuffer of a RecordBatch or DictionaryBatch `message`; a Schema message through apache-arrow. */
export function encodeMessage(message: Message): Uint8Array {
  const type = message.headerType;
  if (type !== MessageHeader.RecordBatch && type !== MessageHeader.DictionaryBatch) return Message.encode(message);
  const dictionary = type === MessageHeader.DictionaryBatch ? (message.header() as DictionaryBatch) : null;
  const batch = dictionary ? dictionary.data : (message.header() as RecordBatchHeader);
  const metadata = [...(message.metadata ?? new Map<string, string>())].map(([k, v]) => [encoder.encode(`${k}`), encoder.encode(`${v}`)] as [Uint8Array, Uint8Array]);
  const w = new FlatWriter(capacity(batch, metadata));
  w.pos = 4; // the root offset
  const m = w.table(MESSAGE.size, [MESSAGE.version, MESSAGE.headerType, MESSAGE.header, MESSAGE.bodyLength, metadata.length > 0 ? MESSAGE.metadata : 0]);
  w.link(0, m);
  w.view.setInt16(m + MESSAGE.version, MetadataVersion.V5, true);
  w.view.setUint8(m + MESSAGE.headerType, type);
  w.i64(m + MESSAGE.bodyLength, Number(message.bodyLength));
  if (dictionary) {
    const d = w.table(DICTIONARY_BATCH.size, [DICTIONARY_BATCH.id, DICTIONARY_BATCH.data, DICTIONARY_BATCH.isDelta]);
    w.link(m + MESSAGE.header, d);
    w.i64(d + DICTIONARY_BATCH.id, Number(dictionary.id));
    w.view.setUint8(d + DICTIONARY_BATCH.isDelta, dictionary.isDelta ? 1 : 0);
    recordBatch(w, d + DICTIONARY_BATCH.data, batch);
  } else {
    recordBatch(w, m + MESSAGE.header, batch);
  }
  if (metadata.length > 0) {
    w.align(4);
    w.link(m + MESSAGE.metadata);
    const vector = w.pos;
    w.view.setUint32(vector, metadata.length, true);
    w.pos += 4 + 4 * metadata.length;
    metadata.forEach(([key, value], i) => {
      const kv = w.table(KEY_VALUE.size, [KEY_VALUE.key, KEY_VALUE.value]);
      w.link(vector + 4 + 4 * i, kv);
      w.string(kv + KEY_VALUE.key, key);
      w.string(kv + KEY_VALUE.value, value);
    });
  }
  w.align(8);
  return w.bytes.subarray(0, w.pos);
}
