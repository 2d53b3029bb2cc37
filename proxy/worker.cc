#include "proxy/worker.h"
#include "proxy/log.h"

#include "proxy/config_reload.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <unordered_set>

#include "common/resp.h"
#include "proxy/errors.h"
#include "proxy/info_merge.h"
#include "proxy/scan_cursor.h"
#include "proxy/session.h"

namespace slotshift::proxy {
namespace {

constexpr std::uint64_t kTickMs = 10;
// An idle worker's tick (Worker::tick_fast_): what it still has to look at, the slot map's age against
// --refresh-interval-ms, can wait that long.
constexpr std::uint64_t kIdleTickMs = 250;
// How long a write refused with NOREPLICAS is retried before the refusal reaches the client.
constexpr std::uint64_t kNoReplicasPatienceMs = 500;

bool parse_integer_reply(std::string_view reply, std::int64_t& out) {
  if (reply.size() < 4 || reply[0] != ':') return false;
  const auto [p, ec] = std::from_chars(reply.data() + 1, reply.data() + reply.size() - 2, out);
  return ec == std::errc() && p == reply.data() + reply.size() - 2;
}

std::string unexpected(std::string_view what) {
  return errors::merge_unexpected(what);
}

}  // namespace

bool parse_redirect(std::string_view reply, std::size_t prefix_len, Slot& slot, HostPort& node) {
  std::string_view rest = reply.substr(prefix_len);
  const auto space = rest.find(' ');
  const auto end = rest.find('\r');
  if (space == std::string_view::npos || end == std::string_view::npos || end < space) return false;
  unsigned value = 0;
  const auto [p, ec] = std::from_chars(rest.data(), rest.data() + space, value);
  if (ec != std::errc() || p != rest.data() + space || value >= kSlotCount) return false;
  std::string error;
  auto hp = parse_host_port(rest.substr(space + 1, end - space - 1), error);
  if (!hp) return false;
  slot = static_cast<Slot>(value);
  node = std::move(*hp);
  return true;
}

Worker::Worker(Proxy& proxy, Config config, int index)
    : proxy_(proxy),
      config_(std::move(config)),
      index_(index),
      router_(*this),
      held_(*this),
      replica_reads_(*this, config_.read_from) {
  uv_loop_init(&loop_);
  own_login_ = own_login(config_.masteruser, config_.masterauth);
  questions_.use_login(own_login_);
}

Worker::~Worker() {
  questions_.shutdown();
  retired_.clear();
  draining_.clear();
  backends_.clear();
  uv_loop_close(&loop_);
}

std::string Worker::bind(const std::vector<int>& inherited) {
  // Sockets a predecessor handed over (upgrade.h): accepted on as they are, backlog included.
  for (int fd : inherited) {
    const std::string error = listen_on(fd);
    if (!error.empty()) return error;
  }
  if (!inherited.empty()) return "";
  sockaddr_storage addr{};
  int family = AF_INET;
  if (uv_ip4_addr(config_.listen.host.c_str(), config_.listen.port, reinterpret_cast<sockaddr_in*>(&addr)) !=
      0) {
    if (uv_ip6_addr(config_.listen.host.c_str(), config_.listen.port,
                    reinterpret_cast<sockaddr_in6*>(&addr)) != 0) {
      return "cannot listen on '" + config_.listen.str() + "': not an IPv4 or IPv6 address";
    }
    family = AF_INET6;
  }
  const int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::string("socket: ") + std::strerror(errno);
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  // Every worker binds the same address; the kernel spreads incoming connections over them.
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  const socklen_t len = family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    return "cannot listen on " + config_.listen.str() + ": " + why;
  }
  return listen_on(fd);
}

std::string Worker::listen_on(int fd) {
  listeners_.push_back(std::make_unique<uv_tcp_t>());
  uv_tcp_t* listener = listeners_.back().get();
  uv_tcp_init(&loop_, listener);
  listener->data = this;
  listen_fds_.push_back(fd);
  int rc = uv_tcp_open(listener, fd);
  if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(listener), 1024, &Worker::on_connection);
  if (rc < 0) return "cannot listen on " + config_.listen.str() + ": " + uv_strerror(rc);
  return "";
}

void Worker::close_listeners() {
  for (auto& l : listeners_)
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(l.get())))
      uv_close(reinterpret_cast<uv_handle_t*>(l.get()), nullptr);
}

void Worker::start() {
  uv_timer_init(&loop_, &tick_);
  tick_.data = this;
  uv_timer_start(&tick_, on_tick_timer, kTickMs, kTickMs);
  uv_async_init(&loop_, &stop_async_, &Worker::on_async);
  stop_async_.data = this;
  uv_async_init(&loop_, &control_async_, &Worker::on_control);
  control_async_.data = this;
  {
    std::lock_guard lock(control_mutex_);
    control_open_ = true;
  }
  uv_check_init(&loop_, &flush_);
  flush_.data = this;
  uv_check_start(&flush_, [](uv_check_t* c) {
    auto* self = static_cast<Worker*>(c->data);
    // A flush of replies may let a client's next commands run (one that waited for its earlier ones,
    // Session::process_input): what they send goes out in this iteration too, not at the next tick.
    for (int round = 0; round < 3 && (!self->dirty_.empty() || !self->dirty_sessions_.empty()); ++round) {
      self->flush_backends();
      std::vector<Session*> sessions;
      sessions.swap(self->dirty_sessions_);
      for (Session* s : sessions)
        s->flush_replies();
    }
    // After any event of this loop iteration (and the flush above, whose failures may start a reload): one
    // that gave an idle worker something to watch brings the fast tick back. Constant-time checks; what they
    // miss (a client's backends need a client first; a reload's own probes) the next slow tick finds.
    if (!self->tick_fast_ && self->work_without_tick()) self->wake_tick();
  });
  router_.refresh();
  proxy_.running_workers_.fetch_add(1);
  thread_ = std::thread([this] {
    uv_run(&loop_, UV_RUN_DEFAULT);
    proxy_.running_workers_.fetch_sub(1);
  });
}

void Worker::stop() {
  // Once the loop has closed its handles (on_async) there is nothing to wake.
  std::lock_guard lock(control_mutex_);
  if (control_open_) uv_async_send(&stop_async_);
}

