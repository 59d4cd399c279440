import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { freemem } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Binary, Field, RecordBatch, Schema, Struct, makeData, tableFromIPC } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { connect } from '../src/transport/channel.js';
import { listen } from '../src/transport/listener.js';
import { PreparedTable } from '../src/ipc/prepared.js';
import { goldStreams, leaksSince, repoRoot, resources, runCli, startListening, uniqueAddress, venvPython } from './helpers.js';

const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'fd-starved-receiver.js');
const gold = goldStreams().find((f) => f.endsWith('generated_primitive.stream'))!;

/** Resolves when the child printed a JSON line with this event. */
function event(child: ChildProcess, name: string): Promise<void> {
  return new Promise((resolve) => {
    let seen = '';
    const onData = (d: Buffer) => {
      seen += d;
      if (seen.includes(`"event":"${name}"`)) {
        child.stdout!.off('data', onData);
        resolve();
      }
    };
    child.stdout!.on('data', onData);
  });
}

test('a listener out of file descriptors (RLIMIT_NOFILE): connections get a typed ERROR, no spin, no crash, then it serves again', async (t) => {
  const address = uniqueAddress('nofile-accept');
  const receiver = await startListening('prlimit', ['--nofile=200:200', process.execPath, fixture, address, 'accept']);
  t.after(() => receiver.child.kill('SIGKILL'));
  const refused = await runCli(['send', '--socket', address, '--timeout-ms', '5000', gold]);
  assert.equal(refused.code, 1);
  // The refusal says why (ERR_SYSCALL) unless the listener closed before the sender's HELLO was
  // read, which makes the kernel report a reset instead (ERR_PEER_CLOSED): typed either way.
  assert.match(refused.stderr, /ERR_SYSCALL: .*the listener is out of file descriptors|ERR_PEER_CLOSED/);
  const released = event(receiver.child, 'released');
  receiver.child.kill('SIGUSR1'); // its fds back
  await released;
  const sent = await runCli(['send', '--socket', address, '--timeout-ms', '5000', gold]);
  assert.equal(sent.code, 0, sent.stderr);
  const done = await receiver.done;
  assert.equal(done.code, 0, done.stderr);
  const events = done.stdout.trim().split('\n').map((l) => JSON.parse(l) as { event: string; rows?: number });
  assert.deepEqual(events.at(-1), { event: 'table', rows: 37 });
  assert.ok(events.filter((e) => e.event === 'connection-error').length < 50, 'the listener does not spin on EMFILE');
});

test('a receiver out of file descriptors (RLIMIT_NOFILE) when a table arrives: that send fails with ERR_SYSCALL, the channel goes on', async (t) => {
  const address = uniqueAddress('nofile-receive');
  const receiver = await startListening('prlimit', ['--nofile=200:200', process.execPath, fixture, address, 'receive']);
  t.after(() => receiver.child.kill('SIGKILL'));
  const starved = event(receiver.child, 'starved');
  // In a segment, not inline (§5.3): the fd is what the starved receiver cannot take.
  const channel = await connect(address, { timeoutMs: 5000, maxInlineBytes: 0 });
  try {
    await starved;
    const table = tableFromIPC(readFileSync(gold));
    await assert.rejects(channel.send(table, { timeoutMs: 5000 }), (e: unknown) => e instanceof ArrowShmError && e.code === 'ERR_SYSCALL' && e.remote && /out of file descriptors \(RLIMIT_NOFILE\)/.test(e.message));
    const released = event(receiver.child, 'released');
    receiver.child.kill('SIGUSR1');
    await released;
    await channel.send(table, { timeoutMs: 5000 });
  } finally {
    channel.close();
  }
  const done = await receiver.done;
  assert.equal(done.code, 0, done.stderr);
  assert.match(done.stdout, /"event":"table","rows":37/);
});

test('a table over 4 GiB (offsets past 32 bits) hands off to Python and reads correctly; a Node receiver refuses it with ERR_TOO_LARGE', { timeout: 300_000 }, async (t) => {
  const size = 4 * 1024 ** 3 + 4 * 4096;
  if (freemem() < 2.5 * size) {
    t.skip(`needs ~${Math.round((2.5 * size) / 1024 ** 3)} GiB of free memory, ${Math.round(freemem() / 1024 ** 3)} GiB free`);
    return;
  }
  // A Binary column's 32-bit offsets stop at 2 GiB: four batches of one ~1 GiB value each.
  const schema = new Schema([new Field('blob', new Binary(), false)]);
  const quarter = size / 4;
  const batches = [0, 1, 2, 3].map((i) => {
    const value = new Uint8Array(quarter);
    value[0] = i + 1;
    value[quarter - 1] = 10 + i;
    const data = makeData({ type: new Binary(), length: 1, nullCount: 0, valueOffsets: Int32Array.of(0, quarter), data: value });
    return new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: 1, nullCount: 0, children: [data] }));
  });
  const before = resources();
  const prepared = PreparedTable.from(batches); // written once, sent twice
  assert.ok(prepared.ipcLength > 2 ** 32, `${prepared.ipcLength} bytes of IPC`);

  const address = uniqueAddress('4gib');
  const python = await startListening(venvPython, [path.join(repoRoot, 'test', 'python', 'big_receiver.py'), address]);
  const toPython = await connect(address, { timeoutMs: 10_000 });
  await toPython.send(prepared, { timeoutMs: 120_000 });
  toPython.close();
  const printed = await python.done;
  assert.equal(printed.code, 0, printed.stderr);
  assert.deepEqual(printed.stdout.trim().split('\n'), [0, 1, 2, 3].map((i) => `${quarter} ${i + 1} ${10 + i} in-place`));

  const nodeAddress = uniqueAddress('4gib-node');
  const listener = listen(nodeAddress);
  const [server, client] = await Promise.all([listener.accept(), connect(nodeAddress)]);
  await assert.rejects(client.send(prepared, { timeoutMs: 60_000 }), (e: unknown) => e instanceof ArrowShmError && e.code === 'ERR_TOO_LARGE' && e.remote);
  prepared.close();
  server.close();
  client.close();
  listener.close();
  assert.deepEqual(leaksSince(before), []);
});
