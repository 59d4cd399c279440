// StreamReader.readBlocking(), the reader that sleeps in poll() on its thread (and read()'s
// timeout, the event loop's sleep). Producers that must run while the reader blocks are real
// processes (the Node program of the stream bench, bench/stream_peer.ts) or this thread, with
// the reader in a worker.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { Field, Int32, Schema, Table, makeVector } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { native } from '../src/native.js';
import { connect } from '../src/transport/channel.js';
import { listen } from '../src/transport/listener.js';
import { StreamReader } from '../src/stream/consumer.js';
import { StreamWriter } from '../src/stream/producer.js';
import { generateSymbolTable } from '../src/cli/symbols.js';
import { repoRoot, resources, ringFds, uniqueAddress, waitForNoLeaks } from './helpers.js';

const peerScript = path.join(repoRoot, 'dist', 'bench', 'stream_peer.js');
const code = (c: string) => (e: unknown) => e instanceof ArrowShmError && e.code === c;

/** A producer process writing `batches` 8-byte batches, one every `intervalMs`; `killAfterMs`: SIGKILLed by `timeout` meanwhile. */
function producer(address: string, batches: number, intervalMs: number, killAfterMs?: number): ChildProcess {
  const args = [peerScript, 'produce', '--address', address, '--bytes', '8', '--batches', String(batches), '--interval-ms', String(intervalMs), '--capacity-bytes', '65536'];
  const child = killAfterMs === undefined ? spawn(process.execPath, args, { stdio: 'ignore' }) : spawn('timeout', ['-s', 'KILL', `${killAfterMs / 1000}`, process.execPath, ...args], { stdio: 'ignore' });
  return child;
}

async function acceptFrom(child: ChildProcess, address: string, readTimeoutMs?: number) {
  const listener = listen(address);
  const exited = new Promise((r) => child.once('exit', r));
  const channel = await listener.accept();
  listener.close();
  const reader = await StreamReader.accept(channel, readTimeoutMs === undefined ? {} : { readTimeoutMs });
  const done = async () => {
    reader.close();
    channel.close();
    child.kill('SIGKILL');
    await exited;
  };
  return { reader, done };
}

test('readBlocking: every batch in order, sleeping in poll() between them, then null at the end; nothing leaks', async () => {
  const before = resources();
  const address = uniqueAddress('blocking');
  const child = producer(address, 40, 5);
  const { reader, done } = await acceptFrom(child, address);
  const sent: number[] = [];
  for (let read = reader.readBlocking(); read; read = reader.readBlocking()) {
    sent.push(read.batch.getChild('sent_ms')!.get(0) as number);
    read.release();
  }
  assert.equal(sent.length, 40);
  assert.deepEqual(sent, [...sent].sort((a, b) => a - b));
  assert.ok(reader.ended);
  assert.equal(reader.readBlocking(), null, 'the end stays the end');
  await done();
  await waitForNoLeaks(before, 'fds and mappings');
});

test('readBlocking: ERR_TIMEOUT after its timeout, and the stream goes on', async () => {
  const address = uniqueAddress('blocking-timeout');
  const child = producer(address, 2, 1500);
  const { reader, done } = await acceptFrom(child, address, 60_000);
  reader.readBlocking()!.release();
  const start = performance.now();
  assert.throws(() => reader.readBlocking(-1), code('ERR_INVALID_ARGUMENT'));
  assert.throws(() => reader.readBlocking(Number.NaN), code('ERR_INVALID_ARGUMENT'));
  assert.throws(() => reader.readBlocking(100), code('ERR_TIMEOUT'));
  const waited = performance.now() - start;
  assert.ok(waited >= 99 && waited < 1000, `waited ${waited} ms`);
  const second = reader.readBlocking(10_000)!;
  assert.equal(second.batch.numRows, 1);
  second.release();
  assert.equal(reader.readBlocking(10_000), null);
  await done();
});

test('readBlocking: a producer killed while the reader sleeps wakes it with ERR_PEER_CLOSED (its socket hangs up)', async () => {
  const before = resources();
  const address = uniqueAddress('blocking-dead');
  const child = producer(address, 100_000, 50, 1000);
  const { reader, done } = await acceptFrom(child, address);
  let read = 0;
  const start = performance.now();
  // The 10 s bound only turns a missed wake-up into ERR_TIMEOUT instead of a hung test.
  const error = (() => {
    try {
      for (;;) {
        const batch = reader.readBlocking(10_000);
        if (!batch) return null;
        batch.release();
        read++;
      }
    } catch (e) {
      return e;
    }
  })();
  assert.ok(code('ERR_PEER_CLOSED')(error), `got ${String(error)}`);
  assert.ok(read > 0 && performance.now() - start < 5000, `${read} batches in ${performance.now() - start} ms`);
  assert.throws(() => reader.readBlocking(), code('ERR_PEER_CLOSED'), 'the reader stays failed');
  await done();
  await waitForNoLeaks(before, 'fds and mappings');
});

