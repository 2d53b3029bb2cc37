#!/usr/bin/python3
"""WATCH through slotshift-proxy, with Debian's python3-redis: optimistic transactions as on one Redis, and
while `slotshift move` or `redis-cli --cluster reshard` moves the watched slot. No update is lost and no
transaction is applied in part. Run by ctest; runs alone too: tests/integration/proxy_watch_test.py [-k pattern]."""

import os
import subprocess
import sys
import threading
import time
import unittest

import redis
from redis.crc import key_slot

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def key_in_slot_below(limit, prefix):
    """A hash tag whose slot is below `limit` (slots the first master owns, and that a reshard moves first)."""
    for i in range(100000):
        tag = "{%s%d}" % (prefix, i)
        if key_slot(tag.encode()) < limit:
            return tag
    raise AssertionError("no tag found")


class Counters:
    """Threads adding 1 to a counter with WATCH/GET/MULTI/SET/EXEC, and writing a pair of keys in one
    transaction; every EXEC that succeeded is counted."""

    def __init__(self, port, tag, threads=3):
        self.port, self.tag = port, tag
        self.done = [0] * threads
        self.conflicts = [0] * threads  # EXECs that answered nil: a watched key changed
        self.errors = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(threads)]

    def run(self, i):
        r = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=30)
        counter, a, b = self.tag + "counter", self.tag + "a", self.tag + "b"
        while not self.stop.is_set():
            try:
                with r.pipeline() as p:
                    p.watch(counter)
                    value = int(p.get(counter) or 0)
                    p.multi()
                    p.set(counter, value + 1)
                    p.set(a, value + 1)
                    p.set(b, value + 1)
                    p.execute()
                    self.done[i] += 1
            except redis.WatchError:
                self.conflicts[i] += 1
                continue
            except redis.RedisError as e:
                self.errors.append(repr(e))
                time.sleep(0.01)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


