"""Born in shared memory (builder.py): columns filled in place in a segment, sent with no copy."""

import gc
import os
import threading

import numpy as np
import pyarrow as pa
import pytest

from arrow_shm import ArrowShmError, connect, listen

from conftest import cli, spawn_listening

N = 1000


def build(builder):
    """An int64, a utf8 and a list<int32> column, every buffer filled in place with numpy."""
    ids = builder.buffer(8 * N)
    np.frombuffer(ids, np.int64)[:] = np.arange(N)
    offsets, data = builder.buffer(4 * (N + 1)), builder.buffer(3 * N)
    np.frombuffer(offsets, np.int32)[:] = np.arange(N + 1) * 3
    np.frombuffer(data, np.uint8)[:] = np.frombuffer(b"abc" * N, np.uint8)
    list_offsets, values = builder.buffer(4 * (N + 1)), builder.buffer(4 * 2 * N)
    np.frombuffer(list_offsets, np.int32)[:] = np.arange(N + 1) * 2
    np.frombuffer(values, np.int32)[:] = np.arange(2 * N)
    values_array = pa.Array.from_buffers(pa.int32(), 2 * N, [None, values])
    return pa.record_batch(
        [
            pa.Array.from_buffers(pa.int64(), N, [None, ids]),
            pa.Array.from_buffers(pa.string(), N, [None, offsets, data]),
            pa.ListArray.from_buffers(pa.list_(pa.int32()), N, [None, list_offsets], children=[values_array]),
        ],
        names=["id", "s", "l"],
    )


def expected():
    return pa.table({"id": pa.array(range(N), pa.int64()), "s": ["abc"] * N, "l": [[2 * i, 2 * i + 1] for i in range(N)]}, schema=pa.schema([("id", pa.int64()), ("s", pa.string()), ("l", pa.list_(pa.int32()))]))


def test_a_batch_born_in_the_segment_reaches_another_process(sock_path, tmp_path):
    out = tmp_path / "born.arrows"  # --count 1: --out is the file
    recv = spawn_listening(cli("recv", "--socket", sock_path, "--count", "1", "--out", str(out), "--timeout-ms", "20000"))
    with connect(sock_path, timeout=20) as ch:
        builder = ch.allocate(1 << 20)
        batch = build(builder)
        ch_id = builder.send(batch, {"name": "born"}, timeout=20)
        assert ch_id > 0
        # the application's arrays still read (the same pages, now mapped privately)
        assert batch.column(1)[7].as_py() == "abc" and batch.column(0)[5].as_py() == 5
        # and a write after sending neither faults nor reaches the sealed bytes the receiver has
        np.frombuffer(batch.column(0).buffers()[1], np.int64)[5] = -1
        assert batch.column(0)[5].as_py() == -1
    assert recv.wait(20) == 0, recv.stderr.read()
    got = pa.ipc.open_stream(out.read_bytes()).read_all()
    assert got.equals(expected())


def test_the_stream_ends_at_the_body_written_in_place(sock_path):
    with listen(sock_path) as lst:
        box = {}

        def receive():
            with lst.accept(timeout=10) as ch, ch.receive(timeout=10) as m:
                box["table"], box["offset"], box["length"] = m.table, m.ipc_offset, m.ipc_length
                start, size = m.mapping_range()
                box["in_mapping"] = all(
                    start <= b.address < start + size for c in m.table.columns for ch_ in c.chunks for b in ch_.buffers() if b is not None and b.size
                )

        t = threading.Thread(target=receive)
        t.start()
        with connect(sock_path, timeout=10) as ch:
            builder = ch.allocate(1 << 20, header_bytes=4096)
            batch = build(builder)
            builder.send(batch, timeout=10)
        t.join(10)
    assert box["table"].equals(expected()) and box["in_mapping"]
    assert box["offset"] % 8 == 0 and box["offset"] < 4096  # metadata in front of the body at 4096


