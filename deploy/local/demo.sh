#!/usr/bin/env bash
# The demo: installs what is missing, builds, starts a local Redis Cluster (3 masters, 1 replica each) with
# 300,000 keys, puts two slotshift-proxy instances in front of it, runs a client load through both, moves a third
# of the slots with slotshift move while the clients keep going, and shows what the clients saw. Leaves no
# process behind.
#
#   deploy/local/demo.sh [--server redis-7.0|redis-8.0|valkey-8.0|valkey-8.1|valkey-9.1]
#
# --server (or SLOTSHIFT_SERVER) runs the cluster on another server, from its Debian root (cluster.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
while [ $# -gt 0 ]; do
  case $1 in
    --server) export SLOTSHIFT_SERVER=$2; shift 2 ;;
    *) sed -n '7p' "$0" >&2; exit 2 ;;
  esac
done

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

step "installing missing Debian packages"
deploy/local/install-deps.sh
step "building"
cmake --preset default >/dev/null
cmake --build --preset default -j "$(nproc)" | tail -1

step "starting a local cluster (${SLOTSHIFT_SERVER:-redis-7.0}): 3 masters, 1 replica each"
# --owner-pid: the cluster stops by itself if this script is killed before its trap runs.
eval "$(deploy/local/cluster.sh start --masters 3 --replicas 1 --owner-pid $$)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  deploy/local/cluster.sh stop --dir "$SLOTSHIFT_CLUSTER_DIR"
}
trap cleanup EXIT
seed=${SLOTSHIFT_CLUSTER_NODES%%,*}
work=$SLOTSHIFT_CLUSTER_DIR
echo "nodes: $SLOTSHIFT_CLUSTER_NODES"
tests/bench/load_keys.py "$seed" 300000 100
echo "300,000 keys of 100 bytes written"

step "two slotshift-proxy instances in front of it, each with its admin endpoint"
proxy_ports=() admin_ports=()
for i in 1 2; do
  port=$(free_port) admin=$(free_port)
  build/proxy/slotshift-proxy --listen 127.0.0.1:$port --seed "$seed" --threads 1 --admin 127.0.0.1:$admin \
    2>"$work/proxy-$i.log" &
  pids+=($!)
  proxy_ports+=("$port") admin_ports+=("$admin")
done
for port in "${proxy_ports[@]}"; do
  for _ in $(seq 100); do [ "$(redis-cli -p "$port" dbsize 2>/dev/null)" = 300000 ] && break; sleep 0.1; done
  echo "redis-cli -p $port: DBSIZE $(redis-cli -p "$port" dbsize), GET key:42 -> $(redis-cli -p "$port" get key:42 | cut -c1-12)..."
done

# The slots of the master that owns slot 0, and another master to move them to.
read -r from to target < <(/usr/bin/python3 - "$seed" <<'PY'
import sys, redis
h, p = sys.argv[1].rsplit(":", 1)
ranges = sorted(redis.Redis(host=h, port=int(p)).execute_command("CLUSTER SLOTS"), key=lambda r: r[0])
a, b = ranges[0], next(r for r in ranges if r[2][1] != ranges[0][2][1])
print(a[0], a[1], "%s:%d" % (b[2][0].decode(), b[2][1]))
PY
)

step "a client load through both proxies: SET and GET of keys in slots $from-$to, one request at a time"
clients=()
for i in 1 2; do
  tests/bench/cutover_client.py --proxy 127.0.0.1:${proxy_ports[$((i - 1))]} --slots "$from-$to" --keys 300000 \
    --interval-us 500 --probe-keys 5000 --skip-keys $(((i - 1) * 5000)) >"$work/client-$i.json" 2>"$work/client-$i.log" &
  clients+=($!)
  pids+=($!)
done
sleep 3

step "slotshift move --slots $from-$to --to $target, with both proxies holding and routing at each batch"
for c in "${clients[@]}"; do kill -USR1 "$c"; done
build/orchestrator/slotshift move --cluster "$seed" --slots "$from-$to" --to "$target" --json \
  --proxy 127.0.0.1:${admin_ports[0]} --proxy 127.0.0.1:${admin_ports[1]} >"$work/move.json"
for c in "${clients[@]}"; do kill -USR2 "$c"; done
sleep 3
for c in "${clients[@]}"; do kill -TERM "$c"; wait "$c" || true; done

step "what happened"
/usr/bin/python3 - "$work" "${proxy_ports[@]}" <<'PY'
import json, subprocess, sys
work, ports = sys.argv[1], sys.argv[2:]
move = json.load(open(work + "/move.json"))
if not move["ok"]:
    sys.exit("the move failed: " + move.get("error", ""))
print("moved %d keys in %.2f s (copy %.2f s, cutover %.2f s) in %d batches; longest source pause %.1f ms"
      % (move["keys_copied"], move["elapsed_s"], move["copy_s"], move["cutover_s"], len(move["batches"]),
         move["max_pause_ms"]))
print("longest wait in the proxies per batch (hold to release): " +
      ", ".join("%.0f" % b["hold_ms"] for b in move["batches"]) + " ms")
for w in move["warnings"]:
    print("warning: " + w)
print()
print("%-10s %-7s %8s %8s %8s %8s %7s" % ("client", "when", "requests", "p50 ms", "p99 ms", "max ms", "errors"))
for i, port in enumerate(ports, 1):
    c = json.load(open("%s/client-%d.json" % (work, i)))
    for when in ("idle", "during", "after"):
        s = c[when]
        print("%-10s %-7s %8d %8.2f %8.2f %8.2f %7d" % ("proxy %d" % i if when == "idle" else "", when,
              s["count"], s["p50_ms"], s["p99_ms"], s["max_ms"], s["errors"]))
    if c.get("first_error"):
        print("%10s first error: %s" % ("", c["first_error"]))
    info = subprocess.run(["redis-cli", "-p", port, "info", "proxy"], capture_output=True, text=True).stdout
    counters = dict(l.split(":", 1) for l in info.split() if ":" in l)
    print("%10s MOVED met by the proxy: %s, ASK: %s, holds: %s" % ("", counters.get("redirects_moved"),
          counters.get("redirects_ask"), counters.get("holds_placed")))
PY

# The master the move emptied has turned into a replica of the target and is loading its first full sync
# (on Valkey, after a few seconds' delay): check waits for such nodes up to its --timeout-ms.
step "slotshift check --cluster $seed --timeout-ms 60000"
build/orchestrator/slotshift check --cluster "$seed" --timeout-ms 60000

step "done; stopping the proxies and the cluster"
