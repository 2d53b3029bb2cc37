#!/usr/bin/python3
"""Pub/Sub through slotshift-proxy, as on one Redis: SUBSCRIBE, PSUBSCRIBE and sharded SSUBSCRIBE with a thread
reading messages, the confirmations and errors a node gives, PUBSUB answered for the whole cluster, and shard
channels that follow their slot while slotshift move or redis-cli --cluster reshard moves it (every message
published through the proxy arrives once). Real clients: python3-redis, redis-cli, ioredis. Run by ctest; runs
alone too: tests/integration/proxy_pubsub_test.py [-k pattern]."""

import os
import select
import signal
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


def parse(buf, at=0):
    """One RESP2 value from buf[at:]: (value, next position), or None while incomplete. Errors as "error: ..."."""
    end = buf.find(b"\r\n", at)
    if end < 0:
        return None
    kind, line = buf[at:at + 1], buf[at + 1:end]
    if kind == b"+":
        return line, end + 2
    if kind == b"-":
        return "error: " + line.decode(), end + 2
    if kind == b":":
        return int(line), end + 2
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, end + 2
        if len(buf) < end + 2 + n + 2:
            return None
        return buf[end + 2:end + 2 + n], end + 2 + n + 2
    if kind == b"*":
        n, pos, out = int(line), end + 2, []
        for _ in range(max(n, 0)):
            got = parse(buf, pos)
            if got is None:
                return None
            value, pos = got
            out.append(value)
        return (None if n < 0 else out), pos
    raise AssertionError("not RESP: %r" % buf[at:at + 20])


def exchange(port, commands):
    """Sends each command and reads every reply it brings (until the connection is quiet for 0.3 s), on one
    connection: what a client sees, errors included."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for command in commands:
            s.sendall(command_bytes(*command))
            buf = b""
            while select.select([s], [], [], 0.3)[0]:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            pos = 0
            while pos < len(buf):
                got = parse(buf, pos)
                assert got is not None, "an incomplete reply: %r" % buf[pos:]
                value, pos = got
                out.append(value)
    return out


def channel_in_slot_of(slot, prefix):
    for i in range(100000):
        name = "%s%d" % (prefix, i)
        if key_slot(name.encode()) == slot:
            return name
    raise AssertionError("no name found")


def command_bytes(*args):
    wire = b"*%d\r\n" % len(args)
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        wire += b"$%d\r\n%s\r\n" % (len(arg), arg)
    return wire


class Reader:
    """A subscriber on its own thread, on a connection of its own: every message it gets, in order, as
    (channel, data)."""

    def __init__(self, port, kind, names, also=()):
        """also: more (kind, names) subscriptions of the same client."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf, self.pos = b"", 0
        for k, n in [(kind, names), *also]:
            self.sock.sendall(command_bytes(k, *n))
            for _ in n:
                reply = self.next(deadline=time.time() + 10)
                assert reply and reply[0].decode() == k.lower(), reply
        self.messages = []
        self.errors = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def next(self, deadline):
        """The next reply, or None at the deadline."""
        while True:
            got = parse(self.buf, self.pos)
            if got is not None:
                value, self.pos = got
                return value
            if time.time() >= deadline or not select.select([self.sock], [], [], 0.1)[0]:
                if time.time() >= deadline:
                    return None
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the proxy")
            self.buf = self.buf[self.pos:] + chunk
            self.pos = 0

    def run(self):
        while not self.stop.is_set():
            try:
                m = self.next(deadline=time.time() + 0.2)
            except (ConnectionError, OSError) as e:
                self.errors.append(repr(e))
                return
            if m is None:
                continue
            if m[0] in (b"message", b"smessage"):
                self.messages.append((m[1].decode(), m[2].decode()))
            elif m[0] == b"pmessage":
                self.messages.append((m[2].decode(), m[3].decode()))
            else:
                self.errors.append("unexpected: %r" % (m,))

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


