// FlightData encoded and decoded by hand (src/transport/flight-wire.ts) is the same protobuf message
// protobufjs reads and writes from proto/flight.proto, both ways; a table's FlightData are laid out
// from its own buffers; received fields are views; malformed protobuf is refused with a typed error,
// also by a running server, which frees the call's slot and goes on serving.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ArrowShmError } from '../src/errors.js';
import { checksumSymbolTable, generateSymbolTable } from '../src/cli/symbols.js';
import { PROTO, ipcBytes, toFlightData } from '../src/transport/flight-codec.js';
import { decodeFlightData, encodeFlightData, type FlightData, type OutgoingFlightData } from '../src/transport/flight-wire.js';
import { FlightClient } from '../src/transport/flight-client.js';
import { FlightServer, receivedName } from '../src/transport/flight-server.js';
import { received } from '../src/transport/flight-message.js';
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
