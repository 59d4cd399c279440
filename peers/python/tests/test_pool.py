"""Spare segments (pool.py): prepared off the critical path by one worker thread, bounded, and
gone with their channel: no fd, mapping or thread outlives it."""

import gc
import os
import threading
import time

import pyarrow as pa

from arrow_shm import connect, listen
from arrow_shm.pool import SparePool, size_class
from arrow_shm.segment import write_table_segment

TABLE = pa.table({"id": pa.array(range(50_000), pa.int64()), "s": [f"row{i}" for i in range(50_000)]})


def spare_threads():
    return [t for t in threading.enumerate() if t.name == "arrow-shm-spare"]


def memfd_fds():
    """fd -> target of this process's memfds."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:"):
            out[fd] = target
    return out


def memfd_mappings():
    with open("/proc/self/maps") as f:
        return [line.split()[-2] if line.rstrip().endswith("(deleted)") else line.split()[-1] for line in f if "memfd:" in line]


def settle(predicate, within=5.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_a_spare_is_prefaulted_and_used_by_the_next_send():
    pool = SparePool()
    try:
        pool.prepare(1_000_000)
        assert settle(lambda: size_class(1_000_000) in pool._free)
        seg, length = write_table_segment(TABLE, create=pool.take)
        with seg:
            assert seg.size == size_class(1_000_000) >= length  # the spare, handed out whole
            assert seg.mapping is None  # unmapped by sealing
            assert not [m for m in memfd_mappings() if "arrow-shm-spare" in m]
            data = os.pread(seg.fd, length, 0)
        assert pa.ipc.open_stream(data).read_all().equals(TABLE)
        assert pool.take(10).mapping is None  # no spare of that class: a fresh segment, written with pwritev
    finally:
        pool.close()


def test_spares_are_bounded_in_count_and_bytes():
    pool = SparePool(max_bytes=3 << 20, max_spares=2)
    try:
        for size in (100_000, 300_000, 700_000, 1_500_000, 2_500_000):
            pool.prepare(size)
            assert settle(lambda: size_class(size) in pool._free)
            assert len(pool._free) <= 2 and sum(pool._free) <= 3 << 20
        pool.prepare(4 << 20)  # over max_bytes alone: never prepared
        time.sleep(0.05)
        assert size_class(4 << 20) not in pool._free
    finally:
        pool.close()
    assert not pool._free and not spare_threads()


def test_closing_the_channel_ends_the_worker_and_closes_every_spare(sock_path):
    gc.collect()
    fds_before, maps_before = memfd_fds(), memfd_mappings()
    with listen(sock_path) as lst:
        box = {}

        def receive():
            with lst.accept(timeout=10) as ch:
                box["rows"] = [ch.receive(timeout=10).table.num_rows for _ in range(6)]

        t = threading.Thread(target=receive)
        t.start()
        with connect(sock_path, timeout=10) as ch:
            for n in (1_000, 50_000, 1_000, 50_000, 20_000, 50_000):  # several size classes
                ch.send(TABLE.slice(0, n), timeout=10)
            assert spare_threads()
        t.join(10)
    assert box["rows"] == [1_000, 50_000, 1_000, 50_000, 20_000, 50_000]
    gc.collect()
    assert not spare_threads()
    assert memfd_fds() == fds_before
    assert memfd_mappings() == maps_before
