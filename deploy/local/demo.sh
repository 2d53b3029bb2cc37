#!/usr/bin/env bash
# The demo: installs what is missing, builds, starts a local Redis Cluster (3 masters, 1 replica each), writes some
# keys, and shows the cluster as slotshift's common library parsed it. Leaves no process behind.
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
trap 'deploy/local/cluster.sh stop --dir "$SLOTSHIFT_CLUSTER_DIR"' EXIT
seed=${SLOTSHIFT_CLUSTER_NODES%%,*}
echo "nodes: $SLOTSHIFT_CLUSTER_NODES"

step "writing 10,000 keys through a cluster-aware client (redis-cli -c)"
for i in $(seq 1 10000); do echo "SET demo:$i value-$i"; done | redis-cli -c -h "${seed%:*}" -p "${seed#*:}" >/dev/null
for n in ${SLOTSHIFT_CLUSTER_NODES//,/ }; do
  printf '%s holds %s keys\n' "$n" "$(redis-cli -h "${n%:*}" -p "${n#*:}" dbsize)"
done

step "slotshift status --cluster $seed"
build/orchestrator/slotshift status --cluster "$seed"

step "slotshift check --cluster $seed"
build/orchestrator/slotshift check --cluster "$seed"

step "done; stopping the cluster"
