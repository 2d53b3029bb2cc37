#!/usr/bin/python3
"""slotshift-proxy over TLS, as users set it up: a TLS-only cluster that requires client certificates (every node
with port 0, tls-port, tls-cluster and tls-replication), and a proxy that speaks TLS to its clients and to the
nodes. Real clients: redis-cli --tls, Debian's python3-redis, ioredis. Run by ctest; runs alone too:
tests/integration/proxy_tls_test.py [-k pattern]."""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def backend_flags(tls_dir, ca="ca.crt", cert="client.crt", key="client.key"):
    """The proxy's flags toward a TLS cluster: the CA that signs the nodes, and a client certificate."""
    return ("--backend-tls", "--backend-tls-ca-cert-file", os.path.join(tls_dir, ca),
            "--backend-tls-cert-file", os.path.join(tls_dir, cert), "--backend-tls-key-file", os.path.join(tls_dir, key))


def client_context(tls_dir, cert="client.crt", key="client.key"):
    """What an application's TLS client holds: the CA that signs the proxy, and its own certificate."""
    ctx = ssl.create_default_context(cafile=os.path.join(tls_dir, "ca.crt"))
    ctx.check_hostname = False  # the proxy is reached by IP; its certificate names 127.0.0.1 anyway
    if cert:
        ctx.load_cert_chain(os.path.join(tls_dir, cert), os.path.join(tls_dir, key))
    return ctx


def make_cert(tls_dir, into, cn):
    """A new certificate for 127.0.0.1 with common name `cn`, signed by the cluster's CA: (cert, key) in `into`."""
    cert, key, csr = (os.path.join(into, cn + ext) for ext in (".crt", ".key", ".csr"))
    ext = os.path.join(into, cn + ".ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-subj", "/CN=" + cn, "-out", csr], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(tls_dir, "ca.crt"), "-CAkey",
                    os.path.join(tls_dir, "ca.key"), "-CAcreateserial", "-days", "2", "-out", cert, "-extfile", ext],
                   check=True, capture_output=True)
    return cert, key


def peer_common_name(port, ctx):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            return subject["commonName"]


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) >> 10
    raise AssertionError("no VmRSS")


