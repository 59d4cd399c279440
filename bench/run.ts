// `npm run bench [-- --quick] [-- --breakdown]`: hand-off of Arrow tables between two processes,
// arrow-shm next to the methods people use today and next to the physical limits, measured side by
// side in one run. Writes bench/results/*.json and regenerates BENCHMARKS.md.
// --breakdown runs only the per-stage breakdown (where a hand-off's time goes, in each direction).
// --sweep runs only the size sweep and the limits (small hand-offs against the socket and a C
// fd-pass, for A/B runs): it prints them and writes bench/results/<date>.json, nothing else.
import { spawnSync } from 'node:child_process';
import diagnosticsChannel from 'node:diagnostics_channel';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeData, RecordBatch, Schema, Field, Struct, Table, Uint8, tableToIPC } from 'apache-arrow';
import cliProgress from 'cli-progress';
import { Bench } from 'tinybench';
import { connect, type Channel } from '../src/transport/channel.js';
import { PreparedTable } from '../src/ipc/prepared.js';
import { TableBuilder } from '../src/ipc/builder.js';
import { FlightClient } from '../src/transport/flight-client.js';
import { layoutIpcStream } from '../src/ipc/writer.js';
import { HANDOFF_CHANNEL, type HandoffEvent } from '../src/trace.js';
import { checksumSymbolTable, generateSymbolColumns, symbolRows, symbolTableFromColumns, type SymbolRow } from '../src/cli/symbols.js';
import { SOCKET_METHODS, cpuMs, encodeForSocket, now, writeFramed, type Method } from './methods.js';
import { root, startReceiver, startSender, venvPython, type Line, type Peer, type PeerProcess } from './peers.js';
import { writeReport } from './report.js';

const quick = process.argv.includes('--quick');
const breakdownOnly = process.argv.includes('--breakdown');
const sweepOnly = process.argv.includes('--sweep');

export interface Row {
  scenario: 'symbols' | 'symbols-read' | 'sweep' | 'limits' | 'breakdown';
  method: string;
  from: string;
  to: string;
  bytes: number;
  rows: number;
  runs: number;
  median_ms: number;
  p99_ms: number;
  /** CPU time per hand-off, both processes (background threads included), median; ms. */
  cpu_ms?: number;
  /** Breakdown rows: median time of each stage, in the order the hand-off went through them; ms. */
  stages?: [string, number][];
  samples_ms: number[];
}

const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};

interface Payload {
  table: Table;
  rows: SymbolRow[] | null;
  bytes: number;
  checksum?: number;
  /** The IPC stream in a file, for senders in other processes. */
  file?: string;
}

interface Measured {
  samples: number[];
  cpu: number[];
  stages: [string, number][][];
}

/**
 * Idle time before each hand-off: a sender that hands off tables back to back at full speed is not
 * what we measure; between hand-offs a sender's background work (preparing the next segment) runs,
 * and its CPU is counted in every row's CPU column. Every method gets the same pause.
 */
const pauseMs = (bytes: number) => 2 + bytes / 2e6;
const WARMUPS = 5;

/**
 * `runs` hand-offs of `payload` from `from` to `to` with `method`. Latency: from the sender's t0
 * ("it holds the data") to the receiver's t1 ("it holds a usable table", or read every value).
 */
