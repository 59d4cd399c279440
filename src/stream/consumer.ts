// The consuming side of a stream (docs/PROTOCOL.md §12): maps the ring, reads records in place,
// releases them in order, sleeps on its eventfd when there is nothing to read.
import { readlinkSync } from 'node:fs';
import type { RecordBatch, Schema } from 'apache-arrow';
import { ArrowShmError, fail } from '../errors.js';
import { closeFds } from '../shm/fds.js';
import { MAX_NODE_MESSAGE_BYTES, Mapping, Segment, describeSeals, mapReceivedSegment } from '../shm/segment.js';
import type { StreamLink, StreamOffer } from '../transport/stream-link.js';
import type { Frame, KeyValues } from '../transport/frame.js';
import { BatchDecoder } from './decoder.js';
import type { IpcLimits } from '../ipc/limits.js';
import {
  EventWaiter,
  RECORD_HEADER_BYTES,
  RING_HEADER_BYTES,
  RING_SEALS,
  RecordKind,
  RingHeader,
  checkCapacity,
  readRecordHeader,
  ringOffset,
  spinUntil,
} from './ring.js';

export interface StreamReaderOptions {
  /** Busy-poll for data this many µs before sleeping (latency option; blocks the event loop meanwhile). Default 0. */
  spinMicros?: number;
  /** `read()` fails with ERR_TIMEOUT after this many ms without a batch. Default: wait forever. */
  readTimeoutMs?: number;
  /** Largest batch accepted through its own segment (EXTERNAL records). Default 4 GiB (V8's limit for one ArrayBuffer). */
  maxMessageBytes?: number;
  /** What one message of the stream may decode to (docs/PROTOCOL.md §14.1). Default: the channel's. */
  ipcLimits?: Partial<IpcLimits>;
}


/** A batch read in place from the ring. Valid until `release()`; the producer may then reuse its bytes. */
export class StreamBatch {
  #release: (() => void) | null;

  constructor(
    readonly batch: RecordBatch,
    readonly sequence: number,
    /** The record's IPC messages (dictionaries, then the batch), in place. */
    readonly bytes: Uint8Array,
    release: () => void,
  ) {
    this.#release = release;
  }

  get released(): boolean {
    return this.#release === null;
  }

  release(): void {
    const release = this.#release;
    this.#release = null;
    release?.();
  }

  [Symbol.dispose](): void {
    this.release();
  }
}

interface Held {
  end: number;
  released: boolean;
}

type ExternalSegment = { mapping: Mapping; offset: number; length: number } | ArrowShmError;

export class StreamReader implements AsyncIterable<RecordBatch> {
  readonly metadata: KeyValues;
  readonly streamId: string;
  readonly schema: Schema;
  #link: StreamLink;
  #options: StreamReaderOptions;
  #header: RingHeader;
  #headerMapping: Mapping;
  #dataMapping: Mapping;
  #prologueMapping: Mapping;
  #decoder: BatchDecoder;
  #prologueBytes: Uint8Array;
  #view: DataView;
  #data: Uint8Array;
  #capacity: number;
  #slot: number;
  #dataEventFd: number;
  #spaceEventFd: number;
  #waiter: EventWaiter;
  /** The next record to read. */
  #position: number;
  /** Everything below it is released (the slot's read_position). */
  #readPosition: number;
  #published: number;
  #held: Held[] = [];
  #segments = new Map<number, ExternalSegment>();
  #ended = false;
  #closed = false;
  #peerGone: ArrowShmError | null = null;
  #stopListening: () => void;
  #batches = 0;
  /** @internal Close the channel with the reader (a subscription's connection exists only for it). */
  ownsChannel = false;

