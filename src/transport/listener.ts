// Listening for peers: accepting connections within the limits of §14.2 (an Acceptor), handing
// out handshaken channels.
import { fail, type ArrowShmError } from '../errors.js';
import { AsyncQueue, untilClosed } from '../queue.js';
import { Acceptor } from './acceptor.js';
import { Channel } from './channel.js';
import { normalizeOptions, type ChannelOptions } from './options.js';

export interface ListenerOptions extends ChannelOptions {
  backlog?: number;
  /** Called for connections that failed their credentials check or handshake, or were refused or closed for idleness (the listener keeps serving). */
  onConnectionError?: (error: ArrowShmError) => void;
  /**
   * Connections held at once, handshaking ones included (§14.2). At the limit the connection idle
   * longest (at least 1 s) is closed to make room, otherwise the new one is refused with
   * ERR_RESOURCE_LIMIT. Default 256.
   */
  maxConnections?: number;
  /** Called with each channel as soon as its handshake is done, before any later frame is handled (to set it up, e.g. as a publication). */
  onChannel?: (channel: Channel) => void;
  /** An accepted channel with no frame either way for this long, and nothing pending, is closed with ERR_TIMEOUT; 0 = never. Default 300000 (5 min). */
  idleTimeoutMs?: number;
}

/** Listens for peers; every accepted connection becomes a Channel after a successful handshake. */
export class Listener {
  #acceptor: Acceptor<Channel>;
  /** Handshaken channels not yet taken by accept(). */
  #ready = new AsyncQueue<Channel>();

  private constructor(address: string, options: ListenerOptions) {
    this.#acceptor = new Acceptor<Channel>(
      address,
      options,
      'listener',
      (socket) => Channel.open(socket, 'listener', options, options.onChannel),
      (channel) => {
        if (this.#acceptor.closed) return channel.close();
        channel.onClose(() => this.#acceptor.forget(channel));
        this.#ready.push(channel);
      },
      // A channel closed for idleness is not handed out; one whose peer left still is (its messages stay receivable).
      (channel) => this.#ready.remove(channel),
    );
  }

  static create(address: string, options: ListenerOptions = {}): Listener {
    normalizeOptions(options); // validate early
    return new Listener(address, options);
  }

  get address(): string {
    return this.#acceptor.address;
  }

  /** Channels held now, handshaking ones included. */
  get connections(): number {
    return this.#acceptor.connections;
  }

  /** The next connected (and handshaken) channel. */
  async accept(): Promise<Channel> {
    const channel = await this.#ready.take();
    if (!channel) throw fail('ERR_CLOSED', 'the listener is closed');
    return channel;
  }

  [Symbol.asyncIterator](): AsyncGenerator<Channel, void, undefined> {
    return untilClosed(() => this.accept(), () => !this.#acceptor.closed);
  }

  ref(keep = true): this {
    this.#acceptor.ref(keep);
    return this;
  }

  /** Stops listening; channels already handed out by accept() stay open. */
  close(): void {
    if (this.#acceptor.closed) return;
    this.#acceptor.close();
    this.#ready.close();
    for (const c of this.#ready.drain()) c.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export function listen(address: string, options: ListenerOptions = {}): Listener {
  return Listener.create(address, options);
}
