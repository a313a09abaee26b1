#!/usr/bin/env bash
# Makes a cluster CA and member certificates with openssl (for
# `make cluster TLS=1`, the tests, and as a template for your own).
#   scripts/gen-certs.sh DIR ID=IP [ID=IP ...]
# Writes DIR/ca.pem and DIR/ca-key.pem (only if DIR/ca.pem is missing), and
# for each member DIR/node<ID>.pem and DIR/node<ID>-key.pem: an EC P-256
# key and a certificate the CA signs, valid as a server and as a client,
# with the subject alternative names
#   DNS:member-<ID>.raftkv   (the member identity /raft/* checks)
#   IP:<IP>, DNS:localhost   (the address peers and clients connect to)
# Existing member files are kept; delete them to make new ones.
set -euo pipefail
dir="${1:?usage: $0 DIR ID=IP [ID=IP ...]}"
shift
command -v openssl >/dev/null || { echo "$0: openssl is needed (apt-get install openssl)" >&2; exit 2; }
mkdir -p "$dir"
umask 077
if [ ! -f "$dir/ca.pem" ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=raftkv cluster CA $(date -u +%Y%m%dT%H%M%S)" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null
  chmod 644 "$dir/ca.pem"
fi
for item in "$@"; do
  id="${item%%=*}"; ip="${item#*=}"
  case "$id" in ''|*[!0-9]*) echo "$0: '$item' is not ID=IP" >&2; exit 2 ;; esac
  [ -f "$dir/node$id.pem" ] && continue
  ext="$(mktemp)"
  printf '%s\n' \
    "subjectAltName=DNS:member-$id.raftkv,DNS:localhost,IP:$ip" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "keyUsage=critical,digitalSignature" \
    "basicConstraints=critical,CA:FALSE" >"$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=member-$id.raftkv" -keyout "$dir/node$id-key.pem" -out "$dir/node$id.csr" 2>/dev/null
  openssl x509 -req -in "$dir/node$id.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
    -days 825 -extfile "$ext" -out "$dir/node$id.pem" 2>/dev/null
  rm -f "$ext" "$dir/node$id.csr"
  chmod 644 "$dir/node$id.pem"
done
