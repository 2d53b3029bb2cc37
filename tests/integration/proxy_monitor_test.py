#!/usr/bin/python3
"""MONITOR through slotshift-proxy: every command run on every master of the cluster, through one client
connection, each line marked with the node it ran on (node=HOST:PORT inside the brackets, where redis-py's and
redis-cli's monitor parsers still read the line). Commands sent through the proxy and straight to the nodes, what
a monitoring client may send afterwards (as on Redis 7.0), RESET, the node connections closed when the client
leaves or reads too slowly, the max-blocking-connections cap, ACL pass-through (the node connections log in as the
client; a user the nodes refuse MONITOR gets their NOPERM), a master that joins and leaves, a node restarted
under a monitor, and a TLS-only cluster. Run by ctest;
runs alone too: tests/integration/proxy_monitor_test.py [-k pattern]."""

import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import unittest

import redis
from redis.crc import key_slot

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fix_test import kill_node, start_node  # noqa: E402

# A monitor line as the proxy writes it: Redis's, with the node before the client's address.
LINE = re.compile(r'^\+?(\d+\.\d{6}) \[(\d+) node=([\d.]+:\d+) (\S+)\] (.*)$')


def command_bytes(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def key_in(slots, prefix):
    """A key whose slot is one of `slots`."""
    wanted = set(slots)
    for i in range(1000000):
        k = "%s%d" % (prefix, i)
        if key_slot(k.encode()) in wanted:
            return k
    raise AssertionError("no key found")


def addr(node):
    return "%s:%d" % node


class RawMonitor:
    """A client connection in monitor mode, read by a thread: monitor lines go to `lines`, every other reply
    (the +OK, errors, PONG, ...) to `replies`, in order."""

    def __init__(self, port, start=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.lines, self.replies = [], []
        self.closed = False
        self.buf = b""
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()
        if start:
            self.send("MONITOR")
            self.assertReply(b"+OK")

    def read(self):
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return
            self.buf += chunk
            while b"\r\n" in self.buf:
                line, self.buf = self.buf.split(b"\r\n", 1)
                if LINE.match(line.decode(errors="replace")):
                    self.lines.append(line.decode(errors="replace"))
                elif line.startswith(b"$") and line != b"$-1":
                    # A bulk reply (INFO, GET): its body is the next line(s); kept whole.
                    n = int(line[1:])
                    while len(self.buf) < n + 2:
                        more = self.sock.recv(65536)
                        if not more:
                            self.closed = True
                            return
                        self.buf += more
                    self.replies.append(self.buf[:n])
                    self.buf = self.buf[n + 2:]
                else:
                    self.replies.append(line)

    def send(self, *args):
        self.sock.sendall(command_bytes(*args))

    def next_reply(self, timeout=10):
        deadline = time.time() + timeout
        while not self.replies and time.time() < deadline:
            time.sleep(0.01)
        if not self.replies:
            raise AssertionError("no reply within %s s (lines so far: %r)" % (timeout, self.lines[-5:]))
        return self.replies.pop(0)

    def assertReply(self, expected, timeout=10):
        got = self.next_reply(timeout)
        if not got.startswith(expected):
            raise AssertionError("expected %r, got %r" % (expected, got))
        return got

    def wait_line(self, predicate, timeout=10):
        """The first line (from the start) that matches, waiting for it up to `timeout`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            time.sleep(0.02)
        raise AssertionError("no such monitor line within %s s; last ones: %r" % (timeout, self.lines[-10:]))

    def close(self):
        try:
            # Shut down first: a close alone, while the reader thread is in recv(), sends nothing to the proxy.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class Monitor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)
        # The slot map is reloaded every 200 ms: a master that joins is seen soon.
        cls.proxy = harness.Proxy(cls.cluster, "--allow-admin-commands", "--refresh-interval-ms", "200")
        cls.masters = cls.cluster.masters_by_slot()
        # One key on each master, by the master's address.
        cls.keys = {addr(m): key_in(cls.cluster.slots_of(m), "k%d:" % i) for i, m in enumerate(cls.masters)}

    @classmethod
    def tearDownClass(cls):
        try:
            cls.proxy.stop()
        finally:
            cls.cluster.stop()

    def client(self, timeout=30):
        return redis.Redis(host="127.0.0.1", port=self.proxy.port, socket_timeout=timeout)

    def monitor_connections(self, node):
        """The connections in monitor mode on `node` (CLIENT LIST flags O)."""
        out = self.cluster.cli(node, "client", "list")
        return sum(1 for line in out.splitlines() if re.search(r" flags=\S*O", line))

    def wait_monitor_connections(self, expected, timeout=10):
        deadline = time.time() + timeout
        while True:
            got = {addr(m): self.monitor_connections(m) for m in self.masters}
            if got == expected or time.time() > deadline:
                return got
            time.sleep(0.05)

    def test_redis_py_sees_every_master_marked_with_its_node(self):
        r = self.client()
        with self.client(timeout=10).monitor() as m:
            for node, key in self.keys.items():
                r.set(key, "through-proxy")
                host, port = node.split(":")
                redis.Redis(host=host, port=int(port)).set(key, "direct")
            want = {(node, "SET %s %s" % (key, how)) for node, key in self.keys.items()
                    for how in ("through-proxy", "direct")}
            seen = {}
            deadline = time.time() + 10
            while want - set(seen) and time.time() < deadline:
                c = m.next_command()
                # redis-py reads the node as part of the client's address: "node=HOST:PORT CLIENT-IP".
                node = c["client_address"].split()[0]
                self.assertTrue(node.startswith("node="), c)
                self.assertRegex(c["client_port"], r"^\d+$")
                self.assertEqual(c["db"], 0)
                self.assertIsInstance(c["time"], float)
                seen[(node[len("node="):], c["command"])] = c
        self.assertEqual(want - set(seen), set(), "commands not seen, or not marked with the node they ran on")

    def test_redis_cli_monitor(self):
        cli = subprocess.Popen(["redis-cli", "-p", str(self.proxy.port), "monitor"], stdout=subprocess.PIPE,
                               text=True)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(cli.stdout), daemon=True)
        reader.start()
        try:
            deadline = time.time() + 10
            while "OK\n" not in lines and time.time() < deadline:
                time.sleep(0.02)
            self.assertIn("OK\n", lines)
            key = next(iter(self.keys.values()))
            self.client().set(key, "cli")
            node = [n for n, k in self.keys.items() if k == key][0]
            pattern = re.compile(r'^\d+\.\d{6} \[0 node=%s 127\.0\.0\.1:\d+\] "set" "%s" "cli"$' % (
                re.escape(node), re.escape(key)), re.IGNORECASE)
            deadline = time.time() + 10
            while not any(pattern.match(line.rstrip("\n")) for line in lines) and time.time() < deadline:
                time.sleep(0.02)
        finally:
            cli.terminate()
            cli.wait(10)
            reader.join(10)
            cli.stdout.close()
        self.assertTrue(any(pattern.match(line.rstrip("\n")) for line in lines), lines[-10:])

    def test_commands_while_monitoring_as_on_redis_and_reset_ends_it(self):
        before = self.wait_monitor_connections({addr(m): 0 for m in self.masters})
        mon = RawMonitor(self.proxy.port)
        try:
            self.assertEqual(self.wait_monitor_connections({addr(m): 1 for m in self.masters}),
                             {addr(m): 1 for m in self.masters}, "one monitor connection per master")
            # Redis 7.0 counts a monitor among its replicas: commands on the keyspace are refused, the rest
            # run, and a second MONITOR gets no reply at all.
            mon.send("GET", "x")
            mon.assertReply(b"-ERR Replica can't interact with the keyspace")
            mon.send("PUBLISH", "c", "m")
            mon.assertReply(b"-ERR Replica can't interact with the keyspace")
            mon.send("MONITOR")
            mon.send("PING")
            mon.assertReply(b"+PONG")
            mon.send("GET")
            mon.assertReply(b"-ERR wrong number of arguments for 'get' command")
            mon.send("ECHO", "hi")
            self.assertEqual(mon.next_reply(), b"hi")
            mon.send("RESET")
            mon.assertReply(b"+RESET")
            count = len(mon.lines)
            self.assertEqual(self.wait_monitor_connections(before), before, "RESET leaves node connections")
            # No longer monitoring: commands run again, and no line comes any more.
            self.client().set(self.keys[addr(self.masters[0])], "after-reset")
            mon.send("GET", self.keys[addr(self.masters[0])])
            self.assertEqual(mon.next_reply(), b"after-reset")
            time.sleep(0.3)
            self.assertEqual(mon.lines[count:], [])
            # MONITOR again after the RESET works, and QUIT closes like Redis's.
            mon.send("MONITOR")
            mon.assertReply(b"+OK")
            mon.send("QUIT")
            mon.assertReply(b"+OK")
            deadline = time.time() + 10
            while not mon.closed and time.time() < deadline:
                time.sleep(0.02)
            self.assertTrue(mon.closed)
        finally:
            mon.close()
        self.assertEqual(self.wait_monitor_connections(before), before, "QUIT leaves node connections")

    def test_client_disconnect_closes_the_node_connections(self):
        before = self.wait_monitor_connections({addr(m): 0 for m in self.masters})
        monitors = [RawMonitor(self.proxy.port) for _ in range(3)]
        expected = {node: count + 3 for node, count in before.items()}
        self.assertEqual(self.wait_monitor_connections(expected), expected)
        for mon in monitors:
            mon.close()
        self.assertEqual(self.wait_monitor_connections(before), before)

    def test_monitor_is_an_admin_command(self):
        proxy = harness.Proxy(self.cluster)
        try:
            with self.assertRaisesRegex(redis.RedisError, "allow-admin-commands"):
                with redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=10).monitor():
                    pass
            # Inside MULTI, refused with the reason, as the other connection-state commands.
            r = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=10)
            p = r.pipeline(transaction=True)
            p.execute_command("MONITOR")
            with self.assertRaisesRegex(redis.RedisError, "EXECABORT|inside a transaction"):
                p.execute()
        finally:
            proxy.stop()

    def test_acl_pass_through_monitors_as_the_client(self):
        for node in self.cluster.nodes:
            self.cluster.cli(node, "acl", "setuser", "mon", "on", ">monpw", "~*", "&*", "+@all")
            self.cluster.cli(node, "acl", "setuser", "nomon", "on", ">nomonpw", "~*", "&*", "+@all", "-monitor")
        proxy = harness.Proxy(self.cluster, "--allow-admin-commands", "--client-auth", "acl", login=("mon", "monpw"))
        try:
            # A user the nodes do not allow MONITOR gets the node's own refusal, and nothing is monitored.
            with self.assertRaisesRegex(redis.exceptions.NoPermissionError,
                                        "no permissions to run the 'monitor' command"):
                with redis.Redis(host="127.0.0.1", port=proxy.port, username="nomon", password="nomonpw",
                                 socket_timeout=10).monitor():
                    pass
            # One who may: the node connections are logged in as that user.
            mon = RawMonitor(proxy.port, start=False)
            try:
                mon.send("AUTH", "mon", "monpw")
                mon.assertReply(b"+OK")
                mon.send("MONITOR")
                mon.assertReply(b"+OK")
                for node in self.masters:
                    monitors = [line for line in self.cluster.cli(node, "client", "list").splitlines()
                                if re.search(r" flags=\S*O", line)]
                    self.assertEqual(len(monitors), 1, monitors)
                    self.assertIn(" user=mon ", monitors[0])
            finally:
                mon.close()
        finally:
            proxy.stop()
            for node in self.cluster.nodes:
                self.cluster.cli(node, "acl", "deluser", "mon", "nomon")
        self.assertEqual(self.wait_monitor_connections({addr(m): 0 for m in self.masters}),
                         {addr(m): 0 for m in self.masters})

    def test_monitor_at_the_blocking_connection_cap_is_refused(self):
        proxy = harness.Proxy(self.cluster, "--allow-admin-commands", "--max-blocking-connections", "3")
        try:
            r = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=10)
            blocked = threading.Thread(target=lambda: r.blpop(["cap:list"], timeout=1))
            blocked.start()
            time.sleep(0.3)
            # One connection is the BLPOP's: three masters need three more.
            with self.assertRaisesRegex(redis.RedisError, "max-blocking-connections is 3"):
                with redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=10).monitor():
                    pass
            blocked.join()
            # The BLPOP is over: its connection is closed once idle (at once when the MONITOR's worker is its
            # worker, else after 2 s), and MONITOR gets all three.
            deadline = time.time() + 10
            while True:
                mon = RawMonitor(proxy.port, start=False)
                mon.send("MONITOR")
                reply = mon.next_reply()
                mon.close()
                if reply == b"+OK" or time.time() > deadline:
                    break
                time.sleep(0.2)
            self.assertEqual(reply, b"+OK")
        finally:
            proxy.stop()

    def test_slow_monitoring_client_is_closed_within_its_output_bound(self):
        before = self.wait_monitor_connections({addr(m): 0 for m in self.masters})
        proxy = harness.Proxy(self.cluster, "--allow-admin-commands", "--max-client-output-bytes", "1000000")
        try:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", proxy.port))
            s.sendall(command_bytes("MONITOR"))
            time.sleep(0.5)  # it reads nothing from here on
            r = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=30)
            value = "x" * 100000
            deadline = time.time() + 30
            closed = False
            while time.time() < deadline and not closed:
                for i in range(20):
                    r.set("slow:%d" % i, value)
                closed = "replies unread" in proxy.output()
            self.assertTrue(closed, proxy.output()[-2000:])
            # The client is closed, and its node connections with it.
            self.assertEqual(self.wait_monitor_connections(before), before)
            s.close()
        finally:
            proxy.stop()

    def move_empty_slot(self, slot, source, target):
        """Gives `slot` (no key in it) from `source` to `target`, as redis-cli --cluster reshard does."""
        source_id, target_id = self.cluster.node_id(source), self.cluster.node_id(target)
        self.cluster.cli(target, "cluster", "setslot", str(slot), "importing", source_id)
        self.cluster.cli(source, "cluster", "setslot", str(slot), "migrating", target_id)
        for node in [target, source] + [n for n in self.cluster.nodes if n not in (source, target)]:
            self.cluster.cli(node, "cluster", "setslot", str(slot), "node", target_id)

    def test_master_that_joins_gets_a_monitor_connection(self):
        mon = RawMonitor(self.proxy.port)
        try:
            new = start_node(self.cluster)
            new_id = self.cluster.node_id(new)
            self.cluster.cli(new, "cluster", "meet", self.cluster.nodes[0][0], str(self.cluster.nodes[0][1]))
            deadline = time.time() + 20
            while not all(any(e.id == new_id for e in self.cluster.view(n)) for n in self.cluster.nodes):
                self.assertLess(time.time(), deadline, "the new node did not join")
                time.sleep(0.2)
            # A slot with no key of this test: it becomes the new master's, which makes it a master of the
            # cluster for the proxy.
            source = self.masters[0]
            used = {key_slot(k.encode()) for k in self.keys.values()}
            slot = next(s for s in self.cluster.slots_of(source) if s not in used)
            self.move_empty_slot(slot, source, new)
            name = addr(new)
            mon.wait_line(lambda line: ("node=%s " % name) in line and '"monitor-started"' in line, timeout=20)
            key = key_in([slot], "joined:")
            deadline = time.time() + 20
            while True:
                try:
                    redis.Redis(host=new[0], port=new[1]).set(key, "on-the-new-master")
                    break
                except redis.ResponseError as e:  # until it knows it owns the slot
                    if time.time() > deadline:
                        raise AssertionError(str(e))
                    time.sleep(0.1)
            mon.wait_line(lambda line: ("node=%s " % name) in line and '"on-the-new-master"' in line)
            self.assertEqual(self.monitor_connections(new), 1)
            # The slot goes back: the node owns none, is no longer a master of the cluster, and its stream ends.
            redis.Redis(host=new[0], port=new[1]).delete(key)
            self.move_empty_slot(slot, new, source)
            mon.wait_line(lambda line: ("node=%s " % name) in line and '"monitor-stopped"' in line, timeout=20)
            deadline = time.time() + 10
            while self.monitor_connections(new) != 0 and time.time() < deadline:
                time.sleep(0.05)
            self.assertEqual(self.monitor_connections(new), 0)
            self.assertFalse(mon.closed)
        finally:
            mon.close()

    def test_node_restart_does_not_end_the_stream_of_the_others(self):
        mon = RawMonitor(self.proxy.port)
        try:
            restarted, others = self.masters[0], self.masters[1:]
            name = addr(restarted)
            # Killed, and started again on its port with its nodes.conf: every connection to it is lost, and it
            # comes back as the same master (well within the cluster's node timeout).
            kill_node(self.cluster, restarted)
            mon.wait_line(lambda line: ("node=%s " % name) in line and '"monitor-interrupted"' in line)
            for i, node in enumerate(others):
                host, port = node
                redis.Redis(host=host, port=port).set(self.keys[addr(node)], "during-%d" % i)
            for i, node in enumerate(others):
                mon.wait_line(lambda line, n=addr(node), i=i: ("node=%s " % n) in line and
                              '"during-%d"' % i in line)
            # Back: its stream resumes, said so, and what runs there shows again.
            start_node(self.cluster, port=restarted[1])
            mon.wait_line(lambda line: ("node=%s " % name) in line and '"monitor-resumed"' in line, timeout=30)
            # A restarted master serves once it has its cluster state back (about 2 s).
            deadline = time.time() + 30
            while True:
                try:
                    redis.Redis(host=restarted[0], port=restarted[1]).set(self.keys[name], "after-restart")
                    break
                except redis.ResponseError as e:
                    if "CLUSTERDOWN" not in str(e) or time.time() > deadline:
                        raise
                    time.sleep(0.1)
            mon.wait_line(lambda line: ("node=%s " % name) in line and '"after-restart"' in line)
            self.assertFalse(mon.closed)
            # The proxy's own lines parse as monitor lines too (redis-py's pattern).
            own = [line for line in mon.lines if "slotshift-proxy:0]" in line]
            for line in own:
                m = re.match(r"\+(\S+) \[(\d+) (.*)\] (.*)", line)
                self.assertIsNotNone(m, line)
                float(m.group(1))
                m.group(3).rsplit(":", 1)
        finally:
            mon.close()


class MonitorTls(unittest.TestCase):
    """The monitor connections speak TLS toward a TLS-only cluster, as every connection of the proxy does."""

    def test_monitor_over_tls_to_the_nodes(self):
        cluster = harness.Cluster(3, 0, tls=True)
        try:
            tls = cluster.tls_dir
            proxy = harness.Proxy(cluster, "--allow-admin-commands", "--backend-tls", "--backend-tls-ca-cert-file",
                                  os.path.join(tls, "ca.crt"), "--backend-tls-cert-file",
                                  os.path.join(tls, "client.crt"), "--backend-tls-key-file",
                                  os.path.join(tls, "client.key"))
            try:
                masters = cluster.masters_by_slot()
                keys = {addr(m): key_in(cluster.slots_of(m), "tls%d:" % i) for i, m in enumerate(masters)}
                mon = RawMonitor(proxy.port)
                try:
                    r = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=10)
                    for node, key in keys.items():
                        r.set(key, "over-tls")
                    for node, key in keys.items():
                        mon.wait_line(lambda line, n=node, k=key: ('node=%s ' % n) in line and
                                      '"%s" "over-tls"' % k in line)
                finally:
                    mon.close()
            finally:
                proxy.stop()
        finally:
            cluster.stop()

if __name__ == "__main__":
    harness.main()
