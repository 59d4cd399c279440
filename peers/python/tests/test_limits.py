"""Decoding limits of the Python receiver (PROTOCOL.md §14.1; issue #13 items 1 and 2).

Hostile IPC comes from the shared attacker, test/python/attacks.py: flatbuffers whose offsets
share one object (small when stored, huge once decoded), huge declared counts, counts that do not
match the schema. Unit tests check the limits (defaults, configuration, exact boundaries); the
process tests attack a real receiver (the CLI) and then serve an honest sender.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import time
from typing import Dict, List

import pyarrow as pa
import pytest

from arrow_shm.errors import ERR_INVALID_ARGUMENT, ERR_IPC_INVALID, ERR_IPC_LIMIT, ERR_IPC_UNSUPPORTED, ArrowShmError
from arrow_shm.ipc import EOS, MessageChecker, validate_stream, walk_messages
from arrow_shm.limits import DEFAULT_LIMITS, FlatBuffer, IpcLimits, resolve_ipc_limits, verify_message

from conftest import GOLD, PY, REPO, cli, gold_streams, spawn_listening

ATTACKS = REPO / "test" / "python" / "attacks.py"
sys.path.insert(0, str(ATTACKS.parent))
import attacks  # noqa: E402

PRIMITIVE = GOLD / "1.0.0-littleendian" / "generated_primitive.stream"


def refusal(data, limits: IpcLimits = DEFAULT_LIMITS) -> tuple:
    """(code, message) of validate_stream's refusal, ("ok", "") if it accepts. Nothing of the
    exception is kept (its traceback would pin views of a mapping)."""
    try:
        validate_stream(data, limits)
    except ArrowShmError as e:
        return e.code, e.message
    return "ok", ""


def code_of(data, limits: IpcLimits = DEFAULT_LIMITS) -> str:
    return refusal(data, limits)[0]


def stream_of(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def least_passing(data: bytes, name: str, hi: int) -> int:
    """The smallest value of limit ``name`` that lets ``data`` through (binary search)."""
    assert code_of(data, IpcLimits(**{name: hi})) == "ok"
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        if code_of(data, IpcLimits(**{name: mid})) == "ok":
            hi = mid
        else:
            lo = mid + 1
    return lo


# ------------------------------------------------------------------ the limits themselves


def test_defaults_are_those_of_the_protocol():
    assert DEFAULT_LIMITS == IpcLimits(
        max_metadata_bytes=64 * 1024 * 1024, max_metadata_entries=65_536, max_fields=65_536, max_nesting_depth=64
    )


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "64"])
@pytest.mark.parametrize("name", ["max_metadata_bytes", "max_metadata_entries", "max_fields", "max_nesting_depth"])
def test_limits_must_be_positive_integers(name, bad):
    with pytest.raises(ArrowShmError) as e:
        IpcLimits(**{name: bad})
    assert e.value.code == ERR_INVALID_ARGUMENT and name in e.value.message


def test_the_receiver_option_takes_none_limits_or_a_mapping():
    assert resolve_ipc_limits(None) is DEFAULT_LIMITS
    assert resolve_ipc_limits({"max_fields": 10}) == IpcLimits(max_fields=10)
    limits = IpcLimits(max_nesting_depth=3)
    assert resolve_ipc_limits(limits) is limits
    for bad in ({"max_feilds": 10}, {"max_fields": 0}):
        with pytest.raises(ArrowShmError) as e:
            resolve_ipc_limits(bad)
        assert e.value.code == ERR_INVALID_ARGUMENT


@pytest.mark.parametrize(
    "make,limit",
    [
        (attacks.metadata_bomb, "max_metadata_entries"),
        (attacks.schema_bomb, "max_fields"),
        (attacks.fields_many, "max_fields"),
    ],
)
def test_bombs_are_refused_before_anything_decodes_them(make, limit):
    data = make()
    start = time.perf_counter()
    with pytest.raises(ArrowShmError) as e:
        validate_stream(data)
    took = time.perf_counter() - start
    assert e.value.code == ERR_IPC_LIMIT and limit in e.value.message
    assert took < 0.5, took  # O(1) per vector: not one step per shared reference


def test_every_shared_reference_is_counted_again():
    # Small once stored, not once decoded: each limit trips although the stored bytes are few.
    assert code_of(attacks.metadata_bomb(100_000, 1 << 20), IpcLimits(max_metadata_entries=200_000)) == ERR_IPC_LIMIT
    data = attacks.metadata_bomb(64, 1 << 20)  # 64 references to one 1 MiB value, ~1 MiB stored
    assert len(data) < 2 << 20
    needed = least_passing(data, "max_metadata_bytes", 1 << 30)
    assert 64 << 20 <= needed < (64 << 20) + 4096
    assert code_of(data) == ERR_IPC_LIMIT  # over the default 64 MiB by the keys and vectors
    schema = attacks.schema_bomb(50, 1000)  # 50 references to one Field
    assert least_passing(schema, "max_fields", 1000) == 50
    assert 50_000 <= least_passing(schema, "max_metadata_bytes", 1 << 20) < 51_000


def test_a_dag_of_shared_fields_costs_what_is_stored_and_counts_what_decodes():
    # 40 Field tables, 2**40 - 1 fields by reference: refused at once, not after 65,536 steps.
    start = time.perf_counter()
    assert refusal(attacks.field_dag(40)) == (ERR_IPC_LIMIT, "message metadata over max_fields (65536): more than 65536 fields")
    assert time.perf_counter() - start < 0.05
    # 16 tables, 65,535 fields (under the default): accepted, counts included, and pyarrow agrees.
    data = attacks.field_dag(16)
    start = time.perf_counter()
    assert validate_stream(data).record_batches == 1
    assert time.perf_counter() - start < 0.5
    assert least_passing(attacks.field_dag(6), "max_fields", 1000) == 63
    assert least_passing(attacks.field_dag(6), "max_nesting_depth", 1000) == 8  # Message 0, Schema 1, Fields 2-7, their Int 8
    assert pa.ipc.open_stream(attacks.field_dag(6)).read_all().num_columns == 1


def test_node_count_bomb_is_refused_without_reading_its_vectors(tmp_path):
    path = tmp_path / "bomb.arrows"
    size = attacks.write_node_count_bomb(str(path))
    assert os.stat(path).st_blocks * 512 < size // 100  # sparse: holes, not 480 MB
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        with memoryview(m) as view:
            start = time.perf_counter()
            code, message = refusal(view)
            took = time.perf_counter() - start
            assert code == ERR_IPC_LIMIT and "max_metadata_bytes" in message
            assert took < 0.5, took
            # Under a limit big enough for its vectors, its counts still do not match the schema.
            assert code_of(view, IpcLimits(max_metadata_bytes=1 << 30)) == ERR_IPC_INVALID


def test_fields_exactly_at_the_limit_pass_one_more_is_refused():
    data = attacks.fields_many(100)
    assert code_of(data, IpcLimits(max_fields=100)) == "ok"
    assert code_of(data, IpcLimits(max_fields=99)) == ERR_IPC_LIMIT
    # 70,000 honest fields (over the default) pass when the limit allows them, and pyarrow agrees.
    many = attacks.fields_many()
    assert code_of(many) == ERR_IPC_LIMIT
    assert validate_stream(many, IpcLimits(max_fields=70_000)).record_batches == 1
    assert pa.ipc.open_stream(many).read_all().num_columns == 70_000


def test_children_count_as_fields_and_nesting_as_depth():
    # struct<a: list<int32>, b: utf8>: 4 Field tables; the Int of `a`'s item is 6 tables deep
    # (Message 0, Schema 1, s 2, a 3, item 4, Int 5).
    t = pa.table({"s": pa.array([{"a": [1, 2], "b": "x"}], pa.struct([("a", pa.list_(pa.int32())), ("b", pa.utf8())]))})
    data = stream_of(t)
    assert least_passing(data, "max_fields", 100) == 4
    assert least_passing(data, "max_nesting_depth", 100) == 5
    deep = pa.int32()
    for _ in range(40):  # (pyarrow writes at most 64 levels; the walk has no recursion limit)
        deep = pa.list_(deep)
    data = stream_of(pa.table({"d": pa.array([None], deep)}))
    assert least_passing(data, "max_nesting_depth", 1000) == 43  # Message, Schema, 41 Fields, Int
    assert code_of(data, IpcLimits(max_nesting_depth=42)) == ERR_IPC_LIMIT


def test_key_value_entries_of_message_schema_and_fields_add_up():
    field = pa.field("x", pa.int32(), metadata={"f1": "1", "f2": "2"})
    schema = pa.schema([field], metadata={"s1": "1"})
    data = stream_of(pa.table({"x": pa.array([1], pa.int32())}, schema=schema))
    assert least_passing(data, "max_metadata_entries", 100) == 3
    assert least_passing(attacks.metadata_bomb(7, 10), "max_metadata_entries", 100) == 7


def test_counts_are_checked_against_the_schema():
    data = attacks.counts_mismatch()
    assert pa.ipc.open_stream(data).read_all().num_rows == 1  # pyarrow alone lets it through
    with pytest.raises(ArrowShmError) as e:
        validate_stream(data)
    assert e.value.code == ERR_IPC_INVALID and "2 field nodes, its schema has 1" in e.value.message


def test_a_type_this_side_does_not_know_is_unsupported():
    assert code_of(attacks.unknown_type()) == ERR_IPC_UNSUPPORTED


def _patch_dictionary_id(data: bytes, new_id: int) -> bytes:
    out = bytearray(data)
    spans, _ = walk_messages(data)
    span = [s for s in spans if s.header_type == 2][-1]  # id 0 is a default, not stored
    meta = span.start + 8
    fb = FlatBuffer(memoryview(out)[meta:])
    header = fb.table(fb.root(), 2)
    assert header is not None
    pos = fb.field(header, 0, 8)
    assert pos is not None
    out[meta + pos : meta + pos + 8] = new_id.to_bytes(8, "little")
    return bytes(out)


def test_a_dictionary_batch_is_checked_against_its_value_field():
    d = pa.array(["a", "b", "a"]).dictionary_encode()
    t = pa.table({"d0": d, "d1": d})
    data = stream_of(t)
    assert code_of(data) == "ok"
    assert code_of(_patch_dictionary_id(data, 99)) == ERR_IPC_INVALID


# Every layout rule of §14.1 against what pyarrow writes.
LAYOUT_ZOO = {
    "null": pa.array([None, None], pa.null()),
    "bool": pa.array([True, None]),
    "utf8": pa.array(["a", None]),
    "large_binary": pa.array([b"a", None], pa.large_binary()),
    "utf8_view": pa.array(["short", "a string longer than twelve bytes", None], pa.string_view()),
    "binary_view": pa.array([b"x" * 40, b"y" * 40], pa.binary_view()),
    "list": pa.array([[1], None], pa.list_(pa.int64())),
    "large_list": pa.array([[1], []], pa.large_list(pa.int8())),
    "list_view": pa.array([[1], None], pa.list_view(pa.int16())),
    "large_list_view": pa.array([[1.0]], pa.large_list_view(pa.float32())),
    "fixed_list": pa.array([[1, 2]], pa.list_(pa.int32(), 2)),
    "map": pa.array([[("k", 1)]], pa.map_(pa.utf8(), pa.int32())),
    "struct": pa.array([{"a": 1, "b": "x"}]),
    "sparse_union": pa.UnionArray.from_sparse(pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])]),
    "dense_union": pa.UnionArray.from_dense(
        pa.array([0, 1], pa.int8()), pa.array([0, 0], pa.int32()), [pa.array([1]), pa.array(["a"])]
    ),
    "ree": pa.RunEndEncodedArray.from_arrays(pa.array([2, 5], pa.int32()), pa.array(["a", "b"])),
    "decimal": pa.array([1], pa.decimal128(10, 2)),
    "timestamp_tz": pa.array([1], pa.timestamp("us", tz="UTC")),
    "dict_in_struct": pa.StructArray.from_arrays([pa.array(["a", "b"]).dictionary_encode()], ["d"]),
    "dict_of_lists": pa.DictionaryArray.from_arrays(pa.array([0, 0]), pa.array([[1, 2]], pa.list_(pa.int32()))),
}


@pytest.mark.parametrize("name", sorted(LAYOUT_ZOO))
def test_counts_of_every_layout_match_what_pyarrow_writes(name):
    data = stream_of(pa.table({name: LAYOUT_ZOO[name]}))
    assert validate_stream(data).record_batches == 1


def test_all_gold_files_pass_and_the_walk_costs_microseconds():
    per_batch: List[float] = []
    for path in gold_streams():
        data = path.read_bytes()
        spans, _ = walk_messages(data)
        for span in spans:
            size = int.from_bytes(data[span.start + 4 : span.start + 8], "little", signed=True)
            meta = memoryview(data)[span.start + 8 : span.start + 8 + size]
            start = time.perf_counter()
            for _ in range(20):
                verify_message(meta)
            if span.header_type == 3:
                per_batch.append((time.perf_counter() - start) / 20)
    per_batch.sort()
    assert per_batch[len(per_batch) // 2] < 100e-6, per_batch[len(per_batch) // 2]  # ~5 µs here; slack for a busy CI


def test_batches_mode_checks_counts_with_the_prologues_checker():
    prologue_end = walk_messages(attacks.small_table())[0][0].end  # the same Schema message
    data = attacks.counts_mismatch()
    checker = MessageChecker()
    walk_messages(data[:prologue_end] + EOS, "stream", checker)
    record = data[prologue_end : -len(EOS)]
    assert walk_messages(record, "batches")[0]  # without the schema nothing to compare with
    with pytest.raises(ArrowShmError) as e:
        walk_messages(record, "batches", checker)
    assert e.value.code == ERR_IPC_INVALID


# ------------------------------------------------------------------ a real receiver under attack

AS_LIMIT = str(6 * 1000**3)  # if a bomb got through, the receiver dies of it instead of the machine


def receiver_state(pid: int) -> tuple:
    fds: Dict[str, str] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    with open(f"/proc/{pid}/maps") as f:
        memfds = sorted(line for line in f if "memfd:" in line)
    return fds, memfds


def run_attack(kind: str, path: str) -> dict:
    r = subprocess.run([PY, str(ATTACKS), "attack", kind, "--socket", path, "--seconds", "20"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[-1]["event"] == "done", events
    return events[-1]["result"]


def honest_send(path: str) -> float:
    start = time.monotonic()
    r = subprocess.run(cli("send", "--socket", path, "--timeout-ms", "5000", str(PRIMITIVE)), capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return time.monotonic() - start


def test_receiver_refuses_every_bomb_stays_alive_leaks_nothing_and_serves_next(sock_path):
    expected = {
        "metadata-bomb": ERR_IPC_LIMIT,
        "schema-bomb": ERR_IPC_LIMIT,
        "node-count-bomb": ERR_IPC_LIMIT,
        "counts-mismatch": ERR_IPC_INVALID,
    }
    rx = spawn_listening(["prlimit", f"--as={AS_LIMIT}", *cli("recv", "--socket", sock_path, "--count", "2")])
    try:
        honest_send(sock_path)  # warm up (pyarrow's lazy state), then take what it holds
        before = receiver_state(rx.pid)
        for kind, code in expected.items():
            result = run_attack(kind, sock_path)
            assert result.get("kind") == "ERROR" and result.get("code") == code, (kind, result)
            assert rx.poll() is None, f"the receiver died of {kind}"
        deadline = time.monotonic() + 3
        while receiver_state(rx.pid) != before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver_state(rx.pid) == before
        took = honest_send(sock_path)
        assert took < 2.0, took
        out, err = rx.communicate(timeout=10)
        assert rx.returncode == 0, err
        for code in set(expected.values()):
            assert code.encode() in err
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.communicate()


# ------------------------------------------------------------------ the channel option

LIMITED_RECEIVER = """
import sys
from arrow_shm import ArrowShmError, listen
limits = None if sys.argv[2] == "default" else {"max_fields": int(sys.argv[2])}
with listen(sys.argv[1], ipc_limits=limits) as listener:
    print("arrow-shm: listening on", sys.argv[1], file=sys.stderr, flush=True)
    with listener.accept(timeout=20) as channel:
        for _ in range(2):
            try:
                with channel.receive(timeout=20) as table:
                    print("ok", table.table.num_columns, flush=True)
            except ArrowShmError as e:
                print(e.code, flush=True)
