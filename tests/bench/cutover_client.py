#!/usr/bin/python3
"""What one client sees while slots move: one request at a time (pipeline 1) at a fixed rate, each timed with
time.perf_counter_ns from just before it is sent to its reply, on keys of the moving slots, alternating a SET
of a fresh 100-byte value and a GET that must return the value this client wrote last to that key (a key it has
not written yet: a value of --size bytes).

    cutover_client.py (--proxy HOST:PORT | --cluster HOST:PORT) --slots FIRST-LAST [--keys N] [--size 100]
                      [--interval-us 200] [--probe-keys 10000] [--skip-keys 0] [--samples FILE]

--proxy talks to slotshift-proxy with a plain redis.Redis connection; --cluster is python3-redis's RedisCluster,
which follows MOVED and ASK itself. The probe keys are the first --probe-keys of "key:0".."key:N-1" (as
load_keys.py writes them) whose slot is in --slots, after the first --skip-keys of those (so that several clients
can each have keys of their own). A request runs when it is due; one that comes due while the
previous one is still waiting is sent as soon as that one returns (never in a burst), so a stall shows as one
long request and a lower rate. An exception or a wrong value is an error, and the client carries on.

SIGUSR1 marks the start of the move and SIGUSR2 its end; SIGTERM or SIGINT stops the client, which then prints
one JSON object: for "idle" (from --warmup-ms after the start to SIGUSR1), "during" (SIGUSR1 to SIGUSR2) and
"after", the count, p50, p99, p99.9 and max in ms and the errors, the first error seen, and the wall-clock times
(unix ns) of the two marks. --samples FILE also writes every request (when it was sent, in unix ns, how long it
took in ns, and whether it failed) as JSON, for windows of one's own: window_stats() here computes them.
"""
import argparse
import array
import json
import logging
import signal
import sys
import time

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot


def window_stats(sent, took, failed, a, b):
    """Count, p50, p99, p99.9, max (ms) and errors of the requests sent in [a, b)."""
    idx = [i for i in range(len(sent)) if a <= sent[i] < b]
    lat = sorted(took[i] for i in idx)

    def q(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6 if lat else 0.0
    return {"count": len(lat), "seconds": (min(b, sent[-1]) - a) / 1e9 if sent and b > a else 0.0,
            "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999), "max_ms": lat[-1] / 1e6 if lat else 0.0,
            "errors": sum(failed[i] for i in idx)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy")
    ap.add_argument("--cluster")
    ap.add_argument("--slots", required=True)
    ap.add_argument("--keys", type=int, default=1000000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--interval-us", type=int, default=200)
    ap.add_argument("--probe-keys", type=int, default=10000)
    ap.add_argument("--skip-keys", type=int, default=0)
    ap.add_argument("--warmup-ms", type=int, default=500)
    ap.add_argument("--samples")
    args = ap.parse_args()
    if bool(args.proxy) == bool(args.cluster):
        sys.exit("give --proxy or --cluster")
    first, _, last = args.slots.partition("-")
    first, last = int(first), int(last or first)

    keys = []
    skip = args.skip_keys
    for i in range(args.keys):
        k = b"key:%d" % i
        if first <= key_slot(k) <= last:
            if skip > 0:
                skip -= 1
                continue
            keys.append(k)
            if len(keys) == args.probe_keys:
                break
    if not keys:
        sys.exit("no key:N in slots %s" % args.slots)
    expected = {}  # key -> the value this client wrote last

    # RedisCluster logs every redirection it follows with a traceback.
    logging.getLogger("redis.cluster").setLevel(logging.CRITICAL)
    if args.proxy:
        host, port = args.proxy.rsplit(":", 1)
        r = redis.Redis(host=host, port=int(port), socket_timeout=30, socket_connect_timeout=5)
    else:
        host, port = args.cluster.rsplit(":", 1)
        r = RedisCluster(startup_nodes=[ClusterNode(host, int(port))], socket_timeout=30, socket_connect_timeout=5)

    marks = {}
    stop = []
    signal.signal(signal.SIGUSR1, lambda *_: marks.setdefault("start", time.perf_counter_ns()))
    signal.signal(signal.SIGUSR2, lambda *_: marks.setdefault("end", time.perf_counter_ns()))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    sent_at = array.array("q")   # perf_counter_ns when each request was sent
    took = array.array("q")      # ns until its reply
    failed = array.array("b")    # 1 when it was an error
    first_error = {}
    interval = args.interval_us * 1000
    begun = time.perf_counter_ns()
    due = begun
    n = 0
    while not stop:
        now = time.perf_counter_ns()
        if now < due:
            time.sleep((due - now) / 1e9)
        elif now - due > interval:
            due = now  # behind: go on from here, never in a burst
        k = keys[n % len(keys)] if n % 2 == 0 else keys[(n // 2 * 7919) % len(keys)]
        ok = True
        t0 = time.perf_counter_ns()
        try:
            if n % 2 == 0:
                v = (b"%d:" % n).ljust(args.size, b"w")
                r.set(k, v)
                t1 = time.perf_counter_ns()
                expected[k] = v
            else:
                got = r.get(k)
                t1 = time.perf_counter_ns()
                want = expected.get(k)
                if got != want if want is not None else got is None or len(got) != args.size:
                    ok = False
                    first_error.setdefault("error", "GET %s returned %r, expected %r" % (
                        k.decode(), (got or b"")[:20], (want or b"a value of %d bytes" % args.size)[:20]))
        except redis.RedisError as e:
            t1 = time.perf_counter_ns()
            ok = False
            first_error.setdefault("error", "%s: %s" % (type(e).__name__, e))
        sent_at.append(t0)
        took.append(t1 - t0)
        failed.append(0 if ok else 1)
        n += 1
        due += interval

    # perf_counter_ns to unix ns, measured once.
    to_wall = time.time_ns() - time.perf_counter_ns()
    sent = [t + to_wall for t in sent_at]
    start = marks.get("start", time.perf_counter_ns()) + to_wall
    end = marks.get("end", time.perf_counter_ns()) + to_wall
    warm = begun + to_wall + args.warmup_ms * 1000000
    out = {"requests": n, "interval_us": args.interval_us, "probe_keys": len(keys),
           "first_error": first_error.get("error", ""), "start_ns": start, "end_ns": end}
    for name, (a, b) in {"idle": (warm, start), "during": (start, end), "after": (end, 1 << 62)}.items():
        out[name] = window_stats(sent, took, failed, a, b)
    if args.samples:
        with open(args.samples, "w") as f:
            json.dump({"sent_ns": sent, "took_ns": list(took), "failed": list(failed)}, f)
    print(json.dumps(out))
    r.close()


if __name__ == "__main__":
    main()
