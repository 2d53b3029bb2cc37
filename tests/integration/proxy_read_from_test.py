#!/usr/bin/python3
"""Reads from replicas through slotshift-proxy (--read-from master | replica | prefer-replica), on a cluster of 3
masters with a replica each: read-only commands run on the replicas (their INFO commandstats count them, the
masters' do not), writes, transactions, WATCH, blocking commands and EVAL still run on masters, prefer-replica
falls back to the masters without an error when the replicas are gone, replica does not, and reads during
redis-cli --cluster reshard get no error. Real clients: python3-redis and redis-cli. Run by ctest; runs alone
too: tests/integration/proxy_read_from_test.py [-k pattern]."""

import json
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


def calls(client, command):
    """How many times `command` ran on the node, by its INFO commandstats."""
    return client.info("commandstats").get("cmdstat_" + command, {}).get("calls", 0)


def proxy_info(port, **login):
    """INFO proxy of the proxy, as a dict of integers."""
    return {k: v for k, v in redis.Redis(port=port, **login).info("proxy").items() if isinstance(v, int)}


def errors_of(info):
    return {k: v for k, v in info.items() if k.startswith("errors_") and v}


class ReadFromTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(masters=3, replicas=1)
        cls.masters = cls.cluster.masters()
        cls.replicas = [n for n in cls.cluster.nodes if n not in cls.masters]
        assert len(cls.masters) == 3 and len(cls.replicas) == 3, (cls.masters, cls.replicas)

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def node(self, n):
        return self.cluster.redis(n, decode_responses=True)

    def reset_stats(self, nodes=None):
        for n in nodes or self.cluster.nodes:
            self.node(n).config_resetstat()

    def total(self, nodes, command):
        return sum(calls(self.node(n), command) for n in nodes)

    def start_proxy(self, *flags, **kw):
        proxy = harness.Proxy(self.cluster, *flags, **kw)
        self.addCleanup(proxy.stop)
        return proxy

    def write_and_read_back(self, client, prefix, count):
        """SETs `count` keys through the proxy, then polls (within 5 s) until every one reads back."""
        values = {"%s:%d" % (prefix, i): "v%d" % i for i in range(count)}
        for k, v in values.items():
            self.assertTrue(client.set(k, v))
        deadline = time.time() + 5
        while True:
            missing = [k for k, v in values.items() if client.get(k) != v]
            if not missing:
                return values
            if time.time() > deadline:
                self.fail("%d keys written through the proxy do not read back, e.g. %s" % (len(missing), missing[0]))
            time.sleep(0.05)

    def test_1_replica_reads_run_on_replicas(self):
        proxy = self.start_proxy("--read-from", "replica", admin=True)
        client = redis.Redis(port=proxy.port, decode_responses=True)
        self.reset_stats()
        values = self.write_and_read_back(client, "rf", 200)
        # Every SET ran once, at a master (the replicas' own count is what their masters sent them).
        self.assertEqual(self.total(self.masters, "set"), 200)
        self.reset_stats()
        for k, v in values.items():
            self.assertEqual(client.get(k), v)
        keys = list(values)[:50]
        self.assertEqual(client.mget(keys), [values[k] for k in keys])
        self.assertEqual(client.exists(*keys), 50)
        self.assertEqual(self.total(self.replicas, "get"), 200, "the GETs should all run on replicas")
        self.assertEqual(self.total(self.masters, "get"), 0, "no GET should run on a master")
        self.assertEqual(client.eval_ro("return redis.call('GET', KEYS[1])", 1, keys[0]), values[keys[0]])
        self.assertEqual(client.eval("return redis.call('GET', KEYS[1])", 1, keys[0]), values[keys[0]])
        self.assertGreater(self.total(self.replicas, "mget"), 0)
        self.assertEqual(self.total(self.masters, "mget"), 0)
        self.assertEqual(self.total(self.replicas, "eval_ro"), 1)
        self.assertEqual(self.total(self.masters, "eval"), 1, "EVAL may write: it runs on the master")
        self.assertEqual(self.total(self.replicas, "eval"), 0)
        # Every replica was read from: the reads spread over the shards' replicas.
        for r in self.replicas:
            self.assertGreater(calls(self.node(r), "get"), 0, "%s:%d got no read" % r)
        # redis-cli through the proxy, both ways.
        cli = ["redis-cli", "-p", str(proxy.port)]
        self.assertEqual(subprocess.run(cli + ["set", "rf:cli", "x"], capture_output=True, text=True).stdout, "OK\n")
        deadline = time.time() + 5
        while subprocess.run(cli + ["get", "rf:cli"], capture_output=True, text=True).stdout != "x\n":
            self.assertLess(time.time(), deadline, "redis-cli does not read back its write through the proxy")
            time.sleep(0.05)
        info = proxy_info(proxy.port)
        self.assertGreaterEqual(info["replica_reads"], 250)
        self.assertEqual(errors_of(info), {})
        status, metrics = proxy.admin_call("GET", "/metrics")
        self.assertEqual(status, 200)
        line = [m for m in metrics.splitlines() if m.startswith("slotshift_proxy_replica_reads_total ")]
        self.assertEqual(len(line), 1, metrics)
        self.assertGreaterEqual(int(line[0].split()[1]), 250)

    def test_2_writes_transactions_watch_blocking_stay_on_masters(self):
        proxy = self.start_proxy("--read-from", "replica")
        client = redis.Redis(port=proxy.port, decode_responses=True)
        client.set("{tx}a", "1")
        self.reset_stats()
        # MULTI ... EXEC with a read inside: the whole block runs at the master.
        pipe = client.pipeline(transaction=True)
        pipe.get("{tx}a").set("{tx}b", "2").get("{tx}b")
        self.assertEqual(pipe.execute(), ["1", True, "2"])
        # WATCH, a read, then MULTI/EXEC.
        with client.pipeline(transaction=True) as pipe:
            pipe.watch("{tx}a")
            self.assertEqual(pipe.get("{tx}a"), "1")
            pipe.multi()
            pipe.set("{tx}a", "3")
            self.assertEqual(pipe.execute(), [True])
        self.assertEqual(client.blpop(["{tx}list"], timeout=0.1), None)
        self.assertEqual(self.total(self.replicas, "exec"), 0)
        self.assertEqual(self.total(self.masters, "exec"), 2)
        self.assertEqual(self.total(self.masters, "get"), 3, "the reads in the transactions and after WATCH")
        self.assertEqual(self.total(self.replicas, "get"), 0)
        self.assertEqual(self.total(self.masters, "blpop"), 1)
        self.assertEqual(self.total(self.replicas, "watch"), 0)
        self.assertTrue(self.poll(client, "{tx}a", "3"))

    def test_2b_readwrite_keeps_a_clients_reads_on_masters(self):
        proxy = self.start_proxy("--read-from", "replica")
        client = redis.Redis(port=proxy.port, decode_responses=True, single_connection_client=True)
        other = redis.Redis(port=proxy.port, decode_responses=True)
        self.assertTrue(client.execute_command("READWRITE"))
        self.reset_stats()
        # Read-your-writes: each value is read right after it was written, on the master.
        for i in range(50):
            self.assertTrue(client.set("rw:%d" % i, i))
            self.assertEqual(client.get("rw:%d" % i), str(i))
        self.assertEqual(self.total(self.masters, "get"), 50)
        self.assertEqual(self.total(self.replicas, "get"), 0)
        self.assertTrue(self.poll(other, "rw:49", "49"))
        # Other clients still read on replicas; READONLY (or RESET) brings the client back to --read-from.
        self.reset_stats()
        self.assertEqual(other.get("rw:1"), "1")
        self.assertTrue(client.execute_command("READONLY"))
        self.assertEqual(client.get("rw:1"), "1")
        self.assertTrue(client.execute_command("READWRITE"))
        self.assertTrue(client.execute_command("RESET"))
        self.assertEqual(client.get("rw:1"), "1")
        self.assertEqual(self.total(self.replicas, "get"), 3)
        self.assertEqual(self.total(self.masters, "get"), 0)

    def test_2c_acl_users_read_on_replicas_that_know_them(self):
        # ACL users are each node's own: "everywhere" exists on every node, "mastersonly" on the masters only.
        for n in self.cluster.nodes:
            self.node(n).execute_command("ACL", "SETUSER", "everywhere", "on", ">pw1", "~*", "+@all")
        for n in self.masters:
            self.node(n).execute_command("ACL", "SETUSER", "mastersonly", "on", ">pw2", "~*", "+@all")
        proxy = self.start_proxy("--read-from", "prefer-replica", "--client-auth", "acl", login=("everywhere", "pw1"))
        writer = redis.Redis(port=proxy.port, username="everywhere", password="pw1", decode_responses=True)
        writer.set("acl:1", "a")
        self.assertTrue(self.poll(writer, "acl:1", "a"))
        self.reset_stats()
        for _ in range(10):
            self.assertEqual(writer.get("acl:1"), "a")
        self.assertEqual(self.total(self.replicas, "get"), 10, "%s\n%s" % (
            proxy_info(proxy.port, username="everywhere", password="pw1"),
            self.cluster.cli(self.cluster.nodes[0], "cluster", "shards").replace("\n", " ")))
        self.assertEqual(self.total(self.masters, "get"), 0)
        # The replica refuses the other user's login: its reads go to the master (prefer-replica), no error.
        reader = redis.Redis(port=proxy.port, username="mastersonly", password="pw2", decode_responses=True)
        self.reset_stats()
        for _ in range(10):
            self.assertEqual(reader.get("acl:1"), "a")
        self.assertEqual(self.total(self.masters, "get"), 10)
        self.assertEqual(errors_of(proxy_info(proxy.port, username="everywhere", password="pw1")), {})

    def poll(self, client, key, value, timeout=5):
        deadline = time.time() + timeout
        while client.get(key) != value:
            if time.time() > deadline:
                return False
            time.sleep(0.05)
        return True

    def test_3_master_sends_nothing_to_replicas(self):
        for flags in ((), ("--read-from", "master")):
            proxy = self.start_proxy(*flags)
            client = redis.Redis(port=proxy.port, decode_responses=True)
            client.set("rm:1", "a")
            self.reset_stats()
            for _ in range(100):
                self.assertEqual(client.get("rm:1"), "a")
            self.assertEqual(client.mget(["rm:1", "rm:2"]), ["a", None])
            self.assertEqual(self.total(self.masters, "get"), 100)
            for command in ("get", "mget", "readonly"):
                self.assertEqual(self.total(self.replicas, command), 0, (flags, command))
            self.assertEqual(proxy_info(proxy.port)["replica_reads"], 0)

    def test_4_config_file_and_bad_values(self):
        path = os.path.join(self.cluster.dir, "read-from.json")
        with open(path, "w") as f:
            json.dump({"read-from": "replica"}, f)
        proxy = self.start_proxy("--config", path)
        client = redis.Redis(port=proxy.port, decode_responses=True)
        client.set("rc:1", "a")
        self.assertTrue(self.poll(client, "rc:1", "a"))
        self.reset_stats()
        for _ in range(20):
            self.assertEqual(client.get("rc:1"), "a")
        self.assertEqual(self.total(self.replicas, "get"), 20)
        self.assertEqual(self.total(self.masters, "get"), 0)
        # The command line wins over the file.
        proxy = self.start_proxy("--config", path, "--read-from", "master")
        client = redis.Redis(port=proxy.port, decode_responses=True)
        self.reset_stats()
        self.assertEqual(client.get("rc:1"), "a")
        self.assertEqual(self.total(self.replicas, "get"), 0)

        with open(path, "w") as f:
            json.dump({"read-from": "replicas"}, f)
        run = subprocess.run([harness.PROXY_BIN, "--seed", self.cluster.seed(), "--config", path],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(run.returncode, 2)
        self.assertIn("read-from: expected master, replica or prefer-replica", run.stderr)
        run = subprocess.run([harness.PROXY_BIN, "--seed", self.cluster.seed(), "--read-from", "slave"],
                             capture_output=True, text=True, timeout=30)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("--read-from", run.stderr + run.stdout)
        run = subprocess.run([harness.PROXY_BIN, "--help"], capture_output=True, text=True, timeout=30)
        self.assertIn("prefer-replica", run.stdout)

    def reads_during(self, mover, slots, label):
        """Three clients read keys of `slots` through a --read-from replica proxy, without pause, while mover()
        moves them: no read may get an error. Returns how many reads answered nil."""
        proxy = self.start_proxy("--read-from", "replica")
        client = redis.Redis(port=proxy.port, decode_responses=True)
        keys = []
        for i in range(100000):
            if key_slot(("%s:%d" % (label, i)).encode()) in slots:
                keys.append("%s:%d" % (label, i))
            if len(keys) == 200:
                break
        for k in keys:
            client.set(k, "v")
        # Until every key is on the replicas: a nil after this is the move's doing.
        deadline = time.time() + 5
        while [k for k in keys if client.get(k) != "v"]:
            self.assertLess(time.time(), deadline, "keys do not read back before the move")
            time.sleep(0.05)
        before = proxy_info(proxy.port)
        stop = threading.Event()
        errors, reads, nils = [], [0], [0]

        def reader():
            c = redis.Redis(port=proxy.port, decode_responses=True)
            while not stop.is_set():
                for k in keys:
                    try:
                        value = c.get(k)
                    except redis.RedisError as e:
                        errors.append("%s: %s" % (k, e))
                        continue
                    reads[0] += 1
                    if value is None:
                        nils[0] += 1

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.3)
            mover()
            time.sleep(1.5)  # reads go on while the proxy and the new owner's replica catch up
        finally:
            stop.set()
            for t in threads:
                t.join()
        after = proxy_info(proxy.port)
        print("%s: %d reads during the move, %d of them nil" % (label, reads[0], nils[0]), file=sys.stderr)
        self.assertEqual(errors[:5], [])
        self.assertGreater(reads[0], 0)
        self.assertGreater(after["replica_reads"] - before["replica_reads"], 0)
        self.assertEqual(errors_of(after), {})
        # Once settled, every key reads back, and reads are back on the new owner's replica (after the proxy's
        # second of reading a slot that changed owner on its master, which each MOVED it meets starts again).
        started = time.time()
        while True:
            self.reset_stats()
            wrong = [k for k in keys if client.get(k) != "v"]
            on_replicas = self.total(self.replicas, "get")
            if not wrong and on_replicas > 0:
                break
            self.assertLess(time.time(), started + 5, "after the move, %d keys do not read back and %d reads ran "
                            "on replicas; the proxy says %s" % (len(wrong), on_replicas, proxy_info(proxy.port)))
            time.sleep(0.1)
        print("%s: reads back on replicas %.1f s after the move" % (label, time.time() - started), file=sys.stderr)
        return nils[0]

    def test_5_reads_during_reshard_get_no_error(self):
        source, target, _ = self.cluster.masters_by_slot()
        self.assertIn(0, self.cluster.slots_of(source))
        source_id, target_id = self.cluster.node_id(source), self.cluster.node_id(target)

        def reshard():
            # The 20 slots the reshard moves first: the source's lowest.
            run = subprocess.run(["redis-cli", "--cluster", "reshard", self.cluster.seed(), "--cluster-from",
                                  source_id, "--cluster-to", target_id, "--cluster-slots", "20", "--cluster-yes",
                                  "--cluster-pipeline", "1"], capture_output=True, text=True, timeout=300)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            self.cluster.wait_owner(range(20), target_id)
        # Nils are possible here: MIGRATE takes keys off the source (and its replica) before the slot moves.
        self.reads_during(reshard, range(20), "rs")

    def test_5b_reads_during_slotshift_move_get_no_error(self):
        if not os.path.exists(harness.SLOTSHIFT_BIN):
            self.skipTest("slotshift not built")
        _, source, target = self.cluster.masters_by_slot()
        slots = range(min(self.cluster.slots_of(source)), min(self.cluster.slots_of(source)) + 20)
        target_id = self.cluster.node_id(target)

        def move():
            run = subprocess.run([harness.SLOTSHIFT_BIN, "move", "--cluster", self.cluster.seed(), "--slots",
                                  "%d-%d" % (slots[0], slots[-1]), "--to", target_id],
                                 capture_output=True, text=True, timeout=120)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            self.cluster.wait_owner(slots, target_id)
        self.reads_during(move, slots, "sm")

    def test_6_prefer_replica_falls_back_when_replicas_stop(self):
        proxy = self.start_proxy("--read-from", "prefer-replica")
        strict = self.start_proxy("--read-from", "replica", "--request-timeout-ms", "500")
        client = redis.Redis(port=proxy.port, decode_responses=True)
        values = self.write_and_read_back(client, "pf", 100)
        self.reset_stats()
        for k, v in values.items():
            self.assertEqual(client.get(k), v)
        self.assertEqual(self.total(self.replicas, "get"), 100)
        self.assertEqual(self.total(self.masters, "get"), 0)
        for r in self.replicas:
            try:
                self.node(r).shutdown(nosave=True)
            except redis.ConnectionError:
                pass
        # Reads go on, all answered, for longer than a failed replica is left alone.
        deadline = time.time() + 7
        reads = 0
        while time.time() < deadline:
            for k, v in values.items():
                self.assertEqual(client.get(k), v)
                reads += 1
        self.assertGreaterEqual(self.total(self.masters, "get"), reads)
        info = proxy_info(proxy.port)
        self.assertEqual(errors_of(info), {})
        self.assertGreater(info["replica_reads_on_master"], 0)
        # --read-from replica does not read from masters: with no replica left, a read fails after the request
        # timeout, saying why.
        self.reset_stats(self.masters)
        with self.assertRaises(redis.ResponseError) as raised:
            redis.Redis(port=strict.port).get("pf:1")
        self.assertIn("no replica of", str(raised.exception))
        self.assertEqual(self.total(self.masters, "get"), 0)


