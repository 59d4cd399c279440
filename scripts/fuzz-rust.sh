#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, via the `libfuzzer-sys` crate and rustc's built-in
# SanitizerCoverage) of the Rust peer's parsers: peers/rust/fuzz/fuzz_targets/*.rs.
#
#   FUZZ_SECONDS=30        seconds of fuzzing per target (-max_total_time)
#   FUZZ_TARGETS="a b"     only these targets (default: all)
#   FUZZ_SANITIZER=address address (ASan) or none
#   FUZZ_MAX_LEN=65536     libFuzzer -max_len
#
# Builds into .build/rust-fuzz (cargo skips the build when up to date), replays the regression
# inputs in peers/rust/fuzz/crashers/<target>/ first, then fuzzes each target with the seed
# corpora (../shared/testdata, copied to .build) and a persistent corpus under .build.
# A new crash is minimized and saved to peers/rust/fuzz/crashers/<target>/. Exits non-zero if
# any target crashed (in replay or fuzzing). Needs the nightly Rust toolchain, g++ and python3.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
shared="$root/../shared"
fuzzdir="$root/peers/rust/fuzz"
out="$root/.build/rust-fuzz"
seconds="${FUZZ_SECONDS:-30}"
sanitizer="${FUZZ_SANITIZER:-address}"
max_len="${FUZZ_MAX_LEN:-65536}"
triple="x86_64-unknown-linux-gnu"
all_targets="frame_decode kv_decode ipc_validate ipc_decode segment_open channel_accept ring_record"
targets="${FUZZ_TARGETS:-$all_targets}"

die() { echo "fuzz-rust: error: $*" >&2; exit 2; }

command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
command -v rustup >/dev/null || die "rustup not found: the nightly toolchain is needed (rustup toolchain install nightly)"
rustup toolchain list 2>/dev/null | grep -q '^nightly' \
  || die "the Rust nightly toolchain is not installed; run: rustup toolchain install nightly"
cargo +nightly --version >/dev/null 2>&1 || die "'cargo +nightly' does not work; check: rustup run nightly cargo --version"
command -v g++ >/dev/null || die "g++ not found (libfuzzer-sys compiles libFuzzer's C++ sources with it)"
command -v python3 >/dev/null || die "python3 not found (used to generate seed inputs)"
[ -d "$shared/testdata" ] || die "shared test data not found at $shared/testdata"

mkdir -p "$out"

# ---- build (idempotent: cargo does nothing when up to date) ---------------------------------
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
case "$sanitizer" in
  address) flags+=" -Zsanitizer=address" ;;
  none) ;;
  *) die "FUZZ_SANITIZER must be 'address' or 'none'" ;;
esac
echo "fuzz-rust: building fuzz targets (sanitizer: $sanitizer) into $out"
(
  flock 9
  # --target: sanitizer flags must not reach build scripts and proc macros
  RUSTFLAGS="$flags" cargo +nightly build --quiet --release --target "$triple" \
    --manifest-path "$fuzzdir/Cargo.toml" --target-dir "$out"
) 9>"$out/.build.lock" || die "build failed"
bindir="$out/$triple/release"

# ---- seeds: copied/generated under .build, never written into ../shared ---------------------
seeds="$out/seeds"
rm -rf "$seeds"
for t in $all_targets; do mkdir -p "$seeds/$t"; done
python3 - "$shared/testdata" "$seeds" "$max_len" <<'PY' || die "seed generation failed"
import glob, os, struct, sys
testdata, seeds, max_len = sys.argv[1], sys.argv[2], int(sys.argv[3])

def kv(pairs):
    if not pairs:
        return b""
    out = struct.pack("<I", len(pairs))
    for k, v in pairs:
        for s in (k.encode(), v.encode()):
            out += struct.pack("<I", len(s)) + s
    return out

def frame(kind, flags=0, mid=1, cid=0, off=0, length=0, fds=0, meta=()):
    m = kv(list(meta))
    return (b"ASHM" + struct.pack("<HBBII", 1, kind, flags, 64, len(m))
            + struct.pack("<QQQQI", mid, cid, off, length, fds) + bytes(12) + m)

def put(target, name, data):
    with open(os.path.join(seeds, target, name), "wb") as f:
        f.write(data)

hello = [("min_version", "1"), ("max_version", "1"), ("capabilities", ""),
         ("implementation", "arrow-shm-py/0.1.0"), ("pid", "1234")]
welcome = [("version", "1"), ("capabilities", "lease,x"), ("implementation", "a"),
           ("pid", "1"), ("max_message_bytes", "17179869184")]
error = [("code", "ERR_IPC_INVALID"), ("message", "bad stream")]
frames = {
    "hello": frame(1, meta=hello), "welcome": frame(2, meta=welcome),
    "table": frame(3, 0x02, 5, 0, 0, 4096, 1, [("name", "x")]), "ack": frame(4, 0, 2, 5),
    "release": frame(5, 0, 3, 5), "error": frame(6, 0x04, 4, 5, meta=error), "goodbye": frame(7),
}
for name, f in frames.items():
    put("frame_decode", name, f)
    put("kv_decode", name, f[64:])
put("kv_decode", "zero-count", struct.pack("<I", 0))

