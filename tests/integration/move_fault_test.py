#!/usr/bin/python3
"""Moves that fail part way, and what they leave: faults injected into `slotshift move` at a named instant
(SLOTSHIFT_FAULT, orchestrator/fault_injection.h) on a real cluster, under move_test.py's writers, which record
every acknowledged write (and INCR counters, so that a write applied twice shows too).

After each fault: slotshift exits non-zero; what it says the target owns is what every node says; every key the
writers' model explains is where the cluster's owners say and holds what the model allows (no acknowledged write
lost or applied twice); `slotshift check` and `redis-cli --cluster check` are clean.

Run by ctest as move_fault_it (and move_fault_it@SERVER for the claim case on other servers); runs alone too:
    tests/integration/move_fault_test.py
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import zlib

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import move_test  # noqa: E402
from move_test import Run, log  # noqa: E402


def parse_slots(text):
    """'0-31 64-95,128' -> set of slots."""
    out = set()
    for part in re.split(r"[ ,]+", text.strip()):
        if not part:
            continue
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


class FaultedMover:
    """slotshift move with SLOTSHIFT_FAULT (and SLOTSHIFT_FAULT_RUN) set; its output is kept for the checks."""

    name = "slotshift move (faulted)"

    def __init__(self, fault, run_command=None):
        self.fault = fault
        self.run_command = run_command
        self.result = None

    def __call__(self, cluster, slots, target):
        cmd = [harness.SLOTSHIFT_BIN, "move", "--cluster", cluster.seed(), "--slots", harness.format_slots(slots),
               "--to", cluster.node_id(target), "--journal", os.path.join(cluster.dir, "move.journal")]
        env = dict(os.environ, SLOTSHIFT_FAULT=self.fault)
        if self.run_command:
            env["SLOTSHIFT_FAULT_RUN"] = self.run_command
        self.result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        for line in (self.result.stdout + self.result.stderr).splitlines():
            if not line.startswith("  batch"):
                log("    slotshift: " + line)
        return self.result


def journal_exit_status(path):
    """The exit status the last slotshift of a journal must end with, from its last record (the README's "Exit
    status"): 0 done; a move that stopped by itself, 1 with its undo complete; an abort, 0 once complete;
    either, 5 with work left on the nodes."""
    with open(path) as f:
        last = json.loads(f.read().splitlines()[-1])
    if last["step"] == "done":
        return 0
    if last["step"] == "aborted":
        if not last.get("complete"):
            return 5
        return 1 if last.get("by") == "the move itself" else 0
    raise AssertionError("the move ended on the journal record %r, not done or aborted" % last)


def pid_of(cluster, node):
    return int(cluster.cli(node, "info", "server").split("process_id:")[1].split()[0])


def stop_for(cluster, node, seconds, marker):
    """A shell command that stops a node's process (SIGSTOP) for a while, in the background, the first time it
    runs (marker: a file it leaves behind)."""
    pid = pid_of(cluster, node)
    return "[ -e %s ] || { touch %s; kill -STOP %d; (sleep %s; kill -CONT %d) & }" % (
        marker, marker, pid, seconds, pid)


def fail_over(cluster, master, replica, marker):
    """A shell command that, the first time it runs, makes the master's replica take its place by CLUSTER
    FAILOVER TAKEOVER (no agreement from the master or the others), once the replica has everything the master
    acknowledged (a takeover loses what its replica lacks, by Redis's own design, and that is not what is
    tested here), and returns once the old master knows it is a replica."""
    m, r = master[1], replica[1]
    offset = "redis-cli -p %d info replication | tr -d '\\r' | awk -F: '/^%s:/{print $2}'"
    return ("[ -e {f} ] || {{ touch {f}; redis-cli -p {m} client pause 3000 write >/dev/null; "
            "until [ \"$({ro})\" = \"$({mo})\" ]; do sleep 0.01; done; "
            "redis-cli -p {r} cluster failover takeover >/dev/null; "
            "until redis-cli -p {m} role | head -1 | grep -q slave; do sleep 0.01; done; "
            "redis-cli -p {m} client unpause >/dev/null; }}").format(
                f=marker, m=m, r=r, ro=offset % (r, "slave_repl_offset"), mo=offset % (m, "master_repl_offset"))


class FaultScenarios:
    """One move of 2,000 slots of the first master to the second under the writers, with a fault; then the checks
    every fault shares."""

    def promoting_replica(self):
        """For a test that promotes a replica: what Redis itself does not keep equal on one is not compared."""
        move_test.COMPARE_ENTRIES_READ = False
        self.addCleanup(setattr, move_test, "COMPARE_ENTRIES_READ", True)

    def faulted_move(self, fault, run_command=None, expect_failure=None, name="fault", mover=None, after=None):
        mover = mover or FaultedMover(fault, None if callable(run_command) else run_command)
        run = Run(self, mover, lambda cluster, a, b, c: [(cluster.slots_of(a)[:2000], b)],
                  seed=zlib.crc32(name.encode()))
        self.run = run
        try:
            run.start()
            cluster = run.cluster
            source, target, _ = run.masters
            self.source, self.target = source, target
            replicas = [n for n in cluster.nodes if cluster.view(n)[0].master_id == run.ids[source]]
            self.source_replica = replicas[0] if replicas else None
            # Each side: the master, or a replica of it that a fault promoted.
            sides = {m: {run.ids[m]} | {run.ids[n] for n in cluster.nodes
                                        if cluster.view(n)[0].master_id == run.ids[m]} for m in (source, target)}
            if callable(run_command):
                mover.run_command = run_command(self)
            slots, _ = run.steps[0]
            run.workload.start()
            time.sleep(1.0)
            result = mover(cluster, slots, target)
            time.sleep(0.5)
            run.workload.stop()
            out = result.stdout + result.stderr
            if expect_failure is not None:
                self.assertEqual(result.returncode != 0, expect_failure, out)
            # Exit status 4 (refused before it started) only from a mover that may be refused (two at once).
            self.assertIn(result.returncode, (0, 1, 4) if getattr(mover, "may_refuse", False) else (0, 1), out)
            # The exit status (what a Job acts on) is what the journal's last record says the move left.
            journal = os.path.join(cluster.dir, "move.journal")
            if isinstance(mover, FaultedMover) and os.path.exists(journal):
                self.assertEqual(result.returncode, journal_exit_status(journal), out)

            # What slotshift says about the slots...
            said_target, said_source = set(), set()
            m = re.search(r"the target owns (\d+) of its (\d+) slots \(([^)]*)\), which are moved", out)
            if m:
                said_target |= parse_slots(m.group(3))
            m = re.search(r"the other (\d+) \(([^)]*)\) stay with the source", out)
            if m:
                said_source |= parse_slots(m.group(2))
            m = re.search(r"undone: \d+ slots not claimed \(([^)]*)\) stay with their owner", out)
            if m:
                said_source |= parse_slots(m.group(1))
            m = re.search(r"owns \d+ of its slots \(([^)]*)\): they stay moved", out)
            if m:
                said_target |= parse_slots(m.group(1))
            moved_all = result.returncode == 0 and getattr(mover, "moves_all_on_success", True)
            if moved_all:
                said_target, said_source = set(slots), set()
            if result.returncode == 4:
                # Refused before it started: it says it touched nothing, so every slot is still its source's.
                said_target, said_source = set(), set(slots)
            # ... is what every node says, once they agree.
            cluster.wait_consistent(60)
            owners = cluster.owners()
            source_side, target_side = sides[source], sides[target]
            wrong = sorted(s for s in said_target if owners[s] not in target_side)
            wrong += sorted(s for s in said_source if owners[s] not in source_side)
            self.assertEqual(wrong, [], "slots whose owner is not what slotshift said:\n" + out)
            self.assertEqual({s for s in slots if owners[s] not in target_side | source_side}, set())
            if not moved_all:
                self.assertEqual(said_target | said_source | {s for s in slots if owners[s] in target_side},
                                 set(slots), "slotshift did not say where every slot of the move is:\n" + out)

            # Every acknowledged write is there, once, wherever its slot is now.
            v = run.verify(moved=moved_all)
            self.assertFalse(v.problems, v.report() if v.problems else "")
            # Redis 7.0 does not send a source's deletes of lost slots to its replicas; slotshift removes them
            # there for the slots that moved, also when the move stopped part way.
            self.assertEqual([n for n in v.replicas() if " keeps " in n], [])
            failures = run.workload.failures()
            self.assertEqual(failures, [], "the writers met failures:\n  " + "\n  ".join(failures[:20]))
            self.assertGreater(run.workload.stats()["acknowledged, moving slots"], 200)

            # A node failed over by the fault may take a gossip round or two to be seen in its new role by
            # every node: that is the servers' convergence, not the move's, so check gets a few seconds of it.
            deadline = time.time() + 10
            while True:
                check = subprocess.run([harness.SLOTSHIFT_BIN, "check", "--cluster", cluster.seed()],
                                       capture_output=True, text=True, timeout=60)
                if check.returncode == 0 or time.time() > deadline:
                    break
                time.sleep(0.5)
            self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
            if after:
                after(run)
            moved = {s for s in slots if owners[s] in target_side}
            log("%s: slotshift exited %d; %d of the %d slots moved; %d acknowledged writes checked; the writers "
                "met %s" % (name, result.returncode, len(moved), len(slots), run.workload.stats()["acknowledged"],
                            ", ".join("%s %d" % kv for kv in sorted(run.workload.stats().items())
                                      if kv[0].startswith("not applied")) or "no refusal"))
            return out, owners
        finally:
            run.stop()


class ClaimFaultTest(FaultScenarios, unittest.TestCase):
    """Faults at a batch's claim."""

    def test_setslot_connections_dropped_at_the_claim(self):
        """The case that once deleted 2,627 keys: half of the target's SETSLOT connections closed by the target
        at a batch's claim, so that some of the batch's slots became the target's and the others did not."""
        out, _ = self.faulted_move("claim:drop-setslot-connections", expect_failure=True, name="claim-drop")
        self.assertIn("failed part way", out)
        m = re.search(r"the target owns (\d+) of its (\d+) slots", out)
        self.assertTrue(m and 0 < int(m.group(1)) < int(m.group(2)),
                        "the fault was meant to leave the claim half done:\n" + out)
        self.assertIn("and the source knows it", out)

    def test_source_stopped_at_the_claim(self):
        """The source stalls for 3 s (SIGSTOP) just as the claim is sent, longer than --pause-timeout: it must
        not run a write for a claimed slot when it wakes, before it reads the claim."""
        marker = tempfile.mktemp(prefix="slotshift-fault-")
        self.faulted_move("claim:run", lambda t: stop_for(t.run.cluster, t.source, 3, marker), name="stop-claim")
        self.assertTrue(os.path.exists(marker), "the fault never ran")


class FailoverFaultTest(FaultScenarios, unittest.TestCase):
    """The source fails over to its replica in the middle of a move. Its writes then go to the new master, which
    slotshift does not copy from: no batch may be claimed on a fence taken from the old one."""

    def failover(self, step):
        self.promoting_replica()
        marker = tempfile.mktemp(prefix="slotshift-fault-")
        out, owners = self.faulted_move(step + ":run",
                                        lambda t: fail_over(t.run.cluster, t.source, t.source_replica, marker),
                                        expect_failure=True, name="failover-" + step)
        self.assertTrue(os.path.exists(marker), "the fault never ran")
        self.assertIn("is no longer the master slotshift copies from", out)

    def test_source_fails_over_during_the_copy(self):
        self.failover("copied")

    def test_source_fails_over_at_the_fence(self):
        self.failover("fence")


class TargetFaultTest(FaultScenarios, unittest.TestCase):
    """Faults of the target: after a claim its copy of a batch is the only one, so its replicas must have it."""

    def target_replica(self):
        return next(n for n in self.run.cluster.nodes
                    if self.run.cluster.view(n)[0].master_id == self.run.ids[self.target])

    def test_target_replica_stopped_across_the_claims(self):
        """The target's replica stalls for 4 s from the end of the snapshot on: no batch may be claimed that it
        has not got, so the move waits for it, or stops with the rest undone."""
        marker = tempfile.mktemp(prefix="slotshift-fault-")
        self.faulted_move("copied:run", lambda t: stop_for(t.run.cluster, t.target_replica(), 4, marker),
                          name="stop-target-replica")
        self.assertTrue(os.path.exists(marker), "the fault never ran")

    def test_target_fails_over_right_after_a_claim(self):
        """The target's replica takes over right after the first batch's claim: the claimed keys are on it, and
        the move stops with the rest undone on the node that now serves the target's slots."""
        self.promoting_replica()
        marker = tempfile.mktemp(prefix="slotshift-fault-")
        out, owners = self.faulted_move(
            "claimed:run", lambda t: fail_over(t.run.cluster, t.target, t.target_replica(), marker),
            expect_failure=True, name="failover-target")
        self.assertTrue(os.path.exists(marker), "the fault never ran")


class FenceFaultTest(FaultScenarios, unittest.TestCase):
    """Faults once a batch's fence is up, before its claim."""

    def test_source_stopped_at_the_fence(self):
        """The source stalls for 3 s once paused, before the target has caught up: the batch is given up and
        taken again, or the move stops with the batch undone."""
        marker = tempfile.mktemp(prefix="slotshift-fault-")
        self.faulted_move("fence:run", lambda t: stop_for(t.run.cluster, t.source, 3, marker), name="stop-fence")
        self.assertTrue(os.path.exists(marker), "the fault never ran")


class KilledMover(FaultedMover):
    """slotshift move killed (SIGKILL) right after the journal record `step`, then `slotshift <recovery>` with its
    journal: the checks then judge what the recovery says and leaves."""

    def __init__(self, step, recovery, recovery_killed_at=None):
        """recovery_killed_at: the recovery is itself killed right after this journal record, then run again."""
        super().__init__(step + ":kill")
        self.step, self.recovery, self.recovery_killed_at = step, recovery, recovery_killed_at
        self.moves_all_on_success = recovery == "resume"

    def __call__(self, cluster, slots, target):
        killed = super().__call__(cluster, slots, target)
        if killed.returncode != -9:
            raise AssertionError("slotshift was meant to be killed at %s; it exited %d:\n%s" % (
                self.step, killed.returncode, killed.stdout + killed.stderr))
        journal = os.path.join(cluster.dir, "move.journal")
        cmd = [harness.SLOTSHIFT_BIN, self.recovery, "--cluster", cluster.seed(), "--journal", journal]
        if self.recovery_killed_at:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, SLOTSHIFT_FAULT=self.recovery_killed_at + ":kill"))
            for line in (r.stdout + r.stderr).splitlines():
                log("    slotshift %s (killed at %s): %s" % (self.recovery, self.recovery_killed_at, line))
            if r.returncode != -9:
                raise AssertionError("slotshift %s was meant to be killed at %s; it exited %d" % (
                    self.recovery, self.recovery_killed_at, r.returncode))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        for line in (r.stdout + r.stderr).splitlines():
            log("    slotshift %s: %s" % (self.recovery, line))
        self.result = r
        return r


