// The stream's per-schema codecs (src/stream/encoder.ts, the decode plan of src/stream/decoder.ts):
// what the template encoder writes is a valid IPC message for the generic reader, the plan decodes
// it to the same values, falls back where it must, and on hostile bytes never accepts what the
// generic walk refuses (same error codes, same values). Then the synchronous paths of real streams.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Binary,
  Bool,
  Decimal,
  Dictionary,
  Field,
  FixedSizeBinary,
  Float64,
  Int32,
  Int64,
  LargeUtf8,
  RecordBatch,
  Schema,
  Struct,
  Table,
  TimestampMillisecond,
  Utf8,
  makeData,
  makeVector,
  vectorFromArray,
} from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { LayoutBuilder, writeIpcLayout, writeRecordBatchMessage } from '../src/ipc/writer.js';
import { decodeBatches } from '../src/ipc/reader.js';
import { BatchEncoder } from '../src/stream/encoder.js';
import { BatchDecoder } from '../src/stream/decoder.js';
import { StreamReader } from '../src/stream/consumer.js';
import { StreamWriter } from '../src/stream/producer.js';
import { connect } from '../src/transport/channel.js';
import { listen } from '../src/transport/listener.js';
import { uniqueAddress } from './helpers.js';

function schemaBytes(schema: Schema): Uint8Array {
  const out = new LayoutBuilder();
  out.schema(schema);
  const bytes = new Uint8Array(out.position);
  writeIpcLayout({ byteLength: out.position, chunks: out.chunks, schema, recordBatches: 0 }, bytes);
  return bytes;
}

/** The batch's message as the template encoder writes it, over stale bytes (padding must be zeroed). */
function encoded(batch: RecordBatch): Uint8Array {
  const encoder = BatchEncoder.for(batch.schema);
  assert.ok(encoder);
  const size = encoder.measure(batch);
  assert.ok(size > 0);
  const target = new Uint8Array(size + 128).fill(0xee);
  encoder.write(target, new DataView(target.buffer), 64);
  return target.slice(64, 64 + size);
}

/** The batch's message as the generic writer (ipc/writer.ts) writes it. */
function generic(batch: RecordBatch): Uint8Array {
  const out = new LayoutBuilder();
  writeRecordBatchMessage(batch, out);
  const bytes = new Uint8Array(out.position);
  writeIpcLayout({ byteLength: out.position, chunks: out.chunks, schema: batch.schema, recordBatches: 1 }, bytes, true);
  return bytes;
}

const concat = (a: Uint8Array, b: Uint8Array) => {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
};
const rows = (batch: RecordBatch) => JSON.stringify(new Table(batch).toArray(), (_, v) => (typeof v === 'bigint' ? String(v) : v instanceof Uint8Array ? [...v] : v));

function flatBatch(): RecordBatch {
  const n = 11;
  const table = new Table({
    i: vectorFromArray(Array.from({ length: n }, (_, k) => (k % 3 === 0 ? null : k * 7)), new Int32()),
    big: vectorFromArray(Array.from({ length: n }, (_, k) => BigInt(k) * 10_000_000_000n), new Int64()),
    f: vectorFromArray(Array.from({ length: n }, (_, k) => k / 3), new Float64()),
    b: vectorFromArray(Array.from({ length: n }, (_, k) => (k % 4 === 1 ? null : k % 2 === 0)), new Bool()),
    s: vectorFromArray(Array.from({ length: n }, (_, k) => (k % 5 === 2 ? null : `value ${k} ${'x'.repeat(k)}`)), new Utf8()),
    ls: vectorFromArray(Array.from({ length: n }, (_, k) => `large ${k}`), new LargeUtf8()),
    bin: vectorFromArray(Array.from({ length: n }, (_, k) => new Uint8Array(k).fill(k)), new Binary()),
    ts: vectorFromArray(Array.from({ length: n }, (_, k) => 1_700_000_000_000 + k), new TimestampMillisecond()),
    fsb: vectorFromArray(Array.from({ length: n }, (_, k) => new Uint8Array(4).fill(k)), new FixedSizeBinary(4)),
    dec: makeVector(makeData({ type: new Decimal(2, 10, 128), length: n, nullCount: 0, data: Uint32Array.from({ length: 4 * n }, (_, k) => (k % 4 === 0 ? k : 0)) })),
  });
  assert.equal(table.batches.length, 1);
  return table.batches[0]!;
}

test('the template encoder writes messages the generic reader verifies and decodes to the same values', () => {
  const batch = flatBatch();
  const head = schemaBytes(batch.schema);
  const fromTemplate = decodeBatches(concat(head, encoded(batch)));
  const fromGeneric = decodeBatches(concat(head, generic(batch)));
  assert.equal(rows(fromTemplate[0]!), rows(fromGeneric[0]!));
  assert.equal(rows(fromTemplate[0]!), rows(batch));
  // The body is laid out exactly as the generic writer lays it out (only the flatbuffers differ).
  const body = (m: Uint8Array) => m.subarray(8 + new DataView(m.buffer, m.byteOffset).getInt32(4, true));
  assert.deepEqual(body(encoded(batch)), body(generic(batch)));
});

test('the decode plan reads both writers\' messages like the generic walk', () => {
  const batch = flatBatch();
  const head = schemaBytes(batch.schema);
  const planned = new BatchDecoder(head);
  const walked = new BatchDecoder(head, undefined, false);
  for (const bytes of [encoded(batch), generic(batch)]) {
    const a = planned.decode(bytes);
    assert.equal(rows(a), rows(walked.decode(bytes)));
    assert.equal(rows(a), rows(batch));
    assert.equal(a.numRows, batch.numRows);
  }
});

