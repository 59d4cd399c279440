// An IPC stream written once into a sealed segment, to be sent to any number of peers.
import type { SparePool } from '../shm/pool.js';
import { Segment } from '../shm/segment.js';
import { validateIpcStream } from './messages.js';
import { layoutIpcStream, writeIpcLayout, type IpcLayout, type TableLike } from './writer.js';

/**
 * Streams shorter than this go into a fresh memfd by pwrite even when a spare is ready: a spare's
 * copy is cheaper, but unmapping it before the seal costs more than that below about 128 KiB
 * (measured cold, pwrite vs spare: 46 vs 63 µs at 64 KiB, 59 vs 71 at 100 KB, 77 vs 71 at 128 KiB).
 */
const MIN_SPARE_BYTES = 128 * 1024;

/**
 * An IPC stream already written into a sealed segment: send it to any number of channels with
 * no further copy. The fd stays open until `close()`.
 */
export class PreparedTable {
  private constructor(
    readonly segment: Segment,
    readonly ipcLength: number,
    /** Where the IPC stream starts in the segment (0, except for a TableBuilder's). */
    readonly ipcOffset = 0,
  ) {}

  /** @internal A sealed segment holding an IPC stream at [ipcOffset, +ipcLength) (TableBuilder). */
  static sealed(segment: Segment, ipcOffset: number, ipcLength: number): PreparedTable {
    return new PreparedTable(segment, ipcLength, ipcOffset);
  }

  /** Writes `data` (a Table/RecordBatch or raw IPC stream bytes, checked first) into a new sealed segment. */
  static from(data: TableLike | Uint8Array): PreparedTable {
    return PreparedTable.write(data instanceof Uint8Array ? data : layoutIpcStream(data), null);
  }

  /**
   * @internal `from` for a planned stream or raw bytes (`checked`: already validated), into a spare
   * segment of `spares` when one is ready (and the stream is not small): its pages are already
   * allocated and mapped, so the copy is one memcpy.
   */
  static write(data: IpcLayout | Uint8Array, spares: SparePool | null, checked = false): PreparedTable {
    const layout = data instanceof Uint8Array ? null : data;
    // Raw bytes are checked to be an IPC stream first (`checked`: the caller did); the whole range is sent.
    if (!layout && !checked) validateIpcStream(data as Uint8Array);
    const length = data.byteLength;
    const spare = length >= MIN_SPARE_BYTES ? (spares?.take(length) ?? null) : null;
    const segment = spare ?? Segment.create(length);
    try {
      if (spare) {
        // Warm, mapped pages: one memcpy. A spare may be up to a page larger: trimming unmaps it
        // first, as sealing needs no writable mapping left.
        const target = spare.writableBytes();
        if (layout) writeIpcLayout(layout, target);
        else target.set(data as Uint8Array);
        segment.truncate(length);
      } else if (layout) {
        // A fresh memfd: pwrite fills its pages in the kernel, with no page fault per 4 KiB.
        for (const chunk of layout.chunks) segment.write(chunk.bytes, chunk.offset);
      } else segment.write(data as Uint8Array, 0);
      segment.seal('sealed');
    } catch (e) {
      segment.close();
      throw e;
    }
    return new PreparedTable(segment, length);
  }

  close(): void {
    this.segment.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** What a channel can send: a Table or RecordBatch, raw IPC stream bytes, or a PreparedTable. */
export type Sendable = TableLike | Uint8Array | PreparedTable;
