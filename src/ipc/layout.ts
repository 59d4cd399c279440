// The number of field nodes, buffers and variadic buffer counts a record batch must declare,
// fixed by its schema (docs/PROTOCOL.md §14.1). Read from the verified flatbuffers, not from
// arrow-js's decoded schema, so a type arrow-js cannot decode is still counted.
import { fail } from '../errors.js';
import { FlatView } from './flatbuffer.js';

export interface BatchLayout {
  nodes: number;
  /** Buffers before the variadic ones of view types. */
  buffers: number;
  /** BinaryView/Utf8View fields: each has one entry in variadicBufferCounts. */
  views: number;
  /** A Schema.fbs type id this side does not know, if any field has one. */
  unknownType: number | null;
}

export interface SchemaLayout {
  /** Of a RecordBatch. */
  batch: BatchLayout;
  /** Of each dictionary's DictionaryBatch, by dictionary id. */
  dictionaries: Map<bigint, BatchLayout>;
}

const METADATA_V5 = 4;
const LAST_KNOWN_TYPE = 26; // LargeListView
const DENSE_UNION = 1;

// Field (Schema.fbs): name 0, nullable 1, type_type 2, type 3, dictionary 4, children 5.
const FIELD_TYPE_TYPE = 2;
const FIELD_TYPE = 3;
const FIELD_DICTIONARY = 4;
const FIELD_CHILDREN = 5;

/** Buffers of one field's own layout (children not included), by Schema.fbs type id. */
function ownBuffers(fb: FlatView, type: number, typeTable: number, version: number): number {
  switch (type) {
    case 1: // Null
    case 22: // RunEndEncoded
      return 0;
    case 13: // Struct_
    case 16: // FixedSizeList
      return 1;
    case 14: {
      // Union: type ids (+ offsets when dense), plus the validity bitmap of metadata V4 and earlier.
      const dense = typeTable !== 0 && fb.i16(typeTable, 0) === DENSE_UNION;
      return (dense ? 2 : 1) + (version < METADATA_V5 ? 1 : 0);
    }
    case 4: // Binary
    case 5: // Utf8
    case 19: // LargeBinary
    case 20: // LargeUtf8
    case 25: // ListView
    case 26: // LargeListView
      return 3;
    default: // fixed width, List, LargeList, Map, and the views before their variadic buffers
      return 2;
  }
}

class LayoutCounter {
  readonly pending = new Map<bigint, number>();

  constructor(
    private readonly fb: FlatView,
    private readonly version: number,
  ) {}

  /** Adds field `f` (and its children) as laid out in a batch; `asIndex`: a dictionary-encoded field counts as its indices. */
  add(f: number, into: BatchLayout, asIndex: boolean): void {
    const { fb } = this;
    const dictionary = fb.table(f, FIELD_DICTIONARY);
    into.nodes++;
    if (dictionary !== 0 && asIndex) {
      into.buffers += 2;
      const id = fb.i64(dictionary, 0);
      if (!this.pending.has(id)) this.pending.set(id, f);
      return;
    }
    const type = fb.u8(f, FIELD_TYPE_TYPE);
    if (type === 0) throw fail('ERR_IPC_INVALID', 'a schema field has no type');
    if (type > LAST_KNOWN_TYPE) into.unknownType ??= type;
    if (type === 23 || type === 24) into.views++;
    into.buffers += ownBuffers(fb, type, fb.table(f, FIELD_TYPE), this.version);
    const children = fb.vector(f, FIELD_CHILDREN);
    for (let k = 0; k < children.length; k++) this.add(fb.tableAt(children.start, k), into, true);
  }
}

const emptyLayout = (): BatchLayout => ({ nodes: 0, buffers: 0, views: 0, unknownType: null });

/** The layout of every batch of a stream, from its verified Schema message (`schema` = the Schema table). */
export function schemaLayout(fb: FlatView, schema: number, version: number): SchemaLayout {
  const counter = new LayoutCounter(fb, version);
  const batch = emptyLayout();
  const fields = fb.vector(schema, 1);
  for (let k = 0; k < fields.length; k++) counter.add(fb.tableAt(fields.start, k), batch, true);
  // A dictionary's value type may itself hold dictionary-encoded fields: lay out until none is new.
  const dictionaries = new Map<bigint, BatchLayout>();
  for (const [id, field] of counter.pending) {
    if (dictionaries.has(id)) continue;
    const layout = emptyLayout();
    dictionaries.set(id, layout);
    counter.add(field, layout, false);
  }
  return { batch, dictionaries };
}

/** Checks the counts of a verified RecordBatch table against `layout`, before anything walks them. */
export function checkBatchCounts(fb: FlatView, recordBatch: number, layout: BatchLayout, what: string): void {
  if (layout.unknownType !== null) throw fail('ERR_IPC_UNSUPPORTED', `${what}: the schema has a field of type ${layout.unknownType}, unknown to this side`);
  const nodes = fb.vector(recordBatch, 1).length;
  if (nodes !== layout.nodes) throw fail('ERR_IPC_INVALID', `${what} declares ${nodes} field nodes, its schema has ${layout.nodes}`);
  const variadic = fb.vector(recordBatch, 4);
  if (variadic.length !== layout.views) throw fail('ERR_IPC_INVALID', `${what} declares ${variadic.length} variadic buffer counts, its schema has ${layout.views} view fields`);
  let buffers = BigInt(layout.buffers);
  for (let k = 0; k < variadic.length; k++) {
    const count = fb.view.getBigInt64(variadic.start + 8 * k, true);
    if (count < 0n) throw fail('ERR_IPC_INVALID', `${what} declares a negative variadic buffer count`);
    buffers += count;
  }
  const declared = fb.vector(recordBatch, 2).length;
  if (BigInt(declared) !== buffers) throw fail('ERR_IPC_INVALID', `${what} declares ${declared} buffers, its schema needs ${buffers}`);
}
