import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tableToIPC } from 'apache-arrow';
import { generateSymbolTable } from '../src/cli/symbols.js';
import { goldStreams, runCli, startListening, cliScript, uniqueAddress } from './helpers.js';

const tmp = () => mkdtempSync(path.join(os.tmpdir(), 'arrow-shm-cli-'));

test('send → recv between two processes: files arrive byte for byte, --print summarises', async () => {
  const dir = tmp();
  const address = path.join(dir, 's');
  const files = goldStreams().slice(0, 3);
  const recv = await startListening(process.execPath, [cliScript, 'recv', '--socket', address, '--count', '3', '--out', path.join(dir, 'out'), '--print']);
  const sent = await runCli(['send', '--socket', address, '--meta', 'origin=test', ...files]);
  assert.equal(sent.code, 0, sent.stderr);
  const got = await recv.done;
  assert.equal(got.code, 0, got.stderr);
  assert.deepEqual(readdirSync(path.join(dir, 'out')).sort(), ['000000.arrows', '000001.arrows', '000002.arrows']);
  files.forEach((f, i) => assert.deepEqual(readFileSync(path.join(dir, 'out', `00000${i}.arrows`)), readFileSync(f)));
  assert.match(got.stdout, /metadata: origin=test/);
  assert.match(got.stdout, /schema: /);
  rmSync(dir, { recursive: true });
});

test('recv --connect / send --listen, IPC file format input and stdin', async () => {
  const dir = tmp();
  const address = uniqueAddress('cli');
  const table = generateSymbolTable(100);
  writeFileSync(path.join(dir, 'symbols.arrow'), tableToIPC(table, 'file'));
  const sender = await startListening(process.execPath, [cliScript, 'send', '--listen', '--socket', address, path.join(dir, 'symbols.arrow')]);
  const got = await runCli(['recv', '--connect', '--socket', address, '--out', path.join(dir, 'one.arrows'), '--print']);
  assert.equal(got.code, 0, got.stderr);
  assert.equal((await sender.done).code, 0);
  assert.match(got.stdout, /rows: 100, columns: 8/);
  // stdin
  const recv = await startListening(process.execPath, [cliScript, 'recv', '--socket', address, '--print']);
  const sent = await runCli(['send', '--socket', address, '-'], { input: tableToIPC(table) });
  assert.equal(sent.code, 0, sent.stderr);
  assert.match((await recv.done).stdout, /rows: 100/);
  rmSync(dir, { recursive: true });
});

test('--seed-compat: node sender to node receiver over the seed protocol', async () => {
  const dir = tmp();
  const address = path.join(dir, 'memfd_socket');
  const file = goldStreams().find((f) => f.includes('primitive'))!;
  const sender = await startListening(process.execPath, [cliScript, 'send', '--seed-compat', '--socket', address, file]);
  const got = await runCli(['recv', '--seed-compat', '--socket', address, '--out', path.join(dir, 'seed.arrows')]);
  assert.equal(got.code, 0, got.stderr);
  assert.equal((await sender.done).code, 0);
  assert.deepEqual(readFileSync(path.join(dir, 'seed.arrows')), readFileSync(file));
  rmSync(dir, { recursive: true });
});

test('bad usage and missing peers: one clear line, non-zero exit, no stack trace', async () => {
  const cases: [string[], number, RegExp][] = [
    [['send', '--socket', '/nonexistent/sock', goldStreams()[0]!], 1, /^arrow-shm: ERR_SYSCALL: no socket at \/nonexistent\/sock/],
    [['send', '--socket', '/tmp/x', '/no/such/file.arrows'], 2, /^arrow-shm: cannot read \/no\/such\/file.arrows/],
    [['recv'], 2, /^arrow-shm: error: required option '--socket <addr>' not specified/],
    [['recv', '--socket', '/tmp/x', '--count', 'zero'], 2, /^arrow-shm: error: option '--count <n>' argument 'zero' is invalid/],
    [['frobnicate'], 2, /^arrow-shm: error: unknown command 'frobnicate'/],
    [['send', '--socket', '/tmp/x', '/etc/hostname'], 1, /^arrow-shm: ERR_IPC_/],
  ];
  for (const [args, code, message] of cases) {
    const r = await runCli(args);
    assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  }
});
