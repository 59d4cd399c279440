// What a stream (src/stream, docs/PROTOCOL.md §12) needs of the channel it runs on, and where the
// channel hands it the stream frames. Streams depend on this; the channel knows nothing of them.
import { type ArrowShmError, fail } from '../errors.js';
import type { IpcLimits } from '../ipc/limits.js';
import { closeFds } from '../shm/fds.js';
import { AsyncQueue } from '../queue.js';
import { FrameKind, type Frame, type FrameInit, type KeyValues } from './frame.js';
import type { PeerInfo } from './options.js';

/** A STREAM_OPEN frame and its fds, not yet taken by a reader. */
export interface StreamOffer {
  frame: Frame;
  fds: number[];
}

/** Where STREAM_SEGMENT frames of an open stream go. */
export interface SegmentSink {
  onSegment(frame: Frame, fds: number[]): void;
  /** The kernel dropped the frame's fds (this process is out of them). */
  onSegmentLost(frame: Frame, error: ArrowShmError): void;
}

/** The channel's side of the link: sending, closing, and being told it closed. */
export interface LinkPort {
  readonly peer: PeerInfo;
  readonly open: boolean;
  /** Why the channel closed, once it has. */
  readonly closeError: ArrowShmError | null;
  /** The channel's socket while it is open, else -1: a blocking stream reader watches it for the peer's hang-up. */
  readonly socketFd: number;
  sendStreamFrame(init: Omit<FrameInit, 'messageId'>, fds: number[], ackTimeoutMs?: number): { id: bigint; sent: Promise<void>; acked: Promise<void> };
  sendError(code: string, message: string, correlationId: bigint): Promise<void>;
  onClose(listener: (error: ArrowShmError) => void): () => void;
  close(): void;
}

export class StreamLink {
  #port: LinkPort;
  #maxOffers: number;
  /** STREAM_OPEN offers not yet taken by a reader. */
  #offers = new AsyncQueue<StreamOffer>();
  #sink: SegmentSink | null = null;
  #onSubscribe: ((frame: Frame) => void) | null = null;
  #subscriptions = new Set<bigint>();
  #used = false;

  constructor(
    port: LinkPort,
    maxOffers: number,
    /** The channel's decoding limits, the default for streams on it. */
    readonly ipcLimits: Partial<IpcLimits>,
  ) {
    this.#port = port;
    this.#maxOffers = maxOffers;
  }

  get peer(): PeerInfo {
    return this.#port.peer;
  }

  /** Why no stream can run here: the channel's close error, or ERR_CLOSED; null while open. */
  get unavailable(): ArrowShmError | null {
    return this.#port.open ? null : (this.#port.closeError ?? fail('ERR_CLOSED', 'the channel is not open'));
  }

  /** The channel's socket while it is open, else -1 (see LinkPort.socketFd). */
  get socketFd(): number {
    return this.#port.socketFd;
  }

  /** Whether a stream was ever offered or asked for here (its liveness is then the stream's business). */
  get used(): boolean {
    return this.#used;
  }

  sendStreamFrame(init: Omit<FrameInit, 'messageId'>, fds: number[], ackTimeoutMs?: number): { sent: Promise<void>; acked: Promise<void> } {
    this.#used = true;
    return this.#port.sendStreamFrame(init, fds, ackTimeoutMs);
  }

  sendError(code: string, message: string, correlationId: bigint): Promise<void> {
    return this.#port.sendError(code, message, correlationId);
  }

  onClose(listener: (error: ArrowShmError) => void): () => void {
    return this.#port.onClose(listener);
  }

  /** Acknowledges a STREAM_OPEN: the ring is mapped. */
  ack(correlationId: bigint): void {
    this.sendStreamFrame({ kind: FrameKind.Ack, correlationId }, []).sent.catch(() => {});
  }

  /** Closes the channel under the stream. */
  close(): void {
    this.#port.close();
  }

  /** The next STREAM_OPEN (its fds are the caller's from then on); null once the channel closed. */
  async nextOffer(timeoutMs?: number): Promise<StreamOffer | null> {
    if (!this.#port.open) return this.#offers.shift() ?? null;
    return this.#offers.take(timeoutMs, 'no stream offered');
  }

  /** Asks a publishing peer for its stream (SUBSCRIBE, §12.1); its ERROR fails nextOffer(). */
  async subscribe(metadata: KeyValues | undefined, timeoutMs?: number): Promise<StreamOffer | null> {
    this.#used = true;
    const { id, sent } = this.#port.sendStreamFrame({ kind: FrameKind.Subscribe, metadata }, []);
    this.#subscriptions.add(id);
    try {
      await sent;
      return await this.nextOffer(timeoutMs);
    } finally {
      this.#subscriptions.delete(id);
    }
  }

  /** STREAM_SEGMENT frames go to `sink` from now on (null: refused). */
  setSegmentSink(sink: SegmentSink | null): void {
    this.#sink = sink;
  }

  /** SUBSCRIBE frames go to `handler` (a publication); without one they are refused. */
  setSubscribeHandler(handler: ((frame: Frame) => void) | null): void {
    this.#onSubscribe = handler;
  }

  // --- called by the channel ------------------------------------------------------------------

  /** @internal */
  onStreamOpen(offer: StreamOffer): void {
    this.#used = true;
    if (this.#offers.awaited || this.#offers.size < this.#maxOffers) return void this.#offers.push(offer);
    closeFds(offer.fds);
    this.sendError('ERR_RESOURCE_LIMIT', `${this.#maxOffers} stream offers are waiting to be accepted (maxStreamOffers)`, offer.frame.messageId).catch(() => {});
  }

  /** @internal */
  onStreamSegment(frame: Frame, fds: number[]): void {
    if (this.#sink) return this.#sink.onSegment(frame, fds);
    closeFds(fds);
    this.sendError('ERR_PROTOCOL', 'STREAM_SEGMENT without an open stream', frame.messageId).catch(() => {});
  }

  /** @internal */
  onSegmentLost(frame: Frame, error: ArrowShmError): boolean {
    if (!this.#sink) return false;
    this.#sink.onSegmentLost(frame, error);
    return true;
  }

  /** @internal */
  onSubscribe(frame: Frame): void {
    this.#used = true;
    if (this.#onSubscribe) this.#onSubscribe(frame);
    else this.sendError('ERR_INVALID_ARGUMENT', 'this side publishes no stream', frame.messageId).catch(() => {});
  }

  /** @internal An ERROR answering one of our SUBSCRIBEs fails whoever waits for the stream. */
  onError(correlationId: bigint, error: ArrowShmError): void {
    if (this.#subscriptions.has(correlationId)) this.#offers.rejectWaiters(error);
  }

  /** @internal The channel closed: unaccepted offers' fds are closed, waiters get null. */
  onChannelClosed(): void {
    this.#offers.close();
    for (const offer of this.#offers.drain()) closeFds(offer.fds);
  }
}

