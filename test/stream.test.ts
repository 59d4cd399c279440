import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Dictionary, Field, Int32, RecordBatch, Schema, Struct, Table, Utf8, Vector, makeData, makeVector, tableToIPC, vectorFromArray } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { native } from '../src/native.js';
import { connect, type Channel } from '../src/transport/channel.js';
import { listen, type Listener } from '../src/transport/listener.js';
import { publish, subscribe } from '../src/stream/pubsub.js';
import { StreamReader } from '../src/stream/consumer.js';
import { RING_HEADER_BYTES, RingHeader } from '../src/stream/ring.js';
import { StreamWriter, type StreamWriterOptions } from '../src/stream/producer.js';
import { checksumSymbolTable, generateSymbolTable } from '../src/cli/symbols.js';
import { decodeTable } from '../src/ipc/reader.js';
import { cliScript, drainStream, goldDir, openFds, resources, ringFds, startListening, uniqueAddress, waitFor, waitForNoLeaks } from './helpers.js';

const code = (c: string) => (e: unknown) => e instanceof ArrowShmError && e.code === c;

async function pair(): Promise<{ listener: Listener; server: Channel; client: Channel }> {
  const address = uniqueAddress('stream');
  const listener = listen(address);
  const [server, client] = await Promise.all([listener.accept(), connect(address)]);
  return { listener, server, client };
}

/** A stream from client to server; the caller closes everything with `done()`. */
async function streamPair(t: TestContext, schema: Schema, options: StreamWriterOptions = {}) {
  const { listener, server, client } = await pair();
  const [writer, reader] = await Promise.all([StreamWriter.open(client, schema, options), StreamReader.accept(server, { readTimeoutMs: 20_000 })]);
  const done = () => {
    reader.close();
    writer.abort();
    server.close();
    client.close();
    listener.close();
  };
  t.after(done); // also when an assertion fails: a leaked handle would keep the test process alive
  return { writer, reader, done };
}

function numbered(first: number, rows: number): Table {
  return new Table({
    seq: makeVector(Int32Array.from({ length: rows }, (_, i) => first + i)),
    label: vectorFromArray(Array.from({ length: rows }, (_, i) => `row ${first + i}`), new Utf8()),
  });
}

const isSettled = async (p: Promise<unknown>): Promise<boolean> => {
  const marker = Symbol();
  return (await Promise.race([p.then(() => true, () => true), new Promise((r) => setTimeout(() => r(marker), 50))])) !== marker;
};

test('a stream delivers every batch in order, each read in place from the shared ring', async (t) => {
  const before = resources();
  const schema = numbered(0, 1).schema;
  const { writer, reader, done } = await streamPair(t, schema, { capacityBytes: 1 << 16 });
  const sending = (async () => {
    let next = 0;
    for (let i = 0; i < 300; i++) {
      const rows = 1 + (i % 17);
      await writer.write(numbered(next, rows));
      next += rows;
    }
    await writer.close();
  })();
  let expected = 0;
  for await (const batch of reader) {
    const seq = batch.getChild('seq')!;
    assert.equal(seq.data[0]!.values.buffer, reader.sharedBuffer, 'column values are views of the ring');
    for (let i = 0; i < batch.numRows; i++) {
      assert.equal(seq.get(i), expected);
      assert.equal(batch.getChild('label')!.get(i), `row ${expected}`);
      expected++;
    }
  }
  await sending;
  assert.equal(reader.batchesRead, 300);
  assert.ok(reader.ended);
  done();
  await waitForNoLeaks(before, 'fds and mappings');
});

