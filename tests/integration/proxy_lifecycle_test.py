"""slotshift-proxy in operation. SIGTERM drains it: it stops accepting, answers what its clients have in flight (a
blocked BLPOP, a transaction being queued, a load of writes), closes each client once answered, says "draining" on
/readyz, and exits 0 once no client is left or at --drain-timeout-ms. SIGHUP reloads its settings under a load
of clients, none dropped: limits and passwords take effect, what needs a restart is named and kept, a broken file
changes nothing, a rotated node password is used for new connections. And /readyz while no cluster node answers.

  SLOTSHIFT_SOURCE_DIR=... SLOTSHIFT_BINARY_DIR=... tests/integration/proxy_lifecycle_test.py"""

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from proxy_resp3_test import command  # noqa: E402




class Client:
    """A raw RESP2 connection that reads replies whole, and tells a clean close from a reply."""

    opened = []  # closed after each test

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        Client.opened.append(self)

    def send(self, *args):
        self.sock.sendall(command(*args))

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed by the proxy")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-", b":"):
            return line
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError("closed by the proxy")
                self.buf += chunk
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise AssertionError("unexpected reply %r" % line)

    def call(self, *args):
        self.send(*args)
        return self.reply()

    def closed_cleanly(self, timeout):
        """True once the proxy closed the connection with nothing left unread, within timeout."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b"" and not self.buf
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(10)

    def peer_closed(self):
        """Whether the proxy's FIN has already arrived (as a client library checks before reusing a
        connection)."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable) and not self.buf and self.sock.recv(1, socket.MSG_PEEK) == b""

    def close(self):
        self.sock.close()


class Writer(threading.Thread):
    """INCR on a key of its own, one command at a time, until the proxy closes the connection. Each INCR
    acknowledged is counted; one sent that got no reply ("lost") or an error reply is what a drain must never
    cause."""

    def __init__(self, port, key, password=None, stop=None, reconnect=False):
        super().__init__(daemon=True)
        self.port = port
        self.reconnect = reconnect  # connects again when the proxy closed the connection (counted)
        self.reconnects = 0
        self.client = Client(port)
        if password:
            assert self.client.call("AUTH", password) == b"+OK"
        self.key = key
        self.stop = stop  # a threading.Event that ends the writer, with its connection still open
        self.acked = 0
        self.lost = 0
        self.errors = []
        self.closed = False

    def run(self):
        try:
            while not (self.stop and self.stop.is_set()):
                # A connection the proxy closed is not written to again, as a pooled client checks.
                if self.client.peer_closed():
                    self.closed = True
                    if not self.reconnect:
                        return
                    self.client.close()
                    try:
                        self.client = Client(self.port)
                    except OSError as e:
                        self.errors.append("could not connect again: %s" % e)
                        return
                    self.reconnects += 1
                    continue
                try:
                    r = self.client.call("INCR", self.key)
                except (EOFError, ConnectionError):
                    self.lost += 1
                    return
                if r.startswith(b":"):
                    self.acked += 1
                    if int(r[1:]) != self.acked:
                        self.errors.append("INCR %s gave %r after %d" % (self.key, r, self.acked))
                else:
                    self.errors.append(r.decode(errors="replace"))
        finally:
            self.client.close()


CLUSTER = None


def setUpModule():
    global CLUSTER
    CLUSTER = harness.Cluster(3, 0)


def tearDownModule():
    CLUSTER.stop()


def tag_on(cluster, master):
    """A hash tag whose slot the master owns."""
    direct = cluster.redis(master)
    slot = cluster.slots_of(master)[0]
    return next("d%d" % n for n in range(100000)
                if int(direct.execute_command("CLUSTER", "KEYSLOT", "d%d" % n)) == slot)


