// common/topology.h against a live cluster (3 masters with one replica each, started by the fixture): the
// three parsers agree with each other on the exact bytes the servers send, in RESP2 and RESP3; the checks are
// clean on a healthy cluster; an open MIGRATING/IMPORTING pair and a claim that nobody else accepted are
// reported, and stop being reported once undone.
#include "common/topology.h"

#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/fixture.h"

using namespace slotshift;
using slotshift::test::Connection;
using slotshift::test::Endpoint;

namespace {

std::string wire(std::initializer_list<std::string_view> args) {
  std::string out;
  resp::append_command(out, args);
  return out;
}

// One reply, read as the exact bytes the server sent and decoded by our own RESP reader.
resp::Value ask(Connection& c, std::initializer_list<std::string_view> args) {
  const std::string bytes = c.raw(wire(args));
  resp::Value v;
  std::size_t consumed = 0;
  std::string error;
  REQUIRE_MESSAGE(resp::parse_reply(bytes, v, consumed, &error) == resp::Status::kComplete, error);
  REQUIRE(consumed == bytes.size());
  return v;
}

// A raw connection in RESP2 or (after HELLO 3) RESP3.
std::unique_ptr<Connection> connect(const Endpoint& e, bool resp3) {
  auto c = std::make_unique<Connection>(e);
  if (resp3) {
    const resp::Value hello = ask(*c, {"HELLO", "3"});
    REQUIRE(hello.type == resp::Type::kMap);
  }
  return c;
}

Topology shards_from(const Endpoint& e, bool resp3) {
  auto c = connect(e, resp3);
  const resp::Value v = ask(*c, {"CLUSTER", "SHARDS"});
  if (resp3) {
    REQUIRE(!v.elements.empty());
    CHECK(v.elements[0].type == resp::Type::kMap);
  }
  TopologyResult r = parse_cluster_shards(v);
  REQUIRE_MESSAGE(r.ok(), e.str() << ": " << r.error);
  return std::move(r.topology);
}

Topology slots_from(const Endpoint& e, bool resp3) {
  auto c = connect(e, resp3);
  TopologyResult r = parse_cluster_slots(ask(*c, {"CLUSTER", "SLOTS"}));
  REQUIRE_MESSAGE(r.ok(), e.str() << ": " << r.error);
  return std::move(r.topology);
}

Topology nodes_from(const Endpoint& e, bool resp3 = false) {
  auto c = connect(e, resp3);
  const resp::Value v = ask(*c, {"CLUSTER", "NODES"});
  CHECK(v.type == (resp3 ? resp::Type::kVerbatimString : resp::Type::kBulkString));
  TopologyResult r = parse_cluster_nodes(v);
  REQUIRE_MESSAGE(r.ok(), e.str() << ": " << r.error);
  return std::move(r.topology);
}

std::vector<Topology> every_view(const std::vector<Endpoint>& nodes) {
  std::vector<Topology> out;
  for (const Endpoint& e : nodes)
    out.push_back(nodes_from(e));
  return out;
}

Topology merge_all(Topology base, const std::vector<Topology>& views) {
  for (const Topology& v : views)
    merge(base, v);
  return base;
}

std::string dump(const std::vector<Finding>& findings) {
  std::string out;
  for (const Finding& f : findings)
    out += std::string(finding_kind_name(f.kind)) + ": " + f.message + "\n";
  return out;
}

// Polls `done` every 100 ms for up to `seconds`.
bool wait_until(const std::function<bool()>& done, int seconds = 20) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return done();
}

void ok(Connection& c, std::initializer_list<std::string_view> args) {
  const test::Reply r = c.command(args);
  REQUIRE(r);
  REQUIRE_MESSAGE(r->type != REDIS_REPLY_ERROR, c.endpoint().str() << ": " << r->str);
}

const Endpoint& endpoint_of(const std::vector<Endpoint>& nodes, const Node& n) {
  for (const Endpoint& e : nodes) {
    if (e.port == n.port) return e;
  }
  FAIL("no endpoint for node " << n.id << " port " << n.port);
  return nodes.front();
}