test('dictionaries: sent whole, then as deltas when they grow, and replaced when they change', async (t) => {
  const type = new Dictionary(new Utf8(), new Int32(), 0);
  const schema = new Schema([new Field('word', type, true)]);
  const chunk = (words: string[]) => vectorFromArray(words, new Utf8()).data[0]!;
  const first = chunk(['alpha', 'beta']);
  const batchOf = (dictionary: Vector<Utf8>, indices: number[]) => {
    const data = makeData({ type, length: indices.length, nullCount: 0, data: Int32Array.from(indices), dictionary });
    return new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: indices.length, nullCount: 0, children: [data] }));
  };
  const batches = [
    batchOf(new Vector([first]), [0, 1, 0]),
    batchOf(new Vector([first, chunk(['gamma'])]), [2, 0]), // grown: a delta
    batchOf(new Vector([chunk(['x', 'y'])]), [1, 1, 0]), // changed: a replacement
  ];
  const { writer, reader, done } = await streamPair(t, schema);
  const sending = (async () => {
    for (const b of batches) await writer.write(b);
    await writer.close();
  })();
  const words: string[][] = [];
  for await (const b of reader) words.push([...b.getChild('word')!].map(String));
  await sending;
  assert.deepEqual(words, [['alpha', 'beta', 'alpha'], ['gamma', 'alpha'], ['y', 'y', 'x']]);
  done();
});

test('a full ring fails fast with ERR_RING_FULL, or waits for the reader, by option', async (t) => {
  const schema = numbered(0, 1).schema;
  const big = numbered(0, 1000); // ~17 KB a record, under a quarter of the 128 KiB ring
  const capacityBytes = 1 << 17;
  let fitting = 0;
  {
    const { writer, reader, done } = await streamPair(t, schema, { capacityBytes, onFull: 'error' });
    try {
      await assert.rejects(async () => {
        for (;;) {
          await writer.write(big);
          fitting++;
        }
      }, code('ERR_RING_FULL'));
      assert.ok(fitting >= 4, `${fitting} records fitted`);
      const first = (await reader.read())!;
      await assert.rejects(writer.write(big), code('ERR_RING_FULL'), 'a batch held by the reader keeps its room');
      first.release();
      await writer.write(big); // room again
    } finally {
      done();
    }
  }
  {
    const { writer, reader, done } = await streamPair(t, schema, { capacityBytes, onFull: 'wait' });
    try {
      for (let i = 0; i < fitting; i++) await writer.write(big);
      const blocked = writer.write(big).then(() => writer.write(big));
      assert.equal(await isSettled(blocked), false, 'the producer waits while the ring is full');
      const held = [];
      for (let i = 0; i < 3; i++) held.push((await reader.read())!);
      assert.equal(await isSettled(blocked), false, 'batches held by the reader keep their room');
      for (const b of held) b.release();
      await blocked;
    } finally {
      done();
    }
  }
  {
    const { writer, reader, done } = await streamPair(t, schema, { maxMessages: 3, onFull: 'error' });
    try {
      for (let i = 0; i < 3; i++) await writer.write(numbered(i, 1));
      await assert.rejects(writer.write(numbered(3, 1)), (e: unknown) => code('ERR_RING_FULL')(e) && /maxMessages 3/.test((e as Error).message));
      (await reader.read())!.release();
      await writer.write(numbered(3, 1));
      // The end record does not fail fast: closing a full stream waits until the reader makes room.
      const closing = writer.close();
      assert.equal(await isSettled(closing), false, 'close waits for room for the end record');
      let rows = 0;
      for await (const b of reader) rows += b.numRows;
      await closing;
      assert.equal(rows, 3, 'the three batches still in the ring, then the end');
    } finally {
      done();
    }
  }
});

test('a batch larger than a quarter of the ring travels in its own sealed segment', async (t) => {
  const table = generateSymbolTable(50_000); // ~3 MB
  const { writer, reader, done } = await streamPair(t, table.schema, { capacityBytes: 1 << 16 });
  const sending = writer.write(table).then(() => writer.write(generateSymbolTable(10))).then(() => writer.close());
  const big = (await reader.read())!;
  assert.equal(big.batch.numRows, 50_000);
  assert.notEqual(big.batch.getChild('start_line')!.data[0]!.values.buffer, reader.sharedBuffer);
  assert.equal(checksumSymbolTable(tableFromBatch(big.batch)), checksumSymbolTable(table));
  big.release();
  const small = (await reader.read())!;
  assert.equal(small.batch.numRows, 10);
  small.release();
  assert.equal(await reader.read(), null);
  await sending;
  done();
});

