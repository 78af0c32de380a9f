#!/usr/bin/env bash
# mesh_peers.sh - the mTLS mesh hop of issue 4, built from skiff, nghttpx and haproxy.
#
# Topology, the same for every peer (two processes of the same proxy, 1 worker each):
#
#   load generator --h2c/h1--> OUTBOUND --h2 over mTLS--> INBOUND --h1 keep-alive--> nginx
#
#   OUTBOUND: plaintext listener (h2c prior knowledge and HTTP/1.1), originates TLS 1.3
#             with a client certificate, ALPN h2, verifies the inbound's chain against
#             the mesh CA and its name (skiff: the SPIFFE URI SAN; nghttpx/haproxy: the
#             DNS name, they have no URI SAN matcher).
#   INBOUND:  TLS listener, client certificate required and verified against the CA
#             (skiff: STRICT, also forwards the client identity in x-forwarded-client-cert),
#             plaintext HTTP/1.1 keep-alive pool to the backend.
#   backend:  nginx, 1 worker, 64-byte body.
#   certs:    examples/mesh/certs.sh run in a scratch dir at start (P-256 CA, SPIFFE
#             URI SAN workload certs).
#
# Pinning (2 cores): both proxies of a pair on $PROXY_CPU (1), load generator and
# backend on $LOADGEN_CPU (0). Everything started here runs at nice $BENCH_NICE.
#
# Measured per peer, ROUNDS interleaved rounds (order reversed on even rounds), medians:
#  (1) long-lived: h2load -c $CONNS -m $STREAMS -D $DUR to the outbound (h2c):
#      req/s, p50/p99 (from h2load --log-file), proxy CPU us/request summed over both
#      proxies (utime+stime of their process trees, /proc/PID/stat), and the number
#      of outbound->inbound TCP connections open at the end (all three pool/multiplex).
#  (2a) new client connections through the hop: wrk -t1 -c $CLOSE_CONNS -d $CLOSE_DUR
#      with "Connection: close" to the outbound (HTTP/1.1): every request is a new
#      downstream TCP connection; the mTLS hop stays pooled in all three proxies,
#      so this is connection churn at the outbound, not handshakes.
#  (2b) new mTLS handshakes the inbound accepts: $HS_CLIENTS python3 ssl clients on
#      $LOADGEN_CPU, each looping for $HS_DUR s (and at most $HS_MAX handshakes):
#      connect, full TLS 1.3 handshake with the client certificate (no session
#      resumption offered), ALPN h2, send the h2 preface + SETTINGS, wait for the
#      inbound's first frame (proof it accepted the certificate and set up its
#      session), close. The client skips verifying the server (cheaper than the
#      server's side, so the inbound is the bottleneck as far as one core allows).
#      Reports handshakes/s achieved, inbound CPU us per handshake and the
#      capacity 1e6/(CPU us per handshake) = handshakes per second of one core.
#
# Noise: like ../shared/bench/peers.sh, each trial records the CPU used by everything
# not started here ("noise", % of one CPU, from /proc/stat); a trial noisier than
# MAX_NOISE is retried while RETRY_BUDGET lasts and the quieter attempt is kept;
# results with median noise > MAX_NOISE are marked '*'.
#
# Usage:  bash bench/mesh_peers.sh                          (~5 min with the defaults)
#         ROUNDS=1 DUR=5 bash bench/mesh_peers.sh
#         PEERS="skiff haproxy" SKIFF_BIN=build-x/src/skiff bash bench/mesh_peers.sh
#         PEERS="skiff skiffb nghttpx haproxy" SKIFF_BIN_B=/path/to/other/skiff ...  (A/B: a
#         second skiff binary measured as peer "skiffb")
# Knobs: ROUNDS(3) DUR(8) CONNS(8) STREAMS(8) CLOSE_DUR(5) CLOSE_CONNS(8) HS_DUR(5)
#   HS_CLIENTS(3) HS_MAX(200000) PEERS("direct skiff nghttpx haproxy") BASE_PORT(27400)
#   LOADGEN_CPU(0) PROXY_CPU(1) BENCH_NICE(-10) MAX_NOISE(20) RETRY_BUDGET(6) KEEP_TMP=1
#   PERF=1 (perf record -g on the skiff pair during round 1's long-lived and
#   handshake trials; reports kept in the tmp dir, which is then kept)
# Safety: 127.0.0.1 only; every load bounded by time (and timeout(1)); only processes
# started here are signalled, by PID; scratch dir removed on exit unless KEEP_TMP=1.
set -u -o pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DUR=${DUR:-8}
CONNS=${CONNS:-8}
STREAMS=${STREAMS:-8}
CLOSE_DUR=${CLOSE_DUR:-5}
CLOSE_CONNS=${CLOSE_CONNS:-8}
HS_DUR=${HS_DUR:-5}
HS_CLIENTS=${HS_CLIENTS:-3}
HS_MAX=${HS_MAX:-200000}
PEERS=${PEERS:-"direct skiff nghttpx haproxy"}
BASE_PORT=${BASE_PORT:-27400}
LOADGEN_CPU=${LOADGEN_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
BENCH_NICE=${BENCH_NICE:--10}
MAX_NOISE=${MAX_NOISE:-20}
RETRIES_LEFT=${RETRY_BUDGET:-6}
KEEP_TMP=${KEEP_TMP:-0}
PERF=${PERF:-0}
[ "$PERF" = 1 ] && KEEP_TMP=1
HZ=$(getconf CLK_TCK)
BODY='0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde'   # + "\n" = 64 bytes
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3

for t in nginx haproxy nghttpx h2load wrk openssl taskset timeout curl awk pgrep ss "$PY"; do
  command -v "$t" >/dev/null 2>&1 || { echo "mesh_peers: missing tool: $t (bash scripts/deps.sh --bench)" >&2; exit 2; }
done
if [ -z "${SKIFF_BIN:-}" ] && [[ " $PEERS " == *" skiff"* ]]; then
  [ -d build-release ] || meson setup build-release --buildtype=release -Db_ndebug=true >/dev/null
  ninja -C build-release src/skiff >/dev/null || exit 1
  SKIFF_BIN=$PWD/build-release/src/skiff
fi

TMP=$(mktemp -d /tmp/mesh-peers.XXXXXX)
STARTED=()
declare -A PIDS OUTP INP R
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

desc_pids() { local p=$1 c; [ -d /proc/$p ] || return 0; echo "$p"; for c in $(pgrep -P "$p" 2>/dev/null); do desc_pids "$c"; done; }
stop_tree() {
  local root=$1 pids p i alive
  [ -n "$root" ] && [ -d /proc/$root ] || return 0
  pids=$(desc_pids "$root")
  kill -TERM "$root" 2>/dev/null
  for i in $(seq 1 50); do
    alive=0
    for p in $pids; do [ -d /proc/$p ] && [ "$(awk '{print $3}' /proc/$p/stat 2>/dev/null)" != Z ] && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in $pids; do [ -d /proc/$p ] && kill -KILL "$p" 2>/dev/null; done
  wait "$root" 2>/dev/null
  return 0
}
. bench/stall_watch.sh
cleanup() {
  local p
  for p in "${STARTED[@]}"; do stop_tree "$p"; done
  if [ "$KEEP_TMP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  stall_watch_report
}
trap cleanup EXIT
trap 'exit 130' INT TERM
stall_watch_start

start_bg() {  # start_bg <cpu> <name> cmd... ; sets LAST_PID
  local cpu=$1 name=$2; shift 2
  taskset -c "$cpu" "$@" >"$TMP/$name.out" 2>&1 &
  LAST_PID=$!
  STARTED+=("$LAST_PID")
}
port_free() { ! (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
wait_port() { local i; for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# ---------------------------------------------------------------- accounting
ticks() {  # utime+stime summed over pids
  local t=0 p s
  for p in "$@"; do
    s=$(cat /proc/$p/stat 2>/dev/null) || continue
    s=${s##*) }
    set -- $s
    t=$((t + ${12} + ${13}))
  done
  echo $t
}
self_cticks() { local s; s=$(cat /proc/$$/stat); s=${s##*) }; set -- $s; echo $((${14} + ${15})); }
busy_all() { awk '$1=="cpu"{print $2+$3+$4+$7+$8}' /proc/stat; }
tree_pids() { local p; for p in "$@"; do desc_pids "$p"; done; }

# measure <peer> <tag> <pids-var-list> <timeout> cmd... : load generator pinned to LOADGEN_CPU,
# stdout in $TMP/<peer>.<tag>.txt; R[peer,tag.{pt,pt_out,pt_in,noise,secs}]
measure() {
  local peer=$1 tag=$2 tmo=$3; shift 3
  local opids="" ipids="" bpids o0 i0 b0 l0 s0 t0 o1 i1 b1 l1 s1 t1 el
  if [ -n "${PIDS[$peer,out]:-}" ]; then opids=$(tree_pids "${PIDS[$peer,out]}"); ipids=$(tree_pids "${PIDS[$peer,in]}"); fi
  bpids=$(tree_pids "$BACKEND_PID")
  o0=$(ticks $opids); i0=$(ticks $ipids); b0=$(ticks $bpids); l0=$(self_cticks); s0=$(busy_all); t0=$(date +%s%N)
  timeout -k 2 "$tmo" taskset -c "$LOADGEN_CPU" "$@" >"$TMP/$peer.$tag.txt" 2>&1
  t1=$(date +%s%N); l1=$(self_cticks); o1=$(ticks $opids); i1=$(ticks $ipids); b1=$(ticks $bpids); s1=$(busy_all)
  el=$(awk -v a="$t0" -v b="$t1" -v hz="$HZ" 'BEGIN{print (b-a)/1e9*hz}')
  R[$peer,$tag.pt_out]=$((o1 - o0)); R[$peer,$tag.pt_in]=$((i1 - i0))
  R[$peer,$tag.pcpu]=$(awk -v d=$((o1 - o0 + i1 - i0)) -v e="$el" 'BEGIN{printf "%.0f", 100*d/e}')
  R[$peer,$tag.noise]=$(awk -v d=$(( (s1-s0) - (o1-o0) - (i1-i0) - (b1-b0) - (l1-l0) )) -v e="$el" 'BEGIN{v=100*d/e; if(v<0)v=0; printf "%.0f", v}')
  R[$peer,$tag.secs]=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)/1e9}')
}
measure_retry() {
  local peer=$1 tag=$2 k n0 f="$TMP/$1.$2"
  local -A S
  measure "$@"
  n0=${R[$peer,$tag.noise]}
  [ "$n0" -gt "$MAX_NOISE" ] && [ "$RETRIES_LEFT" -gt 0 ] || return 0
  RETRIES_LEFT=$((RETRIES_LEFT - 1))
  log "   $peer $tag: noise $n0% > $MAX_NOISE%, retrying (retries left: $RETRIES_LEFT)"
  for k in pt_out pt_in pcpu noise secs; do S[$k]=${R[$peer,$tag.$k]}; done
  mv "$f.txt" "$f.prev.txt"; [ -f "$f.log" ] && mv "$f.log" "$f.prev.log"
  measure "$@"
  if [ "${R[$peer,$tag.noise]}" -ge "$n0" ]; then
    for k in pt_out pt_in pcpu noise secs; do R[$peer,$tag.$k]=${S[$k]}; done
    mv "$f.prev.txt" "$f.txt"; [ -f "$f.prev.log" ] && mv "$f.prev.log" "$f.log"
  fi
  rm -f "$f.prev.txt" "$f.prev.log"
}
median() { tr ' ' '\n' | grep -E '^-?[0-9.]+$' | sort -g | awk '{a[NR]=$1} END{if(!NR)exit; if(NR%2)print a[(NR+1)/2]; else printf "%.6g\n", (a[NR/2]+a[NR/2+1])/2}'; }
minmax() { tr ' ' '\n' | grep -E '^-?[0-9.]+$' | sort -g | awk 'NR==1{a=$1} {b=$1} END{if(NR) print a".."b}'; }
h2log_pct() { cut -f3 "$1" | sort -n | awk '{a[NR]=$1} END{if(NR==0){print "NA NA";exit} i=int(NR*0.5);if(i<1)i=1; j=int(NR*0.99);if(j<1)j=1; print a[i], a[j]}'; }
hop_conns() {  # established TCP connections to the inbound port (= the outbound's pool)
  ss -Htn state established "( dport = :$1 )" 2>/dev/null | wc -l
}

# ---------------------------------------------------------------- certs, backend, helpers
mkdir -p "$TMP/mesh"
cp examples/mesh/certs.sh "$TMP/mesh/"
(cd "$TMP/mesh" && bash certs.sh >/dev/null) || { log "certs.sh failed"; exit 1; }
C=$TMP/mesh/certs
cat "$C/server.pem" "$C/server.key" >"$C/server.bundle.pem"
cat "$C/client.pem" "$C/client.key" >"$C/client.bundle.pem"
SERVER_ID=spiffe://skiff.local/ns/default/sa/server

cat >"$TMP/lat.lua" <<'EOF'
wrk.headers["Connection"] = "close"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d errors=%d status_err=%d p50=%d p99=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
EOF

cat >"$TMP/hs.py" <<'EOF'
# hs.py HOST PORT CA CERT KEY SECONDS MAX : full mTLS handshakes in a loop (no resumption),
# ALPN h2, h2 preface + SETTINGS, wait for the server's first bytes, close. Prints "ok=N fail=M".
import socket, ssl, sys, time
host, port, ca, cert, key, secs, mx = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6]), int(sys.argv[7])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE          # the server side is what we measure; keep the client cheap
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["h2"])
ctx.options |= ssl.OP_NO_TICKET
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
ok = fail = 0
end = time.monotonic() + secs
errs = {}
while ok + fail < mx and time.monotonic() < end:
    s = None
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = ctx.wrap_socket(s, server_hostname="localhost")
        s = t
        if t.selected_alpn_protocol() != "h2":
            raise RuntimeError("alpn %r" % t.selected_alpn_protocol())
        t.sendall(PREFACE)
        if not t.recv(9):
            raise RuntimeError("eof")
        ok += 1
    except Exception as e:
        fail += 1
        k = type(e).__name__ + ":" + str(e)[:60]
        errs[k] = errs.get(k, 0) + 1
        if fail > 50 and ok == 0:
            break
    finally:
        if s is not None:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            s.close()
print("ok=%d fail=%d %s" % (ok, fail, " ".join("%s=%d" % kv for kv in list(errs.items())[:3])))
EOF
cat >"$TMP/hs.sh" <<EOF
#!/usr/bin/env bash
# hs.sh PORT : HS_CLIENTS parallel hs.py loops, summed
pids=()
for i in \$(seq $HS_CLIENTS); do
  "$PY" "$TMP/hs.py" 127.0.0.1 "\$1" "$C/ca.pem" "$C/client.pem" "$C/client.key" $HS_DUR $HS_MAX >"$TMP/hs.\$1.\$i" 2>&1 &
  pids+=(\$!)
done
wait "\${pids[@]}"
cat "$TMP"/hs."\$1".* | awk '{for(i=1;i<=NF;i++){split(\$i,kv,"="); if(kv[1]=="ok")o+=kv[2]; else if(kv[1]=="fail")f+=kv[2]}} {print "#", \$0} END{print "TOTAL ok=" o+0, "fail=" f+0}'
rm -f "$TMP"/hs."\$1".*
EOF

BE=$BASE_PORT BE_H2=$((BASE_PORT + 1))
start_backend() {
  mkdir -p "$TMP/be"
  cat >"$TMP/be/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/be/nginx.pid;
error_log $TMP/be/error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path $TMP/be/cb; proxy_temp_path $TMP/be/pt; fastcgi_temp_path $TMP/be/ft;
  uwsgi_temp_path $TMP/be/ut; scgi_temp_path $TMP/be/st;
  server {
    listen 127.0.0.1:$BE backlog=4096;
    listen 127.0.0.1:$BE_H2 http2 backlog=4096;
    http2_max_concurrent_streams 1024;
    location / { default_type text/plain; return 200 "$BODY\n"; }
  }
}
EOF
  start_bg "$LOADGEN_CPU" backend nginx -p "$TMP/be" -e "$TMP/be/error.log" -c "$TMP/be/nginx.conf"
  BACKEND_PID=$LAST_PID
  wait_port "$BE" && wait_port "$BE_H2" || { log "backend failed"; cat "$TMP/backend.out" "$TMP/be/error.log" >&2; exit 1; }
}

# ---------------------------------------------------------------- the three hops
HCM='"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager'
ROUTER='{ name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }'
ROUTES='route_config: { virtual_hosts: [ { name: all, domains: ["*"], routes: [ { match: { prefix: "/" }, route: { cluster: up, timeout: 0s } } ] } ] }'

start_skiff() {  # <out> <in> <dir> <peer> <binary>
  local out=$1 in=$2 d=$3 peer=$4 bin=$5
  cat >"$d/inbound.yaml" <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $((in + 100)) } } }
