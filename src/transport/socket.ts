// A non-blocking AF_UNIX socket driven by libuv readiness events: datagrams (SOCK_SEQPACKET)
// with attached fds in, queued sends out. Nothing here blocks the event loop.
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { constants as os } from 'node:os';
import { ArrowShmError, fail } from '../errors.js';
import { constants, native, type Credentials, type PollerHandle } from '../native.js';

export interface Datagram {
  bytes: Uint8Array;
  fds: number[];
  truncated: boolean;
  controlTruncated: boolean;
}

export interface PacketSocketEvents {
  onDatagram(datagram: Datagram): void;
  /** The peer hung up, or the socket failed. Called once. */
  onClose(error: ArrowShmError | null): void;
}

interface PendingSend {
  bytes: Uint8Array;
  fds: number[];
  resolve: () => void;
  reject: (e: unknown) => void;
}

const ignore = () => {};
const RECEIVE_BUFFER = 65536 + 1; // one byte more than a frame may have, so an oversize frame shows

export class PacketSocket {
  #fd: number;
  #poller: PollerHandle;
  #events: PacketSocketEvents | null = null;
  #sendQueue: PendingSend[] = [];
  #buffer = new Uint8Array(RECEIVE_BUFFER);
  #reading = false;
  /** What the poller watches now: 1 readable, 2 writable (-1 before the first start). */
  #polling = -1;
  #closed = false;
  #lastActivity = performance.now();

  constructor(fd: number) {
    this.#fd = fd;
    this.#poller = native.pollerCreate(fd, (status, events) => this.#onReady(status, events));
  }

  get fd(): number {
    return this.#fd;
  }

  get closed(): boolean {
    return this.#closed;
  }

