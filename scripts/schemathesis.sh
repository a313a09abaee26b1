#!/usr/bin/env bash
# `make schemathesis`: fuzzes the HTTP API against openapi.json with
# Schemathesis (PyPI) on a fresh 3-node cluster of its own (127.0.0.77,
# random ports, a temporary directory). Fails on any 5xx, any response
# that does not match the schema, any valid request refused and any
# invalid one accepted. What is taken out of the schema, and why:
# scripts/schemathesis_hooks.py; expected statuses: schemathesis.toml.
#   SCHEMATHESIS_EXAMPLES=200 scripts/schemathesis.sh    # more cases per operation
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${RAFTKV_BIN:-target/release/raftkv}"
VENV=target/st-venv
VERSION=4.32.5
[ -x "$BIN" ] || { echo "build first: cargo build --release ($BIN missing)" >&2; exit 1; }
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION"; then
  echo "installing schemathesis $VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION"
fi

DIR=$(mktemp -d /tmp/raftkv-schemathesis.XXXXXX)
IP=127.0.0.77
port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$IP"; }
P=("" "$(port)" "$(port)" "$(port)")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "cluster files kept in $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
for id in 1 2 3; do
  peers=()
  for o in 1 2 3; do [ "$o" = "$id" ] || peers+=("$o=$IP:${P[$o]}"); done
  "$BIN" --id "$id" --listen "$IP:${P[$id]}" --peers "$(IFS=,; echo "${peers[*]}")" \
    --data-dir "$DIR/node$id" --log warn >"$DIR/node$id.log" 2>&1 &
  PIDS+=("$!")
done
URL="http://$IP:${P[1]}"
for _ in $(seq 100); do
  curl -fsS "$URL/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$URL/ready" >/dev/null || { echo "the cluster did not become ready; logs in $DIR" >&2; KEEP=1; exit 1; }

export SCHEMATHESIS_HOOKS=scripts.schemathesis_hooks PYTHONPATH="$PWD"
status=0
"$VENV/bin/schemathesis" --config-file schemathesis.toml run "$URL/openapi.json" \
  --checks all --max-examples "${SCHEMATHESIS_EXAMPLES:-50}" --request-timeout 10 --workers 2 \
  --report junit --report-dir target/schemathesis || status=$?
# Every node must have survived the run.
for i in 0 1 2; do
  kill -0 "${PIDS[$i]}" 2>/dev/null || { echo "node $((i + 1)) died during the run; logs in $DIR" >&2; KEEP=1; status=1; }
done
if [ "$status" != 0 ]; then KEEP=1; fi
exit "$status"
