// A client session through an embedded slotshift-proxy in front of the scripted cluster (no Redis): round
// trips, split commands merged back in order, and the redirects and retries a cluster makes a proxy follow.
#include <doctest/doctest.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/resp.h"
#include "common/slot.h"
#include "common/topology.h"
#include "proxy/config.h"
#include "proxy/worker.h"
#include "tests/support/scripted_cluster.h"

using namespace slotshift;
using namespace std::chrono_literals;
using test::ScriptedCluster;
using test::TestClient;

namespace {

// A key whose slot `node` owns ("<prefix>0", "<prefix>1", ... the first that fits).
std::string key_on(const ScriptedCluster& cluster, int node, const std::string& prefix) {
  for (int i = 0;; ++i) {
    std::string key = prefix + std::to_string(i);
    if (cluster.owner(key_slot(key)) == node) return key;
  }
}

std::string bulk(std::string_view s) {
  return ScriptedCluster::bulk(s);
}

// A proxy with one worker in front of a fresh three-node scripted cluster, ready to take clients.
// One of the proxy's counters (stats.h), summed over its workers. A worker counts a refusal in the same loop
// event that acts on it, so a client's bytes read after the count changes find it acted on.
std::uint64_t counter(const proxy::Proxy& p, std::string_view name) {
  const proxy::Totals totals = p.totals();
  for (std::size_t i = 0; i < proxy::kCounterCount; ++i)
    if (proxy::kCounters[i].name == name) return totals.counters[i];
  FAIL("no counter " << name);
  return 0;
}

struct ProxyFixture {
  ScriptedCluster cluster;
  test::PortReservation port;
  std::unique_ptr<proxy::Proxy> proxy;

