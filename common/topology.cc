#include "common/topology.h"

#include <algorithm>
#include <charconv>
#include <set>
#include <utility>

namespace slotshift {

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

template <typename T>
bool parse_number(std::string_view s, T& out) {
  if (s.empty()) return false;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size();
}

bool parse_slot(std::string_view s, Slot& out) {
  unsigned value = 0;
  if (!parse_number(s, value) || value >= static_cast<unsigned>(kSlotCount)) return false;
  out = static_cast<Slot>(value);
  return true;
}

bool parse_port(std::string_view s, int& out) {
  return parse_number(s, out) && out >= 0 && out <= 65535;
}

// Node ids are 40 lowercase hex characters (getRandomHexChars in the server), handshake placeholders
// included.
bool is_node_id(std::string_view s) {
  if (s.size() != 40) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  std::size_t pos = 0;
  while (true) {
    const std::size_t next = s.find(sep, pos);
    out.push_back(s.substr(pos, next == std::string_view::npos ? std::string_view::npos : next - pos));
    if (next == std::string_view::npos) break;
    pos = next + 1;
  }
  return out;
}

// Shows a possibly hostile token in an error message without flooding it.
std::string quote(std::string_view s) {
  constexpr std::size_t kMax = 60;
  std::string out = "'";
  out.append(s.substr(0, kMax));
  if (s.size() > kMax) out += "...";
  out += "'";
  return out;
}

std::string short_id(std::string_view id) {
  return std::string(id.substr(0, 8));
}

// "8bf81d66 (127.0.0.1:7200)", the way every finding names a node.
std::string describe(const Node& n) {
  std::string out = short_id(n.id);
  if (!n.address().empty() || n.port != 0) {
    out += " (" + n.address() + ":" + std::to_string(n.port) + ")";
  }
  return out;
}

std::string describe_id(const Topology& t, std::string_view id) {
  if (const Node* n = t.find(id)) return describe(*n);
  return short_id(id) + " (unknown node)";
}

// Sorts ranges and joins overlapping or adjacent ones, so that the same slots always give the same ranges.
void normalize(std::vector<SlotRange>& ranges) {
  std::sort(ranges.begin(), ranges.end(),
            [](const SlotRange& a, const SlotRange& b) { return a.first < b.first; });
  std::vector<SlotRange> out;
  for (const SlotRange& r : ranges) {
    if (!out.empty() && static_cast<int>(r.first) <= static_cast<int>(out.back().last) + 1) {
      out.back().last = std::max(out.back().last, r.last);
    } else {
      out.push_back(r);
    }
  }
  ranges = std::move(out);
}

// Turns a sorted list of slots into ranges.
std::vector<SlotRange> to_ranges(const std::vector<Slot>& slots) {
  std::vector<SlotRange> out;
  for (Slot s : slots) {
    if (!out.empty() && static_cast<int>(out.back().last) + 1 == static_cast<int>(s)) {
      out.back().last = s;
    } else {
      out.push_back({s, s});
    }
  }
  return out;
}

std::string plural_slots(const std::vector<SlotRange>& ranges) {
  std::size_t n = 0;
  for (const SlotRange& r : ranges)
    n += r.size();
  return (n == 1 ? "slot " : "slots ") + format_slot_ranges(ranges);
}

TopologyResult failure(std::string message) {
  TopologyResult r;
  r.error = std::move(message);
  return r;
}

// Common last step of every parser.
std::string finish(Topology& t) {
  if (t.nodes.size() >= kNoOwner) return "more nodes than the slot table can index";
  for (Node& n : t.nodes)
    normalize(n.slots);
  t.rebuild_owners();
  return {};
}

// ---------------------------------------------------------------------------------------------------------------
// RESP field access, for SHARDS and SLOTS

// What a value is, for error messages: "integer 5", "bulk string 'x'", "map".
std::string value_text(const resp::Value& v) {
  std::string out(resp::type_name(v.type));
  if (v.is_string() || v.is_error()) return out + " " + quote(v.str);
  if (v.type == resp::Type::kInteger) return out + " " + std::to_string(v.integer);
  return out;
}

// A slot bound as the reply gave it: "16384", "'x'", or the type.
std::string bound_text(const resp::Value& v) {
  if (v.type == resp::Type::kInteger) return std::to_string(v.integer);
  if (v.is_string()) return quote(v.str);
  return std::string(resp::type_name(v.type));
}

// An integer field. Redis sends integers; a numeric string is accepted too.
bool get_integer(const resp::Value& v, std::int64_t& out) {
  if (v.type == resp::Type::kInteger) {
    out = v.integer;
    return true;
  }
  return v.is_string() && parse_number(std::string_view(v.str), out);
}

bool is_null(const resp::Value& v) {
  return v.type == resp::Type::kNull || v.null;
}

bool is_list(const resp::Value& v) {
  return (v.type == resp::Type::kArray || v.type == resp::Type::kSet) && !v.null;
}

// RESP3 maps and RESP2 arrays of alternating keys and values.
bool is_map_like(const resp::Value& v) {
  return v.type == resp::Type::kMap ||
         (v.type == resp::Type::kArray && !v.null && v.elements.size() % 2 == 0);
}

std::string server_error(std::string_view command, const resp::Value& reply) {
  return std::string(command) + ": the server answered an error: " + reply.str;
}

// ---------------------------------------------------------------------------------------------------------------
// CLUSTER NODES

std::string parse_address(std::string_view field, Node& n) {
  std::string_view addr = field;
  const std::size_t comma = addr.find(',');
  if (comma != std::string_view::npos) {
    // CLUSTER NODES: `ip:port@cport,hostname`. nodes.conf (7.2+): `ip:port@cport,hostname,key=value,...`,
    // where the hostname may be empty.
    const std::vector<std::string_view> extras = split(addr.substr(comma + 1), ',');
    for (std::size_t i = 0; i < extras.size(); ++i) {
      const std::string_view e = extras[i];
      const std::size_t eq = e.find('=');
      if (eq == std::string_view::npos) {
        if (i != 0) return "unexpected address field " + quote(e);
        n.hostname = std::string(e);
      } else if (e.substr(0, eq) == "tls-port") {
        if (!parse_port(e.substr(eq + 1), n.tls_port)) return "bad tls-port in " + quote(field);
      } else if (e.substr(0, eq) == "hostname" && n.hostname.empty()) {
        n.hostname = std::string(e.substr(eq + 1));
      }
    }
    addr = addr.substr(0, comma);
  }
  const std::size_t at = addr.find('@');
  if (at != std::string_view::npos) {
    if (!parse_port(addr.substr(at + 1), n.bus_port)) return "bad bus port in address " + quote(field);
    addr = addr.substr(0, at);
  }
  // The last colon: an IPv6 address is printed without brackets ("::1:7000@17000").
  const std::size_t colon = addr.rfind(':');
  if (colon == std::string_view::npos) return "address without a port: " + quote(field);
  if (!parse_port(addr.substr(colon + 1), n.port)) return "bad port in address " + quote(field);
  n.ip = std::string(addr.substr(0, colon));
  return {};
}

std::string parse_flags(std::string_view field, NodeFlags& f) {
  if (field == "noflags") return {};
  for (std::string_view name : split(field, ',')) {
    if (name == "myself") {
      f.myself = true;
    } else if (name == "master") {
      f.master = true;
    } else if (name == "slave") {
      f.replica = true;
    } else if (name == "fail?") {
      f.pfail = true;
    } else if (name == "fail") {
      f.fail = true;
    } else if (name == "handshake") {
      f.handshake = true;
    } else if (name == "noaddr") {
      f.noaddr = true;
    } else if (name == "nofailover") {
      f.nofailover = true;
    } else if (name.empty()) {
      return "empty flag in " + quote(field);
    }
    // Any other flag comes from a newer server: ignored.
  }
  if (f.master && f.replica) return "both master and slave in " + quote(field);
  return {};
}

// "5", "0-5460", "[200->-<id>]", "[200-<-<id>]".
std::string parse_slot_token(std::string_view tok, Node& n) {
  if (tok.front() == '[') {
    if (tok.size() < 3 || tok.back() != ']') return "bad open slot " + quote(tok);
    const std::string_view inner = tok.substr(1, tok.size() - 2);
    std::size_t arrow = inner.find("->-");
    const bool migrating = arrow != std::string_view::npos;
    if (!migrating) arrow = inner.find("-<-");
    if (arrow == std::string_view::npos) return "bad open slot " + quote(tok);
    Slot slot = 0;
    if (!parse_slot(inner.substr(0, arrow), slot)) return "bad slot in " + quote(tok);
    const std::string_view peer = inner.substr(arrow + 3);
    if (!is_node_id(peer)) return "bad node id in " + quote(tok);
    (migrating ? n.migrating : n.importing)[slot] = std::string(peer);
    return {};
  }
  SlotRange r;
  const std::size_t dash = tok.find('-');
  if (dash == std::string_view::npos) {
    if (!parse_slot(tok, r.first)) return "bad slot " + quote(tok);
    r.last = r.first;
  } else if (!parse_slot(tok.substr(0, dash), r.first) || !parse_slot(tok.substr(dash + 1), r.last) ||
             r.first > r.last) {
    return "bad slot range " + quote(tok);
  }
  n.slots.push_back(r);
  return {};
}

// <id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent> <pong-recv> <config-epoch> <link-state>
// <slot>...
std::string parse_nodes_line(std::string_view line, Node& n) {
  std::vector<std::string_view> f;
  for (std::string_view tok : split(line, ' ')) {
    if (!tok.empty()) f.push_back(tok);
  }
  if (f.size() < 8) return "expected at least 8 fields, got " + std::to_string(f.size());
  if (!is_node_id(f[0])) return "bad node id " + quote(f[0]);
  n.id = std::string(f[0]);
  if (std::string err = parse_address(f[1], n); !err.empty()) return err;
  NodeFlags flags;
  if (std::string err = parse_flags(f[2], flags); !err.empty()) return err;
  n.flags = flags;
  n.role = flags.master ? NodeRole::kMaster : flags.replica ? NodeRole::kReplica : NodeRole::kUnknown;
  if (f[3] != "-") {
    if (!is_node_id(f[3])) return "bad master id " + quote(f[3]);
    n.master_id = std::string(f[3]);
  }
  std::int64_t ping = 0;
  std::int64_t pong = 0;
  if (!parse_number(f[4], ping) || ping < 0) return "bad ping-sent " + quote(f[4]);
  if (!parse_number(f[5], pong) || pong < 0) return "bad pong-recv " + quote(f[5]);
  n.ping_sent_ms = ping;
  n.pong_received_ms = pong;
  std::uint64_t epoch = 0;
  if (!parse_number(f[6], epoch)) return "bad config epoch " + quote(f[6]);
  n.config_epoch = epoch;
  if (f[7] == "connected") {
    n.link = LinkState::kConnected;
  } else if (f[7] == "disconnected") {
    n.link = LinkState::kDisconnected;
  } else {
    return "bad link state " + quote(f[7]);
  }
  for (std::size_t i = 8; i < f.size(); ++i) {
    if (std::string err = parse_slot_token(f[i], n); !err.empty()) return err;
  }
  n.sources.nodes = true;
  return {};
}

// ---------------------------------------------------------------------------------------------------------------
// CLUSTER SHARDS

std::string parse_shard_node(const resp::Value& v, Node& n) {
  if (!is_map_like(v)) return "a node is not a map but " + value_text(v);
  const resp::Value* id = v.find("id");
  if (id == nullptr || !id->is_string() || !is_node_id(id->str)) {
    return "node without a valid id" + (id ? ": " + bound_text(*id) : std::string());
  }
  n.id = id->str;
  const std::string where = " of node " + short_id(n.id);
  std::int64_t number = 0;
  if (const resp::Value* port = v.find("port")) {
    if (!get_integer(*port, number) || number < 0 || number > 65535) return "bad port" + where;
    n.port = static_cast<int>(number);
  }
  if (const resp::Value* tls = v.find("tls-port")) {
    if (!get_integer(*tls, number) || number < 0 || number > 65535) return "bad tls-port" + where;
    n.tls_port = static_cast<int>(number);
  }
  if (const resp::Value* ip = v.find("ip")) {
    if (!ip->is_string()) return "bad ip" + where;
    n.ip = ip->str;
  }
  if (const resp::Value* endpoint = v.find("endpoint")) {
    if (endpoint->is_string()) {
      n.endpoint = endpoint->str;
    } else if (!is_null(*endpoint)) {
      return "bad endpoint" + where;
    }
  }
  if (const resp::Value* hostname = v.find("hostname")) {
    if (!hostname->is_string()) return "bad hostname" + where;
    n.hostname = hostname->str;
  }
  const resp::Value* role = v.find("role");
  if (role == nullptr || !role->is_string()) return "no role" + where;
  if (role->str == "master") {
    n.role = NodeRole::kMaster;
  } else if (role->str == "replica") {
    n.role = NodeRole::kReplica;
  } else {
    return "bad role " + quote(role->str) + where;
  }
  if (const resp::Value* offset = v.find("replication-offset")) {
    if (!get_integer(*offset, number)) return "bad replication-offset" + where;
    n.replication_offset = number;
  }
  if (const resp::Value* health = v.find("health")) {
    if (!health->is_string()) return "bad health" + where;
    // 7.0's code says "fail"; its documentation says "failed". Anything else is a newer state: unknown.
    if (health->str == "online") {
      n.health = Health::kOnline;
    } else if (health->str == "fail" || health->str == "failed") {
      n.health = Health::kFailed;
    } else if (health->str == "loading") {
      n.health = Health::kLoading;
    }
  }
  n.sources.shards = true;
  return {};
}

std::string parse_shard(const resp::Value& shard, Topology& t) {
  if (!is_map_like(shard)) return "not a map but " + value_text(shard);
  const resp::Value* slots = shard.find("slots");
  const resp::Value* nodes = shard.find("nodes");
  if (slots == nullptr || !is_list(*slots)) return "no slots array";
  if (nodes == nullptr || !is_list(*nodes)) return "no nodes array";
  if (slots->elements.size() % 2 != 0) return "an odd number of slot bounds";
  std::vector<SlotRange> ranges;
  for (std::size_t i = 0; i < slots->elements.size(); i += 2) {
    std::int64_t first = 0;
    std::int64_t last = 0;
    if (!get_integer(slots->elements[i], first) || !get_integer(slots->elements[i + 1], last) || first < 0 ||
        last >= kSlotCount || first > last) {
      return "bad slot range " + bound_text(slots->elements[i]) + "-" + bound_text(slots->elements[i + 1]);
    }
    ranges.push_back({static_cast<Slot>(first), static_cast<Slot>(last)});
  }
  std::vector<Node> members;
  for (const resp::Value& v : nodes->elements) {
    Node n;
    if (std::string err = parse_shard_node(v, n); !err.empty()) return err;
    if (t.find(n.id) != nullptr ||
        std::any_of(members.begin(), members.end(), [&](const Node& m) { return m.id == n.id; })) {
      return "node " + short_id(n.id) + " listed twice";
    }
    members.push_back(std::move(n));
  }
  // The shard's master: the first master that has not failed, else the first master (7.2+ may list a failed
  // old master in the shard of its promoted replica; the server itself takes the slots from a non-failing
  // node).
  Node* master = nullptr;
  for (Node& n : members) {
    if (n.is_master() && (master == nullptr || (master->failed() && !n.failed()))) master = &n;
  }
  if (master == nullptr && !ranges.empty()) return "slots but no master";
  if (master != nullptr) {
    master->slots = std::move(ranges);
    for (Node& n : members) {
      if (n.is_replica()) n.master_id = master->id;
    }
  }
  for (Node& n : members)
    t.nodes.push_back(std::move(n));
  return {};
}

// ---------------------------------------------------------------------------------------------------------------
// CLUSTER SLOTS

// [endpoint, port, id, {ip: ..., hostname: ...}]
std::string parse_slots_node(const resp::Value& v, Node& n) {
  if (!is_list(v) || v.elements.size() < 3)
    return "a node is not an array of at least 3 but " + value_text(v);
  const resp::Value& endpoint = v.elements[0];
  if (endpoint.is_string()) {
    n.endpoint = endpoint.str;
  } else if (!is_null(endpoint)) {
    return "bad endpoint " + value_text(endpoint);
  }
  std::int64_t port = 0;
  if (!get_integer(v.elements[1], port) || port < 0 || port > 65535)
    return "bad port " + bound_text(v.elements[1]);
  n.port = static_cast<int>(port);
  if (!v.elements[2].is_string() || !is_node_id(v.elements[2].str))
    return "bad node id " + bound_text(v.elements[2]);
  n.id = v.elements[2].str;
  // 7.0+: the networking metadata that is not the preferred endpoint: "ip" (when the endpoint is a hostname)
  // and "hostname" (when it is the ip).
  if (v.elements.size() > 3) {
    const resp::Value& meta = v.elements[3];
    if (!is_map_like(meta)) return "bad metadata of node " + short_id(n.id);
    if (const resp::Value* ip = meta.find("ip"); ip != nullptr && ip->is_string()) n.ip = ip->str;
    if (const resp::Value* host = meta.find("hostname"); host != nullptr && host->is_string()) {
      n.hostname = host->str;
    }
  }
  if (n.ip.empty()) n.ip = n.endpoint == "?" ? std::string() : n.endpoint;
  n.sources.slots = true;
  return {};
}

std::string parse_slots_entry(const resp::Value& entry, Topology& t) {
  if (!is_list(entry) || entry.elements.size() < 3)
    return "not an array of at least 3 but " + value_text(entry);
  std::int64_t first = 0;
  std::int64_t last = 0;
  if (!get_integer(entry.elements[0], first) || !get_integer(entry.elements[1], last) || first < 0 ||
      last >= kSlotCount || first > last) {
    return "bad slot range " + bound_text(entry.elements[0]) + "-" + bound_text(entry.elements[1]);
  }
  std::string master_id;
  for (std::size_t i = 2; i < entry.elements.size(); ++i) {
    Node parsed;
    if (std::string err = parse_slots_node(entry.elements[i], parsed); !err.empty()) return err;
    const NodeRole role = i == 2 ? NodeRole::kMaster : NodeRole::kReplica;
    Node* n = t.find(parsed.id);
    if (n == nullptr) {
      parsed.role = role;
      t.nodes.push_back(std::move(parsed));
      n = &t.nodes.back();
    } else if (n->role != role || (role == NodeRole::kReplica && n->master_id != master_id)) {
      return "node " + short_id(n->id) + " has two roles";
    }
    if (role == NodeRole::kMaster) {
      master_id = n->id;
      n->slots.push_back({static_cast<Slot>(first), static_cast<Slot>(last)});
    } else {
      n->master_id = master_id;
    }
  }
  return {};
}

// ---------------------------------------------------------------------------------------------------------------
// check() and compare_views()

// `slots` is taken by reference and copied: callers build the message from the same ranges in the same call,
// and the order in which arguments are evaluated is unspecified.
Finding make_finding(FindingKind kind, std::string message, std::string node_id = {},
                     std::string peer_id = {}, const std::vector<SlotRange>& slots = {}) {
  return Finding{kind, std::move(message), std::move(node_id), std::move(peer_id), slots, 0, {}};
}

// Open slots of one node, one finding per peer.
void check_open_slots(const Topology& t, const Node& n, const std::map<Slot, std::string>& open,
                      bool migrating, std::vector<Finding>& out) {
  std::map<std::string, std::vector<Slot>> by_peer;
  for (const auto& [slot, peer] : open)
    by_peer[peer].push_back(slot);
  for (const auto& [peer, slots] : by_peer) {
    std::vector<SlotRange> ranges = to_ranges(slots);
    std::string msg = describe(n) + " has " + plural_slots(ranges) +
                      (migrating ? " MIGRATING to " : " IMPORTING from ") + describe_id(t, peer);
    out.push_back(make_finding(migrating ? FindingKind::kSlotMigrating : FindingKind::kSlotImporting,
                               std::move(msg), n.id, peer, ranges));
    // The keys already copied in are reachable only through ASK from a source that is gone: the slot's new
    // owner (the source's promoted replica, or none) never sends clients there.
    const Node* source = t.find(peer);
    if (!migrating && (source == nullptr || source->failed()))
      out.push_back(make_finding(FindingKind::kImportingFromFailed,
                                 describe(n) + " imports " + plural_slots(ranges) + " from " +
                                     (source == nullptr ? short_id(peer) + ", no longer a node of the cluster"
                                                        : describe(*source) + ", which has failed"),
                                 n.id, peer, ranges));
  }
}

std::string view_name(std::span<const Topology> views, std::size_t i) {
  if (!views[i].myself_id.empty()) return short_id(views[i].myself_id);
  return "view #" + std::to_string(i + 1);
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i != 0) out += sep;
    out += parts[i];
  }
  return out;
}

}  // namespace

