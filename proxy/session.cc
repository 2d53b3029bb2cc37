#include "proxy/session.h"
#include "proxy/log.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <map>
#include <optional>
#include <type_traits>
#include <unordered_map>

#include "common/ascii.h"
#include "common/slot.h"
#include "proxy/backend.h"
#include "proxy/client_admin.h"
#include "proxy/errors.h"
#include "proxy/info_merge.h"
#include "proxy/scan_cursor.h"
#include "proxy/worker.h"

namespace slotshift::proxy {
namespace {

std::uint64_t mono_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

bool parse_u64(std::string_view s, std::uint64_t& out) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size() && !s.empty();
}

// Redis's "with args beginning with:" preview of an unknown command's arguments.
std::string args_preview(std::span<const std::string_view> args) {
  std::string out;
  for (std::size_t i = 1; i < args.size() && out.size() < 128; ++i) {
    out += "'" + std::string(args[i].substr(0, 128 - std::min<std::size_t>(out.size(), 128))) + "' ";
  }
  return out;
}

// Commands whose keys may be spread over several slots, split into one command per slot and merged back.
struct Splittable {
  std::string_view name;
  Merge merge;
  std::size_t step;  // arguments per key (MSET: key and value)
};
constexpr Splittable kSplittable[] = {
    {"mget", Merge::kArrayByIndex, 1},  {"mset", Merge::kAllOk, 2},         {"del", Merge::kSumIntegers, 1},
    {"unlink", Merge::kSumIntegers, 1}, {"exists", Merge::kSumIntegers, 1}, {"touch", Merge::kSumIntegers, 1},
};

// Keyless commands that concern the whole dataset, sent to every master and merged as a single Redis would
// answer.
struct FanOut {
  std::string_view name;
  Merge merge;
};
constexpr FanOut kFanOut[] = {
    {"dbsize", Merge::kSumIntegers},
    {"keys", Merge::kConcatArrays},
    {"flushall", Merge::kAllOk},
    {"flushdb", Merge::kAllOk},
    {"script|load", Merge::kFirstReply},
    {"script|flush", Merge::kAllOk},
    {"script|exists", Merge::kArrayMin},
    {"function|load", Merge::kFirstReply},
    {"function|delete", Merge::kAllOk},
    {"function|flush", Merge::kAllOk},
    // Each node knows its own subscribers only; the proxy's clients are subscribed on masters.
    {"pubsub|channels", Merge::kUnionArrays},
    {"pubsub|shardchannels", Merge::kUnionArrays},
    {"pubsub|numsub", Merge::kSumPairs},
    {"pubsub|shardnumsub", Merge::kSumPairs},
    {"pubsub|numpat", Merge::kSumIntegers},
};

// Commands that would change the state of the connection they run on, or whose replies are not one per
// request. Every other command may share a connection to a node with other clients' commands; these may not,
// and the proxy does not yet give them a connection of their own: they are refused, inside a transaction or
// not.
struct Unsupported {
  std::string_view name;
  std::string_view why;
};
constexpr std::string_view kStateWhy =
    "it changes the state of the connection it runs on, which the proxy shares between clients";
constexpr std::string_view kPushWhy =
    "its replies are not one per command, and the proxy shares its connections to nodes between clients";
constexpr std::string_view kWaitWhy =
    "it counts the replicas that acknowledged the writes of the connection it runs on, and the proxy's "
    "connections to nodes carry the writes of every client";
// Outside a transaction these run on connections of the client's own (Session::pubsub_command); the proxy
// does not queue them in one.
constexpr std::string_view kPubSubInMultiWhy =
    "inside a transaction: the proxy runs subscriptions on connections of the client's own, outside "
    "transactions only";
// Outside a transaction MONITOR runs on connections of the client's own (monitor.h).
constexpr std::string_view kMonitorInMultiWhy =
    "inside a transaction: the proxy runs MONITOR on connections of the client's own, outside transactions "
    "only";
constexpr Unsupported kUnsupportedState[] = {
    {"subscribe", kPubSubInMultiWhy},
    {"psubscribe", kPubSubInMultiWhy},
    {"ssubscribe", kPubSubInMultiWhy},
    {"unsubscribe", kPubSubInMultiWhy},
    {"punsubscribe", kPubSubInMultiWhy},
    {"sunsubscribe", kPubSubInMultiWhy},
    {"monitor", kMonitorInMultiWhy},
    {"sync", kPushWhy},
    {"psync", kPushWhy},
    {"replconf", kStateWhy},
    {"wait", kWaitWhy},
    {"waitaof", kWaitWhy},
};

// How the proxy treats a command, decided once per command-table entry so that the hot path makes one hash
// lookup on a pointer instead of comparing names.
enum class Handling : std::uint8_t {
  kForward,
  kLocal,
  kUnsupported,
  kSplit,
  kEveryMaster,
  kScan,
  kEveryNode
};

// Settings of the server, which a single Redis changes for itself: sent to every node of the cluster, masters
// and replicas (with allow-admin-commands; administrative commands otherwise). CONFIG GET is answered by one
// master, as any keyless command.
constexpr std::string_view kEveryNode[] = {"config|set", "config|resetstat", "config|rewrite"};
struct Plan {
  Handling handling = Handling::kForward;
  Merge merge = Merge::kNone;
  std::size_t step = 1;
  std::string_view why;  // kUnsupported: the reason given to the client
};

// The names the proxy answers itself (Session::answer_locally). Connection state that the proxy keeps per
// client (SELECT 0, CLIENT SETNAME, CLIENT REPLY, RESET, ...) never reaches a node.
constexpr std::string_view kLocal[] = {"ping",    "echo",     "quit",      "select", "multi",   "exec",
                                       "discard", "hello",    "auth",      "client", "cluster", "info",
                                       "reset",   "readonly", "readwrite", "unwatch"};

const Plan& plan_of(const CommandInfo* cmd) {
  static const std::unordered_map<const CommandInfo*, Plan> plans = [] {
    std::unordered_map<const CommandInfo*, Plan> m;
    auto lookup = [](std::string_view full) {
      const auto bar = full.find('|');
      if (bar == std::string_view::npos) return find_command(full);
      const std::string_view argv[] = {full.substr(0, bar), full.substr(bar + 1)};
      return find_command(std::span<const std::string_view>(argv));
    };
    auto set = [&](std::string_view full, Plan plan) {
      const CommandInfo* info = lookup(full);
      if (!info) return;  // not in this table: it is forwarded, and the server answers
      m[info] = plan;
      for (const auto& sub : info->subcommands)
        m[&sub] = plan;
    };
    for (auto name : kLocal)
      set(name, {Handling::kLocal, Merge::kNone, 1, {}});
    for (const auto& u : kUnsupportedState)
      set(u.name, {Handling::kUnsupported, Merge::kNone, 1, u.why});
    for (const auto& s : kSplittable)
      set(s.name, {Handling::kSplit, s.merge, s.step, {}});
    for (const auto& f : kFanOut)
      set(f.name, {Handling::kEveryMaster, f.merge, 1, {}});
    set("scan", {Handling::kScan, Merge::kNone, 1, {}});
    for (auto name : kEveryNode)
      set(name, {Handling::kEveryNode, Merge::kEveryNodeOk, 1, {}});
    return m;
  }();
  static const Plan forward;
  const auto it = plans.find(cmd);
  return it == plans.end() ? forward : it->second;
}

// One of the commands a split or fanned-out request becomes: it shares the parent's deadline and start time
// and answers into the parent's part_replies[index].
RequestPtr make_part(const RequestPtr& parent, std::size_t index) {
  auto part = std::make_shared<Request>();
  part->parent = parent;
  part->name = parent->name;
  part->cmd = parent->cmd;
  part->seq = parent->seq;
  part->start_ns = parent->start_ns;
  part->deadline_ms = parent->deadline_ms;
  part->idempotent = parent->idempotent;
  part->login = parent->login;
  part->proto = parent->proto;
  part->caching = parent->caching;
  part->part_index = index;
  return part;
}

// A reply for a RESP3 client that the proxy made in RESP2's shapes: a nil of its own (CLIENT GETNAME, an EXEC
// whose watch broke), or a Pub/Sub message or confirmation, which comes from a subscription connection that
// speaks RESP2 and is a push in RESP3. Replies from a node come in RESP3 already and are left alone: no node
// sends "$-1" or "*-1" in RESP3, and no reply but Pub/Sub's is a push.
bool is_subscription_command(std::string_view name) {
  return name.ends_with("subscribe");
}
void to_resp3(Request& r) {
  if (r.reply == "$-1\r\n" || r.reply == "*-1\r\n") {
    r.reply = "_\r\n";
    return;
  }
  if (!r.push && !is_subscription_command(r.name)) return;
  // One value or several (a confirmation per channel): each array at the top becomes a push.
  resp::Scanner scanner(resp::Scanner::Mode::kReply);
  std::string_view rest(r.reply);
  std::size_t at = 0;
  while (at < r.reply.size() && scanner.scan(rest.substr(at)) == resp::Status::kComplete) {
    if (r.reply[at] == '*') r.reply[at] = '>';
    at += scanner.size();
    scanner.reset();
  }
}

// Longer than any retry's backoff (Worker::follow_redirect, Backend::fail).
constexpr std::uint64_t kParkedAfterCloseMs = 150;
// A drain waits this long for more of a command that has started to arrive (Session::done_for_drain).
constexpr std::uint64_t kDrainPartialCommandMs = 1000;
// A drain closes a client that has nothing in flight at once only after this long without a command from it
// (Session::idle_for_drain): a client that is between two commands would send its next one into a closed
// socket, unanswered.
constexpr std::uint64_t kDrainIdleMs = 200;

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Connection

Session::Session(Worker& worker)
    : worker_(worker),
      scanner_(resp::Scanner::Mode::kRequest,
               resp::Limits{worker.config().max_bulk_bytes, worker.config().max_arguments, 64, 64 * 1024}),
      authenticated_(worker.config().client_auth == Config::ClientAuth::kNone) {}

Session::~Session() {
  for (auto& r : queue_)
    r->session = nullptr;
}

void Session::accept(Worker& worker, uv_stream_t* server) {
  auto* s = new Session(worker);
  uv_tcp_init(worker.loop(), &s->tcp_);
  s->tcp_.data = s;
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&s->tcp_)) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&s->tcp_),
             [](uv_handle_t* h) { delete static_cast<Session*>(h->data); });
    return;
  }
  auto& clients = worker.proxy().clients();
  if (clients.fetch_add(1) >= worker.config().max_clients) {
    clients.fetch_sub(1);
    worker.stats().clients_rejected.add();
    // Redis's own error, in clear text: on a TLS port the client sees its handshake fail instead.
    if (!worker.config().tls.enabled) {
      uv_buf_t buf = uv_buf_init(const_cast<char*>(errors::kMaxClients.data()),
                                 static_cast<unsigned>(errors::kMaxClients.size()));
      uv_try_write(reinterpret_cast<uv_stream_t*>(&s->tcp_), &buf, 1);
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&s->tcp_),
             [](uv_handle_t* h) { delete static_cast<Session*>(h->data); });
    return;
  }
  s->id_ = worker.proxy().next_client_id().fetch_add(1);
  s->created_ms_ = s->last_activity_ms_ = worker.now_ms();
  auto address = [](const sockaddr_storage& addr) {
    char ip[64] = "?";
    int port = 0;
    if (addr.ss_family == AF_INET) {
      const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
      uv_ip4_name(a, ip, sizeof ip);
      port = ntohs(a->sin_port);
    } else if (addr.ss_family == AF_INET6) {
      const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
      uv_ip6_name(a, ip, sizeof ip);
      port = ntohs(a->sin6_port);
    }
    return std::string(ip) + ":" + std::to_string(port);
  };
  sockaddr_storage peer{};
  int len = sizeof peer;
  if (uv_tcp_getpeername(&s->tcp_, reinterpret_cast<sockaddr*>(&peer), &len) == 0) s->peer_ = address(peer);
  sockaddr_storage local{};
  len = sizeof local;
  if (uv_tcp_getsockname(&s->tcp_, reinterpret_cast<sockaddr*>(&local), &len) == 0)
    s->laddr_ = address(local);
  uv_tcp_nodelay(&s->tcp_, 1);
  s->out_.attach(reinterpret_cast<uv_stream_t*>(&s->tcp_));
  if (const auto context = worker.proxy().client_tls()) {
    std::string error;
    s->tls_ = TlsChannel::make(*context, error);
    if (!s->tls_) {
      log_line(LogLevel::kWarning, "closing client %s: %s", s->peer_.c_str(), error.c_str());
      clients.fetch_sub(1);
      uv_close(reinterpret_cast<uv_handle_t*>(&s->tcp_),
               [](uv_handle_t* h) { delete static_cast<Session*>(h->data); });
      return;
    }
    s->out_.use_tls(s->tls_.get());
  }
  s->out_.owner = s;
  s->out_.on_error = &Session::on_write_error;
  worker.sessions_.insert(s);
  worker.stats().clients_accepted.add();
  worker.stats().clients_connected.add();
  uv_read_start(reinterpret_cast<uv_stream_t*>(&s->tcp_), &Session::on_alloc, &Session::on_read_cb);
}

