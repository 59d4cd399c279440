// Cross-language matrix, all 16 pairs of node, python, rust, cpp: every gold stream and the 100k-symbol table,
// sent by one peer's CLI and received by another's, arrive byte for byte and decode at the receiver.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { layoutIpcStream, writeIpcLayout } from '../src/ipc/writer.js';
import { generateSymbolTable } from '../src/cli/symbols.js';
import { goldStreams, repoRoot, runProcess, startListening } from './helpers.js';

const run = path.join(repoRoot, 'peers', 'run');
const peers = ['node', 'python', 'rust', 'cpp'] as const;

for (const sender of peers) {
  for (const receiver of peers) {
    test(`${sender} → ${receiver}: gold streams and the symbol table arrive byte for byte`, async () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), `arrow-shm-${sender}-${receiver}-`));
      const symbols = path.join(dir, 'symbols.arrows');
      const layout = layoutIpcStream(generateSymbolTable(100_000));
      const bytes = new Uint8Array(layout.byteLength);
      writeIpcLayout(layout, bytes);
      writeFileSync(symbols, bytes);
      const files = [...goldStreams(), symbols];
      const address = path.join(dir, 'sock');
      const out = path.join(dir, 'out');
      const recv = await startListening(run, [receiver, 'recv', '--socket', address, '--count', String(files.length), '--out', out, '--print']);
      const sent = await runProcess(run, [sender, 'send', '--socket', address, ...files], { timeoutMs: 120_000 });
      assert.equal(sent.code, 0, sent.stderr);
      const got = await recv.done;
      assert.equal(got.code, 0, got.stderr);
      // --print decoded every table at the receiver: no decode error was reported
      assert.doesNotMatch(got.stderr, /ERR_/, got.stderr);
      assert.equal(got.stdout.match(/^rows: /gm)?.length, files.length, got.stdout.slice(0, 2000));
      files.forEach((f, i) => assert.ok(readFileSync(path.join(out, `${String(i).padStart(6, '0')}.arrows`)).equals(readFileSync(f)), `${path.basename(f)} differs`));
      rmSync(dir, { recursive: true });
    });
  }
}