static_resources:
  listeners:
  - name: inbound
    address: { socket_address: { address: 127.0.0.1, port_value: $in } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates: [ { certificate_chain: { filename: $C/server.pem }, private_key: { filename: $C/server.key } } ]
            validation_context: { trusted_ca: { filename: $C/ca.pem } }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          $HCM
          stat_prefix: inbound
          generate_request_id: false
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: { uri: true }
          $ROUTES
          http_filters: [ $ROUTER ]
  clusters:
  - name: up
    type: STATIC
    load_assignment: { cluster_name: up, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $BE } } } } ] } ] }
EOF
  cat >"$d/outbound.yaml" <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $((out + 100)) } } }
static_resources:
  listeners:
  - name: outbound
    address: { socket_address: { address: 127.0.0.1, port_value: $out } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          $HCM
          stat_prefix: outbound
          generate_request_id: false
          $ROUTES
          http_filters: [ $ROUTER ]
  clusters:
  - name: up
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: { max_concurrent_streams: 1000 } }
    load_assignment: { cluster_name: up, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $in } } } } ] } ] }
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates: [ { certificate_chain: { filename: $C/client.pem }, private_key: { filename: $C/client.key } } ]
          validation_context:
            trusted_ca: { filename: $C/ca.pem }
            match_typed_subject_alt_names: [ { san_type: URI, matcher: { exact: "$SERVER_ID" } } ]