"""


@pytest.mark.parametrize("limit", ["default", "2"])
def test_a_channel_with_small_ipc_limits_refuses_what_the_default_accepts(sock_path, limit):
    from arrow_shm import connect

    wide = pa.table({"a": [1], "b": [2], "c": [3]})  # 3 fields
    narrow = pa.table({"a": [1], "b": [2]})
    rx = spawn_listening([PY, "-c", LIMITED_RECEIVER, sock_path, limit])
    try:
        with connect(sock_path, timeout=10) as channel:
            if limit == "default":
                channel.send(wide, timeout=10)
            else:
                with pytest.raises(ArrowShmError) as e:
                    channel.send(wide, timeout=10)
                assert e.value.code == ERR_IPC_LIMIT and e.value.remote and "max_fields (2)" in e.value.message
            channel.send(narrow, timeout=10)  # the refusal was message-level: the connection goes on
        out, err = rx.communicate(timeout=20)
        assert rx.returncode == 0, err
        first = "ok 3" if limit == "default" else ERR_IPC_LIMIT
        assert out.decode().split("\n")[:2] == [first, "ok 2"]
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.communicate()


def test_the_channel_option_is_checked_before_the_handshake():
    import socket

    from arrow_shm import Channel, IpcLimits

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine, theirs:
        for bad in ({"max_tables": 5}, {"max_fields": 0}):
            with pytest.raises(ArrowShmError) as e:
                Channel(mine, listener_side=True, ipc_limits=bad)
            assert e.value.code == ERR_INVALID_ARGUMENT
    assert resolve_ipc_limits(IpcLimits(max_fields=3)).max_fields == 3
