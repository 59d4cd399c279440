// `npm run bench:stream [-- --quick]`: streams of record batches between two Node processes —
// arrow-shm's shared ring next to an Arrow IPC stream over a UNIX socket (apache-arrow's
// RecordBatchStreamWriter → RecordBatchReader), side by side in one run. Measures throughput
// (batches back to back) and wake-up latency (one batch every 2 ms, so the reader sleeps between
// batches) with and without spinning, the same stream from a Python producer, and one Node
// publication read by 1–8 subscriber processes (throughput, and each process's memory from
// /proc). Writes bench/results/stream-*.json, the stream rows of bench/results/latest.json and the
// "Streams" section of BENCHMARKS.md.
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Binary, Field, Float64, RecordBatch, RecordBatchReader, RecordBatchStreamWriter, Schema, Struct, makeData } from 'apache-arrow';
import { publish } from '../src/stream/pubsub.js';
import { connect } from '../src/transport/channel.js';
import { listen } from '../src/transport/listener.js';
import { now } from './methods.js';
import type { SubscriberReport } from './pubsub_subscriber.js';
import { StreamWriter } from '../src/stream/producer.js';
import { StreamReader } from '../src/stream/consumer.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const quick = process.argv.includes('--quick');
const venvPython = path.join(root, '.build', 'venv', 'bin', 'python');

type Method = 'arrow-shm-stream' | 'arrow-shm-stream-spin' | 'arrow-socket-stream' | 'arrow-shm-stream-python';
const schema = new Schema([new Field('sent_ms', new Float64(), false), new Field('payload', new Binary(), false)]);

/** One row: the send time, and `bytes` of payload in one binary value. */
function batchOf(payload: Uint8Array): RecordBatch {
  const sent = makeData({ type: new Float64(), length: 1, nullCount: 0, data: Float64Array.of(now()) });
  const bin = makeData({ type: new Binary(), length: 1, nullCount: 0, valueOffsets: Int32Array.of(0, payload.byteLength), data: payload });
  return new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: 1, nullCount: 0, children: [sent, bin] }));
}

interface Job {
  method: Method;
  address: string;
  batches: number;
  bytes: number;
  intervalMs: number;
}

// ---- producer (child process) ----------------------------------------------------------------

async function produce(job: Job): Promise<void> {
  const payload = new Uint8Array(job.bytes).fill(7);
  // Intervals under 1 ms are busy-waited (timers are coarser), so the producer never sleeps then.
  const pause = () => {
    if (job.intervalMs >= 1) return new Promise((r) => setTimeout(r, job.intervalMs));
    const until = now() + job.intervalMs;
    while (now() < until);
    return null;
  };
  if (job.method === 'arrow-socket-stream') {
    const socket = net.connect(job.address);
    await new Promise((r) => socket.once('connect', r));
    const writer = new RecordBatchStreamWriter();
    writer.toNodeStream().pipe(socket);
    for (let i = 0; i < job.batches; i++) {
      writer.write(batchOf(payload));
      if (socket.writableNeedDrain) await new Promise((r) => socket.once('drain', r));
      await pause();
    }
    writer.finish();
    await new Promise((r) => socket.once('close', r));
    return;
  }
  const channel = await connect(job.address);
  const stream = await StreamWriter.open(channel, schema, { capacityBytes: 64 * 1024 * 1024 });
  for (let i = 0; i < job.batches; i++) {
    await stream.write(batchOf(payload));
    await pause();
  }
  await stream.close();
  channel.close();
}

// ---- consumer (this process) -----------------------------------------------------------------

interface Result {
  method: Method;
  bytes: number;
  batches: number;
  interval_ms: number;
  /** Producer's first send to consumer's last receipt, per batch. */
  per_batch_us: number;
  latency_median_us: number;
  latency_p99_us: number;
}

