// Decoding limits and schema-fixed counts (docs/PROTOCOL.md §14.1): what a hostile flatbuffer may
// make a decoder produce is bounded before arrow-js sees it, for bombs made by the cross-peer
// attacker (test/python/attacks.py) and for shapes fast-check makes up.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { Builder } from 'flatbuffers';
import { type Field as ArrowField, type Table } from 'apache-arrow';
import { Field } from 'apache-arrow/fb/field';
import { Int } from 'apache-arrow/fb/int';
import { KeyValue } from 'apache-arrow/fb/key-value';
import { Message } from 'apache-arrow/fb/message';
import { MessageHeader } from 'apache-arrow/fb/message-header';
import { MetadataVersion } from 'apache-arrow/fb/metadata-version';
import { RecordBatch } from 'apache-arrow/fb/record-batch';
import { Schema } from 'apache-arrow/fb/schema';
import { Type } from 'apache-arrow/fb/type';
import { ArrowShmError } from '../src/errors.js';
import { DEFAULT_IPC_LIMITS, resolveIpcLimits, type IpcLimits } from '../src/ipc/limits.js';
import { decodeTable } from '../src/ipc/reader.js';
import { validateIpcStream } from '../src/ipc/messages.js';
import { hasVenv, repoRoot, runProcess, venvPython } from './helpers.js';

const attacks = path.join(repoRoot, 'test', 'python', 'attacks.py');
const skip = hasVenv() ? false : 'needs the Python venv (scripts/ensure-venv.sh)';

const code = (e: unknown) => (e instanceof ArrowShmError ? e.code : `untyped: ${String(e)}`);

function encapsulate(metadata: Uint8Array, body = new Uint8Array(0)): Uint8Array[] {
  const padded = (metadata.length + 7) & ~7;
  const prefix = new DataView(new ArrayBuffer(8));
  prefix.setUint32(0, 0xffffffff, true);
  prefix.setInt32(4, padded, true);
  const meta = new Uint8Array(padded);
  meta.set(metadata);
  return [new Uint8Array(prefix.buffer), meta, body];
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.length) - p.length);
  return out;
}

const END_OF_STREAM = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0);

function message(b: Builder, type: MessageHeader, header: number, bodyLength = 0): Uint8Array {
  Message.startMessage(b);
  Message.addVersion(b, MetadataVersion.V5);
  Message.addHeaderType(b, type);
  Message.addHeader(b, header);
  Message.addBodyLength(b, BigInt(bodyLength));
  b.finish(Message.endMessage(b));
  return b.asUint8Array();
}

function int32Type(b: Builder): number {
  return Int.createInt(b, 32, true);
}

interface Shape {
  /** Distinct Field tables, each referenced `fieldRefs` times from the schema. */
  distinctFields: number;
  fieldRefs: number;
  nameBytes: number;
  /** Children of each field: references to one shared int32 leaf. */
  childRefs: number;
  /** Schema custom_metadata: references to one shared KeyValue. */
  entryRefs: number;
  valueBytes: number;
}

