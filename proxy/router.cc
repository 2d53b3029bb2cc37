#include "proxy/router.h"
#include "proxy/log.h"

#include <algorithm>
#include <cstdio>

#include "common/resp.h"
#include "common/topology.h"
#include "proxy/backend.h"
#include "proxy/slot_control.h"
#include "proxy/worker.h"

namespace slotshift::proxy {

void Router::moved(Slot slot, const HostPort& node) {
  Backend* b = worker_.backend(node);
  if (slots_[slot] != b) {
    worker_.replica_reads().owner_changed(slot);
    ++owner_changes_;
  }
  slots_[slot] = b;
  worker_.owners_changed();
  refresh_soon();
}

void Router::route(const SlotSet& slots, const HostPort& node) {
  Backend* b = worker_.backend(node);
  const std::uint64_t until = worker_.now_ms() + kPinMs;
  slots.for_each([&](Slot s) {
    if (slots_[s] != b) {
      worker_.replica_reads().owner_changed(s);
      ++owner_changes_;
    }
    slots_[s] = b;
    pinned_[s] = until;
  });
  // A master that had no slot until now serves keyless and fanned-out commands too.
  if (std::find(masters_.begin(), masters_.end(), b) == masters_.end()) {
    masters_.push_back(b);
    std::sort(masters_.begin(), masters_.end(),
              [](const Backend* x, const Backend* y) { return x->name() < y->name(); });
  }
  b->warm();
  worker_.owners_changed();
}

void Router::refresh_soon() {
  if (refreshing_ || worker_.now_ms() - last_refresh_ms_ < 100) {
    refresh_wanted_ = true;
    return;
  }
  refresh();
}

std::vector<HostPort> Router::candidates() const {
  // Nodes we already talk to first (their view is current), then the seeds.
  std::vector<HostPort> out;
  for (const Backend* b : masters_) {
    if (b->connected()) out.push_back(b->address());
  }
  for (const Backend* b : masters_) {
    if (!b->connected()) out.push_back(b->address());
  }
  for (const auto& seed : worker_.config().seeds) {
    if (std::find(out.begin(), out.end(), seed) == out.end()) out.push_back(seed);
  }
  return out;
}

void Router::refresh() {
  if (refreshing_) {
    refresh_wanted_ = true;
    return;
  }
  refreshing_ = true;
  refresh_wanted_ = false;
  last_refresh_ms_ = worker_.now_ms();
  worker_.stats().topology_refreshes.add();
  refresh_candidates_ = candidates();
  try_next(0, true);
}

void Router::try_next(std::size_t candidate, bool shards) {
  if (worker_.stopping()) {
    refreshing_ = false;
    return;
  }
  if (candidate >= refresh_candidates_.size()) {
    // Nobody answered: keep the map we have, try again at the next tick.
    reachable_ = false;
    refreshing_ = false;
    refresh_wanted_ = true;
    return;
  }
  std::string wire;
  resp::append_command(wire, {"CLUSTER", shards ? "SHARDS" : "SLOTS"});
  Backend* b = worker_.backend(refresh_candidates_[candidate]);
  b->send_internal(std::move(wire), [this, b, candidate, shards](const std::string* reply) {
    if (!reply) {
      if (!b->last_failure().empty()) last_error_ = b->name() + ": " + b->last_failure();
      try_next(candidate + 1, true);
      return;
    }
    apply(*reply, shards, candidate);
  });
}

void Router::apply(const std::string& reply, bool shards, std::size_t candidate) {
  const resp::Value value = resp::decode(reply);
  if (value.is_error()) {
    const std::string error = refresh_candidates_[candidate].str() + " answered " + value.str;
    // Said once, not at every reload: a cluster that asks for a login the proxy was not given (or refuses
    // the one given) is a configuration to fix, and clients only see their commands time out.
    if (error != last_error_ && (value.str.starts_with("NOAUTH") || value.str.starts_with("NOPERM")))
      log_line(LogLevel::kError, "cannot load the slot map: %s (see --masteruser, --masterauth)",
               error.c_str());
    last_error_ = error;
    // Servers before 7.0 know no CLUSTER SHARDS: ask the same node for CLUSTER SLOTS.
    if (shards && value.str.find("nknown") != std::string::npos) {
      try_next(candidate, false);
    } else {
      try_next(candidate + 1, true);
    }
    return;
  }
  TopologyResult parsed = shards ? parse_cluster_shards(value) : parse_cluster_slots(value);
  if (!parsed.ok()) {
    log_line(LogLevel::kWarning, "ignoring the topology from %s: %s",
             refresh_candidates_[candidate].str().c_str(), parsed.error.c_str());
    try_next(candidate + 1, true);
    return;
  }
  // CLUSTER SHARDS gives a node's plain port as `port` (absent when it has none, as in a TLS-only cluster)
  // and its TLS port as `tls-port`: every connection of the proxy's is TLS or none is, so each node is
  // reached on the port of that kind. (CLUSTER SLOTS, asked over TLS, already answers with the TLS port.)
  if (worker_.config().backend_tls.enabled)
    for (Node& n : parsed.topology.nodes)
      if (n.tls_port != 0) n.port = n.tls_port;
  const Topology& t = parsed.topology;
  std::vector<Backend*> by_node(t.nodes.size(), nullptr);
  std::vector<Backend*> masters;
  for (std::size_t i = 0; i < t.nodes.size(); ++i) {
    const Node& n = t.nodes[i];
    if (!n.is_master() || n.slots.empty() || n.port == 0 || n.address().empty()) continue;
    by_node[i] = worker_.backend(HostPort{n.address(), n.port});
    masters.push_back(by_node[i]);
  }
  const std::uint64_t now = worker_.now_ms();
  for (std::size_t s = 0; s < kSlotCount; ++s) {
    const std::uint16_t owner = t.owners[s];
    Backend* b = owner == kNoOwner ? nullptr : by_node[owner];
    if (!pinned_.empty()) {
      // A slot a ROUTE has just pointed elsewhere keeps that owner against a map that disagrees: the node
      // that answered may not have learnt of the move yet (the cluster bus spreads a new owner in a moment),
      // and going back to the old owner would send a client's next commands there, after ones already sent to
      // the new owner. (A PUBLISH goes to its channel's slot owner: the old one would deliver it ahead of the
      // earlier ones still crossing the cluster bus.) A map that agrees ends the pin, as does its time. A
      // MOVED pins nothing: it may point at a node that cannot be reached, which a reload must be free to
      // correct at once; a ROUTE's node has said itself that it owns the slots (route_check.h).
      if (auto it = pinned_.find(static_cast<Slot>(s)); it != pinned_.end()) {
        if (b == slots_[s] || now >= it->second) {
          pinned_.erase(it);
        } else {
          continue;
        }
      }
    }
    // (The first load changes no owner: there was none.)
    if (slots_[s] && slots_[s] != b) {
      worker_.replica_reads().owner_changed(static_cast<Slot>(s));
      ++owner_changes_;
    }
    slots_[s] = b;
  }
  // A pinned slot's owner serves it whatever the map said: it is a master.
  for (const auto& [slot, until] : pinned_)
    if (slots_[slot]) masters.push_back(slots_[slot]);
  std::sort(masters.begin(), masters.end(),
            [](const Backend* a, const Backend* b) { return a->name() < b->name(); });
  masters.erase(std::unique(masters.begin(), masters.end()), masters.end());
  masters_ = std::move(masters);
  worker_.replica_reads().topology_loaded(t, by_node);
  loaded_ = true;
  reachable_ = true;
  last_error_.clear();
  refreshing_ = false;
  worker_.proxy().topology_loaded(make_snapshot(std::move(parsed.topology)));
  worker_.owners_changed();
}

}  // namespace slotshift::proxy
