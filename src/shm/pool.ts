// Memory that is ready before it is needed. A fresh memfd costs a page allocation, zeroing and a
// page fault per 4 KiB page at first write; these pools move that cost off the send path.
import { native } from '../native.js';
import { Segment } from './segment.js';

const MIN_CLASS = 64 * 1024;
const PAGE = 4096;

/**
 * Size classes: 64 KiB, then four steps per power of two (1, 1.25, 1.5, 1.75 × 2^k, page-aligned),
 * so a pooled segment wastes at most a fifth of its size (a 1 GiB table does not take 2 GiB).
 */
export function sizeClass(bytes: number): number {
  if (bytes <= MIN_CLASS) return MIN_CLASS;
  const power = 2 ** Math.floor(Math.log2(bytes));
  for (const step of [1, 1.25, 1.5, 1.75, 2]) {
    const c = Math.ceil((power * step) / PAGE) * PAGE;
    if (c >= bytes) return c;
  }
  return 2 * power;
}

export interface PoolLimits {
  /** Segments kept per size class. */
  perClass: number;
  /** Bytes kept across all classes. */
  maxBytes: number;
}

abstract class ClassedPool {
  protected readonly free = new Map<number, Segment[]>();
  protected bytes = 0;
  protected closed = false;

  constructor(protected readonly limits: PoolLimits) {}

  protected pop(cls: number): Segment | undefined {
    const segment = this.free.get(cls)?.pop();
    if (segment) this.bytes -= cls;
    return segment;
  }

  /** Keeps `segment` if the limits allow, else closes it. */
  protected keep(cls: number, segment: Segment): void {
    const list = this.free.get(cls) ?? [];
    if (this.closed || list.length >= this.limits.perClass || this.bytes + cls > this.limits.maxBytes) {
      segment.close();
      return;
    }
    list.push(segment);
    this.free.set(cls, list);
    this.bytes += cls;
  }

  get pooledBytes(): number {
    return this.bytes;
  }

  close(): void {
    this.closed = true;
    for (const list of this.free.values()) for (const s of list) s.close();
    this.free.clear();
    this.bytes = 0;
  }
}

/**
 * Spare segments for sealed sends, made ready off the send path: mapped writable, and every page
 * allocated, zeroed and mapped on the libuv threadpool (MADV_POPULATE_WRITE). A send copies into
 * warm pages (one memcpy, no page fault), then unmaps and seals: faster than pwrite into a fresh
 * memfd or into one fallocate(2) prepared (the `copy` stage of `npm run bench -- --breakdown`).
 * `take` hands one out and starts preparing its replacement at the size just asked for
 * (page-rounded), so the pool follows the traffic and a send unmaps no more than it wrote.
 */
export class SparePool extends ClassedPool {
  #pending = new Map<number, Promise<void>>();

  /** A spare of at least `size` bytes, mapped writable and populated, or null when none is ready. */
  take(size: number): Segment | null {
    const cls = sizeClass(size);
    let spare = this.pop(cls) ?? null;
    if (spare && spare.size < size) {
      spare.close(); // prepared for a smaller table of this class: the traffic changed
      spare = null;
    }
    this.#refill(cls, Math.ceil(size / PAGE) * PAGE);
    return spare;
  }

  #refill(cls: number, size: number): void {
    if (this.closed || this.#pending.has(cls) || (this.free.get(cls)?.length ?? 0) >= this.limits.perClass) return;
    if (this.bytes + cls > this.limits.maxBytes) return;
    // Made once the send that asked is out (setImmediate): creating and mapping the memfd and
    // queueing its population cost more than a small send's copy (~65 µs, measured cold).
    const settled = new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.#prepare(cls, size));
    this.#pending.set(cls, settled.finally(() => this.#pending.delete(cls)));
  }

  /** A spare of `size` bytes for class `cls`, populated on the libuv threadpool, then kept. */
  async #prepare(cls: number, size: number): Promise<void> {
    if (this.closed) return;
    let segment: Segment | undefined;
    let job: Promise<void>;
    try {
      segment = Segment.create(size, 'arrow-shm-spare');
      job = native.populateAsync(segment.writableBuffer());
    } catch {
      segment?.close(); // out of memory or fds: the next send allocates as it goes
      return;
    }
    const spare = segment;
    // The mapping stays until the job settles: the threadpool is writing through it.
    await job.then(
      () => this.keep(cls, spare),
      () => spare.close(),
    );
  }

  /** Resolves when no background preparation is running (for tests and orderly shutdown). */
  async settled(): Promise<void> {
    await Promise.all(this.#pending.values());
  }
}

/**
 * Reusable leased segments (docs/PROTOCOL.md §6.2): mapped writable once, pre-faulted, sealed
 * against shrinking, growing and new writable mappings. Sending one costs a memcpy into warm pages.
 */
export class LeasePool extends ClassedPool {
  acquire(size: number): Segment {
    const cls = sizeClass(size);
    const pooled = this.pop(cls);
    if (pooled) return pooled;
    const segment = Segment.create(cls, 'arrow-shm-lease');
    try {
      segment.prefault();
      segment.seal('leased');
    } catch (e) {
      segment.close();
      throw e;
    }
    return segment;
  }

  /** The receiver released it: it may be written again. */
  giveBack(segment: Segment): void {
    this.keep(segment.size, segment);
  }
}
