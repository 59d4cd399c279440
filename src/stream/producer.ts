// The producing side of a stream (docs/PROTOCOL.md §12): owns the ring, attaches consumers,
// writes records with back-pressure, ends the stream.
import { RecordBatch, Schema, Table } from 'apache-arrow';
import { compareSchemas } from 'apache-arrow/visitor/typecomparator';
import { fail } from '../errors.js';
import { native } from '../native.js';
import { DictionaryTracker, LayoutBuilder, writeIpcLayout, writeRecordBatchMessage } from '../ipc/writer.js';
import { Mapping } from '../shm/segment.js';
import { closeFds } from '../shm/fds.js';
import type { StreamLink } from '../transport/stream-link.js';
import { FrameKind, type KeyValues } from '../transport/frame.js';
import { PreparedTable } from '../ipc/prepared.js';
import { BatchEncoder } from './encoder.js';
import {
  EventWaiter,
  MAX_READERS,
  RECORD_HEADER_BYTES,
  RING_HEADER_BYTES,
  RecordKind,
  RING_SEALS,
  RingHeader,
  alignRecord,
  checkCapacity,
  placeRecord,
  ringOffset,
  spinUntil,
  writeRecordHeader,
} from './ring.js';

export interface StreamWriterOptions {
  /** Bytes of the ring's data area, a power of two (default 16 MiB). Batches over a quarter of it travel in their own segment. */
  capacityBytes?: number;
  /** Most records not yet released by every reader (default: no limit besides bytes). */
  maxMessages?: number;
  /** When the ring is full: wait for room (default) or fail with ERR_RING_FULL. */
  onFull?: 'wait' | 'error';
  /** With onFull 'wait': fail with ERR_TIMEOUT after this many ms without room. */
  writeTimeoutMs?: number;
  /** Busy-poll for room this many µs before sleeping (latency option; blocks the event loop meanwhile). Default 0. */
  spinMicros?: number;
  /** Reader slots (default 62 for a publication, 1 for a channel stream). */
  maxReaders?: number;
  /** User metadata sent with STREAM_OPEN. */
  metadata?: KeyValues;
  /** How long a consumer may take to accept the stream. Default 5000 ms. */
  attachTimeoutMs?: number;
}

const DEFAULT_CAPACITY = 16 * 1024 * 1024;

interface Reader {
  slot: number;
  link: StreamLink;
  dataEvent: number;
  attached: boolean;
  stopListening: () => void;
}

/** Everything a stream owns in this process; closed exactly once. */
export class RingWriter {
  readonly schema: Schema;
  readonly capacity: number;
  readonly streamId: bigint;
  #options: Required<Omit<StreamWriterOptions, 'metadata' | 'writeTimeoutMs'>> & { writeTimeoutMs?: number; metadata: KeyValues };
  #ringFd: number;
  #header: RingHeader;
  #headerMapping: Mapping;
  #dataMapping: Mapping;
  #data: Uint8Array;
  #view: DataView;
  #spaceEventFd: number;
  #space: EventWaiter;
  #readers = new Map<number, Reader>();
  #writePosition = 0;
  #sequence = 0;
  /** End positions of published records, oldest first (for maxMessages). */
  #unreleased: number[] = [];
  /** Index of the oldest unreleased entry (a moving head: shift() would be O(n) per release). */
  #unreleasedHead = 0;
  #dictionaries = new DictionaryTracker();
  #schemaBytes: Uint8Array;
  /** Dictionary messages a late joiner needs, in order (PROTOCOL.md §12.4). */
  #dictionaryMessages: { id: number; bytes: Uint8Array }[] = [];
  #lastSchema: Schema | null = null;
  #writing: Promise<void> = Promise.resolve();
  /** Tasks queued or running on #writing: writes go straight into the ring only when none is. */
  #busy = 0;
  /** Writes this stream's batches into the ring without the generic IPC writer, if its schema allows. */
  #encoder: BatchEncoder | null;
  /** The oldest position a reader held when last computed: free space is at least what it implies. */
  #oldestSeen = 0;
  #ended = false;
  #closed = false;

