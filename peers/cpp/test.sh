#!/usr/bin/env bash
# Smoke test of the C++ peer: the library's selftest (zero copy, unmapping, request/response,
# streams), gold streams node->cpp, cpp->node, cpp->cpp (bytes compared with cmp),
# ARROW1 files cpp->cpp (re-framed stream validated), every fuzz file through `validate` and through
# cpp send -> cpp recv (exit 0 or 1, never a signal), seed-compat both ways, hostile frames, and
# streams by CLI (send --stream / recv --stream, pub / sub) with node and python, both ways, and
# the limits of PROTOCOL §14 against a live receiver (test/python/attacks.py), the validation policy
# (--validate bounds|full|framing) on patched streams, inline tables (§5.3) with Node both ways, and
# the table store client and CLI (§15) against a Node store (test/store_test.cpp).
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

# start_listener LOG COMMAND...: COMMAND in the background (stderr to LOG) -> $pid; true once it
# printed "listening on".
start_listener() {
  local log="$1"
  shift
  "$@" >/dev/null 2>"$log" &
  pid=$!
  wait_listening "$log" "$pid"
}

# transfer RECV_LANG SEND_LANG FILE [send flags...]: sets $out, $src (send status), $rrc (recv
# status); $via (unset, or --stream) goes to both commands.
transfer() {
  local rl="$1" sl="$2" file="$3"
  shift 3
  n=$((n + 1))
  local sock="@arrow-shm-cpp-test-$$-$n"
  out="$tmp/$n.arrows"
  cli "$rl"
  if ! start_listener "$tmp/$n.recv.err" "${cmd[@]}" recv ${via:-} --socket "$sock" --out "$out" --timeout-ms 20000; then
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    src=99 rrc=99
    return
  fi
  local rpid=$pid
  cli "$sl"
  timeout 30 "${cmd[@]}" send ${via:-} --socket "$sock" --timeout-ms 20000 "$@" "$file" >/dev/null 2>"$tmp/$n.send.err"
  src=$?
  # A refused table ends nothing (the receiver waits for the next one): an honest table then.
  [[ $src == 0 || -z ${honest_after:-} ]] || timeout 10 "$bin" send --socket "$sock" --timeout-ms 5000 "$honest_after" >/dev/null 2>&1
  wait "$rpid"
  rrc=$?
}
stream_transfer() { via=--stream transfer "$@"; }

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

# 3. fuzz files: validate must end with status 0 or 1 (1 = a typed error); a real transfer with
# the sender's 0 or 1 and the receiver alive (it then takes an honest table and exits 0)
for f in "$fuzz"/*; do
  [[ -f "$f" && -s "$f" ]] || continue
  name="$(basename "$f")"
  timeout 20 "$bin" validate "$f" >/dev/null 2>"$tmp/validate.err"
  rc=$?
  if [[ $rc == 0 ]] || { [[ $rc == 1 ]] && grep -q '^arrow-shm: ERR_' "$tmp/validate.err"; }; then pass; else
    fail "validate $name: status $rc $(head -1 "$tmp/validate.err")"
  fi
  honest_after="$(ls "$gold"/*/*.stream | head -1)" transfer cpp cpp "$f"
  if [[ ($src == 0 || $src == 1) && $rrc == 0 ]]; then pass; else
    fail "fuzz cpp -> cpp $name (send $src, recv $rrc)"
  fi
done

