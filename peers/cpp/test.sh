#!/usr/bin/env bash
# Smoke test of the C++ peer: the library's selftest (zero copy, unmapping, request/response,
# streams), gold streams node->cpp, cpp->node, cpp->cpp (bytes compared with cmp),
# ARROW1 files cpp->cpp (re-framed stream validated), every fuzz file through `validate` and through
# cpp send -> cpp recv (exit 0 or 1, never a signal), seed-compat both ways, hostile frames, and
# streams by CLI (send --stream / recv --stream, pub / sub) with node and python, both ways.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
run="$root/peers/run"
# ARROW_SHM_CPP_DIR: run the binaries of another build tree (scripts/sanitize.sh: .build/cpp-asan),
# which is then not (re)built here; the default tree is built by build.sh as before.
cppdir="${ARROW_SHM_CPP_DIR:-$root/.build/cpp}"
bin="$cppdir/arrow-shm-cpp"
gold="${ARROW_GOLD:-$root/../shared/testdata/arrow-gold}"
fuzz="${ARROW_FUZZ:-$root/../shared/testdata/arrow-fuzz}"

if [[ -z "${ARROW_SHM_CPP_DIR:-}" ]]; then
  "$here/build.sh" || { echo "build failed"; exit 1; }
fi
[[ -x "$bin" ]] || { echo "no $bin"; exit 1; }
[[ -f "$root/dist/src/cli/main.js" ]] || (cd "$root" && npm run --silent build >&2)

tmp="$(mktemp -d /tmp/arrow-shm-cpp-test.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0 n=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }

# cli LANG: the command of one peer's CLI -> $cmd (an array); cpp is $bin (maybe the override tree).
cli() {
  if [[ $1 == cpp ]]; then cmd=("$bin"); else cmd=("$run" "$1"); fi
}

# Waits until the process $2 printed "listening on" into file $1 (10 s at most).
wait_listening() {
  local i
  for ((i = 0; i < 200; i++)); do
    grep -q "listening on" "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# transfer RECV_LANG SEND_LANG FILE [send flags...]: sets $out, $src (send status), $rrc (recv status)
transfer() {
  local rl="$1" sl="$2" file="$3"
  shift 3
  n=$((n + 1))
  local sock="@arrow-shm-cpp-test-$$-$n"
  out="$tmp/$n.arrows"
  cli "$rl"
  "${cmd[@]}" recv --socket "$sock" --out "$out" --timeout-ms 20000 >/dev/null 2>"$tmp/$n.recv.err" &
  local pid=$!
  if ! wait_listening "$tmp/$n.recv.err" "$pid"; then
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    src=99 rrc=99
    return
  fi
  cli "$sl"
  timeout 30 "${cmd[@]}" send --socket "$sock" --timeout-ms 20000 "$@" "$file" >/dev/null 2>"$tmp/$n.send.err"
  src=$?
  wait "$pid"
  rrc=$?
}

# 0. the library in one process: each "PASS:"/"FAIL:" line of the selftest counts
selftest="$(timeout 60 "$cppdir/arrow-shm-cpp-selftest" 2>&1)"
st=$?
while IFS= read -r line; do
  case "$line" in
    PASS:*) pass ;;
    FAIL:*) fail "selftest ${line#FAIL: }" ;;
  esac
done <<<"$selftest"
grep -q '^PASS:' <<<"$selftest" && [[ $st == 0 ]] || fail "selftest exited with status $st: $(tail -1 <<<"$selftest")"

# 1. gold streams, byte for byte
for f in "$gold"/*/*.stream; do
  name="${f#"$gold"/}"
  for pair in "cpp node" "node cpp" "cpp cpp"; do
    set -- $pair
    transfer "$1" "$2" "$f" --meta name=gold
    if [[ $src == 0 && $rrc == 0 ]] && cmp -s "$f" "$out"; then pass; else
      fail "$2 -> $1 $name (send $src, recv $rrc): $(cat "$tmp/$n.send.err" "$tmp/$n.recv.err" | grep -v listening | head -2)"
    fi
  done
done

# 2. gold ARROW1 files: re-framed as a stream by cpp send, received by cpp, validated
for f in "$gold"/*/*.arrow_file; do
  [[ -e "$f" ]] || continue
  transfer cpp cpp "$f"
  if [[ $src == 0 && $rrc == 0 ]] && "$bin" validate "$out" >/dev/null 2>&1; then pass; else
    fail "arrow_file cpp -> cpp ${f#"$gold"/} (send $src, recv $rrc): $(cat "$tmp/$n.send.err" "$tmp/$n.recv.err" | grep -v listening | head -2)"
  fi
done

