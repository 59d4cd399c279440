// The network transport: Arrow Flight over gRPC (docs/PROTOCOL.md §13), for peers on other hosts.
// A table travels as one Flight stream: each IPC message becomes one FlightData (its flatbuffer
// header in data_header, its body in data_body). Interoperable with pyarrow.flight.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { RecordBatch, Table } from 'apache-arrow';
import { ArrowShmError, fail, isErrorCode, type ErrorCode } from '../errors.js';
import { decodeBatches, decodeTable } from '../ipc/reader.js';
import { walkIpcMessages, type IpcSummary } from '../ipc/validate.js';
import { layoutIpcStream, writeIpcLayout, type TableLike } from '../ipc/writer.js';
import type { KeyValues } from './frame.js';
import { PreparedTable, connect as connectShm, listen as listenShm, type Channel, type Listener, type Message, type Sendable } from './channel.js';

const PROTO = fileURLToPath(new URL('../../../proto/flight.proto', import.meta.url));
const CONTINUATION = 0xffffffff;
const END_OF_STREAM = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
/** gRPC's default 4 MiB message limit would refuse most tables: no limit besides ours. */
const CHANNEL_OPTIONS = { 'grpc.max_receive_message_length': -1, 'grpc.max_send_message_length': -1 };
const DEFAULT_MAX_MESSAGE_BYTES = 2 ** 32;

export interface FlightDescriptor {
  type: 'UNKNOWN' | 'PATH' | 'CMD';
  cmd: Buffer;
  path: string[];
}

export interface FlightData {
  flight_descriptor?: FlightDescriptor | null;
  data_header: Buffer;
  app_metadata: Buffer;
  data_body: Buffer;
}

type ServiceClient = grpc.Client & Record<string, (...args: unknown[]) => grpc.ClientDuplexStream<unknown, unknown> & grpc.ClientReadableStream<unknown>>;
let service: { client: new (address: string, credentials: grpc.ChannelCredentials, options: object) => ServiceClient; definition: grpc.ServiceDefinition } | null = null;

function flightService() {
  if (!service) {
    const definition = protoLoader.loadSync(PROTO, { keepCase: true, longs: String, enums: String, bytes: Buffer, defaults: true });
    const pkg = grpc.loadPackageDefinition(definition) as unknown as { arrow: { flight: { protocol: { FlightService: grpc.ServiceClientConstructor } } } };
    const ctor = pkg.arrow.flight.protocol.FlightService;
    service = { client: ctor as unknown as NonNullable<typeof service>['client'], definition: ctor.service };
  }
  return service;
}

/** `grpc://host:port` (plain) or `grpc+tls://host:port`; anything else is a local socket address. */
export function isFlightAddress(address: string): boolean {
  return /^grpc(\+tls)?:\/\//.test(address);
}

function parseAddress(address: string): { target: string; tls: boolean } {
  const m = /^grpc(\+tls)?:\/\/([^/]+)\/?$/.exec(address);
  if (!m) throw fail('ERR_INVALID_ARGUMENT', `not a Flight address (grpc://host:port): ${address}`);
  return { target: m[2]!, tls: m[1] !== undefined };
}

// ------------------------------------------------------------------------- same-host upgrade

/** This boot of this machine: two processes that share it can share memory (if they reach the socket). */
function hostIdentity(): string {
  const read = (f: string) => {
    try {
      return readFileSync(f, 'utf8').trim();
    } catch {
      return '';
    }
  };
  return `${read('/etc/machine-id')}/${read('/proc/sys/kernel/random/boot_id')}`;
}

/** The metadata key that carries the Flight descriptor path of a table sent over the upgraded channel. */
const PATH_KEY = 'flight.path';
const UPGRADE_VERSION = 1;

// ---------------------------------------------------------------------------------- FlightData

/**
 * The IPC messages of `data` (a table, IPC stream bytes, or a PreparedTable read through a
 * read-only mapping) as FlightData, `appMetadata` on the first batch. The FlightData are views:
 * gRPC copies them into its frames as it writes.
 */
export function toFlightData(data: Sendable, descriptor: FlightDescriptor | null, appMetadata?: Uint8Array): FlightData[] {
  const bytes = ipcBytes(data);
  const out: FlightData[] = [];
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let metadataPending = appMetadata !== undefined;
  walkIpcMessages(bytes, 'stream', (m) => {
    const carriesMetadata = metadataPending && m.message.headerType === 3; // the first RecordBatch
    if (carriesMetadata) metadataPending = false;
    out.push({
      flight_descriptor: out.length === 0 ? descriptor : null,
      data_header: buffer.subarray(m.metadataStart, m.metadataStart + m.metadataLength),
      app_metadata: carriesMetadata ? Buffer.from(appMetadata!) : Buffer.alloc(0),
      data_body: buffer.subarray(m.bodyStart, m.bodyStart + m.bodyLength),
    });
  });
  return out;
}

