// `npm run bench:stream [-- --quick] [-- --iceoryx2-rust] [-- --only idle,pingpong]`: streams of record batches between
// every peer, next to Eclipse iceoryx2 measured in the same run (issue #16). Every pair is two
// processes running the programs of the stream bench contract (bench/stream_programs.ts):
// - throughput: 8 B × 100k, 64 KiB × 10k, 1 MiB × 1k batches back to back (--quick: a fifth) for
//   node, python, rust and cpp (producer and consumer the same peer), python→node, node→python, the
//   iceoryx2 anchors (Python bindings; the Rust crate when built) and Arrow over a UNIX socket (Node);
// - ping-pong round trips (8 B, spinning readers) and the wake-up of an idle reader (one 8-byte
//   batch every 2 ms) for each peer and iceoryx2, next to the C limits (bench/limits/pingpong.c);
//   for Node also a reader that blocks its main thread in poll() (readBlocking());
// - one Node publication read by 1–8 subscriber processes (bench/stream_pubsub.ts).
// arrow-shm and iceoryx2 rows alternate, 3 repetitions in a full run (medians). A program that is
// not built gives a "not run" row. Writes bench/results/stream-*.json, the stream rows of
// bench/results/latest.json and the Streams section of BENCHMARKS.md (bench/stream_report.ts).
// --only KINDS (throughput, pingpong, idle) runs those rows alone and writes only
// .build/bench/stream-only-*.json (a partial run must not replace the published tables).
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cPingPong, prepareIceoryx2Rust, programs, runPingPong, runStream, type PeerName, type Program, type StreamRun } from './stream_programs.js';
import { goals, human, labelOf, mergeLatest, summarise, writeStreamSection, type Doc, type Kind, type Row, type Sample, type Transport } from './stream_report.js';
import { meanMemory, mib, runPubSub, type PubSubResult } from './stream_pubsub.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const quick = process.argv.includes('--quick');
const buildIceoryx2Rust = process.argv.includes('--iceoryx2-rust');
const onlyAt = process.argv.indexOf('--only');
const only = onlyAt > 0 ? new Set((process.argv[onlyAt + 1] ?? '').split(',')) : null;
if (only && ![...only].every((k) => ['throughput', 'pingpong', 'idle'].includes(k))) throw new Error(`--only takes throughput, pingpong and/or idle, comma-separated (got ${process.argv[onlyAt + 1]})`);
const scale = quick ? 5 : 1;
const REPETITIONS = quick ? 1 : 3;
/** arrow-shm readers busy-poll this long before sleeping in the throughput and ping-pong rows (iceoryx2's readers poll). */
const SPIN_MICROS = 1000;
const SIZES = [
  { bytes: 8, batches: 100_000 / scale },
  { bytes: 64 * 1024, batches: 10_000 / scale },
  { bytes: 1024 * 1024, batches: 1_000 / scale },
];
/** The socket baseline costs ~2 ms per small batch: fewer of them keep the run short. */
const SOCKET_MAX_BATCHES = 5_000 / scale;
const PING_ROUNDS = 5_000 / scale;
const IDLE = { bytes: 8, batches: 1_000 / scale, intervalMs: 2 };

/**
 * The smallest power-of-two ring (at least 64 KiB) in which a batch of `bytes` (plus its record
 * header and IPC metadata) is at most a quarter, so it still travels in the ring: 4 to 8 batches.
 */
function cachedRingBytes(bytes: number): number {
  let ring = 65536;
  while (ring < 4 * (bytes + 1024)) ring *= 2;
  return ring;
}

/** A throughput row's figures: first send → last receipt per batch, and both processes' CPU. */
function throughputSample(r: StreamRun, batches: number): Sample {
  return {
    per_batch_us: ((r.consumer.last_recv_ms - r.consumer.first_sent_ms) * 1000) / batches,
    latency_median_us: r.consumer.latency_median_us,
    latency_p99_us: r.consumer.latency_p99_us,
    cpu_us_per_batch: ((r.consumer.cpu_ms + r.producer_cpu_ms) * 1000) / batches,
  };
}

interface Cell {
  row: Row;
  run: () => Promise<Sample>;
}

