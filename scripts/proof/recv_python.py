"""Receiver driver for scripts/proof/memory.mjs (Python API, arrow_shm from .build/venv).

Prints one JSON line per stage on stdout: ready -> received (after reading every value of every
column with pyarrow.compute) -> closed.   python recv_python.py ADDRESS
"""
import ctypes
import gc
import json
import os
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc

from arrow_shm import connect


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def memfd_maps():
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            if "/memfd:" not in line:
                continue
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append({"start": lo, "end": hi, "perms": parts[1], "offset": int(parts[2], 16), "inode": int(parts[4]), "line": line.strip()})
    return out


def main():
    address = sys.argv[1]
    ch = connect(address, timeout=10)
    pc.sum(pa.array([1, 2, 3]))  # load the compute kernels before the "before" sample
    gc.collect()
    say({"stage": "ready", "pid": os.getpid()})

    m = ch.receive(timeout=120)
    t0 = time.perf_counter()
    table = m.table
    start, size = m.mapping_range()
    sums = [pc.sum(col).as_py() for col in table.columns]
    values = sum(len(col) for col in table.columns)
    read_ms = (time.perf_counter() - t0) * 1000
    buffers = [b for col in table.columns for chunk in col.chunks for b in chunk.buffers() if b is not None and b.size > 0]
    outside = [b.address for b in buffers if not (start <= b.address and b.address + b.size <= start + size)]

    batch = int(m.metadata["marker_batch"])
    row = int(m.metadata["marker_row"])
    chunk = table.column("seq").chunk(batch)
    address_of_marker = chunk.buffers()[1].address + (chunk.offset + row) * 4
    found = ctypes.string_at(address_of_marker, 32).hex()
    covering = [mp for mp in memfd_maps() if mp["start"] <= address_of_marker < mp["end"]]
    say({
        "stage": "received",
        "rows": table.num_rows,
        "batches": table.column("seq").num_chunks,
        "values": values,
        "sums": sums,
        "readMs": round(read_ms),
        "buffers": len(buffers),
        "buffersOutsideMapping": len(outside),
        "mappingStart": start,
        "mappingSize": size,
        "markerAddress": address_of_marker,
        "markerOffsetInMapping": address_of_marker - start,
        "markerFound": found,
        "markerMatches": found == m.metadata["marker"],
        "markerMapping": covering[0] if covering else None,
        "memfdMaps": memfd_maps(),
    })

    if sys.stdin.readline().strip() != "close":
        sys.exit(1)
    del table, chunk, buffers
    m.close()
    gc.collect()
    say({"stage": "closed", "stillMapped": any(mp["start"] == start for mp in memfd_maps())})
    sys.stdin.readline()
    ch.close()


if __name__ == "__main__":
    main()
