#!/usr/bin/env bash
# The client's view of a move, in the same run and on the same data: a client of slotshift-proxy while
# `slotshift move --proxy ...` moves the slots (path "proxy": the default --fence source-pause; "proxy-fence":
# --fence proxy), against a cluster client (python3-redis RedisCluster) while
# `redis-cli --cluster reshard --cluster-pipeline 1000` moves them (path "reshard"). A cluster of 3 masters gets
# --keys keys of --size bytes; each path moves all slots of the first master (0-5460, a third of the keys) to the
# second while its client (cutover_client.py: one request at a time every --interval-us, SET and GET of keys in
# the moving slots, each timed) runs idle for --idle-s, then through the move, then --after-s more. After each
# timed move the slots go back (untimed, no client, the proxy told) so that every run starts from the same
# layout. redis-servers run on core 0; the proxy (one thread), the clients and the movers on core 1.
#
#   tests/bench/cutover_bench.sh [--runs 3] [--keys 1000000] [--size 100] [--interval-us 200] [--idle-s 3]
#                                [--after-s 1] [--paths proxy,proxy-fence,reshard]
#
# Prints, per path, the medians over the runs of the client's p50, p99, p99.9 and max latency while idle and
# during the move, its errors, p99 during / p99 idle, and the longest stall (the longest request during the
# move); then whether each proxy path met the goal: no error, p99 during the move within 1.5x of idle, no stall
# of 50 ms or more. For the proxy paths, per run, the same figures for the copy and for the cutovers apart, the
# batches, the longest hold and source pause, and the redirects the proxy met during the move.
# SLOTSHIFT_BINARY_DIR picks the build (default: build/). Not part of the test suite.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
runs=3 keys=1000000 size=100 interval_us=200 idle_s=3 after_s=1 paths=proxy,proxy-fence,reshard
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --keys) keys=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --interval-us) interval_us=$2; shift 2 ;;
    --idle-s) idle_s=$2; shift 2 ;;
    --after-s) after_s=$2; shift 2 ;;
    --paths) paths=$2; shift 2 ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
  esac
done
bin=${SLOTSHIFT_BINARY_DIR:-$root/build}
slotshift=$bin/orchestrator/slotshift
proxy_bin=$bin/proxy/slotshift-proxy
client=$root/tests/bench/cutover_client.py
[ -x "$slotshift" ] && [ -x "$proxy_bin" ] || { echo "build first: cmake --preset default && cmake --build build" >&2; exit 1; }

. "$root/tests/bench/lib.sh"
proxy_pid=""
client_pid=""
cleanup() {
  [ -z "$client_pid" ] || kill "$client_pid" 2>/dev/null || true
  [ -z "$proxy_pid" ] || { kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; }
  bench_cluster_stop
}
trap cleanup EXIT
bench_cluster_start "$keys" "$size" 0 cutover-bench
free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port=$(free_port)
admin=$(free_port)
taskset -c 1 "$proxy_bin" --listen "127.0.0.1:$port" --seed "$seed" --threads 1 --admin "127.0.0.1:$admin" \
  >"$work/proxy.log" 2>&1 &
proxy_pid=$!
for _ in $(seq 100); do cli "127.0.0.1:$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
proxy_counter() { cli "127.0.0.1:$port" info proxy | tr -d '\r' | sed -n "s/^$1://p"; }

# mover PATH: moves slots 0-5460 from $a to $b.
mover() {
  case $1 in
    proxy | proxy-fence) rm -f "$work/move.journal"
      local fence=source-pause
      [ "$1" = proxy ] || fence=proxy
      taskset -c 1 "$slotshift" move --cluster "$seed" --slots 0-5460 --to "$b" --proxy "127.0.0.1:$admin" \
        --fence $fence --no-progress --json --journal "$work/move.journal" >"$work/move.json" ;;
    reshard) reshard_command 1000 "$a" "$b"
      "${reshard[@]}" >"$work/reshard.log" 2>&1 ;;
  esac
}

