// Channels over Arrow Flight (docs/PROTOCOL.md §13.2): the listen/accept/send/receive/request API
// of a shared-memory Channel, carried by plain Flight calls, so a peer on another host is reached
// by changing the address alone. Client to server: DoPut (send) and DoExchange (request); server
// to client: a DoGet of the ticket "arrow-shm.inbox" that the client keeps open (long poll).
import { randomUUID } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { ArrowShmError, fail } from '../errors.js';
import { AsyncQueue, untilClosed } from '../queue.js';
import type { Channel } from './channel.js';
import type { SendOptions } from './options.js';
import type { Sendable } from '../ipc/prepared.js';
import { flightLimits } from './flight-limits.js';
import { FlightServer, refuse, type FlightPeer, type FlightRouter, type FlightServerOptions } from './flight-server.js';
import { FlightClient, type FlightClientOptions } from './flight-client.js';
import { encodeMetadata, type FlightMessage } from './flight-message.js';
import { CLOSE_ACTION, INBOX_TICKET, toFlightData, writeAll, type OutgoingFlightData } from './flight-codec.js';
import { toStatus } from './flight-status.js';

/** How long a closing client waits for the server to take its goodbye (the channel is closed either way). */
const GOODBYE_TIMEOUT_MS = 1000;
/** Closed client connections remembered, so a late call from one is refused rather than opening a new channel. */
const MAX_GONE_PEERS = 4096;

export interface FlightChannelOptions extends FlightClientOptions {
  /** The descriptor path of tables sent and the command of requests made (FlightMessage.name on the server). Default 'arrow-shm'. */
  name?: string;
}

interface Waiter<T> {
  resolve: (value: T) => void;
  reject: (e: unknown) => void;
}

interface Outgoing {
  messages: OutgoingFlightData[];
  sent: Waiter<void>;
  timer: NodeJS.Timeout | null;
}

/**
 * One end of a channel over Flight. On the client, `send` is a DoPut, `request` a DoExchange and
 * `receive` takes the next table the server side sent; on the server (from `FlightListener.accept`),
 * `receive` yields the client's DoPuts and DoExchange requests (answer with `respond`) and `send`
 * hands a table to the client's next `receive`. Received tables are `FlightMessage`s: one copy, out
 * of gRPC's buffers into one aligned IPC stream.
 */
export class FlightChannel {
  readonly transport = 'grpc' as const;
  #client: FlightClient | null;
  #name: string;
  /** DoPuts (or their typed errors) and requests from the client, not yet taken by receive(). */
  #inbox = new AsyncQueue<FlightMessage | ArrowShmError>();
  #outbox: Outgoing[] = [];
  #polls: grpc.ServerWritableStream<unknown, OutgoingFlightData>[] = [];
  #activeGet: { cancel(): void } | null = null;
  #closeError: ArrowShmError | null = null;
  #closeListeners = new Set<(error: ArrowShmError) => void>();
  #maxInbox = Infinity;

  private constructor(
    /** The server's address (client side) or the client's address and port (server side). */
    readonly address: string,
    readonly side: 'client' | 'server',
    client: FlightClient | null,
    name: string,
  ) {
    this.#client = client;
    this.#name = name;
  }

  /**
   * Connects to a Flight server at `grpc://host:port` (or `grpc+tls://`). With `upgrade`, a server on
   * this host that offers shared memory hands back a shared-memory `Channel` instead (zero copy).
   */
  static async connect(address: string, options: FlightChannelOptions = {}): Promise<FlightChannel | Channel> {
    const client = await FlightClient.connect(address, { ...options, channelId: randomUUID() });
    const upgraded = client.takeUpgrade();
    if (upgraded) {
      client.close();
      return upgraded;
    }
    try {
      await client.hello(); // the server's accept() hands out this channel now, not at its first call
    } catch (e) {
      client.close();
      throw e;
    }
    return new FlightChannel(address, 'client', client, options.name ?? 'arrow-shm');
  }

