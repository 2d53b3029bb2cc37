// deploy/local/cluster.sh as the demo and the tests use it: a healthy cluster, and nothing left behind after
// a stop or after its owner dies.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <string>
#include <thread>

#include "tests/integration/fixture.h"

using namespace slotshift;

namespace {

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool port_answers(int port) {
  try {
    test::Connection c({"127.0.0.1", port}, 500);
    auto r = c.command({"PING"});
    return r->type == REDIS_REPLY_STATUS;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

TEST_CASE("a cluster with replicas comes up healthy, and stop leaves nothing behind") {
  std::string dir;
  std::vector<test::Endpoint> nodes;
  {
    test::LocalCluster cluster(3, 1);
    dir = cluster.dir();
    nodes = cluster.nodes();
    REQUIRE(nodes.size() == 6);
    CHECK(cluster.masters().size() == 3);
    for (const auto& node : nodes) {
      test::Connection c(node);
      auto info = c.command({"CLUSTER", "INFO"});
      CHECK(std::string(info->str).find("cluster_state:ok") != std::string::npos);
      auto count = c.command({"CLUSTER", "COUNTKEYSINSLOT", "0"});
      CHECK(count->type == REDIS_REPLY_INTEGER);
    }
    const auto status =
        test::run(std::string(SLOTSHIFT_SOURCE_DIR) + "/deploy/local/cluster.sh status --dir " + dir);
    CHECK(status.find("master ok") != std::string::npos);
    CHECK(status.find("slave ok") != std::string::npos);
  }
  CHECK_FALSE(exists(dir));
  for (const auto& node : nodes)
    CHECK_FALSE(port_answers(node.port));
}

TEST_CASE("the watchdog stops the cluster when its owner process dies") {
  const pid_t owner = ::fork();
  REQUIRE(owner >= 0);
  if (owner == 0) {
    ::execlp("sleep", "sleep", "600", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  const std::string script = std::string(SLOTSHIFT_SOURCE_DIR) + "/deploy/local/cluster.sh";
  const auto out = test::run(script + " start --masters 3 --owner-pid " + std::to_string(owner));
  const auto dir_at = out.find("SLOTSHIFT_CLUSTER_DIR=");
  REQUIRE(dir_at != std::string::npos);
  const auto dir = out.substr(dir_at + 22, out.find('\n', dir_at) - dir_at - 22);
  const auto nodes_at = out.find("SLOTSHIFT_CLUSTER_NODES=127.0.0.1:");
  REQUIRE(nodes_at != std::string::npos);
  const int first_port = std::stoi(out.substr(nodes_at + 34));
  CHECK(port_answers(first_port));
  CHECK(exists(dir));

  ::kill(owner, SIGKILL);
  ::waitpid(owner, nullptr, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while ((exists(dir) || port_answers(first_port)) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK_FALSE(port_answers(first_port));
  CHECK_FALSE(exists(dir));
}

TEST_CASE("bad arguments are refused with a clear message") {
  const std::string script = std::string(SLOTSHIFT_SOURCE_DIR) + "/deploy/local/cluster.sh";
  CHECK_THROWS(test::run(script + " start --masters 2 2>/dev/null"));
  CHECK_THROWS(test::run(script + " start --bogus 2>/dev/null"));
  CHECK_THROWS(test::run(script + " status --dir /nonexistent 2>/dev/null"));
  const auto bogus = test::run_capture(script + " start --server redis-6.2 2>&1");
  CHECK(bogus.exit_code != 0);
  CHECK(bogus.out.find("unknown server 'redis-6.2'") != std::string::npos);
}
