#!/usr/bin/python3
"""What a single Redis answers about itself, through slotshift-proxy: INFO for the whole cluster (the keyspace and
memory summed over the masters, the oldest master's version), CONFIG SET on every node with
--allow-admin-commands (refused without), and CLIENT LIST and CLIENT KILL over the proxy's own clients on every
worker thread, with the errors a plain redis-server gives for the same bad input. Real clients: python3-redis and
raw sockets. Run by ctest; runs alone too: tests/integration/proxy_info_test.py [-k pattern]."""

import os
import socket
import subprocess
import sys
import time
import unittest

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def info_text(node, *sections):
    """The INFO text of `node` ((host, port): a cluster node or the proxy), as redis-cli prints it."""
    return subprocess.run(["redis-cli", "-h", node[0], "-p", str(node[1]), "INFO", *sections], check=True,
                          capture_output=True, text=True, timeout=30).stdout


def fields(text):
    """INFO text -> {field: value as text}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            k, v = line.split(":", 1)
            out[k] = v
    return out


def db0(text):
    """The db0 line of an INFO keyspace text as {keys, expires, avg_ttl}, or zeros."""
    value = fields(text).get("db0")
    if not value:
        return {"keys": 0, "expires": 0, "avg_ttl": 0}
    return {k: int(v) for k, v in (item.split("=") for item in value.split(","))}


def bytes_to_human(n):
    for unit, div in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if n < div * 1024:
            return "%.2f%s" % (n / div, unit) if n >= 1024 else "%dB" % n
    return "%dB" % n


def closed_by_peer(sock, timeout=5):
    """True when the other side closes `sock` within `timeout` (whatever it sent before is read and dropped)."""
    sock.settimeout(timeout)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if sock.recv(4096) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


class PlainRedis:
    """One standalone redis-server of the host's version, to compare errors with."""

    def __init__(self, directory):
        self.port = harness.free_port()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
                                      "--dir", directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.r = redis.Redis(port=self.port)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                self.r.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def error_of(client, *command):
    try:
        client.execute_command(*command)
    except redis.ResponseError as e:
        return str(e)
    return None


class ProxyInfoTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(masters=3, replicas=1)
        cls.proxy = harness.Proxy(cls.cluster, "--allow-admin-commands", "--request-timeout-ms", "2000", threads=2)
        cls.plain_proxy = harness.Proxy(cls.cluster, threads=2)
        cls.plain = PlainRedis(cls.cluster.dir)
        cls.masters = cls.cluster.masters()
        cls.r = redis.Redis(port=cls.proxy.port)
        cls.at_proxy = ("127.0.0.1", cls.proxy.port)

    @classmethod
    def tearDownClass(cls):
        cls.plain.stop()
        cls.plain_proxy.stop()
        cls.proxy.stop()
        cls.cluster.stop()

    def node(self, node):
        return self.cluster.redis(node)

    def test_info_keyspace_is_the_sum_of_the_masters(self):
        r = self.r
        r.flushall()
        r.mset({"k:%d" % i: i for i in range(300)})
        for i in range(100):
            r.set("ttl:%d" % i, i, ex=1000 + 10 * i)
        want = {"keys": 0, "expires": 0}
        ttls = []
        for m in self.masters:
            d = db0(info_text(m, "keyspace"))
            want["keys"] += d["keys"]
            want["expires"] += d["expires"]
            if d["avg_ttl"] > 0:
                ttls.append(d["avg_ttl"])
        self.assertEqual(want, {"keys": 400, "expires": 100})
        got = db0(info_text(self.at_proxy, "keyspace"))
        self.assertEqual((got["keys"], got["expires"]), (want["keys"], want["expires"]))
        if ttls:
            # A mean of the masters' averages, not their sum: no key lives longer than 1990 s.
            self.assertGreater(got["avg_ttl"], 0)
            self.assertLessEqual(got["avg_ttl"], 1990 * 1000)
        # redis-py reads the same line.
        self.assertEqual(r.info("keyspace")["db0"]["keys"], 400)

    def test_info_server_says_the_masters_version(self):
        versions = {fields(info_text(n, "server"))["redis_version"] for n in self.cluster.nodes}
        self.assertEqual(len(versions), 1, versions)
        server = self.r.info("server")
        self.assertEqual(server["redis_version"], versions.pop())
        self.assertEqual(server["redis_mode"], "standalone")
        self.assertEqual(server["process_id"], self.proxy.proc.pid)

    def test_redis_py_parses_the_whole_reply(self):
        r = self.r
        r.set("parse:me", 1)
        for section in (None, "all", "everything", "default"):
            info = r.info(section) if section else r.info()
            for key in ("redis_version", "connected_clients", "used_memory", "used_memory_human",
                        "keyspace_hits", "instantaneous_ops_per_sec", "total_commands_processed", "db0",
                        "redirects_moved", "maxmemory_policy", "mem_fragmentation_ratio"):
                self.assertIn(key, info, section)
            self.assertIsInstance(info["used_memory"], int)
            self.assertIsInstance(info["mem_fragmentation_ratio"], float)
            self.assertEqual(info["used_memory_human"], bytes_to_human(info["used_memory"]))
        # Several sections at once, as Redis 7 allows, in Redis's order whatever the order asked.
        text = info_text(self.at_proxy, "keyspace", "CLIENTS", "memory")
        self.assertEqual([line for line in text.splitlines() if line.startswith("#")],
                         ["# Clients", "# Memory", "# Keyspace"])
        self.assertEqual(info_text(self.at_proxy, "nosuchsection").strip(), "")
        # The proxy's own sections need no node.
        self.assertIn("retries", r.info("proxy"))

    def test_info_memory_and_stats_add_up(self):
        r = self.r
        for i in range(50):
            r.get("hits:%d" % i)

        def nodes_sum(field, section):
            return sum(int(fields(info_text(m, section))[field]) for m in self.masters)

        before = nodes_sum("keyspace_misses", "stats")
        through = int(fields(info_text(self.at_proxy, "stats"))["keyspace_misses"])
        after = nodes_sum("keyspace_misses", "stats")
        self.assertGreaterEqual(through, before)
        self.assertLessEqual(through, after)
        self.assertGreaterEqual(through, 50)
        mem_before = nodes_sum("used_memory", "memory")
        mem = r.info("memory")
        mem_after = nodes_sum("used_memory", "memory")
        # used_memory moves a little with every command; within 20% of the sum of the masters'.
        self.assertGreater(mem["used_memory"], 0.8 * min(mem_before, mem_after))
        self.assertLess(mem["used_memory"], 1.2 * max(mem_before, mem_after))
        self.assertEqual(mem["used_memory_human"], bytes_to_human(mem["used_memory"]))
        # The proxy counts its clients' commands itself, as a single Redis would.
        processed = r.info("stats")["total_commands_processed"]
        self.assertEqual(processed, r.info("proxy")["total_commands_processed"] - 1)

    def test_a_master_that_does_not_answer_fails_info(self):
        m = self.masters[0]
        paused = self.node(m)
        paused.execute_command("CLIENT", "PAUSE", "3000", "ALL")
        try:
            with self.assertRaises(redis.ResponseError) as e:
                self.r.info("keyspace")
            self.assertIn("%s:%d" % m, str(e.exception))
            self.assertIn("timed out", str(e.exception))
            # The proxy's own sections still answer.
            self.assertIn("connected_clients", self.r.info("clients"))
        finally:
            paused.execute_command("CLIENT", "UNPAUSE")
        self.assertIn("redis_version", self.r.info("server"))

    def test_config_set_reaches_every_node(self):
        self.assertEqual(len(self.cluster.nodes), 6)
        try:
            self.assertTrue(self.r.config_set("maxmemory-samples", "7"))
            for n in self.cluster.nodes:
                self.assertEqual(self.node(n).config_get("maxmemory-samples"), {"maxmemory-samples": "7"}, n)
            # CONFIG GET answers from one master.
            self.assertEqual(self.r.config_get("maxmemory-samples"), {"maxmemory-samples": "7"})
        finally:
            self.r.config_set("maxmemory-samples", "5")
        for n in self.cluster.nodes:
            self.assertEqual(self.node(n).config_get("maxmemory-samples"), {"maxmemory-samples": "5"}, n)
        # A value every node refuses: the node's own error, naming the node, and nothing applied.
        for bad in (("maxmemory", "abc"), ("nosuchparameter", "1")):
            plain = error_of(self.plain.r, "CONFIG", "SET", *bad)
            through = error_of(self.r, "CONFIG", "SET", *bad)
            self.assertIsNotNone(plain)
            self.assertTrue(through.startswith(plain), (through, plain))
            self.assertIn("0 of 6 nodes answered OK", through)
        # CONFIG REWRITE: every node rewrites its own file, or the first that cannot is named.
        try:
            self.assertTrue(self.r.config_rewrite())
        except redis.ResponseError as e:
            self.assertIn("nodes answered OK", str(e))
        self.assertEqual(self.r.config_resetstat(), True)
        for n in self.cluster.nodes:
            self.assertLess(int(fields(info_text(n, "stats"))["total_commands_processed"]), 50, n)
        # Inside a transaction it would run on one node: refused.
        p = self.r.pipeline(transaction=True)
        p.config_set("maxmemory-samples", "6")
        with self.assertRaises(redis.ResponseError):
            p.execute()

    def test_config_set_is_refused_without_allow_admin_commands(self):
        plain = redis.Redis(port=self.plain_proxy.port)
        with self.assertRaises(redis.ResponseError) as e:
            plain.config_set("maxmemory-samples", "9")
        self.assertIn("allow-admin-commands", str(e.exception))
        for n in self.cluster.nodes:
            self.assertNotEqual(self.node(n).config_get("maxmemory-samples"), {"maxmemory-samples": "9"})
        self.assertIn("maxmemory-samples", plain.config_get("maxmemory-samples"))
        with self.assertRaises(redis.ResponseError) as e:
            plain.client_kill_filter(_id=1)
        self.assertIn("allow-admin-commands", str(e.exception))

    def clients(self, n, name):
        out = []
        for i in range(n):
            c = redis.Redis(port=self.proxy.port, single_connection_client=True)
            c.client_setname("%s-%d" % (name, i))
            out.append(c)
        return out

    def test_client_list_shows_every_workers_clients(self):
        cs = self.clients(16, "lister")
        try:
            listed = self.r.client_list()
            mine = {c["name"]: c for c in listed if c["name"].startswith("lister-")}
            self.assertEqual(set(mine), {"lister-%d" % i for i in range(16)})
            self.assertEqual({c["worker"] for c in mine.values()}, {"0", "1"})
            for c in cs:
                entry = mine[c.client_getname()]
                self.assertEqual(int(entry["id"]), c.client_id())
                self.assertEqual(entry["laddr"], "127.0.0.1:%d" % self.proxy.port)
                self.assertEqual(entry["cmd"], "client|setname")  # the last it ran before the list
                self.assertEqual(entry["user"], "default")
            some = [cs[0].client_id(), cs[5].client_id(), 999999]
            # (redis-py 4.3's client_list(client_id=...) joins the ids into one argument: sent as Redis wants.)
            by_id = self.r.execute_command("CLIENT", "LIST", "ID", *some)
            self.assertEqual([int(line.split()[0].removeprefix(b"id=")) for line in by_id.splitlines()], some[:2])
            # A subscribed client is of type pubsub, and only it.
            sub = redis.Redis(port=self.proxy.port).pubsub()
            sub.subscribe("news")
            sub.get_message(timeout=5)
            pubsub = self.r.client_list(_type="pubsub")
            self.assertEqual(len(pubsub), 1)
            self.assertEqual(pubsub[0]["sub"], "1")
            self.assertIn("P", pubsub[0]["flags"])
            self.assertNotIn(pubsub[0]["id"], {c["id"] for c in self.r.client_list(_type="normal")})
            sub.close()
            self.assertEqual(self.r.client_list(_type="master"), [])
        finally:
            for c in cs:
                c.close()

    def raw_client(self):
        s = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
        s.sendall(b"CLIENT ID\r\n")
        reply = s.recv(100)
        return s, int(reply[1:].split(b"\r\n")[0])

    def test_client_kill_closes_the_client(self):
        # By ID, on whichever worker it is.
        victims = [self.raw_client() for _ in range(6)]
        for s, cid in victims[:3]:
            self.assertEqual(self.r.client_kill_filter(_id=cid), 1)
            self.assertTrue(closed_by_peer(s), cid)
            s.close()
        self.assertEqual(self.r.client_kill_filter(_id=999999), 0)
        # The old form, by address: +OK, or Redis's error when none.
        s, cid = victims[3]
        addr = "%s:%d" % s.getsockname()
        self.assertTrue(self.r.client_kill(addr))
        self.assertTrue(closed_by_peer(s))
        s.close()
        with self.assertRaises(redis.ResponseError) as e:
            self.r.client_kill(addr)
        self.assertEqual(str(e.exception), "No such client")
        # The new form, by ADDR.
        s, cid = victims[4]
        self.assertEqual(self.r.client_kill_filter(addr="%s:%d" % s.getsockname()), 1)
        self.assertTrue(closed_by_peer(s))
        s.close()
        # LADDR: the proxy's address the client connected to (with another filter, as Redis combines them).
        s, cid = self.raw_client()
        laddr = "127.0.0.1:%d" % self.proxy.port
        self.assertEqual(self.r.client_kill_filter(laddr="127.0.0.1:1", _id=cid), 0)
        self.assertEqual(self.r.client_kill_filter(laddr=laddr, _id=cid), 1)
        self.assertTrue(closed_by_peer(s))
        s.close()
        # USER default, the caller skipped (SKIPME yes by default): every other client goes.
        s, cid = victims[5]
        others = redis.Redis(port=self.plain_proxy.port)  # another proxy's client: not counted here
        others.ping()
        listed = len(self.r.client_list())
        self.assertEqual(self.r.client_kill_filter(user="default"), listed - 1)
        self.assertTrue(closed_by_peer(s))
        s.close()
        self.assertTrue(self.r.ping())
        self.assertTrue(others.ping())
        # SKIPME no: the caller is killed too, after its reply.
        me = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
        me.sendall(b"CLIENT ID\r\n")
        my_id = int(me.recv(100)[1:].split(b"\r\n")[0])
        me.sendall(b"CLIENT KILL ID %d SKIPME no\r\nPING\r\n" % my_id)
        got = b""
        me.settimeout(5)
        while True:
            chunk = me.recv(100)
            if not chunk:
                break
            got += chunk
        self.assertEqual(got, b":1\r\n")  # the reply, then closed: the PING behind it is not run
        me.close()
        # MAXAGE (Redis 7.4's filter): a client connected for less than that stays.
        young, young_id = self.raw_client()
        self.assertEqual(self.r.execute_command("CLIENT", "KILL", "ID", young_id, "MAXAGE", 3600), 0)
        young.sendall(b"PING\r\n")
        self.assertEqual(young.recv(100), b"+PONG\r\n")
        young.close()

    def test_errors_are_redis_own(self):
        cases = [
            ("CLIENT", "KILL"),
            ("CLIENT", "KILL", "1.2.3.4:5"),
            ("CLIENT", "KILL", "ID", "abc"),
            ("CLIENT", "KILL", "ID", "0"),
            ("CLIENT", "KILL", "ID", "-3"),
            ("CLIENT", "KILL", "TYPE", "foo"),
            ("CLIENT", "KILL", "USER", "nosuchuser"),
            ("CLIENT", "KILL", "SKIPME", "maybe"),
            ("CLIENT", "KILL", "foo", "bar"),
            ("CLIENT", "KILL", "ID", "1", "x"),
            ("CLIENT", "LIST", "TYPE", "foo"),
            ("CLIENT", "LIST", "ID", "abc"),
            ("CLIENT", "LIST", "ID", "1", "abc"),
            ("CLIENT", "LIST", "foo"),
            ("CLIENT", "LIST", "TYPE"),
            ("CLIENT", "LIST", "TYPE", "normal", "extra"),
            ("CLIENT", "INFO", "x"),
            ("CONFIG", "SET", "maxmemory"),
            ("CONFIG", "GET"),
        ]
        for command in cases:
            plain = error_of(self.plain.r, *command)
            self.assertIsNotNone(plain, command)
            self.assertEqual(error_of(self.r, *command), plain, command)
        # Counts that are no error on either.
        for command in (("CLIENT", "KILL", "ADDR", "1.2.3.4:5"), ("CLIENT", "KILL", "TYPE", "master"),
                        ("CLIENT", "KILL", "ID", "999999")):
            self.assertEqual(self.r.execute_command(*command), self.plain.r.execute_command(*command), command)


if __name__ == "__main__":
    harness.main()
