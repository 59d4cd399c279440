// An IPC stream written once into a sealed segment, to be sent to any number of peers.
import { SparePool } from '../shm/pool.js';
import { Segment } from '../shm/segment.js';
import { validateIpcStream } from './messages.js';
import { layoutIpcStream, type TableLike } from './writer.js';

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

/** What a channel can send: a Table or RecordBatch, raw IPC stream bytes, or a PreparedTable. */
export type Sendable = TableLike | Uint8Array | PreparedTable;