void Worker::drain(std::uint64_t deadline_ms) {
  if (stopping_ || in_drain_) return;
  in_drain_ = true;
  drain_deadline_ms_ = deadline_ms;
  // No new client: a connection the kernel has accepted but this loop has not is refused when the socket
  // closes, and its client connects again elsewhere (a Service's other proxies). After a handover the socket
  // stays open in the successor, which accepts what waits in its backlog.
  close_listeners();
  drain_step(now_ms());
}

void Worker::close_for_drain(Session* session) {
  auto& counter = session->done_for_drain(now_ms()) ? proxy_.drained_answered() : proxy_.drained_unanswered();
  counter.fetch_add(1);
  session->close();
}

void Worker::apply_config(const Config& next, bool login_changed) {
  config_ = next;
  if (!login_changed) return;
  const LoginPtr old = own_login_;
  own_login_ = own_login(next.masteruser, next.masterauth);
  // Connections in use keep their login (the node accepted it); a connection made again after a failure logs
  // in with the new one, as a password rotated at the nodes requires. Clients' own logins (ACL pass-through)
  // are theirs, not the proxy's.
  for (auto& [key, b] : backends_)
    if (b->login() == old) b->set_login(own_login_);
  questions_.use_login(own_login_);
}

void Worker::drain_step(std::uint64_t now) {
  const bool late = now >= drain_deadline_ms_;
  for (Session* s : std::vector<Session*>(sessions_.begin(), sessions_.end()))
    if (sessions_.contains(s) && (late || s->idle_for_drain(now))) close_for_drain(s);
  // Commands of clients that already left still run (Session::close), as on one Redis: the loop ends once
  // they are answered too, or at the deadline.
  bool busy = !sessions_.empty() || !retries_.empty() || !draining_.empty() || held_.has_orphans();
  for (auto& [name, b] : backends_)
    busy = busy || b->inflight() > 0;
  // Through the loop, as stop() from any thread: the rest of this iteration (a control batch, say) runs on a
  // worker that is still whole.
  if (!busy || late) stop();
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

bool Worker::post(std::function<void()> op) {
  std::lock_guard lock(control_mutex_);
  if (!control_open_) return false;
  control_ops_.push_back(std::move(op));
  uv_async_send(&control_async_);
  return true;
}

void Worker::on_control(uv_async_t* handle) {
  auto* self = static_cast<Worker*>(handle->data);
  std::vector<std::function<void()>> ops;
  {
    std::lock_guard lock(self->control_mutex_);
    ops.swap(self->control_ops_);
  }
  // What they queue for backends and clients is written by the check handle right after this poll phase.
  for (auto& op : ops)
    op();
  if (ops.empty()) return;
  // A route's question, a HOLD's drain, a reload's probes: what a control call starts may have deadlines of
  // its own, and the fast tick looks at them. A call that left nothing to look at (a HOLD on slots no command
  // is out for, the handoff's release: what a proxy without clients of those slots gets at every batch of a
  // move) does not start it, as each fast tick is a wake-up of every proxy of a fleet; the slow tick is timed
  // again for the end of the holds it may have changed, if that comes before the tick already due: timed
  // again at every call, a worker sent calls more often than its slow tick's period (every batch of a fleet's
  // move) would never reach it, and its periodic reload and node checks would wait for the move's end.
  if (!self->nothing_to_tick()) {
    self->wake_tick();
  } else if (!self->tick_fast_) {
    self->rest_tick(/*only_sooner=*/true);
  }
}

void Worker::on_async(uv_async_t* handle) {
  auto* self = static_cast<Worker*>(handle->data);
  if (self->stopping_) return;
  self->stopping_ = true;
  {
    // No post() may touch the async handle once it is closing.
    std::lock_guard lock(self->control_mutex_);
    self->control_open_ = false;
    self->control_ops_.clear();
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&self->control_async_), nullptr);
  self->close_listeners();  // (a drain may have closed them already)
  uv_close(reinterpret_cast<uv_handle_t*>(&self->tick_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&self->stop_async_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&self->flush_), nullptr);
  std::vector<Session*> sessions(self->sessions_.begin(), self->sessions_.end());
  for (Session* s : sessions) {
    if (self->in_drain_) {
      self->close_for_drain(s);  // a second signal during the drain: counted in what it did
    } else {
      s->close();
    }
  }
  for (auto& [name, b] : self->backends_)
    b->shutdown();
  self->questions_.shutdown();
  // Connections retired in this very iteration are freed at a tick that will not come: their handles must
  // close now, or the loop never ends.
  for (auto& b : self->retired_)
    b->shutdown();
  for (auto& b : self->draining_)
    b->shutdown();
}

std::string Worker::merge_every_node(Request& p) {
  // Each node's answer is part of the whole: the first that is not what was wanted answers for the command,
  // naming its node, so that a sum over some masters or a setting applied on some nodes is never passed off
  // as the whole.
  std::size_t ok = 0;
  const std::string* failed = nullptr;
  std::size_t failed_at = 0;
  for (std::size_t i = 0; i < p.part_replies.size(); ++i) {
    const std::string& part = p.part_replies[i];
    const bool error = part.empty() || part[0] == '-' || part[0] == '!';
    // INFO is a bulk string in RESP2 and a verbatim one ("=...txt:") on a RESP3 client's connections.
    const bool good =
        p.merge == Merge::kInfo ? !error && (part[0] == '$' || part[0] == '=') : part == "+OK\r\n";
    if (good) {
      ++ok;
    } else if (!failed) {
      failed = &part;
      failed_at = i;
    }
  }
  if (failed) {
    const std::string node = failed_at < p.part_nodes.size() ? p.part_nodes[failed_at] : std::string("?");
    const bool error = !failed->empty() && ((*failed)[0] == '-' || (*failed)[0] == '!');
    std::string what = error ? resp::decode(*failed).str : errors::merge_unexpected(*failed).substr(1);
    while (!what.empty() && (what.back() == '\n' || what.back() == '\r'))
      what.pop_back();
    return p.merge == Merge::kInfo ? errors::info_node_failed(what, node)
                                   : errors::every_node_failed(what, node, ok, p.part_replies.size());
  }
  if (p.merge == Merge::kEveryNodeOk) return "+OK\r\n";
  std::vector<std::string> texts;
  for (const auto& part : p.part_replies) {
    resp::Value v = resp::decode(part);
    // A verbatim string starts with its format ("txt:"), which is not part of the text.
    if (v.type == resp::Type::kVerbatimString && v.str.size() >= 4) v.str.erase(0, 4);
    texts.push_back(std::move(v.str));
  }
  const std::vector<std::string_view> views(texts.begin(), texts.end());
  std::string text, why;
  if (!p.info || !info_merge::compose(*p.info, views, text, why)) return errors::merge_unexpected(why);
  std::string out;
  resp::append_text(out, text, p.proto);
  return out;
}

