"""The Python table store client (PROTOCOL.md §15) against a real Node store process
(`node dist/src/cli/main.js store`), and against a fake store that answers with hostile frames."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import pyarrow as pa
import pytest

from arrow_shm import ArrowShmError, open_store
from arrow_shm.frame import Flags, Frame, Kind, decode_frame, encode_frame
from arrow_shm.handshake import welcome_metadata
from arrow_shm.segment import SEALS_LEASED, write_table_segment
from arrow_shm.store_cli import age

from conftest import GOLD, REPO, cli, gold_streams, send_fd, spawn_listening

NODE = shutil.which("node")
NODE_CLI = REPO / "dist" / "src" / "cli" / "main.js"
NODE_CLIENT = REPO / "dist" / "src" / "store" / "client.js"
needs_node = pytest.mark.skipif(
    NODE is None or not NODE_CLI.exists() or not NODE_CLIENT.exists(), reason="needs node and the built Node package (npx tsc -p .)"
)

TABLE = pa.table({"sym": ["AAPL", "GOOG", "MSFT"] * 100, "px": [float(i) for i in range(300)]})


def leak_state() -> Tuple[set, set]:
    """What is open: (fd -> target) pairs and memfd mappings of this process."""
    gc.collect()
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            pass
    with open("/proc/self/maps") as f:
        maps = {line.split()[0] + " " + line.split()[-1] for line in f if "memfd:" in line}
    return fds, maps


def assert_no_leaks(before: Tuple[set, set]) -> None:
    deadline = time.monotonic() + 3
    while True:
        after = leak_state()
        fds, maps = after[0] - before[0], after[1] - before[1]
        if not fds and not maps or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not fds, f"fds left open: {sorted(fds)}"
    assert not maps, f"mappings left: {sorted(maps)}"


@pytest.fixture
def store() -> Iterator[str]:
    """A Node store process; yields its address and checks it exits cleanly."""
    address = f"@ashm-store-{uuid.uuid4().hex[:12]}"
    proc = spawn_listening([NODE or "node", str(NODE_CLI), "store", "--socket", address])
    try:
        yield address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode in (0, -signal.SIGKILL), err


# A Node client of the same store: put or get every [name, file] of stdin.
NODE_SCRIPT = """
import { readFileSync } from 'node:fs';
const { openStore } = await import(process.argv[1]);
const [, , mode, address] = process.argv;
const files = JSON.parse(readFileSync(0, 'utf8'));
const store = await openStore(address);
try {
  for (const [name, file] of files) {
    const data = readFileSync(file);
    if (mode === 'put') { await store.put(name, new Uint8Array(data), { metadata: { from: 'node' } }); continue; }
    const m = await store.get(name);
    try {
      if (!Buffer.from(m.bytes).equals(data)) throw new Error(`${name}: bytes differ`);
      if (m.metadata.from !== 'python' || m.metadata['arrow-shm.name'] !== name) throw new Error(`${name}: ${JSON.stringify(m.metadata)}`);
    } finally { m.close(); }
  }
} finally { store.close(); }
console.log('ok', files.length);
"""


def node_client(mode: str, address: str, files: List[Tuple[str, str]]) -> None:
    r = subprocess.run(
        [NODE or "node", "--input-type=module", "-e", NODE_SCRIPT, NODE_CLIENT.as_uri(), mode, address],
        input=json.dumps(files).encode(), capture_output=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == f"ok {len(files)}"


# ------------------------------------------------------------------ against the Node store


@needs_node
def test_gold_files_put_and_get_across_python_and_node_byte_for_byte(store):
    streams = gold_streams()
    assert len(streams) > 10
    names = [(str(p.relative_to(GOLD)), str(p)) for p in streams]
    before = leak_state()
    with open_store(store, timeout=10) as client:
        for name, file in names:
            data = Path(file).read_bytes()
            put = client.put(f"py/{name}", data, metadata={"from": "python"})
            assert put.bytes >= len(data) and put.version > 0
            with client.get(f"py/{name}") as message:  # Python -> Python
                assert message.ipc_bytes.to_pybytes() == data, name
                assert message.metadata == {"from": "python", "arrow-shm.name": f"py/{name}", "arrow-shm.version": str(put.version)}
                expected = pa.ipc.open_stream(data).read_all()
                assert message.table.equals(expected), name
                assert put.rows == expected.num_rows
        node_client("get", store, [(f"py/{n}", f) for n, f in names])  # Python -> Node
        node_client("put", store, [(f"node/{n}", f) for n, f in names])  # Node -> Python
        for name, file in names:
            with client.get(f"node/{name}") as message:
                assert message.ipc_bytes.to_pybytes() == Path(file).read_bytes(), name
                assert message.metadata["from"] == "node"
        entries = client.list("node/")
        assert [e.name for e in entries] == sorted(f"node/{n}" for n, _ in names)
        assert all(e.holds == 0 and e.metadata == {"from": "node"} for e in entries)
    assert_no_leaks(before)


@needs_node
def test_get_with_timeout_waits_for_a_put_and_times_out_without_one(store):
    with open_store(store, timeout=10) as reader, open_store(store, timeout=10) as writer:
        got: list = []
        t = threading.Thread(target=lambda: got.append(reader.get("late", timeout_ms=10_000)))
        t.start()
        time.sleep(0.3)
        version = writer.put("late", TABLE).version
        t.join(10)
        with got[0] as message:
            assert message.metadata["arrow-shm.version"] == str(version)
            assert message.table.equals(TABLE)
        start = time.monotonic()
        with pytest.raises(ArrowShmError) as e:
            reader.get("never", timeout_ms=200)
        assert e.value.code == "ERR_TIMEOUT" and e.value.remote
        assert 0.15 < time.monotonic() - start < 3
        with pytest.raises(ArrowShmError) as e:
            reader.get("never")
        assert e.value.code == "ERR_NOT_FOUND"


@needs_node
def test_holds_are_released_on_close_and_tables_outlive_the_client_and_the_store(store):
    before = leak_state()
    with open_store(store, timeout=10) as client:
        client.put("t", TABLE, metadata={"k": "v"})
        message = client.get("t")
        assert [e.holds for e in client.list()] == [1]
        assert client.stats().held_bytes > 0
        message.close()
        assert [e.holds for e in client.list()] == [0]  # RELEASE went out before the list request
        assert client.stats().held_bytes == 0
        kept = client.get("t")
        other = open_store(store, timeout=10)
        assert [e.holds for e in other.list()] == [1]
    # The client closed with a hold: the store drops it; the table stays readable.
    deadline = time.monotonic() + 3
    while other.list()[0].holds and time.monotonic() < deadline:
        time.sleep(0.02)
    assert other.list()[0].holds == 0
    table = kept.table
    os.kill(_store_pid(store), signal.SIGKILL)  # even the store dying leaves the mapping valid
    time.sleep(0.2)
    assert table.equals(TABLE) and kept.ipc_bytes.size > 0
    with pytest.raises(ArrowShmError) as e:
        other.stats()
    assert e.value.code == "ERR_PEER_CLOSED"
    other.close()
    del table
    kept.close()
    assert_no_leaks(before)


def _store_pid(address: str) -> int:
    """The pid of the store listening at ``address`` (its SO_PEERCRED)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect("\0" + address[1:])
        pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return pid
    finally:
        s.close()