streams = sorted(glob.glob(os.path.join(testdata, "arrow-gold", "*", "*.stream")))
fuzz = sorted(glob.glob(os.path.join(testdata, "arrow-fuzz", "*")))
for p in streams + fuzz:
    data = open(p, "rb").read()
    if len(data) > max_len - 128 or p.endswith(".md"):
        continue
    name = os.path.basename(os.path.dirname(p)) + "__" + os.path.basename(p)
    put("ipc_validate", name, data)
    put("ipc_decode", name, data)
    # segment_open: seal everything, decode; exact range, and the seed-compat path
    put("segment_open", name, bytes([0x4F]) + struct.pack("<QQQ", 0, len(data), 1 << 34) + data)
    put("segment_open", "seed__" + name, bytes([0xEF]) + struct.pack("<QQQ", 0, 0, 1 << 34) + data)
    # channel_accept: canonical HELLO, then a TABLE frame with a sealed memfd, decode
    t = frame(3, 0, 2, 0, 0, len(data), 1, [("name", "t")])
    put("channel_accept", name, bytes([0x0F]) + struct.pack("<H", len(t)) + t + data)
h = frames["hello"]
for name in ("ack", "error", "goodbye", "release", "welcome"):
    f = frames[name]
    put("channel_accept", "hello-" + name,
        bytes([0x00]) + struct.pack("<H", len(h)) + h + struct.pack("<H", len(f)) + f)
put("channel_accept", "hello-only", bytes([0x00]) + struct.pack("<H", len(h)) + h)
# ipc_validate's structure-aware recipes (0xA5, shape, refs, length, depth, extra): shared
# offsets over and under the §14.1 limits, deep nesting, counts, many small messages
recipes = {"metadata-share": (0, 200, 1000, 0, 0), "metadata-share-ok": (0, 200, 100, 0, 0),
           "fields-share": (1, 500, 10, 0, 0), "fields-share-ok": (1, 200, 10, 0, 0),
           "nesting-over": (2, 0, 0, 61, 0), "nesting-ok": (2, 0, 0, 60, 0),
           "counts": (3, 2, 0, 0, 5), "counts-ok": (3, 1, 0, 0, 2), "many-messages": (4, 255, 0, 0, 0)}
for name, (shape, refs, length, depth, extra) in recipes.items():
    put("ipc_validate", "recipe-" + name, bytes([0xA5, shape]) + struct.pack("<II", refs, length) + bytes([depth, extra]))
PY

# ---- replay + fuzz ----------------------------------------------------------------------------
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:symbolize=1:detect_odr_violation=0}"
failed=0
summary=()
findings=()
for t in $targets; do
  bin="$bindir/$t"
  [ -x "$bin" ] || die "no fuzz target binary $bin (unknown target '$t'?)"
  crashers="$fuzzdir/crashers/$t"
  corpus="$out/corpus/$t"
  artifacts="$out/artifacts/$t"
  log="$out/logs/$t.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  status="ok"

  mapfile -t regress < <(find "$crashers" -type f ! -name '*.md' 2>/dev/null | sort)
  if [ "${#regress[@]}" -gt 0 ]; then
    if ! "$bin" -timeout=10 -rss_limit_mb=2048 "${regress[@]}" >"$out/logs/$t.replay.log" 2>&1; then
      echo "fuzz-rust: $t: a regression input in $crashers still crashes (see $out/logs/$t.replay.log)" >&2
      status="REGRESSION"
      failed=1
    fi
  fi

  rm -f "$artifacts"/crash-* "$artifacts"/timeout-* "$artifacts"/oom-* "$artifacts"/leak-*
  echo "fuzz-rust: $t: fuzzing ${seconds}s (log: $log)"
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" "$seeds/$t" >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | grep 'cov:' | tail -1)
  [ -n "$execs" ] || execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
  cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+')
  ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+')
  ncorp=$(find "$corpus" -type f | wc -l)
  artifact=$(find "$artifacts" -type f | head -1)
  if [ "$rc" -ne 0 ] || [ -n "$artifact" ]; then
    failed=1
    status="CRASH"
    if [ -n "$artifact" ]; then
      mkdir -p "$crashers"
      kind=$(basename "$artifact" | cut -d- -f1)
      min="$crashers/$kind-$(sha1sum "$artifact" | cut -c1-16)"
      "$bin" -minimize_crash=1 -max_total_time=30 -timeout=10 -rss_limit_mb=2048 \
        -exact_artifact_path="$min" "$artifact" >"$out/logs/$t.minimize.log" 2>&1
      [ -s "$min" ] || cp "$artifact" "$min"
      echo "fuzz-rust: $t: crash saved to $min (original $artifact); reproduce: $bin $min" >&2
    fi
    grep -m1 -E "panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer|SUMMARY" "$log" >&2 || tail -20 "$log" >&2
  fi
  while IFS= read -r line; do
    findings+=("$t: ${line#arrow-shm-fuzz: }")
  done < <(cat "$out/logs/$t.replay.log" "$log" 2>/dev/null | grep '^arrow-shm-fuzz: tolerated' | sort -u)
  summary+=("$(printf '%-15s %-10s execs=%-9s cov=%-6s ft=%-6s corpus=%s' "$t" "$status" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$ncorp")")
done

echo "fuzz-rust: summary (${seconds}s per target, sanitizer: $sanitizer)"
printf '  %s\n' "${summary[@]}"
if [ "${#findings[@]}" -gt 0 ]; then
  echo "fuzz-rust: arrow-rs panics caught by decode_stream (typed ERR_IPC_INVALID; upstream bugs, not crashes):"
  printf '  %s\n' "${findings[@]}"
fi
exit "$failed"