class PubSub(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)
        cls.proxy = harness.Proxy(cls.cluster, admin=True, admin_token="t")

    @classmethod
    def tearDownClass(cls):
        try:
            cls.proxy.stop()
        finally:
            cls.cluster.stop()

    def client(self):
        return redis.Redis(host="127.0.0.1", port=self.proxy.port, socket_timeout=30)

    def wait_for(self, reader, count, timeout=10):
        deadline = time.time() + timeout
        while len(reader.messages) < count and time.time() < deadline:
            time.sleep(0.02)

    def test_replies_are_a_nodes_own(self):
        """The same sequence against a node and through the proxy: the same confirmations, counts, errors."""
        node = self.cluster.nodes[0][1]
        # A node answers SSUBSCRIBE only for its own slots: the shard channels are in a slot node 0 owns.
        owned = self.cluster.slots_of(self.cluster.nodes[0])[0]
        t1, t2 = channel_in_slot_of(owned, "t"), channel_in_slot_of(owned, "tt")
        other, mine = channel_in_slot_of(owned + 1, "u"), channel_in_slot_of(owned, "k")
        # Keys and channels in that slot too: a cluster node answers MOVED for others, even in subscribed mode,
        # where one Redis (and the proxy) says the command is not allowed.
        sequence = [("SUBSCRIBE", "a", "b", "a"), ("PSUBSCRIBE", "p*"), ("GET", mine), ("PING",), ("PING", "hi"),
                    ("UNSUBSCRIBE", "b", "zz"), ("PUNSUBSCRIBE",), ("UNSUBSCRIBE",), ("UNSUBSCRIBE",),
                    ("SSUBSCRIBE", t1, t2), ("SSUBSCRIBE", t1, other), ("SUBSCRIBE", "c"), ("SUNSUBSCRIBE", t1),
                    ("SUNSUBSCRIBE",), ("PING",), ("UNSUBSCRIBE",), ("PING",), ("SUBSCRIBE",),
                    ("SUNSUBSCRIBE", mine)]
        direct = exchange(node, sequence)
        through = exchange(self.proxy.port, sequence)
        self.maxDiff = None
        self.assertEqual(through, direct)

    def test_messages_reach_every_subscriber_once(self):
        readers = [Reader(self.proxy.port, "SUBSCRIBE", ["news", "sports"]) for _ in range(3)]
        patterns = Reader(self.proxy.port, "PSUBSCRIBE", ["n*"])
        try:
            r = self.client()
            sent = []
            for i in range(300):
                channel = ("news", "sports")[i % 2]
                # Through the proxy, and straight to each node: a cluster delivers every PUBLISH everywhere.
                if i % 3 == 0:
                    node = self.cluster.nodes[i % len(self.cluster.nodes)]
                    redis.Redis(host=node[0], port=node[1]).publish(channel, str(i))
                else:
                    r.publish(channel, str(i))
                sent.append((channel, str(i)))
            for reader in readers:
                self.wait_for(reader, len(sent))
            self.wait_for(patterns, 150)
        finally:
            for reader in readers + [patterns]:
                reader.close()
        for reader in readers:
            self.assertEqual(reader.errors, [])
            self.assertEqual(sorted(reader.messages), sorted(sent), "lost or repeated messages")
        self.assertEqual(sorted(patterns.messages), sorted(m for m in sent if m[0] == "news"))

    def test_python_pubsub_with_a_thread(self):
        r = self.client()
        p = r.pubsub()
        got = []
        p.subscribe(**{"py:chan": lambda m: got.append(m["data"])})
        worker = p.run_in_thread(sleep_time=0.01)
        try:
            # subscribe() does not wait for the confirmation: a message published before the node has the
            # subscription is not heard (on one Redis too), so the test waits until it does.
            deadline = time.time() + 10
            while r.execute_command("PUBSUB", "NUMSUB", "py:chan")[1] == 0 and time.time() < deadline:
                time.sleep(0.01)
            for i in range(50):
                r.publish("py:chan", "m%d" % i)
            deadline = time.time() + 10
            while len(got) < 50 and time.time() < deadline:
                time.sleep(0.02)
        finally:
            worker.stop()
            worker.join()
            p.close()
        self.assertEqual(got, [b"m%d" % i for i in range(50)])

    def test_pubsub_counts_the_whole_cluster(self):
        masters = self.cluster.masters_by_slot()
        # Channels whose slots are on different masters: their subscribers sit on different nodes.
        names = [channel_in_slot_of(self.cluster.slots_of(m)[0], "cnt") for m in masters]
        readers = [Reader(self.proxy.port, "SUBSCRIBE", [n]) for n in names]
        shard = Reader(self.proxy.port, "SSUBSCRIBE", [names[1]])
        pattern = Reader(self.proxy.port, "PSUBSCRIBE", ["cnt*"])
        try:
            r = self.client()
            channels = sorted(c.decode() for c in r.execute_command("PUBSUB", "CHANNELS", "cnt*"))
            self.assertEqual(channels, sorted(names))
            numsub = r.execute_command("PUBSUB", "NUMSUB", *names, "nobody")
            self.assertEqual(numsub, [x for n in names for x in (n.encode(), 1)] + [b"nobody", 0])
            self.assertEqual(r.execute_command("PUBSUB", "NUMPAT"), 1)
            self.assertEqual(r.execute_command("PUBSUB", "SHARDCHANNELS", "cnt*"), [names[1].encode()])
            self.assertEqual(r.execute_command("PUBSUB", "SHARDNUMSUB", names[1]), [names[1].encode(), 1])
            # What the nodes themselves say, added up, is what the proxy says.
            direct = sum(redis.Redis(host=n[0], port=n[1]).execute_command("PUBSUB", "NUMSUB", names[0])[1]
                         for n in self.cluster.nodes)
            self.assertEqual(direct, 1)
        finally:
            for reader in readers + [shard, pattern]:
                reader.close()

    def test_shard_channels_on_every_master(self):
        masters = self.cluster.masters_by_slot()
        names = [channel_in_slot_of(self.cluster.slots_of(m)[-1], "sh") for m in masters]
        readers = [Reader(self.proxy.port, "SSUBSCRIBE", [n]) for n in names]
        try:
            r = self.client()
            for i in range(100):
                for n in names:
                    self.assertEqual(r.execute_command("SPUBLISH", n, str(i)), 1)
            for reader in readers:
                self.wait_for(reader, 100)
        finally:
            for reader in readers:
                reader.close()
        for n, reader in zip(names, readers):
            self.assertEqual(reader.errors, [])
            self.assertEqual(reader.messages, [(n, str(i)) for i in range(100)])

    def test_redis_cli_subscribes(self):
        sub = subprocess.Popen(["redis-cli", "-p", str(self.proxy.port), "SUBSCRIBE", "cli:chan"],
                               stdout=subprocess.PIPE, text=True)
        try:
            r = self.client()
            deadline = time.time() + 10
            while r.publish("cli:chan", "hello") == 0 and time.time() < deadline:
                time.sleep(0.05)
        finally:
            time.sleep(0.2)
            sub.terminate()
        out = sub.communicate(timeout=10)[0].split("\n")
        self.assertEqual(out[:3], ["subscribe", "cli:chan", "1"])
        self.assertEqual(out[3:6], ["message", "cli:chan", "hello"])

    def moved_under_publishers(self, mover, prefix, target_index):
        """A shard channel in a slot that `mover` moves, and one of the classic kind: a publisher sends numbered
        messages to each through the proxy all along, and the subscribers (through the proxy) must get every
        message once, in order. The shard channel's subscriber also has a shard channel on the target, so
        that its connection there is in subscribed mode already when its channel follows the slot."""
        masters = self.cluster.masters_by_slot()
        source, target = masters[0], masters[target_index]
        slot = self.cluster.slots_of(source)[0]
        shard = channel_in_slot_of(slot, prefix + "s")
        classic = channel_in_slot_of(slot, prefix + "c")
        on_target = channel_in_slot_of(self.cluster.slots_of(target)[-1], prefix + "t")
        shard_reader = Reader(self.proxy.port, "SSUBSCRIBE", [shard], also=[("SSUBSCRIBE", [on_target])])
        classic_reader = Reader(self.proxy.port, "SUBSCRIBE", [classic])
        sent, errors = [], []
        # What each classic PUBLISH answered: the subscribers of the node it ran on. 1 says it ran on the node
        # where the proxy subscribed the classic channel (the source, its owner then), 0 that it ran elsewhere
        # and reached the subscriber over the cluster bus.
        receivers = {}
        stop = threading.Event()

        def publish():
            r = self.client()
            i = 0
            while not stop.is_set():
                try:
                    r.execute_command("SPUBLISH", shard, str(i))
                    receivers[str(i)] = r.publish(classic, str(i))
                    sent.append(str(i))
                except redis.RedisError as e:
                    errors.append(str(e))
                i += 1
                time.sleep(0.001)
        publisher = threading.Thread(target=publish)
        publisher.start()
        try:
            time.sleep(0.5)
            mover(slot, source, target)
            time.sleep(0.5)
        finally:
            stop.set()
            publisher.join()
            self.wait_for(shard_reader, len(sent), timeout=5)
            self.wait_for(classic_reader, len(sent), timeout=5)
            shard_reader.close()
            classic_reader.close()
        self.assertEqual(errors, [])
        self.assertEqual(shard_reader.errors + classic_reader.errors, [])
        got = [m[1] for m in shard_reader.messages]
        missing = sorted(set(sent) - set(got), key=int)
        print("%s: %d messages published; shard channel: %d received, %d missing %s; classic: %d received" % (
            prefix, len(sent), len(got), len(missing), missing[:10], len(classic_reader.messages)), file=sys.stderr)
        self.assertEqual(got, sent, "shard channel: messages lost, repeated or out of order")
        classic_got = [m[1] for m in classic_reader.messages]
        first = next((i for i, (a, b) in enumerate(zip(classic_got, sent)) if a != b), None)
        self.assertEqual(classic_got, sent, "classic channel: from message %s on, received %s; the subscribers "
                         "of the node each of those went to: %s" % (
                             first, classic_got[first:first + 12] if first is not None else None,
                             [receivers.get(m) for m in sent[first:first + 12]] if first is not None else None))

    def test_shard_channel_follows_a_slotshift_move(self):
        def move(slot, source, target):
            target_id = self.cluster.node_id(target)
            run = subprocess.run([harness.SLOTSHIFT_BIN, "move", "--cluster", self.cluster.seed(), "--slots",
                                  str(slot), "--to", target_id, "--proxy", "127.0.0.1:%d" % self.proxy.admin_port,
                                  "--proxy-token", "t"], capture_output=True, text=True, timeout=120)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            self.cluster.wait_owner([slot], target_id)
        self.moved_under_publishers(move, "mv", 1)

    def subscribe_right_after_a_handoff(self, pipelined_get):
        """A client subscribes to a shard channel right after a handoff moved its slot, on a worker that had
        nothing to do with the slot (no command held, no subscriber), which the handoff did not wake: its
        subscription must go to the new owner and hear what is published there, even while the old owner has
        not learnt the claim (it is stopped here, as a busy source can be for a while). pipelined_get: a GET of
        a key on a third master comes first in the same write, so that the worker takes the registry for that
        command's dispatch (which leaves routes to a sync of its own) before the SSUBSCRIBE."""
        proxy = harness.Proxy(self.cluster, threads=1, admin=True, admin_token="t")
        masters = self.cluster.masters_by_slot()
        source, target, third = masters[0], masters[1], masters[2]
        target_id = self.cluster.node_id(target)
        slot = self.cluster.slots_of(source)[-1]  # the other tests take the first slots
        self.assertEqual(self.cluster.cli(source, "cluster", "countkeysinslot", str(slot)).strip(), "0")
        channel = channel_in_slot_of(slot, "handoff")
        elsewhere = channel_in_slot_of(self.cluster.slots_of(third)[0], "elsewhere")
        pid = int(next(line.split(":")[1] for line in self.cluster.cli(source, "info", "server").splitlines()
                       if line.startswith("process_id:")))
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        reader = Reader.__new__(Reader)  # its reply parser, on this connection
        reader.sock, reader.buf, reader.pos = client, b"", 0
        try:
            # The client's connection is the worker's before the handoff, and idle.
            client.sendall(command_bytes("PING"))
            self.assertEqual(reader.next(deadline=time.time() + 10), b"PONG")
            os.kill(pid, signal.SIGSTOP)
            try:
                # The claim, as a move makes it, with the source unable to learn it meanwhile.
                self.cluster.cli(target, "cluster", "bumpepoch")
                self.cluster.cli(target, "cluster", "setslot", str(slot), "node", target_id)
                status, body = proxy.admin_call("POST", "/v1/slots/handoff",
                                                {"slots": str(slot), "node": "%s:%d" % target})
                self.assertEqual(status, 200, body)
                # At once: the worker looks at the published routes at its next tick by itself (10 ms while it
                # has a client), and the old code passed whenever one fell in between.
                client.sendall((command_bytes("GET", elsewhere) if pipelined_get else b"") +
                               command_bytes("SSUBSCRIBE", channel))
                if pipelined_get:
                    self.assertIsNone(reader.next(deadline=time.time() + 5))
                confirmed = reader.next(deadline=time.time() + 2)
                self.assertEqual(confirmed, [b"ssubscribe", channel.encode(), 1],
                                 "the subscription was not confirmed within 2 s (sent to the stopped old owner?)")
                self.assertEqual(self.cluster.cli(target, "spublish", channel, "hello").strip(), "1",
                                 "the new owner has no subscriber for the channel")
                self.assertEqual(reader.next(deadline=time.time() + 5), [b"smessage", channel.encode(), b"hello"])
            finally:
                os.kill(pid, signal.SIGCONT)
            self.cluster.wait_owner([slot], target_id)
        finally:
            client.close()
            proxy.stop()

    def test_shard_subscriber_right_after_a_handoff_hears_the_new_owner(self):
        self.subscribe_right_after_a_handoff(pipelined_get=False)

    def test_shard_subscriber_behind_a_pipelined_command_right_after_a_handoff(self):
        self.subscribe_right_after_a_handoff(pipelined_get=True)

    def test_shard_channel_follows_a_reshard(self):
        def reshard(slot, source, target):
            run = subprocess.run(["redis-cli", "--cluster", "reshard", self.cluster.seed(), "--cluster-from",
                                  self.cluster.node_id(source), "--cluster-to", self.cluster.node_id(target),
                                  "--cluster-slots", "1", "--cluster-yes"], capture_output=True, text=True,
                                 timeout=300)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.moved_under_publishers(reshard, "rs", 2)


if __name__ == "__main__":
    harness.main()
