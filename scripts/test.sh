#!/usr/bin/env bash
# One command: install what is missing, build, and run every test:
#   1. release-ish build with -Werror: unit tests + fuzz corpus replay
#   2. integration tests (pytest, Debian's /usr/bin/python3) against that binary
#   3. ASan+UBSan build: unit tests + fuzz replay + integration tests again
#   4. libFuzzer (clang): each fuzz target fuzzed for FUZZ_SECONDS (default 20)
# Ends with "N passed, N failed" and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh || { echo "0 passed, 1 failed"; exit 1; }

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
PASS=0; FAIL=0; FAILED_STEPS=()
PY=/usr/bin/python3

count_meson() {  # parse "Ok: N" / "Fail: N" from meson test output
  local log=$1 ok fail
  ok=$(grep -E '^Ok:' "$log" | awk '{print $2}' | tail -1); fail=$(grep -E '^Fail:' "$log" | awk '{print $2}' | tail -1)
  local to; to=$(grep -E '^Timeout:' "$log" | awk '{print $2}' | tail -1)
  PASS=$((PASS + ${ok:-0})); FAIL=$((FAIL + ${fail:-0} + ${to:-0}))
}
count_pytest() {  # parse "N passed, M failed" from pytest -q output
  local log=$1 p f e
  p=$(grep -oE '[0-9]+ passed' "$log" | tail -1 | awk '{print $1}')
  f=$(grep -oE '[0-9]+ failed' "$log" | tail -1 | awk '{print $1}')
  e=$(grep -oE '[0-9]+ error' "$log" | tail -1 | awk '{print $1}')
  PASS=$((PASS + ${p:-0})); FAIL=$((FAIL + ${f:-0} + ${e:-0}))
}
step() {  # step NAME CMD... : run, record failure of the step itself
  local name=$1; shift
  echo "=== $name"
  if "$@"; then return 0; fi
  FAILED_STEPS+=("$name"); return 1
}

LOG=$(mktemp -d)
# 1. normal build
if step "build" bash -c "meson setup build -Dwerror=true --buildtype=debugoptimized >/dev/null 2>&1 || meson setup --reconfigure build -Dwerror=true >/dev/null; ninja -C build"; then
  meson test -C build --print-errorlogs 2>&1 | tee "$LOG/unit.txt" | tail -15
  count_meson "$LOG/unit.txt"
  # 2. integration
  echo "=== integration"
  SKIFF_BIN=$PWD/build/src/skiff timeout 900 $PY -m pytest -q -p no:cacheprovider tests/integration 2>&1 | tee "$LOG/it.txt" | tail -25
  count_pytest "$LOG/it.txt"
else
  FAIL=$((FAIL + 1))
fi

# 3. sanitizers
if step "build-asan" bash -c "meson setup build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false --buildtype=debug >/dev/null 2>&1 || true; ninja -C build-asan"; then
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  meson test -C build-asan --print-errorlogs 2>&1 | tee "$LOG/unit-asan.txt" | tail -15
  count_meson "$LOG/unit-asan.txt"
  echo "=== integration (asan+ubsan)"
  SKIFF_BIN=$PWD/build-asan/src/skiff SKIFF_SANITIZED=1 timeout 1200 $PY -m pytest -q -p no:cacheprovider tests/integration 2>&1 | tee "$LOG/it-asan.txt" | tail -25
  count_pytest "$LOG/it-asan.txt"
  unset ASAN_OPTIONS UBSAN_OPTIONS
else
  FAIL=$((FAIL + 1))
fi

# 4. bounded fuzzing
if [ "$FUZZ_SECONDS" -gt 0 ] && command -v clang >/dev/null; then
  if step "build-fuzz" bash -c "CC=clang meson setup build-fuzz -Dfuzz=true --buildtype=debugoptimized >/dev/null 2>&1 || true; ninja -C build-fuzz"; then
    for f in build-fuzz/tests/fuzz/fuzz_*; do
      [ -f "$f" ] && [ -x "$f" ] || continue   # skip meson's fuzz_*.p directories
      name=$(basename "$f"); short=${name#fuzz_}
      mkdir -p "$LOG/corpus-$short"
      echo "=== fuzz $short (${FUZZ_SECONDS}s)"
      if "$f" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -print_final_stats=1 \
           "$LOG/corpus-$short" "tests/fuzz/corpus/$short" >"$LOG/fuzz-$short.txt" 2>&1; then
        PASS=$((PASS + 1)); grep -E 'stat::number_of_executed_units|Done' "$LOG/fuzz-$short.txt" | tail -2
      else
        FAIL=$((FAIL + 1)); FAILED_STEPS+=("fuzz $short"); tail -40 "$LOG/fuzz-$short.txt"
      fi
    done
  else
    FAIL=$((FAIL + 1))
  fi
fi

[ ${#FAILED_STEPS[@]} -gt 0 ] && echo "failed steps: ${FAILED_STEPS[*]}"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ] && [ "$PASS" -gt 0 ]
