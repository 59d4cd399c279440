// Channels: a connection between two arrow-shm peers over a UNIX SOCK_SEQPACKET socket
// (docs/PROTOCOL.md). Either side may send tables; the listener/connector roles only matter for
// the handshake.
import { openSync } from 'node:fs';
import type { RecordBatch, Schema, Table } from 'apache-arrow';
import { ArrowShmError, fail, isErrorCode } from '../errors.js';
import { withTimeout } from '../timeout.js';
import { native } from '../native.js';
import { decodeBatches, decodeTable } from '../ipc/reader.js';
import { validateIpcStream, type IpcSummary } from '../ipc/validate.js';
import { layoutIpcStream, writeIpcLayout, type TableLike } from '../ipc/writer.js';
import { LeasePool, SparePool } from '../shm/pool.js';
import { Mapping, Segment, checkReceivedSegment, type SealPolicy } from '../shm/segment.js';
import { decodeFrame, encodeFrame, FRAME_FDS, FrameFlags, FrameKind, PROTOCOL_VERSION, type Frame, type FrameInit, type KeyValues } from './frame.js';
import { StreamReader, type StreamReaderOptions } from '../stream/consumer.js';
import { RingProducer, StreamWriter, type StreamWriterOptions } from '../stream/producer.js';
import { PacketSocket, closeListeningSocket, connectSocket, listenSocket, type Datagram } from './socket.js';

const IMPLEMENTATION = 'arrow-shm-node/0.1.0';
/** V8 exposes at most 4 GiB of one mapping as an ArrayBuffer, so that is the most a Node receiver can take. */
export const MAX_NODE_MESSAGE_BYTES = 2 ** 32;
const DEFAULT_MAX_MESSAGE_BYTES = MAX_NODE_MESSAGE_BYTES;
/** Room for fds in every receive (docs/PROTOCOL.md §9: at least 16). */
const MAX_FRAME_FDS = 16;

export interface ChannelOptions {
  /** Peer uids allowed to connect (SO_PEERCRED). Default: this process's effective uid. */
  allowedUids?: number[];
  /** Largest IPC stream accepted, in bytes. Default and maximum 4 GiB (V8's limit for one ArrayBuffer). */
  maxMessageBytes?: number;
  /** Accept segments without seals (unsafe: a hostile sender can truncate them). Default false. */
  allowUnsealed?: boolean;
  /** Accept leased (reusable, not write-sealed) segments, docs/PROTOCOL.md §6.2. Default false. */
  acceptLeased?: boolean;
  /** How long a handshake may take. Default 5000 ms. */
  handshakeTimeoutMs?: number;
  /**
   * Send tables in leased, reusable, pre-faulted segments when the peer accepts them (§6.2):
   * a memcpy into warm pages instead of fresh pages, at the price of the write seal. Default false.
   */
  lease?: boolean;
  /** Pre-allocated spare segments kept per size class for sealed sends (0 disables). Default 1. */
  spareSegments?: number;
  /** @internal A publication's answer to SUBSCRIBE frames (set from the first frame on). */
  onSubscribe?: ((channel: Channel, frame: Frame) => void) | null;
}

export interface PeerInfo {
  pid: number;
  uid: number;
  gid: number;
  version: number;
  implementation: string;
  capabilities: string[];
}

export interface SendOptions {
  /** User metadata carried in the frame (string keys and values). */
  metadata?: KeyValues;
  /** Fail with ERR_TIMEOUT if the peer has not acknowledged within this many ms. */
  timeoutMs?: number;
}

/**
 * An IPC stream already written into a sealed segment: send it to any number of channels with
 * no further copy. The fd stays open until `close()`.
 */
export class PreparedTable {
  readonly ipcOffset = 0;
  private constructor(
    readonly segment: Segment,
    readonly ipcLength: number,
  ) {}

