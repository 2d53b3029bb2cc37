// Parsers and checks of common/topology.h on replies captured from real Redis 7.0.15 clusters
// (tests/data/topology/, written by capture.sh there; the states are described at the top of that script),
// plus hand-written edge cases that a live cluster does not produce on demand.
#include "common/topology.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using namespace slotshift;

namespace {

// The nodes of the captured cluster. A, B, C are the masters created by redis-cli (ports 7200-7202), A2, B2,
// C2 their replicas, E the master added without slots in the "reshaped" state.
constexpr std::string_view kA = "b5dadcd39f76085fa9370fd50fe65f81a91278ab";   // 7200
constexpr std::string_view kB = "7bf23f54c4b4cccd6622a0fd28a604742d8c5002";   // 7201
constexpr std::string_view kC = "4ef6627ae8fc7ce838964683fb8c1ea268b13f58";   // 7202
constexpr std::string_view kA2 = "52f727ef65f2c5516f9c3ff45566303eed162892";  // 7203, replica of A
constexpr std::string_view kB2 = "34953e1490fe713e0fc0f343df3e913c828bbfce";  // 7204, replica of B
constexpr std::string_view kC2 = "19db9e128fcfa73232ca1335323e7bd3371ccc24";  // 7205, replica of C
constexpr std::string_view kE = "f5c83ac0185c3ff9fa1e951d3d36e5b549dd63b5";   // 7206
// The node 7200 met on a port where nothing listens (failover/nodes-7200-handshake.txt).
constexpr std::string_view kHandshake = "ad956bf066782927e2858d8f93a4fa135c6d6d30";

std::string read_data(const std::string& name) {
  const std::string path = std::string(SLOTSHIFT_TEST_DATA) + "/topology/" + name;
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

resp::Value read_reply(const std::string& name) {
  const std::string bytes = read_data(name);
  resp::Value v;
  std::size_t consumed = 0;
  std::string error;
  REQUIRE_MESSAGE(resp::parse_reply(bytes, v, consumed, &error) == resp::Status::kComplete,
                  name << ": " << error);
  REQUIRE(consumed == bytes.size());
  return v;
}

Topology nodes_of(const std::string& name) {
  TopologyResult r = parse_cluster_nodes(read_data(name));
  REQUIRE_MESSAGE(r.ok(), name << ": " << r.error);
  return std::move(r.topology);
}

Topology shards_of(const std::string& name) {
  TopologyResult r = parse_cluster_shards(read_reply(name));
  REQUIRE_MESSAGE(r.ok(), name << ": " << r.error);
  return std::move(r.topology);
}

Topology slots_of(const std::string& name) {
  TopologyResult r = parse_cluster_slots(read_reply(name));
  REQUIRE_MESSAGE(r.ok(), name << ": " << r.error);
  return std::move(r.topology);
}

std::vector<Topology> views_of(const std::string& state, const std::vector<int>& ports) {
  std::vector<Topology> out;
  for (int p : ports)
    out.push_back(nodes_of(state + "/nodes-" + std::to_string(p) + ".txt"));
  return out;
}

// `base` merged with every view, in order.
Topology merged(Topology base, const std::vector<Topology>& views) {
  for (const Topology& v : views)
    merge(base, v);
  return base;
}

const Node& node(const Topology& t, std::string_view id) {
  const Node* n = t.find(id);
  REQUIRE_MESSAGE(n != nullptr, "no node " << id);
  return *n;
}

std::string slots_text(const Topology& t, std::string_view id) {
  return format_slot_ranges(node(t, id).slots);
}

std::string owner_id(const Topology& t, int slot) {
  const Node* n = t.owner(static_cast<Slot>(slot));
  return n == nullptr ? std::string() : n->id;
}

std::string dump(const std::vector<Finding>& findings) {
  std::string out;
  for (const Finding& f : findings)
    out += std::string(finding_kind_name(f.kind)) + ": " + f.message + "\n";
  return out;
}

std::vector<FindingKind> kinds(const std::vector<Finding>& findings) {
  std::vector<FindingKind> out;
  for (const Finding& f : findings)
    out.push_back(f.kind);
  return out;
}

std::size_t count(const std::vector<Finding>& findings, FindingKind kind) {
  return static_cast<std::size_t>(
      std::count_if(findings.begin(), findings.end(), [&](const Finding& f) { return f.kind == kind; }));
}

const Finding* find_finding(const std::vector<Finding>& findings, FindingKind kind,
                            std::string_view node_id) {
  for (const Finding& f : findings) {
    if (f.kind == kind && f.node_id == node_id) return &f;
  }
  return nullptr;
}

NodeFlags flags(std::initializer_list<std::string_view> names) {
  NodeFlags f;
  for (std::string_view n : names) {
    if (n == "myself") f.myself = true;
    if (n == "master") f.master = true;
    if (n == "slave") f.replica = true;
    if (n == "fail?") f.pfail = true;
    if (n == "fail") f.fail = true;
    if (n == "handshake") f.handshake = true;
    if (n == "noaddr") f.noaddr = true;
    if (n == "nofailover") f.nofailover = true;
  }
  return f;
}

// Two models describe the same cluster: the same owner for every slot, the same nodes (ids, addresses, roles,
// masters, ranges). `skip_slotless_masters`: CLUSTER SLOTS does not list masters without slots.
void check_same_cluster(const Topology& a, const Topology& b, bool skip_slotless_masters = false) {
  for (int s = 0; s < kSlotCount; ++s) {
    if (owner_id(a, s) != owner_id(b, s)) {
      FAIL_CHECK("slot " << s << ": " << owner_id(a, s) << " vs " << owner_id(b, s));
      break;
    }
  }
  for (const Node& n : a.nodes) {
    if (n.in_handshake() || n.failed()) continue;
    if (skip_slotless_masters && n.is_master() && n.slots.empty()) continue;
    const Node* m = b.find(n.id);
    REQUIRE_MESSAGE(m != nullptr, "node " << n.id << " missing");
    CHECK(m->ip == n.ip);
    CHECK(m->port == n.port);
    CHECK(m->role == n.role);
    CHECK(m->master_id == n.master_id);
    CHECK(m->hostname == n.hostname);
    CHECK(format_slot_ranges(m->slots) == format_slot_ranges(n.slots));
  }
  std::size_t live_b = 0;
  for (const Node& n : b.nodes) {
    if (!n.in_handshake() && !n.failed() && !(skip_slotless_masters && n.is_master() && n.slots.empty()))
      ++live_b;
  }
  std::size_t live_a = 0;
  for (const Node& n : a.nodes) {
    if (!n.in_handshake() && !n.failed() && !(skip_slotless_masters && n.is_master() && n.slots.empty()))
      ++live_a;
  }
  CHECK(live_a == live_b);
}

constexpr std::initializer_list<int> kHealthyPorts = {7200, 7201, 7202, 7203, 7204, 7205};

}  // namespace

// =================================================================================================================
// Captured: healthy (3 masters, 1 replica each, as `redis-cli --cluster create --cluster-replicas 1` left
// them)

TEST_CASE("CLUSTER NODES, healthy: every field of every node") {
  const Topology t = nodes_of("healthy/nodes-7200.txt");
  CHECK(t.nodes.size() == 6);
  CHECK(t.myself_id == kA);
  CHECK(t.sources == Sources{false, false, true});

  const Node& a = node(t, kA);
  CHECK(a.ip == "127.0.0.1");
  CHECK(a.port == 7200);
  CHECK(a.bus_port == 17200);
  CHECK(a.tls_port == 0);
  CHECK(a.hostname.empty());
  CHECK(a.endpoint.empty());
  CHECK(a.address() == "127.0.0.1");
  CHECK(a.role == NodeRole::kMaster);
  CHECK(a.master_id.empty());
  REQUIRE(a.flags);
  CHECK(*a.flags == flags({"myself", "master"}));
  CHECK(format_flags(*a.flags) == "myself,master");
  CHECK(a.config_epoch == 1u);
  CHECK(a.link == LinkState::kConnected);
  CHECK(a.ping_sent_ms == 0);
  CHECK(a.pong_received_ms == 1795621130000);
  CHECK(!a.replication_offset);
  CHECK(a.health == Health::kUnknown);
  CHECK(slots_text(t, kA) == "0-5460");
  CHECK(a.slot_count() == 5461);
  CHECK(a.open_slots_known);
  CHECK(a.migrating.empty());
  CHECK(a.importing.empty());
  CHECK(a.sources == Sources{false, false, true});

  struct Expect {
    std::string_view id;
    int port;
    NodeRole role;
    std::string_view master;
    std::uint64_t epoch;
    std::int64_t pong;
    std::string_view slots;
  };
  const Expect others[] = {
      {kB, 7201, NodeRole::kMaster, "", 2, 1795621131519, "5461-10922"},
      {kC, 7202, NodeRole::kMaster, "", 3, 1795621130817, "10923-16383"},
      // A replica's epoch column is its master's config epoch.
      {kA2, 7203, NodeRole::kReplica, kA, 1, 1795621130516, ""},
      {kB2, 7204, NodeRole::kReplica, kB, 2, 1795621131000, ""},
      {kC2, 7205, NodeRole::kReplica, kC, 3, 1795621131620, ""},
  };
  for (const Expect& e : others) {
    CAPTURE(e.id);
    const Node& n = node(t, e.id);
    CHECK(n.ip == "127.0.0.1");
    CHECK(n.port == e.port);
    CHECK(n.bus_port == e.port + 10000);
    CHECK(n.role == e.role);
    CHECK(n.master_id == e.master);
    REQUIRE(n.flags);
    CHECK(*n.flags == (e.role == NodeRole::kMaster ? flags({"master"}) : flags({"slave"})));
    CHECK(n.config_epoch == e.epoch);
    CHECK(n.link == LinkState::kConnected);
    CHECK(n.ping_sent_ms == 0);
    CHECK(n.pong_received_ms == e.pong);
    CHECK(slots_text(t, e.id) == e.slots);
    CHECK(!n.open_slots_known);  // NODES shows open slots only on the myself line
  }

  CHECK(owner_id(t, 0) == kA);
  CHECK(owner_id(t, 5460) == kA);
  CHECK(owner_id(t, 5461) == kB);
  CHECK(owner_id(t, 10922) == kB);
  CHECK(owner_id(t, 10923) == kC);
  CHECK(owner_id(t, 16383) == kC);
  CHECK(t.masters().size() == 3);
  REQUIRE(t.replicas_of(kB).size() == 1);
  CHECK(t.replicas_of(kB)[0]->id == kB2);
  CHECK(t.myself() == &a);
}

TEST_CASE("CLUSTER NODES, healthy: all six views agree and the merged model checks clean") {
  const std::vector<Topology> views = views_of("healthy", kHealthyPorts);
  const std::vector<std::string_view> myself = {kA, kB, kC, kA2, kB2, kC2};
  for (std::size_t i = 0; i < views.size(); ++i) {
    CHECK(views[i].myself_id == myself[i]);
    CHECK(views[i].nodes.size() == 6);
    check_same_cluster(views[0], views[i]);
  }
  const std::vector<Finding> cmp = compare_views(views);
  CHECK_MESSAGE(cmp.empty(), dump(cmp));

  const Topology all = merged(Topology{}, views);
  for (const Node& n : all.nodes)
    CHECK(n.open_slots_known);
  const std::vector<Finding> findings = check(all);
  CHECK_MESSAGE(findings.empty(), dump(findings));

  // One view alone cannot say whether the other masters have open slots, and says so.
  const std::vector<Finding> one = check(views[0]);
  REQUIRE_MESSAGE(kinds(one) == std::vector{FindingKind::kOpenSlotsUnknown}, dump(one));
  CHECK(one[0].message.find("7bf23f54 (127.0.0.1:7201)") != std::string::npos);
  CHECK(one[0].message.find("4ef6627a (127.0.0.1:7202)") != std::string::npos);
  CHECK(one[0].message.find("b5dadcd3") == std::string::npos);
}

TEST_CASE("CLUSTER SHARDS, healthy, RESP2 and RESP3: every field") {
  for (const char* file : {"healthy/shards-7203.resp2", "healthy/shards-7203.resp3"}) {
    CAPTURE(file);
    const resp::Value v = read_reply(file);
    const bool resp3 = std::string_view(file).ends_with("3");
    REQUIRE(v.elements.size() == 3);
    CHECK(v.elements[0].type == (resp3 ? resp::Type::kMap : resp::Type::kArray));

    const Topology t = shards_of(file);
    CHECK(t.sources == Sources{true, false, false});
    CHECK(t.myself_id.empty());
    REQUIRE(t.nodes.size() == 6);
    // In the order of the reply: shard by shard, master first.
    const std::vector<std::string_view> order = {kB, kB2, kA, kA2, kC, kC2};
    for (std::size_t i = 0; i < order.size(); ++i)
      CHECK(t.nodes[i].id == order[i]);

    const std::pair<std::string_view, std::string_view> shards[] = {{kA, kA2}, {kB, kB2}, {kC, kC2}};
    const int ports[][2] = {{7200, 7203}, {7201, 7204}, {7202, 7205}};
    const char* ranges[] = {"0-5460", "5461-10922", "10923-16383"};
    for (int i = 0; i < 3; ++i) {
      const Node& m = node(t, shards[i].first);
      const Node& r = node(t, shards[i].second);
      CHECK(m.port == ports[i][0]);
      CHECK(r.port == ports[i][1]);
      for (const Node* n : {&m, &r}) {
        CHECK(n->ip == "127.0.0.1");
        CHECK(n->endpoint == "127.0.0.1");
        CHECK(n->hostname.empty());
        CHECK(n->tls_port == 0);
        CHECK(n->bus_port == 0);
        CHECK(n->replication_offset == 14);
        CHECK(n->health == Health::kOnline);
        CHECK(!n->flags);
        CHECK(!n->config_epoch);
        CHECK(n->link == LinkState::kUnknown);
        CHECK(!n->ping_sent_ms);
        CHECK(!n->open_slots_known);
        CHECK(n->sources == Sources{true, false, false});
      }
      CHECK(m.role == NodeRole::kMaster);
      CHECK(m.master_id.empty());
      CHECK(format_slot_ranges(m.slots) == ranges[i]);
      CHECK(r.role == NodeRole::kReplica);
      CHECK(r.master_id == m.id);
      CHECK(r.slots.empty());
    }
    // SHARDS has neither epochs nor open slots: check() says it could not look.
    const std::vector<Finding> f = check(t);
    const std::vector<FindingKind> expected = {FindingKind::kEpochsUnknown, FindingKind::kOpenSlotsUnknown};
    CHECK_MESSAGE(kinds(f) == expected, dump(f));
  }
}

TEST_CASE("CLUSTER SHARDS right after create: health is `loading` for replicas whose offset is still 0") {
  // Captured before anything had been replicated: every offset is 0, and 7.0 calls a replica at offset 0
  // "loading" although its link is up.
  for (const char* file : {"healthy/shards-7200.resp2", "healthy/shards-7200.resp3"}) {
    CAPTURE(file);
    const Topology t = shards_of(file);
    for (const Node& n : t.nodes) {
      CHECK(n.replication_offset == 0);
      CHECK(n.health == (n.is_master() ? Health::kOnline : Health::kLoading));
    }
    const std::vector<Finding> f = check(t);
    CHECK(count(f, FindingKind::kNodeLoading) == 3);
    for (std::string_view id : {kA2, kB2, kC2})
      CHECK(find_finding(f, FindingKind::kNodeLoading, id) != nullptr);
    check_same_cluster(t, shards_of("healthy/shards-7203.resp2"));
  }
}

TEST_CASE("CLUSTER SLOTS, healthy, RESP2 and RESP3: every field") {
  for (const char* file : {"healthy/slots-7203.resp2", "healthy/slots-7203.resp3"}) {
    CAPTURE(file);
    const Topology t = slots_of(file);
    CHECK(t.sources == Sources{false, true, false});
    REQUIRE(t.nodes.size() == 6);
    for (const Node& n : t.nodes) {
      CHECK(n.ip == "127.0.0.1");
      CHECK(n.endpoint == "127.0.0.1");
      CHECK(n.hostname.empty());
      CHECK(!n.flags);
      CHECK(!n.config_epoch);
      CHECK(!n.replication_offset);
      CHECK(n.health == Health::kUnknown);
      CHECK(n.sources == Sources{false, true, false});
    }
    CHECK(node(t, kA).port == 7200);
    CHECK(node(t, kB).port == 7201);
    CHECK(node(t, kC).port == 7202);
    CHECK(node(t, kA2).port == 7203);
    CHECK(node(t, kB2).port == 7204);
    CHECK(node(t, kC2).port == 7205);
    CHECK(slots_text(t, kA) == "0-5460");
    CHECK(slots_text(t, kB) == "5461-10922");
    CHECK(slots_text(t, kC) == "10923-16383");
    CHECK(node(t, kA).role == NodeRole::kMaster);
    CHECK(node(t, kA2).role == NodeRole::kReplica);
    CHECK(node(t, kA2).master_id == kA);
    CHECK(node(t, kB2).master_id == kB);
    CHECK(node(t, kC2).master_id == kC);
    CHECK(node(t, kA2).slots.empty());
  }
  // Captured right after healthy/shards-7200 (every offset 0): CLUSTER SLOTS leaves out replicas that are
  // failing or at offset 0 (isReplicaAvailable() in the server). The RESP2 reply has only the masters; by the
  // RESP3 reply, a few milliseconds later, 7200 had heard of C2's first offset.
  for (const char* file : {"healthy/slots-7200.resp2", "healthy/slots-7200.resp3"}) {
    CAPTURE(file);
    const Topology t = slots_of(file);
    const bool resp3 = std::string_view(file).ends_with("3");
    CHECK(t.nodes.size() == (resp3 ? 4u : 3u));
    CHECK(t.masters().size() == 3);
    CHECK((t.find(kC2) != nullptr) == resp3);
    for (int s = 0; s < kSlotCount; s += 97)
      CHECK(owner_id(t, s) == owner_id(slots_of("healthy/slots-7203.resp2"), s));
  }
}

TEST_CASE("the three parsers agree on the healthy cluster") {
  const Topology nodes = nodes_of("healthy/nodes-7203.txt");
  for (const char* file : {"healthy/shards-7203.resp2", "healthy/shards-7203.resp3"}) {
    CAPTURE(file);
    check_same_cluster(nodes, shards_of(file));
  }
  for (const char* file : {"healthy/slots-7203.resp2", "healthy/slots-7203.resp3"}) {
    CAPTURE(file);
    check_same_cluster(nodes, slots_of(file));
  }
  // SHARDS merged with every node's NODES: complete, and clean.
  Topology full = merged(shards_of("healthy/shards-7203.resp3"), views_of("healthy", kHealthyPorts));
  CHECK(full.sources == Sources{true, false, true});
  const Node& a = node(full, kA);
  CHECK(a.config_epoch == 1u);
  CHECK(a.bus_port == 17200);
  CHECK(a.replication_offset == 14);
  CHECK(a.health == Health::kOnline);
  CHECK(a.endpoint == "127.0.0.1");
  CHECK(a.sources == Sources{true, false, true});
  CHECK(node(full, kA2).config_epoch == 1u);
  const std::vector<Finding> f = check(full);
  CHECK_MESSAGE(f.empty(), dump(f));
}

// =================================================================================================================
// Captured: reshaped (hostname on B, nofailover on A2, slotless master E, slots 100-109 moved A -> C and
// 16000 moved C -> A with IMPORTING + SETSLOT NODE, which bumped C to epoch 7 and then A to 8)

TEST_CASE("reshaped: several disjoint ranges, a master without slots, a hostname, nofailover") {
  const std::vector<Topology> views = views_of("reshaped", {7200, 7201, 7202, 7203, 7204, 7205, 7206});
  const Topology& t = views[0];
  CHECK(t.nodes.size() == 7);
  CHECK(slots_text(t, kA) == "0-99 110-5460 16000");
  CHECK(slots_text(t, kC) == "100-109 10923-15999 16001-16383");
  CHECK(slots_text(t, kB) == "5461-10922");
  CHECK(node(t, kA).config_epoch == 8u);
  CHECK(node(t, kB).config_epoch == 2u);
  CHECK(node(t, kC).config_epoch == 7u);
  CHECK(node(t, kA2).config_epoch == 8u);
  CHECK(node(t, kC2).config_epoch == 7u);
  const Node& e = node(t, kE);
  CHECK(e.role == NodeRole::kMaster);
  CHECK(e.slots.empty());
  CHECK(e.config_epoch == 0u);
  CHECK(e.port == 7206);
  CHECK(node(t, kB).hostname == "node-b.example");
  CHECK(node(t, kB).ip == "127.0.0.1");
  CHECK(node(t, kB).bus_port == 17201);
  CHECK(*node(t, kA2).flags == flags({"slave", "nofailover"}));
  CHECK(format_flags(*node(t, kA2).flags) == "slave,nofailover");
  CHECK(owner_id(t, 99) == kA);
  CHECK(owner_id(t, 100) == kC);
  CHECK(owner_id(t, 109) == kC);
  CHECK(owner_id(t, 110) == kA);
  CHECK(owner_id(t, 15999) == kC);
  CHECK(owner_id(t, 16000) == kA);
  CHECK(owner_id(t, 16001) == kC);
  CHECK(views[6].myself_id == kE);
  CHECK(*views[6].myself()->flags == flags({"myself", "master"}));

  const std::vector<Finding> cmp = compare_views(views);
  CHECK_MESSAGE(cmp.empty(), dump(cmp));

  for (const char* file : {"reshaped/shards-7200.resp2", "reshaped/shards-7200.resp3"}) {
    CAPTURE(file);
    const Topology s = shards_of(file);
    check_same_cluster(t, s);
    CHECK(node(s, kB).hostname == "node-b.example");
    CHECK(node(s, kB).endpoint == "127.0.0.1");  // the preferred endpoint stays the ip
    CHECK(node(s, kE).slots.empty());
    CHECK(node(s, kE).replication_offset == 0);
    CHECK(node(s, kE).health == Health::kOnline);  // "loading" is for replicas only
    const Topology full = merged(s, views);
    const std::vector<Finding> f = check(full);
    CHECK_MESSAGE(f.empty(), dump(f));
  }
  for (const char* file : {"reshaped/slots-7200.resp2", "reshaped/slots-7200.resp3"}) {
    CAPTURE(file);
    const Topology s = slots_of(file);
    CHECK(s.nodes.size() == 6);  // the slotless master is not in CLUSTER SLOTS
    CHECK(s.find(kE) == nullptr);
    check_same_cluster(t, s, true);
    CHECK(node(s, kB).hostname == "node-b.example");  // from the metadata map
    CHECK(slots_text(s, kA) == "0-99 110-5460 16000");
    // Merging in the NODES views adds E and fills epochs and open slots.
    const Topology full = merged(s, views);
    CHECK(full.find(kE) != nullptr);
    CHECK(node(full, kE).config_epoch == 0u);
    const std::vector<Finding> f = check(full);
    CHECK_MESSAGE(f.empty(), dump(f));
  }
}

// =================================================================================================================
// Captured: open (slot 200 MIGRATING on A to B and IMPORTING on B from A; slot 5000 IMPORTING on C from A
// with nothing on A; slot 6000 MIGRATING on B to C)

TEST_CASE("open slots: each node's NODES shows its own, the merged model reports every one") {
  const std::vector<Topology> views = views_of("open", {7200, 7201, 7202, 7203, 7204, 7205, 7206});
  const Topology& a_view = views[0];
  CHECK(node(a_view, kA).migrating == std::map<Slot, std::string>{{200, std::string(kB)}});
  CHECK(node(a_view, kA).importing.empty());
  CHECK(slots_text(a_view, kA) == "0-99 110-5460 16000");  // open slots are not ranges
  CHECK(!node(a_view, kB).open_slots_known);
  CHECK(node(a_view, kB).migrating.empty());
  const Topology& b_view = views[1];
  CHECK(node(b_view, kB).importing == std::map<Slot, std::string>{{200, std::string(kA)}});
  CHECK(node(b_view, kB).migrating == std::map<Slot, std::string>{{6000, std::string(kC)}});
  CHECK(node(b_view, kB).hostname == "node-b.example");
  const Topology& c_view = views[2];
  CHECK(node(c_view, kC).importing == std::map<Slot, std::string>{{5000, std::string(kA)}});
  CHECK(node(c_view, kC).migrating.empty());
  CHECK(owner_id(c_view, 5000) == kA);  // IMPORTING does not change the owner

  const std::vector<Finding> cmp = compare_views(views);
  CHECK_MESSAGE(cmp.empty(), dump(cmp));

  const Topology all = merged(Topology{}, views);
  const std::vector<Finding> f = check(all);
  REQUIRE_MESSAGE(f.size() == 5, dump(f));
  const Finding* m200 = find_finding(f, FindingKind::kSlotMigrating, kA);
  REQUIRE(m200 != nullptr);
  CHECK(m200->peer_id == kB);
  CHECK(m200->slots == std::vector<SlotRange>{{200, 200}});
  CHECK(m200->message == "b5dadcd3 (127.0.0.1:7200) has slot 200 MIGRATING to 7bf23f54 (127.0.0.1:7201)");
  const Finding* i200 = find_finding(f, FindingKind::kSlotImporting, kB);
  REQUIRE(i200 != nullptr);
  CHECK(i200->peer_id == kA);
  CHECK(i200->slots == std::vector<SlotRange>{{200, 200}});
  CHECK(i200->message == "7bf23f54 (127.0.0.1:7201) has slot 200 IMPORTING from b5dadcd3 (127.0.0.1:7200)");
  const Finding* m6000 = find_finding(f, FindingKind::kSlotMigrating, kB);
  REQUIRE(m6000 != nullptr);
  CHECK(m6000->peer_id == kC);
  CHECK(m6000->slots == std::vector<SlotRange>{{6000, 6000}});
  const Finding* i5000 = find_finding(f, FindingKind::kSlotImporting, kC);
  REQUIRE(i5000 != nullptr);
  CHECK(i5000->peer_id == kA);
  CHECK(i5000->slots == std::vector<SlotRange>{{5000, 5000}});
  CHECK(find_finding(f, FindingKind::kMigratingAndImporting, kB) != nullptr);

  // SHARDS and SLOTS show no trace of it: same owners as without open slots, and check() says it cannot know.
  for (const char* file : {"open/shards-7200.resp2", "open/shards-7200.resp3"}) {
    CAPTURE(file);
    const Topology s = shards_of(file);
    check_same_cluster(a_view, s);
    CHECK(count(check(s), FindingKind::kOpenSlotsUnknown) == 1);
    CHECK(count(check(s), FindingKind::kSlotMigrating) == 0);
    CHECK(check(merged(s, views)).size() == 5);
  }
  check_same_cluster(a_view, slots_of("open/slots-7200.resp3"), true);
}

// =================================================================================================================
// Captured: disagree (B, the master with the lowest epoch, ran CLUSTER SETSLOT 1 NODE B without IMPORTING: no
// epoch bump, so nobody else accepts it; its NODES was read in the same write as the claim)

TEST_CASE("disagree: one node believes it owns a slot that everyone else gives to A") {
  const std::vector<Topology> views = views_of("disagree", {7200, 7201, 7202, 7203, 7204, 7205, 7206});
  const Topology& b_view = views[1];
  CHECK(slots_text(b_view, kB) == "1 5461-10922");
  CHECK(slots_text(b_view, kA) == "0 2-99 110-5460 16000");
  CHECK(owner_id(b_view, 1) == kB);
  CHECK(owner_id(views[0], 1) == kA);
  for (const Topology& v : views)
    CHECK_MESSAGE(count(check(v), FindingKind::kSlotOwnedTwice) == 0, dump(check(v)));

  const std::vector<Finding> cmp = compare_views(views);
  REQUIRE_MESSAGE(cmp.size() == 1, dump(cmp));
  CHECK(cmp[0].kind == FindingKind::kOwnerDisagreement);
  CHECK(cmp[0].slots == std::vector<SlotRange>{{1, 1}});
  CHECK(cmp[0].message ==
        "views disagree on the owner of slot 1: b5dadcd3 (127.0.0.1:7200) according to b5dadcd3, 4ef6627a, "
        "52f727ef, 34953e14, 19db9e12, f5c83ac0; 7bf23f54 (127.0.0.1:7201) according to 7bf23f54");

  // Without B's view, or with only B's and its replica's, the views agree.
  std::vector<Topology> others = views;
  others.erase(others.begin() + 1);
  CHECK(compare_views(others).empty());

  // merge() keeps the first view's owner; it never invents a double ownership.
  const Topology all = merged(Topology{}, views);
  CHECK(owner_id(all, 1) == kA);
  const std::vector<Finding> f = check(all);
  CHECK_MESSAGE(f.empty(), dump(f));
}

// =================================================================================================================
// Captured: pfail (B, C and E frozen with SIGSTOP for longer than node-timeout: A alone cannot make a
// majority, so they stay fail? and no replica is promoted)

TEST_CASE("pfail: fail? in NODES, nothing in SHARDS") {
  const Topology t = nodes_of("pfail/nodes-7200.txt");
  for (std::string_view id : {kB, kC, kE}) {
    CAPTURE(id);
    const Node& n = node(t, id);
    CHECK(*n.flags == flags({"master", "fail?"}));
    CHECK(n.pfailed());
    CHECK(!n.failed());
    CHECK(n.link == LinkState::kConnected);  // a stopped process keeps its TCP connections
    CHECK(*n.ping_sent_ms > 0);              // a ping is outstanding
  }
  CHECK(node(t, kB).ping_sent_ms == 1795621142104);
  CHECK(node(t, kB).pong_received_ms == 1795621140590);
  CHECK(*node(t, kA2).flags == flags({"slave", "nofailover"}));

  const std::vector<Finding> f = check(t);
  CHECK(count(f, FindingKind::kNodePFailed) == 3);
  CHECK(count(f, FindingKind::kNodeFailed) == 0);
  const Finding* c = find_finding(f, FindingKind::kNodePFailed, kC);
  REQUIRE(c != nullptr);
  CHECK(c->slots == node(t, kC).slots);
  CHECK(c->message.find("owns slots 100-109 10923-15999 16001-16383") != std::string::npos);

  const Topology r = nodes_of("pfail/nodes-7203.txt");
  CHECK(node(r, kE).link == LinkState::kDisconnected);
  CHECK(count(check(r), FindingKind::kNodePFailed) == 3);
  CHECK(compare_views(std::vector<Topology>{t, r}).empty());

  // SHARDS's health knows only fail, not fail?: the frozen nodes are "online" there.
  for (const char* file : {"pfail/shards-7200.resp2", "pfail/shards-7200.resp3"}) {
    const Topology s = shards_of(file);
    for (const Node& n : s.nodes)
      CHECK(n.health == Health::kOnline);
    CHECK(count(check(s), FindingKind::kNodePFailed) == 0);
    CHECK(count(check(merged(s, {t})), FindingKind::kNodePFailed) == 3);
  }
}

// =================================================================================================================
// Captured: failover (C killed with SIGKILL; C2 promoted with epoch 9)

TEST_CASE("failover: the dead master is flagged fail, its replica owns its slots") {
  const std::vector<Topology> views = views_of("failover", {7200, 7201, 7203, 7204, 7205, 7206});
  const Topology& t = views[0];
  const Node& c = node(t, kC);
  CHECK(*c.flags == flags({"master", "fail"}));
  CHECK(c.failed());
  CHECK(c.link == LinkState::kDisconnected);
  CHECK(c.slots.empty());
  CHECK(c.config_epoch == 7u);
  CHECK(c.ping_sent_ms == 1795621232539);
  const Node& c2 = node(t, kC2);
  CHECK(c2.role == NodeRole::kMaster);
  CHECK(c2.master_id.empty());
  CHECK(c2.config_epoch == 9u);
  CHECK(slots_text(t, kC2) == "100-109 10923-15999 16001-16383");
  CHECK(t.replicas_of(kC).empty());
  CHECK(t.replicas_of(kC2).empty());

  const std::vector<Finding> cmp = compare_views(views);
  CHECK_MESSAGE(cmp.empty(), dump(cmp));
  const std::vector<Finding> f = check(merged(Topology{}, views));
  REQUIRE_MESSAGE(f.size() == 1, dump(f));
  CHECK(f[0].kind == FindingKind::kNodeFailed);
  CHECK(f[0].node_id == kC);
  CHECK(f[0].slots.empty());
  CHECK(f[0].message == "4ef6627a (127.0.0.1:7202) is flagged fail");

  for (const char* file : {"failover/shards-7200.resp2", "failover/shards-7200.resp3"}) {
    CAPTURE(file);
    const Topology s = shards_of(file);
    CHECK(s.nodes.size() == 7);
    const Node& sc = node(s, kC);
    CHECK(sc.health == Health::kFailed);
    CHECK(sc.role == NodeRole::kMaster);
    CHECK(sc.slots.empty());
    CHECK(sc.replication_offset == 140);
    CHECK(node(s, kC2).role == NodeRole::kMaster);
    CHECK(node(s, kC2).replication_offset == 140);
    CHECK(node(s, kA).replication_offset == 154);
    check_same_cluster(t, s);
    const std::vector<Finding> sf = check(s);
    const Finding* failed = find_finding(sf, FindingKind::kNodeFailed, kC);
    REQUIRE(failed != nullptr);
    CHECK(failed->message == "4ef6627a (127.0.0.1:7202) is reported with health fail");
  }
  for (const char* file : {"failover/slots-7200.resp2", "failover/slots-7200.resp3"}) {
    CAPTURE(file);
    const Topology s = slots_of(file);
    CHECK(s.nodes.size() == 5);  // neither the dead master nor the slotless one
    CHECK(s.find(kC) == nullptr);
    check_same_cluster(t, s, true);
  }
}

TEST_CASE("handshake: a node met on a dead port") {
  const Topology t = nodes_of("failover/nodes-7200-handshake.txt");
  const Node& h = node(t, kHandshake);
  CHECK(*h.flags == flags({"handshake"}));
  CHECK(h.in_handshake());
  CHECK(h.role == NodeRole::kUnknown);
  CHECK(h.port == 7299);
  CHECK(h.bus_port == 17299);
  CHECK(h.config_epoch == 0u);
  CHECK(h.ping_sent_ms == 0);
  CHECK(h.pong_received_ms == 0);
  CHECK(h.link == LinkState::kDisconnected);
  CHECK(h.slots.empty());
  // Its epoch 0 is a placeholder: no collision with E (a real master at epoch 0), and other views that do not
  // know it are not in disagreement.
  const std::vector<Finding> f = check(t);
  CHECK_MESSAGE(count(f, FindingKind::kEpochCollision) == 0, dump(f));
  const std::vector<Topology> views = {t, nodes_of("failover/nodes-7201.txt")};
  CHECK(compare_views(views).empty());
}

// =================================================================================================================
// Findings that the captures do not show, on edited captures and hand-built models

TEST_CASE("epoch collision: two masters with the same config epoch") {
  std::string text = read_data("healthy/nodes-7200.txt");
  const std::string from = " 2 connected 5461-10922";
  const std::size_t at = text.find(from);
  REQUIRE(at != std::string::npos);
  text.replace(at, from.size(), " 1 connected 5461-10922");  // B now shares A's epoch 1
  TopologyResult r = parse_cluster_nodes(text);
  REQUIRE(r.ok());
  const std::vector<Finding> f = check(r.topology);
  REQUIRE(count(f, FindingKind::kEpochCollision) == 1);
  const Finding& c = *std::find_if(f.begin(), f.end(),
                                   [](const Finding& x) { return x.kind == FindingKind::kEpochCollision; });
  CHECK(((c.node_id == kA && c.peer_id == kB) || (c.node_id == kB && c.peer_id == kA)));
  CHECK(c.message.find("share config epoch 1") != std::string::npos);
  // The replicas print the same epoch as their masters: that is no collision.
  CHECK(check(nodes_of("healthy/nodes-7200.txt")).size() == 1);

  // Two slotless masters both at 0 collide too (the server resolves it the same way).
  const std::string two_empty =
      "1111111111111111111111111111111111111111 10.0.0.1:7000@17000 myself,master - 0 0 0 connected 0-16383\n"
      "2222222222222222222222222222222222222222 10.0.0.2:7000@17000 master - 0 0 0 connected\n";
  TopologyResult e = parse_cluster_nodes(two_empty);
  REQUIRE(e.ok());
  CHECK(count(check(e.topology), FindingKind::kEpochCollision) == 1);
}

TEST_CASE("slots owned twice, slots on a replica, uncovered slots") {
  Topology t;
  Node a;
  a.id = std::string(kA);
  a.role = NodeRole::kMaster;
  a.slots = {{0, 100}};
  Node b;
  b.id = std::string(kB);
  b.role = NodeRole::kMaster;
  b.slots = {{50, 200}, {300, 300}};
  Node r;
  r.id = std::string(kA2);
  r.role = NodeRole::kReplica;
  r.master_id = a.id;
  r.slots = {{16383, 16383}};
  t.nodes = {a, b, r};
  t.rebuild_owners();
  CHECK(owner_id(t, 50) == kA);  // the first keeps the table entry
  CHECK(owner_id(t, 101) == kB);
  CHECK(owner_id(t, 16383) == kA2);

  const std::vector<Finding> f = check(t);
  const Finding* twice = find_finding(f, FindingKind::kSlotOwnedTwice, kA);
  REQUIRE_MESSAGE(twice != nullptr, dump(f));
  CHECK(twice->peer_id == kB);
  CHECK(twice->slots == std::vector<SlotRange>{{50, 100}});
  CHECK(twice->message == "slots 50-100 claimed by both b5dadcd3 and 7bf23f54");
  CHECK(find_finding(f, FindingKind::kSlotsOnReplica, kA2) != nullptr);
  REQUIRE(count(f, FindingKind::kSlotsUncovered) == 1);
  const Finding& u = *std::find_if(f.begin(), f.end(),
                                   [](const Finding& x) { return x.kind == FindingKind::kSlotsUncovered; });
  CHECK(u.slots == std::vector<SlotRange>{{201, 299}, {301, 16382}});
  CHECK(u.message == "16181 of 16384 slots have no owner: 201-299 301-16382");

  // A captured view without C's line: C's slots are uncovered, and C2 points at a master nobody lists.
  std::string text = read_data("healthy/nodes-7200.txt");
  const std::size_t c_line = text.find(std::string(kC) + " 127.0.0.1:7202");
  REQUIRE(c_line != std::string::npos);
  text.erase(c_line, text.find('\n', c_line) + 1 - c_line);
  TopologyResult without_c = parse_cluster_nodes(text);
  REQUIRE(without_c.ok());
  const std::vector<Finding> g = check(without_c.topology);
  REQUIRE(count(g, FindingKind::kSlotsUncovered) == 1);
  CHECK(g[0].slots == std::vector<SlotRange>{{10923, 16383}});
  CHECK(compare_views(std::vector<Topology>{without_c.topology, nodes_of("healthy/nodes-7201.txt")}).size() ==
        2);
}

TEST_CASE("compare_views: epochs, node sets and roles") {
  const std::string base =
      "1111111111111111111111111111111111111111 10.0.0.1:7000@17000 myself,master - 0 0 5 connected 0-8191\n"
      "2222222222222222222222222222222222222222 10.0.0.2:7000@17000 master - 0 0 6 connected 8192-16383\n"
      "3333333333333333333333333333333333333333 10.0.0.3:7000@17000 slave "
      "1111111111111111111111111111111111111111 "
      "0 0 5 connected\n";
  const std::string other =
      "1111111111111111111111111111111111111111 10.0.0.1:7000@17000 master - 0 0 5 connected 0-8191\n"
      "2222222222222222222222222222222222222222 10.0.0.2:7000@17000 myself,master - 0 0 7 connected "
      "8192-16383\n"
      "3333333333333333333333333333333333333333 10.0.0.3:7000@17000 slave "
      "2222222222222222222222222222222222222222 "
      "0 0 7 connected\n"
      "4444444444444444444444444444444444444444 10.0.0.4:7000@17000 master - 0 0 0 connected\n";
  const std::vector<Topology> views = {parse_cluster_nodes(base).topology,
                                       parse_cluster_nodes(other).topology};
  const std::vector<Finding> f = compare_views(views);
  const std::vector<FindingKind> expected = {FindingKind::kEpochDisagreement, FindingKind::kRoleDisagreement,
                                             FindingKind::kNodeSetDisagreement};
  CHECK_MESSAGE(kinds(f) == expected, dump(f));
  CHECK(f[0].node_id == "2222222222222222222222222222222222222222");
  CHECK(f[0].message ==
        "views disagree on the config epoch of master 22222222 (10.0.0.2:7000): 6 according to 11111111; 7 "
        "according to 22222222");
  CHECK(f[1].node_id == "3333333333333333333333333333333333333333");
  CHECK(f[2].message == "44444444 (10.0.0.4:7000) is known to 22222222 but not to 11111111");
  CHECK(compare_views(std::span<const Topology>(views.data(), 1)).empty());
}

// =================================================================================================================
// CLUSTER NODES: hand-written edge cases

TEST_CASE("CLUSTER NODES: address forms") {
  const std::string text =
      // noaddr: the address is not known (yet)
      "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca :0@0 master,fail,noaddr - 1700000000000 1700000000001 4 "
      "disconnected\r\n"
      // a hostname after the address
      "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 10.1.2.3:30002@31002,redis-1.example.com myself,master - 0 "
      "1700000000000 2 connected 0-5460 5461 5462-5463 16383\r\n"
      // IPv6, printed without brackets
      "292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f ::1:30003@40003 slave "
      "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 "
      "1700000000000 2 connected\r\n"
      // the nodes.conf form: empty hostname, then key=value extras
      "824fe116063bc5fcf9f4ffd895bc17aee7731ac3 10.1.2.4:30004@31004,,tls-port=30014,shard-id=abc master - 0 "
      "0 3 "
      "connected 5464-16382\r\n"
      "\r\n";
  TopologyResult r = parse_cluster_nodes(text);
  REQUIRE_MESSAGE(r.ok(), r.error);
  const Topology& t = r.topology;
  REQUIRE(t.nodes.size() == 4);
  const Node& noaddr = t.nodes[0];
  CHECK(noaddr.ip.empty());
  CHECK(noaddr.port == 0);
  CHECK(noaddr.bus_port == 0);
  CHECK(*noaddr.flags == flags({"master", "fail", "noaddr"}));
  CHECK(noaddr.slots.empty());
  const Node& host = t.nodes[1];
  CHECK(host.ip == "10.1.2.3");
  CHECK(host.port == 30002);
  CHECK(host.bus_port == 31002);
  CHECK(host.hostname == "redis-1.example.com");
  CHECK(format_slot_ranges(host.slots) == "0-5463 16383");  // adjacent ranges joined
  CHECK(t.myself_id == host.id);
  const Node& v6 = t.nodes[2];
  CHECK(v6.ip == "::1");
  CHECK(v6.port == 30003);
  CHECK(v6.bus_port == 40003);
  CHECK(v6.master_id == host.id);
  const Node& conf = t.nodes[3];
  CHECK(conf.hostname.empty());
  CHECK(conf.tls_port == 30014);
  CHECK(conf.port == 30004);
  const std::vector<Finding> f = check(t);
  CHECK(find_finding(f, FindingKind::kNodeFailed, noaddr.id) != nullptr);
  CHECK(count(f, FindingKind::kSlotsUncovered) == 0);
}

TEST_CASE("CLUSTER NODES: flags, empty input, line ends") {
  TopologyResult r = parse_cluster_nodes(
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 10.0.0.1:7000@17000 noflags - 0 0 0 connected\n"
      "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb 10.0.0.2:7000@17000 master,someday-a-new-flag - 0 0 1 "
      "connected");
  REQUIRE_MESSAGE(r.ok(), r.error);
  REQUIRE(r.topology.nodes.size() == 2);
  CHECK(r.topology.nodes[0].flags->none());
  CHECK(format_flags(*r.topology.nodes[0].flags) == "noflags");
  CHECK(r.topology.nodes[0].role == NodeRole::kUnknown);
  CHECK(*r.topology.nodes[1].flags == flags({"master"}));  // unknown flags are ignored
  CHECK(r.topology.myself_id.empty());

  TopologyResult empty = parse_cluster_nodes("");
  REQUIRE(empty.ok());
  CHECK(empty.topology.nodes.empty());
  CHECK(kinds(check(empty.topology)) == std::vector{FindingKind::kSlotsUncovered});

  resp::Value verbatim;
  verbatim.type = resp::Type::kVerbatimString;
  verbatim.str = "txt:" + read_data("healthy/nodes-7200.txt");
  TopologyResult v = parse_cluster_nodes(verbatim);
  REQUIRE_MESSAGE(v.ok(), v.error);
  CHECK(v.topology.nodes.size() == 6);
  resp::Value bulk;
  bulk.type = resp::Type::kBulkString;
  bulk.str = read_data("healthy/nodes-7200.txt");
  CHECK(parse_cluster_nodes(bulk).topology.nodes.size() == 6);
  resp::Value err;
  err.type = resp::Type::kError;
  err.str = "ERR This instance has cluster support disabled";
  CHECK(parse_cluster_nodes(err).error ==
        "CLUSTER NODES: the server answered an error: ERR This instance has cluster support disabled");
  resp::Value number;
  number.type = resp::Type::kInteger;
  CHECK(!parse_cluster_nodes(number).ok());
}

TEST_CASE("CLUSTER NODES: input no server sends is an error value") {
  const std::string id = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
  const std::string ok_prefix = id + " 10.0.0.1:7000@17000 myself,master - 0 0 1 connected";
  struct Bad {
    std::string text;
    std::string error;
  };
  const Bad cases[] = {
      {ok_prefix + " 16384", "CLUSTER NODES: line 1: bad slot '16384'"},
      {ok_prefix + " 5-3", "CLUSTER NODES: line 1: bad slot range '5-3'"},
      {ok_prefix + " 0-16384", "CLUSTER NODES: line 1: bad slot range '0-16384'"},
      {ok_prefix + " x", "CLUSTER NODES: line 1: bad slot 'x'"},
      {ok_prefix + " [5->-xyz]", "CLUSTER NODES: line 1: bad node id in '[5->-xyz]'"},
      {ok_prefix + " [5-?-" + id + "]", "CLUSTER NODES: line 1: bad open slot '[5-?-" + id + "]'"},
      {ok_prefix + " [16384-<-" + id + "]", "CLUSTER NODES: line 1: bad slot in '[16384-<-" + id + "]'"},
      {ok_prefix + " 1-2-3" + std::string(70, '4'),
       "CLUSTER NODES: line 1: bad slot range '1-2-3" + std::string(55, '4') + "...'"},
      {"abc 10.0.0.1:7000@17000 master - 0 0 1 connected", "CLUSTER NODES: line 1: bad node id 'abc'"},
      {id + " 10.0.0.1:7000@17000 master - 0 0 1",
       "CLUSTER NODES: line 1: expected at least 8 fields, got 7"},
      {id + " 10.0.0.1:7000@17000 master - 0 0 1 up", "CLUSTER NODES: line 1: bad link state 'up'"},
      {id + " 10.0.0.1@17000 master - 0 0 1 connected",
       "CLUSTER NODES: line 1: address without a port: '10.0.0.1@17000'"},
      {id + " 10.0.0.1:70000@17000 master - 0 0 1 connected",
       "CLUSTER NODES: line 1: bad port in address '10.0.0.1:70000@17000'"},
      {id + " 10.0.0.1:7000@x master - 0 0 1 connected",
       "CLUSTER NODES: line 1: bad bus port in address '10.0.0.1:7000@x'"},
      {id + " 10.0.0.1:7000@17000 master,slave - 0 0 1 connected",
       "CLUSTER NODES: line 1: both master and slave in 'master,slave'"},
      {id + " 10.0.0.1:7000@17000 master,,fail - 0 0 1 connected",
       "CLUSTER NODES: line 1: empty flag in 'master,,fail'"},
      {id + " 10.0.0.1:7000@17000 slave 123 0 0 1 connected", "CLUSTER NODES: line 1: bad master id '123'"},
      {id + " 10.0.0.1:7000@17000 master - -1 0 1 connected", "CLUSTER NODES: line 1: bad ping-sent '-1'"},
      {id + " 10.0.0.1:7000@17000 master - 0 x 1 connected", "CLUSTER NODES: line 1: bad pong-recv 'x'"},
      {id + " 10.0.0.1:7000@17000 master - 0 0 -2 connected", "CLUSTER NODES: line 1: bad config epoch '-2'"},
      {ok_prefix + "\n" + ok_prefix, "CLUSTER NODES: line 2: node aaaaaaaa listed twice"},
      {ok_prefix + "\n" + std::string(40, 'b') + " 10.0.0.2:7000@17000 myself,master - 0 0 2 connected",
       "CLUSTER NODES: line 2: a second node flagged myself"},
      {id.substr(0, 39) + "A 10.0.0.1:7000@17000 master - 0 0 1 connected",
       "CLUSTER NODES: line 1: bad node id 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaA'"},
  };
  for (const Bad& b : cases) {
    CAPTURE(b.text);
    const TopologyResult r = parse_cluster_nodes(b.text);
    CHECK(!r.ok());
    CHECK(r.error == b.error);
    CHECK(r.topology.nodes.empty());
  }
}

// =================================================================================================================
// CLUSTER SHARDS and CLUSTER SLOTS: hand-written edge cases

namespace {

resp::Value parse_wire(std::string_view wire) {
  resp::Value v;
  std::size_t consumed = 0;
  std::string error;
  REQUIRE_MESSAGE(resp::parse_reply(wire, v, consumed, &error) == resp::Status::kComplete, error);
  REQUIRE(consumed == wire.size());
  return v;
}

std::string bulk(std::string_view s) {
  return "$" + std::to_string(s.size()) + "\r\n" + std::string(s) + "\r\n";
}

// A RESP3 CLUSTER SHARDS reply with one shard.
std::string one_shard(const std::string& slots, const std::vector<std::string>& nodes) {
  std::string out =
      "*1\r\n%2\r\n" + bulk("slots") + slots + bulk("nodes") + "*" + std::to_string(nodes.size()) + "\r\n";
  for (const std::string& n : nodes)
    out += n;
  return out;
}

std::string shard_node(std::string_view id, std::string_view role, std::string_view health,
                       int tls_port = 0) {
  std::string out =
      "%" + std::to_string(tls_port ? 8 : 7) + "\r\n" + bulk("id") + bulk(id) + bulk("port") + ":7000\r\n";
  if (tls_port) out += bulk("tls-port") + ":" + std::to_string(tls_port) + "\r\n";
  out += bulk("ip") + bulk("10.0.0.1") + bulk("endpoint") + bulk("10.0.0.1") + bulk("role") + bulk(role) +
         bulk("replication-offset") + ":5\r\n" + bulk("health") + bulk(health);
  return out;
}

}  // namespace

TEST_CASE("CLUSTER SHARDS: edge cases and errors") {
  const std::string m(40, '1');
  const std::string old_master(40, '2');
  const std::string r(40, '3');
  // A 7.2-style shard after a failover: the failed old master and the promoted one in one shard.
  TopologyResult t = parse_cluster_shards(
      parse_wire(one_shard("*2\r\n:0\r\n:16383\r\n",
                           {shard_node(old_master, "master", "failed"),
                            shard_node(m, "master", "online", 7100), shard_node(r, "replica", "online")})));
  REQUIRE_MESSAGE(t.ok(), t.error);
  CHECK(slots_text(t.topology, m) == "0-16383");
  CHECK(node(t.topology, old_master).slots.empty());
  CHECK(node(t.topology, old_master).health == Health::kFailed);
  CHECK(node(t.topology, r).master_id == m);
  CHECK(node(t.topology, m).tls_port == 7100);
  CHECK(node(t.topology, m).replication_offset == 5);

  // Slot bounds as strings are accepted.
  TopologyResult s = parse_cluster_shards(
      parse_wire(one_shard("*2\r\n" + bulk("0") + bulk("16383"), {shard_node(m, "master", "online")})));
  REQUIRE_MESSAGE(s.ok(), s.error);
  CHECK(check(s.topology).size() == 2);  // epochs and open slots unknown, nothing else

  struct Bad {
    std::string wire;
    std::string error;
  };
  const Bad cases[] = {
      {"-ERR This instance has cluster support disabled\r\n",
       "CLUSTER SHARDS: the server answered an error: ERR This instance has cluster support disabled"},
      {":1\r\n", "CLUSTER SHARDS: expected an array of shards, got integer 1"},
      {"*1\r\n:1\r\n", "CLUSTER SHARDS: shard 1: not a map but integer 1"},
      {"*1\r\n%1\r\n" + bulk("slots") + "*0\r\n", "CLUSTER SHARDS: shard 1: no nodes array"},
      {one_shard("*1\r\n:0\r\n", {shard_node(m, "master", "online")}),
       "CLUSTER SHARDS: shard 1: an odd number of slot bounds"},
      {one_shard("*2\r\n:0\r\n:16384\r\n", {shard_node(m, "master", "online")}),
       "CLUSTER SHARDS: shard 1: bad slot range 0-16384"},
      {one_shard("*2\r\n:9\r\n:8\r\n", {shard_node(m, "master", "online")}),
       "CLUSTER SHARDS: shard 1: bad slot range 9-8"},
      {one_shard("*2\r\n:0\r\n:1\r\n", {shard_node(r, "replica", "online")}),
       "CLUSTER SHARDS: shard 1: slots but no master"},
      {one_shard("*0\r\n", {shard_node("xyz", "master", "online")}),
       "CLUSTER SHARDS: shard 1: node without a valid id: 'xyz'"},
      {one_shard("*0\r\n", {shard_node(m, "primary", "online")}),
       "CLUSTER SHARDS: shard 1: bad role 'primary' of node 11111111"},
      {one_shard("*0\r\n", {shard_node(m, "master", "online"), shard_node(m, "master", "online")}),
       "CLUSTER SHARDS: shard 1: node 11111111 listed twice"},
  };
  for (const Bad& b : cases) {
    CAPTURE(b.wire);
    const TopologyResult bad = parse_cluster_shards(parse_wire(b.wire));
    CHECK(bad.error == b.error);
  }
}

TEST_CASE("CLUSTER SLOTS: edge cases and errors") {
  const std::string id(40, 'a');
  const std::string replica(40, 'b');
  // RESP3, preferred endpoint unknown (null) with the ip in the metadata; a replica with endpoint "?"
  // (hostname preferred but not set).
  const std::string wire = "*1\r\n*4\r\n:0\r\n:16383\r\n*4\r\n_\r\n:7000\r\n" + bulk(id) + "%1\r\n" +
                           bulk("ip") + bulk("10.0.0.1") + "*4\r\n" + bulk("?") + ":7001\r\n" +
                           bulk(replica) + "%1\r\n" + bulk("ip") + bulk("10.0.0.2");
  TopologyResult t = parse_cluster_slots(parse_wire(wire));
  REQUIRE_MESSAGE(t.ok(), t.error);
  const Node& m = node(t.topology, id);
  CHECK(m.endpoint.empty());
  CHECK(m.ip == "10.0.0.1");
  CHECK(m.address() == "10.0.0.1");
  const Node& r = node(t.topology, replica);
  CHECK(r.endpoint == "?");
  CHECK(r.address() == "10.0.0.2");
  CHECK(r.master_id == id);

  // Old servers (before 7.0) send no metadata: the endpoint is the ip.
  TopologyResult old = parse_cluster_slots(
      parse_wire("*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n" + bulk("10.0.0.9") + ":7000\r\n" + bulk(id)));
  REQUIRE_MESSAGE(old.ok(), old.error);
  CHECK(node(old.topology, id).ip == "10.0.0.9");

  struct Bad {
    std::string wire;
    std::string error;
  };
  const Bad cases[] = {
      {"-CLUSTERDOWN\r\n", "CLUSTER SLOTS: the server answered an error: CLUSTERDOWN"},
      {"%0\r\n", "CLUSTER SLOTS: expected an array of ranges, got map"},
      {"*1\r\n*2\r\n:0\r\n:1\r\n", "CLUSTER SLOTS: entry 1: not an array of at least 3 but array"},
      {"*1\r\n*3\r\n:0\r\n:16384\r\n*3\r\n" + bulk("h") + ":1\r\n" + bulk(id),
       "CLUSTER SLOTS: entry 1: bad slot range 0-16384"},
      {"*1\r\n*3\r\n:0\r\n:1\r\n*3\r\n" + bulk("h") + ":1\r\n" + bulk("short"),
       "CLUSTER SLOTS: entry 1: bad node id 'short'"},
      {"*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n" + bulk("h") + ":1\r\n",
       "CLUSTER SLOTS: entry 1: a node is not an array of at least 3 but array"},
      {"*1\r\n*3\r\n:0\r\n:1\r\n*3\r\n" + bulk("h") + ":99999\r\n" + bulk(id),
       "CLUSTER SLOTS: entry 1: bad port 99999"},
      // the same node as master of one range and replica of another
      {"*2\r\n*3\r\n:0\r\n:1\r\n*3\r\n" + bulk("h") + ":1\r\n" + bulk(id) + "*4\r\n:2\r\n:3\r\n*3\r\n" +
           bulk("h") + ":2\r\n" + bulk(replica) + "*3\r\n" + bulk("h") + ":1\r\n" + bulk(id),
       "CLUSTER SLOTS: entry 2: node aaaaaaaa has two roles"},
  };
  for (const Bad& b : cases) {
    CAPTURE(b.wire);
    CHECK(parse_cluster_slots(parse_wire(b.wire)).error == b.error);
  }
}

// =================================================================================================================
// merge() and the shared snapshot

TEST_CASE("merge: fills what is unknown, never moves a slot") {
  // Into an empty model: a copy.
  const Topology n = nodes_of("reshaped/nodes-7200.txt");
  Topology copy;
  merge(copy, n);
  CHECK(copy.nodes.size() == n.nodes.size());
  CHECK(copy.myself_id == kA);
  check_same_cluster(n, copy);
  for (int s = 0; s < kSlotCount; ++s)
    REQUIRE(owner_id(copy, s) == owner_id(n, s));

  // A view that disagrees does not move a slot; slots nobody in `into` owns are taken.
  Topology b_claim = nodes_of("disagree/nodes-7201.txt");
  Topology into = nodes_of("disagree/nodes-7200.txt");
  merge(into, b_claim);
  CHECK(owner_id(into, 1) == kA);
  CHECK(slots_text(into, kB) == "5461-10922");

  Topology partial = nodes_of("healthy/nodes-7200.txt");
  for (Node& node_ref : partial.nodes) {
    if (node_ref.id == kC) node_ref.slots.clear();
  }
  partial.rebuild_owners();
  CHECK(owner_id(partial, 12000).empty());
  merge(partial, shards_of("healthy/shards-7203.resp2"));
  CHECK(owner_id(partial, 12000) == kC);
  CHECK(slots_text(partial, kC) == "10923-16383");
  CHECK(node(partial, kC).replication_offset == 14);
  CHECK(node(partial, kC).config_epoch == 3u);  // kept
}

TEST_CASE("a snapshot is shared read-only and looked up by slot") {
  const TopologySnapshot snap = make_snapshot(nodes_of("reshaped/nodes-7200.txt"));
  const TopologySnapshot other = snap;  // NOLINT(performance-unnecessary-copy-initialization): a second owner
  REQUIRE(snap->owner(16000) != nullptr);
  CHECK(snap->owner(16000)->id == kA);
  CHECK(other->owner(key_slot("foo"))->id == kC);  // "foo" is slot 12182
  CHECK(sizeof(SlotTable) == 2 * kSlotCount);
}

TEST_CASE(
    "slot lists as users write them: ranges, commas or spaces, sorted and distinct; anything else refused") {
  std::string error;
  const auto slots = parse_slot_list("5-7,1 3-4,6", error);
  REQUIRE(slots);
  CHECK(*slots == std::vector<Slot>{1, 3, 4, 5, 6, 7});
  CHECK(format_slot_ranges(slot_ranges(*slots)) == "1 3-7");
  CHECK(parse_slot_list("0-16383", error)->size() == 16384);
  // Overlaps and repeats, in any order, the last slot included.
  CHECK(*parse_slot_list("16380-16383,10-20,15,0-12,16383,19-25", error) ==
        std::vector<Slot>{0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,    12,    13,    14,
                          15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 16380, 16381, 16382, 16383});
  for (const char* bad : {"", ",", "16384", "7-3", "a", "1-", "-1", "1--2", "1.5"}) {
    CHECK_FALSE_MESSAGE(parse_slot_list(bad, error), bad);
    CHECK_FALSE(error.empty());
  }
}

TEST_CASE("an import from a failed or forgotten source, and replicas of a master without slots") {
  // 2 imports slot 100 from 1, which has failed and whose slots 3 took over; it also imports slot 200 from a
  // node no longer in the cluster. 4 is a master without slots that 5 replicates.
  const std::string text =
      "1111111111111111111111111111111111111111 10.0.0.1:7000@17000 master,fail - 0 0 1 disconnected\n"
      "2222222222222222222222222222222222222222 10.0.0.2:7000@17000 myself,master - 0 0 2 connected "
      "5461-10922 "
      "[100-<-1111111111111111111111111111111111111111] [200-<-9999999999999999999999999999999999999999]\n"
      "3333333333333333333333333333333333333333 10.0.0.3:7000@17000 master - 0 0 3 connected 0-5460 "
      "10923-16383\n"
      "4444444444444444444444444444444444444444 10.0.0.4:7000@17000 master - 0 0 4 connected\n"
      "5555555555555555555555555555555555555555 10.0.0.5:7000@17000 slave "
      "4444444444444444444444444444444444444444 "
      "0 0 4 connected\n";
  TopologyResult r = parse_cluster_nodes(text);
  REQUIRE(r.ok());
  const std::vector<Finding> f = check(r.topology);
  REQUIRE(count(f, FindingKind::kImportingFromFailed) == 2);
  const Finding* failed =
      find_finding(f, FindingKind::kImportingFromFailed, "2222222222222222222222222222222222222222");
  REQUIRE(failed != nullptr);
  CHECK(format_slot_ranges(failed->slots) == "100");
  CHECK(failed->message.find("which has failed") != std::string::npos);
  const auto gone = std::find_if(f.begin(), f.end(), [](const Finding& x) {
    return x.kind == FindingKind::kImportingFromFailed && format_slot_ranges(x.slots) == "200";
  });
  REQUIRE(gone != f.end());
  CHECK(gone->message.find("no longer a node of the cluster") != std::string::npos);
  const Finding* empty =
      find_finding(f, FindingKind::kReplicasOfEmptyMaster, "4444444444444444444444444444444444444444");
  REQUIRE(empty != nullptr);
  CHECK(empty->message.find("10.0.0.5:7000") != std::string::npos);
  // A failed master without slots (1, whose replica took over) is no finding of this kind.
  CHECK(count(f, FindingKind::kReplicasOfEmptyMaster) == 1);
}
