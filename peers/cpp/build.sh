#!/usr/bin/env bash
# Builds the C++ peer into <repo>/.build/cpp/arrow-shm-cpp (idempotent; quiet when up to date).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/.build/cpp"
mkdir -p "$out"
exec 9>"$out/.build.lock"
flock 9

"$root/scripts/ensure-venv.sh" >&2
py="$root/.build/venv/bin/python"

if [[ ! -f "$out/build.ninja" ]]; then
  inc="$("$py" -c 'import pyarrow; print(pyarrow.get_include())')"
  libdir="$("$py" -c 'import pyarrow; print(pyarrow.get_library_dirs()[0])')"
  lib="$(ls "$libdir"/libarrow.so.* 2>/dev/null | grep -E 'libarrow\.so\.[0-9]+$' | head -n1)"
  [[ -n "$lib" ]] || { echo "arrow-shm: no libarrow.so.N in $libdir" >&2; exit 1; }
  cmake -S "$here" -B "$out" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DARROW_INCLUDE_DIR="$inc" -DARROW_LIBRARY="$lib" >"$out/.configure.log" 2>&1 \
    || { cat "$out/.configure.log" >&2; exit 1; }
fi
# ninja prints "ninja: no work to do." when up to date: keep quiet then, show output on failure.
if ! log="$(cmake --build "$out" 2>&1)"; then
  printf '%s\n' "$log" >&2
  exit 1
fi
case "$log" in
  *"no work to do"*) ;;
  *) printf '%s\n' "$log" | grep -E 'warning|error' >&2 || true ;;
esac
