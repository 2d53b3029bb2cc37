#include "proxy/slot_control.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "common/host_port.h"
#include "common/topology.h"
#include "proxy/held_requests.h"
#include "proxy/route_check.h"
#include "proxy/worker.h"

namespace slotshift::proxy {
namespace {

using nlohmann::json;

ControlReply reply(int status, const json& body) {
  return {status, body.dump() + "\n"};
}

ControlReply error_reply(int status, std::string message) {
  return reply(status, json{{"error", std::move(message)}});
}

// The request's JSON object, or the 400 reply that says why there is none.
std::optional<json> parse_body(std::string_view body, ControlReply& error) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    error = error_reply(
        400, "the body must be a JSON object, such as {\"slots\": \"0-100,200\", \"ttl_ms\": 2000}");
    return std::nullopt;
  }
  return j;
}

// "slots" of `j` as a slot set; nullopt and a 400 reply when it is missing or malformed.
std::optional<SlotSet> slots_field(const json& j, ControlReply& error) {
  if (!j.contains("slots")) {
    error = error_reply(400, "'slots' is required: a string of slots and ranges such as \"0-100,200\"");
    return std::nullopt;
  }
  if (!j["slots"].is_string()) {
    error = error_reply(400, "'slots' must be a string of slots and ranges such as \"0-100,200\"");
    return std::nullopt;
  }
  std::string why;
  auto slots = SlotSet::parse(j["slots"].get<std::string>(), why);
  if (!slots) error = error_reply(400, "'slots': " + why);
  return slots;
}

// A whole number of milliseconds in [min, max] from `field`; nullopt and a 400 reply otherwise.
std::optional<std::uint64_t> ms_field(const json& j, const char* field, std::uint64_t min, std::uint64_t max,
                                      ControlReply& error) {
  const json& v = j[field];
  if (!v.is_number_integer() || v.get<std::int64_t>() < static_cast<std::int64_t>(min) ||
      v.get<std::int64_t>() > static_cast<std::int64_t>(max)) {
    error = error_reply(400, "'" + std::string(field) + "' must be a whole number of milliseconds from " +
                                 std::to_string(min) + " to " + std::to_string(max));
    return std::nullopt;
  }
  return static_cast<std::uint64_t>(v.get<std::int64_t>());
}

std::optional<std::string> owner_field(const json& j, ControlReply& error) {
  if (!j.contains("owner")) return std::string();
  if (!j["owner"].is_string()) {
    error = error_reply(400, "'owner' must be a string");
    return std::nullopt;
  }
  return j["owner"].get<std::string>();
}

struct RouteRequest {
  SlotSet slots;
  HostPort node;
};

// "node" of a ROUTE, a handoff or a check; nullopt and a 400 reply when it is missing or malformed.
std::optional<HostPort> node_field(const json& j, ControlReply& error) {
  if (!j.contains("node") || !j["node"].is_string()) {
    error = error_reply(400, "'node' is required: the new owner as \"HOST:PORT\"");
    return std::nullopt;
  }
  std::string why;
  auto node = parse_host_port(j["node"].get<std::string>(), why);
  if (!node) error = error_reply(400, "'node': " + why);
  return node;
}

// "slots" and "node" of a ROUTE or a handoff; nullopt and a 400 reply when either is missing or malformed.
std::optional<RouteRequest> route_fields(const json& j, ControlReply& error) {
  auto slots = slots_field(j, error);
  if (!slots) return std::nullopt;
  auto node = node_field(j, error);
  if (!node) return std::nullopt;
  return RouteRequest{std::move(*slots), std::move(*node)};
}

std::string worker_list(const std::vector<int>& workers) {
  std::string out;
  for (int w : workers)
    out += (out.empty() ? "" : ", ") + std::to_string(w);
  return out;
}

double round_ms(double ms) {
  return std::round(ms * 1000.0) / 1000.0;
}

}  // namespace

std::uint64_t steady_ms() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

// ---------------------------------------------------------------------------------------------------------------
// SlotSet

std::optional<SlotSet> SlotSet::parse(std::string_view text, std::string& error) {
  const auto slots = parse_slot_list(text, error);
  if (!slots) return std::nullopt;
  SlotSet out;
  for (const Slot s : *slots)
    out.set(s);
  return out;
}