  /** @internal The server side of a client connection (FlightListener); at most `maxInbox` messages wait for receive(). */
  static accepted(peer: string, maxInbox: number): FlightChannel {
    const channel = new FlightChannel(peer, 'server', null, 'arrow-shm');
    channel.#maxInbox = maxInbox;
    return channel;
  }

  get closed(): boolean {
    return this.#closeError !== null;
  }

  /** Client: DoPut of the table. Server: the client's next `receive` gets it. Resolves once the other side has it. */
  async send(data: Sendable, options: SendOptions = {}): Promise<void> {
    this.#checkOpen();
    if (this.#client) {
      await this.#serverSays(this.#client.doPut(this.#name, data, options));
      return;
    }
    const messages = toFlightData(data, null, encodeMetadata(options.metadata));
    return new Promise<void>((resolve, reject) => {
      const outgoing: Outgoing = { messages, sent: { resolve, reject }, timer: null };
      if (options.timeoutMs !== undefined) {
        outgoing.timer = setTimeout(() => {
          const at = this.#outbox.indexOf(outgoing);
          if (at < 0) return; // being written: the write decides
          this.#outbox.splice(at, 1);
          reject(fail('ERR_TIMEOUT', `the client did not take the table within ${options.timeoutMs} ms`));
        }, options.timeoutMs);
      }
      this.#outbox.push(outgoing);
      this.#pump();
    });
  }

  /** Client only (gRPC cannot call a client): a DoExchange, resolving with the server's answer or rejecting with its typed error. */
  async request(data: Sendable, options: SendOptions = {}): Promise<FlightMessage> {
    this.#checkOpen();
    if (!this.#client) throw fail('ERR_INVALID_ARGUMENT', 'the server side of a Flight channel answers requests (message.respond) but cannot make them: gRPC has no calls from server to client');
    return this.#serverSays(this.#client.exchange(this.#name, data, options));
  }

  /** A client call's result; the server's word that the channel is closed closes this end too. */
  async #serverSays<T>(call: Promise<T>): Promise<T> {
    try {
      return await call;
    } catch (e) {
      if (e instanceof ArrowShmError && e.code === 'ERR_PEER_CLOSED' && e.remote) this.#close(e);
      throw e;
    }
  }

