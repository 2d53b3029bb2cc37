#include "proxy/monitor.h"
#include "proxy/log.h"

#include <sys/time.h>

#include <algorithm>
#include <cstdio>
#include <set>
#include <vector>

#include "common/resp.h"
#include "proxy/backend.h"
#include "proxy/errors.h"
#include "proxy/session.h"
#include "proxy/worker.h"

namespace slotshift::proxy {
namespace {

constexpr std::uint64_t kFirstBackoffMs = 100;
constexpr std::uint64_t kMaxBackoffMs = 5000;

// What the proxy quotes in a line of its own: Redis quotes each argument of a monitor line between double
// quotes, escaping quotes and backslashes, and parsers split on the quotes. The proxy's reasons are plain
// text: quotes and backslashes become apostrophes and slashes, and control characters spaces, so that no
// escaping is needed and the line stays one line.
std::string plain(std::string_view text) {
  std::string out(text.substr(0, 200));
  for (char& c : out) {
    if (c == '"') c = '\'';
    if (c == '\\') c = '/';
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return out;
}

// The time of day as Redis writes it at the start of a monitor line.
std::string timestamp() {
  timeval tv{};
  ::gettimeofday(&tv, nullptr);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%ld.%06ld", static_cast<long>(tv.tv_sec), static_cast<long>(tv.tv_usec));
  return buf;
}

}  // namespace

Monitor::Monitor(Session& session, Worker& worker) : session_(session), worker_(worker) {}

Monitor::~Monitor() {
  close();
}

void Monitor::start(const RequestPtr& request) {
  const auto& masters = worker_.router().masters();
  if (masters.empty()) return worker_.complete(request, errors::no_owner(0));
  // Every master's connection is reserved before any is opened: a MONITOR that would see only some masters
  // is refused whole, as a blocking command at the cap is.
  std::size_t reserved = 0;
  while (reserved < masters.size() && session_.reserve_own_connection())
    ++reserved;
  if (reserved < masters.size()) {
    worker_.proxy().blocking_connections().fetch_sub(reserved);
    return worker_.complete(request, errors::too_many_blocking(worker_.config().max_blocking_connections));
  }
  active_ = true;
  masters_changed_ = false;
  confirm_ = request;
  for (const Backend* m : masters) {
    Link& l = links_[m->name()];
    l.node = m->address();
    l.reserved = true;
  }
  const std::uint64_t now = worker_.now_ms();
  std::vector<std::string> keys;
  for (const auto& [key, l] : links_)
    keys.push_back(key);
  // Each step may end the client (a line over its output bound): nothing runs after a close.
  for (const auto& key : keys) {
    auto it = links_.find(key);
    if (it == links_.end()) continue;
    if (!open(it->second)) interrupted(it->second, it->second.why, now);
    if (session_.closing() || !active_) return;
  }
  maybe_confirm();
}

bool Monitor::open(Link& l) {
  const std::string key = l.node.str();
  // As the client's other commands: logged in as its user with ACL pass-through, else as the proxy.
  l.backend =
      std::make_unique<Backend>(worker_, l.node, session_.login_ ? session_.login_ : worker_.own_login_);
  l.backend->set_push_sink([this, key](std::string_view message) { on_message(key, message); });
  // Called inside the failing connection's own callback: check() reports it and opens a new one.
  l.backend->on_fail([this, key] {
    if (auto it = links_.find(key); it != links_.end()) it->second.failed = true;
  });
  l.confirmed = false;
  l.failed = false;
  l.opened_ms = worker_.now_ms();
  std::string wire;
  resp::append_command(wire, {"MONITOR"});
  if (l.backend->send_raw(wire)) return true;
  l.why = l.backend->last_failure().empty() ? std::string("could not connect") : l.backend->last_failure();
  return false;
}

void Monitor::close_backend(Link& l) {
  if (!l.backend) return;
  l.backend->on_fail(nullptr);
  // Freed at the worker's next tick: this may run inside a callback of that very connection.
  l.backend->shutdown();
  worker_.retire(std::move(l.backend));
  l.confirmed = false;
}

void Monitor::drop_link(std::map<std::string, Link>::iterator it) {
  close_backend(it->second);
  if (it->second.reserved) worker_.proxy().blocking_connections().fetch_sub(1);
  links_.erase(it);
}

void Monitor::close() {
  // A MONITOR still waiting for its nodes is answered first, as a node would have: the client's later
  // replies (RESET's) wait behind it.
  RequestPtr request = std::move(confirm_);
  confirm_.reset();
  while (!links_.empty())
    drop_link(links_.begin());
  active_ = false;
  early_.clear();
  early_bytes_ = 0;
  if (request) worker_.complete(request, "+OK\r\n");
}

void Monitor::note(const HostPort& node, std::string_view event, std::string_view detail) {
  std::string line =
      "+" + timestamp() + " [0 node=" + node.str() + " slotshift-proxy:0] \"slotshift-proxy\" \"";
  line.append(event).append("\"");
  if (!detail.empty()) line.append(" \"").append(plain(detail)).append("\"");
  line.append("\r\n");
  emit(std::move(line));
}

void Monitor::emit(std::string line) {
  if (!confirm_) return session_.push(line);
  // Until every node has answered MONITOR, lines wait here rather than behind the client's MONITOR: should a
  // node refuse it, the client gets that error alone, not followed by lines it would read as the replies of
  // its next commands. They count against the client's output bound as replies waiting would.
  early_bytes_ += line.size();
  if (early_bytes_ > worker_.config().max_client_output) {
    worker_.stats().clients_slow_reader.add();
    log_line(LogLevel::kWarning,
             "closing client %s: %zu bytes of monitor lines wait for MONITOR's answer "
             "(limit %zu)",
             session_.peer_.c_str(), early_bytes_, worker_.config().max_client_output);
    session_.close();
    return;
  }
  early_.push_back(std::move(line));
}

void Monitor::on_message(const std::string& key, std::string_view message) {
  auto it = links_.find(key);
  if (it == links_.end() || !active_) return;
  Link& l = it->second;
  if (!l.confirmed) {
    if (message.starts_with("+")) {
      // MONITOR's +OK: the node's stream starts here.
      l.confirmed = true;
      l.backoff_ms = 0;
      if (l.interrupted) {
        l.interrupted = false;
        note(l.node, "monitor-resumed");
      } else if (l.joined_late) {
        note(l.node, "monitor-started");
      }
      l.joined_late = false;
      if (session_.closing()) return;
      maybe_confirm();
      return;
    }
    const std::string error(message.substr(0, message.find('\r')));
    if (confirm_) {
      // The client's MONITOR is refused by a node (NOPERM: the user may not run MONITOR there): as on
      // Redis, the client gets the node's error and is not monitoring.
      // (Copied first: `message` is in the buffer of a connection about to close.)
      std::string reply = errors::one_line(std::string(message));
      RequestPtr request = std::move(confirm_);
      confirm_.reset();
      while (!links_.empty())
        drop_link(links_.begin());
      active_ = false;
      early_.clear();
      early_bytes_ = 0;
      worker_.complete(request, std::move(reply));
      return;
    }
    // A connection opened again was refused (the user's permissions changed meanwhile): tried again later.
    interrupted(l, node_said(error), worker_.now_ms());
    return;
  }
  if (!message.starts_with("+")) {
    interrupted(l, node_said(std::string(message.substr(0, message.find('\r')))), worker_.now_ms());
    return;
  }
  // "+<time> [<db> <client>] <args>" becomes "+<time> [<db> node=<node> <client>] <args>". Redis writes
  // every line so; one that is not is passed on as it came.
  std::string line;
  const std::size_t open_at = message.find(" [");
  const std::size_t space = open_at == std::string_view::npos ? open_at : message.find(' ', open_at + 2);
  if (space == std::string_view::npos) {
    emit(std::string(message));
    return;
  }
  line.reserve(message.size() + key.size() + 6);
  line.append(message.substr(0, space + 1)).append("node=").append(key).append(" ");
  line.append(message.substr(space + 1));
  emit(std::move(line));
}

std::string Monitor::node_said(const std::string& error) {
  return "the node answered " + (error.starts_with("-") ? error.substr(1) : error);
}

void Monitor::interrupted(Link& l, std::string why, std::uint64_t now_ms) {
  close_backend(l);
  l.failed = false;
  l.backoff_ms = l.backoff_ms == 0 ? kFirstBackoffMs : std::min(l.backoff_ms * 2, kMaxBackoffMs);
  l.retry_at_ms = now_ms + l.backoff_ms;
  if (!l.interrupted) {
    l.interrupted = true;
    note(l.node, "monitor-interrupted", why);
    if (session_.closing()) return;
  }
  maybe_confirm();
}

void Monitor::maybe_confirm() {
  if (!confirm_) return;
  // Links whose stream started interrupted are not waited for: they said so.
  for (const auto& [key, l] : links_)
    if (!l.confirmed && !l.interrupted) return;
  RequestPtr request = std::move(confirm_);
  confirm_.reset();
  worker_.complete(request, "+OK\r\n");
  std::vector<std::string> early;
  early.swap(early_);
  early_bytes_ = 0;
  for (auto& line : early) {
    if (session_.closing()) return;
    session_.push(line);
  }
}

void Monitor::owners_changed() {
  // Acted on at the next tick (check()), out of the callback of whatever changed the slot map.
  if (active_) masters_changed_ = true;
}

void Monitor::check(std::uint64_t now_ms) {
  if (!active_) return;
  if (masters_changed_) {
    masters_changed_ = false;
    std::set<std::string> masters;
    for (const Backend* m : worker_.router().masters()) {
      masters.insert(m->name());
      if (links_.contains(m->name())) continue;
      // A master that joined: its connection is opened below, once one is free under the cap.
      Link& l = links_[m->name()];
      l.node = m->address();
      l.joined_late = true;
    }
    std::vector<std::string> gone;
    for (const auto& [key, l] : links_)
      if (!masters.contains(key)) gone.push_back(key);
    for (const auto& key : gone) {
      auto it = links_.find(key);
      if (it == links_.end()) continue;
      const HostPort node = it->second.node;
      drop_link(it);
      note(node, "monitor-stopped", "no longer a master of the cluster");
      if (session_.closing() || !active_) return;
    }
  }
  // A node that neither answers MONITOR nor fails within this is given up like a failed one (a connection
  // that hangs in its handshake, a node that does not read).
  const std::uint64_t limit = static_cast<std::uint64_t>(worker_.config().connect_timeout.count()) +
                              static_cast<std::uint64_t>(worker_.config().request_timeout.count());
  std::vector<std::string> keys;
  for (const auto& [key, l] : links_)
    keys.push_back(key);
  for (const auto& key : keys) {
    auto it = links_.find(key);
    if (it == links_.end()) continue;
    Link& l = it->second;
    if (l.backend) {
      l.backend->check_deadlines(now_ms);  // the login's reply, and the connect timeout
      if (l.failed) {
        const std::string why = l.backend->last_failure();
        interrupted(l, why.empty() ? std::string("connection lost") : why, now_ms);
      } else if (!l.confirmed && now_ms - l.opened_ms > limit) {
        interrupted(l, "no answer to MONITOR within " + std::to_string(limit) + " ms", now_ms);
      }
    } else if (now_ms >= l.retry_at_ms) {
      if (!l.reserved) {
        // Its place under max-blocking-connections: a joiner takes one when one is free.
        if (!session_.reserve_own_connection()) {
          interrupted(l,
                      "max-blocking-connections (" +
                          std::to_string(worker_.config().max_blocking_connections) + ") reached",
                      now_ms);
          if (session_.closing() || !active_) return;
          continue;
        }
        l.reserved = true;
      }
      if (!open(l)) interrupted(l, l.why, now_ms);
    }
    if (session_.closing() || !active_) return;
  }
}

}  // namespace slotshift::proxy

// ---------------------------------------------------------------------------------------------------------------
// The session's side

namespace slotshift::proxy {

void Session::monitor(Args args, const CommandInfo* cmd) {
  if (!cmd || !arity_ok(*cmd, args.size())) return answer("monitor", errors::wrong_arity("monitor"));
  // MONITOR shows every client's commands and their values: it is an administrative command, refused as
  // the others are unless the proxy allows them.
  if (!worker_.config().allow_admin_commands) {
    worker_.stats().errors_refused.add();
    return answer("monitor", errors::refused_admin("monitor"));
  }
  if (!monitor_) monitor_ = std::make_unique<Monitor>(*this, worker_);
  worker_.monitors().insert(this);
  auto r = new_request("monitor", cmd);
  enqueue(r);
  monitor_->start(r);
  if (!closing_ && !monitor_->active()) worker_.monitors().erase(this);
}

void Session::end_monitor() {
  if (!monitor_) return;
  monitor_->close();
  worker_.monitors().erase(this);
}

}  // namespace slotshift::proxy
