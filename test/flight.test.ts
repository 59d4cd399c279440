// The Flight transport (grpc://, docs/PROTOCOL.md §13) against real pyarrow.flight clients and
// servers started here, both directions, over loopback: every gold stream and the 100k-symbol
// table arrive equal (pyarrow referees). Plus the CLI, tokens, TLS and typed errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Table, makeTable, makeVector, tableToIPC } from 'apache-arrow';
import { ArrowShmError, fail } from '../src/errors.js';
import { connect, listen } from '../src/transport/address.js';
import { Channel } from '../src/transport/channel.js';
import { FlightChannel, FlightListener } from '../src/transport/flight-channel.js';
import { FlightClient } from '../src/transport/flight-client.js';
import { FlightServer, receivedName } from '../src/transport/flight-server.js';
import { toFlightData } from '../src/transport/flight-codec.js';
import { checksumSymbolTable, generateSymbolTable } from '../src/cli/symbols.js';
import { cliScript, goldStreams, hasVenv, repoRoot, resources, runProcess, startListening, venvPython, waitFor, waitForNoLeaks } from './helpers.js';

const skip = hasVenv() ? false : 'the Python venv is not prepared (scripts/ensure-venv.sh)';
const peer = path.join(repoRoot, 'test', 'python', 'flight_peer.py');
const referee = path.join(repoRoot, 'test', 'python', 'referee.py');
const code = (c: string) => (e: unknown) => e instanceof ArrowShmError && e.code === c;

/** Gold streams under unique names (the three folders share file names), plus the symbol table. */
function inputs(dir: string): { name: string; file: string }[] {
  const list = goldStreams().map((file) => ({ name: `${path.basename(path.dirname(file))}_${path.basename(file)}`, file }));
  const symbols = path.join(dir, 'symbols.arrows');
  writeFileSync(symbols, tableToIPC(generateSymbolTable(100_000), 'stream'));
  return [...list, { name: 'symbols.arrows', file: symbols }];
}

async function refereeAll(pairs: string[][]): Promise<void> {
  const r = await runProcess(venvPython, [referee, ...pairs.flat()], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.equal(r.stdout.trim().split('\n').filter((l) => l.startsWith('equal ')).length, pairs.length);
}

test('Node client -> pyarrow.flight server: DoPut then DoGet of every gold stream and the symbol table', { skip, timeout: 180_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-'));
  const stored = path.join(dir, 'stored');
  mkdirSync(stored);
  const server = await startListening(venvPython, [peer, 'server', stored]);
  try {
    const address = /grpc:\/\/\S+/.exec(server.line)![0];
    const client = await FlightClient.connect(address, { timeoutMs: 60_000 });
    const all = inputs(dir);
    try {
      for (const { name, file } of all) await client.doPut(name, new Uint8Array(readFileSync(file)));
      for (const { name } of all) {
        const got = await client.doGet(name);
        writeFileSync(path.join(dir, `back-${name}`), got.bytes);
      }
    } finally {
      client.close();
    }
    await refereeAll(all.map(({ name, file }) => [file, path.join(stored, `${name}.arrows`)]));
    await refereeAll(all.map(({ name, file }) => [file, path.join(dir, `back-${name}`)]));
  } finally {
    server.child.kill();
    await server.done;
    rmSync(dir, { recursive: true });
  }
});

test('pyarrow.flight client -> Node server: DoPut then DoGet of every gold stream and the symbol table', { skip, timeout: 180_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-'));
  const server = await FlightServer.listen('grpc://127.0.0.1:0');
  try {
    const all = inputs(dir);
    const put = runProcess(venvPython, [peer, 'put', server.address, ...all.map((i) => i.file)], { timeoutMs: 120_000 });
    const names: string[] = [];
    for (const { name, file } of all) {
      const message = await server.receive();
      names.push(receivedName(message));
      writeFileSync(path.join(dir, `got-${name}`), message.bytes);
      void file;
    }
    const r = await put;
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(names, all.map((i) => path.basename(i.file)));
    await refereeAll(all.map(({ name, file }) => [file, path.join(dir, `got-${name}`)]));
    // And back: pyarrow fetches what it put, by name.
    const symbols = all.at(-1)!;
    const back = path.join(dir, 'back.arrows');
    const get = await runProcess(venvPython, [peer, 'get', server.address, path.basename(symbols.file), back]);
    assert.equal(get.code, 0, get.stderr);
    await refereeAll([[symbols.file, back]]);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true });
  }
});

