// slotshift check: every finding about a cluster, from what each node says about itself and about the others.
//
// The topology's own checks (common/topology.h: coverage, open slots, epochs, views that disagree) plus what
// only asking each node tells: keys in slots the node neither owns nor imports (orphans), masters whose
// min-replicas-to-write makes them refuse every write, slotshift moves that run (their lease on the nodes)
// or were killed (a journal of this machine that neither ended nor was undone), nodes that do not answer.
// slotshift fix plans from the same report, and slotshift move refuses to start while any finding stands.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "orchestrator/commands.h"
#include "orchestrator/journal.h"

namespace slotshift {

// Keys of one node in slots it neither owns nor imports (a replica: that its master neither owns nor
// imports).
struct OrphanKeys {
  std::string node_id;
  HostPort node;
  bool replica = false;
  std::vector<std::pair<Slot, std::uint64_t>> slots;  // slot, keys
  std::uint64_t keys() const;
};

// A master whose min-replicas-to-write exceeds its replicas in sync with it: it answers NOREPLICAS to writes.
struct RefusingMaster {
  std::string node_id;
  HostPort node;
  std::string min_replicas_to_write;
  int replicas_in_sync = 0;
  // What a slotshift move's journal says it was before the move raised it (newest journal naming the node);
  // empty when none does.
  std::string restore_to_write, restore_max_lag;
};

struct UnfinishedMove {
  std::string journal;  // its path
  JournalState state;
};

struct ClusterHealth {
  ClusterSurvey survey;
  std::vector<Finding> findings;
  std::vector<OrphanKeys> orphans;
  std::vector<RefusingMaster> refusing;
  std::vector<UnfinishedMove> unfinished;
  bool moving = false;  // a slotshift move holds its lease on some node

  bool clean() const { return findings.empty(); }
};

// Nodes that do not answer and that the cluster has agreed are down (flag fail), owning no slot: their
// replicas took over, or they were replicas. Nothing of theirs is needed; fix forgets them.
std::vector<const Node*> forgettable(const ClusterSurvey& survey);
// Why the survey is not complete enough to change the cluster ("" when every node answered, the forgettable
// ones aside).
std::string unanswered(const ClusterSurvey& survey);
// The node's own CLUSTER NODES in the survey, or nullptr when it did not answer.
const Topology* own_view(const ClusterSurvey& survey, const std::string& id);
inline bool answered(const ClusterSurvey& survey, const std::string& id) {
  return own_view(survey, id) != nullptr;
}
// Where to connect to a node.
inline HostPort address_of(const Node& n) {
  return HostPort{n.address(), n.port};
}

// Surveys the cluster through `seed` and asks every node. The survey's error (not even the seed answers) is
// left in survey.error with no findings.
ClusterHealth inspect_cluster(const HostPort& seed, const CommonOptions& options);
// The findings only asking each node gives (orphans, refused writes, moves running or unfinished), added to
// `health`, whose survey is already made.
void add_node_findings(ClusterHealth& health, const CommonOptions& options);

// The report of `slotshift check`, human or JSON, as `run_check` and `slotshift fix` print it.
void print_health(const ClusterHealth& health, bool json, std::ostream& out);

int run_check(const CommonOptions& options, std::ostream& out, std::ostream& err);

}  // namespace slotshift
