#!/usr/bin/python3
"""slotshift as a Kubernetes Job runs it: no terminal, its exit status read by the Job, its progress read from the
log, its figures scraped from --metrics. On a real cluster of three masters holding keys:

  ExitStatusTest   each exit status of the README's "Exit status" produced for real, and what the nodes hold then:
                   2 (the command line), 4 (refused, nothing touched), 0 (done), 1 (stopped by SIGTERM, as when
                   the Job's pod is deleted: undone, and the same move run again finishes), 5 (stopped while the
                   target did not answer: work left, the journal open; slotshift abort then finishes it)
  ProgressLogTest  stderr that is not a terminal gets a line with the time for every phase, then the outcome
  MetricsTest      /metrics read with Prometheus's own text-format parser at two instants of real moves (the copy
                   done; every batch claimed), each compared with the move's --json report and the nodes; and
                   scraped all along a move: every counter only grows, and the phases come in order

SLOTSHIFT_BINARY_DIR picks the build whose slotshift is tested (default: build/).
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

import redis
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

KEYS = 20000
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z slotshift move: ")


def fill(cluster):
    """KEYS keys over every slot, through a cluster client."""
    host, port = cluster.masters()[0]
    client = redis.cluster.RedisCluster(host=host, port=port)
    pipe = client.pipeline(transaction=False)
    for i in range(KEYS):
        pipe.set("job:%d" % i, "v%d" % i)
    pipe.execute()
    client.close()


def keys_in(cluster, node, slots):
    r = cluster.redis(node)
    return sum(r.execute_command("CLUSTER", "COUNTKEYSINSLOT", s) for s in slots)


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as response:
        return response.read().decode()


def samples(text):
    """{(name, ((label, value), ...)): value}, as Prometheus's parser reads the page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def one(parsed, name, **labels):
    return parsed[(name, tuple(sorted(labels.items())))]


def phase_of(parsed):
    on = [dict(k[1])["phase"] for k, v in parsed.items() if k[0] == "slotshift_move_phase" and v == 1]
    assert len(on) == 1, "not exactly one phase is 1: %r" % on
    return on[0]


class JobCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(3, 0)
        fill(cls.cluster)

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def move(self, slots, to, *extra, env=None, timeout=180):
        """slotshift move, as a Job runs it: stdout and stderr are pipes, never a terminal."""
        journal = os.path.join(self.cluster.dir, "move-%d.journal" % time.monotonic_ns())
        cmd = [harness.SLOTSHIFT_BIN, "move", "--cluster", self.cluster.seed(), "--slots", slots,
               "--to", self.cluster.node_id(to), "--journal", journal, "--timeout-ms", "1000", *extra]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             env=dict(os.environ, **(env or {})))
        run.journal = journal
        return run

    def check_clean(self):
        self.cluster.wait_consistent(30)
        check = subprocess.run([harness.SLOTSHIFT_BIN, "check", "--cluster", self.cluster.seed()],
                               capture_output=True, text=True, timeout=60)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)

    def first_slots(self, node, count):
        slots = self.cluster.slots_of(node)[:count]
        return slots, harness.format_slots(slots).replace(" ", ",")

    def owned_by(self, slots, node):
        owners = self.cluster.owners()
        return all(owners[s] == self.cluster.node_id(node) for s in slots)


