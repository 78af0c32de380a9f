#!/usr/bin/env bash
# Chaos experiment in one command: a small service (examples/hello_service.py)
# behind skiff, steady load, and a fault experiment injected at run time
# through the admin's chaos API with the `skiff chaos` CLI:
#
#   before  PHASE_S seconds of load, no faults
#   during  10% of requests aborted with 503 + 200 ms delay on 20%
#           (two rules with a TTL, so they would expire by themselves; the
#           phase ends with the kill switch `skiff chaos clear`)
#   after   PHASE_S seconds of load, faults gone
#
# then prints error rate and latency p50/p90/p99 per phase.
#
# Environment: PHASE_S (default 10), RATE (requests/s, default 200),
# ABORT_PCT (10), DELAY_MS (200), DELAY_PCT (20), SKIFF_BIN (default
# build/src/skiff, built with meson if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
PHASE_S=${PHASE_S:-10}
RATE=${RATE:-200}
ABORT_PCT=${ABORT_PCT:-10}
DELAY_MS=${DELAY_MS:-200}
DELAY_PCT=${DELAY_PCT:-20}
SKIFF=${SKIFF_BIN:-build/src/skiff}
PY=/usr/bin/python3
if [ ! -x "$SKIFF" ]; then
    [ -d build ] || meson setup build --buildtype=release >/dev/null
    ninja -C build >/dev/null
    SKIFF=build/src/skiff
fi
port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SVC=$(port); LISTEN=$(port); ADMIN=$(port)
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# examples/hello_service.py's handler, with TCP_NODELAY: it writes head and body
# separately, and Nagle + delayed ACKs would add ~40 ms to every keep-alive request
$PY -c 'import sys; sys.path.insert(0, "examples"); import hello_service as h
from http.server import ThreadingHTTPServer
h.Hello.disable_nagle_algorithm = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), h.Hello).serve_forever()' "$SVC" &
pids+=($!)
"$SKIFF" --listen "127.0.0.1:$LISTEN" --upstream "127.0.0.1:$SVC" --admin "127.0.0.1:$ADMIN" \
    --log-level warn >"$work/skiff.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$ADMIN/ready" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$ADMIN/ready" >/dev/null || { echo "skiff did not start:"; cat "$work/skiff.log"; exit 1; }
echo "service 127.0.0.1:$SVC <- skiff 127.0.0.1:$LISTEN (admin 127.0.0.1:$ADMIN); $PHASE_S s per phase, $RATE req/s"

load() {
    echo "== $1: ${PHASE_S}s of load"
    $PY examples/chaos/load.py run --url "http://127.0.0.1:$LISTEN/hello" --seconds "$PHASE_S" \
        --rate "$RATE" --max-requests $((RATE * PHASE_S * 2)) --label "$1" --out "$work/$1.json"
}
chaos() { "$SKIFF" chaos "$@" --admin "127.0.0.1:$ADMIN"; }

load before
echo "== injecting: abort 503 on ${ABORT_PCT}%, delay ${DELAY_MS} ms on ${DELAY_PCT}%"
chaos add --cluster local_service --abort 503 --percent "$ABORT_PCT" --ttl "$((PHASE_S * 3))s" \
    --description "experiment: aborts"
chaos add --cluster local_service --delay "${DELAY_MS}ms" --percent "$DELAY_PCT" --ttl "$((PHASE_S * 3))s" \
    --description "experiment: delays"
chaos list
load during
chaos list
echo "== kill switch"
chaos clear
load after

echo
echo "== report"
$PY examples/chaos/load.py report "$work/before.json" "$work/during.json" "$work/after.json"
echo
echo "skiff counters:"
curl -fs "http://127.0.0.1:$ADMIN/stats" | grep -E '^chaos\.(aborts|delays)_injected' | sed 's/^/  /'
