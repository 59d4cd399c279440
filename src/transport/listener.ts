// Listening for peers: accepting connections, refusing what is over the limits (§14.2), handing
// out handshaken channels.
import { openSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { ArrowShmError, fail, type ErrorCode } from '../errors.js';
import { native } from '../native.js';
import { AsyncQueue, untilClosed } from '../queue.js';
import { closeFds } from '../shm/fds.js';
import { asError, Channel } from './channel.js';
import { encodeFrame, FrameKind } from './frame.js';
import { normalizeOptions, positive, type ChannelOptions } from './options.js';
import { closeListeningSocket, listenSocket, PacketSocket, type ListeningSocket } from './socket.js';

const { EMFILE, ENFILE } = osConstants.errno;
/** At maxConnections, a connection idle at least this long makes room for a new one (§14.2). */
const EVICTABLE_IDLE_MS = 1000;

function openReserve(): number | null {
  try {
    return openSync('/dev/null', 'r');
  } catch {
    return null;
  }
}

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
  #socket: ListeningSocket;
  #poller;
  #options: ListenerOptions;
  #maxConnections: number;
  #idleTimeoutMs: number;
  /** Handshaken channels not yet taken by accept(). */
  #ready = new AsyncQueue<Channel>();
  /** Every open channel this listener accepted (whether or not the application took it yet). */
  #live = new Set<Channel>();
  /** Connections still in their handshake: closed with the listener. */
  #handshaking = new Set<PacketSocket>();
  #sweeper: NodeJS.Timeout | null = null;
  #closed = false;
  /** Held so that one fd is free to refuse connections when the process runs out (EMFILE). */
  #reserveFd: number | null = openReserve();

  private constructor(
    readonly address: string,
    socket: ListeningSocket,
    options: ListenerOptions,
  ) {
    this.#socket = socket;
    this.#options = options;
    this.#maxConnections = positive('maxConnections', options.maxConnections, 256);
    this.#idleTimeoutMs = options.idleTimeoutMs ?? 300_000;
    if (!Number.isSafeInteger(this.#idleTimeoutMs) || this.#idleTimeoutMs < 0) throw fail('ERR_INVALID_ARGUMENT', `idleTimeoutMs must be a non-negative integer, got ${options.idleTimeoutMs}`);
    this.#poller = native.pollerCreate(socket.fd, () => this.#acceptAll());
    native.pollerStart(this.#poller, true, false);
    if (this.#idleTimeoutMs > 0) {
      this.#sweeper = setInterval(() => this.#closeIdle(), Math.min(1000, this.#idleTimeoutMs));
      this.#sweeper.unref();
    }
  }

  static create(address: string, options: ListenerOptions = {}): Listener {
    normalizeOptions(options); // validate early
    const socket = listenSocket(address, true, options.backlog ?? 64);
    try {
      return new Listener(address, socket, options);
    } catch (e) {
      closeListeningSocket(socket, address);
      throw e;
    }
  }

  /** Channels held now, handshaking ones included. */
  get connections(): number {
    return this.#live.size + this.#handshaking.size;
  }

  #acceptAll(): void {
    while (!this.#closed) {
      let fd: number;
      try {
        fd = native.accept(this.#socket.fd);
      } catch (e) {
        const error = asError(e);
        if (error.errno === EMFILE || error.errno === ENFILE) {
          // accept(2) fails this way even with no connection pending (it needs an fd first).
          const shed = this.#shedOne(error);
          if (shed === 'shed') continue;
          if (shed === 'none-pending') return;
          this.#backOff();
        }
        this.#options.onConnectionError?.(error);
        return;
      }
      if (fd < 0) return;
      if (this.connections >= this.#maxConnections && !this.#evictIdlest()) {
        refuse(fd, 'ERR_RESOURCE_LIMIT', `the listener holds its maximum of ${this.#maxConnections} connections (maxConnections); try again later`);
        this.#options.onConnectionError?.(fail('ERR_RESOURCE_LIMIT', `refused a connection: ${this.#maxConnections} connections held (maxConnections)`));
        continue;
      }
      const socket = new PacketSocket(fd);
      this.#handshaking.add(socket);
      Channel.open(socket, 'listener', this.#options, this.#options.onChannel).then(
        (channel) => {
          this.#handshaking.delete(socket);
          if (this.#closed) return channel.close();
          this.#live.add(channel);
          channel.onClose(() => this.#live.delete(channel));
          this.#ready.push(channel);
        },
        (e) => {
          this.#handshaking.delete(socket);
          this.#options.onConnectionError?.(asError(e));
        },
      );
    }
  }

  /** At maxConnections: closes the channel idle longest, if it has been idle long enough. */
  #evictIdlest(): boolean {
    const now = performance.now();
    let idlest: Channel | null = null;
    let longest = EVICTABLE_IDLE_MS;
    for (const channel of this.#live) {
      const idle = channel.idleMs(now);
      if (idle >= longest) [idlest, longest] = [channel, idle];
    }
    if (!idlest) return false;
    this.#evict(idlest, `closed after ${Math.round(longest)} ms idle to make room: the listener holds its maximum of ${this.#maxConnections} connections`);
    return true;
  }

  #closeIdle(): void {
    const now = performance.now();
    for (const channel of this.#live) {
      const idle = channel.idleMs(now);
      if (idle >= this.#idleTimeoutMs) this.#evict(channel, `closed after ${Math.round(idle)} ms idle (idleTimeoutMs ${this.#idleTimeoutMs})`);
    }
  }

  #evict(channel: Channel, why: string): void {
    const error = fail('ERR_TIMEOUT', why);
    this.#live.delete(channel);
    this.#ready.remove(channel);
    channel.evict(error);
    this.#options.onConnectionError?.(error);
  }

  /**
   * Out of fds, a pending connection would make the poller fire forever: close the reserve fd,
   * accept that connection, tell it why in an ERROR frame, close it, take the reserve back.
   */
  #shedOne(error: ArrowShmError): 'shed' | 'none-pending' | 'no-reserve' {
    if (this.#reserveFd === null) return 'no-reserve';
    closeFds([this.#reserveFd]);
    this.#reserveFd = null;
    let fd = -1;
    try {
      fd = native.accept(this.#socket.fd);
    } catch {
      // still out of fds (another thread took the one we freed): back off
    }
    if (fd >= 0) {
      refuse(fd, 'ERR_SYSCALL', `the listener is out of file descriptors (errno ${error.errno}); try again later`);
      this.#options.onConnectionError?.(error);
    }
    this.#reserveFd = openReserve();
    if (this.#reserveFd === null) return 'no-reserve';
    return fd >= 0 ? 'shed' : 'none-pending';
  }

  /** Without a reserve fd, stop polling for a moment instead of spinning on EMFILE. */
  #backOff(): void {
    native.pollerStart(this.#poller, false, false);
    setTimeout(() => {
      if (this.#closed) return;
      this.#reserveFd ??= openReserve();
      native.pollerStart(this.#poller, true, false);
    }, 100);
  }

  /** The next connected (and handshaken) channel. */
  async accept(): Promise<Channel> {
    const channel = await this.#ready.take();
    if (!channel) throw fail('ERR_CLOSED', 'the listener is closed');
    return channel;
  }

  [Symbol.asyncIterator](): AsyncGenerator<Channel, void, undefined> {
    return untilClosed(() => this.accept(), () => !this.#closed);
  }

  ref(keep = true): this {
    native.pollerRef(this.#poller, keep);
    return this;
  }

  /** Stops listening; channels already handed out by accept() stay open. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    native.pollerClose(this.#poller);
    if (this.#sweeper) clearInterval(this.#sweeper);
    closeListeningSocket(this.#socket, this.address);
    if (this.#reserveFd !== null) closeFds([this.#reserveFd]);
    this.#reserveFd = null;
    this.#ready.close();
    for (const c of this.#ready.drain()) c.close();
    for (const socket of this.#handshaking) socket.abort(fail('ERR_CLOSED', 'the listener closed during the handshake'));
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Tells a connection we will not serve it why, in one ERROR frame, and closes it. */
function refuse(fd: number, code: ErrorCode, message: string): void {
  const frame = encodeFrame({ kind: FrameKind.Error, messageId: 1n, metadata: { code, message } });
  try {
    native.sendmsg(fd, frame, []);
    // Closing with its HELLO unread would reset the connection and lose our ERROR: read it first.
    const scratch = new Uint8Array(256);
    for (let got = native.recvmsg(fd, scratch); got && got.bytes > 0; got = native.recvmsg(fd, scratch)) closeFds(got.fds);
  } catch {
    // it may be gone already
  }
  native.close(fd);
}

export function listen(address: string, options: ListenerOptions = {}): Listener {
  return Listener.create(address, options);
}
