#!/usr/bin/python3
"""Moves that clients never notice: plain Redis clients that talk only to slotshift-proxy instances, while
`slotshift move --proxy ...` holds, routes and releases the moving slots on every proxy at each batch's cutover.

The clients are move_test's writers (the same dataset, the same model of every acknowledged write, the same
checks of what the cluster holds afterwards), but each one is a plain redis.Redis connection to one proxy, with no
cluster client and no redirect handling: every error reply, and every lost reply, is an error the client saw and
fails the test. They also read (GET, MGET across slots), write across slots (MSET, DEL), run MULTI/EXEC in one
slot and send pipelines, and every reply is checked against the model.

  CutoverUnderLoadTest      both fences (--fence source-pause, --fence proxy) with two proxies: no client error,
                            every acknowledged write in place, neither proxy met MOVED or ASK, every batch held by
                            both proxies, every hold released by the move (none ran out); and each fence again
                            with every hold spanning three batches (--hold-batches 3)
  ProxyFailureTest          a proxy killed while it holds; an endpoint that accepts and never answers, under
                            --fence proxy (the move fails and is undone) and under source-pause (it goes on
                            without that proxy)
  OrchestratorKilledTest    slotshift killed while the proxies hold: the holds end by themselves within
                            --pause-timeout, clients go on, and `slotshift check` shows the slots left IMPORTING;
                            and killed while a hold spanning batches still holds claimed ones: the proxies follow
                            the old owner's MOVED once it ends, and `slotshift resume` completes the move

Run by ctest as cutover_it; runs alone too:
    tests/integration/cutover_test.py [TestClass[.test_name] ...]
SLOTSHIFT_BINARY_DIR picks the build whose slotshift and slotshift-proxy are tested (default: build/).
"""

import collections
import faulthandler
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
import zlib

import redis
from redis.crc import key_slot

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import move_test as mt  # noqa: E402

PROXY_REQUEST_TIMEOUT_MS = 5000  # above every --pause-timeout used here: a held command outlives a dead mover
WRITERS_PER_PROXY = 2


def log(text):
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Clients of a proxy
# ---------------------------------------------------------------------------------------------------------------

class ProxyWriter(mt.Writer):
    """A move_test writer whose only connection is a plain redis.Redis to one proxy. strict: any error reply and
    any lost reply is a failure; otherwise (the clients of a proxy that is killed on purpose) they count as
    move_test's writers count them, and lost replies leave their keys uncertain.

    Besides move_test's writes (single-slot MSET, DEL, MULTI/EXEC, EVAL, RENAME, ...), a strict writer sends
    reads checked against the model (GET, MGET across slots, EXISTS across slots), writes across slots (MSET,
    DEL), and pipelines of several independent commands."""

    def __init__(self, cluster, proxy, model, groups, seed, t_origin, strict=True):
        super().__init__(cluster, model, groups, seed, t_origin)
        self.proxy = proxy
        self.strict = strict
        self.lost_reply_fails = strict
        self.name = "writer %d via proxy :%d" % (seed, proxy.port)
        self.r = None

    def open_clients(self):
        pool = redis.ConnectionPool(host="127.0.0.1", port=self.proxy.port, socket_timeout=mt.REPLY_TIMEOUT_S,
                                    socket_connect_timeout=5, connection_class=mt.TrackingConnection,
                                    client_name=mt.WRITER_NAME)
        self.r = redis.Redis(connection_pool=pool)

    def close_clients(self):
        if self.r is not None:
            self.r.connection_pool.disconnect()

    def not_applied(self, error):
        return None if self.strict else super().not_applied(error)

    def send(self, op):
        if op.transaction is not None:
            p = self.r.pipeline(transaction=True)
            for c in op.transaction:
                p.execute_command(*c)
            return p.execute()
        subs = getattr(op, "pipeline", None)
        if subs is not None:
            p = self.r.pipeline(transaction=False)
            for sub in subs:
                p.execute_command(*sub.command)
            return p.execute()
        return self.r.execute_command(*op.command)

    def execute(self, group, op):
        if op.transaction is not None:
            self.stats["sent: MULTI/EXEC"] += 1
        elif getattr(op, "pipeline", None) is not None:
            self.stats["sent: pipelines"] += 1
        elif "across slots" in op.name:
            self.stats["sent: across slots"] += 1
        super().execute(group, op)
        # A key that will expire soon is never written again, whichever group it came from.
        horizon = mt.now_ms() + 60000
        for k in op.keys:
            s = self.model.exact.get(k)
            if s is not None and s.expiry is not None and s.expiry[1] < horizon:
                for g in self.groups:
                    g.retire(k)

    def retire(self, group, keys, candidates, origin):
        super().retire(group, keys, candidates, origin)
        for g in self.groups:
            for k in keys:
                g.retire(k)

    # -- choosing --------------------------------------------------------------------------------------------

    def pick(self, g):
        if self.strict and self.rng.random() < 0.3:
            return self.pick_proxy_op(g)
        return super().pick(g)

    def other_group(self, g):
        others = [x for x in self.groups if x.slot != g.slot]
        return self.rng.choice(others) if others else g

    def pick_proxy_op(self, g, pipeline=True):
        rng, st = self.rng, self.model.exact
        kind = rng.choice(["get", "mget", "exists", "mset", "del"] + ["pipeline"] * (2 if pipeline else 0))
        if kind == "get":
            strings = [k for k in g.pool if st.get(k) is None or st[k].type == "string"]
            if not strings:
                return None
            k = rng.choice(strings)

            def effect(d, t0, t1):
                return d[k].value if d.get(k) is not None else None
            return mt.Op("GET", [k], ("GET", k), effect, read_only=True)

        # Keys of two or three slots: the proxy splits the command by slot and merges the replies.
        groups = [g, self.other_group(g)]
        if rng.random() < 0.5:
            groups.append(self.other_group(g))
        keys = list(dict.fromkeys(rng.choice(x.pool) for x in groups))
        if kind == "mget":
            keys.append(rng.choice(g.pool))  # a key named twice is answered twice

            def effect(d, t0, t1):
                return [d[k].value if d.get(k) is not None and d[k].type == "string" else None for k in keys]
            return mt.Op("MGET across slots", list(dict.fromkeys(keys)), ("MGET", *keys), effect, read_only=True)
        if kind == "exists":
            def effect(d, t0, t1):
                return sum(1 for k in keys if d.get(k) is not None)
            return mt.Op("EXISTS across slots", keys, ("EXISTS", *keys), effect, read_only=True)
        if kind == "mset":
            vs = [b"x%d" % rng.randint(0, 10 ** 6) for _ in keys]

            def effect(d, t0, t1):
                for k, v in zip(keys, vs):
                    d[k] = mt.State("string", v, None)
                return True
            args = [a for kv in zip(keys, vs) for a in kv]
            return mt.Op("MSET across slots", keys, ("MSET", *args), effect)
        if kind == "del":
            def effect(d, t0, t1):
                n = sum(1 for k in keys if d.get(k) is not None)
                for k in keys:
                    d[k] = None
                return n
            return mt.Op("DEL across slots", keys, ("DEL", *keys), effect)

        # A pipeline of independent commands on distinct keys, over this writer's groups; each reply is checked.
        subs, used = [], set()
        for _ in range(rng.randint(2, 6)):
            sub = super().pick(rng.choice(self.groups)) if rng.random() < 0.7 else self.pick_proxy_op(g, False)
            if sub is None or sub.transaction is not None or "short" in sub.name or used & set(sub.keys):
                continue
            used.update(sub.keys)
            subs.append(sub)
        if len(subs) < 2:
            return None

        def effect(d, t0, t1):
            return [sub.effect(d, t0, t1) for sub in subs]
        op = mt.Op("pipeline of %s" % ", ".join(s.name for s in subs), list(used), effect=effect,
                   read_only=all(s.read_only for s in subs))
        op.pipeline = subs
        return op


