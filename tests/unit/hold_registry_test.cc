// The proxy's slot holds by owner (proxy/slot_control.h, HoldRegistry): each HOLD call's slots end by their
// own ttl, so a request that reached a stalled proxy late holds its slots for one ttl at most, whatever the
// owner's later holds. Times are given, so nothing here waits.
#include "proxy/slot_control.h"

#include <doctest/doctest.h>

#include <string>

using namespace slotshift;
using namespace slotshift::proxy;

namespace {

SlotSet slots(const std::string& text) {
  std::string error;
  const auto parsed = SlotSet::parse(text, error);
  REQUIRE_MESSAGE(parsed, error);
  return *parsed;
}

const std::string kMove = "slotshift-1";

}  // namespace

TEST_CASE("a later hold of the same owner does not keep the slots of an earlier one") {
  HoldRegistry r;
  r.hold(kMove, slots("0-9"), 1000, 0);      // a batch's hold, arrived late
  r.hold(kMove, slots("10-19"), 1000, 800);  // the next batch's
  CHECK(r.current(999).slots == slots("0-19"));
  CHECK(r.current(999).next_expiry_ms == 1000);
  const HeldSlots later = r.current(1000);
  CHECK(later.slots == slots("10-19"));
  CHECK(later.next_expiry_ms == 1800);
  CHECK(r.holds(kMove, slots("10-19"), 1000));
  CHECK_FALSE(r.holds(kMove, slots("0"), 1000));
  CHECK(r.current(1800).slots.none());
  CHECK(r.stats().holds_expired.get() == 1);
}

TEST_CASE("a slot named again stays held until the later end, its neighbours until theirs") {
  HoldRegistry r;
  r.hold(kMove, slots("0-9"), 1000, 0);
  r.hold(kMove, slots("5-14"), 1000, 500);
  CHECK(r.current(1000).slots == slots("5-14"));
  CHECK(r.current(1500).slots.none());
}

TEST_CASE("a slot named again with a shorter ttl keeps its longer end") {
  HoldRegistry r;
  r.hold(kMove, slots("0-9"), 2000, 0);
  r.hold(kMove, slots("0-4"), 100, 10);
  CHECK(r.current(200).slots == slots("0-9"));
  CHECK(r.current(2000).slots.none());
}

TEST_CASE("a release takes slots out of every call's hold, and an owner's release ends them all") {
  HoldRegistry r;
  r.hold(kMove, slots("0-9"), 1000, 0);
  r.hold(kMove, slots("10-19"), 1000, 10);
  r.hold("other", slots("5"), 1000, 10);
  const SlotSet s = slots("5-14");
  const SlotSet removed = r.release(&s, nullptr, 20);
  CHECK(removed == slots("5-14"));
  CHECK(r.current(20).slots == slots("0-4,15-19"));
  r.release(nullptr, &kMove, 30);
  CHECK(r.current(30).slots.none());
  CHECK(r.list(30).empty());
  CHECK(r.stats().holds_expired.get() == 0);
}

TEST_CASE("the calls an owner's hold remembers are bounded, and no slot is dropped for it") {
  HoldRegistry r;
  for (int i = 0; i < 200; ++i)
    r.hold(kMove, slots(std::to_string(i)), 10000 + static_cast<std::uint64_t>(i),
           static_cast<std::uint64_t>(i));
  const auto holds = r.list(300);
  REQUIRE(holds.size() == 1);
  CHECK(holds[0].pieces.size() <= Hold::kMaxPieces);
  CHECK(holds[0].slots == slots("0-199"));
  // Merged pieces end at the later of their ends: nothing ends before its own ttl.
  CHECK(r.current(10000).slots == slots("0-199"));
}
