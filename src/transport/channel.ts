// Channels: a connection between two arrow-shm peers over a UNIX SOCK_SEQPACKET socket
// (docs/PROTOCOL.md). Either side may send tables; the listener/connector roles only matter for
// the handshake. This file is the channel's state machine and frame dispatch; the handshake's
// contents, received tables, options and the listener live beside it.
import { constants as osConstants } from 'node:os';
import { ArrowShmError, fail, isErrorCode } from '../errors.js';
import { AsyncQueue } from '../queue.js';
import { withTimeout } from '../timeout.js';
import { traceStage } from '../trace.js';
import { SchemaCache, checkIpcStream, validateIpcStream } from '../ipc/messages.js';
import { PreparedTable, type Sendable } from '../ipc/prepared.js';
import { layoutIpcStream, writeIpcLayout, type IpcLayout } from '../ipc/writer.js';
import { closeFds } from '../shm/fds.js';
import { LeasePool, SparePool } from '../shm/pool.js';
import { mapReceivedSegment, Segment, type SealPolicy } from '../shm/segment.js';
import { decodeFrame, encodeFrame, FRAME_FDS, FrameFlags, FrameKind, inlineRoom, PROTOCOL_VERSION, type Frame, type FrameInit, type InlineStream, type KeyValues } from './frame.js';
import { checkHello, checkWelcome, helloMetadata, welcomeMetadata, type Agreement } from './handshake.js';
import { normalizeOptions, type ChannelOptions, type PeerInfo, type SendOptions } from './options.js';
import { FrameMemory, ReceivedTable } from './received.js';
import { StreamLink } from './stream-link.js';
import { PacketSocket, connectSocket, type Datagram } from './socket.js';

/** Room for fds in every receive (docs/PROTOCOL.md §9: at least 16). */
const MAX_FRAME_FDS = 16;

interface Pending<T> {
  resolve: (value: T) => void;
  reject: (e: unknown) => void;
}

type State = 'handshake' | 'open' | 'closed';

export class Channel {
  #socket: PacketSocket;
  #options: Required<ChannelOptions>;
  #role: 'listener' | 'connector';
  #state: State = 'handshake';
  #nextId = 1n;
  #version = PROTOCOL_VERSION;
  #capabilities: string[] = [];
  #peer: PeerInfo;
  #ready: Pending<void> & { promise: Promise<void> };
  #acks = new Map<bigint, Pending<void>>();
  #requests = new Map<bigint, Pending<ReceivedTable>>();
  #inbox = new AsyncQueue<ReceivedTable>();
  #closeError: ArrowShmError | null = null;
  #spares: SparePool | null;
  #leasePool = new LeasePool({ perClass: 4, maxBytes: 4 * 1024 ** 3 });
  #leases = new Map<bigint, Segment>();
  #leasedBytes = 0;
  #inboxBytes = 0;
  /** Schema messages this channel received and checked: a peer sends the same one every time. */
  #schemas = new SchemaCache();
  #streams: StreamLink;
  /** Called once the handshake is done, before any later frame is handled. */
  #onOpen: ((channel: Channel) => void) | undefined;
  #closeListeners = new Set<(error: ArrowShmError) => void>();

