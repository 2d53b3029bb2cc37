#include "orchestrator/proxy_control.h"

#include <netdb.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>

namespace slotshift {

bool ProxyCalls::all_ok() const {
  for (const auto& c : calls)
    if (!c.ok) return false;
  return true;
}

std::vector<std::string> ProxyCalls::failures() const {
  std::vector<std::string> out;
  for (const auto& c : calls)
    if (!c.ok) out.push_back(c.proxy + ": " + c.error);
  return out;
}

ProxyControl::ProxyControl(std::vector<HostPort> proxies, std::vector<HostPort> dns_names, std::string token,
                           std::chrono::milliseconds timeout)
    : proxies_(std::move(proxies)),
      dns_names_(std::move(dns_names)),
      timeout_(timeout),
      // Proxies are near: a connection that takes longer than this is a proxy that is gone.
      connect_timeout_(std::min(timeout, std::chrono::milliseconds(500))),
      fanout_(std::move(token), connect_timeout_) {}

void LeftOutProxies::leave_out(const std::string& proxy, Clock::time_point now) {
  Entry& e = entries_[proxy];
  ++e.misses;
  e.out = true;
  // 1 s, 2 s, 4 s ... 30 s: the shift stops growing long before it could overflow.
  const std::chrono::milliseconds time_out =
      std::min(kLongestTimeOut, kFirstTimeOut * (std::int64_t{1} << std::min(e.misses - 1, 5)));
  e.back_at = now + time_out;
}

std::vector<std::string> LeftOutProxies::due(Clock::time_point now) {
  std::vector<std::string> back;
  for (auto& [proxy, e] : entries_)
    if (e.out && now >= e.back_at) {
      e.out = false;
      back.push_back(proxy);
    }
  return back;
}

bool LeftOutProxies::out(const std::string& proxy) const {
  const auto it = entries_.find(proxy);
  return it != entries_.end() && it->second.out;
}

int LeftOutProxies::misses(const std::string& proxy) const {
  const auto it = entries_.find(proxy);
  return it == entries_.end() ? 0 : it->second.misses;
}

ProxyControl::BatchStart ProxyControl::begin_batch(const std::string& owner,
                                                   std::chrono::milliseconds deadline,
                                                   bool leave_out_silent) {
  BatchStart start;
  ProxyCalls& back = start.back;
  const auto due = left_out_.due(LeftOutProxies::Clock::now());
  if (!due.empty()) {
    const std::set<std::string> asked(due.begin(), due.end());
    for (auto& call :
         post_all("/v1/slots/release", nlohmann::json{{"owner", owner}}.dump(), deadline, &asked).calls) {
      if (!asked.count(call.proxy)) continue;  // a DNS name that resolves to nothing: the hold reports it
      if (!call.ok) left_out_.leave_out(call.proxy, LeftOutProxies::Clock::now());
      back.calls.push_back(std::move(call));
    }
  }
  std::vector<ProxyCall> unresolved;  // reported by the call that follows
  std::vector<HostPort> to;
  for (auto& p : resolve(unresolved))
    if (!left_out_.out(p.str())) to.push_back(std::move(p));
  const auto within = std::min(connect_timeout_, deadline);
  for (auto& [proxy, why] : fanout_.connect_ahead(to, HttpFanout::Clock::now() + within)) {
    if (leave_out_silent) left_out_.leave_out(proxy, LeftOutProxies::Clock::now());
    start.silent.calls.push_back(ProxyCall{proxy,
                                           false,
                                           "no answer to a first request on a new connection (" + why +
                                               ", within " + std::to_string(within.count()) + " ms)",
                                           {}});
  }
  return start;
}

ProxyCalls ProxyControl::warm_up(const HostPort& target) {
  // One request per proxy, on a new connection: the check is its first request. The copy shares its core
  // with the fleet here, and a first request of its own before the check cost it more (200 proxies on one
  // core: the copy took 289 ms against 245, medians of 5 in the same run). A stopped proxy holds the first
  // batch back by this at most, if the copy is shorter; post_all() asks the lease's fence first, as for
  // every call.
  const auto within = 2 * std::min(connect_timeout_, kWarmUp);
  ProxyCalls checks = post_all("/v1/slots/check", nlohmann::json{{"node", target.str()}}.dump(), within);
  // 400: its map does not list the target and no node it knows vouches for it; 503: it cannot ask the
  // target. Either refuses every handoff to it. (404: a proxy older than the check.)
  ProxyCalls refused;
  for (auto& call : checks.calls)
    if (call.status == 400 || call.status == 503) refused.calls.push_back(std::move(call));
  return refused;
}

void ProxyControl::hold_answered(const ProxyCalls& calls) {
  const auto now = LeftOutProxies::Clock::now();
  for (const auto& call : calls.calls) {
    // An answer that it could not drain in time (HTTP 504) is an answer too: the proxy is there.
    if (call.ok || call.slow_to_drain())
      left_out_.held(call.proxy);
    else if (!call.slow_to_drain())
      left_out_.leave_out(call.proxy, now);
  }
}

std::vector<HostPort> ProxyControl::resolve(std::vector<ProxyCall>& failed) const {
  std::vector<HostPort> out = proxies_;
  std::set<std::string> seen;
  for (const auto& p : out)
    seen.insert(p.str());
  for (const auto& name : dns_names_) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (const int rc = getaddrinfo(name.host.c_str(), nullptr, &hints, &found); rc != 0) {
      failed.push_back(ProxyCall{name.str(), false, std::string("cannot resolve: ") + gai_strerror(rc), {}});
      continue;
    }
    std::size_t n = 0;
    for (addrinfo* a = found; a; a = a->ai_next) {
      char text[INET6_ADDRSTRLEN] = {};
      const void* addr =
          a->ai_family == AF_INET
              ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr)
              : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr);
      if (!inet_ntop(a->ai_family, addr, text, sizeof text)) continue;
      HostPort hp{text, name.port};
      if (seen.insert(hp.str()).second) out.push_back(hp);
      ++n;
    }
    freeaddrinfo(found);
    if (n == 0) failed.push_back(ProxyCall{name.str(), false, "resolves to no address", {}});
  }
  return out;
}

