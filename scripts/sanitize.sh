#!/usr/bin/env bash
# Sanitizer run (issue #7): AddressSanitizer + UndefinedBehaviorSanitizer (g++) over
#   1. the C++ peer, built into .build/cpp-asan (-DARROW_SHM_SANITIZE=ON; the normal .build/cpp is
#      untouched): its selftest, then peers/cpp/test.sh against the sanitized binaries;
#   2. the mutation fuzzer arrow-shm-cpp-fuzz (peers/cpp/test/fuzz.cpp; blind mutations, NOT
#      coverage guided: there is no clang/libFuzzer here) over the fuzz + gold corpus, and a replay
#      of the saved crashers in peers/cpp/test/crashers;
#   3. the Node addon, built with ASan+UBSan into .build/node-asan (build/Release/arrow_shm.node is
#      untouched) and loaded through ARROW_SHM_NATIVE (src/native.ts), running native-level Node tests with
#      g++'s libasan preloaded (node/V8 are not instrumented, so leak detection is off there).
# Usage: scripts/sanitize.sh [cpp|fuzz|node]...   (default: all; FUZZ_ITERATIONS=50000, NODE_TESTS="channel frame limits stream")
# Libarrow (from the pyarrow wheel) is not instrumented: ASan still sees our code's accesses to
# memory it allocates, but not bugs inside libarrow itself.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(cpp fuzz node)
want() { local p; for p in "${parts[@]}"; do [[ $p == "$1" ]] && return 0; done; return 1; }

san_common="halt_on_error=1:print_stacktrace=1"
export UBSAN_OPTIONS="$san_common"
# allocator_may_return_null: a hostile length may ask Arrow for an absurd allocation; Arrow must
# turn the failure into a Status (ERR_TOO_LARGE), not have ASan abort the process.
asan_cpp="$san_common:detect_leaks=1:allocator_may_return_null=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="suppressions=$root/scripts/lsan.supp:print_suppressions=0"
status=0
summary=()
note() { summary+=("$1"); echo "== $1"; }

out="$root/.build/cpp-asan"
build_cpp() {
  scripts/ensure-venv.sh >&2 || return 1
  local py="$root/.build/venv/bin/python"
  mkdir -p "$out"
  if [[ ! -f "$out/build.ninja" ]]; then
    local inc libdir lib
    inc="$("$py" -c 'import pyarrow; print(pyarrow.get_include())')"
    libdir="$("$py" -c 'import pyarrow; print(pyarrow.get_library_dirs()[0])')"
    lib="$(ls "$libdir"/libarrow.so.* 2>/dev/null | grep -E 'libarrow\.so\.[0-9]+$' | head -n1)"
    cmake -S peers/cpp -B "$out" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DARROW_SHM_SANITIZE=ON -DARROW_SHM_FUZZ=ON \
      -DARROW_INCLUDE_DIR="$inc" -DARROW_LIBRARY="$lib" >"$out/.configure.log" 2>&1 \
      || { cat "$out/.configure.log" >&2; return 1; }
  fi
  cmake --build "$out" -- -j2 >"$out/.build.log" 2>&1 || { tail -40 "$out/.build.log" >&2; return 1; }
}

if want cpp || want fuzz; then
  if build_cpp; then note "cpp-asan build: ok"; else note "cpp-asan build: FAILED"; status=1; parts=("${parts[@]/cpp/}"); parts=("${parts[@]/fuzz/}"); fi
fi

if want cpp; then
  log="$(ASAN_OPTIONS="$asan_cpp" timeout 300 "$out/arrow-shm-cpp-selftest" 2>&1)"
  rc=$?
  printf '%s\n' "$log" | grep -Ev '^PASS:' || true
  np="$(grep -c '^PASS:' <<<"$log")"; nf="$(grep -c '^FAIL:' <<<"$log")"
  if [[ $rc == 0 && $nf == 0 ]]; then note "selftest (asan+ubsan): $np passed, 0 failed"; else
    note "selftest (asan+ubsan): $np passed, $nf failed, exit $rc"; status=1; fi
  # Every sanitized process of test.sh (send, recv, validate) shares these options; a report
  # exits with a non-0/1 status, which test.sh counts as a failure ("never a signal").
  tlog="$(ASAN_OPTIONS="$asan_cpp:exitcode=86" UBSAN_OPTIONS="$san_common:exitcode=86" \
    ARROW_SHM_CPP_DIR="$out" peers/cpp/test.sh 2>&1)"
  rc=$?
  printf '%s\n' "$tlog" | tail -15
  note "peers/cpp/test.sh (asan+ubsan binaries): $(tail -1 <<<"$tlog")"
  [[ $rc == 0 ]] || status=1
fi

