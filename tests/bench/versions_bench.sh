#!/usr/bin/env bash
# Moving slots across server versions, in the same run and on the same data: `slotshift move` and
# `redis-cli --cluster reshard --cluster-pipeline 1000` on Redis 7.0 (the host's redis-server), and on Valkey 9.1
# `slotshift move` with its default engine (replica link), `slotshift move --engine native` (Valkey's own
# CLUSTER MIGRATESLOTS, one job per batch, driven by slotshift) and CLUSTER MIGRATESLOTS alone (one job for all
# the slots, sent to the source, followed with CLUSTER GETSLOTMIGRATIONS until it reports success). So that
# slotshift's speed and client impact can be read against both the tool Redis ships and the mechanism Valkey 9
# ships. A cluster of 3 masters gets --keys keys of --size bytes; each path moves all slots of the first master
# (0-5460, a third of the keys) to the second while one client (cutover_client.py: one request at a time every
# --interval-us, SET and GET of keys in the moving slots, each timed; idle for --idle-s first) goes through a
# slotshift-proxy (one thread); only the slotshift paths tell the proxy (--proxy), the others leave it to follow
# MOVED/ASK. After each timed move the slots go back (untimed, no client) so that every run starts from the same
# layout. The Redis 7.0 paths run on
# one cluster, then the Valkey 9.1 paths on another: one cluster at a time. Servers run on core 0; the proxy, the
# client and the movers on core 1.
#
#   tests/bench/versions_bench.sh [--runs 3] [--keys 1000000] [--size 100] [--replicas 0] [--interval-us 200]
#       [--idle-s 2] [--after-s 1]
#       [--paths slotshift-redis-7.0,reshard-1000-redis-7.0,slotshift-valkey-9.1,slotshift-native-valkey-9.1,native-valkey-9.1]
#
# Prints, per path, the medians over the runs of: the wall time of the move (for native-valkey-9.1: from
# MIGRATESLOTS to the job's success) and until `redis-cli --cluster check` is clean, keys/s and MB/s; the client's
# p99 while idle and from the start of the move until the cluster is settled, and its longest request (stall) from
# the start of the move to the client's end (--after-s later); its errors (the most of any run, idle included);
# then each path's speed relative to native-valkey-9.1 and to reshard-1000-redis-7.0. Per run: the keys the
# source still held when the cluster had settled (it deletes them after the handoff), the MOVED/ASK the proxy met,
# and for slotshift its batches, longest proxy hold and its own estimate of the longest stall.
# SLOTSHIFT_BINARY_DIR picks the build (default: build/). Not part of the test suite.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
all_paths="slotshift-redis-7.0,reshard-1000-redis-7.0,slotshift-valkey-9.1,slotshift-native-valkey-9.1,native-valkey-9.1"
runs=3 keys=1000000 size=100 replicas=0 interval_us=200 idle_s=2 after_s=1 paths=$all_paths
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --keys) keys=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --replicas) replicas=$2; shift 2 ;;
    --interval-us) interval_us=$2; shift 2 ;;
    --idle-s) idle_s=$2; shift 2 ;;
    --after-s) after_s=$2; shift 2 ;;
    --paths) paths=$2; shift 2 ;;
    *) sed -n '2,28p' "$0" >&2; exit 2 ;;
  esac
