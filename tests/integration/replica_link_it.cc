// The replica link against real servers: both snapshot framings, the stream and its offsets, ACKs the master
// sees, and the refusals a user meets (no password, a wrong one, a dead port).
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>

#include "common/rdb.h"
#include "common/resp.h"
#include "orchestrator/replica_link.h"
#include "tests/integration/fixture.h"

using namespace slotshift;
using namespace std::chrono_literals;

namespace {

class SpoolSource final : public rdb::ByteSource {
 public:
  explicit SpoolSource(Spool& spool) : spool_(spool) {}
  std::size_t read(char* dst, std::size_t n) override {
    const long got = spool_.read(dst, n, std::chrono::steady_clock::now() + 10s);
    return got > 0 ? static_cast<std::size_t>(got) : 0;
  }

 private:
  Spool& spool_;
};

std::string text(const test::Reply& r) {
  return r && r->str ? std::string(r->str, r->len) : std::string();
}

std::int64_t repl_offset(test::Connection& c) {
  const auto info = text(c.command({"INFO", "replication"}));
  const auto at = info.find("master_repl_offset:");
  return std::stoll(info.substr(at + 19));
}

// Reads the snapshot, then the framing's end, then returns the stream bytes that followed it.
std::string read_snapshot(ReplicaLink& link, std::vector<std::string>& keys) {
  SpoolSource source(link.spool());
  rdb::Reader reader(source);
  REQUIRE_MESSAGE(reader.read_header(), reader.error());
  rdb::Entry e;
  for (;;) {
    const auto r = reader.next(e, [](int, std::string_view) { return false; });
    REQUIRE_MESSAGE(r != rdb::Result::kError, reader.error());
    if (r == rdb::Result::kEnd) break;
    keys.push_back(e.key);
  }
  std::string rest(reader.unread());
  if (link.payload_length() >= 0) {
    CHECK(reader.bytes_read() == static_cast<std::uint64_t>(link.payload_length()));
  } else {
    while (rest.size() < 40) {
      char buf[64];
      const auto n = source.read(buf, 40 - rest.size());
      REQUIRE(n > 0);
      rest.append(buf, n);
    }
    CHECK(rest.substr(0, 40) == link.eof_mark());
    rest.erase(0, 40);
  }
  return rest;
}

// Reads stream commands until one names `key`; returns the command's arguments.
std::vector<std::string> next_command_on(ReplicaLink& link, std::string& buf, const std::string& key) {
  resp::Scanner scanner(resp::Scanner::Mode::kRequest);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  for (;;) {
    while (!buf.empty() && scanner.scan(buf) == resp::Status::kComplete) {
      auto args = scanner.args(buf);
      std::vector<std::string> out(args.begin(), args.end());
      buf.erase(0, scanner.size());
      scanner.reset();
      for (const auto& a : out)
        if (a == key) return out;
    }
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    char chunk[4096];
    const long n = link.spool().read(chunk, sizeof chunk, std::chrono::steady_clock::now() + 1s);
    REQUIRE(n != 0);
    if (n > 0) buf.append(chunk, static_cast<std::size_t>(n));
  }
}

void wait_for(const std::function<bool()>& done, const char* what) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!done()) {
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, what);
    std::this_thread::sleep_for(20ms);
  }
}

void follow_and_ack(test::Connection& master, ReplicaLink& link, std::string stream, const std::string& key) {
  // A write after the snapshot arrives as a command of the stream, and the offsets add up: the master's
  // offset equals what the link received.
  master.command({"SET", key, "after-snapshot"});
  const auto cmd = next_command_on(link, stream, key);
  REQUIRE(cmd.size() >= 3);
  CHECK(cmd[0] == "SET");
  CHECK(cmd[2] == "after-snapshot");
  wait_for([&] { return link.received_offset() == repl_offset(master); }, "received offset == master offset");

  // ACKs carry the applied offset and nothing more: the master shows exactly what we report.
  const auto applied = link.received_offset() - 5;
  link.set_applied_offset(applied);
  link.send_ack();
  const auto want = "offset=" + std::to_string(applied) + ",";
  wait_for(
      [&] {
        const auto info = text(master.command({"INFO", "replication"}));
        return info.find(want) != std::string::npos && info.find("state=online") != std::string::npos;
      },
      "the master shows the ACKed offset");
}

std::string key_on(test::Connection& node, const char* prefix) {
  // A key of a slot this node owns, so the write lands here.
  const auto slots = node.command({"CLUSTER", "SLOTS"});
  for (std::size_t i = 0; i < slots->elements; ++i) {
    auto* range = slots->element[i];
    if (range->element[2]->element[1]->integer != node.endpoint().port) continue;
    const auto first = range->element[0]->integer, last = range->element[1]->integer;
    for (int n = 0; n < 100000; ++n) {
      const std::string k = std::string(prefix) + std::to_string(n);
      const auto slot = node.command({"CLUSTER", "KEYSLOT", k})->integer;
      if (slot >= first && slot <= last) return k;
    }
  }
  FAIL("no key found for the node");
  return {};
}

}  // namespace

