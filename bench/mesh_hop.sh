#!/usr/bin/env bash
# The mesh hop vs direct, with h2load (HTTP/2 end to end):
#   direct: h2load -> backend (nghttpd, h2c)
#   hop:    h2load -> skiff outbound (h2c in, h2 over mTLS out, SAN checked)
#                  -> skiff inbound (mTLS in, STRICT, h2c out) -> backend
# Certificates come from examples/mesh/certs.sh (SPIFFE ids). Each skiff runs one
# worker; both skiffs share CPU $PROXY_CPU, load generator and backend CPU
# $LOADGEN_CPU (2-core machine). Reports, as medians over $ROUNDS rounds:
#   - unloaded latency (1 connection, 1 request in flight): mean per request,
#     and what the hop adds;
#   - under load (-c $CONNS -m $STREAMS): req/s, and the two skiffs' CPU time per
#     request (utime+stime from /proc, both sidecars together and each).
# Usage: bash bench/mesh_hop.sh      (ROUNDS=3 N=50000 LAT_N=2000 CONNS=8 STREAMS=16)
#        SKIFF_BIN=path/to/skiff bash bench/mesh_hop.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
N=${N:-50000}
LAT_N=${LAT_N:-2000}
CONNS=${CONNS:-8}
STREAMS=${STREAMS:-16}
LOADGEN_CPU=${LOADGEN_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
BASE_PORT=${BASE_PORT:-27300}

for t in h2load nghttpd taskset openssl awk; do
  command -v "$t" >/dev/null || { echo "mesh_hop: $t missing (bash scripts/deps.sh)" >&2; exit 1; }
done
if [ -z "${SKIFF_BIN:-}" ]; then
  [ -d build-release ] || meson setup build-release --buildtype=release -Db_ndebug=true >/dev/null
  ninja -C build-release src/skiff >/dev/null
  SKIFF_BIN=$PWD/build-release/src/skiff
fi

TMP=$(mktemp -d /tmp/skiff-meshhop.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

BACK=$BASE_PORT IN=$((BASE_PORT + 1)) OUT=$((BASE_PORT + 2))
IN_ADM=$((BASE_PORT + 3)) OUT_ADM=$((BASE_PORT + 4))

(cd "$TMP" && cp "$OLDPWD/examples/mesh/certs.sh" . && bash certs.sh >/dev/null 2>&1)
C=$TMP/certs
mkdir -p "$TMP/htdocs"
head -c 1024 /dev/zero | tr '\0' x >"$TMP/htdocs/index.html"

HCM='"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager'
ROUTER='{ name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }'
H2OPTS='typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: { max_concurrent_streams: 1000 } }'
ROUTES='route_config: { virtual_hosts: [ { name: all, domains: ["*"], routes: [ { match: { prefix: "/" }, route: { cluster: up, timeout: 0s } } ] } ] }'

cat >"$TMP/inbound.yaml" <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $IN_ADM } } }
static_resources:
  listeners:
  - name: inbound
    address: { socket_address: { address: 127.0.0.1, port_value: $IN } }
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
    $H2OPTS
    load_assignment: { cluster_name: up, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $BACK } } } } ] } ] }
EOF
cat >"$TMP/outbound.yaml" <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $OUT_ADM } } }
static_resources:
  listeners:
  - name: outbound
    address: { socket_address: { address: 127.0.0.1, port_value: $OUT } }
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
    $H2OPTS
    load_assignment: { cluster_name: up, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $IN } } } } ] } ] }
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
            match_typed_subject_alt_names: [ { san_type: URI, matcher: { exact: "spiffe://skiff.local/ns/default/sa/server" } } ]
EOF

wait_port() {
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "mesh_hop: port $1 did not open" >&2; return 1
}

taskset -c "$LOADGEN_CPU" nghttpd --no-tls -d "$TMP/htdocs" -a 127.0.0.1 "$BACK" >"$TMP/nghttpd.log" 2>&1 &
PIDS+=($!)
taskset -c "$PROXY_CPU" "$SKIFF_BIN" -c "$TMP/inbound.yaml" --concurrency 1 -l warn >"$TMP/inbound.log" 2>&1 &
IN_PID=$!
PIDS+=($IN_PID)
taskset -c "$PROXY_CPU" "$SKIFF_BIN" -c "$TMP/outbound.yaml" --concurrency 1 -l warn >"$TMP/outbound.log" 2>&1 &
OUT_PID=$!
PIDS+=($OUT_PID)
wait_port "$BACK"; wait_port "$IN"; wait_port "$OUT"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

