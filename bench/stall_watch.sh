# Sourced by bench scripts. Whole-machine stalls: this VM is sometimes frozen
# for ~100 ms at a time (seen on both CPUs at once by a nice -20 sleeper,
# 2026-12-06). wrk's latency histogram back-fills the requests a stalled
# connection did not send (coordinated-omission correction), so one stall
# during an h1 trial makes that trial's p99 tens of ms, and the frozen time
# is charged as CPU to whatever was running. A sleeper on each CPU (10 ms
# naps) records every wake-up over 50 ms late, with the time of day, so the
# trials that ran through one can be told apart.
#
#   stall_watch_start            # starts the sleepers (their pids: STALL_PIDS)
#   stall_watch_report           # stops them, prints the stalls, cleans up

stall_watch_start() {
    STALL_DIR=$(mktemp -d /tmp/skiff-bench-stalls.XXXXXX)
    STALL_PIDS=()
    local cpu
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
' "$cpu" >"$STALL_DIR/cpu$cpu" 2>/dev/null &
        STALL_PIDS+=($!)
    done
}

stall_watch_report() {
    [ -n "${STALL_DIR:-}" ] || return 0
    kill "${STALL_PIDS[@]}" 2>/dev/null
    wait "${STALL_PIDS[@]}" 2>/dev/null
    local stalls
    stalls=$(sort "$STALL_DIR"/cpu*)
    echo
    if [ -n "$stalls" ]; then
        echo "Machine stalls during this run (a sleeper on each CPU woke > 50 ms late; trials"
        echo "ending shortly after these times have inflated p99 and CPU, lower rps):"
        printf '%s\n' "$stalls" | sed 's/^/  /'
    else
        echo "No machine stall over 50 ms during this run."
    fi
    rm -rf "$STALL_DIR"
    STALL_DIR=
    return 0
}