// -----------------------------------------------------------------------------------------------------------------
// Names

std::optional<std::vector<Slot>> parse_slot_list(std::string_view text, std::string& error) {
  // The ranges as given, then in order: a control call of a move (a handful of ranges) is parsed in every
  // proxy of a fleet at every batch, and a walk over all 16,384 slots was most of its time.
  std::vector<SlotRange> ranges;
  auto number = [](std::string_view s, unsigned& n) {
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    return !s.empty() && ec == std::errc() && end == s.data() + s.size() && n < kSlotCount;
  };
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = std::min(text.find_first_of(", ", pos), text.size());
    const std::string_view item = text.substr(pos, end - pos);
    pos = end + 1;
    if (item.empty()) continue;
    const std::size_t dash = item.find('-');
    unsigned first = 0, last = 0;
    const bool ok = dash == std::string_view::npos ? number(item, first) && number(item, last)
                                                   : number(item.substr(0, dash), first) &&
                                                         number(item.substr(dash + 1), last) && first <= last;
    if (!ok) {
      error = "'" + std::string(item) + "' is not a hash slot (0-16383) or a range of them (first-last)";
      return std::nullopt;
    }
    ranges.push_back({static_cast<Slot>(first), static_cast<Slot>(last)});
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const SlotRange& a, const SlotRange& b) { return a.first < b.first; });
  std::vector<Slot> out;
  for (const SlotRange& r : ranges) {
    // Ranges may overlap: each slot once, in order.
    unsigned s = out.empty() ? r.first : std::max<unsigned>(r.first, out.back() + 1u);
    for (; s <= r.last; ++s)
      out.push_back(static_cast<Slot>(s));
  }
  if (out.empty()) {
    error = "no slot given: expected slots and ranges such as \"0-100,200\"";
    return std::nullopt;
  }
  return out;
}

