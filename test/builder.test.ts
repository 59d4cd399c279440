// Born in shared memory (src/ipc/builder.ts): columns written straight into a segment are sealed
// where they were written and sent with no copy, to a Node and to a Python receiver.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Field, Float64, Int32, makeData, RecordBatch, Schema, Struct, Utf8, Dictionary, vectorFromArray } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { TableBuilder } from '../src/ipc/builder.js';
import { decodeTable } from '../src/ipc/reader.js';
import { connect } from '../src/transport/channel.js';
import { listen } from '../src/transport/listener.js';
import { hasVenv, leaksSince, repoRoot, resources, startListening, uniqueAddress } from './helpers.js';

const code = (c: string) => (e: unknown) => e instanceof ArrowShmError && e.code === c;
const schema = new Schema([new Field('id', new Int32(), false), new Field('price', new Float64(), false), new Field('name', new Utf8(), false)]);
const N = 1000;

/** Fills every column in the builder's memory, the way a producer computes values in place. */
function build(builder: TableBuilder): RecordBatch {
  const ids = builder.array(Int32Array, N);
  const prices = builder.array(Float64Array, N);
  const offsets = builder.array(Int32Array, N + 1);
  const text = builder.buffer(N * 4);
  for (let i = 0; i < N; i++) {
    ids[i] = i;
    prices[i] = i / 4;
    offsets[i + 1] = 4 * (i + 1);
    text.set([0x61 + (i % 26), 0x62, 0x63, 0x64], 4 * i);
  }
  const children = [
    makeData({ type: new Int32(), length: N, nullCount: 0, data: ids }),
    makeData({ type: new Float64(), length: N, nullCount: 0, data: prices }),
    makeData({ type: new Utf8(), length: N, nullCount: 0, valueOffsets: offsets, data: text }),
  ];
  return new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: N, nullCount: 0, children }));
}

function check(table: { numRows: number; getChild(name: string): { get(i: number): unknown } | null }): void {
  assert.equal(table.numRows, N);
  assert.equal(table.getChild('id')!.get(777), 777);
  assert.equal(table.getChild('price')!.get(10), 2.5);
  assert.equal(table.getChild('name')!.get(27), 'bbcd');
}

test('a batch built in a segment is sealed where it was written and arrives whole; its views are detached', async () => {
  const before = resources();
  const address = uniqueAddress('builder');
  const listener = listen(address);
  const [server, client] = await Promise.all([listener.accept(), connect(address)]);
  try {
    const builder = TableBuilder.create(64 * 1024);
    const batch = build(builder);
    const ids = batch.getChild('id')!.data[0]!.values as Int32Array;
    const prepared = builder.finish(batch);
    assert.equal(ids.length, 0, 'finish() detaches every view of the builder memory');
    assert.ok(prepared.ipcOffset > 0 && prepared.ipcOffset % 8 === 0, 'the stream starts where its messages fit in front of the body');
    assert.throws(() => builder.buffer(8), code('ERR_CLOSED'));
    for (let i = 0; i < 2; i++) {
      const [message] = await Promise.all([server.receive(), client.send(prepared)]);
      check(message.table);
      message.close();
    }
    const mapping = prepared.segment.takeReadOnlyMapping();
    check(decodeTable(mapping.bytes(prepared.ipcOffset, prepared.ipcLength)));
    mapping.release();
    prepared.close();
  } finally {
    server.close();
    client.close();
    listener.close();
  }
  assert.deepEqual(leaksSince(before), [], 'nothing left open');
});

test('a builder refuses buffers it did not hand out, dictionaries, room it does not have, and a header that is too small', () => {
  const builder = TableBuilder.create(4096);
  try {
    assert.throws(() => builder.buffer(8192), code('ERR_INVALID_ARGUMENT'));
    const elsewhere = makeData({ type: new Int32(), length: 4, nullCount: 0, data: Int32Array.of(1, 2, 3, 4) });
    const one = new Schema([new Field('x', new Int32(), false)]);
    assert.throws(() => builder.finish(new RecordBatch(one, makeData({ type: new Struct(one.fields), length: 4, nullCount: 0, children: [elsewhere] }))), code('ERR_INVALID_ARGUMENT'));
    const dictionary = vectorFromArray(['a', 'b', 'a'], new Dictionary(new Utf8(), new Int32()));
    const dictSchema = new Schema([new Field('d', dictionary.type, false)]);
    assert.throws(() => builder.finish(new RecordBatch(dictSchema, makeData({ type: new Struct(dictSchema.fields), length: 3, nullCount: 0, children: [dictionary.data[0]!] }))), code('ERR_INVALID_ARGUMENT'));
  } finally {
    builder.close();
  }
  assert.throws(() => TableBuilder.create(1024, { headerBytes: 100 }), code('ERR_INVALID_ARGUMENT'));
  const tiny = TableBuilder.create(64 * 1024, { headerBytes: 64 });
  try {
    assert.throws(() => tiny.finish(build(tiny)), code('ERR_TOO_LARGE'));
  } finally {
    tiny.close();
  }
});

test('a batch built in shared memory reaches a Python receiver (pyarrow reads it in place)', { skip: !hasVenv() && 'needs the Python venv (.build/venv)' }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-builder-'));
  try {
    const address = path.join(dir, 'sock');
    const out = path.join(dir, 'out.arrows'); // one table: --out names the file
    const recv = await startListening(path.join(repoRoot, 'peers', 'run'), ['python', 'recv', '--socket', address, '--count', '1', '--out', out, '--print']);
    const client = await connect(address);
    try {
      const builder = TableBuilder.create(64 * 1024);
      const prepared = builder.finish(build(builder));
      await client.send(prepared);
      prepared.close();
    } finally {
      client.close();
    }
    const got = await recv.done;
    assert.equal(got.code, 0, got.stderr);
    assert.match(got.stdout, /rows: 1000/);
    check(decodeTable(new Uint8Array(readFileSync(out))));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
