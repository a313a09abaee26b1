#!/usr/bin/env bash
# Starts or stops the local 3-node cluster of config/node{1,2,3}.toml.
#   scripts/cluster.sh start        (make cluster: also restarts killed nodes)
#   scripts/cluster.sh kill-leader  (make kill-leader: kill -9 the leader)
#   scripts/cluster.sh stop         (make stop: the extra nodes too; 'start' brings them back)
#   scripts/cluster.sh add N        (make add-node N=4: start config/nodeN.toml,
#                                    which joins as a learner, then promote it)
#   scripts/cluster.sh remove N     (make remove-node N=4: remove member N, stop it)
# Data and logs live under $CLUSTER_DIR (default .cluster); the pids of the
# processes it started are kept there, and `stop` stops exactly those.
# TLS=1 with 'start' on a new directory: a CA and member certificates in
# $CLUSTER_DIR/tls (scripts/gen-certs.sh), an admin token in
# $CLUSTER_DIR/admin.token, and every node started with TLS, mutual TLS
# between members and client tokens. A directory made so stays TLS.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${CLUSTER_DIR:-.cluster}"
BIN="${RAFTKV_BIN:-target/release/raftkv}"
CTL="${RAFTKVCTL_BIN:-target/release/raftkvctl}"
PIDS="$DIR/pids"
TLSDIR="$DIR/tls"

tls_on() { [ -f "$TLSDIR/ca.pem" ]; }

# The flags node $1 needs on top of its config file.
node_flags() {
  tls_on || return 0
  "$(dirname "$0")/gen-certs.sh" "$TLSDIR" "$1=127.0.0.1"
  printf '%s\n' --cert-file "$TLSDIR/node$1.pem" --key-file "$TLSDIR/node$1-key.pem" \
    --trusted-ca-file "$TLSDIR/ca.pem" --tokens-file "$DIR/tokens"
}

start_node() { # start node $1 in the background, pid to stdout
  local flags
  mapfile -t flags < <(node_flags "$1")
  RAFTKV_JOIN_TOKEN="$(cat "$DIR/admin.token" 2>/dev/null || true)" \
    nohup "$BIN" --config "config/node$1.toml" "${flags[@]}" >>"$DIR/node$1.log" 2>&1 &
  echo $!
}

# A fresh directory with TLS=1: certificates and an admin token.
setup_tls() {
  if [ "${TLS:-0}" = 1 ] && ! tls_on; then
    if [ -d "$DIR/node1" ]; then
      echo "$DIR holds a plaintext cluster; 'make clean-cluster' first to start one with TLS" >&2; exit 2
    fi
    mkdir -p "$TLSDIR"
    "$(dirname "$0")/gen-certs.sh" "$TLSDIR" 1=127.0.0.1 2=127.0.0.1 3=127.0.0.1
    ( umask 077; "$CTL" -o json token new admin admin >"$DIR/admin.json" )
    sed -n 's/.*"token": *"\([^"]*\)".*/\1/p' "$DIR/admin.json" >"$DIR/admin.token"
    sed -n 's/.*"tokens_file_line": *"\([^"]*\)".*/\1/p' "$DIR/admin.json" >"$DIR/tokens"
    rm -f "$DIR/admin.json"
    chmod 600 "$DIR/admin.token"
  fi
}

# GET a path over plain bash /dev/tcp (no curl needed); prints the body.
# With TLS, curl with the CA and the admin token.
http_get() {
  local host=$1 port=$2 path=$3
  if tls_on; then
    curl -sf --max-time 2 --cacert "$TLSDIR/ca.pem" -H "Authorization: Bearer $(cat "$DIR/admin.token")" \
      "https://$host:$port$path"
    return
  fi
  exec 3<>"/dev/tcp/$host/$port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$host" >&3
  sed '1,/^\r$/d' <&3
  exec 3<&-
}

ours() { # is $1 a raftkv process we started?
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q "raftkv --config config/node"
}

