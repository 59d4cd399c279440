"""Python receiving half of a benchmark method (see bench/receiver.ts): prints "ready", then one JSON
line {"t1": ms} per hand-off, t1 on CLOCK_MONOTONIC (the clock of Node's process.hrtime)."""
import json
import os
import socket
import struct
import sys
import time

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (report() reads every value with it)
import pyarrow.ipc as ipc

import arrow_shm

args = sys.argv[1:]
method = args[args.index("--method") + 1]
address = args[args.index("--socket") + 1]
read = "--read" in args


def now_ms() -> float:
    return time.monotonic_ns() / 1e6


def report(table_or_rows) -> None:
    if read:
        # read every value once (pyarrow.compute over each column); the checksum itself is not compared
        if isinstance(table_or_rows, pa.Table):
            for column in table_or_rows.columns:
                pa.compute.sum(pa.compute.binary_length(column) if pa.types.is_string(column.type) else column)
        else:
            sum(len(r["id"]) + len(r["fqn"]) + r["kind"] + r["file_id"] + r["start_line"] for r in table_or_rows)
    sys.stdout.write(json.dumps({"t1": now_ms()}) + "\n")
    sys.stdout.flush()


def read_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError
        got += k
    return bytes(buf) if n < 1024 else buf


if method in ("json", "arrow-socket"):
    if os.path.exists(address):
        os.unlink(address)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(1)
    print("ready", flush=True)
    conn, _ = server.accept()
    try:
        while True:
            header = read_exact(conn, 16)
            (length,) = struct.unpack_from("<Q", header, 8)
            payload = read_exact(conn, length)
            if method == "json":
                report(json.loads(payload))
            else:
                report(ipc.open_stream(pa.py_buffer(payload)).read_all())
    except EOFError:
        pass
else:
    # The Python peer accepts leased segments. "arrow-shm-trusted": the sender is trusted, so the
    # receiver skips validate_full (the O(n) pass over every offset; framing is still checked).
    listener = arrow_shm.listen(address, validate_full=method != "arrow-shm-trusted")
    print("ready", flush=True)
    channel = listener.accept()
    listener.close()
    for message in channel:
        report(message.table)
        message.close()