def proxy_info(proxy):
    """The proxy's INFO proxy section: {name: int}."""
    r = mt.raw_client(("127.0.0.1", proxy.port))
    try:
        text = r.execute_command("INFO", "proxy").decode()
    finally:
        r.connection_pool.disconnect()
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


def holds_expected(batches, admin):
    """How many holds a move's report says the proxy at admin placed: one per cutover but those run under a
    group's hold (placed for an earlier batch), one more where it was asked again after it could not drain, and one
    more where the hold it placed with the last handoff was given back before the fence."""
    return sum(b["attempts"] - b["attempts_under_group_hold"] + (admin in b["proxies_asked_again"]) +
               b["proxies_held_again"].count(admin) for b in batches)


def batch_table(batches):
    """A move's batches, one line each, for a failed assertion's message: what their holds were placed with."""
    lines = ["batch  slots  attempts  under_group  span  held  with_handoff  placed_next  again  asked  pause_ms"]
    for i, b in enumerate(batches):
        lines.append("%5d %6d %9d %12d %5d %5d %13d %12s %6d %6d %9.1f" % (
            i, b["slot_count"], b["attempts"], b["attempts_under_group_hold"], b["hold_batches"],
            b["proxies_held"], b["proxies_held_with_handoff"], b["handoff_placed_next_hold"],
            len(b["proxies_held_again"]), len(b["proxies_asked_again"]), b["pause_ms"]))
    return "\n" + "\n".join(lines)


def holds_of(proxy, timeout=5):
    """The holds a proxy has now (GET /v1/slots)."""
    status, body = proxy.admin_call("GET", "/v1/slots", timeout=timeout)
    if status != 200 or not isinstance(body, dict):
        raise AssertionError("GET /v1/slots on proxy :%d answered %s: %s" % (proxy.port, status, body))
    return body["holds"]


