// A network port trusts nobody (SECURITY.md "Over the network", docs/PROTOCOL.md §13.3): a raw
// gRPC attacker (grpcio, FlightData encoded by hand: test/python/flight_attacker.py) against real
// receiver processes, each attack followed (floods: accompanied) by an honest pyarrow.flight client
// that must be served; a hostile Flight server against the Node client and the CLI; the CLI given
// a hostile file. Every Node process under attack runs with a small V8 heap, so a regression shows
// as a crash, not as a machine out of memory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { tableToIPC } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { listen } from '../src/transport/address.js';
import { FlightClient } from '../src/transport/flight-client.js';
import { FlightServer, receivedName } from '../src/transport/flight-server.js';
import { DEFAULT_FLIGHT_LIMITS } from '../src/transport/flight-limits.js';
import { generateSymbolTable } from '../src/cli/symbols.js';
import { cliScript, hasVenv, repoRoot, runProcess, startListening, venvPython } from './helpers.js';

/** Hostile IPC streams of test/python/attacks.py and the code each must be refused with. */
const HOSTILE_TABLES = [
  ['metadata-bomb', 'ERR_IPC_LIMIT'],
  ['schema-bomb', 'ERR_IPC_LIMIT'],
  ['counts-mismatch', 'ERR_IPC_INVALID'],
] as const;

const skip = hasVenv() ? false : 'the Python venv is not prepared (scripts/ensure-venv.sh)';
const attacker = path.join(repoRoot, 'test', 'python', 'flight_attacker.py');
const attacksPy = path.join(repoRoot, 'test', 'python', 'attacks.py');
const peer = path.join(repoRoot, 'test', 'python', 'flight_peer.py');
const flightJs = path.join(repoRoot, 'dist', 'src', 'transport', 'flight-server.js');
/** The heap of every Node process under attack: a decoded bomb would need ~98 GiB. */
const HEAP = '--max-old-space-size=384';
const code = (c: string) => (e: unknown) => e instanceof ArrowShmError && e.code === c;

interface AttackResult {
  codes: Record<string, number>;
  statuses: { code: string; details: string }[];
  seconds: number;
}

async function attack(kind: string, address: string, extra: string[] = []): Promise<AttackResult> {
  const target = address.replace(/^grpc:\/\//, '');
  const r = await runProcess(venvPython, [attacker, 'client', kind, '--address', target, ...extra], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, `attacker ${kind}: ${r.stderr}`);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { event: string; code?: string; details?: string; codes?: Record<string, number>; seconds?: number });
  const done = lines.find((l) => l.event === 'done')!;
  return { codes: done.codes!, seconds: done.seconds!, statuses: lines.filter((l) => l.event === 'status').map((l) => ({ code: l.code!, details: l.details! })) };
}

/** One honest pyarrow.flight DoPut of a small table (with `token`, if given); resolves with its exit status. */
async function honestPut(address: string, dir: string, name: string, token?: string): Promise<{ code: number | null; stderr: string }> {
  const file = path.join(dir, name);
  writeFileSync(file, tableToIPC(generateSymbolTable(100), 'stream'));
  // runProcess spawns at once with this process's environment: the token is set just around it.
  const saved = process.env.ARROW_SHM_FLIGHT_TOKEN;
  process.env.ARROW_SHM_FLIGHT_TOKEN = token ?? '';
  try {
    return runProcess(venvPython, [peer, 'put', address, file], { timeoutMs: 60_000 });
  } finally {
    if (saved === undefined) delete process.env.ARROW_SHM_FLIGHT_TOKEN;
    else process.env.ARROW_SHM_FLIGHT_TOKEN = saved;
  }
}

function rssKiB(child: ChildProcess): number {
  const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]);
}

/** A receiver process: a FlightServer with these limits, answering DoExchange with the request, logging each receive(). */
const RECEIVER = `
import { FlightServer } from ${JSON.stringify(flightJs)};

const options = JSON.parse(process.argv[1]);
const server = await FlightServer.listen('grpc://127.0.0.1:0', { ...options, onExchange: (request) => request.bytes });
process.stderr.write('arrow-shm: listening on ' + server.address + '\\n');
for (;;) {
  try {
    const m = await server.receive();
    process.stdout.write(JSON.stringify({ event: 'table', name: m.name, rows: m.table.numRows }) + '\\n');
    m.close();
  } catch (e) {
    process.stdout.write(JSON.stringify({ event: 'refused', code: e.code }) + '\\n');
  }
}`;

