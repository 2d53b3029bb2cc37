#include "common/resp.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using namespace slotshift::resp;
using namespace std::string_literals;

namespace {

using Args = std::vector<std::string>;

std::vector<std::string> to_strings(const std::vector<std::string_view>& v) {
  return {v.begin(), v.end()};
}

// Feeds `wire` to a fresh scanner one more byte at a time: every proper prefix must be kIncomplete (resuming
// the same scanner), the whole must be kComplete and take all of it.
Scanner feed_bytewise(Scanner::Mode mode, std::string_view wire, Limits limits = {}) {
  Scanner s(mode, limits);
  for (std::size_t i = 0; i < wire.size(); ++i) {
    const auto st = s.scan(wire.substr(0, i));
    REQUIRE_MESSAGE(st == Status::kIncomplete, "prefix of " << i << " bytes: " << s.error());
  }
  REQUIRE_MESSAGE(s.scan(wire) == Status::kComplete, s.error());
  CHECK(s.size() == wire.size());
  return s;
}

// For every split point k: scan the first k bytes, then the whole (as a second read delivers the rest).
void check_every_split(Scanner::Mode mode, std::string_view wire) {
  for (std::size_t k = 0; k <= wire.size(); ++k) {
    Scanner s(mode);
    const auto first = s.scan(wire.substr(0, k));
    if (first == Status::kComplete) {
      CHECK(k == wire.size());
      continue;
    }
    REQUIRE_MESSAGE(first == Status::kIncomplete, "split at " << k << ": " << s.error());
    REQUIRE_MESSAGE(s.scan(wire) == Status::kComplete, "split at " << k << ": " << s.error());
    CHECK(s.size() == wire.size());
  }
}

std::string request_error(std::string_view wire, Limits limits = {}) {
  Scanner s(Scanner::Mode::kRequest, limits);
  const auto st = s.scan(wire);
  REQUIRE_MESSAGE(st == Status::kError, "expected a protocol error for " << std::string(wire.substr(0, 40)));
  return s.error();
}

std::string reply_error(std::string_view wire, Limits limits = {}) {
  Scanner s(Scanner::Mode::kReply, limits);
  const auto st = s.scan(wire);
  REQUIRE_MESSAGE(st == Status::kError, "expected a protocol error for " << std::string(wire.substr(0, 40)));
  return s.error();
}

Value decoded(std::string_view wire) {
  Value v;
  std::size_t used = 0;
  std::string error;
  REQUIRE_MESSAGE(parse_reply(wire, v, used, &error) == Status::kComplete, error);
  CHECK(used == wire.size());
  return v;
}

}  // namespace

TEST_CASE("multibulk request: arguments are slices of the caller's buffer") {
  const std::string wire = "*3\r\n$3\r\nSET\r\n$3\r\nfoo\r\n$5\r\nb\0r\r\n\r\n"s;
  auto s = feed_bytewise(Scanner::Mode::kRequest, wire);
  CHECK_FALSE(s.is_inline());
  REQUIRE(s.argc() == 3);
  CHECK(to_strings(s.args(wire)) == Args{"SET", "foo", std::string("b\0r\r\n", 5)});
  CHECK(s.arg(wire, 1).data() == wire.data() + 17);  // no copy
  check_every_split(Scanner::Mode::kRequest, wire);
}

TEST_CASE("pipelined requests are found one after another") {
  std::string wire;
  for (int i = 0; i < 100; ++i)
    append_command(wire, {"INCR", "counter:" + std::to_string(i)});
  wire += "PING\r\n";
  Scanner s(Scanner::Mode::kRequest);
  std::string_view rest = wire;
  for (int i = 0; i < 100; ++i) {
    REQUIRE(s.scan(rest) == Status::kComplete);
    CHECK(to_strings(s.args(rest)) == Args{"INCR", "counter:" + std::to_string(i)});
    rest.remove_prefix(s.size());
    s.reset();
  }
  REQUIRE(s.scan(rest) == Status::kComplete);
  CHECK(s.is_inline());
  CHECK(to_strings(s.args(rest)) == Args{"PING"});
  CHECK(s.size() == rest.size());
}

