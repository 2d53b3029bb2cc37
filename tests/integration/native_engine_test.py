#!/usr/bin/python3
"""`slotshift move --engine native` (Valkey 9's CLUSTER MIGRATESLOTS) beyond what move_test's writers check:

  ThroughProxyTest   a client of the moving slots through slotshift-proxy during a native move of all slots of a
                     master: no error, every acknowledged write readable after, the proxy held every batch and
                     the move's batches stalled the writers within what it reports
  InterruptTest      slotshift interrupted (SIGINT) in the middle of a native move: the running migration is
                     cancelled, no migration is left running, every slot is owned by the source or the target,
                     no key is lost or doubled, and the cluster is consistent
  KilledTest         slotshift SIGKILLed while the servers run one of its migrations, then abort or resume: the
                     migration is stopped first, what the recovery says is what the nodes say, nothing lost
  RefusedTest        refused before anything is touched: on Redis 7.0 (no CLUSTER MIGRATESLOTS), with a target
                     that has a slot in manual IMPORTING (Valkey refuses to mix the two), with --fence proxy

Run by ctest as native_engine_it when valkey-9.1 is among SLOTSHIFT_TEST_SERVERS (tests/run.sh).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

import redis
from redis.crc import key_slot

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SERVER = "valkey-9.1"


def load(cluster, node, count, prefix="k"):
    """count keys of 100 bytes in the slots node owns; returns their names."""
    owned = set(cluster.slots_of(node))
    r = redis.Redis(*node)
    names, pipe, i = [], r.pipeline(transaction=False), 0
    while len(names) < count:
        k = "%s%d" % (prefix, i)
        i += 1
        if key_slot(k.encode()) in owned:
            pipe.set(k, "x" * 100)
            names.append(k)
            if len(names) % 5000 == 0:
                pipe.execute()
    pipe.execute()
    r.close()
    return names


def migrations(node):
    r = redis.Redis(*node, decode_responses=True)
    try:
        return [dict(zip(j[0::2], j[1::2])) for j in r.execute_command("CLUSTER", "GETSLOTMIGRATIONS")]
    finally:
        r.close()


def total_keys(cluster):
    return sum(redis.Redis(*m).dbsize() for m in cluster.masters())


class ThroughProxyTest(unittest.TestCase):
    def test_client_through_the_proxy_sees_no_error(self):
        cluster = harness.Cluster(3, 1, server=SERVER)
        proxy = None
        try:
            a, b, _ = cluster.masters_by_slot()
            load(cluster, a, 60000)
            proxy = harness.Proxy(cluster, admin=True)
            owned = set(cluster.slots_of(a))
            keys = []
            i = 0
            while len(keys) < 500:
                k = "c%d" % i
                i += 1
                if key_slot(k.encode()) in owned:
                    keys.append(k)
            acked, errors, stop = {}, [], threading.Event()

            def client():
                r = redis.Redis("127.0.0.1", proxy.port, socket_timeout=10)
                n = 0
                while not stop.is_set():
                    k = keys[n % len(keys)]
                    try:
                        if r.set(k, str(n)):
                            acked[k] = str(n).encode()
                        got = r.get(k)
                        if got != acked[k]:
                            errors.append("GET %s: %r, expected %r" % (k, got, acked[k]))
                    except redis.RedisError as e:
                        errors.append("%s: %s" % (type(e).__name__, e))
                    n += 1

            t = threading.Thread(target=client)
            t.start()
            time.sleep(0.3)
            run = subprocess.run([harness.SLOTSHIFT_BIN, "move", "--cluster", cluster.seed(), "--slots",
                                  harness.format_slots(owned), "--to", cluster.node_id(b), "--engine", "native",
                                  "--proxy", "127.0.0.1:%d" % proxy.admin_port, "--json"],
                                 capture_output=True, text=True, timeout=600)
            time.sleep(0.3)
            stop.set()
            t.join()
            report = json.loads(run.stdout)
            self.assertEqual(run.returncode, 0, "%s\n%s" % (run.stdout[-3000:], run.stderr[-3000:]))
            self.assertEqual(errors, [])
            self.assertGreater(len(acked), 400)
            cluster.wait_owner(owned, cluster.node_id(b))
            r = redis.Redis("127.0.0.1", proxy.port)
            for k, v in acked.items():
                self.assertEqual(r.get(k), v, k)
            self.assertEqual(total_keys(cluster), 60000 + len(acked))
            batches = report["batches"]
            self.assertGreater(len(batches), 1)
            for batch in batches:
                self.assertEqual(batch["proxies_held"], 1, batch)
            self.assertEqual(report["max_stall_ms"], max(b["stall_ms"] for b in batches))
            info = r.info("proxy")
            sys.stderr.write("native move through a proxy: %d batches, longest stall %.1f ms, %.1f s; the proxy met "
                             "%d MOVED and %d ASK (commands in flight when a handoff began)\n" % (
                                 len(batches), report["max_stall_ms"], report["elapsed_s"],
                                 info["redirects_moved"], info["redirects_ask"]))
            self.assertEqual(cluster.cli(a, "config", "get", "cluster-slot-migration-log-max-len").split()[1], "1000")
        finally:
            if proxy:
                proxy.stop()
            cluster.stop()


def loaded_cluster(test):
    """A cluster of 3 masters (stopped when the test ends) whose first master holds 60,000 keys: (cluster, that
    master, the second master, the keys of the cluster, the first master's slots)."""
    cluster = harness.Cluster(3, 0, server=SERVER)
    test.addCleanup(cluster.stop)
    a, b, _ = cluster.masters_by_slot()
    load(cluster, a, 60000)
    return cluster, a, b, total_keys(cluster), cluster.slots_of(a)


def native_move_mid_migration(test, cluster, slots, target, *extra):
    """slotshift move --engine native --json of slots to target, as a child process, returned once its first batch
    has moved and a later migration runs on the source (the owner of slots[0])."""
    source = next(n for n in cluster.masters() if slots[0] in cluster.slots_of(n))
    proc = subprocess.Popen([harness.SLOTSHIFT_BIN, "move", "--cluster", cluster.seed(), "--slots",
                             harness.format_slots(slots), "--to", cluster.node_id(target), "--engine", "native",
                             "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any(j["operation"] == "EXPORT" and j["state"] == "success" for j in migrations(source)):
        test.assertLess(time.time(), deadline, "no batch moved within 60 s")
        time.sleep(0.005)
    while not any(j["state"] not in ("success", "failed", "cancelled") for j in migrations(source)):
        test.assertLess(time.time(), deadline, "no second migration started")
        time.sleep(0.001)
    return proc


class InterruptTest(unittest.TestCase):
    def test_sigint_cancels_the_running_migration(self):
        cluster, a, b, before, owned = loaded_cluster(self)
        # Interrupt while a migration runs: after the first batch has moved, in the middle of a later one.
        proc = native_move_mid_migration(self, cluster, owned, b)
        proc.send_signal(signal.SIGINT)
        t_int = time.time()
        out, err = proc.communicate(timeout=60)
        self.assertLess(time.time() - t_int, 15, "slotshift took long to stop after SIGINT")
        self.assertNotEqual(proc.returncode, 0, out)
        report = json.loads(out)
        self.assertFalse(report["ok"])
        self.assertIn("interrupted", report["error"])
        # Nothing left running, every slot with one of the two, no key lost or doubled.
        for node in (a, b):
            running = [j for j in migrations(node) if j["state"] not in ("success", "failed", "cancelled")]
            self.assertEqual(running, [], "%s:%d %s" % (*node, report))
        cluster.wait_consistent()
        a_id, b_id = cluster.node_id(a), cluster.node_id(b)
        owner = cluster.owners()
        self.assertTrue(all(owner[s] in (a_id, b_id) for s in owned))
        self.assertGreater(sum(owner[s] == b_id for s in owned), 0)
        self.assertGreater(sum(owner[s] == a_id for s in owned), 0)
        self.assertEqual(total_keys(cluster), before)
        # And the move can be taken up again: the rest goes.
        rest = [s for s in owned if owner[s] == a_id]
        run = subprocess.run([harness.SLOTSHIFT_BIN, "move", "--cluster", cluster.seed(), "--slots",
                              harness.format_slots(rest), "--to", cluster.node_id(b), "--engine", "native"],
                             capture_output=True, text=True, timeout=600)
        self.assertEqual(run.returncode, 0, run.stdout[-2000:] + run.stderr[-2000:])
        sys.stderr.write("the rest moved: %s\n" % run.stdout.splitlines()[-1])
        cluster.wait_owner(owned, cluster.node_id(b))
        self.assertEqual(total_keys(cluster), before)


class KilledTest(unittest.TestCase):
    """slotshift SIGKILLed in the middle of a native move, while the servers run one of its migrations, then
    `slotshift abort` or `resume` with its journal: the migration the servers were running is stopped before
    anything is said, what the recovery says moved is what the nodes say, no key is lost or doubled, the
    migration log's length is put back, and resume moves the rest."""

    def killed_mid_migration(self, recovery):
        cluster, a, b, before, owned = loaded_cluster(self)
        log_len = {n: cluster.cli(n, "config", "get", "cluster-slot-migration-log-max-len").split()[1]
                   for n in (a, b)}
        journal = os.path.join(cluster.dir, "native.journal")
        proc = native_move_mid_migration(self, cluster, owned, b, "--journal", journal)
        proc.kill()
        proc.communicate(timeout=30)
        sys.stderr.write("after the kill: %s\n" % [(j["slot_ranges"], j["state"]) for j in migrations(a)
                                                    if j["state"] not in ("success", "failed", "cancelled")])
        r = subprocess.run([harness.SLOTSHIFT_BIN, recovery, "--cluster", cluster.seed(), "--journal", journal],
                           capture_output=True, text=True, timeout=600)
        sys.stderr.write("slotshift %s:\n%s%s" % (recovery, r.stdout[-3000:], r.stderr[-2000:]))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for node in (a, b):
            running = [j for j in migrations(node) if j["state"] not in ("success", "failed", "cancelled")]
            self.assertEqual(running, [], "%s:%d still runs a migration after %s" % (*node, recovery))
            self.assertEqual(cluster.cli(node, "config", "get", "cluster-slot-migration-log-max-len").split()[1],
                             log_len[node], "the migration log's length was not put back")
        cluster.wait_consistent()
        a_id, b_id = cluster.node_id(a), cluster.node_id(b)
        owner = cluster.owners()
        moved = [s for s in owned if owner[s] == b_id]
        self.assertTrue(all(owner[s] in (a_id, b_id) for s in owned))
        if recovery == "abort":
            # What abort says moved is what the nodes say.
            self.assertIn("aborted move", r.stdout)
            self.assertIn("owns %d of its slots (%s)" % (len(moved), harness.format_slots(moved).replace(",", " ")),
                          r.stdout)
            self.assertIn("%d slots are with their sources again" % (len(owned) - len(moved)), r.stdout)
            self.assertGreater(len(owned) - len(moved), 0)
        else:
            self.assertEqual(moved, owned, "resume did not move every slot")
        self.assertEqual(total_keys(cluster), before)
        # (A master emptied by a move turns into a replica of the target and loads a full sync first.)
        check = subprocess.run([harness.SLOTSHIFT_BIN, "check", "--cluster", cluster.seed(), "--timeout-ms",
                                "60000"],
                               capture_output=True, text=True, timeout=120)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)

    def test_killed_then_abort(self):
        self.killed_mid_migration("abort")

    def test_killed_then_resume(self):
        self.killed_mid_migration("resume")


class RefusedTest(unittest.TestCase):
    def refused(self, cluster, *args):
        run = subprocess.run([harness.SLOTSHIFT_BIN, "move", "--cluster", cluster.seed(), "--engine", "native",
                              "--json", *args], capture_output=True, text=True, timeout=120)
        report = json.loads(run.stdout)
        self.assertTrue(report.get("refused_before_start"), report)
        # A refusal the cluster causes (exit status 4) from one the command line causes (2).
        self.assertEqual(run.returncode, 2 if report["error"].startswith("--") else 4, run.stdout)
        self.assertEqual(report.get("exit_status"), run.returncode, report)
        return report["error"]

    def test_on_redis_7_0_and_from_a_source_left_refusing_writes(self):
        cluster = harness.Cluster(3, 0, server="redis-7.0")
        try:
            a, b, _ = cluster.masters_by_slot()
            error = self.refused(cluster, "--slots", "0-99", "--to", cluster.node_id(b))
            self.assertIn("Valkey 9.0 or later", error)
            self.assertIn("Redis 7.0", error)
            # A source that a killed move left refusing writes (min-replicas-to-write out of reach, the fence of
            # Redis 8.0 and Valkey 8.0 around a claim) is named, with what to do, by any engine.
            cluster.cli(a, "config", "set", "min-replicas-to-write", "2147483647")
            run = subprocess.run([harness.SLOTSHIFT_BIN, "move", "--cluster", cluster.seed(), "--slots", "0-99",
                                  "--to", cluster.node_id(b), "--json"], capture_output=True, text=True, timeout=120)
            self.assertEqual(run.returncode, 4, run.stdout)
            report = json.loads(run.stdout)
            self.assertTrue(report.get("refused_before_start"), report)
            self.assertEqual(report.get("outcome"), "refused", report)
            self.assertIn("refuses every write", report["error"])
            self.assertIn("CONFIG SET min-replicas-to-write 0", report["error"])
        finally:
            cluster.stop()

    def test_with_manual_importing_or_fence_proxy(self):
        cluster = harness.Cluster(3, 0, server=SERVER)
        try:
            a, b, c = cluster.masters_by_slot()
            error = self.refused(cluster, "--slots", "0-99", "--to", cluster.node_id(b), "--fence", "proxy")
            self.assertIn("--fence proxy", error)
            # A slot of c's in manual IMPORTING on the target b: nothing may start, and nothing did.
            slot = cluster.slots_of(c)[0]
            cluster.cli(b, "cluster", "setslot", str(slot), "importing", cluster.node_id(c))
            error = self.refused(cluster, "--slots", "0-99", "--to", cluster.node_id(b))
            self.assertIn("IMPORTING", error)
            self.assertEqual(migrations(a), [])
            self.assertEqual([s for s in range(100) if cluster.owners()[s] != cluster.node_id(a)], [])
        finally:
            cluster.stop()


if __name__ == "__main__":
    harness.main()