  static #nextStreamId = 1n;

  constructor(schema: Schema, options: StreamWriterOptions = {}, defaultReaders = MAX_READERS) {
    this.schema = schema;
    const capacity = options.capacityBytes ?? DEFAULT_CAPACITY;
    checkCapacity(capacity);
    const maxReaders = options.maxReaders ?? defaultReaders;
    if (!Number.isInteger(maxReaders) || maxReaders < 1 || maxReaders > MAX_READERS) throw fail('ERR_INVALID_ARGUMENT', `maxReaders must be 1..${MAX_READERS}, got ${maxReaders}`);
    const maxMessages = options.maxMessages ?? Number.POSITIVE_INFINITY;
    if (!(maxMessages >= 1)) throw fail('ERR_INVALID_ARGUMENT', `maxMessages must be at least 1, got ${maxMessages}`);
    this.#options = {
      capacityBytes: capacity,
      maxMessages,
      onFull: options.onFull ?? 'wait',
      writeTimeoutMs: options.writeTimeoutMs,
      spinMicros: options.spinMicros ?? 0,
      maxReaders,
      metadata: options.metadata ?? {},
      attachTimeoutMs: options.attachTimeoutMs ?? 5000,
    };
    this.capacity = capacity;
    this.streamId = RingWriter.#nextStreamId++;
    this.#encoder = BatchEncoder.for(schema);
    const layout = new LayoutBuilder();
    layout.schema(schema);
    this.#schemaBytes = new Uint8Array(layout.position);
    writeIpcLayout({ byteLength: layout.position, chunks: layout.chunks, schema, recordBatches: 0 }, this.#schemaBytes);

    this.#ringFd = native.memfdCreate('arrow-shm-ring', RING_HEADER_BYTES + capacity);
    let headerMapping: Mapping | undefined, dataMapping: Mapping | undefined;
    try {
      native.addSeals(this.#ringFd, RING_SEALS);
      this.#headerMapping = headerMapping = new Mapping(this.#ringFd, RING_HEADER_BYTES, true);
      this.#dataMapping = dataMapping = new Mapping(this.#ringFd, capacity, true, RING_HEADER_BYTES);
      this.#header = new RingHeader(this.#headerMapping.buffer);
      this.#header.init(capacity, maxReaders);
      this.#data = this.#dataMapping.bytes();
      this.#view = new DataView(this.#dataMapping.buffer);
      this.#spaceEventFd = native.eventfd();
      this.#space = new EventWaiter(this.#spaceEventFd);
    } catch (e) {
      headerMapping?.release();
      dataMapping?.release();
      native.close(this.#ringFd);
      throw e;
    }
  }

  get readers(): number {
    return [...this.#readers.values()].filter((r) => r.attached).length;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Attaches the consumer at the other end of `link` (§12.4 step 2); resolves once it ACKed the
   * STREAM_OPEN. Runs between writes, so the joiner's start position and prologue agree with the records.
   */
  async attach(link: StreamLink, correlationId = 0n): Promise<void> {
    let acked!: Promise<void>;
    let slot = -1;
    let attaching: Reader | undefined;
    await this.#serial(async () => {
      if (this.#closed || this.#ended) throw fail('ERR_CLOSED', 'the stream has ended');
      for (let i = 0; i < this.#options.maxReaders && slot < 0; i++) if (!this.#readers.has(i)) slot = i;
      if (slot < 0) throw fail('ERR_NO_READER_SLOT', `all ${this.#options.maxReaders} reader slots of the stream are taken`);
      const prologue = this.#prologue();
      const reader: Reader = (attaching = { slot, link, dataEvent: -1, attached: false, stopListening: () => {} });
      try {
        reader.dataEvent = native.eventfd();
        this.#readers.set(slot, reader);
        this.#header.setReadPosition(slot, this.#writePosition);
        this.#header.setReaderWaiting(slot, false);
        this.#header.setSlotPid(slot, link.peer.pid);
        this.#header.setSlotState(slot, 1);
        reader.stopListening = link.onClose(() => this.#detach(slot));
        const frame = link.sendStreamFrame(
          {
            kind: FrameKind.StreamOpen,
            correlationId,
            ipcLength: BigInt(prologue.ipcLength),
            fdCount: 4,
            metadata: {
              ...this.#options.metadata,
              stream_id: String(this.streamId),
              reader_slot: String(slot),
              start_position: String(this.#writePosition),
              capacity: String(this.capacity),
            },
          },
          [this.#ringFd, prologue.segment.fd, reader.dataEvent, this.#spaceEventFd],
          this.#options.attachTimeoutMs,
        );
        acked = frame.acked;
        await frame.sent;
      } catch (e) {
        if (this.#readers.get(slot) === reader) this.#detach(slot);
        else if (reader.dataEvent >= 0) closeFds([reader.dataEvent]);
        throw e;
      } finally {
        prologue.close();
      }
    });
    try {
      await acked;
      // The consumer may have acknowledged and left at once (its hang-up detached it already).
      if (this.#readers.get(slot) !== attaching) throw this.#closed ? fail('ERR_CLOSED', 'the stream was closed while the consumer attached') : fail('ERR_PEER_CLOSED', 'the consumer left right after accepting the stream');
      attaching!.attached = true;
    } catch (e) {
      this.#detach(slot);
      throw e;
    }
  }

  #serial<T>(task: () => Promise<T>): Promise<T> {
    this.#busy++;
    const run = this.#writing.then(task);
    this.#writing = run.then(
      () => void this.#busy--,
      () => void this.#busy--,
    );
    return run;
  }

  #prologue(): PreparedTable {
    return PreparedTable.from(concat([this.#schemaBytes, ...this.#dictionaryMessages.map((m) => m.bytes)]));
  }

  #detach(slot: number): void {
    const reader = this.#readers.get(slot);
    if (!reader) return;
    this.#readers.delete(slot);
    reader.stopListening();
    if (!this.#closed) this.#header.setSlotState(slot, 0);
    native.close(reader.dataEvent);
    this.#space.interrupt(); // its records no longer hold the ring
  }

  /**
   * Appends every batch of `data`, in order (§12.4 step 3). Writes are serialized. While nothing
   * waits, batches that fit go into the ring at once, published together with one wake-up.
   */
  write(data: Table | RecordBatch | RecordBatch[]): Promise<void> {
    const batches = data instanceof Table ? data.batches : data instanceof RecordBatch ? [data] : data;
    let written = 0;
    if (this.#busy === 0) {
      try {
        written = this.#writeNow(batches);
      } catch (e) {
        return Promise.reject(e);
      }
      if (written === batches.length) return Promise.resolve();
    }
    const rest = written === 0 ? batches : batches.slice(written);
    return this.#serial(async () => {
      for (const batch of rest) await this.#writeBatch(batch);
    });
  }

  /** Writes the leading batches the encoder takes and that fit now, publishes them once; returns how many. */
  #writeNow(batches: readonly RecordBatch[]): number {
    let written = 0;
    const from = this.#writePosition;
    try {
      for (const batch of batches) {
        this.#checkBatch(batch);
        const size = this.#encoder?.measure(batch) ?? -1;
        const recordLength = alignRecord(RECORD_HEADER_BYTES + size);
        if (size < 0 || recordLength > this.capacity / 4) break;
        const { offset, padding } = placeRecord(this.#writePosition, recordLength, this.capacity);
        if (!this.#fits(padding + recordLength)) break;
        if (padding > 0) this.#pad(padding);
        this.#writeEncoded(offset, recordLength, size);
        written++;
      }
    } finally {
      if (this.#writePosition !== from) this.#wakeReaders();
    }
    return written;
  }

  #checkBatch(batch: RecordBatch): void {
    if (this.#closed || this.#ended) throw fail('ERR_CLOSED', 'the stream has ended');
    if (batch.schema !== this.#lastSchema) {
      if (!compareSchemas(this.schema, batch.schema)) throw fail('ERR_INVALID_ARGUMENT', 'the batch schema differs from the stream schema');
      this.#lastSchema = batch.schema;
    }
  }

  /** A BATCH record the encoder measured, at `offset`; advanced past but not yet published. */
  #writeEncoded(offset: number, recordLength: number, size: number): void {
    writeRecordHeader(this.#view, offset, { length: recordLength, kind: RecordKind.Batch, sequence: this.#sequence, ipcLength: size });
    this.#encoder!.write(this.#data, this.#view, offset + RECORD_HEADER_BYTES);
    this.#data.fill(0, offset + RECORD_HEADER_BYTES + size, offset + recordLength);
    this.#advance(recordLength, true);
    this.#sequence++;
  }

  async #writeBatch(batch: RecordBatch): Promise<void> {
    this.#checkBatch(batch);
    const size = this.#encoder?.measure(batch) ?? -1;
    if (size >= 0 && alignRecord(RECORD_HEADER_BYTES + size) <= this.capacity / 4) {
      const recordLength = alignRecord(RECORD_HEADER_BYTES + size);
      const offset = await this.#reserve(recordLength);
      this.#writeEncoded(offset, recordLength, size);
      this.#wakeReaders();
      return;
    }
    const payload = new LayoutBuilder();
    const dictionaries = this.#dictionaries.plan(batch, payload);
    writeRecordBatchMessage(batch, payload);
    const recordLength = alignRecord(RECORD_HEADER_BYTES + payload.position);
    const sequence = this.#sequence;
    let messages: Uint8Array;
    if (recordLength > this.capacity / 4) {
      messages = new Uint8Array(payload.position);
      writeIpcLayout({ byteLength: payload.position, chunks: payload.chunks, schema: this.schema, recordBatches: 1 }, messages);
      const offset = await this.#reserve(RECORD_HEADER_BYTES);
      await this.#sendSegment(messages, sequence);
      writeRecordHeader(this.#view, offset, { length: RECORD_HEADER_BYTES, kind: RecordKind.External, sequence, ipcLength: messages.byteLength });
      this.#publish(RECORD_HEADER_BYTES, true);
    } else {
      const offset = await this.#reserve(recordLength);
      writeRecordHeader(this.#view, offset, { length: recordLength, kind: RecordKind.Batch, sequence, ipcLength: payload.position });
      messages = this.#data.subarray(offset + RECORD_HEADER_BYTES, offset + recordLength);
      writeIpcLayout({ byteLength: recordLength - RECORD_HEADER_BYTES, chunks: payload.chunks, schema: this.schema, recordBatches: 1 }, messages, true);
      this.#publish(recordLength, true);
    }
    for (const d of dictionaries.written) {
      if (!d.isDelta) this.#dictionaryMessages = this.#dictionaryMessages.filter((m) => m.id !== d.id);
      this.#dictionaryMessages.push({ id: d.id, bytes: messages.slice(d.start, d.end) });
    }
    dictionaries.commit();
    this.#sequence++;
  }

  /** A record too big for the ring: its own sealed segment, sent to every reader (§12.1). */
  async #sendSegment(messages: Uint8Array, sequence: number): Promise<void> {
    // The schema first, so that the segment is a valid IPC stream on its own.
    const segment = PreparedTable.from(concat([this.#schemaBytes, messages]));
    try {
      const frame = {
        kind: FrameKind.StreamSegment,
        ipcOffset: BigInt(this.#schemaBytes.byteLength),
        ipcLength: BigInt(messages.byteLength),
        fdCount: 1,
        metadata: { stream_id: String(this.streamId), sequence: String(sequence) },
      };
      const readers = [...this.#readers.values()];
      await Promise.all(readers.map((r) => r.link.sendStreamFrame(frame, [segment.segment.fd]).sent.catch(() => this.#detach(r.slot))));
    } finally {
      segment.close();
    }
  }

  /** Makes `advance` more bytes visible and wakes sleeping readers (§12.3). */
  #publish(advance: number, counted: boolean): void {
    this.#advance(advance, counted);
    this.#wakeReaders();
  }

  #advance(advance: number, counted: boolean): void {
    this.#writePosition += advance;
    if (counted) this.#unreleased.push(this.#writePosition);
  }

  /** Publishes the write position (after every record below it is written), then wakes sleeping readers. */
  #wakeReaders(): void {
    this.#header.writePosition = this.#writePosition;
    for (const r of this.#readers.values()) this.#header.wakeReader(r.slot, r.dataEvent);
  }

  /** A PADDING record that fills the rest of the data area (§12.2). */
  #pad(padding: number): void {
    writeRecordHeader(this.#view, ringOffset(this.#writePosition, this.capacity), { length: padding, kind: RecordKind.Padding, sequence: 0, ipcLength: 0 });
    this.#advance(padding, false);
  }

  /** Whether `length` more bytes fit: first by the free space last computed (cheap, never too much), then by the readers' positions now. */
  #fits(length: number): boolean {
    if (this.#unreleasedCount >= this.#options.maxMessages) {
      this.#oldestHeld(); // releases counted records
      if (this.#unreleasedCount >= this.#options.maxMessages) return false;
    }
    return this.capacity - (this.#writePosition - this.#oldestSeen) >= length || this.capacity - (this.#writePosition - this.#oldestHeld()) >= length;
  }

  get #unreleasedCount(): number {
    return this.#unreleased.length - this.#unreleasedHead;
  }

  /** The lowest position some attached reader still holds (clamped: a reader cannot claim more). */
  #oldestHeld(): number {
    let oldest = this.#writePosition;
    for (const r of this.#readers.values()) {
      const p = Math.max(Math.min(this.#header.readPosition(r.slot), this.#writePosition), this.#writePosition - this.capacity);
      if (p < oldest) oldest = p;
    }
    this.#oldestSeen = oldest;
    while (this.#unreleasedHead < this.#unreleased.length && this.#unreleased[this.#unreleasedHead]! <= oldest) this.#unreleasedHead++;
    if (this.#unreleasedHead > 1024 && this.#unreleasedHead * 2 > this.#unreleased.length) {
      this.#unreleased = this.#unreleased.slice(this.#unreleasedHead);
      this.#unreleasedHead = 0;
    }
    return oldest;
  }

  /** Room for `length` contiguous bytes: returns their data offset, padding to the end first if needed. */
  async #reserve(length: number, wait = false): Promise<number> {
    const deadline = this.#options.writeTimeoutMs === undefined ? undefined : performance.now() + this.#options.writeTimeoutMs;
    for (;;) {
      const { offset, padding } = placeRecord(this.#writePosition, length, this.capacity);
      const fits = () => this.#fits(padding + length);
      if (fits() || spinUntil(fits, this.#options.spinMicros)) {
        if (padding > 0) {
          this.#pad(padding);
          this.#wakeReaders();
        }
        return offset;
      }
      if (this.#options.onFull === 'error' && !wait) {
        const byMessages = this.#unreleasedCount >= this.#options.maxMessages;
        throw fail('ERR_RING_FULL', byMessages ? `${this.#unreleasedCount} records are not released yet (maxMessages ${this.#options.maxMessages})` : `the ring has no room for a ${length}-byte record (${this.capacity} bytes, ${this.#writePosition - this.#oldestHeld()} held by readers)`);
      }
      await this.#sleep(fits, deadline, 'room in the ring');
    }
  }

  /** §12.3 from the producer's side: flag, re-check, sleep on the space eventfd. */
  async #sleep(ready: () => boolean, deadline: number | undefined, what: string): Promise<void> {
    this.#header.setProducerWaiting(true);
    if (ready() || this.#closed) {
      this.#header.setProducerWaiting(false);
      return;
    }
    const remaining = deadline === undefined ? undefined : deadline - performance.now();
    if (remaining !== undefined && remaining <= 0) throw fail('ERR_TIMEOUT', `no ${what} within ${this.#options.writeTimeoutMs} ms`);
    let timer: NodeJS.Timeout | undefined;
    if (remaining !== undefined) timer = setTimeout(() => this.#space.interrupt(), remaining);
    try {
      await this.#space.wait();
    } finally {
      clearTimeout(timer);
      this.#header.setProducerWaiting(false);
    }
  }

  /** Publishes the END record, then resolves once every reader released everything or left. */
  async end(options: { timeoutMs?: number } = {}): Promise<void> {
    await this.#writing;
    if (this.#closed) throw fail('ERR_CLOSED', 'the stream is closed');
    if (!this.#ended) {
      const offset = await this.#reserve(RECORD_HEADER_BYTES, true); // the end always waits for room
      writeRecordHeader(this.#view, offset, { length: RECORD_HEADER_BYTES, kind: RecordKind.End, sequence: this.#sequence, ipcLength: 0 });
      this.#ended = true;
      this.#header.markEnded();
      this.#publish(RECORD_HEADER_BYTES, false);
    }
    const deadline = options.timeoutMs === undefined ? undefined : performance.now() + options.timeoutMs;
    const drained = () => this.#oldestHeld() >= this.#writePosition;
    while (!drained() && !this.#closed) await this.#sleep(drained, deadline, 'release of every record by the readers');
  }

  /** Frees the ring, the eventfds and every reader slot. Readers see their channel, not the ring, go. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const slot of [...this.#readers.keys()]) this.#detach(slot);
    this.#space.close();
    native.close(this.#spaceEventFd);
    this.#headerMapping.release();
    this.#dataMapping.release();
    native.close(this.#ringFd);
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** The writing end of a stream opened on a channel: `StreamWriter.open(channel, schema)`. */
export class StreamWriter {
  #producer: RingWriter;
  #link: StreamLink;

  private constructor(producer: RingWriter, link: StreamLink) {
    this.#producer = producer;
    this.#link = link;
  }

  /**
   * Opens a stream of record batches to the peer of `channel` (docs/PROTOCOL.md §12), which
   * receives it with `StreamReader.accept`. Resolves once the peer has mapped the ring.
   */
  static async open(channel: { readonly streams: StreamLink }, schema: Schema, options: StreamWriterOptions = {}): Promise<StreamWriter> {
    const link = channel.streams;
    const unavailable = link.unavailable;
    if (unavailable) throw unavailable;
    if (!link.peer.capabilities.includes('stream')) throw fail('ERR_PROTOCOL', `the peer (${link.peer.implementation}) does not accept streams`);
    const producer = new RingWriter(schema, options, 1);
    try {
      await producer.attach(link);
    } catch (e) {
      producer.close();
      throw e;
    }
    return new StreamWriter(producer, link);
  }

  get schema(): Schema {
    return this.#producer.schema;
  }

  /**
   * Appends the batches of `data`; resolves once they are in the ring (waiting for room per
   * `onFull`). Many small batches in one call (an array or a Table) are published together, with
   * one wake-up of the reader; the batches may be reused once this resolves.
   */
  write(data: Table | RecordBatch | RecordBatch[]): Promise<void> {
    return this.#producer.write(data);
  }

  /** Ends the stream and resolves once the reader released every batch (or left); frees the ring. */
  async close(options: { timeoutMs?: number } = {}): Promise<void> {
    try {
      await this.#producer.end(options);
    } finally {
      this.#producer.close();
    }
  }

  /** Frees the ring at once, without an end record, and closes the channel: the reader's stream fails. */
  abort(): void {
    this.#producer.close();
    this.#link.close();
  }
}