/** The rows in the order they run: arrow-shm and iceoryx2 alternate. */
function matrix(peers: Record<PeerName, Program>): Cell[] {
  const cells: Cell[] = [];
  const add = (kind: Kind, transport: Transport, producer: Program, consumer: Program, row: Pick<Row, 'bytes' | 'batches' | 'interval_ms' | 'spin_micros' | 'ring_bytes' | 'reader'> & { wake?: 'poll' | 'event' }, run: () => Promise<Sample>) => {
    if (only && !only.has(kind)) return;
    const side = (p: Program) => p.name.replace('iceoryx2-', '');
    const missing = producer.missing ?? consumer.missing;
    cells.push({ row: { kind, transport, from: side(producer), to: side(consumer), ...row, ...(missing ? { not_run: missing } : {}), failures: [], samples: [] }, run });
  };
  const streamPairs: [Transport, PeerName, PeerName][] = [
    ['arrow-shm', 'node', 'node'],
    ['iceoryx2', 'iceoryx2-python', 'iceoryx2-python'],
    ['arrow-shm', 'python', 'python'],
    ['iceoryx2', 'iceoryx2-rust', 'iceoryx2-rust'],
    ['arrow-shm', 'rust', 'rust'],
    ['arrow-shm', 'cpp', 'cpp'],
    ['arrow-shm', 'python', 'node'],
    ['arrow-shm', 'node', 'python'],
    ['arrow-socket', 'node', 'node'],
  ];
  for (const { bytes, batches } of SIZES) {
    for (const [transport, from, to] of streamPairs) {
      const socket = transport === 'arrow-socket';
      const job = { bytes, batches: socket ? Math.min(batches, SOCKET_MAX_BATCHES) : batches, intervalMs: 0, spinMicros: transport === 'arrow-shm' ? SPIN_MICROS : 0, wake: 'poll' as const, socket };
      add('throughput', transport, peers[from], peers[to], { bytes, batches: job.batches, interval_ms: 0, spin_micros: job.spinMicros, ...(transport === 'iceoryx2' ? { wake: job.wake } : {}) }, async () =>
        throughputSample(await runStream(peers[from], peers[to], job), job.batches),
      );
    }
  }
  // The same pairs with a ring that stays in cache (iceoryx2 reuses a few warm samples; a 64 MiB
  // ring cycles through cold memory): the position a user who sizes the ring gets.
  for (const { bytes, batches } of SIZES.filter((s) => s.bytes >= 64 * 1024)) {
    for (const peer of ['node', 'python', 'rust', 'cpp'] as const) {
      const ringBytes = cachedRingBytes(bytes);
      const job = { bytes, batches, intervalMs: 0, spinMicros: SPIN_MICROS, wake: 'poll' as const, capacityBytes: ringBytes };
      add('throughput', 'arrow-shm', peers[peer], peers[peer], { bytes, batches, interval_ms: 0, spin_micros: SPIN_MICROS, ring_bytes: ringBytes }, async () =>
        throughputSample(await runStream(peers[peer], peers[peer], job), job.batches),
      );
    }
  }
  const samePeer = streamPairs.filter(([transport, from, to]) => transport !== 'arrow-socket' && from === to).map(([transport, peer]) => [transport, peer] as const);
  for (const [transport, peer] of samePeer) {
    const iceoryx2 = transport === 'iceoryx2';
    const job = { bytes: 8, rounds: PING_ROUNDS, spinMicros: iceoryx2 ? 0 : SPIN_MICROS, wake: 'poll' as const };
    add('pingpong', transport, peers[peer], peers[peer], { bytes: 8, batches: job.rounds, interval_ms: 0, spin_micros: job.spinMicros, ...(iceoryx2 ? { wake: job.wake } : {}) }, async () => {
      const r = await runPingPong(peers[peer], job);
      return { rtt_median_us: r.ping.rtt_median_us, rtt_p99_us: r.ping.rtt_p99_us, cpu_us_per_batch: ((r.ping.cpu_ms + r.pong_cpu_ms) * 1000) / (r.ping.rounds + 100) };
    });
  }
  for (const [transport, peer] of samePeer) {
    // Node's reader sleeps in its event loop; next to it, one blocking its main thread in poll().
    for (const blocking of peer === 'node' ? [false, true] : [false]) {
      const job = { ...IDLE, spinMicros: 0, wake: 'event' as const, blocking };
      add('idle', transport, peers[peer], peers[peer], { bytes: IDLE.bytes, batches: IDLE.batches, interval_ms: IDLE.intervalMs, spin_micros: 0, ...(transport === 'iceoryx2' ? { wake: job.wake } : {}), ...(blocking ? { reader: 'blocking' as const } : {}) }, async () => {
        const r = await runStream(peers[peer], peers[peer], job);
        return { latency_median_us: r.consumer.latency_median_us, latency_p99_us: r.consumer.latency_p99_us, cpu_us_per_batch: ((r.consumer.cpu_ms + r.producer_cpu_ms) * 1000) / job.batches };
      });
    }
  }
  return cells;
}

