"""Fixtures for the Python integration tests: a local Redis Cluster (deploy/local/cluster.sh, the same script the
demo and the C++ tests use) and slotshift-proxy processes in front of it. Everything started here is stopped at
exit, and cluster.sh's watchdog stops the servers even if this process is killed."""

import json
import os
import random
import re
import signal
import socket
import subprocess
import time
import unittest
import urllib.error
import urllib.request

import redis

SOURCE_DIR = os.environ.get("SLOTSHIFT_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
BINARY_DIR = os.environ.get("SLOTSHIFT_BINARY_DIR", os.path.join(SOURCE_DIR, "build"))
CLUSTER_SH = os.path.join(SOURCE_DIR, "deploy/local/cluster.sh")
PROXY_BIN = os.path.join(BINARY_DIR, "proxy/slotshift-proxy")
SLOTSHIFT_BIN = os.path.join(BINARY_DIR, "orchestrator/slotshift")
SLOTS = 16384

# The server the clusters run (deploy/local/cluster.sh --server): redis-7.0 (the host's), redis-8.0, valkey-8.0,
# valkey-8.1 or valkey-9.1.
SERVER = os.environ.get("SLOTSHIFT_SERVER", "redis-7.0")
# What slotshift move promises a client that writes to a source directly (not through slotshift-proxy) during a
# cutover. Servers that survive learning a claim while write-paused keep the pause through it: the client's writes
# wait, then run or meet MOVED. Redis 8.0 and Valkey 8.0 crash in that case (REDIS-FACTS "The pause trap"), so
# around each claim they refuse writes instead, for a few milliseconds: the client may meet NOREPLICAS (nothing
# applied; slotshift-proxy retries it). On no server is an acknowledged write lost.
REFUSES_WRITES_AROUND_CLAIM = SERVER in ("redis-8.0", "valkey-8.0")


class NodeEntry:
    """One line of CLUSTER NODES: what the node that printed it believes about a node."""

    def __init__(self, line):
        f = line.split()
        self.id = f[0]
        host, port = f[1].split("@")[0].split(",")[0].rsplit(":", 1)
        self.addr = (host, int(port))
        self.flags = set(f[2].split(","))
        self.master_id = None if f[3] == "-" else f[3]
        self.config_epoch = int(f[6])
        self.link = f[7]
        self.slots = set()
        self.open = []  # "[slot->-id]" (migrating) and "[slot-<-id]" (importing), on the node's own line only
        for field in f[8:]:
            if field.startswith("["):
                self.open.append(field)
                continue
            a, _, b = field.partition("-")
            self.slots.update(range(int(a), int(b or a) + 1))

    def is_master(self):
        return "master" in self.flags

    def __repr__(self):
        return "%s %s:%d %s" % (self.id[:8], self.addr[0], self.addr[1], ",".join(sorted(self.flags)))


def format_slots(slots):
    """Slot numbers as a list of ranges: [0, 1, 2, 7] -> "0-2,7"."""
    out = []
    for s in sorted(set(slots)):
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return ",".join("%d" % a if a == b else "%d-%d" % (a, b) for a, b in out)


def free_port():
    for _ in range(1000):
        port = random.randint(40000, 60000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def free_node_port():
    """A port for a cluster node started by a test: it and its cluster-bus port (port + 10000) can both be bound, and
    both lie below the kernel's ephemeral range (32768 and up), so no outgoing connection takes them meanwhile."""
    for _ in range(1000):
        port = random.randint(20000, 22767)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    def __init__(self, masters=3, replicas=0, server=None, tls=False):
        """server: redis-7.0, valkey-9.1, ... (default: SERVER, from SLOTSHIFT_SERVER). tls=True: every node speaks
        TLS only and wants a client certificate (cluster.sh start --tls); self.tls_dir holds the test CA and
        certificates: ca.crt, server.crt/key (the nodes'), client.crt/key (trusted by the nodes), other-ca.crt and
        other-client.crt/key (an unrelated CA and a client certificate it signed, which the nodes refuse). Without
        TLS, self.tls_dir is None."""
        out = subprocess.run([CLUSTER_SH, "start", "--masters", str(masters), "--replicas", str(replicas),
                              "--owner-pid", str(os.getpid()), "--server", server or SERVER,
                              *(["--tls"] if tls else [])],
                             check=True, capture_output=True, text=True).stdout
        env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        self.dir = env["SLOTSHIFT_CLUSTER_DIR"]
        self.tls_dir = env.get("SLOTSHIFT_CLUSTER_TLS_DIR") or None
        # (user, password) for cli() and what uses it, once a test has turned the default user off.
        self.login = None
        self.nodes = [(h, int(p)) for h, p in (n.rsplit(":", 1) for n in env["SLOTSHIFT_CLUSTER_NODES"].split(","))]

    def seed(self):
        return "%s:%d" % self.nodes[0]

    def tls_cli_args(self):
        """What redis-cli needs to reach the nodes: TLS with the trusted client certificate, or nothing."""
        if not self.tls_dir:
            return []
        return ["--tls", "--cacert", os.path.join(self.tls_dir, "ca.crt"),
                "--cert", os.path.join(self.tls_dir, "client.crt"), "--key", os.path.join(self.tls_dir, "client.key")]

    def cli(self, node, *args, check=True):
        host, port = node
        login = ["--user", self.login[0], "--pass", self.login[1], "--no-auth-warning"] if self.login else []
        return subprocess.run(["redis-cli", *self.tls_cli_args(), "-h", host, "-p", str(port), *login, *args],
                              check=check, capture_output=True, text=True, timeout=60).stdout

    def redis(self, node, **kw):
        """A redis.Redis client of one node, over TLS with the trusted client certificate when the cluster is TLS,
        logged in as self.login if set; kw goes to redis.Redis as it is and wins over these defaults."""
        args = {"host": node[0], "port": node[1]}
        if self.login:
            args.update(username=self.login[0], password=self.login[1])
        if self.tls_dir:
            args.update(ssl=True, ssl_ca_certs=os.path.join(self.tls_dir, "ca.crt"),
                        ssl_certfile=os.path.join(self.tls_dir, "client.crt"),
                        ssl_keyfile=os.path.join(self.tls_dir, "client.key"))
        args.update(kw)
        return redis.Redis(**args)

    def masters(self):
        out = []
        for node in self.nodes:
            try:
                if self.cli(node, "role").splitlines()[0] == "master":
                    out.append(node)
            except (subprocess.SubprocessError, IndexError):
                pass
        return out

    def node_id(self, node):
        return self.cli(node, "cluster", "myid").strip()

    def view(self, node, timeout=10):
        """CLUSTER NODES as seen by node: a list of NodeEntry, the node itself first. A node that answers with an
        error instead (LOADING, while a replica loads its master's snapshot) is asked again until timeout."""
        deadline = time.time() + timeout
        while True:
            text = self.cli(node, "cluster", "nodes")
            if not text.startswith(("LOADING", "ERR", "MASTERDOWN", "BUSY")):
                break
            if time.time() > deadline:
                raise subprocess.SubprocessError("%s:%d answers CLUSTER NODES with: %s" % (*node, text.strip()))
            time.sleep(0.1)
        entries = [NodeEntry(line) for line in text.splitlines() if line.strip()]
        entries.sort(key=lambda e: "myself" not in e.flags)
        return entries

    def owners(self, node=None):
        """The owner's node id of every slot in node's view (the first node that answers by default); None where a
        slot is not covered."""
        for candidate in [node] if node else self.nodes:
            try:
                entries = self.view(candidate)
            except subprocess.SubprocessError:
                continue
            owner = [None] * SLOTS
            for e in entries:
                if e.is_master():
                    for s in e.slots:
                        owner[s] = e.id
            return owner
        raise RuntimeError("no node answers CLUSTER NODES")

    def address(self, node_id):
        for node in self.nodes:
            try:
                for e in self.view(node):
                    if e.id == node_id:
                        return e.addr
            except subprocess.SubprocessError:
                continue
        raise KeyError(node_id)

    def masters_by_slot(self):
        """The masters that own slots, ordered by their lowest slot: with a fresh cluster of 3, the owners of
        0-5460, 5461-10922 and 10923-16383."""
        owner = self.owners()
        first = {}
        for s, node_id in enumerate(owner):
            if node_id is not None and node_id not in first:
                first[node_id] = s
        return [self.address(i) for i in sorted(first, key=first.get)]

    def slots_of(self, node):
        node_id = self.node_id(node)
        return [s for s, o in enumerate(self.owners()) if o == node_id]

    def disagreements(self, slots, owner_id):
        """Every node's view of slots checked against owner_id: a list of what differs, empty when all agree."""
        out = []
        slots = list(slots)
        for node in self.nodes:
            try:
                entries = self.view(node)
            except subprocess.SubprocessError as e:
                out.append("%s:%d does not answer (%s)" % (node[0], node[1], e))
                continue
            owner = {}
            for e in entries:
                if e.is_master():
                    for s in e.slots:
                        owner[s] = e.id
            wrong = [s for s in slots if owner.get(s) != owner_id]
            if wrong:
                out.append("%s:%d sees slot %d owned by %s (%d of the %d slots not on %s)" % (
                    node[0], node[1], wrong[0], owner.get(wrong[0]), len(wrong), len(slots), owner_id))
            if entries and entries[0].open:
                out.append("%s:%d has open slots %s" % (node[0], node[1], " ".join(entries[0].open[:5])))
        return out

    def wait_owner(self, slots, owner_id, timeout=30):
        """Waits until every node reports owner_id as the owner of slots and no open slot; raises with what still
        differs at the deadline."""
        deadline = time.time() + timeout
        while True:
            diff = self.disagreements(slots, owner_id)
            if not diff:
                return
            if time.time() > deadline:
                raise AssertionError("the nodes do not agree that %s owns %s:\n  %s" % (
                    owner_id, format_slots(slots), "\n  ".join(diff)))
            time.sleep(0.2)

    def wait_consistent(self, timeout=30):
        """Waits until redis-cli --cluster check finds every node agreeing and no slot open."""
        deadline = time.time() + timeout
        while True:
            check = subprocess.run(["redis-cli", *self.tls_cli_args(), "--cluster", "check", self.seed()],
                                   capture_output=True, text=True)
            if check.returncode == 0 and "[ERR]" not in check.stdout and "[WARNING]" not in check.stdout:
                return
            if time.time() > deadline:
                raise AssertionError("the cluster did not settle:\n" + check.stdout)
            time.sleep(0.2)

    def state_report(self):
        """For a failure's message: each node's role and cluster_state now, and what its log says of the cluster's
        state and of failovers (the last 15 such lines). Says whether the cluster itself was down."""
        out = []
        for node in self.nodes:
            role = self.cli(node, "role", check=False).split("\n", 1)[0]
            state = [line for line in self.cli(node, "cluster", "info", check=False).splitlines()
                     if line.startswith("cluster_state:")]
            out.append("%s:%d %s %s" % (node[0], node[1], role, state[0] if state else "(no cluster info)"))
            try:
                with open(os.path.join(self.dir, str(node[1]), "redis.log"), errors="replace") as f:
                    lines = [line.rstrip() for line in f
                             if re.search(r"state changed|FAIL|[Ff]ailover|minority", line)]
                out += ["    " + line for line in lines[-15:]]
            except OSError as e:
                out.append("    (log: %s)" % e)
        return "\n".join(out)

    def stop(self):
        subprocess.run([CLUSTER_SH, "stop", "--dir", self.dir], capture_output=True)


def exchange(port, data, lines, timeout=10):
    """Sends data to 127.0.0.1:port as it is, and returns the first `lines` lines of what comes back (a reply of
    RESP is one line or more), without their CRLF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        while got.count(b"\r\n") < lines:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got.decode(errors="replace").split("\r\n")[:lines]


class Proxy:
    def __init__(self, cluster, *flags, threads=2, admin=False, admin_token=None, preexec=None, login=None,
                 env=None, client_tls=None, port=None):
        """port: the port to listen on (default: a free one; a given one is not retried). admin=True serves the admin endpoint on a free loopback port (self.admin_port), with admin_token if
        given; admin_call() talks to it. preexec runs in the proxy's process before it starts (resource
        limits). login: the AUTH arguments a client needs (("pw",) or ("user", "pw")), for the check that the
        proxy is up. env: the proxy's environment. client_tls: an ssl.SSLContext a client needs when the proxy's
        port speaks TLS (--tls-cert-file), for that check."""
        self.admin_token = admin_token
        self.preexec = preexec
        self.login = login
        self.env = env
        self.client_tls = client_tls
        self.fixed_port = port
        # free_port() only finds a port that was free a moment ago: another test running beside this one may
        # take it first. A proxy that could not listen for that reason is started again on other ports.
        for _ in range(3):
            if (self.start(cluster, flags, threads, admin) or "Address already in use" not in self.output()
                    or port):
                break
            self.log.close()
        if self.proc.poll() is not None:
            self.stop()  # raises, with what the proxy printed
            raise RuntimeError("slotshift-proxy did not come up: " + self.output())

    def start(self, cluster, flags, threads, admin):
        """True once the proxy answers; False when it exited."""
        self.port = self.fixed_port or free_port()
        self.admin_port = free_port() if admin else None
        if admin:
            flags = (*flags, "--admin", "127.0.0.1:%d" % self.admin_port)
            if self.admin_token:
                flags = (*flags, "--admin-token", self.admin_token)
        # Proxies given the same port (a binary upgrade's successor) each have a log of their own.
        name = "proxy-%d.log" % self.port if not self.fixed_port else "proxy-%d-%d.log" % (self.port, time.time_ns())
        self.log = open(os.path.join(cluster.dir, name), "a+")
        self.proc = subprocess.Popen([PROXY_BIN, "--listen", "127.0.0.1:%d" % self.port, "--seed", cluster.seed(),
                                      "--threads", str(threads), *flags], stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=self.preexec, env=self.env)
        auth = b""
        if self.login:
            auth = ("AUTH " + " ".join(self.login) + "\r\n").encode()
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
                    with self.client_tls.wrap_socket(raw) if self.client_tls else raw as s:
                        s.sendall(auth + b"DBSIZE\r\n")
                        got = b""
                        while got.count(b"\r\n") < (2 if auth else 1):
                            chunk = s.recv(100)
                            if not chunk:
                                break
                            got += chunk
                        if got.removeprefix(b"+OK\r\n" if auth else b"").startswith(b":"):
                            return True
            except OSError:  # ssl.SSLError included
                pass
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        return False

    def admin_call(self, method, path, body=None, token=None, timeout=70):
        """One request to the admin endpoint, with the proxy's admin token unless token is given ("" for none).
        Returns (status, body): the body parsed when it is JSON, else the text."""
        token = self.admin_token if token is None else token
        data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
        if isinstance(data, str):
            data = data.encode()
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.admin_port, path), data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as res:
                status, text = res.status, res.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def output(self):
        if self.log.closed:
            return self.output_at_exit
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        """Stops the proxy with SIGTERM and checks that it shut down cleanly: exit code 0 within 10 s (a
        sanitizer report makes it non-zero)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("slotshift-proxy did not stop within 10 s of SIGTERM")
        if not self.log.closed:
            self.output_at_exit = self.output()
            self.log.close()
        if self.proc.returncode != 0:
            raise AssertionError("slotshift-proxy exited with %s:\n%s" % (self.proc.returncode, self.output_at_exit))
        return self.proc.returncode


class FailuresWhereTheyHappen(unittest.TextTestResult):
    """Prints why a test failed right after its FAIL or ERROR line, as well as in the summary at the end: a log
    kept in part (CI keeps the lines around a failure) then says why next to which test."""

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.stream.writeln(self.failures[-1][1])
        self.stream.flush()

    def addError(self, test, err):
        super().addError(test, err)
        self.stream.writeln(self.errors[-1][1])
        self.stream.flush()


def main():
    """unittest.main() for the integration tests: verbose, each failure's message where it happened."""
    unittest.main(testRunner=unittest.TextTestRunner(verbosity=2, resultclass=FailuresWhereTheyHappen))