# The pid of node $1 we started (nodes 1-3: line N of $PIDS; extras: pid.N).
pid_of() {
  if [ "$1" -le 3 ]; then sed -n "${1}p" "$PIDS" 2>/dev/null || true; else cat "$DIR/pid.$1" 2>/dev/null || true; fi
}

# The nodes this directory runs: 1-3 and the extras added with 'add',
# without those the cluster removed.
nodes() {
  for i in 1 2 3 $(for f in "$DIR"/pid.*; do [ -e "$f" ] && echo "${f##*.}"; done); do
    [ -e "$DIR/removed.$i" ] || echo "$i"
  done
}

case "${1:-}" in
start)
  mkdir -p "$DIR"
  setup_tls
  fresh=1
  [ -s "$PIDS" ] && fresh=0
  touch "$PIDS"
  # (Re)start every node whose process is not running: a fresh cluster, or
  # the nodes of a running one that were killed. Members that were removed
  # are not started again (their ids are never reused).
  started=0
  for i in 1 2 3; do
    [ -e "$DIR/removed.$i" ] && continue
    pid=$(pid_of "$i")
    if [ -n "$pid" ] && ours "$pid"; then continue; fi
    newpid=$(start_node "$i")
    while [ "$(wc -l <"$PIDS")" -lt 3 ]; do echo 0 >>"$PIDS"; done
    sed -i "${i}s/.*/$newpid/" "$PIDS"
    started=$((started+1))
  done
  if [ "$fresh" = 0 ] && [ "$started" -gt 0 ]; then echo "restarted $started node(s) of the running cluster"; fi
  # Extra members added with 'make add-node' come back too.
  for n in $(nodes); do
    [ "$n" -le 3 ] && continue
    pid=$(pid_of "$n")
    if ours "$pid"; then continue; fi
    start_node "$n" >"$DIR/pid.$n"
    echo "restarted extra member $n"
  done
  # Wait until every node still running answers and one of them is the leader.
  leader=""
  for _ in $(seq 1 150); do
    up=0; running=0; leader=""
    for i in $(nodes); do
      ours "$(pid_of "$i")" || continue
      running=$((running+1))
      st=$(http_get 127.0.0.1 "800$i" /status 2>/dev/null || true)
      # Up means it answers and knows the leader (a node the cluster
      # refuses never does, and stops within an election timeout).
      if echo "$st" | grep -q '"leader":[0-9]'; then up=$((up+1)); fi
      if echo "$st" | grep -q '"role":"leader"'; then leader=$i; fi
    done
    [ "$up" -eq "$running" ] && [ -n "$leader" ] && break
    leader=""
    sleep 0.1
  done
  # A node the cluster removed while it was down stops when the members
  # refuse it (exit status 78): remember it, so it is not started again.
  for i in $(nodes); do
    ours "$(pid_of "$i")" && continue
    if grep -q "says it is no member of the cluster" "$DIR/node$i.log" 2>/dev/null; then
      touch "$DIR/removed.$i"
      echo "node $i was removed from the cluster and stopped; it is not started again (its data stays in $DIR/node$i)"
    else
      echo "node $i is not running; the end of $DIR/node$i.log:" >&2
      tail -n 3 "$DIR/node$i.log" >&2
    fi
  done
  if [ -z "$leader" ]; then
    echo "no leader after 15 s; see the logs in $DIR/node*.log" >&2
    tail -n 5 "$DIR"/node*.log >&2
    exit 1
  fi
  running=$(for i in $(nodes); do ours "$(pid_of "$i")" && printf '%s ' "$i"; done)
  if tls_on; then
    cat <<MSG
raftkv cluster running with TLS and tokens: nodes ${running% } on https://127.0.0.1:800N, leader is node $leader.
Data and logs: $DIR/  (node1.log, node1/wal/ ...); CA and certificates: $TLSDIR/

