#include "orchestrator/slot_repair.h"

#include <algorithm>
#include <thread>

#include "orchestrator/cluster_check.h"
#include "orchestrator/move_job.h"

namespace slotshift {
namespace {

constexpr std::size_t kKeysPerMigrate = 256;

// The node's own view of `slot`: what it migrates or imports it to or from ("" when neither).
struct OpenState {
  std::string migrating_to, importing_from;
};

OpenState open_state(const ClusterSurvey& s, const std::string& id, Slot slot) {
  OpenState o;
  const Topology* v = own_view(s, id);
  const Node* self = v ? v->myself() : nullptr;
  if (self == nullptr) return o;
  if (auto it = self->migrating.find(slot); it != self->migrating.end()) o.migrating_to = it->second;
  if (auto it = self->importing.find(slot); it != self->importing.end()) o.importing_from = it->second;
  return o;
}

// Every view names the same owner for `slot` (nullptr when none does): "" if so, else who says what.
std::string owner_disagreement(const ClusterSurvey& s, Slot slot) {
  const Node* merged = s.merged.owner(slot);
  for (const auto& v : s.views) {
    // A node ignores what gossip says about a slot it imports: its view of that slot's owner is whatever it
    // was when the import began (the failed source, say). close_slot tells it the owner.
    if (const Node* self = v.myself(); self && self->importing.count(slot)) continue;
    const Node* o = v.owner(slot);
    if ((o == nullptr) != (merged == nullptr) || (o && o->id != merged->id))
      return short_id(v.myself_id) + " names " + (o ? short_id(o->id) : std::string("no owner")) + ", " +
             "the cluster " + (merged ? short_id(merged->id) : std::string("no owner"));
  }
  return "";
}

}  // namespace

SlotRepairer::SlotRepairer(const HostPort& seed, const CommonOptions& options,
                           std::chrono::milliseconds budget)
    : seed_(seed), options_(options), budget_(budget) {}

NodeClient* SlotRepairer::client(const HostPort& node, std::string& error) {
  auto& c = clients_[node.str()];
  if (!c.usable() || !(c.node() == node)) {
    c = NodeClient();
    if (!c.connect(node, options_.timeout, options_.credentials)) {
      error = c.error();
      return nullptr;
    }
  }
  return &c;
}

std::optional<std::uint64_t> SlotRepairer::count(const HostPort& node, Slot slot, std::string& error) {
  NodeClient* c = client(node, error);
  if (c == nullptr) return std::nullopt;
  const auto n = c->command({"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)});
  if (!n || n->is_error()) {
    error = n ? node.str() + ": " + n->str : c->error();
    return std::nullopt;
  }
  return static_cast<std::uint64_t>(std::max<std::int64_t>(n->integer, 0));
}

bool SlotRepairer::setslot(const HostPort& node, const std::vector<std::string>& args, std::string& error) {
  NodeClient* c = client(node, error);
  if (c == nullptr) return false;
  std::vector<std::string> cmd{"CLUSTER", "SETSLOT"};
  cmd.insert(cmd.end(), args.begin(), args.end());
  const auto r = c->command(cmd);
  if (!r || r->is_error()) {
    error = node.str() + ": " + join(cmd) + ": " + (r ? r->str : c->error());
    return false;
  }
  return true;
}

SlotRepairer::Transfer SlotRepairer::transfer(const HostPort& from, const Node& to, Slot slot, bool replace) {
  Transfer t;
  const std::string s = std::to_string(slot);
  for (;;) {
    if (expired()) {
      t.error = "gave up after " + std::to_string(budget_.count()) + " ms with keys of slot " + s +
                " still on " + from.str();
      return t;
    }
    NodeClient* src = client(from, t.error);
    if (src == nullptr) return t;
    const auto listed = src->command({"CLUSTER", "GETKEYSINSLOT", s, std::to_string(kKeysPerMigrate)});
    if (!listed || listed->is_error()) {
      t.error = listed ? from.str() + ": CLUSTER GETKEYSINSLOT: " + listed->str : src->error();
      return t;
    }
    if (listed->elements.empty()) return t;
    std::vector<std::string> keys;
    for (const auto& e : listed->elements)
      keys.push_back(e.str);
    // MIGRATE runs on a node where the slot is open whether or not the node owns it; the destination
    // receives RESTORE-ASKING, which an importing node accepts.
    std::vector<std::string> migrate{"MIGRATE", to.ip, std::to_string(to.port),
                                     "",        "0",   std::to_string(options_.timeout.count())};
    if (replace) migrate.push_back("REPLACE");
    if (!options_.credentials.password.empty()) {
      if (options_.credentials.user.empty()) {
        migrate.insert(migrate.end(), {"AUTH", options_.credentials.password});
      } else {
        migrate.insert(migrate.end(), {"AUTH2", options_.credentials.user, options_.credentials.password});
      }
    }
    migrate.push_back("KEYS");
    migrate.insert(migrate.end(), keys.begin(), keys.end());
    const auto r = src->command(migrate);
    if (!r) {
      t.error = src->error();
      return t;
    }
    if (!r->is_error()) {
      if (r->str != "NOKEY") t.moved += keys.size();
      continue;
    }
    // BUSYKEY: the destination holds some of the keys. MIGRATE deleted on `from` the keys it did copy; the
    // others are still there. The destination's copy is the newer one (see slot_repair.h): delete ours.
    if (replace || r->str.find("BUSYKEY") == std::string::npos) {
      t.error = from.str() + ": MIGRATE to " + to.ip + ":" + std::to_string(to.port) + ": " + r->str;
      return t;
    }
    NodeClient* dst = client(address_of(to), t.error);
    if (dst == nullptr) return t;
    std::vector<std::vector<std::string>> exists;
    for (const auto& k : keys) {
      exists.push_back({"ASKING"});
      exists.push_back({"EXISTS", k});
    }
    const auto on_dst = dst->pipeline(exists);
    const auto on_src = src->pipeline(exists);
    if (!on_dst || !on_src) {
      t.error = !on_dst ? dst->error() : src->error();
      return t;
    }
    for (const auto* replies : {&*on_dst, &*on_src})
      for (const auto& reply : *replies)
        if (reply.is_error()) {
          t.error = "EXISTS after a BUSYKEY: " + reply.str;
          return t;
        }
    std::vector<std::vector<std::string>> drop;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if ((*on_src)[2 * i + 1].integer != 1) ++t.moved;
      if ((*on_dst)[2 * i + 1].integer != 1 || (*on_src)[2 * i + 1].integer != 1) continue;
      drop.push_back({"ASKING"});
      drop.push_back({"DEL", keys[i]});
    }
    if (drop.empty()) continue;
    const auto dropped = src->pipeline(drop);
    if (!dropped) {
      t.error = src->error();
      return t;
    }
    for (std::size_t i = 1; i < dropped->size(); i += 2) {
      if ((*dropped)[i].is_error()) {
        t.error = from.str() + ": DEL: " + (*dropped)[i].str;
        return t;
      }
      t.dropped += static_cast<std::uint64_t>(std::max<std::int64_t>((*dropped)[i].integer, 0));
    }
  }
}

SlotDecision decide_open_slot(const ClusterSurvey& survey, Slot slot) {
  SlotDecision d;
  auto refuse = [&](std::string why) {
    d.kind = SlotDecision::kRefuse;
    d.why = std::move(why);
    return d;
  };
  if (auto why = owner_disagreement(survey, slot); !why.empty())
    return refuse("the nodes disagree on its owner (" + why + ")");
  d.owner = survey.merged.owner(slot);
  if (d.owner == nullptr) return refuse("no master owns it: give it an owner first (--assign-uncovered)");
  if (d.owner->failed()) return refuse("its owner has failed");
  for (const auto& n : survey.merged.nodes) {
    // Valkey 8 and later replicate SETSLOT to replicas: a replica's open slot is its master's, cleared with
    // it (and a replica refuses SETSLOT itself, and writes).
    if (n.id == d.owner->id || n.port == 0 || !n.is_master()) continue;
    const OpenState o = open_state(survey, n.id, slot);
    if (!o.importing_from.empty())
      d.importers.push_back(&n);
    else if (!o.migrating_to.empty())
      d.others_open.push_back(&n);
  }
  const std::string migrating_to = open_state(survey, d.owner->id, slot).migrating_to;
  d.owner_migrating = !migrating_to.empty();
  if (!d.owner_migrating && d.importers.empty() && d.others_open.empty()) {
    d.kind = SlotDecision::kNothing;
    return d;
  }
  if (d.owner_migrating) {
    // The owner sends clients of every key it lacks to this node (ASK): what they wrote there is live, and
    // only finishing the migration keeps it. (Keys cannot go back into an owner that is MIGRATING: it
    // answers a RESTORE of a key it lacks with ASK.) A node that has become a replica hands over to its
    // master, which has its data.
    const Node* to = survey.merged.find(migrating_to);
    if (to != nullptr && to->is_replica()) to = survey.merged.find(to->master_id);
    if (to != nullptr && to->is_master() && !to->failed() && to->id != d.owner->id) {
      d.kind = SlotDecision::kFinish;
      d.to = to;
      return d;
    }
    if (to != nullptr)
      return refuse("the node the owner migrates it to (" + short_id(migrating_to) + ") is failing");
    // The node is gone from the cluster (forgotten): nobody can be served there any more. But a master
    // holding keys of the slot may be its promoted replica, with the keys clients wrote through ASK: that
    // cannot be told from stale keys, so it is left to a person.
    d.kind = SlotDecision::kUndo;
    d.target_gone = true;
    return d;
  }
  d.kind = SlotDecision::kUndo;
  return d;
}

RepairOutcome SlotRepairer::close_slot(Slot slot) {
  deadline_ = std::chrono::steady_clock::now() + budget_;
  RepairOutcome out;
  const std::string s = std::to_string(slot);
  auto fail = [&](std::string why) {
    out.ok = false;
    out.summary = "slot " + s + ": " + std::move(why);
    return out;
  };
  const auto survey = survey_cluster(seed_, options_.timeout, options_.credentials);
  if (const auto why = unanswered(survey); !why.empty()) return fail(why + "; nothing was changed");
  const SlotDecision d = decide_open_slot(survey, slot);
  if (d.kind == SlotDecision::kRefuse) return fail(d.why + "; nothing was changed");
  if (d.kind == SlotDecision::kNothing) {
    out.ok = true;
    out.nothing_to_do = true;
    out.summary = "slot " + s + " is not open any more; nothing to do";
    return out;
  }
  const Node* owner = d.owner;
  std::string error;
  const HostPort owner_at = address_of(*owner);
  // An importer that names another owner (it ignored the gossip of a failover while importing) believes
  // the cluster down for the slot, and answers even MIGRATE with CLUSTERDOWN: tell it the owner first. It
  // stays IMPORTING.
  for (const Node* n : d.importers)
    if (const Topology* v = own_view(survey, n->id)) {
      const Node* named = v->owner(slot);
      if ((named == nullptr || named->id != owner->id) &&
          !setslot(address_of(*n), {s, "NODE", owner->id}, error))
        return fail(error);
    }

  if (d.kind == SlotDecision::kFinish) {
    const Node* to = d.to;
    const HostPort to_at = address_of(*to);
    // `to` must import the slot for the keys to land there (RESTORE-ASKING), and for its claim to bump its
    // config epoch.
    if (open_state(survey, to->id, slot).importing_from.empty() &&
        !setslot(to_at, {s, "IMPORTING", owner->id}, error))
      return fail(error);
    // The owner's ASK goes to `to` now (it may have named a node that became `to`'s replica).
    if (open_state(survey, owner->id, slot).migrating_to != to->id &&
        !setslot(owner_at, {s, "MIGRATING", to->id}, error))
      return fail(error);
    // Keys of other importers no client reaches: onto `to` without overwriting, `to` serving what the owner
    // lacks, and the owner's copies replacing them below.
    for (const Node* n : d.importers) {
      if (n->id == to->id) continue;
      if (n->failed()) return fail("importer " + short_id(n->id) + " has failed; nothing more was changed");
      const auto moved = transfer(address_of(*n), *to, slot, false);
      out.moved += moved.moved;
      out.dropped += moved.dropped;
      if (!moved.error.empty()) return fail(moved.error);
      if (!setslot(address_of(*n), {s, "STABLE"}, error)) return fail(error);
    }
    // Then the owner's, which clients are served: they replace any other copy. MIGRATING sends every key the
    // owner lacks to `to`, so the owner only loses keys from here on.
    const auto moved = transfer(owner_at, *to, slot, true);
    out.moved += moved.moved;
    if (!moved.error.empty()) return fail(moved.error);
    // The claim on the importing node bumps its config epoch, so that every node lets it win; the owner, told
    // next, refuses only while it holds keys of the slot, which it cannot gain while MIGRATING.
    if (!setslot(to_at, {s, "NODE", to->id}, error)) return fail(error);
    if (!setslot(owner_at, {s, "NODE", to->id}, error)) return fail(error);
    for (const Node* m : survey.merged.masters()) {
      if (m->id == owner->id || m->id == to->id || m->failed()) continue;
      std::string ignored;  // the others learn it by gossip anyway; telling them is only faster
      setslot(address_of(*m), {s, "NODE", to->id}, ignored);
    }
    for (const Node* n : d.others_open)
      if (!setslot(address_of(*n), {s, "STABLE"}, error)) return fail(error);
    out.ok = true;
    out.summary = "slot " + s + ": migration finished to " + short_id(to->id) + " (" +
                  std::to_string(out.moved) + " keys moved from the owner and importers, " +
                  std::to_string(out.dropped) + " older copies dropped)";
    return out;
  }

  // Undo: the owner keeps the slot, and serves every key of it already (it sends no client anywhere, or only
  // to a node that is gone). The importers' keys reached no client: a key the owner lacks is copied back, a
  // key it has keeps the owner's value.
  if (d.target_gone) {
    for (const Node* m : survey.merged.masters()) {
      if (m->id == owner->id || std::find(d.importers.begin(), d.importers.end(), m) != d.importers.end())
        continue;
      const auto n = count(address_of(*m), slot, error);
      if (!n) return fail(error);
      if (*n > 0)
        return fail("the owner migrates it to a node no longer in the cluster, and " + short_id(m->id) +
                    " holds keys of it: they may be the live copies written there through ASK (its promoted "
                    "replica) or stale ones; slotshift does not guess. Nothing was changed");
    }
    if (!setslot(owner_at, {s, "STABLE"}, error)) return fail(error);
  }
  for (const Node* n : d.importers) {
    if (n->failed()) return fail("importer " + short_id(n->id) + " has failed; nothing more was changed");
    const HostPort at = address_of(*n);
    const auto moved = transfer(at, *owner, slot, false);
    out.moved += moved.moved;
    out.dropped += moved.dropped;
    if (!moved.error.empty()) return fail(moved.error);
    if (!setslot(at, {s, "STABLE"}, error)) return fail(error);
  }
  for (const Node* n : d.others_open)
    if (!setslot(address_of(*n), {s, "STABLE"}, error)) return fail(error);
  out.ok = true;
  out.summary = "slot " + s + ": migration undone, " + short_id(owner->id) + " keeps it (" +
                std::to_string(out.moved) + " keys the owner lacked copied back, " +
                std::to_string(out.dropped) + " older copies dropped)";
  return out;
}

RepairOutcome SlotRepairer::delete_orphans(const std::string& node_id, Slot slot) {
  deadline_ = std::chrono::steady_clock::now() + budget_;
  RepairOutcome out;
  const std::string s = std::to_string(slot);
  auto fail = [&](std::string why) {
    out.ok = false;
    out.summary = "orphans of slot " + s + " on " + short_id(node_id) + ": " + std::move(why);
    return out;
  };
  const auto survey = survey_cluster(seed_, options_.timeout, options_.credentials);
  if (const auto why = unanswered(survey); !why.empty()) return fail(why + "; nothing was changed");
  // Its own view, now: a node that owns or imports the slot holds live keys, whatever the report said.
  const Topology* own = own_view(survey, node_id);
  const Node* self = own ? own->myself() : nullptr;
  if (self == nullptr || self->port == 0) return fail("the node is no longer in the cluster");
  // A replica's keys go through its master: what the master deletes, the replica deletes.
  const Node* master = self->is_master() ? self : survey.merged.find(self->master_id);
  if (master == nullptr || master->port == 0 || master->failed() || master->pfailed())
    return fail("its master does not answer; nothing was changed");
  const Topology* master_view = own_view(survey, master->id);
  if (master_view == nullptr) master_view = own;
  const Node* master_self = master_view->myself();
  const Node* owner = master_view->owner(slot);
  if (master_self == nullptr || (owner != nullptr && owner->id == master->id) ||
      master_self->importing.count(slot) || master_self->migrating.count(slot))
    return fail("the slot is served by " + short_id(master->id) +
                " now: its keys are live; nothing was changed");
  for (const auto& v : survey.views)
    if (const Node* n = v.myself(); n && (n->importing.count(slot) || n->migrating.count(slot)))
      return fail("the slot is open on " + short_id(n->id) + ": closing it takes care of these keys");
  // Keys of a slot no master owns are no orphans: they may be its only copies.
  if (survey.merged.owner(slot) == nullptr) return fail("no master owns the slot; nothing was changed");
  // Any master the node knows serves as the IMPORTING source: IMPORTING is set only so that ASKING reaches
  // the keys, and no client is sent here, since no owner migrates the slot to this node.
  std::string source = owner ? owner->id : "";
  for (const auto& n : master_view->nodes)
    if (source.empty() && n.id != master->id && n.is_master()) source = n.id;
  if (source.empty()) return fail("the node knows no other master");
  const HostPort at = address_of(*master), listed_at = address_of(*self);
  const bool replica = self->id != master->id;
  std::string error;
  if (!setslot(at, {s, "IMPORTING", source}, error)) return fail(error);
  for (;;) {
    NodeClient* lister = client(listed_at, error);
    if (lister == nullptr) break;
    const auto listed = lister->command({"CLUSTER", "GETKEYSINSLOT", s, "512"});
    if (!listed || listed->is_error()) {
      error = listed ? listed->str : lister->error();
      break;
    }
    if (listed->elements.empty()) break;
    NodeClient* c = client(at, error);
    if (c == nullptr) break;
    std::vector<std::vector<std::string>> dels;
    for (const auto& k : listed->elements) {
      // The master may not hold a replica's orphan at all, and a DEL that deletes nothing is not replicated:
      // set the key first, so that both go down the stream and the replica ends without it.
      if (replica) {
        dels.push_back({"ASKING"});
        dels.push_back({"SET", k.str, "", "PX", "1"});  // if fix dies before the DEL, it goes by itself
      }
      dels.push_back({"ASKING"});
      dels.push_back({"DEL", k.str});
    }
    const auto r = c->pipeline(dels);
    if (!r) {
      error = c->error();
      break;
    }
    for (std::size_t i = 1; i < r->size(); i += 2)
      if ((*r)[i].is_error()) error = (*r)[i].str;
    if (!error.empty()) break;
    out.deleted += listed->elements.size();
    // A replica applies the deletes when they reach it: wait for them before listing again.
    if (replica) {
      const auto left = count(listed_at, slot, error);
      for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
           left && *left != 0 && std::chrono::steady_clock::now() < until;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        const auto again = count(listed_at, slot, error);
        if (!again || *again < *left) break;
      }
    }
    if (expired()) break;
  }
  std::string stable_error;
  // Cleared whatever happened above: the node must not stay open.
  const bool stable = setslot(at, {s, "STABLE"}, stable_error);
  if (!error.empty()) return fail(error + (stable ? "" : "; and " + stable_error));
  if (!stable) return fail(stable_error);
  if (expired()) return fail("gave up after " + std::to_string(budget_.count()) + " ms");
  out.ok = true;
  out.summary = "slot " + s + ": " + std::to_string(out.deleted) + " orphan keys deleted on " +
                short_id(node_id) + " " + listed_at.str() +
                (replica ? " (through its master " + short_id(master->id) + ")" : "");
  return out;
}

}  // namespace slotshift
