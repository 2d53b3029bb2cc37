// The RESP scanner, decoder and encoder against what a real redis-server sends and how it judges bad input:
// every RESP2 and RESP3 type as the server writes it (DEBUG PROTOCOL gives the rare RESP3 ones), split at
// every byte, decoded and re-encoded to the same bytes; and protocol errors worded as the server words them.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "common/resp.h"
#include "tests/integration/fixture.h"

using namespace slotshift;

namespace {

std::string cmd(std::initializer_list<std::string_view> args) {
  std::string out;
  resp::append_command(out, args);
  return out;
}

// Scans `wire` (one reply) byte by byte and at every split point, decodes it and re-encodes it.
resp::Value check_reply(const std::string& wire) {
  INFO("reply: " << wire.substr(0, 200));
  resp::Scanner s(resp::Scanner::Mode::kReply);
  for (std::size_t i = 0; i < wire.size(); ++i)
    REQUIRE(s.scan(std::string_view(wire).substr(0, i)) == resp::Status::kIncomplete);
  REQUIRE(s.scan(wire) == resp::Status::kComplete);
  REQUIRE(s.size() == wire.size());
  for (std::size_t k = 0; k < wire.size(); k += 1 + wire.size() / 512) {
    resp::Scanner split(resp::Scanner::Mode::kReply);
    REQUIRE(split.scan(std::string_view(wire).substr(0, k)) == resp::Status::kIncomplete);
    REQUIRE(split.scan(wire) == resp::Status::kComplete);
    CHECK(split.size() == wire.size());
  }
  auto v = resp::decode(wire);
  CHECK(resp::encode(v) == wire);
  CHECK(v.type == s.type());
  return v;
}

std::string server_protocol_error(const test::Endpoint& node, const std::string& bytes) {
  test::Connection c(node);
  auto reply = c.raw(bytes);
  REQUIRE(reply.rfind("-ERR ", 0) == 0);
  return reply.substr(5, reply.size() - 7);
}

std::string our_protocol_error(const std::string& bytes) {
  resp::Scanner s(resp::Scanner::Mode::kRequest);
  REQUIRE(s.scan(bytes) == resp::Status::kError);
  return s.error();
}

}  // namespace

TEST_CASE("RESP2 replies of a real server") {
  auto& cluster = test::shared_cluster(3, 0);
  test::Connection c(cluster.nodes().front());
  // Keys tagged {x} all hash to one slot; send them to its owner.
  auto slots = check_reply(c.raw(cmd({"CLUSTER", "SLOTS"})));
  REQUIRE(slots.type == resp::Type::kArray);
  REQUIRE(slots.elements.size() == 3);
  check_reply(c.raw(cmd({"CLUSTER", "SHARDS"})));
  check_reply(c.raw(cmd({"COMMAND", "INFO", "GET", "XREAD", "EVAL"})));
  check_reply(c.raw(cmd({"CLUSTER", "NODES"})));
  CHECK(check_reply(c.raw(cmd({"NOSUCHCOMMAND", "x"}))).is_error());
  CHECK(check_reply(c.raw(cmd({"PING"}))).str == "PONG");
  CHECK(check_reply(c.raw(cmd({"CLUSTER", "KEYSLOT", "x"}))).integer == 16287);
  CHECK(check_reply(c.raw(cmd({"CLIENT", "NO-EVICT", "maybe"}))).is_error());

  // A node that owns slot 16287 ({x}) serves the data commands.
  test::Endpoint owner;
  for (const auto& range : slots.elements) {
    if (range.elements[0].integer <= 16287 && 16287 <= range.elements[1].integer) {
      owner = {range.elements[2].elements[0].str, static_cast<int>(range.elements[2].elements[1].integer)};
    }
  }
  REQUIRE(owner.port != 0);
  test::Connection d(owner);
  const std::string big(1 << 20, 'v');
  check_reply(d.raw(cmd({"SET", "{x}big", big})));
  CHECK(check_reply(d.raw(cmd({"GET", "{x}big"}))).str == big);
  CHECK(check_reply(d.raw(cmd({"GET", "{x}missing"}))).null);
  CHECK(check_reply(d.raw(cmd({"BLPOP", "{x}missing", "0.01"}))).null);
  check_reply(d.raw(cmd({"XADD", "{x}s", "1-1", "f", "v", "g", "w"})));
  auto range = check_reply(d.raw(cmd({"XRANGE", "{x}s", "-", "+"})));
  CHECK(range.elements.at(0).elements.at(1).elements.size() == 4);
  CHECK(check_reply(d.raw(cmd({"LPUSH", "{x}l", "a", "b"}))).integer == 2);
  CHECK(check_reply(d.raw(cmd({"LPOP", "{x}s"}))).str.find("WRONGTYPE") == 0);

  // 2,000 pipelined commands come back as 2,000 replies, found one after another.
  std::string pipeline;
  for (int i = 0; i < 2000; ++i)
    pipeline += cmd({"INCR", "{x}counter"});
  const auto replies = d.raw(pipeline, 2000);
  resp::Scanner s(resp::Scanner::Mode::kReply);
  std::string_view rest = replies;
  for (int i = 1; i <= 2000; ++i) {
    REQUIRE(s.scan(rest) == resp::Status::kComplete);
    CHECK(resp::decode(rest.substr(0, s.size())).integer == i);
    rest.remove_prefix(s.size());
    s.reset();
  }
  CHECK(rest.empty());
}

