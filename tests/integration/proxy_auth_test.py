#!/usr/bin/python3
"""slotshift-proxy with logins, as users set them up: a cluster that asks for a password, a proxy that asks its
clients for one, and ACL users passed through to the cluster, each allowed and refused exactly as Redis would.
Real clients: redis-cli, Debian's python3-redis, ioredis. Run by ctest; runs alone too:
tests/integration/proxy_auth_test.py [-k pattern]."""

import os
import subprocess
import sys
import threading
import time
import unittest

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# The ACL lines the README gives for the proxy's own user, tested here as written there.
PROXY_USER_SHARED = "on >{pw} ~* &* +@all -@admin"
PROXY_USER_ACL_MODE = ("on >{pw} resetchannels -@all +cluster|shards +cluster|slots +cluster|myid "
                       "+cluster|nodes")
ADMIN = ("admin", "adminpw")


def secret_file(directory, name, text):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return path


def node_client(node, user=ADMIN[0], password=ADMIN[1]):
    return redis.Redis(host=node[0], port=node[1], username=user, password=password, socket_timeout=30)


def set_up_acl(cluster, users):
    """Defines `users` ({name: rules}) and an admin on every node, then turns the default user off: nothing
    reaches the cluster without a login."""
    for node in cluster.nodes:
        cluster.cli(node, "ACL", "SETUSER", ADMIN[0], "on", ">" + ADMIN[1], "~*", "&*", "+@all")
        c = node_client(node)
        for name, rules in users.items():
            c.execute_command("ACL", "SETUSER", name, *rules.split())
        c.execute_command("ACL", "SETUSER", "default", "off")


def owner_of(cluster, key):
    """A connection (as the admin) to the master that owns key."""
    for node in cluster.nodes:
        c = node_client(node)
        try:
            c.exists(key)
            return c
        except redis.ResponseError as e:
            if not str(e).startswith("MOVED"):
                raise
    raise AssertionError("no node owns " + key)


def direct_error(cluster, user, password, *command):
    """The error a node gives `user` for `command` (the ACL is checked before the slot: any node answers)."""
    c = node_client(cluster.nodes[0], user, password)
    try:
        c.execute_command(*command)
    except redis.ResponseError as e:
        return str(e)
    raise AssertionError("the node ran %s as %s" % (command, user))


def run_ioredis(port, user, password):
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, IOREDIS_PASSWORD=password)
    if user:
        env["IOREDIS_USERNAME"] = user
    return subprocess.run(["node", os.path.join(here, "js-clients", "ioredis_test.js"), str(port)], env=env,
                          capture_output=True, text=True, timeout=120)


class ProxyInFront(unittest.TestCase):
    """A class of tests that share one cluster and the proxy its setUpClass starts (cls.proxy)."""

    proxy = None

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.proxy:
                cls.proxy.stop()
        finally:
            cls.cluster.stop()