class Watch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)
        cls.proxy = harness.Proxy(cls.cluster)

    @classmethod
    def tearDownClass(cls):
        try:
            cls.proxy.stop()
        finally:
            cls.cluster.stop()

    def client(self):
        return redis.Redis(host="127.0.0.1", port=self.proxy.port, socket_timeout=30)

    def test_as_on_one_redis(self):
        r, other = self.client(), self.client()
        r.set("w:k", 1)
        with r.pipeline() as p:
            p.watch("w:k")
            p.multi()
            p.incr("w:k")
            self.assertEqual(p.execute(), [2])
        # Another client changes the key between WATCH and EXEC: nothing runs.
        with r.pipeline() as p:
            p.watch("w:k")
            other.set("w:k", 10)
            p.multi()
            p.incr("w:k")
            with self.assertRaises(redis.WatchError):
                p.execute()
        self.assertEqual(r.get("w:k"), b"10")
        # The same client's own write outside the transaction counts too, as on Redis.
        with r.pipeline() as p:
            p.watch("w:k")
            p.set("w:k", 11)  # immediate mode: runs now, on the shared connection
            p.multi()
            p.incr("w:k")
            with self.assertRaises(redis.WatchError):
                p.execute()
        self.assertEqual(r.get("w:k"), b"11")
        # UNWATCH and DISCARD end the watch: a change after them does not stop the next EXEC.
        self.assertTrue(r.execute_command("WATCH", "w:k"))
        self.assertTrue(r.execute_command("UNWATCH"))
        other.set("w:k", 20)
        with r.pipeline(transaction=True) as p:
            p.incr("w:k")
            self.assertEqual(p.execute(), [21])

    def test_pipelined_without_waiting(self):
        """A client that sends WATCH, the transaction and a WATCH elsewhere in one write: EXEC waits for the
        WATCH before it to be in force, and a later WATCH on another node neither breaks it nor hangs."""
        other = key_in_slot_below(16384, "pw")
        while key_slot(other.encode()) < 6000:  # another master's slot
            other = "{%s}" % (other + "x")
        out = harness.exchange(self.proxy.port, ("WATCH {pa}k\r\nMULTI\r\nSET {pa}k v\r\nUNWATCH\r\nEXEC\r\nWATCH %sk\r\nGET %sk\r\n"
                        "UNWATCH\r\nGET {pa}k\r\n" % (other, other)).encode(), 12)
        self.assertEqual(out, ["+OK", "+OK", "+QUEUED", "+QUEUED", "*2", "+OK", "+OK", "+OK", "$-1", "+OK", "$1",
                               "v"])

    def test_two_watched_transactions_in_one_write(self):
        out = harness.exchange(self.proxy.port, b"WATCH {pb}a\r\nMULTI\r\nINCR {pb}a\r\nEXEC\r\nWATCH {pb}a\r\nMULTI\r\nINCR {pb}a\r\n"
                       b"EXEC\r\nGET {pb}a\r\n", 12)
        self.assertEqual(out, ["+OK", "+OK", "+QUEUED", "*1", ":1", "+OK", "+OK", "+QUEUED", "*1", ":2", "$1", "2"])

    def test_one_slot_or_crossslot(self):
        r = self.client()
        with self.assertRaisesRegex(redis.ResponseError, "CROSSSLOT"):
            r.execute_command("WATCH", "w:a", "w:b")
        self.assertTrue(r.execute_command("WATCH", "{w}a", "{w}b"))
        with self.assertRaisesRegex(redis.ResponseError, "CROSSSLOT"):
            r.execute_command("WATCH", "w:elsewhere")
        # A transaction on another slot than the watched one is refused as it queues, and EXEC discards it.
        with r.pipeline(transaction=True) as p:
            p.set("{w}a", 1)
            p.set("{other}b", 1)
            with self.assertRaises(redis.ResponseError):
                p.execute()
        self.assertIsNone(r.get("{other}b"))

    def test_concurrent_increments_lose_nothing(self):
        with Counters(self.proxy.port, "{lost}") as c:
            time.sleep(3)
        self.assertEqual(c.errors, [])
        r = self.client()
        self.assertEqual(int(r.get("{lost}counter")), sum(c.done))
        self.assertGreater(sum(c.done), 50)
        # The threads did get in each other's way: without a real watch, those would be lost updates.
        self.assertGreater(sum(c.conflicts), 0)

    def moved_under_counters(self, mover, tag):
        with Counters(self.proxy.port, tag) as c:
            time.sleep(1)
            mover()
            time.sleep(1)
        r = self.client()
        counter = int(r.get(tag + "counter"))
        self.assertEqual(counter, sum(c.done), "an EXEC that succeeded was lost, or one that failed ran")
        self.assertEqual(r.get(tag + "a"), r.get(tag + "b"), "a transaction was applied in part")
        self.assertEqual(int(r.get(tag + "a")), counter)
        # The errors the clients met, if any, are errors of one Redis: never a redirect.
        for e in c.errors:
            self.assertNotRegex(e, "MOVED|ASK|TRYAGAIN|CLUSTERDOWN")
        print("%s: %d transactions applied, %d answered nil, errors: %s" % (
            tag, sum(c.done), sum(c.conflicts), c.errors[:3]), file=sys.stderr)
        return c

    def test_while_slotshift_moves_the_slot(self):
        tag = key_in_slot_below(5000, "sm")
        slot = key_slot(tag.encode())
        source, target, _ = self.cluster.masters_by_slot()
        target_id = self.cluster.node_id(target)

        def move():
            run = subprocess.run([harness.SLOTSHIFT_BIN, "move", "--cluster", self.cluster.seed(), "--slots",
                                  "%d" % slot, "--to", target_id], capture_output=True, text=True, timeout=120)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            self.cluster.wait_owner([slot], target_id)
        self.moved_under_counters(move, tag)

    def test_while_redis_cli_reshards_the_slot(self):
        tag = key_in_slot_below(100, "rs")
        source, target, _ = self.cluster.masters_by_slot()
        if 0 not in self.cluster.slots_of(source):
            self.skipTest("slot 0 moved by an earlier test")
        source_id, target_id = self.cluster.node_id(source), self.cluster.node_id(target)

        def reshard():
            run = subprocess.run(["redis-cli", "--cluster", "reshard", self.cluster.seed(), "--cluster-from",
                                  source_id, "--cluster-to", target_id, "--cluster-slots", "100", "--cluster-yes",
                                  "--cluster-pipeline", "1"], capture_output=True, text=True, timeout=300)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.moved_under_counters(reshard, tag)


if __name__ == "__main__":
    harness.main()