// Same nodes, same owners, same roles and masters, same addresses.
void check_same_cluster(const Topology& a, const Topology& b, const char* what) {
  CAPTURE(what);
  REQUIRE(a.nodes.size() == b.nodes.size());
  for (const Node& n : a.nodes) {
    const Node* m = b.find(n.id);
    REQUIRE_MESSAGE(m != nullptr, "node " << n.id << " missing");
    CHECK(m->ip == n.ip);
    CHECK(m->port == n.port);
    CHECK(m->role == n.role);
    CHECK(m->master_id == n.master_id);
    CHECK(format_slot_ranges(m->slots) == format_slot_ranges(n.slots));
  }
  for (int s = 0; s < kSlotCount; ++s) {
    const Node* x = a.owner(static_cast<Slot>(s));
    const Node* y = b.owner(static_cast<Slot>(s));
    REQUIRE(x != nullptr);
    REQUIRE(y != nullptr);
    if (x->id != y->id) {
      FAIL_CHECK("slot " << s << ": " << x->id << " vs " << y->id);
      break;
    }
  }
}

// Writes one key into every master so that every replica has a non-zero replication offset: CLUSTER SLOTS
// leaves out replicas at offset 0 and CLUSTER SHARDS calls them "loading".
void make_replicas_visible(test::LocalCluster& cluster) {
  const Topology t = nodes_from(cluster.nodes().front());
  for (const Node* m : t.masters()) {
    Connection c(endpoint_of(cluster.nodes(), *m));
    for (int i = 0; i < 10000; ++i) {
      const std::string key = "topology_it:" + std::to_string(i);
      if (m->slots.empty()) break;
      const Slot s = key_slot(key);
      if (t.owner(s) == m) {
        ok(c, {"SET", key, "x"});
        break;
      }
    }
  }
  const bool visible = wait_until([&] {
    for (const Endpoint& e : cluster.nodes()) {
      if (slots_from(e, false).nodes.size() != cluster.nodes().size()) return false;
      // Other nodes learn a node's replication offset from its pings: wait until every one has gossiped.
      for (const Node& n : shards_from(e, false).nodes) {
        if (n.health != Health::kOnline || !n.replication_offset || *n.replication_offset <= 0) return false;
      }
    }
    return true;
  });
  REQUIRE_MESSAGE(visible, "replicas never showed up in CLUSTER SLOTS / SHARDS as online with an offset");
}

}  // namespace

TEST_CASE("the three parsers agree on a live cluster with replicas, in RESP2 and RESP3") {
  test::LocalCluster& cluster = test::shared_cluster(3, 1);
  REQUIRE(cluster.nodes().size() == 6);
  make_replicas_visible(cluster);

  std::set<int> ports;
  for (const Endpoint& e : cluster.nodes())
    ports.insert(e.port);

  for (const Endpoint& e : cluster.nodes()) {
    CAPTURE(e.str());
    const Topology nodes = nodes_from(e);
    CHECK(nodes.myself() != nullptr);
    CHECK(nodes.myself()->port == e.port);
    REQUIRE(nodes.nodes.size() == 6);
    REQUIRE(nodes.masters().size() == 3);
    std::set<int> seen;
    for (const Node& n : nodes.nodes) {
      seen.insert(n.port);
      CHECK(n.ip == "127.0.0.1");
      CHECK(n.bus_port == n.port + 10000);
      CHECK(n.link == LinkState::kConnected);
      if (n.is_master()) {
        CHECK(!n.slots.empty());
        CHECK(nodes.replicas_of(n.id).size() == 1);
      } else {
        REQUIRE(n.is_replica());
        const Node* master = nodes.find(n.master_id);
        REQUIRE(master != nullptr);
        CHECK(master->is_master());
        CHECK(n.config_epoch == master->config_epoch);  // NODES prints a replica's master's epoch
      }
    }
    CHECK(seen == ports);
    for (int s = 0; s < kSlotCount; ++s)
      REQUIRE(nodes.owner(static_cast<Slot>(s)) != nullptr);

    check_same_cluster(nodes, nodes_from(e, true), "NODES RESP3");
    for (bool resp3 : {false, true}) {
      const Topology shards = shards_from(e, resp3);
      check_same_cluster(nodes, shards, resp3 ? "SHARDS RESP3" : "SHARDS RESP2");
      for (const Node& n : shards.nodes) {
        CHECK(n.endpoint == "127.0.0.1");
        CHECK(n.health == Health::kOnline);
        REQUIRE(n.replication_offset);
        CHECK(*n.replication_offset > 0);
      }
      const Topology slots = slots_from(e, resp3);
      check_same_cluster(nodes, slots, resp3 ? "SLOTS RESP3" : "SLOTS RESP2");
    }
  }
}

