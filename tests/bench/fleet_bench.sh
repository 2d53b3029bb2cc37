#!/usr/bin/env bash
# The same move driving fleets of proxies of different sizes, in the same run and on the same data: what the
# control path (hold, then handoff or route + release, at every batch, to every proxy) costs as the fleet grows.
# A cluster of 3 masters gets --keys keys of --size bytes; the largest fleet of slotshift-proxy processes
# (--threads 1, an admin endpoint each) is started once; each run moves all slots of the first master
# (0-5460, a third of the keys) to the second with `slotshift move --json` and `--proxy` once per proxy of the
# fleet (the first N), while one client (cutover_client.py, one request at a time every --interval-us) reads
# and writes keys of the moving slots through the first proxy and counts errors. After each timed move the
# slots go back (untimed, the first proxy told). redis-servers run on core 0; proxies, client and mover on
# core 1, the proxies other than the first at --fleet-nice (default 0; in a fleet they run on other hosts), the
# mover at --mover-nice (default 0), or with --mover-rt at a real-time priority (as root: SCHED_FIFO 10, so
# that it runs whenever it is ready, before every proxy of the fleet, as on a host of its own; a nice level
# does not do that once hundreds of proxies are ready at once: the scheduler shares the core by weight, and a
# task at nice -10 then gets about 5% of it against 200 at nice 0).
# A fleet written N@D is N proxies whose admin endpoints are D ms away each way: each is reached through
# tests/integration/delay_relay.py (a process per proxy, on core 1; for fleets of a few proxies), as across a
# network, so that `--fleets 2,2@30` compares a near fleet with a far one in the same run.
#
#   tests/bench/fleet_bench.sh [--runs 3] [--keys 300000] [--size 100] [--fleets 2,50,200]
#                              [--interval-us 500] [--fence source-pause] [--fleet-nice 0] [--mover-nice 0]
#                              [--mover-rt] [--max-pause 50ms]
#
# Prints, per fleet, the medians over the runs of the move's wall time, its batches, the longest source
# pause and the longest proxy hold (from HOLD to the end of the handoff: what a held client waited at most),
# the client's longest request and errors (the most of any run), and each fleet's wall time and pause relative
# to the first fleet's (the smallest, as the fleets are usually listed). SLOTSHIFT_BINARY_DIR picks the build (default: build/): point it at another build
# to compare two versions. Not part of the test suite.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
runs=3 keys=300000 size=100 fleets=2,50,200 interval_us=500 fence=source-pause fleet_nice=0 mover_nice=0 mover_rt=0 max_pause=50ms
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --keys) keys=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --fleets) fleets=$2; shift 2 ;;
    --interval-us) interval_us=$2; shift 2 ;;
    --fence) fence=$2; shift 2 ;;
    --fleet-nice) fleet_nice=$2; shift 2 ;;
    --mover-nice) mover_nice=$2; shift 2 ;;
    --mover-rt) mover_rt=1; shift ;;
    --max-pause) max_pause=$2; shift 2 ;;
    *) sed -n '2,27p' "$0" >&2; exit 2 ;;
  esac
done
bin=${SLOTSHIFT_BINARY_DIR:-$root/build}
slotshift=$bin/orchestrator/slotshift
proxy_bin=$bin/proxy/slotshift-proxy
client=$root/tests/bench/cutover_client.py
[ -x "$slotshift" ] && [ -x "$proxy_bin" ] || { echo "build first: cmake --preset default && cmake --build build" >&2; exit 1; }
largest=$(echo "${fleets//,/ }" | tr ' ' '\n' | sed 's/@.*//' | sort -n | tail -1)

. "$root/tests/bench/lib.sh"
proxy_pids=()
client_pid=""
cleanup() {
  [ -z "$client_pid" ] || kill "$client_pid" 2>/dev/null || true
  for pid in "${proxy_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${proxy_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  bench_cluster_stop
}
trap cleanup EXIT
bench_cluster_start "$keys" "$size" 0 fleet-bench

# 2 x largest free ports: a client port and an admin port per proxy.
mapfile -t ports < <(/usr/bin/python3 - "$((2 * largest))" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); held.append(s); print(s.getsockname()[1])
PY
)
admins=()
echo "starting $largest proxies" >&2
for i in $(seq 0 $((largest - 1))); do
  # Every proxy but the first (the one under load) at --fleet-nice (0 by default). In a fleet they run on
  # other hosts; here they share core 1 with the mover, the client and the loaded proxy. At nice 19 a proxy
  # that must answer a HOLD or a handoff waits behind those three (measured: a handoff answered in 917 ms whose
  # handler took 5-30 ms), which no proxy on a host of its own does; and an idle proxy no longer takes a
  # share of the core worth lowering (a few wake-ups a second).
  nice_level=$fleet_nice
  [ "$i" != 0 ] || nice_level=0
  taskset -c 1 nice -n $nice_level "$proxy_bin" --listen "127.0.0.1:${ports[$((2 * i))]}" --seed "$seed" --threads 1 \
    --admin "127.0.0.1:${ports[$((2 * i + 1))]}" >"$work/proxy.$i.log" 2>&1 &
  proxy_pids+=($!)
  admins+=("127.0.0.1:${ports[$((2 * i + 1))]}")
done
/usr/bin/python3 - "${admins[@]}" <<'PY'
import sys, time, urllib.request
deadline = time.time() + 60
for a in sys.argv[1:]:
    while True:
        try:
            if urllib.request.urlopen("http://%s/readyz" % a, timeout=1).status == 200:
                break
        except Exception:
            pass
        if time.time() > deadline:
            sys.exit("proxy %s not ready within 60 s" % a)
        time.sleep(0.05)