async function startReceiver(options: object) {
  const r = await startListening(process.execPath, [HEAP, '--input-type=module', '-e', RECEIVER, JSON.stringify(options)]);
  return { ...r, address: /grpc:\/\/\S+/.exec(r.line)![0] };
}

test('CLI recv --socket grpc:// under a raw gRPC attacker: bombs, huge declared counts and bad counts are refused with their status, each followed by an honest pyarrow.flight put that is served', { skip, timeout: 300_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-attack-'));
  const attacks: [string, string, RegExp][] = [
    ['metadata-bomb', 'RESOURCE_EXHAUSTED', /^ERR_IPC_LIMIT: .*maxMetadataBytes/],
    ['schema-bomb', 'RESOURCE_EXHAUSTED', /^ERR_IPC_LIMIT: /],
    ['node-count-bomb', 'INVALID_ARGUMENT', /^ERR_IPC_INVALID: .*1000000 field nodes/],
    ['declared-count', 'INVALID_ARGUMENT', /^ERR_IPC_INVALID: .*10000000 elements/],
    ['counts-mismatch', 'INVALID_ARGUMENT', /^ERR_IPC_INVALID: .*2 field nodes/],
  ];
  const recv = await startListening(process.execPath, [HEAP, cliScript, 'recv', '--socket', 'grpc://127.0.0.1:0', '--count', String(attacks.length), '--out', path.join(dir, 'out'), '--timeout-ms', '60000']);
  try {
    const address = /grpc:\/\/\S+/.exec(recv.line)![0];
    for (const [i, [kind, status, details]] of attacks.entries()) {
      const r = await attack(kind, address);
      assert.deepEqual(r.codes, { [status]: 1 }, `${kind}: ${JSON.stringify(r)}`);
      assert.match(r.statuses[0]!.details, details, kind);
      const honest = await honestPut(address, dir, `honest-${i}.arrows`);
      assert.equal(honest.code, 0, `honest put after ${kind}: ${honest.stderr}`);
    }
    const done = await recv.done;
    assert.equal(done.code, 0, done.stderr);
    assert.equal(readdirSync(path.join(dir, 'out')).length, attacks.length); // the honest tables, all of them
    assert.match(done.stderr, /refused a table: ERR_IPC_LIMIT/);
  } finally {
    recv.child.kill('SIGKILL');
    rmSync(dir, { recursive: true });
  }
});

test('a receiver with small limits: oversize FlightData, too many messages, DoExchange bombs, silent and slow-drip calls, floods of calls; honest puts are served during and after, memory stays flat', { skip, timeout: 300_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-limits-'));
  const limits = { maxFlightDataBytes: 4 * 2 ** 20, maxCallBytes: 8 * 2 ** 20, maxCallMessages: 1000, callIdleTimeoutMs: 1500, callTimeoutMs: 4000, maxConcurrentCalls: 64, maxCallsPerConnection: 16 };
  const recv = await startReceiver({ limits });
  let honest = 0;
  const served = async (what: string) => {
    const r = await honestPut(recv.address, dir, `honest-${honest++}.arrows`);
    assert.equal(r.code, 0, `honest put ${what}: ${r.stderr}`);
  };
  try {
    const rssBefore = rssKiB(recv.child);
    let r = await attack('oversize', recv.address, ['--count', String(5 * 2 ** 20)]);
    assert.deepEqual(r.codes, { RESOURCE_EXHAUSTED: 1 }, JSON.stringify(r));
    await served('after an oversize FlightData');
    r = await attack('many-messages', recv.address, ['--count', '5000']);
    assert.deepEqual(r.codes, { RESOURCE_EXHAUSTED: 1 });
    assert.match(r.statuses[0]!.details, /^ERR_RESOURCE_LIMIT: .*maxCallMessages/);
    r = await attack('exchange-metadata-bomb', recv.address);
    assert.deepEqual(r.codes, { RESOURCE_EXHAUSTED: 1 });
    assert.match(r.statuses[0]!.details, /^ERR_IPC_LIMIT: /);
    r = await attack('exchange-counts-mismatch', recv.address);
    assert.deepEqual(r.codes, { INVALID_ARGUMENT: 1 });
    await served('after DoExchange attacks');

    // Silent calls hit the idle deadline, slow-drip ones (a FlightData a second) the overall one;
    // an honest client is served while they hang on.
    const silent = attack('silent', recv.address, ['--count', '20', '--seconds', '6', '--connections', '2']);
    const slow = attack('slow', recv.address, ['--count', '20', '--seconds', '10', '--connections', '2']);
    await new Promise((resolve) => setTimeout(resolve, 500));
    await served('while silent and slow calls hang on');
    r = await silent;
    assert.deepEqual(r.codes, { DEADLINE_EXCEEDED: 20 }, JSON.stringify(r));
    assert.match(r.statuses[0]!.details, /^ERR_TIMEOUT: .*callIdleTimeoutMs/);
    r = await slow;
    assert.deepEqual(r.codes, { DEADLINE_EXCEEDED: 20 }, JSON.stringify(r));
    assert.match(r.statuses[0]!.details, /^ERR_TIMEOUT: .*callTimeoutMs/);
    assert.ok(r.seconds < 9, `slow calls were cut after ${r.seconds} s`);

    // 3000 calls at once on 4 connections: each connection has 16 calls in progress, the rest wait
    // at the client (HTTP/2); that fills the server's 64, so the honest client's call takes the
    // oldest call of the busiest connection (CallGate) and is served meanwhile.
    const flood = attack('flood', recv.address, ['--count', '3000', '--connections', '4']);
    await served('during a flood of 3000 calls on 4 connections');
    r = await flood;
    // (a call the server ends while grpcio still writes shows as ENDED_WHILE_WRITING: see flight_attacker.py)
    assert.equal((r.codes.OK ?? 0) + (r.codes.RESOURCE_EXHAUSTED ?? 0) + (r.codes.ENDED_WHILE_WRITING ?? 0), 3000, JSON.stringify(r));
    // 2000 calls over 200 connections: past maxConcurrentCalls the calls are refused at once.
    r = await attack('flood', recv.address, ['--count', '2000', '--connections', '200']);
    const refused = (r.codes.RESOURCE_EXHAUSTED ?? 0) + (r.codes.ENDED_WHILE_WRITING ?? 0);
    assert.equal((r.codes.OK ?? 0) + refused, 2000, JSON.stringify(r));
    assert.ok(refused > 0, 'the server refused calls past maxConcurrentCalls');
    await served('after a flood over 200 connections');
    const grown = rssKiB(recv.child) - rssBefore;
    assert.ok(grown < 200 * 1024, `the receiver grew by ${grown} KiB`);
  } finally {
    recv.child.kill('SIGKILL');
    rmSync(dir, { recursive: true });
  }
});

