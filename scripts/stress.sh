#!/usr/bin/env bash
# `npm run stress`: the long runs of issue #7, too long for CI. The soak (bench/stress.ts:
# 1,000,000 hand-offs, a 10-minute stream, 100 random SIGKILLs; arguments are passed on), then
# coverage-guided fuzzing for longer than `npm test` does: the Python peer with atheris for
# STRESS_FUZZ_SECONDS (default 300), and each of the Rust peer's seven libFuzzer targets for a seventh
# of that. Exits non-zero if any of them fails.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${STRESS_FUZZ_SECONDS:-300}"
status=0
node --expose-gc dist/bench/stress.js "$@" || status=1
FUZZ_SECONDS="$seconds" bash peers/python/fuzz/run.sh || status=1
FUZZ_SECONDS="$(( (seconds + 6) / 7 ))" bash scripts/fuzz-rust.sh || status=1
exit $status