def _mapped_inodes() -> List[str]:
    with open("/proc/self/maps") as f:
        return [line.split()[4] for line in f if "memfd:arrow-shm" in line]


@needs_node
def test_concurrent_gets_map_the_one_copy_the_store_holds(store):
    big = pa.table({"x": pa.array(range(1_000_000), pa.int64())})  # 8 MB
    before = leak_state()
    with open_store(store, timeout=10) as client, open_store(store, timeout=10) as other:
        client.put("big", big)
        got: List = []
        errors: List = []

        def get(c) -> None:
            try:
                got.append(c.get("big"))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=get, args=(client if i % 2 else other,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors and len(got) == 8
        inodes = _mapped_inodes()
        assert len(inodes) == 8 and len(set(inodes)) == 1, inodes  # eight mappings of one memfd
        assert all(m.table["x"][999_999].as_py() == 999_999 for m in got)
        assert client.list()[0].holds == 8
        for m in got:
            m.close()
        other.stats()  # its RELEASEs went out before this request: the store has taken them
        assert client.list()[0].holds == 0
    got.clear()
    assert_no_leaks(before)


@needs_node
def test_versions_replace_delete_and_typed_errors(store):
    with open_store(store, timeout=10) as client:
        v1 = client.put("n", TABLE).version
        old = client.get("n")
        with pytest.raises(ArrowShmError) as e:
            client.put("n", TABLE)
        assert e.value.code == "ERR_EXISTS"
        small = TABLE.slice(0, 5)
        v2 = client.put("n", small, replace=True).version
        assert v2 > v1
        with client.get("n") as new:
            assert new.table.num_rows == 5
            with pytest.raises(ArrowShmError) as e:
                new.respond(TABLE)
            assert e.value.code == "ERR_INVALID_ARGUMENT"
        assert old.table.num_rows == TABLE.num_rows  # readers of the old version keep it
        old.close()
        assert client.delete("n") == v2
        for call in (lambda: client.delete("n"), lambda: client.get("n")):
            with pytest.raises(ArrowShmError) as e:
                call()
            assert e.value.code == "ERR_NOT_FOUND"
        for bad in ("", "a b", "x" * 257, "é", None):
            with pytest.raises(ArrowShmError) as e:
                client.put(bad, TABLE)  # type: ignore[arg-type]
            assert e.value.code == "ERR_INVALID_ARGUMENT", bad
        with pytest.raises(ArrowShmError) as e:
            client.put("m", TABLE, metadata={"arrow-shm.name": "x"})
        assert e.value.code == "ERR_INVALID_ARGUMENT"
        with pytest.raises(ArrowShmError) as e:
            client.get("m", timeout_ms=-1)
        assert e.value.code == "ERR_INVALID_ARGUMENT"
        with pytest.raises(ArrowShmError) as e:  # the store's bound: §15.2
            client.put("m", TABLE, metadata={f"k{i}": "v" for i in range(300)})
        assert e.value.code == "ERR_RESOURCE_LIMIT" and e.value.remote
        assert client.stats().entries == 0  # nothing of a refused put is visible


@needs_node
def test_watch_sees_puts_and_deletes_under_its_prefix(store):
    with open_store(store, timeout=10) as client:
        watch = client.watch("a/")
        client.put("b/other", TABLE)
        v = client.put("a/one", TABLE).version
        client.delete("a/one")
        event = watch.next(timeout=5)  # nothing of b/, and nothing from before the watch
        assert event is not None and (event.event, event.name, event.version) == ("put", "a/one", v)
        event = watch.next(timeout=5)
        assert event is not None and (event.event, event.name, event.version, event.bytes) == ("delete", "a/one", v, None)
        with pytest.raises(ArrowShmError) as e:
            watch.next(timeout=0.1)
        assert e.value.code == "ERR_TIMEOUT"
        watch.close()
        assert watch.next() is None and list(watch) == []
        second = client.watch()
    assert list(second) == []  # closing the client ends its watches cleanly


@needs_node
def test_watch_events_in_order(store):
    with open_store(store, timeout=10) as client:
        with client.watch() as watch:
            v = client.put("x", TABLE).version
            client.delete("x")
            events = [watch.next(timeout=5), watch.next(timeout=5)]
        assert [(e.event, e.name, e.version) for e in events] == [("put", "x", v), ("delete", "x", v)]
        assert events[0].bytes and events[0].bytes > 0


@needs_node
def test_cli_put_get_ls_rm_mirror_the_node_cli(store, tmp_path):
    gold = str(gold_streams()[0])
    size_rows = f"{os.path.getsize(gold)}\t{pa.ipc.open_stream(Path(gold).read_bytes()).read_all().num_rows}"
    r = subprocess.run(cli("put", "--store", store, "--meta", "k=v", "g/one", gold), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    name, version, size, rows = r.stdout.rstrip("\n").split("\t")
    assert name == "g/one" and version == "version 1" and size.endswith(" bytes") and rows.endswith(" rows")
    again = subprocess.run(cli("put", "--store", store, "g/one", gold), capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.startswith("arrow-shm: ERR_EXISTS: ")
    py_ls = subprocess.run(cli("ls", "--store", store), capture_output=True, text=True)
    node_ls = subprocess.run([NODE or "node", str(NODE_CLI), "ls", "--store", store], capture_output=True, text=True)
    without_age = lambda out: [line.rsplit("\t", 1)[0] for line in out.splitlines()]  # noqa: E731 (a second may pass)
    assert py_ls.returncode == 0 and without_age(py_ls.stdout) == without_age(node_ls.stdout) == [f"g/one\t{size_rows}"]
    assert re.fullmatch(rf"g/one\t{size_rows}\t[01]s\n", py_ls.stdout), py_ls.stdout
    out = tmp_path / "got.arrows"
    got = subprocess.run(cli("get", "--store", store, "g/one", "--out", str(out)), capture_output=True, text=True)
    assert got.returncode == 0 and got.stdout == "" and out.read_bytes() == Path(gold).read_bytes()
    printed = subprocess.run(cli("get", "--store", store, "g/one"), capture_output=True, text=True)
    assert printed.stdout.startswith("== table 0: ") and "metadata: k=v, arrow-shm.name=g/one, arrow-shm.version=1" in printed.stdout
    assert subprocess.run(cli("rm", "--store", store, "g/one")).returncode == 0
    missing = subprocess.run(cli("rm", "--store", store, "g/one"), capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("arrow-shm: ERR_NOT_FOUND: ")
    for args in (("get", "g/one"), ("put", "--store", store, "g/two", str(tmp_path / "missing"))):
        usage = subprocess.run(cli(*args), capture_output=True, text=True)
        assert usage.returncode == 2 and usage.stderr.count("\n") == 1, usage.stderr


def test_age_rounds_as_the_node_cli():
    now = 1_000_000_000
    assert [age(now - s * 1000, now) for s in (0, 0.5, 2.5, 119, 120, 150, 7199, 7200, 172799, 172800)] == [
        "0s", "1s", "3s", "119s", "2m", "3m", "120m", "2h", "48h", "2d"
    ]


# ------------------------------------------------------------------ against a hostile fake store

Answer = Callable[[Frame], List[Tuple[Frame, List[int]]]]


class FakeStore:
    """One connection: a store handshake (or ``capabilities``), then ``answer(request)`` for each
    request; frames it sends get consecutive ids; every frame the client sent is in ``received``."""

    def __init__(self, answer: Answer, capabilities: str = "store") -> None:
        self.address = f"@ashm-fake-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind("\0" + self.address[1:])
        self.sock.listen(1)
        self.answer, self.capabilities = answer, capabilities
        self.received: List[Frame] = []
        self.next_id = 1
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def send(self, conn: socket.socket, frame: Frame, fds: List[int]) -> None:
        frame.message_id, self.next_id = self.next_id, self.next_id + 1
        frame.fd_count = frame.fd_count or len(fds)
        try:
            send_fd(conn, encode_frame(frame), fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.next_id = 1
            self._serve_one(conn)

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            hello = decode_frame(conn.recv(65536))
            caps = [self.capabilities] if self.capabilities else []
            self.send(conn, Frame(kind=Kind.WELCOME, correlation_id=hello.message_id, metadata=welcome_metadata(caps, 1 << 30)), [])
            while True:
                try:
                    data, anc, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(64))
                except OSError:
                    return
                for _, _, cdata in anc:
                    for i in range(0, len(cdata) - len(cdata) % 4, 4):
                        os.close(int.from_bytes(cdata[i : i + 4], "little"))
                if not data:
                    return
                frame = decode_frame(data)
                self.received.append(frame)
                if frame.flags & Flags.REQUEST:
                    for out, fds in self.answer(frame):
                        try:
                            self.send(conn, out, fds)
                        except OSError:
                            return

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.sock.close()
        self.thread.join(5)


def sealed(table: pa.Table = TABLE, seals: Optional[int] = None) -> Tuple[int, int]:
    """A memfd holding ``table``'s IPC stream, sealed fully (or with ``seals``, 0: none): (fd, length)."""
    seg, length = write_table_segment(table, seal=False)
    if seals is None:
        seg.seal()
    elif seals:
        seg.seal(seals)
    return seg.detach_fd(), length


def table_answer(request: Frame, fd_and_length: Tuple[int, int], *, flags: int = Flags.RESPONSE | Flags.LEASED, extra_fds: int = 0) -> List[Tuple[Frame, List[int]]]:
    fd, length = fd_and_length
    fds = [fd] + [os.dup(fd) for _ in range(extra_fds)]
    frame = Frame(kind=Kind.TABLE, flags=flags, correlation_id=request.message_id, ipc_length=length, fd_count=len(fds), metadata={"arrow-shm.name": "x", "arrow-shm.version": "1"})
    return [(frame, fds)]


def stats_answer(request: Frame, **kv: str) -> List[Tuple[Frame, List[int]]]:
    base = {"entries": "0", "bytes": "0", "held_bytes": "0", "memory": "1", "evict": "lru", "evictions": "0"}
    return [(Frame(kind=Kind.STORE, flags=Flags.RESPONSE, correlation_id=request.message_id, metadata={**base, **kv}), [])]


def _pipe_fd() -> Tuple[int, int]:
    r, w = os.pipe()
    os.close(w)
    return r, 64


HOSTILE_GETS = {
    "a pipe, not a memfd": (lambda q: table_answer(q, _pipe_fd()), "ERR_SEGMENT_INVALID"),
    "an unsealed memfd": (lambda q: table_answer(q, sealed(seals=0)), "ERR_SEGMENT_UNSEALED"),
    "lease seals only (no F_SEAL_WRITE)": (lambda q: table_answer(q, sealed(seals=SEALS_LEASED)), "ERR_SEGMENT_UNSEALED"),
    "two fds": (lambda q: table_answer(q, sealed(), extra_fds=1), "ERR_PROTOCOL"),
    "ipc_length past the segment": (lambda q: table_answer(q, (sealed()[0], 1 << 40)), "ERR_SEGMENT_BOUNDS"),
    "garbage IPC bytes": (lambda q: table_answer(q, _garbage()), "ERR_IPC_"),
}


def _garbage() -> Tuple[int, int]:
    seg, length = write_table_segment(b"\xff\xff\xff\xff\x10\x00\x00\x00" + b"\x07" * 56)
    return seg.detach_fd(), length


@pytest.mark.parametrize("case", sorted(HOSTILE_GETS))
def test_hostile_get_answers_are_refused_with_typed_errors(case):
    make, code = HOSTILE_GETS[case]
    before = leak_state()
    fake = FakeStore(lambda q: make(q) if q.metadata.get("op") == "get" else stats_answer(q))
    try:
        with open_store(fake.address, timeout=5) as client:
            with pytest.raises(ArrowShmError) as e:
                client.get("x")
            assert e.value.code.startswith(code), e.value
            assert client.stats().memory == 1  # a message-level error: the connection goes on
        errors = [f for f in fake.received if f.kind == Kind.ERROR]
        assert errors and errors[0].correlation_id == 2, fake.received  # the TABLE after WELCOME (1)  # the client's ERROR ends the hold
    finally:
        fake.close()
    assert_no_leaks(before)


def test_hostile_listings_and_numbers_are_bounded():
    listing = pa.table({
        "name": [f"n{i}" for i in range(11)], "version": pa.array(range(1, 12), pa.uint64()),
        "bytes": pa.array([8] * 11, pa.uint64()), "ipc_length": pa.array([8] * 11, pa.uint64()),
        "rows": pa.array([1] * 11, pa.uint64()), "created_ms": pa.array([0] * 11, pa.int64()),
        "holds": pa.array([0] * 11, pa.uint32()), "metadata": ["{}"] * 11,
    })
    answers = {
        "list": lambda q: table_answer(q, sealed(listing if q.metadata.get("prefix") != "bad" else TABLE.slice(0, 3)), flags=Flags.RESPONSE),
        "stats": lambda q: stats_answer(q, bytes="9" * 25),
        "delete": lambda q: stats_answer(q, version="-1"),
    }
    before = leak_state()
    fake = FakeStore(lambda q: answers[q.metadata["op"]](q))
    try:
        with open_store(fake.address, timeout=5, max_list_entries=10) as client:
            for call, code in (
                (lambda: client.list(), "ERR_RESOURCE_LIMIT"),  # 11 rows, over max_list_entries
                (lambda: client.list("bad"), "ERR_PROTOCOL"),  # not the listing's columns
                (client.stats, "ERR_PROTOCOL"),  # a 25-digit number
                (lambda: client.delete("x"), "ERR_PROTOCOL"),
            ):
                with pytest.raises(ArrowShmError) as e:
                    call()
                assert e.value.code == code
        with open_store(fake.address, timeout=5, max_list_entries=11) as client:
            entries = client.list()
            assert [e.name for e in entries][:2] == ["n0", "n1"] and entries[10].version == 11
    finally:
        fake.close()
    assert_no_leaks(before)


def test_frames_a_store_never_sends_are_fatal_or_handed_back():
    def answer(q: Frame) -> List[Tuple[Frame, List[int]]]:
        if q.metadata.get("op") == "stats":  # an unasked held table first: handed back (RELEASE)
            fd, length = sealed()
            frame = Frame(kind=Kind.TABLE, flags=Flags.RESPONSE | Flags.LEASED, correlation_id=999, ipc_length=length)
            return [(frame, [fd]), *stats_answer(q)]
        fd, _ = sealed()  # a STORE answer with an fd: fatal
        return [(Frame(kind=Kind.STORE, flags=Flags.RESPONSE, correlation_id=q.message_id, fd_count=1), [fd])]

    before = leak_state()
    fake = FakeStore(answer)
    try:
        with open_store(fake.address, timeout=5) as client:
            client.stats()
            with pytest.raises(ArrowShmError) as e:
                client.delete("x")
            assert e.value.code == "ERR_PROTOCOL"
            assert client.closed
        deadline = time.monotonic() + 5
        while not any(f.kind == Kind.ERROR for f in fake.received) and time.monotonic() < deadline:
            time.sleep(0.02)
        releases = [f for f in fake.received if f.kind == Kind.RELEASE]
        assert [f.correlation_id for f in releases] == [2]
        assert any(f.kind == Kind.ERROR and f.metadata["code"] == "ERR_PROTOCOL" for f in fake.received)
    finally:
        fake.close()
    assert_no_leaks(before)


def test_a_listener_that_is_not_a_store_is_refused():
    fake = FakeStore(lambda q: [], capabilities="lease")
    try:
        with pytest.raises(ArrowShmError) as e:
            open_store(fake.address, timeout=5)
        assert e.value.code == "ERR_PROTOCOL" and "not a table store" in e.value.message
    finally:
        fake.close()


def test_a_watch_flood_ends_the_watch_with_a_resource_limit():
    def answer(q: Frame) -> List[Tuple[Frame, List[int]]]:
        if q.metadata.get("op") == "stats":
            return stats_answer(q)
        if q.metadata.get("op") != "watch":
            return []
        ok = (Frame(kind=Kind.STORE, flags=Flags.RESPONSE, correlation_id=q.message_id), [])
        event = lambda i: (Frame(kind=Kind.STORE, correlation_id=q.message_id, metadata={"event": "put", "name": f"n{i}", "version": str(i + 1), "bytes": "8"}), [])  # noqa: E731
        return [ok] + [event(i) for i in range(5)]

    fake = FakeStore(answer)
    try:
        with open_store(fake.address, timeout=5, max_queued_events=3) as client:
            watch = client.watch()
            client.stats()  # reads the 5 events (before its answer) while nobody takes them
            events = []
            with pytest.raises(ArrowShmError) as e:
                while True:
                    events.append(watch.next(timeout=2))
            assert e.value.code == "ERR_RESOURCE_LIMIT"
            assert [ev.name for ev in events] == ["n0", "n1", "n2"]  # what was queued is still taken
            client.stats()
        assert any(f.metadata.get("op") == "unwatch" for f in fake.received)
    finally:
        fake.close()
