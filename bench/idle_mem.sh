#!/usr/bin/env bash
# Memory per idle client connection (HTTP/1.1 keep-alive and h2c), measured the
# way ../shared/bench/peers.sh does it, but for skiff alone and in ~30 s:
#   fresh skiff (one worker, bench/skiff.yaml.in), light warmup (h2load, 2000
#   requests per protocol), RSS; then N client connections that each complete one
#   GET / and stay open; RSS again. Reported per connection:
#     avg      = (RSS with N idle conns - RSS after warmup) / N
#     marginal = RSS slope between N/5 and N conns (peers.sh's "B/idle conn")
#     heap     = growth of malloc's allocated bytes (admin /memory) / N
# Peers (haproxy, nginx, nghttpx) are measured by ../shared/bench/peers.sh; its
# last figures are quoted in bench/README.md.
#
#   bash bench/idle_mem.sh                 # N=2000, build-release (built if missing)
#   N=1000 SKIFF=build-perf/src/skiff bash bench/idle_mem.sh
#   BIGWIN=1 bash bench/idle_mem.sh        # h2 clients open a 1 GiB connection window
#                                          # (as curl, h2load, grpc, browsers do)
# Everything runs on 127.0.0.1; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/nginx_backend.sh
N=${N:-2000}
# PIN=1: proxy on CPU 1, clients on CPU 0 (as peers.sh runs them)
PIN_PROXY=""; PIN_LOAD=""
if [ "${PIN:-0}" = 1 ]; then PIN_PROXY="taskset -c 1"; PIN_LOAD="taskset -c 0"; fi
BASE_PORT=${BASE_PORT:-27300}
SKIFF=${SKIFF:-}
if [ -z "$SKIFF" ]; then
    [ -d build-release ] || meson setup build-release --buildtype=release -Db_ndebug=true >/dev/null
    ninja -C build-release >/dev/null
    SKIFF=build-release/src/skiff
fi
for t in python3 h2load curl; do
    command -v "$t" >/dev/null || { echo "idle_mem.sh: missing tool: $t" >&2; exit 2; }
