// The slot hold / route / release control, the process's side. At each batch's cutover the orchestrator
// drives every proxy through the admin endpoint:
//
//   POST /v1/slots/hold     {"slots": "0-100,200", "ttl_ms": 2000, "owner": "move-42", "wait_ms": 1000}
//   POST /v1/slots/route    {"slots": "0-100,200", "node": "10.0.0.7:6379"}
//   POST /v1/slots/release  {"slots": "0-100,200"}  or  {"owner": "move-42"}
//   POST /v1/slots/handoff  {"slots": "0-100,200", "node": "10.0.0.7:6379"}: ROUTE, then RELEASE
//   GET  /v1/slots
//
// HOLD stops every worker from sending new commands for the slots (they wait in the proxy, see
// held_requests.h) and answers once every command already at a backend for them has returned, so that
// nothing can reach the old owner after the orchestrator's fence. ROUTE points the slots at the new owner in
// every worker's slot map. RELEASE lets the held commands go, in each client's order, to where the map points
// now. A hold ends by itself `ttl_ms` after it was placed, so that an orchestrator that dies mid-cutover
// cannot freeze clients.
//
// Who owns what: the HoldRegistry is the one truth about which slots are held and until when; the admin
// thread changes it, and workers read it (on a control call, and on their tick when a hold's time is up).
// Each worker keeps its own copy of the held slots so that its request path never takes the registry's lock.
// A control call reaches each worker through the worker's control queue (Worker::post) and comes back through
// a ControlCall that the admin thread waits on with a deadline; a worker that the call cannot affect (nothing
// held, nothing at a backend for a HOLD, no dispatch under way) is answered for by the admin thread and takes
// the change at its next dispatch or tick, without being woken (held_requests.h says why that is safe).
#pragma once

#include <atomic>
#include <bitset>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/host_port.h"
#include "common/slot.h"
#include "proxy/admin_questions.h"
#include "proxy/stats.h"

namespace slotshift::proxy {

class Proxy;
class Worker;
struct RouteVerdict;

// Milliseconds of the monotonic clock: the time base of hold ages and expiries, the same in every thread.
std::uint64_t steady_ms();

// A set of hash slots. Written as CLUSTER NODES writes slot ranges, with commas between them: "0-100,200".
class SlotSet {
 public:
  // Parses "0-100,200" (commas or spaces between items). nullopt and `error` for anything else, or for no
  // slot at all.
  static std::optional<SlotSet> parse(std::string_view text, std::string& error);
  // "0-100,200"; "" for the empty set.
  std::string str() const;

  bool test(Slot slot) const { return bits_.test(slot); }
  // Calls f(slot) for each slot of the set, in order. By the bitset's own search (a word at a time), not a
  // test of all 16,384 slots: a control call of a batch names a few hundred, and every proxy of a fleet walks
  // them several times per call. _Find_first and _Find_next are libstdc++'s (GCC's library, which Debian
  // builds with); another standard library would need a loop over the words here.
  template <class F>
  void for_each(F&& f) const {
    for (std::size_t s = bits_._Find_first(); s < kSlotCount; s = bits_._Find_next(s))
      f(static_cast<Slot>(s));
  }
  void set(Slot slot) { bits_.set(slot); }
  bool any() const { return bits_.any(); }
  bool none() const { return bits_.none(); }
  std::size_t count() const { return bits_.count(); }
  // Whether every slot of `other` is in this set.
  bool contains(const SlotSet& other) const { return (other.bits_ & ~bits_).none(); }
  SlotSet& operator|=(const SlotSet& other) {
    bits_ |= other.bits_;
    return *this;
  }
  SlotSet& operator&=(const SlotSet& other) {
    bits_ &= other.bits_;
    return *this;
  }
  // Removes the slots of `other`.
  SlotSet& operator-=(const SlotSet& other) {
    bits_ &= ~other.bits_;
    return *this;
  }
  friend bool operator==(const SlotSet&, const SlotSet&) = default;

