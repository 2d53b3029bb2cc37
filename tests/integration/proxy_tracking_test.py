"""CLIENT TRACKING through slotshift-proxy, with RESP3 clients: invalidations for keys read on every master, BCAST
prefixes, NOLOOP, OPTIN with CLIENT CACHING, the errors as a node gives them; what one Redis would say but no node
can (a slot that moves, a tracking connection lost: drop the whole cache); and pushes that do not wait behind a
command that blocks. node-redis's client-side cache runs in proxy_node_redis_test.py.

  SLOTSHIFT_SOURCE_DIR=... SLOTSHIFT_BINARY_DIR=... tests/integration/proxy_tracking_test.py"""

import os
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from proxy_resp3_test import Conn  # noqa: E402

FLUSH = (b">", [(b"$", b"invalidate"), (b"_", b"")])


def invalidated(value):
    """The keys of an invalidation push, or None for a flush of everything; raises on anything else."""
    t, parts = value
    if t != b">" or parts[0] != (b"$", b"invalidate"):
        raise AssertionError("not an invalidation: %r" % (value,))
    if parts[1][0] == b"_":
        return None
    return sorted(k for _, k in parts[1][1])


class Tracking(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)
        cls.proxy = None
        try:
            cls.proxy = harness.Proxy(cls.cluster, admin=True, admin_token="t")
            # One key per master, so that every check covers each: keys are named key_<slot>-free, by hash tag.
            cls.masters = cls.cluster.masters_by_slot()
            owners = cls.cluster.owners()
            cls.ids = [cls.cluster.node_id(m) for m in cls.masters]
            cls.tags = []
            for i in range(len(cls.masters)):
                for n in range(10000):
                    tag = "t%d" % n
                    slot = int(cls.cluster.cli(cls.masters[0], "CLUSTER", "KEYSLOT", tag).strip())
                    if owners[slot] == cls.ids[i]:
                        cls.tags.append(tag)
                        break
        except BaseException:
            if cls.proxy:
                cls.proxy.stop()
            cls.cluster.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.proxy:
                cls.proxy.stop()
        finally:
            cls.cluster.stop()

    def resp3(self, port=None):
        c = Conn(port or self.proxy.port)
        self.addCleanup(c.close)
        self.assertEqual(c.call("HELLO", "3")[0], b"%")
        return c

    def writer(self):
        c = Conn(self.proxy.port)
        self.addCleanup(c.close)
        return c

    def keys(self, name):
        """One key per master: {tag}name."""
        return ["{%s}%s" % (tag, name) for tag in self.tags]

    def next_push(self, c):
        """The next value the connection gets, within its 10 s timeout: a push expected."""
        value = c.read()
        self.assertEqual(value[0], b">", value)
        return value

    def pushes_within(self, c, wait=0.3):
        """Every push the connection gets within `wait` seconds (a PING's reply marks the end)."""
        time.sleep(wait)
        c.send(("PING",))
        got = []
        while True:
            value = c.read()
            if value == (b"+", b"PONG"):
                return got
            got.append(value)

    def assert_no_push(self, c, wait=0.3):
        self.assertEqual(self.pushes_within(c, wait), [])

    def own_proxy(self, *flags):
        proxy = harness.Proxy(self.cluster, *flags, threads=1)
        self.addCleanup(proxy.stop)
        return proxy

    def test_a_silent_master_fails_its_tracking_connection(self):
        # With a deadline of 1 s, a master that stops answering (SIGSTOP, for less than the cluster's node timeout)
        # fails the client's tracking connection to it, and the client drops its cache; its read there gets the
        # proxy's timeout (it used to wait for good).
        proxy = self.own_proxy("--request-timeout-ms", "1000")
        t = self.resp3(proxy.port)
        k = self.keys("silent")[2]
        self.assertEqual(t.call("CLIENT", "TRACKING", "ON"), (b"+", b"OK"))
        t.call("GET", k)
        pid = int(self.cluster.cli(self.masters[2], "INFO", "server").split("process_id:")[1].split()[0])
        os.kill(pid, signal.SIGSTOP)
        # Resumed after 4 s whatever happens, well within the cluster's node timeout (5 s).
        resume = threading.Timer(4, os.kill, (pid, signal.SIGCONT))
        resume.start()
        try:
            started = time.time()
            t.send(("GET", k))
            got = [t.read(), t.read()]
            self.assertLess(time.time() - started, 4, got)
            # The read's timeout, and the drop of the cache: the node answered reads on that connection.
            self.assertIn(FLUSH, got)
            self.assertEqual([v[0] for v in got if v != FLUSH], [b"-"], got)
        finally:
            resume.cancel()
            os.kill(pid, signal.SIGCONT)
        w = self.writer()
        w.call("SET", k, "back")
        deadline = time.time() + 10
        while t.call("GET", k) != (b"$", b"back") and time.time() < deadline:
            time.sleep(0.1)
        w.call("SET", k, "again")
        got = [self.next_push(t)]
        while got[-1] == FLUSH:  # (the failed connection may have answered a read before it failed)
            got.append(self.next_push(t))
        self.assertEqual(invalidated(got[-1]), [k.encode()])

    def test_an_idle_tracking_connection_to_a_silent_master_is_noticed(self):
        # The client sends nothing: the proxy's PING on the idle connection finds the node silent, and the client
        # drops its cache (it read there), where it would otherwise miss that node's invalidations unawares.
        proxy = self.own_proxy("--request-timeout-ms", "1000")
        t = self.resp3(proxy.port)
        k = self.keys("idle")[1]
        self.assertEqual(t.call("CLIENT", "TRACKING", "ON"), (b"+", b"OK"))
        t.call("GET", k)
        pid = int(self.cluster.cli(self.masters[1], "INFO", "server").split("process_id:")[1].split()[0])
        os.kill(pid, signal.SIGSTOP)
        resume = threading.Timer(4, os.kill, (pid, signal.SIGCONT))
        resume.start()
        try:
            started = time.time()
            self.assertEqual(self.next_push(t), FLUSH)
            self.assertLess(time.time() - started, 4)
        finally:
            resume.cancel()
            os.kill(pid, signal.SIGCONT)

    def test_commands_of_a_client_that_hung_up_still_run(self):
        # A SET on a tracking connection that is being opened again (the node closed the last one) and whose
        # node has not answered its setup yet (stopped for half a second) when the client left: it runs.
        k = self.keys("gone")[0]
        node = self.masters[0]
        pid = int(self.cluster.cli(node, "INFO", "server").split("process_id:")[1].split()[0])
        for n in range(3):
            c = Conn(self.proxy.port)
            c.call("HELLO", "3")
            self.assertEqual(c.call("CLIENT", "TRACKING", "ON"), (b"+", b"OK"))
            c.call("GET", k)
            for line in self.cluster.cli(node, "CLIENT", "LIST").splitlines():
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                if "t" in fields.get("flags", ""):
                    self.cluster.cli(node, "CLIENT", "KILL", "ID", fields["id"])
            time.sleep(0.3)
            os.kill(pid, signal.SIGSTOP)
            try:
                c.send(("SET", k, "last%d" % n))
                time.sleep(0.2)
                c.close()
                time.sleep(0.3)
            finally:
                os.kill(pid, signal.SIGCONT)
            w = self.writer()
            deadline = time.time() + 10
            while w.call("GET", k) != (b"$", b"last%d" % n) and time.time() < deadline:
                time.sleep(0.05)
            self.assertEqual(w.call("GET", k), (b"$", b"last%d" % n))

    def test_an_owner_change_that_closes_a_slow_client(self):
        # The drop of the whole cache, queued behind a BLPOP that blocks, takes a client's waiting replies past
        # --max-client-output-bytes: it is closed, and the proxy goes on.
        proxy = self.own_proxy("--max-client-output-bytes", "4096")
        t = self.resp3(proxy.port)
        w = Conn(proxy.port)
        self.addCleanup(w.close)
        big = self.keys("big")[0]
        w.call("SET", big, "v" * 4075)
        self.assertEqual(t.call("CLIENT", "TRACKING", "ON"), (b"+", b"OK"))
        t.call("GET", self.keys("small")[1])
        t.send(("BLPOP", self.keys("never")[1], "0"), ("GET", big))
        time.sleep(0.3)
        # An empty slot of the first master, given to the second: the proxy learns of it from a MOVED.
        for n in range(100000):
            key = "{empty%d}" % n
            slot = int(self.cluster.cli(self.masters[0], "CLUSTER", "KEYSLOT", key).strip())
            if slot in self.cluster.slots_of(self.masters[0]) and \
                    self.cluster.cli(self.masters[0], "CLUSTER", "COUNTKEYSINSLOT", str(slot)).strip() == "0":
                break

        def give(source, target):
            # As redis-cli does it: the target's claim bumps its epoch (it was importing), which every node
            # then takes over its old owner's.
            src, dst = self.masters[source], self.masters[target]
            self.cluster.cli(dst, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", self.ids[source])
            self.cluster.cli(src, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", self.ids[target])
            for m in [dst, src] + [m for m in self.masters if m not in (src, dst)]:
                self.cluster.cli(m, "CLUSTER", "SETSLOT", str(slot), "NODE", self.ids[target])
            self.cluster.wait_owner([slot], self.ids[target])
        give(0, 1)
        self.addCleanup(give, 1, 0)
        w.call("SET", key, "moved")
        self.assertEqual(w.call("GET", key), (b"$", b"moved"))
        w.call("DEL", key)
        fresh = Conn(proxy.port)
        self.addCleanup(fresh.close)
        self.assertEqual(fresh.call("PING"), (b"+", b"PONG"))


    def test_keys_read_on_every_master_are_invalidated(self):
        t = self.resp3()
        w = self.writer()
        self.assertEqual(t.call("CLIENT", "TRACKING", "ON"), (b"+", b"OK"))
        self.assertRegex(t.call("CLIENT", "INFO")[1], rb" flags=[A-Za-z]*t")
        read = self.keys("read")
        unread = self.keys("unread")
        for k in read:
            w.call("SET", k, "1")
            self.assertEqual(t.call("GET", k), (b"$", b"1"))
        for k in unread:
            w.call("SET", k, "1")
            t.call("GET", k)
        # Only what was read after tracking began is tracked: written here, the unread keys (read by another
        # client only) send nothing; a key read through an MGET split over the masters is tracked too.
        t.call("MGET", *unread)
        for k in read:
            self.assertEqual(w.call("SET", k, "2"), (b"+", b"OK"))
        got = []
        while len(got) < len(read):
            got += invalidated(self.next_push(t))
        self.assertEqual(sorted(got), sorted(k.encode() for k in read))
        for k in unread:
            w.call("SET", k, "2")
        got = []
        while len(got) < len(unread):
            got += invalidated(self.next_push(t))
        self.assertEqual(sorted(got), sorted(k.encode() for k in unread))
        # Invalidated, a key is no longer tracked until read again.
        w.call("SET", read[0], "3")
        self.assert_no_push(t)
        # Replies keep their order among the pushes.
        self.assertEqual(t.call("GET", read[0]), (b"$", b"3"))

    def test_bcast_prefixes_on_every_master_without_reads(self):
        t = self.resp3()
        w = self.writer()
        self.assertEqual(t.call("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "{"), (b"+", b"OK"))
        self.assertRegex(t.call("CLIENT", "INFO")[1], rb" flags=[A-Za-z]*tB")
        keys = self.keys("bc")
        for k in keys:
            w.call("SET", k, "x")
        got = []
        while len(got) < len(keys):
            got += invalidated(self.next_push(t))
        self.assertEqual(sorted(got), sorted(k.encode() for k in keys))
        w.call("SET", "nobrace", "x")
        self.assert_no_push(t)
        self.assertEqual(t.call("CLIENT", "TRACKING", "OFF"), (b"+", b"OK"))
        w.call("SET", keys[0], "y")
        self.assert_no_push(t)
        info = t.call("CLIENT", "TRACKINGINFO")
        self.assertEqual(info[1][1], (b"~", [(b"$", b"off")]))

    def test_noloop_and_optin(self):
        t = self.resp3()
        w = self.writer()
        k = self.keys("loop")[1]
        self.assertEqual(t.call("CLIENT", "TRACKING", "ON", "NOLOOP"), (b"+", b"OK"))
        t.call("GET", k)
        t.call("SET", k, "mine")  # NOLOOP: the client's own write tells it nothing
        self.assert_no_push(t)
        t.call("GET", k)
        w.call("SET", k, "theirs")
        self.assertEqual(invalidated(self.next_push(t)), [k.encode()])
        # OPTIN: only reads after CLIENT CACHING YES are tracked; the choice holds for one command.
        t2 = self.resp3()
        a, b = ["{%s}optin-%s" % (self.tags[2], n) for n in "ab"]
        self.assertEqual(t2.call("CLIENT", "TRACKING", "ON", "OPTIN"), (b"+", b"OK"))
        t2.call("GET", a)
        self.assertEqual(t2.call("CLIENT", "CACHING", "YES"), (b"+", b"OK"))
        flags = t2.call("CLIENT", "TRACKINGINFO")[1][1][1]
        self.assertIn((b"$", b"caching-yes"), flags)
        t2.call("GET", b)
        w.call("SET", a, "1")
        w.call("SET", b, "1")
        # Same node, so its order: had `a` been tracked, its push would come first.
        self.assertEqual(invalidated(self.next_push(t2)), [b.encode()])
        self.assert_no_push(t2)

    def test_errors_and_info_are_a_nodes_own(self):
        p = self.resp3()
        n = self.resp3(self.masters[0][1])
        sequence = [
            ("CLIENT", "TRACKING", "ON", "PREFIX", "a"),
            ("CLIENT", "TRACKING", "ON", "BCAST", "OPTIN"),
            ("CLIENT", "TRACKING", "ON", "OPTIN", "OPTOUT"),
            ("CLIENT", "TRACKING", "ON", "BOGUS"),
            ("CLIENT", "TRACKING", "MAYBE"),
            ("CLIENT", "TRACKING"),
            ("CLIENT", "CACHING", "YES"),
            ("CLIENT", "TRACKINGINFO"),
            ("CLIENT", "GETREDIR"),
            ("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "ab", "PREFIX", "a"),
            ("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "x", "PREFIX", "y"),
            ("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "xy"),
            ("CLIENT", "TRACKING", "ON"),
            ("CLIENT", "CACHING", "NO"),
            ("CLIENT", "TRACKINGINFO"),
            ("CLIENT", "GETREDIR"),
            ("CLIENT", "TRACKING", "OFF"),
            ("CLIENT", "TRACKING", "ON", "OPTOUT", "NOLOOP"),
            ("CLIENT", "TRACKING", "ON", "OPTIN"),
            ("CLIENT", "CACHING", "YES"),
            ("CLIENT", "CACHING", "NO"),
            ("CLIENT", "CACHING", "MAYBE"),
            ("CLIENT", "TRACKINGINFO"),
            ("RESET",),
            ("CLIENT", "TRACKINGINFO"),
        ]
        for c in sequence:
            want = n.call(*c)
            if c == ("RESET",):
                p.call(*c)
                p.call("HELLO", "3")
                n.call("HELLO", "3")
                continue
            self.assertEqual(p.call(*c), want, c)
        # RESP2 shapes too, and REDIRECT is refused with a reason.
        p.call("HELLO", "2")
        n.call("HELLO", "2")
        self.assertEqual(p.call("CLIENT", "TRACKINGINFO"), n.call("CLIENT", "TRACKINGINFO"))
        t, text = p.call("CLIENT", "TRACKING", "ON", "REDIRECT", "1")
        self.assertEqual(t, b"-")
        self.assertIn(b"REDIRECT", text)

    def test_a_moved_slot_drops_the_whole_cache(self):
        t = self.resp3()
        w = self.writer()
        k = self.keys("moving")[0]
        w.call("SET", k, "before")
        self.assertEqual(t.call("CLIENT", "TRACKING", "ON"), (b"+", b"OK"))
        self.assertEqual(t.call("GET", k), (b"$", b"before"))
        slot = int(self.cluster.cli(self.masters[0], "CLUSTER", "KEYSLOT", k).strip())
        run = subprocess.run([harness.SLOTSHIFT_BIN, "move", "--cluster", self.cluster.seed(), "--slots", str(slot),
                              "--to", self.ids[1], "--proxy", "127.0.0.1:%d" % self.proxy.admin_port,
                              "--proxy-token", "t"], capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        # The new owner does not know the client read the key: the client is told to drop everything.
        w.call("SET", k, "after")
        # (The old owner may also say that the key went, when it drops the moved slot's keys.)
        pushes = [self.next_push(t)] + self.pushes_within(t, 1)
        self.assertIn(FLUSH, pushes)
        self.assertEqual([p for p in pushes if p != FLUSH and invalidated(p) != [k.encode()]], [])
        # Read again where it lives now, the key is tracked there.
        self.assertEqual(t.call("GET", k), (b"$", b"after"))
        w.call("SET", k, "later")
        self.assertEqual(invalidated(self.next_push(t)), [k.encode()])

    def test_a_lost_tracking_connection_drops_the_whole_cache(self):
        t = self.resp3()
        w = self.writer()
        k = self.keys("lost")[2]
        self.assertEqual(t.call("CLIENT", "TRACKING", "ON"), (b"+", b"OK"))
        t.call("GET", k)
        # The node closes the proxy's tracking connection (flags t) of this client.
        node = self.masters[2]
        killed = 0
        for line in self.cluster.cli(node, "CLIENT", "LIST").splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "t" in fields.get("flags", ""):
                self.cluster.cli(node, "CLIENT", "KILL", "ID", fields["id"])
                killed += 1
        self.assertGreaterEqual(killed, 1)
        self.assertEqual(self.next_push(t), FLUSH)
        # The next read reopens it, tracked as before.
        self.assertEqual(t.call("GET", k), (b"_", b""))
        w.call("SET", k, "v")
        self.assertEqual(invalidated(self.next_push(t)), [k.encode()])

    def test_tracking_on_and_off_wait_for_earlier_commands(self):
        t = self.resp3()
        k = self.keys("order")[0]
        # Pipelined: the SETs go on one connection and the GET after CLIENT TRACKING on another (the proxy's
        # shared one, the client's tracking one); it must not overtake them. Large values keep the node reading
        # the SETs for a while.
        n = 40
        big = "x" * (256 * 1024)
        # (NOLOOP: the client's own SETs of a key it read send it nothing.)
        for switch in (("ON", "NOLOOP"), ("OFF",), ("ON", "NOLOOP")):
            t.send(*[("SET", k, big + str(i)) for i in range(n)], ("CLIENT", "TRACKING", *switch), ("GET", k))
            for _ in range(n):
                self.assertEqual(t.read(), (b"+", b"OK"))
            self.assertEqual(t.read(), (b"+", b"OK"))
            t_, value = t.read()
            self.assertEqual((t_, len(value), value[-4:]), (b"$", len(big) + 2, b"xx" + str(n - 1).encode()), switch)

    def test_pushes_do_not_wait_behind_a_blocked_command(self):
        t = self.resp3()
        w = self.writer()
        k = self.keys("blk")[1]
        lst = self.keys("blklist")[0]
        w.call("DEL", lst)
        self.assertEqual(t.call("SUBSCRIBE", "blk-ch")[0], b">")
        self.assertEqual(t.call("CLIENT", "TRACKING", "ON"), (b"+", b"OK"))
        t.call("GET", k)
        t.send(("BLPOP", lst, "0"))
        time.sleep(0.2)
        # While BLPOP waits: a message, then an invalidation, each as soon as it happens.
        self.assertEqual(w.call("PUBLISH", "blk-ch", "hello"), (b":", b"1"))
        self.assertEqual(self.next_push(t), (b">", [(b"$", b"message"), (b"$", b"blk-ch"), (b"$", b"hello")]))
        w.call("SET", k, "changed")
        self.assertEqual(invalidated(self.next_push(t)), [k.encode()])
        w.call("RPUSH", lst, "item")
        self.assertEqual(t.read(), (b"*", [(b"$", lst.encode()), (b"$", b"item")]))

    def test_reset_ends_tracking(self):
        t = self.resp3()
        w = self.writer()
        k = self.keys("reset")[0]
        t.call("CLIENT", "TRACKING", "ON")
        t.call("GET", k)
        self.assertEqual(t.call("RESET"), (b"+", b"RESET"))
        t.call("HELLO", "3")
        w.call("SET", k, "x")
        self.assert_no_push(t)
        self.assertNotRegex(t.call("CLIENT", "INFO")[1], rb" flags=[A-Za-z]*t")


if __name__ == "__main__":
    harness.main()
