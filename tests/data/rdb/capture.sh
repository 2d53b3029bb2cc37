#!/usr/bin/env bash
# Captures the RDB files that tests/unit/rdb_test.cc reads, from real servers: the host's redis-server 7.0.15,
# Redis 8.0, Valkey 8.0, 8.1 and 9.1 from the Debian roots of deploy/local/server-root.sh, and Redis 6.0.16
# (Debian 11, for the encodings before RDB 10: ziplists and quicklists of ziplists). For each server:
#
#   <server>.rdb              every type and encoding this server writes (small and big variants, LZF and
#                             int-encoded strings, quicklists with compressed and plain nodes, intset/listpack/
#                             hashtable sets, listpack/skiplist zsets with inf/-inf, listpack/hashtable hashes,
#                             hash field TTLs where the server has them, streams with deleted entries, consumer
#                             groups, consumers and pending entries, keys with TTLs and an already expired one, a
#                             key in db 1, a function library), saved with SAVE under allkeys-lfu (FREQ opcodes)
#   <server>.manifest         what the server said about every key of <server>.rdb: db, key, PEXPIRETIME,
#                             OBJECT FREQ, and the DUMP payload, plus the function library (see below)
#   <server>-sync.rdb         the same dataset as a diskless replica receives it (REPLCONF capa eof, PSYNC ? -1,
#                             the $EOF:<mark> framing removed). Valkey sends REDIS0011 here.
#   valkey-9.1-sync-versioned.rdb   the same after REPLCONF version 9.1.2: Valkey then sends VALKEY080.
#   valkey-9.1-sync.manifest  valkey-9.1-sync.rdb has no field-TTL hashes (see below), so it has its own manifest
#   <server>-lru.rdb          a few keys saved under allkeys-lru (IDLE opcodes), one restored with IDLETIME 1000
#   <server>-lru.manifest     as above, with OBJECT IDLETIME instead of OBJECT FREQ
#   <server>-cluster.rdb      a few keys of a one-node cluster (Redis 7.4+ writes SLOT_INFO opcodes there,
#                             Valkey 8+ "slot-info" aux fields), and its manifest
#
# Manifest lines are tab-separated: `key <db> <key hex> <pexpiretime> <freq or idle> <DUMP hex or ->`, and
# `function <library code hex>`. PEXPIRETIME is -1 for no TTL (Redis 6.0 has no PEXPIRETIME: "~<ms>" is then
# PTTL from the time of reading, good to a few ms); an expired key has no DUMP (reading it would delete
# it). Everything is deterministic except times (TTLs are fixed absolute times; delivery times of stream entries
# and the LRU clock are not), so a new capture changes the files but not what the tests check.
#
#   tests/data/rdb/capture.sh [SERVER...]   # redis-6.0 redis-7.0 redis-8.0 valkey-8.0 valkey-8.1 valkey-9.1 (all
#                                           # by default); needs root for the chroot servers
#
# Servers listen on 127.0.0.1:31100-31105 (cluster mode: 31110-31115, bus ports 41110-41115) and keep their data
# in $WORK (default /tmp/rdb-capture; inside the root for the chroot servers). The Redis 6.0 root is built once
# with debootstrap in $SLOTSHIFT_ROOT_CACHE/bullseye. Every server started here is stopped on exit.
set -euo pipefail

