// The cluster topology: one model of nodes, slot ranges and open slots, built from any of the three replies a
// node gives about its view of the cluster, and the consistency checks that the orchestrator (check/fix, the
// move planner) and the proxy rely on.
//
// What each reply gives (Redis 7.0.15; checked on the captured replies in tests/data/topology/):
//
// clang-format off
//   field                      CLUSTER SHARDS       CLUSTER SLOTS          CLUSTER NODES
//   id, ip, port, role         yes                  yes (see below)        yes
//   tls-port                   yes (if TLS)         no                     no (port is the TLS one for TLS clients)
//   bus port                   no                   no                     yes
//   hostname                   yes (if set)         yes (if set)           yes (`ip:port@cport,hostname`)
//   endpoint                   yes                  yes (first field)      no
//   master of a replica        the shard's master   the range's master     yes
//   flags (fail?, fail, ...)   health: online,      no                     yes
//                              fail, loading
//   config epoch               no                   no                     yes (a replica shows its master's)
//   link, ping sent, pong recv no                   no                     yes
//   replication offset         yes                  no                     no
//   slot ranges                yes                  yes                    yes
//   open slots (MIGRATING,     no                   no                     only on the line of the node that
//   IMPORTING)                                                             answered (`myself`)
// clang-format on
//
// CLUSTER SLOTS lists no master without slots, and no replica that is failing or whose replication offset is
// 0 (just attached, or nothing replicated yet); CLUSTER SHARDS lists those replicas with health "loading".
// SHARDS's "fail" health is the fail flag only: a node that others flag fail? is "online" there.
//
// So the full picture of a cluster is one CLUSTER SHARDS (or CLUSTER NODES) reply merged with the CLUSTER
// NODES of every node: merge() fills in what a model lacks without ever changing who owns a slot, and check()
// says when it was asked about something the model does not know (kEpochsUnknown, kOpenSlotsUnknown) instead
// of silently passing.
//
// Parse errors are values: a reply that a server could never send (a slot out of range, a malformed node id
// or address, a missing field) gives a TopologyResult with `error` set. Fields and flags a newer server adds
// are ignored.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/resp.h"
#include "common/slot.h"

namespace slotshift {

// An inclusive range of hash slots, as every reply prints them ("0-5460", [0, 5460]).
struct SlotRange {
  Slot first = 0;
  Slot last = 0;

  std::size_t size() const { return static_cast<std::size_t>(last) - first + 1; }
  bool contains(Slot s) const { return s >= first && s <= last; }
  friend bool operator==(const SlotRange&, const SlotRange&) = default;
};

// "0-5460 5461 16000-16383" (the CLUSTER NODES notation); empty for no ranges.
std::string format_slot_ranges(const std::vector<SlotRange>& ranges);
// Slots and ranges as users write them on command lines and in control requests: "0-100,200" or
// "0-100 200". The slots, sorted and distinct. nullopt (and `error`) for anything else, or for no slot.
std::optional<std::vector<Slot>> parse_slot_list(std::string_view text, std::string& error);
// Sorted, distinct slots as ranges of consecutive slots.
std::vector<SlotRange> slot_ranges(const std::vector<Slot>& slots);

enum class NodeRole : std::uint8_t { kUnknown, kMaster, kReplica };
enum class LinkState : std::uint8_t { kUnknown, kConnected, kDisconnected };
// CLUSTER SHARDS `health`: "fail" only for a node flagged fail (not fail?), "loading" for a replica whose
// replication offset is still 0, "online" otherwise.
enum class Health : std::uint8_t { kUnknown, kOnline, kFailed, kLoading };

std::string_view role_name(NodeRole role);
std::string_view link_state_name(LinkState link);
std::string_view health_name(Health health);

// The flags column of CLUSTER NODES ("myself,master", "slave,fail?", "noflags", ...).
struct NodeFlags {
  bool myself = false;
  bool master = false;
  bool replica = false;     // printed "slave"
  bool pfail = false;       // printed "fail?": this node cannot reach it for longer than cluster-node-timeout
  bool fail = false;        // printed "fail": a majority of masters agreed that it is down
  bool handshake = false;   // met but not yet answered; its id is a random placeholder
  bool noaddr = false;      // address unknown (printed as ":0@0")
  bool nofailover = false;  // a replica that will not start a failover (cluster-replica-no-failover)

