#include "proxy/route_check.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string_view>

#include "common/resp.h"

namespace slotshift::proxy {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kClusterNodes = "*2\r\n$7\r\nCLUSTER\r\n$5\r\nNODES\r\n";
constexpr std::string_view kOwnWord =
    "*2\r\n$7\r\nCLUSTER\r\n$4\r\nMYID\r\n"
    "*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n";

// What a node says of itself: its id, the slots its own slot table gives it, and whether it serves as a
// replica.
struct OwnWord {
  std::string id;
  SlotSet owned;
  bool replica = false;
};

// The next reply of `wire` from `at`, which moves past it; nullopt and `error` when there is none whole.
std::optional<resp::Value> next_reply(std::string_view wire, std::size_t& at, std::string_view what,
                                      std::string& error) {
  resp::Value reply;
  std::size_t used = 0;
  if (resp::parse_reply(wire.substr(at), reply, used) != resp::Status::kComplete) {
    error = std::string(what) + ": not a valid reply";
    return std::nullopt;
  }
  at += used;
  if (reply.is_error()) {
    error = std::string(what) + ": " + reply.str;
    return std::nullopt;
  }
  return reply;
}

// The replies to kOwnWord; nullopt and `error` when they are not what a cluster node answers.
std::optional<OwnWord> parse_own_word(const std::string& wire, std::string& error) {
  std::size_t at = 0;
  const auto myid = next_reply(wire, at, "CLUSTER MYID", error);
  if (!myid) return std::nullopt;
  if (!myid->is_string() || myid->str.empty()) {
    error = "CLUSTER MYID: not a node id";
    return std::nullopt;
  }
  const auto slots = next_reply(wire, at, "CLUSTER SLOTS", error);
  if (!slots) return std::nullopt;
  if (at != wire.size()) {
    error = "CLUSTER SLOTS: more bytes follow the two replies asked for";
    return std::nullopt;
  }
  // Each entry: first slot, last slot, then the master's [endpoint, port, id, ...] and its replicas'. Read
  // here for the one node asked about, not into a Topology (whose slot table is 32 KB to fill at every
  // handoff of every proxy of a fleet).
  if (slots->type != resp::Type::kArray || slots->null) {
    error = "CLUSTER SLOTS: not an array";
    return std::nullopt;
  }
  OwnWord own{myid->str, {}, false};
  for (const resp::Value& entry : slots->elements) {
    const auto& e = entry.elements;
    if (entry.type != resp::Type::kArray || e.size() < 3 || e[0].type != resp::Type::kInteger ||
        e[1].type != resp::Type::kInteger || e[0].integer < 0 || e[0].integer > e[1].integer ||
        e[1].integer >= kSlotCount) {
      error = "CLUSTER SLOTS: not a slot range and its nodes";
      return std::nullopt;
    }
    for (std::size_t i = 2; i < e.size(); ++i) {
      const auto& node = e[i].elements;
      if (node.size() < 3 || !node[2].is_string()) {
        error = "CLUSTER SLOTS: a node without its id";
        return std::nullopt;
      }
      if (node[2].str != own.id) continue;
      if (i > 2) {
        own.replica = true;
      } else {
        for (auto s = e[0].integer; s <= e[1].integer; ++s)
          own.owned.set(static_cast<Slot>(s));
      }
    }
  }
  return own;
}

// A CLUSTER NODES reply's view of the cluster, with its `myself` line; nullopt and `error` when it is not
// one.
std::optional<Topology> parse_nodes_reply(const std::string& wire, std::string& error) {
  resp::Value reply;
  std::size_t used = 0;
  if (resp::parse_reply(wire, reply, used) != resp::Status::kComplete) {
    error = "CLUSTER NODES: not a valid reply";
    return std::nullopt;
  }
  if (reply.is_error()) {
    error = "CLUSTER NODES: " + reply.str;
    return std::nullopt;
  }
  if (!reply.is_string()) {
    error = "CLUSTER NODES: not a string reply";
    return std::nullopt;
  }
  TopologyResult parsed = parse_cluster_nodes(reply.str);
  if (!parsed.ok()) {
    error = "CLUSTER NODES: " + parsed.error;
    return std::nullopt;
  }
  if (!parsed.topology.myself()) {
    error = "CLUSTER NODES: no line is flagged myself";
    return std::nullopt;
  }
  return std::move(parsed.topology);
}

// `node`'s view of the cluster; nullopt and `error` when it cannot be had by `deadline`.
std::optional<Topology> cluster_nodes(const HostPort& node, Clock::time_point deadline, const AskNode& ask,
                                      std::string& error) {
  if (Clock::now() >= deadline) {
    error = "no time left to ask " + node.str();
    return std::nullopt;
  }
  const auto wire = ask(node, std::string(kClusterNodes), 1, deadline, error);
  if (!wire) return std::nullopt;
  return parse_nodes_reply(*wire, error);
}

// `node`'s word about itself; nullopt and `error` when it cannot be had by `deadline`.
std::optional<OwnWord> own_word(const HostPort& node, Clock::time_point deadline, const AskNode& ask,
                                std::string& error) {
  if (Clock::now() >= deadline) {
    error = "no time left to ask " + node.str();
    return std::nullopt;
  }
  const auto wire = ask(node, std::string(kOwnWord), kRouteQuestionReplies, deadline, error);
  if (!wire) return std::nullopt;
  return parse_own_word(*wire, error);
}

// Whether `n` is reached at `node`, by any of the names the cluster gives it.
bool reached_at(const Node& n, const HostPort& node) {
  if (n.port != node.port && n.tls_port != node.port) return false;
  return n.ip == node.host || n.endpoint == node.host || (!n.hostname.empty() && n.hostname == node.host);
}

// Whether `view` lists the node `id` at `node` (a node still in handshake is not a member yet).
bool lists(const Topology& view, const std::string& id, const HostPort& node) {
  const Node* n = view.find(id);
  return n && !n->in_handshake() && reached_at(*n, node);
}

// Nodes the proxy already trusts to say who is in the cluster: the masters of its topology, then the seeds.
std::vector<HostPort> trusted_nodes(const TopologySnapshot& known, const std::vector<HostPort>& seeds,
                                    const HostPort& except) {
  std::vector<HostPort> out;
  auto add = [&](HostPort hp) {
    if (hp.port != 0 && !hp.host.empty() && !(hp == except) &&
        std::find(out.begin(), out.end(), hp) == out.end())
      out.push_back(std::move(hp));
  };
  if (known) {
    for (const Node* m : known->masters())
      if (!m->failed() && !reached_at(*m, except)) add(HostPort{m->address(), m->port});
  }
  for (const auto& seed : seeds)
    add(seed);
  return out;
}

RouteVerdict refusal(int status, std::string error, const SlotSet& not_owned = {}) {
  return {status, std::move(error), not_owned};
}

// The node's own view could not be had (`error` says why).
RouteVerdict unanswered(const HostPort& node, const TopologySnapshot& known, const std::string& error) {
  const bool address_known = known && std::any_of(known->nodes.begin(), known->nodes.end(),
                                                  [&node](const Node& n) { return reached_at(n, node); });
  if (!address_known) {
    const std::string what = " is not a node of the cluster: the proxy's topology does not list it, and it ";
    return refusal(400, node.str() + what + "does not answer as one (" + error + ")");
  }
  return refusal(503, "cannot ask " + node.str() + " which slots it owns (" + error + ")");
}

// A member of the cluster: whether it owns every slot of `slots` by its own word (`me`).
RouteVerdict ownership(const SlotSet& slots, const HostPort& node, const OwnWord& me) {
  SlotSet not_owned = slots;
  not_owned -= me.owned;
  if (not_owned.any()) {
    const std::string what = me.replica ? "it is a replica" : "by its own CLUSTER SLOTS";
    return refusal(409, node.str() + " does not own slot(s) " + not_owned.str() + " (" + what + ")",
                   not_owned);
  }
  return {};
}

}  // namespace

