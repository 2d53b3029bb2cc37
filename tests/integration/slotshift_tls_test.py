#!/usr/bin/python3
"""slotshift on a TLS-only cluster (every node: port 0, a tls-port, the bus and replication over TLS, client
certificates required): status, check and a move under writers (its replica link and the purge of the source's
replicas included) with --tls and the test CA's client certificate; and each way of getting TLS wrong refused
quickly, with a message that says what is wrong. Run by ctest; runs alone too:
tests/integration/slotshift_tls_test.py [-k pattern]."""

import logging
import os
import subprocess
import sys
import threading
import time
import unittest

import redis
from redis.cluster import RedisCluster

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# redis-py's cluster client logs every MOVED it follows while the slots move; they are expected here.
logging.getLogger("redis.cluster").setLevel(logging.CRITICAL)

# A refusal must come well within this (the default --timeout-ms is 2 s), never as a hang.
QUICK = 5.0


class SlotshiftOverTls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # One replica each: the move also reaches the source's replicas (to remove the moved keys there).
        cls.cluster = harness.Cluster(3, 1, tls=True)
        cls.tls_dir = cls.cluster.tls_dir
        cls.ssl = {"ssl": True, "ssl_ca_certs": cls.file("ca.crt"), "ssl_certfile": cls.file("client.crt"),
                   "ssl_keyfile": cls.file("client.key")}

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    @classmethod
    def file(cls, name):
        return os.path.join(cls.tls_dir, name)

    def tls_args(self, ca="ca.crt", cert="client.crt", key="client.key"):
        return ["--tls", "--cacert", self.file(ca), "--cert", self.file(cert), "--key", self.file(key)]

    def slotshift(self, *args, tls=None, timeout=300):
        """Runs slotshift against the cluster; tls: its TLS flags (the trusted client certificate by default).
        Returns the exit code, stdout and stderr together, and the seconds it took."""
        start = time.monotonic()
        run = subprocess.run([harness.SLOTSHIFT_BIN, *args, "--cluster", self.cluster.seed(),
                              *(self.tls_args() if tls is None else tls)],
                             capture_output=True, text=True, timeout=timeout)
        return run.returncode, run.stdout + run.stderr, time.monotonic() - start

    def client(self):
        host, port = self.cluster.nodes[0]
        return RedisCluster(host=host, port=port, **self.ssl)

    def test_status_check_and_a_move_under_writers(self):
        code, out, _ = self.slotshift("status")
        self.assertEqual(code, 0, out)
        self.assertIn("16384 of 16384 slots covered", out)
        self.assertNotIn("unreachable", out)
        code, out, _ = self.slotshift("check")
        self.assertEqual(code, 0, out)

        source, target, _ = [tuple(a) for a in self.cluster.masters_by_slot()]
        target_id = self.cluster.node_id(target)
        slots = list(range(0, 1000))
        admin = self.client()
        keys = ["tls:%d" % i for i in range(3000)]
        for k in keys:
            admin.set(k, k)
        admin.hset("tls:h", mapping={"a": 1})
        moving = [k for k in keys if admin.keyslot(k) in slots]
        self.assertGreater(len(moving), 100)

        # Writers over TLS for the whole move, following MOVED: every acknowledged write must be there after it.
        acked = {}
        stop = threading.Event()
        errors = []

        def write():
            c = self.client()
            n = 0
            while not stop.is_set():
                k = keys[n % len(keys)]
                try:
                    c.set(k, "w%d" % n)
                    acked[k] = "w%d" % n
                except redis.RedisError as e:
                    errors.append(str(e))
                n += 1

        writer = threading.Thread(target=write)
        writer.start()
        try:
            code, out, _ = self.slotshift("move", "--slots", harness.format_slots(slots), "--to", target_id,
                                          "--no-progress")
            # Writes that follow the slots to their new owner.
            time.sleep(0.5)
        finally:
            stop.set()
            writer.join(60)
        self.assertEqual(code, 0, out)
        self.assertIn("moved", out)
        self.cluster.wait_owner(slots, target_id)
        self.assertGreater(len(acked), len(keys) // 2)
        for k in keys:
            self.assertEqual(admin.get(k).decode(), acked.get(k, k), k)
        self.assertEqual(admin.hgetall("tls:h"), {b"a": b"1"})
        # The moved keys are on the target itself, read over TLS on its own port.
        direct = self.cluster.redis(target)
        for k in moving[:50]:
            self.assertEqual(direct.execute_command("GET", k).decode(), acked.get(k, k), k)
        code, out, _ = self.slotshift("check")
        self.assertEqual(code, 0, out)
        self.assertEqual(errors, [])

    def test_without_tls_the_error_says_to_give_it(self):
        code, out, took = self.slotshift("status", tls=[])
        self.assertNotEqual(code, 0, out)
        self.assertLess(took, QUICK, out)
        self.assertIn(self.cluster.seed(), out)
        self.assertIn("give --tls", out)

    def test_a_node_certificate_from_an_unknown_ca_is_refused(self):
        code, out, took = self.slotshift("check", tls=self.tls_args(ca="other-ca.crt"))
        self.assertNotEqual(code, 0, out)
        self.assertLess(took, QUICK, out)
        self.assertIn("TLS handshake failed: certificate verify failed", out)
        self.assertIn("--cacert", out)

    def test_a_client_certificate_the_nodes_do_not_trust_is_refused(self):
        code, out, took = self.slotshift("status", tls=self.tls_args(cert="other-client.crt", key="other-client.key"))
        self.assertNotEqual(code, 0, out)
        self.assertLess(took, QUICK, out)
        self.assertIn("the node refused this client's certificate", out)

    def test_no_client_certificate_is_refused(self):
        code, out, took = self.slotshift("status", tls=["--tls", "--cacert", self.file("ca.crt")])
        self.assertNotEqual(code, 0, out)
        self.assertLess(took, QUICK, out)
        self.assertIn("asks for a client certificate", out)

    def test_usage_errors_stop_before_any_connection(self):
        # A file without --tls: refused, not a plain connection.
        code, out, took = self.slotshift("status", tls=["--cacert", self.file("ca.crt")])
        self.assertEqual(code, 2, out)
        self.assertIn("--cacert needs --tls", out)
        # A file that cannot be read, named.
        missing = self.file("missing.crt")
        code, out, took = self.slotshift("move", "--slots", "0", "--to", self.cluster.seed(),
                                         tls=["--tls", "--cacert", missing])
        self.assertEqual(code, 2, out)
        self.assertIn(missing, out)
        # A certificate without its key.
        code, out, took = self.slotshift("check", tls=["--tls", "--cacert", self.file("ca.crt"), "--cert",
                                                       self.file("client.crt")])
        self.assertEqual(code, 2, out)
        self.assertIn("needs its key", out)
        self.assertLess(took, QUICK, out)


if __name__ == "__main__":
    harness.main()
