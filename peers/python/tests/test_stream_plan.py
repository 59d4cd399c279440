"""Streams without dictionaries (issue #16): batches written by pyarrow straight into the ring,
records checked by the consumer's per-stream plan (every check of the generic walk, on hostile
records too), many batches published at once, spinning readers, no leaked fds or mappings, and
the bench program's roles (bench/stream_peer.py) as real processes."""

from __future__ import annotations

import gc
import json
import struct
import subprocess
import threading
import uuid
from typing import Callable, List, Optional

import pyarrow as pa
import pytest

from arrow_shm import ArrowShmError
from arrow_shm.ipc import walk_messages
from arrow_shm.limits import MessageChecker
from arrow_shm.stream import RECORD_BATCH, RingProducer, StreamReader
from arrow_shm.stream_plan import RecordPlan, has_dictionaries

from conftest import PY, REPO, in_ring, open_fds, open_stream_pair

SCHEMA = pa.schema([pa.field("sent_ms", pa.float64(), nullable=False), pa.field("payload", pa.binary())])


def memfd_maps() -> List[str]:
    """The shared-memory mappings of this process, by name."""
    with open("/proc/self/maps") as f:
        return sorted(line.split()[-2] if line.rstrip().endswith("(deleted)") else line.split()[-1] for line in f if "memfd:" in line)


def batch(i: int, size: int = 8, rows: int = 1) -> pa.RecordBatch:
    return pa.record_batch(
        [pa.array([float(i)] * rows, pa.float64()), pa.array([bytes([i % 256]) * size] * rows, pa.binary())], schema=SCHEMA
    )


def open_pair(producer, consumer, schema: pa.Schema = SCHEMA, reader_spin: int = 0, **options) -> tuple:
    return open_stream_pair(producer, consumer, schema, reader_spin, **options)


def read_all(reader: StreamReader, check: Optional[Callable[[pa.RecordBatch], None]] = None) -> List[list]:
    got = []
    while True:
        item = reader.read(timeout=10)
        if item is None:
            return got
        with item:
            if check is not None:
                check(item.batch)
            got.append(item.batch.to_pylist())


def test_has_dictionaries_looks_at_every_depth():
    assert not has_dictionaries(SCHEMA)
    nested = pa.schema([("s", pa.struct([("d", pa.dictionary(pa.int8(), pa.string()))]))])
    assert has_dictionaries(nested)
    assert has_dictionaries(pa.schema([("l", pa.list_(pa.dictionary(pa.int8(), pa.string())))]))


def test_batches_go_straight_into_the_ring_and_come_back_in_place_in_order(pair):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, capacity_bytes=65536, prefault=True)
    assert writer._producer._ring_file is not None  # written by pyarrow into the ring
    # Around the 64 KiB ring many times, sizes that change the record layout, nulls, a batch of
    # many rows, and a batch over a quarter of the ring (its own segment, EXTERNAL).
    sent = [batch(i, size=(i * 37) % 3000) for i in range(400)]
    sent += [pa.record_batch([pa.array([1.0, None]), pa.array([None, b"x"])], schema=SCHEMA), batch(7, 100, rows=50)]
    sent += [batch(8, size=40_000), batch(9), batch(10, 30, rows=20).slice(5, 9)]  # a slice: its buffers are cut by the writer
    t = threading.Thread(target=lambda: ([writer.write(b) for b in sent], writer.close(timeout=10)))
    t.start()

    def in_place(b: pa.RecordBatch) -> None:
        if b.num_rows == 1 and len(b.column(1)[0].as_py() or b"") < 3000:
            assert in_ring(b.column(1).buffers()[1], reader)

    got = read_all(reader, in_place)
    t.join()
    assert got == [b.to_pylist() for b in sent]
    assert reader._plan is not None and reader._plan._layout is not None  # the plan learned a record
    reader.close()


def test_small_batches_are_serialized_larger_ones_written_in_place_both_in_order(pair):
    from arrow_shm.producer import SMALL_BATCH_BYTES

    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, capacity_bytes=65536)
    ring_file = writer._producer._ring_file
    in_place: List[int] = []
    real_write = ring_file.write
    ring_file.write = lambda offset, b, size: (in_place.append(b.num_rows), real_write(offset, b, size))[1]
    # Around the ring a few times: batches just under and over the threshold, alternating.
    sizes = [SMALL_BATCH_BYTES - 16, SMALL_BATCH_BYTES + 8, 8, 12_000] * 20
    sent = [batch(i, size) for i, size in enumerate(sizes)]
    t = threading.Thread(target=lambda: ([writer.write(b) for b in sent], writer.close(timeout=10)))
    t.start()

    def in_place_read(b: pa.RecordBatch) -> None:
        assert in_ring(b.column(1).buffers()[2], reader)

    got = read_all(reader, in_place_read)
    t.join()
    assert got == [b.to_pylist() for b in sent]
    assert len(in_place) == 40  # the two sizes over the threshold
    reader.close()


