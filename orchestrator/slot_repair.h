// The repairs of `slotshift fix` that move or delete keys: closing an open slot, deleting orphan keys. Each
// starts from what the nodes say at that moment, never from an earlier report, so a repair that runs after
// another (or after a crash of fix itself) acts on the cluster as it is.
//
// Which copy of a key is the newest follows from how servers serve an open slot:
//   - the owner, MIGRATING the slot to T, serves every key it holds; a key it does not hold is sent to T
//     (ASK), so T's copy of such a key is the live one;
//   - a key on a node that IMPORTS the slot but that the owner does not send clients to (the owner no longer
//     MIGRATING, or MIGRATING elsewhere) is reachable by no client: it is copied to where the slot ends up
//     only if that node lacks the key, never over an existing copy;
//   - a key on a node that neither owns nor imports the slot is an orphan: deleted, never copied anywhere.
// So a key is copied with REPLACE only from the serving owner; every other copy gives way to the one already
// there.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "orchestrator/commands.h"

namespace slotshift {

// How an open slot is closed, decided from the nodes' own views (slot_repair.cc says why).
struct SlotDecision {
  enum Kind { kNothing, kFinish, kUndo, kRefuse } kind = kNothing;
  const Node* owner = nullptr;
  const Node* to = nullptr;  // kFinish: where the slot ends
  bool owner_migrating = false;
  bool target_gone = false;  // kUndo: the owner migrates it to a node no longer in the cluster
  std::vector<const Node*> importers, others_open;
  std::string why;  // kRefuse
};
SlotDecision decide_open_slot(const ClusterSurvey& survey, Slot slot);

struct RepairOutcome {
  bool ok = false;
  std::string summary;  // what was done (ok) or why it could not be (not ok), one line
  std::uint64_t moved = 0, dropped = 0, deleted = 0;
  bool nothing_to_do = false;  // the slot was closed already (by an earlier step)
};

class SlotRepairer {
 public:
  // `budget`: how long one repair may take before it gives up where it stands (each step leaves the slot in
  // a state that serves every key; a repair that gave up is simply planned again by the next fix).
  SlotRepairer(const HostPort& seed, const CommonOptions& options, std::chrono::milliseconds budget);

  // Clears every MIGRATING and IMPORTING of `slot`, the newest copy of each key ending on the node that owns
  // the slot afterwards: while the owner migrates the slot to a master that has not failed (or to a node now
  // the replica of one), the migration is finished there; else the owner keeps it and the importers' keys
  // come back to it where it lacks them.
  RepairOutcome close_slot(Slot slot);
  // Deletes the keys of `slot` on the master `node_id`, which must neither own nor import it in its own view.
  RepairOutcome delete_orphans(const std::string& node_id, Slot slot);

 private:
  struct Transfer {
    std::uint64_t moved = 0, dropped = 0;
    std::string error;
  };
  NodeClient* client(const HostPort& node, std::string& error);
  // Copies every key of `slot` from `from` to `to` with MIGRATE: REPLACE when `from` serves the keys, else a
  // key `to` already holds stays and `from`'s copy is deleted. Until `from` has no key of the slot left.
  Transfer transfer(const HostPort& from, const Node& to, Slot slot, bool replace);
  std::optional<std::uint64_t> count(const HostPort& node, Slot slot, std::string& error);
  bool setslot(const HostPort& node, const std::vector<std::string>& args, std::string& error);
  bool expired() const { return std::chrono::steady_clock::now() >= deadline_; }

  HostPort seed_;
  CommonOptions options_;
  std::chrono::milliseconds budget_;
  std::chrono::steady_clock::time_point deadline_;
  std::map<std::string, NodeClient> clients_;
};

}  // namespace slotshift