test('batches the encoder does not take go to the generic writer', () => {
  const batch = flatBatch();
  const encoder = BatchEncoder.for(batch.schema)!;
  assert.equal(encoder.measure(batch.slice(3, 7)), -1, 'a sliced batch');
  const withMetadata = new RecordBatch(batch.schema, batch.data, new Map([['k', 'v']]));
  if (withMetadata.metadata?.size) assert.equal(encoder.measure(withMetadata), -1, 'batch metadata');
  const dictionary = new Schema([new Field('d', new Dictionary(new Utf8(), new Int32()))]);
  assert.equal(BatchEncoder.for(dictionary), null);
  const nested = new Schema([new Field('s', new Struct([new Field('x', new Int32())]))]);
  assert.equal(BatchEncoder.for(nested), null);
});

test('on hostile bytes the plan accepts and refuses exactly what the generic walk does', () => {
  const batch = flatBatch();
  const head = schemaBytes(batch.schema);
  const planned = new BatchDecoder(head);
  const walked = new BatchDecoder(head, undefined, false);
  const outcome = (d: BatchDecoder, bytes: Uint8Array) => {
    // In the middle of a larger buffer, as in the ring: nothing outside `bytes` may be read.
    const ring = new Uint8Array(bytes.length + 256).fill(0xee);
    ring.set(bytes, 128);
    try {
      const decoded = d.decode(ring.subarray(128, 128 + bytes.length));
      // A mutated length may make a huge batch of mostly nulls: compare those by their length.
      return decoded.numRows > 1000 ? `${decoded.numRows} rows` : rows(decoded);
    } catch (e) {
      // Not an ArrowShmError: a gap of the generic walk (reported to its owner), mirrored by the plan's fallback.
      return e instanceof ArrowShmError ? e.code : `raw ${(e as Error).name}`;
    }
  };
  let seed = 12345;
  const random = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (const original of [encoded(batch), generic(batch)]) {
    const metadataEnd = 8 + new DataView(original.buffer).getInt32(4, true);
    let refused = 0;
    for (let i = 0; i < 3000; i++) {
      const bytes = original.slice();
      const flips = 1 + Math.floor(random() * 3);
      for (let k = 0; k < flips; k++) bytes[Math.floor(random() * metadataEnd)] = random() < 0.5 ? Math.floor(random() * 256) : 0xff;
      const expected = outcome(walked, bytes);
      assert.equal(outcome(planned, bytes), expected, `mutation ${i}`);
      if (expected.startsWith('ERR_')) refused++;
    }
    assert.ok(refused > 100, `only ${refused} mutations were refused: the fuzzing misses the metadata`);
    // Truncated records too.
    for (const cut of [0, 4, 8, 9, metadataEnd - 1, metadataEnd, original.length - 1]) assert.equal(outcome(planned, original.subarray(0, cut)), outcome(walked, original.subarray(0, cut)));
  }
});

async function pair() {
  const address = uniqueAddress('codec');
  const listener = listen(address);
  const [server, client] = await Promise.all([listener.accept(), connect(address)]);
  return { listener, server, client, close: () => (server.close(), client.close(), listener.close()) };
}

const seqSchema = new Schema([new Field('seq', new Int32(), false), new Field('label', new Utf8(), false)]);
function seqBatch(seq: number): RecordBatch {
  const label = `row ${seq}`;
  const bytes = new TextEncoder().encode(label);
  const children = [
    makeData({ type: new Int32(), length: 1, nullCount: 0, data: Int32Array.of(seq) }),
    makeData({ type: new Utf8(), length: 1, nullCount: 0, valueOffsets: Int32Array.of(0, bytes.length), data: bytes }),
  ];
  return new RecordBatch(seqSchema, makeData({ type: new Struct(seqSchema.fields), length: 1, nullCount: 0, children }));
}

test('readSync reads what is published without waiting; writes of many batches through a small ring lose and reorder nothing', async (t) => {
  const { server, client, close } = await pair();
  t.after(close);
  const [writer, reader] = await Promise.all([StreamWriter.open(client, seqSchema, { capacityBytes: 65536 }), StreamReader.accept(server, { readTimeoutMs: 20_000 })]);
  t.after(() => (reader.close(), writer.abort()));
  assert.equal(reader.readSync(), undefined, 'nothing published yet');
  await writer.write([seqBatch(0), seqBatch(1), seqBatch(2)]);
  for (let i = 0; i < 3; i++) {
    const next = reader.readSync();
    assert.ok(next, `batch ${i} is there at once`);
    assert.equal(next.batch.getChildAt(0)!.get(0), i);
    assert.equal(next.batch.getChildAt(1)!.get(0), `row ${i}`);
    next.release();
  }
  assert.equal(reader.readSync(), undefined);
  // 5,000 batches of 256-byte records: 20 times the ring, written in arrays and one by one.
  const total = 5000;
  const writing = (async () => {
    for (let i = 3; i < total; ) {
      const n = Math.min(i % 2 === 0 ? 500 : 1, total - i);
      await writer.write(Array.from({ length: n }, (_, k) => seqBatch(i + k)));
      i += n;
    }
    await writer.close();
  })();
  let expected = 3;
  for await (const batch of reader) {
    assert.equal(batch.getChildAt(0)!.get(0), expected);
    assert.equal(batch.getChildAt(1)!.get(0), `row ${expected}`);
    expected++;
  }
  await writing;
  assert.equal(expected, total);
  assert.equal(reader.readSync(), null, 'the end');
});
