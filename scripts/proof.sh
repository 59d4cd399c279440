#!/usr/bin/env bash
# Regenerates docs/PROOF.md from real runs (`npm run proof`): the zero-copy claim, measured.
#   1. memcheck: the C++ and Rust peers send and receive the 100k-symbol table (other end: Node CLI)
#   2. massif: peak heap of the C++ and Rust receivers (and senders) for a 1 MiB vs a large table
#   3. /proc counters of Node and Python receivers while they receive and read a large table
#   4. copy count: a marker written by the sender sits inside the receiver's mapping of the same memfd
# Environment: PROOF_LARGE_BYTES (default 1 GiB) for the large table, PROOF_OUT (default
# docs/PROOF.md). Logs and raw outputs stay in .build/proof/ for inspection.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

LARGE="${PROOF_LARGE_BYTES:-1073741824}"
SMALL=1048576
OUT="${PROOF_OUT:-docs/PROOF.md}"
W=.build/proof
CPP=.build/cpp/arrow-shm-cpp
RUST=.build/rust/release/arrow-shm-rs
NODE_CLI="node dist/src/cli/main.js"
export ARROW_DEFAULT_MEMORY_POOL=system # Arrow C++ allocates through malloc, so valgrind sees it

say() { echo "proof: $*" >&2; }
started=$SECONDS

# ---------------------------------------------------------------- build what is measured
say "building (npm run build, Python venv, C++ and Rust peers)"
npm run --silent build >/dev/null
scripts/ensure-venv.sh
peers/cpp/build.sh
peers/rust/build.sh
command -v valgrind >/dev/null || { echo "proof: valgrind is required (apt-get install valgrind)" >&2; exit 1; }

rm -rf "$W"
mkdir -p "$W"
RESULTS="$W/results.jsonl"
: >"$RESULTS"

# record KEY=VALUE... : one JSON object per line in $RESULTS (values are strings)
record() {
  .build/venv/bin/python - "$@" >>"$RESULTS" <<'PY'
import json, sys
print(json.dumps(dict(a.split("=", 1) for a in sys.argv[1:])))
PY
}

# ---------------------------------------------------------------- the tables
say "writing the tables"
SYM="$W/symbols-100000.arrows"
node scripts/proof/make-tables.mjs "$W" symbols 100000 >/dev/null
node scripts/proof/make-tables.mjs "$W" numeric "$SMALL" >/dev/null
node scripts/proof/make-tables.mjs "$W" numeric "$LARGE" >/dev/null
SMALL_FILE="$W/numeric-$SMALL.arrows"
LARGE_FILE="$W/numeric-$LARGE.arrows"

# pair NAME RECV_COMMAND SEND_COMMAND: starts the receiver, waits for its "listening on" line,
# runs the sender, waits for both; records both commands and exit statuses.
pair() {
  local name="$1" recv="$2" send="$3" rp rrc=0 src=0 i
  eval "$recv" >"$W/$name.recv.out" 2>"$W/$name.recv.err" &
  rp=$!
  for ((i = 0; i < 1200; i++)); do
    grep -q "listening on" "$W/$name.recv.err" 2>/dev/null && break
    kill -0 "$rp" 2>/dev/null || break
    sleep 0.1
  done
  eval "$send" >"$W/$name.send.out" 2>"$W/$name.send.err" || src=$?
  wait "$rp" || rrc=$?
  record "name=$name" "recv=$recv" "send=$send" "recv_rc=$rrc" "send_rc=$src" \
    "recv_out=$W/$name.recv.out" "recv_err=$W/$name.recv.err"
  say "$name: receiver exit $rrc, sender exit $src ($((SECONDS - started)) s)"
}

# ---------------------------------------------------------------- 1. memcheck
MC="valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect,possible,reachable --error-exitcode=99 -s --suppressions=scripts/proof/valgrind.supp"
for peer in cpp rust; do
  bin=$CPP; [[ $peer == rust ]] && bin=$RUST
  pair "memcheck-$peer-recv" \
    "$MC --log-file=$W/memcheck-$peer-recv.log $bin recv --socket @arrow-shm-proof-mc --print --timeout-ms 120000" \
    "$NODE_CLI send --socket @arrow-shm-proof-mc --timeout-ms 120000 $SYM"
  pair "memcheck-$peer-send" \
    "$NODE_CLI recv --socket @arrow-shm-proof-mc --print --timeout-ms 120000" \
    "$MC --log-file=$W/memcheck-$peer-send.log $bin send --socket @arrow-shm-proof-mc --timeout-ms 120000 $SYM"
done

# ---------------------------------------------------------------- 2. massif
MS="valgrind --tool=massif"
for peer in cpp rust; do
  bin=$CPP; [[ $peer == rust ]] && bin=$RUST
  for size in "$SMALL" "$LARGE"; do
    file="$W/numeric-$size.arrows"
    pair "massif-$peer-recv-$size" \
      "$MS --massif-out-file=$W/massif-$peer-recv-$size.out $bin recv --socket @arrow-shm-proof-ms --print --timeout-ms 300000" \
      "$NODE_CLI send --socket @arrow-shm-proof-ms --timeout-ms 300000 $file"
    pair "massif-$peer-send-$size" \
      "$NODE_CLI recv --socket @arrow-shm-proof-ms --print --timeout-ms 300000" \
      "$MS --massif-out-file=$W/massif-$peer-send-$size.out $bin send --socket @arrow-shm-proof-ms --timeout-ms 300000 $file"
  done
done

# ---------------------------------------------------------------- 3 + 4. /proc counters and the marker
for lang in node python; do
  cmd="node scripts/proof/memory.mjs $lang $LARGE $W/memory-$lang.json"
  rc=0
  $cmd >&2 || rc=$?
  record "name=memory-$lang" "cmd=$cmd" "rc=$rc" "json=$W/memory-$lang.json"
done

# 4, C++ and Rust: their CLIs do not expose addresses; run the tests that assert it.
cmd="$CPP-selftest"
rc=0
$cmd >"$W/cpp-selftest.out" 2>&1 || rc=$?
record "name=cpp-selftest" "cmd=$cmd" "rc=$rc" "out=$W/cpp-selftest.out"
cmd="cargo test --release --manifest-path peers/rust/Cargo.toml --target-dir .build/rust --test integration decoded_buffers_lie_inside_the_mapping"
rc=0
timeout 420 $cmd >"$W/rust-zero-copy-test.out" 2>&1 || rc=$?
record "name=rust-zero-copy-test" "cmd=$cmd" "rc=$rc" "out=$W/rust-zero-copy-test.out"

# ---------------------------------------------------------------- the report
record "name=meta" "large=$LARGE" "small=$SMALL" "seconds=$((SECONDS - started))" \
  "symbols_file=$SYM" "symbols_bytes=$(stat -c %s "$SYM")" \
  "small_file=$SMALL_FILE" "small_bytes=$(stat -c %s "$SMALL_FILE")" \
  "large_file=$LARGE_FILE" "large_bytes=$(stat -c %s "$LARGE_FILE")"
rm -f "$W"/numeric-*.arrows # the large inputs are not kept
.build/venv/bin/python scripts/proof/report.py "$RESULTS" "$OUT"
say "wrote $OUT in $((SECONDS - started)) s"
