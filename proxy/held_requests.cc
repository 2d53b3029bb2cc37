#include "proxy/held_requests.h"

#include <algorithm>
#include <chrono>

#include "proxy/backend.h"
#include "proxy/errors.h"
#include "proxy/session.h"
#include "proxy/worker.h"

namespace slotshift::proxy {
namespace {

// The client a request (or the command it is a part of) came from; null once that client is gone.
Session* session_of(const Request& r) {
  return r.session ? r.session : (r.parent ? r.parent->session : nullptr);
}

std::uint64_t mono_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

}  // namespace

bool HeldRequests::hold_if_needed(const RequestPtr& r, bool redirected) {
  Session* s = session_of(*r);
  if (s && s->closing_) s = nullptr;
  const bool slot_held = r->has_slot && held_.test(r->slot);
  // Parts of one command share its sequence number: a sibling part on hold does not hold a part back.
  const bool behind = !redirected && s && !s->on_hold_.empty() && s->on_hold_.front()->seq < r->seq;
  if (!slot_held && !behind) return false;
  keep(r, s);
  return true;
}

void HeldRequests::keep(const RequestPtr& r, Session* s) {
  Stats& stats = worker_.stats();
  stats.requests_held.add();
  stats.held_requests.add();
  stats.held_request_bytes.add(cost(*r));
  if (r->has_slot) ++queued_[r->slot];
  active_ = true;
  attention_.store(true);  // before the dispatch that keeps it ends: see the top of held_requests.h
  if (!s) {
    orphans_.push_back(r);
    return;
  }
  // In the client's order. A request sent on after a redirect is older than what its client has on hold
  // already, and goes before it.
  auto& q = s->on_hold_;
  if (q.empty() || q.back()->seq <= r->seq) {
    q.push_back(r);
  } else {
    const auto at = std::upper_bound(q.begin(), q.end(), r->seq,
                                     [](std::uint64_t seq, const RequestPtr& x) { return seq < x->seq; });
    q.insert(at, r);
  }
  sessions_.insert(s);
  s->pause_or_resume_reading();
}

void HeldRequests::forget(const Request& r) {
  Stats& stats = worker_.stats();
  stats.held_requests.sub();
  stats.held_request_bytes.sub(cost(r));
  if (r.has_slot) --queued_[r.slot];
}

std::size_t HeldRequests::cost(const Request& r) {
  return sizeof(Request) + r.wire.size();
}

std::size_t HeldRequests::release_front(std::deque<RequestPtr>& queue) {
  std::size_t sent = 0;
  while (!queue.empty()) {
    const RequestPtr r = queue.front();
    if (!r->done && r->has_slot && held_.test(r->slot)) break;
    queue.pop_front();
    forget(*r);
    if (r->done) continue;
    // Nothing older of its client waits any more, and its slot is free: dispatch sends it.
    worker_.dispatch(r);
    ++sent;
  }
  return sent;
}

std::size_t HeldRequests::release_all() {
  std::size_t sent = 0;
  const std::vector<Session*> sessions(sessions_.begin(), sessions_.end());
  for (Session* s : sessions) {
    if (!sessions_.contains(s)) continue;  // closed meanwhile: its requests are orphans now
    sent += release_front(s->on_hold_);
    if (s->on_hold_.empty()) sessions_.erase(s);
    s->pause_or_resume_reading();
  }
  sent += release_front(orphans_);
  return sent;
}

bool HeldRequests::behind() const {
  return worker_.proxy().holds().generation() != synced_generation_;
}

bool HeldRequests::quiet_for_hold() const {
  // In this order (held_requests.h): the dispatch mark first.
  if (dispatching_.load() != 0) return false;
  return at_backend_total_.load() == 0 && !attention_.load();
}

bool HeldRequests::quiet_for_release() const {
  if (dispatching_.load() != 0) return false;
  return !attention_.load();
}

std::size_t HeldRequests::take_sent(std::uint64_t generation) {
  const std::lock_guard lock(sent_mutex_);
  const std::size_t sent = sent_generation_ >= generation ? sent_ : 0;
  sent_ = 0;
  return sent;
}

void HeldRequests::sync_held(bool may_route, bool for_a_change) {
  // The requests it sends on are dispatched inside this mark, so that none of those dispatches syncs again
  // (and sends a later request of the same client first, from within this one's release).
  const Dispatching mark(*this);
  HoldRegistry& registry = worker_.proxy().holds();
  // The generation before the holds: a change made in between is taken again at the next look.
  synced_generation_ = registry.generation();
  HeldSlots now = registry.current(steady_ms(), routed_);
  if (!now.routes.empty() && may_route) {
    // Before the release below: a handoff's held requests go where its route points.
    for (const PublishedRoute& r : now.routes)
      worker_.router().route(r.slots, r.node);
    routed_ = now.routes.back().seq;
    registry.routed(worker_.index(), routed_);
  } else if (!now.routes.empty()) {
    // Inside a dispatch a route must not be applied: it tells every follower of the slots' owner
    // (owners_changed: subscribers, trackers, monitors), in the middle of some client's command. Its slots
    // stay held here until the sync posted now, at this loop's next turn.
    for (const PublishedRoute& r : now.routes)
      now.slots |= r.slots;
    if (!sync_posted_) {
      sync_posted_ = worker_.post([this] {
        sync_posted_ = false;
        sync();
      });
    }
  }
  SlotSet freed = held_;
  freed -= now.slots;
  held_ = now.slots;
  next_expiry_ms_ = now.next_expiry_ms;
  // A HOLD whose slots stopped being held before they drained learns it at once (its caller answers 409).
  for (std::size_t i = 0; i < drains_.size();) {
    if (held_.contains(drains_[i].slots)) {
      ++i;
      continue;
    }
    auto call = std::move(drains_[i].call);
    drains_.erase(drains_.begin() + static_cast<std::ptrdiff_t>(i));
    WorkerReport report;
    report.released = true;
    call->answer(worker_.index(), std::move(report));
  }
  const std::size_t sent = freed.any() ? release_all() : 0;
  if (sent > 0 && for_a_change) {
    // Before update_active(): an admin thread that finds this worker quiet takes the count after.
    const std::lock_guard lock(sent_mutex_);
    sent_ += sent;
    sent_generation_ = synced_generation_;
  }
  update_active();
}

void HeldRequests::watch_drain(const SlotSet& slots, std::shared_ptr<ControlCall> call) {
  WorkerReport report;
  if (!held_.contains(slots)) {
    report.released = true;
    call->answer(worker_.index(), std::move(report));
    return;
  }
  std::size_t remaining = 0;
  slots.for_each([&](Slot s) { remaining += at_backend_[s]; });
  if (remaining == 0) {
    report.queued = queued(slots);
    call->answer(worker_.index(), std::move(report));
    return;
  }
  drains_.push_back(Drain{slots, remaining, std::move(call)});
  active_ = true;
  attention_.store(true);
}

void HeldRequests::drain_step(Slot slot) {
  for (std::size_t i = 0; i < drains_.size();) {
    Drain& d = drains_[i];
    if (!d.slots.test(slot) || --d.remaining > 0) {
      ++i;
      continue;
    }
    WorkerReport report;
    report.queued = queued(d.slots);
    auto call = std::move(d.call);
    drains_.erase(drains_.begin() + static_cast<std::ptrdiff_t>(i));
    call->answer(worker_.index(), std::move(report));
  }
  update_active();
}

std::vector<std::string> HeldRequests::at_backend(const SlotSet& slots) const {
  std::vector<std::string> out;
  const std::uint64_t now = mono_ns();
  for (const auto& [key, backend] : worker_.backends_) {
    for (const auto& p : backend->pending_) {
      if (!p.counted || !slots.test(p.slot)) continue;
      if (out.size() >= 20) return out;
      std::string line = (p.request ? p.request->name : std::string("?")) + " for hash slot " +
                         std::to_string(p.slot) + " at " + backend->name();
      if (p.request && now > p.request->start_ns) {
        line += ", " + std::to_string((now - p.request->start_ns) / 1000000) + " ms old";
      }
      out.push_back(std::move(line));
    }
  }
  return out;
}

std::size_t HeldRequests::queued(const SlotSet& slots) const {
  std::size_t n = 0;
  slots.for_each([&](Slot s) { n += queued_[s]; });
  return n;
}

void HeldRequests::expire_deadlines(std::deque<RequestPtr>& queue, std::uint64_t now_ms, bool ordered) {
  for (auto it = queue.begin(); it != queue.end();) {
    const RequestPtr r = *it;
    if (r->done) {
      forget(*r);
      it = queue.erase(it);
      continue;
    }
    if (r->deadline_ms == 0 || r->deadline_ms > now_ms) {
      // A client's queue is in the order of its commands, so of their deadlines (blocking commands have
      // none).
      if (ordered && r->deadline_ms != 0) break;
      ++it;
      continue;
    }
    forget(*r);
    it = queue.erase(it);
    worker_.stats().errors_timeout.add();
    const bool slot_held = r->has_slot && held_.test(r->slot);
    worker_.complete(
        r, errors::timeout(slot_held ? "held for a slot move (hash slot " + std::to_string(r->slot) + ")"
                                     : std::string("held for a slot move (behind an earlier "
                                                   "command of this client)")));
  }
}

void HeldRequests::on_tick(std::uint64_t now_ms) {
  const Dispatching mark(*this);  // as in sync(): the releases below must not sync from their dispatches
  if (next_expiry_ms_ != 0 && steady_ms() >= next_expiry_ms_)
    sync_held(/*may_route=*/true, /*for_a_change=*/false);
  const std::vector<Session*> sessions(sessions_.begin(), sessions_.end());
  for (Session* s : sessions) {
    if (!sessions_.contains(s)) continue;
    expire_deadlines(s->on_hold_, now_ms, true);
    release_front(s->on_hold_);
    if (s->on_hold_.empty()) sessions_.erase(s);
    // Other workers' releases may have brought the process back under max-held-bytes.
    s->pause_or_resume_reading();
  }
  expire_deadlines(orphans_, now_ms, false);
  release_front(orphans_);
  update_active();
}

void HeldRequests::session_closing(Session& session) {
  for (auto& r : session.on_hold_) {
    if (r->blocking) {
      // Never sent, and nobody waits for it any more: dropped, as dispatch drops a blocking command whose
      // client is gone.
      forget(*r);
      r->done = true;
      continue;
    }
    orphans_.push_back(std::move(r));
  }
  session.on_hold_.clear();
  sessions_.erase(&session);
  update_active();
}

void HeldRequests::update_active() {
  active_ = held_.any() || !sessions_.empty() || !orphans_.empty() || !drains_.empty();
  attention_.store(!sessions_.empty() || !orphans_.empty() || !drains_.empty());
}

}  // namespace slotshift::proxy
