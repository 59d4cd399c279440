// `npm run bench:stream [-- --quick]`: streams of record batches between two Node processes —
// arrow-shm's shared ring next to an Arrow IPC stream over a UNIX socket (apache-arrow's
// RecordBatchStreamWriter → RecordBatchReader), side by side in one run. Measures throughput
// (batches back to back) and wake-up latency (one batch every 2 ms, so the reader sleeps between
// batches) with and without spinning. Writes bench/results/stream-*.json and the "Streams"
// section of BENCHMARKS.md.
import { fork, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Binary, Field, Float64, RecordBatch, RecordBatchReader, RecordBatchStreamWriter, Schema, Struct, makeData } from 'apache-arrow';
import { connect, listen } from '../src/transport/channel.js';
import { now } from './methods.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const quick = process.argv.includes('--quick');

type Method = 'arrow-shm-stream' | 'arrow-shm-stream-spin' | 'arrow-socket-stream';
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
  const stream = await channel.openStream(schema, { capacityBytes: 64 * 1024 * 1024 });
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
  let child;
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
    child = fork(fileURLToPath(import.meta.url), ['--produce', JSON.stringify({ ...job, address })]);
    const channel = await listener.accept();
    const reader = await channel.acceptStream({ spinMicros: job.method === 'arrow-shm-stream-spin' ? 200 : 0 });
    for await (const batch of reader) record(batch.getChildAt(0)!.get(0) as number);
    reader.close();
    channel.close();
    listener.close();
  }
  await new Promise((r) => child.once('exit', r));
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

async function main(): Promise<void> {
  const methods: Method[] = ['arrow-socket-stream', 'arrow-shm-stream', 'arrow-shm-stream-spin'];
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
      console.log(`${method.padEnd(22)} ${String(bytes).padStart(8)} B × ${batches}: ${r.per_batch_us.toFixed(2)} µs/batch`);
    }
  }
  for (const intervalMs of [2, 0.05]) {
    for (const method of methods) {
      const r = await run({ method, bytes: 8, batches: quick ? 500 : 2000, intervalMs });
      results.push(r);
      console.log(`${method.padEnd(22)} latency (a batch every ${intervalMs} ms): median ${r.latency_median_us.toFixed(1)} µs, p99 ${r.latency_p99_us.toFixed(1)} µs`);
    }
  }
  const limit = cPingPong(20000);
  if (limit) console.log(`C ping-pong over shared memory (the limit): one-way ${limit.spin_median_us.toFixed(2)} µs spinning, ${limit.eventfd_median_us.toFixed(1)} µs sleeping on eventfd`);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const doc = { command: `npm run bench:stream${quick ? ' -- --quick' : ''}`, date: new Date().toISOString(), machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version }, results, limit };
  writeFileSync(path.join(root, 'bench', 'results', `stream-${stamp}.json`), JSON.stringify(doc, null, 1));
  writeStreamSection(doc);
  console.log(`\nwrote bench/results/stream-${stamp}.json and the Streams section of BENCHMARKS.md`);
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

function writeStreamSection(doc: { command: string; date: string; machine: { cpus: number; cpu?: string; node: string }; results: Result[]; limit: PingPong | null }): void {
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
    '| batch payload | batches | Arrow over a socket | arrow-shm ring | ratio | arrow-shm ring, reader spins 200 µs | ratio |',
    '|---:|---:|---:|---:|---:|---:|---:|',
  ];
  const find = (m: Method, bytes: number, interval: number) => doc.results.find((r) => r.method === m && r.bytes === bytes && r.interval_ms === interval);
  for (const bytes of [...new Set(doc.results.filter((r) => r.interval_ms === 0).map((r) => r.bytes))]) {
    const base = find('arrow-socket-stream', bytes, 0)!;
    const shm = find('arrow-shm-stream', bytes, 0)!;
    const spin = find('arrow-shm-stream-spin', bytes, 0)!;
    const cell = (r: Result) => `${r.per_batch_us.toFixed(1)} µs/batch`;
    lines.push(`| ${human(bytes)} | ${base.batches} | ${cell(base)} | ${cell(shm)} | ${(base.per_batch_us / shm.per_batch_us).toFixed(1)}× faster | ${cell(spin)} | ${(base.per_batch_us / spin.per_batch_us).toFixed(1)}× faster |`);
  }
  lines.push('', 'Latency, send → read, of one 8-byte batch every 2 ms (the reader sleeps between batches) and every 50 µs (busy-waited by the producer):', '', '| method | every 2 ms: median | p99 | every 50 µs: median | p99 |', '|---|---:|---:|---:|---:|');
  for (const method of ['arrow-socket-stream', 'arrow-shm-stream', 'arrow-shm-stream-spin'] as const) {
    const [slow, fast] = [find(method, 8, 2), find(method, 8, 0.05)];
    const cells = (r?: Result) => (r ? `${r.latency_median_us.toFixed(1)} µs | ${r.latency_p99_us.toFixed(1)} µs` : ' | ');
    lines.push(`| ${method} | ${cells(slow)} | ${cells(fast)} |`);
  }
  lines.push(
    '',
    '`arrow-shm-stream` sleeps on its eventfd when the ring is empty (no CPU while idle); `arrow-shm-stream-spin` first busy-polls the',
    'ring for up to 200 µs (`spinMicros: 200`), which trades CPU for latency. While both sides are busy a batch costs no system call.',
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