std::vector<SlotRange> slot_ranges(const std::vector<Slot>& slots) {
  std::vector<SlotRange> ranges;
  for (const Slot s : slots) {
    if (!ranges.empty() && ranges.back().last + 1 == s)
      ranges.back().last = s;
    else
      ranges.push_back({s, s});
  }
  return ranges;
}

std::string format_slot_ranges(const std::vector<SlotRange>& ranges) {
  std::string out;
  for (const SlotRange& r : ranges) {
    if (!out.empty()) out += ' ';
    out += std::to_string(r.first);
    if (r.last != r.first) out += "-" + std::to_string(r.last);
  }
  return out;
}

std::string_view role_name(NodeRole role) {
  switch (role) {
    case NodeRole::kMaster:
      return "master";
    case NodeRole::kReplica:
      return "replica";
    case NodeRole::kUnknown:
      break;
  }
  return "unknown";
}

std::string_view link_state_name(LinkState link) {
  switch (link) {
    case LinkState::kConnected:
      return "connected";
    case LinkState::kDisconnected:
      return "disconnected";
    case LinkState::kUnknown:
      break;
  }
  return "unknown";
}

std::string_view health_name(Health health) {
  switch (health) {
    case Health::kOnline:
      return "online";
    case Health::kFailed:
      return "fail";
    case Health::kLoading:
      return "loading";
    case Health::kUnknown:
      break;
  }
  return "unknown";
}

