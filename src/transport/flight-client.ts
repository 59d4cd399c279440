// The Flight client: DoPut, DoGet, DoExchange, the same-host upgrade (docs/PROTOCOL.md §13).
import * as grpc from '@grpc/grpc-js';
import { ArrowShmError, fail } from '../errors.js';
import type { KeyValues } from './frame.js';
import { FlightDataCollector, flightLimits, type FlightLimits } from './flight-limits.js';
import { type Sendable } from '../ipc/prepared.js';
import { connect as connectShm, type Channel } from './channel.js';
import { fromGrpc } from './flight-status.js';
import { FlightMessage, encodeMetadata, received } from './flight-message.js';
import {
  CHANNEL_ID_KEY,
  MAX_HANDSHAKE_BYTES,
  MAX_PUT_RESULT_BYTES,
  PATH_KEY,
  UPGRADE_VERSION,
  channelOptions,
  flightService,
  hostIdentity,
  parseAddress,
  toFlightData,
  writeAll,
  type FlightData,
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
  #limits: FlightLimits;
  #shm: Channel | null = null;

  private constructor(address: string, client: ServiceClient, options: FlightClientOptions) {
    this.address = address;
    this.#client = client;
    this.#options = options;
    this.#limits = flightLimits(options.limits, options.maxMessageBytes);
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
    let failed = false;
    const done = new Promise<T[]>((resolve, reject) => {
      const stop = (e: ArrowShmError) => {
        if (failed) return;
        failed = true;
        call.emit('drain'); // a writer waiting for room stops waiting
        reject(e);
      };
      // What the server sends back is bounded and verified like what a server receives; a DoPut's
      // PutResults are acknowledgements, so they get a small budget of their own.
      const limits = method === 'DoPut' ? { ...this.#limits, maxCallBytes: Math.min(this.#limits.maxCallBytes, MAX_PUT_RESULT_BYTES) } : this.#limits;
      const answer = new FlightDataCollector<T & object>(limits, (e) => {
        stop(e);
        call.cancel();
      }, { clockFromStart: false, what: `the answer to ${what}` });
      call.on('data', (r: T & object) => answer.add(r));
      call.on('error', (e) => answer.fail(fromGrpc(e, what)));
      call.on('end', () => {
        const messages = answer.finish();
        if (messages) resolve(messages);
      });
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
    return received(answer, name, this.#limits);
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
    const result = new Promise<FlightData[]>((resolve, reject) => {
      // The clocks start with the answer: a channel's inbox call waits for a table as long as it takes.
      const answer = new FlightDataCollector<FlightData>(this.#limits, (e) => {
        reject(e);
        call.cancel();
      }, { clockFromStart: false, what: `DoGet from ${this.address}` });
      call.on('data', (m: FlightData) => answer.add(m));
      call.on('error', (e) => answer.fail(fromGrpc(e, `DoGet from ${this.address}`)));
      call.on('end', () => {
        const messages = answer.finish();
        if (messages) resolve(messages);
      });
    }).then((messages) => received(messages, bytes.toString('utf8'), this.#limits));
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
