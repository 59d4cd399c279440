// Streams over Arrow Flight (docs/PROTOCOL.md §13.5): the same stream surface as the shared ring
// (write batches, read batches, publish, subscribe) for a peer on another host. A stream is one
// gRPC call carrying one FlightData per IPC message: the Schema first, then per batch the
// dictionaries it uses and the RecordBatch; the end of the stream is the end of the call.
// Writing into a client's DoPut or a publication's DoGets waits on HTTP/2 flow control; reading
// pauses the call once a few batches wait unread, so neither side buffers a whole stream.
import { RecordBatch, Schema, Table } from 'apache-arrow';
import { compareSchemas } from 'apache-arrow/visitor/typecomparator';
import { ArrowShmError, fail } from '../errors.js';
import { AsyncQueue } from '../queue.js';
import { withTimeout } from '../timeout.js';
import { FlatView, verifyMessageFlatbuffer } from '../ipc/flatbuffer.js';
import { walkIpcMessages } from '../ipc/messages.js';
import type { KeyValues } from '../transport/frame.js';
import { FlightClient, type FlightClientOptions } from '../transport/flight-client.js';
import { FlightServer, type FlightServerOptions } from '../transport/flight-server.js';
import { decodeMetadata, encodeMetadata } from '../transport/flight-message.js';
import { flightLimits, type FlightLimits } from '../transport/flight-limits.js';
import { END_OF_STREAM, ipcBytes, ipcFromFlightData, toFlightData, type FlightData, type OutgoingFlightData } from '../transport/flight-codec.js';
import type { FlightDataSink, FlightDataSource } from '../transport/flight-stream.js';
import { StreamBatch } from './consumer.js';
import { BatchDecoder } from './decoder.js';

/** The name a stream travels under when none is given: descriptor path (DoPut) and ticket (DoGet). */
export const DEFAULT_STREAM_NAME = 'stream';

const SCHEMA = 1;
const DICTIONARY_BATCH = 2;
const RECORD_BATCH = 3;

/** Options of a stream reader over Flight. */
export interface FlightStreamReaderOptions {
  /** `read()` fails with ERR_TIMEOUT after this many ms without a batch. Default: wait forever. */
  readTimeoutMs?: number;
  /** Batches decoded but not yet read before the call is paused (HTTP/2 flow control then holds the writer). Default 8. */
  maxQueuedBatches?: number;
  /** Bounds on each FlightData and each batch (its dictionaries and RecordBatch: maxCallBytes, maxCallMessages), §13.3. */
  limits?: Partial<FlightLimits>;
}

const DEFAULT_QUEUED_BATCHES = 8;

function batchesOf(data: Table | RecordBatch | RecordBatch[]): readonly RecordBatch[] {
  return data instanceof RecordBatch ? [data] : Array.isArray(data) ? data : data.batches;
}

/** A stream's FlightData: the Schema message once, then each batch's messages (§13.5). */
class FlightBatchEncoder {
  /** The encapsulated Schema message (FlightInfo.schema). */
  readonly schemaMessage: Uint8Array;

  constructor(
    readonly schema: Schema,
    readonly metadata: KeyValues,
  ) {
    const bytes = ipcBytes(new Table(schema));
    let end = 0;
    walkIpcMessages(bytes, 'stream', (m) => (end ||= m.bodyStart + m.bodyLength));
    this.schemaMessage = bytes.subarray(0, end);
  }

  /** The first FlightData: the Schema, with the user metadata as its app_metadata. */
  schemaData(path: string[] | null): OutgoingFlightData {
    const [first] = toFlightData(new Table(this.schema), path ? { type: 'PATH', cmd: Buffer.alloc(0), path } : null);
    return { ...first!, app_metadata: encodeMetadata(this.metadata) };
  }

  /** A batch's FlightData: the dictionaries it uses (whole: a replacement, as Flight sends them), then its RecordBatch. */
  batch(batch: RecordBatch): OutgoingFlightData[] {
    if (!compareSchemas(this.schema, batch.schema)) throw fail('ERR_INVALID_ARGUMENT', 'a batch of another schema than the stream\'s');
    return toFlightData(new Table([batch]), null).slice(1); // without its Schema
  }
}