def start_proxy_raw(cluster, *flags):
    """A proxy that may not serve (a backend it cannot reach): started, and waited for until it listens."""
    port = harness.free_port()
    log = open(os.path.join(cluster.dir, "proxy-raw-%d.log" % port), "a+")
    proc = subprocess.Popen([harness.PROXY_BIN, "--listen", "127.0.0.1:%d" % port, "--seed", cluster.seed(),
                             "--threads", "1", "--connect-timeout-ms", "500", "--request-timeout-ms", "2000",
                             *flags], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port, log
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("the proxy did not listen")


def stop_raw(proc, log):
    proc.terminate()
    proc.wait(timeout=10)
    log.seek(0)
    out = log.read()
    log.close()
    return out


class TlsCluster(unittest.TestCase):
    """One TLS-only cluster (3 masters), a proxy with TLS on both sides in front of it."""

    proxy = None

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0, tls=True)
        cls.tls = cls.cluster.tls_dir
        cls.proxy = harness.Proxy(
            cls.cluster, *backend_flags(cls.tls), "--tls-cert-file", os.path.join(cls.tls, "server.crt"),
            "--tls-key-file", os.path.join(cls.tls, "server.key"), "--tls-ca-cert-file",
            os.path.join(cls.tls, "ca.crt"), admin=True, admin_token="tlstoken", client_tls=client_context(cls.tls))

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.proxy:
                cls.proxy.stop()
        finally:
            cls.cluster.stop()

    def client(self, **kw):
        return redis.Redis(host="127.0.0.1", port=self.proxy.port, ssl=True,
                           ssl_ca_certs=os.path.join(self.tls, "ca.crt"),
                           ssl_certfile=os.path.join(self.tls, "client.crt"),
                           ssl_keyfile=os.path.join(self.tls, "client.key"), socket_timeout=30, **kw)

    def redis_cli(self, *args):
        return subprocess.run(["redis-cli", "--tls", "--cacert", os.path.join(self.tls, "ca.crt"), "--cert",
                               os.path.join(self.tls, "client.crt"), "--key", os.path.join(self.tls, "client.key"),
                               "-p", str(self.proxy.port), *args], capture_output=True, text=True, timeout=60)

    def test_redis_cli_over_tls(self):
        self.assertEqual(self.redis_cli("SET", "cli:{a}", "1").stdout.strip(), "OK")
        self.assertEqual(self.redis_cli("SET", "cli:{b}", "2").stdout.strip(), "OK")
        # A command split over two masters and merged: every leg over TLS.
        self.assertEqual(self.redis_cli("MGET", "cli:{a}", "cli:{b}", "cli:{none}").stdout.split("\n")[:3],
                         ["1", "2", ""])
        # What a node holds is what the proxy wrote.
        owner = next(n for n in self.cluster.nodes
                     if self.cluster.cli(n, "GET", "cli:{a}").strip() == "1")
        self.assertIsNotNone(owner)

    def test_python_pipeline_and_large_values(self):
        r = self.client()
        p = r.pipeline(transaction=False)
        for i in range(2000):
            p.set("py:%d" % i, "v%d" % i)
        self.assertTrue(all(p.execute()))
        p = r.pipeline(transaction=False)
        for i in range(2000):
            p.get("py:%d" % i)
        self.assertEqual(p.execute(), [b"v%d" % i for i in range(2000)])
        # Values far larger than a TLS record, both ways (the proxy encrypts and decrypts them a record at a time).
        big = os.urandom(3 << 20)
        r.set("py:big", big)
        self.assertEqual(r.get("py:big"), big)
        self.assertEqual(r.strlen("py:big"), len(big))

    def test_ioredis_over_tls(self):
        here = os.path.dirname(os.path.abspath(__file__))
        run = subprocess.run(["node", os.path.join(here, "js-clients", "ioredis_test.js"), str(self.proxy.port)],
                             env=dict(os.environ, IOREDIS_TLS_DIR=self.tls), capture_output=True, text=True,
                             timeout=120)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("0 failed", run.stdout)

    def test_client_without_certificate_or_with_another_ca_is_refused(self):
        for cert in (None, "other-client.crt"):
            ctx = client_context(self.tls, cert=cert, key=cert and cert.replace(".crt", ".key"))
            with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10) as raw:
                with self.assertRaises((ssl.SSLError, ConnectionError)):
                    # TLS 1.3 finishes the client's side of the handshake before the server has checked the
                    # certificate: the refusal arrives with the first read.
                    with ctx.wrap_socket(raw) as s:
                        s.sendall(b"SET refused:%s 1\r\n" % str(cert).encode())
                        if not s.recv(100):
                            raise ConnectionError("closed")
        self.assertIsNone(self.client().get("refused:None"))
        self.assertIsNone(self.client().get("refused:other-client.crt"))
        self.assertRegex(self.proxy.output(), "TLS with client 127.0.0.1:[0-9]+ failed: .*certificate")

    def test_a_command_before_close_notify_runs(self):
        """A client that sends its last command and its close_notify in one segment (Go, netty, openssl s_client
        close this way): the command runs, as before a TCP FIN, and nothing is logged as a failure."""
        self.client().set("cn:{k}", "before")
        raw = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_context(self.tls).wrap_bio(incoming, outgoing)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        raw.sendall(outgoing.read())
        tls.write(b"*3\r\n$3\r\nSET\r\n$6\r\ncn:{k}\r\n$5\r\nafter\r\n")
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        raw.sendall(outgoing.read())  # the command and the close_notify together
        raw.shutdown(socket.SHUT_WR)
        raw.recv(65536)
        raw.close()
        deadline = time.time() + 5
        while self.client().get("cn:{k}") != b"after" and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.client().get("cn:{k}"), b"after")
        self.assertNotIn("peer closed", self.proxy.output())

    def test_slow_reader_memory_stays_bounded(self):
        """A TLS client that keeps 40 MB of large GETs outstanding and reads at 8 MB/s: the proxy holds its
        backlog, not everything it has sent (which grew by 8 MB a second before)."""
        value = 512 * 1024
        self.client().set("big:{b}", b"x" * value)
        reply = len(b"$%d\r\n" % value) + value + 2
        with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=30) as raw:
            with client_context(self.tls).wrap_socket(raw) as s:
                request = b"*2\r\n$3\r\nGET\r\n$7\r\nbig:{b}\r\n"
                sent, got, stop = [0], [0], threading.Event()

                def write():
                    while not stop.is_set():
                        if sent[0] - got[0] // reply < 80:
                            s.sendall(request * 4)
                            sent[0] += 4
                        else:
                            time.sleep(0.005)
                writer = threading.Thread(target=write)
                writer.start()
                rate = 8 << 20
                start = time.time()
                samples = {}
                try:
                    while time.time() - start < 10:
                        got[0] += len(s.recv(256 * 1024))
                        allowed = (time.time() - start) * rate
                        if got[0] > allowed:
                            time.sleep((got[0] - allowed) / rate)
                        second = int(time.time() - start)
                        if second in (3, 9) and second not in samples:
                            samples[second] = rss_mb(self.proxy.proc.pid)
                finally:
                    stop.set()
                    writer.join()
        print("slow TLS reader: proxy RSS %s MB at 3 s and 9 s, %d MB read" % (
            [samples.get(3), samples.get(9)], got[0] >> 20), file=sys.stderr)
        self.assertEqual(sorted(samples), [3, 9])
        self.assertGreater(got[0], 50 << 20, "the client read too little for the check to mean anything")
        # Keeping what it sent grows 8 MB a second, 48 MB over these 6 s; the sanitizer build's quarantine (16 MB)
        # and allocator noise stay well below 32.
        self.assertLess(samples[9] - samples[3], 32, "the proxy keeps what it has already sent")

    def test_plain_text_to_the_tls_port_runs_nothing(self):
        with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10) as s:
            s.sendall(b"*3\r\n$3\r\nSET\r\n$10\r\nplain:{x}1\r\n$1\r\n1\r\n")
            got = b""
            try:
                while True:
                    chunk = s.recv(100)
                    if not chunk:
                        break
                    got += chunk
            except ConnectionError:
                pass
        self.assertNotIn(b"+OK", got)
        self.assertIsNone(self.client().get("plain:{x}1"))
        self.assertEqual(self.client().ping(), True)

    def test_move_through_the_proxy_over_tls(self):
        """slotshift moves slots of the TLS cluster while a writer writes through the proxy, which it holds,
        routes (after asking the new owner over TLS which slots it owns) and releases at each cutover."""
        if not os.path.exists(harness.SLOTSHIFT_BIN):
            self.fail("slotshift is not built")
        source, target, _ = self.cluster.masters_by_slot()
        target_id = self.cluster.node_id(target)
        slots = self.cluster.slots_of(source)[-300:]
        acked, errors = {}, []
        stop = threading.Event()

        def write():
            r = self.client()
            i = 0
            while not stop.is_set():
                key = "mv:%d" % i
                try:
                    if r.set(key, str(i)):
                        acked[key] = str(i)
                except redis.RedisError as e:
                    errors.append(str(e))
                i += 1
        writer = threading.Thread(target=write)
        writer.start()
        try:
            time.sleep(0.5)
            t = self.tls
            run = subprocess.run([harness.SLOTSHIFT_BIN, "move", "--cluster", self.cluster.seed(), "--slots",
                                  "%d-%d" % (slots[0], slots[-1]), "--to", target_id, "--tls", "--cacert",
                                  os.path.join(t, "ca.crt"), "--cert", os.path.join(t, "client.crt"), "--key",
                                  os.path.join(t, "client.key"), "--proxy", "127.0.0.1:%d" % self.proxy.admin_port,
                                  "--proxy-token", "tlstoken"], capture_output=True, text=True, timeout=300)
            time.sleep(0.5)
        finally:
            stop.set()
            writer.join()
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.cluster.wait_owner(slots, target_id)
        self.assertEqual(errors, [], "the writer saw errors through the proxy")
        self.assertGreater(len(acked), 100)
        r = self.client()
        keys = sorted(acked)
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            self.assertEqual(r.mget(chunk), [acked[k].encode() for k in chunk], "an acknowledged write is lost")
        # The proxy followed the move by its ROUTE, not by MOVED: its route check reached the node over TLS.
        self.assertNotIn("cannot ask", self.proxy.output())