class Drain(unittest.TestCase):
    def setUp(self):
        self.cluster = CLUSTER

    def start_proxy(self, *flags, **kw):
        proxy = harness.Proxy(self.cluster, *flags, admin=True, admin_token="t", **kw)
        self.addCleanup(proxy.stop)
        self.addCleanup(lambda: [c.close() for c in Client.opened])
        return proxy

    def blocked_forever(self, proxy):
        """A client whose BLPOP waits for good (until the proxy closes it)."""
        blocked = Client(proxy.port)
        blocked.send("BLPOP", "drain-forever", 0)
        time.sleep(0.2)
        return blocked

    def exited(self, proxy, timeout):
        try:
            proxy.proc.wait(timeout)
        except Exception:
            return None
        return proxy.proc.returncode

    def test_drain_answers_what_is_in_flight_then_exits(self):
        proxy = self.start_proxy("--drain-timeout-ms", "8000")
        master = self.cluster.masters_by_slot()[0]
        direct = self.cluster.redis(master)
        # A list on the first master's slots, so that it can be pushed to directly.
        tag = tag_on(self.cluster, master)
        queue = "{%s}queue" % tag
        for key in ["{%s}w%d" % (tag, i) for i in range(4)] + [queue, "{%s}tx" % tag]:
            self.cluster.redis(master).delete(key)

        idle = Client(proxy.port)
        self.assertEqual(idle.call("PING"), b"+PONG")
        blocked = Client(proxy.port)
        blocked.send("BLPOP", queue, 5)
        tx = Client(proxy.port)
        self.assertEqual(tx.call("MULTI"), b"+OK")
        self.assertEqual(tx.call("SET", "{%s}tx" % tag, "done"), b"+QUEUED")
        writers = [Writer(proxy.port, "{%s}w%d" % (tag, i)) for i in range(4)]
        for w in writers:
            w.start()
        time.sleep(0.5)
        self.assertEqual(proxy.admin_call("GET", "/readyz"), (200, "ready\n"))

        proxy.proc.send_signal(signal.SIGTERM)
        # Idle clients and the writers are closed between two commands; no new client is taken.
        self.assertTrue(idle.closed_cleanly(2), "an idle client stays open during the drain")
        for w in writers:
            w.join(5)
            self.assertFalse(w.is_alive(), "a writer was never closed")
        deadline = time.time() + 2
        refused = False
        while time.time() < deadline and not refused:
            try:
                socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
                time.sleep(0.05)
            except OSError:
                refused = True
        self.assertTrue(refused, "the proxy still accepts clients while draining")
        self.assertEqual(proxy.admin_call("GET", "/readyz"), (503, "draining\n"))
        self.assertIsNone(proxy.proc.poll(), "the proxy exited with a BLPOP and a transaction in flight")

        # What is in flight is answered: the blocked BLPOP gets a value pushed at its node, the transaction runs.
        direct.rpush(queue, "job")
        self.assertEqual(blocked.reply(), [queue.encode(), b"job"])
        self.assertTrue(blocked.closed_cleanly(2), "the BLPOP client was not closed once answered")
        self.assertIsNone(proxy.proc.poll())
        self.assertEqual(tx.call("EXEC"), [b"+OK"])
        self.assertTrue(tx.closed_cleanly(2), "the transaction's client was not closed once answered")
        self.assertEqual(self.exited(proxy, 3), 0, "the proxy did not exit 0 once its last client left")

        for w in writers:
            self.assertEqual(w.lost, 0, "an INCR got no reply: the connection closed under it")
            self.assertEqual(w.errors, [])
            self.assertTrue(w.closed)
            self.assertGreater(w.acked, 0)
            # Every acknowledged write is there, and nothing more ran.
            self.assertEqual(int(direct.get(w.key)), w.acked)
        self.assertEqual(direct.get("{%s}tx" % tag), b"done")
        out = proxy.output()
        m = re.search(r"drained in (\d+) ms: (\d+) client\(s\) closed once answered, (\d+) closed unfinished", out)
        self.assertIsNotNone(m, out)
        self.assertEqual(int(m.group(3)), 0, out)
        # The harness's own check that the proxy was up, the idle client, the BLPOP, the transaction and the
        # writers (the first check's connection may have closed before the drain).
        self.assertGreaterEqual(int(m.group(2)), 7, out)

    def test_held_command_of_a_client_that_left_still_runs(self):
        """As on one Redis, a command a client sent before it hung up still runs: held by a slot hold, it runs at
        the release, which the drain waits for."""
        proxy = self.start_proxy("--drain-timeout-ms", "5000", threads=1)
        key = "drain-orphan"
        slot = int(self.cluster.redis(self.cluster.masters()[0]).execute_command("CLUSTER", "KEYSLOT", key))
        owner = next(m for m in self.cluster.masters() if slot in self.cluster.slots_of(m))
        self.cluster.redis(owner).delete(key)
        self.assertEqual(proxy.admin_call("POST", "/v1/slots/hold",
                                          {"slots": str(slot), "ttl_ms": 4000, "owner": "t"})[0], 200)
        leaving = Client(proxy.port)
        leaving.send("SET", key, "ran")
        time.sleep(0.3)
        leaving.close()
        time.sleep(0.2)
        proxy.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        self.assertIsNone(proxy.proc.poll(), "the proxy exited with a held command of a client that left")
        self.assertEqual(proxy.admin_call("POST", "/v1/slots/release", {"slots": str(slot)})[0], 200)
        self.assertEqual(self.exited(proxy, 5), 0)
        self.assertEqual(self.cluster.redis(owner).get(key), b"ran")

    def test_deadline_closes_what_is_left(self):
        proxy = self.start_proxy("--drain-timeout-ms", "1000")
        blocked = self.blocked_forever(proxy)
        started = time.time()
        proxy.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.exited(proxy, 5), 0)
        took = time.time() - started
        self.assertGreaterEqual(took, 0.9, "the proxy did not wait for the BLPOP in flight")
        self.assertLess(took, 3, "the proxy waited past its drain deadline")
        with self.assertRaises((EOFError, ConnectionError)):
            blocked.reply()
        self.assertIn("0 client(s) closed once answered, 1 closed unfinished", proxy.output())

    def test_second_signal_stops_at_once(self):
        proxy = self.start_proxy("--drain-timeout-ms", "60000")
        blocked = self.blocked_forever(proxy)
        proxy.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        self.assertIsNone(proxy.proc.poll())
        started = time.time()
        proxy.proc.send_signal(signal.SIGINT)
        self.assertEqual(self.exited(proxy, 5), 0)
        self.assertLess(time.time() - started, 2)
        self.assertIn("while draining, stopping now", proxy.output())
        self.assertIn("1 closed unfinished", proxy.output())

    def test_no_drain_with_zero_timeout(self):
        proxy = self.start_proxy("--drain-timeout-ms", "0")
        blocked = self.blocked_forever(proxy)
        started = time.time()
        proxy.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.exited(proxy, 5), 0)
        self.assertLess(time.time() - started, 1)
        self.assertIn("stopping", proxy.output())

    def test_json_log_lines(self):
        proxy = self.start_proxy("--log-format", "json", "--drain-timeout-ms", "1000")
        proxy.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.exited(proxy, 5), 0)
        lines = [json.loads(l) for l in proxy.output().splitlines()]
        for line in lines:
            self.assertEqual(list(line), ["time", "level", "program", "message"])
            self.assertRegex(line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertEqual(line["program"], "slotshift-proxy")
        messages = [l["message"] for l in lines]
        self.assertTrue(messages[0].startswith("listening on 127.0.0.1:%d" % proxy.port), messages)
        self.assertTrue(any(m.startswith("signal 15: draining") for m in messages), messages)
        self.assertTrue(any(m.startswith("drained in") for m in messages), messages)

    def test_readyz_false_while_no_node_answers(self):
        proxy = self.start_proxy("--request-timeout-ms", "300", "--connect-timeout-ms", "300",
                                 "--refresh-interval-ms", "200")
        self.assertEqual(proxy.admin_call("GET", "/readyz"), (200, "ready\n"))
        pids = [int(self.cluster.redis(m).info("server")["process_id"]) for m in self.cluster.masters()]
        # Stopped for less than the cluster's node timeout (5 s), so that no node is failed over meanwhile;
        # resumed by a timer, whatever happens to the test.
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        resume = threading.Timer(3.5, lambda: [os.kill(pid, signal.SIGCONT) for pid in pids])
        resume.start()
        try:
            deadline = time.time() + 3.2
            got = None
            while time.time() < deadline:
                got = proxy.admin_call("GET", "/readyz", timeout=2)
                if got[0] == 503:
                    break
                time.sleep(0.1)
            self.assertEqual(got, (503, "no cluster node answered the last slot map reload\n"))
        finally:
            resume.join()
        deadline = time.time() + 5
        while time.time() < deadline and proxy.admin_call("GET", "/readyz")[0] != 200:
            time.sleep(0.1)
        self.assertEqual(proxy.admin_call("GET", "/readyz"), (200, "ready\n"))


class Reload(unittest.TestCase):
    def setUp(self):
        self.cluster = CLUSTER
        self.file = os.path.join(self.cluster.dir, "proxy-%s.json" % self.id().rsplit(".", 1)[1])

    def write(self, settings):
        with open(self.file + ".new", "w") as f:
            f.write(settings if isinstance(settings, str) else json.dumps(settings))
        os.replace(self.file + ".new", self.file)  # as a ConfigMap's update is swapped in whole

    def sighup(self, proxy, before):
        """Sends SIGHUP and returns the proxy's line about it (the first after `before` lines of output)."""
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 5
        while time.time() < deadline:
            lines = [l for l in proxy.output().splitlines() if "SIGHUP" in l]
            if len(lines) > before:
                return lines[before]
            time.sleep(0.05)
        self.fail("no line about the SIGHUP:\n" + proxy.output())

    def test_settings_change_under_load_and_no_client_is_dropped(self):
        self.write({"seed": [self.cluster.seed()], "requirepass": "first", "max-clients": 100,
                    "request-timeout-ms": 5000})
        proxy = harness.Proxy(self.cluster, "--config", self.file, login=("first",))
        self.addCleanup(proxy.stop)
        tag = tag_on(self.cluster, self.cluster.masters_by_slot()[0])
        direct = self.cluster.redis(self.cluster.masters_by_slot()[0])
        stop = threading.Event()
        writers = [Writer(proxy.port, "{%s}r%d" % (tag, i), password="first", stop=stop) for i in range(3)]
        for w in writers:
            direct.delete(w.key)
        for w in writers:
            w.start()
        time.sleep(0.3)

        # A new password for clients, a tighter limit, a timeout, and an admin endpoint, which needs a restart. (The
        # port the harness gives on the command line wins over any in the file.)
        self.write({"seed": [self.cluster.seed()], "requirepass": "second", "max-clients": 6,
                    "request-timeout-ms": 2000, "admin": "127.0.0.1:%d" % harness.free_port()})
        line = self.sighup(proxy, 0)
        self.assertIn("SIGHUP: changed: request-timeout-ms, max-clients, requirepass; needs a restart (kept as it "
                      "was): admin; TLS: no TLS configured", line)
        self.assertNotIn("second", line)
        time.sleep(0.3)
        # New clients log in with the new password; connected ones stay logged in and keep writing.
        fresh = Client(proxy.port)
        self.assertTrue(fresh.call("AUTH", "first").startswith(b"-WRONGPASS"))
        self.assertEqual(fresh.call("AUTH", "second"), b"+OK")
        self.assertEqual(fresh.call("PING"), b"+PONG")
        # max-clients 6: the 3 writers, `fresh`, and 2 more; the next is refused as Redis refuses it.
        more = [Client(proxy.port) for _ in range(2)]
        self.assertEqual(more[-1].call("PING"), b"-NOAUTH Authentication required.")
        refused = Client(proxy.port)
        self.assertEqual(refused.reply(), b"-ERR max number of clients reached")

        # A file that does not parse changes nothing.
        self.write("{ not json")
        line = self.sighup(proxy, 1)
        self.assertIn("settings not reloaded, the old ones stay", line)
        self.assertEqual(fresh.call("PING"), b"+PONG")
        # The password removed: without it the mode would be none, which needs a restart; applied alone the
        # removal would leave a password mode with an empty password. Both wait for the restart.
        self.write({"seed": [self.cluster.seed()], "max-clients": 6, "request-timeout-ms": 2000})
        line = self.sighup(proxy, 2)
        self.assertIn("SIGHUP: needs a restart (kept as it was): client-auth, requirepass;", line)
        self.assertEqual(fresh.call("PING"), b"+PONG")
        # A close reaches the proxy when its loop reads the end of the stream, which may come after the next
        # connection's accept: wait until the proxy's own CLIENT LIST no longer has it, as one waits on Redis.
        more[0].close()
        deadline = time.time() + 5
        while time.time() < deadline and len(fresh.call("CLIENT", "LIST").splitlines()) > 5:
            time.sleep(0.05)
        self.assertEqual(len(fresh.call("CLIENT", "LIST").splitlines()), 5)  # writers, fresh, more[1]
        later = Client(proxy.port)
        self.assertEqual(later.call("PING"), b"-NOAUTH Authentication required.")
        self.assertTrue(later.call("AUTH", "").startswith(b"-WRONGPASS"))
        self.assertEqual(later.call("AUTH", "second"), b"+OK")
        later.close()

        stop.set()
        for w in writers:
            w.join(10)
            self.assertEqual(w.lost, 0)
            self.assertEqual(w.errors, [])
            self.assertGreater(w.acked, 0)
            self.assertEqual(int(direct.get(w.key)), w.acked)
        for c in [fresh, refused] + more:
            c.close()

    def test_rotated_node_password_is_used_for_new_connections(self):
        nodes = self.cluster.masters()
        pwfile = os.path.join(self.cluster.dir, "masterauth-rotation")
        with open(pwfile, "w") as f:
            f.write("old-pass\n")
        for n in nodes:
            self.cluster.redis(n).config_set("requirepass", "old-pass")

        def restore():
            for n in nodes:
                r = self.cluster.redis(n, password="new-pass")
                try:
                    r.config_set("requirepass", "")
                except Exception:
                    self.cluster.redis(n, password="old-pass").config_set("requirepass", "")
        self.addCleanup(restore)
        proxy = harness.Proxy(self.cluster, "--masterauth-file", pwfile, "--refresh-interval-ms", "500")
        self.addCleanup(proxy.stop)
        client = Client(proxy.port)
        self.addCleanup(client.close)
        self.assertEqual(client.call("SET", "rotation", "1"), b"+OK")

        # The nodes' password is rotated: connections already logged in stay; the file gets the new one.
        for n in nodes:
            self.cluster.redis(n, password="old-pass").config_set("requirepass", "new-pass")
        with open(pwfile, "w") as f:
            f.write("new-pass\n")
        line = self.sighup(proxy, 0)
        self.assertIn("SIGHUP: changed: masterauth", line)
        self.assertNotIn("new-pass", line)
        # Every connection of the proxy's is cut: each must log in again, with the new password.
        for n in nodes:
            self.cluster.redis(n, password="new-pass").execute_command("CLIENT", "KILL", "USER", "default",
                                                                       "SKIPME", "yes")
        deadline = time.time() + 10
        got = None
        while time.time() < deadline:
            got = client.call("GET", "rotation")
            if got == b"1":
                break
            time.sleep(0.2)
        self.assertEqual(got, b"1", proxy.output())
        self.assertEqual(client.call("SET", "rotation", "2"), b"+OK")


    def test_a_route_after_a_rotation_asks_on_a_connection_logged_in_anew(self):
        """The ROUTE check's kept connection logged in with the old password is not asked again after the
        reload: the next ROUTE logs in with the new one (and a rotation that broke the login would show)."""
        nodes = self.cluster.masters()
        node = nodes[0]
        route = {"slots": harness.format_slots(self.cluster.slots_of(node)[:3]), "node": "%s:%d" % node}
        pwfile = os.path.join(self.cluster.dir, "masterauth-route-rotation")
        with open(pwfile, "w") as f:
            f.write("old-route\n")
        for n in nodes:
            self.cluster.redis(n).config_set("requirepass", "old-route")

        def restore():
            for n in nodes:
                try:
                    self.cluster.redis(n, password="new-route").config_set("requirepass", "")
                except Exception:
                    self.cluster.redis(n, password="old-route").config_set("requirepass", "")
        self.addCleanup(restore)
        proxy = harness.Proxy(self.cluster, "--masterauth-file", pwfile, admin=True)
        self.addCleanup(proxy.stop)
        self.assertEqual(proxy.admin_call("POST", "/v1/slots/route", route)[0], 200)

        for n in nodes:
            self.cluster.redis(n, password="old-route").config_set("requirepass", "new-route")
        with open(pwfile, "w") as f:
            f.write("new-route\n")
        self.assertIn("SIGHUP: changed: masterauth", self.sighup(proxy, 0))
        direct = self.cluster.redis(node, password="new-route")
        before = direct.info("stats")["total_connections_received"]
        status, out = proxy.admin_call("POST", "/v1/slots/route", route)
        self.assertEqual(status, 200, out)
        self.assertEqual(direct.info("stats")["total_connections_received"], before + 1)
        asking = [c for c in direct.client_list() if c["cmd"] in ("cluster|slots", "cluster")]
        self.assertEqual(len(asking), 1, direct.client_list())

class Connector(threading.Thread):
    """A new connection and a PING on it, again and again: every one must be accepted and answered."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port = port
        self.stop = stop
        self.count = 0
        self.failures = []

    def run(self):
        while not self.stop.is_set():
            try:
                c = Client(self.port)
                try:
                    got = c.call("PING")
                finally:
                    c.close()
                if got != b"+PONG":
                    self.failures.append(got)
                self.count += 1
            except (OSError, EOFError) as e:
                self.failures.append(repr(e))


class Upgrade(unittest.TestCase):
    def setUp(self):
        self.cluster = CLUSTER

    def test_a_new_binary_takes_over_without_dropping_a_client(self):
        path = os.path.join(self.cluster.dir, "upgrade.sock")
        flags = ("--upgrade-socket", path, "--drain-timeout-ms", "5000")
        old = harness.Proxy(self.cluster, *flags)
        self.addCleanup(old.stop)
        tag = tag_on(self.cluster, self.cluster.masters_by_slot()[0])
        direct = self.cluster.redis(self.cluster.masters_by_slot()[0])
        stop = threading.Event()
        writers = [Writer(old.port, "{%s}u%d" % (tag, i), stop=stop, reconnect=True) for i in range(3)]
        for w in writers:
            direct.delete(w.key)
        connectors = [Connector(old.port, stop) for _ in range(2)]
        for t in writers + connectors:
            t.start()
        time.sleep(0.5)

        # The new process, on the same port: it takes the listening sockets, and the old one drains and exits.
        new = harness.Proxy(self.cluster, *flags, port=old.port)
        self.addCleanup(new.stop)
        self.assertEqual(self.exited(old, 10), 0, old.output())
        self.assertIn("upgrade: pid %d accepts on the listening sockets now; this process drains" % new.proc.pid,
                      old.output())
        self.assertRegex(old.output(), r"drained in \d+ ms: \d+ client\(s\) closed once answered, 0 closed unfinished")
        self.assertIn("upgrade: took over 2 listening socket(s) from pid %d, which now drains" % old.proc.pid,
                      new.output())
        time.sleep(0.5)

        # And again, from the new one: the upgrade socket is the new process's now.
        newer = harness.Proxy(self.cluster, *flags, port=old.port)
        self.addCleanup(newer.stop)
        self.assertEqual(self.exited(new, 10), 0, new.output())
        self.assertIn("from pid %d, which now drains" % new.proc.pid, newer.output())
        time.sleep(0.5)

        stop.set()
        for t in writers + connectors:
            t.join(10)
        for c in connectors:
            self.assertEqual(c.failures, [], "a new connection was refused or not answered during the upgrade")
            self.assertGreater(c.count, 0)
        for w in writers:
            self.assertEqual(w.lost, 0)
            self.assertEqual(w.errors, [])
            self.assertGreaterEqual(w.reconnects, 2, "the writer's connection was not moved to the new process")
            self.assertEqual(int(direct.get(w.key)), w.acked)

    def test_a_process_that_listens_elsewhere_is_refused(self):
        path = os.path.join(self.cluster.dir, "upgrade-elsewhere.sock")
        old = harness.Proxy(self.cluster, "--upgrade-socket", path)
        self.addCleanup(old.stop)
        other = subprocess.run([harness.PROXY_BIN, "--listen", "127.0.0.1:%d" % harness.free_port(), "--seed",
                                self.cluster.seed(), "--upgrade-socket", path], capture_output=True, text=True,
                               timeout=20)
        self.assertEqual(other.returncode, 1)
        self.assertIn("refused: this proxy listens on 127.0.0.1:%d, not" % old.port, other.stderr)
        self.assertIsNone(old.proc.poll(), "the running proxy stopped")
        self.assertEqual(Client(old.port).call("PING"), b"+PONG")

    exited = Drain.exited


if __name__ == "__main__":
    harness.main()