TEST_CASE("empty multibulk and empty inline lines are requests without arguments, as Redis skips them") {
  for (std::string wire : {"*0\r\n", "*-1\r\n", "\r\n", "\n", "   \r\n"}) {
    Scanner s(Scanner::Mode::kRequest);
    REQUIRE(s.scan(wire) == Status::kComplete);
    CHECK(s.argc() == 0);
    CHECK(s.size() == wire.size());
  }
}

TEST_CASE("inline commands are split as redis-server splits them") {
  struct Case {
    std::string line;
    Args args;
  };
  const std::vector<Case> cases = {
      {"SET foo bar\r\n", {"SET", "foo", "bar"}},
      {"  GET   foo  \n", {"GET", "foo"}},
      {"SET k \"a b\\n\\x41\\\"\"\r\n", {"SET", "k", "a b\nA\""}},
      {"SET k 'it\\'s' \r\n", {"SET", "k", "it's"}},
      {"ECHO \"\"\r\n", {"ECHO", ""}},
      {"ECHO \"\\xzz\"\r\n", {"ECHO", "xzz"}},
      {"ECHO a\tb\r\n", {"ECHO", "a", "b"}},
  };
  for (const auto& c : cases) {
    auto s = feed_bytewise(Scanner::Mode::kRequest, c.line);
    CHECK(s.is_inline());
    CHECK(to_strings(s.args(c.line)) == c.args);
  }
}

TEST_CASE("request protocol errors use Redis's wording") {
  CHECK(request_error("*abc\r\n") == "Protocol error: invalid multibulk length");
  CHECK(request_error("*1\r\nfoo\r\n") == "Protocol error: expected '$', got 'f'");
  CHECK(request_error("*1\r\n$-3\r\n") == "Protocol error: invalid bulk length");
  CHECK(request_error("*1\r\n$x\r\n") == "Protocol error: invalid bulk length");
  CHECK(request_error("*1\r\n$3\r\nfoobar\r\n") == "Protocol error: expected CRLF after the bulk data");
  CHECK(request_error("SET k \"abc\r\n") == "Protocol error: unbalanced quotes in request");
  CHECK(request_error("SET k \"abc\"x\r\n") == "Protocol error: unbalanced quotes in request");
  CHECK(request_error("SET k 'abc\r\n") == "Protocol error: unbalanced quotes in request");
  CHECK(request_error("*1\r\x01") == "Protocol error: expected CRLF after the multibulk count");
}

TEST_CASE("huge lengths are refused before anything is allocated") {
  CHECK(request_error("*4294967295\r\n") == "Protocol error: invalid multibulk length");
  CHECK(request_error("*99999999999999999999999\r\n") == "Protocol error: invalid multibulk length");
  CHECK(request_error("*1\r\n$2147483648\r\n") == "Protocol error: invalid bulk length");
  CHECK(request_error("*1\r\n$536870913\r\n") == "Protocol error: invalid bulk length");  // 512 MB + 1
  Limits small;
  small.max_bulk_len = 10;
  small.max_elements = 3;
  CHECK(request_error("*1\r\n$11\r\n", small) == "Protocol error: invalid bulk length");
  CHECK(request_error("*4\r\n", small) == "Protocol error: invalid multibulk length");
  CHECK(reply_error("*4294967295\r\n") == "Protocol error: invalid multibulk length");
  CHECK(reply_error("%600000\r\n", small) == "Protocol error: invalid multibulk length");
  CHECK(reply_error("$-2\r\n") == "Protocol error: invalid bulk length");
}

TEST_CASE("lines without an end are bounded") {
  const std::string no_newline(70 * 1024, 'a');
  CHECK(request_error(no_newline) == "Protocol error: too big inline request");
  CHECK(request_error("*" + std::string(70 * 1024, '1')) == "Protocol error: too big mbulk count string");
  CHECK(request_error("*1\r\n$" + std::string(70 * 1024, '1')) ==
        "Protocol error: too big bulk count string");
  CHECK(reply_error("+" + no_newline) == "Protocol error: too long line in reply");
  Scanner s(Scanner::Mode::kRequest);
  CHECK(s.scan(std::string(60 * 1024, 'a')) == Status::kIncomplete);  // still within the bound: wait for more
}