function describe(row: Row, sample: Sample): string {
  const what = row.kind === 'throughput' ? `${human(row.bytes)} × ${row.batches}` : row.kind === 'pingpong' ? `ping-pong ${row.batches} rounds` : `idle, a batch every ${row.interval_ms} ms`;
  const figure =
    row.kind === 'throughput'
      ? `${sample.per_batch_us!.toFixed(2)} µs/batch`
      : row.kind === 'pingpong'
        ? `round trip median ${sample.rtt_median_us!.toFixed(1)} µs, p99 ${sample.rtt_p99_us!.toFixed(1)} µs`
        : `send → read median ${sample.latency_median_us!.toFixed(1)} µs, p99 ${sample.latency_p99_us!.toFixed(1)} µs`;
  return `${labelOf(row).padEnd(38)} ${what.padEnd(30)} ${figure}, CPU ${sample.cpu_us_per_batch.toFixed(2)} µs/batch`;
}

async function main(): Promise<void> {
  const iceoryx2Rust = prepareIceoryx2Rust(root, buildIceoryx2Rust);
  const peers = programs(root, iceoryx2Rust);
  for (const p of Object.values(peers)) if (p.missing) console.log(`${p.name}: not run (${p.missing})`);
  const cells = matrix(peers);
  let limit = null;
  for (let rep = 1; rep <= REPETITIONS; rep++) {
    if (REPETITIONS > 1) console.log(`-- repetition ${rep} of ${REPETITIONS}`);
    for (const { row, run } of cells) {
      if (row.not_run) continue;
      try {
        const sample = await run();
        row.samples.push(sample);
        console.log(describe(row, sample));
      } catch (e) {
        const message = e instanceof Error ? e.message : String(e);
        row.failures.push(message);
        console.log(`${labelOf(row).padEnd(38)} ${row.kind} ${human(row.bytes)}: FAILED: ${message}`);
      }
    }
    // The limit once, in the middle of the run (after the first repetition).
    if (rep === 1) {
      limit = cPingPong(root, 20_000);
      if (limit) console.log(`C ping-pong over shared memory (the limit): one-way ${limit.spin_median_us.toFixed(2)} µs spinning, ${limit.eventfd_median_us.toFixed(1)} µs sleeping on eventfd (ping-pong), ${limit.idle_eventfd_median_us.toFixed(1)} µs waking an idle reader`);
    }
  }
  const rows = cells.map((c) => c.row);
  for (const row of rows) summarise(row);
  const pubsub: PubSubResult[] = [];
  let pubsubFailure: string | undefined;
  for (const k of only ? [] : [1, 2, 4, 8]) {
    try {
      const r = await runPubSub(k, quick ? 128 : 256, 1024 * 1024);
      pubsub.push(r);
      const sub = meanMemory(r.subscribers_after);
      console.log(
        `arrow-shm-pubsub k=${k}: ${r.batches_per_s.toFixed(0)} batches/s; per subscriber Rss ${mib(sub.rss_kib)} MiB, Pss ${mib(sub.pss_kib)} MiB, private ${mib(sub.private_kib)} MiB (ring Rss ${mib(sub.ring_rss_kib)}, Pss ${mib(sub.ring_pss_kib)})`,
      );
    } catch (e) {
      // The matrix above took minutes: a failed publish/subscribe row must not lose it.
      pubsubFailure = `k=${k}: ${e instanceof Error ? e.message : String(e)}`;
      console.log(`arrow-shm-pubsub ${pubsubFailure}`);
      break;
    }
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const command = `npm run bench:stream${quick || buildIceoryx2Rust || only ? ' --' : ''}${quick ? ' --quick' : ''}${buildIceoryx2Rust ? ' --iceoryx2-rust' : ''}${only ? ` --only ${[...only].join(',')}` : ''}`;
  const doc: Doc = {
    command,
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version },
    repetitions: REPETITIONS,
    rows,
    pubsub,
    ...(pubsubFailure ? { pubsub_failure: pubsubFailure } : {}),
    limit,
    iceoryx2_rust: iceoryx2Rust ?? (buildIceoryx2Rust ? 'built by this run (bench/iceoryx2-rs)' : 'the binary built earlier (bench/iceoryx2-rs)'),
  };
  // A partial run (--only) goes to .build/bench: the published results are full runs.
  const out = only ? path.join('.build', 'bench', `stream-only-${stamp}.json`) : path.join('bench', 'results', `stream-${stamp}.json`);
  mkdirSync(path.join(root, path.dirname(out)), { recursive: true });
  writeFileSync(path.join(root, out), JSON.stringify(doc, null, 1));
  if (!only) {
    mergeLatest(root, doc);
    writeStreamSection(root, doc);
  }
  console.log('\nissue #16 goals:');
  for (const g of goals(doc)) console.log(`  ${g.ratio === undefined ? `not measured (${g.missing})` : g.ratio <= g.limit ? 'met' : `not met (${g.ratio.toFixed(2)}×)`}: ${g.goal}`);
  console.log(`\nwrote ${out}${only ? ' (--only: latest.json and BENCHMARKS.md left as they were)' : ', the stream rows of bench/results/latest.json and the Streams section of BENCHMARKS.md'}`);
}

await main();