Try:
  export RAFTKV_CACERT=$TLSDIR/ca.pem RAFTKV_TOKEN=\$(cat $DIR/admin.token)
  curl --cacert \$RAFTKV_CACERT -H "Authorization: Bearer \$RAFTKV_TOKEN" -X PUT https://localhost:8001/kv/greeting -d '{"value": "hello"}'
  curl --cacert \$RAFTKV_CACERT -H "Authorization: Bearer \$RAFTKV_TOKEN" https://localhost:8002/kv/greeting
  curl --cacert \$RAFTKV_CACERT https://localhost:8003/kv/greeting     # no token: 401
  target/release/raftkvctl status        # reads RAFTKV_CACERT and RAFTKV_TOKEN
  target/release/raftkvctl token new ci write   # a write token: add its line to $DIR/tokens, restart
  kill -HUP <pid>         # a node reloads its certificate files (rotation)
  make stop
MSG
  else
  cat <<MSG
raftkv cluster running: nodes ${running% } on 127.0.0.1:800N, leader is node $leader.
Data and logs: $DIR/  (node1.log, node1/wal/ ...)

Try:
  curl -X PUT localhost:8001/kv/greeting -d '{"value": "hello"}'
  curl localhost:8002/kv/greeting
  curl 'localhost:8003/kv?prefix=greet'
  curl localhost:8001/status
  target/release/raftkvctl status
  make trace-election     # switch per-actor logs at run time (make quiet to undo)
  make kill-leader        # kill -9 the leader; 'make cluster' restarts it
  make stop
MSG
  fi
  ;;
kill-leader)
  [ -f "$PIDS" ] || { echo "no cluster started from here is running"; exit 1; }
  for i in $(nodes); do
    if http_get 127.0.0.1 "800$i" /status 2>/dev/null | grep -q '"role":"leader"'; then
      pid=$(pid_of "$i")
      ours "$pid" && kill -9 "$pid" && echo "kill -9 node $i (pid $pid), the leader. 'make cluster' brings it back."
      exit 0
    fi
  done
  echo "no leader found" >&2; exit 1
  ;;
add)
  n="${2:?usage: $0 add N}"
  [ -f "config/node$n.toml" ] || { echo "no config/node$n.toml (there are node4 and node5; copy one for more)" >&2; exit 2; }
  pid=$(cat "$DIR/pid.$n" 2>/dev/null || true)
  if [ -n "$pid" ] && ours "$pid"; then echo "node $n is running already (pid $pid)"; else
    mkdir -p "$DIR"
    start_node "$n" >"$DIR/pid.$n"
    echo "node $n started (log: $DIR/node$n.log); it joins as a learner"
  fi
  "$CTL" --endpoints "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003,127.0.0.1:800$n" member promote "$n" --wait 60
  "$CTL" --endpoints "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003,127.0.0.1:800$n" member list
  ;;
remove)
  n="${2:?usage: $0 remove N}"
  eps="127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003,127.0.0.1:8004,127.0.0.1:8005"
  "$CTL" --endpoints "$eps" member remove "$n"
  pid=$(pid_of "$n")
  if [ -n "$pid" ] && ours "$pid"; then kill "$pid"; echo "node $n stopped; its data stays in $DIR/node$n (its id is never reused)"; fi
  # 'make cluster' does not start it again.
  [ -d "$DIR" ] && touch "$DIR/removed.$n"
  rm -f "$DIR/pid.$n"
  ;;
stop)
  pids="$(cat "$PIDS" "$DIR"/pid.* 2>/dev/null || true)"
  [ -n "$pids" ] || { echo "no cluster started from here is running"; exit 0; }
  for p in $pids; do ours "$p" && kill "$p" 2>/dev/null || true; done
  for p in $pids; do
    for _ in $(seq 1 50); do ours "$p" || break; sleep 0.1; done
    ours "$p" && kill -9 "$p" 2>/dev/null || true
  done
  # pid.N of extra members stay: 'make cluster' starts them again.
  rm -f "$PIDS"
  echo "cluster stopped (data and logs kept in $DIR; 'make clean-cluster' removes them)"
  ;;
*)
  echo "usage: $0 start|stop|kill-leader|add N|remove N" >&2; exit 2 ;;
esac