  bool none() const {
    return !(myself || master || replica || pfail || fail || handshake || noaddr || nofailover);
  }
  friend bool operator==(const NodeFlags&, const NodeFlags&) = default;
};

// "myself,master", or "noflags" when none is set, as CLUSTER NODES prints them.
std::string format_flags(const NodeFlags& flags);

// Which replies contributed to a node or a model.
struct Sources {
  bool shards = false;
  bool slots = false;
  bool nodes = false;
  friend bool operator==(const Sources&, const Sources&) = default;
};

struct Node {
  std::string id;        // 40 hex characters
  std::string ip;        // empty for a noaddr node
  int port = 0;          // client port; 0 when unknown or not announced
  int tls_port = 0;      // SHARDS only; 0 when none
  int bus_port = 0;      // NODES only; 0 when unknown
  std::string hostname;  // cluster-announce-hostname; empty when not set
  std::string endpoint;  // the server's preferred endpoint (SHARDS, SLOTS); "?" means unknown hostname
  NodeRole role = NodeRole::kUnknown;
  std::string master_id;  // replicas: their master; empty for masters and when unknown

  std::optional<NodeFlags> flags;             // NODES only
  std::optional<std::uint64_t> config_epoch;  // NODES only; a replica's is its master's, as NODES prints it
  LinkState link = LinkState::kUnknown;       // NODES only
  std::optional<std::int64_t> ping_sent_ms;   // NODES only; 0 = no ping pending (unix time in ms)
  std::optional<std::int64_t> pong_received_ms;    // NODES only (unix time in ms)
  std::optional<std::int64_t> replication_offset;  // SHARDS only
  Health health = Health::kUnknown;                // SHARDS only

  std::vector<SlotRange> slots;  // sorted, adjacent ranges joined; empty for replicas and slotless masters

  // Open slots: slot -> the other node's id. CLUSTER NODES prints them only on the `myself` line, so they are
  // known only for a node whose own NODES reply went into the model: open_slots_known says so.
  bool open_slots_known = false;
  std::map<Slot, std::string> migrating;  // `[slot->-id]`: this node sends slot's keys to id
  std::map<Slot, std::string> importing;  // `[slot-<-id]`: this node accepts slot's keys from id

  Sources sources;

  bool is_master() const { return role == NodeRole::kMaster; }
  bool is_replica() const { return role == NodeRole::kReplica; }
  // Flagged fail (NODES) or reported with health fail (SHARDS).
  bool failed() const { return (flags && flags->fail) || health == Health::kFailed; }
  bool pfailed() const { return flags && flags->pfail; }
  bool in_handshake() const { return flags && flags->handshake; }
  // The address to connect to: the endpoint if the server gave a usable one, else the ip.
  const std::string& address() const { return endpoint.empty() || endpoint == "?" ? ip : endpoint; }
  std::size_t slot_count() const;
};

// The slot -> owner table: an index into Topology::nodes for every slot, kNoOwner for an uncovered slot. A
// fixed array so that a lookup is one load with no hashing and no pointer chasing (the proxy does one per
// command).
inline constexpr std::uint16_t kNoOwner = 0xFFFF;
using SlotTable = std::array<std::uint16_t, kSlotCount>;

struct Topology {
  std::vector<Node> nodes;  // in the order the reply listed them
  SlotTable owners{};       // derived from nodes[].slots by rebuild_owners()
  std::string myself_id;    // NODES: the node that answered; empty otherwise
  Sources sources;

  Topology() { owners.fill(kNoOwner); }

  const Node* find(std::string_view id) const;
  Node* find(std::string_view id);
  // The master that owns `slot`, or nullptr.
  const Node* owner(Slot slot) const {
    const std::uint16_t i = owners[slot];
    return i == kNoOwner ? nullptr : &nodes[i];
  }
  const Node* myself() const { return find(myself_id); }
  std::vector<const Node*> masters() const;
  std::vector<const Node*> replicas_of(std::string_view master_id) const;

  // Recomputes `owners` from the nodes' slot ranges. When two nodes list the same slot (no single reply does;
  // a hand-built or merged model may), the first in `nodes` keeps it in the table and check() reports
  // kSlotOwnedTwice.
  void rebuild_owners();
};

// A model shared read-only between threads: built once, published whole, replaced whole on a refresh.
using TopologySnapshot = std::shared_ptr<const Topology>;
inline TopologySnapshot make_snapshot(Topology topology) {
  return std::make_shared<const Topology>(std::move(topology));
}

struct TopologyResult {
  Topology topology;
  std::string error;  // empty on success; otherwise what was wrong and where

