"""Streams (PROTOCOL.md §12) between Python producers and consumers: in place, in order,
dictionaries and deltas, big batches through their own segment, back-pressure, peer death,
publish/subscribe, hostile rings, and no leaked fds or mappings."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pytest

from arrow_shm import ArrowShmError, connect, listen
from arrow_shm.frame import Frame, Kind
from arrow_shm.stream import RECORD_BATCH, RingProducer, publish, subscribe

from conftest import PEER, PY, in_ring, open_fds, open_stream_pair


def memfd_maps() -> int:
    """Shared-memory mappings (thread stacks and allocator arenas come and go on their own)."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:" in line)

SCHEMA = pa.schema([("i", pa.int64()), ("word", pa.dictionary(pa.int32(), pa.string()))])


def batch(i: int, rows: int = 3) -> pa.RecordBatch:
    words = [f"w{j}" for j in range(i % 5 + 1)]  # grows (delta), then shrinks (replacement)
    indices = pa.array([(i + r) % len(words) for r in range(rows)], pa.int32())
    return pa.record_batch(
        [pa.array([i] * rows, pa.int64()), pa.DictionaryArray.from_arrays(indices, pa.array(words))], schema=SCHEMA
    )


def open_pair(producer, consumer, **options) -> tuple:
    return open_stream_pair(producer, consumer, SCHEMA, **options)


def test_batches_arrive_in_order_in_place_with_dictionaries_and_big_ones_through_segments(pair):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, capacity_bytes=65536, metadata={"topic": "t"})
    big = pa.record_batch(
        [pa.array(range(10_000), pa.int64()), pa.DictionaryArray.from_arrays(pa.array([0] * 10_000, pa.int32()), pa.array(["big"]))],
        schema=SCHEMA,
    )
    sent = [batch(i) for i in range(300)] + [big, batch(300)]
    t = threading.Thread(target=lambda: [writer.write(b) for b in sent] and None or writer.close(timeout=10))
    t.start()
    assert reader.metadata == {"topic": "t"}
    assert reader.schema.equals(SCHEMA)
    got = []
    while True:
        item = reader.read(timeout=10)
        if item is None:
            break
        with item:
            assert item.sequence == len(got)
            if item.batch.num_rows < 10_000:  # ring batches are views of the ring
                assert in_ring(item.batch.column(0).buffers()[1], reader)
            got.append(item.batch.to_pylist())
    t.join()
    assert got == [b.to_pylist() for b in sent]
    assert reader.ended
    reader.close()


def test_full_ring_fails_fast_then_accepts_after_release(pair):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, capacity_bytes=65536, on_full="error")
    rows = 400  # ~3.3 KiB records: the 64 KiB ring holds fewer than 20
    written = 0
    with pytest.raises(ArrowShmError) as e:
        while True:
            writer.write(batch(written, rows))
            written += 1
    assert e.value.code == "ERR_RING_FULL"
    assert "no room" in e.value.message
    assert 5 < written < 40
    held = [reader.read(timeout=5) for _ in range(3)]
    with pytest.raises(ArrowShmError):
        writer.write(batch(written, rows))  # held, not released: still full
    for item in held:
        item.release()
    writer.write(batch(written, rows))  # room again
    got = [b.column(0)[0].as_py() for b in _drain_async(writer, reader)]
    assert got == list(range(3, written + 1))


def _drain_async(writer, reader) -> list:
    t = threading.Thread(target=writer.close, kwargs={"timeout": 10})
    t.start()
    out = list(reader)
    t.join()
    reader.close()
    return out


def test_max_messages_limits_unreleased_records(pair):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, max_messages=4, on_full="error")
    for i in range(4):
        writer.write(batch(i))
    with pytest.raises(ArrowShmError) as e:
        writer.write(batch(4))
    assert e.value.code == "ERR_RING_FULL" and "max_messages 4" in e.value.message
    reader.read(timeout=5).release()
    writer.write(batch(4))
    assert len(_drain_async(writer, reader)) == 4