function tableFromBatch(batch: RecordBatch): Table {
  return new Table(batch);
}

test('a reader detects a corrupted ring (ERR_RING_INVALID) and a hostile STREAM_OPEN is refused', async (t) => {
  const schema = numbered(0, 1).schema;
  const before = new Set(ringFds());
  const { writer, reader, done } = await streamPair(t, schema);
  await writer.write(numbered(0, 5));
  (await reader.read())!.release();
  // Scribble over the ring as a hostile producer would: the write position goes backwards.
  const ringFd = ringFds().find((fd) => !before.has(fd))!;
  const page = native.mmap(ringFd, 4096, true);
  new BigUint64Array(page)[8] = 0n;
  await assert.rejects(reader.read(), code('ERR_RING_INVALID'));
  native.unmap(page);
  done();

  // An unsealed "ring": the consumer refuses it and the producer hears why.
  const { listener, server, client } = await pair();
  const fake = native.memfdCreate('not-a-ring', 4096 + 65536);
  const prologue = native.memfdCreate('prologue', 64);
  const [e1, e2] = [native.eventfd(), native.eventfd()];
  const sent = client.streams.sendStreamFrame(
    { kind: 8, ipcLength: 8n, fdCount: 4, metadata: { stream_id: '1', reader_slot: '0', start_position: '0', capacity: '65536' } },
    [fake, prologue, e1, e2],
    2000,
  );
  const fdsBefore = openFds();
  await assert.rejects(StreamReader.accept(server), code('ERR_SEGMENT_UNSEALED'));
  await assert.rejects(sent.acked, (e: unknown) => code('ERR_SEGMENT_UNSEALED')(e) && (e as ArrowShmError).remote);
  assert.ok(openFds() <= fdsBefore, 'the refused fds were closed');
  for (const fd of [fake, prologue, e1, e2]) native.close(fd);
  server.close();
  client.close();
  listener.close();
});

test('publish/subscribe: subscribers join and leave at any time, a late joiner gets the dictionaries it needs', async () => {
  const address = uniqueAddress('pub');
  const type = new Dictionary(new Utf8(), new Int32(), 0);
  const schema = new Schema([new Field('word', type, true)]);
  const words = vectorFromArray(['red', 'green', 'blue'], type);
  const batch = (i: number) => new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: 1, nullCount: 0, children: [words.data[0]!.slice(i % 3, 1)] }));
  const publication = publish(address, schema);
  const early = await Promise.all([subscribe(address), subscribe(address), subscribe(address)]);
  await publication.waitForSubscribers(3, { timeoutMs: 5000 });
  const readAll = async (r: StreamReader) => {
    const got: string[] = [];
    for await (const b of r) got.push(String(b.getChild('word')!.get(0)));
    r.close();
    return got;
  };
  const leaver = early.pop()!;
  const results = early.map(readAll);
  for (let i = 0; i < 4; i++) await publication.write(batch(i));
  (await leaver.read())!.release();
  leaver.close(); // leaves mid-stream: its slot is freed
  await waitFor(() => publication.subscribers === 2, 'the leaver is detached');
  const late = await subscribe(address);
  await waitFor(() => publication.subscribers === 3, 'the late joiner is attached');
  const lateResult = readAll(late);
  for (let i = 4; i < 8; i++) await publication.write(batch(i));
  await publication.close({ timeoutMs: 5000 });
  const all = ['red', 'green', 'blue', 'red', 'green', 'blue', 'red', 'green'];
  assert.deepEqual(await Promise.all(results), [all, all]);
  assert.deepEqual(await lateResult, all.slice(4));
});