if want fuzz; then
  corpus=("$root/../shared/testdata/arrow-fuzz" "$root"/../shared/testdata/arrow-gold/*/)
  [[ -n "${ARROW_FUZZ:-}" ]] && corpus[0]="$ARROW_FUZZ"
  crashers="$root/peers/cpp/test/crashers"
  saved="$(find "$crashers" -maxdepth 1 -type f -name 'crash-*' 2>/dev/null | wc -l)"
  if [[ $saved -gt 0 ]]; then
    # A replay that crashes again writes into a scratch folder (the saved crashers stay as they are).
    replayed="$out/replayed-crashers"
    rm -rf "$replayed" && mkdir -p "$replayed"
    if ASAN_OPTIONS="$asan_cpp" timeout 120 "$out/arrow-shm-cpp-fuzz" --crashers "$replayed" --replay "$crashers" >/dev/null; then
      note "fuzz: replay of $saved saved crashers: ok"
    else note "fuzz: replay of saved crashers: FAILED"; status=1; fi
  fi
  flog="$(ASAN_OPTIONS="$asan_cpp" timeout 900 "$out/arrow-shm-cpp-fuzz" --crashers "$crashers" \
    --iterations "${FUZZ_ITERATIONS:-50000}" "${corpus[@]}" 2>&1)"
  rc=$?
  printf '%s\n' "$flog" | tail -30
  if [[ $rc == 0 ]]; then note "fuzz: $(tail -1 <<<"$flog")"; else note "fuzz: FAILED (exit $rc)"; status=1; fi
fi

if want node; then
  nout="$root/.build/node-asan"
  libasan="$(gcc -print-file-name=libasan.so)"
  rm -rf "$nout/build"
  mkdir -p "$nout/native"
  cp binding.gyp "$nout/" && cp native/* "$nout/native/"
  nodedir="$(dirname "$(dirname "$(command -v node)")")"
  gyp="$root/node_modules/node-gyp/bin/node-gyp.js"
  # node-gyp's Makefile appends $CFLAGS / $LDFLAGS to the binding.gyp flags.
  if (cd "$nout" && CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g" \
      LDFLAGS="-fsanitize=address,undefined" node "$gyp" rebuild --nodedir="$nodedir" --loglevel=warn) >"$nout/.build.log" 2>&1 \
      && nm -D "$nout/build/Release/arrow_shm.node" | grep __asan_report >/dev/null; then
    note "node addon asan build: ok ($nout/build/Release/arrow_shm.node)"
    # dist/src/native.js loads $ARROW_SHM_NATIVE instead of build/Release/arrow_shm.node.
    grep -q ARROW_SHM_NATIVE dist/src/native.js 2>/dev/null || npx --no-install tsc -p .
    export ARROW_SHM_NATIVE="$nout/build/Release/arrow_shm.node"
    # Make sure the tests really load the sanitized addon (not build/Release/arrow_shm.node).
    loaded="$(LD_PRELOAD="$libasan" ASAN_OPTIONS="detect_leaks=0" node --input-type=module -e \
      "await import('$root/dist/src/native.js'); const fs = await import('node:fs'); console.log(fs.readFileSync('/proc/self/maps', 'utf8').includes('$ARROW_SHM_NATIVE'))" 2>&1)"
    if [[ $loaded == true ]]; then note "node: ARROW_SHM_NATIVE loads the sanitized addon"; else
      note "node: the sanitized addon is not the one loaded ($loaded)"; status=1; fi
    tests=()
    for t in ${NODE_TESTS:-channel frame limits stream}; do [[ -f "dist/test/$t.test.js" ]] && tests+=("dist/test/$t.test.js"); done
    nlog="$(LD_PRELOAD="$libasan" ASAN_OPTIONS="$san_common:detect_leaks=0" timeout 300 node --test --test-force-exit --test-concurrency=1 "${tests[@]}" 2>&1)"
    rc=$?
    printf '%s\n' "$nlog" | grep -E '^# (tests|pass|fail|cancelled)|^not ok|ERROR: (Address|Undefined)|runtime error' | head -30
    if grep -qE 'ERROR: AddressSanitizer|runtime error:' <<<"$nlog"; then rc=99; printf '%s\n' "$nlog" | grep -A30 -E 'ERROR: AddressSanitizer|runtime error:' | head -60; fi
    note "node tests (asan addon: ${tests[*]##*/}): $(grep -E '^# pass' <<<"$nlog") $(grep -E '^# fail' <<<"$nlog"), exit $rc"
    [[ $rc == 0 ]] || status=1
  else
    tail -30 "$nout/.build.log"
    note "node addon asan build: FAILED"
    status=1
  fi
fi

echo
echo "sanitize.sh summary:"
printf '  %s\n' "${summary[@]}"
exit $status