std::string format_flags(const NodeFlags& flags) {
  if (flags.none()) return "noflags";
  std::vector<std::string> names;
  if (flags.myself) names.emplace_back("myself");
  if (flags.master) names.emplace_back("master");
  if (flags.replica) names.emplace_back("slave");
  if (flags.pfail) names.emplace_back("fail?");
  if (flags.fail) names.emplace_back("fail");
  if (flags.handshake) names.emplace_back("handshake");
  if (flags.noaddr) names.emplace_back("noaddr");
  if (flags.nofailover) names.emplace_back("nofailover");
  return join(names, ",");
}

std::string_view finding_kind_name(FindingKind kind) {
  switch (kind) {
    case FindingKind::kSlotsUncovered:
      return "slots-uncovered";
    case FindingKind::kSlotOwnedTwice:
      return "slot-owned-twice";
    case FindingKind::kSlotsOnReplica:
      return "slots-on-replica";
    case FindingKind::kEpochCollision:
      return "epoch-collision";
    case FindingKind::kSlotMigrating:
      return "slot-migrating";
    case FindingKind::kSlotImporting:
      return "slot-importing";
    case FindingKind::kMigratingAndImporting:
      return "migrating-and-importing";
    case FindingKind::kNodeFailed:
      return "node-failed";
    case FindingKind::kNodePFailed:
      return "node-pfailed";
    case FindingKind::kNodeLoading:
      return "node-loading";
    case FindingKind::kEpochsUnknown:
      return "epochs-unknown";
    case FindingKind::kOpenSlotsUnknown:
      return "open-slots-unknown";
    case FindingKind::kOwnerDisagreement:
      return "owner-disagreement";
    case FindingKind::kEpochDisagreement:
      return "epoch-disagreement";
    case FindingKind::kNodeSetDisagreement:
      return "node-set-disagreement";
    case FindingKind::kRoleDisagreement:
      return "role-disagreement";
    case FindingKind::kImportingFromFailed:
      return "importing-from-failed";
    case FindingKind::kReplicasOfEmptyMaster:
      return "replicas-of-empty-master";
    case FindingKind::kNodeUnreachable:
      return "node-unreachable";
    case FindingKind::kOrphanKeys:
      return "orphan-keys";
    case FindingKind::kRefusingWrites:
      return "refusing-writes";
    case FindingKind::kMoveInProgress:
      return "move-in-progress";
    case FindingKind::kMoveUnfinished:
      return "move-unfinished";
  }
  return "unknown";
}

