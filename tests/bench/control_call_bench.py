#!/usr/bin/env python3
"""What one control call costs one proxy: its CPU time and its threads' context switches per call.

A cluster of 3 masters and one slotshift-proxy (--threads 1 by default, an admin endpoint, no client) are
started; then, for each kind of call asked for, --calls calls of it are made one after the other, --gap-us apart
(as a move's batches come, if faster: a worker with nothing to do takes a handoff's route at its next tick, and
published routes it has not taken are bounded), on one kept connection (a new one every 30 calls, under the
endpoint's limit per connection), each request written whole:

    hold      POST /v1/slots/hold of one slot, again and again (the same owner)
    handoff   POST /v1/slots/handoff of that slot to its owner (checked, routed, released)
    next      the same handoff, carrying the hold of the next slot (as a move sends from its second batch on)
    release   POST /v1/slots/release of that slot

Prints, per kind, the proxy's CPU time per call (utime + stime from /proc/PID/stat: 10 ms ticks, so use a
thousand calls or more; the idle proxy's own ticks in the gaps are in it too), the round trip of a call as the
caller sees it, and the voluntary and involuntary context switches per call of
all its threads together (/proc/PID/task/*/status): a context switch is most of what a call costs each proxy of
a fleet that shares cores.

    tests/bench/control_call_bench.py [--calls 1000] [--gap-us 2000] [--threads 1] [hold handoff next release]

SLOTSHIFT_BINARY_DIR picks the build (default: build/). Not part of the test suite."""
import argparse
import glob
import json
import os
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("SLOTSHIFT_SOURCE_DIR", ROOT)
os.environ.setdefault("SLOTSHIFT_BINARY_DIR", os.path.join(ROOT, "build"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402

TOKEN = "control-call-bench-token-0123456789"


class Admin:
    """One kept connection to the admin endpoint, each request sent in one write."""

    def __init__(self, port):
        self.port, self.sock, self.used = port, None, 0

    def post(self, path, body):
        if self.sock is None or self.used == 30:
            if self.sock:
                self.sock.close()
            self.sock = socket.create_connection(("127.0.0.1", self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.used = 0
        data = json.dumps(body).encode()
        self.sock.sendall(b"POST %s HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\n"
                          b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (path.encode(), TOKEN.encode(), len(data), data))
        self.used += 1
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                sys.exit("the proxy closed the connection")
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        while len(rest) < length:
            rest += self.sock.recv(65536)
        if not head.startswith(b"HTTP/1.1 200"):
            sys.exit("%s answered %s" % (path, head.split(b"\r\n")[0].decode()))


def cpu_us(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1e6 / os.sysconf("SC_CLK_TCK")


def switches(pid):
    voluntary = involuntary = 0
    for path in glob.glob("/proc/%d/task/*/status" % pid):
        try:
            status = dict(line.split(":", 1) for line in open(path) if ":" in line)
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        voluntary += int(status["voluntary_ctxt_switches"])
        involuntary += int(status["nonvoluntary_ctxt_switches"])
    return voluntary, involuntary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gap-us", type=int, default=2000)
    parser.add_argument("kinds", nargs="*", help="hold, handoff, next, release (default: all four)")
    args = parser.parse_args()
    kinds = ("hold", "handoff", "next", "release")
    args.kinds = args.kinds or list(kinds)
    for kind in args.kinds:
        if kind not in kinds:
            parser.error("a call is hold, handoff, next or release, not %r" % kind)
    cluster = harness.Cluster(masters=3)
    proxy = harness.Proxy(cluster, threads=args.threads, admin=True, admin_token=TOKEN)
    try:
        slot = 100
        node = "%s:%d" % cluster.address(cluster.owners()[slot])
        calls = {
            "hold": ("/v1/slots/hold", {"slots": str(slot), "ttl_ms": 2000, "owner": "bench"}),
            "handoff": ("/v1/slots/handoff", {"slots": str(slot), "node": node}),
            "next": ("/v1/slots/handoff", {"slots": str(slot), "node": node,
                                           "hold": {"slots": str(slot + 1), "ttl_ms": 2000, "owner": "bench"}}),
            "release": ("/v1/slots/release", {"slots": str(slot)}),
        }
        admin = Admin(proxy.admin_port)
        for kind in kinds:  # warm: connections, the check's own connection
            admin.post(*calls[kind])
        pid = proxy.proc.pid
        print("%-8s %12s %12s %12s %14s" % ("call", "CPU us/call", "wall us/call", "voluntary", "involuntary"))
        for kind in args.kinds:
            time.sleep(0.3)
            cpu0, (vol0, inv0) = cpu_us(pid), switches(pid)
            busy = 0.0
            for _ in range(args.calls):
                start = time.monotonic()
                admin.post(*calls[kind])
                busy += time.monotonic() - start
                time.sleep(args.gap_us / 1e6)
            cpu1, (vol1, inv1) = cpu_us(pid), switches(pid)
            n = args.calls
            print("%-8s %12.0f %12.0f %12.2f %14.2f" % (kind, (cpu1 - cpu0) / n, busy / n * 1e6,
                                                       (vol1 - vol0) / n, (inv1 - inv0) / n))
    finally:
        proxy.stop()


if __name__ == "__main__":
    main()