async function handOffs(method: Method, payload: Payload, runs: number, opts: { from?: Peer; to?: Peer; read?: boolean; breakdown?: boolean; dir: string; tick: () => void }): Promise<Measured> {
  const from = opts.from ?? 'node';
  const to = opts.to ?? 'node';
  const address = method.startsWith('arrow-shm')
    ? `@arrow-shm-bench-${process.pid}-${method}-${from}-${to}`
    : method === 'flight'
      ? `grpc://127.0.0.1:${await freePort()}`
      : path.join(opts.dir, `${method}-${from}-${to}.sock`);
  const peerOptions = { read: opts.read, breakdown: opts.breakdown };
  const receiver = await startReceiver(to, method, address, peerOptions);
  let sender: PeerProcess | null = null;
  const out: Measured = { samples: [], cpu: [], stages: [] };
  let previous: { sender?: number; receiver?: number } = {};
  try {
    const node = from === 'node' ? await nodeSender(method, payload, address, receiver) : null;
    if (!node) sender = await startSender(from as Exclude<Peer, 'node'>, method, address, payload.file!, peerOptions);
    for (let i = 0; i < runs + WARMUPS; i++) {
      await sleep(pauseMs(payload.bytes));
      let sent: Line;
      let got: Line;
      if (node) {
        const cpu0 = cpuMs();
        node.before();
        const t0 = now();
        [got] = await Promise.all([receiver.next(), node.send()]);
        node.after();
        // The Node sender's own CPU, from its previous hand-off to the start of this one's clock included.
        sent = { t0, cpu_ms: cpu0, stages: node.stages() };
      } else {
        sender!.child.stdin!.write('go\n');
        [sent, got] = await Promise.all([sender!.next(), receiver.next()]);
      }
      if (i >= WARMUPS) {
        out.samples.push(got.t1! - sent.t0!);
        if (previous.sender !== undefined && previous.receiver !== undefined && got.cpu_ms !== undefined && sent.cpu_ms !== undefined) {
          out.cpu.push(sent.cpu_ms - previous.sender + got.cpu_ms - previous.receiver);
        }
        if (opts.breakdown) out.stages.push(durations(sent, got));
      }
      previous = { sender: sent.cpu_ms, receiver: got.cpu_ms };
      check(got, payload, !!opts.read, `${method} ${from} → ${to}`);
      opts.tick();
    }
    node?.close();
    await sender?.stop();
    await receiver.stop();
  } finally {
    sender?.kill(); // never leave a peer behind
    receiver.kill();
  }
  return out;
}

/** Each stage's duration: from the end of the stage before it (the first starts at t0). */
function durations(sent: Line, got: Line): [string, number][] {
  const marks: [string, number][] = [...(sent.stages ?? []), ...(got.stages ?? [])];
  let at = sent.t0!;
  return marks.map(([name, end]) => {
    const d: [string, number] = [name, end - at];
    at = end;
    return d;
  });
}

interface NodeSender {
  send(): Promise<void>;
  before(): void;
  after(): void;
  stages(): [string, number][];
  close(): void;
}

/** The sending half of `method` in this process. */
async function nodeSender(method: Method, payload: Payload, address: string, receiver: PeerProcess): Promise<NodeSender> {
  let stages: [string, number][] = [];
  const sender: NodeSender = { send: async () => {}, before: () => {}, after: () => {}, stages: () => stages.splice(0), close: () => {} };
  if (method === 'v8') {
    sender.send = async () => void receiver.child.send({ rows: payload.rows });
    sender.close = () => receiver.child.send({ stop: true });
  } else if ((SOCKET_METHODS as readonly string[]).includes(method)) {
    const socket = net.connect(address);
    await new Promise((r) => socket.once('connect', r));
    sender.send = async () => writeFramed(socket, 0, encodeForSocket(method as (typeof SOCKET_METHODS)[number], payload.rows, payload.table));
    sender.close = () => socket.end();
  } else if (method === 'flight') {
    const client = await FlightClient.connect(address);
    sender.send = async () => void (await client.doPut('bench', payload.table));
    sender.close = () => {
      client.close();
      receiver.kill(); // a Flight server has no connection to see closing
    };
  } else {
    const channel: Channel = await connect(address, { lease: method === 'arrow-shm-leased' });
    const trace = (e: unknown) => stages.push([(e as HandoffEvent).stage, (e as HandoffEvent).at]);
    diagnosticsChannel.subscribe(HANDOFF_CHANNEL, trace);
    let prepared: PreparedTable | null = null;
    if (method === 'arrow-shm-born') {
      // Born in shared memory: the columns are written straight into a new segment (here copied
      // from the table, as a producer would write its values), sealed there and sent, no copy after.
      const [batch] = payload.table.batches;
      sender.send = () => {
        const builder = TableBuilder.create(bodyBytes(batch!));
        const born = builder.finish(bornIn(builder, batch!));
        return channel.send(born).finally(() => born.close());
      };
    } else if (method === 'arrow-shm-prebuilt') {
      // "the table is already in shared memory": written before the clock starts
      sender.before = () => {
        prepared = PreparedTable.from(payload.table);
        stages = [];
      };
      sender.after = () => {
        prepared?.close();
        prepared = null;
      };
    }
    if (method !== 'arrow-shm-born') sender.send = () => channel.send(prepared ?? payload.table);
    sender.close = () => {
      diagnosticsChannel.unsubscribe(HANDOFF_CHANNEL, trace);
      channel.close();
    };
  }
  return sender;
}