class TlsSettings(unittest.TestCase):
    """Proxies started with TLS settings that cannot work, and the certificate reloaded by SIGHUP."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0, tls=True)
        cls.tls = cls.cluster.tls_dir

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def test_nodes_signed_by_an_unknown_ca_are_refused_and_named(self):
        proc, port, log = start_proxy_raw(self.cluster, *backend_flags(self.tls, ca="other-ca.crt"))
        try:
            r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
            with self.assertRaises(redis.ResponseError) as e:
                r.set("x", "1")
            self.assertRegex(str(e.exception), "certificate verify failed")
        finally:
            out = stop_raw(proc, log)
        self.assertRegex(out, "TLS with node 127.0.0.1:[0-9]+ failed: certificate verify failed")

    def test_the_server_name_is_checked_when_given(self):
        right = backend_flags(self.tls) + ("--backend-tls-server-name", "node.slotshift.test")
        proc, port, log = start_proxy_raw(self.cluster, *right)
        try:
            r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
            deadline = time.time() + 10
            while True:
                try:
                    self.assertTrue(r.set("named", "1"))
                    break
                except redis.ResponseError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            stop_raw(proc, log)
        wrong = backend_flags(self.tls) + ("--backend-tls-server-name", "wrong.example")
        proc, port, log = start_proxy_raw(self.cluster, *wrong)
        try:
            r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
            with self.assertRaises(redis.ResponseError) as e:
                r.set("x", "1")
            self.assertRegex(str(e.exception), "certificate verify failed.*hostname mismatch")
        finally:
            stop_raw(proc, log)

    def test_settings_that_cannot_work_are_refused_at_start(self):
        cases = [
            (("--tls-cert-file", os.path.join(self.tls, "server.crt"), "--tls-key-file",
              os.path.join(self.tls, "server.key")), "tls-auth-clients yes needs tls-ca-cert-file"),
            (("--tls-cert-file", os.path.join(self.tls, "server.crt"), "--tls-key-file",
              os.path.join(self.tls, "client.key"), "--tls-auth-clients", "no"), "key values mismatch"),
            (("--tls-cert-file", "/nonexistent.crt", "--tls-key-file", os.path.join(self.tls, "server.key"),
              "--tls-auth-clients", "no"), "cannot use the certificate /nonexistent.crt"),
            (("--backend-tls-ca-cert-file", os.path.join(self.tls, "ca.crt")), "add --backend-tls"),
            (("--tls-ca-cert-file", os.path.join(self.tls, "ca.crt")), "needs --tls-cert-file"),
        ]
        for flags, expected in cases:
            run = subprocess.run([harness.PROXY_BIN, "--listen", "127.0.0.1:%d" % harness.free_port(), "--seed",
                                  self.cluster.seed(), *flags], capture_output=True, text=True, timeout=30)
            self.assertNotEqual(run.returncode, 0, flags)
            self.assertIn(expected, run.stderr, flags)

    def test_sighup_reloads_the_certificate_without_dropping_clients(self):
        work = os.path.join(self.cluster.dir, "reload")
        os.makedirs(work, exist_ok=True)
        cert, key = os.path.join(work, "proxy.crt"), os.path.join(work, "proxy.key")
        shutil.copy(os.path.join(self.tls, "server.crt"), cert)
        shutil.copy(os.path.join(self.tls, "server.key"), key)
        ctx = client_context(self.tls)
        proxy = harness.Proxy(self.cluster, *backend_flags(self.tls), "--tls-cert-file", cert, "--tls-key-file", key,
                              "--tls-ca-cert-file", os.path.join(self.tls, "ca.crt"), client_tls=ctx)
        try:
            self.assertEqual(peer_common_name(proxy.port, ctx), "node.slotshift.test")
            before = redis.Redis(host="127.0.0.1", port=proxy.port, ssl=True,
                                 ssl_ca_certs=os.path.join(self.tls, "ca.crt"),
                                 ssl_certfile=os.path.join(self.tls, "client.crt"),
                                 ssl_keyfile=os.path.join(self.tls, "client.key"), socket_timeout=30)
            self.assertTrue(before.set("reload:{1}", "a"))
            new_cert, new_key = make_cert(self.tls, work, "proxy-v2")
            shutil.copy(new_cert, cert)
            shutil.copy(new_key, key)
            proxy.proc.send_signal(signal.SIGHUP)
            deadline = time.time() + 10
            while "TLS files reloaded" not in proxy.output():
                self.assertLess(time.time(), deadline, proxy.output())
                time.sleep(0.05)
            # The client connected before the reload goes on, on its connection; new clients see the new one.
            self.assertEqual(before.get("reload:{1}"), b"a")
            self.assertTrue(before.set("reload:{1}", "b"))
            self.assertEqual(peer_common_name(proxy.port, ctx), "proxy-v2")
            # A file that cannot be used keeps what is in force, and says so.
            with open(cert, "w") as f:
                f.write("not a certificate\n")
            proxy.proc.send_signal(signal.SIGHUP)
            deadline = time.time() + 10
            while "TLS files not reloaded" not in proxy.output():
                self.assertLess(time.time(), deadline, proxy.output())
                time.sleep(0.05)
            self.assertEqual(peer_common_name(proxy.port, ctx), "proxy-v2")
            self.assertEqual(before.get("reload:{1}"), b"b")
        finally:
            proxy.stop()


if __name__ == "__main__":
    harness.main()
