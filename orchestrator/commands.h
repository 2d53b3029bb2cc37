// The orchestrator's subcommands, callable from main and from tests. Each returns the process exit code and
// writes human or JSON output to `out`, diagnostics to `err`.
#pragma once

#include <chrono>
#include <ostream>
#include <string>
#include <vector>

#include "common/topology.h"
#include "orchestrator/node_client.h"

namespace slotshift {

struct CommonOptions {
  std::string cluster;  // HOST:PORT of any node
  bool json = false;
  std::chrono::milliseconds timeout{2000};  // per connection and per reply
  Credentials credentials;                  // for every node
};

// min-replicas-to-write while slotshift makes a source refuse writes around a claim: more replicas than any
// server can have. A master found with it set was left so by a move that was killed, or that could not see
// the source learn its claim (slotshift move says which).
inline constexpr const char* kRefuseAllWrites = "2147483647";

// A node id as messages show it: its first 8 characters.
inline std::string short_id(const std::string& id) {
  return id.substr(0, 8);
}

// What the orchestrator learns by asking every node: the seed's CLUSTER SHARDS (CLUSTER NODES on servers
// without it) merged with the CLUSTER NODES of every reachable node, each node's own view, and who did not
// answer. `timeout` bounds each connection and reply, and the wait for nodes that are loading their dataset.
struct ClusterSurvey {
  Topology merged;
  std::vector<Topology> views;
  std::vector<std::string> unreachable;  // "127.0.0.1:7002: Connection refused"
  // Nodes that still answered LOADING when the survey's deadline (its timeout) passed: reachable, but their
  // view of the cluster is unknown.
  std::vector<std::string> loading;
  std::string error;  // set when not even the seed could be read
  // Every node's own view was read.
  bool complete() const { return error.empty() && unreachable.empty() && loading.empty(); }
};

ClusterSurvey survey_cluster(const HostPort& seed, std::chrono::milliseconds timeout,
                             const Credentials& credentials = {});

// How many slots have an owner in `t`.
std::size_t covered_slots(const Topology& t);

int run_status(const CommonOptions& options, std::ostream& out, std::ostream& err);

}  // namespace slotshift