class ExitStatusTest(JobCase):
    def test_usage_and_refusals_touch_nothing(self):
        a, b, _ = self.cluster.masters_by_slot()
        _, text = self.first_slots(a, 100)
        for extra, said in [(["--slots-typo"], "--slots-typo"), (["--metrics", "no-port"], "--metrics"),
                            (["--max-pause", "fast"], "duration")]:
            run = self.move(text, b, *extra)
            self.assertEqual(run.returncode, 2, run.stderr)
            self.assertIn(said, run.stderr)
        # A metrics port already taken: said before anything is touched.
        with socket_on() as port:
            run = self.move(text, b, "--metrics", "127.0.0.1:%d" % port)
        self.assertEqual(run.returncode, 2, run.stderr)
        self.assertIn("cannot listen for --metrics on 127.0.0.1:%d" % port, run.stderr)
        # The cluster as it is now: no node at the seed; a target that is not a node of the cluster.
        run = subprocess.run([harness.SLOTSHIFT_BIN, "move", "--cluster", "127.0.0.1:1", "--slots", "0-10", "--to",
                              "127.0.0.1:2", "--json"], capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 4, run.stderr)
        self.assertEqual(json.loads(run.stdout)["outcome"], "refused")
        run = self.move(text, a, "--json")  # to the master that already owns them: nothing to move
        self.assertEqual(run.returncode, 0, run.stderr)
        self.check_clean()

    def test_sigterm_undoes_then_the_same_move_finishes_and_a_stalled_target_leaves_it_unfinished(self):
        a, b, _ = self.cluster.masters_by_slot()
        slots, text = self.first_slots(a, 500)
        keys = keys_in(self.cluster, a, slots)
        # SIGTERM once the keys are copied, as the kubelet sends when the Job's pod is deleted.
        run = self.move(text, b, "--json", env={"SLOTSHIFT_FAULT": "copied:run", "SLOTSHIFT_FAULT_RUN": "kill -TERM $PPID"})
        report = json.loads(run.stdout)
        self.assertEqual((run.returncode, report["outcome"], report["exit_status"]), (1, "failed", 1), run.stderr)
        self.assertIn("interrupted", report["error"])
        self.assertTrue(self.owned_by(slots, a), "the interrupted move left slots moved")
        self.assertEqual(keys_in(self.cluster, b, slots), 0, "the copied keys stayed on the target")
        self.check_clean()
        # The Job tries again (its podFailurePolicy counts exit status 1): the same move finishes.
        run = self.move(text, b, "--json")
        self.assertEqual((run.returncode, json.loads(run.stdout)["outcome"]), (0, "done"), run.stderr)
        self.assertTrue(self.owned_by(slots, b))
        self.assertEqual(keys_in(self.cluster, b, slots), keys)
        self.check_clean()

        # Back to a, with SIGTERM while the target, a, is stopped for longer than half the move's lease (15 s
        # of 30 s): the move cannot tell whether another slotshift took its lease over meanwhile, so it undoes
        # nothing, writes nothing more in its journal, and says so.
        pid = int(self.cluster.cli(a, "info", "server").split("process_id:")[1].split()[0])
        stall = "kill -STOP %d; (sleep 20; kill -CONT %d) >/dev/null 2>&1 & kill -TERM $PPID" % (pid, pid)
        run = self.move(text, a, "--json", env={"SLOTSHIFT_FAULT": "copied:run", "SLOTSHIFT_FAULT_RUN": stall})
        report = json.loads(run.stdout)
        self.assertEqual((run.returncode, report["outcome"], report["exit_status"]), (5, "unfinished", 5),
                         run.stdout + run.stderr)
        with open(run.journal) as f:
            last = json.loads(f.read().splitlines()[-1])
        self.assertEqual(last["step"], "copied", "the move wrote in its journal after it lost its lease")
        self.assertIn("no longer holds its lease", report["error"])
        self.assertIn("undid nothing", report["error"])
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if self.cluster.redis(a, socket_timeout=1).ping():
                    break
            except redis.RedisError:
                time.sleep(0.5)
        # What the journal left is seen by check, and abort finishes it (exit 0), after which all is clean.
        check = subprocess.run([harness.SLOTSHIFT_BIN, "check", "--cluster", self.cluster.seed()],
                               capture_output=True, text=True, timeout=60)
        self.assertEqual(check.returncode, 1, check.stdout)
        abort = subprocess.run([harness.SLOTSHIFT_BIN, "abort", "--cluster", self.cluster.seed(), "--journal",
                                run.journal], capture_output=True, text=True, timeout=120)
        self.assertEqual(abort.returncode, 0, abort.stdout + abort.stderr)
        self.assertTrue(self.owned_by(slots, b))
        self.assertEqual(keys_in(self.cluster, b, slots), keys)
        self.assertEqual(keys_in(self.cluster, a, slots), 0)
        self.check_clean()
        # Back where the other tests expect them.
        run = self.move(text, a)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)


class socket_on:
    """A port held by a listening socket, for the time of a with block."""

    def __enter__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


class ProgressLogTest(JobCase):
    def test_every_phase_then_the_outcome(self):
        a, b, _ = self.cluster.masters_by_slot()
        slots, text = self.first_slots(a, 1000)
        try:
            run = self.move(text, b, "--json")
            self.assertEqual(run.returncode, 0, run.stderr)
            lines = run.stderr.splitlines()
            logged = [STAMP.sub("", line) for line in lines if STAMP.match(line)]
            report = json.loads(run.stdout)
            phases = [line.split()[0] for line in logged]
            # Each phase once (the copy and the cutovers may add lines every --progress-interval, 10 s).
            order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
            self.assertEqual(order, ["started", "prepare", "copy", "cutover", "clean", "settle", "finished:"],
                             run.stderr)
            self.assertIn("started %s: slots %s to %s (journal %s)" % (
                report_move_id(run.journal), text, report["target"], run.journal), logged[0])
            self.assertRegex(logged[phases.index("cutover")], r"^cutover  batch 1 of ~\d+ ")
            self.assertEqual(logged[-1], "finished: done (exit status 0) after %.2f s, %d batches" % (
                report["elapsed_s"], len(report["batches"])))
            # --no-progress: none of it.
            back = self.move(text, a, "--no-progress")
            self.assertEqual(back.returncode, 0, back.stderr)
            self.assertEqual([line for line in back.stderr.splitlines() if STAMP.match(line)], [])
        finally:
            if not self.owned_by(slots, a):
                self.move(text, a)


