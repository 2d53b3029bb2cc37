#!/usr/bin/env bash
# A local Redis Cluster on free loopback ports in a temporary directory: for the demo, the integration tests and
# anyone who wants to try slotshift.
#
#   cluster.sh start [--masters N] [--replicas R] [--dir DIR] [--owner-pid PID] [--node-timeout MS]
#                    [--server redis-7.0|redis-8.0|valkey-8.0|valkey-8.1|valkey-9.1] [--tls]
#   cluster.sh stop    [--dir DIR]
#   cluster.sh status  [--dir DIR]
#   cluster.sh nodes   [--dir DIR]
#
# `start` prints two shell assignments on stdout (eval-able) and everything else on stderr:
#   SLOTSHIFT_CLUSTER_DIR=/tmp/slotshift-cluster.XXXXXX
#   SLOTSHIFT_CLUSTER_NODES=127.0.0.1:21345,127.0.0.1:24017,...
# It returns only when every node reports cluster_state:ok, all nodes agree on the slot map and every replica's
# link to its master is up. On any failure it stops what it started and removes the directory.
# With --owner-pid, a watchdog stops the cluster once that process is gone, so a killed test leaves nothing behind.
# --server (or SLOTSHIFT_SERVER) picks the server: the host's redis-server 7.0 by default, the others from Debian
# roots that server-root.sh builds once and caches; their data directories live inside the root.
# Without --dir, stop/status/nodes use the cluster this user started last.
# --tls starts every node TLS-only (--port 0 --tls-port P; the bus and replication over TLS too; clients must show
# a certificate) with a fresh test CA in DIR/tls: ca.crt/key, server.crt/key (node certificate, also used by the
# nodes as clients of each other; SAN IP:127.0.0.1, DNS:localhost, DNS:node.slotshift.test), client.crt/key (for
# redis-cli, the proxy's backend side, slotshift) and an unrelated CA, other-ca.crt/key, with
# other-client.crt/key signed by it (a certificate the cluster must refuse). start then also prints
# SLOTSHIFT_CLUSTER_TLS_DIR=DIR/tls (empty without --tls), and this script's own redis-cli calls use client.crt.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
last_file="${TMPDIR:-/tmp}/slotshift-cluster.last"
server=${SLOTSHIFT_REDIS_SERVER:-redis-server}
server_version=${SLOTSHIFT_SERVER:-redis-7.0}
server_root=""
cli=${SLOTSHIFT_REDIS_CLI:-redis-cli}
tls_cli=()  # redis-cli's TLS options when the cluster is TLS-only (set by make_certs or load_state)
start_deadline_s=${SLOTSHIFT_CLUSTER_START_TIMEOUT:-60}

say() { echo "cluster.sh: $*" >&2; }
die() { say "$*"; exit 1; }

