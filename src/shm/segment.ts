// Segments (memfds) and their mappings (docs/PROTOCOL.md §5, §6): creating, writing, sealing,
// checking what a peer sent before mapping it, and mappings that detach every view when released.
import { fail } from '../errors.js';
import { constants, native } from '../native.js';

const { F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE, F_SEAL_FUTURE_WRITE, S_IFMT, S_IFREG } = constants;

/** Seals of a segment whose bytes can never change (docs/PROTOCOL.md §6.1). */
export const SEALS_SEALED = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
/** Seals of a leased, reusable segment (§6.2): it can never shrink, so a reader never gets SIGBUS. */
export const SEALS_LEASED = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE;
const SEALS_NO_SHRINK = F_SEAL_SHRINK | F_SEAL_GROW;

export type SealPolicy = 'sealed' | 'leased' | 'unsealed';

export const PAGE_SIZE = constants.PAGE_SIZE;
const MAPPING_REPORT_DELAY_MS = 1000;

export function describeSeals(seals: number): string {
  const names: string[] = [];
  if (seals & F_SEAL_SEAL) names.push('SEAL');
  if (seals & F_SEAL_SHRINK) names.push('SHRINK');
  if (seals & F_SEAL_GROW) names.push('GROW');
  if (seals & F_SEAL_WRITE) names.push('WRITE');
  if (seals & F_SEAL_FUTURE_WRITE) names.push('FUTURE_WRITE');
  return names.length ? names.join('|') : 'none';
}

// Mappings still open a while after they were made are counted in V8's external memory, so that
// the GC eventually collects a forgotten one. One timer serves all of them; it holds the buffers
// only weakly and never keeps the process alive. Entries are queued in due order.
const pendingReports: { buffer: WeakRef<ArrayBuffer>; due: number }[] = [];
let reportTimer: NodeJS.Timeout | null = null;

function reportLater(buffer: ArrayBuffer): void {
  pendingReports.push({ buffer: new WeakRef(buffer), due: performance.now() + MAPPING_REPORT_DELAY_MS });
  if (!reportTimer) armReportTimer();
}

function armReportTimer(): void {
  const next = pendingReports[0];
  reportTimer = next ? setTimeout(reportDue, Math.max(0, next.due - performance.now())).unref() : null;
}

function reportDue(): void {
  const now = performance.now();
  let due = 0;
  while (due < pendingReports.length && pendingReports[due]!.due <= now) {
    const live = pendingReports[due++]!.buffer.deref();
    if (live && live.byteLength > 0) native.reportMapping(live); // released ones are detached: length 0
  }
  pendingReports.splice(0, due);
  armReportTimer();
}

/** A mapping of a segment, exposed as an ArrayBuffer; `release()` detaches every view first. */
export class Mapping {
  #buffer: ArrayBuffer | null;
  readonly length: number;
  readonly writable: boolean;

  constructor(fd: number, length: number, writable: boolean, offset = 0) {
    const buffer = native.mmap(fd, length, writable, offset);
    this.#buffer = buffer;
    this.length = length;
    this.writable = writable;
    reportLater(buffer);
  }

  get released(): boolean {
    return this.#buffer === null;
  }

  /** The ArrayBuffer over the mapped pages. Every Arrow buffer read from the segment is a view of it. */
  get buffer(): ArrayBuffer {
    if (!this.#buffer) throw fail('ERR_CLOSED', 'the mapping was released');
    return this.#buffer;
  }

  bytes(offset = 0, length = this.length - offset): Uint8Array {
    return new Uint8Array(this.buffer, offset, length);
  }

  /** Detaches the ArrayBuffer (every view becomes empty) and unmaps the pages. Idempotent. */
  release(): void {
    const buffer = this.#buffer;
    if (!buffer) return;
    this.#buffer = null;
    native.unmap(buffer);
  }
}

/**
 * A memfd segment owned by this process: created here (writable) or received from a peer.
 * The fd and the mapping are released by `close()`; received segments usually close the fd as
 * soon as they are mapped, since the mapping alone keeps the pages alive.
 */
export class Segment {
  #fd: number;
  #mapping: Mapping | null = null;
  #size: number;

  private constructor(fd: number, size: number) {
    this.#fd = fd;
    this.#size = size;
  }

  get size(): number {
    return this.#size;
  }