void Worker::on_connection(uv_stream_t* server, int status) {
  auto* self = static_cast<Worker*>(server->data);
  if (status < 0 || self->stopping_) return;
  self->wake_tick();
  Session::accept(*self, server);
}

void Worker::session_closed(Session* session) {
  sessions_.erase(session);
}

std::size_t Worker::close_idle_dedicated() {
  std::size_t closed = 0;
  for (Session* s : sessions_)
    closed += s->close_idle_dedicated(0);
  return closed;
}

void Worker::owners_changed() {
  // A monitor only takes note (it acts at its next tick).
  for (Session* s : monitors_)
    if (s->monitor_) s->monitor_->owners_changed();
  // A tracking client gets a push queued, which may close it (replies past its bound behind an unanswered
  // command), and a closed one leaves trackers_: the walk goes over a copy.
  for (Session* s : std::vector<Session*>(trackers_.begin(), trackers_.end()))
    if (trackers_.contains(s)) s->tracking_->owners_changed();
  if (subscribers_.empty()) return;
  // A subscription may open or close connections of its client: the walk goes over a copy.
  for (Session* s : std::vector<Session*>(subscribers_.begin(), subscribers_.end()))
    if (subscribers_.contains(s)) s->owners_changed();
}

void Worker::follow_shards_here(Slot slot, const HostPort& node) {
  for (Session* s : std::vector<Session*>(subscribers_.begin(), subscribers_.end()))
    if (subscribers_.contains(s)) s->shards_follow(slot, node);
}

void Worker::ask_node(const HostPort& node, std::string command, NodeAnswer done, int replies) {
  questions_.ask(node, std::move(command), std::move(done), replies);
}

Backend* Worker::backend(const HostPort& node, const LoginPtr& login, int protocol) {
  auto& b = backends_[connection_key(login, node, protocol)];
  if (!b) b = std::make_unique<Backend>(*this, node, login ? login : own_login_, protocol);
  return b.get();
}

Backend* Worker::replica_backend(const HostPort& node, const LoginPtr& login, int protocol) {
  // Apart from the node's other connections (it may be a master too, after a failover, whose clients'
  // connections should not carry READONLY).
  auto& b = backends_["readonly\n" + connection_key(login, node, protocol)];
  if (!b) {
    b = std::make_unique<Backend>(*this, node, login ? login : own_login_, protocol, true);
    b->on_fail([this, replica = b.get()] { replica_reads_.failed(replica); });
  }
  return b.get();
}

void Worker::forget_dirty(Backend* backend) {
  std::erase(dirty_, backend);
}

void Worker::mark_dirty(Session* session) {
  if (!session->dirty_) {
    session->dirty_ = true;
    dirty_sessions_.push_back(session);
  }
}

void Worker::forget_dirty(Session* session) {
  std::erase(dirty_sessions_, session);
}

void Worker::flush_backends() {
  // A flush may fail a backend, whose retries may mark others dirty: take the list as it is now.
  std::vector<Backend*> dirty;
  dirty.swap(dirty_);
  for (Backend* b : dirty)
    b->flush();
}

Session* Worker::owner_of(const Request& r) {
  Session* s = r.session ? r.session : (r.parent ? r.parent->session : nullptr);
  // A client that has closed orders nothing any more (its parked commands went to the retry queue).
  return s && !s->closing() ? s : nullptr;
}

void Worker::dispatch(const RequestPtr& r, bool asking, Backend* to) {
  // Marked from here to the return, and the registry looked at after the mark: a control call answered for
  // this worker without waking it relies on both (held_requests.h).
  const HeldRequests::Dispatching mark(held_);
  if (mark.outermost() && held_.behind()) held_.sync(/*may_route=*/false);
  if (r->done) return;
  if (r->blocking && (!r->session || r->session->closing())) {
    r->done = true;  // the client that asked is gone
    return;
  }
  // An earlier command of the same client waits to be sent again: this one may not overtake it.
  if (Session* owner = owner_of(*r); owner && owner->must_wait(*r)) {
    owner->park(r, asking, to);
    return;
  }
  // While this worker has no hold, slot holds cost the request path this test of a bool (and a counter per
  // request at a backend, for the drain).
  if (held_.active() && held_.hold_if_needed(r, asking || to)) return;
  if (r->has_slot && r->name == "spublish" && proxy_.shard_pending(r->slot).load() > 0) {
    // A client's shard channel of this slot is being subscribed where the slot went (Subscriptions::follow):
    // an SPUBLISH sent before the node confirms it would go unheard. Sent at a later tick, once it has.
    retry_later(r, 0, "shard channels being subscribed at the slot's new owner");
    return;
  }
  if (r->watch != Request::Watch::kNone) {
    // Only on the client's watch connection, and only while it is the one the watch was made on: elsewhere
    // nothing is watched. When it is gone, WATCH answers OK (as it always does) and EXEC nil.
    Session* s = owner_of(*r);
    Backend* w = s ? s->watch_connection(*r) : nullptr;
    if (!w) {
      complete(r,
               r->watch == Request::Watch::kExec ? std::string(errors::kNilArray) : std::string("+OK\r\n"));
      return;
    }
    if (r->pins_watch) s->unpin(*r);
    // A tracking client's watched transaction runs on its watch connection, which tracks nothing: its reads
    // are followed by a drop of the whole cache.
    if (r->watch == Request::Watch::kExec && s->tracking_ && s->tracking_->on()) r->untracked_read = true;
    w->send(r, false);
    return;
  }
  r->replica = nullptr;
  Backend* b = to;
  if (!b) b = r->fixed ? r->fixed : (r->has_slot ? router_.owner(r->slot) : nullptr);
  if (!b && !r->has_slot && !router_.masters().empty()) b = router_.masters().front();
  if (!b) {
    // The slot map is not loaded yet, or no node serves the slot: wait for a refresh, within the deadline.
    router_.refresh_soon();
    std::string cause =
        r->has_slot ? "no node serves hash slot " + std::to_string(r->slot) : std::string("topology unknown");
    if (!router_.last_error().empty()) cause += " (" + router_.last_error() + ")";
    retry_later(r, 20, cause);
    return;
  }
  if (!to && replica_reads_.eligible(*r) && !client_reads_on_masters(*r)) {
    std::string wait;
    if (Backend* replica = replica_reads_.pick(*r, b, wait)) {
      stats_.replica_reads.add();
      r->replica = replica;
      replica->send(r, false);
      return;
    }
    if (!wait.empty()) {
      // --read-from replica, and no replica of the shard is usable: one may be again soon (the map's next
      // reload, the end of a failed one's time out), within the request's deadline.
      router_.refresh_soon();
      retry_later(r, 50, wait);
      return;
    }
  }
  // With ACL pass-through a request runs as its client's user, wherever the slot map or a redirect sends it:
  // on that user's connection to the same node. A RESP3 client's on a connection that speaks RESP3: the node
  // gives every reply its RESP3 type.
  if ((r->login && !same_login(b->login(), r->login)) || b->protocol() != r->proto)
    b = backend(b->address(), r->login, r->proto);
  if (r->blocking) {
    // On a connection of its own, which tracks nothing: a blocking read (XREAD BLOCK) of a tracking client is
    // followed by a drop of its whole cache.
    if (r->session->tracking_ && r->session->tracking_->on() && r->cmd &&
        r->cmd->has_flag(CommandFlag::kReadonly))
      r->untracked_read = true;
    b = r->session->dedicated(b->address(), r->login, r->proto);
    if (!b) return wait_for_room_or_refuse(r);
  } else if (Session* owner = owner_of(*r); owner && owner->tracking_ && owner->tracking_->on()) {
    // A tracking client's commands run on its own connections, where the node tracks what it reads (and
    // NOLOOP knows its writes). A blocking one keeps a connection of its own, which nothing else waits on.
    b = owner->tracking_->connection(b->address(), r->login, r->proto);
    if (!b) return wait_for_room_or_refuse(r);
  }
  b->send(r, asking);
}