test('8 subscribers share one copy of every batch: one ring, mapped by all, no per-subscriber data', async () => {
  const address = uniqueAddress('pub8');
  const table = generateSymbolTable(2000);
  const capacity = 1 << 22;
  const ringInodes = () => new Set(readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('/memfd:arrow-shm-ring')).map((l) => l.split(/\s+/)[4]));
  const before = ringInodes();
  const publication = publish(address, table.schema, { capacityBytes: capacity });
  const readers = await Promise.all(Array.from({ length: 8 }, () => subscribe(address)));
  await publication.waitForSubscribers(8);
  const writing = (async () => {
    for (let i = 0; i < 20; i++) await publication.write(table);
    await publication.close({ timeoutMs: 10_000 });
  })();
  const held = await Promise.all(readers.map(async (r) => (await r.read())!));
  // Every subscriber's batch is a view of the same ring pages (same memfd inode, mapped by each).
  const inodes = [...ringInodes()].filter((i) => !before.has(i));
  assert.equal(inodes.length, 1, 'one ring segment for everyone');
  const mappings = readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('/memfd:arrow-shm-ring') && l.split(/\s+/)[4] === inodes[0]);
  assert.equal(mappings.length, 2 + 8 * 2, 'producer and 8 readers map its header and its data');
  for (const b of held) assert.equal(b.batch.numRows, 2000);
  const shmemBefore = shmemKiB();
  for (const b of held) b.release();
  const counts = await Promise.all(
    readers.map(async (r) => {
      let n = 1;
      for await (const _ of r) n++;
      r.close();
      return n;
    }),
  );
  await writing;
  assert.deepEqual(counts, Array(8).fill(20));
  // 20 batches × 8 subscribers went through a 4 MiB ring: shared memory never grew by 8 copies.
  const perBatch = table.batches.reduce((n, b) => n + b.data.children.reduce((m, c) => m + (c.values?.byteLength ?? 0), 0), 0);
  assert.ok(shmemKiB() - shmemBefore < (8 * 20 * perBatch) / 1024 / 2, 'shared memory did not grow with the number of subscribers');
});

function shmemKiB(): number {
  return Number(/Shmem:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))![1]);
}

test('a slow subscriber holds the producer back: nothing is dropped', async () => {
  const address = uniqueAddress('slow');
  const schema = numbered(0, 1).schema;
  const publication = publish(address, schema, { capacityBytes: 1 << 16 });
  const [fast, slow] = await Promise.all([subscribe(address), subscribe(address)]);
  await publication.waitForSubscribers(2);
  const writing = (async () => {
    for (let i = 0; i < 40; i++) await publication.write(numbered(i * 400, 400));
    await publication.close();
  })();
  let fastCount = 0;
  const fastDone = (async () => {
    for await (const _ of fast) fastCount++;
  })();
  await waitFor(() => fastCount >= 4, 'the fast subscriber reads');
  assert.equal(await isSettled(writing), false, 'the producer waits for the slow subscriber');
  assert.ok(fastCount < 40);
  let slowRows = 0;
  for await (const b of slow) {
    slowRows += b.numRows;
    await new Promise((r) => setTimeout(r, 1));
  }
  await Promise.all([writing, fastDone]);
  assert.equal(fastCount, 40);
  assert.equal(slowRows, 40 * 400);
  fast.close();
  slow.close();
});