  private constructor(socket: PacketSocket, role: 'listener' | 'connector', options: ChannelOptions, onOpen?: (channel: Channel) => void) {
    this.#socket = socket;
    this.#role = role;
    this.#options = normalizeOptions(options);
    this.#onOpen = onOpen;
    const channel = this;
    this.#streams = new StreamLink(
      {
        get peer() {
          return channel.#peer;
        },
        get open() {
          return channel.#state === 'open';
        },
        get closeError() {
          return channel.#closeError;
        },
        get socketFd() {
          return channel.#state === 'open' ? socket.fd : -1;
        },
        sendStreamFrame: (init, fds, ackTimeoutMs) => this.#sendStreamFrame(init, fds, ackTimeoutMs),
        sendError: (code, message, correlationId) => this.sendError(code, message, correlationId),
        onClose: (listener) => this.onClose(listener),
        close: () => this.close(),
      },
      this.#options.maxStreamOffers,
      this.#options.ipcLimits,
    );
    this.#spares = this.#options.spareSegments > 0 ? new SparePool({ perClass: this.#options.spareSegments, maxBytes: 1024 ** 3 }) : null;
    const cred = socket.peerCredentials();
    this.#peer = { ...cred, version: 0, implementation: '', capabilities: [] };
    let resolve!: () => void, reject!: (e: unknown) => void;
    const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
    promise.catch(() => {});
    this.#ready = { promise, resolve, reject };
  }

  /**
   * @internal Wraps an accepted or connected socket and completes the handshake; `onOpen` sees the
   * channel before any frame after the handshake is handled.
   */
  static async open(socket: PacketSocket, role: 'listener' | 'connector', options: ChannelOptions, onOpen?: (channel: Channel) => void): Promise<Channel> {
    let channel: Channel;
    try {
      channel = new Channel(socket, role, options, onOpen);
    } catch (e) {
      socket.close();
      throw e;
    }
    const allowed = channel.#options.allowedUids;
    if (!allowed.includes(channel.#peer.uid)) {
      const error = fail('ERR_PEER_CREDENTIALS', `peer uid ${channel.#peer.uid} (pid ${channel.#peer.pid}) is not allowed (allowed: ${allowed.join(', ')})`);
      if (role === 'listener') await channel.sendError(error.code, error.message, 0n).catch(() => {});
      channel.#fatal(error, false);
      throw error;
    }
    socket.start({ onDatagram: (d) => channel.#onDatagram(d), onClose: (e) => channel.#onSocketClose(e) });
    const timer = setTimeout(() => channel.#fatal(fail('ERR_TIMEOUT', `handshake not completed within ${channel.#options.handshakeTimeoutMs} ms`), false), channel.#options.handshakeTimeoutMs);
    if (role === 'connector') {
      const hello = encodeFrame({ kind: FrameKind.Hello, messageId: channel.#takeId(), metadata: helloMetadata(channel.#localCapabilities()) });
      // A listener that refuses us may have closed already: then its ERROR frame, still queued on
      // our side, explains why, and the read path reports it (or the hang-up) instead.
      socket.send(hello).catch((e) => {
        const error = asError(e);
        if (error.code !== 'ERR_PEER_CLOSED') channel.#fatal(error, false);
      });
    }
    try {
      await channel.#ready.promise;
    } finally {
      clearTimeout(timer);
    }
    return channel;
  }

  /** Shared memory; a `FlightChannel` says 'grpc'. */
  get transport(): 'shm' {
    return 'shm';
  }

  get peer(): PeerInfo {
    return this.#peer;
  }

  get closed(): boolean {
    return this.#state === 'closed';
  }

  /** Sends a table (copied once into a new sealed segment), raw IPC stream bytes, or a PreparedTable; resolves when the peer acknowledged it. */
  send(data: Sendable, options: SendOptions = {}): Promise<void> {
    return this.sendFrameWithTable(data, options, 0, 0n);
  }

  /** Sends a request and resolves with the peer's response (or rejects with its error). */
  async request(data: Sendable, options: SendOptions = {}): Promise<ReceivedTable> {
    let pending!: Pending<ReceivedTable>;
    const response = new Promise<ReceivedTable>((resolve, reject) => (pending = { resolve, reject }));
    response.catch(() => {});
    let id: bigint | undefined;
    const register = (frameId: bigint) => this.#requests.set((id = frameId), pending);
    try {
      await this.sendFrameWithTable(data, { metadata: options.metadata }, FrameFlags.REQUEST, 0n, register);
      return await withTimeout(response, options.timeoutMs, 'no response');
    } finally {
      if (id !== undefined) this.#requests.delete(id);
    }
  }

  /** The next received message (requests included). Rejects with ERR_PEER_CLOSED once the peer is gone. */
  async receive(): Promise<ReceivedTable> {
    const next = await this.#next();
    if (!next) throw this.#closeError ?? fail('ERR_PEER_CLOSED', 'the peer closed the channel');
    return next;
  }

  /** Iterates received messages until the peer closes the channel cleanly. */
  async *[Symbol.asyncIterator](): AsyncGenerator<ReceivedTable, void, undefined> {
    for (;;) {
      const next = await this.#next();
      if (!next) {
        if (this.#closeError && this.#closeError.code !== 'ERR_PEER_CLOSED') throw this.#closeError;
        return;
      }
      yield next;
    }
  }

  /** The link streams run on (src/stream: `StreamWriter.open`, `StreamReader.accept`, publications). */
  get streams(): StreamLink {
    return this.#streams;
  }

  /** @internal Calls `listener` once when the channel closes, for whatever reason. Returns an unsubscribe. */
  onClose(listener: (error: ArrowShmError) => void): () => void {
    if (this.#state === 'closed') {
      const error = this.#closeError!;
      queueMicrotask(() => listener(error));
      return () => {};
    }
    this.#closeListeners.add(listener);
    return () => this.#closeListeners.delete(listener);
  }

  /**
   * Sends a stream frame with `fds` (which stay the caller's). With `ackTimeoutMs`, `acked`
   * resolves on the peer's ACK and rejects on its ERROR.
   */
  #sendStreamFrame(init: Omit<FrameInit, 'messageId'>, fds: number[], ackTimeoutMs?: number): { id: bigint; sent: Promise<void>; acked: Promise<void> } {
    if (this.#state !== 'open') {
      const error = this.#closeError ?? fail('ERR_CLOSED', 'the channel is not open');
      const rejected = Promise.reject(error);
      rejected.catch(() => {});
      return { id: 0n, sent: rejected, acked: rejected };
    }
    const id = this.#takeId();
    let acked: Promise<void> = Promise.resolve();
    if (ackTimeoutMs !== undefined) {
      const pending = new Promise<void>((resolve, reject) => this.#acks.set(id, { resolve, reject }));
      acked = withTimeout(pending, ackTimeoutMs, `stream frame ${id} was not acknowledged`).finally(() => this.#acks.delete(id));
      acked.catch(() => {});
    }
    const sent = this.#socket.send(encodeFrame({ ...init, messageId: id }), fds);
    sent.catch(() => {});
    return { id, sent, acked };
  }

  /** Keeps (default) or stops keeping the Node process alive while the channel is open. */
  ref(keep = true): this {
    this.#socket.ref(keep);
    return this;
  }

  /** Closes the channel: says GOODBYE, fails pending sends, releases unreceived messages. */
  close(): void {
    if (this.#state === 'closed') return;
    if (this.#state === 'open') this.#socket.sendNow(encodeFrame({ kind: FrameKind.Goodbye, messageId: this.#takeId() }));
    this.#fatal(fail('ERR_CLOSED', 'the channel was closed'), false);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  // -------------------------------------------------------------------------------------------

  /**
   * @internal Sends a TABLE frame: inline when the IPC stream fits in the frame and the peer takes
   * inline tables (§5.3), else in a segment. `onId` learns the frame's message id before the frame
   * leaves (requests wait on it).
   */
  async sendFrameWithTable(data: Sendable, options: SendOptions, flags: number, correlationId: bigint, onId?: (id: bigint) => void): Promise<void> {
    if (this.#state !== 'open') throw this.#closeError ?? fail('ERR_CLOSED', 'the channel is not open');
    if (data instanceof PreparedTable) return this.#sendTableFrame({ fd: data.segment.fd, ipcOffset: data.ipcOffset, ipcLength: data.ipcLength }, flags, correlationId, options, undefined, { registered: (id) => onId?.(id) });
    const source = data instanceof Uint8Array ? data : layoutIpcStream(data);
    if (source instanceof Uint8Array) validateIpcStream(source);
    // inlineRoom encodes the metadata: only asked when the stream could fit at all.
    if (this.#peer.capabilities.includes('inline') && source.byteLength <= this.#options.maxInlineBytes && source.byteLength <= inlineRoom(options.metadata)) {
      const inline: InlineStream = { byteLength: source.byteLength, writeInto: (target) => (source instanceof Uint8Array ? target.set(source) : writeIpcLayout(source, target)) };
      return this.#sendTableFrame({ inline }, flags | FrameFlags.INLINE, correlationId, options, undefined, { registered: (id) => onId?.(id) });
    }
    if (this.#options.lease && this.#peer.capabilities.includes('lease') && this.#leases.size < this.#options.maxLeases) {
      const leased = this.#sendLeased(source, options, flags, correlationId, onId);
      if (leased) return leased;
    }
    const prepared = PreparedTable.write(source, this.#spares, true); // raw bytes were checked above
    // A segment made for this send is closed as soon as its fd is in flight (or the send failed).
    const closeOwn = () => prepared.close();
    try {
      return await this.#sendTableFrame({ fd: prepared.segment.fd, ipcLength: prepared.ipcLength }, flags, correlationId, options, closeOwn, { registered: (id) => onId?.(id) });
    } finally {
      closeOwn();
    }
  }

  /**
   * §6.2: copy into a warm leased segment; it returns to the pool when the peer sends RELEASE.
   * Null when that would hold more than maxLeasedBytes: the caller sends it sealed instead.
   */
  #sendLeased(source: IpcLayout | Uint8Array, options: SendOptions, flags: number, correlationId: bigint, onId?: (id: bigint) => void): Promise<void> | null {
    const length = source.byteLength;
    if (this.#leasedBytes + length > this.#options.maxLeasedBytes) return null;
    const segment = this.#leasePool.acquire(length);
    const target = segment.writableBytes();
    if (source instanceof Uint8Array) target.set(source);
    else writeIpcLayout(source, target, true);
    return this.#sendTableFrame({ fd: segment.fd, ipcLength: length }, flags | FrameFlags.LEASED, correlationId, options, undefined, {
      registered: (id) => {
        this.#leases.set(id, segment);
        this.#leasedBytes += segment.size;
        onId?.(id);
      },
      // The frame never left: nobody else maps the segment, it can be reused.
      failed: (id) => this.#returnLease(id),
    });
  }

  /** A leased segment the peer released, refused, or never got: back to the pool. */
  #returnLease(id: bigint): void {
    const segment = this.#leases.get(id);
    if (!segment) return;
    this.#leases.delete(id);
    this.#leasedBytes -= segment.size;
    this.#leasePool.giveBack(segment);
  }

  /**
   * Sends one TABLE frame, with a segment's fd attached or the IPC stream inline, and resolves
   * when the peer acknowledges it.
   */
  async #sendTableFrame(
    body: { fd: number; ipcOffset?: number; ipcLength: number } | { inline: InlineStream },
    flags: number,
    correlationId: bigint,
    options: SendOptions,
    sent?: () => void,
    hooks?: { registered: (id: bigint) => void; failed?: (id: bigint) => void },
  ): Promise<void> {
    const id = this.#takeId();
    hooks?.registered(id);
    const acked = new Promise<void>((resolve, reject) => this.#acks.set(id, { resolve, reject }));
    acked.catch(() => {});
    try {
      try {
        const init = { kind: FrameKind.Table, flags, messageId: id, correlationId, metadata: options.metadata };
        if ('inline' in body) {
          const frame = encodeFrame({ ...init, inline: body.inline }); // the copy
          traceStage('copy', id);
          await this.#socket.send(frame);
        } else {
          traceStage('copy', id);
          await this.#socket.send(encodeFrame({ ...init, ipcOffset: BigInt(body.ipcOffset ?? 0), ipcLength: BigInt(body.ipcLength), fdCount: 1 }), [body.fd]);
        }
        traceStage('send', id);
      } catch (e) {
        hooks?.failed?.(id); // only a frame that never left may be reused
        throw e;
      }
      sent?.();
      await withTimeout(acked, options.timeoutMs, `message ${id} was not acknowledged`);
    } finally {
      this.#acks.delete(id);
    }
  }

  /** @internal */
  sendError(code: string, message: string, correlationId: bigint, flags = 0): Promise<void> {
    const frame = encodeFrame({ kind: FrameKind.Error, flags, messageId: this.#takeId(), correlationId, metadata: { code, message: message.slice(0, 4096) } });
    return this.#socket.send(frame);
  }

  /** @internal Tells the sender a leased segment may be reused. */
  releaseLease(id: bigint): void {
    if (this.#state !== 'open') return;
    this.#socket.post(encodeFrame({ kind: FrameKind.Release, messageId: this.#takeId(), correlationId: id }));
  }

  #takeId(): bigint {
    return this.#nextId++;
  }

  #localCapabilities(): string[] {
    return this.#options.acceptLeased ? ['lease', 'stream', 'inline'] : ['stream', 'inline'];
  }

  #next(): Promise<ReceivedTable | null> {
    const queued = this.#inbox.shift();
    if (!queued) return this.#inbox.take();
    this.#inboxBytes -= queued.bytes.byteLength;
    if (this.#socket.paused && this.#state === 'open' && !this.#inboxFull()) this.#socket.resume();
    return Promise.resolve(queued);
  }

  #deliver(message: ReceivedTable): void {
    if (this.#inbox.push(message)) return; // straight to a waiting receive()
    this.#inboxBytes += message.bytes.byteLength;
    // §14.2: hold no more; the kernel's socket buffer makes the sender wait.
    if (this.#inboxFull()) this.#socket.pause();
  }

  #inboxFull(): boolean {
    return this.#inbox.size >= this.#options.maxInboxMessages || this.#inboxBytes >= this.#options.maxInboxBytes;
  }

  #onDatagram(d: Datagram): void {
    let frame: Frame;
    try {
      if (d.truncated) throw fail('ERR_PROTOCOL', 'frame larger than 65536 bytes');
      frame = decodeFrame(d.bytes);
      if (d.controlTruncated) {
        // More fds than a frame may carry is the sender's fault; fewer, that this process could
        // not take them (RLIMIT_NOFILE): a message-level failure, the channel goes on.
        if (frame.fdCount > MAX_FRAME_FDS || d.fds.length >= MAX_FRAME_FDS || this.#state !== 'open') throw fail('ERR_PROTOCOL', `too many file descriptors attached to one frame (${frame.fdCount})`);
        closeFds(d.fds);
        this.#onFdsDropped(frame);
        return;
      }
      if (this.#state === 'open' && frame.version !== this.#version) {
        throw fail('ERR_PROTOCOL_VERSION', `frame of protocol version ${frame.version}, agreed version ${this.#version}`);
      }
      if (!FRAME_FDS[frame.kind] && d.fds.length > 0) throw fail('ERR_PROTOCOL', `${FrameKind[frame.kind]} frame carries ${d.fds.length} file descriptors`);
    } catch (e) {
      closeFds(d.fds);
      this.#fatal(asError(e), true);
      return;
    }
    try {
      if (this.#state === 'handshake') this.#onHandshakeFrame(frame);
      else this.#onFrame(frame, d.fds);
    } catch (e) {
      this.#fatal(asError(e), true);
    }
  }

  /** A frame whose fds the kernel dropped because this process is out of file descriptors. */
  #onFdsDropped(frame: Frame): void {
    const error = new ArrowShmError('ERR_SYSCALL', `this receiver is out of file descriptors (RLIMIT_NOFILE): the ${frame.fdCount} fd(s) of ${FrameKind[frame.kind] ?? 'a'} frame ${frame.messageId} were dropped`, osConstants.errno.EMFILE, 'recvmsg');
    if (frame.kind === FrameKind.StreamSegment && this.#streams.onSegmentLost(frame, error)) return;
    if (frame.kind === FrameKind.Table || frame.kind === FrameKind.StreamOpen || frame.kind === FrameKind.StreamSegment) {
      this.sendError(error.code, error.message, frame.messageId, frame.flags & FrameFlags.REQUEST ? FrameFlags.RESPONSE : 0).catch(() => {});
    } else this.#fatal(fail('ERR_PROTOCOL', `${FrameKind[frame.kind]} frame carries file descriptors`), true);
  }

  #onHandshakeFrame(frame: Frame): void {
    if (this.#role === 'listener') {
      if (frame.kind !== FrameKind.Hello) throw fail('ERR_PROTOCOL', `expected HELLO, got ${FrameKind[frame.kind]}`);
      this.#agree(checkHello(frame.metadata));
      const metadata = welcomeMetadata(this.#version, this.#capabilities, this.#options.maxMessageBytes);
      const welcome = encodeFrame({ kind: FrameKind.Welcome, messageId: this.#takeId(), correlationId: frame.messageId, metadata });
      // Open before the WELCOME is even flushed: the connector may send a TABLE right behind it,
      // and it can arrive in this same drain of the socket.
      this.#open();
      this.#socket.send(welcome).catch((e) => this.#fatal(asError(e), false));
      return;
    }
    if (frame.kind === FrameKind.Error) throw remoteError(frame.metadata);
    if (frame.kind !== FrameKind.Welcome) throw fail('ERR_PROTOCOL', `expected WELCOME, got ${FrameKind[frame.kind]}`);
    this.#agree(checkWelcome(frame.metadata));
    this.#open();
  }

  #agree(agreed: Agreement): void {
    this.#version = agreed.version;
    this.#capabilities = this.#localCapabilities();
    this.#peer = { ...this.#peer, version: agreed.version, implementation: agreed.implementation, capabilities: agreed.capabilities };
  }

  #open(): void {
    if (this.#state !== 'handshake') return;
    this.#state = 'open';
    this.#onOpen?.(this);
    this.#ready.resolve();
  }

  #onFrame(frame: Frame, fds: number[]): void {
    switch (frame.kind) {
      case FrameKind.Table:
        this.#onTable(frame, fds);
        return;
      case FrameKind.Ack:
        this.#acks.get(frame.correlationId)?.resolve();
        return;
      case FrameKind.Release:
        this.#returnLease(frame.correlationId);
        return;
      case FrameKind.Error: {
        const error = remoteError(frame.metadata);
        if (frame.correlationId === 0n) {
          this.#fatal(error, false);
          return;
        }
        this.#acks.get(frame.correlationId)?.reject(error);
        this.#requests.get(frame.correlationId)?.reject(error);
        this.#streams.onError(frame.correlationId, error);
        // A refused leased segment was never mapped by the peer (§5.1): it is ours again.
        this.#returnLease(frame.correlationId);
        return;
      }
      case FrameKind.Goodbye:
        this.#fatal(fail('ERR_PEER_CLOSED', 'the peer closed the channel'), false);
        return;
      case FrameKind.StreamOpen:
        this.#streams.onStreamOpen({ frame, fds });
        return;
      case FrameKind.StreamSegment:
        this.#streams.onStreamSegment(frame, fds);
        return;
      case FrameKind.Subscribe:
        this.#streams.onSubscribe(frame);
        return;
      default:
        throw fail('ERR_PROTOCOL', `unexpected ${FrameKind[frame.kind]} frame after the handshake`);
    }
  }

  #onTable(frame: Frame, fds: number[]): void {
    traceStage('wake', frame.messageId);
    let message: ReceivedTable;
    try {
      message = frame.inline ? this.#inlineTable(frame, fds) : this.#mapTable(frame, fds);
    } catch (e) {
      const error = asError(e);
      this.sendError(error.code, error.message, frame.messageId, frame.flags & FrameFlags.REQUEST ? FrameFlags.RESPONSE : 0).catch(() => {});
      return;
    }
    // Acknowledged at once, before anyone sees it: a receiver may exit right after receive().
    this.#socket.post(encodeFrame({ kind: FrameKind.Ack, messageId: this.#takeId(), correlationId: frame.messageId }));
    if (frame.flags & FrameFlags.RESPONSE) {
      const pending = this.#requests.get(frame.correlationId);
      if (pending) pending.resolve(message);
      else message.close(); // a late response to a request that timed out
      return;
    }
    this.#deliver(message);
  }

  /** §5.3: a table inside its frame (decodeFrame checked where it lies). */
  #inlineTable(frame: Frame, fds: number[]): ReceivedTable {
    if (fds.length > 0 || frame.fdCount !== 0 || frame.flags & FrameFlags.LEASED) {
      closeFds(fds);
      throw fail('ERR_PROTOCOL', `INLINE TABLE frame must carry no fd and no LEASED flag (fds ${fds.length}, fd_count ${frame.fdCount})`);
    }
    const bytes = frame.inline!;
    if (bytes.byteLength > this.#options.maxMessageBytes) throw fail('ERR_TOO_LARGE', `message of ${bytes.byteLength} bytes exceeds the limit of ${this.#options.maxMessageBytes} bytes`);
    traceStage('map', frame.messageId);
    const checked = checkIpcStream(bytes, this.#options.ipcLimits, this.#schemas);
    traceStage('check', frame.messageId);
    return new ReceivedTable(this, frame.messageId, frame.flags, frame.metadata, new FrameMemory(bytes.buffer as ArrayBuffer), bytes.byteOffset, bytes.byteLength, checked);
  }

  /** docs/PROTOCOL.md §5.1, in order. Closes every fd; returns a message owning a read-only mapping. */
  #mapTable(frame: Frame, fds: number[]): ReceivedTable {
    if (fds.length !== 1 || frame.fdCount !== 1) {
      closeFds(fds);
      throw fail('ERR_PROTOCOL', `TABLE frame must carry exactly 1 fd, got ${fds.length} (fd_count ${frame.fdCount})`);
    }
    const leased = (frame.flags & FrameFlags.LEASED) !== 0;
    if (leased && !this.#capabilities.includes('lease')) {
      closeFds(fds);
      throw fail('ERR_SEGMENT_UNSEALED', 'leased segment received, but this side did not offer the lease capability (acceptLeased)');
    }
    const policy: SealPolicy = this.#options.allowUnsealed ? 'unsealed' : leased ? 'leased' : 'sealed';
    const mapping = mapReceivedSegment(fds[0]!, { policy, ipcOffset: frame.ipcOffset, ipcLength: frame.ipcLength, maxMessageBytes: this.#options.maxMessageBytes });
    traceStage('map', frame.messageId);
    try {
      const offset = Number(frame.ipcOffset);
      const length = Number(frame.ipcLength);
      const checked = checkIpcStream(mapping.bytes(offset, length), this.#options.ipcLimits, this.#schemas);
      traceStage('check', frame.messageId);
      return new ReceivedTable(this, frame.messageId, frame.flags, frame.metadata, mapping, offset, length, checked);
    } catch (e) {
      mapping.release();
      throw e;
    }
  }

  #onSocketClose(error: ArrowShmError | null): void {
    this.#fatal(error ?? fail('ERR_PEER_CLOSED', 'the peer closed the connection'), false);
  }

  /** Ends the channel with `error`; tells the peer first when `tellPeer` and the socket is up. */
  #fatal(error: ArrowShmError, tellPeer: boolean): void {
    if (this.#state === 'closed') return;
    const wasHandshake = this.#state === 'handshake';
    this.#state = 'closed';
    this.#closeError = error;
    if (tellPeer) this.#socket.sendNow(encodeFrame({ kind: FrameKind.Error, version: PROTOCOL_VERSION, messageId: this.#takeId(), metadata: { code: error.code, message: error.message.slice(0, 4096) } }));
    this.#socket.close();
    if (wasHandshake) this.#ready.reject(error);
    const closedError = error.code === 'ERR_CLOSED' || error.code === 'ERR_PEER_CLOSED' ? fail('ERR_PEER_CLOSED', 'the channel closed before the peer answered') : error;
    for (const p of this.#acks.values()) p.reject(closedError);
    for (const p of this.#requests.values()) p.reject(closedError);
    this.#acks.clear();
    this.#requests.clear();
    // Messages already acknowledged stay receivable after the peer leaves: nothing ACKed is lost.
    // Only our own close() (or a fatal error) gives them up.
    const peerLeft = error.code === 'ERR_PEER_CLOSED';
    if (!peerLeft) {
      for (const m of this.#inbox.drain()) m.close();
      this.#inboxBytes = 0;
    }
    this.#inbox.close();
    this.#streams.onChannelClosed();
    const listeners = [...this.#closeListeners];
    this.#closeListeners.clear();
    for (const listener of listeners) listener(error);
    // Segments still leased may be mapped by the peer: never reuse them, just drop our handle.
    for (const segment of this.#leases.values()) segment.close();
    this.#leases.clear();
    this.#leasedBytes = 0;
    this.#leasePool.close();
    this.#spares?.close();
  }

  /**
   * @internal How long (ms) nothing has happened on this channel, or -1 while it is busy: a send
   * or request awaits its answer, a message waits to be received, or it carries a stream.
   */
  idleMs(now: number): number {
    if (this.#state !== 'open' || this.#streams.used || this.#acks.size > 0 || this.#requests.size > 0 || this.#inbox.size > 0) return -1;
    return now - this.#socket.lastActivity;
  }

  /** @internal Closes the channel telling the peer why (a listener's idle timeout). */
  evict(error: ArrowShmError): void {
    this.#fatal(error, true);
  }

  /** @internal For tests and benchmarks: segments ready in the pools, leases outstanding. */
  get poolStats(): { spareBytes: number; leaseBytes: number; leasesOutstanding: number } {
    return { spareBytes: this.#spares?.pooledBytes ?? 0, leaseBytes: this.#leasePool.pooledBytes, leasesOutstanding: this.#leases.size };
  }

  /** @internal Resolves when background allocations have finished. */
  async settled(): Promise<void> {
    await this.#spares?.settled();
  }
}

function remoteError(kv: KeyValues): ArrowShmError {
  const code = kv.code ?? 'ERR_REMOTE';
  return new ArrowShmError(isErrorCode(code) ? code : 'ERR_REMOTE', `peer reported ${code}: ${kv.message ?? ''}`, undefined, undefined, { remote: true });
}

export function asError(e: unknown): ArrowShmError {
  if (e instanceof ArrowShmError) return e;
  return fail('ERR_PROTOCOL', e instanceof Error ? e.message : String(e), e);
}

/** Connects to a listening peer and completes the handshake. */
export async function connect(address: string, options: ChannelOptions & { timeoutMs?: number } = {}): Promise<Channel> {
  const fd = await connectSocket(address, true, options.timeoutMs);
  return Channel.open(new PacketSocket(fd), 'connector', options);
}