async function run(job: Omit<Job, 'address'>): Promise<Result> {
  const address = job.method === 'arrow-socket-stream' ? path.join(os.tmpdir(), `arrow-shm-bench-${process.pid}.sock`) : `@arrow-shm-bench-stream-${process.pid}`;
  const latencies: number[] = [];
  let first = 0;
  let last = 0;
  const record = (sent: number) => {
    const t = now();
    if (latencies.length === 0) first = sent;
    last = t;
    latencies.push((t - sent) * 1000);
  };
  let child: ChildProcess;
  if (job.method === 'arrow-socket-stream') {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(address, r));
    child = fork(fileURLToPath(import.meta.url), ['--produce', JSON.stringify({ ...job, address })]);
    const socket = await new Promise<net.Socket>((r) => server.once('connection', r));
    const reader = await RecordBatchReader.from(socket);
    for await (const batch of reader) record(batch.getChildAt(0)!.get(0) as number);
    server.close();
  } else {
    const listener = listen(address);
    child = startProducer({ ...job, address });
    const channel = await Promise.race([listener.accept(), failedExit(child)]);
    const reader = await StreamReader.accept(channel, { spinMicros: job.method === 'arrow-shm-stream-spin' ? 200 : 0 });
    for await (const batch of reader) record(batch.getChildAt(0)!.get(0) as number);
    reader.close();
    channel.close();
    listener.close();
  }
  if (child.exitCode === null) await new Promise((r) => child.once('exit', r));
  const sorted = [...latencies].sort((a, b) => a - b);
  return {
    method: job.method,
    bytes: job.bytes,
    batches: job.batches,
    interval_ms: job.intervalMs,
    per_batch_us: ((last - first) * 1000) / job.batches,
    latency_median_us: sorted[Math.floor(sorted.length / 2)]!,
    latency_p99_us: sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))]!,
  };
}

/** The producer child: this script in Node, or bench/stream_producer.py with the venv's Python. */
function startProducer(job: Job): ChildProcess {
  if (job.method !== 'arrow-shm-stream-python') return fork(fileURLToPath(import.meta.url), ['--produce', JSON.stringify(job)]);
  return spawn(venvPython, [path.join(root, 'bench', 'stream_producer.py'), JSON.stringify(job)], { stdio: 'inherit' });
}

/** Rejects if the child exits with an error (else never settles): a dead producer must not leave accept() waiting. */
function failedExit(child: ChildProcess): Promise<never> {
  return new Promise((_, reject) =>
    child.once('exit', (code, signal) => {
      if (code !== 0) reject(new Error(`the producer exited with ${signal ?? code}`));
    }),
  );
}

async function main(): Promise<void> {
  const methods: Method[] = ['arrow-socket-stream', 'arrow-shm-stream', 'arrow-shm-stream-spin'];
  if (existsSync(venvPython)) methods.push('arrow-shm-stream-python');
  else console.log(`no Python venv at ${path.relative(root, venvPython)} (scripts/ensure-venv.sh builds it): the arrow-shm-stream-python rows are skipped`);
  const results: Result[] = [];
  const throughput = [
    { bytes: 8, batches: quick ? 20_000 : 100_000 },
    { bytes: 64 * 1024, batches: quick ? 2_000 : 10_000 },
    { bytes: 1024 * 1024, batches: quick ? 200 : 1_000 },
  ];
  for (const { bytes, batches } of throughput) {
    for (const method of methods) {
      const r = await run({ method, bytes, batches, intervalMs: 0 });
      results.push(r);
      console.log(`${method.padEnd(24)} ${String(bytes).padStart(8)} B × ${batches}: ${r.per_batch_us.toFixed(2)} µs/batch`);
    }
  }
  for (const intervalMs of [2, 0.05]) {
    for (const method of methods) {
      const r = await run({ method, bytes: 8, batches: quick ? 500 : 2000, intervalMs });
      results.push(r);
      console.log(`${method.padEnd(24)} latency (a batch every ${intervalMs} ms): median ${r.latency_median_us.toFixed(1)} µs, p99 ${r.latency_p99_us.toFixed(1)} µs`);
    }
  }
  const pubsub: PubSubResult[] = [];
  for (const k of [1, 2, 4, 8]) {
    const r = await runPubSub(k, quick ? 128 : 256, 1024 * 1024);
    pubsub.push(r);
    const sub = meanMemory(r.subscribers_after);
    console.log(
      `arrow-shm-pubsub k=${k}: ${r.batches_per_s.toFixed(0)} batches/s; per subscriber Rss ${mib(sub.rss_kib)} MiB, Pss ${mib(sub.pss_kib)} MiB, private ${mib(sub.private_kib)} MiB (ring Rss ${mib(sub.ring_rss_kib)}, Pss ${mib(sub.ring_pss_kib)})`,
    );
  }
  const limit = cPingPong(20000);
  if (limit) console.log(`C ping-pong over shared memory (the limit): one-way ${limit.spin_median_us.toFixed(2)} µs spinning, ${limit.eventfd_median_us.toFixed(1)} µs sleeping on eventfd`);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const doc: Doc = { command: `npm run bench:stream${quick ? ' -- --quick' : ''}`, date: new Date().toISOString(), machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version }, results, pubsub, limit };
  writeFileSync(path.join(root, 'bench', 'results', `stream-${stamp}.json`), JSON.stringify(doc, null, 1));
  mergeLatest(doc);
  writeStreamSection(doc);
  console.log(`\nwrote bench/results/stream-${stamp}.json, the stream rows of bench/results/latest.json and the Streams section of BENCHMARKS.md`);
}

