// FlightData encoded and decoded by hand (src/transport/flight-wire.ts) is the same protobuf message
// protobufjs reads and writes from proto/flight.proto, both ways; a table's FlightData are laid out
// from its own buffers; received fields are views (an unaligned body moved into line inside its own
// message, not copied), decoded into a table without re-framing; malformed protobuf is refused with
// a typed error, also by a running server, which frees the call's slot and goes on serving.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ArrowShmError } from '../src/errors.js';
import { checksumSymbolTable, generateSymbolTable } from '../src/cli/symbols.js';
import { Field, makeData, RecordBatch, Schema, Struct, Table, Uint8 } from 'apache-arrow';
import { PROTO, ipcBytes, ipcFromFlightData, toFlightData } from '../src/transport/flight-codec.js';
import { decodeFlightData, encodeFlightData, flightDataBodyOffset, type FlightData, type OutgoingFlightData } from '../src/transport/flight-wire.js';
import { MessageReader, RECEIVE_WINDOW, type GrpcStatus } from '../src/transport/flight-http2.js';
import http2 from 'node:http2';
import { once } from 'node:events';
import { decodeTable } from '../src/ipc/reader.js';
import { FlightClient } from '../src/transport/flight-client.js';
import { FlightServer, receivedName } from '../src/transport/flight-server.js';
import { received } from '../src/transport/flight-message.js';
import { describeReceived, describeTable } from '../src/transport/flight-info.js';
import { flightLimits } from '../src/transport/flight-limits.js';

/** protobufjs' FlightData serialisers, as grpc-js would use them without flight-wire. */
function protobufjs() {
  const loaded = protoLoader.loadSync(PROTO, { keepCase: true, longs: String, enums: String, bytes: Buffer, defaults: true });
  const pkg = grpc.loadPackageDefinition(loaded) as unknown as { arrow: { flight: { protocol: { FlightService: grpc.ServiceClientConstructor } } } };
  const put = pkg.arrow.flight.protocol.FlightService.service.DoPut!;
  return { serialize: put.requestSerialize as (m: object) => Buffer, deserialize: put.requestDeserialize as (b: Buffer) => FlightData };
}

const SAMPLES: OutgoingFlightData[] = [
  { flight_descriptor: { type: 'PATH', cmd: Buffer.alloc(0), path: ['a', 'ü/b'] }, data_header: Buffer.from('header'), data_body: Buffer.alloc(300, 7) },
  { flight_descriptor: { type: 'CMD', cmd: Buffer.from('count'), path: [] }, data_header: Buffer.alloc(0), app_metadata: Buffer.from('{"k":"v"}'), data_body: Buffer.alloc(0) },
  { flight_descriptor: null, data_header: Buffer.alloc(200_000, 1), app_metadata: Buffer.from('m'), data_body: Buffer.alloc(70_000, 2) },
  { data_header: Buffer.alloc(0), data_body: Buffer.alloc(0) },
];

const plain = (m: FlightData | OutgoingFlightData) => ({
  flight_descriptor: m.flight_descriptor ? { type: m.flight_descriptor.type, cmd: Buffer.from(m.flight_descriptor.cmd), path: m.flight_descriptor.path } : null,
  data_header: Buffer.from(m.data_header),
  app_metadata: Buffer.from(m.app_metadata ?? Buffer.alloc(0)),
  data_body: Buffer.from(m.data_body as Uint8Array),
});

test('flight-wire and protobufjs read each other: the same FlightData both ways', () => {
  const pb = protobufjs();
  for (const m of SAMPLES) {
    assert.deepEqual(plain(pb.deserialize(encodeFlightData(m))), plain(m));
    assert.deepEqual(plain(decodeFlightData(pb.serialize(m))), plain(m));
  }
});

test('a body given as pieces is laid out at their offsets, the gaps zeroed; received fields are views of the message', () => {
  const pieces = { length: 40, pieces: [{ offset: 0, bytes: Buffer.from('abc') }, { offset: 16, bytes: Buffer.from('defgh') }] };
  const bytes = encodeFlightData({ data_header: Buffer.from('h'), data_body: pieces });
  const got = decodeFlightData(bytes);
  const expected = Buffer.alloc(40);
  expected.write('abc', 0);
  expected.write('defgh', 16);
  assert.deepEqual(Buffer.from(got.data_body), expected);
  assert.equal(got.data_body.buffer, bytes.buffer); // no copy
  assert.equal(got.data_header.buffer, bytes.buffer);
});