void Worker::wait_for_room_or_refuse(const RequestPtr& r) {
  // Other workers may be closing their clients' connections that nothing uses now (the round of asks the
  // reservation started, or one under way): there may be room once they have. A request waits for one round,
  // within its deadline as any wait in the proxy, and is refused if that made no room for it.
  if (r->room_round == 0) r->room_round = proxy_.room_round();
  if (!proxy_.room_made(r->room_round))
    return retry_later(r, 0, "waiting for room among the blocking connections");
  stats_.errors_refused.add();
  complete(r, errors::too_many_blocking(config_.max_blocking_connections));
}

bool Worker::client_reads_on_masters(const Request& r) {
  const Session* owner = owner_of(r);
  // A client's reads between WATCH and EXEC stay on the master: what they read decides what the transaction
  // writes, and a replica's older value, changed before the WATCH, is a change the watch never sees. So do
  // the reads of a client that asked for READWRITE.
  // A tracking client's too: its invalidations come from the masters it reads.
  return owner &&
         (owner->watching_ || owner->reads_on_masters_ || (owner->tracking_ && owner->tracking_->on()));
}

void Worker::retry_later(const RequestPtr& r, std::uint64_t delay_ms, std::string_view cause,
                         std::string_view server_error) {
  if (r->done) return;
  const std::uint64_t now = now_ms();
  const std::uint64_t at = now + delay_ms;
  // A blocking command has no deadline while the server blocks it, but its waits in the proxy have one: a
  // BLPOP during CLUSTERDOWN gets an error after request-timeout, as any other command.
  // A blocking command that was blocked at the server for longer than that starts a new wait.
  const auto timeout = static_cast<std::uint64_t>(config_.request_timeout.count());
  if (r->deadline_ms == 0 && (r->wait_deadline_ms == 0 || (r->sent_ms != 0 && now - r->sent_ms > timeout))) {
    r->wait_deadline_ms = now + timeout;
    r->sent_ms = 0;
  }
  r->sent = false;
  if (at >= r->wait_deadline()) {
    stats_.errors_timeout.add();
    complete(r, errors::timeout(cause));
    return;
  }
  ++r->attempt;
  r->retry_at_ms = at;
  r->last_cause = std::string(cause);
  r->last_error = std::string(server_error);
  stats_.retries.add();
  if (!r->retrying) {
    r->retrying = true;
    waiting_bytes_ += r->wire.size();
    if (Session* owner = owner_of(*r)) owner->retry_started(*r);
  }
  retries_.push_back(r);
}

void Worker::retry_due(const RequestPtr& r, std::uint64_t now) {
  Session* owner = owner_of(*r);
  if (owner && r->has_slot) {
    // Sending it again is safe only if no later command of the client for the same slot has been sent
    // meanwhile: that one could then run first (SET k 10 sent again after SET k 20 leaves 10). One still at a
    // node is waited for; one already answered means this one can no longer keep its place, and the client
    // gets the error that stopped it, as from Redis itself.
    switch (owner->later_on_slot(*r)) {
      case Session::Later::kNone:
        break;
      case Session::Later::kSent:
        r->retry_at_ms = now + kTickMs;
        retries_.push_back(r);
        return;
      case Session::Later::kDone:
        stats_.errors_reordered.add();
        complete(r, r->last_error.empty() ? errors::not_retried(r->last_cause) : r->last_error);
        return;
    }
  }
  // Sent first, then what its client parked behind it: on the same connection they follow it.
  r->retrying = false;
  waiting_bytes_ -= r->wire.size();
  dispatch(r);
  if (owner) owner->retry_ended(*r);
}