h2l() { taskset -c "$LOADGEN_CPU" timeout -k 2 300 h2load "$@" 2>&1; }
mean_us() {  # mean "time for request" of an h2load report, in us
  awk '/time for request:/{v=$6; u=v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
       f = (u=="us") ? 1 : (u=="ms") ? 1000 : (u=="s") ? 1000000 : 0; printf "%.0f", v*f}'
}
ok_or_die() {  # <report> <n>
  grep -q "$2 succeeded, 0 failed" <<<"$1" || { echo "mesh_hop: failures:" >&2; echo "$1" >&2; exit 1; }
}
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# warm up: TLS connection, session caches, page cache
h2l -n 2000 -c 2 -m 8 "http://127.0.0.1:$OUT/index.html" >/dev/null

declare -a LD LH RD RH CPU CIN COUT
for r in $(seq "$ROUNDS"); do
  rep=$(h2l -n "$LAT_N" -c 1 -m 1 "http://127.0.0.1:$BACK/index.html"); ok_or_die "$rep" "$LAT_N"
  LD+=("$(mean_us <<<"$rep")")
  rep=$(h2l -n "$LAT_N" -c 1 -m 1 "http://127.0.0.1:$OUT/index.html"); ok_or_die "$rep" "$LAT_N"
  LH+=("$(mean_us <<<"$rep")")
  rep=$(h2l -n "$N" -c "$CONNS" -m "$STREAMS" "http://127.0.0.1:$BACK/index.html"); ok_or_die "$rep" "$N"
  RD+=("$(awk '/^finished in/{printf "%.0f", $4}' <<<"$rep")")
  i0=$(ticks $IN_PID) o0=$(ticks $OUT_PID)
  rep=$(h2l -n "$N" -c "$CONNS" -m "$STREAMS" "http://127.0.0.1:$OUT/index.html"); ok_or_die "$rep" "$N"
  i1=$(ticks $IN_PID) o1=$(ticks $OUT_PID)
  RH+=("$(awk '/^finished in/{printf "%.0f", $4}' <<<"$rep")")
  CIN+=("$(awk -v d=$((i1 - i0)) -v hz="$HZ" -v n="$N" 'BEGIN{printf "%.1f", d * 1e6 / hz / n}')")
  COUT+=("$(awk -v d=$((o1 - o0)) -v hz="$HZ" -v n="$N" 'BEGIN{printf "%.1f", d * 1e6 / hz / n}')")
  CPU+=("$(awk -v d=$((i1 - i0 + o1 - o0)) -v hz="$HZ" -v n="$N" 'BEGIN{printf "%.1f", d * 1e6 / hz / n}')")
  echo "round $r: latency direct ${LD[-1]} us, hop ${LH[-1]} us; req/s direct ${RD[-1]}, hop ${RH[-1]};" \
       "skiff CPU/req ${CPU[-1]} us (outbound ${COUT[-1]}, inbound ${CIN[-1]})"
done

ld=$(printf '%s\n' "${LD[@]}" | median) lh=$(printf '%s\n' "${LH[@]}" | median)
rd=$(printf '%s\n' "${RD[@]}" | median) rh=$(printf '%s\n' "${RH[@]}" | median)
cpu=$(printf '%s\n' "${CPU[@]}" | median)
cout=$(printf '%s\n' "${COUT[@]}" | median) cin=$(printf '%s\n' "${CIN[@]}" | median)
hs_in=$(curl -s "http://127.0.0.1:$IN_ADM/stats" | awk -F': ' '$1=="tls_handshake_server_ok"{print $2}')
echo
echo "mesh hop (h2 over mTLS between two skiffs, 1 worker each), medians of $ROUNDS rounds"
printf '%-34s %12s %12s %12s\n' "" direct "mesh hop" "added"
printf '%-34s %12s %12s %12s\n' "unloaded latency (us/request)" "$ld" "$lh" "$(awk -v a="$lh" -v b="$ld" 'BEGIN{print a-b}')"
printf '%-34s %12s %12s %12s\n' "req/s (-c $CONNS -m $STREAMS)" "$rd" "$rh" "-"
printf '%-34s %12s %12s %12s\n' "skiff CPU us/request (both)" "-" "$cpu" "$cpu"
printf '%-34s %12s %12s\n' "  outbound / inbound" "-" "$cout / $cin"
echo "mTLS handshakes at the inbound over the whole run: ${hs_in:-?} (connections are long-lived)"