test('a table as FlightData: laid out from its buffers, re-framed into the same table (and its metadata on the first batch)', () => {
  const table = generateSymbolTable(1000);
  const messages = toFlightData(table, null, Buffer.from('{"k":"v"}')).map((m) => decodeFlightData(encodeFlightData(m)));
  assert.equal(messages.length, 1 + table.batches.length);
  assert.equal(messages[0]!.app_metadata.length, 0); // the schema
  const message = received(messages, 't', flightLimits(undefined));
  assert.deepEqual(message.metadata, { k: 'v' });
  assert.equal(checksumSymbolTable(message.table), checksumSymbolTable(table));
  // The same messages as those of the IPC stream arrow-shm writes (its headers padded there), bodies byte for byte.
  const fromBytes = toFlightData(ipcBytes(table), null).map((m) => decodeFlightData(encodeFlightData(m)));
  assert.deepEqual(
    fromBytes.map((m) => [m.data_header.subarray(0, messages[fromBytes.indexOf(m)]!.data_header.length), m.data_body]),
    messages.map((m) => [m.data_header, m.data_body]),
  );
});

/** `bytes` copied to `at` bytes into a fresh ArrayBuffer of its own (filled with 0xee around it). */
function placedAt(bytes: Uint8Array, at: number): Buffer {
  const memory = Buffer.alloc(at + bytes.length + 16, 0xee);
  memory.set(bytes, at);
  return memory.subarray(at, at + bytes.length);
}

test('an unaligned body is moved to an 8-byte boundary inside its own message (no copy); the fields it moves over are kept', () => {
  const body = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
  const samples: OutgoingFlightData[] = [
    { data_header: Buffer.from('hdr'), app_metadata: Buffer.from('meta'), data_body: body }, // app_metadata right before the body
    { flight_descriptor: { type: 'CMD', cmd: Buffer.from('c'), path: [] }, data_header: Buffer.alloc(0), data_body: body }, // the descriptor's cmd
    { data_header: Buffer.from('h'), data_body: body },
    { data_header: Buffer.alloc(0), data_body: body }, // the body's tag first: it can move back by no more than 3
  ];
  for (const m of samples) {
    for (let at = 0; at < 16; at++) {
      const message = placedAt(encodeFlightData(m), at);
      const got = decodeFlightData(message);
      assert.equal(got.data_body.byteOffset % 8, 0, `at ${at}`);
      assert.deepEqual(plain(got), plain(m), `at ${at}`);
      const moved = got.data_body.buffer === message.buffer;
      if (moved) assert.ok(got.data_body.byteOffset >= message.byteOffset, 'never before its message');
      else assert.equal(got.data_body.byteOffset, 0); // too close to the start to move: a copy of its own
      assert.equal(Buffer.from(message.buffer, 0, message.byteOffset).every((b) => b === 0xee), true, 'bytes before the message untouched');
    }
  }
});

test('a gRPC response split anywhere arrives as whole messages, each FlightData placed so that its body needs no move; sizes are bounded before anything is allocated', () => {
  const table = generateSymbolTable(3000);
  const data = toFlightData(table, null, Buffer.from('{"k":"v"}')).map((m) => encodeFlightData(m));
  const framed = Buffer.concat(data.flatMap((d) => [Buffer.from([0, ...[24, 16, 8, 0].map((s) => (d.length >>> s) & 0xff)]), d]).concat([Buffer.from([0, 0, 0, 0, 0])]));
  for (const size of [1, 3, 8, 1000, 16_384, framed.length]) {
    const got: Buffer[] = [];
    const reader = new MessageReader(2 ** 20, (b) => got.push(b), (s) => assert.fail(s.details));
    for (let at = 0; at < framed.length; at += size) reader.push(Buffer.from(framed.subarray(at, at + size)));
    assert.equal(got.length, data.length + 1, `chunks of ${size}`);
    got.forEach((b, i) => assert.ok(b.equals(data[i] ?? Buffer.alloc(0)), `message ${i}, chunks of ${size}`));
    for (const b of got.slice(0, -1)) {
      const body = flightDataBodyOffset(b);
      if (body >= 0 && size < b.length) assert.equal((b.byteOffset + body) % 8, 0, `placed, chunks of ${size}`); // assembled from chunks: placed
    }
    const message = received(got.slice(0, -1).map((b) => decodeFlightData(b)), 't', flightLimits(undefined));
    assert.equal(checksumSymbolTable(message.table), checksumSymbolTable(table));
  }
  const refusals: GrpcStatus[] = [];
  new MessageReader(100, () => assert.fail('no message'), (s) => refusals.push(s)).push(Buffer.from([0, 0xff, 0xff, 0xff, 0xff]));
  new MessageReader(100, () => assert.fail('no message'), (s) => refusals.push(s)).push(Buffer.from([1, 0, 0, 0, 1, 0]));
  assert.deepEqual(refusals.map((s) => s.code), [grpc.status.RESOURCE_EXHAUSTED, grpc.status.INTERNAL]);
});

