// The ring segment of a stream (docs/PROTOCOL.md §12.2): header page, reader slots, records,
// and the wake-up protocol of §12.3. Shared by the producer and the consumer.
import { fail } from '../errors.js';
import { native, type PollerHandle } from '../native.js';

export const RING_MAGIC = 0x474e_4952_4d48_5341n; // "ASHMRING" read as a little-endian u64
export const RING_LAYOUT_VERSION = 1;
export const RING_HEADER_BYTES = 4096;
export const MIN_CAPACITY = 65536;
export const MAX_CAPACITY = 2 ** 40;
export const MAX_READERS = 62;
export const RECORD_HEADER_BYTES = 64;
export const RECORD_ALIGN = 64;

export enum RecordKind {
  Batch = 1,
  Padding = 2,
  External = 3,
  End = 4,
}

const SLOT_BASE = 128;
const SLOT_BYTES = 64;

export const alignRecord = (n: number): number => Math.ceil(n / RECORD_ALIGN) * RECORD_ALIGN;

/** Atomic views of the header page. Positions are u64 in the segment, Numbers here (2^53 bytes is far). */
export class RingHeader {
  readonly u64: BigUint64Array;
  readonly u32: Uint32Array;

  constructor(page: ArrayBuffer) {
    this.u64 = new BigUint64Array(page, 0, RING_HEADER_BYTES / 8);
    this.u32 = new Uint32Array(page, 0, RING_HEADER_BYTES / 4);
  }

  init(capacity: number, maxReaders: number): void {
    this.u64.fill(0n);
    this.u64[0] = RING_MAGIC;
    this.u32[2] = RING_LAYOUT_VERSION;
    this.u32[3] = RING_HEADER_BYTES;
    this.u64[2] = BigInt(capacity);
    this.u32[6] = maxReaders;
  }

  get magic(): bigint {
    return this.u64[0]!;
  }
  get layoutVersion(): number {
    return this.u32[2]!;
  }
  get headerLength(): number {
    return this.u32[3]!;
  }
  get capacity(): bigint {
    return this.u64[2]!;
  }
  get maxReaders(): number {
    return this.u32[6]!;
  }

  get writePosition(): number {
    return Number(Atomics.load(this.u64, 8));
  }
  set writePosition(position: number) {
    Atomics.store(this.u64, 8, BigInt(position));
  }

  /** 1 while the producer sleeps for room. */
  get producerWaiting(): Int {
    return { array: this.u32, index: 18 };
  }

  markEnded(): void {
    Atomics.store(this.u32, 19, 1);
  }

  readPosition(slot: number): number {
    return Number(Atomics.load(this.u64, (SLOT_BASE + SLOT_BYTES * slot) / 8));
  }
  setReadPosition(slot: number, position: number): void {
    Atomics.store(this.u64, (SLOT_BASE + SLOT_BYTES * slot) / 8, BigInt(position));
  }
  slotState(slot: number): number {
    return Atomics.load(this.u32, (SLOT_BASE + SLOT_BYTES * slot + 8) / 4);
  }
  setSlotState(slot: number, state: 0 | 1): void {
    Atomics.store(this.u32, (SLOT_BASE + SLOT_BYTES * slot + 8) / 4, state);
  }
  /** 1 while the consumer of `slot` sleeps for data. */
  readerWaiting(slot: number): Int {
    return { array: this.u32, index: (SLOT_BASE + SLOT_BYTES * slot + 12) / 4 };
  }
  setSlotPid(slot: number, pid: number): void {
    Atomics.store(this.u32, (SLOT_BASE + SLOT_BYTES * slot + 16) / 4, pid);
  }
}

/** An atomic u32 flag in the header. */
export interface Int {
  array: Uint32Array;
  index: number;
}

/** The waker's half of §12.3: after publishing its position, wake the other side if it sleeps. */
export function wakeIfWaiting(flag: Int, eventFd: number): void {
  if (Atomics.compareExchange(flag.array, flag.index, 1, 0) === 1) native.eventfdWrite(eventFd);
}

export interface RecordHeader {
  length: number;
  kind: RecordKind;
  sequence: number;
  ipcLength: number;
}

