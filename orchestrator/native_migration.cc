#include "orchestrator/native_migration.h"

#include <algorithm>

#include "orchestrator/node_client.h"

namespace slotshift {

bool SlotMigrationJob::failed() const {
  // "failover-paused" and "failover-granted" are steps of a job that goes well.
  return (state.starts_with("fail") && !state.starts_with("failover")) || state.starts_with("cancel");
}

bool SlotMigrationJob::handing_off() const {
  return state.starts_with("failover") || succeeded();
}

std::vector<SlotMigrationJob> parse_slot_migrations(const resp::Value& reply) {
  std::vector<SlotMigrationJob> jobs;
  for (const auto& entry : reply.elements) {
    if (!entry.is_aggregate()) continue;
    auto field = [&](std::string_view key) {
      const resp::Value* v = entry.find(key);
      if (!v) return std::string();
      return v->type == resp::Type::kInteger ? std::to_string(v->integer) : v->str;
    };
    SlotMigrationJob job{field("name"), field("operation"), field("slot_ranges"), field("state"),
                         field("message")};
    if (!job.name.empty()) jobs.push_back(std::move(job));
  }
  return jobs;
}

bool has_native_migration(const ServerInfo& info) {
  return info.flavor == ServerInfo::Flavor::kValkey && info.major >= 9;
}

bool NativeMigration::start(const std::vector<std::pair<int, int>>& ranges, const std::string& target_id) {
  // The jobs listed so far (earlier moves keep theirs for a while): ours is the one that is new.
  before_.clear();
  auto listed = source_.command({"CLUSTER", "GETSLOTMIGRATIONS"});
  if (!listed || listed->is_error()) {
    error_ = "CLUSTER GETSLOTMIGRATIONS: " + (listed ? listed->str : source_.error());
    return false;
  }
  for (const auto& job : parse_slot_migrations(*listed))
    before_.push_back(job.name);
  std::vector<std::string> command = {"CLUSTER", "MIGRATESLOTS", "SLOTSRANGE"};
  ranges_text_.clear();
  for (const auto& [a, b] : ranges) {
    command.push_back(std::to_string(a));
    command.push_back(std::to_string(b));
    ranges_text_ += (ranges_text_.empty() ? "" : " ") + std::to_string(a) + "-" + std::to_string(b);
  }
  command.push_back("NODE");
  command.push_back(target_id);
  auto r = source_.command(command);
  if (!r || r->is_error()) {
    error_ = "CLUSTER MIGRATESLOTS: " + (r ? r->str : source_.error());
    return false;
  }
  name_.clear();
  return true;
}

std::optional<SlotMigrationJob> NativeMigration::poll() {
  auto listed = source_.command({"CLUSTER", "GETSLOTMIGRATIONS"});
  if (!listed || listed->is_error()) {
    error_ = "CLUSTER GETSLOTMIGRATIONS: " + (listed ? listed->str : source_.error());
    return std::nullopt;
  }
  for (auto& job : parse_slot_migrations(*listed)) {
    const bool ours = name_.empty() ? job.operation == "EXPORT" &&
                                          std::find(before_.begin(), before_.end(), job.name) == before_.end()
                                    : job.name == name_;
    if (!ours) continue;
    name_ = job.name;
    return std::move(job);
  }
  error_ = "the source no longer lists the migration of " + ranges_text_;
  return std::nullopt;
}

bool NativeMigration::cancel() {
  // Valkey 9.1.2 takes no argument (its HELP says ALL, which it refuses as a wrong number of arguments);
  // a server that wants ALL is asked again with it. Nothing running is as good as cancelled.
  auto r = source_.command({"CLUSTER", "CANCELSLOTMIGRATIONS"});
  if (r && r->is_error() && r->str.find("wrong number of arguments") != std::string::npos)
    r = source_.command({"CLUSTER", "CANCELSLOTMIGRATIONS", "ALL"});
  if (r && r->is_error() && r->str.find("No migrations ongoing") != std::string::npos) return true;
  if (!r || r->is_error()) {
    error_ = "CLUSTER CANCELSLOTMIGRATIONS: " + (r ? r->str : source_.error());
    return false;
  }
  return true;
}

}  // namespace slotshift
