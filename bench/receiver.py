"""Python receiving half of a benchmark method (bench contract: see bench/receiver.ts).

  receiver.py --method M --socket ADDR [--read] [--breakdown]
Prints "ready", then one JSON line {"t1": ms, "cpu_ms": ms} per hand-off: t1 on CLOCK_MONOTONIC
(the clock of every peer) when the table is usable (after reading every value with --read);
cpu_ms this process's user + system CPU time so far (all threads).
Methods: json, arrow-socket, and arrow-shm with the receiver's validation policy: arrow-shm
(validate="bounds", the default), arrow-shm-trusted (validate="framing": a trusted sender),
arrow-shm-full (validate="full": UTF-8 too). --breakdown (arrow-shm*): the line also carries
"stages", the time each stage ended ([["wake", ms], ["map", ms], ["check", ms], ["ack", ms],
["decode", ms], ["validate", ms]] and ["read", ms] with --read; reported by arrow_shm.trace).
"""
import json
import os
import resource
import socket
import struct
import sys
import time

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (report() reads every value with it)
import pyarrow.ipc as ipc

import arrow_shm
from arrow_shm.trace import set_handoff_hook

args = sys.argv[1:]
method = args[args.index("--method") + 1]
address = args[args.index("--socket") + 1]
read = "--read" in args
breakdown = "--breakdown" in args and method.startswith("arrow-shm")
POLICIES = {"arrow-shm": "bounds", "arrow-shm-trusted": "framing", "arrow-shm-full": "full"}
stages: list = []


def now_ms() -> float:
    return time.monotonic_ns() / 1e6


def cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1e3


def report(table_or_rows) -> None:
    t1 = now_ms()
    if read:
        # read every value once (pyarrow.compute over each column); the checksum itself is not compared
        if isinstance(table_or_rows, pa.Table):
            for column in table_or_rows.columns:
                pa.compute.sum(pa.compute.binary_length(column) if pa.types.is_string(column.type) else column)
        else:
            sum(len(r["id"]) + len(r["fqn"]) + r["kind"] + r["file_id"] + r["start_line"] for r in table_or_rows)
        t1 = now_ms()
        stages.append(["read", t1])
    out = {"t1": t1, "cpu_ms": cpu_ms()}
    if breakdown:
        out["stages"] = list(stages)
    stages.clear()
    sys.stdout.write(json.dumps(out) + "\n")
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
    # The Python peer accepts leased segments (arrow-shm-leased, arrow-shm-prebuilt senders too).
    listener = arrow_shm.listen(address, validate=POLICIES.get(method, "bounds"))
    if breakdown:
        set_handoff_hook(lambda stage, _id, at: stages.append([stage, at]))
    print("ready", flush=True)
    channel = listener.accept()
    listener.close()
    for message in channel:
        report(message.table)
        message.close()
