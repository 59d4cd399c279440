// The stream commands of the CLI (docs/CLI.md, Streams): send --stream, recv --stream, pub, sub.
import { constants as osConstants } from 'node:os';
import type { RecordBatch, Schema } from 'apache-arrow';
import { compareSchemas } from 'apache-arrow/visitor/typecomparator';
import { ArrowShmError, fail } from '../errors.js';
import { decodeTable } from '../ipc/reader.js';
import { StreamReader } from '../stream/consumer.js';
import { publish, subscribe } from '../stream/pubsub.js';
import { withTimeout } from '../timeout.js';
import { connect, type Channel } from '../transport/channel.js';
import { listen } from '../transport/listener.js';
import type { KeyValues } from '../transport/frame.js';
import { readInput, readIpcInput, UsageError } from './files.js';
import { flightName, isFlightAddress } from '../transport/flight-codec.js';
import { Output } from './output.js';
import { StreamWriter } from '../stream/producer.js';
import { FlightPublication, FlightStreamListener, FlightStreamWriter, subscribeFlight, type FlightStreamReader } from '../stream/flight.js';
const END_OF_STREAM = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);

export interface StreamSendFlags {
  socket: string;
  /** grpc+tls:// client: PEM of the CA that signed the server's certificate. */
  tlsCa?: string;
  /** grpc+tls:// server: its certificate and key (PEM files). */
  tlsCert?: string;
  tlsKey?: string;
  /** grpc:// on a non-loopback address without TLS and a token. */
  insecure?: boolean;
  listen?: boolean;
  meta?: KeyValues;
  ringBytes?: number;
  timeoutMs?: number;
  subscribers?: number;
}

export interface StreamRecvFlags {
  socket: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  insecure?: boolean;
  connect?: boolean;
  out?: string;
  print?: boolean;
  timeoutMs?: number;
}

/** Every batch of every FILE, in order; the FILEs must share one schema. */
function batchesOf(files: string[]): { schema: Schema; batches: RecordBatch[] } {
  let schema: Schema | undefined;
  const batches: RecordBatch[] = [];
  for (const file of files) {
    const table = decodeTable(readIpcInput(file));
    if (schema && !compareSchemas(schema, table.schema)) throw fail('ERR_INVALID_ARGUMENT', `${file} has another schema than the files before it: one stream has one schema`);
    schema ??= table.schema;
    batches.push(...table.batches);
  }
  return { schema: schema!, batches };
}

/** Writes every batch and ends the stream; a failure aborts it (the reader sees the error, not an end). */
async function writeAll(stream: { write(batch: RecordBatch): Promise<unknown>; close(options: { timeoutMs?: number }): Promise<unknown>; abort(): void }, batches: RecordBatch[], timeoutMs: number | undefined): Promise<void> {
  try {
    for (const batch of batches) await stream.write(batch);
    await stream.close({ timeoutMs });
  } catch (e) {
    stream.abort();
    throw e;
  }
}

async function openChannel(flags: { socket: string; timeoutMs?: number }, listenFirst: boolean, onListening: () => void): Promise<Channel> {
  if (!listenFirst) return connect(flags.socket, { timeoutMs: flags.timeoutMs });
  const listener = listen(flags.socket);
  onListening();
  try {
    return await withTimeout(listener.accept(), flags.timeoutMs, 'no peer connected');
  } finally {
    listener.close();
  }
}

/** Over Flight the token comes from ARROW_SHM_FLIGHT_TOKEN (as for send and recv), TLS from the flags. */
function flightClientOptions(flags: { tlsCa?: string; timeoutMs?: number }) {
  return { token: process.env.ARROW_SHM_FLIGHT_TOKEN, rootCertificate: flags.tlsCa ? readInput(flags.tlsCa) : undefined, timeoutMs: flags.timeoutMs };
}

function flightServerOptions(flags: { tlsCert?: string; tlsKey?: string; insecure?: boolean }) {
  if (!flags.tlsCert !== !flags.tlsKey) throw new UsageError('--tls-cert and --tls-key go together');
  const tls = flags.tlsCert && flags.tlsKey ? { certificate: readInput(flags.tlsCert), key: readInput(flags.tlsKey) } : undefined;
  return { token: process.env.ARROW_SHM_FLIGHT_TOKEN, tls, insecure: flags.insecure };
}

export async function sendStream(files: string[], flags: StreamSendFlags, onListening: (address: string) => void): Promise<void> {
  if (isFlightAddress(flags.socket)) {
    // --listen: the receiver subscribes (DoGet); else this side writes an incremental DoPut.
    if (flags.listen) return pub(files, { ...flags, subscribers: 1 }, onListening);
    const { schema, batches } = batchesOf(files);
    const stream = await FlightStreamWriter.open(flags.socket, schema, { ...flightClientOptions(flags), name: files.map(flightName).join('+'), metadata: flags.meta });
    return writeAll(stream, batches, flags.timeoutMs);
  }
  const { schema, batches } = batchesOf(files);
  const channel = await openChannel(flags, flags.listen ?? false, () => onListening(flags.socket));
  try {
    const stream = await StreamWriter.open(channel, schema, { capacityBytes: flags.ringBytes, metadata: flags.meta, writeTimeoutMs: flags.timeoutMs });
    await writeAll(stream, batches, flags.timeoutMs);
  } finally {
    channel.close();
  }
}

