// Streams between Node and the Python peer, both ways (docs/PROTOCOL.md §12): the CLI on gold
// files, publish/subscribe with subscribers of both languages, back-pressure from a slow or stuck
// Python consumer, SIGKILL on either side, and many small batches with fd counts flat.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { Int32, RecordBatch, Table, Utf8, makeVector, tableToIPC, vectorFromArray } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { decodeTable } from '../src/ipc/reader.js';
import { publish, subscribe } from '../src/stream/pubsub.js';
import { listen } from '../src/transport/listener.js';
import { cliScript, drainStream, goldDir, hasVenv, repoRoot, resources, startListening, uniqueAddress, venvPython, waitFor, waitForNoLeaks } from './helpers.js';
import { StreamWriter } from '../src/stream/producer.js';
import { StreamReader } from '../src/stream/consumer.js';

const skip = hasVenv() ? false : 'the Python venv is not prepared (scripts/ensure-venv.sh)';
const streamPeer = path.join(repoRoot, 'test', 'python', 'stream_peer.py');
const code = (c: string) => (e: unknown) => e instanceof ArrowShmError && e.code === c;

function numbered(first: number, rows: number): Table {
  return new Table({
    seq: makeVector(Int32Array.from({ length: rows }, (_, i) => first + i)),
    label: vectorFromArray(Array.from({ length: rows }, (_, i) => `row ${first + i}`), new Utf8()),
  });
}

/** Sum of 0..n-1: what the peers report for `numbered` batches covering 0..n-1. */
const sumTo = (n: number) => (n * (n - 1)) / 2;

function tableRows(bytes: Uint8Array): unknown[] {
  return JSON.parse(JSON.stringify(decodeTable(bytes).toArray(), (_, v) => (typeof v === 'bigint' ? v.toString() : v)));
}

/** A Python process of stream_peer.py; `lines` yields its JSON lines as they come. */
function python(args: string[]): { child: ChildProcess; next: () => Promise<Record<string, unknown>>; exited: Promise<{ code: number | null; stderr: string }> } {
  const child = spawn(venvPython, [streamPeer, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const queue: string[] = [];
  const waiting: ((line: string) => void)[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const w = waiting.shift();
    if (w) w(line);
    else queue.push(line);
  });
  const exited = new Promise<{ code: number | null; stderr: string }>((resolve) => child.on('close', (c) => resolve({ code: c, stderr })));
  const next = () =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const line = queue.shift();
      if (line !== undefined) return resolve(JSON.parse(line));
      waiting.push((l) => resolve(JSON.parse(l)));
      void exited.then((e) => reject(new Error(`python exited (${e.code}) before printing: ${e.stderr}`)));
    });
  return { child, next, exited };
}

function run(cmd: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    child.on('close', (c) => resolve({ code: c, stderr }));
  });
}

const peers = { node: [process.execPath, cliScript], python: [venvPython, '-m', 'arrow_shm'] } as const;

