#!/usr/bin/python3
"""slotshift on a cluster whose default user is off: status, check, a move under writers (its replica link
included) and a fix, logged in as an ACL user with exactly the rules the README gives, its password from a file.
Run by ctest; runs alone too: tests/integration/slotshift_acl_test.py [-k pattern]."""

import logging
import os
import subprocess
import sys
import threading
import unittest

import redis
from redis.cluster import RedisCluster

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# The README's line for slotshift's own user ("Logins" under "Inspecting a cluster"), as written there.
SLOTSHIFT_USER = ("on >{pw} ~* &* -@all +@read +@write +@keyspace +@connection +asking +psync +replconf +info "
                  "+role +cluster +config|get +config|set +client|list +client|id +client|setname +client|pause "
                  "+client|unpause +client|kill +multi +exec +function|list")
ADMIN = ("admin", "adminpw")
# redis-py's cluster client logs every MOVED it follows while the slots move; they are expected here.
logging.getLogger("redis.cluster").setLevel(logging.CRITICAL)


class SlotshiftAsAnAclUser(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)
        for node in cls.cluster.nodes:
            cls.cluster.cli(node, "ACL", "SETUSER", ADMIN[0], "on", ">" + ADMIN[1], "~*", "&*", "+@all")
            c = redis.Redis(host=node[0], port=node[1], username=ADMIN[0], password=ADMIN[1])
            c.execute_command("ACL", "SETUSER", "slotshift", *SLOTSHIFT_USER.format(pw="slotshiftpw").split())
            c.execute_command("ACL", "SETUSER", "default", "off")
        cls.cluster.login = ADMIN
        cls.pwfile = os.path.join(cls.cluster.dir, "slotshift-password")
        with open(cls.pwfile, "w") as f:
            f.write("slotshiftpw\n")
        host, port = cls.cluster.nodes[0]
        cls.admin = RedisCluster(host=host, port=port, username=ADMIN[0], password=ADMIN[1])

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def slotshift(self, *args):
        run = subprocess.run([harness.SLOTSHIFT_BIN, *args, "--cluster", self.cluster.seed(), "--user", "slotshift",
                              "--password-file", self.pwfile], capture_output=True, text=True, timeout=300)
        return run.returncode, run.stdout + run.stderr

    def node(self, address):
        return redis.Redis(host=address[0], port=address[1], username=ADMIN[0], password=ADMIN[1])

    def test_status_check_move_under_writers_and_fix(self):
        code, out = self.slotshift("status")
        self.assertEqual(code, 0, out)
        code, out = self.slotshift("check")
        self.assertEqual(code, 0, out)

        source, target, _ = [tuple(a) for a in self.cluster.masters_by_slot()]
        target_id = self.node(target).execute_command("CLUSTER", "MYID").decode()
        slots = list(range(0, 1000))
        keys = ["acl:%d" % i for i in range(3000)]
        for k in keys:
            self.admin.set(k, k)
        self.admin.hset("acl:h", mapping={"a": 1})
        self.admin.rpush("acl:l", "a", "b")

        # Writers as the admin for the whole move: every acknowledged write must be there after it.
        acked = {}
        stop = threading.Event()
        errors = []

        def write():
            c = RedisCluster(host=self.cluster.nodes[0][0], port=self.cluster.nodes[0][1], username=ADMIN[0],
                             password=ADMIN[1])
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
            code, out = self.slotshift("move", "--slots", harness.format_slots(slots), "--to", target_id)
        finally:
            stop.set()
            writer.join(60)
        self.assertEqual(code, 0, out)
        self.assertIn("moved", out)
        self.cluster.wait_owner(slots, target_id)
        for k in keys:
            self.assertEqual(self.admin.get(k).decode(), acked.get(k, k), k)
        self.assertEqual(self.admin.hgetall("acl:h"), {b"a": b"1"})
        code, out = self.slotshift("check")
        self.assertEqual(code, 0, out)

        # A slot left open with a key on each side: fix closes it as the same user.
        slot = 5000
        key = next(k for k in ("fix:%d" % i for i in range(100000)) if self.admin.keyslot(k) == slot)
        owner = next(a for a in map(tuple, self.cluster.masters_by_slot()) if slot in self.cluster.slots_of(a))
        other = next(a for a in map(tuple, self.cluster.masters_by_slot()) if a != owner)
        self.admin.set(key, "new")
        o, t = self.node(owner), self.node(other)
        t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", o.execute_command("CLUSTER", "MYID"))
        o.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", t.execute_command("CLUSTER", "MYID"))
        code, out = self.slotshift("check")
        self.assertEqual(code, 1, out)
        code, out = self.slotshift("fix", "--yes")
        self.assertEqual(code, 0, out)
        self.assertEqual(self.admin.get(key), b"new")
        code, out = self.slotshift("check")
        self.assertEqual(code, 0, out)
        self.assertEqual(errors, [])


if __name__ == "__main__":
    harness.main()
