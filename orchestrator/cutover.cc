#include "orchestrator/move_job.h"

#include <algorithm>
#include <csignal>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "common/server_info.h"
#include "common/topology.h"
#include "orchestrator/fault_injection.h"
#include "orchestrator/hold_span.h"
#include "orchestrator/journal.h"

namespace slotshift {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

bool MoveJob::unpause(Source& src) {
  bool ok = true;
  auto* c = control(src.node);
  // The refusal goes first: the writes the pause held run the moment it ends, and must not meet it.
  if (src.refusing && !src.keep_refusing) {
    const std::vector<std::string> restore = {"CONFIG",
                                              "SET",
                                              "min-replicas-to-write",
                                              src.min_replicas_to_write,
                                              "min-replicas-max-lag",
                                              src.min_replicas_max_lag};
    auto r = c ? c->command(restore) : std::nullopt;
    if (!r || r->is_error()) {
      warnings_.push_back("restoring min-replicas-to-write on " + src.address.str() + " failed (" +
                          (r ? r->str : "no connection") + "): it refuses every write until `" +
                          join(restore) + "` is sent to it");
      ok = false;
    } else {
      src.refusing = false;
    }
  }
  if (src.paused) {
    auto r = c ? c->command({"CLIENT", "UNPAUSE"}) : std::nullopt;
    if (!r || r->is_error()) {
      warnings_.push_back("CLIENT UNPAUSE on " + src.address.str() + " failed (" +
                          (r ? r->str : "no connection") + "); its pause ends by itself within " +
                          std::to_string(options_.pause_timeout.count()) + " ms");
      ok = false;
    }
    src.paused = false;
  }
  return ok;
}

// The fence of a source that cannot stay paused while it learns a claim (Redis 7.2 to 8.x, Valkey 8.0): it
// refuses writes with NOREPLICAS (nothing is applied, the client may retry) from just before the claim until
// it has learnt it; then it answers MOVED for the moved slots. Redirection is checked before the replica
// count, so moved slots get MOVED even while it still refuses.
bool MoveJob::refuse_writes(Source& src) {
  auto* c = control(src.node);
  if (!c || !src.can_refuse) {
    connect_error_ = c ? "CONFIG GET min-replicas-* was refused at the start" : connect_error_;
    return false;
  }
  journal(MoveStep::kRefuseWrites, {{"source", src.node.id},
                                    {"restore",
                                     {"CONFIG", "SET", "min-replicas-to-write", src.min_replicas_to_write,
                                      "min-replicas-max-lag", src.min_replicas_max_lag}}});
  // A lag of 0 disables the check; any other keeps it on while no replica can be counted good.
  const std::string lag = src.min_replicas_max_lag == "0" ? "10" : src.min_replicas_max_lag;
  src.refusing = true;  // even if the reply is lost, restoring is harmless
  auto r =
      c->command({"CONFIG", "SET", "min-replicas-to-write", kRefuseAllWrites, "min-replicas-max-lag", lag});
  if (!r || r->is_error()) {
    connect_error_ = r ? r->str : c->error();
    return false;
  }
  return true;
}

std::chrono::milliseconds MoveJob::hold_wait() const {
  // What is in flight normally returns within a millisecond or two; a proxy that needs longer than a few
  // pause budgets to drain is treated as one that does not answer. When the source's pause is the fence,
  // waiting for a proxy only holds the other proxies' clients, so the wait is shorter.
  return options_.fence == "proxy"
             ? std::clamp(options_.max_pause * 4, milliseconds(100), options_.pause_timeout / 2)
             : std::clamp(options_.max_pause, milliseconds(20), options_.pause_timeout / 2);
}

bool MoveJob::cut_over(Source& src, Batch& batch, bool hand_off_later, bool& retry, const PlacedHold& fresh) {
  retry = false;
  // A SIGTERM (a Job's pod deleted) or a lost lease stops the move between batches, where nothing of the next
  // one has begun: the wait for the lag below checks again only while it waits.
  if (interrupted()) return false;
  ++batch.attempts;
  auto& copier = *src.copier;
  auto* c = control(src.node);
  if (!c) return fail("cannot connect to the source " + connect_error_);
  const std::string slots_text = format_slot_ranges(slot_ranges(batch.slots));

  // The hold placed for this batch by the last batch's handoff, or for its group (by an earlier batch's HOLD
  // or handoff), if it covers this one (a retry holds again).
  std::optional<PlacedHold> placed;
  placed.swap(placed_hold_);
  hold_in_force_.reset();
  // Given back: released on every proxy, which then holds again with a HOLD of its own (the report names the
  // proxies that had placed it, so that their holds add up). A group's claimed batches are handed off first:
  // released without their route, their held commands would meet MOVED at the old owner.
  auto give_back = [&] {
    // (A group's hold was placed for the group's first batch, and counted there.)
    if (placed->used == 0)
      for (const auto& call : placed->calls.calls)
        if (call.ok || call.slow_to_drain()) batch.proxies_held_again.push_back(call.proxy);
    end_hold(*placed);
    placed.reset();
  };
  if (placed && !placed->covers(batch.slots)) give_back();
  // Start the fence only once the target is close behind the source, so that the wait inside it is short.
  auto behind = [&] { return copier.lag_bytes() > (256u << 10) || copier.lag_seconds() > 0.05; };
  // Not with the clients held: a placed hold is given back while the target catches up, and placed again.
  if (placed && behind()) give_back();
  const auto settle_deadline = Clock::now() + std::chrono::seconds(30);
  while (behind()) {
    if (copier.failed()) return fail(copier_failure(src));
    if (interrupted()) return false;
    if (Clock::now() > settle_deadline)
      return fail("the target has stayed " + human_bytes(static_cast<double>(copier.lag_bytes())) +
                  " behind the source " + src.address.str() + " for 30 s; it cannot keep up with the writes");
    std::this_thread::sleep_for(milliseconds(1));
  }

  // Everything before the claim can be undone: the batch goes back to how it was and the move either tries
  // it again or stops.
  bool held = false;
  auto abandon = [&](std::string why, bool may_retry) {
    copier.reopen_slots(batch.slots);
    unpause(src);
    // The whole of the hold in force (a group's too: the retry holds anew), its claimed batches handed off
    // first.
    if (held) {
      end_hold(*hold_in_force_);
      hold_in_force_.reset();
    }
    if (copier.failed()) return fail(copier_failure(src));
    if (may_retry) {
      retry = true;
      warnings_.push_back("batch " + slots_text + ": " + why + "; the batch was tried again");
      return false;
    }
    return fail(std::move(why));
  };

  const bool fence_proxy = options_.fence == "proxy";
  const bool pause_through_claim = src.info.survives_paused_claim();
  // The proxies' connections are opened (or found kept) before the fence's clock starts: the hold's deadline
  // is a few pause budgets, and with 200 proxies the first batch's hold spent most of it on the handshakes
  // and accepts of 200 connections at once, so that 120 of them were left out as not answering.
  const auto wait = hold_wait();
  // Proxies left out at an earlier batch are asked again once their time out is over (LeftOutProxies), before
  // the fence's clock starts: one that answers within the hold's own deadline is in this batch's calls.
  batch.started_ms = ms_since(started_);
  if (proxies_) {
    const auto start = proxies_->begin_batch(owner_, wait + milliseconds(100), !fence_proxy);
    for (const auto& call : start.back.calls) {
      (call.ok ? batch.proxies_back : batch.proxies_still_out).push_back(call.proxy);
      if (call.ok && proxy_warned_.insert(call.proxy + " back").second)
        notes_.push_back("proxy " + call.proxy + " answered again before batch " + slots_text +
                         ", and is asked to hold the batches from there");
    }
    // Left out already unless the proxies are the fence (then the hold asks them, and must have them all).
    if (!fence_proxy) note_proxy_failures(start.silent);
  }
  // A placed hold kept its clients waiting from its answer on, through this batch's planning and checks
  // (verify() above all, which waits up to 10 s for every node to agree): past a quarter of --pause-timeout
  // it is given back and placed again, so that a slow moment between batches does not hold clients for it,
  // and the fence still has half of the hold's ttl.
  if (placed && Clock::now() - placed->answered > options_.pause_timeout / 4) give_back();
  // A placed hold's ttl runs from when it was sent: so does the fence's clock.
  const auto t0 = placed ? placed->sent : Clock::now();
  hold_started_ = t0;
  auto t_pause = t0;
  // 1. The proxies hold the batch's slots: their clients' commands for them wait in the proxies from here to
  //    the release, and what was in flight has returned. With --fence proxy that is the whole fence, so every
  //    proxy must hold; otherwise the source's pause fences writes anyway and a proxy that does not answer
  //    only costs its clients a MOVED after the move. The hold placed with the last batch's handoff has the
  //    answers of the proxies that gave one: only the others are asked here (one that did not answer in
  //    time, one too old to take a hold with a handoff, one back from being left out, a new name's).
  // A hold of its own names the group's slots when this batch begins one (`fresh`); a proxy that missed a
  // group's hold is asked to hold this batch alone.
  const std::string& hold_text = placed ? slots_text : fresh.slots;
  if (proxies_) {
    const auto t_call = Clock::now();
    auto calls = proxies_->hold(hold_text, options_.pause_timeout, wait, owner_, nullptr,
                                placed ? &placed->calls : nullptr);
    held = true;
    // A group's later batches were held by the call that placed the group's hold: not counted again.
    const bool shared = placed && placed->used > 0;
    batch.attempts_under_group_hold += shared;
    batch.hold_call_ms = (placed && !shared ? placed->call_ms : 0) + ms_since(t_call);
    if (!placed) fleet_call_ms_ = batch.hold_call_ms;
    // A proxy that answered that a command of these slots was still at a backend when the wait ran out is
    // alive and busy (a slow moment of its backend, or of this machine): the command is about to return, so
    // it is asked once more at once, with a longer wait, rather than given up.
    std::set<std::string> slow;
    for (const auto& call : calls.calls)
      if (call.slow_to_drain()) slow.insert(call.proxy);
    batch.proxies_asked_again.insert(batch.proxies_asked_again.end(), slow.begin(), slow.end());
    if (!slow.empty()) {
      const auto longer = std::max(wait, std::min(wait * 3, options_.pause_timeout / 4));
      for (auto& again : proxies_->hold(hold_text, options_.pause_timeout, longer, owner_, &slow).calls)
        for (auto& call : calls.calls)
          if (call.proxy == again.proxy) call = std::move(again);
    }
    batch.proxies_held = 0;
    for (const auto& call : calls.calls)
      batch.proxies_held += call.ok;
    batch.proxies_held_with_handoff = 0;
    if (placed && !shared)
      for (const auto& call : placed->calls.calls)
        batch.proxies_held_with_handoff += call.ok;
    // The hold this batch is cut over under (what abandon() releases), kept for the batches of its group
    // that follow it.
    if (placed) {
      hold_in_force_ = placed;
    } else {
      // Only the proxies that placed it (or answered that they could not drain in time, as a carried hold's
      // answers are kept): one that did not answer is asked again at the group's next batch.
      hold_in_force_ = fresh;
      for (const auto& call : calls.calls)
        if (call.ok || call.slow_to_drain()) hold_in_force_->calls.calls.push_back(call);
      hold_in_force_->sent = t0;
      hold_in_force_->answered = Clock::now();
      hold_in_force_->call_ms = batch.hold_call_ms;
    }
    batch.hold_batches = hold_in_force_->batches;
    if (!calls.all_ok()) {
      const auto failed = join(calls.failures(), "; ");
      // A proxy that answered is alive: the batch may be tried again. One that did not ends the move.
      if (fence_proxy)
        return abandon("--fence proxy: not every proxy held batch " + slots_text + ": " + failed,
                       std::all_of(calls.calls.begin(), calls.calls.end(),
                                   [](const ProxyCall& call) { return call.ok || call.slow_to_drain(); }));
      // Waiting for a proxy that does not answer would cost every later batch as long: it is left out until
      // its time out is over. One that answered is asked again at the next batch.
      proxies_->hold_answered(calls);
      note_proxy_failures(calls);
    } else {
      proxies_->hold_answered(calls);
    }
  }
  batch_started_ = Clock::now();
  batch_fleet_ms_ = 0;
  // 2. The source's writes pause (unless the proxies are the fence), and its offset at that moment is where
  //    the target must be before the claim.
  if (!fence_proxy) {
    auto pause = c->command({"CLIENT", "PAUSE", std::to_string(options_.pause_timeout.count()), "WRITE"});
    if (!pause || pause->is_error())
      return abandon(
          "CLIENT PAUSE on the source " + src.address.str() + ": " + (pause ? pause->str : c->error()),
          !pause);  // a source that stalled or dropped the connection may answer the next time
    src.paused = true;
    t_pause = Clock::now();
  }
  // An unpaused source (--fence proxy) goes on expiring and evicting keys past the fence: its stats, read
  // with the offset, say how many (step 3). A paused one removes nothing, and its pause is not made longer
  // for them.
  auto info = src.paused ? c->command({"INFO", "replication"}) : c->command({"INFO", "replication", "stats"});
  const std::int64_t fence = info && !info->is_error() ? info_integer(info->str, "master_repl_offset") : -1;
  if (fence < 0)
    return abandon("INFO replication on the source " + src.address.str() + ": " +
                       (info ? "no master_repl_offset" : c->error()),
                   !info);
  if (auto changed = source_changed(src, info->str)) return abandon(*changed, false);
  const auto removed_at_fence =
      info_integer(info->str, "expired_keys") + info_integer(info->str, "evicted_keys");
  journal(MoveStep::kFence, {{"source", src.node.id},
                             {"slots", slots_text},
                             {"offset", fence},
                             {"paused", src.paused},
                             {"proxies_held", held ? owner_ : ""}});
  // From here the copier applies nothing of these slots past the fence: the source's writes are paused, and
  // after the claim it answers MOVED for them. (Where the pause gives way to refused writes before the claim,
  // the fence moves there, and the writes run in between are applied.)
  // The pause ends by itself after --pause-timeout, so that a dead slotshift cannot freeze the source. A
  // source that stalls (a slow disk, a swap storm, SIGSTOP) for longer than that just as it is to learn the
  // claim would wake up unpaused, and could run writes for the claimed slots before it reads the target's
  // broadcast, then delete them with the slots. So for the claim the pause is made twice as long
  // (claim_pause(); renewed while slotshift waits for the source to learn), and a source that has not learnt
  // by the deadline is left refusing writes (wait_source_learns()). (Raising min-replicas-to-write for every
  // claim instead would not lapse, but the server checks it before the pause: every client would meet
  // NOREPLICAS for the whole claim.) On servers that crash when they learn a claim while paused, the pause
  // gives way to that refusal before the claim.
  const bool refuse_for_claim = !pause_through_claim && !fence_proxy;
  if (!refuse_for_claim) copier.close_slots(batch.slots, fence);
  const auto t_wait = Clock::now();
  // (With --fence proxy the wait starts at the fence, not before the proxies' hold.)
  if (fence_proxy) t_pause = t_wait;
  if (!copier.wait_applied(fence, t_pause + options_.pause_timeout / 2))
    return abandon("the target did not reach the source's offset within " +
                       std::to_string(options_.pause_timeout.count() / 2) + " ms",
                   true);
  batch.wait_ms = ms_since(t_wait);

  // 3. Both sides now hold the same data for these slots: compare the key counts before anything changes
  //    owner. Keys that expired in between are the only possible difference: the target, a master, expires
  //    keys on its own, so it may hold fewer (at most the keys with a TTL). A paused source removes nothing,
  //    but with --fence proxy it is not paused and may expire or evict keys after the offset was read (their
  //    DELs lie past the fence): the target may then hold more, by no more than the source's own counters
  //    grew since the fence. Anything else (a client that deleted a key on the source directly) fails.
  // (A connection that failed here, a node that stalled past the timeout, is made again for the next try.)
  c = control(src.node);
  if (!c) return abandon("cannot connect to the source " + connect_error_, true);
  if (!target_control_.usable() &&
      !target_control_.connect(target_address_, options_.common.timeout, options_.common.credentials))
    return abandon("cannot connect to the target " + target_control_.error(), true);
  const auto on_source = count_keys(*c, batch.slots);
  const auto on_target = count_keys(target_control_, batch.slots);
  if (!on_source || !on_target)
    return abandon("counting the keys of batch " + slots_text + ": " +
                       (on_source ? target_control_.error() : c->error()),
                   true);
  std::uint64_t removed_since = 0;
  if (!src.paused) {
    auto stats = c->command({"INFO", "stats"});
    if (!stats || stats->is_error())
      return abandon(
          "INFO stats on the source " + src.address.str() + ": " + (stats ? stats->str : c->error()), !stats);
    const auto removed = info_integer(stats->str, "expired_keys") + info_integer(stats->str, "evicted_keys");
    if (removed_at_fence >= 0 && removed > removed_at_fence)
      removed_since = static_cast<std::uint64_t>(removed - removed_at_fence);
  }
  std::uint64_t more_on_target = 0;
  batch.source_keys = batch.target_keys = 0;
  for (std::size_t i = 0; i < batch.slots.size(); ++i) {
    const auto a = (*on_source)[i], b = (*on_target)[i];
    batch.source_keys += a;
    batch.target_keys += b;
    const auto expiring = copier.slot_expiring(batch.slots[i]);
    if (b > a) more_on_target += b - a;
    if (more_on_target > removed_since || (a > b && a - b > expiring))
      return abandon(
          "slot " + std::to_string(batch.slots[i]) + ": the source holds " + std::to_string(a) +
              " keys and the target " + std::to_string(b) + " at the same offset (" +
              (b > a ? "the source removed " + std::to_string(removed_since) +
                           " keys by expiry or eviction since the fence"
                     : "at most " + std::to_string(expiring) + " may differ by expiry") +
              "); nothing was claimed, the move is undone" +
              (fence_proxy ? " (with --fence proxy, does a client write to the source directly?)" : ""),
          false);
  }

  // The fence lasts as long as the hold's ttl and the pause's timeout (they end by themselves so that a dead
  // slotshift cannot freeze clients). If this process was held up for most of that, the fence may be gone
  // by the time the claim lands: give the batch up and take it again.
  if (Clock::now() - t0 > options_.pause_timeout * 3 / 4)
    return abandon("the fence had been up for " + std::to_string(static_cast<long>(ms_since(t0))) +
                       " ms of its " + std::to_string(options_.pause_timeout.count()) +
                       " ms before the claim",
                   true);
  // 4. The claim. Servers that crash when they learn it while paused are unpaused and refuse writes instead
  //    (NOREPLICAS: not applied, the client may retry) until they know the new owner. What they accepted
  //    between the end of the pause and the refusal is applied to the target before the claim.
  std::int64_t claim_offset = fence;
  auto t_refuse = t0;
  if (refuse_for_claim) {
    // The queued writes run as the pause ends, before the server reads its next command from us.
    if (!unpause(src)) return abandon("CLIENT UNPAUSE on the source failed", false);
    t_refuse = Clock::now();
    if (!refuse_writes(src))
      return abandon("cannot make the source " + src.address.str() + " refuse writes for the claim (" +
                         connect_error_ +
                         "); with every client behind slotshift-proxy, --fence proxy needs "
                         "no CONFIG",
                     false);
    c = control(src.node);  // refuse_writes() may have replaced a failed connection
    info = c ? c->command({"INFO", "replication"}) : std::nullopt;
    claim_offset = info && !info->is_error() ? info_integer(info->str, "master_repl_offset") : -1;
    if (claim_offset < 0)
      return abandon("INFO replication on the source " + src.address.str() + ": no master_repl_offset",
                     false);
    copier.close_slots(batch.slots, claim_offset);
    if (!copier.wait_applied(claim_offset, t_refuse + options_.pause_timeout / 2))
      return abandon("the target did not reach the source's offset within " +
                         std::to_string(options_.pause_timeout.count() / 2) + " ms",
                     true);
  } else if (!pause_through_claim) {
    unpause(src);  // --fence proxy: the proxies hold; nothing of the source is paused anyway
  } else if (src.paused) {
    // Long enough to outlast the wait for the source to learn (renewed there); see above.
    c = control(src.node);
    auto longer =
        c ? c->command({"CLIENT", "PAUSE", std::to_string(claim_pause().count()), "WRITE"}) : std::nullopt;
    if (!longer || longer->is_error())
      return abandon("CLIENT PAUSE on the source " + src.address.str() +
                         " for the claim: " + (longer ? longer->str : connect_error_),
                     false);
  }
  // The last look at the source before the claim: a failover since the fence would make the claim hand the
  // target slots whose newer writes went to the new master.
  c = control(src.node);
  info = c ? c->command({"INFO", "replication"}) : std::nullopt;
  if (!info || info->is_error())
    return abandon("INFO replication on the source " + src.address.str() +
                       " before the claim: " + (info ? info->str : connect_error_),
                   !info);
  if (auto changed = source_changed(src, info->str)) return abandon(*changed, false);
  if (auto lagging = target_replicas_behind(batch, Clock::now() + options_.pause_timeout / 4))
    return abandon(*lagging, true);
  journal(MoveStep::kClaim, {{"source", src.node.id},
                             {"slots", slots_text},
                             {"offset", claim_offset},
                             {"replid", src.copier->replid()}});
  // As one broadcast. `SETSLOT s NODE target` on a target that has s in IMPORTING bumps its config epoch (if
  // it is not already the unique maximum) and broadcasts a PONG to every node, once per slot: for a batch of
  // a thousand slots that is a thousand broadcasts, and the source spends a fifth of a millisecond on each
  // (measured on 7.0.15). So: BUMPEPOCH first, which makes the target's epoch the unique maximum; then, for
  // every slot but the last, STABLE + NODE, which only changes the target's own table (any gossip it sends
  // meanwhile already carries the winning epoch); then NODE for the last slot, still IMPORTING, whose one
  // broadcast carries the whole batch.
  // (Each slot's STABLE + NODE is one group for setslots(): in order on one connection.)
  std::vector<std::vector<std::vector<std::string>>> pairs;
  for (std::size_t i = 0; i + 1 < batch.slots.size(); ++i)
    pairs.push_back({{"CLUSTER", "SETSLOT", std::to_string(batch.slots[i]), "STABLE"},
                     {"CLUSTER", "SETSLOT", std::to_string(batch.slots[i]), "NODE", target_.id}});
  if (fault::armed("claim", "drop-setslot-connections")) drop_setslot_connections();
  const auto t_claim = Clock::now();
  // Past this point nothing is undone: some or all of the slots may belong to the target now.
  std::string claim_error;
  auto bump = target_control_.command({"CLUSTER", "BUMPEPOCH"});
  if (!bump || bump->is_error()) {
    claim_error = "CLUSTER BUMPEPOCH: " + (bump ? bump->str : target_control_.error());
  } else if (const auto error = setslots(pairs)) {
    claim_error = *error;
  } else {
    auto last = target_control_.command(
        {"CLUSTER", "SETSLOT", std::to_string(batch.slots.back()), "NODE", target_.id});
    if (!last || last->is_error())
      claim_error = "CLUSTER SETSLOT " + std::to_string(batch.slots.back()) +
                    " NODE: " + (last ? last->str : target_control_.error());
  }
  batch.claim_send_ms = ms_since(t_claim);
  // A claim that failed part way ends the move (settle_claim() asks the target what it owns, for seconds at
  // worst): a group's claimed batches are handed off first, and what it held for batches to come released.
  if (!claim_error.empty()) {
    if (held) end_hold(*hold_in_force_, batch.slots);
    return settle_claim(src, batch, claim_error, held);
  }
  for (const Slot s : batch.slots) {
    claimed_[s] = true;
    importing_[s] = false;
  }
  // 5. The target owns the slots: the proxies send what they held there, and never meet a MOVED for them.
  //    With `hand_off_later` that is once the source has learnt the claim (hand_off(), the caller's: with
  //    the next batch's hold in the same call), unless the source takes longer than the pause budget to
  //    learn: then, as without it, while it learns (a slow source must not keep the proxies' clients held;
  //    the next batch then holds on its own). Either way a slow proxy does not keep the source paused.
  //    What they answered is noted here, on this thread, once they all have (warnings_ is this thread's).
  //    A group's claimed batches go with it: its hold ends here (cut_over_all() releases the rest of it).
  std::future<ProxyCalls> proxies_done;
  bool with_group = false;
  auto hand_off_now = [&] {
    batch.handed_off = true;
    with_group = !deferred_.empty();
    // (This batch's slots are claimed_ already: the rest is what the group held for batches to come.)
    std::string rest;
    if (hold_in_force_ && hold_in_force_->batches > 1) rest = unclaimed_cover(*hold_in_force_, {}, nullptr);
    proxies_done = std::async(std::launch::async, [&, text = with_deferred(batch.slots), rest] {
      const auto t_handoff = Clock::now();
      auto calls = proxies_->handoff(text, target_address_);
      batch.handoff_ms = ms_since(t_handoff);
      batch.hold_ms = ms_since(t0);
      if (!rest.empty()) {
        auto released = proxies_->release(rest);
        calls.calls.insert(calls.calls.end(), released.calls.begin(), released.calls.end());
      }
      return calls;
    });
  };
  auto handed_off = [&] {
    const auto t_answers = Clock::now();
    proxies_done.wait();
    fleet_waited(t_answers);
    note_proxy_failures(proxies_done.get());
    if (with_group) deferred_handed_off(batch.handoff_ms, batch.hold_ms);
  };
  auto hand_off_once = [&] {
    if (proxies_ && !batch.handed_off) hand_off_now();
  };
  if (!hand_off_later) hand_off_once();
  // 6. The source deletes its keys of these slots as soon as it hears the target's broadcast (synchronously:
  //    that delete is most of the pause) and answers MOVED from then on. Wait for it, fenced, then unpause.
  const bool learnt = wait_source_learns(src, batch.slots, options_.max_pause, hand_off_once);
  if (!learnt) {
    hand_off_once();
    if (proxies_done.valid()) handed_off();
    return fail("the source " + src.address.str() + " did not learn the claim of batch " + slots_text +
                " within " + std::to_string(learn_timeout().count()) + " ms; " + fence_left(src));
  }
  batch.claim_ms = ms_since(t_claim);
  // The source knows the new owner: it answers MOVED for the batch's slots, paused or not, so its fence can
  // end now, whether or not every proxy has had its handoff yet. A proxy still holding sends its held
  // commands to the target once told; one that is never told sends them to the source and follows its MOVED.
  // (Waiting for the proxies first made every pause as long as the slowest proxy's answer: with 50 proxies
  // that was most of the pause, and the batch sizer, which takes the pause for the source's own cost, cut
  // the batches to a fraction.)
  if (src.paused) {
    unpause(src);
    batch.pause_ms = ms_since(t_pause);
  } else if (refuse_for_claim) {
    batch.pause_ms = std::chrono::duration<double, std::milli>(t_refuse - t_pause).count();
    unpause(src);
    batch.refuse_ms = ms_since(t_refuse);
  } else if (!fence_proxy) {
    batch.pause_ms = std::chrono::duration<double, std::milli>(t_claim - t_pause).count();
  }
  if (proxies_done.valid()) handed_off();
  if (hold_in_force_) ++hold_in_force_->used;
  journal(MoveStep::kClaimed, {{"slots", slots_text}, {"pause_ms", batch.pause_ms}});
  if (auto warning = sizer_.learn(batch, src.address.str())) warnings_.push_back(std::move(*warning));
  return true;
}

// Why the source is no longer the master slotshift copies from, or nothing. A failover (a replica promoted,
// by TAKEOVER too) gives the promoted node a new replication id and turns the old master into its replica,
// whose master_replid becomes the new one: either way INFO replication no longer shows this role and id.
std::optional<std::string> MoveJob::source_changed(const Source& src, const std::string& info) const {
  const auto role = info_field(info, "role");
  const auto replid = info_field(info, "master_replid");
  if (role == "master" && (replid == src.copier->replid() || src.copier->replid().empty()))
    return std::nullopt;
  return "the source " + src.address.str() + " is no longer the master slotshift copies from (role " +
         std::string(role) + ", replication id " + std::string(replid) + " where the copy began with " +
         src.copier->replid() + "): a failover? No batch is claimed on what was copied from it";
}

// Waits until every replica of the target has what the target has now, or the deadline passes (then says
// so). After the claim the target's copy of the batch is the only one: if the target failed over to a replica
// that lacks part of it, that part would be gone. A replica that the cluster flags as failed is not waited
// for (it cannot be promoted).
//
// WAIT counts the replicas that have acknowledged the offset of this connection's last write, and asks them
// at once (REPLCONF GETACK) rather than at their next ACK a second later. The control connection writes
// nothing, so it first writes and removes a key of the batch's first slot in one script call (reached by
// ASKING, as the slot is in IMPORTING): a write whose offset is past every key the copy wrote, and which
// leaves nothing.
std::optional<std::string> MoveJob::target_replicas_behind(const Batch& batch, Clock::time_point deadline) {
  std::size_t replicas = 0;
  for (const auto* r : topology_.replicas_of(target_.id))
    replicas += !r->flags || !r->flags->fail;
  if (replicas == 0) return std::nullopt;
  std::string key;
  for (int i = 0; key.empty(); ++i)
    if (key_slot("slotshift:ack:" + std::to_string(i)) == batch.slots.front())
      key = "slotshift:ack:" + std::to_string(i);
  static const std::string kSetDel = "redis.call('SET', KEYS[1], '') return redis.call('DEL', KEYS[1])";
  const auto wait_ms = std::max<long>(1, duration_cast<milliseconds>(deadline - Clock::now()).count());
  const auto replies = target_control_.pipeline(
      {{"ASKING"}, {"EVAL", kSetDel, "1", key}, {"WAIT", std::to_string(replicas), std::to_string(wait_ms)}});
  if (!replies) return "the target's replicas: " + target_control_.error();
  for (const auto& r : *replies)
    if (r.is_error()) return "the target's replicas: " + r.str;
  const auto acked = replies->back().integer;
  if (acked >= static_cast<std::int64_t>(replicas)) return std::nullopt;
  return std::to_string(acked) + " of the target's " + std::to_string(replicas) +
         " replicas had the batch within " + std::to_string(wait_ms) +
         " ms; nothing is claimed before every replica of the target has it";
}

// Why a source's copier stopped, as the nodes tell it: a replica link that the source closed is most often a
// failover (a master that becomes a replica drops its own replicas), and then that is what the user is told.
std::string MoveJob::copier_failure(Source& src) {
  auto* c = control(src.node);
  const auto info = c ? c->command({"INFO", "replication"}) : std::nullopt;
  if (info && !info->is_error())
    if (auto changed = source_changed(src, info->str)) return *changed + " (" + src.copier->error() + ")";
  return src.copier->error();
}

// How long a source's pause lasts from a claim on (and is renewed to while slotshift waits for it to learn):
// twice --pause-timeout. It outlasts a stall of the source of up to that much at the claim, and a slotshift
// killed right then still holds the source's writes for no longer than that: clients behind the proxies wait
// it out within their request deadline (5 s by default against a 4 s pause).
std::chrono::milliseconds MoveJob::claim_pause() const {
  return options_.pause_timeout * 2;
}

std::chrono::milliseconds MoveJob::learn_timeout() const {
  // The source learns a claim from the target's broadcast within milliseconds; after a claim that failed part
  // way there is no broadcast, and it learns from the target's regular pings, which reach every node at least
  // once per half node timeout.
  return std::max(milliseconds(5000), node_timeout_);
}

// What is left of a source's fence after wait_source_learns() gave up, for the user.
std::string MoveJob::fence_left(const Source& src) const {
  if (src.keep_refusing)
    return "so that no write it accepts is lost when it does, it refuses every write (NOREPLICAS) until "
           "`CONFIG "
           "SET min-replicas-to-write " +
           src.min_replicas_to_write + " min-replicas-max-lag " + src.min_replicas_max_lag +
           "` is sent to it: send that once slotshift check shows every node naming the target as their "
           "owner";
  return "slotshift could not fence it (no connection): writes it accepted for those slots after the claim "
         "are lost when it learns; run slotshift check";
}

// Waits until the source names the target as the owner of every slot of `slots`, its fence up all the while.
// The source deletes its keys of a slot when it learns that the target owns it: a write it accepted after the
// fence and before that would be deleted with them, acknowledged and gone. So the fence never lapses here:
// the pause is renewed (a second CLIENT PAUSE only extends it), a refusal of writes stays, and a source that
// has still not learnt at the deadline is left refusing writes (NOREPLICAS: nothing applied), for an operator
// to lift (fence_left()). Servers that crash when they learn a claim while paused are never paused here.
bool MoveJob::wait_source_learns(Source& src, const std::vector<Slot>& slots, milliseconds slow_after,
                                 const std::function<void()>& slow) {
  const auto start = Clock::now();
  const auto deadline = start + learn_timeout();
  auto renewed = start;
  bool told_slow = !slow;
  for (;;) {
    if (!told_slow && Clock::now() - start > slow_after) {
      told_slow = true;
      slow();
    }
    auto* c = control(src.node);
    auto nodes = c ? c->command({"CLUSTER", "NODES"}) : std::nullopt;
    if (nodes && !nodes->is_error()) {
      const auto view = parse_cluster_nodes(*nodes);
      if (view.ok() && std::all_of(slots.begin(), slots.end(), [&](Slot s) {
            const Node* o = view.topology.owner(s);
            return o && o->id == target_.id;
          }))
        return true;
    }
    if (src.paused && Clock::now() - renewed > options_.pause_timeout / 4 && c) {
      c->command({"CLIENT", "PAUSE", std::to_string(claim_pause().count()), "WRITE"});
      renewed = Clock::now();
    }
    if (Clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  if (src.refusing || refuse_writes(src)) src.keep_refusing = true;
  unpause(src);  // the pause only: the refusal stays
  journal(MoveStep::kSourceNotLearnt, {{"source", src.node.id},
                                       {"slots", format_slot_ranges(slot_ranges(slots))},
                                       {"refusing_writes", src.keep_refusing}});
  return false;
}

// The fault claim:drop-setslot-connections (fault_injection.h): every other SETSLOT connection of the target
// closed by the target itself, as the connections of a restarted load balancer are.
void MoveJob::drop_setslot_connections() {
  auto list = target_control_.command({"CLIENT", "LIST", "TYPE", "normal"});
  if (!list || list->is_error()) return;
  int n = 0;
  for (const auto& client : clients_in(list->str))
    if (client.name.ends_with(":slotshift-setslot") && n++ % 2 == 0)  // the move's, by name
      target_control_.command({"CLIENT", "KILL", "ID", client.id});
}

// CLUSTER SETSLOT commands on the target, each group in order, the groups over many connections at once:
// Valkey 8 and later make each SETSLOT wait until the node's replicas have it (see NodeFanout). The first
// error, or nothing.
std::optional<std::string> MoveJob::setslots(
    const std::vector<std::vector<std::vector<std::string>>>& groups) {
  if (!target_fanout_connected_) {
    if (!target_fanout_.connect(target_address_, options_.common.timeout, options_.common.credentials, 64,
                                "slotshift-setslot"))
      return target_fanout_.error();
    target_fanout_connected_ = true;
  }
  auto replies = target_fanout_.run(groups);
  if (!replies) {
    target_fanout_connected_ = false;
    return target_fanout_.error();
  }
  for (std::size_t g = 0; g < groups.size(); ++g)
    for (std::size_t i = 0; i < groups[g].size(); ++i)
      if ((*replies)[g][i].is_error()) return join(groups[g][i]) + ": " + (*replies)[g][i].str;
  return std::nullopt;
}

void MoveJob::hand_off(Batch& batch, const PlacedHold* next) {
  // After the source has learnt the claim, not while it does: its delete of the batch's keys then no longer
  // slows the target's answer to every proxy's route check (they share cores wherever the nodes share a
  // host), and the next batch is planned from this one's pause. Its proxies' clients wait meanwhile, for as
  // long as the source took to learn (at most the pause budget: cut_over() hands off alone past it); the
  // source itself is unpaused already.
  if (batch.handed_off) return;  // while the source learnt; the next batch holds on its own
  batch.handed_off = true;
  const std::string slots_text = with_deferred(batch.slots);
  const auto t = Clock::now();
  if (!next) {
    note_proxy_failures(proxies_->handoff(slots_text, target_address_));
  } else {
    auto both = proxies_->handoff(slots_text, target_address_,
                                  {next->slots, options_.pause_timeout, hold_wait(), owner_});
    note_proxy_failures(both.handoff);
    batch.handoff_placed_next_hold = true;
    placed_hold_ = *next;
    placed_hold_->calls = std::move(both.hold);
    placed_hold_->sent = t;
    placed_hold_->answered = Clock::now();
    placed_hold_->call_ms = ms_since(t);
  }
  batch.handoff_ms = fleet_waited(t);
  batch.hold_ms = ms_since(hold_started_);
  fleet_call_ms_ = batch.handoff_ms;
  deferred_handed_off(batch.handoff_ms, batch.hold_ms);
}

bool MoveJob::PlacedHold::covers(const std::vector<Slot>& batch_slots) const {
  return std::all_of(batch_slots.begin(), batch_slots.end(), [&](Slot s) { return cover[s]; });
}

MoveJob::PlacedHold MoveJob::hold_cover(const Batch& first, const std::vector<Batch>& planned,
                                        std::size_t from) const {
  PlacedHold hold;
  hold.batches = 0;
  std::vector<Slot> slots;
  auto add = [&](const Batch& b) {
    for (const Slot s : b.slots) {
      hold.cover[s] = true;
      slots.push_back(s);
    }
    ++hold.batches;
  };
  add(first);
  const HoldSpanRule rule{options_.hold_batches, options_.fence == "proxy",
                          static_cast<double>(options_.max_pause.count())};
  const auto span = hold_span(rule, fleet_call_ms_, batch_span_ms_, planned.size() - from);
  for (std::size_t i = from; i < planned.size() && hold.batches < span; ++i)
    add(planned[i]);
  std::sort(slots.begin(), slots.end());
  hold.slots = format_slot_ranges(slot_ranges(slots));
  return hold;
}

std::string MoveJob::with_deferred(const std::vector<Slot>& slots) const {
  if (deferred_.empty()) return format_slot_ranges(slot_ranges(slots));
  std::vector<Slot> all = slots;
  for (const auto i : deferred_) {
    const auto& b = deferred_source_->batches[i].slots;
    all.insert(all.end(), b.begin(), b.end());
  }
  std::sort(all.begin(), all.end());
  return format_slot_ranges(slot_ranges(all));
}

void MoveJob::hand_off_deferred() {
  if (deferred_.empty()) return;
  const double call_ms = route_and_release(with_deferred({}));
  deferred_handed_off(call_ms, ms_since(hold_started_));
}

void MoveJob::end_hold(const PlacedHold& hold, const std::vector<Slot>& keep, const PlacedHold* next) {
  hand_off_deferred();
  if (const auto rest = unclaimed_cover(hold, keep, next); !rest.empty()) release_proxies(rest);
}

void MoveJob::deferred_handed_off(double call_ms, double hold_ms) {
  for (const auto i : deferred_) {
    Batch& b = deferred_source_->batches[i];
    b.handed_off = true;
    b.handoff_ms = call_ms;
    b.hold_ms = hold_ms;  // every batch of a group was held from the group's hold
    batch_ended(*deferred_source_, b);
  }
  deferred_.clear();
}

std::string MoveJob::unclaimed_cover(const PlacedHold& hold, const std::vector<Slot>& keep,
                                     const PlacedHold* next) const {
  std::vector<bool> kept(kSlotCount);
  for (const Slot s : keep)
    kept[s] = true;
  std::vector<Slot> rest;
  for (std::size_t s = 0; s < kSlotCount; ++s)
    if (hold.cover[s] && !claimed_[s] && !kept[s] && !(next && next->cover[s]))
      rest.push_back(static_cast<Slot>(s));
  return rest.empty() ? std::string() : format_slot_ranges(slot_ranges(rest));
}

double MoveJob::route_and_release(const std::string& slots) {
  const auto t = Clock::now();
  note_proxy_failures(proxies_->handoff(slots, target_address_));
  return fleet_waited(t);
}

void MoveJob::release_proxies(const std::string& slots) {
  const auto t = Clock::now();
  note_proxy_failures(proxies_->release(slots));
  fleet_waited(t);
}

// A proxy that cannot vouch for the target (the warm-up's check) will refuse its handoffs, and its clients
// will meet MOVED at the old owner after each batch (which it follows). Said once per proxy.
void MoveJob::note_target_refusals(const ProxyCalls& calls) {
  for (const auto& call : calls.calls) {
    if (proxy_warned_.insert(call.proxy + " target").second)
      warnings_.push_back("proxy " + call.proxy + " cannot vouch for the target " + target_address_.str() +
                          " (" + call.error + "): it will refuse every batch's handoff, and its clients " +
                          "will meet MOVED for the moved slots at the old owner, which it follows");
  }
}

// A proxy that does not answer is reported once, not once per batch.
void MoveJob::note_proxy_failures(const ProxyCalls& calls) {
  for (const auto& call : calls.calls) {
    // Once per proxy and kind of failure: one warned for a failed handoff and later left out is told of
    // again.
    const bool left_out = options_.fence != "proxy" && proxies_->left_out(call.proxy);
    if (call.ok ||
        !proxy_warned_.insert(call.proxy + (call.slow_to_drain() ? " slow"
                                            : left_out           ? " out"
                                                                 : " error"))
             .second)
      continue;
    if (call.slow_to_drain())
      warnings_.push_back(
          "proxy " + call.proxy + " could not hold a batch twice in a row (" + call.error + ")" +
          (options_.fence == "proxy" ? ""
                                     : "; the batch went on without its hold: its clients were fenced by the "
                                       "source's pause and met MOVED after it, which it follows"));
    else
      // Truthful about both: an error reply is an answer, and only a proxy that failed a hold is left out
      // (one that failed a handoff is asked again at the next batch).
      warnings_.push_back(
          "proxy " + call.proxy + (call.status ? " answered with an error (" : " did not answer (") +
          call.error + ")" +
          (!left_out ? ""
                     : "; it was left out, and is asked again at a later batch (1 s on, then twice "
                       "as long after each miss, at most 30 s): meanwhile its clients are fenced by "
                       "the source's pause and meet MOVED for the moved slots, which it follows"));
  }
}

}  // namespace slotshift
