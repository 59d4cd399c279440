"""The receiver's validation policy (``validate``): "bounds" (default), "full", "framing".

Hostile streams are sent byte for byte by another process (`python -m arrow_shm send`) and read
by a receiver here under each policy."""

import struct
import subprocess
import threading

import pyarrow as pa
import pytest

from arrow_shm import ArrowShmError, connect, listen
from arrow_shm.ipc import VALIDATE_MODES, decode_table

from conftest import cli, gold_streams


def _stream(array: pa.Array) -> bytes:
    batch = pa.RecordBatch.from_arrays([array], ["c"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _patched(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, "the pattern to patch must be unique in the stream"
    return data.replace(old, new)


def _i32(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}i", *values)


# Offsets [0, 37, 40] -> [0, 2^31-1, 40]: the last offset is in range (pyarrow's reader accepts
# it), the middle one points 2 GiB past the 40-byte data buffer.
OFFSETS_PAST_DATA = _patched(_stream(pa.array(["a" * 37, "b" * 3])), _i32(0, 37, 40), _i32(0, 2**31 - 1, 40))
NESTED_OFFSETS_PAST_DATA = _patched(
    _stream(pa.array([{"l": ["a" * 37, "b" * 3]}])), _i32(0, 37, 40), _i32(0, 2**31 - 1, 40)
)
# Indices into a 2-entry dictionary, the last one 99.
DICTIONARY_INDEX_OUT_OF_RANGE = _patched(
    _stream(pa.array(["x", "y", "y", "x", "y"]).dictionary_encode()), _i32(0, 1, 1, 0, 1), _i32(0, 1, 1, 0, 99)
)
INVALID_UTF8 = _patched(_stream(pa.array(["ab\x01\x02"])), b"ab\x01\x02", b"ab\xff\xfe")
NESTED_INVALID_UTF8 = _patched(_stream(pa.array([{"l": ["ab\x01\x02"]}])), b"ab\x01\x02", b"ab\xff\xfe")


def _received_by_a_process(sock_path, tmp_path, data: bytes, validate: str):
    """`python -m arrow_shm send FILE` in another process -> a receiver here with ``validate``:
    the decoded table, or the ArrowShmError reading it raised."""
    path = tmp_path / "hostile.arrows"
    path.write_bytes(data)
    with listen(sock_path, validate=validate) as lst:
        proc = subprocess.Popen(cli("send", "--socket", sock_path, "--timeout-ms", "20000", str(path)), stderr=subprocess.PIPE)
        try:
            with lst.accept(timeout=20) as ch, ch.receive(timeout=20) as m:
                try:
                    return m.table
                except ArrowShmError as e:
                    return e
        finally:
            assert proc.wait(20) == 0, proc.stderr.read()


@pytest.mark.parametrize("validate", ["bounds", "full"])
@pytest.mark.parametrize(
    "data", [OFFSETS_PAST_DATA, NESTED_OFFSETS_PAST_DATA, DICTIONARY_INDEX_OUT_OF_RANGE], ids=["offsets", "nested-offsets", "dictionary-index"]
)
def test_out_of_bounds_streams_are_refused(sock_path, tmp_path, data, validate):
    got = _received_by_a_process(sock_path, tmp_path, data, validate)
    assert isinstance(got, ArrowShmError) and got.code == "ERR_IPC_INVALID", got


def test_bounds_is_the_default(sock_path, tmp_path):
    path = tmp_path / "hostile.arrows"
    path.write_bytes(OFFSETS_PAST_DATA)
    with listen(sock_path) as lst:
        proc = subprocess.Popen(cli("send", "--socket", sock_path, "--timeout-ms", "20000", str(path)), stderr=subprocess.PIPE)
        with lst.accept(timeout=20) as ch:
            assert ch.validate == "bounds"
            with ch.receive(timeout=20) as m, pytest.raises(ArrowShmError) as e:
                m.table
        assert proc.wait(20) == 0
    assert e.value.code == "ERR_IPC_INVALID" and "out of bounds" in e.value.message


@pytest.mark.parametrize("data", [INVALID_UTF8, NESTED_INVALID_UTF8], ids=["utf8", "nested-utf8"])
def test_invalid_utf8_passes_bounds_and_is_refused_by_full(sock_path, tmp_path, data):
    table = _received_by_a_process(sock_path, tmp_path, data, "bounds")
    assert isinstance(table, pa.Table)
    assert table.schema == pa.ipc.open_stream(data).schema  # still utf8 columns: only the check differs
    got = _received_by_a_process(sock_path, tmp_path, data, "full")
    assert isinstance(got, ArrowShmError) and got.code == "ERR_IPC_INVALID" and "UTF8" in got.message


def test_framing_trusts_the_values(sock_path, tmp_path):
    """For trusted senders: the IPC framing and buffer bounds only (checked before decoding)."""
    table = _received_by_a_process(sock_path, tmp_path, DICTIONARY_INDEX_OUT_OF_RANGE, "framing")
    assert isinstance(table, pa.Table) and table.num_rows == 5


@pytest.mark.parametrize("mode", VALIDATE_MODES)
def test_gold_streams_decode_under_every_policy(mode):
    for path in gold_streams():
        table = decode_table(pa.py_buffer(path.read_bytes()), validate=mode)
        assert table.equals(pa.ipc.open_stream(path.read_bytes()).read_all()), path.name


STRING_TYPES = [
    pa.array(["é", None, "xyz"]),
    pa.array(["é", None], pa.large_string()),
    pa.array(["é", None, "a string longer than twelve"], pa.string_view()),
    pa.array([["a"], None, ["b", "c"]], pa.list_view(pa.string())),
    pa.array([["a", "b"], None], pa.list_(pa.large_string(), 2)),
    pa.array([[("k", "v")], None], pa.map_(pa.string(), pa.string())),
    pa.compute.run_end_encode(pa.array(["a", "a", "b"])),
    pa.UnionArray.from_dense(pa.array([0, 1, 0], pa.int8()), pa.array([0, 0, 1], pa.int32()), [pa.array(["a", "b"]), pa.array([1])]),
    pa.UnionArray.from_sparse(pa.array([0, 1], pa.int8()), [pa.array(["a", "b"]), pa.array([1, 2])]),
    pa.array(['{"a": 1}'], pa.json_()),
]


@pytest.mark.parametrize("array", STRING_TYPES, ids=[str(a.type) for a in STRING_TYPES])
def test_every_string_layout_decodes_under_bounds(array):
    data = pa.py_buffer(_stream(array))
    for mode in VALIDATE_MODES:
        assert decode_table(data, validate=mode).column(0).chunk(0).equals(array)


def test_bad_policy_is_an_invalid_argument(sock_path):
    for bad in ("none", True, None, "FULL"):
        with pytest.raises(ArrowShmError) as e:
            listen(sock_path, validate=bad)
        assert e.value.code == "ERR_INVALID_ARGUMENT"
        with pytest.raises(ArrowShmError) as e:
            decode_table(pa.py_buffer(_stream(pa.array([1]))), validate=bad)
        assert e.value.code == "ERR_INVALID_ARGUMENT"
    with listen(sock_path) as lst:
        accepted = {}
        thread = threading.Thread(target=lambda: accepted.setdefault("channel", lst.accept(timeout=5)))
        thread.start()
        with connect(sock_path, timeout=5) as client:
            thread.join(5)
            with accepted["channel"] as server:
                with pytest.raises(ArrowShmError) as e:
                    server.accept_stream(timeout=1, validate="all")
                assert e.value.code == "ERR_INVALID_ARGUMENT"
            assert client.validate == "bounds"
        with pytest.raises(ArrowShmError) as e:
            connect(sock_path, timeout=5, validate="strict")
        assert e.value.code == "ERR_INVALID_ARGUMENT"


# ------------------------------------------------------------------ a channel's verified schemas


def test_a_repeated_schema_is_verified_once_and_batches_still_checked_against_it():
    from arrow_shm.ipc import validate_stream, walk_messages
    from arrow_shm.limits import SchemaCache

    one = _stream(pa.array([1, 2, 3]))
    two = pa.BufferOutputStream()
    batch = pa.record_batch([pa.array([1]), pa.array([2])], ["c", "d"])
    with pa.ipc.new_stream(two, batch.schema) as writer:
        writer.write_batch(batch)
    two = two.getvalue().to_pybytes()
    schemas = SchemaCache()
    validate_stream(one, None, schemas)
    assert len(schemas._entries) == 1
    validate_stream(one, None, schemas)  # a hit: still one entry
    assert len(schemas._entries) == 1
    # one's (cached) schema followed by two's 2-column batch: refused against the cached layout
    schema_one, batch_two = walk_messages(one)[0][0], walk_messages(two)[0][1]
    spliced = one[: schema_one.end] + two[batch_two.start :]
    with pytest.raises(ArrowShmError) as e:
        validate_stream(spliced, None, schemas)
    assert e.value.code == "ERR_IPC_INVALID" and "2 field nodes" in e.value.message
    validate_stream(two, None, schemas)  # another schema: verified, then remembered too
    assert len(schemas._entries) == 2


def test_the_schema_cache_is_bounded():
    from arrow_shm.ipc import validate_stream
    from arrow_shm.limits import SchemaCache

    schemas = SchemaCache(max_entries=3)
    for i in range(10):  # ten different schemas
        batch = pa.record_batch([pa.array([1])], [f"col{i}"])
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        validate_stream(sink.getvalue(), None, schemas)
    assert len(schemas._entries) == 3
