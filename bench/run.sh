#!/usr/bin/env bash
# skiff side by side with nghttpx, haproxy and nginx in one run (one worker
# each, pinned), via the shared reference harness. Prints one table.
#   bash bench/run.sh              # ROUNDS=3 by default (~8 min); ROUNDS=1 ~3 min
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --bench
[ -d build-release ] || meson setup build-release --buildtype=release -Db_ndebug=true >/dev/null
ninja -C build-release >/dev/null
HARNESS=${HARNESS:-../shared/bench/peers.sh}
EXTRA_NAME=skiff \
EXTRA_CMD="$PWD/build-release/src/skiff -c {CONFIG} --concurrency 1 -l warn" \
EXTRA_CONFIG_TEMPLATE="$PWD/bench/skiff.yaml.in" \
  bash "$HARNESS"
