// A non-blocking AF_UNIX socket driven by libuv readiness events: datagrams (SOCK_SEQPACKET)
// with attached fds in, queued sends out. Nothing here blocks the event loop.
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
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

const RECEIVE_BUFFER = 65536 + 1; // one byte more than a frame may have, so an oversize frame shows

export class PacketSocket {
  #fd: number;
  #poller: PollerHandle;
  #events: PacketSocketEvents | null = null;
  #sendQueue: PendingSend[] = [];
  #buffer = new Uint8Array(RECEIVE_BUFFER);
  #reading = false;
  #closed = false;

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

  pause(): void {
    this.#reading = false;
    this.#updatePoll();
  }

  /** Whether this socket keeps the Node process alive (like net.Socket#ref/unref). */
  ref(keep: boolean): void {
    if (!this.#closed) native.pollerRef(this.#poller, keep);
  }

  send(bytes: Uint8Array, fds: number[] = []): Promise<void> {
    if (this.#closed) return Promise.reject(fail('ERR_CLOSED', 'the socket is closed'));
    return new Promise((resolve, reject) => {
      this.#sendQueue.push({ bytes, fds, resolve, reject });
      if (this.#sendQueue.length === 1) this.#flush();
    });
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
        next.reject(err.errno === 32 /* EPIPE */ || err.errno === 104 /* ECONNRESET */ ? fail('ERR_PEER_CLOSED', 'the peer closed the connection', e) : e);
        continue;
      }
      if (sent < 0) break; // socket buffer full: wait for writable
      this.#sendQueue.shift();
      next.resolve();
    }
    this.#updatePoll();
  }

  #updatePoll(): void {
    if (this.#closed) return;
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
        this.#shutdown(err.errno === 104 ? null : err);
        return;
      }
      if (got === null) return;
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

/**
 * A listening socket at `address` (a path, or "@name"). A path gets mode 0600 between bind and
 * listen, where no connection can arrive yet, so there is no window; a stale socket file is
 * replaced, anything else at the path is refused.
 */
export function listenSocket(address: string, seqpacket: boolean, backlog: number): number {
  const isPath = !address.startsWith('@');
  if (isPath) removeStaleSocket(address);
  const fd = native.socket(seqpacket);
  try {
    native.bind(fd, address);
    if (isPath) chmodSync(address, 0o600);
    native.listen(fd, backlog);
  } catch (e) {
    native.close(fd);
    throw e;
  }
  return fd;
}

/** Closes a socket from listenSocket() and removes its file. */
export function closeListeningSocket(fd: number, address: string): void {
  native.close(fd);
  if (address.startsWith('@')) return;
  try {
    unlinkSync(address);
  } catch {
    // already gone
  }
}

/** Removes a leftover socket file at `path`; refuses to touch anything that is not a socket. */
export function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw fail('ERR_INVALID_ARGUMENT', `${path} exists and is not a socket; refusing to replace it`);
  unlinkSync(path);
}

export function describeConnectError(e: unknown, address: string): unknown {
  if (e instanceof ArrowShmError && e.syscall === 'connect') {
    if (e.errno === 2) return new ArrowShmError('ERR_SYSCALL', `no socket at ${address} (ENOENT): is the receiver running?`, e.errno, e.syscall);
    if (e.errno === 111) return new ArrowShmError('ERR_SYSCALL', `nobody is listening on ${address} (ECONNREFUSED)`, e.errno, e.syscall);
    if (e.errno === 13) return new ArrowShmError('ERR_SYSCALL', `permission denied connecting to ${address} (EACCES)`, e.errno, e.syscall);
    if (e.errno === 91) return new ArrowShmError('ERR_SYSCALL', `${address} is not a socket of this kind (EPROTOTYPE)`, e.errno, e.syscall);
  }
  return e;
}