void Session::close() {
  if (closing_) return;
  closing_ = true;
  worker_.proxy().clients().fetch_sub(1);
  worker_.stats().clients_connected.sub();
  worker_.session_closed(this);
  if (dirty_) worker_.forget_dirty(this);
  if (!on_hold_.empty()) worker_.held().session_closing(*this);
  // Commands the client sent before it hung up still run, as on a single Redis: parked ones go after the
  // longest retry backoff, so behind the earlier command they waited for.
  std::deque<Parked> parked;
  parked.swap(parked_);
  for (auto& p : parked) {
    worker_.waiting_bytes_ -= p.request->wire.size();
    worker_.retry_later(p.request, kParkedAfterCloseMs, "sent after its client closed");
  }
  // The connections are closed now but freed with the session: a callback of one of them may be what closes
  // the client.
  for (auto& [name, backend] : dedicated_)
    backend->shutdown();
  worker_.proxy().blocking_connections().fetch_sub(dedicated_.size());
  if (login_check_) login_check_->shutdown();  // its callback retires it
  end_subscriptions();
  end_monitor();
  if (tracking_) tracking_->close();
  execs_after_watch_.clear();  // never sent: the client left before their watch was in force
  close_watch_connection(watch_);
  for (auto& w : retiring_watches_)
    close_watch_connection(w);
  retiring_watches_.clear();
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_),
           [](uv_handle_t* h) { delete static_cast<Session*>(h->data); });
}

bool Session::reserve_own_connection() {
  // Each is a connection to a node and a client there: without a cap, clients could open as many as the nodes
  // accept, for everyone.
  auto& count = worker_.proxy().blocking_connections();
  const std::size_t cap = worker_.config().max_blocking_connections;
  if (count.fetch_add(1) < cap) return true;
  count.fetch_sub(1);
  // At the cap: connections that no blocking command uses any more (their clients' last ones returned less
  // than 2 s ago) are closed to make room, in this worker; only connections in use are worth a refusal. With
  // none here, the other workers are asked to close theirs: this reservation fails, but the blocking command
  // that asked for it waits for their answer (Worker::wait_for_room_or_refuse), and any other caller's client
  // may try again.
  if (worker_.close_idle_dedicated() == 0) {
    worker_.proxy().make_room_for_own_connections(worker_);
    return false;
  }
  if (count.fetch_add(1) < cap) return true;
  count.fetch_sub(1);
  return false;
}

Backend* Session::dedicated(const HostPort& node, const LoginPtr& login, int protocol) {
  const std::string key = connection_key(login, node, protocol);
  if (auto it = dedicated_.find(key); it != dedicated_.end()) return it->second.get();
  if (!reserve_own_connection()) return nullptr;
  auto& b = dedicated_[key];
  b = std::make_unique<Backend>(worker_, node, login ? login : worker_.own_login_, protocol);
  return b.get();
}

std::size_t Session::close_idle_dedicated(std::uint64_t idle_ms) {
  if (closing_) return 0;  // close() has closed them all
  std::size_t closed = close_idle_watch(idle_ms);
  const std::uint64_t now = worker_.now_ms();
  for (auto it = dedicated_.begin(); it != dedicated_.end();) {
    Backend& b = *it->second;
    if (b.inflight() == 0 && now - b.last_activity_ms() >= idle_ms) {
      // Closed now, freed at the worker's next tick: this may run inside a callback of that very connection.
      b.shutdown();
      worker_.retire(std::move(it->second));
      it = dedicated_.erase(it);
      worker_.proxy().blocking_connections().fetch_sub(1);
      ++closed;
    } else {
      ++it;
    }
  }
  return closed;
}

void Session::check_deadlines(std::uint64_t now_ms) {
  // A connection of this client's own that has had nothing to do for a while is closed, so that the cap
  // counts blocking commands rather than clients that once ran one.
  constexpr std::uint64_t kIdleDedicatedMs = 2000;
  if (!execs_after_watch_.empty()) release_execs_after_watch();
  if (closing_) return;
  // Most clients have no connection of their own: nothing to walk, and nothing allocated every tick.
  if (pubsub_) pubsub_->check(now_ms);
  if (closing_) return;
  if (monitor_) monitor_->check(now_ms);
  if (closing_) return;
  if (tracking_) tracking_->check(now_ms);
  if (closing_) return;
  if (dedicated_.empty() && !login_check_ && !watch_.backend && retiring_watches_.empty()) return;
  // Answering a request can send others (a parked one, released), which may open or close connections of
  // this client: the loops go over what there was when they began (a connection closed meanwhile stays
  // allocated until the worker's next tick).
  std::vector<Backend*> own;
  for (auto& [name, backend] : dedicated_)
    own.push_back(backend.get());
  if (login_check_) own.push_back(login_check_.get());
  if (watch_.backend) own.push_back(watch_.backend.get());
  for (auto& w : retiring_watches_)
    own.push_back(w.backend.get());
  for (Backend* b : own)
    b->check_deadlines(now_ms);
  if (closing_) return;
  close_idle_dedicated(kIdleDedicatedMs);
  close_idle_watch(kIdleDedicatedMs);
}

void Session::on_alloc(uv_handle_t* handle, std::size_t, uv_buf_t* buf) {
  auto* s = static_cast<Session*>(handle->data);
  *buf = s->tls_ ? s->tls_->read_space() : s->in_.prepare(16 * 1024, s->scanner_.size_hint());
}

void Session::on_read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
  static_cast<Session*>(stream->data)->on_read(nread);
}

void Session::on_write_error(void* owner, int) {
  static_cast<Session*>(owner)->close();
}

