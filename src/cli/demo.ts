// `arrow-shm demo`: a receiver process and a sender process hand over the 100,000-row symbol
// table, through arrow-shm and, over a plain UNIX stream socket, as JSON and as Arrow IPC bytes
// (the baseline Arrow users know); the parent reports all three.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { tableFromIPC, tableToIPC } from 'apache-arrow';
import { connect } from '../transport/channel.js';
import { listen } from '../transport/listener.js';
import { checksumSymbolTable, generateSymbolColumns, symbolRows, symbolTableFromColumns } from './symbols.js';

// CLOCK_MONOTONIC: one clock for every process on the machine.
const now = (): number => Number(process.hrtime.bigint()) / 1e6;
const mainScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'main.js');

/** The socket baselines: how the sender encodes the table, how the receiver decodes it (rows). */
const BASELINES = ['json', 'arrow-ipc'] as const;
type Baseline = (typeof BASELINES)[number];

interface Sample {
  method: 'arrow-shm' | Baseline;
  run: number;
  ms: number;
  rows: number;
  bytes: number;
  zeroCopy?: boolean;
  checksum?: number;
  schema?: string;
  head?: unknown[];
}

function report(sample: Sample): void {
  process.stdout.write(JSON.stringify(sample) + '\n');
}

export async function runDemoReceiver(flags: { socket: string; baselineSocket: string; runs: number }): Promise<void> {
  const listener = listen(flags.socket);
  // One connection per hand-off: "METHOD T0\n" then the payload, until the sender closes.
  const socketDone = new Promise<void>((resolve) => {
    let done = 0;
    const runs: Record<string, number> = {};
    const server = net.createServer((conn) => {
      const chunks: Buffer[] = [];
      conn.on('data', (c) => chunks.push(c));
      conn.on('end', () => {
        const all = Buffer.concat(chunks);
        const nl = all.indexOf(10);
        const [method, t0] = all.subarray(0, nl).toString().split(' ') as [Baseline, string];
        const payload = all.subarray(nl + 1);
        const rows = method === 'json' ? (JSON.parse(payload.toString()) as unknown[]).length : tableFromIPC(payload).numRows;
        const t1 = now();
        runs[method] = (runs[method] ?? 0) + 1;
        report({ method, run: runs[method]! - 1, ms: t1 - Number(t0), rows, bytes: payload.length });
        if (++done === flags.runs * BASELINES.length) server.close(() => resolve());
      });
    });
    server.listen(flags.baselineSocket);
  });
  process.stderr.write(`arrow-shm: listening on ${flags.socket}\n`);
  const channel = await listener.accept();
  listener.close();
  for (let run = 0; run < flags.runs; run++) {
    const message = await channel.receive();
    const table = message.table; // decoded over the shared mapping
    const t1 = now();
    const t0 = Number(message.metadata.t0);
    const zeroCopy = table.batches.every((b) => b.data.children.every((c) => c.values.buffer === message.sharedBuffer));
    const first = run === 0;
    report({
      method: 'arrow-shm',
      run,
      ms: t1 - t0,
      rows: table.numRows,
      bytes: message.bytes.byteLength,
      zeroCopy,
      checksum: checksumSymbolTable(table),
      schema: first ? table.schema.fields.map((f) => `${f.name}: ${f.type}`).join(', ') : undefined,
      head: first ? table.slice(0, 3).toArray().map((r) => r.toJSON()) : undefined,
    });
    // Answer only after the checksum, so the sender's next hand-off starts when we are idle again.
    await message.respond(table.slice(0, 0));
    message.close();
  }
  channel.close();
  await socketDone;
}

