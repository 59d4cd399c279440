// Writes the Arrow IPC stream files the proof sends:
//   make-tables.mjs DIR symbols ROWS            -> DIR/symbols-ROWS.arrows (generateSymbolTable)
//   make-tables.mjs DIR numeric BYTES           -> DIR/numeric-BYTES.arrows (int32 seq, float64 value,
//                                                  int32 group: 16 bytes a row, 4 MiB batches)
// Prints the file path and its size as JSON.
import { writeFileSync, openSync, writeSync, closeSync, statSync } from 'node:fs';
import path from 'node:path';
import { Table, RecordBatch, Schema, Field, Int32, Float64, makeData, Struct, tableToIPC, RecordBatchStreamWriter } from 'apache-arrow';
import { generateSymbolTable } from '../../dist/src/cli/symbols.js';

const [dir, kind, nArg] = process.argv.slice(2);
const n = Number(nArg);
if (!dir || !kind || !Number.isSafeInteger(n) || n <= 0) {
  console.error('usage: make-tables.mjs DIR symbols ROWS | DIR numeric BYTES');
  process.exit(2);
}

let file;
if (kind === 'symbols') {
  file = path.join(dir, `symbols-${n}.arrows`);
  writeFileSync(file, tableToIPC(generateSymbolTable(n), 'stream'));
} else if (kind === 'numeric') {
  file = path.join(dir, `numeric-${n}.arrows`);
  const schema = new Schema([new Field('seq', new Int32(), false), new Field('value', new Float64(), false), new Field('group', new Int32(), false)]);
  const rowsTotal = Math.max(1, Math.floor(n / 16));
  const perBatch = Math.min(rowsTotal, 1 << 18); // 4 MiB of column data per batch
  const writer = new RecordBatchStreamWriter();
  const fd = openSync(file, 'w');
  const reader = (async () => {
    for await (const chunk of writer) writeSync(fd, chunk);
  })();
  writer.reset(undefined, schema);
  for (let start = 0; start < rowsTotal; start += perBatch) {
    const len = Math.min(perBatch, rowsTotal - start);
    const seq = new Int32Array(len);
    const value = new Float64Array(len);
    const group = new Int32Array(len);
    for (let i = 0; i < len; i++) {
      seq[i] = start + i;
      value[i] = (start + i) * 0.5;
      group[i] = (start + i) % 97;
    }
    const children = [
      makeData({ type: schema.fields[0].type, length: len, data: seq }),
      makeData({ type: schema.fields[1].type, length: len, data: value }),
      makeData({ type: schema.fields[2].type, length: len, data: group }),
    ];
    writer.write(new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: len, children })));
  }
  writer.finish();
  await reader;
  closeSync(fd);
} else {
  console.error(`unknown kind ${kind}`);
  process.exit(2);
}
console.log(JSON.stringify({ file, bytes: statSync(file).size }));
