import fcntl
import os

import pyarrow as pa
import pytest

from arrow_shm.errors import ArrowShmError
from arrow_shm.segment import (
    F_SEAL_GROW,
    F_SEAL_SEAL,
    F_SEAL_SHRINK,
    F_SEAL_WRITE,
    SEALS_LEASED,
    SEALS_SEALED,
    Segment,
    check_segment,
    map_readonly,
    write_table_segment,
)

TABLE = pa.table({"a": list(range(100)), "s": [f"v{i}" for i in range(100)]})


def code_of(fn, *args, **kw):
    with pytest.raises(ArrowShmError) as e:
        fn(*args, **kw)
    return e.value.code


def test_written_segment_is_sealed_and_reads_back():
    seg, n = write_table_segment(TABLE)
    with seg:
        assert seg.seals() & SEALS_SEALED == SEALS_SEALED
        size = check_segment(seg.fd, 0, n)
        assert size == n
        m = map_readonly(seg.fd, size)
        t = pa.ipc.open_stream(pa.py_buffer(m)).read_all()
        assert t.equals(TABLE)
        del t
        m.close()
        # sealed: no writes, no resize
        with pytest.raises(OSError):
            os.pwrite(seg.fd, b"x", 0)
        with pytest.raises(OSError):
            os.ftruncate(seg.fd, 1)


def test_raw_bytes_are_copied_byte_for_byte():
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, TABLE.schema) as w:
        w.write_table(TABLE)
    raw = sink.getvalue().to_pybytes()
    seg, n = write_table_segment(raw)
    with seg:
        assert n == len(raw)
        assert os.pread(seg.fd, n, 0) == raw


def test_seed_layout_min_size_unsealed_zero_tail():
    seg, n = write_table_segment(TABLE, min_size=40960, seal=False)
    with seg:
        assert os.fstat(seg.fd).st_size == 40960
        assert seg.seals() & F_SEAL_WRITE == 0
        assert os.pread(seg.fd, 40960 - n, n) == b"\0" * (40960 - n)


def memfd_with(seals: int, size: int = 4096) -> int:
    fd = os.memfd_create("t", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, 1033, seals)
    return fd


def test_unsealed_rejected_unless_allowed():
    fd = memfd_with(0)
    try:
        assert code_of(check_segment, fd, 0, 100) == "ERR_SEGMENT_UNSEALED"
        assert check_segment(fd, 0, 100, allow_unsealed=True) == 4096
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "seals",
    [
        F_SEAL_SEAL | F_SEAL_GROW | F_SEAL_WRITE,  # shrinkable
        F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_WRITE,  # growable
        F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE,  # seals not sealed
        F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW,  # writable
    ],
)
def test_each_missing_seal_is_unsealed(seals):
    fd = memfd_with(seals)
    try:
        assert code_of(check_segment, fd, 0, 100) == "ERR_SEGMENT_UNSEALED"
    finally:
        os.close(fd)


def test_leased_seal_set():
    fd = memfd_with(SEALS_LEASED)
    try:
        assert check_segment(fd, 0, 100, leased=True) == 4096
        assert code_of(check_segment, fd, 0, 100) == "ERR_SEGMENT_UNSEALED"
    finally:
        os.close(fd)
    fd = memfd_with(F_SEAL_SEAL | F_SEAL_GROW)
    try:
        assert code_of(check_segment, fd, 0, 100, leased=True) == "ERR_SEGMENT_UNSEALED"
    finally:
        os.close(fd)


def test_not_a_memfd_pipe():
    r, w = os.pipe()
    try:
        assert code_of(check_segment, r, 0, 8) == "ERR_SEGMENT_INVALID"
    finally:
        os.close(r)
        os.close(w)


def test_not_a_memfd_dev_zero():
    fd = os.open("/dev/zero", os.O_RDONLY)
    try:
        assert code_of(check_segment, fd, 0, 8) == "ERR_SEGMENT_INVALID"
    finally:
        os.close(fd)


def test_not_a_memfd_directory():
    fd = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert code_of(check_segment, fd, 0, 8) == "ERR_SEGMENT_INVALID"
    finally:
        os.close(fd)


def test_not_a_memfd_regular_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"\0" * 4096)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert code_of(check_segment, fd, 0, 8) == "ERR_SEGMENT_INVALID"
        # even when the caller allows unsealed segments
        assert code_of(check_segment, fd, 0, 8, allow_unsealed=True) == "ERR_SEGMENT_INVALID"
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "offset,length",
    [
        (0, 0),  # zero length
        (4, 8),  # misaligned
        (0, 4097),  # past the end
        (4096, 1),  # starts at the end
        (8192, 8),  # starts past the end
        (2**64 - 8, 16),  # would overflow 64-bit arithmetic
        (8, 2**64 - 1),
    ],
)
def test_bounds(offset, length):
    fd = memfd_with(SEALS_SEALED)
    try:
        assert code_of(check_segment, fd, offset, length) == "ERR_SEGMENT_BOUNDS"
    finally:
        os.close(fd)


def test_bounds_exact_fit_ok():
    fd = memfd_with(SEALS_SEALED)
    try:
        assert check_segment(fd, 4088, 8) == 4096
    finally:
        os.close(fd)


def test_too_large():
    fd = memfd_with(SEALS_SEALED)
    try:
        assert code_of(check_segment, fd, 0, 1000, max_message_bytes=999) == "ERR_TOO_LARGE"
        assert check_segment(fd, 0, 1000, max_message_bytes=1000) == 4096
    finally:
        os.close(fd)


def test_check_order_seals_before_bounds():
    fd = memfd_with(0)
    try:
        # unsealed AND out of bounds: the seal check (step 3) comes first
        assert code_of(check_segment, fd, 3, 0) == "ERR_SEGMENT_UNSEALED"
    finally:
        os.close(fd)


def test_segment_close_and_seal_with_mapping_is_busy():
    with Segment.create(4096) as seg:
        m = seg.map_writable()
        with pytest.raises(ArrowShmError) as e:
            seg.seal()
        assert e.value.code == "ERR_SYSCALL" and e.value.syscall == "fcntl(F_ADD_SEALS)"
        m.close()
        seg.seal()
    with pytest.raises(ArrowShmError) as e:
        seg.fd
    assert e.value.code == "ERR_CLOSED"


def test_readonly_mapping_cannot_be_written():
    seg, n = write_table_segment(TABLE)
    with seg:
        m = map_readonly(seg.fd, n)
        with pytest.raises(TypeError):
            m[0:1] = b"x"
        m.close()
