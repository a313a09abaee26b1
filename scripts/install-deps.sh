#!/usr/bin/env bash
# Installs the Debian packages a make target needs, only if they are missing.
#   scripts/install-deps.sh test    iptables (partition tests), prometheus (promtool), wrk (bench smoke test),
#                                   openssl (test certificates), curl (make cluster TLS=1),
#                                   chromium + chromium-driver (the web view's browser test),
#                                   python3 + python3-venv (schemathesis, from PyPI, in target/st-venv)
#   scripts/install-deps.sh bench   wrk, etcd-server, etcd-client
set -euo pipefail
need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
case "${1:-test}" in
  test)  want iptables iptables; want promtool prometheus; want wrk wrk
         want openssl openssl; want curl curl
         want chromium chromium; want chromedriver chromium-driver
         want python3 python3
         python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv) ;;
  bench) want wrk wrk; want etcd etcd-server; want etcdctl etcd-client ;;
  *) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
