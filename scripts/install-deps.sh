#!/usr/bin/env bash
# Installs the Debian packages a make target needs, only if they are missing.
#   scripts/install-deps.sh test    iptables (partition tests), prometheus (promtool), wrk (bench smoke test),
#                                   openssl (test certificates), curl (make cluster TLS=1)
#   scripts/install-deps.sh bench   wrk, etcd-server, etcd-client
set -euo pipefail
need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
case "${1:-test}" in
  test)  want iptables iptables; want promtool prometheus; want wrk wrk
         want openssl openssl; want curl curl ;;
  bench) want wrk wrk; want etcd etcd-server; want etcdctl etcd-client ;;
  *) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