// -----------------------------------------------------------------------------------------------------------------
// Node and Topology

std::size_t Node::slot_count() const {
  std::size_t n = 0;
  for (const SlotRange& r : slots)
    n += r.size();
  return n;
}

const Node* Topology::find(std::string_view id) const {
  for (const Node& n : nodes) {
    if (n.id == id) return &n;
  }
  return nullptr;
}

Node* Topology::find(std::string_view id) {
  return const_cast<Node*>(std::as_const(*this).find(id));
}

std::vector<const Node*> Topology::masters() const {
  std::vector<const Node*> out;
  for (const Node& n : nodes) {
    if (n.is_master()) out.push_back(&n);
  }
  return out;
}

std::vector<const Node*> Topology::replicas_of(std::string_view master_id) const {
  std::vector<const Node*> out;
  for (const Node& n : nodes) {
    if (n.is_replica() && n.master_id == master_id) out.push_back(&n);
  }
  return out;
}

void Topology::rebuild_owners() {
  owners.fill(kNoOwner);
  for (std::size_t i = 0; i < nodes.size() && i < kNoOwner; ++i) {
    for (const SlotRange& r : nodes[i].slots) {
      for (int s = r.first; s <= r.last; ++s) {
        if (owners[s] == kNoOwner) owners[s] = static_cast<std::uint16_t>(i);
      }
    }
  }
}