def warm_offsets(pair, hold: int, **options) -> int:
    """Streams 3,000 one-KB batches through a 4 MiB ring, ``hold`` of them unreleased at a time at
    the reader; the highest data offset a record was read at (every batch arrives once, in order)."""
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, capacity_bytes=4 << 20, **options)
    sent = [batch(i, size=1000) for i in range(3000)]
    t = threading.Thread(target=lambda: ([writer.write(b) for b in sent], writer.close(timeout=10)))
    t.start()
    lo, _ = reader.data_range()
    highest, got, held = 0, [], []
    while (item := reader.read(timeout=10)) is not None:
        highest = max(highest, item.batch.column(1).buffers()[2].address - lo)
        got.append(item.batch.to_pylist())
        held.append(item)
        if len(held) > hold:
            held.pop(0).release()
    for item in held:
        item.release()
    t.join()
    reader.close()
    assert got == [b.to_pylist() for b in sent]
    return highest


def test_records_reuse_the_warm_start_of_the_ring_while_the_reader_keeps_up(pair):
    from arrow_shm.producer import WARM_BYTES

    # One unreleased record at a time: back to offset 0 through PADDING, not around the 4 MiB ring.
    assert warm_offsets(pair, 0, max_messages=1) < WARM_BYTES


def test_a_reader_holding_records_does_not_stall_the_producer_at_the_warm_part(pair):
    from arrow_shm.producer import WARM_BYTES

    # 1,000 records (1 MB) held: the producer goes on into the rest of the ring without waiting.
    assert warm_offsets(pair, 1000) > WARM_BYTES


def test_releases_out_of_order_advance_the_read_position_over_the_leading_run_only(pair):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, capacity_bytes=65536)
    ring = writer._producer
    writer.write([batch(0), batch(1), batch(2, size=40_000), batch(3)])  # the third through its own segment
    items = [reader.read(timeout=5) for _ in range(4)]
    start = ring._header.read_position(reader._slot)

    def segments() -> int:
        gc.collect()
        return sum("arrow-shm-stream-segment" in m for m in memfd_maps())

    assert segments() == 1
    items[2].release()
    items[2] = None  # its batch unreferenced: the segment is unmapped
    assert segments() == 0
    items[1].release()
    assert ring._header.read_position(reader._slot) == start  # the first still holds the ring
    items[0].release()
    assert start < ring._header.read_position(reader._slot) < ring._write_position
    items[3].release()
    assert ring._header.read_position(reader._slot) == ring._write_position
    t = threading.Thread(target=writer.close, kwargs={"timeout": 10})
    t.start()
    assert reader.read(timeout=5) is None
    t.join()
    reader.close()


def test_write_of_many_batches_publishes_them_together_and_waits_for_room(pair):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, capacity_bytes=65536)
    header = writer._producer._header
    stores: List[int] = []
    real = type(header).write_position

    class Recording(type(header)):  # type: ignore[misc]
        @property
        def write_position(self) -> int:
            return real.fget(self)

        @write_position.setter
        def write_position(self, value: int) -> None:
            stores.append(value)
            real.fset(self, value)

    header.__class__ = Recording
    writer.write([batch(i) for i in range(10)])
    assert len(stores) == 1  # one publish for ten records
    # More than the ring holds in one write: it publishes what it wrote before it waits for room.
    many = [batch(i, 1000) for i in range(200)]
    t = threading.Thread(target=lambda: (writer.write(many), writer.close(timeout=10)))
    t.start()
    got = read_all(reader)
    t.join()
    assert got == [b.to_pylist() for b in [batch(i) for i in range(10)] + many]
    assert 2 < len(stores) < 200
    reader.close()


def test_spinning_reader_and_writer(pair):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, reader_spin=200, capacity_bytes=65536, spin_micros=50)
    sent = [batch(i, 500) for i in range(500)]
    t = threading.Thread(target=lambda: ([writer.write(b) for b in sent], writer.close(timeout=10)))
    t.start()
    assert read_all(reader) == [b.to_pylist() for b in sent]
    t.join()
    reader.close()


@pytest.mark.parametrize("bad", [-1, 1_000_001, 1.5, True])
def test_spin_micros_out_of_range_is_invalid_argument(pair, bad):
    producer, consumer = pair
    with pytest.raises(ArrowShmError) as e:
        StreamReader.accept(consumer, timeout=0.1, spin_micros=bad)
    assert e.value.code == "ERR_INVALID_ARGUMENT"
    with pytest.raises(ArrowShmError) as e:
        RingProducer(SCHEMA, capacity_bytes=65536, spin_micros=bad)
    assert e.value.code == "ERR_INVALID_ARGUMENT"


