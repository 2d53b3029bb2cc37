#!/usr/bin/python3
"""The soak: the same slots moved back and forth between two masters, again and again, through two
slotshift-proxy instances under client load, alternating both fences. It looks for what one move does not show:
memory a proxy or slotshift keeps a little of at every move, holds or connections that pile up, a state that
goes wrong only after many cutovers.

After every move: slotshift exited 0 and said ok, and every batch was held by both proxies (under --fence
source-pause, a proxy that twice could not drain a batch in time is gone on without, and the move must say so; at
most one batch in 50). Each proxy's resident memory (VmRSS) is sampled after every move; after the warm-up (the
first fifth of the moves, at least two; 40 moves under a sanitizer build, whose short form therefore checks leaks
only) it must stay flat: the highest sample of the last third of the moves at most 25% or 8 MB (whichever is
more) above the highest of the warm-up. At the end: no client saw an error (nor a redirect, through a proxy that
held every batch), every acknowledged write is where it belongs, `slotshift check` is clean, and both proxies
exit 0 on SIGTERM. Under the ASan build (LeakSanitizer on, see CMakePresets.json), a leak in slotshift makes its
exit code non-zero, and one in a proxy its exit at SIGTERM.

SLOTSHIFT_SOAK_MOVES sets how many moves (default 20: the short form that ctest runs as soak_it; a user runs
the long one, e.g. SLOTSHIFT_SOAK_MOVES=300). The RSS curve is printed, and written as CSV to
SLOTSHIFT_SOAK_CSV when that is set.
    tests/integration/soak_test.py
"""

import faulthandler
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cutover_test as ct  # noqa: E402

MOVES = int(os.environ.get("SLOTSHIFT_SOAK_MOVES", "20"))
# Under a sanitizer build (set by tests/CMakeLists.txt), ASan's quarantine of freed memory (16 MB, see
# CMakePresets.json) and its allocator's caches fill over the first moves: measured, a proxy went from 49 to 80 MB
# over 40 moves, then stayed between 78 and 83 MB up to move 150. So the warm-up is 40 moves there.
SANITIZED = os.environ.get("SLOTSHIFT_SANITIZED") == "1"
SLOTS = 300


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


class SoakTest(ct.CutoverTest):
    def test_moves_back_and_forth(self):
        run = ct.Scenario(self, ct.range_of(SLOTS))
        try:
            run.start(proxies=2)
            time.sleep(0.5)
            ends = [run.source, run.target]
            admins = [run.admin(i) for i in range(2)]
            curve = []  # per move: (seconds since the first move, rss of proxy 0, rss of proxy 1) in KB
            t0 = time.time()
            batches = 0
            holds = [0, 0]  # per proxy: the holds the reports say it placed (ct.holds_expected)
            unheld = [0, 0]  # per proxy: batches it could not hold (see below)
            for i in range(MOVES):
                fence = "source-pause" if i % 2 == 0 else "proxy"
                to = ends[(i + 1) % 2]
                move = ct.Move(run.cluster, run.slots, to, admins, fence, max_pause="20ms",
                               journal=os.path.join(run.cluster.dir, "soak.journal"))
                rc, report, err = move.result()
                self.assertEqual(rc, 0, "move %d of %d (--fence %s) failed: %s" % (i + 1, MOVES, fence,
                                                                                  report or err))
                self.assertTrue(report["ok"])
                # Every batch held by both proxies. Under --fence source-pause the source's pause is the fence,
                # and a proxy that answered twice that a command of the batch was still at a backend (a slow
                # source) is gone on without: the move must say so, and that proxy's clients then follow MOVED.
                for b in report["batches"]:
                    if b["proxies_held"] == 2:
                        continue
                    self.assertEqual(fence, "source-pause", "move %d: batch %s not held by both proxies" % (
                        i + 1, b["slots"]))
                    self.assertTrue(b["proxies_asked_again"], "move %d: batch %s not held by both proxies, and "
                                    "no proxy was asked again" % (i + 1, b["slots"]))
                    for p in b["proxies_asked_again"]:
                        said = [w for w in report["warnings"] if ("proxy %s could not hold" % p) in w]
                        self.assertTrue(said, "move %d: the move did not say why %s did not hold %s" % (
                            i + 1, p, b["slots"]))
                        unheld[admins.index(p)] += 1
                batches += len(report["batches"])
                for p in (0, 1):
                    holds[p] += ct.holds_expected(report["batches"], admins[p])
                curve.append((time.time() - t0, rss_kb(run.proxies[0].proc.pid), rss_kb(run.proxies[1].proc.pid)))
                if (i + 1) % 10 == 0 or i + 1 == MOVES:
                    ct.log("    after %d moves (%.0f s): proxies' RSS %s MB" % (
                        i + 1, curve[-1][0], ", ".join("%.1f" % (kb / 1024) for kb in curve[-1][1:])))
            run.stop_writers()

            self.assertNoClientErrors(run)
            self.assertLessEqual(sum(unheld), max(2, batches // 50), "too many batches were not held: %s" % unheld)
            # No MOVED or ASK through a proxy that held every batch.
            self.assertNoRedirects(run, [p for p in (0, 1) if unheld[p] == 0])
            for i in (0, 1):
                self.assertHoldsAccounted(run, i, holds[i])

            self.assertRssFlat(run, curve)
            # Where the slots are now: with the target after an odd number of moves, back with the source after
            # an even one.
            v = run.verify(moved=MOVES % 2 == 1)
            rc, report = ct.slotshift_check(run.cluster)
            self.assertEqual(rc, 0, "slotshift check after the soak: %s" % report)
            run.summary("; %d moves in %.0f s, %d batches" % (MOVES, curve[-1][0], batches))
            self.assertClean(v)
        finally:
            run.stop()

    def assertRssFlat(self, run, curve):
        csv = os.environ.get("SLOTSHIFT_SOAK_CSV")
        if csv:
            with open(csv, "w") as f:
                f.write("move,seconds,proxy_%d_rss_kb,proxy_%d_rss_kb\n" % (run.proxies[0].port, run.proxies[1].port))
                for i, (t, a, b) in enumerate(curve):
                    f.write("%d,%.1f,%d,%d\n" % (i + 1, t, a, b))
        warm = 40 if SANITIZED else max(2, len(curve) // 5)
        if len(curve) < warm + 10:
            # Too few moves after the warm-up to tell growth from warm-up: said, and the leak check (the proxies'
            # exit under LeakSanitizer) still applies.
            ct.log("    RSS not judged: %d moves, of which the sanitizer build's warm-up takes %d (run "
                   "SLOTSHIFT_SOAK_MOVES=150 or more)" % (len(curve), warm))
            warm = len(curve)
        tail = curve[-max(1, len(curve) // 3):]
        for p in (0, 1):
            # The curve, one sample in ten (and the last): every sample goes to SLOTSHIFT_SOAK_CSV.
            shown = [(i + 1, c) for i, c in enumerate(curve) if i == 0 or (i + 1) % 10 == 0 or i + 1 == len(curve)]
            ct.log("    proxy :%d RSS after move n: %s" % (run.proxies[p].port, ", ".join(
                "%d: %.1f MB" % (n, c[1 + p] / 1024) for n, c in shown)))
            if warm == len(curve):
                continue
            warmed = max(c[1 + p] for c in curve[:warm])
            late = max(c[1 + p] for c in tail)
            self.assertLessEqual(late, max(warmed * 1.25, warmed + 8192),
                                 "proxy :%d grew from %d KB after the warm-up (%d moves) to %d KB by the end" % (
                                     run.proxies[p].port, warmed, warm, late))


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1)
    ct.harness.main()