test('tokens: wrong tokens are refused before any FlightData is read, a thousand of them cost little; the right one is served', { skip, timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-token-'));
  const recv = await startReceiver({ token: 's3cret' });
  try {
    const r = await attack('bad-token', recv.address, ['--count', '1000', '--token', 's3cret']);
    assert.deepEqual(r.codes, { UNAUTHENTICATED: 1000 });
    assert.match(r.statuses[0]!.details, /^ERR_PEER_CREDENTIALS: /);
    assert.ok(r.seconds < 30, `1000 refusals took ${r.seconds} s`);
    // A bomb without the token is refused for the token, not decoded.
    const bomb = await attack('metadata-bomb', recv.address);
    assert.deepEqual(bomb.codes, { UNAUTHENTICATED: 1 });
    assert.equal((await honestPut(recv.address, dir, 'honest.arrows')).code !== 0, true, 'no token: refused');
    const ok = await honestPut(recv.address, dir, 'honest.arrows', 's3cret');
    assert.equal(ok.code, 0, ok.stderr);
  } finally {
    recv.child.kill('SIGKILL');
    rmSync(dir, { recursive: true });
  }
});

test('secure by default: a non-loopback address without TLS and a token is refused (FlightServer, listen(), the CLI) unless insecure is said', async () => {
  await assert.rejects(FlightServer.listen('grpc://0.0.0.0:0'), (e) => code('ERR_INVALID_ARGUMENT')(e) && /without TLS and a token.*insecure/.test((e as Error).message));
  await assert.rejects(FlightServer.listen('grpc://0.0.0.0:0', { token: 't' }), (e) => code('ERR_INVALID_ARGUMENT')(e) && /without TLS:/.test((e as Error).message));
  await assert.rejects(listen('grpc://[::]:0').ready(), code('ERR_INVALID_ARGUMENT'));
  const insecure = await FlightServer.listen('grpc://0.0.0.0:0', { insecure: true });
  await insecure.close();
  for (const loopback of ['grpc://127.0.0.1:0', 'grpc://localhost:0']) await (await FlightServer.listen(loopback)).close();
  const refused = await runProcess(process.execPath, [cliScript, 'recv', '--socket', 'grpc://0.0.0.0:0', '--timeout-ms', '1000']);
  assert.equal(refused.code, 1);
  assert.equal(refused.stderr.trim().split('\n').length, 1, refused.stderr);
  assert.match(refused.stderr, /^arrow-shm: ERR_INVALID_ARGUMENT: refusing to listen on 0\.0\.0\.0 without TLS and a token.*--insecure/);
  const allowed = await runProcess(process.execPath, [cliScript, 'recv', '--socket', 'grpc://0.0.0.0:0', '--insecure', '--timeout-ms', '300']);
  assert.match(allowed.stderr, /listening on grpc:\/\/0\.0\.0\.0:\d+/);
  assert.match(allowed.stderr, /ERR_TIMEOUT/);
});

