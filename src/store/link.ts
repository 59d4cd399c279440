// One connection between a table store and a client (docs/PROTOCOL.md §15.1): the §2-§4 rules
// (credentials, HELLO/WELCOME with capability `store`) on a PacketSocket, then frames handed to
// the owner. A channel cannot carry STORE frames, so the store and its clients ride on this instead.
import { ArrowShmError, fail, isErrorCode } from '../errors.js';
import { asError } from '../transport/channel.js';
import { checkIpcStream } from '../ipc/messages.js';
import { closeFds } from '../shm/fds.js';
import { mapReceivedSegment } from '../shm/segment.js';
import type { IpcLimits } from '../ipc/limits.js';
import { decodeFrame, encodeFrame, FrameFlags, FrameKind, PROTOCOL_VERSION, type Frame, type FrameInit, type KeyValues } from '../transport/frame.js';
import { checkHello, checkWelcome, helloMetadata, welcomeMetadata } from '../transport/handshake.js';
import { PacketSocket, type Datagram } from '../transport/socket.js';
import { ReceivedTable, type TableOrigin } from '../transport/received.js';

export const STORE_CAPABILITY = 'store';

/** The frames a store connection carries after the handshake (§15.1); GOODBYE is handled here. */
const AFTER_HANDSHAKE = new Set([FrameKind.Table, FrameKind.Ack, FrameKind.Release, FrameKind.Error, FrameKind.Store, FrameKind.Goodbye]);

export interface LinkOptions {
  /** Peer uids allowed (SO_PEERCRED). Default: this process's effective uid. */
  allowedUids?: number[];
  /** How long the handshake may take. Default 5000 ms. */
  handshakeTimeoutMs?: number;
  /** The largest IPC stream this side accepts (the store: the largest put). Default 4 GiB. */
  maxMessageBytes?: number;
}

export interface LinkEvents {
  /** The handshake is done: called before any later frame is handled. */
  onOpen?(link: StoreLink): void;
  /** A frame after the handshake. Only TABLE frames carry fds (checked already); the owner closes them. */
  onFrame(frame: Frame, fds: number[]): void;
  /** Called once, whatever closed the link. */
  onClose(error: ArrowShmError): void;
}

export class StoreLink {
  #socket: PacketSocket;
  #nextId = 1n;
  #open = false;
  #closeError: ArrowShmError | null = null;
  #events: LinkEvents | null = null;
  #queued = 0;
  readonly peer: { pid: number; uid: number; implementation: string };

  private constructor(socket: PacketSocket) {
    this.#socket = socket;
    const cred = socket.peerCredentials();
    this.peer = { pid: cred.pid, uid: cred.uid, implementation: '' };
  }

