"""Inline tables (PROTOCOL.md §5.3): small IPC streams inside the TABLE frame, both ways, and
hostile inline frames from a hand-driven raw peer."""

import gc
import shutil
import socket
import struct
import subprocess
import threading

import pyarrow as pa
import pytest

from arrow_shm import ArrowShmError, connect, listen
from arrow_shm.channel import Channel
from arrow_shm.frame import Flags, Frame, Kind, encode_frame, inline_room
from arrow_shm.segment import write_table_segment

from conftest import REPO, open_fds, send_fd, spawn_listening
from test_channel import accept_raw, pair

SMALL = pa.table({"id": pa.array(range(100), pa.int64()), "s": [f"row{i}" for i in range(100)]})
BIG = pa.table({"id": pa.array(range(20_000), pa.int64())})  # 160 KB: never fits in a frame


def stream_bytes(table):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def echo_once(ch, box):
    """Receive one table on ``ch`` and record whether it came inline, in a thread."""

    def run():
        with ch.receive(timeout=5) as m:
            box.append((m.inline, m.table, m.ipc_bytes.address % 8, dict(m.metadata)))

    t = threading.Thread(target=run)
    t.start()
    return t


def test_inline_both_ways_and_segments_for_big_tables(sock_path):
    lst, server, client = pair(sock_path)
    with lst, server, client:
        assert "inline" in server.peer_capabilities and "inline" in client.peer_capabilities
        for sender, receiver in ((client, server), (server, client)):
            for data, inline in ((SMALL, True), (stream_bytes(SMALL), True), ([SMALL.to_batches()[0]], True), (BIG, False)):
                box = []
                t = echo_once(receiver, box)
                sender.send(data, {"k": "v"}, timeout=5)
                t.join()
                got_inline, table, misalign, meta = box[0]
                assert got_inline is inline and misalign == 0 and meta == {"k": "v"}
                assert table.equals(BIG if data is BIG else SMALL)


def test_inline_request_and_response(sock_path):
    lst, server, client = pair(sock_path)
    with lst, server, client:

        def serve():
            with server.receive(timeout=5) as req:
                assert req.inline and req.is_request
                req.respond(req.table.slice(0, 10))

        t = threading.Thread(target=serve)
        t.start()
        with client.request(SMALL, timeout=5) as resp:
            assert resp.inline and resp.is_response and resp.table.equals(SMALL.slice(0, 10))
        t.join()


def test_max_inline_bytes_zero_and_a_stream_too_big_for_its_metadata(sock_path):
    with listen(sock_path) as lst:
        box = {}

        def accept():
            box["ch"] = lst.accept(timeout=5)

        t = threading.Thread(target=accept)
        t.start()
        client = connect(sock_path, timeout=5, max_inline_bytes=0)
        t.join()
        server = box["ch"]
        with server, client:
            got = []
            r = echo_once(server, got)
            client.send(SMALL, timeout=5)
            r.join()
            assert got[0][0] is False  # max_inline_bytes=0: always a segment
            # A stream that would fit alone but not with its metadata takes a segment.
            meta = {"pad": "x" * 64_000}
            data = stream_bytes(SMALL)
            assert len(data) > inline_room(meta)
            got = []
            r = echo_once(client, got)
            server.send(data, meta, timeout=5)
            r.join()
            assert got[0][0] is False and got[0][1].equals(SMALL)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, pytest.raises(ArrowShmError) as e:
        Channel(a, listener_side=False, max_inline_bytes=-1)
    assert e.value.code == "ERR_INVALID_ARGUMENT"


def inline_frame(data, *, flags=Flags.INLINE, metadata=None):
    return Frame(kind=Kind.TABLE, flags=flags, inline=data, metadata=metadata or {})


def patched(frame, message_id, **fields):
    """``frame`` encoded with header fields overwritten (offsets of PROTOCOL.md §3)."""
    frame.message_id = message_id
    out = bytearray(encode_frame(frame))
    where = {"kind": ("<B", 6), "flags": ("<B", 7), "ipc_offset": ("<Q", 32), "ipc_length": ("<Q", 40)}
    for name, value in fields.items():
        fmt, off = where[name]
        struct.pack_into(fmt, out, off, value)
    return bytes(out)


def test_raw_inline_table_is_received_and_acked(sock_path):
    with listen(sock_path) as lst:
        server, raw = accept_raw(lst)
        with server:
            good = raw.send(inline_frame(stream_bytes(SMALL), metadata={"a": "b"}))
            with server.receive(timeout=5) as m:
                assert m.inline and m.table.equals(SMALL) and m.metadata == {"a": "b"}
            f = raw.recv()
            assert f.kind == Kind.ACK and f.correlation_id == good
        raw.close()