done
for path in ${paths//,/ }; do
  [[ ,$all_paths, == *,$path,* ]] || { echo "unknown path $path (known: $all_paths)" >&2; exit 2; }
done
bin=${SLOTSHIFT_BINARY_DIR:-$root/build}
slotshift=$bin/orchestrator/slotshift
proxy_bin=$bin/proxy/slotshift-proxy
client=$root/tests/bench/cutover_client.py
[ -x "$slotshift" ] && [ -x "$proxy_bin" ] || { echo "build first: cmake --preset default && cmake --build build" >&2; exit 1; }

. "$root/tests/bench/lib.sh"
proxy_pid="" client_pid="" waited_pid=""
out=$(mktemp -d "${TMPDIR:-/tmp}/versions-bench.XXXXXX")  # the results, across the two clusters
# waited CMD...: runs CMD and waits for it, in the background so that Ctrl-C or a TERM reaches the trap at once
# (redis-cli --cluster reshard ignores SIGINT, and bash runs a trap only after its foreground command); the
# cleanup stops it.
waited() {
  local rc=0
  "$@" <&0 &
  waited_pid=$!
  wait "$waited_pid" || rc=$?
  waited_pid=""
  return $rc
}
stop_proxy() {
  [ -z "$client_pid" ] || { kill "$client_pid" 2>/dev/null || true; wait "$client_pid" 2>/dev/null || true; }
  [ -z "$proxy_pid" ] || { kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; }
  client_pid="" proxy_pid=""
}
cleanup() {
  trap '' INT TERM  # a second Ctrl-C must not cut the cleanup short
  [ -z "$waited_pid" ] || { kill "$waited_pid" 2>/dev/null || true; wait "$waited_pid" 2>/dev/null || true; }
  stop_proxy
  bench_cluster_stop
  rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
proxy_counter() { cli "127.0.0.1:$port" info proxy | tr -d '\r' | sed -n "s/^$1://p"; }

# start_cluster SERVER: a loaded cluster of that server (redis-7.0 or valkey-9.1), and a proxy in front of it.
start_cluster() {
  local want=$1 version
  bench_cluster_start "$keys" "$size" "$replicas" versions-bench "$want"
  # Valkey reports redis_version:7.2.4 too, and valkey_version.
  version=$(cli "$a" info server | tr -d '\r' | sed -n 's/^redis_version:/redis /p; s/^valkey_version:/valkey /p' |
    tail -1)
  case $want in
    redis-7.0) [[ $version == "redis 7.0."* ]] ;;
    valkey-9.1) [[ $version == "valkey 9.1."* ]] ;;
  esac || { echo "asked for $want, the cluster runs $version" >&2; return 1; }
  echo "cluster of $version" >&2
  port=$(free_port)
  admin=$(free_port)
  taskset -c 1 "$proxy_bin" --listen "127.0.0.1:$port" --seed "$seed" --threads 1 --admin "127.0.0.1:$admin" \
    >"$work/proxy.log" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 100); do cli "127.0.0.1:$port" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "slotshift-proxy did not answer: $(tail -3 "$work/proxy.log")" >&2
  return 1
}

stop_cluster() {
  stop_proxy
  bench_cluster_stop
}

