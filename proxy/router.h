// Which backend serves which hash slot, for one worker. A fixed array of 16384 backend pointers: a lookup is
// one load. It is filled from CLUSTER SHARDS (CLUSTER SLOTS on servers without it) of any node that answers,
// patched at once by a MOVED, and reloaded on MOVED, on a backend failure and on a timer.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/host_port.h"
#include "common/slot.h"

namespace slotshift::proxy {

class Backend;
class Worker;
class SlotSet;

class Router {
 public:
  explicit Router(Worker& worker) : worker_(worker) { slots_.fill(nullptr); }

  Backend* owner(Slot slot) const { return slots_[slot]; }
  // Every master that owns at least one slot, in a stable order (by address).
  const std::vector<Backend*>& masters() const { return masters_; }
  // How many times a slot has changed owner in this worker's map (the first load aside).
  std::uint64_t owner_changes() const { return owner_changes_; }
  // Read by the admin endpoint's thread too.
  bool ready() const { return loaded_.load(std::memory_order_relaxed); }
  // Whether the last reload found a node that answered (the map may still be older than that); false until
  // one has.
  bool reachable() const { return reachable_.load(std::memory_order_relaxed); }

  // A MOVED said `slot` is now served by `node`: follow it at once, and reload the whole map soon.
  void moved(Slot slot, const HostPort& node);
  // The orchestrator says `slots` are served by `node` now (a ROUTE at a move's cutover): follow it at once,
  // connecting to `node` if need be. No reload is asked for, since some nodes may not know of the move yet;
  // for 2 s a reload that disagrees is not taken for these slots, one that agrees ends that, and after it the
  // reload's word is final again.
  void route(const SlotSet& slots, const HostPort& node);
  // Something suggests the map is stale (a backend failed, CLUSTERDOWN): reload soon, at most once per 100
  // ms.
  void refresh_soon();
  // Reloads now (unless a reload is already under way).
  void refresh();
  std::uint64_t last_refresh_ms() const { return last_refresh_ms_; }
  // Why the last reload found no map, or "" (a node that answered with an error, NOAUTH say).
  const std::string& last_error() const { return last_error_; }
  bool wants_refresh() const { return refresh_wanted_; }
  bool refreshing() const { return refreshing_; }

 private:
  void try_next(std::size_t candidate, bool shards);
  void apply(const std::string& reply, bool shards, std::size_t candidate);
  std::vector<HostPort> candidates() const;

  Worker& worker_;
  std::array<Backend*, kSlotCount> slots_;
  std::vector<Backend*> masters_;
  std::uint64_t owner_changes_ = 0;
  std::atomic<bool> loaded_{false};
  std::atomic<bool> reachable_{false};
  bool refreshing_ = false;
  bool refresh_wanted_ = false;
  std::uint64_t last_refresh_ms_ = 0;
  std::vector<HostPort> refresh_candidates_;
  // Slots a ROUTE pointed at their new owner, until when a reloaded map that disagrees is not taken for them
  // (apply()).
  static constexpr std::uint64_t kPinMs = 2000;
  std::unordered_map<Slot, std::uint64_t> pinned_;
  std::string last_error_;
};

}  // namespace slotshift::proxy