PY
port=${ports[0]}
# Per delay of a far fleet, a relay in front of each admin endpoint it names.
declare -A far_admins
for entry in ${fleets//,/ }; do
  case $entry in *@*) ;; *) continue ;; esac
  n=${entry%@*} delay=${entry#*@}
  [ -z "${far_admins[$delay]:-}" ] || continue
  list=""
  for i in $(seq 0 $((n - 1))); do
    taskset -c 1 /usr/bin/python3 "$root/tests/integration/delay_relay.py" "${admins[$i]}" "$delay" \
      >"$work/relay.$delay.$i" &
    proxy_pids+=($!)
    for _ in $(seq 100); do [ -s "$work/relay.$delay.$i" ] && break; sleep 0.05; done
    list+=" 127.0.0.1:$(head -1 "$work/relay.$delay.$i")"
  done
  far_admins[$delay]=$list
done

results=$work/results
: >"$results"
for run in $(seq "$runs"); do
  for entry in ${fleets//,/ }; do
    n=${entry%@*}
    told=()
    if [ "$n" != "$entry" ]; then
      for admin in ${far_admins[${entry#*@}]}; do told+=(--proxy "$admin"); done
    else
      for admin in "${admins[@]:0:$n}"; do told+=(--proxy "$admin"); done
    fi
    taskset -c 1 /usr/bin/python3 "$client" --proxy "127.0.0.1:$port" --slots 0-5460 --keys "$keys" --size "$size" \
      --interval-us "$interval_us" >"$work/client.json" &
    client_pid=$!
    sleep 1
    kill -USR1 $client_pid
    t0=$(date +%s.%N)
    priority=(nice -n "$mover_nice")
    [ "$mover_rt" = 0 ] || priority=(chrt -f 10)
    taskset -c 1 "${priority[@]}" "$slotshift" move --cluster "$seed" --slots 0-5460 --to "$b" "${told[@]}" \
      --fence "$fence" --max-pause "$max_pause" --no-progress --json >"$work/move.json" || { echo "the move with $entry proxies failed:" >&2; cat "$work/move.json" >&2; exit 1; }
    t1=$(date +%s.%N)
    kill -USR2 $client_pid
    sleep 0.5
    kill -TERM $client_pid
    wait $client_pid
    client_pid=""
    wait_settled
    [ "$(cli "$a" dbsize)" = 0 ] || { echo "the move with $entry proxies left keys on $a" >&2; exit 1; }
    /usr/bin/python3 - "$entry" "$(echo "$t1 - $t0" | bc -l)" "$work" >>"$results" <<'PY'
import json, os, sys
n, wall, work = sys.argv[1], float(sys.argv[2]), sys.argv[3]
m = json.load(open(os.path.join(work, "move.json")))
c = json.load(open(os.path.join(work, "client.json")))
print(json.dumps({"proxies": n, "wall": wall, "batches": len(m["batches"]), "max_pause_ms": m["max_pause_ms"],
                  "max_hold_ms": max(b["hold_ms"] for b in m["batches"]),
                  "client_max_ms": c["during"]["max_ms"],
                  "errors": c["idle"]["errors"] + c["during"]["errors"] + c["after"]["errors"],
                  "first_error": c["first_error"], "warnings": m["warnings"],
                  "hold_call_ms": [round(b.get("hold_call_ms", 0), 1) for b in m["batches"]],
                  "handoff_ms": [round(b.get("handoff_ms", 0), 1) for b in m["batches"]],
                  "pause_ms": [round(b["pause_ms"], 1) for b in m["batches"]],
                  "held": [b["proxies_held"] for b in m["batches"]],
                  "slot_count": [b["slot_count"] for b in m["batches"]],
                  "started_ms": [round(b["started_ms"]) for b in m["batches"]],
                  "hold_batches": [b.get("hold_batches", 1) for b in m["batches"]]}))
PY
    echo "run $run, $entry proxies: $(tail -1 "$results")" >&2
    "$slotshift" move --cluster "$seed" --slots 0-5460 --to "$a" --proxy "${admins[0]}" --no-progress >/dev/null
    wait_settled
  done
done

/usr/bin/python3 - "$results" "$moving" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
sizes = []
for r in rows:
    if r["proxies"] not in sizes:
        sizes.append(r["proxies"])
print("moving %s keys with the client on one proxy; median of %d runs" % (sys.argv[2], len(rows) // len(sizes)))
print("%8s %8s %8s %10s %10s %12s %7s %8s %8s" % ("proxies", "move s", "batches", "pause ms", "hold ms",
      "client max", "errors", "move x", "pause x"))
base = None
for n in sizes:
    rs = [r for r in rows if r["proxies"] == n]
    m = lambda k: statistics.median(r[k] for r in rs)
    if base is None:
        base = (m("wall"), m("max_pause_ms"))
    print("%8s %8.2f %8.0f %10.1f %10.1f %12.1f %7d %7.2fx %7.2fx" % (
        n, m("wall"), m("batches"), m("max_pause_ms"), m("max_hold_ms"), m("client_max_ms"),
        max(r["errors"] for r in rs), m("wall") / base[0], m("max_pause_ms") / max(base[1], 1e-9)))
    for r in rs:
        if r["first_error"]:
            print("    first error: " + r["first_error"])
        for w in r["warnings"]:
            print("    warning: " + w)
PY