/** The IPC stream of `data`: bytes as they are, a prepared segment's bytes, a table laid out once. */
function ipcBytes(data: Sendable): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (data instanceof PreparedTable) {
    // A copy: the mapping is released at once instead of living as long as gRPC holds the views.
    const mapping = data.segment.takeReadOnlyMapping();
    try {
      return mapping.bytes(data.ipcOffset, data.ipcLength).slice();
    } finally {
      mapping.release();
    }
  }
  const layout = layoutIpcStream(data);
  const bytes = new Uint8Array(layout.byteLength);
  writeIpcLayout(layout, bytes);
  return bytes;
}

/** @internal Writes every message, waiting for room when gRPC's flow control says so; stops once `stopped()`. */
export async function writeAll(call: { write(m: FlightData): boolean; once(event: 'drain', listener: () => void): unknown }, messages: FlightData[], stopped = () => false): Promise<void> {
  for (const m of messages) {
    if (stopped()) return;
    if (!call.write(m)) await new Promise<void>((r) => call.once('drain', r));
  }
}

const pad8 = (n: number) => (8 - (n % 8)) % 8;

/**
 * Re-frames received FlightData as one IPC stream (continuation, length, header, body, each padded
 * to 8 bytes, then the end-of-stream marker). This is the one copy a Flight receive makes: gRPC
 * hands each message over in its own buffer, at whatever alignment protobuf left the body.
 */
export function ipcFromFlightData(messages: FlightData[], maxBytes = DEFAULT_MAX_MESSAGE_BYTES): Uint8Array {
  let total = END_OF_STREAM.length;
  for (const m of messages) {
    if (m.data_header.length === 0) continue; // metadata-only message
    total += 8 + m.data_header.length + pad8(m.data_header.length) + m.data_body.length + pad8(m.data_body.length);
  }
  if (total > maxBytes) throw fail('ERR_TOO_LARGE', `Flight stream of ${total} bytes exceeds the ${maxBytes}-byte limit`);
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const m of messages) {
    if (m.data_header.length === 0) continue;
    const headerLength = m.data_header.length + pad8(m.data_header.length);
    view.setUint32(at, CONTINUATION, true);
    view.setInt32(at + 4, headerLength, true);
    out.set(m.data_header, at + 8);
    at += 8 + headerLength;
    out.set(m.data_body, at);
    at += m.data_body.length + pad8(m.data_body.length);
  }
  out.set(END_OF_STREAM, at);
  return out;
}

// ----------------------------------------------------------------------------------- received

/** How the server side of a DoExchange answers it. */
export interface FlightResponder {
  respond(data: Sendable): Promise<void>;
  respondError(code: ErrorCode, message: string): Promise<void>;
}

/** A table received through Flight: the same surface as a shared-memory `Message`. */
export class FlightMessage {
  #table: Table | undefined;
  #closed = false;
  #responder: FlightResponder | null;

  constructor(
    /** The IPC stream, checked (§7): schema, dictionaries, batches, end-of-stream marker. */
    readonly bytes: Uint8Array,
    readonly metadata: KeyValues,
    readonly summary: IpcSummary,
    /** The descriptor's path (DoPut), the command (DoExchange) or the ticket (DoGet). */
    readonly name: string,
    responder: FlightResponder | null = null,
  ) {
    this.#responder = responder;
  }

  /** A DoExchange request a `FlightChannel` delivered: answer it with `respond` or `respondError`. */
  get isRequest(): boolean {
    return this.#responder !== null;
  }

