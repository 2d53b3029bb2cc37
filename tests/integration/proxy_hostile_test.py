#!/usr/bin/python3
"""slotshift-proxy facing hostile clients: one client must never read, delay or corrupt another's replies, and no
input may crash the proxy or grow its memory without bound. Raw sockets where a client library would hide what
is tested, Debian's python3-redis elsewhere. Run by ctest; runs alone too:
tests/integration/proxy_hostile_test.py [-k pattern]. SLOTSHIFT_HOSTILE_SEED fixes the random-bytes test's seed."""

import os
import random
import re
import resource
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

MB = 1 << 20
# A proxy whose memory passes this is killed by the test (and the test fails): the machine is shared.
RSS_KILL_BYTES = 4 << 30


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# RESP over a raw socket


class Simple(str):
    """A simple-string reply (+OK)."""

    def __eq__(self, other):
        return type(other) is Simple and str.__eq__(self, other)

    def __ne__(self, other):
        return not self == other

    __hash__ = str.__hash__

    def __repr__(self):
        return "+" + str(self)


class Err(str):
    """An error reply, without its leading '-' (ERR ..., EXECABORT ..., NOPROTO ...)."""

    def __eq__(self, other):
        return type(other) is Err and str.__eq__(self, other)

    def __ne__(self, other):
        return not self == other

    __hash__ = str.__hash__

    def __repr__(self):
        return "-" + str(self)


OK = Simple("OK")
QUEUED = Simple("QUEUED")
PONG = Simple("PONG")
EXECABORT = Err("EXECABORT Transaction discarded because of previous errors.")


class Incomplete(Exception):
    pass


def parse(buf, pos=0):
    """One RESP2 value at buf[pos:]: (value, next position); raises Incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete()
    kind, line, pos = buf[pos:pos + 1], bytes(buf[pos + 1:end]), end + 2
    if kind == b"+":
        return Simple(line.decode(errors="replace")), pos
    if kind == b"-":
        return Err(line.decode(errors="replace")), pos
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise Incomplete()
        return bytes(buf[pos:pos + n]), pos + n + 2
    if kind in (b"*", b"~", b">", b"%", b"|"):
        # RESP3's aggregates (a map as its flat list of keys and values) are read too: a proxy that lets
        # RESP3 through is seen answering something, not as a broken stream.
        n = int(line) * (2 if kind in (b"%", b"|") else 1)
        if n < 0:
            return None, pos
        out = []
        for _ in range(n):
            v, pos = parse(buf, pos)
            out.append(v)
        if kind == b"|":  # attributes precede the reply they describe
            return parse(buf, pos)
        return out, pos
    if kind == b"_":
        return None, pos
    if kind in (b"#", b",", b"("):
        return Simple(line.decode(errors="replace")), pos
    if kind in (b"=", b"!"):
        n = int(line)
        if len(buf) < pos + n + 2:
            raise Incomplete()
        text = bytes(buf[pos:pos + n])
        return (Err(text.decode(errors="replace")) if kind == b"!" else text), pos + n + 2
    raise ValueError("not RESP: %r" % bytes(buf[max(0, pos - len(line) - 3):pos + 20]))


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, int):
            a = str(a)
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class ConnectionClosed(Exception):
    pass


class Conn:
    """A client on a raw socket: send() commands (tuples of arguments, or raw bytes), reply() reads one reply
    within a deadline."""

    def __init__(self, port, host="127.0.0.1", timeout=10, rcvbuf=None):
        if rcvbuf:
            self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.s.settimeout(timeout)
            self.s.connect((host, port))
        else:
            self.s = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()

    def send(self, *commands):
        self.s.sendall(b"".join(c if isinstance(c, bytes) else encode(*c) for c in commands))

    def reply(self, timeout=5):
        deadline = time.monotonic() + timeout
        while True:
            if self.buf:
                try:
                    value, pos = parse(self.buf)
                    del self.buf[:pos]
                    return value
                except Incomplete:
                    pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete reply within %.1f s (have %r)" % (timeout, bytes(self.buf[:200])))
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(1 << 16)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ConnectionClosed("closed by the proxy (have %r)" % bytes(self.buf[:200]))
            self.buf += chunk

    def replies(self, n, timeout=5):
        deadline = time.monotonic() + timeout
        return [self.reply(max(0.01, deadline - time.monotonic())) for _ in range(n)]

    def call(self, *args, timeout=5):
        self.send(args)
        return self.reply(timeout)

    def read_until_closed(self, timeout=5):
        """Everything the proxy sends until it closes the connection: (bytes, closed)."""
        deadline = time.monotonic() + timeout
        data = bytes(self.buf)
        self.buf.clear()
        while time.monotonic() < deadline:
            self.s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.s.recv(1 << 16)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return data, True
            if not chunk:
                return data, True
            data += chunk
        return data, False

    def close(self):
        self.s.close()


UNSUPPORTED = re.compile(r"ERR slotshift-proxy does not support '([^']*)'")


def is_unsupported(reply, command):
    """The proxy's refusal of `command` (its first word; the quoted name may carry the subcommand)."""
    if type(reply) is not Err:
        return False
    m = UNSUPPORTED.match(reply)
    return bool(m) and m.group(1).lower().replace("|", " ").split()[:1] == [command.lower()]


# ---------------------------------------------------------------------------------------------------------------
# Proxies under watch


