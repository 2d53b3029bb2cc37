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

TEST_CASE("a worker that looks after a handoff's route and release gets both, and every change is seen") {
  HoldRegistry r;
  r.set_workers(2);
  const HostPort target{"10.0.0.7", 6379};
  const auto g0 = r.generation();
  r.hold(kMove, slots("0-9"), 1000, 0);
  CHECK(r.generation() > g0);
  const auto g1 = r.generation();
  CHECK(r.publish_route(slots("0-9"), target));
  CHECK(r.generation() > g1);
  // Between the two: the route, and the slots still held.
  HeldSlots seen = r.current(5, 0);
  CHECK(seen.slots == slots("0-9"));
  REQUIRE(seen.routes.size() == 1);
  const auto g2 = r.generation();
  const SlotSet s = slots("0-9");
  CHECK(r.release(&s, nullptr, 10) == slots("0-9"));
  CHECK(r.generation() > g2);
  seen = r.current(10, 0);
  CHECK(seen.slots.none());
  REQUIRE(seen.routes.size() == 1);
  CHECK(seen.routes[0].slots == slots("0-9"));
  CHECK(seen.routes[0].node == target);
  // Without a route seq asked for, none is given (what the hold's own callers look at).
  CHECK(r.current(10).routes.empty());
}

TEST_CASE("published routes come in order, and go once every worker has applied them") {
  HoldRegistry r;
  r.set_workers(2);
  CHECK(r.publish_route(slots("0-9"), {"a", 1}));
  CHECK(r.publish_route(slots("5-14"), {"b", 2}));
  const auto routes = r.current(0, 0).routes;
  REQUIRE(routes.size() == 2);
  CHECK(routes[0].node.host == "a");
  CHECK(routes[1].node.host == "b");
  CHECK(routes[0].seq < routes[1].seq);
  // Worker 0 has both; worker 1 only the first: the second stays for it.
  r.routed(0, routes[1].seq);
  r.routed(1, routes[0].seq);
  CHECK(r.routes_pending() == 1);
  CHECK(r.current(0, routes[0].seq).routes.size() == 1);
  CHECK(r.current(0, routes[1].seq).routes.empty());
  r.routed(1, routes[1].seq);
  CHECK(r.routes_pending() == 0);
}

TEST_CASE("a worker that never applies the routes makes the log say it is full, never grow without bound") {
  HoldRegistry r;
  r.set_workers(2);
  bool room = true;
  for (std::size_t i = 0; i < HoldRegistry::kMaxRoutes; ++i)
    room = r.publish_route(slots(std::to_string(i)), {"a", 1}) && room;
  CHECK(room);
  CHECK_FALSE(r.publish_route(slots("300"), {"a", 1}));  // the caller then has every worker sync at once
  // Once both have synced, the log is empty again.
  const auto last = r.current(0, 0).routes.back().seq;
  r.routed(0, last);
  r.routed(1, last);
  CHECK(r.routes_pending() == 0);
  CHECK(r.publish_route(slots("301"), {"a", 1}));
}

TEST_CASE("routes that a stuck worker never applies are compacted to one per node, each slot's last") {
  HoldRegistry r;
  r.set_workers(1);
  for (std::size_t i = 0; i <= HoldRegistry::kCompactRoutes; ++i)
    r.publish_route(slots(std::to_string(i % 100)), {i % 2 ? "odd" : "even", 1});
  CHECK(r.routes_pending() <= 2);
  const auto routes = r.current(0, 0).routes;
  SlotSet odd, even;
  for (const auto& route : routes)
    (route.node.host == "odd" ? odd : even) |= route.slots;
  // Slot i % 100 was last routed by the largest i below kCompactRoutes + 1 with that remainder.
  for (int s = 0; s < 100; ++s) {
    int last = 0;
    for (std::size_t i = 0; i <= HoldRegistry::kCompactRoutes; ++i)
      if (static_cast<int>(i % 100) == s) last = static_cast<int>(i);
    CHECK((last % 2 ? odd : even).test(static_cast<Slot>(s)));
    CHECK_FALSE((last % 2 ? even : odd).test(static_cast<Slot>(s)));
  }
}
