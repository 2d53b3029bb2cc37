// The orchestrator's side of the proxies' control endpoint (slotshift-proxy --admin): at each batch's cutover
// every proxy holds the batch's slots (stops sending commands for them and answers once those in flight have
// returned), then is told the new owner (route) and lets the held commands go (release).
//
//   POST /v1/slots/hold     {"slots": "0-100", "ttl_ms": 2000, "wait_ms": 200, "owner": "..."}
//                           -> 200 once drained, or an error after wait_ms (and the hold is dropped)
//   POST /v1/slots/route    {"slots": "0-100", "node": "HOST:PORT"}
//   POST /v1/slots/release  {"slots": "0-100"} or {"owner": "..."}
//   POST /v1/slots/handoff  {"slots": "0-100", "node": "HOST:PORT"}: route, then release, in one round trip;
//                           with "hold": {a HOLD's body}, the next batch's hold too, answered in "hold"
//
// A hold ends by itself after its ttl, so a dead orchestrator cannot freeze clients. Every call goes to all
// proxies at once (HttpFanout: one thread, one kept connection per proxy) and waits for all of them up to one
// deadline; the result says which proxies answered and why the others did not.
//
// Proxies are named directly (--proxy HOST:PORT, the address given to slotshift-proxy --admin) or by a DNS
// name whose every address is a proxy (--proxy-dns NAME:PORT, as a Kubernetes headless Service gives): those
// names are resolved again at every call, so proxies that come and go during a move are followed.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/host_port.h"
#include "orchestrator/http_fanout.h"

namespace slotshift {

struct ProxyCall {
  std::string proxy;  // HOST:PORT
  bool ok = false;
  std::string error;  // when not ok: unreachable, timed out, or the proxy's own words and HTTP status
  std::string body;   // the reply when ok
  int status = 0;     // the HTTP status when the proxy answered; 0 when it did not
  // It answered a hold that its commands in flight did not drain within the wait (and dropped the hold): a
  // proxy that is alive and busy, not one that is gone.
  bool slow_to_drain() const { return status == 504; }
};

struct ProxyCalls {
  std::vector<ProxyCall> calls;
  bool all_ok() const;
  std::vector<std::string> failures() const;  // "HOST:PORT: why", one per proxy that did not answer ok
};

// The proxies a move leaves out of its calls after they missed a hold, and when each is asked again: at the
// first batch that starts once its time out is over, 1 s after its first miss and twice as long after each
// miss that follows (at most 30 s); a hold it answers (even that it could not drain in time) ends its count.
// A proxy that stalled for a moment (a garbage-collected sidecar, a throttled CPU, a slow first batch) is
// back for the rest of the move, and one that is gone costs a batch a short deadline once per time out, fewer
// and fewer times. Times are given, so that the rule is tested without waiting.
class LeftOutProxies {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kFirstTimeOut{1000};
  static constexpr std::chrono::milliseconds kLongestTimeOut{30000};

  void leave_out(const std::string& proxy, Clock::time_point now);
  // The proxies whose time out is over at `now`: asked again from here on (until they miss again).
  std::vector<std::string> due(Clock::time_point now);
  // It held a batch: a later miss counts as its first.
  void held(const std::string& proxy) { entries_.erase(proxy); }
  bool out(const std::string& proxy) const;
  // Misses in a row (0 for a proxy that has none).
  int misses(const std::string& proxy) const;

 private:
  struct Entry {
    int misses = 0;
    bool out = false;
    Clock::time_point back_at;
  };
  std::map<std::string, Entry> entries_;
};

class ProxyControl {
 public:
  ProxyControl(std::vector<HostPort> proxies, std::vector<HostPort> dns_names, std::string token,
               std::chrono::milliseconds timeout);

  bool empty() const { return proxies_.empty() && dns_names_.empty(); }
  // Every proxy as of now: the named ones and every address the DNS names resolve to. A name that resolves to
  // nothing is added to `failed` (as a call that did not succeed).
  std::vector<HostPort> resolve(std::vector<ProxyCall>& failed) const;

