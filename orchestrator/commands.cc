#include "orchestrator/commands.h"
#include "orchestrator/exit_status.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "orchestrator/move_lease.h"

namespace slotshift {
namespace {

// One node's CLUSTER NODES, waiting until `deadline` for a node that is loading its dataset; `loading` says
// it still was at the deadline.
std::optional<Topology> read_nodes(NodeClient& client, std::chrono::steady_clock::time_point deadline,
                                   std::string& error, bool& loading) {
  auto reply = client.command_when_loaded({"CLUSTER", "NODES"}, deadline);
  loading = reply && is_loading(*reply);
  if (!reply) {
    error = client.error();
    return std::nullopt;
  }
  if (reply->is_error()) {
    error = client.node().str() + ": CLUSTER NODES: " + reply->str;
    return std::nullopt;
  }
  auto parsed = parse_cluster_nodes(*reply);
  if (!parsed.ok()) {
    error = client.node().str() + ": CLUSTER NODES: " + parsed.error;
    return std::nullopt;
  }
  return std::move(parsed.topology);
}

std::string still_loading(const HostPort& node, std::chrono::milliseconds waited) {
  return node.str() + " is still loading its dataset (LOADING) after " + std::to_string(waited.count()) +
         " ms";
}

nlohmann::json node_json(const Node& n) {
  nlohmann::json j;
  j["id"] = n.id;
  j["address"] = n.address() + ":" + std::to_string(n.port);
  j["role"] = std::string(role_name(n.role));
  if (!n.master_id.empty()) j["master_id"] = n.master_id;
  if (n.config_epoch) j["config_epoch"] = *n.config_epoch;
  if (n.flags) j["flags"] = format_flags(*n.flags);
  if (n.link != LinkState::kUnknown) j["link"] = std::string(link_state_name(n.link));
  if (n.health != Health::kUnknown) j["health"] = std::string(health_name(n.health));
  if (n.replication_offset) j["replication_offset"] = *n.replication_offset;
  auto slots = nlohmann::json::array();
  for (const auto& r : n.slots)
    slots.push_back({r.first, r.last});
  j["slots"] = slots;
  j["slot_count"] = n.slot_count();
  if (n.open_slots_known) {
    auto migrating = nlohmann::json::object(), importing = nlohmann::json::object();
    for (const auto& [slot, peer] : n.migrating)
      migrating[std::to_string(slot)] = peer;
    for (const auto& [slot, peer] : n.importing)
      importing[std::to_string(slot)] = peer;
    j["migrating"] = migrating;
    j["importing"] = importing;
  }
  return j;
}

}  // namespace

std::size_t covered_slots(const Topology& t) {
  return static_cast<std::size_t>(
      std::count_if(t.owners.begin(), t.owners.end(), [](auto o) { return o != kNoOwner; }));
}

ClusterSurvey survey_cluster(const HostPort& seed, std::chrono::milliseconds timeout,
                             const Credentials& credentials) {
  ClusterSurvey s;
  // A node that answers LOADING (a restarted node, or an emptied master that turned into a replica and is
  // loading its first full sync) is asked again within one deadline for the whole survey.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  NodeClient client;
  if (!client.connect(seed, timeout, credentials)) {
    s.error = "cannot reach the seed node " + client.error();
    return s;
  }
  auto shards = client.command_when_loaded({"CLUSTER", "SHARDS"}, deadline);
  if (!shards) {
    s.error = client.error();
    return s;
  }
  if (is_loading(*shards)) {
    s.error = still_loading(seed, timeout) + "; ask again, or name another node with --cluster";
    return s;
  }
  if (!shards->is_error()) {
    auto parsed = parse_cluster_shards(*shards);
    if (!parsed.ok()) {
      s.error = seed.str() + ": CLUSTER SHARDS: " + parsed.error;
      return s;
    }
    s.merged = std::move(parsed.topology);
    // CLUSTER SHARDS gives a node's plain port as `port` (absent when it has none) and its TLS port as
    // `tls-port`. Every connection of this run is TLS or none is, so each node is reached on the port of
    // that kind. (CLUSTER NODES, the fallback below, already shows the TLS port when tls-cluster is on.)
    if (credentials.tls)
      for (auto& node : s.merged.nodes)
        if (node.tls_port != 0) node.port = node.tls_port;
  } else if (shards->str.find("cluster support disabled") != std::string::npos) {
    s.error = seed.str() + " is not in cluster mode (" + shards->str + ")";
    return s;
  } else {
    // Servers before 7.0 have no CLUSTER SHARDS: the seed's CLUSTER NODES is the base then.
    std::string error;
    bool loading = false;
    auto nodes = read_nodes(client, deadline, error, loading);
    if (!nodes) {
      s.error =
          loading ? still_loading(seed, timeout) + "; ask again, or name another node with --cluster" : error;
      return s;
    }
    s.merged = std::move(*nodes);
  }
  // Every node's own CLUSTER NODES: its epochs, flags and open slots, and its opinion of everyone else.
  const auto known = s.merged.nodes;
  for (const auto& node : known) {
    if (node.port == 0 || node.address().empty()) continue;
    NodeClient c;
    const HostPort where{node.address(), node.port};
    std::string error;
    bool loading = false;
    std::optional<Topology> view;
    if (c.connect(where, timeout, credentials)) view = read_nodes(c, deadline, error, loading);
    if (loading) {
      s.loading.push_back(still_loading(where, timeout));
      continue;
    }
    if (!view) {
      s.unreachable.push_back(error.empty() ? c.error() : error);
      continue;
    }
    merge(s.merged, *view);
    s.views.push_back(std::move(*view));
  }
  // CLUSTER SHARDS calls every replica whose replication offset is 0 "loading", and an idle master's offset
  // stays 0 however long its replicas have been in sync. Ask such a replica itself before calling it loading.
  // A replica that really is in its first full sync (an emptied master that turned into a replica, say) is
  // given until the survey's deadline to finish it.
  for (auto& node : s.merged.nodes) {
    if (node.health != Health::kLoading || node.port == 0) continue;
    NodeClient c;
    if (!c.connect(HostPort{node.address(), node.port}, timeout, credentials)) continue;
    for (;;) {
      const auto info = c.command_when_loaded({"INFO", "replication"}, deadline);
      if (info && !info->is_error() && info->str.find("master_link_status:up") != std::string::npos &&
          info->str.find("master_sync_in_progress:0") != std::string::npos) {
        node.health = Health::kOnline;
        break;
      }
      if (!info || std::chrono::steady_clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  return s;
}

int run_status(const CommonOptions& options, std::ostream& out, std::ostream& err) {
  std::string error;
  const auto seed = parse_host_port(options.cluster, error);
  if (!seed) {
    err << "slotshift status: --cluster: " << error << "\n";
    return kExitUsage;
  }
  const auto s = survey_cluster(*seed, options.timeout, options.credentials);
  if (!s.error.empty()) {
    err << "slotshift status: " << s.error << "\n";
    return kExitFailed;
  }
  const auto masters = s.merged.masters();
  // Moves in progress: the leases their slotshift holds on the nodes it changes (move_lease.h).
  struct Move {
    std::string host;
    std::vector<std::string> nodes;
    std::int64_t until_ms = 0;
  };
  std::map<std::string, Move> moves;
  for (const auto* m : masters) {
    NodeClient c;
    if (!c.connect(HostPort{m->address(), m->port}, options.timeout, options.credentials)) continue;
    for (const auto& lease : leases_on(c)) {
      auto& move = moves[lease.move_id];
      move.host = lease.host;
      move.nodes.push_back(m->address() + ":" + std::to_string(m->port));
      move.until_ms = std::max(move.until_ms, lease.until_ms);
    }
  }
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  if (options.json) {
    nlohmann::json j;
    j["seed"] = seed->str();
    auto in_progress = nlohmann::json::array();
    for (const auto& [id, move] : moves)
      in_progress.push_back({{"move", id},
                             {"host", move.host},
                             {"nodes", move.nodes},
                             {"lease_expires_in_ms", move.until_ms - now_ms}});
    j["moves_in_progress"] = in_progress;
    j["slots_covered"] = covered_slots(s.merged);
    auto nodes = nlohmann::json::array();
    for (const auto& n : s.merged.nodes)
      nodes.push_back(node_json(n));
    j["nodes"] = nodes;
    j["unreachable"] = s.unreachable;
    j["loading"] = s.loading;
    out << j.dump(2) << "\n";
    return s.complete() ? kExitDone : kExitFailed;
  }
  out << "cluster seen from " << seed->str() << ": " << masters.size() << " masters, "
      << s.merged.nodes.size() - masters.size() << " other nodes, " << covered_slots(s.merged) << " of "
      << kSlotCount << " slots covered\n";
  for (const auto* m : masters) {
    out << "  master  " << short_id(m->id) << "  " << m->address() << ":" << m->port << "  epoch "
        << (m->config_epoch ? std::to_string(*m->config_epoch) : "?") << "  " << m->slot_count() << " slots "
        << (m->slots.empty() ? "(none)" : format_slot_ranges(m->slots));
    if (m->flags && (m->flags->fail || m->flags->pfail)) out << "  [" << format_flags(*m->flags) << "]";
    out << "\n";
    for (const auto* r : s.merged.replicas_of(m->id)) {
      out << "    replica " << short_id(r->id) << "  " << r->address() << ":" << r->port;
      if (r->replication_offset) out << "  offset " << *r->replication_offset;
      if (r->health != Health::kUnknown) out << "  " << health_name(r->health);
      out << "\n";
    }
  }
  for (const auto& [id, move] : moves) {
    out << "  move in progress: " << id << " from " << move.host << " on";
    for (const auto& n : move.nodes)
      out << " " << n;
    out << " (lease "
        << (move.until_ms >= now_ms ? "valid " + std::to_string((move.until_ms - now_ms) / 1000) + " s more"
                                    : "expired")
        << ")\n";
  }
  for (const auto& u : s.unreachable)
    out << "  unreachable: " << u << "\n";
  for (const auto& l : s.loading)
    out << "  loading: " << l << "\n";
  return s.complete() ? kExitDone : kExitFailed;
}

}  // namespace slotshift