class SilentEndpoint:
    """A TCP endpoint that accepts connections and never answers: a proxy's admin endpoint that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.closed = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # never read, never answered, kept open

    def address(self):
        return "127.0.0.1:%d" % self.port

    def close(self):
        self.closed = True
        self.sock.close()
        for c in self.accepted:
            c.close()


# ---------------------------------------------------------------------------------------------------------------
# A scenario: cluster, dataset, proxies, clients, a move
# ---------------------------------------------------------------------------------------------------------------

class Move:
    """slotshift move as a child process; result() waits for it and returns (exit code, JSON report, stderr)."""

    def __init__(self, cluster, slots, target, proxies, fence, max_pause="5ms", pause_timeout="2s", journal=None,
                 proxy_dns=(), env=None, hold_batches=None):
        self.cmd = [harness.SLOTSHIFT_BIN, "move", "--cluster", cluster.seed(), "--slots",
                    harness.format_slots(slots), "--to", "%s:%d" % target, "--fence", fence, "--max-pause",
                    max_pause, "--pause-timeout", pause_timeout, "--json", "--no-progress"]
        for p in proxies:
            self.cmd += ["--proxy", p]
        for name in proxy_dns:
            self.cmd += ["--proxy-dns", name]
        if journal:
            self.cmd += ["--journal", journal]
        if hold_batches:
            self.cmd += ["--hold-batches", str(hold_batches)]
        self.out = open(os.path.join(cluster.dir, "move-%d.out" % time.monotonic_ns()), "a+")
        self.err = open(self.out.name + ".err", "a+")
        self.started = time.time()
        self.proc = subprocess.Popen(self.cmd, stdout=self.out, stderr=self.err, env=env)

    def running(self):
        return self.proc.poll() is None

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.out.close()
        self.err.close()

    def result(self, timeout=None):
        # How long a move may run before it counts as hung: under a sanitizer build each batch takes several
        # times longer, and a move whose pauses the machine's load stretches cuts its batches small (measured:
        # 389 batches, 52.7 s for a move that takes 12.1 s alone, and past 120 s beside the ASan soak).
        if timeout is None:
            timeout = 360 if os.environ.get("SLOTSHIFT_SANITIZED") == "1" else 120
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("%s did not finish within %d s" % (" ".join(self.cmd), timeout))
        self.ended = time.time()
        self.out.seek(0)
        self.err.seek(0)
        text, err = self.out.read(), self.err.read()
        self.out.close()
        self.err.close()
        try:
            report = json.loads(text)
        except ValueError:
            report = None
        if report is None and self.proc.returncode == 0:
            raise AssertionError("%s exited 0 without a JSON report:\n%s%s" % (" ".join(self.cmd), text, err))
        log("    slotshift move (%s) exited %d in %.1f s: %s" % (
            self.cmd[self.cmd.index("--fence") + 1], self.proc.returncode, self.ended - self.started,
            summarize(report) if report else (text + err)[-2000:]))
        return self.proc.returncode, report, err


def summarize(report):
    batches = report.get("batches", [])
    held = collections.Counter(b.get("proxies_held") for b in batches)
    return "%d batches (held by %s proxies), %d keys copied, longest pause %.1f ms, stall %.1f ms%s%s" % (
        len(batches), ", ".join("%s: %d" % kv for kv in sorted(held.items(), key=str)), report.get("keys_copied", 0),
        report.get("max_pause_ms", 0), report.get("max_stall_ms", 0), "".join("\n      warning: " + w for w in report.get("warnings", [])),
        "\n      error: " + report["error"] if report.get("error") else "")


def slotshift_check(cluster):
    run = subprocess.run([harness.SLOTSHIFT_BIN, "check", "--cluster", cluster.seed(), "--json"],
                         capture_output=True, text=True, timeout=60)
    try:
        return run.returncode, json.loads(run.stdout)
    except ValueError:
        raise AssertionError("slotshift check --json printed no JSON (exit %d):\n%s%s" % (
            run.returncode, run.stdout, run.stderr))


def parse_slots(text):
    out = set()
    for part in text.replace(",", " ").split():
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


class Scenario:
    """A cluster of 3 masters, move_test's dataset (moving_keys in the moving slots, more elsewhere), proxies with
    their admin endpoint, and writers through them. plan(cluster, a, b, c), with the masters in slot order,
    returns (slots, source, target)."""

    def __init__(self, test, plan, replicas=0, moving_keys=mt.MOVING_KEYS, other_keys=mt.OTHER_KEYS):
        self.test = test
        self.plan = plan
        self.replicas = replicas
        self.moving_keys = moving_keys
        self.other_keys = other_keys
        self.rng = random.Random(zlib.crc32(test.id().split(".")[-1].encode()))
        self.cluster = None
        self.proxies = []
        self.writers = []
        self.endpoints = []
        self.times = {}
        self.workload = None

    def start(self, proxies=2, loose_proxies=()):
        """proxies: how many; writers of the proxies whose index is in loose_proxies are not strict."""
        t = time.time()
        self.cluster = cluster = harness.Cluster(3, self.replicas)
        self.times["cluster"] = time.time() - t
        self.masters = cluster.masters_by_slot()
        self.ids = {n: cluster.node_id(n) for n in cluster.nodes}
        self.slots, self.source, self.target = self.plan(cluster, *self.masters)
        other = sorted(set(range(harness.SLOTS)) - set(self.slots))
        t = time.time()
        far = mt.now_ms() + mt.FAR_FUTURE_MS
        data = mt.dataset_commands(self.rng, self.slots, self.moving_keys, far, b"d")
        data += mt.dataset_commands(self.rng, other, self.other_keys, far, b"o")
        mt.load_dataset(cluster, data)
        initial = mt.read_everything(cluster, [k for k, _ in data])
        self.test.assertEqual([k for k, s in initial.items() if s is None], [], "the dataset did not load")
        self.model = mt.Model(initial)
        self.times["dataset"] = time.time() - t
        for _ in range(proxies):
            self.proxies.append(harness.Proxy(cluster, "--request-timeout-ms", str(PROXY_REQUEST_TIMEOUT_MS),
                                              admin=True))
        n = WRITERS_PER_PROXY * proxies

        def make_writer(groups, i, t_origin):
            p = i % proxies
            return ProxyWriter(cluster, self.proxies[p], self.model, groups, i, t_origin,
                               strict=p not in loose_proxies)
        self.workload = mt.Workload(cluster, self.model, self.slots, other, self.rng, threads=n,
                                    make_writer=make_writer)
        self.workload.start()
        self.info_before = [proxy_info(p) for p in self.proxies]

    def admin(self, i):
        return "127.0.0.1:%d" % self.proxies[i].admin_port

    def move(self, fence, proxies=None, **kw):
        return Move(self.cluster, self.slots, self.target, proxies if proxies is not None else
                    [self.admin(i) for i in range(len(self.proxies))], fence,
                    journal=os.path.join(self.cluster.dir, "move.journal"), **kw)

    def writers_of(self, i):
        return [w for w in self.workload.writers if w.proxy is self.proxies[i]]

    def failures(self, writers=None):
        return [f for w in (writers if writers is not None else self.workload.writers) for f in w.failures]

    def stop_writers(self, writers=None):
        writers = writers if writers is not None else self.workload.writers
        for w in writers:
            w.stop_flag.set()
        for w in writers:
            w.join(60)
            if w.is_alive():
                w.failures.append("%s did not stop within 60 s" % w.name)

    def counter_deltas(self, i, *names):
        after = proxy_info(self.proxies[i])
        return {n: after.get(n, 0) - self.info_before[i].get(n, 0) for n in names}, after

    def verify(self, moved=True):
        """move_test's checks of the whole cluster: every acknowledged write and dataset key in place, nothing
        else, nothing on a node that does not own its slot, distinct epochs with the target's the largest after
        a move, replicas in line with their masters."""
        t = time.time()
        cluster, model = self.cluster, self.model
        cluster.wait_consistent(60)
        owner = self.ids[self.target] if moved else self.ids[self.source]
        cluster.wait_owner(self.slots, owner, timeout=60)
        self.wait_short_ttls()
        masters = [n for n in cluster.nodes if cluster.cli(n, "role").splitlines()[0] == "master"]
        v = mt.Verification(cluster, model, self.slots, 0).run(masters)
        if moved:
            v.epochs(self.ids[self.target])
        for note in v.replicas():
            log("    note: " + note)
        self.times["verify"] = time.time() - t
        return v

    def wait_short_ttls(self):
        horizon = max([s.expiry[1] for s in self.model.exact.values()
                       if s is not None and s.expiry is not None and s.expiry[1] < mt.now_ms() + 60000] or [0])
        wait = (horizon + 200) / 1000 - time.time()
        if wait > 0:
            time.sleep(min(wait, 10))

    def verify_acknowledged(self):
        """Only that every dataset key and acknowledged write is in place on the master that owns its slot (for a
        cluster that still holds a dead move's copies in slots it left IMPORTING)."""
        t = time.time()
        self.wait_short_ttls()
        cluster, model = self.cluster, self.model
        v = mt.Verification(cluster, model, self.slots, 0)
        keys = set(model.exact)
        for ks, _, _ in model.uncertain:
            keys.update(ks)
        owner = cluster.owners()
        by_node = collections.defaultdict(list)
        for k in keys:
            by_node[owner[key_slot(k)]].append(k)
        at_ms = mt.now_ms()
        actual = {}
        for node_id, ks in by_node.items():
            actual.update(mt.read_states(cluster.address(node_id), ks))
        for k, expected in model.exact.items():
            why = v.compare(k, expected, actual.get(k), at_ms)
            if why is not None:
                v.problem(why, "%s (%s): expected %s, from %s; found %s" % (
                    mt.short(k), v.where(k), mt.describe(expected, at_ms), model.origin.get(k),
                    mt.describe(actual.get(k), at_ms)))
        for ks, candidates, origin in model.uncertain:
            if candidates is None or any(all(v.compare(k, c[k], actual.get(k), at_ms) is None for k in ks)
                                         for c in candidates):
                continue
            v.problem("writes with a lost reply that match none of their possible outcomes",
                      "%s from %s" % (", ".join(mt.short(k) for k in ks), origin))
        self.times["verify"] = time.time() - t
        return v

    def summary(self, extra=""):
        stats = self.workload.stats()
        log("    %s: cluster %.1f s, dataset %.1f s, checks %.1f s; clients: %d writes acknowledged (%d to moving "
            "slots), %d reads checked, %d lost replies (loose clients only); %s%s" % (
                self.test.id().rsplit(".", 1)[-1], self.times.get("cluster", 0), self.times.get("dataset", 0),
                self.times.get("verify", 0), stats["acknowledged"], stats["acknowledged, moving slots"],
                stats["reads"], stats["uncertain"],
                ", ".join("%d %s" % (n, k[6:]) for k, n in sorted(stats.items()) if k.startswith("sent: ")), extra))

    def stop(self):
        if self.workload:
            for w in self.workload.writers:
                w.stop_flag.set()
            for w in self.workload.writers:
                w.join(30)
        problems = []
        for p in self.proxies:
            try:
                p.stop()
            except AssertionError as e:
                problems.append(str(e))
        for e in self.endpoints:
            e.close()
        if self.cluster:
            self.cluster.stop()
        if problems:
            raise AssertionError("\n".join(problems))

    def kill_proxy(self, i):
        p = self.proxies[i]
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait()
        p.output_at_exit = p.output()
        p.log.close()
        self.proxies[i] = KilledProxy(p)


class KilledProxy:
    """What is left of a proxy killed on purpose: its port numbers, and a stop() with nothing to check."""

    def __init__(self, proxy):
        self.port = proxy.port
        self.admin_port = proxy.admin_port
        self.proxy = proxy

    def stop(self):
        return None


def freeze_in_hold(move, proxies, accept=lambda hold: True, timeout=60):
    """Catches the move in a cutover: polls the first proxy's GET /v1/slots until it shows a hold that accept(hold)
    takes, then stops slotshift (SIGSTOP) and, once what it had sent has arrived, checks that every proxy of
    proxies holds. Returns each proxy's first hold with slotshift stopped (the caller kills something, then
    continues or kills it), or None if the move exited first. A hold seen just before its release is let go
    (SIGCONT), and the next one tried."""
    deadline = time.time() + timeout
    while time.time() < deadline and move.running():
        try:
            holds = holds_of(proxies[0], timeout=2)
        except (OSError, AssertionError):
            continue
        if not holds or not accept(holds[0]):
            continue
        move.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.05)
        held = [holds_of(p) for p in proxies]
        if all(held):
            return [h[0] for h in held]
        move.proc.send_signal(signal.SIGCONT)
    return None


