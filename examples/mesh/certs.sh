#!/usr/bin/env bash
# Writes a CA and two SPIFFE workload certificates into ./certs:
#   server: spiffe://skiff.local/ns/default/sa/server (also DNS localhost, IP 127.0.0.1)
#   client: spiffe://skiff.local/ns/default/sa/client
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p certs && cd certs
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/O=skiff/CN=skiff mesh CA" -keyout ca.key -out ca.pem 2>/dev/null
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/O=skiff/CN=$who" -keyout $who.key -out $who.csr 2>/dev/null
  san="URI:spiffe://skiff.local/ns/default/sa/$who"
  [ $who = server ] && san="$san,DNS:localhost,IP:127.0.0.1"
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$san" > $who.ext
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -extfile $who.ext -out $who.pem 2>/dev/null
  rm -f $who.csr $who.ext
done
echo "certs written to $(pwd): ca.pem server.pem server.key client.pem client.key"