test('a subscriber killed with SIGKILL mid-stream frees its slot; the publication goes on', async () => {
  const address = uniqueAddress('kill-sub');
  const schema = numbered(0, 1).schema;
  const publication = publish(address, schema, { capacityBytes: 1 << 16 });
  const child = spawn(process.execPath, [cliScript, 'sub', '--socket', address, '--timeout-ms', '20000'], { stdio: 'ignore' });
  const survivor = await subscribe(address);
  await publication.waitForSubscribers(2, { timeoutMs: 10000 });
  let rows = 0;
  const reading = (async () => {
    for await (const b of survivor) rows += b.numRows;
  })();
  for (let i = 0; i < 5; i++) await publication.write(numbered(i, 100));
  child.kill('SIGKILL');
  await waitFor(() => publication.subscribers === 1, 'the dead subscriber is detached');
  for (let i = 0; i < 50; i++) await publication.write(numbered(i, 400)); // more than the ring holds
  await publication.close({ timeoutMs: 5000 });
  await reading;
  assert.equal(rows, 5 * 100 + 50 * 400);
  survivor.close();
});

test('a producer killed with SIGKILL mid-stream: the reader drains what was published, then ERR_PEER_CLOSED; nothing leaks', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-stream-'));
  const file = path.join(dir, 'many.arrows');
  const table = generateSymbolTable(20_000);
  const batches = table.batches[0]!;
  const parts: RecordBatch[] = [];
  for (let i = 0; i < 100; i++) parts.push(batches.slice(i * 200, (i + 1) * 200));
  writeFileSync(file, tableToIPC(new Table(parts), 'stream'));
  const before = resources();
  const address = uniqueAddress('kill-producer');
  const listener = listen(address);
  const child = spawn(process.execPath, [cliScript, 'send', '--stream', '--socket', address, '--ring-bytes', '65536', file], { stdio: 'ignore' });
  const channel = await listener.accept();
  const reader = await StreamReader.accept(channel);
  const first = (await reader.read())!;
  assert.equal(first.batch.numRows, 200);
  first.release();
  child.kill('SIGKILL');
  const { read: rest, error } = await drainStream(reader);
  const read = 1 + rest;
  assert.ok(code('ERR_PEER_CLOSED')(error), `got ${String(error)}`);
  assert.ok(read < 100, `read ${read} batches before the end`);
  reader.close();
  channel.close();
  listener.close();
  rmSync(dir, { recursive: true });
  await waitForNoLeaks(before, 'fds and mappings');
});

test('1,000,000 small batches through one stream: all arrive, fds and mappings flat at the end', { timeout: 180_000 }, async (t) => {
  const before = resources();
  const small = numbered(0, 1);
  const { writer, reader, done } = await streamPair(t, small.schema, { capacityBytes: 1 << 20 });
  const total = 1_000_000;
  const batch = small.batches[0]!;
  const sending = (async () => {
    for (let i = 0; i < total; i++) await writer.write(batch);
    await writer.close();
  })();
  let n = 0;
  let midFds = 0;
  for await (const b of reader) {
    n += b.numRows;
    if (n === total / 2) midFds = openFds();
  }
  await sending;
  assert.equal(n, total);
  assert.ok(openFds() <= midFds, 'no fd per batch');
  done();
  await waitForNoLeaks(before, 'fds and mappings');
});

