// `node dist/bench/flight.js [--quick] [--dry]` (--dry: print only, write nothing): Arrow Flight between two processes, arrow-shm's Node
// client and server next to pyarrow.flight's, all four client → server pairs in one run (issue #17).
// DoPut and DoGet of the 100k-symbol table, a 64 MiB table and a tiny (~7 KB) one; runs of the
// pairs interleaved, medians; CPU of both processes per call. Prints a table, writes
// bench/results/flight-<stamp>.json and the Flight section of BENCHMARKS.md.
// `--peer server` / `--peer client PORT NAME=FILE...`: Node's half (bench/flight_peer.py: pyarrow's).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Field, makeData, RecordBatch, Schema, Struct, Table, tableFromIPC, tableToIPC, Uint8 } from 'apache-arrow';
import { generateSymbolColumns, generateSymbolTable, symbolTableFromColumns } from '../src/cli/symbols.js';
import { FlightClient } from '../src/transport/flight-client.js';
import { FlightServer } from '../src/transport/flight-server.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const venvPython = path.join(root, '.build', 'venv', 'bin', 'python');
const now = (): number => Number(process.hrtime.bigint()) / 1e6;

type Side = 'py' | 'node';
type Op = 'put' | 'get';
interface Payload {
  name: 'symbols' | 'big' | 'tiny';
  file: string;
  bytes: number;
  rounds: number;
  perRound: number;
}
export interface FlightRow {
  op: Op;
  payload: Payload['name'];
  client: Side;
  server: Side;
  bytes: number;
  runs: number;
  median_ms: number;
  p99_ms: number;
  /** CPU of client and server per call (all threads), ms: total over the measured calls / calls. */
  cpu_ms: number;
  samples_ms: number[];
}

const PAIRS: [Side, Side][] = [
  ['py', 'py'],
  ['py', 'node'],
  ['node', 'py'],
  ['node', 'node'],
];

// ------------------------------------------------------------------------------ Node's peers

async function nodeServer(): Promise<void> {
  const server = await FlightServer.listen('grpc://127.0.0.1:0');
  process.stdout.write(`ready ${server.port}\n`);
  for (;;) {
    const message = await server.receive(); // kept for DoGet by the server; decoded like pyarrow's read_all
    void message.table;
    message.close();
  }
}

async function nodeClient(port: string, files: string[]): Promise<void> {
  const tables = new Map(files.map((f) => f.split('=', 2) as [string, string]).map(([name, file]) => [name, tableFromIPC(readFileSync(file))]));
  const client = await FlightClient.connect(`grpc://127.0.0.1:${port}`, { timeoutMs: 120_000 });
  process.stdout.write('ready\n');
  for await (const line of createInterface({ input: process.stdin })) {
    const [op, name, count, pause] = line.split(' ') as [Op, string, string, string];
    const samples: number[] = [];
    for (let i = 0; i < Number(count); i++) {
      await sleep(Number(pause));
      const t0 = now();
      if (op === 'put') await client.doPut(name, tables.get(name)!);
      else void (await client.doGet(name)).table;
      samples.push(now() - t0);
    }
    process.stdout.write(`${JSON.stringify(samples)}\n`);
  }
  client.close();
}

// ---------------------------------------------------------------------------- the orchestra

/** A peer process and its lines. */
class Peer {
  #lines: string[] = [];
  #waiters: ((line: string) => void)[] = [];
  readonly child: ChildProcess;