def range_of(n):
    """plan: the n lowest slots of the first master, to the second."""
    return lambda cluster, a, b, c: (cluster.slots_of(a)[:n], a, b)


# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------

class CutoverTest(unittest.TestCase):
    def assertNoClientErrors(self, run, writers=None, what="the clients"):
        failures = run.failures(writers)
        if failures:
            self.fail("%s saw %d errors:\n  %s" % (what, len(failures), "\n  ".join(failures[:30])))

    def assertClean(self, v):
        if v.problems:
            self.fail(v.report())

    def assertHoldsAccounted(self, run, i, placed):
        """Proxy i placed `placed` holds (holds_expected() of the moves' reports), every one of them was released
        (none ran out), and it holds nothing now."""
        port = run.proxies[i].port
        self.assertEqual(holds_of(run.proxies[i]), [], "a hold is left on proxy :%d" % port)
        deltas, after = run.counter_deltas(i, "holds_placed", "holds_expired")
        self.assertEqual(deltas["holds_placed"], placed, "proxy :%d placed %d holds, not %d" % (
            port, deltas["holds_placed"], placed))
        self.assertEqual(deltas["holds_expired"], 0, "proxy :%d: a hold ran out instead of being released "
                         "(INFO proxy: %s)" % (port, after))

    def assertNoRedirects(self, run, indexes):
        for i in indexes:
            deltas, after = run.counter_deltas(i, "redirects_moved", "redirects_ask")
            self.assertEqual(deltas, {"redirects_moved": 0, "redirects_ask": 0},
                             "proxy :%d met redirects while the slots moved (INFO proxy: %s)" % (
                                 run.proxies[i].port, after))
            self.assertEqual((after.get("redirects_moved"), after.get("redirects_ask")), (0, 0),
                             "proxy :%d: INFO proxy %s" % (run.proxies[i].port, after))


