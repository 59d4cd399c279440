"""Property-based fuzzing (hypothesis) of the parsers that see peer-controlled bytes.

For arbitrary bytes, mutated frames and mutated gold/fuzz IPC files:
``frame.decode_frame`` returns a Frame or raises ArrowShmError(ERR_PROTOCOL), and
``ipc.walk_messages`` / ``validate_stream`` / ``decode_table`` succeed or raise ArrowShmError with an
IPC code: never any other exception. Deterministic (``derandomize=True``, no example database) and
kept small (a few hundred examples per test) so the file runs in well under 30 s.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from arrow_shm.errors import ArrowShmError
from arrow_shm.frame import Flags, Frame, Kind, decode_frame, encode_frame
from arrow_shm.ipc import decode_table, validate_stream, walk_messages

from conftest import REPO, fuzz_files, gold_streams

# hypothesis keeps caches even without an example database: under .build/ (git-ignored), not the cwd.
set_hypothesis_home_dir(REPO / ".build" / "hypothesis")

IPC_CODES = {"ERR_IPC_INVALID", "ERR_IPC_TRUNCATED", "ERR_IPC_UNSUPPORTED", "ERR_TOO_LARGE"}
MAX_SEED_BYTES = 64 * 1024  # larger gold files only slow the examples down

SEEDS = [
    p.read_bytes()
    for p in [*gold_streams(), *fuzz_files()]
    if 0 < p.stat().st_size <= MAX_SEED_BYTES
]

FUZZ_SETTINGS = settings(
    derandomize=True,  # same examples on every run (CI)
    database=None,  # nothing written into the repository
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

BOUNDARY = [0, 1, 7, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF8, 0xFFFFFFFF]


def check_frame(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except ArrowShmError as e:
        assert e.code == "ERR_PROTOCOL", e
    else:
        assert isinstance(frame, Frame)


def check_ipc(data: bytes) -> None:
    for mode in ("stream", "batches"):
        try:
            walk_messages(data, mode)
        except ArrowShmError as e:
            assert e.code in IPC_CODES, e
    try:
        validate_stream(data)
    except ArrowShmError as e:
        assert e.code in IPC_CODES, e
        # the receiver only decodes what validated; decoding hostile bytes must still be typed
    try:
        table = decode_table(pa.py_buffer(data))
    except ArrowShmError as e:
        assert e.code in IPC_CODES, e
    else:
        assert isinstance(table, pa.Table)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with 1-4 stacked mutations: bit flips, byte sets, truncation, boundary values written
    over a length field (after a continuation marker, or any 4-aligned offset), chunk deletion,
    insertion and splicing with another seed."""
    b = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "length", "delete", "insert", "splice"]))
        n = len(b)
        if op == "flip" and n:
            i = draw(st.integers(0, n - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            b[draw(st.integers(0, n - 1))] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == "truncate":
            del b[draw(st.integers(0, n)) :]
        elif op == "length" and n >= 4:
            markers = [i + 4 for i in range(0, n - 7, 4) if b[i : i + 4] == b"\xff\xff\xff\xff"]
            if markers and draw(st.booleans()):
                at = draw(st.sampled_from(markers))
            else:
                at = draw(st.integers(0, (n - 4) // 4)) * 4
            value = draw(st.sampled_from(BOUNDARY + [n, n - 1, n + 1]))
            struct.pack_into("<I", b, at, value & 0xFFFFFFFF)
        elif op == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del b[i : i + draw(st.integers(1, 64))]
        elif op == "insert":
            i = draw(st.integers(0, n))
            b[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            b = b[: draw(st.integers(0, n))] + other[draw(st.integers(0, len(other))) :]
    return bytes(b)


FRAME_SEEDS = [
    encode_frame(Frame(kind=Kind.HELLO, metadata={"implementation": "props", "versions": "1"})),
    encode_frame(
        Frame(
            kind=Kind.TABLE,
            flags=int(Flags.REQUEST),
            message_id=7,
            ipc_offset=4096,
            ipc_length=123456,
            fd_count=1,
            metadata={"name": "t\u00e9st", "": ""},
        )
    ),
    encode_frame(Frame(kind=Kind.ERROR, correlation_id=7, metadata={"code": "ERR_PROTOCOL", "message": "x" * 300})),
    encode_frame(Frame(kind=Kind.ACK)),
]


def test_seed_corpus_present():
    assert len(SEEDS) >= 30


@FUZZ_SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_as_a_frame(data):
    check_frame(data)


@FUZZ_SETTINGS
@given(st.binary(max_size=200).map(lambda tail: FRAME_SEEDS[0][:4] + tail))
def test_arbitrary_bytes_after_the_frame_magic(data):
    check_frame(data)


@FUZZ_SETTINGS
@given(mutated(FRAME_SEEDS))
def test_mutated_frames(data):
    check_frame(data)


@FUZZ_SETTINGS
@given(
    st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=5),
    st.sampled_from(list(Kind)),
    st.integers(0, 7),
    st.integers(0, 2**64 - 1),
)
def test_valid_frames_round_trip(metadata, kind, flags, message_id):
    frame = Frame(kind=kind, flags=flags, message_id=message_id, metadata=metadata)
    back = decode_frame(encode_frame(frame))
    assert (back.kind, back.flags, back.message_id, back.metadata) == (kind, flags, message_id, metadata)


@FUZZ_SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_as_ipc(data):
    check_ipc(data)


@FUZZ_SETTINGS
@given(st.binary(max_size=512).map(lambda b: b"\xff\xff\xff\xff" + b))
def test_arbitrary_bytes_after_a_continuation_marker(data):
    check_ipc(data)


@settings(FUZZ_SETTINGS, max_examples=3000)
@given(mutated(SEEDS))
def test_mutated_gold_and_fuzz_files(data):
    check_ipc(data)


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_unmutated_seeds(seed):
    check_ipc(SEEDS[seed])