/** The buffers of a flat batch (no nested or dictionary columns), as TableBuilder.buffer() spaces them. */
function buffersOf(batch: RecordBatch): Uint8Array[] {
  return batch.data.children.flatMap((d) => [d.values, d.valueOffsets, d.nullCount > 0 ? d.nullBitmap : undefined]).filter((b): b is NonNullable<typeof b> => !!b && b.byteLength > 0).map((b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
}

const bodyBytes = (batch: RecordBatch) => buffersOf(batch).reduce((n, b) => n + b.byteLength + 64, 64);

/** `batch` written column by column into `builder`'s memory. */
function bornIn(builder: TableBuilder, batch: RecordBatch): RecordBatch {
  const copy = (b: ArrayBufferView | undefined) => {
    if (!b || b.byteLength === 0) return undefined;
    const target = builder.buffer(b.byteLength);
    target.set(new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
    return target;
  };
  const children = batch.data.children.map((d) =>
    makeData({ type: d.type, length: d.length, nullCount: d.nullCount, data: copy(d.values), valueOffsets: copy(d.valueOffsets), nullBitmap: d.nullCount > 0 ? copy(d.nullBitmap) : undefined } as Parameters<typeof makeData>[0]),
  );
  return new RecordBatch(batch.schema, makeData({ type: new Struct(batch.schema.fields), length: batch.numRows, nullCount: 0, children }));
}

/** pyarrow.flight client -> pyarrow.flight server, two processes, the same table (bench/flight_anchor.py). */
function flightAnchor(file: string, runs: number): number[] {
  const r = spawnSync(venvPython, [path.join(root, 'bench', 'flight_anchor.py'), file, String(runs)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`pyarrow.flight anchor failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as number[];
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function check(got: Line, payload: Payload, read: boolean, what: string): void {
  if (read && payload.checksum !== undefined && got.checksum !== undefined && got.checksum !== payload.checksum) {
    throw new Error(`${what}: receiver checksum ${got.checksum} differs from the sender's ${payload.checksum}`);
  }
}

function byteTable(bytes: number): Table {
  const field = new Field('bytes', new Uint8(), false);
  const child = makeData({ type: new Uint8(), length: bytes, data: new Uint8Array(bytes).fill(7) });
  return new Table([new RecordBatch(new Schema([field]), makeData({ type: new Struct([field]), length: bytes, nullCount: 0, children: [child] }))]);
}

async function memcpyLimit(bytes: number): Promise<number[]> {
  const src = new Uint8Array(bytes).fill(1);
  const dst = new Uint8Array(bytes).fill(0);
  const bench = new Bench({ iterations: quick ? 20 : 100, time: 0, warmupIterations: 5, warmupTime: 0, retainSamples: true });
  bench.add('memcpy', () => dst.set(src));
  await bench.run();
  const task = bench.tasks[0]!;
  return [...((task.result as unknown as { latency?: { samples?: number[] } })?.latency?.samples ?? [])];
}

/**
 * The physical limit of a small hand-off: bench/limits/fdpass.c (two C processes: memfd, write,
 * seal, pass the fd, map, read, answer), paced like the hand-offs. Round trips, in ms.
 */
function fdPassLimit(bytes: number, rounds: number): { median: number; p99: number } {
  const binary = path.join(root, '.build', 'bench', 'fdpass');
  mkdirSync(path.dirname(binary), { recursive: true });
  const cc = spawnSync('cc', ['-O2', '-o', binary, path.join(root, 'bench', 'limits', 'fdpass.c')], { stdio: 'inherit' });
  if (cc.status !== 0) stop('cannot build bench/limits/fdpass.c with cc');
  const r = spawnSync(binary, [String(bytes), String(rounds), String(Math.round(pauseMs(bytes) * 1000))], { encoding: 'utf8' });
  if (r.status !== 0) stop(`bench/limits/fdpass.c failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout) as { median_us: number; p99_us: number };
  return { median: out.median_us / 1000, p99: out.p99_us / 1000 };
}

/** What the Python and Rust rows need besides Node, each with how to get it: checked before anything runs. */
function missingPrerequisites(): string[] {
  const has = (command: string) => spawnSync('sh', ['-c', `command -v ${command}`]).status === 0;
  const missing: string[] = [];
  if (!existsSync(venvPython) && spawnSync('python3', ['-c', 'import venv, ensurepip']).status !== 0) {
    missing.push('python3 with its venv module (Debian: apt-get install python3-venv), for .build/venv (scripts/ensure-venv.sh installs pyarrow from PyPI)');
  }
  if (!has('cargo')) missing.push('cargo, for the Rust sender and receiver (https://rustup.rs, or apt-get install cargo)');
  if (!has('cc')) missing.push('a C compiler (cc), for the C limits and for cargo to link with (apt-get install gcc)');
  return missing;
}

/** Ends the run with one message instead of a stack trace. */
function stop(message: string): never {
  process.stderr.write(`npm run bench: ${message}\n`);
  process.exit(1);
}

function prepare(): void {
  const missing = missingPrerequisites();
  if (missing.length > 0) stop(`missing prerequisites:\n${missing.map((m) => `  - ${m}`).join('\n')}`);
  const venv = spawnSync(path.join(root, 'scripts', 'ensure-venv.sh'), { stdio: 'inherit' });
  if (venv.status !== 0) stop('cannot prepare the Python environment (.build/venv) for the Python rows: see the output above');
  const examples = ['bench_receiver', 'bench_sender'].flatMap((e) => ['--example', e]);
  const cargo = spawnSync('cargo', ['build', '--quiet', '--release', ...examples, '--manifest-path', path.join(root, 'peers', 'rust', 'Cargo.toml'), '--target-dir', path.join(root, '.build', 'rust')], { stdio: 'inherit' });
  if (cargo.status !== 0) stop('cannot build the Rust sender and receiver (peers/rust/examples/bench_*.rs): see the output above');
}

/** Every direction the benchmark hands the symbol table in, and the methods each compares. */
const DIRECTIONS: { from: Peer; to: Peer; methods: Method[] }[] = [
  { from: 'node', to: 'node', methods: ['json', 'v8', 'msgpack', 'msgpackr-records', 'arrow-socket', 'flight', 'arrow-shm', 'arrow-shm-leased', 'arrow-shm-prebuilt', 'arrow-shm-born'] },
  { from: 'node', to: 'python', methods: ['json', 'arrow-socket', 'arrow-shm', 'arrow-shm-trusted', 'arrow-shm-full', 'arrow-shm-leased', 'arrow-shm-prebuilt', 'arrow-shm-born'] },
  { from: 'node', to: 'rust', methods: ['json', 'arrow-socket', 'arrow-shm', 'arrow-shm-prebuilt'] },
  { from: 'python', to: 'node', methods: ['json', 'arrow-socket', 'arrow-shm', 'arrow-shm-born'] },
  { from: 'python', to: 'rust', methods: ['json', 'arrow-socket', 'arrow-shm', 'arrow-shm-born'] },
  { from: 'rust', to: 'python', methods: ['json', 'arrow-socket', 'arrow-shm'] },
];

function row(scenario: Row['scenario'], method: string, bytes: number, rows: number, m: Measured | number[], from = 'node', to = 'node'): Row {
  const samples = Array.isArray(m) ? m : m.samples;
  const r: Row = { scenario, method, from, to, bytes, rows, runs: samples.length, median_ms: quantile(samples, 0.5), p99_ms: quantile(samples, 0.99), samples_ms: samples };
  if (!Array.isArray(m) && m.cpu.length > 0) r.cpu_ms = quantile(m.cpu, 0.5);
  if (!Array.isArray(m) && m.stages.length > 0) r.stages = m.stages[0]!.map(([name], i) => [name, quantile(m.stages.map((s) => s[i]?.[1] ?? NaN), 0.5)]);
  return r;
}

async function main(): Promise<void> {
  prepare();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'arrow-shm-bench-'));
  const results: Row[] = [];
  const symbolRowsCount = 100_000;
  const columns = generateSymbolColumns(symbolRowsCount);
  const table = symbolTableFromColumns(columns);
  const ipcBytes = layoutIpcStream(table).byteLength;
  const file = path.join(dir, 'symbols.arrows');
  writeFileSync(file, tableToIPC(table, 'stream'));
  const symbols: Payload = { table, rows: symbolRows(columns), bytes: ipcBytes, checksum: checksumSymbolTable(table), file };
  const runsFor = (m: Method) => (quick ? (m.startsWith('arrow') ? 15 : 5) : m.startsWith('arrow') ? 100 : 20);
  const breakdownRuns = quick ? 15 : 50;
  const sizes = (quick ? [10, 14, 18, 22] : [10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]).map((p) => 2 ** p);
  const sweepMethods: Method[] = ['arrow-socket', 'flight', 'arrow-shm', 'arrow-shm-leased', 'arrow-shm-prebuilt'];
  // A Flight server takes messages up to 256 MiB by default (§13.3), framing included: Flight stops at 64 MiB in the sweep.
  const inSweep = (method: Method, bytes: number) => method !== 'flight' || bytes < 2 ** 28;
  const sweepRuns = (bytes: number) => (bytes >= 2 ** 28 ? 3 : bytes >= 2 ** 24 ? (quick ? 5 : 10) : quick ? 15 : 50);
  const directions = breakdownOnly || sweepOnly ? [] : DIRECTIONS;
  const breakdowns = sweepOnly ? [] : DIRECTIONS;
  const total =
    directions.reduce((n, d) => n + 2 * d.methods.reduce((k, m) => k + runsFor(m) + WARMUPS, 0), 0) +
    breakdowns.length * (breakdownRuns + WARMUPS) +
    (breakdownOnly ? 0 : sizes.reduce((n, b) => n + sweepMethods.filter((m) => inSweep(m, b)).length * (sweepRuns(b) + WARMUPS), 0));
  const bar = new cliProgress.SingleBar({ format: 'bench {bar} {percentage}% | {task}', hideCursor: true, noTTYOutput: true, notTTYSchedule: 10_000 }, cliProgress.Presets.shades_classic);
  bar.start(total, 0, { task: '' });
  const tick = () => bar.increment();
  try {
    for (const { from, to, methods } of directions) {
      for (const scenario of ['symbols', 'symbols-read'] as const) {
        for (const method of methods) {
          bar.update({ task: `${scenario} ${from} → ${to} ${method}` });
          const m = await handOffs(method, symbols, runsFor(method), { from, to, read: scenario === 'symbols-read', dir, tick });
          results.push(row(scenario, method, ipcBytes, symbolRowsCount, m, from, to));
        }
      }
    }
    for (const { from, to } of breakdowns) {
      bar.update({ task: `breakdown ${from} → ${to}` });
      const m = await handOffs('arrow-shm', symbols, breakdownRuns, { from, to, breakdown: true, dir, tick });
      results.push(row('breakdown', 'arrow-shm', ipcBytes, symbolRowsCount, m, from, to));
    }
    if (!breakdownOnly) {
      for (const bytes of sizes) {
        const payload: Payload = { table: byteTable(bytes), rows: null, bytes };
        for (const method of sweepMethods.filter((m) => inSweep(m, bytes))) {
          bar.update({ task: `sweep ${bytes} B ${method}` });
          results.push(row('sweep', method, bytes, bytes, await handOffs(method, payload, sweepRuns(bytes), { dir, tick })));
        }
      }
      if (!sweepOnly) {
        bar.update({ task: 'pyarrow.flight anchor' });
        results.push(row('symbols', 'pyarrow-flight', ipcBytes, symbolRowsCount, flightAnchor(file, runsFor('flight')), 'python', 'python'));
      }
    }
    bar.update({ task: 'limits' });
    for (const bytes of breakdownOnly ? [ipcBytes] : [ipcBytes, ...sizes]) results.push(row('limits', 'memcpy', bytes, 0, await memcpyLimit(bytes), 'node', 'node'));
    const fdpass = fdPassLimit(1024, quick ? 2000 : 10000);
    results.push({ ...row('limits', 'c-fdpass', 1024, 0, [fdpass.median], 'c', 'c'), p99_ms: fdpass.p99 });
  } finally {
    bar.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const doc = {
    command: `npm run bench${quick ? ' -- --quick' : ''}${breakdownOnly ? ' -- --breakdown' : ''}${sweepOnly ? ' -- --sweep' : ''}`,
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, memory_gib: Math.round(os.totalmem() / 2 ** 30), kernel: os.release(), node: process.version },
    versions: { 'arrow-shm': pkg.version, 'apache-arrow': pkg.devDependencies['apache-arrow'] },
    rows: results,
  };
  const out = path.join(root, 'bench', 'results');
  writeFileSync(path.join(out, `${stamp}.json`), JSON.stringify(doc, null, 1));
  if (sweepOnly) {
    printSweep(results);
    console.log(`\nwrote bench/results/${stamp}.json`);
    return;
  }
  if (!breakdownOnly) writeFileSync(path.join(out, 'latest.json'), JSON.stringify(results, null, 1));
  writeReport(doc, root);
  for (const r of results.filter((r) => r.scenario !== 'sweep')) {
    const stages = r.stages ? '  ' + r.stages.map(([s, d]) => `${s} ${(d * 1000).toFixed(0)}µs`).join(' ') : '';
    console.log(`${r.scenario.padEnd(13)} ${`${r.from}→${r.to}`.padEnd(14)} ${r.method.padEnd(20)} median ${r.median_ms.toFixed(3).padStart(9)} ms  p99 ${r.p99_ms.toFixed(3).padStart(9)} ms${r.cpu_ms !== undefined ? `  cpu ${r.cpu_ms.toFixed(3)} ms` : ''}${stages}`);
  }
  console.log(`\nwrote bench/results/${stamp}.json${breakdownOnly ? '' : ', bench/results/latest.json'} and BENCHMARKS.md`);
}

/** The sweep, one line per size: each method's median, arrow-shm / arrow-socket, and the limits. */
function printSweep(results: Row[]): void {
  const median = (method: string, bytes: number) => results.find((r) => r.scenario === 'sweep' && r.method === method && r.bytes === bytes)?.median_ms;
  for (const bytes of [...new Set(results.filter((r) => r.scenario === 'sweep').map((r) => r.bytes))]) {
    const cells = results.filter((r) => r.scenario === 'sweep' && r.bytes === bytes).map((r) => `${r.method} ${r.median_ms.toFixed(3)}`);
    const ratio = median('arrow-shm', bytes)! / median('arrow-socket', bytes)!;
    console.log(`sweep ${String(bytes).padStart(10)} B  ${cells.join('  ')}  arrow-shm/arrow-socket ${ratio.toFixed(2)}`);
  }
  const fdpass = results.find((r) => r.method === 'c-fdpass');
  const small = median('arrow-shm', 1024);
  if (fdpass && small !== undefined) console.log(`1 KiB arrow-shm ${small.toFixed(3)} ms / c-fdpass ${fdpass.median_ms.toFixed(3)} ms = ${(small / fdpass.median_ms).toFixed(1)}×`);
}

await main();
