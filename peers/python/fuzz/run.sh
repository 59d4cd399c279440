#!/usr/bin/env bash
# Fuzz the Python peer's parsers with atheris: replay the kept crashers, then fuzz for
# ${FUZZ_SECONDS:-30} s. Exits non-zero on a crash. Optional: FUZZ_TARGET=<name> (see fuzz_parsers.py),
# FUZZ_ARGS="extra libFuzzer args". Runnable from any directory.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
venv="$root/.build/venv"
py="$venv/bin/python"
harness="$here/fuzz_parsers.py"
work="$root/.build/fuzz"
seconds="${FUZZ_SECONDS:-30}"
export ARROW_SHM_SHARED="${ARROW_SHM_SHARED:-$root/../shared}"
# libFuzzer re-runs the script by itself (-minimize_crash, -fork): its shebang must find the venv.
export PATH="$venv/bin:$PATH"

if [[ ! -x "$py" ]]; then
  bash "$root/scripts/ensure-venv.sh"
fi
if ! "$py" -c 'import atheris' 2>/dev/null; then
  echo "fuzz: installing atheris from peers/python/requirements-fuzz.lock" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/peers/python/requirements-fuzz.lock"
fi

mkdir -p "$work/corpus" "$work/artifacts"
rm -rf "$work/seeds"
if ! "$py" "$harness" --make-seeds "$work/seeds" >"$work/seeds.log" 2>&1; then
  cat "$work/seeds.log" >&2
  exit 1
fi

common=(-rss_limit_mb=2048 -timeout=10 "-artifact_prefix=$work/artifacts/")

shopt -s nullglob
crashers=("$here"/crashers/*)
if (( ${#crashers[@]} )); then
  echo "fuzz: replaying ${#crashers[@]} crasher(s) from peers/python/fuzz/crashers/"
  if ! "$py" "$harness" "${common[@]}" "${crashers[@]}" >"$work/replay.log" 2>&1; then
    cat "$work/replay.log" >&2
    echo "fuzz: FAIL: a kept crasher crashes again (log above)" >&2
    exit 1
  fi
fi

echo "fuzz: fuzzing for ${seconds}s (corpus .build/fuzz/corpus, seeds .build/fuzz/seeds)"
set +e
# shellcheck disable=SC2086
"$py" "$harness" "${common[@]}" -max_total_time="$seconds" -print_final_stats=1 ${FUZZ_ARGS:-} \
  "$work/corpus" "$work/seeds" >"$work/fuzz.log" 2>&1
rc=$?
set -e
last="$(grep -E '^#[0-9]+' "$work/fuzz.log" | tail -n 1 || true)"
execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz.log" | tail -n 1)"
cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
corp="$(sed -n 's/.* corp: \([0-9]*\/[^ ]*\).*/\1/p' <<<"$last")"
eps="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/fuzz.log" | tail -n 1)"
if (( rc != 0 )); then
  grep -vE '^INFO: Instrumenting' "$work/fuzz.log" | tail -n 60 >&2
  echo "fuzz: CRASH (exit $rc) after ${execs:-?} execs; artifacts in $work/artifacts/ (log $work/fuzz.log)" >&2
  exit "$rc"
fi
echo "fuzz: OK ${seconds}s execs=${execs:-?} exec/s=${eps:-?} cov=${cov:-?} ft=${ft:-?} corpus=${corp:-?}"