TEST_CASE("every RESP2 and RESP3 type, split at every byte") {
  const std::vector<std::string> replies = {
      "+OK\r\n",
      "-ERR unknown command 'foo'\r\n",
      ":-42\r\n",
      "$5\r\nhello\r\n",
      "$0\r\n\r\n",
      "$-1\r\n",
      "*-1\r\n",
      "*0\r\n",
      "*3\r\n:1\r\n$1\r\na\r\n*2\r\n+x\r\n-y\r\n",
      "_\r\n",
      "#t\r\n",
      ",3.14\r\n",
      ",-inf\r\n",
      "(3492890328409238509324850943850943825024385\r\n",
      "!21\r\nSYNTAX invalid syntax\r\n",
      "=15\r\ntxt:Some string\r\n",
      "%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n",
      "~3\r\n+a\r\n+b\r\n+c\r\n",
      ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nmsg\r\n",
      "|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.1923\r\n*2\r\n:2039123\r\n:9543892\r\n",
      "*2\r\n|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n:7\r\n",
      "$?\r\n;4\r\nHell\r\n;1\r\no\r\n;0\r\n",
      "*?\r\n:1\r\n:2\r\n.\r\n",
      "%?\r\n+a\r\n:1\r\n.\r\n",
      "*1\r\n*1\r\n*1\r\n*1\r\n*0\r\n",
  };
  for (const auto& wire : replies) {
    INFO("reply: " << wire);
    feed_bytewise(Scanner::Mode::kReply, wire);
    check_every_split(Scanner::Mode::kReply, wire);
  }
}

TEST_CASE("the scanner reports the outermost type, after any attribute") {
  struct Case {
    std::string wire;
    Type type;
  };
  for (const auto& c : std::vector<Case>{{"-MOVED 1 127.0.0.1:7000\r\n", Type::kError},
                                         {"|1\r\n+a\r\n+b\r\n:1\r\n", Type::kInteger},
                                         {"%0\r\n", Type::kMap},
                                         {"$-1\r\n", Type::kBulkString},
                                         {"!3\r\nERR\r\n", Type::kBulkError}}) {
    Scanner s(Scanner::Mode::kReply);
    REQUIRE(s.scan(c.wire) == Status::kComplete);
    CHECK(s.type() == c.type);
  }
}

TEST_CASE("reply protocol errors") {
  CHECK(reply_error("?\r\n").find("unexpected byte 0x3f") != std::string::npos);
  CHECK(reply_error(":12a\r\n") == "Protocol error: invalid integer");
  CHECK(reply_error("#x\r\n") == "Protocol error: invalid boolean");
  CHECK(reply_error("_x\r\n") == "Protocol error: invalid null");
  CHECK(reply_error("$3\r\nabcd\r\n") == "Protocol error: expected CRLF after bulk data");
  CHECK(reply_error("\r\n") == "Protocol error: empty line in reply");
  CHECK(reply_error("$?\r\n;x\r\n") == "Protocol error: bad chunk in a streamed string");
  Limits shallow;
  shallow.max_depth = 3;
  CHECK(reply_error("*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", shallow) == "Protocol error: nesting too deep");
  std::string deep;
  for (int i = 0; i < 100000; ++i)
    deep += "*1\r\n";
  CHECK(reply_error(deep) == "Protocol error: nesting too deep");
}