// ---- publish/subscribe: one Node publisher (this process), k subscriber processes ----------

/** One process's memory (KiB): /proc/<pid>/smaps_rollup, and its mappings of the ring from /proc/<pid>/smaps. */
interface Memory {
  rss_kib: number;
  pss_kib: number;
  private_kib: number;
  shared_clean_kib: number;
  shared_dirty_kib: number;
  ring_rss_kib: number;
  ring_pss_kib: number;
}

interface PubSubResult {
  subscribers: number;
  bytes: number;
  batches: number;
  ring_bytes: number;
  /** Publisher's first write to the last subscriber's read of the last batch. */
  batches_per_s: number;
  /** Publisher's first write to its last write returning (it waits for room when subscribers lag). */
  publisher_write_ms: number;
  /** Send → read of every batch by every subscriber, back to back (queueing included). */
  latency_median_us: number;
  latency_p99_us: number;
  publisher: Memory;
  /** Each subscriber just after it subscribed, before the first batch. */
  subscribers_before: Memory[];
  /** Each subscriber after it read every batch, ring still mapped, before it exits. */
  subscribers_after: Memory[];
}

const RING_BYTES = 64 * 1024 * 1024;
const mib = (kib: number) => (kib / 1024).toFixed(1);

function memoryOf(pid: number): Memory {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(rollup)?.[1] ?? NaN);
  const ring = ringMemory(readFileSync(`/proc/${pid}/smaps`, 'utf8'));
  return {
    rss_kib: field('Rss'),
    pss_kib: field('Pss'),
    private_kib: field('Private_Clean') + field('Private_Dirty'),
    shared_clean_kib: field('Shared_Clean'),
    shared_dirty_kib: field('Shared_Dirty'),
    ring_rss_kib: ring.rss,
    ring_pss_kib: ring.pss,
  };
}

/** Rss and Pss of the mappings of the ring's memfd (header and data), summed. */
function ringMemory(smaps: string): { rss: number; pss: number } {
  let inRing = false;
  const sum = { rss: 0, pss: 0 };
  for (const line of smaps.split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inRing = line.includes('memfd:arrow-shm-ring');
    else if (inRing && line.startsWith('Rss:')) sum.rss += Number(line.split(/\s+/)[1]);
    else if (inRing && line.startsWith('Pss:')) sum.pss += Number(line.split(/\s+/)[1]);
  }
  return sum;
}

function meanMemory(all: Memory[]): Memory {
  const mean = (f: keyof Memory) => all.reduce((n, m) => n + m[f], 0) / all.length;
  return {
    rss_kib: mean('rss_kib'),
    pss_kib: mean('pss_kib'),
    private_kib: mean('private_kib'),
    shared_clean_kib: mean('shared_clean_kib'),
    shared_dirty_kib: mean('shared_dirty_kib'),
    ring_rss_kib: mean('ring_rss_kib'),
    ring_pss_kib: mean('ring_pss_kib'),
  };
}

/** The report a subscriber sends once it read every batch; rejects if it exits first. */
function reportOf(child: ChildProcess): Promise<SubscriberReport> {
  return new Promise((resolve, reject) => {
    child.once('message', (m) => resolve(m as SubscriberReport));
    child.once('exit', (code, signal) => reject(new Error(`a subscriber exited with ${signal ?? code} before reading everything`)));
  });
}

