// The Flight server: receives DoPut, serves DoGet and DoExchange, channels over Flight, under the
// limits of docs/PROTOCOL.md §13.3.
import * as grpc from '@grpc/grpc-js';
import { AsyncQueue } from '../queue.js';
import { ArrowShmError, fail } from '../errors.js';
import { walkIpcMessages } from '../ipc/messages.js';
import { CallGate, checkExposure, FlightDataCollector, flightLimits, HeldBytes, tokenChecker, type FlightLimits } from './flight-limits.js';
import { type Sendable } from '../ipc/prepared.js';
import { type Channel } from './channel.js';
import { listen as listenShm, type Listener } from './listener.js';
import { type ReceivedTable } from './received.js';
import { toStatus } from './flight-status.js';
import { widenReceiveWindows } from './flight-http2.js';
import { FlightMessage, encodeMetadata, received, type FlightResponder } from './flight-message.js';
import { describeReceived, describeStream, describeTable, descriptorName, matchesPrefix, type FlightInfoMessage } from './flight-info.js';
import { serverSink, serverSource, type FlightDataSource, type OfferedStream } from './flight-stream.js';
import type { KeyValues } from './frame.js';
import { CHANNEL_ID_KEY, INBOX_TICKET, MAX_HANDSHAKE_BYTES, PATH_KEY, TICKET_KEY, UPGRADE_VERSION, channelOptions, flightService, hostIdentity, ipcBytes, parseAddress, toFlightData, writeAll, type FlightData, type FlightDescriptor, type OutgoingFlightData } from './flight-codec.js';

const NOT_AUTHORIZED = { code: grpc.status.UNAUTHENTICATED, details: 'ERR_PEER_CREDENTIALS: missing or wrong token' };
const notFound = (name: string) => ({ code: grpc.status.NOT_FOUND, details: `ERR_INVALID_ARGUMENT: no table named ${JSON.stringify(name)}` });

/** A table offered for DoGet. `put`: a client's DoPut (may be dropped for room), else null (`serve()`'s). */
interface Kept {
  /** The IPC stream (a put's is made only when asked for: DoGet sends its FlightData again). */
  readonly bytes: Uint8Array;
  put: FlightMessage | null;
  /** The user metadata, sent with the table (DoGet: app_metadata) and in its FlightInfo. */
  metadata: KeyValues;
  /** Its FlightInfo, made on the first ListFlights or GetFlightInfo that asks. */
  info?: FlightInfoMessage;
}

/** @internal Ends a server call with an error status (grpc-js: an 'error' event carrying the status). */
export function refuse(call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>, status: Partial<grpc.StatusObject>): void {
  call.emit('error', status);
}

export interface FlightServerOptions {
  /** Calls must carry `authorization: Bearer <token>`; others fail with UNAUTHENTICATED. */
  token?: string;
  /** PEM key and certificate: serve grpc+tls:// (required for a grpc+tls:// address). */
  tls?: { key: Uint8Array; certificate: Uint8Array };
  /** Largest table accepted through DoPut and DoExchange (= limits.maxCallBytes). */
  maxMessageBytes?: number;
  /** Per call and per server bounds (§13.3); the defaults suit a server on the Internet. */
  limits?: Partial<FlightLimits>;
  /**
   * Serve a non-loopback address without TLS and a token. Without it, listening there is refused:
   * anyone who reaches the port could send tables and read them.
   */
  insecure?: boolean;
  /**
   * Answers DoExchange requests (request/response): the returned table is the response; an
   * ArrowShmError it throws reaches the client with its code, any other error as ERR_REMOTE.
   */
  onExchange?: (request: FlightMessage) => Sendable | Promise<Sendable>;
  /**
   * Also listen on this arrow-shm address (a path or @name) and offer it, in the Flight Handshake,
   * to clients on the same host: their DoPuts then arrive through shared memory, zero copy, and
   * `receive()` returns them as shared-memory `ReceivedTable`s; their DoGets are answered through it.
   */
  shm?: string;
  /**
   * Every DoPut is a stream (§13.5): handed over as it starts, its FlightData read one by one
   * (src/stream's `FlightStreamListener` reads it batch by batch) instead of collected for `receive()`.
   */
  onPutStream?: (source: FlightDataSource) => void;
  /** @internal Set by FlightListener: calls go to one channel per client connection instead of `receive()`. */
  router?: FlightRouter;
}

