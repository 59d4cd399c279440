// The Node program of the stream bench contract (bench/stream.ts pairs it with the other peers'):
//   node dist/bench/stream_peer.js consume --address A --batches N [--spin-micros S] [--blocking]
//   node dist/bench/stream_peer.js produce --address A --bytes B --batches N [--interval-ms I] [--capacity-bytes C]
//   node dist/bench/stream_peer.js pong --address A [--spin-micros S]
//   node dist/bench/stream_peer.js ping --address A --bytes B --rounds N [--spin-micros S]
// With --socket, consume and produce are the baseline instead: apache-arrow's IPC stream writer
// piped into a UNIX stream socket at the path A, read back with its RecordBatchReader.
// With --blocking (Node only), consume reads with readBlocking() on the main thread: it sleeps
// in poll() instead of the event loop.
// One row per batch (sent_ms float64, payload binary of B bytes of 0x07). stdout carries only the
// contract's JSON lines; errors go to stderr with exit code 1.
import net from 'node:net';
import { parseArgs } from 'node:util';
import { Binary, DataType, Field, Float64, Precision, RecordBatch, RecordBatchReader, RecordBatchStreamWriter, Schema, Struct, makeData, type Data } from 'apache-arrow';
import { connect, type Channel } from '../src/transport/channel.js';
import { listen } from '../src/transport/listener.js';
import { StreamWriter } from '../src/stream/producer.js';
import { StreamReader, type StreamBatch } from '../src/stream/consumer.js';

const RING_BYTES = 64 * 1024 * 1024;
const WARM_UP_ROUNDS = 100;
const schema = new Schema([new Field('sent_ms', new Float64(), false), new Field('payload', new Binary(), false)]);

/** CLOCK_MONOTONIC in ms, the clock every peer's sent_ms is on. */
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

/**
 * One reusable batch of `bytes` payload bytes, built once: `stamp()` sets its sent_ms just before
 * a write. Reusing it is safe because a write resolves once the batch is in the ring.
 */
class OutgoingBatch {
  readonly #payload: Data<Binary>;
  readonly #sent = new Float64Array(1);
  readonly #batch: RecordBatch;

  constructor(bytes: number) {
    this.#payload = makeData({ type: new Binary(), length: 1, nullCount: 0, valueOffsets: Int32Array.of(0, bytes), data: new Uint8Array(bytes).fill(7) });
    this.#batch = this.#withSent(this.#sent);
  }

  #withSent(sent: Float64Array): RecordBatch {
    const children = [makeData({ type: new Float64(), length: 1, nullCount: 0, data: sent }), this.#payload];
    return new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: 1, nullCount: 0, children }));
  }

  stamp(sentMs = nowMs()): RecordBatch {
    this.#sent[0] = sentMs;
    return this.#batch;
  }

  /** A batch of its own (same payload bytes), for writers that keep references to what they were given. */
  fresh(): RecordBatch {
    return this.#withSent(Float64Array.of(nowMs()));
  }
}

/** Row 0's sent_ms and payload length, read from the batch's buffers (not every payload byte). */
function rowOf(read: { batch: RecordBatch }): { sentMs: number; bytes: number } {
  const [sent, payload] = read.batch.data.children as [Data<Float64>, Data<Binary>];
  const offsets = payload.valueOffsets;
  return { sentMs: sent.values[sent.offset]!, bytes: offsets[payload.offset + 1]! - offsets[payload.offset]! };
}

// Readers take `reader.readSync() ?? (await reader.read())`: no promise when a batch is already published.
function checkSchema(reader: StreamReader): void {
  const [sent, payload] = reader.schema.fields;
  if (reader.schema.fields.length !== 2 || !DataType.isFloat(sent?.type) || sent.type.precision !== Precision.DOUBLE || !DataType.isBinary(payload?.type)) {
    throw new Error(`unexpected stream schema: ${reader.schema.fields.map((f) => `${f.name}: ${f.type}`).join(', ')}`);
  }
}

/** `attempt` until it succeeds, for up to 5 s: connecting before the peer listens is retried. */
async function retrying<T>(attempt: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      return await attempt();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

const connectRetrying = (address: string): Promise<Channel> => retrying(() => connect(address));

/** Listens at `address`, says so, and hands back the first connection. */
async function acceptOne(address: string): Promise<Channel> {
  const listener = listen(address);
  try {
    emit({ ready: true });
    return await listener.accept();
  } finally {
    listener.close();
  }
}

function emit(line: object): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function cpuMsSince(start: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000;
}

function percentile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))]!;
}