test('a hostile Flight server cannot crash the Node client or the CLI: bombs in DoGet, DoExchange and FlightInfo answers, endless PutResults and listings, a silent answer', { skip, timeout: 180_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-hostile-'));
  const file = path.join(dir, 'small.arrows');
  writeFileSync(file, tableToIPC(generateSymbolTable(100), 'stream'));
  const servers: ChildProcess[] = [];
  const hostile = async (kind: string) => {
    const s = await startListening(venvPython, [attacker, 'server', kind]);
    servers.push(s.child);
    return /grpc:\/\/\S+/.exec(s.line)![0];
  };
  try {
    for (const [kind, expected] of HOSTILE_TABLES) {
      const client = await FlightClient.connect(await hostile(kind), { timeoutMs: 30_000 });
      await assert.rejects(client.doGet('t'), code(expected), `DoGet answered with ${kind}`);
      await assert.rejects(client.exchange('t', readFileSync(file)), code(expected), `DoExchange answered with ${kind}`);
      if (kind !== 'counts-mismatch') {
        // Discovery: a FlightInfo's schema is checked (§14.1) before apache-arrow decodes it.
        await assert.rejects(client.listFlights(), code(expected), `ListFlights answered with ${kind}`);
        await assert.rejects(client.getFlightInfo('t'), code(expected), `GetFlightInfo answered with ${kind}`);
      }
      client.close();
    }
    const endless = await hostile('put-results');
    const client = await FlightClient.connect(endless, { timeoutMs: 30_000, limits: { maxListedFlights: 5 } });
    await assert.rejects(client.doPut('t', readFileSync(file)), code('ERR_TOO_LARGE'));
    assert.equal((await client.listFlights()).length, 5, 'an endless listing is read up to maxListedFlights');
    client.close();
    const silent = await FlightClient.connect(await hostile('silent'), { limits: { callIdleTimeoutMs: 1000 } });
    await assert.rejects(silent.doGet('t'), (e) => code('ERR_TIMEOUT')(e) && /callIdleTimeoutMs/.test((e as Error).message));
    silent.close();
    // The CLI's send against the endless PutResults: a clear error, no crash, in a small heap.
    const sent = await runProcess(process.execPath, [HEAP, cliScript, 'send', '--socket', endless, '--timeout-ms', '30000', file]);
    assert.equal(sent.code, 1, sent.stderr);
    assert.match(sent.stderr, /^arrow-shm: ERR_TOO_LARGE: .*maxCallBytes/m);
  } finally {
    for (const s of servers) s.kill('SIGKILL');
    rmSync(dir, { recursive: true });
  }
});

test('arrow-shm send given a hostile file exits with a clear error (file and --stream), the Node client refuses to send it', { skip, timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-send-'));
  const server = await FlightServer.listen('grpc://127.0.0.1:0');
  try {
    for (const [kind, expected] of HOSTILE_TABLES) {
      const file = path.join(dir, `${kind}.arrows`);
      const w = await runProcess(venvPython, [attacksPy, 'write', kind, '--out', file]);
      assert.equal(w.code, 0, w.stderr);
      for (const extra of [[], ['--stream']]) {
        const r = await runProcess(process.execPath, [HEAP, cliScript, 'send', '--socket', server.address, '--timeout-ms', '20000', ...extra, file]);
        assert.equal(r.code, 1, `${kind} ${extra}: ${r.stderr}`);
        assert.match(r.stderr, new RegExp(`^arrow-shm: ${expected}: `), `${kind} ${extra}`);
      }
      const client = await FlightClient.connect(server.address);
      await assert.rejects(client.doPut('t', readFileSync(file)), code(expected));
      client.close();
    }
  } finally {
    await server.close();
    rmSync(dir, { recursive: true });
  }
});

