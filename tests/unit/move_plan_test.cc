// The move's plan and refusals (orchestrator/move_plan.h), on clusters written as their nodes' own CLUSTER
// NODES replies.
#include "orchestrator/move_plan.h"

#include "orchestrator/finding_guide.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using namespace slotshift;

namespace {

const std::string kA(40, 'a'), kB(40, 'b'), kC(40, 'c'), kA2 = std::string(39, 'a') + "2";

struct Line {
  std::string id;
  int port;
  std::string role;    // "master" or "slave"
  std::string master;  // "-" for masters
  int epoch;
  std::string slots;      // "0-5460", or "" for none
  std::string open = "";  // "[100-<-cccc...]", as the owner of the open slot prints it
};

// A 3-master cluster with one replica: A 0-5460, B 5461-10922, C 10923-16383, A2 replicates A.
std::vector<Line> cluster() {
  return {{kA, 7000, "master", "-", 1, "0-5460"},
          {kB, 7001, "master", "-", 2, "5461-10922"},
          {kC, 7002, "master", "-", 3, "10923-16383"},
          {kA2, 7003, "slave", kA, 1, ""}};
}

// Every node's own view, and their merge: what survey_cluster() returns for a cluster that answers.
ClusterSurvey survey_of(const std::vector<Line>& lines) {
  ClusterSurvey survey;
  for (const auto& me : lines) {
    std::string text;
    for (const auto& l : lines) {
      text += l.id + " 127.0.0.1:" + std::to_string(l.port) + "@" + std::to_string(l.port + 10000) + " " +
              (l.id == me.id ? "myself," : "") + l.role + " " + l.master + " 0 0 " + std::to_string(l.epoch) +
              " connected" + (l.slots.empty() ? "" : " " + l.slots) +
              (l.id == me.id && !l.open.empty() ? " " + l.open : "") + "\n";
    }
    auto parsed = parse_cluster_nodes(text);
    REQUIRE_MESSAGE(parsed.ok(), parsed.error);
    survey.views.push_back(parsed.topology);
    merge(survey.merged, parsed.topology);
  }
  return survey;
}

std::vector<Slot> range(Slot a, Slot b) {
  std::vector<Slot> out;
  for (Slot s = a; s <= b; ++s)
    out.push_back(s);
  return out;
}

}  // namespace

TEST_CASE("options that do not go together are refused as usage errors") {
  MoveOptions o;
  CHECK_FALSE(refuse_options(o, false));
  o.fence = "proxy";
  const auto no_proxies = refuse_options(o, false);
  REQUIRE(no_proxies);
  CHECK(no_proxies->starts_with("--fence proxy"));
  CHECK_FALSE(refuse_options(o, true));
  o.engine = "native";
  const auto native = refuse_options(o, true);
  REQUIRE(native);
  CHECK(native->starts_with("--engine native"));
}

TEST_CASE("slots are grouped by the master that owns them; those already on the target are skipped") {
  auto slots = range(5450, 5470);  // A's last 11 and B's first 10
  const auto more = range(16000, 16002);
  slots.insert(slots.end(), more.begin(), more.end());
  const auto plan = plan_slots(survey_of(cluster()), slots, "127.0.0.1:7001");
  REQUIRE_MESSAGE(plan.refusal.empty(), plan.refusal);
  CHECK(plan.target.id == kB);
  REQUIRE(plan.sources.size() == 2);
  CHECK(plan.sources[0].node.id == kA);
  CHECK(plan.sources[0].slots == range(5450, 5460));
  CHECK(plan.sources[1].node.id == kC);
  CHECK(plan.sources[1].slots == range(16000, 16002));
  CHECK(plan.skipped == range(5461, 5470));
  CHECK(plan.warnings.empty());
}

TEST_CASE("--to names a master by address, id or unique id prefix of at least 4 characters") {
  const auto survey = survey_of(cluster());
  CHECK(plan_slots(survey, {0}, kC).target.id == kC);
  CHECK(plan_slots(survey, {0}, "cccc").target.id == kC);
  CHECK(plan_slots(survey, {0}, "ccc").refusal == "--to ccc is not a node of this cluster");
  CHECK(plan_slots(survey, {0}, "127.0.0.1:7009").refusal ==
        "--to 127.0.0.1:7009 is not a node of this cluster");
  // kA and kA2 share 39 characters.
  CHECK(plan_slots(survey, {0}, "aaaa").refusal == "--to aaaa names more than one node");
  const auto replica = plan_slots(survey, {0}, "127.0.0.1:7003");
  CHECK(replica.refusal == "--to 127.0.0.1:7003 is a replica (of aaaaaaaa); slots can only move to a master");
  CHECK(replica.refusal.starts_with("--"));  // a usage error
}

