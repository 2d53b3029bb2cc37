// When a move asks a proxy again after it missed a hold (orchestrator/proxy_control.h, LeftOutProxies): 1 s
// after its first miss, twice as long after each one that follows, at most 30 s; a hold it answers starts its
// count over. The times are given, so nothing here waits.
#include "orchestrator/proxy_control.h"

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

using namespace slotshift;
using std::chrono::milliseconds;

namespace {

using Clock = LeftOutProxies::Clock;
const Clock::time_point kStart{};

}  // namespace

TEST_CASE("a proxy that missed a hold is out for a second, then asked again") {
  LeftOutProxies left;
  left.leave_out("10.0.0.1:7000", kStart);
  CHECK(left.out("10.0.0.1:7000"));
  CHECK_FALSE(left.out("10.0.0.2:7000"));
  CHECK(left.due(kStart + milliseconds(999)).empty());
  CHECK(left.out("10.0.0.1:7000"));
  CHECK(left.due(kStart + milliseconds(1000)) == std::vector<std::string>{"10.0.0.1:7000"});
  CHECK_FALSE(left.out("10.0.0.1:7000"));
  // Asked once: it is not due again while it is in the calls.
  CHECK(left.due(kStart + milliseconds(5000)).empty());
}

TEST_CASE("each miss in a row doubles the time out, up to 30 s") {
  LeftOutProxies left;
  const std::string p = "10.0.0.1:7000";
  auto now = kStart;
  for (const int seconds : {1, 2, 4, 8, 16, 30, 30, 30}) {
    left.leave_out(p, now);
    CHECK(left.due(now + milliseconds(seconds * 1000 - 1)).empty());
    CHECK(left.due(now + milliseconds(seconds * 1000)) == std::vector<std::string>{p});
    now += milliseconds(seconds * 1000);
  }
  CHECK(left.misses(p) == 8);
}

TEST_CASE("a hold answered starts the count over") {
  LeftOutProxies left;
  const std::string p = "10.0.0.1:7000";
  left.leave_out(p, kStart);
  left.due(kStart + milliseconds(1000));
  left.leave_out(p, kStart + milliseconds(1000));
  CHECK(left.misses(p) == 2);
  left.due(kStart + milliseconds(3000));
  left.held(p);
  CHECK(left.misses(p) == 0);
  CHECK_FALSE(left.out(p));
  left.leave_out(p, kStart + milliseconds(4000));
  CHECK(left.due(kStart + milliseconds(5000)) == std::vector<std::string>{p});
}

TEST_CASE("proxies are asked again each on its own time") {
  LeftOutProxies left;
  left.leave_out("a:1", kStart);
  left.leave_out("b:1", kStart + milliseconds(500));
  CHECK(left.due(kStart + milliseconds(1200)) == std::vector<std::string>{"a:1"});
  CHECK(left.out("b:1"));
  CHECK(left.due(kStart + milliseconds(1500)) == std::vector<std::string>{"b:1"});
}
