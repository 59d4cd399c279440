// Seed compatibility (docs/PROTOCOL.md §10) for every peer, against the seed proof of concept's own
// programs: its receiver.py (test/python/seed_receiver.py, unchanged in behaviour) reads what each
// peer's `send --seed-compat` sends, and each peer's `recv --seed-compat` reads what its sender.cpp
// (peers/cpp/test/seed_sender.cpp, rebuilt from the seed's README) sends.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tableFromIPC } from 'apache-arrow';
import { goldStreams, repoRoot, runProcess, startListening, venvPython } from './helpers.js';

const run = path.join(repoRoot, 'peers', 'run');
const seedReceiver = path.join(repoRoot, 'test', 'python', 'seed_receiver.py');
const seedSender = path.join(repoRoot, '.build', 'cpp', 'seed_sender');
const peers = ['node', 'python', 'rust', 'cpp'] as const;
const tmp = (tag: string) => mkdtempSync(path.join(os.tmpdir(), `arrow-shm-seed-${tag}-`));

for (const peer of peers) {
  test(`the seed's receiver.py reads what \`${peer} send --seed-compat\` sends`, async () => {
    const dir = tmp(peer);
    const address = path.join(dir, 'memfd_socket');
    const file = goldStreams().find((f) => f.endsWith('generated_primitive.stream'))!;
    const sender = await startListening(run, [peer, 'send', '--seed-compat', '--socket', address, '--timeout-ms', '20000', file]);
    const received = await runProcess(venvPython, [seedReceiver, address]);
    assert.equal(received.code, 0, received.stderr);
    assert.equal((await sender.done).code, 0);
    const expected = tableFromIPC(readFileSync(file)).batches[0]!;
    assert.match(received.stdout, new RegExp(`Number of rows: ${expected.numRows}\n`));
    rmSync(dir, { recursive: true });
  });

  test(`\`${peer} recv --seed-compat\` reads what the seed's sender.cpp sends (unsealed memfd of 40960 bytes)`, async () => {
    const dir = tmp(peer);
    const address = path.join(dir, 'memfd_socket');
    const out = path.join(dir, 'got.arrows');
    const sender = await startListening(seedSender, [address]);
    const received = await runProcess(run, [peer, 'recv', '--seed-compat', '--socket', address, '--print', '--out', out, '--timeout-ms', '20000']);
    const sent = await sender.done;
    assert.equal(received.code, 0, received.stderr);
    assert.equal(sent.code, 0, sent.stderr);
    const values = sent.stdout.trim().split(',').map(Number);
    assert.equal(values.length, 100);
    assert.deepEqual([...tableFromIPC(readFileSync(out)).getChild('rand')!.toArray()], values);
    rmSync(dir, { recursive: true });
  });
}

test('a receiver without --seed-compat refuses the seed\'s sender with a typed error, before any fd', async () => {
  const dir = tmp('refused');
  const address = path.join(dir, 'memfd_socket');
  const sender = await startListening(seedSender, [address]);
  // The seed listens on SOCK_STREAM with no handshake; arrow-shm sockets are SOCK_SEQPACKET.
  const received = await runProcess(run, ['node', 'recv', '--connect', '--socket', address, '--timeout-ms', '5000']);
  sender.child.kill(); // still waiting for a client it can talk to
  await sender.done;
  assert.equal(received.code, 1);
  assert.match(received.stderr, /ERR_SYSCALL: .* is not a socket of this kind \(EPROTOTYPE\)/);
  rmSync(dir, { recursive: true });
});