def test_waiting_producer_follows_a_slow_consumer_and_times_out_on_a_stuck_one(pair):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, capacity_bytes=65536, write_timeout=10)
    done = threading.Event()

    def produce() -> None:
        for i in range(200):
            writer.write(batch(i, 400))
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    got = []
    for _ in range(200):
        item = reader.read(timeout=10)
        time.sleep(0.0005)
        got.append(item.batch.column(0)[0].as_py())
        item.release()
    t.join()
    assert done.is_set() and got == list(range(200))
    # Now the consumer holds everything: the producer waits, then fails after write_timeout.
    writer._producer._write_timeout = 0.3
    held = []
    with pytest.raises(ArrowShmError) as e:
        for i in range(100):
            writer.write(batch(i, 400))
            held.append(reader.read(timeout=5))
    assert e.value.code == "ERR_TIMEOUT"
    for item in held:
        item.release()
    writer.abort()
    reader.close()


def test_read_timeout_and_consumer_leaving_fails_the_writer(pair):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer)
    with pytest.raises(ArrowShmError) as e:
        reader.read(timeout=0.1)
    assert e.value.code == "ERR_TIMEOUT"
    reader.close()  # leaves before the end: closes the connection
    with pytest.raises(ArrowShmError) as e:
        for i in range(1000):
            writer.write(batch(i))
            time.sleep(0.001)
    assert e.value.code == "ERR_PEER_CLOSED"
    writer.abort()


def test_no_fd_or_mapping_leaks_over_many_streams(address):
    def one_stream() -> None:
        with listen(address) as lst:
            box: dict = {}
            t = threading.Thread(target=lambda: box.setdefault("c", lst.accept(timeout=5)))
            t.start()
            with connect(address, timeout=5) as producer:
                t.join()
                with box["c"] as consumer:
                    writer, reader = open_pair(producer, consumer, capacity_bytes=65536)
                    big = pa.record_batch([pa.array(range(5000), pa.int64()), pa.DictionaryArray.from_arrays(pa.array([0] * 5000, pa.int32()), pa.array(["x"]))], schema=SCHEMA)
                    t = threading.Thread(target=lambda: (writer.write([batch(i) for i in range(50)] + [big]), writer.close(timeout=10)))
                    t.start()
                    assert sum(b.num_rows for b in reader) == 50 * 3 + 5000
                    t.join()
                    reader.close()

    one_stream()
    gc.collect()  # batches in reference cycles hold their ring until collected
    fds, maps = open_fds(), memfd_maps()
    for _ in range(5):
        one_stream()
    gc.collect()
    assert open_fds() == fds
    assert memfd_maps() == maps


# ------------------------------------------------------------------------ other processes

CHILD = r"""
import sys, time, pyarrow as pa
sys.path.insert(0, {peer!r})
from arrow_shm import connect
from arrow_shm.stream import subscribe
schema = pa.schema([("i", pa.int64())])
mode, address = sys.argv[1], sys.argv[2]
if mode == "produce":
    ch = connect(address, timeout=5)
    w = ch.open_stream(schema)
    for i in range(10):
        w.write(pa.record_batch([pa.array([i], pa.int64())], schema=schema))
    print("wrote", flush=True)
    time.sleep(60)
else:
    r = subscribe(address, timeout=5)
    item = r.read(timeout=5)
    print("holding", flush=True)
    time.sleep(60)
"""


