// One worker's side of slot holds (slot_control.h is the process's side): which slots are held here, the
// requests kept back for them, and how many requests of each slot are at a backend, so that a HOLD learns
// when the last one has returned.
//
// Where a held request waits: in its client's on-hold queue (Session::on_hold_), in the order the client sent
// its commands, or, once that client is gone, in the worker's orphan queue (a client that wrote and hung up
// still has its writes applied, as a single Redis would). Once a client has a command on hold, every later
// command of that client waits behind it, whatever its slot: the cluster then executes the client's commands
// in the order it sent them, as Redis promises for one connection. The parts of one split command (MGET,
// MSET, DEL, ...) share their place in that order, so a part for a free slot goes out even while a sibling
// part waits. On release each queue is sent on from its front up to the first request whose slot is still
// held.
//
// Drain: every request sent to a shared backend for a slot is counted in at_backend_ until its reply (or its
// connection's failure) comes back, whether or not the client still waits for it; a HOLD is answered once the
// count of its slots reaches zero in every worker. Blocking commands are not counted (they may wait forever):
// when their slot moves the server answers them MOVED and the worker sends them again where the slot went.
//
// The request path pays for all this with one test of active() (a plain bool of this worker), a counter per
// request sent and returned, and the quiet-worker marks below; the rest runs only while this worker has a
// hold or a held request.
//
// A quiet worker is not woken for a control call. In a fleet of sidecars most proxies have nothing for a
// batch's slots, and a call that runs on each worker's loop wakes the admin thread, the worker and the admin
// thread again: on shared cores that was most of what a batch cost the fleet. So the admin thread answers
// for a worker itself when the worker cannot be affected, and the worker takes the registry's new state at
// its next dispatch (or tick). The proof that this keeps the HOLD's promise is two counters read in a fixed
// order against the registry's generation, all sequentially consistent:
//
//   worker (Worker::dispatch):      dispatching += 1; read generation; (sync if it changed); ...; send
//                                   (at_backend += 1); dispatching -= 1
//   admin thread (SlotControl):     change the registry (generation += 1); read dispatching; read at_backend
//
// If the worker read the generation before the admin thread changed it, its `dispatching += 1` came before
// the admin thread's read of it: the admin thread sees the dispatch under way, or (once it ended) the command
// it sent at a backend, or, if that command has returned already, nothing that still needs a fence. Otherwise
// the worker read the new generation and holds the slots itself. A RELEASE likewise reads `dispatching`
// before `attention` (held requests and drains): a request kept for a slot that is released at that moment is
// seen by one side or the other.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "common/slot.h"
#include "proxy/request.h"
#include "proxy/slot_control.h"

namespace slotshift::proxy {

class Worker;
class Session;

class HeldRequests {
 public:
  explicit HeldRequests(Worker& worker) : worker_(worker) {}

  // False unless this worker has a held slot, a held request or a HOLD waiting for its drain.
  bool active() const { return active_; }
  // Whether the worker's fast tick has something here to look at: held requests (their deadlines, their
  // release at an expiry) or a HOLD waiting for its drain. Held slots alone need only their expiry looked at
  // (expiry_ms()): in a fleet of proxies most hold slots no client of theirs asks for, and a 10 ms tick each
  // while they hold was most of their wake-ups in a move.
  bool needs_tick() const { return !sessions_.empty() || !orphans_.empty() || !drains_.empty(); }
  // When the first hold this worker knows of ends by itself (steady_ms()); 0: none.
  std::uint64_t expiry_ms() const { return next_expiry_ms_; }
  // Held commands of clients that have gone: they still run at the release (or end at their deadline).
  bool has_orphans() const { return !orphans_.empty(); }

  // A request for `slot` went to a shared backend / its reply came back (or its connection failed).
  void sent(Slot slot) {
    ++at_backend_[slot];
    at_backend_total_.fetch_add(1);
  }
  void returned(Slot slot) {
    --at_backend_[slot];
    at_backend_total_.fetch_sub(1);
    if (!drains_.empty()) drain_step(slot);
  }

  // Marks a dispatch under way for the whole of Worker::dispatch (nested dispatches count too), and for the
  // whole of sync() and on_tick(), whose releases dispatch held requests in their clients' order.
  class Dispatching {
   public:
    explicit Dispatching(HeldRequests& held)
        : count_(held.dispatching_), outermost_(count_.fetch_add(1) == 0) {}
    ~Dispatching() { count_.fetch_sub(1); }
    Dispatching(const Dispatching&) = delete;
    Dispatching& operator=(const Dispatching&) = delete;
    // Not inside another dispatch (a release sending held requests on): only the outermost one syncs, as a
    // change made after its mark is answered the slow way, by a call on this loop.
    bool outermost() const { return outermost_; }

