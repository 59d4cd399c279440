// The motivating workload: a code-graph symbol table passed between processes.
// Deterministic (seeded) so every process and every run builds the same table.
import { Table, Uint8, Uint16, Uint32, Utf8, makeData, RecordBatch, Schema, Field, Struct, vectorFromArray } from 'apache-arrow';

export const SYMBOL_FIELDS = [
  new Field('id', new Utf8(), false),
  new Field('fqn', new Utf8(), false),
  new Field('kind', new Uint8(), false),
  new Field('file_id', new Uint16(), false),
  new Field('start_line', new Uint32(), false),
  new Field('start_col', new Uint16(), false),
  new Field('end_line', new Uint32(), false),
  new Field('end_col', new Uint16(), false),
];
export const SYMBOL_SCHEMA = new Schema(SYMBOL_FIELDS);

/** Plain-object form of one row, as JSON/msgpack baselines carry it. */
export interface SymbolRow {
  id: string;
  fqn: string;
  kind: number;
  file_id: number;
  start_line: number;
  start_col: number;
  end_line: number;
  end_col: number;
}

/** mulberry32: small, fast, and the same in every JavaScript engine. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface SymbolColumns {
  id: string[];
  fqn: string[];
  kind: Uint8Array;
  file_id: Uint16Array;
  start_line: Uint32Array;
  start_col: Uint16Array;
  end_line: Uint32Array;
  end_col: Uint16Array;
}

export function generateSymbolColumns(rows: number, seed = 42): SymbolColumns {
  const next = rng(seed);
  const cols: SymbolColumns = {
    id: new Array(rows),
    fqn: new Array(rows),
    kind: new Uint8Array(rows),
    file_id: new Uint16Array(rows),
    start_line: new Uint32Array(rows),
    start_col: new Uint16Array(rows),
    end_line: new Uint32Array(rows),
    end_col: new Uint16Array(rows),
  };
  const files = Math.max(1, Math.ceil(rows / 50));
  let line = 0;
  let n = 0;
  let file = 0;
  for (let i = 0; i < rows; i++) {
    if (i > 0 && next() < 1 / 50) {
      file = Math.min(files - 1, file + 1);
      line = 0;
      n = 0;
    }
    const k = Math.floor(next() * 40);
    const m = Math.floor(next() * 12);
    const start = line + 1 + Math.floor(next() * 5);
    const length = 1 + Math.floor(next() * 60);
    cols.id[i] = `node_${file}_${n}`;
    cols.fqn[i] = `pkg.module_${k}.Class_${m}.func_${n}`;
    cols.kind[i] = Math.floor(next() * 8);
    cols.file_id[i] = file;
    cols.start_line[i] = start;
    cols.start_col[i] = Math.floor(next() * 80);
    cols.end_line[i] = start + length;
    cols.end_col[i] = Math.floor(next() * 120);
    line = start + length;
    n++;
  }
  return cols;
}

export function symbolTableFromColumns(cols: SymbolColumns): Table {
  const rows = cols.kind.length;
  const children = [
    vectorFromArray(cols.id, new Utf8()).data[0]!,
    vectorFromArray(cols.fqn, new Utf8()).data[0]!,
    makeData({ type: new Uint8(), length: rows, data: cols.kind }),
    makeData({ type: new Uint16(), length: rows, data: cols.file_id }),
    makeData({ type: new Uint32(), length: rows, data: cols.start_line }),
    makeData({ type: new Uint16(), length: rows, data: cols.start_col }),
    makeData({ type: new Uint32(), length: rows, data: cols.end_line }),
    makeData({ type: new Uint16(), length: rows, data: cols.end_col }),
  ];
  const data = makeData({ type: new Struct(SYMBOL_FIELDS), length: rows, nullCount: 0, children });
  return new Table([new RecordBatch(SYMBOL_SCHEMA, data)]);
}

/** The 100,000-row table of the demo and the benchmarks (or any size). */
export function generateSymbolTable(rows = 100_000, seed = 42): Table {
  return symbolTableFromColumns(generateSymbolColumns(rows, seed));
}

export function symbolRows(cols: SymbolColumns): SymbolRow[] {
  const out: SymbolRow[] = new Array(cols.kind.length);
  for (let i = 0; i < out.length; i++) {
    out[i] = {
      id: cols.id[i]!,
      fqn: cols.fqn[i]!,
      kind: cols.kind[i]!,
      file_id: cols.file_id[i]!,
      start_line: cols.start_line[i]!,
      start_col: cols.start_col[i]!,
      end_line: cols.end_line[i]!,
      end_col: cols.end_col[i]!,
    };
  }
  return out;
}

/** FNV-1a style checksum over every value of every column, identical for every representation. */
export function checksumSymbolTable(table: Table): number {
  let h = 0x811c9dc5;
  const mix = (x: number) => {
    h = Math.imul(h ^ x, 0x01000193) >>> 0;
  };
  for (const batch of table.batches) {
    for (const name of ['kind', 'file_id', 'start_line', 'start_col', 'end_line', 'end_col']) {
      const values = batch.getChild(name)!.data[0]!.values as ArrayLike<number>;
      for (let i = 0; i < batch.numRows; i++) mix(values[i]!);
    }
    for (const name of ['id', 'fqn']) {
      const data = batch.getChild(name)!.data[0]!;
      const bytes = data.values as Uint8Array;
      const offsets = data.valueOffsets as Int32Array;
      for (let i = 0; i < batch.numRows; i++) mix(offsets[i + 1]! - offsets[i]!);
      for (let i = offsets[0]!; i < offsets[batch.numRows]!; i++) mix(bytes[i]!);
    }
  }
  return h;
}