bool Worker::follow_redirect(const RequestPtr& r, std::string_view err) {
  Slot slot = 0;
  HostPort node;
  const bool moved = err.starts_with("-MOVED ");
  const bool ask = !moved && err.starts_with("-ASK ");
  if (moved || ask) {
    if (!parse_redirect(err, moved ? 7 : 5, slot, node)) return false;
    (moved ? stats_.moved : stats_.ask).add();
    if (++r->redirects > config_.max_redirects) {
      complete(r, errors::too_many_redirects(err.substr(1, err.size() - 3)));
      return true;
    }
    ++r->attempt;
    stats_.retries.add();
    if (moved) router_.moved(slot, node);
    if (moved && r->name == "spublish" && proxy_.follow_shards(slot, node)) {
      // An SPUBLISH reaches only who is subscribed where it runs: clients' shard channels of the slot (in
      // every worker) are subscribed at the slot's new owner, and it waits until that node has confirmed them
      // (see dispatch), sent again from a later tick (the client's later commands wait behind it). Its
      // redirect is not counted again. (Nodes answer an SPUBLISH for a migrating slot themselves, never ASK:
      // a shard channel is no key.)
      --r->redirects;
      retry_later(r, 0, "shard channels being subscribed at " + node.str());
      return true;
    }
    if (moved) {
      dispatch(r, false, r->has_slot ? nullptr : backend(node));
    } else {
      // ASK: this one command (or transaction) goes to the importing node, preceded by ASKING; the slot map
      // is not changed, the source still owns the slot.
      dispatch(r, true, backend(node));
    }
    return true;
  }
  const bool tryagain = err.starts_with("-TRYAGAIN");
  const bool clusterdown = !tryagain && err.starts_with("-CLUSTERDOWN");
  if (tryagain || clusterdown) {
    (tryagain ? stats_.tryagain : stats_.clusterdown).add();
    if (clusterdown) router_.refresh_soon();
    // 10, 20, 40, 80, then every 100 ms, until the deadline.
    const std::uint64_t backoff = std::min<std::uint64_t>(100, 10ull << std::min(r->attempt, 3u));
    retry_later(r, backoff, std::string(err.substr(1, err.size() - 3)), err);
    return true;
  }
  if (err.starts_with("-NOREPLICAS")) {
    // A master refuses writes while it has fewer good replicas than min-replicas-to-write. slotshift move
    // makes a source do that for a few milliseconds around a claim on servers that cannot stay paused
    // through one; nothing of the command was applied. Retried for a short while; a master that keeps
    // refusing (replicas really missing) gets its error passed on as it is.
    stats_.noreplicas.add();
    const std::uint64_t now = now_ms();
    if (r->refused_since_ms == 0) r->refused_since_ms = now;
    if (now - r->refused_since_ms >= kNoReplicasPatienceMs) return false;
    retry_later(r, std::min<std::uint64_t>(20, 2ull << std::min(r->attempt, 3u)),
                std::string(err.substr(1, err.size() - 3)), err);
    return true;
  }
  return false;
}

// An error that says the command ran nowhere, and where or when to send it instead.
static bool is_redirect(std::string_view err) {
  return err.starts_with("-MOVED ") || err.starts_with("-ASK ") || err.starts_with("-TRYAGAIN") ||
         err.starts_with("-CLUSTERDOWN") || err.starts_with("-NOREPLICAS");
}

void Worker::watch_met_redirect(std::string_view err) {
  Slot slot = 0;
  HostPort node;
  if (err.starts_with("-MOVED ") && parse_redirect(err, 7, slot, node)) router_.moved(slot, node);
}

void Worker::on_backend_reply(const RequestPtr& r, std::string reply) {
  if (r->watch == Request::Watch::kWatch) {
    // A WATCH that met a redirect watched nothing: the transaction behind it answers nil (its client tries
    // again, and finds the slot where the map now says). WATCH itself answers OK, as it always does.
    if (is_redirect(reply)) {
      watch_met_redirect(reply);
      // Broken before the reply is in: an EXEC waiting for it must find the watch gone.
      if (Session* s = owner_of(*r)) s->watch_redirected(*r);
      complete(r, "+OK\r\n");
      return;
    }
    complete(r, std::move(reply));
    return;
  }
  if (r->replies_per_send > 1) {
    // A MULTI ... EXEC block: the client already has its +OK and +QUEUED replies and gets only EXEC's. A
    // queued command answered MOVED or ASK aborts the block (EXECABORT): send it all again where the redirect
    // says.
    std::vector<std::string_view> replies;
    resp::Scanner scanner(resp::Scanner::Mode::kReply);
    std::string_view rest = reply;
    while (!rest.empty() && scanner.scan(rest) == resp::Status::kComplete) {
      replies.push_back(rest.substr(0, scanner.size()));
      rest.remove_prefix(scanner.size());
      scanner.reset();
    }
    if (replies.empty()) {
      complete(r, unexpected(reply));
      return;
    }
    if (r->watch == Request::Watch::kExec) {
      // A watched transaction cannot follow a redirect: the watch is on this node. Nothing ran (EXECABORT),
      // which a client of one Redis sees as a changed watched key.
      for (const auto part : replies)
        if (is_redirect(part)) {
          watch_met_redirect(part);
          complete(r, std::string(errors::kNilArray));
          return;
        }
      complete(r, std::string(replies.back()));
      return;
    }
    for (std::size_t i = 1; i + 1 < replies.size(); ++i) {
      if (replies[i][0] == '-' && (replies[i].starts_with("-MOVED ") || replies[i].starts_with("-ASK ") ||
                                   replies[i].starts_with("-NOREPLICAS"))) {
        if (follow_redirect(r, replies[i])) return;
      }
    }
    const std::string_view exec = replies.back();
    if (exec[0] == '-' && follow_redirect(r, exec)) return;
    complete(r, std::string(exec));
    return;
  }
  if (!reply.empty() && reply[0] == '-' && r->replica && replica_reads_.refused(r, reply)) return;
  if (!reply.empty() && reply[0] == '-' && follow_redirect(r, reply)) return;
  complete(r, std::move(reply));
}

void Worker::complete(const RequestPtr& r, std::string reply) {
  if (r->done) return;
  r->done = true;
  r->sent = false;
  r->reply = std::move(reply);
  if (r->retrying) {
    r->retrying = false;
    waiting_bytes_ -= r->wire.size();
    if (Session* owner = owner_of(*r)) owner->retry_ended(*r);
  }
  if (r->parent) {
    RequestPtr parent = r->parent;
    if (parent->done) return;
    parent->part_replies[r->part_index] = std::move(r->reply);
    if (--parent->parts_pending == 0) complete(parent, merge_parts(*parent));
    return;
  }
  if (r->session) r->session->on_request_done(*r);
}

