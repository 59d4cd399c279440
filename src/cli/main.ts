#!/usr/bin/env node
// The arrow-shm command line (docs/CLI.md): send, recv, demo.
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { ArrowShmError } from '../errors.js';
import { withTimeout } from '../timeout.js';
import { connect, type Channel } from '../transport/channel.js';
import { listen } from '../transport/listener.js';
import { type ReceivedTable } from '../transport/received.js';
import { seedReceive, seedSend } from '../transport/seed.js';
import type { KeyValues } from '../transport/frame.js';
import { readInput, readIpcInput, UsageError } from './files.js';
import { Output } from './output.js';
import { reportDropped, serveTables } from './serve.js';
import { runDemo, runDemoReceiver, runDemoSender } from './demo.js';
import { pub, recvStream, sendStream, sub, type StreamRecvFlags, type StreamSendFlags } from './stream.js';
import { FlightClient } from '../transport/flight-client.js';
import { FlightServer } from '../transport/flight-server.js';
import { flightName, isFlightAddress } from '../transport/flight-codec.js';
import { type FlightMessage } from '../transport/flight-message.js';
import { addStoreCommands } from './store.js';

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

function keyValue(value: string, previous: KeyValues = {}): KeyValues {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError('expected KEY=VALUE');
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

const SOCKET = 'a socket path, @name (abstract socket), or grpc://host:port | grpc+tls://host:port (Arrow Flight)';
const STREAM_SOCKET = 'a socket path or @name (abstract socket), or grpc://host:port | grpc+tls://host:port (Arrow Flight: DoGet of "stream")';

function listening(address: string): void {
  process.stderr.write(`arrow-shm: listening on ${address}\n`);
}

interface SendFlags extends StreamSendFlags {
  stream?: boolean;
  socket: string;
  listen?: boolean;
  seedCompat?: boolean;
  meta?: KeyValues;
  timeoutMs?: number;
  /** grpc+tls://: PEM of the CA that signed the server's certificate. */
  tlsCa?: string;
}

function powerOfTwo(value: string): number {
  const n = positiveInt(value);
  if (!Number.isInteger(Math.log2(n)) || n < 65536) throw new InvalidArgumentError('expected a power of two, at least 65536');
  return n;
}

async function send(files: string[], flags: SendFlags): Promise<void> {
  if (flags.stream) {
    if (flags.seedCompat) throw new UsageError('--stream and --seed-compat do not go together');
    return sendStream(files, flags, listening);
  }
  if (isFlightAddress(flags.socket)) return sendFlight(files, flags);
  const inputs = files.map((f) => ({ name: f, data: readIpcInput(f) }));
  if (flags.seedCompat) {
    if (inputs.length !== 1) throw new UsageError('--seed-compat sends exactly one FILE');
    await seedSend(flags.socket, inputs[0]!.data, { timeoutMs: flags.timeoutMs, onListening: () => listening(flags.socket) });
    return;
  }
  let channel: Channel;
  if (flags.listen) {
    const listener = listen(flags.socket);
    listening(flags.socket);
    try {
      channel = await withTimeout(listener.accept(), flags.timeoutMs, 'no receiver connected');
    } finally {
      listener.close();
    }
  } else {
    channel = await connect(flags.socket, { timeoutMs: flags.timeoutMs });
  }
  try {
    for (const input of inputs) await channel.send(input.data, { metadata: flags.meta, timeoutMs: flags.timeoutMs });
  } finally {
    channel.close();
  }
}

/** Over Arrow Flight: one DoPut per FILE, named after the file (--stream: src/cli/stream.ts). */
async function sendFlight(files: string[], flags: SendFlags): Promise<void> {
  if (flags.listen || flags.seedCompat) throw new UsageError('--listen and --seed-compat are for local sockets, not grpc:// addresses');
  const inputs = files.map((f) => ({ name: flightName(f), data: readIpcInput(f) }));
  // Offers the same-host upgrade: a receiver on this machine gets the tables through shared memory.
  const rootCertificate = flags.tlsCa ? readInput(flags.tlsCa) : undefined;
  const client = await FlightClient.connect(flags.socket, { timeoutMs: flags.timeoutMs, token: process.env.ARROW_SHM_FLIGHT_TOKEN, rootCertificate, upgrade: true });
  try {
    for (const input of inputs) await client.doPut(input.name, input.data, { metadata: flags.meta });
  } finally {
    client.close();
  }
}

interface RecvFlags extends StreamRecvFlags {
  stream?: boolean;
  socket: string;
  connect?: boolean;
  count: number;
  out?: string;
  print?: boolean;
  seedCompat?: boolean;
  allowUnsealed?: boolean;
  timeoutMs?: number;
  /** grpc:// on a non-loopback address without TLS and a token. */
  insecure?: boolean;
  tlsCert?: string;
  tlsKey?: string;
}

function printSummary(message: ReceivedTable | FlightMessage, index: number): void {
  const lines: string[] = [`== table ${index}: ${message.bytes.byteLength} bytes of Arrow IPC ==`];
  const meta = Object.entries(message.metadata);
  if (meta.length) lines.push(`metadata: ${meta.map(([k, v]) => `${k}=${v}`).join(', ')}`);
  try {
    const table = message.table;
    lines.push(`schema: ${table.schema.fields.map((f) => `${f.name}: ${f.type}`).join(', ')}`);
    lines.push(`rows: ${table.numRows}, columns: ${table.numCols}, batches: ${table.batches.length}`);
    const head = table.slice(0, Math.min(5, table.numRows)).toArray();
    if (head.length) {
      lines.push('first rows:');
      for (const row of head) lines.push(`  ${JSON.stringify(row?.toJSON?.() ?? row, (_, v) => (typeof v === 'bigint' ? v.toString() : v))}`);
    }
  } catch (e) {
    if (e instanceof ArrowShmError) process.stderr.write(`arrow-shm: ${e.code}: ${e.message}\n`);
    else throw e;
  }
  process.stdout.write(lines.join('\n') + '\n');
}

function handle(message: ReceivedTable | FlightMessage, index: number, flags: RecvFlags, output: Output | null): void {
  try {
    output?.write(index, message.bytes);
    if (flags.print) printSummary(message, index);
  } finally {
    message.close();
  }
}

/** A Flight server: each DoPut is one table; they stay available to DoGet until exit. */
async function recvFlight(flags: RecvFlags, output: Output | null): Promise<void> {
  if (flags.connect || flags.seedCompat) throw new UsageError('--connect and --seed-compat are for local sockets, not grpc:// addresses');
  if (!flags.tlsCert !== !flags.tlsKey) throw new UsageError('--tls-cert and --tls-key go together');
  const tls = flags.tlsCert && flags.tlsKey ? { certificate: readInput(flags.tlsCert), key: readInput(flags.tlsKey) } : undefined;
  const server = await FlightServer.listen(flags.socket, { token: process.env.ARROW_SHM_FLIGHT_TOKEN, tls, insecure: flags.insecure, shm: `@arrow-shm-flight-${process.pid}` });
  listening(server.address);
  try {
    for (let received = 0; received < flags.count; ) {
      const next = server.receive().catch((e) => {
        // A call the server refused (its client got the status): report it and serve the next one.
        if (!(e instanceof ArrowShmError) || e.code === 'ERR_CLOSED') throw e;
        process.stderr.write(`arrow-shm: refused a table: ${e.code}: ${e.message}\n`);
        return null;
      });
      const message = await withTimeout(next, flags.timeoutMs, 'no table arrived');
      if (message) handle(message, received++, flags, output);
    }
  } finally {
    await server.close();
  }
}

async function recv(flags: RecvFlags): Promise<void> {
  // Checked before anything is accepted: a table that arrived can no longer be refused.
  const output = Output.prepare(flags.out, flags.stream ? 1 : flags.count);
  if (flags.stream) {
    if (flags.seedCompat || flags.count !== 1) throw new UsageError('--stream receives one stream: no --seed-compat, no --count');
    return recvStream(flags, output, listening);
  }
  if (isFlightAddress(flags.socket)) return recvFlight(flags, output);
  if (flags.seedCompat) {
    for (let i = 0; i < flags.count; i++) handle(await seedReceive(flags.socket, { timeoutMs: flags.timeoutMs }), i, flags, output);
    return;
  }
  const options = { allowUnsealed: flags.allowUnsealed };
  let received = 0;
  if (flags.connect) {
    const channel = await connect(flags.socket, { ...options, timeoutMs: flags.timeoutMs });
    try {
      while (received < flags.count) handle(await withTimeout(channel.receive(), flags.timeoutMs, 'no table arrived'), received++, flags, output);
    } finally {
      channel.close();
    }
    return;
  }
  const listener = listen(flags.socket, { ...options, onConnectionError: (e) => reportDropped(e) });
  listening(flags.socket);
  try {
    await serveTables(listener, flags.count, flags.timeoutMs, (message, index) => handle(message, index, flags, output));
  } finally {
    listener.close();
  }
}

function program(): Command {
  const cli = new Command('arrow-shm')
    .description('Hand Apache Arrow tables to another process through sealed shared memory, zero-copy.')
    .version('0.1.0')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s.startsWith('error:') ? `arrow-shm: ${s}` : s) })
    .showHelpAfterError(false);

  cli
    .command('send')
    .description('send each FILE (Arrow IPC stream or file, - for stdin) as one table')
    .requiredOption('--socket <addr>', SOCKET)
    .option('--listen', 'listen for the receiver instead of connecting')
    .option('--seed-compat', "speak the seed proof of concept's protocol (listen, send 'F' + unsealed memfd)")
    .option('--meta <key=value>', 'user metadata for every message (repeatable)', keyValue)
    .option('--timeout-ms <n>', 'give up after N ms', positiveInt)
    .option('--stream', 'send every batch of the FILEs as one stream through a shared ring')
    .option('--ring-bytes <n>', 'ring capacity for --stream (a power of two)', powerOfTwo)
    .option('--tls-ca <pem>', 'grpc+tls://: the CA certificate that signed the server\'s (default: the system\'s CAs)')
    .argument('<files...>')
    .action((files: string[], flags: SendFlags) => send(files, flags));

  cli
    .command('recv')
    .description('receive tables; write them as IPC stream files and/or print a summary')
    .requiredOption('--socket <addr>', SOCKET)
    .option('--connect', 'connect to the sender instead of listening')
    .option('--count <n>', 'number of tables to receive', positiveInt, 1)
    .option('--out <path>', 'FILE for one table, or DIR for DIR/000000.arrows, ...')
    .option('--print', 'print schema, rows, metadata and the first rows')
    .option('--seed-compat', "speak the seed proof of concept's protocol (connect, accept an unsealed memfd)")
    .option('--allow-unsealed', 'accept segments without seals (unsafe with untrusted senders)')
    .option('--timeout-ms <n>', 'give up after N ms', positiveInt)
    .option('--stream', 'receive one stream; --out writes it as one IPC stream file')
    .option('--tls-cert <pem>', 'grpc+tls://: the server certificate (with --tls-key)')
    .option('--tls-key <pem>', 'grpc+tls://: its private key')
    .option('--insecure', 'grpc:// on a non-loopback address without TLS and a token (anyone who reaches the port can send and read tables)')
    .option('--tls-ca <pem>', 'grpc+tls:// with --stream --connect: the CA certificate that signed the server\'s')
    .action((flags: RecvFlags) => recv(flags));

  cli
    .command('pub')
    .description('publish every batch of the FILEs once N subscribers have joined')
    .requiredOption('--socket <addr>', STREAM_SOCKET)
    .option('--subscribers <n>', 'subscribers to wait for', positiveInt, 1)
    .option('--meta <key=value>', 'user metadata for the stream (repeatable)', keyValue)
    .option('--ring-bytes <n>', 'ring capacity (a power of two)', powerOfTwo)
    .option('--timeout-ms <n>', 'give up after N ms', positiveInt)
    .option('--tls-cert <pem>', 'grpc+tls://: the server certificate (with --tls-key)')
    .option('--tls-key <pem>', 'grpc+tls://: its private key')
    .option('--insecure', 'grpc:// on a non-loopback address without TLS and a token (anyone who reaches the port can subscribe)')
    .argument('<files...>')
    .action((files: string[], flags: StreamSendFlags) => pub(files, flags, listening));

  cli
    .command('sub')
    .description('subscribe to a publication and write what it publishes as one IPC stream file')
    .requiredOption('--socket <addr>', STREAM_SOCKET)
    .option('--out <file>', 'write the stream to FILE')
    .option('--print', 'print schema and row counts')
    .option('--timeout-ms <n>', 'give up after N ms (also: how long to wait for the publisher)', positiveInt)
    .option('--tls-ca <pem>', 'grpc+tls://: the CA certificate that signed the server\'s (default: the system\'s CAs)')
    .action((flags: StreamRecvFlags) => sub(flags));

  cli
    .command('demo')
    .description('hand a 100,000-row symbol table from one process to another, next to Arrow IPC and JSON over a UNIX socket')
    .option('--rows <n>', 'rows in the table', positiveInt, 100_000)
    .option('--runs <n>', 'hand-offs to time', positiveInt, 7)
    .action((flags: { rows: number; runs: number }) => runDemo(flags));

  addStoreCommands(cli, { printSummary, positiveInt, keyValue });

  cli.command('__demo-receiver', { hidden: true }).requiredOption('--socket <addr>').requiredOption('--baseline-socket <path>').requiredOption('--runs <n>', '', positiveInt).action(runDemoReceiver);
  cli
    .command('__demo-sender', { hidden: true })
    .requiredOption('--socket <addr>')
    .requiredOption('--baseline-socket <path>')
    .requiredOption('--rows <n>', '', positiveInt)
    .requiredOption('--runs <n>', '', positiveInt)
    .action(runDemoSender);
  return cli;
}

async function main(argv: string[]): Promise<number> {
  try {
    await program().parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (e instanceof UsageError) {
      process.stderr.write(`arrow-shm: ${e.message}\n`);
      return 2;
    }
    if (e instanceof ArrowShmError) {
      process.stderr.write(`arrow-shm: ${e.code}: ${e.message}\n`);
      return 1;
    }
    process.stderr.write(`arrow-shm: unexpected failure: ${(e as Error)?.message ?? String(e)}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv);