TEST_CASE("the checks are clean on a healthy live cluster") {
  test::LocalCluster& cluster = test::shared_cluster(3, 1);
  std::vector<Finding> findings;
  const bool clean = wait_until([&] {
    const std::vector<Topology> views = every_view(cluster.nodes());
    findings = compare_views(views);
    const Topology full = merge_all(shards_from(cluster.nodes().front(), true), views);
    for (Finding& f : check(full))
      findings.push_back(std::move(f));
    return findings.empty();
  });
  CHECK_MESSAGE(clean, dump(findings));
  // Without the NODES of every node, check() says what it could not see.
  const std::vector<Finding> partial = check(shards_from(cluster.nodes().front(), false));
  REQUIRE(partial.size() == 2);
  CHECK(partial[0].kind == FindingKind::kEpochsUnknown);
  CHECK(partial[1].kind == FindingKind::kOpenSlotsUnknown);
}

TEST_CASE("a MIGRATING/IMPORTING pair is reported, and no longer once cleared") {
  test::LocalCluster& cluster = test::shared_cluster(3, 1);
  const Topology before = nodes_from(cluster.nodes().front());
  const std::vector<const Node*> masters = before.masters();
  REQUIRE(masters.size() >= 2);
  const Node& source = *masters[0];
  const Node& target = *masters[1];
  Connection src(endpoint_of(cluster.nodes(), source));
  Connection dst(endpoint_of(cluster.nodes(), target));
  const Slot slot =
      source.slots.front().last;  // no key of this test lives there; keys would not matter anyway
  const std::string s = std::to_string(slot);

  // Undo in any case, so that the shared cluster is clean for the next test case.
  struct Restore {
    Connection& a;
    Connection& b;
    std::string slot;
    ~Restore() {
      try {
        a.command({"CLUSTER", "SETSLOT", slot, "STABLE"});
        b.command({"CLUSTER", "SETSLOT", slot, "STABLE"});
      } catch (...) {
      }
    }
  } restore{src, dst, s};

  ok(src, {"CLUSTER", "SETSLOT", s, "MIGRATING", target.id});
  ok(dst, {"CLUSTER", "SETSLOT", s, "IMPORTING", source.id});

  const std::vector<Topology> views = every_view(cluster.nodes());
  const Node* src_self = nullptr;
  const Node* dst_self = nullptr;
  for (const Topology& v : views) {
    if (v.myself_id == source.id) src_self = v.myself();
    if (v.myself_id == target.id) dst_self = v.myself();
    // Nobody else shows anything open: NODES prints open slots on the myself line only.
    for (const Node& n : v.nodes) {
      if (n.id != v.myself_id) CHECK((n.migrating.empty() && n.importing.empty()));
    }
  }
  REQUIRE(src_self != nullptr);
  REQUIRE(dst_self != nullptr);
  CHECK(src_self->migrating == std::map<Slot, std::string>{{slot, target.id}});
  CHECK(src_self->importing.empty());
  CHECK(dst_self->importing == std::map<Slot, std::string>{{slot, source.id}});
  CHECK(dst_self->migrating.empty());
  CHECK(nodes_from(endpoint_of(cluster.nodes(), source), true).myself()->migrating.size() == 1);

  const std::vector<Finding> open = check(merge_all(shards_from(cluster.nodes().front(), false), views));
  REQUIRE_MESSAGE(open.size() == 2, dump(open));
  CHECK(open[0].kind == FindingKind::kSlotMigrating);
  CHECK(open[0].node_id == source.id);
  CHECK(open[0].peer_id == target.id);
  CHECK(open[0].slots == std::vector<SlotRange>{{slot, slot}});
  CHECK(open[1].kind == FindingKind::kSlotImporting);
  CHECK(open[1].node_id == target.id);
  CHECK(open[1].peer_id == source.id);
  CHECK(open[1].slots == std::vector<SlotRange>{{slot, slot}});
  // The owner has not changed, and every view still agrees on it.
  CHECK(compare_views(views).empty());
  for (const Topology& v : views)
    CHECK(v.owner(slot)->id == source.id);

  ok(src, {"CLUSTER", "SETSLOT", s, "STABLE"});
  ok(dst, {"CLUSTER", "SETSLOT", s, "STABLE"});
  const std::vector<Finding> after = check(merge_all(Topology{}, every_view(cluster.nodes())));
  CHECK_MESSAGE(after.empty(), dump(after));
}

