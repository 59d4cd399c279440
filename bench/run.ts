// `npm run bench [-- --quick]`: hand-off of Arrow tables between two processes, arrow-shm next to
// the methods people use today, measured side by side in one run. Writes bench/results/*.json
// and regenerates BENCHMARKS.md.
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { makeData, RecordBatch, Schema, Field, Struct, Table, Uint8, tableToIPC } from 'apache-arrow';
import cliProgress from 'cli-progress';
import { Bench } from 'tinybench';
import { connect, type Channel } from '../src/transport/channel.js';
import { PreparedTable } from '../src/ipc/prepared.js';
import { FlightClient } from '../src/transport/flight-client.js';
import { layoutIpcStream } from '../src/ipc/writer.js';
import { generateSymbolColumns, symbolRows, symbolTableFromColumns, type SymbolRow } from '../src/cli/symbols.js';
import { SOCKET_METHODS, encodeForSocket, now, writeFramed, type Method } from './methods.js';
import { writeReport } from './report.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const quick = process.argv.includes('--quick');

export interface Row {
  scenario: 'symbols' | 'symbols-read' | 'sweep' | 'limits';
  method: string;
  from: string;
  to: string;
  bytes: number;
  rows: number;
  runs: number;
  median_ms: number;
  p99_ms: number;
  samples_ms: number[];
}

const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};

interface Receiver {
  child: ChildProcess;
  next(): Promise<{ t1: number; checksum?: number }>;
}

type Peer = 'node' | 'python' | 'rust';
const venvPython = path.join(root, '.build', 'venv', 'bin', 'python');
const rustReceiver = path.join(root, '.build', 'rust', 'release', 'examples', 'bench_receiver');

