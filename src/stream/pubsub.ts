// Publish/subscribe: one producer, any number of subscribers joining and leaving at any time,
// every batch in memory once (docs/PROTOCOL.md §12.4).
import type { RecordBatch, Schema, Table } from 'apache-arrow';
import { ArrowShmError, fail } from '../errors.js';
import { Listener, type ListenerOptions } from '../transport/listener.js';
import { connect, type Channel } from '../transport/channel.js';
import { type ChannelOptions } from '../transport/options.js';
import type { Frame, KeyValues } from '../transport/frame.js';
import { withTimeout } from '../timeout.js';
import { StreamReader, type StreamReaderOptions } from './consumer.js';
import { RingWriter, type StreamWriterOptions } from './producer.js';
import { isFlightAddress } from '../transport/flight-codec.js';
import type { FlightAddress } from '../transport/address.js';
import { FlightPublication, subscribeFlight, type FlightPublicationOptions, type FlightStreamReader, type FlightStreamReaderOptions } from './flight.js';
import type { FlightClientOptions } from '../transport/flight-client.js';

export interface PublicationOptions extends StreamWriterOptions, ListenerOptions {
  /** Called when a subscriber could not be attached (no slot, it hung up, ...). */
  onSubscriberError?: (error: ArrowShmError) => void;
}

export class Publication {
  readonly address: string;
  #listener: Listener;
  #producer: RingWriter;
  #channels = new Set<Channel>();
  #joined: (() => void)[] = [];
  #options: PublicationOptions;
  #closed = false;

  private constructor(address: string, schema: Schema, options: PublicationOptions) {
    this.address = address;
    this.#options = options;
    this.#producer = new RingWriter(schema, options);
    try {
      // Set up before the channel's first frame: a SUBSCRIBE may follow the handshake at once.
      const onChannel = (channel: Channel) => {
        options.onChannel?.(channel);
        channel.streams.setSubscribeHandler((frame) => this.#onSubscribe(channel, frame));
      };
      this.#listener = Listener.create(address, { ...options, onChannel });
    } catch (e) {
      this.#producer.close();
      throw e;
    }
    void this.#acceptLoop();
  }

  static create(address: string, schema: Schema, options: PublicationOptions = {}): Publication {
    return new Publication(address, schema, options);
  }

  get schema(): Schema {
    return this.#producer.schema;
  }

  /** Subscribers attached right now. */
  get subscribers(): number {
    return this.#producer.readers;
  }

  async #acceptLoop(): Promise<void> {
    for await (const channel of this.#listener) {
      this.#channels.add(channel);
      channel.onClose(() => this.#channels.delete(channel));
    }
  }

  #onSubscribe(channel: Channel, frame: Frame): void {
    this.#producer.attach(channel.streams, frame.messageId).then(
      () => this.#notifyJoined(),
      (e: unknown) => {
        const error = e instanceof ArrowShmError ? e : fail('ERR_PROTOCOL', String(e));
        channel.sendError(error.code, error.message, frame.messageId).catch(() => {});
        this.#options.onSubscriberError?.(error);
      },
    );
  }

  #notifyJoined(): void {
    for (const check of this.#joined.splice(0)) check();
  }

  /** Resolves once at least `count` subscribers are attached. */
  async waitForSubscribers(count: number, options: { timeoutMs?: number } = {}): Promise<void> {
    const reached = new Promise<void>((resolve, reject) => {
      const check = () => {
        if (this.#closed) reject(fail('ERR_CLOSED', 'the publication is closed'));
        else if (this.#producer.readers >= count) resolve();
        else this.#joined.push(check);
      };
      check();
    });
    await withTimeout(reached, options.timeoutMs, `fewer than ${count} subscribers`);
  }

  /** Publishes the batches of `data` to every subscriber (waiting for slow ones per `onFull`). */
  write(data: Table | RecordBatch | RecordBatch[]): Promise<void> {
    return this.#producer.write(data);
  }

  /** Ends the publication: the end record, then waits until every subscriber released everything or left. */
  async close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.#closed) return;
    this.#listener.close();
    try {
      await this.#producer.end(options);
    } finally {
      this.abort();
    }
  }

  /** Stops at once: subscribers see their connection close before an end record. */
  abort(): void {
    this.#closed = true;
    this.#listener.close();
    this.#producer.close();
    for (const channel of this.#channels) channel.close();
    this.#channels.clear();
    this.#notifyJoined();
  }
}

/**
 * What `publish(address)` returns: a local address a Publication, grpc:// a FlightPublication
 * (§13.5). The type follows the literal: a grpc:// address held in a plain `string` is typed as a
 * local one (as before streams went over Flight): type it `FlightAddress` to get the Flight types.
 */
export type PublicationAt<A extends string> = A extends FlightAddress ? FlightPublication : Publication;
export type StreamReaderAt<A extends string> = A extends FlightAddress ? FlightStreamReader : StreamReader;

/** Publishes a stream of `schema` at `address`: a listening socket, or grpc://host:port (Arrow Flight: each DoGet of `name` subscribes). */
export function publish<A extends string>(address: A, schema: Schema, options: PublicationOptions & FlightPublicationOptions = {}): PublicationAt<A> {
  if (isFlightAddress(address)) return FlightPublication.create(address, schema, options) as PublicationAt<A>;
  return Publication.create(address, schema, options) as PublicationAt<A>;
}

/** Connects to a publication and subscribes (grpc://: a DoGet of `name`); the reader's connection closes with the reader. */
export async function subscribe<A extends string>(
  address: A,
  options: ChannelOptions & StreamReaderOptions & FlightClientOptions & FlightStreamReaderOptions & { metadata?: KeyValues; timeoutMs?: number; name?: string } = {},
): Promise<StreamReaderAt<A>> {
  if (isFlightAddress(address)) return (await subscribeFlight(address, options)) as StreamReaderAt<A>;
  return (await subscribeShm(address, options)) as StreamReaderAt<A>;
}

async function subscribeShm(address: string, options: ChannelOptions & StreamReaderOptions & { metadata?: KeyValues; timeoutMs?: number }): Promise<StreamReader> {
  const channel = await connect(address, options);
  try {
    const reader = await StreamReader.subscribe(channel, options);
    reader.ownsChannel = true;
    return reader;
  } catch (e) {
    channel.close();
    throw e;
  }
}