class ClusterWithPassword(ProxyInFront):
    """Every node asks for a password (requirepass): the proxy logs in with --masterauth, from a file or the
    environment, and its clients need none."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)
        for node in cls.cluster.nodes:
            cls.cluster.cli(node, "CONFIG", "SET", "requirepass", "clusterpw")
        cls.pwfile = secret_file(cls.cluster.dir, "masterauth", "clusterpw")

    def test_masterauth_from_a_file_and_nothing_on_the_command_line(self):
        proxy = harness.Proxy(self.cluster, "--masterauth-file", self.pwfile)
        try:
            with open("/proc/%d/cmdline" % proxy.proc.pid, "rb") as f:
                self.assertNotIn(b"clusterpw", f.read(), "the password shows in ps")
            r = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=30)
            keys = ["pw:%d" % i for i in range(300)]  # every master's slots
            self.assertTrue(r.mset({k: k.upper() for k in keys}))
            self.assertEqual(r.mget(keys), [k.upper().encode() for k in keys])
            p = r.pipeline(transaction=False)
            for k in keys:
                p.incr(k + ":n")
            self.assertEqual(p.execute(), [1] * len(keys))
            self.assertEqual(r.dbsize(), 600)
            # What the nodes hold, asked with the password: the writes are there.
            direct = redis.Redis(host=self.cluster.nodes[0][0], port=self.cluster.nodes[0][1],
                                 password="clusterpw")
            self.assertEqual(sum(redis.Redis(host=h, port=p_, password="clusterpw").dbsize()
                                 for h, p_ in self.cluster.nodes), 600)
            self.assertIsNotNone(direct.ping())
            r.flushall()
        finally:
            proxy.stop()

    def test_masterauth_from_the_environment(self):
        proxy = harness.Proxy(self.cluster, env=dict(os.environ, SLOTSHIFT_MASTERAUTH="clusterpw"))
        try:
            r = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=30)
            self.assertTrue(r.set("env:1", "v"))
            self.assertEqual(r.get("env:1"), b"v")
            r.delete("env:1")
        finally:
            proxy.stop()

    def test_route_is_checked_with_the_proxys_login(self):
        """A ROUTE (sent by slotshift move at each cutover) is checked by asking the new owner which slots it owns:
        that question logs in like every other connection of the proxy's."""
        text = redis.Redis(host=self.cluster.nodes[0][0], port=self.cluster.nodes[0][1], password="clusterpw",
                           decode_responses=True).execute_command("CLUSTER", "NODES")
        owner = next(e for e in (harness.NodeEntry(line) for line in text.splitlines() if line.strip())
                     if e.is_master() and 0 in e.slots)
        proxy = harness.Proxy(self.cluster, "--masterauth-file", self.pwfile, admin=True, admin_token="t")
        try:
            status, out = proxy.admin_call("POST", "/v1/slots/route", {"slots": "0", "node": "%s:%d" % owner.addr})
            self.assertEqual(status, 200, out)
        finally:
            proxy.stop()

    def check_clients_told(self, flags, words):
        """A proxy started with `flags` cannot log in: its clients' commands fail within the request timeout
        with an error naming the cause, and its log says what to do."""
        port = harness.free_port()
        log = open(os.path.join(self.cluster.dir, "proxy-%d.log" % port), "a+")
        proc = subprocess.Popen([harness.PROXY_BIN, "--listen", "127.0.0.1:%d" % port, "--seed",
                                 self.cluster.seed(), "--request-timeout-ms", "1000", *flags], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 10
            while True:
                try:
                    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
                    r.get("k")
                    self.fail("a proxy that cannot log in ran a command")
                except redis.ConnectionError:
                    self.assertLess(time.time(), deadline, "the proxy did not come up")
                    time.sleep(0.05)
                    continue
                except redis.ResponseError as e:
                    error = str(e)
                    break
            self.assertIn(words, error)
            log.flush()
            log.seek(0)
            self.assertIn(words, log.read())
        finally:
            proc.terminate()
            self.assertEqual(proc.wait(10), 0)
            log.close()

    def test_without_masterauth_clients_are_told_why(self):
        self.check_clients_told([], "NOAUTH")

    def test_a_wrong_masterauth_is_named(self):
        self.check_clients_told(["--masterauth", "nope"], "WRONGPASS")


class ProxyAsksForAPassword(ProxyInFront):
    """--requirepass: the proxy asks its clients for one password, as a Redis with requirepass does; the
    cluster knows only the proxy's own ACL user (the README's line for it)."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)
        set_up_acl(cls.cluster, {"slotshift-proxy": PROXY_USER_SHARED.format(pw="proxypw")})
        d = cls.cluster.dir
        cls.proxy = harness.Proxy(cls.cluster, "--requirepass-file", secret_file(d, "requirepass", "apppw"),
                                  "--masteruser", "slotshift-proxy", "--masterauth-file",
                                  secret_file(d, "masterauth", "proxypw"), login=("apppw",))

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.proxy.port), *args], capture_output=True, text=True,
                              timeout=30)

    def test_redis_cli_without_with_and_with_a_wrong_password(self):
        self.assertEqual(self.cli("SET", "cli:1", "v").stdout.strip(), "NOAUTH Authentication required.")
        wrong = self.cli("-a", "nope", "--no-auth-warning", "GET", "cli:1")
        self.assertIn("WRONGPASS invalid username-password pair or user is disabled.", wrong.stdout + wrong.stderr)
        self.assertEqual(self.cli("-a", "apppw", "--no-auth-warning", "SET", "cli:1", "v").stdout.strip(), "OK")
        self.assertEqual(self.cli("--user", "default", "--pass", "apppw", "--no-auth-warning", "GET",
                                  "cli:1").stdout.strip(), "v")
        # No other user exists in this mode.
        other = self.cli("--user", "alice", "--pass", "apppw", "--no-auth-warning", "GET", "cli:1")
        self.assertIn("WRONGPASS", other.stdout + other.stderr)

    def test_python_redis(self):
        # What redis-py raises against a Redis with requirepass: AuthenticationError without a password, and the
        # server's WRONGPASS with a wrong one.
        with self.assertRaises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=self.proxy.port).get("py:1")
        with self.assertRaisesRegex(redis.ResponseError, "^WRONGPASS"):
            redis.Redis(host="127.0.0.1", port=self.proxy.port, password="nope").get("py:1")
        r = redis.Redis(host="127.0.0.1", port=self.proxy.port, password="apppw", socket_timeout=30)
        keys = ["py:%d" % i for i in range(200)]
        self.assertTrue(r.mset({k: k for k in keys}))
        self.assertEqual(r.mget(keys), [k.encode() for k in keys])
        with r.pipeline(transaction=True) as p:
            p.set("{py}a", 1).incr("{py}a")
            self.assertEqual(p.execute(), [True, 2])
        self.assertEqual(r.delete(*keys, "{py}a"), 201)

    def test_only_the_login_commands_run_before_the_login(self):
        # MULTI is refused like any other: no transaction can be opened, and so none can hide a command.
        self.assertEqual(harness.exchange(self.proxy.port, b"MULTI\r\nGET k\r\nPING\r\n", 3),
                         ["-NOAUTH Authentication required."] * 3)
        self.assertTrue(harness.exchange(self.proxy.port, b"HELLO 2\r\n", 1)[0].startswith(
            "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH"))
        # HELLO's AUTH logs in and names the client at once; a login pipelined with commands runs them as
        # logged in.
        out = harness.exchange(self.proxy.port, b"HELLO 2 AUTH default apppw SETNAME app\r\nCLIENT GETNAME\r\nSET h 1\r\n"
                  b"RESET\r\nGET h\r\n", 31)
        self.assertEqual(out[0], "*14")
        self.assertEqual(out[-5:], ["$3", "app", "+OK", "+RESET", "-NOAUTH Authentication required."])

    def test_ioredis(self):
        run = run_ioredis(self.proxy.port, None, "apppw")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("0 failed", run.stdout)


class AclPassThrough(ProxyInFront):
    """--client-auth acl: each client logs in as one of the cluster's own users, and its commands run as that
    user, so that every refusal is the cluster's own, NOPERM included."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)
        set_up_acl(cls.cluster, {
            "slotshift-proxy": PROXY_USER_ACL_MODE.format(pw="proxypw"),
            "alice": "on >alicepw ~alice:* +@all -@dangerous",
            "bob": "on >bobpw ~bob:* +@read +@connection",
            "app": "on >apppw ~* &* +@all",
        })
        cls.proxy = harness.Proxy(cls.cluster, "--client-auth", "acl", "--masteruser", "slotshift-proxy",
                                  "--masterauth-file", secret_file(cls.cluster.dir, "masterauth", "proxypw"),
                                  login=("app", "apppw"))

    def client(self, user, password):
        return redis.Redis(host="127.0.0.1", port=self.proxy.port, username=user, password=password,
                           socket_timeout=30)

    def test_logins_are_the_clusters(self):
        with self.assertRaises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=self.proxy.port).get("alice:1")
        # The node's own refusal, word for word.
        with self.assertRaises(redis.ResponseError) as wrong:
            self.client("alice", "nope").get("alice:1")
        with self.assertRaises(redis.ResponseError) as direct:
            node_client(self.cluster.nodes[0], "alice", "nope").get("alice:1")
        self.assertEqual(str(wrong.exception), str(direct.exception))
        # The proxy's own user may not run a data command: the client can't get its rights by logging in as
        # it, since the proxy asks the cluster.
        proxy_user = self.client("slotshift-proxy", "proxypw")
        with self.assertRaises(redis.ResponseError) as e:
            proxy_user.set("x", 1)
        self.assertIsInstance(e.exception, redis.exceptions.NoPermissionError)

    def test_route_is_checked_as_the_proxys_own_user(self):
        """A ROUTE (each cutover of slotshift move sends one) asks the new owner, as the proxy's own user, which
        slots it owns: the README's line for that user allows what the check asks."""
        owner = next(e for e in (harness.NodeEntry(line) for line in
                                 node_client(self.cluster.nodes[0]).execute_command("CLUSTER", "NODES")
                                 .decode().splitlines() if line.strip()) if e.is_master() and 0 in e.slots)
        other = next(e for e in (harness.NodeEntry(line) for line in
                                 node_client(self.cluster.nodes[0]).execute_command("CLUSTER", "NODES")
                                 .decode().splitlines() if line.strip()) if e.is_master() and 0 not in e.slots)
        proxy = harness.Proxy(self.cluster, "--client-auth", "acl", "--masteruser", "slotshift-proxy",
                              "--masterauth-file", secret_file(self.cluster.dir, "masterauth", "proxypw"),
                              login=("app", "apppw"), admin=True, admin_token="t")
        try:
            status, out = proxy.admin_call("POST", "/v1/slots/route", {"slots": "0", "node": "%s:%d" % owner.addr})
            self.assertEqual(status, 200, out)
            # The node's own word refuses a route to a node that does not own the slot (asked, not assumed).
            status, out = proxy.admin_call("POST", "/v1/slots/route", {"slots": "0", "node": "%s:%d" % other.addr})
            self.assertEqual(status, 409, out)
        finally:
            proxy.stop()

    def test_each_user_allowed_and_refused_as_redis_would(self):
        alice, bob = self.client("alice", "alicepw"), self.client("bob", "bobpw")
        keys = ["alice:%d" % i for i in range(100)]
        self.assertTrue(alice.mset({k: k for k in keys}))
        self.assertEqual(alice.mget(keys), [k.encode() for k in keys])
        for k in keys[:5]:
            self.assertEqual(owner_of(self.cluster, k).get(k), k.encode())
        owner_of(self.cluster, "bob:1").set("bob:1", "b")
        self.assertEqual(bob.get("bob:1"), b"b")
        refused = [
            (bob, ("bob", "bobpw"), ("SET", "bob:1", "x")),       # a command bob may not run
            (bob, ("bob", "bobpw"), ("GET", "alice:1")),          # a key bob may not read
            (alice, ("alice", "alicepw"), ("GET", "bob:1")),
            (alice, ("alice", "alicepw"), ("KEYS", "*")),         # -@dangerous, fanned out to every master
            (alice, ("alice", "alicepw"), ("MGET", "alice:1", "bob:1")),  # split over two slots
        ]
        for client, login, command in refused:
            with self.assertRaises(redis.ResponseError, msg=command) as e:
                client.execute_command(*command)
            self.assertEqual(str(e.exception), direct_error(self.cluster, *login, *command), command)
        self.assertEqual(owner_of(self.cluster, "bob:1").get("bob:1"), b"b")
        self.assertEqual(bob.dbsize(), sum(node_client(n).dbsize() for n in self.cluster.nodes))
        self.assertEqual(alice.delete(*keys), 100)

    def test_two_users_side_by_side_never_share_rights(self):
        """alice and bob pipeline at once through the same proxy (the same threads, the same nodes): every one
        of bob's writes to alice's keys is refused, every one of alice's applied."""
        errors = []

        def alice_writes():
            c = self.client("alice", "alicepw")
            for i in range(20):
                p = c.pipeline(transaction=False)
                for j in range(50):
                    p.set("alice:side:%d" % j, "%d" % i)
                if p.execute() != [True] * 50:
                    errors.append("alice's writes were not all applied")

        def bob_writes():
            c = self.client("bob", "bobpw")
            for i in range(20):
                p = c.pipeline(transaction=False)
                for j in range(50):
                    p.set("alice:side:%d" % j, "bob")
                for result in p.execute(raise_on_error=False):
                    if not isinstance(result, redis.exceptions.NoPermissionError):
                        errors.append("bob's write to alice's key gave %r" % result)
                        return

        threads = [threading.Thread(target=alice_writes), threading.Thread(target=bob_writes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        for j in range(50):
            self.assertEqual(owner_of(self.cluster, "alice:side:%d" % j).get("alice:side:%d" % j), b"19")

    def test_auth_again_changes_the_user_and_reset_logs_out(self):
        out = harness.exchange(self.proxy.port, b"AUTH alice alicepw\r\nSET alice:x 1\r\nAUTH bob bobpw\r\nGET alice:x\r\n"
                  b"AUTH bob wrong\r\nGET bob:none\r\nRESET\r\nGET bob:none\r\n", 8)
        self.assertEqual(out[:3], ["+OK", "+OK", "+OK"])
        self.assertTrue(out[3].startswith("-NOPERM"), out)
        # A failed AUTH leaves the client logged in as before, as on Redis.
        self.assertTrue(out[4].startswith("-WRONGPASS"), out)
        self.assertEqual(out[5:8], ["$-1", "+RESET", "-NOAUTH Authentication required."])

    def test_commands_behind_a_refused_login_do_not_run_as_the_default_user(self):
        """A user's password changes after its client logged in: the proxy's next connection for it is refused,
        and nothing behind that AUTH runs as the default user, even where the default user needs no password."""
        for node in self.cluster.nodes:
            c = node_client(node)
            c.execute_command("ACL", "SETUSER", "default", "on", "nopass", "~*", "+@all")
            c.execute_command("ACL", "SETUSER", "dave", "on", ">davepw", "~dave:*", "+@all")
        try:
            dave = self.client("dave", "davepw")
            self.assertTrue(dave.set("dave:1", "before"))
            for node in self.cluster.nodes:
                c = node_client(node)
                c.execute_command("ACL", "SETUSER", "dave", "resetpass", ">changed")
                c.execute_command("CLIENT", "KILL", "USER", "dave")
            with self.assertRaises(redis.ResponseError) as e:
                dave.set("dave:1", "after")
            self.assertIn("refused the login as user 'dave'", str(e.exception))
            self.assertIn("WRONGPASS", str(e.exception))
            self.assertEqual(owner_of(self.cluster, "dave:1").get("dave:1"), b"before")
        finally:
            for node in self.cluster.nodes:
                c = node_client(node)
                c.execute_command("ACL", "SETUSER", "default", "off")
                c.execute_command("ACL", "DELUSER", "dave")

    def test_hello_setname_takes_effect_only_with_its_login(self):
        out = harness.exchange(self.proxy.port, b"HELLO 2 SETNAME x AUTH alice wrong\r\nAUTH alice alicepw\r\n"
                  b"CLIENT GETNAME\r\n", 3)
        self.assertTrue(out[0].startswith("-WRONGPASS"), out)
        self.assertEqual(out[1:3], ["+OK", "$-1"])

    def test_a_blocking_command_runs_as_the_user_logged_in_now(self):
        """Blocking commands run on a connection of the client's own: after AUTH as another user, the next one
        must not reuse the first user's."""
        out = harness.exchange(self.proxy.port, b"AUTH alice alicepw\r\nXREAD BLOCK 50 STREAMS alice:s 0\r\n"
                  b"AUTH bob bobpw\r\nXREAD BLOCK 50 STREAMS alice:s 0\r\nXREAD BLOCK 50 STREAMS bob:s 0\r\n", 5)
        self.assertEqual(out[:3], ["+OK", "*-1", "+OK"], out)
        self.assertTrue(out[3].startswith("-NOPERM"), out)
        self.assertEqual(out[4], "*-1", out)

    def test_redis_cli_and_ioredis(self):
        cli = subprocess.run(["redis-cli", "-p", str(self.proxy.port), "--user", "alice", "--pass", "alicepw",
                              "--no-auth-warning", "SET", "alice:cli", "v"], capture_output=True, text=True)
        self.assertEqual(cli.stdout.strip(), "OK")
        cli = subprocess.run(["redis-cli", "-p", str(self.proxy.port), "--user", "bob", "--pass", "bobpw",
                              "--no-auth-warning", "GET", "alice:cli"], capture_output=True, text=True)
        self.assertIn("NOPERM", cli.stdout)
        run = run_ioredis(self.proxy.port, "app", "apppw")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("0 failed", run.stdout)


if __name__ == "__main__":
    harness.main()
