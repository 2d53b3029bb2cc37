// INFO through the proxy: the masters' sections merged into one Redis's answer (proxy/info_merge.h).
#include <doctest/doctest.h>

#include <array>
#include <string>
#include <string_view>

#include "proxy/info_merge.h"

using namespace slotshift::proxy::info_merge;

namespace {

// The value of `field` in an INFO text, or "<none>".
std::string field(const std::string& text, const std::string& name) {
  const auto at = text.find("\r\n" + name + ":");
  if (at == std::string::npos) return "<none>";
  const auto start = at + 2 + name.size() + 1;
  return text.substr(start, text.find("\r\n", start) - start);
}

std::string compose_ok(const Plan& plan, std::span<const std::string_view> nodes) {
  std::string out, error;
  REQUIRE_MESSAGE(compose(plan, nodes, out, error), error);
  return out;
}

}  // namespace

TEST_CASE("sections are read as Redis 7 reads them") {
  const std::array<std::string_view, 0> none{};
  CHECK(sections_of(none) == kAll);
  const std::array<std::string_view, 2> two{"KEYSPACE", "Server"};
  CHECK(sections_of(two) == (kKeyspace | kServer));
  const std::array<std::string_view, 1> all{"everything"};
  CHECK(sections_of(all) == kAll);
  const std::array<std::string_view, 2> unknown{"replication", "nosuch"};
  CHECK(sections_of(unknown) == 0);
  CHECK(node_sections(kClients | kProxy).empty());
  CHECK(node_sections(kServer | kKeyspace) == std::vector<std::string>{"server", "keyspace"});
}

TEST_CASE("versions compare number by number, the oldest wins") {
  const std::array<std::string_view, 3> v{"7.2.4", "7.0.15", "7.10.0"};
  CHECK(oldest_version(v) == "7.0.15");
  const std::array<std::string_view, 2> w{"7.10.0", "7.9.9"};
  CHECK(oldest_version(w) == "7.9.9");
  const std::array<std::string_view, 2> x{"8.0.2", "7.0.15"};
  CHECK(oldest_version(x) == "7.0.15");
}

TEST_CASE("bytes are written as Redis writes its _human fields") {
  CHECK(bytes_to_human(0) == "0B");
  CHECK(bytes_to_human(1023) == "1023B");
  CHECK(bytes_to_human(1024) == "1.00K");
  CHECK(bytes_to_human(1536 * 1024) == "1.50M");
  CHECK(bytes_to_human(3ull << 30) == "3.00G");
}

TEST_CASE("keyspace lines sum their counts and weigh avg_ttl by expires") {
  const std::array<std::string_view, 3> v{"keys=10,expires=2,avg_ttl=1000", "keys=5,expires=6,avg_ttl=3000",
                                          "keys=1,expires=0,avg_ttl=0"};
  // (2*1000 + 6*3000) / 8 = 2500
  CHECK(merge_keyspace(v) == "keys=16,expires=8,avg_ttl=2500");
  // A master whose avg_ttl is 0 (nothing sampled yet) does not pull the average down.
  const std::array<std::string_view, 2> w{"keys=4,expires=4,avg_ttl=0", "keys=4,expires=4,avg_ttl=900"};
  CHECK(merge_keyspace(w) == "keys=8,expires=8,avg_ttl=900");
  // Fields of newer servers are summed too.
  const std::array<std::string_view, 2> x{"keys=1,expires=0,avg_ttl=0,subexpiry=2",
                                          "keys=2,expires=0,avg_ttl=0,subexpiry=3"};
  CHECK(merge_keyspace(x) == "keys=3,expires=0,avg_ttl=0,subexpiry=5");
}