results=$work/results
: >"$results"
for run in $(seq "$runs"); do
  for path in ${paths//,/ }; do
    case $path in
      proxy | proxy-fence) target=(--proxy "127.0.0.1:$port") ;;
      reshard) target=(--cluster "$seed") ;;
      *) echo "unknown path $path" >&2; exit 2 ;;
    esac
    taskset -c 1 /usr/bin/python3 "$client" "${target[@]}" --slots 0-5460 --keys "$keys" --size "$size" \
      --interval-us "$interval_us" --samples "$work/samples.json" >"$work/client.json" &
    client_pid=$!
    sleep "$idle_s"
    moved_before=$(proxy_counter redirects_moved)
    ask_before=$(proxy_counter redirects_ask)
    kill -USR1 $client_pid
    t0=$(date +%s.%N)
    mover "$path"
    t1=$(date +%s.%N)
    kill -USR2 $client_pid
    moved_after=$(proxy_counter redirects_moved)
    ask_after=$(proxy_counter redirects_ask)
    sleep "$after_s"
    kill -TERM $client_pid
    wait $client_pid
    client_pid=""
    wait_settled
    [ "$(cli "$a" dbsize)" = 0 ] || { echo "$path left keys on $a" >&2; exit 1; }
    /usr/bin/python3 - "$path" "$(echo "$t1 - $t0" | bc -l)" "$work" "$((moved_after - moved_before))" \
      "$((ask_after - ask_before))" "$root/tests/bench" >>"$results" <<'PY'
import json, os, sys
sys.path.insert(0, sys.argv[6])
from cutover_client import window_stats
path, wall, work = sys.argv[1], float(sys.argv[2]), sys.argv[3]
client = json.load(open(os.path.join(work, "client.json")))
row = {"path": path, "wall": wall, "client": client}
samples = json.load(open(os.path.join(work, "samples.json")))
sent, took, failed = samples["sent_ns"], samples["took_ns"], samples["failed"]
start, end = client["start_ns"], client["end_ns"]
# The five longest requests during the move, in ms, and when (s after the move started).
during = sorted((t, s) for s, t in zip(sent, took) if start <= s < end)[-5:]
row["longest"] = [(t / 1e6, (s - start) / 1e9) for t, s in reversed(during)]
if path.startswith("proxy"):
    m = json.load(open(os.path.join(work, "move.json")))
    row["max_pause_ms"] = m["max_pause_ms"]
    row["max_hold_ms"] = max(b["hold_ms"] for b in m["batches"])
    row["batches"] = len(m["batches"])
    row["warnings"] = m["warnings"]
    row["proxy_moved"], row["proxy_ask"] = int(sys.argv[4]), int(sys.argv[5])
    # The copy (snapshot and stream into the target) and the cutovers (one hold and pause per batch), apart.
    steps = [json.loads(l) for l in open(os.path.join(work, "move.journal"))]
    copied = next(s["time_ms"] for s in steps if s["step"] == "copied") * 1000000
    row["copy"] = window_stats(sent, took, failed, start, copied)
    row["cutover"] = window_stats(sent, took, failed, copied, end)
print(json.dumps(row))
PY
    r=$(tail -1 "$results")
    echo "run $run $path: $(/usr/bin/python3 -c '
import json, sys
r = json.loads(sys.argv[1]); c = r["client"]
print("move %.2f s; idle p99 %.3f ms, during p50 %.3f p99 %.3f p99.9 %.3f max %.1f ms, errors %d%s" % (
    r["wall"], c["idle"]["p99_ms"], c["during"]["p50_ms"], c["during"]["p99_ms"], c["during"]["p999_ms"],
    c["during"]["max_ms"], c["idle"]["errors"] + c["during"]["errors"] + c["after"]["errors"],
    "; first error: " + c["first_error"] if c["first_error"] else ""))' "$r")" >&2
    # Back to where it was, untimed.
    "$slotshift" move --cluster "$seed" --slots 0-5460 --to "$a" --proxy "127.0.0.1:$admin" --no-progress >/dev/null
    wait_settled
  done
