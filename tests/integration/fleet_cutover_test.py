#!/usr/bin/python3
"""A move that drives a fleet of proxies, one of which stalls (SIGSTOP, then SIGCONT 3 s later) in the middle
of the cutovers, under --fence source-pause: the move goes on without it and says so, no source pause waits for
it, it is asked again once awake and holds the batches from then on, the clients of the other proxies see no
error and no redirect, and every acknowledged write is in place afterwards (cutover_test's scenario and checks).

  FleetStallTest   two proxies with writers and a dozen without, one of those stopped for 3 s mid-cutover;
                   and a fleet of six, one stopped at the first batch's hold and woken after it;
                   and a proxy in front of another cluster, named before any batch as one that cannot vouch for
                   the target
  FarFleetTest     two proxies whose admin endpoints are 30 ms away (delay_relay.py): --hold-batches auto
                   spans batches under one hold there, and keeps one per batch under --fence proxy

SLOTSHIFT_BINARY_DIR picks the build whose slotshift and slotshift-proxy are tested (default: build/).
"""

import faulthandler
import os
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cutover_test as ct  # noqa: E402
import harness  # noqa: E402


class FleetStallTest(ct.CutoverTest):
    IDLE_PROXIES = 12
    # Longer than the handoff's deadline (--timeout-ms, 2 s), so that a stall met at a handoff is given up there
    # too; a pause that waited for it would last over half of it, where a loaded test machine stretches a
    # pause to a few hundred ms at most.
    STALL_S = 3.0

    def test_a_stalled_proxy_is_left_out_costs_no_pause_and_is_asked_again(self):
        run = ct.Scenario(self, ct.range_of(1000))
        idle = []
        victim = None
        try:
            run.start(proxies=2)
            for _ in range(self.IDLE_PROXIES):
                idle.append(harness.Proxy(run.cluster, "--request-timeout-ms", str(ct.PROXY_REQUEST_TIMEOUT_MS),
                                          threads=1, admin=True))
            victim = idle[len(idle) // 2]
            fleet = [run.admin(0), run.admin(1)] + ["127.0.0.1:%d" % p.admin_port for p in idle]
            time.sleep(0.5)
            move = run.move("source-pause", proxies=fleet)
            # Stopped once a cutover has begun (the first proxy holds), so that batches follow the stall.
            stopped_at = None
            deadline = time.time() + 60
            while stopped_at is None and time.time() < deadline and move.running():
                try:
                    if ct.holds_of(run.proxies[0], timeout=2):
                        victim.proc.send_signal(signal.SIGSTOP)
                        stopped_at = time.time()
                except (OSError, AssertionError):
                    pass
            self.assertIsNotNone(stopped_at, "the move ended before a cutover was seen")
            time.sleep(max(0.0, stopped_at + self.STALL_S - time.time()))
            victim.proc.send_signal(signal.SIGCONT)
            resumed_at = time.time()
            while move.running() and time.time() < resumed_at + 300:
                time.sleep(0.05)
            ended_at = time.time()
            rc, report, err = move.result()
            time.sleep(0.5)
            run.stop_writers()
            self.assertEqual(rc, 0, "slotshift move failed with a stalled proxy: %s" % (report or err))
            self.assertTrue(report["ok"])
            victim_address = "127.0.0.1:%d" % victim.admin_port
            # Never waited for past the pause budget: no pause lasted anywhere near the stall, whether it met the
            # stalled proxy at a hold (it is then left out) or at a handoff (the source is unpaused first).
            pauses = [b["pause_ms"] for b in report["batches"]]
            self.assertLess(max(pauses), self.STALL_S * 1000 / 2, "a pause waited for the stalled proxy: %s" % pauses)
            held = [b["proxies_held"] for b in report["batches"]]
            self.assertGreater(len(held), 2, "too few batches to follow the stall")
            self.assertGreaterEqual(min(held), len(fleet) - 1, "batches held by %s proxies" % held)
            if min(held) < len(fleet):
                self.assertTrue(any(victim_address in w for w in report["warnings"]),
                                "no warning names the stalled proxy: %s" % report["warnings"])
            # Left out while it stalled, and asked again (with a release) once its time out was over: 1 s after
            # the miss, then 2 s, then 4 s. Asked at most 3 s + 4 s after it woke, it answers, and from then
            # on every batch is held by the whole fleet.
            asked = {p for b in report["batches"] for p in b["proxies_back"] + b["proxies_still_out"]}
            self.assertLessEqual(asked, {victim_address}, "proxies asked again that never stalled")
            back = [i for i, b in enumerate(report["batches"]) if victim_address in b["proxies_back"]]
            if min(held) < len(fleet) and ended_at > resumed_at + 8:
                self.assertTrue(back, "the move went on %.1f s after the stalled proxy woke and never asked it "
                                "again: %s" % (ended_at - resumed_at, held))
            if back:
                self.assertEqual(held[back[0]:], [len(fleet)] * (len(held) - back[0]),
                                 "batches after the stalled proxy was back: %s" % held)
            others = [w for w in report["warnings"] if "proxy" in w and victim_address not in w]
            self.assertEqual(others, [], "warnings about proxies that did not stall")
            self.assertNoClientErrors(run)
            self.assertNoRedirects(run, [0, 1])
            # Once awake, the stalled proxy is left with no hold (released, or ended by its ttl).
            deadline = time.time() + 5
            while ct.holds_of(victim) and time.time() < deadline:
                time.sleep(0.1)
            self.assertEqual(ct.holds_of(victim), [], "the stalled proxy still holds")
            v = run.verify()
            run.summary("; pauses up to %.1f ms, batches held by %s proxies; the stalled proxy back at batch %s of "
                        "%d, the move ending %.1f s after it woke" % (max(pauses), sorted(set(held)),
                                                                      back[0] + 1 if back else None, len(held),
                                                                      ended_at - resumed_at))
            self.assertClean(v)
        finally:
            if victim is not None:
                victim.proc.send_signal(signal.SIGCONT)
            for p in idle:
                p.stop()
            run.stop()

    def test_a_proxy_stalled_at_the_first_hold_is_back_a_second_later(self):
        """A proxy stopped just before the first batch (by slotshift itself, SLOTSHIFT_FAULT copied:run) and
        woken once that batch's hold has gone by: it misses the hold and is left out; about 1 s after the miss
        it is asked again, answers, holds that batch, and is the only proxy ever asked again."""
        # 2,000 slots: batches go on for some seconds after the proxy is due to be asked again.
        run = ct.Scenario(self, ct.range_of(2000))
        idle = []
        victim = None
        try:
            run.start(proxies=2)
            for _ in range(4):
                idle.append(harness.Proxy(run.cluster, "--request-timeout-ms", str(ct.PROXY_REQUEST_TIMEOUT_MS),
                                          threads=1, admin=True))
            victim = idle[1]
            fleet = [run.admin(0), run.admin(1)] + ["127.0.0.1:%d" % p.admin_port for p in idle]
            stopped = os.path.join(run.cluster.dir, "victim-stopped")
            stop = "[ -e {m} ] || {{ touch {m}; kill -STOP {pid}; }}".format(m=stopped, pid=victim.proc.pid)
            time.sleep(0.5)
            move = run.move("source-pause", proxies=fleet,
                            env=dict(os.environ, SLOTSHIFT_FAULT="copied:run", SLOTSHIFT_FAULT_RUN=stop))
            # Woken once the first hold seen on proxy 0 has gone from there: the move has ended that hold call,
            # so the stopped proxy has missed it. (A fixed wait after the hold was seen is not enough: a mover
            # that did not run for that long would find the woken proxy's answer waiting, and count it.)
            resumed_at = None
            first = None
            deadline = time.time() + 120
            while resumed_at is None and move.running() and time.time() < deadline:
                try:
                    if not os.path.exists(stopped):
                        time.sleep(0.005)
                        continue
                    holds = {h["slots"] for h in ct.holds_of(run.proxies[0], timeout=2)}
                    if first is None:
                        first = next(iter(holds), None)
                    elif first not in holds:
                        victim.proc.send_signal(signal.SIGCONT)
                        resumed_at = time.time()
                except (OSError, AssertionError):
                    pass
            victim.proc.send_signal(signal.SIGCONT)
            self.assertIsNotNone(resumed_at, "the move ended before a hold was seen")
            rc, report, err = move.result()
            run.stop_writers()
            self.assertEqual(rc, 0, "slotshift move failed with a stalled proxy: %s" % (report or err))
            victim_address = "127.0.0.1:%d" % victim.admin_port
            batches = report["batches"]
            held = [b["proxies_held"] for b in batches]
            self.assertEqual(held[0], len(fleet) - 1, "the first batch's hold did not miss the stopped proxy")
            self.assertTrue(any(victim_address in w for w in report["warnings"]),
                            "no warning names the stalled proxy: %s" % report["warnings"])
            asked = [i for i, b in enumerate(batches) if b["proxies_back"] or b["proxies_still_out"]]
            again = {p for i in asked for p in batches[i]["proxies_back"] + batches[i]["proxies_still_out"]}
            self.assertLessEqual(again, {victim_address}, "proxies asked again that never stalled")
            # Due 1 s after the end of the first batch's hold call (and of a second try of it for a proxy slow to
            # drain, within 300 ms); a batch that starts after that (in the move's own clock) asks it again.
            # move.started is taken before slotshift starts, so a batch's start read from it is never later than
            # the real one.
            due_ms = batches[0]["started_ms"] + batches[0]["hold_call_ms"] + 1000
            due = [i for i, b in enumerate(batches) if b["started_ms"] > due_ms + 300]
            self.assertTrue(not due or (asked and asked[0] <= due[0]),
                            "not asked again by batch %s, which started %.0f ms after the first: %s" % (
                                due[0] + 1 if due else None,
                                batches[due[0]]["started_ms"] - batches[0]["started_ms"] if due else 0, asked))
            awake = [i for i in due if move.started + batches[i]["started_ms"] / 1000 > resumed_at + 0.3]
            back = [i for i, b in enumerate(batches) if victim_address in b["proxies_back"]]
            if awake and batches[-1]["started_ms"] - batches[awake[0]]["started_ms"] > 2500:
                # Awake when asked; one that answered too slowly then is asked again 2 s later.
                self.assertTrue(back, "asked while awake and never back: %s" % asked)
            if back:
                self.assertEqual(held[back[0]], len(fleet), "the batch it came back for: %s" % held)
                self.assertTrue(any(victim_address in n and "answered again" in n for n in report["notes"]),
                                "no note says it came back: %s" % report["notes"])
            self.assertNoClientErrors(run)
            self.assertNoRedirects(run, [0, 1])
            v = run.verify()
            run.summary("; the stalled proxy asked again at batch %s, back at batch %s of %d" % (
                asked[0] + 1 if asked else None, back[0] + 1 if back else None, len(held)))
            self.assertClean(v)
        finally:
            if victim is not None:
                victim.proc.send_signal(signal.SIGCONT)
            for p in idle:
                p.stop()
            run.stop()

    def test_a_proxy_that_cannot_vouch_for_the_target_is_named_before_any_batch(self):
        """A proxy in front of another cluster is told of the target while the copy runs (the check that opens
        its handoffs' connection): it refuses it, and the move names it and goes on, the other proxies' clients
        meeting no error and no redirect."""
        run = ct.Scenario(self, ct.range_of(500))
        other = stranger = None
        try:
            run.start(proxies=2)
            other = harness.Cluster(3, 0)
            stranger = harness.Proxy(other, "--request-timeout-ms", str(ct.PROXY_REQUEST_TIMEOUT_MS), threads=1,
                                     admin=True)
            stranger_address = "127.0.0.1:%d" % stranger.admin_port
            time.sleep(0.5)
            move = run.move("source-pause", proxies=[run.admin(0), run.admin(1), stranger_address])
            rc, report, err = move.result()
            run.stop_writers()
            self.assertEqual(rc, 0, "slotshift move failed: %s" % (report or err))
            target = report["target"]
            named = [w for w in report["warnings"] if "cannot vouch for the target" in w]
            self.assertEqual(len(named), 1, report["warnings"])
            self.assertIn("proxy %s cannot vouch for the target %s" % (stranger_address, target), named[0])
            self.assertIn("is not a node of the cluster", named[0])
            self.assertFalse(any("cannot vouch" in w and stranger_address not in w for w in report["warnings"]))
            self.assertNoClientErrors(run)
            self.assertNoRedirects(run, [0, 1])
            v = run.verify()
            run.summary("; warned: %s" % named[0])
            self.assertClean(v)
        finally:
            if stranger is not None:
                stranger.stop()
            if other is not None:
                other.stop()
            run.stop()

class DelayRelay:
    """delay_relay.py as a child process: an admin endpoint reached across a far network."""

    def __init__(self, upstream, delay_ms):
        self.proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                   "delay_relay.py"), upstream, str(delay_ms)],
                                     stdout=subprocess.PIPE)
        self.port = int(self.proc.stdout.readline())

    def address(self):
        return "127.0.0.1:%d" % self.port

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


