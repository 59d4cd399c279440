// Streams over Arrow Flight (docs/PROTOCOL.md §13.5): a publication on grpc:// is read live by a real
// pyarrow.flight client's do_get, batch by batch (it reports batch k before batch k+1 is
// published); a pyarrow.flight client's incremental do_put is read batch by batch (each batch is
// acknowledged before pyarrow writes the next); ListFlights lists the publication; a subscriber
// that makes no room is dropped while the others go on; a reader that does not read pauses the
// publication (flow control, nothing buffered without bound); per-batch limits; the CLI's stream
// commands over grpc://. Nothing stays open, no child process is left behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Dictionary, Int32, Int64, RecordBatch, Table, Utf8, tableToIPC, vectorFromArray } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { publish, subscribe } from '../src/stream/pubsub.js';
import { FlightPublication, FlightStreamListener, FlightStreamWriter } from '../src/stream/flight.js';
import { FlightClient } from '../src/transport/flight-client.js';
import { decodeTable } from '../src/ipc/reader.js';
import { toFlightData } from '../src/transport/flight-codec.js';
import { cliScript, hasVenv, repoRoot, resources, runProcess, sleep, startListening, venvPython, waitFor, waitForNoLeaks } from './helpers.js';

const skip = hasVenv() ? false : 'the Python venv is not prepared (scripts/ensure-venv.sh)';
const peerScript = path.join(repoRoot, 'test', 'python', 'flight_stream_peer.py');
const code = (c: string) => (e: unknown) => e instanceof ArrowShmError && e.code === c;

/** flight_stream_peer.py, read line by line as it prints (its lines are the evidence of order). */
class Peer {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  readonly exited: Promise<number | null>;
  #stderr = '';
  #waiters: (() => void)[] = [];