 private:
  std::bitset<kSlotCount> bits_;
};

// The slots one HOLD call placed, and when its ttl ends their hold.
struct HoldPiece {
  SlotSet slots;
  std::uint64_t expires_ms = 0;
};

// One owner's hold: its slots, since when and until when (steady_ms()). Each HOLD call's slots end by their
// own ttl (its piece): a later HOLD of the same owner does not keep slots it did not name, so that a request
// that reached the proxy late (sent for an earlier batch, it waited in the socket of a stalled proxy) holds
// its slots for one ttl at most, however many batches follow.
struct Hold {
  std::string owner;
  SlotSet slots;  // every piece's slots
  std::uint64_t placed_ms = 0;
  std::uint64_t expires_ms = 0;   // when its last piece ends
  std::vector<HoldPiece> pieces;  // at most kMaxPieces
  // A bound on what an admin client can make the registry keep: past it the two pieces that end first
  // become one, which ends at the later of their two ends.
  static constexpr std::size_t kMaxPieces = 64;
};

// A route a control call published for every worker (HoldRegistry::publish_route): each worker applies the
// routes in the order of their `seq`, at its next sync (HeldRequests::sync).
struct PublishedRoute {
  std::uint64_t seq = 0;
  SlotSet slots;
  HostPort node;
};

// What a worker needs of the registry: every held slot, when the first hold ends by itself (0: none), and the
// routes published since the last it applied.
struct HeldSlots {
  SlotSet slots;
  std::uint64_t next_expiry_ms = 0;
  std::vector<PublishedRoute> routes;
};

// Every hold of the process, by owner. Holds whose time is up are removed (and counted as expired) by
// whoever looks next, under the lock: a worker's tick, or any call of the admin thread.
class HoldRegistry {
 public:
  // Places `owner`'s hold on `slots` for `ttl_ms`, or adds them to the one it has: each slot stays held until
  // the latest end of the calls that named it, and its other slots keep their own ends.
  void hold(const std::string& owner, const SlotSet& slots, std::uint64_t ttl_ms, std::uint64_t now_ms);
  // Takes `slots` out of every hold, or out of `owner`'s hold when an owner is given; with no slots given,
  // ends `owner`'s hold entirely. Returns the slots taken out of some hold (whether or not another hold still
  // covers them).
  SlotSet release(const SlotSet* slots, const std::string* owner, std::uint64_t now_ms);
  // With `routes_after`, the routes published after that seq too, taken under the same lock as the holds: a
  // worker that sees a handoff's release sees its route.
  HeldSlots current(std::uint64_t now_ms, std::optional<std::uint64_t> routes_after = std::nullopt);
  // The number of workers, each of which applies every published route (set once, before any route).
  void set_workers(std::size_t workers);
  // ROUTE: every worker points `slots` at `node` at its next sync, in the order published. False when the
  // log already holds kMaxRoutes routes that some worker has not applied: the caller then has every worker
  // sync now rather than later.
  bool publish_route(const SlotSet& slots, const HostPort& node);
  // Worker `worker` has applied every route up to `seq`: those every worker has are dropped.
  void routed(int worker, std::uint64_t seq);
  // Routes published and not yet applied by every worker (for tests).
  std::size_t routes_pending();
  static constexpr std::size_t kMaxRoutes = 256;
  // Past this many the log is compacted to one route per node (publish_locked): its bound in bytes.
  static constexpr std::size_t kCompactRoutes = 4 * kMaxRoutes;
  // Whether `owner` holds every slot of `slots` now.
  bool holds(const std::string& owner, const SlotSet& slots, std::uint64_t now_ms);
  std::vector<Hold> list(std::uint64_t now_ms);
  // The process's hold counters (holds placed, expired, current, longest); written under the lock.
  const Stats& stats() const { return stats_; }
  // Goes up at every hold() and release(), after the change: a worker that reads a generation other than the
  // one it last took the held slots at takes them again (HeldRequests::behind). A hold that ends by its time
  // does not change it: a worker that took that hold times its own look at its end.
  std::uint64_t generation() const { return generation_.load(); }

 private:
  void expire(std::uint64_t now_ms);
  void ended(const Hold& hold, std::uint64_t now_ms);
  // Hold::slots and Hold::expires_ms from its pieces, once empty pieces are gone.
  static void summarize(Hold& hold);
  SlotSet release_locked(const SlotSet* slots, const std::string* owner, std::uint64_t now_ms);
  bool publish_locked(const SlotSet& slots, const HostPort& node);