test('CLI: send --stream / recv --stream between Node and Python, both ways, on gold files', { skip }, async () => {
  const gold = path.join(goldDir, '1.0.0-littleendian');
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-py-stream-'));
  try {
    for (const [from, to] of [['node', 'python'], ['python', 'node']] as const) {
      for (const name of ['generated_primitive', 'generated_dictionary', 'generated_nested', 'generated_datetime', 'generated_custom_metadata']) {
        const file = path.join(gold, `${name}.stream`);
        const out = path.join(dir, `${from}-${to}-${name}.arrows`);
        const address = uniqueAddress('py-stream');
        const [rcmd, ...rargs] = peers[to];
        const recv = await startListening(rcmd, [...rargs, 'recv', '--stream', '--socket', address, '--out', out, '--timeout-ms', '20000']);
        const [scmd, ...sargs] = peers[from];
        const sent = await run(scmd, [...sargs, 'send', '--stream', '--socket', address, '--ring-bytes', '65536', '--timeout-ms', '20000', file]);
        const received = await recv.done;
        assert.equal(sent.code, 0, `${from} send ${name}: ${sent.stderr}`);
        assert.equal(received.code, 0, `${to} recv ${name}: ${received.stderr}`);
        assert.deepEqual(tableRows(readFileSync(out)), tableRows(readFileSync(file)), `${from} -> ${to}: ${name}`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test('pub/sub across languages: a Node publication to Node and Python subscribers, a Python publication to both', { skip }, async () => {
  const file = path.join(goldDir, '1.0.0-littleendian', 'generated_dictionary.stream');
  const once = tableRows(readFileSync(file));
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-py-pub-'));
  try {
    for (const publisher of ['node', 'python'] as const) {
      const address = uniqueAddress(`py-pub-${publisher}`);
      const [pcmd, ...pargs] = peers[publisher];
      const pub = await startListening(pcmd, [...pargs, 'pub', '--socket', address, '--subscribers', '3', '--timeout-ms', '20000', file, file]);
      const subs = (['python', 'node', 'python'] as const).map((lang, i) => {
        const [cmd, ...args] = peers[lang];
        return run(cmd, [...args, 'sub', '--socket', address, '--out', path.join(dir, `${publisher}-${i}.arrows`), '--timeout-ms', '20000']);
      });
      for (const [i, s] of (await Promise.all(subs)).entries()) assert.equal(s.code, 0, `subscriber ${i} of the ${publisher} publication: ${s.stderr}`);
      const published = await pub.done;
      assert.equal(published.code, 0, published.stderr);
      for (const i of [0, 1, 2]) assert.deepEqual(tableRows(readFileSync(path.join(dir, `${publisher}-${i}.arrows`))), [...once, ...once], `${publisher} publication, subscriber ${i}`);
    }
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test('a slow Python subscriber holds a Node publication back: nothing is dropped, the fast one waits', { skip }, async () => {
  const address = uniqueAddress('py-slow');
  const publication = publish(address, numbered(0, 1).schema, { capacityBytes: 1 << 16 });
  const slow = python(['slow-sub', address, '5']);
  const fast = await subscribe(address);
  await publication.waitForSubscribers(2, { timeoutMs: 20_000 });
  let fastRows = 0;
  const fastDone = (async () => {
    for await (const b of fast) fastRows += b.numRows;
  })();
  const batches = 60;
  let written = 0;
  const writing = (async () => {
    for (let i = 0; i < batches; i++, written++) await publication.write(numbered(i * 400, 400));
    await publication.close({ timeoutMs: 20_000 });
  })();
  assert.deepEqual(await slow.next(), { event: 'joined' });
  await waitFor(() => written >= 5, 'the first batches are written');
  assert.ok(written < batches, 'the 64 KiB ring cannot hold every batch: the producer waits for the slow subscriber');
  await writing;
  await fastDone;
  assert.deepEqual(await slow.next(), { batches, rows: batches * 400, sum: sumTo(batches * 400) });
  assert.equal(fastRows, batches * 400);
  assert.equal((await slow.exited).code, 0);
  fast.close();
});

test('a full ring: with onFull "error" Node fails fast while a Python reader holds its batches, then goes on once they are released', { skip }, async () => {
  const address = uniqueAddress('py-hold');
  const listener = listen(address);
  const holder = python(['hold', address, '3']);
  const channel = await listener.accept();
  const writer = await StreamWriter.open(channel, numbered(0, 1).schema, { capacityBytes: 1 << 16, onFull: 'error' });
  const rows = 400;
  let written = 0;
  let full: unknown;
  for (;;) {
    try {
      await writer.write(numbered(written * rows, rows));
      written++;
    } catch (e) {
      full = e;
      break;
    }
  }
  assert.ok(code('ERR_RING_FULL')(full), String(full));
  assert.deepEqual(await holder.next(), { event: 'holding' });
  await assert.rejects(writer.write(numbered(written * rows, rows)), code('ERR_RING_FULL'));
  holder.child.stdin!.write('release\n');
  const closing = (async () => {
    // Room comes back as the reader releases: retry until the batch fits (fail fast means: never wait).
    for (;;) {
      try {
        await writer.write(numbered(written * rows, rows));
        written++;
        break;
      } catch (e) {
        if (!code('ERR_RING_FULL')(e)) throw e;
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    await writer.close({ timeoutMs: 20_000 });
  })();
  await closing;
  assert.deepEqual(await holder.next(), { batches: written, rows: written * rows, sum: sumTo(written * rows) });
  assert.equal((await holder.exited).code, 0);
  channel.close();
  listener.close();
});

test('SIGKILL: a Python producer killed mid-stream, and a Python subscriber killed mid-publication; Node recovers, nothing leaks', { skip }, async () => {
  const before = resources();
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-py-kill-'));
  const file = path.join(dir, 'many.arrows');
  const parts: RecordBatch[] = [];
  for (let i = 0; i < 100; i++) parts.push(numbered(i * 200, 200).batches[0]!);
  writeFileSync(file, tableToIPC(new Table(parts), 'stream'));

  // The producer: it fills the 64 KiB ring and waits for room when it is killed.
  const address = uniqueAddress('py-kill-producer');
  const listener = listen(address);
  const producer = spawn(venvPython, ['-m', 'arrow_shm', 'send', '--stream', '--socket', address, '--ring-bytes', '65536', file], { stdio: 'ignore' });
  const channel = await listener.accept();
  const reader = await StreamReader.accept(channel, { readTimeoutMs: 20_000 });
  const first = (await reader.read())!;
  assert.deepEqual(first.batch.getChildAt(0)!.get(0), 0);
  first.release();
  producer.kill('SIGKILL');
  const { read: rest, error } = await drainStream(reader);
  const read = 1 + rest;
  assert.ok(code('ERR_PEER_CLOSED')(error), `got ${String(error)}`);
  assert.ok(read < 100, `read ${read} batches, not the whole stream`);
  reader.close();
  channel.close();
  listener.close();

  // The subscriber: killed while it holds records, its slot is reclaimed and the publication goes on.
  const pubAddress = uniqueAddress('py-kill-sub');
  const publication = publish(pubAddress, numbered(0, 1).schema, { capacityBytes: 1 << 16 });
  const victim = python(['slow-sub', pubAddress, '100000']);
  const survivor = await subscribe(pubAddress);
  await publication.waitForSubscribers(2, { timeoutMs: 20_000 });
  assert.deepEqual(await victim.next(), { event: 'joined' });
  let rows = 0;
  const reading = (async () => {
    for await (const b of survivor) rows += b.numRows;
  })();
  for (let i = 0; i < 5; i++) await publication.write(numbered(i * 100, 100));
  victim.child.kill('SIGKILL');
  await victim.exited;
  await waitFor(() => publication.subscribers === 1, 'the dead subscriber is detached', 10_000);
  for (let i = 0; i < 50; i++) await publication.write(numbered(i * 400, 400)); // more than the ring holds
  await publication.close({ timeoutMs: 20_000 });
  await reading;
  assert.equal(rows, 5 * 100 + 50 * 400);
  survivor.close();
  rmSync(dir, { recursive: true });
  await waitForNoLeaks(before, 'fds and mappings');
});

test('100,000 small batches from Node to Python, read in place; fds flat on both sides', { skip, timeout: 180_000 }, async () => {
  const before = resources();
  const address = uniqueAddress('py-many');
  const listener = listen(address);
  const counter = python(['count', address]);
  const channel = await listener.accept();
  const writer = await StreamWriter.open(channel, numbered(0, 1).schema, { capacityBytes: 1 << 20 });
  const batch = numbered(7, 1).batches[0]!;
  const total = 100_000;
  for (let i = 0; i < total; i++) await writer.write(batch);
  await writer.close({ timeoutMs: 60_000 });
  const result = await counter.next();
  assert.deepEqual({ batches: result.batches, rows: result.rows, in_place: result.in_place }, { batches: total, rows: total, in_place: true });
  assert.ok((result.fds_mid as number) > (result.fds_start as number), 'the stream holds fds while it runs');
  assert.equal(result.fds_end, result.fds_start, 'the Python reader gave back every fd');
  assert.equal((await counter.exited).code, 0);
  channel.close();
  listener.close();
  await waitForNoLeaks(before, 'Node fds');
});
