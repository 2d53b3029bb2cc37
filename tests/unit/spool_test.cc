// The spool between the replica link and the copier: bytes come out in the order they went in, whether they
// waited in memory or in the spill file, and memory stays within its limit while the consumer is slow.
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <thread>

#include "orchestrator/spool.h"

using namespace slotshift;

namespace {

std::string read_all(Spool& spool) {
  std::string out;
  char buf[777];  // an odd size, so reads straddle the producer's chunks
  for (;;) {
    const long n = spool.read(buf, sizeof buf, std::chrono::steady_clock::now() + std::chrono::seconds(10));
    REQUIRE(n >= 0);
    if (n == 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

std::string pattern(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s)
    c = static_cast<char>(rng());
  return s;
}

}  // namespace

TEST_CASE("bytes beyond the memory limit go to a file and come back in order") {
  Spool spool(4096, "/tmp");
  std::string all;
  for (unsigned i = 0; i < 100; ++i) {
    const auto piece = pattern(1000 + i, i);
    REQUIRE(spool.push(piece));
    all += piece;
  }
  CHECK(spool.spilled() > 0);
  CHECK(spool.backlog() == all.size());
  CHECK(spool.peak_spilled() >= all.size() - 4096);
  spool.close();
  CHECK(read_all(spool) == all);
  CHECK(spool.backlog() == 0);
  CHECK(spool.closed_error().empty());
}

TEST_CASE("after the file drains, memory takes over again, and order holds across both") {
  Spool spool(1000, "/tmp");
  std::string expected, got;
  char buf[300];
  const auto soon = [] { return std::chrono::steady_clock::now() + std::chrono::seconds(1); };
  for (unsigned round = 0; round < 20; ++round) {
    const auto piece = pattern(700, round);
    REQUIRE(spool.push(piece));
    expected += piece;
    // Read a little less than was written, so the backlog grows past the limit and spills, then drain.
    const long n = spool.read(buf, sizeof buf, soon());
    REQUIRE(n > 0);
    got.append(buf, static_cast<std::size_t>(n));
  }
  while (spool.backlog() > 0) {
    const long n = spool.read(buf, sizeof buf, soon());
    REQUIRE(n > 0);
    got.append(buf, static_cast<std::size_t>(n));
  }
  CHECK(spool.spilled() == 0);
  REQUIRE(spool.push("tail"));
  expected += "tail";
  CHECK(spool.spilled() == 0);  // the file is empty again: small pushes stay in memory
  spool.close("link lost");
  got += read_all(spool);
  CHECK(got == expected);
  CHECK(spool.closed_error() == "link lost");
}

TEST_CASE("a producer thread and a slow consumer: nothing lost, nothing reordered") {
  Spool spool(64 * 1024, "/tmp");
  const auto data = pattern(4 << 20, 7);
  std::thread producer([&] {
    for (std::size_t off = 0; off < data.size(); off += 10000)
      REQUIRE(spool.push(std::string_view(data).substr(off, 10000)));
    spool.close();
  });
  std::string got;
  char buf[4096];
  for (;;) {
    const long n = spool.read(buf, sizeof buf, std::chrono::steady_clock::now() + std::chrono::seconds(10));
    REQUIRE(n >= 0);
    if (n == 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  producer.join();
  CHECK(got == data);
}

TEST_CASE("a read with nothing there waits until its deadline, then says so") {
  Spool spool(1024, "/tmp");
  char buf[16];
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(spool.read(buf, sizeof buf, t0 + std::chrono::milliseconds(50)) == -1);
  CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(50));
}

TEST_CASE("a spill directory that cannot hold a file is an error, not a crash") {
  Spool spool(10, "/nonexistent-dir");
  CHECK_FALSE(spool.push(std::string(100, 'x')));
  CHECK(spool.error().find("/nonexistent-dir") != std::string::npos);
}
