#include "proxy/tracking.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "common/ascii.h"
#include "common/resp.h"
#include "proxy/backend.h"
#include "proxy/errors.h"
#include "proxy/session.h"
#include "proxy/worker.h"

namespace slotshift::proxy {
namespace {

// Redis's test of two prefixes that would both match some key: one begins the other.
bool overlap(std::string_view a, std::string_view b) {
  const std::size_t n = std::min(a.size(), b.size());
  return a.substr(0, n) == b.substr(0, n);
}

// What a node sends a tracking client after FLUSHALL: drop everything.
constexpr std::string_view kInvalidateAll = ">2\r\n$10\r\ninvalidate\r\n_\r\n";

}  // namespace

Tracking::Tracking(Session& session, Worker& worker) : session_(session), worker_(worker) {}

Tracking::~Tracking() {
  close();
}

std::string Tracking::command(const RequestPtr& request, std::span<const std::string_view> args) {
  // Every option is read before any takes effect, as Redis does: a syntax error changes nothing.
  bool redirect = false, bcast = false, optin = false, optout = false, noloop = false;
  std::vector<std::string> prefixes;
  for (std::size_t j = 3; j < args.size(); ++j) {
    const bool more = j + 1 < args.size();
    if (iequals(args[j], "redirect") && more) {
      ++j;
      redirect = true;
    } else if (iequals(args[j], "bcast")) {
      bcast = true;
    } else if (iequals(args[j], "optin")) {
      optin = true;
    } else if (iequals(args[j], "optout")) {
      optout = true;
    } else if (iequals(args[j], "noloop")) {
      noloop = true;
    } else if (iequals(args[j], "prefix") && more) {
      prefixes.emplace_back(args[++j]);
    } else {
      return std::string(errors::kSyntax);
    }
  }
  if (iequals(args[2], "off")) {
    off();
    return "+OK\r\n";
  }
  if (!iequals(args[2], "on")) return std::string(errors::kSyntax);
  if (redirect) {
    worker_.stats().errors_refused.add();
    return errors::unsupported("client tracking redirect", errors::kTrackingRedirectWhy);
  }
  // Redis's checks, in its order.
  if (!bcast && !prefixes.empty()) return std::string(errors::kTrackingPrefixNeedsBcast);
  if (on_ && bcast_ != bcast) return std::string(errors::kTrackingBcastSwitch);
  if (bcast && (optin || optout)) return std::string(errors::kTrackingOptBcast);
  if (optin && optout) return std::string(errors::kTrackingOptBoth);
  if (on_ && ((optin && optout_) || (optout && optin_))) return std::string(errors::kTrackingOptSwitch);
  if (bcast) {
    for (std::size_t i = 0; i < prefixes.size(); ++i) {
      for (const auto& existing : prefixes_)
        if (overlap(existing, prefixes[i]))
          return errors::tracking_prefix_overlap(prefixes[i], existing, true);
      for (std::size_t j = i + 1; j < prefixes.size(); ++j)
        if (overlap(prefixes[i], prefixes[j]))
          return errors::tracking_prefix_overlap(prefixes[i], prefixes[j], false);
    }
    // As on Redis, BCAST without a prefix is the empty one: every key.
    if (prefixes.empty() && std::find(prefixes_.begin(), prefixes_.end(), "") == prefixes_.end())
      prefixes.emplace_back();
  }
  const bool same = on_ && prefixes.empty() && optin == optin_ && optout == optout_ && noloop == noloop_;
  if (same) return "+OK\r\n";
  if (on_) {
    // The options change on every tracking connection: they are replaced, and what they tracked goes with
    // them. (Nothing of the client is on its way there: CLIENT TRACKING waited for its earlier commands.)
    invalidate_all(nullptr);
    retire_links();
  } else {
    worker_.trackers().insert(&session_);
    owner_changes_seen_ = worker_.router().owner_changes();
  }
  on_ = true;
  bcast_ = bcast;
  optin_ = optin;
  optout_ = optout;
  noloop_ = noloop;
  for (auto& p : prefixes)
    prefixes_.push_back(std::move(p));
  std::sort(prefixes_.begin(), prefixes_.end());  // as TRACKINGINFO lists them
  // Every master accepts the options on the client's connection to it before the client is told OK (a node
  // may refuse them: an ACL user without CLIENT). CLIENT REPLY ON changes nothing and answers +OK.
  confirming_ = request.get();
  const std::string_view probe[] = {"CLIENT", "REPLY", "ON"};
  session_.fan_out(request, probe, Merge::kAllOk);
  return "";
}

void Tracking::answered(const Request& request) {
  if (&request != confirming_) return;
  confirming_ = nullptr;
  // A node refused the options (its error is the client's reply): tracking is off, as after a refused
  // CLIENT TRACKING.
  if (request.reply.starts_with("-") || request.reply.starts_with("!")) off();
}

std::string Tracking::caching(std::string_view choice) {
  if (!on_) return std::string(errors::kCachingNotTracking);
  if (iequals(choice, "yes")) {
    if (!optin_) return std::string(errors::kCachingYesNotOptin);
    caching_ = Request::Caching::kYes;
  } else if (iequals(choice, "no")) {
    if (!optout_) return std::string(errors::kCachingNoNotOptout);
    caching_ = Request::Caching::kNo;
  } else {
    return std::string(errors::kSyntax);
  }
  return "+OK\r\n";
}

std::string Tracking::info(std::uint8_t protocol) const {
  std::vector<std::string_view> flags{on_ ? "on" : "off"};
  if (bcast_) flags.push_back("bcast");
  if (optin_) flags.push_back("optin");
  if (optin_ && caching_ == Request::Caching::kYes) flags.push_back("caching-yes");
  if (optout_) flags.push_back("optout");
  if (optout_ && caching_ == Request::Caching::kNo) flags.push_back("caching-no");
  if (noloop_) flags.push_back("noloop");
  // A map with a set in it in RESP3; arrays in RESP2.
  std::string out;
  resp::append_aggregate_header(out, protocol == 3 ? '%' : '*', protocol == 3 ? 3 : 6);
  resp::append_bulk(out, "flags");
  resp::append_aggregate_header(out, protocol == 3 ? '~' : '*', flags.size());
  for (auto f : flags)
    resp::append_bulk(out, f);
  resp::append_bulk(out, "redirect");
  resp::append_integer(out, on_ ? 0 : -1);
  resp::append_bulk(out, "prefixes");
  resp::append_array_header(out, prefixes_.size());
  for (const auto& p : prefixes_)
    resp::append_bulk(out, p);
  return out;
}

std::string Tracking::getredir() const {
  std::string out;
  resp::append_integer(out, on_ ? 0 : -1);
  return out;
}

std::string Tracking::flags() const {
  if (!on_) return "";
  return bcast_ ? "tB" : "t";
}

std::string Tracking::setup_command() const {
  std::vector<std::string_view> args{"CLIENT", "TRACKING", "ON"};
  if (bcast_) args.emplace_back("BCAST");
  for (const auto& p : prefixes_) {
    args.emplace_back("PREFIX");
    args.emplace_back(p);
  }
  if (optin_) args.emplace_back("OPTIN");
  if (optout_) args.emplace_back("OPTOUT");
  if (noloop_) args.emplace_back("NOLOOP");
  std::string wire;
  resp::append_command(wire, args);
  return wire;
}

Backend* Tracking::connection(const HostPort& node, const LoginPtr& login, int protocol) {
  const std::string key = connection_key(login, node, protocol);
  if (auto it = links_.find(key); it != links_.end()) return it->second.backend.get();
  if (!session_.reserve_own_connection()) return nullptr;
  Link& l = links_[key];
  l.backend = std::make_unique<Backend>(worker_, node, login ? login : worker_.own_login_, protocol);
  Backend* b = l.backend.get();
  b->set_setup(setup_command());
  // A RESP2 connection gets no invalidation (a node sends them to RESP2 clients only through REDIRECT), and
  // a push sink there would take every reply for a message.
  if (protocol == 3) b->set_push_sink([this, b](std::string_view message) { on_push(b, message); });
  // Called inside the failing connection's own callback: the client is told at once, the connection reopens
  // on its next use (BCAST: at a tick).
  b->on_fail([this, b] { invalidate_all(b); });
  return b;
}

void Tracking::on_push(const Backend* from, std::string_view message) {
  // A RESP2 client gets no push (Redis sends it none without REDIRECT); a connection retired with old
  // options says nothing any more.
  if (session_.proto_ != 3 || !on_) return;
  const bool live = std::any_of(links_.begin(), links_.end(),
                                [from](const auto& entry) { return entry.second.backend.get() == from; });
  if (live) session_.push_out_of_band(message, from);
}

void Tracking::invalidate_all(const Backend* after) {
  if (!on_) return;
  bool read = false;
  for (auto& [key, l] : links_) {
    if (after && l.backend.get() != after) continue;
    if (l.backend->replies() != l.replies_at_flush) read = true;
    l.replies_at_flush = l.backend->replies();
  }
  // Nothing read through these connections since the client last dropped its cache: nothing to drop.
  if (read && session_.proto_ == 3) session_.push_out_of_band(kInvalidateAll, after);
}

void Tracking::after_untracked_read() {
  if (on_ && session_.proto_ == 3) session_.push_out_of_band(kInvalidateAll, nullptr);
}

void Tracking::owners_changed() {
  const std::uint64_t changes = worker_.router().owner_changes();
  if (!on_ || changes == owner_changes_seen_) return;
  owner_changes_seen_ = changes;
  invalidate_all(nullptr);
}

void Tracking::check(std::uint64_t now_ms) {
  // Deadlines, as on every connection: a node that stops answering fails the connection (and the client drops
  // its cache). An idle one is asked a PING now and then, so that a node gone silent is noticed even while
  // the client reads nothing (BCAST's connections mostly wait for pushes), and so are the pushes it would
  // miss.
  constexpr std::uint64_t kKeepaliveMs = 1000;
  std::vector<Backend*> all;
  for (auto& [key, l] : links_)
    all.push_back(l.backend.get());
  for (auto& [key, l] : retiring_)
    all.push_back(l.backend.get());
  for (Backend* b : all) {
    b->check_deadlines(now_ms);
    if (session_.closing()) return;
    if (b->connected() && b->inflight() == 0 && now_ms - b->last_activity_ms() >= kKeepaliveMs)
      b->send_internal("*1\r\n$4\r\nPING\r\n", [](const std::string*) {});
  }
  // Retired connections close once what was on its way there is answered.
  for (auto it = retiring_.begin(); it != retiring_.end();) {
    if (it->second.backend->inflight() == 0) {
      close_link(it->second);
      it = retiring_.erase(it);
    } else {
      ++it;
    }
  }
  if (!on_ || !bcast_) return;
  // BCAST hears every key of its prefixes, read or not: it has a connection to every master at all times.
  constexpr std::uint64_t kRewarmMs = 500;
  for (Backend* master : worker_.router().masters()) {
    if (session_.closing()) return;
    const std::string key = connection_key(session_.login_, master->address(), session_.proto_);
    Backend* b = connection(master->address(), session_.login_, session_.proto_);
    if (!b) return;
    Link& l = links_[key];
    if (!b->connected() && now_ms - l.warmed_ms >= kRewarmMs) {
      l.warmed_ms = now_ms;
      b->warm();
    }
  }
}

void Tracking::close_link(Link& l) {
  l.backend->shutdown();
  worker_.retire(std::move(l.backend));
  worker_.proxy().blocking_connections().fetch_sub(1);
}

void Tracking::retire_links() {
  for (auto& entry : links_)
    retiring_.push_back(std::move(entry));
  links_.clear();
}

void Tracking::off() {
  if (!on_) return;
  on_ = bcast_ = optin_ = optout_ = noloop_ = false;
  prefixes_.clear();
  caching_ = Request::Caching::kNone;
  confirming_ = nullptr;
  retire_links();
  worker_.trackers().erase(&session_);
}

void Tracking::close() {
  off();
  // What the client sent before it left still runs, as on one Redis: a connection with commands on their way
  // is left to the worker until they are answered.
  for (auto& [key, l] : retiring_) {
    l.backend->set_push_sink(nullptr);
    l.backend->on_fail(nullptr);
    if (l.backend->inflight() == 0) {
      close_link(l);
    } else {
      worker_.drain(std::move(l.backend));
      worker_.proxy().blocking_connections().fetch_sub(1);
    }
  }
  retiring_.clear();
}

}  // namespace slotshift::proxy
