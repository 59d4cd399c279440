#!/usr/bin/env bash
# Creates (once) the Python environment used by the Python peer, the C++ peer's build and the tests:
# .build/venv with the pinned requirements and peers/python installed in editable mode.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.build/venv"
lock="$root/peers/python/requirements.lock"
stamp="$venv/.arrow-shm-stamp"
want="$(sha256sum "$lock" "$root/peers/python/pyproject.toml" 2>/dev/null | sha256sum | cut -c1-16)"
mkdir -p "$root/.build"
exec 9>"$root/.build/venv.lock"
flock 9
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then exit 0; fi
echo "arrow-shm: preparing Python environment in .build/venv" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$lock"
if [[ -f "$root/peers/python/pyproject.toml" ]]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$root/peers/python"
fi
# The pinned pyarrow wheel as a file: peers/python/tests/test_package.py installs the built wheel
# into a fresh venv from it with --no-index (nothing is downloaded at test time).
"$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "$root/.build/wheels" "$(grep '^pyarrow==' "$lock")"
echo "$want" > "$stamp"