/** A Schema message built with shared references, as a hostile writer would. */
function schemaStream(shape: Shape): Uint8Array {
  const b = new Builder(1024);
  const value = b.createString('v'.repeat(shape.valueBytes));
  const key = b.createString('k');
  const entry = KeyValue.createKeyValue(b, key, value);
  const name = b.createString('n'.repeat(shape.nameBytes));
  const leafName = b.createString('leaf');
  const leafType = int32Type(b);
  Field.startField(b);
  Field.addName(b, leafName);
  Field.addTypeType(b, Type.Int);
  Field.addType(b, leafType);
  const leaf = Field.endField(b);
  const fields: number[] = [];
  for (let i = 0; i < shape.distinctFields; i++) {
    const children = Field.createChildrenVector(b, Array(shape.childRefs).fill(leaf));
    const metadata = Field.createCustomMetadataVector(b, Array(Math.min(shape.entryRefs, 8)).fill(entry));
    const type = shape.childRefs > 0 ? (b.startObject(0), b.endObject()) : int32Type(b);
    Field.startField(b);
    Field.addName(b, name);
    Field.addTypeType(b, shape.childRefs > 0 ? Type.Struct_ : Type.Int);
    Field.addType(b, type);
    Field.addChildren(b, children);
    Field.addCustomMetadata(b, metadata);
    fields.push(Field.endField(b));
  }
  const refs = Array.from({ length: shape.fieldRefs * shape.distinctFields }, (_, i) => fields[i % fields.length]!);
  const fieldVector = Schema.createFieldsVector(b, refs);
  const metadata = Schema.createCustomMetadataVector(b, Array(shape.entryRefs).fill(entry));
  Schema.startSchema(b);
  Schema.addFields(b, fieldVector);
  Schema.addCustomMetadata(b, metadata);
  const schema = Schema.endSchema(b);
  return concat([...encapsulate(message(b, MessageHeader.Schema, schema)), END_OF_STREAM]);
}

/** What arrow-js actually produced from the schema: fields, metadata entries, string bytes. */
function produced(table: Table): { fields: number; entries: number; bytes: number } {
  let fields = 0;
  let entries = table.schema.metadata.size;
  let bytes = 0;
  for (const [k, v] of table.schema.metadata) bytes += k.length + v.length;
  const visit = (f: ArrowField) => {
    fields++;
    bytes += f.name.length;
    entries += f.metadata.size;
    for (const [k, v] of f.metadata) bytes += k.length + v.length;
    for (const child of f.type.children ?? []) visit(child);
  };
  table.schema.fields.forEach(visit);
  return { fields, entries, bytes };
}

test('whatever a schema shares, what arrow-js then produces stays within the limits (fast-check)', () => {
  const limits: IpcLimits = { maxMetadataBytes: 1 << 20, maxMetadataEntries: 2000, maxFields: 2000, maxNestingDepth: 64 };
  fc.assert(
    fc.property(
      fc.record({
        distinctFields: fc.integer({ min: 1, max: 3 }),
        fieldRefs: fc.integer({ min: 1, max: 3000 }),
        nameBytes: fc.oneof(fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: 200_000 })),
        childRefs: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 50 })),
        entryRefs: fc.integer({ min: 0, max: 3000 }),
        valueBytes: fc.oneof(fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: 200_000 })),
      }),
      (shape) => {
        const bytes = schemaStream(shape);
        try {
          validateIpcStream(bytes, limits);
        } catch (e) {
          assert.equal(code(e), 'ERR_IPC_LIMIT', `${JSON.stringify(shape)}: ${String(e)}`);
          return;
        }
        const out = produced(decodeTable(bytes));
        assert.ok(out.fields <= limits.maxFields, `${out.fields} fields decoded from ${JSON.stringify(shape)}`);
        assert.ok(out.entries <= limits.maxMetadataEntries, `${out.entries} entries decoded from ${JSON.stringify(shape)}`);
        assert.ok(out.bytes <= limits.maxMetadataBytes, `${out.bytes} bytes decoded from ${JSON.stringify(shape)}`);
      },
    ),
    { numRuns: 150 },
  );
});

