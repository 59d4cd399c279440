from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pytest

from arrow_shm import connect, listen

HERE = Path(__file__).resolve().parent
PEER = HERE.parent
REPO = PEER.parent.parent
SHARED = (REPO / ".." / "shared").resolve()
GOLD = SHARED / "testdata" / "arrow-gold"
FUZZ = SHARED / "testdata" / "arrow-fuzz"
PY = sys.executable


def gold_streams() -> list[Path]:
    return sorted(GOLD.glob("*/*.stream"))


def fuzz_files() -> list[Path]:
    return sorted(p for p in FUZZ.iterdir() if p.is_file() and not p.name.endswith(".md"))


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[str]:
    # AF_UNIX paths are limited to 108 bytes: keep it short and under /tmp.
    path = f"/tmp/ashm-test-{uuid.uuid4().hex[:12]}.sock"
    yield path
    if os.path.exists(path):
        os.unlink(path)


def cli(*args: str) -> list[str]:
    return [PY, "-m", "arrow_shm", *args]


def spawn_listening(args: list[str], timeout: float = 20.0, stdin=None) -> subprocess.Popen:
    """Start a CLI process and wait for its 'arrow-shm: listening on' line on stderr."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin)
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.startswith(b"arrow-shm: listening on"):
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"no listening line: {line!r} {err!r}")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def map_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def send_fd(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def recv_frame(sock: socket.socket, timeout: float = 5.0) -> Optional[bytes]:
    sock.settimeout(timeout)
    data, anc, flags, _ = sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
    for _, _, cdata in anc:
        fa = array.array("i")
        fa.frombytes(cdata[: len(cdata) - len(cdata) % 4])
        for fd in fa:
            os.close(fd)
    return data or None


@pytest.fixture
def address() -> str:
    return f"@ashm-stream-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pair(address: str) -> Iterator[tuple]:
    """(producer channel, consumer channel) over one connection."""
    with listen(address) as lst:
        box: dict = {}
        t = threading.Thread(target=lambda: box.setdefault("c", lst.accept(timeout=5)))
        t.start()
        producer = connect(address, timeout=5)
        t.join()
        consumer = box["c"]
    try:
        yield producer, consumer
    finally:
        producer.close()
        consumer.close()


def open_stream_pair(producer, consumer, schema, reader_spin: int = 0, **options) -> tuple:
    """(writer, reader) of a stream from ``producer`` to ``consumer``: open_stream needs the
    consumer's ACK, so the reader accepts on a thread."""
    from arrow_shm.stream import StreamReader

    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", StreamReader.accept(consumer, timeout=5, spin_micros=reader_spin)))
    t.start()
    writer = producer.open_stream(schema, **options)
    t.join()
    return writer, box["r"]


def in_ring(buf, reader) -> bool:
    """Whether ``buf`` lies inside ``reader``'s ring mapping (read in place)."""
    lo, size = reader.data_range()
    return lo <= buf.address and buf.address + buf.size <= lo + size