test('a received table is decoded from its FlightData, each message checked as one of a stream; its IPC stream is made only when asked for', () => {
  const table = generateSymbolTable(2000);
  const decode = () => toFlightData(table, null, Buffer.from('{"k":"v"}')).map((m) => decodeFlightData(placedAt(encodeFlightData(m), 3)));
  const message = received(decode(), 't', flightLimits(undefined));
  assert.equal(checksumSymbolTable(message.table), checksumSymbolTable(table));
  // Its FlightInfo (a server's ListFlights) from the messages: the same as from the IPC stream, made after it.
  const info = describeReceived('t', message, Buffer.from('m'));
  assert.deepEqual(info, describeTable('t', message.bytes, Buffer.from('m')));
  assert.equal(message.byteLength, message.bytes.length);
  assert.equal(checksumSymbolTable(decodeTable(message.bytes)), checksumSymbolTable(table));
  // Sent again (a server's DoGet of a put table): the same messages, the metadata where toFlightData puts it.
  const again = toFlightData(message, null, Buffer.from('{"k":"v"}')).map((m) => decodeFlightData(encodeFlightData(m)));
  assert.ok(Buffer.from(ipcFromFlightData(again)).equals(message.bytes));
  assert.deepEqual(received(again, 't', flightLimits(undefined)).metadata, { k: 'v' });
  // A body longer or shorter than its message declares is refused; one without its padding is padded.
  const longer = decode();
  longer[1]!.data_body = Buffer.concat([longer[1]!.data_body, Buffer.alloc(8)]);
  assert.throws(() => received(longer, 't', flightLimits(undefined)), (e) => e instanceof ArrowShmError && e.code === 'ERR_IPC_INVALID');
  const shorter = decode();
  shorter[1]!.data_body = shorter[1]!.data_body.subarray(0, shorter[1]!.data_body.length - 8);
  assert.throws(() => received(shorter, 't', flightLimits(undefined)), (e) => e instanceof ArrowShmError && e.code === 'ERR_IPC_TRUNCATED');
  const field = new Field('b', new Uint8(), false);
  const five = new Table([new RecordBatch(new Schema([field]), makeData({ type: new Struct([field]), length: 5, nullCount: 0, children: [makeData({ type: new Uint8(), length: 5, data: Uint8Array.of(1, 2, 3, 4, 5) })] }))]);
  const unpadded = toFlightData(ipcBytes(five), null).map((m) => decodeFlightData(encodeFlightData(m)));
  const padded = unpadded[1]!.data_body.length;
  assert.equal(padded % 8, 0);
  unpadded[1]!.data_body = unpadded[1]!.data_body.subarray(0, padded - 3); // its last 3 bytes: padding
  assert.deepEqual([...received(unpadded, 't', flightLimits(undefined)).table.getChild('b')!], [1, 2, 3, 4, 5]);
  assert.throws(() => received([], 't', flightLimits(undefined)), (e) => e instanceof ArrowShmError && e.code === 'ERR_IPC_TRUNCATED');
});

