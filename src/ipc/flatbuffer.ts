// The flatbuffer metadata of Arrow IPC messages (Message.fbs, Schema.fbs, File.fbs): verified first,
// then read. arrow-js decodes flatbuffers without verification; JavaScript keeps that memory-safe, but a
// hostile vector length could still make it loop or allocate for a very long time. So every
// table, vector and string reachable by the decoder is checked against the buffer first, and what
// decoding would produce is added up per reference (§14.1): many offsets may share one object.
import { fail } from '../errors.js';
import { resolveIpcLimits, type IpcLimits } from './limits.js';

type FieldSpec =
  | { kind: 'scalar'; size: number }
  | { kind: 'string' }
  | { kind: 'table'; spec: () => TableSpec }
  | { kind: 'vector'; elementSize: number }
  | { kind: 'tables'; spec: () => TableSpec }
  | { kind: 'union'; typeField: number; spec: (type: number) => TableSpec | null };

type TableSpec = FieldSpec[];

const scalar = (size: number): FieldSpec => ({ kind: 'scalar', size });
const str: FieldSpec = { kind: 'string' };
const table = (spec: () => TableSpec): FieldSpec => ({ kind: 'table', spec });
const vector = (elementSize: number): FieldSpec => ({ kind: 'vector', elementSize });
const tables = (spec: () => TableSpec): FieldSpec => ({ kind: 'tables', spec });

const KeyValue: TableSpec = [str, str];
const IntType: TableSpec = [scalar(4), scalar(1)];
const DictionaryEncoding: TableSpec = [scalar(8), table(() => IntType), scalar(1), scalar(2)];
// Type tables are all scalars except Timestamp.timezone and Union.typeIds; unknown future types
// get a generic check of their vtable only (nothing in them is followed).
const ScalarOnlyType: TableSpec = [];
function typeSpec(type: number): TableSpec {
  if (type === 10) return [scalar(2), str]; // Timestamp
  if (type === 14) return [scalar(2), vector(4)]; // Union
  return ScalarOnlyType;
}
const Field: TableSpec = [
  str,
  scalar(1),
  scalar(1),
  { kind: 'union', typeField: 2, spec: typeSpec },
  table(() => DictionaryEncoding),
  tables(() => Field),
  tables(() => KeyValue),
];
const Schema: TableSpec = [scalar(2), tables(() => Field), tables(() => KeyValue), vector(8)];
const BodyCompression: TableSpec = [scalar(1), scalar(1)];
const RecordBatch: TableSpec = [scalar(8), vector(16), vector(16), table(() => BodyCompression), vector(8)];
const DictionaryBatch: TableSpec = [scalar(8), table(() => RecordBatch), scalar(1)];
function headerSpec(type: number): TableSpec | null {
  if (type === 1) return Schema;
  if (type === 2) return DictionaryBatch;
  if (type === 3) return RecordBatch;
  return null; // Tensor / SparseTensor / unknown: rejected by the caller
}
const MessageSpec: TableSpec = [scalar(2), scalar(1), { kind: 'union', typeField: 1, spec: headerSpec }, scalar(8), tables(() => KeyValue)];

/** However the limits are set, the walk itself visits at most this many tables. */
const MAX_TABLES = 1_000_000;

class Verifier {
  private readonly view: DataView;
  private tablesSeen = 0;
  private metadataBytes = 0;
  private entries = 0;
  private fields = 0;