/** An in-process stream: only for reads that never have to wait. */
async function localStream(capacityBytes: number, schema: Schema, readTimeoutMs?: number) {
  const address = uniqueAddress('blocking-local');
  const listener = listen(address);
  const [server, client] = await Promise.all([listener.accept(), connect(address)]);
  const [writer, reader] = await Promise.all([StreamWriter.open(client, schema, { capacityBytes }), StreamReader.accept(server, readTimeoutMs === undefined ? {} : { readTimeoutMs })]);
  const done = () => {
    reader.close();
    writer.abort();
    server.close();
    client.close();
    listener.close();
  };
  return { writer, reader, done };
}

test('read() (the event loop) fails with ERR_TIMEOUT after readTimeoutMs, clears its flag and timer, and reads on', async () => {
  const schema = new Schema([new Field('n', new Int32())]);
  const { writer, reader, done } = await localStream(65536, schema, 50);
  try {
    await assert.rejects(reader.read(), code('ERR_TIMEOUT'));
    await writer.write(new Table({ n: makeVector(Int32Array.of(7)) }));
    const batch = (await reader.read())!;
    assert.equal(batch.batch.getChild('n')!.get(0), 7);
    batch.release();
    const late = reader.read(); // asleep: the write below wakes it through the eventfd
    await new Promise((r) => setTimeout(r, 10));
    await writer.write(new Table({ n: makeVector(Int32Array.of(8)) }));
    const woken = (await late)!;
    assert.equal(woken.batch.getChild('n')!.get(0), 8);
    woken.release();
  } finally {
    done();
  }
});

test('readBlocking refuses a hostile ring (ERR_RING_INVALID) before it would sleep', async () => {
  const schema = new Schema([new Field('n', new Int32())]);
  const ringsBefore = new Set(ringFds());
  const { writer, reader, done } = await localStream(65536, schema);
  try {
    await writer.write(new Table({ n: makeVector(Int32Array.of(1, 2, 3)) }));
    reader.readBlocking()!.release();
    const ringFd = ringFds().find((fd) => !ringsBefore.has(fd))!;
    const page = native.mmap(ringFd, 4096, true);
    new BigUint64Array(page)[8] = 0n; // the write position goes back
    assert.throws(() => reader.readBlocking(1000), code('ERR_RING_INVALID'));
    native.unmap(page);
  } finally {
    done();
  }
});

test('readBlocking: a batch in its own segment is read once its segment arrived, else undefined (then read() waits for it)', async () => {
  const table = generateSymbolTable(20_000);
  const { writer, reader, done } = await localStream(65536, table.schema);
  try {
    await writer.write(table);
    const first = reader.readBlocking(1000) ?? (await reader.read());
    assert.equal(first!.batch.numRows, 20_000);
    first!.release();
    await writer.write(table);
    await new Promise((r) => setTimeout(r, 50)); // the event loop receives the segment
    const second = reader.readBlocking(1000);
    assert.equal(second!.batch.numRows, 20_000, 'an arrived segment is read without the event loop');
    second!.release();
  } finally {
    done();
  }
});

test('readBlocking in a worker thread: the worker sleeps in poll() while this thread writes the stream', async () => {
  const before = resources();
  const address = uniqueAddress('blocking-worker');
  const dist = path.join(repoRoot, 'dist', 'src');
  const worker = new Worker(
    `const { workerData, parentPort } = require('node:worker_threads');
    (async () => {
      const { listen } = await import(workerData.dist + '/transport/listener.js');
      const { StreamReader } = await import(workerData.dist + '/stream/consumer.js');
      const listener = listen(workerData.address);
      parentPort.postMessage('listening');
      const channel = await listener.accept();
      listener.close();
      const reader = await StreamReader.accept(channel);
      let batches = 0, sum = 0;
      for (let b = reader.readBlocking(10000) ?? (await reader.read()); b; b = reader.readBlocking(10000) ?? (await reader.read())) {
        batches++;
        sum += b.batch.getChild('n').get(0);
        b.release();
      }
      reader.close();
      channel.close();
      parentPort.postMessage({ batches, sum });
    })().catch((e) => parentPort.postMessage({ error: String(e && e.stack || e) }));`,
    { eval: true, workerData: { dist, address } },
  );
  // Every message kept from the start: the result may come before this thread asks for it.
  const messages: unknown[] = [];
  let waiting: ((m: unknown) => void) | null = null;
  worker.on('message', (m: unknown) => (waiting ? (waiting(m), (waiting = null)) : messages.push(m)));
  const next = () => new Promise<unknown>((resolve) => (messages.length ? resolve(messages.shift()) : (waiting = resolve)));
  assert.equal(await next(), 'listening');
  const channel = await connect(address);
  const writer = await StreamWriter.open(channel, new Schema([new Field('n', new Int32())]), { capacityBytes: 65536 });
  for (let i = 0; i < 100; i++) {
    await writer.write(new Table({ n: makeVector(Int32Array.of(i)) }));
    if (i % 10 === 0) await new Promise((r) => setTimeout(r, 5)); // let the worker fall asleep
  }
  await writer.close();
  assert.deepEqual(await next(), { batches: 100, sum: 4950 });
  channel.close();
  await worker.terminate();
  await waitForNoLeaks(before, 'fds and mappings');
});
