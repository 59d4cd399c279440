// The batch messages a channel writes and reads on every hand-off, without apache-arrow's generic
// flatbuffers code (src/ipc/message-writer.ts, decodeBatchMessage in src/ipc/messages.ts), and the
// record batches a receiver builds without apache-arrow's constructor (src/ipc/reader.ts): each
// must read exactly as apache-arrow's own would.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Field, Int, Int32, RecordBatch, Schema, Table, Utf8, makeData, Struct, tableFromArrays, tableFromIPC, tableToIPC, vectorFromArray, Dictionary, MessageHeader } from 'apache-arrow';
import { Message } from 'apache-arrow/ipc/metadata/message';
import { ArrowShmError } from '../src/errors.js';
import { connect } from '../src/transport/channel.js';
import { listen } from '../src/transport/listener.js';
import { checkIpcStream, walkIpcMessages } from '../src/ipc/messages.js';
import { decodeTable } from '../src/ipc/reader.js';
import { verifyMessageFlatbuffer } from '../src/ipc/flatbuffer.js';
import { encodeMessage } from '../src/ipc/message-writer.js';
import { layoutIpcStream, writeIpcLayout } from '../src/ipc/writer.js';
import { fuzzFiles, goldStreams, uniqueAddress } from './helpers.js';

/** Everything apache-arrow's Message of a batch says, as plain values. */
function described(message: Message): unknown {
  const header = message.header() as unknown as Record<string, unknown>;
  const batch = (message.headerType === MessageHeader.DictionaryBatch ? header.data : header) as Record<string, any>;
  return {
    type: message.headerType,
    version: message.version,
    bodyLength: message.bodyLength,
    metadata: [...message.metadata],
    dictionary: message.headerType === MessageHeader.DictionaryBatch ? [header.id, header.isDelta] : null,
    length: batch.length,
    nodes: batch.nodes.map((n: any) => [n.length, n.nullCount]),
    buffers: batch.buffers.map((b: any) => [b.offset, b.length]),
    compression: batch.compression ? [batch.compression.type, batch.compression.method] : null,
    variadic: [...batch.variadicBufferCounts],
  };
}

/** The flatbuffer metadata of each message of an IPC stream, and whether it is a batch. */
function metadataOf(bytes: Uint8Array): { metadata: Uint8Array; batch: boolean }[] {
  const out: { metadata: Uint8Array; batch: boolean }[] = [];
  walkIpcMessages(bytes, 'stream', (m) => out.push({ metadata: bytes.subarray(m.metadataStart, m.metadataStart + m.metadataLength), batch: m.message.headerType !== MessageHeader.Schema }));
  return out;
}

/** The gold streams, every mutation of a few of their bytes included (seeded, so reproducible). */
function streams(): Uint8Array[] {
  const out: Uint8Array[] = [];
  let seed = 15;
  const random = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), seed % n);
  for (const file of goldStreams()) {
    const original = new Uint8Array(readFileSync(file));
    out.push(original);
    for (let i = 0; i < 60; i++) {
      const bytes = original.slice(0, Math.min(original.length, 4096));
      for (let k = 0; k <= random(3); k++) bytes[random(bytes.length)] = random(4) === 0 ? 0xff : random(256);
      out.push(bytes);
    }
  }
  return [...out, ...fuzzFiles().map((f) => new Uint8Array(readFileSync(f)))];
}

test('every batch message written by encodeMessage reads back as the Message it was made from', () => {
  let compared = 0;
  for (const file of goldStreams()) {
    for (const { metadata, batch } of metadataOf(new Uint8Array(readFileSync(file)))) {
      if (!batch) continue;
      const original = Message.decode(metadata); // written by the Arrow implementation that made the gold file
      const ours = encodeMessage(original);
      verifyMessageFlatbuffer(ours);
      assert.equal(ours.byteLength % 8, 0);
      assert.deepEqual(described(Message.decode(ours)), described(original), file);
      compared++;
    }
  }
  assert.ok(compared > 40, `${compared} batch messages`);
  // What the gold files lack: custom metadata on a batch (any UTF-8), dictionary deltas.
  const t = tableFromArrays({ a: Int32Array.of(1, 2, 3) });
  const withMetadata = new RecordBatch(t.schema, t.batches[0]!.data, new Map([['k', 'v'], ['ünï', 'çødé'], ['', '']]));
  const d = new Dictionary(new Utf8(), new Int32());
  for (const table of [new Table([withMetadata]), new Table({ d: vectorFromArray(['x', 'y'], d).concat(vectorFromArray(['z', 'y'], d)) })]) {
    const layout = layoutIpcStream(table);
    const bytes = new Uint8Array(layout.byteLength);
    writeIpcLayout(layout, bytes);
    for (const { metadata, batch } of metadataOf(bytes)) {
      if (batch) assert.deepEqual(described(Message.decode(encodeMessage(Message.decode(metadata)))), described(Message.decode(metadata)));
    }
  }
});

test('a received batch header reads as apache-arrow reads it, or is refused with a typed error', () => {
  let same = 0;
  for (const bytes of streams()) {
    let checked;
    try {
      checked = checkIpcStream(bytes);
    } catch (e) {
      assert.ok(e instanceof ArrowShmError, String(e));
      continue;
    }
    for (const m of checked.messages) {
      if (m.message.headerType === MessageHeader.Schema) continue;
      const theirs = Message.decode(bytes.subarray(m.metadataStart, m.metadataStart + m.metadataLength));
      assert.deepEqual(described(m.message), described(theirs));
      same++;
    }
  }
  assert.ok(same > 100, `${same} batch messages compared`);
});