class FarFleetTest(ct.CutoverTest):
    # Each way: a call to the fleet then takes over 60 ms, more than a batch of this move (--max-pause 5ms)
    # and more than the 50 ms a first batch counts at; well within a hold's deadline (120 ms under
    # --fence source-pause, 200 ms under --fence proxy).
    DELAY_MS = 30

    def test_auto_holds_span_batches_for_a_far_fleet_but_not_under_fence_proxy(self):
        """Two proxies with writers, their admin endpoints 30 ms away. The slots moved under --fence
        source-pause, then back under --fence proxy, with --hold-batches auto: the first move's first hold
        spans batches (its span is decided from the warm-up, which took at least one round trip of 60 ms), and
        batches are cut over under it; the move back holds each batch on its own, the holds being its fence.
        Both times every batch is held by both proxies and handed off, no proxy is left out, the clients see
        no error and no redirect, each proxy placed the holds the reports say and none ran out."""
        run = ct.Scenario(self, ct.range_of(500))
        try:
            run.start(proxies=2)
            relays = [DelayRelay(run.admin(i), self.DELAY_MS) for i in (0, 1)]
            run.endpoints.extend(relays)
            fleet = [r.address() for r in relays]
            time.sleep(0.5)
            holds = [0, 0]
            shown = []
            for fence, to in (("source-pause", run.target), ("proxy", run.source)):
                move = ct.Move(run.cluster, run.slots, to, fleet, fence,
                               journal=os.path.join(run.cluster.dir, "far.journal"))
                rc, report, err = move.result()
                self.assertEqual(rc, 0, "slotshift move --fence %s failed: %s" % (fence, report or err))
                self.assertTrue(report["ok"])
                self.assertEqual([w for w in report["warnings"] if "proxy" in w], [],
                                 "the move warned about the far proxies")
                batches = report["batches"]
                self.assertGreater(len(batches), 3, "too few batches to group")
                self.assertEqual({b["proxies_held"] for b in batches}, {2}, "every batch held by both proxies")
                self.assertTrue(all(b["handed_off"] for b in batches), "a batch was never handed off")
                spans = [b["hold_batches"] for b in batches]
                under_group = [b["attempts_under_group_hold"] for b in batches]
                if fence == "source-pause":
                    self.assertGreaterEqual(spans[0], 2, "the first hold, after a warm-up of 60 ms or more, "
                                            "spans one batch: %s" % spans)
                    self.assertGreater(sum(under_group), 0, "no batch was cut over under a group's hold: %s"
                                       % under_group)
                else:
                    self.assertEqual(set(spans), {1}, "--fence proxy: a hold spanned batches: %s" % spans)
                    self.assertEqual(sum(under_group), 0, under_group)
                for i in (0, 1):
                    holds[i] += ct.holds_expected(batches, fleet[i])
                shown.append("%s: %d batches, cut over under holds placed for %s" % (fence, len(batches), ", ".join(
                    "%d batches: %d" % (n, spans.count(n)) for n in sorted(set(spans), reverse=True))))
            time.sleep(0.5)
            run.stop_writers()
            self.assertNoClientErrors(run)
            self.assertNoRedirects(run, [0, 1])
            for i in (0, 1):
                self.assertHoldsAccounted(run, i, holds[i])
            v = run.verify(moved=False)
            run.summary("; " + "; ".join(shown))
            self.assertClean(v)
        finally:
            run.stop()


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1)
    harness.main()