# Valkey's own migration alone: CLUSTER MIGRATESLOTS for all the slots, sent to the source, then its
# CLUSTER GETSLOTMIGRATIONS until the job it started (the EXPORT job it did not list before) succeeds. Prints the
# unix times of the command and of the success as JSON; exits 1 if the job fails or is cancelled.
native_alone() {
  waited taskset -c 1 /usr/bin/python3 - "$a" "$(node_id "$b")" >"$work/native.json" <<'PY'
import json, sys, time
import redis
host, port = sys.argv[1].rsplit(":", 1)
r = redis.Redis(host=host, port=int(port), socket_timeout=30)

def jobs():
    out = []
    for j in r.execute_command("CLUSTER GETSLOTMIGRATIONS"):
        if isinstance(j, dict):
            items = j.items()
        else:
            items = zip(j[0::2], j[1::2])
        out.append({(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                    for k, v in items})
    return out

before = {j["name"] for j in jobs()}
t0 = time.time()
r.execute_command("CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", 0, 5460, "NODE", sys.argv[2])
polls = 0
while True:
    mine = [j for j in jobs() if j.get("operation") == "EXPORT" and j["name"] not in before]
    polls += 1
    if mine:
        state = mine[-1]["state"]
        if state == "success":
            break
        if state.startswith("cancel") or (state.startswith("fail") and not state.startswith("failover")):
            sys.exit("the migration job %s ended %s: %s" % (mine[-1]["name"], state, mine[-1].get("message", "")))
    if time.time() - t0 > 3600:
        sys.exit("the migration job did not finish in an hour: %r" % mine)
    time.sleep(0.01)
print(json.dumps({"t0": t0, "t1": time.time(), "job": mine[-1]["name"], "polls": polls}))
PY
}

# mover PATH: moves slots 0-5460 from $a to $b; sets t0 and t1, the unix times of the move's start and end.
mover() {
  local engine=()
  t0=$(date +%s.%N)
  case $1 in
    slotshift-native-*) engine=(--engine native) ;&
    slotshift-*) waited taskset -c 1 "$slotshift" move --cluster "$seed" --slots 0-5460 --to "$b" "${engine[@]}" \
      --proxy "127.0.0.1:$admin" --no-progress --json >"$work/move.json" || {
        echo "$1: slotshift move failed:" >&2; cat "$work/move.json" >&2; return 1; } ;;
    reshard-1000-*) reshard_command 1000 "$a" "$b"
      waited "${reshard[@]}" >"$work/reshard.log" 2>&1 || {
        echo "$1: redis-cli --cluster reshard failed: $(tail -5 "$work/reshard.log")" >&2; return 1; } ;;
    native-*) native_alone
      t0=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["t0"])' "$work/native.json") ;;
  esac
  t1=$(date +%s.%N)
  [[ $1 != native-* ]] ||
    t1=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["t1"])' "$work/native.json")
}

# Until the source holds no key (its delete of the moved keys may outlast the move), 60 s at most.
wait_empty() {
  for _ in $(seq 600); do [ "$(cli "$a" dbsize)" = 0 ] && return 0; sleep 0.1; done
  echo "$1 left $(cli "$a" dbsize) keys on $a" >&2
  return 1
}

run_path() {
  local run=$1 path=$2 moved_before ask_before moved_after ask_after t2 left
  rm -f "$work/move.json" "$work/native.json"
  taskset -c 1 /usr/bin/python3 "$client" --proxy "127.0.0.1:$port" --slots 0-5460 --keys "$keys" --size "$size" \
    --interval-us "$interval_us" >"$work/client.json" &
  client_pid=$!
  sleep "$idle_s"
  moved_before=$(proxy_counter redirects_moved)
  ask_before=$(proxy_counter redirects_ask)
  kill -USR1 $client_pid
  mover "$path"
  wait_settled
  t2=$(date +%s.%N)
  kill -USR2 $client_pid
  left=$(cli "$a" dbsize)
  moved_after=$(proxy_counter redirects_moved)
  ask_after=$(proxy_counter redirects_ask)
  sleep "$after_s"
  kill -TERM $client_pid
  wait $client_pid
  client_pid=""
  wait_empty "$path"
  /usr/bin/python3 - "$path" "$t0" "$t1" "$t2" "$left" "$moving" "$size" "$work" "$((moved_after - moved_before))" \
    "$((ask_after - ask_before))" >>"$out/results" <<'PY'
import json, os, sys
path, work = sys.argv[1], sys.argv[8]
t0, t1, t2 = (float(a) for a in sys.argv[2:5])
moving, size = int(sys.argv[6]), int(sys.argv[7])
c = json.load(open(os.path.join(work, "client.json")))
wall = t1 - t0
row = {"path": path, "wall": wall, "settled": t2 - t0, "left": int(sys.argv[5]), "moving": moving,
       "keys_per_s": moving / wall, "mb_per_s": moving * size / wall / 1e6,
       "idle_p99": c["idle"]["p99_ms"], "p99": c["during"]["p99_ms"],
       "stall": max(c["during"]["max_ms"], c["after"]["max_ms"]), "requests": c["during"]["count"],
       "errors": c["idle"]["errors"] + c["during"]["errors"] + c["after"]["errors"],
       "first_error": c["first_error"], "proxy_moved": int(sys.argv[9]), "proxy_ask": int(sys.argv[10])}
if os.path.exists(os.path.join(work, "move.json")):
    m = json.load(open(os.path.join(work, "move.json")))
    row["batches"] = len(m["batches"])
    row["max_hold_ms"] = max((b["hold_ms"] for b in m["batches"]), default=0)
    row["max_stall_ms"] = m["max_stall_ms"]
    row["warnings"] = m["warnings"]
print(json.dumps(row))
PY
  echo "run $run $path: $(/usr/bin/python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print("move %.2f s, settled %.2f s; client idle p99 %.3f ms, during p99 %.3f ms, stall %.1f ms, errors %d%s" % (
    r["wall"], r["settled"], r["idle_p99"], r["p99"], r["stall"], r["errors"],
    "; first error: " + r["first_error"] if r["first_error"] else ""))' "$(tail -1 "$out/results")")" >&2
  # Back to where it was, untimed.
  waited "$slotshift" move --cluster "$seed" --slots 0-5460 --to "$a" --proxy "127.0.0.1:$admin" --no-progress >/dev/null
  wait_settled
  [ "$(cli "$b" cluster countkeysinslot 0)" = 0 ] || { echo "slot 0's keys did not go back to $a" >&2; return 1; }
}