void Session::on_read(ssize_t nread) {
  if (closing_ || nread == 0 || nread == UV_EAGAIN) {
    in_.release();
    return;
  }
  if (nread < 0) {
    close();
    return;
  }
  if (tls_) {
    const long plain = tls_->decrypt(static_cast<std::size_t>(nread), in_);
    // The handshake's next flight, or the alert that says why it failed, goes out either way.
    const int flushed = out_.flush();
    if (plain < 0) {
      worker_.note_tls_failure("client " + peer_, tls_->error());
      close();
      return;
    }
    if (flushed < 0) {
      close();
      return;
    }
    if (plain == 0) {
      in_.release();
      if (tls_->peer_closed()) close();
      return;
    }
  } else {
    in_.commit(static_cast<std::size_t>(nread));
  }
  if (quit_after_flush_) {
    // After QUIT or a protocol error nothing more is run, and nothing more is kept.
    in_.consume(in_.size());
    in_.release();
    return;
  }
  last_activity_ms_ = worker_.now_ms();
  process_input();
  // A close_notify after the commands: they run, as after a TCP FIN.
  if (tls_ && tls_->peer_closed()) close();
}

void Session::process_input() {
  if (in_input_) return;
  in_input_ = true;
  std::vector<std::string_view> args;
  while (!closing_ && !quit_after_flush_ && !login_check_ && !waiting_for_earlier_) {
    const std::string_view data = in_.data();
    const auto status = scanner_.scan(data);
    if (status == resp::Status::kIncomplete) break;
    if (status == resp::Status::kError) {
      // As Redis does: say what was wrong, then close. Earlier replies still go out first.
      worker_.stats().errors_protocol.add();
      answer("", errors::protocol_error(scanner_.error()));
      quit_after_flush_ = true;
      break;
    }
    const std::size_t size = scanner_.size();
    scanner_.args(data, args);
    const bool moves_connections =
        !args.empty() &&
        ((args.size() >= 2 && iequals(args[0], "client") && iequals(args[1], "tracking")) ||
         (tracking_ && tracking_->on() && iequals(args[0], "reset")) || iequals(args[0], "hello") ||
         (iequals(args[0], "auth") && worker_.config().client_auth == Config::ClientAuth::kAcl));
    if (moves_connections && !all_answered()) {
      // It moves the client's commands to other connections (CLIENT TRACKING, RESET when it ends tracking,
      // HELLO's protocol, AUTH's user with ACL pass-through): one sent before it, still on its way on the
      // connection it went to, could run after a later one sent on the new. It is read again once every
      // earlier command is answered (flush_replies), as one Redis runs a connection's commands one by one.
      scanner_.reset();
      waiting_for_earlier_ = true;
      break;
    }
    if (!args.empty()) handle(args, data.substr(0, size));
    current_caching_ = Request::Caching::kNone;
    scanner_.reset();
    in_.consume(size);
    if (tracking_ && tracking_->confirming()) {
      // CLIENT TRACKING ON waits for every master: until then, where the next commands go is not known.
      waiting_for_earlier_ = true;
      break;
    }
  }
  in_input_ = false;
  if (quit_after_flush_) in_.consume(in_.size());
  in_.trim(16 * 1024);
  in_.release();  // an idle client keeps no buffer
  // Requests are written to the backends, and replies to this client, once per loop iteration for everything
  // that became ready in it: one write per connection however many clients and replies took part.
  if (!queue_.empty() && queue_.front()->done) worker_.mark_dirty(this);
  pause_or_resume_reading();
}

// Backpressure: a client that pipelines faster than the cluster answers, or whose answered replies pile up
// behind a slow earlier one, or that has commands on hold while the process holds more than max-held-bytes,
// is not read (so sends nothing new to the cluster, and gets no error) until it is back under half the
// bounds.
//
// Past the process's bytes in flight (requests at the cluster, unanswered, kept for a retry) no client is
// read. After QUIT or a protocol error the client is never read again.
void Session::pause_or_resume_reading() {
  if (closing_) return;
  const auto& c = worker_.config();
  const bool holding = !on_hold_.empty();
  const std::size_t inflight_limit = c.max_inflight_bytes / static_cast<std::size_t>(c.threads);
  if (reading_ &&
      (quit_after_flush_ || login_check_ || waiting_for_earlier_ || queue_.size() >= c.max_pipeline ||
       held_bytes_ > c.max_client_output / 2 || worker_.inflight_bytes() > inflight_limit ||
       (holding && worker_.proxy().held_bytes() > c.max_held_bytes))) {
    reading_ = false;
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
  } else if (!reading_ && !quit_after_flush_ && !login_check_ && !waiting_for_earlier_ &&
             queue_.size() < c.max_pipeline / 2 && held_bytes_ <= c.max_client_output / 4 &&
             worker_.inflight_bytes() <= inflight_limit / 2 &&
             (!holding || worker_.proxy().held_bytes() <= c.max_held_bytes / 2)) {
    reading_ = true;
    uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), &Session::on_alloc, &Session::on_read_cb);
  }
}

