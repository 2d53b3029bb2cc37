// slotshift status and check against a live cluster, as a user runs them: exit codes and what they print.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "tests/integration/fixture.h"

using namespace slotshift;

namespace {

const std::string kSlotshift = std::string(SLOTSHIFT_BINARY_DIR) + "/orchestrator/slotshift";

test::RunResult slotshift_cmd(const std::string& args) {
  return test::run_capture(kSlotshift + " " + args + " 2>&1");
}

std::string node_id(test::Connection& c) {
  auto r = c.command({"CLUSTER", "MYID"});
  return std::string(r->str, r->len);
}

}  // namespace

TEST_CASE("status and check on a healthy cluster with replicas") {
  auto& cluster = test::shared_cluster(3, 1);
  const auto seed = cluster.nodes().front().str();

  auto status = slotshift_cmd("status --cluster " + seed);
  CHECK(status.exit_code == 0);
  CHECK(status.out.find("3 masters") != std::string::npos);
  CHECK(status.out.find("16384 of 16384 slots covered") != std::string::npos);

  auto json = slotshift_cmd("status --json --cluster " + seed);
  REQUIRE(json.exit_code == 0);
  const auto j = nlohmann::json::parse(json.out);
  CHECK(j["slots_covered"] == 16384);
  CHECK(j["nodes"].size() == 6);
  int masters = 0;
  for (const auto& n : j["nodes"]) {
    if (n["role"] == "master") {
      ++masters;
      CHECK(n.contains("config_epoch"));
      CHECK(n["slot_count"].get<int>() > 5000);
    }
  }
  CHECK(masters == 3);

  auto check = slotshift_cmd("check --cluster " + seed);
  CHECK(check.exit_code == 0);
  CHECK(check.out.find("OK: all nodes agree") != std::string::npos);
}

TEST_CASE("check reports an open slot, and is clean again once it is closed") {
  auto& cluster = test::shared_cluster(3, 1);
  const auto masters = cluster.masters();
  REQUIRE(masters.size() == 3);
  test::Connection a(masters[0]), b(masters[1]);
  const auto a_id = node_id(a);
  // Some slot a owns: ask a which slots it serves.
  auto slots = a.command({"CLUSTER", "SLOTS"});
  std::string slot;
  for (std::size_t i = 0; i < slots->elements && slot.empty(); ++i) {
    auto* range = slots->element[i];
    if (range->element[2]->element[1]->integer == masters[0].port)
      slot = std::to_string(range->element[0]->integer);
  }
  REQUIRE_FALSE(slot.empty());
  auto r = b.command({"CLUSTER", "SETSLOT", slot, "IMPORTING", a_id});
  REQUIRE(std::string(r->str) == "OK");

  auto check = slotshift_cmd("check --json --cluster " + cluster.nodes().front().str());
  CHECK(check.exit_code == 1);
  const auto j = nlohmann::json::parse(check.out);
  CHECK(j["ok"] == false);
  bool importing = false;
  for (const auto& f : j["findings"])
    importing |= f["kind"] == "slot-importing" && f["slots"] == slot;
  CHECK_MESSAGE(importing, check.out);

  r = b.command({"CLUSTER", "SETSLOT", slot, "STABLE"});
  REQUIRE(std::string(r->str) == "OK");
  CHECK(slotshift_cmd("check --cluster " + cluster.nodes().front().str()).exit_code == 0);
}

TEST_CASE("bad input and unreachable seeds get a clear error and a non-zero exit") {
  auto bad = slotshift_cmd("status --cluster nonsense");
  CHECK(bad.exit_code == 2);
  CHECK(bad.out.find("expected HOST:PORT") != std::string::npos);
  auto down = slotshift_cmd("check --cluster 127.0.0.1:1 --timeout-ms 500");
  CHECK(down.exit_code == 1);
  CHECK(down.out.find("cannot reach the seed node 127.0.0.1:1") != std::string::npos);
  CHECK(slotshift_cmd("frobnicate").exit_code != 0);
}

TEST_CASE("a cluster with a password: status, check and move with --password, and a clear error without") {
  test::LocalCluster cluster(3, 0);
  const auto masters = cluster.masters();
  for (const auto& m : masters) {
    test::Connection c(m);
    c.command({"CONFIG", "SET", "requirepass", "pw"});
  }
  const auto seed = masters.front().str();
  auto denied = slotshift_cmd("status --cluster " + seed);
  CHECK(denied.exit_code == 1);
  CHECK_MESSAGE(denied.out.find("NOAUTH") != std::string::npos, denied.out);
  auto wrong = slotshift_cmd("check --cluster " + seed + " --password nope");
  CHECK(wrong.exit_code == 1);
  CHECK_MESSAGE(wrong.out.find("AUTH refused") != std::string::npos, wrong.out);
  CHECK(slotshift_cmd("check --cluster " + seed + " --password pw").exit_code == 0);

  // Some keys in slot 0 (owned by the first master), then the slot moves with the password from the
  // environment.
  test::Connection a(masters.front());
  a.command({"AUTH", "pw"});
  int written = 0;
  for (int n = 0; written < 20; ++n) {
    const std::string k = "pw-" + std::to_string(n);
    if (a.command({"CLUSTER", "KEYSLOT", k})->integer != 0) continue;
    a.command({"SET", k, "v"});
    ++written;
  }
  auto moved = test::run_capture("SLOTSHIFT_PASSWORD=pw " + kSlotshift + " move --cluster " + seed +
                                 " --slots 0 --to " + masters[1].str() + " 2>&1");
  CHECK_MESSAGE(moved.exit_code == 0, moved.out);
  test::Connection b(masters[1]);
  b.command({"AUTH", "pw"});
  CHECK(b.command({"CLUSTER", "COUNTKEYSINSLOT", "0"})->integer == 20);
  CHECK(a.command({"CLUSTER", "COUNTKEYSINSLOT", "0"})->integer == 0);
}