// -----------------------------------------------------------------------------------------------------------------
// Parsers

TopologyResult parse_cluster_shards(const resp::Value& reply) {
  constexpr std::string_view kWhat = "CLUSTER SHARDS";
  if (reply.is_error()) return failure(server_error(kWhat, reply));
  if (!is_list(reply))
    return failure(std::string(kWhat) + ": expected an array of shards, got " + value_text(reply));
  TopologyResult r;
  r.topology.sources.shards = true;
  for (std::size_t i = 0; i < reply.elements.size(); ++i) {
    if (std::string err = parse_shard(reply.elements[i], r.topology); !err.empty()) {
      return failure(std::string(kWhat) + ": shard " + std::to_string(i + 1) + ": " + err);
    }
  }
  if (std::string err = finish(r.topology); !err.empty()) return failure(std::string(kWhat) + ": " + err);
  return r;
}

TopologyResult parse_cluster_slots(const resp::Value& reply) {
  constexpr std::string_view kWhat = "CLUSTER SLOTS";
  if (reply.is_error()) return failure(server_error(kWhat, reply));
  if (!is_list(reply))
    return failure(std::string(kWhat) + ": expected an array of ranges, got " + value_text(reply));
  TopologyResult r;
  r.topology.sources.slots = true;
  for (std::size_t i = 0; i < reply.elements.size(); ++i) {
    if (std::string err = parse_slots_entry(reply.elements[i], r.topology); !err.empty()) {
      return failure(std::string(kWhat) + ": entry " + std::to_string(i + 1) + ": " + err);
    }
  }
  if (std::string err = finish(r.topology); !err.empty()) return failure(std::string(kWhat) + ": " + err);
  return r;
}

TopologyResult parse_cluster_nodes(std::string_view text) {
  constexpr std::string_view kWhat = "CLUSTER NODES";
  TopologyResult r;
  Topology& t = r.topology;
  t.sources.nodes = true;
  std::size_t pos = 0;
  std::size_t line_no = 0;
  while (pos < text.size()) {
    const std::size_t nl = text.find('\n', pos);
    std::string_view line =
        text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const std::string where = std::string(kWhat) + ": line " + std::to_string(line_no) + ": ";
    Node n;
    if (std::string err = parse_nodes_line(line, n); !err.empty()) return failure(where + err);
    if (t.find(n.id) != nullptr) return failure(where + "node " + short_id(n.id) + " listed twice");
    if (n.flags->myself) {
      if (!t.myself_id.empty()) return failure(where + "a second node flagged myself");
      t.myself_id = n.id;
      n.open_slots_known = true;
    }
    t.nodes.push_back(std::move(n));
  }
  if (std::string err = finish(t); !err.empty()) return failure(std::string(kWhat) + ": " + err);
  return r;
}

TopologyResult parse_cluster_nodes(const resp::Value& reply) {
  if (reply.is_error()) return failure(server_error("CLUSTER NODES", reply));
  if (!reply.is_string()) return failure("CLUSTER NODES: expected a string, got " + value_text(reply));
  std::string_view text = reply.str;
  // A RESP3 verbatim string starts with its three-letter format and a colon ("txt:").
  if (reply.type == resp::Type::kVerbatimString && text.size() >= 4 && text[3] == ':') text.remove_prefix(4);
  return parse_cluster_nodes(text);
}

// -----------------------------------------------------------------------------------------------------------------
// merge()

void merge(Topology& into, const Topology& from) {
  const auto fill_string = [](std::string& a, const std::string& b) {
    if (a.empty()) a = b;
  };
  const auto fill_int = [](int& a, int b) {
    if (a == 0) a = b;
  };
  for (const Node& f : from.nodes) {
    Node* n = into.find(f.id);
    if (n == nullptr) {
      Node copy = f;
      copy.slots.clear();  // added below, for slots `into` does not cover
      into.nodes.push_back(std::move(copy));
      continue;
    }
    fill_string(n->ip, f.ip);
    fill_int(n->port, f.port);
    fill_int(n->tls_port, f.tls_port);
    fill_int(n->bus_port, f.bus_port);
    fill_string(n->hostname, f.hostname);
    fill_string(n->endpoint, f.endpoint);
    if (n->role == NodeRole::kUnknown) n->role = f.role;
    fill_string(n->master_id, f.master_id);
    if (!n->flags) n->flags = f.flags;
    if (!n->config_epoch) n->config_epoch = f.config_epoch;
    if (n->link == LinkState::kUnknown) n->link = f.link;
    if (!n->ping_sent_ms) n->ping_sent_ms = f.ping_sent_ms;
    if (!n->pong_received_ms) n->pong_received_ms = f.pong_received_ms;
    if (!n->replication_offset) n->replication_offset = f.replication_offset;
    if (n->health == Health::kUnknown) n->health = f.health;
    if (!n->open_slots_known && f.open_slots_known) {
      n->open_slots_known = true;
      n->migrating = f.migrating;
      n->importing = f.importing;
    }
    n->sources.shards |= f.sources.shards;
    n->sources.slots |= f.sources.slots;
    n->sources.nodes |= f.sources.nodes;
  }
  // Slots that `into` leaves uncovered go to whoever `from` says owns them.
  into.rebuild_owners();
  std::map<std::string, std::vector<Slot>> gained;
  for (int s = 0; s < kSlotCount; ++s) {
    const Node* owner = from.owner(static_cast<Slot>(s));
    if (into.owners[s] == kNoOwner && owner != nullptr) gained[owner->id].push_back(static_cast<Slot>(s));
  }
  for (auto& [id, slots] : gained) {
    Node* n = into.find(id);
    for (const SlotRange& r : to_ranges(slots))
      n->slots.push_back(r);
    normalize(n->slots);
  }
  if (into.myself_id.empty()) into.myself_id = from.myself_id;
  into.sources.shards |= from.sources.shards;
  into.sources.slots |= from.sources.slots;
  into.sources.nodes |= from.sources.nodes;
  into.rebuild_owners();
}

