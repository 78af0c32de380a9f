#!/usr/bin/env bash
# One command: install what is missing, build, start a small local service on
# 127.0.0.1:8080 and skiff in front of it (examples/quickstart.yaml), print
# what to curl, and keep running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
[ -d build ] || meson setup build --buildtype=release >/dev/null
ninja -C build >/dev/null
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
/usr/bin/python3 examples/hello_service.py 127.0.0.1 8080 &
pids+=($!)
build/src/skiff -c examples/quickstart.yaml &
pids+=($!)
for _ in $(seq 50); do curl -fs http://127.0.0.1:15000/ready >/dev/null 2>&1 && break; sleep 0.1; done
cat <<MSG

skiff is running: listener 127.0.0.1:10000 -> local service 127.0.0.1:8080, admin 127.0.0.1:15000

  curl -i http://127.0.0.1:10000/hello          # proxied to the local service
  curl -i http://127.0.0.1:10000/anything?x=1   # the service echoes what it received
  curl -s http://127.0.0.1:15000/ready          # readiness
  curl -s http://127.0.0.1:15000/stats          # counters
  kill -HUP $(pgrep -n -f 'skiff -c examples/quickstart.yaml' || echo PID)  # reload the config

Ctrl-C stops both.
MSG
wait