usage() {
  sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# Prints `count` distinct ports p such that both p and its cluster-bus port p+10000 can be bound on 127.0.0.1.
# Ports are drawn at random from 20000-29999 so that concurrent clusters (parallel tests) rarely collide; a
# collision that still happens makes redis-server fail to bind, and start retries with new ports.
free_ports() {
  /usr/bin/python3 - "$1" <<'PY'
import random, socket, sys
count, chosen = int(sys.argv[1]), []
def bindable(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(10000):
    if len(chosen) == count:
        break
    p = random.randint(20000, 29999)
    if p not in chosen and bindable(p) and bindable(p + 10000):
        chosen.append(p)
if len(chosen) < count:
    sys.exit("no free ports")
print(" ".join(map(str, chosen)))
PY
}

load_state() {
  local dir=$1
  if [ -z "$dir" ]; then
    [ -f "$last_file" ] || die "no cluster known: give --dir"
    dir=$(cat "$last_file")
  fi
  [ -f "$dir/cluster.env" ] || die "$dir holds no cluster started by this script"
  # shellcheck disable=SC1091
  . "$dir/cluster.env"
  cluster_dir=$dir
  [ -z "${SLOTSHIFT_CLUSTER_TLS_DIR:-}" ] || use_tls_dir "$SLOTSHIFT_CLUSTER_TLS_DIR"
}

ports_of() { tr ',' '\n' <<<"$SLOTSHIFT_CLUSTER_NODES" | sed 's/.*://'; }

stop_cluster() {
  local dir=$1
  [ -d "$dir" ] || return 0
  if [ -f "$dir/watchdog.pid" ]; then
    local w
    w=$(cat "$dir/watchdog.pid")
    [ "$w" != "$$" ] && kill "$w" 2>/dev/null || true
  fi
  local pidfile pid
  for pidfile in "$dir"/*/redis.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null) || continue  # the server may exit and remove it meanwhile
    kill -TERM "$pid" 2>/dev/null || true
  done
  # SIGTERM makes redis-server exit promptly without saving (no `save` points are configured). Give it 5 s.
  local deadline=$((SECONDS + 5))
  for pidfile in "$dir"/*/redis.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null) || continue  # the server may exit and remove it meanwhile
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
  if [ -f "$last_file" ] && [ "$(cat "$last_file")" = "$dir" ]; then rm -f "$last_file"; fi
}

use_tls_dir() { tls_cli=(--tls --cacert "$1/ca.crt" --cert "$1/client.crt" --key "$1/client.key"); }

# Keys are EC P-256 and certificates valid for 3 days: all of make_certs takes about 0.2 s.
new_key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

# make_ca DIR NAME CN: a self-signed CA, DIR/NAME.crt and DIR/NAME.key.
make_ca() {
  openssl req -x509 "${new_key[@]}" -keyout "$1/$2.key" -out "$1/$2.crt" -days 3 -subj "/CN=$3" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

# make_leaf DIR NAME CA CN EXTENSION...: DIR/NAME.crt and DIR/NAME.key, signed by DIR/CA.crt.
make_leaf() {
  openssl req -new "${new_key[@]}" -keyout "$1/$2.key" -out "$1/$2.csr" -subj "/CN=$4" &&
    openssl x509 -req -in "$1/$2.csr" -CA "$1/$3.crt" -CAkey "$1/$3.key" -CAcreateserial -days 3 \
      -out "$1/$2.crt" -extfile <(printf '%s\n' basicConstraints=CA:FALSE "${@:5}") && rm -f "$1/$2.csr"
}

# The test CA and the certificates of the header in $1. The nodes' certificate serves both ends of the cluster bus
# and of replication links (a node dials its peers with it), so it is good for serverAuth and clientAuth.
make_certs() {
  local t=$1
  mkdir -p "$t"
  if ! {
    make_ca "$t" ca "slotshift test CA" &&
      make_ca "$t" other-ca "slotshift untrusted test CA" &&
      make_leaf "$t" server ca node.slotshift.test extendedKeyUsage=serverAuth,clientAuth \
        subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:node.slotshift.test &&
      make_leaf "$t" client ca slotshift-client extendedKeyUsage=clientAuth &&
      make_leaf "$t" other-client other-ca slotshift-other-client extendedKeyUsage=clientAuth
  } >"$t/openssl.log" 2>&1; then
    say "openssl failed: $(tail -3 "$t/openssl.log")"
    return 1
  fi
  use_tls_dir "$t"
}

node_info() { timeout 5 "$cli" "${tls_cli[@]}" -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null | tr -d '\r'; }

wait_until_ok() {
  local deadline=$1 ports=("${@:2}") p
  for p in "${ports[@]}"; do
    until node_info "$p" cluster info | grep -q '^cluster_state:ok'; do
      [ $SECONDS -lt "$deadline" ] || { say "node $p never reached cluster_state:ok"; return 1; }
      sleep 0.1
    done
  done
  # Every node must see the same slot map (redis-cli --cluster check's "agree about slots configuration").
  local reference="" view
  for p in "${ports[@]}"; do
    until view=$(node_info "$p" cluster slots | sort | md5sum) && [ -n "$view" ] &&
      { [ -z "$reference" ] || [ "$view" = "$reference" ]; }; do
      [ $SECONDS -lt "$deadline" ] || { say "node $p disagrees on the slot map"; return 1; }
      sleep 0.1
    done
    reference=$view
  done
  for p in "${ports[@]}"; do
    if node_info "$p" info replication | grep -q '^role:slave'; then
      until node_info "$p" info replication | grep -q '^master_link_status:up'; do
        [ $SECONDS -lt "$deadline" ] || { say "replica $p never synced with its master"; return 1; }
        sleep 0.1
      done
    fi
  done
}

start_once() {
  local dir=$1 masters=$2 replicas=$3 node_timeout=$4
  local total=$((masters * (replicas + 1)))
  local ports p
  read -r -a ports <<<"$(free_ports "$total")"
  # Paths as the server sees them: inside its root when it runs chrooted.
  local inner=${dir#"$server_root"}
  local run=("$server")
  [ -n "$server_root" ] && run=(chroot "$server_root" "$server")
  local listen tls_dir=""
  if [ "$tls" = 1 ]; then
    tls_dir=$dir/tls
    make_certs "$tls_dir" || return 1
  fi
  for p in "${ports[@]}"; do
    mkdir -p "$dir/$p"
    listen=(--port "$p")
    if [ "$tls" = 1 ]; then
      listen=(--port 0 --tls-port "$p" --tls-cluster yes --tls-replication yes
        --tls-cert-file "$inner/tls/server.crt" --tls-key-file "$inner/tls/server.key"
        --tls-ca-cert-file "$inner/tls/ca.crt")
    fi
    "${run[@]}" "${listen[@]}" --bind 127.0.0.1 --protected-mode no --daemonize yes \
      --dir "$inner/$p" --pidfile "$inner/$p/redis.pid" --logfile "$inner/$p/redis.log" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout "$node_timeout" \
      --save "" --appendonly no --enable-debug-command local >/dev/null 2>&1 || { say "redis-server on port $p did not start"; return 1; }
  done
  local deadline=$((SECONDS + start_deadline_s))
  for p in "${ports[@]}"; do
    until [ "$(node_info "$p" ping)" = "PONG" ]; do
      [ $SECONDS -lt $deadline ] || { say "node $p not answering; log: $(tail -3 "$dir/$p/redis.log" 2>/dev/null)"; return 1; }
      sleep 0.05
    done
  done
  local hosts=()
  for p in "${ports[@]}"; do hosts+=("127.0.0.1:$p"); done
  if ! timeout "$start_deadline_s" "$cli" "${tls_cli[@]}" --cluster create "${hosts[@]}" \
    --cluster-replicas "$replicas" --cluster-yes >"$dir/create.log" 2>&1; then
    say "redis-cli --cluster create failed: $(tail -3 "$dir/create.log")"
    return 1
  fi
  {
    echo "SLOTSHIFT_CLUSTER_DIR=$dir"
    echo "SLOTSHIFT_CLUSTER_NODES=$(IFS=,; echo "${hosts[*]}")"
    echo "SLOTSHIFT_CLUSTER_SERVER=$server_version"
    echo "SLOTSHIFT_CLUSTER_TLS_DIR=$tls_dir"
  } >"$dir/cluster.env"
  wait_until_ok "$deadline" "${ports[@]}"
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
masters=3 replicas=0 dir="" owner_pid="" node_timeout=5000 tls=0
while [ $# -gt 0 ]; do
  case $1 in
    --masters) masters=$2; shift 2 ;;
    --replicas) replicas=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --owner-pid) owner_pid=$2; shift 2 ;;
    --node-timeout) node_timeout=$2; shift 2 ;;
    --server) server_version=$2; shift 2 ;;
    --tls) tls=1; shift ;;
    -h|--help) usage ;;
    *) die "unknown option $1" ;;
  esac