void Session::check_idle(std::uint64_t now_ms) {
  // A TLS client has the connect timeout's worth (at least 10 s) to finish its handshake: one that stalls
  // in it has run nothing and would hold its place among max-clients for good.
  const auto handshake_ms =
      std::max<std::uint64_t>(10000, static_cast<std::uint64_t>(worker_.config().connect_timeout.count()));
  if (tls_ && !tls_->handshake_done() && now_ms - created_ms_ > handshake_ms) {
    worker_.note_tls_failure("client " + peer_,
                             "no handshake within " + std::to_string(handshake_ms) + " ms");
    close();
    return;
  }
  const auto idle = static_cast<std::uint64_t>(worker_.config().idle_timeout.count()) * 1000;
  if (idle > 0 && queue_.empty() && now_ms - last_activity_ms_ > idle) {
    worker_.stats().clients_idle.add();
    close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Replies in order

RequestPtr Session::new_request(std::string name, const CommandInfo* cmd) {
  auto r = std::make_shared<Request>();
  r->session = this;
  r->name = std::move(name);
  r->cmd = cmd;
  r->seq = ++next_seq_;
  r->start_ns = mono_ns();
  r->deadline_ms = worker_.now_ms() + static_cast<std::uint64_t>(worker_.config().request_timeout.count());
  r->idempotent = cmd && cmd->has_flag(CommandFlag::kReadonly) && !cmd->has_flag(CommandFlag::kWrite);
  r->login = login_;
  r->proto = proto_;
  r->caching = current_caching_;
  return r;
}

void Session::enqueue(const RequestPtr& request) {
  if (reply_off_ || skip_next_reply_) {
    request->silent = true;
    skip_next_reply_ = false;
  }
  queue_.push_back(request);
}

// ---------------------------------------------------------------------------------------------------------------
// Per-client order through retries

void Session::retry_started(const Request& request) {
  retrying_.insert(request.seq);
}

void Session::retry_ended(const Request& request) {
  const auto it = retrying_.find(request.seq);
  if (it == retrying_.end()) return;
  const bool was_first = it == retrying_.begin();
  retrying_.erase(it);
  if (!was_first || parked_.empty() || closing_) return;
  // The earliest waiting request is on its way: what was parked behind it goes, in the client's order, and
  // parks again if another earlier request still waits.
  std::deque<Parked> parked;
  parked.swap(parked_);
  std::stable_sort(parked.begin(), parked.end(),
                   [](const Parked& a, const Parked& b) { return a.request->seq < b.request->seq; });
  for (auto& p : parked) {
    worker_.waiting_bytes_ -= p.request->wire.size();
    // A dispatch may close this client (a reply answered at once over its bounds): what is left goes through
    // dispatch all the same, which no longer orders it by this client.
    worker_.dispatch(p.request, p.asking, p.to);
  }
}

void Session::park(const RequestPtr& request, bool asking, Backend* to) {
  request->sent = false;
  worker_.waiting_bytes_ += request->wire.size();
  parked_.push_back({request, asking, to});
}

Session::Later Session::later_on_slot(const Request& request) const {
  Later worst = Later::kNone;
  auto note = [&worst](const Request& r) {
    if (r.done) {
      worst = Later::kDone;
    } else if (r.sent && worst == Later::kNone) {
      worst = Later::kSent;
    }
  };
  for (auto it = queue_.rbegin(); it != queue_.rend() && (*it)->seq > request.seq; ++it) {
    const Request& later = **it;
    if (later.has_slot && later.slot == request.slot) note(later);
    for (std::size_t i = 0; i < later.part_slots.size(); ++i) {
      if (later.part_slots[i] != request.slot) continue;
      const RequestPtr part = later.parts[i].lock();
      if (part) {
        note(*part);
      } else {
        worst = Later::kDone;  // nothing holds a part but until it is answered
      }
    }
    if (worst == Later::kDone) break;
  }
  return worst;
}

void Session::answer(std::string_view name, std::string reply) {
  auto r = new_request(std::string(name), nullptr);
  r->done = true;
  r->reply = reply.empty() || reply[0] != '-' ? std::move(reply) : errors::one_line(std::move(reply));
  worker_.stats().local_replies.add();
  enqueue(r);
  // Behind an unanswered command it is held like any reply, within the client's bounds.
  if (queue_.front() != r) on_request_done(*r);
}

void Session::on_request_done(Request& request) {
  if (closing_) return;
  if (request.watch == Request::Watch::kWatch) {
    std::erase(watches_pending_, request.seq);
    // Anything but the node's OK (a timeout, in a hold or at the node; an error) means nothing may be
    // watched.
    if (!request.reply.starts_with("+OK")) watch_redirected(request);
  }
  if (request.pins_watch) unpin(request);
  if (tracking_) {
    tracking_->answered(request);
    // Its reply goes into the client's cache untracked: the cache is dropped right after it.
    if (request.untracked_read) tracking_->after_untracked_read();
  }
  if (request.silent) std::string().swap(request.reply);  // CLIENT REPLY OFF/SKIP: nothing to keep
  if (!queue_.empty() && queue_.front().get() != &request) {
    // Answered, but an earlier request is not: the reply waits here, and counts against the client's bounds.
    request.held = true;
    held_bytes_ += request.reply.size();
    // (Replies that complete in one loop iteration count here until the iteration's flush; they are not
    // stuck unless the first of the queue is still unanswered.)
    if (held_bytes_ > worker_.config().max_client_output && !queue_.front()->done) {
      // Replies of later commands pile up behind one that is not answered (a BLPOP with no timeout ahead of
      // large GETs): as for a slow reader, memory stays bounded and the client is told by the closed socket.
      worker_.stats().clients_slow_reader.add();
      log_line(LogLevel::kWarning,
               "closing client %s: %zu bytes of replies wait behind an unanswered "
               "command (limit %zu)",
               peer_.c_str(), held_bytes_, worker_.config().max_client_output);
      close();
      return;
    }
    pause_or_resume_reading();
    return;
  }
  worker_.mark_dirty(this);
}

bool Session::quiet_for_drain(std::uint64_t now_ms) const {
  if (closing_ || !queue_.empty() || in_multi_ || watching_ || login_check_ || waiting_for_earlier_ ||
      !parked_.empty())
    return false;
  // Part of a command (or of a TLS record): a large value on its way is waited for, one the client stopped
  // sending is not (it would hold the drain to its deadline).
  const bool partial = in_.size() > 0 || (tls_ && tls_->has_input());
  return !partial || now_ms - last_activity_ms_ >= kDrainPartialCommandMs;
}

bool Session::done_for_drain(std::uint64_t now_ms) const {
  return quiet_for_drain(now_ms) && out_.idle() && !unread_input();
}

bool Session::idle_for_drain(std::uint64_t now_ms) const {
  return done_for_drain(now_ms) && now_ms - last_activity_ms_ >= kDrainIdleMs;
}

int Session::socket_fd() const {
  uv_os_fd_t fd = -1;
  return uv_fileno(reinterpret_cast<const uv_handle_t*>(&tcp_), &fd) == 0 ? fd : -1;
}

bool Session::unread_input() const {
  const int fd = socket_fd();
  if (fd < 0) return false;
  char byte = 0;
  return ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

void Session::set_cork(bool on) {
  const int fd = socket_fd();
  if (fd < 0) return;
  const int value = on ? 1 : 0;
  ::setsockopt(fd, IPPROTO_TCP, TCP_CORK, &value, sizeof value);
}

bool Session::all_answered() const {
  return std::all_of(queue_.begin(), queue_.end(), [](const RequestPtr& r) { return r->done; });
}

void Session::flush_replies() {
  dirty_ = false;
  if (closing_) return;
  auto& out = out_.buffer();
  // Unread replies from before this batch: a single reply larger than the bound still goes out whole (Redis
  // sends it too); a client that keeps asking while more than the bound sits unread is the slow reader.
  const std::size_t unread_before = out_.pending_bytes();
  bool any = false;
  while (!queue_.empty() && queue_.front()->done) {
    Request& r = *queue_.front();
    if (r.held) held_bytes_ -= r.reply.size();
    if (r.proto == 3) to_resp3(r);
    if (!r.silent) {
      if (out.empty()) {
        out.swap(r.reply);  // a large reply is handed on, not copied
      } else {
        out.append(r.reply);
      }
    }
    if (!r.push) worker_.stats().record_latency((mono_ns() - r.start_ns) / 1000);
    queue_.pop_front();
    any = true;
  }
  if (waiting_for_earlier_ && all_answered()) {
    // The command that waited for the earlier ones runs now (their replies are in `out`, before its own).
    waiting_for_earlier_ = false;
    process_input();
    if (closing_) return;
  }
  if (!any) return;
  if (unread_before > worker_.config().max_client_output) {
    // A reader slower than its own pipeline: memory stays bounded, the client is told by the closed socket.
    worker_.stats().clients_slow_reader.add();
    log_line(LogLevel::kWarning, "closing client %s: %zu bytes of replies unread (limit %zu)", peer_.c_str(),
             out_.pending_bytes(), worker_.config().max_client_output);
    close();
    return;
  }
  // Draining, and these are the client's last replies: it is closed right behind them, and its FIN must
  // travel with them. Sent apart, a client that reads the last reply before the FIN arrives may send another
  // command, which would meet a closed socket unanswered. Corked, the kernel holds the replies' last segment
  // until the close, and puts the FIN on it.
  const bool last_replies = worker_.in_drain() && quiet_for_drain(worker_.now_ms()) && !unread_input();
  if (last_replies) set_cork(true);
  if (out_.flush() < 0) {
    close();
    return;
  }
  if (quit_after_flush_ && queue_.empty()) {
    close();
    return;
  }
  if (last_replies) {
    // A reply still being written waits for the worker's next tick (Worker::drain_step).
    if (done_for_drain(worker_.now_ms())) {
      worker_.close_for_drain(this);
      return;
    }
    set_cork(false);
  }
  pause_or_resume_reading();
}

// ---------------------------------------------------------------------------------------------------------------
// Commands

void Session::handle(Args args, std::string_view raw) {
  worker_.stats().requests.add();
  std::string name = ascii_lowered(args[0]);
  const CommandInfo* cmd = find_command(args);
  const Plan& plan = plan_of(cmd);
  if (cmd) last_cmd_ = cmd;

  if (!authenticated_ && name != "auth" && name != "hello" && name != "quit" && name != "reset") {
    // As Redis: until the client has logged in, only these run (MULTI included, so no transaction is open).
    answer(name, std::string(errors::kNoAuth));
    return;
  }
  // What CLIENT CACHING chose holds for the next command, or the next transaction: CLIENT commands, MULTI and
  // the commands a transaction queues leave it in place, as on Redis.
  if (tracking_ && name != "client" && name != "multi" && (!in_multi_ || name == "exec" || name == "discard"))
    current_caching_ = tracking_->take_caching();
  if (pubsub_ && pubsub_->active() && proto_ == 2) {
    // Subscribed mode (RESP2), as on Redis: only these commands, and PING answers as a message does. A RESP3
    // client runs any command while subscribed: its messages are pushes, which no reply can be taken for.
    if (name == "ping" && args.size() <= 2) {
      std::string reply;
      resp::append_array_header(reply, 2);
      resp::append_bulk(reply, "pong");
      resp::append_bulk(reply, args.size() == 2 ? args[1] : std::string_view());
      answer(name, std::move(reply));
      return;
    }
    if (!name.ends_with("subscribe") && name != "quit" && name != "reset" && name != "ping") {
      answer(name, errors::subscribed_only(name));
      return;
    }
  }
  if (monitor_ && monitor_->active()) {
    // Monitor mode, as on Redis 7.0: a second MONITOR is ignored (no reply), commands that read or write
    // the keyspace are refused, and the others (PING, INFO, CLIENT, RESET, QUIT, ...) run.
    if (name == "monitor" && !in_multi_) return;
    // Redis's "may replicate" flag, which COMMAND does not show (so the command table lacks it), is on
    // PUBLISH, SPUBLISH and the script and function calls.
    static constexpr std::string_view kMayReplicate[] = {"publish", "spublish",   "eval",  "evalsha",
                                                         "eval_ro", "evalsha_ro", "fcall", "fcall_ro"};
    if (cmd && arity_ok(*cmd, args.size()) &&
        (cmd->has_flag(CommandFlag::kReadonly) || cmd->has_flag(CommandFlag::kWrite) ||
         cmd->has_flag(CommandFlag::kMayReplicate) ||
         std::find(std::begin(kMayReplicate), std::end(kMayReplicate), name) != std::end(kMayReplicate))) {
      answer(name, std::string(errors::kMonitorKeyspace));
      return;
    }
  }
  if (!in_multi_ && pubsub_command(name, args, cmd)) return;
  if (!in_multi_ && name == "monitor") {
    monitor(args, cmd);
    return;
  }
  if (in_multi_) {
    // What Redis runs at once inside a transaction rather than queueing it.
    if (name == "exec" || name == "discard" || name == "multi" || name == "quit" || name == "reset") {
      answer_locally(name, args);
      return;
    }
    if (name == "watch") {
      answer(name, std::string(errors::kWatchInMulti));
      return;
    }
    queue_transaction(args, raw, std::move(name), cmd);
    return;
  }
  if (name == "watch") {
    watch(args, raw);
    return;
  }
  if (plan.handling == Handling::kLocal && answer_locally(name, args)) return;
  route(args, raw, std::move(name), cmd);
}

bool Session::answer_locally(const std::string& name, Args args) {
  const std::size_t argc = args.size();
  if (name == "ping") {
    if (argc > 2) return answer(name, errors::wrong_arity(name)), true;
    std::string reply;
    if (argc == 2) {
      resp::append_bulk(reply, args[1]);
    } else {
      reply = "+PONG\r\n";
    }
    answer(name, std::move(reply));
    return true;
  }
  if (name == "echo") {
    if (argc != 2) return answer(name, errors::wrong_arity(name)), true;
    std::string reply;
    resp::append_bulk(reply, args[1]);
    answer(name, std::move(reply));
    return true;
  }
  if (name == "quit") {
    answer(name, "+OK\r\n");
    quit_after_flush_ = true;
    pause_or_resume_reading();
    return true;
  }
  if (name == "reset") {
    if (argc != 1) return answer(name, errors::wrong_arity(name)), true;
    reset_state();
    answer(name, "+RESET\r\n");
    return true;
  }
  if (name == "readonly" || name == "readwrite") {
    // Where reads go is the proxy's --read-from: READONLY cannot send them to replicas the proxy does not
    // read from. READWRITE keeps this client's reads on masters, where they see its own writes, until
    // READONLY or RESET.
    if (argc != 1) return answer(name, errors::wrong_arity(name)), true;
    reads_on_masters_ = name == "readwrite";
    answer(name, "+OK\r\n");
    return true;
  }
  if (name == "unwatch") {
    if (argc != 1) return answer(name, errors::wrong_arity(name)), true;
    unwatch(true);
    return true;
  }
  if (name == "select") {
    if (argc != 2) return answer(name, errors::wrong_arity(name)), true;
    std::uint64_t db = 0;
    if (!parse_u64(args[1], db)) return answer(name, std::string(errors::kNotInteger)), true;
    answer(name, db == 0 ? std::string("+OK\r\n") : std::string(errors::kSelectNotAllowed));
    return true;
  }
  if (name == "multi") {
    if (argc != 1) return answer(name, errors::wrong_arity(name)), true;
    if (in_multi_) return answer(name, std::string(errors::kMultiNested)), true;
    in_multi_ = true;
    multi_failed_ = multi_has_slot_ = false;
    // A watched transaction runs where its keys are watched: its commands must be of that slot.
    if (watching_) {
      multi_has_slot_ = true;
      multi_slot_ = watch_slot_;
    }
    multi_count_ = 0;
    multi_wire_.clear();
    resp::append_command(multi_wire_, {"MULTI"});
    answer(name, "+OK\r\n");
    return true;
  }
  if (name == "exec") {
    if (!in_multi_) return answer(name, std::string(errors::kExecWithoutMulti)), true;
    exec_transaction();
    return true;
  }
  if (name == "discard") {
    if (!in_multi_) return answer(name, std::string(errors::kDiscardWithoutMulti)), true;
    discard_transaction();
    unwatch(false);  // as Redis: DISCARD unwatches too
    answer(name, "+OK\r\n");
    return true;
  }
  if (name == "hello") {
    std::size_t i = 1;
    std::uint8_t protocol = proto_;
    if (argc >= 2) {
      std::uint64_t proto = 0;
      if (!parse_u64(args[1], proto)) {
        return answer(name, "-ERR Protocol version is not an integer or out of range\r\n"), true;
      }
      if (proto != 2 && proto != 3) return answer(name, std::string(errors::kNoProto)), true;
      protocol = static_cast<std::uint8_t>(proto);
      i = 2;
    }
    // Every option is read before any takes effect, as Redis does: a syntax error changes nothing.
    std::optional<Login> login;
    std::optional<std::string> setname;
    for (; i < argc; ++i) {
      if (iequals(args[i], "setname") && i + 1 < argc) {
        setname = std::string(args[++i]);
      } else if (iequals(args[i], "auth") && i + 2 < argc) {
        login = Login{std::string(args[i + 1]), std::string(args[i + 2])};
        i += 2;
      } else {
        return answer(name, "-ERR Syntax error in HELLO option '" + std::string(args[i]) + "'\r\n"), true;
      }
    }
    if (!login && !authenticated_) return answer(name, std::string(errors::kHelloNoAuth)), true;
    // The name and the protocol change only with a login that succeeds; the reply is in the new protocol.
    auto take_effect = [this, protocol, setname = std::move(setname)] {
      if (setname) client_name_ = *setname;
      set_protocol(protocol);
    };
    if (login) {
      log_in(name, std::move(*login), hello_reply(protocol), std::move(take_effect));
    } else {
      take_effect();
      answer(name, hello_reply(protocol));
    }
    return true;
  }
  if (name == "auth") {
    if (argc != 2 && argc != 3) return answer(name, errors::wrong_arity(name)), true;
    log_in(name, Login{argc == 3 ? std::string(args[1]) : std::string(), std::string(args[argc - 1])},
           "+OK\r\n", [] {});
    return true;
  }
  if (name == "client" && argc >= 2) return client_command(args);
  if (name == "cluster") {
    if (argc == 3 && iequals(args[1], "keyslot")) {
      std::string reply;
      resp::append_integer(reply, key_slot(args[2]));
      answer(name, std::move(reply));
    } else {
      // The proxy presents itself as a standalone server: clients must not try to talk to the nodes
      // themselves.
      answer(name, std::string(errors::kClusterDisabled));
    }
    return true;
  }
  if (name == "info") {
    info(args);
    return true;
  }
  return false;
}

bool Session::client_command(Args args) {
  const std::size_t argc = args.size();
  const std::string sub = ascii_lowered(args[1]);
  std::string reply;
  if (sub == "reply" && argc == 3) {
    // As Redis: OFF and SKIP are not answered themselves; SKIP drops the next command's reply too.
    if (iequals(args[2], "on")) {
      reply_off_ = skip_next_reply_ = false;
      answer("client", "+OK\r\n");
    } else if (iequals(args[2], "off")) {
      answer("client", "+OK\r\n");
      queue_.back()->silent = true;
      reply_off_ = true;
    } else if (iequals(args[2], "skip")) {
      answer("client", "+OK\r\n");
      queue_.back()->silent = true;
      if (!reply_off_) skip_next_reply_ = true;
    } else {
      answer("client", std::string(errors::kClientReplySyntax));
    }
    return true;
  }
  if (sub == "setname" && argc == 3) {
    if (args[2].find_first_of(" \n\r") != std::string_view::npos) {
      reply = std::string(errors::kClientNameChars);
    } else {
      client_name_ = std::string(args[2]);
      reply = "+OK\r\n";
    }
  } else if (sub == "getname" && argc == 2) {
    if (client_name_.empty()) {
      resp::append_null_bulk(reply);
    } else {
      resp::append_bulk(reply, client_name_);
    }
  } else if (sub == "id" && argc == 2) {
    resp::append_integer(reply, static_cast<std::int64_t>(id_));
  } else if ((sub == "info" && argc == 2)) {
    resp::append_text(reply, ClientAdmin::line(*this, worker_.now_ms()) + "\n", proto_);
  } else if (sub == "list" || sub == "kill") {
    // About the proxy's own clients, on every worker: answered once every worker has said.
    ClientAdmin::command(*this, args, sub == "kill");
    return true;
  } else if (sub == "setinfo" && argc == 4) {
    reply = "+OK\r\n";
  } else if (sub == "tracking" && argc >= 3) {
    if (!tracking_) tracking_ = std::make_unique<Tracking>(*this, worker_);
    // Answered at once, or once every master has accepted the options (Tracking::command).
    auto r = new_request("client", nullptr);
    enqueue(r);
    if (std::string now = tracking_->command(r, args); !now.empty()) worker_.complete(r, std::move(now));
    return true;
  } else if (sub == "caching" && argc == 3) {
    reply = tracking_ ? tracking_->caching(args[2]) : std::string(errors::kCachingNotTracking);
  } else if (sub == "trackinginfo" && argc == 2) {
    reply = tracking_ ? tracking_->info(proto_) : Tracking(*this, worker_).info(proto_);
  } else if (sub == "getredir" && argc == 2) {
    resp::append_integer(reply, tracking_ && tracking_->on() ? 0 : -1);
  } else if (sub == "setname" || sub == "getname" || sub == "id" || sub == "info" || sub == "setinfo" ||
             sub == "reply" || sub == "tracking" || sub == "caching" || sub == "trackinginfo" ||
             sub == "getredir") {
    reply = errors::wrong_arity("client|" + sub);
  } else {
    worker_.stats().errors_refused.add();
    reply = errors::unsupported("client " + sub, errors::kClientOthersWhy);
  }
  answer("client", std::move(reply));
  return true;
}

bool Session::pubsub_command(const std::string& name, Args args, const CommandInfo* cmd) {
  using Kind = Subscriptions::Kind;
  static const std::pair<std::string_view, std::pair<Kind, bool>> kNames[] = {
      {"subscribe", {Kind::kChannel, true}},     {"psubscribe", {Kind::kPattern, true}},
      {"ssubscribe", {Kind::kShard, true}},      {"unsubscribe", {Kind::kChannel, false}},
      {"punsubscribe", {Kind::kPattern, false}}, {"sunsubscribe", {Kind::kShard, false}},
  };
  const auto* it =
      std::find_if(std::begin(kNames), std::end(kNames), [&name](const auto& n) { return n.first == name; });
  if (it == std::end(kNames)) return false;
  const auto [kind, subscribing] = it->second;
  if (subscribing && args.size() < 2) {
    answer(name, errors::wrong_arity(name));
    return true;
  }
  if (!pubsub_) pubsub_ = std::make_unique<Subscriptions>(*this, worker_);
  // Again after a RESET, which took it out: its shard channels must follow their slots.
  worker_.subscribers().insert(this);
  // In this order: the subscriber counted first (a handoff from here on routes this worker itself and moves
  // the channel), then a handoff published before it taken, so that the node is chosen from the map the
  // cluster has now. Otherwise, on a worker the handoff found quiet, the channel would go to the old owner,
  // which answers it until it learns the claim, while messages are published at the new one.
  if (subscribing && kind == Kind::kShard) {
    worker_.held().catch_up_outside_dispatch();
    // What the routes released may have closed this client (a reply past its bound): nothing to subscribe.
    if (closing_) return true;
  }
  if (subscribing) {
    auto r = new_request(name, cmd);
    enqueue(r);
    pubsub_->subscribe(r, kind, args.subspan(1));
  } else {
    answer(name, pubsub_->unsubscribe(kind, args.subspan(1)));
  }
  return true;
}

void Session::end_subscriptions() {
  if (!pubsub_) return;
  pubsub_->close();
  worker_.subscribers().erase(this);
}

void Session::push(std::string_view message) {
  if (closing_) return;
  auto r = std::make_shared<Request>();
  r->session = this;
  r->name = "message";
  r->seq = ++next_seq_;
  r->push = true;
  r->proto = proto_;
  r->done = true;
  r->reply.assign(message);
  queue_.push_back(r);
  on_request_done(*r);
}

void Session::push_out_of_band(std::string_view message, const Backend* source) {
  if (closing_) return;
  auto r = std::make_shared<Request>();
  r->session = this;
  r->name = "message";
  r->push = true;
  r->proto = proto_;
  r->done = true;
  r->reply.assign(message);
  // Its place: right after the last queued entry it must follow (see the declaration); anything after that
  // entry is still unanswered or unrelated, and does not hold it back.
  auto at = queue_.end();
  for (; at != queue_.begin(); --at) {
    const Request& e = **std::prev(at);
    const bool follows = e.push || is_subscription_command(e.name) ||
                         (source ? e.source == source || e.many_sources : e.done || !e.blocking);
    if (follows) break;
  }
  r->seq = at == queue_.end() ? ++next_seq_ : (*at)->seq;
  queue_.insert(at, r);
  on_request_done(*r);
}

void Session::reset_state() {
  end_subscriptions();
  end_monitor();
  if (tracking_) tracking_->off();
  if (in_multi_) discard_transaction();
  unwatch(false);
  reply_off_ = skip_next_reply_ = false;
  reads_on_masters_ = false;
  client_name_.clear();
  // As Redis: back to the default user, logged in only where no login is asked for.
  authenticated_ = worker_.config().client_auth == Config::ClientAuth::kNone;
  login_.reset();
  set_protocol(2);
}

void Session::set_protocol(std::uint8_t protocol) {
  if (protocol == proto_) return;
  proto_ = protocol;
  // The watch connection speaks the protocol before: a watched EXEC there would answer in it. The watch is
  // broken, and EXEC answers nil, as when a watched key changed.
  if (watch_.backend) {
    if (watching_) renew_generation(watch_);
    retire_watch_connection();
  }
}

std::string Session::hello_reply(std::uint8_t protocol) const {
  std::string reply;
  // RESP3 has maps: HELLO's reply is one there, and the same pairs in an array in RESP2.
  if (protocol == 3) {
    reply.append("%7\r\n");
  } else {
    resp::append_array_header(reply, 14);
  }
  resp::append_bulk(reply, "server");
  resp::append_bulk(reply, "redis");
  resp::append_bulk(reply, "version");
  resp::append_bulk(reply, kVersion);
  resp::append_bulk(reply, "proto");
  resp::append_integer(reply, protocol);
  resp::append_bulk(reply, "id");
  resp::append_integer(reply, static_cast<std::int64_t>(id_));
  resp::append_bulk(reply, "mode");
  resp::append_bulk(reply, "standalone");
  resp::append_bulk(reply, "role");
  resp::append_bulk(reply, "master");
  resp::append_bulk(reply, "modules");
  resp::append_array_header(reply, 0);
  return reply;
}

void Session::log_in(std::string_view name, Login login, std::string ok_reply,
                     std::function<void()> take_effect) {
  using enum Config::ClientAuth;
  const auto& config = worker_.config();
  // The default user is named or left out (AUTH password); the proxy's own password mode knows no other.
  const bool default_user = login.user.empty() || login.user == "default";
  switch (config.client_auth) {
    case kNone:
      // As a Redis whose default user has no password: any password is taken in the two-argument form,
      // and the one-argument form says that none is set.
      if (login.user.empty()) return answer(name, std::string(errors::kAuthNotConfigured));
      if (!default_user) return answer(name, std::string(errors::kWrongPass));
      take_effect();
      answer(name, std::move(ok_reply));
      return;
    case kPassword:
      // A failed AUTH leaves a client that had logged in logged in, as on Redis.
      if (default_user && same_secret(login.password, config.requirepass)) {
        authenticated_ = true;
        take_effect();
        answer(name, std::move(ok_reply));
      } else {
        worker_.stats().errors_refused.add();
        answer(name, std::string(errors::kWrongPass));
      }
      return;
    case kAcl:
      break;
  }
  // ACL pass-through: a node of the cluster checks the login on a connection of its own (the ACL is each
  // node's; a user must be defined alike on all of them). The reply keeps its place among the client's.
  auto r = new_request(std::string(name), nullptr);
  enqueue(r);
  const auto& masters = worker_.router().masters();
  const HostPort node = masters.empty() ? config.seeds.front() : masters.front()->address();
  auto candidate = std::make_shared<const Login>(std::move(login));
  login_check_ = std::make_unique<Backend>(worker_, node);
  login_check_->send_internal(
      auth_command(*candidate), [this, r, candidate, ok_reply = std::move(ok_reply),
                                 take_effect = std::move(take_effect)](const std::string* reply) {
        const std::string why = reply ? std::string() : login_check_->last_failure();
        login_check_->shutdown();  // one AUTH was all it was for
        worker_.retire(std::move(login_check_));
        if (!reply) {
          worker_.complete(r, errors::login_unchecked(why.empty() ? "the connection closed" : why));
        } else if (reply->starts_with("+")) {
          authenticated_ = true;
          // The watch connection is logged in as the user before: the EXEC must not run as that one.
          if (watch_.backend && !same_login(watch_.backend->login(), candidate)) {
            // A watch in force would have its EXEC run as the user before: it is broken. An EXEC already
            // sent (or waiting for its WATCHes) still runs as the one who sent it.
            if (watching_) renew_generation(watch_);
            retire_watch_connection();
          }
          login_ = candidate;
          // Subscription connections left from before (closing after their linger) are the user before's:
          // new subscriptions get connections of the new one.
          if (pubsub_ && !pubsub_->active()) pubsub_->close();
          take_effect();
          worker_.complete(r, ok_reply);
        } else {
          // The node's own words: WRONGPASS, or an error of its ACL.
          worker_.stats().errors_refused.add();
          worker_.complete(r, errors::one_line(*reply));
        }
        if (closing_) return;
        // What the client sent behind its AUTH runs now, as the user it logged in as.
        process_input();
      });
}

std::string Session::refusal(Args args, const std::string& name, const CommandInfo* cmd,
                             bool in_transaction) {
  if (!cmd) return errors::unknown_command(args[0], args_preview(args));
  if (!arity_ok(*cmd, args.size())) return errors::wrong_arity(cmd->name);
  // MSET and MSETNX take keys and values in pairs: Redis checks that in the command itself, after the arity.
  if ((name == "mset" || name == "msetnx") && args.size() % 2 == 0) return errors::wrong_arity(cmd->name);
  const Plan& plan = plan_of(cmd);
  if (plan.handling == Handling::kUnsupported) {
    worker_.stats().errors_refused.add();
    return errors::unsupported(name, plan.why);
  }
  if (cmd->has_flag(CommandFlag::kAdmin) && !worker_.config().allow_admin_commands &&
      (in_transaction || cmd->name != "config|get")) {
    // CONFIG GET only reads: it goes to one master like any keyless command (redis-benchmark and many tools
    // ask).
    worker_.stats().errors_refused.add();
    return errors::refused_admin(cmd->name);
  }
  if (!in_transaction) return "";
  if (cmd->has_flag(CommandFlag::kNoMulti)) return std::string(errors::kNotAllowedInMulti);
  // A transaction runs on one node. Commands the proxy answers itself, or spreads over every master, would
  // either reach that node's shared connection (HELLO, CLIENT REPLY, SELECT: changing it for every client)
  // or give one master's answer for the whole cluster (KEYS, DBSIZE, FLUSHALL).
  if (plan.handling == Handling::kLocal && name != "ping" && name != "echo" && name != "unwatch") {
    worker_.stats().errors_refused.add();
    return errors::unsupported_in_multi(name, "the proxy answers it itself, and only outside a transaction");
  }
  if (plan.handling == Handling::kEveryMaster || plan.handling == Handling::kScan) {
    worker_.stats().errors_refused.add();
    return errors::unsupported_in_multi(name, "it concerns every master, and a transaction runs on one");
  }
  if (plan.handling == Handling::kEveryNode) {
    worker_.stats().errors_refused.add();
    return errors::unsupported_in_multi(name, errors::kEveryNodeWhy);
  }
  return "";
}

void Session::route(Args args, std::string_view raw, std::string name, const CommandInfo* cmd) {
  if (std::string error = refusal(args, name, cmd, false); !error.empty()) {
    answer(name, std::move(error));
    return;
  }
  const Plan& plan = plan_of(cmd);
  if (plan.handling == Handling::kEveryNode) {
    config_every_node(args, std::move(name), cmd);
    return;
  }

  const KeysError ke = keys_of(*cmd, args, keys_);
  if (ke == KeysError::kNone && !keys_.empty()) {
    const Slot first = key_slot(args[keys_[0]]);
    bool same = true;
    for (std::size_t i = 1; i < keys_.size() && same; ++i)
      same = key_slot(args[keys_[i]]) == first;
    if (!same) {
      if (plan.handling == Handling::kSplit) {
        auto parent = new_request(std::move(name), cmd);
        parent->merge = plan.merge;
        enqueue(parent);
        split(parent, args, keys_, plan.step);
        return;
      }
      worker_.stats().errors_crossslot.add();
      answer(name, std::string(errors::kCrossSlot));
      return;
    }
    auto r = new_request(std::move(name), cmd);
    r->wire.assign(raw);
    r->has_slot = true;
    r->slot = first;
    enqueue(r);
    if (cmd->has_flag(CommandFlag::kBlocking)) {
      // A blocking command holds its connection until it returns: it gets one of its own, never a shared one.
      r->blocking = true;
      r->deadline_ms = 0;
      worker_.dispatch(r, false, nullptr);
      return;
    }
    worker_.dispatch(r);
    return;
  }

  if ((name == "publish" || name == "spublish") && args.size() == 3) {
    // Neither names a key. Any node delivers a PUBLISH to the whole cluster, but one client's messages reach
    // a subscriber in the order sent only when they all go through one node (the cluster bus keeps each
    // link's order, not the order across links): the master of the channel's slot, where cluster clients
    // send it. An SPUBLISH runs only there; sent there first, it meets the MOVED that tells the proxy (and
    // its clients' shard subscriptions) where the slot went.
    auto r = new_request(std::move(name), cmd);
    r->wire.assign(raw);
    r->has_slot = true;
    r->slot = key_slot(args[1]);
    enqueue(r);
    worker_.dispatch(r);
    return;
  }
  // No keys (or keys the server will refuse as malformed: it says so in its own words).
  if (plan.handling == Handling::kScan) {
    scan(args, name, cmd);
    return;
  }
  if (plan.handling == Handling::kEveryMaster) {
    auto parent = new_request(std::move(name), cmd);
    enqueue(parent);
    fan_out(parent, args, plan.merge);
    return;
  }
  auto r = new_request(std::move(name), cmd);
  r->wire.assign(raw);
  enqueue(r);
  const auto& masters = worker_.router().masters();
  if (!masters.empty()) {
    // Any master answers keyless commands (TIME, COMMAND, PUBLISH, RANDOMKEY, ...); spread them.
    static thread_local std::size_t next = 0;
    r->fixed = masters[next++ % masters.size()];
  }
  worker_.dispatch(r);
}

void Session::split(const RequestPtr& parent, Args args, const std::vector<std::size_t>& keys,
                    std::size_t step) {
  worker_.stats().split_requests.add();
  // One part per slot, in the order each slot first appears.
  std::map<Slot, std::size_t> part_of_slot;
  std::vector<std::vector<std::size_t>> part_keys;
  std::vector<Slot> part_slot;
  for (std::size_t k = 0; k < keys.size(); ++k) {
    const Slot s = key_slot(args[keys[k]]);
    auto [it, fresh] = part_of_slot.emplace(s, part_keys.size());
    if (fresh) {
      part_keys.emplace_back();
      part_slot.push_back(s);
    }
    part_keys[it->second].push_back(k);
  }
  parent->key_count = keys.size();
  parent->parts_pending = part_keys.size();
  parent->part_replies.assign(part_keys.size(), std::string());
  parent->part_keys = part_keys;
  parent->part_slots = part_slot;
  std::vector<RequestPtr> parts;
  for (std::size_t p = 0; p < part_keys.size(); ++p) {
    auto part = make_part(parent, p);
    part->has_slot = true;
    part->slot = part_slot[p];
    std::vector<std::string_view> argv{args[0]};
    for (std::size_t k : part_keys[p]) {
      // refusal() has checked that every key has its `step - 1` arguments after it.
      for (std::size_t j = 0; j < step && keys[k] + j < args.size(); ++j)
        argv.push_back(args[keys[k] + j]);
    }
    resp::append_command(part->wire, argv);
    parent->parts.push_back(part);
    parts.push_back(std::move(part));
  }
  for (auto& part : parts)
    worker_.dispatch(part);
}

void Session::fan_out(const RequestPtr& parent, Args args, Merge merge) {
  worker_.stats().split_requests.add();
  const auto& masters = worker_.router().masters();
  if (masters.empty()) {
    worker_.complete(parent, errors::no_owner(0));
    return;
  }
  parent->merge = merge;
  parent->parts_pending = masters.size();
  parent->part_replies.assign(masters.size(), std::string());
  std::string wire;
  resp::append_command(wire, std::vector<std::string_view>(args.begin(), args.end()));
  std::vector<RequestPtr> parts;
  for (std::size_t p = 0; p < masters.size(); ++p) {
    auto part = make_part(parent, p);
    part->fixed = masters[p];
    part->wire = wire;
    parent->part_nodes.push_back(masters[p]->name());
    parts.push_back(std::move(part));
  }
  for (auto& part : parts)
    worker_.dispatch(part);
}

void Session::config_every_node(Args args, std::string name, const CommandInfo* cmd) {
  auto parent = new_request(std::move(name), cmd);
  enqueue(parent);
  worker_.stats().split_requests.add();
  // Every node the slot map lists, masters first: a replica's settings matter when it is promoted, and a
  // single Redis has no part left out. A node that does not answer (failed, unreachable) fails the command.
  const TopologySnapshot topology = worker_.proxy().topology();
  std::vector<HostPort> nodes;
  if (topology) {
    for (const bool masters : {true, false}) {
      for (const Node& n : topology->nodes) {
        if (n.is_master() != masters || n.port == 0 || n.address().empty()) continue;
        HostPort node{n.address(), n.port};
        if (std::find(nodes.begin(), nodes.end(), node) == nodes.end()) nodes.push_back(std::move(node));
      }
    }
  }
  if (nodes.empty()) {
    worker_.complete(parent, errors::no_owner(0));
    return;
  }
  parent->merge = Merge::kEveryNodeOk;
  parent->parts_pending = nodes.size();
  parent->part_replies.assign(nodes.size(), std::string());
  std::string wire;
  resp::append_command(wire, std::vector<std::string_view>(args.begin(), args.end()));
  std::vector<RequestPtr> parts;
  for (std::size_t p = 0; p < nodes.size(); ++p) {
    auto part = make_part(parent, p);
    part->fixed = worker_.backend(nodes[p]);
    part->wire = wire;
    parent->part_nodes.push_back(nodes[p].str());
    parts.push_back(std::move(part));
  }
  for (auto& part : parts)
    worker_.dispatch(part);
}

void Session::info(Args args) {
  auto plan = std::make_shared<info_merge::Plan>();
  plan->sections = info_merge::sections_of(args.subspan(1));
  const Totals totals = worker_.proxy().totals();
  auto line = [](std::string& out, std::string_view k, std::string_view v) {
    out.append(k);
    out.push_back(':');
    out.append(v);
    out.append("\r\n");
  };
  auto counters = [&](std::string& out, std::string_view of) {
    for (std::size_t i = 0; i < kCounterCount; ++i) {
      if (kCounters[i].section == of) line(out, kCounters[i].name, std::to_string(totals.counters[i]));
    }
  };
  std::string& server = plan->server;
  line(server, "redis_mode", "standalone");
  line(server, "slotshift_version", kVersion);
  line(server, "process_id", std::to_string(::getpid()));
  line(server, "tcp_port", std::to_string(worker_.config().listen.port));
  line(server, "uptime_in_seconds",
       std::to_string((uv_now(worker_.loop()) - worker_.proxy().start_time_ms()) / 1000));
  line(server, "threads", std::to_string(worker_.config().threads));
  counters(plan->clients, "clients");
  line(plan->clients, "maxclients", std::to_string(worker_.config().max_clients));
  std::string& proxy = plan->proxy;
  counters(proxy, "proxy");
  line(proxy, "latency_p50_us_at_most", std::to_string(totals.latency_quantile_us(0.50)));
  line(proxy, "latency_p99_us_at_most", std::to_string(totals.latency_quantile_us(0.99)));
  line(proxy, "latency_p999_us_at_most", std::to_string(totals.latency_quantile_us(0.999)));
  std::string buckets;
  for (std::size_t b = 0; b < kLatencyBuckets; ++b) {
    if (totals.latency[b] == 0) continue;
    if (!buckets.empty()) buckets += ",";
    buckets += "le" + std::to_string(Totals::bucket_bound_us(b)) + "us=" + std::to_string(totals.latency[b]);
  }
  line(proxy, "latency_histogram", buckets);
  // What a single Redis counts of its clients is what the proxy counts of its own.
  for (std::size_t i = 0; i < kCounterCount; ++i) {
    const auto n = kCounters[i].name;
    if (n == "total_connections_received" || n == "rejected_connections" || n == "total_commands_processed")
      plan->own_stats.emplace_back(std::string(n), std::to_string(totals.counters[i]));
  }
  const std::vector<std::string> asked = info_merge::node_sections(plan->sections);
  if (asked.empty()) {
    std::string text, error;
    info_merge::compose(*plan, {}, text, error);
    std::string reply;
    resp::append_text(reply, text, proto_);
    answer("info", std::move(reply));
    return;
  }
  // The masters' sections: INFO with several sections at once (Redis 7), merged once every master answered.
  auto parent = new_request("info", find_command(args));
  parent->idempotent = true;  // it only reads: sent again after a lost connection
  parent->info = std::move(plan);
  enqueue(parent);
  std::vector<std::string_view> command{"INFO"};
  for (const auto& a : asked)
    command.push_back(a);
  fan_out(parent, command, Merge::kInfo);
}

// SCAN over the whole cluster, one master after the other, with a cursor that names the master by a
// slot (scan_cursor.h) so that it stays valid through failovers and added masters.
void Session::scan(Args args, const std::string& name, const CommandInfo* cmd) {
  std::uint64_t cursor = 0;
  if (!parse_u64(args[1], cursor)) {
    answer(name, std::string(errors::kInvalidCursor));
    return;
  }
  scan_cursor::Position at = scan_cursor::decode(cursor);
  if (cursor == 0) {
    // A new scan starts with the owner of the lowest slot that has one.
    while (at.slot + 1u < kSlotCount && !worker_.router().owner(at.slot))
      ++at.slot;
  }
  Backend* node = worker_.router().owner(at.slot);
  if (!node) {
    answer(name, errors::no_owner(at.slot));
    return;
  }
  const std::uint16_t tag = scan_cursor::tag_of(node->name());
  // Another master serves the slot than the one the cursor was made on (a failover, a move): its own cursor
  // means nothing there, so that master is walked from its start.
  if (at.tag != tag) at.node_cursor = 0;
  auto parent = new_request(name, cmd);
  parent->merge = Merge::kScanCursor;
  parent->parts_pending = 1;
  parent->part_replies.assign(1, std::string());
  parent->scan_slot = at.slot;
  parent->scan_tag = tag;
  enqueue(parent);
  auto part = make_part(parent, 0);
  part->idempotent = true;
  part->fixed = node;
  std::vector<std::string_view> argv(args.begin(), args.end());
  const std::string node_cursor = std::to_string(at.node_cursor);
  argv[1] = node_cursor;
  resp::append_command(part->wire, argv);
  worker_.dispatch(part);
}

void Session::queue_transaction(Args args, std::string_view raw, std::string name, const CommandInfo* cmd) {
  std::string error = refusal(args, name, cmd, true);
  if (error.empty() && keys_of(*cmd, args, keys_) == KeysError::kNone) {
    for (std::size_t k : keys_) {
      const Slot s = key_slot(args[k]);
      if (!multi_has_slot_) {
        multi_has_slot_ = true;
        multi_slot_ = s;
      } else if (s != multi_slot_) {
        error = std::string(errors::kCrossSlot);
        break;
      }
    }
  }
  if (error.empty() && multi_wire_.size() + raw.size() > worker_.config().max_bulk_bytes) {
    error = std::string(errors::kTransactionTooBig);
  }
  if (!error.empty()) {
    // As Redis: a command refused while queueing makes EXEC discard the whole transaction.
    multi_failed_ = true;
    answer(name, std::move(error));
    return;
  }
  multi_wire_.append(raw);
  ++multi_count_;
  answer(name, "+QUEUED\r\n");
}

void Session::discard_transaction() {
  in_multi_ = false;
  multi_failed_ = multi_has_slot_ = false;
  multi_count_ = 0;
  std::string().swap(multi_wire_);
}

void Session::exec_transaction() {
  // EXEC unwatches, whatever it answers.
  const bool watched = watching_;
  const bool broken = watched && watch_broken();
  if (multi_failed_ || (multi_count_ == 0 && !watched) || broken) {
    const bool failed = multi_failed_;
    discard_transaction();
    if (watched) unwatch(false);
    // A transaction refused while queueing is discarded first (EXECABORT), as by Redis; then a watch that is
    // gone answers as a changed watched key would.
    answer("exec", failed   ? std::string(errors::kExecAbort)
                   : broken ? std::string(errors::kNilArray)
                            : std::string("*0\r\n"));
    return;
  }
  in_multi_ = false;
  watching_ = false;
  auto r = new_request("exec", find_command("exec"));
  resp::append_command(multi_wire_, {"EXEC"});
  r->wire = std::move(multi_wire_);
  multi_wire_.clear();
  r->replies_per_send = static_cast<int>(multi_count_) + 2;
  r->has_slot = multi_has_slot_;
  r->slot = multi_slot_;
  if (watched) {
    r->watch = Request::Watch::kExec;
    r->watch_generation = watched_generation_;
    r->pins_watch = true;
    unsent_execs_.insert(r->watch_generation);
  } else if (!r->has_slot) {
    const auto& masters = worker_.router().masters();
    if (!masters.empty()) r->fixed = masters.front();
  }
  enqueue(r);
  if (watched && !watches_pending_.empty()) {
    execs_after_watch_.push_back(r);
    retry_started(*r);  // the client's later commands wait behind it (Session::must_wait)
    return;
  }
  worker_.dispatch(r);
}

void Session::watch(Args args, std::string_view raw) {
  const CommandInfo* cmd = find_command(args);
  if (std::string error = refusal(args, "watch", cmd, false); !error.empty()) return answer("watch", error);
  // The keys of one slot, as Redis Cluster asks, and of the slot already watched: a transaction runs on one
  // node.
  const Slot slot = key_slot(args[1]);
  for (std::size_t i = 2; i < args.size(); ++i)
    if (key_slot(args[i]) != slot) return answer("watch", std::string(errors::kCrossSlot));
  if (watching_ && slot != watch_slot_) return answer("watch", std::string(errors::kCrossSlot));
  Backend* owner = worker_.router().owner(slot);
  if (!owner) return answer("watch", errors::no_owner(slot));
  const LoginPtr login = login_ ? login_ : worker_.own_login_;
  // A connection to another node, or logged in as someone else, cannot carry this watch. (No watch is in
  // force then: its slot's owner is the connection's node, and a login as someone else broke it.)
  if (watch_.backend &&
      (watch_.backend->address() != owner->address() || !same_login(watch_.backend->login(), login) ||
       watch_.backend->protocol() != proto_)) {
    if (watching_) renew_generation(watch_);
    retire_watch_connection();
  }
  if (!watch_.backend) {
    if (!reserve_own_connection())
      return answer("watch", errors::too_many_blocking(worker_.config().max_blocking_connections));
    watch_.backend = std::make_unique<Backend>(worker_, owner->address(), login, proto_);
    Backend* b = watch_.backend.get();
    b->on_fail([this, b] {
      if (watch_.backend.get() == b) return renew_generation(watch_);
      for (auto& w : retiring_watches_)
        if (w.backend.get() == b) renew_generation(w);
    });
    renew_generation(watch_);
  }
  if (!watching_) {
    watching_ = true;
    watch_slot_ = slot;
    watched_generation_ = watch_.generation;
  }
  auto r = new_request("watch", cmd);
  r->wire.assign(raw);
  r->has_slot = true;
  r->slot = slot;
  r->watch = Request::Watch::kWatch;
  r->watch_generation = watch_.generation;
  watches_pending_.push_back(r->seq);
  enqueue(r);
  worker_.dispatch(r);
}

Session::WatchConnection* Session::watch_connection_of(std::uint64_t generation) {
  if (watch_.backend && watch_.generation == generation) return &watch_;
  for (auto& w : retiring_watches_)
    if (w.generation == generation) return &w;
  return nullptr;
}

Backend* Session::watch_connection(const Request& request) {
  WatchConnection* w = watch_connection_of(request.watch_generation);
  return w ? w->backend.get() : nullptr;
}

void Session::unwatch(bool answer_client) {
  const bool was_watching = watching_;
  watching_ = false;
  if (!was_watching || !watch_.backend) {
    if (answer_client) answer("unwatch", "+OK\r\n");
    return;
  }
  auto r = new_request("unwatch", find_command("unwatch"));
  resp::append_command(r->wire, {"UNWATCH"});
  r->watch = Request::Watch::kUnwatch;
  r->watch_generation = watch_.generation;
  enqueue(r);
  if (!answer_client) r->silent = true;
  worker_.dispatch(r);
}

void Session::release_execs_after_watch() {
  while (!execs_after_watch_.empty() && !closing_) {
    if (!watches_pending_.empty() && watches_pending_.front() < execs_after_watch_.front()->seq) return;
    // Every WATCH before it is answered: it goes now (as nil if one did not take), and so do the client's
    // later commands that waited behind it.
    RequestPtr exec = std::move(execs_after_watch_.front());
    execs_after_watch_.pop_front();
    worker_.dispatch(exec);
    retry_ended(*exec);
  }
}

void Session::unpin(Request& exec) {
  exec.pins_watch = false;
  if (const auto it = unsent_execs_.find(exec.watch_generation); it != unsent_execs_.end())
    unsent_execs_.erase(it);
}

void Session::watch_redirected(const Request& watch) {
  if (WatchConnection* w = watch_connection_of(watch.watch_generation)) renew_generation(*w);
}

void Session::retire_watch_connection() {
  if (!watch_.backend) return;
  retiring_watches_.push_back(std::move(watch_));
  watch_ = WatchConnection{};
  close_idle_watch(UINT64_MAX);  // closes it at once if nothing is on its way there
}

void Session::close_watch_connection(WatchConnection& connection) {
  if (!connection.backend) return;
  connection.backend->on_fail(nullptr);
  connection.backend->shutdown();
  // Freed at the worker's next tick: this may run inside a callback of that very connection.
  worker_.retire(std::move(connection.backend));
  worker_.proxy().blocking_connections().fetch_sub(1);
}

std::size_t Session::close_idle_watch(std::uint64_t idle_ms) {
  std::size_t closed = 0;
  for (auto it = retiring_watches_.begin(); it != retiring_watches_.end();) {
    if (it->backend->inflight() > 0 || unsent_execs_.count(it->generation) != 0) {
      ++it;
      continue;
    }
    close_watch_connection(*it);
    it = retiring_watches_.erase(it);
    ++closed;
  }
  if (idle_ms != UINT64_MAX && watch_.backend && !watching_ && unsent_execs_.count(watch_.generation) == 0 &&
      watch_.backend->inflight() == 0 && worker_.now_ms() - watch_.backend->last_activity_ms() >= idle_ms) {
    close_watch_connection(watch_);
    watch_ = WatchConnection{};
    ++closed;
  }
  return closed;
}

}  // namespace slotshift::proxy