std::string Worker::merge_parts(Request& p) {
  if (p.merge == Merge::kInfo || p.merge == Merge::kEveryNodeOk) return merge_every_node(p);
  // The first error among the parts answers for the whole command, as a single Redis would fail it.
  for (const auto& part : p.part_replies) {
    if (!part.empty() && (part[0] == '-' || part[0] == '!')) return part;
  }
  std::string out;
  switch (p.merge) {
    case Merge::kArrayByIndex: {
      std::vector<std::string_view> merged(p.key_count), elements;
      for (std::size_t i = 0; i < p.part_replies.size(); ++i) {
        if (!resp::aggregate_elements(p.part_replies[i], elements) ||
            elements.size() != p.part_keys[i].size()) {
          return unexpected(p.part_replies[i]);
        }
        for (std::size_t j = 0; j < elements.size(); ++j)
          merged[p.part_keys[i][j]] = elements[j];
      }
      resp::append_array_header(out, merged.size());
      for (auto e : merged)
        out.append(e);
      return out;
    }
    case Merge::kSumIntegers: {
      std::int64_t sum = 0, n = 0;
      for (const auto& part : p.part_replies) {
        if (!parse_integer_reply(part, n)) return unexpected(part);
        sum += n;
      }
      resp::append_integer(out, sum);
      return out;
    }
    case Merge::kAllOk:
      for (const auto& part : p.part_replies) {
        if (part != "+OK\r\n") return unexpected(part);
      }
      return "+OK\r\n";
    case Merge::kConcatArrays:
    case Merge::kUnionArrays: {
      // KEYS: every master's keys. PUBSUB CHANNELS: a channel with subscribers on several masters, once.
      std::vector<std::string_view> all, elements;
      std::unordered_set<std::string_view> seen;
      for (const auto& part : p.part_replies) {
        if (!resp::aggregate_elements(part, elements)) return unexpected(part);
        for (auto e : elements)
          if (p.merge == Merge::kConcatArrays || seen.insert(e).second) all.push_back(e);
      }
      resp::append_array_header(out, all.size());
      for (auto e : all)
        out.append(e);
      return out;
    }
    case Merge::kSumPairs: {
      // Every master answers for the same names, in the order asked: the counts add up position by position.
      std::vector<std::string_view> names, elements;
      std::vector<std::int64_t> counts;
      for (const auto& part : p.part_replies) {
        if (!resp::aggregate_elements(part, elements) || elements.size() % 2 != 0) return unexpected(part);
        if (names.empty() && counts.empty()) {
          for (std::size_t i = 0; i < elements.size(); i += 2)
            names.push_back(elements[i]);
          counts.assign(names.size(), 0);
        }
        if (elements.size() != names.size() * 2) return unexpected(part);
        for (std::size_t i = 0; i < names.size(); ++i) {
          std::int64_t n = 0;
          if (elements[2 * i] != names[i] || !parse_integer_reply(elements[2 * i + 1], n))
            return unexpected(part);
          counts[i] += n;
        }
      }
      resp::append_array_header(out, names.size() * 2);
      for (std::size_t i = 0; i < names.size(); ++i) {
        out.append(names[i]);
        resp::append_integer(out, counts[i]);
      }
      return out;
    }
    case Merge::kFirstReply:
      return p.part_replies.front();
    case Merge::kArrayMin: {
      std::vector<std::int64_t> mins;
      std::vector<std::string_view> elements;
      for (std::size_t i = 0; i < p.part_replies.size(); ++i) {
        if (!resp::aggregate_elements(p.part_replies[i], elements)) return unexpected(p.part_replies[i]);
        if (i == 0) mins.assign(elements.size(), 1);
        if (elements.size() != mins.size()) return unexpected(p.part_replies[i]);
        for (std::size_t j = 0; j < elements.size(); ++j) {
          std::int64_t v = 0;
          if (!parse_integer_reply(elements[j], v)) return unexpected(elements[j]);
          mins[j] = std::min(mins[j], v);
        }
      }
      resp::append_array_header(out, mins.size());
      for (auto v : mins)
        resp::append_integer(out, v);
      return out;
    }
    case Merge::kScanCursor: {
      std::vector<std::string_view> elements;
      const std::string& part = p.part_replies.front();
      if (!resp::aggregate_elements(part, elements) || elements.size() != 2) return unexpected(part);
      const resp::Value cursor = resp::decode(elements[0]);
      std::uint64_t node_cursor = 0;
      const auto [e, ec] =
          std::from_chars(cursor.str.data(), cursor.str.data() + cursor.str.size(), node_cursor);
      if (ec != std::errc() || e != cursor.str.data() + cursor.str.size()) return unexpected(part);
      if (node_cursor > scan_cursor::kMaxNodeCursor) return std::string(errors::kScanCursorTooLarge);
      std::uint64_t next = 0;
      if (node_cursor != 0) {
        next = scan_cursor::encode({p.scan_slot, p.scan_tag, node_cursor});
      } else {
        // That master is done: on to the owner of the next slot above it that another master serves, in the
        // map as it is now. Slots only go up, so the walk ends; a master whose slots are not in one range may
        // be walked twice (SCAN allows keys twice), and a master whose lowest slot moved below the walk (a
        // slot moved to it) is still reached.
        const Backend* current = router_.owner(p.scan_slot);
        for (unsigned s = p.scan_slot + 1u; s < kSlotCount; ++s) {
          const Backend* b = router_.owner(static_cast<Slot>(s));
          if (b && b != current) {
            next = scan_cursor::encode({static_cast<Slot>(s), scan_cursor::tag_of(b->name()), 0});
            break;
          }
        }
      }
      resp::append_array_header(out, 2);
      resp::append_bulk(out, std::to_string(next));
      out.append(elements[1]);
      return out;
    }
    case Merge::kNone:
    case Merge::kInfo:  // merge_every_node
    case Merge::kEveryNodeOk:
      break;
  }
  return p.part_replies.empty() ? unexpected("") : p.part_replies.front();
}

