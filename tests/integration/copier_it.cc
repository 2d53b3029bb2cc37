// One source's copier against real servers, for what the end-to-end move tests cannot time: a FLUSHALL in the
// middle of the stream, a target that stalls long enough for the stream to spill to disk, WAIT on the source
// answered by the copier's ACKs, and a key big enough to go as chunks.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>

#include "common/slot.h"
#include "orchestrator/copier.h"
#include "tests/integration/fixture.h"

using namespace slotshift;
using namespace std::chrono_literals;

namespace {

std::string text(const test::Reply& r) {
  return r && r->str ? std::string(r->str, r->len) : std::string();
}

// A key of `slot` whose name starts with `prefix`.
std::string key_in(Slot slot, const std::string& prefix, int from = 0) {
  for (int n = from;; ++n) {
    std::string k = prefix + std::to_string(n);
    if (key_slot(k) == slot) return k;
  }
}

struct Pair {
  test::Endpoint source, target;
  std::string source_id;
  Slot slot = 0;
};

// Two masters of the shared cluster and a slot the first owns, put in IMPORTING on the second.
Pair prepare(test::LocalCluster& cluster, Slot slot_hint) {
  const auto masters = cluster.masters();
  Pair p;
  test::Connection any(masters.front());
  for (const auto& m : masters) {
    test::Connection c(m);
    const auto slots = c.command({"CLUSTER", "SLOTS"});
    for (std::size_t i = 0; i < slots->elements; ++i) {
      auto* range = slots->element[i];
      if (range->element[2]->element[1]->integer != m.port) continue;
      const auto first = range->element[0]->integer, last = range->element[1]->integer;
      if (p.source.port == 0 && slot_hint >= first && slot_hint <= last) {
        p.source = m;
        p.slot = slot_hint;
      }
    }
  }
  REQUIRE(p.source.port != 0);
  for (const auto& m : masters)
    if (m.port != p.source.port) p.target = m;
  test::Connection src(p.source), tgt(p.target);
  p.source_id = text(src.command({"CLUSTER", "MYID"}));
  REQUIRE(text(tgt.command({"CLUSTER", "SETSLOT", std::to_string(p.slot), "IMPORTING", p.source_id})) ==
          "OK");
  return p;
}

void unprepare(const Pair& p) {
  test::Connection tgt(p.target);
  for (;;) {
    auto keys = tgt.command({"CLUSTER", "GETKEYSINSLOT", std::to_string(p.slot), "1000"});
    if (keys->elements == 0) break;
    for (std::size_t i = 0; i < keys->elements; ++i) {
      tgt.command({"ASKING"});
      tgt.command({"DEL", std::string(keys->element[i]->str, keys->element[i]->len)});
    }
  }
  tgt.command({"CLUSTER", "SETSLOT", std::to_string(p.slot), "STABLE"});
}

std::int64_t repl_offset(test::Connection& c) {
  const auto info = text(c.command({"INFO", "replication"}));
  return std::stoll(info.substr(info.find("master_repl_offset:") + 19));
}

void wait_applied(SlotCopier& copier, test::Connection& source) {
  const auto offset = repl_offset(source);
  REQUIRE_MESSAGE(copier.wait_applied(offset, Clock::now() + 20s), copier.error());
}

long long count(test::Connection& c, Slot slot) {
  return c.command({"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)})->integer;
}

std::string asking_get(test::Connection& c, const std::string& key) {
  c.command({"ASKING"});
  return text(c.command({"GET", key}));
}

CopierOptions options_for(const Pair& p) {
  CopierOptions o;
  o.source = HostPort{p.source.host, p.source.port};
  o.target = HostPort{p.target.host, p.target.port};
  return o;
}

void wait_copied(SlotCopier& copier) {
  const auto deadline = Clock::now() + 30s;
  while (!copier.stats().rdb_done) {
    REQUIRE_MESSAGE(!copier.failed(), copier.error());
    REQUIRE(Clock::now() < deadline);
    std::this_thread::sleep_for(10ms);
  }
}

}  // namespace

TEST_CASE("FLUSHALL on the source empties the moving slot on the target, and later writes still arrive") {
  auto& cluster = test::shared_cluster(3, 0);
  const auto p = prepare(cluster, 100);
  test::Connection src(p.source), tgt(p.target);
  for (int i = 0; i < 50; ++i)
    src.command({"SET", key_in(p.slot, "flush-before-", i * 100000), "x"});
  const auto before = count(src, p.slot);

  SlotCopier copier(options_for(p), {p.slot});
  REQUIRE_MESSAGE(copier.start(), copier.error());
  wait_copied(copier);
  CHECK(copier.stats().keys_copied == static_cast<std::uint64_t>(before));
  wait_applied(copier, src);
  CHECK(count(tgt, p.slot) == before);

  src.command({"FLUSHALL"});
  const auto after_key = key_in(p.slot, "flush-after-");
  src.command({"SET", after_key, "new"});
  wait_applied(copier, src);
  CHECK(count(tgt, p.slot) == 1);
  CHECK(asking_get(tgt, after_key) == "new");
  copier.stop();
  unprepare(p);
}

TEST_CASE("a target that stalls: the stream waits on disk, the link survives, everything arrives in order") {
  auto& cluster = test::shared_cluster(3, 0);
  const auto p = prepare(cluster, 200);
  test::Connection src(p.source), tgt(p.target);
  auto o = options_for(p);
  o.spool_memory = 64 * 1024;  // so that a second of writes spills
  SlotCopier copier(o, {p.slot});
  REQUIRE_MESSAGE(copier.start(), copier.error());
  wait_copied(copier);

  // The target stops answering for 1.5 s while the source takes 2 MB of writes to the moving slot.
  tgt.command({"CLIENT", "PAUSE", "1500", "ALL"});
  const auto key = key_in(p.slot, "spill-");
  const std::string value(1000, 'v');
  std::vector<std::vector<std::string>> writes;
  for (int i = 0; i < 2000; ++i)
    writes.push_back({"RPUSH", key, value + std::to_string(i)});
  src.pipeline(writes);
  wait_applied(copier, src);
  CHECK(copier.spool_peak() > 0);
  tgt.command({"ASKING"});
  CHECK(tgt.command({"LLEN", key})->integer == 2000);
  tgt.command({"ASKING"});
  CHECK(text(tgt.command({"LINDEX", key, "1999"})) == value + "1999");
  CHECK_FALSE(copier.failed());
  copier.stop();
  unprepare(p);
}

TEST_CASE("WAIT on the source counts the copier once the target has the write") {
  auto& cluster = test::shared_cluster(3, 0);
  const auto p = prepare(cluster, 300);
  test::Connection src(p.source);
  SlotCopier copier(options_for(p), {p.slot});
  REQUIRE_MESSAGE(copier.start(), copier.error());
  wait_copied(copier);
  src.command({"SET", key_in(p.slot, "wait-"), "1"});
  // The master sends REPLCONF GETACK; the copier answers with what the target has applied.
  CHECK(src.command({"WAIT", "1", "5000"})->integer == 1);
  copier.stop();
  unprepare(p);
}

TEST_CASE("a key above --big-key goes as chunks and arrives whole, with its TTL") {
  auto& cluster = test::shared_cluster(3, 0);
  const auto p = prepare(cluster, 400);
  test::Connection src(p.source), tgt(p.target);
  const auto key = key_in(p.slot, "big-");
  std::vector<std::vector<std::string>> fill;
  for (int i = 0; i < 20000; ++i)
    fill.push_back({"HSET", key, "field-" + std::to_string(i), std::string(50, 'h') + std::to_string(i)});
  src.pipeline(fill);
  src.command({"PEXPIREAT", key, "4102444800000"});
  auto o = options_for(p);
  o.big_key = 64 * 1024;
  o.chunk_bytes = 16 * 1024;
  SlotCopier copier(o, {p.slot});
  REQUIRE_MESSAGE(copier.start(), copier.error());
  wait_copied(copier);
  CHECK(copier.stats().keys_chunked == 1);
  tgt.command({"ASKING"});
  CHECK(tgt.command({"HLEN", key})->integer == 20000);
  tgt.command({"ASKING"});
  CHECK(text(tgt.command({"HGET", key, "field-12345"})) == std::string(50, 'h') + "12345");
  tgt.command({"ASKING"});
  CHECK(tgt.command({"PEXPIRETIME", key})->integer == 4102444800000);
  copier.stop();
  unprepare(p);
}