  constructor(
    private readonly bytes: Uint8Array,
    private readonly limits: Readonly<IpcLimits>,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  private bad(what: string): never {
    throw fail('ERR_IPC_INVALID', `invalid flatbuffer metadata: ${what}`);
  }

  private over(limit: keyof IpcLimits, what: string): never {
    throw fail('ERR_IPC_LIMIT', `message metadata over ${limit} (${this.limits[limit]}): ${what}`);
  }

  /** Adds what decoding one string or vector would produce. */
  private produce(bytes: number): void {
    this.metadataBytes += bytes;
    if (this.metadataBytes > this.limits.maxMetadataBytes) this.over('maxMetadataBytes', `strings and vectors add up to more than ${this.limits.maxMetadataBytes} bytes once decoded`);
  }

  private need(pos: number, size: number, what: string): void {
    if (pos < 0 || size < 0 || pos + size > this.bytes.length) this.bad(`${what} at ${pos} (+${size}) is outside the ${this.bytes.length}-byte metadata`);
  }

  private offsetTarget(pos: number, what: string): number {
    this.need(pos, 4, what);
    const rel = this.view.getUint32(pos, true);
    const target = pos + rel;
    this.need(target, 4, what);
    return target;
  }

  root(spec: TableSpec = MessageSpec, what = 'Message'): void {
    const t = this.offsetTarget(0, 'root table offset');
    this.table(t, spec, 0, what);
  }

  private table(t: number, spec: TableSpec, depth: number, what: string): void {
    if (depth > this.limits.maxNestingDepth) this.over('maxNestingDepth', `${what} nested deeper than that`);
    if (++this.tablesSeen > MAX_TABLES) throw fail('ERR_IPC_LIMIT', `message metadata references more than ${MAX_TABLES} tables`);
    if (spec === Field && ++this.fields > this.limits.maxFields) this.over('maxFields', `more than ${this.limits.maxFields} fields`);
    if (spec === KeyValue && ++this.entries > this.limits.maxMetadataEntries) this.over('maxMetadataEntries', `more than ${this.limits.maxMetadataEntries} key/value entries`);
    this.need(t, 4, `${what} table`);
    const vt = t - this.view.getInt32(t, true);
    this.need(vt, 4, `${what} vtable`);
    const vtSize = this.view.getUint16(vt, true);
    const tableSize = this.view.getUint16(vt + 2, true);
    if (vtSize < 4 || vtSize % 2 !== 0) this.bad(`${what} vtable size ${vtSize}`);
    this.need(vt, vtSize, `${what} vtable`);
    this.need(t, tableSize, `${what} table body`);
    const fieldCount = (vtSize - 4) / 2;
    const fieldPos = (i: number): number => (i < fieldCount ? this.view.getUint16(vt + 4 + 2 * i, true) : 0);
    for (let i = 0; i < fieldCount; i++) {
      const fo = fieldPos(i);
      if (fo !== 0 && (fo < 4 || fo >= tableSize)) this.bad(`${what} field ${i} at offset ${fo} outside its ${tableSize}-byte table`);
    }
    for (let i = 0; i < spec.length; i++) {
      const fo = fieldPos(i);
      if (fo === 0) continue;
      const pos = t + fo;
      const f = spec[i]!;
      const name = `${what}.${i}`;
      switch (f.kind) {
        case 'scalar':
          if (fo + f.size > tableSize) this.bad(`${name} overruns its table`);
          break;
        case 'string':
          this.produce(this.vector(this.offsetTarget(pos, name), 1, name, 1));
          break;
        case 'table':
          this.table(this.offsetTarget(pos, name), f.spec(), depth + 1, name);
          break;
        case 'vector':
          this.produce(f.elementSize * this.vector(this.offsetTarget(pos, name), f.elementSize, name));
          break;
        case 'tables': {
          const v = this.offsetTarget(pos, name);
          const n = this.vector(v, 4, name);
          this.produce(4 * n);
          for (let k = 0; k < n; k++) this.table(this.offsetTarget(v + 4 + 4 * k, name), f.spec(), depth + 1, `${name}[${k}]`);
          break;
        }
        case 'union': {
          const tfo = fieldPos(f.typeField);
          const type = tfo === 0 ? 0 : this.view.getUint8(t + tfo);
          const sub = f.spec(type);
          if (!sub) this.bad(`${name} has unsupported union type ${type}`);
          this.table(this.offsetTarget(pos, name), sub, depth + 1, name);
          break;
        }
      }
    }
  }

  /** Checks a vector (or string, with its NUL terminator) and returns its length. */
  private vector(v: number, elementSize: number, what: string, terminator = 0): number {
    const n = this.view.getUint32(v, true);
    if (n * elementSize + terminator > this.bytes.length - v - 4) this.bad(`${what} vector of ${n} elements overruns the metadata`);
    return n;
  }
}

/**
 * Throws ERR_IPC_INVALID unless `bytes` is a well-formed flatbuffer Message of a kind we accept,
 * and ERR_IPC_LIMIT if decoding it would produce more than `limits` allow (docs/PROTOCOL.md §14.1).
 */
export function verifyMessageFlatbuffer(bytes: Uint8Array, limits?: Partial<IpcLimits>): void {
  new Verifier(bytes, resolveIpcLimits(limits)).root();
}

// The footer of an IPC *file* (File.fbs): Footer { version, schema, dictionaries: [Block],
// recordBatches: [Block], custom_metadata }, Block a 24-byte struct.
const FooterSpec: TableSpec = [scalar(2), table(() => Schema), vector(24), vector(24), tables(() => KeyValue)];

/** As verifyMessageFlatbuffer, for the flatbuffer Footer of an IPC file (its Schema included). */
export function verifyFooterFlatbuffer(bytes: Uint8Array, limits?: Partial<IpcLimits>): void {
  new Verifier(bytes, resolveIpcLimits(limits)).root(FooterSpec, 'Footer');
}

/** Reads fields of a flatbuffer the verifier above has checked: no bounds checks here, every offset
 * followed was proven to lie inside the buffer. */
export class FlatView {
  readonly view: DataView;

  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** The root table's position. */
  root(): number {
    return this.view.getUint32(0, true);
  }