class StalledMover(FaultedMover):
    """slotshift move with a short lease, stopped (SIGSTOP) right after the journal record `step` for longer than
    its lease, as a paused VM or a process starved of CPU is; then `slotshift resume` with its journal takes the
    lease over, and the stopped move is let go (SIGCONT) once the resume's own move has copied the snapshot (a
    stream write the stopped copier applied after that would be applied twice). The stopped move wakes up part
    way through its own steps: it must change nothing more (no stream write applied again, no undo of the
    resume's copy) and exit 5. The checks judge what the resume says and leaves; `left_open` is every
    connection of the stopped move still open on a node once the resume's move copies (none may be)."""

    def __init__(self, step):
        super().__init__(step + ":run", run_command="kill -STOP $PPID")
        self.step = step
        self.moves_all_on_success = True
        self.stalled = None
        self.left_open = None

    def __call__(self, cluster, slots, target):
        journal = os.path.join(cluster.dir, "move.journal")
        cmd = [harness.SLOTSHIFT_BIN, "move", "--cluster", cluster.seed(), "--slots", harness.format_slots(slots),
               "--to", cluster.node_id(target), "--journal", journal, "--lease-ttl", "4s"]
        env = dict(os.environ, SLOTSHIFT_FAULT=self.fault, SLOTSHIFT_FAULT_RUN=self.run_command)
        stalled = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.time() + 120
            while process_state(stalled.pid) != "T":
                if stalled.poll() is not None or time.time() > deadline:
                    raise AssertionError("slotshift was meant to stop itself at %s; it did not:\n%s" % (
                        self.step, "".join(stalled.communicate(timeout=60))))
                time.sleep(0.02)
            time.sleep(5.0)  # past its 4 s lease
            resume = subprocess.Popen([harness.SLOTSHIFT_BIN, "resume", "--cluster", cluster.seed(), "--journal",
                                       journal], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.time() + 120
            while not resumed_move_copied(journal) and resume.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            with open(journal) as f:
                stalled_id = json.loads(f.readline())["move"]
            self.left_open = [(node, line) for node in cluster.nodes
                              for line in cluster.cli(node, "client", "list").splitlines()
                              if " name=slotshift-move:%s " % stalled_id in line + " "
                              or " name=slotshift-move:%s:" % stalled_id in line]
            os.kill(stalled.pid, signal.SIGCONT)
            r_out, r_err = resume.communicate(timeout=300)
            s_out, s_err = stalled.communicate(timeout=300)
        finally:
            if stalled.poll() is None:
                stalled.kill()
        for line in (s_out + s_err).splitlines():
            if not line.startswith("  batch"):
                log("    slotshift move (stalled): " + line)
        for line in (r_out + r_err).splitlines():
            if not line.startswith("  batch"):
                log("    slotshift resume: " + line)
        self.stalled = subprocess.CompletedProcess(cmd, stalled.returncode, s_out, s_err)
        self.result = subprocess.CompletedProcess(["slotshift", "resume"], resume.returncode, r_out, r_err)
        return self.result


def process_state(pid):
    """The one-letter state of a process (T: stopped), from /proc."""
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def resumed_move_copied(journal):
    """Whether the move a resume started has copied the snapshot (a copied record after the resume's)."""
    with open(journal) as f:
        steps = [json.loads(line).get("step") for line in f if line.endswith("\n")]
    return "resume-started" in steps and "copied" in steps[steps.index("resume-started"):]


class KillTest(FaultScenarios, unittest.TestCase):
    """slotshift killed at every step of its journal, then resumed or aborted: the move ends as the recovery
    says, every acknowledged write is where its slot is, and nothing is left open, paused or refused."""

    def killed(self, step, recovery, recovery_killed_at=None):
        def nothing_left_fenced(run):
            # No master is left refusing writes, or paused: a write to each answers at once.
            for node in run.masters:
                self.assertEqual(run.cluster.cli(node, "config", "get", "min-replicas-to-write").split()[1], "0")
                owned = run.cluster.slots_of(node)
                if not owned:
                    continue
                key = next("probe%d" % i for i in range(1000000) if move_test.key_slot(b"probe%d" % i) == owned[0])
                t = time.time()
                self.assertEqual(run.cluster.cli(node, "set", key, "x").strip(), "OK")
                self.assertLess(time.time() - t, 1.0, "a write to %s:%d waited" % node)
                run.cluster.cli(node, "del", key)
        out, owners = self.faulted_move("none", name="kill-%s-%s" % (step, recovery),
                                        mover=KilledMover(step, recovery, recovery_killed_at), expect_failure=False,
                                        after=nothing_left_fenced)
        if recovery == "abort":
            self.assertIn("aborted move", out)


# The recovery itself killed, then run again: abort right after it undid what was not claimed, resume once it
# has started (before it undoes anything).
KillTest.test_killed_at_claimed_then_abort_killed_then_abort = \
    lambda self: self.killed("claimed", "abort", recovery_killed_at="rolled-back")
KillTest.test_killed_at_fence_then_resume_killed_then_resume = \
    lambda self: self.killed("fence", "resume", recovery_killed_at="resume-started")

for _step in ("plan", "importing", "copy", "copied", "fence", "claim", "claimed"):
    for _recovery in ("resume", "abort"):
        setattr(KillTest, "test_killed_at_%s_then_%s" % (_step, _recovery),
                lambda self, s=_step, r=_recovery: self.killed(s, r))


class RefuseKillTest(FaultScenarios, unittest.TestCase):
    """Servers that crash when they learn a claim while paused (Redis 7.2 to 8.x, Valkey 8.0) are fenced for the
    claim by refusing writes (min-replicas-to-write out of reach): slotshift killed right after it recorded the
    values to put back, and once they are refusing, then resumed or aborted. No master may be left refusing
    writes. ctest runs it on
    redis-8.0 only: other servers never take this step, so a kill there would never fire."""

    def setUp(self):
        if harness.SERVER not in ("redis-8.0", "valkey-8.0"):
            self.fail("%s never refuses writes at a claim; run RefuseKillTest with SLOTSHIFT_SERVER=redis-8.0"
                      % harness.SERVER)
        super().setUp()

    killed = KillTest.killed

    def test_killed_at_refuse_writes_then_resume(self):
        self.killed("refuse-writes", "resume")

    def test_killed_at_refuse_writes_then_abort(self):
        self.killed("refuse-writes", "abort")

    # Killed at the claim's record: the source's pause has given way to refused writes, which nothing but the
    # recovery lifts.
    def test_killed_while_writes_are_refused_then_resume(self):
        self.killed("claim", "resume")

    def test_killed_while_writes_are_refused_then_abort(self):
        self.killed("claim", "abort")


class LeaseTest(FaultScenarios, unittest.TestCase):
    """One move at a time on any node: the move lease (orchestrator/move_lease.h)."""

    def test_two_moves_started_at_the_same_instant(self):
        """Two slotshift moves of the same slots to the same target, started together under the writers: at most
        one goes on, and the other changes nothing and says why (both may refuse, each seeing the other's
        lease)."""
        def both(cluster, slots, target):
            cmd = [harness.SLOTSHIFT_BIN, "move", "--cluster", cluster.seed(), "--slots",
                   harness.format_slots(slots), "--to", cluster.node_id(target)]
            procs = [subprocess.Popen(cmd + ["--journal", os.path.join(cluster.dir, "move-%d.journal" % i)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
            outs = [p.communicate(timeout=300)[0] for p in procs]
            codes = [p.returncode for p in procs]
            for i, out in enumerate(outs):
                for line in out.splitlines():
                    log("    slotshift %d: %s" % (i + 1, line))
            self.assertNotEqual(codes, [0, 0], "both moves went on")
            for code, out in zip(codes, outs):
                if code != 0:
                    self.assertTrue("another slotshift move holds" in out or "not clean" in out,
                                    "a move that did not go on must say it was refused before it started:\n" + out)
                    self.assertEqual(code, 4, "refused before it started, nothing touched: exit status 4\n" + out)
            # Started at the same instant, each may see the other's lease and both refuse (4 each): neither went
            # on, and the checks below hold them to their word that every slot is where it was.
            return subprocess.CompletedProcess(cmd, 0 if 0 in codes else 4, "\n".join(outs), "")
        both.may_refuse = True
        self.faulted_move("none", name="two-moves", mover=both)

    def test_a_move_stalled_past_its_lease_changes_nothing_once_taken_over(self):
        """A move stopped for longer than its lease, while its copy follows the source's writes, is taken over by
        slotshift resume; woken up while the resume's move copies, it sends nothing more and exits 5, saying
        why. Every acknowledged write is there once (an INCR the stalled copier applied again would show)."""
        mover = StalledMover("copied")
        self.faulted_move("none", name="stalled-past-lease", mover=mover, expect_failure=False)
        out = mover.stalled.stdout + mover.stalled.stderr
        self.assertEqual(mover.stalled.returncode, 5, out)
        self.assertIn("this move no longer holds its lease", out)
        self.assertIn("stopped where it was and undid nothing", out)
        self.assertEqual(mover.left_open, [], "connections of the stalled move the takeover left open")

    def test_a_live_lease_refuses_and_an_expired_one_is_taken_over(self):
        cluster = harness.Cluster(3, 0)
        try:
            source, target, _ = cluster.masters_by_slot()
            slots = cluster.slots_of(source)[:10]
            holder = redis.Redis(host=target[0], port=target[1], single_connection_client=True)
            until = int(time.time() * 1000) + 60000
            holder.execute_command("CLIENT", "SETNAME", "slotshift-lease:move-1-2:%d:elsewhere" % until)
            holder_id = holder.client_id()
            mover = FaultedMover("none")
            r = mover(cluster, slots, target)
            self.assertEqual(r.returncode, 4, r.stdout + r.stderr)
            self.assertIn("another slotshift move holds %s:%d: move-1-2 from elsewhere" % target, r.stderr)
            self.assertEqual(cluster.cli(target, "cluster", "nodes").count("<-"), 0, "the refused move opened slots")
            status = subprocess.run([harness.SLOTSHIFT_BIN, "status", "--cluster", cluster.seed()],
                                    capture_output=True, text=True, timeout=60)
            self.assertIn("move in progress: move-1-2 from elsewhere on %s:%d (lease valid" % target, status.stdout)
            # Expired: taken over (its connection is closed) and the move goes on.
            holder.execute_command("CLIENT", "SETNAME", "slotshift-lease:move-1-2:%d:elsewhere" % (until - 120000))
            r = mover(cluster, slots, target)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            listed = cluster.cli(target, "client", "list", "id", str(holder_id))
            self.assertNotIn("id=%d " % holder_id, listed, "the expired lease's connection was not closed")
            cluster.wait_owner(slots, cluster.node_id(target))
        finally:
            cluster.stop()


class SourceReplicationTest(unittest.TestCase):
    """slotshift's replica link on the source is no replica a client can count on."""

    def test_wait_does_not_count_slotshift(self):
        """A client's WAIT on the source, in a cluster without replicas, while a move follows the source's
        stream: slotshift drops the writes of slots that do not move, so it must not be counted as a replica that
        has them (it once acknowledged every offset). (copier_it checks that a write it applied does count.)"""
        cluster = harness.Cluster(3, 0)
        try:
            source, target, _ = cluster.masters_by_slot()
            slots = cluster.slots_of(source)[:100]
            other = next(s for s in cluster.slots_of(source) if s not in slots)
            key = next("k%d" % i for i in range(100000) if move_test.key_slot(b"k%d" % i) == other)
            out = tempfile.mktemp(prefix="slotshift-wait-")
            # At the step "copied" the snapshot is in and the link follows the stream (and ACKs it).
            # (WAIT counts for the writes of its own connection: one redis-cli for both.)
            hook = ("sleep 1.5; printf 'set {k} v\\nwait 1 1500\\nset {k} w\\nwait 1 1500\\n' | "
                    "redis-cli -p {p} > {o}").format(p=source[1], k=key, o=out)
            mover = FaultedMover("copied:run", hook)
            result = mover(cluster, slots, target)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            with open(out) as f:
                counted = f.read().split()
            self.assertEqual(counted, ["OK", "0", "OK", "0"],
                             "WAIT 1 on the source counted slotshift's link as a replica")
        finally:
            cluster.stop()


if __name__ == "__main__":
    harness.main()
