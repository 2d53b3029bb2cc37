// The ROUTE check's verdict (proxy/route_check.h) from a node's own word, CLUSTER MYID and CLUSTER SLOTS, as
// the node's replies' bytes: which routes are taken, which refused and with what a caller is told. The
// replies are written here as a node writes them; nothing here opens a socket.
#include "proxy/route_check.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "common/resp.h"

using namespace slotshift;
using namespace slotshift::proxy;

namespace {

const std::string kA(40, 'a'), kB(40, 'b'), kC(40, 'c'), kR(40, 'd'), kNew(40, 'e');

// The proxy's last topology: three masters and a replica of the first.
TopologySnapshot known() {
  const std::string text = kA + " 127.0.0.1:7000@17000 master - 0 0 1 connected 0-5460\n" + kB +
                           " 127.0.0.1:7001@17001 myself,master - 0 0 2 connected 5461-10922\n" + kC +
                           " 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383\n" + kR +
                           " 127.0.0.1:7003@17003 slave " + kA + " 0 0 1 connected\n";
  TopologyResult parsed = parse_cluster_nodes(text);
  REQUIRE_MESSAGE(parsed.ok(), parsed.error);
  return make_snapshot(std::move(parsed.topology));
}

struct Range {
  int first, last;
  std::string master;
  int master_port;
  std::vector<std::pair<std::string, int>> replicas;
};

// CLUSTER MYID then CLUSTER SLOTS, the bytes of both replies.
std::string own_word(const std::string& id, const std::vector<Range>& ranges) {
  std::string out;
  resp::append_bulk(out, id);
  resp::append_array_header(out, ranges.size());
  const auto node = [&out](const std::string& node_id, int port) {
    resp::append_array_header(out, 4);
    resp::append_bulk(out, "127.0.0.1");
    resp::append_integer(out, port);
    resp::append_bulk(out, node_id);
    resp::append_array_header(out, 0);  // networking metadata, as 7.0 and later send it
  };
  for (const Range& r : ranges) {
    resp::append_array_header(out, 3 + r.replicas.size());
    resp::append_integer(out, r.first);
    resp::append_integer(out, r.last);
    node(r.master, r.master_port);
    for (const auto& [replica, port] : r.replicas)
      node(replica, port);
  }
  return out;
}

SlotSet slots(const std::string& text) {
  std::string error;
  const auto parsed = SlotSet::parse(text, error);
  REQUIRE_MESSAGE(parsed, error);
  return *parsed;
}

// After a claim of 0-100 by B: B's own slot table.
const std::vector<Range> kAfterClaim = {{0, 100, kB, 7001, {}},
                                        {101, 5460, kA, 7000, {{kR, 7003}}},
                                        {5461, 10922, kB, 7001, {}},
                                        {10923, 16383, kC, 7002, {}}};

RouteVerdict verdict(const std::string& route, int port, const std::optional<std::string>& reply,
                     const std::string& why = "") {
  const auto v = verdict_from_own_reply(slots(route), HostPort{"127.0.0.1", port}, known(), reply, why);
  REQUIRE(v.has_value());
  return *v;
}

}  // namespace

TEST_CASE("a node that owns every slot of the route by its own word is routed to") {
  const auto v = verdict("0-100,6000", 7001, own_word(kB, kAfterClaim));
  CHECK(v.ok());
  CHECK(v.error.empty());
}

TEST_CASE("slots the node does not own refuse the whole route, and are named") {
  const auto v = verdict("0-101", 7001, own_word(kB, kAfterClaim));
  CHECK(v.status == 409);
  CHECK(v.not_owned == slots("101"));
  CHECK(v.error == "127.0.0.1:7001 does not own slot(s) 101 (by its own CLUSTER SLOTS)");
}

TEST_CASE("a replica owns nothing, and the refusal says what it is") {
  const auto v = verdict("200", 7003, own_word(kR, kAfterClaim));
  CHECK(v.status == 409);
  CHECK(v.error == "127.0.0.1:7003 does not own slot(s) 200 (it is a replica)");
}

TEST_CASE("another node's slots in the answer are not the answering node's") {
  // C answers, and its table gives 0-100 to B: C does not own them.
  const auto v = verdict("0-100", 7002, own_word(kC, kAfterClaim));
  CHECK(v.status == 409);
  CHECK(v.not_owned == slots("0-100"));
}