TEST_CASE("decoded values") {
  auto v = decoded("*3\r\n:1\r\n$3\r\nabc\r\n*2\r\n$-1\r\n_\r\n");
  REQUIRE(v.type == Type::kArray);
  REQUIRE(v.elements.size() == 3);
  CHECK(v.elements[0].integer == 1);
  CHECK(v.elements[1].str == "abc");
  CHECK(v.elements[2].elements[0].null);
  CHECK(v.elements[2].elements[1].type == Type::kNull);

  auto m = decoded("%2\r\n$5\r\nslots\r\n*2\r\n:0\r\n:5460\r\n+id\r\n$3\r\nabc\r\n");
  REQUIRE(m.find("slots"));
  CHECK(m.find("slots")->elements[1].integer == 5460);
  CHECK(m.find("id")->str == "abc");
  CHECK(m.find("nope") == nullptr);

  auto a = decoded("|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n");
  CHECK(a.type == Type::kBulkString);
  CHECK(a.str == "v");
  REQUIRE(a.attributes.size() == 2);
  CHECK(a.attributes[1].integer == 3600);

  CHECK(decoded(",1.5\r\n").number == doctest::Approx(1.5));
  CHECK(decoded("#f\r\n").integer == 0);
  CHECK(decoded("$?\r\n;4\r\nHell\r\n;1\r\no\r\n;0\r\n").str == "Hello");
  CHECK(decoded("*?\r\n:1\r\n:2\r\n.\r\n").elements.size() == 2);
  CHECK(decoded("-ERR x\r\n").is_error());
  CHECK(decoded("!3\r\nERR\r\n").is_error());
}

TEST_CASE("encode writes exact wire bytes and round-trips decoded values") {
  std::string out;
  const std::string value("v\0", 2);
  append_command(out, {"SET", "k", value});
  CHECK(out == std::string("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv\0\r\n", 28));
  out.clear();
  append_integer(out, -9223372036854775807LL - 1);
  append_simple(out, "OK");
  append_error(out, "ERR x");
  append_null_bulk(out);
  append_null(out);
  CHECK(out == ":-9223372036854775808\r\n+OK\r\n-ERR x\r\n$-1\r\n_\r\n");

  for (std::string wire :
       {"*3\r\n:1\r\n$1\r\na\r\n*2\r\n+x\r\n-y\r\n", "$-1\r\n", "*-1\r\n", "_\r\n", "#t\r\n", ",3.14\r\n",
        "(12345678901234567890\r\n", "!3\r\nERR\r\n", "=7\r\ntxt:abc\r\n", "%1\r\n+a\r\n:1\r\n",
        "~2\r\n+a\r\n+b\r\n", ">2\r\n+a\r\n+b\r\n", "|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n"}) {
    CHECK(encode(decoded(wire)) == wire);
  }
}

TEST_CASE("a large bulk arriving in small reads is walked once and needs no copy") {
  const std::size_t size = 8 * 1024 * 1024;
  std::string wire = "*2\r\n$3\r\nSET\r\n$" + std::to_string(size) + "\r\n";
  const std::size_t body = wire.size();
  wire.append(size, 'x');
  wire += "\r\n";
  Scanner s(Scanner::Mode::kRequest);
  std::size_t have = 0;
  int reads = 0;
  while (have < wire.size()) {
    have = std::min(wire.size(), have + 64 * 1024);
    ++reads;
    const auto st = s.scan(std::string_view(wire).substr(0, have));
    if (have < wire.size())
      REQUIRE(st == Status::kIncomplete);
    else
      REQUIRE(st == Status::kComplete);
  }
  CHECK(reads > 100);
  CHECK(s.arg(wire, 1).size() == size);
  CHECK(s.arg(wire, 1).data() == wire.data() + body);
}

TEST_CASE("aggregate_elements slices an aggregate reply without decoding it") {
  std::vector<std::string_view> parts;
  const std::string wire = "*3\r\n$1\r\na\r\n$-1\r\n*2\r\n:1\r\n:2\r\n";
  REQUIRE(aggregate_elements(wire, parts));
  CHECK(parts == std::vector<std::string_view>{"$1\r\na\r\n", "$-1\r\n", "*2\r\n:1\r\n:2\r\n"});
  REQUIRE(aggregate_elements("%1\r\n+k\r\n:1\r\n", parts));
  CHECK(parts.size() == 2);
  CHECK(aggregate_elements("*0\r\n", parts));
  CHECK(parts.empty());
  CHECK_FALSE(aggregate_elements("*-1\r\n", parts));
  CHECK_FALSE(aggregate_elements("+OK\r\n", parts));
  CHECK_FALSE(aggregate_elements("*2\r\n:1\r\n", parts));  // truncated
}
