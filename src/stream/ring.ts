// The ring segment of a stream (docs/PROTOCOL.md §12.2): header page, reader slots, records,
// and the wake-up protocol of §12.3. Shared by the producer and the consumer.
import { fail } from '../errors.js';
import { constants, native, type PollerHandle } from '../native.js';

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

/** Byte offsets of the header page's fields (§12.2). */
const Header = {
  magic: 0,
  layoutVersion: 8,
  headerLength: 12,
  capacity: 16,
  maxReaders: 24,
  writePosition: 64,
  producerWaiting: 72,
  ended: 76,
  slots: 128,
} as const;

/** Byte offsets inside a reader slot (§12.2). */
const Slot = { bytes: 64, readPosition: 0, state: 8, waiting: 12, pid: 16 } as const;

/** The seals a ring carries: never shrinks or grows, rewritten all the time (no F_SEAL_WRITE). */
export const RING_SEALS = constants.F_SEAL_SHRINK | constants.F_SEAL_GROW | constants.F_SEAL_SEAL;

export const alignRecord = (n: number): number => Math.ceil(n / RECORD_ALIGN) * RECORD_ALIGN;

/** Where a record of `length` bytes goes when the producer is at `write` (§12.2): its data offset, after `padding` bytes of PADDING that fill the end of the ring when it would not fit there (0 when it fits). */
export function placeRecord(write: number, length: number, capacity: number): { offset: number; padding: number } {
  const offset = write % capacity;
  const tail = capacity - offset;
  return length <= tail ? { offset, padding: 0 } : { offset: 0, padding: tail };
}

/** The data offset of `position`: the ring's one wrap. */
export const ringOffset = (position: number, capacity: number): number => position % capacity;

/** Atomic views of the header page. Positions are u64 in the segment, Numbers here (2^53 bytes is far). */
export class RingHeader {
  readonly #u64: BigUint64Array;
  readonly #u32: Uint32Array;

  constructor(page: ArrayBuffer) {
    this.#u64 = new BigUint64Array(page, 0, RING_HEADER_BYTES / 8);
    this.#u32 = new Uint32Array(page, 0, RING_HEADER_BYTES / 4);
  }

  init(capacity: number, maxReaders: number): void {
    this.#u64.fill(0n);
    this.#u64[Header.magic / 8] = RING_MAGIC;
    this.#u32[Header.layoutVersion / 4] = RING_LAYOUT_VERSION;
    this.#u32[Header.headerLength / 4] = RING_HEADER_BYTES;
    this.#u64[Header.capacity / 8] = BigInt(capacity);
    this.#u32[Header.maxReaders / 4] = maxReaders;
  }

