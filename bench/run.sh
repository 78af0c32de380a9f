#!/usr/bin/env bash
# skiff side by side with nghttpx, haproxy and nginx in one run (one worker
# each, pinned), via the shared reference harness. Prints one table.
#   bash bench/run.sh              # ROUNDS=3 by default (~8 min); ROUNDS=1 ~3 min
#   SATURATE=1 bash bench/run.sh   # CPU per request at capacity (see bench/README.md)
#
# SATURATE=1: a busy loop shares the proxy's CPU at the same nice level, so
# every proxy is held at ~50% of that CPU and runs saturated: its CPU time
# per request is then its cost at capacity, with the same batching for all,
# instead of depending on how often a proxy that keeps up goes to sleep.
# Only the CPU columns of such a run mean anything (latency and rps are those
# of a half CPU); memory is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --bench
[ -d build-release ] || meson setup build-release --buildtype=release -Db_ndebug=true >/dev/null
ninja -C build-release >/dev/null
HARNESS=${HARNESS:-../shared/bench/peers.sh}

# Machine stalls are listed at the end (bench/stall_watch.sh).
. bench/stall_watch.sh
HOG=
finish() {
    local rc=$?
    set +e
    [ -n "$HOG" ] && { kill "$HOG"; wait "$HOG"; } 2>/dev/null
    stall_watch_report
    exit "$rc"
}
trap finish EXIT
stall_watch_start

if [ "${SATURATE:-0}" = 1 ]; then
    export BENCH_NICE=0 MAX_NOISE=100 RETRY_BUDGET=0 SKIP_MEM=1
    taskset -c "${PROXY_CPU:-1}" sh -c 'while :; do :; done' &
    HOG=$!
    echo "SATURATE=1: busy loop pid $HOG on cpu ${PROXY_CPU:-1}; read only the CPU us/req columns" >&2
fi

EXTRA_NAME=skiff \
EXTRA_CMD="$PWD/build-release/src/skiff -c {CONFIG} --concurrency 1 -l warn" \
EXTRA_CONFIG_TEMPLATE="$PWD/bench/skiff.yaml.in" \
  bash "$HARNESS"