export async function runDemoSender(flags: { socket: string; baselineSocket: string; rows: number; runs: number }): Promise<void> {
  const columns = generateSymbolColumns(flags.rows);
  const table = symbolTableFromColumns(columns);
  const rows = symbolRows(columns);
  process.stdout.write(JSON.stringify({ sender: true, checksum: checksumSymbolTable(table) }) + '\n');
  const channel = await connect(flags.socket);
  for (let run = 0; run < flags.runs; run++) {
    const done = await channel.request(table, { metadata: { t0: String(now()) } });
    done.close();
  }
  channel.close();
  const encode: Record<Baseline, () => string | Uint8Array> = { json: () => JSON.stringify(rows), 'arrow-ipc': () => tableToIPC(table, 'stream') };
  for (const method of BASELINES) {
    for (let run = 0; run < flags.runs; run++) {
      await new Promise<void>((resolve, reject) => {
        const conn = net.connect(flags.baselineSocket, () => {
          conn.write(`${method} ${now()}\n`); // the clock starts before encoding
          conn.end(encode[method]());
        });
        conn.on('close', () => resolve());
        conn.on('error', reject);
      });
    }
  }
}

function collect(child: ChildProcess): Promise<Record<string, unknown>[]> {
  const lines: Record<string, unknown>[] = [];
  const rl = createInterface({ input: child.stdout! });
  rl.on('line', (l) => lines.push(JSON.parse(l)));
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => (code === 0 ? resolve(lines) : reject(new Error(`demo ${child.spawnargs[2]} exited with ${code}`))));
  });
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const fmt = (ms: number): string => (ms < 10 ? ms.toFixed(2) : ms.toFixed(0)) + ' ms';

export async function runDemo(flags: { rows: number; runs: number }): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'arrow-shm-demo-'));
  const socket = path.join(dir, 'arrow-shm.sock');
  const baselineSocket = path.join(dir, 'baseline.sock');
  const common = ['--socket', socket, '--baseline-socket', baselineSocket, '--runs', String(flags.runs)];
  const children: ChildProcess[] = [];
  try {
    console.log(`arrow-shm demo: a ${flags.rows.toLocaleString('en-US')}-row code-graph symbol table, handed from one process to another\n`);
    const receiver = spawn(process.execPath, [mainScript, '__demo-receiver', ...common], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(receiver);
    const received = collect(receiver);
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: receiver.stderr! }).on('line', (l) => (l.includes('listening') ? resolve() : process.stderr.write(l + '\n')));
      receiver.on('exit', () => reject(new Error('the demo receiver exited early')));
    });
    const sender = spawn(process.execPath, [mainScript, '__demo-sender', ...common, '--rows', String(flags.rows)], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(sender);
    const [sent, got] = await Promise.all([collect(sender), received]);
    const shm = got.filter((s) => s.method === 'arrow-shm') as unknown as Sample[];
    const baseline = (method: Baseline) => median(got.filter((s) => s.method === method).map((s) => s.ms as number));
    const first = shm[0]!;
    const senderChecksum = sent.find((s) => s.sender)?.checksum;
    console.log(`receiver pid ${receiver.pid} got ${first.rows.toLocaleString('en-US')} rows (${(first.bytes / 1e6).toFixed(1)} MB of Arrow IPC in a sealed memfd)`);
    console.log(`schema: ${first.schema}`);
    console.log('first rows:');
    for (const row of first.head ?? []) console.log(`  ${JSON.stringify(row)}`);
    console.log(`checksum of every value: sender ${senderChecksum}, receiver ${first.checksum} (${senderChecksum === first.checksum ? 'equal' : 'DIFFERENT'})`);
    console.log(`zero-copy: the receiver's column buffers are views into the shared mapping: ${shm.every((s) => s.zeroCopy) ? 'yes' : 'NO'}\n`);
    const a = median(shm.map((s) => s.ms));
    const [j, ipc] = [baseline('json'), baseline('arrow-ipc')];
    console.log(`hand-off, from "sender holds the table" to "receiver holds a usable table" (median of ${flags.runs}):`);
    console.log(`  arrow-shm (copy into a sealed memfd, pass the fd)   ${fmt(a).padStart(10)}`);
    console.log(`  Arrow IPC over a UNIX socket (write, send, read)    ${fmt(ipc).padStart(10)}   ${(ipc / a).toFixed(0)}x slower`);
    console.log(`  JSON over a UNIX socket (stringify, send, parse)    ${fmt(j).padStart(10)}   ${(j / a).toFixed(0)}x slower`);
    console.log('\nmore: `npm run bench` measures every method side by side; docs/PROTOCOL.md describes the wire format.');
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}