EOF
  start_bg "$PROXY_CPU" "$peer.in" "$bin" -c "$d/inbound.yaml" --concurrency 1 -l warn; PIDS[$peer,in]=$LAST_PID
  start_bg "$PROXY_CPU" "$peer.out" "$bin" -c "$d/outbound.yaml" --concurrency 1 -l warn; PIDS[$peer,out]=$LAST_PID
}

start_nghttpx() {
  local out=$1 in=$2 d=$3
  start_bg "$PROXY_CPU" nghttpx.in nghttpx --conf=/dev/null --workers=1 --log-level=WARN \
    -f"127.0.0.1,$in" -b"127.0.0.1,$BE" \
    --verify-client --verify-client-cacert="$C/ca.pem" \
    --errorlog-file="$d/in.err" --pid-file="$d/in.pid" "$C/server.key" "$C/server.pem"
  PIDS[nghttpx,in]=$LAST_PID
  start_bg "$PROXY_CPU" nghttpx.out nghttpx --conf=/dev/null --workers=1 --log-level=WARN \
    -f"127.0.0.1,$out;no-tls" -b"127.0.0.1,$in;;proto=h2;tls;sni=localhost" \
    --cacert="$C/ca.pem" --client-private-key-file="$C/client.key" --client-cert-file="$C/client.pem" \
    --errorlog-file="$d/out.err" --pid-file="$d/out.pid"
  PIDS[nghttpx,out]=$LAST_PID
}

