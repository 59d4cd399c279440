"""Seed compatibility (PROTOCOL.md §10) both ways, against reproductions of the seed's programs."""

import json
import subprocess

import pyarrow as pa

from conftest import GOLD, HERE, PY, cli, spawn_listening

PRIMITIVE = GOLD / "1.0.0-littleendian" / "generated_primitive.stream"


def test_seed_receiver_reads_what_send_seed_compat_sends(sock_path):
    proc = spawn_listening(cli("send", "--seed-compat", "--socket", sock_path, "--timeout-ms", "10000", str(PRIMITIVE)))
    seed = subprocess.run([PY, str(HERE / "seed_receiver.py"), sock_path], capture_output=True, text=True, timeout=20)
    assert seed.returncode == 0, seed.stderr
    assert proc.wait(10) == 0, proc.stderr.read()
    got = json.loads(seed.stdout)
    first = pa.ipc.open_stream(PRIMITIVE.read_bytes()).read_next_batch()
    assert got["byte"] == "F"
    assert got["rows"] == first.num_rows
    assert got["data"] == json.loads(json.dumps(first.to_pydict(), default=str))


def test_seed_segment_is_unsealed_and_40960_bytes(sock_path):
    """Inspect what the seed sender mode attaches, with a tiny raw client."""
    import fcntl
    import os
    import socket

    proc = spawn_listening(cli("send", "--seed-compat", "--socket", sock_path, str(PRIMITIVE)))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    msg, anc, _, _ = s.recvmsg(1, socket.CMSG_LEN(4))
    fd = int.from_bytes(anc[0][2][:4], "little")
    try:
        assert msg == b"F"
        assert os.fstat(fd).st_size == max(40960, PRIMITIVE.stat().st_size)
        assert fcntl.fcntl(fd, 1034) & 0x8 == 0  # no F_SEAL_WRITE
        n = PRIMITIVE.stat().st_size
        assert os.pread(fd, n, 0) == PRIMITIVE.read_bytes()
        assert os.pread(fd, 40960 - n, n) == b"\0" * (40960 - n)
    finally:
        os.close(fd)
        s.close()
    assert proc.wait(10) == 0


def test_recv_seed_compat_reads_the_seed_sender(sock_path, tmp_path):
    sender = subprocess.Popen([PY, str(HERE / "seed_sender.py"), sock_path], stdout=subprocess.PIPE)
    assert sender.stdout.readline() == b"ready\n"
    out = tmp_path / "seed.arrows"
    recv = subprocess.run(
        cli("recv", "--seed-compat", "--socket", sock_path, "--out", str(out), "--print", "--timeout-ms", "10000"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    sent = sender.stdout.read()
    assert sender.wait(10) == 0
    assert recv.returncode == 0, recv.stderr
    assert "rows: 10" in recv.stdout and "x: int32" in recv.stdout
    assert out.read_bytes() == sent  # the stream, up to its end-of-stream marker, unchanged


def test_python_seed_pair_round_trip(sock_path, tmp_path):
    """send --seed-compat → recv --seed-compat, a gold stream arrives byte for byte."""
    proc = spawn_listening(cli("send", "--seed-compat", "--socket", sock_path, str(PRIMITIVE)))
    out = tmp_path / "o.arrows"
    recv = subprocess.run(cli("recv", "--seed-compat", "--socket", sock_path, "--out", str(out)), capture_output=True, timeout=20)
    assert recv.returncode == 0, recv.stderr
    assert proc.wait(10) == 0
    assert out.read_bytes() == PRIMITIVE.read_bytes()