// A node answers LOADING while it reads its dataset: after a restart, or (as in the demo) when a master
// emptied by a move turns into a replica and loads its first full sync. DEBUG RELOAD gives the same state on
// demand: with a delay per key and events served every kilobyte, the node answers LOADING for about two
// seconds.
TEST_CASE(
    "status, check and move wait for a node that is loading, and name it if it still is at the deadline") {
  test::LocalCluster cluster(3, 0);
  const auto masters = cluster.masters();
  const auto loading = masters[2];
  test::Connection c(loading);
  const auto tag = [&] {
    for (int n = 0;; ++n) {
      const std::string t = "{load" + std::to_string(n) + "}";
      if (c.command({"EXISTS", t})->type != REDIS_REPLY_ERROR) return t;  // not MOVED: this node's slot
    }
  }();
  c.command({"DEBUG", "POPULATE", "10000", tag});
  c.command({"CONFIG", "SET", "key-load-delay", "200"});
  c.command({"CONFIG", "SET", "loading-process-events-interval-bytes", "1024"});
  auto reload = [&] {
    // After the load before, if any.
    for (int i = 0; i < 400 && test::run_capture("redis-cli -p " + std::to_string(loading.port) + " PING")
                                   .out.starts_with("LOADING");
         ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    // In the background: DEBUG RELOAD answers only once the load is over.
    test::run("redis-cli -h " + loading.host + " -p " + std::to_string(loading.port) +
              " DEBUG RELOAD >/dev/null 2>&1 &");
    for (int i = 0; i < 200; ++i) {
      test::Connection probe(loading);
      auto r = probe.command({"PING"});
      if (r->type == REDIS_REPLY_ERROR && std::string(r->str).starts_with("LOADING")) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    FAIL("the node never answered LOADING");
  };
  const auto seed = masters[0].str();

  // Past the deadline: named as loading, not as unreachable and not as healthy. A load lasts about two
  // seconds, and a slow build can spend that on one command: each starts on a fresh load.
  reload();
  auto short_check = slotshift_cmd("check --cluster " + seed + " --timeout-ms 300");
  CHECK(short_check.exit_code == 1);
  CHECK_MESSAGE(short_check.out.find("loading: " + loading.str() +
                                     " is still loading its dataset (LOADING)") != std::string::npos,
                short_check.out);
  CHECK_MESSAGE(short_check.out.find("NOT OK") != std::string::npos, short_check.out);
  reload();
  auto short_status = slotshift_cmd("status --json --cluster " + loading.str() + " --timeout-ms 300");
  CHECK(short_status.exit_code == 1);
  CHECK_MESSAGE(short_status.out.find("is still loading its dataset") != std::string::npos, short_status.out);
  reload();
  auto refused =
      slotshift_cmd("move --cluster " + seed + " --slots 0 --to " + masters[1].str() + " --timeout-ms 300");
  CHECK(refused.exit_code == 4);  // refused before it touched anything (orchestrator/exit_status.h)
  CHECK_MESSAGE(refused.out.find("still loading its dataset") != std::string::npos, refused.out);

  // Within the deadline: the same commands wait for it and find a healthy cluster.
  reload();
  auto check = slotshift_cmd("check --cluster " + seed + " --timeout-ms 20000");
  CHECK_MESSAGE(check.exit_code == 0, check.out);
  CHECK_MESSAGE(check.out.find("OK: all nodes agree") != std::string::npos, check.out);
  reload();
  auto status = slotshift_cmd("status --cluster " + loading.str() + " --timeout-ms 20000");
  CHECK_MESSAGE(status.exit_code == 0, status.out);
  CHECK(status.out.find("16384 of 16384 slots covered") != std::string::npos);
}

// A master that a move left refusing every write (its only fence while a source had not learnt a claim) is no
// healthy cluster: check names it and counts it.
TEST_CASE("check reports a master left refusing writes by a move") {
  test::LocalCluster cluster(3, 0);
  const auto master = cluster.masters().front();
  test::Connection c(master);
  c.command({"CONFIG", "SET", "min-replicas-to-write", "2147483647"});
  auto refused = slotshift_cmd("check --cluster " + master.str());
  CHECK(refused.exit_code == 1);
  CHECK_MESSAGE(
      refused.out.find("refusing-writes: " + master.str() + " refuses every write") != std::string::npos,
      refused.out);
  CHECK_MESSAGE(refused.out.find("NOT OK: 1 problem(s)") != std::string::npos, refused.out);
  c.command({"CONFIG", "SET", "min-replicas-to-write", "0"});
  CHECK(slotshift_cmd("check --cluster " + master.str()).exit_code == 0);
}