start_haproxy() {
  local out=$1 in=$2 d=$3 side
  for side in in out; do
    {
      echo "global"
      echo "  nbthread 1"
      echo "  maxconn 8000"
      echo "  pidfile $d/$side.pid"
      echo "defaults"
      echo "  mode http"
      echo "  option http-keep-alive"
      echo "  http-reuse always"
      echo "  timeout connect 5s"
      echo "  timeout client 300s"
      echo "  timeout server 300s"
      echo "  timeout http-keep-alive 300s"
      echo "frontend fe"
      if [ $side = in ]; then
        echo "  bind 127.0.0.1:$in ssl crt $C/server.bundle.pem ca-file $C/ca.pem verify required alpn h2,http/1.1"
      else
        echo "  bind 127.0.0.1:$out"
      fi
      echo "  default_backend be"
      echo "backend be"
      if [ $side = in ]; then
        echo "  server s1 127.0.0.1:$BE"
      else
        echo "  server s1 127.0.0.1:$in ssl crt $C/client.bundle.pem ca-file $C/ca.pem verify required sni str(localhost) verifyhost localhost alpn h2"
      fi
    } >"$d/$side.cfg"
    start_bg "$PROXY_CPU" haproxy.$side haproxy -db -f "$d/$side.cfg"
    PIDS[haproxy,$side]=$LAST_PID
  done
}