  /** Answers the request with a table (the DoExchange's response stream). */
  respond(data: Sendable): Promise<void> {
    if (!this.#responder) throw fail('ERR_INVALID_ARGUMENT', 'this message is not a request');
    const responder = this.#responder;
    this.#responder = null; // one answer per request
    return responder.respond(data);
  }

  /** Answers the request with an error, which the requester receives as an ArrowShmError. */
  respondError(code: ErrorCode, message: string): Promise<void> {
    if (!this.#responder) throw fail('ERR_INVALID_ARGUMENT', 'this message is not a request');
    const responder = this.#responder;
    this.#responder = null;
    return responder.respondError(code, message);
  }

  get closed(): boolean {
    return this.#closed;
  }

  get table(): Table {
    if (this.#closed) throw fail('ERR_CLOSED', 'the message was closed');
    this.#table ??= decodeTable(this.bytes);
    return this.#table;
  }

  get batches(): RecordBatch[] {
    if (this.#closed) throw fail('ERR_CLOSED', 'the message was closed');
    return this.#table?.batches ?? decodeBatches(this.bytes);
  }

  close(): void {
    this.#closed = true;
    this.#table = undefined;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function received(messages: FlightData[], name: string, maxBytes?: number, responder: FlightResponder | null = null): FlightMessage {
  const bytes = ipcFromFlightData(messages, maxBytes);
  const summary = walkIpcMessages(bytes, 'stream');
  const batch = messages.find((m) => m.app_metadata.length > 0);
  return new FlightMessage(bytes, batch ? decodeMetadata(batch.app_metadata) : {}, summary, name, responder);
}

/** @internal User metadata travels as a JSON object of strings in the first batch's app_metadata. */
export function encodeMetadata(metadata: KeyValues | undefined): Uint8Array | undefined {
  return metadata && Object.keys(metadata).length > 0 ? Buffer.from(JSON.stringify(metadata)) : undefined;
}

function decodeMetadata(bytes: Uint8Array): KeyValues {
  try {
    const value: unknown = JSON.parse(Buffer.from(bytes).toString('utf8'));
    if (value && typeof value === 'object' && Object.values(value).every((v) => typeof v === 'string')) return value as KeyValues;
  } catch {
    // not ours: an application's own app_metadata
  }
  return { app_metadata: Buffer.from(bytes).toString('base64') };
}

// ------------------------------------------------------------------------------------- errors

const STATUS_CODES: Partial<Record<grpc.status, ErrorCode>> = {
  [grpc.status.UNAVAILABLE]: 'ERR_PEER_CLOSED',
  [grpc.status.DEADLINE_EXCEEDED]: 'ERR_TIMEOUT',
  [grpc.status.UNAUTHENTICATED]: 'ERR_PEER_CREDENTIALS',
  [grpc.status.PERMISSION_DENIED]: 'ERR_PEER_CREDENTIALS',
  [grpc.status.INVALID_ARGUMENT]: 'ERR_INVALID_ARGUMENT',
  [grpc.status.NOT_FOUND]: 'ERR_INVALID_ARGUMENT',
  [grpc.status.RESOURCE_EXHAUSTED]: 'ERR_TOO_LARGE',
  [grpc.status.CANCELLED]: 'ERR_CLOSED',
};

/** A gRPC failure as a typed error; an arrow-shm server's "ERR_X: message" details keep their code. */
function fromGrpc(e: unknown, what: string): ArrowShmError {
  if (e instanceof ArrowShmError) return e;
  const err = e as grpc.ServiceError;
  const details = err?.details ?? String(e);
  const ours = /^(ERR_[A-Z_]+): ([\s\S]*)$/.exec(details);
  if (ours && isErrorCode(ours[1]!)) return new ArrowShmError(ours[1], ours[2]!, undefined, undefined, { remote: true, cause: e });
  const code = STATUS_CODES[err?.code as grpc.status] ?? 'ERR_REMOTE';
  return new ArrowShmError(code, `${what}: ${grpc.status[err?.code] ?? 'error'}: ${details}`, undefined, undefined, { remote: true, cause: e });
}

/** @internal A typed error as a gRPC status whose details keep the code ("ERR_X: message"). */
export function toStatus(e: unknown): Partial<grpc.StatusObject> {
  const error = e instanceof ArrowShmError ? e : fail('ERR_REMOTE', String(e));
  const code =
    error.code === 'ERR_PEER_CREDENTIALS' ? grpc.status.UNAUTHENTICATED : error.code === 'ERR_TOO_LARGE' ? grpc.status.RESOURCE_EXHAUSTED : error.code === 'ERR_REMOTE' ? grpc.status.INTERNAL : grpc.status.INVALID_ARGUMENT;
  return { code, details: `${error.code}: ${error.message}` };
}

// ------------------------------------------------------------------------------------- client

export interface FlightClientOptions {
  /** Sent as `authorization: Bearer <token>` with every call. */
  token?: string;
  /** @internal Sent with every call (FlightChannel), so a FlightListener tells its channels apart whatever connections gRPC uses. */
  channelId?: string;
  /** PEM of the CA that signed the server's certificate (grpc+tls://). Default: the system's. */
  rootCertificate?: Uint8Array;
  /** Deadline of each call, in ms. */
  timeoutMs?: number;
  /** Largest table accepted from DoGet. Default 4 GiB. */
  maxMessageBytes?: number;
  /**
   * Offer the server, during the Flight Handshake, to move DoPut to shared memory. The upgrade
   * happens only if the server answers with an arrow-shm address, reports the same host (machine
   * id and boot), and that address accepts the connection; otherwise everything stays on gRPC.
   */
  upgrade?: boolean;
}

/** Per call: user metadata (app_metadata) and a deadline overriding the client's `timeoutMs`. */
export interface CallOptions {
  metadata?: KeyValues;
  timeoutMs?: number;
}

/** A Flight client: `doPut` sends a table, `doGet` fetches one, as with any Flight server. */
export class FlightClient {
  readonly address: string;
  #client: ServiceClient;
  #options: FlightClientOptions;
  #shm: Channel | null = null;

  private constructor(address: string, client: ServiceClient, options: FlightClientOptions) {
    this.address = address;
    this.#client = client;
    this.#options = options;
  }

  /** 'shm' once the connection was upgraded to shared memory (DoPut goes through it), else 'grpc'. */
  get transport(): 'grpc' | 'shm' {
    return this.#shm ? 'shm' : 'grpc';
  }

  /** The Flight Handshake carrying the upgrade offer; the server's shared-memory address, if it has one here. */
  async #negotiate(): Promise<void> {
    const offer = { 'arrow-shm': UPGRADE_VERSION, host: hostIdentity() };
    const answer = await this.#handshake(offer).catch(() => null); // refused: no upgrade, the calls will say why
    if (!answer?.address || answer.host !== offer.host) return;
    try {
      this.#shm = await connectShm(answer.address, { timeoutMs: 2000 });
    } catch {
      this.#shm = null; // same host, but not the same socket namespace (containers): stay on gRPC
    }
  }

  /**
   * @internal A Handshake without an upgrade offer: a FlightListener opens this connection's
   * channel. A wrong token fails here; any other server (one without Handshake) is not an error.
   */
  async hello(): Promise<void> {
    await this.#handshake({ 'arrow-shm': UPGRADE_VERSION }).catch((e: ArrowShmError) => {
      if (e.code === 'ERR_PEER_CREDENTIALS') throw e;
    });
  }

  async #handshake(offer: object): Promise<{ address?: string; host?: string } | null> {
    const { metadata, options } = this.#callOptions();
    const call = (this.#client.Handshake as unknown as (m: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientDuplexStream<unknown, { payload: Buffer }>).call(this.#client, metadata, options);
    return new Promise<{ address?: string; host?: string } | null>((resolve, reject) => {
      let reply: { address?: string; host?: string } | null = null;
      call.on('data', (r: { payload: Buffer }) => {
        try {
          reply ??= JSON.parse(r.payload.toString('utf8')) as { address?: string; host?: string };
        } catch {
          // not an arrow-shm server: no upgrade
        }
      });
      call.on('error', (e) => reject(fromGrpc(e, `Handshake with ${this.address}`)));
      call.on('end', () => resolve(reply));
      call.write({ protocol_version: 0, payload: Buffer.from(JSON.stringify(offer)) });
      call.end();
    });
  }

  /** Connects to `grpc://host:port` (or `grpc+tls://`); resolves once the connection is up. */
  static async connect(address: string, options: FlightClientOptions = {}): Promise<FlightClient> {
    const { target, tls } = parseAddress(address);
    const credentials = tls ? grpc.credentials.createSsl(options.rootCertificate ? Buffer.from(options.rootCertificate) : null) : grpc.credentials.createInsecure();
    const client = new (flightService().client)(target, credentials, CHANNEL_OPTIONS);
    const deadline = Date.now() + (options.timeoutMs ?? 10_000);
    await new Promise<void>((resolve, reject) =>
      client.waitForReady(deadline, (e) => (e ? reject(fail(options.timeoutMs === undefined ? 'ERR_PEER_CLOSED' : 'ERR_TIMEOUT', `no Flight server at ${address}: ${e.message}`, e)) : resolve())),
    ).catch((e) => {
      client.close();
      throw e;
    });
    const flightClient = new FlightClient(address, client, options);
    if (options.upgrade) await flightClient.#negotiate();
    return flightClient;
  }

  /** Call metadata (the token) and deadline: `timeoutMs` of this call, else the client's; null: none. */
  #callOptions(timeoutMs: number | null | undefined = this.#options.timeoutMs): { metadata: grpc.Metadata; options: grpc.CallOptions } {
    const metadata = new grpc.Metadata();
    if (this.#options.token) metadata.set('authorization', `Bearer ${this.#options.token}`);
    if (this.#options.channelId) metadata.set(CHANNEL_ID_KEY, this.#options.channelId);
    return { metadata, options: timeoutMs === undefined || timeoutMs === null ? {} : { deadline: Date.now() + timeoutMs } };
  }

  /** Sends a table (or IPC stream bytes) under the descriptor path `name`; resolves once the server has it all. */
  async doPut(name: string | string[], data: Sendable, options: CallOptions = {}): Promise<Uint8Array[]> {
    const path = Array.isArray(name) ? name : [name];
    if (this.#shm) {
      await this.#shm.send(data, { metadata: { ...options.metadata, [PATH_KEY]: path.join('/') }, timeoutMs: options.timeoutMs ?? this.#options.timeoutMs });
      return [];
    }
    return this.putFlightData(toFlightData(data, { type: 'PATH', cmd: Buffer.alloc(0), path }, encodeMetadata(options.metadata)), options.timeoutMs);
  }

  /** @internal DoPut of ready FlightData (tests send hostile ones with it). */
  async putFlightData(messages: FlightData[], timeoutMs?: number): Promise<Uint8Array[]> {
    const results = await this.#stream<{ app_metadata: Buffer }>('DoPut', messages, `DoPut to ${this.address}`, timeoutMs);
    return results.map((r) => r.app_metadata);
  }

  /** One bidirectional call: writes `messages`, half-closes, resolves with what the server sent back (or its typed error). */
  async #stream<T>(method: 'DoPut' | 'DoExchange', messages: FlightData[], what: string, timeoutMs?: number): Promise<T[]> {
    const { metadata, options } = this.#callOptions(timeoutMs);
    const call = (this.#client[method] as unknown as (m: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientDuplexStream<FlightData, T>).call(this.#client, metadata, options);
    const answer: T[] = [];
    let failed = false;
    const done = new Promise<T[]>((resolve, reject) => {
      call.on('data', (r: T) => answer.push(r));
      call.on('error', (e) => {
        failed = true;
        call.emit('drain'); // a writer waiting for room stops waiting
        reject(fromGrpc(e, what));
      });
      call.on('end', () => resolve(answer));
    });
    await writeAll(call, messages, () => failed);
    if (!failed) call.end();
    return done;
  }

  /**
   * Request/response (DoExchange): sends `data` as the request table and resolves with the table
   * the server answers; the server's failure arrives as its typed error. Each exchange is its own
   * gRPC call, so any number may be in flight at once.
   */
  async exchange(name: string, data: Sendable, options: CallOptions = {}): Promise<FlightMessage> {
    const messages = toFlightData(data, { type: 'CMD', cmd: Buffer.from(name), path: [] }, encodeMetadata(options.metadata));
    const answer = await this.#stream<FlightData>('DoExchange', messages, `DoExchange with ${this.address}`, options.timeoutMs);
    return received(answer, name, this.#options.maxMessageBytes);
  }

  /** Fetches the table the server holds for `ticket`. */
  doGet(ticket: string | Uint8Array, options: { timeoutMs?: number } = {}): Promise<FlightMessage> {
    return this.startGet(ticket, options.timeoutMs).result;
  }

  /** @internal A DoGet that can be cancelled (a channel's long-polling receive); `timeoutMs` null: no deadline. */
  startGet(ticket: string | Uint8Array, timeoutMs?: number | null): { result: Promise<FlightMessage>; cancel(): void } {
    const bytes = Buffer.from(ticket);
    const { metadata, options } = this.#callOptions(timeoutMs);
    const call = (this.#client.DoGet as unknown as (t: { ticket: Buffer }, m: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientReadableStream<FlightData>).call(this.#client, { ticket: bytes }, metadata, options);
    const messages: FlightData[] = [];
    const result = new Promise<void>((resolve, reject) => {
      call.on('data', (m: FlightData) => messages.push(m));
      call.on('error', (e) => reject(fromGrpc(e, `DoGet from ${this.address}`)));
      call.on('end', resolve);
    }).then(() => received(messages, bytes.toString('utf8'), this.#options.maxMessageBytes));
    return { result, cancel: () => call.cancel() };
  }

  /** @internal DoAction (a channel's goodbye); resolves when the server answered or after `timeoutMs`. */
  async doAction(type: string, timeoutMs: number): Promise<void> {
    const { metadata, options } = this.#callOptions(timeoutMs);
    const call = (this.#client.DoAction as unknown as (a: { type: string; body: Buffer }, m: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientReadableStream<unknown>).call(this.#client, { type, body: Buffer.alloc(0) }, metadata, options);
    await new Promise<void>((resolve, reject) => {
      call.on('data', () => {});
      call.on('error', (e) => reject(fromGrpc(e, `DoAction ${type} on ${this.address}`)));
      call.on('end', resolve);
    });
  }

  /** @internal Hands over the shared-memory channel of an upgraded connection (the caller owns it then). */
  takeUpgrade(): Channel | null {
    const channel = this.#shm;
    this.#shm = null;
    return channel;
  }

  close(): void {
    this.#shm?.close();
    this.#shm = null;
    this.#client.close();
  }
}

// ------------------------------------------------------------------------------------- server

const NOT_AUTHORIZED = { code: grpc.status.UNAUTHENTICATED, details: 'ERR_PEER_CREDENTIALS: missing or wrong token' };

/** @internal Ends a server call with an error status (grpc-js: an 'error' event carrying the status). */
export function refuse(call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>, status: Partial<grpc.StatusObject>): void {
  call.emit('error', status);
}

export interface FlightServerOptions {
  /** Calls must carry `authorization: Bearer <token>`; others fail with UNAUTHENTICATED. */
  token?: string;
  /** PEM key and certificate: serve grpc+tls:// (required for a grpc+tls:// address). */
  tls?: { key: Uint8Array; certificate: Uint8Array };
  /** Largest table accepted through DoPut. Default 4 GiB. */
  maxMessageBytes?: number;
  /**
   * Answers DoExchange requests (request/response): the returned table is the response; an
   * ArrowShmError it throws reaches the client with its code, any other error as ERR_REMOTE.
   */
  onExchange?: (request: FlightMessage) => Sendable | Promise<Sendable>;
  /**
   * Also listen on this arrow-shm address (a path or @name) and offer it, in the Flight Handshake,
   * to clients on the same host: their DoPuts then arrive through shared memory, zero copy, and
   * `receive()` returns them as shared-memory `Message`s.
   */
  shm?: string;
  /** @internal Set by FlightListener: calls go to one channel per client connection instead of `receive()`. */
  router?: FlightRouter;
}

/** A client of a FlightListener: the channel id its calls carry, else its connection. */
export interface FlightPeer {
  key: string;
  /** The client's address and port, as gRPC reports it. */
  address: string;
}

/** The call metadata key naming the channel a call belongs to (§13.2). */
export const CHANNEL_ID_KEY = 'arrow-shm-channel';

function peerOf(call: { getPeer(): string; metadata: grpc.Metadata }): FlightPeer {
  const address = call.getPeer();
  const id = call.metadata.get(CHANNEL_ID_KEY)[0];
  return { key: typeof id === 'string' && id.length > 0 && id.length <= 64 ? `id:${id}` : `connection:${address}`, address };
}

/** @internal Where a FlightListener takes the calls of each client (see FlightPeer). */
export interface FlightRouter {
  hello(peer: FlightPeer): void;
  /** False: no open channel takes it (the client is told ERR_PEER_CLOSED). */
  put(peer: FlightPeer, item: FlightMessage | ArrowShmError): boolean;
  exchange(peer: FlightPeer, request: FlightMessage): void;
  inbox(peer: FlightPeer, call: grpc.ServerWritableStream<{ ticket: Buffer }, FlightData>): void;
  action(peer: FlightPeer, type: string): boolean;
  shm(channel: Channel): void;
}

/** The ticket a FlightChannel client long-polls for what the server side sends it (§13.2). */
export const INBOX_TICKET = 'arrow-shm.inbox';
/** The action a FlightChannel client sends when it closes (§13.2). */
export const CLOSE_ACTION = 'arrow-shm.close';

/** What `FlightServer.receive()` returns: through gRPC, or through shared memory after an upgrade. */
export type ReceivedTable = FlightMessage | Message;

/** The descriptor path a received table was put under, whichever way it came. */
export function receivedName(item: ReceivedTable): string {
  return item instanceof FlightMessage ? item.name : (item.metadata[PATH_KEY] ?? '');
}

/**
 * A Flight server. Tables clients DoPut are queued for `receive()` and kept, under their
 * descriptor path joined by "/", for DoGet; `serve(name, table)` offers more tables for DoGet.
 */
export class FlightServer {
  readonly address: string;
  readonly port: number;
  #server: grpc.Server;
  #options: FlightServerOptions;
  #tables = new Map<string, Uint8Array>();
  #inbox: (ReceivedTable | ArrowShmError)[] = [];
  #waiting: ((item: ReceivedTable | ArrowShmError | null) => void)[] = [];
  #closed = false;
  #shm: Listener | null = null;
  #shmChannels = new Set<Channel>();

  private constructor(address: string, port: number, server: grpc.Server, options: FlightServerOptions) {
    this.address = address;
    this.port = port;
    this.#server = server;
    this.#options = options;
  }

  /** Listens on `grpc://host:port` (port 0: any free port, see `address`). */
  static async listen(address: string, options: FlightServerOptions = {}): Promise<FlightServer> {
    const { target, tls } = parseAddress(address);
    if (tls && !options.tls) throw fail('ERR_INVALID_ARGUMENT', 'a grpc+tls:// address needs options.tls (key and certificate)');
    const server = new grpc.Server(CHANNEL_OPTIONS);
    const credentials = options.tls ? grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(options.tls.key), cert_chain: Buffer.from(options.tls.certificate) }]) : grpc.ServerCredentials.createInsecure();
    let self: FlightServer | null = null;
    const handlers = {
      DoPut: (call: grpc.ServerDuplexStream<FlightData, { app_metadata: Buffer }>) => self!.#doPut(call),
      DoGet: (call: grpc.ServerWritableStream<{ ticket: Buffer }, FlightData>) => self!.#doGet(call),
      Handshake: (call: grpc.ServerDuplexStream<{ payload: Buffer }, { protocol_version: number; payload: Buffer }>) => self!.#handshake(call),
      GetFlightInfo: (_: unknown, callback: grpc.sendUnaryData<unknown>) => callback({ code: grpc.status.UNIMPLEMENTED, details: 'GetFlightInfo: use DoGet with the table name as ticket' }),
      DoExchange: (call: grpc.ServerDuplexStream<FlightData, FlightData>) => self!.#doExchange(call),
      ListActions: (call: grpc.ServerWritableStream<unknown, unknown>) => call.end(),
      DoAction: (call: grpc.ServerWritableStream<{ type: string }, unknown>) => self!.#doAction(call),
    };
    server.addService(flightService().definition, handlers as unknown as grpc.UntypedServiceImplementation);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(target, credentials, (e, p) => (e ? reject(fail('ERR_SYSCALL', `cannot listen on ${address}: ${e.message}`, e)) : resolve(p))),
    );
    const host = target.slice(0, target.lastIndexOf(':'));
    self = new FlightServer(`grpc${tls ? '+tls' : ''}://${host}:${port}`, port, server, options);
    if (options.shm) {
      try {
        self.#listenShm(options.shm);
      } catch (e) {
        server.forceShutdown();
        throw e;
      }
    }
    return self;
  }

  /** Answers an upgrade offer from a client on this host with the shared-memory address; anything else with nothing. */
  #handshake(call: grpc.ServerDuplexStream<{ payload: Buffer }, { protocol_version: number; payload: Buffer }>): void {
    if (!this.#authorized(call.metadata)) return refuse(call, NOT_AUTHORIZED);
    let answered = false;
    call.on('data', (request: { payload: Buffer }) => {
      if (answered) return;
      answered = true;
      let offer: { 'arrow-shm'?: number; host?: string } = {};
      try {
        offer = JSON.parse(request.payload.toString('utf8')) as typeof offer;
      } catch {
        // another client's handshake payload: nothing to offer
      }
      const host = hostIdentity();
      const upgrade = this.#shm && offer['arrow-shm'] === UPGRADE_VERSION && offer.host === host;
      // Staying on gRPC: this connection is a channel from now on (an upgraded one arrives through shared memory).
      if (!upgrade && offer['arrow-shm'] === UPGRADE_VERSION) this.#options.router?.hello(peerOf(call));
      call.write({ protocol_version: 0, payload: Buffer.from(upgrade ? JSON.stringify({ 'arrow-shm': UPGRADE_VERSION, host, address: this.#shm!.address }) : '') });
    });
    call.on('end', () => call.end());
    call.on('error', () => {});
  }

  #listenShm(address: string): void {
    const listener = listenShm(address);
    this.#shm = listener;
    const router = this.#options.router;
    void (async () => {
      for await (const channel of listener) {
        if (router) {
          router.shm(channel);
          continue;
        }
        this.#shmChannels.add(channel);
        void (async () => {
          try {
            for await (const message of channel) this.#deliver(message);
          } catch (e) {
            if (e instanceof ArrowShmError && e.code !== 'ERR_PEER_CLOSED' && e.code !== 'ERR_CLOSED') this.#deliver(e);
          } finally {
            this.#shmChannels.delete(channel);
            channel.close();
          }
        })();
      }
    })();
  }

  #authorized(metadata: grpc.Metadata): boolean {
    return !this.#options.token || metadata.get('authorization')[0] === `Bearer ${this.#options.token}`;
  }

  /** Collects what a client streams in, within the size limit; `onEnd` runs once it half-closed. */
  #collect(call: grpc.ServerDuplexStream<FlightData, unknown>, onEnd: (messages: FlightData[], limit: number) => void): void {
    const messages: FlightData[] = [];
    let bytes = 0;
    const limit = this.#options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    call.on('data', (m: FlightData) => {
      messages.push(m);
      bytes += m.data_header.length + m.data_body.length;
      if (bytes > limit) refuse(call, { code: grpc.status.RESOURCE_EXHAUSTED, details: `ERR_TOO_LARGE: more than ${limit} bytes` });
    });
    call.on('error', () => {}); // the client went away: nothing is delivered
    call.on('end', () => onEnd(messages, limit));
  }

  #doPut(call: grpc.ServerDuplexStream<FlightData, { app_metadata: Buffer }>): void {
    if (!this.#authorized(call.metadata)) return refuse(call, NOT_AUTHORIZED);
    this.#collect(call, (messages, limit) => {
      const name = (messages[0]?.flight_descriptor?.path ?? []).join('/');
      let message: FlightMessage;
      try {
        message = received(messages, name, limit);
      } catch (e) {
        if (this.#options.router) this.#options.router.put(peerOf(call), e as ArrowShmError);
        else this.#deliver(e as ArrowShmError);
        return refuse(call, toStatus(e));
      }
      const router = this.#options.router;
      if (router && !router.put(peerOf(call), message)) return refuse(call, toStatus(fail('ERR_PEER_CLOSED', 'this channel was closed')));
      if (!router) {
        this.#tables.set(name, message.bytes);
        this.#deliver(message);
      }
      call.write({ app_metadata: Buffer.alloc(0) });
      call.end();
    });
  }

  #doExchange(call: grpc.ServerDuplexStream<FlightData, FlightData>): void {
    const handler = this.#options.onExchange;
    const router = this.#options.router;
    if (!handler && !router) return refuse(call, { code: grpc.status.UNIMPLEMENTED, details: 'ERR_INVALID_ARGUMENT: this server answers no requests (no onExchange)' });
    if (!this.#authorized(call.metadata)) return refuse(call, NOT_AUTHORIZED);
    if (!handler) return this.#routeExchange(call, router!);
    this.#collect(call, (messages, limit) => {
      void (async () => {
        let answer: FlightData[];
        try {
          const descriptor = messages[0]?.flight_descriptor;
          const name = descriptor?.type === 'CMD' ? descriptor.cmd.toString('utf8') : (descriptor?.path ?? []).join('/');
          const response = await handler(received(messages, name, limit));
          answer = toFlightData(response, null);
        } catch (e) {
          return refuse(call, toStatus(e instanceof ArrowShmError ? e : fail('ERR_REMOTE', e instanceof Error ? `${e.name}: ${e.message}` : String(e))));
        }
        await writeAll(call, answer);
        call.end();
      })();
    });
  }

  /** A request for the channel of this client connection; its answer (or error) ends the call. */
  #routeExchange(call: grpc.ServerDuplexStream<FlightData, FlightData>, router: FlightRouter): void {
    this.#collect(call, (messages, limit) => {
      const descriptor = messages[0]?.flight_descriptor;
      const name = descriptor?.type === 'CMD' ? descriptor.cmd.toString('utf8') : (descriptor?.path ?? []).join('/');
      const responder: FlightResponder = {
        respond: async (data) => {
          await writeAll(call, toFlightData(data, null));
          call.end();
        },
        respondError: async (code, message) => refuse(call, toStatus(new ArrowShmError(code, message))),
      };
      let request: FlightMessage;
      try {
        request = received(messages, name, limit, responder);
      } catch (e) {
        return refuse(call, toStatus(e));
      }
      router.exchange(peerOf(call), request);
    });
  }

  #doAction(call: grpc.ServerWritableStream<{ type: string }, unknown>): void {
    if (!this.#authorized(call.metadata)) return refuse(call, NOT_AUTHORIZED);
    if (this.#options.router?.action(peerOf(call), call.request.type)) return void call.end();
    refuse(call, { code: grpc.status.INVALID_ARGUMENT, details: `ERR_INVALID_ARGUMENT: unknown action ${JSON.stringify(call.request.type)}` });
  }

  #doGet(call: grpc.ServerWritableStream<{ ticket: Buffer }, FlightData>): void {
    if (!this.#authorized(call.metadata)) return refuse(call, NOT_AUTHORIZED);
    const name = call.request.ticket.toString('utf8');
    if (this.#options.router && name === INBOX_TICKET) return this.#options.router.inbox(peerOf(call), call);
    const bytes = this.#tables.get(name);
    if (!bytes) return refuse(call, { code: grpc.status.NOT_FOUND, details: `ERR_INVALID_ARGUMENT: no table named ${JSON.stringify(name)}` });
    void writeAll(call, toFlightData(bytes, null)).then(() => call.end());
  }

  #deliver(item: ReceivedTable | ArrowShmError): void {
    const waiter = this.#waiting.shift();
    if (waiter) waiter(item);
    else this.#inbox.push(item);
  }

  /** Offers `data` for DoGet under `name`. */
  serve(name: string, data: Sendable): void {
    const bytes = ipcBytes(data);
    if (data instanceof Uint8Array) walkIpcMessages(bytes, 'stream');
    this.#tables.set(name, bytes);
  }

  /**
   * The next table a client sent with DoPut (a bad one throws its typed error; the server goes
   * on). Its name is `name` (gRPC) or `metadata['flight.path']` (shared memory).
   */
  async receive(): Promise<ReceivedTable> {
    const item = this.#inbox.shift() ?? (this.#closed ? null : await new Promise<ReceivedTable | ArrowShmError | null>((resolve) => this.#waiting.push(resolve)));
    if (item === null) throw fail('ERR_CLOSED', 'the Flight server is closed');
    if (item instanceof ArrowShmError) throw item;
    return item;
  }

  /** Stops listening; calls in flight are cut. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#waiting.splice(0)) w(null);
    this.#shm?.close();
    for (const channel of this.#shmChannels) channel.close();
    for (const item of this.#inbox.splice(0)) if (!(item instanceof ArrowShmError)) item.close();
    await Promise.race([new Promise<void>((resolve) => this.#server.tryShutdown(() => resolve())), new Promise((r) => setTimeout(r, 1000).unref())]);
    this.#server.forceShutdown();
  }
}

/** The descriptor name of a CLI input file. */
export const flightName = (file: string): string => (file === '-' ? 'stdin' : basename(file));
