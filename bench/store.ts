// Put and get through the arrow-shm table store against what Plasma users moved to, in one run:
// Arrow IPC bytes kept by a server process behind a UNIX socket (Redis-style: every get copies the
// bytes through the socket) and pyarrow.flight DoPut/DoGet (bench/store_flight.py).
//
//   node dist/bench/store.js [--runs N] [--big-runs N] [--big-bytes BYTES] [--quick]
//
// Every method starts from Arrow IPC bytes (or, for Flight, a pyarrow Table) in the client and
// ends a get with a decoded table whose columns can be read. Medians in ms; noisy machine: compare
// the rows of one run.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { tableFromArrays, tableFromIPC, tableToIPC } from 'apache-arrow';
import { generateSymbolTable } from '../src/cli/symbols.js';
import { openStore, type StoreClient } from '../src/store/client.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = path.join(root, 'dist', 'src', 'cli', 'main.js');
const venvPython = path.join(root, '.build', 'venv', 'bin', 'python');

// --- the Redis-style baseline: a process keeping IPC bytes by name, over a SOCK_STREAM socket ---

/** Reads `\n`-terminated headers and exact byte counts off a stream socket. */
class StreamReader {
  #chunks: Buffer[] = [];
  #buffered = 0;
  #wake: (() => void) | null = null;
  #ended = false;

  constructor(socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
      this.#wake?.();
    });
    socket.on('close', () => {
      this.#ended = true;
      this.#wake?.();
    });
  }

  async #need(n: number): Promise<void> {
    while (this.#buffered < n) {
      if (this.#ended) throw new Error('connection closed');
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = null;
    }
  }

  async line(): Promise<string> {
    for (;;) {
      // Only the chunks up to the newline are joined: the table's bytes behind it are not copied here.
      let seen = 0;
      for (let i = 0; i < this.#chunks.length; i++) {
        const at = this.#chunks[i]!.indexOf(10);
        if (at < 0) {
          seen += this.#chunks[i]!.length;
          continue;
        }
        const head = Buffer.concat([...this.#chunks.slice(0, i), this.#chunks[i]!.subarray(0, at)]);
        const rest = this.#chunks[i]!.subarray(at + 1);
        this.#chunks = rest.length > 0 ? [rest, ...this.#chunks.slice(i + 1)] : this.#chunks.slice(i + 1);
        this.#buffered -= seen + at + 1;
        return head.toString();
      }
      await this.#need(this.#buffered + 1);
    }
  }

  /** Exactly `n` bytes, copied into one buffer as they arrive (what any socket client does). */
  async bytes(n: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      await this.#need(1);
      const chunk = this.#chunks.shift()!;
      const take = Math.min(chunk.length, n - filled);
      chunk.copy(out, filled, 0, take);
      filled += take;
      this.#buffered -= chunk.length;
      if (take < chunk.length) {
        this.#chunks.unshift(chunk.subarray(take));
        this.#buffered += chunk.length - take;
      }
    }
    return out;
  }
}

function socketServer(address: string): void {
  const kept = new Map<string, Buffer>();
  const server = net.createServer(async (socket) => {
    const reader = new StreamReader(socket);
    try {
      for (;;) {
        const [op, name, length] = (await reader.line()).split(' ');
        if (op === 'P') {
          kept.set(name!, await reader.bytes(Number(length)));
          socket.write('OK\n');
        } else {
          const bytes = kept.get(name!)!;
          socket.write(`${bytes.length}\n`);
          socket.write(bytes);
        }
      }
    } catch {
      socket.destroy();
    }
  });
  server.listen(address, () => process.stdout.write('ready\n'));
}

class SocketClient {
  #reader: StreamReader;
  private constructor(readonly socket: net.Socket) {
    this.#reader = new StreamReader(socket);
  }

  static async connect(address: string): Promise<SocketClient> {
    const socket = net.connect(address);
    await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new SocketClient(socket);
  }