  std::mutex mutex_;
  std::map<std::string, Hold> holds_;
  Stats stats_;
  std::atomic<std::uint64_t> generation_{0};
  std::vector<PublishedRoute> routes_;  // in seq order
  std::uint64_t next_route_ = 1;
  std::vector<std::uint64_t> routed_;  // per worker: the last route it applied
};

// What one worker answers to a control call.
struct WorkerReport {
  std::size_t queued = 0;      // requests held for the call's slots (HOLD), or for each hold (list)
  std::size_t dispatched = 0;  // held requests sent on (RELEASE)
  bool released = false;       // HOLD: the slots stopped being held before they drained
  std::vector<std::size_t> queued_per_hold;
  std::vector<std::string> at_backend;  // HOLD that did not drain in time: what is still at a backend
};

// A call from the admin thread to every worker. Each worker answers once, on its own loop; the caller waits
// for all of them up to a deadline. Shared, so that a worker may still answer after the caller gave up.
class ControlCall {
 public:
  explicit ControlCall(std::size_t workers) : reports_(workers), answered_(workers, false) {}
  void answer(int worker, WorkerReport report);
  // True once every worker answered; false if the deadline came first.
  bool wait_until(std::chrono::steady_clock::time_point deadline);
  std::vector<WorkerReport> reports();
  // Indexes of the workers that have not answered.
  std::vector<int> missing();

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<WorkerReport> reports_;
  std::vector<bool> answered_;
  std::size_t count_ = 0;
};

// The HTTP status and JSON body of a control request.
struct ControlReply {
  int status = 200;
  std::string body;
};

// The admin endpoint's side: checks a request, changes the registry, runs what each worker must do on the
// worker's loop and waits for the answers. Called on the admin endpoint's threads; never on a worker's.
class SlotControl {
 public:
  explicit SlotControl(Proxy& proxy) : proxy_(proxy) {}

  // A HOLD's fields, checked.
  struct HoldRequest {
    SlotSet slots;
    std::uint64_t ttl_ms = 0;
    std::uint64_t wait_ms = 0;
    std::string owner;
  };

  ControlReply hold(std::string_view body);
  ControlReply route(std::string_view body);
  ControlReply release(std::string_view body);
  // ROUTE, then RELEASE of the same slots, in one call: what a cutover sends once the target owns them (one
  // round trip to each proxy instead of two). The release happens whatever the route's answer, as it does
  // after two separate calls: the held commands then go where the map points, and a MOVED corrects them.
  // The reply is the route's refusal when it refused, else the release's reply with the route's fields.
  //
  // A handoff may carry the next batch's HOLD ("hold": a HOLD's body), placed once the handoff is done and
  // answered in the same reply ("hold": the HOLD's reply, with its "status"): a cutover then costs each proxy
  // one call per batch instead of two. The hold is placed whatever the route check's verdict (they are about
  // other slots), but not after a handoff that took longer than the hold's "place_within_ms" (default: its
  // wait_ms; 409: its caller may have given up on the answer). A malformed request, in either part, is
  // refused before anything is done.
  ControlReply handoff(std::string_view body);
  // A ROUTE's check alone ({"node", "slots"}, the slots optional): answered as a ROUTE of those slots would
  // be (200, or its 400, 409 or 503), and nothing is routed. Asked where a handoff asks, on the connection
  // kept for it: a move checks its target on every proxy while it copies, so that the first batch's handoff
  // does not open hundreds of connections to the target while clients wait, and so that a proxy that cannot
  // reach or vouch for the target is known before any batch.
  ControlReply check(std::string_view body);
  ControlReply list();

  // HOLDs waiting for their drain at once (each up to its wait_ms), those carried by a handoff included: one
  // more is answered 503 at once, so that HOLDs never take every thread of the admin endpoint (the RELEASE
  // that ends them among others). The orchestrator places one hold per batch (with the last batch's handoff,
  // or alone), and one more for a proxy it asks again.
  static constexpr int kMaxWaitingHolds = 4;