TEST_CASE("RESP3 replies of a real server, every type") {
  auto& cluster = test::shared_cluster(3, 0);
  test::Connection c(cluster.nodes().front());
  auto hello = check_reply(c.raw(cmd({"HELLO", "3"})));
  REQUIRE(hello.type == resp::Type::kMap);
  CHECK(hello.find("proto")->integer == 3);
  struct Case {
    const char* kind;
    resp::Type type;
  };
  for (const auto& k : std::vector<Case>{{"string", resp::Type::kBulkString},
                                         {"integer", resp::Type::kInteger},
                                         {"double", resp::Type::kDouble},
                                         {"bignum", resp::Type::kBigNumber},
                                         {"null", resp::Type::kNull},
                                         {"array", resp::Type::kArray},
                                         {"set", resp::Type::kSet},
                                         {"map", resp::Type::kMap},
                                         {"attrib", resp::Type::kBulkString},
                                         {"push", resp::Type::kPush},
                                         {"verbatim", resp::Type::kVerbatimString},
                                         {"true", resp::Type::kBoolean},
                                         {"false", resp::Type::kBoolean}}) {
    INFO("DEBUG PROTOCOL " << std::string(k.kind));
    // "push" answers with a push message and then the reply proper.
    const int replies = std::string(k.kind) == "push" ? 2 : 1;
    const auto wire = c.raw(cmd({"DEBUG", "PROTOCOL", k.kind}), replies);
    resp::Scanner s(resp::Scanner::Mode::kReply);
    REQUIRE(s.scan(wire) == resp::Status::kComplete);
    const auto first = check_reply(wire.substr(0, s.size()));
    CHECK(first.type == k.type);
    if (std::string(k.kind) == "attrib") CHECK_FALSE(first.attributes.empty());
    if (std::string(k.kind) == "true") CHECK(first.integer == 1);
    if (replies == 2) check_reply(wire.substr(s.size()));
  }
  auto cs = check_reply(c.raw(cmd({"CLUSTER", "SHARDS"})));
  REQUIRE(cs.type == resp::Type::kArray);
  CHECK(cs.elements.at(0).type == resp::Type::kMap);
  CHECK(cs.elements.at(0).find("slots") != nullptr);
  CHECK(check_reply(c.raw(cmd({"NOSUCHCOMMAND"}))).is_error());
}

TEST_CASE("protocol errors are worded as redis-server words them") {
  auto& cluster = test::shared_cluster(3, 0);
  const auto& node = cluster.nodes().front();
  const std::vector<std::string> bad = {
      "*abc\r\n",
      "*1\r\nfoo\r\n",
      "*1\r\n$-3\r\n",
      "*1\r\n$x\r\n",
      "*4294967295\r\n",
      "*1\r\n$2147483648\r\n",
      "SET k \"abc\r\n",
      "SET k 'abc'x\r\n",
      std::string(70 * 1024, 'a'),
      "*" + std::string(70 * 1024, '1'),
      "*1\r\n$" + std::string(70 * 1024, '1'),
  };
  for (const auto& bytes : bad) {
    INFO("input: " << bytes.substr(0, 30));
    CHECK(our_protocol_error(bytes) == server_protocol_error(node, bytes));
  }
}

TEST_CASE("the server accepts what the encoder writes, inline included") {
  auto& cluster = test::shared_cluster(3, 0);
  test::Connection c(cluster.nodes().front());
  const std::string binary("\0\r\n\xff", 4);
  CHECK(resp::decode(c.raw(cmd({"ECHO", binary}))).str == binary);
  CHECK(resp::decode(c.raw("ECHO \"a b\\x41\"\r\n")).str == "a bA");
  // The scanner splits the same inline line into the same arguments the server saw.
  resp::Scanner s(resp::Scanner::Mode::kRequest);
  const std::string line = "ECHO 'it\\'s'\r\n";
  REQUIRE(s.scan(line) == resp::Status::kComplete);
  CHECK(resp::decode(c.raw(line)).str == std::string(s.arg(line, 1)));
}
