#!/usr/bin/env bash
# Captures the replies of CLUSTER SHARDS, CLUSTER SLOTS (raw RESP2 and RESP3 bytes, exactly as the server sent
# them) and CLUSTER NODES (the text) from a real local cluster, in the states that tests/unit/topology_test.cc
# checks. Needs redis-server and redis-cli (Debian 12: 7.0.15) and python3 (for the raw-bytes client only).
#
#   tests/data/topology/capture.sh            # writes healthy/ reshaped/ open/ disagree/ failover/ here
#
# Ports 7200-7206 (bus 17200-17206), a MEET to 7299 where nothing listens (to catch a handshake node), and
# servers in $WORK (default /tmp/topology-agent). Every server started here is stopped on exit.
#
# The ids change with every run: after a new capture, update the expectations in topology_test.cc (the file
# nodes-ids.txt written here lists which port got which id and role).
set -euo pipefail

OUT=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-/tmp/topology-agent}
PORTS=(7200 7201 7202 7203 7204 7205)
EXTRA=7206
NODE_TIMEOUT=3000

cli() { redis-cli -p "$1" "${@:2}"; }

stop_all() {
  for p in "${PORTS[@]}" "$EXTRA"; do
    cli "$p" shutdown nosave >/dev/null 2>&1 || true
  done
}
trap stop_all EXIT

# raw PORT PROTO OUTFILE MODE ARGS...: sends one command (after HELLO 3 when PROTO is 3) and writes exactly the
# bytes of its reply (MODE raw) or the payload of a bulk/verbatim string reply (MODE text).
raw() {
  python3 - "$@" <<'PY'
import os, socket, sys

port, proto, out, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
args = sys.argv[5:]
sock = socket.create_connection(("127.0.0.1", port), timeout=5)
buf = bytearray()

def fill():
    data = sock.recv(65536)
    if not data:
        sys.exit("connection closed")
    buf.extend(data)

def line_end(pos):
    while True:
        i = buf.find(b"\r\n", pos)
        if i >= 0:
            return i
        fill()

def value_end(pos):
    while len(buf) <= pos:
        fill()
    kind = chr(buf[pos])
    end = line_end(pos)
    head = buf[pos + 1:end].decode()
    nxt = end + 2
    if kind in "+-:_,#(":
        return nxt
    if kind in "$!=":
        n = int(head)
        if n < 0:
            return nxt
        while len(buf) < nxt + n + 2:
            fill()
        return nxt + n + 2
    if kind in "*~>%|":
        n = int(head)
        if n < 0:
            return nxt
        if kind in "%|":
            n *= 2
        for _ in range(n):
            nxt = value_end(nxt)
        return value_end(nxt) if kind == "|" else nxt
    sys.exit("unexpected RESP type " + kind)

def encode(words):
    msg = b"*%d\r\n" % len(words)
    for w in words:
        w = w.encode()
        msg += b"$%d\r\n%s\r\n" % (len(w), w)
    return msg

def send(words):
    sock.sendall(encode(words))

def reply():
    end = value_end(0)
    r = bytes(buf[:end])
    del buf[:end]
    return r

if proto == "3":
    send(["HELLO", "3"])
    reply()
pre = os.environ.get("PRE", "").split()
if pre:
    # Sent in the same write as the command, so the server runs both before it reads its cluster bus again.
    sock.sendall(encode(pre) + encode(args))
    reply()
else:
    sock.sendall(encode(args))
r = reply()
if mode == "text":
    if r[:1] not in (b"$", b"="):
        sys.exit("not a string reply: %r" % r[:80])
    r = r[r.index(b"\r\n") + 2:-2]
    if r.startswith(b"txt:"):
        r = r[4:]
with open(out, "wb") as f:
    f.write(r)
PY
}

# capture_resp DIR PORT: SHARDS and SLOTS in both protocols, as seen by PORT.
capture_resp() {
  local dir=$1 port=$2
  for proto in 2 3; do
    raw "$port" "$proto" "$dir/shards-$port.resp$proto" raw CLUSTER SHARDS
    raw "$port" "$proto" "$dir/slots-$port.resp$proto" raw CLUSTER SLOTS
  done
}

# capture_nodes DIR PORT...: the CLUSTER NODES text of each node.
capture_nodes() {
  local dir=$1
  shift
  for port in "$@"; do
    raw "$port" 2 "$dir/nodes-$port.txt" text CLUSTER NODES
  done
}

# Waits until redis-cli's own check says every node agrees and every slot is covered.
wait_agree() {
  local seed=$1
  for _ in $(seq 1 300); do
    if out=$(redis-cli --cluster check "127.0.0.1:$seed" 2>&1) &&
      grep -q 'All nodes agree about slots configuration' <<<"$out" &&
      grep -q 'All 16384 slots covered' <<<"$out" && ! grep -qE '\[(WARNING|ERR)\]' <<<"$out"; then
      return 0
    fi
    sleep 0.2
  done
  echo "cluster did not converge:" >&2
  redis-cli --cluster check "127.0.0.1:$seed" >&2 || true
  return 1
}

