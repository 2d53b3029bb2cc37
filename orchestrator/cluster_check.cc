#include "orchestrator/cluster_check.h"
#include "orchestrator/exit_status.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/server_info.h"
#include "orchestrator/finding_guide.h"
#include "orchestrator/move_job.h"
#include "orchestrator/move_lease.h"

namespace slotshift {
namespace {

// Keys in db0 from INFO keyspace ("db0:keys=12,expires=0,avg_ttl=0"); 0 when none.
std::uint64_t db0_keys(NodeClient& c) {
  const auto info = c.command({"INFO", "keyspace"});
  if (!info || info->is_error()) return 1;  // unknown: count slot by slot
  const auto db0 = info_field(info->str, "db0");
  if (!db0.starts_with("keys=")) return 0;
  return std::strtoull(std::string(db0.substr(5)).c_str(), nullptr, 10);
}

// The slots that `owner_id` owns or imports in `view`, the view of the node asked (its own open slots are on
// its myself line) merged with what the whole survey knows of the owner's open slots.
std::vector<bool> served_slots(const Topology& view, const Topology& merged, const std::string& owner_id) {
  std::vector<bool> served(kSlotCount, false);
  for (int s = 0; s < kSlotCount; ++s) {
    const Node* o = view.owner(static_cast<Slot>(s));
    // Keys of a slot no master owns are its only copies, not orphans (check reports the slot uncovered).
    if ((o != nullptr && o->id == owner_id) || merged.owner(static_cast<Slot>(s)) == nullptr)
      served[static_cast<std::size_t>(s)] = true;
  }
  for (const Topology* t : {&view, &merged})
    if (const Node* n = t->find(owner_id))
      for (const auto& [slot, peer] : n->importing)
        served[slot] = true;
  return served;
}

// Keys of the node `c` is connected to in slots `served` does not cover, counted slot by slot.
std::optional<std::vector<std::pair<Slot, std::uint64_t>>> count_orphans(NodeClient& c,
                                                                         const std::vector<bool>& served) {
  std::vector<std::pair<Slot, std::uint64_t>> out;
  if (db0_keys(c) == 0) return out;
  std::vector<Slot> others;
  for (int s = 0; s < kSlotCount; ++s)
    if (!served[static_cast<std::size_t>(s)]) others.push_back(static_cast<Slot>(s));
  constexpr std::size_t kChunk = 4096;  // one round trip each; replies of a few bytes
  for (std::size_t at = 0; at < others.size(); at += kChunk) {
    const std::vector<Slot> chunk(
        others.begin() + static_cast<std::ptrdiff_t>(at),
        others.begin() + static_cast<std::ptrdiff_t>(std::min(at + kChunk, others.size())));
    const auto counts = count_keys(c, chunk);
    if (!counts) return std::nullopt;
    for (std::size_t i = 0; i < chunk.size(); ++i)
      if ((*counts)[i] != 0) out.emplace_back(chunk[i], (*counts)[i]);
  }
  return out;
}

Finding orphan_finding(const Topology& t, const OrphanKeys& o) {
  std::vector<Slot> slots;
  for (const auto& [s, n] : o.slots)
    slots.push_back(s);
  const auto ranges = slot_ranges(slots);
  std::string per_slot;
  for (std::size_t i = 0; i < o.slots.size() && i < 5; ++i)
    per_slot +=
        (i ? ", " : "") + std::to_string(o.slots[i].second) + " in " + std::to_string(o.slots[i].first);
  if (o.slots.size() > 5) per_slot += ", ...";
  const Node* n = t.find(o.node_id);
  Finding f;
  f.kind = FindingKind::kOrphanKeys;
  f.node_id = o.node_id;
  f.slots = ranges;
  f.keys = o.keys();
  f.message = (o.replica ? "replica " : "master ") + short_id(o.node_id) + " " + o.node.str() + " holds " +
              std::to_string(f.keys) + " keys in " + std::to_string(o.slots.size()) + " slot(s) " +
              (o.replica ? "its master does not own" : "it does not own") + " (" + per_slot + ")";
  if (n != nullptr && o.replica && !n->master_id.empty()) f.peer_id = n->master_id;
  return f;
}

}  // namespace

const Topology* own_view(const ClusterSurvey& s, const std::string& id) {
  for (const auto& v : s.views)
    if (v.myself_id == id) return &v;
  return nullptr;
}

// Nodes that do not answer and that the cluster has agreed are down (flag fail), owning no slot: their
// replicas took over (or they were replicas). Nothing of theirs is needed, and they can be forgotten.
std::vector<const Node*> forgettable(const ClusterSurvey& s) {
  std::vector<const Node*> out;
  for (const auto& n : s.merged.nodes) {
    if (n.port == 0 || n.in_handshake()) continue;
    if (!answered(s, n.id) && n.failed() && n.slots.empty()) out.push_back(&n);
  }
  return out;
}

std::string unanswered(const ClusterSurvey& s) {
  if (!s.error.empty()) return s.error;
  if (!s.loading.empty()) return s.loading.front();
  const auto gone = forgettable(s);
  for (const auto& n : s.merged.nodes) {
    if (n.port == 0 || n.in_handshake() || answered(s, n.id)) continue;
    if (std::find(gone.begin(), gone.end(), &n) == gone.end())
      return short_id(n.id) + " " + n.address() + ":" + std::to_string(n.port) + " does not answer" +
             (n.failed()    ? " and still owns slots"
              : n.pfailed() ? " (suspected down, not yet agreed)"
                            : "");
  }
  return "";
}

std::uint64_t OrphanKeys::keys() const {
  std::uint64_t n = 0;
  for (const auto& [s, k] : slots)
    n += k;
  return n;
}

ClusterHealth inspect_cluster(const HostPort& seed, const CommonOptions& options) {
  ClusterHealth h;
  h.survey = survey_cluster(seed, options.timeout, options.credentials);
  const auto& s = h.survey;
  if (!s.error.empty()) return h;
  h.findings = check(s.merged);
  for (auto& f : compare_views(s.views))
    h.findings.push_back(std::move(f));
  for (const auto& u : s.unreachable)
    h.findings.push_back({FindingKind::kNodeUnreachable, u + " does not answer", {}, {}, {}, 0, {}});
  for (const auto& l : s.loading)
    h.findings.push_back({FindingKind::kNodeLoading, l + "; its view could not be read", {}, {}, {}, 0, {}});
  add_node_findings(h, options);
  return h;
}

void add_node_findings(ClusterHealth& h, const CommonOptions& options) {
  const auto& s = h.survey;
  std::set<std::string> live_moves;
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  for (const auto& view : s.views) {
    const Node* self = view.myself();
    if (self == nullptr || self->port == 0) continue;
    const HostPort where{self->address(), self->port};
    NodeClient c;
    if (!c.connect(where, options.timeout, options.credentials)) continue;

    // Orphans: a master's keys outside what it owns or imports in its own view; a replica's outside what its
    // master does.
    const std::string& owner_id = self->is_replica() ? self->master_id : self->id;
    if (!owner_id.empty()) {
      OrphanKeys o{self->id, where, self->is_replica(), {}};
      if (auto counted = count_orphans(c, served_slots(view, s.merged, owner_id))) {
        o.slots = std::move(*counted);
        if (!o.slots.empty()) {
          h.findings.push_back(orphan_finding(s.merged, o));
          h.orphans.push_back(std::move(o));
        }
      }
    }
    if (!self->is_master()) continue;

    // A master that refuses every write: min-replicas-to-write above the replicas in sync with it.
    const auto conf = c.command({"CONFIG", "GET", "min-replicas-to-write"});
    if (conf && !conf->is_error() && conf->elements.size() == 2 && conf->elements[1].str != "0") {
      const auto info = c.command({"INFO", "replication"});
      // Replicas within min-replicas-max-lag: the field is there only while min-replicas-to-write is set.
      const std::int64_t good =
          info && !info->is_error() ? info_integer(info->str, "min_slaves_good_slaves") : -1;
      const long long wanted = std::strtoll(conf->elements[1].str.c_str(), nullptr, 10);
      const long long in_sync = std::max<std::int64_t>(good, 0);
      if (wanted > in_sync) {
        const bool ours = conf->elements[1].str == kRefuseAllWrites;
        RefusingMaster r{self->id, where, conf->elements[1].str, static_cast<int>(in_sync), {}, {}};
        if (ours) {
          std::string ignored;
          for (const auto& path : all_journals(ignored)) {
            std::string why;
            const auto state = read_journal(path, why);
            if (!state) continue;
            if (auto it = state->restore_min_replicas.find(self->id);
                it != state->restore_min_replicas.end()) {
              std::tie(r.restore_to_write, r.restore_max_lag) = it->second;
              break;
            }
          }
        }
        Finding f{FindingKind::kRefusingWrites,
                  where.str() + " refuses every write (master " + short_id(self->id) +
                      "): min-replicas-to-write " + conf->elements[1].str + " with " +
                      std::to_string(in_sync) + " replica(s) in sync" +
                      (ours ? ", left by a slotshift move killed during a cutover (slotshift fix puts back " +
                                  (r.restore_to_write.empty()
                                       ? std::string("0, the server's default; no journal here "
                                                     "recorded the value from before")
                                       : "the value its journal recorded, " + r.restore_to_write) +
                                  "; `CONFIG SET min-replicas-to-write 0` is the server's default)"
                            : ""),
                  self->id,
                  {},
                  self->slots,
                  0,
                  conf->elements[1].str};
        h.findings.push_back(std::move(f));
        h.refusing.push_back(std::move(r));
      }
    }
    // Moves that run: their lease is a named connection on the nodes they change.
    for (const auto& lease : leases_on(c)) {
      if (!live_moves.insert(lease.move_id).second) continue;
      h.moving = true;
      h.findings.push_back({FindingKind::kMoveInProgress,
                            "slotshift move " + lease.move_id + " from " + lease.host +
                                " holds its lease on " + where.str() +
                                (lease.until_ms >= now_ms ? "" : " (expired: its holder has not renewed it)"),
                            self->id,
                            {},
                            {},
                            0,
                            lease.move_id});
    }
  }

  // Moves of this cluster killed on this machine: their journal neither ended nor was undone.
  std::string error;
  for (const auto& path : unfinished_journals(error)) {
    std::string why;
    auto state = read_journal(path, why);
    if (!state || s.merged.find(state->target_id) == nullptr || live_moves.count(state->move_id)) continue;
    std::vector<Slot> slots;
    for (const auto& src : state->sources)
      slots.insert(slots.end(), src.slots.begin(), src.slots.end());
    std::sort(slots.begin(), slots.end());
    h.findings.push_back({FindingKind::kMoveUnfinished,
                          "slotshift move " + state->move_id + " to " + short_id(state->target_id) + " " +
                              state->target_address + " stopped at \"" + state->last_step +
                              "\" without ending or being undone (journal " + path + ")",
                          state->target_id,
                          {},
                          slot_ranges(slots),
                          0,
                          path});
    h.unfinished.push_back({path, std::move(*state)});
  }
}

void print_health(const ClusterHealth& h, bool json, std::ostream& out) {
  const auto& s = h.survey;
  if (json) {
    nlohmann::json j;
    j["ok"] = h.clean();
    j["nodes_asked"] = s.views.size();
    auto list = nlohmann::json::array();
    for (const auto& f : h.findings) {
      const auto& g = guide(f.kind);
      nlohmann::json e{{"kind", std::string(finding_kind_name(f.kind))},
                       {"message", f.message},
                       {"meaning", std::string(g.meaning)},
                       {"clients_see", std::string(g.clients_see)},
                       {"fix", std::string(g.fix)}};
      if (!f.node_id.empty()) e["node_id"] = f.node_id;
      if (!f.peer_id.empty()) e["peer_id"] = f.peer_id;
      if (const Node* n = f.node_id.empty() ? nullptr : s.merged.find(f.node_id); n != nullptr && n->port)
        e["node"] = n->address() + ":" + std::to_string(n->port);
      if (!f.slots.empty()) e["slots"] = format_slot_ranges(f.slots);
      if (f.kind == FindingKind::kOrphanKeys) e["keys"] = f.keys;
      if (!f.detail.empty()) e["detail"] = f.detail;
      list.push_back(std::move(e));
    }
    j["findings"] = list;
    j["unreachable"] = s.unreachable;
    j["loading"] = s.loading;
    auto refusing = nlohmann::json::array();
    for (const auto& r : h.refusing)
      refusing.push_back(r.node.str());
    j["refusing_writes"] = refusing;
    out << j.dump(2) << "\n";
    return;
  }
  out << "asked " << s.views.size() << " nodes; " << covered_slots(s.merged) << " of " << kSlotCount
      << " slots covered\n";
  for (const auto& f : h.findings) {
    const auto& g = guide(f.kind);
    out << "  " << finding_kind_name(f.kind) << ": " << f.message << "\n"
        << "      means: " << g.meaning << "\n"
        << "      clients see: " << g.clients_see << "\n"
        << "      fix: " << g.fix << "\n";
  }
  out << (h.clean() ? "OK: all nodes agree, every slot is covered, nothing is open or left behind\n"
                    : "NOT OK: " + std::to_string(h.findings.size()) + " problem(s)\n");
}

int run_check(const CommonOptions& options, std::ostream& out, std::ostream& err) {
  std::string error;
  const auto seed = parse_host_port(options.cluster, error);
  if (!seed) {
    err << "slotshift check: --cluster: " << error << "\n";
    return kExitUsage;
  }
  const auto h = inspect_cluster(*seed, options);
  if (!h.survey.error.empty()) {
    err << "slotshift check: " << h.survey.error << "\n";
    return kExitFailed;
  }
  print_health(h, options.json, out);
  return h.clean() ? kExitDone : kExitFailed;
}

}  // namespace slotshift