# 4. seed compatibility, both ways with node
seed_check() {  # SENDER RECEIVER FILE
  n=$((n + 1))
  local sock="$tmp/seed-$n" out="$tmp/seed-$n.arrows"
  cli "$1"
  local rrc=99
  if start_listener "$tmp/seed-$n.err" "${cmd[@]}" send --seed-compat --socket "$sock" --timeout-ms 20000 "$3"; then
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
  local got=none
  if start_listener "$tmp/h$n.err" "$bin" recv --socket "@arrow-shm-cpp-test-$$-$n" --timeout-ms 10000 "$@"; then
    got="$(timeout 10 "$py" "$here/hostile.py" "@arrow-shm-cpp-test-$$-$n" "$c" "$first" 2>&1 | tail -1)"
    # A refused table ends nothing: the receiver then takes an honest sender's table and exits 0.
    [[ $got == ACK ]] || timeout 5 "$bin" send --socket "@arrow-shm-cpp-test-$$-$n" --timeout-ms 5000 "$first" >/dev/null 2>&1
  fi
  wait "$pid"
  local rc=$?
  if [[ $got == "$want" && $rc == 0 ]]; then pass; else fail "hostile $c: got '$got', recv status $rc"; fi
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
# INLINE tables (§5.3): wrong layout or kind is fatal (@0), an fd or LEASED refuses that TABLE (@2)
hostile inline-ok ACK
hostile inline-offset ERR_PROTOCOL@0
hostile inline-short ERR_PROTOCOL@0
hostile inline-kind ERR_PROTOCOL@0
hostile inline-fd ERR_PROTOCOL@2
hostile inline-leased ERR_PROTOCOL@2
hostile inline-garbage ERR_IPC_INVALID@2

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
if start_listener "$tmp/$n.recv.err" "$bin" recv --socket "@arrow-shm-cpp-test-$$-$n" --timeout-ms 10000; then
  timeout 10 "$bin" send --stream --socket "@arrow-shm-cpp-test-$$-$n" --timeout-ms 10000 "$first" >/dev/null 2>"$tmp/$n.send.err"
  rc=$?
  kill "$pid" 2>/dev/null
  if [[ $rc == 1 ]] && grep -q ERR_INVALID_ARGUMENT "$tmp/$n.send.err"; then pass; else fail "stream to a plain recv: status $rc $(cat "$tmp/$n.send.err")"; fi
fi
wait "$pid" 2>/dev/null

# 7. limits (PROTOCOL §14, issue #13): test/python/attacks.py against ONE real `recv` process;
# after each attack the receiver is alive, answered the typed ERROR, serves an honest sender within
# 2 s, and has exactly the fds it had before (compared by what they are) and no memfd mapping.
attacks="$root/test/python/attacks.py"
# 7a. `validate` (the receiver's checks) on the hostile IPC bytes: the typed code, at once
for pair in metadata-bomb:ERR_IPC_LIMIT schema-bomb:ERR_IPC_LIMIT fields-many:ERR_IPC_LIMIT counts-mismatch:ERR_IPC_INVALID; do
  kind="${pair%%:*}" want="${pair#*:}"
  "$py" "$attacks" write "$kind" --out "$tmp/$kind.arrows" >/dev/null 2>&1
  got="$(timeout 5 "$bin" validate "$tmp/$kind.arrows" 2>&1)"
  if [[ $got == "arrow-shm: $want:"* ]]; then pass; else fail "validate $kind: ${got:0:200}"; fi
  rm -f "$tmp/$kind.arrows"
done
lsock="$tmp/limits.sock"
start_listener "$tmp/limits.err" "$bin" recv --socket "$lsock" --count 1000000 --timeout-ms 60000
started=$?
lpid=$pid
open_fds() { for f in /proc/$lpid/fd/*; do readlink "$f"; done 2>/dev/null | sort; }
memfd_maps() { grep -c memfd: /proc/$lpid/maps 2>/dev/null; }
honest() { timeout 2 "$bin" send --socket "$lsock" --timeout-ms 2000 "$first" >/dev/null 2>>"$tmp/limits.send.err"; }
if [[ $started == 0 ]] && honest; then
  fds_before="$(open_fds)"
  attack() {  # NAME EXPECTED-CODE|- KIND [attack flags...]: EXPECTED is a prefix of the ERROR code ("-": none)
    local name="$1" want="$2"
    shift 2
    local got
    got="$(timeout 30 "$py" "$attacks" attack "$@" --socket "$lsock" 2>&1 | tail -1)"
    if [[ $want != - && $got != *"\"code\": \"$want"* ]]; then fail "limits $name: no ERROR $want: ${got:0:200}"
    elif ! kill -0 "$lpid" 2>/dev/null; then fail "limits $name: the receiver died"
    elif ! honest; then fail "limits $name: the honest sender was not served within 2 s"
    elif [[ "$(open_fds)" != "$fds_before" ]]; then fail "limits $name: open fds changed: $(diff <(echo "$fds_before") <(open_fds) | head -3)"
    elif [[ "$(memfd_maps)" != 0 ]]; then fail "limits $name: $(memfd_maps) memfd mappings remain"
    else pass; fi
  }
  attack metadata-bomb ERR_IPC_LIMIT metadata-bomb
  attack schema-bomb ERR_IPC_LIMIT schema-bomb
  attack node-count-bomb ERR_IPC_ node-count-bomb
  attack counts-mismatch ERR_IPC_INVALID counts-mismatch
  attack bad-frame ERR_PROTOCOL bad-frame
  attack bad-ack-version ERR_PROTOCOL_VERSION bad-ack-version
  for v in 0x1 "" -0 1e0 " 1" 01; do attack "hello-version '$v'" ERR_PROTOCOL hello-version --value "$v"; done
  attack inbox-flood - inbox-flood --count 100000 --seconds 3
  attack request-flood - request-flood --count 100000 --seconds 3
  # 300 idle connections (max_connections 256) while an honest sender comes and goes
  timeout 30 "$py" "$attacks" attack idle-connections --count 300 --seconds 4 --socket "$lsock" >"$tmp/idle.out" 2>&1 &
  apid=$!
  sleep 1.5
  if honest; then pass; else fail "limits idle-connections: the honest sender was not served within 2 s"; fi
  wait "$apid"
  if grep -q '"connected": 256' "$tmp/idle.out" && kill -0 "$lpid" 2>/dev/null; then pass; else
    fail "limits idle-connections: $(tail -1 "$tmp/idle.out" | head -c 200)"; fi
  sleep 0.2
  if [[ "$(open_fds)" == "$fds_before" ]]; then pass; else fail "limits idle-connections: fds left: $(diff <(echo "$fds_before") <(open_fds) | head -3)"; fi
else
  fail "limits: the receiver did not start or serve: $(cat "$tmp/limits.err" "$tmp/limits.send.err" 2>/dev/null | head -3)"
fi
# 7b. the socket path (§14.2): a live listener keeps it (ERR_ADDRESS_IN_USE), and a listener
# leaves alone a file that replaced its own
second="$("$bin" recv --socket "$lsock" --timeout-ms 1000 2>&1)"
if [[ $second == *ERR_ADDRESS_IN_USE* ]]; then pass; else fail "a second listener on a live path: $second"; fi
kill "$lpid" 2>/dev/null; wait "$lpid" 2>/dev/null
"$py" -c 'import socket, sys; socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).bind(sys.argv[1])' "$lsock.stale"
start_listener "$tmp/stale.err" "$bin" recv --socket "$lsock.stale" --timeout-ms 2000
started=$?
spid=$pid
if [[ $started == 0 ]]; then pass; else fail "a stale socket file is not replaced: $(cat "$tmp/stale.err")"; fi
rm -f "$lsock.stale"
"$py" -c 'import socket, sys; socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).bind(sys.argv[1])' "$lsock.stale"
wait "$spid"
if [[ -S "$lsock.stale" ]]; then pass; else fail "a listener removed a socket file that is not its own"; fi
# 7c. --out is checked before listening
bad_out="$("$bin" recv --socket "$lsock.out" --out "$tmp/no/such/dir/x.arrows" --timeout-ms 1000 2>&1)"
if [[ $? == 2 && $bad_out == *--out* && ! -e "$lsock.out" ]]; then pass; else fail "recv --out to a missing directory: $bad_out"; fi

# 8. the validation policy (--validate bounds|full|framing, as the Python peer's `validate`): bounds
# (default) checks every offset, index and length but not UTF-8; full also UTF-8; framing nothing
# after decoding. Files pyarrow writes, then patches.
"$py" - "$tmp" <<'PY'
import struct, sys, pyarrow as pa, pyarrow.ipc as ipc
out = sys.argv[1]
def write(name, column):
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, pa.schema([("c", column.type)])) as w:
        w.write_batch(pa.record_batch([column], names=["c"]))
    data = sink.getvalue().to_pybytes()
    open(f"{out}/{name}.arrows", "wb").write(data)
    return data
def patch(name, data, old, new):
    at = data.index(struct.pack(f"<{len(old)}i", *old))
    open(f"{out}/{name}.arrows", "wb").write(data[:at] + struct.pack(f"<{len(new)}i", *new) + data[at + 4 * len(new):])
s = pa.array(["abc", "defgh"])
write("views", pa.StructArray.from_arrays([
    pa.array(["a", "b" * 40], pa.string_view()), pa.array([["a"], ["b", "c"]], pa.list_view(pa.string())),
    pa.RunEndEncodedArray.from_arrays([1, 2], pa.array(["x", "y"])), pa.array([[("k", "v")], []], pa.map_(pa.string(), pa.string())),
    pa.UnionArray.from_dense(pa.array([0, 1], pa.int8()), pa.array([0, 0], pa.int32()), [pa.array(["u"]), pa.array([1])]),
    pa.array(["p", "q"]).dictionary_encode(), pa.array(["l", "m"], pa.large_string())],
    ["sv", "lv", "ree", "map", "union", "dict", "large"]))
bad = pa.array([b"ok", b"\xff\xfe"], pa.binary()).view(pa.string())
write("utf8", bad)
write("utf8-view", pa.array([b"ok", b"\xff" * 20], pa.binary_view()).view(pa.string_view()))
write("utf8-nested", pa.StructArray.from_arrays([pa.ListArray.from_arrays([0, 2], bad)], ["l"]))
patch("offsets", write("offsets", s), [0, 3, 8], [0, 3, 4000])
patch("offsets-nested", write("offsets-nested", pa.ListArray.from_arrays([0, 2], s)), [0, 3, 8], [0, 3, 4000])
patch("index", write("index", pa.DictionaryArray.from_arrays(pa.array([2, 1, 2, 0], pa.int32()), pa.array(["x", "y", "z"]))), [2, 1, 2, 0], [2, 1, 77, 0])
PY
for row in views:ok:ok:ok utf8:ok:ERR_IPC_INVALID:ok utf8-view:ok:ERR_IPC_INVALID:ok utf8-nested:ok:ERR_IPC_INVALID:ok \
  offsets:ERR_IPC_INVALID:ERR_IPC_INVALID:- offsets-nested:ERR_IPC_INVALID:ERR_IPC_INVALID:- index:ERR_IPC_INVALID:ERR_IPC_INVALID:-; do
  IFS=: read -r name bounds full framing <<<"$row"
  got=""
  for mode in bounds full framing; do
    want="${!mode}"
    [[ $want == - ]] && continue  # framing: for trusted senders, nothing to assert
    r="$("$bin" validate --validate "$mode" "$tmp/$name.arrows" 2>&1)"
    if [[ $want == ok ]]; then [[ $r == ok ]]; else [[ $r == "arrow-shm: $want:"* ]]; fi || got+=" $mode: ${r:0:120}"
  done
  if [[ -z $got ]]; then pass; else fail "validate $name:$got"; fi
done
[[ "$("$bin" validate "$tmp/utf8.arrows" 2>&1)" == ok ]] && pass || fail "validate: bounds is not the default"
"$bin" validate --validate strict "$tmp/utf8.arrows" >/dev/null 2>&1
[[ $? == 2 ]] && pass || fail "validate --validate strict: not a usage error"
# live: invalid UTF-8 is taken by a default recv and refused by recv --validate full (the sender
# gets the ERROR); offsets past the data are refused by the default recv
live_validate() {  # FILE EXPECTED(ACK|code) [recv flags...]
  local file="$1" want="$2"
  shift 2
  n=$((n + 1))
  local sock="@arrow-shm-cpp-test-$$-$n" got
  start_listener "$tmp/$n.recv.err" "$bin" recv --socket "$sock" --timeout-ms 10000 "$@" || { fail "live validate: no listener"; return; }
  got="$(timeout 10 "$bin" send --socket "$sock" --timeout-ms 5000 "$file" 2>&1)" && got=ACK
  [[ $got == ACK ]] || timeout 5 "$bin" send --socket "$sock" --timeout-ms 5000 "$first" >/dev/null 2>&1
  wait "$pid"
  local rc=$?
  if [[ ($got == ACK && $want == ACK || $got == *"$want"*) && $rc == 0 ]]; then pass; else fail "live validate $(basename "$file") $*: got '$got', recv status $rc"; fi
}
live_validate "$tmp/utf8.arrows" ACK
live_validate "$tmp/utf8.arrows" ERR_IPC_INVALID --validate full
live_validate "$tmp/offsets.arrows" ERR_IPC_INVALID
live_validate "$tmp/utf8.arrows" ACK --validate framing

# 9. inline tables with Node, both ways: Node sees the C++ side list `inline` and its small table
# arrive with flag INLINE (and not with --max-inline-bytes 0); the C++ receiver takes Node's.
node_inline="$(cd "$root" && timeout 60 node --input-type=module - "$bin" "$first" "$tmp" <<'JS' 2>&1
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
const { listen, connect, FrameFlags } = await import(process.cwd() + '/dist/src/index.js');
const [bin, file, tmp] = process.argv.slice(2);
const bytes = new Uint8Array(readFileSync(file));
const out = [];
for (const extra of [[], ['--max-inline-bytes', '0']]) {
  const address = `${tmp}/node-inline-${extra.length}.sock`;
  const listener = await listen(address);
  const child = spawn(bin, ['send', '--socket', address, '--timeout-ms', '10000', ...extra, file], { stdio: 'inherit' });
  const channel = await listener.accept();
  const message = await channel.receive();
  out.push(`cpp->node${extra.length ? ' max-inline-0' : ''}: ${message.flags & FrameFlags.INLINE ? 'inline' : 'segment'} ${Buffer.from(message.bytes).equals(bytes) ? 'equal' : 'differs'}`);
  message.close();
  await new Promise((resolve) => child.on('exit', resolve));
  channel.close();
  listener.close();
}
const address = `${tmp}/cpp-inline.sock`;
const recv = spawn(bin, ['recv', '--socket', address, '--out', `${tmp}/from-node.arrows`, '--timeout-ms', '10000'], { stdio: ['ignore', 'ignore', 'pipe'] });
await new Promise((resolve) => recv.stderr.on('data', (d) => String(d).includes('listening on') && resolve()));
const channel = await connect(address, { timeoutMs: 10000 });
await channel.send(bytes);
out.push(`node->cpp: peer lists ${channel.peer.capabilities.includes('inline') ? 'inline' : 'no inline'}`);
channel.close();
await new Promise((resolve) => recv.on('exit', resolve));
console.log(out.join('\n'));
JS
)"
for want in "cpp->node: inline equal" "cpp->node max-inline-0: segment equal" "node->cpp: peer lists inline"; do
  grep -qxF "$want" <<<"$node_inline" && pass || fail "inline with node: no '$want' in: ${node_inline:0:300}"
done
cmp -s "$first" "$tmp/from-node.arrows" && pass || fail "inline node -> cpp: the received stream differs"

# 10. the table store (PROTOCOL §15) with a real Node store: Node puts every gold stream as
# node/PATH; arrow-shm-cpp-store-test gets each byte for byte, puts its own as cpp/PATH (and runs its
# API, hold, watch, hostile fake-store and leak checks); Node gets those byte for byte; then the
# CLI (put / get / ls / rm) both ways with Node's.
store_node() {  # put|check STORE: Node's side of the gold round trip; "PASS:"/"FAIL:" lines
  (cd "$root" && timeout 60 node --input-type=module - "$@" "$gold" <<'JS' 2>&1
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
const { openStore } = await import(process.cwd() + '/dist/src/index.js');
const [mode, address, gold] = process.argv.slice(2);
const store = await openStore(address, { timeoutMs: 10000 });
for (const rel of readdirSync(gold, { recursive: true }).filter((f) => f.endsWith('.stream')).sort()) {
  const bytes = readFileSync(join(gold, rel));
  if (mode === 'put') {
    await store.put(`node/${rel}`, bytes, { replace: true });
    continue;
  }
  try {
    const m = await store.get(`cpp/${rel}`);
    const same = Buffer.from(m.bytes).equals(bytes) && m.metadata.from === 'cpp';
    console.log(same ? `PASS: gold cpp -> node ${rel}` : `FAIL: gold cpp -> node ${rel}: differs`);
    m.close();
  } catch (e) {
    console.log(`FAIL: gold cpp -> node ${rel}: ${e.code} ${e.message}`);
  }
}
store.close();
console.log('PASS: node done');
JS
  )
}
count_lines() {  # WHAT OUTPUT: each "PASS:"/"FAIL:" line counts; none at all fails
  local line seen=0
  while IFS= read -r line; do
    case "$line" in
      PASS:*) pass; seen=1 ;;
      FAIL:*) fail "store ${line#FAIL: }"; seen=1 ;;
    esac
  done <<<"$2"
  [[ $seen == 1 ]] || fail "store $1 printed no result: $(tail -3 <<<"$2")"
}
n=$((n + 1))
ssock="@arrow-shm-cpp-test-$$-store"
if ! command -v node >/dev/null || [[ ! -f "$root/dist/src/store/client.js" ]]; then
  fail "store: needs node and the built Node package (dist/src/store/client.js: npx tsc -p .)"
elif ! start_listener "$tmp/store.err" node "$root/dist/src/cli/main.js" store --socket "$ssock"; then
  fail "store: the Node store did not start: $(head -3 "$tmp/store.err")"
else
  stpid=$pid
  count_lines "node put" "$(store_node put "$ssock")"
  st_out="$(timeout 60 "$cppdir/arrow-shm-cpp-store-test" "$ssock" "$gold" 2>&1)"
  st=$?
  count_lines test "$st_out"
  [[ $st == 0 ]] || fail "store test exited with status $st: $(grep -v '^PASS' <<<"$st_out" | tail -3)"
  count_lines "node check" "$(store_node check "$ssock")"
  # the CLI: put (its output line is Node's), get --out by the other peer, ls, rm
  f="$gold/1.0.0-littleendian/generated_primitive.stream"
  got="$("$bin" put --store "$ssock" cli/a "$f" --meta k=v --timeout-ms 5000 2>&1)"
  want="$(node "$root/dist/src/cli/main.js" put --store "$ssock" cli/b "$f" --meta k=v 2>&1)"
  same_put() { sed -E 's/^cli\/[ab]\tversion [0-9]+\t/cli\/X\tversion N\t/' <<<"$1"; }  # one version each
  if [[ "$(same_put "$got")" == "$(same_put "$want")" && $got == "cli/a	version "*" rows" ]]; then pass; else fail "store cli put: '$got' vs Node's '$want'"; fi
  node "$root/dist/src/cli/main.js" get --store "$ssock" cli/a --out "$tmp/cli-a.arrows" >/dev/null 2>&1
  "$bin" get --store "$ssock" cli/b --out "$tmp/cli-b.arrows" >/dev/null 2>&1
  if cmp -s "$f" "$tmp/cli-a.arrows" && cmp -s "$f" "$tmp/cli-b.arrows"; then pass; else fail "store cli: get --out differs (cpp put -> node get, node put -> cpp get)"; fi
  printed="$("$bin" get --store "$ssock" cli/b --print 2>&1 | head -2)"
  [[ $printed == *"metadata: k=v, arrow-shm.name=cli/b, arrow-shm.version="* ]] && pass || fail "store cli get --print: ${printed:0:200}"
  got="$("$bin" ls --store "$ssock" --prefix cli/ 2>&1)"
  want="$(node "$root/dist/src/cli/main.js" ls --store "$ssock" --prefix cli/ 2>&1)"
  if [[ $(cut -f1-3 <<<"$got") == "$(cut -f1-3 <<<"$want")" && $(wc -l <<<"$got") == 2 ]]; then pass; else fail "store cli ls: '$got' vs Node's '$want'"; fi
  "$bin" rm --store "$ssock" cli/a && "$bin" rm --store "$ssock" cli/b && pass || fail "store cli rm: status $?"
  got="$("$bin" get --store "$ssock" cli/a 2>&1)"
  [[ $? == 1 && $got == "arrow-shm: ERR_NOT_FOUND:"* ]] && pass || fail "store cli get after rm: $got"
  # a get that waits: the put comes 300 ms later
  ( sleep 0.3; "$bin" put --store "$ssock" cli/late "$f" >/dev/null 2>&1 ) &
  "$bin" get --store "$ssock" cli/late --timeout-ms 10000 --out "$tmp/cli-late.arrows" >/dev/null 2>&1 && cmp -s "$f" "$tmp/cli-late.arrows" && pass || fail "store cli get --timeout-ms: no table"
  wait $!
  # every hold was released: the store lists holds 0 for each name
  holds="$(cd "$root" && node --input-type=module -e "const { openStore } = await import(process.cwd() + '/dist/src/index.js'); const s = await openStore('$ssock'); console.log((await s.list()).filter((e) => e.holds !== 0).length); s.close();" 2>&1)"
  [[ $holds == 0 ]] && pass || fail "store: names still held after every client left: $holds"
  kill "$stpid" 2>/dev/null
  wait "$stpid" 2>/dev/null
fi

# --help / -h: usage on stdout, status 0, for the program and each command
for args in "--help" "-h" "send --help" "recv --help" "pub -h" "sub --help" "validate --help" "engine --help" \
  "put --help" "get -h" "ls --help" "rm --help"; do
  # shellcheck disable=SC2086
  if "$bin" $args 2>/dev/null | grep -q '^Usage: arrow-shm-cpp'; then pass; else fail "help: $args"; fi
done

echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