void Worker::on_tick() {
  if (stopping_) return;
  if (in_drain_) {
    drain_step(now_ms());
    if (stopping_) return;
  }
  retired_.clear();
  const std::uint64_t now = now_ms();
  if (!retries_.empty()) {
    std::vector<RequestPtr> due;
    std::vector<RequestPtr> later;
    for (auto& r : retries_)
      (r->retry_at_ms <= now ? due : later).push_back(std::move(r));
    retries_ = std::move(later);
    for (auto& r : due) {
      if (r->done) continue;
      if (r->wait_deadline() != 0 && now >= r->wait_deadline()) {
        stats_.errors_timeout.add();
        complete(r, errors::timeout(r->last_cause));
        continue;
      }
      retry_due(r, now);
    }
  }
  // A release answered without waking this worker: its held slots are taken again here at the latest.
  if (held_.behind()) held_.sync();
  if (held_.active()) held_.on_tick(now);
  if (!awaiting_.empty()) std::erase_if(awaiting_, [now](auto& check) { return !check(now); });
  for (auto& [name, b] : backends_)
    b->check_deadlines(now);
  if (!draining_.empty()) {
    // Checked first, then closed (freed at the next tick) once nothing is on its way there.
    std::vector<std::unique_ptr<Backend>> draining;
    draining.swap(draining_);
    for (auto& b : draining)
      b->check_deadlines(now);
    for (auto& b : draining) {
      if (b->inflight() == 0) {
        b->shutdown();
        retire(std::move(b));
      } else {
        draining_.push_back(std::move(b));
      }
    }
  }
  questions_.check_deadlines(now);
  for (Session* s : std::vector<Session*>(sessions_.begin(), sessions_.end())) {
    s->check_deadlines(now);
    s->check_idle(now);
    // Reading resumes once the process's bounds allow it (bytes in flight drain without this client).
    if (!s->reading_ && !s->closing_) s->pause_or_resume_reading();
  }
  const bool stale =
      now - router_.last_refresh_ms() >= static_cast<std::uint64_t>(config_.refresh_interval.count());
  if (router_.wants_refresh() || stale || !router_.ready()) router_.refresh_soon();
  flush_backends();
  // Both ways at every tick: a slow tick may itself start work with deadlines (the periodic reload).
  if (!nothing_to_tick()) {
    wake_tick();
  } else if (tick_fast_ || held_.expiry_ms() != 0) {
    rest_tick();
  }
}

void Worker::rest_tick(bool only_sooner) {
  // Never slower than --refresh-interval-ms, which may be set below it (never below 100: range_error()).
  const auto idle_ms = std::min<std::uint64_t>(kIdleTickMs, config_.refresh_interval.count());
  // Held slots with nothing held for them: the next tick comes when the first hold ends (1 ms after, as the
  // loop's clock may lag the registry's; a tick that comes early sets the next one again), so that the
  // worker's copy of the held slots ends with it.
  std::uint64_t first_ms = idle_ms;
  if (const std::uint64_t expiry = held_.expiry_ms(); expiry != 0) {
    const std::uint64_t steady = steady_ms();
    first_ms = std::clamp<std::uint64_t>(expiry > steady ? expiry - steady + 1 : 1, 1, idle_ms);
  }
  if (only_sooner && !tick_fast_ && uv_is_active(reinterpret_cast<uv_handle_t*>(&tick_)) &&
      uv_timer_get_due_in(&tick_) <= first_ms)
    return;
  tick_fast_ = false;
  uv_timer_start(&tick_, on_tick_timer, first_ms, idle_ms);
}

bool Worker::work_without_tick() const {
  return !sessions_.empty() || !retries_.empty() || !awaiting_.empty() || !draining_.empty() ||
         !retired_.empty() || held_.needs_tick() || in_drain_ || !router_.ready() || router_.refreshing() ||
         router_.wants_refresh();
}

bool Worker::nothing_to_tick() const {
  if (work_without_tick() || questions_.waiting()) return false;
  for (const auto& [name, b] : backends_)
    if (b->inflight() > 0) return false;
  return true;
}

void Worker::wake_tick() {
  if (tick_fast_ || stopping_) return;
  tick_fast_ = true;
  uv_timer_start(&tick_, on_tick_timer, kTickMs, kTickMs);
}

// ---------------------------------------------------------------------------------------------------------------

Proxy::Proxy(Config config) : config_(std::move(config)) {
  for (int i = 0; i < config_.threads; ++i)
    workers_.push_back(std::make_unique<Worker>(*this, config_, i));
  holds_.set_workers(workers_.size());
}

void Worker::note_tls_failure(const std::string& who, const std::string& why) {
  const std::uint64_t now = now_ms();
  if (tls_failure_logged_ms_ != 0 && now - tls_failure_logged_ms_ < 1000) {
    ++tls_failures_unlogged_;
    return;
  }
  std::string others;
  if (tls_failures_unlogged_ > 0)
    others = " (and " + std::to_string(tls_failures_unlogged_) + " other failures since the last such line)";
  log_line(LogLevel::kWarning, "TLS with %s failed: %s%s", who.c_str(), why.c_str(), others.c_str());
  tls_failure_logged_ms_ = now;
  tls_failures_unlogged_ = 0;
}

std::string Proxy::load_tls(const Config& config, std::shared_ptr<const TlsContext>& client,
                            std::shared_ptr<const TlsContext>& backend) {
  std::string error;
  if (config.tls.enabled && !(client = TlsContext::server(config.tls, error)))
    return "TLS toward clients: " + error;
  if (config.backend_tls.enabled && !(backend = TlsContext::client(config.backend_tls, error)))
    return "TLS toward the cluster: " + error;
  return "";
}

std::shared_ptr<const TlsContext> Proxy::client_tls() const {
  std::lock_guard lock(tls_mutex_);
  return client_tls_;
}

std::shared_ptr<const TlsContext> Proxy::backend_tls() const {
  std::lock_guard lock(tls_mutex_);
  return backend_tls_;
}

bool Proxy::follow_shards(Slot slot, const HostPort& node) {
  if (shard_channels_[slot].load() == 0) return false;
  // Under way until the last worker has subscribed its clients' channels (each subscription then counts
  // until its node confirms it).
  shard_pending_[slot].fetch_add(1);
  auto left = std::make_shared<std::atomic<std::size_t>>(workers_.size());
  auto done = [this, slot, left] {
    if (left->fetch_sub(1) == 1) shard_pending_[slot].fetch_sub(1);
  };
  for (auto& w : workers_) {
    Worker* worker = w.get();
    if (!worker->post([worker, slot, node, done] {
          worker->follow_shards_here(slot, node);
          done();
        }))
      done();  // a worker that is stopping has no clients left to follow
  }
  return true;
}

Proxy::RoomRound::~RoomRound() {
  proxy.room_rounds_done_.store(number);
}

void Proxy::make_room_for_own_connections(const Worker& asking) {
  // A round is under way while more have started than ended. (A round that ends between the two reads leaves
  // this one unstarted: it had just asked every worker.)
  std::uint64_t done = room_rounds_done_.load();
  if (!room_rounds_started_.compare_exchange_strong(done, done + 1)) return;
  // Each ask holds the round: it ends when the last ask has run, or was dropped by a worker that stopped
  // (which closes its clients' connections anyway), and not before every ask is out.
  auto round = std::make_shared<const RoomRound>(*this, done + 1);
  for (auto& w : workers_) {
    Worker* worker = w.get();
    if (worker != &asking) worker->post([worker, round] { worker->close_idle_dedicated(); });
  }
}