export async function recvStream(flags: StreamRecvFlags, output: Output | null, onListening: (address: string) => void): Promise<void> {
  if (isFlightAddress(flags.socket)) {
    if (flags.connect) return drain(await subscribeFlight(flags.socket, { ...flightClientOptions(flags), readTimeoutMs: flags.timeoutMs }), flags, output);
    // A Flight server: the first DoPut is the stream, read batch by batch.
    const listener = await FlightStreamListener.listen(flags.socket, { ...flightServerOptions(flags), readTimeoutMs: flags.timeoutMs });
    onListening(listener.address);
    try {
      return await drain(await listener.accept({ timeoutMs: flags.timeoutMs }), flags, output);
    } finally {
      await listener.close();
    }
  }
  const channel = await openChannel(flags, !flags.connect, () => onListening(flags.socket));
  try {
    const reader = await StreamReader.accept(channel, { timeoutMs: flags.timeoutMs, readTimeoutMs: flags.timeoutMs });
    await drain(reader, flags, output);
  } finally {
    channel.close();
  }
}

export async function pub(files: string[], flags: StreamSendFlags, onListening: (address: string) => void): Promise<void> {
  const { schema, batches } = batchesOf(files);
  const publication = isFlightAddress(flags.socket)
    ? FlightPublication.create(flags.socket, schema, { ...flightServerOptions(flags), metadata: flags.meta, writeTimeoutMs: flags.timeoutMs })
    : publish(flags.socket, schema, { capacityBytes: flags.ringBytes, metadata: flags.meta, writeTimeoutMs: flags.timeoutMs });
  if (publication instanceof FlightPublication) await publication.ready().catch(async (e) => {
    await publication.abort();
    throw e;
  });
  onListening(publication.address);
  try {
    await publication.waitForSubscribers(flags.subscribers ?? 1, { timeoutMs: flags.timeoutMs });
    for (const batch of batches) await publication.write(batch);
    await publication.close({ timeoutMs: flags.timeoutMs });
  } finally {
    await publication.abort();
  }
}

export async function sub(flags: StreamRecvFlags): Promise<void> {
  const output = Output.prepare(flags.out, 1);
  const deadline = flags.timeoutMs === undefined ? Infinity : performance.now() + flags.timeoutMs;
  const flight = isFlightAddress(flags.socket);
  let reader: StreamReader | FlightStreamReader;
  for (let waiting = false; ; waiting = true) {
    try {
      reader = flight
        ? await subscribeFlight(flags.socket, { ...flightClientOptions({ ...flags, timeoutMs: Math.min(flags.timeoutMs ?? 1000, 1000) }), readTimeoutMs: flags.timeoutMs })
        : await subscribe(flags.socket, { timeoutMs: flags.timeoutMs, readTimeoutMs: flags.timeoutMs });
      break;
    } catch (e) {
      // The publication may not be up yet: ENOENT (no socket file) or ECONNREFUSED; over Flight, no server yet
      // (ERR_PEER_CLOSED, ERR_TIMEOUT from the connect) or no publication by that name yet (NOT_FOUND).
      const notYet = e instanceof ArrowShmError && (flight ? ['ERR_PEER_CLOSED', 'ERR_TIMEOUT'].includes(e.code) && !e.remote : e.errno === osConstants.errno.ENOENT || e.errno === osConstants.errno.ECONNREFUSED);
      if (!notYet) throw e;
      if (!waiting) process.stderr.write(`arrow-shm: no publisher at ${flags.socket} yet: waiting${flags.timeoutMs === undefined ? ' (--timeout-ms N to give up)' : ` up to ${flags.timeoutMs} ms`}\n`);
      if (performance.now() >= deadline) throw fail('ERR_TIMEOUT', `no publisher at ${flags.socket} within ${flags.timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
  await drain(reader, flags, output);
}

/** Reads a whole stream; `--out` gets prologue + every record's messages + end-of-stream marker. */
async function drain(reader: StreamReader | FlightStreamReader, flags: StreamRecvFlags, output: Output | null): Promise<void> {
  const file = output?.open(0) ?? null;
  let rows = 0;
  let batches = 0;
  try {
    file?.write(reader.prologue);
    for (;;) {
      const next = await reader.read();
      if (!next) break;
      try {
        file?.write(next.bytes);
        rows += next.batch.numRows;
        batches++;
      } finally {
        next.release();
      }
    }
    file?.write(END_OF_STREAM);
    file?.commit();
  } finally {
    file?.abort();
    reader.close();
  }
  if (flags.print) {
    const lines = [`== stream: ${batches} batches ==`];
    const meta = Object.entries(reader.metadata);
    if (meta.length) lines.push(`metadata: ${meta.map(([k, v]) => `${k}=${v}`).join(', ')}`);
    lines.push(`schema: ${reader.schema.fields.map((f) => `${f.name}: ${f.type}`).join(', ')}`);
    lines.push(`rows: ${rows}, columns: ${reader.schema.fields.length}, batches: ${batches}`);
    process.stdout.write(lines.join('\n') + '\n');
  }
}