: >"$out/results"
for server in redis-7.0 valkey-9.1; do
  these=()
  for path in ${paths//,/ }; do [[ $path != *-$server ]] || these+=("$path"); done
  [ ${#these[@]} -gt 0 ] || continue
  start_cluster "$server"
  for run in $(seq "$runs"); do
    for path in "${these[@]}"; do run_path "$run" "$path"; done
  done
  stop_cluster
done

/usr/bin/python3 - "$out/results" "$paths" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
paths = [p for p in sys.argv[2].split(",") if any(r["path"] == p for r in rows)]
print("moving %d keys, median of %d runs; client through slotshift-proxy, latencies in ms" % (
    rows[0]["moving"], len(rows) // len(paths)))
print("%-28s %8s %9s %10s %8s %9s %8s %9s %7s" % (
    "path", "wall s", "settled s", "keys/s", "MB/s", "idle p99", "p99", "stall ms", "errors"))
med = {}
for p in paths:
    rs = [r for r in rows if r["path"] == p]
    m = lambda k: statistics.median(r[k] for r in rs)
    med[p] = m("wall")
    print("%-28s %8.2f %9.2f %10.0f %8.1f %9.3f %8.3f %9.1f %7d" % (
        p, m("wall"), m("settled"), m("keys_per_s"), m("mb_per_s"), m("idle_p99"), m("p99"), m("stall"),
        max(r["errors"] for r in rs)))
for p in paths:
    print("  %s" % p)
    for r in [r for r in rows if r["path"] == p]:
        extra = ""
        if "batches" in r:
            extra = "; %d batches, longest hold %.1f ms, slotshift's own stall estimate %.1f ms%s" % (
                r["batches"], r["max_hold_ms"], r["max_stall_ms"], "".join("; warning: " + w for w in r["warnings"]))
        print("    move %.2f s, settled %.2f s, then %d keys still on the source; %d requests; the proxy met %d MOVED "
              "%d ASK%s%s" % (r["wall"], r["settled"], r["left"], r["requests"], r["proxy_moved"], r["proxy_ask"],
                              extra, "; first error: " + r["first_error"] if r["first_error"] else ""))
refs = [q for q in ("native-valkey-9.1", "reshard-1000-redis-7.0") if q in med]
if refs:
    print("speed relative to %s (wall time of the reference / the path's; above 1: faster)" % " and ".join(refs))
    print("%-28s" % "path" + "".join(" %24s" % ("vs " + q) for q in refs))
    for p in paths:
        print("%-28s" % p + "".join(" %23.2fx" % (med[q] / med[p]) for q in refs))
PY
