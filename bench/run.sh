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

# Whole-machine stalls: this VM is sometimes frozen for ~100 ms at a time
# (seen on both CPUs at once by a nice -20 sleeper, 2026-12-06). wrk's
# latency histogram back-fills the requests a stalled connection did not send
# (coordinated-omission correction), so one such stall during an h1 trial
# makes that trial's p99 tens of ms. A sleeper on each CPU (10 ms naps) logs
# every wake-up over 50 ms late, so such trials can be told apart (listed at the end).
STALLS=$(mktemp -d /tmp/skiff-bench-stalls.XXXXXX)
BG=()
finish() {
    local rc=$?
    set +e
    [ ${#BG[@]} -gt 0 ] && { kill "${BG[@]}" 2>/dev/null; wait "${BG[@]}" 2>/dev/null; }
    echo
    if cat "$STALLS"/cpu* 2>/dev/null | grep -q .; then
        echo "Machine stalls during this run (a sleeper on each CPU woke > 50 ms late; trials"
        echo "ending shortly after these times have inflated p99 and lower rps):"
        sort "$STALLS"/cpu* | sed 's/^/  /'
    else
        echo "No machine stall over 50 ms during this run."
    fi
    rm -rf "$STALLS"
    exit "$rc"
}
trap finish EXIT
for cpu in 0 1; do
    taskset -c "$cpu" /usr/bin/python3 -c '
import sys, time
cpu = sys.argv[1]
last = time.monotonic()
while True:
    time.sleep(0.010)
    t = time.monotonic()
    if t - last > 0.060:
        print(time.strftime("%H:%M:%S"), "cpu" + cpu, "stalled %.0f ms" % ((t - last - 0.010) * 1e3), flush=True)
    last = t
 ' "$cpu" >"$STALLS/cpu$cpu" 2>/dev/null &
    BG+=($!)
done

if [ "${SATURATE:-0}" = 1 ]; then
    export BENCH_NICE=0 MAX_NOISE=100 RETRY_BUDGET=0 SKIP_MEM=1
    taskset -c "${PROXY_CPU:-1}" sh -c 'while :; do :; done' &
    BG+=($!)
    echo "SATURATE=1: busy loop pid $! on cpu ${PROXY_CPU:-1}; read only the CPU us/req columns" >&2
fi

EXTRA_NAME=skiff \
EXTRA_CMD="$PWD/build-release/src/skiff -c {CONFIG} --concurrency 1 -l warn" \
EXTRA_CONFIG_TEMPLATE="$PWD/bench/skiff.yaml.in" \
  bash "$HARNESS"
