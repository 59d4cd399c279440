"""A Python stream peer for test/stream-python.test.ts. Prints one JSON line per event.

  slow-sub ADDRESS SLEEP_MS      subscribe, sleep SLEEP_MS per batch, print {"batches", "rows", "sum"}
  hold ADDRESS N                 connect, accept a stream, hold N batches ("holding"), release them
                                 when a line arrives on stdin, drain, print {"batches", "rows", "sum"}
  count ADDRESS                  connect, accept a stream, read it all, print {"batches", "rows",
                                 "in_place", "fds_start", "fds_mid", "fds_end"} (open fds of this process)
The sum is over the first column (int32 "seq" in the tests).
"""
import json
import os
import sys
import time

from arrow_shm import connect
from arrow_shm.stream import subscribe


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def column_sum(batch) -> int:
    return sum(v for v in batch.column(0).to_pylist() if v is not None)


def inside(batch, lo: int, size: int) -> bool:
    buf = batch.column(0).buffers()[1]
    return lo <= buf.address and buf.address + buf.size <= lo + size


mode, address = sys.argv[1], sys.argv[2]
if mode == "slow-sub":
    pause = int(sys.argv[3]) / 1000
    with subscribe(address, timeout=20) as reader:
        report(event="joined")
        batches = rows = total = 0
        for batch in reader:
            batches += 1
            rows += batch.num_rows
            total += column_sum(batch)
            time.sleep(pause)
    report(batches=batches, rows=rows, sum=total)
elif mode == "hold":
    with connect(address, timeout=20) as channel, channel.accept_stream(timeout=20) as reader:
        held = [reader.read(timeout=20) for _ in range(int(sys.argv[3]))]
        report(event="holding")
        sys.stdin.readline()
        batches, rows, total = len(held), sum(h.batch.num_rows for h in held), sum(column_sum(h.batch) for h in held)
        for item in held:
            item.release()
        del held, item
        for batch in reader:
            batches += 1
            rows += batch.num_rows
            total += column_sum(batch)
    report(batches=batches, rows=rows, sum=total)
elif mode == "count":
    fds_start = fds()
    with connect(address, timeout=20) as channel, channel.accept_stream(timeout=20, validate="framing") as reader:
        lo, size = reader.data_range()
        batches = rows = 0
        in_place = True
        fds_mid = 0
        for batch in reader:
            batches += 1
            rows += batch.num_rows
            if batches % 1000 == 1:
                in_place = in_place and inside(batch, lo, size)
            if batches == 1000:
                fds_mid = fds()
        del batch  # a batch keeps the ring mapped (and Python's mmap keeps a dup of its fd)
    report(batches=batches, rows=rows, in_place=in_place, fds_start=fds_start, fds_mid=fds_mid, fds_end=fds())
else:
    sys.exit(f"unknown mode {mode}")
