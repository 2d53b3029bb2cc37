// Valkey 9's own slot migration (CLUSTER MIGRATESLOTS), driven one batch at a time: the source forks a
// snapshot of only the moving slots, sends it and then its live writes to the target as commands, pauses its
// writes for the handoff, and the target takes the slots with a new config epoch. The source then deletes the
// moved keys in one go: that delete is the stall its clients see, so batches are sized by key count.
//
// The server runs a job per MIGRATESLOTS, one at a time per source, and lists it (with the earlier ones) in
// CLUSTER GETSLOTMIGRATIONS; CLUSTER CANCELSLOTMIGRATIONS stops them (no argument on 9.1.2). A target with
// any slot in manual IMPORTING refuses the command ("Slots are being manually imported"), so the two
// mechanisms never mix.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "common/resp.h"
#include "common/server_info.h"

namespace slotshift {

class NodeClient;

struct SlotMigrationJob {
  std::string name;
  std::string operation;    // EXPORT (on the source) or IMPORT (on the target)
  std::string slot_ranges;  // "0-99 200-299"
  std::string
      state;  // connecting, ..., snapshotting, replicating, failover-paused, failover-granted, success
  std::string message;  // why it failed, when it did

  bool succeeded() const { return state == "success"; }
  bool failed() const;  // failed or cancelled
  bool finished() const { return succeeded() || failed(); }
  // The handoff has begun: the source's writes are paused, or the target owns the slots already.
  bool handing_off() const;
};

// The jobs of a CLUSTER GETSLOTMIGRATIONS reply (RESP2 flat arrays or RESP3 maps).
std::vector<SlotMigrationJob> parse_slot_migrations(const resp::Value& reply);

// Whether the server has CLUSTER MIGRATESLOTS: Valkey 9.0 and later.
bool has_native_migration(const ServerInfo& info);

// One job on one source, started and followed over that source's control connection.
class NativeMigration {
 public:
  explicit NativeMigration(NodeClient& source) : source_(source) {}

  // CLUSTER MIGRATESLOTS SLOTSRANGE a b [a b ...] NODE target_id. False (error()) if the server refuses it.
  bool start(const std::vector<std::pair<int, int>>& ranges, const std::string& target_id);
  // The job's current state; nullopt (error()) when the source does not answer or no longer lists it.
  std::optional<SlotMigrationJob> poll();
  // CLUSTER CANCELSLOTMIGRATIONS on the source (every migration it runs).
  bool cancel();

  const std::string& error() const { return error_; }

 private:
  NodeClient& source_;
  std::vector<std::string> before_;  // names of the jobs listed before ours started
  std::string name_;
  std::string ranges_text_;
  std::string error_;
};

}  // namespace slotshift
