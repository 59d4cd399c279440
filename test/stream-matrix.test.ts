// Streams across every pair of peers (docs/PROTOCOL.md §12): `send --stream` of one peer to
// `recv --stream` of another, through a 64 KiB ring so records wrap and big batches take their own
// segment, on a stream whose dictionary grows (deltas) and is replaced, and on gold files; pyarrow
// referees the result. Then one publication per language to subscribers of all four.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { goldDir, repoRoot, runProcess, startListening, venvPython } from './helpers.js';

const run = path.join(repoRoot, 'peers', 'run');
const referee = path.join(repoRoot, 'test', 'python', 'referee.py');
const peers = ['node', 'python', 'rust', 'cpp'] as const;
const gold = ['1.0.0-littleendian/generated_dictionary', '1.0.0-littleendian/generated_nested_dictionary', '2.0.0-compression/generated_lz4'].map((f) => path.join(goldDir, `${f}.stream`));

const dir = mkdtempSync(path.join(os.tmpdir(), 'arrow-shm-stream-matrix-'));
const fixture = path.join(dir, 'fixture.arrows');
test.before(async () => {
  const made = await runProcess(venvPython, [path.join(repoRoot, 'test', 'python', 'stream_fixture.py'), fixture]);
  assert.equal(made.code, 0, made.stderr);
});
test.after(() => rmSync(dir, { recursive: true, force: true }));

for (const sender of peers) {
  for (const receiver of peers) {
    test(`stream ${sender} → ${receiver}: growing and replaced dictionaries, big batches, gold files`, { timeout: 120_000 }, async () => {
      const pairs: string[] = [];
      for (const [i, file] of [fixture, ...gold].entries()) {
        const address = path.join(dir, `${sender}-${receiver}-${i}.sock`);
        const out = path.join(dir, `${sender}-${receiver}-${i}.arrows`);
        const recv = await startListening(run, [receiver, 'recv', '--stream', '--socket', address, '--out', out, '--timeout-ms', '30000']);
        const sent = await runProcess(run, [sender, 'send', '--stream', '--ring-bytes', '65536', '--socket', address, '--timeout-ms', '30000', file]);
        const got = await recv.done;
        assert.equal(sent.code, 0, `${sender} send ${path.basename(file)}: ${sent.stderr}`);
        assert.equal(got.code, 0, `${receiver} recv ${path.basename(file)}: ${got.stderr}`);
        pairs.push(file, out);
      }
      const judged = await runProcess(venvPython, [referee, ...pairs]);
      assert.equal(judged.code, 0, judged.stdout + judged.stderr);
    });
  }
}

for (const publisher of peers) {
  test(`a ${publisher} publication reaches node, python, rust and cpp subscribers at once`, { timeout: 120_000 }, async () => {
    const address = path.join(dir, `pub-${publisher}.sock`);
    const pub = await startListening(run, [publisher, 'pub', '--socket', address, '--subscribers', '4', '--ring-bytes', '65536', '--timeout-ms', '30000', fixture]);
    const outs = peers.map((p) => path.join(dir, `pub-${publisher}-${p}.arrows`));
    const subs = await Promise.all(peers.map((p, i) => runProcess(run, [p, 'sub', '--socket', address, '--out', outs[i]!, '--timeout-ms', '30000'])));
    subs.forEach((s, i) => assert.equal(s.code, 0, `${peers[i]} sub: ${s.stderr}`));
    assert.equal((await pub.done).code, 0);
    const judged = await runProcess(venvPython, [referee, ...outs.flatMap((o) => [fixture, o])]);
    assert.equal(judged.code, 0, judged.stdout + judged.stderr);
  });
}
