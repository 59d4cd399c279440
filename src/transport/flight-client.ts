// The Flight client: DoPut, DoGet, DoExchange, the same-host upgrade (docs/PROTOCOL.md §13).
import * as grpc from '@grpc/grpc-js';
import { Schema, Table } from 'apache-arrow';
import { ArrowShmError, fail } from '../errors.js';
import type { KeyValues } from './frame.js';
import { FlightDataCollector, flightLimits, type FlightLimits } from './flight-limits.js';
import { type Sendable } from '../ipc/prepared.js';
import { connect as connectShm, type Channel } from './channel.js';
import { type ReceivedTable } from './received.js';
import { fromGrpc } from './flight-status.js';
import { Http2Connection, type Http2Call } from './flight-http2.js';
import { flightDataParts } from './flight-wire.js';
import { FlightMessage, encodeMetadata, received } from './flight-message.js';
import { readFlightInfo, type FlightInfo, type FlightInfoMessage } from './flight-info.js';
import { clientSink, clientSource, type FlightDataSink, type FlightDataSource } from './flight-stream.js';
import {
  CHANNEL_ID_KEY,
  MAX_HANDSHAKE_BYTES,
  MAX_PUT_RESULT_BYTES,
  PATH_KEY,
  TICKET_KEY,
  UPGRADE_VERSION,
  channelOptions,
  flightService,
  hostIdentity,
  parseAddress,
  toFlightData,
  writeAll,
  type FlightData,
  type OutgoingFlightData,
  type ServiceClient,
} from './flight-codec.js';

export interface FlightClientOptions {
  /** Sent as `authorization: Bearer <token>` with every call. */
  token?: string;
  /** @internal Sent with every call (FlightChannel), so a FlightListener tells its channels apart whatever connections gRPC uses. */
  channelId?: string;
  /** PEM of the CA that signed the server's certificate (grpc+tls://). Default: the system's. */
  rootCertificate?: Uint8Array;
  /** Deadline of each call, in ms. */
  timeoutMs?: number;
  /** Largest table accepted from DoGet and DoExchange (= limits.maxCallBytes). */
  maxMessageBytes?: number;
  /** Bounds on what a server sends back (§13.3): FlightData size and count, per-message verification, idle time. */
  limits?: Partial<FlightLimits>;
  /**
   * Offer the server, during the Flight Handshake, to move DoPut and DoGet to shared memory. The upgrade
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
  #limits: FlightLimits;
  #shm: Channel | null = null;
  /** The data calls (DoPut, DoExchange, DoGet): FlightData written without copies (grpc-js makes two). */
  #http2: Http2Connection;

  private constructor(address: string, client: ServiceClient, options: FlightClientOptions) {
    this.address = address;
    this.#client = client;
    const { target, tls } = parseAddress(address);
    this.#http2 = new Http2Connection(target, tls, options.rootCertificate);
    this.#options = options;
    this.#limits = flightLimits(options.limits, options.maxMessageBytes);
  }