  private constructor(link: StreamLink, frame: Frame, parts: Opened, options: StreamReaderOptions) {
    this.#link = link;
    this.#options = options;
    const { stream_id, reader_slot, start_position, capacity, ...user } = frame.metadata;
    void reader_slot, capacity;
    this.metadata = user;
    this.streamId = stream_id!;
    this.#headerMapping = parts.headerMapping;
    this.#dataMapping = parts.dataMapping;
    this.#prologueMapping = parts.prologueMapping;
    this.#decoder = parts.decoder;
    this.#prologueBytes = parts.prologueBytes;
    this.schema = parts.decoder.schema;
    this.#header = parts.header;
    this.#capacity = parts.capacity;
    this.#slot = parts.slot;
    this.#dataEventFd = parts.dataEventFd;
    this.#spaceEventFd = parts.spaceEventFd;
    this.#view = new DataView(this.#dataMapping.buffer);
    this.#data = this.#dataMapping.bytes();
    this.#position = this.#readPosition = this.#published = Number(start_position);
    this.#waiter = new EventWaiter(this.#dataEventFd);
    this.#stopListening = link.onClose((error) => {
      this.#peerGone = error.code === 'ERR_CLOSED' ? error : this.#producerLeft();
      this.#waiter.interrupt();
    });
  }

  /**
   * The next stream the peer opens on `channel` (docs/PROTOCOL.md §12); its batches are read in
   * place. Every fd of the offer is closed or owned by the reader once this returns.
   */
  static async accept(channel: { readonly streams: StreamLink }, options: StreamReaderOptions & { timeoutMs?: number } = {}): Promise<StreamReader> {
    return StreamReader.#fromOffer(channel.streams, await channel.streams.nextOffer(options.timeoutMs), options);
  }

  /** Asks a publishing peer on `channel` for its stream (SUBSCRIBE, §12.1). */
  static async subscribe(channel: { readonly streams: StreamLink }, options: StreamReaderOptions & { metadata?: KeyValues; timeoutMs?: number } = {}): Promise<StreamReader> {
    return StreamReader.#fromOffer(channel.streams, await channel.streams.subscribe(options.metadata, options.timeoutMs), options);
  }

  /** Checks and maps what a STREAM_OPEN carries (§12.1, §12.2), answers it, and reads its segments from then on. */
  static #fromOffer(link: StreamLink, offer: StreamOffer | null, options: StreamReaderOptions): StreamReader {
    if (!offer) throw link.unavailable ?? fail('ERR_PEER_CLOSED', 'the peer closed the channel');
    let reader: StreamReader;
    try {
      const opened = openParts(offer.frame, offer.fds, options.ipcLimits ?? link.ipcLimits);
      try {
        reader = new StreamReader(link, offer.frame, opened, options);
      } catch (e) {
        closeParts(opened);
        throw e;
      }
    } catch (e) {
      const error = e instanceof ArrowShmError ? e : fail('ERR_PROTOCOL', String(e), e);
      link.sendError(error.code, error.message, offer.frame.messageId).catch(() => {});
      throw error;
    }
    link.setSegmentSink(reader);
    link.ack(offer.frame.messageId);
    return reader;
  }


  /** The start of an IPC stream this reader's batches continue: the schema and the dictionaries it joined with. */
  get prologue(): Uint8Array {
    return this.#prologueBytes;
  }

  /** The ArrayBuffer over the ring's data area: the columns of batches read in place are views of it. */
  get sharedBuffer(): ArrayBuffer {
    return this.#dataMapping.buffer;
  }

  /** Batches read so far. */
  get batchesRead(): number {
    return this.#batches;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** The next batch, or null at the end of the stream. Release it when done (or use `for await`). */
  async read(): Promise<StreamBatch | null> {
    const deadline = this.#options.readTimeoutMs === undefined ? undefined : performance.now() + this.#options.readTimeoutMs;
    for (;;) {
      const next = this.#next(false);
      if (next !== undefined) return next;
      if (this.#peerGone) throw this.#peerGone;
      if (spinUntil(() => this.#header.writePosition > this.#position, this.#options.spinMicros ?? 0)) continue;
      // §12.3: flag, re-check, sleep. Inline, so a wake-up resumes this loop through one promise.
      this.#header.setReaderWaiting(this.#slot, true);
      let timer: NodeJS.Timeout | undefined;
      try {
        if (this.#header.writePosition > this.#position || this.#peerGone) continue;
        if (deadline !== undefined) timer = this.#interruptAt(deadline);
        await this.#waiter.wait();
      } finally {
        clearTimeout(timer);
        this.#header.setReaderWaiting(this.#slot, false);
      }
    }
  }

  /**
   * The next batch if one is published: no promise, no wait. `null` at the end of the stream,
   * `undefined` when there is nothing to read now, or when the next batch travels in its own
   * segment that has not arrived yet (`read()` waits for both). Release what it returns, as with `read()`.
   */
  readSync(): StreamBatch | null | undefined {
    return this.#next(true) as StreamBatch | null | undefined;
  }

  /**
   * The next batch, blocking this thread until one is published (Python's, Rust's and C++'s
   * `read()`): for threads that may block (a worker, a CLI), it sleeps in poll() on the ring's
   * eventfd as a C reader does, without the event loop's hops. `null` at the end of the stream;
   * ERR_TIMEOUT after `timeoutMs` (default: the reader's readTimeoutMs, else no limit);
   * ERR_PEER_CLOSED as soon as the producer's socket hangs up. `undefined` only when the next
   * batch travels in its own segment not received yet: only the event loop receives it (then
   * `await read()`). Nothing else runs on this thread while it waits: no timers, no callbacks,
   * so `close()` cannot come from this thread's other code meanwhile, and a producer on this same
   * thread could never publish (it would wait for its timeout, or for ever).
   */
  readBlocking(timeoutMs = this.#options.readTimeoutMs): StreamBatch | null | undefined {
    if (timeoutMs !== undefined && !(timeoutMs >= 0)) throw fail('ERR_INVALID_ARGUMENT', `timeoutMs must be a number ≥ 0, got ${timeoutMs}`);
    const deadline = timeoutMs === undefined || timeoutMs === Infinity ? undefined : performance.now() + timeoutMs;
    for (;;) {
      const next = this.#next(true) as StreamBatch | null | undefined;
      if (next !== undefined || this.#published > this.#position) return next;
      if (this.#peerGone) throw this.#peerGone;
      if (spinUntil(() => this.#header.writePosition > this.#position, this.#options.spinMicros ?? 0)) continue;
      this.#sleepBlocking(deadline, timeoutMs);
    }
  }

  /** Reads records up to the next batch or the end; undefined when none is published (or, `sync`, an EXTERNAL record comes next). */
  #next(sync: boolean): StreamBatch | null | undefined | Promise<StreamBatch> {
    for (;;) {
      if (this.#closed) throw fail('ERR_CLOSED', 'the stream reader is closed');
      if (this.#ended) return null;
      const writePosition = this.#loadWritePosition();
      if (writePosition <= this.#position) return undefined;
      const batch = this.#readRecord(writePosition, sync);
      if (batch !== null) return batch;
    }
  }

  /** Iterates the batches until the end of the stream; each is released when the loop moves on. */
  async *[Symbol.asyncIterator](): AsyncGenerator<RecordBatch, void, undefined> {
    for (;;) {
      const next = this.readSync() ?? (await this.read());
      if (!next) return;
      try {
        yield next.batch;
      } finally {
        next.release();
      }
    }
  }

  #loadWritePosition(): number {
    const position = this.#header.writePosition;
    if (position < this.#published) this.#broken(fail('ERR_RING_INVALID', `the write position went back from ${this.#published} to ${position}`));
    const readPosition = this.#readPosition;
    if (position - readPosition > this.#capacity) this.#broken(fail('ERR_RING_INVALID', `the write position ${position} is more than the ${this.#capacity}-byte ring ahead of this reader (${readPosition})`));
    this.#published = position;
    return position;
  }

  /** Reads the record at the current position; null for records that carry no batch, undefined for an EXTERNAL one left unread (`sync`). */
  #readRecord(writePosition: number, sync: boolean): StreamBatch | null | undefined | Promise<StreamBatch> {
    const offset = ringOffset(this.#position, this.#capacity);
    let record;
    try {
      record = readRecordHeader(this.#view, offset, this.#capacity, writePosition - this.#position);
    } catch (e) {
      this.#broken(e as ArrowShmError);
    }
    if (sync && record.kind === RecordKind.External && !this.#segments.has(record.sequence)) return undefined;
    const held: Held = { end: this.#position + record.length, released: false };
    this.#held.push(held);
    this.#position += record.length;
    const release = () => {
      held.released = true;
      this.#releaseLeading();
    };
    switch (record.kind) {
      case RecordKind.Padding:
        release();
        return null;
      case RecordKind.End:
        this.#ended = true;
        release();
        return null;
      case RecordKind.Batch: {
        const bytes = this.#data.subarray(offset + RECORD_HEADER_BYTES, offset + RECORD_HEADER_BYTES + record.ipcLength);
        return this.#decode(bytes, record.sequence, release);
      }
      case RecordKind.External: {
        const arrived = this.#segments.get(record.sequence);
        if (!arrived) return this.#readExternal(record.sequence, release);
        this.#segments.delete(record.sequence);
        return this.#decodeExternal(arrived, record.sequence, release);
      }
    }
    return null;
  }

  async #readExternal(sequence: number, release: () => void): Promise<StreamBatch> {
    return this.#decodeExternal(await this.#segment(sequence), sequence, release);
  }

  #decodeExternal(segment: ExternalSegment, sequence: number, release: () => void): StreamBatch {
    if (segment instanceof ArrowShmError) {
      release();
      throw segment;
    }
    return this.#decode(segment.mapping.bytes(segment.offset, segment.length), sequence, () => {
      segment.mapping.release();
      release();
    });
  }

  #decode(bytes: Uint8Array, sequence: number, release: () => void): StreamBatch {
    let batch: RecordBatch;
    try {
      batch = this.#decoder.decode(bytes);
    } catch (e) {
      release();
      throw e;
    }
    this.#batches++;
    return new StreamBatch(batch, sequence, bytes, release);
  }

  /** Publishes the end of the leading run of released records and wakes a waiting producer (§12.3). */
  #releaseLeading(): void {
    let advanced = false;
    let readPosition = 0;
    while (this.#held.length > 0 && this.#held[0]!.released) {
      readPosition = this.#held.shift()!.end;
      advanced = true;
    }
    if (!advanced || this.#closed) return;
    this.#readPosition = readPosition;
    this.#header.setReadPosition(this.#slot, readPosition);
    this.#header.wakeProducer(this.#spaceEventFd);
  }

  /** A timer that ends the wait at `deadline` (read()'s timeout); ERR_TIMEOUT if it has passed. */
  #interruptAt(deadline: number): NodeJS.Timeout {
    const remaining = deadline - performance.now();
    if (remaining <= 0) throw this.#timedOut(this.#options.readTimeoutMs);
    return setTimeout(() => this.#waiter.interrupt(), remaining);
  }

  /** §12.3 for a reader that blocks its thread: flag, re-check, sleep in poll() on the eventfd and the channel's socket. */
  #sleepBlocking(deadline: number | undefined, timeoutMs: number | undefined): void {
    this.#header.setReaderWaiting(this.#slot, true);
    try {
      if (this.#header.writePosition > this.#position) return;
      const remaining = deadline === undefined ? undefined : deadline - performance.now();
      if (remaining !== undefined && remaining <= 0) throw this.#timedOut(timeoutMs);
      if (this.#waiter.waitBlocking(remaining, this.#link.socketFd) === 'hangup') this.#peerGone ??= this.#producerLeft();
    } finally {
      this.#header.setReaderWaiting(this.#slot, false);
    }
  }

  #timedOut(timeoutMs: number | undefined): ArrowShmError {
    return fail('ERR_TIMEOUT', `no batch within ${timeoutMs} ms`);
  }

  #producerLeft(): ArrowShmError {
    return fail('ERR_PEER_CLOSED', `the producer left the stream after ${this.#batches} batches without ending it`);
  }

  /** The segment of an EXTERNAL record; the producer sent it before publishing the record. */
  async #segment(sequence: number): Promise<ExternalSegment> {
    for (;;) {
      const segment = this.#segments.get(sequence);
      if (segment) {
        this.#segments.delete(sequence);
        return segment;
      }
      if (this.#peerGone) return this.#peerGone;
      if (this.#closed) return fail('ERR_CLOSED', 'the stream reader is closed');
      await this.#waiter.wait(); // onSegment interrupts it
    }
  }

  /** @internal A STREAM_SEGMENT frame for this stream (§12.1). Takes ownership of `fds`. */
  onSegment(frame: Frame, fds: number[]): void {
    const sequence = Number(frame.metadata.sequence ?? NaN);
    let result: ExternalSegment;
    try {
      if (fds.length !== 1 || frame.fdCount !== 1) throw fail('ERR_PROTOCOL', `STREAM_SEGMENT must carry exactly 1 fd, got ${fds.length}`);
      if (!Number.isSafeInteger(sequence) || sequence < 0) throw fail('ERR_PROTOCOL', `STREAM_SEGMENT without a valid sequence`);
      const mapping = mapReceivedSegment(fds.pop()!, { policy: 'sealed', ipcOffset: frame.ipcOffset, ipcLength: frame.ipcLength, maxMessageBytes: this.#options.maxMessageBytes ?? MAX_NODE_MESSAGE_BYTES });
      result = { mapping, offset: Number(frame.ipcOffset), length: Number(frame.ipcLength) };
    } catch (e) {
      closeFds(fds);
      result = e instanceof ArrowShmError ? e : fail('ERR_PROTOCOL', String(e));
      this.#link.sendError(result.code, result.message, frame.messageId).catch(() => {});
      if (!Number.isSafeInteger(sequence)) return;
    }
    const previous = this.#segments.get(sequence);
    if (previous && !(previous instanceof ArrowShmError)) previous.mapping.release();
    if (this.#closed) {
      if (!(result instanceof ArrowShmError)) result.mapping.release();
      return;
    }
    this.#segments.set(sequence, result);
    this.#waiter.interrupt();
  }

  /** @internal The kernel dropped a STREAM_SEGMENT's fd (this process ran out of fds): that batch fails, the stream goes on. */
  onSegmentLost(frame: Frame, error: ArrowShmError): void {
    const sequence = Number(frame.metadata.sequence ?? NaN);
    this.#link.sendError(error.code, error.message, frame.messageId).catch(() => {});
    if (!Number.isSafeInteger(sequence) || this.#closed) return;
    this.#segments.set(sequence, error);
    this.#waiter.interrupt();
  }

  /** A broken ring ends the stream: tell the producer, close, throw. */
  #broken(error: ArrowShmError): never {
    this.#link.sendError(error.code, error.message, 0n).catch(() => {});
    this.close();
    throw error;
  }

  /**
   * Unmaps the ring and closes the eventfds. Batches not released yet become unreadable (their
   * views are detached, never freed memory). Leaving before the end closes the channel, which is
   * how a consumer tells the producer it left (§12.1).
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopListening();
    if (!this.#ended || this.ownsChannel) this.#link.close();
    this.#waiter.close();
    for (const s of this.#segments.values()) if (!(s instanceof ArrowShmError)) s.mapping.release();
    this.#segments.clear();
    closeParts({
      headerMapping: this.#headerMapping,
      dataMapping: this.#dataMapping,
      prologueMapping: this.#prologueMapping,
      dataEventFd: this.#dataEventFd,
      spaceEventFd: this.#spaceEventFd,
    });
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

interface Opened {
  headerMapping: Mapping;
  dataMapping: Mapping;
  prologueMapping: Mapping;
  decoder: BatchDecoder;
  prologueBytes: Uint8Array;
  header: RingHeader;
  capacity: number;
  slot: number;
  dataEventFd: number;
  spaceEventFd: number;
}

function decimal(kv: KeyValues, key: string): number {
  const text = kv[key];
  const n = text !== undefined && /^\d{1,16}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n)) throw fail('ERR_PROTOCOL', `STREAM_OPEN without a valid ${key} (${JSON.stringify(text)})`);
  return n;
}

function checkEventFd(fd: number, what: string): void {
  let target = '';
  try {
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    // reported below
  }
  if (target !== 'anon_inode:[eventfd]') throw fail('ERR_SEGMENT_INVALID', `the ${what} fd is not an eventfd (${target || 'unknown'})`);
}

/** §12.1/§12.2 checks, in order; closes every fd it does not hand back inside `Opened`. */
function openParts(frame: Frame, fds: number[], limits: Partial<IpcLimits> | undefined): Opened {
  const opened: Partial<Opened> = {};
  try {
    if (fds.length !== 4 || frame.fdCount !== 4) throw fail('ERR_PROTOCOL', `STREAM_OPEN must carry exactly 4 fds, got ${fds.length} (fd_count ${frame.fdCount})`);
    const kv = frame.metadata;
    decimal(kv, 'stream_id');
    const slot = decimal(kv, 'reader_slot');
    const start = decimal(kv, 'start_position');
    const capacity = decimal(kv, 'capacity');
    checkCapacity(capacity);
    checkEventFd(fds[2]!, 'data');
    checkEventFd(fds[3]!, 'space');

    const ring = Segment.adopt(fds[0]!);
    fds[0] = -1;
    try {
      const seals = ring.seals();
      if ((seals & RING_SEALS) !== RING_SEALS) throw fail('ERR_SEGMENT_UNSEALED', `ring seals are ${describeSeals(seals)}, required ${describeSeals(RING_SEALS)}`);
      if (ring.size !== RING_HEADER_BYTES + capacity) throw fail('ERR_RING_INVALID', `ring segment of ${ring.size} bytes, expected ${RING_HEADER_BYTES} + ${capacity}`);
      opened.headerMapping = new Mapping(ring.fd, RING_HEADER_BYTES, true);
      const header = new RingHeader(opened.headerMapping.buffer);
      header.check(capacity, slot);
      const written = header.writePosition;
      if (start > written || written - start > capacity || start % 64 !== 0) throw fail('ERR_RING_INVALID', `start position ${start} does not fit the write position ${written}`);
      opened.header = header;
      opened.capacity = capacity;
      opened.slot = slot;
      opened.dataMapping = new Mapping(ring.fd, capacity, false, RING_HEADER_BYTES);
    } finally {
      ring.closeFd();
    }

    const prologueFd = fds[1]!;
    fds[1] = -1;
    const prologueMapping = (opened.prologueMapping = mapReceivedSegment(prologueFd, { policy: 'sealed', ipcOffset: frame.ipcOffset, ipcLength: frame.ipcLength, maxMessageBytes: 1024 ** 3 }));
    opened.prologueBytes = prologueMapping.bytes(Number(frame.ipcOffset), Number(frame.ipcLength));
    opened.decoder = new BatchDecoder(opened.prologueBytes, limits);
    opened.dataEventFd = fds[2]!;
    opened.spaceEventFd = fds[3]!;
    fds.length = 0;
    return opened as Opened;
  } catch (e) {
    closeFds(fds);
    closeParts(opened);
    throw e;
  }
}

function closeParts(p: Partial<Opened>): void {
  p.headerMapping?.release();
  p.dataMapping?.release();
  p.prologueMapping?.release();
  if (p.dataEventFd !== undefined) closeFds([p.dataEventFd]);
  if (p.spaceEventFd !== undefined) closeFds([p.spaceEventFd]);
}