async function runPubSub(k: number, batches: number, bytes: number): Promise<PubSubResult> {
  const address = `@arrow-shm-bench-pubsub-${process.pid}-${k}`;
  const publication = publish(address, schema, { capacityBytes: RING_BYTES });
  const script = path.join(here, 'pubsub_subscriber.js');
  const children = Array.from({ length: k }, () => fork(script, [JSON.stringify({ address, batches })]));
  const reports = children.map(reportOf);
  try {
    await publication.waitForSubscribers(k, { timeoutMs: 20_000 });
    const before = children.map((c) => memoryOf(c.pid!));
    const payload = new Uint8Array(bytes).fill(7);
    const first = now();
    for (let i = 0; i < batches; i++) await publication.write(batchOf(payload));
    const written = now();
    const done = await Promise.all(reports);
    // Everyone read everything and still maps the ring: this is the memory the point is about.
    const after = children.map((c) => memoryOf(c.pid!));
    const publisher = memoryOf(process.pid);
    const exits = children.map((c) => new Promise((r) => c.once('exit', r)));
    for (const c of children) c.send('finish');
    await publication.close({ timeoutMs: 20_000 });
    await Promise.all(exits);
    const latencies = done.flatMap((d) => d.latencies_ms.map((ms) => ms * 1000)).sort((a, b) => a - b);
    const last = Math.max(...done.map((d) => d.last_ms));
    return {
      subscribers: k,
      bytes,
      batches,
      ring_bytes: RING_BYTES,
      batches_per_s: batches / ((last - first) / 1000),
      publisher_write_ms: written - first,
      latency_median_us: latencies[Math.floor(latencies.length / 2)]!,
      latency_p99_us: latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * 0.99))]!,
      publisher,
      subscribers_before: before,
      subscribers_after: after,
    };
  } catch (e) {
    publication.abort();
    for (const c of children) c.kill();
    throw e;
  }
}

// ---- results ---------------------------------------------------------------------------------

interface Doc {
  command: string;
  date: string;
  machine: { cpus: number; cpu?: string; node: string };
  results: Result[];
  pubsub: PubSubResult[];
  limit: PingPong | null;
}

/** bench/results/latest.json (written by bench/run.ts) with this run's stream and C ping-pong rows in place of earlier ones. */
function mergeLatest(doc: Doc): void {
  const file = path.join(root, 'bench', 'results', 'latest.json');
  const previous = (existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : []) as { scenario: string; method: string }[];
  const kept = previous.filter((r) => r.scenario !== 'stream' && !(r.scenario === 'limits' && r.method.startsWith('c-pingpong')));
  writeFileSync(file, JSON.stringify([...kept, ...latestRows(doc)], null, 1));
}

function latestRows(doc: Doc): object[] {
  const streams = doc.results.map((r) => ({
    scenario: 'stream',
    method: r.method,
    from: r.method === 'arrow-shm-stream-python' ? 'python' : 'node',
    to: 'node',
    bytes: r.bytes,
    rows: r.batches,
    runs: r.batches,
    median_ms: r.latency_median_us / 1000,
    p99_ms: r.latency_p99_us / 1000,
    per_batch_ms: r.per_batch_us / 1000,
    interval_ms: r.interval_ms,
    samples_ms: [],
  }));
  const pubsub = doc.pubsub.map((r) => ({
    scenario: 'stream',
    method: `arrow-shm-pubsub-k${r.subscribers}`,
    from: 'node',
    to: 'node',
    bytes: r.bytes,
    rows: r.batches,
    runs: r.batches,
    median_ms: r.latency_median_us / 1000,
    p99_ms: r.latency_p99_us / 1000,
    per_batch_ms: 1000 / r.batches_per_s,
    interval_ms: 0,
    subscribers: r.subscribers,
    ring_bytes: r.ring_bytes,
    batches_per_s: r.batches_per_s,
    subscriber_mean: meanMemory(r.subscribers_after),
    subscriber_mean_before: meanMemory(r.subscribers_before),
    publisher: r.publisher,
    samples_ms: [],
  }));
  const l = doc.limit;
  const limits = l
    ? [
        { method: 'c-pingpong', median: l.eventfd_median_us, p99: l.eventfd_p99_us },
        { method: 'c-pingpong-spin', median: l.spin_median_us, p99: l.spin_p99_us },
      ].map((x) => ({ scenario: 'limits', method: x.method, from: 'c', to: 'c', bytes: 8, rows: 0, runs: l.rounds, median_ms: x.median / 1000, p99_ms: x.p99 / 1000, samples_ms: [] }))
    : [];
  return [...streams, ...pubsub, ...limits];
}

interface PingPong {
  rounds: number;
  spin_median_us: number;
  spin_p99_us: number;
  eventfd_median_us: number;
  eventfd_p99_us: number;
}

/** The physical limit: bench/limits/pingpong.c, built here with the system C compiler (null if there is none). */
function cPingPong(rounds: number): PingPong | null {
  const binary = path.join(root, '.build', 'bench', 'pingpong');
  mkdirSync(path.dirname(binary), { recursive: true });
  const cc = spawnSync('cc', ['-O2', '-o', binary, path.join(root, 'bench', 'limits', 'pingpong.c')], { stdio: 'inherit' });
  if (cc.status !== 0) {
    console.log('no C compiler: the C ping-pong limit is skipped');
    return null;
  }
  const run = spawnSync(binary, [String(rounds)], { encoding: 'utf8' });
  return run.status === 0 ? (JSON.parse(run.stdout) as PingPong) : null;
}