myid() { cli "$1" cluster myid; }
port_of() { # id -> port, as seen by 7200
  cli 7200 cluster nodes | awk -v id="$1" '$1 == id { split($2, a, "[:@]"); print a[2] }'
}
master_of() { # replica port -> master id
  cli "$1" cluster nodes | awk '$3 ~ /myself/ { print $4 }'
}
epoch_of() { cli 7200 cluster nodes | awk -v id="$1" '$1 == id { print $7 }'; }

start_node() {
  local p=$1
  mkdir -p "$WORK/$p"
  rm -f "$WORK/$p/nodes.conf"
  redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout "$NODE_TIMEOUT" --save '' --appendonly no --daemonize yes --dir "$WORK/$p" \
    --logfile "$WORK/$p/redis.log" --pidfile "$WORK/$p/redis.pid"
}

# move_slot SLOT TARGET_PORT: moves an empty slot the way slotshift's cutover does (IMPORTING on the target only,
# then the target claims it, which bumps its config epoch and broadcasts).
move_slot() {
  local slot=$1 target=$2 owner
  owner=$(cli 7200 cluster nodes | awk -v s="$slot" '
    $3 ~ /master/ { for (i = 9; i <= NF; i++) { n = split($i, r, "-"); lo = r[1]; hi = (n > 1 ? r[2] : r[1]);
      if (s + 0 >= lo + 0 && s + 0 <= hi + 0) print $1 } }')
  cli "$target" cluster setslot "$slot" importing "$owner" >/dev/null
  cli "$target" cluster setslot "$slot" node "$(myid "$target")" >/dev/null
}

stop_all
rm -rf "$WORK"
mkdir -p "$WORK"
for p in "${PORTS[@]}" "$EXTRA"; do start_node "$p"; done
sleep 0.5
redis-cli --cluster create $(for p in "${PORTS[@]}"; do printf '127.0.0.1:%s ' "$p"; done) \
  --cluster-replicas 1 --cluster-yes >"$WORK/create.log"
wait_agree 7200
# Replicas must have finished their first sync, or SHARDS reports them as "loading".
for p in "${PORTS[@]}"; do
  for _ in $(seq 1 100); do
    role=$(cli "$p" role | head -1)
    [ "$role" = master ] && break
    [ "$(cli "$p" info replication | tr -d '\r' | awk -F: '$1 == "master_link_status" { print $2 }')" = up ] && break
    sleep 0.2
  done
done
# Nothing is written: 7200's replies below come before the first replication PING (every offset is 0, so SHARDS
# says "loading" and SLOTS leaves the replicas out); 7203's, a moment later, after it (offset 14).
sleep 1.5

A=$(myid 7200) B=$(myid 7201) C=$(myid 7202)

# --- healthy: 3 masters (7200 7201 7202) with one replica each, as redis-cli --cluster create left them.
rm -rf "$OUT/healthy" && mkdir -p "$OUT/healthy"
capture_resp "$OUT/healthy" 7200
capture_resp "$OUT/healthy" 7203
capture_nodes "$OUT/healthy" "${PORTS[@]}"

# --- reshaped: a hostname on B, nofailover on A's replica, an empty master (7206), and several disjoint ranges:
# slots 100-109 move from A to C, slot 16000 from C to A.
cli 7201 config set cluster-announce-hostname node-b.example >/dev/null
for p in "${PORTS[@]}"; do
  [ "$(master_of "$p")" = "$A" ] && cli "$p" config set cluster-replica-no-failover yes >/dev/null
done
redis-cli --cluster add-node "127.0.0.1:$EXTRA" 127.0.0.1:7200 >"$WORK/add-node.log"
for s in $(seq 100 109); do move_slot "$s" 7202; done
move_slot 16000 7200
wait_agree 7200
for _ in $(seq 1 100); do # the hostname travels in a ping extension: wait until everyone has it
  n=0
  for p in "${PORTS[@]}" "$EXTRA"; do cli "$p" cluster nodes | grep -q 'node-b.example' && n=$((n + 1)); done
  [ "$n" = 7 ] && break
  sleep 0.2
done
rm -rf "$OUT/reshaped" && mkdir -p "$OUT/reshaped"
capture_resp "$OUT/reshaped" 7200
capture_nodes "$OUT/reshaped" "${PORTS[@]}" "$EXTRA"

# --- open: slot 200 MIGRATING on A to B and IMPORTING on B from A (redis-cli's way); slot 5000 IMPORTING on C
# from A with nothing on A (slotshift's way); slot 6000 MIGRATING on B to C, so B both imports and migrates.
cli 7200 cluster setslot 200 migrating "$B" >/dev/null
cli 7201 cluster setslot 200 importing "$A" >/dev/null
cli 7202 cluster setslot 5000 importing "$A" >/dev/null
cli 7201 cluster setslot 6000 migrating "$C" >/dev/null
sleep 0.5
rm -rf "$OUT/open" && mkdir -p "$OUT/open"
capture_resp "$OUT/open" 7200
capture_nodes "$OUT/open" "${PORTS[@]}" "$EXTRA"
for p in 7200 7201 7202; do
  for s in 200 5000 6000; do cli "$p" cluster setslot "$s" stable >/dev/null; done
done
wait_agree 7200

# --- disagree: the master with the lowest config epoch claims one slot of the master with the highest epoch
# without IMPORTING (so no bump). It believes it owns the slot; nobody else does, and they soon send it an UPDATE
# that takes the claim back. The claimant's view is read in the same write as the claim.
low=$(cli 7200 cluster nodes | awk '$3 ~ /master/ && $8 == "connected" && NF > 8 { print $7, $1 }' | sort -n | head -1 | cut -d' ' -f2)
high=$(cli 7200 cluster nodes | awk '$3 ~ /master/ && NF > 8 { print $7, $1 }' | sort -n | tail -1 | cut -d' ' -f2)
lowport=$(port_of "$low")
highport=$(port_of "$high")
slot=$(cli "$highport" cluster nodes | awk '$3 ~ /myself/ { split($9, r, "-"); print r[1] + 1 }')
rm -rf "$OUT/disagree" && mkdir -p "$OUT/disagree"
PRE="CLUSTER SETSLOT $slot NODE $low" raw "$lowport" 2 "$OUT/disagree/nodes-$lowport.txt" text CLUSTER NODES
capture_nodes "$OUT/disagree" $(for p in "${PORTS[@]}" "$EXTRA"; do [ "$p" != "$lowport" ] && echo "$p"; done)
echo "claimant $lowport ($low) epoch $(epoch_of "$low") claimed slot $slot of $highport ($high) epoch $(epoch_of "$high")" \
  >"$OUT/disagree/what.txt"
wait_agree 7200

# --- pfail: B, C and the empty master are frozen (SIGSTOP) for longer than node-timeout. A and the replicas flag
# them fail? but can never mark them fail: a fail needs reports from a majority of masters, and only A is left.
# No replica can win an election either (no master to vote). Then they are resumed and the flags clear.
frozen=(7201 7202 "$EXTRA")
for p in "${frozen[@]}"; do kill -STOP "$(cat "$WORK/$p/redis.pid")"; done
rm -rf "$OUT/pfail" && mkdir -p "$OUT/pfail"
for _ in $(seq 1 200); do
  [ "$(cli 7200 cluster nodes | grep -c 'fail?')" = 3 ] && [ "$(cli 7203 cluster nodes | grep -c 'fail?')" = 3 ] && break
  sleep 0.1
done
capture_resp "$OUT/pfail" 7200
capture_nodes "$OUT/pfail" 7200 7203
for p in "${frozen[@]}"; do kill -CONT "$(cat "$WORK/$p/redis.pid")"; done
for _ in $(seq 1 300); do
  n=0
  for p in "${PORTS[@]}" "$EXTRA"; do cli "$p" cluster nodes | grep -q 'fail' && n=$((n + 1)); done
  [ "$n" = 0 ] && break
  sleep 0.2
done
wait_agree 7200

# --- failover: master C (7202) is killed. Its replica is promoted; the others flag C fail.
cpid=$(cat "$WORK/7202/redis.pid")
kill -9 "$cpid"
rm -rf "$OUT/failover" && mkdir -p "$OUT/failover"
ALIVE=(7200 7201 7203 7204 7205 "$EXTRA")
for _ in $(seq 1 300); do
  n=0
  for p in "${ALIVE[@]}"; do
    cli "$p" cluster nodes | grep "^$C" | grep -q 'master,fail ' && n=$((n + 1))
  done
  [ "$n" = "${#ALIVE[@]}" ] && [ "$(cli 7200 cluster info | tr -d '\r' | grep cluster_state)" = cluster_state:ok ] && break
  sleep 0.2
done
sleep 1
capture_resp "$OUT/failover" 7200
capture_nodes "$OUT/failover" "${ALIVE[@]}"
# A MEET to a port where nothing listens leaves a node in "handshake" (on 7.0.15 it stayed for longer than
# node-timeout, as long as we watched).
cli 7200 cluster meet 127.0.0.1 7299 >/dev/null
raw 7200 2 "$OUT/failover/nodes-7200-handshake.txt" text CLUSTER NODES

{
  echo "# port id (role at the start), captured $(date -u +%FT%TZ) from $(redis-server --version | cut -d' ' -f1-3)"
  for p in "${PORTS[@]}" "$EXTRA"; do
    echo "$p $(awk '$3 ~ /myself/ { print $1, $3 }' "$OUT/reshaped/nodes-$p.txt")"
  done
} >"$OUT/nodes-ids.txt"
echo "captured into $OUT"
