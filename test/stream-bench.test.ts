// The programs of `npm run bench:stream` (bench/stream_programs.ts): real processes, small counts.
// Every role of the Node program and of the iceoryx2 anchors keeps the contract (its JSON lines,
// every batch counted), a failing program is reported with its message, and the report's goals
// read the rows they name.
import { test } from 'node:test';
import { readdirSync, readFileSync } from 'node:fs';
import assert from 'node:assert/strict';
import { programs, runPingPong, runStream, type Program } from '../bench/stream_programs.js';
import { goals, summarise, type Doc, type Row } from '../bench/stream_report.js';
import { repoRoot } from './helpers.js';

const peers = programs(repoRoot);
const stream = { intervalMs: 0, spinMicros: 0, wake: 'poll' as const };

function checkConsumer(line: { batches: number; first_sent_ms: number; last_recv_ms: number; latency_median_us: number; cpu_ms: number }, batches: number): void {
  assert.equal(line.batches, batches);
  assert.ok(line.last_recv_ms >= line.first_sent_ms, 'the last receipt is after the first send');
  assert.ok(line.latency_median_us > 0 && line.cpu_ms >= 0);
}

test('node → node: every batch arrives, both sides report CPU; ping-pong reports round trips', { timeout: 60_000 }, async () => {
  for (const bytes of [8, 300_000]) {
    const r = await runStream(peers.node, peers.node, { ...stream, bytes, batches: 500, spinMicros: 100 });
    checkConsumer(r.consumer, 500);
    assert.ok(r.producer_cpu_ms > 0);
  }
  const p = await runPingPong(peers.node, { bytes: 8, rounds: 200, spinMicros: 100, wake: 'poll' });
  assert.equal(p.ping.rounds, 200);
  assert.ok(p.ping.rtt_median_us > 0 && p.ping.rtt_p99_us >= p.ping.rtt_median_us && p.pong_cpu_ms > 0);
});

test('the Arrow-over-a-socket baseline keeps the contract', { timeout: 60_000 }, async () => {
  const r = await runStream(peers.node, peers.node, { ...stream, bytes: 64, batches: 200, socket: true });
  checkConsumer(r.consumer, 200);
});

test('an idle stream (a batch every 2 ms) wakes a sleeping reader for every batch', { timeout: 60_000 }, async () => {
  const r = await runStream(peers.node, peers.node, { ...stream, bytes: 8, batches: 50, intervalMs: 2, wake: 'event' });
  checkConsumer(r.consumer, 50);
  assert.ok(r.consumer.last_recv_ms - r.consumer.first_sent_ms >= 49 * 2, 'the producer paused between batches');
});

for (const name of ['iceoryx2-python', 'iceoryx2-rust'] as const) {
  const program: Program = peers[name];
  test(`${name}: streams (polling and woken by events) and ping-pong keep the contract`, { timeout: 90_000, skip: program.missing ?? false }, async () => {
    for (const wake of ['poll', 'event'] as const) {
      for (const bytes of [8, 1 << 20]) {
        const r = await runStream(program, program, { ...stream, bytes, batches: 300, wake });
        checkConsumer(r.consumer, 300);
      }
    }
    const p = await runPingPong(program, { bytes: 8, rounds: 200, spinMicros: 0, wake: 'poll' });
    assert.equal(p.ping.rounds, 200);
  });
}

/** Processes whose command line has `marker`. */
function processesWith(marker: string): string[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .flatMap((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(marker) ? [p] : [];
      } catch {
        return []; // gone meanwhile
      }
    });
}

test('a program that fails is reported with its own message; a pair that hangs is killed', { timeout: 30_000 }, async () => {
  const broken: Program = { ...peers.node, args: [...peers.node.args, '--no-such-flag'] };
  await assert.rejects(runStream(peers.node, broken, { ...stream, bytes: 8, batches: 10 }), /the node consumer exited with 1: .*no-such-flag/);
  // A producer that never writes: the consumer waits for ever, the pair's time limit ends both.
  const marker = `never-writes-${process.pid}`;
  const silent: Program = { ...peers.node, args: ['-e', `setTimeout(() => {}, 600_000) // ${marker}`] };
  await assert.rejects(runStream(silent, peers.node, { ...stream, bytes: 8, batches: 10 }, 2000), /did not finish within 2 s/);
  await new Promise((r) => setTimeout(r, 200)); // SIGKILL is delivered asynchronously
  assert.deepEqual(processesWith(marker), [], 'the silent producer was killed');
});

test('rows: medians over the repetitions, a row without samples says why, goals read their rows', () => {
  const row = (over: Partial<Row>): Row => ({ kind: 'throughput', transport: 'arrow-shm', from: 'python', to: 'python', bytes: 8, batches: 10, interval_ms: 0, spin_micros: 0, failures: [], samples: [], ...over });
  const ours = row({ samples: [3, 1, 2].map((v) => ({ per_batch_us: v * 10, cpu_us_per_batch: v })) });
  const anchor = row({ transport: 'iceoryx2', samples: [{ per_batch_us: 10, cpu_us_per_batch: 1 }] });
  const failed = row({ from: 'cpp', to: 'cpp', failures: ['the cpp consumer exited with SIGSEGV'] });
  for (const r of [ours, anchor, failed]) summarise(r);
  assert.equal(ours.per_batch_us, 20);
  assert.equal(ours.cpu_us_per_batch, 2);
  assert.match(failed.not_run!, /^failed: the cpp consumer exited with SIGSEGV/);
  const doc: Doc = { command: '', date: '', machine: { cpus: 2, node: '' }, repetitions: 3, rows: [ours, anchor, failed], pubsub: [], limit: null, iceoryx2_rust: '' };
  const [py8] = goals(doc);
  assert.equal(py8!.ratio, 2);
  assert.equal(py8!.limit, 2);
  assert.match(goals(doc).find((g) => g.goal.startsWith('cpp→cpp'))!.missing!, /arrow-shm row did not run/);
});