export function writeRecordHeader(view: DataView, offset: number, header: RecordHeader): void {
  view.setUint32(offset, header.length, true);
  view.setUint32(offset + 4, header.kind, true);
  view.setBigUint64(offset + 8, BigInt(header.sequence), true);
  view.setBigUint64(offset + 16, BigInt(header.ipcLength), true);
  for (let i = 24; i < RECORD_HEADER_BYTES; i += 8) view.setBigUint64(offset + i, 0n, true);
}

/** Reads and checks the record at data `offset` (§12.2); `available` = bytes published from it. */
export function readRecordHeader(view: DataView, offset: number, capacity: number, available: number): RecordHeader {
  const length = view.getUint32(offset, true);
  const kind = view.getUint32(offset + 4, true);
  const sequence = Number(view.getBigUint64(offset + 8, true));
  const ipcLength = Number(view.getBigUint64(offset + 16, true));
  const where = `record at data offset ${offset}`;
  if (length < RECORD_HEADER_BYTES || length % RECORD_ALIGN !== 0) throw fail('ERR_RING_INVALID', `${where}: length ${length} is not a positive multiple of 64`);
  if (length > capacity - offset) throw fail('ERR_RING_INVALID', `${where}: length ${length} runs past the end of the ${capacity}-byte data area`);
  if (length > available) throw fail('ERR_RING_INVALID', `${where}: length ${length} runs past the write position (${available} bytes published)`);
  switch (kind) {
    case RecordKind.Batch:
      if (ipcLength > length - RECORD_HEADER_BYTES || ipcLength === 0) throw fail('ERR_RING_INVALID', `${where}: IPC length ${ipcLength} does not fit its ${length}-byte record`);
      break;
    case RecordKind.Padding:
      if (length !== capacity - offset) throw fail('ERR_RING_INVALID', `${where}: padding of ${length} bytes does not fill the ${capacity - offset} bytes left`);
      break;
    case RecordKind.External:
    case RecordKind.End:
      break;
    default:
      throw fail('ERR_RING_INVALID', `${where}: unknown record kind ${kind}`);
  }
  return { length, kind, sequence, ipcLength };
}

/**
 * Sleeps on an eventfd without blocking the event loop: `wait()` resolves when the fd becomes
 * readable (its counter is then reset) or when `interrupt()` is called.
 */
export class EventWaiter {
  #fd: number;
  #poller: PollerHandle | null;
  #pending: { resolve: () => void } | null = null;

  constructor(fd: number) {
    this.#fd = fd;
    this.#poller = native.pollerCreate(fd, () => this.#fire());
  }

  wait(): Promise<void> {
    if (!this.#poller) return Promise.resolve();
    if (this.#pending) throw fail('ERR_INVALID_ARGUMENT', 'only one wait at a time');
    return new Promise((resolve) => {
      this.#pending = { resolve };
      native.pollerStart(this.#poller!, true, false);
    });
  }

  /** Ends a wait early (the caller re-checks its condition). */
  interrupt(): void {
    this.#fire(false);
  }

  #fire(drain = true): void {
    if (drain) native.eventfdRead(this.#fd);
    const pending = this.#pending;
    if (!pending) return;
    this.#pending = null;
    if (this.#poller) native.pollerStart(this.#poller, false, false);
    pending.resolve();
  }

  close(): void {
    if (!this.#poller) return;
    native.pollerClose(this.#poller);
    this.#poller = null;
    this.#fire(false);
  }
}

/** Busy-polls `ready` for up to `micros` µs (the latency option of §12.3); true if it became ready. */
export function spinUntil(ready: () => boolean, micros: number): boolean {
  if (micros <= 0) return false;
  const until = performance.now() + micros / 1000;
  do if (ready()) return true;
  while (performance.now() < until);
  return false;
}

export function checkCapacity(capacity: number): void {
  if (!Number.isSafeInteger(capacity) || capacity < MIN_CAPACITY || capacity > MAX_CAPACITY || !Number.isInteger(Math.log2(capacity))) {
    throw fail('ERR_INVALID_ARGUMENT', `ring capacity must be a power of two from ${MIN_CAPACITY} to 2^40 bytes, got ${capacity}`);
  }
}