done

/usr/bin/python3 - "$results" "$moving" "$interval_us" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
paths = []
for r in rows:
    if r["path"] not in paths:
        paths.append(r["path"])
name = {"proxy": "slotshift move --fence source-pause, client via slotshift-proxy",
        "proxy-fence": "slotshift move --fence proxy, client via slotshift-proxy",
        "reshard": "redis-cli reshard (pipeline 1000), RedisCluster client"}
print("moving %s keys; one request every %s us at pipeline 1; median of %d runs; latencies in ms" % (
    sys.argv[2], sys.argv[3], len(rows) // len(paths)))
print("%-11s %7s | %7s %7s %7s %7s | %7s %7s %7s %7s | %6s %9s %9s" % (
    "path", "move s", "idle50", "idle99", "idle999", "idlemax", "mov50", "mov99", "mov999", "movmax", "errors",
    "p99 x", "stall ms"))
verdict = {}
for p in paths:
    rs = [r for r in rows if r["path"] == p]
    m = lambda f: statistics.median(f(r) for r in rs)
    c = lambda ph, k: m(lambda r: r["client"][ph][k])
    errors = max(r["client"]["idle"]["errors"] + r["client"]["during"]["errors"] + r["client"]["after"]["errors"]
                 for r in rs)
    ratio = m(lambda r: r["client"]["during"]["p99_ms"] / max(r["client"]["idle"]["p99_ms"], 1e-9))
    stall = m(lambda r: r["client"]["during"]["max_ms"])
    print("%-11s %7.2f | %7.3f %7.3f %7.3f %7.1f | %7.3f %7.3f %7.3f %7.1f | %6d %8.2fx %9.1f" % (
        p, m(lambda r: r["wall"]), c("idle", "p50_ms"), c("idle", "p99_ms"), c("idle", "p999_ms"),
        c("idle", "max_ms"), c("during", "p50_ms"), c("during", "p99_ms"), c("during", "p999_ms"),
        c("during", "max_ms"), errors, ratio, stall))
    verdict[p] = (errors, ratio, stall)
for p in paths:
    print("  %s: %s" % (p, name.get(p, p)))
    for r in [r for r in rows if r["path"] == p]:
        extra = ""
        if p.startswith("proxy"):
            extra = ("; %d batches, longest hold %.1f ms, longest source pause %.1f ms, the proxy met %d MOVED %d "
                     "ASK during the move%s"
                     "\n      copy %.2f s: p50 %.3f p99 %.3f p99.9 %.3f max %.1f; cutovers %.2f s: p50 %.3f p99 %.3f "
                     "p99.9 %.3f max %.1f" % (
                         r["batches"], r["max_hold_ms"], r["max_pause_ms"], r["proxy_moved"], r["proxy_ask"],
                         "".join("; warning: " + w for w in r["warnings"]),
                         r["copy"]["seconds"], r["copy"]["p50_ms"], r["copy"]["p99_ms"], r["copy"]["p999_ms"],
                         r["copy"]["max_ms"], r["cutover"]["seconds"], r["cutover"]["p50_ms"], r["cutover"]["p99_ms"],
                         r["cutover"]["p999_ms"], r["cutover"]["max_ms"]))
        print("    move %.2f s, %d requests during it%s%s\n      longest: %s" % (
            r["wall"], r["client"]["during"]["count"], extra,
            "; first error: " + r["client"]["first_error"] if r["client"]["first_error"] else "",
            ", ".join("%.1f ms at +%.2f s" % tuple(x) for x in r["longest"])))
for p in paths:
    if not p.startswith("proxy"):
        continue
    errors, ratio, stall = verdict[p]
    print("goal (%s): no error %s, p99 during <= 1.5x idle %s (%.2fx), longest stall < 50 ms %s (%.1f ms)" % (
        p, "met" if errors == 0 else "MISSED", "met" if ratio <= 1.5 else "MISSED", ratio,
        "met" if stall < 50 else "MISSED", stall))
PY
