#include "orchestrator/move_job.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>

#include "common/topology.h"
#include "orchestrator/journal.h"
#include "orchestrator/native_migration.h"

namespace slotshift {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

bool MoveJob::migrate_native_all() {
  // Keys per slot, to size the batches: the servers carry the values, so nothing else is read beforehand.
  std::vector<std::uint64_t> slot_keys(kSlotCount);
  for (auto& src : sources_) {
    auto* c = control(src.node);
    if (!c) return fail("cannot connect to the source " + connect_error_);
    const auto keys = count_keys(*c, src.slots);
    if (!keys)
      return fail("counting the keys of the moving slots on " + src.address.str() + ": " + c->error());
    for (std::size_t i = 0; i < src.slots.size(); ++i)
      slot_keys[src.slots[i]] = (*keys)[i];
  }
  // Following a job means reading CLUSTER GETSLOTMIGRATIONS about every millisecond, and it lists every job
  // the node keeps (up to cluster-slot-migration-log-max-len, 1000 by default, about 350 bytes each): with a
  // long log each call cost the source half a millisecond, and a move of 200 batches made it spend most of
  // its time answering. The log is kept short on the nodes involved while the move runs, then put back.
  struct LogLength {
    NodeClient* node;
    std::string value;
  };
  std::vector<LogLength> logs;
  auto shorten = [&](NodeClient* c, const std::string& id) {
    auto r = c ? c->command({"CONFIG", "GET", "cluster-slot-migration-log-max-len"}) : std::nullopt;
    if (!r || r->is_error() || r->elements.size() != 2) return;
    if (std::stoll(r->elements[1].str) <= 16) return;
    // Recorded first: a slotshift killed from here on leaves it short, and abort or resume puts it back.
    journal(MoveStep::kMigrationLog, {{"node", id}, {"restore", r->elements[1].str}});
    auto set = c->command({"CONFIG", "SET", "cluster-slot-migration-log-max-len", "16"});
    if (set && !set->is_error()) logs.push_back({c, r->elements[1].str});
  };
  shorten(&target_control_, target_.id);
  for (auto& src : sources_)
    shorten(control(src.node), src.node.id);
  if (!logs.empty())
    notes_.push_back(
        "cluster-slot-migration-log-max-len was 16 on the nodes involved while the move ran (it "
        "keeps CLUSTER GETSLOTMIGRATIONS cheap to follow), then put back");
  struct Restore {
    std::vector<LogLength>& logs;
    ~Restore() {
      for (auto& l : logs)
        l.node->command({"CONFIG", "SET", "cluster-slot-migration-log-max-len", l.value});
    }
  } restore{logs};

  std::size_t done = 0;
  for (auto& src : sources_) {
    for (;;) {
      // The next batch: consecutive slots not yet moved, as many as the learnt delete speed allows.
      Batch batch = sizer_.next_native(src.slots, slot_keys, claimed_);
      if (batch.slots.empty()) break;
      if (interrupted()) return false;  // between batches, as the replica engine stops
      char line[200];
      std::snprintf(line, sizeof line, "migrate  batch %zu  %zu slots  %s keys", done + 1, batch.slots.size(),
                    with_commas(batch.keys).c_str());
      progress("migrate", line, done + 1, 0);
      const bool moved = migrate_native(src, batch);
      src.batches.push_back(std::move(batch));
      batch_ended(src, src.batches.back());
      if (!moved || !verify(src.batches.back())) return false;
      sizer_.learn_native(src.batches.back());
      ++done;
    }
  }
  if (done >= 3 && sizer_.native_floor_ms() > static_cast<double>(options_.max_pause.count())) {
    char text[32];
    std::snprintf(text, sizeof text, "%.0f ms", sizer_.native_floor_ms());
    warnings_.push_back("every handoff by CLUSTER MIGRATESLOTS stalled the source's writers at least " +
                        std::string(text) + ", whatever the batch (the server's own pause): --max-pause " +
                        std::to_string(options_.max_pause.count()) + " ms could not be kept");
  }
  return true;
}

// One batch by CLUSTER MIGRATESLOTS. A second connection to the source measures what a writer of the moving
// slots waits (a write that changes nothing, to a key of the batch's first slot: paused during the handoff,
// delayed by the source's delete after it, answered MOVED once the slot has gone). The proxies hold the slots
// from the moment the handoff begins to the moment the target owns them, then send what they held there.
bool MoveJob::migrate_native(Source& src, Batch& batch) {
  ++batch.attempts;
  batch.source_keys = batch.keys;
  auto* c = control(src.node);
  if (!c) return fail("cannot connect to the source " + connect_error_);
  const std::string slots_text = format_slot_ranges(slot_ranges(batch.slots));

  std::atomic<bool> probing{true};
  std::atomic<double> stall_ms{0};
  std::string probe_key;
  for (int i = 0; probe_key.empty(); ++i)
    if (key_slot("slotshift:probe:" + std::to_string(i)) == batch.slots.front())
      probe_key = "slotshift:probe:" + std::to_string(i);
  NodeClient probe_client;
  const bool probe_ok =
      probe_client.connect(src.address, options_.common.timeout, options_.common.credentials);
  std::thread probe([&] {
    // LREM of a value no list holds: a write (so the handoff's pause delays it) that changes nothing.
    const std::vector<std::string> write = {"LREM", probe_key, "0", "slotshift-probe-" + owner_};
    while (probe_ok && probing.load()) {
      const auto t = Clock::now();
      if (!probe_client.command(write)) break;
      const double took = ms_since(t);
      if (took > stall_ms.load()) stall_ms.store(took);
      std::this_thread::sleep_until(t + milliseconds(1));  // a client, not a load on the source
    }
  });
  auto stop_probe = [&] {
    probing.store(false);
    if (probe.joinable()) probe.join();
    batch.pause_ms = stall_ms.load();
  };

  std::vector<std::pair<int, int>> ranges;
  for (const auto& r : slot_ranges(batch.slots))
    ranges.emplace_back(r.first, r.last);
  NativeMigration job(*c);
  journal(MoveStep::kMigrate, {{"source", src.node.id}, {"slots", slots_text}});
  const auto t0 = Clock::now();
  if (!job.start(ranges, target_.id)) {
    stop_probe();
    return fail("the source " + src.address.str() + " refused to migrate " + slots_text + ": " + job.error());
  }
  bool held = false;
  auto t_hold = t0;
  auto give_up = [&](const std::string& why) {
    bool cancelled = job.cancel();
    // The server ends a cancelled job on its own time: wait until it says so, so that nothing is left
    // running when slotshift exits.
    for (const auto until = Clock::now() + std::chrono::seconds(10); cancelled;) {
      const auto state = job.poll();
      if (state && state->finished()) break;
      if (Clock::now() > until) {
        cancelled = false;
        break;
      }
      std::this_thread::sleep_for(milliseconds(5));
    }
    stop_probe();
    if (held) release_proxies(slots_text);
    journal(MoveStep::kMigrateCancelled, {{"slots", slots_text}, {"why", why}});
    return fail(why + (cancelled ? "; the migration was cancelled"
                                 : "; cancelling it failed too (" + job.error() + "): run slotshift check"));
  };
  // The source sends the batch's keys at about a million a second here; allow far more, and never less
  // than a minute.
  const auto deadline = t0 + std::chrono::seconds(60) + std::chrono::microseconds(50 * batch.keys);
  std::string last_state;
  int misses = 0;
  for (;;) {
    if (g_move_interrupted) return give_up("interrupted during the migration of batch " + slots_text);
    if (Clock::now() > deadline)
      return give_up("the migration of batch " + slots_text + " did not finish within " +
                     std::to_string(duration_cast<std::chrono::seconds>(deadline - t0).count()) +
                     " s (last state " + last_state + ")");
    const auto state = job.poll();
    if (!state) {
      // Just after MIGRATESLOTS the job may not be listed yet.
      if (last_state.empty() && ++misses < 1000) continue;
      return give_up(job.error());
    }
    last_state = state->state;
    if (state->failed()) {
      stop_probe();
      if (held) release_proxies(slots_text);
      journal(MoveStep::kMigrateFailed, {{"slots", slots_text}, {"state", state->state}});
      return fail("the migration of batch " + slots_text + " " + state->state +
                  (state->message.empty() ? std::string() : ": " + state->message) +
                  "; its slots stay with " + src.address.str());
    }
    if (!held && proxies_ && state->handing_off()) {
      // From here until the target owns the slots, the proxies keep their clients' commands for them. A
      // write already at the source waits there until the handoff is over (then it meets MOVED, which the
      // proxy follows): the hold must let it come back, so its wait is not the pause budget.
      t_hold = Clock::now();
      const auto calls =
          proxies_->hold(slots_text, options_.pause_timeout, options_.pause_timeout / 2, owner_);
      held = true;
      for (const auto& call : calls.calls)
        batch.proxies_held += call.ok;
      for (const auto& call : calls.calls)
        if (!call.ok && proxy_warned_.insert(call.proxy).second)
          warnings_.push_back("proxy " + call.proxy + " did not hold batch " + slots_text + " (" +
                              call.error + "); its clients meet MOVED for the moved slots, which it follows");
      continue;  // the hold took a while: look at the job again at once
    }
    if (state->succeeded()) break;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  batch.claim_ms = ms_since(t0);
  for (const Slot s : batch.slots)
    claimed_[s] = true;
  if (held) {
    route_and_release(slots_text);
    batch.hold_ms = ms_since(t_hold);
  }
  // The source deletes the moved keys as it hands off; one more round trip of the probe covers the end of it.
  std::this_thread::sleep_for(milliseconds(2));
  stop_probe();
  journal(MoveStep::kMigrated,
          {{"slots", slots_text}, {"stall_ms", batch.pause_ms}, {"job_ms", batch.claim_ms}});
  return true;
}

// A native move's migrations are run by the servers: a slotshift killed in the middle of one leaves it
// running, and it may finish at any moment, so nothing can be said about which slots moved while it runs.
// Every migration still listed as running on the move's nodes is cancelled and waited for until the servers
// list it as finished (Valkey drops what a cancelled import brought); then the target's own view says which
// slots are its own. The lease keeps any other slotshift away from these nodes meanwhile.
void MoveJob::settle_native(const JournalState& state) {
  // Only the jobs of this move's slots: an export of them on a source, their import on the target.
  std::vector<bool> planned(kSlotCount);
  for (const auto& src : sources_)
    for (const Slot s : src.slots)
      planned[s] = true;
  auto ours = [&](const SlotMigrationJob& job, bool is_source) {
    if (job.operation != (is_source ? "EXPORT" : "IMPORT")) return false;
    std::string error;
    const auto slots = parse_slot_list(job.slot_ranges, error);
    return slots && std::any_of(slots->begin(), slots->end(), [&](Slot s) { return planned[s]; });
  };
  // The sources first: cancelling there ends the target's imports too.
  std::vector<Node> nodes;
  for (const auto& src : sources_)
    nodes.push_back(src.node);
  nodes.push_back(target_);
  for (const auto& node : nodes) {
    const bool is_source = node.id != target_.id;
    const std::string where = node.address() + ":" + std::to_string(node.port);
    const auto deadline = Clock::now() + std::max(milliseconds(30000), options_.common.timeout * 5);
    std::vector<std::string> found;  // the jobs seen running, by their slots
    bool tried = false;
    for (;;) {
      auto* c = control(node);
      auto listed = c ? c->command({"CLUSTER", "GETSLOTMIGRATIONS"}) : std::nullopt;
      if (!listed || listed->is_error()) {
        undo_complete_ = false;
        warnings_.push_back("cannot ask " + where + " which migrations it runs (" +
                            (!c       ? connect_error_
                             : listed ? listed->str
                                      : c->error()) +
                            "): one of this move may still be running; run slotshift check, then this again");
        break;
      }
      const auto jobs = parse_slot_migrations(*listed);
      std::vector<std::string> running;
      for (const auto& job : jobs)
        if (!job.finished() && ours(job, is_source)) running.push_back(job.slot_ranges);
      if (running.empty()) {
        // What became of each job seen running, in the server's words.
        for (const auto& slots : found)
          for (const auto& job : jobs)
            if (job.slot_ranges == slots && ours(job, is_source))
              notes_.push_back("the migration of " + slots + " was still running on " + where +
                               " after slotshift stopped; it ended " + job.state);
        break;
      }
      for (const auto& r : running)
        if (std::find(found.begin(), found.end(), r) == found.end()) found.push_back(r);
      if (Clock::now() > deadline) {
        undo_complete_ = false;
        warnings_.push_back(where + " still runs the migration of " + join(running, ", ") +
                            (tried ? " after it was cancelled" : "") +
                            "; run slotshift check, then this again");
        break;
      }
      // Cancelled on the source (once): its export ends, and with it the target's import.
      if (is_source && !tried) {
        tried = true;
        journal(MoveStep::kMigrateCancelled,
                {{"source", node.id}, {"slots", join(running, " ")}, {"why", "found running after a crash"}});
        NativeMigration job(*c);
        if (!job.cancel()) warnings_.push_back("cancelling the migrations on " + where + ": " + job.error());
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
  }
  for (const auto& [id, value] : state.restore_migration_log) {
    const Node* node = id == target_.id ? &target_ : nullptr;
    for (const auto& src : sources_)
      if (src.node.id == id) node = &src.node;
    auto* c = node ? control(*node) : nullptr;
    auto set = c ? c->command({"CONFIG", "SET", "cluster-slot-migration-log-max-len", value}) : std::nullopt;
    if (!set || set->is_error()) {
      undo_complete_ = false;  // so that this runs again (the journal keeps the value)
      warnings_.push_back("cluster-slot-migration-log-max-len could not be put back to " + value + " on " +
                          short_id(id) + " (" +
                          (set ? set->str
                           : c ? c->error()
                               : "not a node of the move") +
                          ")");
    }
  }
  // Nothing of a native move is ever set IMPORTING by slotshift: which slots moved is the target's word
  // alone.
  std::vector<Slot> open;
  for (std::size_t s = 0; s < importing_.size(); ++s)
    if (importing_[s]) {
      open.push_back(static_cast<Slot>(s));
      importing_[s] = false;
    }
  if (open.empty()) return;
  const auto view = target_view(open);
  if (!view.known) {
    undo_complete_ = false;
    warnings_.push_back("the target could not be asked which slots it owns (" + view.error +
                        "); run slotshift check");
    return;
  }
  for (const Slot s : view.owned)
    claimed_[s] = true;
}

}  // namespace slotshift