start_peer() {  # <peer> <index>
  local peer=$1 out=$((BASE_PORT + 10 * $2)) in=$((BASE_PORT + 10 * $2 + 1)) d="$TMP/$1"
  mkdir -p "$d"
  OUTP[$peer]=$out; INP[$peer]=$in
  case $peer in
    direct) OUTP[$peer]=$BE_H2; INP[$peer]=""; return 0 ;;
    skiff) start_skiff "$out" "$in" "$d" skiff "$SKIFF_BIN" ;;
    skiffb) [ -n "${SKIFF_BIN_B:-}" ] || { log "skiffb needs SKIFF_BIN_B"; return 1; }
            start_skiff "$out" "$in" "$d" skiffb "$SKIFF_BIN_B" ;;
    nghttpx) start_nghttpx "$out" "$in" "$d" ;;
    haproxy) start_haproxy "$out" "$in" "$d" ;;
    *) log "unknown peer $peer"; return 1 ;;
  esac
  wait_port "$out" && wait_port "$in" || { log "$peer did not listen"; cat "$TMP/$peer".*.out >&2; return 1; }
}

smoke() {  # h2c and h1 through the hop answer 200 with the body
  local p=${OUTP[$1]} v b
  v=$(curl -s --max-time 5 --http2-prior-knowledge -o "$TMP/smoke.body" -w '%{http_version} %{http_code}' "http://127.0.0.1:$p/")
  [ "$v" = "2 200" ] && [ "$(cat "$TMP/smoke.body")" = "$BODY" ] || { log "$1: h2c smoke failed: '$v'"; cat "$TMP/$1".*.out >&2; return 1; }
  [ "$1" = direct ] && return 0
  b=$(curl -s --max-time 5 "http://127.0.0.1:$p/") && [ "$b" = "$BODY" ] || { log "$1: h1 smoke failed: '$b'"; return 1; }
  v=$(timeout 20 taskset -c "$LOADGEN_CPU" bash "$TMP/hs.sh" "${INP[$1]}" | tail -1)
  [[ "$v" == "TOTAL ok="[1-9]*" fail=0" ]] || { log "$1: handshake loop smoke failed: $v"; return 1; }
}

perf_start() {  # perf record on the skiff pair (round 1 only, PERF=1)
  PERF_PID=""
  [ "$PERF" = 1 ] && [ "$1" = skiff ] && [ "$2" = 1 ] || return 0
  perf record -g -F 2000 -o "$TMP/perf.$3.data" -p "${PIDS[skiff,out]},${PIDS[skiff,in]}" >/dev/null 2>&1 &
  PERF_PID=$!
  sleep 0.3
}
perf_stop() { [ -n "${PERF_PID:-}" ] && { kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null; PERF_PID=""; }; return 0; }

