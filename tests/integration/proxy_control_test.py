#!/usr/bin/python3
"""slotshift-proxy's slot hold / route / release control (POST /v1/slots/hold|route|release|handoff|check,
GET /v1/slots on the admin endpoint), driven as the orchestrator drives it at a move's cutover, with real clients
(Debian's python3-redis, redis-cli) on a real Redis Cluster. Run by ctest; runs alone too:
tests/integration/proxy_control_test.py [-k pattern].
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import redis
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CLUSTER = None
TOKEN = "ctl-s3cret"

# A script that keeps its node busy for ARGV[1] ms, then writes KEYS[1]: a command for a slot that is in flight
# for as long as we want.
BUSY_SCRIPT = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
while true do
  local n = redis.call('TIME')
  if tonumber(n[1]) * 1000000 + tonumber(n[2]) - start > tonumber(ARGV[1]) * 1000 then break end
end
redis.call('SET', KEYS[1], 'slow-done')
return 1
"""


def setUpModule():
    global CLUSTER
    CLUSTER = harness.Cluster(3, 0)


def tearDownModule():
    CLUSTER.stop()


def client(proxy, **kw):
    return redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=60, **kw)


class Background:
    """Runs fn in a thread and keeps its result or exception."""

    def __init__(self, fn, *args):
        self.result = None
        self.error = None
        self.thread = threading.Thread(target=self.run, args=(fn, *args), daemon=True)
        self.thread.start()

    def run(self, fn, *args):
        try:
            self.result = fn(*args)
        except Exception as e:  # noqa: BLE001 - the test looks at it
            self.error = e

    def running(self):
        return self.thread.is_alive()

    def join(self, timeout=30):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError("still running after %s s" % timeout)
        if self.error:
            raise self.error
        return self.result


def rss_kib(pid):
    """The resident memory of a process, in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for %d" % pid)


def send_raw(port, head, body_bytes=0, wait=5):
    """Sends head (bytes) to port, then up to body_bytes more from another thread, as fast as the peer takes them,
    while reading the answer until the peer closes (or wait seconds pass). Returns (answer, seconds from the
    end of head to the first byte of the answer or None, body bytes sent, whether the peer closed)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(wait)
    s.sendall(head)
    start = time.time()
    sent = [0]

    def send_body():
        chunk = b"a" * 65536
        try:
            while sent[0] < body_bytes:
                s.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass  # the peer closed

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    answer, first, closed = b"", None, False
    try:
        while True:
            data = s.recv(65536)
            if not data:
                closed = True
                break
            if first is None:
                first = time.time() - start
            answer += data
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        pass
    sender.join(30)
    s.close()
    return answer, first, sent[0], closed


def http(port, method, path, token=None, body=None, timeout=10, host="127.0.0.1"):
    """One request to an admin endpoint on host:port: (status, body as text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request("http://%s:%d%s" % (host, port, path), data=data, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def move_empty_slot(test, cluster, slot, dst):
    """Moves an empty slot to dst by hand, as redis-cli --cluster reshard does (no key to migrate)."""
    src_id = cluster.owners()[slot]
    src = cluster.address(src_id)
    dst_id = cluster.node_id(dst)
    test.assertEqual(cluster.cli(dst, "cluster", "setslot", str(slot), "importing", src_id).strip(), "OK")
    test.assertEqual(cluster.cli(src, "cluster", "setslot", str(slot), "migrating", dst_id).strip(), "OK")
    for node in [dst, src] + [m for m in cluster.masters() if m not in (src, dst)]:
        test.assertEqual(cluster.cli(node, "cluster", "setslot", str(slot), "node", dst_id).strip(), "OK")
    cluster.wait_owner([slot], dst_id)


class ControlCase(unittest.TestCase):
    """One proxy with the admin endpoint (and a token) in front of the module's cluster."""

    FLAGS = ("--request-timeout-ms", "20000")
    THREADS = 2

    @classmethod
    def setUpClass(cls):
        cls.cluster = CLUSTER
        cls.proxy = harness.Proxy(CLUSTER, *cls.FLAGS, threads=cls.THREADS, admin=True, admin_token=TOKEN)
        cls.r = client(cls.proxy)

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()

    def tearDown(self):
        # A failed test must not leave slots held for the next one.
        status, body = self.proxy.admin_call("GET", "/v1/slots")
        if status == 200:
            for h in body["holds"]:
                self.proxy.admin_call("POST", "/v1/slots/release", {"slots": h["slots"]})

    # The control calls, checked for their status.
    def hold(self, slots, ttl_ms=10000, owner="test", expect=200, **extra):
        status, body = self.proxy.admin_call("POST", "/v1/slots/hold",
                                             dict(slots=str(slots), ttl_ms=ttl_ms, owner=owner, **extra))
        self.assertEqual(status, expect, body)
        return body

    def release(self, expect=200, **body):
        status, out = self.proxy.admin_call("POST", "/v1/slots/release", body)
        self.assertEqual(status, expect, out)
        return out

    def route(self, slots, node, expect=200):
        status, out = self.proxy.admin_call("POST", "/v1/slots/route", {"slots": str(slots), "node": node})
        self.assertEqual(status, expect, out)
        return out

    def holds(self):
        status, out = self.proxy.admin_call("GET", "/v1/slots")
        self.assertEqual(status, 200, out)
        return out["holds"]

    def stats(self):
        status, out = self.proxy.admin_call("GET", "/stats")
        self.assertEqual(status, 200, out)
        return out

    def slot(self, key):
        return self.r.execute_command("CLUSTER", "KEYSLOT", key)

    def owner(self, slot):
        """(host, port) and node id of the master that owns slot."""
        node_id = self.cluster.owners()[slot]
        return self.cluster.address(node_id), node_id

    def on_node(self, key):
        """GET key straight from the master that owns its slot (None if absent), bypassing the proxy."""
        node, _ = self.owner(self.slot(key))
        return redis.Redis(host=node[0], port=node[1], socket_timeout=10).get(key)


