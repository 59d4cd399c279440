// `node dist/bench/flight-stream.js [--batches N] [--runs N]`: streams over Arrow Flight (§13.5),
// 64 KiB batches (8192 int64 rows) one FlightData each, between two processes: a Node publication
// read by a pyarrow.flight client's do_get, next to a pyarrow.flight server's generator do_get read by
// the same client; a pyarrow.flight client's incremental do_put into a Node stream listener, next
// to the same do_put into the pyarrow server; and Node to Node both ways. Runs interleaved,
// medians of batches/s measured by the receiving or putting client (call to end). Prints a table.
// `--peer get PORT` / `--peer put PORT COUNT`: Node's client half (bench/flight_stream_peer.py: pyarrow's).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Int64, Table, vectorFromArray, type RecordBatch } from 'apache-arrow';
import { FlightPublication, FlightStreamListener, FlightStreamWriter, subscribeFlight } from '../src/stream/flight.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const venvPython = path.join(root, '.build', 'venv', 'bin', 'python');
const pyPeer = path.join(root, 'bench', 'flight_stream_peer.py');
const ROWS = 8192; // 64 KiB of int64

const batchOf = (rows: number): RecordBatch => new Table({ k: vectorFromArray(Array.from({ length: rows }, (_, i) => BigInt(i)), new Int64()) }).batches[0]!;

function arg(name: string, fallback: number): number {
  const at = process.argv.indexOf(name);
  return at < 0 ? fallback : Number(process.argv[at + 1]);
}

/** Starts a process; resolves with its first stdout line and a promise of the rest. */
function start(cmd: string, args: string[]): { first: Promise<string>; done: Promise<string>; kill(): void } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let resolveFirst!: (l: string) => void;
  const first = new Promise<string>((r) => (resolveFirst = r));
  createInterface({ input: child.stdout! }).on('line', (l) => {
    lines.push(l);
    if (lines.length === 1) resolveFirst(l);
  });
  const done = new Promise<string>((resolve, reject) => child.on('close', (code) => (code === 0 || code === null ? resolve(lines.at(-1) ?? '') : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}`)))));
  return { first, done, kill: () => child.kill() };
}

const portOf = (address: string) => address.slice(address.lastIndexOf(':') + 1);

/** A Node publication of `count` batches, read by a client process (py or node); the client's ms. */
async function nodePublication(client: 'py' | 'node', count: number): Promise<number> {
  const batch = batchOf(ROWS);
  const publication = FlightPublication.create('grpc://127.0.0.1:0', batch.schema);
  await publication.ready();
  const port = portOf(publication.address);
  const reader = client === 'py' ? start(venvPython, [pyPeer, 'get', port, 'stream']) : start(process.execPath, [fileURLToPath(import.meta.url), '--peer', 'get', port]);
  try {
    await publication.waitForSubscribers(1, { timeoutMs: 30_000 });
    for (let i = 0; i < count; i++) await publication.write(batch);
    await publication.close();
    const result = JSON.parse(await reader.done) as { batches: number; ms: number };
    if (result.batches !== count) throw new Error(`read ${result.batches} of ${count} batches`);
    return result.ms;
  } finally {
    reader.kill();
    await publication.abort();
  }
}

/** A client process (py or node) putting `count` batches into a Node stream listener; the client's ms. */
async function nodeListener(client: 'py' | 'node', count: number): Promise<number> {
  const listener = await FlightStreamListener.listen('grpc://127.0.0.1:0');
  const port = portOf(listener.address);
  const writer = client === 'py' ? start(venvPython, [pyPeer, 'put', port, String(count), String(ROWS)]) : start(process.execPath, [fileURLToPath(import.meta.url), '--peer', 'put', port, String(count)]);
  try {
    const reader = await listener.accept({ timeoutMs: 30_000 });
    let n = 0;
    for (let b = await reader.read(); b; b = await reader.read()) n++;
    reader.close();
    if (n !== count) throw new Error(`read ${n} of ${count} batches`);
    return (JSON.parse(await writer.done) as { ms: number }).ms;
  } finally {
    writer.kill();
    await listener.close();
  }
}

/** pyarrow's server and a client process (py or node): do_get or do_put of `count` batches; the client's ms. */
async function pyServer(op: 'get' | 'put', client: 'py' | 'node', count: number): Promise<number> {
  const server = start(venvPython, [pyPeer, 'server', String(count), String(ROWS)]);
  try {
    const port = (await server.first).split(' ')[1]!;
    const args = op === 'get' ? [op, port, ...(client === 'py' ? ['stream'] : [])] : [op, port, String(count), ...(client === 'py' ? [String(ROWS)] : [])];
    const run = client === 'py' ? start(venvPython, [pyPeer, ...args]) : start(process.execPath, [fileURLToPath(import.meta.url), '--peer', ...args]);
    return (JSON.parse(await run.done) as { ms: number }).ms;
  } finally {
    server.kill();
  }
}

async function peer(): Promise<void> {
  const [, op, port, count] = process.argv.slice(process.argv.indexOf('--peer'));
  const t0 = performance.now();
  if (op === 'get') {
    const reader = await subscribeFlight(`grpc://127.0.0.1:${port}`);
    let n = 0;
    for (let b = await reader.read(); b; b = await reader.read()) n++;
    reader.close();
    process.stdout.write(`${JSON.stringify({ batches: n, ms: performance.now() - t0 })}\n`);
  } else {
    const batch = batchOf(ROWS);
    const writer = await FlightStreamWriter.open(`grpc://127.0.0.1:${port}`, batch.schema);
    for (let i = 0; i < Number(count); i++) await writer.write(batch);
    await writer.close();
    process.stdout.write(`${JSON.stringify({ batches: Number(count), ms: performance.now() - t0 })}\n`);
  }
}

async function main(): Promise<void> {
  const count = arg('--batches', 1000);
  const runs = arg('--runs', 5);
  const cases: [string, () => Promise<number>][] = [
    ['do_get  py server → py client', () => pyServer('get', 'py', count)],
    ['do_get  node publication → py client', () => nodePublication('py', count)],
    ['do_get  py server → node subscriber', () => pyServer('get', 'node', count)],
    ['do_get  node publication → node subscriber', () => nodePublication('node', count)],
    ['do_put  py client → py server', () => pyServer('put', 'py', count)],
    ['do_put  py client → node listener', () => nodeListener('py', count)],
    ['do_put  node writer → py server', () => pyServer('put', 'node', count)],
    ['do_put  node writer → node listener', () => nodeListener('node', count)],
  ];
  const samples = new Map<string, number[]>(cases.map(([name]) => [name, []]));
  for (let r = 0; r < runs; r++) for (const [name, run] of cases) samples.get(name)!.push(await run());
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const anchor = { get: median(samples.get(cases[0]![0])!), put: median(samples.get(cases[4]![0])!) };
  console.log(`${count} batches of 64 KiB per run, ${runs} runs interleaved; medians (ratio: time / pyarrow↔pyarrow's)`);
  for (const [name] of cases) {
    const ms = median(samples.get(name)!);
    const ratio = ms / anchor[name.startsWith('do_get') ? 'get' : 'put'];
    console.log(`${name.padEnd(44)} ${ms.toFixed(1).padStart(8)} ms  ${Math.round((count / ms) * 1000).toString().padStart(7)} batches/s  ${ratio.toFixed(2)}×`);
  }
}

if (process.argv.includes('--peer')) await peer();
else await main();
