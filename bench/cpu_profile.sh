#!/usr/bin/env bash
# Noise-free per-request CPU figures for skiff (and syscalls for haproxy), next to
# bench/run.sh's wall-clock CPU: an nginx backend (64-byte body), then
#   1. syscalls per request by kind (perf stat on syscall tracepoints, no slowdown)
#      over a fixed request count, h1 (h2load --h1 -c64) and h2 (h2load -c64 -m10,
#      h2c downstream, h1 upstream), for skiff and haproxy (same config as peers.sh);
#   2. user-space instructions per request (callgrind, skiff only, instrumentation
#      toggled around the measured run, so start-up and warmup are not counted).
#   bash bench/cpu_profile.sh                  # build-release (built if missing)
#   SKIFF=build-x/src/skiff N=20000 CG_N=10000 bash bench/cpu_profile.sh
#   SKIP_CG=1 / SKIP_HAPROXY=1                 # leave a part out
# Ports BASE_PORT..+21 on 127.0.0.1; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/nginx_backend.sh
N=${N:-20000}
CG_N=${CG_N:-10000}
BASE=${BASE_PORT:-27900}
SKIFF=${SKIFF:-}
if [ -z "$SKIFF" ]; then
    [ -d build-release ] || meson setup build-release --buildtype=release -Db_ndebug=true >/dev/null
    ninja -C build-release >/dev/null
    SKIFF=build-release/src/skiff
fi
SKIFF=$(realpath "$SKIFF")
for t in nginx h2load perf; do
    command -v "$t" >/dev/null || { echo "cpu_profile.sh: missing tool: $t" >&2; exit 2; }
done
[ "${SKIP_CG:-0}" = 1 ] || command -v valgrind >/dev/null || { echo "cpu_profile.sh: missing valgrind" >&2; exit 2; }
[ "${SKIP_HAPROXY:-0}" = 1 ] || command -v haproxy >/dev/null || SKIP_HAPROXY=1
TMP=$(mktemp -d /tmp/cpu_profile.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
wait_port() { local i; for i in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
UP=$BASE; SK1=$((BASE + 10)); SK2=$((BASE + 11)); HA1=$((BASE + 20)); HA2=$((BASE + 21))

nginx_backend_conf "$TMP/be" "$UP"
nginx -p "$TMP/be" -e "$TMP/be/error.log" -c "$TMP/be/nginx.conf" >"$TMP/be.out" 2>&1 &
PIDS+=($!)
wait_port "$UP" || { echo "backend did not start" >&2; exit 1; }
sed -e "s/{H1_PORT}/$SK1/; s/{H2_PORT}/$SK2/; s/{UPSTREAM_HOST}/127.0.0.1/; s/{UPSTREAM_H1_PORT}/$UP/" \
    bench/skiff.yaml.in >"$TMP/skiff.yaml"
cat >"$TMP/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend fe_h1
  bind 127.0.0.1:$HA1
  default_backend be
frontend fe_h2
  bind 127.0.0.1:$HA2 proto h2
  default_backend be
backend be
  server s1 127.0.0.1:$UP
HAP

load() { # load h1|h2 PORT COUNT
    if [ "$1" = h1 ]; then timeout 120 h2load --h1 -c 64 -n "$3" "http://127.0.0.1:$2/"
    else timeout 120 h2load -c 64 -m 10 -n "$3" "http://127.0.0.1:$2/"; fi
}
EV=raw_syscalls:sys_enter
for s in read recvfrom recvmsg readv write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl \
         clock_gettime accept4 close setsockopt getsockopt getsockname connect futex brk mmap \
         munmap madvise mprotect timerfd_settime; do
    EV="$EV,syscalls:sys_enter_$s"
done
syscalls() { # syscalls NAME PORT1 PORT2 cmd...
    local name=$1 p1=$2 p2=$3 pid mode port; shift 3
    "$@" >"$TMP/$name.out" 2>&1 &
    pid=$!; PIDS+=("$pid")
    wait_port "$p2" || { echo "$name did not start" >&2; return 1; }
    for mode in h1 h2; do
        port=$p1; [ "$mode" = h2 ] && port=$p2
        load "$mode" "$port" 5000 >/dev/null
        perf stat -x, -e "$EV" -p "$pid" -o "$TMP/ps.txt" &
        local sp=$!
        sleep 0.3
        load "$mode" "$port" "$N" | grep -q "$N succeeded" || echo "  ($name $mode: not every request succeeded)"
        sleep 0.2
        kill -INT "$sp"; wait "$sp" || true
        echo "$name $mode: syscalls per request ($N requests)"
        awk -F, -v n="$N" '$1 ~ /^[0-9]+$/ && $1 > 0 {sub("syscalls:sys_enter_", "", $3); sub("raw_syscalls:sys_enter", "ALL", $3); printf "  %-16s %7.3f\n", $3, $1 / n}' "$TMP/ps.txt"
    done
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}
syscalls skiff "$SK1" "$SK2" "$SKIFF" -c "$TMP/skiff.yaml" --concurrency 1 -l warn
[ "${SKIP_HAPROXY:-0}" = 1 ] || syscalls haproxy "$HA1" "$HA2" haproxy -db -f "$TMP/haproxy.cfg"

if [ "${SKIP_CG:-0}" != 1 ]; then
    for mode in h1 h2; do
        port=$SK1; [ "$mode" = h2 ] && port=$SK2
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.$mode" \
            "$SKIFF" -c "$TMP/skiff.yaml" --concurrency 1 -l warn >"$TMP/cg.$mode.log" 2>&1 &
        vp=$!; PIDS+=("$vp")
        wait_port "$SK2" || { echo "skiff under valgrind did not start" >&2; exit 1; }
        load "$mode" "$port" 2000 >/dev/null
        callgrind_control -i on "$vp" >/dev/null
        load "$mode" "$port" "$CG_N" >/dev/null
        callgrind_control -i off "$vp" >/dev/null
        kill -TERM "$vp"; wait "$vp" 2>/dev/null || true
        ir=$(callgrind_annotate "$TMP/cg.$mode" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
        echo "skiff $mode: $((ir / CG_N)) user-space instructions per request (callgrind, $CG_N requests)"
        [ -n "${KEEP_CG:-}" ] && cp "$TMP/cg.$mode" "$KEEP_CG.$mode" && echo "  kept $KEEP_CG.$mode"
    done
fi