class HoldAndRelease(ControlCase):
    def test_held_write_reaches_the_node_only_on_release(self):
        key = "{held1}k"
        slot = self.slot(key)
        body = self.hold(slot, owner="move-1")
        self.assertEqual(body["held"], str(slot))
        self.assertEqual(body["queued"], 0)
        held_before = self.stats()["requests_held"]
        # redis-cli through the proxy: it waits, and the owning node has nothing.
        cli = subprocess.Popen(["redis-cli", "-p", str(self.proxy.port), "set", key, "v1"], stdout=subprocess.PIPE,
                               text=True)
        time.sleep(0.5)
        self.assertIsNone(cli.poll(), "the SET of a held slot was answered during the hold")
        self.assertIsNone(self.on_node(key))
        [h] = self.holds()
        self.assertEqual((h["slots"], h["owner"], h["queued"]), (str(slot), "move-1", 1))
        self.assertGreaterEqual(h["age_ms"], 400)
        self.assertTrue(0 < h["expires_in_ms"] <= 10000, h)
        self.assertEqual(self.stats()["requests_held"] - held_before, 1)

        out = self.release(slots=str(slot))
        self.assertEqual((out["released"], out["dispatched"]), (str(slot), 1))
        self.assertEqual(cli.communicate(timeout=10)[0].strip(), "OK")
        self.assertEqual(self.on_node(key), b"v1")
        self.assertEqual(self.holds(), [])
        # Releasing what is not held is a no-op.
        self.assertEqual(self.release(slots=str(slot))["dispatched"], 0)

    def test_pipelining_clients_keep_their_order(self):
        held_slot = self.slot("{ord-h}")
        self.assertNotEqual(held_slot, self.slot("{ord-f}"))
        self.hold(held_slot)
        replies = {}

        def run(c):
            p = client(self.proxy).pipeline(transaction=False)
            for i in range(20):
                p.append("{ord-f}log:%d" % c, "f%d," % i)
            for i in range(100):
                p.append("{ord-h}log:%d" % c, "h%d," % i)
                p.append("{ord-f}log:%d" % c, "F%d," % i)
                p.incr("{ord-h}n:%d" % c)
                p.incr("{ord-f}n:%d" % c)
            replies[c] = p.execute()

        clients = [Background(run, c) for c in range(3)]
        # Each client's commands before its first held one ran; none after it did, whatever its slot.
        prefix = "".join("f%d," % i for i in range(20)).encode()
        deadline = time.time() + 10
        while time.time() < deadline and any(self.on_node("{ord-f}log:%d" % c) != prefix for c in range(3)):
            time.sleep(0.05)
        time.sleep(0.5)
        for c in range(3):
            self.assertEqual(self.on_node("{ord-f}log:%d" % c), prefix)
            self.assertIsNone(self.on_node("{ord-f}n:%d" % c))
            self.assertIsNone(self.on_node("{ord-h}log:%d" % c))
            self.assertTrue(clients[c].running())
        # A client with nothing held is not held up.
        start = time.time()
        other = client(self.proxy)
        self.assertTrue(other.set("{ord-f}other", "x"))
        self.assertEqual(other.get("{ord-f}other"), b"x")
        self.assertEqual(other.dbsize() >= 1, True)
        self.assertLess(time.time() - start, 2)
        [h] = self.holds()
        self.assertEqual(h["queued"], 3 * 200)  # APPEND and INCR of the held slot

        out = self.release(slots=str(held_slot))
        self.assertEqual(out["dispatched"], 3 * 400)
        for b in clients:
            b.join()
        for c in range(3):
            # Every reply as a single Redis would have given it, in order.
            lengths, counters, expected = {}, {}, []
            commands = [("append", "{ord-f}log", "f%d," % i) for i in range(20)]
            for i in range(100):
                commands += [("append", "{ord-h}log", "h%d," % i), ("append", "{ord-f}log", "F%d," % i),
                             ("incr", "{ord-h}n", None), ("incr", "{ord-f}n", None)]
            for op, key, arg in commands:
                if op == "append":
                    lengths[key] = lengths.get(key, 0) + len(arg)
                    expected.append(lengths[key])
                else:
                    counters[key] = counters.get(key, 0) + 1
                    expected.append(counters[key])
            self.assertEqual(replies[c], expected)
            self.assertEqual(self.r.get("{ord-h}log:%d" % c), "".join("h%d," % i for i in range(100)).encode())
            self.assertEqual(self.r.get("{ord-f}log:%d" % c),
                             prefix + "".join("F%d," % i for i in range(100)).encode())

    def test_split_commands_and_transactions(self):
        held = self.slot("{sp-h}")
        self.hold(held)
        mset = Background(client(self.proxy).mset, {"{sp-h}a": "1", "{sp-f}a": "2"})

        def transaction():
            p = client(self.proxy).pipeline(transaction=True)
            p.set("{sp-h}x", 1).incr("{sp-h}x").get("{sp-h}x")
            return p.execute()

        tx = Background(transaction)
        time.sleep(0.5)
        # The part of MSET for a free slot went out; the held part waits, and so does the whole transaction.
        self.assertEqual(self.on_node("{sp-f}a"), b"2")
        self.assertIsNone(self.on_node("{sp-h}a"))
        self.assertIsNone(self.on_node("{sp-h}x"))
        self.assertTrue(mset.running() and tx.running())
        # Commands that go to every master are not held.
        start = time.time()
        self.assertGreaterEqual(client(self.proxy).dbsize(), 1)
        self.assertLess(time.time() - start, 2)

        self.release(slots=str(held))
        self.assertTrue(mset.join())
        self.assertEqual(tx.join(), [True, 2, b"2"])
        self.assertEqual(self.r.mget("{sp-h}a", "{sp-f}a", "{sp-h}x"), [b"1", b"2", b"2"])

    def test_hold_expires_by_itself(self):
        key = "{exp}k"
        slot = self.slot(key)
        before = self.stats()
        start = time.time()
        self.hold(slot, ttl_ms=800, owner="dead-orchestrator")
        self.assertTrue(client(self.proxy).set(key, "late"))
        waited = time.time() - start
        self.assertGreater(waited, 0.6)
        self.assertLess(waited, 5)
        self.assertEqual(self.on_node(key), b"late")
        self.assertEqual(self.holds(), [])
        after = self.stats()
        self.assertEqual(after["holds_expired"] - before["holds_expired"], 1)
        self.assertEqual(after["holds_placed"] - before["holds_placed"], 1)
        self.assertGreaterEqual(after["hold_longest_ms"], 800)

    def test_hold_waits_for_commands_in_flight(self):
        key = "{slow}k"
        slot = self.slot(key)
        # A quiet slot drains at once.
        self.assertLess(self.hold(self.slot("{quiet}"), owner="quiet")["drained_ms"], 200)
        self.release(owner="quiet")

        slow = Background(client(self.proxy).eval, BUSY_SCRIPT, 1, key, 600)
        time.sleep(0.15)
        start = time.time()
        body = self.hold(slot)
        took = time.time() - start
        # The HOLD came back once the script's reply had: its write is on the node, and nothing can follow.
        self.assertEqual(self.on_node(key), b"slow-done")
        self.assertGreater(body["drained_ms"], 250)
        self.assertGreater(took, 0.25)
        self.assertEqual(slow.join(5), 1)
        late = Background(client(self.proxy).set, key, "after")
        time.sleep(0.3)
        self.assertEqual(self.on_node(key), b"slow-done")
        self.release(slots=str(slot))
        self.assertTrue(late.join())
        self.assertEqual(self.on_node(key), b"after")

    def test_a_hold_stops_a_steady_writer_at_once_every_time(self):
        # A client that writes without pause is idle only between a reply and its next command: the proxy
        # answers many of these HOLDs without asking the client's worker. Whichever way, once the HOLD is
        # answered nothing more reaches the node until the release, and no acknowledged write is lost.
        key = "{steady}k"
        slot = self.slot(key)
        writer = client(self.proxy)
        acked = [0]
        stop = threading.Event()

        def write():
            while not stop.is_set():
                writer.incr(key)
                acked[0] += 1

        thread = threading.Thread(target=write)
        thread.start()
        try:
            node, _ = self.owner(slot)
            direct = redis.Redis(host=node[0], port=node[1], socket_timeout=10)
            for i in range(40):
                time.sleep(0.01)
                self.hold(slot, owner="steady")
                # One reply may still be on its way to the writer (its command had returned when the HOLD was
                # answered); no second one can come before the release.
                acked_at_hold = acked[0]
                before = int(direct.get(key) or 0)
                time.sleep(0.03)
                self.assertLessEqual(acked[0] - acked_at_hold, 1, f"round {i}: writes went on during the hold")
                self.assertEqual(int(direct.get(key) or 0), before,
                                 f"round {i}: the node took a write after the HOLD was answered")
                self.release(owner="steady")
        finally:
            stop.set()
            thread.join(30)
        self.assertFalse(thread.is_alive())
        self.assertGreater(acked[0], 40)
        self.assertEqual(int(self.on_node(key)), acked[0])

    def test_hold_that_does_not_drain_in_time_is_refused_and_released(self):
        key = "{stuck}k"
        slot = self.slot(key)
        slow = Background(client(self.proxy).eval, BUSY_SCRIPT, 1, key, 1500)
        time.sleep(0.15)
        start = time.time()
        body = self.hold(slot, wait_ms=300, expect=504)
        # The orchestrator gives a HOLD little more than wait_ms: the refusal comes right after it.
        self.assertLess(time.time() - start, 1.0)
        self.assertIn("did not drain within 300 ms", body["error"])
        self.assertIn("eval for hash slot %d" % slot, body["error"])
        self.assertEqual(self.holds(), [])
        self.assertEqual(slow.join(10), 1)
        self.assertTrue(self.r.set(key, "free again"))

    def test_holds_merge_and_release_by_owner(self):
        a, b = self.slot("{m-a}"), self.slot("{m-b}")
        self.hold(a, owner="x", ttl_ms=5000)
        self.hold(b, owner="x", ttl_ms=20000)
        self.hold(a, owner="y")
        holds = {h["owner"]: h for h in self.holds()}
        self.assertEqual(holds["x"]["slots"], harness.format_slots([a, b]))
        self.assertGreater(holds["x"]["expires_in_ms"], 15000)  # extended to the later end
        self.assertEqual(holds["y"]["slots"], str(a))
        out = self.release(owner="x")
        self.assertEqual(out["released"], harness.format_slots([a, b]))
        self.assertEqual([h["owner"] for h in self.holds()], ["y"])
        # Slot a is still held by y, slot b is free.
        self.assertTrue(client(self.proxy).set("{m-b}k", 1))
        w = Background(client(self.proxy).set, "{m-a}k", 1)
        time.sleep(0.3)
        self.assertTrue(w.running())
        self.assertEqual(self.release(slots=str(a))["dispatched"], 1)
        self.assertTrue(w.join())

    def test_stats_in_info_metrics_and_stats(self):
        slot = self.slot("{st}k")
        self.hold(slot)
        w = Background(client(self.proxy).set, "{st}k", 1)
        time.sleep(0.2)
        info = self.r.info("proxy")
        self.assertEqual(info["holds_current"], 1)
        self.assertEqual(info["held_requests"], 1)
        self.assertGreater(info["held_request_bytes"], 0)
        self.release(slots=str(slot))
        w.join()
        info = self.r.info("proxy")
        for field in ("holds_placed", "holds_expired", "requests_held", "hold_longest_ms", "holds_current"):
            self.assertIn(field, info)
        self.assertEqual((info["holds_current"], info["held_requests"], info["held_request_bytes"]), (0, 0, 0))
        self.assertGreaterEqual(info["requests_held"], 1)
        status, metrics = self.proxy.admin_call("GET", "/metrics")
        self.assertEqual(status, 200)
        # As Prometheus reads the page: its own text-format parser, every family typed, the same figures as INFO.
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        values = {s.name: s.value for f in families.values() for s in f.samples}
        self.assertTrue(all(f.type != "unknown" for f in families.values()),
                        [f.name for f in families.values() if f.type == "unknown"])
        self.assertEqual(families["slotshift_proxy_holds_current"].type, "gauge")
        self.assertEqual(families["slotshift_proxy_hold_longest_ms"].type, "gauge")
        for name in ("holds_placed", "holds_expired", "requests_held"):
            self.assertEqual(families["slotshift_proxy_" + name].type, "counter")
            self.assertEqual(values["slotshift_proxy_%s_total" % name], info[name], name)
        self.assertEqual(values["slotshift_proxy_holds_current"], 0)
        self.assertIn("holds_placed", self.stats())

    def test_the_token_is_required(self):
        for method, path, body in (("POST", "/v1/slots/hold", {"slots": "1", "ttl_ms": 1000}),
                                   ("POST", "/v1/slots/route", {"slots": "1", "node": "127.0.0.1:1"}),
                                   ("POST", "/v1/slots/release", {"slots": "1"}), ("GET", "/v1/slots", None)):
            for token in ("", "wrong"):
                status, out = self.proxy.admin_call(method, path, body, token=token)
                self.assertEqual(status, 401, (method, path, token, out))
                self.assertIn("unauthorized", out["error"])
        self.assertEqual(self.holds(), [])
        self.assertEqual(self.proxy.admin_call("GET", "/healthz", token=""), (200, "ok\n"))
        self.assertEqual(self.proxy.admin_call("GET", "/readyz", token=""), (200, "ready\n"))

    def test_bad_input_is_refused(self):
        cases = [
            ("/v1/slots/hold", "not json", "JSON object"),
            ("/v1/slots/hold", [1, 2], "JSON object"),
            ("/v1/slots/hold", {"ttl_ms": 1000}, "'slots' is required"),
            ("/v1/slots/hold", {"slots": "abc", "ttl_ms": 1000}, "'abc' is not a hash slot"),
            ("/v1/slots/hold", {"slots": "5-3", "ttl_ms": 1000}, "'5-3' is not a hash slot"),
            ("/v1/slots/hold", {"slots": "16384", "ttl_ms": 1000}, "'16384' is not a hash slot"),
            ("/v1/slots/hold", {"slots": "1,-2", "ttl_ms": 1000}, "'-2' is not a hash slot"),
            ("/v1/slots/hold", {"slots": "", "ttl_ms": 1000}, "no slot given"),
            ("/v1/slots/hold", {"slots": 7, "ttl_ms": 1000}, "'slots' must be a string"),
            ("/v1/slots/hold", {"slots": "1"}, "'ttl_ms' is required"),
            ("/v1/slots/hold", {"slots": "1", "ttl_ms": 0}, "'ttl_ms' must be"),
            ("/v1/slots/hold", {"slots": "1", "ttl_ms": 60001}, "from 1 to 60000"),
            ("/v1/slots/hold", {"slots": "1", "ttl_ms": "100"}, "'ttl_ms' must be"),
            ("/v1/slots/hold", {"slots": "1", "ttl_ms": 1.5}, "'ttl_ms' must be"),
            ("/v1/slots/hold", {"slots": "1", "ttl_ms": 100, "wait_ms": -1}, "'wait_ms' must be"),
            ("/v1/slots/hold", {"slots": "1", "ttl_ms": 100, "owner": 3}, "'owner' must be a string"),
            ("/v1/slots/route", {"slots": "1"}, "'node' is required"),
            ("/v1/slots/route", {"slots": "1", "node": "nohostport"}, "'node'"),
            ("/v1/slots/route", {"slots": "x", "node": "127.0.0.1:7000"}, "'x' is not a hash slot"),
            ("/v1/slots/release", {}, "give 'slots'"),
            ("/v1/slots/release", {"slots": "1-"}, "'1-' is not a hash slot"),
        ]
        for path, body, message in cases:
            status, out = self.proxy.admin_call("POST", path, body)
            self.assertEqual(status, 400, (path, body, out))
            self.assertIn(message, out["error"], (path, body))
        self.assertEqual(self.holds(), [])
        # Separators as CLUSTER NODES writes them are taken too, and the answer is normalized.
        self.assertEqual(self.hold("3 1-2,0", ttl_ms=1000)["held"], "0-3")


