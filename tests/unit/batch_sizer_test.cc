// How cutovers are sized (orchestrator/batch_sizer.h): from what the batches so far cost, each batch's stall
// stays within --max-pause.
#include "orchestrator/batch_sizer.h"

#include <doctest/doctest.h>

#include <chrono>
#include <vector>

using namespace slotshift;
using std::chrono::milliseconds;

namespace {

std::vector<Slot> first_slots(Slot n) {
  std::vector<Slot> out;
  for (Slot s = 0; s < n; ++s)
    out.push_back(s);
  return out;
}

const std::vector<bool> kNoneClaimed(kSlotCount, false);

// A claimed batch as the cutover measures it: `stall` ms of pause, of which `claim` from the first SETSLOT to
// the source knowing (`send` of it the commands on the target).
Batch measured(std::size_t slots, std::uint64_t keys, double stall, double claim, double send) {
  Batch b;
  b.slots = first_slots(static_cast<Slot>(slots));
  b.source_keys = b.keys = keys;
  b.pause_ms = stall;
  b.claim_ms = claim;
  b.claim_send_ms = send;
  return b;
}

}  // namespace

TEST_CASE("until a batch has been measured, batches stay small") {
  BatchSizer sizer(milliseconds(50), false);
  const auto batches = sizer.plan(
      first_slots(2000), [](Slot) { return 10; }, [](Slot) { return 1000; }, kNoneClaimed);
  REQUIRE(!batches.empty());
  CHECK(batches.front().slots.size() <= 500);
  CHECK(batches.front().keys <= 5000);
  std::size_t slots = 0;
  for (const auto& b : batches)
    slots += b.slots.size();
  CHECK(slots == 2000);
}

TEST_CASE("batches are consecutive slots not yet claimed") {
  BatchSizer sizer(milliseconds(50), false);
  std::vector<bool> claimed(kSlotCount, false);
  for (Slot s = 10; s < 20; ++s)
    claimed[s] = true;
  const auto batches = sizer.plan(
      first_slots(30), [](Slot) { return 1; }, [](Slot) { return 1; }, claimed);
  REQUIRE(batches.size() == 1);
  CHECK(batches[0].slots.size() == 20);
  CHECK(batches[0].slots[10] == 20);
  CHECK(batches[0].keys == 20);
}

TEST_CASE("a batch holds at most 256 MB of values whatever the budget") {
  BatchSizer sizer(milliseconds(10000), false);
  const auto batches = sizer.plan(
      first_slots(4), [](Slot) { return 1; }, [](Slot) { return 200ull << 20; }, kNoneClaimed);
  CHECK(batches.size() == 4);
}

TEST_CASE("the delete speed learnt from a batch sizes the next ones within 70% of the budget") {
  BatchSizer sizer(milliseconds(50), false);
  // 20,000 keys cost 45 ms of pause, 5 of it the claim (1 ms of commands): about 2 us a key.
  CHECK_FALSE(sizer.learn(measured(100, 20000, 45, 5, 1), "src"));
  CHECK(sizer.calibrated());
  const auto batches = sizer.plan(
      first_slots(1000), [](Slot) { return 100; }, [](Slot) { return 100; }, kNoneClaimed);
  REQUIRE(batches.size() > 1);
  for (const auto& b : batches)
    CHECK(sizer.predicted_pause_ms(b.keys, b.slots.size()) <= 50 * 0.7 + 1e-9);
  // And not needlessly small: one more slot would not have fitted.
  const auto& first = batches.front();
  CHECK_FALSE(sizer.fits(first.keys + 100, first.slots.size() + 1));
}

TEST_CASE("a slower batch counts at once, a faster one half") {
  BatchSizer sizer(milliseconds(50), false);
  sizer.learn(measured(10, 10000, 23, 2, 0.2), "src");
  const double before = sizer.predicted_pause_ms(10000, 0);
  sizer.learn(measured(10, 10000, 63, 2, 0.2), "src");  // three times slower per key
  const double slower = sizer.predicted_pause_ms(10000, 0);
  CHECK(slower > before * 2);
  sizer.learn(measured(10, 10000, 13, 2, 0.2), "src");
  const double faster = sizer.predicted_pause_ms(10000, 0);
  CHECK(faster < slower);
  CHECK(faster > before);  // half way only
}

TEST_CASE("a source whose claim alone costs more than the budget is said once, and batches still grow") {
  BatchSizer sizer(milliseconds(5), false);
  // The source needs 20 ms to learn any claim.
  const auto warning = sizer.learn(measured(10, 2000, 25, 24, 0.1), "127.0.0.1:7000");
  REQUIRE(warning);
  CHECK(warning->find("127.0.0.1:7000 takes at least") != std::string::npos);
  CHECK(warning->find("--max-pause 5 ms") != std::string::npos);
  CHECK_FALSE(sizer.learn(measured(10, 2000, 25, 24, 0.1), "127.0.0.1:7000"));
  // The part that grows with the batch gets 30% of the budget: batches are not shrunk to nothing.
  CHECK(sizer.fits(500, 10));
}

TEST_CASE("what a batch cost the clients: the pause and refusal, or with --fence proxy the source's stall") {
  Batch b;
  b.pause_ms = 10;
  b.refuse_ms = 3;
  b.claim_ms = 7;
  CHECK(BatchSizer(milliseconds(50), false).stall_ms(b) == doctest::Approx(13));
  CHECK(BatchSizer(milliseconds(50), true).stall_ms(b) == doctest::Approx(7));
}

TEST_CASE("--engine native: batches grow while the stalls stay well within the budget, shrink past it") {
  BatchSizer sizer(milliseconds(50), false);
  std::vector<std::uint64_t> keys(kSlotCount, 1000);
  Batch b = sizer.next_native(first_slots(100), keys, kNoneClaimed);
  CHECK(b.slots.size() == 5);  // 5,000 keys to start with
  CHECK(b.keys == 5000);
  b.source_keys = b.keys;
  b.pause_ms = 20;  // well within 50
  sizer.learn_native(b);
  CHECK(sizer.next_native(first_slots(100), keys, kNoneClaimed).keys == 7000);
  b.source_keys = 7000;
  b.pause_ms = 80;  // over
  sizer.learn_native(b);
  CHECK(sizer.next_native(first_slots(100), keys, kNoneClaimed).keys == 4000);
  CHECK(sizer.native_floor_ms() == doctest::Approx(20));
  // A slot bigger than the batch size still makes a batch of its own.
  keys[0] = 100000;
  CHECK(sizer.next_native(first_slots(100), keys, kNoneClaimed).slots.size() == 1);
}
