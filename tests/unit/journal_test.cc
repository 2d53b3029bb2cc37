// The journal reader: a move rebuilt from its records, as abort and resume see it after a crash.
#include "orchestrator/journal.h"

#include <doctest/doctest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

using namespace slotshift;

namespace {

// A journal file with these lines, removed at the end of the test.
struct JournalFile {
  std::string path;
  explicit JournalFile(const std::string& text) {
    char name[] = "/tmp/slotshift-journal-test-XXXXXX";
    const int fd = ::mkstemp(name);
    REQUIRE(fd >= 0);
    ::close(fd);
    path = name;
    std::ofstream(path) << text;
  }
  ~JournalFile() { ::unlink(path.c_str()); }
};

const std::string kPlan =
    R"({"step":"plan","version":1,"move":"move-1-100","target":"tttt","target_address":"127.0.0.1:7001",)"
    R"("proxies":["127.0.0.1:9180"],"proxy_owner":"slotshift-move-1-100","sources":[{"id":"ssss",)"
    R"("address":"127.0.0.1:7000","slots":"0-9 20"}],"time_ms":1})"
    "\n";

}  // namespace

TEST_CASE("a killed move: its plan, what it claimed, and what it raised") {
  JournalFile f(
      kPlan +
      R"({"step":"importing","version":1,"move":"move-1-100","time_ms":2})"
      "\n"
      R"({"step":"refuse-writes","version":1,"move":"move-1-100","source":"ssss",)"
      R"("restore":["CONFIG","SET","min-replicas-to-write","0","min-replicas-max-lag","10"],"time_ms":3})"
      "\n"
      R"({"step":"claimed","version":1,"move":"move-1-100","slots":"0-4","time_ms":4})"
      "\n"
      R"({"step":"claim-settled","version":1,"move":"move-1-100","slots":"5-9",)"
      R"("target_owns":"5 7","source_keeps":"6 8-9","time_ms":5})"
      "\n"
      R"({"step":"fen)");  // torn by the crash
  std::string error;
  const auto s = read_journal(f.path, error);
  REQUIRE_MESSAGE(s, error);
  CHECK(s->move_id == "move-1-100");
  CHECK(s->target_id == "tttt");
  CHECK(s->target_address == "127.0.0.1:7001");
  REQUIRE(s->sources.size() == 1);
  CHECK(s->sources[0].address == "127.0.0.1:7000");
  CHECK(s->sources[0].slots.size() == 11);
  CHECK(s->proxies == std::vector<std::string>{"127.0.0.1:9180"});
  CHECK(s->proxy_owner == "slotshift-move-1-100");
  CHECK(s->claimed == std::set<Slot>{0, 1, 2, 3, 4, 5, 7});
  REQUIRE(s->restore_min_replicas.count("ssss"));
  CHECK(s->restore_min_replicas.at("ssss") == std::pair<std::string, std::string>{"0", "10"});
  CHECK(s->last_step == "claim-settled");
  CHECK_FALSE(s->finished);
  CHECK(s->torn_lines == 1);
}

TEST_CASE("a resumed move: the last plan of the file is the move; its end finishes it") {
  JournalFile f(kPlan +
                R"({"step":"claimed","version":1,"move":"move-1-100","slots":"0-4","time_ms":4})"
                "\n"
                R"({"step":"aborted","version":1,"move":"move-1-100","time_ms":5})"
                "\n"
                R"({"step":"plan","version":1,"move":"move-2-200","target":"tttt","sources":[{"id":"ssss",)"
                R"("address":"127.0.0.1:7000","slots":"5-9 20"}],"time_ms":6})"
                "\n");
  std::string error;
  auto s = read_journal(f.path, error);
  REQUIRE(s);
  CHECK(s->move_id == "move-2-200");
  CHECK(s->claimed.empty());
  CHECK_FALSE(s->finished);
  std::ofstream(f.path, std::ios::app) << R"({"step":"done","version":1,"move":"move-2-200","time_ms":7})"
                                       << "\n";
  s = read_journal(f.path, error);
  REQUIRE(s);
  CHECK(s->finished);
}

TEST_CASE("what the reader refuses") {
  std::string error;
  CHECK_FALSE(read_journal("/nonexistent/slotshift.journal", error));
  CHECK(error.find("cannot read the journal") != std::string::npos);
  JournalFile empty("\n");
  CHECK_FALSE(read_journal(empty.path, error));
  CHECK(error.find("holds no move") != std::string::npos);
  JournalFile newer(R"({"step":"plan","version":2,"move":"m","time_ms":1})"
                    "\n");
  CHECK_FALSE(read_journal(newer.path, error));
  CHECK(error.find("newer slotshift") != std::string::npos);
}

TEST_CASE("a record of a step no slotshift writes is refused, not skipped") {
  std::string error;
  JournalFile foreign(kPlan + R"({"step":"teleported","version":1,"move":"move-1-100","time_ms":2})"
                              "\n");
  CHECK_FALSE(read_journal(foreign.path, error));
  CHECK(error.find("\"teleported\"") != std::string::npos);
}