class CutoverUnderLoadTest(CutoverTest):
    """Clients through two proxies during a move of 1000 slots in many small batches (--max-pause 5ms)."""

    def scenario(self, fence, hold_batches=None):
        run = Scenario(self, range_of(1000), replicas=1)
        try:
            run.start(proxies=2)
            time.sleep(1.0)  # writes flow before the move starts
            if fence == "source-pause":
                # The second proxy by name, as a headless Service gives them: "localhost" resolves to 127.0.0.1,
                # where its admin endpoint listens.
                move = run.move(fence, proxies=[run.admin(0)],
                                proxy_dns=["localhost:" + run.admin(1).rsplit(":", 1)[1]], hold_batches=hold_batches)
            else:
                move = run.move(fence, hold_batches=hold_batches)
            rc, report, err = move.result()
            time.sleep(0.5)  # and after it
            run.stop_writers()
            self.assertEqual(rc, 0, "slotshift move --fence %s failed: %s" % (fence, report or err))
            self.assertTrue(report["ok"])
            about_proxies = [w for w in report["warnings"] if "proxy" in w]
            self.assertEqual(about_proxies, [], "the move warned about the proxies")
            batches = report["batches"]
            self.assertGreater(len(batches), 1)
            not_held = [b for b in batches if b["proxies_held"] != 2]
            self.assertEqual(not_held, [], "every batch must be held by both proxies")
            # A batch's hold comes with the handoff of the one before (one call per batch) where that handoff
            # placed it: sent once the source had learnt the claim, by a batch of its own or a group's last. A
            # batch after one handed off while the source learnt (past --max-pause), after a group ended by a
            # slow verify, given back while the target caught up, or tried again, holds on its own; one under
            # its group's hold, placed for an earlier batch, is held by no call of its own.
            with_handoff = [b["proxies_held_with_handoff"] for b in batches]
            carried = [0] + [2 if before["handoff_placed_next_hold"] and b["attempts"] == 1
                             and not b["proxies_held_again"] and b["attempts_under_group_hold"] == 0 else 0
                             for before, b in zip(batches, batches[1:])]
            # (A proxy may not take a carried hold: its handoff took longer than a hold's deadline, or it could
            # not drain in time, as on a loaded machine. It is asked with a hold of its own, and held the batch
            # all the same: proxies_held above.)
            self.assertEqual([min(h, c) for h, c in zip(with_handoff, carried)], with_handoff,
                             "holds placed with a handoff that placed none: %s" % batch_table(batches))
            self.assertGreater(with_handoff.count(2), carried.count(2) // 2,
                               "most batches' holds must come with the last handoff: %s" % batch_table(batches))
            spans = [b["hold_batches"] for b in batches]
            under_group = [b["attempts_under_group_hold"] for b in batches]
            self.assertGreater(carried.count(2), under_group.count(0) // 2,
                               "most handoffs must place the next hold: %s" % batch_table(batches))
            # (With --hold-batches auto, the span depends on how long the calls to the proxies take: on a loaded
            # machine the warm-up's may make the first hold span two batches.)
            if hold_batches is not None:
                # Every hold was placed for the next three batches as planned then (fewer at the end); the batches
                # after a group's first were cut over under its hold, and their handoffs went with the group's
                # last one.
                self.assertLessEqual(set(spans), set(range(1, hold_batches + 1)), spans)
                self.assertEqual(spans[0], hold_batches, spans)
                # A group runs its planned number of batches at most: never more batches in a row under one
                # hold than it was placed for.
                run_length = 0
                for g in under_group:
                    run_length = run_length + 1 if g > 0 else 0
                    self.assertLess(run_length, hold_batches, "a hold spanned more batches than placed for: %s"
                                    % under_group)
                self.assertGreater(sum(under_group), len(batches) // 3,
                                   "too few batches under a group's hold: %s" % under_group)
            self.assertNoClientErrors(run)
            self.assertNoRedirects(run, [0, 1])
            for i in (0, 1):
                self.assertHoldsAccounted(run, i, holds_expected(batches, run.admin(i)))
            during = sum(1 for w in run.workload.writers for t in w.acked_moving if move.started <= t <= move.ended)
            self.assertGreater(during, 20, "too few writes reached the moving slots while they moved")
            v = run.verify()
            held = [run.counter_deltas(i, "requests_held")[0]["requests_held"] for i in (0, 1)]
            run.summary("; %d acknowledged to moving slots while the move ran; requests held by the proxies: %s"
                        % (during, held))
            self.assertClean(v)
        finally:
            run.stop()

    def test_source_pause(self):
        self.scenario("source-pause")

    def test_fence_proxy(self):
        self.scenario("proxy")

    def test_source_pause_holds_spanning_three_batches(self):
        self.scenario("source-pause", hold_batches=3)

    def test_fence_proxy_holds_spanning_three_batches(self):
        self.scenario("proxy", hold_batches=3)