test('a received table is apache-arrow objects of its own: its own schema, the objects apache-arrow makes (duplicate names too)', async () => {
  const address = uniqueAddress('own-schema');
  const listener = listen(address);
  const [server, client] = await Promise.all([listener.accept(), connect(address)]);
  try {
    const fields = [new Field('x', new Int32(), false, new Map([['unit', 'm']])), new Field('y', new Utf8(), true)];
    const schema = new Schema(fields, new Map([['source', 'test']]));
    const children = [makeData({ type: new Int32(), length: 2, data: Int32Array.of(1, 2) }), vectorFromArray(['a', null], new Utf8()).data[0]!];
    const batch = new RecordBatch(schema, makeData({ type: new Struct(fields), length: 2, nullCount: 0, children }), new Map([['batch', '1']]));
    const sent = new Table([batch]);
    const [first] = await Promise.all([server.receive(), client.send(sent)]);
    const [second] = await Promise.all([server.receive(), client.send(sent)]);
    const [a, b] = [first.table, second.table];
    for (const table of [a, b]) {
      assert.ok(table.batches[0] instanceof RecordBatch);
      assert.deepEqual(table.schema.fields.map((f) => [f.name, String(f.type), f.nullable, [...f.metadata]]), [['x', 'Int32', false, [['unit', 'm']]], ['y', 'Utf8', true, []]]);
      assert.deepEqual([...table.schema.metadata], [['source', 'test']]);
      assert.deepEqual([...table.batches[0]!.metadata], [['batch', '1']]);
      assert.deepEqual(table.toArray().map((r) => r.toArray()), [[1, 'a'], [2, null]]);
      assert.equal(table.slice(1).numRows, 1);
      assert.equal(table.concat(table).numRows, 4);
    }
    // What one receiver changes stays in its table.
    a.schema.metadata.set('source', 'changed');
    a.schema.fields[0]!.metadata.set('unit', 'ft');
    assert.equal(b.schema.metadata.get('source'), 'test');
    assert.equal(b.schema.fields[0]!.metadata.get('unit'), 'm');
    const [third] = await Promise.all([server.receive(), client.send(sent)]);
    assert.equal(third.table.schema.metadata.get('source'), 'test');
    assert.equal(third.table.schema.fields[0]!.metadata.get('unit'), 'm');
    // apache-arrow's RecordBatch constructor matches fields by name: of two named alike, it gives
    // both the second one's type, in every batch it makes (slice, concat). A received table with
    // such a schema is the one apache-arrow's own reader makes, so that those still work.
    const duplicates = new Uint8Array(readFileSync(goldStreams().find((f) => f.endsWith('generated_duplicate_fieldnames.stream'))!));
    const [fourth] = await Promise.all([server.receive(), client.send(duplicates)]);
    const names = (t: Table) => t.schema.fields.map((f) => `${f.name}: ${f.type}`);
    assert.deepEqual(names(fourth.table), names(tableFromIPC(duplicates)));
    assert.deepEqual(names(fourth.table.slice(0, 1)), names(fourth.table));
    for (const m of [first, second, third, fourth]) m.close();
  } finally {
    client.close();
    server.close();
    listener.close();
  }
});

test('a stream without batches whose schema arrow-js cannot make columns of is refused with a typed error', () => {
  const flatbuffer = Message.encode(Message.from(new Schema([new Field('a', new Int(true, 7 as 8), false)])));
  const padded = Math.ceil(flatbuffer.length / 8) * 8;
  const bytes = new Uint8Array(8 + padded + 8);
  new DataView(bytes.buffer).setInt32(0, -1, true);
  new DataView(bytes.buffer).setInt32(4, padded, true);
  bytes.set(flatbuffer, 8);
  new DataView(bytes.buffer).setInt32(8 + padded, -1, true); // end of stream: continuation, size 0
  assert.throws(() => decodeTable(bytes), (e) => e instanceof ArrowShmError && e.code === 'ERR_IPC_INVALID');
});

test('a Schema, RecordBatch or DictionaryBatch message without its header is refused with a typed error', () => {
  const schemaMessage = (() => {
    const bytes = tableToIPC(tableFromArrays({ a: Int32Array.of(1) }), 'stream');
    return bytes.subarray(0, 8 + new DataView(bytes.buffer, bytes.byteOffset).getInt32(4, true));
  })();
  /** An encapsulated Message of `type` with version V5 and no header (the union's value absent). */
  const headerless = (type: number) => {
    const fb = new Uint8Array(24);
    const v = new DataView(fb.buffer);
    v.setUint32(0, 16, true); // the root table, at 16
    [12, 8, 4, 6, 0, 0].forEach((x, i) => v.setUint16(4 + 2 * i, x, true)); // vtable: version at 4, header_type at 6, no header, no body length
    v.setInt32(16, 12, true);
    v.setInt16(20, 4, true);
    v.setUint8(22, type);
    const message = new Uint8Array(8 + fb.length);
    new DataView(message.buffer).setInt32(0, -1, true);
    new DataView(message.buffer).setInt32(4, fb.length, true);
    message.set(fb, 8);
    return message;
  };
  const stream = (...parts: Uint8Array[]) => {
    const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 8));
    let at = 0;
    for (const p of parts) bytes.set(p, (at += p.length) - p.length);
    new DataView(bytes.buffer).setInt32(at, -1, true);
    return bytes;
  };
  for (const bytes of [stream(headerless(MessageHeader.Schema)), stream(schemaMessage, headerless(MessageHeader.RecordBatch)), stream(schemaMessage, headerless(MessageHeader.DictionaryBatch))]) {
    assert.throws(() => decodeTable(bytes), (e) => e instanceof ArrowShmError && e.code === 'ERR_IPC_INVALID' && /without its header/.test(e.message));
  }
});
