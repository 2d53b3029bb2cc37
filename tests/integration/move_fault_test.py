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

import os
import re
import subprocess
import sys
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
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
    """slotshift move with SLOTSHIFT_FAULT set: it must fail; its output is kept for the checks."""

    name = "slotshift move (faulted)"

    def __init__(self, fault):
        self.fault = fault
        self.result = None

    def __call__(self, cluster, slots, target):
        cmd = [harness.SLOTSHIFT_BIN, "move", "--cluster", cluster.seed(), "--slots", harness.format_slots(slots),
               "--to", cluster.node_id(target), "--journal", os.path.join(cluster.dir, "move.journal")]
        env = dict(os.environ, SLOTSHIFT_FAULT=self.fault)
        self.result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        for line in (self.result.stdout + self.result.stderr).splitlines():
            if not line.startswith("  batch"):
                log("    slotshift: " + line)
        return self.result


class ClaimFaultTest(unittest.TestCase):
    """The case that once deleted 2,627 keys: half of the target's SETSLOT connections closed by the target at a
    batch's claim, so that some of the batch's slots became the target's and the others did not."""

    def test_setslot_connections_dropped_at_the_claim(self):
        mover = FaultedMover("claim:drop-setslot-connections")
        run = Run(self, mover, lambda cluster, a, b, c: [(cluster.slots_of(a)[:2000], b)],
                  seed=zlib.crc32(b"claim-drop"))
        try:
            run.start()
            cluster = run.cluster
            source, target, _ = run.masters
            slots, _ = run.steps[0]
            run.workload.start()
            time.sleep(1.0)
            result = mover(cluster, slots, target)
            time.sleep(0.5)
            run.workload.stop()
            out = result.stdout + result.stderr
            self.assertEqual(result.returncode, 1, out)
            self.assertIn("failed part way", out)

            # What slotshift says the target owns and the source keeps...
            m = re.search(r"the target owns (\d+) of its (\d+) slots \(([^)]*)\), which are moved and the source "
                          r"knows it", out)
            said_owned = parse_slots(m.group(3)) if m else set()
            if not m:
                self.assertIn("the target owns none of its slots", out)
            m = re.search(r"the other (\d+) \(([^)]*)\) stay with the source", out)
            said_kept = parse_slots(m.group(2)) if m else set()
            batch = said_owned | said_kept
            self.assertTrue(batch, "slotshift named no slot of the failed batch:\n" + out)
            self.assertTrue(said_owned and said_kept,
                            "the fault was meant to leave the claim half done; slotshift says the target owns %d "
                            "and the source keeps %d:\n%s" % (len(said_owned), len(said_kept), out))
            # ... is what every node says, once they agree.
            cluster.wait_consistent(60)
            owners = cluster.owners()
            target_id, source_id = run.ids[target], run.ids[source]
            wrong = sorted(s for s in said_owned if owners[s] != target_id)
            wrong += sorted(s for s in said_kept if owners[s] != source_id)
            self.assertEqual(wrong, [], "slots whose owner is not what slotshift said")
            # Earlier batches, claimed before the fault, and later ones never started: target and source.
            moved = {s for s in slots if owners[s] == target_id}
            self.assertTrue(moved.issuperset(said_owned))
            self.assertEqual({s for s in slots if owners[s] not in (target_id, source_id)}, set())

            # Every acknowledged write is there, once, wherever its slot is now.
            v = run.verify(moved=False)
            self.assertFalse(v.problems, v.report() if v.problems else "")
            # Redis 7.0 does not send a source's deletes of lost slots to its replicas; slotshift removes them
            # there for the slots that moved, also when the move stopped part way.
            self.assertEqual([n for n in v.replicas() if " keeps " in n], [])
            failures = run.workload.failures()
            self.assertEqual(failures, [], "the writers met failures:\n  " + "\n  ".join(failures[:20]))
            self.assertGreater(run.workload.stats()["acknowledged, moving slots"], 200)

            check = subprocess.run([harness.SLOTSHIFT_BIN, "check", "--cluster", cluster.seed()],
                                   capture_output=True, text=True, timeout=60)
            self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
            log("claim fault: slotshift says the target owns %d slots of the batch, the source keeps %d; %d of "
                "the %d slots asked for moved; %d acknowledged writes checked" % (
                    len(said_owned), len(said_kept), len(moved), len(slots), run.workload.stats()["acknowledged"]))
        finally:
            run.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
