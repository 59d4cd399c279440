"""docs/CLI.md: flags, output, exit codes."""

import os
import subprocess

import pyarrow as pa
import pytest

from conftest import GOLD, cli, spawn_listening

PRIMITIVE = GOLD / "1.0.0-littleendian" / "generated_primitive.stream"
DICT = GOLD / "1.0.0-littleendian" / "generated_dictionary.stream"


def run(*args, **kw):
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=30, **kw)


@pytest.mark.parametrize(
    "args",
    [
        ["send", "--socket", "/tmp/x.sock", "--bogus", str(PRIMITIVE)],
        ["send", "--socket"],
        ["send", "--socket", "/tmp/x.sock"],
        ["send", "--socket", "/tmp/x.sock", "/nonexistent/file.arrows"],
        ["send", "--socket", "/tmp/x.sock", "--meta", "novalue", str(PRIMITIVE)],
        ["send", str(PRIMITIVE)],
        ["recv"],
        ["recv", "--socket", "/tmp/x.sock", "--count", "0"],
        ["recv", "--socket", "/tmp/x.sock", "--count", "many"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_usage_is_one_line_exit_2(args):
    r = run(*args)
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("arrow-shm: "), r.stderr
    assert "Traceback" not in r.stderr


def test_error_is_one_line_exit_1():
    r = run("send", "--socket", "/tmp/arrow-shm-no-such-listener.sock", str(PRIMITIVE))
    assert r.returncode == 1
    assert r.stderr.startswith("arrow-shm: ERR_SYSCALL: ") and r.stderr.count("\n") == 1


def test_timeout(sock_path):
    r = run("recv", "--socket", sock_path, "--timeout-ms", "200")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines == [f"arrow-shm: listening on {sock_path}", lines[1]] and lines[1].startswith("arrow-shm: ERR_TIMEOUT: ")
    assert not os.path.exists(sock_path)  # removed on close


def test_print_and_meta_and_out_file(sock_path, tmp_path):
    out = tmp_path / "one.arrows"
    recv = spawn_listening(cli("recv", "--socket", sock_path, "--print", "--out", str(out), "--timeout-ms", "10000"))
    s = run("send", "--socket", sock_path, "--meta", "name=symbols", "--meta", "k=v=w", str(DICT))
    assert s.returncode == 0 and s.stderr == "", s.stderr
    stdout, stderr = recv.communicate(timeout=10)
    assert recv.returncode == 0, stderr
    text = stdout.decode()
    rows = pa.ipc.open_stream(DICT.read_bytes()).read_all().num_rows
    assert "metadata: name=symbols, k=v=w" in text
    assert f"rows: {rows}" in text and "schema: " in text and "first rows:" in text
    assert out.read_bytes() == DICT.read_bytes()


def test_listen_connect_reversed_count_dir_and_stdin(sock_path, tmp_path):
    out = tmp_path / "d"
    with open(DICT, "rb") as stdin:
        send = spawn_listening(cli("send", "--listen", "--socket", sock_path, "--timeout-ms", "10000", str(PRIMITIVE), "-"), stdin=stdin)
    recv = run("recv", "--connect", "--socket", sock_path, "--count", "2", "--out", str(out), "--timeout-ms", "10000")
    assert recv.returncode == 0, recv.stderr
    send.wait(10)
    assert send.returncode == 0
    assert (out / "000000.arrows").read_bytes() == PRIMITIVE.read_bytes()
    assert (out / "000001.arrows").read_bytes() == DICT.read_bytes()


def test_empty_stdin_is_an_error(sock_path):
    r = subprocess.run(cli("send", "--socket", sock_path, "-"), input=b"", capture_output=True, timeout=30)
    assert r.returncode == 1 and r.stderr.decode().startswith("arrow-shm: ERR_INVALID_ARGUMENT: ")


def test_abstract_socket_cli(tmp_path):
    name = f"@arrow-shm-cli-{os.getpid()}"
    recv = spawn_listening(cli("recv", "--socket", name, "--out", str(tmp_path / "a.arrows"), "--timeout-ms", "10000"))
    s = run("send", "--socket", name, str(PRIMITIVE))
    assert s.returncode == 0, s.stderr
    assert recv.wait(10) == 0
    assert (tmp_path / "a.arrows").read_bytes() == PRIMITIVE.read_bytes()


def test_recv_accepts_successive_connections(sock_path, tmp_path):
    out = tmp_path / "many"
    recv = spawn_listening(cli("recv", "--socket", sock_path, "--count", "3", "--out", str(out), "--timeout-ms", "10000"))
    assert run("send", "--socket", sock_path, str(PRIMITIVE)).returncode == 0
    assert run("send", "--socket", sock_path, str(DICT), str(PRIMITIVE)).returncode == 0
    assert recv.wait(10) == 0
    assert [p.name for p in sorted(out.iterdir())] == ["000000.arrows", "000001.arrows", "000002.arrows"]
    assert (out / "000001.arrows").read_bytes() == DICT.read_bytes()