  async put(name: string, bytes: Uint8Array): Promise<void> {
    this.socket.write(`P ${name} ${bytes.length}\n`);
    this.socket.write(bytes);
    if ((await this.#reader.line()) !== 'OK') throw new Error('put failed');
  }

  async get(name: string): Promise<Buffer> {
    this.socket.write(`G ${name}\n`);
    return this.#reader.bytes(Number(await this.#reader.line()));
  }
}

// --- measuring -----------------------------------------------------------------------------------

async function times(runs: number, warmups: number, once: () => Promise<void>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < runs + warmups; i++) {
    const t0 = performance.now();
    await once();
    if (i >= warmups) out.push(performance.now() - t0);
  }
  return out;
}

/** Reads one byte of every page: what a first pass over a lazily mapped table costs beyond the get. */
function touchPages(bytes: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 4096) sum += bytes[i]!;
  return sum;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

interface Row {
  table: string;
  bytes: number;
  method: string;
  put_ms: number;
  get_ms: number;
  /** get, then one read of every 4 KiB page of the IPC bytes (a store get maps lazily: the first read faults the pages in). */
  touch_ms?: number;
  put_samples: number[];
  get_samples: number[];
}

async function started(child: ChildProcess, what: string, ready: (line: string) => boolean, stream: 'stdout' | 'stderr'): Promise<void> {
  const lines = createInterface({ input: child[stream]! });
  await new Promise<void>((resolve, reject) => {
    lines.on('line', (line) => ready(line) && resolve());
    child.once('exit', (code) => reject(new Error(`${what} exited (${code}) before it was ready`)));
  });
}

/** `runs` samples of each (after warm-ups); a store get costs next to nothing whatever the size, so it always takes `getRuns`. */
async function measure(label: string, bytes: Uint8Array, expectRows: number, flightSpec: string, runs: number, getRuns: number, store: StoreClient, sockets: SocketClient): Promise<Row[]> {
  const rows: Row[] = [];
  const warmups = runs > 3 ? 2 : 1;
  const name = `bench-${label.replace(/[^A-Za-z0-9]/g, '-')}`;

  const storePut = await times(runs, warmups, async () => void (await store.put(name, bytes, { replace: true })));
  const storeGet = await times(getRuns, 2, async () => {
    const message = await store.get(name);
    if (message.table.numRows !== expectRows) throw new Error('store get: wrong row count');
    message.close();
  });
  const storeTouch = await times(getRuns, 2, async () => {
    const message = await store.get(name);
    if (message.table.numRows !== expectRows) throw new Error('store get: wrong row count');
    touchPages(message.bytes);
    message.close();
  });
  await store.delete(name);
  rows.push({ table: label, bytes: bytes.length, method: 'arrow-shm store (put: write a sealed memfd + pass its fd; get: map it)', put_ms: median(storePut), get_ms: median(storeGet), touch_ms: median(storeTouch), put_samples: storePut, get_samples: storeGet });

  const socketPut = await times(runs, warmups, () => sockets.put(name, bytes));
  const socketGet = await times(runs, warmups, async () => {
    const table = tableFromIPC(await sockets.get(name));
    if (table.numRows !== expectRows) throw new Error('socket get: wrong row count');
  });
  const socketTouch = await times(runs, warmups, async () => {
    const bytes = await sockets.get(name);
    if (tableFromIPC(bytes).numRows !== expectRows) throw new Error('socket get: wrong row count');
    touchPages(bytes);
  });
  await sockets.put(name, new Uint8Array(0)); // let the server drop its copy
  rows.push({ table: label, bytes: bytes.length, method: 'Arrow IPC bytes over a UNIX socket (Redis-style copy)', put_ms: median(socketPut), get_ms: median(socketGet), touch_ms: median(socketTouch), put_samples: socketPut, get_samples: socketGet });

  const r = spawnSync(venvPython, [path.join(root, 'bench', 'store_flight.py'), flightSpec, String(runs), String(runs)], { encoding: 'utf8', maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`store_flight.py failed: ${r.stderr}`);
  const flight = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { put: number[]; get: number[] };
  rows.push({ table: label, bytes: bytes.length, method: 'pyarrow.flight DoPut / DoGet (Python client and server)', put_ms: median(flight.put), get_ms: median(flight.get), put_samples: flight.put, get_samples: flight.get });
  return rows;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const option = (name: string, fallback: number) => {
    const at = args.indexOf(name);
    return at >= 0 ? Number(args[at + 1]) : fallback;
  };
  const quick = args.includes('--quick');
  const runs = option('--runs', quick ? 3 : 9);
  const bigRuns = option('--big-runs', quick ? 1 : 3);
  const bigBytes = option('--big-bytes', quick ? 64 * 1024 ** 2 : 1024 ** 3);

  const dir = mkdtempSync(path.join(os.tmpdir(), 'arrow-shm-store-bench-'));
  const storeAddress = `@arrow-shm-store-bench-${process.pid}`;
  const socketPath = path.join(dir, 'baseline.sock');
  const storeChild = spawn(process.execPath, [cli, 'store', '--socket', storeAddress, '--memory', String(4 * bigBytes + 1024 ** 3)], { stdio: ['ignore', 'ignore', 'pipe'] });
  const socketChild = spawn(process.execPath, [fileURLToPath(import.meta.url), '--socket-server', socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await started(storeChild, 'the store', (l) => l.includes('listening on'), 'stderr');
    await started(socketChild, 'the socket server', (l) => l === 'ready', 'stdout');
    const store = await openStore(storeAddress);
    const sockets = await SocketClient.connect(socketPath);
    const rows: Row[] = [];

    const symbols = tableToIPC(generateSymbolTable(100_000), 'stream');
    const symbolsFile = path.join(dir, 'symbols.arrows');
    writeFileSync(symbolsFile, symbols);
    rows.push(...(await measure('100k-symbol table', symbols, 100_000, symbolsFile, runs, runs, store, sockets)));

    const count = Math.floor(bigBytes / 8);
    const big = tableToIPC(tableFromArrays({ x: Float64Array.from({ length: count }, (_, i) => i) }), 'stream');
    rows.push(...(await measure(`${(bigBytes / 1024 ** 2).toFixed(0)} MiB float64 column`, big, count, `floats:${count}`, bigRuns, runs, store, sockets)));

    store.close();
    sockets.socket.destroy();
    const table = storeTable(rows, runs, bigRuns);
    process.stdout.write(`${table}\n\n${JSON.stringify({ bench: 'store', rows })}\n`);
    if (!process.argv.includes('--no-report')) writeSection(table);
  } finally {
    storeChild.kill('SIGTERM');
    socketChild.kill('SIGTERM');
    await Promise.all([storeChild, socketChild].map((c) => new Promise((resolve) => (c.exitCode !== null || c.signalCode !== null ? resolve(null) : c.once('exit', resolve)))));
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The "Table store" section of BENCHMARKS.md, kept between markers when `npm run bench` rewrites the rest. */
function writeSection(table: string): void {
  const file = path.join(root, 'BENCHMARKS.md');
  const previous = readFileSync(file, 'utf8');
  const section = `<!-- store: generated by node dist/bench/store.js (part of npm run bench) -->\n## Table store (issue #20)\n\nGenerated on ${new Date().toISOString()}.\n${table}\n<!-- /store -->`;
  const old = /<!-- store[\s\S]*?<!-- \/store -->/;
  writeFileSync(file, old.test(previous) ? previous.replace(old, section) : `${previous.trimEnd()}\n\n${section}\n`);
}

function storeTable(rows: Row[], runs: number, bigRuns: number): string {
  const mib = (b: number) => (b / 1024 ** 2).toFixed(1);
  const lines = [
    '',
    `Put and get, medians after warm-ups, ms: ${runs} runs for the symbol table, ${bigRuns} for the big one (its store gets: ${runs}).`,
    'A get ends with a decoded table (arrow-js for Node, pyarrow for Flight). A store get maps the pages lazily, so the first read of',
    "the data pays page faults a copy paid up front: 'get + touch' adds one read of every 4 KiB page of the IPC bytes.",
    '',
    '| table | IPC bytes | method | put ms | get ms | get + touch ms |',
    '|---|---:|---|---:|---:|---:|',
    ...rows.map((r) => `| ${r.table} | ${mib(r.bytes)} MiB | ${r.method} | ${r.put_ms.toFixed(2)} | ${r.get_ms.toFixed(3)} | ${r.touch_ms === undefined ? '—' : r.touch_ms.toFixed(3)} |`),
  ];
  return lines.join('\n');
}

if (process.argv[2] === '--socket-server') socketServer(process.argv[3]!);
else await main();
