"""Channel behaviour against our own peer and against a hand-driven raw peer."""

import gc
import os
import socket
import threading

import pyarrow as pa
import pytest

from arrow_shm import ArrowShmError, connect, listen
from arrow_shm.frame import Flags, Frame, Kind, decode_frame, encode_frame
from arrow_shm.segment import SEALS_LEASED, write_table_segment

from conftest import map_count, open_fds, recv_frame, send_fd

TABLE = pa.table({"id": pa.array(range(10_000), pa.int64()), "s": [f"row{i}" for i in range(10_000)]})


def hello(min_v="1", max_v="1", caps="lease"):
    return encode_frame(
        Frame(
            kind=Kind.HELLO,
            message_id=1,
            metadata={"min_version": min_v, "max_version": max_v, "capabilities": caps, "implementation": "raw", "pid": "1"},
        )
    )


class RawConnector:
    """A hand-driven connector: HELLO, then whatever the test sends."""

    def __init__(self, path, do_hello=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(path)
        self.next_id = 1
        if do_hello:
            self.send(Frame(kind=Kind.HELLO, metadata={"min_version": "1", "max_version": "1", "capabilities": "", "implementation": "raw", "pid": "1"}))
            self.welcome = decode_frame(recv_frame(self.sock))
            assert self.welcome.kind == Kind.WELCOME

    def send(self, frame, fds=()):
        frame.message_id = self.next_id
        self.next_id += 1
        frame.fd_count = frame.fd_count if frame.fd_count else len(fds)
        send_fd(self.sock, encode_frame(frame), list(fds))
        return frame.message_id

    def send_table(self, seg_fd, length, offset=0, flags=0, fd_count=1):
        f = Frame(kind=Kind.TABLE, flags=flags, ipc_offset=offset, ipc_length=length, fd_count=fd_count)
        return self.send(f, [seg_fd] if seg_fd is not None else [])

    def recv(self):
        data = recv_frame(self.sock)
        return None if data is None else decode_frame(data)

    def close(self):
        self.sock.close()


def accept_in_thread(lst, **kw):
    box = {}

    def run():
        try:
            box["ch"] = lst.accept(timeout=5, **kw)
        except ArrowShmError as e:
            box["err"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, box


def accept_raw(lst, **kw):
    """A RawConnector connected to ``lst``, and the channel the listener accepted from it."""
    t, box = accept_in_thread(lst, **kw)
    raw = RawConnector(lst.address)
    t.join()
    return box.get("ch"), raw


def pair(path, **kw):
    lst = listen(path, **kw)
    t, box = accept_in_thread(lst)
    client = connect(path, timeout=5)
    t.join()
    return lst, box["ch"], client


def test_listener_socket_mode_and_cleanup(sock_path):
    with open(sock_path, "w"):
        pass
    with pytest.raises(ArrowShmError) as e:
        listen(sock_path)  # a regular file at the path is not stale socket: refuse
    assert e.value.code == "ERR_INVALID_ARGUMENT"
    os.unlink(sock_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(sock_path)
    stale.close()
    with listen(sock_path):
        assert oct(os.stat(sock_path).st_mode & 0o777) == "0o600"
    assert not os.path.exists(sock_path)


def test_abstract_address():
    name = f"@arrow-shm-test-{os.getpid()}"
    lst, server, client = pair(name)
    with lst, server, client:
        t = threading.Thread(target=lambda: client.send(TABLE, timeout=5))
        t.start()
        with server.receive(timeout=5) as m:
            assert m.table.equals(TABLE)
        t.join()


def test_send_receive_both_directions_metadata_and_handshake_info(sock_path):
    lst, server, client = pair(sock_path)
    with lst, server, client:
        assert client.peer_capabilities == {"lease", "stream", "inline"} and server.peer_capabilities == {"lease", "stream", "inline"}
        assert client.peer_max_message_bytes == server.max_message_bytes
        assert client.peer_pid == os.getpid() and client.peer_uid == os.geteuid()
        t = threading.Thread(target=lambda: client.send(TABLE, {"name": "symbols"}, timeout=5))
        t.start()
        m = server.receive(timeout=5)
        t.join()
        assert m.metadata == {"name": "symbols"} and m.message_id == 2  # HELLO was 1
        assert m.table.equals(TABLE)
        m.close()
        t = threading.Thread(target=lambda: server.send(TABLE.slice(0, 5), timeout=5))
        t.start()
        with client.receive(timeout=5) as m2:
            assert m2.table.equals(TABLE.slice(0, 5))
        t.join()


def test_zero_copy_columns_live_in_the_mapping(sock_path):
    lst, server, client = pair(sock_path)
    with lst, server, client:
        t = threading.Thread(target=lambda: client.send(TABLE, timeout=5))
        t.start()
        m = server.receive(timeout=5)
        t.join()
        start, size = m.mapping_range()
        # the mapping is the memfd (it shows in /proc/self/maps as memfd:arrow-shm, read-only shared)
        with open("/proc/self/maps") as f:
            lines = [l for l in f if int(l.split("-")[0], 16) == start]
        assert lines and "memfd:arrow-shm" in lines[0] and lines[0].split()[1].startswith("r--s")
        assert m.ipc_bytes.address == start
        addresses = [
            buf.address
            for col in m.table.columns
            for chunk in col.chunks
            for buf in chunk.buffers()
            if buf is not None and buf.size > 0
        ]
        assert addresses and all(start <= a < start + size for a in addresses)
        m.close()


def memfd_maps():
    """Read-only memfd mappings: the receiver's (a sender's spare segment is mapped read-write)."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:" in line and line.split()[1].startswith("r--"))


def test_table_survives_message_close_and_mapping_goes_with_it(sock_path):
    lst, server, client = pair(sock_path)
    with lst, server, client:
        gc.collect()
        before = memfd_maps()
        t = threading.Thread(target=lambda: client.send(TABLE, timeout=5))
        t.start()
        m = server.receive(timeout=5)
        t.join()
        table = m.table
        m.close()
        with pytest.raises(ArrowShmError) as e:
            m.table
        assert e.value.code == "ERR_CLOSED"
        assert table.equals(TABLE)  # still readable: the buffers keep the mapping alive
        assert memfd_maps() == before + 1
        del table
        gc.collect()
        assert memfd_maps() == before


def test_no_fd_or_mapping_leaks(sock_path):
    rounds = 40
    lst, server, client = pair(sock_path)
    with lst, server, client:
        # one sender thread for every round, so thread stacks do not blur the mapping count
        go = [threading.Semaphore(0) for _ in range(3)]

        def sender():
            for _ in range(rounds):
                go[0].acquire()
                client.send(TABLE, timeout=5)
                go[1].release()
            go[2].acquire()  # stay alive until the counts are taken

        th = threading.Thread(target=sender)
        th.start()

        def one_round():
            go[0].release()
            with server.receive(timeout=5) as m:
                assert m.table.num_rows == TABLE.num_rows
            go[1].acquire()

        for _ in range(5):  # warm-up (pyarrow pools, lazily created threads)
            one_round()
        gc.collect()
        fds, maps, memfds = open_fds(), map_count(), memfd_maps()
        for _ in range(rounds - 5):
            one_round()
        gc.collect()
        after = open_fds(), map_count(), memfd_maps()
        go[2].release()
        th.join()
        assert after[0] == fds
        assert after[2] == memfds == 0
        # all mappings too, with a margin for thread stacks (the spare pool's threads come and go)
        assert abs(after[1] - maps) <= 4, (maps, after[1])


def test_message_level_errors_keep_the_connection(sock_path):
    with listen(sock_path) as lst:
        server, raw = accept_raw(lst)
        fds_before = open_fds()
        # 1. unsealed
        fd = os.memfd_create("x", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 4096)
        mid = raw.send_table(fd, 100)
        os.close(fd)
        with pytest.raises(ArrowShmError) as e:
            server.receive(timeout=5)
        assert e.value.code == "ERR_SEGMENT_UNSEALED"
        err = raw.recv()
        assert err.kind == Kind.ERROR and err.correlation_id == mid and err.metadata["code"] == "ERR_SEGMENT_UNSEALED"
        # 2. not a memfd (pipe)
        r, w = os.pipe()
        mid = raw.send_table(r, 100)
        os.close(r)
        os.close(w)
        with pytest.raises(ArrowShmError) as e:
            server.receive(timeout=5)
        assert e.value.code == "ERR_SEGMENT_INVALID"
        assert raw.recv().metadata["code"] == "ERR_SEGMENT_INVALID"
        # 3. bounds, 4. IPC garbage (sealed, in bounds)
        seg, n = write_table_segment(b"\xff\xff\xff\xff\x10\x00\x00\x00" + b"\x07" * 56)
        mid = raw.send_table(seg.fd, n + 8)
        with pytest.raises(ArrowShmError) as e:
            server.receive(timeout=5)
        assert e.value.code == "ERR_SEGMENT_BOUNDS"
        assert raw.recv().metadata["code"] == "ERR_SEGMENT_BOUNDS"
        mid = raw.send_table(seg.fd, n)
        seg.close()
        with pytest.raises(ArrowShmError) as e:
            server.receive(timeout=5)
        assert e.value.code == "ERR_IPC_INVALID"
        f = raw.recv()
        assert f.metadata["code"] == "ERR_IPC_INVALID" and f.correlation_id == mid
        # 5. leased segment with the lease seal set is accepted, ACKed, and RELEASEd on close
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, TABLE.schema) as wr:
            wr.write_table(TABLE)
        seg, n = write_table_segment(sink.getvalue(), seal=False)
        seg.seal(SEALS_LEASED)
        mid = raw.send_table(seg.fd, n, flags=Flags.LEASED)
        seg.close()
        m = server.receive(timeout=5)
        assert m.leased and m.table.equals(TABLE)
        ack = raw.recv()
        assert ack.kind == Kind.ACK and ack.correlation_id == mid
        m.close()
        rel = raw.recv()
        assert rel.kind == Kind.RELEASE and rel.correlation_id == mid
        gc.collect()
        assert open_fds() == fds_before
        raw.close()
        with pytest.raises(ArrowShmError) as e:
            server.receive(timeout=5)
        assert e.value.code == "ERR_PEER_CLOSED"
        server.close()


def test_allow_unsealed_accepts(sock_path):
    with listen(sock_path, allow_unsealed=True) as lst:
        server, raw = accept_raw(lst)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, TABLE.schema) as wr:
            wr.write_table(TABLE)
        seg, n = write_table_segment(sink.getvalue(), seal=False)
        raw.send_table(seg.fd, n)
        seg.close()
        with server.receive(timeout=5) as m:
            assert m.table.equals(TABLE)
        assert raw.recv().kind == Kind.ACK
        raw.close()
        server.close()


@pytest.mark.parametrize("case", ["fd_on_ack", "bad_magic", "version", "hello_again"])
def test_frame_level_errors_close_the_connection(sock_path, case):
    with listen(sock_path) as lst:
        server, raw = accept_raw(lst)
        seg, n = write_table_segment(TABLE)
        expected = "ERR_PROTOCOL"
        if case == "fd_on_ack":
            raw.send(Frame(kind=Kind.ACK, correlation_id=1, fd_count=1), [seg.fd])
        elif case == "bad_magic":
            send_fd(raw.sock, b"XXXX" + encode_frame(Frame(kind=Kind.ACK))[4:], [])
        elif case == "version":
            send_fd(raw.sock, encode_frame(Frame(kind=Kind.ACK, version=2)), [])
            expected = "ERR_PROTOCOL_VERSION"
        elif case == "hello_again":
            send_fd(raw.sock, hello(), [])
        seg.close()
        fds = open_fds()
        with pytest.raises(ArrowShmError) as e:
            server.receive(timeout=5)
        assert e.value.code == expected
        f = raw.recv()
        assert f.kind == Kind.ERROR and f.correlation_id == 0 and f.metadata["code"] == expected
        assert raw.recv() is None  # closed
        assert server.closed
        gc.collect()
        assert open_fds() <= fds  # received fds were closed (and the socket)
        raw.close()


@pytest.mark.parametrize("case", ["no_fd", "two_fds", "fd_count_mismatch"])
def test_wrong_fd_count_on_a_table_refuses_that_table_only(sock_path, case):
    """PROTOCOL.md §5.1 step 1: a message-level error; the connection keeps serving."""
    with listen(sock_path) as lst:
        server, raw = accept_raw(lst)
        seg, n = write_table_segment(TABLE)
        fds = open_fds()
        if case == "no_fd":
            bad = raw.send_table(None, n, fd_count=1)
        elif case == "two_fds":
            bad = raw.send(Frame(kind=Kind.TABLE, ipc_length=n, fd_count=1), [seg.fd, seg.fd])
        else:
            bad = raw.send(Frame(kind=Kind.TABLE, ipc_length=n, fd_count=2), [seg.fd])
        with pytest.raises(ArrowShmError) as e:
            server.receive(timeout=5)
        assert e.value.code == "ERR_PROTOCOL"
        f = raw.recv()
        assert f.kind == Kind.ERROR and f.correlation_id == bad and f.metadata["code"] == "ERR_PROTOCOL"
        good = raw.send_table(seg.fd, n)
        with server.receive(timeout=5) as message:
            assert message.table.equals(TABLE)
        f = raw.recv()
        assert f.kind == Kind.ACK and f.correlation_id == good
        seg.close()
        gc.collect()
        assert open_fds() <= fds  # every fd received with the refused frames was closed
        raw.close()


def test_wrong_protocol_version_in_hello(sock_path):
    with listen(sock_path) as lst:
        t, box = accept_in_thread(lst)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(sock_path)
        send_fd(s, hello("2", "3"), [])
        f = decode_frame(recv_frame(s))
        assert f.kind == Kind.ERROR and f.metadata["code"] == "ERR_PROTOCOL_VERSION" and f.version == 1
        assert recv_frame(s) is None
        t.join()
        assert box["err"].code == "ERR_PROTOCOL_VERSION"
        s.close()


def test_first_frame_not_hello(sock_path):
    with listen(sock_path) as lst:
        t, box = accept_in_thread(lst)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(sock_path)
        send_fd(s, encode_frame(Frame(kind=Kind.ACK, message_id=1)), [])
        f = decode_frame(recv_frame(s))
        assert f.metadata["code"] == "ERR_PROTOCOL"
        t.join()
        assert box["err"].code == "ERR_PROTOCOL"
        s.close()


def test_connector_rejects_other_version_in_welcome(sock_path):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(sock_path)
    srv.listen(1)
    box = {}

    def run():
        try:
            connect(sock_path, timeout=5)
        except ArrowShmError as e:
            box["err"] = e

    t = threading.Thread(target=run)
    t.start()
    conn, _ = srv.accept()
    h = decode_frame(recv_frame(conn))
    assert h.kind == Kind.HELLO and h.metadata["min_version"] == "1" and h.metadata["max_version"] == "1"
    assert "lease" in h.metadata["capabilities"].split(",")
    send_fd(conn, encode_frame(Frame(kind=Kind.WELCOME, version=2, message_id=1, metadata={"version": "2"})), [])
    t.join()
    assert box["err"].code == "ERR_PROTOCOL_VERSION"
    conn.close()
    srv.close()


def test_connector_reports_listener_error(sock_path):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(sock_path)
    srv.listen(1)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", _try(lambda: connect(sock_path, timeout=5))))
    t.start()
    conn, _ = srv.accept()
    recv_frame(conn)
    send_fd(conn, encode_frame(Frame(kind=Kind.ERROR, message_id=1, metadata={"code": "ERR_PEER_CREDENTIALS", "message": "no"})), [])
    t.join()
    err = box["r"]
    assert isinstance(err, ArrowShmError) and err.code == "ERR_PEER_CREDENTIALS" and err.remote
    conn.close()
    srv.close()


def _try(fn):
    try:
        return fn()
    except ArrowShmError as e:
        return e


def test_credentials_rejected(sock_path):
    with listen(sock_path, allowed_uids={os.geteuid() + 12345}) as lst:
        t, box = accept_in_thread(lst)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(sock_path)
        f = decode_frame(recv_frame(s))
        assert f.kind == Kind.ERROR and f.metadata["code"] == "ERR_PEER_CREDENTIALS"
        t.join()
        assert box["err"].code == "ERR_PEER_CREDENTIALS"
        s.close()
    # and on the connector side
    with listen(sock_path) as lst:
        t, box = accept_in_thread(lst)
        with pytest.raises(ArrowShmError) as e:
            connect(sock_path, timeout=5, allowed_uids={os.geteuid() + 12345})
        assert e.value.code == "ERR_PEER_CREDENTIALS"
        t.join()


def test_peer_closes_mid_message_sender_gets_peer_closed(sock_path):
    """The receiver reads the TABLE frame and hangs up without ACK: send() fails, no hang."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(sock_path)
    srv.listen(1)

    def fake_listener():
        conn, _ = srv.accept()
        recv_frame(conn)  # HELLO
        send_fd(conn, encode_frame(Frame(kind=Kind.WELCOME, message_id=1, metadata={"version": "1", "capabilities": "", "implementation": "raw", "pid": "1", "max_message_bytes": "1000000000"})), [])
        recv_frame(conn)  # the TABLE (its fd closed by recv_frame)
        conn.close()

    t = threading.Thread(target=fake_listener)
    t.start()
    client = connect(sock_path, timeout=5)
    with pytest.raises(ArrowShmError) as e:
        client.send(TABLE, timeout=5)
    assert e.value.code == "ERR_PEER_CLOSED"
    t.join()
    client.close()
    srv.close()


def test_peer_closes_with_table_queued(sock_path):
    """The sender sends a table and hangs up at once: the table is still delivered."""
    with listen(sock_path) as lst:
        server, raw = accept_raw(lst)
        seg, n = write_table_segment(TABLE)
        raw.send_table(seg.fd, n)
        seg.close()
        raw.close()
        with server.receive(timeout=5) as m:
            assert m.table.equals(TABLE)
        assert list(server) == []
        server.close()


def test_too_large_for_peer_is_refused_locally(sock_path):
    lst, server, client = pair(sock_path, max_message_bytes=1000)
    with lst, server, client:
        assert client.peer_max_message_bytes == 1000
        with pytest.raises(ArrowShmError) as e:
            client.send(TABLE, timeout=5)
        assert e.value.code == "ERR_TOO_LARGE" and not e.value.remote


def test_too_large_from_sender_gets_error_frame(sock_path):
    with listen(sock_path, max_message_bytes=1000) as lst:
        server, raw = accept_raw(lst)
        seg, n = write_table_segment(TABLE)
        raw.send_table(seg.fd, n)
        seg.close()
        with pytest.raises(ArrowShmError) as e:
            server.receive(timeout=5)
        assert e.value.code == "ERR_TOO_LARGE"
        assert raw.recv().metadata["code"] == "ERR_TOO_LARGE"
        raw.close()
        server.close()


def test_timeouts(sock_path):
    lst, server, client = pair(sock_path)
    with lst, server, client:
        with pytest.raises(ArrowShmError) as e:
            server.receive(timeout=0.1)
        assert e.value.code == "ERR_TIMEOUT"
        with pytest.raises(ArrowShmError) as e:
            client.request(TABLE, timeout=0.3)  # nobody serves
        assert e.value.code == "ERR_TIMEOUT"
        # the late request still reached the server and was ACKed; the connection works on
        with server.receive(timeout=5) as m:
            assert m.is_request
    with pytest.raises(ArrowShmError) as e:
        listen(sock_path).accept(timeout=0.05)
    assert e.value.code == "ERR_TIMEOUT"


def test_request_response_and_error_response(sock_path):
    lst, server, client = pair(sock_path)

    def handler(msg):
        if msg.metadata.get("fail"):
            raise ValueError("boom")
        return pa.table({"rows": [msg.table.num_rows]}), {"answer": "yes"}

    with lst, server, client:
        t = threading.Thread(target=lambda: server.serve(handler))
        t.start()
        # concurrent requests from several threads
        results = {}

        def ask(k):
            with client.request(TABLE.slice(0, k * 10), timeout=10) as r:
                results[k] = (r.table.column("rows")[0].as_py(), r.metadata, r.is_response)

        threads = [threading.Thread(target=ask, args=(k,)) for k in range(1, 6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert results == {k: (k * 10, {"answer": "yes"}, True) for k in range(1, 6)}
        with pytest.raises(ArrowShmError) as e:
            client.request(TABLE, {"fail": "1"}, timeout=5)
        assert e.value.code == "ERR_REMOTE" and e.value.remote and "boom" in e.value.message
        client.close()
        t.join(5)
        assert not t.is_alive()


def test_use_after_close(sock_path):
    lst, server, client = pair(sock_path)
    lst.close()
    server.close()
    client.close()
    with pytest.raises(ArrowShmError) as e:
        client.send(TABLE)
    assert e.value.code == "ERR_CLOSED"


def test_pending_request_fails_when_responder_hangs_up(sock_path):
    with listen(sock_path) as lst:
        t, box = accept_in_thread(lst)
        client = connect(sock_path, timeout=5)
        t.join()
        server = box["ch"]

        def hang_up_on_request():
            m = server.receive(timeout=5)
            assert m.is_request
            m.close()
            server.close()  # GOODBYE instead of a response

        th = threading.Thread(target=hang_up_on_request)
        th.start()
        with pytest.raises(ArrowShmError) as e:
            client.request(TABLE, timeout=5)
        assert e.value.code == "ERR_PEER_CLOSED"
        th.join()
        client.close()


def test_error_frames_unknown_code_is_remote_and_fatal_code_closes(sock_path):
    with listen(sock_path) as lst:
        t, box = accept_in_thread(lst)
        raw = RawConnector(sock_path)
        t.join()
        server = box["ch"]
        # an ERROR answering one of the server's sends, with a code outside §9
        th = threading.Thread(target=lambda: box.setdefault("send", _try(lambda: server.send(TABLE, timeout=5))))
        th.start()
        f = raw.recv()
        assert f.kind == Kind.TABLE
        raw.send(Frame(kind=Kind.ERROR, correlation_id=f.message_id, metadata={"code": "E_CUSTOM", "message": "nope"}))
        th.join()
        err = box["send"]
        assert err.code == "ERR_REMOTE" and err.remote and "E_CUSTOM" in err.message
        # an ERROR with correlation 0 is fatal: the connection is closed
        raw.send(Frame(kind=Kind.ERROR, metadata={"code": "ERR_PROTOCOL", "message": "bye"}))
        with pytest.raises(ArrowShmError) as e:
            server.receive(timeout=5)
        assert e.value.code == "ERR_PROTOCOL" and e.value.remote
        assert server.closed
        raw.close()


def test_close_from_another_thread_wakes_a_blocked_receive(sock_path):
    lst, server, client = pair(sock_path)
    with lst, client:
        box = {}
        th = threading.Thread(target=lambda: box.setdefault("r", _try(lambda: server.receive())))
        th.start()
        th.join(0.2)
        server.close()
        th.join(5)
        assert not th.is_alive()
        assert box["r"].code in ("ERR_CLOSED", "ERR_PEER_CLOSED")


def test_stream_at_a_nonzero_offset_in_a_larger_segment(sock_path):
    """Receivers must not depend on the writer's layout (PROTOCOL §5.2)."""
    from arrow_shm.segment import Segment

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, TABLE.schema) as wr:
        wr.write_table(TABLE)
    data = sink.getvalue().to_pybytes()
    with listen(sock_path) as lst:
        server, raw = accept_raw(lst)
        with Segment.create(4096 + len(data) + 5000) as seg:
            seg.write_at(4096, data)
            seg.write_at(0, b"\xff" * 4096)  # garbage before the range
            seg.seal()
            raw.send_table(seg.fd, len(data), offset=4096)
        with server.receive(timeout=5) as m:
            assert m.ipc_offset == 4096 and bytes(m.ipc_bytes) == data
            assert m.table.equals(TABLE)
            start, size = m.mapping_range()
            assert size == 4096 + len(data) + 5000
        raw.close()
        server.close()