  /** A consumer's checks of a ring it was given (§12.2): ERR_RING_INVALID unless it is the ring STREAM_OPEN describes. */
  check(capacity: number, slot: number): void {
    if (this.#u64[Header.magic / 8] !== RING_MAGIC) throw fail('ERR_RING_INVALID', 'ring header without the ASHMRING magic');
    const layout = this.#u32[Header.layoutVersion / 4]!;
    if (layout !== RING_LAYOUT_VERSION) throw fail('ERR_RING_INVALID', `ring layout version ${layout}, this side reads ${RING_LAYOUT_VERSION}`);
    const headerLength = this.#u32[Header.headerLength / 4]!;
    if (headerLength !== RING_HEADER_BYTES) throw fail('ERR_RING_INVALID', `ring header length ${headerLength}, expected ${RING_HEADER_BYTES}`);
    const declared = this.#u64[Header.capacity / 8]!;
    if (declared !== BigInt(capacity)) throw fail('ERR_RING_INVALID', `ring header says capacity ${declared}, STREAM_OPEN says ${capacity}`);
    const maxReaders = this.#u32[Header.maxReaders / 4]!;
    if (maxReaders < 1 || maxReaders > MAX_READERS || slot >= maxReaders) throw fail('ERR_RING_INVALID', `reader slot ${slot} outside the ring's ${maxReaders} slots`);
  }

  get writePosition(): number {
    return Number(Atomics.load(this.#u64, Header.writePosition / 8));
  }
  set writePosition(position: number) {
    Atomics.store(this.#u64, Header.writePosition / 8, BigInt(position));
  }

  /** The producer says it sleeps for room (true) or not (false). */
  setProducerWaiting(waiting: boolean): void {
    Atomics.store(this.#u32, Header.producerWaiting / 4, waiting ? 1 : 0);
  }

  /** A consumer's half of §12.3 after releasing: wake the producer if it sleeps. */
  wakeProducer(spaceEventFd: number): void {
    wakeIfWaiting(this.#u32, Header.producerWaiting / 4, spaceEventFd);
  }

  markEnded(): void {
    Atomics.store(this.#u32, Header.ended / 4, 1);
  }

  readPosition(slot: number): number {
    return Number(Atomics.load(this.#u64, slotField(slot, Slot.readPosition) / 8));
  }
  setReadPosition(slot: number, position: number): void {
    Atomics.store(this.#u64, slotField(slot, Slot.readPosition) / 8, BigInt(position));
  }
  slotState(slot: number): number {
    return Atomics.load(this.#u32, slotField(slot, Slot.state) / 4);
  }
  setSlotState(slot: number, state: 0 | 1): void {
    Atomics.store(this.#u32, slotField(slot, Slot.state) / 4, state);
  }
  /** The consumer of `slot` says it sleeps for data (true) or not (false). */
  setReaderWaiting(slot: number, waiting: boolean): void {
    Atomics.store(this.#u32, slotField(slot, Slot.waiting) / 4, waiting ? 1 : 0);
  }
  /** The producer's half of §12.3 after publishing: wake the consumer of `slot` if it sleeps. */
  wakeReader(slot: number, dataEventFd: number): void {
    wakeIfWaiting(this.#u32, slotField(slot, Slot.waiting) / 4, dataEventFd);
  }
  setSlotPid(slot: number, pid: number): void {
    Atomics.store(this.#u32, slotField(slot, Slot.pid) / 4, pid);
  }
}

const slotField = (slot: number, field: number): number => Header.slots + Slot.bytes * slot + field;

/** §12.3: after publishing its position, wake the other side if its flag says it sleeps. */
function wakeIfWaiting(flags: Uint32Array, index: number, eventFd: number): void {
  // A sequentially consistent load suffices to see the flag (§12.3); the exchange, which takes the
  // cache line from the sleeper, only runs when there is someone to wake.
  if (Atomics.load(flags, index) === 1 && Atomics.compareExchange(flags, index, 1, 0) === 1) native.eventfdWrite(eventFd);
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
  setU64(view, offset + 8, header.sequence);
  setU64(view, offset + 16, header.ipcLength);
  for (let i = 24; i < RECORD_HEADER_BYTES; i += 4) view.setUint32(offset + i, 0, true);
}

/** A u64 field as a Number (rounded above 2^53, where every check fails anyway). */
function getU64(view: DataView, at: number): number {
  return view.getUint32(at + 4, true) * 0x1_0000_0000 + view.getUint32(at, true);
}

/** A u64 field from a safe integer, without a BigInt per write (records are written per batch). */
function setU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, value >>> 0, true);
  view.setUint32(at + 4, Math.floor(value / 0x1_0000_0000), true);
}

/** A record's failed check; its message is built only then (the checks run once per record). */
const invalidRecord = (offset: number, why: string) => fail('ERR_RING_INVALID', `record at data offset ${offset}: ${why}`);

/** Reads and checks the record at data `offset` (§12.2); `available` = bytes published from it. */
export function readRecordHeader(view: DataView, offset: number, capacity: number, available: number): RecordHeader {
  const length = view.getUint32(offset, true);
  const kind = view.getUint32(offset + 4, true);
  const sequence = getU64(view, offset + 8);
  const ipcLength = getU64(view, offset + 16);
  if (length < RECORD_HEADER_BYTES || length % RECORD_ALIGN !== 0) throw invalidRecord(offset, `length ${length} is not a positive multiple of 64`);
  if (length > capacity - offset) throw invalidRecord(offset, `length ${length} runs past the end of the ${capacity}-byte data area`);
  if (length > available) throw invalidRecord(offset, `length ${length} runs past the write position (${available} bytes published)`);
  switch (kind) {
    case RecordKind.Batch:
      if (ipcLength > length - RECORD_HEADER_BYTES || ipcLength === 0) throw invalidRecord(offset, `IPC length ${ipcLength} does not fit its ${length}-byte record`);
      break;
    case RecordKind.Padding:
      if (length !== capacity - offset) throw invalidRecord(offset, `padding of ${length} bytes does not fill the ${capacity - offset} bytes left`);
      break;
    case RecordKind.External:
    case RecordKind.End:
      break;
    default:
      throw invalidRecord(offset, `unknown record kind ${kind}`);
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
  /** The watch, once started, stays on (no epoll_ctl per sleep); it keeps the loop alive only while someone waits. */
  #watching = false;

  constructor(fd: number) {
    this.#fd = fd;
    this.#poller = native.pollerCreate(fd, () => this.#fire());
  }

  wait(): Promise<void> {
    if (!this.#poller) return Promise.resolve();
    if (this.#pending) throw fail('ERR_INVALID_ARGUMENT', 'only one wait at a time');
    return new Promise((resolve) => {
      this.#pending = { resolve };
      if (this.#watching) native.pollerRef(this.#poller!, true);
      else native.pollerStart(this.#poller!, true, false);
      this.#watching = true;
    });
  }

  /**
   * Blocks this thread (no event loop) until the fd is readable, its counter then reset: 'ready';
   * until the socket `hangupFd` (-1: none) is hung up by its peer: 'hangup'; or until `timeoutMs`
   * (undefined: no limit) passed or a signal came: 'timeout'. The caller re-checks in every case.
   */
  waitBlocking(timeoutMs: number | undefined, hangupFd: number): 'ready' | 'hangup' | 'timeout' {
    if (!this.#poller) return 'ready';
    if (this.#pending) throw fail('ERR_INVALID_ARGUMENT', 'only one wait at a time');
    // Past 2^52 µs (a century) the wait is cut short: the caller re-checks its deadline and waits again.
    const micros = timeoutMs === undefined ? -1 : Math.min(Math.max(0, Math.ceil(timeoutMs * 1000)), 2 ** 52);
    const woken = native.eventfdWait(this.#fd, micros, hangupFd);
    return woken === 1 ? 'ready' : woken === 2 ? 'hangup' : 'timeout';
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
    if (this.#poller) native.pollerRef(this.#poller, false);
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
