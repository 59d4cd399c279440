#!/usr/bin/env bash
# Builds the Rust peer (idempotent; concurrent callers wait on a lock).
# Output: <repo>/.build/rust/release/arrow-shm-rs
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="$root/.build/rust"
mkdir -p "$target"
exec 9>"$target/.build.lock"
flock 9
cargo build --quiet --release --manifest-path "$here/Cargo.toml" --target-dir "$target"