def child(mode: str, address: str) -> subprocess.Popen:
    proc = subprocess.Popen([PY, "-c", CHILD.format(peer=str(PEER)), mode, address], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc


def finish(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.communicate()


def wait_line(proc: subprocess.Popen, text: bytes) -> None:
    line = proc.stdout.readline()
    assert line.strip() == text, (line, proc.stderr.read() if proc.poll() is not None else b"")


def test_producer_killed_mid_stream_consumer_reads_what_was_published_then_peer_closed(address):
    fds, maps = open_fds(), memfd_maps()
    with listen(address) as lst:
        proc = child("produce", address)
        try:
            channel = lst.accept(timeout=10)
            reader = channel.accept_stream(timeout=10)
            wait_line(proc, b"wrote")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            got = []
            with pytest.raises(ArrowShmError) as e:
                for item in reader:
                    got.append(item.column(0)[0].as_py())
            del item  # a batch keeps its mapping (and Python's mmap keeps an fd) alive
            assert e.value.code == "ERR_PEER_CLOSED"
            assert got == list(range(10))
            reader.close()
            channel.close()
        finally:
            finish(proc)
    assert open_fds() == fds, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in open_fds() - fds if os.path.exists(f"/proc/self/fd/{fd}")}
    assert memfd_maps() == maps


def test_subscriber_killed_frees_its_slot_and_the_others_go_on(address):
    schema = pa.schema([("i", pa.int64())])
    with publish(address, schema, capacity_bytes=65536) as publication:
        proc = child("subscribe", address)
        try:
            publication.wait_for_subscribers(1, timeout=10)
            box: dict = {}
            t = threading.Thread(target=lambda: box.setdefault("r", subscribe(address, timeout=10)))
            t.start()
            publication.wait_for_subscribers(2, timeout=10)
            t.join()
            live = box["r"]
            publication.write(pa.record_batch([pa.array([0], pa.int64())], schema=schema))
            wait_line(proc, b"holding")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # The dead subscriber holds record 0: without reclaiming its slot, 64 KiB would fill up.
            got = []
            for i in range(1, 2000):
                publication.write(pa.record_batch([pa.array([i] * 100, pa.int64())], schema=schema))
                item = live.read(timeout=10)
                got.append(item.batch.column(0)[0].as_py())
                item.release()
            assert publication.subscribers == 1
            assert got == list(range(0, 1999))
        finally:
            finish(proc)
        t = threading.Thread(target=lambda: box.setdefault("rest", [b.column(0)[0].as_py() for b in live]))
        t.start()
    t.join()
    assert box["rest"] == [1999]
    live.close()


def test_subscribers_via_the_cli_each_get_the_whole_publication(address, tmp_path):
    table = pa.Table.from_batches([batch(i, 50) for i in range(40)])
    src = tmp_path / "in.arrows"
    with pa.ipc.new_stream(src, SCHEMA) as w:
        w.write_table(table)
    env = {**os.environ, "PYTHONPATH": str(PEER)}
    pub = subprocess.Popen([PY, "-m", "arrow_shm", "pub", "--socket", address, "--subscribers", "3", "--ring-bytes", "65536", "--timeout-ms", "20000", str(src)], env=env, stderr=subprocess.PIPE)
    subs = [subprocess.Popen([PY, "-m", "arrow_shm", "sub", "--socket", address, "--out", str(tmp_path / f"{i}.arrows"), "--timeout-ms", "20000"], env=env, stderr=subprocess.PIPE) for i in range(3)]
    for p in [pub, *subs]:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    for i in range(3):
        got = pa.ipc.open_stream(pa.OSFile(str(tmp_path / f"{i}.arrows"))).read_all()
        assert got.equals(table)


def test_subscribe_with_every_slot_taken_is_refused(address):
    schema = pa.schema([("i", pa.int64())])
    with publish(address, schema, max_readers=1) as publication:
        box: dict = {}
        t = threading.Thread(target=lambda: box.setdefault("r", subscribe(address, timeout=10)))
        t.start()
        publication.wait_for_subscribers(1, timeout=10)
        t.join()

        def second() -> None:
            try:
                subscribe(address, timeout=10)
            except ArrowShmError as e:
                box["e"] = e

        t = threading.Thread(target=second)
        t.start()
        deadline = time.monotonic() + 10
        while t.is_alive() and time.monotonic() < deadline:
            publication._admit(0.05)
        t.join()
        assert box["e"].code == "ERR_NO_READER_SLOT"
        box["r"].close()
        publication.abort()


# ------------------------------------------------------------------------ hostile producers


def corrupt_next_record(writer, length: int, kind: int = RECORD_BATCH, ipc_length: int = 8) -> None:
    """Publish a hand-made record header through the real producer's ring."""
    p: RingProducer = writer._producer
    offset = p._write_position % p.capacity
    import struct

    struct.pack_into("<IIQQ", p._data, offset, length, kind, 0, ipc_length)
    p._write_position += 64
    p._header.write_position = p._write_position


@pytest.mark.parametrize(
    "length,kind,ipc_length,text",
    [
        (100, RECORD_BATCH, 8, "not a positive multiple of 64"),
        (0, RECORD_BATCH, 8, "not a positive multiple of 64"),
        (128, RECORD_BATCH, 8, "runs past the write position"),
        (64, 9, 0, "unknown record kind 9"),
        (64, RECORD_BATCH, 100, "does not fit its 64-byte record"),
        (64, 2, 0, "padding of 64 bytes does not fill"),
    ],
)
def test_hostile_records_are_ring_invalid_and_the_consumer_leaves(pair, length, kind, ipc_length, text):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer)
    corrupt_next_record(writer, length, kind, ipc_length)
    with pytest.raises(ArrowShmError) as e:
        reader.read(timeout=5)
    assert e.value.code == "ERR_RING_INVALID" and text in e.value.message
    assert reader.closed
    writer.abort()