   private:
    std::atomic<std::uint32_t>& count_;
    bool outermost_;
  };
  // Whether the registry changed since this worker last took its held slots (sync()).
  bool behind() const;
  // Before a choice that follows the slots' owner (a shard subscription picking its node): the routes
  // published since this worker last looked are taken now, rather than at its next tick (10 ms while it has
  // a client). A quiet worker is not woken by a handoff (slot_control.cc), so its map may be one handoff
  // behind when a client asks; the handoff's own check (Worker::quiet_for_handoff) counts the subscriber only
  // once it is in the set. Routes left to a posted sync count too: a dispatch earlier in the same loop turn
  // (the same client's pipelined command, or another client's) took the registry without them. Inside a
  // dispatch nothing is taken: routes wait for a sync of the loop's own there, as in Worker::dispatch.
  void catch_up_outside_dispatch() {
    if ((behind() || sync_posted_) && dispatching_.load() == 0) sync();
  }
  // From the admin thread, once the registry has changed: whether this worker may be answered for without
  // running anything on its loop. For a HOLD: no dispatch under way, no command at a backend, nothing held,
  // no HOLD waiting for a drain. For a RELEASE: no dispatch under way, nothing held, no drain.
  bool quiet_for_hold() const;
  bool quiet_for_release() const;

  // Called by Worker::dispatch while active(): keeps `request` back, and returns true, if it touches a held
  // slot, or if its client has an earlier command on hold (not for a request sent on after a redirect: it
  // already went out once).
  bool hold_if_needed(const RequestPtr& request, bool redirected);

  // Takes the registry's held slots (ending the holds whose time is up) and the routes published since the
  // last sync, and sends on every held request that no longer waits for a held slot. `may_route` false
  // (inside a dispatch): the routes wait for a sync of the loop's own, which is posted, and their slots stay
  // held until then. What it sends on is counted for the next take_sent().
  void sync(bool may_route = true) { sync_held(may_route, /*for_a_change=*/true); }
  // From any thread: the held requests this worker sent on since the last take_sent() by syncs that took the
  // registry at `generation` or later (0 if the last of them took an older one), and forgets them. A
  // RELEASE reports them as what it sent on: its worker may have taken the release by itself, at a dispatch
  // or a tick that came before the call's own sync (or before the admin thread found it quiet). Two calls
  // that overlap may each report some of the other's.
  std::size_t take_sent(std::uint64_t generation);
  // Answers `call` once no request for `slots` is at a backend in this worker (at once if none is), or as
  // soon as the slots stop being held.
  void watch_drain(const SlotSet& slots, std::shared_ptr<ControlCall> call);
  // Requests for `slots` at a backend now, one line each ("eval for hash slot 866 at 127.0.0.1:7000, 812 ms
  // old"), the first 20.
  std::vector<std::string> at_backend(const SlotSet& slots) const;
  // Requests held for `slots`.
  std::size_t queued(const SlotSet& slots) const;

  // Every tick while active(): holds whose time is up, held requests past their deadline, and reading
  // paused for max-held-bytes.
  void on_tick(std::uint64_t now_ms);
  // `session` is closing: its held requests become orphans (blocking ones are dropped with it).
  void session_closing(Session& session);

 private:
  struct Drain {
    SlotSet slots;
    std::size_t remaining = 0;  // requests for `slots` at a backend
    std::shared_ptr<ControlCall> call;
  };

  // sync(); a sync at a hold's expiry (`for_a_change` false) changes nothing a call waits for, and is not
  // counted for take_sent().
  void sync_held(bool may_route, bool for_a_change);
  void keep(const RequestPtr& request, Session* session);
  void forget(const Request& request);
  // Sends on `queue`'s requests from its front, up to the first one whose slot is still held.
  std::size_t release_front(std::deque<RequestPtr>& queue);
  std::size_t release_all();
  // Answers requests of `queue` whose deadline passed with the timeout error. An `ordered` queue is one
  // client's, whose deadlines come in its order.
  void expire_deadlines(std::deque<RequestPtr>& queue, std::uint64_t now_ms, bool ordered);
  void drain_step(Slot slot);
  void update_active();
  static std::size_t cost(const Request& request);

  Worker& worker_;
  bool active_ = false;
  SlotSet held_;
  std::uint64_t synced_generation_ = 0;  // the registry's generation when held_ was taken
  std::uint64_t routed_ = 0;             // the last published route applied here
  bool sync_posted_ = false;             // a sync that may route is posted to this loop
  // Read by the admin thread (see the top of this file).
  std::atomic<std::uint32_t> dispatching_{0};
  std::atomic<std::uint32_t> at_backend_total_{0};
  std::atomic<bool> attention_{false};  // held requests, or a HOLD waiting for a drain
  std::uint64_t next_expiry_ms_ = 0;    // steady_ms() of the first hold to end by itself; 0: none
  // For take_sent(): written by this loop's syncs that send something, read by the admin thread.
  std::mutex sent_mutex_;
  std::size_t sent_ = 0;
  std::uint64_t sent_generation_ = 0;  // the generation the last of those syncs took
  std::array<std::uint32_t, kSlotCount> at_backend_{};
  std::array<std::uint32_t, kSlotCount> queued_{};  // held requests by slot
  std::unordered_set<Session*> sessions_;           // sessions with held requests
  std::deque<RequestPtr> orphans_;
  std::vector<Drain> drains_;
};

}  // namespace slotshift::proxy
