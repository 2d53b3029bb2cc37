#include "orchestrator/journal.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string_view>

#include "common/topology.h"

namespace slotshift {
namespace {

std::vector<Slot> slots_of(const nlohmann::json& j, const char* field) {
  if (!j.contains(field) || !j[field].is_string()) return {};
  std::string error;
  auto parsed = parse_slot_list(j[field].get<std::string>(), error);
  return parsed ? *parsed : std::vector<Slot>{};
}

std::string text(const nlohmann::json& j, const char* field) {
  return j.contains(field) && j[field].is_string() ? j[field].get<std::string>() : std::string();
}

}  // namespace

namespace {

// In the order of MoveStep.
constexpr const char* kStepNames[] = {
    "plan",
    "importing",
    "copy",
    "copied",
    "fence",
    "refuse-writes",
    "claim",
    "claim-failed",
    "claim-settled",
    "claim-unknown",
    "claimed",
    "source-not-learnt",
    "target-failed-over",
    "rolled-back",
    "replicas-cleaned",
    "done",
    "migration-log",
    "migrate",
    "migrate-cancelled",
    "migrate-failed",
    "migrated",
    "abort-started",
    "resume-started",
    "aborted",
};

}  // namespace

static_assert(std::size(kStepNames) == static_cast<std::size_t>(MoveStep::kAborted) + 1,
              "a name for every MoveStep, in its order");

const char* step_name(MoveStep step) {
  return kStepNames[static_cast<std::size_t>(step)];
}

std::optional<MoveStep> parse_step(std::string_view name) {
  for (std::size_t i = 0; i < std::size(kStepNames); ++i)
    if (name == kStepNames[i]) return static_cast<MoveStep>(i);
  return std::nullopt;
}

std::optional<JournalState> read_journal(const std::string& path, std::string& error) {
  std::ifstream in(path);
  if (!in) {
    error = "cannot read the journal " + path;
    return std::nullopt;
  }
  std::optional<JournalState> state;
  std::size_t torn = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_string()) {
      ++torn;  // only the last line can be torn by a crash; the reader says how many it skipped
      continue;
    }
    if (j.value("version", 0) > kJournalVersion) {
      error = path + " was written by a newer slotshift (journal version " +
              std::to_string(j.value("version", 0)) + "); use that one";
      return std::nullopt;
    }
    const std::string name = j["step"].get<std::string>();
    const auto step = parse_step(name);
    if (!step) {
      error =
          path + ": a record of step \"" + name + "\" that no slotshift writes; is this a move's journal?";
      return std::nullopt;
    }
    if (*step == MoveStep::kPlan) {
      // A file can hold several moves (resume appends the rest of a move as a new one): the last plan wins.
      state = JournalState{};
      state->move_id = text(j, "move");
      state->target_id = text(j, "target");
      state->target_address = text(j, "target_address");
      state->proxy_owner = text(j, "proxy_owner");
      if (const auto engine = text(j, "engine"); !engine.empty()) state->engine = engine;
      if (j.contains("proxies") && j["proxies"].is_array())
        for (const auto& p : j["proxies"])
          if (p.is_string()) state->proxies.push_back(p.get<std::string>());
      if (j.contains("sources") && j["sources"].is_array())
        for (const auto& s : j["sources"])
          state->sources.push_back({text(s, "id"), text(s, "address"), slots_of(s, "slots")});
      continue;
    }
    if (!state || text(j, "move") != state->move_id) continue;
    state->last_step = name;
    // Journals of versions that did not record the engine in the plan: their native moves' own records say
    // it.
    if (*step == MoveStep::kMigrate || *step == MoveStep::kMigrationLog) state->engine = "native";
    if (*step == MoveStep::kClaimed) {
      for (const Slot s : slots_of(j, "slots"))
        state->claimed.insert(s);
    } else if (*step == MoveStep::kClaimSettled) {
      for (const Slot s : slots_of(j, "target_owns"))
        state->claimed.insert(s);
    } else if (*step == MoveStep::kRefuseWrites && j.contains("restore") && j["restore"].is_array() &&
               j["restore"].size() == 6) {
      // ["CONFIG", "SET", "min-replicas-to-write", V, "min-replicas-max-lag", L]; the first record per source
      // holds the values from before the move (later ones repeat them).
      state->restore_min_replicas.try_emplace(text(j, "source"), j["restore"][3].get<std::string>(),
                                              j["restore"][5].get<std::string>());
    } else if (*step == MoveStep::kMigrationLog && j.contains("restore") && j["restore"].is_string()) {
      // The first record per node holds the value from before the move.
      state->restore_migration_log.try_emplace(text(j, "node"), j["restore"].get<std::string>());
    } else if (*step == MoveStep::kTargetFailedOver) {
      state->target_id = text(j, "to");
      state->target_address = text(j, "to_address");
    } else if (*step == MoveStep::kMigrated) {
      for (const Slot s : slots_of(j, "slots"))
        state->claimed.insert(s);
    } else if (*step == MoveStep::kDone) {
      state->finished = true;
    } else if (*step == MoveStep::kAborted) {
      // An abort that could not undo everything says so, and is to be run again.
      state->finished = j.value("complete", true);
    }
  }
  if (!state) {
    error = path + " holds no move (no plan record)";
    return std::nullopt;
  }
  state->torn_lines = torn;
  return state;
}

