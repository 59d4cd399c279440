"""The request/response example: symbol client against the Python engine and the Rust engine."""

import subprocess
import sys

import pytest

from conftest import PEER, PY, REPO, spawn_listening

EXAMPLES = PEER / "examples"
RUST = REPO / ".build" / "rust" / "release" / "arrow-shm-rs"

sys.path.insert(0, str(EXAMPLES))
from symbols import expected_summary, make_symbols, summarize  # noqa: E402


def test_symbol_table_is_deterministic_and_as_specified():
    a, b = make_symbols(1000, 7), make_symbols(1000, 7)
    assert a.equals(b)
    assert a.schema.names == ["id", "fqn", "kind", "file_id", "start_line", "start_col", "end_line", "end_col"]
    assert a["id"][0].as_py().startswith("node_") and a["fqn"][0].as_py().startswith("pkg.module_")
    assert not a.equals(make_symbols(1000, 8))


def test_engine_computation_matches_the_independent_check():
    t = make_symbols(20_000, 3)
    assert summarize(t).equals(expected_summary(t))


def run_client(sock_path):
    return subprocess.run(
        [PY, str(EXAMPLES / "symbol_client.py"), "--socket", sock_path, "--repeat", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_client_against_python_engine(sock_path):
    engine = spawn_listening([PY, str(EXAMPLES / "symbol_engine.py"), "--socket", sock_path, "--connections", "1"])
    try:
        r = run_client(sock_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("ok: request") == 3 and "arrow-shm-python" in r.stdout
        assert engine.wait(20) == 0
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()


@pytest.mark.skipif(not RUST.exists(), reason=f"Rust peer not built ({RUST} missing; it is built in parallel by peers/rust/build.sh)")
def test_client_against_rust_engine(sock_path):
    engine = spawn_listening([str(RUST), "engine", "--socket", sock_path])
    try:
        r = run_client(sock_path)
        assert r.returncode == 0, r.stderr + r.stdout
        assert r.stdout.count("ok: request") == 3
    finally:
        engine.terminate()
        try:
            engine.wait(10)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait()
