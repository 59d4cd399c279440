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
import { readIpcInput, UsageError } from './files.js';
import { isFlightAddress } from '../transport/flight-codec.js';
import { Output } from './output.js';
import { StreamWriter } from '../stream/producer.js';

const SHM_ONLY = 'streams are shared memory only: --socket is a path or @name, not grpc://';
const END_OF_STREAM = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);

export interface StreamSendFlags {
  socket: string;
  listen?: boolean;
  meta?: KeyValues;
  ringBytes?: number;
  timeoutMs?: number;
  subscribers?: number;
}

export interface StreamRecvFlags {
  socket: string;
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

export async function sendStream(files: string[], flags: StreamSendFlags, onListening: () => void): Promise<void> {
  const { schema, batches } = batchesOf(files);
  const channel = await openChannel(flags, flags.listen ?? false, onListening);
  try {
    const stream = await StreamWriter.open(channel, schema, { capacityBytes: flags.ringBytes, metadata: flags.meta, writeTimeoutMs: flags.timeoutMs });
    try {
      for (const batch of batches) await stream.write(batch);
      await stream.close({ timeoutMs: flags.timeoutMs });
    } catch (e) {
      stream.abort();
      throw e;
    }
  } finally {
    channel.close();
  }
}

export async function recvStream(flags: StreamRecvFlags, output: Output | null, onListening: () => void): Promise<void> {
  const channel = await openChannel(flags, !flags.connect, onListening);
  try {
    const reader = await StreamReader.accept(channel, { timeoutMs: flags.timeoutMs, readTimeoutMs: flags.timeoutMs });
    await drain(reader, flags, output);
  } finally {
    channel.close();
  }
}

export async function pub(files: string[], flags: StreamSendFlags, onListening: () => void): Promise<void> {
  if (isFlightAddress(flags.socket)) throw new UsageError(SHM_ONLY);
  const { schema, batches } = batchesOf(files);
  const publication = publish(flags.socket, schema, { capacityBytes: flags.ringBytes, metadata: flags.meta, writeTimeoutMs: flags.timeoutMs });
  onListening();
  try {
    await publication.waitForSubscribers(flags.subscribers ?? 1, { timeoutMs: flags.timeoutMs });
    for (const batch of batches) await publication.write(batch);
    await publication.close({ timeoutMs: flags.timeoutMs });
  } finally {
    publication.abort();
  }
}

export async function sub(flags: StreamRecvFlags): Promise<void> {
  if (isFlightAddress(flags.socket)) throw new UsageError(SHM_ONLY);
  const output = Output.prepare(flags.out, 1);
  const deadline = flags.timeoutMs === undefined ? Infinity : performance.now() + flags.timeoutMs;
  let reader: StreamReader;
  for (let waiting = false; ; waiting = true) {
    try {
      reader = await subscribe(flags.socket, { timeoutMs: flags.timeoutMs, readTimeoutMs: flags.timeoutMs });
      break;
    } catch (e) {
      // The publication may not be up yet: ENOENT (no socket file) or ECONNREFUSED.
      const notYet = e instanceof ArrowShmError && (e.errno === osConstants.errno.ENOENT || e.errno === osConstants.errno.ECONNREFUSED);
      if (!notYet) throw e;
      if (performance.now() >= deadline) throw fail('ERR_TIMEOUT', `no publisher at ${flags.socket} within ${flags.timeoutMs} ms`);
      if (!waiting) process.stderr.write(`arrow-shm: no publisher at ${flags.socket} yet: waiting${flags.timeoutMs === undefined ? ' (--timeout-ms N to give up)' : ` up to ${flags.timeoutMs} ms`}\n`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
  await drain(reader, flags, output);
}

/** Reads a whole stream; `--out` gets prologue + every record's messages + end-of-stream marker. */
async function drain(reader: StreamReader, flags: StreamRecvFlags, output: Output | null): Promise<void> {
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
