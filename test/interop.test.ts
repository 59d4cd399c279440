// Node against pyarrow and the Rust engine (the seed's programs, for every peer: seed.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tableFromIPC, type Table } from 'apache-arrow';
import { connect } from '../src/transport/channel.js';
import { generateSymbolTable } from '../src/cli/symbols.js';
import { layoutIpcStream, writeIpcLayout } from '../src/ipc/writer.js';
import { goldStreams, repoRoot, runCli, runProcess, startListening, venvPython, cliScript } from './helpers.js';

const script = (name: string) => path.join(repoRoot, 'test', 'python', name);
const tmp = () => mkdtempSync(path.join(os.tmpdir(), 'arrow-shm-interop-'));

test('pyarrow reads what the aligned writer writes, equal to every gold stream arrow-js can decode', async () => {
  const dir = tmp();
  const pairs: string[] = [];
  for (const file of goldStreams()) {
    let table;
    try {
      table = tableFromIPC(readFileSync(file));
      if (table.batches.length === 0) continue;
      const layout = layoutIpcStream(table);
      const bytes = new Uint8Array(layout.byteLength);
      writeIpcLayout(layout, bytes);
      const out = path.join(dir, path.basename(file));
      writeFileSync(out, bytes);
      pairs.push(file, out);
    } catch {
      continue; // arrow-js cannot decode or encode it: passes through byte for byte instead (channel tests)
    }
  }
  const r = await runProcess(venvPython, [script('referee.py'), ...pairs]);
  // The one known difference is arrow-js's encoding of an empty field name (see ipc.test.ts).
  const different = r.stdout.split('\n').filter((l) => l.startsWith('DIFFERENT'));
  assert.deepEqual(different.map((l) => path.basename(l.split(' ')[1]!)), ['generated_duplicate_fieldnames.stream'], r.stdout + r.stderr);
  assert.ok(r.stdout.split('\n').filter((l) => l.startsWith('equal')).length >= 18, r.stdout);
  rmSync(dir, { recursive: true });
});

test('types arrow-js cannot decode pass through byte for byte; only decoding them says ERR_IPC_UNSUPPORTED', async () => {
  const dir = tmp();
  const made = await runProcess(venvPython, [script('unsupported_types.py'), dir]);
  assert.equal(made.code, 0, made.stderr);
  const files = made.stdout.trim().split('\n').map((n) => path.join(dir, `${n}.arrows`));
  const address = path.join(dir, 'sock');
  const recv = await startListening(process.execPath, [cliScript, 'recv', '--socket', address, '--count', String(files.length), '--out', path.join(dir, 'out'), '--print']);
  const sent = await runCli(['send', '--socket', address, ...files]);
  assert.equal(sent.code, 0, sent.stderr);
  const got = await recv.done;
  assert.equal(got.code, 0, got.stderr);
  assert.match(got.stderr, /ERR_IPC_UNSUPPORTED: arrow-js cannot decode this stream: Unrecognized type: "ListView"/);
  assert.match(got.stderr, /ERR_IPC_UNSUPPORTED: arrow-js cannot decode this stream: Unrecognized type: "RunEndEncoded"/);
  const pairs = files.flatMap((f, i) => [f, path.join(dir, 'out', `${String(i).padStart(6, '0')}.arrows`)]);
  files.forEach((f, i) => assert.deepEqual(readFileSync(pairs[2 * i + 1]!), readFileSync(f)));
  const referee = await runProcess(venvPython, [script('referee.py'), ...pairs]);
  assert.equal(referee.code, 0, referee.stdout + referee.stderr);
  rmSync(dir, { recursive: true });
});

test('Node asks the Rust engine to summarize 100,000 symbols: request/response through shared memory', async () => {
  const engine = path.join(repoRoot, '.build', 'rust', 'release', 'arrow-shm-rs');
  const address = `@arrow-shm-test-engine-${process.pid}`;
  const server = await startListening(engine, ['engine', '--socket', address, '--count', '1', '--timeout-ms', '30000']);
  const channel = await connect(address, { timeoutMs: 10_000 });
  try {
    const symbols = generateSymbolTable(100_000);
    using response = await channel.request(symbols, { timeoutMs: 20_000 });
    const got = response.table.toArray().map((r) => ({ ...r.toJSON(), count: Number(r.count) }));
    assert.deepEqual(got, expectedSummary(symbols));
  } finally {
    channel.close();
  }
  assert.equal((await server.done).code, 0);
});

/** The engine's answer computed here, independently: per file_id then per kind, keys ascending. */
function expectedSummary(table: Table) {
  const rows: { group: string; key: number; count: number; min_start_line: number; max_end_line: number }[] = [];
  const start = table.getChild('start_line')!.toArray() as Uint32Array;
  const end = table.getChild('end_line')!.toArray() as Uint32Array;
  for (const group of ['file_id', 'kind']) {
    const keys = table.getChild(group)!.toArray() as Uint16Array | Uint8Array;
    const acc = new Map<number, { count: number; min: number; max: number }>();
    keys.forEach((k, i) => {
      const a = acc.get(k) ?? { count: 0, min: Infinity, max: 0 };
      a.count++;
      a.min = Math.min(a.min, start[i]!);
      a.max = Math.max(a.max, end[i]!);
      acc.set(k, a);
    });
    for (const [key, a] of [...acc].sort((x, y) => x[0] - y[0])) rows.push({ group, key, count: a.count, min_start_line: a.min, max_end_line: a.max });
  }
  return rows;
}

test('pyarrow, arrow-rs and Arrow C++ decode the types arrow-js lacks, and views, float16, decimal32, unions', async () => {
  const dir = tmp();
  const made = await runProcess(venvPython, [script('unsupported_types.py'), dir, '--more']);
  assert.equal(made.code, 0, made.stderr);
  const files = made.stdout.trim().split('\n').map((n) => path.join(dir, `${n}.arrows`));
  for (const peer of ['python', 'rust', 'cpp']) {
    const address = path.join(dir, `${peer}.sock`);
    const recv = await startListening(path.join(repoRoot, 'peers', 'run'), [peer, 'recv', '--socket', address, '--count', String(files.length), '--print']);
    const sent = await runCli(['send', '--socket', address, ...files]);
    assert.equal(sent.code, 0, sent.stderr);
    const got = await recv.done;
    assert.equal(got.code, 0, got.stderr);
    assert.doesNotMatch(got.stderr, /ERR_/, `${peer}: ${got.stderr}`);
    assert.equal(got.stdout.match(/^rows: /gm)?.length, files.length, `${peer} decoded every file`);
  }
  rmSync(dir, { recursive: true });
});
