"""Fixtures for the Python integration tests: a local Redis Cluster (deploy/local/cluster.sh, the same script the
demo and the C++ tests use) and slotshift-proxy processes in front of it. Everything started here is stopped at
exit, and cluster.sh's watchdog stops the servers even if this process is killed."""

import os
import random
import signal
import socket
import subprocess
import time

SOURCE_DIR = os.environ.get("SLOTSHIFT_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
BINARY_DIR = os.environ.get("SLOTSHIFT_BINARY_DIR", os.path.join(SOURCE_DIR, "build"))
CLUSTER_SH = os.path.join(SOURCE_DIR, "deploy/local/cluster.sh")
PROXY_BIN = os.path.join(BINARY_DIR, "proxy/slotshift-proxy")


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


class Cluster:
    def __init__(self, masters=3, replicas=0):
        out = subprocess.run([CLUSTER_SH, "start", "--masters", str(masters), "--replicas", str(replicas),
                              "--owner-pid", str(os.getpid())], check=True, capture_output=True, text=True).stdout
        env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        self.dir = env["SLOTSHIFT_CLUSTER_DIR"]
        self.nodes = [(h, int(p)) for h, p in (n.rsplit(":", 1) for n in env["SLOTSHIFT_CLUSTER_NODES"].split(","))]

    def seed(self):
        return "%s:%d" % self.nodes[0]

    def cli(self, node, *args, check=True):
        host, port = node
        return subprocess.run(["redis-cli", "-h", host, "-p", str(port), *args], check=check, capture_output=True,
                              text=True, timeout=60).stdout

    def masters(self):
        out = []
        for node in self.nodes:
            try:
                if self.cli(node, "role").splitlines()[0] == "master":
                    out.append(node)
            except (subprocess.SubprocessError, IndexError):
                pass
        return out

    def wait_consistent(self, timeout=30):
        """Waits until redis-cli --cluster check finds every node agreeing and no slot open."""
        deadline = time.time() + timeout
        while True:
            check = subprocess.run(["redis-cli", "--cluster", "check", self.seed()], capture_output=True, text=True)
            if check.returncode == 0 and "[ERR]" not in check.stdout and "[WARNING]" not in check.stdout:
                return
            if time.time() > deadline:
                raise AssertionError("the cluster did not settle:\n" + check.stdout)
            time.sleep(0.2)

    def stop(self):
        subprocess.run([CLUSTER_SH, "stop", "--dir", self.dir], capture_output=True)


class Proxy:
    def __init__(self, cluster, *flags, threads=2):
        self.port = free_port()
        self.log = open(os.path.join(cluster.dir, "proxy-%d.log" % self.port), "w+")
        self.proc = subprocess.Popen([PROXY_BIN, "--listen", "127.0.0.1:%d" % self.port, "--seed", cluster.seed(),
                                      "--threads", str(threads), *flags], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"DBSIZE\r\n")
                    if s.recv(100).startswith(b":"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("slotshift-proxy did not come up: " + self.output())

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