  /** The position of field `i` of the table at `t`, or 0 when the field is absent. */
  field(t: number, i: number): number {
    const vt = t - this.view.getInt32(t, true);
    const vtSize = this.view.getUint16(vt, true);
    const slot = 4 + 2 * i;
    if (slot >= vtSize) return 0;
    const fo = this.view.getUint16(vt + slot, true);
    return fo === 0 ? 0 : t + fo;
  }

  u8(t: number, i: number, fallback = 0): number {
    const pos = this.field(t, i);
    return pos === 0 ? fallback : this.view.getUint8(pos);
  }

  i16(t: number, i: number, fallback = 0): number {
    const pos = this.field(t, i);
    return pos === 0 ? fallback : this.view.getInt16(pos, true);
  }

  i64(t: number, i: number): bigint {
    const pos = this.field(t, i);
    return pos === 0 ? 0n : this.view.getBigInt64(pos, true);
  }

  /** The table that field `i` points to, or 0. */
  table(t: number, i: number): number {
    const pos = this.field(t, i);
    return pos === 0 ? 0 : pos + this.view.getUint32(pos, true);
  }

  /** The vector that field `i` points to: the position of its first element and its length. */
  vector(t: number, i: number): { start: number; length: number } {
    const pos = this.field(t, i);
    if (pos === 0) return { start: 0, length: 0 };
    const v = pos + this.view.getUint32(pos, true);
    return { start: v + 4, length: this.view.getUint32(v, true) };
  }

  /** Element `k` of a vector of tables. */
  tableAt(start: number, k: number): number {
    const pos = start + 4 * k;
    return pos + this.view.getUint32(pos, true);
  }

  /** The string field `i` points to (invalid UTF-8 replaced, as apache-arrow decodes it), or null. */
  string(t: number, i: number): string | null {
    const pos = this.field(t, i);
    if (pos === 0) return null;
    const s = pos + this.view.getUint32(pos, true);
    return utf8.decode(this.bytes.subarray(s + 4, s + 4 + this.view.getUint32(s, true)));
  }
}

const utf8 = new TextDecoder();
