"""Hostile Arrow IPC inputs: a typed error or a valid table, never a crash, hang or leak."""

import json
import subprocess

import pyarrow as pa
import pytest

from arrow_shm.errors import ArrowShmError
from arrow_shm.ipc import decode_table, validate_stream

from conftest import FUZZ, HERE, PY, cli, fuzz_files, spawn_listening

FILES = fuzz_files()
ALLOWED = {"ERR_IPC_INVALID", "ERR_IPC_TRUNCATED", "ERR_IPC_UNSUPPORTED"}


def test_fuzz_data_present():
    assert len(FILES) >= 30, f"fuzz files missing under {FUZZ}"


def test_every_fuzz_file_through_a_channel_in_a_child_process(sock_path):
    proc = subprocess.run(
        [PY, str(HERE / "fuzz_worker.py"), sock_path, *map(str, FILES)],
        capture_output=True,
        timeout=90,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(l) for l in proc.stdout.splitlines()]
    results, summary = lines[:-1], lines[-1]
    assert [r["file"] for r in results] == [f.name for f in FILES]
    for r in results:
        assert r["outcome"].startswith("ok:") or r["outcome"] in ALLOWED, r
    # the sender saw the same: an ACK for what was accepted, the receiver's typed ERROR otherwise
    for i, r in enumerate(results):
        sent = summary["sender"][str(i)]
        if r["outcome"] in ALLOWED and not r["outcome"] == "ERR_IPC_UNSUPPORTED":
            assert sent in (r["outcome"], "acked"), (r, sent)  # decode-time errors come after ACK
    assert summary["before"] == summary["after"], "fd or mapping leak"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name[-20:])
def test_framing_validation_rejects_or_accepts_cleanly(path):
    data = path.read_bytes()
    try:
        validate_stream(data)
    except ArrowShmError as e:
        assert e.code in ALLOWED
        return
    # framing passed: pyarrow decoding must then give a table or a typed error
    try:
        table = decode_table(pa.py_buffer(data))
    except ArrowShmError as e:
        assert e.code in ALLOWED
    else:
        assert isinstance(table, pa.Table)


def test_cli_send_of_a_fuzz_file_fails_with_the_receivers_code(sock_path, tmp_path):
    recv = spawn_listening(cli("recv", "--socket", sock_path, "--out", str(tmp_path / "x.arrows"), "--timeout-ms", "3000"))
    send = subprocess.run(cli("send", "--socket", sock_path, "--timeout-ms", "10000", str(FILES[1])), capture_output=True, text=True, timeout=20)
    assert send.returncode == 1
    line = send.stderr.strip()
    assert line.startswith("arrow-shm: ERR_IPC_") and "\n" not in line and "Traceback" not in line
    # recv drops that sender's connection (one line) and serves on, until its timeout here
    recv.wait(10)
    assert recv.returncode == 1
    first = recv.stderr.read().decode().splitlines()[0]
    assert first.startswith("arrow-shm: dropped a connection (pid ") and "): ERR_IPC_" in first, first
    assert not (tmp_path / "x.arrows").exists()