# ------------------------------------------------------------------------ the plan's checks


def message_of(b: pa.RecordBatch) -> bytearray:
    """A record's payload: the batch's one RecordBatch message."""
    return bytearray(b.serialize().to_pybytes())


def prefix_and_meta(data: bytearray) -> tuple[int, int]:
    return 8, struct.unpack_from("<i", data, 4)[0]


def checker() -> MessageChecker:
    c = MessageChecker()
    walk_messages(SCHEMA.serialize().to_pybytes(), "stream", c)  # it learns the schema
    return c


def value_positions(data: bytearray) -> dict:
    """Where bodyLength, the row count and each buffer's (offset, length) lie in a message."""
    from arrow_shm.limits import FlatBuffer

    prefix, size = prefix_and_meta(data)
    fb = FlatBuffer(memoryview(bytes(data[prefix : prefix + size])))
    msg = fb.root()
    rb = fb.table(msg, 2)
    buffers, count = fb.vector(rb, 2, 16)
    return {
        "body": prefix + fb.field(msg, 3, 8),
        "rows": prefix + fb.field(rb, 0, 8),
        "buffers": [prefix + buffers + 16 * k for k in range(count)],
    }


def hostile(kind: str) -> bytearray:
    if kind == "truncated":  # the learned message itself, its body cut short
        return message_of(batch(0, 16))[:-8]
    data = message_of(batch(1, 16))
    at = value_positions(data)
    if kind == "negative-body":
        struct.pack_into("<q", data, at["body"], -8)
    elif kind == "body-past-end":
        struct.pack_into("<q", data, at["body"], 1 << 40)
    elif kind == "negative-rows":
        struct.pack_into("<q", data, at["rows"], -1)
    elif kind == "negative-offset":
        struct.pack_into("<q", data, at["buffers"][-1], -8)
    elif kind == "negative-length":
        struct.pack_into("<q", data, at["buffers"][-1] + 8, -8)
    elif kind == "buffer-past-body":
        struct.pack_into("<q", data, at["buffers"][-1] + 8, 1 << 20)
    elif kind == "structure":  # a vtable entry: not the learned message, walked in full
        prefix, _ = prefix_and_meta(data)
        root = struct.unpack_from("<I", data, prefix)[0]
        vtable = prefix + root - struct.unpack_from("<i", data, prefix + root)[0]
        struct.pack_into("<H", data, vtable + 4 + 2 * 2, 0xFFF0)
    return data


KINDS = ["truncated", "negative-body", "body-past-end", "negative-rows", "negative-offset", "negative-length", "buffer-past-body", "structure"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_plan_raises_what_the_walk_raises_on_hostile_values(kind):
    plan = RecordPlan()
    good = message_of(batch(0, 16))
    walk_messages(memoryview(good), "batches", checker())
    plan.learn(memoryview(good))
    assert plan.match(memoryview(message_of(batch(5, 16)))) is not None  # same layout, other values
    data = memoryview(hostile(kind))
    with pytest.raises(ArrowShmError) as walked:
        walk_messages(data, "batches", checker())
    if kind == "structure":
        assert plan.match(data) is None  # walked in full by the reader
        return
    with pytest.raises(ArrowShmError) as planned:
        plan.match(data)
    assert planned.value.code == walked.value.code


@pytest.mark.parametrize("kind", ["negative-body", "buffer-past-body", "structure"])
def test_a_hostile_record_after_planned_ones_is_a_typed_error(pair, kind):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, capacity_bytes=65536)
    writer.write([batch(0, 16), batch(1, 16)])
    assert [reader.read(timeout=5).batch.to_pylist() for _ in range(2)] is not None
    p: RingProducer = writer._producer
    payload = hostile(kind)
    offset = p._write_position % p.capacity
    length = (64 + len(payload) + 63) // 64 * 64
    p._data[offset + 64 : offset + 64 + len(payload)] = payload
    struct.pack_into("<IIQQ", p._data, offset, length, RECORD_BATCH, 2, len(payload))
    p._write_position += length
    p._header.write_position = p._write_position
    with pytest.raises(ArrowShmError) as e:
        reader.read(timeout=5)
    assert e.value.code in ("ERR_IPC_INVALID", "ERR_IPC_TRUNCATED", "ERR_IPC_LIMIT")
    writer.abort()
    reader.close()