TEST_CASE("a node the proxy's topology does not list at that address needs other nodes asked") {
  // An id the topology does not know, and a known id at another address.
  CHECK_FALSE(verdict_from_own_reply(slots("0"), HostPort{"127.0.0.1", 7001}, known(),
                                     own_word(kNew, {{0, 16383, kNew, 7001, {}}}), "")
                  .has_value());
  CHECK_FALSE(
      verdict_from_own_reply(slots("0"), HostPort{"127.0.0.1", 7009}, known(), own_word(kB, kAfterClaim), "")
          .has_value());
  // No topology loaded yet: the same.
  CHECK_FALSE(
      verdict_from_own_reply(slots("0"), HostPort{"127.0.0.1", 7001}, nullptr, own_word(kB, kAfterClaim), "")
          .has_value());
}

TEST_CASE("no answer: 503 for a node of the cluster, 400 for an address the cluster does not have") {
  const auto late = verdict("0", 7001, std::nullopt, "no reply in time");
  CHECK(late.status == 503);
  CHECK(late.error == "cannot ask 127.0.0.1:7001 which slots it owns (no reply in time)");
  const auto stranger = verdict("0", 7999, std::nullopt, "connection refused");
  CHECK(stranger.status == 400);
  CHECK(stranger.error.find("127.0.0.1:7999 is not a node of the cluster") == 0);
}

TEST_CASE("an error or a malformed answer is no answer, and says which command got it") {
  std::string noauth;
  resp::append_error(noauth, "NOAUTH Authentication required.");
  resp::append_error(noauth, "NOAUTH Authentication required.");
  const auto refused = verdict("0", 7001, noauth);
  CHECK(refused.status == 503);
  CHECK(refused.error ==
        "cannot ask 127.0.0.1:7001 which slots it owns (CLUSTER MYID: NOAUTH Authentication "
        "required.)");

  std::string bad_range;
  resp::append_bulk(bad_range, kB);
  resp::append_array_header(bad_range, 1);
  resp::append_array_header(bad_range, 3);
  resp::append_integer(bad_range, 100);
  resp::append_integer(bad_range, 99);  // last before first
  resp::append_array_header(bad_range, 3);
  resp::append_bulk(bad_range, "127.0.0.1");
  resp::append_integer(bad_range, 7001);
  resp::append_bulk(bad_range, kB);
  const auto bad = verdict("0", 7001, bad_range);
  CHECK(bad.status == 503);
  CHECK(bad.error.find("CLUSTER SLOTS: not a slot range and its nodes") != std::string::npos);

  // One reply where two are due.
  std::string half;
  resp::append_bulk(half, kB);
  CHECK(verdict("0", 7001, half).status == 503);

  // A third reply after the two asked for: the answers are not the ones asked for, whatever they say.
  std::string more = own_word(kB, kAfterClaim);
  resp::append_simple(more, "OK");
  const auto extra = verdict("0", 7001, more);
  CHECK(extra.status == 503);
  CHECK(extra.error.find("more bytes follow the two replies") != std::string::npos);
}

TEST_CASE(
    "check_route asks the node once, both questions in one round trip, and a known node for a newcomer") {
  struct Asked {
    HostPort node;
    std::string command;
    int replies;
  };
  std::vector<Asked> asked;
  const std::string newcomer_nodes = kB +
                                     " 127.0.0.1:7001@17001 myself,master - 0 0 2 connected 5461-10922\n" +
                                     kNew + " 127.0.0.1:7010@17010 master - 0 0 4 connected 0-100\n";
  const AskNode ask = [&](const HostPort& node, std::string command, int replies,
                          std::chrono::steady_clock::time_point, std::string&) -> std::optional<std::string> {
    asked.push_back({node, command, replies});
    if (node.port == 7010) return own_word(kNew, {{0, 100, kNew, 7010, {}}});
    std::string out;
    resp::append_bulk(out, newcomer_nodes);
    return out;
  };
  const auto v = check_route(slots("0-100"), HostPort{"127.0.0.1", 7010}, known(), {},
                             std::chrono::milliseconds(1000), ask);
  CHECK_MESSAGE(v.ok(), v.error);
  REQUIRE(asked.size() == 2);
  CHECK(asked[0].command == route_question());
  CHECK(asked[0].replies == kRouteQuestionReplies);
  CHECK(asked[1].node.port != 7010);  // a master of the proxy's topology vouches for it
  CHECK(asked[1].replies == 1);
}