TEST_CASE("a cluster that is not clean is refused before anything is touched") {
  SUBCASE("an open slot") {
    auto lines = cluster();
    lines[1].open = "[100-<-" + kA + "]";
    const auto plan = plan_slots(survey_of(lines), {0}, "127.0.0.1:7002");
    CHECK(plan.refusal.starts_with("the cluster is not clean (slot-importing: "));
    CHECK(plan.refusal.ends_with("; run slotshift check, fix it, then move"));
  }
  SUBCASE("two masters with one config epoch") {
    auto lines = cluster();
    lines[2].epoch = 2;
    CHECK(plan_slots(survey_of(lines), {0}, "127.0.0.1:7002")
              .refusal.starts_with("the cluster is not clean (epoch-collision: "));
  }
  SUBCASE("nodes that disagree on an owner") {
    auto survey = survey_of(cluster());
    auto other = parse_cluster_nodes(kA + " 127.0.0.1:7000@17000 master - 0 0 1 connected 0-5400\n" + kB +
                                     " 127.0.0.1:7001@17001 master - 0 0 2 connected 5401-10922\n" + kC +
                                     " 127.0.0.1:7002@17002 myself,master - 0 0 3 connected 10923-16383\n" +
                                     kA2 + " 127.0.0.1:7003@17003 slave " + kA + " 0 0 1 connected\n");
    REQUIRE(other.ok());
    survey.views[2] = other.topology;
    CHECK(plan_slots(survey, {0}, "127.0.0.1:7002")
              .refusal.starts_with("the cluster is not clean (owner-disagreement: "));
  }
  SUBCASE("a node that does not answer, or is still loading") {
    auto survey = survey_of(cluster());
    survey.unreachable.push_back("127.0.0.1:7003: Connection refused");
    CHECK(plan_slots(survey, {0}, "127.0.0.1:7002").refusal ==
          "every node must answer before slots move; unreachable: 127.0.0.1:7003: Connection refused");
    survey.unreachable.clear();
    survey.loading.push_back("127.0.0.1:7003 is still loading its dataset (LOADING) after 2000 ms");
    CHECK(plan_slots(survey, {0}, "127.0.0.1:7002").refusal.ends_with("(--timeout-ms waits longer)"));
  }
  SUBCASE("the seed cannot be read") {
    ClusterSurvey survey;
    survey.error = "127.0.0.1:7000: Connection refused";
    CHECK(plan_slots(survey, {0}, "127.0.0.1:7002").refusal == "127.0.0.1:7000: Connection refused");
  }
}

TEST_CASE("slots without an owner are refused") {
  auto lines = cluster();
  lines[0].slots = "1-5460";
  const auto plan = plan_slots(survey_of(lines), {0, 1}, "127.0.0.1:7002");
  CHECK(plan.refusal.starts_with("the cluster is not clean (slots-uncovered: "));
}

TEST_CASE("slots may move to a master without slots whose replicas protect nothing yet") {
  // C owns nothing and A2 replicates it: check reports it, and moving slots to C is how it is cured.
  auto lines = cluster();
  lines[1].slots = "5461-16383";
  lines[2].slots = "";
  lines[3].master = kC;
  lines[3].epoch = 3;
  const auto survey = survey_of(lines);
  const auto findings = check(survey.merged);
  REQUIRE(findings.size() == 1);
  CHECK(findings[0].kind == FindingKind::kReplicasOfEmptyMaster);
  const auto plan = plan_slots(survey, range(0, 99), "127.0.0.1:7002");
  CHECK_MESSAGE(plan.refusal.empty(), plan.refusal);
  REQUIRE(plan.warnings.size() == 1);
  CHECK(plan.warnings[0] == findings[0].message);
}

TEST_CASE("every finding has a name and says what it means, what clients see and what fix does") {
  for (int k = 0; k <= static_cast<int>(FindingKind::kMoveUnfinished); ++k) {
    const auto kind = static_cast<FindingKind>(k);
    CAPTURE(k);
    CHECK(finding_kind_name(kind) != "unknown");
    const auto& g = guide(kind);
    CHECK(g.meaning != "unknown");
    CHECK(!g.clients_see.empty());
    CHECK(!g.fix.empty());
  }
}
