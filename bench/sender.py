"""Python sending half of the python → node / python → rust rows of `npm run bench`
(bench contract: docs in bench/run.ts).

  sender.py --method M --socket ADDR --file FILE [--breakdown]
Reads the table from FILE (before any clock starts), connects to the receiver, then for each "go"
line on stdin takes t0 (CLOCK_MONOTONIC, the clock of every peer), hands the table off and prints
{"t0": ms, "cpu_ms": ms} (cpu_ms: this process's user + system CPU time so far, all threads, so the
spare-segment thread counts too). Methods: json (rows → JSON text, framed on a UNIX stream socket),
arrow-socket (Arrow IPC bytes, framed the same way), arrow-shm (Channel.send: the table copied
once into a sealed segment) or arrow-shm-born (channel.allocate: the columns written straight
into the segment, then sent with no copy). --breakdown (arrow-shm): the line also carries "stages", the time
each stage of the send ended ([["copy", ms], ["send", ms]], reported by arrow_shm.trace).
"""
import json
import resource
import socket
import struct
import sys
import time

import pyarrow as pa
import pyarrow.ipc as ipc

import arrow_shm
from arrow_shm.trace import set_handoff_hook

args = sys.argv[1:]
method = args[args.index("--method") + 1]
address = args[args.index("--socket") + 1]
breakdown = "--breakdown" in args
table = ipc.open_stream(pa.memory_map(args[args.index("--file") + 1])).read_all()


def now_ms() -> float:
    return time.monotonic_ns() / 1e6


def cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1e3


stages: list = []
if method.startswith("arrow-shm"):
    channel = arrow_shm.connect(address, timeout=10)
    if breakdown:
        set_handoff_hook(lambda stage, _id, at: stages.append([stage, at]))

if method == "arrow-shm":

    def send(t0: float) -> None:
        channel.send(table)

elif method == "arrow-shm-born":
    # Born in shared memory (channel.allocate): every column is produced straight into the
    # segment -- here by copying it from the table read at start, as a producer would write its
    # values -- then sent with no copy of the data.
    import numpy as np

    batch = table.combine_chunks().to_batches()[0]
    body = sum(b.size + 64 for column in batch.columns for b in column.buffers() if b is not None)

    def send(t0: float) -> None:
        builder = channel.allocate(body)
        arrays = []
        for column in batch.columns:
            buffers = []
            for source in column.buffers():
                if source is None:
                    buffers.append(None)
                    continue
                target = builder.buffer(source.size)
                np.frombuffer(target, np.uint8)[:] = np.frombuffer(source, np.uint8)
                buffers.append(target)
            arrays.append(pa.Array.from_buffers(column.type, len(column), buffers, null_count=column.null_count, offset=column.offset))
        builder.send(pa.record_batch(arrays, schema=batch.schema))

else:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(address)
    rows = table.to_pylist() if method == "json" else None

    def send(t0: float) -> None:
        if method == "json":
            payload = json.dumps(rows, separators=(",", ":")).encode()
        else:
            sink = pa.BufferOutputStream()
            with ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            payload = sink.getvalue()
        conn.sendall(struct.pack("<dQ", t0, len(payload)))
        conn.sendall(payload)

print("ready", flush=True)
for line in sys.stdin:
    stages.clear()
    t0 = now_ms()
    send(t0)
    # Printed after the hand-off, so that printing is not part of it (t0 is when it started).
    out = {"t0": t0, "cpu_ms": cpu_ms()}
    if breakdown and method.startswith("arrow-shm"):
        out["stages"] = stages
    print(json.dumps(out), flush=True)