def test_garbage_ipc_in_a_batch_record_is_a_typed_error(pair):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer)
    p: RingProducer = writer._producer
    import struct

    p._data[64:128] = b"\xff\xff\xff\xff" + b"\x40\x00\x00\x00" + b"\x07" * 56
    struct.pack_into("<IIQQ", p._data, 0, 128, RECORD_BATCH, 0, 64)
    p._write_position = 128
    p._header.write_position = 128
    with pytest.raises(ArrowShmError) as e:
        reader.read(timeout=5)
    assert e.value.code in ("ERR_IPC_INVALID", "ERR_IPC_TRUNCATED")
    writer.abort()
    reader.close()


@pytest.mark.parametrize("case", ["three-fds", "not-eventfd", "unsealed-ring", "wrong-size", "bad-magic"])
def test_hostile_stream_open_is_refused_and_closes_every_fd(pair, case):
    producer, consumer = pair
    gc.collect()  # an earlier test's garbage must not close its fds in the middle of the count
    fds_before = open_fds()
    real = RingProducer(SCHEMA, capacity_bytes=65536)
    try:
        ring = real._ring_fd
        prologue_bytes = real._schema_bytes
        from arrow_shm.segment import Segment

        seg = Segment.create(len(prologue_bytes))
        seg.write_at(0, prologue_bytes)
        seg.seal()
        data_fd, space_fd = os.eventfd(0), os.eventfd(0)
        fds = [ring, seg.fd, data_fd, space_fd]
        if case == "three-fds":
            fds = fds[:3]
        elif case == "not-eventfd":
            fds[2] = seg.fd
        elif case == "unsealed-ring":
            fds[0] = os.memfd_create("x")
            os.ftruncate(fds[0], 4096 + 65536)
        elif case == "wrong-size":
            fds[0] = os.memfd_create("x", os.MFD_ALLOW_SEALING)
            os.ftruncate(fds[0], 4096 + 65536 * 2)
            import fcntl

            fcntl.fcntl(fds[0], 1033, 7)
        elif case == "bad-magic":
            real._map[0:8] = b"NOTARING"
        meta = {"stream_id": "1", "reader_slot": "0", "start_position": "0", "capacity": "65536"}
        frame = Frame(kind=Kind.STREAM_OPEN, ipc_length=len(prologue_bytes), metadata=meta)
        box: dict = {}

        def send() -> None:
            try:
                producer.stream_link.send_and_wait_ack(frame, fds, 5)
            except ArrowShmError as e:
                box["e"] = e

        t = threading.Thread(target=send)
        t.start()
        with pytest.raises(ArrowShmError) as e:
            consumer.accept_stream(timeout=5)
        t.join()
        expected = {
            "three-fds": "ERR_PROTOCOL",
            "not-eventfd": "ERR_SEGMENT_INVALID",
            "unsealed-ring": "ERR_SEGMENT_UNSEALED",
            "wrong-size": "ERR_RING_INVALID",
            "bad-magic": "ERR_RING_INVALID",
        }[case]
        assert e.value.code == expected
        assert box["e"].code == expected and box["e"].remote
        for fd in {fds[0], data_fd, space_fd} - {ring}:
            os.close(fd)
        seg.close()
    finally:
        real.close()
    assert open_fds() == fds_before
