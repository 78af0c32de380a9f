#!/usr/bin/env bash
# The xDS example end to end (examples/xds/README.md explains each piece):
#
#   1. two local services (examples/hello_service.py named A and B), the control
#      plane (examples/xds/control_plane.py) serving a copy of examples/xds/resources/,
#      and skiff with examples/xds/bootstrap.yaml (ADS to the control plane)
#   2. curl through skiff: service A answers
#   3. copy examples/xds/changes/route-b.yaml over the served route.yaml: the control
#      plane pushes RDS, curl shows service B; a keep-alive connection opened before
#      the change carries on across it (no restart, no dropped connection)
#   4. copy a route config skiff must refuse: NACK with the reason, B keeps serving
#   5. the versions, ACKs and NACK in /config_dump (xds_status) and the xDS stats
#
#   bash examples/xds/run.sh            # the above
#   bash examples/xds/run.sh --files    # the same route change without a control plane:
#                                       # examples/xds/files/ (lds/cds path_config_source)
#
# Everything runs on 127.0.0.1 in the background with its PID recorded and is stopped
# on exit; the resource files edited are copies in a temporary directory (the checkout
# is not modified). Installs nothing: needs what scripts/deps.sh installs (curl,
# protoc, python3-grpcio, python3-protobuf, python3-yaml, meson, ninja).
#
# Environment: SKIFF_BIN (default build/src/skiff, built with meson/ninja into build/
# when SKIFF_BIN is unset), ports LISTEN_PORT (10000), ADMIN_PORT (15000), XDS_PORT
# (18000), SERVICE_A_PORT (8081), SERVICE_B_PORT (8082); LOG_DIR: copy the processes'
# logs (skiff.log, control-plane.log, ...) there on exit.
# Exit status 0 when every step showed what it should.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=ads
case "${1:-}" in
    "") ;;
    --files) MODE=files ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--files]" >&2; exit 2 ;;
esac
LISTEN_PORT=${LISTEN_PORT:-10000}
ADMIN_PORT=${ADMIN_PORT:-15000}
XDS_PORT=${XDS_PORT:-18000}
SERVICE_A_PORT=${SERVICE_A_PORT:-8081}
SERVICE_B_PORT=${SERVICE_B_PORT:-8082}
PY=/usr/bin/python3
ADMIN=http://127.0.0.1:$ADMIN_PORT
URL=http://127.0.0.1:$LISTEN_PORT

