// Which server a node runs, from its INFO server section, and what that means for a move: the RDB version
// of its DUMP payloads (what RESTORE on another node must accept) and whether it survives learning that it
// lost a slot while its writes are paused (REDIS-FACTS.md, "Cutover": Redis 7.2 to 8.x and Valkey 8.0 trip an
// assertion when they propagate the deletes of the lost slot's keys during CLIENT PAUSE WRITE).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace slotshift {

struct ServerInfo {
  enum class Flavor { kRedis, kValkey };
  Flavor flavor = Flavor::kRedis;
  std::string version;  // "7.0.15", "9.1.2"
  int major = 0, minor = 0, patch = 0;

  // "Redis 7.0.15", "Valkey 9.1.2".
  std::string name() const;
  // The RDB version of its snapshots and DUMP payloads: Redis 7.0 = 10, 7.2 = 11, 7.4 and 8.x = 12;
  // Valkey 7.2 to 8.x = 11, 9.x = 80.
  int rdb_version() const;
  // Whether the server may keep a CLIENT PAUSE WRITE while it learns that another node claimed one of its
  // slots. Redis 7.0 deletes the slot's keys without propagating them; Valkey 8.1 and later propagate them
  // even while paused. Redis 7.2 and later (up to the newest version checked, 8.0) and Valkey 8.0 crash.
  bool survives_paused_claim() const;
  // Whether, when it learns that another node claimed one of its slots, it sends the deletes of that slot's
  // keys to its replicas. Redis 7.0 does not: its replicas keep the keys as orphans until a full resync.
  bool propagates_lost_slot_deletes() const;
};

// One field of an INFO reply ("master_repl_offset" -> "12345"); empty when the reply has no such line.
std::string_view info_field(std::string_view info, std::string_view name);
// The same field as an integer; -1 when it is missing or not a number.
std::int64_t info_integer(std::string_view info, std::string_view name);

// Parses the text of INFO (or INFO server). Valkey reports redis_version:7.2.4 for compatibility, so
// server_name and valkey_version are read first. False (and `error`) when no version is found.
bool parse_server_info(std::string_view info, ServerInfo& out, std::string& error);

// Whether values read from `source`'s snapshots can be restored into `target` with RESTORE. False (and a
// message naming both servers and what to do) when the target would refuse the payloads: a newer RDB version
// than its own, or Redis 7.4+ payloads into Valkey, whose type codes from 22 on mean other things.
bool payloads_compatible(const ServerInfo& source, const ServerInfo& target, std::string& why);

}  // namespace slotshift