done

case $cmd in
  start)
    [[ $masters =~ ^[0-9]+$ && $masters -ge 3 ]] || die "--masters must be 3 or more (redis-cli --cluster create needs 3)"
    [[ $replicas =~ ^[0-9]+$ ]] || die "--replicas must be a number"
    if [ "$server_version" != redis-7.0 ]; then
      root_env=$("$here/server-root.sh" "$server_version") || die "no $server_version server"
      eval "$root_env"
      server_root=$ROOT server=$SERVER
      [ -z "$dir" ] || die "--dir cannot be used with --server $server_version: the data must live inside its root"
    fi
    command -v "$server" >/dev/null || [ -n "$server_root" ] || die "$server not found: run deploy/local/install-deps.sh"
    for attempt in 1 2 3; do
      if [ -n "$server_root" ]; then
        mkdir -p "$server_root/tmp"
        d=$(mktemp -d "$server_root/tmp/slotshift-cluster.XXXXXX")
      elif [ -n "$dir" ]; then
        [ ! -e "$dir" ] || [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
        mkdir -p "$dir"
        d=$(cd "$dir" && pwd)
      else
        d=$(mktemp -d "${TMPDIR:-/tmp}/slotshift-cluster.XXXXXX")
      fi
      trap 'stop_cluster "$d"' INT TERM
      if start_once "$d" "$masters" "$replicas" "$node_timeout"; then
        trap - INT TERM
        echo "$d" >"$last_file"
        if [ -n "$owner_pid" ]; then
          # The watchdog runs in its own session so that it outlives this script and the caller's process group.
          setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; exec "$2" stop --dir "$3"' \
            watchdog "$owner_pid" "$here/cluster.sh" "$d" </dev/null >/dev/null 2>&1 &
          echo $! >"$d/watchdog.pid"
        fi
        say "cluster of $masters masters and $replicas replicas each is up in $d"
        cat "$d/cluster.env"
        exit 0
      fi
      say "attempt $attempt failed; cleaning up"
      stop_cluster "$d"
      trap - INT TERM
    done
    die "could not start a cluster"
    ;;
  stop)
    load_state "$dir"
    stop_cluster "$cluster_dir"
    say "stopped the cluster in $cluster_dir"
    ;;
  status)
    load_state "$dir"
    rc=0
    for p in $(ports_of); do
      state=$(node_info "$p" cluster info | sed -n 's/^cluster_state://p')
      role=$(node_info "$p" info replication | sed -n 's/^role://p')
      printf '127.0.0.1:%s %s %s\n' "$p" "${role:-down}" "${state:-unreachable}"
      [ "$state" = ok ] || rc=1
    done
    exit $rc
    ;;
  nodes)
    load_state "$dir"
    for p in $(ports_of); do
      if out=$(node_info "$p" cluster nodes) && [ -n "$out" ]; then echo "$out"; exit 0; fi
    done
    die "no node answers"
    ;;
  *) usage ;;
esac