test('Flight limits: defaults as documented, bad values refused', async () => {
  assert.deepEqual({ ...DEFAULT_FLIGHT_LIMITS, ipc: undefined }, {
    maxFlightDataBytes: 256 * 2 ** 20,
    maxCallBytes: 2 ** 30,
    maxCallMessages: 100_000,
    maxConcurrentCalls: 64,
    maxCallsPerConnection: 16,
    maxHeldBytes: 2 * 2 ** 30,
    maxInboxMessages: 64,
    callIdleTimeoutMs: 30_000,
    callTimeoutMs: 600_000,
    connectionIdleTimeoutMs: 300_000,
    maxListedFlights: 1000,
    ipc: undefined,
  });
  await assert.rejects(FlightServer.listen('grpc://127.0.0.1:0', { limits: { maxCallBytes: 0 } }), code('ERR_INVALID_ARGUMENT'));
  await assert.rejects(FlightServer.listen('grpc://127.0.0.1:0', { limits: { ipc: { maxFields: -1 } } }), code('ERR_INVALID_ARGUMENT'));
});

test('held bytes and the inbox: tables kept for DoGet make room for new ones, oldest first; past maxInboxMessages or maxHeldBytes a DoPut is refused, and served again once receive() takes', async () => {
  const table = tableToIPC(generateSymbolTable(1000), 'stream');
  const size = table.byteLength + 4096; // re-framing may pad a little
  const server = await FlightServer.listen('grpc://127.0.0.1:0', { limits: { maxHeldBytes: 3 * size, maxInboxMessages: 2 } });
  const client = await FlightClient.connect(server.address);
  try {
    await client.doPut('a', table);
    await client.doPut('b', table);
    // The inbox is full (nobody called receive()): refused, with its status and a typed error.
    await assert.rejects(client.doPut('c', table), (e) => code('ERR_RESOURCE_LIMIT')(e) && /maxInboxMessages/.test((e as Error).message));
    (await server.receive()).close();
    (await server.receive()).close(); // (the refused call's error found the inbox full: the client was told, that is all)
    await client.doPut('c', table); // 'a' and 'b' are still kept for DoGet: 3 tables held
    (await server.receive()).close();
    await client.doPut('d', table); // the oldest kept table ('a') makes room
    (await server.receive()).close();
    await assert.rejects(client.doGet('a'), code('ERR_INVALID_ARGUMENT'));
    assert.equal((await client.doGet('d')).table.numRows, 1000);
    assert.equal((await client.doGet('b')).table.numRows, 1000);
  } finally {
    client.close();
    await server.close();
  }
  // A table receive() has not taken yet is never dropped: with no room, the next DoPut is refused.
  const small = await FlightServer.listen('grpc://127.0.0.1:0', { limits: { maxHeldBytes: Math.floor(1.5 * size) } });
  const other = await FlightClient.connect(small.address);
  try {
    await other.doPut('a', table);
    await assert.rejects(other.doPut('b', table), (e) => code('ERR_RESOURCE_LIMIT')(e) && /maxHeldBytes/.test((e as Error).message));
    assert.equal(receivedName(await small.receive()), 'a');
    await assert.rejects(small.receive(), code('ERR_RESOURCE_LIMIT')); // the refused call, on this side
    await other.doPut('b', table); // now 'a' (kept for DoGet only) makes room
    assert.equal(receivedName(await small.receive()), 'b');
  } finally {
    other.close();
    await small.close();
  }
});

test('a channel listener (listen("grpc://...")) under the raw attacker: the refused call is a typed error on its channel, the next client gets its own channel and is served', { skip, timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-flight-channel-'));
  const listener = await listen('grpc://127.0.0.1:0', { limits: { maxCallMessages: 100 } }).ready();
  try {
    // (bombs only against child processes with a small heap: this process has none)
    let r = await attack('counts-mismatch', listener.address);
    assert.deepEqual(r.codes, { INVALID_ARGUMENT: 1 });
    r = await attack('many-messages', listener.address, ['--count', '1000']);
    assert.deepEqual(r.codes, { RESOURCE_EXHAUSTED: 1 });
    // Each attacker connection got a channel, whose receive() gives the refusal as a typed error.
    const attacked = [await listener.accept(), await listener.accept()];
    const codes = await Promise.all(attacked.map((c) => c.receive().then(() => 'a table', (e: ArrowShmError) => e.code)));
    assert.deepEqual(codes.sort(), ['ERR_IPC_INVALID', 'ERR_RESOURCE_LIMIT']);
    const honest = honestPut(listener.address, dir, 'honest.arrows');
    const channel = await listener.accept();
    assert.equal((await channel.receive()).table.numRows, 100);
    assert.equal((await honest).code, 0);
    for (const c of [...attacked, channel]) c.close();
  } finally {
    await listener.close();
    rmSync(dir, { recursive: true });
  }
});
