// The check a ROUTE passes before any worker follows it. A ROUTE points every worker's slot map at a node at
// once, with no MOVED to correct it: a caller that is wrong (or hostile) would send every client's writes for
// those slots anywhere, 127.0.0.1:1 included. So before the map changes, the cluster must agree:
//
//   - the node is a node of the cluster this proxy serves: the last topology a worker loaded lists it (same
//     address, same node id), or, for a node that joined since, a node of that topology lists it;
//   - the node owns every slot of the route by its own word: its CLUSTER SLOTS names it (by its CLUSTER MYID)
//     as the master of them. The orchestrator sends ROUTE only after the new owner has claimed the slots, so
//     a real move always passes.
//
// The node's own word is CLUSTER MYID and CLUSTER SLOTS, one pipeline, not its CLUSTER NODES: a move's target
// has every slot still to come in IMPORTING, and its CLUSTER NODES writes each one out ("[5460-<-id]"): for a
// third of the slots, 260 KB that the node writes and every proxy of a fleet reads and parses at every batch
// (most of what a handoff cost a proxy, and most of what a batch cost the target). CLUSTER SLOTS is a few
// ranges, and names the same owners (both read the node's one slot table).
//
// Each check asks at the moment of the check and is never answered from an earlier one, within one deadline
// for the whole check. One round trip for a node the proxy knows, two for a node it has not seen yet (then a
// node the proxy knows is asked for its CLUSTER NODES, to confirm the newcomer). The questions go through
// `ask` (Proxy::ask_node: logged in and over TLS as the proxy's other connections, on a connection kept for
// such questions, see node_questions.h).
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/host_port.h"
#include "common/topology.h"
#include "proxy/slot_control.h"

namespace slotshift::proxy {

struct RouteVerdict {
  // 200: the route may be applied. 400: `node` is not a node of the cluster. 409: it does not own
  // `not_owned`. 503: the node (or the cluster) could not be asked in time.
  int status = 200;
  std::string error;  // what a user is told when status is not 200
  SlotSet not_owned;
  bool ok() const { return status == 200; }
};

// Sends the wire bytes of `replies` commands to a node and waits until the deadline: the replies' bytes, one
// after the other, or nullopt and why.
using AskNode = std::function<std::optional<std::string>(
    const HostPort& node, std::string command, int replies, std::chrono::steady_clock::time_point deadline,
    std::string& why)>;

// The question check_route asks `node` first, as wire bytes (CLUSTER MYID, CLUSTER SLOTS), and the number of
// replies that answer it.
std::string route_question();
inline constexpr int kRouteQuestionReplies = 2;

// The verdict from `node`'s answer to route_question() alone (`reply`: its replies' bytes, or nullopt and
// `why` there is none): what check_route decides, for a node the proxy's topology `known` lists. Nullopt when
// `known` does not list the node that answered: then other nodes must confirm it is a member, which
// check_route asks. (How a handoff decides on the worker that asked, without the admin thread's round trip.)
std::optional<RouteVerdict> verdict_from_own_reply(const SlotSet& slots, const HostPort& node,
                                                   const TopologySnapshot& known,
                                                   const std::optional<std::string>& reply,
                                                   const std::string& why);

// Whether `node` may serve `slots` now. `known` is the proxy's last topology (may be null: none loaded yet);
// `seeds` are asked when a node of `known` cannot be. Blocks for at most `timeout`.
RouteVerdict check_route(const SlotSet& slots, const HostPort& node, const TopologySnapshot& known,
                         const std::vector<HostPort>& seeds, std::chrono::milliseconds timeout,
                         const AskNode& ask);

}  // namespace slotshift::proxy
