"""RESP3 through slotshift-proxy, byte for byte: the same commands sent after HELLO 3 to one Redis node and to the
proxy must come back in the same RESP3 shapes (maps, doubles, nulls, pushes), including the replies the proxy makes
or merges itself. node-redis's RESP3 mode runs in proxy_node_redis_test.py.

  SLOTSHIFT_SOURCE_DIR=... SLOTSHIFT_BINARY_DIR=... tests/integration/proxy_resp3_test.py"""

import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def read_value(f):
    """One RESP2/RESP3 value from the file `f`, as nested Python: (type byte, payload)."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise AssertionError("connection closed mid-reply: %r" % line)
    t, rest = line[:1], line[1:-2]
    if t in b"+-:,#(_":
        return (t, rest)
    if t in b"$=!":
        n = int(rest)
        if n < 0:
            return (t, None)
        data = f.read(n + 2)[:-2]
        return (t, data)
    if t in b"*~>%":
        n = int(rest)
        if n < 0:
            return (t, None)
        count = n * 2 if t == b"%" else n
        return (t, [read_value(f) for _ in range(count)])
    raise AssertionError("unknown RESP type %r" % line)


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.sock.makefile("rb")

    def send(self, *commands):
        self.sock.sendall(b"".join(command(*c) for c in commands))

    def call(self, *args):
        self.send(args)
        return read_value(self.f)

    def read(self):
        return read_value(self.f)

    def close(self):
        self.f.close()  # the socket's file holds the connection open otherwise
        self.sock.close()


class Resp3(unittest.TestCase):
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

    def both(self):
        """A connection to the proxy, after HELLO 3."""
        p = Conn(self.proxy.port)
        self.addCleanup(p.close)
        self.assertEqual(p.call("HELLO", "3")[0], b"%")
        return p

    def node_for(self, key):
        slot = int(self.cluster.cli(self.cluster.masters()[0], "CLUSTER", "KEYSLOT", key).strip())
        node = self.cluster.address(self.cluster.owners()[slot])
        n = Conn(node[1])
        self.addCleanup(n.close)
        self.assertEqual(n.call("HELLO", "3")[0], b"%")
        return n

    def test_hello_3_answers_a_map_and_client_info_says_resp3(self):
        p = Conn(self.proxy.port)
        self.addCleanup(p.close)
        t, pairs = p.call("HELLO", "3")
        self.assertEqual(t, b"%")
        fields = {pairs[i][1]: pairs[i + 1][1] for i in range(0, len(pairs), 2)}
        self.assertEqual(fields[b"proto"], b"3")
        self.assertIn(b"resp=3", p.call("CLIENT", "INFO")[1])
        # Text for people, as Redis gives it in RESP3: a verbatim string of format txt, whoever makes it.
        for c in (("CLIENT", "INFO"), ("CLIENT", "LIST"), ("INFO", "proxy"), ("INFO", "clients"), ("INFO",)):
            t, text = p.call(*c)
            self.assertEqual((t, text[:4]), (b"=", b"txt:"), c)
        # HELLO 2 goes back, HELLO 4 is refused as Redis refuses it.
        self.assertEqual(p.call("HELLO", "2")[0], b"*")
        self.assertTrue(p.call("HELLO", "4")[1].startswith(b"NOPROTO"))

    def test_typed_replies_are_the_nodes_own(self):
        p = self.both()
        n = self.node_for("{r3}h")
        for c in (("DEL", "{r3}h", "{r3}z", "{r3}s"), ("HSET", "{r3}h", "a", "1", "b", "2"),
                  ("ZADD", "{r3}z", "2.5", "m"), ("SADD", "{r3}s", "x", "y")):
            p.call(*c)
        for c in (("HGETALL", "{r3}h"), ("ZSCORE", "{r3}z", "m"), ("SMEMBERS", "{r3}s"), ("GET", "{r3}none"),
                  ("ZRANGE", "{r3}z", "0", "-1", "WITHSCORES"), ("HRANDFIELD", "{r3}none", "1", "WITHVALUES"),
                  ("CONFIG", "GET", "maxmemory-policy"), ("EXISTS", "{r3}h")):
            self.assertEqual(p.call(*c), n.call(*c), c)
        self.assertEqual(p.call("HGETALL", "{r3}h")[0], b"%")
        # INFO, summed over the masters: a verbatim string, as Redis gives it in RESP3.
        t, text = p.call("INFO", "keyspace")
        self.assertEqual((t, text[:4]), (b"=", b"txt:"))
        self.assertIn(b"# Keyspace", text)
        self.assertEqual(p.call("ZSCORE", "{r3}z", "m"), (b",", b"2.5"))
        self.assertEqual(p.call("GET", "{r3}none"), (b"_", b""))

    def test_split_and_proxy_made_replies_take_resp3_shapes(self):
        p = self.both()
        p.call("MSET", "r3a", "1", "r3b", "2", "r3c", "3")
        # MGET over several masters: the elements the nodes gave, a missing key as RESP3's null.
        t, elements = p.call("MGET", "r3a", "r3missing", "r3b", "r3c")
        self.assertEqual(t, b"*")
        self.assertEqual(elements, [(b"$", b"1"), (b"_", b""), (b"$", b"2"), (b"$", b"3")])
        # A nil the proxy makes itself.
        p.call("CLIENT", "SETNAME", "")
        self.assertEqual(p.call("CLIENT", "GETNAME"), (b"_", b""))
        # PUBSUB NUMSUB over every master: a map, as Redis gives it in RESP3.
        n = self.node_for("r3a")
        self.assertEqual(p.call("PUBSUB", "NUMSUB", "r3ch")[0], n.call("PUBSUB", "NUMSUB", "r3ch")[0])
        # RESET: back to RESP2.
        self.assertEqual(p.call("RESET"), (b"+", b"RESET"))
        self.assertEqual(p.call("GET", "r3missing"), (b"$", None))

    def test_pubsub_messages_are_pushes_and_commands_still_run(self):
        p = self.both()
        # Nothing subscribed: the confirmation names no channel, with RESP3's null, as a node's does.
        n = self.node_for("r3a")
        self.assertEqual(p.call("UNSUBSCRIBE"), n.call("UNSUBSCRIBE"))
        self.assertEqual(p.call("UNSUBSCRIBE"), (b">", [(b"$", b"unsubscribe"), (b"_", b""), (b":", b"0")]))
        self.assertEqual(p.call("SUBSCRIBE", "r3ch"), (b">", [(b"$", b"subscribe"), (b"$", b"r3ch"), (b":", b"1")]))
        # RESP3 has no subscribed mode: any command runs, its reply among the pushes.
        self.assertEqual(p.call("SET", "r3k", "v"), (b"+", b"OK"))
        pub = Conn(self.proxy.port)
        self.addCleanup(pub.close)
        for i in range(5):
            pub.call("PUBLISH", "r3ch", "m%d" % i)
        got = [p.read() for _ in range(5)]
        self.assertEqual(got, [(b">", [(b"$", b"message"), (b"$", b"r3ch"), (b"$", b"m%d" % i)]) for i in range(5)])
        self.assertEqual(p.call("GET", "r3k"), (b"$", b"v"))
        self.assertEqual(p.call("PING"), (b"+", b"PONG"))
        self.assertEqual(p.call("UNSUBSCRIBE", "r3ch"),
                         (b">", [(b"$", b"unsubscribe"), (b"$", b"r3ch"), (b":", b"0")]))

    def test_a_watched_exec_whose_protocol_changed_answers_null(self):
        p = Conn(self.proxy.port)
        self.addCleanup(p.close)
        self.assertEqual(p.call("WATCH", "r3w"), (b"+", b"OK"))
        p.call("HELLO", "3")
        self.assertEqual(p.call("MULTI"), (b"+", b"OK"))
        self.assertEqual(p.call("SET", "r3w", "1"), (b"+", b"QUEUED"))
        # The watch lived on a RESP2 connection: it is broken, the transaction not applied, EXEC a RESP3 null.
        self.assertEqual(p.call("EXEC"), (b"_", b""))
        self.assertEqual(p.call("GET", "r3w"), (b"_", b""))


if __name__ == "__main__":
    harness.main()