/** A client of a FlightListener: the channel id its calls carry, else its connection. */
export interface FlightPeer {
  key: string;
  /** The client's address and port, as gRPC reports it. */
  address: string;
}

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
  inbox(peer: FlightPeer, call: grpc.ServerWritableStream<{ ticket: Buffer }, OutgoingFlightData>): void;
  action(peer: FlightPeer, type: string): boolean;
  shm(channel: Channel): void;
}

/** What `FlightServer.receive()` returns: through gRPC, or through shared memory after an upgrade. */
export type AnyReceivedTable = FlightMessage | ReceivedTable;

/** The descriptor path a received table was put under, whichever way it came. */
export function receivedName(item: AnyReceivedTable): string {
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
  #limits: FlightLimits;
  #gate: CallGate;
  #held: HeldBytes;
  #authorized: (header: unknown) => boolean;
  /** Tables for DoGet (and discovery), oldest first. */
  #tables = new Map<string, Kept>();
  /** Live streams for DoGet (and discovery): publications (§13.5). */
  #streams = new Map<string, { offer: OfferedStream; info?: FlightInfoMessage }>();
  /** Each received table counts once in #held while the inbox or #tables has it. */
  #holders = new Map<FlightMessage, number>();
  /** Tables put (or the typed errors of refused puts) not yet taken by receive(). */
  #inbox = new AsyncQueue<AnyReceivedTable | ArrowShmError>();
  #closed = false;
  #shm: Listener | null = null;
  #shmChannels = new Set<Channel>();

  private constructor(address: string, port: number, server: grpc.Server, options: FlightServerOptions, limits: FlightLimits) {
    this.address = address;
    this.port = port;
    this.#server = server;
    this.#options = options;
    this.#limits = limits;
    this.#gate = new CallGate(limits.maxConcurrentCalls);
    this.#held = new HeldBytes(limits.maxHeldBytes, (needed) => this.#dropKept(needed));
    this.#authorized = tokenChecker(options.token);
  }

  /** Listens on `grpc://host:port` (port 0: any free port, see `address`). */
  static async listen(address: string, options: FlightServerOptions = {}): Promise<FlightServer> {
    const { target, tls } = parseAddress(address);
    if (tls && !options.tls) throw fail('ERR_INVALID_ARGUMENT', 'a grpc+tls:// address needs options.tls (key and certificate)');
    checkExposure(target.slice(0, target.lastIndexOf(':')), tls, options.token, options.insecure);
    const limits = flightLimits(options.limits, options.maxMessageBytes);
    const server = new grpc.Server({
      ...channelOptions(limits),
      'grpc.max_concurrent_streams': limits.maxCallsPerConnection,
      'grpc.max_connection_idle_ms': limits.connectionIdleTimeoutMs,
    });
    const credentials = options.tls ? grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(options.tls.key), cert_chain: Buffer.from(options.tls.certificate) }]) : grpc.ServerCredentials.createInsecure();
    let self: FlightServer | null = null;
    const handlers = {
      DoPut: (call: grpc.ServerDuplexStream<FlightData, { app_metadata: Buffer }>) => self!.#doPut(call),
      DoGet: (call: grpc.ServerWritableStream<{ ticket: Buffer }, OutgoingFlightData>) => self!.#doGet(call),
      Handshake: (call: grpc.ServerDuplexStream<{ payload: Buffer }, { protocol_version: number; payload: Buffer }>) => self!.#handshake(call),
      ListFlights: (call: grpc.ServerWritableStream<{ expression: Buffer }, FlightInfoMessage>) => self!.#listFlights(call),
      GetFlightInfo: (call: grpc.ServerUnaryCall<FlightDescriptor, FlightInfoMessage>, callback: grpc.sendUnaryData<FlightInfoMessage>) => self!.#getFlightInfo(call, callback),
      DoExchange: (call: grpc.ServerDuplexStream<FlightData, OutgoingFlightData>) => self!.#doExchange(call),
      ListActions: (call: grpc.ServerWritableStream<unknown, unknown>) => call.end(),
      DoAction: (call: grpc.ServerWritableStream<{ type: string }, unknown>) => self!.#doAction(call),
    };
    server.addService(flightService().definition, handlers as unknown as grpc.UntypedServiceImplementation);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(target, credentials, (e, p) => (e ? reject(fail('ERR_SYSCALL', `cannot listen on ${address}: ${e.message}`, e)) : resolve(p))),
    );
    widenReceiveWindows(server);
    const host = target.slice(0, target.lastIndexOf(':'));
    self = new FlightServer(`grpc${tls ? '+tls' : ''}://${host}:${port}`, port, server, options, limits);
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
    if (!this.#allowed(call)) return refuse(call, NOT_AUTHORIZED);
    let leave: () => void;
    const end = (e: ArrowShmError) => {
      done();
      refuse(call, toStatus(e));
    };
    try {
      leave = this.#gate.enter(call.getPeer(), end);
    } catch (e) {
      return refuse(call, toStatus(e));
    }
    const silent = setTimeout(() => end(fail('ERR_TIMEOUT', `no HandshakeRequest within ${this.#limits.callIdleTimeoutMs} ms (callIdleTimeoutMs)`)), this.#limits.callIdleTimeoutMs);
    const done = () => {
      clearTimeout(silent);
      leave();
    };
    let answered = false;
    call.on('data', (request: { payload: Buffer }) => {
      if (answered) return;
      answered = true;
      done();
      let offer: { 'arrow-shm'?: number; host?: string } = {};
      try {
        if (request.payload.length <= MAX_HANDSHAKE_BYTES) offer = JSON.parse(request.payload.toString('utf8')) as typeof offer;
      } catch {
        // another client's handshake payload: nothing to offer
      }
      const host = hostIdentity();
      const upgrade = this.#shm && offer['arrow-shm'] === UPGRADE_VERSION && offer.host === host;
      // Staying on gRPC: this connection is a channel from now on (an upgraded one arrives through shared memory).
      if (!upgrade && offer['arrow-shm'] === UPGRADE_VERSION) this.#options.router?.hello(peerOf(call));
      call.write({ protocol_version: 0, payload: Buffer.from(upgrade ? JSON.stringify({ 'arrow-shm': UPGRADE_VERSION, host, address: this.#shm!.address }) : '') });
    });
    call.on('end', () => {
      done();
      call.end();
    });
    call.on('error', done);
    call.on('cancelled', done);
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
            for await (const message of channel) {
              if (message.isRequest && message.metadata[TICKET_KEY] !== undefined) void this.#shmGet(message);
              else this.#deliver(message);
            }
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

  /** A DoGet over an upgraded connection (§13.1): the kept table is answered through shared memory. */
  async #shmGet(request: ReceivedTable): Promise<void> {
    const name = request.metadata[TICKET_KEY]!;
    request.close(); // an empty table: the ticket is all it carries
    const kept = this.#tables.get(name);
    try {
      if (kept) await request.respond(kept.bytes, { metadata: kept.metadata });
      else await request.respondError('ERR_INVALID_ARGUMENT', `no table named ${JSON.stringify(name)}`);
    } catch {
      // the client went away: its channel closes
    }
  }

  /** Checked from the call's headers, before any FlightData is read (constant time). */
  #allowed(call: { metadata: grpc.Metadata }): boolean {
    return this.#authorized(call.metadata.get('authorization')[0]);
  }

  /**
   * Collects what a client streams in, within the limits (§13.3): each FlightData is bounded and
   * verified as it arrives, the first violation ends the call with its status. `onEnd` runs once
   * the client half-closed.
   */
  #collect(call: grpc.ServerDuplexStream<FlightData, unknown>, what: string, onEnd: (messages: FlightData[]) => void): void {
    let leave: () => void;
    let collector: FlightDataCollector<FlightData> | null = null;
    try {
      leave = this.#gate.enter(call.getPeer(), (e) => collector?.fail(e));
    } catch (e) {
      return refuse(call, toStatus(e));
    }
    let gone = false;
    collector = new FlightDataCollector<FlightData>(
      this.#limits,
      (e) => {
        leave();
        if (gone) return;
        refuse(call, toStatus(e));
        this.#report(call, e);
      },
      { held: this.#held, clockFromStart: true, what: `${what} from ${call.getPeer()}` },
    );
    const clientGone = () => {
      gone = true; // nothing is delivered
      // grpc-js reports every finished call as cancelled too: an error (and its stack) only for a cut one.
      if (collector.collecting) collector.fail(fail('ERR_PEER_CLOSED', 'the client went away'));
    };
    call.on('data', (m: FlightData) => collector.add(m));
    call.on('error', clientGone);
    call.on('cancelled', clientGone);
    call.on('end', () => {
      const messages = collector.finish();
      if (!messages) return;
      leave();
      collector.release(); // what onEnd keeps of them (the re-framed stream) is held on its own
      onEnd(messages);
    });
  }

  /** Makes room in #held by dropping the oldest tables kept from DoPuts that no receive() still waits for. */
  #dropKept(needed: number): void {
    for (const [name, kept] of this.#tables) {
      if (needed <= 0) return;
      if (!kept.put || (this.#holders.get(kept.put) ?? 0) > 1) continue;
      this.#tables.delete(name);
      this.#release(kept.put);
      needed -= kept.put.byteLength;
    }
  }

  #hold(message: FlightMessage): void {
    const n = this.#holders.get(message) ?? 0;
    if (n === 0) this.#held.take(message.byteLength);
    this.#holders.set(message, n + 1);
  }

  #release(message: FlightMessage): void {
    const n = this.#holders.get(message) ?? 0;
    if (n > 1) return void this.#holders.set(message, n - 1);
    if (n === 1) this.#held.give(message.byteLength);
    this.#holders.delete(message);
  }

  /** Keeps a DoPut's table for DoGet and queues it for receive(); refused when the server is full. */
  #keep(name: string, message: FlightMessage): void {
    if (this.#inbox.size >= this.#limits.maxInboxMessages) throw fail('ERR_RESOURCE_LIMIT', `${this.#inbox.size} received tables wait for receive() (maxInboxMessages)`);
    this.#hold(message); // for the inbox: may throw ERR_RESOURCE_LIMIT
    const old = this.#tables.get(name);
    this.#tables.delete(name); // re-inserted last: the newest
    if (old?.put) this.#release(old.put);
    this.#hold(message);
    this.#tables.set(name, {
      get bytes() {
        return message.bytes;
      },
      put: message,
      metadata: message.metadata,
    });
    this.#deliver(message);
  }

  #doPut(call: grpc.ServerDuplexStream<FlightData, { app_metadata: Buffer }>): void {
    if (!this.#allowed(call)) return refuse(call, NOT_AUTHORIZED);
    if (this.#options.onPutStream) return this.#putStream(call, this.#options.onPutStream);
    this.#collect(call, 'DoPut', (messages) => {
      const name = (messages[0]?.flight_descriptor?.path ?? []).join('/');
      const router = this.#options.router;
      let message: FlightMessage;
      try {
        message = received(messages, name, this.#limits);
      } catch (e) {
        refuse(call, toStatus(e));
        return this.#report(call, e as ArrowShmError);
      }
      try {
        if (router) {
          if (!router.put(peerOf(call), message)) return refuse(call, toStatus(fail('ERR_PEER_CLOSED', 'this channel was closed')));
        } else {
          this.#keep(name, message);
        }
      } catch (e) {
        return refuse(call, toStatus(e));
      }
      call.write({ app_metadata: Buffer.alloc(0) });
      call.end();
    });
  }

  /** A DoPut read as a stream: it holds a call of the gate (maxConcurrentCalls) while it runs. */
  #putStream(call: grpc.ServerDuplexStream<FlightData, { app_metadata: Buffer }>, onPutStream: (source: FlightDataSource) => void): void {
    const source = serverSource(call);
    let leave: () => void;
    try {
      leave = this.#gate.enter(call.getPeer(), (e) => source.fail(e));
    } catch (e) {
      return refuse(call, toStatus(e));
    }
    onPutStream({
      ...source,
      start: (handlers) =>
        source.start({
          data: handlers.data,
          end: () => (leave(), handlers.end()),
          error: (e) => (leave(), handlers.error(e)),
        }),
    });
  }

  #doExchange(call: grpc.ServerDuplexStream<FlightData, OutgoingFlightData>): void {
    const handler = this.#options.onExchange;
    const router = this.#options.router;
    if (!this.#allowed(call)) return refuse(call, NOT_AUTHORIZED);
    if (!handler && !router) return refuse(call, { code: grpc.status.UNIMPLEMENTED, details: 'ERR_INVALID_ARGUMENT: this server answers no requests (no onExchange)' });
    if (!handler) return this.#routeExchange(call, router!);
    this.#collect(call, 'DoExchange', (messages) => {
      void (async () => {
        let answer: OutgoingFlightData[];
        try {
          const name = descriptorName(messages[0]?.flight_descriptor);
          const response = await handler(received(messages, name, this.#limits));
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
  #routeExchange(call: grpc.ServerDuplexStream<FlightData, OutgoingFlightData>, router: FlightRouter): void {
    this.#collect(call, 'DoExchange', (messages) => {
      const name = descriptorName(messages[0]?.flight_descriptor);
      const responder: FlightResponder = {
        respond: async (data) => {
          await writeAll(call, toFlightData(data, null));
          call.end();
        },
        respondError: async (code, message) => refuse(call, toStatus(new ArrowShmError(code, message))),
      };
      try {
        router.exchange(peerOf(call), received(messages, name, this.#limits, responder));
      } catch (e) {
        refuse(call, toStatus(e));
      }
    });
  }

  #doAction(call: grpc.ServerWritableStream<{ type: string }, unknown>): void {
    if (!this.#allowed(call)) return refuse(call, NOT_AUTHORIZED);
    if (this.#options.router?.action(peerOf(call), call.request.type)) return void call.end();
    refuse(call, { code: grpc.status.INVALID_ARGUMENT, details: `ERR_INVALID_ARGUMENT: unknown action ${JSON.stringify(call.request.type)}` });
  }

  #doGet(call: grpc.ServerWritableStream<{ ticket: Buffer }, OutgoingFlightData>): void {
    if (!this.#allowed(call)) return refuse(call, NOT_AUTHORIZED);
    const name = call.request.ticket.toString('utf8');
    if (this.#options.router && name === INBOX_TICKET) return this.#options.router.inbox(peerOf(call), call);
    const stream = this.#streams.get(name);
    if (stream) return stream.offer.subscribe(serverSink(call));
    const kept = this.#tables.get(name);
    if (!kept) return refuse(call, notFound(name));
    void writeAll(call, toFlightData(kept.put ?? kept.bytes, null, encodeMetadata(kept.metadata))).then(() => call.end());
  }

  /** The FlightInfo of a kept table, made once (checked under the limits it was kept with). */
  #describe(name: string, kept: Kept): FlightInfoMessage {
    kept.info ??= kept.put ? describeReceived(name, kept.put, encodeMetadata(kept.metadata)) : describeTable(name, kept.bytes, encodeMetadata(kept.metadata));
    return kept.info;
  }

  #describeStream(name: string, stream: { offer: OfferedStream; info?: FlightInfoMessage }): FlightInfoMessage {
    stream.info ??= describeStream(name, stream.offer.schema, encodeMetadata(stream.offer.metadata));
    return stream.info;
  }

  /** Lists the tables DoGet serves whose name starts with the criteria's expression, oldest first, at most maxListedFlights. */
  #listFlights(call: grpc.ServerWritableStream<{ expression: Buffer }, FlightInfoMessage>): void {
    if (!this.#allowed(call)) return refuse(call, NOT_AUTHORIZED);
    const infos: FlightInfoMessage[] = [];
    try {
      for (const [name, kept] of this.#tables) {
        if (infos.length >= this.#limits.maxListedFlights) break;
        if (matchesPrefix(name, call.request.expression)) infos.push(this.#describe(name, kept));
      }
      for (const [name, stream] of this.#streams) {
        if (infos.length >= this.#limits.maxListedFlights) break;
        if (matchesPrefix(name, call.request.expression)) infos.push(this.#describeStream(name, stream));
      }
    } catch (e) {
      return refuse(call, toStatus(e));
    }
    void writeAll(call, infos).then(() => call.end());
  }

  #getFlightInfo(call: grpc.ServerUnaryCall<FlightDescriptor, FlightInfoMessage>, callback: grpc.sendUnaryData<FlightInfoMessage>): void {
    if (!this.#allowed(call)) return callback(NOT_AUTHORIZED);
    const name = descriptorName(call.request);
    const stream = this.#streams.get(name);
    if (stream) return callback(null, this.#describeStream(name, stream));
    const kept = this.#tables.get(name);
    if (!kept) return callback(notFound(name));
    try {
      callback(null, this.#describe(name, kept));
    } catch (e) {
      callback(toStatus(e));
    }
  }

  /** A refused call is also a typed error on this side: for receive() (or its channel), while there is room. */
  #report(call: { getPeer(): string; metadata: grpc.Metadata }, e: ArrowShmError): void {
    const router = this.#options.router;
    try {
      if (router) router.put(peerOf(call), e);
      else this.#deliver(e);
    } catch {
      // no room: the client was told, that is enough
    }
  }

  #deliver(item: AnyReceivedTable | ArrowShmError): void {
    if (item instanceof ArrowShmError && !this.#inbox.awaited && this.#inbox.size >= this.#limits.maxInboxMessages) return; // the client was told
    this.#inbox.push(item);
  }

  /** Offers `data` for DoGet under `name` (and lists it: ListFlights, GetFlightInfo), with `metadata` as app_metadata. */
  serve(name: string, data: Sendable, options: { metadata?: KeyValues } = {}): void {
    const bytes = ipcBytes(data);
    if (data instanceof Uint8Array) walkIpcMessages(bytes, 'stream');
    const old = this.#tables.get(name);
    this.#tables.delete(name);
    if (old?.put) this.#release(old.put);
    this.#tables.set(name, { bytes, put: null, metadata: options.metadata ?? {} });
  }

  /**
   * Offers a live stream for DoGet under `name` (§13.5): each DoGet with that ticket becomes a
   * subscriber (`offer.subscribe`); ListFlights and GetFlightInfo describe it. A stream's name
   * hides a table of the same name until `withdrawStream`.
   */
  offerStream(name: string, offer: OfferedStream): void {
    if (this.#streams.has(name)) throw fail('ERR_INVALID_ARGUMENT', `a stream named ${JSON.stringify(name)} is offered already`);
    this.#streams.set(name, { offer });
  }

  /** Stops offering the stream `name` (subscribers already attached are the offer's to end). */
  withdrawStream(name: string): void {
    this.#streams.delete(name);
  }

  /**
   * The next table a client sent with DoPut (a bad one throws its typed error; the server goes
   * on). Its name is `name` (gRPC) or `metadata['flight.path']` (shared memory).
   */
  async receive(): Promise<AnyReceivedTable> {
    const item = await this.#inbox.take();
    if (item === null) throw fail('ERR_CLOSED', 'the Flight server is closed');
    if (item instanceof ArrowShmError) throw item;
    if (item instanceof FlightMessage) this.#release(item); // the inbox's hold
    return item;
  }

  /** Stops listening; calls in flight are cut. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#inbox.close();
    this.#shm?.close();
    for (const channel of this.#shmChannels) channel.close();
    for (const item of this.#inbox.drain()) if (!(item instanceof ArrowShmError)) item.close();
    await Promise.race([new Promise<void>((resolve) => this.#server.tryShutdown(() => resolve())), new Promise((r) => setTimeout(r, 1000).unref())]);
    this.#server.forceShutdown();
  }
}