TEST_CASE("memory: amounts summed, _human and ratios written again, text kept when all agree") {
  const std::string a =
      "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nused_memory_rss:2097152\r\n"
      "used_memory_peak:2097152\r\nused_memory_peak_human:2.00M\r\nused_memory_peak_perc:50.00%\r\n"
      "used_memory_startup:524288\r\nused_memory_dataset:262144\r\nused_memory_dataset_perc:50.00%\r\n"
      "total_system_memory:8000\r\nmem_fragmentation_ratio:2.00\r\nmem_allocator:jemalloc-5.3.0\r\n"
      "maxmemory_policy:noeviction\r\nlazyfree_pending_objects:1\r\n";
  const std::string b =
      "# Memory\r\nused_memory:3145728\r\nused_memory_human:3.00M\r\nused_memory_rss:3145728\r\n"
      "used_memory_peak:4194304\r\nused_memory_peak_human:4.00M\r\nused_memory_peak_perc:75.00%\r\n"
      "used_memory_startup:524288\r\nused_memory_dataset:1048576\r\nused_memory_dataset_perc:40.00%\r\n"
      "total_system_memory:9000\r\nmem_fragmentation_ratio:1.00\r\nmem_allocator:jemalloc-5.3.0\r\n"
      "maxmemory_policy:allkeys-lru\r\nlazyfree_pending_objects:2\r\n";
  Plan plan;
  plan.sections = kMemory;
  const std::array<std::string_view, 2> nodes{a, b};
  const std::string out = compose_ok(plan, nodes);
  CHECK(out.starts_with("# Memory\r\n"));
  CHECK(field(out, "used_memory") == "4194304");
  CHECK(field(out, "used_memory_human") == "4.00M");
  CHECK(field(out, "used_memory_peak_human") == "6.00M");
  CHECK(field(out, "used_memory_peak_perc") == "66.67%");  // 4M / 6M
  // 1.25M * 100 / (4M - 1M)
  CHECK(field(out, "used_memory_dataset_perc") == "41.67%");
  CHECK(field(out, "mem_fragmentation_ratio") == "1.25");  // 5M / 4M
  CHECK(field(out, "total_system_memory") == "9000");      // the largest, not a sum
  CHECK(field(out, "mem_allocator") == "jemalloc-5.3.0");
  CHECK(field(out, "maxmemory_policy") == "noeviction,allkeys-lru");
  CHECK(field(out, "lazyfree_pending_objects") == "3");
}

TEST_CASE("stats: counters and rates summed, the proxy's own counts in place, other percentages averaged") {
  const std::string a =
      "# Stats\r\ntotal_connections_received:100\r\ntotal_commands_processed:1000\r\n"
      "instantaneous_ops_per_sec:10\r\ninstantaneous_input_kbps:1.50\r\nkeyspace_hits:7\r\n"
      "expired_stale_perc:10.00\r\nlatest_fork_usec:300\r\n";
  const std::string b =
      "# Stats\r\ntotal_connections_received:200\r\ntotal_commands_processed:2000\r\n"
      "instantaneous_ops_per_sec:5\r\ninstantaneous_input_kbps:0.25\r\nkeyspace_hits:3\r\n"
      "expired_stale_perc:20.00\r\nlatest_fork_usec:100\r\n";
  Plan plan;
  plan.sections = kStats;
  plan.own_stats = {{"total_connections_received", "4"}, {"total_commands_processed", "42"}};
  const std::array<std::string_view, 2> nodes{a, b};
  const std::string out = compose_ok(plan, nodes);
  CHECK(field(out, "total_connections_received") == "4");
  CHECK(field(out, "total_commands_processed") == "42");
  CHECK(field(out, "instantaneous_ops_per_sec") == "15");
  CHECK(field(out, "instantaneous_input_kbps") == "1.75");
  CHECK(field(out, "keyspace_hits") == "10");
  CHECK(field(out, "expired_stale_perc") == "15.00");
  CHECK(field(out, "latest_fork_usec") == "300");
}

TEST_CASE("the whole reply: sections in Redis's order, the proxy's own sections as given") {
  const std::string a =
      "# Server\r\nredis_version:7.2.4\r\nprocess_id:1\r\n\r\n# "
      "Keyspace\r\ndb0:keys=2,expires=0,avg_ttl=0\r\n";
  const std::string b = "# Server\r\nredis_version:7.0.15\r\nprocess_id:2\r\n\r\n# Keyspace\r\n";
  Plan plan;
  plan.sections = kServer | kClients | kKeyspace | kProxy;
  plan.server = "redis_mode:standalone\r\n";
  plan.clients = "connected_clients:3\r\n";
  plan.proxy = "retries:0\r\n";
  const std::array<std::string_view, 2> nodes{a, b};
  CHECK(compose_ok(plan, nodes) ==
        "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n\r\n# "
        "Clients\r\nconnected_clients:3\r\n\r\n"
        "# Keyspace\r\ndb0:keys=2,expires=0,avg_ttl=0\r\n\r\n# Proxy\r\nretries:0\r\n");

  // A master whose answer has no version is not passed off as part of the whole.
  const std::array<std::string_view, 2> broken{a, std::string_view("# Server\r\nprocess_id:3\r\n")};
  std::string out, error;
  CHECK_FALSE(compose(plan, broken, out, error));
  CHECK(error.find("redis_version") != std::string::npos);
}