TEST_CASE("a claim nobody accepted is a disagreement between views, until it is taken back") {
  test::LocalCluster& cluster = test::shared_cluster(3, 1);
  const Topology before = nodes_from(cluster.nodes().front());
  // The master with the lowest config epoch claims a slot of the one with the highest, without IMPORTING: no
  // epoch bump, so the others keep the owner they have and answer the claimant with an UPDATE that undoes it.
  std::vector<const Node*> masters = before.masters();
  std::sort(masters.begin(), masters.end(),
            [](const Node* a, const Node* b) { return *a->config_epoch < *b->config_epoch; });
  const Node& claimant = *masters.front();
  const Node& owner = *masters.back();
  REQUIRE(*claimant.config_epoch < *owner.config_epoch);
  const Slot slot = owner.slots.front().first;
  const std::string s = std::to_string(slot);

  // The claim and the claimant's view in one write: the server runs both before it reads its cluster bus
  // again.
  Connection c(endpoint_of(cluster.nodes(), claimant));
  const std::string bytes =
      c.raw(wire({"CLUSTER", "SETSLOT", s, "NODE", claimant.id}) + wire({"CLUSTER", "NODES"}), 2);
  resp::Value setslot;
  std::size_t used = 0;
  REQUIRE(resp::parse_reply(bytes, setslot, used) == resp::Status::kComplete);
  REQUIRE_MESSAGE(setslot.type == resp::Type::kSimpleString, setslot.str);
  resp::Value text;
  std::size_t used2 = 0;
  REQUIRE(resp::parse_reply(std::string_view(bytes).substr(used), text, used2) == resp::Status::kComplete);
  TopologyResult claimant_view = parse_cluster_nodes(text);
  REQUIRE_MESSAGE(claimant_view.ok(), claimant_view.error);
  CHECK(claimant_view.topology.owner(slot)->id == claimant.id);

  std::vector<Topology> views = {std::move(claimant_view.topology)};
  views.push_back(nodes_from(endpoint_of(cluster.nodes(), owner)));
  const std::vector<Finding> f = compare_views(views);
  REQUIRE_MESSAGE(f.size() == 1, dump(f));
  CHECK(f[0].kind == FindingKind::kOwnerDisagreement);
  CHECK(f[0].slots == std::vector<SlotRange>{{slot, slot}});

  // The cluster takes the claim back by itself; if it has not within the deadline, give the slot back by
  // hand.
  const bool healed = wait_until([&] { return compare_views(every_view(cluster.nodes())).empty(); }, 15);
  if (!healed) ok(c, {"CLUSTER", "SETSLOT", s, "NODE", owner.id});
  CHECK_MESSAGE(healed, "the claim was not taken back within 15 s");
  REQUIRE(wait_until([&] { return compare_views(every_view(cluster.nodes())).empty(); }));
  CHECK(nodes_from(endpoint_of(cluster.nodes(), claimant)).owner(slot)->id == owner.id);
}