  /**
   * Writes `data` (a Table/RecordBatch or raw IPC stream bytes) into a new sealed segment, taken
   * from `spares` (pre-allocated pages) when one is ready.
   */
  static from(data: TableLike | Uint8Array, spares?: SparePool): PreparedTable {
    const create = (size: number) => (spares ? spares.take(size).segment : Segment.create(size));
    if (data instanceof Uint8Array) {
      const summary = validateIpcStream(data);
      const segment = create(Math.max(data.byteLength, 1));
      try {
        segment.write(data, 0);
        segment.seal('sealed');
      } catch (e) {
        segment.close();
        throw e;
      }
      return new PreparedTable(segment, Math.max(summary.streamLength, data.byteLength));
    }
    const layout = layoutIpcStream(data);
    const segment = create(layout.byteLength);
    try {
      for (const chunk of layout.chunks) segment.write(chunk.bytes, chunk.offset);
      segment.seal('sealed');
    } catch (e) {
      segment.close();
      throw e;
    }
    return new PreparedTable(segment, layout.byteLength);
  }

  close(): void {
    this.segment.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export type Sendable = TableLike | Uint8Array | PreparedTable;

const leaseRegistry = new FinalizationRegistry<{ channel: WeakRef<Channel>; id: bigint }>((held) => {
  held.channel.deref()?.releaseLease(held.id);
});

/**
 * A received table. Its bytes stay mapped, read-only, until `close()` (or until the garbage
 * collector finds neither this message nor any view of its columns alive). After close every
 * view into the segment is detached: it reads as empty, never as freed memory.
 */
export class Message {
  #mapping: Mapping;
  #table: Table | undefined;
  #channel: Channel | null;
  #leased: boolean;
  readonly bytes: Uint8Array;

  constructor(
    channel: Channel | null,
    readonly id: bigint,
    readonly flags: number,
    readonly metadata: KeyValues,
    mapping: Mapping,
    ipcOffset: number,
    ipcLength: number,
    readonly summary: IpcSummary,
  ) {
    this.#channel = channel;
    this.#mapping = mapping;
    this.#leased = (flags & FrameFlags.LEASED) !== 0;
    this.bytes = mapping.bytes(ipcOffset, ipcLength);
    if (this.#leased && channel) leaseRegistry.register(mapping.buffer, { channel: new WeakRef(channel), id }, this);
  }

  get isRequest(): boolean {
    return (this.flags & FrameFlags.REQUEST) !== 0;
  }

  get closed(): boolean {
    return this.#mapping.released;
  }

  /** The ArrayBuffer over the shared mapping: every column buffer of `table` is a view of it. */
  get sharedBuffer(): ArrayBuffer {
    return this.#mapping.buffer;
  }

  /** The decoded table (decoded on first access, zero-copy). Throws ERR_IPC_UNSUPPORTED for types arrow-js lacks. */
  get table(): Table {
    if (this.closed) throw fail('ERR_CLOSED', 'the message was closed');
    this.#table ??= decodeTable(this.bytes);
    return this.#table;
  }

  get batches(): RecordBatch[] {
    if (this.closed) throw fail('ERR_CLOSED', 'the message was closed');
    return this.#table?.batches ?? decodeBatches(this.bytes);
  }

  /** Answers a request with a table. */
  respond(data: Sendable, options: SendOptions = {}): Promise<void> {
    if (!this.isRequest || !this.#channel) throw fail('ERR_INVALID_ARGUMENT', 'this message is not a request');
    return this.#channel.sendFrameWithTable(data, options, FrameFlags.RESPONSE, this.id);
  }

  /** Answers a request with an error, which the requester receives as an ArrowShmError. */
  respondError(code: ArrowShmError['code'], message: string): Promise<void> {
    if (!this.isRequest || !this.#channel) throw fail('ERR_INVALID_ARGUMENT', 'this message is not a request');
    return this.#channel.sendError(code, message, this.id, FrameFlags.RESPONSE);
  }

  /** Unmaps the segment (detaching every view) and, for a leased segment, hands it back. */
  close(): void {
    if (this.closed) return;
    this.#table = undefined;
    this.#mapping.release();
    if (this.#leased) {
      leaseRegistry.unregister(this);
      this.#channel?.releaseLease(this.id);
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

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
  #requests = new Map<bigint, Pending<Message>>();
  #inbox: Message[] = [];
  #waiters: Pending<Message | null>[] = [];
  #closeError: ArrowShmError | null = null;
  #spares: SparePool | null;
  #leasePool = new LeasePool({ perClass: 4, maxBytes: 4 * 1024 ** 3 });
  #leases = new Map<bigint, Segment>();
  #streamOffers: { frame: Frame; fds: number[] }[] = [];
  #streamWaiters: Pending<{ frame: Frame; fds: number[] } | null>[] = [];
  #streamReader: StreamReader | null = null;
  #subscriptions = new Set<bigint>();
  #closeListeners = new Set<(error: ArrowShmError) => void>();

  private constructor(socket: PacketSocket, role: 'listener' | 'connector', options: ChannelOptions) {
    this.#socket = socket;
    this.#role = role;
    this.#options = normalizeOptions(options);
    this.#spares = this.#options.spareSegments > 0 ? new SparePool({ perClass: this.#options.spareSegments, maxBytes: 1024 ** 3 }) : null;
    const cred = socket.peerCredentials();
    this.#peer = { ...cred, version: 0, implementation: '', capabilities: [] };
    let resolve!: () => void, reject!: (e: unknown) => void;
    const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
    promise.catch(() => {});
    this.#ready = { promise, resolve, reject };
  }

  /** @internal Wraps an accepted or connected socket and completes the handshake. */
  static async open(socket: PacketSocket, role: 'listener' | 'connector', options: ChannelOptions): Promise<Channel> {
    let channel: Channel;
    try {
      channel = new Channel(socket, role, options);
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
      const hello = encodeFrame({
        kind: FrameKind.Hello,
        messageId: channel.#takeId(),
        metadata: {
          min_version: String(PROTOCOL_VERSION),
          max_version: String(PROTOCOL_VERSION),
          capabilities: channel.#localCapabilities().join(','),
          implementation: IMPLEMENTATION,
          pid: String(process.pid),
        },
      });
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
  async request(data: Sendable, options: SendOptions = {}): Promise<Message> {
    let pending!: Pending<Message>;
    const response = new Promise<Message>((resolve, reject) => (pending = { resolve, reject }));
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
  async receive(): Promise<Message> {
    const next = await this.#next();
    if (!next) throw this.#closeError ?? fail('ERR_PEER_CLOSED', 'the peer closed the channel');
    return next;
  }

  /** Iterates received messages until the peer closes the channel cleanly. */
  async *[Symbol.asyncIterator](): AsyncGenerator<Message, void, undefined> {
    for (;;) {
      const next = await this.#next();
      if (!next) {
        if (this.#closeError && this.#closeError.code !== 'ERR_PEER_CLOSED') throw this.#closeError;
        return;
      }
      yield next;
    }
  }

  /**
   * Opens a stream of record batches to the peer (docs/PROTOCOL.md §12), which receives it with
   * `acceptStream()`. Resolves once the peer has mapped the ring.
   */
  async openStream(schema: Schema, options: StreamWriterOptions = {}): Promise<StreamWriter> {
    if (this.#state !== 'open') throw this.#closeError ?? fail('ERR_CLOSED', 'the channel is not open');
    if (!this.#peer.capabilities.includes('stream')) throw fail('ERR_PROTOCOL', `the peer (${this.#peer.implementation}) does not accept streams`);
    const producer = new RingProducer(schema, options, 1);
    try {
      await producer.attach(this);
    } catch (e) {
      producer.close();
      throw e;
    }
    return new StreamWriter(producer, this);
  }

  /** The next stream the peer opens on this channel (its batches are read in place). */
  async acceptStream(options: StreamReaderOptions & { timeoutMs?: number } = {}): Promise<StreamReader> {
    const offer = this.#streamOffers.shift() ?? (this.#state === 'closed' ? null : await withTimeout(new Promise<{ frame: Frame; fds: number[] } | null>((resolve, reject) => this.#streamWaiters.push({ resolve, reject })), options.timeoutMs, 'no stream offered'));
    if (!offer) throw this.#closeError ?? fail('ERR_PEER_CLOSED', 'the peer closed the channel');
    let reader: StreamReader;
    try {
      reader = StreamReader.open(this, offer.frame, offer.fds, options);
    } catch (e) {
      const error = asError(e);
      this.sendError(error.code, error.message, offer.frame.messageId).catch(() => {});
      throw error;
    }
    this.#streamReader = reader;
    this.#socket.send(encodeFrame({ kind: FrameKind.Ack, messageId: this.#takeId(), correlationId: offer.frame.messageId })).catch(() => {});
    return reader;
  }

  /** Asks a publishing peer for its stream (SUBSCRIBE, §12.1). */
  async subscribe(options: StreamReaderOptions & { metadata?: KeyValues; timeoutMs?: number } = {}): Promise<StreamReader> {
    if (this.#state !== 'open') throw this.#closeError ?? fail('ERR_CLOSED', 'the channel is not open');
    const id = this.#takeId();
    this.#subscriptions.add(id);
    try {
      await this.#socket.send(encodeFrame({ kind: FrameKind.Subscribe, messageId: id, metadata: options.metadata }));
      return await this.acceptStream(options);
    } finally {
      this.#subscriptions.delete(id);
    }
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
   * @internal Sends a stream frame with `fds` (which stay the caller's). With `ackTimeoutMs`,
   * `acked` resolves on the peer's ACK and rejects on its ERROR.
   */
  sendStreamFrame(init: Omit<FrameInit, 'messageId'>, fds: number[], ackTimeoutMs?: number): { sent: Promise<void>; acked: Promise<void> } {
    if (this.#state !== 'open') {
      const error = this.#closeError ?? fail('ERR_CLOSED', 'the channel is not open');
      const rejected = Promise.reject(error);
      rejected.catch(() => {});
      return { sent: rejected, acked: rejected };
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
    return { sent, acked };
  }

  /** Keeps (default) or stops keeping the Node process alive while the channel is open. */
  ref(keep = true): this {
    this.#socket.ref(keep);
    return this;
  }

  /** Closes the channel: says GOODBYE, fails pending sends, releases unreceived messages. */
  close(): void {
    if (this.#state === 'closed') return;
    if (this.#state === 'open') {
      const bye = encodeFrame({ kind: FrameKind.Goodbye, messageId: this.#takeId() });
      try {
        native.sendmsg(this.#socket.fd, bye, []);
      } catch {
        // the peer may be gone already
      }
    }
    this.#fatal(fail('ERR_CLOSED', 'the channel was closed'), false);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  // -------------------------------------------------------------------------------------------

  /** @internal */
  /** `onId` learns the frame's message id before the frame leaves (requests wait on it). */
  async sendFrameWithTable(data: Sendable, options: SendOptions, flags: number, correlationId: bigint, onId?: (id: bigint) => void): Promise<void> {
    if (this.#state !== 'open') throw this.#closeError ?? fail('ERR_CLOSED', 'the channel is not open');
    if (!(data instanceof PreparedTable) && this.#options.lease && this.#peer.capabilities.includes('lease')) {
      return this.#sendLeased(data, options, flags, correlationId, onId);
    }
    const prepared = data instanceof PreparedTable ? data : PreparedTable.from(data, this.#spares ?? undefined);
    // A segment made for this send is closed as soon as its fd is in flight (or the send failed).
    const closeOwn = () => prepared !== data && prepared.close();
    try {
      return await this.#sendTableFrame(prepared.segment.fd, prepared.ipcLength, flags, correlationId, options, closeOwn, { registered: (id) => onId?.(id) });
    } finally {
      closeOwn();
    }
  }

  /** §6.2: copy into a warm leased segment; it returns to the pool when the peer sends RELEASE. */
  #sendLeased(data: TableLike | Uint8Array, options: SendOptions, flags: number, correlationId: bigint, onId?: (id: bigint) => void): Promise<void> {
    const layout = data instanceof Uint8Array ? null : layoutIpcStream(data);
    if (data instanceof Uint8Array) validateIpcStream(data);
    const length = layout ? layout.byteLength : (data as Uint8Array).byteLength;
    const segment = this.#leasePool.acquire(length);
    const target = segment.writableBytes();
    if (layout) writeIpcLayout(layout, target, true);
    else target.set(data as Uint8Array);
    return this.#sendTableFrame(segment.fd, length, flags | FrameFlags.LEASED, correlationId, options, undefined, {
      registered: (id) => {
        this.#leases.set(id, segment);
        onId?.(id);
      },
      // The frame never left: nobody else maps the segment, it can be reused.
      failed: (id) => this.#leases.delete(id) && this.#leasePool.giveBack(segment),
    });
  }

  /** Sends one TABLE frame with `fd` attached and resolves when the peer acknowledges it. */
  async #sendTableFrame(
    fd: number,
    ipcLength: number,
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
        const frame = encodeFrame({ kind: FrameKind.Table, flags, messageId: id, correlationId, ipcLength: BigInt(ipcLength), fdCount: 1, metadata: options.metadata });
        await this.#socket.send(frame, [fd]);
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
    this.#socket.send(encodeFrame({ kind: FrameKind.Release, messageId: this.#takeId(), correlationId: id })).catch(() => {});
  }

  #takeId(): bigint {
    return this.#nextId++;
  }

  #localCapabilities(): string[] {
    return this.#options.acceptLeased ? ['lease', 'stream'] : ['stream'];
  }

  #next(): Promise<Message | null> {
    const queued = this.#inbox.shift();
    if (queued) return Promise.resolve(queued);
    if (this.#state === 'closed') return Promise.resolve(null);
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  #deliver(message: Message): void {
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve(message);
    else this.#inbox.push(message);
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
        closeAll(d.fds);
        this.#onFdsDropped(frame);
        return;
      }
      if (this.#state === 'open' && frame.version !== this.#version) {
        throw fail('ERR_PROTOCOL_VERSION', `frame of protocol version ${frame.version}, agreed version ${this.#version}`);
      }
      if (!FRAME_FDS[frame.kind] && d.fds.length > 0) throw fail('ERR_PROTOCOL', `${FrameKind[frame.kind]} frame carries ${d.fds.length} file descriptors`);
    } catch (e) {
      closeAll(d.fds);
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
    const error = new ArrowShmError('ERR_SYSCALL', `this receiver is out of file descriptors (RLIMIT_NOFILE): the ${frame.fdCount} fd(s) of ${FrameKind[frame.kind] ?? 'a'} frame ${frame.messageId} were dropped`, 24 /* EMFILE */, 'recvmsg');
    if (frame.kind === FrameKind.StreamSegment && this.#streamReader) this.#streamReader.onSegmentLost(frame, error);
    else if (frame.kind === FrameKind.Table || frame.kind === FrameKind.StreamOpen || frame.kind === FrameKind.StreamSegment) {
      this.sendError(error.code, error.message, frame.messageId, frame.flags & FrameFlags.REQUEST ? FrameFlags.RESPONSE : 0).catch(() => {});
    } else this.#fatal(fail('ERR_PROTOCOL', `${FrameKind[frame.kind]} frame carries file descriptors`), true);
  }

  #onHandshakeFrame(frame: Frame): void {
    const kv = frame.metadata;
    if (this.#role === 'listener') {
      if (frame.kind !== FrameKind.Hello) throw fail('ERR_PROTOCOL', `expected HELLO, got ${FrameKind[frame.kind]}`);
      const min = Number(kv.min_version ?? NaN);
      const max = Number(kv.max_version ?? NaN);
      if (!Number.isInteger(min) || !Number.isInteger(max)) throw fail('ERR_PROTOCOL', 'HELLO without valid min_version/max_version');
      if (min > PROTOCOL_VERSION || max < PROTOCOL_VERSION) {
        throw fail('ERR_PROTOCOL_VERSION', `peer speaks protocol versions ${min}..${max}, this side speaks ${PROTOCOL_VERSION}`);
      }
      this.#agree(kv);
      const welcome = encodeFrame({
        kind: FrameKind.Welcome,
        messageId: this.#takeId(),
        correlationId: frame.messageId,
        metadata: {
          version: String(this.#version),
          capabilities: this.#capabilities.join(','),
          implementation: IMPLEMENTATION,
          pid: String(process.pid),
          max_message_bytes: String(this.#options.maxMessageBytes),
        },
      });
      // Open before the WELCOME is even flushed: the connector may send a TABLE right behind it,
      // and it can arrive in this same drain of the socket.
      this.#open();
      this.#socket.send(welcome).catch((e) => this.#fatal(asError(e), false));
      return;
    }
    if (frame.kind === FrameKind.Error) throw remoteError(kv);
    if (frame.kind !== FrameKind.Welcome) throw fail('ERR_PROTOCOL', `expected WELCOME, got ${FrameKind[frame.kind]}`);
    const version = Number(kv.version ?? NaN);
    if (version !== PROTOCOL_VERSION) throw fail('ERR_PROTOCOL_VERSION', `peer chose protocol version ${kv.version}, this side speaks ${PROTOCOL_VERSION}`);
    this.#agree(kv);
    this.#open();
  }

  #agree(kv: KeyValues): void {
    const theirs = (kv.capabilities ?? '').split(',').filter(Boolean);
    this.#capabilities = this.#localCapabilities();
    this.#peer = { ...this.#peer, version: this.#version, implementation: kv.implementation ?? '', capabilities: theirs };
  }

  #open(): void {
    if (this.#state !== 'handshake') return;
    this.#state = 'open';
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
      case FrameKind.Release: {
        const segment = this.#leases.get(frame.correlationId);
        if (segment) {
          this.#leases.delete(frame.correlationId);
          this.#leasePool.giveBack(segment);
        }
        return;
      }
      case FrameKind.Error: {
        const error = remoteError(frame.metadata);
        if (frame.correlationId === 0n) {
          this.#fatal(error, false);
          return;
        }
        this.#acks.get(frame.correlationId)?.reject(error);
        this.#requests.get(frame.correlationId)?.reject(error);
        if (this.#subscriptions.has(frame.correlationId)) for (const w of this.#streamWaiters.splice(0)) w.reject(error);
        // A refused leased segment was never mapped by the peer (§5.1): it is ours again.
        const refused = this.#leases.get(frame.correlationId);
        if (refused) {
          this.#leases.delete(frame.correlationId);
          this.#leasePool.giveBack(refused);
        }
        return;
      }
      case FrameKind.Goodbye:
        this.#fatal(fail('ERR_PEER_CLOSED', 'the peer closed the channel'), false);
        return;
      case FrameKind.StreamOpen: {
        const offer = { frame, fds };
        const waiter = this.#streamWaiters.shift();
        if (waiter) waiter.resolve(offer);
        else this.#streamOffers.push(offer);
        return;
      }
      case FrameKind.StreamSegment:
        if (this.#streamReader) this.#streamReader.onSegment(frame, fds);
        else {
          closeAll(fds);
          this.sendError('ERR_PROTOCOL', 'STREAM_SEGMENT without an open stream', frame.messageId).catch(() => {});
        }
        return;
      case FrameKind.Subscribe:
        if (this.#options.onSubscribe) this.#options.onSubscribe(this, frame);
        else this.sendError('ERR_INVALID_ARGUMENT', 'this side publishes no stream', frame.messageId).catch(() => {});
        return;
      default:
        throw fail('ERR_PROTOCOL', `unexpected ${FrameKind[frame.kind]} frame after the handshake`);
    }
  }

  #onTable(frame: Frame, fds: number[]): void {
    let message: Message;
    try {
      message = this.#mapTable(frame, fds);
    } catch (e) {
      const error = asError(e);
      this.sendError(error.code, error.message, frame.messageId, frame.flags & FrameFlags.REQUEST ? FrameFlags.RESPONSE : 0).catch(() => {});
      return;
    }
    this.#socket.send(encodeFrame({ kind: FrameKind.Ack, messageId: this.#takeId(), correlationId: frame.messageId })).catch(() => {});
    if (frame.flags & FrameFlags.RESPONSE) {
      const pending = this.#requests.get(frame.correlationId);
      if (pending) pending.resolve(message);
      else message.close(); // a late response to a request that timed out
      return;
    }
    this.#deliver(message);
  }

  /** docs/PROTOCOL.md §5.1, in order. Closes every fd; returns a message owning a read-only mapping. */
  #mapTable(frame: Frame, fds: number[]): Message {
    if (fds.length !== 1 || frame.fdCount !== 1) {
      closeAll(fds);
      throw fail('ERR_PROTOCOL', `TABLE frame must carry exactly 1 fd, got ${fds.length} (fd_count ${frame.fdCount})`);
    }
    const leased = (frame.flags & FrameFlags.LEASED) !== 0;
    if (leased && !this.#capabilities.includes('lease')) {
      closeAll(fds);
      throw fail('ERR_SEGMENT_UNSEALED', 'leased segment received, but this side did not offer the lease capability (acceptLeased)');
    }
    const policy: SealPolicy = this.#options.allowUnsealed ? 'unsealed' : leased ? 'leased' : 'sealed';
    const segment = Segment.adopt(fds[0]!);
    let mapping: Mapping;
    try {
      checkReceivedSegment(segment, { policy, ipcOffset: frame.ipcOffset, ipcLength: frame.ipcLength, maxMessageBytes: this.#options.maxMessageBytes });
      mapping = segment.takeReadOnlyMapping();
    } finally {
      segment.closeFd(); // the mapping keeps the pages; the fd is not needed any more
    }
    try {
      const offset = Number(frame.ipcOffset);
      const length = Number(frame.ipcLength);
      const summary = validateIpcStream(mapping.bytes(offset, length));
      return new Message(this, frame.messageId, frame.flags, frame.metadata, mapping, offset, length, summary);
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
    if (tellPeer && !this.#socket.closed) {
      const frame = encodeFrame({ kind: FrameKind.Error, version: PROTOCOL_VERSION, messageId: this.#nextId++, metadata: { code: error.code, message: error.message.slice(0, 4096) } });
      try {
        native.sendmsg(this.#socket.fd, frame, []);
      } catch {
        // best effort: the peer may be gone
      }
    }
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
    if (!peerLeft) for (const m of this.#inbox.splice(0)) m.close();
    for (const w of this.#waiters.splice(0)) w.resolve(null);
    for (const w of this.#streamWaiters.splice(0)) w.resolve(null);
    for (const offer of this.#streamOffers.splice(0)) closeAll(offer.fds);
    const listeners = [...this.#closeListeners];
    this.#closeListeners.clear();
    for (const listener of listeners) listener(error);
    // Segments still leased may be mapped by the peer: never reuse them, just drop our handle.
    for (const segment of this.#leases.values()) segment.close();
    this.#leases.clear();
    this.#leasePool.close();
    this.#spares?.close();
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

function normalizeOptions(o: ChannelOptions): Required<ChannelOptions> {
  const maxMessageBytes = o.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  if (!Number.isSafeInteger(maxMessageBytes) || maxMessageBytes <= 0 || maxMessageBytes > MAX_NODE_MESSAGE_BYTES) throw fail('ERR_INVALID_ARGUMENT', `maxMessageBytes must be a positive integer up to 4 GiB, got ${maxMessageBytes}`);
  return {
    allowedUids: o.allowedUids ?? [process.geteuid?.() ?? 0],
    maxMessageBytes,
    allowUnsealed: o.allowUnsealed ?? false,
    acceptLeased: o.acceptLeased ?? false,
    handshakeTimeoutMs: o.handshakeTimeoutMs ?? 5000,
    lease: o.lease ?? false,
    spareSegments: o.spareSegments ?? 1,
    onSubscribe: o.onSubscribe ?? null,
  };
}

function remoteError(kv: KeyValues): ArrowShmError {
  const code = kv.code ?? 'ERR_REMOTE';
  return new ArrowShmError(isErrorCode(code) ? code : 'ERR_REMOTE', `peer reported ${code}: ${kv.message ?? ''}`, undefined, undefined, { remote: true });
}

function asError(e: unknown): ArrowShmError {
  if (e instanceof ArrowShmError) return e;
  return fail('ERR_PROTOCOL', e instanceof Error ? e.message : String(e), e);
}

function closeAll(fds: number[]): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      // already closed
    }
  }
}

const EMFILE = 24;
const ENFILE = 23;

function openReserve(): number | null {
  try {
    return openSync('/dev/null', 'r');
  } catch {
    return null;
  }
}

/** Connects to a listening peer and completes the handshake. */
export async function connect(address: string, options: ChannelOptions & { timeoutMs?: number } = {}): Promise<Channel> {
  const fd = await connectSocket(address, true, options.timeoutMs);
  return Channel.open(new PacketSocket(fd), 'connector', options);
}

export interface ListenerOptions extends ChannelOptions {
  backlog?: number;
  /** Called for connections that failed their credentials check or handshake (the listener keeps serving). */
  onConnectionError?: (error: ArrowShmError) => void;
}

/** Listens for peers; every accepted connection becomes a Channel after a successful handshake. */
export class Listener {
  #fd: number;
  #poller;
  #options: ListenerOptions;
  #ready: Channel[] = [];
  #waiters: Pending<Channel | null>[] = [];
  #closed = false;
  /** Held so that one fd is free to refuse connections when the process runs out (EMFILE). */
  #reserveFd: number | null = openReserve();

  private constructor(
    readonly address: string,
    fd: number,
    options: ListenerOptions,
  ) {
    this.#fd = fd;
    this.#options = options;
    this.#poller = native.pollerCreate(fd, () => this.#acceptAll());
    native.pollerStart(this.#poller, true, false);
  }

  static create(address: string, options: ListenerOptions = {}): Listener {
    normalizeOptions(options); // validate early
    return new Listener(address, listenSocket(address, true, options.backlog ?? 64), options);
  }

  #acceptAll(): void {
    while (!this.#closed) {
      let fd: number;
      try {
        fd = native.accept(this.#fd);
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
      Channel.open(new PacketSocket(fd), 'listener', this.#options).then(
        (channel) => {
          if (this.#closed) return channel.close();
          const waiter = this.#waiters.shift();
          if (waiter) waiter.resolve(channel);
          else this.#ready.push(channel);
        },
        (e) => this.#options.onConnectionError?.(asError(e)),
      );
    }
  }

  /**
   * Out of fds, a pending connection would make the poller fire forever: close the reserve fd,
   * accept that connection, tell it why in an ERROR frame, close it, take the reserve back.
   */
  #shedOne(error: ArrowShmError): 'shed' | 'none-pending' | 'no-reserve' {
    if (this.#reserveFd === null) return 'no-reserve';
    closeAll([this.#reserveFd]);
    this.#reserveFd = null;
    let fd = -1;
    try {
      fd = native.accept(this.#fd);
    } catch {
      // still out of fds (another thread took the one we freed): back off
    }
    if (fd >= 0) {
      const frame = encodeFrame({ kind: FrameKind.Error, messageId: 1n, metadata: { code: 'ERR_SYSCALL', message: `the listener is out of file descriptors (errno ${error.errno}); try again later` } });
      try {
        native.sendmsg(fd, frame, []);
      } catch {
        // it may be gone already
      }
      native.close(fd);
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
  accept(): Promise<Channel> {
    const ready = this.#ready.shift();
    if (ready) return Promise.resolve(ready);
    if (this.#closed) return Promise.reject(fail('ERR_CLOSED', 'the listener is closed'));
    return new Promise<Channel | null>((resolve, reject) => this.#waiters.push({ resolve, reject })).then((c) => {
      if (!c) throw fail('ERR_CLOSED', 'the listener is closed');
      return c;
    });
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Channel, void, undefined> {
    while (!this.#closed) {
      try {
        yield await this.accept();
      } catch (e) {
        if (e instanceof ArrowShmError && e.code === 'ERR_CLOSED') return;
        throw e;
      }
    }
  }

  ref(keep = true): this {
    native.pollerRef(this.#poller, keep);
    return this;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    native.pollerClose(this.#poller);
    closeListeningSocket(this.#fd, this.address);
    if (this.#reserveFd !== null) closeAll([this.#reserveFd]);
    this.#reserveFd = null;
    for (const c of this.#ready.splice(0)) c.close();
    for (const w of this.#waiters.splice(0)) w.resolve(null);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export function listen(address: string, options: ListenerOptions = {}): Listener {
  return Listener.create(address, options);
}