TEST_CASE("disk-based snapshot: $<len> framing, then the stream, with offsets and ACKs the master sees") {
  auto& cluster = test::shared_cluster(3, 0);
  const auto node = cluster.masters().front();
  test::Connection master(node);
  const auto before = key_on(master, "link-disk-");
  master.command({"SET", before, "in-snapshot"});

  ReplicaLink link;
  ReplicaLinkOptions o;
  o.source = HostPort{node.host, node.port};
  REQUIRE_MESSAGE(link.start(o), link.error());
  CHECK_FALSE(link.diskless());
  CHECK(link.payload_length() > 0);
  CHECK(link.replid().size() == 40);
  std::vector<std::string> keys;
  auto stream = read_snapshot(link, keys);
  CHECK(std::find(keys.begin(), keys.end(), before) != keys.end());
  follow_and_ack(master, link, stream, key_on(master, "link-disk-after-"));
  link.stop();
}

TEST_CASE("diskless snapshot: $EOF:<mark> framing, keepalives before it, and the stream after our ACK") {
  auto& cluster = test::shared_cluster(3, 0);
  const auto node = cluster.masters().back();
  test::Connection master(node);
  // One second of delay: the master sends "\n" keepalives before +FULLRESYNC meanwhile.
  master.command({"CONFIG", "SET", "repl-diskless-sync", "yes"});
  master.command({"CONFIG", "SET", "repl-diskless-sync-delay", "1"});
  const auto before = key_on(master, "link-diskless-");
  master.command({"SET", before, "in-snapshot"});

  ReplicaLink link;
  ReplicaLinkOptions o;
  o.source = HostPort{node.host, node.port};
  o.diskless = true;
  REQUIRE_MESSAGE(link.start(o), link.error());
  CHECK(link.diskless());
  CHECK(link.eof_mark().size() == 40);
  std::vector<std::string> keys;
  auto stream = read_snapshot(link, keys);
  CHECK(std::find(keys.begin(), keys.end(), before) != keys.end());
  // The master holds the stream back until it accepts an ACK after the payload; the link keeps ACKing.
  follow_and_ack(master, link, stream, key_on(master, "link-diskless-after-"));
  link.stop();
  master.command({"CONFIG", "SET", "repl-diskless-sync-delay", "5"});
}

TEST_CASE("refusals are clear: no password, a wrong password, a port where nothing listens") {
  auto& cluster = test::shared_cluster(3, 0);
  const auto node = cluster.masters()[1];
  test::Connection master(node);
  master.command({"CONFIG", "SET", "requirepass", "s3cret"});
  struct Restore {
    test::Endpoint node;
    ~Restore() {
      test::Connection c(node);
      c.command({"AUTH", "s3cret"});
      c.command({"CONFIG", "SET", "requirepass", ""});
    }
  } restore{node};

  ReplicaLinkOptions o;
  o.source = HostPort{node.host, node.port};
  {
    ReplicaLink link;
    CHECK_FALSE(link.start(o));
    CHECK_MESSAGE(link.error().find("needs a password") != std::string::npos, link.error());
  }
  {
    ReplicaLink link;
    o.credentials.password = "wrong";
    CHECK_FALSE(link.start(o));
    CHECK_MESSAGE(link.error().find("AUTH refused") != std::string::npos, link.error());
  }
  {
    ReplicaLink link;
    o.credentials.password = "s3cret";
    REQUIRE_MESSAGE(link.start(o), link.error());
    std::vector<std::string> keys;
    read_snapshot(link, keys);
    link.stop();
  }
  {
    // An ACL user with the rights a replica needs.
    test::Connection admin(node);
    admin.command({"AUTH", "s3cret"});
    auto r = admin.command({"ACL", "SETUSER", "mover", "on", ">pw", "+psync", "+replconf", "+ping", "+sync"});
    REQUIRE(text(r) == "OK");
    ReplicaLink link;
    o.credentials.user = "mover";
    o.credentials.password = "pw";
    REQUIRE_MESSAGE(link.start(o), link.error());
    std::vector<std::string> keys;
    read_snapshot(link, keys);
    link.stop();
    admin.command({"ACL", "DELUSER", "mover"});
  }
  {
    ReplicaLink link;
    ReplicaLinkOptions dead;
    dead.source = HostPort{"127.0.0.1", 1};
    dead.step_timeout = 1000ms;
    CHECK_FALSE(link.start(dead));
    CHECK_MESSAGE(link.error().find("cannot connect") != std::string::npos, link.error());
  }
}
