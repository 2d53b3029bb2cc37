#!/usr/bin/python3
"""A cluster in the middle of an upgrade: the host's Redis 7.0 masters and one Redis 8.0 master (from its Debian
root, deploy/local/server-root.sh) in one cluster.

  NewerSourceTest   a move from the Redis 8.0 master to a Redis 7.0 master is refused before anything is touched:
                    Redis 7.0 cannot RESTORE Redis 8.0's payloads (RDB 12 into 10), and slotshift carries values
                    only as payloads. The exit code, the message naming both servers, and every node's state after
                    (no slot open, every key where it was, redis-cli --cluster check clean) are checked.
  OlderSourceTest   the upgrade's own direction: slots of a Redis 7.0 master moved onto the Redis 8.0 master with
                    every key, value and TTL.
  ProxyInfoTest     INFO through slotshift-proxy says the oldest master's redis_version (7.0, not 8.0) and sums
                    the keyspace of every master, the Redis 8.0 one included.

Run by ctest as mixed_versions_it when redis-8.0 is among SLOTSHIFT_TEST_SERVERS (tests/run.sh).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import redis
from redis.crc import key_slot

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class NewerNode:
    """One Redis 8.0 node in cluster mode, run from its Debian root, joined to cluster as an empty master."""

    def __init__(self, cluster, version="redis-8.0"):
        env = subprocess.run([os.path.join(harness.SOURCE_DIR, "deploy/local/server-root.sh"), version], check=True,
                             capture_output=True, text=True).stdout
        conf = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
        self.root, server = conf["ROOT"], conf["SERVER"]
        os.makedirs(os.path.join(self.root, "tmp"), exist_ok=True)
        # A port taken by another process between our check and the server's bind makes the daemonized server exit
        # at once; start again on another port in a fresh directory, and show the server's own log if it never
        # comes up.
        for attempt in range(3):
            self.dir = tempfile.mkdtemp(prefix="slotshift-mixed.", dir=os.path.join(self.root, "tmp"))
            inner = self.dir[len(self.root):]
            self.port = harness.free_node_port()
            subprocess.run(["chroot", self.root, server, "--port", str(self.port), "--bind", "127.0.0.1",
                            "--protected-mode", "no", "--daemonize", "yes", "--dir", inner,
                            "--pidfile", inner + "/redis.pid", "--logfile", inner + "/redis.log",
                            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--save", "",
                            "--appendonly", "no"], check=True)
            self.addr = ("127.0.0.1", self.port)
            self.r = redis.Redis(*self.addr)
            if self.answers(deadline=time.time() + 10) and self.ours():
                break
            self.r.close()
            try:
                with open(os.path.join(self.dir, "redis.log"), errors="replace") as f:
                    log = f.read()[-2000:]
            except OSError as e:
                log = "(no log: %s)" % e
            try:
                with open(os.path.join(self.dir, "redis.pid")) as f:
                    os.kill(int(f.read()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
            shutil.rmtree(self.dir, ignore_errors=True)
            if attempt == 2:
                raise AssertionError("the Redis 8.0 node did not start on port %d; its log ends with:\n%s"
                                     % (self.port, log))
        self.id = self.r.execute_command("CLUSTER", "MYID").decode()
        subprocess.run(["redis-cli", "--cluster", "add-node", "127.0.0.1:%d" % self.port, cluster.seed()],
                       check=True, capture_output=True, timeout=60)
        deadline = time.time() + 30
        while not (all(any(e.id == self.id for e in cluster.view(n)) for n in cluster.nodes) and
                   b"cluster_state:ok" in self.r.execute_command("CLUSTER", "INFO")):
            if time.time() > deadline:
                raise AssertionError("the Redis 8.0 node did not join")
            time.sleep(0.1)

    def ours(self):
        """The server answering on our port is the one we started (another test's node may hold the port if ours
        could not bind it)."""
        try:
            with open(os.path.join(self.dir, "redis.pid")) as f:
                pid = int(f.read())
            return self.r.info("server")["process_id"] == pid
        except (OSError, ValueError, redis.RedisError):
            return False

    def answers(self, deadline):
        while True:
            try:
                self.r.ping()
                return True
            except redis.ConnectionError:
                if time.time() > deadline:
                    return False
                time.sleep(0.05)

    def stop(self):
        try:
            self.r.shutdown(nosave=True)
        except redis.RedisError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def tag_on(cluster, node, prefix):
    """A hash tag whose slot node owns."""
    owned = set(cluster.slots_of(node))
    for i in range(100000):
        tag = "%s%d" % (prefix, i)
        if key_slot(("{%s}" % tag).encode()) in owned:
            return tag, key_slot(("{%s}" % tag).encode())
    raise AssertionError("no tag")


def move(cluster, slots, to, *extra):
    run = subprocess.run([harness.SLOTSHIFT_BIN, "move", "--cluster", cluster.seed(), "--slots", slots, "--to", to,
                          "--json", *extra], capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(run.stdout)
    except ValueError:
        report = None
    return run.returncode, report, run.stderr


class MixedCluster(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)
        try:
            cls.newer = NewerNode(cls.cluster)
        except BaseException:
            cls.cluster.stop()
            raise
        cls.rc = redis.RedisCluster(host=cls.cluster.nodes[0][0], port=cls.cluster.nodes[0][1])

    @classmethod
    def tearDownClass(cls):
        cls.rc.close()
        cls.newer.stop()
        cls.cluster.stop()

    def fill(self, tag, n=200):
        keys = {}
        for i in range(n):
            k = "{%s}k%d" % (tag, i)
            self.rc.set(k, "v%d" % i, px=3600000 if i % 3 == 0 else None)
            self.rc.hset("{%s}h%d" % (tag, i), mapping={"a": i, "b": "x" * (i % 50)})
            keys[k] = b"v%d" % i
        return keys

    def check_keys(self, tag, keys, n=200):
        for k, v in keys.items():
            self.assertEqual(self.rc.get(k), v, k)
        for i in range(n):
            self.assertEqual(self.rc.hgetall("{%s}h%d" % (tag, i)), {b"a": str(i).encode(), b"b": b"x" * (i % 50)})
        for i in range(0, n, 3):
            self.assertGreater(self.rc.pttl("{%s}k%d" % (tag, i)), 3000000)


class OlderSourceTest(MixedCluster):
    def test_slots_move_onto_the_newer_server(self):
        a = self.cluster.masters_by_slot()[0]
        tag, slot = tag_on(self.cluster, a, "up")
        keys = self.fill(tag)
        code, report, err = move(self.cluster, "%d" % slot, self.newer.id)
        self.assertEqual(code, 0, "%s\n%s" % (report, err))
        self.assertTrue(report["ok"], report)
        self.cluster.wait_owner([slot], self.newer.id)
        self.assertEqual(self.newer.r.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot), 400)
        self.rc.nodes_manager.initialize()
        self.check_keys(tag, keys)


class ProxyInfoTest(MixedCluster):
    def test_info_through_the_proxy_gives_the_oldest_masters_version(self):
        # The Redis 8.0 node becomes a master with a slot (and keys), so that it is one of the masters INFO asks.
        a = self.cluster.masters_by_slot()[0]
        tag, slot = tag_on(self.cluster, a, "info")
        for node in self.cluster.nodes + [self.newer.addr]:
            self.cluster.cli(node, "cluster", "setslot", str(slot), "node", self.newer.id)
        self.cluster.cli(self.newer.addr, "cluster", "bumpepoch")
        self.cluster.wait_owner([slot], self.newer.id)
        self.cluster.wait_consistent()
        self.rc.nodes_manager.initialize()
        self.fill(tag, 20)
        proxy = harness.Proxy(self.cluster, threads=1)
        try:
            r = redis.Redis(port=proxy.port)
            older = self.cluster.redis(a).info("server")["redis_version"]
            newer = self.newer.r.info("server")["redis_version"]
            self.assertTrue(older.startswith("7.0."), older)
            self.assertTrue(newer.startswith("8."), newer)
            deadline = time.time() + 20
            # The proxy's slot map lists the new master once it has reloaded it.
            while r.dbsize() != 40:
                self.assertLess(time.time(), deadline, "the proxy does not see the Redis 8.0 master's keys")
                time.sleep(0.2)
            self.assertEqual(r.info("server")["redis_version"], older)
            keys = sum(self.cluster.redis(n).info("keyspace").get("db0", {}).get("keys", 0)
                       for n in self.cluster.nodes) + self.newer.r.info("keyspace")["db0"]["keys"]
            self.assertEqual(r.info("keyspace")["db0"]["keys"], keys)
        finally:
            proxy.stop()


class NewerSourceTest(MixedCluster):
    def test_a_move_from_the_newer_server_is_refused_untouched(self):
        # Give the Redis 8.0 node one slot of its own (still empty), then keys in it.
        a = self.cluster.masters_by_slot()[0]
        tag, slot = tag_on(self.cluster, a, "down")
        for node in self.cluster.nodes + [self.newer.addr]:
            self.cluster.cli(node, "cluster", "setslot", str(slot), "node", self.newer.id)
        self.cluster.cli(self.newer.addr, "cluster", "bumpepoch")
        self.cluster.wait_owner([slot], self.newer.id)
        self.cluster.wait_consistent()
        deadline = time.time() + 30
        while subprocess.run([harness.SLOTSHIFT_BIN, "check", "--cluster", self.cluster.seed()],
                             capture_output=True).returncode != 0:
            self.assertLess(time.time(), deadline, "slotshift check does not find the cluster clean")
            time.sleep(0.2)
        self.rc.nodes_manager.initialize()
        keys = self.fill(tag)
        target = self.cluster.node_id(a)

        code, report, err = move(self.cluster, "%d" % slot, target)
        self.assertNotEqual(code, 0)
        self.assertIsNotNone(report, err)
        self.assertFalse(report["ok"])
        self.assertTrue(report.get("refused_before_start"), report)
        for words in ("Redis 8.0", "Redis 7.0", "refuse"):
            self.assertIn(words, report["error"])
        # Nothing touched: the slot still on the newer node with its keys, no slot open anywhere, the target
        # holding none of them, and redis-cli agrees.
        self.cluster.wait_owner([slot], self.newer.id, timeout=5)
        self.assertEqual(self.newer.r.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot), 400)
        self.assertEqual(self.cluster.cli(a, "cluster", "countkeysinslot", str(slot)).strip(), "0")
        self.cluster.wait_consistent(timeout=5)
        self.check_keys(tag, keys)


if __name__ == "__main__":
    harness.main()
