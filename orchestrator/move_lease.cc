#include "orchestrator/move_lease.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>

namespace slotshift {
namespace {

constexpr std::string_view kPrefix = "slotshift-lease:";

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown-host";
  return buf;
}

std::vector<LeaseSeen> leases_in(const std::string& client_list) {
  std::vector<LeaseSeen> out;
  for (const auto& [id, addr, name] : clients_in(client_list)) {
    LeaseSeen s;
    s.client_id = id;
    s.addr = addr;
    if (!name.starts_with(kPrefix)) continue;
    // <move id>:<until>:<host>; the move id has no ':'.
    const auto rest = name.substr(kPrefix.size());
    const auto a = rest.find(':'), b = rest.find(':', a == std::string::npos ? a : a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    s.move_id = rest.substr(0, a);
    s.until_ms = std::strtoll(rest.substr(a + 1, b - a - 1).c_str(), nullptr, 10);
    s.host = rest.substr(b + 1);
    out.push_back(std::move(s));
  }
  return out;
}

// CLOCK_BOOTTIME: unlike steady_clock, it counts the time the machine was suspended, which a stalled holder
// must count too.
std::int64_t lease_clock_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_BOOTTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Closes, on the node `c` is connected to, every connection of the move whose lease `lease_id` was (its
// replica link included): named move_connection_name(lease_id), alone or with a role after a ':'.
void close_connections_of(NodeClient& c, const std::string& lease_id) {
  auto list = c.command({"CLIENT", "LIST"});
  if (!list || list->is_error()) return;
  const std::string name = move_connection_name(lease_id);
  for (const auto& client : clients_in(list->str))
    if (client.name == name || client.name.starts_with(name + ":"))
      c.command({"CLIENT", "KILL", "ID", client.id});
}

}  // namespace

std::string move_connection_name(std::string_view lease_id) {
  return "slotshift-move:" + std::string(lease_id);
}

std::vector<LeaseSeen> leases_on(NodeClient& c) {
  auto list = c.command({"CLIENT", "LIST", "TYPE", "normal"});
  if (!list || list->is_error()) return {};
  return leases_in(list->str);
}

MoveLease::MoveLease(std::string move_id, std::chrono::milliseconds ttl, std::chrono::milliseconds timeout,
                     Credentials credentials)
    : move_id_(std::move(move_id)), ttl_(ttl), timeout_(timeout), credentials_(std::move(credentials)) {
  // The lease's own connections are not fenced by it: a renewal that connects would wait for itself.
  credentials_.lease_lost = nullptr;
}

MoveLease::~MoveLease() {
  release();
}

std::string MoveLease::name(std::int64_t until_ms) const {
  return std::string(kPrefix) + move_id_ + ":" + std::to_string(until_ms) + ":" + host_name();
}

bool MoveLease::acquire(const std::vector<HostPort>& nodes) {
  nodes_ = nodes;
  held_.clear();
  taken_over_.clear();
  auto refuse = [&](std::string why) {
    error_ = std::move(why);
    held_.clear();  // closing the connections drops whatever we had set
    return false;
  };
  // 1. Our name on every node, with its connection's id.
  const std::int64_t round_start = lease_clock_ns();
  std::vector<std::string> my_ids;
  for (const auto& node : nodes_) {
    NodeClient c;
    if (!c.connect(node, timeout_, credentials_)) return refuse("cannot take the move lease on " + c.error());
    auto set = c.command({"CLIENT", "SETNAME", name(unix_ms() + ttl_.count())});
    auto id = c.command({"CLIENT", "ID"});
    if (!set || set->is_error() || !id || id->is_error())
      return refuse("cannot take the move lease on " + node.str() + ": CLIENT SETNAME/ID: " +
                    (set && set->is_error() ? set->str
                     : id && id->is_error() ? id->str
                                            : c.error()));
    my_ids.push_back(std::to_string(id->integer));
    held_.push_back(std::move(c));
  }
  // 2. Then look: any other lease that has not expired makes us give up (see the header); an expired one is
  //    taken over.
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    auto list = held_[i].command({"CLIENT", "LIST", "TYPE", "normal"});
    if (!list || list->is_error())
      return refuse("cannot read CLIENT LIST on " + nodes_[i].str() + ": " +
                    (list ? list->str : held_[i].error()));
    for (const auto& other : leases_in(list->str)) {
      if (other.client_id == my_ids[i]) continue;
      if (other.until_ms < unix_ms()) {
        // Expired: its holder has not renewed it for a whole ttl (a vanished machine, a partition, a process
        // stopped). Its connections go with it, before this move changes anything: a holder that was only
        // stopped finds them closed when it wakes up (see the header).
        held_[i].command({"CLIENT", "KILL", "ID", other.client_id});
        close_connections_of(held_[i], other.move_id);
        if (std::find(taken_over_.begin(), taken_over_.end(), other.move_id) == taken_over_.end())
          taken_over_.push_back(other.move_id);
        continue;
      }
      return refuse("another slotshift move holds " + nodes_[i].str() + ": " + other.move_id + " from " +
                    other.host + " (connection " + other.addr + "), its lease valid for " +
                    std::to_string((other.until_ms - unix_ms()) / 1000) +
                    " s more and renewed while it runs. Wait for it to end; if it was killed, slotshift "
                    "resume or abort with its journal");
    }
  }
  {
    std::lock_guard lock(mu_);
    stopping_ = false;
  }
  lost_ = false;
  renewed_at_ns_ = round_start;
  renewer_ = std::thread([this] { renew_loop(); });
  return true;
}

void MoveLease::close_elsewhere(const std::vector<HostPort>& others) {
  if (taken_over_.empty()) return;
  for (const auto& node : others) {
    if (std::find(nodes_.begin(), nodes_.end(), node) != nodes_.end()) continue;
    NodeClient c;
    if (!c.connect(node, timeout_, credentials_)) continue;
    for (const auto& id : taken_over_)
      close_connections_of(c, id);
  }
}

void MoveLease::renew_loop() {
  std::unique_lock lock(mu_);
  // Every quarter ttl: a round that is slow (a node near its timeout) still ends before held() says no.
  while (!stop_cv_.wait_for(lock, ttl_ / 4, [&] { return stopping_; })) {
    lock.unlock();
    const bool renewed = renew();
    lock.lock();
    if (!renewed) return;
  }
}

bool MoveLease::renew() {
  std::lock_guard connections(conn_mu_);
  const std::int64_t round_start = lease_clock_ns();
  for (std::size_t i = 0; i < held_.size(); ++i) {
    auto r = held_[i].usable() ? held_[i].command({"CLIENT", "SETNAME", name(unix_ms() + ttl_.count())})
                               : std::nullopt;
    if (r && !r->is_error()) continue;
    std::string why = r ? r->str : held_[i].error();
    // The connection failed (a node that stalled past the timeout, a dropped link) or was closed by another
    // slotshift that took the lease over once it expired: the two cannot be told apart from here. Within
    // half the ttl of the last renewal no one can have taken it over (see the header), so it is set again on
    // a new connection, unless another live lease is there by then. Past that, it is lost for good: set
    // again later, it could be taken back from a recovery that has already finished, by a move that no
    // longer knows where its slots are.
    bool again = false;
    while (!again && held()) {
      again = set_again(i, why);
      if (!again && !lost_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!again) {
      lose("the lease's connection to " + nodes_[i].str() + " failed (" + why +
           ") and the lease could not be set again within half its " + std::to_string(ttl_.count()) +
           " ms ttl: another slotshift may have taken it over");
      return false;
    }
  }
  renewed_at_ns_ = round_start;
  return true;
}

bool MoveLease::set_again(std::size_t i, std::string& why) {
  NodeClient c;
  if (!c.connect(nodes_[i], timeout_, credentials_)) {
    why = c.error();
    return false;
  }
  auto set = c.command({"CLIENT", "SETNAME", name(unix_ms() + ttl_.count())});
  auto id = c.command({"CLIENT", "ID"});
  auto list = c.command({"CLIENT", "LIST", "TYPE", "normal"});
  if (!set || set->is_error() || !id || id->is_error() || !list || list->is_error()) {
    why = c.error().empty() ? "CLIENT SETNAME, ID or LIST refused" : c.error();
    return false;
  }
  for (const auto& other : leases_in(list->str))
    if (other.client_id != std::to_string(id->integer) && other.until_ms >= unix_ms()) {
      lose("another slotshift move (" + other.move_id + " from " + other.host + ") holds the lease on " +
           nodes_[i].str() + " now");
      return false;
    }
  held_[i] = std::move(c);
  return true;
}

void MoveLease::lose(std::string why) const {
  std::lock_guard lock(mu_);
  if (lost_.load()) return;
  lost_reason_ = std::move(why);
  lost_ = true;
}

bool MoveLease::held() const {
  if (lost_.load()) return false;
  const auto since_ns = lease_clock_ns() - renewed_at_ns_.load();
  if (since_ns < std::chrono::nanoseconds(ttl_).count() / 2) return true;
  // For good: a renewal that comes late must not make it true again after a step went ahead without it.
  lose("the move lease was last renewed " + std::to_string(since_ns / 1000000) + " ms ago, past half its " +
       std::to_string(ttl_.count()) +
       " ms ttl (this process stalled, or its nodes did not answer): another slotshift may have taken it "
       "over");
  return false;
}

bool MoveLease::confirm() {
  return held() && renew();
}

std::string MoveLease::lost_reason() const {
  std::lock_guard lock(mu_);
  return lost_reason_;
}

std::function<std::string()> MoveLease::fence() {
  return [this] { return confirm() ? std::string() : lost_reason(); };
}

void MoveLease::release() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (renewer_.joinable()) renewer_.join();
  std::lock_guard connections(conn_mu_);
  held_.clear();  // closing the connections ends the lease
}

}  // namespace slotshift
