"""Python producing half of the arrow-shm-stream-python rows of `npm run bench:stream`.

  stream_producer.py '{"address": ..., "batches": N, "bytes": B, "intervalMs": I}'
Connects to the Node consumer, opens a stream with the schema of batchOf() in bench/stream.ts and
writes the same batches: one row, the send time (ms on CLOCK_MONOTONIC, the clock of Node's
process.hrtime) and a binary value of B bytes, pausing I ms between batches.
"""
import json
import sys
import time

import pyarrow as pa

import arrow_shm

job = json.loads(sys.argv[1])
schema = pa.schema([pa.field("sent_ms", pa.float64(), nullable=False), pa.field("payload", pa.binary(), nullable=False)])
# The payload column is built once from buffers (no copy per batch), as Node's batchOf() reuses its bytes.
offsets = pa.array([0, job["bytes"]], pa.int32()).buffers()[1]
payload = pa.Array.from_buffers(pa.binary(), 1, [None, offsets, pa.py_buffer(b"\x07" * job["bytes"])])


def now_ms() -> float:
    return time.monotonic_ns() / 1e6


def batch_of() -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([now_ms()], pa.float64()), payload], schema=schema)


def pause(interval_ms: float) -> None:
    """Intervals under 1 ms are busy-waited (sleeps are coarser), as the Node producer does."""
    if interval_ms >= 1:
        time.sleep(interval_ms / 1000)
        return
    until = now_ms() + interval_ms
    while now_ms() < until:
        pass


channel = arrow_shm.connect(job["address"], timeout=10)
writer = channel.open_stream(schema, capacity_bytes=64 * 1024 * 1024)
for _ in range(job["batches"]):
    writer.write(batch_of())
    pause(job["intervalMs"])
writer.close()
channel.close()