  /** The next table (or request) from the other side. */
  async receive(): Promise<FlightMessage> {
    this.#checkOpen();
    if (this.#client) return this.#receiveFromServer(this.#client);
    const item = await this.#inbox.take();
    if (item === null) throw this.#closeError ?? fail('ERR_CLOSED', 'the channel is closed');
    if (item instanceof ArrowShmError) throw item;
    return item;
  }

  async #receiveFromServer(client: FlightClient): Promise<FlightMessage> {
    if (this.#activeGet) throw fail('ERR_INVALID_ARGUMENT', 'one receive at a time on the client side of a Flight channel');
    const get = client.startGet(INBOX_TICKET, null);
    this.#activeGet = get;
    try {
      return await get.result;
    } catch (e) {
      if (this.#closeError) throw this.#closeError;
      if (e instanceof ArrowShmError && e.code === 'ERR_PEER_CLOSED') this.#close(e);
      throw e;
    } finally {
      this.#activeGet = null;
    }
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<FlightMessage, void, undefined> {
    for (;;) {
      try {
        yield await this.receive();
      } catch (e) {
        if (e instanceof ArrowShmError && (e.code === 'ERR_PEER_CLOSED' || e.code === 'ERR_CLOSED')) return;
        throw e;
      }
    }
  }

  /** Runs once, when the channel closes (by either side); returns a function that removes the listener. */
  onClose(listener: (error: ArrowShmError) => void): () => void {
    if (this.#closeError) {
      queueMicrotask(() => listener(this.#closeError!));
      return () => {};
    }
    this.#closeListeners.add(listener);
    return () => this.#closeListeners.delete(listener);
  }

  /** Closes this end; a client tells the server (DoAction "arrow-shm.close") so its side closes too. */
  close(): void {
    if (this.#closeError) return;
    this.#close(fail('ERR_CLOSED', 'the channel is closed'));
    const client = this.#client;
    if (client) {
      this.#activeGet?.cancel();
      void client
        .doAction(CLOSE_ACTION, GOODBYE_TIMEOUT_MS)
        .catch(() => {}) // the server may be gone already
        .finally(() => client.close());
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** @internal A DoPut (or its typed error) or a DoExchange request from the client; ERR_RESOURCE_LIMIT when the inbox is full. */
  deliver(item: FlightMessage | ArrowShmError): void {
    if (this.#closeError) {
      if (!(item instanceof ArrowShmError)) item.close();
      return;
    }
    if (!this.#inbox.awaited && this.#inbox.size >= this.#maxInbox) {
      if (item instanceof ArrowShmError) return; // the client was told already
      throw fail('ERR_RESOURCE_LIMIT', `${this.#inbox.size} messages of this channel wait for receive() (maxInboxMessages)`);
    }
    this.#inbox.push(item);
  }

  /** @internal The client's long-polling DoGet: answered with the next table sent, one per call. */
  poll(call: grpc.ServerWritableStream<unknown, OutgoingFlightData>): void {
    if (this.#closeError) return refuse(call, toStatus(fail('ERR_PEER_CLOSED', 'the server closed this channel')));
    this.#polls.push(call);
    call.on('cancelled', () => {
      const at = this.#polls.indexOf(call);
      if (at < 0) return; // answered already (gRPC may report a finished call as cancelled)
      this.#polls.splice(at, 1);
      this.#clientGone();
    });
    this.#pump();
  }

  /** @internal The client said goodbye (or the server is closing). */
  closeByPeer(error: ArrowShmError): void {
    this.#close(error);
  }

  /** Pairs queued tables with waiting polls; a table whose poll is cut mid-write fails with the channel. */
  #pump(): void {
    while (this.#outbox.length > 0 && this.#polls.length > 0) {
      const call = this.#polls.shift()!;
      const outgoing = this.#outbox.shift()!;
      let cut = false;
      call.on('cancelled', () => (cut = true));
      void writeAll(call, outgoing.messages, () => cut).then(() => {
        if (outgoing.timer) clearTimeout(outgoing.timer);
        if (!cut) {
          call.end();
          return outgoing.sent.resolve();
        }
        this.#clientGone();
        outgoing.sent.reject(this.#closeError);
      });
    }
  }

  /** Only a client's close() or a lost connection cancels its inbox call: either way, it is gone. */
  #clientGone(): void {
    this.#close(fail('ERR_PEER_CLOSED', `the client at ${this.address} went away`));
  }

  #checkOpen(): void {
    if (this.#closeError) throw this.#closeError;
  }

  #close(error: ArrowShmError): void {
    if (this.#closeError) return;
    this.#closeError = error;
    this.#inbox.rejectWaiters(error);
    this.#inbox.close();
    for (const item of this.#inbox.drain()) if (!(item instanceof ArrowShmError)) item.close();
    for (const o of this.#outbox.splice(0)) {
      if (o.timer) clearTimeout(o.timer);
      o.sent.reject(error);
    }
    const goodbye = toStatus(fail('ERR_PEER_CLOSED', 'the server closed this channel'));
    for (const call of this.#polls.splice(0)) refuse(call, goodbye);
    for (const listener of this.#closeListeners) listener(error);
    this.#closeListeners.clear();
  }
}

export type FlightListenerOptions = Omit<FlightServerOptions, 'onExchange' | 'router'>;

/**
 * A Flight server that hands out one channel per client, like a shared-memory `Listener`. An
 * arrow-shm client names its channel in every call's metadata (so reconnects do not matter); any
 * other Flight client (pyarrow.flight, ...) is told apart by its connection. With `shm`, clients on
 * this host that offer the upgrade arrive as shared-memory `Channel`s.
 */
export class FlightListener {
  #requested: string;
  #server: FlightServer | null = null;
  #started: Promise<FlightServer>;
  #channels = new Map<string, FlightChannel>();
  #goneBy = new Set<string>();
  /** Channels opened by clients, not yet taken by accept(). */
  #ready = new AsyncQueue<FlightChannel | Channel>();
  #closed = false;
  #maxInbox: number;

  /** Starts listening; like `net.Server.listen`, it returns at once: `ready()` (or `accept()`) reports a failure to bind. */
  private constructor(address: string, options: FlightListenerOptions) {
    this.#requested = address;
    this.#maxInbox = flightLimits(options.limits, options.maxMessageBytes).maxInboxMessages;
    const self = this;
    const channelOf = (peer: FlightPeer): FlightChannel | null => self.#channelOf(peer);
    const router: FlightRouter = {
      hello: (peer) => void channelOf(peer),
      put: (peer, item) => {
        const channel = channelOf(peer);
        if (channel) channel.deliver(item);
        else if (!(item instanceof ArrowShmError)) item.close();
        return channel !== null;
      },
      exchange: (peer, request) => {
        const channel = channelOf(peer);
        if (channel) channel.deliver(request);
        else void request.respondError('ERR_PEER_CLOSED', 'this channel was closed');
      },
      inbox: (peer, call) => {
        const channel = channelOf(peer);
        if (channel) channel.poll(call);
        else refuse(call, toStatus(fail('ERR_PEER_CLOSED', 'this channel was closed')));
      },
      action: (peer, type) => {
        if (type !== CLOSE_ACTION) return false;
        self.#channels.get(peer.key)?.closeByPeer(fail('ERR_PEER_CLOSED', `the client at ${peer.address} closed the channel`));
        return true;
      },
      shm: (channel) => self.#offer(channel),
    };
    this.#started = FlightServer.listen(address, { ...options, router }).then(async (server) => {
      if (this.#closed) await server.close();
      return (this.#server = server);
    });
    this.#started.catch(() => {}); // reported by ready() and accept()
  }

  static listen(address: string, options: FlightListenerOptions = {}): FlightListener {
    return new FlightListener(address, options);
  }

  /** The address clients connect to: once `ready()`, with the port chosen for port 0. */
  get address(): string {
    return this.#server?.address ?? this.#requested;
  }

  /** Resolves once the server listens (rejects with the typed error if it cannot). */
  async ready(): Promise<this> {
    await this.#started;
    return this;
  }

  /** The open channel of a client, made (and offered to `accept`) on its first call; null once it closed. */
  #channelOf({ key, address }: FlightPeer): FlightChannel | null {
    if (this.#closed || this.#goneBy.has(key)) return null;
    let channel = this.#channels.get(key);
    if (!channel) {
      channel = FlightChannel.accepted(address, this.#maxInbox);
      this.#channels.set(key, channel);
      channel.onClose(() => {
        this.#channels.delete(key);
        this.#goneBy.add(key);
        if (this.#goneBy.size > MAX_GONE_PEERS) this.#goneBy.delete(this.#goneBy.values().next().value!);
      });
      this.#offer(channel);
    }
    return channel;
  }

  #offer(channel: FlightChannel | Channel): void {
    if (this.#closed) return channel.close();
    this.#ready.push(channel);
  }

  /** The next client: a FlightChannel, or a shared-memory Channel for an upgraded one. */
  async accept(): Promise<FlightChannel | Channel> {
    await this.#started;
    const channel = await this.#ready.take();
    if (!channel) throw fail('ERR_CLOSED', 'the listener is closed');
    return channel;
  }

  [Symbol.asyncIterator](): AsyncGenerator<FlightChannel | Channel, void, undefined> {
    return untilClosed(() => this.accept(), () => !this.#closed);
  }

  /** Stops listening and closes every channel it handed out that is still open. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const error = fail('ERR_CLOSED', 'the listener is closed');
    this.#ready.close();
    for (const c of this.#ready.drain()) c.close();
    for (const c of [...this.#channels.values()]) c.closeByPeer(error);
    const server = await this.#started.catch(() => null);
    await server?.close();
  }
}