  constructor(command: string, args: string[]) {
    this.child = spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      const waiter = this.#waiters.shift();
      if (waiter) waiter(line);
      else this.#lines.push(line);
    });
  }

  next(): Promise<string> {
    const line = this.#lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    return new Promise((resolve, reject) => {
      const exit = () => reject(new Error(`${this.child.spawnargs.slice(0, 4).join(' ')} exited`));
      this.child.once('exit', exit);
      this.#waiters.push((l) => {
        this.child.off('exit', exit);
        resolve(l);
      });
    });
  }

  /** user + system CPU of the process, all threads, ms (from /proc: no cooperation needed). */
  cpuMs(): number {
    const stat = readFileSync(`/proc/${this.child.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

const CLOCK_TICKS = 100; // USER_HZ: /proc reports clock ticks of 10 ms on Linux

function startServer(side: Side): Peer {
  return side === 'py' ? new Peer(venvPython, [path.join(root, 'bench', 'flight_peer.py'), 'server']) : new Peer(process.execPath, [fileURLToPath(import.meta.url), '--peer', 'server']);
}

function startClient(side: Side, port: string, files: string[]): Peer {
  return side === 'py'
    ? new Peer(venvPython, [path.join(root, 'bench', 'flight_peer.py'), 'client', port, ...files])
    : new Peer(process.execPath, [fileURLToPath(import.meta.url), '--peer', 'client', port, ...files]);
}

function byteTable(bytes: number): Table {
  const field = new Field('bytes', new Uint8(), false);
  const child = makeData({ type: new Uint8(), length: bytes, data: new Uint8Array(bytes).fill(7) });
  return new Table([new RecordBatch(new Schema([field]), makeData({ type: new Struct([field]), length: bytes, nullCount: 0, children: [child] }))]);
}

const quantile = (xs: number[], q: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;
/** Idle time before each call, as in bench/run.ts: what a side does in the background is not on the clock. */
const pauseMs = (bytes: number) => Math.round(2 + bytes / 2e6);

async function main(quick: boolean, dry: boolean): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'arrow-shm-flight-bench-'));
  const write = (name: Payload['name'], table: Table, rounds: number, perRound: number): Payload => {
    const file = path.join(dir, `${name}.arrows`);
    const bytes = tableToIPC(table, 'stream');
    writeFileSync(file, bytes);
    return { name, file, bytes: bytes.byteLength, rounds, perRound };
  };
  const payloads = [
    write('symbols', symbolTableFromColumns(generateSymbolColumns(100_000)), quick ? 4 : 10, quick ? 3 : 5),
    write('big', byteTable(64 * 2 ** 20), quick ? 3 : 6, quick ? 1 : 2),
    write('tiny', generateSymbolTable(100), quick ? 4 : 10, quick ? 10 : 20),
  ];
  const files = payloads.map((p) => `${p.name}=${p.file}`);
  const servers = new Map<Side, Peer>();
  const clients: { pair: [Side, Side]; client: Peer; server: Peer }[] = [];
  const rows: FlightRow[] = [];
  try {
    for (const side of ['py', 'node'] as const) servers.set(side, startServer(side));
    const ports = new Map<Side, string>();
    for (const [side, server] of servers) ports.set(side, (await server.next()).split(' ')[1]!);
    for (const pair of PAIRS) clients.push({ pair, client: startClient(pair[0], ports.get(pair[1])!, files), server: servers.get(pair[1])! });
    for (const { client } of clients) await client.next(); // ready
    for (const op of ['put', 'get'] as const) {
      for (const payload of payloads) {
        const acc = clients.map(() => ({ samples: [] as number[], cpu: 0 }));
        const batch = async (i: number, count: number) => {
          const { client, server } = clients[i]!;
          const cpu0 = client.cpuMs() + server.cpuMs();
          client.child.stdin!.write(`${op} ${payload.name} ${count} ${pauseMs(payload.bytes)}\n`);
          const samples = JSON.parse(await client.next()) as number[];
          // The pauses are idle time in both processes: their CPU is what the calls cost.
          return { samples, cpu: client.cpuMs() + server.cpuMs() - cpu0 };
        };
        for (let i = 0; i < clients.length; i++) await batch(i, 2); // warm-up
        for (let round = 0; round < payload.rounds; round++) {
          for (let k = 0; k < clients.length; k++) {
            const i = (k + round) % clients.length; // each pair in turn, a different one first each round
            const { samples, cpu } = await batch(i, payload.perRound);
            acc[i]!.samples.push(...samples);
            acc[i]!.cpu += cpu;
          }
        }
        clients.forEach(({ pair }, i) => {
          const { samples, cpu } = acc[i]!;
          rows.push({ op, payload: payload.name, client: pair[0], server: pair[1], bytes: payload.bytes, runs: samples.length, median_ms: quantile(samples, 0.5), p99_ms: quantile(samples, 0.99), cpu_ms: cpu / samples.length, samples_ms: samples });
        });
        process.stderr.write(`flight ${op} ${payload.name}: done\n`);
      }
    }
  } finally {
    for (const { client } of clients) client.kill();
    for (const server of servers.values()) server.kill();
    rmSync(dir, { recursive: true, force: true });
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const command = `node dist/bench/flight.js${quick ? ' --quick' : ''}`;
  const doc = { command, date: new Date().toISOString(), machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, kernel: os.release(), node: process.version }, rows };
  const table = report(rows, command, doc.date);
  console.log(table);
  if (dry) return;
  writeFileSync(path.join(root, 'bench', 'results', `flight-${stamp}.json`), JSON.stringify(doc, null, 1));
  writeSection(table);
  console.log(`\nwrote bench/results/flight-${stamp}.json and the Flight section of BENCHMARKS.md`);
}

const LABEL: Record<Payload['name'], string> = { symbols: '100k-symbol table', big: '64 MiB table', tiny: 'tiny table' };
const TARGET: Record<string, number> = { 'py→node': 1.2, 'node→py': 1.2, 'node→node': 1.5 };

/** The Flight section: one line per call and table, the four pairs side by side, each against pyarrow↔pyarrow. */
function report(rows: FlightRow[], command: string, date: string): string {
  const find = (op: Op, payload: string, client: Side, server: Side) => rows.find((r) => r.op === op && r.payload === payload && r.client === client && r.server === server);
  const lines = [
    '<!-- flight: generated by node dist/bench/flight.js (part of npm run bench) -->',
    '## Arrow Flight (issue #17)',
    '',
    `Generated by \`${command}\` on ${date}. Client → server, each pair in its own two processes on loopback; the pairs' runs interleaved.`,
    'A put ends when the server has read the whole table and answered; a get when the client holds the decoded table. Median ms, then the',
    'ratio to pyarrow.flight ↔ pyarrow.flight in the same run (targets: 1.2× with one pyarrow side, 1.5× Node ↔ Node; the tiny put: 2×),',
    'and the CPU of both processes per call (all threads).',
    '',
    '| call | table | IPC bytes | py → py | py → node | node → py | node → node | CPU ms: py→py / py→node / node→py / node→node |',
    '|---|---|---:|---:|---:|---:|---:|---|',
  ];
  for (const op of ['put', 'get'] as const) {
    for (const payload of ['symbols', 'big', 'tiny'] as const) {
      const anchor = find(op, payload, 'py', 'py');
      if (!anchor) continue;
      const cells = PAIRS.map(([c, s]) => {
        const r = find(op, payload, c, s);
        if (!r) return '—';
        if (r === anchor) return `${r.median_ms.toFixed(2)}`;
        const ratio = r.median_ms / anchor.median_ms;
        const target = payload === 'tiny' ? 2 : TARGET[`${c}→${s}`]!;
        return `${r.median_ms.toFixed(2)} (${ratio.toFixed(2)}×${ratio <= target ? '' : ' ✗'})`;
      });
      const cpu = PAIRS.map(([c, s]) => find(op, payload, c, s)?.cpu_ms.toFixed(2) ?? '—').join(' / ');
      lines.push(`| Do${op === 'put' ? 'Put' : 'Get'} | ${LABEL[payload]} | ${anchor.bytes} | ${cells.join(' | ')} | ${cpu} |`);
    }
  }
  lines.push('', '✗: misses its target. Raw samples: `bench/results/flight-*.json`.', '<!-- /flight -->');
  return lines.join('\n');
}

/** Replaces the Flight section of BENCHMARKS.md, or inserts it before the store's. */
function writeSection(section: string): void {
  const file = path.join(root, 'BENCHMARKS.md');
  const previous = readFileSync(file, 'utf8');
  const old = /<!-- flight[\s\S]*?<!-- \/flight -->/;
  const store = previous.indexOf('<!-- store');
  const next = old.test(previous) ? previous.replace(old, section) : store >= 0 ? `${previous.slice(0, store)}${section}\n\n${previous.slice(store)}` : `${previous.trimEnd()}\n\n${section}\n`;
  writeFileSync(file, next);
}

const peer = process.argv.indexOf('--peer');
if (peer >= 0) {
  if (process.argv[peer + 1] === 'server') await nodeServer();
  else await nodeClient(process.argv[peer + 2]!, process.argv.slice(peer + 3));
} else {
  await main(process.argv.includes('--quick'), process.argv.includes('--dry'));
}