  ProxyFixture() {
    proxy::Config config;
    config.listen = HostPort{"127.0.0.1", port.port()};
    config.seeds = cluster.addresses();
    config.threads = 1;
    config.request_timeout = 1000ms;
    config.connect_timeout = 500ms;
    proxy = std::make_unique<proxy::Proxy>(config);
    const std::string error = proxy->start();
    if (!error.empty()) {
      // Workers that never started have no loop to stop.
      proxy.reset();
      FAIL(error);
    }
    const auto deadline = std::chrono::steady_clock::now() + 2s;
    while (!proxy->ready() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(1ms);
    REQUIRE(proxy->ready());
  }
  ~ProxyFixture() {
    if (!proxy) return;
    proxy->stop();
    proxy->wait();
  }

  TestClient client() { return TestClient(port.port(), 1500ms); }
};

}  // namespace

TEST_CASE("the scripted cluster describes itself as the proxy reads it") {
  ScriptedCluster cluster;
  REQUIRE(cluster.size() == 3);
  TestClient node(cluster.address(1).port);
  REQUIRE(node.connected());

  const TopologyResult shards = parse_cluster_shards(resp::decode(node.command({"CLUSTER", "SHARDS"})));
  REQUIRE_MESSAGE(shards.ok(), shards.error);
  const TopologyResult slots = parse_cluster_slots(resp::decode(node.command({"cluster", "slots"})));
  REQUIRE_MESSAGE(slots.ok(), slots.error);
  const TopologyResult nodes = parse_cluster_nodes(resp::decode(node.command({"CLUSTER", "NODES"})));
  REQUIRE_MESSAGE(nodes.ok(), nodes.error);
  for (const TopologyResult* t : {&shards, &slots, &nodes}) {
    REQUIRE(t->topology.nodes.size() == 3);
    for (int slot : {0, 5460, 5461, 10922, 10923, 16383}) {
      const Node* owner = t->topology.owner(static_cast<Slot>(slot));
      REQUIRE(owner != nullptr);
      CHECK(HostPort{owner->address(), owner->port} ==
            cluster.address(cluster.owner(static_cast<Slot>(slot))));
    }
  }
  REQUIRE(nodes.topology.myself() != nullptr);
  CHECK(nodes.topology.myself()->port == cluster.address(1).port);
  CHECK(cluster.first_slot(0) == 0);
  CHECK(cluster.last_slot(2) == 16383);
  CHECK(cluster.received(1).size() == 3);
}

TEST_CASE("the scripted cluster's nodes keep a store, check slots and follow their rules") {
  ScriptedCluster cluster;
  const std::string mine = key_on(cluster, 0, "k");
  const std::string theirs = key_on(cluster, 2, "k");
  TestClient node(cluster.address(0).port);
  CHECK(node.command({"SET", mine, "1"}) == "+OK\r\n");
  CHECK(node.command({"INCR", mine}) == ":2\r\n");
  CHECK(node.command({"get", mine}) == bulk("2"));
  CHECK(node.command({"GET", theirs}) ==
        "-MOVED " + std::to_string(key_slot(theirs)) + " " + cluster.address(2).str() + "\r\n");
  CHECK(node.command({"MGET", mine, theirs}).starts_with("-CROSSSLOT"));
  CHECK(node.command({"ASKING"}) == "+OK\r\n");
  CHECK(node.command({"GET", theirs}) == "$-1\r\n");
  CHECK(node.command({"HGETALL", mine}) == bulk("hgetall " + mine));

  cluster.fail("get", "TRYAGAIN later", 1, 0);
  CHECK(node.command({"GET", mine}) == "-TRYAGAIN later\r\n");
  CHECK(node.command({"GET", mine}) == bulk("2"));
  CHECK(cluster.rules_left() == 0);

  CHECK(node.command({"MULTI"}) == "+OK\r\n");
  CHECK(node.command({"INCR", mine}) == "+QUEUED\r\n");
  CHECK(node.command({"GET", mine}) == "+QUEUED\r\n");
  CHECK(node.command({"EXEC"}) == "*2\r\n:3\r\n" + bulk("3"));

  cluster.close_connection("get", 1, 0);
  CHECK(node.command({"GET", mine}).empty());
  CHECK(cluster.received(0, "get").size() == 7);

  CHECK(cluster.reset());
  CHECK(cluster.received(0).empty());
  TestClient again(cluster.address(0).port);
  CHECK(again.command({"GET", mine}) == "$-1\r\n");
}

TEST_CASE("GET and SET round trip through the proxy, to the node that owns the key") {
  ProxyFixture f;
  TestClient c = f.client();
  REQUIRE(c.connected());
  CHECK(c.command({"SET", "greeting", "hello"}) == "+OK\r\n");
  CHECK(c.command({"GET", "greeting"}) == bulk("hello"));
  CHECK(c.command({"GET", "absent"}) == "$-1\r\n");
  CHECK(c.command({"PING"}) == "+PONG\r\n");

  const int owner = f.cluster.owner(key_slot("greeting"));
  const auto sets = f.cluster.received(owner, "set");
  REQUIRE(sets.size() == 1);
  CHECK(sets[0] == ScriptedCluster::Argv{"SET", "greeting", "hello"});
  for (int n = 0; n < f.cluster.size(); ++n) {
    if (n != owner) CHECK(f.cluster.received(n, "set").empty());
  }
}

TEST_CASE("MGET across slots is merged back in the client's order") {
  ProxyFixture f;
  TestClient c = f.client();
  const std::string a = key_on(f.cluster, 2, "a");
  const std::string b = key_on(f.cluster, 0, "b");
  const std::string d = key_on(f.cluster, 1, "d");
  const std::string e = key_on(f.cluster, 2, "e");
  CHECK(c.command({"MSET", a, "1", b, "2", d, "4"}) == "+OK\r\n");
  CHECK(c.command({"MGET", a, b, "nothing", d, e, a}) ==
        "*6\r\n" + bulk("1") + bulk("2") + "$-1\r\n" + bulk("4") + "$-1\r\n" + bulk("1"));
  // One part per slot, each to its owner with only its own keys.
  const auto on_2 = f.cluster.received(2, "mget");
  REQUIRE(on_2.size() >= 1);
  for (const auto& argv : on_2) {
    for (std::size_t i = 1; i < argv.size(); ++i)
      CHECK(f.cluster.owner(key_slot(argv[i])) == 2);
  }
  CHECK(c.command({"DEL", a, b, "nothing"}) == ":2\r\n");
  CHECK(c.command({"EXISTS", a, b, d}) == ":1\r\n");
}

TEST_CASE("a MOVED is followed, to wherever it points") {
  ProxyFixture f;
  TestClient c = f.client();
  const std::string key = key_on(f.cluster, 0, "moving");
  const Slot slot = key_slot(key);
  REQUIRE(c.command({"SET", key, "v"}) == "+OK\r\n");
  // Node 0 says node 1 has the slot now; node 1 (which does not) sends the proxy back to node 0.
  f.cluster.fail("get", "MOVED " + std::to_string(slot) + " " + f.cluster.address(1).str(), 1, 0);
  CHECK(c.command({"GET", key}) == bulk("v"));
  CHECK(f.cluster.received(0, "get").size() == 2);
  CHECK(f.cluster.received(1, "get").size() == 1);
}

TEST_CASE("an ASK sends one command, after ASKING, to the node it names") {
  ProxyFixture f;
  TestClient c = f.client();
  const std::string key = key_on(f.cluster, 2, "asked");
  f.cluster.fail("incr", "ASK " + std::to_string(key_slot(key)) + " " + f.cluster.address(0).str(), 1, 2);
  CHECK(c.command({"INCR", key}) == ":1\r\n");
  const auto on_0 = f.cluster.received(0);
  REQUIRE(on_0.size() >= 2);
  CHECK(on_0[on_0.size() - 2] == ScriptedCluster::Argv{"ASKING"});
  CHECK(on_0.back() == ScriptedCluster::Argv{"INCR", key});
  // The map did not change: the next one goes to the owner.
  CHECK(c.command({"INCR", key}) == ":1\r\n");
  CHECK(f.cluster.received(2, "incr").size() == 2);
}

TEST_CASE("TRYAGAIN and CLUSTERDOWN are retried; a lost connection retries a read") {
  ProxyFixture f;
  TestClient c = f.client();
  const std::string key = key_on(f.cluster, 1, "retried");
  f.cluster.fail("set", "TRYAGAIN Multiple keys request during rehashing of slot", 2, 1);
  f.cluster.fail("set", "CLUSTERDOWN The cluster is down", 1, 1);
  CHECK(c.command({"SET", key, "x"}) == "+OK\r\n");
  CHECK(f.cluster.received(1, "set").size() == 4);
  f.cluster.close_connection("get", 1, 1);
  CHECK(c.command({"GET", key}) == bulk("x"));
}

TEST_CASE("pipelined replies come back in order, each its own, while one node is slow") {
  ProxyFixture f;
  TestClient c = f.client();
  const std::string slow = key_on(f.cluster, 0, "slow");
  f.cluster.delay("", 100ms, 1, 0);
  std::string wire;
  std::vector<std::string> expected;
  for (int i = 0; i < 30; ++i) {
    const std::string key = i % 3 == 0 ? slow : "key" + std::to_string(i);
    resp::append_command(wire, {"TYPE", key});
    expected.push_back(bulk("type " + key));
  }
  REQUIRE(c.send_raw(wire));
  for (const auto& e : expected)
    CHECK(c.read_reply() == e);
}

// Per-client order through retries: a command sent again must not run after a later command of the same
// client for the same slot (SET k 10 sent again after SET k 20 would leave 10).

TEST_CASE("a write refused with CLUSTERDOWN is not sent again over a later write of its client that ran") {
  ProxyFixture f;
  TestClient c = f.client();
  const std::string key = key_on(f.cluster, 1, "order");
  f.cluster.fail("set", "CLUSTERDOWN The cluster is down", 1, 1);
  std::string wire;
  resp::append_command(wire, {"SET", key, "10"});
  resp::append_command(wire, {"SET", key, "20"});
  REQUIRE(c.send_raw(wire));
  // The second SET ran before the first one's error came back: the first keeps its error (as from Redis).
  CHECK(c.read_reply() == "-CLUSTERDOWN The cluster is down\r\n");
  CHECK(c.read_reply() == "+OK\r\n");
  std::this_thread::sleep_for(150ms);  // longer than any retry's backoff
  CHECK(c.command({"GET", key}) == bulk("20"));
  CHECK(f.cluster.received(1, "set").size() == 2);
}

TEST_CASE("pipelined writes refused together are sent again together, in the client's order") {
  ProxyFixture f;
  TestClient c = f.client();
  const std::string key = key_on(f.cluster, 1, "order");
  f.cluster.fail("set", "TRYAGAIN Multiple keys request during rehashing of slot", 2, 1);
  std::string wire;
  resp::append_command(wire, {"SET", key, "10"});
  resp::append_command(wire, {"SET", key, "20"});
  REQUIRE(c.send_raw(wire));
  CHECK(c.read_reply() == "+OK\r\n");
  CHECK(c.read_reply() == "+OK\r\n");
  CHECK(c.command({"GET", key}) == bulk("20"));
  const auto sets = f.cluster.received(1, "set");
  REQUIRE(sets.size() == 4);
  CHECK(sets[2][2] == "10");
  CHECK(sets[3][2] == "20");
}

TEST_CASE(
    "a command that arrives while an earlier one of its client waits to be sent again waits behind it") {
  ProxyFixture f;
  TestClient c = f.client();
  const std::string key = key_on(f.cluster, 2, "order");
  const std::string other = key_on(f.cluster, 0, "elsewhere");
  // Three refusals, then the first SET waits 40 ms for its fourth try. The later SETs are sent once the proxy
  // has taken all three refusals in (not after a fixed sleep, nor once the node has sent the third: until the
  // proxy has read it the first SET is at the node, not waiting, and a later SET would be sent behind that
  // try, take no refusal, run, and rightly cost the first its place), so they arrive while it waits, and go
  // behind it.
  f.cluster.fail("set", "CLUSTERDOWN The cluster is down", 3, 2);
  REQUIRE(c.send({"SET", key, "10"}));
  for (int i = 0; i < 1000 && counter(*f.proxy, "redirects_clusterdown") < 3; ++i)
    std::this_thread::sleep_for(2ms);
  REQUIRE(counter(*f.proxy, "redirects_clusterdown") == 3);
  REQUIRE(f.cluster.received(2, "set").size() == 3);
  std::string wire;
  resp::append_command(wire, {"SET", key, "20"});
  resp::append_command(wire, {"SET", other, "x"});  // another node: it waits too, to keep the client's order
  REQUIRE(c.send_raw(wire));
  CHECK(c.read_reply() == "+OK\r\n");
  CHECK(c.read_reply() == "+OK\r\n");
  CHECK(c.read_reply() == "+OK\r\n");
  CHECK(c.command({"GET", key}) == bulk("20"));
  const auto sets = f.cluster.received(2, "set");
  REQUIRE(sets.size() == 5);
  CHECK(sets[3][2] == "10");
  CHECK(sets[4][2] == "20");
}

TEST_CASE("a connect that fails at once is answered, and the proxy goes on") {
  // 255.255.255.255 is refused by the kernel in connect() itself (a broadcast address), before any event:
  // the failure comes back inside the send.
  ProxyFixture f;
  TestClient c = f.client();
  const std::string key = key_on(f.cluster, 0, "nowhere");
  f.cluster.fail("get", "MOVED " + std::to_string(key_slot(key)) + " 255.255.255.255:6379", 1, 0);
  const std::string reply = c.command({"GET", key});
  // Either the map is reloaded in time and the node that owns the slot answers, or the deadline passes and
  // the client is told why.
  const bool answered = reply == "$-1\r\n" || reply.find("cannot connect") != std::string::npos;
  CHECK_MESSAGE(answered, reply);
  CHECK(f.client().command({"PING"}) == "+PONG\r\n");
  CHECK(c.command({"SET", key, "v"}) == "+OK\r\n");
}

TEST_CASE("the proxy's questions to a node go on one kept connection, and each is asked anew") {
  ProxyFixture f;
  proxy::Worker& worker = *f.proxy->workers().front();
  const std::string command = "*2\r\n$7\r\nCLUSTER\r\n$5\r\nNODES\r\n";
  auto ask = [&f, &command](const HostPort& node) {
    std::string why;
    const auto reply = f.proxy->ask_node(node, command, std::chrono::steady_clock::now() + 1s, why);
    CHECK_MESSAGE(reply.has_value(), why);
    return reply && reply->find("myself") != std::string::npos;
  };
  auto asked = [&f] {
    std::size_t n = 0;
    for (const auto& argv : f.cluster.received(0, "cluster"))
      n += argv.size() == 2 && argv[1] == "NODES";
    return n;
  };
  // Read on the worker's loop, where the connections live.
  auto kept = [&worker] {
    auto count = std::make_shared<std::promise<std::size_t>>();
    REQUIRE(worker.post([&worker, count] { count->set_value(worker.question_connections()); }));
    return count->get_future().get();
  };
  const HostPort node = f.cluster.address(0);

  CHECK(ask(node));
  const std::size_t open = f.cluster.connections();
  for (int i = 0; i < 5; ++i)
    CHECK(ask(node));
  CHECK(f.cluster.connections() == open);
  CHECK(asked() == 6);
  CHECK(kept() == 1);

  // The node closes the kept connection as the next question comes, unanswered: it is asked again on a new
  // one.
  f.cluster.close_connection("cluster", 1, 0);
  CHECK(ask(node));
  CHECK(asked() == 8);
  CHECK(ask(node));
  CHECK(asked() == 9);
  CHECK(kept() == 1);

  // An address where nothing answers is not kept.
  std::string why;
  CHECK_FALSE(
      f.proxy->ask_node(HostPort{"127.0.0.1", 1}, command, std::chrono::steady_clock::now() + 1s, why));
  CHECK(why.find("cannot connect") != std::string::npos);
  CHECK(kept() == 1);

  // Nor more than kMaxKept: the least recently asked are closed.
  test::ScriptedCluster many(static_cast<int>(proxy::NodeQuestions::kMaxKept) + 2);
  for (const HostPort& other : many.addresses())
    CHECK(ask(other));
  CHECK(kept() == proxy::NodeQuestions::kMaxKept);
  const auto deadline = std::chrono::steady_clock::now() + 2s;
  while (f.cluster.connections() + many.connections() > open - 1 + proxy::NodeQuestions::kMaxKept &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  CHECK(f.cluster.connections() + many.connections() == open - 1 + proxy::NodeQuestions::kMaxKept);
}
