// Discovery over Flight (docs/PROTOCOL.md §13.4): ListFlights and GetFlightInfo describe what a
// server offers for DoGet, so generic Flight tools find it. A real pyarrow.flight client lists,
// describes and fetches from a Node server (pyarrow referees the tables); the Node client reads
// what a pyarrow.flight server lists; tokens, the name prefix, unknown names and the listing cap.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { tableToIPC } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { validateIpcStream } from '../src/ipc/messages.js';
import { FlightClient } from '../src/transport/flight-client.js';
import { FlightServer } from '../src/transport/flight-server.js';
import { checksumSymbolTable, generateSymbolTable } from '../src/cli/symbols.js';
import { goldStreams, hasVenv, repoRoot, runProcess, startListening, venvPython } from './helpers.js';

const skip = hasVenv() ? false : 'the Python venv is not prepared (scripts/ensure-venv.sh)';
const peer = path.join(repoRoot, 'test', 'python', 'flight_peer.py');
const referee = path.join(repoRoot, 'test', 'python', 'referee.py');
const code = (c: string) => (e: unknown) => e instanceof ArrowShmError && e.code === c;

/** flight_peer.py with ARROW_SHM_FLIGHT_TOKEN set to `token` (or unset) for that process only. */
function pyarrow(args: string[], token: string | undefined): ReturnType<typeof runProcess> {
  const saved = process.env.ARROW_SHM_FLIGHT_TOKEN;
  if (token === undefined) delete process.env.ARROW_SHM_FLIGHT_TOKEN;
  else process.env.ARROW_SHM_FLIGHT_TOKEN = token;
  try {
    return runProcess(venvPython, [peer, ...args], { timeoutMs: 120_000 }); // spawned (env copied) before this returns
  } finally {
    if (saved === undefined) delete process.env.ARROW_SHM_FLIGHT_TOKEN;
    else process.env.ARROW_SHM_FLIGHT_TOKEN = saved;
  }
}

test('pyarrow.flight lists (name prefix), describes and fetches what a Node server offers: served and put tables, schema, rows, metadata, with a token', { skip, timeout: 180_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-discovery-'));
  const out = path.join(dir, 'out');
  mkdirSync(out);
  const server = await FlightServer.listen('grpc://127.0.0.1:0', { token: 's3cret' });
  const client = await FlightClient.connect(server.address, { token: 's3cret' });
  try {
    const symbols = generateSymbolTable(100_000);
    const symbolsFile = path.join(dir, 'symbols.arrows');
    writeFileSync(symbolsFile, tableToIPC(symbols, 'stream'));
    server.serve('tables/symbols', symbols, { metadata: { topic: 'symbols' } });
    // Every gold stream, put by a client (kept for DoGet), under tables/gold/<folder>_<file>.
    const gold = goldStreams().map((file) => ({ name: `tables/gold/${path.basename(path.dirname(file))}_${path.basename(file)}`, file }));
    for (const { name, file } of gold) {
      await client.doPut(name.split('/'), new Uint8Array(readFileSync(file)), { metadata: { source: 'gold' } });
      (await server.receive()).close();
    }
    server.serve('elsewhere', generateSymbolTable(10)); // not under the prefix

    const r = await pyarrow(['discover', server.address, 'tables/', out], 's3cret');
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.match(lines.pop()!, /^unknown: ArrowKeyError: .*not found.*ERR_INVALID_ARGUMENT: no table named "no such table"/);
    const listed = lines.map((l) => JSON.parse(l) as { name: string; records: number; bytes: number; metadata: Record<string, string>; fields: string[]; location: string[] });
    assert.deepEqual(listed.map((f) => f.name), ['tables/symbols', ...gold.map((g) => g.name)], 'oldest first, only the prefix');
    const first = listed[0]!;
    assert.equal(first.records, 100_000);
    assert.deepEqual(first.metadata, { topic: 'symbols' });
    assert.deepEqual(first.fields, symbols.schema.fields.map((f) => f.name));
    assert.deepEqual(first.location, [], 'no location: this server');
    // The metadata rides on the first record batch (§13): a stream without batches has none.
    gold.forEach(({ name, file }, i) => {
      const batches = validateIpcStream(readFileSync(file)).recordBatches;
      assert.deepEqual(listed[i + 1]!.metadata, batches > 0 ? { source: 'gold' } : {}, name);
    });
    assert.ok(listed.every((f) => f.bytes > 0));
    // What pyarrow fetched with each endpoint's ticket is the table that was offered.
    const pairs = [[symbolsFile, path.join(out, 'tables_symbols.arrows')], ...gold.map((g) => [g.file, path.join(out, `${g.name.replaceAll('/', '_')}.arrows`)])];
    const refereed = await runProcess(venvPython, [referee, ...pairs.flat()], { timeoutMs: 120_000 });
    assert.equal(refereed.code, 0, refereed.stdout + refereed.stderr);
    assert.equal(refereed.stdout.trim().split('\n').filter((l) => l.startsWith('equal ')).length, pairs.length);

    // Without the token: refused, like every other call.
    const anonymous = await pyarrow(['discover', server.address, '', out], undefined);
    assert.notEqual(anonymous.code, 0);
    assert.match(anonymous.stderr, /FlightUnauthenticatedError.*ERR_PEER_CREDENTIALS/);
  } finally {
    client.close();
    await server.close();
    rmSync(dir, { recursive: true });
  }
});