class ProxyFailureTest(CutoverTest):
    def killed_while_it_holds(self, hold_batches=None):
        run = Scenario(self, range_of(2000), moving_keys=8000)
        try:
            run.start(proxies=2, loose_proxies=(1,))
            time.sleep(0.5)
            victim = run.admin(1)
            move = run.move("source-pause", hold_batches=hold_batches)
            # Not in the last batch, so that batches follow without the proxy (with --hold-batches, a group's hold
            # not in the last group: the group's later batches are cut over under it, their handoff and the next
            # group's hold then miss the dead proxy).
            last = max(run.slots)
            held = freeze_in_hold(move, [run.proxies[1]], accept=lambda hold: last not in parse_slots(hold["slots"]))
            self.assertIsNotNone(held, "the move ended before the proxy was seen holding: too few batches")
            run.kill_proxy(1)
            move.proc.send_signal(signal.SIGCONT)
            log("    killed proxy :%d while it held %s (%d requests held)" % (
                run.proxies[1].port, held[0]["slots"], held[0]["queued"]))
            run.stop_writers(run.writers_of(1))
            rc, report, err = move.result()
            time.sleep(0.5)
            run.stop_writers()
            self.assertEqual(rc, 0, "slotshift move failed after a proxy died: %s" % (report or err))
            self.assertTrue(any(victim in w for w in report["warnings"]),
                            "no warning names the dead proxy %s: %s" % (victim, report["warnings"]))
            held = [b["proxies_held"] for b in report["batches"]]
            self.assertEqual(held[0], 2, "the first batch: %s" % held)
            self.assertEqual(held[-1], 1, "the last batch, after the proxy died: %s" % held)
            if hold_batches:
                under_group = [b["attempts_under_group_hold"] for b in report["batches"]]
                self.assertEqual(report["batches"][0]["hold_batches"], hold_batches, report["batches"][0])
                self.assertGreater(sum(under_group), 0, "no batch was cut over under a group's hold: %s" %
                                   under_group)
                self.assertTrue(all(b["handed_off"] for b in report["batches"]), "a batch was never handed off")
            self.assertNoClientErrors(run, run.writers_of(0), "the surviving proxy's clients")
            self.assertNoRedirects(run, [0])
            self.assertHoldsAccounted(run, 0, holds_expected(report["batches"], run.admin(0)))
            v = run.verify()
            run.summary("; batches held by 2 proxies: %d, by 1: %d" % (held.count(2), held.count(1)))
            self.assertClean(v)
        finally:
            run.stop()

    def test_proxy_killed_while_it_holds(self):
        """source-pause: a proxy SIGKILLed while it holds a batch's slots; the move goes on without it and says
        so; the other proxy's clients see nothing."""
        self.killed_while_it_holds()

    def test_proxy_killed_while_it_holds_a_group(self):
        """The same with --hold-batches 3: the proxy dies under a hold placed for three batches. The group's
        batches are cut over and handed off to the surviving proxy, and the next groups go on without the dead
        one."""
        self.killed_while_it_holds(hold_batches=3)

    def test_proxy_that_never_answers(self):
        """An admin endpoint that accepts and never answers among the proxies. --fence proxy: the move fails at
        the first batch, says why, and is undone; then source-pause: the move goes on without it and says so.
        The real proxy's clients see nothing either time."""
        run = Scenario(self, range_of(1000))
        try:
            run.start(proxies=1)
            silent = SilentEndpoint()
            run.endpoints.append(silent)
            proxies = [run.admin(0), silent.address()]
            time.sleep(0.5)

            rc, report, err = run.move("proxy", proxies=proxies).result()
            self.assertNotEqual(rc, 0, "slotshift move --fence proxy succeeded with a proxy that never answers")
            # Stopped and undone, its journal closed: exit status 1 (a Job may run the same move again).
            self.assertEqual(rc, 1, "slotshift move --fence proxy: %s" % (report or err))
            self.assertEqual(report["outcome"], "failed", report)
            error = report["error"] if report else err
            self.assertIn("--fence proxy", error)
            self.assertIn(silent.address(), error, "the error does not name the proxy that did not answer")
            self.assertFalse(report["ok"])
            self.assertEqual(holds_of(run.proxies[0]), [], "the failed move left a hold on the real proxy")
            check_rc, check = slotshift_check(run.cluster)
            self.assertEqual((check_rc, check["findings"]), (0, []), "slotshift check after the undone move")
            owners = run.cluster.owners()
            self.assertEqual({owners[s] for s in run.slots}, {run.ids[run.source]}, "the slots left their owner")
            r = mt.raw_client(run.target)
            p = r.pipeline(transaction=False)
            for s in run.slots:
                p.execute_command("CLUSTER", "COUNTKEYSINSLOT", s)
            left = sum(p.execute())
            r.connection_pool.disconnect()
            self.assertEqual(left, 0, "the undone move left %d keys of the slots on the target" % left)
            time.sleep(0.5)
            self.assertNoClientErrors(run, what="the clients, during the failed --fence proxy move")

            rc, report, err = run.move("source-pause", proxies=proxies).result()
            time.sleep(0.5)
            run.stop_writers()
            self.assertEqual(rc, 0, "slotshift move (source-pause) failed with a proxy that never answers: %s" % (
                report or err))
            self.assertTrue(any(silent.address() in w for w in report["warnings"]),
                            "no warning names the proxy that never answers: %s" % report["warnings"])
            held = [b["proxies_held"] for b in report["batches"]]
            self.assertEqual(set(held), {1}, "batches held by %s proxies" % held)
            self.assertNoClientErrors(run)
            self.assertNoRedirects(run, [0])
            v = run.verify()
            run.summary()
            self.assertClean(v)
        finally:
            run.stop()


