// Decodes the batches of a stream one record at a time, in place: the prologue gives the schema
// and the dictionaries so far; each record adds dictionaries (whole or deltas) and one batch.
import { Data, RecordBatch, Struct, makeData, type DataType, type Schema } from 'apache-arrow';
import { VectorLoader } from 'apache-arrow/visitor/vectorloader';
import { fail } from '../errors.js';
import { IpcDecoder, classify } from '../ipc/reader.js';
import { IpcMessageChecker, walkIpcMessages } from '../ipc/messages.js';
import type { SchemaLayout } from '../ipc/layout.js';
import type { IpcLimits } from '../ipc/limits.js';
import { columnKind } from './encoder.js';

export class BatchDecoder {
  readonly schema: Schema;
  #decoder = new IpcDecoder();
  /** Knows the schema from the prologue: every record's batches are checked against it. */
  #checker: IpcMessageChecker;
  /** The fast path for records of one plain RecordBatch message; null when the schema has none. */
  #plan: DecodePlan | null;

  /** `prologue`: a Schema message then DictionaryBatch messages (PROTOCOL.md §12.1). `plan`: @internal false for tests comparing with the generic walk. */
  constructor(prologue: Uint8Array, limits?: Partial<IpcLimits>, plan = true) {
    this.#checker = new IpcMessageChecker(limits);
    walkIpcMessages(prologue, 'stream', (m) => {
      if (this.#decoder.load(m, prologue.subarray(m.bodyStart, m.bodyStart + m.bodyLength))) throw fail('ERR_IPC_INVALID', 'a stream prologue holds a record batch');
    }, this.#checker);
    this.schema = this.#decoder.schema;
    this.#plan = plan ? DecodePlan.for(this.schema, this.#checker.schema!.layout, this.#checker.limits) : null;
  }

  /** The record batch of one record's messages (§12.2); its column buffers are views of `bytes`, dictionaries are copied. */
  decode(bytes: Uint8Array): RecordBatch {
    return this.#plan?.decode(bytes) ?? this.#decodeMessages(bytes);
  }

  /** Every record the plan does not take: walked, verified and loaded message by message. */
  #decodeMessages(bytes: Uint8Array): RecordBatch {
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

const CONTINUATION = 0xffff_ffff;
const HEADER_RECORD_BATCH = 3;
const METADATA_V4 = 3;
const NO_DICTIONARIES = new Map();

/**
 * A per-stream decode plan: the layout every batch must have was checked once from the schema
 * (ipc/layout.ts), so a record holding exactly one RecordBatch message — no dictionaries, no
 * compression, no custom metadata, no variadic counts — is read here with bounds checks on every
 * offset, the counts compared with the plan, and its Data made over the ring bytes (directly for
 * flat columns, by arrow-js's VectorLoader for others). Anything else, or anything these checks
 * doubt, goes back (null) to the generic walk,
 * which accepts what it accepts and reports errors with its own words: so the plan never accepts
 * what the walk would refuse, and refuses nothing itself.
 */
class DecodePlan {
  readonly #schema: Schema;
  readonly #types: DataType[];
  readonly #struct: Struct;
  readonly #nodes: number;
  readonly #buffers: number;
  /** A RecordBatch can be made without the constructor's per-batch Schema copy (see fastBatch). */
  readonly #fastBatch: boolean;
  /** The last record's field nodes and buffer regions, as pairs of numbers (reused from record to record). */
  readonly #fieldNodes: number[] = [];
  readonly #regions: number[] = [];
  #view: DataView | null = null;
  /** Every column is flat (encoder.ts): its Data is made here rather than by VectorLoader. */
  readonly #kinds: ('bool' | 'flat' | 'variable')[] | null;

  static for(schema: Schema, layout: SchemaLayout, limits: Readonly<IpcLimits>): DecodePlan | null {
    const { batch } = layout;
    if (layout.dictionaries.size > 0 || batch.views > 0 || batch.unknownType !== null) return null;
    // What the flatbuffer verifier counts for a batch's two vectors, and the one nested table.
    if (16 * (batch.nodes + batch.buffers) > limits.maxMetadataBytes || limits.maxNestingDepth < 1) return null;
    return new DecodePlan(schema, batch.nodes, batch.buffers);
  }

  private constructor(schema: Schema, nodes: number, buffers: number) {
    this.#schema = schema;
    this.#types = schema.fields.map((f) => f.type);
    this.#struct = new Struct(schema.fields);
    this.#nodes = nodes;
    this.#buffers = buffers;
    const probe = new RecordBatch(schema, makeData({ type: this.#struct, length: 0, nullCount: 0, children: this.#types.map((type) => makeData({ type, length: 0, nullCount: 0 })) }));
    const keys = Object.keys(probe);
    const kinds = this.#types.map(columnKind);
    this.#kinds = kinds.every((k) => k !== null) ? (kinds as ('bool' | 'flat' | 'variable')[]) : null;
    this.#fastBatch = keys.length === 3 && keys[0] === 'schema' && keys[1] === 'data' && keys[2] === '_metadata' && probe.metadata instanceof Map;
  }

  #viewOf(buffer: ArrayBufferLike): DataView {
    if (this.#view?.buffer !== buffer) this.#view = new DataView(buffer);
    return this.#view;
  }

  /** Flat columns: each one node, and validity, (offsets,) values. */
  #flatColumns(body: Uint8Array): Data[] {
    const kinds = this.#kinds!;
    const columns = new Array<Data>(kinds.length);
    for (let i = 0, at = 0; i < kinds.length; i++) {
      columns[i] = flatColumn(this.#types[i]!, kinds[i]!, body, this.#fieldNodes[2 * i]!, this.#fieldNodes[2 * i + 1]!, this.#regions, at);
      at += kinds[i] === 'variable' ? 3 : 2;
    }
    return columns;
  }

  #loadColumns(body: Uint8Array): Data[] {
    const pairs = (values: number[], n: number) => Array.from({ length: n }, (_, k) => [values[2 * k]!, values[2 * k + 1]!] as const);
    const nodes = pairs(this.#fieldNodes, this.#nodes).map(([length, nullCount]) => ({ length, nullCount }));
    const regions = pairs(this.#regions, this.#buffers).map(([offset, length]) => ({ offset, length }));
    return new VectorLoader(body, nodes as never, regions as never, NO_DICTIONARIES, this.#schema.metadataVersion).visitMany(this.#types);
  }

  decode(bytes: Uint8Array): RecordBatch | null {
    const len = bytes.length;
    if (len < 8) return null;
    // Positions below are in the whole buffer (one DataView per ring, not one per record).
    const v = this.#viewOf(bytes.buffer);
    const start = bytes.byteOffset;
    if (v.getUint32(start, true) !== CONTINUATION) return null;
    const size = v.getInt32(start + 4, true);
    if (size <= 0 || size > len - 8) return null;
    const m = start + 8;
    const e = m + size;
    // Message: version 0, header_type 1, header 2, bodyLength 3, custom_metadata 4.
    const message = table(v, m, e, target(v, e, m));
    if (message < 0) return null;
    const type = field(v, message, 1, 1);
    if (type <= 0 || v.getUint8(type) !== HEADER_RECORD_BATCH || field(v, message, 4, 4) !== 0) return null;
    // arrow-js reads buffer regions of metadata before V4 (the default when absent) at other places.
    const version = field(v, message, 0, 2);
    if (version <= 0 || v.getInt16(version, true) < METADATA_V4) return null;
    const header = field(v, message, 2, 4);
    const batch = header > 0 ? table(v, m, e, target(v, e, header)) : -1;
    const bodyLength = i64(v, field(v, message, 3, 8));
    if (batch < 0 || bodyLength < 0) return null;
    // RecordBatch: length 0, nodes 1, buffers 2, compression 3, variadicBufferCounts 4.
    if (field(v, batch, 3, 4) !== 0 || field(v, batch, 4, 4) !== 0) return null;
    const length = i64(v, field(v, batch, 0, 8));
    const nodes = structs(v, e, field(v, batch, 1, 4), this.#nodes);
    const buffers = structs(v, e, field(v, batch, 2, 4), this.#buffers);
    const bodyStart = e - start;
    if (length < 0 || nodes < 0 || buffers < 0 || bodyLength !== len - bodyStart) return null;
    // Field nodes (length, null count) and buffer regions (offset, length), pairwise.
    const fieldNodes = this.#fieldNodes;
    for (let k = 0; k < this.#nodes; k++) {
      const n = i64(v, nodes + 16 * k);
      const nullCount = i64(v, nodes + 16 * k + 8);
      if (n < 0 || nullCount < 0 || nullCount > n) return null;
      fieldNodes[2 * k] = n;
      fieldNodes[2 * k + 1] = nullCount;
    }
    const regions = this.#regions;
    for (let k = 0; k < this.#buffers; k++) {
      const offset = i64(v, buffers + 16 * k);
      const n = i64(v, buffers + 16 * k + 8);
      if (offset < 0 || n < 0 || offset + n > bodyLength) return null;
      regions[2 * k] = offset;
      regions[2 * k + 1] = n;
    }
    const body = bytes.subarray(bodyStart);
    let children: Data[];
    try {
      children = this.#kinds ? this.#flatColumns(body) : this.#loadColumns(body);
    } catch (error) {
      throw classify(error);
    }
    // Columns shorter or longer than the batch: the generic walk's RecordBatch backfills or fails.
    if (children.some((c) => c.length !== length)) return null;
    const data = new Data(this.#struct, 0, length, 0, [undefined, undefined, new Uint8Array(0)], children) as Data<Struct>;
    return this.#fastBatch ? fastBatch(this.#schema, data) : new RecordBatch(this.#schema, data);
  }
}

/**
 * What VectorLoader + makeData make of flat columns (the same views of the body, the same
 * errors for misaligned or ragged buffers), without their visitor dispatch per column.
 */
function flatColumn(type: DataType, kind: 'bool' | 'flat' | 'variable', body: Uint8Array, length: number, nullCount: number, regions: number[], at: number): Data {
  const nullBitmap = nullCount > 0 ? new Uint8Array(body.buffer, body.byteOffset + regions[2 * at]!, regions[2 * at + 1]!) : new Uint8Array(0);
  let valueOffsets: Int32Array | BigInt64Array | undefined;
  if (kind === 'variable') valueOffsets = view(type.OffsetArrayType as ArrayCtor, body, regions, ++at) as Int32Array | BigInt64Array;
  const values = view(kind === 'variable' ? Uint8Array : (type.ArrayType as ArrayCtor), body, regions, at + 1);
  return new Data(type, 0, length, nullCount, [valueOffsets, values, nullBitmap]);
}

type ArrayCtor = { new (buffer: ArrayBufferLike, byteOffset: number, length: number): ArrayBufferView; new (length: number): ArrayBufferView; BYTES_PER_ELEMENT: number };

/** toArrayBufferView of apache-arrow over region `k` of the body. */
function view(ctor: ArrayCtor, body: Uint8Array, regions: number[], k: number): ArrayBufferView {
  const length = regions[2 * k + 1]!;
  if (length <= 0) return new ctor(0);
  return new ctor(body.buffer, body.byteOffset + regions[2 * k]!, length / ctor.BYTES_PER_ELEMENT);
}

/**
 * What `new RecordBatch(schema, data)` makes when every column has the batch's length, without
 * its copy of the Schema per batch (the plan checked once that a RecordBatch is exactly these
 * three own properties in this apache-arrow).
 */
function fastBatch(schema: Schema, data: Data<Struct>): RecordBatch {
  const batch = Object.create(RecordBatch.prototype) as { schema: Schema; data: Data<Struct>; _metadata: Map<string, string> };
  batch.schema = schema;
  batch.data = data;
  batch._metadata = new Map();
  return batch as unknown as RecordBatch;
}

// Flatbuffer reads for the plan, each checked against the metadata [m, e); -1 when out of bounds.

/** The position a uoffset at `pos` points to. */
function target(v: DataView, e: number, pos: number): number {
  if (pos < 0 || pos + 4 > e) return -1;
  const t = pos + v.getUint32(pos, true);
  return t + 4 <= e ? t : -1;
}

/** The table at `t` if its vtable and every field offset lie inside it and the metadata. */
function table(v: DataView, m: number, e: number, t: number): number {
  if (t < m || t + 4 > e) return -1;
  const vt = t - v.getInt32(t, true);
  if (vt < m || vt + 4 > e) return -1;
  const vtSize = v.getUint16(vt, true);
  const tableSize = v.getUint16(vt + 2, true);
  if (vtSize < 4 || vtSize % 2 !== 0 || vt + vtSize > e || t + tableSize > e) return -1;
  for (let p = vt + 4; p < vt + vtSize; p += 2) {
    const fo = v.getUint16(p, true);
    if (fo !== 0 && (fo < 4 || fo >= tableSize)) return -1;
  }
  return t;
}

/** The position of field `i` (of `size` bytes) of a checked table: 0 when absent, -1 when it overruns the table. */
function field(v: DataView, t: number, i: number, size: number): number {
  const vt = t - v.getInt32(t, true);
  const slot = 4 + 2 * i;
  if (slot >= v.getUint16(vt, true)) return 0;
  const fo = v.getUint16(vt + slot, true);
  if (fo === 0) return 0;
  return fo + size > v.getUint16(vt + 2, true) ? -1 : t + fo;
}

/** An i64 field (0 when absent) as a safe integer; -1 when negative, too large or out of bounds. */
function i64(v: DataView, pos: number): number {
  if (pos === 0) return 0;
  if (pos < 0) return -1;
  const high = v.getInt32(pos + 4, true);
  if (high < 0 || high >= 0x20_0000) return -1;
  return high * 0x1_0000_0000 + v.getUint32(pos, true);
}

/** The first element of the vector of `count` 16-byte structs the uoffset field at `pos` points to; -1 unless it has exactly that many and they fit. */
function structs(v: DataView, e: number, pos: number, count: number): number {
  if (pos === 0) return count === 0 ? 0 : -1;
  const at = target(v, e, pos);
  if (at < 0 || v.getUint32(at, true) !== count || 16 * count > e - at - 4) return -1;
  return at + 4;
}