# 3. fuzz files: validate and a real transfer must end with status 0 or 1 (1 = a typed error)
for f in "$fuzz"/*; do
  [[ -f "$f" && -s "$f" ]] || continue
  name="$(basename "$f")"
  timeout 20 "$bin" validate "$f" >/dev/null 2>"$tmp/validate.err"
  rc=$?
  if [[ $rc == 0 ]] || { [[ $rc == 1 ]] && grep -q '^arrow-shm: ERR_' "$tmp/validate.err"; }; then pass; else
    fail "validate $name: status $rc $(head -1 "$tmp/validate.err")"
  fi
  transfer cpp cpp "$f"
  if [[ ($src == 0 && $rrc == 0) || ($src == 1 && $rrc == 1) ]]; then pass; else
    fail "fuzz cpp -> cpp $name (send $src, recv $rrc)"
  fi
done

# 4. seed compatibility, both ways with node
seed_check() {  # SENDER RECEIVER FILE
  n=$((n + 1))
  local sock="$tmp/seed-$n" out="$tmp/seed-$n.arrows"
  cli "$1"
  "${cmd[@]}" send --seed-compat --socket "$sock" --timeout-ms 20000 "$3" >/dev/null 2>"$tmp/seed-$n.err" &
  local pid=$! rrc=99
  if wait_listening "$tmp/seed-$n.err" "$pid"; then
    cli "$2"
    timeout 30 "${cmd[@]}" recv --seed-compat --socket "$sock" --out "$out" --timeout-ms 20000 >/dev/null 2>&1
    rrc=$?
  fi
  wait "$pid"
  local src=$?
  if [[ $src == 0 && $rrc == 0 ]] && cmp -s "$3" "$out"; then pass; else fail "seed $1 -> $2 (send $src, recv $rrc)"; fi
}
first="$(ls "$gold"/*/*.stream | head -1)"
seed_check cpp node "$first"
seed_check node cpp "$first"
seed_check cpp cpp "$first"

# 5. hostile TABLE frames (hostile.py): the receiver answers the right ERROR code (exit 1, no crash)
py="$root/.build/venv/bin/python"
hostile() {  # CASE EXPECTED [recv flags...]
  local c="$1" want="$2"
  shift 2
  n=$((n + 1))
  "$bin" recv --socket "@arrow-shm-cpp-test-$$-$n" --timeout-ms 10000 "$@" >/dev/null 2>"$tmp/h$n.err" &
  local pid=$! got=none
  if wait_listening "$tmp/h$n.err" "$pid"; then
    got="$(timeout 10 "$py" "$here/hostile.py" "@arrow-shm-cpp-test-$$-$n" "$c" "$first" 2>&1 | tail -1)"
  fi
  wait "$pid"
  local rc=$?
  if [[ $got == "$want" && ($rc == 0 || $rc == 1) ]]; then pass; else fail "hostile $c: got '$got', recv status $rc"; fi
}
hostile ok ACK
hostile unsealed ERR_SEGMENT_UNSEALED
hostile unsealed ACK --allow-unsealed
hostile notmemfd ERR_SEGMENT_INVALID
hostile misaligned ERR_SEGMENT_BOUNDS
hostile outside ERR_SEGMENT_BOUNDS
hostile zero ERR_SEGMENT_BOUNDS
hostile leased ERR_SEGMENT_UNSEALED
hostile nofd ERR_PROTOCOL

# 6. streams by CLI (PROTOCOL.md §12): the received stream file read by pyarrow equals the input
same_table() {  # EXPECTED RECEIVED [times]: pyarrow reads RECEIVED as EXPECTED's rows `times` times over
  "$py" - "$@" <<'PY' >/dev/null 2>&1
import sys, pyarrow as pa, pyarrow.ipc as ipc
expected = ipc.open_stream(pa.py_buffer(open(sys.argv[1], "rb").read())).read_all()
received = ipc.open_stream(pa.py_buffer(open(sys.argv[2], "rb").read())).read_all()
times = int(sys.argv[3]) if len(sys.argv) > 3 else 1
sys.exit(0 if received.equals(pa.concat_tables([expected] * times)) else 1)
PY
}
stream_transfer() {  # RECV_LANG SEND_LANG FILE [send flags...]: sets $out, $src, $rrc
  local rl="$1" sl="$2" file="$3"
  shift 3
  n=$((n + 1))
  local sock="@arrow-shm-cpp-test-$$-$n"
  out="$tmp/$n.arrows"
  cli "$rl"
  "${cmd[@]}" recv --stream --socket "$sock" --out "$out" --timeout-ms 20000 >/dev/null 2>"$tmp/$n.recv.err" &
  local pid=$!
  if ! wait_listening "$tmp/$n.recv.err" "$pid"; then
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    src=99 rrc=99
    return
  fi
  cli "$sl"
  timeout 30 "${cmd[@]}" send --stream --socket "$sock" --timeout-ms 20000 "$@" "$file" >/dev/null 2>"$tmp/$n.send.err"
  src=$?
  wait "$pid"
  rrc=$?
}
# A file with a dictionary that grows and is replaced, a 64 KiB ring that wraps, and batches too
# big for it (STREAM_SEGMENT).
"$py" - "$tmp/mixed.arrows" <<'PY'
import sys, pyarrow as pa, pyarrow.ipc as ipc
schema = pa.schema([("i", pa.int64()), ("s", pa.string()), ("d", pa.dictionary(pa.int32(), pa.string()))])
with open(sys.argv[1], "wb") as f:
    w = ipc.new_stream(f, schema, options=ipc.IpcWriteOptions(emit_dictionary_deltas=True))
    for b in range(24):
        n = [10, 300, 3000, 20000][b % 4]
        words = [f"w{k}" for k in range(5 + b)] if b < 12 else [f"r{b}-{k}" for k in range(7)]
        d = pa.DictionaryArray.from_arrays(pa.array([k % len(words) for k in range(n)], pa.int32()), pa.array(words))
        w.write_batch(pa.record_batch([pa.array(range(n), pa.int64()), pa.array([f"row{b}-{k}" for k in range(n)]), d], schema=schema))
    w.close()
