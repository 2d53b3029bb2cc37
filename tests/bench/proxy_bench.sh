#!/usr/bin/env bash
# slotshift-proxy against direct cluster connections, in the same run, with the same processes on the same cores:
# the redis-servers on core 0; the client (redis-benchmark) and the proxy share core 1. "direct" is
# redis-benchmark --cluster (cluster-aware, one connection per client per master).
#
#   tests/bench/proxy_bench.sh [--runs 3] [--requests 200000] [--idle-clients 10000]
#
# Prints requests per second and p50 latency for each case (median of the runs), the proxy/direct ratio, and the
# proxy's RSS with that many idle client connections. SLOTSHIFT_BINARY_DIR picks the build (default: build/):
# point it at another build to compare two versions of the proxy. Not part of the test suite.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
runs=3 requests=200000 idle=10000
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --idle-clients) idle=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--requests N] [--idle-clients N]" >&2; exit 2 ;;
  esac
done
proxy_bin=${SLOTSHIFT_BINARY_DIR:-$root/build}/proxy/slotshift-proxy
[ -x "$proxy_bin" ] || { echo "build first: cmake --preset default && cmake --build build" >&2; exit 1; }

eval "$("$root/deploy/local/cluster.sh" start --masters 3 --owner-pid $$)"
proxy_pid=""
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  "$root/deploy/local/cluster.sh" stop --dir "$SLOTSHIFT_CLUSTER_DIR" 2>/dev/null || true
}
trap cleanup EXIT
for pidfile in "$SLOTSHIFT_CLUSTER_DIR"/*/redis.pid; do taskset -pc 0 "$(cat "$pidfile")" >/dev/null; done
seed=${SLOTSHIFT_CLUSTER_NODES%%,*}
port=$((30000 + RANDOM % 10000))
taskset -c 1 "$proxy_bin" --listen 127.0.0.1:$port --seed "$seed" --threads 1 --max-clients $((idle + 1000)) \
  2>"$SLOTSHIFT_CLUSTER_DIR/proxy.log" &
proxy_pid=$!
until redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.1; done
until [ "$(redis-cli -p $port dbsize 2>/dev/null)" = "0" ]; do sleep 0.1; done

# One redis-benchmark run: prints "rps p50_ms".
bench() {
  local target=$1 test=$2 pipeline=$3
  local args=(-q -n "$requests" -c 50 -P "$pipeline" -t "$test" --csv -r 100000)
  if [ "$target" = direct ]; then args+=(--cluster -h "${seed%:*}" -p "${seed#*:}"); else args+=(-p "$port"); fi
  # --csv: a header line, then "TEST","rps","avg","min","p50",...; cluster mode prints the node list first.
  taskset -c 1 redis-benchmark "${args[@]}" 2>/dev/null | grep '^"' | grep -v '^"test"' | head -1 | tr -d '"' |
    awk -F, '{print $2, $5}'
}

# One client, pipeline 1: prints p50 in ms.
bench_one() {
  local target=$1 test=$2
  local args=(-q -n "$requests" -c 1 -P 1 -t "$test" --csv -r 100000)
  if [ "$target" = direct ]; then args+=(--cluster -h "${seed%:*}" -p "${seed#*:}"); else args+=(-p "$port"); fi
  taskset -c 1 redis-benchmark "${args[@]}" 2>/dev/null | grep '^"' | grep -v '^"test"' | head -1 | tr -d '"' |
    awk -F, '{print $5}'
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-22s %12s %12s %8s %12s %12s\n' test direct_rps proxy_rps ratio direct_p50 proxy_p50
for pipeline in 1 16; do
  for test in get set mset; do
    d_rps=() p_rps=() d_p50=() p_p50=()
    for _ in $(seq "$runs"); do
      # Interleaved, so that noise on the machine hits both paths alike.
      read -r r l <<<"$(bench direct $test $pipeline)"; d_rps+=("$r"); d_p50+=("$l")
      read -r r l <<<"$(bench proxy $test $pipeline)"; p_rps+=("$r"); p_p50+=("$l")
    done
    dr=$(printf '%s\n' "${d_rps[@]}" | median) pr=$(printf '%s\n' "${p_rps[@]}" | median)
    dl=$(printf '%s\n' "${d_p50[@]}" | median) pl=$(printf '%s\n' "${p_p50[@]}" | median)
    printf '%-22s %12s %12s %8.2f %12s %12s\n' "$test P$pipeline" "$dr" "$pr" "$(echo "$pr / $dr" | bc -l)" \
      "${dl}ms" "${pl}ms"
  done
done
# The latency the proxy adds, without queueing: one client, one request at a time.
d_p50=() p_p50=()
for _ in $(seq "$runs"); do
  d_p50+=("$(requests=20000 bench_one direct get)")
  p_p50+=("$(requests=20000 bench_one proxy get)")
done
dl=$(printf '%s\n' "${d_p50[@]}" | median) pl=$(printf '%s\n' "${p_p50[@]}" | median)
printf '%-22s %12s %12s %8s %12s %12s   (one client: the proxy adds %s us at p50)\n' "get P1 c1" - - - "${dl}ms" \
  "${pl}ms" "$(echo "($pl - $dl) * 1000" | bc -l | xargs printf '%.0f')"
echo "(mset: direct uses redis-benchmark's {tag} keys, one slot per command; through the proxy the 10 keys are"
echo " spread over slots and split, which no cluster client can send directly)"

# Memory with many idle clients: each connects and sends one PING, then stays.
rss() { awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status"; }
before=$(rss)
ready=$SLOTSHIFT_CLUSTER_DIR/idle-ready
ulimit -n $((idle + 1000))
/usr/bin/python3 - "$port" "$idle" "$ready" <<'PY' &
import socket, sys, time
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"PING\r\n")
    conns.append(s)
for s in conns:
    assert s.recv(16) == b"+PONG\r\n"
open(ready, "w").close()
time.sleep(5)
PY
idle_pid=$!
for _ in $(seq 600); do [ -f "$ready" ] && break; sleep 0.1; done
[ -f "$ready" ] || { echo "idle clients did not connect" >&2; exit 1; }
with=$(rss)
wait $idle_pid
echo "proxy RSS: ${before} kB before, ${with} kB with $idle idle clients: $(( (with - before) * 1024 / idle )) bytes per client"