/** Intervals under 1 ms are busy-waited (timers are coarser); 0 means no pause. */
async function pause(intervalMs: number): Promise<void> {
  if (intervalMs >= 1) return new Promise((r) => setTimeout(r, intervalMs));
  const until = nowMs() + intervalMs;
  while (nowMs() < until);
}

interface Options {
  address: string;
  batches: number;
  bytes: number;
  rounds: number;
  intervalMs: number;
  capacityBytes: number;
  spinMicros: number;
  socket: boolean;
  blocking: boolean;
}

/** Receipt times of a stream's batches, checked against the count announced. */
class Receipts {
  readonly #latencies: Float64Array;
  #count = 0;
  #firstSent = 0;
  #lastRecv = 0;

  constructor(readonly batches: number) {
    this.#latencies = new Float64Array(batches);
  }

  record(sentMs: number): void {
    this.#lastRecv = nowMs();
    if (this.#count === this.batches) throw new Error(`more than the ${this.batches} batches announced arrived`);
    if (this.#count === 0) this.#firstSent = sentMs;
    this.#latencies[this.#count++] = (this.#lastRecv - sentMs) * 1000;
  }

  report(cpu: NodeJS.CpuUsage): void {
    if (this.#count !== this.batches) throw new Error(`the stream ended after ${this.#count} of ${this.batches} batches`);
    const sorted = this.#latencies.sort();
    emit({ batches: this.#count, first_sent_ms: this.#firstSent, last_recv_ms: this.#lastRecv, latency_median_us: percentile(sorted, 0.5), latency_p99_us: percentile(sorted, 0.99), cpu_ms: cpuMsSince(cpu) });
  }
}

async function consume(o: Options, cpu: NodeJS.CpuUsage): Promise<void> {
  if (o.socket) return consumeSocket(o, cpu);
  const channel = await acceptOne(o.address);
  const reader = await StreamReader.accept(channel, { spinMicros: o.spinMicros });
  checkSchema(reader);
  const receipts = new Receipts(o.batches);
  const take = (read: StreamBatch) => {
    receipts.record(rowOf(read).sentMs);
    read.release();
  };
  // readBlocking() leaves a batch whose own segment has not arrived to read() (the event loop receives it).
  if (o.blocking) for (let read = reader.readBlocking() ?? (await reader.read()); read; read = reader.readBlocking() ?? (await reader.read())) take(read);
  else for (let read = reader.readSync() ?? (await reader.read()); read; read = reader.readSync() ?? (await reader.read())) take(read);
  reader.close();
  channel.close();
  receipts.report(cpu);
}

async function consumeSocket(o: Options, cpu: NodeJS.CpuUsage): Promise<void> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(o.address, resolve));
  emit({ ready: true });
  const socket = await new Promise<net.Socket>((r) => server.once('connection', r));
  server.close();
  const receipts = new Receipts(o.batches);
  for await (const batch of await RecordBatchReader.from(socket)) receipts.record(rowOf({ batch }).sentMs);
  receipts.report(cpu);
}

async function produceSocket(o: Options, cpu: NodeJS.CpuUsage): Promise<void> {
  const socket = await retrying(() => new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect(o.address);
    s.once('connect', () => resolve(s)).once('error', reject);
  }));
  const writer = new RecordBatchStreamWriter();
  writer.toNodeStream().pipe(socket);
  const outgoing = new OutgoingBatch(o.bytes);
  for (let i = 0; i < o.batches; i++) {
    writer.write(outgoing.fresh()); // the writer queues views of the batch's buffers: no reuse
    if (socket.writableNeedDrain) await new Promise((r) => socket.once('drain', r));
    if (o.intervalMs > 0) await pause(o.intervalMs);
  }
  writer.finish();
  await new Promise((r) => socket.once('close', r));
  emit({ cpu_ms: cpuMsSince(cpu) });
}

async function produce(o: Options, cpu: NodeJS.CpuUsage): Promise<void> {
  if (o.socket) return produceSocket(o, cpu);
  const channel = await connectRetrying(o.address);
  const writer = await StreamWriter.open(channel, schema, { capacityBytes: o.capacityBytes });
  const outgoing = new OutgoingBatch(o.bytes);
  for (let i = 0; i < o.batches; i++) {
    await writer.write(outgoing.stamp());
    if (o.intervalMs > 0) await pause(o.intervalMs);
  }
  await writer.close();
  channel.close();
  emit({ cpu_ms: cpuMsSince(cpu) });
}

async function pong(o: Options, cpu: NodeJS.CpuUsage): Promise<void> {
  const channel = await acceptOne(o.address);
  const reader = await StreamReader.accept(channel, { spinMicros: o.spinMicros });
  checkSchema(reader);
  const writer = await StreamWriter.open(channel, schema, { capacityBytes: o.capacityBytes });
  const replies = new Map<number, OutgoingBatch>(); // one reusable reply batch per payload size
  for (let read = reader.readSync() ?? (await reader.read()); read; read = reader.readSync() ?? (await reader.read())) {
    const { sentMs, bytes } = rowOf(read);
    read.release();
    let reply = replies.get(bytes);
    if (!reply) replies.set(bytes, (reply = new OutgoingBatch(bytes)));
    await writer.write(reply.stamp(sentMs));
  }
  reader.close();
  await writer.close();
  channel.close();
  emit({ cpu_ms: cpuMsSince(cpu) });
}

async function ping(o: Options, cpu: NodeJS.CpuUsage): Promise<void> {
  const channel = await connectRetrying(o.address);
  const writer = await StreamWriter.open(channel, schema, { capacityBytes: o.capacityBytes });
  const reader = await StreamReader.accept(channel, { spinMicros: o.spinMicros });
  checkSchema(reader);
  const outgoing = new OutgoingBatch(o.bytes);
  const rtts = new Float64Array(o.rounds);
  for (let i = 0; i < WARM_UP_ROUNDS + o.rounds; i++) {
    await writer.write(outgoing.stamp());
    const read = reader.readSync() ?? (await reader.read());
    const received = nowMs();
    if (!read) throw new Error(`the reply stream ended after ${i} rounds`);
    const { sentMs } = rowOf(read);
    read.release();
    if (i >= WARM_UP_ROUNDS) rtts[i - WARM_UP_ROUNDS] = (received - sentMs) * 1000;
  }
  await writer.close();
  if (reader.readSync() ?? (await reader.read())) throw new Error('the reply stream carried more batches than rounds');
  reader.close();
  channel.close();
  rtts.sort();
  emit({ rounds: o.rounds, rtt_median_us: percentile(rtts, 0.5), rtt_p99_us: percentile(rtts, 0.99), cpu_ms: cpuMsSince(cpu) });
}

const roles = { consume, produce, pong, ping };

function options(): { role: keyof typeof roles; options: Options } {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: {
      address: { type: 'string' },
      batches: { type: 'string', default: '0' },
      bytes: { type: 'string', default: '8' },
      rounds: { type: 'string', default: '0' },
      'interval-ms': { type: 'string', default: '0' },
      'capacity-bytes': { type: 'string', default: String(RING_BYTES) },
      'spin-micros': { type: 'string', default: '0' },
      socket: { type: 'boolean', default: false },
      blocking: { type: 'boolean', default: false },
    },
  });
  const role = positionals[0] as keyof typeof roles;
  if (positionals.length !== 1 || !(role in roles)) throw new Error(`usage: stream_peer.js consume|produce|pong|ping --address A ... (got ${positionals.join(' ') || 'no role'})`);
  if (!values.address) throw new Error('--address is required');
  const number = (name: keyof typeof values, min: number) => {
    const n = Number(values[name]);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number ≥ ${min}, not ${values[name]}`);
    return n;
  };
  return {
    role,
    options: {
      address: values.address,
      batches: number('batches', role === 'consume' || role === 'produce' ? 1 : 0),
      bytes: number('bytes', 0),
      rounds: number('rounds', role === 'ping' ? 1 : 0),
      intervalMs: number('interval-ms', 0),
      capacityBytes: number('capacity-bytes', 1),
      spinMicros: number('spin-micros', 0),
      socket: values.socket ?? false,
      blocking: values.blocking ?? false,
    },
  };
}

try {
  const cpu = process.cpuUsage();
  const { role, options: o } = options();
  await roles[role](o, cpu);
} catch (e) {
  process.stderr.write(`stream_peer.js: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
}