OUT=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$OUT/../../.." && pwd)
WORK=${WORK:-/tmp/rdb-capture}
ALL=(redis-6.0 redis-7.0 redis-8.0 valkey-8.0 valkey-8.1 valkey-9.1)
SERVERS=("$@")
[ ${#SERVERS[@]} -gt 0 ] || SERVERS=("${ALL[@]}")

say() { echo "capture.sh: $*" >&2; }

STARTED=()
stop_all() {
  for p in "${STARTED[@]}"; do
    redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
  done
}
trap stop_all EXIT

# The Python side: writes the dataset, reads the manifest, and plays a replica. Uses python3-redis for plain
# commands and a raw socket for the replication handshake.
py() {
  /usr/bin/python3 - "$@" <<'PY'
import socket, sys, time
import redis

cmd, port = sys.argv[1], int(sys.argv[2])
r = redis.Redis(host="127.0.0.1", port=port, decode_responses=False)

# Fixed absolute times, far in the future, so that the manifests do not change between captures.
T = 4102444800000  # 2100-01-01T00:00:00Z in ms

def has_field_ttls():
    try:
        r.execute_command("HPEXPIRETIME", "no-such-key", "FIELDS", "1", "f")
        return True
    except redis.ResponseError as e:
        return "unknown command" not in str(e)

def config(name, value):
    try:
        r.config_set(name, value)
    except redis.ResponseError:
        pass  # not on this server (e.g. set-max-listpack-entries before 7.2)

def optional(*args):
    # A command this server may not have (functions before 7.0, plain list nodes before 7.0, ...).
    try:
        return r.execute_command(*args)
    except redis.ResponseError:
        return None

def expire_time(k):
    # PEXPIRETIME is 7.0+; before it, the time is PTTL from now, written "~<ms>" (within a few ms).
    t = optional("PEXPIRETIME", k)
    if t is not None:
        return str(t)
    ttl = r.execute_command("PTTL", k)
    return str(ttl) if ttl < 0 else "~%d" % (int(time.time() * 1000) + ttl)

def noise(n, seed):
    # Incompressible but deterministic bytes (a linear congruential generator).
    out, x = bytearray(), seed
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out.append((x >> 16) & 0xFF)
    return bytes(out)

def populate():
    # Small thresholds, so that the "big" variants cross into the other encoding with few elements.
    config("hash-max-listpack-entries", "16")
    config("hash-max-listpack-value", "64")
    config("hash-max-ziplist-entries", "16")  # the names before 7.0
    config("hash-max-ziplist-value", "64")
    config("zset-max-ziplist-entries", "16")
    config("list-max-ziplist-size", "8")
    config("zset-max-listpack-entries", "16")
    config("set-max-intset-entries", "16")
    config("set-max-listpack-entries", "16")
    config("list-max-listpack-size", "8")
    config("stream-node-max-entries", "4")
    config("lfu-decay-time", "0")  # OBJECT FREQ then equals what SAVE writes
    r.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "0")
    optional("FUNCTION", "LOAD", "REPLACE", LIBRARY)

    # Strings: int-encoded (8, 16, 32 bit), too big for an int encoding, raw, empty, binary, LZF-compressed.
    r.set("str:short", "hello")
    r.set("str:int8", "-7")
    r.set("str:int16", "12345")
    r.set("str:int32", "2000000000")
    r.set("str:int64", "12345678901234")
    r.set("str:empty", "")
    r.set("str:binary", b"\x00\xff\r\n\x01zero")
    r.set("str:raw", noise(200, 1))
    r.set("str:lzf", b"abcdefgh" * 150 + b"tail")
    r.set("str:big", (b"0123456789" * 2000) + noise(3000, 2))
    r.set("str:ttl", "expires in 2100")
    r.pexpireat("str:ttl", T + 123)
    # Keys are RDB strings too: an int-encoded key, a negative one, an LZF-compressed one.
    r.set("9999", "an integer key")
    r.set("-1", "a negative integer key")
    r.set(b"key:" + b"k" * 100, "a compressed key")

    # Lists: one listpack; a quicklist of several nodes (list-max-listpack-size 8) with LZF-compressed inner
    # nodes (list-compress-depth 1); a quicklist with a plain node (an element above the packed threshold).
    r.rpush("list:small", "a", "b", "1", "2", "-100", "1234567890123", b"x" * 70)
    config("list-compress-depth", "1")
    r.rpush("list:big", *[b"element-%03d-" % i + b"y" * 40 for i in range(40)])
    config("list-compress-depth", "0")
    optional("DEBUG", "QUICKLIST-PACKED-THRESHOLD", "100")
    r.rpush("list:plain", "before", b"P" * 300, "after", b"Q" * 150)
    optional("DEBUG", "QUICKLIST-PACKED-THRESHOLD", str(1 << 30))
    r.rpush("list:ttl", "1", "2", "3")
    r.pexpireat("list:ttl", T + 456)

    # Sets: intset (16/32/64-bit members), listpack (7.2+; a hashtable before), hashtable.
    r.sadd("set:intset", 1, 2, 3, -5, 70000, 5000000000)
    r.sadd("set:listpack", "apple", "banana", "cherry", "42")
    r.sadd("set:hashtable", *["member-%d" % i for i in range(30)])
    r.sadd("set:big-intset", *range(100, 120))  # above set-max-intset-entries: a hashtable of integers

    # Sorted sets: listpack and skiplist, with scores that must round-trip exactly.
    r.zadd("zset:small", {"one": 1, "half": 0.5, "neg": -2.25, "big": 1e300, "third": 1.0 / 3})
    scores = {"m%02d" % i: i * 1.5 - 7 for i in range(20)}
    scores.update({"pinf": float("inf"), "ninf": float("-inf"), "tiny": 5e-324, "pi": 3.141592653589793,
                   "0.1": 0.1, "int": 12345678901234})
    r.zadd("zset:skiplist", scores)

    # Hashes: listpack, hashtable (many fields), hashtable (one value above hash-max-listpack-value).
    r.hset("hash:small", mapping={"name": "slot", "count": "12", "neg": "-3", "empty": ""})
    r.hset("hash:big", mapping={"field-%02d" % i: "value-%d" % i for i in range(24)})
    r.hset("hash:longvalue", mapping={"short": "x", "long": b"L" * 100, "7": "seven"})
    if has_field_ttls():
        # Field TTLs (Redis 7.4+, Valkey 9.0+): a small hash and a big one, each with fields without a TTL too.
        r.hset("hash:ttl-small", mapping={"a": "1", "b": "2", "c": "3"})
        r.execute_command("HPEXPIREAT", "hash:ttl-small", T + 1000, "FIELDS", 2, "a", "c")
        r.hset("hash:ttl-big", mapping={"f%02d" % i: "v%d" % i for i in range(20)})
        r.execute_command("HPEXPIREAT", "hash:ttl-big", T + 2000, "FIELDS", 3, "f00", "f01", "f02")
        r.execute_command("HPEXPIREAT", "hash:ttl-big", T + 3000, "FIELDS", 1, "f10")
        r.pexpireat("hash:ttl-big", T + 5000)

    # Streams: several listpack nodes (stream-node-max-entries 4), deleted entries, two groups, consumers with
    # pending entries, one acknowledged, one consumer without any; an empty stream with a group.
    for i in range(1, 11):
        r.xadd("stream:s", {"n": str(i), "payload": "p" * i}, id="%d-1" % i)
    r.xadd("stream:s", {"other": "shape", "k2": "v2", "k3": "v3"}, id="11-0")
    r.xdel("stream:s", "3-1", "7-1")
    r.xgroup_create("stream:s", "g1", id="0")
    r.xreadgroup("g1", "alice", {"stream:s": ">"}, count=3)
    r.xreadgroup("g1", "bob", {"stream:s": ">"}, count=2)
    r.xack("stream:s", "g1", "2-1")
    r.xgroup_create("stream:s", "g2", id="5-1")
    optional("XGROUP", "CREATECONSUMER", "stream:s", "g2", "carol")
    r.xgroup_create("stream:empty", "g", id="$", mkstream=True)

    # Another database.
    r.execute_command("SELECT", "1")
    r.set("db1:key", "in db 1")
    r.execute_command("SELECT", "0")

    # Frequencies above the initial 5 for a few keys (each read increments the counter at these levels).
    for _ in range(5):
        r.get("str:short")
        r.lrange("list:small", 0, -1)

def all_keys(db):
    if optional("SELECT", str(db)) is None:
        return []  # cluster mode has db 0 only
    keys = sorted(r.scan_iter(count=1000))
    return keys

def record_freq(path, what, skip_path=None):
    # OBJECT FREQ / IDLETIME before the RDB is written (OBJECT does not touch the key; DUMP does). Keys in
    # skip_path are already expired: looking them up would delete them.
    skip = set()
    if skip_path:
        with open(skip_path) as f:
            skip = {tuple(line.split("\t")[:2]) for line in f}
    lines = []
    for db in (0, 1):
        for k in all_keys(db):
            if (str(db), k.hex()) in skip:
                continue
            v = r.object(what.lower(), k)
            lines.append((db, k, v))
    r.execute_command("SELECT", "0")
    with open(path, "w") as f:
        for db, k, v in lines:
            f.write("%d\t%s\t%d\n" % (db, k.hex(), v))

def expired_key():
    # A key that expires while active expiry is off: it is still in the keyspace (and the RDB) after its time.
    r.set("str:expired", "gone soon", px=200)
    t = expire_time("str:expired")
    with open(sys.argv[3], "w") as f:
        f.write("%d\t%s\t%s\n" % (0, b"str:expired".hex(), t))
    time.sleep(0.4)

def manifest(freq_path, expired_path, out):
    freq = {}
    with open(freq_path) as f:
        for line in f:
            db, k, v = line.rstrip("\n").split("\t")
            freq[(int(db), k)] = v
    expired = {}
    with open(expired_path) as f:
        for line in f:
            db, k, t = line.rstrip("\n").split("\t")
            expired[(int(db), k)] = t
    rows = []
    for (db, khex), v in sorted(freq.items()):
        if (db, khex) in expired:
            continue
        r.execute_command("SELECT", str(db))
        k = bytes.fromhex(khex)
        t = expire_time(k)
        d = r.execute_command("DUMP", k)
        rows.append("key\t%d\t%s\t%s\t%s\t%s" % (db, khex, t, v, d.hex()))
    for (db, khex), t in sorted(expired.items()):
        rows.append("key\t%d\t%s\t%s\t%s\t-" % (db, khex, t, freq.get((db, khex), "-1")))
    r.execute_command("SELECT", "0")
    for lib in optional("FUNCTION", "LIST", "WITHCODE") or []:
        d = lib if isinstance(lib, dict) else dict(zip(lib[::2], lib[1::2]))
        rows.append("function\t%s" % d[b"library_code"].hex())
    with open(out, "w") as f:
        f.write("\n".join(rows) + "\n")

def lru():
    r.flushall()
    optional("FUNCTION", "FLUSH")
    r.config_set("maxmemory-policy", "allkeys-lru")
    r.set("lru:fresh", "just written")
    r.rpush("lru:list", "a", "b", "c")
    payload = r.dump("lru:fresh")
    r.restore("lru:idle", 0, payload, idletime=1000)
    r.restore("lru:idle-ttl", T + 789, payload, absttl=True, idletime=50)

def cluster():
    # A one-node cluster that owns every slot, with a few keys in different slots: Redis 7.4+ writes a SLOT_INFO
    # opcode before each slot's keys, Valkey 8+ a "slot-info" aux field.
    r.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
    for _ in range(100):
        if b"cluster_state:ok" in r.execute_command("CLUSTER", "INFO"):
            break
        time.sleep(0.1)
    else:
        sys.exit("the one-node cluster did not come up")
    r.config_set("lfu-decay-time", "0")
    r.set("a", "in slot 15495")
    r.set("b", "in slot 3300")
    r.pexpireat("b", T + 7)
    r.rpush("{a}list", "same slot as a", "1", "2")
    r.hset("c", mapping={"f": "v"})

def sync(out, capa_eof, version):
    # A replica's handshake, then the RDB exactly as it arrives, without its framing.
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    buf = bytearray()
    def line():
        while True:
            i = buf.find(b"\r\n")
            if i >= 0:
                l = bytes(buf[:i]); del buf[:i + 2]
                return l
            data = s.recv(65536)
            if not data:
                sys.exit("connection closed")
            buf.extend(data)
    def send(*words):
        msg = b"*%d\r\n" % len(words)
        for w in words:
            w = w if isinstance(w, bytes) else str(w).encode()
            msg += b"$%d\r\n%s\r\n" % (len(w), w)
        s.sendall(msg)
    send("REPLCONF", "listening-port", "0"); assert line() == b"+OK"
    if capa_eof:
        send("REPLCONF", "capa", "eof", "capa", "psync2"); assert line() == b"+OK"
    if version:
        send("REPLCONF", "version", version); assert line() == b"+OK"
    send("PSYNC", "?", "-1")
    while True:
        l = line().lstrip(b"\n")  # keepalive newlines come before the reply and before the payload
        if l.startswith(b"+FULLRESYNC"):
            break
        if l:
            sys.exit("unexpected reply to PSYNC: %r" % l)
    while True:
        l = line().lstrip(b"\n")
        if l:
            break
    if l.startswith(b"$EOF:"):
        mark = l[5:]
        while not buf.endswith(mark):
            data = s.recv(65536)
            if not data:
                sys.exit("connection closed before the EOF mark")
            buf.extend(data)
        body = bytes(buf[:-len(mark)])
    else:
        n = int(l[1:])
        while len(buf) < n:
            buf.extend(s.recv(65536))
        body = bytes(buf[:n])
    s.close()
    with open(out, "wb") as f:
        f.write(body)

LIBRARY = (b"#!lua name=rdbtest\n"
           b"redis.register_function('rdbtest_echo', function(keys, args) return args[1] end)\n")

if cmd == "populate":
    populate()
elif cmd == "freq":
    record_freq(sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None)
elif cmd == "expired":
    expired_key()
elif cmd == "manifest":
    manifest(sys.argv[3], sys.argv[4], sys.argv[5])
elif cmd == "lru":
    lru()
elif cmd == "cluster":
    cluster()
elif cmd == "sync":
    sync(sys.argv[3], sys.argv[4] == "eof", sys.argv[5] if len(sys.argv) > 5 else "")
PY
}

# Redis 6.0.16 (RDB 9, the last version with ziplists, ziplist quicklists and RDB 9 streams), from a Debian 11
# root built here the way deploy/local/server-root.sh builds its roots (it knows only the servers slotshift
# runs on).
old_root() {
  local cache=${SLOTSHIFT_ROOT_CACHE:-/var/cache/slotshift/roots} root
  root=$cache/bullseye
  if [ ! -f "$root/.slotshift-root-complete" ]; then
    mkdir -p "$cache"
    exec 8>"$cache/.bullseye.lock"
    flock 8
    if [ ! -f "$root/.slotshift-root-complete" ]; then
      say "building a Debian 11 root for redis-6.0 in $root (once)"
      rm -rf "$root.tmp"
      debootstrap --variant=minbase --include=redis-server bullseye "$root.tmp" http://deb.debian.org/debian \
        >"$cache/bullseye.log" 2>&1 || { say "debootstrap failed; see $cache/bullseye.log"; exit 1; }
      touch "$root.tmp/.slotshift-root-complete"
      mv "$root.tmp" "$root"
    fi
  fi
  echo "ROOT=$root"
  echo "SERVER=redis-server"
}

capture() {
  local name=$1 port=$2 root="" server=redis-server debug=(--enable-debug-command local)
  if [ "$name" = redis-6.0 ]; then
    eval "$(old_root)"
    debug=()  # DEBUG needs no switch before 7.0
  else
    eval "$("$REPO/deploy/local/server-root.sh" "$name")"
  fi
  root=$ROOT server=$SERVER
  local dir=$WORK/$name
  rm -rf "$root$dir"
  mkdir -p "$root$dir"
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  local run=()
  [ -z "$root" ] || run=(chroot "$root")
  "${run[@]}" "$server" --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$dir" --logfile "$dir/server.log" \
    --pidfile "$dir/server.pid" --save '' --appendonly no "${debug[@]}" --rdbcompression yes \
    --rdbchecksum yes --maxmemory-policy allkeys-lfu --repl-diskless-sync yes --repl-diskless-sync-delay 0
  STARTED+=("$port")
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  say "$name: $(redis-cli -p "$port" info server | tr -d '\r' | grep -E '^(redis|valkey)_version' | tr '\n' ' ')"

  local tmp=$root$dir
  py populate "$port"
  py freq "$port" "$tmp/freq.tsv" FREQ
  py expired "$port" "$tmp/expired.tsv"
  redis-cli -p "$port" save >/dev/null
  cp "$root$dir/dump.rdb" "$OUT/$name.rdb"
  if [ "$name" != valkey-9.1 ]; then
    py sync "$port" "$OUT/$name-sync.rdb" eof
    py manifest "$port" "$tmp/freq.tsv" "$tmp/expired.tsv" "$OUT/$name.manifest"
  else
    # Valkey 9 writes RDB 11 (REDIS0011) for a replica that did not send REPLCONF version, and fails the whole
    # sync ("Can't store key (db 0) in RDB version 11") when a hash has field TTLs, which RDB 11 cannot carry.
    # So: the versioned sync (VALKEY080) of the full dataset first; then, without the field-TTL hashes, the
    # unversioned one, with a manifest of its own (the first manifest's DUMPs changed the LFU counters).
    py sync "$port" "$OUT/$name-sync-versioned.rdb" eof 9.1.2
    py manifest "$port" "$tmp/freq.tsv" "$tmp/expired.tsv" "$OUT/$name.manifest"
    # (SCAN in that second manifest deletes the expired key, so it is in neither that file nor its manifest.)
    redis-cli -p "$port" del hash:ttl-small hash:ttl-big >/dev/null
    : >"$tmp/none.tsv"
    py freq "$port" "$tmp/freq2.tsv" FREQ
    py sync "$port" "$OUT/$name-sync.rdb" eof
    py manifest "$port" "$tmp/freq2.tsv" "$tmp/none.tsv" "$OUT/$name-sync.manifest"
  fi

  py lru "$port"
  sleep 1.1  # lru:fresh and lru:list become at least a second idle
  py freq "$port" "$tmp/idle.tsv" IDLETIME
  : >"$tmp/none.tsv"
  redis-cli -p "$port" save >/dev/null
  cp "$root$dir/dump.rdb" "$OUT/$name-lru.rdb"
  py manifest "$port" "$tmp/idle.tsv" "$tmp/none.tsv" "$OUT/$name-lru.manifest"

  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true

  # Cluster mode: one node, every slot.
  local cport=$((port + 10)) cdir=$dir/cluster
  mkdir -p "$root$cdir"
  "${run[@]}" "$server" --port "$cport" --bind 127.0.0.1 --daemonize yes --dir "$cdir" --logfile "$cdir/server.log" \
    --pidfile "$cdir/server.pid" --save '' --appendonly no --rdbcompression yes --rdbchecksum yes \
    --maxmemory-policy allkeys-lfu --cluster-enabled yes --cluster-config-file nodes.conf
  STARTED+=("$cport")
  for _ in $(seq 1 100); do
    redis-cli -p "$cport" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  py cluster "$cport"
  py freq "$cport" "$tmp/cfreq.tsv" FREQ
  redis-cli -p "$cport" save >/dev/null
  cp "$root$cdir/dump.rdb" "$OUT/$name-cluster.rdb"
  py manifest "$cport" "$tmp/cfreq.tsv" "$tmp/none.tsv" "$OUT/$name-cluster.manifest"
  redis-cli -p "$cport" shutdown nosave >/dev/null 2>&1 || true
  say "$name: $(cd "$OUT" && ls -l "$name".* "$name"-*.* | awk '{ printf "%s %s  ", $9, $5 }')"
}

for name in "${SERVERS[@]}"; do
  case $name in
    redis-7.0) p=31100 ;;
    redis-8.0) p=31101 ;;
    valkey-8.0) p=31102 ;;
    valkey-8.1) p=31103 ;;
    valkey-9.1) p=31104 ;;
    redis-6.0) p=31105 ;;
    *) say "unknown server $name"; exit 2 ;;
  esac
  capture "$name" "$p"
done
say "captured into $OUT"