// -----------------------------------------------------------------------------------------------------------------
// check()

std::vector<Finding> check(const Topology& t) {
  std::vector<Finding> out;

  // Coverage.
  std::vector<Slot> uncovered;
  for (int s = 0; s < kSlotCount; ++s) {
    if (t.owners[s] == kNoOwner) uncovered.push_back(static_cast<Slot>(s));
  }
  if (!uncovered.empty()) {
    std::vector<SlotRange> ranges = to_ranges(uncovered);
    out.push_back(make_finding(
        FindingKind::kSlotsUncovered,
        std::to_string(uncovered.size()) + " of 16384 slots have no owner: " + format_slot_ranges(ranges), {},
        {}, ranges));
  }

  // Slots listed by two nodes: the table keeps the first, the others are collected by pair of nodes.
  std::map<std::pair<std::size_t, std::size_t>, std::vector<Slot>> twice;
  for (std::size_t i = 0; i < t.nodes.size(); ++i) {
    for (const SlotRange& r : t.nodes[i].slots) {
      for (int s = r.first; s <= r.last; ++s) {
        const std::uint16_t first = t.owners[s];
        if (first != kNoOwner && first != i) twice[{first, i}].push_back(static_cast<Slot>(s));
      }
    }
  }
  for (auto& [pair, slots] : twice) {
    std::sort(slots.begin(), slots.end());
    slots.erase(std::unique(slots.begin(), slots.end()), slots.end());
    std::vector<SlotRange> ranges = to_ranges(slots);
    const Node& a = t.nodes[pair.first];
    const Node& b = t.nodes[pair.second];
    out.push_back(
        make_finding(FindingKind::kSlotOwnedTwice,
                     plural_slots(ranges) + " claimed by both " + describe(a) + " and " + describe(b), a.id,
                     b.id, ranges));
  }

  for (const Node& n : t.nodes) {
    if (!n.is_master() && !n.slots.empty()) {
      out.push_back(make_finding(
          FindingKind::kSlotsOnReplica,
          describe(n) + " is a " + std::string(role_name(n.role)) + " but lists " + plural_slots(n.slots),
          n.id, {}, n.slots));
    }
  }

  // Config epochs of masters. Handshake nodes are skipped: their epoch is a placeholder 0.
  std::map<std::uint64_t, std::vector<const Node*>> by_epoch;
  std::vector<std::string> epochs_unknown;
  std::vector<std::string> open_unknown;
  for (const Node& n : t.nodes) {
    if (!n.is_master() || n.in_handshake()) continue;
    if (n.config_epoch) {
      by_epoch[*n.config_epoch].push_back(&n);
    } else {
      epochs_unknown.push_back(describe(n));
    }
    if (!n.open_slots_known && !n.failed()) open_unknown.push_back(describe(n));
  }
  for (const auto& [epoch, masters] : by_epoch) {
    if (masters.size() < 2) continue;
    std::vector<std::string> names;
    for (const Node* m : masters)
      names.push_back(describe(*m));
    out.push_back(
        make_finding(FindingKind::kEpochCollision,
                     "masters " + join(names, ", ") + " share config epoch " + std::to_string(epoch),
                     masters[0]->id, masters[1]->id));
  }

  for (const Node& n : t.nodes) {
    check_open_slots(t, n, n.migrating, true, out);
    check_open_slots(t, n, n.importing, false, out);
    if (!n.migrating.empty() && !n.importing.empty()) {
      out.push_back(make_finding(FindingKind::kMigratingAndImporting,
                                 describe(n) + " has slots open in both directions (migrating " +
                                     std::to_string(n.migrating.size()) + ", importing " +
                                     std::to_string(n.importing.size()) + ")",
                                 n.id));
    }
  }

  for (const Node& n : t.nodes) {
    std::string owns = n.slots.empty() ? std::string() : " and owns " + plural_slots(n.slots);
    if (n.failed()) {
      const std::string how = n.flags && n.flags->fail ? "flagged fail" : "reported with health fail";
      out.push_back(
          make_finding(FindingKind::kNodeFailed, describe(n) + " is " + how + owns, n.id, {}, n.slots));
    } else if (n.pfailed()) {
      out.push_back(make_finding(
          FindingKind::kNodePFailed,
          describe(n) + " is flagged fail? (unreachable, not yet agreed failed)" + owns, n.id, {}, n.slots));
    }
    if (n.health == Health::kLoading) {
      out.push_back(make_finding(FindingKind::kNodeLoading,
                                 describe(n) + " is loading (its replication offset is still 0)", n.id));
    }
  }

  // Replicas of a master without slots protect nothing, and Redis's replica migration may move them away to a
  // master that has lost its own.
  for (const Node& m : t.nodes) {
    if (!m.is_master() || !m.slots.empty() || m.failed() || m.in_handshake()) continue;
    std::vector<std::string> names;
    for (const Node* r : t.replicas_of(m.id))
      names.push_back(describe(*r));
    if (!names.empty())
      out.push_back(make_finding(FindingKind::kReplicasOfEmptyMaster,
                                 describe(m) + " owns no slot but has replicas: " + join(names, ", "), m.id));
  }

  if (!epochs_unknown.empty()) {
    out.push_back(make_finding(FindingKind::kEpochsUnknown,
                               "config epochs unknown (no CLUSTER NODES data) for " +
                                   join(epochs_unknown, ", ") + ": epoch collisions not checked"));
  }
  if (!open_unknown.empty()) {
    out.push_back(make_finding(
        FindingKind::kOpenSlotsUnknown,
        "open slots unknown (no CLUSTER NODES from the node itself) for " + join(open_unknown, ", ")));
  }
  return out;
}