def test_what_cannot_be_sent_in_place_is_refused(sock_path):
    with listen(sock_path) as lst:
        box = {}

        def receive():
            with lst.accept(timeout=10) as server, server.receive(timeout=10) as m:
                box["rows"] = m.table.num_rows

        t = threading.Thread(target=receive)
        t.start()
        with connect(sock_path, timeout=10) as ch:
            builder = ch.allocate(4096)
            with pytest.raises(ArrowShmError) as e:
                builder.buffer(8192)
            assert e.value.code == "ERR_INVALID_ARGUMENT"
            inside = builder.buffer(8 * 10)
            cases = [
                pa.record_batch([pa.array(range(10))], ["not in the segment"]),
                pa.record_batch([pa.Array.from_buffers(pa.int64(), 10, [None, inside]).slice(1)], ["sliced"]),
                pa.record_batch([pa.array(["x"] * 10).dictionary_encode()], ["dictionary"]),
            ]
            for batch in cases:
                with pytest.raises(ArrowShmError) as e:
                    builder.send(batch, timeout=5)
                assert e.value.code == "ERR_INVALID_ARGUMENT", batch.schema
            builder.send(pa.record_batch([pa.Array.from_buffers(pa.int64(), 10, [None, inside])], ["ok"]), timeout=5)
            with pytest.raises(ArrowShmError) as e:
                builder.send(pa.record_batch([pa.Array.from_buffers(pa.int64(), 10, [None, inside])], ["ok"]), timeout=5)
            assert e.value.code == "ERR_CLOSED"  # one send per builder
            t.join(10)
    assert box["rows"] == 10


def _built_maps():
    with open("/proc/self/maps") as f:
        return [line for line in f if "arrow-shm-built" in line]


def _built_fds():
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "arrow-shm-built" in os.readlink(f"/proc/self/fd/{fd}"):
                out.append(fd)
        except OSError:
            pass
    return out


def test_the_mapping_lives_as_long_as_the_arrays_and_no_fd_outlives_the_send(sock_path):
    with listen(sock_path) as lst:
        def receive():
            with lst.accept(timeout=10) as server:
                server.receive(timeout=10).close()

        t = threading.Thread(target=receive)
        t.start()
        with connect(sock_path, timeout=10) as ch:
            builder = ch.allocate(1 << 20)
            batch = build(builder)
            builder.send(batch, timeout=10)
            t.join(10)
            assert not _built_fds()
            del builder
            gc.collect()
            assert _built_maps()  # the arrays still point into it
            assert batch.column(0)[N - 1].as_py() == N - 1
            del batch
            gc.collect()
            assert not _built_maps()
            unsent = ch.allocate(4096)
            assert len(_built_fds()) == 1
            unsent.close()
            assert not _built_fds()


def test_a_seal_the_kernel_refuses_with_ebusy_sends_a_sealed_copy_instead(sock_path, monkeypatch):
    import errno

    from arrow_shm import segment as segment_module
    from arrow_shm.errors import ERR_SYSCALL

    real_seal = segment_module.Segment.seal
    calls = []

    def busy_once(self, *args):
        calls.append(self)
        if len(calls) == 1:  # the built segment: as F_SEAL_WRITE fails while pages are still referenced
            raise ArrowShmError(ERR_SYSCALL, "fcntl(F_ADD_SEALS) failed: Device or resource busy", errno=errno.EBUSY, syscall="fcntl(F_ADD_SEALS)")
        return real_seal(self, *args)

    monkeypatch.setattr(segment_module.Segment, "seal", busy_once)
    with listen(sock_path) as lst:
        box = {}

        def receive():
            with lst.accept(timeout=10) as ch, ch.receive(timeout=10) as m:
                box["table"], box["metadata"] = m.table, m.metadata

        t = threading.Thread(target=receive)
        t.start()
        with connect(sock_path, timeout=10) as ch:
            builder = ch.allocate(1 << 20)
            builder.send(build(builder), {"name": "copied"}, timeout=10)
        t.join(10)
    assert len(calls) == 2  # the built segment (refused), then its sealed copy
    assert box["table"].equals(expected()) and box["metadata"]["name"] == "copied"