/** A one-schema stream of `columns` int32 columns and a batch declaring `nodes` nodes and `buffers` buffers. */
function batchStream(columns: number, nodes: number, buffers: number): Uint8Array {
  const b = new Builder(1024);
  const fields = Array.from({ length: columns }, (_, i) => {
    const name = b.createString(`c${i}`);
    const type = int32Type(b);
    Field.startField(b);
    Field.addName(b, name);
    Field.addTypeType(b, Type.Int);
    Field.addType(b, type);
    return Field.endField(b);
  });
  const fieldVector = Schema.createFieldsVector(b, fields);
  Schema.startSchema(b);
  Schema.addFields(b, fieldVector);
  const schema = message(b, MessageHeader.Schema, Schema.endSchema(b));
  const rb = new Builder(1024);
  RecordBatch.startNodesVector(rb, nodes);
  for (let i = 0; i < nodes; i++) (rb.prep(8, 16), rb.writeInt64(0n), rb.writeInt64(0n));
  const nodeVector = rb.endVector();
  RecordBatch.startBuffersVector(rb, buffers);
  for (let i = 0; i < buffers; i++) (rb.prep(8, 16), rb.writeInt64(0n), rb.writeInt64(0n));
  const bufferVector = rb.endVector();
  RecordBatch.startRecordBatch(rb);
  RecordBatch.addLength(rb, 0n);
  RecordBatch.addNodes(rb, nodeVector);
  RecordBatch.addBuffers(rb, bufferVector);
  const batch = message(rb, MessageHeader.RecordBatch, RecordBatch.endRecordBatch(rb));
  return concat([...encapsulate(schema), ...encapsulate(batch), END_OF_STREAM]);
}

test('a batch must declare exactly the nodes and buffers its schema fixes (fast-check)', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 0, max: 20_000 }), fc.integer({ min: 0, max: 20_000 }), fc.boolean(), (columns, nodes, buffers, exact) => {
      const bytes = exact ? batchStream(columns, columns, 2 * columns) : batchStream(columns, nodes, buffers);
      const valid = exact || (nodes === columns && buffers === 2 * columns);
      try {
        validateIpcStream(bytes);
        assert.ok(valid, `${columns} columns, ${nodes} nodes, ${buffers} buffers passed`);
      } catch (e) {
        assert.ok(!valid, `a well-formed batch was refused: ${String(e)}`);
        assert.equal(code(e), 'ERR_IPC_INVALID');
      }
    }),
    { numRuns: 200 },
  );
});

test('every layout pyarrow writes (views, list views, run-end encoded, unions, nested dictionaries) passes the count checks', { skip }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-layouts-'));
  try {
    const run = await runProcess(venvPython, [path.join(repoRoot, 'test', 'python', 'layouts.py'), dir]);
    assert.equal(run.code, 0, run.stderr);
    const files = readdirSync(dir);
    assert.ok(files.length >= 10, files.join(', '));
    for (const file of files) {
      const summary = validateIpcStream(new Uint8Array(readFileSync(path.join(dir, file))));
      assert.ok(summary.recordBatches >= 1, file);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the attacker's bombs are refused before decoding, with the code of the limit they break", { skip }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-bombs-'));
  try {
    const expected: Record<string, string> = {
      'metadata-bomb': 'ERR_IPC_LIMIT',
      'schema-bomb': 'ERR_IPC_LIMIT',
      'counts-mismatch': 'ERR_IPC_INVALID',
      'fields-many': 'ERR_IPC_LIMIT',
    };
    for (const [kind, want] of Object.entries(expected)) {
      const file = path.join(dir, kind);
      const run = await runProcess(venvPython, [attacks, 'write', kind, '--out', file]);
      assert.equal(run.code, 0, run.stderr);
      assert.throws(() => validateIpcStream(new Uint8Array(readFileSync(file))), (e: unknown) => code(e) === want, kind);
    }
    // Limits are the operator's: 70,000 honest fields pass once maxFields allows them.
    const wide = new Uint8Array(readFileSync(path.join(dir, 'fields-many')));
    assert.equal(validateIpcStream(wide, { maxFields: 100_000, maxMetadataEntries: 100_000 }).messages >= 1, true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('limits are checked: positive integers, defaults otherwise', () => {
  assert.deepEqual(resolveIpcLimits(undefined), DEFAULT_IPC_LIMITS);
  assert.deepEqual(resolveIpcLimits({ maxFields: 10 }), { ...DEFAULT_IPC_LIMITS, maxFields: 10 });
  for (const bad of [0, -1, 1.5, Number.NaN, 2 ** 60]) {
    assert.throws(() => resolveIpcLimits({ maxMetadataBytes: bad }), (e: unknown) => code(e) === 'ERR_INVALID_ARGUMENT');
  }
});
