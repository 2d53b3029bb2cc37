#!/usr/bin/env bash
# Moving slots, in the same run and on the same data: `slotshift move` against `redis-cli --cluster reshard` at
# pipeline 1000 and 10. A cluster of 3 masters gets --keys keys of --size bytes; each path moves all slots of the
# first master (0-5460, a third of the keys) to the second, while a probe client (move_probe) writes and reads
# keys of the moving slots the way a cluster client does and pings both nodes. After each timed move the slots
# go back (untimed) so that every run starts from the same layout. redis-servers run on core 0; the mover and
# the probe on core 1.
#
#   tests/bench/move_bench.sh [--runs 3] [--keys 1000000] [--size 100] [--paths slotshift,reshard-1000,reshard-10]
#                             [--replicas 0]
#
# Prints, per path, the median wall time, keys/s and MB/s, the probe's longest operation (redirects and retries
# included) and p99.9, the longest PING on the source and the target, and the probe's errors; then each path's
# speed relative to slotshift. Not part of the test suite.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
runs=3 keys=1000000 size=100 paths=slotshift,reshard-1000,reshard-10 replicas=0
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --keys) keys=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --paths) paths=$2; shift 2 ;;
    --replicas) replicas=$2; shift 2 ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
  esac
done
slotshift=$root/build/orchestrator/slotshift
probe=$root/build/tests/bench/move_probe
[ -x "$slotshift" ] && [ -x "$probe" ] || { echo "build first: cmake --preset default && cmake --build build" >&2; exit 1; }

. "$root/tests/bench/lib.sh"
trap bench_cluster_stop EXIT
bench_cluster_start "$keys" "$size" "$replicas" move-bench

# mover PATH FROM TO: moves slots 0-5460 from FROM to TO.
mover() {
  local path=$1 from=$2 to=$3
  case $path in
    slotshift) taskset -c 1 "$slotshift" move --cluster "$seed" --slots 0-5460 --to "$to" --no-progress \
      --json >"$work/slotshift.json" ;;
    reshard-*) reshard_command "${path#reshard-}" "$from" "$to"
      "${reshard[@]}" >"$work/reshard.log" 2>&1 ;;
    *) echo "unknown path $path" >&2; return 1 ;;
  esac
}

results=$work/results
: >"$results"
for run in $(seq "$runs"); do
  for path in ${paths//,/ }; do
    taskset -c 1 "$probe" --source "$a" --target "$b" --slots 0-5460 >"$work/probe.json" &
    probe_pid=$!
    sleep 0.5
    t0=$(date +%s.%N)
    mover "$path" "$a" "$b"
    t1=$(date +%s.%N)
    sleep 0.3
    kill -TERM $probe_pid
    wait $probe_pid || true
    wait_settled
    [ "$(cli "$a" dbsize)" = 0 ] || { echo "$path left keys on $a" >&2; exit 1; }
    wall=$(echo "$t1 - $t0" | bc -l)
    /usr/bin/python3 - "$path" "$wall" "$moving" "$size" "$work/probe.json" >>"$results" <<'PY'
import json, sys
path, wall, moving, size, probe = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
p = json.load(open(probe))
print(json.dumps({"path": path, "wall": wall, "keys_per_s": moving / wall, "mb_per_s": moving * size / wall / 1e6,
                  "op_max": p["ops"]["max_ms"], "op_p999": p["ops"]["p999_ms"],
                  "src_ping_max": p["source_ping"]["max_ms"], "tgt_ping_max": p["target_ping"]["max_ms"],
                  "errors": p["errors"], "moved": p["moved"], "ask": p["ask"], "tryagain": p["tryagain"],
                  "first_error": p["first_error"]}))
PY
    echo "run $run $path: $(tail -1 "$results")" >&2
    # Back to where it was, untimed.
    "$slotshift" move --cluster "$seed" --slots 0-5460 --to "$a" --no-progress >/dev/null
    wait_settled
  done
done

/usr/bin/python3 - "$results" "$moving" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
paths = []
for r in rows:
    if r["path"] not in paths:
        paths.append(r["path"])
med = {}
print("moving %s keys, median of %d runs" % (sys.argv[2], len(rows) // len(paths)))
print("%-14s %8s %10s %8s %10s %10s %11s %11s %7s %s" % ("path", "wall s", "keys/s", "MB/s", "op max ms",
      "op p99.9", "src ping", "tgt ping", "errors", "redirects"))
for p in paths:
    rs = [r for r in rows if r["path"] == p]
    m = lambda k: statistics.median(r[k] for r in rs)
    med[p] = m("wall")
    print("%-14s %8.2f %10.0f %8.1f %10.1f %10.1f %11.1f %11.1f %7d %s" % (
        p, m("wall"), m("keys_per_s"), m("mb_per_s"), m("op_max"), m("op_p999"), m("src_ping_max"),
        m("tgt_ping_max"), max(r["errors"] for r in rs),
        "moved %d ask %d tryagain %d" % (max(r["moved"] for r in rs), max(r["ask"] for r in rs),
                                         max(r["tryagain"] for r in rs))))
    for r in rs:
        if r["first_error"]:
            print("    first error: " + r["first_error"])
if "slotshift" in med:
    for p in paths:
        if p != "slotshift":
            print("slotshift is %.1fx faster than %s" % (med[p] / med["slotshift"], p))
PY
