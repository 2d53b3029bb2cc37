#!/usr/bin/env bash
# The demo: installs what is missing, builds, starts a local Redis Cluster (3 masters, 1 replica each), puts
# slotshift-proxy in front of it, runs a client load through the proxy, and shows the cluster as slotshift sees it.
# Leaves no process behind.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "installing missing Debian packages"
deploy/local/install-deps.sh
step "building"
cmake --preset default >/dev/null
cmake --build --preset default -j "$(nproc)" | tail -1

step "starting a local Redis Cluster"
# --owner-pid: the cluster stops by itself if this script is killed before its trap runs.
eval "$(deploy/local/cluster.sh start --masters 3 --replicas 1 --owner-pid $$)"
proxy_pid=""
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null || true
  deploy/local/cluster.sh stop --dir "$SLOTSHIFT_CLUSTER_DIR"
}
trap cleanup EXIT
seed=${SLOTSHIFT_CLUSTER_NODES%%,*}
echo "nodes: $SLOTSHIFT_CLUSTER_NODES"

step "starting slotshift-proxy in front of it"
proxy_port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
build/proxy/slotshift-proxy --listen 127.0.0.1:$proxy_port --seed "$seed" --threads 1 2>"$SLOTSHIFT_CLUSTER_DIR/proxy.log" &
proxy_pid=$!
for _ in $(seq 100); do [ "$(redis-cli -p $proxy_port dbsize 2>/dev/null)" = "0" ] && break; sleep 0.1; done
echo "redis-cli -p $proxy_port talks to the whole cluster as to one Redis"

step "a plain client writes 10,000 keys through the proxy, then reads them back with MGET"
for i in $(seq 1 10000); do echo "SET demo:$i value-$i"; done | redis-cli -p $proxy_port >/dev/null
echo "DBSIZE through the proxy: $(redis-cli -p $proxy_port dbsize)"
echo "MGET demo:1 demo:5000 demo:10000: $(redis-cli -p $proxy_port mget demo:1 demo:5000 demo:10000 | tr '\n' ' ')"
for n in ${SLOTSHIFT_CLUSTER_NODES//,/ }; do
  printf '  %s holds %s keys\n' "$n" "$(redis-cli -h "${n%:*}" -p "${n#*:}" dbsize)"
done

step "redis-benchmark through the proxy (GET/SET/MSET, 50 clients, pipeline 16)"
redis-benchmark -p $proxy_port -t get,set,mset -n 100000 -c 50 -P 16 -r 100000 --csv 2>/dev/null |
  awk -F'","' 'NR > 1 {gsub(/"/, ""); split($0, f, ","); printf "  %-16s %10s requests/s  p50 %s ms\n", f[1], f[2], f[5]}'
redis-cli -p $proxy_port info proxy | grep -E '^(total_commands|commands_split|errors_|redirects_|latency_p)' 

step "slotshift move: a third of the slots to another master, while a client keeps writing through the proxy"
# The slots of the first master in CLUSTER SLOTS, and a target: the master listed next.
read -r from to target < <(/usr/bin/python3 - "$seed" <<'PY'
import sys, redis
h, p = sys.argv[1].rsplit(":", 1)
ranges = redis.Redis(host=h, port=int(p)).execute_command("CLUSTER SLOTS")
ranges.sort(key=lambda r: r[0])
a, b = ranges[0], next(r for r in ranges if r[2][1] != ranges[0][2][1])
print(a[0], a[1], "%s:%d" % (b[2][0].decode(), b[2][1]))
PY
)
redis-benchmark -p $proxy_port -t set,get -n 2000000 -c 20 -P 4 -r 100000 -q >"$SLOTSHIFT_CLUSTER_DIR/load.log" 2>&1 &
load_pid=$!
sleep 1
build/orchestrator/slotshift move --cluster "$seed" --slots "$from-$to" --to "$target"
kill $load_pid 2>/dev/null; wait $load_pid 2>/dev/null || true
echo "the proxy followed the move:"
redis-cli -p $proxy_port info proxy | grep -E '^(errors_|redirects_)'
echo "DBSIZE through the proxy: $(redis-cli -p $proxy_port dbsize); MGET demo:1 demo:5000 demo:10000: $(redis-cli -p $proxy_port mget demo:1 demo:5000 demo:10000 | tr '\n' ' ')"

step "slotshift status --cluster $seed"
build/orchestrator/slotshift status --cluster "$seed"

step "slotshift check --cluster $seed"
build/orchestrator/slotshift check --cluster "$seed"

step "done; stopping the proxy and the cluster"
