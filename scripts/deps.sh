#!/usr/bin/env bash
# Install the Debian 12 packages skiff needs (build + tests). Idempotent:
# runs `apt-get update` once and installs only what is missing.
set -euo pipefail
PKGS=(meson ninja-build pkg-config gcc clang libclang-rt-14-dev
      libev-dev libssl-dev libnghttp2-dev libyaml-dev libprotobuf-c-dev protobuf-c-compiler
      libc-ares-dev
      curl python3 python3-yaml python3-pytest python3-h2 python3-grpcio python3-protobuf protobuf-compiler
      nghttp2-client nghttp2-server openssl valgrind prometheus chromium)
if [ "${1:-}" = "--bench" ]; then
  PKGS+=(nghttp2-proxy haproxy nginx wrk)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "skiff: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
