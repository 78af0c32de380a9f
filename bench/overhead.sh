#!/usr/bin/env bash
# What skiff's optional machinery costs, measured against the bare proxy in
# one interleaved run (issue 5: resilience policies, issue 8: JSON access log):
#
#   bare      one HTTP listener -> one cluster, nothing else
#   policies  + route retry_policy (5xx, reset, connect-failure; 2 retries, per-try
#             timeout, retry budget), circuit breakers, outlier detection (all
#             three detectors), active HTTP health checks every 1 s
#   accesslog + a JSON access log (14 fields) to a file, and the stats it counts
#
# skiff runs with one worker pinned to CPU $PROXY_CPU, wrk (HTTP/1.1, 64
# connections) on CPU $LOADGEN_CPU, an nginx backend (64-byte body). Reported
# per variant: median req/s and skiff CPU time per request over $ROUNDS rounds
# (CPU from /proc/PID/stat, the noise-robust figure), and the ratio to bare.
#
# Then per-host state: RSS of skiff with one cluster of $HOSTS endpoints (all
# policies on) minus RSS with one endpoint, divided by the host count.
#
#   bash bench/overhead.sh            # ROUNDS=5 DUR=8 (~5 min)
#   ONLY=hosts bash bench/overhead.sh # only the state-per-host section (seconds)
#   WORKERS="1 2" ONLY=hosts ...      # state per host with 1 and with 2 workers
#   SKIFF_BIN=build-x/src/skiff ...   # another binary (default: build-release)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DUR=${DUR:-8}
HOSTS=${HOSTS:-2000}
PROXY_CPU=${PROXY_CPU:-1}
LOADGEN_CPU=${LOADGEN_CPU:-0}
BASE=${BASE_PORT:-27600}
ONLY=${ONLY:-}
WORKERS=${WORKERS:-1}
case "$ONLY" in ""|hosts) ;; *) echo "overhead.sh: ONLY must be empty or 'hosts'" >&2; exit 2 ;; esac
if [ "$ONLY" = hosts ]; then command -v curl >/dev/null || bash scripts/deps.sh >/dev/null
else bash scripts/deps.sh --bench >/dev/null; fi
if [ -n "${SKIFF_BIN:-}" ]; then
  SKIFF=$(realpath "$SKIFF_BIN")
else
  [ -d build-release ] || meson setup build-release --buildtype=release -Db_ndebug=true >/dev/null
  ninja -C build-release >/dev/null
  SKIFF=$PWD/build-release/src/skiff
fi
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

BPORT=$BASE; LPORT=$((BASE + 1)); APORT=$((BASE + 2))
# ---- backend: nginx, one worker, 64-byte body -------------------------------------------
# (not needed for the state-per-host section: its health checks may fail, memory is what counts)
if [ "$ONLY" != hosts ]; then
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$BPORT;
    location / { return 200 "0123456789012345678901234567890123456789012345678901234567890123"; }
  }
}
EOF
taskset -c "$LOADGEN_CPU" nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" &
PIDS+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$BPORT/" && break; sleep 0.1; done
fi

# ---- configs ------------------------------------------------------------------------------
config() { # config <variant> <nhosts> <file>
  local v=$1 n=$2 f=$3
  local route_extra="" cluster_extra="" hcm_extra=""
  if [ "$v" = policies ] || [ "$v" = hosts ]; then
    route_extra='
                  retry_policy:
                    retry_on: "5xx,reset,connect-failure"
                    num_retries: 2
                    per_try_timeout: 2s
                    retry_back_off: { base_interval: 0.01s, max_interval: 0.1s }'
    cluster_extra="
    circuit_breakers:
      thresholds:
      - { max_connections: 10000, max_pending_requests: 10000, max_requests: 10000, max_retries: 100,
          retry_budget: { budget_percent: { value: 20 }, min_retry_concurrency: 10 } }
    outlier_detection:
      consecutive_5xx: 5
      consecutive_gateway_failure: 5
      interval: 1s
      base_ejection_time: 30s
      max_ejection_percent: 50
      enforcing_success_rate: 100
      success_rate_minimum_hosts: 1
      success_rate_request_volume: 100
      enforcing_failure_percentage: 100
      failure_percentage_minimum_hosts: 1
      failure_percentage_request_volume: 100
    health_checks:
    - timeout: 1s
      interval: $([ "$v" = hosts ] && echo 30s || echo 1s)
      unhealthy_threshold: 3
      healthy_threshold: 1
      http_health_check: { path: / }"
  fi
  if [ "$v" = accesslog ]; then
    hcm_extra="
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $TMP/access.log
              log_format:
                json_format:
                  start: \"%START_TIME%\"
                  method: \"%REQ(:METHOD)%\"
                  path: \"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\"
                  authority: \"%REQ(:AUTHORITY)%\"
                  protocol: \"%PROTOCOL%\"
                  code: \"%RESPONSE_CODE%\"
                  flags: \"%RESPONSE_FLAGS%\"
                  rx: \"%BYTES_RECEIVED%\"
                  tx: \"%BYTES_SENT%\"
                  duration: \"%DURATION%\"
                  upstream_time: \"%RESPONSE_DURATION%\"
                  upstream: \"%UPSTREAM_HOST%\"
                  cluster: \"%UPSTREAM_CLUSTER%\"
                  request_id: \"%REQ(X-REQUEST-ID)%\""
  fi
  {
    cat <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $APORT } }
