// Accepting connections on a listening socket within the resource limits of §14.2, for any kind
// of connection (channels, a table store's clients): at most maxConnections at once (the idlest
// one makes room, else the new one is refused), idle ones closed, and a process out of file
// descriptors neither spins nor crashes.
import { openSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { type ArrowShmError, fail, type ErrorCode } from '../errors.js';
import { native, type PollerHandle } from '../native.js';
import { closeFds } from '../shm/fds.js';
import { asError } from './channel.js';
import { encodeFrame, FrameKind } from './frame.js';
import { positive } from './options.js';
import { closeListeningSocket, listenSocket, PacketSocket, type ListeningSocket } from './socket.js';

const { EMFILE, ENFILE } = osConstants.errno;
/** At maxConnections, a connection idle at least this long makes room for a new one (§14.2). */
const EVICTABLE_IDLE_MS = 1000;

/** What an acceptor needs of the connections it holds. */
export interface Connection {
  /** How long (ms) nothing has happened on it, or -1 while it is busy (then it is never closed for idleness). */
  idleMs(now: number): number;
  /** Closes it, telling the peer `error`. */
  evict(error: ArrowShmError): void;
}

export interface AcceptorOptions {
  backlog?: number;
  /** Connections held at once, handshaking ones included (§14.2). Default 256. */
  maxConnections?: number;
  /** A connection idle this long is closed with ERR_TIMEOUT; 0 = never. Default 300000 (5 min). */
  idleTimeoutMs?: number;
  /** Connections that failed their handshake, or were refused or closed for idleness. */
  onConnectionError?: (error: ArrowShmError) => void;
}

/** Opens a connection on an accepted socket (credentials, handshake); resolves once it is usable. */
export type OpenConnection<C> = (socket: PacketSocket) => Promise<C>;

export class Acceptor<C extends Connection> {
  readonly address: string;
  #socket: ListeningSocket;
  #poller: PollerHandle;
  #open: OpenConnection<C>;
  #options: AcceptorOptions;
  #what: string;
  #maxConnections: number;
  #idleTimeoutMs: number;
  #live = new Set<C>();
  /** Connections still in their handshake: aborted on close. */
  #handshaking = new Set<PacketSocket>();
  #sweeper: NodeJS.Timeout | null = null;
  #closed = false;
  /** Held so that one fd is free to refuse connections when the process runs out (EMFILE). */
  #reserveFd: number | null = openReserve();
  /** Called with each connection once it is open (also after close(): the owner closes it then). */
  #onOpen: (connection: C) => void;
  #onEvict: (connection: C) => void;

  /**
   * Listens at `address`. `open` turns each accepted socket into a connection; `onOpen` receives
   * it; `onEvict` learns of one closed for idleness (its owner forgets it with `forget`).
   * `what` names the owner in errors ("listener", "store").
   */
  constructor(address: string, options: AcceptorOptions, what: string, open: OpenConnection<C>, onOpen: (connection: C) => void, onEvict: (connection: C) => void = () => {}) {
    this.#maxConnections = positive('maxConnections', options.maxConnections, 256);
    this.#idleTimeoutMs = options.idleTimeoutMs ?? 300_000;
    if (!Number.isSafeInteger(this.#idleTimeoutMs) || this.#idleTimeoutMs < 0) throw fail('ERR_INVALID_ARGUMENT', `idleTimeoutMs must be a non-negative integer, got ${options.idleTimeoutMs}`);
    this.address = address;
    this.#options = options;
    this.#what = what;
    this.#open = open;
    this.#onOpen = onOpen;
    this.#onEvict = onEvict;
    this.#socket = listenSocket(address, true, options.backlog ?? 64);
    this.#poller = native.pollerCreate(this.#socket.fd, () => this.#acceptAll());
    native.pollerStart(this.#poller, true, false);
    if (this.#idleTimeoutMs > 0) {
      this.#sweeper = setInterval(() => this.#closeIdle(), Math.min(1000, this.#idleTimeoutMs));
      this.#sweeper.unref();
    }
  }

  /** Connections held now, handshaking ones included. */
  get connections(): number {
    return this.#live.size + this.#handshaking.size;
  }

  /** The open connections. */
  get live(): ReadonlySet<C> {
    return this.#live;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** A connection closed: it no longer counts. */
  forget(connection: C): void {
    this.#live.delete(connection);
  }

  ref(keep: boolean): void {
    if (!this.#closed) native.pollerRef(this.#poller, keep);
  }

  /** Stops listening and aborts handshakes under way; open connections are their owner's to close. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    native.pollerClose(this.#poller);
    if (this.#sweeper) clearInterval(this.#sweeper);
    closeListeningSocket(this.#socket, this.address);
    if (this.#reserveFd !== null) closeFds([this.#reserveFd]);
    this.#reserveFd = null;
    for (const socket of this.#handshaking) socket.abort(fail('ERR_CLOSED', `the ${this.#what} closed during the handshake`));
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
        refuse(fd, 'ERR_RESOURCE_LIMIT', `the ${this.#what} holds its maximum of ${this.#maxConnections} connections (maxConnections); try again later`);
        this.#options.onConnectionError?.(fail('ERR_RESOURCE_LIMIT', `refused a connection: ${this.#maxConnections} connections held (maxConnections)`));
        continue;
      }
      const socket = new PacketSocket(fd);
      this.#handshaking.add(socket);
      this.#open(socket).then(
        (connection) => {
          this.#handshaking.delete(socket);
          this.#live.add(connection);
          this.#onOpen(connection);
        },
        (e) => {
          this.#handshaking.delete(socket);
          this.#options.onConnectionError?.(asError(e));
        },
      );
    }
  }

  /** At maxConnections: closes the connection idle longest, if it has been idle long enough. */
  #evictIdlest(): boolean {
    const now = performance.now();
    let idlest: C | null = null;
    let longest = EVICTABLE_IDLE_MS;
    for (const connection of this.#live) {
      const idle = connection.idleMs(now);
      if (idle >= longest) [idlest, longest] = [connection, idle];
    }
    if (!idlest) return false;
    this.#evict(idlest, `closed after ${Math.round(longest)} ms idle to make room: the ${this.#what} holds its maximum of ${this.#maxConnections} connections`);
    return true;
  }

  #closeIdle(): void {
    const now = performance.now();
    for (const connection of this.#live) {
      const idle = connection.idleMs(now);
      if (idle >= this.#idleTimeoutMs) this.#evict(connection, `closed after ${Math.round(idle)} ms idle (idleTimeoutMs ${this.#idleTimeoutMs})`);
    }
  }

  #evict(connection: C, why: string): void {
    const error = fail('ERR_TIMEOUT', why);
    this.#live.delete(connection);
    this.#onEvict(connection);
    connection.evict(error);
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
      refuse(fd, 'ERR_SYSCALL', `the ${this.#what} is out of file descriptors (errno ${error.errno}); try again later`);
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
}

function openReserve(): number | null {
  try {
    return openSync('/dev/null', 'r');
  } catch {
    return null;
  }
}

/** Tells a connection we will not serve it why, in one ERROR frame, and closes it. */
export function refuse(fd: number, code: ErrorCode, message: string): void {
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
