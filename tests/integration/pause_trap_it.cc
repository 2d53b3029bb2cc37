// The pause trap, reproduced on the server the fixture runs (SLOTSHIFT_SERVER): a master with a replica, keys
// in one of its slots, its writes paused, learns that another master claimed that slot. Redis 7.2 to 8.x and
// Valkey 8.0 trip an assertion and die (they propagate the deletes of the lost slot's keys while paused);
// Redis 7.0 and Valkey 8.1 and later survive. slotshift move chooses its cutover from
// ServerInfo::survives_paused_claim(); this test fails the day a server behaves otherwise than that function
// says, in either direction.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>

#include "common/server_info.h"
#include "common/slot.h"
#include "tests/integration/fixture.h"

using namespace slotshift;

namespace {

std::string str(const test::Reply& r) {
  REQUIRE(r);
  return r->str ? std::string(r->str, r->len) : std::string();
}

// The slots a node's own line of CLUSTER NODES lists, as text ("0-5460").
bool owns(const std::string& nodes, const std::string& id, Slot slot) {
  std::size_t at = 0;
  while (at < nodes.size()) {
    const auto end = nodes.find('\n', at);
    const std::string line = nodes.substr(at, end == std::string::npos ? std::string::npos : end - at);
    at = end == std::string::npos ? nodes.size() : end + 1;
    if (!line.starts_with(id)) continue;
    std::size_t field = 0, pos = 0;
    while (pos < line.size()) {
      const auto space = line.find(' ', pos);
      const std::string f = line.substr(pos, space == std::string::npos ? std::string::npos : space - pos);
      pos = space == std::string::npos ? line.size() : space + 1;
      if (field++ < 8 || f.empty() || f[0] == '[') continue;
      const auto dash = f.find('-');
      const long a = std::stol(f.substr(0, dash));
      const long b = dash == std::string::npos ? a : std::stol(f.substr(dash + 1));
      if (a <= slot && slot <= b) return true;
    }
  }
  return false;
}

}  // namespace

TEST_CASE(
    "a write-paused master that learns it lost a slot holding keys survives exactly where slotshift "
    "expects") {
  test::LocalCluster cluster(3, 1);
  const auto masters = cluster.masters();
  REQUIRE(masters.size() == 3);
  test::Connection a(masters[0]), b(masters[1]);

  ServerInfo info;
  std::string why;
  REQUIRE(parse_server_info(str(a.command({"INFO", "server"})), info, why));
  const bool expected = info.survives_paused_claim();
  MESSAGE(info.name() << ": slotshift expects it to " << std::string(expected ? "survive" : "crash"));

  test::Connection& owner = a;
  test::Connection& claimant = b;
  const std::string owner_id = str(a.command({"CLUSTER", "MYID"}));
  const std::string claimant_id = str(b.command({"CLUSTER", "MYID"}));
  // A slot of the owner's with 100 keys in it; its replica must be connected for anything to be propagated.
  const std::string view = str(owner.command({"CLUSTER", "NODES"}));
  std::string tag;
  for (int i = 0; tag.empty(); ++i)
    if (owns(view, owner_id, key_slot("{trap" + std::to_string(i) + "}")))
      tag = "{trap" + std::to_string(i) + "}";
  const Slot slot = key_slot(tag);
  for (int i = 0; i < 100; ++i)
    REQUIRE(str(owner.command({"SET", tag + std::to_string(i), "v"})) == "OK");
  for (int i = 0; str(owner.command({"INFO", "replication"})).find("connected_slaves:1") == std::string::npos;
       ++i) {
    REQUIRE(i < 100);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  REQUIRE(owner.command({"WAIT", "1", "5000"})->integer == 1);

  // The claim, as slotshift move makes it: IMPORTING on the claimant, then SETSLOT NODE there, which bumps
  // its epoch and broadcasts; the owner is write-paused meanwhile.
  REQUIRE(str(claimant.command({"CLUSTER", "SETSLOT", std::to_string(slot), "IMPORTING", owner_id})) == "OK");
  REQUIRE(str(owner.command({"CLIENT", "PAUSE", "10000", "WRITE"})) == "OK");
  REQUIRE(str(claimant.command({"CLUSTER", "SETSLOT", std::to_string(slot), "NODE", claimant_id})) == "OK");

  // Within 5 s the owner either names the claimant as the slot's owner (it survived) or stops answering.
  bool survived = false, crashed = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!survived && !crashed && std::chrono::steady_clock::now() < deadline) {
    try {
      test::Connection probe(owner.endpoint(), 1000);
      const auto nodes = probe.command({"CLUSTER", "NODES"});
      survived = nodes && nodes->type == REDIS_REPLY_STRING && owns(str(nodes), claimant_id, slot);
    } catch (const std::exception&) {
      crashed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE_MESSAGE((survived || crashed), "the owner neither learnt the claim nor stopped within 5 s");
  if (survived) {
    test::Connection probe(owner.endpoint(), 1000);
    probe.command({"CLIENT", "UNPAUSE"});
    CHECK(probe.command({"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)})->integer == 0);
  }
  if (crashed) {
    // Crashed of the trap itself, not of something else: the assertion about propagating while paused.
    const std::string log =
        test::run("cat " + cluster.dir() + "/" + std::to_string(owner.endpoint().port) + "/redis.log");
    CHECK_MESSAGE(log.find("ASSERTION FAILED") != std::string::npos,
                  log.substr(log.size() > 2000 ? log.size() - 2000 : 0));
    CHECK_MESSAGE(log.find("isPausedActions") != std::string::npos,
                  log.substr(log.size() > 2000 ? log.size() - 2000 : 0));
  }
  const std::string outcome = info.name() + (survived ? " survived" : " crashed");
  MESSAGE(outcome);
  CHECK_MESSAGE(survived == expected, outcome << " a claim learnt while write-paused; "
                                              << "ServerInfo::survives_paused_claim() says it "
                                              << std::string(expected ? "survives" : "crashes"));
}