class OrchestratorKilledTest(CutoverTest):
    PAUSE_TIMEOUT_S = 1.0

    def test_orchestrator_killed_while_the_proxies_hold(self):
        """slotshift SIGKILLed while both proxies hold a batch: the holds end by themselves within --pause-timeout,
        the clients go on without an error, and `slotshift check` reports the slots left IMPORTING on the target
        (cleaning them up is `slotshift abort`)."""
        run = Scenario(self, range_of(2000), moving_keys=8000)
        try:
            run.start(proxies=2)
            time.sleep(0.5)
            move = run.move("source-pause", pause_timeout="%dms" % (self.PAUSE_TIMEOUT_S * 1000))
            # Neither in the first batch nor in the last, so that some slots have moved and others not.
            first, last = min(run.slots), max(run.slots)
            held = freeze_in_hold(move, run.proxies, accept=lambda hold: not {first, last} & parse_slots(hold["slots"]))
            self.assertIsNotNone(held, "the move ended before the proxies were seen holding: too few batches")
            move.kill()
            killed_at = time.time()
            for p, hold in zip(run.proxies, held):
                log("    killed slotshift while proxy :%d held %s (expires in %d ms, %d requests held)" % (
                    p.port, hold["slots"], hold["expires_in_ms"], hold["queued"]))
                self.assertLessEqual(hold["expires_in_ms"], self.PAUSE_TIMEOUT_S * 1000)
            # Every hold ends by itself within --pause-timeout of the kill.
            left = {0, 1}
            while left and time.time() < killed_at + self.PAUSE_TIMEOUT_S + 5:
                left = {i for i in left if holds_of(run.proxies[i])}
                time.sleep(0.01)
            gone_after = time.time() - killed_at
            self.assertEqual(left, set(), "holds still in place %.1f s after slotshift died" % gone_after)
            self.assertLess(gone_after, self.PAUSE_TIMEOUT_S + 0.25,
                            "the holds outlived --pause-timeout (%.1f s) by %.2f s" % (
                                self.PAUSE_TIMEOUT_S, gone_after - self.PAUSE_TIMEOUT_S))
            for i in (0, 1):
                deltas, after = run.counter_deltas(i, "holds_expired")
                self.assertGreaterEqual(deltas["holds_expired"], 1, "proxy :%d: INFO proxy %s" % (
                    run.proxies[i].port, after))
            time.sleep(1.5)  # the clients go on
            run.stop_writers()
            self.assertNoClientErrors(run)

            # What is left: the slots not yet claimed, IMPORTING on the target and nowhere else.
            owners = run.cluster.owners()
            unclaimed = {s for s in run.slots if owners[s] != run.ids[run.target]}
            self.assertTrue(unclaimed, "every slot was claimed before the kill: kill earlier")
            self.assertLess(len(unclaimed), len(run.slots), "no batch was claimed before the kill")
            self.assertEqual({owners[s] for s in unclaimed}, {run.ids[run.source]})
            check_rc, check = slotshift_check(run.cluster)
            self.assertNotEqual(check_rc, 0, "slotshift check finds nothing wrong: %s" % check)
            importing = [f for f in check["findings"] if f["kind"] == "slot-importing"]
            others = [f for f in check["findings"] if f["kind"] != "slot-importing"]
            self.assertEqual(others, [], "slotshift check reports more than the slots left IMPORTING")
            self.assertEqual([(f["node_id"], f["peer_id"]) for f in importing],
                             [(run.ids[run.target], run.ids[run.source])], check["findings"])
            reported = parse_slots(importing[0]["slots"])
            self.assertEqual(reported, unclaimed, "slotshift check: %s; not claimed: %s" % (
                importing[0]["message"], harness.format_slots(unclaimed)))
            log("    slotshift check: " + importing[0]["message"])
            v = run.verify_acknowledged()
            run.summary("; %d slots left IMPORTING" % len(unclaimed))
            self.assertClean(v)
        finally:
            run.stop()

    def catch_a_group_with_a_claimed_batch(self, run, move):
        """Polls the first proxy's hold until it holds a batch that the journal records as claimed (its claim
        done, not under way) and slots no batch has claimed yet: a group whose claimed batch waits for the
        group's handoff. Stops slotshift there (SIGSTOP) and returns (hold, claimed slots of it) once both
        proxies still hold; None if the move ended first."""
        target_id = run.ids[run.target]
        journal = os.path.join(run.cluster.dir, "move.journal")

        def held_and_claimed():
            holds = holds_of(run.proxies[0], timeout=2)
            if not holds:
                return None, set()
            held = parse_slots(holds[0]["slots"])
            done = set()
            with open(journal) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:  # the last line, being written
                        continue
                    if record.get("step") == "claimed" and parse_slots(record["slots"]) <= held:
                        done |= parse_slots(record["slots"])
            owners = run.cluster.owners(run.target)
            return holds[0], {s for s in done if owners[s] == target_id}

        deadline = time.time() + 60
        while time.time() < deadline and move.running():
            try:
                hold, claimed = held_and_claimed()
                if not claimed or len(claimed) == len(parse_slots(hold["slots"])):
                    continue
                move.proc.send_signal(signal.SIGSTOP)
                time.sleep(0.05)
                hold, claimed = held_and_claimed()
                if hold and claimed and len(claimed) < len(parse_slots(hold["slots"])) and \
                        all(holds_of(p) for p in run.proxies):
                    return hold, claimed
                move.proc.send_signal(signal.SIGCONT)
            except (OSError, AssertionError, subprocess.SubprocessError):
                pass
        return None

    def test_orchestrator_killed_under_a_hold_spanning_batches(self):
        """--hold-batches 3: slotshift SIGKILLed while the proxies hold a group of batches of which one at least is
        claimed and not yet handed off (the target owns slots the proxies still hold). The holds end by themselves
        within --pause-timeout, the proxies send the held commands of the claimed slots to the old owner and follow
        its MOVED, no client sees an error, and `slotshift resume` then completes the move with every
        acknowledged write in place."""
        run = Scenario(self, range_of(2000), moving_keys=8000)
        try:
            run.start(proxies=2)
            time.sleep(0.5)
            move = run.move("source-pause", pause_timeout="%dms" % (self.PAUSE_TIMEOUT_S * 1000), hold_batches=3)
            caught = self.catch_a_group_with_a_claimed_batch(run, move)
            self.assertIsNotNone(caught, "the move ended before a group's claimed batch was seen held")
            hold, claimed = caught
            move.kill()
            killed_at = time.time()
            log("    killed slotshift while proxy :%d held %s, of which the target owns %s (%d requests held)" % (
                run.proxies[0].port, hold["slots"], harness.format_slots(claimed), hold["queued"]))
            left = {0, 1}
            while left and time.time() < killed_at + self.PAUSE_TIMEOUT_S + 5:
                left = {i for i in left if holds_of(run.proxies[i])}
                time.sleep(0.01)
            self.assertEqual(left, set(), "holds still in place %.1f s after slotshift died" % (
                time.time() - killed_at))
            time.sleep(1.0)  # the clients go on, through the old owner's MOVED for the claimed slots
            resume = subprocess.run([harness.SLOTSHIFT_BIN, "resume", "--cluster", run.cluster.seed(), "--journal",
                                     os.path.join(run.cluster.dir, "move.journal"), "--json"],
                                    capture_output=True, text=True, timeout=300)
            log("    slotshift resume exited %d: %s" % (resume.returncode, (resume.stdout + resume.stderr)[-600:]))
            time.sleep(0.5)
            run.stop_writers()
            self.assertEqual(resume.returncode, 0, "slotshift resume failed: %s%s" % (resume.stdout, resume.stderr))
            self.assertNoClientErrors(run)
            v = run.verify()
            run.summary("; killed with %d claimed slots held" % len(claimed))
            self.assertClean(v)
        finally:
            run.stop()

    def test_orchestrator_stopped_under_a_hold_spanning_batches(self):
        """--hold-batches 3: SIGTERM while a group's claimed batch is still held. The move stops before its next
        batch, hands the group's claimed batches off (route and release) and lets go of the rest before it undoes
        the unclaimed slots: no client sees an error or a redirect, no hold runs out, the claimed slots stay
        moved, the rest go back, and every acknowledged write is in place."""
        run = Scenario(self, range_of(2000), moving_keys=8000)
        try:
            run.start(proxies=2)
            time.sleep(0.5)
            move = run.move("source-pause", hold_batches=3)
            caught = self.catch_a_group_with_a_claimed_batch(run, move)
            self.assertIsNotNone(caught, "the move ended before a group's claimed batch was seen held")
            hold, claimed = caught
            move.proc.send_signal(signal.SIGTERM)
            move.proc.send_signal(signal.SIGCONT)
            log("    SIGTERM to slotshift while proxy :%d held %s, of which the target owns %s" % (
                run.proxies[0].port, hold["slots"], harness.format_slots(claimed)))
            rc, report, err = move.result()
            time.sleep(0.5)
            run.stop_writers()
            self.assertEqual(rc, 1, "slotshift move after SIGTERM: %s" % (report or err))
            self.assertIn("SIGTERM", report["error"])
            moved = {s for b in report["batches"] if b["slots_claimed"] for s in parse_slots(b["slots"])}
            self.assertLessEqual(claimed, moved, report["batches"])
            self.assertEqual([b["slots"] for b in report["batches"] if b["slots_claimed"] and not b["handed_off"]], [],
                             "claimed batches the proxies were never handed off")
            self.assertNoClientErrors(run)
            self.assertNoRedirects(run, [0, 1])
            for i in (0, 1):
                deltas, after = run.counter_deltas(i, "holds_expired")
                self.assertEqual(deltas["holds_expired"], 0, "proxy :%d: a hold ran out instead of being released "
                                 "(INFO proxy: %s)" % (run.proxies[i].port, after))
                self.assertEqual(holds_of(run.proxies[i]), [], "a hold is left on proxy :%d" % run.proxies[i].port)
            owners = run.cluster.owners()
            self.assertEqual({s for s in run.slots if owners[s] == run.ids[run.target]}, moved)
            v = run.verify_acknowledged()
            run.summary("; stopped with %d claimed slots held, %d of %d slots moved" % (
                len(claimed), len(moved), len(run.slots)))
            self.assertClean(v)
        finally:
            run.stop()

if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid> prints where every thread is
    harness.main()