export const STREAM_SECTION_START = '<!-- streams: generated by npm run bench:stream -->';
export const STREAM_SECTION_END = '<!-- /streams -->';

function writeStreamSection(doc: Doc): void {
  const human = (b: number) => (b >= 1 << 20 ? `${b / (1 << 20)} MiB` : b >= 1024 ? `${b / 1024} KiB` : `${b} B`);
  const lines = [
    STREAM_SECTION_START,
    '## Streams: batches through a shared ring vs. an Arrow IPC stream over a UNIX socket',
    '',
    `Generated by \`${doc.command}\` on ${doc.date} (${doc.machine.cpus} × ${doc.machine.cpu}, Node ${doc.machine.node}). Two Node processes;`,
    "each batch is one row: a send timestamp and a binary value of the given size. The socket baseline is apache-arrow's",
    '`RecordBatchStreamWriter` piped into a UNIX socket, read with `RecordBatchReader`. The reader reads every batch in place (ring) or',
    'decodes it from the socket bytes; both read the timestamp of every batch.',
    '',
    '| batch payload | batches | Arrow over a socket | arrow-shm ring | ratio | arrow-shm ring, reader spins 200 µs | ratio | arrow-shm ring, Python producer |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  const find = (m: Method, bytes: number, interval: number) => doc.results.find((r) => r.method === m && r.bytes === bytes && r.interval_ms === interval);
  for (const bytes of [...new Set(doc.results.filter((r) => r.interval_ms === 0).map((r) => r.bytes))]) {
    const base = find('arrow-socket-stream', bytes, 0)!;
    const shm = find('arrow-shm-stream', bytes, 0)!;
    const spin = find('arrow-shm-stream-spin', bytes, 0)!;
    const python = find('arrow-shm-stream-python', bytes, 0);
    const cell = (r: Result) => `${r.per_batch_us.toFixed(1)} µs/batch`;
    lines.push(
      `| ${human(bytes)} | ${base.batches} | ${cell(base)} | ${cell(shm)} | ${(base.per_batch_us / shm.per_batch_us).toFixed(1)}× faster | ${cell(spin)} | ${(base.per_batch_us / spin.per_batch_us).toFixed(1)}× faster | ${python ? cell(python) : 'not run'} |`,
    );
  }
  lines.push('', 'Latency, send → read, of one 8-byte batch every 2 ms (the reader sleeps between batches) and every 50 µs (busy-waited by the producer):', '', '| method | every 2 ms: median | p99 | every 50 µs: median | p99 |', '|---|---:|---:|---:|---:|');
  for (const method of ['arrow-socket-stream', 'arrow-shm-stream', 'arrow-shm-stream-spin', 'arrow-shm-stream-python'] as const) {
    if (!doc.results.some((r) => r.method === method)) continue;
    const [slow, fast] = [find(method, 8, 2), find(method, 8, 0.05)];
    const cells = (r?: Result) => (r ? `${r.latency_median_us.toFixed(1)} µs | ${r.latency_p99_us.toFixed(1)} µs` : ' | ');
    lines.push(`| ${method} | ${cells(slow)} | ${cells(fast)} |`);
  }
  lines.push(
    '',
    '`arrow-shm-stream` sleeps on its eventfd when the ring is empty (no CPU while idle); `arrow-shm-stream-spin` first busy-polls the',
    'ring for up to 200 µs (`spinMicros: 200`), which trades CPU for latency. While both sides are busy a batch costs no system call.',
    '`arrow-shm-stream-python`: the producer is `bench/stream_producer.py` (the Python peer, `Channel.open_stream`), the reader the same Node',
    'reader as `arrow-shm-stream` (no spinning); the Python writer pays pyarrow\'s IPC writer and a copy into the ring per batch.',
    ...pubSubLines(doc),
    ...limitLines(doc),
    STREAM_SECTION_END,
  );
  const file = path.join(root, 'BENCHMARKS.md');
  const current = readFileSync(file, 'utf8');
  const start = current.indexOf(STREAM_SECTION_START);
  const end = current.indexOf(STREAM_SECTION_END);
  const section = lines.join('\n');
  const next = start >= 0 && end > start ? current.slice(0, start) + section + current.slice(end + STREAM_SECTION_END.length) : `${current.trimEnd()}\n\n${section}\n`;
  writeFileSync(file, next);
}

/** The publish/subscribe table: throughput and, per process, what /proc says it holds in memory. */
function pubSubLines(doc: Doc): string[] {
  if (!doc.pubsub.length) return [];
  const first = doc.pubsub[0]!;
  const lines = [
    '',
    `### Publish/subscribe: one publication, k subscriber processes, ${first.batches} batches of ${first.bytes / (1 << 20)} MiB through a ${first.ring_bytes / (1 << 20)} MiB ring`,
    '',
    'The publisher is the benchmark process (Node, `publish()`); each subscriber is a forked Node process (`subscribe()`, `bench/pubsub_subscriber.ts`)',
    'that reads every batch in place (its timestamp, and one byte of every 4 KiB page of the payload, so the pages are really mapped).',
    "Memory is each process's `/proc/<pid>/smaps_rollup` after every subscriber read every batch, ring still mapped; 'ring' is the part of it",
    "in the ring's memfd mappings (`/proc/<pid>/smaps`). Subscriber figures are means over the k subscribers, MiB.",
    '',
    '| k | batches/s (first write → last subscriber done) | subscriber Rss | of which ring | Pss | of which ring | private (clean + dirty) | private just after subscribing | shared (clean + dirty) | publisher Rss / Pss / ring Pss | ring Pss, all processes |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of doc.pubsub) {
    const s = meanMemory(r.subscribers_after);
    const b = meanMemory(r.subscribers_before);
    const p = r.publisher;
    const ringTotal = p.ring_pss_kib + r.subscribers_after.reduce((n, m) => n + m.ring_pss_kib, 0);
    lines.push(
      `| ${r.subscribers} | ${r.batches_per_s.toFixed(0)} (${((r.batches_per_s * r.bytes) / 1e9).toFixed(2)} GB/s each) | ${mib(s.rss_kib)} | ${mib(s.ring_rss_kib)} | ${mib(s.pss_kib)} | ${mib(s.ring_pss_kib)} | ${mib(s.private_kib)} | ${mib(b.private_kib)} | ${mib(s.shared_clean_kib + s.shared_dirty_kib)} | ${mib(p.rss_kib)} / ${mib(p.pss_kib)} / ${mib(p.ring_pss_kib)} | ${mib(ringTotal)} |`,
    );
  }
  // Private growth, read off this run: what a subscriber kept of the bytes it read.
  const growth = Math.max(...doc.pubsub.map((r) => meanMemory(r.subscribers_after).private_kib - meanMemory(r.subscribers_before).private_kib));
  lines.push(
    '',
    "Each batch is in memory once whatever k: Rss counts the whole ring in every subscriber, Pss shares it out between the k + 1 processes that",
    `map it, the ring's Pss summed over all of them stays the ring, and a subscriber's private memory (its Node heap and code) grew by at most`,
    `${mib(growth)} MiB (mean per k) while it read ${(first.batches * first.bytes) / (1 << 20)} MiB.`,
  );
  return lines;
}

/** The C ping-pong of the same run, and the ring's wake-up latency as a multiple of it. */
function limitLines(doc: { results: Result[]; limit: PingPong | null }): string[] {
  const l = doc.limit;
  if (!l) return ['', 'The C ping-pong limit was not measured (no C compiler).'];
  const sleeping = doc.results.find((r) => r.method === 'arrow-shm-stream' && r.bytes === 8 && r.interval_ms === 2);
  return [
    '',
    `The physical limit, same run (\`bench/limits/pingpong.c\`, two C processes passing a token through one shared cache line, ${l.rounds} round trips):`,
    `one-way ${l.spin_median_us.toFixed(2)} µs (p99 ${l.spin_p99_us.toFixed(2)}) busy-waiting, ${l.eventfd_median_us.toFixed(1)} µs (p99 ${l.eventfd_p99_us.toFixed(1)}) sleeping on an eventfd each.` +
      (sleeping
        ? ` The ring's idle wake-up (${sleeping.latency_median_us.toFixed(0)} µs) is ${(sleeping.latency_median_us / l.eventfd_median_us).toFixed(1)}× the C eventfd wake-up: the rest is Node (libuv poll, the event loop, apache-arrow decoding), not the kernel.`
        : ''),
  ];
}

if (process.argv[2] === '--produce') await produce(JSON.parse(process.argv[3]!) as Job);
else await main();