  /** 'shm' once the connection was upgraded to shared memory (DoPut and DoGet go through it), else 'grpc'. */
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
    // A deadline even without timeoutMs: a server that never ends its Handshake must not hold connect() forever.
    const { metadata, options } = this.#callOptions(this.#options.timeoutMs ?? 10_000);
    const call = (this.#client.Handshake as unknown as (m: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientDuplexStream<unknown, { payload: Buffer }>).call(this.#client, metadata, options);
    return new Promise<{ address?: string; host?: string } | null>((resolve, reject) => {
      let reply: { address?: string; host?: string } | null = null;
      call.on('data', (r: { payload: Buffer }) => {
        try {
          if (r.payload.length <= MAX_HANDSHAKE_BYTES) reply ??= JSON.parse(r.payload.toString('utf8')) as { address?: string; host?: string };
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
    const client = new (flightService().client)(target, credentials, channelOptions(flightLimits(options.limits, options.maxMessageBytes)));
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

  /** Call metadata: the token, the channel. */
  #headers(): Record<string, string> {
    const headers: Record<string, string> = {};
    if (this.#options.token) headers.authorization = `Bearer ${this.#options.token}`;
    if (this.#options.channelId) headers[CHANNEL_ID_KEY] = this.#options.channelId;
    return headers;
  }

  /** A call's deadline (Date.now() time): `timeoutMs` of this call, else the client's; undefined: none. */
  #deadline(timeoutMs: number | null | undefined = this.#options.timeoutMs): number | undefined {
    return timeoutMs === undefined || timeoutMs === null ? undefined : Date.now() + timeoutMs;
  }

  /** The same for a grpc-js call. */
  #callOptions(timeoutMs?: number | null): { metadata: grpc.Metadata; options: grpc.CallOptions } {
    const metadata = new grpc.Metadata();
    for (const [key, value] of Object.entries(this.#headers())) metadata.set(key, value);
    const deadline = this.#deadline(timeoutMs);
    return { metadata, options: deadline === undefined ? {} : { deadline } };
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
  async putFlightData(messages: OutgoingFlightData[], timeoutMs?: number): Promise<Uint8Array[]> {
    const results = await this.#stream<{ app_metadata: Buffer }>('DoPut', messages, `DoPut to ${this.address}`, timeoutMs);
    return results.map((r) => r.app_metadata);
  }

  /**
   * A call over node:http2 (flight-http2). What the server sends back is bounded and verified as it
   * arrives, like what a server receives (FlightDataCollector); `answers` resolves with it once the
   * server ended the call well, or rejects with the typed error (`onFail` runs first).
   */
  #open<T extends object>(method: 'DoPut' | 'DoExchange' | 'DoGet', limits: FlightLimits, what: string, timeoutMs: number | null | undefined, onFail: () => void): { call: Http2Call; answers: Promise<T[]> } {
    const definition = flightService().definition[method]!;
    const decode = definition.responseDeserialize as (b: Buffer) => T; // PutResult (protobufjs) or FlightData (flight-wire)
    let call!: Http2Call;
    const answers = new Promise<T[]>((resolve, reject) => {
      const answer = new FlightDataCollector<T>(limits, (e) => {
        onFail();
        call.cancel();
        reject(e);
      }, { clockFromStart: false, what: method === 'DoGet' ? what : `the answer to ${what}` });
      call = this.#http2.call(definition.path, this.#headers(), this.#deadline(timeoutMs), this.#limits.maxFlightDataBytes, {
        message: (bytes) => {
          try {
            answer.add(decode(bytes));
          } catch (e) {
            answer.fail(e instanceof ArrowShmError ? e : fail('ERR_IPC_INVALID', `${what}: an answer that is not protobuf: ${String(e)}`));
          }
        },
        end: (status) => {
          if (status.code !== grpc.status.OK) return answer.fail(fromGrpc(status, what));
          const got = answer.finish();
          if (got) resolve(got);
        },
      });
    });
    return { call, answers };
  }

  /** One bidirectional call: writes `messages`, half-closes, resolves with what the server sent back (or its typed error). */
  async #stream<T extends object>(method: 'DoPut' | 'DoExchange', messages: OutgoingFlightData[], what: string, timeoutMs?: number): Promise<T[]> {
    // A DoPut's PutResults are acknowledgements: a small budget of their own.
    const limits = method === 'DoPut' ? { ...this.#limits, maxCallBytes: Math.min(this.#limits.maxCallBytes, MAX_PUT_RESULT_BYTES) } : this.#limits;
    let failed = false;
    const { call, answers } = this.#open<T>(method, limits, what, timeoutMs, () => (failed = true));
    answers.catch(() => {}); // returned below: a refusal while the writes wait is the caller's to see, not unhandled
    // Each FlightData is written as its parts (flight-wire): the table's own buffers, not a copy.
    await writeAll({ write: (m) => call.write(flightDataParts(m)), once: (event, listener) => call.once(event, listener) }, messages, () => failed);
    if (!failed) call.end();
    return answers;
  }

  /**
   * Request/response (DoExchange): sends `data` as the request table and resolves with the table
   * the server answers; the server's failure arrives as its typed error. Each exchange is its own
   * gRPC call, so any number may be in flight at once.
   */
  async exchange(name: string, data: Sendable, options: CallOptions = {}): Promise<FlightMessage> {
    const messages = toFlightData(data, { type: 'CMD', cmd: Buffer.from(name), path: [] }, encodeMetadata(options.metadata));
    const answer = await this.#stream<FlightData>('DoExchange', messages, `DoExchange with ${this.address}`, options.timeoutMs);
    return received(answer, name, this.#limits);
  }

  /**
   * Fetches the table the server holds for `ticket`. After an upgrade it comes through shared
   * memory (§13.1): a `ReceivedTable` whose columns are views of the mapping; else a FlightMessage.
   */
  doGet(ticket: string | Uint8Array, options: { timeoutMs?: number } = {}): Promise<FlightMessage | ReceivedTable> {
    if (this.#shm) return this.#shm.request(new Table(new Schema([])), { metadata: { [TICKET_KEY]: Buffer.from(ticket).toString('utf8') }, timeoutMs: options.timeoutMs ?? this.#options.timeoutMs });
    return this.startGet(ticket, options.timeoutMs).result;
  }

  /** @internal A DoGet that can be cancelled (a channel's long-polling receive); `timeoutMs` null: no deadline. */
  startGet(ticket: string | Uint8Array, timeoutMs?: number | null): { result: Promise<FlightMessage>; cancel(): void } {
    const bytes = Buffer.from(ticket);
    // The clocks start with the answer: a channel's inbox call waits for a table as long as it takes.
    const { call, answers } = this.#open<FlightData>('DoGet', this.#limits, `DoGet from ${this.address}`, timeoutMs, () => {});
    const request = flightService().definition.DoGet!.requestSerialize({ ticket: bytes });
    call.write({ parts: [request], length: request.length });
    call.end();
    return { result: answers.then((messages) => received(messages, bytes.toString('utf8'), this.#limits)), cancel: () => call.cancel() };
  }

  /**
   * What the server offers whose name starts with `prefix` (ListFlights; the prefix is the
   * criteria's expression, §13.4). At most `limits.maxListedFlights` are read; each schema is checked.
   */
  async listFlights(prefix: string | Uint8Array = '', options: { timeoutMs?: number } = {}): Promise<FlightInfo[]> {
    const { metadata, options: callOptions } = this.#callOptions(options.timeoutMs);
    const call = (this.#client.ListFlights as unknown as (c: { expression: Buffer }, m: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientReadableStream<FlightInfoMessage>).call(this.#client, { expression: Buffer.from(prefix) }, metadata, callOptions);
    const what = `ListFlights on ${this.address}`;
    return new Promise<FlightInfo[]>((resolve, reject) => {
      const infos: FlightInfo[] = [];
      let settled = false;
      const settle = (e: ArrowShmError | null) => {
        if (settled) return;
        settled = true;
        if (e) reject(e);
        else resolve(infos);
      };
      call.on('data', (m: FlightInfoMessage) => {
        if (settled) return;
        try {
          infos.push(readFlightInfo(m, this.#limits.ipc));
        } catch (e) {
          call.cancel();
          return settle(e as ArrowShmError);
        }
        if (infos.length < this.#limits.maxListedFlights) return;
        call.cancel(); // enough: read no more
        settle(null);
      });
      call.on('error', (e) => settle(fromGrpc(e, what)));
      call.on('end', () => settle(null));
    });
  }

  /** What the server offers under the descriptor path `name` (GetFlightInfo); its schema checked. */
  async getFlightInfo(name: string | string[], options: { timeoutMs?: number } = {}): Promise<FlightInfo> {
    const { metadata, options: callOptions } = this.#callOptions(options.timeoutMs);
    const descriptor = { type: 'PATH', cmd: Buffer.alloc(0), path: Array.isArray(name) ? name : [name] };
    const info = await new Promise<FlightInfoMessage>((resolve, reject) =>
      (this.#client.GetFlightInfo as unknown as (d: object, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: FlightInfoMessage) => void) => void).call(this.#client, descriptor, metadata, callOptions, (e, r) =>
        e ? reject(fromGrpc(e, `GetFlightInfo ${JSON.stringify(name)} on ${this.address}`)) : resolve(r!),
      ),
    );
    return readFlightInfo(info, this.#limits.ipc);
  }

  /**
   * A DoPut written one FlightData at a time (a stream, §13.5), over node:http2 like the other
   * data calls (writes wait on HTTP/2 flow control). No deadline unless `timeoutMs`: a live stream
   * runs as long as it runs.
   */
  putStream(options: { timeoutMs?: number } = {}): FlightDataSink {
    const path = flightService().definition.DoPut!.path;
    return clientSink((handlers) => this.#http2.call(path, this.#headers(), this.#deadline(options.timeoutMs ?? null), Math.min(this.#limits.maxFlightDataBytes, MAX_PUT_RESULT_BYTES), handlers), this.address);
  }

  /** A DoGet read one FlightData at a time (a publication, §13.5); pausing it stops reading. No deadline unless `timeoutMs`. */
  getStream(ticket: string | Uint8Array, options: { timeoutMs?: number } = {}): FlightDataSource {
    const { metadata, options: callOptions } = this.#callOptions(options.timeoutMs ?? null);
    const call = (this.#client.DoGet as unknown as (t: { ticket: Buffer }, m: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientReadableStream<FlightData>).call(this.#client, { ticket: Buffer.from(ticket) }, metadata, callOptions);
    return clientSource(call, this.address);
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
    this.#http2.close();
  }
}