@pytest.mark.parametrize("case", ["with_fd", "fd_count", "leased", "too_large", "bad_ipc"])
def test_refused_inline_table_is_a_message_error_only(sock_path, case):
    """§5.3: INLINE with fds or LEASED (and §5.1 step 5/7 failures) answer ERROR for that
    message, close the fds; the channel goes on."""
    with listen(sock_path) as lst:
        server, raw = accept_raw(lst, max_message_bytes=1000)
        small = stream_bytes(SMALL.slice(0, 5))
        assert len(small) <= 1000 < len(stream_bytes(SMALL))
        seg, _ = write_table_segment(SMALL)
        fds = open_fds()
        if case == "with_fd":
            bad = raw.send(inline_frame(small), [seg.fd])
        elif case == "fd_count":
            f = inline_frame(small)
            f.fd_count = 1
            bad = raw.send(f)
        elif case == "leased":
            bad = raw.send(inline_frame(small, flags=Flags.INLINE | Flags.LEASED))
        elif case == "too_large":
            bad = raw.send(inline_frame(stream_bytes(SMALL)))
        else:
            bad = raw.send(inline_frame(b"\xff" * 64))
        with pytest.raises(ArrowShmError) as e:
            server.receive(timeout=5)
        want = {"too_large": "ERR_TOO_LARGE", "bad_ipc": e.value.code}.get(case, "ERR_PROTOCOL")
        assert e.value.code == want and e.value.code != "ERR_PROTOCOL" if case == "bad_ipc" else e.value.code == want
        f = raw.recv()
        assert f.kind == Kind.ERROR and f.correlation_id == bad and f.metadata["code"] == e.value.code
        good = raw.send(inline_frame(small))
        with server.receive(timeout=5) as m:
            assert m.inline and m.table.equals(SMALL.slice(0, 5))
        f = raw.recv()
        assert f.kind == Kind.ACK and f.correlation_id == good
        seg.close()
        gc.collect()
        assert open_fds() <= fds  # the fd attached to the refused frame was closed
        server.close()
        raw.close()


@pytest.mark.parametrize("case", ["offset_low", "offset_high", "short", "zero_length", "on_ack"])
def test_misframed_inline_is_fatal(sock_path, case):
    """§5.3: a stream not at align8(64 + metadata_length), not ending the frame, or INLINE on
    another kind: fatal ERR_PROTOCOL."""
    with listen(sock_path) as lst:
        server, raw = accept_raw(lst)
        data = stream_bytes(SMALL)
        frame = inline_frame(data, metadata={"abc": "d"})  # 4+4+3+4+1 = 16 bytes: stream at 80
        mid = raw.next_id
        if case == "offset_low":
            wire = patched(frame, mid, ipc_offset=72, ipc_length=len(data) + 8)
        elif case == "offset_high":
            wire = patched(frame, mid, ipc_offset=88, ipc_length=len(data) - 8)
        elif case == "short":
            wire = patched(frame, mid, ipc_length=len(data) - 8)
        elif case == "zero_length":
            wire = patched(Frame(kind=Kind.TABLE, flags=Flags.INLINE), mid, ipc_offset=64, ipc_length=0)
        else:
            wire = patched(Frame(kind=Kind.ACK, correlation_id=1), mid, flags=int(Flags.INLINE))
        raw.next_id += 1
        send_fd(raw.sock, wire, [])
        with pytest.raises(ArrowShmError) as e:
            server.receive(timeout=5)
        assert e.value.code == "ERR_PROTOCOL"
        f = raw.recv()
        assert f.kind == Kind.ERROR and f.correlation_id == 0 and f.metadata["code"] == "ERR_PROTOCOL"
        assert raw.recv() is None  # closed
        server.close()
        raw.close()


def test_no_fd_leaks_over_many_inline_sends(sock_path):
    lst, server, client = pair(sock_path)
    with lst, server, client:
        fds = open_fds()
        for _ in range(50):
            box = []
            t = echo_once(server, box)
            client.send(SMALL, timeout=5)
            t.join()
            assert box[0][0] is True
        gc.collect()
        assert open_fds() <= fds


NODE = shutil.which("node")
NODE_CLI = REPO / "dist" / "src" / "cli" / "main.js"
needs_node = pytest.mark.skipif(NODE is None or not NODE_CLI.exists(), reason="needs node and the built Node package (npx tsc -p .)")


@needs_node
def test_node_cli_sends_inline_to_python(sock_path, tmp_path):
    """`node main.js send` (a real Node process) → this listener: the table arrives inline."""
    path = tmp_path / "small.arrows"
    path.write_bytes(stream_bytes(SMALL))
    with listen(sock_path) as lst:
        proc = subprocess.Popen([NODE, str(NODE_CLI), "send", "--socket", sock_path, "--timeout-ms", "20000", str(path)], stderr=subprocess.PIPE)
        with lst.accept(timeout=20) as ch:
            with ch.receive(timeout=20) as m:
                assert m.inline and m.table.equals(SMALL)
        assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""


@needs_node
def test_python_sends_inline_to_node_cli(sock_path, tmp_path):
    """This connector → `node main.js recv --out FILE`: Node listed `inline`, the bytes arrive equal."""
    out = tmp_path / "got.arrows"
    proc = spawn_listening([NODE, str(NODE_CLI), "recv", "--socket", sock_path, "--out", str(out), "--timeout-ms", "20000"])
    with connect(sock_path, timeout=20) as ch:
        assert "inline" in ch.peer_capabilities
        ch.send(stream_bytes(SMALL), timeout=20)
    assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
    assert out.read_bytes() == stream_bytes(SMALL)