test('CLI: send / recv --socket grpc://, with --meta, node to node and node to a token-protected server', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-cli-'));
  try {
    const file = path.join(dir, 'symbols.arrows');
    const table = generateSymbolTable(10_000);
    writeFileSync(file, tableToIPC(table, 'stream'));
    const recv = await startListening(process.execPath, [cliScript, 'recv', '--socket', 'grpc://127.0.0.1:0', '--out', path.join(dir, 'out.arrows'), '--print', '--timeout-ms', '20000']);
    const address = /grpc:\/\/\S+/.exec(recv.line)![0];
    const sent = await runProcess(process.execPath, [cliScript, 'send', '--socket', address, '--meta', 'topic=symbols', '--timeout-ms', '20000', file]);
    assert.equal(sent.code, 0, sent.stderr);
    const done = await recv.done;
    assert.equal(done.code, 0, done.stderr);
    assert.match(done.stdout, /metadata: topic=symbols/);
    assert.match(done.stdout, /rows: 10000, columns: 8/);
    const { decodeTable } = await import('../src/ipc/reader.js');
    assert.equal(checksumSymbolTable(decodeTable(readFileSync(path.join(dir, 'out.arrows')))), checksumSymbolTable(table));
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test('tokens, TLS and typed errors: wrong or missing token, unknown ticket, refused connection, bad certificate, hostile FlightData', async () => {
  const server = await FlightServer.listen('grpc://127.0.0.1:0', { token: 's3cret' });
  const table = generateSymbolTable(1000);
  try {
    const anonymous = await FlightClient.connect(server.address);
    await assert.rejects(anonymous.doPut('t', table), code('ERR_PEER_CREDENTIALS'));
    anonymous.close();
    const wrong = await FlightClient.connect(server.address, { token: 'guess' });
    await assert.rejects(wrong.doGet('t'), code('ERR_PEER_CREDENTIALS'));
    wrong.close();
    const client = await FlightClient.connect(server.address, { token: 's3cret' });
    await client.doPut('t', table, { metadata: { k: 'v' } });
    const got = await server.receive();
    assert.deepEqual(got.metadata, { k: 'v' });
    assert.equal(checksumSymbolTable(got.table), checksumSymbolTable(table));
    assert.equal(checksumSymbolTable((await client.doGet('t')).table), checksumSymbolTable(table));
    await assert.rejects(client.doGet('nothing'), (e) => code('ERR_INVALID_ARGUMENT')(e) && /no table named "nothing"/.test((e as Error).message));
    // The client checks what it sends...
    const bytes = new Uint8Array(tableToIPC(table, 'stream'));
    await assert.rejects(client.doPut('bad', bytes.slice(0, bytes.length - 512)), code('ERR_IPC_TRUNCATED'));
    // ...and the server what it receives: a record batch whose body is cut short, a garbage header.
    const cut = toFlightData(bytes, { type: 'PATH', cmd: Buffer.alloc(0), path: ['bad'] });
    cut[1]!.data_body = (cut[1]!.data_body as Uint8Array).subarray(0, 100); // IPC bytes: the body is a view
    await assert.rejects(client.putFlightData(cut), (e) => code('ERR_IPC_TRUNCATED')(e) && (e as ArrowShmError).remote);
    await assert.rejects(server.receive(), code('ERR_IPC_TRUNCATED'));
    const garbage = toFlightData(bytes, null);
    garbage[0]!.data_header = Buffer.from('not a flatbuffer at all, 32 b..');
    await assert.rejects(client.putFlightData(garbage), (e) => e instanceof ArrowShmError && e.code.startsWith('ERR_IPC'));
    await assert.rejects(server.receive(), (e) => e instanceof ArrowShmError && e.code.startsWith('ERR_IPC'));
    await client.doPut('t2', table);
    assert.equal(receivedName(await server.receive()), 't2');
    client.close();
  } finally {
    await server.close();
  }
  await assert.rejects(FlightClient.connect(server.address, { timeoutMs: 500 }), code('ERR_TIMEOUT'));

  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-tls-'));
  try {
    const cert = (name: string) => selfSigned(dir, name);
    const good = cert('server');
    const other = cert('other');
    const tls = await FlightServer.listen('grpc+tls://127.0.0.1:0', { tls: good });
    try {
      const client = await FlightClient.connect(tls.address, { rootCertificate: good.certificate, timeoutMs: 10_000 });
      await client.doPut('t', table);
      assert.equal(checksumSymbolTable((await tls.receive()).table), checksumSymbolTable(table));
      client.close();
      await assert.rejects(FlightClient.connect(tls.address, { rootCertificate: other.certificate, timeoutMs: 2000 }), code('ERR_TIMEOUT'));
    } finally {
      await tls.close();
    }
  } finally {
    rmSync(dir, { recursive: true });
  }
});

/** A self-signed certificate for localhost and 127.0.0.1, written to DIR/NAME.key and .pem. */
function selfSigned(dir: string, name: string): { key: Buffer; certificate: Buffer; keyFile: string; certificateFile: string } {
  const keyFile = path.join(dir, `${name}.key`);
  const certificateFile = path.join(dir, `${name}.pem`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', keyFile, '-out', certificateFile], { stdio: 'ignore' });
  return { key: readFileSync(keyFile), certificate: readFileSync(certificateFile), keyFile, certificateFile };
}

test('DoPut over node:http2 keeps the gRPC a pyarrow.flight server relies on: TLS, token and channel metadata, status codes, the deadline and its cancellation', { skip, timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-calls-'));
  const servers: ChildProcess[] = [];
  const start = async (args: string[]) => {
    const s = await startListening(venvPython, [path.join(repoRoot, 'test', 'python', 'flight_call_server.py'), ...args]);
    servers.push(s.child);
    const lines: string[] = [];
    createInterface({ input: s.child.stdout! }).on('line', (l) => lines.push(l));
    return { address: /grpc(\+tls)?:\/\/\S+/.exec(s.line)![0], lines };
  };
  const table = generateSymbolTable(1000);
  try {
    const good = selfSigned(dir, 'server');
    const secure = await start(['--tls', good.certificateFile, good.keyFile, '--token', 's3cret']);
    const client = await FlightClient.connect(secure.address, { rootCertificate: good.certificate, token: 's3cret', channelId: 'c-1', timeoutMs: 30_000 });
    await client.doPut('t', table);
    await waitFor(() => secure.lines.includes('put t 1000 channel=c-1'), 'the put, its descriptor and its metadata at the server');
    client.close();
    const wrong = await FlightClient.connect(secure.address, { rootCertificate: good.certificate, token: 'guess' });
    await assert.rejects(wrong.doPut('t', table), (e) => code('ERR_PEER_CREDENTIALS')(e) && /missing or wrong token/.test((e as Error).message));
    wrong.close();
    const slow = await start(['--slow']);
    const late = await FlightClient.connect(slow.address);
    const t0 = Date.now();
    await assert.rejects(late.doPut('t', table, { timeoutMs: 300 }), code('ERR_TIMEOUT'));
    assert.ok(Date.now() - t0 < 3000, `the deadline took ${Date.now() - t0} ms`);
    await waitFor(() => slow.lines.includes('cancelled'), 'the server told the call was cancelled', 8000);
    late.close();
  } finally {
    for (const s of servers) s.kill('SIGKILL');
    rmSync(dir, { recursive: true });
  }
});

/** Rows per kind of a symbol table, as the Python peer computes it (count_by_kind in flight_peer.py). */
function countByKind(table: Table): Table {
  const counts = new Map<number, number>();
  const kind = table.getChild('kind')!;
  for (let i = 0; i < table.numRows; i++) counts.set(kind.get(i) as number, (counts.get(kind.get(i) as number) ?? 0) + 1);
  const kinds = [...counts.keys()].sort((a, b) => a - b);
  return new Table({ kind: makeVector(Uint8Array.from(kinds)), count: makeVector(BigInt64Array.from(kinds.map((k) => BigInt(counts.get(k)!)))) });
}

test('request/response over DoExchange: Node asks a pyarrow.flight server, pyarrow asks a Node server; errors come back typed', { skip, timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-x-'));
  const symbols = generateSymbolTable(100_000);
  const file = path.join(dir, 'symbols.arrows');
  writeFileSync(file, tableToIPC(symbols, 'stream'));
  const py = await startListening(venvPython, [peer, 'server', dir]);
  const node = await FlightServer.listen('grpc://127.0.0.1:0', {
    onExchange: (request) => {
      if (!request.table.getChild('kind')) throw fail('ERR_INVALID_ARGUMENT', 'the request has no kind column');
      return countByKind(request.table);
    },
  });
  try {
    const client = await FlightClient.connect(/grpc:\/\/\S+/.exec(py.line)![0], { timeoutMs: 60_000 });
    const expected = countByKind(symbols);
    // Several requests in flight at once, each its own call.
    const answers = await Promise.all([1, 2, 3].map(() => client.exchange('count-by-kind', symbols)));
    for (const a of answers) assert.deepEqual(rows(a.table), rows(expected));
    await assert.rejects(client.exchange('count-by-kind', new Table({ x: makeVector(Int32Array.from([1])) })), (e) => code('ERR_INVALID_ARGUMENT')(e) && /no kind column/.test((e as Error).message));
    client.close();

    const asked = await runProcess(venvPython, [peer, 'exchange', node.address, file], { timeoutMs: 60_000 });
    assert.equal(asked.stdout.trim(), 'match', asked.stdout + asked.stderr);
    const nodeClient = await FlightClient.connect(node.address);
    await assert.rejects(nodeClient.exchange('x', new Table({ x: makeVector(Int32Array.from([1])) })), (e) => code('ERR_INVALID_ARGUMENT')(e) && (e as ArrowShmError).remote);
    nodeClient.close();
  } finally {
    py.child.kill();
    await py.done;
    await node.close();
    rmSync(dir, { recursive: true });
  }
});

function rows(table: Table): unknown[] {
  return JSON.parse(JSON.stringify(table.toArray(), (_, v) => (typeof v === 'bigint' ? v.toString() : v)));
}

test('same-host upgrade: a client offering it puts and gets tables through shared memory (zero copy), others stay on gRPC', async () => {
  const before = resources();
  const shm = `@arrow-shm-flight-upgrade-${process.pid}`;
  const server = await FlightServer.listen('grpc://127.0.0.1:0', { shm });
  const table = generateSymbolTable(10_000);
  try {
    const upgraded = await FlightClient.connect(server.address, { upgrade: true });
    assert.equal(upgraded.transport, 'shm');
    await upgraded.doPut(['symbols', 'a'], table, { metadata: { k: 'v' } });
    const viaShm = await server.receive();
    assert.equal(receivedName(viaShm), 'symbols/a');
    assert.equal(viaShm.metadata.k, 'v');
    assert.ok('sharedBuffer' in viaShm, 'a shared-memory ReceivedTable');
    const buffers = viaShm.table.getChild('start_line')!.data[0]!.values as Uint32Array;
    assert.equal(buffers.buffer, (viaShm as import('../src/transport/received.js').ReceivedTable).sharedBuffer, 'the column is a view of the shared mapping');
    assert.equal(checksumSymbolTable(viaShm.table), checksumSymbolTable(table));
    viaShm.close();
    // DoGet goes through shared memory too: the answer's columns are views of its mapping.
    server.serve('served', table, { metadata: { m: '1' } });
    const got = await upgraded.doGet('served');
    assert.ok('sharedBuffer' in got, 'a shared-memory ReceivedTable');
    assert.equal((got.table.getChild('start_line')!.data[0]!.values as Uint32Array).buffer, got.sharedBuffer);
    assert.deepEqual({ ...got.metadata }, { m: '1' });
    assert.equal(checksumSymbolTable(got.table), checksumSymbolTable(table));
    got.close();
    await assert.rejects(upgraded.doGet('nothing'), (e) => code('ERR_INVALID_ARGUMENT')(e) && /no table named "nothing"/.test((e as Error).message));
    upgraded.close();

    const plain = await FlightClient.connect(server.address);
    assert.equal(plain.transport, 'grpc');
    await plain.doPut('b', table);
    const viaGrpc = await server.receive();
    assert.equal(receivedName(viaGrpc), 'b');
    assert.ok(!('sharedBuffer' in viaGrpc));
    plain.close();
  } finally {
    await server.close();
  }
  // A server without a shared-memory address: the offer is declined, the client stays on gRPC.
  const other = await FlightServer.listen('grpc://127.0.0.1:0');
  try {
    const client = await FlightClient.connect(other.address, { upgrade: true });
    assert.equal(client.transport, 'grpc');
    await client.doPut('c', table);
    assert.equal(receivedName(await other.receive()), 'c');
    client.close();
  } finally {
    await other.close();
  }
  await waitForNoLeaks(before, 'sockets, segments, the shared-memory listener');
});

test('connect/listen pick the transport by address: over grpc:// a channel sends, receives both ways and answers requests like a shared-memory one', async () => {
  const before = resources();
  const listener = listen('grpc://127.0.0.1:0');
  assert.ok(listener instanceof FlightListener);
  await listener.ready();
  const table = generateSymbolTable(5_000);
  const sum = checksumSymbolTable(table);
  const client = await connect(listener.address, { name: 'symbols', upgrade: false });
  assert.ok(client instanceof FlightChannel && client.transport === 'grpc');
  const server = await listener.accept(); // handed out at connect, as a shared-memory listener does
  assert.ok(server instanceof FlightChannel && server.side === 'server');

  // client -> server (DoPut) and server -> client (the client's long-polled DoGet), metadata included
  await client.send(table, { metadata: { k: 'up' } });
  const up = await server.receive();
  assert.equal(up.name, 'symbols');
  assert.equal(up.metadata.k, 'up');
  assert.equal(checksumSymbolTable(up.table), sum);
  const [down] = await Promise.all([client.receive(), server.send(table, { metadata: { k: 'down' } })]);
  assert.equal(down.metadata.k, 'down');
  assert.equal(checksumSymbolTable(down.table), sum);
  await assert.rejects(server.send(table, { timeoutMs: 50 }), code('ERR_TIMEOUT')); // nobody is receiving

  // request/response (DoExchange): concurrent requests, answers and typed errors
  const answering = (async () => {
    for await (const request of server) {
      assert.ok(request.isRequest);
      if (request.metadata.fail) await request.respondError('ERR_INVALID_ARGUMENT', `refused ${request.metadata.fail}`);
      else await request.respond(makeTable({ rows: Int32Array.of(request.table.numRows) }));
    }
  })();
  const sizes = [1, 10, 100, 1000];
  const answers = await Promise.all(sizes.map((n) => client.request(table.slice(0, n))));
  assert.deepEqual(answers.map((a) => a.table.getChild('rows')!.get(0)), sizes);
  await assert.rejects(client.request(table, { metadata: { fail: 'this' } }), (e: unknown) => e instanceof ArrowShmError && e.code === 'ERR_INVALID_ARGUMENT' && e.remote && /refused this/.test(e.message));
  await assert.rejects(server.request(table), code('ERR_INVALID_ARGUMENT')); // gRPC cannot call a client

  // a second client is a second channel; closing either end closes the other
  const other = await connect(listener.address, { upgrade: false });
  const otherServer = await listener.accept();
  assert.notEqual(otherServer, server);
  client.close();
  await answering; // the iterator ends: the client said goodbye
  assert.ok(server.closed);
  await assert.rejects(server.receive(), code('ERR_PEER_CLOSED'));
  const waiting = other.receive();
  otherServer.close();
  await assert.rejects(waiting, code('ERR_PEER_CLOSED'));
  other.close();
  const third = await connect(listener.address, { upgrade: false });
  (await listener.accept()).close(); // the server side closes first: the client's next call is refused
  await assert.rejects(third.send(table), code('ERR_PEER_CLOSED'));
  assert.ok(third.closed, 'the client end closes too');
  third.close();
  await listener.close();
  await assert.rejects(listener.accept(), code('ERR_CLOSED'));

  // a token-protected listener refuses a wrong token at connect, as a shared-memory one refuses a wrong uid
  const guarded = listen('grpc://127.0.0.1:0', { token: 's3cret' });
  await guarded.ready();
  await assert.rejects(connect(guarded.address, { token: 'guess' }), code('ERR_PEER_CREDENTIALS'));
  const allowed = await connect(guarded.address, { token: 's3cret' });
  await allowed.send(table);
  const accepted = await guarded.accept();
  assert.equal(checksumSymbolTable((await accepted.receive()).table), sum);
  allowed.close();
  await guarded.close();
  await waitForNoLeaks(before, 'gRPC sockets and timers');
});

test('a pyarrow.flight client reaches a channel listener; a same-host client of connect() gets a shared-memory channel', { skip, timeout: 60_000 }, async () => {
  const listener = listen('grpc://127.0.0.1:0', { shm: `@arrow-shm-flight-listener-${process.pid}` });
  const address = (await listener.ready()).address;
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-'));
  try {
    const symbols = generateSymbolTable(10_000);
    const file = path.join(dir, 'symbols.arrows');
    writeFileSync(file, tableToIPC(symbols, 'stream'));
    const put = runProcess(venvPython, [peer, 'put', address, file], { timeoutMs: 30_000 });
    const fromPython = await listener.accept(); // opened by its first call
    assert.ok(fromPython instanceof FlightChannel);
    const message = await fromPython.receive();
    assert.equal(message.name, 'symbols.arrows');
    assert.equal(checksumSymbolTable(message.table), checksumSymbolTable(symbols));
    assert.equal((await put).code, 0, 'pyarrow put');

    const local = await connect(address); // offers the upgrade; the listener has shared memory here
    assert.ok(local instanceof Channel && local.transport === 'shm');
    const accepted = await listener.accept();
    assert.ok(accepted instanceof Channel);
    const table = generateSymbolTable(1_000);
    const [received] = await Promise.all([accepted.receive(), local.send(table)]);
    assert.equal(received.table.getChild('start_line')!.data[0]!.values.buffer, received.sharedBuffer, 'a view of the shared mapping');
    received.close();
    local.close();
    accepted.close();
  } finally {
    await listener.close();
    rmSync(dir, { recursive: true });
  }
});

test('a Flight client killed with SIGKILL while it waits in receive(): the server side of its channel closes with ERR_PEER_CLOSED', async () => {
  const listener = listen('grpc://127.0.0.1:0');
  await listener.ready();
  try {
    const address = path.join(repoRoot, 'dist', 'src', 'transport', 'address.js');
    const script = `const { connect } = await import(${JSON.stringify(address)}); const c = await connect(${JSON.stringify(listener.address)}, { upgrade: false }); const r = c.receive(); await new Promise((t) => setTimeout(t, 500)); console.log('receiving'); await r;`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
    const server = await listener.accept();
    const pending = server.receive();
    child.kill('SIGKILL'); // its receive() has been waiting on the server for half a second
    await assert.rejects(pending, code('ERR_PEER_CLOSED'));
    await assert.rejects(server.send(generateSymbolTable(10)), code('ERR_PEER_CLOSED'));
  } finally {
    await listener.close();
  }
});