ProxyCalls ProxyControl::post_all(const std::string& path, const std::string& body,
                                  std::chrono::milliseconds timeout, const std::set<std::string>* only,
                                  const std::set<std::string>* except) {
  ProxyCalls result;
  std::vector<HostPort> to;
  for (auto& p : resolve(result.calls))
    if (!left_out_.out(p.str()) && (!only || only->count(p.str())) && (!except || !except->count(p.str())))
      to.push_back(std::move(p));
  // Nothing to send (every proxy answered already, or none is left to ask): not even the lease's question.
  if (to.empty()) return result;
  if (const std::string refused = fence_ ? fence_() : std::string(); !refused.empty()) {
    for (const auto& p : to)
      result.calls.push_back(ProxyCall{p.str(), false, "not asked: " + refused, {}});
    return result;
  }
  const auto answers = fanout_.post(to, path, body, HttpFanout::Clock::now() + timeout);
  for (std::size_t i = 0; i < to.size(); ++i) {
    const auto& answer = answers[i];
    ProxyCall call{to[i].str(), false, {}, {}};
    call.status = answer.status;
    if (answer.status == 0) {
      call.error = "no answer (" + answer.error + ", within " + std::to_string(timeout.count()) + " ms)";
    } else if (answer.status != 200) {
      call.error = "HTTP " + std::to_string(answer.status) + ": " + answer.body;
      while (!call.error.empty() && (call.error.back() == '\n' || call.error.back() == '\r'))
        call.error.pop_back();
      call.body = answer.body;
    } else {
      call.ok = true;
      call.body = answer.body;
    }
    result.calls.push_back(std::move(call));
  }
  return result;
}

std::chrono::milliseconds ProxyControl::hold_deadline(std::chrono::milliseconds wait) const {
  return wait + std::min(timeout_, std::chrono::milliseconds(100));
}

ProxyCalls ProxyControl::hold(const std::string& slots, std::chrono::milliseconds ttl,
                              std::chrono::milliseconds wait, const std::string& owner,
                              const std::set<std::string>* only, const ProxyCalls* placed) {
  // The proxy answers once what is in flight for the slots has returned; it gives up (and releases) after
  // wait_ms, and this call a little after that.
  const nlohmann::json body{
      {"slots", slots}, {"ttl_ms", ttl.count()}, {"wait_ms", wait.count()}, {"owner", owner}};
  std::set<std::string> answered;
  if (placed)
    for (const auto& call : placed->calls)
      if (!only || only->count(call.proxy)) answered.insert(call.proxy);
  ProxyCalls result = post_all("/v1/slots/hold", body.dump(), hold_deadline(wait), only, &answered);
  if (placed)
    for (const auto& call : placed->calls)
      if (answered.count(call.proxy)) result.calls.push_back(call);
  return result;
}