std::string SlotSet::str() const {
  std::vector<SlotRange> ranges;
  for_each([&ranges](Slot s) {
    if (!ranges.empty() && ranges.back().last + 1u == s) {
      ranges.back().last = s;
    } else {
      ranges.push_back({s, s});
    }
  });
  std::string out = format_slot_ranges(ranges);
  std::replace(out.begin(), out.end(), ' ', ',');
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// HoldRegistry

void HoldRegistry::hold(const std::string& owner, const SlotSet& slots, std::uint64_t ttl_ms,
                        std::uint64_t now_ms) {
  std::lock_guard lock(mutex_);
  expire(now_ms);
  auto [it, fresh] = holds_.try_emplace(owner);
  Hold& h = it->second;
  if (fresh) {
    h.owner = owner;
    h.placed_ms = now_ms;
  }
  const std::uint64_t end = now_ms + ttl_ms;
  // Slots named again are held by this call now; a piece that would end later keeps them too.
  for (HoldPiece& piece : h.pieces)
    if (piece.expires_ms <= end) piece.slots -= slots;
  h.pieces.push_back({slots, end});
  if (h.pieces.size() > Hold::kMaxPieces) {
    std::sort(h.pieces.begin(), h.pieces.end(),
              [](const HoldPiece& a, const HoldPiece& b) { return a.expires_ms < b.expires_ms; });
    h.pieces[1].slots |= h.pieces[0].slots;
    h.pieces.erase(h.pieces.begin());
  }
  summarize(h);
  stats_.holds_placed.add();
  stats_.holds_current.set(holds_.size());
  generation_.fetch_add(1);
}

SlotSet HoldRegistry::release(const SlotSet* slots, const std::string* owner, std::uint64_t now_ms) {
  std::lock_guard lock(mutex_);
  const SlotSet removed = release_locked(slots, owner, now_ms);
  generation_.fetch_add(1);
  return removed;
}

bool HoldRegistry::publish_route(const SlotSet& slots, const HostPort& node) {
  std::lock_guard lock(mutex_);
  const bool room = publish_locked(slots, node);
  generation_.fetch_add(1);
  return room;
}

bool HoldRegistry::publish_locked(const SlotSet& slots, const HostPort& node) {
  routes_.push_back({next_route_++, slots, node});
  if (routes_.size() > kCompactRoutes) {
    // A worker that does not apply them (its loop stuck) must not make the log grow without bound: the
    // routes become one per node, each slot where its last route sends it, and every worker applies them all
    // again. Applying a route twice is harmless, but where a MOVED taught a worker a newer owner since:
    // that worker meets the MOVED once more, and follows it.
    std::vector<PublishedRoute> merged;
    SlotSet covered;
    for (auto it = routes_.rbegin(); it != routes_.rend(); ++it) {
      SlotSet mine = it->slots;
      mine -= covered;
      covered |= it->slots;
      if (mine.none()) continue;
      const auto same = std::find_if(merged.begin(), merged.end(),
                                     [&it](const PublishedRoute& m) { return m.node == it->node; });
      if (same != merged.end()) {
        same->slots |= mine;
      } else {
        merged.push_back({0, mine, it->node});
      }
    }
    // Their slots do not overlap: any order does.
    for (PublishedRoute& m : merged)
      m.seq = next_route_++;
    routes_ = std::move(merged);
  }
  return routes_.size() <= kMaxRoutes;
}

void HoldRegistry::set_workers(std::size_t workers) {
  std::lock_guard lock(mutex_);
  routed_.assign(workers, 0);
}

void HoldRegistry::routed(int worker, std::uint64_t seq) {
  std::lock_guard lock(mutex_);
  const auto w = static_cast<std::size_t>(worker);
  if (w < routed_.size()) routed_[w] = std::max(routed_[w], seq);
  const std::uint64_t everywhere =
      routed_.empty() ? next_route_ : *std::min_element(routed_.begin(), routed_.end());
  std::erase_if(routes_, [everywhere](const PublishedRoute& r) { return r.seq <= everywhere; });
}

std::size_t HoldRegistry::routes_pending() {
  std::lock_guard lock(mutex_);
  return routes_.size();
}

SlotSet HoldRegistry::release_locked(const SlotSet* slots, const std::string* owner, std::uint64_t now_ms) {
  expire(now_ms);
  SlotSet removed;
  for (auto it = holds_.begin(); it != holds_.end();) {
    Hold& h = it->second;
    if (owner && h.owner != *owner) {
      ++it;
      continue;
    }
    SlotSet taken = h.slots;
    if (slots) taken &= *slots;
    removed |= taken;
    for (HoldPiece& piece : h.pieces)
      piece.slots -= taken;
    summarize(h);
    if (h.slots.none()) {
      ended(h, now_ms);
      it = holds_.erase(it);
    } else {
      ++it;
    }
  }
  stats_.holds_current.set(holds_.size());
  return removed;
}

HeldSlots HoldRegistry::current(std::uint64_t now_ms, std::optional<std::uint64_t> routes_after) {
  std::lock_guard lock(mutex_);
  expire(now_ms);
  HeldSlots out;
  if (routes_after) {
    for (const PublishedRoute& r : routes_)
      if (r.seq > *routes_after) out.routes.push_back(r);
  }
  for (const auto& [owner, h] : holds_) {
    out.slots |= h.slots;
    for (const HoldPiece& piece : h.pieces)
      if (out.next_expiry_ms == 0 || piece.expires_ms < out.next_expiry_ms)
        out.next_expiry_ms = piece.expires_ms;
  }
  return out;
}

bool HoldRegistry::holds(const std::string& owner, const SlotSet& slots, std::uint64_t now_ms) {
  std::lock_guard lock(mutex_);
  expire(now_ms);
  const auto it = holds_.find(owner);
  return it != holds_.end() && it->second.slots.contains(slots);
}

std::vector<Hold> HoldRegistry::list(std::uint64_t now_ms) {
  std::lock_guard lock(mutex_);
  expire(now_ms);
  std::vector<Hold> out;
  for (const auto& [owner, h] : holds_)
    out.push_back(h);
  return out;
}

void HoldRegistry::expire(std::uint64_t now_ms) {
  for (auto it = holds_.begin(); it != holds_.end();) {
    Hold& h = it->second;
    if (h.expires_ms > now_ms) {
      // Its pieces whose time is up end alone; the hold goes on with the others.
      if (std::erase_if(h.pieces, [now_ms](const HoldPiece& piece) { return piece.expires_ms <= now_ms; }) >
          0)
        summarize(h);
      ++it;
      continue;
    }
    stats_.holds_expired.add();
    ended(h, h.expires_ms);
    it = holds_.erase(it);
  }
  stats_.holds_current.set(holds_.size());
}

void HoldRegistry::summarize(Hold& hold) {
  std::erase_if(hold.pieces, [](const HoldPiece& piece) { return piece.slots.none(); });
  hold.slots = SlotSet{};
  hold.expires_ms = 0;
  for (const HoldPiece& piece : hold.pieces) {
    hold.slots |= piece.slots;
    hold.expires_ms = std::max(hold.expires_ms, piece.expires_ms);
  }
}

void HoldRegistry::ended(const Hold& hold, std::uint64_t end_ms) {
  const std::uint64_t lasted = end_ms > hold.placed_ms ? end_ms - hold.placed_ms : 0;
  if (lasted > stats_.hold_longest_ms.get()) stats_.hold_longest_ms.set(lasted);
}

// ---------------------------------------------------------------------------------------------------------------
// ControlCall

void ControlCall::answer(int worker, WorkerReport report) {
  std::lock_guard lock(mutex_);
  const auto w = static_cast<std::size_t>(worker);
  if (w >= reports_.size() || answered_[w]) return;
  reports_[w] = std::move(report);
  answered_[w] = true;
  if (++count_ == reports_.size()) cv_.notify_all();
}

bool ControlCall::wait_until(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mutex_);
  return cv_.wait_until(lock, deadline, [this] { return count_ == reports_.size(); });
}