def report_move_id(journal):
    with open(journal) as f:
        return json.loads(f.readline())["move"]


class MetricsTest(JobCase):
    def test_figures_at_the_copy_and_at_the_end_match_the_report(self):
        a, b, _ = self.cluster.masters_by_slot()
        slots, text = self.first_slots(a, 2000)
        keys = keys_in(self.cluster, a, slots)
        port = harness.free_port()
        page = os.path.join(self.cluster.dir, "metrics-%d.txt")
        take = "curl -sf http://127.0.0.1:%d/metrics -o %s" % (port, page % 1)
        # Scraped all along too, by a scraper that never stops the move.
        scraped, stop = [], threading.Event()

        def scraper():
            while not stop.is_set():
                try:
                    scraped.append(samples(scrape(port)))
                except OSError:
                    pass
                time.sleep(0.02)
        thread = threading.Thread(target=scraper)
        thread.start()
        try:
            run = self.move(text, b, "--json", "--metrics", "127.0.0.1:%d" % port,
                            env={"SLOTSHIFT_FAULT": "copied:run", "SLOTSHIFT_FAULT_RUN": take})
        finally:
            stop.set()
            thread.join()
        self.assertEqual(run.returncode, 0, run.stderr)
        report = json.loads(run.stdout)
        with open(page % 1) as f:
            at_copy = samples(f.read())
        # The copy is done: every key of the slots is on the target, nothing is claimed yet.
        self.assertEqual(phase_of(at_copy), "copy")
        self.assertEqual(one(at_copy, "slotshift_move_keys_copied_total"), keys)
        self.assertEqual(one(at_copy, "slotshift_move_keys_estimated"), keys)
        self.assertGreater(one(at_copy, "slotshift_move_snapshot_bytes_read_total"), 0)
        self.assertGreater(one(at_copy, "slotshift_move_bytes_copied_total"), 0)
        self.assertEqual(one(at_copy, "slotshift_move_slots"), len(slots))
        self.assertEqual(one(at_copy, "slotshift_move_slots_moved"), 0)
        self.assertEqual(one(at_copy, "slotshift_move_pause_seconds_count"), 0)
        self.assertEqual(one(at_copy, "slotshift_move_info", move=report_move_id(run.journal),
                             target=report["target"], engine="replica", fence="source-pause"), 1)
        # All along: counters only grow, and the phases come in their order.
        self.assertGreater(len(scraped), 5, "the scraper got nothing")
        # A scrape between the report and the process's exit sees the outcome.
        order = ["plan", "prepare", "copy", "cutover", "clean", "settle", "done"]
        seen = []
        for earlier, later in zip(scraped, scraped[1:]):
            for (name, labels), value in later.items():
                if name.endswith("_total") or name.endswith("_count") or name.endswith("_bucket"):
                    self.assertGreaterEqual(value, earlier.get((name, labels), 0), name)
        for parsed in scraped:
            p = phase_of(parsed)
            if not seen or seen[-1] != p:
                seen.append(p)
        self.assertEqual(seen, sorted(seen, key=order.index), seen)
        self.assertIn("copy", seen)

        # Back, with a scrape once every batch is claimed and settled (the journal's "done").
        take = "curl -sf http://127.0.0.1:%d/metrics -o %s" % (port, page % 2)
        run = self.move(text, a, "--json", "--metrics", "127.0.0.1:%d" % port,
                        env={"SLOTSHIFT_FAULT": "done:run", "SLOTSHIFT_FAULT_RUN": take})
        self.assertEqual(run.returncode, 0, run.stderr)
        report = json.loads(run.stdout)
        with open(page % 2) as f:
            at_end = samples(f.read())
        self.assertEqual(phase_of(at_end), "settle")
        self.assertEqual(one(at_end, "slotshift_move_keys_copied_total"), report["keys_copied"])
        self.assertEqual(one(at_end, "slotshift_move_bytes_copied_total"), report["bytes_copied"])
        self.assertEqual(one(at_end, "slotshift_move_slots_moved"), len(slots))
        self.assertEqual(one(at_end, "slotshift_move_batches_total", result="claimed"), len(report["batches"]))
        self.assertEqual(one(at_end, "slotshift_move_batches_total", result="not claimed"), 0)
        self.assertEqual(one(at_end, "slotshift_move_pause_seconds_count"), len(report["batches"]))
        self.assertAlmostEqual(one(at_end, "slotshift_move_max_pause_seconds"),
                               max(b["pause_ms"] for b in report["batches"]) / 1000, places=6)
        self.assertEqual(one(at_end, "slotshift_move_pause_seconds_bucket", le="+Inf"), len(report["batches"]))
        self.assertEqual(one(at_end, "slotshift_move_batch"), len(report["batches"]))
        self.assertTrue(self.owned_by(slots, a))
        self.check_clean()


if __name__ == "__main__":
    harness.main()