class ReadFromTlsTest(unittest.TestCase):
    """A TLS-only cluster that requires client certificates, and a login: replica connections use both, then say
    READONLY, before any read."""

    def test_replica_reads_over_tls_with_a_login(self):
        cluster = harness.Cluster(masters=3, replicas=1, tls=True)
        self.addCleanup(cluster.stop)
        masters = cluster.masters()
        replicas = [n for n in cluster.nodes if n not in masters]
        # The default user needs a password on every node (ACLs are each node's own); replicas log in to their
        # masters with it.
        for n in cluster.nodes:
            cluster.cli(n, "config", "set", "masterauth", "s3cret")
            cluster.cli(n, "config", "set", "requirepass", "s3cret")
        cluster.login = ("default", "s3cret")
        tls = cluster.tls_dir
        proxy = harness.Proxy(cluster, "--read-from", "replica", "--masterauth", "s3cret", "--backend-tls",
                              "--backend-tls-ca-cert-file", os.path.join(tls, "ca.crt"),
                              "--backend-tls-cert-file", os.path.join(tls, "client.crt"),
                              "--backend-tls-key-file", os.path.join(tls, "client.key"))
        self.addCleanup(proxy.stop)
        client = redis.Redis(port=proxy.port, decode_responses=True)
        for i in range(30):
            client.set("tls:%d" % i, i)
        node = lambda n: cluster.redis(n, decode_responses=True)  # noqa: E731
        deadline = time.time() + 5
        while [i for i in range(30) if client.get("tls:%d" % i) != str(i)]:
            self.assertLess(time.time(), deadline, "keys do not read back over TLS")
            time.sleep(0.05)
        for n in cluster.nodes:
            node(n).config_resetstat()
        for i in range(30):
            self.assertEqual(client.get("tls:%d" % i), str(i))
        self.assertEqual(sum(calls(node(n), "get") for n in replicas), 30)
        self.assertEqual(sum(calls(node(n), "get") for n in masters), 0)
        self.assertEqual(errors_of(proxy_info(proxy.port)), {})


if __name__ == "__main__":
    harness.main()