/**
 * The reading end of a stream over Flight: a client's DoPut on a server (`FlightStreamListener`)
 * or a publication's DoGet (`subscribe('grpc://…')`). The same surface as `StreamReader`.
 */
export class FlightStreamReader implements AsyncIterable<RecordBatch> {
  metadata: KeyValues = {};
  schema!: Schema;
  /** The descriptor path the writer gave (DoPut), or the ticket (DoGet). */
  name: string;
  #prologue: Uint8Array = new Uint8Array(0);
  #source: FlightDataSource;
  #limits: FlightLimits;
  #options: FlightStreamReaderOptions;
  #decoder: BatchDecoder | null = null;
  /** The current batch's dictionaries, until its RecordBatch. */
  #pending: FlightData[] = [];
  #pendingBytes = 0;
  #queue: StreamBatch[] = [];
  #paused = false;
  #ended = false;
  #error: ArrowShmError | null = null;
  #closed = false;
  #batches = 0;
  #sequence = 0;
  #wake: (() => void) | null = null;
  #opened: { resolve: () => void; reject: (e: ArrowShmError) => void } | null = null;
  #onDone: () => void;

  private constructor(source: FlightDataSource, name: string, options: FlightStreamReaderOptions, onDone: () => void) {
    this.#source = source;
    this.name = name;
    this.#options = options;
    this.#limits = flightLimits(options.limits);
    this.#onDone = onDone;
  }

