// How many batches one hold of the proxies spans (orchestrator/hold_span.h): one per batch while a call to
// the fleet costs less than a batch, more (a group) once it costs more.
#include "orchestrator/hold_span.h"

#include <doctest/doctest.h>

#include <initializer_list>
#include <optional>

using namespace slotshift;

namespace {

const HoldSpanRule kAuto{0, false, 50};

}  // namespace

TEST_CASE("auto: a fleet answering faster than a batch takes one hold per batch") {
  // 2 proxies: a call takes a few ms, a batch tens.
  CHECK(hold_span(kAuto, 4, 30, 8) == 1);
  CHECK(hold_span(kAuto, 20, std::nullopt, 8) == 1);  // the warm-up, before the first batch
  CHECK(hold_span(kAuto, 0, std::nullopt, 8) == 1);
}

TEST_CASE("auto: a slow fleet's hold spans the batches that fit in two calls") {
  // Before the first batch a batch counts at 50 ms: a 60 ms warm-up (2 proxies on a loaded machine) gives a
  // group of two.
  CHECK(hold_span(kAuto, 60, std::nullopt, 8) == 2);
  CHECK(hold_span(HoldSpanRule{0, false, 20}, 60, std::nullopt, 8) == 2);
  // 200 proxies on one core: a call of 140 ms, batches of 30 ms counted at --max-pause (50 ms).
  CHECK(hold_span(kAuto, 140, 30, 8) == 5);
  // A batch slower than the budget counts at its own span.
  CHECK(hold_span(kAuto, 140, 90, 8) == 3);
  // A smaller budget lets more batches in: --max-pause 20ms, batches of 20 ms.
  CHECK(hold_span(HoldSpanRule{0, false, 20}, 140, 20, 20) == 14);
}

TEST_CASE("auto: a batch's span is what it took but its wait for the proxies") {
  // A batch whose span was all a wait for the fleet (it cannot be, but the clock may say so) counts at the
  // budget, not as a first batch.
  const HoldSpanRule tight{0, false, 5};
  CHECK(hold_span(tight, 30, 0.0, 20) == 12);
  CHECK(hold_span(tight, 30, std::nullopt, 20) == 1);  // a first batch counts at 50 ms
}

TEST_CASE("auto: at most 16 batches, and never more than are planned") {
  CHECK(hold_span(kAuto, 5000, 30, 100) == kMaxHoldSpan);
  CHECK(hold_span(kAuto, 5000, 30, 16) == kMaxHoldSpan);  // the lone last batch then holds on its own
  CHECK(hold_span(kAuto, 140, 30, 2) == 3);               // the batch itself and the two after it
  CHECK(hold_span(kAuto, 140, 30, 0) == 1);
}

TEST_CASE("auto: a group that would leave one batch alone takes it") {
  // 5 fit; 5 more are planned behind the first, so a group of 5 would leave the last one to a hold of its
  // own.
  CHECK(hold_span(kAuto, 140, 30, 5) == 6);
  CHECK(hold_span(kAuto, 140, 30, 6) == 5);  // two are left: they form a group of their own
  // A hold of one batch is no group: the next batch holds with its handoff as usual.
  CHECK(hold_span(kAuto, 4, 30, 1) == 1);
}

TEST_CASE("auto under --fence proxy: one batch per hold, whatever the fleet costs") {
  // The holds are the fence there: a proxy that restarts loses them.
  CHECK(hold_span(HoldSpanRule{0, true, 50}, 140, 30, 8) == 1);
  CHECK(hold_span(HoldSpanRule{0, true, 50}, 5000, 30, 8) == 1);
}

TEST_CASE("--hold-batches N: exactly N, whatever the fleet costs or the fence, fewer only at the end") {
  for (const bool fence_proxy : {false, true}) {
    const HoldSpanRule three{3, fence_proxy, 50};
    CHECK(hold_span(three, 4, 30, 8) == 3);
    CHECK(hold_span(three, 5000, 30, 8) == 3);
    CHECK(hold_span(three, 4, 30, 3) == 3);  // leaves its source's last batch to a hold of its own
    CHECK(hold_span(three, 4, 30, 1) == 2);
    CHECK(hold_span(HoldSpanRule{1, fence_proxy, 50}, 5000, 30, 8) == 1);
  }
}