class HeldPastTheDeadline(ControlCase):
    FLAGS = ("--request-timeout-ms", "600")

    def test_a_command_held_past_its_deadline_gets_the_timeout_error(self):
        held, free = "{dl-h}k", "{dl-f}k"
        slot = self.slot(held)
        self.hold(slot, ttl_ms=5000)
        p = client(self.proxy).pipeline(transaction=False)
        p.set(held, 1).set(free, 1)
        start = time.time()
        out = p.execute(raise_on_error=False)
        self.assertLess(time.time() - start, 3)
        self.assertIn("timed out: held for a slot move (hash slot %d)" % slot, str(out[0]))
        self.assertIn("held for a slot move (behind an earlier command of this client)", str(out[1]))
        self.assertIsNone(self.on_node(held))
        self.assertIsNone(self.on_node(free))
        self.release(slots=str(slot))
        self.assertTrue(self.r.set(held, 2))


class MaxHeldBytes(ControlCase):
    FLAGS = ("--request-timeout-ms", "30000", "--max-held-bytes", "65536")
    THREADS = 1

    def test_past_max_held_bytes_clients_are_paused_not_refused(self):
        slot = self.slot("{mx}")
        self.hold(slot, ttl_ms=20000)
        before = self.stats()
        n, value = 2000, b"v" * 1000
        s = socket.create_connection(("127.0.0.1", self.proxy.port))
        s.settimeout(30)
        request = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\n{mx}k%d\r\n$%d\r\n%s\r\n" % (len(b"{mx}k%d" % i), i,
                                                                              len(value), value)
                           for i in range(n))
        sender = Background(s.sendall, request)  # 2 MB: the proxy stops reading, the sender blocks
        time.sleep(1.5)
        stats = self.stats()
        print("held with max-held-bytes 64 KiB: %d requests, %d bytes" % (stats["held_requests"],
                                                                            stats["held_request_bytes"]),
              file=sys.stderr)
        self.assertGreater(stats["held_requests"], 10)
        self.assertLess(stats["held_requests"], n // 4)
        self.assertLess(stats["held_request_bytes"], 65536 + 64 * 1024)
        self.assertEqual(self.on_node("{mx}k0"), None)

        self.release(slots=str(slot))
        sender.join()
        expected = b"+OK\r\n" * n
        got = b""
        while len(got) < len(expected):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        s.close()
        self.assertEqual(got, expected)
        self.assertEqual(self.on_node("{mx}k%d" % (n - 1)), value)
        after = self.stats()
        for counter in ("errors_timeout", "errors_backend_lost", "disconnected_slow_readers"):
            self.assertEqual(after[counter], before[counter], counter)


class RouteAfterMove(ControlCase):
    # The slot map is reloaded only on MOVED or a failure, so that what the test sees is the ROUTE's doing.
    FLAGS = ("--request-timeout-ms", "20000", "--refresh-interval-ms", "3600000")

    def move_empty_slot(self, slot, dst):
        move_empty_slot(self, self.cluster, slot, dst)

    def other_master(self, slot):
        src, _ = self.owner(slot)
        return next(m for m in self.cluster.masters() if m != src)

    def test_route_after_a_hand_move_sends_straight_to_the_new_owner(self):
        a, b = self.slot("{route-a}"), self.slot("{route-b}")
        dst_a, dst_b = self.other_master(a), self.other_master(b)
        self.move_empty_slot(a, dst_a)
        self.move_empty_slot(b, dst_b)
        moved = self.r.info("proxy")["redirects_moved"]
        out = self.route(a, "%s:%d" % dst_a)
        self.assertEqual(out, {"routed": str(a), "node": "%s:%d" % dst_a})
        for i in range(8):  # connections land on both workers
            self.assertTrue(client(self.proxy).set("{route-a}k%d" % i, i))
        self.assertEqual(self.r.info("proxy")["redirects_moved"], moved)
        node = redis.Redis(host=dst_a[0], port=dst_a[1])
        self.assertEqual(node.get("{route-a}k7"), b"7")
        # Without a ROUTE, the proxy meets the MOVED (and hides it).
        self.assertTrue(self.r.set("{route-b}k", 1))
        self.assertGreater(self.r.info("proxy")["redirects_moved"], moved)

    def test_a_handoff_reaches_clients_that_were_idle_when_it_came(self):
        """A worker with nothing held and nothing in flight takes a handoff at its next command or tick: the
        first command after it, at once or later, goes straight to the new owner, pipelined ones in order."""
        c, d = self.slot("{idle-c}"), self.slot("{idle-d}")
        dst_c, dst_d = self.other_master(c), self.other_master(d)
        self.move_empty_slot(c, dst_c)
        self.move_empty_slot(d, dst_d)
        idle = [client(self.proxy) for _ in range(8)]  # connections land on both workers
        for r in idle:
            self.assertTrue(r.ping())
        moved = self.r.info("proxy")["redirects_moved"]
        for slot, dst in ((c, dst_c), (d, dst_d)):
            status, out = self.proxy.admin_call("POST", "/v1/slots/handoff",
                                                {"slots": str(slot), "node": "%s:%d" % dst})
            self.assertEqual(status, 200, out)
        # At once: the first command of each idle client, a pipeline of writes of one key.
        for i, r in enumerate(idle):
            p = r.pipeline(transaction=False)
            for n in range(5):
                p.rpush("{idle-c}list%d" % i, n)
            self.assertEqual(p.execute(), [1, 2, 3, 4, 5])
        # Later, once every worker's tick has come.
        time.sleep(0.6)
        for i, r in enumerate(idle):
            self.assertTrue(r.set("{idle-d}k%d" % i, i))
        self.assertEqual(self.r.info("proxy")["redirects_moved"], moved)
        node_c = redis.Redis(host=dst_c[0], port=dst_c[1])
        node_d = redis.Redis(host=dst_d[0], port=dst_d[1])
        for i in range(len(idle)):
            self.assertEqual(node_c.lrange("{idle-c}list%d" % i, 0, -1), [b"0", b"1", b"2", b"3", b"4"])
            self.assertEqual(node_d.get("{idle-d}k%d" % i), str(i).encode())

    def test_handoff_routes_then_releases_in_one_call(self):
        """POST /v1/slots/handoff: a held write goes straight to the new owner on the one call; a handoff to a
        node that does not own the slot is refused, and still releases (the write then meets MOVED, hidden)."""
        a, b = self.slot("{handoff-a}"), self.slot("{handoff-b}")
        dst_a, dst_b = self.other_master(a), self.other_master(b)
        self.move_empty_slot(a, dst_a)
        moved = self.r.info("proxy")["redirects_moved"]
        self.hold(a)
        held = Background(client(self.proxy).set, "{handoff-a}k", "v")
        time.sleep(0.2)
        self.assertTrue(held.running(), "the write was not held")
        status, out = self.proxy.admin_call("POST", "/v1/slots/handoff", {"slots": str(a), "node": "%s:%d" % dst_a})
        self.assertEqual(status, 200, out)
        self.assertEqual((out["routed"], out["node"], out["released"]), (str(a), "%s:%d" % dst_a, str(a)))
        self.assertTrue(held.join())
        self.assertEqual(redis.Redis(host=dst_a[0], port=dst_a[1]).get("{handoff-a}k"), b"v")
        self.assertEqual(self.r.info("proxy")["redirects_moved"], moved)
        self.assertEqual(self.holds(), [])
        # Slot b has not moved: the route is refused, the hold released all the same.
        self.hold(b)
        held = Background(client(self.proxy).set, "{handoff-b}k", "w")
        time.sleep(0.2)
        status, out = self.proxy.admin_call("POST", "/v1/slots/handoff", {"slots": str(b), "node": "%s:%d" % dst_b})
        self.assertNotEqual(status, 200, out)
        self.assertIn("nothing was routed", out["error"])
        self.assertIn("the held commands were released", out["error"])
        self.assertTrue(held.join())
        self.assertEqual(self.holds(), [])
        status, out = self.proxy.admin_call("POST", "/v1/slots/handoff", {"slots": str(b), "owner": "x"})
        self.assertEqual(status, 400, out)

    def test_a_handoff_places_the_next_batchs_hold(self):
        """A handoff that carries the next batch's hold: the handed-off write goes to the new owner, and from
        the same call on a write of the next slot waits, until its release. The hold is placed whatever the
        handoff's answer; a malformed one is refused before anything is done."""
        a, b = self.slot("{next-a}"), self.slot("{next-b}")
        dst_a = self.other_master(a)
        self.move_empty_slot(a, dst_a)
        moved = self.r.info("proxy")["redirects_moved"]
        self.hold(a, owner="mover")
        first = Background(client(self.proxy).set, "{next-a}k", "v")
        time.sleep(0.2)
        self.assertTrue(first.running(), "the write was not held")
        next_hold = {"slots": str(b), "ttl_ms": 10000, "wait_ms": 200, "owner": "mover"}
        status, out = self.proxy.admin_call("POST", "/v1/slots/handoff",
                                            {"slots": str(a), "node": "%s:%d" % dst_a, "hold": next_hold})
        self.assertEqual(status, 200, out)
        self.assertEqual((out["routed"], out["released"]), (str(a), str(a)))
        self.assertEqual((out["hold"]["status"], out["hold"]["held"], out["hold"]["owner"]), (200, str(b), "mover"))
        self.assertTrue(first.join())
        self.assertEqual(redis.Redis(host=dst_a[0], port=dst_a[1]).get("{next-a}k"), b"v")
        self.assertEqual(self.r.info("proxy")["redirects_moved"], moved)
        second = Background(client(self.proxy).set, "{next-b}k", "w")
        time.sleep(0.2)
        self.assertTrue(second.running(), "the next slot's write was not held")
        self.assertEqual([(h["owner"], h["slots"]) for h in self.holds()], [("mover", str(b))])
        # A handoff the route check refuses (b has not moved) still places its hold, and says so.
        c = self.slot("{next-c}")
        status, out = self.proxy.admin_call("POST", "/v1/slots/handoff", {
            "slots": str(b), "node": "%s:%d" % self.other_master(b),
            "hold": {"slots": str(c), "ttl_ms": 10000, "wait_ms": 200, "owner": "mover"}})
        self.assertEqual(status, 409, out)
        self.assertIn("the held commands were released", out["error"])
        self.assertEqual((out["hold"]["status"], out["hold"]["held"]), (200, str(c)))
        self.assertTrue(second.join())
        self.assertEqual(self.on_node("{next-b}k"), b"w")
        self.assertEqual([(h["owner"], h["slots"]) for h in self.holds()], [("mover", str(c))])
        # A malformed hold: 400, and neither the handoff nor the hold is done.
        for bad in ({"slots": str(a)}, "0-10", {"slots": "x", "ttl_ms": 100},
                    {"slots": str(a), "ttl_ms": 100, "place_within_ms": -1}):
            status, out = self.proxy.admin_call("POST", "/v1/slots/handoff",
                                                {"slots": str(c), "node": "%s:%d" % dst_a, "hold": bad})
            self.assertEqual(status, 400, out)
            self.assertIn("'hold'", out["error"])
        self.assertEqual([(h["owner"], h["slots"]) for h in self.holds()], [("mover", str(c))])
        # A handoff slower than the hold's wait (its node stopped: the check's time runs out) places no hold: its
        # caller may have stopped waiting, and nobody would release it before its ttl.
        d = self.slot("{next-d}")
        pid = int(self.cluster.cli(dst_a, "info", "server").split("process_id:")[1].split()[0])
        os.kill(pid, signal.SIGSTOP)
        try:
            status, out = self.proxy.admin_call("POST", "/v1/slots/handoff", {
                "slots": str(c), "node": "%s:%d" % dst_a,
                "hold": {"slots": str(d), "ttl_ms": 10000, "wait_ms": 100, "owner": "mover"}}, timeout=30)
        finally:
            os.kill(pid, signal.SIGCONT)
        self.assertEqual(status, 503, out)
        self.assertEqual(out["hold"]["status"], 409, out)
        self.assertIn("was not placed: the handoff took", out["hold"]["error"])
        self.assertEqual(self.holds(), [], "the slow handoff released c, and placed no hold of d")
        self.release(owner="mover")
        self.assertEqual(self.holds(), [])

    def test_a_cutover_under_load_loses_nothing_and_meets_no_redirect(self):
        """The orchestrator's cutover, with the keys moved by hand: HOLD, MIGRATE every key of the slot, claim it
        on every master, ROUTE, RELEASE. Writers see no error, only a short wait, and every acknowledged write is
        on the new owner."""
        slot = self.slot("{cut}")
        src, src_id = self.owner(slot)
        dst = self.other_master(slot)
        dst_id = self.cluster.node_id(dst)
        stop = threading.Event()
        acked = {c: 0 for c in range(3)}
        errors, slowest = [], [0.0]

        def write(c):
            r = client(self.proxy)
            while not stop.is_set():
                start = time.time()
                try:
                    p = r.pipeline(transaction=False)
                    p.incr("{cut}n:%d" % c).append("{cut}log:%d" % c, "%d," % (acked[c] + 1)).incr("free:%d" % c)
                    n, _, _ = p.execute()
                    if n != acked[c] + 1:
                        errors.append("client %d: INCR gave %d after %d" % (c, n, acked[c]))
                    acked[c] = n
                except Exception as e:  # noqa: BLE001 - every error a client sees counts
                    errors.append("client %d: %s: %s" % (c, type(e).__name__, e))
                    return
                slowest[0] = max(slowest[0], time.time() - start)

        writers = [threading.Thread(target=write, args=(c,), daemon=True) for c in range(3)]
        for t in writers:
            t.start()
        time.sleep(0.5)
        info = self.r.info("proxy")
        redirects = info["redirects_moved"] + info["redirects_ask"]
        self.hold(slot, ttl_ms=10000, owner="cutover")
        self.assertEqual(self.cluster.cli(dst, "cluster", "setslot", str(slot), "importing", src_id).strip(), "OK")
        self.assertEqual(self.cluster.cli(src, "cluster", "setslot", str(slot), "migrating", dst_id).strip(), "OK")
        keys = self.cluster.cli(src, "cluster", "getkeysinslot", str(slot), "100").split()
        self.assertEqual(len(keys), 6)
        self.assertEqual(self.cluster.cli(src, "migrate", dst[0], str(dst[1]), "", "0", "5000", "keys", *keys).strip(),
                         "OK")
        for node in [dst, src] + [m for m in self.cluster.masters() if m not in (src, dst)]:
            self.assertEqual(self.cluster.cli(node, "cluster", "setslot", str(slot), "node", dst_id).strip(), "OK")
        self.route(slot, "%s:%d" % dst)
        self.assertGreater(self.release(owner="cutover")["dispatched"], 0)
        time.sleep(0.5)
        stop.set()
        for t in writers:
            t.join(30)
        self.assertEqual(errors, [])
        info = self.r.info("proxy")
        self.assertEqual(info["redirects_moved"] + info["redirects_ask"], redirects)
        node = redis.Redis(host=dst[0], port=dst[1])
        for c in range(3):
            self.assertGreater(acked[c], 10)
            self.assertEqual(node.get("{cut}n:%d" % c), str(acked[c]).encode())
            self.assertEqual(node.get("{cut}log:%d" % c), "".join("%d," % i for i in range(1, acked[c] + 1)).encode())
        print("cutover under load: slowest pipeline %.0f ms" % (slowest[0] * 1000), file=sys.stderr)
        self.cluster.wait_owner([slot], dst_id)

    def test_a_blocking_command_follows_its_slot_through_hold_route_release(self):
        key = "{blk}list"
        slot = self.slot(key)
        dst = self.other_master(slot)
        blocked = Background(client(self.proxy).blpop, [key], 20)
        time.sleep(0.3)
        # The drain does not wait for a blocking command.
        self.assertLess(self.hold(slot)["drained_ms"], 1000)
        self.move_empty_slot(slot, dst)
        self.route(slot, "%s:%d" % dst)
        self.release(slots=str(slot))
        self.assertEqual(client(self.proxy).rpush(key, "x"), 1)
        self.assertEqual(blocked.join(15), (key.encode(), b"x"))
        self.assertEqual(redis.Redis(host=dst[0], port=dst[1]).exists(key), 0)


class RequestsJudgedOnTheirHeaders(ControlCase):
    """Every request is judged on its headers (the token, then the body's size) before its body is read."""

    HUGE = 1 << 30

    def test_a_wrong_token_is_refused_before_the_body_is_read(self):
        pid = self.proxy.proc.pid
        before = rss_kib(pid)
        head = ("POST /v1/slots/hold HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                "Authorization: Bearer wrong\r\n\r\n" % self.HUGE).encode()
        # 64 MiB of the announced 1 GiB are offered: a proxy that reads the body before the token takes all of it.
        answer, first, sent, closed = send_raw(self.proxy.admin_port, head, body_bytes=64 << 20)
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer[:200])
        self.assertIn(b"unauthorized: send Authorization: Bearer <admin token>", answer)
        self.assertLess(first, 1.0)
        # The connection was closed rather than read on: what went out is what the sockets' buffers hold.
        self.assertTrue(closed)
        self.assertLess(sent, 16 << 20)
        grown = rss_kib(pid) - before
        self.assertLess(grown, 8 * 1024, "the proxy grew by %d KiB" % grown)
        self.assertEqual(self.holds(), [])

    def test_an_endless_request_line_is_cut_off(self):
        pid = self.proxy.proc.pid
        before = rss_kib(pid)
        # No token can be checked before the request line ends: the proxy must stop reading it on its own.
        answer, _, sent, closed = send_raw(self.proxy.admin_port, b"GET /", body_bytes=64 << 20)
        self.assertTrue(closed, answer[:200])
        self.assertLess(sent, 16 << 20)
        grown = rss_kib(pid) - before
        self.assertLess(grown, 8 * 1024, "the proxy grew by %d KiB" % grown)
        self.assertEqual(self.proxy.admin_call("GET", "/healthz", token=""), (200, "ok\n"))

    def test_an_oversized_body_gets_413_with_the_token(self):
        slot = self.slot("{big}")
        padding = 70000 - len(json.dumps({"slots": str(slot), "ttl_ms": 1000, "owner": "big", "pad": ""}))
        status, out = self.proxy.admin_call("POST", "/v1/slots/hold",
                                            {"slots": str(slot), "ttl_ms": 1000, "owner": "big", "pad": "x" * padding})
        self.assertEqual(status, 413, out)
        self.assertEqual(out["error"], "the body is 70000 bytes; at most 65536 are taken")
        self.assertEqual(self.holds(), [])
        # A body of exactly the limit is taken (the handler ignores the field it does not know).
        padding = 65536 - len(json.dumps({"slots": str(slot), "ttl_ms": 1000, "owner": "big", "pad": ""}))
        body = self.hold(slot, ttl_ms=1000, owner="big", pad="x" * padding)
        self.assertEqual(body["held"], str(slot))
        self.release(owner="big")
        # A Content-Length of 1 GiB is refused at once, without waiting for the body.
        head = ("POST /v1/slots/hold HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nAuthorization: Bearer %s\r\n\r\n"
                % (self.HUGE, TOKEN)).encode()
        answer, first, sent, closed = send_raw(self.proxy.admin_port, head, body_bytes=64 << 20)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:200])
        self.assertLess(first, 1.0)
        self.assertTrue(closed)
        self.assertLess(sent, 16 << 20)

    def test_a_chunked_body_is_refused(self):
        """A chunked body has no length to check up front: it is refused, not read."""
        body = json.dumps({"slots": str(self.slot("{chunked}")), "ttl_ms": 1000, "owner": "chunked"}).encode()
        head = ("POST /v1/slots/hold HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer %s\r\n"
                "Content-Type: application/json\r\n\r\n" % TOKEN).encode()
        answer, _, _, closed = send_raw(self.proxy.admin_port, head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.assertTrue(answer.startswith(b"HTTP/1.1 411 "), answer[:200])
        self.assertIn(b"send the body with a Content-Length", answer)
        self.assertTrue(closed)
        self.assertEqual(self.holds(), [])

    def test_every_path_but_the_probes_wants_the_token(self):
        """One check in front of every path, unknown ones included (a caller without the token learns nothing of
        what the endpoint serves), and only the exact token passes it. The probes, /healthz and /readyz, need none:
        a Kubernetes httpGet probe cannot send one."""
        paths = [("GET", "/metrics"), ("GET", "/stats"), ("GET", "/v1/slots"), ("GET", "/nope"),
                 ("POST", "/v1/slots/nope"), ("POST", "/v1/slots/release"),
                 ("POST", "/v1/slots/check")]
        for method, path in paths:
            for token in ("", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "x" * len(TOKEN), " " + TOKEN):
                status, out = self.proxy.admin_call(method, path, {"owner": "x"} if method == "POST" else None,
                                                    token=token)
                self.assertEqual(status, 401, (method, path, token, out))
        self.assertEqual(self.proxy.admin_call("GET", "/nope")[0], 404)
        self.assertEqual(self.proxy.admin_call("GET", "/healthz", token=""), (200, "ok\n"))


class WithoutAToken(unittest.TestCase):
    """A proxy whose admin endpoint has no token (loopback only): the body limit holds all the same."""

    @classmethod
    def setUpClass(cls):
        cls.proxy = harness.Proxy(CLUSTER, admin=True)

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()

    def test_an_oversized_body_gets_413(self):
        status, out = self.proxy.admin_call("POST", "/v1/slots/hold",
                                            {"slots": "1", "ttl_ms": 1000, "pad": "x" * 70000})
        self.assertEqual(status, 413, out)
        self.assertIn("at most 65536 are taken", out["error"])
        status, out = self.proxy.admin_call("GET", "/v1/slots")
        self.assertEqual((status, out["holds"]), (200, []))


class StartingTheEndpoint(unittest.TestCase):
    """Without a token the admin endpoint listens on loopback only; the token can stay off the command line."""

    def start(self, *flags, env=None):
        """slotshift-proxy with flags, started directly: (process, admin port)."""
        admin_port = harness.free_port()
        flags = [f.replace("ADMIN_PORT", str(admin_port)) for f in flags]
        proc = subprocess.Popen([harness.PROXY_BIN, "--listen", "127.0.0.1:%d" % harness.free_port(), "--seed",
                                 CLUSTER.seed(), "--threads", "1", *flags], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        self.addCleanup(self.stop, proc)
        return proc, admin_port

    def stop(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    def wait_up(self, proc, admin_port, host="127.0.0.1"):
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if http(admin_port, "GET", "/healthz", timeout=1, host=host) == (200, "ok\n"):
                    return
            except OSError:
                pass
            if proc.poll() is not None:
                self.fail("the proxy exited with %s: %s" % (proc.returncode, proc.stderr.read()))
            time.sleep(0.05)
        self.fail("the admin endpoint did not come up")

    def token_file(self, text):
        fd, path = tempfile.mkstemp(prefix="admin-token.", dir=CLUSTER.dir)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.addCleanup(os.remove, path)
        return path

    def test_refuses_a_non_loopback_address_without_a_token(self):
        env = {k: v for k, v in os.environ.items() if k != "SLOTSHIFT_ADMIN_TOKEN"}
        for address in ("0.0.0.0:ADMIN_PORT", "admin.example:ADMIN_PORT", "[::]:ADMIN_PORT"):
            proc, admin_port = self.start("--admin", address, env=env)
            try:
                code = proc.wait(10)
            except subprocess.TimeoutExpired:
                self.fail("slotshift-proxy --admin %s without a token started" % address)
            err = proc.stderr.read()
            self.assertEqual(code, 2, err)
            self.assertIn("--admin %s is not a loopback address, and no admin token is set"
                          % address.replace("ADMIN_PORT", str(admin_port)).replace("[::]", "::"), err)
            self.assertIn("--admin-token-file", err)

    def test_loopback_addresses_need_no_token(self):
        for host in ("127.0.0.2", "localhost"):
            proc, admin_port = self.start("--admin", "%s:ADMIN_PORT" % host)
            self.wait_up(proc, admin_port, host)
            self.assertEqual(http(admin_port, "GET", "/v1/slots", host=host)[0], 200)

    def check_token(self, admin_port, token):
        self.assertEqual(http(admin_port, "GET", "/v1/slots")[0], 401)
        self.assertEqual(http(admin_port, "GET", "/v1/slots", token="not-" + token)[0], 401)
        status, body = http(admin_port, "GET", "/v1/slots", token=token)
        self.assertEqual((status, json.loads(body)["holds"]), (200, []))

    def test_a_token_from_a_file_the_environment_or_the_config_file_opens_any_address(self):
        path = self.token_file("from-a-file\n")
        proc, admin_port = self.start("--admin", "0.0.0.0:ADMIN_PORT", "--admin-token-file", path)
        self.wait_up(proc, admin_port)
        self.check_token(admin_port, "from-a-file")
        # The token is not on the command line, where every user's `ps` would see it.
        with open("/proc/%d/cmdline" % proc.pid, "rb") as f:
            self.assertNotIn(b"from-a-file", f.read())

        env = dict(os.environ, SLOTSHIFT_ADMIN_TOKEN="from-the-environment")
        proc, admin_port = self.start("--admin", "0.0.0.0:ADMIN_PORT", env=env)
        self.wait_up(proc, admin_port)
        self.check_token(admin_port, "from-the-environment")

        config = self.token_file(json.dumps({"admin": "0.0.0.0:%d" % harness.free_port(), "admin-token-file": path}))
        with open(config) as f:
            admin_port = int(json.load(f)["admin"].rsplit(":", 1)[1])
        proc, _ = self.start("--config", config)
        self.wait_up(proc, admin_port)
        self.check_token(admin_port, "from-a-file")

    def test_a_bad_token_file_is_refused(self):
        for text, why in (("", "is empty"), ("\n", "is empty"), ("x" * 5000, "is longer than 4096 bytes")):
            proc, _ = self.start("--admin", "0.0.0.0:ADMIN_PORT", "--admin-token-file", self.token_file(text))
            self.assertEqual(proc.wait(10), 2)
            self.assertIn(why, proc.stderr.read())
        proc, _ = self.start("--admin", "127.0.0.1:ADMIN_PORT", "--admin-token", "a", "--admin-token-file",
                             self.token_file("b"))
        self.assertNotEqual(proc.wait(10), 0)
        self.assertIn("--admin-token excludes --admin-token-file", proc.stderr.read())


def whole_commands(buf):
    """The whole commands (RESP arrays of bulk strings, as the proxy sends them) at the start of `buf`, each a
    list of str, and the bytes after them."""
    commands = []
    while True:
        rest, args = buf, []
        if not rest.startswith(b"*") or b"\r\n" not in rest:
            return commands, buf
        head, rest = rest.split(b"\r\n", 1)
        for _ in range(int(head[1:])):
            if b"\r\n" not in rest:
                return commands, buf
            line, rest = rest.split(b"\r\n", 1)
            n = int(line[1:])
            if len(rest) < n + 2:
                return commands, buf
            args.append(rest[:n].decode())
            rest = rest[n + 2:]
        commands.append(args)
        buf = rest


class FakeClusterNode:
    """A server that answers as a cluster node that is a master owning every slot (CLUSTER MYID, CLUSTER SLOTS,
    CLUSTER NODES): a node that lies about the cluster."""

    ID_CHAR = "f"

    def __init__(self):
        self.id = self.ID_CHAR * 40
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def address(self):
        return "127.0.0.1:%d" % self.port

    def reply(self, args):
        sub = " ".join(args[:2]).upper()
        if sub == "CLUSTER MYID":
            return b"$40\r\n%s\r\n" % self.id.encode()
        if sub == "CLUSTER SLOTS":
            return b"*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:%d\r\n$40\r\n%s\r\n" % (
                self.port, self.id.encode())
        if sub == "CLUSTER NODES":
            # The bus port is the port + 10000, wrapped into range for ephemeral ports above 55535.
            text = ("%s 127.0.0.1:%d@%d myself,master - 0 0 1 connected 0-16383\n"
                    % (self.id, self.port, (self.port + 10000) % 65536 or 1)).encode()
            return b"$%d\r\n%s\r\n" % (len(text), text)
        return b"-ERR unknown command\r\n"

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn):
        """Answers every command of the connection until it closes."""
        buf = b""
        with conn:
            try:
                conn.settimeout(30)
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    commands, buf = whole_commands(buf + chunk)
                    conn.sendall(b"".join(self.reply(c) for c in commands))
            except OSError:
                pass

    def close(self):
        self.sock.close()


class NodeThatForgetsItsConnections(FakeClusterNode):
    """Answers, on each connection, the proxy's first question (up to its CLUSTER SLOTS) as FakeClusterNode does,
    and closes the connection at the next command without answering: a node that closed a connection the proxy
    kept, the proxy not having read the close yet when it asks again."""

    ID_CHAR = "e"

    def answer(self, conn):
        buf = b""
        with conn:
            try:
                conn.settimeout(30)
                asked = False
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    commands, buf = whole_commands(buf + chunk)
                    if asked and commands:
                        return
                    conn.sendall(b"".join(self.reply(c) for c in commands))
                    asked = any(" ".join(c[:2]).upper() == "CLUSTER SLOTS" for c in commands)
            except OSError:
                pass


class RouteQuestions(ControlCase):
    """What the tests of a ROUTE's check look at (no test of its own)."""

    FLAGS = ("--request-timeout-ms", "20000", "--refresh-interval-ms", "3600000")

    def route_status(self, slots, node):
        return self.proxy.admin_call("POST", "/v1/slots/route", {"slots": slots, "node": node})

    def still_served(self, keys):
        """Every key written and read through the proxy, with no redirect met: the slot map is unchanged."""
        info = self.r.info("proxy")
        for k in keys:
            self.assertTrue(self.r.set(k, "v-" + k))
            self.assertEqual(self.r.get(k), ("v-" + k).encode())
        after = self.r.info("proxy")
        self.assertEqual(after["redirects_moved"] + after["redirects_ask"],
                         info["redirects_moved"] + info["redirects_ask"])

    def connections_received(self, node):
        """The node's count of connections ever accepted, asked on a connection of the caller's (counted once)."""
        return node.info("stats")["total_connections_received"]


class RouteCheckedAgainstTheCluster(RouteQuestions):
    """A ROUTE is followed only when its node is a node of the cluster that owns every slot of it."""

    def test_a_node_outside_the_cluster_is_refused(self):
        status, out = self.route_status("0-16383", "127.0.0.1:1")
        self.assertEqual(status, 400, out)
        self.assertIn("127.0.0.1:1 is not a node of the cluster", out["error"])
        self.assertIn("nothing was routed", out["error"])
        self.still_served(["{out-%d}k" % i for i in range(20)])

    def test_a_handoff_is_checked_as_a_route_is(self):
        """A handoff asks the same check (from the admin thread): a node outside the cluster is refused and the
        held commands stay held (the caller's mistake); a node that does not own the slot is refused and the held
        commands are released to the old owner; a node that does not answer in time, the same."""
        key = "{hcheck}k"
        slot = self.slot(key)
        self.hold(slot, owner="hcheck")
        waiting = Background(client(self.proxy).set, key, "v")
        time.sleep(0.2)
        status, out = self.proxy.admin_call("POST", "/v1/slots/handoff", {"slots": str(slot), "node": "127.0.0.1:1"})
        self.assertEqual(status, 400, out)
        self.assertIn("127.0.0.1:1 is not a node of the cluster", out["error"])
        self.assertNotIn("released", out["error"])
        self.assertTrue(waiting.running(), "a handoff refused as the caller's mistake released the hold")
        self.assertEqual([h["slots"] for h in self.holds()], [str(slot)])
        src, _ = self.owner(slot)
        other = next(m for m in self.cluster.masters() if m != src)
        status, out = self.proxy.admin_call("POST", "/v1/slots/handoff",
                                            {"slots": str(slot), "node": "%s:%d" % other})
        self.assertEqual(status, 409, out)
        self.assertIn("does not own slot(s) %d" % slot, out["error"])
        self.assertIn("the held commands were released (to the old owner)", out["error"])
        self.assertTrue(waiting.join())
        self.assertEqual(self.holds(), [])
        # A node of the cluster that does not answer: stopped, the check's time runs out.
        self.hold(slot, owner="hcheck")
        waiting = Background(client(self.proxy).set, key, "w")
        time.sleep(0.2)
        pid = int(self.cluster.cli(other, "info", "server").split("process_id:")[1].split()[0])
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.time()
            status, out = self.proxy.admin_call("POST", "/v1/slots/handoff",
                                                {"slots": str(slot), "node": "%s:%d" % other}, timeout=30)
            took = time.time() - start
        finally:
            os.kill(pid, signal.SIGCONT)
        self.assertEqual(status, 503, out)
        self.assertIn("cannot ask %s:%d which slots it owns" % other, out["error"])
        self.assertIn("the held commands were released (to the old owner)", out["error"])
        self.assertLess(took, 5)
        self.assertTrue(waiting.join())
        self.still_served([key])

    def test_a_server_that_claims_every_slot_is_not_believed(self):
        fake = FakeClusterNode()
        self.addCleanup(fake.close)
        status, out = self.route_status("0-16383", fake.address())
        self.assertEqual(status, 400, out)
        self.assertIn("%s (node id %s) is not a node of the cluster" % (fake.address(), "f" * 40), out["error"])
        self.still_served(["{fake-%d}k" % i for i in range(20)])

    def test_a_node_that_does_not_own_the_slots_is_refused(self):
        a = self.slot("{nown-a}")
        src, _ = self.owner(a)
        dst = next(m for m in self.cluster.masters() if m != src)
        owned = self.cluster.slots_of(dst)[:3]
        # Some slots it owns and one it does not: the whole route is refused, and the answer names the one.
        status, out = self.route_status(harness.format_slots(owned + [a]), "%s:%d" % dst)
        self.assertEqual(status, 409, out)
        self.assertEqual(out["not_owned"], str(a))
        self.assertIn("%s:%d does not own slot(s) %d" % (dst[0], dst[1], a), out["error"])
        self.still_served(["{nown-a}k%d" % i for i in range(10)])
        # Its own slots alone are taken.
        self.assertEqual(self.route(harness.format_slots(owned), "%s:%d" % dst)["routed"], harness.format_slots(owned))


    def question_connections(self, node):
        """The node's clients whose last command was CLUSTER SLOTS: the proxy's connections for its questions."""
        return [c for c in node.client_list() if c["cmd"] in ("cluster|slots", "cluster")]

    def first_route(self, tag):
        """A ROUTE of three slots to a master that does not own the tag's slot (and owns those three): the first
        question to it, which opens the proxy's kept connection. Returns the master, the slots and a client of
        it."""
        src, _ = self.owner(self.slot(tag))
        dst = next(m for m in self.cluster.masters() if m != src)
        owned = harness.format_slots(self.cluster.slots_of(dst)[:3])
        node = redis.Redis(host=dst[0], port=dst[1], socket_timeout=10)
        self.route(owned, "%s:%d" % dst)
        return dst, owned, node

    def test_routes_to_one_node_ask_on_one_kept_connection(self):
        """Every ROUTE asks the node for its CLUSTER MYID and CLUSTER SLOTS again, on the connection the first one
        opened."""
        dst, owned, node = self.first_route("{kept-a}")
        time.sleep(0.2)  # the workers' own connections to it, warmed by the route, are up
        before = self.connections_received(node)
        commands = int(node.info("commandstats")["cmdstat_cluster|slots"]["calls"])
        for _ in range(10):
            self.assertEqual(self.route(owned, "%s:%d" % dst)["routed"], owned)
        self.assertEqual(self.connections_received(node), before)
        # Asked every time: nothing is answered from what an earlier ROUTE was told.
        self.assertGreaterEqual(int(node.info("commandstats")["cmdstat_cluster|slots"]["calls"]), commands + 10)
        self.assertEqual(len(self.question_connections(node)), 1, node.client_list())

    def test_a_kept_connection_the_node_closed_is_replaced(self):
        dst, owned, node = self.first_route("{killed-a}")
        asked = self.question_connections(node)
        self.assertEqual(len(asked), 1, node.client_list())
        self.assertEqual(node.client_kill_filter(_id=asked[0]["id"]), 1)
        self.assertEqual(self.route(owned, "%s:%d" % dst)["routed"], owned)
        replaced = self.question_connections(node)
        self.assertEqual(len(replaced), 1, node.client_list())
        self.assertNotEqual(replaced[0]["id"], asked[0]["id"])
        # And the new one is kept in turn.
        before = self.connections_received(node)
        self.assertEqual(self.route(owned, "%s:%d" % dst)["routed"], owned)
        self.assertEqual(self.connections_received(node), before)
        self.still_served(["{killed-a}k%d" % i for i in range(10)])

    def test_a_question_on_a_connection_closed_unseen_is_asked_again(self):
        """The node closes the kept connection on the second question without answering it: the proxy asks
        again on a new connection, and judges the node by that answer (here: not a node of the cluster)."""
        node = NodeThatForgetsItsConnections()
        self.addCleanup(node.close)
        refusal = "%s (node id %s) is not a node of the cluster" % (node.address(), "e" * 40)
        for _ in range(2):
            status, out = self.route_status("0-16383", node.address())
            self.assertEqual(status, 400, out)
            self.assertIn(refusal, out["error"])
        self.assertEqual(node.connections, 2)
        self.still_served(["{forget-%d}k" % i for i in range(10)])


class RouteCheckAlone(RouteQuestions):
    """POST /v1/slots/check: a ROUTE's check without the route, on a proxy of its own (the connections it opens
    to the nodes are not counted by the other classes' tests)."""

    def check_status(self, node, slots=None):
        body = {"node": node}
        if slots is not None:
            body["slots"] = slots
        return self.proxy.admin_call("POST", "/v1/slots/check", body)

    def test_a_check_answers_as_a_route_would_and_routes_nothing(self):
        a = self.slot("{chk-a}")
        src, _ = self.owner(a)
        dst = next(m for m in self.cluster.masters() if m != src)
        owned = harness.format_slots(self.cluster.slots_of(dst)[:3])
        status, out = self.check_status("%s:%d" % dst, owned)
        self.assertEqual((status, out), (200, {"node": "%s:%d" % dst, "owns": owned}))
        # No slots: whether it is a node of the cluster.
        status, out = self.check_status("%s:%d" % dst)
        self.assertEqual((status, out), (200, {"node": "%s:%d" % dst, "owns": ""}))
        status, out = self.check_status("%s:%d" % dst, str(a))
        self.assertEqual(status, 409, out)
        self.assertEqual(out["not_owned"], str(a))
        self.assertIn("does not own slot(s) %d" % a, out["error"])
        status, out = self.check_status("127.0.0.1:1")
        self.assertEqual(status, 400, out)
        self.assertIn("127.0.0.1:1 is not a node of the cluster", out["error"])
        fake = FakeClusterNode()
        self.addCleanup(fake.close)
        status, out = self.check_status(fake.address(), "0-16383")
        self.assertEqual(status, 400, out)
        for bad in ({"slots": "0-100"}, {"node": "nowhere"}, {"node": "%s:%d" % dst, "slots": "x"}):
            status, out = self.proxy.admin_call("POST", "/v1/slots/check", bad)
            self.assertEqual(status, 400, (bad, out))
        # A check routed nothing: the slot checked against a node that does not own it is still served by its
        # owner, with no redirect.
        self.still_served(["{chk-a}k%d" % i for i in range(10)])

    def test_a_check_opens_the_connection_the_next_handoff_asks_on(self):
        """What a move sends every proxy while it copies: the first batch's handoff then opens no connection to
        the target (a fleet's proxies would open hundreds at once while their clients wait)."""
        src, _ = self.owner(self.slot("{chk-b}"))
        dst = next(m for m in self.cluster.masters() if m != src)
        owned = harness.format_slots(self.cluster.slots_of(dst)[3:6])
        node = redis.Redis(host=dst[0], port=dst[1], socket_timeout=10)
        # The workers' own connections to it, which a handoff's route may open, are up first.
        self.route(owned, "%s:%d" % dst)
        time.sleep(0.2)
        before = self.connections_received(node)
        status, out = self.check_status("%s:%d" % dst)
        self.assertEqual(status, 200, out)
        self.assertEqual(self.connections_received(node), before + 1)
        for _ in range(3):
            status, out = self.proxy.admin_call("POST", "/v1/slots/handoff", {"slots": owned, "node": "%s:%d" % dst})
            self.assertEqual(status, 200, out)
        self.assertEqual(self.connections_received(node), before + 1)

@unittest.skipUnless(harness.SERVER == "redis-7.0", "starts the host's redis-server as a node that joins")
class RouteToANodeThatJustJoined(unittest.TestCase):
    """A node that joined after the proxy loaded its topology is not in it: a node the proxy knows vouches for
    it, and a move to it goes through."""

    def setUp(self):
        self.cluster = harness.Cluster(3, 0)
        self.addCleanup(self.cluster.stop)
        self.proxy = harness.Proxy(self.cluster, "--refresh-interval-ms", "3600000", admin=True, admin_token=TOKEN)
        self.addCleanup(self.proxy.stop)

    def join_new_node(self):
        node_dir = tempfile.mkdtemp(prefix="joined.", dir=self.cluster.dir)
        self.addCleanup(shutil.rmtree, node_dir, ignore_errors=True)
        # Another test's node may take the port between our check and our bind: then ours exits, and the PING
        # is answered by theirs. Only a server that reports our process id is ours.
        for attempt in range(5):
            port = harness.free_node_port()
            proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled",
                                     "yes", "--cluster-config-file", os.path.join(node_dir, "nodes-%d.conf" % port),
                                     "--dir", node_dir, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)

            def stop(proc=proc):
                proc.kill()
                proc.wait()
            self.addCleanup(stop)
            node = ("127.0.0.1", port)
            deadline = time.time() + 10
            while proc.poll() is None and self.cluster.cli(node, "ping", check=False).strip() != "PONG":
                self.assertLess(time.time(), deadline, "the new node did not start")
                time.sleep(0.05)
            info = self.cluster.cli(node, "info", "server", check=False)
            if proc.poll() is None and "process_id:%d" % proc.pid in info:
                break
            self.assertLess(attempt, 4, "no port for the new node")
        self.assertEqual(self.cluster.cli(self.cluster.nodes[0], "cluster", "meet", "127.0.0.1", str(port)).strip(),
                         "OK")
        self.cluster.nodes.append(node)
        # Until every node, the new one included, knows every other.
        ids = {self.cluster.node_id(n) for n in self.cluster.nodes}
        while any({e.id for e in self.cluster.view(n) if "handshake" not in e.flags} != ids for n in self.cluster.nodes):
            self.assertLess(time.time(), deadline + 20, "the cluster did not meet the new node")
            time.sleep(0.1)
        return node

    def test_a_route_to_it_goes_through(self):
        r = redis.Redis(host="127.0.0.1", port=self.proxy.port, socket_timeout=30)
        slot = r.execute_command("CLUSTER", "KEYSLOT", "{joined}k")
        node = self.join_new_node()
        move_empty_slot(self, self.cluster, slot, node)
        status, out = self.proxy.admin_call("POST", "/v1/slots/route", {"slots": str(slot), "node": "%s:%d" % node})
        self.assertEqual((status, out), (200, {"routed": str(slot), "node": "%s:%d" % node}))
        moved = r.info("proxy")["redirects_moved"]
        self.assertTrue(r.set("{joined}k", "here"))
        self.assertEqual(r.info("proxy")["redirects_moved"], moved)
        self.assertEqual(redis.Redis(host=node[0], port=node[1]).get("{joined}k"), b"here")


    def test_a_handoff_to_it_goes_through(self):
        """The same through a handoff: its check, decided by the node's own answer for known nodes, asks a known
        node for this one, and the held write goes straight to it."""
        r = redis.Redis(host="127.0.0.1", port=self.proxy.port, socket_timeout=30)
        slot = r.execute_command("CLUSTER", "KEYSLOT", "{joinedh}k")
        node = self.join_new_node()
        move_empty_slot(self, self.cluster, slot, node)
        status, out = self.proxy.admin_call("POST", "/v1/slots/hold", {"slots": str(slot), "ttl_ms": 10000})
        self.assertEqual(status, 200, out)
        held = Background(client(self.proxy).set, "{joinedh}k", "here")
        time.sleep(0.2)
        self.assertTrue(held.running(), "the write was not held")
        moved = r.info("proxy")["redirects_moved"]
        status, out = self.proxy.admin_call("POST", "/v1/slots/handoff", {"slots": str(slot), "node": "%s:%d" % node})
        self.assertEqual(status, 200, out)
        self.assertEqual((out["routed"], out["released"], out["dispatched"]), (str(slot), str(slot), 1))
        self.assertTrue(held.join())
        self.assertEqual(r.info("proxy")["redirects_moved"], moved)
        self.assertEqual(redis.Redis(host=node[0], port=node[1]).get("{joinedh}k"), b"here")


class EndpointNotStarved(ControlCase):
    """Slow, idle and waiting callers leave the endpoint free for /healthz, /metrics and the RELEASE that ends a
    hold."""

    def test_idle_and_slow_clients_do_not_starve_it(self):
        key = "{starve}k"
        self.hold(self.slot(key), owner="starve")
        waiting = Background(client(self.proxy).set, key, "v")
        time.sleep(0.2)
        port = self.proxy.admin_port
        # More connections than the endpoint had threads: some say nothing, some send a request a byte at a time.
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        for s in slow:
            s.sendall(b"POST /v1/slots/release HTTP/1.1\r\nHost: x\r\n")
        stop = threading.Event()

        def trickle():
            while not stop.wait(0.2):
                for s in slow:
                    try:
                        s.sendall(b"X")
                    except OSError:
                        pass

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        try:
            time.sleep(0.3)
            start = time.time()
            self.assertEqual(self.proxy.admin_call("GET", "/healthz", token="", timeout=5), (200, "ok\n"))
            self.assertEqual(self.proxy.admin_call("GET", "/metrics", timeout=5)[0], 200)
            out = self.release(owner="starve")
            self.assertLess(time.time() - start, 1.0)
            self.assertEqual(out["dispatched"], 1)
            self.assertTrue(waiting.join())
            # And the proxy lets go of them: idle connections and unfinished requests are closed within seconds.
            deadline = time.time() + 6
            for s in idle + slow:
                s.settimeout(max(0.1, deadline - time.time()))
                try:
                    while s.recv(65536):  # the slow ones may be told 400 first
                        pass
                except ConnectionResetError:
                    pass
        finally:
            stop.set()
            trickler.join()
            for s in idle + slow:
                s.close()

    def test_holds_waiting_for_their_drain_are_capped(self):
        key = "{capped}k"
        slot = self.slot(key)
        busy = Background(client(self.proxy).eval, BUSY_SCRIPT, 1, key, 2500)
        time.sleep(0.15)

        def hold(owner):
            return self.proxy.admin_call("POST", "/v1/slots/hold",
                                         {"slots": str(slot), "ttl_ms": 10000, "wait_ms": 8000, "owner": owner},
                                         timeout=15)

        waiting = [Background(hold, "cap-%d" % i) for i in range(4)]
        time.sleep(0.5)
        start = time.time()
        status, out = hold("cap-4")
        self.assertEqual(status, 503, out)
        self.assertIn("4 HOLDs are already waiting for their drain", out["error"])
        self.assertEqual(self.proxy.admin_call("GET", "/healthz", token="", timeout=5), (200, "ok\n"))
        self.assertEqual(self.proxy.admin_call("GET", "/stats", timeout=5)[0], 200)
        self.assertLess(time.time() - start, 1.0)
        self.assertTrue(all(w.running() for w in waiting))
        for w in waiting:
            status, out = w.join(15)
            self.assertEqual(status, 200, out)
        self.assertEqual(busy.join(10), 1)
        # Once they have answered, HOLDs are taken again.
        self.assertEqual(self.hold(slot, owner="cap-5")["held"], str(slot))
        self.release(slots=str(slot))


if __name__ == "__main__":
    harness.main()
