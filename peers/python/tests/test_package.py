"""The Python package as people install it (issue #14): `python -m build` makes an sdist and a wheel
from a copy of peers/python, the wheel goes into a fresh venv (pyarrow from the pinned wheel that
scripts/ensure-venv.sh keeps in .build/wheels, --no-index: nothing is downloaded), and two
processes of that venv hand a table over with its commands (`arrow-shm-py`, `python -m arrow_shm`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import PEER, PY, REPO, spawn_listening

WHEELS = REPO / ".build" / "wheels"

pytestmark = pytest.mark.package


def run(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    return r


def test_wheel_and_sdist_build_and_the_wheel_installs_into_a_fresh_venv(tmp_path: Path) -> None:
    assert list(WHEELS.glob("pyarrow-*.whl")), f"no pyarrow wheel in {WHEELS}: run scripts/ensure-venv.sh"
    started = time.monotonic()
    # A copy: building writes build/ and *.egg-info next to the sources (other work uses them).
    src = tmp_path / "src"
    shutil.copytree(PEER, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".pytest_cache"))
    # --no-isolation: setuptools and wheel come pinned from this venv instead of being fetched.
    run(PY, "-m", "build", "--no-isolation", "--outdir", tmp_path / "dist", src)
    (wheel,) = (tmp_path / "dist").glob("arrow_shm-*-py3-none-any.whl")
    (sdist,) = (tmp_path / "dist").glob("arrow_shm-*.tar.gz")

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
        metadata = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert {"arrow_shm/__init__.py", "arrow_shm/py.typed", f"{info}/licenses/LICENSE"} <= names
    assert all(n.startswith(("arrow_shm/", info)) for n in names), names
    assert "License-Expression: Apache-2.0" in metadata and "Requires-Dist: pyarrow" in metadata
    assert "arrow-shm-py = arrow_shm.cli:main" in entry_points
    with tarfile.open(sdist) as t:
        members = {m.split("/", 1)[1] for m in t.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "LICENSE", "arrow_shm/py.typed", "arrow_shm/cli.py"} <= members
    assert not any(m.startswith("tests/") for m in members), "the tests need the repository: not in the sdist"
    built = time.monotonic()

    # A venv that has nothing: pip (this venv's) installs the wheel and resolves its pyarrow offline.
    venv = tmp_path / "venv"
    run(PY, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(PY, "-m", "pip", "--python", python, "install", "--quiet", "--disable-pip-version-check",
        "--no-index", "--find-links", WHEELS, wheel)
    installed = time.monotonic()
    where = run(python, "-c", "import arrow_shm, pyarrow; print(arrow_shm.__file__, arrow_shm.__version__)").stdout.split()
    assert Path(where[0]).is_relative_to(venv) and where[1] == "0.1.0", where
    usage = run(venv / "bin" / "arrow-shm-py", "--help").stdout
    assert all(command in usage for command in ("send", "recv", "pub", "sub")), usage

    # Two processes of the fresh venv: the command receives, `python -m arrow_shm` sends.
    stream = tmp_path / "t.arrows"
    table = pa.table({"id": pa.array([1, 2, 3], pa.int32()), "name": ["a", "b", "c"]})
    with pa.OSFile(str(stream), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    address = f"@arrow-shm-package-{uuid.uuid4().hex[:12]}"
    receiver = spawn_listening([str(venv / "bin" / "arrow-shm-py"), "recv", "--socket", address, "--count", "1", "--print"])
    try:
        run(python, "-m", "arrow_shm", "send", "--socket", address, "--meta", "from=wheel", stream, timeout=30)
        out, err = receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
    assert receiver.returncode == 0, err
    assert "metadata: from=wheel" in out.decode() and '{"id": 3, "name": "c"}' in out.decode(), out

    total = time.monotonic() - started
    print(f"build {built - started:.1f} s, fresh venv + install {installed - built:.1f} s, total {total:.1f} s", file=sys.stderr)
    assert total < 60, f"the package test took {total:.1f} s"
