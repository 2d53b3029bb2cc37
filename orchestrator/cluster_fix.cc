#include "orchestrator/cluster_fix.h"
#include "orchestrator/exit_status.h"

#include <unistd.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "orchestrator/cluster_check.h"
#include "orchestrator/finding_guide.h"
#include "orchestrator/move.h"
#include "orchestrator/move_job.h"
#include "orchestrator/move_lease.h"
#include "orchestrator/slot_repair.h"

namespace slotshift {
namespace {

using Clock = std::chrono::steady_clock;

struct Step {
  enum class Kind { kAbortMove, kRestoreWrites, kForget, kSettleOwners, kCloseSlot, kDeleteOrphans, kAssign };
  Kind kind;
  std::string text;  // the plan's line
  std::string node_id;
  HostPort node;
  std::string value, lag;  // kRestoreWrites: what to put back
  std::string journal;     // kAbortMove
  std::vector<Slot> slots;
};

struct StepResult {
  bool ok = false;
  std::string outcome;
};

std::string describe_node(const Node& n) {
  return short_id(n.id) + " " + n.address() + ":" + std::to_string(n.port);
}

// The slots some node's own view has open.
std::set<Slot> open_slots(const ClusterSurvey& s) {
  std::set<Slot> out;
  for (const auto& v : s.views)
    if (const Node* self = v.myself()) {
      for (const auto& [slot, peer] : self->migrating)
        out.insert(slot);
      for (const auto& [slot, peer] : self->importing)
        out.insert(slot);
    }
  return out;
}

std::string describe_open(const ClusterSurvey& s, Slot slot) {
  std::vector<std::string> parts;
  for (const auto& v : s.views)
    if (const Node* self = v.myself()) {
      if (auto it = self->migrating.find(slot); it != self->migrating.end())
        parts.push_back(short_id(self->id) + " MIGRATING to " + short_id(it->second));
      if (auto it = self->importing.find(slot); it != self->importing.end())
        parts.push_back(short_id(self->id) + " IMPORTING from " + short_id(it->second));
    }
  return join(parts, ", ");
}

// Whether masters a and b, each asked for its own epoch, still hold the same one (or one of them did not
// answer).
bool collides(const ClusterSurvey& s, const std::string& a, const std::string& b) {
  std::optional<std::uint64_t> ea, eb;
  for (const auto& v : s.views)
    if (const Node* self = v.myself()) {
      if (self->id == a) ea = self->config_epoch;
      if (self->id == b) eb = self->config_epoch;
    }
  return !ea || !eb || *ea == *eb;
}

// Waits until the views agree on every owner and epoch and no two masters share an epoch; false at the
// deadline.
bool wait_agreement(const HostPort& seed, const CommonOptions& o, Clock::time_point deadline) {
  for (;;) {
    const auto s = survey_cluster(seed, o.timeout, o.credentials);
    bool agree = unanswered(s).empty();
    if (agree)
      for (const auto& f : compare_views(s.views))
        if (f.kind != FindingKind::kNodeSetDisagreement) agree = false;
    if (agree)
      for (const auto& f : check(s.merged))
        if (f.kind == FindingKind::kEpochCollision || f.kind == FindingKind::kSlotOwnedTwice) agree = false;
    if (agree) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

class Fixer {
 public:
  Fixer(const HostPort& seed, const FixOptions& options) : seed_(seed), options_(options) {}

  // Everything check found that fix repairs, as steps; the rest in `left`.
  std::vector<Step> plan(const ClusterHealth& h, std::vector<const Finding*>& left) const;
  StepResult apply(const Step& step, std::ostream& log);

 private:
  StepResult bump(const std::string& node_id);
  StepResult forget(const std::string& node_id);
  StepResult settle_owners();
  StepResult assign(const std::vector<Slot>& slots);

  HostPort seed_;
  FixOptions options_;
};

std::vector<Step> Fixer::plan(const ClusterHealth& h, std::vector<const Finding*>& left) const {
  std::vector<Step> steps;
  const auto& s = h.survey;
  std::set<const Finding*> handled;
  auto mark = [&](FindingKind kind) {
    for (const auto& f : h.findings)
      if (f.kind == kind) handled.insert(&f);
  };

  for (const auto& u : h.unfinished)
    steps.push_back({Step::Kind::kAbortMove,
                     "undo the unfinished move " + u.state.move_id + " through its journal " + u.journal +
                         " (slotshift abort: what it claimed stays moved)",
                     u.state.target_id,
                     {},
                     {},
                     {},
                     u.journal,
                     {}});
  mark(FindingKind::kMoveUnfinished);

  for (const auto& r : h.refusing) {
    if (r.min_replicas_to_write != kRefuseAllWrites) continue;
    const std::string value = r.restore_to_write.empty() ? "0" : r.restore_to_write, lag = r.restore_max_lag;
    steps.push_back({Step::Kind::kRestoreWrites,
                     "let master " + short_id(r.node_id) + " " + r.node.str() +
                         " take writes again: min-replicas-to-write " + kRefuseAllWrites + " -> " + value +
                         (r.restore_to_write.empty() ? " (the server's default; no journal recorded "
                                                       "the value it had before)"
                                                     : ""),
                     r.node_id,
                     r.node,
                     value,
                     lag,
                     {},
                     {}});
    for (const auto& f : h.findings)
      if (f.kind == FindingKind::kRefusingWrites && f.node_id == r.node_id) handled.insert(&f);
  }

  // Who owns what is the servers' to settle, by config epoch: fix waits for them, ends an epoch collision as
  // they would (the smaller id takes a new epoch), and introduces nodes that do not know each other. It never
  // picks an owner: any claimant may hold acknowledged writes.
  bool settle = false;
  for (const auto& f : h.findings)
    if (f.kind == FindingKind::kEpochCollision || f.kind == FindingKind::kOwnerDisagreement ||
        f.kind == FindingKind::kSlotOwnedTwice || f.kind == FindingKind::kEpochDisagreement ||
        f.kind == FindingKind::kSlotsOnReplica || f.kind == FindingKind::kRoleDisagreement ||
        f.kind == FindingKind::kNodeSetDisagreement) {
      settle = true;
      handled.insert(&f);
    }
  if (settle)
    steps.push_back(
        {Step::Kind::kSettleOwners,
         "wait until every node names the same owners and epochs; end a config epoch collision on the "
         "master with the smaller id (CLUSTER BUMPEPOCH, as the servers do); CLUSTER MEET nodes that "
         "do not know each other",
         {},
         {},
         {},
         {},
         {},
         {}});

  // Slots open alike (the same nodes, the same way out) make one step.
  std::vector<std::pair<std::string, std::vector<Slot>>> closes;
  for (const Slot slot : open_slots(s)) {
    const auto d = decide_open_slot(s, slot);
    std::string how;
    switch (d.kind) {
      case SlotDecision::kFinish:
        how = "finish the migration to " + short_id(d.to->id) + ", the owner's keys replacing older copies";
        break;
      case SlotDecision::kUndo:
        how = "undo it, " + short_id(d.owner->id) +
              " keeping the slot and its own copy of every key, taking back the keys it lacks";
        break;
      case SlotDecision::kRefuse:
        how = "as the nodes say then (now: " + d.why + ")";
        break;
      case SlotDecision::kNothing:
        how = "nothing, as it stands";
        break;
    }
    const std::string text = "(" + describe_open(s, slot) + "): " + how;
    if (closes.empty() || closes.back().first != text) closes.push_back({text, {}});
    closes.back().second.push_back(slot);
  }
  for (auto& [text, slots] : closes)
    steps.push_back({Step::Kind::kCloseSlot,
                     "close slot" + std::string(slots.size() > 1 ? "s " : " ") +
                         format_slot_ranges(slot_ranges(slots)) + " " + text,
                     {},
                     {},
                     {},
                     {},
                     {},
                     slots});
  for (const auto kind : {FindingKind::kSlotMigrating, FindingKind::kSlotImporting,
                          FindingKind::kMigratingAndImporting, FindingKind::kImportingFromFailed})
    mark(kind);

  if (options_.assign_uncovered)
    for (const auto& f : h.findings)
      if (f.kind == FindingKind::kSlotsUncovered) {
        std::vector<Slot> slots;
        for (const auto& r : f.slots)
          for (int x = r.first; x <= r.last; ++x)
            slots.push_back(static_cast<Slot>(x));
        steps.push_back({Step::Kind::kAssign,
                         "give the " + std::to_string(slots.size()) + " uncovered slots " +
                             format_slot_ranges(f.slots) +
                             " an owner: a master holding keys of a slot, else the one with the fewest slots",
                         {},
                         {},
                         {},
                         {},
                         {},
                         slots});
        handled.insert(&f);
      }

  // Replicas after masters: deleting a master's orphans also deletes its replicas' copies.
  auto orphans = h.orphans;
  std::stable_partition(orphans.begin(), orphans.end(), [](const OrphanKeys& x) { return !x.replica; });
  for (const auto& orphan : orphans) {
    std::vector<Slot> slots;
    for (const auto& [slot, n] : orphan.slots)
      slots.push_back(slot);
    steps.push_back({Step::Kind::kDeleteOrphans,
                     "delete the " + std::to_string(orphan.keys()) + " orphan keys of slots " +
                         format_slot_ranges(slot_ranges(slots)) + " on " +
                         (orphan.replica ? "replica " : "master ") + short_id(orphan.node_id) + " " +
                         orphan.node.str() +
                         (orphan.replica ? " (through its master, whose deletes it replicates)" : "") +
                         " (the owner's copies are the live ones)",
                     orphan.node_id,
                     orphan.node,
                     {},
                     {},
                     {},
                     slots});
    for (const auto& f : h.findings)
      if (f.kind == FindingKind::kOrphanKeys && f.node_id == orphan.node_id) handled.insert(&f);
  }

  // Nodes the cluster agreed are down and that own nothing: forgotten, last, so that every node is seen
  // whole. Not before the open slots are closed: forgetting a node clears every IMPORTING from it.
  for (const Node* n : forgettable(s)) {
    steps.push_back(
        {Step::Kind::kForget,
         "forget " + std::string(n->is_master() ? "master " : "replica ") + describe_node(*n) +
             " on every node (CLUSTER FORGET): it does not answer, the cluster agreed it failed, and "
             "it owns no slot; if it comes back, its data is stale: empty it and CLUSTER MEET it again",
         n->id,
         address_of(*n),
         {},
         {},
         {},
         {}});
    for (const auto& f : h.findings)
      if ((f.kind == FindingKind::kNodeFailed && f.node_id == n->id) ||
          (f.kind == FindingKind::kNodeUnreachable &&
           f.message.starts_with(n->address() + ":" + std::to_string(n->port))))
        handled.insert(&f);
  }
  for (const auto& f : h.findings)
    if (!handled.count(&f)) left.push_back(&f);
  return steps;
}

StepResult Fixer::bump(const std::string& node_id) {
  const auto s = survey_cluster(seed_, options_.common.timeout, options_.common.credentials);
  const Node* n = s.merged.find(node_id);
  if (n == nullptr) return {false, "node " + short_id(node_id) + " is no longer in the cluster"};
  NodeClient c;
  if (!c.connect(address_of(*n), options_.common.timeout, options_.common.credentials))
    return {false, c.error()};
  const auto r = c.command({"CLUSTER", "BUMPEPOCH"});
  if (!r || r->is_error()) return {false, r ? c.node().str() + ": CLUSTER BUMPEPOCH: " + r->str : c.error()};
  // STILL: its epoch is already the greatest, so the server took none (it does when it is not unique).
  return {r->str.starts_with("BUMPED"), short_id(node_id) + ": " + r->str};
}

StepResult Fixer::forget(const std::string& node_id) {
  const auto& o = options_.common;
  const auto s = survey_cluster(seed_, o.timeout, o.credentials);
  std::vector<std::string> told;
  // Every node within moments of each other: a node that still knows it would gossip it back to the others
  // after their 60 s ban.
  for (const auto& v : s.views) {
    const Node* self = v.myself();
    if (self == nullptr || v.find(node_id) == nullptr) continue;
    NodeClient c;
    if (!c.connect(address_of(*self), o.timeout, o.credentials)) return {false, c.error()};
    const auto r = c.command({"CLUSTER", "FORGET", node_id});
    if (!r || r->is_error()) return {false, r ? c.node().str() + ": CLUSTER FORGET: " + r->str : c.error()};
    told.push_back(short_id(self->id));
  }
  return {true, "forgotten by " +
                    (told.empty() ? std::string("none (no node knew it any more)") : join(told, ", "))};
}

StepResult Fixer::settle_owners() {
  const auto& o = options_.common;
  auto unsettled = [&](const ClusterSurvey& s) {
    std::vector<Finding> out;
    // A node that imports a slot ignores gossip about it: its opinion of that slot's owner is closing the
    // slot's to settle (close_slot tells it), not the epochs'.
    const auto open = open_slots(s);
    for (auto& f : compare_views(s.views)) {
      if (f.kind == FindingKind::kOwnerDisagreement &&
          std::all_of(f.slots.begin(), f.slots.end(), [&](const SlotRange& r) {
            for (int x = r.first; x <= r.last; ++x)
              if (!open.count(static_cast<Slot>(x))) return false;
            return true;
          }))
        continue;
      out.push_back(std::move(f));
    }
    for (auto& f : check(s.merged))
      if (f.kind == FindingKind::kEpochCollision || f.kind == FindingKind::kSlotOwnedTwice ||
          f.kind == FindingKind::kSlotsOnReplica)
        out.push_back(std::move(f));
    return out;
  };
  // Gossip settles most of it within a few node timeouts; only what outlasts that is acted on.
  std::vector<std::string> done;
  for (int round = 0; round < 2; ++round) {
    const auto until = Clock::now() + std::chrono::seconds(10);
    std::vector<Finding> left;
    for (;;) {
      const auto s = survey_cluster(seed_, o.timeout, o.credentials);
      const bool whole = unanswered(s).empty();
      left = whole ? unsettled(s) : std::vector<Finding>{};
      if (whole && left.empty()) return {true, done.empty() ? "every node agrees" : join(done, "; ")};
      if (Clock::now() >= until) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    if (round == 1) break;
    const auto s = survey_cluster(seed_, o.timeout, o.credentials);
    for (const auto& f : left) {
      if (f.kind == FindingKind::kEpochCollision) {
        const std::string& smaller = std::min(f.node_id, f.peer_id);
        auto r = bump(smaller);
        done.push_back(r.outcome);
        if (!r.ok) {
          // STILL: the two share the greatest epoch, and a node takes a new one without consensus only
          // below it. A third master's bump raises the cluster's current epoch past theirs, by gossip.
          const Node* third = nullptr;
          for (const Node* m : s.merged.masters())
            if (m->id != f.node_id && m->id != f.peer_id && !m->failed() && answered(s, m->id)) third = m;
          if (third != nullptr) done.push_back(bump(third->id).outcome);
          // Meanwhile the servers may end it themselves: a MEET above lets the node with the smaller id see
          // the other's epoch, and it takes a new one at once. So what ends this wait is the nodes' view,
          // never the last bump's answer; what they still show after it, the next round's wait reports.
          for (const auto again_until = Clock::now() + std::chrono::seconds(5); Clock::now() < again_until;) {
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
            if (!collides(survey_cluster(seed_, o.timeout, o.credentials), f.node_id, f.peer_id)) {
              done.push_back(short_id(f.node_id) + " and " + short_id(f.peer_id) +
                             " now hold distinct epochs");
              break;
            }
            if (third == nullptr) continue;
            if (r = bump(smaller); r.ok) {
              done.push_back(r.outcome);
              break;
            }
          }
        }
      } else if (f.kind == FindingKind::kNodeSetDisagreement) {
        // A node some others do not know (forgotten on one of them, say): those others meet it again.
        const Node* n = s.merged.find(f.node_id);
        if (n == nullptr || n->failed() || n->ip.empty()) continue;
        for (const auto& v : s.views) {
          const Node* self = v.myself();
          if (self == nullptr || v.find(n->id) != nullptr) continue;
          NodeClient c;
          if (!c.connect(address_of(*self), o.timeout, o.credentials)) continue;
          std::vector<std::string> meet{"CLUSTER", "MEET", n->ip, std::to_string(n->port)};
          if (n->bus_port) meet.push_back(std::to_string(n->bus_port));
          const auto r = c.command(meet);
          done.push_back(short_id(self->id) + " met " + short_id(n->id) + ": " + (r ? r->str : c.error()));
        }
      }
    }
  }
  const auto s = survey_cluster(seed_, o.timeout, o.credentials);
  const auto left = unsettled(s);
  return {false, "after 20 s the nodes still disagree" +
                     (left.empty() ? std::string()
                                   : " (" + std::string(finding_kind_name(left[0].kind)) + ": " +
                                         left[0].message + ")") +
                     "; fix does not pick an owner for the servers" +
                     (done.empty() ? "" : "; did: " + join(done, "; "))};
}

StepResult Fixer::assign(const std::vector<Slot>& slots) {
  const auto& o = options_.common;
  const auto s = survey_cluster(seed_, o.timeout, o.credentials);
  if (const auto why = unanswered(s); !why.empty()) return {false, why + "; nothing was changed"};
  std::vector<Slot> still;
  for (const Slot x : slots)
    if (s.merged.owner(x) == nullptr) still.push_back(x);
  auto masters = s.merged.masters();
  std::erase_if(masters, [](const Node* m) { return m->failed() || m->pfailed(); });
  if (masters.empty()) return {false, "no healthy master"};
  // Keys of each uncovered slot on each master: a slot goes where its keys are.
  std::map<std::string, std::vector<std::uint64_t>> keys;
  std::map<std::string, std::size_t> load;
  for (const Node* m : masters) {
    NodeClient c;
    if (c.connect(address_of(*m), o.timeout, o.credentials))
      if (auto k = count_keys(c, still)) keys[m->id] = std::move(*k);
    load[m->id] = m->slot_count();
  }
  std::map<std::string, std::vector<Slot>> to;
  for (std::size_t i = 0; i < still.size(); ++i) {
    const Node* best = nullptr;
    std::uint64_t best_keys = 0;
    for (const Node* m : masters) {
      const auto k = keys.count(m->id) ? keys[m->id][i] : 0;
      if (k > best_keys) best = m, best_keys = k;
    }
    if (best == nullptr)
      best = *std::min_element(masters.begin(), masters.end(),
                               [&](const Node* a, const Node* b) { return load[a->id] < load[b->id]; });
    to[best->id].push_back(still[i]);
    ++load[best->id];
  }
  std::vector<std::string> done;
  for (const auto& [id, list] : to) {
    const Node* m = s.merged.find(id);
    NodeClient c;
    if (!c.connect(address_of(*m), o.timeout, o.credentials)) return {false, c.error()};
    std::vector<std::string> cmd{"CLUSTER", "ADDSLOTS"};
    for (const Slot x : list)
      cmd.push_back(std::to_string(x));
    const auto r = c.command(cmd);
    if (!r || r->is_error()) return {false, r ? c.node().str() + ": CLUSTER ADDSLOTS: " + r->str : c.error()};
    done.push_back(format_slot_ranges(slot_ranges(list)) + " to " + short_id(id));
  }
  return {true, done.empty() ? "every slot had an owner by then" : "assigned " + join(done, ", ")};
}

StepResult Fixer::apply(const Step& step, std::ostream& log) {
  const auto& o = options_.common;
  switch (step.kind) {
    case Step::Kind::kAbortMove: {
      MoveOptions recover;
      recover.common = o;
      recover.common.json = false;
      recover.journal = step.journal;
      recover.proxy_token = options_.proxy_token;
      recover.progress = false;
      std::ostringstream said;
      const int rc = run_abort(recover, said, said);
      log << said.str();
      return {rc == 0, rc == 0 ? "undone" : "slotshift abort exited " + std::to_string(rc)};
    }
    case Step::Kind::kRestoreWrites: {
      NodeClient c;
      if (!c.connect(step.node, o.timeout, o.credentials)) return {false, c.error()};
      // Asked again: the move's own undo (an earlier step) may have put it back already.
      const auto now = c.command({"CONFIG", "GET", "min-replicas-to-write"});
      if (!now || now->is_error() || now->elements.size() != 2)
        return {false, now ? c.node().str() + ": CONFIG GET: " + now->str : c.error()};
      if (now->elements[1].str != kRefuseAllWrites)
        return {true, "already min-replicas-to-write " + now->elements[1].str};
      std::vector<std::string> set{"CONFIG", "SET", "min-replicas-to-write", step.value};
      if (!step.lag.empty()) set.insert(set.end(), {"min-replicas-max-lag", step.lag});
      const auto r = c.command(set);
      if (!r || r->is_error()) return {false, r ? c.node().str() + ": CONFIG SET: " + r->str : c.error()};
      return {true, "min-replicas-to-write " + step.value};
    }
    case Step::Kind::kForget:
      return forget(step.node_id);
    case Step::Kind::kSettleOwners:
      return settle_owners();
    case Step::Kind::kCloseSlot: {
      SlotRepairer repair(seed_, o, options_.step_budget);
      std::uint64_t moved = 0, dropped = 0, closed = 0;
      for (const Slot x : step.slots) {
        const auto r = repair.close_slot(x);
        if (!r.ok) return {false, r.summary};
        if (step.slots.size() == 1) return {true, r.summary};
        moved += r.moved;
        dropped += r.dropped;
        closed += r.nothing_to_do ? 0 : 1;
      }
      return {true, std::to_string(closed) + " of the " + std::to_string(step.slots.size()) +
                        " slots closed here (the others were already): " + std::to_string(moved) +
                        " keys moved, " + std::to_string(dropped) + " older copies dropped"};
    }
    case Step::Kind::kDeleteOrphans: {
      SlotRepairer repair(seed_, o, options_.step_budget);
      std::uint64_t deleted = 0;
      for (const Slot x : step.slots) {
        const auto r = repair.delete_orphans(step.node_id, x);
        if (!r.ok) return {false, r.summary};
        deleted += r.deleted;
      }
      return {true, std::to_string(deleted) + " keys deleted"};
    }
    case Step::Kind::kAssign:
      return assign(step.slots);
  }
  return {false, "unknown step"};
}

}  // namespace

int run_fix(const FixOptions& options, std::istream& in, std::ostream& out, std::ostream& err) {
  std::string error;
  const auto seed = parse_host_port(options.common.cluster, error);
  if (!seed) {
    err << "slotshift fix: --cluster: " << error << "\n";
    return kExitUsage;
  }
  const bool json = options.common.json;
  if (json && !options.yes && !options.dry_run) {
    err << "slotshift fix: --json needs --yes or --dry-run (there is no way to ask)\n";
    return kExitUsage;
  }
  const auto h = inspect_cluster(*seed, options.common);
  if (!h.survey.error.empty()) {
    err << "slotshift fix: " << h.survey.error << "\n";
    return kExitRefused;
  }
  nlohmann::json report;
  // Nothing is changed on a cluster that cannot be seen whole: a node that does not answer may hold the
  // newest copy of a key, or a view that would change the plan.
  std::string refusal;
  if (const auto why = unanswered(h.survey); !why.empty())
    refusal =
        "every node must answer before fix changes anything (but nodes the cluster agreed have failed "
        "and that own no slot); " +
        why;
  else if (h.moving)
    refusal =
        "a slotshift move is running (its lease is on the nodes); let it end, or stop it and run fix again";
  Fixer fixer(*seed, options);
  std::vector<const Finding*> left;
  const auto steps = refusal.empty() ? fixer.plan(h, left) : std::vector<Step>{};

  if (json) {
    auto plan = nlohmann::json::array();
    for (const auto& st : steps)
      plan.push_back(st.text);
    report["plan"] = plan;
    auto kept = nlohmann::json::array();
    for (const Finding* f : left)
      kept.push_back({{"kind", std::string(finding_kind_name(f->kind))},
                      {"message", f->message},
                      {"fix", std::string(guide(f->kind).fix)}});
    report["left_as_is"] = kept;
    if (!refusal.empty()) report["refused"] = refusal;
  } else {
    out << "slotshift fix: the cluster seen from " << seed->str() << "\n";
    if (!refusal.empty()) {
      print_health(h, false, out);
      err << "slotshift fix: " << refusal << "\n";
      return kExitRefused;
    }
    if (steps.empty() && h.clean()) {
      out << "nothing to fix: all nodes agree, every slot is covered, nothing is open or left behind\n";
      return kExitDone;
    }
    out << (steps.empty() ? "nothing fix can do:\n" : "plan:\n");
    for (std::size_t i = 0; i < steps.size(); ++i)
      out << "  " << i + 1 << ". " << steps[i].text << "\n";
    if (!left.empty()) out << "left as is:\n";
    for (const Finding* f : left)
      out << "  - " << finding_kind_name(f->kind) << ": " << f->message
          << "\n      fix: " << guide(f->kind).fix << "\n";
  }
  if (!refusal.empty()) {
    report["ok"] = false;
    out << report.dump(2) << "\n";
    return kExitRefused;
  }
  if (options.dry_run || steps.empty()) {
    if (json) {
      report["ok"] = h.clean();
      out << report.dump(2) << "\n";
    }
    return options.dry_run ? kExitDone : kExitFailed;
  }
  if (!options.yes) {
    if (!options.interactive) {
      out << "not applied: nothing was changed; run again with --yes to apply this plan\n";
      return kExitNotApplied;
    }
    out << "apply this plan? [y/N] " << std::flush;
    std::string answer;
    std::getline(in, answer);
    if (answer != "y" && answer != "Y" && answer != "yes") {
      out << "not applied: nothing was changed\n";
      return kExitNotApplied;
    }
  }

  auto applied = nlohmann::json::array();
  bool all_ok = true;
  std::ostringstream log;
  // One changer at a time: fix holds the same lease a move does on every master, so that no move starts
  // under it and no second fix acts at once. Taken after the unfinished moves are undone, since their undo
  // takes the lease itself.
  MoveLease lease("fix-" + std::to_string(::getpid()) + "-" +
                      std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::system_clock::now().time_since_epoch())
                                         .count()),
                  std::chrono::seconds(30), options.common.timeout, options.common.credentials);
  bool leased = false;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    if (!leased && steps[i].kind != Step::Kind::kAbortMove) {
      const auto now = survey_cluster(*seed, options.common.timeout, options.common.credentials);
      std::vector<HostPort> masters;
      for (const Node* m : now.merged.masters())
        if (own_view(now, m->id) != nullptr) masters.push_back(address_of(*m));
      if (!lease.acquire(masters)) {
        err << "slotshift fix: " << lease.error() << "; stopped before step " << i + 1 << "\n";
        all_ok = false;
        break;
      }
      leased = true;
    }
    if (leased && !lease.held()) {
      err << "slotshift fix: lost its lease (" << lease.lost_reason() << "); stopped before step " << i + 1
          << "\n";
      all_ok = false;
      break;
    }
    const auto r = fixer.apply(steps[i], json ? static_cast<std::ostream&>(log) : out);
    all_ok = all_ok && r.ok;
    if (json)
      applied.push_back({{"step", steps[i].text}, {"ok", r.ok}, {"outcome", r.outcome}});
    else
      out << "  " << i + 1 << ". " << (r.ok ? "done: " : "FAILED: ") << r.outcome << "\n";
  }
  lease.release();
  // The last steps' changes reach every node by gossip; the check below should see them all.
  wait_agreement(*seed, options.common, Clock::now() + std::chrono::seconds(10));
  const auto after = inspect_cluster(*seed, options.common);
  if (json) {
    report["applied"] = applied;
    if (!log.str().empty()) report["log"] = log.str();
    std::ostringstream again;
    print_health(after, true, again);
    report["after"] = nlohmann::json::parse(again.str());
    report["ok"] = all_ok && after.clean();
    out << report.dump(2) << "\n";
  } else {
    out << "check after fix:\n";
    print_health(after, false, out);
  }
  return all_ok && after.clean() ? kExitDone : kExitFailed;
}

}  // namespace slotshift