ProxyCalls ProxyControl::route(const std::string& slots, const HostPort& node) {
  return post_all("/v1/slots/route", nlohmann::json{{"slots", slots}, {"node", node.str()}}.dump(), timeout_);
}

ProxyCalls ProxyControl::handoff(const std::string& slots, const HostPort& node) {
  auto calls =
      post_all("/v1/slots/handoff", nlohmann::json{{"slots", slots}, {"node", node.str()}}.dump(), timeout_);
  route_and_release_older(slots, node, calls);
  return calls;
}

void ProxyControl::route_and_release_older(const std::string& slots, const HostPort& node,
                                           ProxyCalls& calls) {
  // A proxy of a release before the handoff call answers 404 (a fleet in the middle of an upgrade): it gets
  // the two calls it knows, in order.
  std::set<std::string> older;
  for (const auto& call : calls.calls)
    if (call.status == 404) older.insert(call.proxy);
  if (older.empty()) return;
  const auto routed = post_all(
      "/v1/slots/route", nlohmann::json{{"slots", slots}, {"node", node.str()}}.dump(), timeout_, &older);
  const auto released =
      post_all("/v1/slots/release", nlohmann::json{{"slots", slots}}.dump(), timeout_, &older);
  for (auto& call : calls.calls) {
    if (!older.count(call.proxy)) continue;
    // The route's failure is the one to tell (the release goes on regardless, as in the handoff).
    for (const auto* part : {&released, &routed})
      for (const auto& c : part->calls)
        if (c.proxy == call.proxy && (!c.ok || part == &released)) call = c;
  }
}

ProxyControl::HandoffAndHold ProxyControl::handoff(const std::string& slots, const HostPort& node,
                                                   const NextHold& next) {
  // The call waits twice a hold's deadline: the handoff's share is the first (the proxy's check of the node
  // and its workers' routing, which take a few milliseconds; more is a proxy in trouble), and a proxy whose
  // handoff took longer than that places no hold, so that the hold's drain (at most its wait) still answers
  // within the call.
  const nlohmann::json hold{{"slots", next.slots},
                            {"ttl_ms", next.ttl.count()},
                            {"wait_ms", next.wait.count()},
                            {"owner", next.owner},
                            {"place_within_ms", hold_deadline(next.wait).count()}};
  const std::string body = nlohmann::json{{"slots", slots}, {"node", node.str()}, {"hold", hold}}.dump();
  const auto deadline = hold_deadline(next.wait) * 2;
  HandoffAndHold out;
  out.handoff = post_all("/v1/slots/handoff", body, deadline);
  for (auto& call : out.handoff.calls) {
    if (call.status == 0) continue;
    const auto reply = nlohmann::json::parse(call.body, nullptr, false);
    if (!reply.is_object() || !reply.contains("hold") || !reply["hold"].is_object()) continue;
    const auto& h = reply["hold"];
    // Held, or could not drain in time (504): the answers a HOLD's caller acts on. Any other (a hold not
    // placed after a slow handoff, too many HOLDs waiting, a reply it cannot read) is asked again by hold().
    if (!h.contains("status") || !h["status"].is_number_integer()) continue;
    ProxyCall held{call.proxy, false, {}, h.dump()};
    held.status = h["status"].get<int>();
    if (held.status != 200 && held.status != 504) continue;
    held.ok = held.status == 200;
    if (!held.ok) held.error = "HTTP 504: " + h.value("error", std::string("(no reason)"));
    out.hold.calls.push_back(std::move(held));
  }
  // Its hold is asked by hold().
  route_and_release_older(slots, node, out.handoff);
  return out;
}

ProxyCalls ProxyControl::release(const std::string& slots) {
  return post_all("/v1/slots/release", nlohmann::json{{"slots", slots}}.dump(), timeout_);
}

ProxyCalls ProxyControl::release_owner(const std::string& owner) {
  return post_all("/v1/slots/release", nlohmann::json{{"owner", owner}}.dump(), timeout_);
}

}  // namespace slotshift
