# Shared by the move benchmarks (sourced, not run): a local cluster of 3 masters loaded with KEYS keys of SIZE
# bytes, redis-servers pinned to core 0, emptied masters kept as masters so that slots can go back, and the two
# masters a move goes between: A (owner of slot 0, whose slots 0-5460 move) and B (owner of slot 16383).
#
#   bench_cluster_start KEYS SIZE REPLICAS NAME [SERVER]
#                                                 sets seed, work (a temporary directory), a, b, moving (A's keys);
#                                                 SERVER (cluster.sh --server: redis-7.0, valkey-9.1, ...) defaults
#                                                 to cluster.sh's own default ($SLOTSHIFT_SERVER or redis-7.0)
#   bench_cluster_stop                            stops the cluster and removes $work (once; again is a no-op)
#   cli HOST:PORT ARGS...                         redis-cli against one node
#   owner_of SLOT, node_id HOST:PORT, wait_settled
#   reshard_command PIPELINE FROM TO              sets reshard: the redis-cli --cluster reshard of slots 0-5460's
#                                                 5461 slots from FROM to TO, pinned to core 1 (run it yourself)

SLOTSHIFT_CLUSTER_DIR="" work=""  # none until bench_cluster_start: an inherited one is not ours to stop

cli() { redis-cli -h "${1%:*}" -p "${1#*:}" "${@:2}"; }

owner_of() {  # slot -> HOST:PORT of its master
  /usr/bin/python3 - "$seed" "$1" <<'PY'
import sys, redis
h, p = sys.argv[1].rsplit(":", 1)
for first, last, master, *_ in redis.Redis(host=h, port=int(p)).execute_command("CLUSTER SLOTS"):
    if first <= int(sys.argv[2]) <= last:
        print("%s:%d" % (master[0].decode(), master[1]))
PY
}

node_id() { cli "$1" cluster myid; }

# The baseline every move benchmark measures against; an array, not a function, so that a caller can run it in
# the background and signal redis-cli itself.
reshard_command() {
  reshard=(taskset -c 1 redis-cli --cluster reshard "$seed" --cluster-from "$(node_id "$2")"
    --cluster-to "$(node_id "$3")" --cluster-slots 5461 --cluster-yes --cluster-pipeline "$1")
}

# Until redis-cli --cluster check finds every slot covered and nothing to warn about (30 s at most).
wait_settled() {
  for _ in $(seq 300); do
    if redis-cli --cluster check "$seed" 2>/dev/null | grep -q '\[OK\] All 16384 slots covered' &&
      ! redis-cli --cluster check "$seed" 2>/dev/null | grep -qE '\[(ERR|WARNING)\]'; then return 0; fi
    sleep 0.1
  done
  echo "the cluster did not settle" >&2
  return 1
}

bench_cluster_start() {
  local keys=$1 size=$2 replicas=$3 name=$4 server=(${5:+--server "$5"}) n pidfile started
  started=$("$root/deploy/local/cluster.sh" start --masters 3 --replicas "$replicas" --owner-pid $$ \
    "${server[@]}") || return 1
  eval "$started"
  work=$(mktemp -d "${TMPDIR:-/tmp}/$name.XXXXXX")
  # The moves' journals go to the run's own directory (unless one is given): a run then neither depends on the
  # journals of every move this machine made before (each move scans them) nor leaves its own behind.
  export SLOTSHIFT_STATE_DIR=${SLOTSHIFT_STATE_DIR:-$work/state}
  mkdir -p "$SLOTSHIFT_STATE_DIR"
  for pidfile in "$SLOTSHIFT_CLUSTER_DIR"/*/redis.pid; do taskset -pc 0 "$(cat "$pidfile")" >/dev/null; done
  seed=${SLOTSHIFT_CLUSTER_NODES%%,*}
  for n in ${SLOTSHIFT_CLUSTER_NODES//,/ }; do cli "$n" config set cluster-allow-replica-migration no >/dev/null; done
  echo "loading $keys keys of $size bytes" >&2
  "$root/tests/bench/load_keys.py" "$seed" "$keys" "$size"
  a=$(owner_of 0)
  b=$(owner_of 16383)
  [ "$a" != "$b" ] || { echo "slot 0 and 16383 on one master" >&2; return 1; }
  moving=$(cli "$a" dbsize)
  echo "moving slots 0-5460 ($moving keys) from $a to $b" >&2
}

bench_cluster_stop() {
  # Never without --dir: cluster.sh would stop the cluster this user started last, which may be someone else's.
  [ -z "${SLOTSHIFT_CLUSTER_DIR:-}" ] ||
    "$root/deploy/local/cluster.sh" stop --dir "$SLOTSHIFT_CLUSTER_DIR" 2>/dev/null || true
  [ -z "${work:-}" ] || rm -rf "$work"
  SLOTSHIFT_CLUSTER_DIR="" work=""
}