// -----------------------------------------------------------------------------------------------------------------
// compare_views()

std::vector<Finding> compare_views(std::span<const Topology> views) {
  std::vector<Finding> out;
  if (views.size() < 2) return out;

  // A node of any view, to name it in messages.
  const auto name_of = [&](std::string_view id) {
    for (const Topology& v : views) {
      if (const Node* n = v.find(id)) return describe(*n);
    }
    return short_id(id);
  };

  // Owners: runs of consecutive slots on which the views give the same (disagreeing) answers.
  const auto owner_id = [](const Topology& v, int s) -> std::string_view {
    const Node* n = v.owner(static_cast<Slot>(s));
    return n == nullptr ? std::string_view() : std::string_view(n->id);
  };
  std::vector<std::string_view> current(views.size());
  std::vector<std::string_view> run(views.size());
  int run_start = -1;
  const auto flush = [&](int end) {
    if (run_start < 0) return;
    std::vector<SlotRange> ranges{{static_cast<Slot>(run_start), static_cast<Slot>(end)}};
    // Group the views by the owner they name.
    std::vector<std::pair<std::string_view, std::vector<std::string>>> groups;
    for (std::size_t i = 0; i < views.size(); ++i) {
      auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == run[i]; });
      if (it == groups.end()) {
        groups.push_back({run[i], {}});
        it = groups.end() - 1;
      }
      it->second.push_back(view_name(views, i));
    }
    std::vector<std::string> parts;
    for (const auto& [owner, names] : groups) {
      parts.push_back((owner.empty() ? std::string("no owner") : name_of(owner)) + " according to " +
                      join(names, ", "));
    }
    out.push_back(make_finding(
        FindingKind::kOwnerDisagreement,
        "views disagree on the owner of " + plural_slots(ranges) + ": " + join(parts, "; "), {}, {}, ranges));
    run_start = -1;
  };
  for (int s = 0; s < kSlotCount; ++s) {
    bool agree = true;
    for (std::size_t i = 0; i < views.size(); ++i) {
      current[i] = owner_id(views[i], s);
      if (current[i] != current[0]) agree = false;
    }
    if (run_start >= 0 && (agree || current != run)) flush(s - 1);
    if (!agree && run_start < 0) {
      run_start = s;
      run = current;
    }
  }
  flush(kSlotCount - 1);

  // Every node id of every view (handshake nodes aside), in first-seen order.
  std::vector<std::string> ids;
  std::set<std::string, std::less<>> seen;
  for (const Topology& v : views) {
    for (const Node& n : v.nodes) {
      if (!n.in_handshake() && seen.insert(n.id).second) ids.push_back(n.id);
    }
  }

  for (const std::string& id : ids) {
    std::vector<std::string> with;
    std::vector<std::string> without;
    std::map<std::uint64_t, std::vector<std::string>> epochs;
    std::map<std::string, std::vector<std::string>> roles;
    for (std::size_t i = 0; i < views.size(); ++i) {
      const Node* n = views[i].find(id);
      if (n == nullptr || n->in_handshake()) {
        without.push_back(view_name(views, i));
        continue;
      }
      with.push_back(view_name(views, i));
      if (n->is_master() && n->config_epoch) epochs[*n->config_epoch].push_back(view_name(views, i));
      if (n->role != NodeRole::kUnknown) {
        std::string role(role_name(n->role));
        if (n->is_replica())
          role += " of " + (n->master_id.empty() ? std::string("an unknown master") : name_of(n->master_id));
        roles[role].push_back(view_name(views, i));
      }
    }
    if (!without.empty()) {
      out.push_back(make_finding(
          FindingKind::kNodeSetDisagreement,
          name_of(id) + " is known to " + join(with, ", ") + " but not to " + join(without, ", "), id));
    }
    if (epochs.size() > 1) {
      std::vector<std::string> parts;
      for (const auto& [epoch, names] : epochs) {
        parts.push_back(std::to_string(epoch) + " according to " + join(names, ", "));
      }
      out.push_back(make_finding(
          FindingKind::kEpochDisagreement,
          "views disagree on the config epoch of master " + name_of(id) + ": " + join(parts, "; "), id));
    }
    if (roles.size() > 1) {
      std::vector<std::string> parts;
      for (const auto& [role, names] : roles)
        parts.push_back(role + " according to " + join(names, ", "));
      out.push_back(make_finding(FindingKind::kRoleDisagreement,
                                 "views disagree on the role of " + name_of(id) + ": " + join(parts, "; "),
                                 id));
    }
  }
  return out;
}

}  // namespace slotshift
