// The part of a move's plan that needs nothing but the cluster's survey: which options go together, whether
// the cluster is clean enough to move in, which node --to names, and which master each slot moves from. Pure,
// so that every refusal is unit-tested without a server; what must be asked of the nodes themselves
// (versions, settings, keys already on the target) is MoveJob::plan() in move_plan.cc.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/slot.h"
#include "common/topology.h"
#include "orchestrator/commands.h"
#include "orchestrator/move.h"

namespace slotshift {

struct SlotPlan {
  // Why the move must not start, or empty. A refusal of the options themselves starts with their flag ("--")
  // and is a usage error (exit 2).
  std::string refusal;
  Node target;
  struct From {
    Node node;
    std::vector<Slot> slots;
  };
  std::vector<From> sources;  // one per master that gives up slots, in id order
  std::vector<Slot> skipped;  // named but already on the target
  std::vector<std::string> warnings;
};

// `has_proxies`: --proxy or --proxy-dns named at least one.
std::optional<std::string> refuse_options(const MoveOptions& options, bool has_proxies);

// The plan of moving `slots` to `to` (HOST:PORT, a node id or a unique prefix of one of at
// least 4 characters) in the cluster `survey` describes.
SlotPlan plan_slots(const ClusterSurvey& survey, const std::vector<Slot>& slots, const std::string& to);

}  // namespace slotshift