test('the Node client discovers: ListFlights and GetFlightInfo of a Node server, DoGet of the ticket, typed errors, the listing capped on both sides', async () => {
  const server = await FlightServer.listen('grpc://127.0.0.1:0', { token: 's3cret', limits: { maxListedFlights: 2 } });
  const client = await FlightClient.connect(server.address, { token: 's3cret' });
  try {
    const symbols = generateSymbolTable(1_000);
    server.serve('a/symbols', symbols, { metadata: { topic: 'symbols' } });
    await client.doPut(['a', 'put'], generateSymbolTable(10));
    (await server.receive()).close();
    server.serve('b', generateSymbolTable(5));

    const info = await client.getFlightInfo('a/symbols');
    assert.equal(info.name, 'a/symbols');
    assert.equal(info.totalRecords, 1_000);
    assert.deepEqual(info.metadata, { topic: 'symbols' });
    assert.deepEqual(info.schema.fields.map((f) => `${f.name}:${String(f.type)}`), symbols.schema.fields.map((f) => `${f.name}:${String(f.type)}`));
    assert.equal(info.endpoints.length, 1);
    assert.deepEqual(info.endpoints[0]!.locations, []);
    const got = await client.doGet(info.endpoints[0]!.ticket);
    assert.equal(checksumSymbolTable(got.table), checksumSymbolTable(symbols));
    assert.deepEqual(got.metadata, { topic: 'symbols' }, 'DoGet carries the metadata too');
    assert.equal(info.totalBytes, got.bytes.length);
    assert.equal((await client.getFlightInfo(['a', 'put'])).totalRecords, 10, 'a path of segments is joined by /');

    assert.deepEqual((await client.listFlights('a/')).map((f) => f.name), ['a/symbols', 'a/put']);
    assert.deepEqual((await client.listFlights()).map((f) => f.name), ['a/symbols', 'a/put'], 'the server lists at most maxListedFlights, oldest first');
    server.serve('a/symbols', symbols); // offered again: the newest
    assert.deepEqual((await client.listFlights()).map((f) => f.name), ['a/put', 'b']);
    assert.deepEqual(await client.listFlights('nothing'), []);

    await assert.rejects(client.getFlightInfo('nothing'), (e) => code('ERR_INVALID_ARGUMENT')(e) && /no table named "nothing"/.test((e as Error).message) && (e as ArrowShmError).remote);
    const wrong = await FlightClient.connect(server.address, { token: 'guess' });
    await assert.rejects(wrong.listFlights(), code('ERR_PEER_CREDENTIALS'));
    await assert.rejects(wrong.getFlightInfo('b'), code('ERR_PEER_CREDENTIALS'));
    wrong.close();
    const capped = await FlightClient.connect(server.address, { token: 's3cret', limits: { maxListedFlights: 1 } });
    assert.deepEqual((await capped.listFlights()).map((f) => f.name), ['a/put'], 'a client reads at most its maxListedFlights');
    capped.close();
  } finally {
    client.close();
    await server.close();
  }
});

test('the Node client lists, describes and fetches what a pyarrow.flight server offers', { skip, timeout: 60_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-discovery-'));
  const server = await startListening(venvPython, [peer, 'server', dir]);
  try {
    const address = /grpc:\/\/\S+/.exec(server.line)![0];
    const client = await FlightClient.connect(address, { timeoutMs: 30_000 });
    try {
      const symbols = generateSymbolTable(1_000);
      await client.doPut(['sym', 'one'], symbols);
      await client.doPut('other', generateSymbolTable(3));
      const [info] = await client.listFlights('sym/');
      assert.equal((await client.listFlights()).length, 2);
      assert.equal(info!.name, 'sym/one');
      assert.equal(info!.totalRecords, 1_000);
      assert.deepEqual(info!.metadata, { from: 'pyarrow' });
      assert.deepEqual(info!.schema.fields.map((f) => f.name), symbols.schema.fields.map((f) => f.name));
      assert.deepEqual((await client.getFlightInfo(['sym', 'one'])).totalRecords, 1_000);
      assert.equal(checksumSymbolTable((await client.doGet(info!.endpoints[0]!.ticket)).table), checksumSymbolTable(symbols));
      await assert.rejects(client.getFlightInfo('nothing'), (e) => e instanceof ArrowShmError && e.remote === true);
    } finally {
      client.close();
    }
  } finally {
    server.child.kill();
    await server.done;
    rmSync(dir, { recursive: true });
  }
});