def test_no_fd_or_mapping_leaks_with_the_ring_written_in_place(pair):
    producer, consumer = pair

    def one_stream() -> None:
        writer, reader = open_pair(producer, consumer, capacity_bytes=65536)
        t = threading.Thread(target=lambda: (writer.write([batch(i, 3000) for i in range(100)] + [batch(1, 30_000)]), writer.close(timeout=10)))
        t.start()
        assert len(read_all(reader)) == 101
        t.join()
        reader.close()

    one_stream()
    gc.collect()
    fds, maps = open_fds(), memfd_maps()
    for _ in range(3):
        one_stream()
    for schema in (SCHEMA, pa.schema([("d", pa.dictionary(pa.int8(), pa.string()))])):  # through pyarrow's mapping, or ours
        RingProducer(schema, capacity_bytes=65536, prefault=True).close()
    gc.collect()
    assert open_fds() == fds
    assert memfd_maps() == maps


# ------------------------------------------------------------------------ the bench program

BENCH = str(REPO / "bench" / "stream_peer.py")


def run_roles(listening: List[str], connecting: List[str]) -> tuple[list, dict]:
    address = f"@ashm-bench-test-{uuid.uuid4().hex[:12]}"
    server = subprocess.Popen([PY, BENCH, *listening, "--address", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(server.stdout.readline()) == {"ready": True}
        client = subprocess.run([PY, BENCH, *connecting, "--address", address], capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stderr
        out, err = server.communicate(timeout=60)
        assert server.returncode == 0, err
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    return [json.loads(line) for line in out.splitlines()], json.loads(client.stdout)


def test_bench_program_consume_and_produce():
    (result,), produced = run_roles(["consume"], ["produce", "--bytes", "100", "--batches", "500", "--capacity-bytes", "65536"])
    assert result["batches"] == 500
    assert result["last_recv_ms"] >= result["first_sent_ms"] > 0
    assert result["latency_p99_us"] >= result["latency_median_us"] >= 0
    assert produced["cpu_ms"] > 0 and result["cpu_ms"] > 0


def test_bench_program_ping_and_pong_with_spinning_readers():
    (result,), ping = run_roles(["pong", "--spin-micros", "100"], ["ping", "--bytes", "64", "--rounds", "200", "--spin-micros", "100"])
    assert set(result) == {"cpu_ms"}
    assert ping["rounds"] == 200 and ping["rtt_p99_us"] >= ping["rtt_median_us"] > 0


def test_a_message_whose_values_overlap_is_never_planned():
    """A flatbuffer may point two vectors at the same bytes: the walk accepts it, but a value that
    doubles as another would change it unchecked, so the plan refuses to learn such a message."""
    from arrow_shm.limits import FlatBuffer

    schema = pa.schema([("s", pa.struct([]))])  # one field node, one buffer: the vectors can coincide
    c = MessageChecker()
    walk_messages(schema.serialize().to_pybytes(), "stream", c)
    data = bytearray(pa.record_batch([pa.array([], pa.struct([]))], schema=schema).serialize().to_pybytes())
    fb = FlatBuffer(memoryview(bytes(data[8:])))
    header = fb.table(fb.root(), 2)
    nodes_field, buffers_field = fb.field(header, 1, 4), fb.field(header, 2, 4)
    nodes_vector = nodes_field + struct.unpack_from("<I", data, 8 + nodes_field)[0]
    struct.pack_into("<I", data, 8 + buffers_field, nodes_vector - buffers_field)  # buffers := the nodes vector
    walk_messages(memoryview(data), "batches", c)  # the walk takes it
    plan = RecordPlan()
    plan.learn(memoryview(data))
    assert plan.match(memoryview(data)) is None


def test_in_place_writes_keep_back_pressure_fail_fast_and_max_messages(pair):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, capacity_bytes=65536, on_full="error")
    written = 0
    with pytest.raises(ArrowShmError) as e:
        while True:
            writer.write(batch(written, 3000))
            written += 1
    assert e.value.code == "ERR_RING_FULL" and "no room" in e.value.message
    assert 10 < written < 22  # ~3.1 KiB records in a 64 KiB ring
    for _ in range(3):
        reader.read(timeout=5).release()
    writer.write(batch(written, 3000))  # room again once released
    writer.abort()
    reader.close()


def test_in_place_writes_respect_max_messages(pair):
    producer, consumer = pair
    writer, reader = open_pair(producer, consumer, max_messages=3, on_full="error")
    writer.write([batch(i) for i in range(3)])
    with pytest.raises(ArrowShmError) as e:
        writer.write(batch(3))
    assert e.value.code == "ERR_RING_FULL" and "max_messages 3" in e.value.message
    reader.read(timeout=5).release()
    writer.write(batch(3))
    t = threading.Thread(target=lambda: writer.close(timeout=10))
    t.start()
    rest = read_all(reader)
    t.join()
    assert rest == [batch(i).to_pylist() for i in (1, 2, 3)]
    reader.close()