std::string journal_dir() {
  if (const char* d = std::getenv("SLOTSHIFT_STATE_DIR"); d && *d) return d;
  if (::geteuid() == 0) return "/var/lib/slotshift";
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/tmp") + "/.local/state/slotshift";
}

std::vector<std::string> all_journals(std::string& error) {
  namespace fs = std::filesystem;
  const std::string dir = journal_dir();
  std::error_code ec;
  // Each file's time read once: a sort that asks the file system in every comparison costs a stat per
  // comparison, thousands of them in a directory of a few hundred journals.
  std::vector<std::pair<fs::file_time_type, std::string>> journals;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::error_code time_ec;
    if (e.is_regular_file() && e.path().extension() == ".journal")
      journals.emplace_back(e.last_write_time(time_ec), e.path().string());
  }
  if (ec) {
    error = "no journal in " + dir + " (" + ec.message() + ")";
    return {};
  }
  std::sort(journals.begin(), journals.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> out;
  for (auto& [time, path] : journals)
    out.push_back(std::move(path));
  return out;
}

bool ends_its_own_move(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  // The whole file, as bytes: what is costly in read_journal() is parsing every record and its slot lists,
  // not reading a few kilobytes.
  const std::string whole((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Exactly one plan: a second is a resume's, written as a move of its own, and a record of the first move
  // after it (a move that stalled past its lease, woken after a resume took its journal over) must not end
  // the file's last move here: read_journal() decides such a file. A string value cannot hold these bytes
  // (its quotes are escaped), and a plan written any other way than slotshift writes it makes the count 0.
  constexpr std::string_view kPlan = R"("step":"plan")";
  const auto first_plan = whole.find(kPlan);
  if (first_plan == std::string::npos || whole.find(kPlan, first_plan + 1) != std::string::npos) return false;
  const std::string stem = std::filesystem::path(path).stem().string();
  // The plan is the move the file is named after (a --journal FILE may be named otherwise).
  const auto plan_start = whole.rfind('\n', first_plan);
  const auto plan_from = plan_start == std::string::npos ? 0 : plan_start + 1;
  const auto plan = nlohmann::json::parse(
      std::string_view(whole).substr(plan_from, whole.find('\n', first_plan) - plan_from), nullptr, false);
  if (plan.is_discarded() || !plan.is_object() || text(plan, "move") != stem) return false;
  std::string_view rest = whole;
  while (!rest.empty() && (rest.back() == '\n' || rest.back() == '\r' || rest.back() == ' '))
    rest.remove_suffix(1);
  const auto newline = rest.rfind('\n');
  const auto j =
      nlohmann::json::parse(rest.substr(newline == std::string_view::npos ? 0 : newline + 1), nullptr, false);
  if (j.is_discarded() || !j.is_object() || text(j, "move") != stem) return false;
  const std::string step = text(j, "step");
  if (step == step_name(MoveStep::kDone)) return true;
  if (step != step_name(MoveStep::kAborted)) return false;
  const auto complete = j.find("complete");
  return complete == j.end() || (complete->is_boolean() && complete->get<bool>());
}

std::vector<std::string> unfinished_journals(std::string& error) {
  std::vector<std::string> out;
  for (auto& path : all_journals(error)) {
    // Most journals of a state directory are of moves that ended: their plan and last record say so, and
    // parsing those alone keeps this scan (at the start of every move and check) from growing with every
    // move ever run here (541 journals: 20 ms, against 190 ms parsing each whole).
    if (ends_its_own_move(path)) continue;
    std::string why;
    const auto state = read_journal(path, why);
    if (state && !state->finished) out.push_back(std::move(path));
  }
  return out;
}

std::string latest_unfinished_journal(std::string& error) {
  auto all = unfinished_journals(error);
  if (!error.empty()) {
    error += "; name one with --journal";
    return "";
  }
  if (all.empty()) {
    error = "no unfinished move in " + journal_dir() + "; name a journal with --journal";
    return "";
  }
  return all.front();
}

}  // namespace slotshift
