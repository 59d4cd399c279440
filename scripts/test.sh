#!/usr/bin/env bash
# The test command (`npm test`): builds what is missing (addon, TypeScript, Python venv, peers),
# then runs every suite; each runner prints its own summary line.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[[ -f build/Release/arrow_shm.node ]] || node scripts/build-native.mjs
npx --no-install tsc -p . && chmod +x dist/src/cli/main.js
scripts/ensure-venv.sh
# The cross toolchains with which test/package.test.ts rebuilds every committed prebuilt addon and
# loads the arm64 ones under qemu (root only; ~45 s once per machine).
if [[ $EUID -eq 0 ]] && ! { command -v aarch64-linux-gnu-gcc && command -v musl-gcc && command -v qemu-aarch64; } >/dev/null; then
  scripts/prebuild-toolchains.sh || echo "arrow-shm: could not install the cross toolchains: the package tests that need them will say they skipped" >&2
fi
peers/rust/build.sh
peers/cpp/build.sh
status=0
# --test-force-exit: a failed assertion that skipped a test's cleanup must not leave its file running forever.
node --test --test-force-exit dist/test/*.test.js || status=1
.build/venv/bin/python -m pytest -q -p no:cacheprovider peers/python/tests || status=1
# The Python package's type hints (py.typed), checked as its users' mypy would see them.
.build/venv/bin/python -m mypy --strict --config-file peers/python/pyproject.toml --cache-dir .build/mypy-cache peers/python/arrow_shm || status=1
cargo test --quiet --manifest-path peers/rust/Cargo.toml --target-dir .build/rust || status=1
# The Rust crate as packaged (#14): metadata and files, docs on every public item without a
# warning (its crate-level example runs as a doctest in `cargo test` above).
cargo package --quiet --offline --allow-dirty --no-verify --manifest-path peers/rust/Cargo.toml --target-dir .build/rust || status=1
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps --manifest-path peers/rust/Cargo.toml --target-dir .build/rust || status=1
peers/cpp/test.sh || status=1
# ASan+UBSan: the C++ peer's tests and a short mutation fuzz, the addon under the native-level Node tests.
scripts/sanitize.sh || status=1
# Coverage-guided fuzzing, short runs (`npm run stress` runs them for minutes): the kept crashers
# replayed, then atheris on the Python peer's parsers and libFuzzer (+ASan) on the Rust peer's.
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash peers/python/fuzz/run.sh || status=1
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" bash scripts/fuzz-rust.sh || status=1
exit $status