trial() {  # <peer> <round>
  local peer=$1 r=$2 out=${OUTP[$1]} in=${INP[$1]:-} f n p50 p99 t
  # (1) long-lived connections, h2c to the outbound
  timeout -k 2 20 taskset -c "$LOADGEN_CPU" h2load -c"$CONNS" -m"$STREAMS" -D1 "http://127.0.0.1:$out/" >/dev/null 2>&1
  perf_start "$peer" "$r" ll
  measure_retry "$peer" ll $((DUR + 30)) h2load -c"$CONNS" -m"$STREAMS" -D"$DUR" --log-file="$TMP/$peer.ll.log" "http://127.0.0.1:$out/"
  perf_stop
  f=$TMP/$peer.ll.txt
  R[$peer,rps,$r]=$(awk '/^finished in/{gsub(",",""); printf "%.0f", $4}' "$f")
  n=$(awk '/^requests:/{print $8}' "$f")
  R[$peer,err,$r]=$(awk '/^requests:/{s+=$10+$12+$14} /^status codes:/{s+=$5+$7+$9} END{print s+0}' "$f")
  read -r p50 p99 < <(h2log_pct "$TMP/$peer.ll.log"); R[$peer,p50,$r]=$p50; R[$peer,p99,$r]=$p99
  rm -f "$TMP/$peer.ll.log"
  R[$peer,ll_noise,$r]=${R[$peer,ll.noise]}
  if [ -n "$in" ] && [ "${n:-0}" -gt 0 ]; then
    R[$peer,cpu,$r]=$(awk -v t=$((R[$peer,ll.pt_out] + R[$peer,ll.pt_in])) -v n="$n" -v hz="$HZ" 'BEGIN{printf "%.1f", t/hz*1e6/n}')
    R[$peer,cpu_out,$r]=$(awk -v t="${R[$peer,ll.pt_out]}" -v n="$n" -v hz="$HZ" 'BEGIN{printf "%.1f", t/hz*1e6/n}')
    R[$peer,cpu_in,$r]=$(awk -v t="${R[$peer,ll.pt_in]}" -v n="$n" -v hz="$HZ" 'BEGIN{printf "%.1f", t/hz*1e6/n}')
    R[$peer,pool,$r]=$(hop_conns "$in")
  fi
  if [ -z "$in" ]; then
    log "   r$r $peer: ${R[$peer,rps,$r]} req/s p50 ${R[$peer,p50,$r]} p99 ${R[$peer,p99,$r]} us (noise ${R[$peer,ll.noise]}%)"
    return 0
  fi

  # (2a) a new client connection per request (HTTP/1.1, Connection: close) through the hop
  measure_retry "$peer" cc $((CLOSE_DUR + 30)) wrk -t1 -c"$CLOSE_CONNS" -d"${CLOSE_DUR}s" -s "$TMP/lat.lua" "http://127.0.0.1:$out/"
  f=$TMP/$peer.cc.txt
  n=$(awk '/^RESULT/{for(i=2;i<=NF;i++){split($i,kv,"="); if(kv[1]=="requests") print kv[2]}}' "$f")
  t=$(awk '/^RESULT/{for(i=2;i<=NF;i++){split($i,kv,"="); if(kv[1]=="duration_us") print kv[2]}}' "$f")
  R[$peer,ccps,$r]=$(awk -v n="${n:-0}" -v d="${t:-0}" 'BEGIN{if(d>0) printf "%.0f", n/(d/1e6)}')
  R[$peer,cc_err,$r]=$(awk '/^RESULT/{for(i=2;i<=NF;i++){split($i,kv,"="); if(kv[1]=="errors"||kv[1]=="status_err") s+=kv[2]}} END{print s+0}' "$f")
  [ "${n:-0}" -gt 0 ] && R[$peer,cc_cpu,$r]=$(awk -v t=$((R[$peer,cc.pt_out] + R[$peer,cc.pt_in])) -v n="$n" -v hz="$HZ" 'BEGIN{printf "%.1f", t/hz*1e6/n}')
  R[$peer,cc_pool,$r]=$(hop_conns "$in")
  R[$peer,cc_noise,$r]=${R[$peer,cc.noise]}

  # (2b) full mTLS handshakes against the inbound
  perf_start "$peer" "$r" hs
  measure_retry "$peer" hs $((HS_DUR + 30)) bash "$TMP/hs.sh" "$in"
  perf_stop
  f=$TMP/$peer.hs.txt
  n=$(awk '/^TOTAL/{split($2,a,"="); print a[2]}' "$f")
  R[$peer,hs_fail,$r]=$(awk '/^TOTAL/{split($3,a,"="); print a[2]}' "$f")
  R[$peer,hsps,$r]=$(awk -v n="${n:-0}" -v s="${R[$peer,hs.secs]}" 'BEGIN{if(s>0) printf "%.0f", n/s}')
  if [ "${n:-0}" -gt 0 ]; then
    R[$peer,hs_cpu,$r]=$(awk -v t="${R[$peer,hs.pt_in]}" -v n="$n" -v hz="$HZ" 'BEGIN{printf "%.0f", t/hz*1e6/n}')
    R[$peer,hs_cap,$r]=$(awk -v t="${R[$peer,hs.pt_in]}" -v n="$n" -v hz="$HZ" 'BEGIN{if(t>0) printf "%.0f", n/(t/hz)}')
  fi
  R[$peer,hs_noise,$r]=${R[$peer,hs.noise]}
  R[$peer,hs_pcpu,$r]=${R[$peer,hs.pcpu]}
  log "   r$r $peer: ${R[$peer,rps,$r]} req/s p99 ${R[$peer,p99,$r]} us ${R[$peer,cpu,$r]:-} us/req (noise ${R[$peer,ll.noise]}%);" \
      "conn/s ${R[$peer,ccps,$r]:-} ${R[$peer,cc_cpu,$r]:-} us/conn (noise ${R[$peer,cc.noise]}%);" \
      "hs/s ${R[$peer,hsps,$r]:-} ${R[$peer,hs_cpu,$r]:-} us/hs, inbound ${R[$peer,hs.pcpu]}% cpu (noise ${R[$peer,hs.noise]}%)"
}

