"""Python sending half of the python → node rows of `npm run bench`.

  sender.py --method M --socket ADDR --file FILE
Reads the table from FILE (before any clock starts), connects to the receiver, then for each "go"
line on stdin prints {"t0": ms} (CLOCK_MONOTONIC, the clock of Node's process.hrtime) and hands the
table off: json (rows → JSON text, framed on a UNIX stream socket), arrow-socket (Arrow IPC bytes,
framed the same way) or arrow-shm (Channel.send: the table copied once into a sealed segment).
"""
import json
import socket
import struct
import sys
import time

import pyarrow as pa
import pyarrow.ipc as ipc

import arrow_shm

args = sys.argv[1:]
method = args[args.index("--method") + 1]
address = args[args.index("--socket") + 1]
table = ipc.open_stream(pa.memory_map(args[args.index("--file") + 1])).read_all()


def now_ms() -> float:
    return time.monotonic_ns() / 1e6


if method == "arrow-shm":
    channel = arrow_shm.connect(address, timeout=10)

    def send(t0: float) -> None:
        channel.send(table)

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
    t0 = now_ms()
    print(json.dumps({"t0": t0}), flush=True)
    send(t0)
