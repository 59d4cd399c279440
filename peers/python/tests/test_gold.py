"""Every Arrow gold stream through a real socket between two processes: bytes and tables equal."""

import subprocess
import threading

import pyarrow as pa
from arrow_shm import listen

from conftest import GOLD, cli, gold_streams, spawn_listening

STREAMS = gold_streams()


def test_gold_data_present():
    assert len(STREAMS) >= 20, f"gold streams missing under {GOLD}"


def test_gold_streams_python_sender_process_to_in_process_receiver(sock_path):
    """`python -m arrow_shm send` (another process) → library receiver here, decoded in place."""
    with listen(sock_path) as lst:
        proc = subprocess.Popen(
            cli("send", "--socket", sock_path, "--timeout-ms", "20000", *map(str, STREAMS)),
            stderr=subprocess.PIPE,
        )
        with lst.accept(timeout=20) as ch:
            for path in STREAMS:
                original = path.read_bytes()
                with ch.receive(timeout=20) as m:
                    assert bytes(m.ipc_bytes) == original, path.name
                    expected = pa.ipc.open_stream(original).read_all()
                    assert m.table.equals(expected), path.name
        assert proc.wait(20) == 0, proc.stderr.read()


def test_gold_streams_library_sender_to_cli_receiver_process(sock_path, tmp_path):
    """Library sender here → `python -m arrow_shm recv --out DIR` in another process: bytes equal."""
    out = tmp_path / "out"
    proc = spawn_listening(cli("recv", "--socket", sock_path, "--count", str(len(STREAMS)), "--out", str(out), "--timeout-ms", "20000"))
    from arrow_shm import connect

    with connect(sock_path, timeout=20) as ch:
        for path in STREAMS:
            ch.send(path.read_bytes(), {"file": path.name}, timeout=20)
    assert proc.wait(20) == 0, proc.stderr.read()
    for i, path in enumerate(STREAMS):
        assert (out / f"{i:06d}.arrows").read_bytes() == path.read_bytes(), path.name


def test_gold_tables_written_by_pyarrow_into_the_segment(sock_path):
    """Tables (not bytes) sent: written by pyarrow straight into the mapping, equal on arrival."""
    tables = [pa.ipc.open_stream(p.read_bytes()).read_all() for p in STREAMS]
    with listen(sock_path) as lst:
        box = {}

        def run():
            with lst.accept(timeout=20) as ch:
                box["tables"] = []
                for _ in tables:
                    with ch.receive(timeout=20) as m:
                        box["tables"].append(m.table)
        t = threading.Thread(target=run)
        t.start()
        from arrow_shm import connect

        with connect(sock_path, timeout=20) as ch:
            for table in tables:
                ch.send(table, timeout=20)
        t.join(30)
    for got, want, path in zip(box["tables"], tables, STREAMS):
        assert got.equals(want), path.name


def test_gold_ipc_files_are_reframed_as_streams(sock_path, tmp_path):
    """`send FILE.arrow_file` re-frames the IPC file as a stream; the table arrives equal."""
    files = sorted(GOLD.glob("*/*.arrow_file"))
    assert files
    out = tmp_path / "out"
    recv = spawn_listening(cli("recv", "--socket", sock_path, "--count", str(len(files)), "--out", str(out), "--timeout-ms", "20000"))
    send = subprocess.run(cli("send", "--socket", sock_path, "--timeout-ms", "20000", *map(str, files)), capture_output=True)
    assert send.returncode == 0, send.stderr
    assert recv.wait(20) == 0, recv.stderr.read()
    for i, path in enumerate(files):
        stream = path.with_name(path.name.replace(".arrow_file", ".stream"))
        got = pa.ipc.open_stream((out / f"{i:06d}.arrows").read_bytes()).read_all()
        want = pa.ipc.open_stream(stream.read_bytes()).read_all()
        assert got.equals(want), path.name