  /** Shrinks or grows the file (before sealing); drops any mapping of the old size. */
  truncate(size: number): void {
    if (size === this.#size) return;
    this.#mapping?.release();
    this.#mapping = null;
    native.ftruncate(this.fd, size);
    this.#size = size;
  }

  /** A new, empty, sealable segment of `size` bytes (zero-filled by the kernel). */
  static create(size: number, name = 'arrow-shm'): Segment {
    if (!Number.isSafeInteger(size) || size <= 0) throw fail('ERR_INVALID_ARGUMENT', `segment size must be a positive integer, got ${size}`);
    return new Segment(native.memfdCreate(name, size), size);
  }

  /** Adopts an fd (closes it on failure and on close()). Checks only that it is a regular file. */
  static adopt(fd: number): Segment {
    try {
      const st = native.fstat(fd);
      if ((st.mode & S_IFMT) !== S_IFREG) throw fail('ERR_SEGMENT_INVALID', `expected a memfd (regular file), got file type 0o${((st.mode & S_IFMT) >>> 0).toString(8)}`);
      return new Segment(fd, st.size);
    } catch (e) {
      native.close(fd);
      throw e;
    }
  }

  get fd(): number {
    if (this.#fd < 0) throw fail('ERR_CLOSED', 'the segment is closed');
    return this.#fd;
  }

  get closed(): boolean {
    return this.#fd < 0 && this.#mapping === null;
  }

  seals(): number {
    return native.getSeals(this.fd);
  }

  /** Writable bytes of the whole segment (maps it on first use). */
  writableBytes(): Uint8Array {
    return new Uint8Array(this.writableBuffer());
  }

  /** The ArrayBuffer of the segment's writable mapping (mapped on first use). */
  writableBuffer(): ArrayBuffer {
    if (!this.#mapping || !this.#mapping.writable) {
      this.#mapping?.release();
      this.#mapping = new Mapping(this.fd, this.size, true);
    }
    return this.#mapping.buffer;
  }

  /**
   * Copies `bytes` into the file at `offset` with pwrite(2). For a fresh segment this beats writing
   * through a mapping: the kernel fills its pages directly, with no user page fault per 4 KiB.
   */
  write(bytes: Uint8Array, offset: number): void {
    if (offset < 0 || offset + bytes.byteLength > this.size) throw fail('ERR_SEGMENT_BOUNDS', `write of ${bytes.byteLength} bytes at ${offset} outside the ${this.size}-byte segment`);
    if (bytes.byteLength > 0) native.pwrite(this.fd, bytes, offset);
  }

  /** Fault every page in now, so later writes cost a memcpy and nothing more. */
  prefault(): void {
    native.populate(this.writableBuffer());
  }

  /**
   * Applies the seals of `policy`. 'sealed' needs every writable mapping gone (the kernel says
   * EBUSY otherwise), so it releases this process's mapping first.
   */
  seal(policy: SealPolicy): void {
    if (policy === 'unsealed') return;
    if (policy === 'sealed') {
      this.#mapping?.release();
      this.#mapping = null;
      native.addSeals(this.fd, SEALS_SEALED);
    } else {
      native.addSeals(this.fd, SEALS_LEASED);
    }
  }

  /** Maps the whole segment read-only and returns the mapping; the segment no longer owns it. */
  takeReadOnlyMapping(): Mapping {
    return new Mapping(this.fd, this.size, false);
  }

  /** Closes the fd but keeps any mapping this segment made (the caller owns it now). */
  closeFd(): void {
    if (this.#fd >= 0) {
      const fd = this.#fd;
      this.#fd = -1;
      native.close(fd);
    }
  }

  close(): void {
    this.#mapping?.release();
    this.#mapping = null;
    this.closeFd();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** V8 exposes at most 4 GiB of one mapping as an ArrayBuffer, so that is the most a Node receiver can take. */
export const MAX_NODE_MESSAGE_BYTES = 2 ** 32;

export interface SegmentCheck {
  /** Which seals the receiver requires. */
  policy: SealPolicy;
  ipcOffset: bigint;
  ipcLength: bigint;
  maxMessageBytes: number;
}

/**
 * The receiver's checks before mapping (docs/PROTOCOL.md §5.1 steps 2-5), on an adopted segment.
 * Throws a typed error and leaves closing the fd to the caller.
 */
export function checkReceivedSegment(segment: Segment, check: SegmentCheck): void {
  let seals: number;
  try {
    seals = segment.seals();
  } catch (e) {
    throw fail('ERR_SEGMENT_INVALID', 'the fd is not a memfd: F_GET_SEALS failed', e);
  }
  const required = check.policy === 'sealed' ? SEALS_SEALED : check.policy === 'leased' ? SEALS_NO_SHRINK | F_SEAL_SEAL : 0;
  if ((seals & required) !== required) {
    throw fail('ERR_SEGMENT_UNSEALED', `segment seals are ${describeSeals(seals)}, required ${describeSeals(required)}`);
  }
  const size = BigInt(segment.size);
  const { ipcOffset, ipcLength } = check;
  if (ipcLength <= 0n || ipcOffset < 0n || ipcOffset % 8n !== 0n || ipcOffset + ipcLength > size) {
    throw fail('ERR_SEGMENT_BOUNDS', `IPC range [${ipcOffset}, +${ipcLength}) does not fit a ${size}-byte segment (offset must be 8-aligned, length > 0)`);
  }
  if (ipcLength > BigInt(check.maxMessageBytes)) {
    throw fail('ERR_TOO_LARGE', `message of ${ipcLength} bytes exceeds the limit of ${check.maxMessageBytes} bytes`);
  }
}

/**
 * Takes a received fd (§5.1): checks the segment, maps it read-only and closes the fd, whatever
 * happens; the mapping is all that remains.
 */
export function mapReceivedSegment(fd: number, check: SegmentCheck): Mapping {
  const segment = Segment.adopt(fd);
  try {
    checkReceivedSegment(segment, check);
    return segment.takeReadOnlyMapping();
  } finally {
    segment.closeFd(); // the mapping keeps the pages
  }
}