std::vector<WorkerReport> ControlCall::reports() {
  std::lock_guard lock(mutex_);
  return reports_;
}

std::vector<int> ControlCall::missing() {
  std::lock_guard lock(mutex_);
  std::vector<int> out;
  for (std::size_t w = 0; w < answered_.size(); ++w) {
    if (!answered_[w]) out.push_back(static_cast<int>(w));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// SlotControl

namespace {

// A HOLD's fields from `j` (a HOLD's body, or the "hold" of a handoff's); nullopt and a 400 reply when one
// is missing or malformed.
std::optional<SlotControl::HoldRequest> hold_fields(const json& j, ControlReply& error) {
  auto slots = slots_field(j, error);
  if (!slots) return std::nullopt;
  if (!j.contains("ttl_ms")) {
    error = error_reply(400, "'ttl_ms' is required: the hold ends by itself after it (at most " +
                                 std::to_string(SlotControl::kMaxTtlMs) + " ms)");
    return std::nullopt;
  }
  const auto ttl = ms_field(j, "ttl_ms", 1, SlotControl::kMaxTtlMs, error);
  if (!ttl) return std::nullopt;
  std::optional<std::uint64_t> wait = *ttl;
  if (j.contains("wait_ms")) wait = ms_field(j, "wait_ms", 0, SlotControl::kMaxTtlMs, error);
  if (!wait) return std::nullopt;
  auto owner = owner_field(j, error);
  if (!owner) return std::nullopt;
  return SlotControl::HoldRequest{std::move(*slots), *ttl, *wait, std::move(*owner)};
}

}  // namespace

ControlReply SlotControl::hold(std::string_view body) {
  ControlReply error;
  const auto j = parse_body(body, error);
  if (!j) return error;
  const auto request = hold_fields(*j, error);
  if (!request) return error;
  return hold_checked(*request);
}

ControlReply SlotControl::hold_checked(const HoldRequest& request) {
  struct Waiting {
    std::atomic<int>& n;
    ~Waiting() { --n; }
  } waiting{waiting_holds_};
  if (++waiting_holds_ > kMaxWaitingHolds) {
    return error_reply(503,
                       std::to_string(kMaxWaitingHolds) +
                           " HOLDs are already waiting for their drain; try again once one has answered");
  }
  const auto& [slots, ttl, wait, owner] = request;
  // From here on no worker sends a new command for the slots: each takes the new held set on its loop, then
  // counts down the commands it has at a backend for them.
  HoldRegistry& registry = proxy_.holds();
  registry.hold(owner, slots, ttl, steady_ms());
  const auto start = std::chrono::steady_clock::now();
  const auto& workers = proxy_.workers();
  auto call = std::make_shared<ControlCall>(workers.size());
  for (const auto& w : workers) {
    Worker* worker = w.get();
    // A worker with nothing at a backend, nothing held and no dispatch under way has drained already, and
    // takes the hold at its next dispatch: it is not woken (held_requests.h).
    if (worker->held().quiet_for_hold()) {
      call->answer(worker->index(), {});
      continue;
    }
    const bool posted = worker->post([worker, call, s = slots] {
      worker->held().sync();
      worker->held().watch_drain(s, call);
    });
    if (!posted) call->answer(worker->index(), {});  // a stopped worker has nothing at a backend
  }
  const bool drained = call->wait_until(start + std::chrono::milliseconds(wait));
  const double drained_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

  if (!drained) {
    // The fence cannot be promised: give the slots back at once (clients must not wait on a cutover that will
    // not happen), and say what kept them.
    registry.release(&slots, &owner, steady_ms());
    auto describe = std::make_shared<ControlCall>(workers.size());
    for (const auto& w : workers) {
      Worker* worker = w.get();
      const bool posted = worker->post([worker, describe, s = slots] {
        WorkerReport report;
        report.at_backend = worker->held().at_backend(s);
        worker->held().sync();
        describe->answer(worker->index(), std::move(report));
      });
      if (!posted) describe->answer(worker->index(), {});
    }
    // Callers give a HOLD little more than wait_ms: the 504 must not wait long for the description.
    describe->wait_until(std::chrono::steady_clock::now() + kDescribeAnswer);
    json at_backend = json::array();
    for (const auto& r : describe->reports()) {
      for (const auto& line : r.at_backend)
        at_backend.push_back(line);
    }
    std::string what = at_backend.empty()
                           ? std::string("nothing left at a backend by now")
                           : std::to_string(at_backend.size()) + " command(s) still at a backend, " +
                                 "first: " + at_backend[0].get<std::string>();
    const auto silent = call->missing();
    if (at_backend.empty() && !silent.empty()) what = "worker(s) " + worker_list(silent) + " did not answer";
    return reply(504,
                 json{{"error", "slots " + slots.str() + " did not drain within " + std::to_string(wait) +
                                    " ms (" + what + "); the hold on them was released"},
                      {"slots", slots.str()},
                      {"at_backend", at_backend}});
  }

  std::size_t queued = 0;
  bool released = false;
  for (const auto& r : call->reports()) {
    queued += r.queued;
    released = released || r.released;
  }
  if (released || !registry.holds(owner, slots, steady_ms())) {
    return error_reply(409, "the hold on slots " + slots.str() +
                                " was released or expired before the commands in flight for them returned");
  }
  std::uint64_t expires_in = 0;
  for (const Hold& h : registry.list(steady_ms())) {
    if (h.owner == owner) expires_in = h.expires_ms - std::min(h.expires_ms, steady_ms());
  }
  return reply(200, json{{"held", slots.str()},
                         {"drained_ms", round_ms(drained_ms)},
                         {"queued", queued},
                         {"owner", owner},
                         {"expires_in_ms", expires_in}});
}

std::optional<ControlReply> SlotControl::refuse_route(const SlotSet& slots, const HostPort& node) {
  // A ROUTE moves every client's commands for the slots at once, and no MOVED would correct a wrong one: the
  // cluster must agree before any worker follows it (route_check.h). It costs one command to the node per
  // ROUTE (on a kept connection: a new one only the first time), within the connect timeout; the orchestrator
  // sends one ROUTE per batch.
  const RouteVerdict verdict =
      check_route(slots, node, proxy_.topology(), proxy_.config().seeds, route_check_time(),
                  [this](const HostPort& n, std::string command, int replies,
                         std::chrono::steady_clock::time_point deadline, std::string& failure) {
                    return proxy_.ask_node(n, std::move(command), deadline, failure, replies);
                  });
  if (verdict.ok()) return std::nullopt;
  return refusal_reply(verdict, node);
}

ControlReply SlotControl::refusal_reply(const RouteVerdict& verdict, const HostPort& node) {
  json refusal{{"error", verdict.error + "; nothing was routed"}, {"node", node.str()}};
  if (verdict.not_owned.any()) refusal["not_owned"] = verdict.not_owned.str();
  return reply(verdict.status, refusal);
}

std::chrono::milliseconds SlotControl::route_check_time() const {
  return std::min(proxy_.config().connect_timeout, kRouteCheck);
}

ControlReply SlotControl::route(std::string_view body) {
  ControlReply error;
  const auto j = parse_body(body, error);
  if (!j) return error;
  const auto request = route_fields(*j, error);
  if (!request) return error;
  const auto& [slots, node] = *request;
  if (auto refusal = refuse_route(slots, node)) return std::move(*refusal);

  // Published, then taken by every worker now: in the one order of every route and handoff (a worker applies
  // them in the order published).
  proxy_.holds().publish_route(slots, node);
  const auto& workers = proxy_.workers();
  auto call = std::make_shared<ControlCall>(workers.size());
  for (const auto& w : workers) {
    Worker* worker = w.get();
    const bool posted = worker->post([worker, call] {
      worker->held().sync();
      call->answer(worker->index(), {});
    });
    if (!posted) {
      // A stopped worker serves no client, and routes nothing again.
      proxy_.holds().routed(worker->index(), std::numeric_limits<std::uint64_t>::max());
      call->answer(worker->index(), {});
    }
  }
  if (!call->wait_until(std::chrono::steady_clock::now() + kWorkerAnswer)) {
    return error_reply(503, "worker(s) " + worker_list(call->missing()) + " did not take the route within " +
                                std::to_string(kWorkerAnswer.count()) + " ms");
  }
  return reply(200, json{{"routed", slots.str()}, {"node", node.str()}});
}

ControlReply SlotControl::release(std::string_view body) {
  ControlReply error;
  const auto j = parse_body(body, error);
  if (!j) return error;
  const bool has_slots = j->contains("slots");
  const auto slots = has_slots ? slots_field(*j, error) : std::nullopt;
  if (has_slots && !slots) return error;
  const bool has_owner = j->contains("owner");
  const auto owner = owner_field(*j, error);
  if (!owner) return error;
  if (!has_slots && !has_owner) {
    return error_reply(400, "give 'slots' (\"0-100,200\") or 'owner' (everything that owner holds), or both");
  }

  const SlotSet removed =
      proxy_.holds().release(has_slots ? &*slots : nullptr, has_owner ? &*owner : nullptr, steady_ms());
  auto call = std::make_shared<ControlCall>(proxy_.workers().size());
  sync_everywhere(proxy_, call, nullptr);
  const bool all = call->wait_until(std::chrono::steady_clock::now() + kWorkerAnswer);
  std::size_t dispatched = 0;
  for (const auto& r : call->reports())
    dispatched += r.dispatched;
  if (!all) {
    return error_reply(503, "released, but worker(s) " + worker_list(call->missing()) +
                                " did not answer within " + std::to_string(kWorkerAnswer.count()) + " ms (" +
                                std::to_string(dispatched) + " held command(s) sent on so far)");
  }
  return reply(200, json{{"released", has_slots ? slots->str() : removed.str()},
                         {"dispatched", dispatched},
                         {"were_held", removed.str()}});
}

ControlReply SlotControl::handoff(std::string_view body) {
  const auto start = std::chrono::steady_clock::now();
  ControlReply error;
  auto j = parse_body(body, error);
  if (!j) return error;
  if (!j->contains("hold")) return hand_off(body);
  // Both parts checked before anything is done: a malformed request is the caller's mistake, and neither
  // the handoff nor the hold it came with is half done.
  if (!(*j)["hold"].is_object())
    return error_reply(400, "'hold' must be a HOLD's body, such as {\"slots\": \"0-100\", \"ttl_ms\": 2000}");
  // A HOLD's own 400, said of the "hold" field.
  const auto in_hold = [](const ControlReply& e) {
    return error_reply(400, "'hold': " + json::parse(e.body)["error"].get<std::string>());
  };
  const auto next = hold_fields((*j)["hold"], error);
  if (!next) return in_hold(error);
  // How long the handoff may take for the hold still to be placed: its caller's word (it knows how long it
  // waits for the answer), else the hold's own wait.
  std::uint64_t within_ms = next->wait_ms;
  if ((*j)["hold"].contains("place_within_ms")) {
    const auto within = ms_field((*j)["hold"], "place_within_ms", 0, kMaxTtlMs, error);
    if (!within) return in_hold(error);
    within_ms = *within;
  }
  if (j->contains("owner")) return error_reply(400, "'owner' is not taken here: a handoff releases 'slots'");
  if (!route_fields(*j, error)) return error;
  j->erase("hold");
  // The handoff first: its held clients have waited since the claim; the next batch's have not begun to.
  ControlReply out = hand_off(j->dump());
  // A handoff that took longer than that (a route check that waited for its node, workers slow to route)
  // may have outlasted what its caller waits for the answer: a hold placed now might be one nobody
  // releases, and would keep its clients waiting until its ttl. It is not placed; the caller asks again
  // with a HOLD of its own if it still wants it.
  const auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  const ControlReply held =
      took.count() > static_cast<std::int64_t>(within_ms)
          ? error_reply(409, "the hold of slots " + next->slots.str() + " was not placed: the handoff took " +
                                 std::to_string(took.count()) + " ms, more than the " +
                                 std::to_string(within_ms) + " ms within which it was to be placed")
          : hold_checked(*next);
  json combined = json::parse(out.body, nullptr, false);
  if (!combined.is_object()) combined = json{{"error", out.body}};
  json hold_part = json::parse(held.body, nullptr, false);
  if (!hold_part.is_object()) hold_part = json{{"error", held.body}};
  hold_part["status"] = held.status;
  combined["hold"] = std::move(hold_part);
  return reply(out.status, combined);
}

std::optional<RouteVerdict> SlotControl::checked_on_this_thread(const SlotSet& slots, const HostPort& node) {
  const Config config = proxy_.config();
  const LoginPtr login = own_login(config.masteruser, config.masterauth);
  std::string why;
  const auto reply = questions_.ask(node, route_question(), kRouteQuestionReplies, login,
                                    std::chrono::steady_clock::now() + route_check_time(), why);
  return verdict_from_own_reply(slots, node, proxy_.topology(), reply, why);
}

ControlReply SlotControl::check(std::string_view body) {
  ControlReply error;
  const auto j = parse_body(body, error);
  if (!j) return error;
  // No slots: whether the node is one of the cluster's, and the connection a handoff to it asks on opened.
  std::optional<SlotSet> slots = SlotSet{};
  if (j->contains("slots")) slots = slots_field(*j, error);
  if (!slots) return error;
  const auto node_given = node_field(*j, error);
  if (!node_given) return error;
  const HostPort& node = *node_given;
  // Asked where a handoff asks (hand_off()), so that the connection it opens is the one the handoff finds.
  const auto verdict =
      proxy_.backend_tls() ? std::optional<RouteVerdict>() : checked_on_this_thread(*slots, node);
  if (verdict && !verdict->ok()) return refusal_reply(*verdict, node);
  if (!verdict) {
    if (auto refusal = refuse_route(*slots, node)) return std::move(*refusal);
  }
  return reply(200, json{{"node", node.str()}, {"owns", slots->str()}});
}

ControlReply SlotControl::hand_off(std::string_view body) {
  ControlReply error;
  const auto j = parse_body(body, error);
  if (!j) return error;
  if (j->contains("owner")) return error_reply(400, "'owner' is not taken here: a handoff releases 'slots'");
  // A body the route refuses as malformed releases nothing: the caller made a mistake, not the cluster.
  const auto request = route_fields(*j, error);
  if (!request) return error;
  const auto& [slots, node] = *request;

  // Over plain TCP the check is asked from this thread, on a connection of its own (admin_questions.h): in a
  // fleet of proxies sharing cores, what a handoff costs is mostly its wake-ups, and this way it wakes this
  // thread once more for the reply and no worker that has nothing for the slots. With TLS toward the cluster
  // it is asked on the first worker, which routes at once when it passes. A verdict that needs other nodes
  // asked (a node the proxy's map does not list yet), and the case where the worker cannot be asked, go the
  // way of a ROUTE (handoff_checked_here).
  if (!proxy_.backend_tls()) {
    const auto verdict = checked_on_this_thread(slots, node);
    if (!verdict) return handoff_checked_here(body, slots, node);
    if (!verdict->ok()) return refused_handoff(refusal_reply(*verdict, node), body);
    return hand_off_checked(slots, node);
  }

  const auto& workers = proxy_.workers();
  auto state = std::make_shared<HandoffState>();
  auto call = std::make_shared<ControlCall>(workers.size());
  const auto start = std::chrono::steady_clock::now();
  Worker* first = workers.front().get();
  const bool posted = first->post([proxy = &proxy_, first, state, call, s = slots, n = node] {
    first->ask_node(
        n, route_question(),
        [=](const std::string* reply, const std::string& why) {
          auto verdict = verdict_from_own_reply(
              s, n, proxy->topology(), reply ? std::optional<std::string>(*reply) : std::nullopt, why);
          const int outcome = !verdict        ? HandoffState::kCheckHere
                              : verdict->ok() ? HandoffState::kRouting
                                              : HandoffState::kRefused;
          if (verdict && !verdict->ok()) state->refusal = refusal_reply(*verdict, n);
          // The admin thread may have given up on the check meanwhile (and answered): then nothing is routed.
          int deciding = HandoffState::kDeciding;
          if (!state->decision.compare_exchange_strong(deciding, outcome)) return;
          if (outcome != HandoffState::kRouting) {
            for (std::size_t w = 0; w < proxy->workers().size(); ++w)
              call->answer(static_cast<int>(w), {});
            return;
          }
          hand_off_everywhere(*proxy, state, call, s, n, first);
        },
        kRouteQuestionReplies);
  });
  if (!posted) state->decision = HandoffState::kCheckHere;
  if (posted && !call->wait_until(start + route_check_time())) {
    // No verdict within the check's time: the node did not answer, as a ROUTE's check would say.
    int deciding = HandoffState::kDeciding;
    if (state->decision.compare_exchange_strong(deciding, HandoffState::kGivenUp)) {
      const auto verdict =
          verdict_from_own_reply(slots, node, proxy_.topology(), std::nullopt, "no reply in time");
      return refused_handoff(refusal_reply(*verdict, node), body);
    }
  }
  switch (state->decision.load()) {
    case HandoffState::kCheckHere:
      return handoff_checked_here(body, slots, node);
    case HandoffState::kRefused:
      return refused_handoff(state->refusal, body);
    default:
      return handoff_answer(state, call, slots, node);
  }
}

void SlotControl::hand_off_everywhere(Proxy& proxy, const std::shared_ptr<HandoffState>& state,
                                      const std::shared_ptr<ControlCall>& call, const SlotSet& slots,
                                      const HostPort& node, Worker* here) {
  // The route first, the release once every worker that routes now has: a client may follow the slots'
  // owner (a subscriber's shard channels move with the route), and a held SPUBLISH that another worker sends
  // on must not reach the new owner before that subscription does. A worker with nothing held, nothing under
  // way and no such client routes at its next dispatch or tick, and takes the release with the route (one
  // look at the registry) if it comes by then.
  const bool crowded = !proxy.holds().publish_route(slots, node);
  std::vector<Worker*> routing;
  for (const auto& w : proxy.workers())
    if (w.get() == here || crowded || !w->quiet_for_handoff()) routing.push_back(w.get());
  if (routing.empty()) {
    release_handed_off(proxy, state, call, slots, nullptr);
    return;
  }
  auto left = std::make_shared<std::atomic<std::size_t>>(routing.size());
  for (Worker* worker : routing) {
    auto routed = [proxy = &proxy, worker, left, state, call, slots] {
      worker->held().sync();  // the route; the slots are still held in the registry
      if (left->fetch_sub(1) == 1) release_handed_off(*proxy, state, call, slots, worker);
    };
    if (worker == here) {
      routed();
    } else if (!worker->post(routed)) {
      // A stopped worker routes nothing again: the log need not keep routes for it.
      proxy.holds().routed(worker->index(), std::numeric_limits<std::uint64_t>::max());
      if (left->fetch_sub(1) == 1) release_handed_off(proxy, state, call, slots, nullptr);
    }
  }
}

void SlotControl::release_handed_off(Proxy& proxy, const std::shared_ptr<HandoffState>& state,
                                     const std::shared_ptr<ControlCall>& call, const SlotSet& slots,
                                     Worker* caller) {
  if (state->released.exchange(true)) return;
  state->removed = proxy.holds().release(&slots, nullptr, steady_ms());
  sync_everywhere(proxy, call, caller);
}

void SlotControl::sync_everywhere(Proxy& proxy, const std::shared_ptr<ControlCall>& call, Worker* caller) {
  // The registry as the caller's change left it (only the admin thread changes it, and a handoff's worker
  // releases while the admin thread waits): what each worker sent on since, it reports as this call's.
  const std::uint64_t generation = proxy.holds().generation();
  for (const auto& w : proxy.workers()) {
    Worker* worker = w.get();
    auto sync = [worker, call, generation] {
      worker->held().sync();
      WorkerReport report;
      report.dispatched = worker->held().take_sent(generation);
      call->answer(worker->index(), std::move(report));
    };
    if (worker == caller) {
      sync();
    } else if (worker->held().quiet_for_release()) {
      // Nothing held there and no dispatch under way: it takes the release at its next dispatch or tick, or
      // it already has (a tick that came first sent its held commands on: they are counted).
      WorkerReport report;
      report.dispatched = worker->held().take_sent(generation);
      call->answer(worker->index(), std::move(report));
    } else if (!worker->post(sync)) {
      call->answer(worker->index(), {});  // a stopped worker holds nothing
    }
  }
}

ControlReply SlotControl::refused_handoff(ControlReply refusal, std::string_view body) {
  // A node outside the cluster (400) is the caller's mistake too, and releases nothing either.
  if (refusal.status == 400) return refusal;
  const ControlReply released = release(body);
  json out = json::parse(refusal.body, nullptr, false);
  if (out.is_object() && out.contains("error"))
    out["error"] = out["error"].get<std::string>() + "; the held commands were released (" +
                   (released.status == 200 ? "to the old owner" : "failed: " + released.body) + ")";
  return reply(refusal.status, out);
}

ControlReply SlotControl::handoff_checked_here(std::string_view body, const SlotSet& slots,
                                               const HostPort& node) {
  if (auto refusal = refuse_route(slots, node)) return refused_handoff(std::move(*refusal), body);
  return hand_off_checked(slots, node);
}

ControlReply SlotControl::hand_off_checked(const SlotSet& slots, const HostPort& node) {
  auto state = std::make_shared<HandoffState>();
  auto call = std::make_shared<ControlCall>(proxy_.workers().size());
  hand_off_everywhere(proxy_, state, call, slots, node, nullptr);
  return handoff_answer(state, call, slots, node);
}

ControlReply SlotControl::handoff_answer(const std::shared_ptr<HandoffState>& state,
                                         const std::shared_ptr<ControlCall>& call, const SlotSet& slots,
                                         const HostPort& node) const {
  if (!call->wait_until(std::chrono::steady_clock::now() + kWorkerAnswer)) {
    const std::string late = "worker(s) " + worker_list(call->missing()) + " did not take the route within " +
                             std::to_string(kWorkerAnswer.count()) + " ms";
    // A worker that must route before the release has not (its loop is stuck): the other workers' held
    // commands must not wait for it until the hold's end. The release is safe for it too: a worker takes
    // the published routes before it frees any slot, so its own held commands go to the new owner when it
    // runs again.
    if (!state->released.load()) {
      release_handed_off(proxy_, state, call, slots, nullptr);
      return error_reply(503, late +
                                  "; the held commands were released (a late worker routes before it sends "
                                  "its own on)");
    }
    if (!call->wait_until(std::chrono::steady_clock::now() + kWorkerAnswer)) {
      return error_reply(503, late +
                                  "; each takes the route, and sends its held commands on, once it runs "
                                  "again");
    }
  }
  std::size_t dispatched = 0;
  for (const auto& r : call->reports())
    dispatched += r.dispatched;
  return reply(200, json{{"routed", slots.str()},
                         {"node", node.str()},
                         {"released", slots.str()},
                         {"dispatched", dispatched},
                         {"were_held", state->removed.str()}});
}

ControlReply SlotControl::list() {
  const std::uint64_t now = steady_ms();
  const std::vector<Hold> holds = proxy_.holds().list(now);
  const auto& workers = proxy_.workers();
  auto call = std::make_shared<ControlCall>(workers.size());
  std::vector<SlotSet> sets;
  for (const Hold& h : holds)
    sets.push_back(h.slots);
  for (const auto& w : workers) {
    Worker* worker = w.get();
    const bool posted = worker->post([worker, call, sets] {
      WorkerReport report;
      for (const SlotSet& s : sets)
        report.queued_per_hold.push_back(worker->held().queued(s));
      call->answer(worker->index(), std::move(report));
    });
    if (!posted) call->answer(worker->index(), {});
  }
  const bool all = call->wait_until(std::chrono::steady_clock::now() + kWorkerAnswer);
  const auto reports = call->reports();
  json out = json::array();
  for (std::size_t i = 0; i < holds.size(); ++i) {
    std::size_t queued = 0;
    for (const auto& r : reports) {
      if (i < r.queued_per_hold.size()) queued += r.queued_per_hold[i];
    }
    const Hold& h = holds[i];
    out.push_back(json{{"slots", h.slots.str()},
                       {"owner", h.owner},
                       {"age_ms", now - std::min(now, h.placed_ms)},
                       {"expires_in_ms", h.expires_ms - std::min(h.expires_ms, now)},
                       {"queued", queued}});
  }
  const Totals totals = proxy_.totals();
  auto counter = [&totals](std::string_view name) {
    for (std::size_t i = 0; i < kCounterCount; ++i) {
      if (kCounters[i].name == name) return totals.counters[i];
    }
    return std::uint64_t{0};
  };
  json j{{"holds", out},
         {"held_requests", counter("held_requests")},
         {"held_request_bytes", counter("held_request_bytes")},
         {"max_held_bytes", proxy_.config().max_held_bytes}};
  if (!all) j["workers_not_answering"] = call->missing();
  return reply(200, j);
}

}  // namespace slotshift::proxy