async function startReceiver(method: Method, address: string, read: boolean, to: Peer): Promise<Receiver> {
  const script = path.join(here, 'receiver.js');
  const args = ['--method', method, '--socket', address, ...(read ? ['--read'] : [])];
  const queue: { t1: number; checksum?: number }[] = [];
  const waiters: ((v: { t1: number; checksum?: number }) => void)[] = [];
  const push = (v: { t1: number; checksum?: number }) => (waiters.length ? waiters.shift()!(v) : queue.push(v));
  let child: ChildProcess;
  let ready: Promise<void>;
  if (method === 'v8') {
    child = fork(script, args, { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    ready = new Promise((resolve) => {
      child.on('message', (m: { ready?: boolean; t1: number; checksum?: number }) => (m.ready ? resolve() : push(m)));
    });
  } else {
    child =
      to === 'python'
        ? spawn(venvPython, [path.join(root, 'bench', 'receiver.py'), ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
        : to === 'rust'
          ? spawn(rustReceiver, args, { stdio: ['ignore', 'pipe', 'inherit'] })
          : spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    ready = new Promise((resolve) => {
      createInterface({ input: child.stdout! }).on('line', (line) => (line === 'ready' ? resolve() : push(JSON.parse(line))));
    });
  }
  await ready;
  return { child, next: () => (queue.length ? Promise.resolve(queue.shift()!) : new Promise((r) => waiters.push(r))) };
}

interface Payload {
  table: Table;
  rows: SymbolRow[] | null;
  bytes: number;
  checksum?: number;
}

/** Runs `runs` hand-offs of `payload` with `method`; returns one-way latencies in ms. */
async function measure(method: Method, payload: Payload, runs: number, read: boolean, dir: string, tick: () => void, to: Peer = 'node'): Promise<number[]> {
  const address = method.startsWith('arrow-shm')
    ? `@arrow-shm-bench-${process.pid}-${method}-${to}`
    : method === 'flight'
      ? `grpc://127.0.0.1:${await freePort()}`
      : path.join(dir, `${method}-${to}.sock`);
  const receiver = await startReceiver(method, address, read, to);
  const samples: number[] = [];
  let sendOne: () => Promise<void>;
  let before = () => {};
  let after = () => {};
  let cleanup = () => {};
  if (method === 'v8') {
    sendOne = async () => void receiver.child.send({ rows: payload.rows });
    cleanup = () => receiver.child.send({ stop: true });
  } else if ((SOCKET_METHODS as readonly string[]).includes(method)) {
    const socket = net.connect(address);
    await new Promise((r) => socket.once('connect', r));
    sendOne = async () => writeFramed(socket, 0, encodeForSocket(method as (typeof SOCKET_METHODS)[number], payload.rows, payload.table));
    cleanup = () => socket.end();
  } else if (method === 'flight') {
    const client = await FlightClient.connect(address);
    sendOne = async () => void (await client.doPut('bench', payload.table));
    cleanup = () => {
      client.close();
      receiver.child.kill(); // a Flight server has no connection to see closing
    };
  } else {
    const channel: Channel = await connect(address, { lease: method === 'arrow-shm-leased' });
    let prepared: PreparedTable | null = null;
    if (method === 'arrow-shm-prebuilt') {
      // "the table is already in shared memory": written before the clock starts
      before = () => (prepared = PreparedTable.from(payload.table));
      after = () => {
        prepared?.close();
        prepared = null;
      };
    }
    sendOne = () => channel.send(prepared ?? payload.table);
    cleanup = () => channel.close();
  }
  const warmups = 2;
  try {
    for (let i = 0; i < runs + warmups; i++) {
      before();
      const t0 = now();
      const [got] = await Promise.all([receiver.next(), sendOne()]);
      if (i >= warmups) samples.push(got.t1 - t0);
      after();
      check(got, payload, read, method);
      tick();
    }
    cleanup();
    await exited(receiver.child);
  } finally {
    if (receiver.child.exitCode === null) receiver.child.kill('SIGKILL'); // never leave a receiver behind
  }
  return samples;
}

/** pyarrow.flight client -> pyarrow.flight server, two processes, the same table (bench/flight_anchor.py). */
function flightAnchor(table: Table, runs: number, dir: string): number[] {
  const file = path.join(dir, 'symbols.arrows');
  writeFileSync(file, tableToIPC(table, 'stream'));
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

/** python → node or rust: bench/sender.py hands the table to the receiver `runs` times, one "go" at a time. */
async function measureFromPython(method: Method, payload: Payload, file: string, runs: number, read: boolean, dir: string, tick: () => void, to: Peer): Promise<number[]> {
  const address = method.startsWith('arrow-shm') ? `@arrow-shm-bench-${process.pid}-${method}-python-${to}` : path.join(dir, `${method}-python-${to}.sock`);
  const receiver = await startReceiver(method, address, read, to);
  const sender = spawn(venvPython, [path.join(root, 'bench', 'sender.py'), '--method', method, '--socket', address, '--file', file], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: string[] = [];
  const waiters: ((line: string) => void)[] = [];
  createInterface({ input: sender.stdout! }).on('line', (line) => (waiters.length ? waiters.shift()!(line) : lines.push(line)));
  const nextLine = () => (lines.length ? Promise.resolve(lines.shift()!) : new Promise<string>((r) => waiters.push(r)));
  const samples: number[] = [];
  const warmups = 2;
  try {
    if ((await nextLine()) !== 'ready') throw new Error(`python sender for ${method} did not start`);
    for (let i = 0; i < runs + warmups; i++) {
      sender.stdin!.write('go\n');
      const [line, got] = await Promise.all([nextLine(), receiver.next()]);
      const { t0 } = JSON.parse(line) as { t0: number };
      if (i >= warmups) samples.push(got.t1 - t0);
      check(got, payload, read, `${method} from python`);
      tick();
    }
    sender.stdin!.end();
    await exited(sender);
    await exited(receiver.child);
  } finally {
    if (sender.exitCode === null) sender.kill('SIGKILL');
    if (receiver.child.exitCode === null) receiver.child.kill('SIGKILL');
  }
  return samples;
}

function check(got: { checksum?: number }, payload: Payload, read: boolean, method: string): void {
  if (read && payload.checksum !== undefined && got.checksum !== undefined && got.checksum !== payload.checksum) {
    throw new Error(`${method}: receiver checksum ${got.checksum} differs from the sender's ${payload.checksum}`);
  }
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.on('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
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

/** What the Python and Rust rows need besides Node, each with how to get it: checked before anything runs. */
function missingPrerequisites(): string[] {
  const has = (command: string) => spawnSync('sh', ['-c', `command -v ${command}`]).status === 0;
  const missing: string[] = [];
  if (!existsSync(venvPython) && spawnSync('python3', ['-c', 'import venv, ensurepip']).status !== 0) {
    missing.push('python3 with its venv module (Debian: apt-get install python3-venv), for .build/venv (scripts/ensure-venv.sh installs pyarrow from PyPI)');
  }
  if (!has('cargo')) missing.push('cargo, for the Rust receiver of the python → rust rows (https://rustup.rs, or apt-get install cargo)');
  if (!has('cc')) missing.push('a C compiler (cc), which cargo links with (apt-get install gcc)');
  return missing;
}

/** Ends the run with one message instead of a stack trace. */
function stop(message: string): never {
  process.stderr.write(`npm run bench: ${message}\n`);
  process.exit(1);
}

async function main(): Promise<void> {
  const missing = missingPrerequisites();
  if (missing.length > 0) stop(`missing prerequisites:\n${missing.map((m) => `  - ${m}`).join('\n')}`);
  const venv = spawnSync(path.join(root, 'scripts', 'ensure-venv.sh'), { stdio: 'inherit' });
  if (venv.status !== 0) stop('cannot prepare the Python environment (.build/venv) for the node → python rows: see the output above');
  const cargo = spawnSync('cargo', ['build', '--quiet', '--release', '--example', 'bench_receiver', '--manifest-path', path.join(root, 'peers', 'rust', 'Cargo.toml'), '--target-dir', path.join(root, '.build', 'rust')], { stdio: 'inherit' });
  if (cargo.status !== 0) stop('cannot build the Rust receiver of the python → rust rows (peers/rust/examples/bench_receiver.rs): see the output above');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'arrow-shm-bench-'));
  const results: Row[] = [];
  const symbolRowsCount = 100_000;
  const columns = generateSymbolColumns(symbolRowsCount);
  const table = symbolTableFromColumns(columns);
  const rows = symbolRows(columns);
  const ipcBytes = layoutIpcStream(table).byteLength;
  const symbols: Payload = { table, rows, bytes: ipcBytes };
  const { checksumSymbolTable } = await import('../src/cli/symbols.js');
  symbols.checksum = checksumSymbolTable(table);
  const methods: Method[] = ['json', 'v8', 'msgpack', 'msgpackr-records', 'arrow-socket', 'flight', 'arrow-shm', 'arrow-shm-leased', 'arrow-shm-prebuilt'];
  const runsFor = (m: Method) => (quick ? (m.startsWith('arrow') ? 15 : 5) : m.startsWith('arrow') ? 100 : 20);
  const sizes = (quick ? [10, 14, 18, 22] : [10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]).map((p) => 2 ** p);
  const sweepMethods: Method[] = ['arrow-socket', 'flight', 'arrow-shm', 'arrow-shm-leased', 'arrow-shm-prebuilt'];
  // gRPC holds a whole message in memory several times over: Flight stops at 256 MiB in the sweep.
  const inSweep = (method: Method, bytes: number) => method !== 'flight' || bytes <= 2 ** 28;
  const pythonMethods: Method[] = ['json', 'arrow-socket', 'arrow-shm', 'arrow-shm-trusted', 'arrow-shm-leased', 'arrow-shm-prebuilt'];
  const fromPythonMethods: Method[] = ['json', 'arrow-socket', 'arrow-shm'];
  const fromPythonTo: Peer[] = ['node', 'rust'];
  const sweepRuns = (bytes: number) => (bytes >= 2 ** 28 ? 3 : bytes >= 2 ** 24 ? (quick ? 5 : 10) : quick ? 15 : 50);
  const total =
    2 * [...methods, ...pythonMethods, ...fromPythonMethods, ...fromPythonMethods].reduce((n, m) => n + runsFor(m) + 2, 0) + sizes.reduce((n, b) => n + sweepMethods.filter((m) => inSweep(m, b)).length * (sweepRuns(b) + 2), 0);
  const bar = new cliProgress.SingleBar({ format: 'bench {bar} {percentage}% | {task}', hideCursor: true, noTTYOutput: true, notTTYSchedule: 10_000 }, cliProgress.Presets.shades_classic);
  bar.start(total, 0, { task: '' });
  const tick = () => bar.increment();
  try {
    for (const scenario of ['symbols', 'symbols-read'] as const) {
      for (const method of methods) {
        bar.update({ task: `${scenario} ${method}` });
        const samples = await measure(method, symbols, runsFor(method), scenario === 'symbols-read', dir, tick);
        results.push(row(scenario, method, ipcBytes, symbolRowsCount, samples));
      }
    }
    for (const scenario of ['symbols', 'symbols-read'] as const) {
      for (const method of pythonMethods) {
        bar.update({ task: `${scenario} ${method} → python` });
        const samples = await measure(method, symbols, runsFor(method), scenario === 'symbols-read', dir, tick, 'python');
        results.push(row(scenario, method, ipcBytes, symbolRowsCount, samples, 'node', 'python'));
      }
    }
    const symbolsFile = path.join(dir, 'symbols-from-python.arrows');
    writeFileSync(symbolsFile, tableToIPC(table, 'stream'));
    for (const to of fromPythonTo) {
      for (const scenario of ['symbols', 'symbols-read'] as const) {
        for (const method of fromPythonMethods) {
          bar.update({ task: `${scenario} python → ${to} ${method}` });
          const samples = await measureFromPython(method, symbols, symbolsFile, runsFor(method), scenario === 'symbols-read', dir, tick, to);
          results.push(row(scenario, method, ipcBytes, symbolRowsCount, samples, 'python', to));
        }
      }
    }
    for (const bytes of sizes) {
      const payload: Payload = { table: byteTable(bytes), rows: null, bytes };
      for (const method of sweepMethods.filter((m) => inSweep(m, bytes))) {
        bar.update({ task: `sweep ${bytes} B ${method}` });
        const samples = await measure(method, payload, sweepRuns(bytes), false, dir, tick);
        results.push(row('sweep', method, bytes, bytes, samples));
      }
    }
    bar.update({ task: 'pyarrow.flight anchor' });
    results.push(row('symbols', 'pyarrow-flight', ipcBytes, symbolRowsCount, flightAnchor(table, runsFor('flight'), dir), 'python', 'python'));
    bar.update({ task: 'limits' });
    for (const bytes of [ipcBytes, ...sizes]) results.push(row('limits', 'memcpy', bytes, 0, await memcpyLimit(bytes), 'node', 'node'));
  } finally {
    bar.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const doc = {
    command: `npm run bench${quick ? ' -- --quick' : ''}`,
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, memory_gib: Math.round(os.totalmem() / 2 ** 30), kernel: os.release(), node: process.version },
    versions: { 'arrow-shm': pkg.version, 'apache-arrow': pkg.dependencies['apache-arrow'] },
    rows: results,
  };
  const out = path.join(root, 'bench', 'results');
  writeFileSync(path.join(out, `${stamp}.json`), JSON.stringify(doc, null, 1));
  writeFileSync(path.join(out, 'latest.json'), JSON.stringify(results.map(({ samples_ms, ...r }) => ({ ...r, samples_ms })), null, 1));
  writeReport(doc, root);
  for (const r of results.filter((r) => r.scenario !== 'sweep')) console.log(`${r.scenario.padEnd(13)} ${r.method.padEnd(20)} median ${r.median_ms.toFixed(3).padStart(9)} ms  p99 ${r.p99_ms.toFixed(3).padStart(9)} ms`);
  console.log(`\nwrote bench/results/${stamp}.json, bench/results/latest.json and BENCHMARKS.md`);
}

function row(scenario: Row['scenario'], method: string, bytes: number, rows: number, samples: number[], from = 'node', to = 'node'): Row {
  return { scenario, method, from, to, bytes, rows, runs: samples.length, median_ms: quantile(samples, 0.5), p99_ms: quantile(samples, 0.99), samples_ms: samples };
}

await main();