  // Longest hold a request may ask for: a dead orchestrator freezes clients for at most this long.
  static constexpr std::uint64_t kMaxTtlMs = 60000;
  // How long a worker may take to run a control operation on its loop (it runs between two callbacks).
  static constexpr std::chrono::milliseconds kWorkerAnswer{5000};
  // How long a HOLD that did not drain waits for the workers to say what is still at a backend.
  static constexpr std::chrono::milliseconds kDescribeAnswer{50};
  // Longest a ROUTE's check of its node may take (route_check.h): the connect timeout, at most this.
  static constexpr std::chrono::milliseconds kRouteCheck{2000};

 private:
  // A handoff's progress, shared by the admin thread and the worker that asks its check.
  struct HandoffState {
    // What the check decided (kDeciding until then): set once, by the worker when its question is answered,
    // or by the admin thread when the check's time ran out first (kGivenUp).
    enum Decision : int { kDeciding, kRouting, kRefused, kCheckHere, kGivenUp };
    std::atomic<int> decision{kDeciding};
    ControlReply refusal;  // kRefused: the reply; written before the decision, read after the call ends
    SlotSet removed;       // written before the first worker's answer, read after the last's
    // The release has begun: by the last worker to route, or by the admin thread when one did not in time.
    std::atomic<bool> released{false};
  };
  // The handoff's release (hand_off_everywhere), once: the slots leave the registry, and every worker with
  // held commands sends them on (`caller`, the worker calling, at once; the others by a post), answering
  // `call`.
  static void release_handed_off(Proxy& proxy, const std::shared_ptr<HandoffState>& state,
                                 const std::shared_ptr<ControlCall>& call, const SlotSet& slots,
                                 Worker* caller);
  // Whether `node` may serve `slots` (route_check.h): nullopt, or the reply that refuses the route.
  std::optional<ControlReply> refuse_route(const SlotSet& slots, const HostPort& node);
  static ControlReply refusal_reply(const RouteVerdict& verdict, const HostPort& node);
  // The route check's time: the connect timeout, at most kRouteCheck.
  std::chrono::milliseconds route_check_time() const;
  // Once the check passed: `slots` are routed to `node` in every worker that must follow at once, then
  // released, and every worker with held commands sends them on, answering `call` (`here`, the worker
  // calling, runs its part at once; the others by a post). Workers with nothing to do take both later.
  static void hand_off_everywhere(Proxy& proxy, const std::shared_ptr<HandoffState>& state,
                                  const std::shared_ptr<ControlCall>& call, const SlotSet& slots,
                                  const HostPort& node, Worker* here);
  // A handoff whose route was refused: the held commands are released to the old owner (but for a 400).
  ControlReply refused_handoff(ControlReply refusal, std::string_view body);
  // Every worker syncs with the registry (`caller`, the worker calling, at once; a worker with nothing held
  // and no dispatch under way is answered for, and syncs at its next dispatch or tick; the others by a post),
  // each answering `call` with the held commands it sent on.
  static void sync_everywhere(Proxy& proxy, const std::shared_ptr<ControlCall>& call, Worker* caller);
  // A handoff checked from the admin thread (check_route), then routed and released by every worker.
  ControlReply handoff_checked_here(std::string_view body, const SlotSet& slots, const HostPort& node);
  // A handoff whose check passed on this thread: routed and released by every worker, and answered.
  ControlReply hand_off_checked(const SlotSet& slots, const HostPort& node);
  // Waits for every worker's sync after a handoff and says what happened.
  ControlReply handoff_answer(const std::shared_ptr<HandoffState>& state,
                              const std::shared_ptr<ControlCall>& call, const SlotSet& slots,
                              const HostPort& node) const;

  // Places the hold, waits for its drain and answers (within kMaxWaitingHolds).
  ControlReply hold_checked(const HoldRequest& request);
  // The handoff alone (a handoff's body without "hold").
  ControlReply hand_off(std::string_view body);
  // Plain TCP toward the cluster: the node's own word asked on this thread's kept connection
  // (admin_questions.h), and the verdict; nullopt when the node must be vouched for by others
  // (check_route).
  std::optional<RouteVerdict> checked_on_this_thread(const SlotSet& slots, const HostPort& node);

  Proxy& proxy_;
  AdminQuestions questions_;
  std::atomic<int> waiting_holds_{0};
};

}  // namespace slotshift::proxy