std::optional<std::string> Proxy::ask_node(const HostPort& node, std::string command,
                                           std::chrono::steady_clock::time_point deadline, std::string& why,
                                           int replies) {
  struct Answer {
    std::mutex mutex;
    std::condition_variable ready;
    bool done = false;
    std::optional<std::string> reply;
    std::string why;
  };
  auto answer = std::make_shared<Answer>();
  Worker& worker = *workers_.front();
  const bool posted = worker.post([&worker, node, command = std::move(command), answer, replies]() mutable {
    worker.ask_node(
        node, std::move(command),
        [answer](const std::string* reply, const std::string& failure) {
          std::lock_guard lock(answer->mutex);
          if (reply) answer->reply = *reply;
          answer->why = failure;
          answer->done = true;
          answer->ready.notify_all();
        },
        replies);
  });
  if (!posted) {
    why = "the proxy is stopping";
    return std::nullopt;
  }
  std::unique_lock lock(answer->mutex);
  if (!answer->ready.wait_until(lock, deadline, [&answer] { return answer->done; })) {
    why = "no reply in time";
    return std::nullopt;
  }
  if (!answer->reply) why = answer->why;
  return answer->reply;
}

std::string Proxy::start(const std::vector<int>& inherited) {
  if (auto error = load_tls(config_, client_tls_, backend_tls_); !error.empty()) return error;
  start_time_ms_ = uv_now(workers_.front()->loop());
  // Every inherited socket is accepted on by some worker: one left out would keep the connections waiting
  // in its backlog until they time out.
  std::vector<std::vector<int>> shares(workers_.size());
  for (std::size_t i = 0; i < inherited.size(); ++i)
    shares[i % workers_.size()].push_back(inherited[i]);
  for (std::size_t i = 0; i < workers_.size(); ++i) {
    auto error = workers_[i]->bind(shares[i]);
    if (!error.empty()) return error;
  }
  for (auto& w : workers_)
    w->start();
  return "";
}

std::vector<int> Proxy::listen_fds() const {
  std::vector<int> fds;
  for (const auto& w : workers_)
    fds.insert(fds.end(), w->listen_fds().begin(), w->listen_fds().end());
  return fds;
}

Totals Proxy::totals() const {
  Totals t;
  for (const auto& w : workers_)
    t.add(w->stats());
  t.add(holds_.stats());
  return t;
}

std::size_t Proxy::held_bytes() const {
  std::size_t n = 0;
  for (const auto& w : workers_)
    n += w->stats().held_request_bytes.get();
  return n;
}

void Proxy::topology_loaded(TopologySnapshot topology) {
  std::lock_guard lock(topology_mutex_);
  topology_ = std::move(topology);
}

TopologySnapshot Proxy::topology() const {
  std::lock_guard lock(topology_mutex_);
  return topology_;
}

Config Proxy::config() const {
  std::lock_guard lock(config_mutex_);
  return config_;
}

ReloadOutcome Proxy::reload(const Config& wanted) {
  ReloadPlan plan = plan_reload(config_, wanted);
  if (!plan.error.empty()) return {false, "settings not reloaded, the old ones stay: " + plan.error};
  // The TLS files are read again at every reload (a certificate renewed under the same name): connections
  // made from now on use them, open ones keep theirs. Files that cannot be used leave both sides as they
  // were, names included.
  std::string tls = "no TLS configured, nothing to reload";
  if (plan.next.tls.enabled || plan.next.backend_tls.enabled) {
    std::shared_ptr<const TlsContext> client, backend;
    const std::string error = load_tls(plan.next, client, backend);
    if (!error.empty()) {
      plan.next.tls = config_.tls;
      plan.next.backend_tls = config_.backend_tls;
      std::erase_if(plan.changed, [](const std::string& name) {
        return name.starts_with("tls-") || name.starts_with("backend-tls-");
      });
      tls = "TLS files not reloaded, the connections made from now on use the old ones: " + error;
    } else {
      {
        std::lock_guard lock(tls_mutex_);
        client_tls_ = std::move(client);
        backend_tls_ = std::move(backend);
      }
      std::string what;
      if (plan.next.tls.enabled) what = "toward clients " + plan.next.tls.cert_file;
      if (plan.next.backend_tls.enabled) {
        if (!what.empty()) what += ", ";
        what += "toward the cluster " + (plan.next.backend_tls.cert_file.empty()
                                             ? std::string("(CAs only)")
                                             : plan.next.backend_tls.cert_file);
      }
      tls = "TLS files reloaded (" + what + "): new connections use them, open ones keep theirs";
    }
  }
  {
    std::lock_guard lock(config_mutex_);
    config_ = plan.next;
  }
  for (auto& w : workers_) {
    Worker* worker = w.get();
    worker->post(
        [worker, next = plan.next, login = plan.login_changed] { worker->apply_config(next, login); });
  }
  return {true, describe(plan) + "; TLS: " + tls};
}

bool Proxy::ready(std::string* why) const {
  auto no = [why](const char* reason) {
    if (why) *why = reason;
    return false;
  };
  if (draining()) return no("draining");
  for (const auto& w : workers_) {
    if (!w->router().ready()) return no("no slot map yet");
    if (!w->router().reachable()) return no("no cluster node answered the last slot map reload");
  }
  return true;
}

void Proxy::stop() {
  for (auto& w : workers_)
    w->stop();
}

void Proxy::drain(std::chrono::milliseconds timeout) {
  if (draining_.exchange(true)) return;
  drain_started_ = std::chrono::steady_clock::now();
  for (auto& w : workers_) {
    Worker* worker = w.get();
    worker->post(
        [worker, timeout] { worker->drain(worker->now_ms() + static_cast<std::uint64_t>(timeout.count())); });
  }
}

DrainReport Proxy::drain_report() const {
  DrainReport r;
  r.elapsed_ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - drain_started_)
          .count());
  r.closed_answered = drained_answered_.load();
  r.closed_unanswered = drained_unanswered_.load();
  return r;
}

void Proxy::wait() {
  for (auto& w : workers_)
    w->join();
}

}  // namespace slotshift::proxy