  peerCredentials(): Credentials {
    return native.peerCredentials(this.#fd);
  }

  /** Starts delivering datagrams. */
  start(events: PacketSocketEvents): void {
    this.#events = events;
    this.#reading = true;
    this.#updatePoll();
    // Data may already be waiting (e.g. HELLO sent right after connect).
    queueMicrotask(() => this.#drain());
  }

  /** Stops reading: datagrams stay in the kernel's buffer, which pushes back on the sender. */
  pause(): void {
    this.#reading = false;
    this.#updatePoll();
  }

  resume(): void {
    if (this.#reading || this.#closed || !this.#events) return;
    this.#reading = true;
    this.#updatePoll();
    queueMicrotask(() => this.#drain());
  }

  get paused(): boolean {
    return !this.#reading;
  }

  /** When a datagram last came in or went out (performance.now()). */
  get lastActivity(): number {
    return this.#lastActivity;
  }

  /** Whether this socket keeps the Node process alive (like net.Socket#ref/unref). */
  ref(keep: boolean): void {
    if (!this.#closed) native.pollerRef(this.#poller, keep);
  }

  /** A last word before closing: sent now, ahead of anything queued, or not at all. */
  sendNow(bytes: Uint8Array): void {
    if (this.#closed) return;
    try {
      native.sendmsg(this.#fd, bytes, []);
    } catch {
      // the peer may be gone already
    }
  }

  send(bytes: Uint8Array, fds: number[] = []): Promise<void> {
    if (this.#closed) return Promise.reject(fail('ERR_CLOSED', 'the socket is closed'));
    return new Promise((resolve, reject) => this.#enqueue({ bytes, fds, resolve, reject }));
  }

  /** send() for a frame nobody waits on (ACK, RELEASE): no promise; a failure is dropped (the read side sees the hang-up). */
  post(bytes: Uint8Array): void {
    if (!this.#closed) this.#enqueue({ bytes, fds: [], resolve: ignore, reject: ignore });
  }

  #enqueue(pending: PendingSend): void {
    this.#sendQueue.push(pending);
    if (this.#sendQueue.length === 1) this.#flush();
  }

  #flush(): void {
    while (this.#sendQueue.length > 0 && !this.#closed) {
      const next = this.#sendQueue[0]!;
      let sent: number;
      try {
        sent = native.sendmsg(this.#fd, next.bytes, next.fds);
      } catch (e) {
        this.#sendQueue.shift();
        const err = e as ArrowShmError;
        next.reject(err.errno === os.errno.EPIPE || err.errno === os.errno.ECONNRESET ? fail('ERR_PEER_CLOSED', 'the peer closed the connection', e) : e);
        continue;
      }
      if (sent < 0) break; // socket buffer full: wait for writable
      this.#lastActivity = performance.now();
      this.#sendQueue.shift();
      next.resolve();
    }
    this.#updatePoll();
  }

  #updatePoll(): void {
    if (this.#closed) return;
    // libuv re-registers the fd (epoll DEL + ADD) on every uv_poll_start: only call it on a change.
    const wanted = (this.#reading ? 1 : 0) | (this.#sendQueue.length > 0 ? 2 : 0);
    if (wanted === this.#polling) return;
    this.#polling = wanted;
    native.pollerStart(this.#poller, this.#reading, this.#sendQueue.length > 0);
  }

  #onReady(status: number, events: number): void {
    if (this.#closed) return;
    if (status < 0) {
      // libuv reports POLLERR as UV_EBADF: on a UNIX socket that means the peer is gone.
      // Read what is still queued (it may explain more), then end.
      this.#drain();
      this.#shutdown(status === -9 ? null : new ArrowShmError('ERR_SYSCALL', `poll failed (${status})`, -status, 'uv_poll'));
      return;
    }
    if (events & constants.UV_WRITABLE) this.#flush();
    if (events & (constants.UV_READABLE | constants.UV_DISCONNECT)) this.#drain();
  }

  #drain(): void {
    while (this.#reading && !this.#closed) {
      let got;
      try {
        got = native.recvmsg(this.#fd, this.#buffer);
      } catch (e) {
        const err = e as ArrowShmError;
        this.#shutdown(err.errno === os.errno.ECONNRESET ? null : err);
        return;
      }
      if (got === null) return;
      this.#lastActivity = performance.now();
      if (got.bytes === 0 && got.fds.length === 0) {
        this.#shutdown(null);
        return;
      }
      const datagram: Datagram = {
        bytes: this.#buffer.slice(0, Math.min(got.bytes, RECEIVE_BUFFER)),
        fds: got.fds,
        truncated: got.truncated || got.bytes >= RECEIVE_BUFFER,
        controlTruncated: got.controlTruncated,
      };
      if (!this.#events) {
        for (const fd of got.fds) native.close(fd);
        continue;
      }
      this.#events.onDatagram(datagram);
    }
  }

  #shutdown(error: ArrowShmError | null): void {
    if (this.#closed) return;
    this.close();
    this.#events?.onClose(error);
  }

  /** Closes the socket as if it had failed with `error`: the owner hears of it through onClose. */
  abort(error: ArrowShmError): void {
    this.#shutdown(error);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    native.pollerClose(this.#poller);
    native.close(this.#fd);
    const pending = this.#sendQueue.splice(0);
    for (const p of pending) p.reject(fail('ERR_PEER_CLOSED', 'the connection closed before the frame was sent'));
  }
}

/**
 * Waits (without blocking the event loop) until `fd` is readable, or writable, once.
 * ERR_TIMEOUT with `what` after `timeoutMs`; no limit when it is undefined.
 */
export function waitForFd(fd: number, writable: boolean, timeoutMs: number | undefined, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const poller = native.pollerCreate(fd, () => {
      native.pollerClose(poller);
      if (timer) clearTimeout(timer);
      resolve();
    });
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            native.pollerClose(poller);
            reject(fail('ERR_TIMEOUT', `${what} within ${timeoutMs} ms`));
          }, timeoutMs);
    native.pollerStart(poller, !writable, writable);
  });
}

/** Connects a non-blocking socket, waiting (without blocking) if the listener's backlog is full. */
export async function connectSocket(address: string, seqpacket = true, timeoutMs?: number): Promise<number> {
  const fd = native.socket(seqpacket);
  try {
    if (native.connect(fd, address) !== 0) {
      await waitForFd(fd, true, timeoutMs, `could not connect to ${address}`);
      const err = native.socketError(fd);
      if (err !== 0) throw new ArrowShmError('ERR_SYSCALL', `connect to ${address} failed (errno ${err})`, err, 'connect');
    }
    return fd;
  } catch (e) {
    native.close(fd);
    throw describeConnectError(e, address);
  }
}

/** Which file a listening socket's path is, so that closing it never removes another's. */
export interface SocketIdentity {
  dev: number;
  ino: number;
}

export interface ListeningSocket {
  fd: number;
  /** null for an abstract address ("@name"). */
  identity: SocketIdentity | null;
}

/**
 * A listening socket at `address` (a path, or "@name"). A path gets mode 0600 between bind and
 * listen, where no connection can arrive yet, so there is no window. A stale socket file (nobody
 * answers a connect) is replaced; a live one is ERR_ADDRESS_IN_USE; anything else is refused.
 */
export function listenSocket(address: string, seqpacket: boolean, backlog: number): ListeningSocket {
  const isPath = !address.startsWith('@');
  if (isPath) removeStaleSocket(address);
  const fd = native.socket(seqpacket);
  let identity: SocketIdentity | null = null;
  try {
    try {
      native.bind(fd, address);
    } catch (e) {
      if (e instanceof ArrowShmError && e.errno === os.errno.EADDRINUSE) throw new ArrowShmError('ERR_ADDRESS_IN_USE', `${address} is in use by another listener`, e.errno, e.syscall);
      throw e;
    }
    if (isPath) {
      chmodSync(address, 0o600);
      const st = lstatSync(address);
      identity = { dev: st.dev, ino: st.ino };
    }
    native.listen(fd, backlog);
  } catch (e) {
    native.close(fd);
    throw e;
  }
  return { fd, identity };
}

/** Closes a socket from listenSocket() and removes its file, if the path still names that file. */
export function closeListeningSocket(socket: ListeningSocket, address: string): void {
  native.close(socket.fd);
  if (!socket.identity) return;
  try {
    const st = lstatSync(address);
    if (st.dev === socket.identity.dev && st.ino === socket.identity.ino) unlinkSync(address);
  } catch {
    // already gone
  }
}

/** Removes a leftover socket file at `path`: refuses anything that is not a socket, or a socket someone answers on. */
export function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw fail('ERR_INVALID_ARGUMENT', `${path} exists and is not a socket; refusing to replace it`);
  if (socketAnswers(path)) throw new ArrowShmError('ERR_ADDRESS_IN_USE', `another process is listening on ${path}`);
  unlinkSync(path);
}

/** Whether a listener answers at `path` (of either socket type). ECONNREFUSED means stale. */
function socketAnswers(path: string): boolean {
  for (const seqpacket of [true, false]) {
    const fd = native.socket(seqpacket);
    try {
      native.connect(fd, path); // 0, or -1 while a full backlog makes it wait: both mean alive
      return true;
    } catch (e) {
      const errno = e instanceof ArrowShmError ? e.errno : undefined;
      if (errno === os.errno.EPROTOTYPE) continue; // a listener of the other socket type
      if (errno === os.errno.ECONNREFUSED || errno === os.errno.ENOENT) return false;
      throw e;
    } finally {
      native.close(fd);
    }
  }
  return false;
}

export function describeConnectError(e: unknown, address: string): unknown {
  if (e instanceof ArrowShmError && e.syscall === 'connect') {
    if (e.errno === os.errno.ENOENT) return new ArrowShmError('ERR_SYSCALL', `no socket at ${address} (ENOENT): is the receiver running?`, e.errno, e.syscall);
    if (e.errno === os.errno.ECONNREFUSED) return new ArrowShmError('ERR_SYSCALL', `nobody is listening on ${address} (ECONNREFUSED)`, e.errno, e.syscall);
    if (e.errno === os.errno.EACCES) return new ArrowShmError('ERR_SYSCALL', `permission denied connecting to ${address} (EACCES)`, e.errno, e.syscall);
    if (e.errno === os.errno.EPROTOTYPE) return new ArrowShmError('ERR_SYSCALL', `${address} is not a socket of this kind (EPROTOTYPE)`, e.errno, e.syscall);
  }
  return e;
}