done
ulimit -n $((N * 2 + 200)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"

TMP=$(mktemp -d /tmp/idle_mem.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

UP=$BASE_PORT H1=$((BASE_PORT + 1)) H2=$((BASE_PORT + 2)) ADM=$((BASE_PORT + 3))

cat >"$TMP/up.py" <<'EOF'
# tiny HTTP/1.1 keep-alive upstream: 64-byte body
import http.server, socketserver, sys
BODY = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n"
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF

cat >"$TMP/idle.py" <<'EOF'
# idle.py PORT N MODE(h1|h2): open N keep-alive connections, one GET / on each,
# keep them open. Prints "STAGE1 <n>" after N/5 (then waits until the file GO
# exists), "READY <n> fails=<k>" at the end (then waits until the file STOP exists;
# at most 60 s each).
import socket, struct, sys, time
import os
port, n, mode, go, stop = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def wait_file(f):
    t = time.time() + 60
    while not os.path.exists(f) and time.time() < t: time.sleep(0.05)
H1REQ = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: idle.py\r\n\r\n"
auth = b"127.0.0.1"
HP = bytes([0x82, 0x86, 0x84, 0x01, len(auth)]) + auth   # GET http / :authority literal
def frame(t, f, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, f]) + struct.pack(">I", sid) + payload
WU = frame(8, 0, 0, struct.pack(">I", 1 << 30)) if os.environ.get("BIGWIN") == "1" else b""
H2HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + WU + frame(1, 0x5, 1, HP)
def need(s, buf, k):
    while len(buf) < k:
        d = s.recv(65536)
        if not d: raise EOFError("closed")
        buf += d
    return buf
def h1(s):
    s.sendall(H1REQ); buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d: raise EOFError("closed")
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"): raise RuntimeError(head[:40])
    cl = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length": cl = int(v)
    need(s, body, cl)
def h2(s):
    s.sendall(H2HELLO); buf = b""
    while True:
        buf = need(s, buf, 9)
        ln = int.from_bytes(buf[0:3], "big"); t, f = buf[3], buf[4]
        sid = int.from_bytes(buf[5:9], "big") & 0x7fffffff
        buf = need(s, buf, 9 + ln); buf = buf[9 + ln:]
        if t == 4 and not (f & 1): s.sendall(frame(4, 1, 0))
        elif t in (3, 7): raise RuntimeError("RST_STREAM/GOAWAY")
        elif t in (0, 1) and sid == 1 and (f & 1): return
conns, fails, staged = [], 0, False
for i in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        (h1 if mode == "h1" else h2)(s)
        conns.append(s)
    except Exception as e:
        fails += 1
        if fails > 20: break
    if not staged and len(conns) >= max(1, n // 5):
        staged = True
        print("STAGE1 %d" % len(conns), flush=True); wait_file(go)
print("READY %d fails=%d" % (len(conns), fails), flush=True)
wait_file(stop)
EOF

sed -e "s/{H1_PORT}/$H1/; s/{H2_PORT}/$H2/; s/{UPSTREAM_HOST}/127.0.0.1/; s/{UPSTREAM_H1_PORT}/$UP/" \
    -e "s/port_value: 0 }/port_value: $ADM }/" bench/skiff.yaml.in >"$TMP/skiff.yaml"

wait_port() { local i; for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
mem_field() { curl -s "http://127.0.0.1:$ADM/memory" | python3 -c "import json,sys; d=json.load(sys.stdin); print(d.get('$1', 0))"; }

# the backend: nginx as in peers.sh when installed (a fast backend lets the
# client open connections faster, so more new sessions overlap), else Python
if command -v nginx >/dev/null; then
    nginx_backend_conf "$TMP/be" "$UP"
    $PIN_LOAD nginx -c "$TMP/be/nginx.conf" & PIDS+=($!)
else
    python3 "$TMP/up.py" "$UP" & PIDS+=($!)
fi
wait_port "$UP" || { echo "upstream did not start" >&2; exit 1; }

measure() { # measure <h1|h2> <port>
    local mode=$1 port=$2 spid rss0 rssa rss1 heap0 heap1 line na n
    $PIN_PROXY "$SKIFF" -c "$TMP/skiff.yaml" --concurrency 1 -l warn >"$TMP/skiff.$mode.log" 2>&1 & spid=$!
    PIDS+=($spid)
    wait_port "$H1" && wait_port "$H2" && wait_port "$ADM" || { echo "skiff did not start" >&2; cat "$TMP/skiff.$mode.log" >&2; exit 1; }
    timeout 20 h2load --h1 -n 2000 -c 4 "http://127.0.0.1:$H1/" >/dev/null 2>&1 || true
    timeout 20 h2load -n 2000 -c 4 -m 4 "http://127.0.0.1:$H2/" >/dev/null 2>&1 || true
    sleep 0.5
    rss0=$(rss_kib "$spid"); heap0=$(mem_field allocated_bytes)
    local out=$TMP/idle.$mode.out ipid i
    rm -f "$TMP/go" "$TMP/stop"
    timeout 150 $PIN_LOAD python3 "$TMP/idle.py" "$port" "$N" "$mode" "$TMP/go" "$TMP/stop" >"$out" 2>&1 & ipid=$!
    PIDS+=($ipid)
    for i in $(seq 1 1200); do grep -q '^STAGE1' "$out" && break; [ -d /proc/$ipid ] || break; sleep 0.05; done
    line=$(grep -m1 '^STAGE1' "$out" || true); na=${line#STAGE1 }
    sleep 0.5; rssa=$(rss_kib "$spid")
    touch "$TMP/go"
    for i in $(seq 1 1200); do grep -q '^READY' "$out" && break; [ -d /proc/$ipid ] || break; sleep 0.05; done
    line=$(grep -m1 '^READY' "$out" || true); n=$(awk '{print $2}' <<<"$line")
    sleep 1
    rss1=$(rss_kib "$spid"); heap1=$(mem_field allocated_bytes)
    touch "$TMP/stop"
    wait "$ipid" 2>/dev/null || true
    kill -TERM "$spid"; wait "$spid" 2>/dev/null || true
    [ "${n:-0}" -gt 0 ] && [ -n "$na" ] || { echo "$mode: no idle connection held ($(head -c 300 "$out"))" >&2; return 1; }
    printf '| %s | %d | %d | %d | %d | %d |\n' "$mode" "$n" \
        $(( (rss1 - rss0) * 1024 / n )) $(( (rss1 - rssa) * 1024 / (n - na) )) \
        $(( (heap1 - heap0) / n )) "$rss1"
}

echo "skiff $("$SKIFF" --version 2>/dev/null | head -1) ($SKIFF), $N idle connections, h2 client window: $([ "${BIGWIN:-0}" = 1 ] && echo '1 GiB' || echo 'default 65535')"
echo "| mode | conns held | B/conn avg | B/conn marginal | heap B/conn | RSS KiB with conns |"
echo "|---|---|---|---|---|---|"
measure h1 "$H1"
measure h2 "$H2"