test('CLI: send --stream / recv --stream and pub / sub round-trip gold files', async () => {
  const gold = path.join(goldDir, '1.0.0-littleendian');
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-cli-stream-'));
  try {
    for (const name of ['generated_primitive', 'generated_dictionary', 'generated_nested']) {
      const file = path.join(gold, `${name}.stream`);
      const out = path.join(dir, `${name}.arrows`);
      const address = uniqueAddress('cli-stream');
      const recv = await startListening(process.execPath, [cliScript, 'recv', '--stream', '--socket', address, '--out', out, '--print', '--timeout-ms', '20000']);
      const send = spawn(process.execPath, [cliScript, 'send', '--stream', '--socket', address, '--timeout-ms', '20000', file], { stdio: 'ignore' });
      const sent = new Promise((r) => send.on('close', r));
      const received = await recv.done;
      assert.equal(await sent, 0);
      assert.equal(received.code, 0, received.stderr);
      assert.deepEqual(tableRows(readFileSync(out)), tableRows(readFileSync(file)), name);
    }
    const file = path.join(gold, 'generated_dictionary.stream');
    const address = uniqueAddress('cli-pub');
    const publisher = await startListening(process.execPath, [cliScript, 'pub', '--socket', address, '--subscribers', '2', '--timeout-ms', '20000', file, file]);
    const subs = [0, 1].map((i) => new Promise<number | null>((resolve) => spawn(process.execPath, [cliScript, 'sub', '--socket', address, '--out', path.join(dir, `sub${i}.arrows`), '--timeout-ms', '20000'], { stdio: 'ignore' }).on('close', resolve)));
    assert.deepEqual(await Promise.all(subs), [0, 0]);
    assert.equal((await publisher.done).code, 0);
    const once = tableRows(readFileSync(file));
    for (const i of [0, 1]) assert.deepEqual(tableRows(readFileSync(path.join(dir, `sub${i}.arrows`))), [...once, ...once]);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

function tableRows(bytes: Uint8Array): unknown[] {
  return JSON.parse(JSON.stringify(decodeTable(bytes).toArray(), (_, v) => (typeof v === 'bigint' ? v.toString() : v)));
}


test('a hostile subscriber scribbling its read position cannot make the publisher overwrite what others hold, nor crash it', async (t) => {
  const address = uniqueAddress('hostile-sub');
  const schema = numbered(0, 1).schema;
  const publication = publish(address, schema, { capacityBytes: 65536, writeTimeoutMs: 300 });
  t.after(() => publication.abort());
  const honest = await subscribe(address, { readTimeoutMs: 20_000 });
  const hostile = await subscribe(address);
  t.after(() => (honest.close(), hostile.close()));
  await publication.waitForSubscribers(2);
  // The ring's header page, mapped writable as every subscriber maps it.
  const ringFd = ringFds()[0]!;
  const page = native.mmap(ringFd, RING_HEADER_BYTES, true);
  const header = new RingHeader(page);
  t.after(() => native.unmap(page));
  // Which slot is the honest one: the one that moves when it releases a batch.
  await publication.write(numbered(0, 1));
  (await honest.read())!.release();
  const slots = [0, 1].filter((s) => header.slotState(s) !== 0);
  const honestSlot = slots.find((s) => header.readPosition(s) > 0)!;
  const hostileSlot = slots.find((s) => s !== honestSlot)!;
  assert.equal(slots.length, 2);

  // 1. "I released everything, and more": far ahead of the write position. The publisher clamps it
  //    and keeps publishing; the honest subscriber still gets every batch intact, in order.
  const received: number[] = [];
  const reading = (async () => {
    while (received.length < 200) {
      const batch = (await honest.read())!;
      const seq = batch.batch.getChild('seq')!;
      for (let i = 0; i < seq.length; i++) received.push(seq.get(i) as number);
      assert.equal(batch.batch.getChild('label')!.get(0), `row ${seq.get(0)}`);
      batch.release();
    }
  })();
  for (let i = 0; i < 100; i++) {
    header.setReadPosition(hostileSlot, Number.MAX_SAFE_INTEGER - i);
    await publication.write(numbered(1 + 2 * i, 2)); // 100 × ~1 KiB through a 64 KiB ring: it wraps
  }
  await reading;
  assert.deepEqual(received, Array.from({ length: 200 }, (_, i) => 1 + i));

  // 2. "I hold everything": position 0, far behind the window. Clamped to the oldest byte still in
  //    the ring, it holds the publisher like a stuck subscriber: a typed timeout, no crash.
  header.setReadPosition(hostileSlot, 0);
  await assert.rejects(
    (async () => {
      for (let i = 0; i < 100; i++) await publication.write(numbered(0, 2));
    })(),
    code('ERR_TIMEOUT'),
  );
  assert.ok(header.readPosition(honestSlot) > 0);
});