step() { printf '\n== %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
show() { printf '$ %s\n' "$*"; }   # a command as the user would type it

# ---- prerequisites (nothing is installed here: scripts/deps.sh does that) --------------
for tool in curl protoc; do
    command -v "$tool" >/dev/null || fail "$tool is missing: run 'bash scripts/deps.sh' first"
done
$PY -c 'import grpc, google.protobuf, yaml' 2>/dev/null ||
    fail "python3-grpcio / python3-protobuf / python3-yaml missing: run 'bash scripts/deps.sh' first"
ports=("LISTEN_PORT=$LISTEN_PORT" "ADMIN_PORT=$ADMIN_PORT" "SERVICE_A_PORT=$SERVICE_A_PORT"
       "SERVICE_B_PORT=$SERVICE_B_PORT")
[ "$MODE" = ads ] && ports+=("XDS_PORT=$XDS_PORT")
for kv in "${ports[@]}"; do
    $PY -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "${kv#*=}" 2>/dev/null ||
        fail "port ${kv#*=} on 127.0.0.1 is in use (another skiff or example running?); set ${kv%%=*}=... to use another"
done

if [ -n "${SKIFF_BIN:-}" ]; then
    SKIFF=$SKIFF_BIN
    [ -x "$SKIFF" ] || fail "SKIFF_BIN=$SKIFF_BIN is not an executable"
else
    step "building skiff (meson + ninja into build/)"
    [ -d build ] || meson setup build --buildtype=release >/dev/null
    ninja -C build >/dev/null || fail "ninja -C build failed"
    SKIFF=build/src/skiff
fi

# ---- processes: started in the background, PIDs recorded, stopped on exit ---------------
work=$(mktemp -d "${TMPDIR:-/tmp}/skiff-xds-example.XXXXXX")
pids=()
names=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ ${#pids[@]} -gt 0 ]; then
        printf '\n== stopping: '
        for i in "${!pids[@]}"; do
            printf '%s (pid %s) ' "${names[$i]}" "${pids[$i]}"
            kill "${pids[$i]}" 2>/dev/null || true
        done
        echo
        for i in "${!pids[@]}"; do
            local st=0
            wait "${pids[$i]}" 2>/dev/null || st=$?
            # skiff drains and exits 0 on SIGTERM; anything else is worth a look
            if [ "${names[$i]}" = skiff ] && [ $st -ne 0 ]; then
                echo "skiff exited with status $st"
                [ $rc -eq 0 ] && rc=1
            fi
        done
    fi
    if [ -n "${LOG_DIR:-}" ]; then
        mkdir -p "$LOG_DIR" && cp "$work"/*.log "$LOG_DIR"/ 2>/dev/null || true
    fi
    if [ $rc -ne 0 ] && [ $rc -ne 130 ] && [ $rc -ne 143 ]; then
        for f in skiff.log control-plane.log; do
            [ -s "$work/$f" ] && { echo "--- last lines of $f:"; tail -n 30 "$work/$f"; }
        done
    fi
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bg() {  # bg NAME LOG CMD...: start CMD in the background, record its PID
    local name=$1 logf=$2
    shift 2
    "$@" >"$logf" 2>&1 &
    pids+=($!)
    names+=("$name")
    echo "started $name: pid $!  ($*)"
}
wait_until() {  # wait_until SECONDS CMD...: true once CMD succeeds, false after SECONDS
    local end=$((SECONDS + $1))
    shift
    until "$@"; do
        [ $SECONDS -ge $end ] && return 1
        sleep 0.05
    done
}
port_open() { $PY -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$1" 2>/dev/null; }
service_of() {  # the "service" field of the JSON the hello service answers through skiff
    curl -s --max-time 2 "$URL$1" | sed -n 's/^ *"service": "\(.*\)",$/\1/p'
}
cp_seen=0
cp_log() {  # prints the control plane's log lines since the last call
    [ "$MODE" = ads ] || return 0
    local n
    n=$(wc -l <"$work/control-plane.log")
    if [ "$n" -gt "$cp_seen" ]; then
        echo "control plane log:"
        sed -n "$((cp_seen + 1)),${n}p" "$work/control-plane.log" | grep -v 'warning: Import' | sed 's/^/  /'
    fi
    cp_seen=$n
}
# copies of the example files with the ports above (the defaults leave them unchanged)
ports_sed=(-e "s/(port_value: )10000\b/\1$LISTEN_PORT/" -e "s/(port_value: )15000\b/\1$ADMIN_PORT/"
           -e "s/(port_value: )18000\b/\1$XDS_PORT/" -e "s/(port_value: )8081\b/\1$SERVICE_A_PORT/"
           -e "s/(port_value: )8082\b/\1$SERVICE_B_PORT/")

echo "skiff xDS example ($MODE mode); working directory $work"
step "1a. two local services, A on 127.0.0.1:$SERVICE_A_PORT and B on 127.0.0.1:$SERVICE_B_PORT"
bg "service A" "$work/service-a.log" $PY examples/hello_service.py 127.0.0.1 "$SERVICE_A_PORT" A
bg "service B" "$work/service-b.log" $PY examples/hello_service.py 127.0.0.1 "$SERVICE_B_PORT" B
wait_until 10 port_open "$SERVICE_A_PORT" && wait_until 10 port_open "$SERVICE_B_PORT" ||
    fail "the hello services did not start"

if [ "$MODE" = ads ]; then
    res=$work/resources
    mkdir -p "$res"
    for f in examples/xds/resources/*.yaml; do sed -E "${ports_sed[@]}" "$f" >"$res/$(basename "$f")"; done
    sed -E "${ports_sed[@]}" examples/xds/bootstrap.yaml >"$work/bootstrap.yaml"
    route_file=$res/route.yaml
    step "1b. the control plane on 127.0.0.1:$XDS_PORT, serving $res (a copy of examples/xds/resources/)"
    ls "$res"
    bg "control plane" "$work/control-plane.log" $PY -u examples/xds/control_plane.py \
        --resources "$res" --port "$XDS_PORT" --proto-out "$work/py"
    wait_until 60 grep -q "serving " "$work/control-plane.log" || fail "the control plane did not start"
    cp_log
else
    res=$work/files
    mkdir -p "$res"
    for f in listeners clusters; do sed -E "${ports_sed[@]}" "examples/xds/files/$f.yaml" >"$res/$f.yaml"; done
    sed -E "${ports_sed[@]}" -e "s#examples/xds/files/#$res/#" examples/xds/files/bootstrap.yaml \
        >"$work/bootstrap.yaml"
    route_file=$res/listeners.yaml
    step "1b. no control plane: listeners and clusters from files in $res (copies of examples/xds/files/)"
    sed -n '/^dynamic_resources/,$p' "$work/bootstrap.yaml"
fi

step "1c. skiff with $work/bootstrap.yaml (examples/xds/$([ "$MODE" = files ] && echo files/)bootstrap.yaml; listener 127.0.0.1:$LISTEN_PORT, admin 127.0.0.1:$ADMIN_PORT)"
show "skiff --validate -c bootstrap.yaml"
"$SKIFF" --validate -c "$work/bootstrap.yaml" || fail "the bootstrap does not validate"
bg skiff "$work/skiff.log" "$SKIFF" -c "$work/bootstrap.yaml"
start=$SECONDS
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$ADMIN/ready")" = 200 ]; }
wait_until 20 ready || fail "skiff did not become ready (/ready != 200)"
echo "skiff ready ($ADMIN/ready = 200) after $((SECONDS - start)) s: the first complete config is applied"
cp_log

step "2. curl through skiff: service A answers"
show "curl -s $URL/hello"
out=$(curl -s --max-time 5 "$URL/hello") || fail "curl through skiff failed"
echo "$out"
[ "$(service_of /hello)" = A ] || fail "expected service A"

step "3. route change: a keep-alive connection is opened first and kept across the change"
bg "keep-alive probe" "$work/probe.log" $PY -u examples/xds/probe.py --port "$LISTEN_PORT" \
    --stop "$work/stop-probe" --max-seconds 60
probe_pid=${pids[-1]}
wait_until 10 grep -q "answered by A" "$work/probe.log" || fail "the keep-alive probe got no answer"
if [ "$MODE" = ads ]; then
    show "cp examples/xds/changes/route-b.yaml $route_file"
    cp examples/xds/changes/route-b.yaml "$route_file"
else
    show "sed -i 's/cluster: service_a/cluster: service_b/' $route_file"
    sed -i 's/cluster: service_a/cluster: service_b/' "$route_file"
fi
t0=$(date +%s%N)
is_b() { [ "$(service_of /hello)" = B ]; }
wait_until 10 is_b || fail "service B never answered after the route change"
echo "service B answers $(( ($(date +%s%N) - t0) / 1000000 )) ms after the file changed (no restart)"
show "curl -s $URL/hello"
curl -s --max-time 5 "$URL/hello"
cp_log
sleep 0.3   # a few more probe requests on the new route
touch "$work/stop-probe"
probe_rc=0
wait "$probe_pid" || probe_rc=$?
cat "$work/probe.log"
[ $probe_rc -eq 0 ] || fail "the keep-alive connection saw errors across the change"
grep -q "answered by B" "$work/probe.log" || fail "the keep-alive connection never saw service B"
echo "the connection opened before the change was served by A, then by B, and never closed"

if [ "$MODE" = ads ]; then
    step "4. a bad route config (negative timeout): skiff NACKs it, service B keeps serving"
    show "cp examples/xds/changes/route-bad.yaml $route_file"
    cp examples/xds/changes/route-bad.yaml "$route_file"
    nacked() { grep -q "RDS NACK" "$work/control-plane.log"; }
    wait_until 10 nacked || fail "no NACK for the bad route config"
    cp_log
    show "curl -s $URL/hello   # still B: the last good route config serves"
    [ "$(service_of /hello)" = B ] || fail "expected service B after the NACK"
    echo "service: B"
else
    step "4. a broken file: rejected, service B keeps serving"
    show "echo 'resources: [ {' > $route_file"
    echo 'resources: [ {' >"$route_file.tmp" && mv "$route_file.tmp" "$route_file"
    rejected() { curl -s "$ADMIN/stats" | grep -q '^listener_manager.lds.update_rejected: [1-9]'; }
    wait_until 10 rejected || fail "the broken file was not rejected"
    grep -A3 'rejected' "$work/skiff.log" | head -4 | sed 's/^/skiff log: /'
    [ "$(service_of /hello)" = B ] || fail "expected service B after the broken file"
    echo "service: B"
fi

step "5. the xDS state on the admin port"
show "curl -s $ADMIN/config_dump   # xds_status, summarised:"
curl -s --max-time 5 "$ADMIN/config_dump" | $PY -c '
import json, sys
x = json.load(sys.stdin)["xds_status"]
print("  server: %s  connected: %s" % (x.get("server") or "(none: files)", json.dumps(x.get("connected"))))
for t in x.get("types", []):
    if not (t.get("version_info") or t.get("last_nack") or t.get("resources")):
        continue
    res = ", ".join("%s@%s" % (r["name"], r.get("version_info")) for r in t.get("resources", []))
    print("  %-4s version_info %-24s last_updated %s  resources: %s" %
          (t["type"], json.dumps(t.get("version_info")), t.get("last_updated"), res))
    n = t.get("last_nack")
    if n:
        print("       last_nack: version_info %s nonce %s: %s" %
              (json.dumps(n.get("version_info")), json.dumps(n.get("nonce")), n.get("details")))
' || fail "no xds_status in /config_dump"
stats_re='^(control_plane|cluster_manager\.cds|listener_manager\.lds|rds|eds)\.'
[ "$MODE" = files ] && stats_re='^(cluster_manager\.cds|listener_manager\.lds)\.'
show "curl -s $ADMIN/stats | grep -E '$stats_re'"
curl -s --max-time 5 "$ADMIN/stats" | grep -E "$stats_re" |
    grep -Ev '\.(init_fetch_timeout|update_damped): 0$' | sed 's/^/  /'

step "done: service A, then service B after a live route change; skiff never restarted"