TEST_CASE("every step's name reads back as that step") {
  for (int i = 0; i <= static_cast<int>(MoveStep::kAborted); ++i) {
    const auto step = static_cast<MoveStep>(i);
    const auto back = parse_step(step_name(step));
    REQUIRE(back);
    CHECK(*back == step);
  }
  CHECK(std::string(step_name(MoveStep::kRefuseWrites)) == "refuse-writes");
  CHECK_FALSE(parse_step("fenced"));
}

TEST_CASE("an abort that could not undo everything leaves the move unfinished; native moves say so") {
  std::string error;
  JournalFile f(
      kPlan +
      R"({"step":"migrate","version":1,"move":"move-1-100","source":"ssss","slots":"0-9","time_ms":2})"
      "\n"
      R"({"step":"migrated","version":1,"move":"move-1-100","slots":"0-9","time_ms":3})"
      "\n"
      R"({"step":"aborted","version":1,"move":"move-1-100","complete":false,"time_ms":4})"
      "\n");
  auto state = read_journal(f.path, error);
  REQUIRE(state);
  CHECK_FALSE(state->finished);
  CHECK(state->engine == "native");  // from its records: this plan did not name the engine
  CHECK(state->claimed.size() == 10);
  JournalFile done(kPlan + R"({"step":"aborted","version":1,"move":"move-1-100","complete":true,"time_ms":4})"
                           "\n");
  state = read_journal(done.path, error);
  REQUIRE(state);
  CHECK(state->finished);
  CHECK(state->engine == "replica");
}

TEST_CASE("a scan of the state directory parses a finished move's last record alone, and finds the others") {
  char dir_name[] = "/tmp/slotshift-state-test-XXXXXX";
  REQUIRE(::mkdtemp(dir_name) != nullptr);
  const std::string dir = dir_name;
  const char* before = std::getenv("SLOTSHIFT_STATE_DIR");
  const std::string kept = before ? before : "";
  ::setenv("SLOTSHIFT_STATE_DIR", dir.c_str(), 1);
  auto plan = [](const std::string& move) {
    return R"({"step":"plan","version":1,"move":")" + move +
           R"(","target":"tttt","sources":[{"id":"ssss","address":"127.0.0.1:7000","slots":"0-9"}],"time_ms":1})"
           "\n";
  };
  auto record = [](const std::string& move, const std::string& step, const std::string& more = "") {
    return R"({"step":")" + step + R"(","version":1,"move":")" + move + "\"" + more +
           R"(,"time_ms":2})"
           "\n";
  };
  const std::map<std::string, std::string> files = {
      {"move-1-100", plan("move-1-100") + record("move-1-100", "claimed", R"(,"slots":"0-9")") +
                         record("move-1-100", "done")},
      {"move-2-200", plan("move-2-200") + record("move-2-200", "claimed", R"(,"slots":"0-4")")},
      {"move-3-300", plan("move-3-300") + record("move-3-300", "aborted", R"(,"complete":false)")},
      // Resumed as a move of its own: the file's name is not the last move's, so the whole file decides.
      {"move-4-400", plan("move-4-400") + record("move-4-400", "aborted") + plan("move-5-500") +
                         record("move-5-500", "done")},
      {"move-6-600", plan("move-6-600") + record("move-6-600", "done") + R"({"step":"fen)"},
      {"move-7-700", plan("move-7-700") + record("move-7-700", "aborted")},
      // A move that stalled past its lease while a resume took its journal over, woken to write its own
      // end after the resumed move's plan; the resumed move was then killed: it is the file's move,
      // unfinished.
      {"move-8-800", plan("move-8-800") + record("move-8-800", "resume-started") +
                         record("move-8-800", "aborted") + plan("move-9-900") +
                         record("move-9-900", "importing") + record("move-8-800", "done")},
      // Named after one move, planned as another (a --journal FILE named by hand).
      {"move-10-1000", plan("move-11-1100") + record("move-10-1000", "done")},
  };
  for (const auto& [name, text] : files)
    std::ofstream(dir + "/" + name + ".journal") << text;

  CHECK(ends_its_own_move(dir + "/move-1-100.journal"));
  CHECK(ends_its_own_move(dir + "/move-7-700.journal"));
  for (const char* name :
       {"move-2-200", "move-3-300", "move-4-400", "move-6-600", "move-8-800", "move-10-1000"})
    CHECK_FALSE(ends_its_own_move(dir + "/" + name + ".journal"));

  std::string error;
  auto unfinished = unfinished_journals(error);
  CHECK(error.empty());
  std::sort(unfinished.begin(), unfinished.end());
  CHECK(unfinished == std::vector<std::string>{dir + "/move-10-1000.journal", dir + "/move-2-200.journal",
                                               dir + "/move-3-300.journal", dir + "/move-8-800.journal"});

  for (const auto& [name, text] : files)
    ::unlink((dir + "/" + name + ".journal").c_str());
  ::rmdir(dir.c_str());
  if (before)
    ::setenv("SLOTSHIFT_STATE_DIR", kept.c_str(), 1);
  else
    ::unsetenv("SLOTSHIFT_STATE_DIR");
}