def rss_bytes(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def wait_for_binary(timeout=120):
    """The proxy binary is rebuilt from time to time: wait for it to be there."""
    deadline = time.time() + timeout
    while not os.access(harness.PROXY_BIN, os.X_OK):
        if time.time() > deadline:
            raise RuntimeError("%s is missing" % harness.PROXY_BIN)
        time.sleep(1)


def guard(proxy):
    """Kills the proxy if its memory passes RSS_KILL_BYTES, so that a test of a broken proxy cannot take the
    machine down with it; proxy.killed_for_memory says it happened."""
    proxy.killed_for_memory = None

    def watch():
        while proxy.proc.poll() is None:
            rss = rss_bytes(proxy.proc.pid)
            if rss > RSS_KILL_BYTES:
                proxy.killed_for_memory = rss
                proxy.proc.kill()
                log("slotshift-proxy killed by the test: RSS %d MB" % (rss // MB))
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return proxy


def stop_if_running(proxy):
    if proxy.log.closed:
        return
    proxy.stop()


def limited_proxy(cluster, *flags, threads=2, nofile=64):
    """A proxy whose RLIMIT_NOFILE is `nofile`."""

    def limit():
        # The proxy raises its soft limit as far as the hard one allows: both are set.
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return harness.Proxy(cluster, *flags, threads=threads, preexec=limit)


class Checker:
    """A client that SETs and GETs values of its own until stopped, on a thread, and records every reply that
    is not its own and every error."""

    def __init__(self, port, name):
        self.port = port
        self.name = name
        self.errors = []
        self.ops = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        r = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)
        i = 0
        while not self.stop_flag.is_set():
            key = "%s:%d" % (self.name, i % 50)
            value = "%s-%d-%s" % (self.name, i, os.urandom(4).hex())
            try:
                if r.set(key, value) is not True:
                    self.errors.append("SET %s: not OK" % key)
                got = r.get(key)
                if got != value.encode():
                    self.errors.append("GET %s: %r, expected %r" % (key, got, value))
            except Exception as e:  # noqa: BLE001 - every error this client sees counts
                self.errors.append("%s: %s" % (type(e).__name__, e))
                time.sleep(0.05)
                r = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)
            self.ops += 1
            i += 1
            if len(self.errors) > 100:
                return

    def start(self):
        self.thread.start()
        return self

    def finish(self):
        self.stop_flag.set()
        self.thread.join(30)
        if self.thread.is_alive():
            self.errors.append("the checker did not stop within 30 s")
        return self.errors


def wait_until(predicate, timeout, interval=0.05):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() > deadline:
            return value
        time.sleep(interval)


def keys_on_distinct_slots(prefix, count):
    """count key names whose slots all differ."""
    out, slots, i = [], set(), 0
    while len(out) < count:
        k = "%s%d" % (prefix, i)
        s = key_slot(k.encode())
        if s not in slots:
            slots.add(s)
            out.append(k)
        i += 1
    return out


class ProxyTestCase(unittest.TestCase):
    maxDiff = None

    def conn(self, port, **kw):
        """A raw connection closed at the end of the test."""
        c = Conn(port, **kw)
        self.addCleanup(c.close)
        return c

    def start_proxy(self, *flags, threads=2):
        wait_for_binary()
        proxy = guard(harness.Proxy(self.cluster, *flags, threads=threads))
        self.addCleanup(stop_if_running, proxy)
        return proxy

    def node_of(self, key):
        """The address of the master that owns key's slot."""
        return self.cluster.address(self.cluster.owners()[key_slot(key.encode() if isinstance(key, str) else key)])

    def assertAlive(self, proxy):
        self.assertIsNone(proxy.proc.poll(), "slotshift-proxy exited:\n" + proxy.output()[-3000:])
        self.assertIsNone(proxy.killed_for_memory)

    def assertUnsupported(self, reply, command, msg=None):
        self.assertTrue(is_unsupported(reply, command),
                        "%s: %r is not the proxy's refusal of '%s'" % (msg or command, reply, command))


# ---------------------------------------------------------------------------------------------------------------
# 3 masters, no replicas: every test but the topology changes


class HostileClients(ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    # 1 -----------------------------------------------------------------------------------------------------------
    def test_01_connection_state_inside_multi_is_isolated(self):
        proxy = self.start_proxy(threads=1)
        setter = self.conn(proxy.port)
        for k, v in zip("abcd", "ABCD"):
            self.assertEqual(setter.call("SET", "{x}" + k, v), OK)
        b_request = b"".join(encode("GET", "{x}" + k) for k in "abcd")
        expected_b = [b"A", b"B", b"C", b"D"]

        def refused(command):
            return lambda replies: (replies[0] == OK and is_unsupported(replies[1], command)
                                    and replies[2] == QUEUED and replies[3] == EXECABORT)

        variants = [
            (("CLIENT", "REPLY", "SKIP"), refused("client")),
            (("HELLO", "3"), refused("hello")),
            (("SUBSCRIBE", "ch"), refused("subscribe")),
            # RESET ends the transaction: the GET runs at once and EXEC finds no MULTI.
            (("RESET",), lambda replies: replies == [OK, Simple("RESET"), b"A", Err("ERR EXEC without MULTI")]),
            (("CLIENT", "TRACKING", "on"), refused("client")),
            (("MONITOR",), refused("monitor")),
            # Redis's own refusal. Redis then runs the transaction; a proxy that discards it is accepted too.
            (("WATCH", "k"), lambda replies: (
                replies[:3] == [OK, Err("ERR WATCH inside MULTI is not allowed"), QUEUED]
                and replies[3] in (EXECABORT, [b"A"]))),
            (("SELECT", "0"), refused("select")),
            (("READONLY",), refused("readonly")),
        ]
        failures = []
        for command, check in variants:
            a, b = self.conn(proxy.port), self.conn(proxy.port)
            a_request = encode("MULTI") + encode(*command) + encode("GET", "{x}a") + encode("EXEC")
            try:
                for round_ in range(200):
                    a.send(a_request)
                    b.send(b_request)
                    got_b = b.replies(4, timeout=2)
                    if got_b != expected_b:
                        failures.append("%s: round %d: B got %r" % (" ".join(command), round_, got_b))
                        break
                    got_a = a.replies(4, timeout=2)
                    if not check(got_a):
                        failures.append("%s: round %d: A got %r" % (" ".join(command), round_, got_a))
                        break
            except (TimeoutError, ConnectionClosed, OSError, ValueError) as e:
                failures.append("%s: round %d: %s: %s" % (" ".join(command), round_, type(e).__name__, e))
            finally:
                a.close()
                b.close()
        self.assertEqual(failures, [])
        self.assertAlive(proxy)

    # 2 -----------------------------------------------------------------------------------------------------------
    def test_02_connection_state_commands_outside_multi(self):
        proxy = self.start_proxy()

        def sequence(tag, failures):
            c = self.conn(proxy.port)
            key = "{%s}own" % tag

            def expect(what, got, want):
                if got != want:
                    raise AssertionError("%s: %r, expected %r" % (what, got, want))

            try:
                for r in range(20):
                    expect("SET", c.call("SET", key, "v%d" % r), OK)
                    # Nothing is answered between OFF and ON; ON answers +OK.
                    c.send(("CLIENT", "REPLY", "OFF"), ("SET", key, "off%d" % r), ("GET", key),
                           ("CLIENT", "REPLY", "ON"), ("GET", key), ("PING",))
                    expect("CLIENT REPLY OFF ... ON", c.replies(3), [OK, ("off%d" % r).encode(), PONG])
                    # SKIP: the SET's reply is skipped, the GET's is not.
                    c.send(("CLIENT", "REPLY", "SKIP"), ("SET", key, "skip%d" % r), ("GET", key), ("PING",))
                    expect("CLIENT REPLY SKIP", c.replies(2), [("skip%d" % r).encode(), PONG])
                    # RESET answers +RESET and turns replies back on.
                    c.send(("CLIENT", "REPLY", "OFF"), ("SET", key, "reset%d" % r), ("RESET",), ("GET", key))
                    expect("RESET", c.replies(2), [Simple("RESET"), ("reset%d" % r).encode()])
                    for command in (("READONLY",), ("READWRITE",), ("UNWATCH",)):
                        c.send(command, ("GET", key))
                        expect(command[0], c.replies(2), [OK, ("reset%d" % r).encode()])
                    # HELLO 3 is this client's alone: its GET runs on a RESP3 connection, the other client's on
                    # RESP2 ones, and HELLO 2 brings it back.
                    c.send(("HELLO", "3"), ("GET", key), ("HELLO", "2"))
                    hello, own, back = c.replies(3)
                    for what, reply, proto in (("HELLO 3", hello, 3), ("HELLO 2", back, 2)):
                        if type(reply) is not list or dict(zip(reply[::2], reply[1::2])).get(b"proto") != proto:
                            raise AssertionError("%s: %r, expected proto %d" % (what, reply, proto))
                    expect("GET after HELLO 3", own, ("reset%d" % r).encode())
                    # WATCH runs on a connection of the client's own: the other client is not watched.
                    c.send(("WATCH", key), ("GET", key), ("UNWATCH",))
                    expect("WATCH", c.replies(3), [OK, ("reset%d" % r).encode(), OK])
                    # Subscriptions run on connections of the client's own: this client is in subscribed mode,
                    # the other one (running the same sequence) is not, and RESET leaves it.
                    for command in (("SUBSCRIBE", "ch"), ("PSUBSCRIBE", "ch*"), ("SSUBSCRIBE", "ch")):
                        c.send(command, ("GET", key))
                        confirmation, refused = c.replies(2)
                        expect(command[0], confirmation, [command[0].lower().encode(), command[1].encode(), 1])
                        if type(refused) is not Err or "allowed in this context" not in refused:
                            raise AssertionError("GET after %s: %r, expected subscribed mode's error" % (
                                command[0], refused))
                        c.send(("RESET",), ("GET", key))
                        expect("RESET after " + command[0], c.replies(2),
                               [Simple("RESET"), ("reset%d" % r).encode()])
                    # MONITOR runs on connections of the client's own, and only with --allow-admin-commands:
                    # without it, refused as an administrative command, and nothing changes.
                    c.send(("MONITOR",), ("GET", key))
                    refusal, own = c.replies(2)
                    if type(refusal) is not Err or "refuses 'monitor'" not in refusal:
                        raise AssertionError("MONITOR: %r, expected the proxy's admin refusal" % (refusal,))
                    expect("GET after MONITOR", own, ("reset%d" % r).encode())
                    # CLIENT TRACKING is this client's alone: its commands move to connections of its own, and
                    # back when it ends.
                    c.send(("CLIENT", "TRACKING", "on"), ("GET", key), ("CLIENT", "TRACKINGINFO"),
                           ("CLIENT", "TRACKING", "off"), ("GET", key), ("CLIENT", "TRACKINGINFO"))
                    on, own, info_on, off, own_after, info_off = c.replies(6)
                    expect("CLIENT TRACKING on, off", [on, off], [OK, OK])
                    expect("GET while tracking, and after", [own, own_after], [("reset%d" % r).encode()] * 2)
                    expect("CLIENT TRACKINGINFO's flags", [info_on[1], info_off[1]], [[b"on"], [b"off"]])
                    for command in (("SYNC",), ("PSYNC", "?", "-1")):
                        c.send(command, ("GET", key))
                        refusal, own = c.replies(2)
                        if not is_unsupported(refusal, command[0]):
                            raise AssertionError("%s: %r, expected the proxy's refusal" % (" ".join(command),
                                                                                         refusal))
                        expect("GET after " + " ".join(command), own, ("reset%d" % r).encode())
            except Exception as e:  # noqa: BLE001 - reported by the test
                failures.append("client %s: %s: %s" % (tag, type(e).__name__, e))
            finally:
                c.close()

        failures = []
        threads = [threading.Thread(target=sequence, args=(tag, failures)) for tag in ("c1", "c2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertFalse(any(t.is_alive() for t in threads), "a client is still waiting")
        self.assertEqual(failures, [])
        self.assertAlive(proxy)

    # 3 -----------------------------------------------------------------------------------------------------------
    def test_03_mset_with_odd_arguments(self):
        proxy = self.start_proxy()
        c, other = self.conn(proxy.port), self.conn(proxy.port)
        a, b = keys_on_distinct_slots("odd:", 2)
        self.assertEqual(c.call("DEL", a, b), 0)
        for command in ("MSET", "MSETNX"):
            self.assertEqual(c.call(command, a, "1", b),
                             Err("ERR wrong number of arguments for '%s' command" % command.lower()))
            self.assertEqual(c.call("EXISTS", b), 0, command)
            self.assertEqual(c.call("EXISTS", a), 0, command)
            keys = ["odd:%s:k%d" % (command, i) for i in range(1, 2002)]
            self.assertGreater(len({key_slot(k.encode()) for k in keys}), 1000)
            args = [command]
            for k in keys:
                args += [k, "v"]
            args.append("odd:%s:kend" % command)
            self.assertEqual(c.call(*args, timeout=10),
                             Err("ERR wrong number of arguments for '%s' command" % command.lower()))
            self.assertEqual(other.call("PING"), PONG)
            self.assertEqual(other.call("EXISTS", *keys, "odd:%s:kend" % command), 0, command)
        self.assertEqual(c.call("PING"), PONG)
        self.assertAlive(proxy)

    # 4 -----------------------------------------------------------------------------------------------------------
    def test_04_wait_is_refused_and_delays_nobody(self):
        # One worker thread: every client shares the same loop and backend connections.
        proxy = self.start_proxy(threads=1)
        for command in (("WAIT", "1", "2000"), ("WAITAOF", "0", "1", "2000")):
            failures, latencies = [], []
            stop = threading.Event()

            def waiter():
                c = self.conn(proxy.port)
                try:
                    while not stop.is_set():
                        start = time.monotonic()
                        reply = c.call(*command, timeout=5)
                        took = time.monotonic() - start
                        if not is_unsupported(reply, command[0]) or took > 0.5:
                            failures.append("%s: %r after %.0f ms" % (" ".join(command), reply, took * 1000))
                            return
                        time.sleep(0.05)
                except Exception as e:  # noqa: BLE001
                    failures.append("%s: %s: %s" % (" ".join(command), type(e).__name__, e))
                finally:
                    c.close()

            getter = self.conn(proxy.port)
            self.assertEqual(getter.call("SET", "wait:k", "v"), OK)
            waiters = [threading.Thread(target=waiter) for _ in range(3)]
            for t in waiters:
                t.start()
            end = time.monotonic() + 2
            try:
                while time.monotonic() < end:
                    start = time.monotonic()
                    reply = getter.call("GET", "wait:k", timeout=5)
                    latencies.append(time.monotonic() - start)
                    self.assertEqual(reply, b"v")
            finally:
                stop.set()
                for t in waiters:
                    t.join(10)
                getter.close()
            log("%s: %d GETs, slowest %.1f ms" % (command[0], len(latencies), max(latencies) * 1000))
            self.assertEqual(failures, [])
            self.assertLess(max(latencies), 0.1, command[0])
        self.assertAlive(proxy)

    # 5 -----------------------------------------------------------------------------------------------------------
    def test_05_every_master_commands_inside_multi(self):
        proxy = self.start_proxy()
        c = self.conn(proxy.port)
        keys = ["every:%d" % i for i in range(60)]
        self.assertEqual(c.call("MSET", *[x for k in keys for x in (k, "v")]), OK)
        sha = c.call("SCRIPT", "LOAD", "return 'every'")
        self.assertIsInstance(sha, bytes)
        for command in (("KEYS", "*"), ("DBSIZE",), ("FLUSHALL",), ("SCAN", "0"), ("SCRIPT", "FLUSH")):
            c.send(("MULTI",), command, ("EXEC",))
            replies = c.replies(3, timeout=10)
            self.assertEqual(replies[0], OK, command)
            self.assertUnsupported(replies[1], command[0])
            self.assertEqual(replies[2], EXECABORT, command)
        self.assertEqual(c.call("EXISTS", *keys), len(keys))
        self.assertEqual(c.call("SCRIPT", "EXISTS", sha), [1])
        for node in self.cluster.masters():
            self.assertEqual(self.cluster.cli(node, "script", "exists", sha.decode()).strip(), "1", node)
            self.assertGreater(int(self.cluster.cli(node, "dbsize")), 0, node)
        c.close()
        self.assertAlive(proxy)

    # 6 -----------------------------------------------------------------------------------------------------------
    def test_06_every_command_with_a_wrong_arity(self):
        proxy = self.start_proxy()
        node = self.conn(self.cluster.nodes[0][1], host=self.cluster.nodes[0][0])
        table = node.call("COMMAND", timeout=10)
        node.close()
        placeholders = keys_on_distinct_slots("ph:", 20)

        def forms(argv_prefix, arity):
            """argv lists with too few arguments, and one too many for a fixed arity."""
            out = []
            need = abs(arity)
            assert need + 1 <= len(placeholders), argv_prefix
            if need - 1 >= len(argv_prefix) and need - 1 > 0:
                out.append(argv_prefix + placeholders[:need - 1 - len(argv_prefix)])
            if arity > 0:
                out.append(argv_prefix + placeholders[:arity + 1 - len(argv_prefix)])
            return out

        cases = []
        for entry in sorted(table, key=lambda e: e[0]):
            name, arity = entry[0].decode(), entry[1]
            if arity != 0:
                cases += forms([name], arity)
            for sub in (entry[9] if len(entry) > 9 and entry[9] else []):
                sub_name, sub_arity = sub[0].decode(), sub[1]
                if sub_arity != 0:
                    cases += forms(sub_name.split("|"), sub_arity)
        unique = []
        for argv in cases:
            if argv not in unique:
                unique.append(argv)
        log("%d commands with a wrong arity" % len(unique))

        checker = Checker(proxy.port, "arity-check").start()
        failures = []
        c = self.conn(proxy.port)
        try:
            for argv in unique:
                try:
                    reply = c.call(*argv, timeout=5)
                    if type(reply) is not Err:
                        failures.append("%s: %r, not an error" % (" ".join(argv), reply))
                        c.close()
                        c = self.conn(proxy.port)
                except (TimeoutError, ConnectionClosed, OSError, ValueError) as e:
                    failures.append("%s: %s: %s" % (" ".join(argv), type(e).__name__, e))
                    c.close()
                    c = self.conn(proxy.port)
        finally:
            c.close()
            errors = checker.finish()
        self.assertEqual(failures, [])
        self.assertEqual(errors[:10], [])
        self.assertGreater(checker.ops, 0)
        self.assertAlive(proxy)
        self.assertTrue(redis.Redis(port=proxy.port, socket_timeout=5).ping())
        proxy.stop()

    # 7 -----------------------------------------------------------------------------------------------------------
    def test_07_random_bytes(self):
        proxy = self.start_proxy()
        seed = int(os.environ.get("SLOTSHIFT_HOSTILE_SEED", str(int(time.time() * 1000) % (1 << 31))))
        log("random bytes: seed %d (SLOTSHIFT_HOSTILE_SEED=%d repeats it)" % (seed, seed))
        # Valid headers announcing absurd counts and lengths (random bytes follow them).
        absurd = [b"*2147483647\r\n", b"*4294967296\r\n", b"*99999999999999999999\r\n",
                  b"*1\r\n$2147483647\r\n", b"*3\r\n$3\r\nSET\r\n$536870000\r\n",
                  b"*2\r\n$3\r\nGET\r\n$18446744073709551615\r\n", b"$999999999\r\n", b"*-5\r\n", b"*1\r\n$-7\r\n",
                  b"*1048577\r\n", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n", b"*100000\r\n" + b"$1\r\nx\r\n" * 1000]
        stop = threading.Event()
        sent = [0] * 10
        crashes = []

        def hostile(i):
            rnd = random.Random(seed * 100 + i)
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
                        for _ in range(rnd.randint(1, 5)):
                            kind = rnd.random()
                            if kind < 0.4:
                                data = rnd.randbytes(rnd.randint(1, 4096))
                            elif kind < 0.6:
                                data = b"\r\n".join(rnd.randbytes(rnd.randint(0, 20)) for _ in range(50))
                            elif kind < 0.9:
                                data = rnd.choice(absurd) + rnd.randbytes(rnd.randint(0, 2048))
                            else:
                                data = encode("PING") + rnd.randbytes(rnd.randint(1, 512))
                            s.sendall(data)
                            sent[i] += len(data)
                        s.settimeout(0.02)
                        try:
                            s.recv(65536)
                        except OSError:
                            pass
                except OSError:
                    pass
                if proxy.proc.poll() is not None:
                    crashes.append(proxy.proc.returncode)
                    return

        checker = Checker(proxy.port, "random-check").start()
        threads = [threading.Thread(target=hostile, args=(i,), daemon=True) for i in range(10)]
        for t in threads:
            t.start()
        time.sleep(4)
        stop.set()
        for t in threads:
            t.join(10)
        errors = checker.finish()
        log("random bytes: %d kB sent by 10 clients, %d checks" % (sum(sent) // 1024, checker.ops))
        self.assertEqual(crashes, [], "slotshift-proxy exited (seed %d):\n%s" % (seed, proxy.output()[-3000:]))
        self.assertEqual(errors[:10], [], "seed %d" % seed)
        self.assertGreater(checker.ops, 10)
        self.assertAlive(proxy)
        self.assertTrue(redis.Redis(port=proxy.port, socket_timeout=5).ping())
        proxy.stop()

    # 8 -----------------------------------------------------------------------------------------------------------
    def test_08_nothing_runs_after_quit_or_a_protocol_error(self):
        proxy = self.start_proxy()
        r = redis.Redis(port=proxy.port, socket_timeout=10)
        r.delete("quit:k", "proto:k")
        c = self.conn(proxy.port)
        c.send(b"QUIT\r\nSET quit:k v\r\n")
        data, closed = c.read_until_closed()
        c.close()
        self.assertEqual(data, b"+OK\r\n")
        self.assertTrue(closed, "the connection stays open after QUIT")
        c = self.conn(proxy.port)
        c.send(b"*1\r\n$x\r\nSET proto:k v\r\n")
        data, closed = c.read_until_closed()
        c.close()
        self.assertTrue(data.startswith(b"-ERR Protocol error"), data)
        self.assertEqual(data.count(b"\r\n"), 1, data)
        self.assertTrue(closed, "the connection stays open after a protocol error")
        time.sleep(0.3)
        self.assertEqual(r.exists("quit:k"), 0)
        self.assertEqual(r.exists("proto:k"), 0)
        self.assertAlive(proxy)

    # 9 -----------------------------------------------------------------------------------------------------------
    def test_09_announced_sizes_reserve_no_memory(self):
        proxy = self.start_proxy()
        r = redis.Redis(port=proxy.port, socket_timeout=10)
        self.assertTrue(r.ping())
        before = rss_bytes(proxy.proc.pid)
        header = b"*3\r\n$3\r\nSET\r\n$536870000\r\n"
        clients = []
        try:
            for _ in range(100):
                s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
                s.sendall(header)
                clients.append(s)
            time.sleep(1)
            peak = before
            for i in range(20):
                peak = max(peak, rss_bytes(proxy.proc.pid))
                self.assertTrue(r.set("announce:%d" % i, "v%d" % i))
                self.assertEqual(r.get("announce:%d" % i), b"v%d" % i)
                time.sleep(0.02)
            self.assertAlive(proxy)
            log("RSS with 100 announced 512 MB values: %d MB -> %d MB" % (before // MB, peak // MB))
            self.assertLess(peak - before, 64 * MB)
        finally:
            for s in clients:
                s.close()

    # 10 ----------------------------------------------------------------------------------------------------------
    def test_10_replies_larger_than_the_old_limits(self):
        proxy = self.start_proxy()
        n = 1100000
        elements = [str(i).encode() for i in range(n)]

        def read_reply(c, size):
            """Up to size bytes of one reply; less if the proxy answers an error or closes the connection."""
            got = bytearray()
            deadline = time.monotonic() + 30
            while len(got) < size and time.monotonic() < deadline:
                if got[:1] == b"-" and b"\r\n" in got:
                    break
                c.s.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = c.s.recv(1 << 20)
                except socket.timeout:
                    break
                if not chunk:
                    break
                got += chunk
            return got

        def build(key, command, items):
            node = self.node_of(key)
            c = self.conn(node[1], host=node[0], timeout=60)
            c.call("UNLINK", key)
            batches = 0
            for i in range(0, len(items), 10000):
                c.send(encode(command, key, *items[i:i + 10000]))
                batches += 1
            for _ in range(batches):
                self.assertIsInstance(c.reply(60), int)
            c.close()
            return node

        list_node = build("big:list", "RPUSH", elements)
        fields = {b"f%d" % i: b"v%d" % i for i in range(n)}
        hash_node = build("big:hash", "HSET", [x for kv in fields.items() for x in kv])
        checker = Checker(proxy.port, "big-writer").start()
        try:
            with self.subTest("LRANGE of %d elements" % n):
                c = self.conn(proxy.port, timeout=60)
                expected = b"*%d\r\n" % n + b"".join(b"$%d\r\n%s\r\n" % (len(e), e) for e in elements)
                start = time.monotonic()
                c.send(encode("LRANGE", "big:list", "0", "-1"))
                got = read_reply(c, len(expected))
                log("LRANGE of %d elements: %d bytes in %.1f s" % (n, len(got), time.monotonic() - start))
                c.close()
                if bytes(got) != expected:
                    at = next((i for i in range(min(len(got), len(expected))) if got[i] != expected[i]),
                              min(len(got), len(expected)))
                    self.fail("LRANGE: %d bytes of %d, first difference at %d: %r" % (
                        len(got), len(expected), at, bytes(got[max(0, at - 20):at + 80])))
            with self.subTest("HGETALL of %d fields" % n):
                c = self.conn(proxy.port, timeout=60)
                size = len(b"*%d\r\n" % (2 * n)) + sum(len(b"$%d\r\n\r\n" % len(x)) + len(x)
                                                        for kv in fields.items() for x in kv)
                start = time.monotonic()
                c.send(encode("HGETALL", "big:hash"))
                got = read_reply(c, size)
                log("HGETALL of %d fields: %d bytes in %.1f s" % (n, len(got), time.monotonic() - start))
                c.close()
                self.assertEqual(len(got), size, bytes(got[:200]))
                tokens = bytes(got).split(b"\r\n")
                self.assertEqual(tokens[0], b"*%d" % (2 * n))
                values = tokens[2:-1:2]
                self.assertEqual(len(values), 2 * n)
                self.assertTrue(dict(zip(values[0::2], values[1::2])) == fields, "HGETALL: other fields or values")
        finally:
            errors = checker.finish()
            self.cluster.cli(list_node, "unlink", "big:list", check=False)
            self.cluster.cli(hash_node, "unlink", "big:hash", check=False)
        self.assertEqual(errors[:10], [])
        self.assertGreater(checker.ops, 0)
        self.assertAlive(proxy)

    # 11 ----------------------------------------------------------------------------------------------------------
    def test_11_replies_held_behind_a_blocked_command_are_bounded(self):
        proxy = self.start_proxy("--max-client-output-bytes", "8388608")
        r = redis.Redis(port=proxy.port, socket_timeout=10)
        big = os.urandom(MB)
        r.set("held:big", big)
        r.delete("held:empty")
        self.assertEqual(r.get("held:big"), big)
        before = rss_bytes(proxy.proc.pid)
        c = self.conn(proxy.port)
        try:
            c.send(encode("BLPOP", "held:empty", "0") + encode("GET", "held:big") * 100)
            peak = before

            def closed():
                nonlocal peak
                peak = max(peak, rss_bytes(proxy.proc.pid))
                c.s.settimeout(0.05)
                try:
                    return c.s.recv(1 << 16) == b""
                except socket.timeout:
                    return False
                except ConnectionResetError:
                    return True

            was_closed = wait_until(closed, 10, interval=0)
            self.assertEqual(r.get("held:big"), big)
            self.assertTrue(r.ping())
        finally:
            c.close()
        log("held replies: RSS %d MB -> peak %d MB" % (before // MB, peak // MB))
        self.assertTrue(was_closed, "the client with 100 MB of replies held behind BLPOP was not closed")
        self.assertIn("closing client", proxy.output())
        self.assertLess(peak, before + 64 * MB)
        self.assertAlive(proxy)

    # 12 ----------------------------------------------------------------------------------------------------------
    def test_12_slow_reader_of_a_100mb_value(self):
        # One worker thread: the other client shares the slow reader's loop, wherever the proxy would place it.
        proxy = self.start_proxy(threads=1)
        big_node = self.node_of("slow100:big")
        n = self.conn(big_node[1], host=big_node[0], timeout=60)
        self.assertEqual(n.call("SET", "slow100:big", os.urandom(MB) * 100, timeout=60), OK)
        n.close()
        # The other client's key lives on another master: what is measured is the proxy, not the busy node.
        other_key = next(k for k in ("slow100:other%d" % i for i in range(100)) if self.node_of(k) != big_node)
        r = redis.Redis(port=proxy.port, socket_timeout=10)
        r.set(other_key, "v")
        self.assertEqual(r.get(other_key), b"v")
        baseline = rss_bytes(proxy.proc.pid)
        peak = baseline
        stop = threading.Event()
        latencies = []

        def sample():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_bytes(proxy.proc.pid))
                time.sleep(0.02)

        def other():
            o = redis.Redis(port=proxy.port, socket_timeout=10)
            while not stop.is_set():
                start = time.monotonic()
                if o.get(other_key) != b"v":
                    latencies.append(float("inf"))
                latencies.append(time.monotonic() - start)
                time.sleep(0.01)

        threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=other, daemon=True)]
        for t in threads:
            t.start()
        slow = self.conn(proxy.port, rcvbuf=4096)
        try:
            slow.send(encode("GET", "slow100:big"))
            # The 3 s of slow reading start with the reply's first byte.
            slow.s.settimeout(30)
            read = len(slow.s.recv(1))
            end = time.monotonic() + 3
            while time.monotonic() < end:
                time.sleep(0.1)
                slow.s.settimeout(0.1)
                try:
                    read += len(slow.s.recv(1))
                except OSError:
                    pass
        finally:
            slow.close()
            during = peak
            stop.set()
            for t in threads:
                t.join(10)
        shrunk = wait_until(lambda: rss_bytes(proxy.proc.pid) < baseline + 64 * MB, 5, interval=0.1)
        log("slow reader of 100 MB (%d bytes read): RSS %d MB, peak %d MB, after %d MB; other client: %d GETs, "
            "slowest %.1f ms" % (read, baseline // MB, during // MB, rss_bytes(proxy.proc.pid) // MB,
                                 len(latencies), max(latencies, default=0) * 1000))
        self.cluster.cli(big_node, "unlink", "slow100:big", check=False)
        self.assertLess(during, baseline + 350 * MB)
        self.assertGreater(len(latencies), 10)
        # Other clients of the same worker are served throughout, but not without a stall: the value is copied
        # once on its way through the proxy (from the node's read buffer into the reply), which on this 2-core
        # virtual machine holds the worker's loop for 0.4 to 0.6 s (measured: slowest GET 588 ms). A path that
        # hands large messages on without any copy is left for the proxy's speed work.
        self.assertLess(max(latencies), 1.0)
        self.assertTrue(shrunk, "RSS still %d MB (baseline %d MB) 5 s after the slow reader left" % (
            rss_bytes(proxy.proc.pid) // MB, baseline // MB))
        self.assertAlive(proxy)

    # 13 ----------------------------------------------------------------------------------------------------------
    def test_13_ten_thousand_clients(self):
        # This process and the proxy each hold 10,000 sockets, and the proxy some more for itself (it raises its
        # own soft limit to max-clients + 1024).
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < 12000:
            try:  # a privileged user may raise the hard limit itself
                resource.setrlimit(resource.RLIMIT_NOFILE, (12000, 12000))
            except (ValueError, OSError):
                self.skipTest("RLIMIT_NOFILE hard limit is %d, under the 12000 that 10,000 clients need" % hard)
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        proxy = self.start_proxy("--max-clients", "10500")
        r = redis.Redis(port=proxy.port, socket_timeout=10)
        self.assertTrue(r.ping())
        baseline = rss_bytes(proxy.proc.pid)
        clients = []
        start = time.monotonic()
        try:
            ping = encode("PING")
            while len(clients) < 10000:
                batch = [socket.create_connection(("127.0.0.1", proxy.port), timeout=10) for _ in range(250)]
                clients += batch
                for s in batch:
                    s.sendall(ping)
                for s in batch:
                    got = b""
                    while len(got) < 7:
                        chunk = s.recv(7 - len(got))
                        if not chunk:
                            break
                        got += chunk
                    self.assertEqual(got, b"+PONG\r\n", "client %d" % len(clients))
            rss = rss_bytes(proxy.proc.pid)
            log("10,000 clients connected in %.1f s: RSS %d MB -> %d MB, %.1f kB per client" % (
                time.monotonic() - start, baseline // MB, rss // MB, (rss - baseline) / 10000 / 1024))
            self.assertLess(rss, baseline + 200 * MB)
            self.assertTrue(r.set("many:k", "v"))
            self.assertEqual(r.get("many:k"), b"v")
        finally:
            for s in clients:
                s.close()
        self.assertTrue(wait_until(lambda: r.info("clients")["connected_clients"] <= 2, 20),
                        "connected_clients: %s" % r.info("clients")["connected_clients"])
        self.assertAlive(proxy)
        r.close()
        proxy.stop()

    # 14 ----------------------------------------------------------------------------------------------------------
    def test_14a_blocking_command_on_an_uncovered_slot_times_out(self):
        proxy = self.start_proxy("--request-timeout-ms", "1000")
        key = "{uncovered}k"
        owner = self.node_of(key)
        slot = key_slot(key.encode())
        self.cluster.cli(owner, "del", key)
        for node in self.cluster.masters():
            self.cluster.cli(node, "cluster", "delslots", str(slot), check=False)
        c = self.conn(proxy.port)
        try:
            probe = redis.Redis(port=proxy.port, socket_timeout=5)

            def proxy_sees_it():
                try:
                    probe.get(key)
                except redis.ResponseError as e:
                    return "no node serves" in str(e)
                return False

            wait_until(proxy_sees_it, 2, interval=0.1)
            start = time.monotonic()
            try:
                reply = c.call("BLPOP", key, "0", timeout=5)
            except (TimeoutError, ConnectionClosed) as e:
                reply = e
            took = time.monotonic() - start
            self.assertTrue(type(reply) is Err and ("timed out" in reply or "CLUSTERDOWN" in reply),
                            "BLPOP on an uncovered slot: %r after %.1f s" % (reply, took))
            self.assertLess(took, 3)
        finally:
            c.close()
            self.cluster.cli(owner, "cluster", "addslots", str(slot), check=False)
            self.cluster.wait_consistent()
        self.assertAlive(proxy)

    def test_14b_blocking_connections_are_bounded(self):
        # The cap is the process's, its connections are its workers': 5 clients blocked on worker 0 fill it, and
        # a sixth is refused on either worker, at once, without delaying anyone else. Once the 5 are served,
        # their connections are idle, and a sixth on either worker runs its BLPOP at the first attempt: on
        # worker 1 only if worker 0 closes its idle ones when asked, rather than after their idle timeout.
        proxy = self.start_proxy("--max-blocking-connections", "5")
        r = redis.Redis(port=proxy.port, socket_timeout=10)
        r.set("{blk}other", "v")

        def on_worker(worker, count):
            """count connections that the proxy gave to `worker` (connections land where the kernel puts
            them: those on the other worker are closed)."""
            chosen = []
            for _ in range(200):
                c = Conn(proxy.port)
                info = c.call("CLIENT", "INFO")
                if ("worker=%d" % worker).encode() in info.split():
                    self.addCleanup(c.close)
                    chosen.append(c)
                    if len(chosen) == count:
                        return chosen
                else:
                    c.close()
            self.fail("200 connections, %d of them on worker %d" % (len(chosen), worker))

        for sixth_worker in (1, 0):
            r.delete("{blk}k")
            blocked = on_worker(0, 5)
            sixth = on_worker(sixth_worker, 1)[0]
            try:
                for c in blocked:
                    c.send(encode("BLPOP", "{blk}k", "0"))
                time.sleep(0.5)
                start = time.monotonic()
                reply = sixth.call("BLPOP", "{blk}k", "0", timeout=5)
                self.assertTrue(type(reply) is Err and "too many blocking" in reply, reply)
                self.assertLess(time.monotonic() - start, 0.5)
                for _ in range(20):
                    self.assertEqual(r.get("{blk}other"), b"v")
                self.assertEqual(r.lpush("{blk}k", "a", "b", "c", "d", "e"), 5)
                served = sorted(c.reply(5)[1] for c in blocked)
                self.assertEqual(served, [b"a", b"b", b"c", b"d", b"e"])
                r.rpush("{blk}k", "f")
                self.assertEqual(sixth.call("BLPOP", "{blk}k", "0", timeout=5), [b"{blk}k", b"f"],
                                 "a sixth client on worker %d, once the 5 on worker 0 were served" % sixth_worker)
            finally:
                # Clients that close give their connections back: the next round starts with none in use.
                for c in blocked + [sixth]:
                    c.close()
                self.assertTrue(wait_until(lambda: len(r.client_list()) == 1, 5, interval=0.05))
        self.assertAlive(proxy)

    # 15 ----------------------------------------------------------------------------------------------------------
    def test_15_out_of_file_descriptors(self):
        wait_for_binary()
        # UndefinedBehaviorSanitizer's check of an object's dynamic type probes memory through a pipe of its
        # own: with no descriptor left it reports any valid object as having an invalid vptr. That one check
        # is suppressed for this proxy (sanitizer builds make it recoverable for this); ASan and every other
        # UBSan check stay on and fatal.
        env = os.environ.get("UBSAN_OPTIONS")
        suppressions = os.path.join(self.cluster.dir, "ubsan-no-descriptors.supp")
        with open(suppressions, "w") as f:
            f.write("vptr_check:*\n")
        os.environ["UBSAN_OPTIONS"] = ((env + ":") if env else "halt_on_error=1:") + "suppressions=" + suppressions
        try:
            # The BLPOP below waits in the proxy for a connection it cannot open, until its request timeout.
            proxy = guard(limited_proxy(self.cluster, "--request-timeout-ms", "1000", threads=1, nofile=64))
        finally:
            if env is None:
                del os.environ["UBSAN_OPTIONS"]
            else:
                os.environ["UBSAN_OPTIONS"] = env
        self.addCleanup(stop_if_running, proxy)
        kept = []
        try:
            refusal = None
            for _ in range(200):
                c = None
                try:
                    c = self.conn(proxy.port, timeout=2)
                    refusal = c.call("PING", timeout=1)
                    if refusal != PONG:
                        c.close()
                        break
                except (OSError, TimeoutError, ConnectionClosed) as e:
                    refusal = e
                    if c:
                        c.close()
                    break
                kept.append(c)
            log("a proxy limited to 64 descriptors took %d clients, then: %r" % (len(kept), refusal))
            self.assertGreater(len(kept), 5)
            self.assertLess(len(kept), 200, "the proxy never ran out of descriptors")
            start = time.monotonic()
            try:
                reply = kept[0].call("BLPOP", "{fd}k", "1", timeout=5)
            except (TimeoutError, ConnectionClosed) as e:
                reply = e
            log("BLPOP needing a new connection: %r" % (reply,))
            self.assertAlive(proxy)
            self.assertEqual(type(reply), Err, "BLPOP needing a new connection: %r after %.1f s" % (
                reply, time.monotonic() - start))
            for i, c in enumerate(kept[1:]):
                self.assertEqual(c.call("PING", timeout=5), PONG, "client %d" % (i + 1))
            self.assertEqual(kept[0].call("PING", timeout=5), PONG)
        finally:
            for c in kept:
                c.close()
        self.assertAlive(proxy)


# ---------------------------------------------------------------------------------------------------------------
# 16: SCAN while the topology changes


class ScanThroughTopologyChanges(ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 1)
        cls.keys = {("scan16:%d" % i).encode() for i in range(3000)}
        try:
            wait_for_binary()
            proxy = harness.Proxy(cls.cluster)
            try:
                r = redis.Redis(port=proxy.port, socket_timeout=30)
                keys = sorted(cls.keys)
                for i in range(0, len(keys), 500):
                    r.mset({k: b"v" for k in keys[i:i + 500]})
                assert r.dbsize() == len(keys)
            finally:
                proxy.stop()
        except BaseException:
            cls.cluster.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def scan_until_second_master(self, r, owner):
        """SCANs until the keys returned come from a second master: (cursor, keys seen, the master walked
        first, the one being walked)."""
        seen, cursor, first = set(), 0, None
        for _ in range(1000):
            cursor, batch = r.scan(cursor, count=100)
            seen.update(batch)
            masters = {owner[key_slot(k)] for k in batch}
            if first is None and masters:
                first = next(iter(masters))
            others = masters - {first}
            if others:
                return cursor, seen, first, next(iter(others))
            self.assertNotEqual(cursor, 0, "the SCAN ended without reaching a second master")
        self.fail("SCAN did not reach a second master")

    def finish_scan(self, r, cursor, seen):
        deadline = time.time() + 60
        while cursor != 0:
            self.assertLess(time.time(), deadline, "the SCAN did not end")
            cursor, batch = r.scan(cursor, count=100)
            seen.update(batch)
        missing = self.keys - seen
        self.assertEqual(len(missing), 0, "%d keys never returned, e.g. %r" % (len(missing), sorted(missing)[:5]))

    def failover(self, replica):
        for _ in range(4):
            self.cluster.cli(replica, "cluster", "failover")
            if wait_until(lambda: self.cluster.cli(replica, "role").splitlines()[0] == "master", 10, interval=0.1):
                return
        self.fail("%s:%d did not become master" % replica)

    def test_16a_scan_through_failovers(self):
        proxy = self.start_proxy("--refresh-interval-ms", "200", "--request-timeout-ms", "15000")
        r = redis.Redis(port=proxy.port, socket_timeout=30)
        owner = self.cluster.owners()
        cursor, seen, first, walking = self.scan_until_second_master(r, owner)
        log("SCAN: %d keys seen when it reached the second master" % len(seen))
        untouched = next(m for m in set(owner) if m not in (first, walking))
        for master_id in (untouched, walking):
            # A node learns of the cluster's replicas by gossip: wait until the one asked knows this one's.
            replicas = []
            self.assertTrue(wait_until(lambda: replicas.extend(
                e.addr for e in self.cluster.view(self.cluster.nodes[0]) if e.master_id == master_id) or replicas,
                20, interval=0.2), "no replica of %s known" % master_id)
            self.failover(replicas[0])
        self.cluster.wait_consistent()
        time.sleep(1)  # the proxy's map is reloaded every 200 ms
        self.finish_scan(r, cursor, seen)
        self.assertAlive(proxy)

    def test_16b_scan_while_a_master_is_added(self):
        if harness.SERVER != "redis-7.0":
            self.skipTest("a node is added with the host's redis-server only")
        proxy = self.start_proxy("--refresh-interval-ms", "200")
        r = redis.Redis(port=proxy.port, socket_timeout=30)
        owner = self.cluster.owners()
        cursor, seen, _, _ = self.scan_until_second_master(r, owner)
        # A fresh, empty master in the cluster's directory: cluster.sh stop stops it with the others.
        port = next(p for p in (random.randint(20000, 29999) for _ in range(1000))
                    if all(bindable(q) for q in (p, p + 10000)))
        d = os.path.join(self.cluster.dir, str(port))
        os.makedirs(d)
        subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "no",
                        "--daemonize", "yes", "--dir", d, "--pidfile", os.path.join(d, "redis.pid"),
                        "--logfile", os.path.join(d, "redis.log"), "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"],
                       check=True, capture_output=True, timeout=30)
        new = ("127.0.0.1", port)
        self.assertTrue(wait_until(lambda: self.cluster.cli(new, "ping", check=False).strip() == "PONG", 10))
        new_id = self.cluster.node_id(new)
        self.cluster.cli(new, "cluster", "meet", self.cluster.nodes[0][0], str(self.cluster.nodes[0][1]))
        self.assertTrue(wait_until(lambda: all(any(e.id == new_id for e in self.cluster.view(n))
                                               for n in self.cluster.nodes), 20, interval=0.2))
        time.sleep(1)  # the proxy's map is reloaded every 200 ms
        self.finish_scan(r, cursor, seen)
        self.assertAlive(proxy)


def bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


if __name__ == "__main__":
    harness.main()