  /** Checks credentials and completes the handshake as `role`; `events` then receive every later frame. */
  static async open(socket: PacketSocket, role: 'listener' | 'connector', options: LinkOptions, events: LinkEvents, maxMessageBytes: number): Promise<StoreLink> {
    let link: StoreLink;
    try {
      link = new StoreLink(socket);
    } catch (e) {
      socket.close();
      throw e;
    }
    const allowed = options.allowedUids ?? [process.geteuid?.() ?? 0];
    if (!allowed.includes(link.peer.uid)) {
      const error = fail('ERR_PEER_CREDENTIALS', `peer uid ${link.peer.uid} (pid ${link.peer.pid}) is not allowed (allowed: ${allowed.join(', ')})`);
      if (role === 'listener') socket.sendNow(errorFrame(error, 0n, 1n));
      socket.close();
      throw error;
    }
    await new Promise<void>((resolve, reject) => {
      const timeoutMs = options.handshakeTimeoutMs ?? 5000;
      const timer = setTimeout(() => link.#fail(fail('ERR_TIMEOUT', `handshake not completed within ${timeoutMs} ms`), false), timeoutMs);
      const done = (error: ArrowShmError | null) => {
        clearTimeout(timer);
        if (error) reject(error);
        else resolve();
      };
      link.#events = {
        onFrame: (frame) => {
          try {
            link.#handshake(frame, role, maxMessageBytes);
            link.#open = true;
            events.onOpen?.(link);
            link.#events = events;
            done(null);
          } catch (e) {
            link.#fail(asError(e), frame.kind !== FrameKind.Error);
          }
        },
        onClose: (error) => done(error),
      };
      socket.start({ onDatagram: (d) => link.#onDatagram(d), onClose: (e) => link.#fail(e ?? fail('ERR_PEER_CLOSED', 'the peer closed the connection'), false) });
      if (role === 'connector') {
        socket.send(encodeFrame({ kind: FrameKind.Hello, messageId: link.#takeId(), metadata: helloMetadata([STORE_CAPABILITY]) })).catch(() => {
          // a refusal's ERROR may be queued for us: the read path reports it (or the hang-up)
        });
      }
    });
    return link;
  }

  #handshake(frame: Frame, role: 'listener' | 'connector', maxMessageBytes: number): void {
    if (role === 'listener') {
      if (frame.kind !== FrameKind.Hello) throw fail('ERR_PROTOCOL', `expected HELLO, got ${FrameKind[frame.kind]}`);
      const agreed = checkHello(frame.metadata);
      if (!agreed.capabilities.includes(STORE_CAPABILITY)) throw fail('ERR_PROTOCOL', 'this is a table store: the HELLO must list the capability "store" (§15.1)');
      this.peer.implementation = agreed.implementation;
      this.#socket.send(encodeFrame({ kind: FrameKind.Welcome, messageId: this.#takeId(), correlationId: frame.messageId, metadata: welcomeMetadata(agreed.version, [STORE_CAPABILITY], maxMessageBytes) })).catch(() => {});
      return;
    }
    if (frame.kind === FrameKind.Error) throw remoteError(frame.metadata);
    if (frame.kind !== FrameKind.Welcome) throw fail('ERR_PROTOCOL', `expected WELCOME, got ${FrameKind[frame.kind]}`);
    const agreed = checkWelcome(frame.metadata);
    if (!agreed.capabilities.includes(STORE_CAPABILITY)) throw fail('ERR_PROTOCOL', 'the listener is not a table store (its WELCOME does not list "store")');
    this.peer.implementation = agreed.implementation;
  }

  get closed(): boolean {
    return this.#closeError !== null;
  }

  get closeError(): ArrowShmError | null {
    return this.#closeError;
  }

  /** Frames handed to the socket and not yet written (a client that does not read its socket). */
  get queued(): number {
    return this.#queued;
  }

  get lastActivity(): number {
    return this.#socket.lastActivity;
  }

  /** Sends a frame (with `fds`, which stay the caller's) and returns its message id; `sent` settles once it left. */
  send(init: Omit<FrameInit, 'messageId'>, fds: number[] = []): { id: bigint; sent: Promise<void> } {
    if (this.#closeError) {
      const sent = Promise.reject(this.#closeError);
      sent.catch(() => {});
      return { id: 0n, sent };
    }
    const id = this.#takeId();
    this.#queued++;
    const sent = this.#socket.send(encodeFrame({ ...init, messageId: id }), fds).finally(() => this.#queued--);
    sent.catch(() => {});
    return { id, sent };
  }

  /** An ERROR answering `correlationId` (flag RESPONSE when it answers a request). */
  sendError(error: ArrowShmError, correlationId: bigint, response: boolean): void {
    this.send({ kind: FrameKind.Error, flags: response ? FrameFlags.RESPONSE : 0, correlationId, metadata: { code: error.code, message: error.message.slice(0, 4096) } });
  }

  /**
   * §5.1 for a TABLE frame on this link, sealed policy: maps the fd read-only (closing it in any
   * case), validates the IPC stream, and returns the received table (a LEASED one tells `origin`).
   */
  mapTable(frame: Frame, fds: number[], origin: TableOrigin | null, maxMessageBytes: number, ipcLimits?: Partial<IpcLimits>): ReceivedTable {
    if (fds.length !== 1 || frame.fdCount !== 1) {
      closeFds(fds);
      throw fail('ERR_PROTOCOL', `TABLE frame must carry exactly 1 fd, got ${fds.length} (fd_count ${frame.fdCount})`);
    }
    const mapping = mapReceivedSegment(fds[0]!, { policy: 'sealed', ipcOffset: frame.ipcOffset, ipcLength: frame.ipcLength, maxMessageBytes });
    try {
      const offset = Number(frame.ipcOffset);
      const length = Number(frame.ipcLength);
      const checked = checkIpcStream(mapping.bytes(offset, length), ipcLimits);
      return new ReceivedTable(origin, frame.messageId, frame.flags, frame.metadata, mapping, offset, length, checked);
    } catch (e) {
      mapping.release();
      throw e;
    }
  }

  ref(keep: boolean): void {
    this.#socket.ref(keep);
  }

  /** Says GOODBYE and closes. */
  close(): void {
    if (this.#closeError) return;
    if (this.#open) this.#socket.sendNow(encodeFrame({ kind: FrameKind.Goodbye, messageId: this.#takeId() }));
    this.#fail(fail('ERR_CLOSED', 'the connection was closed'), false);
  }

  /** Closes the link telling the peer why (an ERROR with correlation 0). */
  abort(error: ArrowShmError): void {
    this.#fail(error, true);
  }

  #takeId(): bigint {
    return this.#nextId++;
  }

  #onDatagram(d: Datagram): void {
    let frame: Frame;
    try {
      if (d.truncated) throw fail('ERR_PROTOCOL', 'frame larger than 65536 bytes');
      frame = decodeFrame(d.bytes);
      if (d.controlTruncated) {
        // One fd on a TABLE that did not arrive: this process is out of fds (RLIMIT_NOFILE), a
        // refusal of that message; more fds than a frame may carry is the sender's fault.
        if (!this.#open || frame.kind !== FrameKind.Table || frame.fdCount !== 1) throw fail('ERR_PROTOCOL', `too many file descriptors attached to one frame (${frame.fdCount})`);
        closeFds(d.fds);
        this.sendError(fail('ERR_RESOURCE_LIMIT', 'this side is out of file descriptors (RLIMIT_NOFILE): the table was not taken'), frame.messageId, (frame.flags & FrameFlags.REQUEST) !== 0);
        return;
      }
      if (this.#open && frame.version !== PROTOCOL_VERSION) throw fail('ERR_PROTOCOL_VERSION', `frame of protocol version ${frame.version}, agreed version ${PROTOCOL_VERSION}`);
      if (d.fds.length > 0 && frame.kind !== FrameKind.Table) throw fail('ERR_PROTOCOL', `${FrameKind[frame.kind]} frame carries ${d.fds.length} file descriptors`);
      if (this.#open && !AFTER_HANDSHAKE.has(frame.kind)) throw fail('ERR_PROTOCOL', `unexpected ${FrameKind[frame.kind]} frame on a store connection`);
    } catch (e) {
      closeFds(d.fds);
      this.#fail(asError(e), true);
      return;
    }
    if (frame.kind === FrameKind.Goodbye) {
      this.#fail(fail('ERR_PEER_CLOSED', 'the peer closed the connection'), false);
      return;
    }
    if (this.#open && frame.kind === FrameKind.Error && frame.correlationId === 0n) {
      this.#fail(remoteError(frame.metadata), false);
      return;
    }
    try {
      this.#events?.onFrame(frame, d.fds);
    } catch (e) {
      closeFds(d.fds);
      this.#fail(asError(e), true);
    }
  }

  #fail(error: ArrowShmError, tellPeer: boolean): void {
    if (this.#closeError) return;
    this.#closeError = error;
    if (tellPeer) this.#socket.sendNow(errorFrame(error, 0n, this.#takeId()));
    this.#socket.close();
    this.#events?.onClose(error);
  }
}

function errorFrame(error: ArrowShmError, correlationId: bigint, messageId: bigint): Uint8Array {
  return encodeFrame({ kind: FrameKind.Error, messageId, correlationId, metadata: { code: error.code, message: error.message.slice(0, 4096) } });
}

/** The typed error an ERROR frame reports. */
export function remoteError(kv: KeyValues): ArrowShmError {
  const code = kv.code ?? 'ERR_REMOTE';
  return new ArrowShmError(isErrorCode(code) ? code : 'ERR_REMOTE', `peer reported ${code}: ${kv.message ?? ''}`, undefined, undefined, { remote: true });
}