  // What begin_batch() found: the proxies asked again (one call each), and those that did not answer a first
  // request on a new connection.
  struct BatchStart {
    ProxyCalls back;
    ProxyCalls silent;
  };
  // Before a batch's fence: the proxies left out whose time out is over are asked again, with a release of
  // this move's holds (`owner`), which also ends a hold one of them placed too late for an earlier batch
  // (the request waited in its socket while it stalled). Those that answer within `deadline` are in the
  // batch's calls; the others miss once more. Then the connections the hold needs (to every proxy not left
  // out) are opened, and each has served a first request, within `deadline` (at most the connect timeout),
  // so that a hold's deadline is about the proxies' answer, not about opening hundreds of connections at
  // once. A proxy that does not answer that request would not answer the hold either: with `leave_out_silent`
  // (when the proxies are not the fence) it is left out now, before any client is held for it.
  BatchStart begin_batch(const std::string& owner, std::chrono::milliseconds deadline, bool leave_out_silent);
  // Opens the connections of every proxy not left out, so that the first batch does not pay for a fleet's
  // handshakes, each with one request served, within twice kWarmUp (at most twice the connect timeout): a
  // check of `target` (POST /v1/slots/check, no slots), which does more:
  //   - the proxy opens the connection its handoffs to the target ask their route check on: the first
  //     batch's handoff then costs a fleet one command each, not a connection each to one node at once,
  //     while that batch's clients and the next batch's hold wait (measured with 200 proxies on one core:
  //     the first handoff took 30-40 ms longer than the later ones);
  //   - a proxy's first control call of a move runs code and touches memory for the first time in that
  //     process (a fresh fleet's proxies each took about 87 minor page faults in their first move, 17 in
  //     later ones), and this call takes that cost while the copy runs rather than inside a batch's hold.
  // Returns the proxies that answered that they cannot vouch for the target or reach it (their handoffs
  // would be refused); who did not answer is not among them: begin_batch() opens those again, and decides.
  // A proxy too old for the check (404) has still served the call.
  ProxyCalls warm_up(const HostPort& target);
  static constexpr std::chrono::milliseconds kWarmUp{200};

  // `slots` in the CLUSTER NODES notation ("0-100 200" or "0-100,200").
  // `wait` is how long the proxies may take to drain what is in flight before they give up (and release).
  // `only`, when given, limits the call to these proxies (HOST:PORT).
  // `placed`, when given, are the answers to this hold already given with the last handoff: those proxies
  // are not asked again, and their answers are part of the result.
  ProxyCalls hold(const std::string& slots, std::chrono::milliseconds ttl, std::chrono::milliseconds wait,
                  const std::string& owner, const std::set<std::string>* only = nullptr,
                  const ProxyCalls* placed = nullptr);
  ProxyCalls route(const std::string& slots, const HostPort& node);
  // route() then release() in one call to each proxy (a proxy too old for it gets the two calls). The
  // release happens whatever the route's answer: the held commands then meet MOVED at the old owner, which
  // the proxy follows.
  ProxyCalls handoff(const std::string& slots, const HostPort& node);
  // The next batch's hold, sent with a batch's handoff.
  struct NextHold {
    std::string slots;
    std::chrono::milliseconds ttl;
    std::chrono::milliseconds wait;
    std::string owner;
  };
  struct HandoffAndHold {
    ProxyCalls handoff;
    // One per proxy that answered the hold with a hold (200) or that it could not drain in time (504), as a
    // HOLD call's would be. A proxy that is not here did not answer in time, did not place the hold (its
    // handoff took longer than a hold's deadline), or is too old to take a hold with a handoff: hold() asks
    // it again (`placed`).
    ProxyCalls hold;
  };
  // A handoff that also places the next batch's hold, in one call to each proxy: a batch then costs the
  // fleet one round trip instead of two. The call's deadline is a hold's twice over, not a handoff's: the
  // next batch's clients are held from here, and a proxy that does not answer in time must not keep them
  // waiting at every other proxy. (A proxy whose handoff took longer than a hold's deadline places no hold;
  // one that did not answer at all goes on with its handoff, and its held commands, if it never routes,
  // go on when their hold ends, to the old owner, whose MOVED it follows.)
  HandoffAndHold handoff(const std::string& slots, const HostPort& node, const NextHold& next);
  ProxyCalls release(const std::string& slots);
  ProxyCalls release_owner(const std::string& owner);
  // A hold's answers: a proxy that did not answer is left out of the calls until its time out is over (when
  // the proxies are not the fence: waiting for it at every batch would hold every other proxy's clients as
  // long); one that held starts its count over.
  void hold_answered(const ProxyCalls& calls);
  bool left_out(const std::string& proxy) const { return left_out_.out(proxy); }
  // Asked before every call: a non-empty reason (a lost move lease, move_lease.h) sends nothing, and every
  // proxy's call fails with it.
  void set_fence(std::function<std::string()> fence) { fence_ = std::move(fence); }

 private:
  // `except`: proxies not asked (and not in the result).
  ProxyCalls post_all(const std::string& path, const std::string& body, std::chrono::milliseconds timeout,
                      const std::set<std::string>* only = nullptr,
                      const std::set<std::string>* except = nullptr);
  // The proxies of `calls` that answered a handoff 404 (a release before it) get a route and a release.
  void route_and_release_older(const std::string& slots, const HostPort& node, ProxyCalls& calls);
  // A hold's deadline: the proxies' own wait and a little more.
  std::chrono::milliseconds hold_deadline(std::chrono::milliseconds wait) const;

  std::vector<HostPort> proxies_;
  std::vector<HostPort> dns_names_;
  std::chrono::milliseconds timeout_;
  std::chrono::milliseconds connect_timeout_;
  HttpFanout fanout_;
  LeftOutProxies left_out_;
  std::function<std::string()> fence_;
};

}  // namespace slotshift