std::string route_question() {
  return std::string(kOwnWord);
}

namespace {

// The verdict from the node's own view (`own`, or nullopt and `error`): final for a node `known` lists;
// nullopt when other nodes must vouch for it.
std::optional<RouteVerdict> own_verdict(const SlotSet& slots, const HostPort& node,
                                        const TopologySnapshot& known, const std::optional<OwnWord>& own,
                                        const std::string& error) {
  if (!own) return unanswered(node, known, error);
  // Its own word says nothing about membership (any server can answer anything): the proxy's topology must
  // list it; a node that joined since the last reload needs other nodes asked (check_route).
  if (!known || !lists(*known, own->id, node)) return std::nullopt;
  return ownership(slots, node, *own);
}

}  // namespace

std::optional<RouteVerdict> verdict_from_own_reply(const SlotSet& slots, const HostPort& node,
                                                   const TopologySnapshot& known,
                                                   const std::optional<std::string>& reply,
                                                   const std::string& why) {
  std::string error = why;
  const auto own = reply ? parse_own_word(*reply, error) : std::nullopt;
  return own_verdict(slots, node, known, own, error);
}

RouteVerdict check_route(const SlotSet& slots, const HostPort& node, const TopologySnapshot& known,
                         const std::vector<HostPort>& seeds, std::chrono::milliseconds timeout,
                         const AskNode& ask) {
  const auto deadline = Clock::now() + timeout;
  std::string error;
  const auto own = own_word(node, deadline, ask, error);
  if (auto verdict = own_verdict(slots, node, known, own, error)) return std::move(*verdict);

  // The node answered, and the proxy's topology does not list it: a node of that topology must (one that
  // joined since the last reload).
  const OwnWord& me = *own;
  bool asked = false, member = false;
  std::string why = "no node of the cluster known yet";
  for (const auto& trusted : trusted_nodes(known, seeds, node)) {
    if (const auto view = cluster_nodes(trusted, deadline, ask, why)) {
      asked = true;
      member = lists(*view, me.id, node);
      break;
    }
    why = trusted.str() + ": " + why;
  }
  if (!asked) {
    const std::string what = " is a node of the cluster: none of its nodes answered in time (";
    return refusal(503, "cannot confirm that " + node.str() + what + why + ")");
  }
  if (!member) {
    return refusal(400,
                   node.str() + " (node id " + me.id + ") is not a node of the cluster this proxy serves");
  }
  return ownership(slots, node, me);
}

}  // namespace slotshift::proxy
