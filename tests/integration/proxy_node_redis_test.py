#!/usr/bin/python3
"""node-redis (npm package `redis`), the other major Node.js client, in its usual configuration (createClient({ url })
standalone) against slotshift-proxy as if it were one Redis: tests/integration/js-clients/node_redis_test.js through a
plain proxy, one that asks for a password (--requirepass), and one with TLS on both sides. Run by ctest; runs alone
too: tests/integration/proxy_node_redis_test.py [-k pattern]. Every check of the script passes against one plain Redis
as well:
  redis-server --port PORT --save '' &   node tests/integration/js-clients/node_redis_test.js PORT --resp3"""

import os
import re
import subprocess
import sys
import unittest

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from proxy_tls_test import backend_flags, client_context  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js-clients", "node_redis_test.js")
# The script's checks over RESP2; one more (the login's) when it is given a password.
CHECKS = 9


def run_node_redis(port, *args):
    """node_redis_test.js against `port`: (passed, what it printed). It has deadlines of its own (4 minutes at most)."""
    run = subprocess.run(["node", SCRIPT, str(port), *args], capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    summary = re.search(r"^(\d+) passed, (\d+) failed$", run.stdout, re.M)
    if run.returncode != 0 or not summary or summary.group(2) != "0":
        raise AssertionError("node_redis_test.js failed (exit %d):\n%s" % (run.returncode, out))
    return int(summary.group(1)), out


class PlainProxy(unittest.TestCase):
    """A 3-master cluster behind a proxy that asks for nothing."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)
        cls.proxy = None
        try:
            cls.proxy = harness.Proxy(cls.cluster)
        except BaseException:
            cls.cluster.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.proxy:
                cls.proxy.stop()
        finally:
            cls.cluster.stop()

    def test_node_redis_resp3(self):
        # The same checks with createClient({ RESP: 3 }) (HELLO 3), and RESP3's own: typed replies (a map, a
        # double, a set, a null), Pub/Sub messages as pushes on a connection that goes on running commands, and the
        # client-side cache that CLIENT TRACKING drives.
        passed, out = run_node_redis(self.proxy.port, "--resp3", *self.client_args())
        self.assertEqual(passed, CHECKS + 4 + (1 if "--password" in self.client_args() else 0), out)
        self.assertIn("ok - RESP3: client-side cache (CLIENT TRACKING)", out)

    def client_args(self):
        return []

    def test_node_redis(self):
        passed, out = run_node_redis(self.proxy.port)
        self.assertEqual(passed, CHECKS, out)
        # The pipeline's keys went where the cluster keeps them: spread over every master, not onto one node.
        for node in self.cluster.masters():
            held = list(self.cluster.redis(node).scan_iter(match="nr:p:*", count=1000))
            self.assertGreater(len(held), 1000, "master %s:%d holds %d of the pipeline's keys" % (*node, len(held)))
        # A value the script's transaction wrote through the proxy, on exactly one master.
        values = []
        for node in self.cluster.masters():
            try:
                values.append(self.cluster.redis(node).get("{nr}t"))
            except redis.ResponseError as e:
                self.assertTrue(str(e).startswith("MOVED "), e)
        self.assertEqual(values, [b"2"])


class ProxyAsksForAPassword(PlainProxy):
    """--requirepass: node-redis's `password` option logs in; no password or a wrong one is refused."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)
        cls.proxy = None
        try:
            cls.proxy = harness.Proxy(cls.cluster, "--requirepass", "apppw", login=("apppw",))
        except BaseException:
            cls.cluster.stop()
            raise

    def client_args(self):
        return ["--password", "apppw"]

    def test_node_redis(self):
        passed, out = run_node_redis(self.proxy.port, "--password", "apppw")
        self.assertEqual(passed, CHECKS + 1, out)
        self.assertIn("ok - a login: no password or a wrong one is refused, AUTH again succeeds", out)

    def test_without_the_password_it_fails(self):
        # The script's own refusals are real: without its password every check meets NOAUTH.
        with self.assertRaisesRegex(AssertionError, "NOAUTH"):
            run_node_redis(self.proxy.port)


class ProxyOverTls(PlainProxy):
    """A TLS-only cluster that wants client certificates, a proxy with TLS on both sides: node-redis's `rediss://`
    URL with the CA that signs the proxy and a client certificate of its own (socket.ca/cert/key)."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0, tls=True)
        cls.proxy = None
        tls = cls.tls = cls.cluster.tls_dir
        try:
            cls.proxy = harness.Proxy(
                cls.cluster, *backend_flags(tls), "--tls-cert-file", os.path.join(tls, "server.crt"),
                "--tls-key-file", os.path.join(tls, "server.key"), "--tls-ca-cert-file", os.path.join(tls, "ca.crt"),
                client_tls=client_context(tls))
        except BaseException:
            cls.cluster.stop()
            raise

    def client_args(self):
        return ["--tls", self.tls]

    def test_node_redis(self):
        passed, out = run_node_redis(self.proxy.port, "--tls", self.tls)
        self.assertEqual(passed, CHECKS, out)


if __name__ == "__main__":
    harness.main()