# ---------------------------------------------------------------- main
ulimit -n "$(ulimit -Hn)" 2>/dev/null
[ "$BENCH_NICE" != 0 ] && { renice -n "$BENCH_NICE" -p $$ >/dev/null 2>&1 || log "renice failed; nice 0"; }
for p in $BE $BE_H2 $(for i in 1 2 3 4 5; do echo $((BASE_PORT + 10 * i)) $((BASE_PORT + 10 * i + 1)) $((BASE_PORT + 10 * i + 100)) $((BASE_PORT + 10 * i + 101)); done); do
  port_free "$p" || { log "port $p busy; set BASE_PORT"; exit 1; }
done
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$(date +%s)
log "tmp=$TMP peers: $PEERS rounds=$ROUNDS skiff=${SKIFF_BIN:-} (loadgen+backend cpu$LOADGEN_CPU, proxies cpu$PROXY_CPU, nice $(ps -o ni= -p $$ | tr -d ' '))"
start_backend
OK=()
i=0
for peer in $PEERS; do
  i=$((i + 1))
  if start_peer "$peer" "$i" && smoke "$peer"; then OK+=("$peer"); else log "$peer: skipped"; fi
done
[ ${#OK[@]} -gt 0 ] || exit 1
for r in $(seq 1 "$ROUNDS"); do
  order=("${OK[@]}")
  if [ $((r % 2)) = 0 ]; then order=(); for ((j=${#OK[@]}-1; j>=0; j--)); do order+=("${OK[$j]}"); done; fi
  log "round $r/$ROUNDS: ${order[*]}"
  for peer in "${order[@]}"; do trial "$peer" "$r"; done
done
T1=$(date +%s)

perround() { local r out=""; for r in $(seq 1 "$ROUNDS"); do out="$out ${R[$1,$2,$r]:-}"; done; echo "$out"; }
MET="rps p50 p99 cpu cpu_out cpu_in pool ll_noise ccps cc_cpu cc_pool cc_noise hsps hs_cpu hs_cap hs_noise hs_pcpu"
COLS="rps:hi p99:lo cpu:lo ccps:hi cc_cpu:lo hsps:hi hs_cpu:lo hs_cap:hi"
for peer in "${OK[@]}"; do
  for m in $MET; do R[$peer,$m]=$(perround "$peer" "$m" | median); done
  for m in rps p99 cpu ccps hsps hs_cpu; do R[$peer,$m.range]=$(perround "$peer" "$m" | minmax); done
  # best of rounds: interference from other tenants only ever lowers throughput and raises
  # latency and CPU per unit of work, so the best round is the least disturbed one
  for c in $COLS; do
    k=${c%%:*}
    if [ "${c##*:}" = hi ]; then R[$peer,$k.best]=$(perround "$peer" "$k" | minmax | sed 's/.*\.\.//')
    else R[$peer,$k.best]=$(perround "$peer" "$k" | minmax | sed 's/\.\..*//'); fi
  done
  for m in err cc_err hs_fail; do R[$peer,$m]=$(perround "$peer" "$m" | tr ' ' '\n' | awk '{s+=$1} END{print s+0}'); done
done

v() { local x=${R[$1,$2]:-}; [ -n "$x" ] && echo "$x" || echo "-"; }
ms() { local x=${R[$1,$2]:-}; [ -n "$x" ] && [ "$x" != NA ] && awk -v v="$x" 'BEGIN{printf "%.2f", v/1000}' || echo "-"; }
star() { awk -v a="${R[$1,ll_noise]:-0}" -v b="${R[$1,cc_noise]:-0}" -v c="${R[$1,hs_noise]:-0}" -v m="$MAX_NOISE" 'BEGIN{exit !(a>m||b>m||c>m)}' && echo "*"; }
echo
echo "### Mesh hop, $(date -u +%Y-%m-%dT%H:%MZ): $ROUNDS interleaved rounds, $((T1 - T0)) s, loadavg at start $LOAD0"
echo
echo "Medians. Long-lived: h2load -c$CONNS -m$STREAMS -D$DUR h2c to the outbound (p50/p99 from --log-file); CPU = both proxies' user+sys per request. Conn churn: wrk -t1 -c$CLOSE_CONNS -d${CLOSE_DUR}s, HTTP/1.1 Connection: close to the outbound. Handshakes: $HS_CLIENTS python ssl loops x ${HS_DUR}s of full mTLS (TLS 1.3, no resumption, ALPN h2, wait for the first h2 frame) straight to the inbound; CPU = inbound only; capacity = 1e6 / CPU us per handshake. noise = foreign CPU, % of one CPU (ll/cc/hs)."
echo
echo "| peer | req/s | p50 ms | p99 ms | CPU us/req (out+in) | hop conns | new conn/s (close) | CPU us/conn | mTLS hs/s | CPU us/hs (inbound) | hs capacity/s/core | errors ll/cc/hs | noise % ll/cc/hs |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
for peer in "${OK[@]}"; do
  echo "| $peer$(star "$peer") | $(v "$peer" rps) | $(ms "$peer" p50) | $(ms "$peer" p99) | $(v "$peer" cpu) ($(v "$peer" cpu_out)+$(v "$peer" cpu_in)) | $(v "$peer" pool) | $(v "$peer" ccps) | $(v "$peer" cc_cpu) | $(v "$peer" hsps) | $(v "$peer" hs_cpu) | $(v "$peer" hs_cap) | $(v "$peer" err)/$(v "$peer" cc_err)/$(v "$peer" hs_fail) | $(v "$peer" ll_noise)/$(v "$peer" cc_noise)/$(v "$peer" hs_noise) |"
done
declare -A BEST BESTN
for c in $COLS; do
  k=${c%%:*}; dir=${c##*:}; best=""
  for peer in "${OK[@]}"; do
    { [ "$peer" = direct ] || [[ "$peer" == skiff* ]]; } && continue
    x=${R[$peer,$k]:-}; { [ -z "$x" ] || [ "$x" = NA ]; } && continue
    if [ -z "$best" ] || { [ "$dir" = hi ] && awk -v a="$x" -v b="$best" 'BEGIN{exit !(a>b)}'; } || { [ "$dir" = lo ] && awk -v a="$x" -v b="$best" 'BEGIN{exit !(a<b)}'; }; then
      best=$x; BESTN[$k]=$peer
    fi
  done
  BEST[$k]=$best
  best=""
  for peer in "${OK[@]}"; do
    { [ "$peer" = direct ] || [[ "$peer" == skiff* ]]; } && continue
    x=${R[$peer,$k.best]:-}; [ -z "$x" ] && continue
    if [ -z "$best" ] || { [ "$dir" = hi ] && awk -v a="$x" -v b="$best" 'BEGIN{exit !(a>b)}'; } || { [ "$dir" = lo ] && awk -v a="$x" -v b="$best" 'BEGIN{exit !(a<b)}'; }; then
      best=$x; BESTN[$k.best]=$peer
    fi
  done
  BEST[$k.best]=$best
done
for sk in "${OK[@]}"; do
  [[ "$sk" == skiff* ]] && [ -n "${R[$sk,rps]:-}" ] || continue
  echo
  echo "$sk / best peer (nghttpx, haproxy); req/s, conn/s, hs: >1 better; p99 and CPU: <1 better. hs/s is bounded by the load generator (see inbound CPU % below); hs capacity (per CPU-second of the inbound) is the comparable handshake figure"
  echo
  echo "| metric | $sk median | best peer median | ratio | $sk best round | best peer, best round | ratio |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for c in $COLS; do
    k=${c%%:*}
    x=${R[$sk,$k]:-} b=${BEST[$k]:-} xb=${R[$sk,$k.best]:-} bb=${BEST[$k.best]:-}
    [ -n "$x" ] && [ -n "$b" ] && echo "| $k | $x | $b (${BESTN[$k]}) | $(awk -v a="$x" -v b="$b" 'BEGIN{if(b>0) printf "%.2f", a/b; else print "-"}') | $xb | $bb (${BESTN[$k.best]:-}) | $(awk -v a="$xb" -v b="$bb" 'BEGIN{if(b>0) printf "%.2f", a/b; else print "-"}') |"
  done
done
echo
echo "Ranges over rounds (min..max):"
echo
echo "| peer | req/s | p99 us | CPU us/req | conn/s | hs/s | CPU us/hs | inbound CPU % during hs |"
echo "|---|---|---|---|---|---|---|---:|"
for peer in "${OK[@]}"; do
  echo "| $peer | $(v "$peer" rps.range) | $(v "$peer" p99.range) | $(v "$peer" cpu.range) | $(v "$peer" ccps.range) | $(v "$peer" hsps.range) | $(v "$peer" hs_cpu.range) | $(v "$peer" hs_pcpu) |"
done
if [ "$PERF" = 1 ]; then
  for k in ll hs; do
    [ -f "$TMP/perf.$k.data" ] && perf report -i "$TMP/perf.$k.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -40 >"$TMP/perf.$k.txt"
  done
  log "perf reports: $TMP/perf.ll.txt $TMP/perf.hs.txt (data: $TMP/perf.*.data)"
fi