  /** Reads `source` as a stream; resolves once its Schema arrived (ERR_TIMEOUT after `timeoutMs`). `onDone` runs once the call is over. */
  static async open(source: FlightDataSource, name: string, options: FlightStreamReaderOptions & { timeoutMs?: number } = {}, onDone: () => void = () => {}): Promise<FlightStreamReader> {
    const reader = new FlightStreamReader(source, name, options, onDone);
    const opened = new Promise<void>((resolve, reject) => (reader.#opened = { resolve, reject }));
    source.start({ data: (m) => reader.#take(m), end: () => reader.#finish(null), error: (e) => reader.#finish(e) });
    try {
      await withTimeout(opened, options.timeoutMs, `no stream schema from ${source.peer}`);
    } catch (e) {
      reader.close();
      throw e;
    }
    return reader;
  }

  /** The start of an IPC stream this reader's batches continue: the Schema message. */
  get prologue(): Uint8Array {
    return this.#prologue;
  }

  get batchesRead(): number {
    return this.#batches;
  }

  get ended(): boolean {
    return this.#ended && this.#queue.length === 0;
  }

  /** One FlightData: bounded and verified before anything is copied, decoded once its batch is complete. */
  #take(m: FlightData): void {
    if (this.#error || this.#closed) return;
    try {
      const header = m.data_header;
      if (header.length === 0) return; // metadata only (pyarrow's write_metadata): nothing to decode
      const size = header.length + m.data_body.length + m.app_metadata.length;
      if (size > this.#limits.maxFlightDataBytes) throw fail('ERR_TOO_LARGE', `a FlightData of ${size} bytes passes the ${this.#limits.maxFlightDataBytes}-byte limit (maxFlightDataBytes)`);
      verifyMessageFlatbuffer(header, this.#limits.ipc);
      const view = new FlatView(header);
      const type = view.u8(view.root(), 1);
      if (!this.#decoder) return this.#open(m, type);
      if (type !== DICTIONARY_BATCH && type !== RECORD_BATCH) throw fail('ERR_IPC_INVALID', `a stream message of type ${type} after the Schema (dictionaries and record batches only)`);
      if (this.#pending.length + 1 > this.#limits.maxCallMessages) throw fail('ERR_RESOURCE_LIMIT', `a batch of more than ${this.#limits.maxCallMessages} FlightData messages (maxCallMessages)`);
      if (this.#pendingBytes + size > this.#limits.maxCallBytes) throw fail('ERR_TOO_LARGE', `a batch of more than ${this.#limits.maxCallBytes} bytes (maxCallBytes)`);
      this.#pending.push(m);
      this.#pendingBytes += size;
      if (type === DICTIONARY_BATCH) return;
      // The one copy: gRPC's buffers re-framed, aligned, as the batch's IPC messages.
      const framed = ipcFromFlightData(this.#pending);
      const bytes = framed.subarray(0, framed.length - END_OF_STREAM.length);
      this.#pending = [];
      this.#pendingBytes = 0;
      const batch = this.#decoder.decode(bytes);
      this.#queue.push(new StreamBatch(batch, this.#sequence++, bytes, () => {}));
      if (this.#queue.length >= (this.#options.maxQueuedBatches ?? DEFAULT_QUEUED_BATCHES) && !this.#paused) {
        this.#paused = true;
        this.#source.pause();
      }
      this.#notify();
    } catch (e) {
      const error = e instanceof ArrowShmError ? e : fail('ERR_IPC_INVALID', String(e), e);
      this.#source.fail(error); // the writer hears why (its status)
      this.#finish(error);
    }
  }

  /** The first message: the Schema, its app_metadata the user metadata. */
  #open(m: FlightData, type: number): void {
    if (type !== SCHEMA) throw fail('ERR_IPC_INVALID', `a stream that starts with a message of type ${type} (a Schema first)`);
    const framed = ipcFromFlightData([m]);
    this.#prologue = framed.subarray(0, framed.length - END_OF_STREAM.length);
    this.#decoder = new BatchDecoder(this.#prologue, this.#limits.ipc);
    this.schema = this.#decoder.schema;
    this.metadata = m.app_metadata.length > 0 ? decodeMetadata(m.app_metadata) : {};
    const path = m.flight_descriptor?.path;
    if (path && path.length > 0) this.name = path.join('/');
    this.#opened?.resolve();
    this.#opened = null;
  }

  #finish(error: ArrowShmError | null): void {
    if (this.#ended) return;
    this.#ended = true;
    if (!error && !this.#decoder) error = fail('ERR_IPC_TRUNCATED', `the stream from ${this.#source.peer} ended before its Schema`);
    if (!error && this.#pending.length > 0) error = fail('ERR_IPC_TRUNCATED', `the stream from ${this.#source.peer} ended inside a batch (dictionaries without their RecordBatch)`);
    this.#error = error;
    this.#pending = [];
    if (error) this.#opened?.reject(error);
    this.#opened = null;
    this.#notify();
    this.#onDone();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** The next batch if one arrived: `null` at the end of the stream, `undefined` when none waits. */
  readSync(): StreamBatch | null | undefined {
    if (this.#closed) throw fail('ERR_CLOSED', 'the stream reader is closed');
    const next = this.#queue.shift();
    if (next) {
      this.#batches++;
      if (this.#paused && this.#queue.length < (this.#options.maxQueuedBatches ?? DEFAULT_QUEUED_BATCHES) / 2) {
        this.#paused = false;
        this.#source.resume();
      }
      return next;
    }
    if (this.#error) throw this.#error;
    return this.#ended ? null : undefined;
  }

  /** The next batch, or null at the end of the stream (the call ended well). */
  async read(): Promise<StreamBatch | null> {
    const timeoutMs = this.#options.readTimeoutMs;
    const deadline = timeoutMs === undefined ? undefined : performance.now() + timeoutMs;
    for (;;) {
      const next = this.readSync();
      if (next !== undefined) return next;
      const arrived = new Promise<void>((resolve) => (this.#wake = resolve));
      if (deadline === undefined) await arrived;
      else await withTimeout(arrived, Math.max(0, deadline - performance.now()), `no batch within ${timeoutMs} ms (readTimeoutMs)`);
    }
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<RecordBatch, void, undefined> {
    for (;;) {
      const next = await this.read();
      if (!next) return;
      yield next.batch;
    }
  }

  /** Stops reading: a stream still running is cancelled (the writer sees its call end). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue = [];
    if (!this.#ended) {
      this.#source.fail(fail('ERR_CLOSED', 'the reader closed the stream'));
      this.#finish(fail('ERR_CLOSED', 'the stream reader is closed'));
    }
    this.#notify();
  }
}

/** Where a Flight stream writer connects: the client's options, the stream's name and metadata. */
export interface FlightStreamWriterOptions extends FlightClientOptions {
  /** The descriptor path (joined by "/"). Default "stream". */
  name?: string;
  /** User metadata: the Schema FlightData's app_metadata. */
  metadata?: KeyValues;
}

/** The writing end of a stream over Flight: an incremental DoPut, one FlightData per IPC message. */
export class FlightStreamWriter {
  #client: FlightClient;
  #sink: FlightDataSink;
  #encoder: FlightBatchEncoder;
  #tail: Promise<void> = Promise.resolve();

  private constructor(client: FlightClient, sink: FlightDataSink, encoder: FlightBatchEncoder) {
    this.#client = client;
    this.#sink = sink;
    this.#encoder = encoder;
  }

  /** Connects to `address` (grpc:// or grpc+tls://) and starts the DoPut with the Schema. */
  static async open(address: string, schema: Schema, options: FlightStreamWriterOptions = {}): Promise<FlightStreamWriter> {
    const client = await FlightClient.connect(address, { ...options, upgrade: false });
    try {
      const encoder = new FlightBatchEncoder(schema, options.metadata ?? {});
      const sink = client.putStream();
      await sink.write(encoder.schemaData((options.name ?? DEFAULT_STREAM_NAME).split('/')));
      return new FlightStreamWriter(client, sink, encoder);
    } catch (e) {
      client.close();
      throw e;
    }
  }

  get schema(): Schema {
    return this.#encoder.schema;
  }

  /** Sends the batches of `data`; resolves once gRPC has room for more (the reader's pace, through flow control). */
  write(data: Table | RecordBatch | RecordBatch[]): Promise<void> {
    const next = this.#tail.then(async () => {
      for (const batch of batchesOf(data)) for (const m of this.#encoder.batch(batch)) await this.#sink.write(m);
    });
    this.#tail = next.catch(() => {});
    return next;
  }

  /** Ends the stream (the end of the call) and resolves once the server took it all (its OK status). */
  async close(options: { timeoutMs?: number } = {}): Promise<void> {
    try {
      await this.#tail;
      await withTimeout(this.#sink.end(), options.timeoutMs, 'the server did not confirm the end of the stream');
    } finally {
      this.#client.close();
    }
  }

  /** Cancels the call: the reader's stream fails. */
  abort(): void {
    this.#sink.fail(fail('ERR_CLOSED', 'the writer aborted the stream'));
    this.#client.close();
  }
}

/** A server taking streams: every client's DoPut is one stream, read batch by batch. */
export class FlightStreamListener {
  #server: FlightServer;
  #incoming: AsyncQueue<FlightDataSource>;
  #options: FlightStreamReaderOptions;
  #schemaTimeoutMs: number;

  private constructor(server: FlightServer, incoming: AsyncQueue<FlightDataSource>, options: FlightStreamReaderOptions, schemaTimeoutMs: number) {
    this.#server = server;
    this.#incoming = incoming;
    this.#options = options;
    this.#schemaTimeoutMs = schemaTimeoutMs;
  }

  /** Listens on `address` (grpc://host:port, port 0: any free one; see `address`). */
  static async listen(address: string, options: FlightServerOptions & FlightStreamReaderOptions = {}): Promise<FlightStreamListener> {
    const incoming = new AsyncQueue<FlightDataSource>();
    const limits = flightLimits(options.limits, options.maxMessageBytes);
    const onPutStream = (source: FlightDataSource) => {
      // Streams no accept() takes yet wait, a few: the others are refused at once.
      if (!incoming.awaited && incoming.size >= limits.maxInboxMessages) return source.fail(fail('ERR_RESOURCE_LIMIT', `${incoming.size} streams wait for accept() (maxInboxMessages)`));
      incoming.push(source);
    };
    const server = await FlightServer.listen(address, { ...options, onPutStream });
    return new FlightStreamListener(server, incoming, options, limits.callIdleTimeoutMs);
  }

  get address(): string {
    return this.#server.address;
  }

  /**
   * The next stream a client writes; resolves once its Schema arrived (within `timeoutMs`, else
   * callIdleTimeoutMs: a client that opens a DoPut and sends nothing does not hold accept()).
   * A stream that failed before its Schema (its client left) rejects with that error.
   */
  async accept(options: { timeoutMs?: number } = {}): Promise<FlightStreamReader> {
    const source = await this.#incoming.take(options.timeoutMs, 'no stream arrived');
    if (!source) throw fail('ERR_CLOSED', 'the stream listener is closed');
    return FlightStreamReader.open(source, DEFAULT_STREAM_NAME, { ...this.#options, timeoutMs: options.timeoutMs ?? this.#schemaTimeoutMs });
  }

  async close(): Promise<void> {
    this.#incoming.close();
    for (const source of this.#incoming.drain()) source.fail(fail('ERR_CLOSED', 'the server is closing'));
    await this.#server.close();
  }
}

/** A publication over Flight: its options, besides the server's (token, TLS, limits). */
export interface FlightPublicationOptions extends Omit<FlightServerOptions, 'onPutStream' | 'router' | 'onExchange'> {
  /** The ticket subscribers DoGet (and the name ListFlights shows). Default "stream". */
  name?: string;
  metadata?: KeyValues;
  /**
   * A subscriber that makes no room for this many ms (its window stays full) is dropped with
   * ERR_TIMEOUT and the publication goes on. Default: none (writes wait for the slowest subscriber).
   */
  writeTimeoutMs?: number;
  /** Called when a subscriber was dropped or failed (not when it left after the end). */
  onSubscriberError?: (error: ArrowShmError) => void;
}

/** One DoGet of a publication: its batches written in order, one batch at a time. */
class Subscriber {
  gone = false;
  #tail: Promise<void> = Promise.resolve();
  constructor(readonly sink: FlightDataSink) {}

  /** Writes `messages`; a subscriber that makes no room for `timeoutMs` is dropped. Never rejects. */
  send(messages: OutgoingFlightData[], timeoutMs: number | undefined): Promise<void> {
    const next = this.#tail.then(async () => {
      if (this.gone) return;
      let timer: NodeJS.Timeout | undefined;
      const written = (async () => {
        for (const m of messages) await this.sink.write(m);
      })();
      const limit = timeoutMs === undefined ? null : new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          this.sink.fail(fail('ERR_TIMEOUT', `the subscriber ${this.sink.peer} made no room for ${timeoutMs} ms (writeTimeoutMs): dropped`));
          resolve();
        }, timeoutMs);
      });
      try {
        await (limit ? Promise.race([written, limit]) : written);
      } catch {
        // gone: onGone removed it
      } finally {
        clearTimeout(timer);
        written.catch(() => {});
      }
    });
    this.#tail = next;
    return next;
  }

  /** Ends its call once what was written before is out. */
  async end(): Promise<void> {
    await this.#tail;
    if (!this.gone) await this.sink.end().catch(() => {});
  }
}

/** Publishes a stream over Flight: each DoGet with the publication's name is a subscriber from then on. */
export class FlightPublication {
  /** The address (its final port once `ready()` resolved). */
  address: string;
  readonly name: string;
  #encoder: FlightBatchEncoder;
  #options: FlightPublicationOptions;
  #server: FlightServer | null = null;
  #ready: Promise<void>;
  #subscribers = new Set<Subscriber>();
  #joined: (() => void)[] = [];
  #closed = false;

  private constructor(address: string, schema: Schema, options: FlightPublicationOptions) {
    this.address = address;
    this.name = options.name ?? DEFAULT_STREAM_NAME;
    this.#options = options;
    this.#encoder = new FlightBatchEncoder(schema, options.metadata ?? {});
    this.#ready = FlightServer.listen(address, options).then((server) => {
      if (this.#closed) return void server.close();
      this.#server = server;
      this.address = server.address;
      server.offerStream(this.name, { schema: this.#encoder.schemaMessage, metadata: this.#encoder.metadata, subscribe: (sink) => this.#subscribe(sink) });
    });
    this.#ready.catch(() => {}); // reported by ready(), write(), waitForSubscribers()
  }

  /** Starts listening at `address` in the background: `await ready()` for its port and any failure to bind. */
  static create(address: string, schema: Schema, options: FlightPublicationOptions = {}): FlightPublication {
    return new FlightPublication(address, schema, options);
  }

  ready(): Promise<void> {
    return this.#ready;
  }

  get schema(): Schema {
    return this.#encoder.schema;
  }

  get subscribers(): number {
    return this.#subscribers.size;
  }

  #subscribe(sink: FlightDataSink): void {
    if (this.#closed) return sink.fail(fail('ERR_CLOSED', 'the publication is closed'));
    const subscriber = new Subscriber(sink);
    this.#subscribers.add(subscriber);
    sink.onGone((e) => {
      subscriber.gone = true;
      this.#subscribers.delete(subscriber);
      if (!this.#closed) this.#options.onSubscriberError?.(e);
    });
    void subscriber.send([this.#encoder.schemaData(null)], this.#options.writeTimeoutMs);
    for (const check of this.#joined.splice(0)) check();
  }

  /** Resolves once at least `count` subscribers are attached. */
  async waitForSubscribers(count: number, options: { timeoutMs?: number } = {}): Promise<void> {
    await withTimeout(this.#ready, options.timeoutMs, `the publication could not listen at ${this.address}`);
    const reached = new Promise<void>((resolve, reject) => {
      const check = () => {
        if (this.#closed) reject(fail('ERR_CLOSED', 'the publication is closed'));
        else if (this.#subscribers.size >= count) resolve();
        else this.#joined.push(check);
      };
      check();
    });
    await withTimeout(reached, options.timeoutMs, `fewer than ${count} subscribers`);
  }

  /**
   * Publishes the batches of `data` to every subscriber attached now; resolves once each has room
   * for more (a subscriber silent past `writeTimeoutMs` is dropped instead).
   */
  async write(data: Table | RecordBatch | RecordBatch[]): Promise<void> {
    await this.#ready;
    if (this.#closed) throw fail('ERR_CLOSED', 'the publication is closed');
    for (const batch of batchesOf(data)) {
      const messages = this.#encoder.batch(batch); // laid out once for every subscriber
      await Promise.all([...this.#subscribers].map((s) => s.send(messages, this.#options.writeTimeoutMs)));
    }
  }

  /** Ends the stream for every subscriber (the end of their calls) once they have what was published, then stops listening. */
  async close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.#closed) return;
    this.#server?.withdrawStream(this.name);
    try {
      await this.#ready.catch(() => {});
      await withTimeout(Promise.all([...this.#subscribers].map((s) => s.end())), options.timeoutMs, 'subscribers did not take the end of the stream');
    } finally {
      await this.abort();
    }
  }

  /** Stops at once: subscribers' calls fail (ERR_CLOSED). */
  async abort(): Promise<void> {
    if (this.#closed && !this.#server) return;
    this.#closed = true;
    for (const check of this.#joined.splice(0)) check();
    for (const s of this.#subscribers) s.sink.fail(fail('ERR_CLOSED', 'the publication was closed'));
    this.#subscribers.clear();
    const server = this.#server;
    this.#server = null;
    await server?.close();
  }
}

/** Subscribes to the publication `options.name` (default "stream") of a Flight server: DoGet, read batch by batch. */
export async function subscribeFlight(address: string, options: FlightClientOptions & FlightStreamReaderOptions & { name?: string } = {}): Promise<FlightStreamReader> {
  const client = await FlightClient.connect(address, { ...options, upgrade: false });
  try {
    const name = options.name ?? DEFAULT_STREAM_NAME;
    return await FlightStreamReader.open(client.getStream(name), name, options, () => client.close());
  } catch (e) {
    client.close();
    throw e;
  }
}