test('malformed protobuf is refused with ERR_IPC_INVALID; unknown fields are skipped', () => {
  const bad = [
    Buffer.from([0x12]), // a key, no length
    Buffer.from([0x12, 0x05, 1, 2]), // a length past the end
    Buffer.from([0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), // an overlong varint
    Buffer.from([0x13]), // wire type 3 (groups)
    Buffer.from([0x0a, 0x02, 0x08]), // a descriptor with a cut varint
    Buffer.from([0x21, 1, 2, 3]), // a fixed64 past the end
  ];
  for (const b of bad) assert.throws(() => decodeFlightData(b), (e) => e instanceof ArrowShmError && e.code === 'ERR_IPC_INVALID', b.toString('hex'));
  const unknown = Buffer.concat([Buffer.from([0x20, 0x96, 0x01, 0x2d, 1, 2, 3, 4, 0x31, 1, 2, 3, 4, 5, 6, 7, 8, 0x3a, 0x01, 0x00]), encodeFlightData(SAMPLES[0]!)]);
  assert.deepEqual(plain(decodeFlightData(unknown)), plain(SAMPLES[0]!));
});

test('a server given malformed FlightData refuses the call (INTERNAL) and frees its slot: with room for one call, the next put is served', async () => {
  const server = await FlightServer.listen('grpc://127.0.0.1:0', { limits: { maxConcurrentCalls: 1 } });
  const raw = grpc.makeGenericClientConstructor(
    { DoPut: { path: '/arrow.flight.protocol.FlightService/DoPut', requestStream: true, responseStream: true, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b } },
    'FlightService',
  );
  const client = new raw(server.address.slice('grpc://'.length), grpc.credentials.createInsecure());
  try {
    const status = await new Promise<grpc.StatusObject>((resolve) => {
      const call = (client as unknown as { DoPut(): grpc.ClientDuplexStream<Buffer, Buffer> }).DoPut();
      call.on('data', () => {});
      call.on('error', () => {});
      call.on('status', resolve);
      call.write(Buffer.from([0x12, 0x05, 1, 2]));
      call.end();
    });
    assert.equal(status.code, grpc.status.INTERNAL);
    const honest = await FlightClient.connect(server.address);
    await honest.doPut('after', generateSymbolTable(10));
    assert.equal(receivedName(await server.receive()), 'after');
    honest.close();
  } finally {
    client.close();
    await server.close();
  }
});

test("a Node server's DoGet answer is the same protobuf as encodeFlightData's, though grpc-js's server copies it straight from the parts (serializeForServer)", async () => {
  const server = await FlightServer.listen('grpc://127.0.0.1:0');
  const table = generateSymbolTable(5000);
  server.serve('t', table, { metadata: { k: 'v' } });
  const identity = (b: Buffer) => b;
  const raw = grpc.makeGenericClientConstructor(
    { DoGet: { path: '/arrow.flight.protocol.FlightService/DoGet', requestStream: false, responseStream: true, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity } },
    'FlightService',
  );
  const client = new raw(server.address.slice('grpc://'.length), grpc.credentials.createInsecure());
  try {
    const got = await new Promise<Buffer[]>((resolve, reject) => {
      const messages: Buffer[] = [];
      const ticket = Buffer.concat([Buffer.from([0x0a, 1]), Buffer.from('t')]); // Ticket { ticket: "t" }
      const call = (client as unknown as { DoGet(t: Buffer): grpc.ClientReadableStream<Buffer> }).DoGet(ticket);
      call.on('data', (m: Buffer) => messages.push(Buffer.from(m)));
      call.on('error', reject);
      call.on('end', () => resolve(messages));
    });
    const expected = toFlightData(ipcBytes(table), null, Buffer.from('{"k":"v"}')).map((m) => encodeFlightData(m)); // serve() keeps IPC bytes
    assert.equal(got.length, expected.length);
    got.forEach((m, i) => assert.ok(m.equals(expected[i]!), `message ${i}`)); // (no diff of large buffers)
  } finally {
    client.close();
    await server.close();
  }
});

test('a Node Flight server offers RECEIVE_WINDOW, not HTTP/2\'s 64 KiB, as each call\'s receive window (grpc-js has no option: widenReceiveWindows)', async () => {
  const server = await FlightServer.listen('grpc://127.0.0.1:0');
  const session = http2.connect(`http://127.0.0.1:${server.port}`);
  try {
    await once(session, 'remoteSettings');
    assert.equal(session.remoteSettings.initialWindowSize, RECEIVE_WINDOW);
  } finally {
    session.destroy();
    await server.close();
  }
});
