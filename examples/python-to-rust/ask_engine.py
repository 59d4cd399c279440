"""A Python tool asks a Rust engine to summarize a table of code symbols, through shared memory.

    python ask_engine.py                      (arrow-shm-rs on PATH: `cargo install --path peers/rust`)
    ARROW_SHM_RS=/path/to/arrow-shm-rs python ask_engine.py

It starts the engine (`arrow-shm-rs engine`), sends one REQUEST table and prints the RESPONSE:
one row per file, then one per kind of symbol, with counts and line ranges. The engine maps the
request and reads it in place; its answer comes back the same way.
"""

import os
import subprocess
import sys

import pyarrow as pa

from arrow_shm import connect

# The engine's request schema (peers/rust/src/engine.rs): one row per symbol.
SYMBOLS = pa.schema([
    ("id", pa.utf8()), ("fqn", pa.utf8()), ("kind", pa.uint8()), ("file_id", pa.uint16()),
    ("start_line", pa.uint32()), ("start_col", pa.uint16()), ("end_line", pa.uint32()), ("end_col", pa.uint16()),
])
FUNCTION, CLASS = 0, 1

symbols = pa.table({
    "id": ["a1", "a2", "a3", "b1", "b2"],
    "fqn": ["app.main", "app.Config", "app.Config.load", "util.retry", "util.Backoff"],
    "kind": [FUNCTION, CLASS, FUNCTION, FUNCTION, CLASS],
    "file_id": [0, 0, 0, 1, 1],
    "start_line": [1, 20, 25, 3, 40],
    "start_col": [0, 0, 4, 0, 0],
    "end_line": [15, 60, 50, 30, 90],
    "end_col": [0, 0, 0, 0, 0],
}, schema=SYMBOLS)

address = f"@arrow-shm-example-{os.getpid()}"  # an abstract socket: no file to clean up
engine = subprocess.Popen([os.environ.get("ARROW_SHM_RS", "arrow-shm-rs"), "engine", "--socket", address, "--count", "1"])
try:
    with connect(address, timeout=10) as channel:  # retried until the engine listens
        with channel.request(symbols, {"name": "symbols"}, timeout=10) as response:
            for row in response.table.to_pylist():  # group, key, count, min_start_line, max_end_line
                print(f"{row['group']} {row['key']}: {row['count']} symbols, lines {row['min_start_line']}-{row['max_end_line']}")
        print(f"answered by {channel.peer_implementation}")
    sys.exit(engine.wait(10))  # --count 1: the engine exits after one answer
finally:
    if engine.poll() is None:
        engine.kill()
        engine.wait()