PY
stream_files=("$gold/1.0.0-littleendian/generated_primitive.stream" "$gold/1.0.0-littleendian/generated_dictionary.stream"
  "$gold/1.0.0-littleendian/generated_nested_dictionary.stream" "$gold/1.0.0-littleendian/generated_nested.stream"
  "$gold/2.0.0-compression/generated_zstd.stream" "$gold/1.0.0-littleendian/generated_primitive_no_batches.stream")
for f in "${stream_files[@]}" "$tmp/mixed.arrows"; do
  for pair in "cpp cpp" "cpp node" "node cpp" "cpp python" "python cpp"; do
    set -- $pair
    stream_transfer "$1" "$2" "$f" --ring-bytes 65536
    if [[ $src == 0 && $rrc == 0 ]] && same_table "$f" "$out"; then pass; else
      fail "stream $2 -> $1 $(basename "$f") (send $src, recv $rrc): $(cat "$tmp/$n.send.err" "$tmp/$n.recv.err" | grep -v listening | head -2)"
    fi
  done
done

# pub / sub: a C++ publication to C++, Node and Python subscribers; Node and Python publications to C++
pubsub() {  # PUB_LANG SUB_LANG...
  local pl="$1" file="$gold/1.0.0-littleendian/generated_dictionary.stream"
  shift
  n=$((n + 1))
  local sock="@arrow-shm-cpp-test-$$-$n" pids=() i=0 rc
  cli "$pl"
  "${cmd[@]}" pub --socket "$sock" --subscribers $# --ring-bytes 65536 --timeout-ms 20000 "$file" "$file" >/dev/null 2>"$tmp/$n.pub.err" &
  local pub=$!
  for s in "$@"; do
    cli "$s"
    timeout 30 "${cmd[@]}" sub --socket "$sock" --out "$tmp/$n.sub$i.arrows" --timeout-ms 20000 >/dev/null 2>"$tmp/$n.sub$i.err" &
    pids+=($!)
    i=$((i + 1))
  done
  i=0
  for s in "$@"; do
    wait "${pids[$i]}"
    rc=$?
    if [[ $rc == 0 ]] && same_table "$file" "$tmp/$n.sub$i.arrows" 2; then pass; else
      fail "pub $pl -> sub $s (status $rc): $(cat "$tmp/$n.sub$i.err" | head -2)"
    fi
    i=$((i + 1))
  done
  wait "$pub" && pass || fail "pub $pl exited with $?: $(grep -v listening "$tmp/$n.pub.err" | head -2)"
}
pubsub cpp cpp node python
pubsub node cpp
pubsub python cpp

# a stream sent to a plain recv (no --stream) is refused at once, not left waiting
n=$((n + 1))
"$bin" recv --socket "@arrow-shm-cpp-test-$$-$n" --timeout-ms 10000 >/dev/null 2>"$tmp/$n.recv.err" &
pid=$!
if wait_listening "$tmp/$n.recv.err" "$pid"; then
  timeout 10 "$bin" send --stream --socket "@arrow-shm-cpp-test-$$-$n" --timeout-ms 10000 "$first" >/dev/null 2>"$tmp/$n.send.err"
  rc=$?
  kill "$pid" 2>/dev/null
  if [[ $rc == 1 ]] && grep -q ERR_INVALID_ARGUMENT "$tmp/$n.send.err"; then pass; else fail "stream to a plain recv: status $rc $(cat "$tmp/$n.send.err")"; fi
fi
wait "$pid" 2>/dev/null

# --help / -h: usage on stdout, status 0, for the program and each command
for args in "--help" "-h" "send --help" "recv --help" "pub -h" "sub --help" "validate --help" "engine --help"; do
  # shellcheck disable=SC2086
  if "$bin" $args 2>/dev/null | grep -q '^Usage: arrow-shm-cpp'; then pass; else fail "help: $args"; fi
done

echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