static_resources:
  listeners:
  - name: bench
    address: { socket_address: { address: 127.0.0.1, port_value: $LPORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          generate_request_id: false$hcm_extra
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route:
                  cluster: backend$route_extra
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s$cluster_extra
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
EOF
    echo "        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $BPORT } } }"
    for i in $(seq 2 "$n"); do
      echo "        - endpoint: { address: { socket_address: { address: 127.0.0.2, port_value: $((30000 + i)) } } }"
    done
  } >"$f"
}

start_skiff() { # start_skiff <config> [workers]; sets SPID
  taskset -c "$PROXY_CPU" "$SKIFF" -c "$1" --concurrency "${2:-1}" -l error >"$TMP/skiff.log" 2>&1 &
  SPID=$!
  PIDS+=("$SPID")
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/ready" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  echo "skiff did not become ready:" >&2; cat "$TMP/skiff.log" >&2; exit 1
}
stop_skiff() { kill "$SPID"; wait "$SPID" 2>/dev/null || true; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)

VARIANTS=${VARIANTS:-"bare policies accesslog"}
if [ "$ONLY" != hosts ]; then
for v in $VARIANTS; do config "$v" 1 "$TMP/$v.yaml"; done
declare -A RPS CPU
for r in $(seq "$ROUNDS"); do
  for v in $VARIANTS; do
    start_skiff "$TMP/$v.yaml"
    taskset -c "$LOADGEN_CPU" wrk -t1 -c64 -d1s "http://127.0.0.1:$LPORT/" >/dev/null # warm
    t0=$(ticks "$SPID")
    out=$(taskset -c "$LOADGEN_CPU" wrk -t1 -c64 -d"${DUR}s" "http://127.0.0.1:$LPORT/")
    t1=$(ticks "$SPID")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}')
    [ -n "$errs" ] && echo "  $v round $r: $errs" >&2
    RPS[$v]+="$(awk -v n="$n" -v d="$DUR" 'BEGIN{printf "%.0f", n/d}') "
    CPU[$v]+="$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$HZ" 'BEGIN{printf "%.2f", t*1e6/hz/n}') "
    stop_skiff
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "HTTP/1.1, wrk -c64, ${ROUNDS} interleaved rounds of ${DUR}s, medians (skiff: 1 worker)"
printf "%-10s %10s %12s %14s %14s\n" variant "req/s" "CPU us/req" "req/s vs bare" "CPU vs bare"
b_rps=$(echo "${RPS[bare]}" | median); b_cpu=$(echo "${CPU[bare]}" | median)
for v in $VARIANTS; do
  m_rps=$(echo "${RPS[$v]}" | median); m_cpu=$(echo "${CPU[$v]}" | median)
  printf "%-10s %10s %12s %14s %14s\n" "$v" "$m_rps" "$m_cpu" \
    "$(awk -v a="$m_rps" -v b="$b_rps" 'BEGIN{printf "%.3f", a/b}')" \
    "$(awk -v a="$m_cpu" -v b="$b_cpu" 'BEGIN{printf "%.3f", a/b}')"
done
echo "  raw req/s per round:"; for v in $VARIANTS; do echo "    $v: ${RPS[$v]}"; done
echo "  raw CPU us/req per round:"; for v in $VARIANTS; do echo "    $v: ${CPU[$v]}"; done
fi

# ---- state per host ------------------------------------------------------------------------
config hosts 1 "$TMP/h1.yaml"
config hosts "$HOSTS" "$TMP/hN.yaml"
config hosts "$((HOSTS / 2))" "$TMP/hH.yaml"
alloc() { curl -s "http://127.0.0.1:$APORT/memory" | sed -n 's/.*"allocated_bytes": \([0-9]*\).*/\1/p'; }
# Workers build a cluster's hosts when they first route to it: send requests on
# 16 fresh connections first (SO_REUSEPORT spreads them over the workers), so
# the figure counts every worker's host objects. Their status does not matter.
prime() { for _ in $(seq 16); do curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$LPORT/" || true; done; }
for nw in $WORKERS; do
  start_skiff "$TMP/h1.yaml" "$nw"; prime; sleep 1; r1=$(rss_kb "$SPID"); a1=$(alloc); stop_skiff
  start_skiff "$TMP/hN.yaml" "$nw"; prime; sleep 1; rN=$(rss_kb "$SPID"); aN=$(alloc); stop_skiff
  start_skiff "$TMP/hH.yaml" "$nw"; prime; sleep 1; aH=$(alloc); stop_skiff
  echo
  echo "state per host (one cluster of ${HOSTS} hosts vs 1, all policies on, $nw worker(s)):"
  echo "  live heap (mallinfo, incl. the config snapshot's endpoint): $(awk -v a="$aN" -v b="$a1" -v n="$HOSTS" 'BEGIN{printf "%.0f", (a-b)/(n-1)}') bytes per host"
  echo "  RSS (also counts freed parse buffers the allocator kept): $(awk -v a="$rN" -v b="$r1" -v n="$HOSTS" 'BEGIN{printf "%.0f", (a-b)*1024/(n-1)}') bytes per host"
  # constant costs that a big cluster fills up (the per-thread buffer cache,
  # libev's arrays after 1000s of checks started at once) drop out of this one
  echo "  live heap, marginal ($((HOSTS / 2)) -> ${HOSTS} hosts): $(awk -v a="$aN" -v b="$aH" -v n="$HOSTS" 'BEGIN{printf "%.0f", (a-b)/(n-int(n/2))}') bytes per host"
done