  constructor(args: string[], env: Record<string, string> = {}) {
    this.child = spawn(venvPython, [peerScript, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    this.child.stderr!.on('data', (d) => (this.#stderr += d));
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      this.lines.push(line);
      for (const wake of this.#waiters.splice(0)) wake();
    });
    this.exited = new Promise((resolve) => this.child.on('close', (c) => (resolve(c), this.#waiters.splice(0).forEach((w) => w()))));
  }

  /** The `n`th line (0-based), once printed. */
  async line(n: number, ms = 30_000): Promise<string> {
    const deadline = Date.now() + ms;
    while (this.lines.length <= n) {
      if (this.child.exitCode !== null || Date.now() > deadline) throw new Error(`no line ${n} from the peer; lines: ${this.lines.join(' | ')}; stderr: ${this.#stderr}`);
      await Promise.race([new Promise<void>((r) => this.#waiters.push(r)), sleep(100)]);
    }
    return this.lines[n]!;
  }

  send(line: string): void {
    this.child.stdin!.write(line + '\n');
  }

  get stderr(): string {
    return this.#stderr;
  }

  async kill(): Promise<void> {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }
}

const dictionaryType = new Dictionary(new Utf8(), new Int32(), 0);

/** Batch k: column k (int64) = k on every row, a dictionary column (sent with each batch: a replacement). */
function batch(k: number, rows = 3): RecordBatch {
  return new Table({
    k: vectorFromArray(Array.from({ length: rows }, () => BigInt(k)), new Int64()),
    s: vectorFromArray(Array.from({ length: rows }, (_, i) => `sym${(i + k) % 4}`), dictionaryType),
  }).batches[0]!;
}

/** A batch of about `bytes` bytes (one int64 column). */
function bigBatch(k: number, bytes: number): RecordBatch {
  return new Table({ k: vectorFromArray(Array.from({ length: bytes / 8 }, () => BigInt(k)), new Int64()) }).batches[0]!;
}

test('a real pyarrow.flight do_get reads a live publication batch by batch (token); ListFlights and GetFlightInfo list it', { skip, timeout: 120_000 }, async () => {
  const before = resources();
  const schema = batch(0).schema;
  const publication = publish(`grpc://127.0.0.1:0`, schema, { token: 's3cret', name: 'live/ticks', metadata: { topic: 'ticks' } });
  await publication.ready();
  const client = await FlightClient.connect(publication.address, { token: 's3cret' });
  let peer: Peer | null = null;
  try {
    const listed = await client.listFlights('live/');
    assert.deepEqual(listed.map((f) => [f.name, f.totalRecords, f.totalBytes, f.metadata]), [['live/ticks', -1, -1, { topic: 'ticks' }]]);
    assert.deepEqual(listed[0]!.schema.fields.map((f) => `${f.name}: ${f.type}`), ['k: Int64', 's: Dictionary<Int32, Utf8>']);
    assert.equal(new TextDecoder().decode(listed[0]!.endpoints[0]!.ticket), 'live/ticks');
    assert.equal((await client.getFlightInfo('live/ticks')).name, 'live/ticks');

    peer = new Peer(['get', publication.address, 'live/ticks'], { ARROW_SHM_FLIGHT_TOKEN: 's3cret' });
    await publication.waitForSubscribers(1, { timeoutMs: 30_000 });
    assert.equal(await peer.line(0), 'schema ["k", "s"]');
    for (let k = 0; k < 5; k++) {
      // pyarrow has printed exactly the batches published so far: batch k arrives live, before k+1 exists.
      assert.equal(peer.lines.length, 1 + k);
      await publication.write(batch(k));
      assert.equal(await peer.line(1 + k), `batch ${k} 3 ${k}`);
    }
    // Without the token: refused like any other call.
    const anonymous = await runProcess(venvPython, [peerScript, 'get', publication.address, 'live/ticks'], { timeoutMs: 30_000 });
    assert.match(anonymous.stdout, /^error FlightUnauthenticatedError/m);
    await publication.close({ timeoutMs: 10_000 });
    assert.equal(await peer.line(6), 'end 5');
    assert.equal(await peer.exited, 0, peer.stderr);
  } finally {
    await peer?.kill();
    client.close();
    await publication.abort();
  }
  await waitForNoLeaks(before, 'publication and its subscriber');
});

test("a real pyarrow.flight client's incremental do_put is read batch by batch by a stream reader", { skip, timeout: 120_000 }, async () => {
  const before = resources();
  const listener = await FlightStreamListener.listen('grpc://127.0.0.1:0', { token: 's3cret' });
  const peer = new Peer(['put', listener.address, 'feeds/ticks', '5', '1000'], { ARROW_SHM_FLIGHT_TOKEN: 's3cret' });
  try {
    const reader = await listener.accept({ timeoutMs: 30_000 });
    try {
      assert.equal(reader.name, 'feeds/ticks');
      assert.deepEqual(reader.schema.fields.map((f) => f.name), ['k', 'v']);
      for (let k = 0; k < 5; k++) {
        const next = await reader.read();
        assert.ok(next, `batch ${k}`);
        // pyarrow waits for this acknowledgement before it writes batch k+1: read live, one by one.
        assert.equal(await peer.line(k), `sent ${k}`);
        assert.equal(peer.lines.length, k + 1);
        assert.equal(next.batch.numRows, 1000);
        assert.equal(next.batch.getChild('k')!.get(999), BigInt(k));
        assert.equal(next.batch.getChild('v')!.get(0), k / 2);
        next.release();
        peer.send('ack');
      }
      assert.equal(await reader.read(), null, 'the end of the call is the end of the stream');
      assert.equal(await peer.line(5), 'done');
      assert.equal(await peer.exited, 0, peer.stderr);
    } finally {
      reader.close();
    }
  } finally {
    await peer.kill();
    await listener.close();
  }
  await waitForNoLeaks(before, 'stream listener and its writer');
});

test('over grpc+tls:// with a token: pyarrow.flight do_put streams into a listener, pyarrow do_get reads a publication, a Node subscriber too', { skip, timeout: 120_000 }, async () => {
  const before = resources();
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-stream-tls-'));
  const keyFile = path.join(dir, 'server.key');
  const certificateFile = path.join(dir, 'server.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', keyFile, '-out', certificateFile], { stdio: 'ignore' });
  const tls = { key: readFileSync(keyFile), certificate: readFileSync(certificateFile) };
  const env = { ARROW_SHM_FLIGHT_TOKEN: 's3cret', ARROW_SHM_FLIGHT_CA: certificateFile };
  const listener = await FlightStreamListener.listen('grpc+tls://127.0.0.1:0', { tls, token: 's3cret' });
  const publication = FlightPublication.create('grpc+tls://127.0.0.1:0', batch(0).schema, { tls, token: 's3cret' });
  const peers: Peer[] = [];
  try {
    const put = new Peer(['put', listener.address, 'secure', '3', '10'], env);
    peers.push(put);
    const reader = await listener.accept({ timeoutMs: 30_000 });
    for (let k = 0; k < 3; k++) {
      assert.equal((await reader.read())!.batch.getChild('k')!.get(0), BigInt(k));
      put.send('ack');
    }
    assert.equal(await reader.read(), null);
    reader.close();
    assert.equal(await put.exited, 0, put.stderr);

    await publication.ready();
    const get = new Peer(['get', publication.address, 'stream'], env);
    peers.push(get);
    const node = await subscribe(publication.address as `grpc+tls://${string}`, { token: 's3cret', rootCertificate: tls.certificate });
    await assert.rejects(subscribe(publication.address as `grpc+tls://${string}`, { token: 'guess', rootCertificate: tls.certificate }), code('ERR_PEER_CREDENTIALS'));
    await publication.waitForSubscribers(2, { timeoutMs: 30_000 });
    for (let k = 0; k < 3; k++) await publication.write(batch(k));
    await publication.close({ timeoutMs: 10_000 });
    assert.equal(await get.line(4), 'end 3');
    for (let k = 0; k < 3; k++) assert.equal((await node.read())!.batch.getChild('k')!.get(0), BigInt(k));
    assert.equal(await node.read(), null);
    node.close();
  } finally {
    for (const p of peers) await p.kill();
    await listener.close();
    await publication.abort();
    rmSync(dir, { recursive: true, force: true });
  }
  await waitForNoLeaks(before, 'TLS streams');
});

test('a subscriber that makes no room is dropped (writeTimeoutMs, ERR_TIMEOUT); the publication and the other subscriber go on', { skip, timeout: 180_000 }, async () => {
  const before = resources();
  const errors: ArrowShmError[] = [];
  const schema = bigBatch(0, 8).schema;
  const publication = FlightPublication.create('grpc://127.0.0.1:0', schema, { writeTimeoutMs: 1500, onSubscriberError: (e) => errors.push(e) });
  await publication.ready();
  const stalled = new Peer(['stall', publication.address, 'stream']);
  const reader = new Peer(['get', publication.address, 'stream']);
  try {
    await publication.waitForSubscribers(2, { timeoutMs: 30_000 });
    await publication.write(bigBatch(0, 8));
    assert.equal(await stalled.line(0), 'stalled');
    const batches = 400; // 400 x 256 KiB: far more than gRPC's windows and buffers hold
    for (let k = 1; k < batches; k++) await publication.write(bigBatch(k, 256 * 1024));
    await waitFor(() => errors.length > 0, 'the stalled subscriber was dropped', 10_000);
    assert.ok(errors.some(code('ERR_TIMEOUT')), String(errors));
    assert.match(errors[0]!.message, /made no room for 1500 ms \(writeTimeoutMs\): dropped/);
    assert.equal(publication.subscribers, 1);
    await publication.close({ timeoutMs: 30_000 });
    assert.equal(await reader.line(batches + 1, 60_000), `end ${batches}`);
    assert.equal(await reader.exited, 0, reader.stderr);
  } finally {
    await stalled.kill();
    await reader.kill();
    await publication.abort();
  }
  await waitForNoLeaks(before, 'publication with a dropped subscriber');
});

test('a reader that does not read pauses the publication through flow control; reading resumes it (node to node)', { timeout: 60_000 }, async () => {
  const before = resources();
  const publication = publish('grpc://127.0.0.1:0' as const, bigBatch(0, 8).schema);
  await publication.ready();
  const reader = await subscribe(publication.address as `grpc://${string}`, { maxQueuedBatches: 2 });
  try {
    await publication.waitForSubscribers(1);
    let written = 0;
    const writing = (async () => {
      for (let k = 0; k < 96; k++) {
        await publication.write(bigBatch(k, 1024 * 1024));
        written++;
      }
    })();
    writing.catch(() => {}); // awaited below; a failure before that is the assertion's
    await sleep(500);
    // 96 MiB to publish, nothing read: the writer waits once gRPC's buffers are full (16 messages
    // at each end, HTTP/2 windows) and the reader's queue (2): a bound in messages, not the stream.
    assert.ok(written >= 2 && written < 48, `${written} MiB written while nobody read`);
    for (let k = 0; k < 96; k++) {
      const next = await reader.read();
      assert.equal(next!.batch.getChild('k')!.get(0), BigInt(k));
      next!.release();
    }
    await writing;
    await publication.close();
    assert.equal(await reader.read(), null);
  } finally {
    reader.close();
    await publication.abort();
  }
  await waitForNoLeaks(before, 'paused publication');
});

test('limits per batch: a batch over maxCallBytes ends the stream with ERR_TOO_LARGE on both sides; a closed reader cancels the writer', { timeout: 60_000 }, async () => {
  const before = resources();
  const listener = await FlightStreamListener.listen('grpc://127.0.0.1:0', { limits: { maxCallBytes: 64 * 1024 } });
  try {
    const schema = bigBatch(0, 8).schema;
    const writer = await FlightStreamWriter.open(listener.address, schema, { name: 'big' });
    const reader = await listener.accept({ timeoutMs: 10_000 });
    // Many batches under the limit: the limit is per batch, not per call.
    for (let k = 0; k < 8; k++) await writer.write(bigBatch(k, 32 * 1024));
    for (let k = 0; k < 8; k++) (await reader.read())!.release();
    await writer.write(bigBatch(8, 128 * 1024)).catch(() => {});
    await assert.rejects(reader.read(), code('ERR_TOO_LARGE'));
    await assert.rejects(writer.close({ timeoutMs: 10_000 }), code('ERR_TOO_LARGE'));
    reader.close();

    const second = await FlightStreamWriter.open(listener.address, schema);
    const secondReader = await listener.accept({ timeoutMs: 10_000 });
    secondReader.close();
    await assert.rejects(
      (async () => {
        for (let k = 0; ; k++) await second.write(bigBatch(k, 8 * 1024));
      })(),
      code('ERR_CLOSED'),
    );
    second.abort();
  } finally {
    await listener.close();
  }
  await waitForNoLeaks(before, 'limited stream listener');
});

test('hostile stream writers: no Schema first, a stream cut inside a batch, a schema over the decoding limits, each with its typed error on both sides', { timeout: 60_000 }, async () => {
  const before = resources();
  const listener = await FlightStreamListener.listen('grpc://127.0.0.1:0', { limits: { ipc: { maxFields: 2 } } });
  const client = await FlightClient.connect(listener.address);
  try {
    const oneColumn = new Table({ k: vectorFromArray([1n, 2n], new Int64()) });
    const messages = toFlightData(oneColumn, { type: 'PATH', cmd: Buffer.alloc(0), path: ['x'] });
    // A RecordBatch where the Schema belongs.
    const noSchema = client.putFlightData(messages.slice(1));
    noSchema.catch(() => {}); // checked below, once the server side was
    await assert.rejects(listener.accept({ timeoutMs: 10_000 }), code('ERR_IPC_INVALID'));
    await assert.rejects(noSchema, code('ERR_IPC_INVALID'));
    // Schema and a dictionary, then the end of the call: the batch never came.
    const cut = toFlightData(new Table([batch(0)]), null).slice(0, 2);
    const cutPut = client.putFlightData(cut);
    const reader = await listener.accept({ timeoutMs: 10_000 });
    await assert.rejects(reader.read(), code('ERR_IPC_TRUNCATED'));
    reader.close();
    await cutPut.catch(() => {}); // the server took the call whole: its status is OK or the reader's error
    // Three fields where the listener's limits allow two: refused at the Schema, before any decoding.
    const wide = client.putFlightData(toFlightData(new Table({ a: vectorFromArray([1n], new Int64()), b: vectorFromArray([1n], new Int64()), c: vectorFromArray([1n], new Int64()) }), null));
    wide.catch(() => {});
    await assert.rejects(listener.accept({ timeoutMs: 10_000 }), code('ERR_IPC_LIMIT'));
    await assert.rejects(wide, code('ERR_IPC_LIMIT'));
  } finally {
    client.close();
    await listener.close();
  }
  await waitForNoLeaks(before, 'hostile stream writers');
});

test('CLI over grpc://: send --stream into recv --stream, pub into sub, the files pyarrow reads equal', { skip, timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-stream-cli-'));
  try {
    const input = path.join(dir, 'in.arrows');
    writeFileSync(input, tableToIPC(new Table(Array.from({ length: 6 }, (_, k) => batch(k, 100))), 'stream'));
    const expected = decodeTable(readFileSync(input));
    const same = (file: string) => {
      const got = decodeTable(readFileSync(file));
      assert.equal(got.batches.length, 6);
      const rows = (t: Table) => t.toArray().map((r) => JSON.stringify(r, (_, v) => (typeof v === 'bigint' ? String(v) : v)));
      assert.deepEqual(rows(got), rows(expected));
    };

    const recv = await startListening(process.execPath, [cliScript, 'recv', '--stream', '--socket', 'grpc://127.0.0.1:0', '--out', path.join(dir, 'recv.arrows'), '--print', '--timeout-ms', '30000']);
    const address = /grpc:\/\/\S+/.exec(recv.line)![0];
    const sent = await runProcess(process.execPath, [cliScript, 'send', '--stream', '--socket', address, '--meta', 'k=v', input], { timeoutMs: 30_000 });
    assert.equal(sent.code, 0, sent.stderr);
    const received = await recv.done;
    assert.equal(received.code, 0, received.stderr);
    assert.match(received.stdout, /== stream: 6 batches ==\nmetadata: k=v\nschema: k: Int64, s: Dictionary<Int32, Utf8>\nrows: 600, columns: 2, batches: 6/);
    same(path.join(dir, 'recv.arrows'));

    const pub = await startListening(process.execPath, [cliScript, 'pub', '--socket', 'grpc://127.0.0.1:0', '--subscribers', '2', '--timeout-ms', '30000', input]);
    const pubAddress = /grpc:\/\/\S+/.exec(pub.line)![0];
    const [sub, py] = await Promise.all([
      runProcess(process.execPath, [cliScript, 'sub', '--socket', pubAddress, '--out', path.join(dir, 'sub.arrows'), '--timeout-ms', '30000'], { timeoutMs: 60_000 }),
      runProcess(venvPython, [peerScript, 'get', pubAddress, 'stream'], { timeoutMs: 60_000 }),
    ]);
    assert.equal(sub.code, 0, sub.stderr);
    assert.equal(py.code, 0, py.stdout + py.stderr);
    assert.match(py.stdout, /end 6\n$/);
    assert.equal((await pub.done).code, 0);
    same(path.join(dir, 'sub.arrows'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