  bool ok() const { return error.empty(); }
};

// CLUSTER SHARDS (Redis 7.0+), RESP2 (arrays of alternating keys and values) or RESP3 (maps). Fills id, ip,
// port, tls_port, hostname, endpoint, role, master_id (the shard's master), replication_offset, health and
// the masters' slots. A shard with more than one master (a failed old master still listed next to its
// promoted replica, as 7.2+ group shards by shard id) gives its slots and replicas to the first master that
// has not failed.
TopologyResult parse_cluster_shards(const resp::Value& reply);

// CLUSTER SLOTS, RESP2 or RESP3. Fills id, ip, port, hostname, endpoint, role, master_id and the masters'
// slots. Masters without slots are not in this reply, nor replicas that are failing or at replication offset
// 0.
TopologyResult parse_cluster_slots(const resp::Value& reply);

// CLUSTER NODES, the text. Fills everything but tls_port, endpoint, replication_offset and health; open slots
// only for `myself`. Accepts "\n" or "\r\n" line ends, a trailing empty line, and the
// `ip:port@cport,hostname` form (and the nodes.conf form with `,key=value` extras after the hostname).
TopologyResult parse_cluster_nodes(std::string_view text);
// The same, from the decoded reply: a RESP2 bulk string or a RESP3 verbatim string ("txt:" is dropped).
TopologyResult parse_cluster_nodes(const resp::Value& reply);

// Fills what `into` does not know from `from`, node by node (matched by id): every field that is unknown,
// empty or zero in `into` is taken from `from`, open slots when `into` has not got them for that node. Nodes
// only in `from` are added. Slot ownership in `into` is never changed: only slots that no node of `into` owns
// are taken from `from`. So SHARDS merged with the NODES of every node is the complete model, and merging the
// NODES of every node (in any order) collects every node's open slots.
void merge(Topology& into, const Topology& from);

enum class FindingKind : std::uint8_t {
  // check(): one model.
  kSlotsUncovered,         // slots no master owns (the cluster is down for them with full coverage required)
  kSlotOwnedTwice,         // two nodes list the same slot
  kSlotsOnReplica,         // a node that is not a master lists slots
  kEpochCollision,         // two masters with the same config epoch
  kSlotMigrating,          // `[slot->-id]` on a node
  kSlotImporting,          // `[slot-<-id]` on a node
  kMigratingAndImporting,  // one node has slots open in both directions (a known way to break clusters)
  kNodeFailed,             // flagged fail, or health fail
  kNodePFailed,            // flagged fail? by the node that answered
  kNodeLoading,            // SHARDS health loading: a replica that has not finished its first sync
  kEpochsUnknown,          // a master's config epoch is unknown (no NODES data): collisions not checked
  kOpenSlotsUnknown,       // a master's own NODES reply is missing: its open slots not checked
  kImportingFromFailed,    // a node imports slots from a node that has failed or is no longer known
  kReplicasOfEmptyMaster,  // replicas follow a master that owns no slot
  // compare_views(): several nodes' views.
  kOwnerDisagreement,    // the views name different owners for some slots
  kEpochDisagreement,    // the views give a master different config epochs
  kNodeSetDisagreement,  // a node (not in handshake) is in some views and not in others
  kRoleDisagreement,     // a node is a master in one view and a replica (or another master's) in another
  // The orchestrator's check, from what it asks each node (orchestrator/cluster_check.h).
  kNodeUnreachable,  // a node of the cluster did not answer
  kOrphanKeys,       // keys on a node in slots it neither owns (nor its master) nor imports
  kRefusingWrites,   // a master's min-replicas-to-write exceeds its replicas in sync: it refuses every write
  kMoveInProgress,   // a slotshift move holds its lease on nodes of the cluster
  kMoveUnfinished,   // a journal of this machine names a move of this cluster that neither ended nor was
                     // undone
};

std::string_view finding_kind_name(FindingKind kind);

// One consistency problem, for humans (message) and for the planner and fixer (the other fields).
struct Finding {
  FindingKind kind;
  std::string message;           // one line, with node ids shortened to 8 characters and their addresses
  std::string node_id;           // the node it is about, when there is one
  std::string peer_id;           // the other node: migrating/importing peer, the other master of a collision
  std::vector<SlotRange> slots;  // the slots it is about, when there are any
  std::uint64_t keys = 0;        // kOrphanKeys: how many keys
  std::string detail;            // kMoveUnfinished: the journal's path; kRefusingWrites: the setting's value
};

// Every check of one model: coverage, double ownership, slots on replicas, epoch collisions among masters,
// open slots, failing and loading nodes, and what could not be checked. Handshake nodes are ignored (their id
// and epoch are placeholders). An empty result means the model is consistent and complete.
std::vector<Finding> check(const Topology& topology);

// Compares several nodes' views (typically the CLUSTER NODES of every node): the owner of every slot, the
// config epochs of masters, the set of known nodes (handshake nodes ignored), and roles. A view is named by
// its myself_id (shortened) or, when it has none, by its position ("view #2").
std::vector<Finding> compare_views(std::span<const Topology> views);

}  // namespace slotshift
