// What slotshift concludes from a node's INFO server: which server and version, its DUMP format, whether it
// may stay paused while it learns a claim, and which moves between versions are refused.
#include <doctest/doctest.h>

#include "common/server_info.h"

using namespace slotshift;

namespace {

ServerInfo parse(const std::string& text) {
  ServerInfo info;
  std::string error;
  REQUIRE_MESSAGE(parse_server_info(text, info, error), error);
  return info;
}

}  // namespace

TEST_CASE("Redis and Valkey are told apart, Valkey by server_name and valkey_version first") {
  const auto redis7 =
      parse("# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\nredis_mode:cluster\r\n");
  CHECK(redis7.flavor == ServerInfo::Flavor::kRedis);
  CHECK(redis7.name() == "Redis 7.0.15");
  CHECK(redis7.rdb_version() == 10);
  CHECK(redis7.survives_paused_claim());
  CHECK_FALSE(redis7.propagates_lost_slot_deletes());

  // Valkey 9.1 reports redis_version:7.2.4 for compatibility.
  const auto valkey9 = parse(
      "# "
      "Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\nredis_mode:"
      "cluster\r\n");
  CHECK(valkey9.flavor == ServerInfo::Flavor::kValkey);
  CHECK(valkey9.name() == "Valkey 9.1.2");
  CHECK(valkey9.rdb_version() == 80);
  CHECK(valkey9.survives_paused_claim());
  CHECK(valkey9.propagates_lost_slot_deletes());
  CHECK(parse("redis_version:8.0.2\n").propagates_lost_slot_deletes());

  CHECK(parse("redis_version:8.0.6\n").rdb_version() == 12);
  CHECK_FALSE(parse("redis_version:8.0.6\n").survives_paused_claim());
  CHECK(parse("redis_version:7.2.4\n").rdb_version() == 11);
  CHECK_FALSE(parse("redis_version:7.2.4\n").survives_paused_claim());
  CHECK(parse("redis_version:7.4.1\n").rdb_version() == 12);
  const auto valkey80 = parse("redis_version:7.2.4\nserver_name:valkey\nvalkey_version:8.0.1\n");
  CHECK(valkey80.rdb_version() == 11);
  CHECK_FALSE(valkey80.survives_paused_claim());
  CHECK(parse("redis_version:7.2.4\nserver_name:valkey\nvalkey_version:8.1.1\n").survives_paused_claim());

  ServerInfo out;
  std::string error;
  CHECK_FALSE(parse_server_info("# Server\r\nredis_mode:cluster\r\n", out, error));
  CHECK(error.find("no version") != std::string::npos);
}

TEST_CASE("moves the target could not restore are refused, with both servers named") {
  const auto redis70 = parse("redis_version:7.0.15\n");
  const auto redis80 = parse("redis_version:8.0.2\n");
  const auto valkey80 = parse("server_name:valkey\nvalkey_version:8.0.1\n");
  const auto valkey91 = parse("server_name:valkey\nvalkey_version:9.1.2\n");
  std::string why;
  CHECK(payloads_compatible(redis70, redis70, why));
  CHECK(payloads_compatible(redis70, redis80, why));
  CHECK(payloads_compatible(redis70, valkey91, why));
  CHECK(payloads_compatible(valkey80, valkey91, why));
  CHECK(payloads_compatible(valkey80, redis80, why));

  CHECK_FALSE(payloads_compatible(redis80, redis70, why));
  CHECK(why.find("Redis 8.0.2 (RDB 12)") != std::string::npos);
  CHECK(why.find("Redis 7.0.15 (RDB 10)") != std::string::npos);
  CHECK_FALSE(payloads_compatible(redis80, valkey91, why));  // Valkey reads no Redis 7.4+ payloads
  CHECK_FALSE(payloads_compatible(valkey91, redis80, why));
  CHECK_FALSE(payloads_compatible(valkey80, redis70, why));
}

TEST_CASE("one field of INFO, as text and as a number") {
  const std::string info =
      "# Replication\r\nrole:master\r\nmaster_repl_offset:12345\r\nmaster_replid:abc\r\n";
  CHECK(info_field(info, "role") == "master");
  CHECK(info_integer(info, "master_repl_offset") == 12345);
  CHECK(info_integer(info, "master_replid") == -1);      // not a number
  CHECK(info_integer(info, "slave_repl_offset") == -1);  // missing
  CHECK(info_field(info, "master_repl") == "");          // a prefix of a name is not the name
}
